"""`make demo`: the story in a few minutes, on a devnet of its own (free ports).

1. A devnet: anvil, contracts, both models, coordinator, an honest node, a
   dishonest one (a wrong embedding element, signed), a challenger.
2. Requests through the SDK: a chat completion and embeddings.
3. The challenger re-executes every posted leaf, finds the lie, opens a
   dispute; the node is slashed (today's devnet liar does not defend, so
   the game ends on its clock; a defending liar is bisected to one element
   and refuted by the one-step proof); its job is `invalid`.
4. Honest results finalize after the window and verify against the chain.
Prints a summary table; exits 0 when the story happened as told."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from opinfer import models
from opinfer.chain.anvil import free_port
from opinfer.trace.tables import GameStatus

WINDOW, CLOCK = 20, 60
CHAT, EMBED = (models.by_kind(kind)[0].name for kind in (models.CHAT, models.EMBEDDING))


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main() -> int:
    from opinfer import devnet
    from opinfer.sdk import Client, VerificationError
    from opinfer.sdk.commands import table

    started = time.monotonic()
    state = Path(tempfile.mkdtemp(prefix="opinfer-demo-"))
    opts = devnet.Options(port=free_port(), api_port=free_port(), window=WINDOW, clock=CLOCK, nodes=2, dishonest=1,
                          batch_interval=1.0, state_dir=state)
    net = devnet.launch(opts, log=say)
    ok = True
    try:
        info = net.info
        liar = next(n["address"] for n in info["nodes"] if n["dishonest"])
        say(f"devnet up: API {info['api_url']}, window {WINDOW} s; dishonest node {liar[:10]}…")
        client = Client(api_key=devnet.API_KEY, network=info["api_url"], rpc_url=info["rpc_url"],
                        chain_id=info["chain_id"], rollup_address=info["contracts"]["ResultRollup"],
                        registry_address=info["contracts"]["ModelRegistry"])
        chain = client.chain().protocol      # the protocol client (opinfer.chain.client), typed reads
        game = chain.game_contract
        stake_before = chain.stake(liar)
        say(f"models: {', '.join(m.id for m in client.list_models())}")

        chat = client.chat.completions.create(model=CHAT, max_tokens=16,
                                              messages=[{"role": "user", "content": "What is a rollup? One line."}])
        say(f"chat ({chat.opinfer.status}): {chat.choices[0].message.content!r}")
        jobs = [("chat", chat)]
        lied = None
        for i, text in enumerate(["optimistic verification", "fraud proofs", "bisection games", "staked nodes",
                                  "data availability", "integer engines"]):
            r = client.embeddings.create(model=EMBED, input=text, extra_body={"opinfer": {"cache": False}})
            jobs.append((f"embed {text!r}", r))
            if r.data[0].opinfer.node == liar:
                lied = r
                if i >= 2:
                    break
        if lied is None:  # make sure the liar served one: ask both nodes (consensus)
            lied = client.embeddings.create(model=EMBED, input="consensus of two",
                                            extra_body={"opinfer": {"consensus": 2, "cache": False}})
            jobs.append(("embed (consensus 2)", lied))
        say(f"{len(jobs)} requests answered at once (status pending); waiting for batches, the window and games ...")
        say(f"explorer: {devnet.explorer_url(info)}")
        watch = _liar_game(game, liar, timeout=60)
        if watch:
            say(f"the challenger disputes the liar's result: watch the game at {devnet.explorer_url(info, f'game/{watch}')}")

        rows, deadline = [], time.monotonic() + 150
        for label, r in jobs:
            job_id = r.opinfer.job_id if "choices" in r else r.data[0].opinfer.job_id
            try:
                job = client.jobs.wait_final(job_id, timeout=max(5.0, deadline - time.monotonic()), poll_s=1,
                                             raise_on_invalid=False)
            except Exception as exc:  # noqa: BLE001 - reported in the table
                rows.append([label[:28], job_id[:12] + "…", "?", f"not final ({exc})", "-"])
                ok = False
                continue
            honest = job.node != liar
            try:
                client.verify(r)
                verdict = "verified"
            except VerificationError as exc:
                verdict = f"rejected ({exc.check})"
            rows.append([label[:28], job_id[:12] + "…", "honest" if honest else "DISHONEST", job.status, verdict])
            ok &= (job.status == "final" and verdict == "verified") if honest else job.status == "invalid"

        # The game(s) against the liar, from the chain's events.
        games = []
        for gid in range(1, chain.game_count() + 1):
            g = chain.game(gid)
            moves = {}
            for event in ("Bisected", "Picked", "TensorRevealed", "Descended", "Chosen", "ChunkRevealed",
                          "ElementPicked", "StepExecuted"):
                n = len(getattr(game.events, event).get_logs(from_block=0, argument_filters={"game_id": gid}))
                if n:
                    moves[event] = n
            reason = chain.resolved_reason(gid) or "open"
            games.append([gid, f"{g.batch_id}/{g.leaf_index}", g.node[:10] + "…", sum(moves.values()),
                          ", ".join(f"{k} {v}" for k, v in moves.items()) or "-", reason,
                          {GameStatus.CHALLENGER_WON: "challenger", GameStatus.NODE_WON: "node"}.get(g.status, "-")])
        stake_after = chain.stake(liar)
        print()
        print("jobs")
        print(table(["request", "job", "node", "status", "client.verify"], rows))
        print()
        print("dispute games (moves read from the chain's events)")
        print(table(["game", "batch/leaf", "node", "moves", "bisection", "ended", "winner"], games))
        print()
        print(table(["dishonest node", "stake before", "stake after", "honest results verified", "run time"],
                     [[liar[:10] + "…", f"{stake_before / 1e18:.2f} ETH", f"{stake_after / 1e18:.2f} ETH",
                       sum(r[4] == "verified" for r in rows), f"{time.monotonic() - started:.0f} s"]]))
        ok &= stake_after < stake_before and any(r[2] == "DISHONEST" and r[3] == "invalid" for r in rows)
        slashed = [gid for gid, _, node, *_rest, winner in games if winner == "challenger" and liar.startswith(node[:10])]
        if slashed:
            print(f"\nthe slashed liar's game, move by move: {devnet.explorer_url(info, f'game/{slashed[0]}')}"
                  "\n(open while the demo runs; `make up ARGS=\"--dishonest 1\"` keeps a devnet up to explore)")
        client.close()
    finally:
        net.stop()
    print("\ndemo " + ("passed: the liar was caught and slashed; honest results final and verified"
                       if ok else "FAILED (see the tables; logs in " + str(state / "logs") + ")"))
    return 0 if ok else 1


def _liar_game(game, liar: str, timeout: float) -> int | None:
    """The first game against the liar, once the challenger has opened it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for gid in range(1, game.functions.game_count().call() + 1):
            if game.functions.games(gid).call()[2] == liar:
                return gid
        time.sleep(1)
    return None


if __name__ == "__main__":
    sys.exit(main())
