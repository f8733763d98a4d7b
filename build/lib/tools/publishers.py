"""Publishers take due outbox items. Only the dry-run publisher exists so far: it marks due items
as published, each exactly once (rows are claimed atomically before publishing)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from app.db import AppDB


class DryRunPublisher:
    name = "dry-run"

    def __init__(self, db: AppDB) -> None:
        self.db = db

    async def publish_due(self, now: datetime) -> list[dict[str, Any]]:
        claimed = await self.db.claim_due(now)
        for row in claimed:
            await self.db.mark_published(
                int(row["id"]), external_id=f"dry-run:{row['idempotency_key']}"
            )
            row["status"] = "published"
        return claimed
