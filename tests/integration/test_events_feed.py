"""The events feed (``events(first, after)``) and ``accountActivity(after:)`` resumed from a
cursor, against the real API process, worker, PostgreSQL and broker."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from paystream.client import PAYMENT_FIELDS, GraphQLErrors, Subscriptions
from paystream.domain.feed import EventPosition, decode_event_cursor
from paystream.domain.webhooks import event_id

from .conftest import ApiProcess, Partner, StatusWatcher, gql

EVENTS = """
query($first: Int, $after: String) {
  events(first: $first, after: $after) {
    edges { cursor node { id cursor type createdAt
      payment { id status
                sourceAccount { id balance } destinationAccount { id balance } }
      refund { id } } }
    pageInfo { hasNextPage endCursor }
  }
}
"""
RESUMED_ACTIVITY = (
    "subscription($id: ID!, $after: String) { accountActivity(accountId: $id, after: $after)"
    f" {{ eventCursor {PAYMENT_FIELDS} }} }}"
)


@pytest.fixture
async def watcher(migrated, worker):  # type: ignore[no-untyped-def]
    watcher = StatusWatcher(migrated)
    await watcher.start()
    yield watcher
    await watcher.stop()


async def pay(client: httpx.AsyncClient, partner: Partner, source: str, destination: str,
              amount: str = "1.00") -> str:
    body = await gql(client, """
        mutation($input: CreatePaymentInput!) { createPayment(input: $input) { id } }""",
        {"input": {"idempotencyKey": uuid.uuid4().hex, "sourceAccountId": source,
                   "destinationAccountId": destination, "amount": amount, "currency": "USD"}},
        key=partner.key)
    assert "errors" not in body, body
    return str(body["data"]["createPayment"]["id"])  # type: ignore[index]


async def page(client: httpx.AsyncClient, partner: Partner, *, first: int = 20,
               after: str | None = None) -> dict[str, Any]:
    body = await gql(client, EVENTS, {"first": first, "after": after}, key=partner.key)
    assert "errors" not in body, body
    return dict(body["data"]["events"])  # type: ignore[index]


async def read_feed(client: httpx.AsyncClient, partner: Partner, *, after: str | None,
                    count: int, first: int = 2, timeout: float = 10.0
                    ) -> tuple[list[dict[str, Any]], str | None]:
    """Page through the feed from ``after`` until ``count`` events are listed; returns them and
    the cursor to resume from. The events are committed (the watcher saw them) but the feed
    lists a transaction's events only once every transaction that took its id before it has
    ended (the xmin rule), so a read may come a moment early: it is simply made again from the
    same cursor. Whatever is listed is checked never to come twice."""
    nodes: list[dict[str, Any]] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        listed = await page(client, partner, first=first, after=after)
        nodes += [edge["node"] for edge in listed["edges"]]
        assert [e["cursor"] for e in listed["edges"]] == [
            e["node"]["cursor"] for e in listed["edges"]]
        after = listed["pageInfo"]["endCursor"]
        assert len({n["id"] for n in nodes}) == len(nodes), "an event was listed twice"
        if len(nodes) >= count:
            assert len(nodes) == count, nodes
            return nodes, after
        if not listed["pageInfo"]["hasNextPage"]:
            assert asyncio.get_running_loop().time() < deadline, f"only {len(nodes)} of {count}"
            await asyncio.sleep(0.02)  # the horizon of running transactions, not a race


def position(cursor: str) -> EventPosition:
    found = decode_event_cursor(cursor)
    assert found is not None
    return found


async def test_feed_lists_events_oldest_first_and_pages_resume_exactly(
        client: httpx.AsyncClient, watcher: StatusWatcher, make_partner: Any) -> None:
    partner, payee = await make_partner(), await make_partner()
    source = await partner.account(balance="100.00")
    destination = await payee.account(balance="0")
    payments = []
    for _ in range(3):
        payments.append(await pay(client, partner, source, destination))
        await watcher.terminal(payments[-1])
    nodes, resume = await read_feed(client, partner, after=None, count=6)
    # One payment after the other: each one's PENDING, then its SUCCEEDED, oldest first.
    assert [(n["payment"]["id"], n["type"]) for n in nodes] == [
        (p, kind) for p in payments for kind in ("payment.pending", "payment.succeeded")]
    assert [position(n["cursor"]) for n in nodes] == sorted(position(n["cursor"]) for n in nodes)
    # The id is the webhook's Paystream-Event-Id; the cursor is the one the status event carried.
    terminal = await watcher.terminal(payments[0])
    assert nodes[1]["id"] == str(event_id(uuid.UUID(payments[0]), 2))
    assert nodes[1]["cursor"] == terminal["cursor"]
    # One page of everything lists the same events as pages of two.
    whole = await page(client, partner, first=100)
    assert [e["node"]["id"] for e in whole["edges"]] == [n["id"] for n in nodes]
    assert whole["pageInfo"] == {"hasNextPage": False, "endCursor": resume}
    # Resumed from the last cursor: only what happened since, nothing seen before.
    later = await pay(client, partner, source, destination)
    await watcher.terminal(later)
    more, _ = await read_feed(client, partner, after=resume, count=2)
    assert [(n["payment"]["id"], n["type"]) for n in more] == [
        (later, "payment.pending"), (later, "payment.succeeded")]
    # Nothing newer yet: an empty page that hands the same cursor back.
    empty = await page(client, partner, after=more[-1]["cursor"])
    assert empty == {"edges": [], "pageInfo": {"hasNextPage": False,
                                               "endCursor": more[-1]["cursor"]}}


async def test_a_counterparty_sees_no_balance_and_a_stranger_sees_nothing(
        client: httpx.AsyncClient, watcher: StatusWatcher, make_partner: Any) -> None:
    payer, payee, stranger = await make_partner(), await make_partner(), await make_partner()
    source = await payer.account(balance="100.00")
    destination = await payee.account(balance="0")
    payment = await pay(client, payer, source, destination, "10.00")
    await watcher.terminal(payment)
    payer_view, _ = await read_feed(client, payer, after=None, count=2)
    payee_view, _ = await read_feed(client, payee, after=None, count=2)
    assert [n["id"] for n in payer_view] == [n["id"] for n in payee_view]
    settled_for_payer, settled_for_payee = payer_view[1]["payment"], payee_view[1]["payment"]
    assert settled_for_payer["sourceAccount"] == {"id": source, "balance": "90.00"}
    assert settled_for_payer["destinationAccount"] == {"id": destination, "balance": None}
    assert settled_for_payee["sourceAccount"] == {"id": source, "balance": None}
    assert settled_for_payee["destinationAccount"] == {"id": destination, "balance": "10.00"}
    assert (await page(client, stranger, first=100))["edges"] == []
    assert (await page(client, stranger, after=payer_view[0]["cursor"]))["edges"] == []


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


BAD_CURSORS = ["not-a-cursor", "!!!", "", _b64(b"12:x"), _b64(b"0:1"), _b64(b"1:0"),
               _b64(b"12"), _b64(b"+1:2"), _b64(f"{1 << 63}:1".encode()), _b64(b"\xff\xfe"),
               # Another kind of cursor this API issues (a payment page's) is not an event's.
               _b64(f"2026-01-01T00:00:00+00:00|{uuid.uuid4()}".encode())]


async def test_a_bad_cursor_is_bad_user_input(
        client: httpx.AsyncClient, api: ApiProcess, make_partner: Any) -> None:
    partner = await make_partner()
    account = await partner.account()
    for cursor in BAD_CURSORS:
        body = await gql(client, EVENTS, {"after": cursor}, key=partner.key)
        assert body["data"] is None, cursor
        [error] = body["errors"]  # type: ignore[misc]
        assert error["extensions"]["code"] == "BAD_USER_INPUT", (cursor, error)
        assert error["extensions"]["field"] == "after"
    async with Subscriptions(api.ws_url, partner.key) as ws:
        for cursor in BAD_CURSORS[:3]:
            with pytest.raises(GraphQLErrors) as refused:
                async for _ in ws.subscribe(RESUMED_ACTIVITY, {"id": account, "after": cursor}):
                    pass
            assert refused.value.codes == ["BAD_USER_INPUT"]


async def collect_until(stream: AsyncIterator[dict[str, Any]], done: Any,
                        timeout: float = 60.0) -> list[dict[str, Any]]:
    updates: list[dict[str, Any]] = []

    async def run() -> None:
        async for data in stream:
            updates.append(data["accountActivity"])
            if done(updates):
                return

    await asyncio.wait_for(run(), timeout)
    return updates


async def test_account_activity_resumed_from_a_cursor_taken_before_50_payments_settled_sees_all_50_once_each(
        client: httpx.AsyncClient, api: ApiProcess, watcher: StatusWatcher,
        make_partner: Any) -> None:
    partner, payee = await make_partner(), await make_partner()
    source = await partner.account(balance="1000.00")
    destination = await payee.account(balance="0")
    probe = await pay(client, partner, source, destination)
    cursor = (await watcher.terminal(probe))["cursor"]
    assert isinstance(cursor, str)
    # No subscriber while these settle.
    past = [await pay(client, partner, source, destination) for _ in range(50)]
    await watcher.wait_count(past, at_least=50, timeout=60)
    live: list[str] = []

    def settled(updates: list[dict[str, Any]]) -> bool:
        done = {u["id"] for u in updates if u["status"] == "SUCCEEDED"}
        return len(live) == 3 and done >= {*past, *live}

    async with Subscriptions(api.ws_url, partner.key) as ws:
        stream = ws.results(await ws.start(RESUMED_ACTIVITY, {"id": source, "after": cursor}))
        # Made while the replay runs: the seam between the past and the live stream.
        live.extend([await pay(client, partner, source, destination) for _ in range(3)])
        updates = await collect_until(stream, settled)
    assert probe not in {u["id"] for u in updates}, "the cursor's own event came again"
    assert all(u["eventCursor"] for u in updates)
    statuses: dict[str, list[str]] = {}
    for update in updates:
        statuses.setdefault(update["id"], []).append(update["status"])
    assert set(statuses) == {*past, *live}
    # Each of the 50 exactly once per change, from the database, in the feed's order.
    assert all(statuses[p] == ["PENDING", "SUCCEEDED"] for p in past), statuses
    replayed = [position(u["eventCursor"]) for u in updates if u["id"] in set(past)]
    assert replayed == sorted(replayed) and len(set(replayed)) == 100
    # The live ones once each, in order (a PENDING published after the posting is dropped).
    assert all(statuses[p] in (["PENDING", "SUCCEEDED"], ["SUCCEEDED"]) for p in live), statuses
    # The payer's own account with its balance, the counterparty's without.
    assert all(u["sourceAccount"]["balance"] is not None for u in updates)
    assert all(u["destinationAccount"]["balance"] is None for u in updates)


async def test_events_older_than_the_retention_are_not_listed_and_the_relay_prunes_them(
        services: Any) -> None:
    """With a retention of 10 days, not the stack's 30: the stack's own relays prune at 30
    days every second and, sharing this database, deleted the old rows before this test's
    first count (seen in CI once the prune walked an index on created_at)."""
    from datetime import datetime

    from sqlalchemy import text

    from paystream.config import OutboxSettings
    from paystream.db.events import partner_page
    from paystream.domain.entities import PaymentRow
    from paystream.events.messages import PaymentStatusEvent
    from paystream.worker.outbox import OutboxRelay

    partner, payee = uuid.uuid4(), uuid.uuid4()
    KEEP = 10.0
    now = "2026-01-01T00:00:00+00:00"

    def payload(version: int) -> str:
        at = datetime.fromisoformat(now)
        payment = PaymentRow(
            id=uuid.uuid4(), partner_id=partner, idempotency_key="k", request_hash="h",
            source_account_id=uuid.uuid4(), destination_account_id=uuid.uuid4(),
            amount_minor=1, currency="USD", reference=None, status="SUCCEEDED",
            failure_reason=None, version=version, created_at=at, updated_at=at)
        return PaymentStatusEvent(payment_id=payment.id, payment=payment, source_partner_id=partner,
                                  destination_partner_id=payee).to_json_text()

    insert = text(
        "INSERT INTO events (created_at, type, payment_id, version, source_account_id,"
        " destination_account_id, source_partner_id, destination_partner_id, payload)"
        " VALUES (now() - make_interval(days => :age), 'payment.succeeded', gen_random_uuid(),"
        " 2, gen_random_uuid(), gen_random_uuid(), :partner, :payee, CAST(:payload AS jsonb))")
    async with services.db.write_session() as session:
        for age in (11, 11, 20, 1):
            await session.execute(insert, {"age": age, "partner": partner, "payee": payee,
                                           "payload": payload(2)})

    async def listed() -> int:
        """How many the feed lists (re-read while the horizon has not passed the insert)."""
        async def read(session: Any) -> int:
            return len(await partner_page(session, partner, after=None, limit=100,
                                          keep_days=KEEP))

        deadline = asyncio.get_running_loop().time() + 10
        while True:
            found = int(await services.db.read(read, primary=True))
            if found or asyncio.get_running_loop().time() > deadline:
                return found
            await asyncio.sleep(0.02)

    async def count() -> int:
        async with services.db.write_session() as session:
            return int((await session.execute(text(
                "SELECT count(*) FROM events WHERE source_partner_id = :p"),
                {"p": partner})).scalar_one())

    def relay(settings: OutboxSettings) -> OutboxRelay:
        return OutboxRelay(services.db, producer=None,  # type: ignore[arg-type]
                           topic="payments.status", requested_topic="payments.requested",
                           settings=settings)

    # What the stack's relays do every second, here at once: the default retention leaves them.
    await relay(OutboxSettings()).prune_events_once()
    # Past the retention they are gone from the feed at once, pruned or not.
    assert await listed() == 1 and await count() == 4
    pruning = relay(OutboxSettings(events_retention_days=KEEP, prune_batch=2))
    pruned = [await pruning.prune_events_once() for _ in range(3)]
    assert pruned[0] == 2 and pruned[-1] == 0 and sum(pruned) >= 3
    assert await count() == 1 and await listed() == 1


RECENT = """
query($id: ID!, $last: Int) { account(id: $id) { recentEvents(last: $last) { cursor type
  payment { id } } } }
