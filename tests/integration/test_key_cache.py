"""API keys kept in each API process (issue 16): a request with a kept key makes no lookup,
and a revocation is pushed to every process on its commit (PostgreSQL LISTEN/NOTIFY), so it
is refused everywhere within a second; kept keys are never trusted while the listening
connection is down, nor after it comes back."""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

import httpx
import pytest

from paystream.db.notify import listen
from paystream.db.partners import KEYS_CHANNEL, revoke_api_key
from paystream.domain.errors import Unauthenticated
from paystream.services.auth import Authenticator

from .conftest import start_api, stop_process

pytestmark = pytest.mark.integration

ACCOUNT = "query($id: ID!) { account(id: $id) { id } }"


async def lookups(http: httpx.AsyncClient, source: str) -> float:
    text = (await http.get("/metrics")).text
    match = re.search(rf'^paystream_api_key_lookups_total{{source="{source}"}} (\S+)$', text,
                      re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def answer(http: httpx.AsyncClient, key: str, account: str) -> dict[str, Any]:
    response = await http.post("/graphql", json={"query": ACCOUNT, "variables": {"id": account}},
                               headers={"Authorization": f"Bearer {key}"})
    return dict(response.json())


async def until_refused(http: httpx.AsyncClient, key: str, account: str, *,
                        within_s: float) -> float:
    """Seconds until the key is refused, asking every 20 ms; fails past ``within_s``."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        body = await answer(http, key, account)
        if body.get("errors") and body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED":
            return loop.time() - started
        assert body["data"]["account"] == {"id": account}
        assert loop.time() - started < within_s, f"still served after {within_s} s"
        await asyncio.sleep(0.02)  # polling another process's state: no event to await


async def test_a_revocation_reaches_two_api_processes_within_a_second(
        server_env: dict[str, str], services: Any, make_partner: Any) -> None:
    partner = await make_partner()
    account = await partner.account()
    apis = [start_api(server_env), start_api(server_env)]
    try:
        await asyncio.gather(*(api.wait_ready() for api in apis))
        clients = [httpx.AsyncClient(base_url=api.url, timeout=5.0) for api in apis]
        try:
            for http in clients:
                assert (await answer(http, partner.key, account))["data"] == {
                    "account": {"id": account}}
                # The key is kept now: the next requests make no lookup.
                before = await lookups(http, "database"), await lookups(http, "cache")
                for _ in range(3):
                    assert (await answer(http, partner.key, account))["data"]["account"]
                assert await lookups(http, "database") == before[0]
                assert await lookups(http, "cache") == before[1] + 3
            async with services.db.write_session() as session:
                assert await revoke_api_key(session, partner.key)
            waited = await asyncio.gather(*(until_refused(http, partner.key, account,
                                                          within_s=1.0) for http in clients))
            assert all(w < 1.0 for w in waited), waited
        finally:
            for http in clients:
                await http.aclose()
    finally:
        for api in apis:
            stop_process(api.process)


async def test_kept_keys_are_dropped_when_the_listener_is_lost_and_when_it_is_back(
        migrated: Any, services: Any, make_partner: Any) -> None:
    """The listener's callbacks, driven here as the listener drives them: a revocation
    committed while it was not listening (no notification reaches anyone) must not be served
    from a key kept before."""
    auth = Authenticator(services.db, migrated.api, migrated.db.primary_url)
    partner = await make_partner()
    bearer = f"Bearer {partner.key}"
    auth._ready()
    await auth.caller_for(bearer)
    assert auth._kept(_hash(partner.key)) is not None
    auth._lost()
    assert auth._kept(_hash(partner.key)) is None  # not trusted while not listening
    await auth.caller_for(bearer)  # looked up, and not kept
    async with services.db.write_session() as session:
        assert await revoke_api_key(session, partner.key)
    auth._ready()
    with pytest.raises(Unauthenticated):
        await auth.caller_for(bearer)


async def test_a_lookup_under_way_when_a_revocation_is_heard_is_not_kept(
        migrated: Any, services: Any, make_partner: Any) -> None:
    auth = Authenticator(services.db, migrated.api, migrated.db.primary_url)
    partner = await make_partner()
    auth._ready()
    other = uuid.uuid4().hex
    original = auth._lookup

    async def lookup_then_hear(key_hash: str) -> Any:
        found = await original(key_hash)
        auth._revoked(other)  # any revocation: this lookup may have read before its commit
        return found

    auth._lookup = lookup_then_hear  # type: ignore[method-assign]  # the race, made to happen
    await auth.caller_for(f"Bearer {partner.key}")
    assert auth._kept(_hash(partner.key)) is None


async def test_the_listener_hears_a_committed_revocation_and_reconnects_after_a_kill(
        migrated: Any, services: Any, make_partner: Any) -> None:
    from sqlalchemy import text

    heard: asyncio.Queue[str] = asyncio.Queue()
    ready, lost = asyncio.Event(), asyncio.Event()
    name = f"paystream-test-{uuid.uuid4().hex[:8]}"
    task = asyncio.create_task(listen(
        migrated.db.primary_url, KEYS_CHANNEL, heard.put_nowait, on_ready=ready.set,
        on_lost=lost.set, ping_s=0.2, application_name=name))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        partner = await make_partner()
        async with services.db.write_session() as session:
            assert await revoke_api_key(session, partner.key)
        assert await asyncio.wait_for(heard.get(), 5) == _hash(partner.key)
        # A rolled-back revocation is never heard.
        second = await make_partner()
        async with services.db.primary.connect() as conn:
            transaction = await conn.begin()
            await conn.execute(text("SELECT pg_notify(:c, 'rolled-back')"), {"c": KEYS_CHANNEL})
            await transaction.rollback()
        async with services.db.write_session() as session:
            assert await revoke_api_key(session, second.key)
        assert await asyncio.wait_for(heard.get(), 5) == _hash(second.key)
        # The server ends the connection: lost, then listening again.
        ready.clear()
        async with services.db.primary.connect() as conn:
            await conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                    " WHERE application_name = :n"), {"n": name})
            await conn.commit()
        await asyncio.wait_for(lost.wait(), 5)
        await asyncio.wait_for(ready.wait(), 10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _hash(key: str) -> str:
    from paystream.db.partners import hash_key

    return hash_key(key)
