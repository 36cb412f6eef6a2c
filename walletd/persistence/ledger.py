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

Idempotency-Keys: a command's first answer is stored under its key in the batch's own write, the
movement (200) or the refusal the ledger decided (insufficient funds, a missing or foreign wallet,
a missing or stale rate, a settlement conflict: its status and error body, rendered by the
injected `refusal_response`), so a retry answers exactly the first answer. A bug (InternalFailure)
decided nothing and is not stored.

Failures (persistence/failures.py): an unreachable database is `Unavailable` (503, nothing
moved). A write whose answer never came back (connection lost or cancelled while the fast path's
write or the locked path's COMMIT was in flight) is in doubt (persistence/in_doubt.py): `_resolve`
stops the old backend if it still runs, then looks one of the batch's rows up once the database
answers, and reports what really happened: the results (committed) or `Unavailable` (not
committed). Past `in_doubt_seconds`, or with no backend it could stop, it is `OutcomeUnknown`
(500): the client retries with its Idempotency-Key and learns the outcome. Only DomainErrors
leave `apply`.

Once the step that commits has returned, the batch's outcome is a value (`Decided`) and nothing but
returning it runs in this module: the committer answers the callers from it first, then calls
`learn` (predictions, counters, metrics), which can fail without changing any answer.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import asyncpg

from walletd import metrics
from walletd.domain import errors
from walletd.domain.commands import Command, Replay, Reverse, Settle
from walletd.domain.effects import Effects
from walletd.domain.planning import plan
from walletd.domain.rates import RateBook
from walletd.logs import get_logger
from walletd.persistence.batch_write import write_batch, writes_anything
from walletd.persistence.breaker import DatabaseBreaker
from walletd.persistence.db import FairPool
from walletd.persistence.failures import UNAVAILABLE
from walletd.persistence.in_doubt import InDoubt, await_commit, batch_evidence, find_out, transaction
from walletd.persistence.outcomes import Decided, RefusalResponse
from walletd.persistence.predictions import WalletPredictions
from walletd.persistence.rates import rate_book
from walletd.persistence.transactions import pending_states, reversal_states

log = get_logger("walletd.ledger")

_RETRYABLE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError, asyncpg.UniqueViolationError)


@dataclass
class _SentBatch:
    """What an in-doubt batch answers if it committed, and the rows it wrote."""

    results: list[object]
    effects: Effects
    idempotency_rows: list


class _NeedsLocks(Exception):
    """The fast path cannot decide this batch on predictions; take the locked path."""


