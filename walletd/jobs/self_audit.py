"""The self-audit job: checks each journal entry a few seconds after it is sealed, and the whole
journal every full interval. A problem is recorded once (audit_problems, keyed by what it is about)
and logged once, as `audit.problem` at error level; it stays until an operator deletes its row.

Incremental pass, every interval, by one process at a time (an advisory lock; the others only read
the results for their metrics), through the seals added since the last pass, a batch at a time:
read and hashed outside any transaction, then the balances checked, the problems stored and the
cursor moved in one short transaction (see _step):
- chain: each new seal against its entry (walletd/domain/chain.py), each new entry balanced;
- balances: audit_balances holds, per wallet, the sums of the postings of every entry verified so
  far. Once the pass has reached the chain's head, every wallet the new entries touch, or the
  entries written since and not sealed yet, must hold exactly those sums plus those entries'
  postings, read in one snapshot;
- holds: those wallets' reserved balance equals the pending withdrawals held in them.
Full pass, every full interval, claimed by one process through audit_cursor.full_pass_at: the whole
chain again (an entry altered after its first check), entries inserted inside the sealed part, and
every check of `walletd audit` (find_problems), which also sees wallets no new entry touched.
Both passes check what is already committed and sealed, so they give way to requests: before each
batch a pass waits for a moment with no request in flight in this process, up to
WALLETD_AUDIT_MAX_WAIT_SECONDS in all (request_load.py); a burst's answers then do not queue behind
the hashing, and under sustained load a pass runs at most that late. The sealer does not wait: an
entry is tamper-evident only once sealed.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from decimal import Decimal

import asyncpg

from walletd import metrics
from walletd.domain.money import fmt
from walletd.domain.vocabulary import Bucket
from walletd.integrity import verify
from walletd.jobs.request_load import QuietWait, RequestLoad
from walletd.logs import get_logger
from walletd.persistence import chain
from walletd.persistence.audit import find_keyed_problems
from walletd.persistence.db import FairPool, discard

log = get_logger("walletd.audit")

LOCK_ID = 0x77616C6E  # the incremental pass's own lock: one process at a time
UNSEALED_LIMIT = 20_000  # past this many entries not sealed yet, a pass skips the balance check

Problem = tuple[str, str]  # (key, text)


class _Overtaken(Exception):
    """The cursor is no longer where this pass found it."""


@contextlib.asynccontextmanager
async def _pass_lock(conn):
    """The incremental pass's lock, held by the session (its reads run in transactions of their own)
    and released before the connection goes back to the pool, which resets nothing; yields whether
    it was taken. It also excludes the previous release, which takes it per transaction."""
    taken = await conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_ID)
    try:
        yield taken
    finally:
        if taken:
            try:
                await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_ID)
            except Exception:  # noqa: BLE001 - closing the session releases the lock with it
                discard(conn)


class SelfAudit:
    def __init__(self, pool: FairPool, interval: float, full_interval: float, batch: int = chain.READ_BATCH,
                 *, load: RequestLoad | None = None, max_wait: float = 0.0) -> None:
        self.pool = pool
        self.interval = interval
        self.full_interval = full_interval
        self.batch = batch
        self.load = load  # this process's requests: each pass waits up to max_wait for moments with none
        self.max_wait = max_wait

    async def run(self) -> None:
        """Passes until cancelled (run it under walletd.jobs.supervision)."""
        await self.pool.execute("INSERT INTO audit_cursor DEFAULT VALUES ON CONFLICT DO NOTHING")
        while True:
            await self.incremental_pass()
            await self.full_pass_if_due()
            await self.publish()
            await asyncio.sleep(self.interval)

    # ---- incremental ---------------------------------------------------------------------------

    async def incremental_pass(self) -> int:
        """Checks every seal added since the last pass, a batch per transaction; returns how many
        this process checked (0 when another process holds the pass)."""
        checked = 0
        quiet = QuietWait(self.load, self.max_wait)
        while True:
            await quiet()
            step = await self._step()
            if step is None:
                return checked
            count, caught_up = step
            checked += count
            metrics.AUDIT_VERIFIED.inc(count)
            if caught_up:
                return checked

    async def _step(self) -> tuple[int, bool] | None:
        async with self.pool.acquire() as conn, _pass_lock(conn) as taken:
            if not taken:
                return None
            try:
                # Read and hashed outside any transaction (verify.check_after says why)...
                cursor, segment, problems = await self._check_next(conn)
                # ...then the balance check compares wallets, postings and holds of one instant.
                async with conn.transaction(isolation="repeatable_read"):
                    await conn.execute(chain.PLAN_FOR_READS)
                    count, caught_up, stored = await self._settle_segment(conn, cursor, segment, problems)
            except (asyncpg.SerializationError, _Overtaken):
                # The cursor moved after this pass read it (a process of the previous release, or an
                # operator): its cursor is newer, and updating ours failed. Nothing written.
                return None
        log_stored(stored)
        return count, caught_up

    async def _check_next(self, conn) -> tuple[int, verify.Segment, list[Problem]]:
        """The seals after the cursor, checked against their entries (nothing written)."""
        cursor = await conn.fetchval("SELECT verified_seq FROM audit_cursor")
        if cursor is None:
            raise _Overtaken()  # no cursor row: run() creates it
        problems: list[Problem] = []
        previous = await chain.seal_at(conn, cursor) if cursor else None
        if cursor and previous is None:
            problems.append((f"chain:removed:{cursor}:", f"journal chain: seal {cursor}, the last one the self-audit "
                                                        "checked, was removed"))
        segment = await verify.check_after(conn, previous, self.batch)
        problems += [(p.key, str(p)) for p in segment.problems]
        return cursor, segment, problems

    async def _settle_segment(self, conn, cursor: int, segment: verify.Segment,
                              problems: list[Problem]) -> tuple[int, bool, list[Problem]]:
        """The checked segment's balances, its problems stored and the cursor moved past it, in one
        transaction."""
        problems += await _entry_problems(conn, segment)
        sealed = await chain.posting_sums(conn, segment.entry_ids)
        head_seq = await conn.fetchval("SELECT coalesce(max(seq), 0) FROM journal_seals")
        last_seq = segment.last.seq if segment.last else 0
        caught_up = last_seq >= head_seq
        if caught_up:
            problems += await _balance_problems(conn, segment.last, sealed, self.pool.distributed)
        # Writes last: the transaction gets an xid only now, so it holds the sealing horizon back
        # for as short a time as possible.
        if sealed:
            wallets = list(sealed)
            await conn.execute(
                """INSERT INTO audit_balances (wallet_id, balance, reserved)
                   SELECT * FROM unnest($1::uuid[], $2::numeric[], $3::numeric[])
                   ON CONFLICT (wallet_id) DO UPDATE SET balance = audit_balances.balance + excluded.balance,
                                                        reserved = audit_balances.reserved + excluded.reserved""",
                wallets, [sealed[w][0] for w in wallets], [sealed[w][1] for w in wallets])
        moved = await conn.execute("UPDATE audit_cursor SET verified_seq = $1, passed_at = now() "
                                   "WHERE verified_seq = $2", last_seq, cursor)
        if moved != "UPDATE 1":
            raise _Overtaken()  # the sums above are rolled back with it
        return segment.count, caught_up, await record(conn, problems)

    # ---- full ----------------------------------------------------------------------------------

    async def full_pass_if_due(self) -> bool:
        claimed = await self.pool.fetchval(
            """UPDATE audit_cursor SET full_pass_at = now()
                WHERE full_pass_at IS NULL OR full_pass_at <= now() - make_interval(secs => $1::double precision)
               RETURNING true""", float(self.full_interval))
        if not claimed:
            return False
        result = await verify.audit_chain(self.pool, pace=QuietWait(self.load, self.max_wait))
        problems = [(p.key, str(p)) for p in result.problems]
        async with self.pool.acquire() as conn:
            problems += await find_keyed_problems(conn)
            async with conn.transaction():
                stored = await record(conn, problems)
        log_stored(stored)
        log.info("audit.full_pass", entries=result.sealed, problems=len(problems))
        return True

    async def publish(self) -> None:
        """The gauges from the database's record, so every process reports the same."""
        row = await self.pool.fetchrow("SELECT extract(epoch FROM c.passed_at)::float8, "
                                       "(SELECT count(*) FROM audit_problems) FROM audit_cursor c")
        if row is not None:
            if row[0] is not None:
                metrics.AUDIT_LAST_SUCCESS.set(row[0])
            metrics.AUDIT_PROBLEMS.set(row[1])


