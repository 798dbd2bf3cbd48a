"""One signature rule (issue 14, point 1): every form of a node's signature
that proves it signed normalises to one canonical form; nothing else does,
and the compact encoding never silently changes what was signed."""

from dataclasses import replace

import pytest
from eth_account import Account

from opinfer.errors import CommitmentError
from opinfer.trace.leaf import (SECP256K1_HALF_N, SECP256K1_N, UPPER_BIT, ResultLeaf, canonical_signature,
                                recover_compact)

KEY = "0x" + "42" * 32
NODE = Account.from_key(KEY).address
ROLLUP = "0x" + "33" * 20
CHAIN = 31337


def signed(job: int = 1) -> ResultLeaf:
    return ResultLeaf(job.to_bytes(16, "big"), 1, b"\x01" * 32, b"\x02" * 32, NODE, b"\x00\x01" * 10
                      ).signed(KEY, CHAIN, ROLLUP)


def parts(sig: bytes) -> tuple[bytes, int, int]:
    return sig[:32], int.from_bytes(sig[32:64], "big"), sig[64]


def test_every_form_of_the_nodes_signature_normalises_to_the_canonical_one():
    leaf = signed()
    digest = leaf.digest(CHAIN, ROLLUP)
    r, s, v = parts(leaf.signature)
    assert v in (27, 28) and s <= SECP256K1_HALF_N
    bit = v - 27
    twin_s = (SECP256K1_N - s).to_bytes(32, "big")
    forms = {
        "canonical": leaf.signature,
        "v 0/1": r + s.to_bytes(32, "big") + bytes([bit]),
        "EIP-155 v": r + s.to_bytes(32, "big") + bytes([2 * 1 + 35 + bit]),  # chain 1: v 37/38
        "EIP-2098 64 bytes": r + (s | bit << 255).to_bytes(32, "big"),
        "high-s twin": r + twin_s + bytes([28 - bit]),
        "high-s twin, v 0/1": r + twin_s + bytes([1 - bit]),
    }
    for name, sig in forms.items():
        assert canonical_signature(sig, digest, NODE) == leaf.signature, name
        assert replace(leaf, signature=sig).canonical(CHAIN, ROLLUP).signature == leaf.signature, name


def test_nothing_else_normalises():
    leaf = signed()
    digest = leaf.digest(CHAIN, ROLLUP)
    r, s, v = parts(leaf.signature)
    other = Account.from_key("0x" + "43" * 32).address
    bad = {
        "another signer": (leaf.signature, other),
        "another digest": (signed(2).signature, NODE),
        "v 2": (r + s.to_bytes(32, "big") + bytes([2]), NODE),
        "v 30": (r + s.to_bytes(32, "big") + bytes([30]), NODE),
        "s = 0": (r + bytes(32) + bytes([v]), NODE),
        "s = n": (r + SECP256K1_N.to_bytes(32, "big") + bytes([v]), NODE),
        "r = 0": (bytes(32) + s.to_bytes(32, "big") + bytes([v]), NODE),
        "too short": (leaf.signature[:63], NODE),
        "flipped parity": (r + s.to_bytes(32, "big") + bytes([55 - v]), NODE),
    }
    for name, (sig, who) in bad.items():
        assert canonical_signature(sig, digest, who) is None, name


def test_the_compact_encoding_keeps_the_parity_or_refuses():
    """as_tuple used to drop the parity of v in {0, 1} and to fold a high s
    into the parity bit; the chain then saw someone else's signature."""
    leaf = signed()
    digest = leaf.digest(CHAIN, ROLLUP)
    r, s, v = parts(leaf.signature)
    raw = replace(leaf, signature=r + s.to_bytes(32, "big") + bytes([v - 27]))
    assert raw.as_tuple()[8] == leaf.as_tuple()[8] and raw.hash == leaf.hash
    assert recover_compact(digest, *raw.as_tuple()[7:9]) == NODE and raw.signature_valid(CHAIN, ROLLUP)
    twin = replace(leaf, signature=r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - v]))
    assert Account._recover_hash(digest, signature=twin.signature) == NODE   # a signature, for eth_account
    with pytest.raises(CommitmentError, match="compact"):
        twin.as_tuple()
    assert not twin.signature_valid(CHAIN, ROLLUP)
    with pytest.raises(CommitmentError, match="v is 5"):
        replace(leaf, signature=r + s.to_bytes(32, "big") + bytes([5])).as_tuple()
    # A high s that does fit the compact form recovers by the precompile's rule (no low-s filter).
    high = (SECP256K1_HALF_N + 1).to_bytes(32, "big")
    assert recover_compact(digest, r, high) is not None
    assert recover_compact(digest, r, bytes(32)) is None and recover_compact(digest, bytes(32), high) is None
