"""The money rules as pure code: commands, the postings of each movement (settlements, the
pending state machine, in domain/settlement.py).

Planning works on an in-memory snapshot of the wallets a batch touches (read under row locks by
persistence). A command either raises a DomainError and leaves the snapshot untouched, or updates
the snapshot and appends a balanced journal entry to the batch's Effects. No I/O here.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from walletd.domain import errors
from walletd.domain.ids import new_id
from walletd.domain.money import commission
from walletd.domain.rates import ONE, RateBook
from walletd.domain.records import tx_json
from walletd.domain.vocabulary import Bucket, EntryKind, TxStatus, TxType, WalletKind

__all__ = ["RateBook", "tx_json"]  # re-exported: planning prices transfers through it; records as shown


@dataclass(slots=True)
class WalletState:
    id: uuid.UUID
    user_id: uuid.UUID
    currency_id: int
    kind: str
    balance: Decimal
    reserved: Decimal

    @property
    def may_go_negative(self) -> bool:
        return self.kind in (WalletKind.GATEWAY, WalletKind.OPERATOR)

    def post(self, bucket: str, amount: Decimal) -> None:
        """A posting's effect on this wallet: the one arithmetic planning, undoing a half-planned
        command and persistence's predictions all share."""
        if bucket == Bucket.BALANCE:
            self.balance += amount
        else:
            self.reserved += amount


@dataclass
class PendingState:
    id: uuid.UUID
    type: str
    status: str
    amount: Decimal
    from_wallet_id: uuid.UUID | None
    to_wallet_id: uuid.UUID | None
    user_id: uuid.UUID
    service_user_id: uuid.UUID | None
    external_wallet_id: uuid.UUID | None
    record: dict  # the row as the API shows it, to answer repeats of a settlement
    commission: Decimal | None = None  # fixed when the customer asked (None: a record from before that rule)
    stale: bool = False  # pending past WALLETD_PENDING_TTL: the operator may end it too
    settled_by: str | None = None  # who decided a settled record: SERVICE, OPERATOR, or EXPIRY (previous release)


@dataclass(frozen=True)
class Idempotency:
    principal_id: uuid.UUID
    key: str
    request_hash: str


# ---- commands (imperative names) --------------------------------------------------------------


@dataclass(frozen=True)
class Transfer:
    user_id: uuid.UUID
    source_wallet_id: uuid.UUID
    target_wallet_id: uuid.UUID
    amount: Decimal
    request_id: str | None = None
    idempotency: Idempotency | None = None


# Who decided a settlement (transactions.settled_by).
SERVICE = "service"
OPERATOR = "operator"
EXPIRY = "expiry"  # the previous release's expiry, which returned holds; nothing decides this way now


@dataclass(frozen=True)
class RequestDeposit:
    """commission_rate: the payment service's rate at this moment, within the operator's ceiling;
    the pending record keeps it, and its settlement charges exactly the commission it fixes."""

    user_id: uuid.UUID
    wallet_id: uuid.UUID
    gateway_wallet_id: uuid.UUID
    service_user_id: uuid.UUID
    amount: Decimal
    request_id: str | None = None
    idempotency: Idempotency | None = None
    commission_rate: Decimal = Decimal(0)


@dataclass(frozen=True)
class RequestWithdraw:
    """commission_rate: as RequestDeposit's."""

    user_id: uuid.UUID
    wallet_id: uuid.UUID
    gateway_wallet_id: uuid.UUID
    service_user_id: uuid.UUID
    external_wallet_id: uuid.UUID
    amount: Decimal
    request_id: str | None = None
    idempotency: Idempotency | None = None
    commission_rate: Decimal = Decimal(0)


@dataclass(frozen=True)
class Settle:
    """Settle a pending deposit or withdrawal 'paid' or 'rejected'. settled_by: SERVICE (the
    payment service the record names) or OPERATOR (only once the record is stale, or to reconcile
    one the previous release expired). commission_rate is charged only to a record that has no
    commission fixed (written before fees were fixed at request time)."""

    service_user_id: uuid.UUID
    transaction_id: uuid.UUID
    type: str
    new_status: str
    user_wallet_id: uuid.UUID
    service_wallet_id: uuid.UUID
    gateway_wallet_id: uuid.UUID
    commission_rate: Decimal
    request_id: str | None = None
    idempotency: Idempotency | None = None
    settled_by: str = SERVICE


@dataclass(frozen=True)
class TransferLeg:
    source_wallet_id: uuid.UUID
    target_wallet_id: uuid.UUID
    amount: Decimal


@dataclass(frozen=True)
class MultiTransfer:
    """Several transfers from the caller's wallets, all or none, in one journal entry
    (planned by walletd.domain.multi_transfer)."""

    user_id: uuid.UUID
    legs: tuple[TransferLeg, ...]
    request_id: str | None = None
    idempotency: Idempotency | None = None


