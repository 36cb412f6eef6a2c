"""A multi-leg transfer: every leg or none, in one journal entry.

Each leg is checked and priced exactly as a single transfer (ledger.book_transfer), in request
order, against the balances the legs before it left. A refused leg does not stop the check: every
leg is tried, so the refusal names each one that cannot go; then everything planned for the
command is undone and nothing of it is written.
"""

from __future__ import annotations

import uuid

from walletd.domain import errors
from walletd.domain.commands import MultiTransfer
from walletd.domain.effects import Effects
from walletd.domain.rates import RateBook
from walletd.domain.records import tx_json
from walletd.domain.state import WalletState
from walletd.domain.transfers import book_transfer
from walletd.domain.vocabulary import EntryKind


def plan_multi_transfer(cmd: MultiTransfer, wallets: dict[uuid.UUID, WalletState], desks: dict[int, WalletState],
                        rates: RateBook, effects: Effects) -> dict:
    """{"transfers": [record of each leg, in request order]}, or LegsRefused naming each refused leg."""
    checkpoint = effects.checkpoint()
    entry_id = effects.entry(EntryKind.TRANSFER, cmd.request_id, [])
    records: list[dict] = []
    moved: list[dict] = []
    refused: list[dict] = []
    memo: dict = {}  # the legs share their source, owner and time: each rendered once
    for index, leg in enumerate(cmd.legs):
        try:
            record, leg_moved = book_transfer(cmd.user_id, leg, cmd.request_id, wallets, desks, rates, effects,
                                              entry_id)
        except errors.DomainError as exc:
            refused.append(leg_refusal(index, exc))
            continue
        records.append(tx_json(record, memo))
        moved.append(leg_moved)
    if refused:
        effects.rollback(checkpoint, wallets)
        raise errors.legs_refused(refused)
    # One audit line for the request, every leg in it: a line per leg would cost more than the leg.
    effects.audit_lines.append(("money.transferred_legs", {
        "entry_id": entry_id, "legs": moved, "principal": cmd.user_id, "request_id": cmd.request_id}))
    return {"transfers": records}


def leg_refusal(index: int, exc: errors.DomainError) -> dict:
    """One item of a refusal's `errors`: which leg, and why, as a single transfer would say it."""
    return {"index": index, "code": exc.code, "message": exc.message}
