"""The service layer behind the HTTP routes: turn requests into job inputs,
run them on nodes (with cache, retries, consensus), record jobs, leaves and
usage, and describe jobs and batches with their proofs."""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import numpy as np
from sqlalchemy import case, func, insert, select
from sqlalchemy.orm import object_session, selectinload, undefer

from coordinator import models as m
from coordinator.cache import ResponseCache, cache_key
from coordinator.chain import Chain, ModelInfo
from coordinator.errors import BadRequest, ModelNotFound, NodeFailure, NoNodeAvailable, NotFound, StreamFailed
from coordinator.metrics import Metrics
from coordinator.nodes import NodePool
from coordinator.schemas import ChatRequest, CompletionRequest, EmbeddingRequest, OpinferOptions
from coordinator.settings import Settings
from opinfer import models
from opinfer.errors import CommitmentError
from opinfer.semantics.jobinput import JobInput, chat_prompt_ids, chat_stop_sequences
from opinfer.trace.leaf import Batch as LeafBatch
from opinfer.trace.leaf import ResultLeaf
from opinfer.trace.outputs import embedding_output, generation_output, input_root, tensor_root

def kind_of(name: str) -> str | None:
    """The model's kind when the library runs it (opinfer/models, looked up per call: a model
    registered after import is served too), else None."""
    try:
        return models.get(name).kind
    except models.UnknownModel:
        return None


PROOF_CACHE_LEAVES = 4096
SERVABLE = (m.PENDING, m.POSTED, m.FINAL)   # a cached answer is served only while its leaf is on its way to final


# The longest JSON number the node's log-probabilities can take: Python's repr of a negative
# double, e.g. -2.2250738585072014e-308 (the node writes json.dumps(separators=(",", ":"))).
FLOAT_CHARS = 24


def answer_bound(base: int, max_tokens: int, prompt_tokens: int, vocab: int, top: int | None,
                 prompt_logprobs: bool) -> int:
    """The most bytes an honest node's answer to a job can take, on the wire
    (docs/serving.md's protocol), plus `base` (max_node_answer_bytes: roots,
    signature, headroom). Derived from the request, so a long job with
    top_logprobs 20 fits (4,095 tokens: about 6 MB) while a hostile node is
    still cut off a few bytes past what any honest answer of that job needs.
    Per generated token, with ids of at most `t` digits, indices of `i` and
    floats of FLOAT_CHARS (f):

    - its stream event: `data: {"type":"token","index":I,"id":T,"logprob":F,"top":[[T,F],...]}` and a
      blank line: 57 + i + t + f + (2 + k (4 + t + f)); without logprobs "null" for F and the list;
    - in the signed answer: the id in `output.ids` (t + 1) and, with logprobs, its entry again,
      `{"id":T,"logprob":F,"top":[...]},`: 26 + t + f + (2 + k (4 + t + f));
    - per prompt token with prompt_logprobs: `F,` (f + 1).
    tests/coordinator/test_coordinator_logic.py::test_answer_bound_covers_the_longest_honest_answer
    writes that longest answer with the node's own code and measures it."""
    t, i, f = len(str(max(vocab - 1, 0))), len(str(max(max_tokens - 1, 0))), FLOAT_CHARS
    if top is None:
        event, entry = 57 + i + t + 4 + 4, 0
    else:
        alternatives = 2 + top * (4 + t + f)
        event, entry = 57 + i + t + f + alternatives, 26 + t + f + alternatives
    return base + max_tokens * (event + t + 1 + entry) + prompt_logprobs * prompt_tokens * (f + 1)


def vote(results: list[dict], stake: dict[str, int]) -> tuple[bytes, int]:
    """(winning output root, how many nodes gave it): the most nodes; among
    equally many, the most stake behind the answer (what they lose by lying),
    then the smaller root: never who answered first, which a lazy liar wins."""
    groups: dict[bytes, list[str]] = {}
    for r in results:
        groups.setdefault(r["output_root"], []).append(r["node"])
    winner = max(groups, key=lambda root: (len(groups[root]), sum(stake.get(n, 0) for n in groups[root]),
                                           [-b for b in root]))
    return winner, len(groups[winner])


class Relay:
    """Passes one job's streamed tokens on as they arrive, each index once, across
    node attempts: a node that dies mid-stream is replaced by another running the
    same job (same input and seed, so the same tokens); the replacement's tokens
    that were already sent are checked, not sent again. The streamed ids must be
    the ids of the signed answer that ends the stream (complete())."""

    def __init__(self, emit):
        self.emit = emit            # async: one token event {"index", "id", "logprob", "top"}
        self.ids: list[int] = []
        self.broken = False         # what was sent cannot be completed: the stream must end in an error
        self.root: bytes | None = None

    async def token(self, event: dict) -> None:
        index, token = int(event["index"]), int(event["id"])
        if index < len(self.ids):
            if self.ids[index] != token:
                self.broken = True
                raise StreamFailed(f"nodes disagree on token {index} of the streamed answer (one of them lies); "
                                   "discard the tokens received")
            return
        self.ids.append(token)
        await self.emit(event)

    async def complete(self, checked: dict) -> None:
        """The signed, checked answer: it must extend what was sent; the rest is sent now."""
        ids = checked["result"]["ids"]
        if ids[:len(self.ids)] != self.ids:
            self.broken = True
            raise NodeFailure(checked["node"], "signed output differs from the tokens an earlier node streamed")
        entries = checked["extra"].get("logprobs")
        for index in range(len(self.ids), len(ids)):
            self.ids.append(ids[index])
            entry = entries[index] if entries else {}
            await self.emit({"type": "token", "index": index, "id": ids[index], "logprob": entry.get("logprob"),
                             "top": entry.get("top")})
        self.root = checked["output_root"]


