"""How the relay reads and writes one API's messages: a *dialect* per (client endpoint,
backend) pair, made fresh for every attempt (a translating dialect keeps state).

The relay is the same for every API; a dialect tells it what to send upstream, what each
upstream event means for metering (:class:`Step`), and what the client gets. The OpenAI
dialect below relays bytes unchanged; ``gateway.responses_api.dialects`` holds the Responses API's.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from gateway.errors import GatewayError, UpstreamError
from gateway.pricing import TokenCounts
from gateway.protocol import wire
from gateway.protocol.cutting import cut_choices
from gateway.protocol.deltas import DeltaFolder, DeltaRun
from gateway.protocol.sse import Event, SSEParser, is_done
from gateway.tokens import TokenCounter

__all__ = [
    "BOUND_FIELDS",
    "VENDOR_BOUND_FIELDS",
    "Action",
    "Dialect",
    "OpenAIDialect",
    "ReportedUsage",
    "Step",
    "Texts",
    "bound_body",
    "framing",
    "rewritten_body",
]

#: Generated text as (choice index, text) pairs.
Texts = tuple[tuple[int, str], ...]


class ReportedUsage(msgspec.Struct, frozen=True, gc=False):
    """Usage as a backend reported it; None where a field was absent."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None


class Action(enum.Enum):
    PASS = "pass"  # relay as is, nothing to meter (comments, keep-alives, role-only chunks)
    CONTENT = "content"  # generated text: metered, then relayed
    USAGE = "usage"  # the final usage report: held back until the request is settled
    DONE = "done"  # the end of the stream: held back until the request is settled
    ERROR = "error"  # the backend reports an error inside the stream
    DROP = "drop"  # unreadable: not relayed


class Step(msgspec.Struct, frozen=True, gc=False):
    action: Action
    texts: Texts = ()
    usage: ReportedUsage | None = None


#: The APIs' own fields that bound generated tokens (per choice): chat's
#: ``max_completion_tokens`` and ``max_tokens``, completions' ``max_tokens``, the Responses API's
#: ``max_output_tokens``.
BOUND_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")
#: Other servers' names for that bound, which they read in an OpenAI-shaped request too:
#: llama.cpp's ``n_predict`` (read before ``max_tokens``), TGI's and SGLang's
#: ``max_new_tokens``, Ollama's ``num_predict``.
VENDOR_BOUND_FIELDS = ("n_predict", "max_new_tokens", "num_predict")


def bound_body(out: dict[str, Any], cap: int, field: str) -> None:
    """Bound what the backend may generate to ``cap`` tokens a choice, in place: every bound
    field the client sent is lowered to it (its own fields were checked to be at least
    ``cap``), ``field`` (the one the backend reads) is set when it sent none of the APIs' own
    (some servers refuse two), another server's name for the bound is lowered when it asks for
    more or for no bound at all (``n_predict: -1``), and vLLM's ``min_tokens`` never asks for
    more than ``cap``."""
    sent = False
    for name in BOUND_FIELDS:
        if out.get(name) is not None:
            out[name] = cap
            sent = True
    if not sent:
        out[field] = cap
    for name in VENDOR_BOUND_FIELDS:
        if name in out:
            value = out[name]
            if not (type(value) is int and 0 <= value <= cap):
                out[name] = cap
    least = out.get("min_tokens")
    if type(least) is int and least > cap:
        out["min_tokens"] = cap


def rewritten_body(
    body: Mapping[str, Any],
    *,
    upstream_model: str,
    bound_field: str | None,
    cap: int | None,
    include_usage: bool,
) -> bytes:
    """A relayed request body: the client's, except the model, the bound on generated tokens
    (:func:`bound_body`, when ``cap`` is set) and (for chat streams)
    ``stream_options.include_usage``."""
    out = dict(body)
    out["model"] = upstream_model
    if cap is not None and bound_field is not None:
        bound_body(out, cap, bound_field)
    if include_usage:
        options = body.get("stream_options") or {}
        out["stream_options"] = {**options, "include_usage": True}
    return msgspec.json.encode(out)


