"""Users, their wallets and external wallets."""

from __future__ import annotations

import uuid
from decimal import Decimal

import asyncpg

from walletd.domain import errors
from walletd.domain.ids import new_id
from walletd.persistence.db import FairPool
from walletd.persistence.migrate import OPERATOR_USER_ID

WALLET_COLUMNS = """w.id, w.balance, w.reserved_balance, w.currency_id, c.code AS currency, w.user_id, w.kind"""


async def create_user(pool: FairPool, *, username: str, email: str, password_hash: str, role: str,
                      signup_bonus: Decimal = Decimal(0), request_id: str | None = None) -> tuple[uuid.UUID, uuid.UUID | None]:
    """The user and a wallet in every currency, in one transaction; returns (user id, bonus entry id).

    A service user gets a service wallet and a gateway wallet per currency, and the default
    commission rates. A sign-up bonus is one journal entry from the operator's wallets.
    """
    user_id = uuid.uuid4()
    kinds = ("service", "gateway") if role == "service" else ("user",)
    async with pool.acquire() as conn, conn.transaction():
        try:
            await conn.execute(
                "INSERT INTO users (id, username, email, password_hash, role) VALUES ($1, $2, $3, $4, $5)",
                user_id, username, email.lower(), password_hash, role,
            )
        except asyncpg.UniqueViolationError:
            raise errors.DuplicateAccount() from None
        await conn.execute(
            """INSERT INTO wallets (id, user_id, currency_id, kind)
               SELECT gen_random_uuid(), $1, c.id, k FROM currencies c, unnest($2::text[]) k""",
            user_id, list(kinds),
        )
        if role == "service":
            await conn.execute(
                "INSERT INTO commission_rates (service_user_id, currency_id) SELECT $1, id FROM currencies", user_id)
        entry_id = None
        if role == "user" and signup_bonus > 0:
            entry_id = await _book_signup_bonus(conn, user_id, signup_bonus, request_id)
    return user_id, entry_id


async def _book_signup_bonus(conn: asyncpg.Connection, user_id: uuid.UUID, amount: Decimal,
                             request_id: str | None) -> uuid.UUID:
    entry_id = new_id()
    await conn.execute("INSERT INTO journal_entries (id, kind, request_id) VALUES ($1, 'bonus', $2)", entry_id, request_id)
    # One posting pair per currency: operator −amount, new wallet +amount.
    await conn.execute(
        """INSERT INTO postings (entry_id, wallet_id, currency_id, bucket, amount)
           SELECT $1, w.id, w.currency_id, 'B', CASE WHEN w.user_id = $2 THEN $3 ELSE -$3::numeric END
             FROM wallets w
            WHERE (w.user_id = $2 AND w.kind = 'user') OR (w.user_id = $4 AND w.kind = 'operator')""",
        entry_id, user_id, amount, OPERATOR_USER_ID,
    )
    await conn.execute(
        """INSERT INTO transactions (id, type, status, from_wallet_id, from_currency_id, from_user_id, amount,
                                     to_wallet_id, to_currency_id, to_user_id, converted_amount, user_id, entry_id)
           SELECT gen_random_uuid(), 'bonus', 'close', o.id, o.currency_id, o.user_id, $3,
                  w.id, w.currency_id, w.user_id, $3, w.user_id, $1
             FROM wallets w JOIN wallets o ON o.currency_id = w.currency_id AND o.user_id = $4 AND o.kind = 'operator'
            WHERE w.user_id = $2 AND w.kind = 'user'""",
        entry_id, user_id, amount, OPERATOR_USER_ID,
    )
    return entry_id


async def find_user(pool: FairPool, username: str) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT id, username, email, password_hash, role, created_at FROM users WHERE username = $1", username)


async def get_user(pool: FairPool, user_id: uuid.UUID) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT id, username, email, role, created_at FROM users WHERE id = $1", user_id)


async def user_wallets(pool: FairPool, user_id: uuid.UUID) -> list[asyncpg.Record]:
    return await pool.fetch(
        f"""SELECT {WALLET_COLUMNS} FROM wallets w JOIN currencies c ON c.id = w.currency_id
            WHERE w.user_id = $1 AND w.kind = 'user' ORDER BY w.currency_id""", user_id)


async def wallet(pool: FairPool | asyncpg.Connection, wallet_id: uuid.UUID) -> asyncpg.Record | None:
    return await pool.fetchrow(
        f"SELECT {WALLET_COLUMNS} FROM wallets w JOIN currencies c ON c.id = w.currency_id WHERE w.id = $1", wallet_id)


async def owned_wallet(pool: FairPool, user_id: uuid.UUID, wallet_id: uuid.UUID) -> asyncpg.Record:
    """A wallet of this user; anyone else's looks exactly like one that does not exist."""
    row = await wallet(pool, wallet_id)
    if row is None or row["user_id"] != user_id or row["kind"] != "user":
        raise errors.WalletNotFound()
    return row


async def service_wallets(pool: FairPool, service_user_id: uuid.UUID, currency_id: int) -> asyncpg.Record:
    row = await pool.fetchrow(
        """SELECT s.id AS service_wallet_id, g.id AS gateway_wallet_id,
                  coalesce(r.deposit_rate, 0.01) AS deposit_rate, coalesce(r.withdraw_rate, 0.02) AS withdraw_rate
             FROM wallets s
             JOIN wallets g ON g.user_id = s.user_id AND g.currency_id = s.currency_id AND g.kind = 'gateway'
             LEFT JOIN commission_rates r ON r.service_user_id = s.user_id AND r.currency_id = s.currency_id
            WHERE s.user_id = $1 AND s.currency_id = $2 AND s.kind = 'service'""",
        service_user_id, currency_id)
    if row is None:
        raise errors.ServiceWalletNotFound()
    return row


async def create_external_wallet(pool: FairPool, user_id: uuid.UUID, name: str, currency_id: int) -> asyncpg.Record:
    try:
        return await pool.fetchrow(
            """INSERT INTO external_wallets (id, user_id, currency_id, wallet_name, card_id)
               VALUES ($1, $2, $3, $4, NULL)
               RETURNING id, wallet_name, currency_id, amount_withdraw, card_id, user_id""",
            uuid.uuid4(), user_id, currency_id, name)
    except asyncpg.UniqueViolationError:
        raise errors.ExternalWalletExists() from None
    except asyncpg.ForeignKeyViolationError:
        raise errors.CurrencyNotFound() from None


async def external_wallet(pool: FairPool, user_id: uuid.UUID, currency_id: int) -> asyncpg.Record | None:
    return await pool.fetchrow(
        "SELECT id, amount_withdraw FROM external_wallets WHERE user_id = $1 AND currency_id = $2", user_id, currency_id)
