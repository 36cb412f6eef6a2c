"""Seeding: users and wallets exactly as walletd.persistence.accounts.create_user makes them,
and the bulk-loaded history of the read benchmark.

Users are inserted set-based (one statement for the users, one for their wallets) because
registering thousands through HTTP would mostly benchmark argon2; every user shares one
precomputed password hash. Money never enters this way: the harness funds wallets through
walletd's own deposit and settlement endpoints (see bench/run.py).

The history wallet's rows are the one exception (a history page's cost needs a deep history, which
HTTP would take minutes to write): transfers back and forth
between two users' wallets, bulk-inserted with SQL as walletd would write them (one journal
entry per transfer with two postings summing to zero, one `transactions` row pointing at it).
Each pair of transfers cancels out, so no balance changes and `walletd audit` stays clean.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal

import asyncpg

from walletd.domain.effects import Effects
from walletd.domain.policy import OPERATOR_USER_ID, plan_signup_bonus
from walletd.domain.state import WalletState
from walletd.domain.vocabulary import WalletKind
from walletd.persistence import accounts
from walletd.persistence.batch_write import WRITE_BATCH, write_batch
from walletd.persistence.breaker import DatabaseBreaker
from walletd.persistence.citus.ledger import citus_batch_document

BENCH_PASSWORD = "bench-Str0ng!pass"


@dataclass
class User:
    id: uuid.UUID
    username: str
    wallets: dict[int, uuid.UUID]  # currency id -> wallet id (kind 'user')
    token: str = ""


async def create_users(conn: asyncpg.Connection, prefix: str, count: int, password_hash: str) -> list[User]:
    """count users of role 'user', each with a wallet in every currency, as create_user does
    (no sign-up bonus: the benchmark leaves WALLETD_SIGNUP_BONUS unset)."""
    ids = [uuid.uuid4() for _ in range(count)]
    names = [f"{prefix}_{i}" for i in range(count)]
    async with conn.transaction():
        await conn.execute(
            """INSERT INTO users (id, username, email, password_hash, role)
               SELECT u.id, u.name, lower(u.name) || '@bench.invalid', $3, 'user'
                 FROM unnest($1::uuid[], $2::text[]) AS u(id, name)""",
            ids, names, password_hash)
        rows = await conn.fetch(
            """INSERT INTO wallets (id, user_id, currency_id, kind)
               SELECT gen_random_uuid(), u.id, c.id, 'user' FROM unnest($1::uuid[]) AS u(id), currencies c
               RETURNING id, user_id, currency_id""",
            ids)
    by_user: dict[uuid.UUID, dict[int, uuid.UUID]] = {i: {} for i in ids}
    for row in rows:
        by_user[row["user_id"]][row["currency_id"]] = row["id"]
    return [User(i, n, by_user[i]) for i, n in zip(ids, names, strict=True)]


async def create_service_user(pool: asyncpg.Pool, username: str, password_hash: str) -> User:
    """Through walletd's own create_user: service and gateway wallets plus commission rates."""
    user_id, _ = await accounts.create_user(pool, username=username, email=f"{username}@bench.invalid",
                                            password_hash=password_hash, role="service",
                                            breaker=DatabaseBreaker())
    rows = await pool.fetch("SELECT id, currency_id FROM wallets WHERE user_id = $1 AND kind = 'service'", user_id)
    return User(user_id, username, {r["currency_id"]: r["id"] for r in rows})


async def load_history(url: str, owner: User, counterpart: User, currency_id: int, rows: int, *,
                       amount: str = "1.0000000000", chunk: int = 200_000, fast: bool = True,
                       connections: int = 2) -> None:
    """`rows` transfers touching owner's wallet (rows // 2 there-and-back pairs with counterpart),
    loaded over `connections` parallel connections in chunks of `chunk` rows.

    fast: load with session_replication_role = replica, which skips the per-row foreign-key
    checks and the postings trigger (as pg_restore --disable-triggers does); the rows are
    consistent by construction, each pair nets to zero so the trigger would change no balance,
    and `walletd audit` at the end re-checks every entry and every balance anyway.
    """
    pairs = rows // 2
    step = chunk // 2
    # A random version-4 prefix per load; the last 12 hex digits count the rows.
    r = uuid.uuid4().hex
    prefix = f"{r[:8]}-{r[8:12]}-4{r[13:16]}-8{r[17:20]}-"
    ranges = [(start, min(start + step, pairs)) for start in range(0, pairs, step)]
    lanes = [ranges[i::connections] for i in range(connections)]

    async def lane(todo: list[tuple[int, int]]) -> None:
        if not todo:
            return
        conn = await asyncpg.connect(url)
        try:
            distributed = await _distributed(conn)
            for start, stop in todo:
                await _load_pairs(conn, owner, counterpart, currency_id, pairs, start, stop, amount, fast, prefix,
                                  distributed)
        finally:
            await conn.close()

    await asyncio.gather(*(lane(todo) for todo in lanes))


