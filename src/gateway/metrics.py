"""Prometheus metrics, in a registry of the app's own (no process globals shared between apps
in one test process). Labels never carry a secret: keys appear by id only."""

from __future__ import annotations

from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

M = TypeVar("M", Counter, Gauge, Histogram)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "gateway_requests",
            "Client API requests by outcome.",
            ["endpoint", "model", "status"],
            registry=r,
        )
        self.tokens = Counter(
            "gateway_tokens", "Tokens metered.", ["model", "backend", "kind"], registry=r
        )
        self.credits = Counter(
            "gateway_credits_charged_micro",
            "Micro-credits charged to wallets.",
            ["model", "backend"],
            registry=r,
        )
        self.shortfall = Counter(
            "gateway_credits_shortfall_micro",
            "Micro-credits wallets could not pay.",
            ["model", "backend"],
            registry=r,
        )
        self.latency = Histogram(
            "gateway_request_duration_seconds",
            "Time from request to the last byte.",
            ["endpoint"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors",
            "Failed upstream attempts.",
            ["backend", "reason"],
            registry=r,
        )
        self.ratelimit_fail_open = Counter(
            "gateway_ratelimit_fail_open",
            "Requests let through because the limit store failed.",
            registry=r,
        )
        self.settlement_failures = Counter(
            "gateway_settlement_failures", "Settlements that storage refused.", registry=r
        )
        self.in_flight = Gauge("gateway_requests_in_flight", "Requests being served.", registry=r)
        #: The same count as a plain integer, for the hot path to read.
        self.active = 0
        self.circuit_open = Gauge(
            "gateway_backend_circuit_open",
            "1 while a backend is skipped.",
            ["backend"],
            registry=r,
        )

        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def child(self, metric: M, *labels: str) -> M:
        """``metric.labels(*labels)``, looked up once (prometheus_client validates and locks
        on every call; a request settles with five of them). Label values here come from the
        config (models, backends, endpoints, outcomes), so the memo stays small."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def render(self) -> bytes:
        return generate_latest(self.registry)
