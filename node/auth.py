"""Who may call POST /v1/execute.

Two schemes, either or both (docs/node.md):

- shared token: `Authorization: Bearer <token>` (OPINFER_NODE_AUTH_TOKEN /
  --auth-token);
- signed requests from trusted coordinator addresses (--trust ADDR,
  OPINFER_NODE_TRUSTED): headers
      x-opinfer-signer     the coordinator's address
      x-opinfer-timestamp  unix seconds (accepted within +-MAX_SKEW s)
      x-opinfer-signature  EIP-191 personal_sign of request_digest(ts, body)
  where request_digest = keccak256("opinfer-execute" || ts (8 bytes, big
  endian) || keccak256(body)). The body is bound, so a captured signature
  cannot be reused for another job; the timestamp bounds replays.

With neither configured the node is open (a local devnet); `opinfer node
run` then warns at startup."""

from __future__ import annotations

import time

from eth_account import Account
from eth_account.messages import encode_defunct

from opinfer.signing import request_digest, sign_request  # noqa: F401  (sign_request: re-exported for callers)

MAX_SKEW = 60


class AuthError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Authenticator:
    def __init__(self, token: str = "", trusted: list[str] | tuple[str, ...] = (), clock=time.time):
        self.token = token
        self.trusted = {a.lower() for a in trusted if a}
        self.clock = clock

    @property
    def open(self) -> bool:
        return not self.token and not self.trusted

    def check(self, headers, body: bytes) -> str:
        """The caller's identity ('open', 'token' or the signer); AuthError otherwise."""
        if self.open:
            return "open"
        auth = headers.get("authorization", "")
        if self.token and auth:
            scheme, _, value = auth.partition(" ")
            if scheme.lower() == "bearer" and _consteq(value.strip(), self.token):
                return "token"
            raise AuthError(401, "invalid bearer token")
        signer = headers.get("x-opinfer-signer")
        if self.trusted and signer:
            try:
                ts = int(headers.get("x-opinfer-timestamp", ""))
                sig = bytes.fromhex(headers.get("x-opinfer-signature", "")[2:])
            except ValueError:
                raise AuthError(401, "malformed x-opinfer-timestamp or x-opinfer-signature") from None
            if abs(self.clock() - ts) > MAX_SKEW:
                raise AuthError(401, f"request timestamp more than {MAX_SKEW} s from the node's clock")
            try:
                recovered = Account.recover_message(encode_defunct(request_digest(ts, body)), signature=sig)
            except Exception:  # noqa: BLE001 - any malformed signature
                raise AuthError(401, "bad request signature") from None
            if recovered.lower() != signer.lower():
                raise AuthError(401, "request signature does not match x-opinfer-signer")
            if recovered.lower() not in self.trusted:
                raise AuthError(403, f"{recovered} is not a coordinator this node trusts")
            return recovered
        raise AuthError(401, "authentication required: " + " or ".join(
            (["Authorization: Bearer <token>"] if self.token else [])
            + (["a request signed by a trusted coordinator (x-opinfer-signer/-timestamp/-signature)"]
               if self.trusted else [])))


def _consteq(a: str, b: str) -> bool:
    import hmac

    return hmac.compare_digest(a.encode(), b.encode())
