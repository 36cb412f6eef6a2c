"""The sealer and the self-audit driven one step at a time on a real PostgreSQL (the app's own jobs
are told to wait an hour), and their settings refused at start when they make no sense."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import uuid

import asyncpg
import pytest

from tests.conftest import (
    JWT_SECRET,
    REPO_ROOT,
    api_transfer,
    create_database,
    fund,
    register,
    register_service,
    walletd_command,
)
from walletd.appkeys import pool_key
from walletd.integrity import verify
from walletd.jobs.journal_sealer import JournalSealer
from walletd.jobs.self_audit import SelfAudit
from walletd.persistence import chain

# The app's own jobs wait an hour, and its self-audit's first pass (at start) runs without waiting for
# quiet moments: the tests drive every later pass themselves.
IDLE = {"seal_interval_seconds": 3600.0, "audit_interval_seconds": 3600.0, "audit_full_interval_seconds": 3600.0,
        "audit_max_wait_seconds": 0.0}


@pytest.fixture
async def database_url(admin_url) -> str:
    return await create_database(admin_url)


async def seal_everything(pool) -> int:
    sealer = JournalSealer(pool, interval=1, head_log_interval=3600, batch=3)  # several rounds
    total = 0
    while sealed := await sealer.seal_once():
        total += sealed
    return total


async def alice_funded(make_client, amount: str, **settings) -> tuple:
    """An app whose jobs wait an hour (and `settings`), and alice funded with `amount` by a payment
    service; bob unfunded."""
    client = await make_client(**IDLE, **settings)
    service = await register_service(client)
    alice, bob = await register(client, "alice"), await register(client, "bob")
    await fund(client, alice, service, 1, amount)
    return client, client.app[pool_key], alice, bob


async def test_an_entry_altered_between_its_seal_and_its_check_is_named_by_the_next_pass(make_client, db, log_tap):
    client, pool, alice, bob = await alice_funded(make_client, "50")
    audit = SelfAudit(pool, interval=3600, full_interval=3600)
    # the app's own jobs ran once at start, before anything existed; seal and check the funding
    await seal_everything(pool)
    await audit.incremental_pass()
    assert await db.fetchval("SELECT verified_seq FROM audit_cursor") == 1
    for amount in ("1", "2", "3"):
        assert (await api_transfer(client, alice, 1, bob["wallets"][1]["id"], amount)).status == 200
    assert await seal_everything(pool) == 3
    victim = await db.fetchrow("SELECT s.seq, s.entry_id FROM journal_seals s JOIN transactions t "
                               "ON t.entry_id = s.entry_id WHERE t.amount = 2 AND t.type = 'transfer'")
    await db.execute("UPDATE transactions SET to_wallet_id = $1 WHERE entry_id = $2",
                     uuid.UUID(alice["wallets"][1]["id"]), victim["entry_id"])
    assert await audit.incremental_pass() == 3
    lines = [json.loads(line) for line in log_tap.lines if '"audit.problem"' in line]
    assert [(line["key"], line["level"]) for line in lines] == [
        (f"chain:altered:{victim['seq']}:{victim['entry_id']}", "error")]
    assert await db.fetchval("SELECT verified_seq FROM audit_cursor") == 4
    # each wallet's verified sums are its postings: no balance problem for a record's change
    assert await db.fetchval("SELECT balance FROM audit_balances WHERE wallet_id = $1",
                             uuid.UUID(bob["wallets"][1]["id"])) == 6
    assert await audit.incremental_pass() == 0  # nothing new; the problem is not logged again
    assert len([line for line in log_tap.lines if '"audit.problem"' in line]) == 1


async def test_a_pass_overtaken_by_another_process_changes_nothing(make_client, db):
    _, pool, alice, _ = await alice_funded(make_client, "5")
    await seal_everything(pool)
    unchecked = await db.fetchval("SELECT count(*) - (SELECT verified_seq FROM audit_cursor) FROM journal_seals")
    first, second = SelfAudit(pool, 3600, 3600), SelfAudit(pool, 3600, 3600)
    checked = await asyncio.gather(first.incremental_pass(), second.incremental_pass())
    # one checked the entry; the other found the lock taken, or lost the race and wrote nothing
    assert sorted(checked) == [0, unchecked] and unchecked == 1
    assert await db.fetchval("SELECT verified_seq FROM audit_cursor") == 1
    assert await db.fetchval("SELECT balance FROM audit_balances WHERE wallet_id = $1",
                             uuid.UUID(alice["wallets"][1]["id"])) == await db.fetchval(
        "SELECT balance FROM wallets WHERE id = $1", uuid.UUID(alice["wallets"][1]["id"]))


@pytest.mark.parametrize("variable, value", [
    ("WALLETD_SEAL_INTERVAL_SECONDS", "0"), ("WALLETD_HEAD_LOG_INTERVAL_SECONDS", "soon"),
    ("WALLETD_AUDIT_INTERVAL_SECONDS", "-1"), ("WALLETD_AUDIT_FULL_INTERVAL_SECONDS", "inf"),
    ("WALLETD_AUDIT_MAX_WAIT_SECONDS", "-0.5"),
])
async def test_a_nonsense_integrity_setting_stops_serve_naming_the_variable(database_url, variable, value):
    env = {**os.environ, "DATABASE_URL": database_url, "WALLETD_JWT_SECRET": JWT_SECRET, variable: value}
    proc = await asyncio.create_subprocess_exec(*walletd_command("serve", "--host", "127.0.0.1", "--port", "1"),
                                                cwd=REPO_ROOT, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2, out.decode()
    assert variable in out.decode()


def backend_xmin_from_another_thread(database_url: str, pid: int) -> tuple:
    """What PostgreSQL says of a backend's snapshot and xid, asked while this event loop is busy."""
    async def ask():
        conn = await asyncpg.connect(database_url)
        try:
            return tuple(await conn.fetchrow("SELECT backend_xmin, backend_xid FROM pg_stat_activity WHERE pid = $1",
                                             pid))
        finally:
            await conn.close()

    with concurrent.futures.ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, ask()).result(timeout=30)


