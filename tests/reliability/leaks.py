"""What an error sent to a client must never contain: SQL, file paths, module names, stack
frames or driver names."""

from __future__ import annotations

import re

LEAKS = re.compile(
    r"Traceback|File \"|\.py\b|/work/|/tmp/|/usr/|site-packages|sqlalchemy|asyncpg|psycopg"
    r"|aiokafka|redis\.exceptions|\bSELECT\b.*\bFROM\b|\bINSERT INTO\b|\bUPDATE\b.*\bSET\b"
    r"|\bWHERE\b|pg_catalog|line \d+, in ",
    re.IGNORECASE,
)


def assert_no_leak(text: str) -> None:
    found = LEAKS.search(text)
    assert found is None, f"internal detail {found.group(0)!r} in: {text[:500]}"
