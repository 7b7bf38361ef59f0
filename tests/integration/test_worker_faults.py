"""Faults the worker must wait out, and messages it must refuse, each on topics and a worker
of its own:

- a lock held on an account longer than the statement timeout: the payment waits (retried
  under the fault policy) and settles; nothing is dead-lettered;
- a message whose amount differs from its payment row: dead-lettered with that reason, and the
  payment is posted with the row's amount (the row is the source of truth);
- the API process SIGKILLed between the commit and the produce: the relay publishes the
  committed request and the payment settles, once.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import TopicPartition
from sqlalchemy import text

from paystream.config import Settings
from paystream.events import PaymentRequested, make_consumer, make_producer
from paystream.events.kafka import ensure_topics
from paystream.services.app import Services
from paystream.services.payments import CreatePayment

from .conftest import LOG_DIR, StatusWatcher, stop_process

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@dataclass
class Isolated:
    settings: Settings
    env: dict[str, str]
    log_path: Path
    watcher: StatusWatcher

    def start_worker(self, **extra: str) -> subprocess.Popen[bytes]:
        with open(self.log_path, "ab") as log_file:
            return subprocess.Popen([sys.executable, "-m", "paystream.cli", "worker"],
                                    env={**self.env, **extra}, stdout=log_file,
                                    stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def wait_in_log(self, needle: str, timeout: float = 60.0) -> None:
        """Until the worker logs ``needle``: the worker is another process and its log is the
        only signal it gives, so this polls the file, with a deadline."""
        deadline = asyncio.get_running_loop().time() + timeout
        while needle not in self.log():
            assert asyncio.get_running_loop().time() < deadline, f"{needle!r} not logged:\n{self.log()}"
            await asyncio.sleep(0.1)

    async def dead_letters(self) -> int:
        consumer = make_consumer(self.settings.kafka, group_id=None)
        await consumer.start()
        try:
            tp = TopicPartition(self.settings.kafka.dlq_topic, 0)
            return int((await consumer.end_offsets([tp]))[tp])
        finally:
            await consumer.stop()


@pytest.fixture
async def isolated(migrated: Settings, server_env: dict[str, str]) -> AsyncIterator[Isolated]:
    suffix = uuid.uuid4().hex[:8]
    topics = {"requested_topic": f"faults.requested.{suffix}",
              "status_topic": f"faults.status.{suffix}", "dlq_topic": f"faults.dlq.{suffix}",
              "worker_group": f"faults-{suffix}"}
    settings = migrated.model_copy(update={"kafka": migrated.kafka.model_copy(update=topics)})
    await ensure_topics(settings.kafka)
    env = {**server_env, **{f"PAYSTREAM_KAFKA__{k.upper()}": v for k, v in topics.items()}}
    watcher = StatusWatcher(settings)
    await watcher.start()
    try:
        yield Isolated(settings, env, Path(LOG_DIR) / f"faults-{suffix}.log", watcher)
    finally:
        await watcher.stop()


async def _balances(services: Any, *accounts: str) -> dict[str, int]:
    async with services.db.primary.connect() as conn:
        rows = await conn.execute(text(
            "SELECT id::text, balance_minor FROM accounts WHERE id = ANY(CAST(:ids AS uuid[]))"),
            {"ids": [uuid.UUID(a) for a in accounts]})
        return dict(rows.all())


async def test_lock_held_past_the_statement_timeout_waits_and_settles(
        isolated: Isolated, make_partner, services) -> None:
    api = Services.create(isolated.settings)
    await api.start()
    worker = isolated.start_worker(PAYSTREAM_DB__STATEMENT_TIMEOUT_MS="500")
    try:
        partner = await make_partner()
        source, destination = await partner.account(balance="10.00"), await partner.account("USD", "0")
        caller = await api.auth.caller_for(f"Bearer {partner.key}")
        async with services.db.primary.connect() as conn:
            # NO KEY UPDATE, like the worker's own lock: the API's insert (a foreign-key share
            # lock) passes, the worker's lock waits until its statement times out.
            await conn.execute(text("SELECT 1 FROM accounts WHERE id = :a FOR NO KEY UPDATE"),
                               {"a": uuid.UUID(source)})
            row = await api.payments.create(caller, CreatePayment(
                idempotency_key="locked", source_account_id=source,
                destination_account_id=destination, amount="4.00", currency="USD"))
            # The statement timed out (SQLSTATE 57014) and the batch is being retried.
            await isolated.wait_in_log("SQLSTATE 57014")
            await conn.rollback()
        event = await isolated.watcher.terminal(str(row.id), timeout=60)
        assert event["status"] == "SUCCEEDED"
        assert await _balances(services, source, destination) == {source: 600, destination: 400}
        assert await isolated.dead_letters() == 0
        assert worker.poll() is None
    finally:
        stop_process(worker)
        await api.close()


def _dead_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_message_disagreeing_with_its_row_is_dead_lettered(
        isolated: Isolated, make_partner, services) -> None:
    # An API that cannot reach the broker: its requests wait in the outbox for the relay.
    unreachable = isolated.settings.kafka.model_copy(
        update={"bootstrap_servers": f"127.0.0.1:{_dead_port()}"})
    api = Services.create(isolated.settings.model_copy(update={"kafka": unreachable}))
    partner = await make_partner()
    source, destination = await partner.account(balance="10.00"), await partner.account("USD", "0")
    try:
        caller = await api.auth.caller_for(f"Bearer {partner.key}")
        row = await api.payments.create(caller, CreatePayment(
            idempotency_key="tampered", source_account_id=source,
            destination_account_id=destination, amount="4.00", currency="USD"))
    finally:
        await api.close()
    # The same request with another amount, produced just before the real one (a copy of the
    # committed message, as the relay would produce it), so one batch holds both.
    async with services.db.primary.connect() as conn:
        payload = (await conn.execute(text(
            "SELECT payload::text FROM outbox WHERE payload->>'payment_id' = :p"),
            {"p": str(row.id)})).scalar()
    tampered = json.loads(payload)
    tampered["payment"]["amount_minor"] = 900
    assert PaymentRequested.decode(json.dumps(tampered).encode()).payment.amount_minor == 900
    producer = make_producer(isolated.settings.kafka)
    await producer.start()
    try:
        for message in (json.dumps(tampered), payload):
            await producer.send_and_wait(isolated.settings.kafka.requested_topic,
                                         message.encode(), key=source.encode())
    finally:
        await producer.stop()
    async with services.db.primary.begin() as conn:  # produced: the relay has nothing to do
        await conn.execute(text("UPDATE outbox SET sent_at = now() WHERE payload->>'payment_id' = :p"),
                           {"p": str(row.id)})

    dlq = make_consumer(isolated.settings.kafka, group_id=None)
    await dlq.start()
    dlq.assign([TopicPartition(isolated.settings.kafka.dlq_topic, 0)])
    worker = isolated.start_worker()
    try:
        letter = await asyncio.wait_for(dlq.getone(), 60)
        assert dict(letter.headers)["reason"] == b"message disagrees with its payment row: amount_minor"
        # The valid copy is posted all the same; the row's amount is what moves.
        event = await isolated.watcher.terminal(str(row.id), timeout=60)
        assert (event["status"], event["amount_minor"]) == ("SUCCEEDED", 400)
        assert await _balances(services, source, destination) == {source: 600, destination: 400}
        async with services.db.primary.connect() as conn:
            entries = sorted((await conn.execute(text(
                "SELECT amount_minor FROM ledger_entries WHERE payment_id = :p"),
                {"p": row.id})).scalars().all())
        assert entries == [-400, 400]
    finally:
        stop_process(worker)
        await dlq.stop()


async def test_api_killed_between_commit_and_produce_is_published_by_the_relay(
        isolated: Isolated, make_partner, services) -> None:
    partner = await make_partner()
    source, destination = await partner.account(balance="10.00"), await partner.account("USD", "0")
    port = _dead_port()
    # An API process whose broker never answers: it commits and answers, and is killed before
    # any produce could happen.
    # Opening a local file and forking are quick enough to do on the event loop here.
    with open(isolated.log_path, "ab") as log_file:  # noqa: ASYNC230
        api = subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, "-m", "paystream.cli", "api", "--port", str(port)],
            env={**isolated.env, "PAYSTREAM_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{_dead_port()}"},
            stdout=log_file, stderr=subprocess.STDOUT)
    worker = isolated.start_worker()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            deadline = asyncio.get_running_loop().time() + 30
            while True:  # until it serves; /healthz answers once uvicorn is up
                try:
                    if (await http.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert asyncio.get_running_loop().time() < deadline, isolated.log()
                await asyncio.sleep(0.05)
            response = await http.post("/graphql", headers={"Authorization": f"Bearer {partner.key}"},
                                       json={"query": "mutation($i: CreatePaymentInput!) {"
                                                      " createPayment(input: $i) { id status } }",
                                             "variables": {"i": {
                                                 "idempotencyKey": "killed", "sourceAccountId": source,
                                                 "destinationAccountId": destination,
                                                 "amount": "4.00", "currency": "USD"}}})
        answer = response.json()["data"]["createPayment"]
        assert answer["status"] == "PENDING"
        os.kill(api.pid, signal.SIGKILL)
        api.wait()
        event = await isolated.watcher.terminal(answer["id"], timeout=60)
        assert event["status"] == "SUCCEEDED"
        assert await _balances(services, source, destination) == {source: 600, destination: 400}
        async with services.db.primary.connect() as conn:
            entries = (await conn.execute(text(
                "SELECT count(*) FROM ledger_entries WHERE payment_id = :p"),
                {"p": uuid.UUID(answer["id"])})).scalar()
        assert entries == 2  # settled once
    finally:
        if api.poll() is None:
            api.kill()
            api.wait()
        stop_process(worker)
