"""Start-up refusals outside dev mode, for what settings alone cannot see."""

from __future__ import annotations

from ..config import DEMO_PARTNER
from ..db.partners import live_key_count
from ..services.app import Services


class UnsafeForProduction(RuntimeError):
    """The API would start in production mode with something only dev should have."""


async def check_production(services: Services) -> None:
    """Refuse to serve in production mode while the dev demo partner has live keys: its key is
    kept in clear in ``.paystream/demo.json`` and printed by every ``paystream dev``."""
    if services.settings.dev:
        return
    count = await services.db.read(lambda s: live_key_count(s, DEMO_PARTNER), primary=True)
    if count:
        raise UnsafeForProduction(
            f"the database has {count} live API key(s) of the dev demo partner "
            f"{DEMO_PARTNER!r} (seeded by `paystream dev`); revoke them (`paystream partner keys "
            f"{DEMO_PARTNER}`, then `paystream partner revoke KEY_ID`) or use a fresh database "
            "before running in production mode (PAYSTREAM_DEV=false)"
        )
