"""Upstreams that misbehave, really: refused and never-completing connects, headers that never
come, bodies that stall, connections reset before the headers, after them and mid-stream,
bodies that are not JSON, event streams full of garbage or cut at every byte, usage reports
that lie, answers larger than the gateway will read, and 429s.

Each case, for streams and plain answers, ends with a clean OpenAI-shaped error or a correct
answer, a ledger that adds up with nothing reserved, the gateway serving the next request, and
the charge the README's rule gives ("What is charged when things go wrong"): the client pays
for the tokens it was sent — nothing for a request that failed before anything reached it; for
a stream that broke off, its prompt and the tokens it got (the backend's usage if it reported
one, else the gateway's count).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

from e2e.helpers import (
    HELLO,
    HELLO_TOKENS,
    assert_error_event,
    content_of,
    eventually,
    parse_sse,
)
from gateway_proc import Admin, D, GatewayFactory, GatewayProcess
from raw_upstream import (
    Play,
    RawRequest,
    RawUpstream,
    blackhole,
    chat_chunk,
    chunked,
    http_head,
    json_answer,
    sse,
)
from upstream import UpstreamServer, answer_text, free_port

pytestmark = pytest.mark.e2e

TIMEOUT_S = 1.5  # the raw backend's whole-request timeout
PATIENT_S = 15.0  # the same server as backend "raw-patient": for answers sent byte by byte
MAX_ANSWER_BYTES = 64 * 1024  # [server] max_answer_bytes of this module's gateway
WORDS = ["hello", " hello", " hello"]  # one o200k token each
RAW = {"input_price": "1", "output_price": "2", "tokenizer": "o200k_base"}


class Faults:
    """The misbehaving suppliers behind this module's gateway."""

    def __init__(self, blackhole_port: int) -> None:
        self.raw = RawUpstream("raw").start()
        self.polite = UpstreamServer("polite").start()
        self.limited = UpstreamServer("limited").start()
        self.blackhole_port = blackhole_port

    def reset(self) -> None:
        self.raw.reset()
        self.polite.reset()
        self.limited.reset()
        self.limited.status, self.limited.retry_after = 429, 7

    def stop(self) -> None:
        self.raw.stop()
        self.polite.stop()
        self.limited.stop()


@pytest.fixture(scope="module")
def faults() -> Iterator[Faults]:
    with blackhole() as port:
        servers = Faults(port)
        yield servers
        servers.stop()


