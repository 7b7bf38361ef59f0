"""Fixtures for tests against the real stack: an HTTP client on the app, partners with fresh
accounts per test, a running worker, and a watcher of the status topic."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from paystream.config import Settings
from paystream.devstack import free_port
from paystream.services.admin import new_account, new_partner

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
async def client(services: object) -> AsyncIterator[httpx.AsyncClient]:
    from paystream.gateway.app import create_app

    app = create_app(services.settings, services)  # type: ignore[attr-defined]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


@dataclass
class Partner:
    """A partner made for one test, with its key and a way to open accounts."""

    name: str
    key: str
    services: object
    accounts: list[str] = field(default_factory=list)

    async def account(self, currency: str = "USD", balance: str = "100.00", name: str = "acct") -> str:
        account_id = await new_account(
            self.services.db, partner=self.name, name=name, currency=currency, balance=balance  # type: ignore[attr-defined]
        )
        self.accounts.append(str(account_id))
        return str(account_id)


@pytest.fixture
def make_partner(services: object):  # type: ignore[no-untyped-def]
    async def make(scopes: tuple[str, ...] = ("payments:read", "payments:write")) -> Partner:
        name = f"partner-{uuid.uuid4().hex[:12]}"
        key = await new_partner(services.db, name, scopes)  # type: ignore[attr-defined]
        return Partner(name=name, key=key, services=services)

    return make


async def gql(
    client: httpx.AsyncClient, query: str, variables: dict[str, object] | None = None,
    *, key: str | None = None,
) -> dict[str, object]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = await client.post("/graphql", json={"query": query, "variables": variables or {}},
                                 headers=headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


LOG_DIR = os.environ.get("PAYSTREAM_TEST_LOG_DIR") or tempfile.mkdtemp(prefix="paystream-logs-")


def start_worker(env: dict[str, str], **extra: str) -> subprocess.Popen[bytes]:
    """A ``paystream worker`` process; its JSON log goes to a file under LOG_DIR."""
    log_path = os.path.join(LOG_DIR, f"worker-{uuid.uuid4().hex[:8]}.log")
    with open(log_path, "wb") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "paystream.cli", "worker"],
            env={**env, **extra}, stdout=log_file, stderr=subprocess.STDOUT,
        )


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class ApiProcess:
    """A ``paystream api`` process on its own port."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/graphql"

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as log_file:
            return log_file.read()

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the process serves and its status stream is positioned (it would otherwise
        not see events published before that)."""
        deadline = asyncio.get_running_loop().time() + timeout
        async with httpx.AsyncClient(base_url=self.url, timeout=2.0) as http:
            while True:
                assert self.process.poll() is None, f"api exited:\n{self.log()}"
                try:
                    response = await http.get("/readyz")
                    if response.json()["checks"].get("status_stream"):
                        return
                except httpx.TransportError:
                    pass
                assert asyncio.get_running_loop().time() < deadline, f"api not ready:\n{self.log()}"
                await asyncio.sleep(0.05)


def start_api(env: dict[str, str], **extra: str) -> ApiProcess:
    """A ``paystream api`` process (one uvicorn worker); its log goes under LOG_DIR."""
    port = free_port()
    log_path = os.path.join(LOG_DIR, f"api-{port}.log")
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "paystream.cli", "api", "--port", str(port)],
            env={**env, **extra}, stdout=log_file, stderr=subprocess.STDOUT,
        )
    return ApiProcess(process, port, log_path)


# Session processes shared with other directories whose conftest imports these fixtures
# (tests/reliability): pytest would otherwise start a second API process and a second worker,
# and a test that stops "the" worker (SIGSTOP) would leave the other one posting.
_SHARED: dict[str, Any] = {}


@pytest.fixture(scope="session")
async def api(server_env: dict[str, str], migrated: Settings) -> AsyncIterator[ApiProcess]:
    """One API process for the session, for tests that need a real server (websockets)."""
    if "api" in _SHARED:  # defined again by tests/reliability/conftest.py: the same process
        yield _SHARED["api"]
        return
    process = start_api(server_env)
    try:
        await process.wait_ready()
        _SHARED["api"] = process
        yield process
    finally:
        _SHARED.pop("api", None)
        stop_process(process.process)


@pytest.fixture(scope="session")
def worker(server_env: dict[str, str], migrated: Settings) -> Iterator[subprocess.Popen[bytes]]:
    """One worker process for the session's default topics."""
    if "worker" in _SHARED:  # one worker, whichever directory's fixture asks first
        yield _SHARED["worker"]
        return
    process = start_worker(server_env)
    _SHARED["worker"] = process
    try:
        yield process
    finally:
        _SHARED.pop("worker", None)
        stop_process(process)


TERMINAL = ("SUCCEEDED", "FAILED", "CANCELED")


