"""The snapshot planning works on: the wallets a batch touches (read under row locks, or as this
process predicts them) and the pending records it settles. Planning updates it as it goes, so
each command of a batch sees what the ones before it left."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal

from walletd.domain import errors
from walletd.domain.vocabulary import MAY_GO_NEGATIVE, Bucket


@dataclass(slots=True)
class WalletState:
    id: uuid.UUID
    user_id: uuid.UUID
    currency_id: int
    kind: str
    balance: Decimal
    reserved: Decimal

    @property
    def may_go_negative(self) -> bool:
        return self.kind in MAY_GO_NEGATIVE

    def post(self, bucket: str, amount: Decimal) -> None:
        """A posting's effect on this wallet: the one arithmetic planning, undoing a half-planned
        command and persistence's predictions all share."""
        if bucket == Bucket.BALANCE:
            self.balance += amount
        else:
            self.reserved += amount


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
    commission: Decimal | None = None  # fixed when the customer asked (None: a record from before that rule)
    stale: bool = False  # pending past WALLETD_PENDING_TTL: the operator may end it too
    settled_by: str | None = None  # who decided a settled record: SERVICE, OPERATOR, or EXPIRY (previous release)


def owner_of(wallet: WalletState | None) -> tuple[uuid.UUID, str] | None:
    """What access's rules read of a wallet: its owner and its kind."""
    return None if wallet is None else (wallet.user_id, wallet.kind)


def require_available(wallet: WalletState, amount: Decimal) -> None:
    if not wallet.may_go_negative and wallet.balance < amount:
        raise errors.InsufficientFunds()