@pytest.fixture(scope="module")
def faulty(faults: Faults, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    factory = GatewayFactory(tmp_path_factory.mktemp("faulty"))
    quick = {"timeout_s": TIMEOUT_S, "connect_timeout_s": 0.5}
    try:
        yield factory(
            backends=[
                {
                    "name": "raw",
                    "base_url": faults.raw.url,
                    "api_key_env": "UPSTREAM_A_KEY",
                    **quick,
                },
                {
                    "name": "raw-patient",
                    "base_url": faults.raw.url,
                    "api_key_env": "UPSTREAM_A_KEY",
                    "timeout_s": PATIENT_S,
                },
                {"name": "refused", "base_url": f"http://127.0.0.1:{free_port()}/v1", **quick},
                {
                    "name": "blackhole",
                    "base_url": f"http://127.0.0.1:{faults.blackhole_port}/v1",
                    **quick,
                },
                {"name": "limited", "base_url": faults.limited.url, **quick},
                {"name": "polite", "base_url": faults.polite.url, **quick},
            ],
            routes=[
                {"model": "raw", "backend": "raw", **RAW},
                {"model": "raw-patient", "backend": "raw-patient", **RAW},
                {"model": "refused", "backend": "refused", **RAW},
                {"model": "blackhole", "backend": "blackhole", **RAW},
                {"model": "limited", "backend": "limited", "input_price": "1", "output_price": "1"},
                {"model": "limited", "backend": "polite", "input_price": "3", "output_price": "3"},
                {"model": "limited-only", "backend": "limited", **RAW},
                {"model": "ok", "backend": "polite", **RAW},
            ],
            server={"max_answer_bytes": MAX_ANSWER_BYTES},
            routing={"failure_threshold": 1000, "cooldown_s": 1},
        )
    finally:
        factory.close()


@pytest.fixture(scope="module")
def books(faulty: GatewayProcess) -> Iterator[Admin]:
    with faulty.admin() as admin:
        yield admin


class Client:
    """A fresh wallet of 10 credits with a key, and raw HTTP to the gateway."""

    def __init__(self, gateway: GatewayProcess, books: Admin) -> None:
        self.gateway, self.books = gateway, books
        self.wallet_id = books.make_wallet("10")
        _key, self.secret = books.make_key(self.wallet_id)
        self.auth = {"Authorization": f"Bearer {self.secret}"}

    async def ask(self, model: str = "raw", *, stream: bool, **extra: Any) -> tuple[int, str, Any]:
        """POST a chat completion; (status, x-request-id, parsed body or SSE events)."""
        body = {"model": model, "messages": HELLO, "stream": stream, **extra}
        async with (
            httpx.AsyncClient(base_url=self.gateway.url, timeout=30, trust_env=False) as http,
            http.stream("POST", "/v1/chat/completions", json=body, headers=self.auth) as resp,
        ):
            raw = b"".join([chunk async for chunk in resp.aiter_bytes()])
            rid = resp.headers["x-request-id"]
            if resp.status_code == 200 and stream:
                assert resp.headers["content-type"].startswith("text/event-stream")
                return 200, rid, parse_sse(raw.decode())
            assert resp.headers["content-type"].startswith("application/json"), raw
            return resp.status_code, rid, httpx.Response(200, content=raw).json()

    def charged(
        self, rid: str, *, prompt: int, completion: int, status: str, model: str = "raw"
    ) -> None:
        self.books.assert_charged(
            self.gateway,
            self.wallet_id,
            rid,
            model=model,
            prompt=prompt,
            completion=completion,
            status=status,
        )
        self.settled()

    def not_charged(self, rid: str, status: str = "upstream_error") -> None:
        record = self.books.usage_record(rid)
        assert record["status"] == status, record
        assert D(record["cost"]) == 0, record
        assert [e for e in self.books.ledger(self.wallet_id) if e["request_id"] == rid] == []
        self.settled()

    def settled(self) -> dict[str, Any]:
        """Nothing reserved, the books balance, and the gateway serves the next request."""
        wallet = self.books.assert_books_balance(self.wallet_id)
        with httpx.Client(base_url=self.gateway.url, timeout=10, trust_env=False) as http:
            body = {"model": "ok", "messages": HELLO}
            response = http.post("/v1/chat/completions", json=body, headers=self.auth)
        assert response.status_code == 200, response.text
        self.books.assert_books_balance(self.wallet_id)
        return wallet


@pytest.fixture
def client(faulty: GatewayProcess, books: Admin, faults: Faults) -> Client:
    faults.reset()
    return Client(faulty, books)


def assert_error(status: int, body: Any, expected: int, code: str) -> None:
    assert status == expected, body
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["type"] == "api_error", error
    assert error["code"] == code, error
    assert isinstance(error["message"], str)
    assert error["message"]


def error_events(events: list[Any]) -> list[dict[str, Any]]:
    return [e["error"] for e in events if isinstance(e, dict) and "error" in e]


async def gateway_closed(request: RawRequest) -> None:
    """The gateway closed its upstream connection (it does not leave it hanging)."""
    await eventually(lambda: request.peer_closed_at, within=5, what="the upstream closed")


def stream_body(
    words: list[str] = WORDS,
    *,
    usage: dict[str, Any] | None = None,
    done: bool = True,
    eol: str = "\n",
) -> list[bytes]:
    events = [sse(chat_chunk(role=True), eol)]
    events += [sse(chat_chunk(word), eol) for word in words]
    if usage is not None:
        events.append(sse(chat_chunk(usage=usage), eol))
    if done:
        events.append(sse("[DONE]", eol))
    return events


def answer_body(text: str = "".join(WORDS), usage: dict[str, Any] | None = None) -> bytes:
    body: dict[str, Any] = {
        "id": "chatcmpl-raw",
        "object": "chat.completion",
        "created": 0,
        "model": "raw",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
    }
    if usage is not None:
        body["usage"] = usage
    return httpx.Response(200, json=body).content


SSE_HEAD = http_head(200, "text/event-stream", chunked=True)
BOTH = pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])


# -- nothing reached the client: a clean 502/504 and nothing charged ----------------------------
@BOTH
async def test_connection_refused(client: Client, stream: bool) -> None:
    status, rid, body = await client.ask("refused", stream=stream)
    assert_error(status, body, 502, "upstream_error")
    client.not_charged(rid)