async def refused_within(ask: Any, within_s: float = 1.0) -> dict[str, Any]:
    """The first answer of ``ask()`` (a GraphQL body) that is UNAUTHENTICATED, asking every
    20 ms: a revocation reaches every API process's kept keys within a second (it is heard
    on its commit), not at the same instant. Fails past ``within_s``."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        body = await ask()
        errors = body.get("errors") or []
        if errors and errors[0]["extensions"]["code"] == "UNAUTHENTICATED":
            return dict(body)
        assert loop.time() - started < within_s, f"still served after {within_s} s: {body}"
        await asyncio.sleep(0.02)  # another process's (or task's) notification: polled


def flat_event(event: dict[str, Any]) -> dict[str, Any]:
    """A status event as the tests read it: the payment's snapshot's fields at the top (its
    ``id`` as ``payment_id``), and the accounts' balances after the posting as
    ``source_balance_minor`` and ``destination_balance_minor`` when the event has them."""
    payment = event["payment"]
    flat = {**event, **payment, "payment_id": payment["id"]}
    balances = {a["id"]: a["balance_minor"] for a in event.get("accounts") or ()}
    if balances:
        flat["source_balance_minor"] = balances[payment["source_account_id"]]
        flat["destination_balance_minor"] = balances[payment["destination_account_id"]]
    return flat


class StatusWatcher:
    """Follows ``payments.status`` from the end and lets a test await a payment's events."""

    def __init__(self, settings: Settings, topic: str | None = None) -> None:
        from paystream.events import make_consumer

        self.topic = topic or settings.kafka.status_topic
        self.consumer = make_consumer(settings.kafka, group_id=None)
        self.events: dict[str, list[dict[str, object]]] = {}
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        from aiokafka import TopicPartition

        from paystream.events.kafka import start_with_retry

        await start_with_retry(self.consumer)
        partitions = self.consumer.partitions_for_topic(self.topic)
        if not partitions:
            await self.consumer._client.force_metadata_update()
            partitions = self.consumer.partitions_for_topic(self.topic)
        assert partitions, f"topic {self.topic} does not exist"
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        self.consumer.assign(tps)
        await self.consumer.seek_to_end(*tps)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        import json

        async for record in self.consumer:
            event = flat_event(json.loads(record.value))
            async with self._changed:
                self.events.setdefault(event["payment_id"], []).append(event)
                self._changed.notify_all()

    async def terminal(self, payment_id: str, timeout: float = 30.0) -> dict[str, object]:
        """The first SUCCEEDED, FAILED or CANCELED event of the payment."""

        def found() -> dict[str, object] | None:
            for event in self.events.get(payment_id, []):
                if event["status"] in TERMINAL:
                    return event
            return None

        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: found() is not None)
        result = found()
        assert result is not None
        return result

    async def status(self, payment_id: str, status: str, timeout: float = 30.0
                     ) -> dict[str, object]:
        """The first event of the payment with ``status`` (e.g. AUTHORIZED)."""

        def found() -> dict[str, object] | None:
            return next((e for e in self.events.get(payment_id, []) if e["status"] == status),
                        None)

        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: found() is not None)
        result = found()
        assert result is not None
        return result

    async def refund(self, payment_id: str, refund_id: str, timeout: float = 30.0
                     ) -> dict[str, object]:
        """The event announcing the refund's outcome (SUCCEEDED or FAILED; the API's
        refund.pending event before it is passed over)."""

        def found() -> dict[str, object] | None:
            return next((e for e in self.events.get(payment_id, [])
                         if isinstance(e.get("refund"), dict)
                         and e["refund"]["id"] == refund_id  # type: ignore[index]
                         and e["refund"]["status"] != "PENDING"), None)  # type: ignore[index]

        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: found() is not None)
        result = found()
        assert result is not None
        return result

    def terminal_count(self, payment_ids: list[str]) -> int:
        return sum(
            1 for p in payment_ids
            if any(e["status"] in TERMINAL for e in self.events.get(p, []))
        )

    async def wait_count(self, payment_ids: list[str], *, at_least: int, timeout: float) -> None:
        """Until at least ``at_least`` of the payments have a terminal event."""
        await self.wait_until(lambda: self.terminal_count(payment_ids) >= at_least,
                              timeout=timeout)

    async def wait_until(self, predicate: Callable[[], bool], *, timeout: float) -> None:
        """Until ``predicate`` holds, checked again at each event that arrives."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(predicate)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.consumer.stop()


async def wait_for_replay(db: object, timeout: float = 10.0) -> None:
    """Wait until every replica has replayed everything committed on the primary so far."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    # The test stack commits asynchronously (synchronous_commit off): the WAL of recent commits
    # may not be written yet, so not streamed, and the insert position may end in a record
    # nobody flushes, which a replica never "reaches". A WAL message written with flush=true
    # flushes everything before it; its end is a target that is streamed.
    async with db.primary.connect() as primary:  # type: ignore[attr-defined]
        await primary.execute(text("SELECT pg_logical_emit_message(false, 'paystream', '', true)"))
        lsn = (await primary.execute(text("SELECT pg_current_wal_flush_lsn()::text"))).scalar()
        await primary.commit()
    target = wal_position(str(lsn))
    deadline = asyncio.get_running_loop().time() + timeout
    for engine in db.replicas:  # type: ignore[attr-defined]
        while True:
            try:
                async with engine.connect() as conn:
                    replayed = (await conn.execute(
                        text("SELECT pg_last_wal_replay_lsn()::text"))).scalar()
            except DBAPIError as exc:
                # A pooled connection closed by a replica restart (an earlier test's): SQLAlchemy
                # has invalidated the pool on it, so the next attempt connects afresh.
                if not exc.connection_invalidated:
                    raise
                continue
            if replayed is not None and wal_position(str(replayed)) >= target:
                break
            if asyncio.get_running_loop().time() > deadline:
                async with engine.connect() as conn:
                    state = (await conn.execute(text(
                        "SELECT pg_last_wal_receive_lsn()::text, pg_get_wal_replay_pause_state(),"
                        " (SELECT status FROM pg_stat_wal_receiver),"
                        " pg_last_xact_replay_timestamp()::text"))).one()
                raise AssertionError(f"replica did not catch up: replayed {replayed}, primary at "
                                     f"{lsn}; received, replay state, receiver, last replayed "
                                     f"commit: {tuple(state)}")
            await asyncio.sleep(0.01)


