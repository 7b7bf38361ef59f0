"""The ``paystream`` command.

``paystream dev`` runs everything on embedded servers; ``api``, ``worker`` and ``migrate`` run
one role against the servers the settings name; ``partner`` and ``account`` administer;
``webhooks`` runs a webhook sender (its subcommands administer endpoints); ``schema`` prints
the GraphQL SDL. Run in the directory where ``paystream dev`` runs, the
admin commands act on that dev stack.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click

from .config import DEV_DIR, Settings
from .db import Database
from .domain.errors import PaystreamError

if TYPE_CHECKING:

    from .db.ledger import FundingPosting
    from .db.webhooks import EndpointRow
    from .services.webhooks import WebhookService

T = TypeVar("T")

def load_settings() -> Settings:
    """The running dev stack's settings when in its directory, else the environment's."""
    try:
        from .devstack import read_running_stack
        from .devstack.settings import dev_settings
    except ImportError:  # the dev extra is not installed
        return Settings()
    endpoints = read_running_stack(Path.cwd() / DEV_DIR)
    if endpoints is not None:
        return dev_settings(endpoints, Path.cwd() / DEV_DIR)
    return Settings()


def _run_with_db(settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
    async def main() -> T:
        db = Database(settings.db)
        try:
            return await work(db)
        finally:
            await db.dispose()

    try:
        return asyncio.run(main())
    except PaystreamError as exc:
        raise click.ClickException(exc.message) from None


def _or_exit(work: Callable[[], T]) -> T:
    try:
        return work()
    except PaystreamError as exc:
        raise click.ClickException(exc.message) from None


def _settings_or_exit() -> Settings:
    try:
        return load_settings()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
def main() -> None:
    """paystream: a payments API for GraphQL clients."""


@main.command()
@click.option("--port", default=8000, show_default=True, help="GraphQL HTTP port.")
def dev(port: int) -> None:
    """Start embedded PostgreSQL (primary + replica), Redis and a Kafka-protocol broker,
    migrate, seed a demo partner, and run the API and the worker until Ctrl-C."""
    from .devrun import run_dev

    sys.exit(run_dev(Path.cwd() / DEV_DIR, port=port))


@main.command()
@click.option("--host", default=None, help="Bind address (default from settings).")
@click.option("--port", default=None, type=int, help="Port (default from settings).")
@click.option("--workers", default=None, type=int, help="Worker processes (default 1).")
def api(host: str | None, port: int | None, workers: int | None) -> None:
    """Serve the GraphQL API with uvicorn against the configured servers."""
    import uvicorn

    from .gateway.serving import uvicorn_options

    settings = _settings_or_exit()
    uvicorn.run(
        "paystream.gateway.asgi:app",
        factory=True,
        host=host or settings.api.host,
        port=port or settings.api.port,
        workers=workers or settings.api.workers,
        loop="uvloop",
        **uvicorn_options(settings),
    )


@main.command()
@click.option("--heartbeat-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Touch this file about once a second while polling (for health checks).")
def worker(heartbeat_file: Path | None) -> None:
    """Consume payments.requested, post each payment to the ledger, publish its status.

    With ``PAYSTREAM_METRICS__WORKER_PORT`` set, also serve Prometheus metrics there, with
    the outbox, dead-letter and lag backlogs sampled every ``SAMPLE_INTERVAL_S``."""
    from . import heap, tracing
    from .logging import configure_logging
    from .worker.backlog import run_observed
    from .worker.main import run_worker

    settings = _settings_or_exit()
    configure_logging(settings)
    tracing.configure(settings, "worker")
    heap.settle()
    try:
        asyncio.run(run_observed(settings, run_worker(settings, handle_signals=True,
                                                      heartbeat=heartbeat_file)))
    except Exception as exc:  # noqa: BLE001 (logged with its traceback by run_worker)
        raise click.ClickException(f"the worker stopped: {exc!r}") from None


@main.command()
def migrate() -> None:
    """Apply the database migrations to the primary and create the Kafka topics."""
    from .db.migrate import upgrade
    from .events.kafka import ensure_topics

    settings = _settings_or_exit()
    upgrade(settings.db.primary_url)
    asyncio.run(ensure_topics(settings.kafka))
    click.echo("migrated")


@main.command("schema")
def schema() -> None:
    """Print the GraphQL schema (SDL) the API serves: ``paystream schema > schema.graphql``.

    Needs no servers or settings; tests/test_schema_contract.py checks the committed file
    against it and refuses breaking changes not listed in schema.breaking."""
    from .resolvers.contract import schema_sdl

    click.echo(schema_sdl(), nl=False)


@main.group()
def partner() -> None:
    """Partners (tenants) and their API keys."""


@partner.command("create")
@click.argument("name")
@click.option(
    "--scope", "scopes", multiple=True, type=click.Choice(["payments:read", "payments:write"]),
    help="Scope of the new key; repeat for both (default: both).",
)
def partner_create(name: str, scopes: tuple[str, ...]) -> None:
    """Create partner NAME and print its first API key (on the last line, alone)."""
    from .services.admin import new_partner

    settings = _settings_or_exit()
    key = _run_with_db(
        settings, lambda db: new_partner(db, name, scopes or ("payments:read", "payments:write"))
    )
    click.echo(f"partner {name} created; its API key (shown once, stored hashed):")
    click.echo(key)


@partner.command("key")
@click.argument("name")
@click.option("--scope", "scopes", multiple=True, type=click.Choice(["payments:read", "payments:write"]))
def partner_key(name: str, scopes: tuple[str, ...]) -> None:
    """Issue another API key for partner NAME (printed on the last line, alone)."""
    from .services.admin import new_api_key

    settings = _settings_or_exit()
    key = _run_with_db(
        settings, lambda db: new_api_key(db, name, scopes or ("payments:read", "payments:write"))
    )
    click.echo(key)


@partner.command("keys")
@click.argument("name")
def partner_keys(name: str) -> None:
    """List partner NAME's API keys: id, prefix, scopes, created, revoked (never the keys)."""
    from .services.admin import api_keys

    settings = _settings_or_exit()
    for key in _run_with_db(settings, lambda db: api_keys(db, name)):
        revoked = f"revoked {key.revoked_at.isoformat()}" if key.revoked_at else "live"
        click.echo(f"{key.id}  {key.prefix}...  {','.join(key.scopes)}  "
                   f"created {key.created_at.isoformat()}  {revoked}")


