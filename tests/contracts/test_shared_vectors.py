"""Python engine and the Vyper ElementRules contract agree bit for bit on
shared vectors (opinfer/semantics/vectors.py): at least 200 instances per
element rule (random plus edge cases: saturation, negative ties, the longest
rows the models read, reverts). Each rule's instances go to anvil as one
JSON-RPC batch of eth_calls, encoded with eth_abi (brownie's per-call
encoding of 1,536-entry rows would dominate the run time)."""

import json
import urllib.request

import numpy as np
import pytest
from brownie import ElementRules, accounts, web3
from eth_abi import decode, encode

from opinfer.engine import sampling
from opinfer.semantics.merkle import keccak
from opinfer.semantics.vectors import CASES, REVERT, cases

ERROR_SELECTOR = keccak(b"Error(string)")[:4]
CODE_LIMIT = 24576
MAX_BODY = 1 << 20          # bytes of calldata hex per HTTP request (anvil limits request bodies)


@pytest.fixture(scope="module")
def rules():
    return ElementRules.deploy({"from": accounts[0]})


class Batch:
    """eth_calls to one contract, sent as JSON-RPC batches."""

    def __init__(self, contract):
        self.address = contract.address
        self.abi = {f["name"]: f for f in contract.abi if f.get("type") == "function"}
        self.url = web3.provider.endpoint_uri

    def call(self, name: str, arg_lists: list) -> list:
        """One result per argument list: a value, a tuple for several outputs,
        or ("revert", reason)."""
        fn = self.abi[name]
        ins = [i["type"] for i in fn["inputs"]]
        outs = [o["type"] for o in fn["outputs"]]
        selector = keccak(f"{name}({','.join(ins)})".encode())[:4]
        requests = [
            {"jsonrpc": "2.0", "id": n, "method": "eth_call",
             "params": [{"to": self.address, "data": "0x" + (selector + encode(ins, list(args))).hex()}, "latest"]}
            for n, args in enumerate(arg_lists)
        ]
        replies, group, size = [], [], 0
        for request in requests + [None]:
            if group and (request is None or size + len(request["params"][0]["data"]) > MAX_BODY):
                replies += self._post(group)
                group, size = [], 0
            if request is not None:
                group.append(request)
                size += len(request["params"][0]["data"])
        replies.sort(key=lambda r: r["id"])
        results = []
        for reply in replies:
            if "error" in reply:
                results.append(("revert", _reason(reply["error"])))
                continue
            values = decode(outs, bytes.fromhex(reply["result"][2:]))
            results.append(values[0] if len(values) == 1 else tuple(values))
        return results

    def _post(self, group: list) -> list:
        req = urllib.request.Request(self.url, json.dumps(group).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=600) as resp:
            replies = json.loads(resp.read())
        assert isinstance(replies, list) and len(replies) == len(group), str(replies)[:300]
        return replies


def _reason(error: dict) -> str:
    data = error.get("data") or ""
    if isinstance(data, dict):
        data = data.get("data", "")
    raw = bytes.fromhex(data[2:]) if isinstance(data, str) and data.startswith("0x") else b""
    if raw[:4] == ERROR_SELECTOR:
        return decode(["string"], raw[4:])[0]
    return error.get("message", "")


@pytest.fixture(scope="module")
def batch(rules):
    return Batch(rules)


def test_contract_fits_the_code_limit(rules):
    size = len(web3.eth.get_code(rules.address))
    assert 0 < size < CODE_LIMIT, size


@pytest.mark.parametrize("name", sorted(CASES))
def test_vectors_agree(batch, name):
    instances = cases(name, 200)
    assert len(instances) >= 200
    got = batch.call(name, [args for args, _ in instances])
    mismatches = []
    for (args, expected), value in zip(instances, got):
        if expected is REVERT:
            ok = isinstance(value, tuple) and value[0] == "revert" and value[1].startswith("ElementRules: ")
        else:
            ok = value == (tuple(expected) if isinstance(expected, tuple) else expected)
        if not ok:
            mismatches.append((name, expected, value, str(args)[:200]))
    assert not mismatches, mismatches[:3]