async def cache_settled(services: Any, timeout: float = 10.0) -> None:
    """Until the cache is back to normal after an earlier test's Redis outage or restart: its
    breaker closed, a lookup made (which notices a restart), and the replicas trusted again
    (until they replay past the outage reads go to the primary). Tests that count commands
    and statements, or cache hits, start from there."""
    from paystream.cache import ACCOUNT

    deadline = asyncio.get_running_loop().time() + timeout
    while not (services.cache.available
               and await services.cache.get_many(ACCOUNT, [uuid.uuid4()], dict) == {}
               and await services.reader.replicas_trusted()):
        assert asyncio.get_running_loop().time() < deadline, "the cache did not settle"
        await asyncio.sleep(0.05)


def wal_position(lsn: str) -> int:
    """A pg_lsn's text form ("16/B374D848") as a byte position."""
    high, low = lsn.split("/")
    return (int(high, 16) << 32) | int(low, 16)


async def own_topics(migrated: Settings, prefix: str, *, kafka: dict[str, Any] | None = None,
                     api: dict[str, Any] | None = None) -> Settings:
    """Settings with topics and a worker group of the test's own (created), ``kafka`` and
    ``api`` settings changed, and a relay whose sweep only takes rows an hour old: whatever
    marks an outbox row sent in such a test is the API's publisher or the worker's pipeline."""
    from paystream.events.kafka import ensure_topics

    suffix = uuid.uuid4().hex[:8]
    settings = migrated.model_copy(update={
        "kafka": migrated.kafka.model_copy(update={
            "requested_topic": f"{prefix}.requested.{suffix}",
            "status_topic": f"{prefix}.status.{suffix}", "dlq_topic": f"{prefix}.dlq.{suffix}",
            "worker_group": f"{prefix}-{suffix}", **(kafka or {})}),
        "api": migrated.api.model_copy(update=api or {}),
        "outbox": migrated.outbox.model_copy(update={"relay_min_age_s": 3600})})
    await ensure_topics(settings.kafka)
    return settings


async def pay(api: Any, partner: Any, source: str, destination: str) -> str:
    """Create a 1.00 USD payment through the service (no HTTP); returns its id."""
    from paystream.services.payments import CreatePayment

    caller = await api.auth.caller_for(f"Bearer {partner.key}")
    row = await api.payments.create(caller, CreatePayment(
        idempotency_key=uuid.uuid4().hex, source_account_id=source,
        destination_account_id=destination, amount="1.00", currency="USD"))
    return str(row.id)


async def outbox_sent(services: Any, topic: str, payment_id: str) -> bool:
    """Whether the payment's outbox rows on ``topic`` are all marked sent (at least one): a
    row of its own (a request) or a posting's row naming its status event in the feed."""
    from sqlalchemy import text

    async with services.db.primary.connect() as conn:
        return bool((await conn.execute(text(
            "SELECT bool_and(o.sent_at IS NOT NULL) FROM outbox o WHERE o.topic = :t"
            " AND (o.payload->>'payment_id' = :p OR EXISTS (SELECT 1 FROM events e"
            "      WHERE e.id = ANY(o.event_ids) AND e.payment_id::text = :p))"),
            {"t": topic, "p": payment_id})).scalar_one())


async def until(condition: Any, what: str, timeout: float = 20.0) -> None:
    """Poll ``condition()`` every 20 ms until it holds; fails with ``what`` past ``timeout``.
    For state that changes with no signal a test can await (a row marked sent)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.02)
