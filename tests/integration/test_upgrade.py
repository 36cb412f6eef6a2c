"""Upgrade from the first release: its own code builds and uses a database, this release takes over.

The first release (commit 1a4ec8a) is extracted from git history with `git archive` and run with
this venv's python (its dependencies are the same): it applies its schema.sql, registers users and
moves money. Then `walletd migrate` of this release adopts the database and the new server must
see the same users and balances, keep moving money (including settling what the old one left
pending and replaying its idempotency keys), and `walletd audit` must be clean.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from decimal import Decimal
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from tests.conftest import (
    JWT_SECRET,
    OPERATOR_KEY,
    PASSWORD,
    REPO_ROOT,
    ServeProcess,
    api_external_wallet,
    api_settle,
    api_transfer,
    api_withdraw,
    create_empty_database,
    fund,
    register,
    register_service,
    run_cli,
)
from tests.support.servers import LOOPBACK, ServerProcess, free_port
from walletd.persistence.migrate import load_migrations

FIRST_RELEASE = "1a4ec8a"


def extract_release(commit: str, into: Path) -> Path:
    """The release's tree, from git history; a clear failure (never a skip) when it is missing."""
    result = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", "--format=tar", commit],
                            capture_output=True, timeout=120)
    if result.returncode != 0:
        pytest.fail(f"the upgrade test needs commit {commit} (the first release) in this clone's history, and "
                    f"`git archive {commit}` failed: {result.stderr.decode(errors='replace').strip()}. "
                    "Run the suite from a full clone (e.g. `git fetch --unshallow`).")
    with tarfile.open(fileobj=io.BytesIO(result.stdout)) as tar:
        tar.extractall(into, filter="data")
    assert (into / "walletd" / "__main__.py").exists() and (into / "schema.sql").exists()
    return into


