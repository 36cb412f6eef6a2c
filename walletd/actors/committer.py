"""Group commit: commands from many wallet actors share one database transaction.

A hot wallet (every commission lands in one service wallet) then costs one commit per batch,
not one per request, and PostgreSQL's one-row-lock-per-commit limit stops being walletd's.
A few workers run at once so one batch is being planned while another waits for its commit.
"""

from __future__ import annotations

import asyncio
import contextvars
from dataclasses import dataclass, field

from walletd.domain.errors import DomainError, Overloaded
from walletd.domain.ledger import Command
from walletd.logs import get_logger

log = get_logger("walletd.ledger")


@dataclass
class Envelope:
    command: Command
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class GroupCommitter:
    def __init__(self, ledger, *, workers: int = 2, max_batch: int = 256) -> None:
        self.ledger = ledger
        self.max_batch = max_batch
        self._queue: list[tuple[list[Envelope], asyncio.Future]] = []
        self._ready = asyncio.Event()
        self._closing = False
        self._workers = [
            asyncio.create_task(self._work(), name=f"committer-{i}", context=contextvars.Context())
            for i in range(workers)
        ]
        self.batches = 0
        self.commands = 0

    def submit(self, envelopes: list[Envelope]) -> asyncio.Future:
        """Queue an actor's batch; the returned future resolves once every envelope has its outcome."""
        done = asyncio.get_running_loop().create_future()
        if self._closing:
            for envelope in envelopes:
                envelope.future.set_exception(Overloaded("shutting down"))
            done.set_result(None)
            return done
        self._queue.append((envelopes, done))
        self._ready.set()
        return done

    async def _work(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._ready.clear()
                await self._ready.wait()
                continue
            # Whole actor batches only, so an actor's commands are never split across commits.
            taken, size = 0, 0
            while taken < len(self._queue) and (taken == 0 or size + len(self._queue[taken][0]) <= self.max_batch):
                size += len(self._queue[taken][0])
                taken += 1
            groups, self._queue = self._queue[:taken], self._queue[taken:]
            try:
                await self._commit([envelope for envelopes, _ in groups for envelope in envelopes])
            finally:
                for _, done in groups:
                    if not done.done():
                        done.set_result(None)

    async def _commit(self, batch: list[Envelope]) -> None:
        try:
            results, events = await self.ledger.apply([e.command for e in batch])
        except BaseException as exc:  # the whole batch failed; each caller learns why
            failure = exc if isinstance(exc, Exception) else Overloaded("cancelled")
            if not isinstance(exc, DomainError):
                log.error("ledger.batch_failed", size=len(batch), error=repr(exc))
            for envelope in batch:
                if not envelope.future.done():
                    envelope.future.set_exception(failure)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        self.batches += 1
        self.commands += len(batch)
        # Acknowledge only after COMMIT returned: a 200 means the movement is durable.
        for event, fields in events:
            log.info(event, **fields)
        for envelope, result in zip(batch, results):
            if envelope.future.done():
                continue
            if isinstance(result, BaseException):
                envelope.future.set_exception(result)
            else:
                envelope.future.set_result(result)

    async def close(self) -> None:
        """Finish every submitted command, then stop the workers."""
        self._closing = True
        self._ready.set()
        await asyncio.gather(*self._workers, return_exceptions=True)
