"""One devnet for the fault suite, launched in-process (the test needs its
Service objects to kill and restart them): anvil on a free port, the
protocol deployed, both models, two honest nodes and one dishonest node
(deep-element lies, defended move by move), the coordinator (1 s batches)
and a challenger sampling every leaf; a short challenge window. Every
process is stopped in the finalizer, on failure too; when a test fails the
tails of the service logs are printed."""

from __future__ import annotations

import os
import signal

import pytest

from opinfer.chain.anvil import free_port

# The protocol assumes an honest challenger acts within the window and within its clock.
# Here a killed challenger needs 15-30 s to be back (models loaded, traces rebuilt) on a loaded
# 2-core machine, then a backlog to re-execute: with a 25 s window and 60 s clocks it found a
# lie too late and lost games on time (seed 3; its games waited behind the scan, fixed in
# challenger/service.py). These bounds leave room for two restarts in each.
# With reorganisations in the plan (issue 17) the kills move later, into the games: a
# challenger killed twice and then in `all` inside one game spent 97 s of a 120 s clock on
# restarts and trace rebuilds (seed 17), and lies posted while it was down were found after a
# 60 s window. 90 s and 180 s leave room for three restarts.
# OPINFER_FAULT_WINDOW / OPINFER_FAULT_CLOCK override them (experiments).
WINDOW = int(os.environ.get("OPINFER_FAULT_WINDOW") or 90)     # s
CLOCK = int(os.environ.get("OPINFER_FAULT_CLOCK") or 180)      # s per party: the liar defends move by move
NODES, DISHONEST = 3, 1


def pytest_configure(config):
    config.addinivalue_line("markers", "faults: kill -9 of the devnet's processes under traffic and disputes")


@pytest.fixture(scope="session")
def faultnet(tmp_path_factory):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from opinfer.devnet import Options, launch

    root = tmp_path_factory.mktemp("faultnet")
    opts = Options(port=free_port(), api_port=free_port(), window=WINDOW, clock=CLOCK, nodes=NODES,
                   dishonest=DISHONEST, sample_rate=1.0, batch_interval=1.0, state_dir=root / ".opinfer")
    net = launch(opts, log=lambda msg: print(msg, flush=True))
    try:
        yield net
    finally:
        stop_all(net)


def stop_all(net) -> None:
    """SIGTERM, then SIGKILL, to each service's process group (they run in sessions of their own); then anvil."""
    for svc in reversed(net.services):
        if svc.proc is None:
            continue
        try:
            if svc.alive():
                os.killpg(svc.proc.pid, signal.SIGTERM)
                try:
                    svc.proc.wait(10)
                except Exception:  # noqa: BLE001 - still there: kill it
                    pass
            os.killpg(svc.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            svc.proc.wait(5)
        except Exception:  # noqa: BLE001
            pass
    net.anvil.stop()


_printed = False


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    global _printed
    outcome = yield
    report = outcome.get_result()
    if report.failed and not _printed and "faultnet" in getattr(item, "fixturenames", ()):
        net = item.funcargs.get("faultnet") if hasattr(item, "funcargs") else None
        if net is not None and net.info.get("logs"):
            from tests.faults.harness import log_tails

            _printed = True
            print("\n===== fault suite: service log tails =====\n" + log_tails(net.info["logs"]), flush=True)