def release_server(tree: Path, database_url: str, log_path: Path) -> ServerProcess:
    """The old release's `python -m walletd serve`, its package first on the path."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(tree), "DATABASE_URL": database_url, "WALLETD_JWT_SECRET": JWT_SECRET,
           "WALLETD_OPERATOR_KEY": OPERATOR_KEY, "WALLETD_LOG_LEVEL": "warning"}
    cmd = [sys.executable, "-m", "walletd", "serve", "--host", LOOPBACK, "--port", str(port)]
    return ServerProcess(f"walletd@{FIRST_RELEASE}", cmd, env, port, log_path, cwd=tree)


async def all_balances(conn: asyncpg.Connection) -> dict:
    rows = await conn.fetch("SELECT id, balance::text, reserved_balance::text FROM wallets ORDER BY id")
    return {r["id"]: (r["balance"], r["reserved_balance"]) for r in rows}


async def wallet(session, user: dict, currency_id: int) -> tuple[Decimal, Decimal]:
    resp = await session.get("/user/wallet", headers=user["headers"],
                             params={"wallet_id": user["wallets"][currency_id]["id"]})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    return Decimal(body["balance"]), Decimal(body["reserved_balance"])


async def login(session, username: str) -> dict:
    resp = await session.post("/auth/login", params={"username": username, "password": PASSWORD})
    assert resp.status == 200, await resp.text()
    token = (await resp.json())["access_token"]
    return {"Authorization": f"Bearer {token}"}


async def test_a_first_release_database_upgrades_with_users_balances_and_pending_money(admin_url, tmp_path):
    tree = extract_release(FIRST_RELEASE, tmp_path / "release")
    url = await create_empty_database(admin_url)

    # -- the first release builds and uses the database ------------------------------------------
    old = release_server(tree, url, tmp_path / "old.log")
    try:
        await old.start("/ready", timeout=60)
        async with aiohttp.ClientSession(base_url=old.url) as session:
            alice, bob = await register(session, "alice"), await register(session, "bob")
            service = await register_service(session)
            credited = await fund(session, alice, service, 1, "100")  # deposit + settle paid
            resp = await api_transfer(session, alice, 1, bob["wallets"][1]["id"], "10",
                                      headers={"Idempotency-Key": "old-transfer"})
            assert resp.status == 200, await resp.text()
            resp = await api_transfer(session, alice, 1, bob["wallets"][2]["id"], "5")  # across currencies
            assert resp.status == 200, await resp.text()
            await api_external_wallet(session, alice, 1)
            resp = await api_withdraw(session, alice, service, 1, "7")  # left pending: a hold
            assert resp.status == 200, await resp.text()
            pending_withdraw = (await resp.json())["id"]
            alice_before, bob_before = await wallet(session, alice, 1), await wallet(session, bob, 2)
    finally:
        assert await old.stop() == 0, old.tail()
    assert alice_before == (credited - 10 - 5 - 7, Decimal(7))
    conn = await asyncpg.connect(url)
    try:
        # The first release really ran: it knew nothing of versioned migrations.
        assert await conn.fetchval("SELECT to_regclass('public.schema_migrations')") is None
        balances_before = await all_balances(conn)
        users_before = await conn.fetchval("SELECT count(*) FROM users")
    finally:
        await conn.close()

    # -- this release migrates it ----------------------------------------------------------------
    code, out = await run_cli(url, "migrate")
    assert code == 0, out
    shipped = load_migrations()
    assert all(f"applied {m.label}" in out for m in shipped), out
    conn = await asyncpg.connect(url)
    try:
        assert await all_balances(conn) == balances_before
        assert await conn.fetchval("SELECT count(*) FROM users") == users_before
        recorded = await conn.fetch("SELECT version, name, checksum FROM schema_migrations ORDER BY version")
        assert [tuple(r) for r in recorded] == [(m.version, m.name, m.checksum) for m in shipped]
    finally:
        await conn.close()

    # -- and serves it ---------------------------------------------------------------------------
    new = await ServeProcess(url).start()
    try:
        async with aiohttp.ClientSession(base_url=new.url) as session:
            alice["headers"] = await login(session, alice["username"])  # the stored hash still verifies
            bob["headers"] = await login(session, bob["username"])
            assert await wallet(session, alice, 1) == alice_before
            assert await wallet(session, bob, 2) == bob_before
            # The old release's idempotency key still replays and moves nothing.
            resp = await api_transfer(session, alice, 1, bob["wallets"][1]["id"], "10",
                                      headers={"Idempotency-Key": "old-transfer"})
            assert resp.status == 200 and resp.headers.get("Idempotent-Replayed") == "true", await resp.text()
            # What the old release left pending settles; money still moves.
            resp = await api_settle(session, service, "withdraw", pending_withdraw, "paid")
            assert resp.status == 200, await resp.text()
            resp = await api_transfer(session, alice, 1, bob["wallets"][1]["id"], "1")
            assert resp.status == 200, await resp.text()
            assert await wallet(session, alice, 1) == (alice_before[0] - 1, Decimal(0))
            assert (await wallet(session, bob, 1))[0] == Decimal(11)
            resp = await session.get("/ready")
            assert resp.status == 200
            # The old release's movements are in the books too: dated and tied to their records
            # by the upgrade, the hold to its withdrawal.
            resp = await session.get("/user/wallet/statement", headers=alice["headers"],
                                     params={"wallet_id": alice["wallets"][1]["id"]})
            statement = await resp.json()
            assert resp.status == 200, statement
            lines = [(line["type"], Decimal(line["amount"])) for line in statement["entries"]]
            assert lines == [("deposit", credited), ("transfer", Decimal(-10)), ("transfer", Decimal(-5)),
                             ("withdraw", Decimal(-7)), ("transfer", Decimal(-1))], lines
            assert statement["entries"][3]["transaction_id"] == pending_withdraw
            assert Decimal(statement["closing_balance"]) == alice_before[0] - 1
    finally:
        assert await new.stop() == 0
    code, out = await run_cli(url, "audit")
    assert code == 0 and "audit: clean" in out, out
    code, out = await run_cli(url, "migrate")  # a second migrate has nothing to do
    assert code == 0 and "nothing to apply" in out, out
