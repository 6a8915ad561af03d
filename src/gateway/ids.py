"""Ids made on every request (request ids, reservation ids): a random prefix per process and a
counter, unique without asking the kernel for randomness each time (``os.urandom`` was about
1.5% of a request). The counter goes through a bijection of 48-bit numbers (a random odd
multiplier, then a random mask), so that an id does not show at a glance how many requests
came before it. They are unique, not secret: nothing is authorised by knowing one."""

from __future__ import annotations

import itertools
import os

__all__ = ["unique_id"]

_BITS = 48
_MOD = 1 << _BITS


def _fresh() -> None:
    global _prefix, _counter, _multiplier, _mask
    _prefix = os.urandom(6).hex()
    _counter = itertools.count()
    _multiplier = int.from_bytes(os.urandom(6)) | 1  # odd: invertible modulo 2**48
    _mask = int.from_bytes(os.urandom(6))


_prefix = ""
_counter = itertools.count()
_multiplier = 1
_mask = 0
_fresh()
os.register_at_fork(after_in_child=_fresh)  # a forked worker must not repeat its parent's ids


def unique_id(kind: str) -> str:
    """``kind`` followed by 24 hex digits, unique across processes and time (within 2**48 ids
    a process)."""
    scrambled = ((next(_counter) * _multiplier) % _MOD) ^ _mask
    return f"{kind}{_prefix}{scrambled:012x}"
