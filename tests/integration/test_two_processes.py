"""Two real `walletd serve` processes on one database: the in-process actors cannot see each
other, so PostgreSQL alone must keep debits from overdrawing, settlements exactly-once and
Idempotency-Keys single-use."""

from __future__ import annotations

import asyncio
import os
import uuid
from decimal import Decimal

import aiohttp
import pytest

from tests.conftest import (
    ServeProcess,
    api_external_wallet,
    assert_ledger_consistent,
    fund,
    register,
    register_service,
    run_cli,
)
from tests.oracles import DEPOSIT_RATE, commission_fee, converted, seed_rate

TEN = Decimal("1E-10")


@pytest.fixture(scope="module")
async def servers(database_url):
    procs = [ServeProcess(database_url), ServeProcess(database_url)]
    try:
        await asyncio.gather(*(p.start() for p in procs))
        async with aiohttp.ClientSession() as session:
            yield procs, session
    finally:
        for p in procs:
            await p.stop()


async def call(session, method: str, url: str, headers: dict, params: dict) -> tuple[int, dict]:
    async with session.request(method, url, headers=headers, params=params) as resp:
        return resp.status, await resp.json()


def transfer(session, proc, user, currency, target_wallet, amount, headers=None):
    return call(session, "POST", proc.url + "/wallet/transfer", {**user["headers"], **(headers or {})}, {
        "source_wallet_id": user["wallets"][currency]["id"], "target_wallet_id": target_wallet, "amount": str(amount)})


def withdraw(session, proc, user, service, currency, amount):
    return call(session, "POST", proc.url + "/wallet/withdraw", user["headers"], {
        "service_user_id": service["id"], "from_wallet_id": user["wallets"][currency]["id"], "amount": str(amount)})


async def wallet_balance(db, user, currency) -> tuple[Decimal, Decimal]:
    row = await db.fetchrow("SELECT balance, reserved_balance FROM wallets WHERE id = $1",
                            user["wallets"][currency]["id"])
    return row[0], row[1]


async def test_two_processes_never_overdraw_one_wallet(servers, make_client, db):
    procs, session = servers
    client = await make_client()
    alice, bob = await register(client, "alice"), await register(client, "bob")
    service = await register_service(client)
    await fund(client, alice, service, 1, "30.303030303")  # credits exactly 30
    await api_external_wallet(client, alice, 1)
    calls = []
    for i in range(90):
        proc = procs[i % 2]
        if i % 3 == 0:
            calls.append(withdraw(session, proc, alice, service, 1, "1"))
        else:
            calls.append(transfer(session, proc, alice, 1, bob["wallets"][1 + i % 2]["id"], "1"))
    results = await asyncio.gather(*calls)
    statuses = [status for status, _ in results]
    assert statuses.count(200) == 30 and statuses.count(400) == 60, statuses
    assert all(body["message"] == "insufficient_funds" for status, body in results if status == 400)
    held = sum(1 for i, (status, _) in enumerate(results) if status == 200 and i % 3 == 0)
    assert await wallet_balance(db, alice, 1) == (0, held)
    await assert_ledger_consistent(db)


async def test_two_processes_settle_exactly_once(servers, make_client, db):
    procs, session = servers
    client = await make_client()
    alice = await register(client, "alice")
    service = await register_service(client)
    txs = []
    for amount in ("10", "20", "30"):
        resp = await client.post("/wallet/deposit", headers=alice["headers"], params={
            "service_user_id": service["id"], "wallet_id": alice["wallets"][2]["id"], "amount": amount})
        txs.append(await resp.json())
    calls = [call(session, "PUT", procs[i % 2].url + "/service/transaction/deposit", service["headers"],
                  {"transaction_id": tx["id"], "new_status": "paid"}) for tx in txs for i in range(10)]
    results = await asyncio.gather(*calls)
    assert [status for status, _ in results] == [200] * 30, results
    for tx in txs:
        bodies = [body for _, body in results if body["id"] == tx["id"]]
        assert len(bodies) == 10 and all(body == bodies[0] for body in bodies)
    assert await wallet_balance(db, alice, 2) == (Decimal("59.4"), 0)
    await assert_ledger_consistent(db)


