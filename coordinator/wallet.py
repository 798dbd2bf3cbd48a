"""The coordinator's transaction signer: nonces from the chain, signed raw
transactions whose hash is known before they are sent (so the poster can
record it first), re-broadcast and receipt lookup.

One lock serialises every transaction of this key (batches and finalize
calls), so two jobs never pick the same nonce."""

from __future__ import annotations

import threading
import time

from eth_account import Account
from web3 import Web3
from web3.exceptions import ContractLogicError, TransactionNotFound, Web3Exception

from coordinator.errors import PostingError


class Wallet:
    def __init__(self, w3: Web3, private_key: str, gas_margin: float = 1.25):
        self.w3 = w3
        self.account = Account.from_key(private_key)
        self.gas_margin = gas_margin
        self.lock = threading.RLock()
        self._chain_id: int | None = None

    @property
    def address(self) -> str:
        return self.account.address

    @property
    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = self.w3.eth.chain_id
        return self._chain_id

    def next_nonce(self) -> int:
        return self.w3.eth.get_transaction_count(self.address, "pending")

    def mined_nonce(self, confirmations: int = 0) -> int:
        """Nonces below this one are used by transactions mined with `confirmations` blocks on top."""
        if confirmations <= 0:
            return self.w3.eth.get_transaction_count(self.address, "latest")
        block = max(0, self.w3.eth.block_number - confirmations)
        return self.w3.eth.get_transaction_count(self.address, block)

    def sign(self, fn, nonce: int) -> tuple[bytes, bytes]:
        """(raw transaction, tx hash) of a contract call; reverts surface here, before anything is recorded."""
        try:
            gas = fn.estimate_gas({"from": self.address})
        except ContractLogicError as exc:
            raise PostingError(f"call would revert: {exc}") from None
        tx = fn.build_transaction({"from": self.address, "nonce": nonce, "gas": int(gas * self.gas_margin),
                                   "gasPrice": self.w3.eth.gas_price, "chainId": self.chain_id})
        signed = self.account.sign_transaction(tx)
        return bytes(signed.raw_transaction), bytes(signed.hash)

    def broadcast(self, raw: bytes) -> None:
        """Send a signed transaction; sending one the node already has is not an error."""
        try:
            self.w3.eth.send_raw_transaction(raw)
        except (ValueError, Web3Exception) as exc:  # JSON-RPC errors (web3 7: Web3RPCError)
            text = str(exc).lower()
            if "already known" in text or "already imported" in text or "nonce too low" in text:
                return  # the caller learns the outcome from the receipt / nonce
            raise PostingError(f"broadcast failed: {exc}") from None

    def receipt(self, tx_hash: bytes):
        try:
            return self.w3.eth.get_transaction_receipt(tx_hash)
        except TransactionNotFound:
            return None

    def wait(self, tx_hash: bytes, timeout: float, confirmations: int = 0, poll: float = 0.05,
             canonical: bool = False, unstick=None, unstick_after: float = 1.0):
        """The receipt once `confirmations` more blocks are on top of its block
        (and, with `canonical`, while that block is the canonical one at its
        height: a node may serve a reorganised-out receipt for a while); None
        when that does not happen within `timeout`. The receipt is read again
        on every poll, so a transaction reorganised out waits again.

        `unstick()` runs when no receipt came for `unstick_after` s (then again
        after as long): a reorganisation that dropped our earlier transactions
        while this one was signed leaves it queued behind their nonces until
        they are sent again (the poster and finalizer pass follower sync + resend)."""
        deadline = time.monotonic() + timeout
        next_unstick = time.monotonic() + unstick_after
        while True:
            receipt = self.receipt(tx_hash)
            if receipt is not None and (confirmations <= 0
                                        or self.w3.eth.block_number >= receipt["blockNumber"] + confirmations):
                if not canonical or self._canonical(receipt):
                    return receipt
            if time.monotonic() >= deadline:
                return None
            if unstick is not None and receipt is None and time.monotonic() >= next_unstick:
                unstick()
                next_unstick = time.monotonic() + unstick_after
            time.sleep(poll)

    def _canonical(self, receipt) -> bool:
        from opinfer.chain.reorg import on_canonical_chain

        return on_canonical_chain(self.w3, receipt)

    def transact(self, fn, timeout: float = 120.0):
        """Sign, send and wait for a call that needs no crash record (finalize: idempotent)."""
        with self.lock:
            raw, tx_hash = self.sign(fn, self.next_nonce())
            self.broadcast(raw)
        return self.wait(tx_hash, timeout)
