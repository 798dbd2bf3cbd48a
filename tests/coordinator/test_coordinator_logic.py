"""Pure parts of the coordinator: routing scores, backoff, ejection, cache, rate limits."""

import random

import pytest

from coordinator import routing
from coordinator.cache import ResponseCache, cache_key
from coordinator.errors import RateLimited
from coordinator.ratelimit import RateLimiter


class Clock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


def node(address, latency=None, stake=10**18, models=(1,), errors=0.0):
    return routing.NodeHealth(address, f"http://{address}", frozenset(models), stake, True, latency, errors)


def test_rank_prefers_fast_reliable_well_staked_nodes():
    fast, slow = node("a", 10), node("b", 50)
    assert [n.address for n in routing.rank([slow, fast], 1, 0)] == ["a", "b"]
    flaky = node("c", 10, errors=0.9)
    assert routing.rank([flaky, node("b2", 30)], 1, 0)[0].address == "b2"  # 10 ms at 90% errors costs 46
    poor = node("d", 10, stake=10**15)
    rich = node("e", 14, stake=10**19)
    assert routing.rank([poor, rich], 1, 0)[0].address == "e"
    busy = node("f", 10)
    busy.inflight = 5  # 10 ms x 6 > 50 ms
    assert routing.rank([busy, slow], 1, 0)[0].address == "b"
    assert routing.rank([fast], 2, 0) == []            # does not serve model 2
    assert routing.rank([fast], 1, 0, {"a"}) == []     # already tried


def test_full_jitter_backoff_stays_within_the_exponential_cap():
    rng = random.Random(1)
    for attempt in range(8):
        draws = [routing.backoff(attempt, 0.05, 1.0, rng) for _ in range(200)]
        cap = min(1.0, 0.05 * 2 ** attempt)
        assert all(0 <= d <= cap for d in draws)
        assert max(draws) > 0.8 * cap and min(draws) < 0.2 * cap  # spread over the whole range


def test_failing_node_leaves_rotation_and_comes_back_for_one_try():
    n = node("a", 10)
    assert not routing.record_failure(n, "timeout", 100.0, 3, 30.0)
    assert not routing.record_failure(n, "timeout", 100.0, 3, 30.0)
    assert routing.record_failure(n, "timeout", 100.0, 3, 30.0)
    assert not n.in_rotation(129.0) and n.in_rotation(130.0)
    assert routing.record_failure(n, "timeout", 130.0, 3, 30.0)   # the try failed: twice as long
    assert not n.in_rotation(189.0) and n.in_rotation(190.0)
    routing.record_success(n, 12.0)
    assert n.failures == 0 and n.in_rotation(190.0) and n.error_rate < 0.9


def test_cache_ttl_and_stale_fallback():
    clock = Clock()
    cache = ResponseCache(clock, ttl=10, stale=100, max_entries=2)
    k1, k2, k3 = (cache_key(b"root", bytes([i])) for i in range(3))
    assert cache_key(b"root", b"x") != cache_key(b"other", b"x")
    cache.put(k1, "job1")
    assert cache.get(k1).job_id == "job1"
    clock.now += 11
    assert cache.get(k1) is None and cache.get(k1, allow_stale=True).job_id == "job1"
    clock.now += 100
    assert cache.get(k1, allow_stale=True) is None
    cache.put(k1, "a"), cache.put(k2, "b"), cache.put(k3, "c")
    assert cache.get(k1) is None and cache.get(k3).job_id == "c"  # LRU bound


def test_token_bucket_limits_and_says_when_to_retry():
    clock = Clock()
    limiter = RateLimiter(clock)
    for _ in range(3):
        limiter.take("k", 3)
    with pytest.raises(RateLimited) as exc:
        limiter.take("k", 3)
    assert exc.value.status == 429 and 19 <= exc.value.retry_after <= 20
    assert exc.value.headers["retry-after"] == "20"
    limiter.take("other", 3)          # buckets are per key
    clock.now += 20
    limiter.take("k", 3)
    limiter.take("k", 0)              # 0 = unlimited


