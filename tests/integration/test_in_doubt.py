"""A commit whose answer is lost is found out, never guessed.

A proxy between walletd and PostgreSQL (tests/pgproxy.py) loses the answer to the batch write
after PostgreSQL committed it, loses the write itself, or cuts the connection while the backend
still works on it (waiting for a row lock): walletd must answer 200 for the first (it committed),
503 for the others (it did not, and never will: walletd stops a backend before it looks its
write up), and 500 `outcome_unknown` only when it cannot reach the database to find out before
its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from decimal import Decimal

import asyncpg
import pytest

from tests.conftest import (
    api_deposit,
    api_settle,
    api_transfer,
    assert_ledger_consistent,
    balance,
    create_database,
    fund,
    register,
    register_service,
)
from tests.polling import until
from walletd.appkeys import pool_key


@pytest.fixture
async def proxied(make_client, proxy, database_url):
    client = await make_client(database_url=proxy.url(database_url), in_doubt_seconds=2.0, pool_size=3)
    alice, bob, service = await register(client, "alice"), await register(client, "bob"), await register_service(client)
    await fund(client, alice, service, 1, "100")
    return client, alice, bob


def key() -> dict:
    return {"Idempotency-Key": f"k-{uuid.uuid4()}"}


async def test_reply_lost_after_commit_answers_200_once(proxied, proxy, log_tap, db):
    client, alice, bob = proxied
    before, _ = await balance(client, alice, 1)
    headers = key()
    proxy.arm("lose_reply")
    resp = await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "7", headers)
    assert proxy.fired.is_set(), "the proxy never saw the batch write"
    assert resp.status == 200, await resp.text()
    first = await resp.json()
    assert any('"ledger.in_doubt_resolved"' in line and '"committed": true' in line.replace('":true', '": true')
               for line in log_tap.lines), "the in-doubt path was not taken"
    after, _ = await balance(client, alice, 1)
    assert before - after == Decimal("7")
    again = await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "7", headers)
    assert again.status == 200 and again.headers.get("Idempotent-Replayed") == "true"
    assert (await again.json())["id"] == first["id"]
    assert (await balance(client, alice, 1))[0] == after
    await assert_ledger_consistent(db)


async def test_write_lost_before_commit_answers_503_and_moves_nothing(proxied, proxy, db):
    client, alice, bob = proxied
    before, _ = await balance(client, alice, 1)
    headers = key()
    proxy.arm("lose_write")
    resp = await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "5", headers)
    assert proxy.fired.is_set()
    assert resp.status == 503, await resp.text()
    assert resp.headers.get("Retry-After")
    assert (await balance(client, alice, 1))[0] == before
    # Retrying the 503 with its key applies it now, for the first time.
    again = await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "5", headers)
    assert again.status == 200 and again.headers.get("Idempotent-Replayed") is None
    assert before - (await balance(client, alice, 1))[0] == Decimal("5")
    await assert_ledger_consistent(db)


async def test_unreachable_until_the_deadline_answers_outcome_unknown(proxied, proxy, db):
    client, alice, bob = proxied
    before, _ = await balance(client, alice, 1)
    headers = key()
    proxy.arm("lose_reply")

    async def database_gone_after_the_write():
        await proxy.fired.wait()
        proxy.refuse()

    outage = asyncio.create_task(database_gone_after_the_write())
    resp = await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "3", headers)
    await outage
    assert resp.status == 500, await resp.text()
    assert "outcome unknown" in (await resp.json())["message"]
    proxy.accept()
    # The movement did commit: the same key now tells the client so, and nothing moves twice.
    again = await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "3", headers)
    assert again.status == 200, await again.text()
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert before - (await balance(client, alice, 1))[0] == Decimal("3")
    await assert_ledger_consistent(db)


async def test_a_lasting_outage_refuses_at_once_and_a_probe_notices_the_recovery(proxied, proxy):
    """While the database stays unreachable, money commands are refused before they queue
    (503, nothing moved); one command per half second probes, and the first that gets through
    ends the outage for everybody."""
    client, alice, bob = proxied
    before, _ = await balance(client, alice, 1)
    proxy.refuse()
    first = await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "1", key())
    assert first.status == 503
    await asyncio.sleep(1.1)  # past the fail-fast threshold (this test is about time)
    burst = await asyncio.gather(*[api_transfer(client, alice, 1, bob["wallets"][1]["id"], "1", key())
                                   for _ in range(20)])
    assert [r.status for r in burst] == [503] * 20
    assert all(r.headers.get("Retry-After") for r in burst)
    proxy.accept()
    await asyncio.sleep(0.6)  # the next command is a probe (about time: one probe per 0.5 s)
    probe = await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "1", key())
    assert probe.status == 200, await probe.text()
    after = await asyncio.gather(*[api_transfer(client, alice, 1, bob["wallets"][1]["id"], "1", key())
                                   for _ in range(5)])
    assert [r.status for r in after] == [200] * 5
    assert before - (await balance(client, alice, 1))[0] == Decimal(6)


async def test_commands_queued_behind_an_in_doubt_commit_are_refused_once_the_outage_lasts(
        make_client, proxy, database_url):
    """One committer stuck finding out a lost commit while the database is gone: the commands that
    queued behind it were never sent, so once the outage has lasted they are answered 503 (nothing
    moved) long before the stuck one's deadline, and their retries apply them exactly once."""
    client = await make_client(database_url=proxy.url(database_url), in_doubt_seconds=8.0, pool_size=3,
                               committers=1)
    service = await register_service(client)
    payers = [await register(client, f"payer{i}") for i in range(3)]
    payee = await register(client, "payee")
    for payer in payers:
        await fund(client, payer, service, 1, "100")
    target = payee["wallets"][1]["id"]
    proxy.arm("lose_reply")

    async def database_gone_after_the_write():
        await proxy.fired.wait()
        proxy.refuse()

    outage = asyncio.create_task(database_gone_after_the_write())
    stuck = asyncio.create_task(api_transfer(client, payers[0], 1, target, "1", key()))
    await proxy.fired.wait()
    queued_keys = [key(), key()]
    queued = [asyncio.create_task(api_transfer(client, payer, 1, target, "1", k))
              for payer, k in zip(payers[1:], queued_keys, strict=True)]
    await asyncio.wait(queued, timeout=30)
    assert not stuck.done(), "the queued commands must be answered while the stuck one is still finding out"
    await asyncio.wait_for(stuck, timeout=30)
    await outage
    statuses = [t.result().status for t in queued]
    assert statuses == [503, 503], statuses
    assert all(t.result().headers.get("Retry-After") for t in queued)
    assert stuck.result().status == 500  # its own outcome stayed unknown past the deadline
    proxy.accept()
    for payer, k in zip(payers[1:], queued_keys, strict=True):
        for _ in range(20):
            resp = await api_transfer(client, payer, 1, target, "1", k)
            if resp.status == 200:
                break
            await asyncio.sleep(0.3)  # the outage's probe admits one command per half second
        assert resp.status == 200 and resp.headers.get("Idempotent-Replayed") is None


