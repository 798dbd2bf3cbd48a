"""The fault suite: kill -9 the coordinator, an honest node, the dishonest
node and the challenger (every client of anvil) at random points, seeded,
and reorganise the chain 1 to 5 blocks deep away from a batch posting, a
finalize, a challenge and a game move, while traffic runs and a dispute
game is played; restart each; then check on the chain that every answered
job was posted exactly once, every batch finalized, every game ended with
the right winner, and the coordinator's API says what the chain says.

Seed: OPINFER_FAULT_SEED (default: random, printed). Run with
`python -m pytest -p no:pytest-brownie -q -s -m faults tests/faults`."""

from __future__ import annotations

import os
import random
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from opinfer.devnet import NODE_STAKE_WEI
from opinfer.trace import player
from tests.faults.harness import (LEAF_FINAL, LEAF_INVALID, ChainView, Injector, Outcome, Traffic, diagnose,
                                  group_posted, log_tails, plan)

pytestmark = pytest.mark.faults

MIN_TRAFFIC_S = 45      # traffic runs at least this long, and until the fault plan is done
FAULTS_BY_S = 150       # no fault starts after this (the rest of the plan is dropped, but for `all` and reorgs)
CHALLENGER_GAP_S = 30   # between two kills of the challenger (it must be able to act within each window)
TRIGGER_TIMEOUT_S = 20  # how long a kill waits for its moment (batch in flight, game running; 2.5x: honest nodes up)
SETTLE_S = 300          # after the traffic: until every batch is final and every game over (a bound)
REORG_TIMEOUT_S = 30    # how long a reorganisation waits for a block holding its target
GAME_CLAIM_S = 30       # after a clock runs out: the challenger's next poll claims the timeout


@pytest.fixture(scope="module")
def outcome(faultnet) -> Outcome:
    seed = int(os.environ.get("OPINFER_FAULT_SEED") or random.SystemRandom().randrange(1, 10**6))
    print(f"\nfault suite seed={seed} (set OPINFER_FAULT_SEED={seed} to replay the plan); "
          f"window {faultnet.opts.window} s, clock {faultnet.opts.clock} s", flush=True)
    t0 = time.monotonic()
    net, info = faultnet, faultnet.info
    services = {s.name: s for s in net.services}
    honest = [n["role"] for n in info["nodes"] if not n["dishonest"]]
    liar_node = next(n for n in info["nodes"] if n["dishonest"])
    liar = liar_node["address"]
    chain = ChainView(info)
    state = net.opts.state_dir.resolve()
    faults = plan(random.Random(seed), honest)
    print("plan: " + ", ".join(f"{f.service or f.target}@{f.trigger}" for f in faults), flush=True)
    traffic = Traffic(info["api_url"], info["api_key"], seed, liar).start()
    injector = Injector(services, faults, chain, state / "coordinator.db", liar_node["role"],
                        [n["url"] for n in info["nodes"] if not n["dishonest"]],
                        trigger_timeout=TRIGGER_TIMEOUT_S, deadline_s=FAULTS_BY_S,
                        challenger_gap_s=CHALLENGER_GAP_S,
                        liar_slashed=lambda: chain.stake.functions.stake(liar).call() == 0,
                        reorg_timeout=REORG_TIMEOUT_S).start()
    try:
        while not (injector.done.is_set() and time.monotonic() - t0 >= MIN_TRAFFIC_S):
            time.sleep(0.5)
            assert time.monotonic() - t0 < FAULTS_BY_S + 60, "the fault plan did not finish"
        traffic.finish()
        traffic_s = time.monotonic() - t0
        if injector.error:
            raise injector.error
        kinds = {k: sum(a.kind == k for a in traffic.answered.values()) for k in ("embedding", "chat")}
        print(f"traffic: {traffic.sent} requests in {traffic_s:.0f} s, {len(traffic.answered)} jobs answered {kinds}, "
              f"{traffic.failures} failed {dict(traffic.failed)}; "
              f"{traffic.liar_answered} answered by the liar ({traffic.bursts} bursts to reach it)",
              flush=True)
        for svc in net.services:          # nothing died on its own (a slashed node refuses to start)
            gone = svc.name == liar_node["role"] and chain.stake.functions.stake(liar).call() == 0
            assert svc.alive() or gone, f"{svc.name} is not running after the traffic (log {svc.log})"
        out = settle(chain, info, traffic, injector, seed, liar, time.monotonic() + SETTLE_S)
        out.reposted, out.batches_reposted = reposts(state / "coordinator.db")
        out.settle_s = time.monotonic() - t0 - traffic_s
        out.wall_s = time.monotonic() - t0
    except BaseException:
        traffic.stop.set()
        injector.halt()       # before the fixture's teardown: no restart after it
        print("\n===== fault suite failed in its scenario: service log tails =====\n" + log_tails(info["logs"]),
              flush=True)
        raise
    print("\n" + out.summary(), flush=True)
    if out.batch_verdicts()[2] or any(g["status"] == player.ACTIVE for g in out.games):
        print("\n===== unsettled: what each side believed =====\n" + diagnose(out, chain, state, Path(info["logs"]))
              + "\n" + log_tails(info["logs"]), flush=True)
    return out


