"""The status stream survives a bad event: an event with a malformed snapshot is skipped and
counted, and the events after it still reach subscribers and the cache. Against a
real ``paystream api`` process of its own (its counter counts only this test's events)."""

from __future__ import annotations

import asyncio
import copy
import json
import re
import uuid
from typing import Any

import httpx
import pytest

from paystream.client import ACCOUNT_ACTIVITY, PaystreamClient, Subscriptions
from paystream.events import make_producer
from paystream.events.kafka import start_with_retry

from .conftest import StatusWatcher, start_api, stop_process

pytestmark = pytest.mark.integration


async def dropped(url: str) -> float:
    async with httpx.AsyncClient(base_url=url) as http:
        text = (await http.get("/metrics")).text
    match = re.search(r"^paystream_status_events_dropped_total (\S+)$", text, re.MULTILINE)
    assert match, "paystream_status_events_dropped_total not exported"
    return float(match.group(1))


async def test_a_malformed_event_is_skipped_and_the_stream_goes_on(
    server_env: dict[str, str], settings: Any, services: Any, worker: Any, make_partner: Any,
) -> None:
    api = start_api(server_env)
    watcher = StatusWatcher(settings)
    producer = make_producer(settings.kafka)
    partner = await make_partner()
    source, destination = await partner.account(), await partner.account()
    try:
        await api.wait_ready()
        await watcher.start()
        await start_with_retry(producer)
        async with PaystreamClient(api.url, partner.key) as http:
            real = await http.create_payment(
                idempotency_key=uuid.uuid4().hex, source_account_id=source,
                destination_account_id=destination, amount="1.00", currency="USD")
        template = await watcher.terminal(real["id"])
        before = await dropped(api.url)

        # Copies of the real terminal event under fresh payment ids, so that only this
        # process's status stream can put them in the cache or in front of the subscriber.
        bad, good = copy.deepcopy(template), copy.deepcopy(template)
        bad["payment_id"] = bad["payment"]["id"] = str(uuid.uuid4())
        bad["accounts"][0]["id"] = "not-a-uuid"  # a malformed snapshot: undecodable
        good_id = str(uuid.uuid4())
        good["payment_id"] = good["payment"]["id"] = good_id

        async with Subscriptions(api.ws_url, partner.key) as ws:
            op = await ws.start(ACCOUNT_ACTIVITY, {"id": source})
            # One key: one partition, so the bad event is consumed before (or with) the good one.
            for event in (bad, good):
                await producer.send_and_wait(settings.kafka.status_topic,
                                             json.dumps(event).encode(), key=b"same-partition")

            async def until_good() -> dict[str, Any]:
                async for data in ws.results(op):
                    if data["accountActivity"]["id"] == good_id:
                        return dict(data["accountActivity"])
                raise AssertionError("subscription ended")

            update = await asyncio.wait_for(until_good(), 15)
        assert update["status"] == template["status"]
        cached = await services.cache.redis.get(f"payment:{good_id}")
        assert cached is not None, "the good event did not reach the cache"
        assert await dropped(api.url) == before + 1
        assert "status event skipped: undecodable: accounts.0.id" in api.log()
    finally:
        await producer.stop()
        await watcher.stop()
        stop_process(api.process)