class PgLedger:
    def __init__(self, pool: FairPool, breaker: DatabaseBreaker, rates_max_age: timedelta | None = None, *,
                 refusal_response: RefusalResponse, in_doubt_seconds: float = 30.0) -> None:
        self.pool = pool
        self.breaker = breaker
        self.rates_max_age = rates_max_age
        self.in_doubt_seconds = in_doubt_seconds
        self.refusal_response = refusal_response
        self.predictions = WalletPredictions(pool)
        self.fast_batches = 0
        self.locked_batches = 0
        self.in_doubt = {"committed": 0, "not_committed": 0, "unknown": 0}

    async def apply(self, commands: list[Command]) -> Decided:
        """The batch's outcome. Raises only DomainErrors, and then for the whole batch:
        Unavailable (nothing moved), OutcomeUnknown, InternalFailure (a bug before any write)."""
        try:
            return await self._decide(commands)
        except InDoubt as doubt:
            return await self._resolve(doubt)

    def learn(self, decided: Decided) -> None:
        """What this process learns from a batch whose callers have been answered: nothing here can
        change an answer, and a failure here costs at most a stale prediction (a locked-path retry)."""
        if not any(isinstance(result, errors.Unavailable) for result in decided.results):
            self.breaker.succeeded()  # the database answered this batch: any outage is over
        for effects in decided.learn_from:
            self.predictions.learn(effects)
        self.predictions.forget(decided.forget)
        if decided.path == "fast":
            self.fast_batches += 1
            metrics.FAST_PATH.inc()
        elif decided.path == "locked":
            self.locked_batches += 1
            metrics.LOCKED_PATH.inc()
        for label in decided.found_committed:
            self.in_doubt["committed"] += 1
            log.warning("ledger.in_doubt_resolved", committed=True, marker=label)

    async def _decide(self, commands: list[Command]) -> Decided:
        try:
            try:
                return await self._apply_fast(commands)
            except _NeedsLocks:
                pass
            except asyncpg.PostgresError as exc:
                if isinstance(exc, UNAVAILABLE):
                    raise
            try:
                return await self._apply_with_retry(commands)
            except (asyncpg.PostgresError, errors.DomainError) as exc:
                if isinstance(exc, UNAVAILABLE):
                    raise
                if len(commands) == 1 and isinstance(exc, errors.DomainError):
                    raise
            return await self._apply_one_by_one(commands)
        except InDoubt:
            raise
        except UNAVAILABLE as exc:
            self.breaker.failed(exc)
            raise errors.Unavailable() from None
        except errors.DomainError:
            raise
        except Exception:
            # A bug before anything was written (writes end in InDoubt or a server refusal).
            log.exception("ledger.batch_failed", size=len(commands))
            raise errors.InternalFailure() from None

    async def _apply_one_by_one(self, commands: list[Command]) -> Decided:
        """The batch failed as a whole: each command in its own transaction, so a poisoned one
        (whatever it raises) fails only its own caller."""
        decided = Decided([], [], path="locked")
        for command in commands:
            try:
                try:
                    one = await self._apply_with_retry([command])
                except InDoubt as doubt:
                    one = await self._resolve(doubt)
            except errors.DomainError as exc:
                one = Decided([exc], [], path="locked")
            except UNAVAILABLE as exc:
                self.breaker.failed(exc)
                one = Decided([errors.Unavailable()], [], path="locked")
            except Exception:
                log.exception("ledger.command_failed", command=type(command).__name__,
                              request_id=command.request_id)
                one = Decided([errors.InternalFailure()], [], path="locked")
            decided.add(one)
        return decided

    async def _apply_with_retry(self, commands: list[Command]) -> Decided:
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

    async def _resolve(self, doubt: InDoubt) -> Decided:
        """Find out whether an in-doubt write committed (see the module docstring). Raises only
        DomainErrors: a bug while finding out leaves the outcome unknown, never "nothing moved"."""
        try:
            return await self._find_out(doubt)
        except errors.DomainError:
            raise
        except Exception:
            log.exception("ledger.in_doubt_failed")
            raise errors.OutcomeUnknown() from None

    async def _find_out(self, doubt: InDoubt) -> Decided:
        sent = doubt.outcome
        assert isinstance(sent, _SentBatch)
        effects = sent.effects
        evidence = batch_evidence(effects, sent.idempotency_rows)
        log.warning("ledger.in_doubt", error=repr(doubt.cause)[:300], commands=len(sent.results), marker=evidence.label,
                    backend=doubt.backend and doubt.backend.pid)
        committed = await find_out(self.pool, doubt, evidence, self.in_doubt_seconds, self.breaker)
        touched = {wallet_id for _, wallet_id, _, _, _ in effects.postings}
        if committed is None:
            self.in_doubt["unknown"] += 1
            self.predictions.forget(touched)
            log.error("ledger.outcome_unknown", marker=evidence.label, commands=len(sent.results),
                      transactions=[str(t["id"]) for t in effects.new_transactions],
                      request_ids=sorted({r for _, _, r in effects.entries if r}))
            raise errors.OutcomeUnknown()
        if not committed:
            self.in_doubt["not_committed"] += 1
            log.warning("ledger.in_doubt_resolved", committed=False, marker=evidence.label)
            raise errors.Unavailable()
        # Committed: the predictions are re-read (cheaper than reasoning about half-known state).
        return Decided(sent.results, effects.audit_lines, path="in_doubt", forget=touched,
                       found_committed=[evidence.label])

    # ---- fast path ---------------------------------------------------------------------------

    async def _apply_fast(self, commands: list[Command]) -> Decided:
        predicted, currencies_to_convert = await self.predictions.wallets_for(commands)
        # Plan on copies: a refused statement must leave the predictions as they were.
        wallets = {i: dataclasses.replace(state) for i, state in predicted.items()}
        now = datetime.now(timezone.utc)
        pending = await self._pending(self.pool, commands, predicted, lock=False)
        rates = await rate_book(self.pool, now, self.rates_max_age) if currencies_to_convert else RateBook({}, now)
        keys = [c.idempotency for c in commands if c.idempotency is not None]
        stored = await self._stored_responses(self.pool, keys) if keys else {}
        effects = Effects(now)
        results, idempotency_rows = self._plan_all(commands, wallets, rates, pending, stored, effects)
        if any(isinstance(r, errors.InsufficientFunds) for r in results):
            raise _NeedsLocks()  # the prediction may be stale: ask the database under lock
        if writes_anything(effects, idempotency_rows):
            async with self.pool.acquire() as conn:
                # In autocommit the write is its own transaction: a lost answer leaves it in doubt.
                await self._await_commit(conn, self._write(conn, effects, idempotency_rows, wallets, pending),
                                         _SentBatch(results, effects, idempotency_rows))
        return Decided(results, effects.audit_lines, path="fast", learn_from=[effects])

    def forget(self) -> None:
        """Drop every prediction (they are re-read on next use)."""
        self.predictions.forget()

    async def owner(self, claimed_by, wallet_id, *read_along) -> tuple[uuid.UUID, str] | None:
        """(owner's user id, kind) of the wallet, None if it does not exist: what the edge asks
        before a command may enter the wallet's queue, from memory for a warm wallet (see
        persistence/predictions.py). claimed_by: the caller, who says the wallet is its own (only
        the Citus edition reads by it)."""
        return await self.predictions.owner(wallet_id, *read_along)

    # ---- locked path -------------------------------------------------------------------------

    async def _apply_locked(self, commands: list[Command]) -> Decided:
        predicted, currencies_to_convert = await self.predictions.wallets_for(commands)
        keys = [c.idempotency for c in commands if c.idempotency is not None]
        async with self.pool.acquire() as conn:
            try:
                async with transaction(conn):
                    rows = await self._locked_balances(conn, predicted)
                    wallets = {r[0]: dataclasses.replace(predicted[r[0]], balance=r[1], reserved=r[2]) for r in rows}
                    pending = await self._pending(conn, commands, predicted, lock=True)
                    now = datetime.now(timezone.utc)
                    rates = (await rate_book(conn, now, self.rates_max_age) if currencies_to_convert
                             else RateBook({}, now))
                    stored = await self._stored_responses(conn, keys) if keys else {}
                    effects = Effects(now)
                    results, idempotency_rows = self._plan_all(commands, wallets, rates, pending, stored, effects)
                    if writes_anything(effects, idempotency_rows):
                        # Inside a transaction only the COMMIT can leave the batch in doubt.
                        await self._write(conn, effects, idempotency_rows, wallets, pending)
            except InDoubt as doubt:
                if not writes_anything(effects, idempotency_rows):
                    # Nothing was written: the refusals and replays stand whatever the COMMIT did.
                    return Decided(results, [], path="locked", forget=set(wallets))
                doubt.outcome = _SentBatch(results, effects, idempotency_rows)
                raise
        # Balances were read under lock: drop the predictions, the next fast path re-reads them.
        return Decided(results, effects.audit_lines, path="locked", forget=set(wallets))

    # ---- shared ------------------------------------------------------------------------------

    @staticmethod
    async def _await_commit(conn, step: Awaitable[object], sent: _SentBatch) -> None:
        """Await the step that commits (see in_doubt.await_commit); an in-doubt batch carries what it
        answers if it committed."""
        try:
            await await_commit(conn, step)
        except InDoubt as doubt:
            doubt.outcome = sent
            raise

    def _plan_all(self, commands, wallets, rates, pending, stored, effects):
        """Each command's result, and the Idempotency-Key rows that remember them: a movement's
        record, or a refusal the ledger decided (never a bug, which decided nothing)."""
        desks = {cur: wallets[w] for cur, w in self.predictions.desks.items() if w in wallets}
        idempotency_rows = []
        results: list[object] = []
        for command in commands:
            key = command.idempotency
            first = stored.get((key.principal_id, key.key)) if key is not None else None
            if first is not None:
                request_hash, status, body = first
                results.append(Replay(status, body) if request_hash == key.request_hash
                               else errors.IdempotencyKeyReused())
                continue
            try:
                result = self._plan_contained(command, wallets, desks, rates, pending, effects)
                status, body = 200, result
            except errors.InternalFailure as exc:
                results.append(exc)
                continue
            except errors.DomainError as exc:
                result = exc
                if key is not None:
                    status, body = self.refusal_response(exc, command.request_id)
            if key is not None:
                stored[(key.principal_id, key.key)] = (key.request_hash, status, body)
                idempotency_rows.append((key.principal_id, key.key, key.request_hash, status, body))
            results.append(result)
        return results, idempotency_rows

    def _plan_contained(self, command, wallets, desks, rates, pending, effects):
        """Plan one command; if it fails with anything but a refusal (a bug), undo what it had
        planned so the rest of the batch goes on without it."""
        checkpoint = effects.checkpoint()
        state = pending.get(command.transaction_id) if isinstance(command, Settle) else None
        saved = (state.status, state.record, state.settled_by) if state is not None else None
        try:
            return plan(command, wallets, desks, rates, pending, effects)
        except errors.DomainError:
            raise
        except Exception:
            effects.rollback(checkpoint, wallets)
            if state is not None and saved is not None:
                state.status, state.record, state.settled_by = saved
            log.exception("ledger.plan_failed", command=type(command).__name__, request_id=command.request_id)
            raise errors.InternalFailure() from None

    # ---- what the Citus edition (persistence/citus/ledger.py) does its own way ----------------

    @staticmethod
    async def _locked_balances(conn, predicted: dict) -> list:
        return await conn.fetch("SELECT id, balance, reserved_balance FROM wallets WHERE id = ANY($1::uuid[]) "
                                "ORDER BY id FOR UPDATE", sorted(predicted))

    @staticmethod
    async def _pending(conn, commands: list[Command], wallets: dict, *, lock: bool) -> dict:
        """The records the batch settles, and what its reversals undo (keyed apart)."""
        settle_ids = sorted({c.transaction_id for c in commands if isinstance(c, Settle)})
        pending: dict = await pending_states(conn, settle_ids, lock=lock) if settle_ids else {}
        ids = sorted({c.transaction_id for c in commands if isinstance(c, Reverse)})
        states = await reversal_states(conn, ids, lock=lock) if ids else {}
        return pending | {(Reverse, i): state for i, state in states.items()}

    @staticmethod
    def _write(conn, effects: Effects, idempotency_rows: list, wallets: dict, pending: dict) -> Awaitable[None]:
        return write_batch(conn, effects, idempotency_rows)

    @staticmethod
    async def _stored_responses(conn, keys) -> dict:
        rows = await conn.fetch(
            """SELECT principal_id, key, request_hash, status_code, response FROM idempotency_keys
               WHERE (principal_id, key) IN (SELECT * FROM unnest($1::uuid[], $2::text[]))""",
            [k.principal_id for k in keys], [k.key for k in keys])
        return {(r[0], r[1]): (r[2], r[3], json.loads(r[4])) for r in rows}
