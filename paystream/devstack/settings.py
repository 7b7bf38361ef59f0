"""Settings for a running dev stack: its servers' endpoints and its webhook key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import Settings
from ..webhooks.secrets import new_encryption_key
from ._state import StackEndpoints


def dev_encryption_key(root: Path) -> str:
    """The dev stack's key for webhook secrets: generated once into ``root/webhooks.key``
    (mode 600) and reused, so secrets stored by one run decrypt in the next."""
    path = root / "webhooks.key"
    if not path.exists():
        root.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(new_encryption_key())
    return path.read_text().strip()


def dev_settings(endpoints: StackEndpoints, root: Path | None = None, **overrides: Any
                 ) -> Settings:
    """Settings for a dev stack's endpoints; with the stack's
    ``root``, its webhook encryption key too (:func:`dev_encryption_key`)."""
    if root is not None and "webhooks" not in overrides:
        overrides["webhooks"] = {"encryption_key": dev_encryption_key(root)}
    return Settings(
        dev=True,
        db={"primary_url": endpoints.primary_url, "replica_urls": [endpoints.replica_url]},
        redis={"url": endpoints.redis_url},
        kafka={"bootstrap_servers": endpoints.kafka_bootstrap},
        **overrides,
    )
