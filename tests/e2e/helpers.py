"""Small helpers for the end-to-end tests: an independent token counter (the oracle the
gateway's counts are checked against), SSE parsing and async polling."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import importlib
import json
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import asyncpg
import httpx
import openai
import pytest
import tiktoken
import tiktoken_ext.openai_public as openai_public
from openai.types.chat import ChatCompletion, ChatCompletionChunk

__all__ = [
    "HELLO",
    "HELLO_TOKENS",
    "MILLI_ROUTE",
    "POSTGRES_URL",
    "REACHABLE",
    "assert_error",
    "assert_error_event",
    "chat",
    "chat_prompt_tokens",
    "chat_stream",
    "content_of",
    "count",
    "encoding",
    "eventually",
    "import_or_skip",
    "parse_sse",
    "read_sse",
    "require_postgres",
    "skip_unless_ci",
    "text_of",
    "unreachable",
]

T = TypeVar("T")

POSTGRES_URL = os.environ.get(
    "GATEWAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
#: "postgres"/"redis" -> None, or why it cannot be reached (checked once a session).
REACHABLE: dict[str, str | None] = {}

HELLO: list[dict[str, Any]] = [{"role": "user", "content": "hello"}]
#: A route of model ``m`` on backend ``a`` at 0.001 credit a token, prompt or completion: costs
#: read as token counts.
MILLI_ROUTE: dict[str, Any] = {
    "model": "m",
    "backend": "a",
    "input_price": "1000",
    "output_price": "1000",
    "tokenizer": "o200k_base",
}
#: HELLO's prompt tokens by OpenAI's recipe, in cl100k_base and o200k_base alike: 3 + 1 + 1 + 3.
HELLO_TOKENS = 8

_ENCODINGS_DIR = Path(__file__).resolve().parents[2] / "src" / "gateway" / "encodings"
_URLS = {
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
}


@cache
def encoding(name: str) -> tiktoken.Encoding:
    """A tiktoken encoding built offline from the files the package ships, through tiktoken's
    own constructor (its cache is primed, so nothing is downloaded and the sha256 is checked)."""
    with tempfile.TemporaryDirectory() as cache_dir:
        url = _URLS[name]
        data = gzip.decompress((_ENCODINGS_DIR / f"{name}.tiktoken.gz").read_bytes())
        Path(cache_dir, hashlib.sha1(url.encode()).hexdigest()).write_bytes(data)
        before = os.environ.get("TIKTOKEN_CACHE_DIR")
        os.environ["TIKTOKEN_CACHE_DIR"] = cache_dir
        try:
            params = getattr(openai_public, name)()
        finally:
            if before is None:
                del os.environ["TIKTOKEN_CACHE_DIR"]
            else:
                os.environ["TIKTOKEN_CACHE_DIR"] = before
    return tiktoken.Encoding(**params)


def count(text: str, encoding_name: str = "o200k_base") -> int:
    return len(encoding(encoding_name).encode(text, disallowed_special=()))


def chat_prompt_tokens(
    messages: Iterable[Mapping[str, str]], encoding_name: str = "o200k_base"
) -> int:
    """OpenAI cookbook's recipe: 3 tokens a message, 1 for a name, 3 to prime the reply."""
    total = 3
    for message in messages:
        total += 3
        for key, value in message.items():
            total += count(value, encoding_name)
            if key == "name":
                total += 1
    return total


def parse_sse(text: str) -> list[Any]:
    """The ``data:`` payloads of an SSE body: parsed JSON, or the string ``"[DONE]"``."""
    events: list[Any] = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        data = "\n".join(
            line[5:].lstrip(" ") for line in block.split("\n") if line.startswith("data:")
        )
        if not data:
            continue
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


async def read_sse(response: httpx.Response) -> list[Any]:
    """Read a streamed httpx response to its end and parse its events."""
    body = b"".join([chunk async for chunk in response.aiter_bytes()])
    return parse_sse(body.decode())


def content_of(events: Iterable[Any]) -> str:
    """The assistant text of a chat stream's events (choice 0)."""
    text = []
    for event in events:
        if isinstance(event, dict):
            for choice in event.get("choices") or []:
                if choice.get("index", 0) == 0:
                    text.append((choice.get("delta") or {}).get("content") or "")
    return "".join(text)


