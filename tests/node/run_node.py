"""`opinfer node run` as a process for the kill and drain tests, serving the
toy model (optionally slowed down, so a job can be in flight at SIGTERM).

    NODE_TEST_DELAY=0.5 python tests/node/run_node.py --model toy-dot --key ... (flags of `opinfer node run`)"""

import os
import sys
import time

from node.cli import add_arguments, settings_from
from node.engines import ProgramEngine
from node.service import run
from opinfer.trace.testing import toy_program


class SlowToy(ProgramEngine):
    def __init__(self, delay: float):
        super().__init__(toy_program())
        self.delay = delay

    def run_many(self, jobs):
        time.sleep(self.delay)
        return super().run_many(jobs)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser.add_subparsers(dest="action", required=True))
    args = parser.parse_args(["run", *sys.argv[1:]])
    sys.exit(run(settings_from(args), args.models, {"toy-dot": SlowToy(float(os.environ.get("NODE_TEST_DELAY", "0")))}))