# ---- a backend still at work when its connection is cut ------------------------------------------

RECONNECTS = 130  # more than the first releases' backend map kept before it forgot live connections

# A COMMIT that writes a journal entry waits while the test holds commit_gate's row (a deferred
# constraint trigger runs at COMMIT): the locked path's COMMIT then waits for a row lock.
COMMIT_GATE = """
    CREATE TABLE commit_gate (id int PRIMARY KEY);
    INSERT INTO commit_gate VALUES (1);
    CREATE FUNCTION wait_for_commit_gate() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN PERFORM 1 FROM commit_gate FOR KEY SHARE; RETURN NULL; END $$;
    CREATE CONSTRAINT TRIGGER wait_for_commit_gate AFTER INSERT ON journal_entries
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION wait_for_commit_gate();
"""


@contextlib.asynccontextmanager
async def after_many_reconnects(pool, times: int = RECONNECTS):
    """One of the pool's places reconnects `times` times (each outage drops walletd's connections
    and it opens new ones) while the others stay open; that place then stays busy, so what runs
    inside works on the connections opened first, long before the reconnects."""
    held = [pool.acquire() for _ in range(pool.size - 1)]
    for place in held:
        await (await place.__aenter__()).fetchval("SELECT 1")
    for _ in range(times):
        async with pool.acquire() as conn:
            await conn.fetchval("SELECT 1")
            conn.terminate()
    async with pool.acquire() as newest:
        await newest.fetchval("SELECT 1")
        for place in held:
            await place.__aexit__(None, None, None)
        yield


