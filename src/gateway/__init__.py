"""An OpenAI-compatible metering gateway: routes each request to the cheapest healthy backend
for its model and debits the app's prepaid wallet per token, never below zero."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.app import create_app
    from gateway.config import Config, ConfigError, load_config, parse_config
    from gateway.errors import GatewayError

__all__ = ["Config", "ConfigError", "GatewayError", "create_app", "load_config", "parse_config"]
__version__ = "0.1.0"

_HOMES = {
    "create_app": "gateway.app",
    "Config": "gateway.config",
    "ConfigError": "gateway.config",
    "load_config": "gateway.config",
    "parse_config": "gateway.config",
    "GatewayError": "gateway.errors",
}


def __getattr__(name: str) -> Any:
    # Lazy, so `import gateway.tokens` (or the CLI) does not pull in the web stack.
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'gateway' has no attribute {name!r}")
