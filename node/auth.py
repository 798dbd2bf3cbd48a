"""Who may call POST /v1/execute.

Two schemes, either or both (docs/node.md):

- shared token: `Authorization: Bearer <token>` (OPINFER_NODE_AUTH_TOKEN /
  --auth-token);
- signed requests from trusted coordinator addresses (--trust ADDR,
  OPINFER_NODE_TRUSTED): headers
      x-opinfer-signer     the coordinator's address
      x-opinfer-timestamp  unix seconds (accepted within +-MAX_SKEW s)
      x-opinfer-signature  EIP-191 personal_sign of request_digest(ts, recipient, body)
  where request_digest = keccak256("opinfer-execute" || ts (8 bytes, big
  endian) || recipient (this node's address) || keccak256(body)). The body is
  bound, so a captured signature cannot be reused for another job; the
  recipient is bound, so a node cannot replay a request it received to
  another node; the timestamp bounds replays in time, and within that window
  a job id already served is refused (409), so a captured request cannot be
  replayed to this node either.

With neither configured the node is open (a local devnet); `opinfer node
run` then warns at startup."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

import orjson
from eth_account import Account
from eth_account.messages import encode_defunct

from opinfer.signing import request_digest, sign_request  # noqa: F401  (sign_request: re-exported for callers)

MAX_SKEW = 60
SEEN_JOBS = 1_000_000   # bound on remembered job ids (each lives 2 x MAX_SKEW s; only trusted signers add them)


class AuthError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Authenticator:
    def __init__(self, token: str = "", trusted: list[str] | tuple[str, ...] = (), clock=time.time,
                 address: str = ""):
        self.token = token
        self.trusted = {a.lower() for a in trusted if a}
        self.clock = clock
        self.address = address          # this node's: signed requests must name it (bind() sets it)
        self._seen: OrderedDict[str, float] = OrderedDict()   # job id -> when it may be forgotten
        self._seen_lock = threading.Lock()

    def bind(self, address: str) -> "Authenticator":
        """The node's own address, which signed requests must be addressed to."""
        self.address = address
        return self

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
            now = self.clock()
            if abs(now - ts) > MAX_SKEW:
                raise AuthError(401, f"request timestamp more than {MAX_SKEW} s from the node's clock")
            if not self.address:
                raise AuthError(503, "node address unknown: signed requests cannot be checked")
            try:
                recovered = Account.recover_message(encode_defunct(request_digest(ts, self.address, body)),
                                                    signature=sig)
            except Exception:  # noqa: BLE001 - any malformed signature
                raise AuthError(401, "bad request signature") from None
            if recovered.lower() != signer.lower():
                raise AuthError(401, "request signature does not match x-opinfer-signer "
                                     "(or the request was addressed to another node)")
            if recovered.lower() not in self.trusted:
                raise AuthError(403, f"{recovered} is not a coordinator this node trusts")
            self._first_time(body, now)
            return recovered
        raise AuthError(401, "authentication required: " + " or ".join(
            (["Authorization: Bearer <token>"] if self.token else [])
            + (["a request signed by a trusted coordinator (x-opinfer-signer/-timestamp/-signature)"]
               if self.trusted else [])))


    def _first_time(self, body: bytes, now: float) -> None:
        """Refuse a job id seen within the timestamp window: a signed request is
        good for +-MAX_SKEW s, so remembering ids for 2 x MAX_SKEW s covers it."""
        try:
            job_id = orjson.loads(body)["job_id"]
        except Exception:  # noqa: BLE001 - the route rejects the body itself
            return
        if not isinstance(job_id, str):
            return
        job_id = job_id.lower()
        with self._seen_lock:
            while self._seen and (next(iter(self._seen.values())) < now or len(self._seen) >= SEEN_JOBS):
                self._seen.popitem(last=False)
            if job_id in self._seen:
                raise AuthError(409, f"job {job_id} was already requested (replayed request)")
            self._seen[job_id] = now + 2 * MAX_SKEW


def _consteq(a: str, b: str) -> bool:
    import hmac

    return hmac.compare_digest(a.encode(), b.encode())
