"""The `opinfer` command.

The client commands (chat, embed, status, verify) work with a plain
`pip install opinfer`; the services (devnet, coordinator, node, challenger)
need their extras. So nothing of a service is imported unless its command
runs: its arguments are defined only when it is the command asked for, and
a missing extra is a one-line message naming it (tests/unit/test_light_imports.py).
"""

from __future__ import annotations

import argparse
import sys

from opinfer.errors import OpinferError

#: command -> the extra that installs what it imports
EXTRAS = {"devnet": "all", "coordinator": "coordinator", "node": "node", "challenger": "challenger", "model": "node"}
#: our own packages: a missing module of ours is a broken install, not a missing extra
_OURS = {"opinfer", "coordinator", "node", "challenger"}


def _command(argv: list[str] | None) -> str | None:
    """The subcommand named in argv (the first word that is not an option)."""
    args = sys.argv[1:] if argv is None else argv
    return next((a for a in args if not a.startswith("-")), None)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; the services' subcommands are filled in only when argv names them (or argv is ["*"]:
    every command, for tests)."""
    wanted = _command(argv)
    parser = argparse.ArgumentParser(prog="opinfer", description="Decentralized inference with optimistic verification.")
    sub = parser.add_subparsers(dest="command", required=True)
    devnet = sub.add_parser("devnet", help="a local chain with the protocol deployed")
    dsub = devnet.add_subparsers(dest="action", required=True)
    up = dsub.add_parser("up", help="start anvil, deploy, coordinator, nodes, challenger; stay in the foreground")
    up.add_argument("--port", type=int, default=8545, help="anvil port (default 8545)")
    up.add_argument("--api-port", type=int, default=8000, help="coordinator port (default 8000)")
    up.add_argument("--window", type=int, default=600, help="challenge window in seconds (default 600)")
    up.add_argument("--clock", type=int, default=600, help="dispute clock per party in seconds (default 600: covers the trace of a 4,096-position job; below 600 the devnet accepts 1,024 positions)")
    up.add_argument("--nodes", type=int, default=3, help="staked nodes (default 3)")
    up.add_argument("--dishonest", type=int, default=0, help="how many of them lie (default 0)")
    up.add_argument("--sample-rate", type=float, default=1.0, help="challenger sample rate (default 1.0)")
    up.add_argument("--batch-interval", type=float, default=2.0, help="seconds between batches (default 2)")
    up.add_argument("--state-dir", default=".opinfer", help="devnet.json, databases, logs (default .opinfer)")
    up.add_argument("--chain-only", action="store_true", help="only anvil and the contracts, no services")
    up.add_argument("--detach", action="store_true", help="run in the background; `opinfer devnet down` stops it")
    down = dsub.add_parser("down", help="stop a devnet started by `devnet up`")
    down.add_argument("--state-dir", default=".opinfer")
    from opinfer.sdk.commands import add_arguments as sdk_arguments

    sdk_arguments(sub)
    coord = sub.add_parser("coordinator", help="the OpenAI-compatible coordinator (settings: OPINFER_* env)")
    csub = coord.add_subparsers(dest="action", required=True)
    crun = csub.add_parser("run", help="serve the API, post batches, finalize them")
    crun.add_argument("--host", default="127.0.0.1")
    crun.add_argument("--port", type=int, default=8000)
    csub.add_parser("migrate", help="bring the database to the latest schema")
    key = csub.add_parser("create-key", help="create an API key (printed once)")
    key.add_argument("name")
    key.add_argument("--rpm", type=int, default=None, help="requests per minute (default: OPINFER_RATE_LIMIT_RPM)")
    key.add_argument("--secret-stdin", action="store_true",
                     help="import the secret read from stdin (one line) instead of creating a random one")
    model = sub.add_parser("model", help="build a model's program file, register it, list the registry's models")
    msub = model.add_subparsers(dest="action", required=True)
    if wanted in ("model", "*"):
        from opinfer.models.commands import add_arguments as model_arguments

        model_arguments(msub)
    node = sub.add_parser("node", help="an inference node (settings: OPINFER_NODE_* env)")
    nsub = node.add_subparsers(dest="action", required=True)
    if wanted in ("node", "*"):
        from node.cli import add_arguments as node_arguments

        node_arguments(nsub)
    chal = sub.add_parser("challenger", help="watch batches, re-execute samples, dispute fraud")
    chsub = chal.add_subparsers(dest="action", required=True)
    chal_run = chsub.add_parser("run", help="follow the chain and play disputes (see docs/security.md)")
    if wanted in ("challenger", "*"):
        from challenger.cli import add_arguments as challenger_arguments   # imports web3 and the engine

        challenger_arguments(chal_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except ModuleNotFoundError as exc:
        command = _command(argv)
        top = (exc.name or "").split(".")[0]
        if command in EXTRAS and top and top not in _OURS:
            print(f"opinfer: `opinfer {command}` needs what the client install leaves out ({exc.name} is missing): "
                  f"pip install 'opinfer[{EXTRAS[command]}]' (see README, Install)", file=sys.stderr)
            return 2
        raise


def _main(argv: list[str] | None) -> int:
    args = build_parser(argv).parse_args(argv)
    try:
        if args.command == "devnet":
            from opinfer import devnet

            if args.action == "up":
                return devnet.up(args.port, args.window, args.clock, nodes=args.nodes, dishonest=args.dishonest,
                                 detach=args.detach, api_port=args.api_port, sample_rate=args.sample_rate,
                                 state_dir=args.state_dir, services=not args.chain_only,
                                 batch_interval=args.batch_interval)
            return devnet.down(args.state_dir)
        if args.command in ("chat", "embed", "status", "verify"):
            from opinfer.sdk import commands

            return commands.main(args)
        if args.command == "coordinator":
            from coordinator import cli as coordinator_cli

            return coordinator_cli.main(args)
        if args.command == "model":
            from opinfer.models.commands import main as model_main

            return model_main(args)
        if args.command == "node":
            from node.cli import main as node_main

            return node_main(args)
        if args.command == "challenger":
            from challenger.cli import main as challenger_main

            return challenger_main(args)
    except OpinferError as exc:
        print(f"opinfer: {exc}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