@dataclass(frozen=True)
class Principal:
    """Who is calling: an API key (id, rate limit) or the anonymous devnet user."""

    key_id: int | None
    name: str
    rpm: int


@dataclass
class Answer:
    job: m.Job
    leaf: m.Leaf
    cached: bool = False
    stale: bool = False
    agreed: int = 1
    extra: dict = field(default_factory=dict)   # the node's unsigned extras (logprobs) of a fresh answer

    def opinfer(self) -> dict:
        job, leaf = self.job, self.leaf
        out = {"job_id": "0x" + job.id, "status": leaf.status, "node": leaf.node, "model_id": job.model_id,
               "model_root": "0x" + job.model_root.hex(), "input_root": "0x" + leaf.input_root.hex(),
               "output_root": "0x" + leaf.output_root.hex(), "signature": "0x" + leaf.signature.hex(),
               "seed": job.seed, "cached": self.cached}
        if self.stale:
            out["stale"] = True
        if job.consensus > 1:
            out["consensus"] = {"k": job.consensus, "agreed": self.agreed}
        return out


@dataclass
class GenPlan:
    """A validated generation request: its jobs (one per choice and prompt) and what to show."""

    model: ModelInfo
    kind: str                                   # "chat" | "completion"
    jobs: list[tuple[int, JobInput]]            # (prompt index, job input) per choice
    prompts: list[list[int]]
    stops: list[tuple[int, ...]]                # token-level stop sequences (end of turn first)
    top: int | None                             # logprobs: alternatives per token; None: no logprobs
    prompt_logprobs: bool
    options: OpinferOptions


@dataclass
class Generated:
    """One choice's answer: the recorded job and leaf, plus the node's log-probabilities (unsigned)."""

    answer: Answer
    ids: list[int]
    finish_reason: str
    prompt_tokens: int
    logprobs: list[dict] | None = None
    prompt_logprobs: list | None = None


class Catalog:
    """The models the registry holds and this coordinator knows how to serve."""

    def __init__(self, chain: Chain):
        self.chain = chain
        self.models: dict[str, ModelInfo] = {}
        self.refresh()

    def refresh(self) -> None:
        self.models = {mi.name: mi for mi in self.chain.models()}

    def served(self) -> list[ModelInfo]:
        return [mi for mi in self.models.values() if mi.active and kind_of(mi.name)]

    def get(self, name: str, kind: str) -> ModelInfo:
        mi = self.models.get(name)
        known = kind_of(name)
        if mi is None or not mi.active or known is None:
            raise ModelNotFound(f"The model `{name}` does not exist or is not served here", param="model")
        if known != kind:
            raise BadRequest(f"`{name}` is a {known} model, not a {kind} model", param="model",
                             code="wrong_model_kind")
        return mi


class Tokenizers:
    """Each model's tokenizer, loaded on first use from its spec (the copy shipped
    in its folder): the coordinator tokenizes, nodes only see token ids. Every
    request is encoded and decoded with the tokenizer of the model it names."""

    def __init__(self):
        self._loaded: dict[str, object] = {}
        self._max_token_bytes: dict[str, int] = {}

    def of(self, name: str):
        if name not in self._loaded:
            self._loaded[name] = models.get(name).tokenizer()
        return self._loaded[name]

    def embedding(self, text: str, model: str) -> list[int]:
        return models.get(model).encode(text)

    def chat_prompt(self, model: str, messages: list[tuple[str, str]]) -> list[int]:
        """The chat template's ids with message text encoded as plain text, so a
        message cannot forge role markers by containing "<|im_end|>". The library's
        encoding, which the SDK applies to its own request to check the job."""
        return chat_prompt_ids(self.of(model), messages)

    def chat_stops(self, model: str, stops: list[str]) -> list[tuple[int, ...]]:
        """The end of turn first, then the request's stop strings as token sequences."""
        return list(chat_stop_sequences(self.of(model), stops))

    def max_token_bytes(self, model: str) -> int:
        """The longest token's bytes: a text of b bytes is at least b / this many
        tokens, a bound that rejects oversized prompts before tokenizing them."""
        if model not in self._max_token_bytes:
            self._max_token_bytes[model] = max(len(b) for b in self.of(model).token_bytes())
        return self._max_token_bytes[model]