def test_batch_agrees_with_brownie_calls(rules, batch):
    """The hand-rolled batch encoding reads what brownie's own call reads."""
    for name in ("elem_block_dense", "elem_bisect_step", "elem_pick_chunk", "elem_draw"):
        args, expected = next(c for c in cases(name, 200)[3:] if c[1] is not REVERT)
        value = getattr(rules, name)(*args)
        value = tuple(int(v) for v in value) if isinstance(value, tuple) else int(value)
        assert value == batch.call(name, [args])[0] == expected


def _next_token_on_chain(batch, logits: list[int], params: sampling.SamplingParams, step: int) -> int:
    """sampling.next_token_by_rules with every rule run by the contract."""
    C = sampling.CHUNK
    chunks = [logits[j:j + C] for j in range(0, len(logits), C)]
    packs = batch.call("elem_chunk_argmax", [(c, j * C) for j, c in enumerate(chunks)])
    if params.greedy:
        return batch.call("elem_argmax_token", [(max(packs),)])[0]
    top = batch.call("elem_packed_value", [(max(packs),)])[0]
    chunks[-1] = chunks[-1] + [top - sampling.PAD_OFFSET] * ((-len(logits)) % C)
    flat = batch.call("elem_sample_weight", [(v, top, params.temperature_milli) for c in chunks for v in c])
    weights = [flat[j:j + C] for j in range(0, len(flat), C)]
    total = sum(batch.call("elem_masked_sum", [(w, 0) for w in weights]))
    lo, hi = 1, 1 << 16
    for _ in range(17):
        mid = (lo + hi + 1) >> 1
        sums = batch.call("elem_masked_sum", [(w, mid) for w in weights])
        lo, hi = batch.call("elem_bisect_step", [(lo, hi, sums, total, params.top_p_q)])[0]
    sums = batch.call("elem_masked_sum", [(w, lo) for w in weights])
    r = batch.call("elem_draw", [(params.seed, step, sum(sums))])[0]
    j, rest = batch.call("elem_pick_chunk", [(sums, r)])[0]
    return j * C + batch.call("elem_pick_in_chunk", [(weights[j], lo, rest)])[0]


@pytest.mark.parametrize("vocab,temperature_milli,top_p_q,seed", [
    (700, 1000, 65536, 1), (700, 700, 58982, 2), (513, 2000, 1, 3), (256, 1, 30000, 4), (300, 0, 65536, 5),
])
def test_sampling_composed_on_chain_matches_engine(batch, vocab, temperature_milli, top_p_q, seed):
    rng = np.random.default_rng(seed)
    logits = rng.integers(-2**18, 2**18, size=vocab)
    logits[rng.integers(0, vocab, size=5)] = logits.max()  # ties at the top
    params = sampling.SamplingParams(temperature_milli, top_p_q, seed)
    for step in (0, 7):
        assert _next_token_on_chain(batch, logits.tolist(), params, step) == sampling.next_token(logits, params, step)


