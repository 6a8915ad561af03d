"""The TOML config, parsed once into a typed, frozen tree.

Unknown keys are rejected and every error names the file, the key path and the problem::

    config.toml: routes[1].input_price: '-1' is not a decimal number like "12.5"

The tree is passed explicitly to whatever needs it; nothing keeps it in a module global.
"""

from __future__ import annotations

import functools
import math
import re
import tomllib
import urllib.parse
from pathlib import Path
from typing import Literal

import msgspec

from gateway.money import AmountError, parse_price
from gateway.tokens import SUPPORTED_ENCODINGS

__all__ = [
    "AdminConfig",
    "BackendConfig",
    "Config",
    "ConfigError",
    "LoggingConfig",
    "MeteringConfig",
    "RateLimitConfig",
    "RouteConfig",
    "RoutingConfig",
    "ServerConfig",
    "StorageConfig",
    "load_config",
    "parse_config",
]

Number = int | float | str


class ConfigError(Exception):
    """A config that cannot be used; the message names the file, the key path and the problem."""


class _Section(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


def _problem(key: str, message: str) -> ValueError:
    """A value error naming its key; :func:`parse_config` moves the key into the path."""
    return ValueError(f"{key}: {message}")


def _check_seconds(
    section: object, *names: str, minimum: float = 0.0, strict: bool = False
) -> None:
    for name in names:
        value = getattr(section, name)
        if not math.isfinite(value) or value < minimum or (strict and value <= minimum):
            bound = f"greater than {minimum:g}" if strict else f"at least {minimum:g}"
            raise _problem(name, f"must be a finite number of seconds {bound}, not {value!r}")


class ServerConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 10 * 1024 * 1024
    #: Largest upstream answer read into memory (a non-streamed answer, one streamed event);
    #: a backend sending more has failed (502).
    max_answer_bytes: int = 64 * 1024 * 1024
    #: Seconds in-flight requests may take to finish on shutdown.
    graceful_shutdown_s: float = 10.0
    #: A client that takes nothing of its answer for this long (its connection's buffers are
    #: full) is disconnected: its upstream request is closed and it pays for what it was sent.
    send_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise _problem("port", f"must be between 0 and 65535, not {self.port}")
        if self.max_body_bytes < 1024:
            raise _problem("max_body_bytes", "must be at least 1024")
        if self.max_answer_bytes < 1024:
            raise _problem("max_answer_bytes", "must be at least 1024")
        _check_seconds(self, "graceful_shutdown_s")
        _check_seconds(self, "send_timeout_s", strict=True)


class StorageConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    url: str = "sqlite:///./gateway.db"
    #: Create or migrate the schema at start (`gateway migrate` does it on demand).
    migrate_on_start: bool = True
    #: PostgreSQL connection pool size per process.
    pool_size: int = 10
    #: SQLite `PRAGMA synchronous`: NORMAL survives a process crash, FULL a power cut too.
    sqlite_synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    #: A reservation older than this is released by any instance (its owner died).
    reservation_lease_s: float = 900.0
    #: How often each instance looks for reservations whose lease ended.
    sweep_interval_s: float = 30.0
    #: PostgreSQL schema holding the gateway's tables (empty: the server's search_path).
    schema: str = ""

    def __post_init__(self) -> None:
        if not self.url.startswith(("sqlite:///", "postgresql://", "postgres://", "memory://")):
            raise _problem("url", "must start with sqlite:///, postgresql:// or memory://")
        if self.pool_size < 1:
            raise _problem("pool_size", "must be at least 1")
        _check_seconds(self, "reservation_lease_s", "sweep_interval_s", minimum=1)
        if self.schema and not _NAME.match(self.schema.replace("-", "_")):
            raise _problem("schema", f"{self.schema!r} is not a plain identifier")


class AdminConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    #: The environment variable holding the admin bearer token; unset or empty: admin API closed.
    token_env: str = "GATEWAY_ADMIN_TOKEN"
    #: Failed admin logins one address may make within `failure_window_s`; past that, every
    #: admin request from it gets 429 until the window has passed.
    max_failures: int = 10
    failure_window_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_failures < 1:
            raise _problem("max_failures", "must be at least 1")
        _check_seconds(self, "failure_window_s", strict=True)


class RoutingConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    #: Consecutive failures after which a backend is skipped for `cooldown_s`.
    failure_threshold: int = 3
    cooldown_s: float = 30.0

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise _problem("failure_threshold", "must be at least 1")
        _check_seconds(self, "cooldown_s")


class MeteringConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    #: Completion tokens reserved up front when the client sets no max_tokens; a stream that
    #: goes past its reservation extends it from the wallet, and is cut off when it cannot.
    default_reserve_tokens: int = 4096
    #: Reservation step (tokens) when a stream extends its reservation.
    extend_tokens: int = 1024
    #: When a client leaves a stream before the backend reported its usage (a reasoning model
    #: reports the reasoning it hid only there), the gateway reads on for up to this many
    #: seconds, relaying nothing, to learn that usage and charge it; 0: the upstream request
    #: is closed at once.
    drain_s: float = 5.0

    def __post_init__(self) -> None:
        for name in ("default_reserve_tokens", "extend_tokens"):
            if not 1 <= getattr(self, name) <= 10_000_000:
                raise _problem(name, "must be between 1 and 10000000")
        _check_seconds(self, "drain_s")


class RateLimitConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    #: Redis URL for limits shared by several instances; empty: counted in this process.
    redis_url: str = ""
    #: Seconds Redis gets to connect or answer (twice that for a whole call) before the request
    #: goes through unlimited (fails open).
    timeout_s: float = 0.25

    def __post_init__(self) -> None:
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise _problem("redis_url", "must start with redis://, rediss:// or unix://")
        _check_seconds(self, "timeout_s", strict=True)


class LoggingConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    #: "json" for machines, "console" for a human at a terminal.
    format: Literal["json", "console"] = "json"


class BackendConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    #: "openai": any server speaking the OpenAI HTTP API; "demo": a local demo supplier.
    kind: Literal["openai", "demo"] = "openai"
    base_url: str = ""
    api_key_env: str | None = None
    timeout_s: float = 600.0
    connect_timeout_s: float = 10.0
    #: Demo backends only: seconds between streamed words (0 streams as fast as possible).
    demo_delay_s: float = 0.02
    #: The backend speaks OpenAI's Responses API (`POST /responses`) itself; otherwise the
    #: gateway translates /v1/responses requests into chat completions for it.
    responses_api: bool = False
    #: The chat field this backend reads as the bound on generated tokens, which the gateway
    #: sets when the client sent none: OpenAI's reasoning models refuse `max_tokens`, some
    #: servers know only `max_tokens`. Unset: `max_completion_tokens` for OpenAI's and Azure
    #: OpenAI's hosts, `max_tokens` for any other.
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] | None = None

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise _problem("name", f"{self.name!r} must be 1-64 letters, digits, '.', '_' or '-'")
        if self.kind == "openai" and not self.base_url.startswith(("http://", "https://")):
            raise _problem("base_url", "must be an http:// or https:// URL")
        _check_seconds(self, "timeout_s", "connect_timeout_s", strict=True)
        _check_seconds(self, "demo_delay_s")

    @property
    def chat_bound_field(self) -> str:
        """The field :attr:`max_tokens_field` names, or the one its host is known to read."""
        if self.max_tokens_field is not None:
            return self.max_tokens_field
        return _bound_field_of_host(self.base_url)


