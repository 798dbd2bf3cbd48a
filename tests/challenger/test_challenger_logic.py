"""The challenger's pure logic and its loop over a fake chain: sampling,
solver decisions, the store, cursor handling and crash-safe rescans."""

import io
import json
import logging

import pytest

from challenger import solver
from challenger.chain import ModelInfo
from challenger.errors import ConfigError, DecodeError
from challenger.executors import ProgramExecutor
from challenger.logs import JsonFormatter, event
from challenger.metrics import Metrics
from challenger.sampler import Sampler
from challenger.service import Challenger
from challenger.settings import Settings
from challenger.store import DETECTED, OPEN, WON, Store
from opinfer.errors import ChainError
from opinfer.trace import player
from opinfer.trace.bisection import dissection_points
from opinfer.trace.state import Trace
from opinfer.trace.testing import corrupted_trace, toy_job, toy_program
from tests.challenger.fakes import CHEAT, HONEST, FakeChain, leaf

SECRET = b"s" * 32
PROGRAM = toy_program()


# ---------------------------------------------------------------- sampler

def test_sampling_rate_is_met_and_keyed_by_secret_and_block():
    s = Sampler(SECRET, 0.3)
    picks = [s.sampled(b"\x01" * 32, 7, i) for i in range(20_000)]
    assert 0.28 < sum(picks) / len(picks) < 0.32
    other_secret = [Sampler(b"t" * 32, 0.3).sampled(b"\x01" * 32, 7, i) for i in range(20_000)]
    other_block = [s.sampled(b"\x02" * 32, 7, i) for i in range(20_000)]
    # Independent draws agree on about 0.3^2 + 0.7^2 = 58% of leaves, not all of them.
    for other in (other_secret, other_block):
        same = sum(a == b for a, b in zip(picks, other)) / len(picks)
        assert 0.55 < same < 0.61
    assert s.select(b"\x01" * 32, 7, [HONEST] * 50) == [i for i in range(50) if picks[i]]


def test_sampling_extremes_and_suspects_are_always_checked():
    nodes = [HONEST, CHEAT] * 20
    assert Sampler(SECRET, 0.0).select(b"\x00" * 32, 1, nodes) == []
    assert Sampler(SECRET, 1.0).select(b"\x00" * 32, 1, nodes) == list(range(40))
    s = Sampler(SECRET, 0.0)
    assert s.mark(CHEAT.upper().replace("0X", "0x")) and not s.mark(CHEAT)
    assert s.select(b"\x00" * 32, 1, nodes) == list(range(1, 40, 2))
    with pytest.raises(ValueError):
        Sampler(SECRET, 1.5)
    with pytest.raises(ValueError):
        Sampler(b"short", 0.5)


# ---------------------------------------------------------------- solver

def game(**kw):
    g = {"status": player.ACTIVE, "phase": player.PICK, "last_move_at": 100, "node_clock": 50,
         "challenger_clock": 50, "lo": 0, "hi": 4, "hi_root": b"", "pending": b"", "subtree": b""}
    return {**g, **kw}


def no_trace():
    raise AssertionError("the trace is built only when a move needs it")


def test_verdicts():
    a, b = b"\x01" * 32, b"\x02" * 32
    assert solver.verdict(a, b, a, b) == solver.OK
    assert solver.verdict(a, b, a, a) == solver.WRONG_OUTPUT
    assert solver.verdict(a, b, b, b) == solver.WRONG_INPUT


def test_decide_ends_waits_and_claims_timeouts():
    assert solver.decide(1, game(status=player.CHALLENGER_WON), 0, no_trace, 4, 2, []).outcome == "won"
    assert solver.decide(1, game(status=player.NODE_WON), 0, no_trace, 4, 2, []).outcome == "lost"
    assert solver.decide(1, game(status=player.VOID), 0, no_trace, 4, 2, []).outcome == "void"
    node_turn = game(phase=player.BISECT)
    assert solver.decide(1, node_turn, 150, no_trace, 4, 2, []).kind == solver.WAIT  # exactly the clock: not yet
    timeout = solver.decide(1, node_turn, 151, no_trace, 4, 2, [])
    assert timeout.kind == solver.TIMEOUT and timeout.move == player.Move("claim_timeout", (1,))
    assert solver.decide(1, game(), 151, no_trace, 4, 2, []).kind == solver.OUT_OF_TIME


