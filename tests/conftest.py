"""One real stack per test session: the servers named by PAYSTREAM_* variables when set,
else the embedded ones from ``paystream.devstack`` (PostgreSQL primary + replica, Redis, the
Kafka-protocol broker), started once and stopped at the end whatever happens."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from paystream.config import Settings

EXTERNAL = bool(os.environ.get("PAYSTREAM_DB__PRIMARY_URL"))


@pytest.fixture(scope="session")
def devstack() -> Iterator[object | None]:
    """The embedded stack (None when the servers come from the environment)."""
    if EXTERNAL:
        yield None
        return
    from paystream.devstack import DevStack

    root = Path(tempfile.mkdtemp(prefix="paystream-test-"))
    # fsync off: the tests check behaviour, not durability across power loss.
    stack = DevStack(root, fsync=False)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def settings(devstack: object | None) -> Settings:
    if devstack is None:
        return Settings(dev=True)
    from paystream.devstack.settings import dev_settings

    return dev_settings(devstack.endpoints, devstack.root)  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def server_env(settings: Settings) -> dict[str, str]:
    """Environment for subprocesses (CLI, worker, api) that points at the test stack."""
    from paystream.config import environment_for

    return environment_for(settings, dict(os.environ))


@pytest.fixture(scope="session")
async def migrated(settings: Settings) -> Settings:
    from paystream.db.migrate import upgrade_async
    from paystream.events.kafka import ensure_topics

    await upgrade_async(settings.db.primary_url)
    await ensure_topics(settings.kafka)
    # Reads go to the replica: let it replay the schema before any test reads.
    from paystream.db import Database

    from .integration.conftest import wait_for_replay

    db = Database(settings.db)
    try:
        await wait_for_replay(db)
    finally:
        await db.dispose()
    return settings


@pytest.fixture(scope="session")
async def services(migrated: Settings) -> AsyncIterator[object]:
    from paystream.services.app import Services

    services = Services.create(migrated)
    await services.start()
    try:
        yield services
    finally:
        await services.close()
