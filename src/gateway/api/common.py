"""Helpers shared by the handlers: JSON bodies, JSON answers, the request id."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response

from gateway.errors import InvalidRequest

__all__ = ["REQUEST_ID", "json_body", "json_response", "request_id"]

#: Where the request-id middleware leaves the id in the ASGI scope.
REQUEST_ID = "gateway.request_id"

_decode = msgspec.json.Decoder(dict[str, Any])


def request_id(request: Request[Any, Any, Any]) -> str:
    return str(request.scope[REQUEST_ID])  # type: ignore[literal-required]


async def json_body(request: Request[Any, Any, Any]) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        raise InvalidRequest("The request body is empty: send a JSON object.")
    try:
        return _decode.decode(raw)
    except msgspec.ValidationError:
        raise InvalidRequest("The request body must be a JSON object.") from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}.") from None


def json_response(content: Any, status: int = 200) -> Response[bytes]:
    return Response(
        msgspec.json.encode(content), status_code=status, media_type="application/json"
    )
