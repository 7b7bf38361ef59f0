"""Concurrent createPayment calls share commits (issue 16, services/acceptance.py): each is
still answered on its own, duplicates of one key make one payment, and a payment the database
refuses does not fail the others committed with it."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import Any

import pytest
from sqlalchemy import text

from paystream.domain.errors import BadUserInput, IdempotencyConflict
from paystream.services.acceptance import Acceptance, Draft
from paystream.services.payments import CreatePayment

from .conftest import StatusWatcher

pytestmark = pytest.mark.integration


@pytest.fixture
async def watcher(migrated: Any, worker: Any) -> Any:
    watcher = StatusWatcher(migrated)
    await watcher.start()
    yield watcher
    await watcher.stop()


def request(source: str, destination: str, key: str, amount: str = "1.00") -> CreatePayment:
    return CreatePayment(idempotency_key=key, source_account_id=source,
                         destination_account_id=destination, amount=amount, currency="USD")


async def transactions_of(services: Any, ids: list[uuid.UUID]) -> int:
    """How many transactions wrote these payments (a row's xmin is its inserting one)."""
    async with services.db.primary.connect() as conn:
        return int((await conn.execute(text(
            "SELECT count(DISTINCT xmin::text) FROM payments WHERE id = ANY(:ids)"),
            {"ids": ids})).scalar_one())


async def test_concurrent_payments_share_commits_and_each_gets_its_own(
        services: Any, make_partner: Any, watcher: Any) -> None:
    payer, payee = await make_partner(), await make_partner()
    source, destination = await payer.account(balance="100.00"), await payee.account(balance="0")
    caller = await services.auth.caller_for(f"Bearer {payer.key}")
    keys = [uuid.uuid4().hex for _ in range(50)]
    rows = await asyncio.gather(*(services.payments.create(caller, request(source, destination, k))
                                  for k in keys))
    assert [r.idempotency_key for r in rows] == keys
    assert len({r.id for r in rows}) == 50 and {r.status for r in rows} == {"PENDING"}
    # Without sharing, 50 transactions; with at most 2 commits at a time, a handful.
    assert await transactions_of(services, [r.id for r in rows]) <= 10
    # Every request is in the outbox and the feed once, and each payment settles.
    async with services.db.primary.connect() as conn:
        queued = (await conn.execute(text(
            "SELECT count(*) FROM outbox WHERE topic = :t AND payload->>'payment_id' = ANY(:ids)"),
            {"t": services.settings.kafka.requested_topic,
             "ids": [str(r.id) for r in rows]})).scalar_one()
        pending_events = (await conn.execute(text(
            "SELECT count(*) FROM events WHERE type = 'payment.pending' AND payment_id = ANY(:ids)"),
            {"ids": [r.id for r in rows]})).scalar_one()
    assert (queued, pending_events) == (50, 50)
    for row in rows:
        assert (await watcher.terminal(str(row.id)))["status"] == "SUCCEEDED"


async def test_one_key_twice_in_one_commit_is_one_payment_or_a_conflict(
        services: Any, make_partner: Any) -> None:
    payer, payee = await make_partner(), await make_partner()
    source, destination = await payer.account(balance="100.00"), await payee.account(balance="0")
    caller = await services.auth.caller_for(f"Bearer {payer.key}")
    same, other = uuid.uuid4().hex, uuid.uuid4().hex
    # Enough calls that the duplicates wait for one commit together.
    filler = [services.payments.create(caller, request(source, destination, uuid.uuid4().hex))
              for _ in range(10)]
    results = await asyncio.gather(
        *filler,
        services.payments.create(caller, request(source, destination, same)),
        services.payments.create(caller, request(source, destination, same)),
        services.payments.create(caller, request(source, destination, other, "1.00")),
        services.payments.create(caller, request(source, destination, other, "2.00")),
        return_exceptions=True)
    first, second, third, fourth = results[-4:]
    assert not isinstance(first, BaseException) and not isinstance(second, BaseException)
    assert first.id == second.id
    outcomes = [third, fourth]
    conflicts = [o for o in outcomes if isinstance(o, IdempotencyConflict)]
    accepted = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(conflicts) == 1 and len(accepted) == 1, outcomes
    async with services.db.primary.connect() as conn:
        counts = (await conn.execute(text(
            "SELECT idempotency_key, count(*) FROM payments WHERE idempotency_key = ANY(:k)"
            " GROUP BY idempotency_key"), {"k": [same, other]})).all()
    assert sorted(int(c[1]) for c in counts) == [1, 1]


async def test_a_payment_the_database_refuses_does_not_fail_the_others(
        services: Any, make_partner: Any) -> None:
    payer, payee = await make_partner(), await make_partner()
    source, destination = await payer.account(balance="100.00"), await payee.account(balance="0")
    caller = await services.auth.caller_for(f"Bearer {payer.key}")
    accounts = await services.reader.accounts([uuid.UUID(source), uuid.UUID(destination)])
    good = [await _draft(services, caller, source, destination) for _ in range(3)]
    # A draft naming an account that does not exist: the foreign key refuses it (the service
    # checks accounts first, so only a bug or a race could send one).
    bad = dataclasses.replace(good[0], row=dataclasses.replace(
        good[0].row, id=uuid.uuid4(), idempotency_key=uuid.uuid4().hex,
        destination_account_id=uuid.uuid4()))
    # One commit at a time: the first draft commits alone, the other three wait together.
    settings = services.settings.model_copy(update={
        "api": services.settings.api.model_copy(update={"accept_commits": 1})})
    acceptance = Acceptance(settings, services.db, services.reader, services.publisher)
    outcomes = await asyncio.gather(*(acceptance.accept(d) for d in [*good, bad]),
                                    return_exceptions=True)
    assert [o[1] for o in outcomes[:3] if isinstance(o, tuple)] == [True, True, True]
    assert isinstance(outcomes[3], Exception) and "foreign key" in str(outcomes[3])
    assert accounts  # the drafts' accounts were real


async def _draft(services: Any, caller: Any, source: str, destination: str) -> Draft:
    from datetime import UTC, datetime

    from paystream.services.payments import _draft as draft_of
    from paystream.services.payments import _parse

    parsed = _parse(request(source, destination, uuid.uuid4().hex))
    accounts = await services.reader.accounts([parsed.source_id, parsed.destination_id])
    return Draft(draft_of(caller, parsed, datetime.now(UTC)), accounts[parsed.source_id],
                 accounts[parsed.destination_id])


async def test_the_rows_answered_are_the_rows_the_primary_holds(
        services: Any, make_partner: Any) -> None:
    """The pending insert answers each created payment with its draft, not the row read back:
    so the draft must be, field for field, what the primary stored (metadata, a hold's ttl, a
    reference, the microseconds of its time), and a replay gets the stored row."""
    from datetime import UTC, datetime

    from paystream.db.payments import insert_pending_many, payments_by_ids
    from paystream.services.payments import _draft as draft_of
    from paystream.services.payments import _parse

    payer, payee = await make_partner(), await make_partner()
    source, destination = await payer.account(balance="100.00"), await payee.account(balance="0")
    caller = await services.auth.caller_for(f"Bearer {payer.key}")
    requests = [
        request(source, destination, uuid.uuid4().hex),
        dataclasses.replace(request(source, destination, uuid.uuid4().hex, amount="12.34"),
                            reference="invoice 9", capture=False, authorization_ttl_seconds=90,
                            metadata=[("order", "17"), ("tier", "gold")]),
    ]
    drafts = [draft_of(caller, _parse(r), datetime.now(UTC)) for r in requests]
    class RolledBack(Exception):
        """Leaves nothing behind: PENDING payments without requests are unsound ledgers."""

    with pytest.raises(RolledBack):
        async with services.db.write_session() as session:
            stored = await insert_pending_many(session, drafts)
            held = await payments_by_ids(session, [d.id for d in drafts])
            again = await insert_pending_many(session, [
                dataclasses.replace(d, id=uuid.uuid4()) for d in drafts])
            raise RolledBack
    for draft in drafts:
        assert stored[draft.partner_id, draft.idempotency_key] == (held[draft.id], True)
        assert again[draft.partner_id, draft.idempotency_key] == (held[draft.id], False)
    with pytest.raises(ValueError, match="PENDING drafts"):
        async with services.db.write_session() as session:
            await insert_pending_many(session, [dataclasses.replace(
                drafts[0], id=uuid.uuid4(), idempotency_key=uuid.uuid4().hex,
                status="SUCCEEDED")])


async def mget_calls(services: Any) -> int:
    """MGETs Redis has served so far (the reads of cached accounts and payments)."""
    stats = await services.limiter_redis.info("commandstats")
    return int(stats.get("cmdstat_mget", {}).get("calls", 0))


async def test_a_payments_accounts_are_checked_from_the_parties_this_process_keeps(
        services: Any, make_partner: Any, watcher: Any) -> None:
    """An account's owner and currency never change, so createPayment and createPayments
    read an account once per process, not once per payment; what they check is unchanged."""
    payer, payee = await make_partner(), await make_partner()
    source, destination = await payer.account(balance="100.00"), await payee.account(balance="0")
    euros = await payee.account(balance="0", currency="EUR")
    caller = await services.auth.caller_for(f"Bearer {payer.key}")
    before = await mget_calls(services)
    first = await services.payments.create(caller, request(source, destination, uuid.uuid4().hex))
    read = await mget_calls(services)
    assert read > before  # the accounts were unknown to this process: read through the cache
    later = [await services.payments.create(caller, request(source, destination, uuid.uuid4().hex))
             for _ in range(3)]
    answers = await services.payments.create_many(caller, [
        request(source, destination, uuid.uuid4().hex) for _ in range(2)])
    assert await mget_calls(services) == read  # no account read again
    assert all(r.status == "PENDING" for r in [first, *later, *answers])
    # The checks stand: a foreign source account is missing, a currency must match.
    stranger = await services.auth.caller_for(f"Bearer {payee.key}")
    with pytest.raises(BadUserInput, match="sourceAccountId: no such account"):
        await services.payments.create(stranger, request(source, destination, uuid.uuid4().hex))
    with pytest.raises(BadUserInput) as mismatch:
        await services.payments.create(caller, request(source, euros, uuid.uuid4().hex))
    assert mismatch.value.graphql_extensions()["reason"] == "CURRENCY_MISMATCH"
    for row in [first, *later, *answers]:
        assert (await watcher.terminal(str(row.id)))["status"] == "SUCCEEDED"