async def test_two_processes_opposite_transfers_and_shared_keys(servers, make_client, db):
    procs, session = servers
    client = await make_client()
    alice, bob = await register(client, "alice"), await register(client, "bob")
    service = await register_service(client)
    for user in (alice, bob):
        await fund(client, user, service, 3, "500")
        await fund(client, user, service, 1, "500")
    start = {(u["id"], c): (await wallet_balance(db, u, c))[0] for u in (alice, bob) for c in (1, 3)}
    calls, plan = [], []
    for i in range(80):
        src, dst = (alice, bob) if i % 2 else (bob, alice)
        src_cur, dst_cur = ((3, 3), (1, 3), (3, 1), (1, 1))[i % 4]
        amount = (Decimal(i + 1) / 7).quantize(TEN)
        calls.append(transfer(session, procs[(i // 2) % 2], src, src_cur, dst["wallets"][dst_cur]["id"], amount))
        plan.append((src, src_cur, dst, dst_cur, amount))
    # The same Idempotency-Key sent to both processes at once applies once.
    key = {"Idempotency-Key": f"both-{uuid.uuid4()}"}
    for i in range(10):
        calls.append(transfer(session, procs[i % 2], alice, 1, bob["wallets"][1]["id"], "3", key))
    results = await asyncio.wait_for(asyncio.gather(*calls), 60)
    assert [status for status, _ in results] == [200] * len(calls), [b for s, b in results if s != 200][:3]
    keyed = [body for _, body in results[80:]]
    assert all(body == keyed[0] for body in keyed)
    expected = dict(start)
    for src, src_cur, dst, dst_cur, amount in plan:
        expected[(src["id"], src_cur)] -= amount
        expected[(dst["id"], dst_cur)] += converted(amount, seed_rate(src_cur, dst_cur))
    expected[(alice["id"], 1)] -= 3
    expected[(bob["id"], 1)] += 3
    for user in (alice, bob):
        for currency in (1, 3):
            assert (await wallet_balance(db, user, currency))[0] == expected[(user["id"], currency)]
    await assert_ledger_consistent(db)


async def test_audit_is_clean_and_commissions_exact_after_both_processes_settle(servers, make_client, database_url, db):
    # Its own deposits, settled through both processes: the test needs no other test to run first.
    procs, session = servers
    client = await make_client()
    alice = await register(client, "alice")
    service = await register_service(client)
    amounts = ["0.0000000250", "0.0000000350", "12.3456789012", "1000"]
    txs = []
    for amount in amounts:
        resp = await client.post("/wallet/deposit", headers=alice["headers"], params={
            "service_user_id": service["id"], "wallet_id": alice["wallets"][1]["id"], "amount": amount})
        assert resp.status == 200, await resp.text()
        txs.append((await resp.json())["id"])
    results = await asyncio.gather(*[
        call(session, "PUT", procs[i % 2].url + "/service/transaction/deposit", service["headers"],
             {"transaction_id": tx, "new_status": "paid"}) for i, tx in enumerate(txs)])
    assert [status for status, _ in results] == [200] * len(txs), results
    code, out = await run_cli(database_url, "audit")
    assert code == 0 and "audit: clean" in out, out
    commissions = dict(await db.fetch("SELECT t.id::text, c.amount FROM transactions t JOIN transactions c "
                                      "ON c.parent_id = t.id AND c.type = 'commission' WHERE t.id::text = ANY($1)",
                                      txs))
    assert commissions == {tx: commission_fee(amount, DEPOSIT_RATE) for tx, amount in zip(txs, amounts, strict=False)}


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            return [int(child) for child in handle.read().split()]
    except FileNotFoundError:
        return []


async def test_workers_share_the_port_and_stop_with_the_parent(database_url, db):
    server = await ServeProcess(database_url, WALLETD_WORKERS="2").start()
    try:
        workers = _children(server.proc.pid)
        assert len(workers) == 1, workers  # the parent serves too
        async with aiohttp.ClientSession() as session:
            statuses = await asyncio.gather(*[_get_status(session, server.url + "/ready") for _ in range(60)])
        assert statuses == [200] * 60
    finally:
        code = await server.stop()
    assert code == 0
    for pid in workers:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


async def _get_status(session, url: str) -> int:
    async with session.get(url) as resp:
        return resp.status
