"""No input yields a 5xx: random and mutated bodies against every route of
the app's OpenAPI schema (hypothesis; schemathesis needs a newer hypothesis
than the one pinned)."""

from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import run_coordinator
from coordinator.app import create_app

SMOL, MINILM = "smollm2-135m-instruct", "all-minilm-l6-v2"
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12)
CHAT = {"model": SMOL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "temperature": 0}
EMBED = {"model": MINILM, "input": "hi"}
COMPLETE = {"model": SMOL, "prompt": "hi", "max_tokens": 1, "temperature": 0}
FIELDS = ["model", "messages", "max_tokens", "temperature", "top_p", "seed", "stop", "stream", "n", "input",
          "encoding_format", "dimensions", "opinfer", "stream_options", "logit_bias", "tools", "user", "prompt",
          "echo", "logprobs", "top_logprobs", "response_format", "suffix", "best_of", "max_completion_tokens"]


def mutated(template):
    return st.builds(lambda key, value, drop: {**{k: v for k, v in template.items() if k != drop}, key: value},
                     st.sampled_from(FIELDS), json_values, st.sampled_from([None, *template]))


@pytest.fixture(scope="module")
def client(net, tmp_path_factory):
    run = run_coordinator(net, tmp_path_factory.mktemp("fuzz") / "c.db", max_completion_tokens=2,
                          default_max_tokens=1)
    yield TestClient(create_app(coordinator=run.c), raise_server_exceptions=False)
    run.stop()


EXPLORER = {"/v1/explorer/config", "/v1/explorer/overview", "/v1/explorer/jobs", "/v1/explorer/jobs/{job_id}",
            "/v1/explorer/batches", "/v1/explorer/batches/{batch_id}", "/v1/explorer/games",
            "/v1/explorer/games/{game_id}", "/v1/explorer/nodes", "/v1/explorer/challengers", "/v1/explorer/search"}


def test_every_route_is_covered(client):
    paths = set(client.app.openapi()["paths"])
    assert paths == {"/v1/models", "/v1/models/{model}", "/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                     "/v1/jobs/{job_id}", "/v1/batches/{batch_id}", "/healthz", "/metrics", "/v1/usage",
                     "/v1/disagreements", *EXPLORER}


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(path=st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]),
       body=json_values | mutated(CHAT) | mutated(EMBED) | mutated(COMPLETE))
def test_post_bodies_never_give_5xx(client, path, body):
    r = client.post(path, json=body)
    assert r.status_code < 500, (body, r.text)
    if r.status_code >= 400:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(route=st.sampled_from(["/v1/jobs/", "/v1/batches/", "/v1/models/", "/v1/explorer/jobs/",
                              "/v1/explorer/batches/", "/v1/explorer/games/", "/v1/explorer/search?q=",
                              "/explorer/static/"]),
       tail=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=70))
def test_path_parameters_never_give_5xx(client, route, tail):
    r = client.get(route + quote(tail, safe=""))
    assert r.status_code < 500, (tail, r.text)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=st.binary(max_size=200), ctype=st.sampled_from(["application/json", "text/plain", ""]))
def test_raw_bytes_never_give_5xx(client, raw, ctype):
    r = client.post("/v1/chat/completions", content=raw, headers={"content-type": ctype})
    assert r.status_code < 500, r.text
