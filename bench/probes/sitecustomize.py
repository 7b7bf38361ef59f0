"""Probes for the server processes of a bench run, loaded by Python's ``site`` when this
folder is on ``PYTHONPATH`` (the bench passes its environment to the servers it starts):

    BENCH_PROBE_GC=1 PYTHONPATH=bench/probes python -m bench --only bulk_payments
    BENCH_PROBE_SQL=1 PYTHONPATH=bench/probes python -m bench.drain

``BENCH_PROBE_GC``: each ``paystream api`` / ``paystream worker`` process writes the time its
collector took (all generations, and full collections alone), its CPU time and the
collector's settings to ``bench/results/gc-<role>-<pid>.txt``. ``BENCH_PROBE_SQL``: the
worker writes each statement's count and total time (as the client sees it: round trip
included) to ``bench/results/sql-worker-<pid>.txt``. Both files are rewritten every two
seconds, so they hold the process's figures until shortly before it was stopped. Not for
production: the callbacks cost a little on every collection and statement.
"""

from __future__ import annotations

import collections
import gc
import os
import sys
import threading
import time
from pathlib import Path

# At ``site`` time sys.argv is ["-m", "api", ...] for ``python -m paystream.cli api``.
_ROLE = next((a for a in sys.argv if a in ("api", "worker")), None)
_OUT = Path(__file__).resolve().parent.parent / "results"


def _every_two_seconds(write: collections.abc.Callable[[], None]) -> None:
    def loop() -> None:
        while True:
            time.sleep(2)
            write()
    threading.Thread(target=loop, daemon=True, name="bench-probe").start()


def _gc_probe(role: str) -> None:
    totals = {"all": 0.0, "full": 0.0, "collections": 0}
    started = [0.0]

    def timed(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        took = time.perf_counter() - started[0]
        totals["all"] += took
        totals["collections"] += 1
        if info["generation"] == 2:
            totals["full"] += took

    gc.callbacks.append(timed)
    path = _OUT / f"gc-{role}-{os.getpid()}.txt"

    def write() -> None:
        cpu = time.process_time()
        path.write_text(
            f"{role}: collector {totals['all']:.3f} s in {totals['collections']} collections"
            f" (full collections {totals['full']:.3f} s) of {cpu:.3f} s CPU"
            f" ({100 * totals['all'] / cpu if cpu else 0:.1f}%); thresholds {gc.get_threshold()},"
            f" frozen {gc.get_freeze_count()}\n")
    _every_two_seconds(write)


def _sql_probe(role: str) -> None:
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    stats: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])

    @event.listens_for(Engine, "before_cursor_execute")
    def before(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        conn.info["bench_probe_started"] = time.perf_counter()

    @event.listens_for(Engine, "after_cursor_execute")
    def after(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        entry = stats[" ".join(statement.split())[:100]]
        entry[0] += 1
        entry[1] += time.perf_counter() - conn.info.pop("bench_probe_started")

    path = _OUT / f"sql-{role}-{os.getpid()}.txt"

    def write() -> None:
        ranked = sorted(stats.items(), key=lambda kv: -kv[1][1])
        path.write_text("".join(f"{total:8.3f} s {int(n):7d}  {sql}\n"
                                for sql, (n, total) in ranked))
    _every_two_seconds(write)


if _ROLE is not None:
    _OUT.mkdir(exist_ok=True)
    if os.environ.get("BENCH_PROBE_GC"):
        _gc_probe(_ROLE)
    if os.environ.get("BENCH_PROBE_SQL") and _ROLE == "worker":
        _sql_probe(_ROLE)
