"""Scenario 4's client: many concurrent paced streams, time to first token, completeness.

Opens ``--streams`` streaming chat requests against ``--url`` (spread evenly over ``--ramp``
seconds so that they do not all land on the same tick), measures for each the time from sending
the request to the first content token, and checks that every answer is complete: status 200,
``--tokens`` content chunks and ``data: [DONE]``. Prints one JSON object on stdout.

    python bench/paced_client.py --url http://127.0.0.1:8001/v1/chat/completions \
        --streams 1000 --tokens 200 --key sk-...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field

import aiohttp
import uvloop

BODY = {
    "model": "bench-model",
    "stream": True,
    "messages": [
        {"role": "system", "content": "You are a concise assistant for a logistics company."},
        {"role": "user", "content": "Summarise the delivery delays of last week by region."},
        {"role": "assistant", "content": "North: 3 late, South: 1 late, East: none, West: 5."},
        {"role": "user", "content": "Write a two-paragraph note to the West depot about it."},
    ],
}


@dataclass
class Result:
    ok: int = 0
    ttft: list[float] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def count_content(raw: bytes) -> tuple[int, bool]:
    """Content chunks in an SSE body, and whether it ended with ``[DONE]``."""
    chunks = 0
    done = False
    for line in raw.split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            done = True
            continue
        event = json.loads(data)
        for choice in event.get("choices") or ():
            if (choice.get("delta") or {}).get("content"):
                chunks += 1
    return chunks, done


async def one(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    body: bytes,
    delay: float,
    tokens: int,
    result: Result,
) -> None:
    await asyncio.sleep(delay)
    t0 = time.perf_counter()
    ttft: float | None = None
    raw = bytearray()
    try:
        async with session.post(url, data=body, headers=headers) as resp:
            async for piece in resp.content.iter_any():
                if ttft is None and b'"content"' in piece:
                    ttft = time.perf_counter() - t0
                raw += piece
            status = resp.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        result.errors.append(f"{type(exc).__name__}: {exc}")
        return
    elapsed = time.perf_counter() - t0
    if status != 200:
        result.errors.append(f"status {status}: {bytes(raw[:200])!r}")
        return
    try:
        chunks, done = count_content(bytes(raw))
    except ValueError as exc:
        result.errors.append(f"bad SSE: {exc}")
        return
    if chunks != tokens or not done:
        result.errors.append(f"incomplete: {chunks}/{tokens} chunks, [DONE]={done}")
        return
    result.ok += 1
    result.ttft.append(ttft if ttft is not None else elapsed)
    result.durations.append(elapsed)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
    return ordered[index]


async def run(args: argparse.Namespace) -> dict[str, object]:
    headers = {"Content-Type": "application/json"}
    if args.key:
        headers["Authorization"] = f"Bearer {args.key}"
    body = json.dumps(BODY).encode()
    result = Result()
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    connector = aiohttp.TCPConnector(limit=0)
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(
            *(
                one(
                    session,
                    args.url,
                    headers,
                    body,
                    i * args.ramp / args.streams,
                    args.tokens,
                    result,
                )
                for i in range(args.streams)
            )
        )
    wall = time.perf_counter() - started
    first_errors = sorted(set(result.errors))[:5]
    return {
        "streams": args.streams,
        "complete": result.ok,
        "errors": len(result.errors),
        "error_samples": first_errors,
        "ttft_p50_ms": percentile(result.ttft, 50) * 1000,
        "ttft_p99_ms": percentile(result.ttft, 99) * 1000,
        "ttft_max_ms": max(result.ttft, default=float("nan")) * 1000,
        "duration_p50_s": statistics.median(result.durations) if result.durations else None,
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", default="")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--ramp", type=float, default=1.0, help="seconds to start all streams")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    print(json.dumps(uvloop.run(run(args))))


if __name__ == "__main__":
    main()
