"""`opinfer node run | unbond | withdraw` (flags override OPINFER_NODE_* settings; docs/node.md)."""

from __future__ import annotations

import argparse


def _chain_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key", help="node private key (prefer OPINFER_NODE_KEY)")
    p.add_argument("--rpc", dest="rpc_url", help="JSON-RPC URL (default: the devnet's)")
    p.add_argument("--rollup", dest="rollup_address", help="ResultRollup address (default: the devnet's)")
    p.add_argument("--log-level", help="debug, info, warning, error")


def add_arguments(nsub) -> None:
    run = nsub.add_parser("run", help="stake, announce, serve POST /v1/execute and defend disputes")
    run.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    run.add_argument("--port", type=int, default=None, help="port (default 8100)")
    run.add_argument("--model", dest="models", action="append", default=[], metavar="ID",
                     help="model to serve: registry name or id (repeatable; default: the devnet's models)")
    run.add_argument("--program", dest="program_files", action="append", default=[], metavar="FILE",
                     help="built program file of a model to serve (`opinfer model build`; repeatable; default: "
                          "<name>-<root8>.npz in --programs-dir)")
    run.add_argument("--programs-dir", help="where to look for program files (default $OPINFER_PROGRAMS_DIR or "
                                            "~/.opinfer/programs)")
    run.add_argument("--verify-program", action="store_true", default=None,
                     help="recompute each program file's Merkle root at start (default: check the digest "
                          "sealed with it by the build)")
    run.add_argument("--endpoint", help="URL announced in the registry (default http://HOST:PORT)")
    run.add_argument("--stake", dest="stake_eth", type=float, help="hold at least this stake, in ETH "
                     "(stakes the difference; default: require an existing stake)")
    run.add_argument("--auth-token", help="require Authorization: Bearer TOKEN (prefer OPINFER_NODE_AUTH_TOKEN)")
    run.add_argument("--trust", action="append", default=[], metavar="ADDRESS",
                     help="accept requests signed by this coordinator address (repeatable)")
    run.add_argument("--state", dest="state_path", help="defender state file (default .opinfer/node-ADDRESS.db)")
    run.add_argument("--start-block", type=int, help="first block to watch for disputes on a new state file")
    run.add_argument("--max-batch", type=int, help="jobs per engine pass (default 8)")
    run.add_argument("--prefill-tokens", type=int,
                     help="chat: prompt tokens fed per decode step, bounding how long running streams stall "
                          "(default 64; 0: whole prompts)")
    run.add_argument("--drain-seconds", type=int, help="graceful shutdown: wait for in-flight jobs (default 60)")
    run.add_argument("--poll", dest="poll_interval", type=float, help="defender: seconds between passes (default 1)")
    run.add_argument("--no-chain", action="store_true",
                     help="serve only (no staking, announcing or defending): OPINFER_NODE_MODELS=name=id,...")
    _chain_flags(run)
    unbond = nsub.add_parser("unbond", help="leave the registry and start unbonding the stake")
    unbond.add_argument("--amount", type=float, help="ETH to unbond (default: the whole stake)")
    _chain_flags(unbond)
    withdraw = nsub.add_parser("withdraw", help="withdraw unbonded stake once the delay has passed")
    _chain_flags(withdraw)


SETTING_FLAGS = ("key", "rpc_url", "rollup_address", "log_level", "host", "port", "endpoint", "stake_eth",
                 "auth_token", "state_path", "start_block", "max_batch", "prefill_tokens", "drain_seconds",
                 "poll_interval", "programs_dir", "verify_program")


def settings_from(args: argparse.Namespace, **extra):
    from node.settings import NodeSettings

    overrides = {k: getattr(args, k) for k in SETTING_FLAGS if getattr(args, k, None) is not None}
    if getattr(args, "trust", None):
        overrides["trusted"] = ",".join(args.trust)
    if getattr(args, "program_files", None):
        overrides["programs"] = ",".join(args.program_files)
    return NodeSettings(**overrides, **extra)


def main(args: argparse.Namespace) -> int:
    from node import service

    settings = settings_from(args)
    if args.action == "run":
        if args.no_chain:
            from node.app import serve

            return serve(args.host, args.port)
        return service.run(settings, args.models)
    if args.action == "unbond":
        return service.unbond(settings, args.amount)
    return service.withdraw(settings)
