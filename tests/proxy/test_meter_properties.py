"""The meter's promise, as a property over the real relay: for any answer a backend gives
(streamed or not; text in any of the fields that carry generated text, to any choice; any usage
block, believable or not; bound fields in the request or not; a client that reads to the end or
leaves early), whatever the client is delivered is paid for, within the wallet's and the key's
means, and a shortfall arises only from a backend counting more prompt tokens than the gateway
estimated, within that error.

The relay runs in this process over the memory store; the backend is a script of SSE events or
one JSON answer (a fake at the :class:`~gateway.proxy.upstream.Backend` boundary, no network).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway.config import parse_config
from gateway.errors import GatewayError
from gateway.metrics import Metrics
from gateway.money import MICRO, ceil_div
from gateway.pricing import Prices
from gateway.proxy.endpoints import CHAT
from gateway.proxy.leases import Leases
from gateway.proxy.ratelimit import LocalLimiter
from gateway.proxy.relay import Relay, Reply, StreamReply
from gateway.proxy.routing import Router
from gateway.proxy.upstream import Backend, UpstreamResponse
from gateway.storage.base import ApiKey
from gateway.storage.memory import MemoryStore
from gateway.tasks import TaskGroup
from gateway.tokens import TokenCounter

COUNTER = TokenCounter("o200k_base")
#: 1 micro-credit a prompt token, 2 a completion token.
PRICES = Prices(input=1_000_000, output=2_000_000, cached_input=1_000_000)
CONFIG = parse_config(
    """
[metering]
default_reserve_tokens = 64
extend_tokens = 16
drain_s = 0.5

[[backends]]
name = "b"
base_url = "http://127.0.0.1:9/v1"

