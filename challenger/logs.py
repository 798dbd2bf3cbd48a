"""The challenger's structured logs (opinfer/logs.py: one JSON object per line on stderr)."""

from __future__ import annotations

import logging

from opinfer.logs import JsonFormatter, event  # noqa: F401  (re-exported for the challenger's modules)
from opinfer.logs import setup as _setup

LOGGER = "opinfer.challenger"


def setup(level: str = "info", stream=None) -> logging.Logger:
    return _setup(LOGGER, level, stream)
