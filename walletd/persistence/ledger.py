"""PgLedger: applies a batch of commands in one PostgreSQL transaction (group commit).

Every wallet the batch touches is locked up front in id order (SELECT … FOR UPDATE), so two
batches, in this process or any other, never wait on each other in a cycle. Planning then runs
against balances read under those locks, so no other process can change them mid-batch; the
CHECK constraints and the postings trigger are the last guard. A batch that fails in the
database is retried one command per transaction, so one bad command fails only its caller.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import asyncpg
import orjson

from walletd.domain import errors
from walletd.domain.ledger import (
    Command, Effects, PendingState, RateBook, RequestDeposit, RequestWithdraw, Settle, Transfer,
    WalletState, plan_deposit_request, plan_settlement, plan_transfer, plan_withdraw_request, tx_json,
    wallets_touched,
)
from walletd.persistence.migrate import OPERATOR_USER_ID

_RETRYABLE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError, asyncpg.UniqueViolationError)
# Bounded so memory follows active wallets: cleared whole when full, then refilled on use.
_META_CACHE_LIMIT = 20_000


@dataclass(frozen=True)
class Replay:
    """A stored first response returned for a retried Idempotency-Key."""

    status: int
    body: dict


@dataclass(frozen=True)
class WalletMeta:
    user_id: uuid.UUID
    currency_id: int
    kind: str


class PgLedger:
    def __init__(self, pool: asyncpg.Pool, rates_max_age: timedelta | None = None) -> None:
        self.pool = pool
        self.rates_max_age = rates_max_age
        # Owner, currency and kind of a wallet never change, so caching them is always safe.
        self._meta: dict[uuid.UUID, WalletMeta] = {}
        self._desks: dict[int, uuid.UUID] = {}

    async def apply(self, commands: list[Command]) -> tuple[list[object], list[tuple[str, dict]]]:
        """Results aligned with commands (a tx dict, a Replay, or a DomainError), plus audit events."""
        try:
            return await self._apply_with_retry(commands)
        except (asyncpg.PostgresError, errors.DomainError):
            if len(commands) == 1:
                raise
        results, events = [], []
        for command in commands:
            try:
                (result,), more = await self._apply_with_retry([command])
            except errors.DomainError as exc:
                result, more = exc, []
            results.append(result)
            events.extend(more)
        return results, events

    async def _apply_with_retry(self, commands: list[Command]):
        for attempt in range(3):
            try:
                return await self._apply_batch(commands)
            except _RETRYABLE:
                # A lost race with another process (deadlock victim, or a concurrent first use
                # of the same Idempotency-Key): the next attempt reads the winner's result.
                if attempt == 2:
                    raise
            except asyncpg.CheckViolationError:
                # Only reachable if another writer changed a balance outside this batch's locks.
                raise errors.InsufficientFunds() from None
        raise AssertionError("unreachable")

    async def _apply_batch(self, commands: list[Command]):
        ids: set[uuid.UUID] = set()
        for command in commands:
            ids |= wallets_touched(command)
        meta = await self._metadata(ids)
        crosses = {
            (meta[c.source_wallet_id].currency_id, meta[c.target_wallet_id].currency_id)
            for c in commands
            if isinstance(c, Transfer) and c.source_wallet_id in meta and c.target_wallet_id in meta
            and meta[c.source_wallet_id].currency_id != meta[c.target_wallet_id].currency_id
        }
        if crosses:
            currencies = {cur for pair in crosses for cur in pair}
            if not currencies <= self._desks.keys():
                await self._desk_wallets()
            desk_ids = {self._desks[cur] for cur in currencies if cur in self._desks}
            ids |= desk_ids
            meta.update(await self._metadata(desk_ids))
        settle_ids = sorted({c.transaction_id for c in commands if isinstance(c, Settle)})
        keys = [c.idempotency for c in commands if c.idempotency is not None]

        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT id, balance, reserved_balance FROM wallets WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE",
                sorted(i for i in ids if i in meta))
            wallets = {
                r["id"]: WalletState(r["id"], meta[r["id"]].user_id, meta[r["id"]].currency_id, meta[r["id"]].kind,
                                     r["balance"], r["reserved_balance"])
                for r in rows
            }
            pending = await self._lock_pending(conn, settle_ids) if settle_ids else {}
            now = datetime.now(timezone.utc)
            rates = await self._rates(conn, now) if crosses else RateBook({}, now)
            desks = {cur: wallets[w] for cur, w in self._desks.items() if w in wallets}
            stored = await self._stored_responses(conn, keys) if keys else {}

            effects = Effects(now)
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
                    result = self._plan(command, wallets, desks, rates, pending, effects)
                    body = result
                    if key is not None:
                        stored[(key.principal_id, key.key)] = (key.request_hash, 200, body)
                        idempotency_rows.append((key.principal_id, key.key, key.request_hash, 200, body))
                    results.append(body)
                except errors.DomainError as exc:
                    results.append(exc)
            await self._flush(conn, effects, idempotency_rows)
        return results, effects.events

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

    async def _metadata(self, ids: set[uuid.UUID]) -> dict[uuid.UUID, WalletMeta]:
        missing = [i for i in ids if i not in self._meta]
        if missing:
            if len(self._meta) > _META_CACHE_LIMIT:
                self._meta.clear()
            rows = await self.pool.fetch(
                "SELECT id, user_id, currency_id, kind FROM wallets WHERE id = ANY($1::uuid[])", missing)
            for r in rows:
                self._meta[r["id"]] = WalletMeta(r["user_id"], r["currency_id"], r["kind"])
        return {i: self._meta[i] for i in ids if i in self._meta}

    async def _desk_wallets(self) -> None:
        rows = await self.pool.fetch(
            "SELECT id, currency_id FROM wallets WHERE user_id = $1 AND kind = 'operator'", OPERATOR_USER_ID)
        self._desks = {r["currency_id"]: r["id"] for r in rows}
        for r in rows:
            self._meta[r["id"]] = WalletMeta(OPERATOR_USER_ID, r["currency_id"], "operator")

    async def _rates(self, conn: asyncpg.Connection, now: datetime) -> RateBook:
        rows = await conn.fetch("SELECT from_currency_id, to_currency_id, rate, updated_at FROM exchange_rates")
        return RateBook({(r[0], r[1]): (r[2], r[3]) for r in rows}, now, self.rates_max_age)

    @staticmethod
    async def _lock_pending(conn: asyncpg.Connection, ids: list[uuid.UUID]) -> dict[uuid.UUID, PendingState]:
        rows = await conn.fetch(f"SELECT {TX_COLUMNS}, external_wallet_id FROM transactions "
                                "WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE", ids)
        return {
            r["id"]: PendingState(r["id"], r["type"], r["status"], r["amount"], r["from_wallet_id"], r["to_wallet_id"],
                                  r["user_id"], r["service_user_id"], r["external_wallet_id"], tx_json(r))
            for r in rows
        }

    @staticmethod
    async def _stored_responses(conn: asyncpg.Connection, keys) -> dict:
        rows = await conn.fetch(
            """SELECT principal_id, key, request_hash, status_code, response FROM idempotency_keys
               WHERE (principal_id, key) IN (SELECT * FROM unnest($1::uuid[], $2::text[]))""",
            [k.principal_id for k in keys], [k.key for k in keys])
        return {(r[0], r[1]): (r[2], r[3], json.loads(r[4])) for r in rows}

    @staticmethod
    async def _flush(conn: asyncpg.Connection, fx: Effects, idempotency_rows: list) -> None:
        """All of a batch's writes in one statement and one parameter: a single JSON document is
        several times cheaper to encode than dozens of typed arrays, and the postings trigger
        sees the whole batch at once."""
        if not (fx.entries or fx.new_transactions or fx.status_updates or idempotency_rows):
            return
        document = {
            "now": fx.now,
            "entries": [{"id": e, "kind": k, "request_id": r} for e, k, r in fx.entries],
            "postings": [{"entry_id": e, "wallet_id": w, "currency_id": c, "bucket": b, "amount": a}
                         for e, w, c, b, a in fx.postings],
            "transactions": fx.new_transactions,
            "settled": [{"id": i, "status": st, "entry_id": e} for i, st, e in fx.status_updates],
            "paid_out": [{"id": i, "amount": a} for i, a in fx.external_credits],
            "idempotency": [{"principal_id": p, "key": k, "request_hash": h, "status_code": c, "response": r}
                            for p, k, h, c, r in idempotency_rows],
        }
        updated = await conn.fetchval(_WRITE_BATCH, orjson.dumps(document, default=str).decode())
        if updated != len(fx.status_updates):  # compare-and-set lost: impossible under the row lock
            raise asyncpg.SerializationError("pending transaction changed under lock")


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
_WRITE_BATCH = f"""
WITH doc AS (SELECT $1::jsonb AS d), entries AS (
    INSERT INTO journal_entries (id, kind, request_id, created_at)
    SELECT e.id, e.kind, e.request_id, (d->>'now')::timestamptz
      FROM doc, jsonb_to_recordset(d->'entries') AS e(id uuid, kind text, request_id text)
), posted AS (
    INSERT INTO postings (entry_id, wallet_id, currency_id, bucket, amount)
    SELECT p.* FROM doc, jsonb_to_recordset(d->'postings')
        AS p(entry_id uuid, wallet_id uuid, currency_id int2, bucket text, amount numeric)
), recorded AS (
    INSERT INTO transactions ({', '.join(c for c, _ in _TX_INSERT)})
    SELECT t.* FROM doc, jsonb_to_recordset(d->'transactions') AS t({_TX_TYPES})
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
)
SELECT count(*) FROM settled
"""
