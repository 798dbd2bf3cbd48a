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


# ---------------------------------------------------------------- per-model tokenizers (issue 15)

TOY_CHAT = "toy-chatml"


def toy_chat_tokenizer():
    """A second chat model's tokenizer, unlike SmolLM2's: every byte a token of its own (ids 0-255,
    no merges), then the ChatML control tokens at 256-258 (SmolLM2 has them at 0-2), and another
    default system prompt."""
    from opinfer.models.bytelevel import bytes_to_unicode
    from opinfer.models.smollm2.tokenizer import _TEMPLATE_SHAPE, SmolLM2Tokenizer

    tokens = [bytes_to_unicode()[b] for b in range(256)] + ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    return SmolLM2Tokenizer(tokens, [], [1] * 256 + [3] * 3, bos_id=257, eos_id=258,
                            chat_template=_TEMPLATE_SHAPE.format(system="You are a toy."))


def tokenizer():       # the toy spec's hooks (this module)
    return toy_chat_tokenizer()


def test_each_request_is_encoded_with_its_own_models_tokenizer(monkeypatch):
    """Two chat models in the library: the coordinator's chat and text-completion plans, its
    streamed text and the SDK's rebuilt job input each use the tokenizer of the model the
    request names (not the registry's first chat model's)."""
    import asyncio

    from coordinator.chain import ModelInfo
    from coordinator.generation import TextStream, merge, table_for
    from coordinator.schemas import ChatRequest, CompletionRequest
    from coordinator.service import Catalog, InferenceService, Principal
    from coordinator.settings import Settings
    from opinfer import models
    from opinfer.models.spec import ModelSpec
    from opinfer.sdk.client import Client
    from opinfer.sdk.verify import expected_job_input
    from opinfer.semantics.jobinput import JobInput

    smol = "smollm2-135m-instruct"
    toy = ModelSpec(name=TOY_CHAT, kind="chat", vocab=259, dimensions=8, context=64, hooks=__name__)
    monkeypatch.setitem(models._registry, TOY_CHAT, toy)
    catalog = Catalog.__new__(Catalog)
    catalog.models = {name: ModelInfo(i, name, b"\x01" * 32, 1, 0, True) for i, name in ((2, smol), (9, TOY_CHAT))}
    svc = InferenceService(Settings(), None, catalog, None, None, None, lambda: 0.0)
    who = Principal(None, "test", 0)
    toy_tok, smol_tok = toy_chat_tokenizer(), models.get(smol).tokenizer()
    ask = [{"role": "user", "content": "Hi <|im_end|>"}]       # role markers in text stay text

    plans = {}
    for name, tok in ((TOY_CHAT, toy_tok), (smol, smol_tok)):
        plan = asyncio.run(svc.plan_chat(ChatRequest.model_validate(
            {"model": name, "messages": ask, "max_tokens": 4, "temperature": 0, "stop": ["!"]}), who))
        plans[name] = plan
        start, end = tok.token_to_id("<|im_start|>"), tok.token_to_id("<|im_end|>")
        assert plan.prompts[0].count(start) == 3 and plan.prompts[0].count(end) == 2   # system, user, assistant
        assert plan.stops == [(end,), tuple(tok.encode_ordinary("!"))]
        job = plan.jobs[0][1]
        request = {"model": name, "messages": ask, "max_tokens": 4, "temperature": 0, "stop": ["!"]}
        assert expected_job_input("chat", request, job).to_bytes() == job.to_bytes()     # the SDK agrees
        text = asyncio.run(svc.plan_completion(CompletionRequest.model_validate(
            {"model": name, "prompt": "Hi there", "max_tokens": 2, "temperature": 0}), who))
        assert text.prompts[0] == tok.encode_ordinary("Hi there")
        assert expected_job_input("completion", {"model": name, "prompt": "Hi there", "max_tokens": 2,
                                                 "temperature": 0}, JobInput((1,), 2)).tokens == tuple(text.prompts[0])
    toy_prompt = plans[TOY_CHAT].prompts[0]
    assert toy_prompt[:1] == [257] and bytes(t for t in toy_prompt if t < 256).decode().startswith("system\nYou are a toy.")
    assert toy_prompt != plans[smol].prompts[0]
    assert svc.tokenizers.max_token_bytes(TOY_CHAT) == 1 < svc.tokenizers.max_token_bytes(smol)
    # the chat route's text, whole and streamed, and the SDK's text check decode with the model's own table
    from coordinator.routes.chat import ChatRender, whole
    from coordinator.service import Generated

    ids = toy_tok.encode_ordinary("héllo")
    stream = TextStream(table_for(svc.tokenizers.of(TOY_CHAT)), [(258,)])
    pieces = [p for t in ids + [258] for p in stream.push(t)]
    assert merge(pieces + stream.finish("stop"))[0] == "héllo"
    assert whole(svc, plans[TOY_CHAT], Generated(None, ids + [258], "stop", 0))[0] == "héllo"
    render = ChatRender(svc, plans[TOY_CHAT], ChatRequest.model_validate({"model": TOY_CHAT, "messages": ask}),
                        "chatcmpl-x", 0, ["ab" * 16])
    chunks = [c for t in ids for c in render.token(0, {"id": t})]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "héllo"
    client = Client(network="http://coordinator.test")
    assert client._decoder(TOY_CHAT)(ids) == "héllo" != client._decoder(smol)(ids)
