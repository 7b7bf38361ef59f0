"""Cached account pages: a warm page is served from Redis, and every change to an account's
list (a new payment, told by the accepting process or by the status stream) is listed on
the next read, whatever the replica's lag, Redis outages included."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid

import pytest
from sqlalchemy import text

from paystream.cache import VersionedCache
from paystream.db.payments import payments_by_ids
from paystream.domain.entities import PaymentRow
from paystream.events.messages import PaymentStatusEvent
from paystream.services.status_hub import StatusHub

from .conftest import cache_settled, gql, wait_for_replay
from .test_write_path import CREATE, payment_input, watcher  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration

PAGE = """query($a: ID!, $first: Int, $status: PaymentStatus) {
  payments(accountId: $a, first: $first, filter: {status: $status}) {
    edges { node { id status } } pageInfo { hasNextPage } } }"""


async def _listed(client, partner, account: str, **variables) -> list[str]:  # type: ignore[no-untyped-def]
    body = await gql(client, PAGE, {"a": account, **variables}, key=partner.key)
    return [edge["node"]["id"] for edge in body["data"]["payments"]["edges"]]


async def _insert_failed(services, source: str, destination: str) -> PaymentRow:  # type: ignore[no-untyped-def]
    """A settled FAILED payment written straight to the primary, as if its API process had
    died right after the commit (no event, no word to the cache)."""
    payment_id = uuid.uuid4()
    async with services.db.write_session() as session:
        await session.execute(text(
            "INSERT INTO payments (id, partner_id, idempotency_key, request_hash,"
            " source_account_id, destination_account_id, amount_minor, currency, status,"
            " failure_reason) SELECT :id, partner_id, :k, repeat('a', 64), :s, :d, 100, 'USD',"
            " 'FAILED', 'INSUFFICIENT_FUNDS' FROM accounts WHERE id = :s"),
            {"id": payment_id, "k": str(payment_id), "s": uuid.UUID(source),
             "d": uuid.UUID(destination)})
    return (await services.db.read(lambda s: payments_by_ids(s, [payment_id]),
                                   primary=True))[payment_id]


async def _warm(client, services, partner, account: str) -> list[str]:  # type: ignore[no-untyped-def]
    """Read the page until it is served from the cache; what it lists. (A late event of a
    payment, such as the API's PENDING one arriving after the worker's, changes the pages
    once more: the read after it is a miss again.)"""
    await cache_settled(services)
    await _listed(client, partner, account)
    for _ in range(10):
        hits = services.cache.page_hits
        listed = await _listed(client, partner, account)
        if services.cache.page_hits == hits + 1:
            return listed
    raise AssertionError("the page was never served from the cache")


async def test_a_new_payment_is_listed_at_once_whatever_the_replica(
    client, services, make_partner, watcher, devstack  # noqa: F811
) -> None:
    if devstack is None:
        pytest.skip("needs the embedded stack to pause the replica")
    partner = await make_partner()
    a, b = await partner.account(balance="20.00"), await partner.account(balance="0")
    first = (await gql(client, CREATE, payment_input(a, b, "1.00"), key=partner.key)
             )["data"]["createPayment"]["id"]
    await watcher.terminal(first)  # its last event has changed the pages already
    assert await _warm(client, services, partner, a) == [first]
    await _warm(client, services, partner, b)
    await wait_for_replay(services.db)
    devstack.pause_replica_replay()
    try:
        second = (await gql(client, CREATE, payment_input(a, b, "2.00"), key=partner.key)
                  )["data"]["createPayment"]["id"]
        # Both accounts' cached pages are stale from the commit on: the next read lists it.
        assert await _listed(client, partner, a) == [second, first]
        assert await _listed(client, partner, b) == [second, first]
        await watcher.terminal(second)
    finally:
        devstack.resume_replica_replay()
    # And that page is the one cached now.
    assert await _warm(client, services, partner, a) == [second, first]


async def test_the_status_stream_tells_the_pages_of_a_payment_its_api_never_announced(
    client, services, make_partner
) -> None:
    owner, counterparty = await make_partner(), await make_partner()
    a = await owner.account(balance="10.00")
    b = await counterparty.account(balance="0")
    assert await _warm(client, services, owner, a) == []
    assert await _warm(client, services, counterparty, b) == []
    row = await _insert_failed(services, a, b)
    # Nothing told the cache yet: the stored pages are what a reader is shown.
    assert await _listed(client, owner, a) == []
    accounts = await services.reader.accounts([row.source_account_id,
                                               row.destination_account_id])
    event = PaymentStatusEvent.of(row, accounts[row.source_account_id],
                                  accounts[row.destination_account_id], with_accounts=False)
    await StatusHub(services.settings, services.cache).apply([event])
    assert await _listed(client, owner, a) == [str(row.id)]
    assert await _listed(client, counterparty, b) == [str(row.id)]


async def test_a_page_read_before_a_change_is_never_stored_after_it(migrated) -> None:
    cache = VersionedCache(migrated.redis)
    account = uuid.uuid4()
    try:
        lookup = await cache.get_page(account, "20:-:-")
        assert lookup is not None and lookup.payload is None and lookup.generation == ""
        # The list changes while the page's statement runs: what it read may lack the change.
        await cache.bump_pages([account], 60)
        assert not await cache.put_page(account, "20:-:-", lookup.generation, b"-", 60)
        fresh = await cache.get_page(account, "20:-:-")
        assert fresh is not None and fresh.payload is None and fresh.generation != ""
        assert await cache.put_page(account, "20:-:-", fresh.generation, b"-x", 60)
        stored = await cache.get_page(account, "20:-:-")
        assert stored is not None and stored.payload == b"-x"
        # Once more with a generation present: a change after the read refuses the store.
        await cache.bump_pages([account], 60)
        again = await cache.get_page(account, "20:-:-")
        assert again is not None and again.payload is None
        await cache.bump_pages([account], 60)
        assert not await cache.put_page(account, "20:-:-", again.generation, b"-y", 60)
    finally:
        await cache.close()


async def test_a_change_told_during_a_redis_outage_is_replayed_before_the_next_read(
    migrated, devstack
) -> None:
    if devstack is None:
        pytest.skip("needs the embedded stack to pause Redis")
    cache = VersionedCache(migrated.redis)
    account = uuid.uuid4()
    try:
        lookup = await cache.get_page(account, "20:-:-")
        assert lookup is not None
        assert await cache.put_page(account, "20:-:-", lookup.generation, b"-", 60)
        redis_pid = devstack.server_pids()["redis"]
        os.kill(redis_pid, signal.SIGSTOP)
        try:
            assert await cache.get_page(account, "20:-:-") is None  # times out: breaker open
            assert not cache.available
            await cache.bump_pages([account], 60)  # kept, not sent
        finally:
            os.kill(redis_pid, signal.SIGCONT)
        while not cache.available:  # the breaker's pause
            await asyncio.sleep(0.05)
        after = await cache.get_page(account, "20:-:-")
        assert after is not None and after.payload is None
    finally:
        await cache.close()


async def test_filtered_pages_are_read_each_time_and_stay_exact(
    client, services, make_partner
) -> None:
    partner = await make_partner()
    a, b = await partner.account(balance="10.00"), await partner.account(balance="0")
    row = await _insert_failed(services, a, b)
    await wait_for_replay(services.db)
    await cache_settled(services)  # else pages are not looked up at all
    hits, misses = services.cache.page_hits, services.cache.page_misses
    for _ in range(2):
        assert await _listed(client, partner, a, status="FAILED") == [str(row.id)]
        assert await _listed(client, partner, a, status="SUCCEEDED") == []
    assert (services.cache.page_hits, services.cache.page_misses) == (hits, misses)
