"""The exception tree (gateway.errors) against the contract's error table."""

from __future__ import annotations

import json

import pytest

from gateway import errors
from gateway.errors import (
    AuthenticationError,
    Conflict,
    GatewayError,
    InsufficientQuota,
    InvalidRequest,
    ModelNotFound,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    StorageUnavailable,
    UpstreamError,
    UpstreamTimeout,
)


def _make(cls: type[GatewayError], message: str = "boom") -> GatewayError:
    if cls is RateLimited:
        return RateLimited(message, retry_after=7)
    return cls(message)


# (class, status, type, code or None when the contract names none)
CONTRACT_TABLE: list[tuple[type[GatewayError], int, str, str | None]] = [
    (InvalidRequest, 400, "invalid_request_error", None),
    (AuthenticationError, 401, "invalid_request_error", "invalid_api_key"),
    (InsufficientQuota, 402, "insufficient_quota", "insufficient_quota"),
    (PermissionDenied, 403, "permission_error", None),
    (ModelNotFound, 404, "invalid_request_error", "model_not_found"),
    (PayloadTooLarge, 413, "invalid_request_error", None),
    (RateLimited, 429, "rate_limit_error", "rate_limit_exceeded"),
    (UpstreamError, 502, "api_error", None),
    (UpstreamTimeout, 504, "api_error", None),
]


@pytest.mark.parametrize(
    ("cls", "status", "type_", "code"), CONTRACT_TABLE, ids=[c[0].__name__ for c in CONTRACT_TABLE]
)
def test_status_type_and_code_match_the_contract(
    cls: type[GatewayError], status: int, type_: str, code: str | None
) -> None:
    error = _make(cls)
    assert error.status == status
    assert error.type == type_
    if code is not None:
        assert error.code == code
    body = error.to_dict()["error"]
    assert body["type"] == type_
    assert body["code"] == error.code


@pytest.mark.parametrize(
    ("cls", "status", "type_"),
    [
        (NotFound, 404, "invalid_request_error"),
        (Conflict, 409, "invalid_request_error"),
        (StorageUnavailable, 503, "api_error"),
        (GatewayError, 500, "api_error"),
    ],
)
def test_the_other_errors(cls: type[GatewayError], status: int, type_: str) -> None:
    error = cls("x")
    assert (error.status, error.type) == (status, type_)


def test_every_error_is_a_gateway_error_and_an_exception() -> None:
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, GatewayError)
        assert issubclass(cls, Exception)


def test_the_tree_is_shallow_where_the_contract_groups_errors() -> None:
    assert issubclass(UpstreamTimeout, UpstreamError)  # a timeout is an upstream failure
    assert issubclass(ModelNotFound, InvalidRequest)
    assert issubclass(PayloadTooLarge, InvalidRequest)
    assert not issubclass(InsufficientQuota, InvalidRequest)


def test_rate_limited_carries_retry_after() -> None:
    error = RateLimited("slow down", retry_after=7)
    assert error.retry_after == 7
    assert error.headers == {"Retry-After": "7"}


@pytest.mark.parametrize("retry_after", [0, -3])
def test_retry_after_is_at_least_one_second(retry_after: int) -> None:
    error = RateLimited("slow down", retry_after=retry_after)
    assert error.retry_after == 1
    assert error.headers["Retry-After"] == "1"


def test_other_errors_carry_no_headers_and_do_not_share_them() -> None:
    first, second = InvalidRequest("a"), InvalidRequest("b")
    assert first.headers == {}
    first.headers["X"] = "1"
    assert second.headers == {}


def test_to_json_is_openai_s_error_shape() -> None:
    error = InvalidRequest("'messages' is required.", param="messages")
    assert json.loads(error.to_json()) == {
        "error": {
            "message": "'messages' is required.",
            "type": "invalid_request_error",
            "param": "messages",
            "code": None,
        }
    }


@pytest.mark.parametrize("cls", [c[0] for c in CONTRACT_TABLE], ids=lambda c: c.__name__)
def test_to_json_has_exactly_the_four_fields(cls: type[GatewayError]) -> None:
    body = json.loads(_make(cls, 'message ü "quoted"\nnext').to_json())
    assert list(body) == ["error"]
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"] == 'message ü "quoted"\nnext'
    assert body["error"]["param"] is None


def test_code_and_param_may_be_given() -> None:
    error = InvalidRequest("bad", param="temperature", code="invalid_value")
    assert error.code == "invalid_value"
    assert json.loads(error.to_json())["error"] == {
        "message": "bad",
        "type": "invalid_request_error",
        "param": "temperature",
        "code": "invalid_value",
    }
    assert ModelNotFound("no such model", param="model").code == "model_not_found"


def test_message_is_the_exception_text() -> None:
    error = UpstreamError("Every backend failed.")
    assert str(error) == "Every backend failed."
    assert error.message == "Every backend failed."


@pytest.mark.parametrize("cls", [c[0] for c in CONTRACT_TABLE], ids=lambda c: c.__name__)
def test_to_sse_is_one_data_event(cls: type[GatewayError]) -> None:
    error = _make(cls, "line one\nline two")
    event = error.to_sse()
    assert isinstance(event, bytes)
    assert event.startswith(b"data: ")
    assert event.endswith(b"\n\n")
    payload = event[len(b"data: ") : -2]
    assert b"\n" not in payload  # one data line: a newline in the message stays escaped
    assert json.loads(payload) == error.to_dict()
    assert event == b"data: " + error.to_json() + b"\n\n"
