"""OpenAI's Responses API (``POST /v1/responses``) through the gateway, with the real openai
SDK and OpenAI's Agents SDK: translated into chat completions for a backend that speaks only
chat (``chat``), relayed as is to one that speaks Responses (``native``), metered by the same
money rules as chat.

The module runs a gateway of its own (the shared one has no Responses-native backend). Prices
are credits per 1M tokens, so at "1" a token costs 0.000001 credit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel

from e2e.helpers import (
    HELLO_TOKENS,
    assert_error,
    assert_error_event,
    eventually,
    import_or_skip,
    parse_sse,
)
from gateway_proc import Admin, D, GatewayFactory, GatewayProcess
from upstream import DEFAULT_PROMPT_TOKENS, DEFAULT_TOOL, UpstreamServer, answer_text

pytestmark = pytest.mark.e2e

PRICES = {"input_price": "1", "output_price": "2", "cached_input_price": "0.5"}
COSTLY = {"input_price": "1000", "output_price": "1000"}  # a token costs 0.001 credit
ROUTES: list[dict[str, Any]] = [
    {"model": "resp-chat", "backend": "chat", "upstream_model": "up-chat", **PRICES},
    {"model": "resp-native", "backend": "native", "upstream_model": "up-native", **PRICES},
    {"model": "resp-costly", "backend": "chat", **COSTLY},
    {"model": "resp-costly-native", "backend": "native", **COSTLY},
    # one model on both kinds of backend: the native one is cheaper, so tried first
    {"model": "resp-mixed", "backend": "native", "input_price": "1", "output_price": "1"},
    {"model": "resp-mixed", "backend": "chat", "input_price": "1", "output_price": "2"},
    {"model": "resp-demo", "backend": "demo", "input_price": "1", "output_price": "2"},
]
for _route in ROUTES:
    _route.setdefault("tokenizer", "o200k_base")

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
    "strict": True,
}


# -- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chat_up() -> Iterator[UpstreamServer]:
    with UpstreamServer("chat") as server:
        yield server


@pytest.fixture(scope="module")
def native_up() -> Iterator[UpstreamServer]:
    with UpstreamServer("native") as server:
        yield server


@pytest.fixture(scope="module")
def gw(
    chat_up: UpstreamServer, native_up: UpstreamServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    factory = GatewayFactory(tmp_path_factory.mktemp("responses-gateway"))
    backends = [
        {"name": "chat", "base_url": chat_up.url, "api_key_env": "UPSTREAM_A_KEY"},
        {
            "name": "native",
            "base_url": native_up.url,
            "api_key_env": "UPSTREAM_B_KEY",
            "responses_api": True,
        },
        {"name": "demo", "kind": "demo", "demo_delay_s": 0},
    ]
    try:
        yield factory(
            backends=backends,
            routes=ROUTES,
            routing={"failure_threshold": 1000, "cooldown_s": 1},
        )
    finally:
        factory.close()


@pytest.fixture(scope="module")
def books(gw: GatewayProcess) -> Iterator[Admin]:
    with gw.admin() as api:
        yield api


@pytest.fixture
def ups(chat_up: UpstreamServer, native_up: UpstreamServer) -> Iterator[None]:
    chat_up.reset()
    native_up.reset()
    yield
    chat_up.reset()
    native_up.reset()


@pytest.fixture
def wallet(books: Admin, ups: None) -> Callable[..., tuple[str, str]]:
    """``wallet(balance="10") -> (wallet_id, secret)``."""

    def make(balance: object = "10") -> tuple[str, str]:
        wallet_id = books.make_wallet(balance)
        _key_id, secret = books.make_key(wallet_id)
        return wallet_id, secret

    return make


@pytest.fixture
async def client(gw: GatewayProcess) -> AsyncIterator[Callable[[str], openai.AsyncOpenAI]]:
    made: list[openai.AsyncOpenAI] = []

    def make(secret: str) -> openai.AsyncOpenAI:
        made.append(
            openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=secret, max_retries=0, timeout=30.0)
        )
        return made[-1]

    yield make
    for one in made:
        await one.close()


@pytest.fixture
async def http(gw: GatewayProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gw.url, timeout=30.0, trust_env=False) as one:
        yield one


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def stream_events(
    http: httpx.AsyncClient, secret: str, body: dict[str, Any]
) -> tuple[list[dict[str, Any]], str, str]:
    """A raw streamed ``/v1/responses``: its events, request id and body text."""
    async with http.stream(
        "POST", "/v1/responses", json={**body, "stream": True}, headers=bearer(secret)
    ) as response:
        assert response.status_code == 200, await response.aread()
        text = (await response.aread()).decode()
        return parse_sse(text), response.headers["x-request-id"], text


def assert_sequenced(events: list[dict[str, Any]]) -> None:
    numbers = [e["sequence_number"] for e in events]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), numbers


# -- translated for a chat-only backend -----------------------------------------------------------
async def test_non_stream_is_translated_to_chat_and_billed(
    gw: GatewayProcess, books: Admin, chat_up: UpstreamServer, wallet: Any, client: Any
) -> None:
    wallet_id, secret = wallet()
    raw = await client(secret).responses.with_raw_response.create(
        model="resp-chat",
        instructions="Be brief.",
        input="hello",
        temperature=0.5,
        metadata={"app": "test"},
        store=True,
        extra_body={"script": {"words": 5, "cached_tokens": 4}},
    )
    response = raw.parse()
    assert response.object == "response"
    assert response.id.startswith("resp_")
    assert response.status == "completed"
    assert response.output_text == answer_text(5)
    assert [item.type for item in response.output] == ["message"]
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (DEFAULT_PROMPT_TOKENS, 5)
    assert response.usage.input_tokens_details.cached_tokens == 4
    assert response.usage.total_tokens == DEFAULT_PROMPT_TOKENS + 5

    sent = chat_up.last
    assert sent.path == "/v1/chat/completions"
    assert sent.body["model"] == "up-chat"
    assert sent.body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello"},
    ]
    assert sent.body["temperature"] == 0.5
    assert sent.body["max_tokens"] == 4096, "no bound asked: the default, which is reserved"
    for dropped in ("input", "instructions", "metadata", "store", "stream"):
        assert dropped not in sent.body
    assert sent.body["script"] == {"words": 5, "cached_tokens": 4}, "unknown fields pass"
    assert sent.headers["Authorization"] == "Bearer sk-upstream-a"

    books.assert_charged(
        gw,
        wallet_id,
        raw.headers["x-request-id"],
        model="resp-chat",
        prompt=DEFAULT_PROMPT_TOKENS,
        completion=5,
        cached=4,
    )
    record = books.usage_record(raw.headers["x-request-id"])
    assert (record["endpoint"], record["backend"], record["stream"]) == ("responses", "chat", False)
    books.assert_books_balance(wallet_id)


async def test_stream_is_translated_into_responses_events_and_billed(
    gw: GatewayProcess, books: Admin, chat_up: UpstreamServer, wallet: Any, http: Any
) -> None:
    wallet_id, secret = wallet()
    events, request_id, text = await stream_events(
        http, secret, {"model": "resp-chat", "input": "hello", "script": {"words": 4}}
    )
    assert "event: response.created\ndata: " in text, "events are named, as OpenAI names them"
    types = [e["type"] for e in events]
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 4,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert_sequenced(events)
    assert events[0]["sequence_number"] == 0
    item_id = events[2]["item"]["id"]
    assert item_id.startswith("msg_")
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    assert all(e["item_id"] == item_id and e["output_index"] == 0 for e in deltas)
    assert "".join(e["delta"] for e in deltas) == answer_text(4)
    completed = events[-1]["response"]
    assert completed["id"] == events[0]["response"]["id"]
    assert completed["status"] == "completed"
    assert completed["output"][0]["content"][0]["text"] == answer_text(4)
    assert completed["usage"]["input_tokens"] == DEFAULT_PROMPT_TOKENS
    assert completed["usage"]["output_tokens"] == 4

    sent = chat_up.last.body
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    books.assert_charged(
        gw, wallet_id, request_id, model="resp-chat", prompt=DEFAULT_PROMPT_TOKENS, completion=4
    )
    books.assert_books_balance(wallet_id)


async def test_the_sdk_streams_a_translated_answer(
    gw: GatewayProcess, books: Admin, wallet: Any, client: Any
) -> None:
    wallet_id, secret = wallet()
    stream = await client(secret).responses.create(
        model="resp-chat", input="hello", stream=True, extra_body={"script": {"words": 6}}
    )
    text, final = "", None
    async for event in stream:
        if event.type == "response.output_text.delta":
            text += event.delta
        elif event.type == "response.completed":
            final = event.response
    assert text == answer_text(6)
    assert final is not None
    assert final.output_text == answer_text(6)
    assert final.usage is not None
    assert final.usage.output_tokens == 6
    usage = books.usage(wallet_id=wallet_id)
    assert [(u["prompt_tokens"], u["completion_tokens"]) for u in usage] == [
        (DEFAULT_PROMPT_TOKENS, 6)
    ]
    assert D(books.assert_books_balance(wallet_id)["balance"]) == Decimal(10) - gw.cost(
        "resp-chat", DEFAULT_PROMPT_TOKENS, 6
    )


async def test_without_upstream_usage_the_gateway_counts(
    gw: GatewayProcess, books: Admin, chat_up: UpstreamServer, wallet: Any, client: Any
) -> None:
    """The prompt by OpenAI's recipe over the input items (``[{"role": "user", "content":
    "hello"}]`` is 8 tokens, as its chat twin), the completion from the text."""
    wallet_id, secret = wallet()
    c = client(secret)
    raw = await c.responses.with_raw_response.create(
        model="resp-chat",
        input=[{"role": "user", "content": "hello"}],
        extra_body={"script": {"words": 7, "usage": False}},
    )
    assert raw.parse().usage.input_tokens == HELLO_TOKENS  # type: ignore[union-attr]
    books.assert_charged(
        gw,
        wallet_id,
        raw.headers["x-request-id"],
        model="resp-chat",
        prompt=HELLO_TOKENS,
        completion=7,
    )
    stream = await c.responses.create(
        model="resp-chat",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "hello"}]}],
        stream=True,
        extra_body={"script": {"words": 3, "usage": False}},
    )
    finals = [e.response for e in [e async for e in stream] if e.type == "response.completed"]
    assert finals[0].usage is not None
    assert (finals[0].usage.input_tokens, finals[0].usage.output_tokens) == (HELLO_TOKENS, 3)
    assert chat_up.last.body["messages"] == [{"role": "user", "content": "hello"}]
    books.assert_books_balance(wallet_id)


async def test_max_output_tokens_becomes_the_chat_bound(
    books: Admin, chat_up: UpstreamServer, wallet: Any, client: Any
) -> None:
    wallet_id, secret = wallet()
    response = await client(secret).responses.create(
        model="resp-chat",
        input="hello",
        max_output_tokens=3,
        extra_body={"script": {"words": 10, "ignore_max_tokens": False}},
    )
    assert chat_up.last.body["max_tokens"] == 3
    assert "max_output_tokens" not in chat_up.last.body
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == answer_text(3)
    books.assert_books_balance(wallet_id)


async def test_function_tools_round_trip_through_a_chat_backend(
    books: Admin, chat_up: UpstreamServer, wallet: Any, client: Any
) -> None:
    wallet_id, secret = wallet()
    c = client(secret)
    first = await c.responses.create(
        model="resp-chat",
        input="What is the weather in Paris?",
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice="auto",
        parallel_tool_calls=False,
        extra_body={"script": {"tool_call": True}},
    )
    sent = chat_up.last.body
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city.",
                "parameters": WEATHER_TOOL["parameters"],
                "strict": True,
            },
        }
    ]
    assert (sent["tool_choice"], sent["parallel_tool_calls"]) == ("auto", False)
    [call] = first.output
    assert call.type == "function_call"
    assert (call.name, call.arguments, call.call_id) == (
        "get_weather",
        DEFAULT_TOOL["arguments"],
        "call_0",
    )
    assert call.id is not None
    assert call.id.startswith("fc_")
    assert first.status == "completed"

    second = await c.responses.create(
        model="resp-chat",
        input=[
            {"role": "user", "content": "What is the weather in Paris?"},
            call.model_dump(exclude_none=True),  # type: ignore[list-item]
            {"type": "function_call_output", "call_id": "call_0", "output": "22 C, sunny"},
        ],
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice={"type": "function", "name": "get_weather"},
        extra_body={"script": {"words": 3}},
    )
    assert second.output_text == answer_text(3)
    assert chat_up.last.body["messages"] == [
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_0",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": DEFAULT_TOOL["arguments"]},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_0", "content": "22 C, sunny"},
    ]
    assert chat_up.last.body["tool_choice"] == {
        "type": "function",
        "function": {"name": "get_weather"},
    }
    usage = books.usage(wallet_id=wallet_id)
    assert len(usage) == 2
    assert all(u["status"] == "ok" for u in usage)
    books.assert_books_balance(wallet_id)


async def test_a_streamed_function_call_is_translated(
    gw: GatewayProcess, books: Admin, wallet: Any, http: Any
) -> None:
    wallet_id, secret = wallet()
    arguments = DEFAULT_TOOL["arguments"]
    events, request_id, _ = await stream_events(
        http,
        secret,
        {
            "model": "resp-chat",
            "input": "weather?",
            "tools": [WEATHER_TOOL],
            "script": {"tool_call": {"pieces": 3}},
        },
    )
    types = [e["type"] for e in events]
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        *["response.function_call_arguments.delta"] * 3,
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert_sequenced(events)
    added = events[2]["item"]
    assert (added["type"], added["name"], added["call_id"], added["arguments"]) == (
        "function_call",
        "get_weather",
        "call_0",
        "",
    )
    deltas = [e["delta"] for e in events if e["type"].endswith("arguments.delta")]
    assert "".join(deltas) == arguments
    assert events[-3]["arguments"] == arguments
    assert events[-2]["item"]["arguments"] == arguments
    assert events[-1]["response"]["output"][0]["arguments"] == arguments
    books.assert_charged(
        gw, wallet_id, request_id, model="resp-chat", prompt=DEFAULT_PROMPT_TOKENS, completion=3
    )


class Weather(BaseModel):
    city: str
    degrees: int


async def test_structured_output_becomes_response_format(
    books: Admin, chat_up: UpstreamServer, wallet: Any, client: Any
) -> None:
    wallet_id, secret = wallet()
    answer = '{"city":"Paris","degrees":22}'
    parsed = await client(secret).responses.parse(
        model="resp-chat",
        input="Weather in Paris as JSON",
        text_format=Weather,
        extra_body={"script": {"words": 1, "word": answer}},
    )
    assert parsed.output_parsed == Weather(city="Paris", degrees=22)
    fmt = chat_up.last.body["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["name"] == "Weather"
    assert fmt["json_schema"]["strict"] is True
    assert set(fmt["json_schema"]["schema"]["properties"]) == {"city", "degrees"}
    assert "text" not in chat_up.last.body

    await client(secret).responses.create(
        model="resp-chat",
        input="JSON please",
        text={"format": {"type": "json_object"}},
        extra_body={"script": {"words": 1, "word": "{}"}},
    )
    assert chat_up.last.body["response_format"] == {"type": "json_object"}
    books.assert_books_balance(wallet_id)


async def test_images_reach_a_chat_backend_as_image_parts(
    chat_up: UpstreamServer, wallet: Any, client: Any
) -> None:
    _wallet_id, secret = wallet()
    await client(secret).responses.create(
        model="resp-chat",
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is this?"},
                    {
                        "type": "input_image",
                        "image_url": "data:image/png;base64,AAAA",
                        "detail": "low",
                    },
                ],
            }
        ],
    )
    assert chat_up.last.body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {
                    "type": "image_url",
                    "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"},
                },
            ],
        }
    ]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"previous_response_id": "resp_123"}, "previous_response_id"),
        ({"conversation": "conv_123"}, "conversation"),
        ({"background": True}, "background"),
        ({"tools": [{"type": "web_search"}]}, "tools[0]"),
        ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools[0]"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]"),
    ],
)
async def test_what_cannot_be_translated_is_a_clear_400(
    books: Admin, chat_up: UpstreamServer, wallet: Any, http: Any, extra: dict[str, Any], param: str
) -> None:
    wallet_id, secret = wallet()
    body = {"model": "resp-chat", "input": "hello", **extra}
    response = await http.post("/v1/responses", json=body, headers=bearer(secret))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert "chat completions" in error["message"]
    assert "cannot be translated" in error["message"]
    if "stored server-side" in error["message"]:
        assert "store: false" in error["message"], "it says what to do instead"
    assert chat_up.requests == [], "nothing reached the backend"
    assert D(books.assert_books_balance(wallet_id)["balance"]) == 10, "nothing was charged"


async def test_the_sdk_sees_the_400_for_previous_response_id(wallet: Any, client: Any) -> None:
    _wallet_id, secret = wallet()
    with pytest.raises(openai.BadRequestError) as caught:
        await client(secret).responses.create(
            model="resp-chat", input="and then?", previous_response_id="resp_abc"
        )
    assert caught.value.param == "previous_response_id"
    assert "previous_response_id" in caught.value.message


@pytest.mark.parametrize(
    "body",
    [
        {"model": "resp-chat"},
        {"model": "resp-chat", "input": 42},
        {"model": "resp-chat", "input": ["hello"]},
        {"model": "resp-chat", "input": "hi", "instructions": ["x"]},
        {"input": "hi"},
    ],
)
async def test_malformed_requests_are_400(wallet: Any, http: Any, body: dict[str, Any]) -> None:
    _wallet_id, secret = wallet()
    response = await http.post("/v1/responses", json=body, headers=bearer(secret))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"


# -- native ------------------------------------------------------------------------------------
async def test_native_backend_gets_the_request_as_is_and_its_usage_is_billed(
    gw: GatewayProcess, books: Admin, native_up: UpstreamServer, wallet: Any, client: Any
) -> None:
    """Reasoning tokens are part of ``output_tokens``: billed as output, once."""
    wallet_id, secret = wallet()
    raw = await client(secret).responses.with_raw_response.create(
        model="resp-native",
        input="hello",
        previous_response_id="resp_earlier",
        store=True,
        tools=[{"type": "web_search"}],
        extra_body={"script": {"words": 5, "cached_tokens": 6, "reasoning_tokens": 20}},
    )
    response = raw.parse()
    assert response.output_text == answer_text(5)
    sent = native_up.last
    assert sent.path == "/v1/responses"
    assert sent.body["model"] == "up-native"
    for name in ("previous_response_id", "store", "tools", "input"):
        assert name in sent.body, f"{name} passes through to a native backend"
    assert "stream_options" not in sent.body
    assert "max_tokens" not in sent.body
    assert sent.headers["Authorization"] == "Bearer sk-upstream-b"
    books.assert_charged(
        gw,
        wallet_id,
        raw.headers["x-request-id"],
        model="resp-native",
        prompt=DEFAULT_PROMPT_TOKENS,
        completion=25,
        cached=6,
    )
    books.assert_books_balance(wallet_id)


async def test_native_stream_is_relayed_and_billed_from_response_completed(
    gw: GatewayProcess, books: Admin, native_up: UpstreamServer, wallet: Any, http: Any
) -> None:
    wallet_id, secret = wallet()
    events, request_id, text = await stream_events(
        http,
        secret,
        {"model": "resp-native", "input": "hello", "script": {"words": 4, "reasoning_tokens": 3}},
    )
    assert [e["type"] for e in events][-1] == "response.completed"
    assert_sequenced(events)
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert "".join(deltas) == answer_text(4)
    assert events[-1]["response"]["usage"]["output_tokens"] == 7
    assert "event: response.output_text.delta\n" in text, "relayed as the backend sent it"
    assert "stream_options" not in native_up.last.body
    books.assert_charged(
        gw, wallet_id, request_id, model="resp-native", prompt=DEFAULT_PROMPT_TOKENS, completion=7
    )
    books.assert_books_balance(wallet_id)


async def test_native_stream_without_usage_is_counted_from_the_deltas(
    gw: GatewayProcess, books: Admin, wallet: Any, client: Any
) -> None:
    wallet_id, secret = wallet()
    raw = await client(secret).responses.with_raw_response.create(
        model="resp-native",
        input="hello",
        stream=True,
        extra_body={"script": {"words": 9, "usage": False}},
    )
    [event async for event in raw.parse()]
    books.assert_charged(
        gw,
        wallet_id,
        raw.headers["x-request-id"],
        model="resp-native",
        prompt=HELLO_TOKENS,
        completion=9,
    )


async def test_a_failing_native_backend_fails_over_to_a_translated_one(
    gw: GatewayProcess,
    books: Admin,
    native_up: UpstreamServer,
    chat_up: UpstreamServer,
    wallet: Any,
    client: Any,
) -> None:
    wallet_id, secret = wallet()
    native_up.fail_next = 1
    raw = await client(secret).responses.with_raw_response.create(
        model="resp-mixed", input="hello", extra_body={"script": {"words": 2}}
    )
    assert raw.parse().output_text == answer_text(2)
    assert [r.path for r in native_up.requests] == ["/v1/responses"]
    assert [r.path for r in chat_up.requests] == ["/v1/chat/completions"]
    books.assert_charged(
        gw,
        wallet_id,
        raw.headers["x-request-id"],
        model="resp-mixed",
        prompt=DEFAULT_PROMPT_TOKENS,
        completion=2,
        backend="chat",
    )
    # previous_response_id cannot go to the chat route: only the native one is tried
    native_up.reset()
    chat_up.reset()
    native_up.fail_next = 1
    with pytest.raises(openai.InternalServerError):
        await client(secret).responses.create(
            model="resp-mixed", input="hello", previous_response_id="resp_1"
        )
    assert chat_up.requests == []
    books.assert_books_balance(wallet_id)


# -- cut-off, errors, disconnect ---------------------------------------------------------------
@pytest.mark.parametrize("model", ["resp-costly", "resp-costly-native"])
async def test_a_stream_cut_off_at_the_wallet_limit_ends_with_an_error_event(
    books: Admin, wallet: Any, http: Any, model: str
) -> None:
    """0.03 credit pays for 30 tokens: 8 of prompt and 22 of answer; the backend would send
    100 words and report no usage."""
    wallet_id, secret = wallet("0.03")
    events, request_id, text = await stream_events(
        http,
        secret,
        {
            "model": model,
            "input": [{"role": "user", "content": "hello"}],
            "script": {"words": 100, "usage": False, "chunk_delay_s": 0.001},
        },
    )
    last = events[-1]
    assert last["type"] == "error", events[-3:]
    assert text.rstrip().split("\n\n")[-1].startswith("event: error\n")
    assert last["code"] == "insufficient_quota"
    assert "wallet" in last["message"]
    assert_error_event(last, "insufficient_quota", "insufficient_quota")
    assert_sequenced(events)
    assert not any(e["type"] == "response.completed" for e in events)
    delivered = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    words = delivered.split()
    assert 1 <= len(words) <= 30 - HELLO_TOKENS
    record = books.usage_record(request_id)
    assert record["status"] == "cut_off"
    assert record["completion_tokens"] == len(words), "what was delivered is charged"
    assert D(record["cost"]) == (HELLO_TOKENS + len(words)) * Decimal("0.001")
    assert D(books.assert_books_balance(wallet_id)["balance"]) >= 0


async def test_the_sdk_raises_on_the_cut_off(books: Admin, wallet: Any, client: Any) -> None:
    """0.02 credit pays for 20 tokens: 8 of prompt and 12 of answer; what the SDK was
    delivered before it raised the error event is what is charged."""
    wallet_id, secret = wallet("0.02")
    raw = await client(secret).responses.with_raw_response.create(
        model="resp-costly", input="hello", stream=True, extra_body={"script": {"words": 100}}
    )
    request_id = raw.headers["x-request-id"]
    stream = raw.parse()
    seen: list[Any] = []

    async def consume() -> None:
        async for event in stream:
            seen.append(event)

    with pytest.raises(openai.APIError) as caught:
        await consume()
    assert "wallet" in caught.value.message
    assert_error_event({"error": caught.value.body}, "insufficient_quota", "insufficient_quota")
    delivered = "".join(e.delta for e in seen if e.type == "response.output_text.delta")
    words = delivered.split()
    assert 1 <= len(words) <= 20 - HELLO_TOKENS
    record = books.usage_record(request_id)
    assert record["status"] == "cut_off", record
    assert (record["prompt_tokens"], record["completion_tokens"]) == (HELLO_TOKENS, len(words))
    assert D(record["cost"]) == (HELLO_TOKENS + len(words)) * Decimal("0.001"), record
    wallet_after = books.assert_books_balance(wallet_id)
    assert D(wallet_after["balance"]) == Decimal("0.02") - D(record["cost"]) >= 0


async def test_a_backend_dropping_mid_stream_ends_with_an_error_event(
    gw: GatewayProcess, books: Admin, wallet: Any, http: Any
) -> None:
    wallet_id, secret = wallet()
    events, request_id, _ = await stream_events(
        http,
        secret,
        {"model": "resp-chat", "input": "hello", "script": {"words": 50, "drop_after": 5}},
    )
    assert events[-1]["type"] == "error"
    assert events[-1]["code"] == "upstream_error"
    assert_sequenced(events)
    # no usage came before the drop: the gateway's own count, of the five words delivered
    books.assert_charged(
        gw,
        wallet_id,
        request_id,
        model="resp-chat",
        prompt=HELLO_TOKENS,
        completion=5,
        status="upstream_error",
    )
    books.assert_books_balance(wallet_id)


async def test_a_client_that_disconnects_pays_for_what_was_generated(
    gw: GatewayProcess, books: Admin, chat_up: UpstreamServer, wallet: Any, client: Any
) -> None:
    wallet_id, secret = wallet()
    raw = await client(secret).responses.with_raw_response.create(
        model="resp-chat",
        input=[{"role": "user", "content": "hello"}],
        stream=True,
        extra_body={"script": {"words": 400, "chunk_delay_s": 0.02}},
    )
    request_id = raw.headers["x-request-id"]
    stream = raw.parse()
    received = 0
    async for event in stream:
        if event.type == "response.output_text.delta":
            received += 1
        if received == 5:
            break
    await stream.close()

    # the gateway reads on, relaying nothing, for up to [metering] drain_s (5 s by default)
    # for the backend's usage; the stream lasts 8 s, so it closes the upstream request then
    upstream = await eventually(
        lambda: chat_up.streams[-1],
        lambda s: not s.open,
        within=5 + 5,
        what="the upstream stream to close",
    )
    assert upstream.disconnected, "the gateway closed the upstream request"
    assert upstream.chunks_sent < 400
    record = books.usage_record(request_id)
    assert record["status"] == "client_disconnected"
    assert received <= record["completion_tokens"] <= upstream.chunks_sent
    books.assert_charged(
        gw,
        wallet_id,
        request_id,
        model="resp-chat",
        prompt=HELLO_TOKENS,
        completion=record["completion_tokens"],
        status="client_disconnected",
    )
    books.assert_books_balance(wallet_id)


async def test_a_wallet_that_cannot_pay_gets_402_in_the_error_shape(wallet: Any, http: Any) -> None:
    _wallet_id, secret = wallet(None)
    response = await http.post(
        "/v1/responses", json={"model": "resp-chat", "input": "hi"}, headers=bearer(secret)
    )
    assert_error(response, 402, "insufficient_quota", "insufficient_quota")


async def test_the_demo_supplier_answers_the_responses_api(
    books: Admin, wallet: Any, client: Any
) -> None:
    wallet_id, secret = wallet()
    response = await client(secret).responses.create(model="resp-demo", input="Hello!")
    assert "demo supplier" in response.output_text
    stream = await client(secret).responses.create(model="resp-demo", input="Hi", stream=True)
    text = "".join([e.delta async for e in stream if e.type == "response.output_text.delta"])
    assert "demo supplier" in text
    assert len(books.usage(wallet_id=wallet_id)) == 2
    books.assert_books_balance(wallet_id)


# -- OpenAI's Agents SDK -------------------------------------------------------------------------
@pytest.mark.parametrize("streamed", [False, True])
async def test_an_agent_with_a_function_tool_runs_to_its_answer(
    gw: GatewayProcess,
    books: Admin,
    chat_up: UpstreamServer,
    wallet: Any,
    client: Any,
    streamed: bool,
) -> None:
    """The scripted chat backend calls the tool first, then answers once it sees the result;
    the wallet pays for both model calls."""
    agents = import_or_skip("agents")
    agents.set_tracing_disabled(True)
    calls: list[tuple[str, str]] = []

    @agents.function_tool
    def get_weather(city: str, unit: str) -> str:
        """The weather in a city."""
        calls.append((city, unit))
        return f"22 degrees {unit} in {city}"

    wallet_id, secret = wallet()
    agent = agents.Agent(
        name="weather",
        instructions="Answer with the weather.",
        tools=[get_weather],
        model=agents.OpenAIResponsesModel(model="resp-chat", openai_client=client(secret)),
        model_settings=agents.ModelSettings(
            extra_body={"script": {"tool_call_first": True, "words": 3}}
        ),
    )
    if streamed:
        result = agents.Runner.run_streamed(agent, "What is the weather in Paris?")
        [event async for event in result.stream_events()]
    else:
        result = await agents.Runner.run(agent, "What is the weather in Paris?")
    assert result.final_output == answer_text(3)
    assert calls == [("Paris", "celsius")]

    first, second = chat_up.requests
    assert first.body["messages"][0] == {"role": "system", "content": "Answer with the weather."}
    assert first.body["tools"][0]["function"]["name"] == "get_weather"
    tool_message = second.body["messages"][-1]
    assert tool_message["role"] == "tool"
    assert tool_message["tool_call_id"] == "call_0"
    assert "22 degrees celsius in Paris" in tool_message["content"]
    usage = books.usage(wallet_id=wallet_id)
    assert len(usage) == 2, "both model calls are billed"
    assert all(u["status"] == "ok" and u["endpoint"] == "responses" for u in usage)
    # the tool call's arguments come in 3 pieces, the answer is 3 words: 3 tokens each
    assert [(u["prompt_tokens"], u["completion_tokens"]) for u in usage] == [
        (DEFAULT_PROMPT_TOKENS, 3)
    ] * 2
    one_call = gw.cost("resp-chat", DEFAULT_PROMPT_TOKENS, 3)
    assert D(books.assert_books_balance(wallet_id)["balance"]) == Decimal(10) - 2 * one_call


# -- LangChain's ChatOpenAI ----------------------------------------------------------------------
async def test_langchain_chat_openai_invokes_and_streams(
    gw: GatewayProcess, books: Admin, chat_up: UpstreamServer, wallet: Any
) -> None:
    """``ChatOpenAI`` on chat completions, and on the Responses API (``use_responses_api``),
    translated for the chat-only backend. (One test for both: langchain_openai caches its
    HTTP client per process, bound to the event loop of the test that made it.)"""
    langchain_openai = import_or_skip("langchain_openai")
    wallet_id, secret = wallet()
    for responses_api in (False, True):
        llm = langchain_openai.ChatOpenAI(
            model="resp-chat",
            base_url=f"{gw.url}/v1",
            api_key=secret,
            max_retries=0,
            use_responses_api=responses_api,
            extra_body={"script": {"words": 4}},
        )
        answer = await llm.ainvoke("hello")
        assert answer.text == answer_text(4)
        assert answer.usage_metadata is not None
        assert answer.usage_metadata["output_tokens"] == 4
        text = "".join([chunk.text async for chunk in llm.astream("hello")])
        assert text == answer_text(4)
    await llm.root_async_client.close()  # the shared one: its connections die with this loop
    assert {r.path for r in chat_up.requests} == {"/v1/chat/completions"}
    usage = books.usage(wallet_id=wallet_id)
    assert sorted((u["endpoint"], u["completion_tokens"]) for u in usage) == [
        ("chat.completions", 4),
        ("chat.completions", 4),
        ("responses", 4),
        ("responses", 4),
    ]
    assert D(books.assert_books_balance(wallet_id)["balance"]) == Decimal(10) - 4 * gw.cost(
        "resp-chat", DEFAULT_PROMPT_TOKENS, 4
    )
