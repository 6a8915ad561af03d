"""Offline encodings and OpenAI-style token counting (gateway.tokens)."""

from __future__ import annotations

import base64
import gzip
import importlib.resources
import json
import math
import os
import struct
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
    AUDIO_MIN_BYTES_PER_SECOND,
    AUDIO_TOKENS_PER_SECOND,
    DEFAULT_ENCODING,
    IMAGE_PART_TOKENS,
    IMAGE_TILE_TOKENS,
    MAX_IMAGE_TOKENS,
    SUPPORTED_ENCODINGS,
    UNSIZED_FILE_TOKENS,
    EncodingError,
    TokenCounter,
    _build_encoding,
    _load_ranks,
    encoding_name_for_model,
    get_encoding,
    image_tokens,
    resolve_encoding,
)
from media import data_url, gif, jpeg, jpeg_segment, png, riff, webp_vp8, webp_vp8l, webp_vp8x

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


# --- parts that are not text: bounded by their size ----------------------------------------------


def _chat_part(part: object) -> int:
    """What one content part adds to a chat message."""
    empty = O200K.count_chat_prompt([{"role": "user", "content": []}])
    return O200K.count_chat_prompt([{"role": "user", "content": [part]}]) - empty


def _responses_part(part: object) -> int:
    """What one content part adds to a Responses API message item."""
    empty = O200K.count_responses_input(None, [{"role": "user", "content": []}])
    return O200K.count_responses_input(None, [{"role": "user", "content": [part]}]) - empty


def _image(url: object, detail: object = None) -> dict[str, object]:
    image: dict[str, object] = {"url": url}
    if detail is not None:
        image["detail"] = detail
    return {"type": "image_url", "image_url": image}


def _input_image(url: object, detail: object = "auto") -> dict[str, object]:
    return {"type": "input_image", "image_url": url, "detail": detail}


def test_the_most_an_image_costs() -> None:
    # after scaling the shortest side is <= 768 (2 tiles) and the longest <= 2048 (4 tiles)
    assert MAX_IMAGE_TOKENS == IMAGE_PART_TOKENS + IMAGE_TILE_TOKENS * 2 * 4 == 1445
    assert (IMAGE_PART_TOKENS, IMAGE_TILE_TOKENS) == (85, 170)


@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [
        (1024, 1024, 85 + 170 * 4),  # shortest side 1024 -> 768: 768x768, 2x2 tiles
        (2048, 4096, 1105),  # fit 1024x2048, shortest side 768: 768x1536, 2x3 tiles
        (4096, 2048, 1105),
        (4096, 8192, 1105),
        (2048, 2048, 765),
        (1536, 1024, 1105),  # 1152x768: 3x2 tiles
        (800, 600, 765),  # never scaled up nor down: 2x2 tiles
        (512, 512, 255),
        (513, 512, 425),
        (100, 100, 255),
        (1, 1, 255),
        (3000, 1, 765),  # 2048 x 0.68: 4x1 tiles
        (768, 2048, MAX_IMAGE_TOKENS),  # the most tiles an image can have
        (0, 100, MAX_IMAGE_TOKENS),  # no sensible size
        (100, 0, MAX_IMAGE_TOKENS),
    ],
)
def test_image_tokens_follow_the_high_detail_formula(
    width: int, height: int, expected: int
) -> None:
    assert image_tokens(width, height) == expected


@_PROPERTY_SETTINGS
@given(
    width=st.integers(min_value=1, max_value=2**32 - 1),
    height=st.integers(min_value=1, max_value=2**32 - 1),
)
def test_image_tokens_are_bounded(width: int, height: int) -> None:
    tokens = image_tokens(width, height)
    assert IMAGE_PART_TOKENS + IMAGE_TILE_TOKENS <= tokens <= MAX_IMAGE_TOKENS
    assert (tokens - IMAGE_PART_TOKENS) % IMAGE_TILE_TOKENS == 0
    assert tokens == image_tokens(height, width)


_IMAGE_FORMATS = [
    ("image/png", png),
    ("image/gif", gif),
    ("image/webp", webp_vp8),
    ("image/webp", webp_vp8l),
    ("image/webp", webp_vp8x),
    ("image/jpeg", jpeg),
]


@pytest.mark.parametrize(("mime", "make"), _IMAGE_FORMATS, ids=lambda v: getattr(v, "__name__", v))
@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [(1024, 1024, 765), (2048, 4096, 1105), (2048, 2048, 765), (300, 200, 255)],
)
def test_image_data_urls_count_their_pixel_size(
    mime: str, make: Any, width: int, height: int, expected: int
) -> None:
    url = data_url(mime, make(width, height))
    for detail in (None, "high", "auto"):
        assert _chat_part(_image(url, detail)) == expected
        assert _chat_part({"type": "image_url", "image_url": url}) == expected
        assert _responses_part(_input_image(url, detail)) == expected
    assert _chat_part(_image(url, "low")) == IMAGE_PART_TOKENS
    assert _responses_part(_input_image(url, "low")) == IMAGE_PART_TOKENS


