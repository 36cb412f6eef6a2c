"""Commands: what a request asks the ledger to do (imperative names), the wallets each one routes
to, and what answers it when its Idempotency-Key was used before (a Replay)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal

from walletd.domain.vocabulary import TxType


@dataclass(frozen=True)
class Idempotency:
    principal_id: uuid.UUID
    key: str
    request_hash: str


@dataclass(frozen=True)
class Replay:
    """A stored first answer (a movement, or a refusal the ledger decided) returned for a retried
    Idempotency-Key."""

    status: int
    body: dict


@dataclass(frozen=True)
class Transfer:
    user_id: uuid.UUID
    source_wallet_id: uuid.UUID
    target_wallet_id: uuid.UUID
    amount: Decimal
    request_id: str | None = None
    idempotency: Idempotency | None = None


# Who decided a settlement (transactions.settled_by).
SERVICE = "service"
OPERATOR = "operator"
EXPIRY = "expiry"  # the previous release's expiry, which returned holds; nothing decides this way now


@dataclass(frozen=True)
class RequestDeposit:
    """commission_rate: the payment service's rate at this moment, within the operator's ceiling;
    the pending record keeps it, and its settlement charges exactly the commission it fixes."""

    user_id: uuid.UUID
    wallet_id: uuid.UUID
    gateway_wallet_id: uuid.UUID
    service_user_id: uuid.UUID
    amount: Decimal
    request_id: str | None = None
    idempotency: Idempotency | None = None
    commission_rate: Decimal = Decimal(0)


@dataclass(frozen=True)
class RequestWithdraw:
    """commission_rate: as RequestDeposit's."""

    user_id: uuid.UUID
    wallet_id: uuid.UUID
    gateway_wallet_id: uuid.UUID
    service_user_id: uuid.UUID
    external_wallet_id: uuid.UUID
    amount: Decimal
    request_id: str | None = None
    idempotency: Idempotency | None = None
    commission_rate: Decimal = Decimal(0)


@dataclass(frozen=True)
class Settle:
    """Settle a pending deposit or withdrawal 'paid' or 'rejected'. settled_by: SERVICE (the
    payment service the record names) or OPERATOR (only once the record is stale, or to reconcile
    one the previous release expired). commission_rate is charged only to a record that has no
    commission fixed (written before fees were fixed at request time)."""

    service_user_id: uuid.UUID
    transaction_id: uuid.UUID
    type: str
    new_status: str
    user_wallet_id: uuid.UUID
    service_wallet_id: uuid.UUID
    gateway_wallet_id: uuid.UUID
    commission_rate: Decimal
    request_id: str | None = None
    idempotency: Idempotency | None = None
    settled_by: str = SERVICE


@dataclass(frozen=True)
class TransferLeg:
    source_wallet_id: uuid.UUID
    target_wallet_id: uuid.UUID
    amount: Decimal


@dataclass(frozen=True)
class MultiTransfer:
    """Several transfers from the caller's wallets, all or none, in one journal entry
    (planned by walletd.domain.multi_transfer)."""

    user_id: uuid.UUID
    legs: tuple[TransferLeg, ...]
    request_id: str | None = None
    idempotency: Idempotency | None = None


@dataclass(frozen=True)
class Reverse:
    """Undo a completed transfer or a paid deposit with one compensating entry (the operator's;
    planned by domain/reversal.py). The wallets are those the original's entry posted to."""

    transaction_id: uuid.UUID
    debited_wallet_id: uuid.UUID  # the wallet the original credited
    wallet_ids: frozenset[uuid.UUID]
    request_id: str | None = None
    idempotency: Idempotency | None = None


Command = Transfer | RequestDeposit | RequestWithdraw | Settle | MultiTransfer | Reverse


def routing_wallet(command: Command) -> uuid.UUID:
    """The wallet whose actor runs a command that debits or holds one wallet."""
    if isinstance(command, Transfer):
        return command.source_wallet_id
    if isinstance(command, Settle):
        # A deposit's settlement debits the gateway (credits need no actor): its settlements share
        # the gateway's batches instead of racing each other for its row from every customer's
        # actor. A withdrawal's moves its customer's hold.
        return command.gateway_wallet_id if command.type == TxType.DEPOSIT else command.user_wallet_id
    if isinstance(command, MultiTransfer):
        return min(routing_wallets(command))
    if isinstance(command, Reverse):
        return command.debited_wallet_id
    return command.wallet_id


def routing_wallets(command: Command) -> tuple[uuid.UUID, ...]:
    """Every wallet the command debits or holds, in id order: a multi-leg transfer may debit
    several of the caller's wallets, and each one's actor takes part (actors/registry.py)."""
    if isinstance(command, MultiTransfer):
        return tuple(sorted({leg.source_wallet_id for leg in command.legs}))
    return (routing_wallet(command),)


def wallets_touched(command: Command) -> set[uuid.UUID]:
    """The wallets a command may change, except the exchange desk (added once currencies are known)."""
    if isinstance(command, Transfer):
        return {command.source_wallet_id, command.target_wallet_id}
    if isinstance(command, MultiTransfer):
        return {w for leg in command.legs for w in (leg.source_wallet_id, leg.target_wallet_id)}
    if isinstance(command, Settle):
        return {command.user_wallet_id, command.service_wallet_id, command.gateway_wallet_id}
    if isinstance(command, Reverse):
        return set(command.wallet_ids)
    return {command.wallet_id, command.gateway_wallet_id}