async def eventually(
    probe: Callable[[], T | Awaitable[T]],
    until: Callable[[T], bool] = bool,
    *,
    within: float = 5.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Await ``probe`` until ``until(result)``; fail with the last result after ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        result = probe()
        if asyncio.iscoroutine(result) or isinstance(result, Awaitable):
            result = await result
        if until(result):  # type: ignore[arg-type]
            return result  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {result!r}")
        await asyncio.sleep(interval)


async def chat(
    client: openai.AsyncOpenAI,
    model: str = "gpt-4o-mini",
    script: dict[str, Any] | None = None,
    messages: list[dict[str, Any]] | None = None,
    **params: Any,
) -> tuple[ChatCompletion, str]:
    """A non-streamed chat completion and its ``x-request-id``."""
    raw = await client.chat.completions.with_raw_response.create(
        model=model,
        messages=messages or HELLO,  # type: ignore[arg-type]
        extra_body={"script": script or {}},
        **params,
    )
    return raw.parse(), raw.headers["x-request-id"]


async def chat_stream(
    client: openai.AsyncOpenAI,
    model: str = "gpt-4o-mini",
    script: dict[str, Any] | None = None,
    messages: list[dict[str, Any]] | None = None,
    **params: Any,
) -> tuple[list[ChatCompletionChunk], str]:
    """A streamed chat completion read to its end: its chunks and its ``x-request-id``."""
    raw = await client.chat.completions.with_raw_response.create(
        model=model,
        messages=messages or HELLO,  # type: ignore[arg-type]
        stream=True,
        extra_body={"script": script or {}},
        **params,
    )
    stream = raw.parse()
    return [chunk async for chunk in stream], raw.headers["x-request-id"]


def text_of(chunks: Iterable[ChatCompletionChunk], index: int = 0) -> str:
    return "".join(
        choice.delta.content or ""
        for chunk in chunks
        for choice in chunk.choices
        if choice.index == index
    )


def assert_error(
    response: httpx.Response, status: int, type_: str, code: str | None = None
) -> dict[str, Any]:
    """An error answer in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``,
    with this status, type and code, a message, an ``x-request-id``, and for 429 a
    ``Retry-After`` of whole seconds; the error object."""
    assert response.status_code == status, response.text
    assert response.headers.get("x-request-id"), "errors carry x-request-id too"
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error = assert_error_event(body, type_, code)
    if status == 429:
        retry_after = response.headers.get("Retry-After", "")
        assert retry_after.isdigit(), response.headers
        assert int(retry_after) >= 1, response.headers
    return error


def assert_error_event(event: Any, type_: str, code: str | None = None) -> dict[str, Any]:
    """An SSE error event (``data: {"error": {...}}``) or an error body in OpenAI's shape, with
    this type and code and a message; the error object."""
    assert isinstance(event, dict), event
    error = event.get("error")
    assert isinstance(error, dict), event
    assert set(error) >= {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str), error
    assert error["message"], error
    assert error["type"] == type_, error
    if code is not None:
        assert error["code"] == code, error
    return dict(error)


def skip_unless_ci(reason: str) -> NoReturn:
    """Skip the test for something this machine lacks; with ``CI=true``, where everything the
    tests need is there, fail it: a CI run must not pass by skipping."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def unreachable(what: str, url: str) -> NoReturn:
    """Skip the test for a service that cannot be reached; with ``CI=true``, fail it."""
    skip_unless_ci(f"{what} at {url} is unreachable ({REACHABLE[what]})")


def import_or_skip(name: str) -> Any:
    """The module ``name`` (a test dependency of pyproject's ``dev`` extra); the test skipped
    when it cannot be imported, and failed with ``CI=true``."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        skip_unless_ci(f"{name} cannot be imported ({exc}): install the dev extra")


async def require_postgres() -> None:
    if "postgres" not in REACHABLE:
        try:
            conn = await asyncpg.connect(POSTGRES_URL, timeout=3)
            await conn.close()
            REACHABLE["postgres"] = None
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            REACHABLE["postgres"] = f"{type(exc).__name__}: {exc}"
    if REACHABLE["postgres"] is not None:
        unreachable("postgres", POSTGRES_URL)