"""


async def test_an_accounts_recent_events_are_its_latest_oldest_first(
        client: httpx.AsyncClient, watcher: StatusWatcher, make_partner: Any) -> None:
    partner, payee = await make_partner(), await make_partner()
    source, other = await partner.account(balance="100.00"), await partner.account()
    destination = await payee.account(balance="0")
    payments = []
    for target in (destination, destination, other):
        payments.append(await pay(client, partner, source, target))
        await watcher.terminal(payments[-1])
    everything, _ = await read_feed(client, partner, after=None, count=6)

    async def recent(account: str, last: int, key: str) -> list[dict[str, Any]]:
        body = await gql(client, RECENT, {"id": account, "last": last}, key=key)
        assert "errors" not in body, body
        return list(body["data"]["account"]["recentEvents"])  # type: ignore[index]

    latest = await recent(source, 3, partner.key)
    assert [e["cursor"] for e in latest] == [n["cursor"] for n in everything[-3:]]
    # Only the account's own: the last payment touched `other` as well, the first two did not.
    assert [e["cursor"] for e in await recent(other, 20, partner.key)] == [
        n["cursor"] for n in everything[-2:]]
    # Seen through a payment by its counterparty: nothing.
    seen = await gql(client, """query($id: ID!) { payment(id: $id) {
        sourceAccount { recentEvents { cursor } } } }""", {"id": payments[0]}, key=payee.key)
    assert seen["data"] == {"payment": {"sourceAccount": {"recentEvents": []}}}


async def test_bulk_payments_are_in_the_feed_from_their_acceptance(
        client: httpx.AsyncClient, watcher: StatusWatcher, make_partner: Any) -> None:
    """createPayments writes each accepted input's PENDING event in its transaction, as
    createPayment does: the feed lists both payments' PENDING and SUCCEEDED events."""
    partner, payee = await make_partner(), await make_partner()
    source = await partner.account(balance="100.00")
    destination = await payee.account(balance="0")
    body = await gql(client, """
        mutation($inputs: [CreatePaymentInput!]!) {
          createPayments(inputs: $inputs) { payment { id } error { code } } }""",
        {"inputs": [{"idempotencyKey": uuid.uuid4().hex, "sourceAccountId": source,
                     "destinationAccountId": destination, "amount": "1.00", "currency": "USD"}
                    for _ in range(2)]}, key=partner.key)
    assert "errors" not in body, body
    ids = [r["payment"]["id"] for r in body["data"]["createPayments"]]  # type: ignore[index]
    for payment_id in ids:
        await watcher.terminal(payment_id)
    nodes, _ = await read_feed(client, partner, after=None, count=4, first=10)
    assert sorted((n["payment"]["id"], n["type"]) for n in nodes) == sorted(
        (p, kind) for p in ids for kind in ("payment.pending", "payment.succeeded"))


