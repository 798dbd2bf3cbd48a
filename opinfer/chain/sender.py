"""A small transaction sender: signs locally, tracks nonces, waits for the
receipt and turns reverts into ChainError with the contract's reason."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from eth_account import Account
from web3 import Web3
from web3.exceptions import ContractLogicError, TransactionNotFound

from opinfer.errors import ChainError


class TxSender:
    def __init__(self, w3: Web3, private_key: str, gas_limit: int = 12_000_000):
        self.w3 = w3
        self.account = Account.from_key(private_key)
        self.gas_limit = gas_limit
        self._lock = threading.Lock()
        self._nonce: int | None = None
        # Recent signed transactions by nonce: a reorganisation can drop some after they were
        # mined, and one sent after them then waits in the pool behind the gap until they are
        # sent again (the same bytes).
        self._sent: OrderedDict[int, bytes] = OrderedDict()

    @property
    def address(self) -> str:
        return self.account.address

    def send(self, tx: dict) -> dict:
        """Sign and send `tx` (a built transaction dict); return the receipt."""
        with self._lock:
            # The chain's count every time, not a cached one: a reorganisation
            # drops mined transactions (their nonces are free again), and a
            # cached nonce past them would leave every later transaction
            # waiting in the pool behind the gap.
            self._nonce = self.w3.eth.get_transaction_count(self.address, "pending")
            tx = {"chainId": self.w3.eth.chain_id, "gas": self.gas_limit, **tx, "nonce": self._nonce,
                  "from": self.address}
            if "gasPrice" not in tx and "maxFeePerGas" not in tx:
                tx["gasPrice"] = self.w3.eth.gas_price
            signed = self.account.sign_transaction(tx)
            try:
                tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
            except Exception:
                self._nonce = None  # resync from the chain next time
                raise
            nonce = self._nonce
            self._sent[nonce] = bytes(signed.raw_transaction)
            while len(self._sent) > 64:
                self._sent.popitem(last=False)
            self._nonce += 1
        receipt = self.wait(tx_hash, nonce)
        if receipt["status"] != 1:
            raise ChainError(f"transaction {tx_hash.hex()} reverted: {self._reason(tx)}")
        return receipt

    def wait(self, tx_hash, nonce: int, timeout: float = 120.0, poll: float = 0.1, resend_after: float = 1.0) -> dict:
        """The receipt. A reorganisation can drop the transaction after it was mined and
        before its receipt is read, or drop earlier ones of ours that it then waits behind:
        each `resend_after` s without a receipt, ours from the chain's mined count up to this
        one are sent again (the same bytes; the node ignores those it has)."""
        deadline = time.monotonic() + timeout
        next_check = time.monotonic() + resend_after
        while True:
            try:
                return self.w3.eth.get_transaction_receipt(tx_hash)
            except TransactionNotFound:
                pass
            now = time.monotonic()
            if now >= deadline:
                raise ChainError(f"transaction 0x{bytes(tx_hash).hex()} not mined within {timeout} s")
            if now >= next_check:
                next_check = now + resend_after
                self._resend(nonce)
            time.sleep(poll)

    def _resend(self, upto: int) -> None:
        mined = self.w3.eth.get_transaction_count(self.address, "latest")
        for n in range(mined, upto + 1):
            raw = self._sent.get(n)
            if raw is None:
                continue
            try:
                self.w3.eth.send_raw_transaction(raw)
            except Exception:  # noqa: BLE001 - already known; or its nonce was taken: the receipt wait says
                pass

    def call(self, fn, value: int = 0) -> dict:
        """Simulate (to surface a revert reason), then send a contract function call."""
        try:
            fn.call({"from": self.address, "value": value})
        except ContractLogicError as exc:
            raise ChainError(str(exc)) from None
        return self.send(fn.build_transaction({"from": self.address, "value": value, "gas": self.gas_limit}))

    def deploy(self, abi: list, bytecode: str, *args) -> str:
        contract = self.w3.eth.contract(abi=abi, bytecode=bytecode)
        receipt = self.send(contract.constructor(*args).build_transaction({"from": self.address,
                                                                           "gas": self.gas_limit}))
        return receipt["contractAddress"]

    def _reason(self, tx: dict) -> str:
        try:
            self.w3.eth.call({k: v for k, v in tx.items() if k in ("from", "to", "data", "value")})
        except ContractLogicError as exc:
            return str(exc)
        except Exception as exc:  # noqa: BLE001 - best effort
            return repr(exc)
        return "unknown reason"
