"""Verification of a result without trusting the coordinator or the node.

From the job record (served by the coordinator, so untrusted) and the
response the caller got, `check_job` recomputes everything that can be
recomputed locally:

- the output root, from the answer itself (embedding: the float vector
  back to the engine's integers, scale 2^-14; chat: the generated token ids,
  finish reason and the job's max_tokens, as the GEN row of the program);
- the input root, from the job input bytes;
- the result leaf and its hash, and that its EIP-712 signature (domain: the
  chain id and rollup address the caller configured) recovers to the node
  by the chain's own rule (`opinfer.trace.leaf.recover_compact`, the twin of
  ResultRollup.leaf_signer over the compact form that is posted), so the
  SDK calls valid exactly what DisputeGame.challenge accepts;
- that the answer in the response is the job's result;
- `check_request`: that the job is the caller's own request. The expected
  job input is rebuilt from the request the client sent (messages and
  parameters, or the embedding input) with the coordinator's encoding
  (`opinfer.semantics.jobinput`) and compared byte for byte, so a coordinator
  cannot answer prompt A with the (real, final) result of prompt B.

`verify_on_chain` then asks the chain, over the caller's own RPC
connection: is that leaf hash leaf `leaf_index` of batch `batch_id`
(`ResultRollup.verify_inclusion` with the proof), what is its status
(`leaf_status`: final only after the window with no open dispute), is the
model id the one the registry gives the requested model's name, and is the
model root the one registered for it. The registry is the one the rollup
itself uses (`ResultRollup.registry()`); nothing is skipped.

Reorganisations: every chain read is made at the block `confirmations`
below the head (default per chain kind: 0 on a devnet, 12 elsewhere;
opinfer.chain.reorg), and the batch's posting transaction must be on the
canonical chain, in a block with those confirmations, and must have posted
the very batch id the coordinator names (a re-mined batch can change id).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from opinfer.errors import CommitmentError
from opinfer.sdk.errors import ConfigurationError, VerificationError
from opinfer.trace.tables import LEAF_STATUS_NAMES

STATUS = LEAF_STATUS_NAMES   # ResultRollup.leaf_status codes (the names: LeafStatus.label)
EMBEDDING_SCALE = 1 << 14


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class VerificationReport:
    job_id: str
    checks: list[Check] = field(default_factory=list)
    status: str = "unknown"         # the chain's leaf status
    batch_id: int | None = None
    leaf_index: int | None = None
    leaf_hash: str | None = None

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def final(self) -> bool:
        return self.ok and self.status == "final"

    def add(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(name, bool(ok), detail))
        return bool(ok)

    def failed(self) -> Check | None:
        return next((c for c in self.checks if not c.ok), None)

    def raise_if_failed(self) -> "VerificationReport":
        bad = self.failed()
        if bad is not None:
            raise VerificationError(bad.name, bad.detail, self)
        return self

    def summary(self) -> str:
        return "\n".join(f"{'ok ' if c.ok else 'BAD'} {c.name}{': ' + c.detail if c.detail else ''}"
                         for c in self.checks)


def _hex(b: bytes) -> str:
    return "0x" + bytes(b).hex()


def _bytes(h: str) -> bytes:
    return bytes.fromhex(h.removeprefix("0x"))


def embedding_ints(floats) -> np.ndarray:
    """The engine's integer embedding from the API's floats (exact: k / 2^14 survives float32 and float64)."""
    arr = np.asarray(floats, dtype=np.float64) * EMBEDDING_SCALE
    ints = np.rint(arr).astype(np.int64)
    if not np.all(np.abs(arr - ints) < 1e-6):
        raise ValueError("embedding values are not multiples of 2^-14")
    return ints


def decode_embedding(value) -> list[float]:
    """A float list, or the base64 float32 encoding the `openai` package asks for."""
    if isinstance(value, str):
        import base64

        return np.frombuffer(base64.b64decode(value), dtype=np.float32).astype(np.float64).tolist()
    return list(value)


def output_root(kind: str, result: dict, job_input) -> bytes:
    """The output root a job's result commits to."""
    from opinfer.trace.outputs import embedding_output, generation_output, tensor_root

    if kind == "embedding":
        return tensor_root(embedding_output(result["embedding"]))
    return tensor_root(generation_output(result["ids"], result["finish_reason"], job_input.max_tokens))


def shown_text_ids(ids: list[int], finish_reason: str, stop_sequences) -> list[int]:
    """The ids whose text the caller sees: a matched stop sequence is cut off."""
    shown = list(ids)
    if finish_reason == "stop":
        for seq in stop_sequences:
            if tuple(shown[-len(seq):]) == tuple(seq):
                return shown[:-len(seq)]
    return shown


