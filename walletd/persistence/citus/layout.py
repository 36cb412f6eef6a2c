"""Where every table lives on a Citus cluster: one declarative list that the distribution step
(citus/distribute.py) applies after the migrations. A table a later migration adds gets one line
here; a table missing from the list is reported (`citus.table_not_in_layout`) and stays on the
coordinator.

- `Reference`: a copy on every node. Small, read by every command, written rarely: currencies
  and rates, and the users (unique usernames and e-mails need the whole table in one place, and
  a token check or a login then reads the local copy).
- `ByUser`: hash-distributed by the id of the user the row belongs to, all in one co-location
  group (the group of `wallets`), so one user's wallets, journal entries, postings, records and
  idempotency keys sit in the same shard and a command about one user is a single-shard
  transaction. `added` is a column only the distributed schema has (the single-node schema
  finds the owner through joins a shard cannot make), `backfill` fills it on a database that
  is distributed in place, before its rows are copied to the shards.
- `OnCoordinator`: stays a plain PostgreSQL table of the coordinator, written in the same
  (distributed) transactions as the money it reports and read by plain PostgreSQL: the outbox of
  events and webhook deliveries (its feed orders events by the coordinator's transaction ids).
  Its foreign keys to tables that become reference tables are dropped first: Citus would
  otherwise take the table into its metadata and plan its statements itself, and its planner
  refuses some of them (now() inside CASE in an UPDATE, a subquery on the table an INSERT
  writes). A webhook endpoint's service user is the authenticated caller who created it.
- `Local`: a plain table of the coordinator with no such foreign key.
"""

from __future__ import annotations

from dataclasses import dataclass

from walletd.domain.policy import OPERATOR_USER_ID


@dataclass(frozen=True)
class Reference:
    table: str


@dataclass(frozen=True)
class ByUser:
    table: str
    column: str
    added: str | None = None
    backfill: tuple[str, ...] = ()
    # Replaced on Citus by an equivalent in the distributed write (see write_batch.sql).
    drop_triggers: tuple[str, ...] = ()
    indexes: tuple[str, ...] = ()
    # Shard moves (adding a worker) copy rows by logical replication, which needs a replica
    # identity; an append-only table without a primary key loses nothing with FULL.
    replica_identity_full: bool = False
    # Rows written once the primary key includes the distribution column.
    after_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class OnCoordinator:
    table: str


@dataclass(frozen=True)
class Local:
    table: str


Placement = Reference | ByUser | OnCoordinator | Local

# An entry lives with the first user-kind wallet it posts to (the customer of a settlement, the
# sender of a transfer, the new user of a bonus), else with the first wallet's owner.
_ENTRY_OWNERS = f"""
UPDATE journal_entries e SET user_id = o.user_id
  FROM (SELECT DISTINCT ON (p.entry_id) p.entry_id, w.user_id
          FROM postings p JOIN wallets w ON w.id = p.wallet_id
         ORDER BY p.entry_id, w.kind <> 'user', p.ctid) o
 WHERE o.entry_id = e.id;
UPDATE journal_entries SET user_id = '{OPERATOR_USER_ID}' WHERE user_id IS NULL
"""

# A transfer between two users is recorded once per side (same id and seq), so each side's
# history is read from its own shard; so is the reversal of one (its debited side is the original's
# receiver). Every column is copied, whatever later migrations add.
RECEIVER_COPIES = """
INSERT INTO transactions OVERRIDING SYSTEM VALUE
SELECT (jsonb_populate_record(t, jsonb_build_object('owner_id', o.owner_id))).*
  FROM transactions t
 CROSS JOIN LATERAL (SELECT CASE WHEN t.type = 'transfer' THEN t.to_user_id ELSE t.from_user_id END) o(owner_id)
 WHERE t.type IN ('transfer', 'reversal') AND o.owner_id IS NOT NULL AND o.owner_id <> t.user_id
ON CONFLICT DO NOTHING
"""

LAYOUT: tuple[Placement, ...] = (
    Reference("currencies"),
    Reference("exchange_rates"),
    Reference("users"),
    ByUser("wallets", "user_id"),
    ByUser("external_wallets", "user_id"),
    ByUser("commission_rates", "service_user_id"),
    ByUser("idempotency_keys", "principal_id"),
    ByUser("journal_entries", "user_id", added="user_id uuid", backfill=(_ENTRY_OWNERS,)),
    ByUser("postings", "user_id", added="user_id uuid",
           backfill=("UPDATE postings p SET user_id = w.user_id FROM wallets w WHERE w.id = p.wallet_id",),
           drop_triggers=("postings_apply",), replica_identity_full=True),
    ByUser("transactions", "owner_id", added="owner_id uuid",
           backfill=("UPDATE transactions SET owner_id = user_id",), after_keys=(RECEIVER_COPIES,),
           indexes=("CREATE INDEX IF NOT EXISTS transactions_owner_seq ON transactions (owner_id, seq DESC)",)),
    # The hash chain and the self-audit's bookkeeping: written by one background job at a time,
    # read beside the journal (a seal is joined to its entry, a verified sum to its wallet), which
    # a reference table allows on any column. Sealing is a write to every node.
    Reference("journal_seals"),
    Reference("audit_cursor"),
    Reference("audit_balances"),
    Reference("audit_problems"),
    OnCoordinator("webhook_endpoints"),
    OnCoordinator("events"),
    OnCoordinator("webhook_deliveries"),
    Local("login_failures"),
    Local("schema_migrations"),
)
