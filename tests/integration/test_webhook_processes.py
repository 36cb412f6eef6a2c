"""Webhooks from real `walletd serve` processes: an event acknowledged just before walletd is
SIGKILLed (with the receiver down) still arrives after a restart; two processes on one database
send each delivery once per attempt, and mark each pending withdrawal stale once. The receiver is an aiohttp app on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections import Counter
from decimal import Decimal

import aiohttp

from tests.conftest import (
    ServeProcess,
    api_deposit,
    api_external_wallet,
    api_withdraw,
    fund,
    register,
    register_service,
    run_cli,
)
from tests.polling import until
from tests.receiver import Receiver, of_type

# The receiver listens on loopback, which walletd refuses unless WALLETD_WEBHOOK_ALLOW_HOSTS names it.
FAST = {"WALLETD_WEBHOOK_BACKOFF": "0.2", "WALLETD_WEBHOOK_TIMEOUT": "1", "WALLETD_WEBHOOK_ALLOW_HOSTS": "127.0.0.1"}


async def subscribe(session, service: dict, url: str) -> dict:
    async with session.post("/service/webhooks", headers=service["headers"], json={"url": url}) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_an_event_acknowledged_before_a_kill_arrives_after_the_restart(database_url, db):
    receiver = Receiver()  # its port is reserved but nothing listens yet: the payment service is down
    proc = await ServeProcess(database_url, **FAST).start()
    try:
        async with aiohttp.ClientSession(base_url=proc.url) as session:
            service = await register_service(session)
            await subscribe(session, service, receiver.url)
            user = await register(session)
            resp = await api_deposit(session, user, service, 1, "12")
            assert resp.status == 200
            proc.kill()  # right after the acknowledgement: no shutdown handler runs
            await proc.proc.wait()
            tx = await resp.json()
        event_id = await db.fetchval("SELECT id FROM events WHERE transaction_id = $1", tx["id"])
        assert event_id is not None  # committed with the deposit
        assert await db.fetchval("SELECT status FROM webhook_deliveries WHERE event_id = $1", event_id) == "pending"

        await receiver.start()
        await proc.start()
        got = await receiver.wait_for(of_type("deposit.requested", tx["id"]), timeout=30)
        assert got[0]["event_id"] == str(event_id)
        assert got[0]["event"]["data"] == tx
    finally:
        await proc.stop()
        await receiver.stop()


async def test_two_processes_send_each_delivery_once_per_attempt(database_url, db):
    receiver = await Receiver().start()
    receiver.script = [500] * 10  # the first ten requests fail: those events are attempted twice or more
    procs = [ServeProcess(database_url, **FAST), ServeProcess(database_url, **FAST)]
    try:
        await asyncio.gather(*(p.start() for p in procs))
        sessions = [aiohttp.ClientSession(base_url=p.url) for p in procs]
        try:
            service = await register_service(sessions[0])
            await subscribe(sessions[0], service, receiver.url)
            users = [await register(sessions[i % 2], f"u{i}") for i in range(4)]
            responses = await asyncio.gather(*(
                api_deposit(sessions[i % 2], users[i % 4], service, 1, str(i + 1)) for i in range(40)))
            assert [r.status for r in responses] == [200] * 40
            ids = {(await r.json())["id"] for r in responses}
        finally:
            for s in sessions:
                await s.close()
        await receiver.wait_for(lambda got: {r["event"]["data"]["id"] for r in got if r["status"] < 300} >= ids,
                                timeout=60)

        async def recorded():  # the receiver answered; walletd records the outcome right after
            rows = await db.fetch("SELECT d.event_id, d.attempts, d.status FROM webhook_deliveries d "
                                  "JOIN events e ON e.id = d.event_id WHERE e.service_user_id = $1", service["id"])
            return rows if {r["status"] for r in rows} == {"delivered"} else None
        rows = await until(recorded, what="every delivery recorded as delivered")
        assert len(rows) == 40 and {r["status"] for r in rows} == {"delivered"}
        sent = Counter(r["event_id"] for r in receiver.received)
        ok = Counter(r["event_id"] for r in receiver.received if r["status"] < 300)
        for row in rows:
            assert sent[str(row["event_id"])] == row["attempts"], row  # one request per attempt, never two at once
            assert ok[str(row["event_id"])] == 1
        assert sum(r["attempts"] for r in rows) == 50
    finally:
        for p in procs:
            await p.stop()
        await receiver.stop()
    code, out = await run_cli(database_url, "audit")
    assert code == 0 and "audit: clean" in out, out


async def test_two_processes_mark_each_pending_withdrawal_stale_once_and_keep_every_hold(database_url, db):
    procs = [ServeProcess(database_url, WALLETD_PENDING_TTL="1.5"), ServeProcess(database_url, WALLETD_PENDING_TTL="1.5")]
    try:
        await asyncio.gather(*(p.start() for p in procs))
        sessions = [aiohttp.ClientSession(base_url=p.url) for p in procs]
        try:
            service = await register_service(sessions[0])
            users = [await register(sessions[i], f"x{i}") for i in range(2)]
            for i, user in enumerate(users):
                await api_external_wallet(sessions[i], user, 1)
                await fund(sessions[i], user, service, 1, "101.0101010101")  # credits 100
            entries_before = await db.fetchval("SELECT count(*) FROM journal_entries")
            responses = await asyncio.gather(*(
                api_withdraw(sessions[i % 2], users[i % 2], service, 1, "5") for i in range(20)))
            assert [r.status for r in responses] == [200] * 20
            ids = [(await r.json())["id"] for r in responses]
        finally:
            for s in sessions:
                await s.close()
        await until(lambda: db.fetchval("SELECT count(*) = 0 FROM transactions WHERE id = ANY($1::uuid[]) "
                                        "AND stale_at IS NULL", ids), 30, what="every pending withdrawal stale")
        statuses = await db.fetch("SELECT status, count(*) FROM transactions WHERE id = ANY($1::uuid[]) GROUP BY 1", ids)
        assert [tuple(r) for r in statuses] == [("pending", 20)]
        for user in users:
            row = await db.fetchrow("SELECT balance, reserved_balance FROM wallets WHERE id = $1",
                                    user["wallets"][1]["id"])
            assert (row[0], row[1]) == (Decimal(50), Decimal(50))  # every hold stays
        events = await db.fetch("SELECT transaction_id, count(*) FROM events WHERE type = 'withdraw.stale' "
                                "AND transaction_id = ANY($1::uuid[]) GROUP BY 1", ids)
        assert len(events) == 20 and {r[1] for r in events} == {1}, "each record marked once, by one process"
        # Only the 20 holds were journaled: going stale writes no entry.
        assert await db.fetchval("SELECT count(*) FROM journal_entries") == entries_before + 20
    finally:
        for p in procs:
            await p.stop()
    code, out = await run_cli(database_url, "audit")
    assert code == 0 and "audit: clean" in out, out