async def _distributed(conn: asyncpg.Connection) -> bool:
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')"))


async def _load_pairs(conn: asyncpg.Connection, owner: User, counterpart: User, currency_id: int, pairs: int,
                      start: int, stop: int, amount: str, fast: bool, prefix: str, distributed: bool = False) -> None:
    """Rows i in [2*start, 2*stop): i even = owner -> counterpart, i odd = back; older rows first.

    Transfer i's journal entry and its transactions row share one id, `prefix` + i in hex: ids
    that grow with i keep every index insert at the right edge of its B-tree (random UUIDs
    would make the load several times slower), and no id has to be remembered between the
    three statements. On Citus (persistence/citus/) every row also names its owner, and a
    transfer is recorded once per side, as walletd's distributed batch write does.
    """
    a, b = owner.wallets[currency_id], counterpart.wallets[currency_id]
    rows = pairs * 2
    ident = f"({prefix!r} || lpad(to_hex(i), 12, '0'))::uuid"
    at = "now() - make_interval(secs => ($3::int - i))"
    if distributed:
        await _load_pairs_distributed(conn, owner, counterpart, a, b, currency_id, rows, start, stop, amount, ident,
                                      at)
        return
    async with conn.transaction():
        await conn.execute("SET LOCAL synchronous_commit = off")
        if fast:
            await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute(
            f"""INSERT INTO journal_entries (id, kind, request_id, created_at)
                SELECT {ident}, 'transfer', 'bench-history', {at} FROM generate_series($1::bigint, $2::bigint) i""",
            2 * start, 2 * stop - 1, rows)
        # One statement per chunk, so that without `fast` the balancing trigger sees whole
        # entries; each pair nets to zero per wallet, so no balance changes either way.
        # Each posting carries its entry's time and realizes the entry's one record (same id).
        await conn.execute(
            f"""INSERT INTO postings (entry_id, wallet_id, currency_id, bucket, amount, created_at, transaction_id)
                SELECT {ident}, leg.wallet_id, $5::int2, 'B', leg.amount, {at.replace('$3', '$7')}, {ident}
                  FROM generate_series($1::bigint, $2::bigint) i,
                       LATERAL (VALUES (CASE WHEN i % 2 = 0 THEN $3::uuid ELSE $4::uuid END, -$6::numeric),
                                       (CASE WHEN i % 2 = 0 THEN $4::uuid ELSE $3::uuid END, $6::numeric))
                               AS leg(wallet_id, amount)""",
            2 * start, 2 * stop - 1, a, b, currency_id, amount, rows)
        await conn.execute(
            f"""INSERT INTO transactions (id, type, status, from_wallet_id, from_currency_id, from_user_id, amount,
                                          to_wallet_id, to_currency_id, to_user_id, rate, converted_amount,
                                          user_id, entry_id, created_at, updated_at)
                SELECT {ident}, 'transfer', 'close',
                       CASE WHEN i % 2 = 0 THEN $4::uuid ELSE $5::uuid END, $6,
                       CASE WHEN i % 2 = 0 THEN $7::uuid ELSE $8::uuid END, $9::numeric,
                       CASE WHEN i % 2 = 0 THEN $5::uuid ELSE $4::uuid END, $6,
                       CASE WHEN i % 2 = 0 THEN $8::uuid ELSE $7::uuid END, 1, $9::numeric,
                       CASE WHEN i % 2 = 0 THEN $7::uuid ELSE $8::uuid END, {ident}, {at}, {at}
                  FROM generate_series($1::bigint, $2::bigint) i ORDER BY i""",
            2 * start, 2 * stop - 1, rows, a, b, currency_id, owner.id, counterpart.id, amount)