_PASS = Step(Action.PASS)
_DONE = Step(Action.DONE)
_DROP = Step(Action.DROP)
_ERROR = Step(Action.ERROR)


def framing(event: Event) -> Step | None:
    """What an SSE event means before any API reads it: PASS for a data-less event (comments,
    keep-alives), DONE for ``[DONE]``; None for an event whose data the dialect must read."""
    data = event.data
    if data is None:
        return _PASS
    if data[:1] != b"{" and is_done(data):  # a JSON object is never [DONE]
        return _DONE
    return None


def reported(usage: wire.Usage | None) -> ReportedUsage | None:
    if usage is None:
        return None
    details = usage.prompt_tokens_details
    return ReportedUsage(
        usage.prompt_tokens,
        usage.completion_tokens,
        details.cached_tokens if details is not None else None,
    )


def choice_texts(choices: list[wire.Choice] | None) -> Texts:
    out: list[tuple[int, str]] = []
    for choice in choices or ():
        for message in (choice.message, choice.delta):
            if message is None:
                continue
            if wire.content_only(message):  # the usual delta: one piece of content
                if message.content:
                    out.append((choice.index, message.content))
            else:
                out.extend((choice.index, text) for text in wire.message_texts(message))
        if choice.text:
            out.append((choice.index, choice.text))
    return tuple(out)


class Dialect(abc.ABC):
    #: Upstream path below the backend's base_url.
    path: str

    @abc.abstractmethod
    def upstream_body(
        self, body: Mapping[str, Any], *, upstream_model: str, cap: int | None, stream: bool
    ) -> bytes:
        """The request body for the backend, bounded to ``cap`` generated tokens a choice
        (None: the endpoint generates nothing)."""

    @abc.abstractmethod
    def read_answer(self, data: bytes) -> tuple[ReportedUsage | None, Texts]:
        """Usage and generated text of a complete answer; ``UpstreamError`` if unreadable."""

    def cut_answer(self, data: bytes, keep: int, counter: TokenCounter) -> bytes:
        """A complete answer (read by :meth:`read_answer`) with its generated text cut to
        ``keep`` tokens a choice, marked as cut short by the bound
        (:mod:`gateway.protocol.cutting`). By default the answer generates nothing to cut."""
        return data

    def render_answer(self, data: bytes, usage: TokenCounts) -> bytes:
        """What the client gets for a complete answer."""
        return data

    @abc.abstractmethod
    def read_event(self, event: Event) -> Step: ...

    def split(self, parser: SSEParser, chunk: bytes) -> list[Event]:
        """The events an upstream read completes: ``parser.feed(chunk)``, unless the dialect
        knows a faster reading that :meth:`read_plain_run` reads the same."""
        return parser.feed(chunk)

    def read_fast(self, event: Event) -> tuple[int, str] | Step:
        """:meth:`read_event` for the hot path: an event whose one choice's text is all there
        is to meter, relayed as received (most of a stream), may come back as that (choice
        index, text) instead of a Step. By default every event is read in full."""
        return self.read_event(event)

    def read_plain_run(self, events: Sequence[Event]) -> list[tuple[int, str]]:
        """What :meth:`read_fast` answers for each of the events that open ``events``, as
        long as that is a (choice index, text): the plain deltas a read starts with, each
        relayed as received. By default none."""
        return []

    def folded(self, events: Sequence[Event], start: int) -> bool:
        """Whether :meth:`split` read several of ``events[start:]`` as one (to be metered
        event by event, unfold them first). By default it never does."""
        return False

    def unfolded(self, events: list[Event]) -> list[Event]:
        """``events`` with what :meth:`split` read as one back as its events."""
        return events

    def render_event(self, event: Event, step: Step) -> bytes:
        """What the client gets for a relayed event (empty: nothing)."""
        return event.raw

    def stream_tail(self, held: list[bytes], usage: TokenCounts) -> list[bytes]:
        """What ends a stream once it is settled: ``held`` are the USAGE (when the client
        asked for it) and DONE events as received."""
        return held

    def stream_error(self, error: GatewayError) -> bytes:
        """An error after the stream started, as this API's clients expect it."""
        return error.to_sse()


