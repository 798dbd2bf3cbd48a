"""Commitments the contracts check: Merkle trees, tensor and state roots,
result leaves. The Vyper twins live in contracts/ (see their docstrings)."""
