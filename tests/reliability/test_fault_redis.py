"""Scenario 2: Redis killed and restarted (empty) while clients pay and read. No client sees an
error, mutations keep working, reads are never older than what a client was shown, and once
the payments settle no stale cache entry survives.

tests/integration/test_read_path.py checks single reads during an outage and the replay of
one kept write; here the outage comes in the middle of traffic."""

from __future__ import annotations

import asyncio

import pytest

from .conftest import StatusWatcher, sized
from .invariants import assert_cache_agrees, assert_ledger_sound, balances
from .load import Load, payers

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_redis_killed_and_restarted_during_traffic(client, migrated, worker, make_partner,
                                                         services, devstack) -> None:
    if devstack is None:
        pytest.skip("needs the embedded stack to stop Redis")
    clients = await payers(make_partner, sized(8, 32))
    accounts = [a for p in clients for a in (p.a, p.b)]
    opening = await balances(services, accounts)
    watcher = StatusWatcher(migrated)
    await watcher.start()
    load = Load(client, clients)
    load.start()
    try:
        await load.more(40)
        await asyncio.to_thread(devstack.stop_redis)
        try:
            await load.more(sized(60, 300))
        finally:
            await asyncio.to_thread(devstack.start_redis)
        await load.more(sized(60, 300))
    finally:
        await load.stop()
    try:
        assert load.errors == []
        assert load.stale == []
        ids = load.payment_ids
        await watcher.wait_count(ids, at_least=len(ids), timeout=120)
    finally:
        await watcher.stop()
    # The mixed load made holds (captured and canceled) and refunds too.
    assert load.refund_ids
    settled = await assert_ledger_sound(services, accounts, opening, ids)
    assert settled.get("CANCELED") and settled.get("SUCCEEDED")
    await assert_cache_agrees(services, services.cache, accounts, ids)
