"""Postings checked for balance once per statement, not once per entry at commit.

Since 0001 every ledger entry queued a deferred constraint trigger that, at commit, summed
its posting's entries: two trigger calls per payment, each a query. Found profiling the
worker drain (issue 16): the entries' insert was the primary's largest cost, and with the
per-entry trigger an entry (inserted and committed as the worker does) cost 34.4 us against
27.3 us checked per statement and 27.7 us with no check at all (``python -m
bench.ledger_check``, medians of six interleaved rounds; docs/benchmarks.md, 2026-12-07).

The check is now an ``AFTER INSERT ... FOR EACH STATEMENT`` trigger over the statement's new
rows (a transition table): each posting's entries in one statement must sum to zero. Since
entries are append-only (``ledger_entries_no_update_or_delete``), every posting is the union
of what its statements inserted, so every posting sums to zero exactly as before. What it
asks of writers: a posting's entries are inserted by one statement (every writer in the code
does: the worker's batches by ``unnest``, the others through ``paystream.db.ledger``'s
``insert_entries``), and an unbalanced one is refused by that statement, not at commit.
"""

from __future__ import annotations

from paystream.db.migrations import execute_script

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE FUNCTION ledger_postings_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE unbalanced record;
BEGIN
    SELECT posting_id, sum(amount_minor) AS total INTO unbalanced
      FROM new_entries GROUP BY posting_id HAVING sum(amount_minor) <> 0 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'ledger entries of posting % sum to %, not 0',
                        unbalanced.posting_id, unbalanced.total
            USING ERRCODE = 'check_violation',
                  HINT = 'insert all of a posting''s entries in one statement';
    END IF;
    RETURN NULL;
END $$;
DROP TRIGGER ledger_entries_sum_to_zero ON ledger_entries;
CREATE TRIGGER ledger_entries_postings_balanced
    AFTER INSERT ON ledger_entries
    REFERENCING NEW TABLE AS new_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_postings_balanced();
"""

DOWNGRADE = """
DROP TRIGGER ledger_entries_postings_balanced ON ledger_entries;
DROP FUNCTION ledger_postings_balanced();
CREATE CONSTRAINT TRIGGER ledger_entries_sum_to_zero
    AFTER INSERT ON ledger_entries
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ledger_entries_balanced();
"""


def upgrade() -> None:
    execute_script(UPGRADE)


def downgrade() -> None:
    execute_script(DOWNGRADE)
