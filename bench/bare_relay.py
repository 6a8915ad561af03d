"""The bare relay: the ceiling for a gateway on our stack.

Litestar under uvicorn (uvloop, httptools, one worker, no access log) and one aiohttp client
session with a keep-alive pool. The request body is forwarded as bytes and the answer's bytes
come back, streamed when the upstream answers with ``text/event-stream``. No auth, no JSON
decoding, no metering.

    python bench/bare_relay.py --port 8001 --upstream http://127.0.0.1:8000/json/v1
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import uvicorn
from litestar import Litestar, Request, post
from litestar.response import Response, Stream

UPSTREAM = ""
_session: aiohttp.ClientSession | None = None


async def _open() -> None:
    global _session
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60, ttl_dns_cache=None)
    _session = aiohttp.ClientSession(connector=connector, auto_decompress=False)


async def _close() -> None:
    if _session is not None:
        await _session.close()


@post("/v1/chat/completions", status_code=200)
async def chat(request: Request[Any, Any, Any]) -> Response[Any]:
    assert _session is not None
    body = await request.body()
    upstream = await _session.post(
        UPSTREAM + "/chat/completions",
        data=body,
        headers={"Content-Type": "application/json", "Authorization": "Bearer bench"},
    )
    media_type = upstream.headers.get("Content-Type", "application/json")
    if media_type.startswith("text/event-stream"):

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in upstream.content.iter_any():
                    yield chunk
            finally:
                upstream.release()

        return Stream(relay(), media_type=media_type, status_code=upstream.status)
    data = await upstream.read()
    upstream.release()
    return Response(data, media_type=media_type, status_code=upstream.status)


app = Litestar(route_handlers=[chat], on_startup=[_open], on_shutdown=[_close], openapi_config=None)


def main() -> None:
    global UPSTREAM
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base url, e.g. http://h:p/json/v1")
    args = parser.parse_args()
    UPSTREAM = args.upstream.rstrip("/")
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        workers=1,
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
