"""Verification of a result without trusting the coordinator or the node.

From the job record (served by the coordinator, so untrusted) and the
response the caller got, `check_job` recomputes everything that can be
recomputed locally:

- the output root, from the answer itself (embedding: the float vector
  back to the engine's integers, scale 2^-14; chat: the generated token ids,
  finish reason and the job's max_tokens, as the GEN row of the program);
- the input root, from the job input bytes;
- the result leaf and its hash, and that its EIP-712 signature (domain: the
  chain id and rollup address the caller configured) recovers to the node;
- that the answer in the response is the job's result.

`verify_on_chain` then asks the chain, over the caller's own RPC
connection: is that leaf hash leaf `leaf_index` of batch `batch_id`
(`ResultRollup.verify_inclusion` with the proof), what is its status
(`leaf_status`: final only after the window with no open dispute), and is
the model root the one registered for the model id (`ModelRegistry`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from opinfer.sdk.errors import VerificationError

STATUS = {0: "unknown", 1: "posted", 2: "disputed", 3: "final", 4: "invalid"}
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


def check_job(job: dict, chain_id: int, rollup: str, answer: dict | None = None,
              report: VerificationReport | None = None, decode=None) -> VerificationReport:
    """Local checks of a job record (GET /v1/jobs/{id}) and, when given, the
    answer the caller received for it: {"kind": "embedding", "embedding": [...]}
    or {"kind": "chat", "content": str, "finish_reason": str}. `decode(ids)`
    (a tokenizer) lets the chat text itself be compared."""
    from opinfer.trace.jobinput import JobInput
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
                text = decode(shown_text_ids(result["ids"], result["finish_reason"], job_input.stop_sequences))
                same = text == answer["content"]
                detail = "" if same else "the text received is not the decoded committed ids"
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
    from eth_account import Account

    try:
        signer = Account._recover_hash(leaf.digest(chain_id, rollup), signature=leaf.signature)
    except Exception as exc:  # noqa: BLE001
        signer = f"unrecoverable ({exc})"
    report.add("node signature", str(signer).lower() == job["node"].lower(),
               f"EIP-712 under chain {chain_id}, rollup {rollup}")
    report.leaf_hash = _hex(leaf.hash)
    if job.get("leaf_hash"):
        report.add("leaf hash", report.leaf_hash == job["leaf_hash"].lower())
    report.batch_id, report.leaf_index = job.get("batch_id"), job.get("leaf_index")
    return report


class ChainReader:
    """The chain reads verification needs, over the caller's own RPC."""

    def __init__(self, rpc_url: str, rollup: str, registry: str | None = None, timeout: float = 15.0):
        from web3 import HTTPProvider, Web3

        from opinfer.chain import artifacts

        self.w3 = Web3(HTTPProvider(rpc_url, request_kwargs={"timeout": timeout}))
        self.rollup = self.w3.eth.contract(address=Web3.to_checksum_address(rollup),
                                           abi=artifacts.load("ResultRollup").abi)
        self.registry = None
        if registry:
            self.registry = self.w3.eth.contract(address=Web3.to_checksum_address(registry),
                                                 abi=artifacts.load("ModelRegistry").abi)

    def chain_id(self) -> int:
        return self.w3.eth.chain_id

    def includes(self, batch_id: int, index: int, leaf_hash: bytes, proof: list[bytes]) -> bool:
        return self.rollup.functions.verify_inclusion(batch_id, index, leaf_hash, proof).call()

    def leaf_status(self, batch_id: int, index: int) -> str:
        return STATUS.get(self.rollup.functions.leaf_status(batch_id, index).call(), "unknown")

    def batch(self, batch_id: int) -> dict:
        root, _, count, deadline, poster, finalized = self.rollup.functions.batch(batch_id).call()
        return {"root": _hex(root), "leaf_count": count, "deadline": deadline, "poster": poster,
                "finalized": finalized}

    def model_root(self, model_id: int) -> str | None:
        if self.registry is None:
            return None
        return _hex(self.registry.functions.get_model(model_id).call()[0])

    def now(self) -> int:
        return self.w3.eth.get_block("latest")["timestamp"]


def verify_on_chain(report: VerificationReport, job: dict, chain: ChainReader) -> VerificationReport:
    if report.batch_id is None or job.get("proof") is None:
        report.status = "pending"
        report.add("posted on-chain", False, "the job is not in a posted batch yet")
        return report
    leaf_hash = _bytes(report.leaf_hash)
    proof = [_bytes(p) for p in job["proof"]]
    included = chain.includes(int(report.batch_id), int(report.leaf_index), leaf_hash, proof)
    report.add("inclusion proof against the on-chain batch root", included,
               f"batch {report.batch_id}, leaf {report.leaf_index}, {len(proof)} siblings")
    registered = chain.model_root(int(job["model_id"]))
    if registered is not None:
        report.add("model root registered on-chain", registered.lower() == job["model_root"].lower(),
                   f"model {job['model_id']}: {registered[:18]}…")
    report.status = chain.leaf_status(int(report.batch_id), int(report.leaf_index))
    return report
