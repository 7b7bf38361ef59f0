"""PostgreSQL servers: the primary, the streaming replica cloned from it, psql."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import psutil  # type: ignore[import-untyped, unused-ignore]  # types-psutil is optional

from ._pginstall import own_dir
from ._process import RunAs, ServerProcess, log, run_tool

DATABASE = "paystream"
SLOT = "paystream_replica"


def clear_stale_pidfile(data_dir: Path) -> None:
    """Remove postmaster.pid when no postgres runs under that pid any more.

    PostgreSQL handles a dead pid itself, but after a SIGKILL in a container the old pid is
    often reused by an unrelated process, and then it refuses to start.
    """
    pidfile = data_dir / "postmaster.pid"
    try:
        pid = int(pidfile.read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return
    try:
        alive = psutil.Process(pid).name() == "postgres"
    except psutil.Error:
        alive = False
    if alive:
        raise RuntimeError(f"a postgres (pid {pid}) still runs on {data_dir}; stop it first")
    log.info("removing stale %s (pid %s is gone)", pidfile, pid)
    pidfile.unlink(missing_ok=True)


def settings(port: int, fsync: bool) -> dict[str, str]:
    """Server settings shared by primary and replica (a standby needs the same limits)."""
    durable = "on" if fsync else "off"
    return {
        "port": str(port),
        "listen_addresses": "127.0.0.1",
        "unix_socket_directories": "",  # TCP only: socket paths under a deep root overflow
        "max_connections": "200",
        "wal_level": "replica",
        "max_wal_senders": "10",
        "max_replication_slots": "10",
        "fsync": durable,
        "synchronous_commit": durable,
        "full_page_writes": durable,
    }


class PostgresServer(ServerProcess):
    """`postgres -D dir -c ...` run directly (not via pg_ctl), so it stays our child."""

    stop_signal = signal.SIGINT  # fast shutdown: SIGTERM ("smart") waits for clients
    death_signal = signal.SIGINT
    stop_timeout = 10.0

    def __init__(
        self,
        name: str,
        *,
        data_dir: Path,
        bin_dir: Path,
        log_path: Path,
        port: int,
        run_as: RunAs | None,
        fsync: bool,
        primary_port: int | None = None,
    ) -> None:
        super().__init__(name, log_path, port, run_as)
        self.data_dir = data_dir
        self.bin_dir = bin_dir
        self.fsync = fsync
        self.primary_port = primary_port

    @property
    def cwd(self) -> Path:
        return self.data_dir.parent

    def argv(self) -> list[str]:
        options = settings(self.port, self.fsync)
        options["cluster_name"] = self.name
        if self.primary_port is not None:
            # Given on each start (the command line beats postgresql.auto.conf), because
            # the primary may get another port than the one pg_basebackup -R wrote down.
            options["hot_standby"] = "on"
            options["primary_slot_name"] = SLOT
            options["primary_conninfo"] = (
                f"host=127.0.0.1 port={self.primary_port} user=postgres "
                f"application_name={self.name}"
            )
        argv = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir)]
        for key, value in options.items():
            argv += ["-c", f"{key}={value}"]
        return argv

    def spawn(self) -> None:
        clear_stale_pidfile(self.data_dir)
        super().spawn()

    def is_ready(self) -> bool:
        """postmaster.pid, written by our child, says "ready" (primary) or "standby"."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return (
            len(lines) >= 8
            and lines[0].strip() == str(self.pid)
            and lines[7].strip() in ("ready", "standby")
        )

    def psql(self, sql: str, database: str = DATABASE) -> str:
        """Run SQL through the shipped psql; return its unaligned, header-less stdout."""
        return psql(self.bin_dir, self.port, sql, database)


def psql(bin_dir: Path, port: int, sql: str, database: str = DATABASE) -> str:
    """Run SQL (several statements allowed) on 127.0.0.1:port; raise RuntimeError on error."""
    return run_tool(
        [
            str(bin_dir / "psql"),
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            "postgres",
            "-d",
            database,
            "-f",
            "-",
        ],
        input_text=sql,
    )


def initdb(bin_dir: Path, data_dir: Path, run_as: RunAs | None, fsync: bool) -> None:
    """Create a cluster in `data_dir`, via a temporary directory so a failure leaves none."""
    partial = data_dir.with_name(data_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    own_dir(partial, run_as)
    argv = [
        str(bin_dir / "initdb"),
        "-D",
        str(partial),
        "--auth=trust",
        "-U",
        "postgres",
        "--encoding=UTF8",
        "--locale=C",
        "--no-instructions",
    ]
    if not fsync:
        argv.append("--no-sync")
    run_tool(argv, run_as=run_as, cwd=data_dir.parent)
    partial.rename(data_dir)


def ensure_database(primary: PostgresServer) -> None:
    """Create the paystream database on the primary unless it exists."""
    found = primary.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'", "postgres")
    if not found.strip():
        primary.psql(f"CREATE DATABASE {DATABASE}", "postgres")


def clone_replica(primary: PostgresServer, data_dir: Path) -> None:
    """pg_basebackup -R a fresh standby from the primary, with a replication slot.

    The slot makes the primary keep WAL while the replica is down, so it catches up.
    """
    primary.psql(
        f"SELECT pg_drop_replication_slot('{SLOT}') FROM pg_replication_slots "
        f"WHERE slot_name = '{SLOT}'",
        "postgres",
    )
    partial = data_dir.with_name(data_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    own_dir(partial, primary.run_as)
    argv = [
        str(primary.bin_dir / "pg_basebackup"),
        "-D",
        str(partial),
        "-h",
        "127.0.0.1",
        "-p",
        str(primary.port),
        "-U",
        "postgres",
        "-R",
        "-C",
        "-S",
        SLOT,
        "-X",
        "stream",
        "--checkpoint=fast",
    ]
    if not primary.fsync:
        argv.append("--no-sync")
    run_tool(argv, run_as=primary.run_as, cwd=data_dir.parent)
    partial.rename(data_dir)


def wait_streaming(replica: PostgresServer, timeout: float = 30.0) -> None:
    """Block until the replica's WAL receiver streams from the primary."""
    deadline = time.monotonic() + timeout
    while replica.psql("SELECT status FROM pg_stat_wal_receiver", "postgres").strip() != (
        "streaming"
    ):
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{replica.name} does not stream from the primary after {timeout:.0f} s; "
                f"log {replica.log_path}:\n{replica.tail()}"
            )
        time.sleep(0.05)
