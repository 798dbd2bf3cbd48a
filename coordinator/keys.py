"""API keys: random secrets shown once, stored as SHA-256 (the secrets
carry 256 bits of entropy, so a fast hash is enough: nothing to brute-force)."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select

from coordinator import models as m
from coordinator.errors import Unauthorized

PREFIX = "sk-opi-"


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


MIN_SECRET = 8


def create(session, name: str, now: float, rate_limit_rpm: int | None = None,
           secret: str | None = None) -> tuple[m.ApiKey, str]:
    """A new key row and its secret (the only time the secret exists in clear).

    secret: an operator-chosen secret to import (a devnet's published key, a key moved
    from another deployment); by default a fresh random one."""
    if secret is None:
        secret = PREFIX + secrets.token_urlsafe(32)
    elif len(secret) < MIN_SECRET or any(c.isspace() for c in secret):
        raise ValueError(f"an imported API key needs at least {MIN_SECRET} characters and no spaces")
    row = m.ApiKey(name=name, key_hash=hash_key(secret), prefix=secret[:12], rate_limit_rpm=rate_limit_rpm,
                   revoked=False, created_at=now)
    session.add(row)
    session.flush()
    return row, secret


def check_header(authorization: str | None) -> str:
    """The secret of a `Bearer <key>` header; Unauthorized saying what is wrong otherwise."""
    if not authorization:
        raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
    scheme, _, secret = authorization.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthorized("malformed Authorization header: expected `Bearer <key>`")
    return secret


def lookup(session, authorization: str | None) -> m.ApiKey:
    secret = check_header(authorization)
    row = session.scalars(select(m.ApiKey).where(m.ApiKey.key_hash == hash_key(secret.strip()))).first()
    if row is None or row.revoked:
        raise Unauthorized("invalid API key")
    return row
