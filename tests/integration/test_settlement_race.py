"""A late `paid` from the payment service and the operator's `rejected` on the same stale record,
sent to two `walletd serve` processes on one database: no actor orders them, the compare-and-set
on the record's status does. Exactly one wins, the other is 409, the books balance."""

from __future__ import annotations

import asyncio
import random
from decimal import Decimal

import aiohttp

from tests.conftest import (
    OPERATOR,
    ServeProcess,
    api_deposit,
    api_external_wallet,
    api_settle,
    api_withdraw,
    fund,
    register,
    register_service,
    run_cli,
)
from tests.oracles import commission_fee
from tests.polling import until


async def after(delay: float, call):
    await asyncio.sleep(delay)  # this test is about ordering: either side may arrive first
    return await call


async def test_two_processes_one_record_exactly_one_settlement_wins(database_url, db):
    procs = [ServeProcess(database_url, WALLETD_PENDING_TTL="1"), ServeProcess(database_url, WALLETD_PENDING_TTL="1")]
    try:
        await asyncio.gather(*(p.start() for p in procs))
        service_side, operator_side = (aiohttp.ClientSession(base_url=p.url) for p in procs)
        try:
            service = await register_service(service_side)
            user = await register(service_side, "racer")
            await api_external_wallet(service_side, user, 1)
            credited = await fund(service_side, user, service, 1, "500")
            records = [("withdraw", await (await api_withdraw(service_side, user, service, 1, str(i + 1))).json())
                       for i in range(6)]
            records += [("deposit", await (await api_deposit(service_side, user, service, 1, str(i + 7))).json())
                        for i in range(6)]
            ids = [r["id"] for _, r in records]
            await until(lambda: db.fetchval("SELECT bool_and(stale_at IS NOT NULL) FROM transactions "
                                            "WHERE id = ANY($1::uuid[])", ids), 30, what="every record stale")
            expected = credited
            for i, (kind, record) in enumerate(records):
                lead = random.uniform(0, 0.02)
                paid, rejected = await asyncio.gather(
                    after(lead if i % 2 else 0, api_settle(service_side, service, kind, record["id"], "paid")),
                    after(0 if i % 2 else lead, api_settle(operator_side, {"headers": OPERATOR}, kind, record["id"],
                                                           "rejected")))
                assert sorted([paid.status, rejected.status]) == [200, 409], (kind, paid.status, rejected.status)
                status, settled_by = await db.fetchrow("SELECT status, settled_by FROM transactions WHERE id = $1",
                                                       record["id"])
                assert (status, settled_by) == (("paid", "service") if paid.status == 200 else ("rejected", "operator"))
                if paid.status == 200:
                    amount = Decimal(record["amount"])
                    expected += -amount if kind == "withdraw" else amount - commission_fee(amount)
            row = await db.fetchrow("SELECT balance, reserved_balance FROM wallets WHERE id = $1",
                                    user["wallets"][1]["id"])
            assert (row[0], row[1]) == (expected, 0)
        finally:
            await service_side.close()
            await operator_side.close()
    finally:
        for p in procs:
            await p.stop()
    code, out = await run_cli(database_url, "audit")
    assert code == 0 and "audit: clean" in out, out
