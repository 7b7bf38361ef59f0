"""The embedded dev stack: real servers start, replicate, restart and leave nothing behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from paystream.devstack import (
    DevStack,
    StackAlreadyRunning,
    StackEndpoints,
    read_running_stack,
)
from paystream.devstack._broker import metadata_ok

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    with DevStack(tmp_path_factory.mktemp("devstack"), fsync=False) as dev:
        yield dev


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


def redis_ping(url: str) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port_of(url)), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def new_table(stack: DevStack) -> str:
    """A fresh table, once it has reached the replica too."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    stack.psql(f"CREATE TABLE {name} (v text)")
    eventually(lambda: stack.psql(f"SELECT to_regclass('{name}')", replica=True).strip() == name)
    return name


def on_replica(stack: DevStack, table: str, value: str) -> bool:
    return stack.psql(f"SELECT v FROM {table}", replica=True).split() == [value]


def test_endpoints_json_round_trip() -> None:
    endpoints = StackEndpoints("pg://a", "pg://b", "redis://c", "127.0.0.1:1")
    assert StackEndpoints.from_json(json.loads(json.dumps(endpoints.to_json()))) == endpoints


def test_endpoints_and_state_file(stack: DevStack) -> None:
    assert stack.endpoints is not None
    assert stack.endpoints.primary_url.startswith("postgresql+asyncpg://postgres@127.0.0.1:")
    assert stack.endpoints.primary_url.endswith("/paystream")
    assert read_running_stack(stack.root) == stack.endpoints
    assert json.loads((stack.root / "stack.json").read_text())["pid"] == os.getpid()
    assert stack.psql("SHOW max_connections").strip() == "200"
    assert stack.psql("SELECT pg_is_in_recovery()", replica=True).strip() == "t"


def test_replica_receives_primary_writes(stack: DevStack) -> None:
    table = new_table(stack)
    stack.psql(f"INSERT INTO {table} VALUES ('hello')")
    eventually(lambda: on_replica(stack, table, "hello"))


def test_replica_refuses_writes(stack: DevStack) -> None:
    table = new_table(stack)
    with pytest.raises(RuntimeError, match="read-only transaction"):
        stack.psql(f"INSERT INTO {table} VALUES ('no')", replica=True)


def test_second_start_on_same_root_is_refused(stack: DevStack) -> None:
    with pytest.raises(StackAlreadyRunning, match=f"pid {os.getpid()}"):
        DevStack(stack.root).start()
    assert stack.psql("SELECT 1").strip() == "1"  # the running stack is untouched


def test_redis_restarts_on_same_port(stack: DevStack) -> None:
    assert stack.endpoints is not None
    url = stack.endpoints.redis_url
    stack.stop_redis()
    assert not redis_ping(url)
    stack.start_redis()
    assert redis_ping(url)


def test_broker_restarts_on_same_port(stack: DevStack) -> None:
    assert stack.endpoints is not None
    stack.stop_broker()
    stack.start_broker()
    assert metadata_ok(stack.endpoints.kafka_bootstrap)


def test_replica_catches_up_after_restart(stack: DevStack) -> None:
    table = new_table(stack)
    stack.stop_replica()
    with pytest.raises(RuntimeError):
        stack.psql("SELECT 1", replica=True)
    stack.psql(f"INSERT INTO {table} VALUES ('while-down')")
    stack.start_replica()
    eventually(lambda: on_replica(stack, table, "while-down"))


def test_paused_replay_hides_new_rows_until_resumed(stack: DevStack) -> None:
    table = new_table(stack)
    stack.pause_replica_replay()
    try:
        stack.psql(f"INSERT INTO {table} VALUES ('later')")
        time.sleep(0.3)
        assert stack.psql(f"SELECT count(*) FROM {table}", replica=True).strip() == "0"
    finally:
        stack.resume_replica_replay()
    eventually(lambda: on_replica(stack, table, "later"))


def all_pids(stack: DevStack) -> set[int]:
    pids = set(stack.server_pids().values())
    for pid in list(pids):
        pids.update(child.pid for child in psutil.Process(pid).children(recursive=True))
    return pids


def still_running(pids: set[int] | list[int], timeout: float) -> list[psutil.Process]:
    """The processes among `pids` that have not exited within `timeout` seconds."""
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout)
    # This machine's init does not reap orphans: an unreaped zombie has exited all the same.
    return [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_stop_leaves_no_process_and_restart_keeps_data(tmp_path: Path) -> None:
    with DevStack(tmp_path, fsync=False) as dev:
        dev.psql("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('yes')")
        pids = all_pids(dev)
        assert len(pids) > 4  # the four servers and PostgreSQL's helper processes
    assert not still_running(pids, 5)
    assert not (tmp_path / "stack.json").exists()
    assert read_running_stack(tmp_path) is None

    with DevStack(tmp_path, fsync=False) as dev:
        assert dev.psql("SELECT v FROM kept").strip() == "yes"
        eventually(lambda: dev.psql("SELECT v FROM kept", replica=True).strip() == "yes")


def test_failed_start_shows_the_log_and_stops_the_rest(tmp_path: Path) -> None:
    with DevStack(tmp_path, fsync=False):
        pass
    with (tmp_path / "pg-primary" / "postgresql.conf").open("a") as conf:
        conf.write("bogus_setting = 1\n")
    broken = DevStack(tmp_path, fsync=False)
    with pytest.raises(RuntimeError, match='unrecognized configuration parameter "bogus_setting"'):
        broken.start()
    assert broken.server_pids() == {}  # Redis and the broker, started first, were stopped
    assert read_running_stack(tmp_path) is None


CHILD = """
import json, sys, time
from pathlib import Path
from paystream.devstack import DevStack
dev = DevStack(Path(sys.argv[1]), fsync=False)
dev.start()
dev.psql("CREATE TABLE survived (v int); INSERT INTO survived VALUES (7)")
print(json.dumps(sorted(dev.server_pids().values())), flush=True)
time.sleep(600)
"""


def test_killed_parent_takes_its_servers_along(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        pids = json.loads(child.stdout.readline())
        assert len(pids) == 4
        child.send_signal(signal.SIGKILL)
        child.wait(5)
        assert not still_running(pids, 10)
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    # The stale stack.json and postmaster.pid the killed run left behind do not get in the way.
    assert (tmp_path / "stack.json").exists()
    with DevStack(tmp_path, fsync=False) as dev:
        assert dev.psql("SELECT v FROM survived").strip() == "7"