async def record(conn, problems: list[Problem]) -> list[Problem]:
    """Stores problems not known yet; returns those, for log_stored once the transaction commits."""
    if not problems:
        return []
    unique = dict(problems)
    rows = await conn.fetch("INSERT INTO audit_problems (key, problem) SELECT * FROM unnest($1::text[], $2::text[]) "
                            "ON CONFLICT (key) DO NOTHING RETURNING key, problem", list(unique), list(unique.values()))
    return [(key, text) for key, text in rows]


def log_stored(problems: list[Problem]) -> None:
    """Logs each newly stored problem once, after its commit: a logged problem is always in audit_problems
    (a pass rolled back logs nothing and the next one finds the problem again)."""
    for key, text in problems:
        log.error("audit.problem", key=key, problem=text)


async def _entry_problems(conn, segment: verify.Segment) -> list[Problem]:
    problems = [(f"entry:{entry_id}:empty", f"journal entry {entry_id} has no postings")
                for entry_id in segment.without_postings]
    for entry_id, currency in await chain.unbalanced(conn, segment.entry_ids):
        problems.append((f"entry:{entry_id}:unbalanced:{currency}",
                         f"journal entry {entry_id} does not balance in currency {currency}"))
    return problems


_AFTER = """
SELECT id FROM journal_entries WHERE (xid, id) > ($1::text::xid8, $2::uuid) ORDER BY xid, id LIMIT $3"""
_WALLETS = """
SELECT w.id, w.balance, w.reserved_balance, b.balance, b.reserved,
       (SELECT coalesce(sum(t.amount), 0) FROM transactions t
         WHERE t.user_id = w.user_id AND t.status = 'pending' AND t.type = 'withdraw' AND t.from_wallet_id = w.id)
  FROM wallets w LEFT JOIN audit_balances b ON b.wallet_id = w.id
 WHERE w.id = ANY($1::uuid[])"""