[[routes]]
model = "m"
backend = "b"
input_price = "1"
output_price = "2"
tokenizer = "o200k_base"
"""
)
MESSAGES = [{"role": "user", "content": "hello"}]
ESTIMATE = COUNTER.count_chat_prompt(MESSAGES)

# -- what a backend may say ---------------------------------------------------------------------
#: The fields of a delta or message that carry generated text, and where the text goes in them.
FIELDS = ("content", "reasoning", "reasoning_content", "refusal", "tool", "tool_name", "audio")
WORDS = st.sampled_from([" hello", " world", "x", " é", " 你好", "🙂", "\n", " ", '{"a": 1}'])
TEXT = st.lists(WORDS, min_size=1, max_size=6).map("".join)


@dataclass(frozen=True)
class Piece:
    choice: int
    field: str
    text: str


def _delta(piece: Piece) -> dict[str, Any]:
    if piece.field == "tool":
        return {"tool_calls": [{"index": 0, "function": {"arguments": piece.text}}]}
    if piece.field == "tool_name":
        return {"tool_calls": [{"index": 0, "id": "c", "function": {"name": piece.text}}]}
    if piece.field == "audio":
        return {"audio": {"transcript": piece.text}}
    return {piece.field: piece.text}


def _message(pieces: list[Piece]) -> dict[str, Any]:
    """The pieces of one choice as a complete message."""
    joined: dict[str, str] = {}
    for piece in pieces:
        joined[piece.field] = joined.get(piece.field, "") + piece.text
    message: dict[str, Any] = {"role": "assistant"}
    for field in ("content", "reasoning", "reasoning_content", "refusal"):
        if field in joined:
            message[field] = joined[field]
    if "tool" in joined or "tool_name" in joined:
        function = {"name": joined.get("tool_name", ""), "arguments": joined.get("tool", "")}
        message["tool_calls"] = [{"id": "c", "type": "function", "function": function}]
    if "audio" in joined:
        message["audio"] = {"transcript": joined["audio"]}
    return message


COUNTS = st.one_of(
    st.integers(0, 400),
    st.integers(-5, -1),
    st.just(2**50),
    st.just("12"),
    st.none(),
)


@st.composite
def usages(draw: st.DrawFn) -> dict[str, Any] | None:
    if draw(st.booleans()):
        return None
    usage: dict[str, Any] = {}
    if draw(st.booleans()):  # the prompt as the backend counts it: near the estimate, or junk
        usage["prompt_tokens"] = draw(st.integers(ESTIMATE - 3, ESTIMATE + 40) | COUNTS)
    if draw(st.booleans()):
        usage["completion_tokens"] = draw(COUNTS)
    return usage


@dataclass(frozen=True)
class Scenario:
    stream: bool
    choices: int
    bounds: dict[str, Any]
    pieces: list[Piece]
    usage: dict[str, Any] | None
    done: bool  # a stream ends with [DONE]
    balance: int
    spend_limit: int | None
    leave_after: int | None  # the client reads this many chunks of a stream, then leaves


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    choices = draw(st.integers(1, 2))
    pieces = draw(
        st.lists(
            st.builds(Piece, st.integers(0, choices - 1), st.sampled_from(FIELDS), TEXT),
            max_size=40,
        )
    )
    bounds = draw(
        st.dictionaries(
            st.sampled_from(["max_tokens", "max_completion_tokens", "n_predict", "max_new_tokens"]),
            st.integers(1, 200) | st.just(-1),
            max_size=3,
        )
    )
    for name in ("max_tokens", "max_completion_tokens"):  # the API's own must be positive
        if bounds.get(name) == -1:
            del bounds[name]
    stream = draw(st.booleans())
    return Scenario(
        stream=stream,
        choices=choices,
        bounds=bounds,
        pieces=pieces,
        usage=draw(usages()),
        done=draw(st.booleans()),
        balance=draw(st.integers(0, 1_200)),
        spend_limit=draw(st.none() | st.integers(0, 600)),
        leave_after=draw(st.none() | st.integers(0, 10)) if stream else None,
    )


# -- the backend ----------------------------------------------------------------------------------
class _Scripted(UpstreamResponse):
    def __init__(self, parts: list[bytes], content_type: str) -> None:
        self.status = 200
        self.headers = {"content-type": content_type}
        self._parts = parts
        self._next = 0

    async def chunks(self) -> AsyncIterator[bytes]:
        while self._next < len(self._parts):
            self._next += 1
            await asyncio.sleep(0)
            yield self._parts[self._next - 1]

    def close(self) -> None:
        self._next = len(self._parts)


class ScriptedBackend(Backend):
    def __init__(self, scenario: Scenario) -> None:
        super().__init__(CONFIG.backend("b"))
        self.scenario = scenario
        self.bodies: list[dict[str, Any]] = []

    async def send(
        self, path: str, body: bytes, *, stream: bool, headers: Mapping[str, str]
    ) -> UpstreamResponse:
        self.bodies.append(json.loads(body))
        s = self.scenario
        if not stream:
            answer: dict[str, Any] = {
                "choices": [
                    {
                        "index": i,
                        "message": _message([p for p in s.pieces if p.choice == i]),
                        "finish_reason": "stop",
                    }
                    for i in range(s.choices)
                ]
            }
            if s.usage is not None:
                answer["usage"] = s.usage
            return _Scripted([json.dumps(answer).encode()], "application/json")
        events = [{"choices": [{"index": i, "delta": {"role": "assistant"}}]} for i in range(1)]
        events += [
            {"choices": [{"index": p.choice, "delta": _delta(p), "finish_reason": None}]}
            for p in s.pieces
        ]
        if s.usage is not None:
            events.append({"choices": [], "usage": s.usage})
        parts = [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events]
        if s.done:
            parts.append(b"data: [DONE]\n\n")
        return _Scripted(parts, "text/event-stream")


# -- what the client got --------------------------------------------------------------------------
def _texts(message: Mapping[str, Any]) -> str:
    """The generated text of a delta or message, in the fields that carry it."""
    out = [message.get(f) or "" for f in ("reasoning", "reasoning_content", "content", "refusal")]
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        out += [function.get("name") or "", function.get("arguments") or ""]
    audio = message.get("audio") or {}
    out.append(audio.get("transcript") or "")
    return "".join(out)


def _delivered(received: list[bytes], stream: bool) -> int:
    """Completion tokens the client received: each choice's text counted as a whole."""
    per_choice: dict[int, str] = {}
    if stream:
        body = b"".join(received).decode()
        for block in body.split("\n\n"):
            if not block.startswith("data: {"):
                continue
            event = json.loads(block[len("data: ") :])
            for choice in event.get("choices") or ():
                index = choice.get("index", 0)
                per_choice[index] = per_choice.get(index, "") + _texts(choice.get("delta") or {})
    else:
        for choice in json.loads(b"".join(received)).get("choices") or ():
            per_choice[choice["index"]] = _texts(choice.get("message") or {})
    return sum(COUNTER.count_text(text) for text in per_choice.values())


