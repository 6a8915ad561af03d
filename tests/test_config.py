"""The TOML config (gateway.config): parsed once into a typed tree; every error names the file,
the key path and the problem."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import Config, ConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parents[1]
SOURCE = "test-config.toml"

BACKEND_A = """
[[backends]]
name = "a"
base_url = "http://127.0.0.1:9/v1"
"""

ROUTE_M = """
[[routes]]
model = "m"
backend = "a"
input_price = "1"
output_price = "2"
"""


def _toml(text: str) -> str:
    return textwrap.dedent(text)


def _short_id(value: object) -> str | None:
    """Test ids: one-line strings as they are, TOML texts as "toml" (numbered by pytest)."""
    if isinstance(value, str):
        return value if "\n" not in value else "toml"
    return None


def _error(text: str) -> str:
    """The message of the ConfigError that ``text`` raises; it always names the source."""
    with pytest.raises(ConfigError) as info:
        parse_config(_toml(text), source=SOURCE)
    message = str(info.value)
    assert message.startswith(f"{SOURCE}: "), message
    return message


# -- what loads ----------------------------------------------------------------------------------
def test_the_example_config_loads() -> None:
    config = load_config(REPO / "config.example.toml")
    assert isinstance(config, Config)
    assert config.server.port == 8080
    assert config.server.max_body_bytes == 10_485_760
    [route] = [r for r in config.routes if r.model == "demo-chat"]
    assert route.backend in {b.name for b in config.backends}
    assert route.input_micro == 150_000
    assert route.output_micro == 600_000
    assert route.tokenizer == "o200k_base"


def test_an_empty_config_has_defaults() -> None:
    config = parse_config("")
    assert config.server.host == "127.0.0.1"
    assert config.server.port == 8080
    assert config.storage.url.startswith("sqlite:///")
    assert config.admin.token_env == "GATEWAY_ADMIN_TOKEN"
    assert config.routing.failure_threshold >= 1
    assert config.backends == ()
    assert config.routes == ()


def test_the_contract_s_example_loads() -> None:
    config = parse_config(
        _toml(
            """
            [server]
            host = "127.0.0.1"
            port = 8080
            max_body_bytes = 10485760

            [storage]
            url = "sqlite:///./gateway.db"

            [[backends]]
            name = "openai"
            base_url = "https://api.openai.com/v1"
            api_key_env = "OPENAI_API_KEY"
            timeout_s = 600

            [[routes]]
            model = "gpt-4o-mini"
            backend = "openai"
            upstream_model = "gpt-4o-mini"
            input_price = "0.15"
            output_price = "0.60"
            cached_input_price = "0.075"
            tokenizer = "o200k_base"
            """
        )
    )
    [backend] = config.backends
    assert backend.api_key_env == "OPENAI_API_KEY"
    assert backend.timeout_s == 600
    [route] = config.routes
    assert (route.input_micro, route.output_micro, route.cached_micro) == (
        150_000,
        600_000,
        75_000,
    )
    assert config.backend("openai") is backend


def test_route_defaults_and_numeric_prices() -> None:
    config = parse_config(
        BACKEND_A
        + """
[[routes]]
model = "m"
backend = "a"
input_price = 0.15
output_price = 2
"""
    )
    [route] = config.routes
    assert route.target_model == "m"  # upstream_model defaults to model
    assert route.input_micro == 150_000
    assert route.output_micro == 2_000_000
    assert route.cached_micro == route.input_micro  # no cached price: the input price
    assert route.tokenizer is None


def test_several_routes_may_share_a_model() -> None:
    config = parse_config(
        BACKEND_A
        + BACKEND_A.replace('"a"', '"b"')
        + ROUTE_M
        + ROUTE_M.replace('backend = "a"', 'backend = "b"')
    )
    assert [r.backend for r in config.routes] == ["a", "b"]


def test_config_backend_lookup_of_an_unknown_name() -> None:
    with pytest.raises(KeyError):
        parse_config(BACKEND_A).backend("zz")


# -- unknown keys ------------------------------------------------------------------------------
def test_unknown_top_level_key() -> None:
    message = _error("colour = 'blue'\n" + BACKEND_A + ROUTE_M)
    assert "colour" in message
    assert "unknown" in message


@pytest.mark.parametrize(
    "section", ["server", "storage", "admin", "routing", "metering", "ratelimit", "logging"]
)
def test_unknown_key_in_a_section(section: str) -> None:
    message = _error(f"[{section}]\ncolour = 1\n")
    assert f"{SOURCE}: {section}: " in message
    assert "unknown key 'colour'" in message


def test_unknown_key_in_the_second_backend() -> None:
    message = _error(
        BACKEND_A
        + """
