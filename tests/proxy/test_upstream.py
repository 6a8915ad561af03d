"""Reading a whole upstream answer (``HttpBackend`` and its response), against a real HTTP
server on loopback: the body as sent, however it is framed or encoded, and never more than the
limit."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from gateway.config import BackendConfig
from gateway.errors import UpstreamError
from gateway.proxy.upstream import HttpBackend, open_session

BODY = b'{"id":"chatcmpl-1","choices":[],"note":"' + b"x" * 3000 + b'"}'


async def _plain(request: web.Request) -> web.Response:
    return web.Response(body=BODY, content_type="application/json")


async def _gzipped(request: web.Request) -> web.Response:
    packed = gzip.compress(BODY)  # Content-Length is the packed size, far below BODY's
    return web.Response(
        body=packed, content_type="application/json", headers={"Content-Encoding": "gzip"}
    )


async def _chunked(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    for start in range(0, len(BODY), 1000):
        await response.write(BODY[start : start + 1000])
    await response.write_eof()
    return response


async def _short(request: web.Request) -> web.StreamResponse:
    """Declares the whole body, sends half of it, and hangs up."""
    response = web.StreamResponse(
        headers={"Content-Type": "application/json", "Content-Length": str(len(BODY))}
    )
    await response.prepare(request)
    await response.write(BODY[: len(BODY) // 2])
    assert request.transport is not None
    request.transport.close()
    return response


async def _cookies(request: web.Request) -> web.Response:
    """Sets a cookie, and answers with the cookies the request carried."""
    response = web.json_response({"cookie": request.headers.get("Cookie")})
    response.set_cookie("session", "app-one", path="/")
    return response


@pytest.fixture
async def backend() -> AsyncIterator[HttpBackend]:
    app = web.Application()
    for name, handler in (
        ("plain", _plain),
        ("gzipped", _gzipped),
        ("chunked", _chunked),
        ("short", _short),
        ("cookies", _cookies),
    ):
        app.router.add_post(f"/v1/{name}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    session = open_session()
    try:
        yield HttpBackend(BackendConfig(name="up", base_url=f"http://127.0.0.1:{port}/v1"), session)
    finally:
        await session.close()
        await runner.cleanup()


async def _read(backend: HttpBackend, path: str, limit: int) -> bytes:
    response = await backend.send(path, b"{}", stream=False, headers={})
    try:
        body = await response.read(limit)
    except BaseException:
        response.close()
        raise
    response.release()
    return body


@pytest.mark.parametrize("path", ["/plain", "/gzipped", "/chunked"])
async def test_the_whole_answer_is_read_however_it_comes(backend: HttpBackend, path: str) -> None:
    assert await _read(backend, path, limit=len(BODY)) == BODY
    assert await _read(backend, path, limit=len(BODY)) == BODY  # again, on the pooled connection


@pytest.mark.parametrize("path", ["/plain", "/gzipped", "/chunked"])
async def test_an_answer_past_the_limit_is_refused(backend: HttpBackend, path: str) -> None:
    """A gzipped answer is held to the limit as it inflates, not by its packed length."""
    with pytest.raises(UpstreamError, match="exceeds"):
        await _read(backend, path, limit=len(BODY) - 1)


async def test_an_answer_cut_short_is_an_upstream_error(backend: HttpBackend) -> None:
    with pytest.raises(UpstreamError, match="broke off"):
        await _read(backend, "/short", limit=len(BODY))


async def test_the_session_decompresses(backend: HttpBackend) -> None:
    """What the gzipped case relies on: aiohttp inflates, and still reports the packed
    length, which must not be taken for the body's."""
    response = await backend.send("/gzipped", b"{}", stream=False, headers={})
    try:
        inner = response._response  # type: ignore[attr-defined]
        assert isinstance(inner, aiohttp.ClientResponse)
        assert inner.content_length is not None
        assert inner.content_length < len(BODY)
    finally:
        response.close()


async def test_a_cookie_an_upstream_set_is_not_sent_back(backend: HttpBackend) -> None:
    """One app's answer may set a cookie; the next request, maybe another app's, must not
    carry it. (By a host name: aiohttp's own jar ignores cookies of IP addresses.)"""
    port = backend.config.base_url.rsplit(":", 1)[1].split("/")[0]
    session = open_session()
    try:
        named = HttpBackend(
            BackendConfig(name="named", base_url=f"http://localhost:{port}/v1"), session
        )
        for _ in range(2):
            assert await _read(named, "/cookies", 1000) == b'{"cookie": null}'
    finally:
        await session.close()
