"""The report of a bench run: PNG plots under ``docs/`` and the generated part of
``docs/benchmarks.md`` (between ``<!-- bench:begin -->`` and ``<!-- bench:end -->``).
``python -m bench.report`` redoes both from ``bench/results/`` without running anything.

Plots are drawn only for the scenarios in the run: the latency distribution of
``subscribe_latency``, memory and delivery against subscriptions for
``subscription_capacity``, and, for every scenario, each figure against its same-run baseline.
"""

from __future__ import annotations

import os
import platform
import re
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .harness import Scenario

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGE = DOCS / "benchmarks.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"

HEADER = f"""# Benchmarks

Measured speed of paystream against baselines measured in the same run. Everything between
the markers below is rewritten by `python -m bench` (the table, the machine, the plots);
the rest of this page is by hand.

{BEGIN}
{END}

## Method

- One command: `python -m bench` (or `paystream bench`) starts the embedded stack with fsync
  on (PostgreSQL primary and replica, Redis, the Kafka-protocol dev broker), seeds a partner
  with 50 accounts, starts a worker, and runs each scenario against its own API process(es).
  `--only a,b` picks scenarios, `--seconds N` sets the load phases, `--quick` shortens them.
  Raw figures go to `bench/results/<scenario>.json`.
- Load generators run as separate processes, never in the bench process nor in a server:
  `wrk` (one thread; the connections are given per scenario) for HTTP queries and mutations,
  and the Python generators under `bench/loadgen/` for websocket subscriptions and for bulk
  createPayments (their process and connection counts are in each scenario's notes).
- Every figure stands beside a baseline measured in the same run on the same machine, and
  the table gives their ratio: the machine is shared and noisy, so a ratio says more than an
  absolute figure. The baselines: a minimal Strawberry app with no I/O (the floor) and a
  naive server without DataLoaders or cache (queries); pgbench on the same primary (worker
  drain); one broker produce-to-consume hop with the same `fetch_max_wait_ms`
  (createPayment to a subscriber); the first subscriber's receipt of the same event
  (fan-out to many); the same webhook receiver hit directly by wrk and by httpx with as many
  requests in flight (webhook delivery).
- Latencies of open-loop loads are timed from the moment a request was sent; the generator
  reports how late it was against its schedule, so a generator that fell behind shows.
- Issue 5's figure (createPayment to SUCCEEDED seen by a subscriber, 1,000 payments at 200/s):
  `python -m bench --only subscribe_latency --seconds 5`.
"""


