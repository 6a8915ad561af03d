"""The Responses API's dialects (gateway.responses_api.dialects) and its translation into chat
completions and back (gateway.responses_api.chat_request, gateway.responses_api.chat_answer):
requests, answers and stream events, checked against the openai SDK's own Responses types."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from gateway.config import BackendConfig
from gateway.errors import InsufficientQuota, InvalidRequest, UpstreamError
from gateway.pricing import TokenCounts
from gateway.protocol.dialects import Action, ReportedUsage, Step
from gateway.protocol.sse import Event, SSEParser
from gateway.responses_api.chat_answer import (
    StreamTranslator,
    decode_answer,
    decode_chunk,
    response_object,
    usage_json,
)
from gateway.responses_api.chat_request import chat_messages, chat_request
from gateway.responses_api.dialects import ChatTranslation, NativeResponses, responses_dialect

EVENT = TypeAdapter(ResponseStreamEvent)
TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    "strict": True,
}


def translate(body: dict[str, Any], cap: int | None = None, stream: bool = False) -> Any:
    return chat_request(body, upstream_model="up", cap=cap, stream=stream)


def events_of(raw: bytes) -> list[dict[str, Any]]:
    """Parse SSE bytes, checking each event against the SDK's types and its name."""
    out = []
    for event in SSEParser().feed(raw):
        if event.data is None:
            continue  # a comment
        payload = json.loads(event.data)
        assert event.event == payload["type"]
        if payload["type"] != "error":
            EVENT.validate_python(payload)
        out.append(payload)
    return out


def sse(payload: dict[str, Any]) -> Event:
    data = json.dumps(payload).encode()
    return Event(raw=b"data: " + data + b"\n\n", data=data, event=payload.get("type"))


# -- requests ----------------------------------------------------------------------------------
def test_a_plain_request() -> None:
    body = {
        "model": "public",
        "instructions": "Be brief.",
        "input": "hello",
        "max_output_tokens": 100,
        "temperature": 0.2,
        "top_p": 0.9,
        "user": "u1",
        "stream": True,
        "store": True,
        "metadata": {"a": "b"},
        "include": ["reasoning.encrypted_content"],
        "truncation": "auto",
        "stream_options": {"include_obfuscation": False},
        "reasoning": {"effort": "low", "summary": "auto"},
        "top_k": 5,  # not a Responses field: a vendor extension, passed on
    }
    assert translate(body, cap=50, stream=True) == {
        "model": "up",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 50,
        "temperature": 0.2,
        "top_p": 0.9,
        "user": "u1",
        "reasoning_effort": "low",
        "top_k": 5,
    }


def test_null_optionals_are_dropped_not_refused() -> None:
    body = {
        "model": "m",
        "input": "x",
        "previous_response_id": None,
        "conversation": None,
        "prompt": None,
        "background": False,
        "tools": None,
        "tool_choice": None,
    }
    assert translate(body) == {"model": "up", "messages": [{"role": "user", "content": "x"}]}


def test_items_become_messages() -> None:
    items: list[dict[str, Any]] = [
        {"role": "developer", "content": "Rules."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [
                {"type": "output_text", "text": "Hel", "annotations": []},
                {"type": "output_text", "text": "lo", "annotations": []},
            ],
        },
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "g", "arguments": '{"a":1}'},
        {"type": "function_call_output", "call_id": "c1", "output": "one"},
        {
            "type": "function_call_output",
            "call_id": "c2",
            "output": [{"type": "input_text", "text": "two"}],
        },
        {"type": "function_call", "call_id": "c3", "name": "h", "arguments": ""},
    ]
    assert chat_messages("Sys", items) == [
        {"role": "system", "content": "Sys"},
        {"role": "system", "content": "Rules."},
        {"role": "user", "content": "Hi"},
        {
            "role": "assistant",
            "content": "Hello",
            "tool_calls": [  # calls after an assistant message join it
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                {"id": "c2", "type": "function", "function": {"name": "g", "arguments": '{"a":1}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
        {"role": "tool", "tool_call_id": "c2", "content": "two"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c3", "type": "function", "function": {"name": "h", "arguments": ""}}
            ],
        },
    ]


def test_user_parts_with_images_stay_parts() -> None:
    content = [
        {"type": "input_text", "text": "What is it?"},
        {"type": "input_image", "image_url": "https://x/y.png", "detail": "high"},
        {"type": "input_image", "image_url": "data:image/png;base64,AA"},
    ]
    assert chat_messages(None, [{"role": "user", "content": content}]) == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is it?"},
                {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "high"}},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}},
            ],
        }
    ]


