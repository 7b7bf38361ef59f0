"""docker-compose.yml is valid (``docker-compose config``, which parses it without an engine) and
wires every service DESIGN.md section 8 needs; deploy/nginx.conf passes websockets.

Skipped when docker-compose is not installed, except in CI (``CI`` set), where that fails."""

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

from paystream.config import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
PAYSTREAM_ROLES = ("migrate", "api", "worker")
LONG_RUNNING = ("kafka", "postgres-primary", "postgres-replica", "redis", "api", "worker", "nginx")
MONITORING = ("prometheus", "grafana")  # only with `--profile monitoring`
TRACING = ("otel-collector", "jaeger")  # only with `--profile tracing`
TRACED_ROLES = ("api", "worker", "webhooks")
# The variables the file interpolates: only they may change its meaning.
INTERPOLATED = ("POSTGRES_PASSWORD", "REPLICATION_PASSWORD", "API_WORKERS", "HTTP_PORT",
                "PROMETHEUS_PORT", "GRAFANA_PORT", "GRAFANA_ADMIN_PASSWORD",
                "WEBHOOK_ENCRYPTION_KEY", "OTEL_ENDPOINT", "OTEL_COLLECTOR_PORT", "JAEGER_PORT")


def resolve(**variables: str) -> dict[str, Any]:
    """The compose file as docker-compose resolves it (anchors, defaults, interpolation),
    with ``variables`` set and no other of those it interpolates."""
    binary = shutil.which("docker-compose")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is not installed (CI must check the compose file)")
        pytest.skip("docker-compose is not installed")
    env = {k: v for k, v in os.environ.items() if k not in INTERPOLATED} | variables
    done = subprocess.run([binary, "-f", str(COMPOSE), "config"], check=False, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    parsed = yaml.safe_load(done.stdout)
    assert isinstance(parsed, dict)
    return parsed


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    """The file as it runs by default (no variable set)."""
    return resolve()


@pytest.fixture(scope="module")
def traced() -> dict[str, Any]:
    """The file with tracing turned on, as docs/operations.md says to."""
    return resolve(OTEL_ENDPOINT="http://otel-collector:4318")


def service(config: dict[str, Any], name: str) -> dict[str, Any]:
    services = config["services"]
    assert name in services, f"service {name} missing; have {sorted(services)}"
    return dict(services[name])


def depends(config: dict[str, Any], name: str) -> dict[str, str]:
    """``{dependency: condition}`` of a service."""
    value = service(config, name).get("depends_on") or {}
    if isinstance(value, list):  # short form: no condition
        return {dep: "service_started" for dep in value}
    return {dep: spec.get("condition", "service_started") for dep, spec in value.items()}


def command_text(spec: dict[str, Any]) -> str:
    parts = [*(spec.get("entrypoint") or []), *(spec.get("command") or [])]
    return " ".join(parts) if isinstance(parts, list) else str(parts)


def test_every_service_of_the_design_is_present(config) -> None:
    assert set(LONG_RUNNING) | {"migrate"} <= set(config["services"])
    assert not any("zookeeper" in name for name in config["services"])


def test_redis_runs_without_persistence(config) -> None:
    """A restarted Redis must come back empty: a snapshot or append-only file could restore
    cache entries older than what was written since."""
    redis = config["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "no"
    assert command[command.index("--save") + 1] == ""
    assert not redis.get("volumes")


def test_kafka_runs_in_kraft_mode(config) -> None:
    kafka = service(config, "kafka")
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"]
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] == "CONTROLLER"
    assert not any(k.startswith("KAFKA_ZOOKEEPER") for k in env)


def test_topic_partitions_and_replication_are_set_and_documented(config) -> None:
    for role in PAYSTREAM_ROLES:
        env = service(config, role)["environment"]
        assert int(env["PAYSTREAM_KAFKA__PARTITIONS"]) >= 2, role  # >= the worker replicas
        assert int(env["PAYSTREAM_KAFKA__REPLICATION_FACTOR"]) >= 1, role
    partitions = int(service(config, "worker")["environment"]["PAYSTREAM_KAFKA__PARTITIONS"])
    assert partitions >= service(config, "worker")["deploy"]["replicas"]
    raw = COMPOSE.read_text()
    for topic in ("payments.requested ", "payments.status ", "payments.requested.dlq "):
        assert re.search(rf"#.*{re.escape(topic)}.*partition", raw), f"{topic} undocumented"


def test_postgres_primary_and_streaming_replica(config) -> None:
    primary = service(config, "postgres-primary")
    assert "wal_level=replica" in command_text(primary)
    assert "healthcheck" in primary
    replica = service(config, "postgres-replica")
    clone = command_text(replica)
    # A streaming standby cloned from the primary: -R writes primary_conninfo and standby.signal.
    assert "pg_basebackup" in clone and "-h postgres-primary" in clone and " -R " in clone
    assert depends(config, "postgres-replica") == {"postgres-primary": "service_healthy"}
    assert "pg_is_in_recovery" in " ".join(replica["healthcheck"]["test"])


def test_migration_runs_once_before_api_and_worker(config) -> None:
    migrate = service(config, "migrate")
    assert migrate["command"] == ["migrate"]
    assert migrate.get("restart", "no") == "no"
    assert "deploy" not in migrate or migrate["deploy"].get("replicas", 1) == 1
    assert depends(config, "migrate") == {"kafka": "service_healthy",
                                          "postgres-primary": "service_healthy"}
    for role in ("api", "worker"):
        needs = depends(config, role)
        assert needs.get("migrate") == "service_completed_successfully", role
        for server in ("postgres-primary", "redis", "kafka"):
            assert needs.get(server) == "service_healthy", (role, server)
    assert depends(config, "api").get("postgres-replica") == "service_healthy"


def test_two_api_and_two_worker_replicas_of_one_image(config) -> None:
    images = {service(config, role)["image"] for role in PAYSTREAM_ROLES}
    assert len(images) == 1
    for role in PAYSTREAM_ROLES:
        assert service(config, role)["build"]["context"] == str(ROOT)
    for role in ("api", "worker"):
        assert service(config, role)["deploy"]["replicas"] >= 2, role
        # A published port would stop a second replica from starting.
        assert "ports" not in service(config, role), role
    assert service(config, "api")["command"][0] == "api"
    assert service(config, "worker")["command"][0] == "worker"


@pytest.mark.parametrize("role", PAYSTREAM_ROLES)
def test_settings_come_from_the_environment_and_validate(config, role, monkeypatch) -> None:
    env = service(config, role)["environment"]
    for name in list(os.environ):
        if name.startswith("PAYSTREAM_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    settings = Settings()
    assert settings.dev is False
    assert settings.kafka.enable_idempotence is True  # Apache Kafka: the idempotent producer
    assert settings.kafka.bootstrap_servers == "kafka:9092"
    assert "@postgres-primary:" in settings.db.primary_url
    assert [u for u in settings.db.replica_urls if "@postgres-replica:" in u]
    assert settings.redis.url.startswith("redis://redis:")
    assert json.loads(env["PAYSTREAM_DB__REPLICA_URLS"]) == settings.db.replica_urls


def test_every_long_running_service_has_a_health_check(config) -> None:
    for name in LONG_RUNNING + MONITORING:
        check = service(config, name).get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), name
    # The worker's check reads the file its command tells it to touch.
    worker = service(config, "worker")
    heartbeat = worker["command"][worker["command"].index("--heartbeat-file") + 1]
    assert heartbeat in " ".join(worker["healthcheck"]["test"])


def test_load_balancer_passes_websockets_to_the_api(config) -> None:
    nginx = service(config, "nginx")
    assert depends(config, "nginx") == {"api": "service_healthy"}
    assert nginx.get("ports"), "the load balancer is the published entry point"
    mounts = [str(v) for v in nginx.get("volumes", [])]
    assert any("deploy/nginx.conf" in m for m in mounts), mounts
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    assert re.search(r"server\s+api:8000", conf)
    assert re.search(r"proxy_http_version\s+1\.1;", conf)
    assert re.search(r"proxy_set_header\s+Upgrade\s+\$http_upgrade;", conf)
    assert re.search(r"proxy_set_header\s+Connection\s+\$connection_upgrade;", conf)
    assert re.search(r"map\s+\$http_upgrade\s+\$connection_upgrade", conf)


def test_monitoring_profile_scrapes_every_api_worker_and_sender_replica(config) -> None:
    for name in MONITORING:
        assert service(config, name).get("profiles") == ["monitoring"], name
    for name in LONG_RUNNING + ("migrate", "webhooks"):
        assert not service(config, name).get("profiles"), f"{name} must run without a profile"
    prometheus = service(config, "prometheus")
    assert any("deploy/prometheus:/etc/prometheus" in str(v) for v in prometheus["volumes"])
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {(sd["names"][0], sd["port"]) for job in scrape["scrape_configs"]
               for sd in job.get("dns_sd_configs", [])}
    # DNS service discovery: one target per replica of the service name.
    worker = service(config, "worker")
    port = int(worker["environment"]["PAYSTREAM_METRICS__WORKER_PORT"])
    assert worker["environment"]["PAYSTREAM_METRICS__WORKER_HOST"] == "0.0.0.0"
    assert str(port) in [str(p) for p in worker.get("expose", [])]
    api_port = int(service(config, "api")["environment"]["PAYSTREAM_API__PORT"])
    webhooks = service(config, "webhooks")
    webhooks_port = int(webhooks["environment"]["PAYSTREAM_METRICS__WEBHOOKS_PORT"])
    assert webhooks["environment"]["PAYSTREAM_METRICS__WEBHOOKS_HOST"] == "0.0.0.0"
    assert str(webhooks_port) in [str(p) for p in webhooks.get("expose", [])]
    assert targets == {("api", api_port), ("worker", port), ("webhooks", webhooks_port)}
    grafana = service(config, "grafana")
    mounts = " ".join(str(v) for v in grafana["volumes"])
    assert "deploy/grafana/provisioning:/etc/grafana/provisioning" in mounts
    assert "deploy/grafana/dashboards:/var/lib/grafana/dashboards" in mounts
    # Published on localhost only: metrics and dashboards are not for the public internet.
    for name in MONITORING:
        for port_spec in service(config, name)["ports"]:
            # docker-compose 1.x prints "ip:host:container/proto"; 2.x a mapping.
            host_ip = port_spec.get("host_ip") if isinstance(port_spec, dict) \
                else str(port_spec).split(":")[0]
            assert host_ip == "127.0.0.1", (name, port_spec)


def settings_of(config: dict[str, Any], role: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The role's settings from its environment in ``config`` (and nothing else's)."""
    for name in list(os.environ):
        if name.startswith(("PAYSTREAM_", "OTEL_")):
            monkeypatch.delenv(name)
    for name, value in service(config, role)["environment"].items():
        monkeypatch.setenv(name, str(value))
    return Settings()


@pytest.mark.parametrize("role", TRACED_ROLES)
def test_tracing_is_off_by_default(config, role, monkeypatch) -> None:
    assert settings_of(config, role, monkeypatch).otel.endpoint == ""


@pytest.mark.parametrize("role", TRACED_ROLES)
def test_the_tracing_profile_sends_every_role_to_the_collector(traced, role, monkeypatch) -> None:
    """`OTEL_ENDPOINT=http://otel-collector:4318 docker compose --profile tracing up`: the roles
    send spans to the collector, which sends them to Jaeger; the UI is on localhost."""
    assert settings_of(traced, role, monkeypatch).otel.endpoint == "http://otel-collector:4318"
    for name in TRACING:
        assert service(traced, name).get("profiles") == ["tracing"], name
    collector = service(traced, "otel-collector")
    assert "4318" in [str(p) for p in collector.get("expose", [])]
    mounts = " ".join(str(v) for v in collector["volumes"])
    assert "deploy/otel/collector.yaml:/etc/otelcol/collector.yaml" in mounts
    assert "--config=/etc/otelcol/collector.yaml" in collector["command"]
    pipeline = yaml.safe_load((ROOT / "deploy" / "otel" / "collector.yaml").read_text())
    assert pipeline["receivers"]["otlp"]["protocols"]["http"]["endpoint"] == "0.0.0.0:4318"
    traces = pipeline["service"]["pipelines"]["traces"]
    assert traces["receivers"] == ["otlp"]
    assert {pipeline["exporters"][e]["endpoint"] for e in traces["exporters"]} == {"jaeger:4317"}
    assert all(p in pipeline["processors"] for p in traces["processors"])
    jaeger = service(traced, "jaeger")
    assert "4317" in [str(p) for p in jaeger.get("expose", [])]
    for name in TRACING:
        for port_spec in service(traced, name)["ports"]:
            host_ip = port_spec.get("host_ip") if isinstance(port_spec, dict) \
                else str(port_spec).split(":")[0]
            assert host_ip == "127.0.0.1", (name, port_spec)
    # docker-compose 1.x: "127.0.0.1:16686:16686/tcp"; 2.x: {"target": 16686, ...}.
    ui = [p for p in jaeger["ports"]
          if str(p.get("target") if isinstance(p, dict) else p).split("/")[0].endswith(":16686")
          or (isinstance(p, dict) and p.get("target") == 16686)]
    assert ui, jaeger["ports"]
