"""Who may touch what: a user's own wallets, a transfer's two parties, the payment service that
settles a pending record, and the wallets each principal reads of its own.

Each rule is written here once, as a function that returns the refusal (or None). The edge applies
it before a command may enter a wallet's queue (someone naming another's wallet must neither fill
that queue nor learn anything), and planning applies the same function again to the snapshot it
plans on, so a command is refused alike whichever of the two sees it first.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from walletd.domain import errors
from walletd.domain.policy import WALLET_KINDS
from walletd.domain.vocabulary import WalletKind

# A wallet's (owner's user id, kind), as the edge reads it or the snapshot holds it; None: no such wallet.
Owner = tuple[uuid.UUID, str] | None

NOT_YOUR_WALLET = "Wrong wallet ID or it is not your wallet ID"  # the original service's text


def refuse(refusal: errors.DomainError | None) -> None:
    if refusal is not None:
        raise refusal


def is_own_user_wallet(user_id: uuid.UUID, owner: Owner) -> bool:
    """One of the user's own wallets: never someone else's, nor a service's, a gateway or a desk."""
    return owner is not None and owner[0] == user_id and owner[1] == WalletKind.USER


def own_wallet_refusal(user_id: uuid.UUID, owner: Owner) -> errors.DomainError | None:
    """NotYourWallet unless the wallet is the user's own: someone else's looks exactly like one
    that does not exist."""
    return None if is_own_user_wallet(user_id, owner) else errors.NotYourWallet(NOT_YOUR_WALLET)


def same_wallet_refusal(source_id: uuid.UUID, target_id: uuid.UUID) -> errors.DomainError | None:
    return errors.SameWallet() if source_id == target_id else None


def transfer_refusal(user_id: uuid.UUID, source_id: uuid.UUID, source: Owner, target_id: uuid.UUID,
                     target: Owner) -> errors.DomainError | None:
    """A transfer goes from the caller's own wallet to any user's wallet (never a service's, a
    gateway or a desk), and not to itself; refused in that order."""
    if (refusal := own_wallet_refusal(user_id, source)) is not None:
        return refusal
    if target is None or target[1] != WalletKind.USER:
        return errors.TargetWalletNotFound()
    return same_wallet_refusal(source_id, target_id)


def settler_refusal(record_service_user_id: uuid.UUID | None, record_type: str, caller: uuid.UUID | None,
                    wanted_type: str) -> errors.DomainError | None:
    """Only the payment service named on a pending record settles it; caller None is the operator,
    who reaches every service's records. Anyone else's record looks missing; a record of the other
    type is InvalidTransactionType. (A missing record is refused by the callers before they ask.)"""
    if caller is not None and record_service_user_id != caller:
        return errors.TransactionNotFound()
    if record_type != wanted_type:
        return errors.InvalidTransactionType()
    return None


def check_settler(pending: Mapping | None, caller: uuid.UUID | None, wanted_type: str) -> Mapping:
    """settler_refusal on a transactions row (service_user_id, type), raised; returns the row."""
    if pending is None:
        raise errors.TransactionNotFound()
    refuse(settler_refusal(pending["service_user_id"], pending["type"], caller, wanted_type))
    return pending


def readable_kinds(role: str) -> tuple[str, ...]:
    """The kinds of wallet a principal reads of its own (balances, statements, its wallet list): a
    payment service its service and gateway wallets, a user its user wallets."""
    return WALLET_KINDS["service" if role == "service" else "user"]
