"""The stale sweep job: a pending deposit or withdrawal older than WALLETD_PENDING_TTL (default
7 days) becomes stale, and that is all: time never moves money.

Every walletd process runs this sweep (a supervised task) once a second. It marks the pending
records past the deadline stale (persistence/stale.py: database clock, FOR UPDATE SKIP LOCKED, so
each record is marked once whichever process gets it) and writes a `deposit.stale` /
`withdraw.stale` event for the payment service in the same transaction. The status stays
`pending` and a withdrawal's hold stays: the payment service may have paid out during a holiday
or a manual review, and walletd cannot know. A late `paid` or `rejected` from it settles the
record normally; only the operator may end a stale record without it (walletd/domain/settlement.py).
"""

from __future__ import annotations

import asyncio

from walletd.logs import get_logger
from walletd.persistence import stale
from walletd.persistence.db import FairPool

log = get_logger("walletd.stale")
INTERVAL = 1.0  # seconds between sweeps: "within a few seconds of the deadline"
BATCH = 200  # records marked per transaction


class StalePendingSweeper:
    def __init__(self, pool: FairPool, ttl_seconds: float, on_stale=None) -> None:
        self.pool = pool
        self.ttl_seconds = ttl_seconds
        self.on_stale = on_stale  # wakes the webhook dispatcher
        self.marked = 0

    async def run(self) -> None:
        """Sweeps forever (run it under walletd.jobs.supervision)."""
        while True:
            while await self.sweep_once() == BATCH:
                pass
            await asyncio.sleep(INTERVAL)

    async def sweep_once(self) -> int:
        records = await stale.mark_stale(self.pool, self.ttl_seconds, BATCH)
        for record in records:
            log.info(f"{record['type']}.stale", transaction_id=record["id"], service_user_id=record["service_user_id"],
                     user_id=record["user_id"], amount=record["amount"], created_at=record["timestamp"])
        self.marked += len(records)
        if records and self.on_stale is not None:
            self.on_stale()
        return len(records)
