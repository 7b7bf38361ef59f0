"""``paystream dev``: the whole service on embedded real servers, in one process tree."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import cast

import click

from . import heap, tracing
from .config import DEMO_PARTNER, Settings
from .db import Database
from .db.outbox import requeue_pending
from .logging import configure_logging

log = logging.getLogger("paystream.dev")

MAX_RESTARTS = 5
RESTART_WINDOW_S = 60

DEMO_ACCOUNTS = (("Demo USD operating", "USD", "10000.00"), ("Demo USD reserve", "USD", "2500.00"),
                 ("Demo EUR operating", "EUR", "5000.00"), ("Demo JPY operating", "JPY", "1000000"))


async def _seed(db: Database, root: Path) -> dict[str, object]:
    """Create the demo partner, key and accounts once; later starts reuse them.

    The demo key is kept in clear in ``.paystream/demo.json`` so a restart can print it again:
    dev only, and production settings refuse to start in dev mode.
    """
    from .services.admin import new_account, new_partner

    seed_file = root / "demo.json"
    if seed_file.exists():
        return dict(json.loads(seed_file.read_text()))
    key = await new_partner(db, DEMO_PARTNER)
    accounts = []
    for name, currency, balance in DEMO_ACCOUNTS:
        account_id = await new_account(
            db, partner=DEMO_PARTNER, name=name, currency=currency, balance=balance
        )
        accounts.append({"id": str(account_id), "name": name, "currency": currency})
    seed: dict[str, object] = {"partner": DEMO_PARTNER, "key": key, "accounts": accounts}
    seed_file.write_text(json.dumps(seed, indent=2))
    seed_file.chmod(0o600)
    return seed


async def _serve(settings: Settings, root: Path, port: int, started: float) -> int:
    import uvicorn

    from .db.migrate import upgrade_async
    from .events.kafka import ensure_topics
    from .gateway.app import create_app
    from .gateway.serving import uvicorn_options
    await upgrade_async(settings.db.primary_url)
    await ensure_topics(settings.kafka)
    db = Database(settings.db)
    try:
        seed = await _seed(db, root)
        # The dev broker starts empty: requests it held before a restart are produced again.
        async with db.write_session() as session:
            requeued = await requeue_pending(session, requested_topic=settings.kafka.requested_topic)
    finally:
        await db.dispose()
    if requeued:
        click.echo(f"  {requeued} payments still PENDING from the last run are queued again")

    config = uvicorn.Config(
        create_app(settings), host=settings.api.host, port=port, lifespan="on",
        **{**uvicorn_options(settings), "timeout_graceful_shutdown": 5},
    )
    server = uvicorn.Server(config)
    heap.settle()
    worker = asyncio.create_task(_supervised_worker(settings), name="worker")
    sender = asyncio.create_task(_supervised(settings, "webhook sender"), name="webhooks")
    api = asyncio.create_task(server.serve(), name="api")
    while not server.started and not api.done():
        await asyncio.sleep(0.05)
    if server.started:
        url = f"http://{settings.api.host}:{port}/graphql"
        click.echo(f"paystream dev is up in {time.monotonic() - started:.1f} s")
        click.echo(f"  GraphQL (HTTP + websocket, GraphiQL): {url}")
        click.echo(f"  primary:  {settings.db.primary_url}")
        click.echo(f"  replica:  {settings.db.replica_urls[0]}")
        click.echo(f"  redis:    {settings.redis.url}")
        click.echo(f"  kafka:    {settings.kafka.bootstrap_servers}  (dev broker: in memory only)")
        click.echo("  webhook sender: running (dev allows http://127.0.0.1:PORT endpoints)")
        click.echo(f"  demo partner: {seed['partner']}")
        for account in cast(list[dict[str, str]], seed["accounts"]):
            click.echo(f"  account {account['id']}  {account['currency']}  {account['name']}")
        click.echo("  demo key (Authorization: Bearer <key>):")
        click.echo(f"  {seed['key']}")
        click.echo("Ctrl-C stops everything.")
    try:
        await asyncio.wait({api, worker, sender}, return_when=asyncio.FIRST_COMPLETED)
        for role, task in (("worker", worker), ("webhook sender", sender)):
            if task.done():
                # Never an API without its worker (or sender): the whole stack stops.
                click.echo(f"the {role} stopped for good ({task.exception()!r}); "
                           "stopping paystream dev", err=True)
                server.should_exit = True
                await api
                return 1
        return 0
    finally:
        worker.cancel()
        sender.cancel()
        await asyncio.gather(worker, sender, return_exceptions=True)


async def _supervised_worker(settings: Settings) -> None:
    """The dev stack's worker, restarted after a crash (logged with its reason) unless it
    crashes again and again: MAX_RESTARTS within RESTART_WINDOW_S ends the stack."""
    await _supervised(settings, "worker")


async def _supervised(settings: Settings, role: str) -> None:
    """The dev stack's worker or webhook sender, restarted after a crash (logged with its
    reason) unless it crashes again and again: MAX_RESTARTS within RESTART_WINDOW_S ends
    the stack."""
    from .webhooks.sender import run_sender
    from .worker.main import run_worker

    crashes: list[float] = []
    while True:
        try:
            if role == "worker":
                await run_worker(settings)
            else:
                await run_sender(settings)
            return
        except Exception as exc:
            now = time.monotonic()
            crashes = [t for t in crashes if now - t < RESTART_WINDOW_S] + [now]
            if len(crashes) > MAX_RESTARTS:
                raise
            log.error("%s crashed (%r); restarting it (%d of %d within %d s)", role, exc,
                      len(crashes), MAX_RESTARTS, RESTART_WINDOW_S)
            await asyncio.sleep(min(2 ** len(crashes) * 0.1, 5.0))


def run_dev(root: Path, *, port: int) -> int:
    """Start the stack under ``root``, run until Ctrl-C or SIGTERM, stop everything. Exit code."""
    from .devstack import DevStack, StackAlreadyRunning
    from .devstack.settings import dev_settings

    started = time.monotonic()
    root.mkdir(parents=True, exist_ok=True)
    stack = DevStack(root)
    try:
        endpoints = stack.start()
    except StackAlreadyRunning as exc:
        click.echo(f"paystream dev is already running here: {exc}", err=True)
        return 1
    try:
        settings = dev_settings(endpoints, root, api={"host": "127.0.0.1", "port": port})
        configure_logging(settings)
        tracing.configure(settings, "dev")
        # uvicorn turns SIGINT/SIGTERM into a graceful exit of server.serve().
        return asyncio.run(_serve(settings, root, port, started))
    except KeyboardInterrupt:
        return 0
    finally:
        click.echo("stopping the dev stack ...")
        stack.stop()
        click.echo("stopped.")