@BOTH
async def test_connect_timeout(client: Client, stream: bool) -> None:
    started = time.monotonic()
    status, rid, body = await client.ask("blackhole", stream=stream)
    assert_error(status, body, 504, "upstream_timeout")
    assert time.monotonic() - started < TIMEOUT_S + 1, "connect_timeout_s bounds the wait"
    client.not_charged(rid)


@BOTH
async def test_headers_never_arrive(client: Client, faults: Faults, stream: bool) -> None:
    faults.raw.play = Play(head=None, then="stall")
    status, rid, body = await client.ask(stream=stream)
    assert_error(status, body, 504, "upstream_timeout")
    await gateway_closed(faults.raw.last)
    client.not_charged(rid)


async def test_a_plain_body_that_stalls(client: Client, faults: Faults) -> None:
    whole = answer_body()
    faults.raw.play = Play(head=http_head(length=len(whole)), body=(whole[:40],), then="stall")
    status, rid, body = await client.ask(stream=False)
    assert_error(status, body, 504, "upstream_timeout")
    await gateway_closed(faults.raw.last)
    client.not_charged(rid)


async def test_a_stream_that_stalls_mid_way(client: Client, faults: Faults) -> None:
    """The client has three words when the backend goes quiet: at the timeout the stream ends
    with an error event, the upstream connection is closed, and the three words are charged."""
    faults.raw.play = Play(
        head=SSE_HEAD, body=chunked(stream_body(done=False), end=False), then="stall"
    )
    status, rid, events = await client.ask(stream=True)
    assert status == 200
    assert content_of(events) == "".join(WORDS)
    [error] = error_events(events)
    assert error["code"] == "upstream_timeout", error
    assert events[-1] != "[DONE]"
    await gateway_closed(faults.raw.last)
    client.charged(rid, prompt=HELLO_TOKENS, completion=3, status="upstream_error")


@BOTH
async def test_reset_before_the_headers(client: Client, faults: Faults, stream: bool) -> None:
    faults.raw.play = Play(head=None, then="reset")
    status, rid, body = await client.ask(stream=stream)
    assert_error(status, body, 502, "upstream_error")
    client.not_charged(rid)


async def test_reset_after_the_headers(client: Client, faults: Faults) -> None:
    faults.raw.play = lambda request: Play(
        head=SSE_HEAD if request.stream else http_head(length=500), then="reset"
    )
    for stream in (False, True):
        status, rid, body = await client.ask(stream=stream)
        assert_error(status, body, 502, "upstream_error")
        client.not_charged(rid)


async def test_reset_mid_answer(client: Client, faults: Faults) -> None:
    whole = answer_body()
    faults.raw.play = Play(head=http_head(length=len(whole)), body=(whole[:60],), then="reset")
    status, rid, body = await client.ask(stream=False)
    assert_error(status, body, 502, "upstream_error")
    client.not_charged(rid)


async def test_reset_mid_stream(client: Client, faults: Faults) -> None:
    faults.raw.play = Play(
        head=SSE_HEAD, body=chunked(stream_body(done=False), end=False), then="reset"
    )
    status, rid, events = await client.ask(stream=True)
    assert status == 200
    assert content_of(events) == "".join(WORDS)
    [error] = error_events(events)
    assert error["code"] == "upstream_error", error
    client.charged(rid, prompt=HELLO_TOKENS, completion=3, status="upstream_error")


@pytest.mark.parametrize(
    "content",
    [b"<html>502 Bad Gateway</html>", answer_body()[:-25], b"", b"[1, 2, 3]", b"null"],
    ids=["html", "truncated-json", "empty", "json-array", "json-null"],
)
async def test_200_with_a_body_that_is_not_an_answer(
    client: Client, faults: Faults, content: bytes
) -> None:
    faults.raw.play = json_answer(content)
    for stream in (False, True):  # a stream request answered with JSON did not stream
        status, rid, body = await client.ask(stream=stream)
        assert_error(status, body, 502, "upstream_error")
        client.not_charged(rid)


# -- event streams that are odd but whole: the answer arrives, and is charged -------------------
GARBAGE = [
    b": a comment\n\n",
    b"garbage line without a colon\n\n",
    b"data: {not json\n\n",
    b"event: ping\ndata: {}\n\n",
    b"retry: 100\nid: 7\n\n",
]
USAGE = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}


#: What the openai SDK itself survives: it would choke on a data-less event carrying an ``id``
#: or ``retry`` (which the gateway relays as received, like every event it can read).
SDK_GARBAGE = GARBAGE[:3]


def interleaved(events: list[bytes], garbage: list[bytes] = GARBAGE) -> list[bytes]:
    out: list[bytes] = []
    for i, event in enumerate(events):
        out.append(garbage[i % len(garbage)])
        out.append(event)
    return out


