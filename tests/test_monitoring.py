"""The alert rules and the Grafana dashboard in deploy/ are valid and name only series that
paystream exports.

``promtool check rules`` / ``check config`` (Debian's ``prometheus`` package) validate the
Prometheus files; skipped when promtool is not installed, except in CI (``CI`` set), where
that fails. The structural checks and the metric-name checks need nothing installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from paystream.metrics import REGISTRY  # importing it registers every series

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "paystream.json"
OPERATIONS = ROOT / "docs" / "operations.md"

# Series Prometheus makes itself for every target, not paystream.
PROMETHEUS_OWN = {"up"}

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
             "unless", "bool", "offset", "inf", "nan"}
_NOT_SELECTORS = [
    re.compile(r'"(?:[^"\\]|\\.)*"'),  # strings (label values, regexes)
    re.compile(r"\{[^}]*\}"),  # label matchers
    re.compile(r"\[[^\]]*\]"),  # ranges and subqueries
    # Label lists of grouping and matching clauses: `by (le)` names a label, not a series.
    re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"),
    re.compile(r"\$\w+"),  # Grafana variables ($__rate_interval)
]
_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def series_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions and keywords left out)."""
    for pattern in _NOT_SELECTORS:
        expr = pattern.sub(" ", expr)
    names = set()
    for match in _NAME.finditer(expr):
        rest = expr[match.end():].lstrip()
        before = expr[:match.start()]
        if rest.startswith("("):  # a function or aggregation
            continue
        if before and (before[-1].isdigit() or before[-1] == "."):  # 1e3, 5m in a number
            continue
        if match.group().lower() not in _KEYWORDS:
            names.add(match.group())
    return names


def exported_names() -> set[str]:
    """Every sample name paystream.metrics can expose, whether or not a label set has been
    recorded yet: counters end in _total, histograms in _bucket, _count and _sum."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum",
                                                                  "_created"),
                "gauge": ("",), "summary": ("", "_count", "_sum", "_created")}
    names = set()
    for family in REGISTRY.collect():
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def dashboard_exprs() -> list[str]:
    return [target["expr"] for panel in dashboard()["panels"] for target in panel["targets"]]


def promtool() -> str:
    binary = shutil.which("promtool")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is not installed (CI must check the alert rules)")
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return binary


def test_promtool_accepts_the_rules_and_the_config() -> None:
    binary = promtool()
    for command in (["check", "rules", str(ALERTS)], ["check", "config", str(PROMETHEUS)]):
        done = subprocess.run([binary, *command], capture_output=True, text=True, timeout=60,
                              check=False)
        assert done.returncode == 0, done.stdout + done.stderr


def test_every_rule_is_complete() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}
        assert rule["expr"].strip() and rule["annotations"]["summary"], rule["alert"]
        assert rule["labels"]["severity"] in {"page", "warn"}, rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]


def test_the_failure_modes_of_operations_md_have_alerts() -> None:
    covered = {name for rule in alert_rules() for name in series_names(rule["expr"])}
    for series in ("paystream_consumer_lag", "paystream_outbox_oldest_unsent_seconds",
                   "paystream_dlq_messages", "paystream_ready", "paystream_graphql_errors_total",
                   "paystream_webhook_oldest_due_seconds", "paystream_webhook_attempts_total"):
        assert series in covered, series


def test_every_alert_is_explained_in_operations_md() -> None:
    text = OPERATIONS.read_text()
    for rule in alert_rules():
        assert f"`{rule['alert']}`" in text, rule["alert"]


def test_alerts_and_panels_name_only_exported_series() -> None:
    exported = exported_names() | PROMETHEUS_OWN
    exprs = [rule["expr"] for rule in alert_rules()] + dashboard_exprs()
    for expr in exprs:
        names = series_names(expr)
        assert names, expr
        assert names <= exported, (expr, sorted(names - exported))


def test_the_dashboard_shows_what_the_issue_asks_for() -> None:
    shown = {name for expr in dashboard_exprs() for name in series_names(expr)}
    assert {
        "paystream_graphql_requests_total",  # request rate
        "paystream_graphql_request_seconds_bucket",  # latency percentiles
        "paystream_graphql_errors_total",  # errors by code
        "paystream_payments_accepted_total",  # createPayment accepted/s
        "paystream_consumer_lag",
        "paystream_outbox_unsent", "paystream_outbox_oldest_unsent_seconds",
        "paystream_dlq_messages",
        "paystream_open_subscriptions",
        "paystream_cache_lookups_total",  # hit ratio
        # The webhook senders: attempts by outcome, the schedule's backlog, delivery lag,
        # disabled endpoints.
        "paystream_webhook_attempts_total", "paystream_webhook_schedule",
        "paystream_webhook_oldest_due_seconds", "paystream_webhook_delivery_lag_seconds_bucket",
        "paystream_webhook_endpoints",
    } <= shown
    board = dashboard()
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)) and board["uid"]
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "prometheus", panel["title"]
    datasource = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert [d["uid"] for d in datasource["datasources"]] == ["prometheus"]


def test_series_names_reads_promql() -> None:
    assert series_names(
        'histogram_quantile(0.99, sum by (le) (rate(a_seconds_bucket{code=~"x|y"}[5m])))'
    ) == {"a_seconds_bucket"}
    assert series_names("sum(rate(b_total[$__rate_interval])) / sum(rate(c_total[5m])) > 0.05") \
        == {"b_total", "c_total"}
    assert series_names('up{job=~"paystream-.*"} == 0 and on (instance) d') == {"up", "d"}
    assert series_names("deriv(sum(max by (partition) (lag))[10m:1m]) > 1e3") == {"lag"}
    # The check can fail: a series paystream does not export is reported.
    assert "paystream_nonexistent" not in exported_names()
    assert "paystream_graphql_requests" not in exported_names()  # a counter needs _total
    assert "paystream_graphql_requests_total" in exported_names()
