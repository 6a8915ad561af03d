"""The log lines: ``info_event``'s own JSON line is the line structlog's chain writes."""

from __future__ import annotations

import asyncio
import datetime
import json
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog

from gateway import logs
from gateway.logs import LineBuffer, configure_logging, info_event

FIELDS: dict[str, Any] = {
    "request_id": "req_1",
    "key_id": "key_1",
    "wallet_id": None,
    "stream": True,
    "prompt_tokens": 12,
    "outcome": "ok",
    "note": 'ünïcode "quoted"\n',
}


@pytest.fixture
def stderr(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[], str]]:
    """What was written to stderr so far (pytest's stand-in for it, made for this test)."""
    yield lambda: capsys.readouterr().err
    LineBuffer._instances.pop(id(sys.stderr.buffer), None)
    structlog.reset_defaults()
    logs._direct = None


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_the_direct_line_is_the_chains_line(stderr: Callable[[], str]) -> None:
    configure_logging("info", "json")
    log = structlog.get_logger("gateway.request")
    info_event(log, "request_completed", dict(FIELDS))
    log.info("request_completed", **FIELDS)
    direct, chained = _lines(stderr())
    assert list(direct) == list(chained)  # the same keys, in the same order
    stamp = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
    assert stamp.fullmatch(direct.pop("timestamp"))
    assert stamp.fullmatch(chained.pop("timestamp"))
    assert direct == chained == {**FIELDS, "event": "request_completed", "level": "info"}


def test_above_info_nothing_is_written(stderr: Callable[[], str]) -> None:
    configure_logging("warning", "json")
    info_event(structlog.get_logger("gateway.request"), "request_completed", dict(FIELDS))
    structlog.get_logger("gateway.request").warning("kept", n=1)
    assert [line["event"] for line in _lines(stderr())] == ["kept"]


def test_console_output_goes_through_structlog(stderr: Callable[[], str]) -> None:
    configure_logging("info", "console")
    info_event(structlog.get_logger("gateway.request"), "request_completed", dict(FIELDS))
    text = stderr()
    assert "request_completed" in text
    assert "req_1" in text
    assert not text.startswith("{")


class _Stream:
    """A binary stream that records each write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.writes.append(data)
        return len(data)

    def flush(self) -> None:
        pass


async def test_lines_on_the_loop_wait_to_share_one_write() -> None:
    out = _Stream()
    buffer = LineBuffer(out)  # type: ignore[arg-type]
    for n in range(3):
        buffer.add(b"%d\n" % n)
        await asyncio.sleep(0)  # other turns of the loop: the lines still wait
    assert out.writes == []
    await asyncio.sleep(logs.HOLD_S * 2)
    assert out.writes == [b"0\n1\n2\n"]
    buffer.add(b"3\n")
    await asyncio.sleep(logs.HOLD_S * 2)
    assert out.writes == [b"0\n1\n2\n", b"3\n"]


async def test_a_full_buffer_is_written_at_once() -> None:
    out = _Stream()
    buffer = LineBuffer(out)  # type: ignore[arg-type]
    lines = [b"%d\n" % n for n in range(logs.MAX_HELD)]
    for line in lines:
        buffer.add(line)
    assert out.writes == [b"".join(lines)]
    buffer.add(b"next\n")
    await asyncio.sleep(logs.HOLD_S * 2)
    assert out.writes == [b"".join(lines), b"next\n"]


def test_off_the_loop_a_line_is_written_at_once() -> None:
    out = _Stream()
    LineBuffer(out).add(b"now\n")  # type: ignore[arg-type]
    assert out.writes == [b"now\n"]


def test_the_timestamp_is_iso_8601_utc_to_the_microsecond() -> None:
    before = datetime.datetime.now(datetime.UTC)
    stamp = logs._timestamp(None, "info", {})["timestamp"]
    after = datetime.datetime.now(datetime.UTC)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp)
    parsed = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert before - datetime.timedelta(microseconds=1) <= parsed <= after