def test_decide_picks_the_first_disputed_part_from_our_trace():
    job = toy_job(1)
    ours = Trace.of(PROGRAM, job)
    bad = corrupted_trace(PROGRAM, job, 3, 0, 2, delta=5)
    points = dissection_points(0, ours.n, 4)
    claims = [bad.state_root(p) for p in points]
    g = game(hi=ours.n, hi_root=bad.state_root(ours.n))
    action = solver.decide(9, g, 120, lambda: ours, 4, 2, claims)
    assert action.kind == solver.MOVE and action.move.function == "pick"
    assert action.move.args == (9, claims, 2)  # states 1 and 2 agree; 3 is the first wrong one


def test_revealed_values_are_checked_against_the_game_commitment():
    from eth_abi import encode

    from opinfer.semantics.merkle import keccak

    claims = [b"\x01" * 32, b"\x02" * 32, b"\x03" * 32]
    g = game(pending=keccak(encode(["bytes32[]"], [claims])))
    assert solver.revealed_matches(g, claims)
    assert not solver.revealed_matches(g, claims[:2]) and not solver.revealed_matches(g, [])
    values = list(range(16))
    g = game(phase=player.ELEMENT, subtree=keccak(encode(["int256[16]"], [values])))
    assert solver.revealed_matches(g, values) and not solver.revealed_matches(g, values[::-1])


# ---------------------------------------------------------------- store and settings

def test_store_keeps_cursor_games_and_revealed_values(tmp_path):
    path = tmp_path / "c.db"
    s = Store(path)
    s.bind(1, "0xAbC")
    assert s.cursor is None
    s.cursor = 41
    assert s.add_dispute(3, 1, CHEAT, 1, "output-root") and not s.add_dispute(3, 1, CHEAT, 1, "output-root")
    s.set_dispute(3, 1, OPEN, game_id=5, start_block=40)
    s.set_revealed(5, [b"\x01" * 32, 7])
    s.close()
    s = Store(path)
    s.bind(1, "0xabc")
    assert s.cursor == 41
    (d,) = s.disputes(OPEN)
    assert (d.game_id, d.start_block, d.revealed) == (5, 40, ["01" * 32, 7])
    with pytest.raises(ConfigError, match="belongs to deployment"):
        s.bind(2, "0xabc")


def test_settings_from_flags_env_and_devnet_file(tmp_path):
    devnet = tmp_path / "devnet.json"
    devnet.write_text(json.dumps({"rpc_url": "http://x:1", "contracts": {"ResultRollup": "0x" + "b" * 40},
                                  "accounts": {"challenger": {"private_key": "0x" + "11" * 32}}}))
    env = {"OPINFER_CHALLENGER_SAMPLE_RATE": "0.5", "OPINFER_CHALLENGER_CONFIRMATIONS": "3",
           "OPINFER_CHALLENGER_DEVNET_FILE": str(devnet)}
    s = Settings.load({"confirmations": 1}, env=env)
    assert (s.sample_rate, s.confirmations, s.rpc_url) == (0.5, 1, "http://x:1")
    assert len(s.secret_bytes()) == 32 and s.secret_bytes() != bytes.fromhex("11" * 32)
    with pytest.raises(ConfigError, match="missing settings"):
        Settings.load(env={"OPINFER_CHALLENGER_DEVNET_FILE": str(tmp_path / "none.json")})
    with pytest.raises(ConfigError, match="sample rate"):
        Settings.load({"sample_rate": 2.0}, env=env)


def test_logs_are_one_json_object_per_line():
    stream = io.StringIO()
    log = logging.getLogger("test.challenger.json")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    event(log, "batch checked", batch=3, root=b"\x01\x02")
    line = json.loads(stream.getvalue())
    assert (line["msg"], line["batch"], line["root"], line["level"]) == ("batch checked", 3, "0x0102", "info")


# ---------------------------------------------------------------- the loop on a fake chain

