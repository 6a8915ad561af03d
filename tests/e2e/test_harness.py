"""The harness itself: the scripted upstream answers like OpenAI, the config writer writes valid
TOML, the cost oracle rounds up, the token oracle matches OpenAI's published counts. These run
without the gateway, so a failing e2e test can be trusted to be about the gateway."""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest

from e2e.helpers import chat_prompt_tokens, count, eventually, parse_sse, read_sse
from gateway_proc import expected_cost, to_toml, write_config
from upstream import DEFAULT_PROMPT_TOKENS, UpstreamServer, answer_text

HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture
async def server() -> AsyncIterator[UpstreamServer]:
    async with UpstreamServer("self-test") as upstream:
        yield upstream


@pytest.fixture
async def client(server: UpstreamServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=server.url, api_key="sk-test", max_retries=0) as c:
        yield c


async def test_chat_answer_with_usage(server: UpstreamServer, client: openai.AsyncOpenAI) -> None:
    answer = await client.chat.completions.create(
        model="m", messages=HELLO, extra_body={"script": {"words": 3, "completion_tokens": 7}}
    )
    assert answer.choices[0].message.content == "hello hello hello"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (
        DEFAULT_PROMPT_TOKENS,
        7,
    )
    assert server.last.body["script"] == {"words": 3, "completion_tokens": 7}
    assert server.last.headers["Authorization"] == "Bearer sk-test"


async def test_chat_stream_reports_usage_only_when_asked(
    server: UpstreamServer, client: openai.AsyncOpenAI
) -> None:
    plain = await client.chat.completions.create(
        model="m", messages=HELLO, stream=True, extra_body={"script": {"words": 4}}
    )
    chunks = [c async for c in plain]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer_text(4)
    assert all(c.usage is None for c in chunks)

    asked = await client.chat.completions.create(
        model="m",
        messages=HELLO,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"script": {"words": 4, "cached_tokens": 2}},
    )
    chunks = [c async for c in asked]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4
    assert chunks[-1].usage.prompt_tokens_details is not None
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 2
    # the server marks the stream finished once its last write returns, which may be after
    # the client has read the last bytes
    await eventually(lambda: server.streams[-1].finished, what="the stream to finish")
    assert server.streams[-1].chunks_sent == 4


async def test_usage_false_never_reports(client: openai.AsyncOpenAI) -> None:
    answer = await client.chat.completions.create(
        model="m", messages=HELLO, extra_body={"script": {"usage": False}}
    )
    assert answer.usage is None
    stream = await client.chat.completions.create(
        model="m",
        messages=HELLO,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"script": {"usage": False}},
    )
    assert all(c.usage is None for c in [c async for c in stream])


async def test_max_tokens_ignored_or_honoured(client: openai.AsyncOpenAI) -> None:
    ignored = await client.chat.completions.create(
        model="m", messages=HELLO, max_tokens=2, extra_body={"script": {"words": 5}}
    )
    assert ignored.choices[0].message.content == answer_text(5)
    honoured = await client.chat.completions.create(
        model="m",
        messages=HELLO,
        max_completion_tokens=2,
        extra_body={"script": {"words": 5, "ignore_max_tokens": False}},
    )
    assert honoured.choices[0].message.content == answer_text(2)
    assert honoured.choices[0].finish_reason == "length"


async def test_n_choices_and_tool_calls(client: openai.AsyncOpenAI) -> None:
    answer = await client.chat.completions.create(
        model="m", messages=HELLO, n=2, extra_body={"script": {"words": 3}}
    )
    assert [c.index for c in answer.choices] == [0, 1]
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 6

    stream = await client.chat.completions.create(
        model="m",
        messages=HELLO,
        stream=True,
        extra_body={"script": {"tool_call": {"pieces": 4}}},
    )
    arguments = ""
    async for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                arguments += call.function.arguments or "" if call.function else ""
    assert arguments == '{"city": "Paris", "unit": "celsius"}'


async def test_scripted_errors(server: UpstreamServer, client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(
            model="m", messages=HELLO, extra_body={"script": {"status": 500}}
        )
    server.fail_next, server.fail_status, server.retry_after = 1, 429, 7
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model="m", messages=HELLO)
    assert caught.value.response.headers["Retry-After"] == "7"
    assert (await client.chat.completions.create(model="m", messages=HELLO)).choices
    server.status = 503
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(model="m", messages=HELLO)


async def test_drop_after_aborts_the_stream(server: UpstreamServer) -> None:
    async with (
        httpx.AsyncClient(base_url=server.url, trust_env=False) as http,
        http.stream(
            "POST",
            "/chat/completions",
            json={
                "model": "m",
                "messages": HELLO,
                "stream": True,
                "script": {"words": 10, "drop_after": 3},
            },
        ) as response,
    ):
        with pytest.raises(httpx.HTTPError):
            await read_sse(response)
    assert server.streams[-1].chunks_sent == 3
    assert server.streams[-1].dropped
    assert not server.streams[-1].finished


