"""The gateway around the schema: persisted queries, rate limits, readiness, metrics, request
ids, production mode, CORS and websocket origins."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from paystream.config import Settings
from paystream.logging import JsonFormatter
from paystream.services.app import Services

from ._gateway import app_client, changed
from .conftest import gql, wait_for_replay

pytestmark = pytest.mark.integration

ACCOUNT = "query {name}($id: ID!) {{ account(id: $id) {{ id name }} }}"


def apq(digest: str) -> dict[str, object]:
    return {"persistedQuery": {"version": 1, "sha256Hash": digest}}


async def test_persisted_query_round_trip_over_get(client, make_partner) -> None:
    partner = await make_partner()
    account = await partner.account(name="apq")
    query = ACCOUNT.format(name=f"Apq{uuid.uuid4().hex}")  # a hash no earlier run registered
    digest = hashlib.sha256(query.encode()).hexdigest()
    headers = {"Authorization": f"Bearer {partner.key}", "Accept": "application/json"}
    params = {"variables": json.dumps({"id": account}), "extensions": json.dumps(apq(digest))}

    missing = await client.get("/graphql", params=params, headers=headers)
    assert missing.status_code == 200
    assert missing.json() == {"data": None, "errors": [
        {"message": "PersistedQueryNotFound", "extensions": {"code": "PERSISTED_QUERY_NOT_FOUND"}}]}

    registered = await client.post("/graphql", headers=headers, json={
        "query": query, "variables": {"id": account}, "extensions": apq(digest)})
    assert registered.json() == {"data": {"account": {"id": account, "name": "apq"}}}

    hit = await client.get("/graphql", params=params, headers=headers)
    assert hit.status_code == 200
    assert hit.json() == {"data": {"account": {"id": account, "name": "apq"}}}


async def test_persisted_query_hash_mismatch_and_bad_version_are_refused(client, make_partner) -> None:
    partner = await make_partner()
    query = "{ __typename }"
    wrong = hashlib.sha256(b"something else").hexdigest()
    body = await gql_with(client, {"query": query, "extensions": apq(wrong)}, partner.key)
    assert body["data"] is None
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert "does not match" in body["errors"][0]["message"]
    right = hashlib.sha256(query.encode()).hexdigest()
    body = await gql_with(client, {"query": query, "extensions": {
        "persistedQuery": {"version": 2, "sha256Hash": right}}}, partner.key)
    assert body["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_SUPPORTED"


async def gql_with(client: httpx.AsyncClient, payload: dict[str, object], key: str) -> dict[str, object]:
    response = await client.post("/graphql", json=payload, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    return dict(response.json())


async def test_rate_limit_reached_and_recovered(settings, make_partner) -> None:
    # Two queries at once, refilled at 2 a second: the third query comes well within 500 ms of
    # the first, and recovery takes at most that long.
    limits = {"query_burst": 2, "query_rate_per_s": 2.0, "mutation_burst": 1,
              "mutation_rate_per_s": 0.01}
    async with app_client(settings, limits=limits) as (http, _):
        partner, other = await make_partner(), await make_partner()
        account = await partner.account()
        query = "query($id: ID!) { account(id: $id) { id } }"
        headers = {"Authorization": f"Bearer {partner.key}"}
        payload = {"query": query, "variables": {"id": account}}
        for _ in range(2):
            allowed = await http.post("/graphql", json=payload, headers=headers)
            assert allowed.json() == {"data": {"account": {"id": account}}}
        limited = await http.post("/graphql", json=payload, headers=headers)
        assert limited.status_code == 429
        error = limited.json()["errors"][0]
        assert error["extensions"]["code"] == "RATE_LIMITED"
        retry_after = error["extensions"]["retryAfter"]
        assert 0 < retry_after <= 0.5
        assert limited.headers["retry-after"] == "1"
        assert limited.json()["data"] is None

        # Another key has its own bucket; mutations have their own bucket too.
        assert (await gql(http, query, {"id": account}, key=other.key))["data"] == {"account": None}
        mutation = await gql(http, "mutation { createPayment(input: {idempotencyKey: \"k\", "
                             "sourceAccountId: \"x\", destinationAccountId: \"y\", amount: \"-1\", "
                             "currency: \"USD\"}) { id } }", key=partner.key)
        assert mutation["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
        again = await http.post("/graphql", json={"query": "mutation { createPayment(input: "
                                "{idempotencyKey: \"k\", sourceAccountId: \"x\", destinationAccountId:"
                                " \"y\", amount: \"-1\", currency: \"USD\"}) { id } }"}, headers=headers)
        assert again.status_code == 429

        # Recovered once the bucket refills: wait for the hint, a bounded number of times.
        for _ in range(20):
            await asyncio.sleep(retry_after)
            recovered = await http.post("/graphql", json=payload, headers=headers)
            if recovered.status_code == 200:
                break
            retry_after = recovered.json()["errors"][0]["extensions"]["retryAfter"]
        assert recovered.json() == {"data": {"account": {"id": account}}}


async def test_a_burst_cannot_open_the_limiter(settings) -> None:
    """300 requests of one key at once against a bucket of 50: exactly 50 go ahead. On the
    shared cache pool the burst needed more than its 100 connections, the 101st failed at
    once ("Too many connections"), the breaker opened and the limiter let the rest through."""
    from paystream.gateway.operations import OperationGate

    services = Services.create(changed(settings, limits={"query_burst": 50,
                                                         "query_rate_per_s": 0.01}))
    try:
        limiter = OperationGate(services).limiter
        key = f"key:{uuid.uuid4()}"
        waits = await asyncio.gather(*(limiter.retry_after("query", key) for _ in range(300)))
    finally:
        await services.close()
    assert sum(1 for w in waits if w is None) == 50


async def test_limits_hold_in_each_process_while_redis_is_down(settings, make_partner,
                                                               devstack) -> None:
    """Redis down: the limiter falls back to the same buckets in the process's memory
    instead of letting every request through."""
    if devstack is None:
        pytest.skip("needs the embedded stack to stop Redis")
    limits = {"query_burst": 3, "query_rate_per_s": 0.01}
    async with app_client(settings, limits=limits) as (http, _):
        partner = await make_partner()
        account = await partner.account()
        payload = {"query": "query($id: ID!) { account(id: $id) { id } }",
                   "variables": {"id": account}}
        headers = {"Authorization": f"Bearer {partner.key}"}
        devstack.stop_redis()
        try:
            codes = [(await http.post("/graphql", json=payload, headers=headers)).status_code
                     for _ in range(6)]
        finally:
            devstack.start_redis()
    assert codes == [200, 200, 200, 429, 429, 429]


async def test_redis_down_degrades_readiness_and_the_gateway(client, make_partner,
                                                               devstack) -> None:
    if devstack is None:
        pytest.skip("needs the embedded stack to stop Redis")
    partner = await make_partner()
    account = await partner.account(name="outage")
    await wait_ready(client)
    query = ACCOUNT.format(name=f"Outage{uuid.uuid4().hex}")
    digest = hashlib.sha256(query.encode()).hexdigest()
    devstack.stop_redis()
    try:
        # Still ready (the service survives Redis), and says what it is without.
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"]["redis"] is False
        assert ready.json()["checks"]["primary"] is True
        assert ready.json()["degraded"] == ["redis"]
        # Persisted queries degrade to "not found", the client sends the text, and it works;
        # rate limits hold in the process. No 5xx anywhere.
        params = {"variables": json.dumps({"id": account}), "extensions": json.dumps(apq(digest))}
        headers = {"Authorization": f"Bearer {partner.key}", "Accept": "application/json"}
        missing = await client.get("/graphql", params=params, headers=headers)
        assert missing.status_code == 200
        assert missing.json()["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_FOUND"
        full = await gql_with(client, {"query": query, "variables": {"id": account},
                                       "extensions": apq(digest)}, partner.key)
        assert full == {"data": {"account": {"id": account, "name": "outage"}}}
    finally:
        devstack.start_redis()
    await wait_ready(client)


async def wait_ready(client: httpx.AsyncClient, timeout: float = 15.0) -> dict[str, object]:
    """Until /readyz answers ready with nothing degraded."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        ready = await client.get("/readyz")
        if ready.status_code == 200 and not ready.json()["degraded"]:
            return dict(ready.json())
        assert asyncio.get_running_loop().time() < deadline, ready.json()
        await asyncio.sleep(0.1)