def game_bound(chain: ChainView, games: list) -> float:
    """When (monotonic) the open games must be over by their clocks: the party to move has its
    clock left after the last move, then a claim_timeout (GAME_CLAIM_S). A liar slashed in one
    game exits and leaves its other games to run out its clock, up to CLOCK s after its last
    move, which on a slow machine ends after SETTLE_S. Bounded by the protocol, not guessed."""
    active = [g for g in games if g["status"] == player.ACTIVE]
    if not active:
        return 0.0
    now = chain.w3.eth.get_block("latest")["timestamp"]
    left = max(g["last_move_at"] + (g["node_clock"] if g["phase"] in player.NODE_PHASES else g["challenger_clock"])
               - now for g in active)
    return time.monotonic() + max(0, left) + GAME_CLAIM_S


def reposts(db) -> tuple[int, int]:
    """(leaves, batches) the coordinator posted again after a reorganisation dropped their batch
    (from its database: counters in /metrics restart with the process)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        leaves, batches = con.execute("select coalesce(sum(leaf_count * reposts), 0), "
                                      "coalesce(sum(reposts > 0), 0) from batches").fetchone()
        return int(leaves), int(batches)
    finally:
        con.close()


def settle(chain: ChainView, info: dict, traffic: Traffic, injector: Injector, seed: int, liar: str,
           deadline: float) -> Outcome:
    """Wait (bounded) until every answered job is on chain, every batch finalized, every leaf
    final or invalid and no game open; then read the coordinator's view of every answered job."""
    api, headers = info["api_url"], {"authorization": f"Bearer {info['api_key']}"}
    finalized: dict[int, bool] = {}
    statuses: dict[tuple[int, int], int] = {}
    rejected: set[str] = set()
    with httpx.Client(headers=headers, timeout=30) as http:
        while True:
            batches = chain.batches()
            posted = group_posted(batches)
            missing = [j for j in traffic.answered if j not in posted and j not in rejected]
            liar_slashed = chain.stake.functions.stake(liar).call() == 0
            for job_id in missing:
                # A job the liar answered after it was slashed can no longer be posted (the rollup
                # takes leaves of staked nodes only): the coordinator marks it rejected.
                if traffic.answered[job_id].node.lower() == liar.lower() and liar_slashed:
                    r = http.get(f"{api}/jobs/0x{job_id}")
                    if r.status_code == 200 and r.json()["status"] == "rejected":
                        rejected.add(job_id)
            for bid in batches:
                if not finalized.get(bid):
                    finalized[bid] = chain.finalized(bid)
            for bid, leaves in batches.items():
                for leaf in leaves:
                    key = (bid, leaf.index)
                    if statuses.get(key) not in (LEAF_FINAL, LEAF_INVALID):
                        statuses[key] = chain.leaf_status(bid, leaf.index)
            games = chain.games()
            missing = [j for j in traffic.answered if j not in posted and j not in rejected]
            done = (not missing and all(finalized.values())
                    and all(s in (LEAF_FINAL, LEAF_INVALID) for s in statuses.values())
                    and not any(g["status"] == player.ACTIVE for g in games))
            if done or time.monotonic() > max(deadline, game_bound(chain, games)):
                break
            time.sleep(2)
        # The coordinator's own view of each answered job (it settles from the chain's events).
        view: dict[str, dict] = {}
        until = time.monotonic() + 40
        while time.monotonic() < until:
            for job_id in traffic.answered:
                if view.get(job_id, {}).get("status") not in ("final", "invalid", "rejected"):
                    r = http.get(f"{api}/jobs/0x{job_id}")
                    view[job_id] = r.json() if r.status_code == 200 else {"status": f"http {r.status_code}"}
            if all(v.get("status") in ("final", "invalid", "rejected") for v in view.values()):
                break
            time.sleep(2)
    slashed = {e["args"]["node"].lower() for e in chain.events(chain.stake, "Slashed")}
    stakes = {n["address"].lower(): chain.stake.functions.stake(n["address"]).call() for n in info["nodes"]}
    return Outcome(seed=seed, faults=injector.counts(), fault_log=list(injector.injected), killed=injector.killed,
                   answered=dict(traffic.answered), reanswered=list(traffic.reanswered), failed=traffic.failed,
                   posted=posted, batches=batches,
                   finalized=finalized, leaf_status=statuses, games=games, rejected_after_slash=rejected,
                   coordinator_view=view, stakes=stakes, slashed=slashed,
                   bonds_awarded=len(chain.events(chain.stake, "BondAwarded")),
                   locked_bond=chain.stake.functions.locked_bond(info["challenger"]["address"]).call(),
                   liar_answered=sum(a.node.lower() == liar.lower() for a in traffic.answered.values()),
                   liar_gone=injector.liar_gone)


