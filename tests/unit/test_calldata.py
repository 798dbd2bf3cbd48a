"""The one calldata decoder (opinfer.chain.client.decode_post_batch) and the call
finder (opinfer.chain.calls) on transactions recorded from an anvil run
(tests/unit/data/post_batch_calls.json: a direct post_batch of two leaves, and
one leaf posted through a contract wallet, with anvil's callTracer output).
No chain here: the recorded bytes are replayed through a stand-in for web3's
two calls, so the decoding and the tracer path are checked as pure logic."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from web3 import Web3

from opinfer.chain import artifacts, calls
from opinfer.chain.client import decode_post_batch

DATA = json.loads((Path(__file__).parent / "data" / "post_batch_calls.json").read_text())
ROLLUP = Web3().eth.contract(address=DATA["rollup"], abi=artifacts.abi("ResultRollup"))
DIRECT, VIA_WALLET = DATA["batches"]
SELECTOR = calls.selector(ROLLUP, "post_batch")


def raw(hex_str: str) -> bytes:
    return bytes.fromhex(hex_str.removeprefix("0x"))


class Replay:
    """web3's get_transaction and debug_traceTransaction answered from the recording."""

    def __init__(self, item: dict, trace_answer: dict | None = None):
        self.eth = SimpleNamespace(get_transaction=lambda h: {"to": item["to"], "input": raw(item["input"])})
        answer = trace_answer if trace_answer is not None else {"result": item.get("call_trace")}
        self.requests = []

        def make_request(method, params):
            self.requests.append(method)
            return answer
        self.provider = SimpleNamespace(make_request=make_request)


def check(batch, item):
    assert "0x" + batch.root.hex() == item["root"] and "0x" + batch.data_hash.hex() == item["data_hash"]
    assert len(batch.leaves) == item["leaf_count"]
    # every leaf's signature recovers to its node under the recorded chain and rollup (the contract's rule)
    assert all(leaf.signature_valid(DATA["chain_id"], DATA["rollup"]) for leaf in batch.leaves)


def test_a_direct_post_batch_calldata_decodes_and_encodes_to_the_same_bytes():
    (found,) = calls.call_inputs(w3 := Replay(DIRECT), raw(DIRECT["tx_hash"]), DATA["rollup"], SELECTOR)
    assert w3.requests == []            # a direct call needs no tracer
    batch = decode_post_batch(ROLLUP, found)
    check(batch, DIRECT)
    assert raw(ROLLUP.encode_abi("post_batch", args=batch.calldata)) == raw(DIRECT["input"])
    assert len({leaf.node for leaf in batch.leaves}) == 2


def test_the_call_tracer_finds_post_batch_inside_a_contract_wallets_transaction():
    assert VIA_WALLET["to"].lower() != DATA["rollup"].lower()
    assert raw(VIA_WALLET["input"])[:4] != SELECTOR        # the top-level call is the wallet's forward()
    w3 = Replay(VIA_WALLET)
    (found,) = calls.call_inputs(w3, raw(VIA_WALLET["tx_hash"]), DATA["rollup"], SELECTOR)
    assert w3.requests == ["debug_traceTransaction"]
    check(decode_post_batch(ROLLUP, found), VIA_WALLET)
    # another contract's calls are not the rollup's
    assert calls.call_inputs(Replay(VIA_WALLET), raw(VIA_WALLET["tx_hash"]), "0x" + "12" * 20, SELECTOR) == []


def test_without_a_tracer_a_wallets_posting_is_unavailable_not_empty():
    w3 = Replay(VIA_WALLET, trace_answer={"error": {"code": -32601, "message": "Method not found"}})
    with pytest.raises(calls.TracerUnavailable, match="cannot trace"):
        calls.call_inputs(w3, raw(VIA_WALLET["tx_hash"]), DATA["rollup"], SELECTOR)


def test_malformed_or_foreign_calldata_is_refused():
    data = raw(DIRECT["input"])
    with pytest.raises(Exception):
        decode_post_batch(ROLLUP, data[: len(data) // 2])
    finalize = raw(ROLLUP.encode_abi("finalize", args=[1]))
    with pytest.raises(ValueError, match="a finalize call, not post_batch"):
        decode_post_batch(ROLLUP, finalize)
