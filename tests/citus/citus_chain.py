"""The journal's hash chain and the in-doubt lookup on Citus, where a transaction the coordinator
committed may not be committed on a worker yet (two-phase commit: the coordinator decides, then
each worker commits its prepared part).

The tests build that moment for real: a coordinator transaction that commits the record Citus
keeps of a prepared part (pg_dist_transaction), and on a worker, a prepared transaction of that
name holding a journal entry. Citus's own recovery is switched off meanwhile, so only walletd's
sealer and in-doubt lookup can finish the part. Also: the sealed chain and `walletd audit` are
clean after real traffic, and a record's copy that differs from its record is found."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from datetime import datetime, timezone

import asyncpg
import pytest

from tests.citus.conftest import users_on
from tests.conftest import (
    api_transfer,
    assert_ledger_consistent,
    fund,
    register,
    register_service,
    run_cli,
)
from walletd.integrity.verify import audit_chain
from walletd.persistence.audit import find_problems
from walletd.persistence.breaker import DatabaseBreaker
from walletd.persistence.db import Backend, create_pool
from walletd.persistence.in_doubt import Evidence, InDoubt, find_out

_fake_pids = itertools.count(5_000_000)  # above Linux's largest pid (2**22): no real backend has it


@pytest.fixture(scope="module")
async def world(database_url, citus_cluster):
    from aiohttp.test_utils import TestClient, TestServer

    from tests.conftest import JWT_SECRET, OPERATOR_KEY, SECRETS_KEY
    from walletd.app import create_app
    from walletd.config import Settings

    # The tests seal, and say when: the app's own sealer and self-audit run once at start only.
    settings = Settings(database_url=database_url, jwt_secret=JWT_SECRET, operator_key=OPERATOR_KEY,
                        secrets_key=SECRETS_KEY, pool_size=4, seal_interval_seconds=3600,
                        audit_interval_seconds=3600, audit_max_wait_seconds=0.0)
    client = TestClient(TestServer(create_app(settings, database_url, JWT_SECRET)))
    await client.start_server()
    conn = await asyncpg.connect(database_url)
    ports = [w.port for w in citus_cluster.workers]
    placed = await users_on(conn, ports, 1, register, client)
    await conn.close()
    service = await register_service(client)
    alice, carol = placed[ports[0]][0], placed[ports[1]][0]
    await fund(client, alice, service, 1, "50")
    for amount in ("1", "2", "3"):
        assert (await api_transfer(client, alice, 1, carol["wallets"][1]["id"], amount)).status == 200
    yield {"client": client, "alice": alice, "carol": carol}
    await client.close()


@pytest.fixture
async def citus_recovery_off(database_url):
    """Citus's maintenance daemon recovers prepared parts every second here: off during the test."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("ALTER SYSTEM SET citus.recover_2pc_interval = -1")
        await conn.execute("SELECT pg_reload_conf()")
        yield
    finally:
        await conn.execute("ALTER SYSTEM RESET citus.recover_2pc_interval")
        await conn.execute("SELECT pg_reload_conf()")
        await conn.close()


async def committed_but_prepared(db, citus_cluster, user: dict) -> tuple[uuid.UUID, int, int]:
    """A journal entry of `user` (a posting +1 and -1 on one of its wallets: it moves nothing) in a
    part prepared on the user's worker, whose coordinator transaction committed (its record in
    pg_dist_transaction). Returns (entry id, the coordinator's xid, the fake backend pid)."""
    pid = next(_fake_pids)
    shard = await db.fetchrow(
        "SELECT pl.shardid, n.nodeport, pl.groupid FROM pg_dist_placement pl JOIN pg_dist_node n USING (groupid) "
        "WHERE pl.shardid = get_shard_id_for_distribution_column('journal_entries', $1::uuid)", user["id"])
    postings = await db.fetchval("SELECT get_shard_id_for_distribution_column('postings', $1::uuid)", user["id"])
    gid = f"citus_0_{pid}_1_1"
    async with db.transaction():
        xid = int(await db.fetchval("SELECT pg_current_xact_id()::text"))
        await db.execute("INSERT INTO pg_dist_transaction (groupid, gid) VALUES ($1, $2)", shard["groupid"], gid)
    entry = uuid.uuid4()
    wallet = uuid.UUID(user["wallets"][1]["id"])
    now = datetime.now(timezone.utc)
    node = next(w for w in citus_cluster.workers if w.port == shard["nodeport"])
    worker = await asyncpg.connect(node.url(await db.fetchval("SELECT current_database()")))
    try:
        await worker.execute("BEGIN")
        await worker.execute(f"INSERT INTO journal_entries_{shard['shardid']} (user_id, id, kind, created_at, xid) "
                             "VALUES ($1, $2, 'transfer', $3, $4::text::xid8)", uuid.UUID(user["id"]), entry, now,
                             str(xid))
        await worker.execute(f"INSERT INTO postings_{postings} (user_id, entry_id, wallet_id, currency_id, bucket, "
                             "amount, created_at) VALUES ($1, $2, $3, 1, 'B', 1, $4), ($1, $2, $3, 1, 'B', -1, $4)",
                             uuid.UUID(user["id"]), entry, wallet, now)
        await worker.execute(f"PREPARE TRANSACTION '{gid}'")
    finally:
        await worker.close()
    return entry, xid, pid


