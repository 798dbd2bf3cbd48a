"""The coordinator on a chain that reorganises (anvil_reorg, evm_snapshot /
evm_revert), under traffic: a dropped posting is posted again exactly once,
a re-mined posting is recorded under its new batch id (no UNIQUE failure),
a dropped finalize is re-sent, and the API never reports a status the
canonical chain does not back. Every check reads the chain itself: each
answered job in exactly one canonical leaf, each API status the chain's.

Reorganisations only touch blocks this module mined: it pads the chain
first, so the session's deployment and the other modules' blocks stay."""

import threading

import httpx
import pytest
from eth_account import Account

from opinfer.chain import reorg
from opinfer.chain.anvil import dev_keys
from opinfer.chain.sender import TxSender
from opinfer.sdk.verify import ChainReader, check_job, verify_on_chain
from opinfer.trace.leaf import Batch
from tests.coordinator.conftest import run_coordinator

MINILM = "all-minilm-l6-v2"
STATUS = {1: "posted", 2: "disputed", 3: "final", 4: "invalid"}
UNLIMITED = {"anonymous_rate_limit_rpm": 0}   # the traffic thread is no abuse


def mine(net, n=1):
    for _ in range(n):
        net.w3.provider.make_request("evm_mine", [])


@pytest.fixture(scope="module")
def c1(net, tmp_path_factory):
    mine(net, 6)   # nothing of the session's set-up within reach of this module's reorganisations
    running = run_coordinator(net, tmp_path_factory.mktemp("reorg") / "c1.db", **UNLIMITED)
    yield running
    running.stop()


class Traffic:
    """Embedding requests from a thread while the test reorganises the chain; records every job answered."""

    def __init__(self, *coords):
        self.coords, self.answered, self.stop = coords, {}, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.n = 0

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(60)

    def _run(self):
        with httpx.Client(timeout=60) as http:
            while not self.stop.is_set():
                coord = self.coords[self.n % len(self.coords)]
                self.one(coord, http)
                self.stop.wait(0.2)

    def one(self, coord, http=None):
        self.n += 1
        r = (http or httpx).post(f"{coord.url}/v1/embeddings", json={
            "model": MINILM, "input": f"reorg traffic {id(self)} {self.n}", "opinfer": {"cache": False}}, timeout=60)
        assert r.status_code == 200, r.text
        self.answered[r.json()["opinfer"]["job_id"]] = coord
        return r.json()["opinfer"]["job_id"]


def canonical_leaves(net) -> dict[str, list[tuple[int, int]]]:
    """job id -> (batch id, index) of every leaf in every canonical batch, rebuilt from calldata."""
    rollup = net.deployment.contracts["ResultRollup"]
    out: dict[str, list[tuple[int, int]]] = {}
    for e in rollup.events.BatchPosted().get_logs(from_block=0, to_block="latest"):
        tx = net.w3.eth.get_transaction(e["transactionHash"])
        _, args = rollup.decode_function_input(tx["input"])
        plain = [[tuple(x.values()) if isinstance(x, dict) else tuple(x) for x in args[k]] for k in ("_leaves", "_runs")]
        batch = Batch.from_calldata(plain[0], plain[1], bytes(args["_inputs"]))
        assert batch.root == bytes(e["args"]["root"])
        for i, leaf in enumerate(batch.leaves):
            out.setdefault("0x" + leaf.job_id.hex(), []).append((e["args"]["batch_id"], i))
    return out


def audit(net, answered: dict) -> None:
    """Every answered job in exactly one canonical leaf; the API's status and place are the chain's."""
    rollup = net.deployment.contracts["ResultRollup"]
    where = canonical_leaves(net)
    lost = [j for j in answered if j not in where]
    dup = {j: where[j] for j in answered if len(where.get(j, [])) > 1}
    assert not lost and not dup, (lost, dup)
    for job_id, coord in answered.items():
        view = httpx.get(f"{coord.url}/v1/jobs/{job_id}").json()
        assert "error" not in view, view
        ((batch_id, index),) = where[job_id]
        assert (view["batch_id"], view["leaf_index"]) == (batch_id, index), (job_id, view["status"])
        assert view["status"] == STATUS[rollup.functions.leaf_status(batch_id, index).call()], job_id


def sdk_verify(net, view):
    """The SDK's verification of a job view against the chain (its own RPC connection)."""
    rollup = net.addresses["ResultRollup"]
    report = check_job(view, net.deployment.chain_id, rollup)
    return verify_on_chain(report, view, ChainReader(net.anvil.url, rollup))


