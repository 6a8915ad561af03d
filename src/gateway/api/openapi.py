"""The gateway's own OpenAPI 3.1 document, served at ``GET /openapi.json``.

Written by hand, not derived from the handlers (they read raw requests so that unknown OpenAI
fields pass through untouched): it states the contract — the client API, the admin API and
operations, their bodies, answers and the one error shape — and the schemathesis test in
``tests/e2e/test_openapi.py`` holds the running gateway to it. Request schemas describe what
the gateway reads and checks; every other field of an OpenAI request is allowed and passed on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["openapi_document"]

Schema = dict[str, Any]

_ERROR_TYPES = [
    "invalid_request_error",
    "insufficient_quota",
    "permission_error",
    "rate_limit_error",
    "api_error",
]

_STATUS_TEXT = {
    400: "Malformed JSON, missing or wrong fields",
    401: "Missing, unknown, revoked or expired key (admin API: no admin token)",
    402: "The wallet cannot pay for this",
    403: "The key may not use this model, or its spend limit is reached",
    404: "Unknown model, wallet, key or endpoint",
    413: "Body over max_body_bytes",
    429: "Rate limited (a key's rpm/tpm; failed admin logins from one address); see Retry-After",
    502: "Every route for the model failed; nothing is charged",
    503: "Storage cannot be written",
    504: "Every route for the model timed out; nothing is charged",
}


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    return {"oneOf": [schema, {"type": "null"}]}


def _json(schema: Schema) -> Schema:
    return {"application/json": {"schema": schema}}


def _errors(*statuses: int) -> dict[str, Schema]:
    out: dict[str, Schema] = {}
    for status in statuses:
        response: Schema = {"description": _STATUS_TEXT[status], "content": _json(_ref("Error"))}
        if status == 429:
            response["headers"] = {
                "Retry-After": {"schema": {"type": "string"}, "description": "seconds"}
            }
        out[str(status)] = response
    return out


def _ok(status: int, schema: Schema, description: str = "OK") -> dict[str, Schema]:
    return {str(status): {"description": description, "content": _json(schema)}}


def _body(schema: Schema) -> Schema:
    return {"required": True, "content": _json(schema)}


def _query(name: str, schema: Schema, description: str) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _path(name: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


# -- schemas -----------------------------------------------------------------------------------
_AMOUNT: Schema = {
    "type": "string",
    "pattern": r"^-?[0-9]+(\.[0-9]{1,6})?$",
    "description": "credits as a decimal string, exact to 1e-6",
}
_AMOUNT_IN: Schema = {
    "description": "credits: a decimal string (or a number), at most 6 decimal places",
    "oneOf": [
        {"type": "string", "pattern": r"^[0-9]{1,13}(\.[0-9]{1,6})?$"},
        {"type": "integer", "minimum": 0, "maximum": 10**12},
    ],
}
_TIME: Schema = {"type": "string", "format": "date-time"}
_LIMIT: Schema = {"type": "integer", "minimum": 1, "maximum": 1000}
_YEAR_10000 = 253402300800  # unix seconds
_COUNT: Schema = {"type": "integer", "minimum": 1, "maximum": 10**12}


def _schemas(models: Sequence[str]) -> dict[str, Schema]:
    model: Schema = {"type": "string", "minLength": 1, "description": "a public model name"}
    if models:
        model["examples"] = list(models)
    bound: Schema = _nullable({"type": "integer", "minimum": 1})
    generation: dict[str, Schema] = {
        "model": model,
        "stream": _nullable({"type": "boolean"}),
        "n": _nullable({"type": "integer", "minimum": 1, "maximum": 128}),
        "max_tokens": bound,
        "stream_options": _nullable(
            {
                "type": "object",
                "properties": {"include_usage": _nullable({"type": "boolean"})},
            }
        ),
    }
    ints: Schema = {"type": "array", "minItems": 1, "items": {"type": "integer"}}
    text_or_list: Schema = {
        "oneOf": [
            {"type": "string"},
            {"type": "array", "minItems": 1, "items": {"type": "string"}},
            ints,
            {"type": "array", "minItems": 1, "items": ints},
        ]
    }
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "additionalProperties": False,
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["message", "type", "param", "code"],
                    "properties": {
                        "message": {"type": "string", "minLength": 1},
                        "type": {"enum": _ERROR_TYPES},
                        "param": _nullable({"type": "string"}),
                        "code": _nullable({"type": "string"}),
                    },
                }
            },
        },
        "ChatMessage": {
            "type": "object",
            "required": ["role"],
            "properties": {
                "role": {"type": "string"},
                "content": {
                    "oneOf": [
                        {"type": "string"},
                        {"type": "array", "items": {"type": "object"}},
                        {"type": "null"},
                    ]
                },
                "name": {"type": "string"},
            },
        },
        "ChatCompletionRequest": {
            "type": "object",
            "required": ["model", "messages"],
            "description": "OpenAI's body; fields not named here pass through unchanged",
            "properties": {
                **generation,
                "messages": {"type": "array", "minItems": 1, "items": _ref("ChatMessage")},
                "max_completion_tokens": bound,
                "tools": _nullable({"type": "array", "items": {"type": "object"}}),
            },
        },
        "CompletionRequest": {
            "type": "object",
            "required": ["model", "prompt"],
            "properties": {**generation, "prompt": text_or_list},
        },
        "ResponsesRequest": {
            "type": "object",
            "required": ["model", "input"],
            "description": "OpenAI's Responses API body; other fields pass through",
            "properties": {
                "model": model,
                "stream": generation["stream"],
                "input": {
                    "oneOf": [
                        {"type": "string"},
                        {"type": "array", "items": {"type": "object"}},
                    ]
                },
                "instructions": _nullable({"type": "string"}),
                "max_output_tokens": bound,
            },
        },
        "EmbeddingRequest": {
            "type": "object",
            "required": ["model", "input"],
            "properties": {"model": model, "input": text_or_list},
        },
        "Event": {
            "type": "object",
            "description": "one server-sent event: data is a JSON chunk as the backend sent "
            'it, {"error": {...}} when the stream failed or was cut off, or [DONE]',
            "required": ["data"],
            "properties": {"data": {"type": "string"}},
        },
        "Answer": {
            "type": "object",
            "description": "the backend's answer, relayed as it sent it",
        },
        "Model": {
            "type": "object",
            "required": ["id", "object", "created", "owned_by"],
            "properties": {
                "id": {"type": "string"},
                "object": {"const": "model"},
                "created": {"type": "integer"},
                "owned_by": {"type": "string"},
            },
        },
        "ModelList": {
            "type": "object",
            "required": ["object", "data"],
            "properties": {
                "object": {"const": "list"},
                "data": {"type": "array", "items": _ref("Model")},
            },
        },
        "Wallet": {
            "type": "object",
            "required": ["id", "name", "balance", "reserved", "available", "created_at"],
            "properties": {
                "id": {"type": "string"},
                "object": {"const": "wallet"},
                "name": {"type": "string"},
                "balance": _AMOUNT,
                "reserved": _AMOUNT,
                "available": _AMOUNT,
                "created_at": _TIME,
            },
        },
        "WalletCreate": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 200},
                "balance": _nullable(_AMOUNT_IN),
            },
        },
        "Credit": {
            "type": "object",
            "required": ["amount"],
            "properties": {
                "amount": _AMOUNT_IN,
                "idempotency_key": _nullable({"type": "string", "maxLength": 255}),
                "memo": _nullable({"type": "string", "maxLength": 1000}),
            },
        },
        "TransferCreate": {
            "type": "object",
            "required": ["from_wallet", "to_wallet", "amount"],
            "properties": {
                "from_wallet": {"type": "string", "minLength": 1, "maxLength": 200},
                "to_wallet": {"type": "string", "minLength": 1, "maxLength": 200},
                "amount": _AMOUNT_IN,
                "idempotency_key": _nullable({"type": "string", "maxLength": 255}),
                "memo": _nullable({"type": "string", "maxLength": 1000}),
            },
        },
        "Transfer": {
            "type": "object",
            "required": ["id", "from_wallet", "to_wallet", "amount", "created_at"],
            "properties": {
                "id": {"type": "string"},
                "object": {"const": "transfer"},
                "from_wallet": {"type": "string"},
                "to_wallet": {"type": "string"},
                "amount": _AMOUNT,
                "idempotency_key": _nullable({"type": "string"}),
                "created_at": _TIME,
            },
        },
        "LedgerEntry": {
            "type": "object",
            "required": ["id", "kind", "amount", "balance_after", "request_id", "created_at"],
            "properties": {
                "id": {"type": ["integer", "string"]},
                "wallet_id": {"type": "string"},
                "kind": {"enum": ["credit", "charge", "transfer"]},
                "amount": _AMOUNT,
                "balance_after": _AMOUNT,
                "request_id": _nullable({"type": "string"}),
                "idempotency_key": _nullable({"type": "string"}),
                "memo": _nullable({"type": "string"}),
                "transfer_id": _nullable({"type": "string"}),
                "created_at": _TIME,
            },
        },
        "KeyCreate": {
            "type": "object",
            "required": ["wallet_id", "name"],
            "properties": {
                "wallet_id": {"type": "string", "minLength": 1, "maxLength": 200},
                "name": {"type": "string", "minLength": 1, "maxLength": 200},
                "models": _nullable(
                    {"type": "array", "maxItems": 1000, "items": {"type": "string", "minLength": 1}}
                ),
                "rpm": _nullable(_COUNT),
                "tpm": _nullable(_COUNT),
                "spend_limit": _nullable(_AMOUNT_IN),
                "expires_at": {
                    "description": "ISO 8601 with a zone, or unix seconds (before year 10000)",
                    "oneOf": [
                        _TIME,
                        {"type": "number", "minimum": 0, "exclusiveMaximum": _YEAR_10000},
                        {"type": "null"},
                    ],
                },
            },
        },
        "Key": {
            "type": "object",
            "required": ["id", "wallet_id", "name", "prefix", "revoked", "created_at"],
            "properties": {
                "id": {"type": "string"},
                "object": {"const": "api_key"},
                "key": {"type": "string", "description": "the secret: in the create answer only"},
                "wallet_id": {"type": "string"},
                "name": {"type": "string"},
                "prefix": {"type": "string"},
                "models": _nullable({"type": "array", "items": {"type": "string"}}),
                "rpm": _nullable({"type": "integer"}),
                "tpm": _nullable({"type": "integer"}),
                "spend_limit": _nullable(_AMOUNT),
                "spent": _AMOUNT,
                "expires_at": _nullable(_TIME),
                "created_at": _TIME,
                "revoked": {"type": "boolean"},
                "revoked_at": _nullable(_TIME),
            },
        },
        "UsageRecord": {
            "type": "object",
            "required": [
                "request_id",
                "key_id",
                "wallet_id",
                "model",
                "backend",
                "prompt_tokens",
                "completion_tokens",
                "cost",
                "status",
            ],
            "properties": {
                "request_id": {"type": "string"},
                "key_id": _nullable({"type": "string"}),
                "wallet_id": {"type": "string"},
                "model": {"type": "string"},
                "backend": _nullable({"type": "string"}),
                "endpoint": {"type": "string"},
                "stream": {"type": "boolean"},
                "prompt_tokens": {"type": "integer", "minimum": 0},
                "completion_tokens": {"type": "integer", "minimum": 0},
                "cached_tokens": {"type": "integer", "minimum": 0},
                "cost": _AMOUNT,
                "shortfall": _AMOUNT,
                "status": {
                    "enum": [
                        "ok",
                        "cut_off",
                        "client_disconnected",
                        "upstream_error",
                        "error",
                        "abandoned",
                    ]
                },
                "error": _nullable({"type": "string"}),
                "latency_ms": {"type": "integer", "minimum": 0},
                "created_at": _TIME,
            },
        },
    }


def _list_of(name: str) -> Schema:
    return {
        "type": "object",
        "required": ["data"],
        "properties": {"data": {"type": "array", "items": _ref(name)}},
    }


# -- paths -------------------------------------------------------------------------------------
def _metered(summary: str, body: str, *, streams: bool) -> Schema:
    content: Schema = _json(_ref("Answer"))
    if streams:
        content["text/event-stream"] = {"schema": _ref("Event")}
    return {
        "post": {
            "summary": summary,
            "tags": ["client"],
            "security": [{"appKey": []}],
            "requestBody": _body(_ref(body)),
            "responses": {
                "200": {
                    "description": "the answer (streamed as server-sent events when "
                    "stream is true)",
                    "content": content,
                },
                **_errors(400, 401, 402, 403, 404, 413, 429, 502, 503, 504),
            },
        }
    }


def _admin(method: str, summary: str, responses: dict[str, Schema], **extra: Any) -> Schema:
    return {
        method: {
            "summary": summary,
            "tags": ["admin"],
            "security": [{"adminToken": []}],
            "responses": {**responses, **_errors(401, 429, 503)},
            **extra,
        }
    }


def _paths() -> dict[str, Schema]:
    wallet_id, key_id = _path("wallet_id"), _path("key_id")
    return {
        "/v1/chat/completions": _metered(
            "A chat completion, streamed or not", "ChatCompletionRequest", streams=True
        ),
        "/v1/completions": _metered("A legacy completion", "CompletionRequest", streams=True),
        "/v1/embeddings": _metered("Embeddings", "EmbeddingRequest", streams=False),
        "/v1/responses": _metered(
            "A response (OpenAI's Responses API), streamed or not",
            "ResponsesRequest",
            streams=True,
        ),
        "/v1/models": {
            "get": {
                "summary": "The models this key may use",
                "tags": ["client"],
                "security": [{"appKey": []}],
                "responses": {**_ok(200, _ref("ModelList")), **_errors(401, 503)},
            }
        },
        "/v1/models/{model_id}": {
            "get": {
                "summary": "One model this key may use",
                "tags": ["client"],
                "security": [{"appKey": []}],
                "parameters": [_path("model_id")],
                "responses": {**_ok(200, _ref("Model")), **_errors(401, 404, 503)},
            }
        },
        "/v1/wallet": {
            "get": {
                "summary": "The caller's own wallet",
                "tags": ["client"],
                "security": [{"appKey": []}],
                "responses": {**_ok(200, _ref("Wallet")), **_errors(401, 404, 503)},
            }
        },
        "/admin/wallets": {
            **_admin(
                "post",
                "Create a wallet",
                {**_ok(201, _ref("Wallet"), "created"), **_errors(400, 413)},
                requestBody=_body(_ref("WalletCreate")),
            ),
            **_admin("get", "List wallets", _ok(200, _list_of("Wallet"))),
        },
        "/admin/wallets/{wallet_id}": _admin(
            "get",
            "One wallet",
            {**_ok(200, _ref("Wallet")), **_errors(404)},
            parameters=[wallet_id],
        ),
        "/admin/wallets/{wallet_id}/credits": _admin(
            "post",
            "Credit a wallet (once per idempotency key)",
            {
                **_ok(201, _ref("Wallet"), "credited"),
                **_ok(
                    200, _ref("Wallet"), "this idempotency key was used before: nothing credited"
                ),
                **_errors(400, 404, 413),
            },
            parameters=[wallet_id],
            requestBody=_body(_ref("Credit")),
        ),
        "/admin/wallets/{wallet_id}/ledger": _admin(
            "get",
            "A wallet's ledger, newest first",
            {**_ok(200, _list_of("LedgerEntry")), **_errors(400, 404)},
            parameters=[wallet_id, _query("limit", _LIMIT, "entries (default 100)")],
        ),
        "/admin/transfers": _admin(
            "post",
            "Move credits between wallets",
            {
                **_ok(201, _ref("Transfer"), "moved"),
                **_ok(200, _ref("Transfer"), "this idempotency key was used before"),
                **_errors(400, 402, 404, 413),
            },
            requestBody=_body(_ref("TransferCreate")),
        ),
        "/admin/keys": {
            **_admin(
                "post",
                "Create an app key (its secret is in this answer only)",
                {**_ok(201, _ref("Key"), "created"), **_errors(400, 404, 413)},
                requestBody=_body(_ref("KeyCreate")),
            ),
            **_admin(
                "get",
                "List keys (never their secrets)",
                _ok(200, _list_of("Key")),
                parameters=[_query("wallet_id", {"type": "string"}, "only this wallet's")],
            ),
        },
        "/admin/keys/{key_id}": _admin(
            "delete",
            "Revoke a key (refused everywhere within a second)",
            {**_ok(200, _ref("Key")), **_errors(404)},
            parameters=[key_id],
        ),
        "/admin/usage": _admin(
            "get",
            "Usage records, newest first",
            {**_ok(200, _list_of("UsageRecord")), **_errors(400)},
            parameters=[
                _query("wallet_id", {"type": "string"}, "only this wallet's"),
                _query("key_id", {"type": "string"}, "only this key's"),
                _query("limit", _LIMIT, "records (default 100)"),
            ],
        ),
        "/healthz": {
            "get": {
                "summary": "200 while the process serves",
                "tags": ["ops"],
                "responses": _ok(200, {"type": "object"}),
            }
        },
        "/readyz": {
            "get": {
                "summary": "200 while storage can be read and written",
                "tags": ["ops"],
                "responses": {
                    **_ok(200, {"type": "object"}),
                    "503": {
                        "description": "storage unavailable",
                        "content": _json({"type": "object"}),
                    },
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "tags": ["ops"],
                "responses": {
                    "200": {
                        "description": "text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "tags": ["ops"],
                "responses": _ok(200, {"type": "object"}),
            }
        },
    }


def openapi_document(models: Sequence[str] = (), version: str = "0") -> dict[str, Any]:
    """The document; ``models`` (the configured public models) become examples."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "metering-gateway",
            "version": version,
            "description": "An OpenAI-compatible metering gateway: the client API (an app key "
            "per app), the admin API (the admin token) and operations. Every error is "
            '{"error": {"message", "type", "param", "code"}}.',
        },
        "paths": _paths(),
        "components": {
            "schemas": _schemas(models),
            "securitySchemes": {
                "appKey": {"type": "http", "scheme": "bearer", "description": "an app key"},
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the admin token",
                },
            },
        },
    }
