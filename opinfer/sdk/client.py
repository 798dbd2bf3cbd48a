"""The opinfer client: the shape of the `openai` package's client, plus jobs
and verification.

    from opinfer import Client
    client = Client(api_key="sk-devnet", network="devnet")
    r = client.chat.completions.create(model="smollm2-135m-instruct",
                                       messages=[{"role": "user", "content": "Hi"}])
    client.jobs.wait_final(r.opinfer.job_id, timeout=120)
    client.verify(r)          # raises VerificationError unless final and proven

verify() binds each result to the request this client sent for it (kept per
job id when the answer arrives): the job input is rebuilt from that request
and compared, and the model name is mapped to its id through the on-chain
registry. For a response the client did not fetch itself (the `openai`
package's, a job id), pass `request=` (the body that was sent).
"""

from __future__ import annotations

import copy
import json
import time
from collections import OrderedDict
from typing import Callable, Iterator

import httpx

from opinfer.sdk import errors
from opinfer.sdk.cache import TTLCache, cacheable, request_key
from opinfer.sdk.network import Network, resolve
from opinfer.sdk.objects import Obj, job_id_of, wrap
from opinfer.sdk.retry import Retrier, RetryPolicy
from opinfer.sdk.verify import (ChainReader, VerificationReport, check_job, check_request, echoed_prompt,
                                verify_on_chain)

TERMINAL = ("final", "invalid", "rejected")
MAX_REMEMBERED_REQUESTS = 10_000


