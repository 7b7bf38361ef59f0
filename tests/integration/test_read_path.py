"""The read path: versioned cache writes, single-flight, read-your-writes while the replica
lags, and reads that survive a Redis outage."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from sqlalchemy import text

from paystream.cache import PAYMENT, VersionedCache
from paystream.db.ledger import fund
from paystream.services.reads import Reader

from .conftest import gql, wait_for_replay
from .test_write_path import CREATE, payment_input, watcher  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration


class CountedCache(VersionedCache):
    """The real cache, counting its lookups (each one MGET)."""

    lookups = 0

    async def get_many(self, *args: Any, **kwargs: Any) -> Any:
        self.lookups += 1
        return await super().get_many(*args, **kwargs)


async def test_older_version_never_overwrites_newer(migrated) -> None:
    cache = VersionedCache(migrated.redis)
    key = uuid.uuid4()
    try:
        assert await cache.put_many(PAYMENT, {key: (2, {"status": "SUCCEEDED"})}, 60) == 1
        assert await cache.put_many(PAYMENT, {key: (1, {"status": "PENDING"})}, 60) == 0
        assert await cache.put_many(PAYMENT, {key: (2, {"status": "PENDING"})}, 60) == 0
        found = await cache.get_many(PAYMENT, [key], lambda d: d)
        assert found == {key: {"status": "SUCCEEDED"}}
        ttl = await cache.redis.ttl(f"{PAYMENT}:{key}")
        assert 0 < ttl <= 60
        assert await cache.put_many(PAYMENT, {key: (3, {"status": "FAILED"})}, 60) == 1
        assert await cache.get_many(PAYMENT, [key], lambda d: d) == {key: {"status": "FAILED"}}
    finally:
        await cache.close()


async def test_single_flight_cold_misses_make_one_database_read(services, make_partner) -> None:
    partner = await make_partner()
    account = uuid.UUID(await partner.account())
    # On the replica already: a miss there would make a second read, on the primary.
    await wait_for_replay(services.db)
    cache = CountedCache(services.settings.redis)
    try:
        reader = Reader(services.db, cache, services.settings)
        await cache.delete(f"account:{account}")
        results = await asyncio.gather(*(reader.accounts([account]) for _ in range(100)))
        assert all(r[account].id == account for r in results)
        assert reader.db_reads == 1
        # One Redis lookup too: the 99 join the first before asking Redis. (When each asked
        # Redis first, a miss answered after the first read had finished started a second
        # read on a loaded machine.)
        assert cache.lookups == 1
    finally:
        await cache.close()


async def test_read_your_writes_while_replica_replay_is_paused(
    client, make_partner, watcher, devstack  # noqa: F811
) -> None:
    if devstack is None:
        pytest.skip("needs the embedded stack to pause the replica")
    partner = await make_partner()
    a, b = await partner.account(balance="20.00"), await partner.account(balance="1.00")
    # The replica has the accounts (so a stale read is possible) and then stops replaying.
    await wait_for_replay(partner.services.db)
    devstack.pause_replica_replay()
    try:
        body = await gql(client, CREATE, payment_input(a, b, "7.50"), key=partner.key)
        payment_id = body["data"]["createPayment"]["id"]
        await watcher.terminal(payment_id)
        shown = await gql(
            client,
            "query($p: ID!, $a: ID!, $b: ID!) { payment(id: $p) { status } "
            "a: account(id: $a) { balance } b: account(id: $b) { balance } }",
            {"p": payment_id, "a": a, "b": b}, key=partner.key,
        )
        assert shown["data"] == {"payment": {"status": "SUCCEEDED"}, "a": {"balance": "12.50"},
                                 "b": {"balance": "8.50"}}
    finally:
        devstack.resume_replica_replay()


async def test_reads_survive_redis_outage_and_use_it_again(client, make_partner, services,
                                                            devstack) -> None:
    if devstack is None:
        pytest.skip("needs the embedded stack to stop Redis")
    partner = await make_partner()
    account = await partner.account(balance="3.00")
    query = "query($id: ID!) { account(id: $id) { balance } }"
    devstack.stop_redis()
    try:
        for _ in range(3):
            body = await gql(client, query, {"id": account}, key=partner.key)
            assert body == {"data": {"account": {"balance": "3.00"}}}
    finally:
        devstack.start_redis()
    # Back without a restart once the breaker's pause is over.
    await asyncio.sleep(services.settings.redis.retry_after_failure_s)
    hits = services.cache.hits
    await gql(client, query, {"id": account}, key=partner.key)
    await gql(client, query, {"id": account}, key=partner.key)
    assert services.cache.hits > hits


async def test_writes_missed_during_outage_are_replayed(migrated, devstack) -> None:
    if devstack is None:
        pytest.skip("needs the embedded stack to stop Redis")
    cache = VersionedCache(migrated.redis)
    key = uuid.uuid4()
    try:
        await cache.put_many(PAYMENT, {key: (1, {"status": "PENDING"})}, 60)
        devstack.stop_redis()
        try:
            assert await cache.put_many(PAYMENT, {key: (2, {"status": "SUCCEEDED"})}, 60) == 0
        finally:
            devstack.start_redis()
        await asyncio.sleep(migrated.redis.retry_after_failure_s)
        assert await cache.flush_unwritten() == 0
        assert await cache.get_many(PAYMENT, [key], lambda d: d) == {key: {"status": "SUCCEEDED"}}
    finally:
        await cache.close()


async def test_replica_stopped_reads_fall_back_to_primary(client, make_partner, services,
                                                          devstack) -> None:
    if devstack is None:
        pytest.skip("needs the embedded stack to stop the replica")
    partner = await make_partner()
    account = await partner.account(balance="9.99")
    await services.cache.delete(f"account:{account}")
    devstack.stop_replica()
    try:
        body = await gql(client, "query($id: ID!) { account(id: $id) { balance } }",
                         {"id": account}, key=partner.key)
        assert body == {"data": {"account": {"balance": "9.99"}}}
    finally:
        devstack.start_replica()


async def test_list_shows_the_cached_status_when_the_replica_is_behind(
    client, make_partner, watcher, worker, devstack  # noqa: F811
) -> None:
    """A page read from a lagging replica still shows each payment at its newest known
    state: the status the caller was already shown by payment(id) never goes backwards."""
    import signal

    if devstack is None:
        pytest.skip("needs the embedded stack to pause the replica")
    partner = await make_partner()
    a, b = await partner.account(balance="20.00"), await partner.account(balance="1.00")
    worker.send_signal(signal.SIGSTOP)
    try:
        body = await gql(client, CREATE, payment_input(a, b, "2.00"), key=partner.key)
        payment_id = body["data"]["createPayment"]["id"]
        await wait_for_replay(partner.services.db)  # the replica has it, PENDING
        devstack.pause_replica_replay()
    finally:
        worker.send_signal(signal.SIGCONT)
    try:
        await watcher.terminal(payment_id)
        shown = await gql(client, "query($id: ID!) { payment(id: $id) { status } }",
                          {"id": payment_id}, key=partner.key)
        listed = await gql(client, "query($a: ID!) { payments(accountId: $a) { edges { node { "
                           "id status } } } }", {"a": a}, key=partner.key)
    finally:
        devstack.resume_replica_replay()
    assert shown["data"]["payment"]["status"] == "SUCCEEDED"
    assert listed["data"]["payments"]["edges"] == [
        {"node": {"id": payment_id, "status": "SUCCEEDED"}}]


async def test_read_your_writes_with_redis_down_and_the_replica_behind(
    client, make_partner, watcher, devstack  # noqa: F811
) -> None:
    """Without the cache there is nothing to tell a lagging replica's row from a current one,
    so reads go to the primary: a balance the caller's own payment changed is shown changed."""
    if devstack is None:
        pytest.skip("needs the embedded stack to stop Redis and pause the replica")
    partner = await make_partner()
    a, b = await partner.account(balance="20.00"), await partner.account(balance="1.00")
    query = ("query($p: ID!, $a: ID!, $b: ID!) { payment(id: $p) { status } "
             "a: account(id: $a) { balance } b: account(id: $b) { balance } "
             "payments(accountId: $a) { edges { node { id status } } } }")
    await wait_for_replay(partner.services.db)
    devstack.pause_replica_replay()
    try:
        devstack.stop_redis()
        try:
            body = await gql(client, CREATE, payment_input(a, b, "7.50"), key=partner.key)
            payment_id = body["data"]["createPayment"]["id"]
            await watcher.terminal(payment_id)
            shown = await gql(client, query, {"p": payment_id, "a": a, "b": b}, key=partner.key)
        finally:
            devstack.start_redis()
    finally:
        devstack.resume_replica_replay()
    assert shown["data"] == {
        "payment": {"status": "SUCCEEDED"}, "a": {"balance": "12.50"}, "b": {"balance": "8.50"},
        "payments": {"edges": [{"node": {"id": payment_id, "status": "SUCCEEDED"}}]},
    }


