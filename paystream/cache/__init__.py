"""Redis cache-aside: versioned entries, compare-and-set writes, single-flight loads."""

from .entities import ACCOUNT, PAYMENT, account_entry, account_from, payment_entry, payment_from
from .singleflight import SingleFlight
from .store import Entry, PageLookup, Payload, VersionedCache

__all__ = [
    "ACCOUNT", "PAYMENT", "Entry", "PageLookup", "Payload", "SingleFlight", "VersionedCache", "account_entry",
    "account_from", "payment_entry", "payment_from",
]
