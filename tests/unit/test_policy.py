"""walletd/domain/policy.py and the shared posting arithmetic: pure functions, exact oracles."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from walletd.domain import errors
from walletd.domain.access import check_settler
from walletd.domain.effects import Effects
from walletd.domain.policy import (
    DEFAULT_COMMISSION,
    OPERATOR_USER_ID,
    CommissionRates,
    fixed_commission_rate,
    plan_signup_bonus,
    settle_command,
)
from walletd.domain.rates import cross_rates
from walletd.domain.state import WalletState
from walletd.domain.vocabulary import Bucket, TxStatus, TxType, WalletKind


def wallet(user_id: uuid.UUID, currency_id: int, kind: str, balance: str = "0") -> WalletState:
    return WalletState(uuid.uuid4(), user_id, currency_id, kind, Decimal(balance), Decimal(0))


def test_stored_vocabulary_is_the_strings_in_the_database():
    assert [b.value for b in Bucket] == ["B", "R"]
    assert Bucket.BALANCE == "B" and TxStatus.CLOSE == "close" and WalletKind.OPERATOR == "operator"
    assert f"{TxType.DEPOSIT}.settled" == "deposit.settled"


def test_post_moves_the_bucket_it_names():
    state = wallet(uuid.uuid4(), 1, WalletKind.USER, "10")
    state.post(Bucket.BALANCE, Decimal("-3"))
    state.post(Bucket.RESERVED, Decimal("3"))
    assert (state.balance, state.reserved) == (Decimal(7), Decimal(3))


def test_defaults_and_operator_identity_are_fixed():
    assert DEFAULT_COMMISSION == CommissionRates(Decimal("0.01"), Decimal("0.02"))
    assert OPERATOR_USER_ID == uuid.uuid5(uuid.NAMESPACE_URL, "walletd:operator")  # every release agrees on it


@pytest.mark.parametrize("kind, user_wallet, rate", [("deposit", "to", Decimal("0.03")),
                                                     ("withdraw", "from", Decimal("0.04"))])
def test_settle_command_names_the_customer_s_wallet_and_the_record_s_service(kind, user_wallet, rate):
    service_user, source, target = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    pending = {"id": uuid.uuid4(), "type": kind, "service_user_id": service_user,
               "from_wallet_id": source, "to_wallet_id": target, "currency_id": 1}
    checked = check_settler(pending, service_user, kind)
    fallback = fixed_commission_rate(CommissionRates(Decimal("0.03"), Decimal("0.04")), kind, Decimal("0.10"))
    command = settle_command(checked, new_status="paid", service_wallet_id=uuid.uuid4(),
                             gateway_wallet_id=uuid.uuid4(), fallback_rate=fallback)
    assert command.commission_rate == rate and command.settled_by == "service"
    assert command.user_wallet_id == (target if user_wallet == "to" else source)
    assert (command.transaction_id, command.type, command.service_user_id) == (pending["id"], kind, service_user)
    # The operator reaches every service's record; the command still names the record's service.
    by_operator = settle_command(check_settler(pending, None, kind), new_status="rejected",
                                 service_wallet_id=uuid.uuid4(), gateway_wallet_id=uuid.uuid4(),
                                 fallback_rate=fallback, settled_by="operator")
    assert (by_operator.service_user_id, by_operator.settled_by) == (service_user, "operator")


def test_a_request_fixes_the_service_s_rate_within_the_ceiling():
    rates = CommissionRates(Decimal("0.03"), Decimal("0.9999999999"))
    assert fixed_commission_rate(rates, "deposit", Decimal("0.10")) == Decimal("0.03")
    assert fixed_commission_rate(rates, "withdraw", Decimal("0.10")) == Decimal("0.10")
    assert fixed_commission_rate(rates, "deposit", Decimal("0.02")) == Decimal("0.02")


def test_only_the_named_service_user_settles_and_only_the_right_type():
    service_user = uuid.uuid4()
    pending = {"type": "deposit", "service_user_id": service_user}
    assert check_settler(pending, None, "deposit") is pending  # the operator: any service's record
    with pytest.raises(errors.TransactionNotFound):
        check_settler(None, service_user, "deposit")
    with pytest.raises(errors.TransactionNotFound):
        check_settler(pending, uuid.uuid4(), "deposit")
    with pytest.raises(errors.InvalidTransactionType):
        check_settler(pending, service_user, "withdraw")


def test_signup_bonus_is_one_balanced_entry_from_the_operator_in_every_currency():
    user_id = uuid.uuid4()
    mine = [wallet(user_id, c, WalletKind.USER) for c in (1, 2, 3)]
    desks = {c: wallet(OPERATOR_USER_ID, c, WalletKind.OPERATOR) for c in (1, 2, 3)}
    fx = Effects(datetime.now(timezone.utc))
    entry_id = plan_signup_bonus(mine, desks, Decimal("1.5"), "req-1", fx)
    assert fx.entries == [(entry_id, "bonus", "req-1")]
    for currency in (1, 2, 3):
        legs = [p for p in fx.postings if p[2] == currency]
        assert sorted(p[4] for p in legs) == [Decimal("-1.5"), Decimal("1.5")]
        assert all(p[3] == "B" for p in legs)
    assert [w.balance for w in mine] == [Decimal("1.5")] * 3
    assert [d.balance for d in desks.values()] == [Decimal("-1.5")] * 3
    assert [(t["type"], t["status"], t["to_wallet_id"], t["entry_id"]) for t in fx.new_transactions] == [
        ("bonus", "close", w.id, entry_id) for w in mine]


def test_no_bonus_plans_nothing():
    fx = Effects(datetime.now(timezone.utc))
    assert plan_signup_bonus([wallet(uuid.uuid4(), 1, WalletKind.USER)], {}, Decimal(0), None, fx) is None
    assert fx.entries == [] and fx.postings == []


def test_cross_rates_go_through_the_base_cut_toward_the_desk():
    pairs = cross_rates("EUR", {"USD": Decimal("1.1"), "JPY": Decimal("130")})
    assert pairs[("EUR", "USD")] == Decimal("1.1000000000")
    # 1 / 1.1 = 0.90909090909…: half-even gave 0.9090909091, and 1.1 × 0.9090909091 > 1.
    assert pairs[("USD", "EUR")] == Decimal("0.9090909090")
    assert pairs[("EUR", "USD")] * pairs[("USD", "EUR")] <= 1
    assert pairs[("USD", "JPY")] == Decimal("118.1818181818")
    assert pairs[("JPY", "USD")] == Decimal("0.0084615384")  # 0.00846153846…, cut
    assert len(pairs) == 6
