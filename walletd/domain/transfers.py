"""A transfer between two user wallets: its checks, its postings (through the operator's exchange
desks when the currencies differ) and its record. A multi-leg transfer books each leg with the
same function (domain/multi_transfer.py)."""

from __future__ import annotations

import uuid

from walletd.domain.access import refuse, transfer_refusal
from walletd.domain.commands import Transfer, TransferLeg
from walletd.domain.effects import Effects
from walletd.domain.ids import new_id
from walletd.domain.rates import RateBook
from walletd.domain.records import tx_json
from walletd.domain.state import WalletState, owner_of, require_available
from walletd.domain.vocabulary import Bucket, EntryKind, TxStatus, TxType


def plan_transfer(cmd: Transfer, wallets: dict[uuid.UUID, WalletState], desks: dict[int, WalletState],
                  rates: RateBook, effects: Effects) -> dict:
    record, moved = book_transfer(cmd.user_id, TransferLeg(cmd.source_wallet_id, cmd.target_wallet_id, cmd.amount),
                                  cmd.request_id, wallets, desks, rates, effects)
    effects.audit_lines.append(("money.transferred", {
        "entry_id": record["entry_id"], **moved, "principal": cmd.user_id, "request_id": cmd.request_id}))
    return tx_json(record)


def book_transfer(user_id: uuid.UUID, leg: TransferLeg, request_id: str | None, wallets: dict[uuid.UUID, WalletState],
                  desks: dict[int, WalletState], rates: RateBook, effects: Effects,
                  entry_id: uuid.UUID | None = None) -> tuple[dict, dict]:
    """One transfer: its checks, postings and record; returns the record and what moved (for the
    audit line). Into a new journal entry, or into entry_id (the one entry of a multi-leg transfer)."""
    source, target = wallets.get(leg.source_wallet_id), wallets.get(leg.target_wallet_id)
    refuse(transfer_refusal(user_id, leg.source_wallet_id, owner_of(source), leg.target_wallet_id, owner_of(target)))
    assert source is not None and target is not None
    amount = leg.amount
    rate, converted = rates.quote(source.currency_id, target.currency_id, amount)
    require_available(source, amount)
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