async def until_walletd_stops(db, query_like: str) -> None:
    """Until no backend of walletd runs such a statement any more: one left running by a cut
    connection has then committed or rolled back."""
    async def stopped() -> bool:
        return await db.fetchval(
            "SELECT count(*) = 0 FROM pg_stat_activity WHERE application_name = 'walletd' AND state = 'active' "
            "AND query LIKE $1", query_like)
    await until(stopped, what=f"no backend of walletd still running {query_like}")


async def test_a_write_cut_while_it_waits_for_a_row_lock_never_commits_after_its_503(
        make_client, proxy, database_url, db):
    """After many reconnects, the fast path's write is cut while its backend waits for a row lock
    (the payee's wallet, held by another transaction). walletd must stop that backend before it
    looks the write up; else it finds nothing, answers 503, and the backend commits later."""
    client = await make_client(database_url=proxy.url(database_url), in_doubt_seconds=5.0, pool_size=3)
    alice, bob, service = await register(client, "alice"), await register(client, "bob"), await register_service(client)
    await fund(client, alice, service, 1, "100")
    before, _ = await balance(client, alice, 1)
    headers = key()
    async with after_many_reconnects(client.server.app[pool_key]):
        lock = db.transaction()
        await lock.start()
        await db.execute("SELECT 1 FROM wallets WHERE id = $1 FOR UPDATE", uuid.UUID(bob["wallets"][1]["id"]))
        try:
            proxy.arm("cut")
            resp = await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "7", headers)
            assert proxy.fired.is_set(), "the proxy never saw the batch write"
        finally:
            await lock.rollback()
    await until_walletd_stops(db, "%walletd_write_batch%")
    assert resp.status == 503, await resp.text()
    assert (await balance(client, alice, 1))[0] == before, "answered 503, yet the cut-off write committed later"
    again = await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "7", headers)
    assert again.status == 200 and again.headers.get("Idempotent-Replayed") is None, await again.text()
    assert before - (await balance(client, alice, 1))[0] == Decimal(7)
    await assert_ledger_consistent(db)


@pytest.fixture
async def gated_database(admin_url):
    url = await create_database(admin_url)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(COMMIT_GATE)
        yield url, conn
    finally:
        await conn.close()


async def test_a_locked_commit_cut_while_it_waits_for_a_row_lock_never_commits_after_its_503(
        make_client, proxy, gated_database):
    """The locked path's COMMIT is cut while its backend waits for a row lock, after many
    reconnects: walletd stops the backend before looking the batch up, so its 503 stays true."""
    url, db = gated_database
    client = await make_client(database_url=proxy.url(url), in_doubt_seconds=5.0, pool_size=3)
    elsewhere = await make_client(database_url=url)  # another walletd process on the same database
    alice, bob, service = await register(client, "alice"), await register(client, "bob"), await register_service(client)
    await fund(client, alice, service, 1, "10")
    await fund(elsewhere, alice, service, 1, "100")  # the first process still predicts 9.9: locked path
    before, _ = await balance(client, alice, 1)
    headers = key()
    async with after_many_reconnects(client.server.app[pool_key]):
        gate = db.transaction()
        await gate.start()
        await db.execute("SELECT 1 FROM commit_gate FOR UPDATE")
        try:
            proxy.arm("cut", at="commit")
            resp = await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "50", headers)
            assert proxy.fired.is_set(), "the proxy never saw the locked path's COMMIT"
        finally:
            await gate.rollback()
    await until_walletd_stops(db, "COMMIT%")
    assert resp.status == 503, await resp.text()
    assert (await balance(client, alice, 1))[0] == before, "answered 503, yet the cut-off COMMIT went through later"
    again = await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "50", headers)
    assert again.status == 200 and again.headers.get("Idempotent-Replayed") is None, await again.text()
    assert before - (await balance(client, alice, 1))[0] == Decimal(50)
    await assert_ledger_consistent(db)


# ---- batches that only remember answers ------------------------------------------------------------


