"""The network as a user meets it: SDK and the official `openai` package
against a devnet of processes; pending -> final -> verified against the
chain; a dishonest node caught by the challenger, slashed, its job invalid."""

import time

import openai
import pytest

from opinfer.sdk import VerificationError
from tests.e2e.conftest import run_cli

pytestmark = pytest.mark.e2e
CHAT = "smollm2-135m-instruct"
EMBED = "all-minilm-l6-v2"
NO_CACHE = {"opinfer": {"cache": False}}


def node(devnet, dishonest):
    return next(n for n in devnet["nodes"] if n["dishonest"] == dishonest)


def test_devnet_describes_itself(devnet, client):
    assert "sk-devnet" in devnet["up_stdout"] and devnet["api_url"] in devnet["up_stdout"]
    assert devnet["api_key"] == "sk-devnet"
    assert {"deployer", "coordinator", "challenger", "node1", "node2"} <= set(devnet["accounts"])
    assert set(devnet["artifacts"]) >= {"ResultRollup", "DisputeGame"}
    assert {m.id for m in client.list_models()} == {CHAT, EMBED}
    assert client.health().status == "ok"


def test_dishonest_node_is_slashed_and_its_job_invalid(devnet, client):
    from opinfer.chain import artifacts

    liar = node(devnet, True)["address"]
    stake = client.chain().w3.eth.contract(address=devnet["contracts"]["StakeManager"],
                                           abi=artifacts.load("StakeManager").abi)
    # Plain requests until the router hands one to the liar (it serves embeddings only).
    lied = None
    for i in range(12):
        plain = client.embeddings.create(model=EMBED, input=f"request number {i}", extra_body=NO_CACHE)
        if plain.data[0].opinfer.node == liar:
            lied = plain
            break
    assert lied is not None, "the router never chose the dishonest node"
    job_id = lied.data[0].opinfer.job_id
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        job = client.jobs.retrieve(job_id)
        if job.status == "invalid" and stake.functions.stake(liar).call() == 0:
            break
        time.sleep(1)
    assert job.status == "invalid", job
    assert stake.functions.stake(liar).call() == 0 and not stake.functions.is_active(liar).call()
    # The liar defended its trace move by move: the game was narrowed by bisection to one
    # element deep inside the job and ended with the contract re-executing it (not on time).
    from opinfer.trace import player
    game = client.chain().w3.eth.contract(address=devnet["contracts"]["DisputeGame"],
                                          abi=artifacts.load("DisputeGame").abi)
    games = [player.game_state(game.functions.games(g).call())
             for g in range(1, game.functions.game_count().call() + 1)]
    lost = [g for g in games if g["node"] == liar and g["status"] == player.CHALLENGER_WON]
    assert any(g["phase"] == player.STEP and 1 < g["hi"] < g["num_ops"] for g in lost), games
    # A job answered by the liar alone ends `invalid`, and verify says so.
    final = client.jobs.wait_final(lied.data[0].opinfer.job_id, timeout=150, poll_s=1, raise_on_invalid=False)
    assert final.status == "invalid"
    with pytest.raises(VerificationError) as err:
        client.verify(lied)
    assert "invalid" in str(err.value)
    status = run_cli(["status", "--network", devnet["api_url"], "--rpc", devnet["rpc_url"],
                      "--rollup", devnet["contracts"]["ResultRollup"]], devnet["cwd"], timeout=60)
    assert status.returncode == 0, status.stderr
    assert "challenger won" in status.stdout and "0.0000 ETH" in status.stdout


def test_sdk_chat_goes_pending_to_final_and_verifies(devnet, client):
    r = client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "Name a color."}],
                                       max_tokens=8, temperature=0)
    assert r.choices[0].message.content
    assert r.opinfer.status == "pending" and r.opinfer.node == node(devnet, False)["address"]
    with pytest.raises(VerificationError):
        client.verify(r)                                 # not final yet
    seen = []
    job = client.jobs.wait_final(r.opinfer.job_id, timeout=120, poll_s=0.5,
                                 on_progress=lambda j: seen.append(j.status))
    assert job.status == "final" and "final" in seen and seen[0] in ("pending", "posted")
    report = client.verify(r)
    assert report.final and report.status == "final"
    names = [c.name for c in report.checks]
    assert "inclusion proof against the on-chain batch root" in names and "node signature" in names
    # The same request again is answered from the client's cache (greedy: deterministic).
    again = client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "Name a color."}],
                                           max_tokens=8, temperature=0)
    assert again.opinfer.client_cached and again.opinfer.job_id == r.opinfer.job_id


def test_sdk_streaming_and_tampered_answer_fails_verification(client):
    stream = client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "Say hello."}],
                                            max_tokens=6, stream=True)
    chunks = list(stream)
    assert len(chunks) >= 2 and stream.job_id and stream.content
    client.jobs.wait_final(stream.job_id, timeout=120, poll_s=0.5)
    assert client.verify(stream.answer()).final
    forged = stream.answer()
    forged.content += " (edited)"
    with pytest.raises(VerificationError) as err:
        client.verify(forged)
    assert err.value.check == "answer is the job's result"


def test_openai_package_against_the_devnet(devnet, client):
    oa = openai.OpenAI(base_url=devnet["api_url"], api_key="sk-devnet", max_retries=0)
    chat = oa.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": "One word: yes or no?"}],
                                      max_tokens=4)
    assert chat.choices[0].message.content is not None
    emb = oa.embeddings.create(model=EMBED, input=["verifiable inference", "optimistic rollup"],
                               extra_body=NO_CACHE)       # the package asks for base64
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 384
    body = emb.model_dump()
    honest = node(devnet, False)["address"]
    for item in body["data"]:
        job = client.jobs.wait_final(item["opinfer"]["job_id"], timeout=150, poll_s=0.5, raise_on_invalid=False)
        assert job.status in ("final", "invalid")
    # Responses the opinfer client did not fetch: verify binds them to the request that was sent.
    if all(item["opinfer"]["node"] == honest for item in body["data"]):
        assert client.verify(body, request={"model": EMBED, "input": ["verifiable inference",
                                                                      "optimistic rollup"]}).final
    client.jobs.wait_final(chat.model_dump()["opinfer"]["job_id"], timeout=120, poll_s=0.5)
    sent = {"model": CHAT, "messages": [{"role": "user", "content": "One word: yes or no?"}], "max_tokens": 4}
    assert client.verify(chat.model_dump(), request=sent).final
    with pytest.raises(VerificationError) as err:  # another prompt's final result is not this answer
        client.verify(chat.model_dump(), request=dict(sent, messages=[{"role": "user", "content": "Hi"}]))
    assert err.value.check == "job input is the request"
    # Penalties and logit bias are part of the committed sampler: the answer is final (the
    # challenger, sampling every leaf, re-executed it and agreed) and verifies against the request.
    penalised = dict(sent, max_tokens=6, presence_penalty=0.6, frequency_penalty=1.0, logit_bias={"28": -100})
    answer = oa.chat.completions.create(**penalised).model_dump()
    client.jobs.wait_final(answer["opinfer"]["job_id"], timeout=120, poll_s=0.5)
    assert client.verify(answer, request=penalised).final
    with pytest.raises(VerificationError) as err:  # the same answer for other penalties is not bound
        client.verify(answer, request=dict(penalised, presence_penalty=0.5))
    assert err.value.check == "job input is the request"