async def test_a_client_that_goes_away_is_seen(server: UpstreamServer) -> None:
    async with httpx.AsyncClient(base_url=server.url, trust_env=False) as http:
        body = {
            "model": "m",
            "messages": HELLO,
            "stream": True,
            "script": {"words": 200, "chunk_delay_s": 0.02},
        }
        async with http.stream("POST", "/chat/completions", json=body) as response:
            async for line in response.aiter_lines():
                if "hello" in line:
                    break
    for _ in range(200):
        if not server.streams[-1].open:
            break
        await asyncio.sleep(0.02)
    record = server.streams[-1]
    assert not record.open
    assert record.disconnected
    assert record.chunks_sent < 200


async def test_completions_embeddings_and_models(client: openai.AsyncOpenAI) -> None:
    completion = await client.completions.create(
        model="m", prompt="hello", extra_body={"script": {"words": 2}}
    )
    assert completion.choices[0].text == "hello hello"
    chunks = [
        c
        async for c in await client.completions.create(
            model="m", prompt="hello", stream=True, stream_options={"include_usage": True}
        )
    ]
    assert chunks[-1].usage is not None
    embedding = await client.embeddings.create(model="m", input=["a", "b"])
    assert len(embedding.data) == 2
    assert embedding.data[0].embedding == [0.25, -0.5, 0.125, 1.0]
    models = await client.models.list()
    assert [m.id for m in models.data] == ["up-model"]


def test_config_writer_round_trips(tmp_path: Path) -> None:
    config = {
        "server": {"host": "127.0.0.1", "port": 1, "max_body_bytes": 2048},
        "backends": [{"name": "a", "base_url": "http://x/v1", "timeout_s": 0.5}],
        "routes": [{"model": "m", "backend": "a", "input_price": "0.15", "tokenizer": None}],
    }
    path = write_config(tmp_path, config)
    parsed = tomllib.loads(path.read_text())
    assert parsed["server"] == config["server"]
    assert parsed["backends"] == config["backends"]
    assert parsed["routes"] == [{"model": "m", "backend": "a", "input_price": "0.15"}]
    assert 'name = "a"' in to_toml(config)


def test_cost_oracle_rounds_the_sum_up() -> None:
    route = {"input_price": "0.3", "output_price": "0.3"}
    assert expected_cost(route, 1, 1) == Decimal("0.000001")  # 0.6 micro-credit, up to 1
    route = {"input_price": "1", "output_price": "2", "cached_input_price": "0.5"}
    assert expected_cost(route, 10, 5, cached=4) == Decimal("0.000018")  # 6 + 2 + 10
    assert expected_cost(route, 0, 0) == 0


def test_token_oracle_matches_openai_billing() -> None:
    """OpenAI cookbook, "How to count tokens with tiktoken": 129 for gpt-4, 124 for gpt-4o."""
    messages = [
        {
            "role": "system",
            "content": "You are a helpful, pattern-following assistant that translates "
            "corporate jargon into plain English.",
        },
        {
            "role": "system",
            "name": "example_user",
            "content": "New synergies will help drive top-line growth.",
        },
        {
            "role": "system",
            "name": "example_assistant",
            "content": "Things working well together will increase revenue.",
        },
        {
            "role": "system",
            "name": "example_user",
            "content": "Let's circle back when we have more bandwidth to touch base on "
            "opportunities for increased leverage.",
        },
        {
            "role": "system",
            "name": "example_assistant",
            "content": "Let's talk later when we're less busy about how to do better.",
        },
        {
            "role": "user",
            "content": "This late pivot means we don't have time to boil the ocean for the "
            "client deliverable.",
        },
    ]
    assert chat_prompt_tokens(messages, "cl100k_base") == 129
    assert chat_prompt_tokens(messages, "o200k_base") == 124
    for name in ("cl100k_base", "o200k_base"):
        assert count(answer_text(50), name) == 50  # "hello" and " hello" are one token each


def test_parse_sse() -> None:
    text = 'data: {"a": 1}\n\n: comment\n\ndata: [DONE]\n\n'
    assert parse_sse(text) == [{"a": 1}, "[DONE]"]


async def test_a_request_abandoned_before_its_answer_is_seen(server: UpstreamServer) -> None:
    async with httpx.AsyncClient(base_url=server.url, trust_env=False) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post(
                "/chat/completions",
                json={"model": "m", "messages": HELLO, "script": {"delay_s": 3}},
                timeout=0.2,
            )
        for _ in range(100):
            if server.last.closed_at is not None:
                break
            await asyncio.sleep(0.02)
        assert server.last.cancelled
        await http.post("/chat/completions", json={"model": "m", "messages": HELLO})
        assert server.last.closed_at is not None
        assert not server.last.cancelled
