"""The ledger on Citus: PgLedger with the few steps Citus runs differently (the composition root
picks it when the database is a Citus coordinator).

- Reads name the owners, so Citus asks only their shards: wallets (citus/predictions.py), the
  records a batch settles (their customers'), the stored answers of Idempotency-Keys (the callers').
- The locked path reads balances without FOR UPDATE: Citus locks rows only in a query on one
  shard, and a batch spans several. The write decides instead: it applies deltas under the CHECK
  constraints and settles by compare-and-set (citus/write_batch.sql), and two reversals of one
  original collide on its unique index on the original's owner's shard. A balance read without
  the lock costs at most a retry, never a wrong balance.
- The batch document names the owner (the shard) of every row it writes.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping

import orjson

from walletd.domain.commands import Command, Reverse, Settle
from walletd.domain.effects import Effects
from walletd.domain.state import PendingState, WalletState
from walletd.domain.vocabulary import WalletKind
from walletd.persistence.batch_write import WRITE_BATCH, batch_fields
from walletd.persistence.citus.predictions import CitusPredictions
from walletd.persistence.ledger import PgLedger
from walletd.persistence.transactions import TX_COLUMNS, pending_state, reversal_states

_BALANCES = ("SELECT id, balance, reserved_balance FROM wallets "
             "WHERE user_id = ANY($2::uuid[]) AND id = ANY($1::uuid[]) ORDER BY id")
_PENDING = (f"SELECT {TX_COLUMNS}, external_wallet_id, stale_at IS NOT NULL AS stale, settled_by FROM transactions "
            "WHERE owner_id = ANY($2::uuid[]) AND id = ANY($1::uuid[]) ORDER BY id")
_STORED = """SELECT principal_id, key, request_hash, status_code, response FROM idempotency_keys
             WHERE principal_id = ANY($1::uuid[])
               AND (principal_id, key) IN (SELECT * FROM unnest($1::uuid[], $2::text[]))"""


class CitusLedger(PgLedger):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.predictions = CitusPredictions(self.pool)

    async def owner(self, claimed_by, wallet_id, *read_along) -> tuple[uuid.UUID, str] | None:
        """Claimed by the caller, a wallet is read from the caller's shard: one that is not found
        there is not the caller's (every wallet lives on its owner's shard), and looks missing."""
        if wallet_id not in self.predictions.owners:
            found = await self.predictions.states({wallet_id, *read_along}, {wallet_id: {claimed_by}})
            if wallet_id not in found:
                return None
        return await super().owner(claimed_by, wallet_id, *read_along)

    @staticmethod
    async def _locked_balances(conn, predicted: dict) -> list:
        return await conn.fetch(_BALANCES, sorted(predicted), list({w.user_id for w in predicted.values()}))

    @staticmethod
    async def _pending(conn, commands: list[Command], wallets: dict, *, lock: bool) -> dict:
        """Settled records from their customers' shards; originals by id (every shard), unlocked."""
        settles = [c for c in commands if isinstance(c, Settle)]
        pending: dict = {}
        if settles:
            customers = list({wallets[c.user_wallet_id].user_id for c in settles if c.user_wallet_id in wallets})
            rows = await conn.fetch(_PENDING, sorted({c.transaction_id for c in settles}), customers)
            pending = {r["id"]: pending_state(r) for r in rows}
        ids = sorted({c.transaction_id for c in commands if isinstance(c, Reverse)})
        states = await reversal_states(conn, ids, lock=False) if ids else {}
        return pending | {(Reverse, i): state for i, state in states.items()}

    @staticmethod
    async def _stored_responses(conn, keys) -> dict:
        rows = await conn.fetch(_STORED, [k.principal_id for k in keys], [k.key for k in keys])
        return {(r[0], r[1]): (r[2], r[3], json.loads(r[4])) for r in rows}

    @staticmethod
    async def _write(conn, effects: Effects, idempotency_rows: list, wallets: dict, pending: dict) -> None:
        await conn.fetchval(WRITE_BATCH, citus_batch_document(effects, idempotency_rows, wallets, pending))


def citus_batch_document(fx: Effects, idempotency_rows: list, wallets: Mapping[uuid.UUID, WalletState],
                         pending: Mapping) -> str:
    """The distributed batch write's document: the single-node one with every row's owner named."""
    document = batch_fields(fx, idempotency_rows)
    name_owners(document, fx, wallets, pending)
    return orjson.dumps(document, default=str).decode()


def name_owners(document: dict, fx: Effects, wallets: Mapping[uuid.UUID, WalletState], pending: Mapping) -> None:
    """Adds the owner (user_id) of every row the document writes, from what the batch was planned
    on. An entry lives with the first user-kind wallet it posts to (a transfer's sender, a
    settlement's customer, a bonus's new user), else with its first wallet's owner."""
    entries: dict[uuid.UUID, uuid.UUID] = {}
    decided: set[uuid.UUID] = set()  # entries whose user-kind wallet was seen
    for entry_id, wallet_id, _, _, _ in fx.postings:
        if entry_id in decided:
            continue
        wallet = wallets[wallet_id]
        if wallet.kind == WalletKind.USER:
            entries[entry_id] = wallet.user_id
            decided.add(entry_id)
        else:
            entries.setdefault(entry_id, wallet.user_id)
    for entry in document["entries"]:
        entry["user_id"] = entries.get(entry["id"])
    for posting in document["postings"]:
        posting["user_id"] = wallets[posting["wallet_id"]].user_id
    records = {i: state for i, state in pending.items() if isinstance(state, PendingState)}
    for settled in document["settled"]:
        settled["user_id"] = records[settled["id"]].user_id
    payees = {state.external_wallet_id: state.user_id for state in records.values()}
    for paid in document["paid_out"]:
        paid["user_id"] = payees[paid["id"]]
