"""PgLedger: applies a batch of commands in one PostgreSQL statement or transaction (group commit).

Fast path, one round trip: the batch is planned against balances this process predicts (its
cache of what it read and what it committed), and written by one statement. The database
decides, not the prediction: the postings trigger takes the wallets' row locks in id order,
refuses unbalanced entries and unknown wallets, and the CHECK constraints refuse any overdraft;
a settlement is a compare-and-set on the pending status. If the database refuses the statement,
or the prediction says a command lacks funds (it may be stale when other processes share the
database), the batch goes the locked path instead.

Locked path: every wallet the batch touches is locked up front in id order (SELECT … FOR UPDATE),
the batch is planned against balances read under those locks, and written in that transaction.
A batch that still fails there is retried one command per transaction, so one bad command fails
only its caller, whatever it raises.

Failures (persistence/failures.py): an unreachable database is `Unavailable` (503, nothing
moved). A write whose answer never came back (connection lost or cancelled while the fast path's
statement or the locked path's COMMIT was in flight) is in doubt: walletd generated every id it
wrote, so `_resolve` stops the old backend if it still runs, then looks one of the batch's ids up
once the database answers, and reports what really happened: the results (committed) or
`Unavailable` (not committed). Past `in_doubt_seconds` it is `OutcomeUnknown` (500): the client
retries with its Idempotency-Key and learns the outcome. Only DomainErrors leave `apply`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import asyncpg
import orjson

from walletd import metrics
from walletd.domain import errors
from walletd.domain.ledger import (
    Command, Effects, PendingState, RateBook, RequestDeposit, RequestWithdraw, Settle, Transfer,
    WalletState, plan_deposit_request, plan_settlement, plan_transfer, plan_withdraw_request, tx_json,
    wallets_touched,
)
from walletd.logs import get_logger
from walletd.persistence.db import FairPool, discard
from walletd.persistence.failures import UNAVAILABLE, outage, server_refused
from walletd.persistence.migrate import OPERATOR_USER_ID

log = get_logger("walletd.ledger")

_RETRYABLE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError, asyncpg.UniqueViolationError)
# Bounded so memory follows active wallets: cleared whole when full, then refilled on use.
_CACHE_LIMIT = 20_000
_WALLET_FACTS = "SELECT id, user_id, currency_id, kind, balance, reserved_balance FROM wallets WHERE id = ANY($1::uuid[])"


@dataclass(frozen=True)
class Replay:
    """A stored first response returned for a retried Idempotency-Key."""

    status: int
    body: dict


class _Unsure(Exception):
    """The fast path cannot settle this batch; take the locked path."""


class _InDoubt(Exception):
    """A write was sent and its answer never came: it may or may not have committed."""

    def __init__(self, backend: tuple[int, datetime | None], cause: BaseException) -> None:
        super().__init__(repr(cause))
        self.backend = backend
        self.cause = cause
        self.outcome: tuple[list[object], Effects] | None = None


class PgLedger:
    def __init__(self, pool: FairPool, rates_max_age: timedelta | None = None, *,
                 in_doubt_seconds: float = 30.0) -> None:
        self.pool = pool
        self.rates_max_age = rates_max_age
        self.in_doubt_seconds = in_doubt_seconds
        # Per wallet: owner, currency and kind (never change) and a predicted balance.
        self._known: dict[uuid.UUID, WalletState] = {}
        self._desks: dict[int, uuid.UUID] = {}
        self.fast_batches = 0
        self.locked_batches = 0
        self.in_doubt = {"committed": 0, "not_committed": 0, "unknown": 0}

    async def apply(self, commands: list[Command]) -> tuple[list[object], list[tuple[str, dict]]]:
        """Results aligned with commands (a tx dict, a Replay, or a DomainError), plus audit events.
        Raises only DomainErrors, and then for the whole batch: Unavailable, OutcomeUnknown."""
        outcome = await self._apply(commands)
        outage.succeeded()  # the database answered this batch: any outage is over
        return outcome

    async def _apply(self, commands: list[Command]) -> tuple[list[object], list[tuple[str, dict]]]:
        try:
            try:
                outcome = await self._apply_fast(commands)
                self.fast_batches += 1
                metrics.FAST_PATH.inc()  # metrics (api branch)
                return outcome
            except _Unsure:
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
        except _InDoubt as doubt:
            return await self._resolve(doubt)
        except UNAVAILABLE as exc:
            outage.failed(exc)
            raise errors.Unavailable() from None
        except errors.DomainError:
            raise
        except Exception:
            # A bug before anything was written (writes end in _InDoubt or a server refusal).
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
                except _InDoubt as doubt:
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

    async def _resolve(self, doubt: _InDoubt):
        """Find out whether an in-doubt write committed (see the module docstring)."""
        assert doubt.outcome is not None
        results, effects = doubt.outcome
        marker = _marker(effects)
        log.warning("ledger.in_doubt", error=repr(doubt.cause)[:300], commands=len(results), marker=str(marker[1]))
        deadline = time.monotonic() + self.in_doubt_seconds
        delay = 0.05
        while True:
            try:
                async with self.pool.acquire(timeout=max(0.1, deadline - time.monotonic())) as conn:
                    await _stop_backend(conn, doubt.backend, deadline)
                    committed = await _was_written(conn, marker)
                    if committed:
                        await _wait_for_standby(conn, deadline)
                break
            except (*UNAVAILABLE, asyncpg.PostgresError) as exc:
                outage.failed(exc)
                if time.monotonic() + delay >= deadline:
                    self.in_doubt["unknown"] += 1
                    log.error("ledger.outcome_unknown", marker=str(marker[1]), commands=len(results),
                              transactions=[str(t["id"]) for t in effects.new_transactions],
                              request_ids=sorted({r for _, _, r in effects.entries if r}))
                    raise errors.OutcomeUnknown() from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        outage.succeeded()
        for _, wallet_id, _, _, _ in effects.postings:
            self._known.pop(wallet_id, None)  # re-read: cheaper than reasoning about half-known state
        log.warning("ledger.in_doubt_resolved", committed=committed, marker=str(marker[1]))
        if committed:
            self.in_doubt["committed"] += 1
            return results, effects.events
        self.in_doubt["not_committed"] += 1
        raise errors.Unavailable()

    # ---- fast path ---------------------------------------------------------------------------

    async def _apply_fast(self, commands: list[Command]):
        known, crosses = await self._wallets_for(commands)
        # Plan on copies: a refused statement must leave the predictions as they were.
        wallets = {i: dataclasses.replace(state) for i, state in known.items()}
        now = datetime.now(timezone.utc)
        settle_ids = [c.transaction_id for c in commands if isinstance(c, Settle)]
        pending = await self._pending(self.pool, settle_ids, lock=False) if settle_ids else {}
        rates = await self._rates(self.pool, now) if crosses else RateBook({}, now)
        keys = [c.idempotency for c in commands if c.idempotency is not None]
        stored = await self._stored_responses(self.pool, keys) if keys else {}
        effects = Effects(now)
        results, idempotency_rows = self._plan_all(commands, wallets, rates, pending, stored, effects)
        if any(isinstance(r, errors.InsufficientFunds) for r in results):
            raise _Unsure()  # the prediction may be stale: ask the database under lock
        if _writes_anything(effects, idempotency_rows):
            try:
                async with self.pool.acquire() as conn:
                    await self._flush(conn, effects, idempotency_rows, autocommit=True)
            except _InDoubt as doubt:
                doubt.outcome = (results, effects)
                raise
            outage.succeeded()
        self._learn(effects)
        return results, effects.events

    def forget(self) -> None:
        """Drop every prediction (they are re-read on next use)."""
        self._known = {}

    def _learn(self, effects: Effects) -> None:
        """Apply a committed batch's postings to the predictions (a wrong prediction only costs a
        locked-path retry: the database decides)."""
        for _, wallet_id, _, bucket, amount in effects.postings:
            state = self._known.get(wallet_id)
            if state is not None:
                if bucket == "B":
                    state.balance += amount
                else:
                    state.reserved += amount

    async def _facts(self, ids: set[uuid.UUID]) -> dict[uuid.UUID, WalletState]:
        # Built from what this call saw and fetched, never re-read from the cache after an await:
        # a concurrent locked batch may drop entries meanwhile.
        found = {i: self._known[i] for i in ids if i in self._known}
        missing = [i for i in ids if i not in found]
        if missing:
            rows = await self.pool.fetch(_WALLET_FACTS, missing)
            if len(self._known) + len(rows) > _CACHE_LIMIT:
                self._known.clear()
            for r in rows:
                found[r[0]] = self._known[r[0]] = WalletState(r[0], r[1], r[2], r[3], r[4], r[5])
        return found

    @staticmethod
    def _touched(commands: list[Command]) -> set[uuid.UUID]:
        ids: set[uuid.UUID] = set()
        for command in commands:
            ids |= wallets_touched(command)
        return ids

    @staticmethod
    def _crosses(commands: list[Command], known) -> set[int]:
        """Currencies on either side of a cross-currency transfer in the batch."""
        currencies: set[int] = set()
        for c in commands:
            if isinstance(c, Transfer) and c.source_wallet_id in known and c.target_wallet_id in known:
                src, dst = known[c.source_wallet_id].currency_id, known[c.target_wallet_id].currency_id
                if src != dst:
                    currencies |= {src, dst}
        return currencies

    async def _wallets_for(self, commands: list[Command]) -> tuple[dict[uuid.UUID, WalletState], set[int]]:
        """Every wallet the batch may touch, with the exchange desks its cross-currency transfers
        need, and the currencies those transfers cross."""
        known = await self._facts(self._touched(commands))
        currencies = self._crosses(commands, known)
        if currencies:
            known |= await self._facts(await self._desk_ids(currencies))
        return known, currencies

    async def _desk_ids(self, currencies: set[int]) -> set[uuid.UUID]:
        if not currencies <= self._desks.keys():
            rows = await self.pool.fetch(
                "SELECT id, currency_id FROM wallets WHERE user_id = $1 AND kind = 'operator'", OPERATOR_USER_ID)
            self._desks = {r["currency_id"]: r["id"] for r in rows}
        return {self._desks[c] for c in currencies if c in self._desks}

    # ---- locked path -------------------------------------------------------------------------

    async def _apply_locked(self, commands: list[Command]):
        known, crosses = await self._wallets_for(commands)
        settle_ids = sorted({c.transaction_id for c in commands if isinstance(c, Settle)})
        keys = [c.idempotency for c in commands if c.idempotency is not None]
        async with self.pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            try:
                rows = await conn.fetch(
                    "SELECT id, balance, reserved_balance FROM wallets WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE",
                    sorted(known))
                wallets = {r[0]: dataclasses.replace(known[r[0]], balance=r[1], reserved=r[2]) for r in rows}
                pending = await self._pending(conn, settle_ids, lock=True) if settle_ids else {}
                now = datetime.now(timezone.utc)
                rates = await self._rates(conn, now) if crosses else RateBook({}, now)
                stored = await self._stored_responses(conn, keys) if keys else {}
                effects = Effects(now)
                results, idempotency_rows = self._plan_all(commands, wallets, rates, pending, stored, effects)
                if _writes_anything(effects, idempotency_rows):
                    await self._flush(conn, effects, idempotency_rows, autocommit=False)
            except BaseException:
                # Before COMMIT: whatever happened, nothing of this transaction is written.
                if not conn.is_closed():
                    try:
                        await transaction.rollback()
                    except Exception:  # noqa: BLE001 - a broken connection; the pool terminates it
                        pass
                raise
            backend = _backend(self.pool, conn)
            try:
                await transaction.commit()
            except BaseException as exc:
                if server_refused(exc):
                    raise
                discard(conn)
                doubt = _InDoubt(backend, exc)
                doubt.outcome = (results, effects)
                raise doubt from exc
        outage.succeeded()
        # Balances were read under lock: drop the predictions, the next fast path re-reads them.
        for wallet_id in wallets:
            self._known.pop(wallet_id, None)
        return results, effects.events

    # ---- shared ------------------------------------------------------------------------------

    def _plan_all(self, commands, wallets, rates, pending, stored, effects):
        desks = {cur: wallets[w] for cur, w in self._desks.items() if w in wallets}
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

    async def _rates(self, conn, now: datetime) -> RateBook:
        rows = await conn.fetch("SELECT from_currency_id, to_currency_id, rate, updated_at FROM exchange_rates")
        return RateBook({(r[0], r[1]): (r[2], r[3]) for r in rows}, now, self.rates_max_age)

    @staticmethod
    async def _pending(conn, ids: list[uuid.UUID], *, lock: bool) -> dict[uuid.UUID, PendingState]:
        rows = await conn.fetch(f"SELECT {TX_COLUMNS}, external_wallet_id FROM transactions "
                                "WHERE id = ANY($1::uuid[]) ORDER BY id" + (" FOR UPDATE" if lock else ""), ids)
        return {
            r["id"]: PendingState(r["id"], r["type"], r["status"], r["amount"], r["from_wallet_id"], r["to_wallet_id"],
                                  r["user_id"], r["service_user_id"], r["external_wallet_id"], tx_json(r))
            for r in rows
        }

    @staticmethod
    async def _stored_responses(conn, keys) -> dict:
        rows = await conn.fetch(
            """SELECT principal_id, key, request_hash, status_code, response FROM idempotency_keys
               WHERE (principal_id, key) IN (SELECT * FROM unnest($1::uuid[], $2::text[]))""",
            [k.principal_id for k in keys], [k.key for k in keys])
        return {(r[0], r[1]): (r[2], r[3], json.loads(r[4])) for r in rows}

    async def _flush(self, conn, fx: Effects, idempotency_rows: list, *, autocommit: bool) -> None:
        """All of a batch's writes in one statement and one parameter: a single JSON document is
        several times cheaper to encode than dozens of typed arrays, and the postings trigger
        sees the whole batch at once. In autocommit the statement is its own transaction, so a
        lost answer leaves it in doubt; inside a transaction only the COMMIT can."""
        document = {
            "now": fx.now,
            "entries": [{"id": e, "kind": k, "request_id": r} for e, k, r in fx.entries],
            "postings": [{"entry_id": e, "wallet_id": w, "currency_id": c, "bucket": b, "amount": a}
                         for e, w, c, b, a in fx.postings],
            "transactions": fx.new_transactions,
            "settled": [{"id": i, "status": st, "entry_id": e} for i, st, e in fx.status_updates],
            "paid_out": [{"id": i, "amount": a} for i, a in fx.external_credits],
            "settling": len(fx.status_updates),
            "idempotency": [{"principal_id": p, "key": k, "request_hash": h, "status_code": c, "response": r}
                            for p, k, h, c, r in idempotency_rows],
        }
        statement = _WRITE_BATCH
        if fx.outbox:  # only deposits and withdrawals: a batch of transfers runs the statement as before
            document["events"] = _outbox_rows(fx)
            statement = _WRITE_BATCH_WITH_EVENTS
        # A settlement whose compare-and-set finds the transaction no longer pending makes the
        # statement raise serialization_failure: nothing of the batch is written.
        payload = orjson.dumps(document, default=str).decode()
        backend = _backend(self.pool, conn)
        try:
            await conn.fetchval(statement, payload)
        except BaseException as exc:
            if not autocommit or server_refused(exc):
                raise
            discard(conn)
            raise _InDoubt(backend, exc) from exc


def _writes_anything(fx: Effects, idempotency_rows: list) -> bool:
    return bool(fx.entries or fx.new_transactions or fx.status_updates or idempotency_rows)


def _backend(pool: FairPool, conn) -> tuple[int, datetime | None]:
    pid = conn.get_server_pid()
    return pid, pool.backends.get(pid)


def _marker(fx: Effects) -> tuple:
    """One row the batch wrote: the batch is one transaction, so that row's presence is the
    whole batch's outcome. Every id is walletd's own (UUIDv7), so nothing else can have it."""
    if fx.entries:
        return ("entry", fx.entries[0][0])
    if fx.new_transactions:
        return ("transaction", fx.new_transactions[0]["id"])
    # Only status changes (e.g. deposits rejected): the row with this status at this batch's instant.
    transaction_id, status, _ = fx.status_updates[0]
    return ("settled", transaction_id, status, fx.now)


async def _was_written(conn, marker: tuple) -> bool:
    if marker[0] == "entry":
        return await conn.fetchval("SELECT EXISTS (SELECT 1 FROM journal_entries WHERE id = $1)", marker[1])
    if marker[0] == "transaction":
        return await conn.fetchval("SELECT EXISTS (SELECT 1 FROM transactions WHERE id = $1)", marker[1])
    return await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM transactions WHERE id = $1 AND status = $2 AND updated_at = $3)", *marker[1:])


async def _wait_for_standby(conn, deadline: float) -> None:
    """A commit is visible on the primary before its synchronous standby confirms it (and
    terminating its backend ends that wait), so finding it is not yet knowing it survives a
    failover. A transaction that writes WAL commits after it and returns only once the standby
    has flushed it, and so everything before it. A row lock is the smallest such write (a
    transaction with only an xid commits without waiting); FOR KEY SHARE blocks nobody who
    reads or updates currencies. Without a standby it is an ordinary commit.
    (tests/ha/sync_gap.py: without this wait, an acknowledged transfer was lost.)"""
    await conn.execute("SELECT 1 FROM currencies ORDER BY id LIMIT 1 FOR KEY SHARE",
                       timeout=max(0.1, deadline - time.monotonic()))


async def _stop_backend(conn, backend: tuple[int, datetime | None], deadline: float) -> None:
    """The old connection's server process may still be running the write (the client side of
    a connection can die first): terminate it and wait until it is gone, so the lookup that
    follows sees the final outcome. After a failover it is not on this server at all."""
    pid, started = backend
    if started is None:
        return
    while await conn.fetchval(
            "SELECT pg_terminate_backend(pid, 1000) IS NOT NULL FROM pg_stat_activity "
            "WHERE pid = $1 AND backend_start = $2", pid, started):
        if time.monotonic() >= deadline:
            raise TimeoutError("the in-doubt backend did not stop")
        await asyncio.sleep(0.05)


TX_COLUMNS = ("id, type, status, from_wallet_id, from_currency_id, amount, to_wallet_id, to_currency_id, rate, "
              "converted_amount, created_at, user_id, service_user_id, parent_id")
_TX_INSERT = (
    ("id", "uuid"), ("type", "text"), ("status", "text"), ("from_wallet_id", "uuid"), ("from_currency_id", "int2"),
    ("from_user_id", "uuid"), ("amount", "numeric"), ("to_wallet_id", "uuid"), ("to_currency_id", "int2"),
    ("to_user_id", "uuid"), ("rate", "numeric"), ("converted_amount", "numeric"), ("user_id", "uuid"),
    ("service_user_id", "uuid"), ("external_wallet_id", "uuid"), ("parent_id", "uuid"), ("entry_id", "uuid"),
    ("created_at", "timestamptz"),
)
_TX_TYPES = ", ".join(f"{c} {t}" for c, t in _TX_INSERT)
# Foreign keys between the parts (postings → entries, transactions → entries) are checked at
# the end of the statement, so sibling CTEs may reference each other's rows.
_WRITE_BATCH_TEMPLATE = """
WITH doc AS (SELECT $1::jsonb AS d), entries AS (
    INSERT INTO journal_entries (id, kind, request_id, created_at)
    SELECT e.id, e.kind, e.request_id, (d->>'now')::timestamptz
      FROM doc, jsonb_to_recordset(d->'entries') AS e(id uuid, kind text, request_id text)
), posted AS (
    INSERT INTO postings (entry_id, wallet_id, currency_id, bucket, amount)
    SELECT p.* FROM doc, jsonb_to_recordset(d->'postings')
        AS p(entry_id uuid, wallet_id uuid, currency_id int2, bucket text, amount numeric)
), recorded AS (
    INSERT INTO transactions ({tx_columns})
    SELECT t.* FROM doc, jsonb_to_recordset(d->'transactions') AS t({tx_types})
), settled AS (
    UPDATE transactions t SET status = u.status, entry_id = coalesce(u.entry_id, t.entry_id),
                              updated_at = (SELECT (d->>'now')::timestamptz FROM doc)
      FROM doc, jsonb_to_recordset(d->'settled') AS u(id uuid, status text, entry_id uuid)
     WHERE t.id = u.id AND t.status = 'pending'
    RETURNING 1
), paid_out AS (
    UPDATE external_wallets e SET amount_withdraw = e.amount_withdraw + c.amount
      FROM (SELECT id, sum(amount) AS amount
              FROM doc, jsonb_to_recordset(d->'paid_out') AS c(id uuid, amount numeric) GROUP BY id) c
     WHERE e.id = c.id
), remembered AS (
    INSERT INTO idempotency_keys (principal_id, key, request_hash, status_code, response)
    SELECT i.* FROM doc, jsonb_to_recordset(d->'idempotency')
        AS i(principal_id uuid, key text, request_hash text, status_code int2, response jsonb)
){outbox}
SELECT walletd_expect((SELECT count(*) FROM settled), (SELECT (d->>'settling')::bigint FROM doc))
"""
_WRITE_BATCH = _WRITE_BATCH_TEMPLATE.format(tx_columns=", ".join(c for c, _ in _TX_INSERT), tx_types=_TX_TYPES,
                                            outbox="")
# ---- issue 11: the transactional outbox. The events ride in the batch's own statement (so in its
# transaction, and the in-doubt lookup of one row covers them too), with one delivery row per
# endpoint of the event's service user (walletd/events/delivery.py sends them).
_OUTBOX_CTE = """, outbox AS (
    INSERT INTO events (id, service_user_id, type, transaction_id, body, created_at)
    SELECT o.id, o.service_user_id, o.type, o.transaction_id, o.body::json, (d->>'now')::timestamptz
      FROM doc, jsonb_to_recordset(d->'events')
        AS o(id uuid, service_user_id uuid, type text, transaction_id uuid, body text)
    RETURNING id, service_user_id
), fanned_out AS (
    INSERT INTO webhook_deliveries (event_id, endpoint_id, next_attempt_at, created_at)
    SELECT o.id, w.id, (SELECT (d->>'now')::timestamptz FROM doc), (SELECT (d->>'now')::timestamptz FROM doc)
      FROM outbox o JOIN webhook_endpoints w ON w.service_user_id = o.service_user_id
)"""
_WRITE_BATCH_WITH_EVENTS = _WRITE_BATCH_TEMPLATE.format(
    tx_columns=", ".join(c for c, _ in _TX_INSERT), tx_types=_TX_TYPES, outbox=_OUTBOX_CTE)


def _outbox_rows(fx: Effects) -> list[dict]:
    return [{"id": event["id"], "service_user_id": service_user_id, "type": event["type"],
             "transaction_id": event["data"]["id"], "body": orjson.dumps(event).decode()}
            for service_user_id, event in fx.outbox]
