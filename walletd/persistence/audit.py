"""`walletd audit`: recompute every balance from the journal, check that every transaction record
says what its journal entry did, and report each difference."""

from __future__ import annotations

import asyncpg

from walletd.domain.vocabulary import MAY_GO_NEGATIVE, Bucket
from walletd.persistence.citus.audit import citus_checks
from walletd.persistence.citus.distribute import citus_present

# The domain's rule, as an SQL list: which wallet kinds may hold a negative balance.
_MAY_GO_NEGATIVE = ", ".join(f"'{kind}'" for kind in sorted(MAY_GO_NEGATIVE))

# What each kind of transaction record says its journal entry did, as a condition on the record
# `t`: its entry's kind, its parent's entry, the commissions charged on it (`fee`), and what its
# entry posted on its own wallets (`src_*` on from_wallet_id, `dst_*` on to_wallet_id; `_b` the
# balance, `_r` the hold; 0 where the entry does not touch the wallet): the postings that name the
# record where some do (each leg of a multi-leg transfer shares its entry and its source with the
# others), else all of the entry's postings on that wallet. A (type, status) not
# listed here is itself a finding: the audit has no rule for it.
_RECORD_RULES = {
    # a transfer between users; or, with a parent, the part of a paid deposit that reached the
    # user (the record says service -> user for the whole amount: commission + credit)
    ("transfer", "close"): """CASE WHEN t.parent_id IS NULL
        THEN t.kind = 'transfer' AND t.src_b = -t.amount AND t.dst_b = t.converted_amount
        ELSE t.kind = 'deposit' AND t.entry_id = t.parent_entry_id AND t.src_b + t.dst_b = t.amount END""",
    ("commission", "close"): ("t.kind IN ('deposit', 'withdraw', 'withdraw_after_expiry') "
                              "AND t.entry_id = t.parent_entry_id "
                              "AND t.dst_b = t.amount"),
    ("bonus", "close"): "t.kind = 'bonus' AND t.src_b = -t.amount AND t.dst_b = t.amount",
    # a deposit moves money only once paid: gateway -A, user +(A - commission)
    ("deposit", "pending"): "t.entry_id IS NULL",
    ("deposit", "paid"): "t.kind = 'deposit' AND t.src_b = -t.amount AND t.dst_b = t.amount - t.fee",
    ("deposit", "rejected"): "t.entry_id IS NULL",
    ("deposit", "expired"): "t.entry_id IS NULL",
    # a withdrawal holds its amount when requested; its settlement's entry replaces the hold's
    ("withdraw", "pending"): "t.kind = 'withdraw_hold' AND t.src_b = -t.amount AND t.src_r = t.amount",
    # paid from the balance instead of the hold: a withdrawal the previous release had expired
    # (its hold already returned), paid out by the operator afterwards
    ("withdraw", "paid"): """(t.kind = 'withdraw' AND t.src_r = -t.amount OR
        t.kind = 'withdraw_after_expiry' AND t.src_b = -t.amount) AND t.dst_b = t.amount - t.fee""",
    # rejected after that expiry keeps the expiry's entry, which had returned the hold already
    ("withdraw", "rejected"): ("t.kind IN ('withdraw_release', 'withdraw_expired') "
                               "AND t.src_r = -t.amount AND t.src_b = t.amount"),
    ("withdraw", "expired"): "t.kind = 'withdraw_expired' AND t.src_r = -t.amount AND t.src_b = t.amount",
    # the operator's reversal: the wallet the original credited gives back what it kept (for a
    # deposit, all but the commission, which the service wallet gives back), the other gets it all
    ("reversal", "close"): ("t.kind = 'reversal' AND t.parent_entry_id IS NOT NULL "
                            "AND t.src_b = -(t.amount - t.parent_fee) AND t.dst_b = t.converted_amount"),
}


