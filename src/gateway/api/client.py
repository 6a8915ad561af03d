"""The OpenAI-compatible client API (``Authorization: Bearer <app key>``)."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get, post
from litestar.background_tasks import BackgroundTask
from litestar.handlers import HTTPRouteHandler
from litestar.response import Stream

from gateway.api.common import (
    ClientGone,
    json_body,
    json_response,
    request_id,
    unless_client_leaves,
)
from gateway.endpoints import CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, Endpoint
from gateway.errors import ModelNotFound, NotFound
from gateway.relay import Answer, Relay
from gateway.services import Services
from gateway.shapes import wallet_json
from gateway.storage import UsageStatus

__all__ = ["client_handlers"]


def client_handlers(services: Services) -> list[HTTPRouteHandler]:
    def relay() -> Relay:
        assert services.relay is not None, "the gateway has not started"
        return services.relay

    async def metered(endpoint: Endpoint, request: Request[Any, Any, Any]) -> Response[Any]:
        key = await services.keys.authenticate(request.headers.get("authorization"))
        body = await json_body(request)
        work = relay().handle(endpoint, key, body, request.headers, request_id(request))
        if body.get("stream") is True:
            answer = await work  # a stream notices the disconnect itself, chunk by chunk
        else:
            try:
                answer = await unless_client_leaves(request, work)
            except ClientGone:
                return Response(b"", status_code=499)  # nobody is listening
        if isinstance(answer, Answer):
            return Response(answer.body, status_code=answer.status, headers=answer.headers)
        # The stream settles itself however it ends; this is the net for a stream that
        # never started (the client left before the first byte).
        net = BackgroundTask(
            answer.settlement.settle, UsageStatus.CLIENT_DISCONNECTED, charge=False
        )
        return Stream(answer.body, headers=answer.headers, background=net)

    @post("/v1/chat/completions", status_code=200)
    async def chat(request: Request[Any, Any, Any]) -> Response[Any]:
        return await metered(CHAT, request)

    @post("/v1/completions", status_code=200)
    async def completions(request: Request[Any, Any, Any]) -> Response[Any]:
        return await metered(COMPLETIONS, request)

    @post("/v1/embeddings", status_code=200)
    async def embeddings(request: Request[Any, Any, Any]) -> Response[Any]:
        return await metered(EMBEDDINGS, request)

    @post("/v1/responses", status_code=200)
    async def responses(request: Request[Any, Any, Any]) -> Response[Any]:
        return await metered(RESPONSES, request)

    def model_json(model: str) -> dict[str, Any]:
        return {"id": model, "object": "model", "created": 0, "owned_by": "gateway"}

    @get("/v1/models")
    async def models(request: Request[Any, Any, Any]) -> Response[bytes]:
        key = await services.keys.authenticate(request.headers.get("authorization"))
        data = [model_json(m) for m in relay().models_for(key)]
        return json_response({"object": "list", "data": data})

    @get("/v1/models/{model_id:path}")
    async def model(request: Request[Any, Any, Any], model_id: str) -> Response[bytes]:
        key = await services.keys.authenticate(request.headers.get("authorization"))
        name = model_id.lstrip("/")
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

    return [chat, completions, embeddings, responses, models, model, wallet]
