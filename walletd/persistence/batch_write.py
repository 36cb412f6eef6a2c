"""Everything one ledger batch decided (its Effects), written by one call of the schema's
walletd_write_batch(doc jsonb) (migration 0005, where the document's shape is written down).

One JSON parameter: a single document is several times cheaper to encode than dozens of typed
arrays, and the statement-level postings trigger sees the whole batch at once. The function
counts the settlements itself: a settlement whose compare-and-set finds the transaction no
longer pending raises serialization_failure, and nothing of the batch is written.

On Citus (persistence/citus/) the document also names each row's owner, the user whose shard it
goes to; the single-node function ignores those keys, and walletd leaves them out there.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from walletd.domain.ledger import Effects, PendingState, WalletState
from walletd.domain.vocabulary import WalletKind


@dataclass(frozen=True)
class Owners:
    """What a batch was planned on, which tells the owner of every row it writes."""

    wallets: Mapping[uuid.UUID, WalletState]
    pending: Mapping[uuid.UUID, PendingState]

    def entry_owners(self, fx: Effects) -> dict[uuid.UUID, uuid.UUID]:
        """An entry lives with the first user-kind wallet it posts to (a transfer's sender, a
        settlement's customer, a bonus's new user), else with its first wallet's owner."""
        owners: dict[uuid.UUID, uuid.UUID] = {}
        decided: set[uuid.UUID] = set()  # entries whose user-kind wallet was seen
        for entry_id, wallet_id, _, _, _ in fx.postings:
            wallet = self.wallets[wallet_id]
            if entry_id in decided:
                continue
            if wallet.kind == WalletKind.USER:
                owners[entry_id] = wallet.user_id
                decided.add(entry_id)
            else:
                owners.setdefault(entry_id, wallet.user_id)
        return owners

    def document_owners(self, fx: Effects, document: dict) -> None:
        entries = self.entry_owners(fx)
        for entry in document["entries"]:
            entry["user_id"] = entries.get(entry["id"])
        for posting in document["postings"]:
            posting["user_id"] = self.wallets[posting["wallet_id"]].user_id
        for settled in document["settled"]:
            settled["user_id"] = self.pending[settled["id"]].user_id
        payees = {p.external_wallet_id: p.user_id for p in self.pending.values()}
        for paid in document["paid_out"]:
            paid["user_id"] = payees[paid["id"]]

WRITE_BATCH = "SELECT walletd_write_batch($1::jsonb)"


def writes_anything(fx: Effects, idempotency_rows: list) -> bool:
    return bool(fx.entries or fx.new_transactions or fx.status_updates or idempotency_rows)


def batch_document(fx: Effects, idempotency_rows: list, owners: Owners | None = None) -> str:
    document = {
        "now": fx.now,
        "entries": [{"id": e, "kind": k, "request_id": r} for e, k, r in fx.entries],
        "postings": [{"entry_id": e, "wallet_id": w, "currency_id": c, "bucket": b, "amount": a}
                     for e, w, c, b, a in fx.postings],
        "transactions": fx.new_transactions,
        "settled": [{"id": i, "status": st, "entry_id": e} for i, st, e in fx.status_updates],
        "paid_out": [{"id": i, "amount": a} for i, a in fx.external_credits],
        "idempotency": [{"principal_id": p, "key": k, "request_hash": h, "status_code": c, "response": r}
                        for p, k, h, c, r in idempotency_rows],
    }
    if fx.outbox:  # only deposits and withdrawals: the function skips the outbox without it
        document["events"] = [
            {"id": event["id"], "service_user_id": service_user_id, "type": event["type"],
             "transaction_id": event["data"]["id"], "body": orjson.dumps(event).decode()}
            for service_user_id, event in fx.outbox]
    if owners is not None:
        owners.document_owners(fx, document)
    return orjson.dumps(document, default=str).decode()


async def write_batch(conn, fx: Effects, idempotency_rows: list, owners: Owners | None = None) -> None:
    """One round trip. Raises what the server raised (see the module docstring)."""
    await conn.fetchval(WRITE_BATCH, batch_document(fx, idempotency_rows, owners))
