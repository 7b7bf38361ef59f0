"""`paystream api --workers 2` in production mode: serves, answers with request ids, logs JSON
lines carrying them, and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import tempfile

import httpx
import pytest

from paystream.config import Settings
from paystream.devstack import free_port

pytestmark = pytest.mark.integration


async def test_api_command_serves_with_workers_and_stops_gracefully(
        server_env: dict[str, str], migrated: Settings) -> None:
    port = free_port()
    env = {**server_env, "PAYSTREAM_DEV": "false"}
    with tempfile.TemporaryDirectory() as cwd, tempfile.TemporaryFile() as output:
        # Popen returns at once (output goes to a file), so it does not block the loop.
        process = subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, "-m", "paystream.cli", "api", "--workers", "2", "--port", str(port)],
            env=env, cwd=cwd, stdout=output, stderr=subprocess.STDOUT,
        )
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                deadline = asyncio.get_running_loop().time() + 30
                while True:  # no event to await from another process: poll, bounded
                    assert process.poll() is None, "paystream api exited"
                    try:
                        if (await http.get("/healthz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    assert asyncio.get_running_loop().time() < deadline, "api did not start"
                    await asyncio.sleep(0.1)
                response = await http.post("/graphql", json={"query": "{ __schema { types { name } } }"},
                                           headers={"X-Request-ID": "serving-1"})
                assert response.headers["x-request-id"] == "serving-1"
                assert "introspection has been disabled" in response.json()["errors"][0]["message"]
        finally:
            process.send_signal(signal.SIGTERM)
            code = process.wait(30)
        assert code == 0
        output.seek(0)
        lines = output.read().decode().splitlines()
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    assert entries, lines
    assert any(e.get("request_id") == "serving-1" for e in entries), lines
