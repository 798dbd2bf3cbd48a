"""Signed service-to-service requests: a coordinator signs what it sends a node.

request_digest = keccak256("opinfer-execute" || ts (8 bytes, big endian) ||
recipient (the node's 20-byte address) || keccak256(body)), signed with
EIP-191 personal_sign. The recipient is bound so that a node cannot replay a
request it received to another node (making that node work, or sign, for a
job the coordinator never sent it); the node checks the recipient against
its own address, the signer against the coordinators it trusts, the
timestamp against its clock and refuses a job id it has seen within the
timestamp window (node/auth.py). Here, in the shared library, because both
services use it.
"""

from __future__ import annotations

import time

from eth_account import Account

from opinfer.semantics import merkle


def request_digest(ts: int, recipient: str, body: bytes) -> bytes:
    to = bytes.fromhex(recipient.lower().removeprefix("0x"))
    if len(to) != 20:
        raise ValueError(f"recipient {recipient!r} is not a 20-byte address")
    return merkle.keccak(b"opinfer-execute" + int(ts).to_bytes(8, "big") + to + merkle.keccak(body))


class RequestSigner:
    """Signs request bodies with one key (the account is derived once: deriving
    it per request cost ~2 ms of the coordinator's hot path)."""

    def __init__(self, private_key: str):
        self.account = Account.from_key(private_key)

    def headers(self, body: bytes, recipient: str, ts: int | None = None) -> dict[str, str]:
        ts = int(time.time()) if ts is None else ts
        digest = request_digest(ts, recipient, body)
        sig = self.account.unsafe_sign_hash(_defunct_hash(digest))
        return {"x-opinfer-signer": self.account.address, "x-opinfer-timestamp": str(ts),
                "x-opinfer-signature": "0x" + bytes(sig.signature).hex()}


def _defunct_hash(digest: bytes) -> bytes:
    """EIP-191 personal_sign hash of a 32-byte message (what encode_defunct + sign_message sign)."""
    return merkle.keccak(b"\x19Ethereum Signed Message:\n32" + digest)


def sign_request(private_key: str, body: bytes, recipient: str, ts: int | None = None) -> dict[str, str]:
    """Headers for a signed request to the node at address `recipient` (what a coordinator adds)."""
    return RequestSigner(private_key).headers(body, recipient, ts)
