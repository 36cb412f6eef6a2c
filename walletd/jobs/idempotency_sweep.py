"""The idempotency sweep job: deletes expired Idempotency-Keys now, then every interval
(persistence/retention.py says how and how often)."""

from __future__ import annotations

import asyncio

from walletd.logs import get_logger
from walletd.persistence.db import FairPool
from walletd.persistence.retention import BATCH, prune_idempotency_keys, sweep_interval

log = get_logger("walletd.retention")


class IdempotencySweeper:
    def __init__(self, pool: FairPool, retention_seconds: float, batch: int = BATCH) -> None:
        self.pool = pool
        self.retention_seconds = retention_seconds
        self.batch = batch
        self.interval = sweep_interval(retention_seconds)

    async def run(self) -> None:
        """Sweeps now, then every interval, forever (run it under jobs/supervision.py)."""
        while True:
            deleted = await prune_idempotency_keys(self.pool, self.retention_seconds, self.batch)
            if deleted:
                log.info("idempotency.pruned", deleted=deleted, retention_s=self.retention_seconds)
            await asyncio.sleep(self.interval)
