"""Re-driving the dead-letter topic (``paystream dlq redrive``): a request the database once
refused with a data error is parked alone (the good requests around it are posted) and posted
after re-driving; a poison message is reported with its reason and stays.

A worker of its own on topics of their own, so the session's dead letters do not mix in."""

from __future__ import annotations

import asyncio
import sys
import uuid

import pytest
from aiokafka import TopicPartition
from sqlalchemy import text

from paystream.events import make_consumer, make_producer
from paystream.events.kafka import ensure_topics
from paystream.services.app import Services
from paystream.services.payments import CreatePayment
from paystream.worker.redrive import DeadLetter, redrive

from .conftest import StatusWatcher, start_worker, stop_process, wait_for_replay

pytestmark = pytest.mark.integration


async def _end_offset(settings, topic: str) -> int:  # type: ignore[no-untyped-def]
    consumer = make_consumer(settings, group_id=None)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        return int((await consumer.end_offsets([tp]))[tp])
    finally:
        await consumer.stop()


async def test_redrive_posts_what_now_passes_and_keeps_poison(
    migrated, server_env, make_partner, tmp_path
) -> None:
    suffix = uuid.uuid4().hex[:8]
    kafka = migrated.kafka.model_copy(update={
        "requested_topic": f"redrive.requested.{suffix}", "status_topic": f"redrive.status.{suffix}",
        "dlq_topic": f"redrive.dlq.{suffix}", "worker_group": f"redrive-{suffix}",
        "partitions": 1,
    })
    settings = migrated.model_copy(update={"kafka": kafka})
    await ensure_topics(kafka)
    env = {**server_env, "PAYSTREAM_KAFKA__REQUESTED_TOPIC": kafka.requested_topic,
           "PAYSTREAM_KAFKA__STATUS_TOPIC": kafka.status_topic,
           "PAYSTREAM_KAFKA__DLQ_TOPIC": kafka.dlq_topic,
           "PAYSTREAM_KAFKA__WORKER_GROUP": kafka.worker_group}

    services = Services.create(settings)
    await services.start()
    watcher = StatusWatcher(settings)
    dead_letters = make_consumer(kafka, group_id=None)
    producer = make_producer(kafka)
    worker = start_worker(env)
    await watcher.start()
    await dead_letters.start()
    await producer.start()
    try:
        dead_letters.assign([TopicPartition(kafka.dlq_topic, 0)])
        partner = await make_partner()
        partner.services = services
        source, destination = await partner.account(balance="10.00"), await partner.account(balance="0")
        caller = await services.auth.caller_for(f"Bearer {partner.key}")

        # 1. The database refuses one request with a data error (a check violation, SQLSTATE
        # 23514, raised by a trigger on that one payment): it is dead-lettered alone, and the
        # requests around it, in the same batches, are posted.
        bad_key = f"redrive-{suffix}"
        trigger = f"refuse_{suffix}"
        async with services.db.primary.begin() as conn:
            await conn.execute(text(
                f"CREATE FUNCTION {trigger}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                " RAISE EXCEPTION 'refused for the test' USING ERRCODE = 'check_violation';"
                " END $$"))
            await conn.execute(text(
                f"CREATE TRIGGER {trigger} BEFORE UPDATE ON payments FOR EACH ROW"
                f" WHEN (NEW.idempotency_key = '{bad_key}') EXECUTE FUNCTION {trigger}()"))
        try:
            good = [CreatePayment(idempotency_key=f"good-{n}", source_account_id=source,
                                  destination_account_id=destination, amount="0.10",
                                  currency="USD") for n in range(6)]
            rows = await asyncio.gather(*(services.payments.create(caller, r) for r in good[:3]))
            row = await services.payments.create(caller, CreatePayment(
                idempotency_key=bad_key, source_account_id=source,
                destination_account_id=destination, amount="4.00", currency="USD"))
            rows += await asyncio.gather(*(services.payments.create(caller, r) for r in good[3:]))
            refused = await asyncio.wait_for(dead_letters.getone(), 60)
            for good_row in rows:
                assert (await watcher.terminal(str(good_row.id)))["status"] == "SUCCEEDED"
        finally:
            async with services.db.primary.begin() as conn:
                await conn.execute(text(f"DROP TRIGGER {trigger} ON payments"))
                await conn.execute(text(f"DROP FUNCTION {trigger}()"))
            # The trigger's DDL took payments' strongest lock: let the replica replay it now,
            # not in the middle of a later test that pauses and resumes replay.
            await wait_for_replay(services.db)
        reason = dict(refused.headers)["reason"]
        assert reason.startswith(b"database refused") and b"SQLSTATE 23514" in reason, reason
        # 2. A poison message: undecodable now and forever.
        await producer.send_and_wait(kafka.requested_topic, b"\xff not json", key=b"poison")
        poison = await asyncio.wait_for(dead_letters.getone(), 60)
        assert dict(poison.headers)["reason"].startswith(b"not JSON")

        # A dry run lists both with their reasons, and produces and commits nothing.
        requested_end = await _end_offset(kafka, kafka.requested_topic)
        listed: list[DeadLetter] = []
        totals: list[int] = []  # what a progress bar is told to expect
        report = await redrive(kafka, dry_run=True, on_letter=listed.append,
                               on_total=totals.append)
        assert (report.examined, report.redriven, report.kept) == (2, 0, 1)
        assert totals == [2]
        assert [(d.offset, d.action) for d in listed] == [(refused.offset, "would redrive"),
                                                          (poison.offset, "kept")]
        assert listed[0].reason.startswith("database refused")
        assert listed[0].request is not None and listed[0].request.payment_id == row.id
        assert listed[1].reason.startswith("not JSON") and listed[1].request is None
        assert await _end_offset(kafka, kafka.requested_topic) == requested_end

        # The command line prints the same, reason included; piped, nothing but those lines
        # (no progress bar).
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "paystream.cli", "dlq", "redrive", "--dry-run",
            env=env, cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(cli.communicate(), 60)
        assert cli.returncode == 0, err.decode()
        lines = out.decode().splitlines()
        assert f"payment {row.id}" in lines[0] and "would redrive" in lines[0]
        assert "kept" in lines[1] and "reason: not JSON" in lines[1]
        assert lines[-1] == "examined 2, would redrive 1, still refused 1"
        assert len(lines) == 3 and "\x1b" not in out.decode()

        # The real run re-produces the refused request; the worker now posts it.
        report = await redrive(kafka)
        assert (report.examined, report.redriven, report.kept) == (2, 1, 1)
        event = await watcher.terminal(str(row.id), timeout=60)
        assert event["status"] == "SUCCEEDED"
        async with services.db.primary.connect() as conn:
            balances = dict((await conn.execute(text(
                "SELECT id::text, balance_minor FROM accounts WHERE id = ANY(CAST(:ids AS uuid[]))"),
                {"ids": [uuid.UUID(source), uuid.UUID(destination)]})).all())
        assert balances == {source: 600 - 60, destination: 400 + 60}

        # Progress is kept: a second run finds nothing new; the poison is still in the topic.
        totals.clear()
        assert (await redrive(kafka, on_total=totals.append)).examined == 0
        assert totals == [0]
        again: list[DeadLetter] = []
        await redrive(kafka, dry_run=True, from_beginning=True, on_letter=again.append)
        assert [d.offset for d in again if d.problem] == [poison.offset]
    finally:
        stop_process(worker)
        await producer.stop()
        await dead_letters.stop()
        await watcher.stop()
        await services.close()
