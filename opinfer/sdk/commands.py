"""`opinfer chat`, `opinfer embed`, `opinfer status`, `opinfer verify`: the SDK from a terminal."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time

from opinfer import models
from opinfer.sdk.client import Client
from opinfer.sdk.errors import ConfigurationError, JobInvalidError, SDKError, VerificationError
from opinfer.trace.tables import GAME_STATUS_NAMES, PHASE_NAMES

PHASES = PHASE_NAMES
GAME_STATUS = {**GAME_STATUS_NAMES, 0: "-"}


def add_arguments(sub) -> None:
    def common(p):
        p.add_argument("--network", default=None, help="'devnet' (default) or the coordinator's URL")
        p.add_argument("--api-key", default=None, help="API key (default: OPINFER_API_KEY, or sk-devnet on a devnet)")
        p.add_argument("--rpc", default=None, help="RPC URL for verification (default: the devnet's)")
        p.add_argument("--rollup", default=None, help="ResultRollup address (default: the devnet's)")
        p.add_argument("--json", action="store_true", help="print JSON")

    chat_model, embedding_model = (models.by_kind(kind)[0].name for kind in (models.CHAT, models.EMBEDDING))
    chat = sub.add_parser("chat", help=f"ask the chat model ({chat_model})")
    chat.add_argument("prompt", nargs="+")
    chat.add_argument("--model", default=chat_model)
    chat.add_argument("--system", default=None)
    chat.add_argument("--max-tokens", type=int, default=None)
    chat.add_argument("--temperature", type=float, default=None)
    chat.add_argument("--seed", type=int, default=None)
    chat.add_argument("--no-stream", action="store_true", help="wait for the whole answer")
    chat.add_argument("--wait", action="store_true", help="then wait for finality and verify against the chain")
    chat.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for finality")
    chat.add_argument("--save", metavar="FILE", help="write the request and the answer as JSON, for `opinfer verify`")
    common(chat)
    embed = sub.add_parser("embed", help=f"embed text ({embedding_model})")
    embed.add_argument("text", nargs="+", help="one or more texts")
    embed.add_argument("--model", default=embedding_model)
    embed.add_argument("--full", action="store_true", help="print every dimension")
    embed.add_argument("--wait", action="store_true", help="then wait for finality and verify against the chain")
    embed.add_argument("--timeout", type=float, default=900.0)
    embed.add_argument("--save", metavar="FILE", help="write the request and the answer as JSON, for `opinfer verify`")
    common(embed)
    status = sub.add_parser("status", help="batches, windows, games, stakes (as tables)")
    status.add_argument("--batches", type=int, default=10, help="latest N batches (default 10)")
    common(status)
    verify = sub.add_parser("verify", help="verify an answer against the chain, bound to the request sent for it")
    verify.add_argument("file", help="JSON {\"request\": ..., \"response\": ...} as `chat/embed --save` write it "
                        "('-': stdin), or a response (then --request)")
    verify.add_argument("--request", metavar="FILE", help="JSON of the request body that was sent")
    verify.add_argument("--wait", action="store_true", help="wait for finality first")
    verify.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for finality")
    verify.add_argument("--allow-pending", action="store_true",
                        help="do not require finality: exit 0 once the leaf is posted and every other check holds")
    common(verify)


def client_from(args) -> Client:
    key = args.api_key
    if key is None and (args.network in (None, "devnet")):
        key = "sk-devnet"
    return Client(api_key=key, network=args.network, rpc_url=args.rpc, rollup_address=args.rollup)


def main(args) -> int:
    try:
        if args.command == "chat":
            return chat(args)
        if args.command == "embed":
            return embed(args)
        if args.command == "verify":
            return verify(args)
        return status(args)
    except JobInvalidError as exc:
        print(f"\nINVALID: {exc}", file=sys.stderr)
        return 3
    except VerificationError as exc:
        print(f"\nverification FAILED: {exc}", file=sys.stderr)
        if exc.report is not None:
            print(exc.report.summary(), file=sys.stderr)
        return 3
    except SDKError as exc:
        print(f"opinfer: {exc}", file=sys.stderr)
        return 2


# ---------------------------------------------------------------- chat / embed


def chat(args) -> int:
    client = client_from(args)
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + \
        [{"role": "user", "content": " ".join(args.prompt)}]
    params = dict(model=args.model, messages=messages, max_tokens=args.max_tokens, temperature=args.temperature,
                  seed=args.seed)
    if args.json or args.no_stream:
        r = client.chat.completions.create(**params)
        save(args, params, r.model_dump())
        if args.json and not args.wait:
            print(json.dumps(r.model_dump(), indent=2))
            return 0
        print(r.choices[0].message.content)
        job_id, target = r.opinfer.job_id, r
    else:
        stream = client.chat.completions.create(stream=True, **params)
        for chunk in stream:
            for choice in chunk.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    print(piece, end="", flush=True)
        print()
        job_id, target = stream.job_id, stream.answer()
        save(args, dict(params, stream=True), {"object": "chat.completion", "opinfer": {"job_id": job_id},
                                               "choices": [{"index": 0, "finish_reason": stream.finish_reason,
                                                            "message": {"role": "assistant",
                                                                        "content": stream.content}}]})
    print(f"job {job_id} ({'pending' if not args.wait else 'waiting for finality'})", file=sys.stderr)
    if args.wait:
        return wait_and_verify(client, [job_id], target, args.timeout, args.json)
    return 0


def embed(args) -> int:
    client = client_from(args)
    inputs = args.text if len(args.text) > 1 else args.text[0]
    r = client.embeddings.create(model=args.model, input=inputs)
    save(args, {"model": args.model, "input": inputs}, r.model_dump())
    if args.json and not args.wait:
        print(json.dumps(r.model_dump(), indent=2))
        return 0
    rows = []
    for item, text in zip(r.data, args.text):
        vec = item.embedding
        shown = ", ".join(f"{v:+.4f}" for v in (vec if args.full else vec[:6]))
        rows.append([text[:30], str(len(vec)), "[" + shown + ("" if args.full else ", ...") + "]",
                     item.opinfer.job_id])
    print(table(["input", "dims", "embedding", "job"], rows))
    if args.wait:
        return wait_and_verify(client, [item.opinfer.job_id for item in r.data], r, args.timeout, args.json)
    return 0


def progress_line(job, started: float, now_chain: int | None = None) -> str:
    status = job.get("status")
    deadline = job.get("deadline")
    if status == "posted" and deadline and now_chain:
        left = max(0, int(deadline) - int(now_chain))
        return f"  {status:<9} batch {job.get('batch_id')}, window closes in {left:>4} s"
    if status == "pending":
        return f"  {status:<9} answered, waiting for the next batch ({time.monotonic() - started:.0f} s)"
    return f"  {status:<9} ({time.monotonic() - started:.0f} s)"


def wait_and_verify(client: Client, job_ids: list[str], response, timeout: float, as_json: bool = False) -> int:
    started = time.monotonic()
    chain = None
    try:
        chain = client.chain()
    except SDKError:
        pass
    tty = sys.stderr.isatty()

    def show(job):
        now = None
        if chain is not None and job.get("status") == "posted":
            try:
                now = chain.now()
            except Exception:  # noqa: BLE001 - progress only
                now = None
        line = progress_line(job, started, now)
        print(("\r" + line.ljust(70)) if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)

    for job_id in job_ids:
        client.jobs.wait_final(job_id, timeout=timeout, poll_s=1.0, on_progress=show)
    if tty:
        print(file=sys.stderr)
    report = client.verify(response)
    if as_json:
        print(json.dumps({"job_ids": job_ids, "status": report.status, "ok": report.ok,
                          "checks": [c.__dict__ for c in report.checks]}, indent=2))
    else:
        print(f"final after {time.monotonic() - started:.0f} s; verified against the chain:")
        print(report.summary())
    return 0


def save(args, request: dict, response: dict) -> None:
    """--save FILE: what `opinfer verify FILE` needs (the request as sent: verify binds the job to it)."""
    if getattr(args, "save", None):
        body = {k: v for k, v in request.items() if v is not None}
        with open(args.save, "w") as f:
            json.dump({"request": body, "response": response}, f, indent=2)


def _read_json(path: str, what: str):
    try:
        text = sys.stdin.read() if path == "-" else open(path).read()
        return json.loads(text)
    except OSError as exc:
        raise ConfigurationError(f"cannot read the {what} {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigurationError(f"the {what} {path} is not JSON: {exc}") from None


def verify(args) -> int:
    """Verify a saved answer (or a job id) against the chain, bound to its request: exit 0 when every check
    holds (and the leaf is final, unless --allow-pending), 3 when one fails (the report names it)."""
    client = client_from(args)
    if re.fullmatch(r"0x[0-9a-fA-F]{64}", args.file):
        saved: object = args.file                      # a job id: the answer itself is not compared
    else:
        saved = _read_json(args.file, "answer file")
    request, response = None, saved
    if isinstance(saved, dict) and "response" in saved:
        request, response = saved.get("request"), saved["response"]
    if args.request:
        request = _read_json(args.request, "request file")
    if not isinstance(request, dict):
        raise ConfigurationError("no request to bind the answer to: save it with `opinfer chat --save FILE`, "
                                 "or pass --request FILE (the body that was sent)")
    if args.wait:
        from opinfer.sdk.client import _answers

        for job_id, _, _ in _answers(response):
            client.jobs.wait_final(job_id, timeout=args.timeout, poll_s=1.0)
    report = client.verify(response, request=request, require_final=not args.allow_pending)
    if args.json:
        print(json.dumps({"job_id": report.job_id, "status": report.status, "ok": report.ok,
                          "checks": [c.__dict__ for c in report.checks]}, indent=2))
    else:
        print(report.summary())
        print(f"verified: job {report.job_id} is {report.status} on-chain")
    return 0


# ---------------------------------------------------------------- status


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    if not rows:
        out.append("(none)")
    return "\n".join(out)


def eth(wei: int) -> str:
    return f"{wei / 10**18:.4f} ETH"


def gather_status(client: Client, batches: int = 10) -> dict:
    """What `opinfer status` shows, read from the chain (and the coordinator's health)."""
    from opinfer.trace.tables import LeafStatus

    p = client.chain().protocol
    now = p.timestamp()
    out = {"chain_id": p.chain_id, "block": p.head(), "time": now, "window": p.challenge_window(), "batches": [],
           "games": [], "nodes": []}
    try:
        out["api"] = dict(client.health())
    except Exception as exc:  # noqa: BLE001 - the chain view works without the coordinator
        out["api"] = {"status": f"unreachable ({type(exc).__name__})"}
    count = p.batch_count()
    for bid in range(count, max(0, count - batches), -1):
        b = p.batch(bid)
        statuses = [p.leaf_status(bid, i) for i in range(b.leaf_count)]
        out["batches"].append({"id": bid, "leaves": b.leaf_count, "deadline": b.deadline,
                               "left_s": max(0, b.deadline - now), "finalized": b.finalized,
                               "disputed": statuses.count(LeafStatus.DISPUTED),
                               "invalid": statuses.count(LeafStatus.INVALID), "root": "0x" + b.root.hex()})
    for gid in range(p.game_count(), 0, -1):
        if len(out["games"]) >= 20:
            break
        g = p.game(gid)
        out["games"].append({"id": gid, "batch": g.batch_id, "leaf": g.leaf_index, "node": g.node,
                             "challenger": g.challenger, "status": GAME_STATUS.get(g.status, str(g.status)),
                             "phase": PHASES.get(g.phase, str(g.phase)), "node_clock": g.node_clock,
                             "challenger_clock": g.challenger_clock, "lo": g.lo, "hi": g.hi})
    for n in p.nodes():
        out["nodes"].append({"address": n.address, "endpoint": n.endpoint, "models": list(n.model_ids),
                             "stake_wei": n.stake_wei, "unbonding_wei": p.unbonding(n.address)[0],
                             "open_disputes": p.open_disputes(n.address), "active": p.is_active(n.address)})
    return out


def status(args) -> int:
    client = client_from(args)
    s = gather_status(client, args.batches)
    if args.json:
        print(json.dumps(s, indent=2, default=str))
        return 0
    print(f"chain {s['chain_id']}  block {s['block']}  challenge window {s['window']} s  "
          f"API {client.network.api_url}: {s['api'].get('status')}")
    print("\nbatches (latest first)")
    print(table(["batch", "leaves", "window", "state", "disputed", "invalid"],
                [[b["id"], b["leaves"], f"{b['left_s']} s left" if b["left_s"] else "closed",
                  "final" if b["finalized"] else "posted", b["disputed"], b["invalid"]] for b in s["batches"]]))
    print("\ndispute games")
    print(table(["game", "batch/leaf", "node", "status", "phase", "range", "clocks (node/challenger)"],
                [[g["id"], f"{g['batch']}/{g['leaf']}", g["node"][:10] + "…", g["status"], g["phase"],
                  f"[{g['lo']}, {g['hi']}]", f"{g['node_clock']} / {g['challenger_clock']} s"] for g in s["games"]]))
    print("\nnodes")
    print(table(["node", "endpoint", "models", "stake", "unbonding", "disputes", "active"],
                [[n["address"][:10] + "…", n["endpoint"], ",".join(map(str, n["models"])), eth(n["stake_wei"]),
                  eth(n["unbonding_wei"]), n["open_disputes"], "yes" if n["active"] else "no"] for n in s["nodes"]]))
    return 0


def parser_for_tests() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_arguments(p.add_subparsers(dest="command"))
    return p
