"""The gateway's OpenAPI document (``GET /openapi.json``) and schemathesis holding the running
gateway to it: for every operation of the client API (with an app key) and the admin API (with
the admin token), requests generated from the document — valid ones, and ones that break it on
purpose — get no 5xx, only documented statuses and content types, answers of the documented
shape, every error in the contract's shape, and invalid input refused with a 4xx.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.api.metered import ROUTES as METERED_ROUTES
from gateway.app import create_app
from gateway.config import load_config
from gateway_proc import Admin, GatewayFactory, GatewayProcess
from upstream import UpstreamServer

pytestmark = pytest.mark.e2e

#: Examples per operation and generation mode (two modes; 17 client and admin operations).
EXAMPLES = 40
ERROR_KEYS = {"message", "type", "param", "code"}


class Documented:
    def __init__(self, gateway: GatewayProcess, admin: Admin, secret: str) -> None:
        self.gateway, self.admin, self.secret = gateway, admin, secret
        with httpx.Client(base_url=gateway.url, trust_env=False) as http:
            response = http.get("/openapi.json")
        assert response.status_code == 200, response.text
        self.document: dict[str, Any] = response.json()


@pytest.fixture(scope="module")
def documented(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Documented]:
    with UpstreamServer("a") as upstream:
        factory = GatewayFactory(tmp_path_factory.mktemp("openapi"))
        try:
            gateway = factory(
                backends=[{"name": "a", "base_url": upstream.url, "api_key_env": "UPSTREAM_A_KEY"}],
                routes=[
                    {"model": "m", "backend": "a", "input_price": "1", "output_price": "2"},
                    {"model": "e", "backend": "a", "input_price": "1", "output_price": "0"},
                ],
                routing={"failure_threshold": 1000, "cooldown_s": 1},
            )
            with gateway.admin() as admin:
                wallet_id = admin.make_wallet("1000000")
                _key, secret = admin.make_key(wallet_id)
                yield Documented(gateway, admin, secret)
        finally:
            factory.close()


def _served_routes(config_path: Path) -> set[tuple[str, str]]:
    app = create_app(load_config(str(config_path)))
    served = {("POST", path) for path in METERED_ROUTES}  # plain ASGI, ahead of Litestar
    for route in app.litestar.routes:
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        for method in getattr(route, "methods", ()):
            if method not in ("HEAD", "OPTIONS"):
                served.add((method, path))
    return served


def test_the_document_describes_every_route_and_nothing_else(documented: Documented) -> None:
    document = documented.document
    assert document["openapi"].startswith("3.1")
    described = {
        (method.upper(), path) for path, item in document["paths"].items() for method in item
    }
    assert described == _served_routes(documented.gateway.config_path)
    schema = schemathesis.openapi.from_dict(document)  # a document schemathesis can load
    assert sum(1 for _ in schema.get_all_operations()) == len(described)


def _focused(document: dict[str, Any], models: list[str]) -> dict[str, Any]:
    """The document, with ``model`` limited to the configured models so that valid requests
    reach the upstream (the served document only gives them as examples)."""
    schemas = document["components"]["schemas"]
    for name in (
        "ChatCompletionRequest",
        "CompletionRequest",
        "EmbeddingRequest",
        "ResponsesRequest",
    ):
        schemas[name]["properties"]["model"] = {"enum": models}
    return document


def _error_shape(response: Any) -> None:
    if response.status_code < 400:
        return
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == ERROR_KEYS, body
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    assert response.headers.get("x-request-id"), "every answer carries x-request-id"


def _run_operation(
    documented: Documented,
    operation: Any,
    mode: GenerationMode,
    auth: dict[str, str],
    statuses: dict[str, int],
) -> None:
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    if mode is GenerationMode.NEGATIVE:
        checks.append(negative_data_rejection)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        response = case.call(base_url=documented.gateway.url, headers=auth, timeout=30)
        key = f"{case.method} {case.path} {response.status_code}"
        statuses[key] = statuses.get(key, 0) + 1
        case.validate_response(response, checks=checks)
        _error_shape(response)

    with contextlib.suppress(Unsatisfiable):  # nothing in this operation can be made invalid
        run()


def _fuzz(documented: Documented, tag: str, token: str) -> dict[str, int]:
    """Run schemathesis over every operation tagged ``tag``; the statuses it saw."""
    schema = schemathesis.openapi.from_dict(_focused(dict(documented.document), ["m"]))
    # Unknown query parameters are ignored, as HTTP APIs do; credentials come from us.
    schema.config.generation.allow_extra_parameters = False
    schema.config.generation.with_security_parameters = False
    statuses: dict[str, int] = {}
    auth = {"Authorization": f"Bearer {token}"}
    for result in schema.get_all_operations():
        operation = result.ok()
        if tag in operation.definition.raw.get("tags", []):
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                _run_operation(documented, operation, mode, auth, statuses)
    return statuses


def test_schemathesis_client_api(documented: Documented) -> None:
    statuses = _fuzz(documented, "client", documented.secret)
    assert any(key.endswith(" 200") and "/chat/" in key for key in statuses), statuses
    assert any(key.endswith(" 400") for key in statuses), statuses


def test_schemathesis_admin_api(documented: Documented) -> None:
    statuses = _fuzz(documented, "admin", documented.gateway.admin_token or "")
    assert any(
        key.startswith("POST /admin/wallets ") and key.endswith(" 201") for key in statuses
    ), statuses
    assert any(key.endswith(" 400") for key in statuses), statuses
    documented.admin.assert_books_balance(documented.admin.make_wallet("1"))
