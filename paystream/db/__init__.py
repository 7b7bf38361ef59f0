"""PostgreSQL access: engines, the two session types, models, repositories, migrations."""

from .engine import Database, ReadSession, WriteSession

__all__ = ["Database", "ReadSession", "WriteSession"]
