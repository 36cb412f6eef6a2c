"""Reversals: a completed transfer or a paid deposit undone by one compensating journal entry, the
original's postings negated, recorded as a `reversal` whose parent_id is the original. The journal
stays append-only: nothing of the original changes.

Once per original: planning refuses a second one, and the database's unique index on reversals
refuses it whichever process writes it. A wallet the original credited must still hold what the
reversal takes back (the original's own rate and amounts, never today's); otherwise nothing moves.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal

from walletd.domain import errors
from walletd.domain.commands import Reverse
from walletd.domain.effects import Effects
from walletd.domain.ids import new_id
from walletd.domain.records import tx_json
from walletd.domain.state import WalletState
from walletd.domain.vocabulary import Bucket, EntryKind, TxStatus, TxType


@dataclass
class ReversalState:
    """The original as planning needs it: its record, its entry's postings, whether it was reversed."""

    record: dict  # the transactions row: id, type, status, parent_id, wallets, amounts, rate, user ids
    # (wallet_id, bucket, amount) of the original's own postings: its whole entry for a deposit, the
    # postings naming it for a transfer (one leg of a multi-leg transfer shares its entry with others)
    legs: list[tuple[uuid.UUID, str, Decimal]]
    reversed: bool


def reversible(record) -> bool:
    if record["type"] == TxType.TRANSFER:
        # a deposit's own 'transfer' record is part of the deposit: reverse the deposit instead
        return record["status"] == TxStatus.CLOSE and record["parent_id"] is None
    return record["type"] == TxType.DEPOSIT and record["status"] == TxStatus.PAID


def plan_reversal(cmd: Reverse, state: ReversalState | None, wallets: dict[uuid.UUID, WalletState],
                  effects: Effects) -> dict:
    if state is None:
        raise errors.TransactionNotFound()
    original = state.record
    if not reversible(original) or not state.legs:
        raise errors.NotReversible(f"only a completed transfer or a paid deposit can be reversed; this is a "
                                   f"{original['type']} ({original['status']})")
    if state.reversed:
        raise errors.AlreadyReversed()
    legs = [(wallets[wallet_id], bucket, -amount) for wallet_id, bucket, amount in state.legs]
    _covered(legs)
    record_id = new_id()  # its postings name it, so a statement shows the reversal as one line
    entry_id = effects.entry(EntryKind.REVERSAL, cmd.request_id, legs, record_id)
    debited, credited = wallets[original["to_wallet_id"]], wallets[original["from_wallet_id"]]
    # What leaves the debited wallet is what the original brought it, in its currency; the rate is
    # the original's (the conversion being undone), never a new quote.
    row = effects.record(type=TxType.REVERSAL, status=TxStatus.CLOSE, source=debited, target=credited,
                         amount=original["converted_amount"], converted=original["amount"], rate=original["rate"],
                         user_id=original["user_id"], entry_id=entry_id, service_user_id=original["service_user_id"],
                         parent_id=original["id"], id=record_id)
    state.reversed = True
    record = tx_json(row)
    if original["service_user_id"] is not None:
        effects.publish("transaction.reversed", original["service_user_id"], record)
    effects.audit_lines.append(("money.reversed", {
        "entry_id": entry_id, "transaction_id": row["id"], "parent_id": original["id"],
        "reversed_type": original["type"], "from_wallet_id": debited.id, "to_wallet_id": credited.id,
        "amount": row["amount"], "currency_id": debited.currency_id, "converted_amount": row["converted_amount"],
        "to_currency_id": credited.currency_id, "principal": "operator", "request_id": cmd.request_id}))
    return record


def _covered(legs: list[tuple[WalletState, str, Decimal]]) -> None:
    """Every wallet that may not go negative still holds what the reversal takes from it."""
    after: dict[tuple[uuid.UUID, str], Decimal] = {}
    for wallet, bucket, amount in legs:
        key = (wallet.id, bucket)
        held = wallet.balance if bucket == Bucket.BALANCE else wallet.reserved
        after[key] = after.get(key, held) + amount
    for (wallet_id, bucket), left in after.items():
        wallet = next(w for w, _, _ in legs if w.id == wallet_id)
        if left < 0 and (bucket == Bucket.RESERVED or not wallet.may_go_negative):
            raise errors.ReversalNotCovered()