# --------------------------------------------------------------------------- checks


def test_faults_were_injected_during_traffic_and_the_game(outcome):
    f = outcome.faults
    assert sum(f.values()) + outcome.liar_gone >= 9, outcome.fault_log
    assert all(f[k] >= 2 for k in ("coordinator", "node", "challenger")) and f["all"] == 1, f
    assert f["liar"] + outcome.liar_gone >= 2 and f["liar"] >= 1, (f, outcome.liar_gone)   # see Injector.liar_gone
    assert len(outcome.answered) >= 30, "too little traffic to mean anything"
    triggers = {(x.target, x.fired) for x in outcome.fault_log}
    print("fault triggers met: " + ", ".join(f"{t}@{w}" for t, w in sorted(triggers)))
    assert ("coordinator", "posting") in triggers, "no coordinator kill hit a batch in flight"
    reorgs = outcome.reorgs
    assert f["reorg"] == 4 and {r.trigger for r in reorgs} == {"posting", "finalize", "challenge", "move"}, reorgs
    assert all(1 <= r.depth <= 5 for r in reorgs), reorgs
    hit = [r for r in reorgs if r.fired == r.trigger]
    print("reorganisations: " + ", ".join(f"{r.trigger}@{r.fired} depth {r.depth} ({r.dropped_txs} txs dropped)"
                                          for r in reorgs))
    # A posting is reorganised away in every run (batches are posted every second); the others
    # need their moment (a game, the window's end) within the plan's time.
    assert any(r.trigger == "posting" for r in hit) and len(hit) >= 3, reorgs
    assert outcome.reposted >= 1, "no job was re-posted after its posting was reorganised away"


