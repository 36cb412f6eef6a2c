"""The settlement of a pending deposit or withdrawal: who may end it, and what it moves.

- Exactly once: only a pending record moves money. The same outcome asked again (by anyone)
  answers the record as it is; the other outcome is SettlementConflict, naming who decided.
- The payment service the record names settles it whenever it answers, stale or not: time alone
  never moves money. The operator ends a pending record only once it is stale.
- The commission is the one fixed on the record when the customer asked.
- A record the previous release expired (its hold already returned) is reconciled: `rejected`
  agrees with what happened and moves nothing; `paid` from the operator pays it out of the
  balance; `paid` from the payment service is a conflict for a person to look at.
"""

from __future__ import annotations

import uuid

from walletd.domain import errors
from walletd.domain.access import refuse, settler_refusal
from walletd.domain.commands import EXPIRY, OPERATOR, SERVICE, Settle
from walletd.domain.effects import Effects
from walletd.domain.money import commission
from walletd.domain.rates import ONE
from walletd.domain.state import PendingState, WalletState
from walletd.domain.vocabulary import Bucket, EntryKind, TxStatus, TxType


def _outcome(cmd: Settle, pending: PendingState) -> str:
    """The status the command asks for, once it is allowed to ask; raises what refuses it."""
    new_status = TxStatus.REJECTED if cmd.new_status in (TxStatus.REJECTED, "reject") else cmd.new_status
    if pending.status == TxStatus.PENDING:
        if cmd.settled_by == OPERATOR and not pending.stale:
            raise errors.TransactionNotStale(
                "the operator may end a pending transaction only once it is stale (WALLETD_PENDING_TTL); until "
                "then the payment service settles it")
        return new_status
    if pending.status == new_status:
        return new_status  # a repeat: answered below without moving anything
    if pending.status == TxStatus.EXPIRED and (new_status == TxStatus.REJECTED or cmd.settled_by == OPERATOR):
        return new_status
    decided = pending.settled_by or (EXPIRY if pending.status == TxStatus.EXPIRED else SERVICE)
    raise errors.SettlementConflict(detail=f"transaction is already {pending.status}", status=str(pending.status),
                                    settled_by=decided)


def plan_settlement(cmd: Settle, pending: PendingState | None, wallets: dict[uuid.UUID, WalletState],
                    effects: Effects) -> dict:
    if pending is None:
        raise errors.TransactionNotFound()
    # The caller was judged at the edge (the command carries the record's own service user, not the
    # caller's): here the rule catches a record that is not of the type the command settles.
    refuse(settler_refusal(pending.service_user_id, pending.type, cmd.service_user_id, cmd.type))
    new_status = _outcome(cmd, pending)
    if pending.status == new_status:
        return pending.record
    user = wallets[cmd.user_wallet_id]
    service = wallets[cmd.service_wallet_id]
    gateway = wallets[cmd.gateway_wallet_id]
    amount = pending.amount
    fee = pending.commission if pending.commission is not None else commission(amount, cmd.commission_rate)
    entry_id = None
    if pending.type == TxType.DEPOSIT and new_status == TxStatus.PAID:
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
        net = amount - fee
        if pending.status == TxStatus.PENDING:
            kind, source = EntryKind.WITHDRAW, Bucket.RESERVED
            if user.reserved < amount:  # cannot happen while holds only move through this code
                raise errors.InsufficientFunds()
        else:  # expired by the previous release: its hold went back to the balance, so pay from there
            kind, source = EntryKind.WITHDRAW_AFTER_EXPIRY, Bucket.BALANCE
            if user.balance < amount:
                raise errors.InsufficientFunds()
        entry_id = effects.entry(kind, cmd.request_id,
                                 [(user, source, -amount), (service, Bucket.BALANCE, fee),
                                  (gateway, Bucket.BALANCE, net)], pending.id)
        if fee:
            effects.record(type=TxType.COMMISSION, status=TxStatus.CLOSE, source=user, target=service, amount=fee,
                           converted=fee, rate=ONE, user_id=pending.user_id, entry_id=entry_id,
                           service_user_id=cmd.service_user_id, parent_id=pending.id)
        if pending.external_wallet_id is not None:
            effects.external_credits.append((pending.external_wallet_id, net))
        moved = {"amount": amount, "commission": fee, "paid_out": net}
    elif pending.type == TxType.WITHDRAW and pending.status == TxStatus.PENDING:
        # rejected: the hold returns to the balance, in one entry
        entry_id = effects.entry(EntryKind.WITHDRAW_RELEASE, cmd.request_id,
                                 [(user, Bucket.RESERVED, -amount), (user, Bucket.BALANCE, amount)], pending.id)
        moved = {"amount": amount, "released": amount}
    else:
        moved = {"amount": amount}
    effects.status_updates.append((pending.id, new_status, entry_id, pending.status, cmd.settled_by))
    pending.status, pending.settled_by = new_status, cmd.settled_by
    pending.record = {**pending.record, "status": new_status}
    outcome = "settled" if new_status == TxStatus.PAID else str(new_status)  # settled, rejected
    effects.publish(f"{pending.type}.{outcome}", cmd.service_user_id, pending.record)
    effects.audit_lines.append((f"{pending.type}.settled", {
        "entry_id": entry_id, "transaction_id": pending.id, "status": new_status, "wallet_id": user.id,
        "service_wallet_id": service.id, "gateway_wallet_id": gateway.id, "currency_id": user.currency_id,
        "principal": "operator" if cmd.settled_by == OPERATOR else cmd.service_user_id,
        "settled_by": cmd.settled_by, "request_id": cmd.request_id, **moved}))
    return pending.record