STREAMS = {
    "garbage-and-comments": (chunked(interleaved(stream_body(usage=USAGE))), False),
    "crlf": (chunked(stream_body(usage=USAGE, eol="\r\n")), False),
    "every-byte-its-own-read": (chunked(stream_body(usage=USAGE)), True),
    "no-done": (chunked(stream_body(usage=USAGE, done=False)), False),
    "close-delimited": (tuple(stream_body(usage=USAGE)), False),
}


@pytest.mark.parametrize("case", list(STREAMS))
async def test_odd_but_whole_streams(client: Client, faults: Faults, case: str) -> None:
    body, bytewise = STREAMS[case]
    head = SSE_HEAD if case != "close-delimited" else http_head(200, "text/event-stream")
    faults.raw.play = Play(head=head, body=body, byte_by_byte=bytewise, pause_s=0.001 * bytewise)
    model = "raw-patient" if bytewise else "raw"
    status, rid, events = await client.ask(model, stream=True)
    assert status == 200
    assert content_of(events) == "".join(WORDS)
    assert error_events(events) == []
    assert (events[-1] == "[DONE]") == (case != "no-done"), events[-3:]
    assert not any(isinstance(e, dict) and e.get("usage") for e in events), "usage not asked for"
    client.charged(rid, prompt=11, completion=3, status="ok", model=model)


async def test_the_sdk_reads_a_stream_sent_byte_by_byte(client: Client, faults: Faults) -> None:
    faults.raw.play = Play(
        head=SSE_HEAD,
        body=chunked(interleaved(stream_body(usage=USAGE, eol="\r\n"), SDK_GARBAGE)),
        byte_by_byte=True,
        pause_s=0.001,
    )
    async with openai.AsyncOpenAI(
        base_url=f"{client.gateway.url}/v1", api_key=client.secret, max_retries=0
    ) as sdk:
        stream = await sdk.chat.completions.create(
            model="raw-patient",
            messages=HELLO,
            stream=True,
            stream_options={"include_usage": True},  # type: ignore[arg-type]
        )
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(WORDS)
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3
    client.books.assert_books_balance(client.wallet_id)
    assert client.books.balance(client.wallet_id) == Decimal(10) - Decimal("0.000017")


# -- a whole answer in one read, past the bound its bytes give -------------------------------------
ONE_READ_WORDS = ["hello"] + [" hello"] * 59  # 60 tokens, 353 bytes of text


async def test_a_read_of_many_events_the_reservation_pays_is_passed_on_whole(
    client: Client, faults: Faults
) -> None:
    """The texts' UTF-8 length (353) is no bound the reservation (60 tokens) pays for: the
    exact count is, and the whole read goes through."""
    faults.raw.play = Play(head=SSE_HEAD, body=chunked([b"".join(stream_body(ONE_READ_WORDS))]))
    status, rid, events = await client.ask(stream=True, max_tokens=60)
    assert status == 200
    assert content_of(events) == "".join(ONE_READ_WORDS)
    assert error_events(events) == []
    assert events[-1] == "[DONE]"
    client.charged(rid, prompt=HELLO_TOKENS, completion=60, status="ok")


async def test_a_read_of_many_events_is_cut_off_where_the_wallet_runs_out(
    client: Client, faults: Faults, books: Admin
) -> None:
    """40 micro-credits pay for the prompt (8 at 1) and 16 tokens (at 2): of 60 words sent at
    once, by an upstream that ignores max_tokens, the client gets 16 and pays for them."""
    client.wallet_id = books.make_wallet("0.00004")
    _key, secret = books.make_key(client.wallet_id)
    client.auth = {"Authorization": f"Bearer {secret}"}
    faults.raw.play = Play(head=SSE_HEAD, body=chunked([b"".join(stream_body(ONE_READ_WORDS))]))
    status, rid, events = await client.ask(stream=True)
    assert status == 200
    assert faults.raw.last.json["max_tokens"] == 16
    assert content_of(events) == "".join(ONE_READ_WORDS[:16])
    [error] = error_events(events)
    assert_error_event({"error": error}, "insufficient_quota", "insufficient_quota")
    assert books.usage_record(rid)["status"] == "cut_off"
    assert books.assert_books_balance(client.wallet_id)["balance"] == "0"
    record = books.usage_record(rid)
    assert (record["prompt_tokens"], record["completion_tokens"]) == (HELLO_TOKENS, 16)
    assert D(record["cost"]) == Decimal("0.00004")


