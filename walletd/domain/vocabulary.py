"""The ledger's vocabulary. StrEnums, so each member is the very string stored in the database
(and compares equal to it): rows read back as plain text match the members without conversion."""

from __future__ import annotations

from enum import StrEnum


class Bucket(StrEnum):
    """Which balance of a wallet a posting moves: the spendable balance or the withdrawal hold."""

    BALANCE = "B"
    RESERVED = "R"


class WalletKind(StrEnum):
    USER = "user"  # a customer's wallet: never below zero
    SERVICE = "service"  # the payment service's commission income
    GATEWAY = "gateway"  # money entering or leaving through the payment service: may go negative
    OPERATOR = "operator"  # walletd's own: the exchange desk and the sign-up bonus source; may go negative


# The kinds whose balance may go below zero: a gateway mirrors money outside walletd, and the
# operator's desk pays out what it converts and the bonuses it grants. Every other balance, and
# every hold, stays at zero or above. The database enforces the same rule whoever writes (the CHECK
# balance_not_negative of migration 0001) and `walletd audit` reports a breach of it; both read
# their list from here or are checked against it (tests/integration/test_rules_mirrored.py).
MAY_GO_NEGATIVE: frozenset[WalletKind] = frozenset({WalletKind.GATEWAY, WalletKind.OPERATOR})


class TxType(StrEnum):
    TRANSFER = "transfer"
    DEPOSIT = "deposit"
    WITHDRAW = "withdraw"
    COMMISSION = "commission"
    BONUS = "bonus"
    REVERSAL = "reversal"  # undoes a completed transfer or a paid deposit (parent_id: the original)


class TxStatus(StrEnum):
    PENDING = "pending"
    PAID = "paid"
    REJECTED = "rejected"
    CLOSE = "close"  # a movement complete when recorded (transfers, commissions, bonuses)
    EXPIRED = "expired"


class EntryKind(StrEnum):
    """What a journal entry records (journal_entries.kind)."""

    TRANSFER = "transfer"
    DEPOSIT = "deposit"  # a deposit paid: gateway → user and service wallet
    WITHDRAW_HOLD = "withdraw_hold"  # balance → hold, when a withdrawal is requested
    WITHDRAW = "withdraw"  # a withdrawal paid: hold → gateway and service wallet
    WITHDRAW_RELEASE = "withdraw_release"  # rejected: hold → balance
    WITHDRAW_EXPIRED = "withdraw_expired"  # expired by the previous release: hold → balance
    # a withdrawal the previous release expired, paid after all (the operator reconciling it):
    # balance → gateway and service wallet, since its hold had gone back to the balance
    WITHDRAW_AFTER_EXPIRY = "withdraw_after_expiry"
    BONUS = "bonus"  # sign-up bonus: operator → user
    REVERSAL = "reversal"  # the original entry's postings, negated
