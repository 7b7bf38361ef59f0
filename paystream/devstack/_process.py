"""Child server processes that cannot outlive the Python process that started them."""

from __future__ import annotations

import concurrent.futures
import ctypes
import logging
import os
import queue
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

log = logging.getLogger("paystream.devstack")

_PR_SET_PDEATHSIG = 1
_ADDRESS_IN_USE = re.compile(r"address (already )?in use", re.IGNORECASE)
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")  # tansu colours its log lines
_LIBC = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class RunAs:
    """An unprivileged account to run a child as (only when we are root)."""

    name: str
    uid: int
    gid: int


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_accepts(port: int) -> bool:
    """True when something accepts a TCP connection on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def child_env() -> dict[str, str]:
    """Our environment without PG* variables, which would redirect the PostgreSQL tools."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _child_setup(parent_pid: int, death_signal: int) -> None:
    # Runs in the child after setuid/setgid (CPython applies user= and group= before
    # preexec_fn), which matters: changing credentials clears the death signal.
    _LIBC.prctl(_PR_SET_PDEATHSIG, death_signal, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os.kill(os.getpid(), death_signal)


def tie_to_us(death_signal: int) -> Callable[[], None]:
    """A preexec_fn that makes the kernel send `death_signal` to the child when we die."""
    parent_pid = os.getpid()
    return lambda: _child_setup(parent_pid, death_signal)


# The kernel sends the death signal when the *thread* that forked a child exits. Children
# forked from a short-lived thread would die with it, so they are forked from the main
# thread or from this one long-lived daemon thread.
_spawn_queue: queue.SimpleQueue[
    tuple[Callable[[], subprocess.Popen[bytes]], concurrent.futures.Future[subprocess.Popen[bytes]]]
]
_spawn_queue = queue.SimpleQueue()
_spawner_lock = threading.Lock()
_spawner: threading.Thread | None = None


def _spawner_main() -> None:
    while True:
        make, future = _spawn_queue.get()
        try:
            future.set_result(make())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the waiting caller
            future.set_exception(exc)


def _spawn(make: Callable[[], subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    global _spawner
    if threading.current_thread() is threading.main_thread():
        return make()
    with _spawner_lock:
        if _spawner is None:
            _spawner = threading.Thread(
                target=_spawner_main, name="paystream-devstack-spawner", daemon=True
            )
            _spawner.start()
    future: concurrent.futures.Future[subprocess.Popen[bytes]] = concurrent.futures.Future()
    _spawn_queue.put((make, future))
    return future.result()


def log_tail(path: Path, offset: int = 0, lines: int = 30) -> str:
    """The last `lines` lines of a log file written after byte `offset`."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError:
        return "(no log)"
    text = _ANSI_ESCAPE.sub("", data.decode("utf-8", "replace")).rstrip()
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def run_tool(
    argv: Sequence[str],
    *,
    run_as: RunAs | None = None,
    cwd: Path | None = None,
    input_text: str | None = None,
    timeout: float = 60.0,
) -> str:
    """Run a short-lived tool to completion; return stdout or raise RuntimeError with stderr."""
    result = subprocess.run(
        list(argv),
        input=input_text,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        check=False,  # the return code is turned into an error with stderr below
        env=child_env(),
        preexec_fn=tie_to_us(signal.SIGTERM),
        user=run_as.uid if run_as else None,
        group=run_as.gid if run_as else None,
        extra_groups=[] if run_as else None,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{Path(argv[0]).name} failed (exit {result.returncode}): {result.stderr.strip()}"
        )
    return result.stdout


class ServerProcess:
    """One long-running server: spawned as our child, checked for readiness, stopped in order.

    Subclasses give the command line and the readiness check; stop() is idempotent.
    """

    stop_signal: int = signal.SIGTERM
    death_signal: int = signal.SIGTERM
    stop_timeout: float = 5.0
    start_timeout: float = 30.0

    def __init__(self, name: str, log_path: Path, port: int, run_as: RunAs | None) -> None:
        self.name = name
        self.log_path = log_path
        self.port = port
        self.run_as = run_as
        self.popen: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._signalled = False

    def argv(self) -> list[str]:
        raise NotImplementedError

    def is_ready(self) -> bool:
        raise NotImplementedError

    @property
    def cwd(self) -> Path:
        return self.log_path.parent

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def spawn(self) -> None:
        """Start the server without waiting for it."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = self.argv()
        with self.log_path.open("ab") as log_file:
            self._log_offset = log_file.tell()
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log_file.write(f"--- paystream devstack: starting {self.name} at {stamp}\n".encode())
            log_file.flush()
            self._log_offset = log_file.tell()
            self.popen = _spawn(lambda: self._popen(argv, log_file))
            self._signalled = False
        log.info("started %s (pid %s, port %s)", self.name, self.popen.pid, self.port)

    def _popen(self, argv: list[str], log_file: IO[bytes]) -> subprocess.Popen[bytes]:
        run_as = self.run_as
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=self.cwd,
            env=child_env(),
            start_new_session=True,  # a terminal Ctrl-C must not reach it before stop()
            # The hook only calls prctl, getppid and kill, which take no locks.
            preexec_fn=tie_to_us(self.death_signal),  # noqa: PLW1509
            user=run_as.uid if run_as else None,
            group=run_as.gid if run_as else None,
            extra_groups=[] if run_as else None,
        )

    def wait_ready(self, *, retry_port: bool = True) -> None:
        """Block until the server is ready; pick another port once if ours was taken."""
        try:
            self._wait_ready()
        except RuntimeError as exc:
            if not (retry_port and _ADDRESS_IN_USE.search(str(exc))):
                raise
            self.stop()
            self.port = free_port()
            log.warning("%s: port was taken, retrying on %s", self.name, self.port)
            self.spawn()
            self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while not self.is_ready():
            assert self.popen is not None
            code = self.popen.poll()
            if code is not None:
                raise RuntimeError(
                    f"{self.name} exited with code {code} during start-up; log "
                    f"{self.log_path}:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.name} not ready after {self.start_timeout:.0f} s; log "
                    f"{self.log_path}:\n{self.tail()}"
                )
            time.sleep(0.03)

    def tail(self) -> str:
        """Log lines written since the last spawn."""
        return log_tail(self.log_path, self._log_offset)

    def signal_stop(self) -> None:
        """Ask the server to shut down without waiting (stop() then waits)."""
        if self.popen is not None and not self._signalled and self.popen.poll() is None:
            self.popen.send_signal(self.stop_signal)
            self._signalled = True

    def stop(self) -> None:
        """Signal the server, wait, then kill its whole process group. Idempotent."""
        popen = self.popen
        if popen is None or popen.returncode is not None:
            return
        self.signal_stop()
        try:
            popen.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0f s; killing it", self.name, self.stop_timeout)
            try:
                os.killpg(popen.pid, signal.SIGKILL)  # its own session: takes helpers too
            except ProcessLookupError:
                pass
            popen.wait(5.0)
        log.info("stopped %s (exit %s)", self.name, popen.returncode)
