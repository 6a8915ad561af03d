"""The key cache (gateway.keys.KeyCache) over a real SQLite store, its reads counted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.errors import AuthenticationError, StorageUnavailable
from gateway.keys import KeyCache, hash_key, new_key_id, new_secret
from gateway.storage import ApiKey
from gateway.storage.sqlite.store import SQLiteStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingStore(SQLiteStore):
    """Counts key reads; ``hold`` (when set) keeps each read's answer back until it is set,
    and ``fail`` makes the next read fail as storage does when it is gone. A test that must
    know a read was made waits for it (:meth:`a_read_answered`), not for a while."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.reads = 0
        self.hold: asyncio.Event | None = None
        self.fail = False
        self.answered = asyncio.Event()

    async def get_key_by_hash(self, key_hash: str) -> ApiKey | None:
        self.reads += 1
        found = await super().get_key_by_hash(key_hash)
        self.answered.set()
        if self.hold is not None:  # read, and slow to come back
            await self.hold.wait()
        if self.fail:
            self.fail = False
            raise StorageUnavailable("storage unavailable: gone")
        return found

    async def a_read_answered(self) -> None:
        """Until a read not waited for yet has its answer from storage (before ``hold``)."""
        async with asyncio.timeout(5):  # none comes: fail, not hang
            await self.answered.wait()
        self.answered.clear()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CountingStore]:
    store = CountingStore(str(tmp_path / "keys.db"))
    await store.open()
    yield store
    await store.close()


async def _new_key(store: CountingStore) -> tuple[str, ApiKey]:
    wallet = await store.create_wallet("app", 1_000_000)
    secret = new_secret()
    key = await store.create_key(
        ApiKey(new_key_id(), wallet.id, "k", hash_key(secret), secret[:8], 0.0)
    )
    return f"Bearer {secret}", key


async def test_requests_that_find_the_entry_expired_share_one_read(store: CountingStore) -> None:
    clock = Clock()
    cache = KeyCache(store, clock=clock)
    header, key = await _new_key(store)
    assert (await cache.authenticate(header)).id == key.id
    assert store.reads == 1
    clock.now += 1.0  # expired: the next 50 requests, concurrent, read it once
    store.hold = asyncio.Event()
    waiting = [asyncio.create_task(cache.authenticate(header)) for _ in range(50)]
    await asyncio.sleep(0.01)
    store.hold.set()
    assert {k.id for k in await asyncio.gather(*waiting)} == {key.id}
    assert store.reads == 2
    clock.now += 0.5  # the entry lives one second from when its read began
    await cache.authenticate(header)
    assert store.reads == 2
    clock.now += 0.5
    await cache.authenticate(header)
    assert store.reads == 3


async def test_a_failed_read_fails_every_waiter_and_is_not_kept(store: CountingStore) -> None:
    cache = KeyCache(store, clock=Clock())
    header, key = await _new_key(store)
    store.hold, store.fail = asyncio.Event(), True
    waiting = [asyncio.create_task(cache.authenticate(header)) for _ in range(5)]
    await asyncio.sleep(0.01)
    store.hold.set()
    outcomes = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(o, StorageUnavailable) for o in outcomes)
    assert store.reads == 1
    assert (await cache.authenticate(header)).id == key.id  # read again, and it works
    assert store.reads == 2


async def test_a_cancelled_request_leaves_the_read_to_the_others(store: CountingStore) -> None:
    cache = KeyCache(store, clock=Clock())
    header, key = await _new_key(store)
    store.hold = asyncio.Event()
    first = asyncio.create_task(cache.authenticate(header))
    second = asyncio.create_task(cache.authenticate(header))
    await asyncio.sleep(0.01)
    first.cancel()  # the request whose read it is goes away
    await asyncio.sleep(0.01)
    store.hold.set()
    assert (await second).id == key.id
    with pytest.raises(asyncio.CancelledError):
        await first
    assert store.reads == 1


async def test_a_key_forgotten_while_read_is_read_again(store: CountingStore) -> None:
    """A revocation through this process forgets the key: a read under way then may predate
    the revocation, so its answer is not kept and the next request reads the key anew."""
    cache = KeyCache(store, clock=Clock())
    header, key = await _new_key(store)
    store.hold = asyncio.Event()
    before = asyncio.create_task(cache.authenticate(header))
    await store.a_read_answered()  # read from storage, before the revocation
    await store.revoke_key(key.id, 1.0)
    cache.forget(key.key_hash)
    store.hold.set()
    assert (await before).id == key.id  # it read before the revocation was made
    store.hold = None
    with pytest.raises(AuthenticationError):
        await cache.authenticate(header)
    assert store.reads == 2


async def test_a_read_older_than_a_second_is_not_joined(store: CountingStore) -> None:
    """A storage read slower than the entry's life: a request a second later reads anew,
    so that what it gets is never older than a second (a revocation in between is seen)."""
    clock = Clock()
    cache = KeyCache(store, clock=clock)
    header, key = await _new_key(store)
    store.hold = asyncio.Event()
    slow = asyncio.create_task(cache.authenticate(header))
    await store.a_read_answered()  # read from storage, before the revocation
    await store.revoke_key(key.id, 1.0)
    clock.now += 1.0
    later = asyncio.create_task(cache.authenticate(header))
    await store.a_read_answered()  # its own read, after the revocation
    store.hold.set()
    assert (await slow).id == key.id  # its read predates the revocation
    with pytest.raises(AuthenticationError):
        await later
    assert store.reads == 2
    store.hold = None
    with pytest.raises(AuthenticationError):  # the newer read's answer is the one kept
        await cache.authenticate(header)
    assert store.reads == 2
