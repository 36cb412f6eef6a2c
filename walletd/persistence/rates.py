"""Currencies, exchange rates and commission rates (the rules for them live in walletd/domain/)."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import datetime, timedelta
from decimal import Decimal

import asyncpg

from walletd.domain import arbitrage, errors
from walletd.domain.policy import DEFAULT_COMMISSION
from walletd.domain.rates import RateBook, check_change, cross_rates
from walletd.persistence import accounts
from walletd.persistence.db import FairPool

_RATE_LIMIT = Decimal(10) ** 20  # exchange_rates.rate is NUMERIC(30, 10)
_CURRENCY_CODE = re.compile(r"[A-Z0-9]{2,10}")  # the CHECK on currencies.code


async def rate_book(pool: FairPool | asyncpg.Connection, now: datetime, max_age: timedelta | None) -> RateBook:
    """Every stored rate (the quote endpoint, and the ledger when a batch converts between currencies)."""
    rows = await pool.fetch("SELECT from_currency_id, to_currency_id, rate, updated_at FROM exchange_rates")
    return RateBook({(r[0], r[1]): (r[2], r[3]) for r in rows}, now, max_age)


async def currency_ids(pool: FairPool) -> dict[str, int]:
    return dict(await pool.fetch("SELECT code, id FROM currencies"))


async def require_currencies(pool: FairPool, *ids: int) -> None:
    found = await pool.fetchval("SELECT count(*) FROM currencies WHERE id = ANY($1::int2[])", list(set(ids)))
    if found != len(set(ids)):
        raise errors.CurrencyNotFound()


# Rate writes are rare (the operator): each takes this lock, so two writes cannot each pass the
# round-trip check against the other's old rate. Readers (the ledger's plain SELECT) are not blocked.
_LOCK = "LOCK TABLE exchange_rates IN SHARE ROW EXCLUSIVE MODE"
_UPSERT = """INSERT INTO exchange_rates (from_currency_id, to_currency_id, rate, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (from_currency_id, to_currency_id)
             DO UPDATE SET rate = EXCLUDED.rate, updated_at = EXCLUDED.updated_at"""


async def _stored(conn) -> dict[tuple[int, int], Decimal]:
    return {(r[0], r[1]): r[2] for r in await conn.fetch("SELECT from_currency_id, to_currency_id, rate "
                                                         "FROM exchange_rates")}


async def store_provider_rates(pool: FairPool, base: str, rates: dict[str, Decimal], at: datetime, *,
                               force: bool, max_change: Decimal) -> int:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(_LOCK)
        ids = dict(await conn.fetch("SELECT code, id FROM currencies"))
        # NaN, infinite, zero or negative quotes price nothing (and NaN would not even compare).
        known = {code: rate for code, rate in rates.items() if code in ids and rate.is_finite() and rate > 0}
        if base not in ids and base not in known:
            raise errors.RateProviderError("provider base currency is unknown to walletd")
        pairs = cross_rates(base, known)
        # A cross rate that is zero at 10 places, or does not fit NUMERIC(30, 10), cannot be stored
        # (CHECK rate > 0 / numeric overflow): skip that pair rather than fail the whole pull.
        new = {(ids[a], ids[b]): rate for (a, b), rate in pairs.items()
               if a in ids and b in ids and 0 < rate < _RATE_LIMIT}
        stored = await _stored(conn)
        # Derived rates are cut toward the desk, so they keep every round trip at most 1 among
        # themselves; pairs the provider no longer quotes may still break one, and force never lifts it.
        await asyncio.to_thread(arbitrage.check_table, {**stored, **new})
        if not force:
            check_change({pair: (stored[pair], rate) for pair, rate in new.items() if pair in stored}, max_change)
        await conn.executemany(_UPSERT, [(a, b, rate, at) for (a, b), rate in new.items()])
        return len(new)


async def set_rate(pool: FairPool, from_id: int, to_id: int, rate: Decimal, *, force: bool,
                   max_change: Decimal) -> asyncpg.Record:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(_LOCK)
        stored = await _stored(conn)
        await asyncio.to_thread(arbitrage.check_set, stored, from_id, to_id, rate)
        if not force and (from_id, to_id) in stored:
            check_change({(from_id, to_id): (stored[(from_id, to_id)], rate)}, max_change)
        try:
            return await conn.fetchrow(
                """INSERT INTO exchange_rates (from_currency_id, to_currency_id, rate, updated_at)
                   VALUES ($1, $2, $3, now())
                   ON CONFLICT (from_currency_id, to_currency_id)
                   DO UPDATE SET rate = EXCLUDED.rate, updated_at = EXCLUDED.updated_at
                   RETURNING from_currency_id, to_currency_id, rate, updated_at""",
                from_id, to_id, rate)
        except (asyncpg.ForeignKeyViolationError, asyncpg.CheckViolationError):
            raise errors.CurrencyNotFound() from None


async def last_update(pool: FairPool) -> datetime | None:
    return await pool.fetchval("SELECT max(updated_at) FROM exchange_rates")


async def add_currencies(pool: FairPool, symbols: dict[str, str]) -> int:
    """Adds unknown currencies, and a wallet in each for every existing account."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("LOCK TABLE currencies IN SHARE ROW EXCLUSIVE MODE")
        known = set(await conn.fetchval("SELECT coalesce(array_agg(code), '{}') FROM currencies"))
        # Only codes the schema can hold (ASCII A-Z, 0-9): str.isalnum() also passes "ÉUR".
        new = [(code, name.replace("\x00", "")) for code, name in sorted(symbols.items())
               if code not in known and _CURRENCY_CODE.fullmatch(code)]
        if not new:
            return 0
        start = await conn.fetchval("SELECT coalesce(max(id), 0) + 1 FROM currencies")
        await conn.executemany("INSERT INTO currencies (id, code, name) VALUES ($1, $2, $3)",
                               [(start + i, code, name[:100]) for i, (code, name) in enumerate(new)])
        await accounts.add_wallets_in_new_currencies(conn, start)
        await conn.execute(
            "INSERT INTO commission_rates (service_user_id, currency_id, deposit_rate, withdraw_rate) "
            "SELECT u.id, c.id, $2, $3 FROM users u, currencies c "
            "WHERE u.role = 'service' AND c.id >= $1 ON CONFLICT DO NOTHING",
            start, DEFAULT_COMMISSION.deposit, DEFAULT_COMMISSION.withdraw)
        return len(new)


async def set_commission(pool: FairPool, service_user_id: uuid.UUID, currency_id: int, deposit: Decimal,
                         withdraw: Decimal) -> asyncpg.Record:
    try:
        return await pool.fetchrow(
            """INSERT INTO commission_rates (service_user_id, currency_id, deposit_rate, withdraw_rate)
               VALUES ($1, $2, $3, $4) ON CONFLICT (service_user_id, currency_id)
               DO UPDATE SET deposit_rate = EXCLUDED.deposit_rate, withdraw_rate = EXCLUDED.withdraw_rate
               RETURNING service_user_id, currency_id, deposit_rate, withdraw_rate""",
            service_user_id, currency_id, deposit, withdraw)
    except asyncpg.ForeignKeyViolationError:
        raise errors.CurrencyNotFound() from None


async def commissions(pool: FairPool, service_user_id: uuid.UUID) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT service_user_id, currency_id, deposit_rate, withdraw_rate FROM commission_rates "
        "WHERE service_user_id = $1 ORDER BY currency_id", service_user_id)
