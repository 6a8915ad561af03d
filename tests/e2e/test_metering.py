"""Metering: every request debits exactly what its tokens cost at the route's prices.

Upstream usage is authoritative; where the upstream reports none, the gateway counts with
tiktoken (prompt by OpenAI's recipe, completion from what was generated). The expected numbers
come from an independent oracle (``e2e.helpers``) or from the scripted upstream's overrides.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import openai
import pytest

from e2e.helpers import (
    HELLO,
    HELLO_TOKENS,
    chat,
    chat_prompt_tokens,
    chat_stream,
    count,
    text_of,
)
from gateway_proc import Admin, D, GatewayProcess
from upstream import DEFAULT_PROMPT_TOKENS, UpstreamServer, answer_text

pytestmark = pytest.mark.e2e

MakeKey = Callable[..., tuple[str, str, str]]
Client = Callable[..., openai.AsyncOpenAI]

CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "name": "bob", "content": "Wie geht es dir heute, mein Freund?"},
    {"role": "assistant", "content": "Ça va très bien."},
    {"role": "user", "content": "hello hello hello"},
]


@pytest.fixture
def account(wallet_and_key: MakeKey, openai_client: Client) -> tuple[str, openai.AsyncOpenAI]:
    """A wallet with 10 credits and an openai client with a key on it."""
    wallet_id, _key_id, secret = wallet_and_key("10")
    return wallet_id, openai_client(secret)


# -- upstream usage is authoritative -----------------------------------------------------------
async def test_non_stream_debit_uses_upstream_usage(
    gateway: GatewayProcess,
    admin_api: Admin,
    upstream: UpstreamServer,
    account: tuple[str, openai.AsyncOpenAI],
) -> None:
    wallet_id, client = account
    script = {"words": 3, "prompt_tokens": 123, "completion_tokens": 45}
    answer, request_id = await chat(client, script=script)

    assert answer.choices[0].message.content == answer_text(3)
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (123, 45)
    admin_api.assert_charged(
        gateway, wallet_id, request_id, model="gpt-4o-mini", prompt=123, completion=45
    )
    wallet = admin_api.assert_books_balance(wallet_id)
    assert wallet["balance"] == "9.999787"  # 10 - (123 * 1 + 45 * 2) / 1e6


async def test_stream_debit_uses_upstream_usage_and_hides_the_usage_chunk(
    gateway: GatewayProcess,
    admin_api: Admin,
    upstream: UpstreamServer,
    account: tuple[str, openai.AsyncOpenAI],
) -> None:
    wallet_id, client = account
    script = {"words": 4, "prompt_tokens": 123, "completion_tokens": 45}
    chunks, request_id = await chat_stream(client, script=script)

    assert text_of(chunks) == answer_text(4)
    assert all(chunk.usage is None for chunk in chunks), "the client did not ask for usage"
    assert all(chunk.choices for chunk in chunks), "the usage-only chunk must be removed"
    sent = upstream.last.body
    assert sent["stream_options"]["include_usage"] is True, "the gateway asks for usage"
    admin_api.assert_charged(
        gateway, wallet_id, request_id, model="gpt-4o-mini", prompt=123, completion=45
    )
    admin_api.assert_books_balance(wallet_id)


async def test_stream_keeps_the_usage_chunk_the_client_asked_for(
    gateway: GatewayProcess,
    admin_api: Admin,
    upstream: UpstreamServer,
    account: tuple[str, openai.AsyncOpenAI],
) -> None:
    wallet_id, client = account
    script = {"words": 4, "prompt_tokens": 50, "completion_tokens": 6}
    chunks, request_id = await chat_stream(
        client, script=script, stream_options={"include_usage": True}
    )

    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (50, 6)
    assert sum(1 for chunk in chunks if chunk.usage is not None) == 1
    admin_api.assert_charged(
        gateway, wallet_id, request_id, model="gpt-4o-mini", prompt=50, completion=6
    )


async def test_cached_prompt_tokens_are_billed_at_the_cached_price(
    gateway: GatewayProcess,
    admin_api: Admin,
    upstream: UpstreamServer,
    account: tuple[str, openai.AsyncOpenAI],
) -> None:
    wallet_id, client = account
    script = {"prompt_tokens": 100, "cached_tokens": 40, "completion_tokens": 10}
    _answer, request_id = await chat(client, script=script)

    record = admin_api.assert_charged(
        gateway, wallet_id, request_id, model="gpt-4o-mini", prompt=100, completion=10, cached=40
    )
    assert record["cost"] == "0.0001"  # 60 * 1 + 40 * 0.5 + 10 * 2 micro-credits
    assert record.get("cached_tokens", 40) == 40


async def test_cost_is_rounded_up_to_the_micro_credit_once(
    gateway: GatewayProcess,
    admin_api: Admin,
    upstream: UpstreamServer,
    account: tuple[str, openai.AsyncOpenAI],
) -> None:
    wallet_id, client = account
    _answer, request_id = await chat(
        client, "rounding", script={"prompt_tokens": 1, "completion_tokens": 1}
    )
    record = admin_api.assert_charged(
        gateway, wallet_id, request_id, model="rounding", prompt=1, completion=1
    )
    assert record["cost"] == "0.000001"  # 0.3 + 0.3 = 0.6 micro-credit, rounded up once
    assert admin_api.balance(wallet_id) == 10 - D(record["cost"])


# -- no upstream usage: the gateway counts -----------------------------------------------------
async def test_non_stream_without_usage_is_counted_with_tiktoken(
    gateway: GatewayProcess,
    admin_api: Admin,
    upstream: UpstreamServer,
    account: tuple[str, openai.AsyncOpenAI],
) -> None:
    wallet_id, client = account
    answer, request_id = await chat(
        client, messages=CONVERSATION, script={"words": 7, "usage": False}
    )
    assert answer.usage is None or answer.usage.completion_tokens == 7
    admin_api.assert_charged(
        gateway,
        wallet_id,
        request_id,
        model="gpt-4o-mini",
        prompt=chat_prompt_tokens(CONVERSATION, "o200k_base"),
        completion=7,
    )
    admin_api.assert_books_balance(wallet_id)


@pytest.mark.parametrize("include_usage", [False, True], ids=["plain", "include_usage"])
async def test_stream_without_usage_is_counted_from_the_deltas(
    gateway: GatewayProcess,
    admin_api: Admin,
    upstream: UpstreamServer,
    account: tuple[str, openai.AsyncOpenAI],
    include_usage: bool,
) -> None:
    wallet_id, client = account
    params = {"stream_options": {"include_usage": True}} if include_usage else {}
    chunks, request_id = await chat_stream(
        client, messages=CONVERSATION, script={"words": 9, "usage": False}, **params
    )
    assert text_of(chunks) == answer_text(9)
    admin_api.assert_charged(
        gateway,
        wallet_id,
        request_id,
        model="gpt-4o-mini",
        prompt=chat_prompt_tokens(CONVERSATION, "o200k_base"),
        completion=9,
    )
    admin_api.assert_books_balance(wallet_id)


@pytest.mark.parametrize(
    ("model", "encoding_name"),
    [
        ("gpt-4o-mini", "o200k_base"),  # the route's tokenizer
        ("legacy", "cl100k_base"),  # upstream_model gpt-4
        ("gpt-4", "cl100k_base"),  # model gpt-4, upstream_model unknown to tiktoken
        ("mystery", "o200k_base"),  # neither known
    ],
)
async def test_tokenizer_is_chosen_per_route(
    gateway: GatewayProcess,
    admin_api: Admin,
    upstream: UpstreamServer,
    account: tuple[str, openai.AsyncOpenAI],
    model: str,
    encoding_name: str,
) -> None:
    wallet_id, client = account
    word = " Grüße"  # "Grüße Grüße ..." counts differently in cl100k_base and o200k_base
    assert count("Grüße" + word * 5, "cl100k_base") != count("Grüße" + word * 5, "o200k_base")
    assert chat_prompt_tokens(CONVERSATION, "cl100k_base") != chat_prompt_tokens(
        CONVERSATION, "o200k_base"
    )
    chunks, request_id = await chat_stream(
        client, model, messages=CONVERSATION, script={"words": 6, "word": word, "usage": False}
    )
    completion_text = text_of(chunks)
    admin_api.assert_charged(
        gateway,
        wallet_id,
        request_id,
        model=model,
        prompt=chat_prompt_tokens(CONVERSATION, encoding_name),
        completion=count(completion_text, encoding_name),
    )


# -- the other endpoints -----------------------------------------------------------------------
async def test_completions_are_metered(
    gateway: GatewayProcess,
    admin_api: Admin,
    upstream: UpstreamServer,
    account: tuple[str, openai.AsyncOpenAI],
) -> None:
    wallet_id, client = account
    raw = await client.completions.with_raw_response.create(
        model="gpt-4o-mini",
        prompt="hello hello",
        extra_body={"script": {"words": 3, "prompt_tokens": 20, "completion_tokens": 30}},
    )
    assert raw.parse().choices[0].text == answer_text(3)
    assert upstream.last.path == "/v1/completions"
    assert upstream.last.body["model"] == "up-model"
    admin_api.assert_charged(
        gateway,
        wallet_id,
        raw.headers["x-request-id"],
        model="gpt-4o-mini",
        prompt=20,
        completion=30,
    )

    raw_stream = await client.completions.with_raw_response.create(
        model="gpt-4o-mini",
        prompt="hello hello",
        stream=True,
        extra_body={"script": {"words": 4, "usage": False}},
    )
    chunks = [chunk async for chunk in raw_stream.parse()]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == answer_text(4)
    assert all(chunk.usage is None for chunk in chunks)
    admin_api.assert_charged(
        gateway,
        wallet_id,
        raw_stream.headers["x-request-id"],
        model="gpt-4o-mini",
        prompt=2,  # "hello hello": a plain prompt has no message overhead
        completion=4,
    )
    admin_api.assert_books_balance(wallet_id)


async def test_embeddings_are_metered(
    gateway: GatewayProcess,
    admin_api: Admin,
    upstream: UpstreamServer,
    account: tuple[str, openai.AsyncOpenAI],
) -> None:
    wallet_id, client = account
    raw = await client.embeddings.with_raw_response.create(
        model="gpt-4o-mini", input=["hello", "hello hello"], extra_body={"script": {}}
    )
    embeddings = raw.parse()
    assert len(embeddings.data) == 2
    assert embeddings.data[0].embedding == [0.25, -0.5, 0.125, 1.0]
    assert upstream.last.path == "/v1/embeddings"
    admin_api.assert_charged(
        gateway,
        wallet_id,
        raw.headers["x-request-id"],
        model="gpt-4o-mini",
        prompt=DEFAULT_PROMPT_TOKENS,
        completion=0,
    )

    uncounted = await client.embeddings.with_raw_response.create(
        model="gpt-4o-mini",
        input=["hello", "hello hello"],
        extra_body={"script": {"usage": False}},
    )
    admin_api.assert_charged(
        gateway,
        wallet_id,
        uncounted.headers["x-request-id"],
        model="gpt-4o-mini",
        prompt=3,  # the input texts' tokens
        completion=0,
    )
    admin_api.assert_books_balance(wallet_id)


# -- n > 1 and tools pass through and are metered ----------------------------------------------
async def test_n_choices_pass_through_and_are_all_billed(
    gateway: GatewayProcess,
    admin_api: Admin,
    upstream: UpstreamServer,
    account: tuple[str, openai.AsyncOpenAI],
) -> None:
    wallet_id, client = account
    answer, request_id = await chat(client, n=3, script={"words": 2, "usage": True})
    assert [choice.index for choice in answer.choices] == [0, 1, 2]
    assert upstream.last.body["n"] == 3
    admin_api.assert_charged(
        gateway,
        wallet_id,
        request_id,
        model="gpt-4o-mini",
        prompt=DEFAULT_PROMPT_TOKENS,
        completion=6,
    )

    chunks, request_id = await chat_stream(client, n=2, script={"words": 5, "usage": False})
    assert text_of(chunks, 0) == text_of(chunks, 1) == answer_text(5)
    admin_api.assert_charged(
        gateway,
        wallet_id,
        request_id,
        model="gpt-4o-mini",
        prompt=HELLO_TOKENS,
        completion=10,  # both choices' tokens, as OpenAI bills them
    )
    admin_api.assert_books_balance(wallet_id)


TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


async def test_tool_calls_pass_through_and_are_metered(
    gateway: GatewayProcess,
    admin_api: Admin,
    upstream: UpstreamServer,
    account: tuple[str, openai.AsyncOpenAI],
) -> None:
    wallet_id, client = account
    arguments = '{"city": "Paris", "unit": "celsius"}'
    answer, request_id = await chat(
        client,
        tools=TOOLS,
        tool_choice="auto",
        script={
            "tool_call": {"arguments": arguments},
            "prompt_tokens": 70,
            "completion_tokens": 12,
        },
    )
    call = answer.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.arguments == arguments  # type: ignore[union-attr]
    assert upstream.last.body["tools"] == TOOLS
    assert upstream.last.body["tool_choice"] == "auto"
    admin_api.assert_charged(
        gateway, wallet_id, request_id, model="gpt-4o-mini", prompt=70, completion=12
    )

    chunks, request_id = await chat_stream(
        client,
        tools=TOOLS,
        script={"tool_call": {"arguments": arguments, "pieces": 5}, "usage": False},
    )
    streamed = "".join(
        call.function.arguments or ""
        for chunk in chunks
        for choice in chunk.choices
        for call in choice.delta.tool_calls or []
        if call.function is not None
    )
    assert streamed == arguments
    record = admin_api.usage_record(request_id)
    assert record["completion_tokens"] >= count(arguments), "tool-call arguments are counted"
    assert record["prompt_tokens"] > HELLO_TOKENS, "the tool definitions are part of the prompt"
    admin_api.assert_charged(
        gateway,
        wallet_id,
        request_id,
        model="gpt-4o-mini",
        prompt=record["prompt_tokens"],
        completion=record["completion_tokens"],
    )
    admin_api.assert_books_balance(wallet_id)


async def test_the_demo_backend_streams_an_answer_and_bills_it(
    gateway: GatewayProcess, admin_api: Admin, account: tuple[str, openai.AsyncOpenAI]
) -> None:
    wallet_id, client = account
    chunks, request_id = await chat_stream(client, "demo", messages=HELLO)
    text = text_of(chunks)
    assert len(chunks) > 2
    assert text.strip()
    record = admin_api.usage_record(request_id)
    assert record["backend"] == "demo"
    assert record["completion_tokens"] > 0
    admin_api.assert_charged(
        gateway,
        wallet_id,
        request_id,
        model="demo",
        prompt=record["prompt_tokens"],
        completion=record["completion_tokens"],
    )
    assert admin_api.balance(wallet_id) < 10

    answer, request_id = await chat(client, "demo")
    assert answer.choices[0].message.content
    assert admin_api.usage_record(request_id)["completion_tokens"] > 0
    admin_api.assert_books_balance(wallet_id)
