"""The opinfer client SDK (see client.py)."""

from opinfer.sdk.client import ChatStream, Client
from opinfer.sdk.errors import (APIConnectionError, APIError, APITimeoutError, AuthenticationError, BadRequestError,
                                ConfigurationError, JobInvalidError, JobTimeoutError, NotFoundError, RateLimitError,
                                SDKError, ServiceUnavailableError, VerificationError)
from opinfer.sdk.retry import RetryPolicy
from opinfer.sdk.verify import VerificationReport

__all__ = ["Client", "ChatStream", "RetryPolicy", "VerificationReport", "SDKError", "APIError", "APIConnectionError",
           "APITimeoutError", "AuthenticationError", "BadRequestError", "ConfigurationError", "JobInvalidError",
           "JobTimeoutError", "NotFoundError", "RateLimitError", "ServiceUnavailableError", "VerificationError"]
