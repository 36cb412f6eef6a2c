"""Effects: everything one batch writes (journal entries and their postings, transaction records,
status changes, payouts, audit lines, outbox events), appended by planning and flushed by
persistence in a few set-based statements."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from walletd.domain.ids import new_id
from walletd.domain.state import WalletState


@dataclass
class Effects:
    """Everything one batch writes; persistence flushes it in a few set-based statements."""

    now: datetime
    entries: list[tuple[uuid.UUID, str, str | None]] = field(default_factory=list)
    postings: list[tuple[uuid.UUID, uuid.UUID, int, str, Decimal]] = field(default_factory=list)
    # Aligned with postings: the transaction record each posting realizes (what a statement names).
    posting_records: list[uuid.UUID | None] = field(default_factory=list)
    new_transactions: list[dict] = field(default_factory=list)
    # (transaction id, new status, entry id, the status it must still have, who decided)
    status_updates: list[tuple[uuid.UUID, str, uuid.UUID | None, str, str]] = field(default_factory=list)
    external_credits: list[tuple[uuid.UUID, Decimal]] = field(default_factory=list)
    # Audit lines of what the batch did, logged once it committed: (event name, fields).
    audit_lines: list[tuple[str, dict]] = field(default_factory=list)
    # Events for the payment service, written in the same statement as the change:
    # (service_user_id, event) with event = {"id", "type", "created_at", "data": tx_json record}.
    outbox: list[tuple[uuid.UUID, dict]] = field(default_factory=list)

    def checkpoint(self) -> tuple[int, ...]:
        """How much each list holds now: what rollback() goes back to."""
        return (len(self.entries), len(self.postings), len(self.new_transactions), len(self.status_updates),
                len(self.external_credits), len(self.audit_lines), len(self.outbox))

    def rollback(self, checkpoint: tuple[int, ...], wallets: dict[uuid.UUID, WalletState]) -> None:
        """Undo a command that failed half-way through planning (a bug, or a multi-leg transfer
        with a refused leg; other refusals raise before they change anything): drop what it
        appended, take its postings back off the snapshot, so the rest of the batch is planned as
        if it had never come."""
        for _, wallet_id, _, bucket, amount in self.postings[checkpoint[1]:]:
            wallet = wallets.get(wallet_id)
            if wallet is not None:
                wallet.post(bucket, -amount)
        del self.posting_records[checkpoint[1]:]
        parts: tuple[list[Any], ...] = (self.entries, self.postings, self.new_transactions, self.status_updates,
                                        self.external_credits, self.audit_lines, self.outbox)
        for items, length in zip(parts, checkpoint, strict=True):
            del items[length:]

    def entry(self, kind: str, request_id: str | None, legs: Sequence[tuple[WalletState, str, Decimal]],
              record_id: uuid.UUID | None = None) -> uuid.UUID:
        entry_id = new_id()
        self.entries.append((entry_id, kind, request_id))
        self.post(entry_id, legs, record_id)
        return entry_id

    def post(self, entry_id: uuid.UUID, legs: Sequence[tuple[WalletState, str, Decimal]],
             record_id: uuid.UUID | None) -> None:
        """Postings of an entry, each realizing the transaction record record_id."""
        for wallet, bucket, amount in legs:
            if amount:
                self.postings.append((entry_id, wallet.id, wallet.currency_id, bucket, amount))
                self.posting_records.append(record_id)
                wallet.post(bucket, amount)

    def record(self, *, type: str, status: str, source: WalletState | None, target: WalletState | None,
               amount: Decimal, converted: Decimal, rate: Decimal, user_id: uuid.UUID,
               entry_id: uuid.UUID | None, service_user_id: uuid.UUID | None = None,
               external_wallet_id: uuid.UUID | None = None, parent_id: uuid.UUID | None = None,
               commission_rate: Decimal | None = None, commission: Decimal | None = None,
               id: uuid.UUID | None = None) -> dict:
        row = {
            "id": id or new_id(), "type": type, "status": status,
            "from_wallet_id": source.id if source else None,
            "from_currency_id": source.currency_id if source else None,
            "from_user_id": source.user_id if source else None,
            "amount": amount,
            "to_wallet_id": target.id if target else None,
            "to_currency_id": target.currency_id if target else None,
            "to_user_id": target.user_id if target else None,
            "rate": rate, "converted_amount": converted, "user_id": user_id,
            "service_user_id": service_user_id, "external_wallet_id": external_wallet_id,
            "parent_id": parent_id, "entry_id": entry_id, "created_at": self.now,
            "commission_rate": commission_rate, "commission": commission,
        }
        self.new_transactions.append(row)
        return row

    def publish(self, type: str, service_user_id: uuid.UUID, record: dict) -> None:
        """An outbox event about a deposit or withdrawal (never a transfer: those name no service user)."""
        self.outbox.append((service_user_id, {
            "id": str(new_id()), "type": type, "created_at": self.now.isoformat(timespec="microseconds"),
            "data": record}))
