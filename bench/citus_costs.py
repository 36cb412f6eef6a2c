"""Micro-benchmark: what walletd's writes and its journal's upkeep cost a Citus cluster, call by call.

Not part of `make bench`. On a running cluster (`python -m tests.support.citus_cluster start DIR
--install "$(tests/citus/build.sh)"`), `python -m bench.citus_costs DIR` creates a database there,
migrates it (so distributes it), gives 1,000 users a funded wallet each, and measures, per call,
the PostgreSQL CPU summed over every node's process tree (/proc: what the calls cost the cluster,
whatever else the machine runs; measured over all the calls of a kind, /proc counts in 10 ms
ticks) and the median wall-clock time of one call:

- the Citus batch write of 1, 20 and 100 transfers between users picked at random (two-phase
  commit each, as the ledger's fast path sends them);
- sealing 1,000 of those entries into the hash chain (walletd_seal_journal on the coordinator);
- `walletd audit`'s checks of the books (find_problems) and of the chain (audit_chain).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import asyncpg

from bench import procstat
from tests.support.citus_cluster import CitusCluster
from walletd.domain.effects import Effects
from walletd.domain.ids import new_id
from walletd.domain.state import WalletState
from walletd.domain.vocabulary import Bucket, EntryKind, TxStatus, TxType
from walletd.integrity.verify import audit_chain
from walletd.persistence.audit import find_problems
from walletd.persistence.batch_write import WRITE_BATCH
from walletd.persistence.citus.ledger import citus_batch_document
from walletd.persistence.migrate import migrate

USERS = 1000


def _document(wallets: dict, pairs: list[tuple[WalletState, WalletState]]) -> str:
    """One entry per transfer (a batch of separate transfers, as group commit gathers them)."""
    fx = Effects(datetime.now(timezone.utc))
    for source, target in pairs:
        record_id = new_id()
        entry_id = fx.entry(EntryKind.TRANSFER, "bench", [])
        fx.post(entry_id, [(source, Bucket.BALANCE, Decimal("-0.01")), (target, Bucket.BALANCE, Decimal("0.01"))],
                record_id)
        fx.record(type=TxType.TRANSFER, status=TxStatus.CLOSE, source=source, target=target, amount=Decimal("0.01"),
                  converted=Decimal("0.01"), rate=Decimal(1), user_id=source.user_id, entry_id=entry_id, id=record_id)
    return citus_batch_document(fx, [], wallets, {})


async def _funded(conn: asyncpg.Connection) -> dict:
    users = [new_id() for _ in range(USERS)]
    await conn.execute("INSERT INTO users (id, username, email, password_hash, role) "
                       "SELECT u, 'b' || i, 'b' || i || '@bench.invalid', '!', 'user' "
                       "FROM unnest($1::uuid[]) WITH ORDINALITY AS t(u, i)", users)
    rows = await conn.fetch("INSERT INTO wallets (id, user_id, currency_id, kind) "
                            "SELECT gen_random_uuid(), u, 1, 'user' FROM unnest($1::uuid[]) u "
                            "RETURNING id, user_id, currency_id, kind, balance, reserved_balance", users)
    desk = WalletState(*await conn.fetchrow("SELECT id, user_id, currency_id, kind, balance, reserved_balance "
                                            "FROM wallets WHERE kind = 'operator' AND currency_id = 1"))
    wallets = {r[0]: WalletState(*r) for r in rows} | {desk.id: desk}
    fx = Effects(datetime.now(timezone.utc))
    entry_id = fx.entry(EntryKind.BONUS, "bench", [])
    for wallet in wallets.values():
        if wallet is not desk:
            fx.post(entry_id, [(desk, Bucket.BALANCE, Decimal(-10000)), (wallet, Bucket.BALANCE, Decimal(10000))],
                    None)
    await conn.fetchval(WRITE_BATCH, citus_batch_document(fx, [], wallets, {}))
    return wallets


async def _measure(pids: tuple[int, ...], calls: list) -> tuple[float, float]:
    """(cluster CPU ms per call, median wall ms of a call) of these awaited calls."""
    walls = []
    cpu = procstat.tree_cpu_seconds(pids)
    for call in calls:
        started = time.perf_counter()
        await call()
        walls.append((time.perf_counter() - started) * 1000)
    return (procstat.tree_cpu_seconds(pids) - cpu) * 1000 / len(calls), statistics.median(walls)


def _line(label: str, measured: tuple[float, float], per: int = 1, unit: str = "call") -> None:
    cpu, wall = measured
    print(f"  {label:<40} {cpu:9.2f} ms CPU, {wall:9.2f} ms wall per {unit}"
          + (f"   ({cpu / per:.3f} ms CPU per transfer)" if per > 1 else ""))


async def _main(run_dir: Path, rounds: int) -> None:
    cluster = CitusCluster.load(run_dir)
    pids = cluster.postmaster_pids()
    url = await cluster.create_database(f"walletd_costs_{os.getpid()}")
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
        wallets = await _funded(conn)
        users = [w for w in wallets.values() if w.kind == "user"]
        rng = random.Random(11)
        print(f"Citus, {len(cluster.workers)} workers, {USERS} users; median of {rounds} calls each")
        for size in (1, 20, 100):
            documents = [_document(wallets, [tuple(rng.sample(users, 2)) for _ in range(size)]) for _ in range(rounds)]
            _line(f"batch write, {size} transfer(s)",
                  await _measure(pids, [lambda d=d: conn.fetchval(WRITE_BATCH, d) for d in documents]), size)
        await conn.fetchval("SELECT recover_prepared_transactions()")
        full = (await conn.fetchval("SELECT count(*) FROM journal_entries")) // 1000
        _line("sealing", await _measure(pids, [lambda: conn.fetchrow("SELECT * FROM walletd_seal_journal(1000)")]
                                        * full), unit="1,000 entries")
        entries = await conn.fetchval("SELECT count(*) FROM journal_entries")
        _line(f"walletd audit: the books ({entries} entries)", await _measure(pids, [lambda: find_problems(conn)]),
              unit="run")
        _line("walletd audit: the chain", await _measure(pids, [lambda: audit_chain(conn)]), unit="run")
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="the directory of a running tests.support.citus_cluster")
    parser.add_argument("--rounds", type=int, default=200, help="calls per measurement (default 200)")
    args = parser.parse_args()
    asyncio.run(_main(args.run_dir, args.rounds))


if __name__ == "__main__":
    main()
