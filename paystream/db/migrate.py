"""Applies the Alembic migrations to the primary."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config

_MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(primary_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.set_main_option("sqlalchemy.url", primary_url.replace("%", "%%"))
    return config


def upgrade(primary_url: str, revision: str = "head") -> None:
    """Migrate the primary to ``revision``. Blocking; call from a thread when a loop runs."""
    command.upgrade(alembic_config(primary_url), revision)


async def upgrade_async(primary_url: str, revision: str = "head") -> None:
    # env.py runs its own event loop, so it needs a thread without one.
    await asyncio.to_thread(upgrade, primary_url, revision)
