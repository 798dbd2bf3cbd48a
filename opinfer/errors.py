"""The exception hierarchy of the `opinfer` library."""


class OpinferError(Exception):
    """Base class of every error raised by opinfer."""


class CommitmentError(OpinferError):
    """A Merkle proof, tensor shape or leaf record is malformed."""


class ChainError(OpinferError):
    """A chain call, deployment or artifact lookup failed."""