[[backends]]
name = "b"
base_url = "http://127.0.0.1:9/v1"
api_key = "sk-secret"
"""
    )
    assert "backends[1]" in message
    assert "unknown key 'api_key'" in message


def test_unknown_key_in_a_route() -> None:
    message = _error(BACKEND_A + ROUTE_M + ROUTE_M.replace("model", "modle"))
    assert "routes[1]" in message
    assert "unknown key 'modle'" in message


def test_a_typo_in_a_price_key_names_the_route_and_the_key() -> None:
    message = _error(BACKEND_A + ROUTE_M + "input_pirce = '1'\n")
    assert "routes[0]" in message
    assert "input_pirce" in message


# -- wrong types -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "path"),
    [
        ('[server]\nport = "eighty"\n', "server.port"),
        ("[server]\nport = 80.5\n", "server.port"),
        ("[server]\nhost = 127\n", "server.host"),
        ("[server]\nmax_body_bytes = true\n", "server.max_body_bytes"),
        ("server = 1\n", "server"),
        ("[storage]\nurl = []\n", "storage.url"),
        ('[routing]\nfailure_threshold = "3"\n', "routing.failure_threshold"),
        ('[logging]\nlevel = "loud"\n', "logging.level"),
        ('[logging]\nformat = "xml"\n', "logging.format"),
        ('[storage]\nsqlite_synchronous = "OFF"\n', "storage.sqlite_synchronous"),
        ("routes = 1\n", "routes"),
        ("backends = [1]\n", "backends[0]"),
        ('[backends]\nname = "a"\n', "backends"),
        (BACKEND_A + 'timeout_s = "slow"\n', "backends[0].timeout_s"),
        (BACKEND_A + 'kind = "anthropic"\n', "backends[0].kind"),
        (BACKEND_A + "api_key_env = 1\n", "backends[0].api_key_env"),
        (BACKEND_A + ROUTE_M.replace('"m"', "5"), "routes[0].model"),
        (
            BACKEND_A + ROUTE_M.replace('input_price = "1"', "input_price = true"),
            "routes[0].input_price",
        ),
        (
            BACKEND_A + ROUTE_M.replace('input_price = "1"', "input_price = [1]"),
            "routes[0].input_price",
        ),
        (
            BACKEND_A + ROUTE_M.replace('output_price = "2"', "output_price = {}"),
            "routes[0].output_price",
        ),
        (BACKEND_A + ROUTE_M + "tokenizer = 5\n", "routes[0].tokenizer"),
    ],
    ids=_short_id,
)
def test_wrong_types_name_the_key_path(text: str, path: str) -> None:
    message = _error(text)
    assert f"{SOURCE}: {path}: " in message
    assert len(message) > len(f"{SOURCE}: {path}: ")  # and says what is wrong


# -- references --------------------------------------------------------------------------------
def test_a_route_naming_an_unknown_backend() -> None:
    message = _error(BACKEND_A + ROUTE_M.replace('backend = "a"', 'backend = "openai"'))
    assert "routes[0].backend" in message
    assert "unknown backend 'openai'" in message
    assert "a" in message.split("known:")[1]  # and which backends exist


def test_a_route_with_no_backends_at_all() -> None:
    message = _error(ROUTE_M)
    assert "routes[0].backend" in message
    assert "unknown backend 'a'" in message


def test_duplicate_backend_names() -> None:
    message = _error(BACKEND_A + BACKEND_A.replace("9/v1", "10/v1"))
    assert "backends[1]" in message
    assert "duplicate" in message
    assert "'a'" in message


def test_the_same_model_twice_on_one_backend() -> None:
    message = _error(BACKEND_A + ROUTE_M + ROUTE_M)
    assert "routes[1]" in message
    assert "'m'" in message


# -- prices --------------------------------------------------------------------------------------
@pytest.mark.parametrize("field", ["input_price", "output_price", "cached_input_price"])
@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ('"-1"', "not a decimal number"),
        ("-1", "negative"),
        ('"abc"', "not a decimal number"),
        ('""', "not a decimal number"),
        ('"1e-3"', "not a decimal number"),
        ('"0.0000001"', "more than 6 decimal places"),
        ("0.0000001", "more than 6 decimal places"),
        ("nan", "finite"),
        ("inf", "finite"),
        ('"1000000000001"', "too large"),
    ],
)
def test_bad_prices(field: str, value: str, problem: str) -> None:
    route = ROUTE_M.replace('input_price = "1"\n', "").replace('output_price = "2"\n', "")
    prices = {"input_price": '"1"', "output_price": '"2"', field: value}
    text = BACKEND_A + route + "".join(f"{k} = {v}\n" for k, v in prices.items())
    message = _error(text)
    assert "routes[0]" in message
    assert field in message
    assert problem in message


def test_zero_prices_are_allowed() -> None:
    config = parse_config(
        BACKEND_A + ROUTE_M.replace('"1"', '"0"').replace('"2"', "0") + "cached_input_price = 0.0\n"
    )
    [route] = config.routes
    assert (route.input_micro, route.output_micro, route.cached_micro) == (0, 0, 0)


@pytest.mark.parametrize(
    ("text", "path"),
    [
        (
            BACKEND_A + ROUTE_M.replace('input_price = "1"', 'input_price = "-1"'),
            "routes[0].input_price",
        ),
        (
            BACKEND_A + ROUTE_M.replace('output_price = "2"', 'output_price = "abc"'),
            "routes[0].output_price",
        ),
        (
            BACKEND_A + ROUTE_M + 'cached_input_price = "0.0000001"\n',
            "routes[0].cached_input_price",
        ),
        (BACKEND_A + ROUTE_M + 'tokenizer = "gpt2"\n', "routes[0].tokenizer"),
        ("[server]\nport = 70000\n", "server.port"),
        ("[routing]\ncooldown_s = -1\n", "routing.cooldown_s"),
        (BACKEND_A.replace('"a"', '"a b"'), "backends[0].name"),
    ],
    ids=_short_id,
)
def test_value_errors_name_the_full_key_path(text: str, path: str) -> None:
    # the module's own docstring: "config.toml: routes[1].input_price: '-1' is not a decimal..."
    message = _error(text)
    assert f"{SOURCE}: {path}: " in message


# -- tokenizer -----------------------------------------------------------------------------------
@pytest.mark.parametrize("tokenizer", ["p50k_base", "gpt2", "O200K_BASE", "", "o200k_harmony"])
def test_bad_tokenizer(tokenizer: str) -> None:
    message = _error(BACKEND_A + ROUTE_M + f'tokenizer = "{tokenizer}"\n')
    assert "routes[0]" in message
    assert "tokenizer" in message
    assert "o200k_base" in message  # says what is allowed


@pytest.mark.parametrize("tokenizer", ["o200k_base", "cl100k_base"])
def test_shipped_tokenizers(tokenizer: str) -> None:
    config = parse_config(BACKEND_A + ROUTE_M + f'tokenizer = "{tokenizer}"\n')
    assert config.routes[0].tokenizer == tokenizer


# -- missing keys --------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["model", "backend", "input_price", "output_price"])
def test_missing_required_route_key(key: str) -> None:
    route = "\n".join(line for line in ROUTE_M.splitlines() if not line.startswith(key + " "))
    message = _error(BACKEND_A + route + "\n")
    assert "routes[0]" in message
    assert f"missing required key '{key}'" in message


def test_missing_backend_name() -> None:
    message = _error('[[backends]]\nbase_url = "http://x/v1"\n')
    assert "backends[0]" in message
    assert "missing required key 'name'" in message


def test_an_openai_backend_needs_a_base_url() -> None:
    message = _error('[[backends]]\nname = "a"\n')
    assert "backends[0]" in message
    assert "base_url" in message
    message = _error('[[backends]]\nname = "a"\nbase_url = "ftp://x"\n')
    assert "base_url" in message


def test_a_demo_backend_needs_no_base_url() -> None:
    [backend] = parse_config('[[backends]]\nname = "d"\nkind = "demo"\n').backends
    assert backend.kind == "demo"


def test_an_empty_model_name() -> None:
    message = _error(BACKEND_A + ROUTE_M.replace('model = "m"', 'model = ""'))
    assert "routes[0]" in message
    assert "model" in message


# -- values out of range -------------------------------------------------------------------------
@pytest.mark.parametrize("port", [-1, 65536, 70000, 2**40])
def test_port_out_of_range(port: int) -> None:
    message = _error(f"[server]\nport = {port}\n")
    assert "server" in message
    assert "port" in message
    assert "65535" in message


@pytest.mark.parametrize("port", [0, 1, 8080, 65535])
def test_port_in_range(port: int) -> None:
    assert parse_config(f"[server]\nport = {port}\n").server.port == port


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[server]\nmax_body_bytes = 10\n", ["server", "max_body_bytes"]),
        ('[storage]\nurl = "mysql://x"\n', ["storage", "url"]),
        ("[storage]\npool_size = 0\n", ["storage", "pool_size"]),
        ("[storage]\nreservation_lease_s = 0.5\n", ["storage", "reservation_lease_s"]),
        ("[routing]\nfailure_threshold = 0\n", ["routing", "failure_threshold"]),
        ("[routing]\ncooldown_s = -1\n", ["routing", "cooldown_s"]),
        ("[metering]\ndefault_reserve_tokens = 0\n", ["metering", "token"]),
        (BACKEND_A + "timeout_s = 0\n", ["backends[0]", "timeout"]),
        (BACKEND_A + "connect_timeout_s = -1\n", ["backends[0]", "timeout"]),
        ("[ratelimit]\ntimeout_s = 0\n", ["ratelimit", "timeout_s"]),
        (
            '[[backends]]\nname = "d"\nkind = "demo"\ndemo_delay_s = -1\n',
            ["backends[0]", "demo_delay_s"],
        ),
        (BACKEND_A.replace('"a"', '"a/b"'), ["backends[0]", "name"]),
    ],
    ids=_short_id,
)
def test_values_out_of_range(text: str, words: list[str]) -> None:
    message = _error(text)
    for word in words:
        assert word in message


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ('[[backends]]\nname = "a"\nbase_url = "http://x/v1"', "timeout_s"),
        ('[[backends]]\nname = "a"\nbase_url = "http://x/v1"', "connect_timeout_s"),
        ('[[backends]]\nname = "d"\nkind = "demo"', "demo_delay_s"),
        ("[routing]", "cooldown_s"),  # a NaN cooldown would keep a circuit open for ever
        ("[storage]", "reservation_lease_s"),
        ("[server]", "graceful_shutdown_s"),
        ("[ratelimit]", "timeout_s"),
    ],
    ids=_short_id,
)
def test_nan_durations_are_refused(section: str, key: str) -> None:
    message = _error(f"{section}\n{key} = nan\n")
    assert key in message


# -- files and the CLI ---------------------------------------------------------------------------
def test_load_config_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[server]\nport = 'x'\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: server.port: ")


def test_load_config_of_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[server\nport = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert "TOML" in message
    assert "line 1" in message


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "No such file" in str(info.value)


def test_a_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('[server]\nhost = "café"\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "UTF-8" in str(info.value)


def _serve(config: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )


@pytest.mark.parametrize(
    ("text", "path", "problem"),
    [
        ('[server]\nport = "eighty"\n', "server.port", "Expected `int`, got `str`"),
        (
            BACKEND_A + ROUTE_M.replace('backend = "a"', 'backend = "b"'),
            "routes[0].backend",
            "unknown backend 'b'",
        ),
    ],
    ids=_short_id,
)
def test_serve_with_a_bad_config_exits_non_zero_and_says_why(
    tmp_path: Path, text: str, path: str, problem: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text, encoding="utf-8")
    result = _serve(config, tmp_path)
    assert result.returncode != 0
    assert str(config) in result.stderr
    assert path in result.stderr
    assert problem in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_with_a_missing_config_exits_non_zero_and_says_why(tmp_path: Path) -> None:
    config = tmp_path / "missing.toml"
    result = _serve(config, tmp_path)
    assert result.returncode != 0
    assert str(config) in result.stderr
    assert "No such file" in result.stderr
    assert "Traceback" not in result.stderr


# -- never anything but a Config or a ConfigError ------------------------------------------------
def _parse_or_config_error(text: str) -> None:
    try:
        config = parse_config(text, source="fuzz.toml")
    except ConfigError as exc:
        message = str(exc)
    else:
        assert isinstance(config, Config)
        return
    assert message.startswith("fuzz.toml: ")


@given(st.text(max_size=300))
def test_random_text_is_a_config_or_a_config_error(text: str) -> None:
    _parse_or_config_error(text)


def _toml_string(value: str) -> str:
    out = []
    for ch in value:
        if ch in '"\\' or ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_value(value: Any) -> str:
    """A tiny TOML writer: everything inline, keys always quoted."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{_toml_string(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{" + items + "}"
    raise TypeError(value)