class OpenAIDialect(Dialect):
    """Chat completions, legacy completions and embeddings, relayed byte for byte (an answer
    cut to what was paid for is written anew, with the usage charged)."""

    def __init__(self, path: str, bound_field: str | None = None) -> None:
        self.path = path
        #: The field the backend reads as the bound on generated tokens (None: embeddings).
        self.bound_field = bound_field
        self._folder: DeltaFolder | None = None
        self._cut: dict[str, Any] | None = None  # the answer as cut, once it was

    def upstream_body(
        self, body: Mapping[str, Any], *, upstream_model: str, cap: int | None, stream: bool
    ) -> bytes:
        return rewritten_body(
            body, upstream_model=upstream_model, bound_field=self.bound_field, cap=cap,
            include_usage=stream,
        )  # fmt: skip

    def cut_answer(self, data: bytes, keep: int, counter: TokenCounter) -> bytes:
        answer = msgspec.json.decode(data)
        if not isinstance(answer, dict) or not cut_choices(answer, keep, counter):
            return data
        self._cut = answer
        return msgspec.json.encode(answer)

    def render_answer(self, data: bytes, usage: TokenCounts) -> bytes:
        answer = self._cut
        if answer is None:
            return data
        answer["usage"] = {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        }
        return msgspec.json.encode(answer)

    def read_answer(self, data: bytes) -> tuple[ReportedUsage | None, Texts]:
        try:
            answer = wire.decode_answer(data)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:
            raise UpstreamError("the backend sent an unreadable answer") from exc
        return reported(answer.usage), choice_texts(answer.choices)

    def split(self, parser: SSEParser, chunk: bytes) -> list[Event]:
        """Runs of the stream's usual text delta come as one :class:`DeltaRun` each."""
        folder = self._folder
        if folder is None:
            folder = self._folder = DeltaFolder()
        return folder.feed(parser, chunk)

    def read_fast(self, event: Event) -> tuple[int, str] | Step:
        if type(event) is DeltaRun:
            return event.piece
        data = event.data
        if data is not None and data[:1] == b"{":  # the usual event: what _decoded does, inline
            try:
                chunk = wire.decode_chunk_strictly(data)
            except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
                return self.read_event(event)  # the lenient reading, or DROP
            return wire.plain_delta(chunk) or _chunk_step(chunk)
        return self.read_event(event)

    def folded(self, events: Sequence[Event], start: int) -> bool:
        return any(type(events[i]) is DeltaRun for i in range(start, len(events)))

    def unfolded(self, events: list[Event]) -> list[Event]:
        out: list[Event] = []
        for event in events:
            if type(event) is DeltaRun:
                out += event.unfold()
            else:
                out.append(event)
        return out

    def read_plain_run(self, events: Sequence[Event]) -> list[tuple[int, str]]:
        run: list[tuple[int, str]] = []
        for event in events:
            if type(event) is DeltaRun:
                run.append(event.piece)
                continue
            data = event.data
            if data is None or data[:1] != b"{":
                break
            try:
                run.append(wire.decode_plain_delta(data))
            except (msgspec.DecodeError, RecursionError):  # not a plain delta
                break
        return run

    def read_event(self, event: Event) -> Step:
        if type(event) is DeltaRun:
            return Step(Action.CONTENT, (event.piece,))
        chunk = _decoded(event)
        return chunk if isinstance(chunk, Step) else _chunk_step(chunk)


def _decoded(event: Event) -> wire.Chunk | Step:
    """An event's chunk, or what the event means when it has none to read (framing, DROP)."""
    step = framing(event)
    if step is not None:
        return step
    data = event.data
    assert data is not None  # framing() answers data-less events
    try:
        return wire.decode_chunk(data)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return _DROP


def _chunk_step(chunk: wire.Chunk) -> Step:
    if chunk.error is not None:
        return _ERROR
    choices, usage = chunk.choices, chunk.usage
    if usage is not None and not choices:
        return Step(Action.USAGE, usage=reported(usage))
    return Step(
        Action.CONTENT,
        choice_texts(choices) if choices else (),
        reported(usage) if usage is not None else None,
    )
