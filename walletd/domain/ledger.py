"""The money rules as pure code: commands, the postings of each movement, the pending state machine.

Planning works on an in-memory snapshot of the wallets a batch touches (read under row locks by
persistence). A command either raises a DomainError and leaves the snapshot untouched, or updates
the snapshot and appends a balanced journal entry to the batch's Effects. No I/O here.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal

from walletd.domain import errors
from walletd.domain.effects import Effects, WalletState
from walletd.domain.ids import new_id
from walletd.domain.money import commission
from walletd.domain.rates import ONE, RateBook
from walletd.domain.records import tx_json
from walletd.domain.vocabulary import Bucket, EntryKind, TxStatus, TxType, WalletKind

# Re-exported: planning prices transfers through RateBook; Effects, WalletState and tx_json are
# what callers of planning hand in and get back.
__all__ = ["Effects", "RateBook", "WalletState", "tx_json"]


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


@dataclass(frozen=True)
class RequestDeposit:
    user_id: uuid.UUID
    wallet_id: uuid.UUID
    gateway_wallet_id: uuid.UUID
    service_user_id: uuid.UUID
    amount: Decimal
    request_id: str | None = None
    idempotency: Idempotency | None = None


@dataclass(frozen=True)
class RequestWithdraw:
    user_id: uuid.UUID
    wallet_id: uuid.UUID
    gateway_wallet_id: uuid.UUID
    service_user_id: uuid.UUID
    external_wallet_id: uuid.UUID
    amount: Decimal
    request_id: str | None = None
    idempotency: Idempotency | None = None


@dataclass(frozen=True)
class Settle:
    """Settle a pending deposit or withdrawal: new_status is 'paid' or 'rejected' (the payment
    service), or 'expired' (walletd's expiry sweeper, walletd/events/expiry.py, past the TTL)."""

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


Command = Transfer | RequestDeposit | RequestWithdraw | Settle | MultiTransfer


def routing_wallet(command: Command) -> uuid.UUID:
    """The wallet whose actor runs a command that debits or holds one wallet."""
    if isinstance(command, Transfer):
        return command.source_wallet_id
    if isinstance(command, Settle):
        return command.user_wallet_id
    if isinstance(command, MultiTransfer):
        return min(routing_wallets(command))
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
    return {command.wallet_id, command.gateway_wallet_id}


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
                         service_user_id=cmd.service_user_id)
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
                         service_user_id=cmd.service_user_id, external_wallet_id=cmd.external_wallet_id, id=record_id)
    effects.events.append(("withdraw.requested", {
        "entry_id": entry_id, "transaction_id": row["id"], "wallet_id": wallet.id, "amount": cmd.amount,
        "currency_id": wallet.currency_id, "service_user_id": cmd.service_user_id, "principal": cmd.user_id,
        "request_id": cmd.request_id}))
    record = tx_json(row)
    effects.publish("withdraw.requested", cmd.service_user_id, record)
    return record


def plan_settlement(cmd: Settle, pending: PendingState | None, wallets: dict[uuid.UUID, WalletState],
                    effects: Effects) -> dict:
    """Exactly once: only a pending transaction moves; a repeat of the same outcome answers the
    stored record, a conflicting one is SettlementConflict."""
    if pending is None or pending.service_user_id != cmd.service_user_id:
        raise errors.TransactionNotFound()
    if pending.type != cmd.type:
        raise errors.InvalidTransactionType()
    new_status = TxStatus.REJECTED if cmd.new_status in (TxStatus.REJECTED, "reject") else cmd.new_status
    if pending.status != TxStatus.PENDING:
        if pending.status == TxStatus.EXPIRED and new_status != TxStatus.EXPIRED:
            raise errors.TransactionExpired()
        if pending.status == new_status:
            return pending.record
        raise errors.SettlementConflict(detail=f"transaction is already {pending.status}")
    user = wallets[cmd.user_wallet_id]
    service = wallets[cmd.service_wallet_id]
    gateway = wallets[cmd.gateway_wallet_id]
    amount = pending.amount
    entry_id = None
    if pending.type == TxType.DEPOSIT and new_status == TxStatus.PAID:
        fee = commission(amount, cmd.commission_rate)
        entry_id = effects.entry(EntryKind.DEPOSIT, cmd.request_id,
                                 [(gateway, Bucket.BALANCE, -amount), (user, Bucket.BALANCE, amount - fee),
                                  (service, Bucket.BALANCE, fee)], pending.id)
        effects.record(type=TxType.TRANSFER, status=TxStatus.CLOSE, source=service, target=user, amount=amount,
                       converted=amount, rate=ONE, user_id=pending.user_id, entry_id=entry_id,
                       service_user_id=cmd.service_user_id, parent_id=pending.id)
        if fee:
            effects.record(type=TxType.COMMISSION, status=TxStatus.CLOSE, source=user, target=service, amount=fee,
                           converted=fee, rate=ONE, user_id=pending.user_id, entry_id=entry_id,
                           service_user_id=cmd.service_user_id, parent_id=pending.id)
        moved = {"amount": amount, "commission": fee, "credited": amount - fee}
    elif pending.type == TxType.WITHDRAW and new_status == TxStatus.PAID:
        fee = commission(amount, cmd.commission_rate)
        net = amount - fee
        if user.reserved < amount:  # cannot happen while holds only move through this code
            raise errors.InsufficientFunds()
        entry_id = effects.entry(EntryKind.WITHDRAW, cmd.request_id,
                                 [(user, Bucket.RESERVED, -amount), (service, Bucket.BALANCE, fee),
                                  (gateway, Bucket.BALANCE, net)], pending.id)
        if fee:
            effects.record(type=TxType.COMMISSION, status=TxStatus.CLOSE, source=user, target=service, amount=fee,
                           converted=fee, rate=ONE, user_id=pending.user_id, entry_id=entry_id,
                           service_user_id=cmd.service_user_id, parent_id=pending.id)
        if pending.external_wallet_id is not None:
            effects.external_credits.append((pending.external_wallet_id, net))
        moved = {"amount": amount, "commission": fee, "paid_out": net}
    elif pending.type == TxType.WITHDRAW:
        # rejected or expired: the hold returns to the balance, in one entry
        kind = EntryKind.WITHDRAW_EXPIRED if new_status == TxStatus.EXPIRED else EntryKind.WITHDRAW_RELEASE
        entry_id = effects.entry(kind, cmd.request_id,
                                 [(user, Bucket.RESERVED, -amount), (user, Bucket.BALANCE, amount)], pending.id)
        moved = {"amount": amount, "released": amount}
    else:
        moved = {"amount": amount}
    effects.status_updates.append((pending.id, new_status, entry_id))
    pending.status = new_status
    pending.record = {**pending.record, "status": new_status}
    outcome = "settled" if new_status == TxStatus.PAID else str(new_status)  # settled, rejected, expired
    effects.publish(f"{pending.type}.{outcome}", cmd.service_user_id, pending.record)
    effects.events.append((f"{pending.type}.{'expired' if new_status == TxStatus.EXPIRED else 'settled'}", {
        "entry_id": entry_id, "transaction_id": pending.id, "status": new_status, "wallet_id": user.id,
        "service_wallet_id": service.id, "gateway_wallet_id": gateway.id, "currency_id": user.currency_id,
        "principal": cmd.service_user_id, "request_id": cmd.request_id,
        **{k: v for k, v in moved.items()}}))
    return pending.record
