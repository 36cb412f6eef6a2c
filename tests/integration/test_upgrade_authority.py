"""Upgrade from the previous release, which expired pending records (returning a withdrawal's hold)
and read a deposit's fee at settlement: its own code builds the database, expires records, leaves
others pending under a commission above today's ceiling and stores rates whose round trip gains.
Then this release migrates it (0006) and serves it: nothing is lost, and each kind of record can
still be reconciled, as docs/authority.md says."""

from __future__ import annotations

import os
import sys
from decimal import Decimal
from fractions import Fraction

import aiohttp

from tests.conftest import (
    JWT_SECRET,
    OPERATOR,
    OPERATOR_KEY,
    ServeProcess,
    api_deposit,
    api_external_wallet,
    api_settle,
    api_withdraw,
    create_empty_database,
    fund,
    register,
    register_service,
    run_cli,
)
from tests.integration.test_upgrade import extract_release
from tests.polling import until
from tests.support.servers import LOOPBACK, ServerProcess, free_port

PREVIOUS_RELEASE = "3ca972e"  # the last release whose expiry returned holds


def previous_release(tree, url: str, log_path, **env: str) -> ServerProcess:
    port = free_port()
    full = {**os.environ, "PYTHONPATH": str(tree), "DATABASE_URL": url, "WALLETD_JWT_SECRET": JWT_SECRET,
            "WALLETD_OPERATOR_KEY": OPERATOR_KEY, "WALLETD_LOG_LEVEL": "warning", **env}
    cmd = [sys.executable, "-m", "walletd", "serve", "--host", LOOPBACK, "--port", str(port)]
    return ServerProcess(f"walletd@{PREVIOUS_RELEASE}", cmd, full, port, log_path, cwd=tree)


async def wallet_row(db, wallet_id: str) -> tuple[Decimal, Decimal]:
    row = await db.fetchrow("SELECT balance, reserved_balance FROM wallets WHERE id = $1", wallet_id)
    return row[0], row[1]


