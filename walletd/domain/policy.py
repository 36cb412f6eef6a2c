"""walletd's own money policy: who the operator is, which wallets each role holds, the default
commission rates, the rate a request fixes, whose wallet a pending transaction settles, and who
gets the sign-up bonus. No I/O here: persistence looks the rows up and stores what these
functions decide."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from walletd.domain import errors
from walletd.domain.commands import SERVICE, Idempotency, Settle
from walletd.domain.effects import Effects
from walletd.domain.ids import new_id
from walletd.domain.rates import ONE
from walletd.domain.state import WalletState
from walletd.domain.vocabulary import Bucket, EntryKind, TxStatus, TxType, WalletKind

# The operator account owns the exchange desks and funds sign-up bonuses; a fixed id so every
# process (and every release) agrees on it.
OPERATOR_USER_ID = uuid.uuid5(uuid.NAMESPACE_URL, "walletd:operator")


@dataclass(frozen=True)
class CommissionRates:
    deposit: Decimal
    withdraw: Decimal

    def for_type(self, transaction_type: str) -> Decimal:
        return self.deposit if transaction_type == TxType.DEPOSIT else self.withdraw

    @classmethod
    def stored_or_default(cls, deposit: Decimal | None, withdraw: Decimal | None) -> CommissionRates:
        """A service's rates as stored, the default for any it has no row for."""
        return cls(DEFAULT_COMMISSION.deposit if deposit is None else deposit,
                   DEFAULT_COMMISSION.withdraw if withdraw is None else withdraw)


# A new service user's rates in every currency until it sets its own. walletd always writes them
# explicitly; migration 0001's column defaults mirror them (tests/integration/test_rules_mirrored.py).
DEFAULT_COMMISSION = CommissionRates(deposit=Decimal("0.01"), withdraw=Decimal("0.02"))

# The wallets an account holds in every currency, by role: a user its own; a payment service one
# collecting its commissions and one mirroring the money it moves in and out. The operator's
# exchange desks are made apart (one per currency, persistence/accounts.ensure_operator_wallets).
WALLET_KINDS = {"user": (WalletKind.USER,), "service": (WalletKind.SERVICE, WalletKind.GATEWAY)}


def signup_bonus_for(role: str, configured: Decimal) -> Decimal:
    """What a new account is granted at sign-up: WALLETD_SIGNUP_BONUS for a user, in each of its
    wallets; nothing for a payment service."""
    return configured if role == "user" and configured > 0 else Decimal(0)


def user_wallet_of(transaction_type: str, from_wallet_id: uuid.UUID | None,
                   to_wallet_id: uuid.UUID | None) -> uuid.UUID | None:
    """The customer's wallet of a pending transaction: a deposit credits it, a withdrawal holds
    money in it. A withdrawal's settlement runs in that wallet's actor, a deposit's in the
    gateway's (commands.routing_wallet)."""
    return to_wallet_id if transaction_type == TxType.DEPOSIT else from_wallet_id


def fixed_commission_rate(rates: CommissionRates, transaction_type: str, ceiling: Decimal) -> Decimal:
    """The rate a deposit or withdrawal request fixes: the service's own, never above the
    operator's ceiling (a rate stored before the ceiling existed, or above a lowered one)."""
    return min(rates.for_type(transaction_type), ceiling)


def settle_command(pending: Mapping, *, new_status: str, service_wallet_id: uuid.UUID, gateway_wallet_id: uuid.UUID,
                   fallback_rate: Decimal, settled_by: str = SERVICE, request_id: str | None = None,
                   idempotency: Idempotency | None = None) -> Settle:
    """The Settle command for a record (id, type, service_user_id, from_wallet_id, to_wallet_id)
    checked by access.check_settler. The commission is the one the record fixed; fallback_rate is charged
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