@pytest.mark.parametrize("action, status", [("lose_reply", 200), ("lose_write", 503)])
async def test_a_repeated_settlement_with_a_fresh_key_cut_in_flight_is_found_out(
        make_client, proxy, database_url, db, log_tap, action, status):
    """A settlement repeated with a new key writes nothing but that key's row; its lost answer is
    found out like any other: committed (200, and the key replays it) or not (503, and the
    retry applies it)."""
    client = await make_client(database_url=proxy.url(database_url), in_doubt_seconds=3.0, pool_size=3)
    alice, service = await register(client, "alice"), await register_service(client)
    pending = await (await api_deposit(client, alice, service, 1, "20")).json()
    paid = await api_settle(client, service, "deposit", pending["id"], "paid", key())
    assert paid.status == 200, await paid.text()
    snapshot = await balance(client, alice, 1)
    headers = key()
    proxy.arm(action)
    resp = await api_settle(client, service, "deposit", pending["id"], "paid", headers)
    assert proxy.fired.is_set(), "the proxy never saw the batch write"
    assert resp.status == status, await resp.text()
    again = await api_settle(client, service, "deposit", pending["id"], "paid", headers)
    assert again.status == 200, await again.text()
    assert (again.headers.get("Idempotent-Replayed") == "true") == (status == 200)
    assert (await again.json())["status"] == "paid" and (await again.json())["id"] == pending["id"]
    assert await balance(client, alice, 1) == snapshot
    assert not [line for line in log_tap.lines if '"committer.crashed"' in line or '"ledger.batch_failed"' in line]
    await assert_ledger_consistent(db)


async def test_a_keyed_refusal_whose_answer_is_lost_keeps_its_refusal(proxied, proxy, db):
    client, alice, bob = proxied
    nowhere = str(uuid.uuid4())
    headers = key()
    proxy.arm("lose_reply")
    resp = await api_transfer(client, alice, 1, nowhere, "1", headers)
    assert proxy.fired.is_set()
    assert resp.status == 400 and (await resp.json())["code"] == "target_wallet_not_found", await resp.text()
    again = await api_transfer(client, alice, 1, nowhere, "1", headers)
    assert again.status == 400 and again.headers.get("Idempotent-Replayed") == "true"
    assert await again.read() == await resp.read()


# ---- registration --------------------------------------------------------------------------------


async def test_a_lost_commit_of_a_registration_with_a_bonus_is_found_out(make_client, proxy, database_url, db):
    """The COMMIT of a registration that books a sign-up bonus commits, its answer is lost: walletd
    finds the user and answers 200 (a 503 would say nothing moved, yet the bonus is booked)."""
    client = await make_client(database_url=proxy.url(database_url), in_doubt_seconds=3.0, pool_size=3,
                               signup_bonus=Decimal(5))
    username = f"bonus_{uuid.uuid4().hex[:10]}"
    proxy.arm("lose_reply", at="commit")
    resp = await client.post("/auth/register", json={"username": username, "email": f"{username}@example.com",
                                                     "password": "Str0ng!pass"})
    assert proxy.fired.is_set(), "the proxy never saw the registration's COMMIT"
    assert resp.status == 200, await resp.text()
    token = (await resp.json())["access_token"]
    wallets = (await (await client.get("/user/wallets", headers={"token": token})).json())["wallets"]
    assert [Decimal(w["balance"]) for w in wallets] == [Decimal(5)] * len(wallets)
    assert await db.fetchval("SELECT count(*) FROM users WHERE username = $1", username) == 1
    await assert_ledger_consistent(db)


async def test_a_registration_whose_commit_never_arrived_is_503_and_can_be_retried(
        make_client, proxy, database_url, db):
    client = await make_client(database_url=proxy.url(database_url), in_doubt_seconds=3.0, pool_size=3,
                               signup_bonus=Decimal(5))
    username = f"bonus_{uuid.uuid4().hex[:10]}"
    identity = {"username": username, "email": f"{username}@example.com", "password": "Str0ng!pass"}
    proxy.arm("lose_write", at="commit")
    resp = await client.post("/auth/register", json=identity)
    assert proxy.fired.is_set()
    assert resp.status == 503 and resp.headers.get("Retry-After"), await resp.text()
    assert await db.fetchval("SELECT count(*) FROM users WHERE username = $1", username) == 0
    again = await client.post("/auth/register", json=identity)
    assert again.status == 200, await again.text()
    await assert_ledger_consistent(db)
