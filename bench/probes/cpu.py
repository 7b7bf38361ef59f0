"""CPU by process group over a window of a bench run, from /proc (Linux).

    python bench/probes/cpu.py record /tmp/cpu.jsonl &      # one snapshot a second
    python bench/probes/cpu.py report /tmp/cpu.jsonl T0 T1  # CPU seconds between two times

Groups: postgres, the worker, the API, the broker, Redis; anything else by its command line.
``report`` with no times picks the window where the worker used more than half a core.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import sys
import time

TICKS = os.sysconf("SC_CLK_TCK")


def _group(command: str) -> str:
    for needle, name in (("postgres", "postgres"), ("cli worker", "worker"), ("cli api", "api"),
                         ("broker", "broker"), ("redis", "redis")):
        if needle in command:
            return name
    return command[:60]


def record(path: str) -> None:
    with open(path, "w") as out:
        while True:
            snapshot = {}
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open(f"/proc/{pid}/stat") as stat, open(f"/proc/{pid}/cmdline") as cmd:
                        fields = stat.read().rsplit(")", 1)[1].split()
                        command = cmd.read().replace("\0", " ")
                except OSError:
                    continue
                snapshot[pid] = (_group(command), (int(fields[11]) + int(fields[12])) / TICKS)
            out.write(json.dumps({"t": time.time(), "p": snapshot}) + "\n")
            out.flush()
            time.sleep(1)


def _worker_window(snapshots: list[dict]) -> tuple[float, float]:
    busy = [b["t"] for a, b in itertools.pairwise(snapshots)
            if sum(c for g, c in b["p"].values() if g == "worker")
            - sum(c for g, c in a["p"].values() if g == "worker") > 0.5 * (b["t"] - a["t"])]
    if not busy:
        raise SystemExit("no window where the worker was busy")
    return busy[0] - 1, busy[-1]


def report(path: str, start: float | None, end: float | None) -> None:
    with open(path) as lines:
        snapshots = [json.loads(line) for line in lines]
    if start is None or end is None:
        start, end = _worker_window(snapshots)
    first = min(snapshots, key=lambda s: abs(s["t"] - start))
    last = min(snapshots, key=lambda s: abs(s["t"] - end))
    wall = last["t"] - first["t"]
    used: collections.Counter[str] = collections.Counter()
    for pid, (group, cpu) in last["p"].items():
        if pid in first["p"]:
            used[group] += cpu - first["p"][pid][1]
        else:
            used[group] += cpu
    print(f"window {wall:.1f} s")
    for group, seconds in used.most_common(8):
        print(f"{seconds:7.2f} s  {100 * seconds / wall:5.1f}% of a core  {group}")


if __name__ == "__main__":
    if sys.argv[1] == "record":
        record(sys.argv[2])
    else:
        times = [float(t) for t in sys.argv[3:5]]
        report(sys.argv[2], *(times if len(times) == 2 else (None, None)))