def _dump_toml(document: dict[str, Any]) -> str:
    return "".join(f"{_toml_string(k)} = {_toml_value(v)}\n" for k, v in document.items())


SECTIONS = ["server", "storage", "admin", "routing", "metering", "ratelimit", "logging"]
KEYS = [
    "host",
    "port",
    "max_body_bytes",
    "graceful_shutdown_s",
    "url",
    "migrate_on_start",
    "pool_size",
    "sqlite_synchronous",
    "reservation_lease_s",
    "token_env",
    "failure_threshold",
    "cooldown_s",
    "default_reserve_tokens",
    "extend_tokens",
    "redis_url",
    "level",
    "format",
    "name",
    "kind",
    "base_url",
    "api_key_env",
    "timeout_s",
    "connect_timeout_s",
    "demo_delay_s",
    "model",
    "backend",
    "upstream_model",
    "input_price",
    "output_price",
    "cached_input_price",
    "tokenizer",
]

scalars = st.one_of(
    st.text(max_size=20),
    st.sampled_from(
        [
            "a",
            "m",
            "demo",
            "openai",
            "http://x/v1",
            "sqlite:///x.db",
            "memory://",
            "o200k_base",
            "1",
            "0.15",
            "-1",
            "info",
            "json",
            "NORMAL",
        ]
    ),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=-2, max_value=70000),
    st.floats(),
    st.booleans(),
)
keys = st.one_of(st.sampled_from(KEYS + SECTIONS + ["backends", "routes"]), st.text(max_size=8))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=12,
)
entries = st.dictionaries(st.sampled_from(KEYS), values, max_size=6)
documents = st.fixed_dictionaries(
    {},
    optional={
        **{section: st.one_of(entries, values) for section in SECTIONS},
        "backends": st.one_of(st.lists(entries, max_size=3), values),
        "routes": st.one_of(st.lists(entries, max_size=3), values),
    },
) | st.dictionaries(keys, values, max_size=4)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_any_toml_document_is_a_config_or_a_config_error(document: dict[str, Any]) -> None:
    text = _dump_toml(document)
    tomllib.loads(text)  # the writer writes TOML: the parse below gets past the TOML layer
    _parse_or_config_error(text)


def test_deeply_nested_toml_is_a_config_error() -> None:
    depth = 5000
    message = _error("colour = " + "[" * depth + "]" * depth + "\n")
    assert "colour" in message or "TOML" in message
