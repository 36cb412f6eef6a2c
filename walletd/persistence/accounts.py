"""Users, their wallets and external wallets."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from decimal import Decimal

import asyncpg

from walletd.domain import errors
from walletd.domain.effects import Effects
from walletd.domain.policy import (
    DEFAULT_COMMISSION,
    OPERATOR_USER_ID,
    WALLET_KINDS,
    plan_signup_bonus,
    signup_bonus_for,
)
from walletd.domain.state import WalletState
from walletd.domain.vocabulary import WalletKind
from walletd.logs import get_logger
from walletd.persistence.batch_write import write_batch
from walletd.persistence.breaker import DatabaseBreaker
from walletd.persistence.db import FairPool
from walletd.persistence.in_doubt import InDoubt, find_out, registration_evidence, transaction

WALLET_COLUMNS = """w.id, w.balance, w.reserved_balance, w.currency_id, c.code AS currency, w.user_id, w.kind"""


_STATE_COLUMNS = "id, user_id, currency_id, kind, balance, reserved_balance"
REGISTRATION_UNKNOWN = "outcome unknown: log in to learn whether the account was created"
log = get_logger("walletd.accounts")


async def create_user(pool: FairPool, *, username: str, email: str, password_hash: str, role: str,
                      signup_bonus: Decimal = Decimal(0), request_id: str | None = None,
                      in_doubt_seconds: float = 30.0,
                      breaker: DatabaseBreaker) -> tuple[uuid.UUID, uuid.UUID | None]:
    """The user and its wallets in every currency (policy.WALLET_KINDS), in one transaction;
    returns (user id, bonus entry id).

    A service user also gets the default commission rates. The sign-up bonus the policy grants
    (signup_bonus: WALLETD_SIGNUP_BONUS; policy.signup_bonus_for, plan_signup_bonus) is written by
    the ledger's batch write, in the same transaction. A COMMIT whose answer is lost is found
    out like a ledger batch's (persistence/in_doubt.py): the user row is the evidence. Raises
    Unavailable only when nothing was created, OutcomeUnknown when that could not be found out.
    """
    user_id = uuid.uuid4()
    kinds = WALLET_KINDS[role]
    bonus = signup_bonus_for(role, signup_bonus)
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
            if bonus:
                entry_id = await _grant_signup_bonus(conn, wallets, bonus, request_id)
    except InDoubt as doubt:
        log.warning("accounts.in_doubt", user_id=str(user_id), error=repr(doubt.cause)[:300])
        committed = await find_out(pool, doubt, registration_evidence(user_id), in_doubt_seconds,
                                   breaker)
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
    roles, kinds = zip(*((role, kind) for role, role_kinds in WALLET_KINDS.items() for kind in role_kinds),
                       strict=True)
    await conn.execute(
        """INSERT INTO wallets (id, user_id, currency_id, kind)
           SELECT gen_random_uuid(), u.id, c.id, k.kind
             FROM users u
             JOIN unnest($2::text[], $3::text[]) AS k(role, kind) ON k.role = u.role
             CROSS JOIN currencies c WHERE c.id >= $1
           ON CONFLICT DO NOTHING""", first_new_currency, list(roles), list(kinds))
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


def owner(row: asyncpg.Record | None) -> tuple[uuid.UUID, str] | None:
    """A wallet row's (owner's user id, kind): what domain/access.py decides on."""
    return None if row is None else (row["user_id"], row["kind"])


async def wallet_owners(pool: FairPool, wallet_ids: list[uuid.UUID]) -> dict[uuid.UUID, tuple[uuid.UUID, str]]:
    """(owner's user id, kind) of each of these wallets that exists."""
    rows = await pool.fetch("SELECT id, user_id, kind FROM wallets WHERE id = ANY($1::uuid[])", wallet_ids)
    return {r["id"]: (r["user_id"], r["kind"]) for r in rows}


async def claimed_wallet(pool: FairPool, user_id: uuid.UUID, wallet_id: uuid.UUID) -> asyncpg.Record | None:
    """The wallet if this user owns it, else None; whether the caller may use it is
    domain/access.py's to decide. Asked by owner and id: on Citus that is the owner's shard only."""
    return await pool.fetchrow(f"SELECT {WALLET_COLUMNS} FROM wallets w JOIN currencies c ON c.id = w.currency_id "
                               "WHERE w.user_id = $1 AND w.id = $2", user_id, wallet_id)


_KINDS = {"service": WalletKind.SERVICE.value, "gateway": WalletKind.GATEWAY.value}
# A service's wallets, for a service and currency given as SQL expressions (parameters, or a
# record's columns in _SETTLEMENT below).
_SERVICE_WALLETS_OF = """SELECT s.id AS service_wallet_id, g.id AS gateway_wallet_id, r.deposit_rate, r.withdraw_rate
  FROM wallets s
  JOIN wallets g ON g.user_id = s.user_id AND g.currency_id = s.currency_id AND g.kind = '{gateway}'
  LEFT JOIN commission_rates r ON r.service_user_id = s.user_id AND r.currency_id = s.currency_id
 WHERE s.user_id = {service_user_id} AND s.currency_id = {currency_id} AND s.kind = '{service}'"""
_SERVICE_WALLETS = _SERVICE_WALLETS_OF.format(service_user_id="$1", currency_id="$2", **_KINDS)
_NO_SERVICE_WALLETS = dict.fromkeys(("service_wallet_id", "gateway_wallet_id", "deposit_rate", "withdraw_rate"))


async def service_wallets(pool: FairPool, service_user_id: uuid.UUID, currency_id: int) -> asyncpg.Record:
    """A payment service's service and gateway wallets in a currency, and its stored commission
    rates there (None where it has none: policy.CommissionRates.stored_or_default decides)."""
    row = await pool.fetchrow(_SERVICE_WALLETS, service_user_id, currency_id)
    if row is None:
        raise errors.ServiceWalletNotFound()
    return row


_SETTLING = ("SELECT t.id, t.type, t.status, t.service_user_id, t.from_wallet_id, t.to_wallet_id, "
             "coalesce(t.from_currency_id, t.to_currency_id) AS currency_id")
# One round trip for a settlement's two lookups. Not on Citus: a record lives on its customer's
# shard, the service's wallets on the service's, so the join would cross shards.
_SETTLEMENT = (f"{_SETTLING}, w.* FROM transactions t LEFT JOIN LATERAL ("
               + _SERVICE_WALLETS_OF.format(service_user_id="t.service_user_id",
                                            currency_id="coalesce(t.from_currency_id, t.to_currency_id)", **_KINDS)
               + ") w ON true WHERE t.id = $1")


async def settlement_lookup(pool: FairPool, transaction_id: uuid.UUID) -> Mapping | None:
    """A record a settlement names (access.check_settler's fields) with its payment service's
    wallets and rates in the record's currency (service_wallet_id None: it has none there; the caller
    says so only once check_settler has let it see the record). None: no such record."""
    if not pool.distributed:
        return await pool.fetchrow(_SETTLEMENT, transaction_id)
    found = await pool.fetchrow(f"{_SETTLING} FROM transactions t WHERE t.id = $1", transaction_id)
    if found is None:
        return None
    service = await pool.fetchrow(_SERVICE_WALLETS, found["service_user_id"], found["currency_id"])
    return {**found, **(service or _NO_SERVICE_WALLETS)}


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
