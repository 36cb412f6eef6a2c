"""Group commit: commands from many wallet actors share one database transaction.

A hot wallet (every commission lands in one service wallet) then costs one commit per batch,
not one per request, and PostgreSQL's one-row-lock-per-commit limit stops being walletd's.
A few workers run at once so one batch is being planned while another waits for its commit.

Every envelope handed to the committer gets an outcome, whatever fails: a worker that crashes
is logged and its loop goes on; a batch's commit runs in its own task, shielded, so cancelling
a worker (shutdown past its timeout) never cuts a write in half; on close, commands not yet
taken are refused (503, nothing moved). Once the ledger has decided a batch, its callers are
answered before anything else runs (the audit lines, the ledger learning from the batch,
metrics): what follows a commit can fail, never change an answer.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time

from walletd import metrics
from walletd.actors.envelope import Envelope
from walletd.domain.errors import DomainError, InternalFailure, OutcomeUnknown, Overloaded, Unavailable
from walletd.logs import get_logger

log = get_logger("walletd.ledger")


class GroupCommitter:
    def __init__(self, ledger, *, workers: int = 2, max_batch: int = 256) -> None:
        if workers < 1 or max_batch < 1:
            raise ValueError("a committer needs at least one worker and a batch of at least one")
        self.ledger = ledger
        self.max_batch = max_batch
        self.worker_count = workers
        self._queue: list[tuple[list[Envelope], asyncio.Future]] = []
        self._ready: asyncio.Event | None = None
        self._closing = False
        self._workers: list[asyncio.Task] = []
        self._commits: set[asyncio.Task] = set()
        self.batches = 0
        self.commands = 0
        self.crashes = 0

    def start(self) -> None:
        self._ready = asyncio.Event()
        self._workers = [self._spawn(i) for i in range(self.worker_count)]

    def _spawn(self, index: int) -> asyncio.Task:
        task = asyncio.create_task(self._work(), name=f"committer-{index}", context=contextvars.Context())
        task.add_done_callback(functools.partial(self._worker_done, index=index))
        return task

    def _worker_done(self, task: asyncio.Task, *, index: int) -> None:
        # The loop catches its own failures; this is the last resort, so a worker never just vanishes.
        if task.cancelled() or self._closing:
            return
        self.crashes += 1
        log.error("committer.worker_died", worker=index, error=repr(task.exception()))
        self._workers[index] = self._spawn(index)

    def submit(self, envelopes: list[Envelope]) -> asyncio.Future:
        """Queue an actor's batch; the returned future resolves once every envelope has its outcome."""
        done = asyncio.get_running_loop().create_future()
        if self._closing or self._ready is None:
            for envelope in envelopes:
                if not envelope.future.done():
                    envelope.future.set_exception(Overloaded("shutting down"))
            done.set_result(None)
            return done
        self._queue.append((envelopes, done))
        self._ready.set()
        return done

    async def _work(self) -> None:
        assert self._ready is not None
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._ready.clear()
                await self._ready.wait()
                continue
            groups = self._take()
            batch = [envelope for envelopes, _ in groups for envelope in envelopes]
            try:
                commit = asyncio.create_task(self._commit(batch))
                self._commits.add(commit)
                commit.add_done_callback(self._commits.discard)
                await asyncio.shield(commit)
            except asyncio.CancelledError:
                raise  # the commit task goes on and answers its callers
            except Exception as exc:  # noqa: BLE001 - a bug here must not stop the loop
                self.crashes += 1
                log.exception("committer.crashed", size=len(batch))
                _fail(batch, InternalFailure())  # a no-op for the answered: a commit's answers stand
                del exc
            finally:
                for _, done in groups:
                    if not done.done():
                        done.set_result(None)

    def _take(self) -> list[tuple[list[Envelope], asyncio.Future]]:
        # Whole actor batches only, so an actor's commands are never split across commits.
        taken, size = 0, 0
        while taken < len(self._queue) and (taken == 0 or size + len(self._queue[taken][0]) <= self.max_batch):
            size += len(self._queue[taken][0])
            taken += 1
        groups, self._queue = self._queue[:taken], self._queue[taken:]
        return groups

    async def _commit(self, batch: list[Envelope]) -> None:
        started = time.perf_counter()
        try:
            decided = await self.ledger.apply([e.command for e in batch])
        except DomainError as exc:  # the whole batch has one outcome (Unavailable, OutcomeUnknown)
            _fail(batch, exc)
            return
        except BaseException:  # the ledger raises only DomainErrors; anything else is a bug
            log.exception("ledger.batch_failed", size=len(batch))
            _fail(batch, OutcomeUnknown())  # it may have failed after writing: do not claim otherwise
            raise
        # Acknowledged only now that COMMIT returned (a 200 means durable), and before anything
        # else runs: from here on every answer is fixed.
        _answer(batch, decided.results)
        self.batches += 1
        self.commands += len(batch)
        for name, fields in decided.audit_lines:
            try:
                log.info(name, **fields)
            except Exception:  # noqa: BLE001 - one broken audit line must not cost the others
                log.exception("audit.log_failed", audit_event=name)
        self.ledger.learn(decided)
        metrics.committed(len(batch), time.perf_counter() - started)

    def shed(self) -> None:
        """The database has been unreachable for a while: refuse what waits here (never sent, so
        nothing of it moved: 503) instead of letting it wait behind commits being looked up."""
        if not self._queue:
            return
        queued, self._queue = self._queue, []
        for envelopes, done in queued:
            _fail(envelopes, Unavailable())
            if not done.done():
                done.set_result(None)
        log.warning("committer.shed", batches=len(queued), commands=sum(len(e) for e, _ in queued))

    async def close(self, timeout: float = 30.0) -> None:
        """Finish every submitted command, then stop the workers; past the timeout, refuse what
        is still queued and cancel the workers (commits in flight still finish on their own)."""
        self._closing = True
        if self._ready is not None:
            self._ready.set()
        if not self._workers:
            return
        done, pending = await asyncio.wait(self._workers, timeout=timeout)
        if pending:
            log.error("committer.shutdown_timeout", queued=sum(len(e) for e, _ in self._queue),
                      in_flight=len(self._commits))
            for envelopes, finished in self._queue:
                _fail(envelopes, Overloaded("shutting down"))
                if not finished.done():
                    finished.set_result(None)
            self._queue = []
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=1)
        if self._commits:
            await asyncio.wait(list(self._commits), timeout=max(1.0, timeout / 3))


def _answer(batch: list[Envelope], results: list[object]) -> None:
    if len(results) != len(batch):  # a ledger bug: which command committed is not known
        log.error("committer.results_mismatch", commands=len(batch), results=len(results))
        _fail(batch, OutcomeUnknown())
        return
    for envelope, result in zip(batch, results, strict=True):
        if envelope.future.done():
            continue  # the caller went away; the Idempotency-Key lets it learn the outcome
        if isinstance(result, BaseException):
            envelope.future.set_exception(result)
        else:
            envelope.future.set_result(result)


def _fail(batch: list[Envelope], exc: BaseException) -> None:
    for envelope in batch:
        if not envelope.future.done():
            envelope.future.set_exception(exc)