def echoed_prompt(request: dict, index: int, decode) -> str:
    """The prompt a text completion with `echo` shows before its answer, as the
    coordinator writes it: a text prompt as sent, a prompt of token ids decoded
    (choice `index` of n per prompt)."""
    prompts = request["prompt"]
    if not (isinstance(prompts, list) and prompts and not isinstance(prompts[0], int)):
        prompts = [prompts]
    prompt = prompts[index // int(request.get("n") or 1)]
    return prompt if isinstance(prompt, str) else decode([int(t) for t in prompt])


def check_job(job: dict, chain_id: int, rollup: str, answer: dict | None = None,
              report: VerificationReport | None = None, decode=None) -> VerificationReport:
    """Local checks of a job record (GET /v1/jobs/{id}) and, when given, the
    answer the caller received for it: {"kind": "embedding", "embedding": [...]}
    or {"kind": "chat", "content": str, "finish_reason": str} (a text completion
    with echo: "echo", the prompt text the content must start with, echoed_prompt).
    `decode(ids)` (a tokenizer) lets the chat text itself be compared."""
    from opinfer.semantics.jobinput import JobInput
    from opinfer.trace.leaf import ResultLeaf
    from opinfer.trace.outputs import input_root

    report = report or VerificationReport(job["id"])
    kind = job["kind"]
    try:
        data = _bytes(job["input"])
        job_input = JobInput.from_bytes(data)
    except Exception as exc:  # noqa: BLE001 - any malformed input fails the check
        report.add("job input", False, f"malformed: {exc}")
        return report
    result = job.get("result") or {}
    if answer is not None:
        if kind == "embedding":
            try:
                mine = embedding_ints(decode_embedding(answer["embedding"]))
                same = mine.tolist() == [int(v) for v in result.get("embedding", [])]
            except ValueError as exc:
                same, mine = False, str(exc)
            report.add("answer is the job's result", same,
                       "" if same else "the embedding received differs from the one committed")
            if same:
                result = {"embedding": mine.tolist()}
        else:
            same = answer.get("finish_reason") in (None, result.get("finish_reason"))
            detail = "" if same else "finish reason differs"
            if same and decode is not None and answer.get("content") is not None:
                # with echo the text is the prompt (as the request sent it: the job's tokens are
                # bound to it by check_request) followed by the decoded committed ids
                text = (answer.get("echo") or "") + decode(shown_text_ids(result["ids"], result["finish_reason"],
                                                                         job_input.stop_sequences))
                same = text == answer["content"]
                detail = "" if same else ("the text received is not the echoed prompt and the decoded committed ids"
                                          if answer.get("echo") is not None else
                                          "the text received is not the decoded committed ids")
            report.add("answer is the job's result", same, detail or ("text compared" if decode else
                                                                        "finish reason compared (no tokenizer)"))
    try:
        out_root = output_root(kind, result, job_input)
    except Exception as exc:  # noqa: BLE001
        report.add("output root", False, f"cannot rebuild the output: {exc}")
        return report
    report.add("output root recomputed", out_root == _bytes(job["output_root"]),
               f"{_hex(out_root)[:18]}… vs claimed {job['output_root'][:18]}…")
    in_root = input_root(job_input)
    report.add("input root recomputed", in_root == _bytes(job["input_root"]))
    leaf = ResultLeaf(_bytes(job["id"]), int(job["model_id"]), in_root, out_root, job["node"], data,
                      _bytes(job["signature"]))
    # The chain's rule, over the compact (r, vs) the leaf hash commits to: a
    # form the chain would not accept (a high-s twin packed as is, an
    # unknown v) is not a signature here either.
    report.add("node signature", leaf.signature_valid(chain_id, rollup),
               f"EIP-712 under chain {chain_id}, rollup {rollup}, ResultRollup's ecrecover rule")
    try:
        report.leaf_hash = _hex(leaf.hash)
    except CommitmentError as exc:
        report.add("leaf hash", False, f"the leaf cannot be posted: {exc}")
        return report
    if job.get("leaf_hash"):
        report.add("leaf hash", report.leaf_hash == job["leaf_hash"].lower())
    report.batch_id, report.leaf_index = job.get("batch_id"), job.get("leaf_index")
    return report


def _tokenizer(kind: str, model: str):
    """The tokenizer the coordinator applies to a request for `model`: the copy
    shipped in that model's folder (tested equal to the model package's), so a
    client needs no weights. An embedding model's: its encode function."""
    from opinfer import models

    spec = models.get(model)
    if spec.kind != (models.EMBEDDING if kind == models.EMBEDDING else models.CHAT):
        raise ValueError(f"{model} is a {spec.kind} model: a {kind} request cannot run on it")
    return spec.encode if kind == models.EMBEDDING else spec.tokenizer()


def expected_job_input(kind: str, request: dict, job_input, index: int = 0, tokenizer=None):
    """The job input the coordinator must have built from `request` (the body
    the client sent). Where the request leaves a value to the coordinator
    (chat: max_tokens unset takes its default; no seed with temperature > 0
    takes a fresh random seed, recorded in the job) the job's value is
    taken; every other field comes from the request alone."""
    from opinfer.semantics.jobinput import JobInput, chat_messages, chat_prompt_ids, chat_stop_sequences

    def tokenizer_of_request():
        return tokenizer if tokenizer is not None else _tokenizer(kind, request.get("model", ""))

    if kind == "embedding":
        items = request["input"]
        if isinstance(items, str) or (isinstance(items, list) and items and isinstance(items[0], int)):
            items = [items]
        item = items[index]
        # token ids need no tokenizer (nor a model this library knows: the chain check names the model)
        tokens = [int(t) for t in (tokenizer_of_request()(item) if isinstance(item, str) else item)]
        return JobInput(tuple(tokens))
    tok = tokenizer_of_request()
    from opinfer.engine.sampling import from_openai
    from opinfer.models import sampling_defaults
    from opinfer.semantics.jobinput import choice_seed, completion_stop_sequences

    # what the coordinator applies to a request that leaves temperature / top_p out: the model's defaults
    temperature, top_p = sampling_defaults(request.get("model", ""))
    temperature = temperature if request.get("temperature") is None else request["temperature"]
    top_p = top_p if request.get("top_p") is None else request["top_p"]
    sampling = from_openai(temperature, top_p, request.get("seed"), request.get("presence_penalty"),
                           request.get("frequency_penalty"), request.get("logit_bias"))
    max_tokens = request.get("max_completion_tokens") or request.get("max_tokens") or job_input.max_tokens
    if kind == "completion":
        max_tokens = job_input.max_tokens if request.get("max_tokens") is None else request["max_tokens"]
    n = int(request.get("n") or 1)
    seed = choice_seed(sampling.seed, index % n)      # choice i of n: docs/coordinator.md, "Choices"
    if request.get("seed") is None and sampling.temperature_milli > 0:
        seed = job_input.seed
    if kind == "completion":
        prompts = request["prompt"]
        if not (isinstance(prompts, list) and prompts and not isinstance(prompts[0], int)):
            prompts = [prompts]
        prompt = prompts[index // n]
        tokens = tok.encode_ordinary(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        return JobInput(tuple(tokens), max_tokens, sampling.temperature_milli, sampling.top_p_q, seed,
                        completion_stop_sequences(tok, request.get("stop")), sampling.presence_q,
                        sampling.frequency_q, sampling.logit_bias)
    return JobInput(tuple(chat_prompt_ids(tok, chat_messages(request["messages"]))), max_tokens,
                    sampling.temperature_milli, sampling.top_p_q, seed, chat_stop_sequences(tok, request.get("stop")),
                    sampling.presence_q, sampling.frequency_q, sampling.logit_bias)


def check_request(report: VerificationReport, job: dict, request: dict | None, index: int = 0,
                  tokenizer=None) -> VerificationReport:
    """Bind the job to the caller's own request: the job input must be the
    one rebuilt from `request`, the kind the one asked for. Without a request
    the check fails (nothing else ties a job to what was asked)."""
    from opinfer.semantics.jobinput import JobInput

    if request is None:
        report.add("job input is the request", False,
                   "no request to compare with: verify the response the client returned, or pass request=")
        return report
    kind = "chat" if "messages" in request else "completion" if "prompt" in request else "embedding"
    if job.get("kind") != kind:
        report.add("job input is the request", False, f"a {kind} request answered by a {job.get('kind')} job")
        return report
    try:
        job_input = JobInput.from_bytes(_bytes(job["input"]))
        expected = expected_job_input(kind, request, job_input, index, tokenizer)
    except Exception as exc:  # noqa: BLE001 - any failure to rebuild fails the check, with its reason
        report.add("job input is the request", False, f"cannot rebuild the job input from the request: {exc}")
        return report
    diff = next((f for f in ("tokens", "max_tokens", "temperature_milli", "top_p_q", "seed", "stop_sequences",
                             "presence_q", "frequency_q", "logit_bias")
                 if getattr(expected, f) != getattr(job_input, f)), None)
    report.add("job input is the request", diff is None and expected.to_bytes() == job_input.to_bytes(),
               "rebuilt from the request" if diff is None else f"{diff} differs from the request's")
    return report


class ChainReader:
    """The chain reads verification needs, over the caller's own RPC, through
    the protocol client (opinfer.chain.client). The model registry is the one
    the rollup checks models against (`ResultRollup.registry()`); a configured
    address must be that one."""

    def __init__(self, rpc_url: str, rollup: str, registry: str | None = None, timeout: float = 15.0,
                 confirmations: int | None = None):
        from opinfer.chain.client import ProtocolClient, connect
        from opinfer.errors import ChainError

        self.confirmations = confirmations   # None: the chain kind's default, read on first use
        self.w3 = connect(rpc_url, timeout)
        try:
            self.protocol = ProtocolClient(self.w3, rollup, registry)
        except ChainError as exc:
            raise ConfigurationError(str(exc)) from None
        self.rollup, self.registry = self.protocol.rollup, self.protocol.registry

    def chain_id(self) -> int:
        return self.protocol.chain_id

    def safe_block(self) -> int:
        """The newest block with `confirmations` on top: every read is made there."""
        if self.confirmations is None:
            from opinfer.chain.reorg import default_confirmations

            self.confirmations = default_confirmations(self.chain_id())
        return max(0, self.protocol.head() - self.confirmations)

    def posting(self, tx_hash: str, safe: int) -> tuple[int | None, str]:
        """(the batch id the transaction posted, why not) with the transaction
        mined in a canonical block at or below `safe`."""
        from opinfer.chain.reorg import on_canonical_chain

        try:
            receipt = self.w3.eth.get_transaction_receipt(tx_hash)
        except Exception:  # noqa: BLE001 - TransactionNotFound
            return None, f"transaction {tx_hash[:18]}… is not on the chain (reorganised out?)"
        if receipt["blockNumber"] > safe:
            return None, f"mined in block {receipt['blockNumber']}, above the confirmed block {safe}"
        if not on_canonical_chain(self.w3, receipt):
            return None, f"block {receipt['blockNumber']} of the transaction is no longer canonical"
        posted = self.protocol.batches_posted(receipt)
        if not posted:
            return None, "the transaction posted no batch"
        return posted[0].batch_id, f"block {receipt['blockNumber']}"

    def includes(self, batch_id: int, index: int, leaf_hash: bytes, proof: list[bytes], block="latest") -> bool:
        return self.protocol.includes(batch_id, index, leaf_hash, proof, block)

    def leaf_status(self, batch_id: int, index: int, block="latest") -> str:
        return self.protocol.leaf_status(batch_id, index, block).label

    def batch(self, batch_id: int) -> dict:
        b = self.protocol.batch(batch_id)
        return {"root": _hex(b.root), "leaf_count": b.leaf_count, "deadline": b.deadline, "poster": b.poster,
                "finalized": b.finalized}

    def model_root(self, model_id: int) -> str:
        return _hex(self.protocol.model(model_id).model_root)

    def model_id(self, name: str) -> int:
        """The registered id of a model name (0: not registered)."""
        return self.protocol.model_id(name)

    def now(self) -> int:
        return self.protocol.timestamp()


def verify_on_chain(report: VerificationReport, job: dict, chain: ChainReader,
                    model: str | None = None) -> VerificationReport:
    """On-chain checks; `model` is the model name the caller asked for (its
    registered id must be the job's)."""
    if model is not None:
        wanted = chain.model_id(model)
        report.add("model is the one requested", wanted != 0 and wanted == int(job["model_id"]),
                   f"registry: {model!r} -> id {wanted}; job's model id {job['model_id']}")
    if report.batch_id is None or job.get("proof") is None:
        report.status = "pending"
        report.add("posted on-chain", False, "the job is not in a posted batch yet")
        return report
    leaf_hash = _bytes(report.leaf_hash)
    proof = [_bytes(p) for p in job["proof"]]
    safe = chain.safe_block()
    if job.get("tx_hash"):
        posted_id, detail = chain.posting(job["tx_hash"], safe)
        ok = posted_id is not None and posted_id == int(report.batch_id)
        if posted_id is not None and not ok:
            detail = f"the transaction posted batch {posted_id}, not {report.batch_id}"
        if not report.add("posting transaction on the canonical chain", ok, detail):
            report.status = "pending"
            return report
    included = chain.includes(int(report.batch_id), int(report.leaf_index), leaf_hash, proof, block=safe)
    report.add("inclusion proof against the on-chain batch root", included,
               f"batch {report.batch_id}, leaf {report.leaf_index}, {len(proof)} siblings")
    registered = chain.model_root(int(job["model_id"]))
    report.add("model root registered on-chain", registered.lower() == job["model_root"].lower(),
               f"model {job['model_id']}: {registered[:18]}…")
    report.status = chain.leaf_status(int(report.batch_id), int(report.leaf_index), block=safe)
    return report
