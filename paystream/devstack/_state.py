"""The endpoints of a running stack and root/stack.json, which says who runs it."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil  # type: ignore[import-untyped, unused-ignore]  # types-psutil is optional

STATE_FILE = "stack.json"


@dataclass(frozen=True)
class StackEndpoints:
    """Where the servers of a running stack listen.

    Attributes:
        primary_url: SQLAlchemy URL of the primary, ``postgresql+asyncpg://postgres@127.0.0.1:PORT/paystream``.
        replica_url: the same form for the streaming replica.
        redis_url: ``redis://127.0.0.1:PORT/0``.
        kafka_bootstrap: ``127.0.0.1:PORT``.
    """

    primary_url: str
    replica_url: str
    redis_url: str
    kafka_bootstrap: str

    def to_json(self) -> dict[str, str]:
        """A JSON-ready dict, the inverse of from_json()."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, str]) -> StackEndpoints:
        """Build from the dict that to_json() made (unknown keys are ignored)."""
        return cls(
            primary_url=data["primary_url"],
            replica_url=data["replica_url"],
            redis_url=data["redis_url"],
            kafka_bootstrap=data["kafka_bootstrap"],
        )


class StackAlreadyRunning(Exception):
    """A live process already runs a stack on this root (named by root/stack.json)."""

    def __init__(self, root: Path, pid: int, endpoints: StackEndpoints) -> None:
        self.root = root
        self.pid = pid
        self.endpoints = endpoints
        super().__init__(
            f"a dev stack already runs on {root} (pid {pid}): "
            f"primary {endpoints.primary_url}, replica {endpoints.replica_url}, "
            f"redis {endpoints.redis_url}, kafka {endpoints.kafka_bootstrap}"
        )


def _owner_alive(pid: int, started_at: float) -> bool:
    try:
        created = float(psutil.Process(pid).create_time())
    except psutil.Error:
        return False
    # A process created after the stack started is a reused pid, not the owner.
    return created <= started_at + 1.0


def read_state(root: Path) -> tuple[int, StackEndpoints] | None:
    """(pid, endpoints) from root/stack.json if its owning process is alive, else None."""
    try:
        data = json.loads((root / STATE_FILE).read_text())
        pid = int(data["pid"])
        endpoints = StackEndpoints.from_json(data["endpoints"])
        started_at = float(data["started_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not _owner_alive(pid, started_at):
        return None
    return pid, endpoints


def read_running_stack(root: Path) -> StackEndpoints | None:
    """The endpoints of the stack running on `root`, or None if none runs there.

    Lets a second command (tests, `paystream api`) use the servers that `paystream dev` started.
    """
    state = read_state(root)
    return state[1] if state is not None else None


def write_state(root: Path, endpoints: StackEndpoints, started_at: float) -> None:
    """Write root/stack.json atomically, naming this process as the owner."""
    data = {
        "pid": os.getpid(),
        "endpoints": endpoints.to_json(),
        "started_at": started_at,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started_at)),
    }
    partial = root / f"{STATE_FILE}.{os.getpid()}"
    partial.write_text(json.dumps(data, indent=2) + "\n")
    partial.replace(root / STATE_FILE)


def remove_state(root: Path) -> None:
    """Remove root/stack.json if this process owns it."""
    path = root / STATE_FILE
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass
