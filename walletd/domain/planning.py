"""Planning a batch: which rule plans which command, each against the batch's snapshot (domain/
state.py) into its Effects. A command either raises a DomainError and leaves the snapshot as it
was, or updates it and appends a balanced journal entry. No I/O here."""

from __future__ import annotations

import uuid

from walletd.domain.commands import Command, MultiTransfer, RequestDeposit, RequestWithdraw, Reverse, Settle, Transfer
from walletd.domain.effects import Effects
from walletd.domain.multi_transfer import plan_multi_transfer
from walletd.domain.rates import RateBook
from walletd.domain.requests import plan_deposit_request, plan_withdraw_request
from walletd.domain.reversal import plan_reversal
from walletd.domain.settlement import plan_settlement
from walletd.domain.state import WalletState
from walletd.domain.transfers import plan_transfer


def plan(command: Command, wallets: dict[uuid.UUID, WalletState], desks: dict[int, WalletState], rates: RateBook,
         pending: dict, effects: Effects) -> dict:
    """The command's answer (its record as the API shows it); `pending` holds the pending states
    of the batch's settlements by transaction id and the originals of its reversals by (Reverse, id)."""
    if isinstance(command, Reverse):
        return plan_reversal(command, pending.get((Reverse, command.transaction_id)), wallets, effects)
    if isinstance(command, Transfer):
        return plan_transfer(command, wallets, desks, rates, effects)
    if isinstance(command, Settle):
        return plan_settlement(command, pending.get(command.transaction_id), wallets, effects)
    if isinstance(command, RequestDeposit):
        return plan_deposit_request(command, wallets, effects)
    if isinstance(command, RequestWithdraw):
        return plan_withdraw_request(command, wallets, effects)
    if isinstance(command, MultiTransfer):
        return plan_multi_transfer(command, wallets, desks, rates, effects)
    raise TypeError(f"unknown command {command!r}")
