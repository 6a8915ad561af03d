"""Health, readiness, metrics and the OpenAPI document."""

from __future__ import annotations

import msgspec
from litestar import Response, get
from litestar.handlers import HTTPRouteHandler

from gateway import __version__
from gateway.api.common import json_response
from gateway.api.openapi import openapi_document
from gateway.errors import StorageUnavailable
from gateway.metrics import CONTENT_TYPE_LATEST
from gateway.services import Services

__all__ = ["ops_handlers"]


def ops_handlers(services: Services) -> list[HTTPRouteHandler]:
    @get("/healthz")
    async def healthz() -> Response[bytes]:
        return json_response({"status": "ok"})

    @get("/readyz")
    async def readyz() -> Response[bytes]:
        try:
            await services.store.ping()
        except StorageUnavailable as exc:
            return json_response({"status": "unavailable", "error": exc.message}, 503)
        return json_response({"status": "ready"})

    @get("/metrics")
    async def metrics() -> Response[bytes]:
        return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    document = msgspec.json.encode(openapi_document(services.router.models, __version__))

    @get("/openapi.json")
    async def openapi() -> Response[bytes]:
        return Response(document, media_type="application/json")

    return [healthz, readyz, metrics, openapi]