async def test_readiness_degrades_when_the_replica_stops(client, devstack) -> None:
    if devstack is None:
        pytest.skip("needs the embedded stack to stop the replica")
    assert (await wait_ready(client))["checks"]["replica0"] is True
    devstack.stop_replica()
    try:
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"]["replica0"] is False
        assert ready.json()["degraded"] == ["replica0"]
    finally:
        devstack.start_replica()
    await wait_ready(client)


async def test_not_ready_without_the_primary(settings) -> None:
    """The primary is what acceptance commits to: without it the process is not ready."""
    from paystream.devstack import free_port

    primary = settings.db.primary_url.rsplit("@", 1)
    dead = f"{primary[0]}@127.0.0.1:{free_port()}/{primary[1].split('/', 1)[1]}"
    async with app_client(settings, db={"primary_url": dead, "connect_timeout_s": 0.5}) as (
            http, _):
        ready = await http.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["primary"] is False
    assert ready.json()["ready"] is False


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus exposition text (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    prefix = f"{name}{{{wanted}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix):])
    return 0.0


async def test_metrics_expose_the_series_and_count_a_real_request(settings, make_partner) -> None:
    async with app_client(settings) as (http, _):
        partner = await make_partner()
        account = await partner.account()
        name = f"Metrics{uuid.uuid4().hex[:12]}"
        before = (await http.get("/metrics")).text
        body = await gql(http, ACCOUNT.format(name=name), {"id": account}, key=partner.key)
        assert body["data"]["account"]["id"] == account
        unauthenticated = await gql(http, ACCOUNT.format(name=name), {"id": account})
        assert unauthenticated["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
        response = await http.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        after = response.text
    for series, kind in (
        ("paystream_graphql_requests_total", "counter"),
        ("paystream_graphql_request_seconds", "histogram"),
        ("paystream_graphql_errors_total", "counter"),
        ("paystream_cache_lookups_total", "counter"),
        ("paystream_dataloader_batch_size", "histogram"),
        ("paystream_consumer_lag", "gauge"),
        ("paystream_open_subscriptions", "gauge"),
        ("paystream_rate_limited_total", "counter"),
        ("paystream_persisted_queries_total", "counter"),
    ):
        assert f"# TYPE {series} {kind}\n" in after, series
    labels = {"operation": name, "type": "query"}
    assert sample(after, "paystream_graphql_requests_total", **labels) == 2
    assert sample(after, "paystream_graphql_request_seconds_count", **labels) == 2
    assert (sample(after, "paystream_graphql_errors_total", code="UNAUTHENTICATED")
            == sample(before, "paystream_graphql_errors_total", code="UNAUTHENTICATED") + 1)
    assert (sample(after, "paystream_dataloader_batch_size_count", loader="account")
            > sample(before, "paystream_dataloader_batch_size_count", loader="account"))
    lookups = [sample(t, "paystream_cache_lookups_total", result=r)
               for t in (before, after) for r in ("hit", "miss")]
    assert lookups[2] + lookups[3] > lookups[0] + lookups[1]


async def test_metrics_count_accepted_payments_and_report_readiness(settings, make_partner) -> None:
    """The series the dashboard and the alerts read (deploy/): createPayment accepted, and
    readiness per check as of the scrape."""
    async with app_client(settings) as (http, services):
        partner = await make_partner()
        source, destination = await partner.account(), await partner.account()
        before = (await http.get("/metrics")).text
        payment = {"idempotencyKey": uuid.uuid4().hex, "sourceAccountId": source,
                   "destinationAccountId": destination, "amount": "1.00", "currency": "USD"}
        mutation = "mutation($input: CreatePaymentInput!) { createPayment(input: $input) { id } }"
        for _ in range(2):  # the retry with the same key is answered with the same payment
            created = await gql(http, mutation, {"input": payment}, key=partner.key)
            assert created["data"]["createPayment"]["id"]
        refused = await gql(http, mutation, {"input": {**payment, "amount": "-1"}},
                            key=partner.key)
        assert refused["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
        after = (await http.get("/metrics")).text
        # This app's status stream never starts (no lifespan under httpx's transport): a
        # failing check is exported as 0, not left out.
        positioned = services.hub.positioned.is_set()
    assert (sample(after, "paystream_payments_accepted_total")
            == sample(before, "paystream_payments_accepted_total") + 2)
    for check in ("primary", "redis", "kafka", "replica0"):
        assert sample(after, "paystream_ready", check=check) == 1.0, check
    assert f'paystream_ready{{check="status_stream"}} {float(positioned)}' in after


async def test_request_id_on_responses_errors_and_logs(settings) -> None:
    async with app_client(settings) as (http, _):
        given = await http.post("/graphql", json={"query": "{ account(id: \"x\") { id } }"},
                                headers={"X-Request-ID": "edge-42.a"})
        assert given.headers["x-request-id"] == "edge-42.a"
        assert given.json()["errors"][0]["extensions"]["requestId"] == "edge-42.a"
        for insane in ("has space", "x" * 65, "new\\nline"):
            made = await http.get("/healthz", headers={"X-Request-ID": insane})
            assert made.headers["x-request-id"] != insane
            assert len(made.headers["x-request-id"]) == 32
        assert (await http.get("/healthz")).headers["x-request-id"] != made.headers["x-request-id"]


async def test_production_mode_hides_introspection_graphiql_and_internals(settings,
                                                                          make_partner) -> None:
    partner = await make_partner()
    account = await partner.account()
    log_lines = io.StringIO()
    handler = logging.StreamHandler(log_lines)
    handler.setFormatter(JsonFormatter())
    logging.getLogger("paystream").addHandler(handler)
    try:
        async with app_client(settings, dev=False) as (http, services):
            introspection = await gql(http, "{ __schema { types { name } } }", key=partner.key)
            assert introspection.get("data") is None
            assert "introspection has been disabled" in introspection["errors"][0]["message"]
            page = await http.get("/graphql", headers={"Accept": "text/html"})
            assert page.status_code == 404
            # A corrupt cache entry makes the resolver fail unexpectedly.
            await services.cache.redis.set(f"account:{account}", b"7|{not json")
            try:
                broken = await http.post(
                    "/graphql", json={"query": "query($id: ID!) { account(id: $id) { name } }",
                                      "variables": {"id": account}},
                    headers={"Authorization": f"Bearer {partner.key}"})
            finally:
                await services.cache.delete(f"account:{account}")
    finally:
        logging.getLogger("paystream").removeHandler(handler)
    assert broken.status_code == 200
    error = broken.json()["errors"][0]
    request_id = broken.headers["x-request-id"]
    assert error == {"message": "internal error", "locations": error["locations"],
                     "path": ["account"], "extensions": {"code": "INTERNAL", "requestId": request_id}}
    for leak in ("Traceback", "JSON", "json", "Expecting", "line 1", "File "):
        assert leak not in broken.text
    logged = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    internal = [entry for entry in logged if entry["level"] == "error"]
    assert internal and internal[0]["request_id"] == request_id
    assert "JSONDecodeError" in internal[0]["exc"]


async def test_dev_mode_serves_graphiql_and_introspection(client, make_partner) -> None:
    page = await client.get("/graphql", headers={"Accept": "text/html"})
    assert page.status_code == 200 and "graphiql" in page.text.lower()
    body = await gql(client, "{ __schema { queryType { name } } }")
    assert body == {"data": {"__schema": {"queryType": {"name": "Query"}}}}


def test_production_settings_refuse_dev_only_values() -> None:
    servers = {"db": {"primary_url": "postgresql+asyncpg://h/db"}, "redis": {"url": "redis://h"},
               "kafka": {"bootstrap_servers": "h:9092"}}
    with pytest.raises(ValueError, match="PAYSTREAM_DB__PRIMARY_URL"):
        Settings(dev=False, db={"primary_url": ""}, redis={"url": "redis://h"},
                 kafka={"bootstrap_servers": "h:9092"})
    with pytest.raises(ValueError, match="may not contain '\\*' outside dev"):
        Settings(dev=False, api={"cors_origins": ["*"]}, **servers)
    with pytest.raises(ValueError, match="not an origin"):
        Settings(dev=False, api={"cors_origins": ["app.example.com"]}, **servers)
    assert Settings(dev=True, api={"cors_origins": ["*"]}, **servers).api.cors_origins == ["*"]


async def test_production_start_refuses_live_demo_keys(settings, services) -> None:
    from paystream.config import DEMO_PARTNER
    from paystream.db.partners import partner_id_by_name, revoke_api_key
    from paystream.gateway.production import UnsafeForProduction, check_production
    from paystream.services.admin import new_api_key, new_partner

    production = Services.create(changed(settings, dev=False))
    try:
        await check_production(production)  # the test database has no live demo key
        exists = await services.db.read(lambda s: partner_id_by_name(s, DEMO_PARTNER), primary=True)
        key = (await new_api_key(services.db, DEMO_PARTNER) if exists
               else await new_partner(services.db, DEMO_PARTNER))
        try:
            with pytest.raises(UnsafeForProduction, match="demo partner"):
                await check_production(production)
        finally:
            async with services.db.write_session() as session:
                assert await revoke_api_key(session, key)
        await check_production(production)
    finally:
        await production.close()


async def websocket_handshake(app: object, origin: str | None) -> dict[str, object]:
    """The app's first answer to a websocket handshake on /graphql (accept or close)."""
    headers = [(b"host", b"test"), (b"sec-websocket-protocol", b"graphql-transport-ws")]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    scope = {"type": "websocket", "asgi": {"version": "3.0"}, "path": "/graphql",
             "raw_path": b"/graphql", "root_path": "", "query_string": b"", "scheme": "ws",
             "headers": headers, "subprotocols": ["graphql-transport-ws"],
             "server": ("test", 80), "client": ("127.0.0.1", 50000), "state": {}}
    sent: asyncio.Queue[dict[str, object]] = asyncio.Queue()
    hang_up = asyncio.Event()
    connected = False

    async def receive() -> dict[str, object]:
        nonlocal connected
        if not connected:
            connected = True
            return {"type": "websocket.connect"}
        await hang_up.wait()
        return {"type": "websocket.disconnect", "code": 1000}

    async def send(message: dict[str, object]) -> None:
        await sent.put(message)

    task = asyncio.create_task(app(scope, receive, send))  # type: ignore[operator]
    try:
        return await asyncio.wait_for(sent.get(), 5)
    finally:
        hang_up.set()
        await asyncio.wait_for(task, 5)


async def test_cors_and_websocket_origins(settings) -> None:
    allowed = "https://app.example.com"
    async with app_client(settings, api={"cors_origins": [allowed]}) as (http, _):
        preflight = await http.options("/graphql", headers={
            "Origin": allowed, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == allowed
        refused = await http.options("/graphql", headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
        assert refused.status_code == 400
        simple = await http.get("/healthz", headers={"Origin": allowed})
        assert simple.headers["access-control-allow-origin"] == allowed
        assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()
        foreign = await http.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in foreign.headers

        app = http._transport.app  # type: ignore[attr-defined]
        for origin in (allowed, None):  # a listed origin; no Origin (not a browser)
            answer = await websocket_handshake(app, origin)
            assert answer["type"] == "websocket.accept", answer
            assert answer["subprotocol"] == "graphql-transport-ws"
        answer = await websocket_handshake(app, "https://evil.example")
        assert answer["type"] in ("websocket.close", "websocket.http.response.start"), answer


async def test_key_lookup_with_no_database_answering_is_unavailable_not_500(settings) -> None:
    from .conftest import free_port

    dead = f"postgresql+asyncpg://nobody@127.0.0.1:{free_port()}/none"
    async with app_client(settings, db={"primary_url": dead, "replica_urls": []}) as (http, _):
        response = await http.post("/graphql", json={"query": "{ account(id: \"x\") { id } }"},
                                   headers={"Authorization": "Bearer psk_anything"})
    assert response.status_code == 200
    assert [e["extensions"]["code"] for e in response.json()["errors"]] == ["UNAVAILABLE"]


async def test_client_waits_out_rate_limits_within_its_budget(settings, make_partner) -> None:
    """The typed client sends a RATE_LIMITED request again after the server's hint, and gives
    up with the RATE_LIMITED error once its waiting budget would be exceeded."""
    from paystream.client import GraphQLErrors, PaystreamClient

    # A token a second: a refill slower than any request on a loaded machine, so each query
    # after the first meets an empty bucket (at 5/s, a request slower than the 200 ms refill
    # found a token and was not limited: a flake seen in a full run).
    limits = {"query_burst": 1, "query_rate_per_s": 1.0}
    async with app_client(settings, limits=limits) as (http, _):
        partner, other = await make_partner(), await make_partner()
        account = await partner.account()
        query = "query($id: ID!) { account(id: $id) { id } }"
        patient = PaystreamClient("http://test", partner.key, transport=http._transport)
        async with patient:
            for _ in range(3):
                assert await patient.execute(query, {"id": account}) == {"account": {"id": account}}
            assert patient.rate_limited >= 2  # the bucket holds one: the others waited
        # A fresh bucket of one: the second query comes well within the 1 s refill.
        hasty = PaystreamClient("http://test", other.key, transport=http._transport,
                                max_rate_limit_wait=0.0)
        async with hasty:
            with pytest.raises(GraphQLErrors) as refused:
                for _ in range(2):
                    await hasty.execute(query, {"id": account})
            assert refused.value.codes == ["RATE_LIMITED"]
            assert hasty.rate_limited == 0


async def test_no_free_database_connection_answers_unavailable_at_once(settings, make_partner) -> None:
    """An overloaded process (every pooled connection busy) answers UNAVAILABLE after the pool
    timeout, for the key lookup and for a resolver alike, and serves again once one frees."""
    async with app_client(settings, db={"pool_size": 1, "max_overflow": 0,
                                        "pool_timeout_s": 0.2}) as (http, services):
        partner = await make_partner()
        account = await partner.account(balance="4.00")
        query = "query($id: ID!) { account(id: $id) { balance } }"

        async def while_held(primary: bool) -> dict[str, object]:
            """The request, sent while the pool it needs has its one connection checked out."""
            held, release = asyncio.Event(), asyncio.Event()

            async def hold(session: Any) -> None:
                await session.execute(text("SELECT 1"))
                held.set()
                await release.wait()

            holder = asyncio.create_task(services.db.read(hold, primary=primary))
            await held.wait()
            try:
                return await gql(http, query, {"id": account}, key=partner.key)
            finally:
                release.set()
                await holder

        for primary in (True, False):  # the key lookup's pool, then the replica's
            await services.cache.delete(f"account:{account}")
            busy = await while_held(primary)
            assert busy["data"] == {"account": None}
            assert [e["extensions"]["code"] for e in busy["errors"]] == ["UNAVAILABLE"]
            assert busy["errors"][0]["message"] == (
                "cannot check the API key now; retry" if primary else
                "the service is busy; retry shortly")
        assert await gql(http, query, {"id": account}, key=partner.key) == {
            "data": {"account": {"balance": "4.00"}}}


async def test_primary_unreachable_answers_unavailable_not_internal(settings, make_partner) -> None:
    """With the primary gone, reads keep working from the replica (the key lookup too) and
    createPayment answers UNAVAILABLE, a code the client retries on, recording nothing."""
    from paystream.devstack import free_port

    partner = await make_partner()
    source, destination = await partner.account(balance="5.00"), await partner.account()
    await wait_for_replay(partner.services.db)
    nowhere = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/paystream"
    async with app_client(settings, db={"primary_url": nowhere}) as (http, _):
        read = await gql(http, "query($id: ID!) { account(id: $id) { balance } }",
                         {"id": source}, key=partner.key)
        assert read == {"data": {"account": {"balance": "5.00"}}}
        created = await gql(http, "mutation($input: CreatePaymentInput!) { createPayment("
                            "input: $input) { id } }", {"input": {
                                "idempotencyKey": uuid.uuid4().hex, "sourceAccountId": source,
                                "destinationAccountId": destination, "amount": "1.00",
                                "currency": "USD"}}, key=partner.key)
        assert [e["extensions"]["code"] for e in created["errors"]] == ["UNAVAILABLE"]
        assert created["errors"][0]["message"] == "the database is unavailable; retry shortly"
