"""The webhook sender role: ``paystream webhooks`` (any number of processes; ``paystream
dev`` runs one). Its consumer schedules status events in PostgreSQL, its delivery loop
sends what is due; both run in one task group, so either one failing ends the process. With
``PAYSTREAM_METRICS__WEBHOOKS_PORT`` set it serves ``/metrics`` there, with the schedule's
backlog sampled beside them (:mod:`paystream.webhooks.backlog`)."""

from __future__ import annotations

import asyncio
import logging
import signal

from ..config import Settings
from ..db import Database
from ..events.kafka import ensure_topics_with_retry, start_with_retry
from ..metrics import serve_metrics
from .backlog import WebhookBacklogSampler
from .delivery import DeliveryLoop
from .ingest import Ingest
from .secrets import SecretBox, SecretsUnavailable
from .transport import WebhookClients
from .urls import Resolver, system_resolver

log = logging.getLogger("paystream.webhooks")


async def run_sender(settings: Settings, *, resolver: Resolver | None = None,
                     handle_signals: bool = False) -> None:
    """Run one sender until cancelled (or SIGTERM/SIGINT with ``handle_signals``).

    ``resolver`` replaces the system's DNS resolver (tests change what a name resolves to).
    Refuses to start without an encryption key for the endpoints' secrets."""
    # httpx logs every request's URL at INFO; partners put tokens in webhook URLs, so the
    # sender logs endpoint ids instead.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    box = SecretBox(settings.webhooks)
    if not box.configured:
        raise SecretsUnavailable("PAYSTREAM_WEBHOOKS__ENCRYPTION_KEY is not set: the sender "
                                 "cannot read the endpoints' signing secrets")
    resolve = resolver or system_resolver
    db = Database(settings.db)
    clients = WebhookClients(settings.webhooks, resolve, dev=settings.dev)
    delivery = DeliveryLoop(settings.webhooks, db, box, clients, resolve, dev=settings.dev)
    ingest = Ingest(settings, db, on_scheduled=delivery.wake)
    task = asyncio.current_task()
    if handle_signals and task is not None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
    metrics = settings.metrics
    sampler = WebhookBacklogSampler(settings) if metrics.webhooks_port else None
    server = None
    try:
        if sampler is not None:
            server, _ = serve_metrics(metrics.webhooks_host, metrics.webhooks_port)
            log.info("webhook sender metrics on %s:%d", metrics.webhooks_host,
                     server.server_port)
        log.info("webhook sender started")
        # Delivery does not wait for the consumer: joining the group can take a session
        # timeout (a member that died still holds partitions), and the schedule is due now.
        async with asyncio.TaskGroup() as group:
            group.create_task(delivery.run(), name="webhook-delivery")
            group.create_task(_consume(settings, ingest), name="webhook-ingest")
            if sampler is not None:
                group.create_task(sampler.sample_forever(metrics.sample_interval_s),
                                  name="webhook-backlog-sampler")
    except asyncio.CancelledError:
        log.info("webhook sender stopped after %d attempts", delivery.attempts)
        if not handle_signals:
            raise
    finally:
        await ingest.consumer.stop()
        await clients.aclose()
        await db.dispose()
        if sampler is not None:
            await sampler.close()
        if server is not None:
            server.shutdown()
            server.server_close()


async def _consume(settings: Settings, ingest: Ingest) -> None:
    await ensure_topics_with_retry(settings.kafka)
    await start_with_retry(ingest.consumer)
    log.info("webhook sender consuming %s as group %s", settings.kafka.status_topic,
             settings.webhooks.group)
    await ingest.run()


__all__ = ["run_sender"]
