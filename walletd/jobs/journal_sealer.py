"""The sealer job: seals new journal entries into the hash chain, off the request path, a second or
so behind their commits, and writes the chain's head to the log every head interval.

Every process runs one and the database lets one seal at a time (walletd_seal_journal takes a
transaction-level advisory lock; the others return at once), so the chain grows as long as any
process is up, and no commit ever waits for it. An entry is sealed once its transaction is older than
every transaction still running (the horizon of migration 0011); until then the chain does not cover
it, and a long-running transaction anywhere in the cluster holds sealing back until it ends.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg

from walletd import metrics
from walletd.logs import get_logger
from walletd.persistence import chain
from walletd.persistence.db import FairPool

log = get_logger("walletd.journal")


class JournalSealer:
    def __init__(self, pool: FairPool, interval: float, head_log_interval: float,
                 batch: int = chain.SEAL_BATCH) -> None:
        self.pool = pool
        self.interval = interval
        self.head_log_interval = head_log_interval
        self.batch = batch
        self._head_logged_at = float("-inf")
        self._unlogged: chain.Head | None = None
        self._summarize_refused = False

    async def run(self) -> None:
        """Seals until cancelled (run it under walletd.jobs.supervision): at once again while a batch
        comes back full, else after the interval."""
        while True:
            if await self.seal_once() < self.batch:
                await asyncio.sleep(self.interval)

    async def seal_once(self) -> int:
        async with self.pool.acquire() as conn:
            # Before reading the new entries: their postings and records are found through BRIN
            # ranges, and a range without a summary is read by every sealing and audit read.
            await self._summarize(conn)
            result = await chain.seal_pending(conn, self.batch)
        if result.sealed:
            metrics.JOURNAL_SEALED.inc(result.sealed)
            self._unlogged = result.head
        if self._unlogged is not None and time.monotonic() - self._head_logged_at >= self.head_log_interval:
            head = self._unlogged
            # Kept outside the database, the head lets `walletd audit --expect-head` see a cut-off tail.
            log.info("journal.head", seq=head.seq, hash=head.hash.hex(), entry_id=str(head.entry_id))
            self._head_logged_at = time.monotonic()
            self._unlogged = None
        return result.sealed

    async def _summarize(self, conn) -> None:
        """Only saves reads: a database that refuses it (a role that does not own the indexes, against
        docs/operations.md) is named once in the log, and sealing goes on."""
        try:
            await chain.summarize_new_ranges(conn)
        except asyncpg.InsufficientPrivilegeError as exc:
            if not self._summarize_refused:
                log.warning("journal.summarize_refused", error=str(exc))
                self._summarize_refused = True
