"""The challenger service as a process for the kill tests, with the toy
model's executor (optionally slowed down, so a kill can land mid-scan).

    CHALLENGER_TEST_DELAY=0.2 python tests/challenger/run_challenger.py --rpc ... (flags of `opinfer challenger run`)"""

import os
import sys
import time

from challenger.cli import standalone
from challenger.executors import ProgramExecutor
from opinfer.trace.testing import toy_program


class SlowToy(ProgramExecutor):
    def __init__(self, delay: float):
        super().__init__(toy_program(), "toy-dot")
        self.delay = delay

    def output_root(self, job):
        time.sleep(self.delay)
        return super().output_root(job)


if __name__ == "__main__":
    sys.exit(standalone(sys.argv[1:], {"toy-dot": SlowToy(float(os.environ.get("CHALLENGER_TEST_DELAY", "0")))}))