async def test_status_stream_caches_the_newest_version_whatever_the_batch_order(migrated) -> None:
    """One consumed batch can hold a payment's terminal event before its PENDING one (the
    API publishes PENDING without waiting; the worker may be quicker): the cache keeps the
    terminal state, for the payment and for both balances."""
    import dataclasses
    from datetime import UTC, datetime

    from paystream.cache import ACCOUNT, account_from, payment_from
    from paystream.domain.entities import AccountRow, PaymentRow
    from paystream.events.messages import PaymentStatusEvent
    from paystream.services.status_hub import StatusHub

    now = datetime.now(UTC)
    partner = uuid.uuid4()
    source = AccountRow(uuid.uuid4(), partner, "a", "USD", 1000, 1, now, now)
    destination = AccountRow(uuid.uuid4(), partner, "b", "USD", 0, 1, now, now)
    pending = PaymentRow(uuid.uuid4(), partner, "k", "h" * 64, source.id, destination.id, 250,
                         "USD", None, "PENDING", None, 1, now, now)
    done = dataclasses.replace(pending, status="SUCCEEDED", version=2)
    posted = [dataclasses.replace(source, balance_minor=750, version=2),
              dataclasses.replace(destination, balance_minor=250, version=2)]
    cache = VersionedCache(migrated.redis)
    try:
        await StatusHub(migrated, cache).apply([
            PaymentStatusEvent.of(done, *posted),
            PaymentStatusEvent.of(pending, source, destination, with_accounts=False)])
        payment = await cache.get_many(PAYMENT, [pending.id], payment_from)
        balances = await cache.get_many(ACCOUNT, [source.id, destination.id], account_from)
    finally:
        await cache.close()
    assert (payment[pending.id].status, payment[pending.id].version) == ("SUCCEEDED", 2)
    assert {a.balance_minor for a in balances.values()} == {750, 250}


