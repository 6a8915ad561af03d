"""The gateway's exceptions: one shallow tree, each class carrying its HTTP status and OpenAI
error ``type`` and ``code``. One handler renders them as ``{"error": {...}}``; after a stream has
started, the same error goes out as an SSE ``data: {"error": {...}}`` event.

    GatewayError
    ├── InvalidRequest          400 invalid_request_error
    │   ├── PayloadTooLarge     413 invalid_request_error
    │   └── ModelNotFound       404 invalid_request_error / model_not_found
    ├── NotFound                404 invalid_request_error / not_found
    ├── Conflict                409 invalid_request_error / conflict
    ├── AuthenticationError     401 invalid_request_error / invalid_api_key
    ├── InsufficientQuota       402 insufficient_quota / insufficient_quota
    ├── PermissionDenied        403 permission_error
    ├── RateLimited             429 rate_limit_error / rate_limit_exceeded (+ Retry-After)
    ├── UpstreamError           502 api_error / upstream_error
    │   └── UpstreamTimeout     504 api_error / upstream_timeout
    └── StorageUnavailable      503 api_error / storage_unavailable
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec

__all__ = [
    "AuthenticationError",
    "Conflict",
    "GatewayError",
    "InsufficientQuota",
    "InvalidRequest",
    "ModelNotFound",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "RateLimited",
    "StorageUnavailable",
    "UpstreamError",
    "UpstreamTimeout",
]

_encode = msgspec.json.encode


class GatewayError(Exception):
    #: The HTTP status, by class (an instance may say another: see ``__init__``).
    status: int = 500
    type: ClassVar[str] = "api_error"
    default_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = headers or {}
        if status is not None:
            self.status = status

    @classmethod
    def internal(cls) -> GatewayError:
        """What a client gets for a bug of the gateway's: no detail of it leaks."""
        return cls("The gateway failed to handle this request.", code="internal_error")

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def to_json(self) -> bytes:
        return _encode(self.to_dict())

    def to_sse(self) -> bytes:
        """The error as a server-sent event, for errors after a stream has started."""
        return b"data: " + self.to_json() + b"\n\n"


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class PayloadTooLarge(InvalidRequest):
    status = 413
    default_code = "payload_too_large"


class ModelNotFound(InvalidRequest):
    status = 404
    default_code = "model_not_found"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    default_code = "not_found"


class Conflict(GatewayError):
    status = 409
    type = "invalid_request_error"
    default_code = "conflict"


class AuthenticationError(GatewayError):
    status = 401
    type = "invalid_request_error"
    default_code = "invalid_api_key"


class InsufficientQuota(GatewayError):
    status = 402
    type = "insufficient_quota"
    default_code = "insufficient_quota"


class PermissionDenied(GatewayError):
    status = 403
    type = "permission_error"
    default_code = "permission_denied"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    default_code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: int, param: str | None = None) -> None:
        super().__init__(message, param=param, headers={"Retry-After": str(max(1, retry_after))})
        self.retry_after = max(1, retry_after)


class UpstreamError(GatewayError):
    status = 502
    type = "api_error"
    default_code = "upstream_error"


class UpstreamTimeout(UpstreamError):
    status = 504
    default_code = "upstream_timeout"


class StorageUnavailable(GatewayError):
    status = 503
    type = "api_error"
    default_code = "storage_unavailable"
