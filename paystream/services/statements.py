"""The operator's statement (``paystream account statement``): an account's entries in a
range, oldest first, streamed from the primary as CSV or JSON lines."""

from __future__ import annotations

import csv
import json
from typing import TextIO

from sqlalchemy import text

from ..db import Database
from ..db.statements import EntryRow, stream_statement
from ..domain.errors import BadUserInput, NotFound
from ..domain.money import format_minor
from ..domain.validation import parse_timestamp
from .ledger import parse_account_id

FIELDS = ("id", "created_at", "kind", "amount", "balance_after", "currency", "payment_id",
          "refund_id")
_CURRENCY = text("SELECT currency FROM accounts WHERE id = :id")


def _record(entry: EntryRow, currency: str) -> dict[str, str]:
    return {
        "id": str(entry.id), "created_at": entry.created_at.isoformat(), "kind": entry.kind,
        "amount": format_minor(entry.amount_minor, currency),
        "balance_after": format_minor(entry.balance_after_minor, currency),
        "currency": currency, "payment_id": str(entry.payment_id or ""),
        "refund_id": str(entry.refund_id or ""),
    }


async def write_statement(db: Database, account_id: str, from_: str | None, to: str | None,
                          fmt: str, out: TextIO) -> int:
    """Write the statement to ``out`` as it is read; returns how many entries it had.
    Amounts are exact decimal strings in the account's currency."""
    account = parse_account_id(account_id)
    start = None if from_ is None else parse_timestamp(from_, field="from")
    end = None if to is None else parse_timestamp(to, field="to")
    if start is not None and end is not None and start > end:
        raise BadUserInput("--to must not be before --from", field="to")
    written = 0
    # One session for the whole stream: a REPEATABLE READ snapshot is not needed, entries
    # are append-only and a range that ends in the past does not change.
    async with db.write_session() as session:
        currency = (await session.execute(_CURRENCY, {"id": account})).scalar()
        if currency is None:
            raise NotFound("no such account")
        writer = csv.DictWriter(out, fieldnames=FIELDS) if fmt == "csv" else None
        if writer is not None:
            writer.writeheader()
        async for entry in stream_statement(session, account, from_at=start, to_at=end):
            record = _record(entry, str(currency))
            if writer is not None:
                writer.writerow(record)
            else:
                out.write(json.dumps(record) + "\n")
            written += 1
    out.flush()
    return written
