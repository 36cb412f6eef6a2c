"""walletd's own money policy: who the operator is, the default commission rates, the rate a
request fixes, whose wallet a pending transaction settles, and the sign-up bonus. No I/O here:
persistence looks the rows up and stores what these functions decide."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from walletd.domain import errors
from walletd.domain.ids import new_id
from walletd.domain.ledger import SERVICE, Effects, Idempotency, Settle, WalletState
from walletd.domain.rates import ONE
from walletd.domain.vocabulary import Bucket, EntryKind, TxStatus, TxType

# The operator account owns the exchange desks and funds sign-up bonuses; a fixed id so every
# process (and every release) agrees on it.
OPERATOR_USER_ID = uuid.uuid5(uuid.NAMESPACE_URL, "walletd:operator")


@dataclass(frozen=True)
class CommissionRates:
    deposit: Decimal
    withdraw: Decimal

    def for_type(self, transaction_type: str) -> Decimal:
        return self.deposit if transaction_type == TxType.DEPOSIT else self.withdraw


# A new service user's rates in every currency until it sets its own. (Migration 0001's column
# defaults say the same; walletd always writes these values explicitly.)
DEFAULT_COMMISSION = CommissionRates(deposit=Decimal("0.01"), withdraw=Decimal("0.02"))


def user_wallet_of(transaction_type: str, from_wallet_id: uuid.UUID | None,
                   to_wallet_id: uuid.UUID | None) -> uuid.UUID | None:
    """The customer's wallet of a pending transaction: a deposit credits it, a withdrawal holds
    money in it. That wallet's actor runs the settlement."""
    return to_wallet_id if transaction_type == TxType.DEPOSIT else from_wallet_id


def fixed_commission_rate(rates: CommissionRates, transaction_type: str, ceiling: Decimal) -> Decimal:
    """The rate a deposit or withdrawal request fixes: the service's own, never above the
    operator's ceiling (a rate stored before the ceiling existed, or above a lowered one)."""
    return min(rates.for_type(transaction_type), ceiling)


def check_settler(pending: Mapping | None, service_user_id: uuid.UUID | None, transaction_type: str) -> Mapping:
    """Only the service user named on the transaction may settle it; anyone else's looks missing.
    service_user_id None: the operator, who may reach every service's transactions."""
    if pending is None or (service_user_id is not None and pending["service_user_id"] != service_user_id):
        raise errors.TransactionNotFound()
    if pending["type"] != transaction_type:
        raise errors.InvalidTransactionType()
    return pending


def settle_command(pending: Mapping, *, new_status: str, service_wallet_id: uuid.UUID, gateway_wallet_id: uuid.UUID,
                   fallback_rate: Decimal, settled_by: str = SERVICE, request_id: str | None = None,
                   idempotency: Idempotency | None = None) -> Settle:
    """The Settle command for a record (id, type, service_user_id, from_wallet_id, to_wallet_id)
    checked by check_settler. The commission is the one the record fixed; fallback_rate is charged
    only to a record that has none (written before fees were fixed at request time)."""
    kind = pending["type"]
    user_wallet = user_wallet_of(kind, pending["from_wallet_id"], pending["to_wallet_id"])
    if user_wallet is None:  # a pending deposit or withdrawal always names its customer's wallet
        raise errors.TransactionNotFound()
    return Settle(pending["service_user_id"], pending["id"], kind, new_status, user_wallet, service_wallet_id,
                  gateway_wallet_id, fallback_rate, request_id, idempotency, settled_by)


def plan_signup_bonus(user_wallets: list[WalletState], desks: Mapping[int, WalletState], amount: Decimal,
                      request_id: str | None, effects: Effects) -> uuid.UUID | None:
    """A new user's bonus: one journal entry, in every currency the operator's wallet −amount and
    the user's wallet +amount, and one closed 'bonus' transaction per wallet. None when there is
    nothing to grant."""
    if amount <= 0:
        return None
    pairs = [(desks[w.currency_id], w) for w in user_wallets if w.currency_id in desks]
    if not pairs:
        return None
    entry_id = effects.entry(EntryKind.BONUS, request_id, [])
    for desk, wallet in pairs:
        record_id = new_id()  # each wallet's pair of postings realizes that wallet's bonus record
        effects.post(entry_id, [(desk, Bucket.BALANCE, -amount), (wallet, Bucket.BALANCE, amount)], record_id)
        effects.record(type=TxType.BONUS, status=TxStatus.CLOSE, source=desk, target=wallet, amount=amount,
                       converted=amount, rate=ONE, user_id=wallet.user_id, entry_id=entry_id, id=record_id)
    return entry_id
