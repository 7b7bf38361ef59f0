"""Scenario 1: payments among 50 accounts (some overdrawing, some keys sent twice) created over
GraphQL while the worker is SIGKILLed three times and restarted. Afterwards every accepted
payment has exactly one terminal status, money is conserved, no balance was ever negative,
the ledger balances, every idempotency key maps to one payment, and the cache agrees with
the primary. 1,000 payments by default, 5,000 with PAYSTREAM_HEAVY=1.

tests/integration/test_worker_crash.py kills the worker once in a backlog created before it
started; here the kills land while the load is still arriving."""

from __future__ import annotations

import asyncio
import random
import signal
import uuid
from typing import Any

import pytest

from paystream.events.kafka import ensure_topics
from tests.integration._gateway import app_client

from .conftest import StatusWatcher, sized, start_worker, stop_process
from .invariants import (
    assert_cache_agrees,
    assert_ledger_sound,
    assert_one_payment_per_key,
    balances,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PAYMENTS = sized(1_000, 5_000)
ACCOUNTS = 50
KILLS = 3
LOAD_SECONDS = sized(75, 120)
CREATE = """mutation($input: CreatePaymentInput!) { createPayment(input: $input) { id status } }"""
NO_RATE_LIMIT = {"mutation_burst": 1_000_000, "mutation_rate_per_s": 1e6,
                 "query_burst": 1_000_000, "query_rate_per_s": 1e6}


def isolated_topics(migrated: Any, server_env: dict[str, str], name: str) -> tuple[Any, dict[str, str]]:
    """Settings and a worker environment on topics and a group of their own, so only the
    workers this test starts (and kills) post these payments."""
    suffix = uuid.uuid4().hex[:8]
    kafka = {"requested_topic": f"{name}.requested.{suffix}", "status_topic": f"{name}.status.{suffix}",
             "dlq_topic": f"{name}.dlq.{suffix}", "worker_group": f"{name}-{suffix}"}
    env = {**server_env, **{f"PAYSTREAM_KAFKA__{k.upper()}": v for k, v in kafka.items()}}
    return kafka, env


async def test_worker_sigkilled_three_times_under_load(migrated, server_env, make_partner,
                                                       services) -> None:
    kafka, env = isolated_topics(migrated, server_env, "kills")
    env["PAYSTREAM_KAFKA__WORKER_BATCH_SIZE"] = "50"  # many commits for a kill to land between
    rng = random.Random(8)
    partner = await make_partner()
    accounts = [await partner.account(balance=rng.choice(["0", "5.00", "50.00", "500.00"]))
                for _ in range(ACCOUNTS)]
    opening = await balances(services, accounts)
    async with app_client(migrated, kafka=kafka, limits=NO_RATE_LIMIT) as (http, app_services):
        await ensure_topics(app_services.settings.kafka)
        watcher = StatusWatcher(app_services.settings)
        await watcher.start()
        accepted: dict[str, str] = {}  # idempotency key -> payment id
        refused: list[Any] = []
        semaphore = asyncio.Semaphore(32)

        async def paced(n: int, request: tuple[str, str, str, str]) -> None:
            # Load, not synchronisation: the requests are spread over LOAD_SECONDS so that
            # the three kills and restarts land while they still arrive.
            await asyncio.sleep(n * LOAD_SECONDS / len(requests))
            await create(*request)

        async def create(key: str, source: str, destination: str, amount: str) -> None:
            variables = {"input": {"idempotencyKey": key, "sourceAccountId": source,
                                   "destinationAccountId": destination, "amount": amount,
                                   "currency": "USD"}}
            async with semaphore:
                response = await http.post("/graphql", json={"query": CREATE, "variables": variables},
                                           headers={"Authorization": f"Bearer {partner.key}"})
            body = response.json()
            if body.get("errors"):
                refused.append(body["errors"])
                return
            payment_id = body["data"]["createPayment"]["id"]
            # A key sent twice names one payment.
            assert accepted.setdefault(key, payment_id) == payment_id

        requests = []
        for i in range(PAYMENTS):
            source, destination = rng.sample(accounts, 2)
            request = (f"kill-{i}", source, destination, f"{rng.randint(1, 6000) / 100:.2f}")
            requests.append(request)
            if i % 10 == 0:
                requests.append(request)  # the same request again, concurrently

        worker = start_worker(env)
        before = 0  # payments accepted before this worker started
        try:
            load = asyncio.ensure_future(asyncio.gather(*(paced(n, r) for n, r in enumerate(requests))))
            for kill in range(1, KILLS + 1):
                # Each kill as soon as this worker posts: a terminal event of a payment accepted
                # after it started, which only it can have posted (an earlier one's event may be
                # the killed worker's, still on its way; and once all of an earlier set were
                # terminal, waiting for one more of that set never ended: seen in a full run).
                # A restarted worker waits for the group to drop the killed member (its session
                # timeout) before it gets the partitions, so each cycle takes a while; the load
                # outlasts all three.
                await watcher.wait_until(
                    lambda start=before: watcher.terminal_count(list(accepted.values())[start:]) > 0,
                    timeout=60)
                worker.send_signal(signal.SIGKILL)
                worker.wait()
                assert not load.done(), "the load finished before the kill: raise PAYMENTS"
                before = len(accepted)
                worker = start_worker(env)
            await load
            assert refused == []
            ids = list(accepted.values())
            await watcher.wait_count(ids, at_least=len(ids), timeout=sized(180, 600))
        finally:
            stop_process(worker)
            await watcher.stop()

        assert len(accepted) == PAYMENTS
        # Exactly one terminal status per payment, even when an event was published twice
        # (a batch posted again after a kill is skipped, but its events may be resent).
        for payment_id in ids:
            terminal = {e["status"] for e in watcher.events[payment_id]
                        if e["status"] in ("SUCCEEDED", "FAILED")}
            assert len(terminal) == 1, (payment_id, watcher.events[payment_id])
        statuses = await assert_ledger_sound(services, accounts, opening, ids)
        assert statuses.get("FAILED", 0) > 0 and statuses.get("SUCCEEDED", 0) > 0
        await assert_one_payment_per_key(services, partner.name, set(accepted))
        # A retry of any key now answers the same payment, in its terminal state.
        for key, source, destination, amount in rng.sample(requests, 20):
            await create(key, source, destination, amount)
        assert refused == []
        await assert_cache_agrees(services, app_services.cache, accounts, ids)
