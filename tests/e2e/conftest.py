"""Fixtures of the end-to-end tests that need a service of the machine's (PostgreSQL)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest

from e2e.helpers import POSTGRES_URL, require_postgres


@pytest.fixture
async def pg_schema() -> AsyncIterator[str]:
    """A schema name of this test's own (not created: the gateway creates it when migrating);
    dropped with everything in it at teardown, after the gateways have stopped (request it
    before ``gateway_factory``)."""
    await require_postgres()
    schema = "gw_e2e_" + secrets.token_hex(6)
    yield schema
    conn = await asyncpg.connect(POSTGRES_URL, timeout=5)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()
