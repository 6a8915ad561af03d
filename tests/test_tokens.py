"""Offline encodings and OpenAI-style token counting (gateway.tokens)."""

from __future__ import annotations

import gzip
import importlib.resources
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.tokens import (
    DEFAULT_ENCODING,
    IMAGE_PART_TOKENS,
    SUPPORTED_ENCODINGS,
    EncodingError,
    TokenCounter,
    _build_encoding,
    _load_ranks,
    encoding_name_for_model,
    get_encoding,
    resolve_encoding,
)

CL100K = TokenCounter("cl100k_base")
O200K = TokenCounter("o200k_base")
COUNTERS = [CL100K, O200K]

# The example conversation of the OpenAI cookbook "How to count tokens with tiktoken".
COOKBOOK_MESSAGES: list[dict[str, str]] = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate "
        "jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities "
        "for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client "
        "deliverable.",
    },
]


def _shipped_file(name: str) -> bytes:
    resource = importlib.resources.files("gateway") / "encodings" / f"{name}.tiktoken.gz"
    return resource.read_bytes()


# --- the cookbook check ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "expected"),
    [("gpt-4", 129), ("gpt-4-0613", 129), ("gpt-4o", 124), ("gpt-4o-mini", 124)],
)
def test_cookbook_example_counts(model: str, expected: int) -> None:
    counter = TokenCounter(resolve_encoding(None, model, model))
    assert counter.count_chat_prompt(COOKBOOK_MESSAGES) == expected


# --- loading -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "hello_world", "n_vocab", "endoftext"),
    [
        ("cl100k_base", [15339, 1917], 100277, 100257),
        ("o200k_base", [24912, 2375], 200019, 199999),
    ],
)
def test_shipped_encodings_match_tiktoken(
    name: str, hello_world: list[int], n_vocab: int, endoftext: int
) -> None:
    encoding = get_encoding(name)
    assert encoding.name == name
    assert encoding.encode_ordinary("hello world") == hello_world
    assert encoding.n_vocab == n_vocab
    assert encoding.encode("<|endoftext|>", allowed_special="all") == [endoftext]


def test_supported_encodings() -> None:
    assert SUPPORTED_ENCODINGS == ("cl100k_base", "o200k_base")
    assert DEFAULT_ENCODING in SUPPORTED_ENCODINGS


@pytest.mark.parametrize("name", ["p50k_base", "r50k_base", "gpt2", "o200k_harmony", ""])
def test_unknown_encoding_is_refused(name: str) -> None:
    with pytest.raises(EncodingError, match="unknown encoding"):
        get_encoding(name)
    with pytest.raises(EncodingError, match="unknown encoding"):
        TokenCounter(name)


def test_encoding_is_loaded_once_and_shared() -> None:
    assert get_encoding("cl100k_base") is get_encoding("cl100k_base")


def test_cold_concurrent_loads_build_one_encoding() -> None:
    _build_encoding.cache_clear()
    results: list[object] = []
    barrier = threading.Barrier(6)

    def load() -> None:
        barrier.wait()
        results.append(get_encoding("o200k_base"))

    threads = [threading.Thread(target=load) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 6
    assert all(result is results[0] for result in results)
    assert _build_encoding.cache_info().misses == 1


@pytest.mark.parametrize(("name", "size"), [("cl100k_base", 100256), ("o200k_base", 199998)])
def test_load_ranks_accepts_the_shipped_file(name: str, size: int) -> None:
    ranks = _load_ranks(_shipped_file(name), name)
    assert len(ranks) == size
    assert ranks[b"!"] == 0


def test_load_ranks_refuses_a_corrupted_file() -> None:
    contents = bytearray(gzip.decompress(_shipped_file("cl100k_base")))
    contents[-2] = ord("8") if contents[-2] != ord("8") else ord("9")  # change the last rank
    with pytest.raises(EncodingError, match=r"cl100k_base is corrupt: sha256 [0-9a-f]{64}"):
        _load_ranks(gzip.compress(bytes(contents)), "cl100k_base")


def test_load_ranks_refuses_the_other_encodings_file() -> None:
    with pytest.raises(EncodingError, match="corrupt"):
        _load_ranks(_shipped_file("cl100k_base"), "o200k_base")


@pytest.mark.parametrize("blob", [b"", b"not gzip at all", gzip.compress(b"IQ== 0\n")[:-6]])
def test_load_ranks_refuses_what_is_not_gzip(blob: bytes) -> None:
    with pytest.raises(EncodingError, match="o200k_base"):
        _load_ranks(blob, "o200k_base")


def test_loads_and_counts_with_the_network_unreachable(tmp_path: Path) -> None:
    cache_dir = tmp_path / "tiktoken-cache"
    cache_dir.mkdir()
    script = textwrap.dedent(
        f"""
        import socket

        def refuse(*args, **kwargs):
            raise OSError("network is unreachable in this test")

        socket.socket.connect = refuse
        socket.socket.connect_ex = refuse
        socket.create_connection = refuse
        socket.getaddrinfo = refuse

        import tiktoken

        try:  # the guard works: tiktoken's own loader cannot download
            tiktoken.get_encoding("r50k_base")
        except Exception:
            pass
        else:
            raise SystemExit("the network was reachable")

        from gateway.tokens import TokenCounter

        messages = {COOKBOOK_MESSAGES!r}
        print(
            TokenCounter("cl100k_base").count_chat_prompt(messages),
            TokenCounter("o200k_base").count_chat_prompt(messages),
            TokenCounter("o200k_base").count_text("hello world"),
        )
        """
    )
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(cache_dir)}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["129", "124", "2"]
    assert list(cache_dir.iterdir()) == []


# --- model to encoding -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4", "cl100k_base"),
        ("gpt-4-0613", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-2024-08-06", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("ft:gpt-4o-mini:acme::abc", "o200k_base"),
        ("text-davinci-003", None),  # p50k_base: not shipped
        ("davinci", None),  # r50k_base
        ("gpt2", None),
        ("gpt-oss-120b", None),  # o200k_harmony
        ("llama-3.1-70b", None),
        ("", None),
    ],
)
def test_encoding_name_for_model(model: str, expected: str | None) -> None:
    assert encoding_name_for_model(model) == expected


@pytest.mark.parametrize(
    ("tokenizer", "upstream_model", "model", "expected"),
    [
        ("cl100k_base", "gpt-4o", "gpt-4o", "cl100k_base"),  # the route wins
        (None, "gpt-4-0613", "gpt-4o", "cl100k_base"),  # then the upstream model
        ("", "gpt-4-0613", "gpt-4o", "cl100k_base"),
        (None, "my-finetune", "gpt-4", "cl100k_base"),  # then the public model
        (None, "llama", "house-model", "o200k_base"),  # then the default
        (None, "text-davinci-003", "gpt-4", "cl100k_base"),  # unshipped encodings skipped
    ],
)
def test_resolve_encoding(
    tokenizer: str | None, upstream_model: str, model: str, expected: str
) -> None:
    assert resolve_encoding(tokenizer, upstream_model, model) == expected


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
        + (3 + c("user") + c("What is in this image?") + IMAGE_PART_TOKENS + c("bare string part"))
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
        + (3 + c("user") + c("What is this?") + IMAGE_PART_TOKENS)
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
