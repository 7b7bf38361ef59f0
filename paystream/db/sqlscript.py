"""Splitting a SQL script into statements: asyncpg prepares each statement, and a prepared
statement holds one command."""

from __future__ import annotations


def split_statements(script: str) -> list[str]:
    """Split on semicolons outside ``$$``-quoted bodies and ``--`` comments."""
    statements: list[str] = []
    current: list[str] = []
    in_dollar = False
    for line in script.splitlines():
        code = line if in_dollar else line.split("--", 1)[0]
        current.append(line)
        if code.count("$$") % 2 == 1:
            in_dollar = not in_dollar
        if not in_dollar and code.rstrip().endswith(";"):
            statement = "\n".join(current).strip()
            if statement.rstrip(";").strip():
                statements.append(statement)
            current = []
    rest = "\n".join(current).strip()
    if rest:
        statements.append(rest)
    return statements
