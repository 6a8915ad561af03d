"""The hot path's own counters and histogram expose what prometheus_client's would."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from gateway.metrics import Durations, Metrics, Tally

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


def _samples(registry: CollectorRegistry) -> list[str]:
    """The exposition's lines, without the creation times only prometheus_client keeps."""
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if "_created" not in line]


def test_tally_and_durations_expose_what_prometheus_client_would() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    tally = Tally("t_requests", "Requests.", ["endpoint", "status"], registry=ours)
    counter = Counter("t_requests", "Requests.", ["endpoint", "status"], registry=theirs)
    durations = Durations("t_seconds", "Seconds.", "endpoint", BUCKETS, registry=ours)
    histogram = Histogram("t_seconds", "Seconds.", ["endpoint"], buckets=BUCKETS, registry=theirs)
    rng = random.Random(7)
    for _ in range(2000):
        endpoint = rng.choice(["chat", "embeddings", "responses"])
        status = rng.choice(["ok", "error"])
        amount = rng.choice([1, 3, 250])
        tally.add((endpoint, status), amount)
        counter.labels(endpoint, status).inc(amount)
        # bucket bounds themselves (le is <=), zero, and values past the last bound
        seconds = rng.choice([*BUCKETS, 0.0, 0.0071, 0.3, 999.0, rng.random() * 3])
        durations.observe(endpoint, seconds)
        histogram.labels(endpoint).observe(seconds)
    assert _samples(ours) == _samples(theirs)


def test_in_flight_is_read_from_the_plain_count() -> None:
    metrics = Metrics()
    metrics.active = 3
    assert "gateway_requests_in_flight 3.0" in metrics.render().decode()
    metrics.active = 0
    assert "gateway_requests_in_flight 0.0" in metrics.render().decode()
