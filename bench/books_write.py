"""Micro-benchmark: what migration 0009 (the books) costs the batch write, the hottest insert.

Not part of `make bench`: `python -m bench.books_write [--batches 3000]` starts a throwaway
embedded PostgreSQL with two databases, one migrated up to 0008 (postings without a time, a
record or an index; walletd_write_batch as 0005 wrote it) and one migrated through 0009, and
writes the same batches into both through one asyncpg connection each, in autocommit as the
ledger's fast path does (synchronous_commit off, so the statement's cost is measured, not the
disk's), in interleaved rounds so background load hits both alike:

- transfer: one journal entry, two postings, one record (a same-currency transfer between two of
  1,000 wallets chosen at random);
- 100 legs: one entry of 100 transfers from one wallet to 100 others (a POST /wallet/transfers).

Printed per variant, median of the rounds: the CPU its PostgreSQL backend spent per statement
(utime + stime from /proc: what the write costs the database, whatever else the machine runs),
and statements per second (wall clock: moves with the machine's load); then the cost of 0009.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import tempfile
import time
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import asyncpg

from bench import procstat
from tests.support import servers
from walletd.domain.effects import Effects
from walletd.domain.ids import new_id
from walletd.domain.state import WalletState
from walletd.domain.vocabulary import Bucket, EntryKind, TxStatus, TxType
from walletd.persistence import embedded
from walletd.persistence.batch_write import WRITE_BATCH, batch_document
from walletd.persistence.migrate import load_migrations, migrate

WALLETS = 1000


def _transfers(pairs: list[tuple[WalletState, WalletState]]) -> str:
    """One entry holding these transfers (one each: a transfer; a hundred: a multi-leg one)."""
    fx = Effects(datetime.now(timezone.utc))
    entry_id = fx.entry(EntryKind.TRANSFER, "bench", [])
    for source, target in pairs:
        record_id = new_id()
        fx.post(entry_id, [(source, Bucket.BALANCE, Decimal("-0.01")), (target, Bucket.BALANCE, Decimal("0.01"))],
                record_id)
        fx.record(type=TxType.TRANSFER, status=TxStatus.CLOSE, source=source, target=target, amount=Decimal("0.01"),
                  converted=Decimal("0.01"), rate=Decimal(1), user_id=source.user_id, entry_id=entry_id, id=record_id)
    return batch_document(fx, [])


async def _database(admin_url: str, name: str, through: int) -> tuple[asyncpg.Connection, list[WalletState]]:
    url = await servers.create_empty_database(admin_url, name, replace=True)
    conn = await asyncpg.connect(url)
    await migrate(conn, migrations=[m for m in load_migrations() if m.version <= through])
    await conn.execute("SET synchronous_commit = off")
    users = [new_id() for _ in range(WALLETS)]
    await conn.execute("INSERT INTO users (id, username, email, password_hash, role) "
                       "SELECT u, 'b' || i, 'b' || i || '@bench.invalid', '!', 'user' "
                       "FROM unnest($1::uuid[]) WITH ORDINALITY AS t(u, i)", users)
    rows = await conn.fetch("INSERT INTO wallets (id, user_id, currency_id, kind, balance) "
                            "SELECT gen_random_uuid(), u, 1, 'user', 0 FROM unnest($1::uuid[]) u "
                            "RETURNING id, user_id, currency_id, kind, balance, reserved_balance", users)
    # Funded through the journal, as everything is: the operator's desk pays each wallet once.
    desk = WalletState(*await conn.fetchrow("SELECT id, user_id, currency_id, kind, balance, reserved_balance "
                                            "FROM wallets WHERE kind = 'operator' AND currency_id = 1"))
    wallets = [WalletState(*r) for r in rows]
    fx = Effects(datetime.now(timezone.utc))
    entry_id = fx.entry(EntryKind.BONUS, "bench", [])
    for wallet in wallets:
        fx.post(entry_id, [(desk, Bucket.BALANCE, Decimal(-10000)), (wallet, Bucket.BALANCE, Decimal(10000))], None)
    await conn.fetchval(WRITE_BATCH, batch_document(fx, []))
    return conn, wallets


async def _round(conn: asyncpg.Connection, documents: list[str]) -> tuple[float, float]:
    """(backend CPU ms per statement, statements per second)."""
    backend = conn.get_server_pid()
    cpu, started = procstat.cpu_seconds(backend), time.perf_counter()
    for document in documents:
        await conn.fetchval(WRITE_BATCH, document)
    elapsed = time.perf_counter() - started
    return (procstat.cpu_seconds(backend) - cpu) * 1000 / len(documents), len(documents) / elapsed


async def _main(batches: int, rounds: int) -> None:
    base = Path(tempfile.mkdtemp(prefix="walletd-bookswrite-"))
    base.chmod(0o755)
    server = embedded.start(base, throwaway=True)
    try:
        admin = embedded.database_url(server)
        databases = {"before 0009": await _database(admin, "walletd_books_before", 8),
                     "with 0009": await _database(admin, "walletd_books_with", 9)}
        rng = random.Random(9)
        shapes = {"transfer": (1, batches), "100 legs": (100, max(1, batches // 10))}
        rates: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for shape, (legs, count) in shapes.items():
            per_round = max(1, count // rounds)
            for conn, wallets in databases.values():  # warm-up: plans cached, pages in memory
                await _round(conn, [_transfers(_pairs(rng, wallets, legs)) for _ in range(per_round)])
            for _ in range(rounds):
                for label, (conn, wallets) in databases.items():
                    documents = [_transfers(_pairs(rng, wallets, legs)) for _ in range(per_round)]
                    rates.setdefault((shape, label), []).append(await _round(conn, documents))
        print(f"median of {rounds} interleaved rounds: backend CPU ms per statement (min-max), statements/s")
        cpu: dict[tuple[str, str], float] = {}
        for (shape, label), values in rates.items():
            ms = [v[0] for v in values]
            cpu[(shape, label)] = statistics.median(ms)
            print(f"  {shape:<10} {label:<12} {cpu[(shape, label)]:8.3f} ms   ({min(ms):.3f}-{max(ms):.3f})   "
                  f"{statistics.median(v[1] for v in values):8.0f}/s")
        for shape, (legs, _) in shapes.items():
            before, after = (cpu[(shape, label)] for label in databases)
            print(f"  {shape}: {after - before:+.3f} ms of database CPU per statement with 0009 "
                  f"({(after / before - 1) * 100:+.1f} %; {(after - before) * 1000 / legs:+.1f} µs per transfer)")
        for conn, _ in databases.values():
            await conn.close()
    finally:
        server.cleanup()
        shutil.rmtree(base, ignore_errors=True)


def _pairs(rng: random.Random, wallets: list[WalletState], legs: int) -> list[tuple[WalletState, WalletState]]:
    source = rng.choice(wallets)
    return [(source, rng.choice([w for w in rng.sample(wallets, 2) if w is not source])) for _ in range(legs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=3000, help="single transfers per variant (default 3000)")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds (default 6)")
    args = parser.parse_args()
    servers.run(_main(args.batches, args.rounds))


if __name__ == "__main__":
    main()
