"""Re-driving the dead-letter topic: ``paystream dlq redrive``.

The worker parks what it cannot post in ``payments.requested.dlq`` as a JSON envelope
``{"reason": ..., "original": ...}`` (reason also in a header). Once the cause is fixed (a
database that refused a request, a worker release that refused a valid message), the parked
requests are checked again with the worker's own decoding and validation: those that pass
are produced to ``payments.requested`` again (keyed by source account, acks=all), where the
worker posts them; a request already posted changes nothing, so re-driving twice is harmless.

Progress is kept by a consumer group of its own, committed after each dead letter is handled
(after the broker acknowledged its re-produced copy). A dead letter still refused is reported
and left in the topic; the group moves past it, so each run shows what arrived since the last
one, and ``from_beginning`` looks at the whole topic again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from ..config import KafkaSettings
from ..events import UndecodableMessage, make_consumer, make_producer
from ..events.kafka import start_with_retry
from ..events.messages import decode_requested
from .main import Message, validate_request


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One message of the dead-letter topic, examined again."""

    partition: int
    offset: int
    reason: str  # why the worker parked it
    payload: bytes  # the original message
    problem: str | None  # why it is still refused now; None when it passes
    request: Message | None  # a payment's request, a capture or cancel, or a refund
    redriven: bool = False

    @property
    def action(self) -> str:
        if self.problem is not None:
            return "kept"
        return "redriven" if self.redriven else "would redrive"

    def describe(self) -> str:
        line = f"{self.partition}:{self.offset}  {self.action:<13}  reason: {self.reason}"
        if self.request is not None:
            line += f"  payment {self.request.payment_id}"
        if self.problem is not None and self.problem != self.reason:
            line += f"  (still refused: {self.problem})"
        return line


@dataclass
class RedriveReport:
    examined: int = 0
    redriven: int = 0
    kept: int = 0


def redrive_group(settings: KafkaSettings) -> str:
    """The consumer group that remembers how far re-driving has come."""
    return f"{settings.worker_group}.dlq-redrive"


def examine(record: ConsumerRecord[bytes, bytes]) -> DeadLetter:
    """Unwrap a dead letter and check it as the worker would now."""
    headers = dict(record.headers or ())
    reason = headers.get("reason", b"").decode("utf-8", "replace") or "unknown"
    payload = record.value or b""
    try:
        envelope = json.loads(payload)
        if isinstance(envelope, dict) and isinstance(envelope.get("original"), str):
            payload = envelope["original"].encode()
            reason = str(envelope.get("reason") or reason)
    except (ValueError, UnicodeDecodeError):
        pass  # not an envelope: examine the bytes as they are
    try:
        request = decode_requested(payload)
        validate_request(request)
    except UndecodableMessage as exc:
        return DeadLetter(record.partition, record.offset, reason, payload, str(exc), None)
    return DeadLetter(record.partition, record.offset, reason, payload, None, request)


async def redrive(
    settings: KafkaSettings, *, dry_run: bool = False, limit: int | None = None,
    from_beginning: bool = False, on_letter: Callable[[DeadLetter], None] = lambda _: None,
    on_total: Callable[[int], None] = lambda _: None,
) -> RedriveReport:
    """Examine the dead letters the group has not handled yet, up to the topic's end as it is
    now (or ``limit`` letters), and re-produce those that pass. ``dry_run`` only lists: it
    produces and commits nothing. ``on_total`` hears once how many letters the run will
    examine at most (for a progress bar), ``on_letter`` each letter as it is handled."""
    report = RedriveReport()
    consumer = make_consumer(settings, group_id=redrive_group(settings))
    producer = None if dry_run else make_producer(settings)
    await start_with_retry(consumer)
    try:
        if producer is not None:
            await start_with_retry(producer)
        partitions = await _partitions(consumer, settings.dlq_topic)
        if not partitions:
            on_total(0)
            return report
        consumer.assign(partitions)
        if from_beginning:
            await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        waiting = sum([max(0, end[tp] - await consumer.position(tp)) for tp in partitions])
        on_total(waiting if limit is None else min(waiting, limit))
        while limit is None or report.examined < limit:
            remaining = [tp for tp in partitions if await consumer.position(tp) < end[tp]]
            if not remaining:
                break
            batches = await consumer.getmany(*remaining, timeout_ms=500)
            for tp, records in batches.items():
                for record in records:
                    if record.offset >= end[tp] or (limit is not None and report.examined >= limit):
                        # Fetched but not handled: put the position back on it.
                        consumer.seek(tp, record.offset)
                        break
                    letter = examine(record)
                    if letter.request is not None and producer is not None:
                        await producer.send_and_wait(
                            settings.requested_topic, letter.payload,
                            key=str(letter.request.source_account_id).encode(),
                            headers=[("redriven_from", f"{tp.partition}:{record.offset}".encode())],
                        )
                        letter = _redriven(letter)
                    if not dry_run:
                        await consumer.commit({tp: OffsetAndMetadata(record.offset + 1, "")})
                    report.examined += 1
                    report.redriven += letter.redriven
                    report.kept += letter.problem is not None
                    on_letter(letter)
        return report
    finally:
        await consumer.stop()
        if producer is not None:
            await producer.stop()


def _redriven(letter: DeadLetter) -> DeadLetter:
    return DeadLetter(letter.partition, letter.offset, letter.reason, letter.payload,
                      letter.problem, letter.request, redriven=True)


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    found = consumer.partitions_for_topic(topic)
    if not found:
        await consumer._client.force_metadata_update()  # no public way to refresh
        found = consumer.partitions_for_topic(topic)
    return [TopicPartition(topic, p) for p in sorted(found or ())]


__all__ = ["DeadLetter", "RedriveReport", "examine", "redrive", "redrive_group"]