def test_tools_tool_choice_and_formats() -> None:
    schema = {"type": "object", "properties": {}}
    body = {
        "model": "m",
        "input": "x",
        "tools": [TOOL],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "parallel_tool_calls": False,
        "text": {
            "format": {"type": "json_schema", "name": "w", "schema": schema, "strict": True},
            "verbosity": "low",
        },
    }
    out = translate(body)
    assert out["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather.",
                "parameters": TOOL["parameters"],
                "strict": True,
            },
        }
    ]
    assert out["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert out["parallel_tool_calls"] is False
    assert out["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "w", "schema": schema, "strict": True},
    }
    assert "text" not in out
    for choice in ("auto", "none", "required"):
        assert translate({**body, "tool_choice": choice})["tool_choice"] == choice
    assert translate({**body, "text": {"format": {"type": "json_object"}}})["response_format"] == {
        "type": "json_object"
    }
    assert "response_format" not in translate({**body, "text": {"format": {"type": "text"}}})
    assert "parallel_tool_calls" not in translate(
        {"model": "m", "input": "x", "parallel_tool_calls": True}
    )


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"conversation": {"id": "conv_1"}}, "conversation"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"background": True}, "background"),
        ({"tools": [{"type": "web_search_preview"}]}, "tools[0]"),
        ({"tools": [TOOL, {"type": "mcp", "server_label": "x"}]}, "tools[1]"),
        ({"tools": [{"type": "custom", "name": "x"}]}, "tools[0]"),
        ({"tool_choice": {"type": "file_search"}}, "tool_choice"),
        ({"tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": []}}, "tool_choice"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0]"),
        ({"input": [{"type": "web_search_call", "id": "x"}]}, "input[0]"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input[0].content[0]",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            "input[0].content[0]",
        ),
        (
            {
                "input": [
                    {
                        "role": "assistant",
                        "content": [{"type": "input_image", "image_url": "https://x"}],
                    }
                ]
            },
            "input[0]",
        ),
    ],
)
def test_what_cannot_be_translated_says_why(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        translate({"model": "m", "input": "x", **extra})
    assert caught.value.param == param
    assert caught.value.status == 400
    assert caught.value.code == "unsupported_parameter"
    assert "cannot be translated" in caught.value.message


@pytest.mark.parametrize(
    ("instructions", "input", "param"),
    [
        (None, None, "input"),
        (None, 5, "input"),
        (["x"], "x", "instructions"),
        (None, ["x"], "input[0]"),
        (None, [{"role": "robot", "content": "x"}], "input[0].role"),
        (None, [{"role": "user", "content": 5}], "input[0].content"),
        (None, [{"type": "function_call", "name": "f", "arguments": "{}"}], "input[0].call_id"),
        (None, [{"type": "function_call_output", "output": "x"}], "input[0].call_id"),
    ],
)
def test_malformed_input_is_invalid(instructions: object, input: object, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        chat_messages(instructions, input)
    assert caught.value.param == param


# -- complete answers ----------------------------------------------------------------------------
def chat_answer(message: dict[str, Any], finish: str = "stop", **extra: Any) -> bytes:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "up-model",
        "choices": [
            {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}
        ],
        **extra,
    }
    return json.dumps(body).encode()


def test_a_chat_answer_becomes_a_response_object() -> None:
    request = {
        "model": "public",
        "input": "x",
        "instructions": "I",
        "tools": [TOOL],
        "temperature": 0.3,
        "metadata": {"k": "v"},
    }
    data = chat_answer(
        {
            "content": "Hello",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        "tool_calls",
        usage={
            "prompt_tokens": 9,
            "completion_tokens": 7,
            "completion_tokens_details": {"reasoning_tokens": 2},
        },
    )
    obj = response_object(request, decode_answer(data), TokenCounts(9, 7, 4))
    parsed = Response.model_validate(obj)  # the SDK's own type, strictly
    assert parsed.id.startswith("resp_")
    assert (parsed.status, parsed.model, parsed.created_at) == ("completed", "up-model", 1700000000)
    assert parsed.output_text == "Hello"
    message, call = obj["output"]
    assert message["type"] == "message"
    assert message["id"].startswith("msg_")
    assert call == {
        "id": call["id"],
        "type": "function_call",
        "status": "completed",
        "call_id": "call_1",
        "name": "get_weather",
        "arguments": '{"city":"Paris"}',
    }
    assert obj["usage"] == {
        "input_tokens": 9,
        "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0},
        "output_tokens": 7,
        "output_tokens_details": {"reasoning_tokens": 2},
        "total_tokens": 16,
    }
    assert (obj["instructions"], obj["temperature"], obj["metadata"]) == ("I", 0.3, {"k": "v"})
    assert obj["tools"] == [TOOL]
    assert obj["store"] is False


@pytest.mark.parametrize(
    ("finish", "status", "reason"),
    [
        ("stop", "completed", None),
        ("length", "incomplete", "max_output_tokens"),
        ("content_filter", "incomplete", "content_filter"),
    ],
)
def test_finish_reasons_become_statuses(finish: str, status: str, reason: str | None) -> None:
    obj = response_object(
        {"model": "m"}, decode_answer(chat_answer({"content": "x"}, finish)), TokenCounts(1, 1)
    )
    assert obj["status"] == status
    assert obj["incomplete_details"] == (None if reason is None else {"reason": reason})
    assert obj["output"][0]["status"] == ("completed" if reason is None else "incomplete")
    Response.model_validate(obj)


def test_a_refusal_is_a_refusal_part() -> None:
    obj = response_object(
        {"model": "m"},
        decode_answer(chat_answer({"content": None, "refusal": "No."})),
        TokenCounts(1, 1),
    )
    assert obj["output"][0]["content"] == [{"type": "refusal", "refusal": "No."}]
    Response.model_validate(obj)


def test_usage_json_bounds_reasoning_by_output() -> None:
    assert usage_json(TokenCounts(3, 2, 1), reasoning_tokens=9)["output_tokens_details"] == {
        "reasoning_tokens": 2
    }


# -- streams -------------------------------------------------------------------------------------
def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> bytes:
    choices = (
        []
        if delta is None and finish is None
        else [{"index": 0, "delta": delta or {}, "finish_reason": finish}]
    )
    return json.dumps(
        {"id": "c", "object": "chat.completion.chunk", "model": "up", "choices": choices, **extra}
    ).encode()


def test_a_text_stream() -> None:
    translator = StreamTranslator({"model": "public", "input": "x"})
    raw = b"".join(
        translator.chunk(decode_chunk(data))
        for data in (
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Hel"}),
            chunk({"content": "lo"}),
            chunk(finish="stop"),
        )
    )
    raw += b"".join(translator.finish(TokenCounts(5, 2, 1)))
    events = events_of(raw)
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["response"]["model"] == "up", "the backend's model, as for chat"
    assert events[6]["text"] == "Hello"
    done = events[-1]["response"]
    assert done["id"] == events[0]["response"]["id"] == translator.id
    assert done["output"] == [events[8]["item"]]
    assert done["usage"]["input_tokens_details"]["cached_tokens"] == 1
    assert (done["usage"]["input_tokens"], done["usage"]["output_tokens"]) == (5, 2)


def test_text_then_parallel_tool_calls_then_no_finish_reason() -> None:
    translator = StreamTranslator({"model": "m"})
    call = {
        "index": 0,
        "id": "call_a",
        "type": "function",
        "function": {"name": "f", "arguments": ""},
    }
    raw = b"".join(
        translator.chunk(decode_chunk(data))
        for data in (
            chunk({"content": "Let me look."}),
            chunk({"tool_calls": [call]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"x":'}}]}),
            chunk(
                {
                    "tool_calls": [
                        {"index": 1, "id": "call_b", "function": {"name": "g", "arguments": "{}"}}
                    ]
                }
            ),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}),
        )
    )
    raw += b"".join(translator.finish(TokenCounts(1, 1)))
    events = events_of(raw)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    added = [e["item"] for e in events if e["type"] == "response.output_item.added"]
    assert [(i["type"], i.get("call_id")) for i in added] == [
        ("message", None),
        ("function_call", "call_a"),
        ("function_call", "call_b"),
    ]
    text_done = next(e for e in events if e["type"] == "response.output_item.done")
    assert text_done["item"]["type"] == "message", "the message closes when a call opens"
    arguments = {
        e["item_id"]: e["arguments"]
        for e in events
        if e["type"] == "response.function_call_arguments.done"
    }
    assert sorted(arguments.values()) == ['{"x":1}', "{}"]
    final = events[-1]["response"]
    assert final["status"] == "completed"
    assert [i["type"] for i in final["output"]] == ["message", "function_call", "function_call"]
    assert [e["output_index"] for e in events if e["type"] == "response.output_item.added"] == [
        0,
        1,
        2,
    ]


def test_a_stream_cut_by_the_bound_is_incomplete() -> None:
    translator = StreamTranslator({"model": "m"})
    translator.chunk(decode_chunk(chunk({"content": "a"})))
    translator.chunk(decode_chunk(chunk(finish="length")))
    [*_, last] = events_of(b"".join(translator.finish(TokenCounts(1, 1))))
    assert last["type"] == "response.incomplete"
    assert last["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert last["response"]["output"][0]["status"] == "incomplete"


def test_an_empty_stream_still_opens_and_completes() -> None:
    events = events_of(b"".join(StreamTranslator({"model": "m"}).finish(TokenCounts(4, 0))))
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.completed",
    ]
    assert events[-1]["response"]["output"] == []


def test_the_error_event_has_both_shapes_and_the_next_sequence_number() -> None:
    translator = StreamTranslator({"model": "m"})
    opened = events_of(translator.chunk(decode_chunk(chunk({"content": "a"}))))
    [error] = events_of(
        translator.error(message="No money.", code="insufficient_quota", type="insufficient_quota")
    )
    assert error == {
        "type": "error",
        "code": "insufficient_quota",
        "message": "No money.",
        "param": None,
        "sequence_number": opened[-1]["sequence_number"] + 1,
        "error": {
            "type": "insufficient_quota",
            "code": "insufficient_quota",
            "message": "No money.",
            "param": None,
        },
    }
    EVENT.validate_python({k: v for k, v in error.items() if k != "error"})


# -- the dialects --------------------------------------------------------------------------------
def test_which_dialect() -> None:
    native = BackendConfig(name="n", base_url="http://x/v1", responses_api=True)
    chat = BackendConfig(name="c", base_url="http://x/v1")
    demo = BackendConfig(name="d", kind="demo", responses_api=True)
    assert isinstance(responses_dialect(native), NativeResponses)
    assert isinstance(responses_dialect(chat), ChatTranslation)
    assert isinstance(responses_dialect(demo), ChatTranslation), "the demo speaks chat"


def test_native_body_changes_only_model_and_bound() -> None:
    dialect = NativeResponses()
    body = {
        "model": "public",
        "input": "x",
        "previous_response_id": "r",
        "stream": True,
        "max_output_tokens": 500,
        "tools": [{"type": "web_search"}],
    }
    sent = msgspec.json.decode(
        dialect.upstream_body(body, upstream_model="up", cap=40, stream=True)
    )
    assert sent == {**body, "model": "up", "max_output_tokens": 40}
    assert dialect.path == "/responses"


def test_native_answer_usage_and_texts() -> None:
    answer = {
        "id": "resp_1",
        "object": "response",
        "output": [
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "thinking"}]},
            {
                "type": "message",
                "content": [
                    {"type": "output_text", "text": "Hi"},
                    {"type": "refusal", "refusal": "no"},
                ],
            },
            {"type": "function_call", "name": "f", "arguments": "{}", "call_id": "c"},
            {"type": "web_search_call", "status": "completed"},
        ],
        "usage": {
            "input_tokens": 20,
            "output_tokens": 30,
            "input_tokens_details": {"cached_tokens": 5},
            "output_tokens_details": {"reasoning_tokens": 25},
            "total_tokens": 50,
        },
    }
    reported, texts = NativeResponses().read_answer(json.dumps(answer).encode())
    assert reported == ReportedUsage(20, 30, 5), "reasoning is inside output_tokens already"
    assert [t for _, t in texts] == ["thinking", "Hi", "no", "{}", "f"]
    with pytest.raises(UpstreamError):
        NativeResponses().read_answer(b"not json")


