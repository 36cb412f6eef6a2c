"""Wallet predictions on Citus: a wallet is read from its owner's shard when the owner is known.

Known means remembered from an earlier read (owners never change, and persistence/predictions.py
keeps them apart from the balances), or claimed by the command: a transfer's sources are the
caller's, a payment service's wallets are its own, an exchange desk is the operator's. A wrong
claim finds no wallet on that shard, the answer a single node gives for a wallet that is not the
caller's. Only a wallet never seen before and claimed by nobody (a transfer's target) is looked
for on every shard.
"""

from __future__ import annotations

import uuid

from walletd.domain.commands import Command, MultiTransfer, RequestDeposit, RequestWithdraw, Settle, Transfer
from walletd.persistence.predictions import _WALLET_STATES, WalletPredictions

_WALLET_STATES_OWNED = _WALLET_STATES + " AND user_id = ANY($2::uuid[])"


class CitusPredictions(WalletPredictions):
    async def _read(self, ids: list[uuid.UUID], claims: dict[uuid.UUID, set[uuid.UUID]]) -> list:
        owned = {i: {self.owners[i][0]} if i in self.owners else claims.get(i, set()) for i in ids}
        known = [i for i in ids if owned[i]]
        unknown = [i for i in ids if not owned[i]]
        owners = {owner for i in known for owner in owned[i]}
        rows = list(await self.pool.fetch(_WALLET_STATES_OWNED, known, list(owners))) if known else []
        if unknown:
            rows += await self.pool.fetch(_WALLET_STATES, unknown)
        return rows

    def _claims(self, commands: list[Command]) -> dict[uuid.UUID, set[uuid.UUID]]:
        """Wallet id -> the owners the batch's commands say it has (one command's wrong claim must
        not hide the wallet from another's right one)."""
        claims: dict[uuid.UUID, set[uuid.UUID]] = {}
        for command in commands:
            for wallet_id, owner in claimed_owners(command):
                claims.setdefault(wallet_id, set()).add(owner)
        return claims


def claimed_owners(command: Command) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """(wallet, owner) pairs a command asserts: where to read those wallets on Citus."""
    if isinstance(command, Transfer):
        return [(command.source_wallet_id, command.user_id)]
    if isinstance(command, MultiTransfer):
        return [(leg.source_wallet_id, command.user_id) for leg in command.legs]
    if isinstance(command, (RequestDeposit, RequestWithdraw)):
        return [(command.wallet_id, command.user_id), (command.gateway_wallet_id, command.service_user_id)]
    if isinstance(command, Settle):
        return [(command.service_wallet_id, command.service_user_id),
                (command.gateway_wallet_id, command.service_user_id)]
    return []
