"""What goes over the wire: the chat request, the upstream's canned answers, SSE counting."""

from __future__ import annotations

import json
from typing import Any

from .common import CHUNKS

MESSAGES = [
    {
        "role": "system",
        "content": "You are a concise assistant for a logistics company. Answer in plain "
        "English, cite figures from the conversation, never invent numbers.",
    },
    {
        "role": "user",
        "content": "Summarise the delivery delays of last week by region: North had 3 late "
        "parcels out of 410, South 1 of 388, East none of 295, West 5 of 402.",
    },
    {
        "role": "assistant",
        "content": "Last week 9 of 1,495 parcels were late (0.6%). West had the most (5 of 402, "
        "1.2%), then North (3 of 410), South (1 of 388); East had none.",
    },
    {
        "role": "user",
        "content": "Write a short note to the West depot manager about it, two paragraphs, "
        "friendly but firm, asking for a plan by Friday.",
    },
]


def _event(payload: dict[str, Any]) -> str:
    return "data: " + json.dumps(payload, separators=(",", ":")) + "\n\n"


def completion_json() -> str:
    answer = (
        "Dear West depot team, last week five of your 402 parcels arrived late, the highest "
        "share of any region. Please send a short plan to bring this back under 0.5% by Friday."
    )
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1700000000,
            "model": "bench-model",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 142, "completion_tokens": 38, "total_tokens": 180},
        },
        separators=(",", ":"),
    )


def sse_body(chunks: int = CHUNKS) -> str:
    head = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000}
    head["model"] = "bench-model"
    parts = []
    for i in range(chunks):
        delta = {"content": f" word{i}"}
        if i == 0:
            delta = {"role": "assistant", "content": "Dear"}
        finish = "stop" if i == chunks - 1 else None
        parts.append(
            _event({**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        )
    usage = {"prompt_tokens": 142, "completion_tokens": chunks, "total_tokens": 142 + chunks}
    parts.append(_event({**head, "choices": [], "usage": usage}))
    parts.append("data: [DONE]\n\n")
    return "".join(parts)


def chat_body(stream: bool) -> bytes:
    body: dict[str, Any] = {
        "model": "bench-model",
        "temperature": 0.2,
        "max_tokens": 256,
        "messages": MESSAGES,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body).encode()


def count_sse(raw: bytes) -> tuple[int, bool]:
    """Content chunks in an SSE answer and whether it ends with ``[DONE]``."""
    chunks, done = 0, False
    for line in raw.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            done = True
            continue
        for choice in json.loads(data).get("choices") or ():
            if (choice.get("delta") or {}).get("content"):
                chunks += 1
    return chunks, done