def test_native_events() -> None:
    dialect = NativeResponses()
    usage = {"input_tokens": 3, "output_tokens": 4, "input_tokens_details": {"cached_tokens": 1}}
    steps = {
        kind: dialect.read_event(sse({"type": kind, "sequence_number": 1, **extra}))
        for kind, extra in [
            ("response.created", {"response": {"id": "r"}}),
            ("response.output_text.delta", {"delta": "Hi"}),
            ("response.function_call_arguments.delta", {"delta": "{}"}),
            ("response.reasoning_summary_text.delta", {"delta": "hm"}),
            ("response.audio.delta", {"delta": "AAAA"}),
            ("response.output_text.done", {"text": "Hi"}),
            ("response.completed", {"response": {"usage": usage}}),
            ("response.incomplete", {"response": {"usage": None}}),
            ("response.failed", {"response": {"usage": usage}}),
            ("error", {"code": "x", "message": "y"}),
        ]
    }
    assert steps["response.created"].action is Action.PASS
    assert steps["response.output_text.delta"].texts == ((0, "Hi"),)
    assert steps["response.function_call_arguments.delta"].action is Action.CONTENT
    assert steps["response.reasoning_summary_text.delta"].texts == ((0, "hm"),)
    assert steps["response.audio.delta"].action is Action.PASS, "audio is not text"
    assert steps["response.output_text.done"].action is Action.PASS
    assert steps["response.completed"].action is Action.DONE
    assert steps["response.completed"].usage == ReportedUsage(3, 4, 1)
    assert steps["response.incomplete"] == Step(Action.DONE), "no usage: counted"
    assert steps["response.failed"].action is Action.ERROR
    assert steps["error"].action is Action.ERROR
    assert dialect.read_event(Event(b": ping\n\n", None, None)).action is Action.PASS
    assert dialect.read_event(Event(b"data: {\n\n", b"{", None)).action is Action.DROP