def metric(coord, name) -> float:
    for line in httpx.get(f"{coord.url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_a_dropped_posting_is_posted_again_exactly_once(c1, net, depth):
    reposted = metric(c1, "opinfer_reposted_leaves_total")
    with Traffic(c1) as traffic:
        ids = [traffic.one(c1) for _ in range(3)]
        c1.c.post_batches()
        stale = httpx.get(f"{c1.url}/v1/jobs/{ids[0]}").json()
        tx_hash = stale["tx_hash"]
        assert sdk_verify(net, stale).ok
        mine(net, depth - 1)     # the posting is `depth` blocks deep
        reorg.anvil_reorg(net.w3, depth)
        # Before the coordinator runs again, the API already stops vouching for the batch.
        view = httpx.get(f"{c1.url}/v1/jobs/{ids[0]}").json()
        assert view["status"] == "pending" and view["batch_id"] is None and view["proof"] is None
        with pytest.raises(Exception):
            net.w3.eth.get_transaction_receipt(tx_hash)
        # The SDK, handed the view from before, does not take the coordinator's word for it.
        report = sdk_verify(net, stale)
        assert not report.ok and report.status == "pending"
        assert report.failed().name == "posting transaction on the canonical chain"
        c1.c.post_batches()      # re-sends the dropped posting (same bytes), then posts what arrived meanwhile
        assert net.w3.eth.get_transaction_receipt(tx_hash)["status"] == 1
    c1.c.post_batches()
    assert metric(c1, "opinfer_reposted_leaves_total") >= reposted + 3
    audit(net, traffic.answered)
    health = httpx.get(f"{c1.url}/healthz").json()
    assert health["posting"]["reorgs"] >= 1 and health["posting"]["reposts"] >= 1


def a_final_job(c1, net, traffic) -> tuple[str, int]:
    """(job id, batch id) of a job answered, posted and finalized now."""
    job_id = traffic.one(c1)
    c1.c.post_batches()
    net.time_travel(61)
    c1.c.finalize()
    view = httpx.get(f"{c1.url}/v1/jobs/{job_id}").json()
    assert view["status"] == "final"
    return job_id, view["batch_id"]


@pytest.mark.parametrize("depth", [1, 3, 5])
def test_a_dropped_finalize_is_sent_again_and_final_means_final(c1, net, depth):
    rollup = net.deployment.contracts["ResultRollup"]
    with Traffic(c1) as traffic:
        job_id, batch_id = a_final_job(c1, net, traffic)
        mine(net, depth - 1)
        reorg.anvil_reorg(net.w3, depth)
        assert not rollup.functions.batch(batch_id).call()[5]   # the chain: not finalized any more
        # The API stops saying final at once, and the next run sends the finalize again.
        assert httpx.get(f"{c1.url}/v1/jobs/{job_id}").json()["status"] == "posted"
        c1.c.finalize()
        assert rollup.functions.batch(batch_id).call()[5]
        assert httpx.get(f"{c1.url}/v1/jobs/{job_id}").json()["status"] == "final"
    c1.c.post_batches()
    net.time_travel(61)
    c1.c.finalize()
    audit(net, traffic.answered)


def test_a_dropped_finalize_is_seen_after_a_newer_posting_was_recorded(c1, net):
    """The fault suite's lost finalize (seed 515277): a reorganisation drops a finalize the
    coordinator recorded, and a posting sent after it is mined and recorded (its block
    remembered) before the follower looks again. The newest remembered block is then
    canonical while the finalize's is not: the follower must still see the finalize gone."""
    rollup = net.deployment.contracts["ResultRollup"]
    with Traffic(c1) as traffic:
        job_id, batch_id = a_final_job(c1, net, traffic)
        reorg.anvil_reorg(net.w3, 1)
        assert not rollup.functions.batch(batch_id).call()[5]
        # A posting goes out and is recorded with no follower run in between (as when the
        # poster's sync ran just before the reorganisation).
        traffic.one(c1)
        pk = c1.c.poster.prepare()
        assert pk is not None
        with c1.c.poster.wallet.lock:
            c1.c.poster.send(pk)
        c1.c.finalize()
        assert rollup.functions.batch(batch_id).call()[5], "the dropped finalize was never sent again"
        assert httpx.get(f"{c1.url}/v1/jobs/{job_id}").json()["status"] == "final"
    c1.c.post_batches()
    net.time_travel(61)
    c1.c.finalize()
    audit(net, traffic.answered)


def test_a_posting_mined_again_under_another_batch_id(c1, net, tmp_path):
    """The issue's bug: the id of a dropped batch goes to another batch. Here a second
    coordinator's batch takes it and ours is mined again after it, under the next id."""
    rollup = net.deployment.contracts["ResultRollup"]
    other = dev_keys(13)[12]
    TxSender(net.w3, net.keys["deployer"]).call(rollup.functions.set_coordinator(Account.from_key(other).address,
                                                                                 True))
    c2 = run_coordinator(net, tmp_path / "c2.db", coordinator_key=other, **UNLIMITED)
    traffic = Traffic(c1, c2)   # requests from this thread: the posting must be the newest block
    try:
        if True:
            mine_ids = [traffic.one(c1) for _ in range(2)]
            theirs = traffic.one(c2)
            c1.c.post_batches()
            view = httpx.get(f"{c1.url}/v1/jobs/{mine_ids[0]}").json()
            first_id, ours_tx, stale = view["batch_id"], bytes.fromhex(view["tx_hash"][2:]), view
            assert net.w3.eth.get_transaction_receipt(ours_tx)["blockNumber"] == net.w3.eth.block_number
            # c2 signs and records its batch without sending it; the reorganisation mines it first.
            c2_batch = c2.c.poster.prepare()
            with c2.c.sessions() as s:
                from coordinator import models as m

                c2_raw = s.get(m.Batch, c2_batch).raw_tx
            ours_raw = reorg.raw_transaction(net.w3, ours_tx)
            reorg.anvil_reorg(net.w3, 1, [(c2_raw, 0), (ours_raw, 0)])
            assert rollup.functions.batch_count().call() == first_id + 1
            c1.c.post_batches()
            c2.c.post_batches()
            # A view from before names the old id: the SDK sees the transaction posted another one.
            report = sdk_verify(net, stale)
            assert not report.ok and f"posted batch {first_id + 1}, not {first_id}" in report.failed().detail
            view = httpx.get(f"{c1.url}/v1/jobs/{mine_ids[0]}").json()
            assert view["batch_id"] == first_id + 1 and view["status"] == "posted" and sdk_verify(net, view).ok
            assert httpx.get(f"{c2.url}/v1/jobs/{theirs}").json()["batch_id"] == first_id
            assert httpx.get(f"{c1.url}/v1/batches/{first_id + 1}").json()["tx_hash"] == "0x" + ours_tx.hex()
        c1.c.post_batches()
        c2.c.post_batches()
        audit(net, traffic.answered)
    finally:
        c2.stop()


def test_a_deep_rewind_with_evm_revert(c1, net):
    """Several postings and a finalize undone at once (evm_revert: the chain gets shorter),
    then the chain grows again on another branch: everything is posted again, once."""
    with Traffic(c1) as traffic:
        traffic.one(c1)
        c1.c.post_batches()
        snap = reorg.snapshot(net.w3)
        for _ in range(3):
            traffic.one(c1)
            c1.c.post_batches()
        net.time_travel(61)
        c1.c.finalize()
        head = net.w3.eth.block_number
        reorg.revert(net.w3, snap)
        assert net.w3.eth.block_number < head - 3
        c1.c.post_batches()
        c1.c.finalize()
    c1.c.post_batches()
    net.time_travel(61)
    c1.c.finalize()
    audit(net, traffic.answered)
    assert all(httpx.get(f"{c1.url}/v1/jobs/{j}").json()["status"] in ("posted", "final") for j in traffic.answered)


def test_health_reports_a_posting_stall(c1, net):
    """An answered leaf left unposted longer than posting_stall_s makes /healthz degraded (503)
    with the reason; posting it makes it ok again."""
    settings = c1.c.settings
    saved = settings.posting_stall_s, settings.scheduler
    settings.posting_stall_s, settings.scheduler = 0.5, True   # as if the scheduler were posting
    try:
        Traffic(c1).one(c1)
        import time

        time.sleep(0.6)
        r = httpx.get(f"{c1.url}/healthz")
        posting = r.json()["posting"]
        assert r.status_code == 503 and posting["stalled"] and "waited" in posting["reason"]
        c1.c.post_batches()
        r = httpx.get(f"{c1.url}/healthz")
        assert r.status_code == 200 and not r.json()["posting"]["stalled"], r.json()
    finally:
        settings.posting_stall_s, settings.scheduler = saved