class Client:
    def __init__(self, api_key: str | None = None, network: str | None = "devnet", *, rpc_url: str | None = None,
                 chain_id: int | None = None, rollup_address: str | None = None,
                 registry_address: str | None = None, timeout: float = 120.0, max_retries: int = 3,
                 backoff_base_s: float = 0.25, backoff_cap_s: float = 4.0, cache_ttl_s: float = 300.0,
                 cache_stale_s: float = 3600.0, allow_stale: bool = False, transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        import os

        self.network: Network = resolve(network, rpc_url, chain_id, rollup_address, registry_address)
        self.api_key = api_key or os.environ.get("OPINFER_API_KEY") or os.environ.get("OPENAI_API_KEY")
        headers = {"user-agent": "opinfer-sdk/0.1"}
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        self._http = httpx.Client(base_url=self.network.api_url, headers=headers, timeout=timeout,
                                  transport=transport)
        self.retrier = Retrier(RetryPolicy(max(1, max_retries), backoff_base_s, backoff_cap_s), sleep)
        self.cache = TTLCache(cache_ttl_s, cache_stale_s)
        self.allow_stale = allow_stale
        self._chain: ChainReader | None = None
        self._decoders: dict[str, object] = {}     # model name -> decode(ids), loaded on first use
        # job id -> (request body, item index): what this client asked for each job it got back
        self._requests: OrderedDict[str, tuple[dict, int]] = OrderedDict()
        self.chat = _Chat(self)
        self.completions = _TextCompletions(self)
        self.embeddings = _Embeddings(self)
        self.models = _Models(self)
        self.jobs = _Jobs(self)

    # ------------------------------------------------------------------ HTTP

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _send(self, method: str, path: str, body: dict | None = None) -> httpx.Response:
        try:
            r = self._http.request(method, path, json=body)
        except httpx.TimeoutException as exc:
            raise errors.APITimeoutError(f"{method} {path}: timed out ({exc})") from None
        except httpx.HTTPError as exc:
            raise errors.APIConnectionError(f"{method} {path}: {self.network.api_url} unreachable ({exc})") from None
        if r.status_code >= 400:
            try:
                payload = r.json()
            except ValueError:
                payload = r.text
            err = errors.from_response(r.status_code, payload)
            if r.headers.get("retry-after"):
                try:
                    err.retry_after = float(r.headers["retry-after"])
                except ValueError:
                    pass
            raise err
        return r

    def request(self, method: str, path: str, body: dict | None = None, *, use_cache: bool = False,
                allow_stale: bool | None = None) -> Obj:
        """One API call with retries; inference answers are cached when deterministic."""
        allow_stale = self.allow_stale if allow_stale is None else allow_stale
        key = request_key(path, body or {}) if use_cache and body is not None and cacheable(path, body) else None
        if key:
            hit = self.cache.get(key)
            if hit is not None:
                self._remember_response(hit[0], copy.deepcopy(body))
                return _mark(hit[0], cached=True)
        try:
            data = self.retrier(lambda: self._send(method, path, body).json())
        except (errors.APIConnectionError, errors.ServiceUnavailableError, errors.RateLimitError):
            if key and allow_stale:
                hit = self.cache.get(key, allow_stale=True)
                if hit is not None:
                    return _mark(hit[0], cached=True, stale=True)
            raise
        if key:
            self.cache.put(key, data)
        if body is not None and method == "POST" and isinstance(data, dict):
            self._remember_response(data, copy.deepcopy(body))
        return wrap(data)

    def stream(self, path: str, body: dict) -> Iterator[Obj]:
        """Server-sent events of a streaming request (the connection is retried, the stream is not)."""
        def connect():
            try:
                req = self._http.build_request("POST", path, json=body)
                r = self._http.send(req, stream=True)
            except httpx.TimeoutException as exc:
                raise errors.APITimeoutError(f"POST {path}: timed out ({exc})") from None
            except httpx.HTTPError as exc:
                raise errors.APIConnectionError(f"POST {path}: unreachable ({exc})") from None
            if r.status_code >= 400:
                r.read()
                try:
                    payload = r.json()
                except ValueError:
                    payload = r.text
                r.close()
                raise errors.from_response(r.status_code, payload)
            return r

        response = self.retrier(connect)

        def events() -> Iterator[Obj]:
            try:
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    yield wrap(json.loads(data))
            finally:
                response.close()

        return events()

    # ------------------------------------------------------------------ API

    def list_models(self) -> list[Obj]:
        return list(self.models.list().data)

    def health(self) -> Obj:
        r = self._http.get("/healthz")
        try:
            return wrap(r.json())
        except ValueError:
            return wrap({"status": r.text})

    def chain(self) -> ChainReader:
        if not self.network.can_verify:
            raise errors.ConfigurationError("verification needs the chain: pass rpc_url= and rollup_address= "
                                            "(or OPINFER_RPC_URL / OPINFER_ROLLUP_ADDRESS), or use network='devnet'")
        if self._chain is None:
            self._chain = ChainReader(self.network.rpc_url, self.network.rollup, self.network.registry)
            if self.network.chain_id is None:
                self.network.chain_id = self._chain.chain_id()
        return self._chain

    def remember(self, job_id: str | None, request: dict, index: int = 0) -> None:
        """Keep the request behind a job id, for verify()."""
        if not job_id:
            return
        self._requests[str(job_id).lower()] = (request, index)
        self._requests.move_to_end(str(job_id).lower())
        while len(self._requests) > MAX_REMEMBERED_REQUESTS:
            self._requests.popitem(last=False)

    def _remember_response(self, data: dict, body: dict) -> None:
        if isinstance(data.get("opinfer"), dict):
            self.remember(data["opinfer"].get("job_id"), body)
        for choice in data.get("choices") or []:     # n > 1: each choice is a job of its own
            if isinstance(choice, dict) and isinstance(choice.get("opinfer"), dict):
                self.remember(choice["opinfer"].get("job_id"), body, int(choice.get("index", 0)))
        for item in data.get("data") or []:
            if isinstance(item, dict) and isinstance(item.get("opinfer"), dict):
                self.remember(item["opinfer"].get("job_id"), body, int(item.get("index", 0)))

    def verify(self, response, *, request: dict | None = None, require_final: bool = True,
               check_text: bool = True) -> VerificationReport:
        """Verify a response (chat or embeddings; every item of a multi-input
        embedding), a job view or a job id against the chain, bound to the
        request that was sent for it: the one this client sent (remembered per
        job id) or `request` (the body: model, messages and parameters, or
        model and input). Returns the report of the (last) job; raises
        VerificationError when a check fails (the request is unknown, the job
        is not that request, ...) or, with require_final, when the leaf is not
        final on-chain."""
        answers = _answers(response)
        report = None
        for job_id, answer, index in answers:
            job = self.jobs.retrieve(job_id)
            chain = self.chain()
            sent, sent_index = (request, index) if request is not None else \
                self._requests.get(str(job_id).lower(), (None, 0))
            model = (sent or {}).get("model") or job.get("model")
            decode = self._decoder(model) if check_text and answer and answer.get("kind") == "chat" else None
            if answer and (sent or {}).get("echo"):
                # the text is the echoed prompt, then the job's output: both are compared
                try:
                    answer = {**answer, "echo": echoed_prompt(sent, sent_index, decode)} if decode else \
                        {**answer, "content": None}
                except (KeyError, IndexError, TypeError, ValueError):
                    answer = {**answer, "echo": ""}   # a request that names no such prompt: the text cannot match
            report = check_job(job, self.network.chain_id, self.network.rollup, answer, decode=decode)
            check_request(report, job, sent, sent_index)
            verify_on_chain(report, job, chain, model=model)
            if report.status == "invalid":
                report.add("leaf status on-chain", False, "invalid: fraud was proven against this result")
            elif require_final:
                report.add("leaf final on-chain", report.status == "final", f"status {report.status}")
            report.raise_if_failed()
        return report

    def _decoder(self, model: str):
        """decode(ids) with the tokenizer of `model` (the requested model's: its text is
        compared); None when this library does not know the model (the text is not compared)."""
        if model not in self._decoders:
            try:
                from opinfer import models

                tok = models.get(model).tokenizer()
                self._decoders[model] = lambda ids: tok.decode(list(ids), skip_special_tokens=True)
            except Exception:  # noqa: BLE001 - without a tokenizer the text is not compared
                self._decoders[model] = None
        return self._decoders[model]


def _mark(data: dict, cached: bool = False, stale: bool = False) -> Obj:
    out = json.loads(json.dumps(data))
    if isinstance(out.get("opinfer"), dict):
        out["opinfer"]["client_cached"] = cached
        if stale:
            out["opinfer"]["stale"] = True
    return wrap(out)


def _answers(response) -> list[tuple[str, dict | None, int]]:
    """(job id, the answer received, the item's index in the request) for each job behind a response."""
    if isinstance(response, dict) and response.get("object") == "list" and "data" in response:
        return [(dict.get(item, "opinfer")["job_id"],
                 {"kind": "embedding", "embedding": dict.get(item, "embedding")}, int(dict.get(item, "index") or 0))
                for item in dict.get(response, "data")]
    if isinstance(response, dict) and response.get("object") in ("chat.completion", "text_completion"):
        out = []
        for i, choice in enumerate(dict.get(response, "choices")):
            info = dict.get(choice, "opinfer") if isinstance(choice, dict) and "opinfer" in choice else \
                dict.get(response, "opinfer")
            if response.get("object") == "chat.completion":
                content = choice["message"]["content"]
            else:
                content = choice["text"]
            out.append((info["job_id"], {"kind": "chat", "content": content,
                                         "finish_reason": choice["finish_reason"]}, int(choice.get("index", i))))
        return out
    if isinstance(response, _StreamedChat):
        return [(response.job_id, {"kind": "chat", "content": response.content,
                                   "finish_reason": response.finish_reason}, response.index)]
    return [(job_id_of(response), None, 0)]


class _StreamedChat:
    """What a consumed stream amounts to, for verify()."""

    def __init__(self, job_id: str, content: str, finish_reason: str | None, index: int = 0):
        self.job_id, self.content, self.finish_reason, self.index = job_id, content, finish_reason, index


class ChatStream:
    """Iterate the chunks as the coordinator relays the node's tokens (each
    chunk as soon as it arrives). Afterwards .job_id, .content, .finish_reason
    and .opinfer (the signed leaf's summary, from the last chunk) hold the
    answer of choice 0; .choices[i] the same per choice when n > 1. A stream
    that breaks off raises APIError (the tokens received must be discarded)."""

    def __init__(self, events: Iterator[Obj], on_job_id: Callable[[str, int], None] = lambda job_id, index: None,
                 text_field: str = "content"):
        self._events = events
        self._on_job_id = on_job_id
        self._text = text_field
        self.choices: dict[int, _StreamedChat] = {}
        self.opinfer: Obj | None = None

    def _choice(self, index: int) -> _StreamedChat:
        return self.choices.setdefault(index, _StreamedChat(None, "", None, index))

    def __iter__(self) -> Iterator[Obj]:
        for chunk in self._events:
            if "error" in chunk and not chunk.get("choices"):
                raise errors.from_response(502, {"error": dict(chunk["error"])})
            for choice in chunk.get("choices") or []:
                c = self._choice(int(choice.get("index") or 0))
                if "opinfer" in chunk:
                    if c.job_id is None:
                        c.job_id = chunk.opinfer.job_id
                        self._on_job_id(c.job_id, c.index)
                    if choice.get("finish_reason"):
                        c.opinfer = chunk.opinfer
                        if c.index == 0:
                            self.opinfer = chunk.opinfer
                piece = (choice.get("delta") or {}).get("content") if self._text == "content" else choice.get("text")
                c.content += piece or ""
                c.finish_reason = choice.get("finish_reason") or c.finish_reason
            yield chunk

    @property
    def job_id(self) -> str | None:
        return self._choice(0).job_id

    @property
    def content(self) -> str:
        return self._choice(0).content

    @property
    def finish_reason(self) -> str | None:
        return self._choice(0).finish_reason

    def answer(self, index: int = 0) -> _StreamedChat:
        return self._choice(index)


class _Completions:
    def __init__(self, client: Client):
        self._c = client

    def create(self, *, model: str, messages: list[dict], stream: bool = False, allow_stale: bool | None = None,
               extra_body: dict | None = None, **params):
        body = {"model": model, "messages": messages, **{k: v for k, v in params.items() if v is not None},
                **(extra_body or {})}
        if stream:
            body["stream"] = True
            sent = copy.deepcopy(body)
            return ChatStream(self._c.stream("/v1/chat/completions", body),
                              on_job_id=lambda job_id, index: self._c.remember(job_id, sent, index))
        return self._c.request("POST", "/v1/chat/completions", body, use_cache=True, allow_stale=allow_stale)


class _Chat:
    def __init__(self, client: Client):
        self.completions = _Completions(client)


class _TextCompletions:
    """POST /v1/completions: a plain-text prompt (no chat template); echo + logprobs score a text."""

    def __init__(self, client: Client):
        self._c = client

    def create(self, *, model: str, prompt, stream: bool = False, allow_stale: bool | None = None,
               extra_body: dict | None = None, **params):
        body = {"model": model, "prompt": prompt, **{k: v for k, v in params.items() if v is not None},
                **(extra_body or {})}
        if stream:
            body["stream"] = True
            sent = copy.deepcopy(body)
            return ChatStream(self._c.stream("/v1/completions", body), text_field="text",
                              on_job_id=lambda job_id, index: self._c.remember(job_id, sent, index))
        return self._c.request("POST", "/v1/completions", body, use_cache=True, allow_stale=allow_stale)


class _Embeddings:
    def __init__(self, client: Client):
        self._c = client

    def create(self, *, model: str, input, allow_stale: bool | None = None, extra_body: dict | None = None,
               **params) -> Obj:
        body = {"model": model, "input": input, **{k: v for k, v in params.items() if v is not None},
                **(extra_body or {})}
        return self._c.request("POST", "/v1/embeddings", body, use_cache=True, allow_stale=allow_stale)


class _Models:
    def __init__(self, client: Client):
        self._c = client

    def list(self) -> Obj:
        return self._c.request("GET", "/v1/models")

    def retrieve(self, model: str) -> Obj:
        return self._c.request("GET", f"/v1/models/{model}")


class _Jobs:
    def __init__(self, client: Client):
        self._c = client

    def retrieve(self, job_id) -> Obj:
        return self._c.request("GET", f"/v1/jobs/{job_id_of(job_id)}")

    get = retrieve

    def wait_final(self, job_id, timeout: float = 600.0, poll_s: float = 1.0,
                   on_progress: Callable[[Obj], None] | None = None, raise_on_invalid: bool = True) -> Obj:
        """Poll the job until it is final (or invalid/rejected); JobTimeoutError after `timeout` s.
        on_progress(job) is called after each poll (the CLI draws its progress bar from it)."""
        job_id = job_id_of(job_id)
        deadline = time.monotonic() + timeout
        while True:
            job = self.retrieve(job_id)
            if on_progress:
                on_progress(job)
            if job.status in TERMINAL:
                if job.status == "invalid" and raise_on_invalid:
                    raise errors.JobInvalidError(job_id)
                return job
            if time.monotonic() >= deadline:
                raise errors.JobTimeoutError(job_id, job.status, timeout)
            time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))

    def batch(self, batch_id: int) -> Obj:
        return self._c.request("GET", f"/v1/batches/{batch_id}")
