"""Crash safety of batch posting: a process killed at each point of posting
(before send, after send, before the receipt is recorded) is restarted, and
every answered job ends up on-chain exactly once."""

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from eth_account import Account
from sqlalchemy import select

from coordinator import models as m
from coordinator.app import Coordinator
from coordinator.schemas import EmbeddingRequest
from coordinator.service import Principal
from opinfer.trace.leaf import Batch

SCRIPT = Path(__file__).with_name("crash_poster.py")
REPO = Path(__file__).resolve().parents[2]
ANON = Principal(None, "test", 0)


def answer_jobs(c: Coordinator, texts: list[str]) -> list[str]:
    c.refresh_nodes()
    req = EmbeddingRequest(model="all-minilm-l6-v2", input=texts, opinfer={"cache": False})

    async def answer():
        try:
            return await c.service.embeddings(req, ANON)
        finally:
            await c.pool.aclose()  # the node connections belong to this loop

    return [a.job.id for a in asyncio.run(answer())]


def chain_job_counts(net) -> Counter:
    """How often each job id occurs in all batches ever posted (from calldata)."""
    rollup = net.deployment.contracts["ResultRollup"]
    counts: Counter = Counter()
    for event in rollup.events.BatchPosted().get_logs(from_block=0):
        tx = net.w3.eth.get_transaction(event["transactionHash"])
        _, args = rollup.decode_function_input(tx["input"])
        plain = lambda rows: [tuple(r.values()) if isinstance(r, dict) else tuple(r) for r in rows]  # noqa: E731
        batch = Batch.from_calldata(plain(args["_leaves"]), plain(args["_runs"]), args["_inputs"])
        counts.update(leaf.job_id.hex() for leaf in batch.leaves)
    return counts


def crash(net, db: Path, point: str) -> int:
    env = {**os.environ, **net.coordinator_env(), "OPINFER_DATABASE_URL": f"sqlite:///{db}",
           "OPINFER_DEVNET_FILE": "/nonexistent", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(SCRIPT), point], env=env, cwd=REPO, timeout=120).returncode


@pytest.mark.parametrize("point", ["before_send", "after_send", "before_receipt_recorded"])
def test_killed_while_posting_then_restarted_posts_each_job_once(net, tmp_path, point):
    db = tmp_path / "c.db"
    settings = net.settings(database_url=f"sqlite:///{db}", scheduler=False)
    c = Coordinator(settings)
    ids = answer_jobs(c, [f"{point}: job {i}" for i in range(3)])
    assert crash(net, db, point) == 17
    with c.sessions() as s:
        batch = s.scalars(select(m.Batch)).one()
        assert batch.state in (m.PREPARED, m.SENT)  # the crash left it unfinished
    posted = Coordinator(settings).post_batches()  # the restart reconciles
    assert len(posted) == 1
    counts = chain_job_counts(net)
    assert all(counts[job_id] == 1 for job_id in ids)
    with c.sessions() as s:
        leaves = s.scalars(select(m.Leaf).where(m.Leaf.job_id.in_(ids))).all()
        assert {leaf.status for leaf in leaves} == {m.POSTED}
        assert {leaf.batch.chain_batch_id for leaf in leaves} == set(posted)
        assert s.scalars(select(m.Batch.state)).all() == [m.BATCH_POSTED]


def test_a_batch_whose_nonce_went_elsewhere_is_reposted(net, tmp_path):
    db = tmp_path / "c.db"
    settings = net.settings(database_url=f"sqlite:///{db}", scheduler=False)
    c = Coordinator(settings)
    ids = answer_jobs(c, ["nonce taken: a", "nonce taken: b"])
    assert crash(net, db, "before_send") == 17
    # Meanwhile the coordinator's key sends something else with that nonce.
    me = Account.from_key(net.keys["coordinator"])
    tx = me.sign_transaction({"to": me.address, "value": 0, "gas": 21000, "gasPrice": net.w3.eth.gas_price,
                              "nonce": net.w3.eth.get_transaction_count(me.address), "chainId": net.w3.eth.chain_id})
    net.w3.eth.wait_for_transaction_receipt(net.w3.eth.send_raw_transaction(tx.raw_transaction))
    posted = Coordinator(settings).post_batches()
    assert len(posted) == 1
    counts = chain_job_counts(net)
    assert all(counts[job_id] == 1 for job_id in ids)
    with c.sessions() as s:
        states = Counter(s.scalars(select(m.Batch.state)).all())
        assert states == {m.FAILED: 1, m.BATCH_POSTED: 1}


def test_a_posting_run_takes_the_leaves_pending_at_its_start(net, tmp_path):
    """Leaves answered while a batch is on its way wait for the next run:
    under steady traffic the poster does not chase them with a stream of
    tiny batches."""
    settings = net.settings(database_url=f"sqlite:///{tmp_path / 'c.db'}", scheduler=False)
    c = Coordinator(settings)
    first = answer_jobs(c, ["pending at the start: a", "pending at the start: b"])
    late: list[str] = []

    def answer_while_sending(point: str) -> None:
        if point == "before_send" and not late:
            late.extend(answer_jobs(c, ["answered meanwhile: c", "answered meanwhile: d"]))

    c.poster.crash = answer_while_sending
    assert len(c.post_batches()) == 1
    assert len(late) == 2
    with c.sessions() as s:
        status = dict(s.execute(select(m.Leaf.job_id, m.Leaf.status)).all())
    assert [status[j] for j in first] == [m.POSTED, m.POSTED]
    assert [status[j] for j in late] == [m.PENDING, m.PENDING]
    assert len(c.post_batches()) == 1   # the next run posts them
    counts = chain_job_counts(net)
    assert all(counts[job_id] == 1 for job_id in first + late)


def test_a_batch_counts_as_posted_only_after_its_confirmations(net, tmp_path):
    """With `confirmations` = 2 a mined batch stays `sent` (no proof served)
    until two blocks are on top of it; then it is `posted`."""
    import threading

    settings = net.settings(database_url=f"sqlite:///{tmp_path / 'c.db'}", scheduler=False, confirmations=2)
    c = Coordinator(settings)
    ids = answer_jobs(c, ["wait for confirmations"])
    result: dict = {}
    poster = threading.Thread(target=lambda: result.setdefault("posted", c.post_batches()))
    poster.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and chain_job_counts(net)[ids[0]] == 0:
        time.sleep(0.1)
    assert chain_job_counts(net)[ids[0]] == 1          # mined
    time.sleep(0.5)
    with c.sessions() as s:
        assert s.scalars(select(m.Batch.state)).all() == [m.SENT]   # but not yet confirmed
    assert poster.is_alive()
    for _ in range(2):
        net.w3.provider.make_request("evm_mine", [])
    poster.join(20)
    assert not poster.is_alive() and len(result["posted"]) == 1
    with c.sessions() as s:
        assert s.scalars(select(m.Batch.state)).all() == [m.BATCH_POSTED]
        assert s.scalars(select(m.Leaf.status).where(m.Leaf.job_id == ids[0])).all() == [m.POSTED]