def test_native_stream_error_follows_the_last_event_delivered() -> None:
    dialect = NativeResponses()
    delivered = sse({"type": "response.output_text.delta", "sequence_number": 7, "delta": "a"})
    dialect.render_event(delivered, dialect.read_event(delivered))
    dialect.read_event(
        sse({"type": "response.output_text.delta", "sequence_number": 8, "delta": "b"})
    )  # read, then cut off: never delivered
    [error] = events_of(dialect.stream_error(InsufficientQuota("No money.")))
    assert error["sequence_number"] == 8
    assert error["code"] == "insufficient_quota"


def test_chat_translation_reads_chunks_for_metering() -> None:
    dialect = ChatTranslation("max_tokens")
    dialect.upstream_body(
        {"model": "m", "input": "x"},
        upstream_model="up",
        cap=None,
        stream=True,
    )
    step = dialect.read_event(
        sse(
            {
                "choices": [
                    {
                        "index": 0,
                        "delta": {
                            "content": "Hi",
                            "reasoning_content": "hm",
                            "tool_calls": [
                                {"index": 0, "function": {"name": "f", "arguments": "{}"}}
                            ],
                        },
                    }
                ]
            }
        )
    )
    assert step.action is Action.CONTENT
    assert [t for _, t in step.texts] == ["hm", "Hi", "f", "{}"]
    usage = {
        "prompt_tokens": 4,
        "completion_tokens": 6,
        "prompt_tokens_details": {"cached_tokens": 2},
        "completion_tokens_details": {"reasoning_tokens": 3},
    }
    step = dialect.read_event(sse({"choices": [], "usage": usage}))
    assert (step.action, step.usage) == (Action.USAGE, ReportedUsage(4, 6, 2))
    assert dialect.read_event(Event(b"data: [DONE]\n\n", b"[DONE]", None)).action is Action.DONE
    [*_, done] = events_of(b"".join(dialect.stream_tail([], TokenCounts(4, 6, 2))))
    assert done["response"]["usage"]["output_tokens_details"] == {"reasoning_tokens": 3}