async def _load_pairs_distributed(conn: asyncpg.Connection, owner: User, counterpart: User, a: uuid.UUID,
                                  b: uuid.UUID, currency_id: int, rows: int, start: int, stop: int, amount: str,
                                  ident: str, at: str) -> None:
    sender = "CASE WHEN i % 2 = 0 THEN $4::uuid ELSE $5::uuid END"
    receiver = "CASE WHEN i % 2 = 0 THEN $5::uuid ELSE $4::uuid END"
    async with conn.transaction():
        await conn.execute("SET LOCAL synchronous_commit = off")
        await conn.execute(
            f"""INSERT INTO journal_entries (user_id, id, kind, request_id, created_at)
                SELECT {sender}, {ident}, 'transfer', 'bench-history', {at}
                  FROM generate_series($1::bigint, $2::bigint) i""",
            2 * start, 2 * stop - 1, rows, owner.id, counterpart.id)
        await conn.execute(
            f"""INSERT INTO postings (user_id, entry_id, wallet_id, currency_id, bucket, amount)
                SELECT leg.user_id, {ident}, leg.wallet_id, $7::int2, 'B', leg.amount
                  FROM generate_series($1::bigint, $2::bigint) i,
                       LATERAL (VALUES ({sender}, CASE WHEN i % 2 = 0 THEN $3::uuid ELSE $6::uuid END, -$8::numeric),
                                       ({receiver}, CASE WHEN i % 2 = 0 THEN $6::uuid ELSE $3::uuid END, $8::numeric))
                               AS leg(user_id, wallet_id, amount)""",
            2 * start, 2 * stop - 1, a, owner.id, counterpart.id, b, currency_id, amount)
        from_user = "CASE WHEN i % 2 = 0 THEN $7::uuid ELSE $8::uuid END"
        to_user = "CASE WHEN i % 2 = 0 THEN $8::uuid ELSE $7::uuid END"
        await conn.execute(
            f"""INSERT INTO transactions (owner_id, id, type, status, from_wallet_id, from_currency_id, from_user_id,
                                          amount, to_wallet_id, to_currency_id, to_user_id, rate, converted_amount,
                                          user_id, entry_id, created_at, updated_at)
                SELECT side.owner_id, {ident}, 'transfer', 'close',
                       CASE WHEN i % 2 = 0 THEN $4::uuid ELSE $5::uuid END, $6, {from_user}, $9::numeric,
                       CASE WHEN i % 2 = 0 THEN $5::uuid ELSE $4::uuid END, $6, {to_user}, 1, $9::numeric,
                       {from_user}, {ident}, {at}, {at}
                  FROM generate_series($1::bigint, $2::bigint) i,
                       LATERAL (VALUES ({from_user}), ({to_user})) AS side(owner_id)
                 ORDER BY i""",
            2 * start, 2 * stop - 1, rows, a, b, currency_id, owner.id, counterpart.id, amount)


async def history_rows(conn: asyncpg.Connection, wallet_id: uuid.UUID) -> int:
    # Distinct ids: on Citus a transfer between two users is stored once per side.
    return await conn.fetchval(
        "SELECT count(*) FROM (SELECT id FROM transactions WHERE from_wallet_id = $1 "
        "UNION SELECT id FROM transactions WHERE to_wallet_id = $1) t", wallet_id)


async def grant_signup_bonus(conn: asyncpg.Connection, users: list[User], amount: str) -> None:
    """Credit every wallet of these users exactly as walletd books a sign-up bonus: planned by
    walletd.domain.policy.plan_signup_bonus (per user one 'bonus' journal entry, the operator's
    wallet −amount and the user's wallet +amount in every currency, one 'bonus' transaction per
    wallet) and written by the ledger's batch write, all users in one call."""
    states = "id, user_id, currency_id, kind, balance, reserved_balance"
    async with conn.transaction():
        wallets = await conn.fetch(f"SELECT {states} FROM wallets WHERE user_id = ANY($1::uuid[]) AND kind = $2",
                                   [u.id for u in users], WalletKind.USER)
        desks = await conn.fetch(f"SELECT {states} FROM wallets WHERE user_id = $1 AND kind = $2",
                                 OPERATOR_USER_ID, WalletKind.OPERATOR)
        by_user: dict[uuid.UUID, list[WalletState]] = {u.id: [] for u in users}
        for row in wallets:
            by_user[row["user_id"]].append(WalletState(*row))
        desk_states = {d["currency_id"]: WalletState(*d) for d in desks}
        effects = Effects(datetime.now(timezone.utc))
        for user_wallets in by_user.values():
            plan_signup_bonus(user_wallets, desk_states, Decimal(amount), "bench-signup-bonus", effects)
        if await _distributed(conn):  # the distributed batch write places each row with its owner
            wallets = {w.id: w for ws in by_user.values() for w in ws} | {d.id: d for d in desk_states.values()}
            await conn.fetchval(WRITE_BATCH, citus_batch_document(effects, [], wallets, {}))
        else:
            await write_batch(conn, effects, [])
