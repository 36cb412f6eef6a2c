"""Users, their wallets and external wallets."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from decimal import Decimal

import asyncpg

from walletd.domain import errors
from walletd.domain.ledger import Effects, WalletState
from walletd.domain.policy import DEFAULT_COMMISSION, OPERATOR_USER_ID, plan_signup_bonus
from walletd.domain.vocabulary import WalletKind
from walletd.logs import get_logger
from walletd.persistence.batch_write import write_batch
from walletd.persistence.db import FairPool
from walletd.persistence.in_doubt import InDoubt, find_out, transaction, user_marker

WALLET_COLUMNS = """w.id, w.balance, w.reserved_balance, w.currency_id, c.code AS currency, w.user_id, w.kind"""


_STATE_COLUMNS = "id, user_id, currency_id, kind, balance, reserved_balance"
REGISTRATION_UNKNOWN = "outcome unknown: log in to learn whether the account was created"
log = get_logger("walletd.accounts")


async def create_user(pool: FairPool, *, username: str, email: str, password_hash: str, role: str,
                      signup_bonus: Decimal = Decimal(0), request_id: str | None = None,
                      in_doubt_seconds: float = 30.0) -> tuple[uuid.UUID, uuid.UUID | None]:
    """The user and a wallet in every currency, in one transaction; returns (user id, bonus entry id).

    A service user gets a service wallet and a gateway wallet per currency, and the default
    commission rates. A user's sign-up bonus (walletd.domain.policy.plan_signup_bonus) is written
    by the ledger's batch write, in the same transaction. A COMMIT whose answer is lost is found
    out like a ledger batch's (persistence/in_doubt.py): the user row is the marker. Raises
    Unavailable only when nothing was created, OutcomeUnknown when that could not be found out.
    """
    user_id = uuid.uuid4()
    kinds = (WalletKind.SERVICE, WalletKind.GATEWAY) if role == "service" else (WalletKind.USER,)
    entry_id = None
    try:
        async with pool.acquire() as conn, transaction(conn):
            try:
                await conn.execute(
                    "INSERT INTO users (id, username, email, password_hash, role) VALUES ($1, $2, $3, $4, $5)",
                    user_id, username, email.lower(), password_hash, role,
                )
            except asyncpg.UniqueViolationError:
                raise errors.DuplicateAccount() from None
            wallets = await conn.fetch(
                f"""INSERT INTO wallets (id, user_id, currency_id, kind)
                    SELECT gen_random_uuid(), $1, c.id, k FROM currencies c, unnest($2::text[]) k
                    RETURNING {_STATE_COLUMNS}""",
                user_id, list(kinds),
            )
            if role == "service":
                await conn.execute(
                    "INSERT INTO commission_rates (service_user_id, currency_id, deposit_rate, withdraw_rate) "
                    "SELECT $1, id, $2, $3 FROM currencies",
                    user_id, DEFAULT_COMMISSION.deposit, DEFAULT_COMMISSION.withdraw)
            if role == "user" and signup_bonus > 0:
                entry_id = await _grant_signup_bonus(conn, wallets, signup_bonus, request_id)
    except InDoubt as doubt:
        log.warning("accounts.in_doubt", user_id=str(user_id), error=repr(doubt.cause)[:300])
        committed = await find_out(pool, doubt, user_marker(user_id), in_doubt_seconds)
        if committed is None:
            log.error("accounts.outcome_unknown", user_id=str(user_id), username=username, bonus_entry=entry_id)
            raise errors.OutcomeUnknown(REGISTRATION_UNKNOWN) from None
        log.warning("accounts.in_doubt_resolved", user_id=str(user_id), committed=committed)
        if not committed:
            raise errors.Unavailable() from None
    return user_id, entry_id


async def _grant_signup_bonus(conn: asyncpg.Connection, wallets: list[asyncpg.Record], amount: Decimal,
                              request_id: str | None) -> uuid.UUID | None:
    desks = await conn.fetch(f"SELECT {_STATE_COLUMNS} FROM wallets WHERE user_id = $1 AND kind = $2",
                             OPERATOR_USER_ID, WalletKind.OPERATOR)
    effects = Effects(datetime.now(timezone.utc))
    entry_id = plan_signup_bonus([WalletState(*w) for w in wallets], {d["currency_id"]: WalletState(*d) for d in desks},
                                 amount, request_id, effects)
    if entry_id is not None:
        await write_batch(conn, effects, [])
    return entry_id


async def ensure_operator_wallets(conn: asyncpg.Connection) -> None:
    """The operator account and its wallet (exchange desk) in every currency."""
    await conn.execute(
        """INSERT INTO users (id, username, email, password_hash, role)
           VALUES ($1, 'walletd-operator', 'operator@walletd.invalid', '!', 'operator')
           ON CONFLICT DO NOTHING""",
        OPERATOR_USER_ID,
    )
    await conn.execute(
        """INSERT INTO wallets (id, user_id, currency_id, kind)
           SELECT gen_random_uuid(), $1, c.id, $2 FROM currencies c
           ON CONFLICT DO NOTHING""",
        OPERATOR_USER_ID, WalletKind.OPERATOR,
    )


async def add_wallets_in_new_currencies(conn: asyncpg.Connection, first_new_currency: int) -> None:
    """Every account gets its wallets in the currencies numbered from first_new_currency on."""
    await conn.execute(
        """INSERT INTO wallets (id, user_id, currency_id, kind)
           SELECT gen_random_uuid(), u.id, c.id, k.kind
             FROM users u
             JOIN LATERAL unnest(CASE u.role WHEN 'service' THEN ARRAY['service', 'gateway']
                                             WHEN 'user' THEN ARRAY['user'] ELSE ARRAY[]::text[] END) AS k(kind) ON true
             CROSS JOIN currencies c WHERE c.id >= $1
           ON CONFLICT DO NOTHING""", first_new_currency)
    await ensure_operator_wallets(conn)


async def find_user(pool: FairPool, username: str) -> asyncpg.Record | None:
    return await pool.fetchrow(
        "SELECT id, username, email, password_hash, role, created_at FROM users WHERE username = $1", username)


async def get_user(pool: FairPool, user_id: uuid.UUID) -> asyncpg.Record | None:
    return await pool.fetchrow("SELECT id, username, email, role, created_at FROM users WHERE id = $1", user_id)


async def user_wallets(pool: FairPool, user_id: uuid.UUID) -> list[asyncpg.Record]:
    return await pool.fetch(
        f"""SELECT {WALLET_COLUMNS} FROM wallets w JOIN currencies c ON c.id = w.currency_id
            WHERE w.user_id = $1 AND w.kind = $2 ORDER BY w.currency_id""", user_id, WalletKind.USER)


async def wallet(pool: FairPool | asyncpg.Connection, wallet_id: uuid.UUID) -> asyncpg.Record | None:
    return await pool.fetchrow(
        f"SELECT {WALLET_COLUMNS} FROM wallets w JOIN currencies c ON c.id = w.currency_id WHERE w.id = $1", wallet_id)


async def wallet_owners(pool: FairPool, wallet_ids: list[uuid.UUID]) -> dict[uuid.UUID, asyncpg.Record]:
    """Owner (user_id) and kind of each of these wallets that exists."""
    rows = await pool.fetch("SELECT id, user_id, kind FROM wallets WHERE id = ANY($1::uuid[])", wallet_ids)
    return {r["id"]: r for r in rows}


async def owned_wallet(pool: FairPool, user_id: uuid.UUID, wallet_id: uuid.UUID) -> asyncpg.Record:
    """A wallet of this user; anyone else's looks exactly like one that does not exist. Asked by
    owner and id: on Citus that is the owner's shard only."""
    row = await pool.fetchrow(f"SELECT {WALLET_COLUMNS} FROM wallets w JOIN currencies c ON c.id = w.currency_id "
                              "WHERE w.user_id = $1 AND w.id = $2", user_id, wallet_id)
    if row is None or row["kind"] != WalletKind.USER:
        raise errors.WalletNotFound()
    return row


async def service_wallets(pool: FairPool, service_user_id: uuid.UUID, currency_id: int) -> asyncpg.Record:
    row = await pool.fetchrow(
        """SELECT s.id AS service_wallet_id, g.id AS gateway_wallet_id,
                  coalesce(r.deposit_rate, $3) AS deposit_rate, coalesce(r.withdraw_rate, $4) AS withdraw_rate
             FROM wallets s
             JOIN wallets g ON g.user_id = s.user_id AND g.currency_id = s.currency_id AND g.kind = 'gateway'
             LEFT JOIN commission_rates r ON r.service_user_id = s.user_id AND r.currency_id = s.currency_id
            WHERE s.user_id = $1 AND s.currency_id = $2 AND s.kind = 'service'""",
        service_user_id, currency_id, DEFAULT_COMMISSION.deposit, DEFAULT_COMMISSION.withdraw)
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
        "SELECT id, amount_withdraw FROM external_wallets WHERE user_id = $1 AND currency_id = $2",
        user_id, currency_id)
