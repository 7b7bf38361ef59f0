"""Shared bench plumbing: a stack (embedded or configured), tables, JSON results."""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from paystream.config import Settings, environment_for

RESULTS = Path(__file__).parent / "results"


@contextmanager
def bench_stack() -> Iterator[tuple[Settings, object | None]]:
    """Configured servers when PAYSTREAM_DB__PRIMARY_URL is set, else an embedded stack with
    fsync on (the benchmarks compare against durable commits)."""
    if os.environ.get("PAYSTREAM_DB__PRIMARY_URL"):
        yield Settings(dev=True), None
        return
    from paystream.devstack import DevStack
    from paystream.devstack.settings import dev_settings

    root = Path(tempfile.mkdtemp(prefix="paystream-bench-"))
    stack = DevStack(root, fsync=True)
    endpoints = stack.start()
    try:
        yield dev_settings(endpoints), stack
    finally:
        stack.stop()
        # The servers' data (2 to 5 GB after a full run): left behind, a day of runs filled
        # the disk. BENCH_KEEP_STACK=1 keeps it to look at; the logs are kept apart anyway.
        if not os.environ.get("BENCH_KEEP_STACK"):
            shutil.rmtree(root, ignore_errors=True)


def server_env(settings: Settings) -> dict[str, str]:
    return environment_for(settings, dict(os.environ))


def print_table(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    print(f"\n{title}")
    print("-" * (width + 24))
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def write_result(name: str, data: dict[str, object]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    data = {
        "benchmark": name,
        "at": datetime.now(UTC).isoformat(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        **data,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2))
    return path
