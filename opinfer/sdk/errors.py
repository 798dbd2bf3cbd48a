"""Typed errors of the SDK: each says what failed (HTTP status and the
coordinator's OpenAI error object, the network, or a verification check)."""

from __future__ import annotations

from opinfer.errors import OpinferError


class SDKError(OpinferError):
    """Base class of every error the SDK raises."""


class ConfigurationError(SDKError):
    """The client cannot be set up: unknown network, no devnet file, missing address."""


class APIConnectionError(SDKError):
    """The coordinator could not be reached (after every retry)."""


class APITimeoutError(APIConnectionError):
    """A request to the coordinator timed out (after every retry)."""


class APIError(SDKError):
    """The coordinator answered with an error object."""

    def __init__(self, message: str, status: int, code: str | None = None, param: str | None = None,
                 type: str | None = None, body: dict | None = None):
        super().__init__(f"{status} {code or type or 'error'}: {message}")
        self.message, self.status, self.code, self.param, self.type, self.body = message, status, code, param, type, body


class BadRequestError(APIError):
    """400/413/422: the request itself is wrong (retrying does not help)."""


class AuthenticationError(APIError):
    """401: missing or invalid API key."""


class NotFoundError(APIError):
    """404: unknown model, job or batch."""


class RateLimitError(APIError):
    """429: too many requests (retried with backoff first)."""


class ServiceUnavailableError(APIError):
    """5xx: no node available, or the coordinator failed (retried first)."""


class JobTimeoutError(SDKError):
    """wait_final gave up before the job reached a final state."""

    def __init__(self, job_id: str, status: str, timeout: float):
        super().__init__(f"job {job_id} still {status!r} after {timeout:g} s")
        self.job_id, self.status, self.timeout = job_id, status, timeout


class JobInvalidError(SDKError):
    """The job's result was proven fraudulent on-chain (status `invalid`)."""

    def __init__(self, job_id: str):
        super().__init__(f"job {job_id} is invalid: fraud was proven on-chain")
        self.job_id = job_id


class VerificationError(SDKError):
    """A verification check failed: `check` names it, `report` holds every check run."""

    def __init__(self, check: str, detail: str, report=None):
        super().__init__(f"verification failed at {check}: {detail}")
        self.check, self.detail, self.report = check, detail, report


def from_response(status: int, body) -> APIError:
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        message, code, param, kind = err.get("message", ""), err.get("code"), err.get("param"), err.get("type")
    else:
        message, code, param, kind = str(body)[:500], None, None, None
    cls = (AuthenticationError if status == 401 else NotFoundError if status == 404 else
           RateLimitError if status == 429 else ServiceUnavailableError if status >= 500 else
           BadRequestError if status in (400, 413, 422) else APIError)
    return cls(message, status, code, param, kind, body if isinstance(body, dict) else None)
