"""The inputs of every call a transaction made to one contract function,
wherever in the transaction it happened.

A batch's data lives in the calldata of the `post_batch` call that posted
it, but that call need not be the transaction's top-level call: a
coordinator may post through a contract wallet, a multisig or a forwarder,
and a challenge may be sent through one too. Data availability must not
depend on how the transaction was sent, so the services look for the call
frame itself: the top-level input when the transaction calls the contract
directly (no tracing needed), else every frame of the transaction's call
tree (`debug_traceTransaction` with geth's `callTracer`, served by anvil,
geth, reth, erigon, nethermind and most RPC providers' debug APIs).

The caller must still check what it decodes against what the contract
stored (the batch root): a frame's input is only a candidate."""

from __future__ import annotations

from web3 import Web3

from opinfer.errors import ChainError


class TracerUnavailable(ChainError):
    """The RPC cannot trace transactions, so a call made by a contract cannot be seen."""


def call_inputs(w3: Web3, tx_hash: bytes, to: str, selector: bytes) -> list[bytes]:
    """Inputs of the calls to `to` starting with `selector` in transaction `tx_hash`,
    in execution order. Raises TracerUnavailable when the call was made by a
    contract and the RPC has no call tracer."""
    tx = w3.eth.get_transaction(tx_hash)
    target = to.lower()
    data = bytes(tx["input"])
    if (tx["to"] or "").lower() == target:
        # A direct call: the top-level input is the only frame that can reach `to` first.
        return [data] if data[:4] == selector else []
    # A transport error propagates (the caller retries, as after any RPC hiccup); an
    # RPC that answers with an error (method not found, debug API disabled) cannot trace.
    trace = w3.provider.make_request("debug_traceTransaction",
                                     ["0x" + bytes(tx_hash).hex(), {"tracer": "callTracer"}])
    if not isinstance(trace, dict) or "error" in trace or not isinstance(trace.get("result"), dict):
        detail = trace.get("error") if isinstance(trace, dict) else trace
        raise TracerUnavailable(f"transaction 0x{bytes(tx_hash).hex()} calls {tx['to']}, not {to}, and the RPC "
                                f"cannot trace it (debug_traceTransaction with callTracer: {detail})")
    out: list[bytes] = []
    stack = [trace["result"]]
    while stack:
        frame = stack.pop()
        # Only a CALL runs `to`'s own code with `to`'s storage and events (a DELEGATECALL
        # into it would run in the caller's context and emit nothing from `to`).
        if (frame.get("type") == "CALL" and (frame.get("to") or "").lower() == target
                and not frame.get("error")):
            raw = bytes.fromhex(frame.get("input", "0x").removeprefix("0x"))
            if raw[:4] == selector:
                out.append(raw)
        stack.extend(reversed(frame.get("calls") or []))
    return out


def selector(contract, name: str) -> bytes:
    """The 4-byte selector of `contract`'s function `name`."""
    from eth_utils import function_abi_to_4byte_selector

    (abi,) = [e for e in contract.abi if e.get("type") == "function" and e.get("name") == name]
    return bytes(function_abi_to_4byte_selector(abi))