def _record_check() -> str:
    rules = "\n".join(f"            WHEN t.type = '{kind}' AND t.status = '{status}' THEN {rule}"
                      for (kind, status), rule in _RECORD_RULES.items())
    return f"""
        WITH moved AS (
             SELECT entry_id, wallet_id, coalesce(sum(amount) FILTER (WHERE bucket = '{Bucket.BALANCE}'), 0) AS b,
                    coalesce(sum(amount) FILTER (WHERE bucket = '{Bucket.RESERVED}'), 0) AS r
               FROM postings GROUP BY entry_id, wallet_id),
        named AS (
             SELECT entry_id, wallet_id, transaction_id,
                    coalesce(sum(amount) FILTER (WHERE bucket = '{Bucket.BALANCE}'), 0) AS b,
                    coalesce(sum(amount) FILTER (WHERE bucket = '{Bucket.RESERVED}'), 0) AS r
               FROM postings GROUP BY entry_id, wallet_id, transaction_id),
        fees AS (SELECT parent_id, sum(amount) AS fee FROM transactions
                  WHERE type = 'commission' AND parent_id IS NOT NULL GROUP BY parent_id),
        records AS (
             SELECT t.id, t.type, t.status, t.amount, t.converted_amount, t.parent_id, t.entry_id, e.kind,
                    p.entry_id AS parent_entry_id, coalesce(f.fee, 0) AS fee, coalesce(pf.fee, 0) AS parent_fee,
                    coalesce(own_src.b, src.b, 0) AS src_b, coalesce(own_src.r, src.r, 0) AS src_r,
                    coalesce(own_dst.b, dst.b, 0) AS dst_b
               FROM transactions t
               LEFT JOIN journal_entries e ON e.id = t.entry_id
               LEFT JOIN transactions p ON p.id = t.parent_id
               LEFT JOIN moved src ON src.entry_id = t.entry_id AND src.wallet_id = t.from_wallet_id
               LEFT JOIN moved dst ON dst.entry_id = t.entry_id AND dst.wallet_id = t.to_wallet_id
               LEFT JOIN named own_src ON own_src.entry_id = t.entry_id AND own_src.wallet_id = t.from_wallet_id
                                      AND own_src.transaction_id = t.id
               LEFT JOIN named own_dst ON own_dst.entry_id = t.entry_id AND own_dst.wallet_id = t.to_wallet_id
                                      AND own_dst.transaction_id = t.id
               LEFT JOIN fees f ON f.parent_id = t.id
               LEFT JOIN fees pf ON pf.parent_id = t.parent_id)
        SELECT t.id, t.type, t.status, t.amount, t.converted_amount, t.kind AS entry_kind FROM records t
         WHERE NOT coalesce(CASE
{rules}
            ELSE false END, false)"""