async def test_records_the_previous_release_expired_survive_and_can_be_reconciled(admin_url, tmp_path):
    import asyncpg

    tree = extract_release(PREVIOUS_RELEASE, tmp_path / "release")
    url = await create_empty_database(admin_url)
    db = await asyncpg.connect(url)
    try:
        # -- the previous release: records it expires ------------------------------------------------
        old = previous_release(tree, url, tmp_path / "old.log", WALLETD_PENDING_TTL="3")
        try:
            await old.start("/ready", timeout=60)
            async with aiohttp.ClientSession(base_url=old.url) as session:
                service, alice = await register_service(session), await register(session, "alice")
                await api_external_wallet(session, alice, 1)
                credited = await fund(session, alice, service, 1, "100")
                w1 = await (await api_withdraw(session, alice, service, 1, "10")).json()
                w2 = await (await api_withdraw(session, alice, service, 1, "20")).json()
                d1 = await (await api_deposit(session, alice, service, 1, "30")).json()
                # A service could set any rate then: together these gain on a round trip.
                for a, b, rate in ((1, 2, "0.9090909091"), (2, 1, "1.1")):
                    resp = await session.post("/service/exchange-rates/set", headers=service["headers"],
                                              params={"from_currency": a, "to_currency": b, "rate": rate})
                    assert resp.status == 200, await resp.text()
            expired = [w1["id"], w2["id"], d1["id"]]
            await until(lambda: db.fetchval("SELECT bool_and(status = 'expired') FROM transactions "
                                            "WHERE id = ANY($1::uuid[])", expired), 30, what="records expired")
        finally:
            assert await old.stop() == 0, old.tail()
        alice_wallet = alice["wallets"][1]["id"]
        assert await wallet_row(db, alice_wallet) == (credited, 0), "the old expiry returned both holds"

        # -- the previous release again, nothing expiring: records left pending ----------------------
        old = previous_release(tree, url, tmp_path / "old2.log")
        try:
            await old.start("/ready", timeout=60)
            async with aiohttp.ClientSession(base_url=old.url) as session:
                resp = await session.post("/service/commission-rates", headers=service["headers"],
                                          params={"currency_id": 1, "deposit_rate": "0.5", "withdraw_rate": "0.02"})
                assert resp.status == 200, await resp.text()
                d2 = await (await api_deposit(session, alice, service, 1, "0.0000000005")).json()
                d3 = await (await api_deposit(session, alice, service, 1, "0.0000000015")).json()
                w3 = await (await api_withdraw(session, alice, service, 1, "10")).json()
        finally:
            assert await old.stop() == 0, old.tail()
        balances = {r[0]: (r[1], r[2]) for r in await db.fetch("SELECT id, balance, reserved_balance FROM wallets")}

        # -- this release migrates ------------------------------------------------------------------
        code, out = await run_cli(url, "migrate")
        assert code == 0 and "applied 0006_authority" in out, out
        assert {r[0]: (r[1], r[2]) for r in await db.fetch("SELECT id, balance, reserved_balance FROM wallets")} == \
            balances, "the migration moves no money"
        rows = {str(r[0]): tuple(r[1:]) for r in await db.fetch(
            "SELECT id, status, settled_by, commission_rate, commission FROM transactions WHERE id = ANY($1::uuid[])",
            [w1["id"], w2["id"], d1["id"], d2["id"], d3["id"], w3["id"]])}
        # Withdrawals whose hold went back stay expired, decided by that expiry; the expired deposit
        # (it moved nothing) is pending again. Pending records get their fee fixed now: the service's
        # rate, at most the default ceiling 0.10, rounded half to even.
        assert rows[w1["id"]][:2] == rows[w2["id"]][:2] == ("expired", "expiry")
        assert rows[d1["id"]] == ("pending", None, Decimal("0.1"), Decimal("3"))
        assert rows[d2["id"]] == ("pending", None, Decimal("0.1"), Decimal("0"))  # 0.00000000005: half to even
        assert rows[d3["id"]] == ("pending", None, Decimal("0.1"), Decimal("0.0000000002"))  # 0.00000000015
        assert rows[w3["id"]] == ("pending", None, Decimal("0.02"), Decimal("0.2"))
        assert await db.fetchval("SELECT count(*) FROM events WHERE type = 'withdraw.expired'") == 2, "history kept"
        rates = {(r[0], r[1]): r[2] for r in await db.fetch("SELECT from_currency_id, to_currency_id, rate "
                                                            "FROM exchange_rates")}
        assert rates[(1, 2)] == Decimal("0.9090909091") and rates[(2, 1)] == Decimal("1.0999999999")  # 1 / 0.9090909091 = 1.099999999989…, cut
        assert all(Fraction(r) * Fraction(rates[(b, a)]) <= 1 for (a, b), r in rates.items())

        # -- and serves it: each record reconciled ---------------------------------------------------
        new = await ServeProcess(url, WALLETD_PENDING_TTL="2").start()
        try:
            async with aiohttp.ClientSession(base_url=new.url) as session:
                # The reopened deposit goes stale (the payment service is told), then its late `paid`
                # credits it with the fee fixed at the upgrade.
                await until(lambda: db.fetchval("SELECT count(*) FROM events WHERE type = 'deposit.stale' "
                                                "AND transaction_id = $1", d1["id"]), 30, what="d1 stale")
                resp = await api_settle(session, service, "deposit", d1["id"], "paid")
                assert resp.status == 200, await resp.text()
                # The payment service's late `paid` on an expired withdrawal contradicts the expiry.
                resp = await api_settle(session, service, "withdraw", w1["id"], "paid")
                body = await resp.json()
                assert resp.status == 409 and body["detail"] == {
                    "detail": "transaction is already expired", "status": "expired", "settled_by": "expiry"}, body
                assert await db.fetchval("SELECT count(*) FROM events WHERE type = 'settlement.conflict' "
                                         "AND transaction_id = $1", w1["id"]) == 1
                # The operator, having checked that it was paid out, settles it from the balance.
                before = await wallet_row(db, alice_wallet)
                resp = await api_settle(session, {"headers": OPERATOR}, "withdraw", w1["id"], "paid")
                assert resp.status == 200 and (await resp.json())["status"] == "paid", await resp.text()
                assert await wallet_row(db, alice_wallet) == (before[0] - 10, before[1])
                entry = await db.fetch("SELECT e.kind, p.wallet_id::text, p.bucket, p.amount FROM transactions t "
                                       "JOIN journal_entries e ON e.id = t.entry_id JOIN postings p ON p.entry_id = e.id "
                                       "WHERE t.id = $1 ORDER BY p.amount", w1["id"])
                assert [(r[0], r[1] == alice_wallet, r[2], r[3]) for r in entry] == [
                    ("withdraw_after_expiry", True, "B", Decimal(-10)), ("withdraw_after_expiry", False, "B", Decimal("0.2")),
                    ("withdraw_after_expiry", False, "B", Decimal("9.8"))], "from the balance: the hold was gone"
                # A `rejected` agrees with what the expiry did: it closes the record and moves nothing.
                resp = await api_settle(session, service, "withdraw", w2["id"], "rejected")
                assert resp.status == 200 and (await resp.json())["status"] == "rejected", await resp.text()
                assert await wallet_row(db, alice_wallet) == (before[0] - 10, before[1])
                for kind, record in (("deposit", d2), ("deposit", d3), ("withdraw", w3)):
                    resp = await api_settle(session, service, kind, record["id"], "paid")
                    assert resp.status == 200, await resp.text()
                stale = await (await session.get("/service/transactions/stale", headers=OPERATOR)).json()
                assert stale["transactions"] == [], "nothing left to reconcile"
        finally:
            assert await new.stop() == 0
        service_wallet = await db.fetchval("SELECT id FROM wallets WHERE user_id = $1 AND currency_id = 1 "
                                           "AND kind = 'service'", service["id"])
        # Fees: the funding deposit 1 (0.01 then), d1 3, d2 0, d3 0.0000000002, w1 0.2 (0.02 now), w3 0.2.
        assert await db.fetchval("SELECT balance FROM wallets WHERE id = $1", service_wallet) == \
            Decimal("4.4000000002")
        assert await wallet_row(db, alice_wallet) == (
            credited - 10 + 27 + Decimal("0.0000000005") + Decimal("0.0000000013") - 10, 0)
    finally:
        await db.close()
    code, out = await run_cli(url, "audit")
    assert code == 0 and "audit: clean" in out, out
