"""Applies schema.sql and the seed data; concurrent appliers serialise on an advisory lock."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from importlib import resources
from pathlib import Path

import asyncpg

from walletd.domain.money import quantize_rate

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schema.sql"
_LOCK_ID = 0x77616C6C  # "wall": any constant shared by every walletd process
# The operator account funds sign-up credits; a fixed id so every process agrees on it.
OPERATOR_USER_ID = uuid.uuid5(uuid.NAMESPACE_URL, "walletd:operator")


def load_seed(path: Path | None) -> dict:
    if path is None:
        text = resources.files("walletd").joinpath("data/seed.json").read_text()
    else:
        text = path.read_text()
    return json.loads(text, parse_float=Decimal)


def cross_rates(base: str, rates: dict[str, Decimal]) -> dict[tuple[str, str], Decimal]:
    """Rates for every ordered pair, derived through the base: rate(a→b) = rates[b] / rates[a]."""
    values = {code: Decimal(str(value)) for code, value in rates.items()}
    values.setdefault(base, Decimal(1))
    return {
        (a, b): quantize_rate(values[b] / values[a])
        for a in values
        for b in values
        if a != b and values[a] > 0 and values[b] > 0
    }


async def migrate(conn: asyncpg.Connection, seed_path: Path | None = None) -> None:
    seed = load_seed(seed_path)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_ID)
        await conn.execute(SCHEMA_PATH.read_text())
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
        await ensure_operator_wallets(conn)


async def ensure_operator_wallets(conn: asyncpg.Connection) -> None:
    await conn.execute(
        """INSERT INTO users (id, username, email, password_hash, role)
           VALUES ($1, 'walletd-operator', 'operator@walletd.invalid', '!', 'operator')
           ON CONFLICT DO NOTHING""",
        OPERATOR_USER_ID,
    )
    await conn.execute(
        """INSERT INTO wallets (id, user_id, currency_id, kind)
           SELECT gen_random_uuid(), $1, c.id, 'operator' FROM currencies c
           ON CONFLICT DO NOTHING""",
        OPERATOR_USER_ID,
    )


async def schema_ready(conn: asyncpg.Connection) -> bool:
    return bool(await conn.fetchval("SELECT to_regclass('public.transactions') IS NOT NULL"))
