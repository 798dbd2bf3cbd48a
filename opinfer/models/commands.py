"""`opinfer model build | verify | register | list`: the operator's model lifecycle.

    opinfer model build ~/models/SmolLM2-135M-Instruct.Q4_1.gguf   # -> ~/.opinfer/programs/<name>-<root8>.npz
    opinfer model register FILE --price 5000000000 --context 4096   # the ModelRegistry's owner
    opinfer node run --model smollm2-135m-instruct --program FILE   # nodes load the built file

Chain flags fall back to a running devnet (.opinfer/devnet.json) as the other
commands' do; the owner key comes from --key or OPINFER_REGISTRY_OWNER_KEY (on
a devnet: its deployer account). docs/models.md, "Model lifecycle".
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from opinfer.errors import ChainError, OpinferError

KEY_ENV = "OPINFER_REGISTRY_OWNER_KEY"
DEVNET_FILE = Path(".opinfer/devnet.json")


def add_arguments(msub) -> None:
    build = msub.add_parser("build", help="build a model's integer program file and print its model_root")
    build.add_argument("source", help="a GGUF file, a safetensors folder, or an installed model's name")
    build.add_argument("--out", help="program file to write (default: $OPINFER_PROGRAMS_DIR or "
                                     "~/.opinfer/programs, as <name>-<root8>.npz)")
    verify = msub.add_parser("verify", help="recompute a program file's model_root from its contents")
    verify.add_argument("file")
    verify.add_argument("--root", help="the root it must have (e.g. the registry's), 0x...")
    reg = msub.add_parser("register", help="register a built program in the ModelRegistry (its owner only)")
    reg.add_argument("file", help="program file written by `opinfer model build`")
    reg.add_argument("--price", type=int, required=True, metavar="WEI_PER_1K", help="price in wei per 1,000 tokens")
    reg.add_argument("--context", type=int, required=True, metavar="N",
                     help="positions a job may use; must be the context committed in the program's root")
    reg.add_argument("--name", help="registry name (default: the program's own; nodes match programs by it)")
    _chain_flags(reg)
    reg.add_argument("--key", help=f"the registry owner's private key (prefer {KEY_ENV})")
    lst = msub.add_parser("list", help="the registry's models: id, name, root, ops, price, context")
    _chain_flags(lst)
    lst.add_argument("--json", action="store_true", help="print JSON")


def _chain_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rpc", help="JSON-RPC URL (default: the devnet's)")
    p.add_argument("--registry", help="ModelRegistry address (default: the devnet's)")
    p.add_argument("--devnet-file", default=str(DEVNET_FILE), help=argparse.SUPPRESS)


def main(args: argparse.Namespace) -> int:
    return {"build": build, "verify": verify, "register": register, "list": list_models}[args.action](args)


def build(args) -> int:
    from opinfer.models.build import build_file

    out = Path(args.out) if args.out else None
    if out is not None and out.is_dir():
        raise OpinferError(f"--out {out} is a folder: name the file (e.g. {out}/model.npz)")
    built = build_file(args.source, out)
    print(built.describe())
    return 0


def verify(args) -> int:
    from opinfer.models.built import load_program

    expected = bytes.fromhex(args.root.removeprefix("0x")) if args.root else None
    program = load_program(args.file, expected, verify="full")
    print(f"{program.name}: 0x{program.model_root.hex()} ({program.num_ops} ops per step): contents match")
    return 0


# ---------------------------------------------------------------- chain

def _devnet(args):
    from opinfer.chain.devnetinfo import DevnetInfo

    return DevnetInfo.read(args.devnet_file)


def registry_contract(args):
    """(web3, ModelRegistry contract) from flags, else the devnet's."""
    from web3 import HTTPProvider, Web3

    from opinfer.chain import artifacts

    info = _devnet(args)
    rpc = args.rpc or (info.rpc_url if info else "")
    address = args.registry or (info.registry if info else "")
    if not rpc or not address:
        raise ChainError("no chain: pass --rpc and --registry (the ModelRegistry address), or start a devnet")
    w3 = Web3(HTTPProvider(rpc, request_kwargs={"timeout": 30}))
    if not w3.is_connected():
        raise ChainError(f"no JSON-RPC answer at {rpc}")
    if not w3.eth.get_code(Web3.to_checksum_address(address)):
        raise ChainError(f"no contract at {address} on {rpc}")
    return w3, w3.eth.contract(address=Web3.to_checksum_address(address), abi=artifacts.abi("ModelRegistry"))