async def seal_everything(db, timeout: float = 30) -> None:
    """Seals until every entry is: a round seals nothing while some part of a committed
    transaction is still prepared on a worker (then the next one does)."""
    deadline = time.monotonic() + timeout
    while True:
        await db.fetchrow("SELECT * FROM walletd_seal_journal(1000)")
        left = await db.fetchval("SELECT count(*) FROM journal_entries e "
                                 "WHERE NOT EXISTS (SELECT 1 FROM journal_seals s WHERE s.entry_id = e.id)")
        if left == 0:
            return
        assert time.monotonic() < deadline, f"{left} entries still not sealed"
        await asyncio.sleep(0.2)


async def test_the_sealer_finishes_two_phase_parts_before_it_seals_past_them(world, db, citus_cluster,
                                                                            citus_recovery_off):
    entry, xid, pid = await committed_but_prepared(db, citus_cluster, world["alice"])
    # The single-node horizon has passed it (the coordinator's transaction is over), and the entry
    # is not visible: sealing by that horizon alone would leave it behind, "inserted" later.
    assert int(await db.fetchval("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")) > xid
    assert await db.fetchval("SELECT count(*) FROM journal_entries WHERE id = $1", entry) == 0
    await seal_everything(db)
    assert await db.fetchval("SELECT count(*) FROM journal_entries WHERE id = $1", entry) == 1
    sealed = await db.fetchrow("SELECT seq, entry_xid::text::bigint AS xid FROM journal_seals WHERE entry_id = $1",
                               entry)
    assert sealed is not None and sealed["xid"] == xid
    # In the chain's order: every seal after it has a later (xid, id).
    assert await db.fetchval("SELECT bool_and((entry_xid, entry_id) > ($1::text::xid8, $2)) FROM journal_seals "
                             "WHERE seq > $3", str(xid), entry, sealed["seq"]) in (True, None)
    assert await db.fetchval("SELECT count(*) FROM pg_dist_transaction WHERE gid = $1", f"citus_0_{pid}_1_1") == 0
    chain = await audit_chain(db)
    assert [str(p) for p in chain.problems] == [] and chain.unsealed == 0, chain.summary()
    await assert_ledger_consistent(db)


async def test_an_in_doubt_lookup_finishes_the_writes_parts_first(world, db, database_url, citus_cluster,
                                                                 citus_recovery_off):
    """The marker of a write whose coordinator committed is found, though its part was still
    prepared on the worker; the marker of one whose coordinator did not commit (no record of its
    part) is certainly not there once its part is rolled back."""
    entry, _, pid = await committed_but_prepared(db, citus_cluster, world["carol"])
    pool = await create_pool(database_url, 2, acquire_timeout=5)
    try:
        gone = Backend(pid, datetime.now(timezone.utc))  # no such backend: nothing left to stop
        marker = Evidence(str(entry), "SELECT EXISTS (SELECT 1 FROM journal_entries WHERE id = $1)", (entry,))
        assert await find_out(pool, InDoubt(gone, ConnectionResetError()), marker, 10, DatabaseBreaker()) is True
        # A part prepared for a coordinator transaction that never committed: rolled back, not found.
        entry2, _, pid2 = await committed_but_prepared(db, citus_cluster, world["carol"])
        await db.execute("DELETE FROM pg_dist_transaction WHERE gid = $1", f"citus_0_{pid2}_1_1")
        marker2 = Evidence(str(entry2), marker.query, (entry2,))
        started = time.monotonic()
        assert await find_out(pool, InDoubt(Backend(pid2, gone.started), ConnectionResetError()), marker2, 10, DatabaseBreaker()) is False
        assert time.monotonic() - started < 10
        left = await db.fetchval(f"SELECT sum(r.result::int) FROM run_command_on_workers($$SELECT count(*) "
                                 f"FROM pg_prepared_xacts WHERE gid IN ('citus_0_{pid}_1_1', 'citus_0_{pid2}_1_1')$$) r")
        assert left == 0, "both parts finished on their worker"
    finally:
        await pool.close()
    await assert_ledger_consistent(db)


async def test_a_records_copy_that_differs_is_found(world, db, database_url):
    client, alice, carol = world["client"], world["alice"], world["carol"]
    transfer = await (await api_transfer(client, alice, 1, carol["wallets"][1]["id"], "0.5")).json()
    record = uuid.UUID(transfer["id"])
    assert await db.fetchval("SELECT count(*) FROM transactions WHERE id = $1", record) == 2
    try:
        await db.execute("UPDATE transactions SET amount = amount + 1 WHERE id = $1 AND owner_id = $2",
                         record, uuid.UUID(carol["id"]))
        problems = await find_problems(db)
        assert any(p.startswith("transaction copy differs from its record") and transfer["id"] in p
                   for p in problems), problems
        code, out = await run_cli(database_url, "audit")
        assert code == 1 and "transaction copy differs" in out, out
    finally:
        await db.execute("UPDATE transactions SET amount = amount - 1 WHERE id = $1 AND owner_id = $2",
                         record, uuid.UUID(carol["id"]))
    await assert_ledger_consistent(db)


async def test_walletd_audit_and_the_self_audit_are_clean_with_everything_sealed(world, db, database_url):
    await seal_everything(db)
    head = await db.fetchrow("SELECT seq, encode(hash, 'hex') AS hash FROM journal_seals ORDER BY seq DESC LIMIT 1")
    code, out = await run_cli(database_url, "audit", "--expect-head", head["hash"])
    assert code == 0 and "audit: clean" in out and f"head seq {head['seq']}" in out, out
    assert await db.fetchval("SELECT count(*) FROM audit_problems") == 0
