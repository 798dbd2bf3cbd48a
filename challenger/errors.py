"""The challenger's exception hierarchy (all under opinfer's OpinferError,
so the CLI reports them the same way as the library's errors)."""

from opinfer.errors import OpinferError


class ChallengerError(OpinferError):
    """Base class of every error the challenger raises."""


class ConfigError(ChallengerError):
    """Settings are missing or inconsistent (addresses, key, state file)."""


class DecodeError(ChallengerError):
    """A posted batch cannot be rebuilt from its transaction's calldata."""


class UnknownModel(ChallengerError):
    """No executor for a leaf's model, or its program does not match the registry."""


class Unverifiable(ChallengerError):
    """A job cannot be re-executed (neither the fast engine nor the program runs it)."""


class DataUnavailable(DecodeError):
    """A batch was posted by a contract and the RPC cannot trace the transaction,
    so its calldata (the batch's data) cannot be found: its leaves go unchecked."""


class TraceNotReady(ChallengerError):
    """A dispute trace is still being built on a worker: what needs it waits, the rest goes on."""
