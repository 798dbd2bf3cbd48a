"""A small transaction sender: signs locally, tracks nonces, waits for the
receipt and turns reverts into ChainError with the contract's reason."""

from __future__ import annotations

import threading
import time

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
            self._nonce += 1
        receipt = self.wait(tx_hash, bytes(signed.raw_transaction))
        if receipt["status"] != 1:
            raise ChainError(f"transaction {tx_hash.hex()} reverted: {self._reason(tx)}")
        return receipt

    def wait(self, tx_hash, raw: bytes, timeout: float = 120.0, poll: float = 0.1, resend_after: float = 1.0) -> dict:
        """The receipt. A reorganisation can drop the transaction after it was mined and
        before its receipt is read (the node then knows neither): it is sent again, the
        same bytes, each `resend_after` s while the node does not know it."""
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
                try:
                    self.w3.eth.get_transaction(tx_hash)
                except TransactionNotFound:
                    try:
                        self.w3.eth.send_raw_transaction(raw)
                    except Exception as exc:  # noqa: BLE001 - already known, or its nonce was taken
                        if "nonce too low" in str(exc).lower():
                            raise ChainError(f"transaction 0x{bytes(tx_hash).hex()} dropped and its nonce "
                                             "used by another") from None
            time.sleep(poll)

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