@pytest.mark.parametrize(
    "blob",
    [
        jpeg(2048, 4096, sof=0xC2),  # progressive
        jpeg(2048, 4096, sof=0xC1),
        jpeg(2048, 4096, fill=True),  # fill bytes before the frame header
        jpeg(2048, 4096, padding=50_000),  # beyond the first scan, within 64 KiB
    ],
    ids=["progressive", "extended", "fill-bytes", "after-50KB-of-exif"],
)
def test_jpeg_frame_headers_are_found(blob: bytes) -> None:
    assert _chat_part(_image(data_url("image/jpeg", blob))) == 1105
    mime_lines = base64.encodebytes(blob).decode()  # newlines every 76 characters
    assert _chat_part(_image("data:image/jpeg;base64," + mime_lines)) == 1105
    urlsafe = base64.urlsafe_b64encode(blob).decode()
    assert _chat_part(_image("data:image/jpeg;base64," + urlsafe)) == 1105


_PNG_2048 = png(2048, 2048)
_JPEG_2048 = jpeg(2048, 2048)


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/cat.png",
        "http://example.com/cat.jpg",
        "",
        "data:image/png;base64,",
        "data:image/png;base64",  # no comma
        "data:image/png;base64,!!!!",
        "data:image/png;base64,AAAA",
        "data:image/png," + _PNG_2048.decode("latin-1"),  # not base64
        data_url("image/png", _PNG_2048[:20]),  # truncated before the size
        data_url("image/png", _PNG_2048[:8] + b"\x00\x00\x00\x0dIHDX" + _PNG_2048[16:]),
        data_url("image/png", png(0, 0)),
        data_url("image/gif", b"GIF89a\x00"),
        data_url("image/webp", webp_vp8(2048, 2048)[:28]),
        data_url("image/webp", riff(b"WEBP", b"VP8 " + b"\x00" * 30)),  # no start code
        data_url("image/bmp", b"BM" + b"\x00" * 60),  # a format not read
        data_url("image/jpeg", _JPEG_2048[:40]),  # truncated before the frame header
        data_url("image/jpeg", _JPEG_2048[:2] + b"\x00" + _JPEG_2048[2:]),  # not a marker
        data_url("image/jpeg", b"\xff\xd8" + jpeg_segment(0xDA, b"\x00" * 6) + _JPEG_2048[2:]),
        data_url("image/jpeg", b"\xff\xd8\xff\xe0\x00\x01"),  # a segment length below 2
        data_url("image/jpeg", jpeg(2048, 2048, padding=70_000)),  # beyond the 64 KiB scanned
        data_url("image/jpeg", jpeg(2048, 0)),  # height defined later (DNL): not read
    ],
)
def test_images_of_unreadable_size_count_the_most_an_image_costs(url: str) -> None:
    assert _chat_part(_image(url)) == MAX_IMAGE_TOKENS
    assert _chat_part(_image(url, "auto")) == MAX_IMAGE_TOKENS
    assert _responses_part(_input_image(url)) == MAX_IMAGE_TOKENS
    assert _chat_part(_image(url, "low")) == IMAGE_PART_TOKENS


