"""The storage contract: every engine (memory, SQLite, PostgreSQL) passes these same tests.

The ``store`` fixture (conftest.py) checks the ledger invariants after every test.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import secrets
import time
from collections.abc import Awaitable, Callable

import pytest

from gateway.errors import (
    Conflict,
    InsufficientQuota,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    StorageUnavailable,
)
from gateway.money import MAX_MICRO
from gateway.storage.base import ApiKey, Reservation, Store, UsageRecord, UsageStatus, Wallet

Invariants = Callable[[Store], Awaitable[None]]
LEASE = 300.0


# -- helpers -------------------------------------------------------------------------------------


def new_key(wallet_id: str, name: str = "key", **fields: object) -> ApiKey:
    secret = "sk-" + secrets.token_hex(16)
    values: dict[str, object] = {
        "id": "k_" + secrets.token_hex(8),
        "wallet_id": wallet_id,
        "name": name,
        "key_hash": hashlib.sha256(secret.encode()).hexdigest(),
        "prefix": secret[:8],
        "created_at": time.time(),
    }
    values.update(fields)
    return ApiKey(**values)  # type: ignore[arg-type]


def usage_for(r: Reservation, *, status: str = UsageStatus.OK, **fields: object) -> UsageRecord:
    values: dict[str, object] = {
        "request_id": r.request_id,
        "key_id": r.key_id,
        "wallet_id": r.wallet_id,
        "model": "gpt-test",
        "backend": "upstream-a",
        "prompt_tokens": 10,
        "completion_tokens": 20,
        "status": status,
        "created_at": time.time(),
    }
    values.update(fields)
    return UsageRecord(**values)  # type: ignore[arg-type]


async def reserve(
    store: Store,
    wallet: Wallet,
    *,
    minimum: int = 1,
    maximum: int = 100,
    key_id: str | None = None,
    lease_s: float = LEASE,
) -> Reservation | None:
    return await store.reserve(
        wallet_id=wallet.id,
        key_id=key_id,
        request_id="req_" + secrets.token_hex(8),
        minimum=minimum,
        maximum=maximum,
        lease_s=lease_s,
    )


async def fresh(store: Store, wallet: Wallet) -> Wallet:
    current = await store.get_wallet(wallet.id)
    assert current is not None
    return current


# -- lifecycle -----------------------------------------------------------------------------------


async def test_ping_close_and_reopen(store: Store) -> None:
    wallet = await store.create_wallet("w", 5)
    await store.ping()
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(StorageUnavailable):
        await store.ping()
    with pytest.raises(StorageUnavailable):
        await store.create_wallet("after close")
    await store.open()
    await store.ping()
    assert await store.get_wallet(wallet.id) == wallet


# -- wallets -------------------------------------------------------------------------------------


async def test_create_get_and_list_wallets(store: Store) -> None:
    a = await store.create_wallet("alpha")
    b = await store.create_wallet("beta", 7_000_000)
    assert a.id.startswith("w_")
    assert b.id.startswith("w_")
    assert a.id != b.id
    assert (a.name, a.balance, a.reserved, a.available) == ("alpha", 0, 0, 0)
    assert (b.balance, b.reserved, b.available) == (7_000_000, 0, 7_000_000)
    assert a.created_at <= b.created_at <= time.time()
    assert await store.get_wallet(a.id) == a
    assert await store.get_wallet(b.id) == b
    assert await store.get_wallet("w_missing") is None
    assert await store.list_wallets() == [a, b]


async def test_opening_balance_is_a_credit_entry(store: Store) -> None:
    funded = await store.create_wallet("funded", 2_500_000)
    empty = await store.create_wallet("empty")
    [entry] = await store.ledger(funded.id)
    assert (entry.kind, entry.amount, entry.balance_after) == ("credit", 2_500_000, 2_500_000)
    assert entry.memo == "opening balance"
    assert entry.wallet_id == funded.id
    assert await store.ledger(empty.id) == []


async def test_negative_opening_balance_is_refused(store: Store) -> None:
    with pytest.raises(InvalidRequest):
        await store.create_wallet("bad", -1)
    assert await store.list_wallets() == []


# -- credits -------------------------------------------------------------------------------------


async def test_credit_adds_and_writes_an_entry(store: Store) -> None:
    wallet = await store.create_wallet("w", 100)
    credited, new = await store.credit(wallet.id, 50, memo="top-up", idempotency_key="c1")
    assert new is True
    assert (credited.id, credited.balance, credited.reserved) == (wallet.id, 150, 0)
    assert await fresh(store, wallet) == credited
    entry = (await store.ledger(wallet.id))[0]
    assert (entry.kind, entry.amount, entry.balance_after) == ("credit", 50, 150)
    assert (entry.memo, entry.idempotency_key, entry.request_id) == ("top-up", "c1", None)


async def test_credit_idempotency_is_per_wallet_and_key(store: Store) -> None:
    a = await store.create_wallet("a")
    b = await store.create_wallet("b")
    first, new1 = await store.credit(a.id, 1_000, idempotency_key="once")
    again, new2 = await store.credit(a.id, 1_000, idempotency_key="once")
    assert (new1, new2) == (True, False)
    assert first.balance == again.balance == 1_000
    assert len(await store.ledger(a.id)) == 1
    # a replay returns the wallet as it is now
    await store.credit(a.id, 5)
    replay, new3 = await store.credit(a.id, 999, idempotency_key="once")
    assert (new3, replay.balance) == (False, 1_005)
    # the same key on another wallet, and another key on the same wallet, are new credits
    other, new4 = await store.credit(b.id, 300, idempotency_key="once")
    assert (new4, other.balance) == (True, 300)
    second, new5 = await store.credit(a.id, 10, idempotency_key="twice")
    assert (new5, second.balance) == (True, 1_015)


async def test_concurrent_credits_with_one_key_credit_once(store: Store) -> None:
    wallet = await store.create_wallet("w")
    results = await asyncio.gather(
        *(store.credit(wallet.id, 70, idempotency_key="same") for _ in range(20))
    )
    assert sum(new for _, new in results) == 1
    assert (await fresh(store, wallet)).balance == 70


async def test_credit_refusals(store: Store) -> None:
    wallet = await store.create_wallet("w")
    with pytest.raises(NotFound):
        await store.credit("w_missing", 10)
    for amount in (0, -5):
        with pytest.raises(InvalidRequest):
            await store.credit(wallet.id, amount)
    assert await store.ledger(wallet.id) == []


async def test_no_credit_or_transfer_takes_a_balance_past_the_largest_amount(
    store: Store,
) -> None:
    # SQLite would turn an integer past 2^63 into a float; PostgreSQL's BIGINT would overflow
    rich = await store.create_wallet("rich", MAX_MICRO - 10)
    with pytest.raises(InvalidRequest, match="largest amount"):
        await store.credit(rich.id, 11)
    with pytest.raises(InvalidRequest, match="largest amount"):
        await store.credit(rich.id, MAX_MICRO, idempotency_key="big")
    source = await store.create_wallet("source", 1_000)
    with pytest.raises(InvalidRequest, match="largest amount"):
        await store.transfer(source.id, rich.id, 11)
    assert [(await fresh(store, w)).balance for w in (rich, source)] == [MAX_MICRO - 10, 1_000]
    full, _ = await store.credit(rich.id, 10)  # up to the largest amount exactly
    assert full.balance == MAX_MICRO
    assert len(await store.ledger(rich.id)) == 2
    assert len(await store.ledger(source.id)) == 1


# -- transfers -----------------------------------------------------------------------------------


async def test_transfer_moves_money_with_two_entries(store: Store) -> None:
    a = await store.create_wallet("a", 1_000)
    b = await store.create_wallet("b", 10)
    transfer, new = await store.transfer(a.id, b.id, 400, memo="share")
    assert new is True
    assert transfer.id.startswith("tr_")
    assert (transfer.from_wallet, transfer.to_wallet, transfer.amount) == (a.id, b.id, 400)
    assert transfer.idempotency_key is None
    assert (await fresh(store, a)).balance == 600
    assert (await fresh(store, b)).balance == 410
    out = (await store.ledger(a.id))[0]
    into = (await store.ledger(b.id))[0]
    assert (out.kind, out.amount, out.balance_after, out.ref) == (
        "transfer",
        -400,
        600,
        transfer.id,
    )
    assert (into.kind, into.amount, into.balance_after, into.ref) == (
        "transfer",
        400,
        410,
        transfer.id,
    )
    assert out.memo == into.memo == "share"


async def test_transfer_the_source_cannot_pay_moves_nothing(store: Store) -> None:
    a = await store.create_wallet("a", 1_000)
    b = await store.create_wallet("b", 10)
    held = await reserve(store, a, minimum=300, maximum=300)  # reserved funds are not available
    assert held is not None
    before = (await store.ledger(a.id), await store.ledger(b.id))
    with pytest.raises(InsufficientQuota):
        await store.transfer(a.id, b.id, 701, idempotency_key="t1")
    assert (await fresh(store, a)).balance == 1_000
    assert (await fresh(store, b)).balance == 10
    assert (await store.ledger(a.id), await store.ledger(b.id)) == before
    # the failed attempt did not use up its idempotency key
    transfer, new = await store.transfer(a.id, b.id, 700, idempotency_key="t1")
    assert new is True
    assert transfer.amount == 700
    assert (await fresh(store, a)).available == 0
    await store.settle(held, usage_for(held), 0)


async def test_transfer_replay_returns_the_first_transfer(store: Store) -> None:
    a = await store.create_wallet("a", 1_000)
    b = await store.create_wallet("b")
    first, new1 = await store.transfer(a.id, b.id, 100, idempotency_key="pay-1")
    again, new2 = await store.transfer(a.id, b.id, 100, idempotency_key="pay-1")
    assert (new1, new2) == (True, False)
    assert again == first
    assert first.idempotency_key == "pay-1"
    assert (await fresh(store, a)).balance == 900
    assert (await fresh(store, b)).balance == 100
    assert len(await store.ledger(b.id)) == 1


async def test_transfer_refusals(store: Store) -> None:
    a = await store.create_wallet("a", 1_000)
    b = await store.create_wallet("b")
    with pytest.raises(InvalidRequest):
        await store.transfer(a.id, a.id, 10)
    with pytest.raises(NotFound):
        await store.transfer(a.id, "w_missing", 10)
    with pytest.raises(NotFound):
        await store.transfer("w_missing", b.id, 10)
    for amount in (0, -10):
        with pytest.raises(InvalidRequest):
            await store.transfer(a.id, b.id, amount)
    assert (await fresh(store, a)).balance == 1_000
    assert len(await store.ledger(a.id)) == 1
    assert await store.ledger(b.id) == []


async def test_concurrent_transfers_move_only_what_there_is(store: Store) -> None:
    a = await store.create_wallet("a", 1_000)
    b = await store.create_wallet("b")
    results = await asyncio.gather(
        *(store.transfer(a.id, b.id, 300) for _ in range(10)), return_exceptions=True
    )
    moved = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(moved) == 3
    assert all(isinstance(r, InsufficientQuota) for r in refused)
    assert (await fresh(store, a)).balance == 100
    assert (await fresh(store, b)).balance == 900
    assert len(await store.ledger(b.id)) == 3


# -- ledger --------------------------------------------------------------------------------------


async def test_ledger_is_newest_first_with_signed_amounts(store: Store) -> None:
    wallet = await store.create_wallet("w", 1_000)
    other = await store.create_wallet("other")
    await store.credit(wallet.id, 500)
    r = await reserve(store, wallet, maximum=300)
    assert r is not None
    await store.settle(r, usage_for(r), 120)
    await store.transfer(wallet.id, other.id, 80)
    entries = await store.ledger(wallet.id)
    assert [(e.kind, e.amount, e.balance_after) for e in entries] == [
        ("transfer", -80, 1_300),
        ("charge", -120, 1_380),
        ("credit", 500, 1_500),
        ("credit", 1_000, 1_000),
    ]
    assert entries[1].request_id == r.request_id
    assert [e.id for e in entries] == sorted((e.id for e in entries), reverse=True)
    assert entries[0].created_at >= entries[-1].created_at
    assert await store.ledger(wallet.id, limit=2) == entries[:2]
    assert await store.ledger(wallet.id, limit=0) == []
    assert await store.ledger("w_missing") == []


# -- reservations --------------------------------------------------------------------------------


async def test_reserve_takes_the_maximum_when_available(store: Store) -> None:
    wallet = await store.create_wallet("w", 1_000)
    before = time.time()
    r = await store.reserve(
        wallet_id=wallet.id, key_id=None, request_id="req-1", minimum=10, maximum=400, lease_s=60
    )
    assert r is not None
    assert r.id.startswith("r_")
    assert (r.wallet_id, r.key_id, r.request_id, r.amount) == (wallet.id, None, "req-1", 400)
    assert before <= r.created_at <= time.time()
    assert r.expires_at == pytest.approx(r.created_at + 60)
    current = await fresh(store, wallet)
    assert (current.balance, current.reserved, current.available) == (1_000, 400, 600)
    assert len(await store.ledger(wallet.id)) == 1  # a hold is not a ledger entry
    await store.settle(r, usage_for(r), 0)


async def test_reserve_partially_between_minimum_and_maximum(store: Store) -> None:
    wallet = await store.create_wallet("w", 250)
    r = await reserve(store, wallet, minimum=100, maximum=1_000)
    assert r is not None
    assert r.amount == 250
    assert (await fresh(store, wallet)).available == 0
    await store.settle(r, usage_for(r), 0)


async def test_reserve_below_minimum_is_none_and_holds_nothing(store: Store) -> None:
    wallet = await store.create_wallet("w", 99)
    assert await reserve(store, wallet, minimum=100, maximum=1_000) is None
    assert (await fresh(store, wallet)).reserved == 0
    assert await reserve(store, Wallet("w_missing", "x", 0, 0, 0.0)) is None
    empty = await store.create_wallet("empty")
    zero = await reserve(store, empty, minimum=0, maximum=50)  # minimum 0: a zero hold is fine
    assert zero is not None
    assert zero.amount == 0
    await store.settle(zero, usage_for(zero), 0)


async def test_reserve_rejects_inconsistent_bounds(store: Store) -> None:
    wallet = await store.create_wallet("w", 1_000)
    with pytest.raises(ValueError, match="minimum"):
        await reserve(store, wallet, minimum=10, maximum=5)
    with pytest.raises(ValueError, match="minimum"):
        await reserve(store, wallet, minimum=-1, maximum=5)


async def test_extend_grows_the_hold(store: Store) -> None:
    wallet = await store.create_wallet("w", 1_000)
    r = await reserve(store, wallet, minimum=100, maximum=300)
    assert r is not None
    grown = await store.extend(r, minimum=50, maximum=500)
    assert grown is not None
    assert (grown.id, grown.amount) == (r.id, 800)
    assert (await fresh(store, wallet)).reserved == 800
    partial = await store.extend(grown, minimum=100, maximum=1_000)
    assert partial is not None
    assert partial.amount == 1_000
    assert await store.extend(partial, minimum=1, maximum=10) is None  # nothing left
    assert (await fresh(store, wallet)).reserved == 1_000
    settled = await store.settle(partial, usage_for(partial), 900)
    assert settled.cost == 900
    current = await fresh(store, wallet)
    assert (current.balance, current.reserved) == (100, 0)


async def test_extend_of_a_released_reservation_is_none(store: Store) -> None:
    wallet = await store.create_wallet("w", 1_000)
    r = await reserve(store, wallet, maximum=100)
    assert r is not None
    assert await store.release_expired(all_=True) == 1
    assert await store.extend(r, minimum=1, maximum=100) is None
    assert (await fresh(store, wallet)).reserved == 0


# -- settlement ----------------------------------------------------------------------------------


async def test_settle_charges_the_cost_and_releases_the_rest(store: Store) -> None:
    wallet = await store.create_wallet("w", 1_000)
    r = await reserve(store, wallet, maximum=500)
    assert r is not None
    written = await store.settle(r, usage_for(r, extra={"route": "a"}, stream=True), 123)
    assert (written.cost, written.shortfall) == (123, 0)
    assert (written.request_id, written.status, written.extra) == (
        r.request_id,
        "ok",
        {"route": "a"},
    )
    current = await fresh(store, wallet)
    assert (current.balance, current.reserved) == (877, 0)
    charge = (await store.ledger(wallet.id))[0]
    assert (charge.kind, charge.amount, charge.balance_after) == ("charge", -123, 877)
    assert charge.request_id == r.request_id
    assert await store.list_usage(wallet_id=wallet.id) == [written]


async def test_settle_at_zero_cost_writes_no_entry(store: Store) -> None:
    wallet = await store.create_wallet("w", 1_000)
    r = await reserve(store, wallet)
    assert r is not None
    written = await store.settle(r, usage_for(r, status=UsageStatus.UPSTREAM_ERROR), 0)
    assert (written.cost, written.shortfall, written.status) == (0, 0, "upstream_error")
    assert len(await store.ledger(wallet.id)) == 1
    assert (await fresh(store, wallet)).reserved == 0


async def test_settle_may_charge_beyond_the_hold_from_free_funds(store: Store) -> None:
    wallet = await store.create_wallet("w", 1_000)
    r = await reserve(store, wallet, maximum=100)
    assert r is not None
    written = await store.settle(r, usage_for(r), 300)
    assert (written.cost, written.shortfall) == (300, 0)
    assert (await fresh(store, wallet)).balance == 700


async def test_settle_beyond_what_the_wallet_has_records_a_shortfall(store: Store) -> None:
    wallet = await store.create_wallet("w", 1_000)
    r = await reserve(store, wallet, maximum=1_000)
    assert r is not None
    written = await store.settle(r, usage_for(r), 1_500)
    assert (written.cost, written.shortfall) == (1_000, 500)
    current = await fresh(store, wallet)
    assert (current.balance, current.reserved) == (0, 0)
    [usage] = await store.list_usage(wallet_id=wallet.id)
    assert (usage.cost, usage.shortfall) == (1_000, 500)


async def test_settle_never_takes_what_others_reserved(store: Store) -> None:
    wallet = await store.create_wallet("w", 1_000)
    r1 = await reserve(store, wallet, minimum=600, maximum=600)
    r2 = await reserve(store, wallet, minimum=400, maximum=400)
    assert r1 is not None
    assert r2 is not None
    first = await store.settle(r1, usage_for(r1), 900)
    assert (first.cost, first.shortfall) == (600, 300)
    current = await fresh(store, wallet)
    assert (current.balance, current.reserved) == (400, 400)
    second = await store.settle(r2, usage_for(r2), 400)
    assert (second.cost, second.shortfall) == (400, 0)
    current = await fresh(store, wallet)
    assert (current.balance, current.reserved) == (0, 0)


async def test_settle_of_a_released_reservation_charges_what_is_free(store: Store) -> None:
    # An instance that stopped renewing its leases lost them; once it settles, what its request
    # cost is still charged, from what the wallet has free then.
    wallet = await store.create_wallet("w", 1_000)
    r = await reserve(store, wallet, maximum=500)
    assert r is not None
    assert await store.release_expired(all_=True) == 1
    [abandoned] = await store.list_usage(wallet_id=wallet.id)
    assert abandoned.status == UsageStatus.ABANDONED
    other = await reserve(store, wallet, minimum=700, maximum=700)  # the rest is someone else's
    assert other is not None
    written = await store.settle(r, usage_for(r, completion_tokens=42), 450)
    assert (written.cost, written.shortfall, written.status) == (300, 150, "ok")
    # the real record replaces the abandoned one
    assert await store.list_usage(wallet_id=wallet.id) == [written]
    current = await fresh(store, wallet)
    assert (current.balance, current.reserved) == (700, 700)
    assert [e.amount for e in await store.ledger(wallet.id)] == [-300, 1_000]
    assert await store.settle(r, usage_for(r), 450) == written  # and once only
    await store.settle(other, usage_for(other), 0)


async def test_settling_twice_charges_once(store: Store) -> None:
    wallet = await store.create_wallet("w", 1_000)
    r = await reserve(store, wallet)
    assert r is not None
    first = await store.settle(r, usage_for(r), 60)
    second = await store.settle(r, usage_for(r, status=UsageStatus.ERROR), 60)
    assert second == first
    assert (await fresh(store, wallet)).balance == 940
    assert len(await store.list_usage(wallet_id=wallet.id)) == 1


async def test_a_request_id_settles_one_reservation_only(store: Store) -> None:
    wallet = await store.create_wallet("w", 1_000)
    r1 = await reserve(store, wallet)
    assert r1 is not None
    r2 = await store.reserve(
        wallet_id=wallet.id,
        key_id=None,
        request_id=r1.request_id,
        minimum=1,
        maximum=50,
        lease_s=LEASE,
    )
    assert r2 is not None
    await store.settle(r1, usage_for(r1), 10)
    with pytest.raises(Conflict):
        await store.settle(r2, usage_for(r2), 10)
    current = await fresh(store, wallet)
    assert (current.balance, current.reserved) == (990, 50)  # nothing of the refused settle
    assert await store.release_expired(all_=True) == 1


async def test_settle_rejects_a_foreign_usage_record_and_negative_cost(store: Store) -> None:
    wallet = await store.create_wallet("w", 1_000)
    r = await reserve(store, wallet)
    assert r is not None
    with pytest.raises(ValueError, match="reservation"):
        await store.settle(r, usage_for(r, request_id="someone-else"), 10)
    with pytest.raises(ValueError, match="negative"):
        await store.settle(r, usage_for(r), -1)
    await store.settle(r, usage_for(r), 10)


async def test_settle_adds_the_charge_to_the_key(store: Store) -> None:
    wallet = await store.create_wallet("w", 1_000)
    key = await store.create_key(new_key(wallet.id))
    for cost in (100, 250):
        r = await reserve(store, wallet, key_id=key.id, maximum=300)
        assert r is not None
        await store.settle(r, usage_for(r), cost)
    r = await reserve(store, wallet, key_id=key.id, maximum=650)
    assert r is not None
    await store.settle(r, usage_for(r), 5_000)  # only 650 can be paid
    current = await store.get_key(key.id)
    assert current is not None
    assert current.spent == 1_000
    assert (await fresh(store, wallet)).balance == 0


# -- recovery ------------------------------------------------------------------------------------


async def test_release_expired_releases_only_ended_leases(store: Store) -> None:
    wallet = await store.create_wallet("w", 1_000)
    key = await store.create_key(new_key(wallet.id))
    ended = await reserve(store, wallet, key_id=key.id, maximum=200, lease_s=0.0)
    live = await reserve(store, wallet, maximum=300, lease_s=3_600)
    assert ended is not None
    assert live is not None
    await asyncio.sleep(0.01)
    assert await store.release_expired() == 1
    assert await store.release_expired() == 0
    current = await fresh(store, wallet)
    assert (current.balance, current.reserved) == (1_000, 300)
    [abandoned] = await store.list_usage(wallet_id=wallet.id)
    assert (abandoned.request_id, abandoned.key_id, abandoned.wallet_id) == (
        ended.request_id,
        key.id,
        wallet.id,
    )
    assert (abandoned.status, abandoned.cost, abandoned.shortfall) == ("abandoned", 0, 0)
    assert (abandoned.prompt_tokens, abandoned.completion_tokens) == (0, 0)
    settled = await store.settle(live, usage_for(live), 100)
    assert settled.cost == 100


async def test_release_expired_all(store: Store) -> None:
    wallet = await store.create_wallet("w", 1_000)
    for _ in range(3):
        assert await reserve(store, wallet, maximum=100, lease_s=3_600) is not None
    assert await store.release_expired() == 0
    assert await store.release_expired(all_=True) == 3
    assert (await fresh(store, wallet)).reserved == 0
    usage = await store.list_usage(wallet_id=wallet.id)
    assert [u.status for u in usage] == ["abandoned"] * 3
    assert await store.release_expired(all_=True) == 0


async def test_settle_racing_recovery_ends_each_reservation_once(store: Store) -> None:
    wallet = await store.create_wallet("w", 100_000)
    held = [await reserve(store, wallet, maximum=100, lease_s=0.0) for _ in range(40)]
    await asyncio.sleep(0.01)  # every lease has ended
    settles = [store.settle(r, usage_for(r), 50) for r in held if r]
    recoveries = [store.release_expired() for _ in range(4)]
    results = await asyncio.gather(*settles, *recoveries)
    written, released = results[: len(settles)], results[len(settles) :]
    # released first or not, each request is charged once, in full (the wallet has enough)
    assert all(isinstance(u, UsageRecord) and u.cost == 50 for u in written)
    assert sum(r for r in released if isinstance(r, int)) <= len(held)
    current = await fresh(store, wallet)
    assert (current.balance, current.reserved) == (100_000 - 50 * len(held), 0)
    usage = await store.list_usage(wallet_id=wallet.id, limit=1_000)
    assert len(usage) == len(held)
    assert all(u.status == "ok" for u in usage)  # a late settle replaces the abandoned record


async def test_renewed_leases_outlive_their_first_end(store: Store) -> None:
    wallet = await store.create_wallet("w", 1_000)
    kept = await reserve(store, wallet, maximum=100, lease_s=0.5)
    lost = await reserve(store, wallet, maximum=200, lease_s=0.5)
    assert kept is not None
    assert lost is not None
    for _ in range(3):  # the instance serving `kept` renews it; nobody renews `lost`
        await asyncio.sleep(0.25)
        assert await store.renew([kept.id], 0.5) == 1
        await store.release_expired()
    assert (await fresh(store, wallet)).reserved == 100
    assert await store.renew([kept.id, lost.id, "r_unknown"], 60) == 1
    [abandoned] = await store.list_usage(wallet_id=wallet.id)
    assert abandoned.request_id == lost.request_id
    assert (await store.settle(kept, usage_for(kept), 80)).cost == 80
    assert await store.renew([kept.id], 60) == 0  # settled: nothing left to renew
    assert await store.renew([], 60) == 0


# -- keys' spend limits --------------------------------------------------------------------------


async def test_a_keys_spend_limit_bounds_its_reservations(store: Store) -> None:
    wallet = await store.create_wallet("w", 10_000)
    key = await store.create_key(new_key(wallet.id, spend_limit=1_000))
    first = await reserve(store, wallet, key_id=key.id, minimum=100, maximum=700)
    assert first is not None
    assert first.amount == 700
    # what the limit leaves, not what the wallet has
    second = await reserve(store, wallet, key_id=key.id, minimum=100, maximum=5_000)
    assert second is not None
    assert second.amount == 300
    with pytest.raises(PermissionDenied, match="reached its spend limit") as refused:
        await reserve(store, wallet, key_id=key.id, minimum=1, maximum=10)
    assert refused.value.code == "spend_limit_reached"
    # another key of the same wallet is not bound by it
    other = await store.create_key(new_key(wallet.id, name="other"))
    free = await reserve(store, wallet, key_id=other.id, minimum=1, maximum=2_000)
    assert free is not None
    assert free.amount == 2_000
    await store.settle(first, usage_for(first), 200)
    await store.settle(second, usage_for(second), 0)
    with pytest.raises(PermissionDenied, match="cannot cover") as short:
        await reserve(store, wallet, key_id=key.id, minimum=900, maximum=900)
    assert short.value.code == "spend_limit_reached"
    third = await reserve(store, wallet, key_id=key.id, minimum=1, maximum=5_000)
    assert third is not None
    assert third.amount == 800
    await store.settle(third, usage_for(third), 0)
    await store.settle(free, usage_for(free), 0)


async def test_a_keys_spend_limit_bounds_extensions_and_charges(store: Store) -> None:
    wallet = await store.create_wallet("w", 10_000)
    key = await store.create_key(new_key(wallet.id, spend_limit=500))
    r = await reserve(store, wallet, key_id=key.id, minimum=1, maximum=200)
    assert r is not None
    grown = await store.extend(r, minimum=1, maximum=1_000)
    assert grown is not None
    assert grown.amount == 500  # as far as the limit goes
    assert await store.extend(grown, minimum=1, maximum=10) is None
    written = await store.settle(grown, usage_for(grown), 900)  # costs more than the limit
    assert (written.cost, written.shortfall) == (500, 400)
    current = await store.get_key(key.id)
    assert current is not None
    assert current.spent == 500
    assert (await fresh(store, wallet)).balance == 9_500
    with pytest.raises(PermissionDenied):
        await reserve(store, wallet, key_id=key.id)


async def test_released_reservations_give_the_key_its_limit_back(store: Store) -> None:
    wallet = await store.create_wallet("w", 10_000)
    key = await store.create_key(new_key(wallet.id, spend_limit=1_000))
    r = await reserve(store, wallet, key_id=key.id, minimum=1, maximum=1_000)
    assert r is not None
    with pytest.raises(PermissionDenied):
        await reserve(store, wallet, key_id=key.id)
    assert await store.release_expired(all_=True) == 1
    again = await reserve(store, wallet, key_id=key.id, minimum=1, maximum=1_000)
    assert again is not None
    assert again.amount == 1_000
    # the released request, settled late, is charged from what the limit leaves: nothing
    late = await store.settle(r, usage_for(r), 300)
    assert (late.cost, late.shortfall) == (0, 300)
    await store.settle(again, usage_for(again), 1_000)
    current = await store.get_key(key.id)
    assert current is not None
    assert current.spent == 1_000


async def test_concurrent_requests_never_pass_a_keys_limit(store: Store) -> None:
    wallet = await store.create_wallet("w", 1_000_000)
    key = await store.create_key(new_key(wallet.id, spend_limit=5_000))
    rng = random.Random(11)
    costs = [rng.randrange(50, 400) for _ in range(120)]
    refused = 0

    async def one_request(cost: int) -> UsageRecord | None:
        nonlocal refused
        try:
            r = await reserve(store, wallet, key_id=key.id, minimum=50, maximum=200)
        except PermissionDenied:
            refused += 1
            return None
        assert r is not None
        await asyncio.sleep(0)
        grown = await store.extend(r, minimum=1, maximum=cost) if cost > r.amount else None
        await asyncio.sleep(0)
        return await store.settle(grown or r, usage_for(r), cost)

    results = await asyncio.gather(*(one_request(cost) for cost in costs))
    settled = [u for u in results if u is not None]
    assert settled
    assert refused, "the limit was never reached"
    current = await store.get_key(key.id)
    assert current is not None
    assert current.spent == sum(u.cost for u in settled) <= 5_000
    assert (await fresh(store, wallet)).balance == 1_000_000 - current.spent
    assert (await fresh(store, wallet)).reserved == 0


# -- concurrency ---------------------------------------------------------------------------------


async def test_concurrent_requests_never_overdraw(store: Store, invariants: Invariants) -> None:
    start = 10_000
    wallet = await store.create_wallet("busy", start)
    key = await store.create_key(new_key(wallet.id))
    rng = random.Random(7)
    costs = [rng.randrange(0, 151) for _ in range(200)]

    async def one_request(cost: int) -> UsageRecord | None:
        r = await reserve(store, wallet, key_id=key.id, minimum=10, maximum=100)
        if r is None:
            return None
        await asyncio.sleep(0)
        grown = await store.extend(r, minimum=1, maximum=20) if cost > 100 else None
        await asyncio.sleep(0)
        return await store.settle(grown or r, usage_for(r), cost)

    results = await asyncio.gather(*(one_request(cost) for cost in costs))
    settled = [u for u in results if u is not None]
    assert settled, "no request got a reservation"
    current = await fresh(store, wallet)
    assert current.reserved == 0
    assert current.balance >= 0
    charged = sum(u.cost for u in settled)
    assert current.balance == start - charged
    assert all(u.cost + u.shortfall == cost for u, cost in zip(results, costs, strict=True) if u)
    recorded = await store.list_usage(wallet_id=wallet.id, limit=1_000)
    assert len(recorded) == len(settled)
    assert sum(u.cost for u in recorded) == charged
    spent = await store.get_key(key.id)
    assert spent is not None
    assert spent.spent == charged
    await invariants(store)


async def test_cancelled_settlements_are_all_or_nothing(store: Store) -> None:
    start = 100_000
    wallet = await store.create_wallet("w", start)
    held = [await reserve(store, wallet, maximum=100) for _ in range(60)]
    tasks = [asyncio.create_task(store.settle(r, usage_for(r), 30)) for r in held if r]
    for step in range(3):  # cancel some before they start, some while they wait on storage
        for task in tasks[step::3]:
            if step < 2:
                task.cancel()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks, return_exceptions=True)
    await store.release_expired(all_=True)
    usage = {u.request_id: u for u in await store.list_usage(wallet_id=wallet.id, limit=1_000)}
    assert len(usage) == len(held)
    settled = [u for u in usage.values() if u.status == UsageStatus.OK]
    assert all(u.cost == 30 for u in settled)
    assert {u.status for u in usage.values()} <= {"ok", "abandoned"}
    current = await fresh(store, wallet)
    assert (current.balance, current.reserved) == (start - 30 * len(settled), 0)
    charges = [e for e in await store.ledger(wallet.id, limit=1_000) if e.kind == "charge"]
    assert sorted(e.request_id or "" for e in charges) == sorted(u.request_id for u in settled)


# -- usage ---------------------------------------------------------------------------------------


async def test_list_usage_filters_and_is_newest_first(store: Store) -> None:
    a = await store.create_wallet("a", 10_000)
    b = await store.create_wallet("b", 10_000)
    ka = await store.create_key(new_key(a.id, "ka"))
    kb = await store.create_key(new_key(a.id, "kb"))
    kc = await store.create_key(new_key(b.id, "kc"))
    order: list[tuple[str, str]] = []
    for wallet, key in [(a, ka), (a, kb), (b, kc), (a, ka), (b, kc), (a, kb)]:
        r = await reserve(store, wallet, key_id=key.id)
        assert r is not None
        # identical timestamps: the order must still be the order of writing
        await store.settle(r, usage_for(r, created_at=1_700_000_000.0), 1)
        order.append((r.request_id, key.id))
    newest = [rid for rid, _ in reversed(order)]
    assert [u.request_id for u in await store.list_usage()] == newest
    assert [u.request_id for u in await store.list_usage(limit=2)] == newest[:2]
    by_a = await store.list_usage(wallet_id=a.id)
    assert [u.request_id for u in by_a] == [
        rid for rid, k in reversed(order) if k in (ka.id, kb.id)
    ]
    by_ka = await store.list_usage(key_id=ka.id)
    assert [u.request_id for u in by_ka] == [rid for rid, k in reversed(order) if k == ka.id]
    assert await store.list_usage(wallet_id=b.id, key_id=ka.id) == []
    assert len(await store.list_usage(wallet_id=a.id, key_id=kb.id, limit=1)) == 1
    assert await store.list_usage(wallet_id="w_missing") == []


async def test_usage_record_round_trips_every_field(store: Store) -> None:
    wallet = await store.create_wallet("w", 10_000)
    r = await reserve(store, wallet)
    assert r is not None
    usage = usage_for(
        r,
        status=UsageStatus.CUT_OFF,
        backend=None,
        cached_tokens=4,
        stream=True,
        latency_ms=1_234,
        endpoint="completions",
        extra={"upstream_model": "x-1", "note": "é"},
    )
    written = await store.settle(r, usage, 7)
    assert written == UsageRecord(**{**_fields(usage), "cost": 7, "shortfall": 0})  # type: ignore[arg-type]
    [stored] = await store.list_usage(key_id=None, wallet_id=wallet.id)
    assert stored == written
    assert stored.created_at == pytest.approx(usage.created_at)


def _fields(usage: UsageRecord) -> dict[str, object]:
    return {name: getattr(usage, name) for name in UsageRecord.__dataclass_fields__}


# -- keys ----------------------------------------------------------------------------------------


async def test_keys_create_get_and_list(store: Store) -> None:
    a = await store.create_wallet("a")
    b = await store.create_wallet("b")
    k1 = new_key(a.id, "first", models=("gpt-4o-mini", "embed"), rpm=60, tpm=10_000, spend_limit=5)
    k2 = new_key(a.id, "second", expires_at=time.time() + 3_600)
    k3 = new_key(b.id, "third")
    assert await store.create_key(k1) == k1
    assert await store.create_key(k2) == k2
    assert await store.create_key(k3) == k3
    assert await store.get_key(k1.id) == k1
    assert await store.get_key("k_missing") is None
    assert await store.get_key_by_hash(k2.key_hash) == k2
    assert await store.get_key_by_hash("0" * 64) is None
    assert {k.id for k in await store.list_keys()} == {k1.id, k2.id, k3.id}
    assert {k.id for k in await store.list_keys(wallet_id=a.id)} == {k1.id, k2.id}
    assert await store.list_keys(wallet_id=b.id) == [k3]
    assert await store.list_keys(wallet_id="w_missing") == []
    got = await store.get_key(k1.id)
    assert got is not None
    assert got.models == ("gpt-4o-mini", "embed")
    got = await store.get_key(k3.id)
    assert got is not None
    assert (got.models, got.rpm, got.spend_limit, got.spent) == (
        None,
        None,
        None,
        0,
    )


async def test_key_refusals(store: Store) -> None:
    wallet = await store.create_wallet("w")
    with pytest.raises(NotFound):
        await store.create_key(new_key("w_missing"))
    key = await store.create_key(new_key(wallet.id))
    with pytest.raises(Conflict):
        await store.create_key(new_key(wallet.id, key_hash=key.key_hash, id="k_other"))
    with pytest.raises(Conflict):
        await store.create_key(new_key(wallet.id, id=key.id))
    assert await store.list_keys() == [key]


async def test_revoke_key_is_idempotent(store: Store) -> None:
    wallet = await store.create_wallet("w")
    key = await store.create_key(new_key(wallet.id))
    revoked = await store.revoke_key(key.id, 1_800_000_000.0)
    assert revoked is not None
    assert revoked.revoked_at == 1_800_000_000.0
    again = await store.revoke_key(key.id, 1_900_000_000.0)
    assert again is not None
    assert again.revoked_at == 1_800_000_000.0
    assert await store.get_key_by_hash(key.key_hash) == revoked
    assert await store.revoke_key("k_missing", time.time()) is None
