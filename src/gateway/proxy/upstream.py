"""The one module that talks to backends.

A :class:`Backend` sends a request body to a path and returns an :class:`UpstreamResponse`
(status, safe headers, body as chunks). aiohttp's exceptions are translated into gateway errors
here and nowhere else (``UpstreamError``, ``UpstreamTimeout``), ``raise ... from exc``.

Why aiohttp and not httpx on this path: measured on this machine through one Litestar process,
a relay calling upstream through aiohttp's ``ClientSession`` served ~3,270 requests/s against
~920 for httpx's API on an aiohttp transport, and httpx 0.28's own pool collapsed under
concurrency (~100 requests/s at 64 in flight; encode/httpx#3215).
"""

from __future__ import annotations

import abc
import os
from collections.abc import AsyncIterator, Mapping

import aiohttp
import yarl

from gateway.config import BackendConfig
from gateway.errors import UpstreamError, UpstreamTimeout

__all__ = [
    "Backend",
    "HttpBackend",
    "UpstreamResponse",
    "forwardable_request_headers",
    "open_session",
]

# Never sent upstream: hop-by-hop headers (RFC 9110 §7.6.1), what the gateway sets itself, and
# the client's credentials and account selectors (the backend's own key is used instead).
_DROP_REQUEST = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "content-type",
        "accept-encoding",
        "authorization",
        "api-key",
        "x-api-key",
        "cookie",
        "openai-organization",
        "openai-project",
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-real-ip",
        "x-request-id",
        "expect",
    }
)

# The only upstream response headers relayed to the client; the rest (rate limits and account
# details of the operator's supplier, cookies, hop-by-hop, encodings aiohttp already undid)
# stay here.
_KEEP_RESPONSE = ("content-type", "openai-processing-ms", "openai-version")


def forwardable_request_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The client's headers minus hop-by-hop ones, those named in ``Connection``, and secrets."""
    named = {
        token.strip().lower()
        for value in (headers.get("connection") or "",)
        for token in value.split(",")
        if token.strip()
    }
    return {
        name: value
        for name, value in headers.items()
        if (low := name.lower()) not in _DROP_REQUEST and low not in named
    }


class UpstreamResponse(abc.ABC):
    status: int
    headers: dict[str, str]
    #: The backend's own key, never to be relayed: some backends quote it in error messages.
    secret: bytes = b""

    def redact(self, data: bytes) -> bytes:
        """``data`` (an error the backend sent, about to be relayed) without the backend's key."""
        if self.secret and self.secret in data:
            return data.replace(self.secret, b"***")
        return data

    @abc.abstractmethod
    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; called again (after the first iterator was closed or
        cancelled), it goes on from where that one stopped."""

    async def read(self, limit: int) -> bytes:
        """The whole body; ``UpstreamError`` past ``limit`` bytes."""
        parts: list[bytes] = []
        size = 0
        async for chunk in self.chunks():
            size += len(chunk)
            if size > limit:
                raise UpstreamError(f"the upstream answer exceeds {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    @abc.abstractmethod
    def close(self) -> None:
        """Drop the upstream request at once (the connection is not reused)."""

    def release(self) -> None:
        """The body was read in full: the connection may be reused."""
        self.close()


class Backend(abc.ABC):
    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self.name = config.name

    @abc.abstractmethod
    async def send(
        self, path: str, body: bytes, *, stream: bool, headers: Mapping[str, str]
    ) -> UpstreamResponse:
        """POST ``body`` to ``path`` (e.g. ``/chat/completions``); raise ``UpstreamError`` or
        ``UpstreamTimeout`` when no response status could be had."""

    async def close(self) -> None:
        return None


def open_session() -> aiohttp.ClientSession:
    """The process's one upstream client session: pooled keep-alive connections, no limit
    on concurrency (the gateway's own admission decides), DNS cached, and no cookies: a cookie
    one app's request brought back must not ride on another app's requests."""
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=30)
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=True,
        skip_auto_headers=("User-Agent",),
        timeout=aiohttp.ClientTimeout(total=None),
    )


class _AiohttpResponse(UpstreamResponse):
    def __init__(self, response: aiohttp.ClientResponse, backend: str, secret: bytes) -> None:
        self._response = response
        self._backend = backend
        self.secret = secret
        self.status = response.status
        found = response.headers  # case-insensitive: three lookups, not a pass over them all
        self.headers = {name: found[name] for name in _KEEP_RESPONSE if name in found}

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._broken_off(exc) from exc

    async def read(self, limit: int) -> bytes:
        response = self._response
        length = response.content_length
        if length is None or length > limit or "Content-Encoding" in response.headers:
            return await super().read(limit)  # piece by piece, counting what it inflates to
        try:  # as long as declared, within the limit: in one call
            return await response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._broken_off(exc) from exc

    def _broken_off(self, exc: BaseException) -> UpstreamError:
        """The gateway's error for the answer's body failing with ``exc``."""
        if isinstance(exc, TimeoutError):  # aiohttp's ServerTimeoutError is one too
            return UpstreamTimeout(f"backend {self._backend!r} timed out mid-answer")
        return UpstreamError(f"backend {self._backend!r} broke off its answer")

    def close(self) -> None:
        self._response.close()

    def release(self) -> None:
        self._response.release()


class HttpBackend(Backend):
    """Any server that speaks the OpenAI HTTP API: OpenAI, vLLM, llama.cpp, Ollama, clouds."""

    def __init__(self, config: BackendConfig, session: aiohttp.ClientSession) -> None:
        super().__init__(config)
        self._session = session
        self._base = config.base_url.rstrip("/")
        self._urls: dict[str, yarl.URL] = {}  # path -> parsed once (a dialect has a few)
        self._timeout = aiohttp.ClientTimeout(
            total=config.timeout_s, sock_connect=config.connect_timeout_s
        )
        key = os.environ.get(config.api_key_env, "") if config.api_key_env else ""
        self._auth = {"Authorization": f"Bearer {key}"} if key else {}
        self._secret = key.encode()

    async def send(
        self, path: str, body: bytes, *, stream: bool, headers: Mapping[str, str]
    ) -> UpstreamResponse:
        out = {**headers, **self._auth, "Content-Type": "application/json"}
        if stream:
            out["Accept"] = "text/event-stream"
            out["Accept-Encoding"] = "identity"
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = yarl.URL(self._base + path)
        try:
            response = await self._session.post(url, data=body, headers=out, timeout=self._timeout)
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeout(f"backend {self.name!r} timed out") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"backend {self.name!r} is unreachable") from exc
        return _AiohttpResponse(response, self.name, self._secret)
