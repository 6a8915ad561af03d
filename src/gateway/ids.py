"""Ids made on every request (request ids, reservation ids): a random prefix per process and
a counter, unique without asking the kernel for randomness each time (``os.urandom`` was about
1.5% of a request). They are unique, not secret: nothing is authorised by knowing one."""

from __future__ import annotations

import itertools
import os

__all__ = ["unique_id"]


def _fresh() -> None:
    global _prefix, _counter
    _prefix = os.urandom(6).hex()
    _counter = itertools.count()


_prefix = ""
_counter = itertools.count()
_fresh()
os.register_at_fork(after_in_child=_fresh)  # a forked worker must not repeat its parent's ids


def unique_id(kind: str) -> str:
    """``kind`` followed by 24 hex digits, unique across processes and time."""
    return f"{kind}{_prefix}{next(_counter) & 0xFFFFFFFFFFFF:012x}"
