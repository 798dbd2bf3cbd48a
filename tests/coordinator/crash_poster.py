"""Run one batch-posting pass and die (os._exit, no cleanup) at a named point.

    python tests/coordinator/crash_poster.py POINT
Settings come from the environment (OPINFER_*), as for a real coordinator."""

import os
import sys

from coordinator.app import Coordinator
from coordinator.settings import Settings

CRASHED = 17


def crash_at(point: str):
    def hook(reached: str) -> None:
        if reached == point:
            os._exit(CRASHED)
    return hook


if __name__ == "__main__":
    Coordinator(Settings(scheduler=False), crash=crash_at(sys.argv[1])).post_batches()
    sys.exit(0)
