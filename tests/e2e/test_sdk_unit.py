"""The SDK's pure parts: backoff, retries, cache, stale fallback, errors,
network resolution, local verification checks (no chain, no processes)."""

import json
import random

import httpx
import numpy as np
import pytest

from opinfer.sdk import errors
from opinfer.sdk.cache import TTLCache, cacheable, request_key
from opinfer.sdk.client import Client
from opinfer.sdk.network import resolve
from opinfer.sdk.retry import Retrier, RetryPolicy
from opinfer.sdk.verify import check_job, embedding_ints, shown_text_ids


def test_full_jitter_backoff_is_bounded_by_the_exponential_ceiling():
    p = RetryPolicy(attempts=3, base_s=0.5, cap_s=1.5)
    rng = random.Random(1)
    for retry, ceiling in ((1, 0.5), (2, 1.0), (3, 1.5), (4, 1.5)):
        draws = [p.backoff(retry, rng) for _ in range(500)]
        assert 0 <= min(draws) and max(draws) <= ceiling
        assert max(draws) > 0.8 * ceiling            # uniform over the whole range, not a fixed delay


def test_retrier_retries_transient_errors_three_times_then_raises():
    slept, calls = [], []

    def flaky():
        calls.append(1)
        raise errors.ServiceUnavailableError("no node", 503, "no_node_available")

    r = Retrier(RetryPolicy(3, 0.1, 1.0), sleep=slept.append, rng=random.Random(0))
    with pytest.raises(errors.ServiceUnavailableError):
        r(flaky)
    assert len(calls) == 3 and len(slept) == 2
    calls.clear()

    def bad_request():
        calls.append(1)
        raise errors.BadRequestError("bad", 400)

    with pytest.raises(errors.BadRequestError):
        r(bad_request)
    assert len(calls) == 1                           # not retried


def test_error_objects_are_typed():
    e = errors.from_response(404, {"error": {"message": "no model", "code": "model_not_found", "param": "model",
                                             "type": "invalid_request_error"}})
    assert isinstance(e, errors.NotFoundError) and e.code == "model_not_found" and "no model" in str(e)
    assert isinstance(errors.from_response(429, {}), errors.RateLimitError)
    assert isinstance(errors.from_response(401, "x"), errors.AuthenticationError)
    assert isinstance(errors.from_response(502, "x"), errors.ServiceUnavailableError)


def test_ttl_cache_fresh_stale_expired():
    now = [0.0]
    c = TTLCache(ttl_s=10, stale_s=100, clock=lambda: now[0])
    c.put("k", 1)
    assert c.get("k") == (1, False)
    now[0] = 50
    assert c.get("k") is None and c.get("k", allow_stale=True) == (1, True)
    now[0] = 200
    assert c.get("k", allow_stale=True) is None and len(c) == 0
    assert cacheable("/v1/embeddings", {"input": "x"})
    assert cacheable("/v1/chat/completions", {"temperature": 0})
    assert not cacheable("/v1/chat/completions", {})       # the model's default temperature, a fresh seed
    assert cacheable("/v1/completions", {"prompt": "x", "temperature": 0})
    assert not cacheable("/v1/chat/completions", {"temperature": 0.7})
    assert cacheable("/v1/chat/completions", {"temperature": 0.7, "seed": 3})
    assert not cacheable("/v1/chat/completions", {"stream": True})
    assert request_key("/a", {"x": 1, "y": 2}) == request_key("/a", {"y": 2, "x": 1})


def fake_client(handler, **kw):
    return Client(api_key="sk-test", network="http://coordinator.test", transport=httpx.MockTransport(handler),
                  sleep=lambda s: None, **kw)


def test_client_retries_then_serves_a_stale_answer_only_when_allowed():
    state = {"up": True, "calls": 0}
    body = {"object": "list", "data": [{"embedding": [0.5], "opinfer": {"job_id": "0x01"}}],
            "opinfer": {"job_id": "0x01"}}

    def handler(request):
        state["calls"] += 1
        assert request.headers["authorization"] == "Bearer sk-test"
        if state["up"]:
            return httpx.Response(200, json=body)
        return httpx.Response(503, json={"error": {"message": "no node", "code": "no_node_available"}})

    c = fake_client(handler, cache_ttl_s=0.0, cache_stale_s=3600)
    assert c.embeddings.create(model="m", input="x").data[0].embedding == [0.5]
    state["up"], state["calls"] = False, 0
    with pytest.raises(errors.ServiceUnavailableError) as err:
        c.embeddings.create(model="m", input="x")
    assert state["calls"] == 3 and err.value.code == "no_node_available"
    stale = c.embeddings.create(model="m", input="x", allow_stale=True)
    assert stale.opinfer.stale and stale.opinfer.client_cached


