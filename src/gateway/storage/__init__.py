"""Storage engines behind one interface; :func:`store_from_url` picks one from a URL."""

from gateway.storage.base import (
    ApiKey,
    LedgerEntry,
    Reservation,
    Store,
    Transfer,
    UsageRecord,
    UsageStatus,
    Wallet,
)
from gateway.storage.factory import store_from_url

__all__ = [
    "ApiKey",
    "LedgerEntry",
    "Reservation",
    "Store",
    "Transfer",
    "UsageRecord",
    "UsageStatus",
    "Wallet",
    "store_from_url",
]
