"""Pending deposits and withdrawals expire after WALLETD_PENDING_TTL seconds (default 7 days).

Every walletd process runs this sweep (a supervised task) once a second. It lists pending
transactions past the deadline (database clock, partial index on pending rows) and hands each
one to its wallet's actor as a system settlement, `Settle(new_status="expired")`, so the money
rules stay in walletd/domain/ledger.py and the write is the ordinary batch write: the
compare-and-set on `status = 'pending'`, a withdrawal's hold returned in one journal entry
(through the postings trigger, so `walletd audit` stays clean), and the `*.expired` outbox
event in the same transaction. Two processes expiring the same row: one wins the
compare-and-set, the other's planning finds it no longer pending and moves nothing.

The deadline starts the expiry; the status is the truth. A settlement that commits before the
sweep reaches the row wins; after it, settling answers 409 `transaction_expired`.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

from walletd.actors.registry import ActorRegistry
from walletd.domain import errors
from walletd.domain.ledger import Settle
from walletd.domain.vocabulary import TxStatus
from walletd.logs import get_logger
from walletd.persistence import outbox
from walletd.persistence.db import FairPool

log = get_logger("walletd.expiry")
INTERVAL = 1.0  # seconds between sweeps: "within a few seconds of the deadline"
BATCH = 200  # rows per sweep step; the actors' mailboxes bound the rest


class PendingExpirySweeper:
    def __init__(self, pool: FairPool, registry: ActorRegistry, ttl_seconds: float, on_expired=None) -> None:
        self.pool = pool
        self.on_expired = on_expired  # wakes the webhook dispatcher
        self.registry = registry
        self.ttl_seconds = ttl_seconds
        self.expired = 0

    async def run(self) -> None:
        """Sweeps forever (run it under walletd.supervisor)."""
        while True:
            while await self.sweep_once() == BATCH:
                pass
            await asyncio.sleep(INTERVAL)

    async def sweep_once(self) -> int:
        due = await outbox.due_for_expiry(self.pool, self.ttl_seconds, BATCH)
        if not due:
            return 0
        commands = [Settle(row["service_user_id"], row["id"], row["type"], TxStatus.EXPIRED, row["user_wallet_id"],
                           row["service_wallet_id"], row["gateway_wallet_id"], Decimal(0), "expiry-sweep")
                    for row in due]
        results = await asyncio.gather(*(self.registry.execute(c) for c in commands), return_exceptions=True)
        for command, result in zip(commands, results, strict=True):
            if isinstance(result, dict):
                self.expired += 1
            elif isinstance(result, errors.SettlementConflict):
                pass  # settled (or expired by another process) since the listing: nothing to do
            elif isinstance(result, BaseException):
                # Unavailable, Overloaded, ...: the row is still pending and the next sweep retries.
                log.warning("expiry.deferred", transaction_id=str(command.transaction_id), error=repr(result)[:200])
        if self.on_expired is not None:
            self.on_expired()
        return len(due)
