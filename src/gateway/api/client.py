"""The OpenAI-compatible client API (``Authorization: Bearer <app key>``): the routes that
read. The metered ones (chat, completions, embeddings, responses) are plain ASGI, in
:mod:`gateway.api.metered`."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from litestar.handlers import HTTPRouteHandler

from gateway.admin.views import wallet_json
from gateway.api.common import json_response
from gateway.errors import ModelNotFound, NotFound
from gateway.proxy.relay import Relay
from gateway.services import Services

__all__ = ["client_handlers"]


def client_handlers(services: Services) -> list[HTTPRouteHandler]:
    def relay() -> Relay:
        assert services.relay is not None, "the gateway has not started"
        return services.relay

    def model_json(model: str) -> dict[str, Any]:
        return {"id": model, "object": "model", "created": 0, "owned_by": "gateway"}

    @get("/v1/models")
    async def models(request: Request[Any, Any, Any]) -> Response[bytes]:
        key = await services.keys.authenticate(request.headers.get("authorization"))
        data = [model_json(m) for m in relay().models_for(key)]
        return json_response({"object": "list", "data": data})

    @get("/v1/models/{model_id:path}")
    async def model(request: Request[Any, Any, Any]) -> Response[bytes]:
        key = await services.keys.authenticate(request.headers.get("authorization"))
        name = str(request.path_params["model_id"]).lstrip("/")
        if name not in relay().models_for(key):
            raise ModelNotFound(f"The model '{name}' does not exist.", param="model")
        return json_response(model_json(name))

    @get("/v1/wallet")
    async def wallet(request: Request[Any, Any, Any]) -> Response[bytes]:
        key = await services.keys.authenticate(request.headers.get("authorization"))
        found = await services.store.get_wallet(key.wallet_id)
        if found is None:
            raise NotFound("This key's wallet no longer exists.")
        return json_response(wallet_json(found))

    return [models, model, wallet]