async def test_a_pass_holds_no_snapshot_while_it_hashes(make_client, database_url, monkeypatch):
    # A snapshot held through the hashing keeps PostgreSQL from pruning the rows updated meanwhile.
    client, pool, alice, bob = await alice_funded(make_client, "50")
    assert (await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "1")).status == 200
    await seal_everything(pool)
    read_entries, check_seals = chain.read_entries, verify.check_seals
    reader, while_hashing = [], []

    async def observed_read(conn, ids):
        reader.append(conn.get_server_pid())
        return await read_entries(conn, ids)

    def observed_hashing(before, seals, entries):
        while_hashing.append(backend_xmin_from_another_thread(database_url, reader[-1]))
        return check_seals(before, seals, entries)

    monkeypatch.setattr(chain, "read_entries", observed_read)
    monkeypatch.setattr(verify, "check_seals", observed_hashing)
    assert await SelfAudit(pool, interval=3600, full_interval=3600).incremental_pass() == 2  # funding, transfer
    assert while_hashing == [(None, None)]


async def test_a_pass_that_fails_midway_leaves_its_lock_to_the_next(make_client, db, monkeypatch):
    # The lock is the session's: a pass that fails must release it before its connection goes back.
    _, pool, _, _ = await alice_funded(make_client, "5")
    await seal_everything(pool)
    read_entries = chain.read_entries

    async def broken(conn, ids):
        raise RuntimeError("a bug while reading")

    monkeypatch.setattr(chain, "read_entries", broken)
    with pytest.raises(RuntimeError):
        await SelfAudit(pool, interval=3600, full_interval=3600).incremental_pass()
    assert await db.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
                             "(SELECT oid FROM pg_database WHERE datname = current_database())") == 0
    monkeypatch.setattr(chain, "read_entries", read_entries)
    assert await SelfAudit(pool, interval=3600, full_interval=3600).incremental_pass() == 1
