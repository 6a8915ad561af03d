"""The results: each contender's runs in each scenario, or why it has none."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Row:
    """One contender in one scenario: its runs, or why it has none."""

    runs: list[Any] = field(default_factory=list)
    error: str | None = None
    chunks: int = 0  # content chunks per streamed answer, from the smoke check
    extra: dict[str, Any] = field(default_factory=dict)


Results = dict[str, dict[str, Row]]


def med(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")