@pytest.mark.parametrize(
    "part",
    [
        {"type": "input_image", "file_id": "file_1", "detail": "high"},
        {"type": "input_image", "file_id": "file_1"},
        {"type": "input_image"},
        {"type": "image_url"},
        {"type": "image_url", "image_url": None},
        {"type": "image_url", "image_url": 42},
        {"type": "image_url", "image_url": {"url": ["x"]}},
        {"type": "image_url", "image_url": {"detail": "high"}},
        {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": 3}},
    ],
)
def test_images_without_a_readable_url_count_the_most(part: dict[str, object]) -> None:
    assert _chat_part(part) == MAX_IMAGE_TOKENS
    assert _responses_part(part) == MAX_IMAGE_TOKENS
    if not isinstance(part.get("image_url"), dict):
        assert _chat_part({**part, "detail": "low"}) == IMAGE_PART_TOKENS


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 1000, 200_000])
def test_inline_files_count_their_decoded_size(size: int) -> None:
    blob = (b"%PDF-1.4\n" * (size // 9 + 1))[:size]
    padded = base64.b64encode(blob).decode()
    for data in (
        "data:application/pdf;base64," + padded,
        "data:application/pdf;base64," + padded.rstrip("="),
        padded,
        padded.rstrip("="),
    ):
        assert _chat_part({"type": "file", "file": {"file_data": data, "filename": "a.pdf"}}) == (
            size
        )
        assert _responses_part({"type": "input_file", "file_data": data}) == size


def test_inline_files_that_are_not_base64_count_a_byte_a_character() -> None:
    assert _chat_part({"type": "file", "file": {"file_data": "data:text/plain,a%20b"}}) == 5
    assert _chat_part({"type": "file", "file": {"file_data": "data:text/plain,é"}}) == 4


@pytest.mark.parametrize(
    "part",
    [
        {"type": "file", "file": {"file_id": "file_1"}},
        {"type": "file", "file": {"file_data": 42}},
        {"type": "file", "file": {}},
        {"type": "file", "file": "file_1"},
        {"type": "file"},
        {"type": "input_file", "file_id": "file_1"},
        {"type": "input_file", "file_url": "https://example.com/a.pdf"},
        {"type": "input_file", "file_data": None, "file_id": "file_1"},
    ],
)
def test_files_of_unseen_size_count_as_a_megabyte(part: dict[str, object]) -> None:
    assert UNSIZED_FILE_TOKENS == 1_000_000
    assert _chat_part(part) == UNSIZED_FILE_TOKENS
    assert _responses_part(part) == UNSIZED_FILE_TOKENS


def _wav(
    frames: int,
    *,
    rate: int = 16_000,
    channels: int = 1,
    bits: int = 16,
    fmt: int = 1,
    byte_rate: int | None = None,
    subformat: int | None = None,
    before_data: bytes = b"",
    data_size: int | None = None,
) -> bytes:
    block = channels * bits // 8
    fields = struct.pack(
        "<HHIIHH",
        0xFFFE if subformat is not None else fmt,
        channels,
        rate,
        rate * block if byte_rate is None else byte_rate,
        block,
        bits,
    )
    if subformat is not None:  # WAVE_FORMAT_EXTENSIBLE: the subformat GUID starts with it
        fields += struct.pack("<HHI", 22, bits, 0) + struct.pack("<H", subformat) + b"\x00" * 14
    audio = b"\x01\x02" * (frames * block // 2)
    size = len(audio) if data_size is None else data_size
    chunks = (
        b"fmt "
        + struct.pack("<I", len(fields))
        + fields
        + before_data
        + b"data"
        + struct.pack("<I", size)
        + audio
    )
    return riff(b"WAVE", chunks)


def _audio(data: str, format: str = "wav") -> dict[str, object]:
    return {"type": "input_audio", "input_audio": {"data": data, "format": format}}


_LIST = b"LIST" + struct.pack("<I", 27) + b"INFOISFT" + b"\x00" * 19 + b"\x00"  # odd: padded


@pytest.mark.parametrize(
    ("blob", "expected"),
    [
        (_wav(40_000), 50),  # 2.5 s at 16 kHz: 50 tokens
        (_wav(44_100, rate=44_100, channels=2), 20),  # 1 s
        (_wav(44_101, rate=44_100, channels=2), 21),  # a frame more: rounded up
        (_wav(8_000, rate=8_000, bits=8, fmt=7), 20),  # 1 s of mu-law
        (_wav(40_000, before_data=_LIST), 50),  # other chunks are not audio
        (_wav(40_000, data_size=0xFFFFFFFF), 50),  # streamed: the size is the payload's
        (_wav(40_000, data_size=10), 50),  # an understated size is not believed
        (_wav(40_000, byte_rate=10**9), 50),  # nor a byte rate above the samples'
        (_wav(40_000, byte_rate=0), 50),
        (_wav(40_000, subformat=1), 50),  # WAVE_FORMAT_EXTENSIBLE carrying PCM
    ],
)
def test_wav_audio_counts_its_duration(blob: bytes, expected: int) -> None:
    data = base64.b64encode(blob).decode()
    assert _chat_part(_audio(data)) == expected
    assert _chat_part(_audio(data, "mp3")) == expected  # the header decides, not the format
    assert _chat_part(_audio("data:audio/wav;base64," + data)) == expected
    assert _responses_part(_audio(data)) == expected


def _by_size(size: int) -> int:
    return math.ceil(size * AUDIO_TOKENS_PER_SECOND / AUDIO_MIN_BYTES_PER_SECOND)


@pytest.mark.parametrize(
    "blob",
    [
        b"\xff\xfb\x90\x00" + b"\x00" * 9_996,  # an mp3 frame header and 10,000 bytes
        b"ID3" + b"\x00" * 10_000,
        b"RIFF",
        b"",
        _wav(40_000, fmt=0x55),  # MPEG in a WAV: its byte rate is not checked against samples
        _wav(40_000, subformat=0x55),
        _wav(40_000, bits=0, byte_rate=0),
        _wav(40_000, channels=0),
        _wav(40_000)[:30],  # the fmt chunk cut short
        riff(b"WAVE", b"data" + struct.pack("<I", 100) + b"\x00" * 100),  # no fmt chunk
        riff(b"AVI ", b"\x00" * 100),
    ],
)
def test_other_audio_counts_its_size_at_8_kbit_per_second(blob: bytes) -> None:
    assert AUDIO_MIN_BYTES_PER_SECOND == 1000
    assert AUDIO_TOKENS_PER_SECOND == 20
    data = base64.b64encode(blob).decode()
    assert _chat_part(_audio(data, "mp3")) == _by_size(len(blob))
    assert _chat_part(_audio(data.rstrip("="), "wav")) == _by_size(len(blob))
    assert _responses_part(_audio(data, "mp3")) == _by_size(len(blob))


def test_mp3_by_size() -> None:
    assert _chat_part(_audio(base64.b64encode(b"\x00" * 10_000).decode(), "mp3")) == 200
    assert _chat_part(_audio(base64.b64encode(b"\x00" * 10_001).decode(), "mp3")) == 201


@pytest.mark.parametrize(
    "part",
    [
        {"type": "input_audio"},
        {"type": "input_audio", "input_audio": "UklGRg=="},
        {"type": "input_audio", "input_audio": {"format": "wav"}},
        {"type": "input_audio", "input_audio": {"data": 42, "format": "wav"}},
    ],
)
def test_audio_parts_without_data_count_nothing(part: dict[str, object]) -> None:
    assert _chat_part(part) == 0
    assert _responses_part(part) == 0


def test_responses_parts_given_as_items_count_as_the_part_alone() -> None:
    image = _input_image(data_url("image/png", png(1024, 1024)), "high")
    wav = _audio(base64.b64encode(_wav(40_000)).decode())
    pdf = {"type": "input_file", "file_data": data_url("application/pdf", b"%PDF-" * 100)}
    assert O200K.count_responses_input(None, [image]) == 3 + 765
    assert O200K.count_responses_input(None, [wav]) == 3 + 50
    assert O200K.count_responses_input(None, [pdf]) == 3 + 500
    assert O200K.count_responses_input(None, [{"type": "input_file", "file_id": "f"}]) == (
        3 + UNSIZED_FILE_TOKENS
    )


def test_tool_output_parts_are_bounded_too() -> None:
    image = _input_image("https://example.com/chart.png")
    item = {"type": "function_call_output", "call_id": "c", "output": [image]}
    assert O200K.count_responses_input(None, [item]) == (
        3 + 3 + O200K.count_text("tool") + MAX_IMAGE_TOKENS
    )


_MAGIC = st.sampled_from(
    [
        b"",
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR",
        b"GIF89a",
        b"RIFF\x00\x00\x00\x00WEBPVP8 ",
        b"RIFF\x00\x00\x00\x00WEBPVP8L",
        b"RIFF\x00\x00\x00\x00WEBPVP8X",
        b"RIFF\x00\x00\x00\x00WAVEfmt ",
        b"\xff\xd8",
        b"\xff\xd8\xff\xc0",
    ]
)


@_PROPERTY_SETTINGS
@given(
    magic=_MAGIC,
    tail=st.binary(max_size=80),
    cut=st.integers(min_value=0, max_value=200),
    junk=st.text(max_size=6),
    prefix=st.sampled_from(["data:image/png;base64,", "data:audio/wav;base64,", "data:,", ""]),
)
def test_parts_of_any_bytes_never_raise(
    magic: bytes, tail: bytes, cut: int, junk: str, prefix: str
) -> None:
    encoded = base64.b64encode(magic + tail).decode()
    data = prefix + encoded[: len(encoded) - cut % (len(encoded) + 1)] + junk
    for detail in ("high", "low", None):
        tokens = _chat_part(_image(data, detail))
        assert IMAGE_PART_TOKENS <= tokens <= MAX_IMAGE_TOKENS
        assert _responses_part(_input_image(data, detail)) == tokens
    assert _chat_part(_audio(data)) >= 0
    assert _responses_part(_audio(data)) >= 0
    file_tokens = _chat_part({"type": "file", "file": {"file_data": data}})
    assert 0 <= file_tokens <= 4 * len(data)
    assert _responses_part({"type": "input_file", "file_data": data}) == file_tokens