async def test_recorded_events_columns_are_the_events_own_fields(services: Any) -> None:
    """The feed's columns (read back from each event's JSON by the insert) are the event's:
    a PENDING event without accounts, a SUCCEEDED one with them and a refund's, each at a
    time with microseconds and on its own payment; the cursors handed back name their rows."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import text

    from paystream.db.events import kind_of, record_encoded
    from paystream.db.refunds import RefundRow
    from paystream.domain.entities import AccountRow, PaymentRow
    from paystream.events.messages import PaymentStatusEvent

    payer, payee = uuid.uuid4(), uuid.uuid4()
    at = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)

    def payment(status: str, version: int, updated: datetime) -> PaymentRow:
        return PaymentRow(
            id=uuid.uuid4(), partner_id=payer, idempotency_key=uuid.uuid4().hex,
            request_hash="h", source_account_id=uuid.uuid4(),
            destination_account_id=uuid.uuid4(), amount_minor=250, currency="USD",
            reference=None, status=status, failure_reason=None, version=version,
            created_at=at, updated_at=updated)

    def account(row_id: uuid.UUID, owner: uuid.UUID) -> AccountRow:
        return AccountRow(id=row_id, partner_id=owner, name="a", currency="USD",
                          balance_minor=0, version=3, created_at=at, updated_at=at)

    pending = payment("PENDING", 1, at)
    settled = payment("SUCCEEDED", 2, at + timedelta(microseconds=1))
    refunded = payment("SUCCEEDED", 4, at + timedelta(seconds=1, microseconds=7))
    refund = RefundRow(id=uuid.uuid4(), partner_id=payer, idempotency_key="r", request_hash="h",
                       payment_id=refunded.id, amount_minor=100, reason=None,
                       status="PENDING", failure_reason=None, version=1, created_at=at,
                       updated_at=at)
    written = [
        PaymentStatusEvent(payment_id=pending.id, payment=pending, source_partner_id=payer,
                           destination_partner_id=payee),
        PaymentStatusEvent(payment_id=settled.id, payment=settled, source_partner_id=payer,
                           destination_partner_id=payee, accounts=(
                               account(settled.source_account_id, payer),
                               account(settled.destination_account_id, payee))),
        PaymentStatusEvent(payment_id=refunded.id, payment=refunded, source_partner_id=payer,
                           destination_partner_id=payee, refund=refund.to_json()),
    ]
    async with services.db.write_session() as session:
        recorded = await record_encoded(session, written)
    async with services.db.write_session() as session:
        rows = {r[0]: r for r in await session.execute(text(
            "SELECT id, created_at, type, payment_id, refund_id, version, source_account_id,"
            " destination_account_id, source_partner_id, destination_partner_id,"
            " payload::text FROM events WHERE id = ANY(:ids)"),
            {"ids": [r.id for r in recorded]})}
    assert len(rows) == 3
    for event, made in zip(written, recorded, strict=True):
        row = rows[made.id]
        assert tuple(row[1:10]) == (
            event.payment.updated_at, kind_of(event), event.payment_id,
            refund.id if event.refund else None, event.payment.version,
            event.payment.source_account_id, event.payment.destination_account_id,
            payer, payee)
        assert PaymentStatusEvent.decode(row[10]) == event
        assert position(made.cursor).id == made.id
    assert [kind_of(e) for e in written] == ["payment.pending", "payment.succeeded",
                                             "refund.pending"]