def _job_input_cases(rng: np.random.Generator, n: int) -> list[list[int]]:
    """Job inputs around every edge job_shape checks: lengths, prompt tokens
    at the vocabulary and at 0xFFFF, stop sequences empty or unterminated,
    new tokens, temperature and positions at the limits, version 2's penalty
    words (bias counts that do or do not add up)."""
    out = []
    for _ in range(n):
        tokens = [int(t) for t in rng.choice([0, 5, 29999, 30000, 30521, 30522, 49151, 49152, 65534, 65535],
                                             size=int(rng.integers(1, 24)))]
        if rng.random() < 0.6:
            tokens = [int(t) for t in rng.integers(0, 30000, size=int(rng.choice([1, 10, 16, 17, 20, 512, 513])))]
        stops = [int(t) for t in rng.choice([1, 2, 0xFFFF], size=int(rng.choice([0, 0, 1, 2, 3, 5])))]
        new = int(rng.choice([0, 1, 2, 11, 12, 1020, 1021, 65535]))
        temperature = int(rng.choice([0, 700, 2000, 2001, 65535]))
        version, penalty = 1, []
        if rng.random() < 0.4:   # version 2: presence, frequency, B, B (id, bias) pairs, any uint16 words
            entries = int(rng.choice([0, 1, 3, 300]))
            penalty = [int(w) for w in rng.integers(0, 1 << 16, size=2)] + [entries]
            penalty += [int(w) for w in rng.integers(0, 1 << 16, size=2 * entries)]
            version = 2
            if rng.random() < 0.1:   # B off by one: the lengths no longer add up
                penalty[2] += int(rng.choice([-1, 1])) if entries else 1
        words = ([version, len(tokens), new, temperature, int(rng.integers(0, 1 << 16)), 0, 0, 0, 9, len(stops)]
                 + stops + penalty + tokens)
        if rng.random() < 0.08:  # a broken header: version, token count, length
            words[int(rng.choice([0, 1, 9]))] += 1
        out.append(words)
    return out


def test_job_shape_agrees_with_python(rules):
    """StepVerifier.job_shape and opinfer.semantics.program.job_shape agree on
    300 job inputs for each of five mode words (the real models' limits, toy
    limits and none); a well-formed job's T_0 root is TensorTree's."""
    from brownie import DecoderOps, StepVerifier

    from opinfer.models.smollm2 import program as smollm2_program
    from opinfer.errors import CommitmentError
    from opinfer.semantics.jobinput import JobInput
    from opinfer.semantics.program import PER_POSITION, JobLimits, job_shape
    from opinfer.semantics.tensor import TensorTree

    verifier = StepVerifier.deploy(rules, DecoderOps.deploy(rules, {"from": accounts[0]}), {"from": accounts[0]})
    minilm = JobLimits(positions=512, vocab=30522, min_new=0, max_new=0, max_stop_words=0)
    modes = [minilm.word(), PER_POSITION | smollm2_program.limits().word(), 0, PER_POSITION,
             PER_POSITION | JobLimits(positions=20, vocab=30000, max_temperature=2000, min_new=1, max_new=11,
                                      max_stop_words=3).word()]
    rng = np.random.default_rng(14)
    inputs = [np.asarray(w, dtype=">u2").tobytes() for w in _job_input_cases(rng, 300)]
    inputs += [b"", b"\x00\x01" * 9, b"\x00" * 21]  # too short, odd
    calls, expected = [], []
    for mode in modes:
        head = [b"\x11" * 32, b"\x22" * 32, 3, mode]
        root = keccak(encode(["bytes32", "bytes32", "uint256", "uint256", "uint256"], head[:2] + [7] + head[2:]))
        header = encode(["bytes32", "bytes32", "uint256", "uint256"], head)
        for data in inputs:
            calls.append((root, 7, header, data))
            expected.append(job_shape(mode, 7, data))
    got = Batch(verifier).call("job_shape", calls)
    mismatches, formed, versions = [], 0, set()
    for (_, _, _, data), want, value in zip(calls, expected, got):
        if value[:3] != want:
            mismatches.append((data.hex()[:80], want, value[:3]))
        elif want[0]:
            formed += 1
            row = np.frombuffer(data, dtype=">u2").astype(np.int64).reshape(1, -1)
            assert value[3] == TensorTree.build(row).root
            # the JobInput decoder accepts exactly these (the challenger decodes what the chain accepts)
            assert JobInput.from_bytes(data).to_bytes() == data
            versions.add(data[1])
    assert not mismatches, mismatches[:3]
    assert 0.08 * len(calls) < formed < 0.8 * len(calls)  # both sides of the edges exercised
    assert versions == {1, 2}
    for data in inputs:   # and refuses what the chain refuses
        if not job_shape(0, 7, data)[0]:
            with pytest.raises(CommitmentError):
                JobInput.from_bytes(data)