def write_report(results: list[Scenario], summary: str, *, runs: str | None = None) -> None:
    """Plots for the scenarios in ``results`` and the generated section of the page;
    ``runs`` says when they ran (default: one run, now)."""
    DOCS.mkdir(exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    images: list[tuple[str, str]] = []
    by_name = {scenario.name: scenario for scenario in results}
    if "subscribe_latency" in by_name:
        images.append(("createPayment to SUCCEEDED at a subscriber: distribution",
                       _latency_cdf(by_name["subscribe_latency"])))
    if "subscription_capacity" in by_name:
        images.append(("Open subscriptions on one API process: memory and delivery",
                       _capacity(by_name["subscription_capacity"])))
    if any(row.baseline for scenario in results for row in scenario.rows):
        images.append(("Each figure against its same-run baseline", _baselines(results)))
    _write_page(_section(results, summary, images, runs))


def _latency_cdf(scenario: Scenario) -> str:
    import matplotlib.pyplot as plt

    data = scenario.data
    fig, ax = plt.subplots(figsize=(8, 4.5))
    series = [("createPayment -> SUCCEEDED at subscriber", data.get("latencies_ms", [])),
              ("createPayment round trip", data.get("roundtrip_ms", [])),
              ("mutation's answer -> SUCCEEDED at subscriber", data.get("after_answer_ms", [])),
              ("one broker hop (baseline)", data.get("probe_ms", []))]
    payments = int(data.get("payments", 0))
    for label, values in series:
        if values:
            # Fractions of every scheduled payment: one never answered or seen keeps its
            # curve below 1.
            total = max(len(values), payments) if "hop" not in label else len(values)
            ordered = sorted(values)
            fraction = [(i + 1) / total for i in range(len(ordered))]
            ax.step(ordered, fraction, where="post", label=f"{label} ({len(ordered):,} of {total:,})")
    ax.axvline(50, color="red", linestyle="--", linewidth=1, label="target p99 50 ms")
    ax.axhline(0.99, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlim(left=0.5)
    ax.set_xlabel("milliseconds (log scale)")
    ax.set_ylabel("fraction of payments")
    ax.set_title(f"createPayment -> SUCCEEDED seen by a subscriber, "
                 f"{data.get('payments', 0):,} payments at {data.get('rate', 0):.0f}/s")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, "bench-subscribe-latency.png")


def _capacity(scenario: Scenario) -> str:
    import matplotlib.pyplot as plt

    levels: list[dict[str, Any]] = scenario.data.get("levels", [])
    sizes = [level["subscriptions"] for level in levels]
    fig, (memory, delivery) = plt.subplots(1, 2, figsize=(10, 4))
    memory.plot(sizes, [level["bytes_per_subscription"] / 1024 for level in levels], "o-")
    memory.axhline(100, color="red", linestyle="--", linewidth=1, label="target 100 KB")
    memory.set_xlabel("open subscriptions")
    memory.set_ylabel("API RSS per subscription (KB)")
    memory.set_ylim(bottom=0)
    memory.legend(fontsize=8)
    for key, label in (("succeeded_last_ms", "SUCCEEDED, last subscriber"),
                       ("succeeded_first_ms", "SUCCEEDED, first subscriber"),
                       ("pending_last_ms", "PENDING (no worker), last subscriber")):
        points = [(level["subscriptions"], event[key]) for level in levels
                  for event in level["events"] if event.get(key) is not None]
        if points:
            delivery.plot(*zip(*points), "o", label=label, alpha=0.8)
    delivery.axhline(1000, color="red", linestyle="--", linewidth=1, label="target 1 s")
    delivery.set_xlabel("open subscriptions")
    delivery.set_ylabel("ms from createPayment")
    delivery.set_ylim(bottom=0)
    delivery.legend(fontsize=8)
    for ax in (memory, delivery):
        ax.grid(True, alpha=0.3)
    fig.suptitle("One API process: memory per subscription and time to deliver one event to all")
    return _save(fig, "bench-subscription-capacity.png")


def _baselines(results: list[Scenario]) -> str:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    rows = [row for scenario in results for row in scenario.rows if row.baseline]
    fig, ax = plt.subplots(figsize=(11, 0.6 * len(rows) + 1.5))
    labels = [textwrap.fill(f"{row.scenario}: {row.metric}", 70) + f"\nvs {row.baseline_name}"
              for row in rows]
    ratios = [row.ratio or 0.0 for row in rows]
    colors = ["tab:red" if row.met is False else "tab:green" if row.met else "tab:blue"
              for row in rows]
    bars = ax.barh(range(len(rows)), ratios, color=colors)
    for bar, row in zip(bars, rows, strict=True):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2,
                f" {_number(row.value)} / {_number(row.baseline or 0.0)} {row.unit}",
                va="center", fontsize=7)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(min(0.5, min(ratios) / 2), max(2.0, max(ratios) * 8))  # room for the labels
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}x"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("value / same-run baseline (log scale); green: target met, red: missed")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    return _save(fig, "bench-baselines.png")


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _save(fig: Any, name: str) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(DOCS / name, dpi=110)
    plt.close(fig)
    return name


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    total = re.search(r"^MemTotal:\s*(\d+) kB", meminfo, re.MULTILINE)
    ram = f"{int(total.group(1)) / 2**20:.1f} GiB RAM" if total else "RAM unknown"
    return (f"{os.cpu_count()} CPUs ({model.group(1).strip() if model else platform.processor()}),"
            f" {ram}, Python {platform.python_version()}, {platform.platform()}")


def _section(results: list[Scenario], summary: str, images: list[tuple[str, str]],
             runs: str | None) -> str:
    lines = [BEGIN, "",
             runs or (f"Run of {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, scenarios: "
                      + ", ".join(f"`{s.name}`" for s in results) + "."), "",
             (f"**Machine:** {machine()}"
              + (" (where this page was written; each run's own is in its bench/results file)"
                 if runs else "")
              + ". The machine is shared with other work while the bench "
             "runs, so compare ratios to baselines rather than absolute figures."), "",
             summary, ""]
    notes = [(s.name, note) for s in results for note in s.notes]
    if notes:
        lines += ["### Notes", ""] + [f"- `{name}`: {note}" for name, note in notes] + [""]
    for title, name in images:
        lines += [f"### {title}", "", f"![{title}]({name})", ""]
    lines.append(END)
    return "\n".join(lines)


def _write_page(section: str) -> None:
    page = PAGE.read_text() if PAGE.exists() else HEADER
    if BEGIN in page and END in page:
        before, rest = page.split(BEGIN, 1)
        after = rest.split(END, 1)[1]
        page = before + section + after
    else:
        page = page.rstrip() + "\n\n" + section + "\n"
    PAGE.write_text(page)


def from_results() -> None:
    """Rewrite the plots and the page from ``bench/results/``: each scenario's latest run,
    so scenarios run separately (``--only``) still make one page."""
    import json

    from .__main__ import SCENARIOS, table
    from .common import RESULTS
    from .harness import Row

    results, times = [], []
    for name in SCENARIOS:
        path = RESULTS / f"{name}.json"
        if path.exists():
            saved = json.loads(path.read_text())
            results.append(Scenario(name, [Row(**row) for row in saved["rows"]],
                                    saved.get("data", {}),
                                    [f"(run of {saved['at'][:16]}) {note}"
                                     for note in saved.get("notes", [])]))
            times.append(f"`{name}` {saved['at'][:16].replace('T', ' ')}")
    write_report(results, table(results),
                 runs="Each scenario's latest run (UTC): " + ", ".join(times) + ".")


if __name__ == "__main__":
    from_results()
