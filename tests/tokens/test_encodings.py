"""The shipped encodings, loaded offline (gateway.tokens.encodings)."""

from __future__ import annotations

import gzip
import importlib.resources
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from gateway.tokens import (
    DEFAULT_ENCODING,
    SUPPORTED_ENCODINGS,
    EncodingError,
    TokenCounter,
    encoding_name_for_model,
    get_encoding,
    resolve_encoding,
)
from gateway.tokens.encodings import _build_encoding, _load_ranks
from tokens.cases import COOKBOOK_MESSAGES


def _shipped_file(name: str) -> bytes:
    resource = importlib.resources.files("gateway") / "encodings" / f"{name}.tiktoken.gz"
    return resource.read_bytes()


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
