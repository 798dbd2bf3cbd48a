"""The OpenAI features clients rely on, through the official `openai` package
against the devnet of processes: tokens streamed as generated (timestamps),
n=2, logprobs, /v1/completions with echo and penalties; each answer verifiable
(and a changed penalty or echoed text is not)."""

import time

import openai
import pytest

from opinfer.sdk.errors import VerificationError

pytestmark = pytest.mark.e2e
CHAT = "smollm2-135m-instruct"
NO_CACHE = {"opinfer": {"cache": False}}


@pytest.fixture(scope="module")
def oa(devnet):
    return openai.OpenAI(base_url=devnet["api_url"], api_key="sk-devnet", max_retries=0)


def test_stream_tokens_arrive_as_generated(oa, client):
    kwargs = dict(model=CHAT, messages=[{"role": "user", "content": "Tell me a long story about the sea."}],
                  max_tokens=64, temperature=0, extra_body=NO_CACHE)
    oa.chat.completions.create(**{**kwargs, "max_tokens": 1})   # the node's first chat job loads its decoder
    started = time.perf_counter()
    stamps, text, last = [], "", None
    for chunk in oa.chat.completions.create(**kwargs, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            stamps.append(time.perf_counter() - started)
            text += chunk.choices[0].delta.content
        last = chunk
    assert len(stamps) >= 30 and last.choices[0].finish_reason == "length"
    # the first token long before the last: relayed as sampled, not after the whole answer
    assert stamps[0] < 0.3 * stamps[-1], (stamps[0], stamps[-1])
    info = last.model_extra["opinfer"]
    assert info["status"] == "pending" and info["signature"].startswith("0x")
    client.jobs.wait_final(info["job_id"], timeout=120, poll_s=0.5)
    sent = {"model": CHAT, "messages": kwargs["messages"], "max_tokens": 64, "temperature": 0}
    assert client.verify({"object": "chat.completion", "opinfer": info,
                          "choices": [{"index": 0, "message": {"content": text}, "finish_reason": "length"}]},
                         request=sent).final


def test_n2_logprobs_and_completions_echo(oa, client):
    r = oa.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "Name an animal."}],
                                   max_tokens=6, temperature=0.8, seed=3, n=2, logprobs=True, top_logprobs=2,
                                   extra_body=NO_CACHE)
    assert [c.index for c in r.choices] == [0, 1]
    jobs = r.model_extra["opinfer"]["job_ids"]
    assert len(set(jobs)) == 2
    for choice in r.choices:
        assert choice.logprobs.content and all(t.logprob <= 0 and len(t.top_logprobs) == 2
                                               for t in choice.logprobs.content)
    text = "Paris is the capital of"
    # a penalised text completion (issue 18): penalties and logit_bias are part of the job input and of
    # the program the one-step re-executes, so the SDK binds them to the request like any parameter
    penalised = dict(max_tokens=3, temperature=0, echo=True, logprobs=1, presence_penalty=0.6,
                     frequency_penalty=0.4, logit_bias={"28": -100, "3000": 5})
    c = oa.completions.create(model=CHAT, prompt=text, **penalised, extra_body=NO_CACHE)
    assert c.choices[0].text.startswith(text)
    assert c.choices[0].logprobs.token_logprobs[0] is None and len(c.choices[0].logprobs.tokens) == \
        c.usage.prompt_tokens + c.usage.completion_tokens
    # every choice is a job that finalizes and verifies against the chain
    body = r.model_dump()
    sent = {"model": CHAT, "messages": [{"role": "user", "content": "Name an animal."}], "max_tokens": 6,
            "temperature": 0.8, "seed": 3, "n": 2, "logprobs": True, "top_logprobs": 2}
    for job_id in jobs:
        client.jobs.wait_final(job_id, timeout=120, poll_s=0.5)
    assert client.verify(body, request=sent).final
    client.jobs.wait_final(c.model_extra["opinfer"]["job_id"], timeout=120, poll_s=0.5)
    sent = {"model": CHAT, "prompt": text, **penalised}
    assert client.verify(c.model_dump(), request=sent).final      # the echoed text and the answer compared
    for changed in ({"presence_penalty": 0.5}, {"frequency_penalty": 0.0}, {"logit_bias": {"28": -100}}):
        with pytest.raises(VerificationError) as err:
            client.verify(c.model_dump(), request={**sent, **changed})
        assert err.value.check == "job input is the request"
    tampered = c.model_dump()
    tampered["choices"][0]["text"] = "Rome" + tampered["choices"][0]["text"][len("Paris"):]
    with pytest.raises(VerificationError) as err:
        client.verify(tampered, request=sent)
    assert err.value.check == "answer is the job's result"
