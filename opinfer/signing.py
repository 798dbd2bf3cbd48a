"""Signed service-to-service requests: a coordinator signs what it sends a node.

request_digest = keccak256("opinfer-execute" || ts (8 bytes, big endian) ||
keccak256(body)), signed with EIP-191 personal_sign; the node checks the
signer against the coordinators it trusts and the timestamp against its
clock (node/auth.py). Here, in the shared library, because both services use it.
"""

from __future__ import annotations

import time

from eth_account import Account
from eth_account.messages import encode_defunct

from opinfer.trace import merkle


def request_digest(ts: int, body: bytes) -> bytes:
    return merkle.keccak(b"opinfer-execute" + int(ts).to_bytes(8, "big") + merkle.keccak(body))


def sign_request(private_key: str, body: bytes, ts: int | None = None) -> dict[str, str]:
    """Headers for a signed request (what a coordinator adds)."""
    ts = int(time.time()) if ts is None else ts
    sig = Account.sign_message(encode_defunct(request_digest(ts, body)), private_key)
    return {"x-opinfer-signer": Account.from_key(private_key).address, "x-opinfer-timestamp": str(ts),
            "x-opinfer-signature": "0x" + bytes(sig.signature).hex()}