def test_every_answered_job_is_posted_exactly_once(outcome):
    lost, dup = outcome.lost, outcome.duplicated
    assert not outcome.reanswered, f"the API gave the same job id to two uncached requests: {outcome.reanswered}"
    assert not lost, f"{len(lost)} answered jobs never posted: {sorted(lost)[:10]}"
    assert not dup, {j: [(p.batch_id, p.index) for p in outcome.posted[j]] for j in sorted(dup)[:10]}
    # A rejected job is one the liar answered and the rollup could no longer take.
    for job_id in outcome.rejected_after_slash:
        note = outcome.coordinator_view[job_id]
        assert note["status"] == "rejected" and "not staked" in str(note.get("leaves")), note


def test_every_batch_finalized_and_every_leaf_settled(outcome):
    assert outcome.batches, "nothing was posted"
    not_final = [b for b, done in outcome.finalized.items() if not done]
    assert not not_final, f"batches never finalized: {not_final}"
    stuck = {k: s for k, s in outcome.leaf_status.items() if s not in (LEAF_FINAL, LEAF_INVALID)}
    assert not stuck, f"leaves neither final nor invalid: {stuck}"
    assert outcome.batch_verdicts()[2] == 0


def test_every_game_ended_with_the_right_winner(outcome, faultnet):
    info = faultnet.info
    liar = next(n["address"] for n in info["nodes"] if n["dishonest"]).lower()
    honest = {n["address"].lower() for n in info["nodes"] if not n["dishonest"]}
    challenger = info["challenger"]["address"].lower()
    lies = [j for j, a in outcome.answered.items() if a.node.lower() == liar]
    assert lies, "the router never sent an answered job to the dishonest node"
    assert outcome.games, "no dispute game was played"
    for g in outcome.games:
        assert g["node"].lower() == liar and g["challenger"].lower() == challenger, g
        assert g["status"] == player.CHALLENGER_WON, g
    assert outcome.bonds_awarded == 0, "the challenger lost a bond"
    assert outcome.locked_bond == 0, "a challenge bond is still locked"
    # The liar is slashed; honest nodes keep their whole stake and were never slashed.
    assert outcome.stakes[liar] == 0 and liar in outcome.slashed
    for node in honest:
        assert outcome.stakes[node] == NODE_STAKE_WEI and node not in outcome.slashed, node
    # No honest leaf invalid; every leaf of the liar invalid (it lies on every embedding).
    for leaves in outcome.batches.values():
        for leaf in leaves:
            status = outcome.leaf_status[(leaf.batch_id, leaf.index)]
            if leaf.node.lower() == liar:
                assert status == LEAF_INVALID, leaf
            else:
                assert status == LEAF_FINAL, leaf
    disputed = {(g["batch_id"], g["leaf_index"]) for g in outcome.games}
    liar_leaves = {(leaf.batch_id, leaf.index) for leaves in outcome.batches.values() for leaf in leaves
                   if leaf.node.lower() == liar}
    assert disputed == liar_leaves, "a game for each of the liar's leaves, none for anyone else's"


def test_coordinator_agrees_with_the_chain(outcome):
    """The coordinator's API (killed and restarted many times, its postings, finalizations, challenges
    and games reorganised away) tells each answered job's status and place as the chain does."""
    assert not outcome.false_statuses, dict(list(outcome.false_statuses.items())[:10])
    status_name = {LEAF_FINAL: "final", LEAF_INVALID: "invalid"}
    for job_id, view in outcome.coordinator_view.items():
        if job_id in outcome.rejected_after_slash:
            continue
        (where,) = outcome.posted[job_id]
        chain_status = outcome.leaf_status[(where.batch_id, where.index)]
        assert chain_status in status_name, f"job {job_id}: its leaf is {chain_status.label} on chain (not settled)"
        assert view.get("status") == status_name[chain_status], (job_id, view)
        assert (view["batch_id"], view["leaf_index"]) == (where.batch_id, where.index), (job_id, view)


def test_summary(outcome):
    print("\n" + outcome.summary())
