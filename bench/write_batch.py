"""Micro-benchmark: the batch write as the old inline statement vs walletd_write_batch(doc).

Not part of `make bench`: `python -m bench.write_batch [--batches 2000]` starts a throwaway
embedded PostgreSQL, migrates a database, and writes single-command batches through one asyncpg
connection in autocommit (as the ledger's fast path does, but with synchronous_commit off so the
statement's cost is measured, not the disk's), each variant in turn, in interleaved rounds so
background load hits them alike:

- transfer: one journal entry, two postings, one closed transaction (a same-currency transfer);
- deposit request: one pending transaction and its outbox event (the events variant).

The alternative to one function that skips the outbox statement when `events` is empty is two
functions (with and without the outbox CTE in one statement); the second is built here as a
temporary function from the old events statement, so both designs are measured.

Printed: statements per second per variant (median of the rounds). The old statements are kept
here verbatim (as they were in persistence/ledger.py before migration 0005) for the comparison.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import asyncpg

from tests.support import servers
from walletd.domain.effects import Effects
from walletd.domain.ids import new_id
from walletd.domain.state import WalletState
from walletd.domain.vocabulary import Bucket, EntryKind, TxStatus, TxType
from walletd.persistence import accounts, embedded
from walletd.persistence.batch_write import WRITE_BATCH, batch_document
from walletd.persistence.breaker import DatabaseBreaker
from walletd.persistence.migrate import migrate

# ---- the statements as they were (walletd 1a4ec8a .. migration 0003) ----------------------------
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
# ---- the transactional outbox. The events ride in the batch's own statement (so in its
# transaction, and the in-doubt lookup of one row covers them too), with one delivery row per
# endpoint of the event's service user (walletd/jobs/webhook_delivery.py sends them).
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

# The two-functions design's events variant: the old one-statement write inside plpgsql.
_OLD_CHECK = "\nSELECT walletd_expect((SELECT count(*) FROM settled), (SELECT (d->>'settling')::bigint FROM doc))"
_TWO_FUNCTIONS_EVENTS_VARIANT = (
    "CREATE FUNCTION pg_temp.write_batch_with_events(doc_in jsonb) RETURNS bigint LANGUAGE plpgsql AS $f$\n"
    "DECLARE n bigint;\nBEGIN\n"
    + _WRITE_BATCH_WITH_EVENTS.replace("$1::jsonb", "doc_in").rstrip().replace(_OLD_CHECK, _OLD_CHECK + " INTO n")
    + ";\nRETURN n;\nEND $f$")


# ---- the benchmark -------------------------------------------------------------------------------


def _old_document(new_document: str, fx: Effects) -> str:
    """The old statement also wanted the number of settlements in the document."""
    return new_document[:-1] + f', "settling": {len(fx.status_updates)}}}'


def _transfer(gateway: WalletState, user: WalletState) -> Effects:
    fx = Effects(datetime.now(timezone.utc))
    entry_id = fx.entry(EntryKind.TRANSFER, "bench", [(gateway, Bucket.BALANCE, Decimal("-1")),
                                                  (user, Bucket.BALANCE, Decimal("1"))])
    fx.record(type=TxType.TRANSFER, status=TxStatus.CLOSE, source=gateway, target=user, amount=Decimal(1),
              converted=Decimal(1), rate=Decimal(1), user_id=user.user_id, entry_id=entry_id)
    return fx


def _deposit_request(gateway: WalletState, user: WalletState, service_user_id: uuid.UUID) -> Effects:
    fx = Effects(datetime.now(timezone.utc))
    row = fx.record(type=TxType.DEPOSIT, status=TxStatus.PENDING, source=gateway, target=user, amount=Decimal(1),
                    converted=Decimal(1), rate=Decimal(1), user_id=user.user_id, entry_id=None,
                    service_user_id=service_user_id)
    fx.publish("deposit.requested", service_user_id, {"id": str(row["id"]), "status": TxStatus.PENDING})
    return fx


async def _round(conn, statement: str, documents: list[str]) -> float:
    started = time.perf_counter()
    for document in documents:
        await conn.fetchval(statement, document)
    return len(documents) / (time.perf_counter() - started)


async def _main(batches: int, rounds: int) -> None:
    base = Path(tempfile.mkdtemp(prefix="walletd-writebatch-"))
    base.chmod(0o755)
    server = embedded.start(base, throwaway=True)
    try:
        url = await servers.create_empty_database(embedded.database_url(server), "walletd_write_batch_bench")
        conn = await asyncpg.connect(url)
        try:
            await migrate(conn)
            # The statement's own cost, not the disk's: with a flush per commit the figures
            # measure fsync latency on a shared machine.
            await conn.execute("SET synchronous_commit = off")
            pool_like = _OneConnection(conn)
            user_id, _ = await accounts.create_user(pool_like, username="bench_user", email="u@bench.invalid",
                                                    password_hash="!", role="user", breaker=DatabaseBreaker())
            service_id, _ = await accounts.create_user(pool_like, username="bench_service", email="s@bench.invalid",
                                                       password_hash="!", role="service", breaker=DatabaseBreaker())
            await conn.execute("INSERT INTO webhook_endpoints (id, service_user_id, url, secret) "
                               "VALUES ($1, $2, 'http://127.0.0.1:9/hook', 'bench')", new_id(), service_id)
            states = "id, user_id, currency_id, kind, balance, reserved_balance"
            user = WalletState(*await conn.fetchrow(
                f"SELECT {states} FROM wallets WHERE user_id = $1 AND currency_id = 1", user_id))
            gateway = WalletState(*await conn.fetchrow(
                f"SELECT {states} FROM wallets WHERE user_id = $1 AND currency_id = 1 AND kind = 'gateway'",
                service_id))
            await conn.execute(_TWO_FUNCTIONS_EVENTS_VARIANT)
            per_round = max(1, batches // rounds)
            variants = {
                "transfer, old statement": (_WRITE_BATCH, lambda: _old(_transfer(gateway, user))),
                "transfer, walletd_write_batch": (WRITE_BATCH, lambda: _new(_transfer(gateway, user))),
                "deposit request + event, old statement": (
                    _WRITE_BATCH_WITH_EVENTS, lambda: _old(_deposit_request(gateway, user, service_id))),
                "deposit request + event, walletd_write_batch": (
                    WRITE_BATCH, lambda: _new(_deposit_request(gateway, user, service_id))),
                "deposit request + event, second function": (
                    "SELECT pg_temp.write_batch_with_events($1::jsonb)",
                    lambda: _old(_deposit_request(gateway, user, service_id))),
            }
            for statement, make in variants.values():  # warm-up: plans cached, pages in memory
                await _round(conn, statement, [make() for _ in range(50)])
            rates: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(rounds):
                for name, (statement, make) in variants.items():
                    rates[name].append(await _round(conn, statement, [make() for _ in range(per_round)]))
            print(f"{per_round * rounds} batches per variant in {rounds} interleaved rounds "
                  "(statements/s, median; min-max)")
            for name, values in rates.items():
                print(f"  {name:<46} {statistics.median(values):8.0f}   ({min(values):.0f}-{max(values):.0f})")
        finally:
            await conn.close()
    finally:
        server.cleanup()


def _new(fx: Effects) -> str:
    return batch_document(fx, [])


def _old(fx: Effects) -> str:
    return _old_document(batch_document(fx, []), fx)


class _OneConnection:
    """accounts.create_user wants a pool; one connection is enough here."""

    def __init__(self, conn) -> None:
        self.conn = conn

    def acquire(self):
        return _Acquired(self.conn)


class _Acquired:
    def __init__(self, conn) -> None:
        self.conn = conn

    async def __aenter__(self):
        return self.conn

    async def __aexit__(self, *exc) -> None:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=2000, help="batches per variant (default 2000)")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds (default 4)")
    args = parser.parse_args()
    servers.run(_main(args.batches, args.rounds))


if __name__ == "__main__":
    main()
