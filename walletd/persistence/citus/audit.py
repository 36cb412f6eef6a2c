"""`walletd audit`'s checks on Citus: the single-node checks (persistence/audit.py), each run where
Citus can run it, and the checks of what only a cluster stores (a record's copies).

- Checks of one user's rows (a wallet against its postings, an entry against the postings on its
  owner's shard) join on the owner, the distribution column: every shard checks itself, in parallel.
- Checks that join rows of different users (a posting and its entry or record, a record and its
  parent, its wallets and its entry's postings) read the tables they join into the coordinator
  first (CTEs Citus materializes as intermediate results), then run unchanged there. Offline and
  exact, but each such check moves those tables' rows to the coordinator once.
- A record stored once per side (a transfer or a reversal between two users) is checked as one
  record, its first copy (owner_id = user_id); the others must be the same record, and every
  record that needs a copy on its other user's shard has one.
"""

from __future__ import annotations

import re

from walletd.domain.vocabulary import Bucket

# The tables a check may join off the distribution column, as the coordinator reads them: a
# record once (its first copy).
_SHADOWS = {
    "transactions": "SELECT * FROM transactions WHERE owner_id = user_id",
    "postings": "SELECT * FROM postings",
    "journal_entries": "SELECT * FROM journal_entries",
    "wallets": "SELECT * FROM wallets",
}

# The same checks on the owner (co-located joins: no rows move between nodes).
_CO_LOCATED = {
    "wallet balance differs from its postings": f"""
        SELECT w.id, w.balance, w.reserved_balance,
               coalesce(p.b, 0) AS posted_balance, coalesce(p.r, 0) AS posted_reserved
          FROM wallets w LEFT JOIN (
               SELECT user_id, wallet_id, sum(amount) FILTER (WHERE bucket = '{Bucket.BALANCE}') AS b,
                      sum(amount) FILTER (WHERE bucket = '{Bucket.RESERVED}') AS r
                 FROM postings GROUP BY user_id, wallet_id) p ON p.user_id = w.user_id AND p.wallet_id = w.id
         WHERE w.balance <> coalesce(p.b, 0) OR w.reserved_balance <> coalesce(p.r, 0)""",
    # Stricter than the single-node check: an entry lives with the owner of one of its wallets.
    "journal entry has no postings": """
        SELECT e.id FROM journal_entries e
         WHERE NOT EXISTS (SELECT 1 FROM postings p WHERE p.user_id = e.user_id AND p.entry_id = e.id)""",
}
# Run as they are: one table each, or aggregates Citus combines from every shard.
_AS_IS = ("journal entry does not balance", "wallet is negative", "currency total is not zero",
          "settled transaction has no journal entry")

_COPY = """CASE WHEN r.type = 'transfer' THEN r.to_user_id WHEN r.type = 'reversal' THEN r.from_user_id END"""
_CLUSTER_ONLY = {
    "transaction copy differs from its record (or has none)": """
        WITH stored AS MATERIALIZED (
             SELECT owner_id, id, user_id, to_jsonb(t) - 'owner_id' - 'seq' AS fields FROM transactions t)
        SELECT c.id, c.owner_id FROM stored c LEFT JOIN stored r ON r.id = c.id AND r.owner_id = r.user_id
         WHERE c.owner_id <> c.user_id AND r.fields IS DISTINCT FROM c.fields""",
    "transaction between two users lacks its copy on the other user's shard": f"""
        WITH stored AS MATERIALIZED (SELECT owner_id, id, user_id, type, from_user_id, to_user_id FROM transactions)
        SELECT r.id, r.type, {_COPY} AS other_user FROM stored r
         WHERE r.owner_id = r.user_id AND {_COPY} IS NOT NULL AND {_COPY} <> r.user_id
           AND NOT EXISTS (SELECT 1 FROM stored c WHERE c.id = r.id AND c.owner_id = {_COPY})""",
    "transaction record is stored on no user's shard of its own": """
        SELECT owner_id, id, type FROM transactions
         WHERE owner_id <> user_id AND owner_id IS DISTINCT FROM from_user_id
           AND owner_id IS DISTINCT FROM to_user_id""",
}


def on_coordinator(sql: str) -> str:
    """The check as a query over the tables it names, read into the coordinator first."""
    used = [table for table in _SHADOWS if re.search(rf"\b{table}\b", sql)]
    shadows = ", ".join(f"{table} AS MATERIALIZED ({_SHADOWS[table]})" for table in used)
    body = sql.strip()
    if body[:4].upper() == "WITH":
        return f"WITH {shadows}, {body[4:]}"
    return f"WITH {shadows} {body}"


def citus_checks(checks: dict[str, str]) -> dict[str, str]:
    """The single-node checks (title -> query), each in the form Citus runs, then the cluster's own."""
    placed = {}
    for title, sql in checks.items():
        if title in _CO_LOCATED:
            placed[title] = _CO_LOCATED[title]
        elif title in _AS_IS:
            placed[title] = sql
        else:
            placed[title] = on_coordinator(sql)
    return placed | _CLUSTER_ONLY
