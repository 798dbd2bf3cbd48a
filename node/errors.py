"""The node's exception hierarchy."""

from opinfer.errors import OpinferError


class NodeError(OpinferError):
    """Base class of every error raised by the node."""


class BadJob(NodeError):
    """The job cannot run as given (unknown model, malformed input, does not fit the model)."""


class EngineUnavailable(NodeError):
    """The model's engine could not be loaded on this node."""
