"""A deposit or withdrawal requested: the pending record, with the commission its settlement will
charge fixed now; a withdrawal also holds its amount (balance to reserved) until it is settled
(domain/settlement.py)."""

from __future__ import annotations

import uuid

from walletd.domain.access import own_wallet_refusal, refuse
from walletd.domain.commands import RequestDeposit, RequestWithdraw
from walletd.domain.effects import Effects
from walletd.domain.ids import new_id
from walletd.domain.money import commission
from walletd.domain.rates import ONE
from walletd.domain.records import tx_json
from walletd.domain.state import WalletState, owner_of, require_available
from walletd.domain.vocabulary import Bucket, EntryKind, TxStatus, TxType


def _own(wallets: dict[uuid.UUID, WalletState], wallet_id: uuid.UUID, user_id: uuid.UUID) -> WalletState:
    wallet = wallets.get(wallet_id)
    refuse(own_wallet_refusal(user_id, owner_of(wallet)))
    assert wallet is not None
    return wallet


def plan_deposit_request(cmd: RequestDeposit, wallets: dict[uuid.UUID, WalletState], effects: Effects) -> dict:
    wallet = _own(wallets, cmd.wallet_id, cmd.user_id)
    gateway = wallets[cmd.gateway_wallet_id]
    row = effects.record(type=TxType.DEPOSIT, status=TxStatus.PENDING, source=gateway, target=wallet, amount=cmd.amount,
                         converted=cmd.amount, rate=ONE, user_id=cmd.user_id, entry_id=None,
                         service_user_id=cmd.service_user_id, commission_rate=cmd.commission_rate,
                         commission=commission(cmd.amount, cmd.commission_rate))
    effects.audit_lines.append(("deposit.requested", {
        "transaction_id": row["id"], "wallet_id": wallet.id, "amount": cmd.amount, "currency_id": wallet.currency_id,
        "service_user_id": cmd.service_user_id, "principal": cmd.user_id, "request_id": cmd.request_id}))
    record = tx_json(row)
    effects.publish("deposit.requested", cmd.service_user_id, record)
    return record


def plan_withdraw_request(cmd: RequestWithdraw, wallets: dict[uuid.UUID, WalletState], effects: Effects) -> dict:
    wallet = _own(wallets, cmd.wallet_id, cmd.user_id)
    gateway = wallets[cmd.gateway_wallet_id]
    require_available(wallet, cmd.amount)
    record_id = new_id()
    entry_id = effects.entry(EntryKind.WITHDRAW_HOLD, cmd.request_id,
                             [(wallet, Bucket.BALANCE, -cmd.amount), (wallet, Bucket.RESERVED, cmd.amount)], record_id)
    row = effects.record(type=TxType.WITHDRAW, status=TxStatus.PENDING, source=wallet, target=gateway,
                         amount=cmd.amount, converted=cmd.amount, rate=ONE, user_id=cmd.user_id, entry_id=entry_id,
                         service_user_id=cmd.service_user_id, external_wallet_id=cmd.external_wallet_id,
                         commission_rate=cmd.commission_rate, commission=commission(cmd.amount, cmd.commission_rate),
                         id=record_id)
    effects.audit_lines.append(("withdraw.requested", {
        "entry_id": entry_id, "transaction_id": row["id"], "wallet_id": wallet.id, "amount": cmd.amount,
        "currency_id": wallet.currency_id, "service_user_id": cmd.service_user_id, "principal": cmd.user_id,
        "request_id": cmd.request_id}))
    record = tx_json(row)
    effects.publish("withdraw.requested", cmd.service_user_id, record)
    return record
