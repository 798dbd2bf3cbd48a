"""`opinfer challenger run`: build the service from settings and run it
until SIGTERM/SIGINT (or one pass with --once)."""

from __future__ import annotations

import argparse
import signal
import threading

from web3 import HTTPProvider, Web3

from challenger import logs
from challenger.chain import Chain
from challenger.executors import Executor, program_executors
from challenger.metrics import Metrics, MetricsServer
from challenger.sampler import Sampler
from challenger.service import Challenger
from challenger.settings import Settings
from challenger.store import Store
from opinfer.chain.reorg import resolve_confirmations
from opinfer.chain.sender import TxSender


def add_arguments(run: argparse.ArgumentParser) -> None:
    run.add_argument("--rpc", dest="rpc_url", help="JSON-RPC URL of the chain")
    run.add_argument("--key", dest="private_key", help="challenger private key (prefer OPINFER_CHALLENGER_PRIVATE_KEY)")
    run.add_argument("--rollup", help="ResultRollup address (the rest is read from it)")
    run.add_argument("--sample-rate", type=float, help="share of leaves re-executed, in [0, 1] (default 0.2)")
    run.add_argument("--confirmations", type=int, help="blocks behind the head to scan up to (default: 0 on a devnet, 12 elsewhere)")
    run.add_argument("--state", dest="state_path", help="state file (default .opinfer/challenger.db)")
    run.add_argument("--start-block", type=int, help="first block to scan when the state file is new (default 0)")
    run.add_argument("--poll", dest="poll_interval", type=float, help="seconds between passes (default 2)")
    run.add_argument("--metrics-port", type=int, help="GET /metrics port (default 9465; 0 disables)")
    run.add_argument("--metrics-host", help="metrics bind address (default 127.0.0.1)")
    run.add_argument("--bond-top-up", type=int, help="wei to deposit when the free bond is short (default 0: never)")
    run.add_argument("--workers", type=int, help="threads for re-checks and dispute traces (default 2)")
    run.add_argument("--recheck-budget", type=int,
                     help="leaves of a caught node re-executed beyond the sample, per open window (default 256)")
    run.add_argument("--program", dest="program_files", action="append", default=[], metavar="FILE",
                     help="built program file to re-execute with (`opinfer model build`; repeatable)")
    run.add_argument("--programs-dir", help="where to look for program files <name>-<root8>.npz "
                                            "(default $OPINFER_PROGRAMS_DIR or ~/.opinfer/programs)")
    run.add_argument("--log-level", help="debug, info, warning, error (default info)")
    run.add_argument("--once", action="store_true", help="one pass (scan, dispute, move, claim), then exit")


def build(settings: Settings, executors: dict[str, Executor] | None = None, metrics: Metrics | None = None,
          log=None) -> Challenger:
    w3 = Web3(HTTPProvider(settings.rpc_url, request_kwargs={"timeout": 30}))
    chain = Chain(w3, TxSender(w3, settings.private_key), settings.rollup)
    log = log or logs.setup(settings.log_level)
    if executors is None:
        executors = program_executors(_registered(chain), [p for p in settings.programs.split(",") if p.strip()],
                                      settings.programs_dir or None, lambda msg: logs.event(log, msg))
    return Challenger(chain, Store(settings.state_path), executors,
                      Sampler(settings.secret_bytes(), settings.sample_rate), metrics or Metrics(), log,
                      confirmations=resolve_confirmations(settings.confirmations, w3.eth.chain_id),
                      start_block=settings.start_block, log_span=settings.log_span,
                      bond_top_up=settings.bond_top_up, workers=settings.workers,
                      recheck_budget=settings.recheck_budget,
                      max_reorg_depth=settings.max_reorg_depth)


def _registered(chain: Chain) -> dict[str, bytes]:
    """name -> model_root of every model in the registry (what program files must hold)."""
    f = chain.registry.functions
    return {f.model_name(i).call(): bytes(f.get_model(i).call()[0]) for i in range(1, f.model_count().call() + 1)}


def main(args: argparse.Namespace, executors: dict[str, Executor] | None = None) -> int:
    keys = ("rpc_url", "private_key", "rollup", "sample_rate", "confirmations", "state_path", "start_block",
            "poll_interval", "metrics_port", "metrics_host", "bond_top_up", "workers", "recheck_budget", "log_level",
            "programs_dir")
    overrides = {k: getattr(args, k, None) for k in keys}
    if getattr(args, "program_files", None):
        overrides["programs"] = ",".join(args.program_files)
    settings = Settings.load(overrides)
    metrics = Metrics()
    challenger = build(settings, executors, metrics)
    server = None
    if settings.metrics_port > 0 and not args.once:
        server = MetricsServer(metrics, settings.metrics_host, settings.metrics_port).start()
        logs.event(challenger.log, "metrics served", url=server.url + "/metrics")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        challenger.run(stop, settings.poll_interval, once=args.once)
    finally:
        if server:
            server.stop()
        challenger.store.close()
    return 0


def standalone(argv: list[str] | None = None, executors: dict[str, Executor] | None = None) -> int:
    """`python -m challenger.cli ...` (the same flags as `opinfer challenger run`)."""
    parser = argparse.ArgumentParser(prog="opinfer-challenger")
    add_arguments(parser)
    return main(parser.parse_args(argv), executors)


if __name__ == "__main__":
    raise SystemExit(standalone())
