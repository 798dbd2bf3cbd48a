"""Where a decoder trace may take its generated tokens from (light: no engine, no numpy work).

A model's parts register fn(program, job) -> the ids its fast engine generates for
the job, keyed by program name; DecoderTrace asks before it builds. The tokens are
only a hint: opinfer/trace/blocked.py checks each against the program's own NEXT,
so a wrong or missing hint costs time, never a root."""

from __future__ import annotations

TOKEN_SOURCES: dict = {}


def register(name: str, fn) -> None:
    TOKEN_SOURCES[name] = fn


def generated_tokens(program, job):
    """The registered source's tokens for the job, or None (none registered, or it failed)."""
    fn = TOKEN_SOURCES.get(program.name)
    if fn is None:
        return None
    try:
        return fn(program, job)
    except Exception:  # noqa: BLE001 - only a hint: without it the generated positions run one by one
        return None