class RouteConfig(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    model: str
    backend: str
    input_price: Number
    output_price: Number
    upstream_model: str | None = None
    cached_input_price: Number | None = None
    tokenizer: str | None = None

    def __post_init__(self) -> None:
        if not self.model or len(self.model) > 256:
            raise _problem("model", "must be a non-empty string of at most 256 characters")
        for field in ("input_price", "output_price", "cached_input_price"):
            value = getattr(self, field)
            if value is None:
                continue
            try:
                parse_price(value)
            except AmountError as exc:
                raise _problem(field, f"{value!r}: {exc}") from None
        if self.tokenizer is not None and self.tokenizer not in SUPPORTED_ENCODINGS:
            raise _problem(
                "tokenizer",
                f"{self.tokenizer!r} is not one of {', '.join(SUPPORTED_ENCODINGS)}",
            )

    @property
    def target_model(self) -> str:
        return self.upstream_model or self.model

    @property
    def input_micro(self) -> int:
        return parse_price(self.input_price)

    @property
    def output_micro(self) -> int:
        return parse_price(self.output_price)

    @property
    def cached_micro(self) -> int:
        """The cached-input price; the full input price when none is set."""
        if self.cached_input_price is None:
            return self.input_micro
        return parse_price(self.cached_input_price)


class Config(_Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    storage: StorageConfig = msgspec.field(default_factory=StorageConfig)
    admin: AdminConfig = msgspec.field(default_factory=AdminConfig)
    routing: RoutingConfig = msgspec.field(default_factory=RoutingConfig)
    metering: MeteringConfig = msgspec.field(default_factory=MeteringConfig)
    ratelimit: RateLimitConfig = msgspec.field(default_factory=RateLimitConfig)
    logging: LoggingConfig = msgspec.field(default_factory=LoggingConfig)
    backends: tuple[BackendConfig, ...] = ()
    routes: tuple[RouteConfig, ...] = ()

    def backend(self, name: str) -> BackendConfig:
        for backend in self.backends:
            if backend.name == name:
                return backend
        raise KeyError(name)


@functools.cache
def _bound_field_of_host(base_url: str) -> str:
    """The chat bound field a backend's host reads (asked for by every request: cached)."""
    host = (urllib.parse.urlsplit(base_url).hostname or "").lower()
    if host == "api.openai.com" or host.endswith(".openai.azure.com"):
        return "max_completion_tokens"
    return "max_tokens"


_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_KEYED = re.compile(r"^(?:Invalid value: )?(?P<key>[a-z_]+): (?P<problem>.*)$", re.S)
_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)


def _check_references(config: Config) -> tuple[str, str] | None:
    """Cross-field rules msgspec cannot express; returns (key path, problem) or None."""
    names: set[str] = set()
    for i, backend in enumerate(config.backends):
        if backend.name in names:
            return f"backends[{i}].name", f"duplicate backend name {backend.name!r}"
        names.add(backend.name)
    seen: set[tuple[str, str]] = set()
    for i, route in enumerate(config.routes):
        if route.backend not in names:
            known = ", ".join(sorted(names)) or "none"
            return f"routes[{i}].backend", f"unknown backend {route.backend!r} (known: {known})"
        if (route.model, route.backend) in seen:
            return f"routes[{i}]", f"model {route.model!r} is routed to {route.backend!r} twice"
        seen.add((route.model, route.backend))
    return None


def parse_config(text: str, *, source: str = "<config>") -> Config:
    """Parse TOML text; raise :class:`ConfigError` naming ``source``, the key path and problem."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{source}: invalid TOML: nested too deeply") from None
    try:
        config = msgspec.convert(raw, type=Config)
    except msgspec.ValidationError as exc:
        match = _AT.match(str(exc))
        assert match is not None  # the pattern matches any text
        path = (match["path"] or "").lstrip(".")
        message = _friendly(match["msg"])
        keyed = _KEYED.match(message)
        if keyed:  # a validator named its key: make it part of the path
            path = f"{path}.{keyed['key']}" if path else keyed["key"]
            message = keyed["problem"]
        raise ConfigError(f"{source}: {path or '(top level)'}: {message}") from None
    problem = _check_references(config)
    if problem is not None:
        raise ConfigError(f"{source}: {problem[0]}: {problem[1]}")
    return config


def _friendly(message: str) -> str:
    unknown = re.match(r"Object contains unknown field `([^`]*)`", message)
    if unknown:
        return f"unknown key {unknown[1]!r}"
    missing = re.match(r"Object missing required field `([^`]*)`", message)
    if missing:
        return f"missing required key {missing[1]!r}"
    return message


def load_config(path: str | Path) -> Config:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read config: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: config is not UTF-8 text") from None
    return parse_config(text, source=str(file))
