"""``paystream worker --heartbeat-file``: the file the compose health check reads is touched
while the worker polls."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid

import pytest

pytestmark = pytest.mark.integration


async def _touched_after(path, mtime: float, timeout: float = 30.0) -> float:  # type: ignore[no-untyped-def]
    """The file's modification time once it is later than ``mtime``. Another process writes
    it and there is no event to await, so this polls, with a deadline."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if path.exists() and (current := os.stat(path).st_mtime) > mtime:
            return current
        assert asyncio.get_running_loop().time() < deadline, "heartbeat not touched"
        await asyncio.sleep(0.1)


async def test_worker_touches_its_heartbeat_file_while_running(server_env, migrated,
                                                               tmp_path) -> None:
    heartbeat = tmp_path / "worker.alive"
    # Topics and group of its own: joining the session worker's group would pause it.
    suffix = uuid.uuid4().hex[:8]
    env = {**server_env, "PAYSTREAM_KAFKA__REQUESTED_TOPIC": f"beat.requested.{suffix}",
           "PAYSTREAM_KAFKA__STATUS_TOPIC": f"beat.status.{suffix}",
           "PAYSTREAM_KAFKA__DLQ_TOPIC": f"beat.dlq.{suffix}",
           "PAYSTREAM_KAFKA__WORKER_GROUP": f"beat-{suffix}"}
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "paystream.cli", "worker", "--heartbeat-file", str(heartbeat),
        env=env, cwd=tmp_path, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL)
    try:
        first = await _touched_after(heartbeat, 0.0)
        # Touched again (about once a second), not only at start.
        await _touched_after(heartbeat, first)
    finally:
        if worker.returncode is None:
            worker.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(worker.wait(), 30)
        except TimeoutError:
            worker.kill()
            await worker.wait()
            raise
    assert worker.returncode == 0
