"""PgLedger: applies a batch of commands in one PostgreSQL statement or transaction (group commit).

Fast path: the batch is planned against balances this process predicts (persistence/
predictions.py) and written by one call of walletd_write_batch (persistence/batch_write.py).
Its round trips, each only when the batch needs it: the wallets not predicted yet; the operator's
exchange desks (their ids, once per process, and their states) for a transfer between currencies;
the pending transactions it settles; the exchange rates, for a transfer between currencies; the
stored responses of its Idempotency-Keys; then the write. A warm batch of same-currency transfers
without Idempotency-Keys makes one: the write. The database decides, not the prediction: the
postings trigger takes the wallets' row locks in id order, refuses unbalanced entries and unknown
wallets, and the CHECK constraints refuse any overdraft; a settlement is a compare-and-set on the
pending status. If the database refuses the write, or the prediction says a command lacks funds
(it may be stale when other processes share the database), the batch goes the locked path.

Locked path: every wallet the batch touches is locked up front in id order (SELECT … FOR UPDATE),
the batch is planned against balances read under those locks, and written in that transaction.
A batch that still fails there is retried one command per transaction, so one bad command fails
only its caller, whatever it raises.

Failures (persistence/failures.py): an unreachable database is `Unavailable` (503, nothing
moved). A write whose answer never came back (connection lost or cancelled while the fast path's
write or the locked path's COMMIT was in flight) is in doubt (persistence/in_doubt.py): `_resolve`
stops the old backend if it still runs, then looks one of the batch's ids up once the database
answers, and reports what really happened: the results (committed) or `Unavailable` (not
committed). Past `in_doubt_seconds` it is `OutcomeUnknown` (500): the client retries with its
Idempotency-Key and learns the outcome. Only DomainErrors leave `apply`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import asyncpg

from walletd import metrics
from walletd.domain import errors
from walletd.domain.ledger import (
    Command,
    Effects,
    RateBook,
    RequestDeposit,
    RequestWithdraw,
    Settle,
    Transfer,
    plan_deposit_request,
    plan_settlement,
    plan_transfer,
    plan_withdraw_request,
)
from walletd.logs import get_logger
from walletd.persistence.batch_write import Owners, write_batch, writes_anything
from walletd.persistence.db import FairPool, discard
from walletd.persistence.failures import UNAVAILABLE, outage, server_refused
from walletd.persistence.in_doubt import InDoubt, backend_of, marker, stop_backend, wait_for_standby, was_written
from walletd.persistence.predictions import WalletPredictions
from walletd.persistence.rates import rate_book
from walletd.persistence.transactions import pending_states

log = get_logger("walletd.ledger")

_RETRYABLE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError, asyncpg.UniqueViolationError)

_STORED = """SELECT principal_id, key, request_hash, status_code, response FROM idempotency_keys
             WHERE (principal_id, key) IN (SELECT * FROM unnest($1::uuid[], $2::text[]))"""
# On Citus the callers' ids also name their shards, which then alone are asked.
_STORED_OWNED = _STORED + " AND principal_id = ANY($1::uuid[])"


@dataclass(frozen=True)
class Replay:
    """A stored first response returned for a retried Idempotency-Key."""

    status: int
    body: dict


class _NeedsLocks(Exception):
    """The fast path cannot decide this batch on predictions; take the locked path."""


class PgLedger:
    def __init__(self, pool: FairPool, rates_max_age: timedelta | None = None, *,
                 in_doubt_seconds: float = 30.0) -> None:
        self.pool = pool
        self.rates_max_age = rates_max_age
        self.in_doubt_seconds = in_doubt_seconds
        self.predictions = WalletPredictions(pool)
        self.fast_batches = 0
        self.locked_batches = 0
        self.in_doubt = {"committed": 0, "not_committed": 0, "unknown": 0}

    async def apply(self, commands: list[Command]) -> tuple[list[object], list[tuple[str, dict]]]:
        """Results aligned with commands (a tx dict, a Replay, or a DomainError), plus audit events.
        Raises only DomainErrors, and then for the whole batch: Unavailable, OutcomeUnknown."""
        outcome = await self._apply(commands)
        if not any(isinstance(result, errors.Unavailable) for result in outcome[0]):
            outage.succeeded()  # the database answered this batch: any outage is over
        return outcome

    async def _apply(self, commands: list[Command]) -> tuple[list[object], list[tuple[str, dict]]]:
        try:
            try:
                outcome = await self._apply_fast(commands)
                self.fast_batches += 1
                metrics.FAST_PATH.inc()  # metrics (api branch)
                return outcome
            except _NeedsLocks:
                pass
            except asyncpg.PostgresError as exc:
                if isinstance(exc, UNAVAILABLE):
                    raise
            self.locked_batches += 1
            metrics.LOCKED_PATH.inc()  # metrics (api branch)
            try:
                return await self._apply_with_retry(commands)
            except (asyncpg.PostgresError, errors.DomainError) as exc:
                if isinstance(exc, UNAVAILABLE):
                    raise
                if len(commands) == 1 and isinstance(exc, errors.DomainError):
                    raise
            return await self._apply_one_by_one(commands)
        except InDoubt as doubt:
            return await self._resolve(doubt)
        except UNAVAILABLE as exc:
            outage.failed(exc)
            raise errors.Unavailable() from None
        except errors.DomainError:
            raise
        except Exception:
            # A bug before anything was written (writes end in InDoubt or a server refusal).
            log.exception("ledger.batch_failed", size=len(commands))
            raise errors.InternalFailure() from None

    async def _apply_one_by_one(self, commands: list[Command]):
        """The batch failed as a whole: each command in its own transaction, so a poisoned one
        (whatever it raises) fails only its own caller."""
        results: list[object] = []
        events: list[tuple[str, dict]] = []
        for command in commands:
            more: list[tuple[str, dict]] = []
            try:
                try:
                    (result,), more = await self._apply_with_retry([command])
                except InDoubt as doubt:
                    (result,), more = await self._resolve(doubt)
            except errors.DomainError as exc:
                result = exc
            except UNAVAILABLE as exc:
                outage.failed(exc)
                result = errors.Unavailable()
            except Exception:
                log.exception("ledger.command_failed", command=type(command).__name__,
                              request_id=command.request_id)
                result = errors.InternalFailure()
            results.append(result)
            events.extend(more)
        return results, events

    async def _apply_with_retry(self, commands: list[Command]):
        for attempt in range(3):
            try:
                return await self._apply_locked(commands)
            except _RETRYABLE:
                # A lost race with another process (deadlock victim, or a concurrent first use
                # of the same Idempotency-Key): the next attempt reads the winner's result.
                if attempt == 2:
                    raise errors.Unavailable() from None  # nothing moved; a retry will get through
            except asyncpg.CheckViolationError:
                # Only reachable if another writer changed a balance outside this batch's locks.
                raise errors.InsufficientFunds() from None
        raise AssertionError("unreachable")

    # ---- in doubt ----------------------------------------------------------------------------

    async def _resolve(self, doubt: InDoubt):
        """Find out whether an in-doubt write committed (see the module docstring)."""
        assert doubt.outcome is not None
        results, effects = doubt.outcome
        written = marker(effects)
        log.warning("ledger.in_doubt", error=repr(doubt.cause)[:300], commands=len(results), marker=str(written[1]))
        deadline = time.monotonic() + self.in_doubt_seconds
        delay = 0.05
        while True:
            try:
                async with self.pool.acquire(timeout=max(0.1, deadline - time.monotonic())) as conn:
                    await stop_backend(conn, doubt.backend, deadline)
                    committed = await was_written(conn, written)
                    if committed:
                        await wait_for_standby(conn, deadline)
                break
            except (*UNAVAILABLE, asyncpg.PostgresError) as exc:
                outage.failed(exc)
                if time.monotonic() + delay >= deadline:
                    self.in_doubt["unknown"] += 1
                    log.error("ledger.outcome_unknown", marker=str(written[1]), commands=len(results),
                              transactions=[str(t["id"]) for t in effects.new_transactions],
                              request_ids=sorted({r for _, _, r in effects.entries if r}))
                    raise errors.OutcomeUnknown() from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        outage.succeeded()
        # Re-read: cheaper than reasoning about half-known state.
        self.predictions.forget([wallet_id for _, wallet_id, _, _, _ in effects.postings])
        log.warning("ledger.in_doubt_resolved", committed=committed, marker=str(written[1]))
        if committed:
            self.in_doubt["committed"] += 1
            return results, effects.events
        self.in_doubt["not_committed"] += 1
        raise errors.Unavailable()

    # ---- fast path ---------------------------------------------------------------------------

    async def _apply_fast(self, commands: list[Command]):
        predicted, converted = await self.predictions.wallets_for(commands)
        # Plan on copies: a refused statement must leave the predictions as they were.
        wallets = {i: dataclasses.replace(state) for i, state in predicted.items()}
        now = datetime.now(timezone.utc)
        settle_ids = [c.transaction_id for c in commands if isinstance(c, Settle)]
        pending = await pending_states(self.pool, settle_ids, lock=False,
                                       owners=self._customers(commands, predicted)) if settle_ids else {}
        rates = await rate_book(self.pool, now, self.rates_max_age) if converted else RateBook({}, now)
        keys = [c.idempotency for c in commands if c.idempotency is not None]
        stored = await self._stored_responses(self.pool, keys, self.pool.distributed) if keys else {}
        effects = Effects(now)
        results, idempotency_rows = self._plan_all(commands, wallets, rates, pending, stored, effects)
        if any(isinstance(r, errors.InsufficientFunds) for r in results):
            raise _NeedsLocks()  # the prediction may be stale: ask the database under lock
        if writes_anything(effects, idempotency_rows):
            async with self.pool.acquire() as conn:
                # In autocommit the write is its own transaction: a lost answer leaves it in doubt.
                await self._decisive(conn, write_batch(conn, effects, idempotency_rows, self._owners(wallets, pending)),
                                     results, effects)
        self.predictions.learn(effects)
        return results, effects.events

    def forget(self) -> None:
        """Drop every prediction (they are re-read on next use)."""
        self.predictions.forget()

    # ---- locked path -------------------------------------------------------------------------

    async def _apply_locked(self, commands: list[Command]):
        predicted, converted = await self.predictions.wallets_for(commands)
        settle_ids = sorted({c.transaction_id for c in commands if isinstance(c, Settle)})
        keys = [c.idempotency for c in commands if c.idempotency is not None]
        async with self.pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            try:
                rows = await conn.fetch(self._lock_wallets, sorted(predicted))
                wallets = {r[0]: dataclasses.replace(predicted[r[0]], balance=r[1], reserved=r[2]) for r in rows}
                pending = await pending_states(conn, settle_ids, lock=True,
                                               owners=self._customers(commands, predicted)) if settle_ids else {}
                now = datetime.now(timezone.utc)
                rates = await rate_book(conn, now, self.rates_max_age) if converted else RateBook({}, now)
                stored = await self._stored_responses(conn, keys, self.pool.distributed) if keys else {}
                effects = Effects(now)
                results, idempotency_rows = self._plan_all(commands, wallets, rates, pending, stored, effects)
                if writes_anything(effects, idempotency_rows):
                    # Inside a transaction only the COMMIT can leave the batch in doubt.
                    await write_batch(conn, effects, idempotency_rows, self._owners(wallets, pending))
            except BaseException:
                # Before COMMIT: whatever happened, nothing of this transaction is written.
                if not conn.is_closed():
                    try:
                        await transaction.rollback()
                    except Exception:  # noqa: BLE001 - a broken connection; the pool terminates it
                        pass
                raise
            await self._decisive(conn, transaction.commit(), results, effects)
        # Balances were read under lock: drop the predictions, the next fast path re-reads them.
        self.predictions.forget(wallets)
        return results, effects.events

    # ---- shared ------------------------------------------------------------------------------

    @property
    def _lock_wallets(self) -> str:
        """The locked path's read. Citus runs FOR UPDATE only on one shard, and a batch spans
        several; there the batch write itself decides (it applies deltas under the CHECK
        constraints, and settles by compare-and-set), so a balance read without the lock can
        cost a retry, never a wrong balance."""
        lock = "" if self.pool.distributed else " FOR UPDATE"
        return f"SELECT id, balance, reserved_balance FROM wallets WHERE id = ANY($1::uuid[]) ORDER BY id{lock}"

    def _customers(self, commands, wallets) -> list[uuid.UUID] | None:
        """On Citus, the owners of the records a batch settles: the users of their wallets."""
        if not self.pool.distributed:
            return None
        return list({wallets[c.user_wallet_id].user_id for c in commands
                     if isinstance(c, Settle) and c.user_wallet_id in wallets})

    def _owners(self, wallets, pending) -> Owners | None:
        """On Citus, the owner of every row the batch writes (its shard)."""
        return Owners(wallets, pending) if self.pool.distributed else None

    async def _decisive(self, conn, step: Awaitable[object], results: list[object], effects: Effects) -> None:
        """Await the step that commits (the autocommit write, or COMMIT). A refusal from the server
        means nothing was written; any other failure leaves the batch in doubt (see _resolve)."""
        backend = backend_of(self.pool, conn)
        try:
            await step
        except BaseException as exc:
            if server_refused(exc):
                raise
            discard(conn)
            doubt = InDoubt(backend, exc)
            doubt.outcome = (results, effects)
            raise doubt from exc

    def _plan_all(self, commands, wallets, rates, pending, stored, effects):
        desks = {cur: wallets[w] for cur, w in self.predictions.desks.items() if w in wallets}
        idempotency_rows = []
        results: list[object] = []
        for command in commands:
            try:
                key = command.idempotency
                if key is not None and (key.principal_id, key.key) in stored:
                    request_hash, status, body = stored[(key.principal_id, key.key)]
                    if request_hash != key.request_hash:
                        raise errors.IdempotencyKeyReused()
                    results.append(Replay(status, body))
                    continue
                body = self._plan_contained(command, wallets, desks, rates, pending, effects)
                if key is not None:
                    stored[(key.principal_id, key.key)] = (key.request_hash, 200, body)
                    idempotency_rows.append((key.principal_id, key.key, key.request_hash, 200, body))
                results.append(body)
            except errors.DomainError as exc:
                results.append(exc)
        return results, idempotency_rows

    def _plan_contained(self, command, wallets, desks, rates, pending, effects):
        """Plan one command; if it fails with anything but a refusal (a bug), undo what it had
        planned so the rest of the batch goes on without it."""
        mark = effects.mark()
        state = pending.get(command.transaction_id) if isinstance(command, Settle) else None
        saved = (state.status, state.record) if state is not None else None
        try:
            return self._plan(command, wallets, desks, rates, pending, effects)
        except errors.DomainError:
            raise
        except Exception:
            effects.rollback(mark, wallets)
            if state is not None and saved is not None:
                state.status, state.record = saved
            log.exception("ledger.plan_failed", command=type(command).__name__, request_id=command.request_id)
            raise errors.InternalFailure() from None

    @staticmethod
    def _plan(command, wallets, desks, rates, pending, effects):
        if isinstance(command, Transfer):
            return plan_transfer(command, wallets, desks, rates, effects)
        if isinstance(command, Settle):
            return plan_settlement(command, pending.get(command.transaction_id), wallets, effects)
        if isinstance(command, RequestDeposit):
            return plan_deposit_request(command, wallets, effects)
        if isinstance(command, RequestWithdraw):
            return plan_withdraw_request(command, wallets, effects)
        raise TypeError(f"unknown command {command!r}")

    @staticmethod
    async def _stored_responses(conn, keys, distributed: bool) -> dict:
        rows = await conn.fetch(_STORED_OWNED if distributed else _STORED,
                                [k.principal_id for k in keys], [k.key for k in keys])
        return {(r[0], r[1]): (r[2], r[3], json.loads(r[4])) for r in rows}