def _sane(value: object) -> int | None:
    return value if type(value) is int and 0 <= value <= 1 << 40 else None


# -- the property ---------------------------------------------------------------------------------
async def _run(scenario: Scenario) -> None:
    store = MemoryStore()
    await store.open()
    wallet = await store.create_wallet("w", scenario.balance)
    key = await store.create_key(
        ApiKey(
            id="key_1",
            wallet_id=wallet.id,
            name="k",
            key_hash="h",
            prefix="p",
            created_at=0.0,
            spend_limit=scenario.spend_limit,
        )
    )
    backend = ScriptedBackend(scenario)
    tasks = TaskGroup()
    relay = Relay(
        config=CONFIG,
        store=store,
        router=Router(CONFIG),
        backends={"b": backend},
        limiter=LocalLimiter(),
        metrics=Metrics(),
        tasks=tasks,
        leases=Leases(),
    )
    body: dict[str, Any] = {
        "model": "m",
        "messages": MESSAGES,
        "stream": scenario.stream,
        "n": scenario.choices,
        **scenario.bounds,
    }
    received: list[bytes] = []
    try:
        answer = await relay.handle(CHAT, key, body, {}, "req_1")
    except GatewayError as exc:  # refused up front (402, 403): nothing went upstream
        refused: GatewayError | None = exc
    else:
        refused = None
    if refused is not None:
        event(f"refused {refused.status}")
        assert refused.status in (402, 403), refused
        assert not backend.bodies
        assert await store.list_usage() == []
        return
    if isinstance(answer, Reply):
        received.append(answer.body)
    else:
        assert isinstance(answer, StreamReply)
        read = 0
        async for chunk in answer.body:
            received.append(chunk)
            read += 1
            if scenario.leave_after is not None and read > scenario.leave_after:
                break
        await answer.body.aclose()  # the client leaves (or has read it all)
    await tasks.drain()
    [usage] = await store.list_usage()
    event(f"{'stream' if scenario.stream else 'answer'} {usage.status}")
    event("shortfall" if usage.shortfall else "no shortfall")

    # 1. every request goes upstream bounded, each bound field it sent lowered to that bound
    sent = backend.bodies[-1]
    cap = sent.get("max_tokens", sent.get("max_completion_tokens"))
    assert isinstance(cap, int)
    for name in ("max_tokens", "max_completion_tokens", "n_predict", "max_new_tokens"):
        if name in scenario.bounds:
            assert 0 <= sent[name] <= cap
    # 2. nothing is delivered that the wallet and the key could not pay for
    delivered = _delivered(received, scenario.stream)
    means = (
        scenario.balance
        if scenario.spend_limit is None
        else min(scenario.balance, scenario.spend_limit)
    )
    assert PRICES.cost_of(ESTIMATE, delivered) <= means, (delivered, usage)
    # 3. what was delivered is charged: all of it on the gateway's count, or the backend's
    # own count where it gave a believable one
    reported = _sane((scenario.usage or {}).get("completion_tokens"))
    if reported is None:
        assert usage.completion_tokens >= delivered, (delivered, usage)
    else:
        assert usage.completion_tokens >= min(reported, delivered), (delivered, usage)
    # 4. the charge stays within the means; a shortfall only from the prompt's estimate
    assert 0 <= usage.cost <= means
    current = await store.get_wallet(wallet.id)
    assert current is not None
    assert (current.balance, current.reserved) == (scenario.balance - usage.cost, 0)
    spent = await store.get_key(key.id)
    assert spent is not None
    assert spent.spent == usage.cost
    excess = usage.prompt_tokens - ESTIMATE
    if excess <= 0:
        assert usage.shortfall == 0, usage
    else:
        assert usage.shortfall <= ceil_div(excess * PRICES.input, MICRO), usage
    await store.close()


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenario=scenarios())
def test_what_is_delivered_is_paid_for_within_the_means(scenario: Scenario) -> None:
    asyncio.run(_run(scenario))
