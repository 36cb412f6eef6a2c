"""The Citus step of `walletd migrate`: after the migrations, a database whose server has the citus
extension gets the layout of citus/layout.py and the distributed edition of the batch write.

It places only what is not placed yet, so it runs on every migrate (cheaply: one catalog query)
and a database distributed long ago picks up a table a later migration added. Everything runs in
one transaction under migrate's advisory lock: a failure leaves the database as it was.

Before a table is distributed, Citus needs every primary key, unique constraint and unique index
to include the distribution column: each one that lacks it is rebuilt with the column first, under
its own name. An id that was unique on its own stays unique by construction (walletd generates
UUIDs). One reversal per original stays exact: every reversal of an original has the original's
owner, so two of them meet on that owner's shard.
"""

from __future__ import annotations

import re
from importlib import resources

import asyncpg

from walletd.logs import get_logger
from walletd.persistence.citus.layout import LAYOUT, ByUser, OnCoordinator, Placement, Reference

log = get_logger("walletd.citus")

# The co-location group every ByUser table joins: the one of the first ByUser table listed.
_ANCHOR = next(p.table for p in LAYOUT if isinstance(p, ByUser))

_KEYS = """
SELECT c.conname, c.contype::text AS contype, array_agg(a.attname::text ORDER BY k.ord) AS columns
  FROM pg_constraint c
 CROSS JOIN LATERAL unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord)
  JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
 WHERE c.conrelid = $1::regclass AND c.contype IN ('p', 'u')
 GROUP BY c.oid, c.conname, c.contype
 ORDER BY c.contype, c.conname
"""


# Unique indexes that are not constraints (a partial one, such as one reversal per original).
_UNIQUE_INDEXES = """
SELECT i.indexrelid::regclass::text AS name, pg_get_indexdef(i.indexrelid) AS definition
  FROM pg_index i
 WHERE i.indrelid = $1::regclass AND i.indisunique
   AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
   AND NOT EXISTS (SELECT 1 FROM pg_attribute a
                    WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) AND a.attname = $2)
"""


async def citus_present(conn: asyncpg.Connection) -> bool:
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')"))


async def placed_tables(conn: asyncpg.Connection) -> dict[str, str]:
    """Table -> 'distributed', 'reference' or 'on coordinator', for what Citus already knows. A
    table Citus registered by itself (a foreign key to a reference table) is not placed yet: Citus
    may turn it back into a plain table."""
    rows = await conn.fetch(
        """SELECT logicalrelid::regclass::text,
                  CASE WHEN partmethod = 'h' THEN 'distributed' WHEN repmodel = 't' THEN 'reference'
                       ELSE 'on coordinator' END
             FROM pg_dist_partition WHERE NOT autoconverted""")
    return {r[0]: r[1] for r in rows}


# The Citus editions of the schema's functions, (re)installed after every migrate.
FUNCTION_FILES = ("write_batch.sql", "chain.sql")


def function_sql(name: str) -> str:
    return resources.files("walletd.persistence.citus").joinpath(name).read_text(encoding="utf-8")


async def distribute(conn: asyncpg.Connection, layout: tuple[Placement, ...] = LAYOUT) -> list[str]:
    """Places every table of the layout not placed yet; returns them. Call on a Citus coordinator."""
    async with conn.transaction():
        # The journal's append-only triggers go to the shards with their tables: they read no
        # other table, which is what makes a trigger on a shard safe.
        await conn.execute("SET LOCAL citus.enable_unsafe_triggers = on")
        # One connection per worker for the whole step: creating shards of tables with foreign
        # keys to reference tables in one transaction requires it.
        await conn.execute("SET LOCAL citus.multi_shard_modify_mode = 'sequential'")
        placed = await placed_tables(conn)
        existing = {r[0] for r in await conn.fetch(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema()")}
        done: list[str] = []
        pending = [p for p in layout if p.table in existing and p.table not in placed]
        references = {p.table for p in layout if isinstance(p, Reference)}
        for placement in pending:
            if isinstance(placement, ByUser):
                await _prepare(conn, placement)
            elif isinstance(placement, OnCoordinator):
                await _keep_plain(conn, placement.table, references)
        for placement in pending:
            if isinstance(placement, Reference):
                await conn.execute("SELECT create_reference_table($1)", placement.table)
                done.append(placement.table)
        for placement in pending:
            if isinstance(placement, ByUser):
                colocate = "none" if placement.table == _ANCHOR else _ANCHOR
                await conn.execute("SELECT create_distributed_table($1, $2, colocate_with => $3)",
                                   placement.table, placement.column, colocate)
                done.append(placement.table)
        placed = await placed_tables(conn)
        # Always: a later migration may have replaced a function with its single-node edition.
        for name in FUNCTION_FILES:
            await conn.execute(function_sql(name))
    known = {p.table for p in layout}
    for table in sorted(existing - known - set(placed)):
        log.warning("citus.table_not_in_layout", table=table,
                    detail="not distributed: add it to walletd/persistence/citus/layout.py")
    if done:
        log.info("citus.distributed", tables=done)
    return done


async def _keep_plain(conn: asyncpg.Connection, table: str, references: set[str]) -> None:
    """Drops the table's foreign keys to future reference tables (see layout.OnCoordinator)."""
    rows = await conn.fetch(
        "SELECT conname, confrelid::regclass::text FROM pg_constraint WHERE conrelid = $1::regclass AND contype = 'f'",
        table)
    for name, target in rows:
        if target in references:
            await conn.execute(f"ALTER TABLE {table} DROP CONSTRAINT {name}")


async def _prepare(conn: asyncpg.Connection, table: ByUser) -> None:
    """What Citus needs of a local table before it can distribute it (see the module docstring)."""
    name = table.table
    if table.added:
        await conn.execute(f"ALTER TABLE {name} ADD COLUMN IF NOT EXISTS {table.added}")
    if table.backfill:
        # The append-only triggers refuse the UPDATE that fills a column the journal gains here.
        await conn.execute(f"ALTER TABLE {name} DISABLE TRIGGER USER")
        for statement in table.backfill:
            await conn.execute(statement)
        await conn.execute(f"ALTER TABLE {name} ENABLE TRIGGER USER")
    if table.added:
        await conn.execute(f"ALTER TABLE {name} ALTER COLUMN {table.column} SET NOT NULL")
    for trigger in table.drop_triggers:
        await conn.execute(f"DROP TRIGGER IF EXISTS {trigger} ON {name}")
    for key in await conn.fetch(_KEYS, name):
        if table.column in key["columns"]:
            continue
        kind = "PRIMARY KEY" if key["contype"] == "p" else "UNIQUE"
        columns = ", ".join([table.column, *key["columns"]])
        await conn.execute(f"ALTER TABLE {name} DROP CONSTRAINT {key['conname']}")
        await conn.execute(f"ALTER TABLE {name} ADD CONSTRAINT {key['conname']} {kind} ({columns})")
    for index in await conn.fetch(_UNIQUE_INDEXES, name, table.column):
        await conn.execute(f"DROP INDEX {index['name']}")
        await conn.execute(re.sub(r"USING (\w+) \(", rf"USING \1 ({table.column}, ", index["definition"], count=1))
    for statement in table.after_keys:
        await conn.execute(statement)
    if table.replica_identity_full:
        await conn.execute(f"ALTER TABLE {name} REPLICA IDENTITY FULL")
    for statement in table.indexes:
        await conn.execute(statement)

