"""The `opinfer` command."""

from __future__ import annotations

import argparse
import sys

from opinfer.errors import OpinferError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opinfer", description="Decentralized inference with optimistic verification.")
    sub = parser.add_subparsers(dest="command", required=True)
    devnet = sub.add_parser("devnet", help="a local chain with the protocol deployed")
    dsub = devnet.add_subparsers(dest="action", required=True)
    up = dsub.add_parser("up", help="start anvil, deploy, stay in the foreground")
    up.add_argument("--port", type=int, default=8545, help="anvil port (default 8545)")
    up.add_argument("--window", type=int, default=600, help="challenge window in seconds (default 600)")
    up.add_argument("--clock", type=int, default=300, help="dispute clock per party in seconds (default 300)")
    dsub.add_parser("down", help="stop a devnet started by `devnet up`")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "devnet":
            from opinfer import devnet

            if args.action == "up":
                return devnet.up(args.port, args.window, args.clock)
            return devnet.down()
    except OpinferError as exc:
        print(f"opinfer: {exc}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
