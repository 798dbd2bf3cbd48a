"""Structured logs for the services: one JSON object per line on stderr
(journald and log shippers index the fields), with
`event(log, "what", key=value...)`. Fields never include keys or settings
objects (docs/security.md)."""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage()}
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=_plain)


def _plain(value):
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    return str(value)


def setup(logger: str, level: str = "info", stream=None) -> logging.Logger:
    """JSON lines for `logger` (and its children) on `stream` (stderr)."""
    log = logging.getLogger(logger)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    log.handlers[:] = [handler]
    log.setLevel(level.upper())
    log.propagate = False
    logging.Formatter.converter = time.gmtime
    return log


def event(log: logging.Logger, msg: str, level: int = logging.INFO, **fields) -> None:
    log.log(level, msg, extra={"fields": fields})