def make(tmp_path, chain=None, rate=1.0, **kw):
    chain = chain or FakeChain({1: ModelInfo(1, "toy-dot", PROGRAM.model_root, PROGRAM.num_ops)})
    log = logging.getLogger("test.challenger")
    kw.setdefault("workers", 0)   # the loop's logic, deterministic: background work runs inline
    c = Challenger(chain, Store(tmp_path / "c.db"), {"toy-dot": ProgramExecutor(PROGRAM)}, Sampler(SECRET, rate),
                   Metrics(), log, **kw)
    return chain, c


def metric(c, name, labels=""):
    for line in c.metrics.render().decode().splitlines():
        if line.startswith(f"opinfer_challenger_{name}{labels} ") or line.startswith(f"opinfer_challenger_{name}_total{labels} "):
            return float(line.split()[-1])
    return 0.0


def test_honest_batches_are_checked_once_and_never_disputed(tmp_path):
    chain, c = make(tmp_path)
    chain.post([leaf(PROGRAM, toy_job(i), HONEST, job_no=i) for i in range(3)])
    chain.post([leaf(PROGRAM, toy_job(9), HONEST, job_no=9)])
    c.tick()
    c.tick()
    assert c.store.cursor == chain.block and not c.store.disputes()
    assert metric(c, "batches_seen") == 2 and metric(c, "leaves_checked", '{model="toy-dot"}') == 4
    assert metric(c, "lag_blocks") == 0 and not chain.sent


def test_confirmations_hold_back_the_newest_blocks(tmp_path):
    chain, c = make(tmp_path, confirmations=2)
    chain.post([leaf(PROGRAM, toy_job(1), HONEST)])
    c.tick()
    assert metric(c, "batches_seen") == 0 and c.store.cursor is None and metric(c, "lag_blocks") == 2
    chain.mine(2)
    c.tick()
    assert metric(c, "batches_seen") == 1 and c.store.cursor == 1


def test_a_wrong_leaf_is_disputed_and_its_node_checked_everywhere(tmp_path):
    chain, c = make(tmp_path, rate=0.0)  # nothing sampled: only the fraud record triggers checks
    first = chain.post([leaf(PROGRAM, toy_job(i), CHEAT, job_no=i) for i in range(3)]
                       + [leaf(PROGRAM, toy_job(5), HONEST, job_no=5)])
    c.tick()
    assert c.store.checked(first) == {}
    chain.post([leaf(PROGRAM, toy_job(7), CHEAT, job_no=7, lie=3), leaf(PROGRAM, toy_job(8), HONEST, job_no=8)])
    c.sampler.rate = 1.0
    c.tick()
    c.sampler.rate = 0.0
    # The lie in batch 2 gave CHEAT a record: its leaves in batch 1 (still open) were re-checked, HONEST's not.
    assert c.store.checked(first) == {0: "ok", 1: "ok", 2: "ok"}
    (d,) = c.store.disputes()
    assert (d.batch_id, d.leaf_index, d.status, d.game_id) == (2, 0, OPEN, 1)
    assert c.store.suspects() == {CHEAT.lower()} and metric(c, "disputes_opened") == 1
    # later batches: every CHEAT leaf is checked although nothing is sampled
    third = chain.post([leaf(PROGRAM, toy_job(11), HONEST), leaf(PROGRAM, toy_job(12), CHEAT)])
    c.tick()
    assert c.store.checked(third) == {1: "ok"}


def test_game_turns_timeouts_and_results(tmp_path):
    chain, c = make(tmp_path)
    chain.post([leaf(PROGRAM, toy_job(1), CHEAT, lie=1)])
    c.tick()
    g = chain.games[1]
    c.tick()
    assert chain.sent == []  # node to move, clock running
    chain.now += 301
    c.tick()
    assert chain.sent == [player.Move("claim_timeout", (1,))]
    g["status"] = player.CHALLENGER_WON
    chain.owed = 5 * 10**17
    c.tick()
    assert c.store.disputes()[0].status == WON and metric(c, "disputes_won") == 1
    assert metric(c, "rewards_claimed_wei") == 5 * 10**17 and metric(c, "games_active") == 0


