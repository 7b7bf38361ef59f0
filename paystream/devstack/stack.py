"""DevStack: PostgreSQL primary + streaming replica, Redis and a Kafka-protocol broker."""

from __future__ import annotations

import atexit
import fcntl
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import Self

from . import _pginstall, _postgres
from ._broker import BrokerServer
from ._postgres import PostgresServer
from ._process import RunAs, ServerProcess, free_port, log
from ._redis import RedisServer
from ._state import (
    StackAlreadyRunning,
    StackEndpoints,
    read_state,
    remove_state,
    write_state,
)


class DevStack:
    """Starts and stops real servers for `paystream dev` and the tests; data lives under root.

    Every server is a direct child in its own session, tied to this process with a parent
    death signal, so none outlives it (stop(), atexit, Ctrl-C, SIGTERM or SIGKILL). Children
    are forked from the main thread or from a long-lived helper thread, because the kernel
    sends that signal when the forking *thread* exits.

    As root, PostgreSQL runs as the system user ``paystream-pg`` from a copy of the binaries
    in /var/tmp, and the directories leading to root get o+x so that user can reach its data.
    """

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        """Prepare a stack under `root` (created if missing); fsync=False trades safety for speed."""
        self.root = Path(root).absolute()
        self.fsync = fsync
        self.endpoints: StackEndpoints | None = None
        self._lock = threading.RLock()
        self._stopping = False
        self._stop_requested = False
        self._primary: PostgresServer | None = None
        self._replica: PostgresServer | None = None
        self._redis: RedisServer | None = None
        self._broker: BrokerServer | None = None

    @cached_property
    def _run_as(self) -> RunAs | None:
        return _pginstall.system_user()

    @cached_property
    def bin_dir(self) -> Path:
        """The PostgreSQL bin directory the servers run from (reachable by their user)."""
        return _pginstall.install_dir(self._run_as) / "bin"

    # -- start and stop -------------------------------------------------------------------

    def start(self) -> StackEndpoints:
        """Start all four servers, wait until each accepts connections, return the endpoints.

        Raises StackAlreadyRunning if a live process runs a stack on this root, and
        RuntimeError (with the tail of its log) if a server fails to start; then whatever
        had started is stopped again.
        """
        with self._lock:
            if self.endpoints is not None:
                return self.endpoints
            self._stop_requested = False
            self.root.mkdir(parents=True, exist_ok=True)
            began = time.time()
            with self._root_lock():
                state = read_state(self.root)
                if state is not None:
                    raise StackAlreadyRunning(self.root, *state)
                atexit.register(self.stop)
                try:
                    self.endpoints = self._start_servers()
                except BaseException:
                    self.stop()
                    raise
                write_state(self.root, self.endpoints, began)
            log.info("dev stack up in %.1f s under %s", time.time() - began, self.root)
            return self.endpoints

    def _start_servers(self) -> StackEndpoints:
        logs = self.root / "logs"
        run_as = self._run_as
        bin_dir = self.bin_dir
        if run_as is not None:
            _pginstall.grant_traverse(self.root)
        # Redis and the broker boot while PostgreSQL initialises.
        self._redis = RedisServer(
            work_dir=self.root / "redis", log_path=logs / "redis.log", port=free_port()
        )
        self._redis.spawn()
        self._broker = BrokerServer(log_path=logs / "broker.log", port=free_port())
        self._broker.spawn()
        self._check_stop()

        primary_dir = self.root / "pg-primary"
        replica_dir = self.root / "pg-replica"
        fresh = not (primary_dir / "PG_VERSION").exists()
        if fresh:
            log.info("initialising PostgreSQL in %s", primary_dir)
            _postgres.initdb(bin_dir, primary_dir, run_as, self.fsync)
            shutil.rmtree(replica_dir, ignore_errors=True)  # a standby of an older cluster
        _pginstall.own_dir(primary_dir, run_as)
        self._primary = PostgresServer(
            "paystream-primary",
            data_dir=primary_dir,
            bin_dir=bin_dir,
            log_path=logs / "pg-primary.log",
            port=free_port(),
            run_as=run_as,
            fsync=self.fsync,
        )
        self._primary.spawn()
        self._primary.wait_ready()
        self._check_stop()
        _postgres.ensure_database(self._primary)

        if not (replica_dir / "PG_VERSION").exists():
            log.info("cloning the replica into %s", replica_dir)
            _postgres.clone_replica(self._primary, replica_dir)
        _pginstall.own_dir(replica_dir, run_as)
        self._replica = PostgresServer(
            "paystream-replica",
            data_dir=replica_dir,
            bin_dir=bin_dir,
            log_path=logs / "pg-replica.log",
            port=free_port(),
            run_as=run_as,
            fsync=self.fsync,
            primary_port=self._primary.port,
        )
        self._replica.spawn()
        self._check_stop()
        self._redis.wait_ready()
        self._broker.wait_ready()
        self._replica.wait_ready()
        _postgres.wait_streaming(self._replica)
        self._check_stop()
        return self._endpoints()

    def _endpoints(self) -> StackEndpoints:
        assert self._primary and self._replica and self._redis and self._broker
        pg = "postgresql+asyncpg://postgres@127.0.0.1:{}/" + _postgres.DATABASE
        return StackEndpoints(
            primary_url=pg.format(self._primary.port),
            replica_url=pg.format(self._replica.port),
            redis_url=f"redis://127.0.0.1:{self._redis.port}/0",
            kafka_bootstrap=self._broker.bootstrap,
        )

    def _check_stop(self) -> None:
        if self._stop_requested:
            raise RuntimeError("DevStack.stop() was called while the stack was starting")

    @contextmanager
    def _root_lock(self) -> Iterator[None]:
        # Serialises the stack.json check-and-write of concurrent starts on one root.
        with (self.root / ".stack.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def stop(self) -> None:
        """Stop everything this stack started: replica, then primary, Redis and the broker.

        Idempotent, and safe from an atexit hook or a signal handler (a call that interrupts
        a stop in progress returns at once; a call during start() makes start() give up).
        """
        self._stop_requested = True  # before the lock: a start() in another thread gives up
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            try:
                for other in (self._redis, self._broker):
                    if other is not None:
                        other.signal_stop()  # these two need no order: let them go now
                for server in (self._replica, self._primary, self._redis, self._broker):
                    if server is not None:
                        server.stop()
                self.endpoints = None
                remove_state(self.root)
                atexit.unregister(self.stop)
            finally:
                self._stopping = False

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- fault injection (each call returns once the change has taken effect) --------------

    def _server(self, server: ServerProcess | None) -> ServerProcess:
        if server is None or self.endpoints is None:
            raise RuntimeError("the dev stack is not running")
        return server

    def stop_replica(self) -> None:
        """Stop the replica (fast shutdown); its data stays."""
        with self._lock:
            self._server(self._replica).stop()

    def start_replica(self) -> None:
        """Start the replica again on the same port; returns once it streams again."""
        with self._lock:
            replica = self._server(self._replica)
            if not replica.running:
                replica.spawn()
                replica.wait_ready(retry_port=False)
            assert self._replica is not None
            _postgres.wait_streaming(self._replica)

    def stop_redis(self) -> None:
        """Stop Redis (its data is a cache and is lost)."""
        with self._lock:
            self._server(self._redis).stop()

    def start_redis(self) -> None:
        """Start an empty Redis again on the same port; returns once it answers PING."""
        with self._lock:
            self._restart(self._server(self._redis))

    def stop_broker(self) -> None:
        """Stop the broker. Its storage is in memory: every topic and message is lost."""
        with self._lock:
            self._server(self._broker).stop()

    def start_broker(self) -> None:
        """Start an empty broker on the same port; returns once it serves metadata."""
        with self._lock:
            self._restart(self._server(self._broker))

    @staticmethod
    def _restart(server: ServerProcess) -> None:
        if not server.running:
            server.spawn()
            server.wait_ready(retry_port=False)

    def pause_replica_replay(self) -> None:
        """Pause WAL replay on the replica (it keeps receiving); returns once paused."""
        self._set_replay("pause", "paused")

    def resume_replica_replay(self) -> None:
        """Resume WAL replay on the replica; returns once it replays again."""
        self._set_replay("resume", "not paused")

    def _set_replay(self, action: str, wanted: str) -> None:
        # Asked again until the state is reached: when replay resumes past WAL that waited
        # longer than max_standby_streaming_delay, the standby cancels conflicting sessions at
        # once, the one asking included ("canceling statement due to conflict with recovery"),
        # and a resume cancelled that way left the replica paused for the rest of the run.
        deadline = time.monotonic() + 10.0
        while True:
            try:
                self.psql(f"SELECT pg_wal_replay_{action}()", replica=True)
                if self.psql("SELECT pg_get_wal_replay_pause_state()",
                             replica=True).strip() == wanted:
                    return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
            if time.monotonic() > deadline:
                raise RuntimeError(f"replica replay is not {wanted} after 10 s")
            time.sleep(0.02)

    def psql(self, sql: str, *, replica: bool = False) -> str:
        """Run SQL on the paystream database with the shipped psql; return its stdout.

        Output is unaligned without headers or command tags (``psql -XAtq``): one row a line,
        columns separated by ``|``. Raises RuntimeError with psql's error text on failure.
        """
        server = self._server(self._replica if replica else self._primary)
        assert isinstance(server, PostgresServer)
        return server.psql(sql)

    def server_pids(self) -> dict[str, int]:
        """The pids of the running servers by name (for tests and diagnostics)."""
        servers = (self._primary, self._replica, self._redis, self._broker)
        return {s.name: s.pid for s in servers if s is not None and s.running and s.pid}
