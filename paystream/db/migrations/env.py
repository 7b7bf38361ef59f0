"""Alembic environment: runs migrations on the primary, one migrator at a time."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import create_async_engine

# Any number of processes may call `paystream migrate` at once (several api replicas
# starting together); an advisory lock makes them take turns.
MIGRATION_LOCK_ID = 0x70617973


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


async def _main(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as lock_connection:
            # A session-level lock on its own connection, held while the migrations run.
            await lock_connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": MIGRATION_LOCK_ID})
            await lock_connection.commit()
            try:
                async with engine.connect() as connection:
                    await connection.run_sync(_run)
                    await connection.commit()
            finally:
                await lock_connection.execute(
                    text("SELECT pg_advisory_unlock(:id)"), {"id": MIGRATION_LOCK_ID}
                )
                await lock_connection.commit()
    finally:
        await engine.dispose()


asyncio.run(_main(context.config.get_main_option("sqlalchemy.url") or ""))
