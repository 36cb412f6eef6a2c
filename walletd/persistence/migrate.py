"""Versioned migrations and the seed data.

The schema lives in numbered SQL files shipped inside the package (walletd/migrations/NNNN_name.sql,
read through importlib.resources, so an installed wheel migrates as well as a checkout). Each
database records what it has applied in `schema_migrations` (version, name, checksum, applied_at).

- Applied in version order, each once: one transaction per migration, together with its record.
- Concurrent appliers (workers starting together, `walletd migrate` during a rolling start)
  serialise on one advisory lock held for the whole run; the previous release takes the same
  lock id, so it queues behind a new migrate instead of racing it.
- A released migration never changes: if a file's checksum (or name) differs from what the
  database recorded for its version, migrate refuses with `MigrationError` and applies nothing.
- A database created by the first release (tables exist, no `schema_migrations`) is adopted:
  0001 is the first release's schema written with IF NOT EXISTS / OR REPLACE throughout, so
  running it again changes nothing that exists (and completes anything missing); it is then
  recorded. Later migrations are plain DDL and run exactly once.
- Versions the database has but this release does not know (a newer release ran, then this one
  was rolled back to) are logged and left alone; walletd still starts.
- The seed (currencies, rates, operator account) is applied after the migrations, every time,
  with ON CONFLICT DO NOTHING: it never overwrites what an operator changed.
- On a Citus coordinator (the citus extension is installed in the database), the tables are then
  distributed as walletd/persistence/citus/layout.py says (persistence/citus/distribute.py):
  after the migrations, which stay the same plain DDL on both engines, and before the seed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import re
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import asyncpg

from walletd.domain.rates import cross_rates
from walletd.logs import get_logger
from walletd.persistence import accounts
from walletd.persistence.citus.distribute import citus_present, distribute

_LOCK_ID = 0x77616C6C  # "wall": any constant shared by every walletd process (and the first release)
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

log = get_logger("walletd.migrate")

_CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


class MigrationError(Exception):
    """The migrations shipped and the database's record of them disagree; nothing was applied."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        # Line endings normalised: a checkout with CRLF is the same migration.
        return hashlib.sha256(self.sql.replace("\r\n", "\n").encode()).hexdigest()

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


def migrations_root() -> Traversable:
    return resources.files("walletd").joinpath("migrations")


def load_migrations(root: Traversable | None = None) -> list[Migration]:
    """Every migration shipped, in version order. Two files with one number (two changes that took
    the same number) fail loudly here."""
    root = migrations_root() if root is None else root
    found: dict[int, Migration] = {}
    for entry in root.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _FILE_NAME.match(entry.name)
        if match is None:
            raise MigrationError(f"migration file {entry.name!r} is not named NNNN_lowercase_name.sql")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"two migrations share version {version}: {found[version].label}, {entry.name}")
        found[version] = Migration(version, match.group(2), entry.read_text(encoding="utf-8"))
    # Numbers are handed out in advance to changes developed side by side, so a release may skip a
    # number whose change is not merged yet; the order is the numbers' order all the same.
    return [found[v] for v in sorted(found)]


def load_seed(path: Path | None) -> dict:
    if path is None:
        text = resources.files("walletd").joinpath("data/seed.json").read_text()
    else:
        text = path.read_text()
    return json.loads(text, parse_float=Decimal)


async def migrate(conn: asyncpg.Connection, seed_path: Path | None = None,
                  migrations: list[Migration] | None = None) -> list[Migration]:
    """Applies the pending migrations and the seed; returns the migrations applied by this call."""
    migrations = load_migrations() if migrations is None else migrations
    seed = load_seed(seed_path)
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
    try:
        await conn.execute(_CREATE_MIGRATIONS_TABLE)
        recorded = {r["version"]: r for r in await conn.fetch("SELECT version, name, checksum FROM schema_migrations")}
        _verify(recorded, migrations)
        if not recorded and await schema_tables_exist(conn):
            log.info("migrate.adopting", reason="tables exist but no schema_migrations: a first-release database")
        applied = []
        for migration in migrations:
            if migration.version in recorded:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                                   migration.version, migration.name, migration.checksum)
            log.info("migrate.applied", version=migration.version, name=migration.name)
            applied.append(migration)
        if await citus_present(conn):
            await distribute(conn)
        async with conn.transaction():
            await _apply_seed(conn, seed)
    finally:
        # A dead connection has already dropped its session lock; keep the original error.
        with contextlib.suppress(asyncpg.InterfaceError, asyncpg.PostgresConnectionError, OSError):
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)
    return applied


def _verify(recorded: dict, migrations: list[Migration]) -> None:
    known = {m.version: m for m in migrations}
    for version, row in sorted(recorded.items()):
        migration = known.get(version)
        if migration is None:
            log.warning("migrate.unknown_version", version=version, name=row["name"],
                        detail="the database is ahead of this release; leaving it alone")
        elif row["name"] != migration.name or row["checksum"] != migration.checksum:
            raise MigrationError(
                f"migration {version:04d} was applied as {row['name']!r} with checksum {row['checksum'][:16]}…, "
                f"but this release ships {migration.label} with checksum {migration.checksum[:16]}…: a released "
                "migration must never change (restore the file and put the change in a new migration)")


async def _apply_seed(conn: asyncpg.Connection, seed: dict) -> None:
    await conn.executemany(
        "INSERT INTO currencies (id, code, name) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        [(c["id"], c["code"], c["name"]) for c in seed["currencies"]],
    )
    ids = dict(await conn.fetch("SELECT code, id FROM currencies"))
    pairs = cross_rates(seed["base"], seed["rates"])
    await conn.executemany(
        """INSERT INTO exchange_rates (from_currency_id, to_currency_id, rate)
           VALUES ($1, $2, $3) ON CONFLICT DO NOTHING""",
        [(ids[a], ids[b], rate) for (a, b), rate in pairs.items() if a in ids and b in ids],
    )
    await accounts.ensure_operator_wallets(conn)


async def schema_tables_exist(conn: asyncpg.Connection) -> bool:
    return bool(await conn.fetchval("SELECT to_regclass('public.transactions') IS NOT NULL"))


async def applied_versions(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """The database's record, oldest first (empty when nothing was ever migrated)."""
    if not await conn.fetchval("SELECT to_regclass('public.schema_migrations') IS NOT NULL"):
        return []
    return await conn.fetch("SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version")


@functools.cache
def latest_version() -> int:
    return load_migrations()[-1].version


async def schema_ready(conn: asyncpg.Connection) -> bool:
    """Every migration this release ships is applied (a newer database counts as ready)."""
    if not await conn.fetchval("SELECT to_regclass('public.schema_migrations') IS NOT NULL"):
        return False
    return (await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")) >= latest_version()
