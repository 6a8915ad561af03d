"""A demo supplier: answers locally so a fresh install serves real, metered answers with no
supplier account. It is a :class:`~gateway.proxy.upstream.Backend` like any other, so its answers go
through the same relay and metering code; it reports usage the way OpenAI does (streams only
when ``stream_options.include_usage`` is asked), counted with the same tokenizer.

This is NOT a model: it writes a fixed explanatory sentence and echoes the start of the prompt.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import msgspec

from gateway.config import BackendConfig
from gateway.proxy.upstream import Backend, UpstreamResponse
from gateway.tokens import TokenCounter

__all__ = ["DemoBackend"]

_REPLY = (
    "This answer comes from the metering gateway's built-in demo supplier, not from a model. "
    "Every word you read was streamed through the same relay and metering code as a real "
    "backend, and your wallet was debited for the tokens."
)
_DIMENSIONS = 16


def _last_user_text(body: Mapping[str, Any]) -> str:
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                content = message.get("content")
                if isinstance(content, str):
                    return content
                if isinstance(content, list):
                    return " ".join(
                        p.get("text", "") for p in content if isinstance(p, dict)
                    ).strip()
    prompt = body.get("prompt")
    return prompt if isinstance(prompt, str) else ""


def _bound(body: Mapping[str, Any]) -> int | None:
    for field in ("max_completion_tokens", "max_tokens"):
        value = body.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


class _Generated(UpstreamResponse):
    def __init__(self, parts: list[bytes], delay_s: float, content_type: str) -> None:
        self.status = 200
        self.headers = {"content-type": content_type}
        self._parts = parts
        self._delay = delay_s
        self._closed = False
        self._next = 0  # the part to send next: chunks() called again goes on from there

    async def chunks(self) -> AsyncIterator[bytes]:
        while self._next < len(self._parts) and not self._closed:
            if self._next and self._delay:
                await asyncio.sleep(self._delay)
            self._next += 1
            yield self._parts[self._next - 1]

    def close(self) -> None:
        self._closed = True


class DemoBackend(Backend):
    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        self._counter = TokenCounter("o200k_base")

    async def send(
        self, path: str, body: bytes, *, stream: bool, headers: Mapping[str, str]
    ) -> UpstreamResponse:
        request = msgspec.json.decode(body)
        if path == "/embeddings":
            return self._embeddings(request)
        chat = path == "/chat/completions"
        echo = _last_user_text(request)[:80]
        text = _REPLY + (f' You said: "{echo}"' if echo else "")
        words = [w + " " for w in text.split(" ")]
        words[-1] = words[-1].rstrip()
        bound = _bound(request)
        tokens = [self._counter.count_text(w) for w in words]
        finish = "stop"
        if bound is not None:
            kept, total = [], 0
            for word, n in zip(words, tokens, strict=True):
                if total + n > bound:
                    finish = "length"
                    break
                kept.append(word)
                total += n
            words = kept
        completion = self._counter.count_text("".join(words))
        if chat:
            prompt = self._counter.count_chat_prompt(request.get("messages") or [])
        else:
            prompt = self._counter.count_completion_prompt(request.get("prompt"))
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        base = {"id": ident, "created": int(time.time()), "model": request.get("model", "demo")}
        if not stream:
            if chat:
                choice: dict[str, Any] = {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(words)},
                    "finish_reason": finish,
                }
                obj = "chat.completion"
            else:
                choice = {"index": 0, "text": "".join(words), "finish_reason": finish}
                obj = "text_completion"
            payload = {**base, "object": obj, "choices": [choice], "usage": usage}
            return _Generated([msgspec.json.encode(payload)], 0.0, "application/json")
        obj = "chat.completion.chunk" if chat else "text_completion"
        parts: list[bytes] = []
        for i, word in enumerate(words):
            if chat:
                delta: dict[str, Any] = {"content": word}
                if i == 0:
                    delta["role"] = "assistant"
                choice = {"index": 0, "delta": delta, "finish_reason": None}
            else:
                choice = {"index": 0, "text": word, "finish_reason": None}
            parts.append(_event({**base, "object": obj, "choices": [choice]}))
        end: dict[str, Any] = {"index": 0, "finish_reason": finish}
        if chat:
            end["delta"] = {}
        else:
            end["text"] = ""
        parts.append(_event({**base, "object": obj, "choices": [end]}))
        options = request.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            parts.append(_event({**base, "object": obj, "choices": [], "usage": usage}))
        parts.append(b"data: [DONE]\n\n")
        return _Generated(parts, self.config.demo_delay_s, "text/event-stream")

    def _embeddings(self, request: Mapping[str, Any]) -> UpstreamResponse:
        raw = request.get("input")
        inputs = raw if isinstance(raw, list) and raw and not isinstance(raw[0], int) else [raw]
        data = []
        for i, item in enumerate(inputs):
            digest = hashlib.sha256(msgspec.json.encode(item)).digest()
            values = struct.unpack(f"<{_DIMENSIONS}h", digest[: _DIMENSIONS * 2])
            data.append(
                {"object": "embedding", "index": i, "embedding": [v / 32768 for v in values]}
            )
        prompt = self._counter.count_embedding_input(raw)
        payload = {
            "object": "list",
            "data": data,
            "model": request.get("model", "demo"),
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
        }
        return _Generated([msgspec.json.encode(payload)], 0.0, "application/json")


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + msgspec.json.encode(payload) + b"\n\n"