@dataclass(frozen=True)
class Reverse:
    """Undo a completed transfer or a paid deposit with one compensating entry (the operator's;
    planned by domain/reversal.py). The wallets are those the original's entry posted to."""

    transaction_id: uuid.UUID
    debited_wallet_id: uuid.UUID  # the wallet the original credited
    wallet_ids: frozenset[uuid.UUID]
    request_id: str | None = None
    idempotency: Idempotency | None = None


Command = Transfer | RequestDeposit | RequestWithdraw | Settle | MultiTransfer | Reverse


def routing_wallet(command: Command) -> uuid.UUID:
    """The wallet whose actor runs a command that debits or holds one wallet."""
    if isinstance(command, Transfer):
        return command.source_wallet_id
    if isinstance(command, Settle):
        return command.user_wallet_id
    if isinstance(command, MultiTransfer):
        return min(routing_wallets(command))
    if isinstance(command, Reverse):
        return command.debited_wallet_id
    return command.wallet_id


def routing_wallets(command: Command) -> tuple[uuid.UUID, ...]:
    """Every wallet the command debits or holds, in id order: a multi-leg transfer may debit
    several of the caller's wallets, and each one's actor takes part (actors/registry.py)."""
    if isinstance(command, MultiTransfer):
        return tuple(sorted({leg.source_wallet_id for leg in command.legs}))
    return (routing_wallet(command),)


def wallets_touched(command: Command) -> set[uuid.UUID]:
    """The wallets a command may change, except the exchange desk (added once currencies are known)."""
    if isinstance(command, Transfer):
        return {command.source_wallet_id, command.target_wallet_id}
    if isinstance(command, MultiTransfer):
        return {w for leg in command.legs for w in (leg.source_wallet_id, leg.target_wallet_id)}
    if isinstance(command, Settle):
        return {command.user_wallet_id, command.service_wallet_id, command.gateway_wallet_id}
    if isinstance(command, Reverse):
        return set(command.wallet_ids)
    return {command.wallet_id, command.gateway_wallet_id}


# ---- effects ----------------------------------------------------------------------------------


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
    events: list[tuple[str, dict]] = field(default_factory=list)
    # Events for the payment service, written in the same statement as the change:
    # (service_user_id, event) with event = {"id", "type", "created_at", "data": tx_json record}.
    outbox: list[tuple[uuid.UUID, dict]] = field(default_factory=list)

    def mark(self) -> tuple[int, ...]:
        return (len(self.entries), len(self.postings), len(self.new_transactions), len(self.status_updates),
                len(self.external_credits), len(self.events), len(self.outbox))

    def rollback(self, mark: tuple[int, ...], wallets: dict[uuid.UUID, WalletState]) -> None:
        """Undo a command that failed half-way through planning (a bug, or a multi-leg transfer
        with a refused leg; other refusals raise before they change anything): drop what it
        appended, take its postings back off the snapshot, so the rest of the batch is planned as
        if it had never come."""
        for _, wallet_id, _, bucket, amount in self.postings[mark[1]:]:
            wallet = wallets.get(wallet_id)
            if wallet is not None:
                wallet.post(bucket, -amount)
        del self.posting_records[mark[1]:]
        parts: tuple[list[Any], ...] = (self.entries, self.postings, self.new_transactions, self.status_updates,
                                        self.external_credits, self.events, self.outbox)
        for items, length in zip(parts, mark, strict=True):
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


# ---- planning ---------------------------------------------------------------------------------


def _available(wallet: WalletState, amount: Decimal) -> None:
    if not wallet.may_go_negative and wallet.balance < amount:
        raise errors.InsufficientFunds()


def plan_transfer(cmd: Transfer, wallets: dict[uuid.UUID, WalletState], desks: dict[int, WalletState],
                  rates: RateBook, effects: Effects) -> dict:
    record, moved = book_transfer(cmd.user_id, TransferLeg(cmd.source_wallet_id, cmd.target_wallet_id, cmd.amount),
                                  cmd.request_id, wallets, desks, rates, effects)
    effects.events.append(("money.transferred", {
        "entry_id": record["entry_id"], **moved, "principal": cmd.user_id, "request_id": cmd.request_id}))
    return tx_json(record)