@partner.command("revoke")
@click.argument("key")
def partner_revoke(key: str) -> None:
    """Revoke an API key, named by its id (see `partner keys`) or given in clear.

    Requests with it fail from then on; websocket connections it opened earlier stay open
    until they close."""
    from .services.admin import revoke_key

    settings = _settings_or_exit()
    _run_with_db(settings, lambda db: revoke_key(db, key))
    click.echo("revoked")


@main.group()
def account() -> None:
    """Accounts."""


@account.command("create")
@click.option("--partner", required=True, help="Owning partner's name.")
@click.option("--name", required=True, help="Account name.")
@click.option("--currency", required=True, help="ISO 4217 code, e.g. USD.")
@click.option("--balance", default="0", show_default=True,
              help="Opening balance, e.g. 100.00: a FUNDING posting from the settlement account.")
def account_create(partner: str, name: str, currency: str, balance: str) -> None:
    """Create an account and print its id (on the last line, alone); a positive opening
    balance is posted from the currency's settlement account, and the posting is printed."""
    from .services.admin import open_account

    settings = _settings_or_exit()
    account_id, posting = _run_with_db(
        settings,
        lambda db: open_account(db, partner=partner, name=name, currency=currency, balance=balance),
    )
    if posting is not None:
        _echo_posting(posting)
    click.echo(f"account {name} ({currency}) created for {partner}:")
    click.echo(str(account_id))


@account.command("fund")
@click.argument("account_id")
@click.option("--amount", required=True, help="Amount to add, e.g. 250.00 (in the account's currency).")
def account_fund(account_id: str, amount: str) -> None:
    """Add money to ACCOUNT_ID from outside: a FUNDING posting from the settlement account of
    its currency (both entries printed). Readers see the new balance at once."""
    from .cache import VersionedCache
    from .services.ledger import fund_account, parse_account_id

    settings = _settings_or_exit()
    target = _or_exit(lambda: parse_account_id(account_id))

    async def work(db: Database) -> FundingPosting:
        cache = VersionedCache(settings.redis)
        try:
            return await fund_account(db, cache, settings, target, amount)
        finally:
            await cache.close()

    _echo_posting(_run_with_db(settings, work))


