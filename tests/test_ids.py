"""Request and reservation ids: unique, of one shape, and not a visible count."""

from __future__ import annotations

import itertools
import re

from gateway.ids import unique_id


def test_ids_are_unique_and_of_one_shape() -> None:
    ids = [unique_id("req_") for _ in range(100_000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"req_[0-9a-f]{24}", i) for i in ids)


def test_consecutive_ids_do_not_count_up() -> None:
    tails = [int(unique_id("r_")[-12:], 16) for _ in range(100)]
    steps = {b - a for a, b in itertools.pairwise(tails)}
    assert len(steps) > 1  # not a plain counter, whatever its start