def test_health_probes_of_an_ejected_node_do_not_extend_its_ejection():
    """Found by the fault suite: a node killed and restarted (40 s of model loading) was
    probed every few seconds; each failed probe doubled its ejection, so it stayed out of
    rotation 32 x eject_for after it was back. Only its one try after the time counts."""
    from coordinator.metrics import Metrics
    from coordinator.nodes import NodePool
    from opinfer.chain.anvil import free_port

    clock = Clock(1000.0)
    pool = NodePool(clock, Metrics(), eject_after=3, eject_for=5.0, connect_timeout=0.5)
    dead = routing.NodeHealth("0xdead", f"http://127.0.0.1:{free_port()}", frozenset({1}), 10**18)
    for _ in range(3):
        assert not pool.check(dead)
    assert dead.ejected_until == 1005.0 and dead.failures == 3
    for _ in range(10):                      # probes while it is out: noted, not counted
        clock.now += 0.4
        assert not pool.check(dead)
    assert dead.ejected_until == 1005.0 and dead.failures == 3 and "Connect" in dead.last_error
    clock.now = 1005.0                       # its one try: still down, twice as long
    assert not pool.check(dead)
    assert dead.failures == 4 and dead.ejected_until == 1015.0


def test_answer_bound_covers_the_longest_honest_answer():
    """issue 18: max_tokens 4,095 with top_logprobs 20 answers ~6 MB, far past the 256 KiB base. The
    longest answer an honest node can send (every id of the vocabulary's most digits, every float
    of the longest JSON form), written with the node's own encoders, fits the bound, streamed or
    not; and the bound is tight (a hostile node is cut off within 1% past it)."""
    from starlette.responses import JSONResponse

    from coordinator.service import answer_bound
    from node.app import sse
    from opinfer import models

    spec = models.get("smollm2-135m-instruct")
    max_tokens, prompt, top = spec.extra["max_new_tokens"], 2038, 20
    worst_id, worst_float = spec.vocab - 1, -2.2250738585072014e-308     # repr: 24 characters
    pairs = [[worst_id, worst_float]] * top
    events = [{"type": "token", "index": i, "id": worst_id, "logprob": worst_float, "top": pairs}
              for i in range(max_tokens)]
    signed = {"job_id": "0x" + "ab" * 16, "model_id": 2**32, "node": "0x" + "cd" * 20,
              "input_root": "0x" + "ef" * 32, "output_root": "0x" + "ef" * 32, "signature": "0x" + "12" * 65,
              "engine_ms": 123456789.123,
              "output": {"ids": [worst_id] * max_tokens, "finish_reason": "length",
                         "logprobs": [{"id": worst_id, "logprob": worst_float, "top": pairs}] * max_tokens,
                         "prompt_logprobs": [None] + [worst_float] * (prompt - 1)}}
    stream = sum(len(sse(e)) for e in events) + len(sse({"type": "done", **signed}))
    plain = len(JSONResponse(signed).body)
    base = 4096                                    # room for everything that does not grow with the job
    bound = answer_bound(base, max_tokens, prompt, spec.vocab, top, True)
    assert plain < stream <= bound <= stream + base + stream // 100     # tight: within 1%
    assert stream > 20 * 256 * 1024                # the fixed bound of old would cut an honest answer off
    # without logprobs, and with top 0, the same holds
    for k in (None, 0):
        events = [{"type": "token", "index": i, "id": worst_id, "logprob": None if k is None else worst_float,
                   "top": None if k is None else []} for i in range(max_tokens)]
        out = {"ids": [worst_id] * max_tokens, "finish_reason": "length"}
        if k is not None:
            out["logprobs"] = [{"id": worst_id, "logprob": worst_float, "top": []}] * max_tokens
        stream = sum(len(sse(e)) for e in events) + len(sse({"type": "done", **signed, "output": out}))
        assert stream <= answer_bound(base, max_tokens, 0, spec.vocab, k, False) <= stream + base + stream // 100
