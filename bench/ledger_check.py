"""What the ledger's sum-to-zero check costs per entry, in the worker's own insert statement.

    python -m bench.ledger_check [--rounds 6] [--batches 10]

One embedded primary, migrated; each round inserts ``batches`` batches of 500 payments' two
entries (1,000 rows in one ``unnest`` insert with its commit, as the worker does) under each
variant in turn, so that the variants share the machine's state and noise:

- ``per statement``: the schema's trigger (migration 0013, a transition table);
- ``per entry, deferred``: the trigger before 0013, one PL/pgSQL call per entry at commit;
- ``no check``: neither (the floor).

Prints the median microseconds per entry and each round's, and writes
``bench/results/ledger_check.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

import asyncpg

from paystream.db.migrate import upgrade_async
from paystream.services.admin import new_account, new_partner
from paystream.services.app import Services

from .common import bench_stack, print_table, write_result

_PAYMENTS = """
INSERT INTO payments (id, partner_id, idempotency_key, request_hash, source_account_id,
  destination_account_id, amount_minor, currency, status, version, created_at, updated_at)
SELECT id, $1::uuid, id::text, 'x', $2::uuid, $3::uuid, 1, 'USD', 'PENDING', 1, now(), now()
  FROM unnest($4::uuid[]) AS id
"""
_ENTRIES = """
INSERT INTO ledger_entries (posting_id, kind, payment_id, account_id, amount_minor,
  balance_after_minor, created_at)
SELECT p, 'PAYMENT', p, a, m, b, now()
  FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::bigint[]) AS u(p, a, m, b)
"""
_PER_ENTRY = """
ALTER TABLE ledger_entries DISABLE TRIGGER ledger_entries_postings_balanced;
CREATE CONSTRAINT TRIGGER ledger_entries_sum_to_zero AFTER INSERT ON ledger_entries
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_entries_balanced();
"""
_PER_ENTRY_UNDO = """
DROP TRIGGER ledger_entries_sum_to_zero ON ledger_entries;
ALTER TABLE ledger_entries ENABLE TRIGGER ledger_entries_postings_balanced;
"""
_NONE = "ALTER TABLE ledger_entries DISABLE TRIGGER ledger_entries_postings_balanced"
_NONE_UNDO = "ALTER TABLE ledger_entries ENABLE TRIGGER ledger_entries_postings_balanced"
VARIANTS = (("per statement (0013)", None, None), ("per entry, deferred (before)", _PER_ENTRY,
            _PER_ENTRY_UNDO), ("no check", _NONE, _NONE_UNDO))
PAYMENTS_PER_BATCH = 500


async def insert_batches(conn: asyncpg.Connection, partner: uuid.UUID,
                         accounts: tuple[str, str], batches: int) -> float:
    """Microseconds per entry of the entries' inserts and commits (the payments' are not
    timed)."""
    source, destination = accounts
    spent = 0.0
    for _ in range(batches):
        ids = [uuid.uuid4() for _ in range(PAYMENTS_PER_BATCH)]
        async with conn.transaction():
            await conn.execute(_PAYMENTS, partner, source, destination, ids)
        postings = [i for i in ids for _ in range(2)]
        legs = [source, destination] * PAYMENTS_PER_BATCH
        amounts = [-1, 1] * PAYMENTS_PER_BATCH
        started = time.perf_counter()
        async with conn.transaction():
            await conn.execute(_ENTRIES, postings, legs, amounts, [0] * len(legs))
        spent += time.perf_counter() - started
    return spent * 1e6 / (batches * PAYMENTS_PER_BATCH * 2)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--batches", type=int, default=10)
    args = parser.parse_args()
    with bench_stack() as (settings, _):
        await upgrade_async(settings.db.primary_url)
        services = Services.create(settings)
        try:
            name = f"bench-{uuid.uuid4().hex[:8]}"
            key = await new_partner(services.db, name)
            accounts = tuple([str(await new_account(services.db, partner=name, name=f"a{i}",
                                                    currency="USD", balance="1000.00"))
                              for i in range(2)])
            partner = (await services.auth.caller_for(f"Bearer {key}")).partner_id
        finally:
            await services.close()
        conn = await asyncpg.connect(settings.db.primary_url.replace("+asyncpg", ""))
        try:
            await insert_batches(conn, partner, accounts, args.batches * 3)  # the tables grown
            rounds: dict[str, list[float]] = {label: [] for label, _, _ in VARIANTS}
            for _ in range(args.rounds):
                for label, setup, undo in VARIANTS:
                    if setup:
                        await conn.execute(setup)
                    try:
                        rounds[label].append(await insert_batches(conn, partner, accounts,
                                                                  args.batches))
                    finally:
                        if undo:
                            await conn.execute(undo)
        finally:
            await conn.close()
    medians = {label: statistics.median(values) for label, values in rounds.items()}
    print_table(f"ledger entry insert + commit, us per entry (median of {args.rounds} rounds "
                f"of {args.batches * PAYMENTS_PER_BATCH * 2} entries)",
                [(label, f"{medians[label]:.1f}   rounds: "
                  + " ".join(f"{v:.1f}" for v in rounds[label])) for label in rounds])
    path = write_result("ledger_check", {"us_per_entry_median": medians, "rounds": rounds,
                                         "entries_per_round": args.batches * PAYMENTS_PER_BATCH * 2})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    asyncio.run(main())