async def test_the_status_stream_does_not_redo_the_cache_work_of_its_own_events(
        migrated) -> None:
    """A PENDING event this process published (StatusHub.expect) comes back with its cache
    work done: the hub writes nothing for it, decodes it only for a watch that wants it, and
    hands that watch the event as published. Any other record of the payment (other bytes)
    is applied as before."""
    import dataclasses
    from datetime import UTC, datetime

    from aiokafka.structs import ConsumerRecord

    from paystream.cache import payment_from
    from paystream.db.events import Recorded
    from paystream.domain.entities import AccountRow, PaymentRow
    from paystream.events.messages import PaymentStatusEvent
    from paystream.services.status_hub import StatusHub

    now = datetime.now(UTC)
    partner = uuid.uuid4()
    source = AccountRow(uuid.uuid4(), partner, "a", "USD", 1000, 1, now, now)
    destination = AccountRow(uuid.uuid4(), partner, "b", "USD", 0, 1, now, now)

    def published(status: str = "PENDING", version: int = 1) -> tuple[ConsumerRecord, Recorded]:
        row = PaymentRow(uuid.uuid4(), partner, "k", "h" * 64, source.id, destination.id, 250,
                         "USD", None, status, None, version, now, now)
        event = PaymentStatusEvent.of(row, source, destination, with_accounts=False)
        raw = event.encode_with_cursor(event.encode(), "cursor-1")
        record = ConsumerRecord(migrated.kafka.status_topic, 0, 7, 0, 0, str(row.id).encode(),
                                raw, None, 0, len(raw), [("traceparent", b"00-" + b"1" * 32
                                                          + b"-" + b"2" * 16 + b"-01")])
        return record, Recorded(event, raw, 1, "cursor-1")

    cache = VersionedCache(migrated.redis)
    hub = StatusHub(migrated, cache)
    try:
        unwatched, watched, foreign = published(), published(), published()
        hub.expect([(r.key, recorded) for r, recorded in (unwatched, watched)])
        hub.positioned.set()  # not consuming: the records are handed to it below
        watch = await hub.watch(payments=[watched[1].written.payment_id])
        # The foreign record names an expected payment, with other bytes: not ours.
        other = dataclasses.replace(foreign[0], value=foreign[0].value + b" ")
        hub.expect([(foreign[0].key, foreign[1])])
        events, written = hub.take([unwatched[0], watched[0], other])
        assert [e.payment_id for e in events] == [watched[1].written.payment_id,
                                                  foreign[1].written.payment_id]
        assert written == {0}
        assert events[0] == dataclasses.replace(watched[1].event, trace={
            "traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})
        await hub.apply(events, written=written)
        assert await watch.next() == events[0]
        cached = await cache.get_many(PAYMENT, [r.written.payment_id for _, r in (
            unwatched, watched, foreign)], payment_from)
        # Only the record that was not this process's own is written by the hub.
        assert set(cached) == {foreign[1].written.payment_id}
    finally:
        await cache.close()


async def test_replicas_are_trusted_again_only_once_they_replay_past_a_redis_outage(
    migrated, make_partner, devstack
) -> None:
    """Redis down: reads from the primary show a new balance. Redis back, empty, while the
    replica still lags: a miss must not fall to the replica and show the older balance; it
    does once the replica has replayed what the primary had when Redis came back."""
    if devstack is None:
        pytest.skip("needs the embedded stack to stop Redis and pause the replica")
    from paystream.db import Database

    partner = await make_partner()
    account = uuid.UUID(await partner.account(balance="5.00"))
    db, cache = Database(migrated.db), VersionedCache(migrated.redis)
    reader = Reader(db, cache, migrated)  # its own cache client: no status stream refills it
    balance = "SELECT balance_minor FROM accounts WHERE id = :id"
    try:
        await wait_for_replay(db)
        devstack.pause_replica_replay()
        try:
            async with db.write_session() as session:
                await fund(session, account, 200)  # 5.00 -> 7.00, a new version
            devstack.stop_redis()
            try:
                assert (await reader.accounts([account]))[account].balance_minor == 700
            finally:
                devstack.start_redis()
            while not cache.available:  # the breaker's pause
                await asyncio.sleep(0.05)
            async with db.replicas[0].connect() as replica:  # the replica is behind
                assert (await replica.execute(text(balance), {"id": account})).scalar() == 500
            # The write kept during the outage is replayed (a read would replay it first),
            # then dropped, as if it had expired: the next read misses.
            assert await cache.flush_unwritten() == 0
            await cache.delete(f"account:{account}")
            assert (await reader.accounts([account]))[account].balance_minor == 700
            assert reader.replicas_fenced  # that read went to the primary
        finally:
            devstack.resume_replica_replay()
        await wait_for_replay(db)
        reader.fence_check_interval_s = 0.0
        await cache.delete(f"account:{account}")
        assert (await reader.accounts([account]))[account].balance_minor == 700
        assert not reader.replicas_fenced  # caught up: replicas trusted again
    finally:
        await cache.close()
        await db.dispose()


async def test_writes_kept_during_an_outage_are_replayed_before_the_next_read(
    migrated, devstack
) -> None:
    """Redis paused: a write made while the breaker is open is kept, not sent. Once Redis
    answers, the next read is served after that write is replayed, never the older entry
    still in Redis (a balance went backwards that way after a pause)."""
    import os
    import signal

    if devstack is None:
        pytest.skip("needs the embedded stack to pause Redis")
    cache = VersionedCache(migrated.redis)
    key = uuid.uuid4()
    try:
        assert await cache.put_many(PAYMENT, {key: (1, {"status": "PENDING"})}, 60) == 1
        redis_pid = devstack.server_pids()["redis"]
        os.kill(redis_pid, signal.SIGSTOP)
        try:
            # A read on another key times out: the breaker opens.
            assert await cache.get_many(PAYMENT, [uuid.uuid4()], lambda d: d) == {}
            assert not cache.available
            assert await cache.put_many(PAYMENT, {key: (2, {"status": "SUCCEEDED"})}, 60) == 0
        finally:
            os.kill(redis_pid, signal.SIGCONT)
        while not cache.available:  # the breaker's pause
            await asyncio.sleep(0.05)
        assert await cache.get_many(PAYMENT, [key], lambda d: d) == {
            key: {"status": "SUCCEEDED"}}
    finally:
        await cache.close()


async def test_a_full_replay_buffer_still_keeps_newer_versions_of_the_keys_it_holds(
    migrated, devstack
) -> None:
    if devstack is None:
        pytest.skip("needs the embedded stack to stop Redis")
    cache = VersionedCache(migrated.redis)
    cache.max_unwritten = 2
    held, other, late = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    try:
        devstack.stop_redis()
        try:
            await cache.put_many(PAYMENT, {held: (1, {"status": "PENDING"}),
                                           other: (1, {"status": "PENDING"})}, 60)
            await cache.put_many(PAYMENT, {held: (2, {"status": "SUCCEEDED"}),
                                           late: (1, {"status": "PENDING"})}, 60)
        finally:
            devstack.start_redis()
        while not cache.available:
            await asyncio.sleep(0.05)
        assert cache.dropped == 1  # the key that came when the buffer was full
        assert await cache.flush_unwritten() == 0
        assert await cache.get_many(PAYMENT, [held, other, late], lambda d: d) == {
            held: {"status": "SUCCEEDED"}, other: {"status": "PENDING"}}
    finally:
        await cache.close()


async def test_a_redis_restart_between_commands_holds_reads_on_the_primary(
    migrated, make_partner, devstack
) -> None:
    """Redis restarted with no command in between: no error is seen (the client reconnects
    quietly), but the cache is empty. Its new run_id counts as an outage, so a miss is read
    on the primary, not on a replica still behind the balance the reader was shown."""
    if devstack is None:
        pytest.skip("needs the embedded stack to restart Redis and pause the replica")
    from paystream.cache import ACCOUNT
    from paystream.cache.entities import account_entry
    from paystream.db import Database
    from paystream.db.accounts import accounts_by_ids

    partner = await make_partner()
    account = uuid.UUID(await partner.account(balance="5.00"))
    db, cache = Database(migrated.db), VersionedCache(migrated.redis)
    reader = Reader(db, cache, migrated)
    try:
        await wait_for_replay(db)
        assert (await reader.accounts([account]))[account].balance_minor == 500
        devstack.pause_replica_replay()
        try:
            async with db.write_session() as session:
                await fund(session, account, 200)  # 5.00 -> 7.00 on the primary only
            rows = await db.read(lambda s: accounts_by_ids(s, [account]), primary=True)
            await cache.put_many(ACCOUNT, {account: account_entry(rows[account])}, 60)
            assert (await reader.accounts([account]))[account].balance_minor == 700
            failures = cache.failures
            devstack.stop_redis()
            devstack.start_redis()
            # Whether the first command after a restart fails depends on how many pooled
            # connections there are; with them closed here it never does, as when the client
            # has reconnected already.
            await cache.redis.connection_pool.disconnect()
            assert (await reader.accounts([account]))[account].balance_minor == 700
            assert cache.failures == failures + 1
            assert reader.replicas_fenced
        finally:
            devstack.resume_replica_replay()
    finally:
        await cache.close()
        await db.dispose()