def owner_key(args) -> str:
    """--key, else $OPINFER_REGISTRY_OWNER_KEY, else (on the devnet's own chain) its deployer's."""
    if args.key or os.environ.get(KEY_ENV):
        return args.key or os.environ[KEY_ENV]
    info = _devnet(args)
    if info and (not args.rpc or args.rpc == info.rpc_url):
        return info.key("deployer")
    raise ChainError(f"no owner key: pass --key or set {KEY_ENV}")


def register_file(sender, registry, path, price_wei: int, context: int | None = None,
                  name: str | None = None) -> int:
    """Register a built program file (its model_root and ops per step, read from the
    file's sealed metadata) at `price_wei` per 1,000 tokens; returns the model id.
    Clear errors before any transaction: a context other than the program's, a name
    already taken, a sender that is not the registry's owner. The devnet registers
    through this too."""
    from opinfer.models.build import Built

    built = Built.of_file(path)
    name = name or built.name
    if context is not None and context != built.context:
        raise OpinferError(f"--context {context}: {path} commits a context of {built.context} positions in its "
                           "root (its job limits); a different context is a different program")
    if price_wei < 0:
        raise OpinferError("--price must be >= 0 wei per 1,000 tokens")
    f = registry.functions
    taken = f.model_id_by_name(name).call()
    if taken:
        root = bytes(f.get_model(taken).call()[0])
        same = " (the same root)" if root == built.model_root else f" with root 0x{root.hex()}"
        raise OpinferError(f"the registry already has a model named {name!r}: id {taken}{same}; "
                           "names are unique (register another build under --name NAME)")
    owner = f.owner().call()
    if owner.lower() != sender.address.lower():
        raise OpinferError(f"{sender.address} is not the ModelRegistry's owner ({owner}): only the owner registers "
                           "models")
    sender.call(f.register_model(name, built.model_root, built.num_ops, price_wei))
    return f.model_id_by_name(name).call()


def register(args) -> int:
    from opinfer.chain.sender import TxSender

    if not Path(args.file).is_file():
        raise OpinferError(f"{args.file}: no such program file (build one with `opinfer model build`)")
    w3, registry = registry_contract(args)
    key = owner_key(args)
    try:
        sender = TxSender(w3, key)
    except (ValueError, TypeError) as exc:
        raise OpinferError(f"the owner key is not a private key ({type(exc).__name__})") from None
    model_id = register_file(sender, registry, args.file, args.price, args.context, args.name)
    name = registry.functions.model_name(model_id).call()
    root = bytes(registry.functions.get_model(model_id).call()[0])
    print(f"registered {name} (model_root 0x{root.hex()}, {args.price} wei per 1k tokens, context {args.context})")
    print(f"model id {model_id}")
    return 0


def registry_models(registry) -> list[dict]:
    """Every registered model: id, name, model_root, ops per step, price, active."""
    f = registry.functions
    out = []
    for model_id in range(1, f.model_count().call() + 1):
        root, ops, price, active = f.get_model(model_id).call()
        out.append({"id": model_id, "name": f.model_name(model_id).call(), "model_root": "0x" + bytes(root).hex(),
                    "ops_per_step": ops, "price_per_1k_wei": price, "active": active})
    return out


def list_models(args) -> int:
    from opinfer.models.build import Built
    from opinfer.models.built import find_program

    _, registry = registry_contract(args)
    rows = registry_models(registry)
    for row in rows:
        # The registry stores the root; the context is committed inside it, readable from a local build.
        path = find_program(row["name"], bytes.fromhex(row["model_root"][2:]))
        local = Built.of_file(path) if path else None
        row["context"] = local.context if local and local.model_root.hex() == row["model_root"][2:] else None
        row["program_file"] = str(path) if local and row["context"] is not None else None
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'id':>3}  {'name':<24} {'model_root':<20} {'ops':>5} {'price/1k (wei)':>15} {'context':>7}  active")
    for r in rows:
        ctx = str(r["context"]) if r["context"] is not None else "-"
        print(f"{r['id']:>3}  {r['name']:<24} {r['model_root'][:18] + '..':<20} {r['ops_per_step']:>5} "
              f"{r['price_per_1k_wei']:>15} {ctx:>7}  {'yes' if r['active'] else 'no'}")
    if any(r["context"] is None for r in rows):
        print("(context: committed in the root; shown where this machine has the built program file)")
    return 0