# Missing-row checks are outer joins: an OR of NOT EXISTS cannot become an anti-join, and where
# the rows are unindexed (Citus checks them on the coordinator) it rescans per row: quadratic.
_CHECKS = {
    "wallet balance differs from its postings": f"""
        SELECT w.id, w.balance, w.reserved_balance,
               coalesce(p.b, 0) AS posted_balance, coalesce(p.r, 0) AS posted_reserved
          FROM wallets w LEFT JOIN (
               SELECT wallet_id, sum(amount) FILTER (WHERE bucket = '{Bucket.BALANCE}') AS b,
                      sum(amount) FILTER (WHERE bucket = '{Bucket.RESERVED}') AS r
                 FROM postings GROUP BY wallet_id) p ON p.wallet_id = w.id
         WHERE w.balance <> coalesce(p.b, 0) OR w.reserved_balance <> coalesce(p.r, 0)""",
    "journal entry does not balance": """
        SELECT entry_id, currency_id, sum(amount) AS total FROM postings
         GROUP BY entry_id, currency_id HAVING sum(amount) <> 0""",
    "wallet is negative": f"""
        SELECT id, kind, balance, reserved_balance FROM wallets
         WHERE reserved_balance < 0 OR (balance < 0 AND kind NOT IN ({_MAY_GO_NEGATIVE}))""",
    "currency total is not zero": """
        SELECT currency_id, sum(balance + reserved_balance) AS total FROM wallets
         GROUP BY currency_id HAVING sum(balance + reserved_balance) <> 0""",
    "posting names a missing wallet or the wrong currency": """
        SELECT p.entry_id, p.wallet_id, p.currency_id FROM postings p
          LEFT JOIN wallets w ON w.id = p.wallet_id AND w.currency_id = p.currency_id
          LEFT JOIN journal_entries e ON e.id = p.entry_id
         WHERE w.id IS NULL OR e.id IS NULL""",
    "transaction names a missing wallet or entry": """
        SELECT t.id, t.type FROM transactions t
          LEFT JOIN wallets f ON f.id = t.from_wallet_id
          LEFT JOIN wallets o ON o.id = t.to_wallet_id
          LEFT JOIN journal_entries e ON e.id = t.entry_id
         WHERE (t.from_wallet_id IS NOT NULL AND f.id IS NULL) OR (t.to_wallet_id IS NOT NULL AND o.id IS NULL)
            OR (t.entry_id IS NOT NULL AND e.id IS NULL)""",
    "posting's time differs from its journal entry's": """
        SELECT p.entry_id, p.wallet_id, p.created_at AS posting_time, e.created_at AS entry_time
          FROM postings p JOIN journal_entries e ON e.id = p.entry_id WHERE p.created_at <> e.created_at""",
    "posting names a missing transaction": """
        SELECT p.entry_id, p.wallet_id, p.transaction_id FROM postings p
         WHERE p.transaction_id <> '00000000-0000-0000-0000-000000000000'
           AND NOT EXISTS (SELECT 1 FROM transactions t WHERE t.id = p.transaction_id)""",
    "journal entry has no postings": """
        SELECT e.id FROM journal_entries e WHERE NOT EXISTS (SELECT 1 FROM postings p WHERE p.entry_id = e.id)""",
    "settled transaction has no journal entry": """
        SELECT id, type, status FROM transactions
         WHERE entry_id IS NULL AND status IN ('paid', 'close')""",
    "wallet's reserved balance differs from the holds of its pending withdrawals": """
        SELECT w.id, w.reserved_balance, coalesce(h.held, 0) AS pending_withdrawals
          FROM wallets w LEFT JOIN (
               SELECT from_wallet_id, sum(amount) AS held FROM transactions
                WHERE type = 'withdraw' AND status = 'pending' GROUP BY from_wallet_id) h ON h.from_wallet_id = w.id
         WHERE w.reserved_balance <> coalesce(h.held, 0)""",
    "transaction names a wallet in another currency": """
        SELECT t.id, t.type, t.from_currency_id, f.currency_id AS from_wallet_currency,
               t.to_currency_id, d.currency_id AS to_wallet_currency
          FROM transactions t
          LEFT JOIN wallets f ON f.id = t.from_wallet_id
          LEFT JOIN wallets d ON d.id = t.to_wallet_id
         WHERE t.from_currency_id IS DISTINCT FROM f.currency_id OR t.to_currency_id IS DISTINCT FROM d.currency_id""",
    "transaction record disagrees with its journal entry (amount, wallets or status)": _record_check(),
    # a transfer's own postings only: one leg of a multi-leg transfer shares its entry with the others
    "reversal does not undo its original's entry exactly": """
        SELECT r.id, r.parent_id FROM transactions r JOIN transactions o ON o.id = r.parent_id
         WHERE r.type = 'reversal' AND EXISTS (
               SELECT wallet_id, bucket, sum(amount) FROM (
                   SELECT wallet_id, bucket, amount FROM postings WHERE entry_id = r.entry_id
                   UNION ALL SELECT wallet_id, bucket, amount FROM postings WHERE entry_id = o.entry_id
                       AND (o.type <> 'transfer' OR transaction_id = o.id)) both_entries
                GROUP BY wallet_id, bucket HAVING sum(amount) <> 0)""",
}


async def find_problems(conn: asyncpg.Connection) -> list[str]:
    """Every check on one snapshot of the database; an empty list means the ledger is clean. On a
    Citus coordinator, in the forms Citus runs (persistence/citus/audit.py)."""
    return [text for _, text in await find_keyed_problems(conn)]


async def find_keyed_problems(conn: asyncpg.Connection) -> list[tuple[str, str]]:
    """(key, text) per problem: the key is the check's title and the row's first column (the
    record or wallet it names), so the same fault keeps its key from one pass to the next."""
    problems = []
    distributed = await citus_present(conn)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        for title, sql in (citus_checks(_CHECKS) if distributed else _CHECKS).items():
            for row in await conn.fetch(sql):
                fields = [f"{k}={v}" for k, v in row.items()]
                problems.append((f"{title}: {fields[0]}", f"{title}: " + ", ".join(fields)))
    return problems


async def run_audit(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        return await find_problems(conn)
    finally:
        await conn.close()
