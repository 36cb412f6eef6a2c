"""Crash safety: SIGKILL a real `walletd serve` in the middle of a burst of transfers and
settlements, restart it, and check that every operation answered 200 is in the journal,
nothing is half-applied, and `walletd audit` is clean."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import aiohttp

from tests.conftest import (
    ServeProcess,
    api_deposit,
    assert_ledger_consistent,
    fund,
    register,
    register_service,
    run_cli,
)


async def test_sigkill_mid_burst_loses_no_acknowledged_operation(make_client, db, database_url):
    client = await make_client()
    alice, bob = await register(client, "alice"), await register(client, "bob")
    service = await register_service(client)
    for currency in (1, 2):
        await fund(client, alice, service, currency, "1000")
    pending = [(await (await api_deposit(client, bob, service, 3, f"{i + 1}")).json())["id"] for i in range(40)]
    before = {r[0]: r[1] for r in await db.fetch(
        "SELECT id::text, balance FROM wallets WHERE id = ANY($1::uuid[])",
        [alice["wallets"][1]["id"], alice["wallets"][2]["id"]])}

    proc = await ServeProcess(database_url).start()
    acknowledged: list[tuple[str, dict]] = []
    failures: list[str] = []
    killed = asyncio.Event()

    async def send(session, method, path, headers, params, kind):
        try:
            async with session.request(method, proc.url + path, headers=headers, params=params) as resp:
                body = await resp.json()
                assert resp.status < 500, body
                if resp.status == 200:
                    acknowledged.append((kind, body))
                    if len(acknowledged) == 60:
                        proc.kill()  # SIGKILL: no graceful shutdown, connections just drop
                        killed.set()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            failures.append(type(exc).__name__)

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            burst = []
            for i in range(400):
                currency = 1 + i % 2
                burst.append(send(session, "POST", "/wallet/transfer", alice["headers"], {
                    "source_wallet_id": alice["wallets"][currency]["id"],
                    "target_wallet_id": bob["wallets"][1 + i % 3]["id"], "amount": "0.5"}, "transfer"))
                if i % 10 == 0:
                    burst.append(send(session, "PUT", "/service/transaction/deposit", service["headers"], {
                        "transaction_id": pending[i // 10], "new_status": "paid"}, "settle"))
            await asyncio.gather(*burst)
        assert killed.is_set(), "the burst ended before the kill"
        assert failures, "the kill happened mid-burst, so some requests must have failed"
        assert await proc.stop() == -9, "killed by SIGKILL, not shut down"

        # Every acknowledged operation is durable: its record exists and points at a journal entry.
        for kind, body in acknowledged:
            row = await db.fetchrow("SELECT t.status, e.id AS entry, (SELECT count(*) FROM postings p "
                                    "WHERE p.entry_id = e.id) AS postings FROM transactions t "
                                    "JOIN journal_entries e ON e.id = t.entry_id WHERE t.id = $1", body["id"])
            assert row is not None, (kind, body)
            assert row["status"] == ("close" if kind == "transfer" else "paid") and row["postings"] >= 2
        # Nothing half-applied: every committed transfer moved exactly its amount, and each
        # deposit is either still pending (no entry) or paid (with its entry).
        for currency in (1, 2):
            wallet = alice["wallets"][currency]["id"]
            count = await db.fetchval("SELECT count(*) FROM transactions WHERE from_wallet_id = $1 "
                                      "AND type = 'transfer'", wallet)
            now = await db.fetchval("SELECT balance FROM wallets WHERE id = $1", wallet)
            assert now == before[wallet] - Decimal("0.5") * count
        states = await db.fetch("SELECT status, entry_id IS NOT NULL FROM transactions WHERE id = ANY($1::uuid[])",
                                pending)
        assert {tuple(s) for s in states} <= {("pending", False), ("paid", True)}
        await assert_ledger_consistent(db)
        code, out = await run_cli(database_url, "audit")
        assert code == 0 and "audit: clean" in out, out

        # Restart: the service comes back on the same database and carries on.
        proc = await ServeProcess(database_url).start()
        async with aiohttp.ClientSession() as session:
            async with session.post(proc.url + "/wallet/transfer", headers=alice["headers"], params={
                    "source_wallet_id": alice["wallets"][1]["id"], "target_wallet_id": bob["wallets"][1]["id"],
                    "amount": "1"}) as resp:
                assert resp.status == 200, await resp.text()
            still_pending = [r[0] for r in await db.fetch(
                "SELECT id::text FROM transactions WHERE id = ANY($1::uuid[]) AND status = 'pending'", pending)]
            for tx in still_pending[:5]:
                async with session.put(proc.url + "/service/transaction/deposit", headers=service["headers"],
                                       params={"transaction_id": tx, "new_status": "paid"}) as resp:
                    assert resp.status == 200, await resp.text()
        await assert_ledger_consistent(db)
        code, out = await run_cli(database_url, "audit")
        assert code == 0, out
    finally:
        await proc.stop()
