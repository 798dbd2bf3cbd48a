"""The coordinator's exception hierarchy.

`ApiError`s become OpenAI error objects ({"error": {message, type, param,
code}}) with their HTTP status; anything else raised inside a request is a
bug and is answered with a generic 500 object, never a traceback."""

from __future__ import annotations

from opinfer.errors import OpinferError


class CoordinatorError(OpinferError):
    """Base class of every error raised by the coordinator."""


class ApiError(CoordinatorError):
    status = 400
    type = "invalid_request_error"
    code: str | None = None

    def __init__(self, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class BadRequest(ApiError):
    status = 400


class PayloadTooLarge(ApiError):
    status = 413
    code = "payload_too_large"


class Unauthorized(ApiError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class RateLimited(ApiError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after: float):
        super().__init__(message, headers={"retry-after": str(max(1, int(retry_after + 0.999)))})
        self.retry_after = retry_after


class NoNodeAvailable(ApiError):
    status = 503
    type = "service_unavailable"
    code = "no_node_available"


class StreamFailed(ApiError):
    """A streamed answer cannot be completed (sent as the stream's error event
    once tokens went out): the client must discard the tokens it got."""

    status = 502
    type = "server_error"
    code = "stream_failed"


class NodeFailure(CoordinatorError):
    """One node attempt failed (timeout, HTTP error, bad answer); the router retries elsewhere."""

    def __init__(self, node: str, reason: str, fault: bool = True, eject: bool = False):
        super().__init__(f"node {node}: {reason}")
        self.node = node
        self.reason = reason
        self.fault = fault  # False: the request itself was bad, not the node
        self.eject = eject  # True: proof of a bad node (a signature the chain would refuse): out at once


class PostingError(CoordinatorError):
    """A batch could not be built or posted."""