# Citus (persistence/citus/): a withdrawal's record is its customer's, on the wallet's shard.
_WALLETS_CITUS = _WALLETS.replace("WHERE t.user_id = w.user_id",
                                  "WHERE t.owner_id = w.user_id AND t.user_id = w.user_id")


# Citus: one statement per wallet reads its balances, its postings and its pending withdrawals in
# one worker snapshot: the subqueries join on the owner, so each shard runs the whole statement
# and only the wallet's own shard finds it (the wallet is named by id alone, so every shard is
# asked; this runs only for a suspected problem). The check's several statements
# above do not share one snapshot on a cluster (each worker, even each connection to one, takes
# its own), so a transfer committing between them looks like a wrong balance; a finding is
# reported only when this confirms it.
_CONFIRM_CITUS = f"""
SELECT w.balance, w.reserved_balance,
       (SELECT coalesce(sum(p.amount), 0) FROM postings p
         WHERE p.user_id = w.user_id AND p.wallet_id = w.id AND p.bucket = '{Bucket.BALANCE}'),
       (SELECT coalesce(sum(p.amount), 0) FROM postings p
         WHERE p.user_id = w.user_id AND p.wallet_id = w.id AND p.bucket = '{Bucket.RESERVED}'),
       (SELECT coalesce(sum(t.amount), 0) FROM transactions t
         WHERE t.owner_id = w.user_id AND t.user_id = w.user_id AND t.status = 'pending' AND t.type = 'withdraw'
           AND t.from_wallet_id = w.id)
  FROM wallets w WHERE w.id = $1"""


async def _confirmed_on_citus(conn, problems: list[Problem]) -> list[Problem]:
    confirmed = []
    for key, text in problems:
        kind, _, wallet = key.partition(":")
        if kind not in ("balance", "holds"):
            confirmed.append((key, text))
            continue
        row = await conn.fetchrow(_CONFIRM_CITUS, uuid.UUID(wallet))
        if row is None:
            continue
        balance, reserved, posted_balance, posted_reserved, held = row
        wrong = (balance, reserved) != (posted_balance, posted_reserved) if kind == "balance" else reserved != held
        if wrong:
            confirmed.append((key, text))
    return confirmed


async def _balance_problems(conn, last, sealed: dict[uuid.UUID, tuple[Decimal, Decimal]],
                            distributed: bool) -> list[Problem]:
    """The wallets the newly checked entries and the entries not sealed yet touch, against the
    verified sums plus those entries' postings (see the module docstring)."""
    position = (str(last.entry_xid), last.entry_id) if last else ("0", uuid.UUID(int=0))
    newer = [r[0] for r in await conn.fetch(_AFTER, *position, UNSEALED_LIMIT + 1)]
    if len(newer) > UNSEALED_LIMIT:
        return []  # sealing is far behind; the check resumes once it catches up
    unsealed = await chain.posting_sums(conn, newer)
    touched = set(sealed) | set(unsealed)
    if not touched:
        return []
    problems: list[Problem] = []
    found = set()
    for wallet_id, balance, reserved, verified_balance, verified_reserved, held in await conn.fetch(
            _WALLETS_CITUS if distributed else _WALLETS, list(touched)):
        found.add(wallet_id)
        expected = [Decimal(verified_balance or 0), Decimal(verified_reserved or 0)]
        for more in (sealed.get(wallet_id), unsealed.get(wallet_id)):
            if more:
                expected = [expected[0] + more[0], expected[1] + more[1]]
        if [balance, reserved] != expected:
            problems.append((f"balance:{wallet_id}",
                             f"wallet {wallet_id} holds balance {fmt(balance)} / reserved {fmt(reserved)}, its "
                             f"postings sum to {fmt(expected[0])} / {fmt(expected[1])}"))
        if reserved != held:
            problems.append((f"holds:{wallet_id}", f"wallet {wallet_id} has reserved balance {fmt(reserved)}, its "
                                                   f"pending withdrawals hold {fmt(held)}"))
    for wallet_id in touched - found:
        problems.append((f"wallet:{wallet_id}:missing", f"postings name wallet {wallet_id}, which does not exist"))
    return await _confirmed_on_citus(conn, problems) if distributed and problems else problems
