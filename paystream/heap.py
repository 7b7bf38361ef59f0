"""The cyclic garbage collector's settings for the long-running processes (the API, the
worker, the webhook sender).

Measured under bulk acceptance (docs/benchmarks.md, "Garbage collection"): the API spent
about 30% of its CPU in the collector, two thirds of it in full collections. A full
collection walks every container object alive, and most of those are the process's own
furniture (modules, the GraphQL schema, SQLAlchemy's and pydantic's compiled structures)
that live as long as the process and are never garbage. A batch of 1,000 payments holds tens
of thousands of objects at once, enough to trigger many young collections per request and to
promote the batch's objects until a full collection is due again.

So, once a process has built what it keeps: collect once, then freeze what is alive (moved
to a permanent generation the collector never walks; it is still freed by reference counts),
and collect the young generation after more allocations than the default 700, so that a
request's objects are mostly freed by reference counting before a collection looks at them.
Cycles are still collected; memory between collections grows by at most the threshold's
worth of container objects.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000
"""Container allocations (net of deallocations) between two young collections (default 700)."""
OLDER_THRESHOLDS = (20, 10)
"""Young collections per middle-generation collection, and middle per full one (10, 10)."""


def settle() -> None:
    """Freeze the objects alive now and raise the young generation's threshold (above).
    Call once the process has built its long-lived objects, before it serves."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