def test_bond_is_topped_up_only_when_allowed(tmp_path):
    chain, c = make(tmp_path)
    chain.bond = 0
    chain.post([leaf(PROGRAM, toy_job(1), CHEAT, lie=1)])
    c.tick()
    assert c.store.disputes()[0].status == DETECTED and metric(c, "errors", '{where="open"}') >= 1
    c.bond_top_up = 10**18
    c.tick()
    assert chain.deposits == [10**18] and c.store.disputes()[0].status == OPEN


def test_a_crash_mid_range_rescans_it_and_skips_handled_batches(tmp_path):
    chain, c = make(tmp_path)
    for i in range(3):
        chain.post([leaf(PROGRAM, toy_job(i), HONEST, job_no=i)])
    chain.fail_load = {3: ChainError}  # the third batch cannot be read yet (an RPC outage)
    c.tick()
    assert c.store.cursor is None and metric(c, "errors", '{where="scan"}') == 1  # never past an unhandled batch
    # A restart with a fresh process (same store) finishes the range; batches 1 and 2 are not re-read.
    chain.fail_load = {}
    loads = chain.loads
    _, c2 = make(tmp_path, chain)
    c2.tick()
    assert c2.store.cursor == chain.block and chain.loads == loads + 1
    assert {b: c2.store.batch(b).status for b in (1, 2, 3)} == {1: "done", 2: "done", 3: "done"}


def test_calldata_that_does_not_match_is_recorded_once(tmp_path):
    chain, c = make(tmp_path)
    chain.post([leaf(PROGRAM, toy_job(1), HONEST)])
    chain.fail_load = {1: DecodeError}
    c.tick()
    c.tick()
    assert c.store.batch(1).status == "undecodable" and chain.loads == 1 and c.store.cursor == 1


def test_batches_past_their_window_are_counted_not_checked(tmp_path):
    chain, c = make(tmp_path)
    chain.post([leaf(PROGRAM, toy_job(1), CHEAT, lie=1)], window=5)
    chain.now += 10
    c.tick()
    assert metric(c, "batches_expired") == 1 and not c.store.disputes() and chain.loads == 0


def test_a_challenge_sent_before_a_crash_is_adopted(tmp_path):
    chain, c = make(tmp_path)
    chain.post([leaf(PROGRAM, toy_job(1), CHEAT, lie=1)])
    c.scan()
    (d,) = c.store.disputes(DETECTED)
    chain.challenge(None, d.batch_id, d.leaf_index, b"")  # sent, then the process died
    _, c2 = make(tmp_path, chain)
    c2.tick()
    (d,) = c2.store.disputes()
    assert (d.status, d.game_id) == (OPEN, 1) and len(chain.games) == 1


def test_open_games_move_first_and_a_long_scan_yields_to_them(tmp_path):
    """Found by tests/faults: a restarted challenger re-executed its backlog before moving in
    its games (lost on time) and before challenging lies it had found (too late). Now those
    come first and the scan is sliced."""
    chain, c = make(tmp_path, scan_slice_s=0.0)
    chain.post([leaf(PROGRAM, toy_job(1), CHEAT, lie=1)])
    c.tick()
    assert c.store.disputes()[0].status == OPEN
    for i in range(3):
        chain.post([leaf(PROGRAM, toy_job(10 + i), HONEST, job_no=10 + i)])
    calls = []
    for name in ("open_disputes", "play", "scan"):
        original = getattr(c, name)
        setattr(c, name, lambda original=original, name=name: (calls.append(name), original())[1])
    c.tick()
    assert calls == ["open_disputes", "play", "scan", "open_disputes"]
    # A game is open and the slice is spent after each batch: one batch per tick, the cursor
    # held until the range is done, handled batches skipped when it is read again.
    assert [c.store.batch(b) is not None for b in (2, 3, 4)] == [True, False, False] and c.store.cursor == 1
    c.tick()
    c.tick()
    assert c.store.cursor == chain.block and {c.store.batch(b).status for b in (2, 3, 4)} == {"done"}
    assert metric(c, "batches_seen") == 4
