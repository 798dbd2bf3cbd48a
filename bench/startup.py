"""Node start-up time: `opinfer node run --model NAME` from process start to its first
200 on /healthz, per model, median of N runs, side by side:

- program: this checkout's node loading the built program file (`opinfer model build`),
  checked against the registry, engine rebuilt from the file's integers;
- package: the node of another checkout (--baseline DIR, e.g. a worktree of the commit
  before the model lifecycle) building its engine from the weight package at start
  (MiniLM: float calibration).

Both against the same anvil chain with both models registered from the program files.

    python -m bench.startup --baseline /tmp/opinfer-before --runs 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from web3 import HTTPProvider, Web3

from opinfer import models
from opinfer.chain.anvil import Anvil, dev_keys, free_port
from opinfer.chain.deploy import ProtocolParams, deploy
from opinfer.chain.sender import TxSender
from opinfer.models.build import cached
from opinfer.models.commands import register_file

ROOT = Path(__file__).resolve().parents[1]


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_node(tree: Path, name: str, key: str, url: str, rollup: str, program: str | None,
               workdir: Path) -> tuple[float, float]:
    """(wall seconds from spawning the process to its first 200 on /healthz, its CPU seconds by then)."""
    port = free_port()
    cmd = [sys.executable, "-m", "opinfer.cli", "node", "run", "--model", name, "--key", key, "--rpc", url,
           "--rollup", rollup, "--stake", "1", "--port", str(port), "--state", str(workdir / f"node-{port}.db")]
    if program:
        cmd += ["--program", program]
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    return time.monotonic() - started, cpu_seconds(proc.pid)
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"node exited ({proc.returncode}): {proc.stderr.read()[-2000:]}")
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, help="checkout whose node builds from the weight package")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--models", nargs="*", default=[s.name for s in models.specs()])
    args = parser.parse_args(argv)
    keys = dev_keys(2)
    with Anvil(accounts=2) as anvil, tempfile.TemporaryDirectory() as tmp:
        w3 = Web3(HTTPProvider(anvil.url))
        owner = TxSender(w3, keys[0])
        d = deploy(w3, owner, ProtocolParams(challenge_window=60, clock_budget=60))
        files = {}
        for name in args.models:
            built = cached(models.get(name))
            register_file(owner, d.contracts["ModelRegistry"], built.path, 0, built.context)
            files[name] = str(built.path)
        variants = [("program", ROOT, True)] + ([("package", args.baseline, False)] if args.baseline else [])
        print(f"node start-up, process start -> /healthz 200: median of {args.runs} wall seconds [CPU seconds]; "
              "the variants alternate run by run")
        print(f"{'model':<24} " + " ".join(f"{v:>26}" for v, _, _ in variants))
        for name in args.models:
            runs: dict[str, list] = {v: [] for v, _, _ in variants}
            for _ in range(args.runs):
                for variant, tree, with_program in variants:
                    runs[variant].append(start_node(tree, name, keys[1], anvil.url, d.addresses["ResultRollup"],
                                                    files[name] if with_program else None, Path(tmp)))
            cells = []
            for variant, _, _ in variants:
                wall, cpu = zip(*runs[variant])
                cells.append(f"{statistics.median(wall):6.2f} [{statistics.median(cpu):5.2f}] "
                             f"({' '.join(f'{t:.1f}' for t in wall)})")
            print(f"{name:<24} " + " ".join(f"{c:>26}" for c in cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