@account.command("statement")
@click.argument("account_id")
@click.option("--from", "from_", default=None, help="ISO 8601 with an offset; entries at or after it.")
@click.option("--to", default=None, help="ISO 8601 with an offset; entries at or before it.")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv",
              show_default=True, help="csv with a header, or one JSON object per line.")
def account_statement(account_id: str, from_: str | None, to: str | None, fmt: str) -> None:
    """Print ACCOUNT_ID's ledger entries with from <= created_at <= to, oldest first: id,
    created_at, kind, amount (signed), balance_after, payment_id, refund_id. Streamed from
    the primary through a server-side cursor, so memory stays constant however long."""
    from .services.statements import write_statement

    settings = _settings_or_exit()
    _run_with_db(settings, lambda db: write_statement(db, account_id, from_, to, fmt,
                                                      sys.stdout))


def _echo_posting(posting: FundingPosting) -> None:
    from .domain.money import format_minor

    currency = posting.account.currency
    click.echo(f"posting {posting.posting_id} FUNDING {format_minor(posting.amount_minor, currency)}"
               f" {currency}")
    for row, sign in ((posting.settlement, -1), (posting.account, 1)):
        click.echo(f"  {row.id}  {format_minor(sign * posting.amount_minor, currency):>16}"
                   f"  balance after {format_minor(row.balance_minor, currency)}")


@main.group()
def ledger() -> None:
    """The double-entry ledger."""


@ledger.command("verify")
def ledger_verify() -> None:
    """Prove the ledger on the primary: every balance equals the sum of its entries, every
    entry's balance after equals the running sum, every posting sums to zero, no partner account is negative, every account's held amount is
    its open holds and its available balance (balance minus holds) is never negative,
    every AUTHORIZED payment has exactly its open hold, every SUCCEEDED payment exactly its
    two entries (PAYMENT, or CAPTURE of the captured amount) and every FAILED or CANCELED
    one none, refunds never exceed what their payment moved and each SUCCEEDED one has its
    two REFUND entries, every PENDING payment and refund has its request queued, every
    payment's metadata is in the metadata filter's index. Prints a summary; exits 1 naming
    each violation."""
    from .services.ledger import verify_ledger

    settings = _settings_or_exit()
    report = _run_with_db(settings, lambda db: verify_ledger(db, settings))
    for check, found in report.violations.items():
        for violation in found:
            click.echo(f"VIOLATION {check}: {violation}")
    click.echo(report.summary())
    if not report.sound:
        sys.exit(1)


@main.group(invoke_without_command=True)
@click.pass_context
def webhooks(ctx: click.Context) -> None:
    """Without a subcommand: run a webhook sender (consume payments.status into the delivery
    schedule in PostgreSQL, POST what is due, signed; any number of processes). The
    subcommands administer partners' endpoints."""
    if ctx.invoked_subcommand is not None:
        return
    from . import heap, tracing
    from .logging import configure_logging
    from .webhooks.secrets import SecretsUnavailable
    from .webhooks.sender import run_sender

    settings = _settings_or_exit()
    configure_logging(settings)
    tracing.configure(settings, "webhooks")
    heap.settle()
    try:
        asyncio.run(run_sender(settings, handle_signals=True))
    except SecretsUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 (the sender logs its own failures)
        raise click.ClickException(f"the webhook sender stopped: {exc!r}") from None


def _webhook_service(db: Database, settings: Settings) -> WebhookService:
    from .services.webhooks import WebhookService

    return WebhookService(settings, db)


@webhooks.command("create")
@click.option("--partner", required=True, help="Owning partner's name.")
@click.option("--url", required=True, help="https URL (http://127.0.0.1:PORT in dev).")
@click.option("--event", "events", multiple=True,
              help="An event type to send (repeat); default: all.")
def webhooks_create(partner: str, url: str, events: tuple[str, ...]) -> None:
    """Register an endpoint for PARTNER; prints its id, then its signing secret alone on the
    last line (shown once, stored encrypted)."""
    settings = _settings_or_exit()

    async def work(db: Database) -> tuple[str, str]:
        service = _webhook_service(db, settings)
        created = await service.create_for(await service.partner_named(partner), url,
                                           events or None)
        return str(created.endpoint.id), created.secret

    endpoint_id, secret = _run_with_db(settings, work)
    click.echo(f"webhook endpoint {endpoint_id} created for {partner}; its signing secret "
               "(shown once):")
    click.echo(secret)


