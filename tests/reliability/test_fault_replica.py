"""Scenario 3: while clients pay and read, the replica stops replaying, then stops altogether,
then comes back. No client sees an error, or a payment or balance older than one it was shown
or its own mutation produced; reads fall back to the primary while the replica is down.

tests/integration/test_read_path.py checks each of these once without load."""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.conftest import gql, wait_for_replay

from .conftest import StatusWatcher, sized
from .invariants import assert_ledger_sound, balances
from .load import Load, payers

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_replica_paused_then_stopped_during_traffic(client, migrated, worker, make_partner,
                                                          services, devstack) -> None:
    if devstack is None:
        pytest.skip("needs the embedded stack to pause and stop the replica")
    clients = await payers(make_partner, sized(8, 32))
    accounts = [a for p in clients for a in (p.a, p.b)]
    opening = await balances(services, accounts)
    await wait_for_replay(services.db)  # the replica has the accounts: stale reads are possible
    watcher = StatusWatcher(migrated)
    await watcher.start()
    load = Load(client, clients)
    load.start()
    try:
        await load.more(40)
        await asyncio.to_thread(devstack.pause_replica_replay)
        try:
            await load.more(sized(60, 300))
            await asyncio.to_thread(devstack.stop_replica)
            try:
                await load.more(sized(60, 300))
            finally:
                await asyncio.to_thread(devstack.start_replica)
        finally:
            await asyncio.to_thread(devstack.resume_replica_replay)
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
    # Once everything settled, what a client reads is what the primary holds.
    final = await balances(services, accounts)
    for payer in clients:
        read = await gql(client, "query($a: ID!, $b: ID!) { a: account(id: $a) { balance } "
                         "b: account(id: $b) { balance } }", {"a": payer.a, "b": payer.b}, key=payer.key)
        assert read["data"] == {"a": {"balance": f"{final[payer.a] / 100:.2f}"},
                                "b": {"balance": f"{final[payer.b] / 100:.2f}"}}
