"""OpenAI's counting recipe (gateway.tokens.counter)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.tokens import (
    MAX_IMAGE_TOKENS,
    UNSIZED_FILE_TOKENS,
    TokenCounter,
    resolve_encoding,
)
from tokens.cases import CL100K, COOKBOOK_MESSAGES, COUNTERS, O200K

# --- the cookbook check ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "expected"),
    [("gpt-4", 129), ("gpt-4-0613", 129), ("gpt-4o", 124), ("gpt-4o-mini", 124)],
)
def test_cookbook_example_counts(model: str, expected: int) -> None:
    counter = TokenCounter(resolve_encoding(None, model, model))
    assert counter.count_chat_prompt(COOKBOOK_MESSAGES) == expected


# --- counting ----------------------------------------------------------------------------------


@pytest.mark.parametrize("counter", COUNTERS, ids=repr)
def test_count_text(counter: TokenCounter) -> None:
    assert counter.count_text("") == 0
    assert counter.count_text("hello world") == 2
    assert counter.count_text("\ud800 lone surrogate") > 0  # never raises


@pytest.mark.parametrize("counter", COUNTERS, ids=repr)
def test_special_token_text_counts_as_ordinary_text(counter: TokenCounter) -> None:
    assert counter.count_text("<|endoftext|>") > 1
    assert counter.count_text("a<|endofprompt|>b") > 3


def test_chat_message_shapes() -> None:
    c = CL100K.count_text
    messages: list[object] = [
        {"role": "user", "content": None},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this image?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                {"type": "file", "file": {"file_data": "JVBERi0=", "filename": "a.pdf"}},
                {"type": "text", "text": 42},
                "bare string part",
                None,
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_abc",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
                "junk",
                {"function": None},
            ],
        },
        {"role": "tool", "tool_call_id": "call_abc", "content": '{"temp": 21}'},
        {"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}, "content": ""},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't."}]},
        "not a message",
        None,
        ["nor", "this"],
    ]
    expected = (
        (3 + c("user"))
        + (
            3
            + c("user")
            + c("What is in this image?")
            + MAX_IMAGE_TOKENS  # 3 zero bytes: no image header to read
            + 1  # 4 bytes of audio that are not a WAV: ceil(4 / 50)
            + 5  # "JVBERi0=" decodes to 5 bytes
            + c("bare string part")
        )
        + (3 + c("assistant") + c("get_weather") + c('{"city": "Paris"}'))
        + (3 + c("tool") + c("call_abc") + c('{"temp": 21}'))
        + (3 + c("assistant") + c("f") + c("{}"))
        + (3 + c("assistant") + c("I can't."))
        + 3
    )
    assert CL100K.count_chat_prompt(messages) == expected


def test_name_adds_one_token() -> None:
    plain = CL100K.count_chat_prompt([{"role": "user", "content": "hi"}])
    named = CL100K.count_chat_prompt([{"role": "user", "content": "hi", "name": "bob"}])
    assert named == plain + CL100K.count_text("bob") + 1


def test_empty_and_junk_conversations_count_the_reply_priming() -> None:
    assert CL100K.count_chat_prompt([]) == 3
    assert CL100K.count_chat_prompt([1, "x", None, [], 2.5]) == 3
    assert CL100K.count_chat_prompt("not a list") == 3
    assert CL100K.count_chat_prompt(None) == 3  # type: ignore[arg-type]


def test_tools_are_estimated_from_their_json() -> None:
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather for a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    base = O200K.count_chat_prompt(messages)
    compact = json.dumps(tools, separators=(",", ":"))
    assert O200K.count_chat_prompt(messages, tools) == base + O200K.count_text(compact)
    assert O200K.count_chat_prompt(messages, None) == base
    assert O200K.count_chat_prompt(messages, []) == base


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("hello world", 2),
        (["hello world", "hello"], 3),
        ([15339, 1917, 7], 3),  # token ids: their number
        ([[15339, 1917], [1, 2, 3]], 5),
        (["hello world", [1, 2], 9], 5),  # mixed: counted item by item
        ([], 0),
        ("", 0),
        (None, 0),
        (7, 0),
        (True, 0),
        ({"text": "hello"}, 0),
        ([True, 1.5, None, {"a": "b"}], 0),
        ([[["deep"]], [["x"], 1]], 1),
        ([["text in a nested list"]], 0),
    ],
)
def test_completion_prompt_and_embedding_input_shapes(prompt: object, expected: int) -> None:
    assert CL100K.count_completion_prompt(prompt) == expected
    assert CL100K.count_embedding_input(prompt) == expected


# --- properties --------------------------------------------------------------------------------

_KEYS = st.sampled_from(
    [
        "role",
        "content",
        "name",
        "tool_calls",
        "function",
        "function_call",
        "arguments",
        "type",
        "text",
        "image_url",
        "tool_call_id",
        "refusal",
    ]
)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.sampled_from(["text", "image_url", "input_audio", "refusal", "function"])
)
JSON_VALUES = st.recursive(
    _SCALARS,
    lambda children: (
        st.lists(children, max_size=6)
        | st.dictionaries(_KEYS | st.text(max_size=8), children, max_size=6)
    ),
    max_leaves=40,
)
_PROPERTY_SETTINGS = settings(max_examples=200, deadline=None)


@_PROPERTY_SETTINGS
@given(messages=JSON_VALUES, tools=JSON_VALUES)
def test_count_chat_prompt_never_raises(messages: Any, tools: Any) -> None:
    for counter in COUNTERS:
        assert counter.count_chat_prompt(messages, tools) >= 3


@_PROPERTY_SETTINGS
@given(value=JSON_VALUES)
def test_count_prompt_and_input_never_raise(value: Any) -> None:
    for counter in COUNTERS:
        assert counter.count_completion_prompt(value) >= 0
        assert counter.count_embedding_input(value) >= 0


@_PROPERTY_SETTINGS
@given(first=st.lists(JSON_VALUES, max_size=4), second=st.lists(JSON_VALUES, max_size=4))
def test_chat_messages_add_up(first: list[object], second: list[object]) -> None:
    together = O200K.count_chat_prompt(first + second)
    assert together == O200K.count_chat_prompt(first) + O200K.count_chat_prompt(second) - 3


@_PROPERTY_SETTINGS
@given(text=st.text())
def test_count_text_is_bounded_by_bytes(text: str) -> None:
    for counter in COUNTERS:
        count = counter.count_text(text)
        assert (count == 0) == (text == "")
        assert count <= len(text.encode("utf-8"))


@_PROPERTY_SETTINGS
@given(ids=st.lists(st.integers(min_value=0, max_value=200_000)))
def test_token_id_prompts_count_their_length(ids: list[int]) -> None:
    assert CL100K.count_completion_prompt(ids) == len(ids)
    assert CL100K.count_embedding_input([ids, ids]) == 2 * len(ids)


# --- the Responses API's input -----------------------------------------------------------------


@pytest.mark.parametrize("counter", COUNTERS, ids=repr)
def test_responses_input_counts_as_its_chat_twin(counter: TokenCounter) -> None:
    """The cookbook conversation (without its ``name`` fields, which Responses items lack), as
    ``instructions`` and input items, counts what the same chat messages count."""
    messages = [{k: v for k, v in m.items() if k != "name"} for m in COOKBOOK_MESSAGES]
    system, rest = messages[0], messages[1:]
    items = [
        {
            "type": "message",
            "role": m["role"],
            "content": [{"type": "input_text", "text": m["content"]}],
        }
        if i % 2
        else m
        for i, m in enumerate(rest)
    ]
    chat = counter.count_chat_prompt(messages)
    assert counter.count_responses_input(system["content"], items) == chat
    assert counter.count_responses_input(None, "hello") == counter.count_chat_prompt(
        [{"role": "user", "content": "hello"}]
    )


def test_responses_items_count_as_the_chat_messages_they_stand_for() -> None:
    c = O200K.count_text
    items: list[object] = [
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "What is this?"},
                {"type": "input_image", "image_url": "https://x/y.png"},
                {"type": "input_file", "file_id": "file_1"},
            ],
        },
        {
            "type": "message",
            "role": "assistant",
            "id": "msg_1",
            "status": "completed",
            "content": [
                {"type": "output_text", "text": "A cat.", "annotations": []},
                {"type": "refusal", "refusal": "No more."},
            ],
        },
        {
            "type": "function_call",
            "id": "fc_1",
            "call_id": "call_1",
            "name": "get_weather",
            "arguments": '{"city": "Paris"}',
            "status": "completed",
        },
        {"type": "function_call_output", "call_id": "call_1", "output": "22 C"},
        {
            "type": "function_call_output",
            "call_id": "call_2",
            "output": [{"type": "input_text", "text": "sunny"}],
        },
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "hm"}]},
        {"type": "item_reference", "id": "msg_0"},
        "junk",
        None,
    ]
    expected = (
        3
        + (3 + c("user") + c("What is this?") + MAX_IMAGE_TOKENS + UNSIZED_FILE_TOKENS)
        + (3 + c("assistant") + c("A cat.") + c("No more."))
        + (3 + c("assistant") + c("get_weather") + c('{"city": "Paris"}'))
        + (3 + c("tool") + c("22 C"))
        + (3 + c("tool") + c("sunny"))
    )
    assert O200K.count_responses_input(None, items) == expected
    tools = [{"type": "function", "name": "f", "parameters": {}}]
    assert O200K.count_responses_input("Be brief.", items, tools) == (
        expected + 3 + c("system") + c("Be brief.") + O200K._count_tools(tools)
    )


@_PROPERTY_SETTINGS
@given(instructions=JSON_VALUES, input=JSON_VALUES, tools=JSON_VALUES)
def test_count_responses_input_never_raises(instructions: Any, input: Any, tools: Any) -> None:
    assert O200K.count_responses_input(instructions, input, tools) >= 3
