"""The schema's migrations (alembic, ``versions/``)."""

from __future__ import annotations

from alembic import op

from ..sqlscript import split_statements


def execute_script(script: str) -> None:
    """Run a migration's SQL script one statement at a time (asyncpg prepares each statement,
    and a prepared statement holds one command)."""
    for statement in split_statements(script):
        op.execute(statement)