# -- usage reports that cannot be right ---------------------------------------------------------
USAGES = {
    # negative fields: the gateway's own count (prompt 8 by the recipe, 3 words)
    "negative": ({"prompt_tokens": -5, "completion_tokens": -3}, HELLO_TOKENS, 3),
    # missing fields: the gateway's own count
    "missing": ({"total_tokens": 99}, HELLO_TOKENS, 3),
    "only-prompt": ({"prompt_tokens": 12}, 12, 3),
    # more than the bound the gateway sent (max_tokens=5): capped at the bound
    "absurd": ({"prompt_tokens": 10, "completion_tokens": 10**9}, 10, 5),
    # numbers no sane count reaches: the gateway's own count
    "beyond-int64": ({"prompt_tokens": 10, "completion_tokens": 10**30}, 10, 3),
    # wrong types: as if missing
    "float": ({"prompt_tokens": 10.0, "completion_tokens": 2.5}, HELLO_TOKENS, 3),
    "string": ({"prompt_tokens": "10", "completion_tokens": None}, HELLO_TOKENS, 3),
    "not-an-object": ("lots", HELLO_TOKENS, 3),
}


@pytest.mark.parametrize("case", list(USAGES))
@BOTH
async def test_usage_that_cannot_be_right(
    client: Client, faults: Faults, case: str, stream: bool
) -> None:
    usage, prompt, completion = USAGES[case]
    faults.raw.play = lambda request: (
        Play(head=SSE_HEAD, body=chunked(stream_body(usage=usage)))
        if request.stream
        else json_answer(answer_body(usage=usage))
    )
    status, rid, body = await client.ask(stream=stream, max_tokens=5)
    assert status == 200, body
    assert faults.raw.last.json["max_tokens"] == 5
    text = content_of(body) if stream else body["choices"][0]["message"]["content"]
    assert text == "".join(WORDS)
    client.charged(rid, prompt=prompt, completion=completion, status="ok")


# -- answers larger than the gateway reads -------------------------------------------------------
async def test_a_plain_answer_over_max_answer_bytes(client: Client, faults: Faults) -> None:
    whole = answer_body("hello " * (MAX_ANSWER_BYTES // 3))
    assert len(whole) > 2 * MAX_ANSWER_BYTES
    faults.raw.play = json_answer(whole)
    status, rid, body = await client.ask(stream=False)
    assert_error(status, body, 502, "upstream_error")
    client.not_charged(rid)


async def test_a_stream_event_over_max_answer_bytes(client: Client, faults: Faults) -> None:
    """One event that never ends: the gateway stops reading at max_answer_bytes, ends the
    stream with an error event, and charges the prompt and the words delivered before."""
    giant = b'data: {"choices": [{"index": 0, "delta": {"content": "' + b"x" * (
        4 * MAX_ANSWER_BYTES
    )
    faults.raw.play = Play(
        head=SSE_HEAD,
        body=chunked([*stream_body(done=False), giant], end=False),
        pause_s=0.05,  # the words arrive in reads of their own, before the giant
        then="stall",
    )
    status, rid, events = await client.ask(stream=True)
    assert status == 200
    assert content_of(events) == "".join(WORDS)
    [error] = error_events(events)
    assert error["code"] == "upstream_error", error
    await gateway_closed(faults.raw.last)
    client.charged(rid, prompt=HELLO_TOKENS, completion=3, status="upstream_error")


# -- 429 with Retry-After ------------------------------------------------------------------------
@BOTH
async def test_429_fails_over_to_the_next_route(
    client: Client, faults: Faults, stream: bool
) -> None:
    status, rid, body = await client.ask("limited", stream=stream)
    assert status == 200, body
    text = content_of(body) if stream else body["choices"][0]["message"]["content"]
    assert text == answer_text(5)
    assert len(faults.limited.requests) == 1
    assert len(faults.polite.requests) == 1
    record = client.books.usage_record(rid)
    assert (record["backend"], record["status"]) == ("polite", "ok")
    assert D(record["cost"]) == client.gateway.cost("limited", 10, 5, backend="polite")
    client.settled()


@BOTH
async def test_429_on_the_only_route_is_a_502(client: Client, faults: Faults, stream: bool) -> None:
    status, rid, body = await client.ask("limited-only", stream=stream)
    assert_error(status, body, 502, "upstream_error")
    assert len(faults.limited.requests) == 1
    client.not_charged(rid)
