"""What this process predicts about wallets, so the ledger's fast path can plan without locks.

Per wallet: owner, currency and kind (they never change) and a predicted balance (what this
process last read or committed). A wrong prediction costs only a locked-path retry: the database
decides (see persistence/ledger.py). Bounded so memory follows the active wallets: cleared whole
when full, then refilled on use.

Owners are also kept apart from the balances: a balance prediction is dropped after every locked
batch, an owner is a fact, so asking whose a warm wallet is (before a command may enter its
queue) never costs a round trip.
"""

from __future__ import annotations

import uuid

from walletd.domain.commands import Command, MultiTransfer, Transfer, wallets_touched
from walletd.domain.effects import Effects
from walletd.domain.policy import OPERATOR_USER_ID
from walletd.domain.state import WalletState
from walletd.domain.vocabulary import WalletKind
from walletd.persistence.db import FairPool

CACHE_LIMIT = 20_000
_WALLET_STATES = ("SELECT id, user_id, currency_id, kind, balance, reserved_balance FROM wallets "
                  "WHERE id = ANY($1::uuid[])")
_EXCHANGE_DESKS = "SELECT id, currency_id FROM wallets WHERE user_id = $1 AND kind = $2"


class WalletPredictions:
    def __init__(self, pool: FairPool) -> None:
        self.pool = pool
        self.predicted: dict[uuid.UUID, WalletState] = {}
        self.owners: dict[uuid.UUID, tuple[uuid.UUID, str]] = {}  # wallet id -> (user id, kind)
        self.desks: dict[int, uuid.UUID] = {}  # currency id -> the operator's exchange desk wallet
        self.reads = 0  # round trips reading wallet states (the tests count them)

    def __len__(self) -> int:
        return len(self.predicted)

    def forget(self, wallet_ids=None) -> None:
        """Drop these predictions (all of them, and the owners, by default); they are re-read on next use."""
        if wallet_ids is None:
            self.predicted = {}
            self.owners = {}  # all idle: memory goes back to what the active wallets need
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
        """These wallets as predicted, reading the ones not predicted yet (one round trip). claims:
        wallet id -> the owners commands say it has (only the Citus edition reads by them)."""
        # Built from what this call saw and fetched, never re-read from the cache after an await:
        # a concurrent locked batch may drop entries meanwhile.
        found = {i: self.predicted[i] for i in ids if i in self.predicted}
        missing = [i for i in ids if i not in found]
        if missing:
            self.reads += 1
            rows = await self._read(missing, claims or {})
            if len(self.predicted) + len(rows) > CACHE_LIMIT:
                self.predicted.clear()
            if len(self.owners) + len(rows) > CACHE_LIMIT:
                self.owners.clear()
            for r in rows:
                found[r[0]] = self.predicted[r[0]] = WalletState(r[0], r[1], r[2], r[3], r[4], r[5])
                self.owners[r[0]] = (r[1], r[3])
        return found

    async def _read(self, ids: list[uuid.UUID], claims: dict[uuid.UUID, set[uuid.UUID]]) -> list:
        return await self.pool.fetch(_WALLET_STATES, ids)

    async def owner(self, wallet_id: uuid.UUID, *read_along: uuid.UUID) -> tuple[uuid.UUID, str] | None:
        """(user id, kind) of the wallet, None if it does not exist. From memory when known; else
        one read, which also predicts `read_along` (the batch then needs no read of its own)."""
        known = self.owners.get(wallet_id)
        if known is None and (state := self.predicted.get(wallet_id)) is not None:
            known = self.owners[wallet_id] = (state.user_id, state.kind)
        if known is not None:
            return known
        state = (await self.states({wallet_id, *read_along})).get(wallet_id)
        return None if state is None else (state.user_id, state.kind)

    async def wallets_for(self, commands: list[Command]) -> tuple[dict[uuid.UUID, WalletState], set[int]]:
        """Every wallet the batch may touch, with the exchange desks its cross-currency transfers
        need, and the currencies those transfers convert between."""
        ids: set[uuid.UUID] = set()
        for command in commands:
            ids |= wallets_touched(command)
        wallets = await self.states(ids, self._claims(commands))
        currencies = _currencies_to_convert(commands, wallets)
        if currencies:
            desks = await self._desk_ids(currencies)
            wallets |= await self.states(desks, {desk: {OPERATOR_USER_ID} for desk in desks})
        return wallets, currencies

    def _claims(self, commands: list[Command]) -> dict[uuid.UUID, set[uuid.UUID]]:
        return {}

    async def _desk_ids(self, currencies: set[int]) -> set[uuid.UUID]:
        if not currencies <= self.desks.keys():
            rows = await self.pool.fetch(_EXCHANGE_DESKS, OPERATOR_USER_ID, WalletKind.OPERATOR)
            self.desks = {r["currency_id"]: r["id"] for r in rows}
        return {self.desks[c] for c in currencies if c in self.desks}


def _currencies_to_convert(commands: list[Command], wallets: dict[uuid.UUID, WalletState]) -> set[int]:
    """Currencies on either side of a cross-currency transfer in the batch."""
    currencies: set[int] = set()
    pairs = [(c.source_wallet_id, c.target_wallet_id) for c in commands if isinstance(c, Transfer)]
    pairs += [(leg.source_wallet_id, leg.target_wallet_id)
              for c in commands if isinstance(c, MultiTransfer) for leg in c.legs]
    for source, target in pairs:
        if source in wallets and target in wallets:
            src, dst = wallets[source].currency_id, wallets[target].currency_id
            if src != dst:
                currencies |= {src, dst}
    return currencies