@webhooks.command("list")
@click.option("--partner", default=None, help="Only this partner's endpoints.")
def webhooks_list(partner: str | None) -> None:
    """List endpoints: id, partner id, status, url, events (never the secrets)."""
    from .db.webhooks import all_endpoints, endpoints_of

    settings = _settings_or_exit()

    async def work(db: Database) -> list[EndpointRow]:
        if partner is None:
            return await db.read(all_endpoints, primary=True)
        partner_id = await _webhook_service(db, settings).partner_named(partner)
        return await db.read(lambda s: endpoints_of(s, partner_id), primary=True)

    for row in _run_with_db(settings, work):
        click.echo(f"{row.id}  {row.partner_id}  {row.status}  {row.url}  {','.join(row.events)}")


@webhooks.command("delete")
@click.argument("endpoint_id")
def webhooks_delete(endpoint_id: str) -> None:
    """Delete an endpoint with its pending deliveries and log."""
    settings = _settings_or_exit()
    deleted = _run_with_db(settings, lambda db: _webhook_service(db, settings).delete_any(endpoint_id))
    if not deleted:
        raise click.ClickException("no such webhook endpoint")
    click.echo("deleted")


@webhooks.command("rotate")
@click.argument("endpoint_id")
def webhooks_rotate(endpoint_id: str) -> None:
    """A new signing secret for an endpoint (printed alone on the last line, once); the old
    one keeps signing for 24 h."""
    settings = _settings_or_exit()
    created = _run_with_db(settings,
                           lambda db: _webhook_service(db, settings).rotate_for(None, endpoint_id))
    click.echo(f"webhook endpoint {created.endpoint.id}: new signing secret (the old one is "
               "valid for 24 h more):")
    click.echo(created.secret)


@webhooks.command("enable")
@click.argument("endpoint_id")
def webhooks_enable(endpoint_id: str) -> None:
    """Enable a DISABLED endpoint again: the events held while it was disabled, and those
    given up in the failure streak that disabled it, are due now (a new retry window each),
    in version order per payment."""
    settings = _settings_or_exit()
    endpoint, due = _run_with_db(
        settings, lambda db: _webhook_service(db, settings).enable_for(None, endpoint_id))
    click.echo(f"webhook endpoint {endpoint.id} {endpoint.status}; {due} event(s) due now")


@webhooks.command("resend")
@click.argument("event_id")
def webhooks_resend(event_id: str) -> None:
    """Deliver EVENT_ID (a Paystream-Event-Id) again to every endpoint it was scheduled for,
    starting now, with a new retry window (held for a DISABLED endpoint until it is
    enabled)."""
    settings = _settings_or_exit()
    due, held = _run_with_db(settings,
                             lambda db: _webhook_service(db, settings).resend(event_id))
    click.echo(f"event {event_id} scheduled again for {due} endpoint(s)"
               + (f"; held for {held} DISABLED endpoint(s) until enabled" if held else ""))


@main.group()
def dlq() -> None:
    """The dead-letter topic of payments.requested."""


@dlq.command("redrive")
@click.option("--dry-run", is_flag=True, help="Only list the dead letters; produce and commit nothing.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Handle at most N dead letters.")
@click.option("--from-beginning", is_flag=True,
              help="Look at the whole topic again, not only what arrived since the last run.")
def dlq_redrive(dry_run: bool, limit: int | None, from_beginning: bool) -> None:
    """Print each dead letter with its reason and re-produce to payments.requested those that
    now decode and validate; the ones still refused stay in the topic and are reported.
    Progress is kept by the consumer group ``<worker group>.dlq-redrive``. On a terminal a
    progress bar counts the letters; piped, the output is one line per letter."""
    from .progress import progress
    from .worker.redrive import DeadLetter, redrive

    settings = _settings_or_exit()

    def handled(letter: DeadLetter) -> None:
        bar.echo(letter.describe())
        bar.advance()

    with progress(None, "dead letters", stream=sys.stdout) as bar:
        report = asyncio.run(redrive(
            settings.kafka, dry_run=dry_run, limit=limit, from_beginning=from_beginning,
            on_letter=handled, on_total=bar.set_total,
        ))
    verb = "would redrive" if dry_run else "redriven"
    click.echo(f"examined {report.examined}, {verb} {report.examined - report.kept},"
               f" still refused {report.kept}")


if __name__ == "__main__":
    main()
