"""What this process predicts about wallets, so the ledger's fast path can plan without locks.

Per wallet: owner, currency and kind (they never change) and a predicted balance (what this
process last read or committed). A wrong prediction costs only a locked-path retry: the database
decides (see persistence/ledger.py). Bounded so memory follows the active wallets: cleared whole
when full, then refilled on use.

On Citus (persistence/citus/) a wallet is read from its owner's shard when the owner is known:
remembered from an earlier read (owners never change, so they outlive a dropped prediction), or
claimed by the command (a transfer's source is the caller's, a payment service's wallets are its
own). A wrong claim finds no wallet there, the answer a single node gives for a wallet that is
not the caller's. Only a wallet never seen before and claimed by nobody (a transfer's target) is
looked for on every shard.
"""

from __future__ import annotations

import uuid

from walletd.domain.ledger import (
    Command,
    Effects,
    RequestDeposit,
    RequestWithdraw,
    Settle,
    Transfer,
    WalletState,
    wallets_touched,
)
from walletd.domain.policy import OPERATOR_USER_ID
from walletd.domain.vocabulary import WalletKind
from walletd.persistence.db import FairPool

CACHE_LIMIT = 20_000
_WALLET_STATES = ("SELECT id, user_id, currency_id, kind, balance, reserved_balance FROM wallets "
                  "WHERE id = ANY($1::uuid[])")
_WALLET_STATES_OWNED = _WALLET_STATES + " AND user_id = ANY($2::uuid[])"
_EXCHANGE_DESKS = "SELECT id, currency_id FROM wallets WHERE user_id = $1 AND kind = $2"


class WalletPredictions:
    def __init__(self, pool: FairPool) -> None:
        self.pool = pool
        self.predicted: dict[uuid.UUID, WalletState] = {}
        self.desks: dict[int, uuid.UUID] = {}  # currency id -> the operator's exchange desk wallet
        self.owners: dict[uuid.UUID, uuid.UUID] = {}  # wallet id -> owner (kept on a distributed database)

    def __len__(self) -> int:
        return len(self.predicted)

    def forget(self, wallet_ids=None) -> None:
        """Drop these predictions (all of them by default); they are re-read on next use."""
        if wallet_ids is None:
            self.predicted = {}
            return
        for wallet_id in wallet_ids:
            self.predicted.pop(wallet_id, None)

    def learn(self, effects: Effects) -> None:
        """Apply a committed batch's postings to the predictions."""
        for _, wallet_id, _, bucket, amount in effects.postings:
            state = self.predicted.get(wallet_id)
            if state is not None:
                state.post(bucket, amount)

    async def states(self, ids: set[uuid.UUID], claims: dict[uuid.UUID, set[uuid.UUID]] | None = None,
                     ) -> dict[uuid.UUID, WalletState]:
        """These wallets as predicted, reading the ones not predicted yet (one round trip; on Citus
        two when some owner is unknown). claims: wallet id -> the owners commands say it has (one
        command's wrong claim must not hide the wallet from another's right one)."""
        # Built from what this call saw and fetched, never re-read from the cache after an await:
        # a concurrent locked batch may drop entries meanwhile.
        found = {i: self.predicted[i] for i in ids if i in self.predicted}
        missing = [i for i in ids if i not in found]
        if missing:
            rows = await self._read(missing, claims or {})
            if len(self.predicted) + len(rows) > CACHE_LIMIT:
                self.predicted.clear()
            if len(self.owners) + len(rows) > 4 * CACHE_LIMIT:
                self.owners.clear()
            for r in rows:
                found[r[0]] = self.predicted[r[0]] = WalletState(r[0], r[1], r[2], r[3], r[4], r[5])
                if self.pool.distributed:
                    self.owners[r[0]] = r[1]
        return found

    async def _read(self, ids: list[uuid.UUID], claims: dict[uuid.UUID, set[uuid.UUID]]) -> list:
        if not self.pool.distributed:
            return await self.pool.fetch(_WALLET_STATES, ids)
        owned = {i: {self.owners[i]} if i in self.owners else claims.get(i, set()) for i in ids}
        known = [i for i in ids if owned[i]]
        unknown = [i for i in ids if not owned[i]]
        owners = {owner for i in known for owner in owned[i]}
        rows = list(await self.pool.fetch(_WALLET_STATES_OWNED, known, list(owners))) if known else []
        if unknown:
            rows += await self.pool.fetch(_WALLET_STATES, unknown)
        return rows

    async def wallets_for(self, commands: list[Command]) -> tuple[dict[uuid.UUID, WalletState], set[int]]:
        """Every wallet the batch may touch, with the exchange desks its cross-currency transfers
        need, and the currencies those transfers convert between."""
        ids: set[uuid.UUID] = set()
        claims: dict[uuid.UUID, set[uuid.UUID]] = {}
        for command in commands:
            ids |= wallets_touched(command)
            if self.pool.distributed:
                for wallet_id, owner in _claimed_owners(command).items():
                    claims.setdefault(wallet_id, set()).add(owner)
        wallets = await self.states(ids, claims)
        currencies = _converted_currencies(commands, wallets)
        if currencies:
            desks = await self._desk_ids(currencies)
            wallets |= await self.states(desks, {desk: {OPERATOR_USER_ID} for desk in desks})
        return wallets, currencies

    async def _desk_ids(self, currencies: set[int]) -> set[uuid.UUID]:
        if not currencies <= self.desks.keys():
            rows = await self.pool.fetch(_EXCHANGE_DESKS, OPERATOR_USER_ID, WalletKind.OPERATOR)
            self.desks = {r["currency_id"]: r["id"] for r in rows}
        return {self.desks[c] for c in currencies if c in self.desks}


def _converted_currencies(commands: list[Command], wallets: dict[uuid.UUID, WalletState]) -> set[int]:
    """Currencies on either side of a cross-currency transfer in the batch."""
    currencies: set[int] = set()
    for c in commands:
        if isinstance(c, Transfer) and c.source_wallet_id in wallets and c.target_wallet_id in wallets:
            src, dst = wallets[c.source_wallet_id].currency_id, wallets[c.target_wallet_id].currency_id
            if src != dst:
                currencies |= {src, dst}
    return currencies


def _claimed_owners(command: Command) -> dict[uuid.UUID, uuid.UUID]:
    """The owner a command says each of its wallets has (on Citus: where to read it)."""
    if isinstance(command, Transfer):
        return {command.source_wallet_id: command.user_id}
    if isinstance(command, (RequestDeposit, RequestWithdraw)):
        return {command.wallet_id: command.user_id, command.gateway_wallet_id: command.service_user_id}
    if isinstance(command, Settle):
        return {command.service_wallet_id: command.service_user_id, command.gateway_wallet_id: command.service_user_id}
    return {}
