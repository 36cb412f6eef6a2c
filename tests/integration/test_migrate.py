"""The schema: concurrent and repeated application, seed data, and the invariants it enforces."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tomllib
import uuid
import zipfile
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import REPO_ROOT, create_empty_database, run_cli
from walletd.domain.policy import OPERATOR_USER_ID
from walletd.persistence.migrate import (
    Migration,
    MigrationError,
    applied_versions,
    latest_version,
    load_migrations,
    load_seed,
    migrate,
    schema_ready,
)

TRIGGERS = {"postings_apply", "postings_append_only", "journal_append_only"}


async def snapshot(conn: asyncpg.Connection) -> dict:
    return {
        "currencies": [tuple(r) for r in await conn.fetch("SELECT id, code, name FROM currencies ORDER BY id")],
        "rates": [tuple(r) for r in await conn.fetch(
            "SELECT from_currency_id, to_currency_id, rate FROM exchange_rates ORDER BY 1, 2")],
        "operators": [tuple(r) for r in await conn.fetch("SELECT id, role FROM users WHERE role = 'operator'")],
        "operator_wallets": [tuple(r) for r in await conn.fetch(
            "SELECT id, currency_id FROM wallets WHERE kind = 'operator' ORDER BY currency_id")],
        "triggers": sorted(r[0] for r in await conn.fetch(
            "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")),
        "tables": sorted(r[0] for r in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")),
    }


@pytest.fixture
async def fresh(admin_url):
    url = await create_empty_database(admin_url)
    conns = []

    async def connect() -> asyncpg.Connection:
        conn = await asyncpg.connect(url)
        conns.append(conn)
        return conn

    yield connect
    for conn in conns:
        await conn.close()


async def test_workers_applying_the_schema_at_once_all_succeed(fresh):
    conns = [await fresh() for _ in range(6)]
    assert not await schema_ready(conns[0])
    results = await asyncio.gather(*(migrate(c) for c in conns), return_exceptions=True)
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert await schema_ready(conns[0])
    state = await snapshot(conns[0])
    assert [c[:2] for c in state["currencies"]] == [(1, "USD"), (2, "EUR"), (3, "RUB")]
    assert len(state["rates"]) == 6  # every ordered pair, once
    assert state["operators"] == [(OPERATOR_USER_ID, "operator")]
    assert [w[1] for w in state["operator_wallets"]] == [1, 2, 3]
    assert TRIGGERS <= set(state["triggers"])
    assert len(state["triggers"]) == len(set(state["triggers"]))


async def test_applying_twice_is_harmless_and_keeps_data(fresh):
    conn = await fresh()
    await migrate(conn)
    before = await snapshot(conn)
    user_id = uuid.uuid4()
    await conn.execute("INSERT INTO users (id, username, email, password_hash, role) "
                       "VALUES ($1, 'keeper', 'keeper@example.com', '$argon2id$x', 'user')", user_id)
    await conn.execute("INSERT INTO wallets (id, user_id, currency_id, kind) VALUES ($1, $2, 1, 'user')",
                       uuid.uuid4(), user_id)
    # An operator-corrected rate survives a later migrate (seed inserts never overwrite).
    await conn.execute("UPDATE exchange_rates SET rate = 0.5 WHERE from_currency_id = 1 AND to_currency_id = 2")
    await migrate(conn)
    await migrate(conn)
    after = await snapshot(conn)
    assert after["currencies"] == before["currencies"]
    assert after["operators"] == before["operators"]
    assert after["operator_wallets"] == before["operator_wallets"]  # same ids: not recreated
    assert after["triggers"] == before["triggers"] and after["tables"] == before["tables"]
    assert await conn.fetchval("SELECT count(*) FROM wallets WHERE user_id = $1", user_id) == 1
    assert await conn.fetchval("SELECT rate FROM exchange_rates WHERE from_currency_id = 1 AND to_currency_id = 2") \
        == Decimal("0.5")
    # The trigger still fires once per statement, not once per application.
    await assert_postings_apply_once(conn)


async def test_concurrent_workers_on_an_already_migrated_database(fresh):
    conns = [await fresh() for _ in range(4)]
    await migrate(conns[0])
    before = await snapshot(conns[0])
    await asyncio.gather(*(migrate(c) for c in conns))
    assert await snapshot(conns[0]) == before


async def assert_postings_apply_once(conn: asyncpg.Connection) -> None:
    wallet = await conn.fetchval("SELECT id FROM wallets WHERE kind = 'operator' AND currency_id = 1")
    other = await conn.fetchval("SELECT id FROM wallets WHERE kind = 'user' AND currency_id = 1 LIMIT 1")
    before = await conn.fetchval("SELECT balance FROM wallets WHERE id = $1", other)
    entry = uuid.uuid4()
    async with conn.transaction():
        await conn.execute("INSERT INTO journal_entries (id, kind) VALUES ($1, 'bonus')", entry)
        await conn.execute("INSERT INTO postings (entry_id, wallet_id, currency_id, bucket, amount) "
                           "VALUES ($1, $2, 1, 'B', -2), ($1, $3, 1, 'B', 2)", entry, wallet, other)
    assert await conn.fetchval("SELECT balance FROM wallets WHERE id = $1", other) == before + 2


async def test_the_schema_refuses_an_unbalanced_or_edited_journal(fresh):
    conn = await fresh()
    await migrate(conn)
    await migrate(conn)
    user_id = uuid.uuid4()
    await conn.execute("INSERT INTO users (id, username, email, password_hash, role) "
                       "VALUES ($1, 'ledger_user', 'l@example.com', '!', 'user')", user_id)
    await conn.execute("INSERT INTO wallets (id, user_id, currency_id, kind) VALUES ($1, $2, 1, 'user')",
                       uuid.uuid4(), user_id)
    await assert_postings_apply_once(conn)
    operator = await conn.fetchval("SELECT id FROM wallets WHERE kind = 'operator' AND currency_id = 1")
    target = await conn.fetchval("SELECT id FROM wallets WHERE user_id = $1", user_id)

    entry = uuid.uuid4()
    with pytest.raises(asyncpg.CheckViolationError, match="does not balance"):
        async with conn.transaction():
            await conn.execute("INSERT INTO journal_entries (id, kind) VALUES ($1, 'bonus')", entry)
            await conn.execute("INSERT INTO postings (entry_id, wallet_id, currency_id, bucket, amount) "
                               "VALUES ($1, $2, 1, 'B', -1), ($1, $3, 1, 'B', 2)", entry, operator, target)
    assert await conn.fetchval("SELECT balance FROM wallets WHERE id = $1", target) == 2
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await conn.execute("UPDATE postings SET amount = amount * 10")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await conn.execute("DELETE FROM journal_entries")
    # A user wallet cannot go below zero, even through a balanced entry.
    with pytest.raises(asyncpg.CheckViolationError):
        async with conn.transaction():
            entry = uuid.uuid4()
            await conn.execute("INSERT INTO journal_entries (id, kind) VALUES ($1, 'bonus')", entry)
            await conn.execute("INSERT INTO postings (entry_id, wallet_id, currency_id, bucket, amount) "
                               "VALUES ($1, $2, 1, 'B', 5), ($1, $3, 1, 'B', -5)", entry, operator, target)
    assert await conn.fetchval("SELECT balance FROM wallets WHERE id = $1", target) == 2


# ---- versioned migrations -----------------------------------------------------------------------


def migrations_in(tmp_path: Path, extra: dict[str, str]) -> list[Migration]:
    """The shipped migrations plus `extra` (file name -> SQL), loaded from a directory."""
    for shipped in load_migrations():
        (tmp_path / f"{shipped.label}.sql").write_text(shipped.sql)
    for name, sql in extra.items():
        (tmp_path / name).write_text(sql)
    return load_migrations(tmp_path)


async def test_each_migration_is_applied_once_in_order_and_recorded(fresh, tmp_path):
    later = migrations_in(tmp_path, {
        f"{latest_version() + 1:04d}_plain_table.sql": "CREATE TABLE plain_one (id int PRIMARY KEY)",
        f"{latest_version() + 2:04d}_plain_column.sql": "ALTER TABLE plain_one ADD COLUMN note text",
    })
    conns = [await fresh() for _ in range(4)]
    # Plain DDL fails if run twice: four appliers at once prove each migration runs once.
    results = await asyncio.gather(*(migrate(c, migrations=later) for c in conns))
    assert sorted(len(r) for r in results) == [0, 0, 0, len(later)]
    rows = await applied_versions(conns[0])
    assert [(r["version"], r["name"], r["checksum"]) for r in rows] == \
        [(m.version, m.name, m.checksum) for m in later]
    assert await conns[0].fetchval("SELECT count(*) FROM information_schema.columns "
                                   "WHERE table_name = 'plain_one' AND column_name = 'note'") == 1
    assert await migrate(conns[0], migrations=later) == []


async def test_a_first_release_database_is_adopted_with_its_data(fresh):
    conn = await fresh()
    first = load_migrations()[0]
    await conn.execute(first.sql)  # what the first release's schema.sql left: tables, no record
    await migrate(conn, migrations=[])  # the seed only, as that release applied it
    await conn.execute("DROP TABLE schema_migrations")
    user_id = uuid.uuid4()
    await conn.execute("INSERT INTO users (id, username, email, password_hash, role) "
                       "VALUES ($1, 'old_timer', 'old@example.com', '!', 'user')", user_id)
    await conn.execute("INSERT INTO wallets (id, user_id, currency_id, kind) VALUES ($1, $2, 1, 'user')",
                       uuid.uuid4(), user_id)
    await assert_postings_apply_once(conn)
    before = await snapshot(conn)
    balances = await conn.fetch("SELECT id, balance FROM wallets ORDER BY id")

    applied = await migrate(conn)
    assert [m.version for m in applied] == [m.version for m in load_migrations()]
    assert await schema_ready(conn)
    after = await snapshot(conn)
    # 0001 again created nothing twice; later migrations add their own
    assert after["triggers"] == sorted(before["triggers"] + ["journal_seals_append_only"])
    assert await conn.fetch("SELECT id, balance FROM wallets ORDER BY id") == balances
    await assert_postings_apply_once(conn)  # the trigger still applies each posting once


async def test_a_changed_released_migration_is_refused_and_nothing_applied(fresh, tmp_path):
    conn = await fresh()
    await migrate(conn)
    shipped = load_migrations()
    edited = [Migration(shipped[0].version, shipped[0].name, shipped[0].sql + "\n-- edited\n"), *shipped[1:],
              Migration(shipped[-1].version + 1, "never_applied", "CREATE TABLE never_applied (id int)")]
    with pytest.raises(MigrationError, match=r"0001.*must never change"):
        await migrate(conn, migrations=edited)
    assert await conn.fetchval("SELECT to_regclass('public.never_applied')") is None
    renamed = [Migration(shipped[0].version, "other_name", shipped[0].sql), *shipped[1:]]
    with pytest.raises(MigrationError, match="other_name"):
        await migrate(conn, migrations=renamed)
    # The lock was released despite the refusal: a correct migrate still runs.
    assert await migrate(conn) == []


async def test_walletd_migrate_refuses_a_tampered_record_loudly(admin_url):
    url = await create_empty_database(admin_url)
    code, out = await run_cli(url, "migrate")
    assert code == 0, out
    assert f"applied {load_migrations()[0].label}" in out
    code, out = await run_cli(url, "migrate")
    assert code == 0 and "nothing to apply" in out, out
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("UPDATE schema_migrations SET checksum = 'not-the-file' WHERE version = 1")
    finally:
        await conn.close()
    code, out = await run_cli(url, "migrate")
    assert code == 3, out
    assert "migration refused" in out and "0001" in out and "must never change" in out


def test_migration_files_are_ordered_by_number_and_never_share_one(tmp_path):
    (tmp_path / "0001_a.sql").write_text("SELECT 1")
    (tmp_path / "0003_c.sql").write_text("SELECT 1")
    # a number reserved for a change not merged yet may be missing
    assert [m.label for m in load_migrations(tmp_path)] == ["0001_a", "0003_c"]
    (tmp_path / "0002_b.sql").write_text("SELECT 1")
    assert [m.label for m in load_migrations(tmp_path)] == ["0001_a", "0002_b", "0003_c"]
    (tmp_path / "0002_b_again.sql").write_text("SELECT 1")
    with pytest.raises(MigrationError, match="share version 2"):
        load_migrations(tmp_path)
    (tmp_path / "0002_b_again.sql").unlink()
    (tmp_path / "4_Bad-Name.sql").write_text("SELECT 1")
    with pytest.raises(MigrationError, match="not named"):
        load_migrations(tmp_path)


def test_migrations_and_seed_are_package_data_read_through_importlib_resources(tmp_path):
    """What a wheel ships (the .py files plus pyproject's package-data globs), zipped and imported
    with the source tree out of reach: the migrations and the seed must still load."""
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["walletd"]
    package = REPO_ROOT / "walletd"
    shipped = {p for p in package.rglob("*.py")} | {p for g in globs for p in package.glob(g)}
    archive = tmp_path / "walletd-installed.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in shipped:
            zf.write(path, path.relative_to(REPO_ROOT).as_posix())
    probe = ("import json, walletd.persistence.migrate as m; "
             "print(json.dumps({'file': m.__file__, 'migrations': [x.label for x in m.load_migrations()], "
             "'checksums': [x.checksum for x in m.load_migrations()], 'base': m.load_seed(None)['base']}))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(archive)}
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    result = json.loads(out)
    assert result["file"].startswith(str(archive))  # imported from the archive, not the checkout
    assert result["migrations"] == [m.label for m in load_migrations()]
    assert result["checksums"] == [m.checksum for m in load_migrations()]
    assert result["base"] == load_seed(None)["base"]
