"""`walletd audit`: recompute every balance from the journal and report each difference.

On Citus (persistence/citus/) the same checks run with the owner columns in their joins: a
posting sits on its wallet's shard and an entry has a posting on its owner's shard, so those
checks run on every shard in parallel; a reference that may cross shards (a posting's entry, a
record's other wallet) is checked against the ids Citus collects on the coordinator.
"""

from __future__ import annotations

import asyncpg

_CHECKS = {
    "wallet balance differs from its postings": """
        SELECT w.id, w.balance, w.reserved_balance,
               coalesce(p.b, 0) AS posted_balance, coalesce(p.r, 0) AS posted_reserved
          FROM wallets w LEFT JOIN (
               SELECT wallet_id, sum(amount) FILTER (WHERE bucket = 'B') AS b,
                      sum(amount) FILTER (WHERE bucket = 'R') AS r
                 FROM postings GROUP BY wallet_id) p ON p.wallet_id = w.id
         WHERE w.balance <> coalesce(p.b, 0) OR w.reserved_balance <> coalesce(p.r, 0)""",
    "journal entry does not balance": """
        SELECT entry_id, currency_id, sum(amount) AS total FROM postings
         GROUP BY entry_id, currency_id HAVING sum(amount) <> 0""",
    "wallet is negative": """
        SELECT id, kind, balance, reserved_balance FROM wallets
         WHERE reserved_balance < 0 OR (balance < 0 AND kind NOT IN ('gateway', 'operator'))""",
    "currency total is not zero": """
        SELECT currency_id, sum(balance + reserved_balance) AS total FROM wallets
         GROUP BY currency_id HAVING sum(balance + reserved_balance) <> 0""",
    "posting names a missing wallet or the wrong currency": """
        SELECT p.entry_id, p.wallet_id, p.currency_id FROM postings p
         WHERE NOT EXISTS (SELECT 1 FROM wallets w WHERE w.id = p.wallet_id AND w.currency_id = p.currency_id)
            OR NOT EXISTS (SELECT 1 FROM journal_entries e WHERE e.id = p.entry_id)""",
    "transaction names a missing wallet or entry": """
        SELECT t.id, t.type FROM transactions t
         WHERE (t.from_wallet_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM wallets w WHERE w.id = t.from_wallet_id))
            OR (t.to_wallet_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM wallets w WHERE w.id = t.to_wallet_id))
            OR (t.entry_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM journal_entries e WHERE e.id = t.entry_id))""",
    "journal entry has no postings": """
        SELECT e.id FROM journal_entries e WHERE NOT EXISTS (SELECT 1 FROM postings p WHERE p.entry_id = e.id)""",
    "settled transaction has no journal entry": """
        SELECT id, type, status FROM transactions
         WHERE entry_id IS NULL AND status IN ('paid', 'close')""",
}


_CITUS_CHECKS = {
    **_CHECKS,
    "wallet balance differs from its postings": """
        SELECT w.id, w.balance, w.reserved_balance,
               coalesce(p.b, 0) AS posted_balance, coalesce(p.r, 0) AS posted_reserved
          FROM wallets w LEFT JOIN (
               SELECT user_id, wallet_id, sum(amount) FILTER (WHERE bucket = 'B') AS b,
                      sum(amount) FILTER (WHERE bucket = 'R') AS r
                 FROM postings GROUP BY user_id, wallet_id) p ON p.user_id = w.user_id AND p.wallet_id = w.id
         WHERE w.balance <> coalesce(p.b, 0) OR w.reserved_balance <> coalesce(p.r, 0)""",
    "posting names a missing wallet or the wrong currency": """
        SELECT p.entry_id, p.wallet_id, p.currency_id FROM postings p
         WHERE NOT EXISTS (SELECT 1 FROM wallets w
                            WHERE w.user_id = p.user_id AND w.id = p.wallet_id AND w.currency_id = p.currency_id)
            OR p.entry_id NOT IN (SELECT id FROM journal_entries)""",
    "transaction names a missing wallet or entry": """
        SELECT t.id, t.type FROM transactions t
         WHERE t.from_wallet_id NOT IN (SELECT id FROM wallets) OR t.to_wallet_id NOT IN (SELECT id FROM wallets)
            OR t.entry_id NOT IN (SELECT id FROM journal_entries)""",
    # Stricter than the single-node check: an entry lives with the owner of one of its wallets.
    "journal entry has no postings": """
        SELECT e.id FROM journal_entries e
         WHERE NOT EXISTS (SELECT 1 FROM postings p WHERE p.user_id = e.user_id AND p.entry_id = e.id)""",
}


async def find_problems(conn: asyncpg.Connection) -> list[str]:
    """Every check on one snapshot of the database; an empty list means the ledger is clean."""
    problems = []
    distributed = await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')")
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        for title, sql in (_CITUS_CHECKS if distributed else _CHECKS).items():
            for row in await conn.fetch(sql):
                problems.append(f"{title}: " + ", ".join(f"{k}={v}" for k, v in row.items()))
    return problems


async def run_audit(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        return await find_problems(conn)
    finally:
        await conn.close()