def book_transfer(user_id: uuid.UUID, leg: TransferLeg, request_id: str | None, wallets: dict[uuid.UUID, WalletState],
                  desks: dict[int, WalletState], rates: RateBook, effects: Effects,
                  entry_id: uuid.UUID | None = None) -> tuple[dict, dict]:
    """One transfer: its checks, postings and record; returns the record and what moved (for the
    audit line). Into a new journal entry, or into entry_id (the one entry of a multi-leg transfer)."""
    source = wallets.get(leg.source_wallet_id)
    if source is None or source.user_id != user_id or source.kind != WalletKind.USER:
        raise errors.NotYourWallet("Wrong wallet ID or it is not your wallet ID")
    target = wallets.get(leg.target_wallet_id)
    if target is None or target.kind != WalletKind.USER:
        raise errors.TargetWalletNotFound()
    if target.id == source.id:
        raise errors.SameWallet()
    amount = leg.amount
    rate, converted = rates.quote(source.currency_id, target.currency_id, amount)
    _available(source, amount)
    if source.currency_id == target.currency_id:
        legs = [(source, Bucket.BALANCE, -amount), (target, Bucket.BALANCE, converted)]
    else:
        # Across currencies the operator's exchange desk buys the source currency and sells
        # the target one, so every entry still sums to zero per currency.
        desk_in, desk_out = desks[source.currency_id], desks[target.currency_id]
        legs = [(source, Bucket.BALANCE, -amount), (desk_in, Bucket.BALANCE, amount),
                (desk_out, Bucket.BALANCE, -converted), (target, Bucket.BALANCE, converted)]
    record_id = new_id()
    if entry_id is None:
        entry_id = effects.entry(EntryKind.TRANSFER, request_id, legs, record_id)
    else:
        effects.post(entry_id, legs, record_id)
    row = effects.record(type=TxType.TRANSFER, status=TxStatus.CLOSE, source=source, target=target, amount=amount,
                         converted=converted, rate=rate, user_id=user_id, entry_id=entry_id, id=record_id)
    return row, {"transaction_id": row["id"], "from_wallet_id": source.id, "to_wallet_id": target.id,
                 "amount": amount, "currency_id": source.currency_id, "converted_amount": converted,
                 "to_currency_id": target.currency_id, "rate": rate}


def _own(wallets: dict[uuid.UUID, WalletState], wallet_id: uuid.UUID, user_id: uuid.UUID) -> WalletState:
    wallet = wallets.get(wallet_id)
    if wallet is None or wallet.user_id != user_id or wallet.kind != WalletKind.USER:
        raise errors.NotYourWallet("Wrong wallet ID or it is not your wallet ID")
    return wallet


def plan_deposit_request(cmd: RequestDeposit, wallets: dict[uuid.UUID, WalletState], effects: Effects) -> dict:
    wallet = _own(wallets, cmd.wallet_id, cmd.user_id)
    gateway = wallets[cmd.gateway_wallet_id]
    row = effects.record(type=TxType.DEPOSIT, status=TxStatus.PENDING, source=gateway, target=wallet, amount=cmd.amount,
                         converted=cmd.amount, rate=ONE, user_id=cmd.user_id, entry_id=None,
                         service_user_id=cmd.service_user_id, commission_rate=cmd.commission_rate,
                         commission=commission(cmd.amount, cmd.commission_rate))
    effects.events.append(("deposit.requested", {
        "transaction_id": row["id"], "wallet_id": wallet.id, "amount": cmd.amount, "currency_id": wallet.currency_id,
        "service_user_id": cmd.service_user_id, "principal": cmd.user_id, "request_id": cmd.request_id}))
    record = tx_json(row)
    effects.publish("deposit.requested", cmd.service_user_id, record)
    return record


def plan_withdraw_request(cmd: RequestWithdraw, wallets: dict[uuid.UUID, WalletState], effects: Effects) -> dict:
    wallet = _own(wallets, cmd.wallet_id, cmd.user_id)
    gateway = wallets[cmd.gateway_wallet_id]
    _available(wallet, cmd.amount)
    record_id = new_id()
    entry_id = effects.entry(EntryKind.WITHDRAW_HOLD, cmd.request_id,
                             [(wallet, Bucket.BALANCE, -cmd.amount), (wallet, Bucket.RESERVED, cmd.amount)], record_id)
    row = effects.record(type=TxType.WITHDRAW, status=TxStatus.PENDING, source=wallet, target=gateway,
                         amount=cmd.amount, converted=cmd.amount, rate=ONE, user_id=cmd.user_id, entry_id=entry_id,
                         service_user_id=cmd.service_user_id, external_wallet_id=cmd.external_wallet_id,
                         commission_rate=cmd.commission_rate, commission=commission(cmd.amount, cmd.commission_rate),
                         id=record_id)
    effects.events.append(("withdraw.requested", {
        "entry_id": entry_id, "transaction_id": row["id"], "wallet_id": wallet.id, "amount": cmd.amount,
        "currency_id": wallet.currency_id, "service_user_id": cmd.service_user_id, "principal": cmd.user_id,
        "request_id": cmd.request_id}))
    record = tx_json(row)
    effects.publish("withdraw.requested", cmd.service_user_id, record)
    return record
