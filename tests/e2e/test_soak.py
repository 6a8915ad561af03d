"""The kill -9 soak (``tests/soak.py``) in a short form: mixed traffic on several wallets while
the gateway is SIGKILLed and restarted; afterwards the books balance, nothing is reserved, and
every answer a client received in full is in the ledger. The long form is
``python -m tests.soak --kills 12 --requests 400``."""

from __future__ import annotations

from pathlib import Path

import pytest

from soak import run_soak

pytestmark = pytest.mark.e2e


def test_kill_minus_nine_soak_short_form(tmp_path: Path) -> None:
    report = run_soak(requests=120, kills=4, concurrency=8, directory=tmp_path)
    assert report.kills == report.restarts == 4
    assert report.outcomes["complete"] > 0
    assert report.checked_answers == report.outcomes["complete"]
    assert not report.problems, report.render()