class InferenceService:
    def __init__(self, settings: Settings, sessions, catalog: Catalog, pool: NodePool, cache: ResponseCache,
                 metrics: Metrics, clock: Callable[[], float], tokenizers: Tokenizers | None = None,
                 on_batch_due: Callable[[], None] = lambda: None, limiter=None):
        self.settings = settings
        self.sessions = sessions
        self.catalog = catalog
        self.pool = pool
        self.cache = cache
        self.metrics = metrics
        self.clock = clock
        self.tokenizers = tokenizers or Tokenizers()
        self.on_batch_due = on_batch_due
        self.limiter = limiter      # rate limits count jobs: the route took one, charge() the rest
        self.unbatched = 0
        self._proofs: OrderedDict[int, LeafBatch] = OrderedDict()   # batch pk -> tree, least recent first
        self._proofs_lock = threading.Lock()

    # ------------------------------------------------------------ embeddings

    async def embeddings(self, req: EmbeddingRequest, who: Principal) -> list[Answer]:
        model = self.catalog.get(req.model, "embedding")
        spec = models.get(model.name)
        dims = spec.dimensions
        if req.dimensions is not None and req.dimensions != dims:
            raise BadRequest(f"`{req.model}` has {dims} dimensions; `dimensions` must be {dims} or left out",
                             param="dimensions")
        items = req.input
        if isinstance(items, str) or (isinstance(items, list) and items and isinstance(items[0], int)):
            items = [items]
        if not items:
            raise BadRequest("`input` must not be empty", param="input")
        if len(items) > self.settings.max_embedding_inputs:
            raise BadRequest(f"at most {self.settings.max_embedding_inputs} inputs per request (max_embedding_inputs)",
                             param="input")
        for item in items:
            if isinstance(item, str):
                if not item:
                    raise BadRequest("`input` must not contain empty strings", param="input")
            else:
                if not item or not all(0 <= t < spec.vocab for t in item):
                    raise BadRequest(f"token ids must be in [0, {spec.vocab})", param="input")
                if len(item) > spec.context:
                    raise BadRequest(f"at most {spec.context} tokens per input", param="input",
                                     code="context_length_exceeded")
        self._check_consensus(req.opinfer.consensus)
        self.charge(who, len(items) * req.opinfer.consensus)
        # Tokenizing up to max_body_bytes of text takes about half a second: in a
        # worker thread (the tokenizer releases the GIL), never on the event loop.
        jobs = await anyio.to_thread.run_sync(
            lambda: [JobInput(tuple(self.tokenizers.embedding(i, model.name) if isinstance(i, str) else i)) for i in items])
        return list(await asyncio.gather(*(self.run(model, job, "embedding", who, req.opinfer) for job in jobs)))

    def _check_consensus(self, k: int) -> None:
        if k > self.settings.max_consensus:
            raise BadRequest(f"consensus k is {k}; the limit is {self.settings.max_consensus}", param="opinfer.consensus")

    def charge(self, who: Principal, jobs: int) -> None:
        """Rate limits count jobs, not requests: a request of m inputs at consensus
        k makes k x m nodes work. The route's dependency took one already."""
        if self.limiter is not None and jobs > 1:
            self.limiter.take(who.key_id if who.key_id is not None else "anonymous", who.rpm, jobs - 1)

    # ------------------------------------------------------------ generation (chat and text completion)

    async def plan_chat(self, req: ChatRequest, who: Principal) -> GenPlan:
        model = self.catalog.get(req.model, "chat")
        self._reject_unsupported(req)
        if req.top_logprobs and not req.logprobs:
            raise BadRequest("`top_logprobs` needs `logprobs: true`", param="top_logprobs")
        max_tokens = req.max_completion_tokens or req.max_tokens or self.settings.default_max_tokens
        param = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
        self._check_max_tokens(model.name, max_tokens, param)
        messages = [("system" if msg.role == "developer" else msg.role, msg.text()) for msg in req.messages]
        tok = self.tokenizers
        await self._fits(model.name, sum(len(text.encode()) for _, text in messages), max_tokens, "messages")
        stops = self._stops(req.stop)
        prompt, stop_sequences = await anyio.to_thread.run_sync(lambda: (
            tok.chat_prompt(model.name, messages), tok.chat_stops(model.name, stops)))
        self._check_length(model.name, len(prompt), max_tokens, param, "messages")
        jobs = self._jobs(req, model, [prompt], stop_sequences, max_tokens, "messages")
        return self._plan(model, "chat", jobs, [prompt], stop_sequences, req, who,
                          top=(req.top_logprobs or 0) if req.logprobs else None, prompt_logprobs=False)

    async def plan_completion(self, req: CompletionRequest, who: Principal) -> GenPlan:
        from opinfer.semantics.jobinput import completion_stop_sequences

        model = self.catalog.get(req.model, "chat")
        for param, ok, why in (("suffix", req.suffix in (None, ""), "insertion (suffix) is not supported"),
                               ("best_of", req.best_of in (None, 1) or req.best_of == (req.n or 1),
                                "best_of must equal n: opinfer returns every choice it runs")):
            if not ok:
                raise BadRequest(f"`{param}` is not supported: {why}", param=param, code="unsupported_parameter")
        max_tokens = self.settings.default_max_tokens if req.max_tokens is None else req.max_tokens
        self._check_max_tokens(model.name, max_tokens, "max_tokens")
        if max_tokens == 0:
            # a job generates at least one token (the engine's refusal rule): scoring asks for one
            raise BadRequest("max_tokens must be at least 1; to score a text, ask for echo and logprobs with "
                             "max_tokens 1 (the prompt's log-probabilities come with it)", param="max_tokens")
        prompts = req.prompt if isinstance(req.prompt, list) and req.prompt and not isinstance(req.prompt[0], int) \
            else [req.prompt]
        if not prompts or any(not p for p in prompts):
            raise BadRequest("`prompt` must not be empty", param="prompt")
        if len(prompts) * (req.n or 1) > self.settings.max_choices:
            raise BadRequest(f"{len(prompts)} prompts x n={req.n or 1} choices; the limit is "
                             f"{self.settings.max_choices} (max_choices)", param="prompt")
        await self._fits(model.name, sum(len(p.encode()) for p in prompts if isinstance(p, str)), max_tokens, "prompt")
        stops = self._stops(req.stop)
        vocab = models.get(model.name).vocab

        def encode():
            tok = self.tokenizers.of(model.name)
            out = []
            for p in prompts:
                if isinstance(p, str):
                    out.append(tok.encode_ordinary(p))
                elif all(0 <= t < vocab for t in p):
                    out.append([int(t) for t in p])
                else:
                    raise BadRequest(f"token ids must be in [0, {vocab})", param="prompt")
            return out, list(completion_stop_sequences(tok, stops))
        ids, stop_sequences = await anyio.to_thread.run_sync(encode)
        for p in ids:
            if not p:
                raise BadRequest("`prompt` encodes to no tokens", param="prompt")
            self._check_length(model.name, len(p), max_tokens, "max_tokens", "prompt")
        jobs = self._jobs(req, model, ids, stop_sequences, max_tokens, "prompt")
        return self._plan(model, "completion", jobs, ids, stop_sequences, req, who,
                          top=req.logprobs, prompt_logprobs=bool(req.echo and req.logprobs is not None))

    def _plan(self, model, kind, jobs, prompts, stops, req, who, top, prompt_logprobs) -> GenPlan:
        options = req.opinfer
        self._check_consensus(options.consensus)
        self.charge(who, len(jobs) * options.consensus)
        if top is not None or prompt_logprobs:
            # log-probabilities are not kept with a job: a cached answer has none
            options = options.model_copy(update={"cache": False})
        return GenPlan(model, kind, jobs, prompts, stops, top, prompt_logprobs, options)

    def _jobs(self, req, model: ModelInfo, prompts: list[list[int]], stops, max_tokens: int,
              prompt_param: str) -> list[tuple[int, JobInput]]:
        """(prompt index, job input) of every choice: THE one place where a chat or a text
        completion request becomes job inputs (sampling defaults, seeds, stops and the
        sampler's other parameters), so what holds for one holds for both."""
        from opinfer.engine.sampling import from_openai
        from opinfer.models import sampling_defaults
        from opinfer.semantics.jobinput import choice_seed

        n = req.n or 1
        if n * len(prompts) > self.settings.max_choices:
            raise BadRequest(f"n is {n}; the limit is {self.settings.max_choices} (max_choices)", param="n")
        temperature, top_p = sampling_defaults(model.name)
        temperature = temperature if req.temperature is None else req.temperature
        top_p = top_p if req.top_p is None else req.top_p
        try:
            sampling = from_openai(temperature, top_p, req.seed, req.presence_penalty, req.frequency_penalty,
                                   req.logit_bias, vocab=models.get(model.name).vocab)
        except ValueError as exc:
            raise BadRequest(str(exc), param=str(exc).split()[0]) from None
        seed = sampling.seed
        if req.seed is None and sampling.temperature_milli > 0:
            seed = secrets.randbits(64)  # recorded with the job: anyone can replay the draw
        jobs = []
        for p, prompt in enumerate(prompts):
            for i in range(n):
                try:
                    jobs.append((p, JobInput(tuple(prompt), max_tokens, sampling.temperature_milli, sampling.top_p_q,
                                             choice_seed(seed, i), tuple(stops), sampling.presence_q,
                                             sampling.frequency_q, sampling.logit_bias)))
                except CommitmentError as exc:
                    # the job input is one on-chain row of 2,048 words: 10 header words, the stop words, the prompt
                    raise BadRequest(f"request does not fit a job input: {exc}", param=prompt_param,
                                     code="context_length_exceeded") from None
        return jobs

    def _stops(self, stop) -> list[str]:
        stops = stop if isinstance(stop, list) else ([stop] if stop else [])
        if len(stops) > self.settings.max_stop_sequences or any(not s for s in stops):
            raise BadRequest(f"`stop` takes 1 to {self.settings.max_stop_sequences} non-empty strings", param="stop")
        return stops

    def _context_limit(self, model: str) -> int:
        """prompt + max_tokens: the model's context + 1 (its spec), or the operator's lower limit."""
        context = models.get(model).context + 1
        return min(self.settings.max_context_tokens or context, context)

    def _max_new(self, model: str) -> int:
        """The most new tokens: the model's (its spec), or the operator's lower limit."""
        spec = models.get(model)
        most = spec.extra.get("max_new_tokens", spec.context)
        return min(self.settings.max_completion_tokens or most, most)

    async def _fits(self, model: str, size: int, max_tokens: int, param: str) -> None:
        """A text of `size` bytes that cannot fit whatever it tokenizes to is refused without tokenizing it."""
        limit = self._context_limit(model)
        if size > (limit - max_tokens) * await anyio.to_thread.run_sync(self.tokenizers.max_token_bytes, model):
            raise BadRequest(f"{param} ({size} bytes) exceed the context limit of {limit} tokens "
                             f"with max_tokens {max_tokens}", param=param, code="context_length_exceeded")

    def _check_max_tokens(self, model: str, max_tokens: int, max_param: str) -> None:
        limit = self._max_new(model)
        if max_tokens > limit:
            raise BadRequest(f"{max_param} is {max_tokens}; the limit is {limit}", param=max_param)

    def _check_length(self, model: str, prompt: int, max_tokens: int, max_param: str, prompt_param: str) -> None:
        limit = self._context_limit(model)
        if prompt + max_tokens > limit:
            raise BadRequest(f"prompt ({prompt} tokens) + {max_param} ({max_tokens}) exceeds the context limit "
                             f"of {limit} tokens", param=prompt_param, code="context_length_exceeded")

    async def claim(self, plan: GenPlan, who: Principal) -> list[tuple[str, Answer | None]]:
        """Per choice: (job id, the cached answer or None). Known before any node
        runs, so a stream names its jobs (x-opinfer-job-id) in its first bytes."""
        out = []
        for _, job in plan.jobs:
            answer = await self.lookup(plan.model, job, plan.options, who)
            out.append((answer.job.id, answer) if answer else (secrets.token_bytes(16).hex(), None))
        return out

    async def generate(self, plan: GenPlan, index: int, who: Principal, job_id: str,
                       cached: Answer | None = None, on_token=None) -> Generated:
        """Choice `index`: run its job (streaming its tokens to on_token when given) or take
        the cached answer; the returned answer's leaf is signed, checked and recorded."""
        _, job = plan.jobs[index]
        if cached is not None:
            answer = cached
        else:
            extra = {}
            if plan.top is not None:
                extra["logprobs"] = plan.top
            if plan.prompt_logprobs:
                extra["prompt_logprobs"] = True
            answer = await self.run(plan.model, job, plan.kind, who, plan.options, job_id=bytes.fromhex(job_id),
                                    on_token=on_token, extra=extra, lookup=False)
        ids, reason = answer.job.result["ids"], answer.job.result["finish_reason"]
        return Generated(answer, list(ids), reason, len(job.tokens), answer.extra.get("logprobs"),
                         answer.extra.get("prompt_logprobs"))

    def _reject_unsupported(self, req: ChatRequest) -> None:
        json_mode = "see docs/json-mode.md: a verifiable JSON mode is designed, not built"
        neutral = [
            ("tools", not req.tools, f"tool calling needs constrained decoding ({json_mode})"),
            ("tool_choice", req.tool_choice in (None, "none"), f"tool calling needs constrained decoding ({json_mode})"),
            ("functions", not req.functions, f"function calling needs constrained decoding ({json_mode})"),
            ("function_call", req.function_call in (None, "none"),
             f"function calling needs constrained decoding ({json_mode})"),
            ("response_format", req.response_format in (None, {"type": "text"}),
             f"only {{\"type\": \"text\"}}; JSON output cannot be guaranteed verifiably yet ({json_mode})"),
            ("modalities", req.modalities in (None, ["text"]), "only text output"),
            ("audio", req.audio is None, "audio is not supported"),
            ("prediction", req.prediction is None, "predicted outputs are not supported"),
            ("web_search_options", req.web_search_options is None, "web search is not supported"),
        ]
        for param, ok, why in neutral:
            if not ok:
                raise BadRequest(f"`{param}` is not supported: {why}", param=param, code="unsupported_parameter")
        if any(msg.role == "assistant" and msg.content is None for msg in req.messages):
            raise BadRequest("assistant messages need content (tool calls are not supported)", param="messages")

    # ------------------------------------------------------------ one job

    async def lookup(self, model: ModelInfo, job: JobInput, options: OpinferOptions, who: Principal) -> Answer | None:
        """The cached answer to this job input (its usage recorded), or None."""
        if not (options.cache and options.consensus == 1):
            return None
        entry = self.cache.get(cache_key(model.model_root, job.to_bytes()))
        answer = entry and await anyio.to_thread.run_sync(self._load_answer, entry.job_id)
        if answer:
            self.metrics.cache.labels("hit").inc()
            await anyio.to_thread.run_sync(self._record_usage, answer.job, who, True)
            return answer
        self.metrics.cache.labels("miss").inc()
        return None

    async def run(self, model: ModelInfo, job: JobInput, kind: str, who: Principal, options: OpinferOptions, *,
                  job_id: bytes | None = None, on_token=None, extra: dict | None = None,
                  lookup: bool = True) -> Answer:
        """Run one job (cache, retries, consensus), record it and return the answer.
        on_token: stream the tokens of one node as they come (see Relay); extra:
        what else to ask the nodes for (logprobs), returned unsigned in answer.extra."""
        data = job.to_bytes()
        key = cache_key(model.model_root, data)
        k = options.consensus
        self._check_consensus(k)
        if lookup:
            answer = await self.lookup(model, job, options, who)
            if answer:
                return answer
        job_id = job_id or secrets.token_bytes(16)
        relay = Relay(on_token) if on_token is not None else None
        try:
            results, failure = await self._execute(model, job_id, job, data, kind, k, relay, extra or {})
        except NoNodeAvailable:
            entry = options.allow_stale and relay is None and self.cache.get(key, allow_stale=True)
            answer = entry and await anyio.to_thread.run_sync(self._load_answer, entry.job_id)
            if answer:
                self.metrics.cache.labels("stale").inc()
                answer.cached = answer.stale = True
                await anyio.to_thread.run_sync(self._record_usage, answer.job, who, True)
                return answer
            raise
        winner, agreed = vote(results, {a: n.stake_wei for a, n in self.pool.nodes.items()})
        answer = await anyio.to_thread.run_sync(self._record, model, job_id, job, data, kind, results, winner, who)
        answer.agreed = agreed
        answer.extra = next(r for r in results if r["output_root"] == winner)["extra"]
        self.unbatched += len(results)
        if self.unbatched >= self.settings.batch_max_jobs:
            self.unbatched = 0
            self.on_batch_due()
        if failure is not None:
            # The finished executions are recorded (posted, so challengeable, and billed);
            # the client asked for k and gets an error, not a weaker answer.
            raise NoNodeAvailable(f"consensus of {k} not reached: {len(results)} of {k} nodes answered "
                                  f"({failure.message}); the finished executions are recorded as job 0x{job_id.hex()}",
                                  param="opinfer.consensus")
        if relay is not None and relay.root != winner:
            # The tokens streamed so far are a minority answer: the client must not keep them.
            self.metrics.disagreements.labels(model.name).inc()
            raise StreamFailed(f"consensus: the streamed answer lost the vote ({agreed} of {len(results)} nodes "
                               f"gave another output); the executions are recorded as job 0x{job_id.hex()}",
                               param="opinfer.consensus", code="consensus_disagreed")
        if agreed < len(results):
            # Some node lied (or several did): GET /v1/disagreements lists the job for challengers.
            self.metrics.disagreements.labels(model.name).inc()
        else:
            self.cache.put(key, answer.job.id)   # never an answer some node contradicted
        self.metrics.jobs.labels(model.name, "node").inc()
        return answer

    async def _execute(self, model: ModelInfo, job_id: bytes, job: JobInput, data: bytes, kind: str,
                       k: int, relay: Relay | None = None, extra: dict | None = None) -> list[dict]:
        """Results from k distinct nodes, each slot retried on other nodes, plus one
        more node when the k split evenly; and the first slot failure, if any
        (the results that finished are kept: NoNodeAvailable only when none did).

        With a relay, the first slot streams its tokens through it; a node that
        dies mid-stream is replaced by the next (same job, so the same tokens:
        the relay passes on only those not yet sent, after checking the rest)."""
        if len(self.pool.serving(model.id)) < k:
            raise NoNodeAvailable(f"consensus of {k} needs {k} nodes serving `{model.name}`; "
                                  f"{len(self.pool.serving(model.id))} are registered", param="opinfer.consensus")
        body = {"job_id": "0x" + job_id.hex(), "model": model.name, "model_id": model.id, "input": "0x" + data.hex(),
                **(extra or {})}
        expected_in = input_root(job)
        tried: set[str] = set()
        reasons: list[str] = []
        limit = self._answer_limit(job, extra or {}, models.get(model.name).vocab)
        # a stream may take the node timeout plus a floor rate per token (honest nodes are ~10x faster)
        total_s = self.settings.node_timeout_s + job.max_tokens * self.settings.node_token_timeout_s

        async def slot(stream: Relay | None = None) -> dict:
            for attempt in range(self.settings.max_attempts):
                ranked = self.pool.rank(model.id, tried)
                if not ranked:
                    break
                node = ranked[0]
                tried.add(node.address)
                if attempt:
                    await asyncio.sleep(self.pool.backoff(attempt - 1, self.settings.backoff_base_s,
                                                          self.settings.backoff_cap_s))
                try:
                    answer = await self.pool.execute(node, body, on_token=stream.token if stream else None,
                                                     limit=limit, total_s=total_s)
                    checked = self._check(node.address, answer, body, expected_in, kind, job)
                    if stream is not None:
                        await stream.complete(checked)   # the streamed ids are the signed ones
                except NodeFailure as exc:
                    reasons.append(exc.reason)
                    if exc.eject:
                        self.pool.eject(node, exc.reason)
                    elif exc.fault:
                        self.pool.failure(node, exc.reason)
                    if stream is not None and stream.broken:
                        raise StreamFailed(f"the stream cannot go on: {exc.reason}") from None
                    continue
                self.pool.success(node, answer["_latency_ms"])
                return checked
            raise NoNodeAvailable(f"no node answered for `{model.name}` "
                                  f"({'; '.join(reasons[-3:]) or 'none in rotation'})")

        outcomes = await asyncio.gather(*(slot(relay if i == 0 else None) for i in range(k)), return_exceptions=True)
        results = [o for o in outcomes if isinstance(o, dict)]
        failures = [o for o in outcomes if not isinstance(o, dict)]
        for exc in failures:
            if not isinstance(exc, NoNodeAvailable):
                raise exc
        if not results:
            raise failures[0]
        if not failures and k > 1:
            counts = sorted(Counter(r["output_root"] for r in results).values(), reverse=True)
            if len(counts) > 1 and counts[0] == counts[1]:
                # An even split (k = 2: one liar) is not decided by who was fastest:
                # one more node breaks the tie; without one, the stake behind each answer does (vote()).
                try:
                    results.append(await slot())
                except NoNodeAvailable:
                    pass
        return results, (failures[0] if failures else None)

    def _check(self, address: str, answer: dict, body: dict, expected_in: bytes, kind: str, job: JobInput) -> dict:
        """The answer must be bound to what the client will get: recompute the
        output root from the returned output, and check the node's signature
        over the leaf with the chain's own rule (poster.signature_ok) before
        anything is answered or cached: a leaf the poster would reject is never
        served (it would be an answer no challenger sees)."""
        from coordinator.poster import signature_ok

        try:
            if (str(answer["node"]).lower() != address.lower() or answer["job_id"] != body["job_id"]
                    or answer["model_id"] != body["model_id"]):
                raise ValueError("answer names another node, job or model")
            if bytes.fromhex(answer["input_root"][2:]) != expected_in:
                raise ValueError("input root differs from the job's")
            payload = answer["output"]
            spec = models.get(body["model"])
            if kind == "embedding":
                vector = [int(v) for v in payload["embedding"]]
                if len(vector) != spec.dimensions:
                    raise ValueError(f"embedding has {len(vector)} dimensions")
                output = embedding_output(vector)
                result = {"embedding": vector}
            else:
                ids = [int(t) for t in payload["ids"]]
                if not all(0 <= t < spec.vocab for t in ids):
                    raise ValueError("token id outside the vocabulary")
                if len(ids) > job.max_tokens or payload["finish_reason"] not in ("stop", "length"):
                    raise ValueError("more tokens than max_tokens, or an unknown finish reason")
                output = generation_output(ids, payload["finish_reason"], job.max_tokens)
                result = {"ids": ids, "finish_reason": payload["finish_reason"]}
                extra = self._extras(payload, body, ids, job)
                streamed = answer.get("_streamed") or []
                if streamed and streamed != ids:
                    # what the client was shown is not what the node signed: a lie, not bad luck
                    raise NodeFailure(address, f"bad answer: streamed tokens differ from the signed output "
                                               f"({len(streamed)} streamed, {len(ids)} signed)", eject=True)
            output_root = bytes.fromhex(answer["output_root"][2:])
            if tensor_root(output) != output_root:
                raise ValueError("output root does not commit to the returned output")
            signature = bytes.fromhex(answer["signature"][2:])
            if len(signature) != 65:
                raise ValueError("signature is not 65 bytes")
        except (KeyError, TypeError, ValueError, AttributeError, CommitmentError) as exc:
            raise NodeFailure(address, f"bad answer: {exc}") from None
        chain = self.catalog.chain
        leaf = ResultLeaf(bytes.fromhex(body["job_id"][2:]), body["model_id"], expected_in, output_root, address,
                          bytes.fromhex(body["input"][2:]), signature)
        if hasattr(leaf, "canonical"):
            # every form that proves the node signed becomes the one form the chain accepts (H2)
            leaf = leaf.canonical(chain.chain_id, chain.rollup.address) or leaf
        if not signature_ok(leaf, chain.chain_id, chain.rollup.address):
            # not bad luck: a node that signs what the chain would not accept is out at once
            raise NodeFailure(address, "bad signature: the leaf signature does not recover to the node "
                                       "under the rollup's rule", eject=True)
        signature = leaf.signature
        return {"node": address, "output_root": output_root, "input_root": expected_in, "signature": signature,
                "result": result, "extra": extra if kind != "embedding" else {}}

    @staticmethod
    def _extras(payload: dict, body: dict, ids: list[int], job: JobInput) -> dict:
        """The log-probabilities asked for, checked for shape (one per token, the
        token's own id): they are the node's word, not part of the signed leaf."""
        extra = {}
        if body.get("logprobs") is not None:
            entries = payload.get("logprobs")
            if not isinstance(entries, list) or len(entries) != len(ids) or \
                    any(not isinstance(e, dict) or e.get("id") != t for e, t in zip(entries, ids)):
                raise ValueError("logprobs missing or not one per generated token")
            extra["logprobs"] = entries
        if body.get("prompt_logprobs"):
            values = payload.get("prompt_logprobs")
            if not isinstance(values, list) or len(values) != len(job.tokens):
                raise ValueError("prompt_logprobs missing or not one per prompt token")
            extra["prompt_logprobs"] = values
        return extra

    def _answer_limit(self, job: JobInput, extra: dict, vocab: int) -> int:
        """Bytes a node's answer to this job may take (streamed or not): see answer_bound."""
        return answer_bound(self.settings.max_node_answer_bytes, job.max_tokens, len(job.tokens), vocab,
                            extra.get("logprobs"), bool(extra.get("prompt_logprobs")))

    # ------------------------------------------------------------ records (run in a worker thread)

    def _record(self, model: ModelInfo, job_id: bytes, job: JobInput, data: bytes, kind: str, results: list[dict],
                winner: bytes, who: Principal) -> Answer:
        """The job, its leaves and its usage in one transaction, before the
        client gets the answer (what is answered is posted, even after a
        crash). Plain inserts: the ORM's unit of work costs more than the
        commit itself on this hot path; the returned rows are detached."""
        now = self.clock()
        chosen = next(r for r in results if r["output_root"] == winner)
        row = m.Job(id=job_id.hex(), kind=kind, model=model.name, model_id=model.id, model_root=model.model_root,
                    input=data, seed=str(job.seed), result=chosen["result"], prompt_tokens=len(job.tokens),
                    completion_tokens=len(chosen["result"].get("ids", [])), consensus=len(results),
                    api_key_id=who.key_id, created_at=now)
        leaves = [dict(job_id=row.id, node=r["node"], input_root=r["input_root"], output_root=r["output_root"],
                       signature=r["signature"], agrees=r["output_root"] == winner, status=m.PENDING, note=None,
                       batch_pk=None, leaf_index=None, created_at=now) for r in results]
        with self.sessions() as s, s.begin():
            s.execute(insert(m.Job.__table__), [_columns(row, m.Job)])
            s.execute(insert(m.Leaf.__table__), leaves)
            s.execute(insert(m.Usage.__table__), [self._usage(row, who, False, len(results))])
        primary = m.Leaf(**next(leaf for leaf in leaves if leaf["agrees"]))
        return Answer(row, primary)

    def _usage(self, job: m.Job, who: Principal, cached: bool, executions: int = 1) -> dict:
        """One row per answer; a consensus job costs one execution per node that ran it."""
        tokens = job.prompt_tokens + job.completion_tokens
        mi = self.catalog.models.get(job.model)
        cost = mi.cost_wei(tokens) * executions if mi else 0
        return dict(api_key_id=who.key_id, job_id=job.id, model=job.model, prompt_tokens=job.prompt_tokens,
                    completion_tokens=job.completion_tokens, cost_wei=str(cost), cached=cached,
                    created_at=self.clock())

    def _record_usage(self, job: m.Job, who: Principal, cached: bool) -> None:
        with self.sessions() as s, s.begin():
            s.execute(insert(m.Usage.__table__), [self._usage(job, who, cached)])

    def _load_answer(self, job_id: str) -> Answer | None:
        with self.sessions() as s:
            job = s.get(m.Job, job_id, options=[undefer(m.Job.result)])
            if job is None:
                return None
            leaves = list(job.leaves)
            primary = next(leaf for leaf in leaves if leaf.agrees)
            if primary.status not in SERVABLE:
                return None   # rejected, disputed or invalid: run the job again, never serve it
            return Answer(job, primary, cached=True, agreed=sum(leaf.agrees for leaf in leaves))

    # ------------------------------------------------------------ views (blocking; routes run them in threads)

    def job_view(self, job_id: str) -> dict:
        job_id = job_id.lower().removeprefix("0x")
        with self.sessions() as s:
            job = s.get(m.Job, job_id, options=[undefer(m.Job.result)]) if len(job_id) == 32 else None
            if job is None:
                raise NotFound(f"no job {job_id!r}", param="job_id", code="job_not_found")
            leaves = []
            for leaf in job.leaves:
                item = {"node": leaf.node, "status": leaf.status, "agrees": leaf.agrees,
                        "input_root": "0x" + leaf.input_root.hex(), "output_root": "0x" + leaf.output_root.hex(),
                        "signature": "0x" + leaf.signature.hex(), "batch_id": None, "leaf_index": None,
                        "proof": None, "tx_hash": None, "batch_root": None, "deadline": None}
                if leaf.note:
                    item["note"] = leaf.note
                batch = leaf.batch
                if batch is not None and batch.state in (m.BATCH_POSTED, m.BATCH_FINAL):
                    tree = self._batch_tree(batch)
                    item.update(batch_id=batch.chain_batch_id, leaf_index=leaf.leaf_index,
                                proof=["0x" + p.hex() for p in tree.proof(leaf.leaf_index)],
                                leaf_hash="0x" + tree.leaves[leaf.leaf_index].hash.hex(),
                                tx_hash="0x" + batch.tx_hash.hex(), batch_root="0x" + batch.root.hex(),
                                deadline=batch.deadline)
                leaves.append(item)
            primary = next(i for i, leaf in zip(leaves, job.leaves) if leaf.agrees)
            out = {"id": "0x" + job.id, "object": "opinfer.job", "kind": job.kind, "model": job.model,
                   "model_id": job.model_id, "model_root": "0x" + job.model_root.hex(), "created": int(job.created_at),
                   "input": "0x" + job.input.hex(), "seed": job.seed, "result": job.result,
                   "usage": {"prompt_tokens": job.prompt_tokens, "completion_tokens": job.completion_tokens,
                             "total_tokens": job.prompt_tokens + job.completion_tokens}}
            out.update({k: primary[k] for k in ("status", "node", "input_root", "output_root", "signature",
                                                "batch_id", "leaf_index", "proof", "tx_hash", "batch_root",
                                                "deadline")})
            out["leaf_hash"] = primary.get("leaf_hash")
            out["leaves"] = leaves
            return out

    def _batch_tree(self, batch: m.Batch) -> LeafBatch:
        """The batch's Merkle tree for proofs; recently used trees are kept, up
        to PROOF_CACHE_LEAVES leaves in all (bounded in memory, not in count:
        a tree holds every leaf's input)."""
        from coordinator.poster import result_leaf

        with self._proofs_lock:
            tree = self._proofs.get(batch.id)
            if tree is not None:
                self._proofs.move_to_end(batch.id)
                return tree
        s = object_session(batch)
        leaves = s.scalars(select(m.Leaf).where(m.Leaf.batch_pk == batch.id).order_by(m.Leaf.leaf_index)
                           .options(selectinload(m.Leaf.job))).all()
        tree = LeafBatch([result_leaf(leaf) for leaf in leaves])
        with self._proofs_lock:
            self._proofs[batch.id] = tree
            cached = sum(len(t.leaves) for t in self._proofs.values())
            while cached > PROOF_CACHE_LEAVES and len(self._proofs) > 1:
                cached -= len(self._proofs.popitem(last=False)[1].leaves)
        return tree

    def batch_view(self, batch_id: int) -> dict:
        with self.sessions() as s:
            batch = s.scalars(select(m.Batch).where(m.Batch.chain_batch_id == batch_id)).first()
            if batch is None:
                raise NotFound(f"no batch {batch_id}", param="batch_id", code="batch_not_found")
            return {"id": batch.chain_batch_id, "object": "opinfer.batch", "state": batch.state,
                    "root": "0x" + batch.root.hex(), "leaf_count": batch.leaf_count,
                    "tx_hash": "0x" + batch.tx_hash.hex(), "block_number": batch.block_number,
                    "deadline": batch.deadline, "posted_at": batch.posted_at, "finalized_at": batch.finalized_at,
                    "leaves": [{"index": leaf.leaf_index, "job_id": "0x" + leaf.job_id, "node": leaf.node,
                                "status": leaf.status} for leaf in batch.leaves]}

    def disagreements(self, after: float, limit: int) -> dict:
        """Consensus jobs whose nodes gave different output roots, oldest first,
        created after `after` (epoch s): at least one of their leaves is a lie,
        and the vote may have picked the wrong side (k = 2, colluding nodes), so
        a challenger should re-execute every leaf listed, sampled or not. The
        same jobs can be found in calldata alone (one job id, several output
        roots); this list saves the search."""
        with self.sessions() as s:
            jobs = s.scalars(select(m.Job).where(m.Job.id.in_(select(m.Leaf.job_id).where(m.Leaf.agrees.is_(False))),
                                                 m.Job.created_at > after)
                             .order_by(m.Job.created_at).limit(limit).options(selectinload(m.Job.leaves)
                                                                              .selectinload(m.Leaf.batch))).all()
            data = [{"job_id": "0x" + job.id, "model": job.model, "model_id": job.model_id, "created": job.created_at,
                     "leaves": [{"node": leaf.node, "output_root": "0x" + leaf.output_root.hex(),
                                 "agrees": leaf.agrees, "status": leaf.status,
                                 "batch_id": leaf.batch.chain_batch_id if leaf.batch is not None else None,
                                 "leaf_index": leaf.leaf_index} for leaf in job.leaves]} for job in jobs]
        return {"object": "list", "data": data, "next_after": data[-1]["created"] if data else after}

    def usage(self, who: Principal) -> dict:
        with self.sessions() as s:
            cond = m.Usage.api_key_id.is_(None) if who.key_id is None else m.Usage.api_key_id == who.key_id
            rows = s.execute(select(m.Usage.model, func.count(), func.sum(m.Usage.prompt_tokens),
                                    func.sum(m.Usage.completion_tokens), func.sum(case((m.Usage.cached, 1), else_=0)))
                             .where(cond).group_by(m.Usage.model)).all()
            costs: dict[str, int] = {}
            for model, cost in s.execute(select(m.Usage.model, m.Usage.cost_wei).where(cond)):
                costs[model] = costs.get(model, 0) + int(cost)  # 256-bit sums in Python, not SQL
        data = [{"model": model, "requests": n, "cached_requests": int(cached or 0), "prompt_tokens": int(p or 0),
                 "completion_tokens": int(c or 0), "total_tokens": int((p or 0) + (c or 0)),
                 "cost_wei": str(costs.get(model, 0))} for model, n, p, c, cached in rows]
        return {"object": "opinfer.usage", "key": who.name, "data": data,
                "total_cost_wei": str(sum(costs.values()))}


def _columns(row, model) -> dict:
    return {c.key: getattr(row, c.key) for c in model.__table__.columns}


def embedding_floats(vector: list[int], model: str) -> np.ndarray:
    """The API's floats of an integer embedding (the model's own scale)."""
    return models.get(model).to_float(vector)