def test_client_connection_errors_are_typed():
    def handler(request):
        raise httpx.ConnectError("refused")

    with pytest.raises(errors.APIConnectionError) as err:
        fake_client(handler).list_models()
    assert "coordinator.test" in str(err.value)


def test_streaming_chunks_accumulate():
    chunks = [{"choices": [{"delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
               "opinfer": {"job_id": "0xab"}},
              {"choices": [{"delta": {"content": "Hel"}, "finish_reason": None}]},
              {"choices": [{"delta": {"content": "lo"}, "finish_reason": None}]},
              {"choices": [{"delta": {}, "finish_reason": "stop"}]}]
    sse = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"

    def handler(request):
        assert json.loads(request.content)["stream"] is True
        return httpx.Response(200, text=sse, headers={"content-type": "text/event-stream"})

    s = fake_client(handler).chat.completions.create(model="m", messages=[], stream=True)
    assert len(list(s)) == 4 and s.content == "Hello" and s.job_id == "0xab" and s.finish_reason == "stop"


def test_streams_of_several_choices_and_a_broken_stream():
    def chunk(index, delta, finish=None, **extra):
        return {"choices": [{"index": index, "delta": delta, "finish_reason": finish}], **extra}
    chunks = [chunk(0, {"role": "assistant", "content": ""}, opinfer={"job_id": "0xa0", "status": "streaming"}),
              chunk(1, {"role": "assistant", "content": ""}, opinfer={"job_id": "0xa1", "status": "streaming"}),
              chunk(1, {"content": "B"}), chunk(0, {"content": "A"}), chunk(0, {"content": "a"}),
              chunk(0, {}, "stop", opinfer={"job_id": "0xa0", "status": "pending", "signature": "0x01"}),
              chunk(1, {}, "length", opinfer={"job_id": "0xa1", "status": "pending", "signature": "0x02"})]
    broken = chunks[:4] + [{"error": {"message": "the stream cannot go on", "type": "server_error",
                                      "param": None, "code": "stream_failed"}}]

    def sse(items, done=True):
        return "".join(f"data: {json.dumps(c)}\n\n" for c in items) + ("data: [DONE]\n\n" if done else "")

    state = {"body": sse(chunks)}
    c = fake_client(lambda request: httpx.Response(200, text=state["body"],
                                                   headers={"content-type": "text/event-stream"}))
    s = c.chat.completions.create(model="m", messages=[], n=2, stream=True)
    list(s)
    assert (s.content, s.choices[1].content, s.finish_reason, s.choices[1].finish_reason) == ("Aa", "B", "stop",
                                                                                               "length")
    assert s.opinfer.signature == "0x01" and s.choices[1].opinfer.job_id == "0xa1"
    assert c._requests["0xa1"][1] == 1          # choice 1's job is bound to choice index 1 of the request
    state["body"] = sse(broken, done=False)
    with pytest.raises(errors.APIError) as err:
        list(c.chat.completions.create(model="m", messages=[], stream=True))
    assert err.value.code == "stream_failed"


def test_network_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("OPINFER_DEVNET_FILE", str(tmp_path / "none.json"))
    with pytest.raises(errors.ConfigurationError, match="no running devnet"):
        resolve("devnet")
    with pytest.raises(errors.ConfigurationError):
        resolve("ftp://x")
    f = tmp_path / "devnet.json"
    f.write_text(json.dumps({"api_url": "http://127.0.0.1:9/v1", "rpc_url": "http://r", "chain_id": 5,
                             "contracts": {"ResultRollup": "0xR", "ModelRegistry": "0xM"}}))
    monkeypatch.setenv("OPINFER_DEVNET_FILE", str(f))
    n = resolve("devnet")
    assert (n.api_url, n.rpc_url, n.chain_id, n.rollup, n.can_verify) == ("http://127.0.0.1:9", "http://r", 5,
                                                                          "0xR", True)
    assert not resolve("https://api.example/v1").can_verify


def test_local_checks_of_a_signed_embedding_job():
    from eth_account import Account

    from opinfer.semantics.jobinput import JobInput
    from opinfer.trace.leaf import ResultLeaf
    from opinfer.trace.outputs import embedding_output, input_root, tensor_root

    key = "0x" + "11" * 32
    node = Account.from_key(key).address
    rollup = "0x" + "22" * 20
    job_input = JobInput((101, 7592, 102))
    data = job_input.to_bytes()
    vector = [3, -16384, 42, 0]
    leaf = ResultLeaf(b"\x01" * 16, 1, input_root(job_input), tensor_root(embedding_output(vector)), node,
                      data).signed(key, 31337, rollup)
    job = {"id": "0x" + "01" * 16, "kind": "embedding", "model_id": 1, "input": "0x" + data.hex(),
           "result": {"embedding": vector}, "node": node, "input_root": "0x" + leaf.input_root.hex(),
           "output_root": "0x" + leaf.output_root.hex(), "signature": "0x" + leaf.signature.hex(),
           "leaf_hash": "0x" + leaf.hash.hex(), "batch_id": 1, "leaf_index": 0}
    floats = (np.asarray(vector) / 2**14).tolist()
    report = check_job(job, 31337, rollup, {"kind": "embedding", "embedding": floats})
    assert report.ok, report.summary()
    # A different answer, another chain's domain, a forged output root: each caught by name.
    bad = check_job(job, 31337, rollup, {"kind": "embedding", "embedding": floats[:-1] + [1.0]})
    assert bad.failed().name == "answer is the job's result"
    assert check_job(job, 1, rollup).failed().name == "node signature"
    forged = dict(job, result={"embedding": [4, -16384, 42, 0]})
    assert check_job(forged, 31337, rollup).failed().name == "output root recomputed"
    assert embedding_ints([0.5, -1.0]).tolist() == [8192, -16384]
    with pytest.raises(ValueError):
        embedding_ints([0.1])


def test_stop_sequence_is_cut_from_the_shown_text():
    assert shown_text_ids([5, 6, 2], "stop", [(2,)]) == [5, 6]
    assert shown_text_ids([5, 6, 7, 8], "stop", [(2,), (7, 8)]) == [5, 6]
    assert shown_text_ids([5, 6, 2], "length", [(2,)]) == [5, 6, 2]


# ---------------------------------------------------------------- issue 14: points 1 and 11

KEY = "0x" + "11" * 32
ROLLUP = "0x" + "22" * 20


def signed_embedding_job(tokens, vector, job_no: int = 1, model_id: int = 1) -> dict:
    """A real job record: the leaf signed by the node's key, as the coordinator serves it."""
    from eth_account import Account

    from opinfer.semantics.jobinput import JobInput
    from opinfer.trace.leaf import ResultLeaf
    from opinfer.trace.outputs import embedding_output, input_root, tensor_root

    node = Account.from_key(KEY).address
    job_input = JobInput(tuple(tokens))
    data = job_input.to_bytes()
    job_id = job_no.to_bytes(16, "big")
    leaf = ResultLeaf(job_id, model_id, input_root(job_input), tensor_root(embedding_output(vector)), node,
                      data).signed(KEY, 31337, ROLLUP)
    return {"id": "0x" + job_id.hex(), "kind": "embedding", "model": "all-minilm-l6-v2", "model_id": model_id,
            "model_root": "0x" + "ab" * 32, "input": "0x" + data.hex(), "result": {"embedding": vector},
            "node": node, "input_root": "0x" + leaf.input_root.hex(), "output_root": "0x" + leaf.output_root.hex(),
            "signature": "0x" + leaf.signature.hex(), "leaf_hash": "0x" + leaf.hash.hex(), "batch_id": 1,
            "leaf_index": 0, "proof": [], "status": "final"}


def test_sdk_reports_valid_only_signatures_the_chain_accepts():
    """Point 1: the high-s twin of the node's signature passes eth_account's
    check but is not a signature by ResultRollup's rule over the compact
    form that is posted, so the SDK must not call it valid."""
    from opinfer.trace.leaf import SECP256K1_N

    job = signed_embedding_job((101, 7592, 102), [3, -16384, 42, 0])
    assert check_job(job, 31337, ROLLUP).ok
    sig = bytes.fromhex(job["signature"][2:])
    twin = sig[:32] + (SECP256K1_N - int.from_bytes(sig[32:64], "big")).to_bytes(32, "big") + bytes([55 - sig[64]])
    report = check_job(dict(job, signature="0x" + twin.hex()), 31337, ROLLUP)
    assert report.failed().name == "node signature"
    # v as 0/1 encodes the same compact signature: the same leaf, valid.
    raw = sig[:64] + bytes([sig[64] - 27])
    assert check_job(dict(job, signature="0x" + raw.hex()), 31337, ROLLUP).ok


class ChainView:
    """The on-chain answers for a job that really is final (what an honest
    chain says about job B): inclusion, status, registry."""

    def __init__(self, models: dict[str, int]):
        self.models = models

    def safe_block(self) -> int:
        return 100

    def posting(self, tx_hash: str, safe: int) -> tuple[int | None, str]:
        return 1, "block 90"

    def includes(self, *args, **kwargs) -> bool:
        return True

    def leaf_status(self, *args, **kwargs) -> str:
        return "final"

    def model_root(self, model_id: int) -> str:
        return "0x" + "ab" * 32

    def model_id(self, name: str) -> int:
        return self.models.get(name, 0)


def swapping_coordinator(job_b: dict, model: str = "all-minilm-l6-v2"):
    """A malicious coordinator: every embedding request is answered with job
    B's real, signed, final result."""
    item = {"object": "embedding", "index": 0, "embedding": (np.asarray(job_b["result"]["embedding"]) / 2**14).tolist(),
            "opinfer": {"job_id": job_b["id"], "status": "final"}}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/embeddings":
            return httpx.Response(200, json={"object": "list", "data": [item], "model": model})
        if request.url.path == f"/v1/jobs/{job_b['id']}":
            return httpx.Response(200, json=job_b)
        return httpx.Response(404, json={"error": {"message": "no", "type": "not_found"}})

    return httpx.MockTransport(handler)


def test_verify_catches_an_answer_swapped_for_another_prompts_final_result():
    """Point 11: a coordinator answers prompt A with the real final result of
    its own prompt B; every check of B holds, only the binding to the
    request the client sent catches it."""
    job_b = signed_embedding_job((101, 2204, 102), [1, 2, 3, 4])
    client = Client(network="http://coordinator.test", rpc_url="http://rpc.test", chain_id=31337,
                    rollup_address=ROLLUP, transport=swapping_coordinator(job_b), max_retries=1)
    client._chain = ChainView({"all-minilm-l6-v2": 1})
    # Asking for B itself verifies: the fixture is a genuinely final job.
    mine = client.embeddings.create(model="all-minilm-l6-v2", input=[101, 2204, 102])
    assert client.verify(mine).final
    answer = client.embeddings.create(model="all-minilm-l6-v2", input=[101, 7592, 102])
    with pytest.raises(errors.VerificationError) as err:
        client.verify(answer)
    assert err.value.check == "job input is the request" and "tokens" in str(err.value)
    # A response the client did not fetch itself cannot be bound silently.
    with pytest.raises(errors.VerificationError) as err:
        client.verify(job_b["id"])
    assert err.value.check == "job input is the request"
    assert client.verify(job_b["id"], request={"model": "all-minilm-l6-v2", "input": [[101, 2204, 102]]}).final
    # The model: the name asked for maps through the registry to the job's id, or verification fails.
    with pytest.raises(errors.VerificationError) as err:
        client.verify(job_b["id"], request={"model": "other-model", "input": [101, 2204, 102]})
    assert err.value.check == "model is the one requested"


def test_chat_request_is_rebuilt_with_the_coordinators_encoding():
    """Point 11, chat: the job input rebuilt from messages and parameters
    (the tokenizer and ChatML encoding the coordinator uses) must be the
    job's; another prompt, a changed parameter or a wrong seed is caught."""
    from opinfer.models.smollm2.tokenizer import load_tokenizer
    from opinfer.sdk.verify import VerificationReport, check_request
    from opinfer.semantics.jobinput import JobInput, chat_messages, chat_prompt_ids, chat_stop_sequences

    tok = load_tokenizer()
    request = {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Name a color."}],
               "max_tokens": 8, "temperature": 0.7, "seed": 5, "stop": ["\n\n"]}

    from opinfer.engine.sampling import from_openai
    from opinfer.models import sampling_defaults

    # top_p is left out: the model's default applies (sampling_defaults), which the SDK applies too
    top_p_q = from_openai(0.7, sampling_defaults("smollm2-135m-instruct")[1]).top_p_q
    assert top_p_q < 65536

    def job_for(req, seed=5, max_tokens=8, top=top_p_q):
        ji = JobInput(tuple(chat_prompt_ids(tok, chat_messages(req["messages"]))), max_tokens, 700, top, seed,
                      chat_stop_sequences(tok, req.get("stop")))
        return {"kind": "chat", "input": "0x" + ji.to_bytes().hex()}

    def bound(job, req):
        return check_request(VerificationReport("j"), job, req, tokenizer=tok).checks[-1]

    assert bound(job_for(request), request).ok
    other = dict(request, messages=[{"role": "user", "content": "Name a fruit."}])
    assert bound(job_for(other), request).detail == "tokens differs from the request's"
    assert bound(job_for(request, seed=6), request).detail == "seed differs from the request's"
    assert bound(job_for(request, max_tokens=64), request).detail == "max_tokens differs from the request's"
    assert bound(job_for(request, top=65536), request).detail == "top_p_q differs from the request's"
    # choice 1 of n=2 carries the seed derived from the request's
    from opinfer.semantics.jobinput import choice_seed
    two = dict(request, n=2)
    assert check_request(VerificationReport("j"), job_for(two, seed=choice_seed(5, 1)), two, 1, tokenizer=tok).ok
    assert not check_request(VerificationReport("j"), job_for(two, seed=5), two, 1, tokenizer=tok).ok
    # Left to the coordinator: no seed at temperature > 0 (a random one), no max_tokens (its default).
    free = {k: v for k, v in request.items() if k not in ("seed", "max_tokens")}
    assert bound(job_for(request, seed=123456, max_tokens=64), free).ok
    assert not bound({"kind": "embedding", "input": job_for(request)["input"]}, request).ok


def test_verify_compares_an_echo_completions_whole_text():
    """issue 18: a text completion with echo shows the prompt, then the answer. verify() compares
    that whole text with the request's prompt and the decoded committed ids; a coordinator that
    changes the echoed prompt or the answer's text is caught, whatever the finish reason says."""
    from eth_account import Account

    from opinfer import models
    from opinfer.sdk.verify import expected_job_input
    from opinfer.semantics.jobinput import JobInput
    from opinfer.trace.leaf import ResultLeaf
    from opinfer.trace.outputs import generation_output, input_root, tensor_root

    smol = "smollm2-135m-instruct"
    tok = models.get(smol).tokenizer()
    prompt = "The capital of France is"
    request = {"model": smol, "prompt": prompt, "max_tokens": 3, "temperature": 0, "echo": True, "logprobs": 1}
    job_input = expected_job_input("completion", request, JobInput((1,), 3))
    ids = tok.encode_ordinary(" Paris, the")[:3]
    data = job_input.to_bytes()
    leaf = ResultLeaf(b"\x07" * 16, 2, input_root(job_input), tensor_root(generation_output(ids, "length", 3)),
                      Account.from_key(KEY).address, data).signed(KEY, 31337, ROLLUP)
    job = {"id": "0x" + "07" * 16, "kind": "completion", "model": smol, "model_id": 2, "model_root": "0x" + "ab" * 32,
           "input": "0x" + data.hex(), "result": {"ids": ids, "finish_reason": "length"}, "node": leaf.node,
           "input_root": "0x" + leaf.input_root.hex(), "output_root": "0x" + leaf.output_root.hex(),
           "signature": "0x" + leaf.signature.hex(), "leaf_hash": "0x" + leaf.hash.hex(), "batch_id": 1,
           "leaf_index": 0, "proof": [], "status": "final"}
    shown = {"text": prompt + tok.decode(ids)}

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/v1/completions":
            info = {"job_id": job["id"], "status": "final"}
            return httpx.Response(200, json={"object": "text_completion", "model": smol, "opinfer": info, "choices": [
                {"index": 0, "text": shown["text"], "finish_reason": "length", "opinfer": info}]})
        return httpx.Response(200, json=job)

    client = Client(network="http://coordinator.test", rpc_url="http://rpc.test", chain_id=31337,
                    rollup_address=ROLLUP, transport=httpx.MockTransport(handler), max_retries=1, cache_ttl_s=0)
    client._chain = ChainView({smol: 2})
    params = {k: v for k, v in request.items() if k not in ("model", "prompt")}
    assert client.verify(client.completions.create(model=smol, prompt=prompt, **params)).final
    for tampered in ("The capital of Spain is" + tok.decode(ids), prompt + " Rome, the"):
        shown["text"] = tampered
        with pytest.raises(errors.VerificationError) as err:
            client.verify(client.completions.create(model=smol, prompt=prompt, **params))
        assert err.value.check == "answer is the job's result" and "echoed prompt" in str(err.value)