def test_chat_translation_renders_an_upstream_error_chunk() -> None:
    dialect = ChatTranslation("max_tokens")
    dialect.upstream_body(
        {"model": "m", "input": "x"},
        upstream_model="up",
        cap=None,
        stream=True,
    )
    event = sse({"error": {"message": "overloaded", "type": "server_error", "code": None}})
    step = dialect.read_event(event)
    assert step.action is Action.ERROR
    [error] = events_of(dialect.render_event(event, step))
    assert (error["type"], error["message"], error["error"]["type"]) == (
        "error",
        "overloaded",
        "server_error",
    )
    assert events_of(b"".join(dialect.stream_tail([], TokenCounts()))) == [error]


def test_chat_translation_relays_keepalives_after_opening() -> None:
    dialect = ChatTranslation("max_tokens")
    dialect.upstream_body(
        {"model": "m", "input": "x"},
        upstream_model="up",
        cap=None,
        stream=True,
    )
    comment = Event(b": keep-alive\n\n", None, None)
    out = dialect.render_event(comment, dialect.read_event(comment))
    assert out.endswith(b": keep-alive\n\n")
    assert [e["type"] for e in events_of(out)] == ["response.created", "response.in_progress"]


def test_chat_translation_of_a_complete_answer() -> None:
    dialect = ChatTranslation("max_tokens")
    sent = msgspec.json.decode(
        dialect.upstream_body(
            {"model": "public", "input": "x", "max_output_tokens": 99},
            upstream_model="up",
            cap=20,
            stream=False,
        )
    )
    assert (dialect.path, sent["max_tokens"], "stream" in sent) == ("/chat/completions", 20, False)
    data = chat_answer({"content": "Hello"}, usage={"prompt_tokens": 3, "completion_tokens": 1})
    reported, texts = dialect.read_answer(data)
    assert (reported, texts) == (ReportedUsage(3, 1, None), ((0, "Hello"),))
    obj = json.loads(dialect.render_answer(data, TokenCounts(3, 1)))
    assert Response.model_validate(obj).output_text == "Hello"
    assert obj["max_output_tokens"] == 99, "the response echoes what the client asked"
    with pytest.raises(UpstreamError):
        dialect.read_answer(b"[]")
