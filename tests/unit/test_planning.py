"""Property tests for the ledger planning (walletd/domain/: transfers, requests, settlement): every planned movement balances,
the postings of each settlement, the transfer arithmetic, and refusals that change nothing.
Pure code, no I/O; expected amounts come from tests.oracles (exact fractions)."""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.oracles import UNIT, commission_fee, truncated
from tests.unit.strategies import amounts, commission_rates
from walletd.domain import errors
from walletd.domain.commands import RequestDeposit, RequestWithdraw, Settle, Transfer
from walletd.domain.effects import Effects
from walletd.domain.money import fmt
from walletd.domain.rates import RateBook
from walletd.domain.requests import plan_deposit_request, plan_withdraw_request
from walletd.domain.settlement import plan_settlement
from walletd.domain.state import PendingState, WalletState
from walletd.domain.transfers import plan_transfer

# ---- ledger planning: every movement balances ---------------------------------------------------

NOW = datetime(2030, 1, 1, tzinfo=timezone.utc)
CURRENCIES = (1, 2, 3)


class World:
    """Two users, a service user and the operator desks, in every currency."""

    def __init__(self) -> None:
        self.users = [uuid.uuid4(), uuid.uuid4()]
        self.service_user = uuid.uuid4()
        self.operator = uuid.uuid4()
        self.wallets: dict[uuid.UUID, WalletState] = {}
        self.user_wallets: dict[tuple[uuid.UUID, int], uuid.UUID] = {}
        self.service: dict[int, uuid.UUID] = {}
        self.gateway: dict[int, uuid.UUID] = {}
        self.desks: dict[int, WalletState] = {}
        for currency in CURRENCIES:
            for user in self.users:
                self.user_wallets[(user, currency)] = self._add(user, currency, "user")
            self.service[currency] = self._add(self.service_user, currency, "service")
            self.gateway[currency] = self._add(self.service_user, currency, "gateway")
            self.desks[currency] = self.wallets[self._add(self.operator, currency, "operator")]
        self.pending: dict[uuid.UUID, PendingState] = {}
        self.external = {user: uuid.uuid4() for user in self.users}
        self.rates = RateBook({(a, b): (Decimal(r), NOW) for (a, b), r in {
            (1, 2): "0.92", (2, 1): "1.0869565217", (1, 3): "92.5", (3, 1): "0.0108108108",
            (2, 3): "100.5434782609", (3, 2): "0.0099459459"}.items()}, NOW)

    def _add(self, user: uuid.UUID, currency: int, kind: str) -> uuid.UUID:
        wallet_id = uuid.uuid4()
        self.wallets[wallet_id] = WalletState(wallet_id, user, currency, kind, Decimal(0), Decimal(0))
        return wallet_id

    def snapshot(self) -> dict:
        return {w.id: (w.balance, w.reserved) for w in self.wallets.values()}


def apply_step(world: World, step: tuple, effects: Effects):
    kind = step[0]
    if kind == "transfer":
        _, user, src_cur, dst_user, dst_cur, amount = step
        source = world.user_wallets[(world.users[user], src_cur)]
        target = world.user_wallets[(world.users[dst_user], dst_cur)]
        return plan_transfer(Transfer(world.users[user], source, target, amount), world.wallets, world.desks,
                             world.rates, effects)
    if kind == "deposit":
        _, user, currency, amount, rate = step
        wallet = world.user_wallets[(world.users[user], currency)]
        row = plan_deposit_request(RequestDeposit(world.users[user], wallet, world.gateway[currency],
                                                  world.service_user, amount, commission_rate=rate),
                                   world.wallets, effects)
        world.pending[uuid.UUID(row["id"])] = pending_of(row, effects, None)
        return row
    if kind == "withdraw":
        _, user, currency, amount, rate = step
        wallet = world.user_wallets[(world.users[user], currency)]
        row = plan_withdraw_request(RequestWithdraw(world.users[user], wallet, world.gateway[currency],
                                                    world.service_user, world.external[world.users[user]], amount,
                                                    commission_rate=rate),
                                    world.wallets, effects)
        world.pending[uuid.UUID(row["id"])] = pending_of(row, effects, world.external[world.users[user]])
        return row
    # settle; the service's rate at settlement time is not the one charged: the record fixed its own
    _, pick, status, rate_now = step
    if not world.pending:
        return None
    pending = list(world.pending.values())[pick % len(world.pending)]
    user_wallet = pending.to_wallet_id if pending.type == "deposit" else pending.from_wallet_id
    currency = world.wallets[user_wallet].currency_id
    return plan_settlement(Settle(world.service_user, pending.id, pending.type, status, user_wallet,
                                  world.service[currency], world.gateway[currency], rate_now),
                           pending, world.wallets, effects)


def pending_of(row: dict, effects: Effects, external: uuid.UUID | None) -> PendingState:
    raw = effects.new_transactions[-1]
    return PendingState(raw["id"], raw["type"], raw["status"], raw["amount"], raw["from_wallet_id"],
                        raw["to_wallet_id"], raw["user_id"], raw["service_user_id"], external, row,
                        raw["commission"])


step_amounts = st.integers(min_value=1, max_value=5 * 10**12).map(lambda n: Decimal(n) * UNIT)
steps = st.one_of(
    st.tuples(st.just("transfer"), st.integers(0, 1), st.sampled_from(CURRENCIES), st.integers(0, 1),
              st.sampled_from(CURRENCIES), step_amounts),
    st.tuples(st.just("deposit"), st.integers(0, 1), st.sampled_from(CURRENCIES), step_amounts, commission_rates),
    st.tuples(st.just("withdraw"), st.integers(0, 1), st.sampled_from(CURRENCIES), step_amounts, commission_rates),
    st.tuples(st.just("settle"), st.integers(0, 50), st.sampled_from(["paid", "rejected", "reject"]),
              commission_rates),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(steps, min_size=1, max_size=40))
def test_every_planned_movement_balances_per_currency(program):
    world = World()
    effects = Effects(NOW)
    applied = 0
    for step in program:
        before = world.snapshot()
        pending_before = {k: (p.status, dict(p.record)) for k, p in world.pending.items()}
        postings_before = len(effects.postings)
        try:
            apply_step(world, step, effects)
            applied += 1
        except (errors.InsufficientFunds, errors.SameWallet, errors.SettlementConflict, errors.InvalidAmount):
            # A refused command leaves the snapshot and the batch exactly as they were.
            assert world.snapshot() == before
            assert len(effects.postings) == postings_before
            assert {k: (p.status, dict(p.record)) for k, p in world.pending.items()} == pending_before
    # Each journal entry sums to zero per currency.
    sums: dict[tuple, Decimal] = defaultdict(Decimal)
    for entry_id, wallet_id, currency_id, _bucket, amount in effects.postings:
        assert amount != 0
        assert world.wallets[wallet_id].currency_id == currency_id
        sums[(entry_id, currency_id)] += amount
    assert all(total == 0 for total in sums.values()), sums
    assert {e[0] for e in effects.entries} >= {p[0] for p in effects.postings}
    # The snapshot equals the sum of the postings, and user wallets never go negative.
    posted: dict[tuple, Decimal] = defaultdict(Decimal)
    for _, wallet_id, _, bucket, amount in effects.postings:
        posted[(wallet_id, bucket)] += amount
    for wallet in world.wallets.values():
        assert wallet.balance == posted[(wallet.id, "B")]
        assert wallet.reserved == posted[(wallet.id, "R")]
        assert wallet.reserved >= 0
        if wallet.kind in ("user", "service"):
            assert wallet.balance >= 0
    # Money is conserved per currency.
    for currency in CURRENCIES:
        assert sum(w.balance + w.reserved for w in world.wallets.values() if w.currency_id == currency) == 0


@settings(max_examples=200, deadline=None)
@given(amounts.filter(lambda a: a <= 10**9), commission_rates, commission_rates)
def test_deposit_paid_postings(amount, rate, rate_at_settlement):
    world = World()
    effects = Effects(NOW)
    row = apply_step(world, ("deposit", 0, 2, amount, rate), effects)
    assert effects.postings == [], "a deposit request moves nothing"
    assert (row["commission_rate"], row["commission"]) == (fmt(rate), fmt(commission_fee(amount, rate)))
    settled = apply_step(world, ("settle", 0, "paid", rate_at_settlement), effects)
    assert settled["status"] == "paid" and settled["id"] == row["id"]
    fee = commission_fee(amount, rate)
    legs = {(p[1], p[3]): p[4] for p in effects.postings}
    user = world.user_wallets[(world.users[0], 2)]
    expected = {(world.gateway[2], "B"): -amount, (user, "B"): amount - fee, (world.service[2], "B"): fee}
    assert legs == {k: v for k, v in expected.items() if v}, "zero legs are not posted"
    # A repeat of the same outcome answers the same record and moves nothing more.
    count = len(effects.postings)
    assert apply_step(world, ("settle", 0, "paid", rate), effects) == settled
    assert apply_step(world, ("settle", 0, "paid", rate), effects)["status"] == "paid"
    assert len(effects.postings) == count
    with pytest.raises(errors.SettlementConflict):
        apply_step(world, ("settle", 0, "rejected", rate), effects)


@settings(max_examples=200, deadline=None)
@given(amounts.filter(lambda a: a <= 10**9), commission_rates, commission_rates,
       st.sampled_from(["paid", "rejected", "reject"]))
def test_withdraw_hold_and_settlement_postings(amount, rate, rate_at_settlement, outcome):
    world = World()
    effects = Effects(NOW)
    user = world.wallets[world.user_wallets[(world.users[1], 1)]]
    user.balance = amount  # as if funded earlier (outside this batch)
    apply_step(world, ("withdraw", 1, 1, amount, rate), effects)
    assert (user.balance, user.reserved) == (0, amount), "the whole balance may be withdrawn"
    hold = list(effects.postings)
    assert sorted((p[3], p[4]) for p in hold) == sorted([("B", -amount), ("R", amount)])
    apply_step(world, ("settle", 0, outcome, rate_at_settlement), effects)
    legs = {(p[1], p[3]): p[4] for p in effects.postings[len(hold):]}
    if outcome == "paid":
        fee = commission_fee(amount, rate)
        expected = {(user.id, "R"): -amount, (world.service[1], "B"): fee, (world.gateway[1], "B"): amount - fee}
        assert legs == {k: v for k, v in expected.items() if v}
        assert effects.external_credits == [(world.external[world.users[1]], amount - fee)]
        assert (user.balance, user.reserved) == (0, 0)
    else:
        assert legs == {(user.id, "R"): -amount, (user.id, "B"): amount}
        assert effects.external_credits == []
        assert (user.balance, user.reserved) == (amount, 0)


def test_settlement_by_another_service_user_or_wrong_type_is_refused():
    world = World()
    effects = Effects(NOW)
    apply_step(world, ("deposit", 0, 1, Decimal("5"), Decimal("0.01")), effects)
    pending = next(iter(world.pending.values()))
    wallet = pending.to_wallet_id
    with pytest.raises(errors.TransactionNotFound):
        plan_settlement(Settle(uuid.uuid4(), pending.id, "deposit", "paid", wallet, world.service[1],
                               world.gateway[1], Decimal("0.01")), pending, world.wallets, effects)
    with pytest.raises(errors.InvalidTransactionType):
        plan_settlement(Settle(world.service_user, pending.id, "withdraw", "paid", wallet, world.service[1],
                               world.gateway[1], Decimal("0.01")), pending, world.wallets, effects)
    with pytest.raises(errors.TransactionNotFound):
        plan_settlement(Settle(world.service_user, pending.id, "deposit", "paid", wallet, world.service[1],
                               world.gateway[1], Decimal("0.01")), None, world.wallets, effects)
    assert effects.postings == [] and pending.status == "pending"


@settings(max_examples=300, deadline=None)
@given(amounts.filter(lambda a: a <= 10**9), st.sampled_from(CURRENCIES), st.sampled_from(CURRENCIES))
def test_quote_is_the_transfer_arithmetic(amount, src, dst):
    world = World()
    effects = Effects(NOW)
    source = world.wallets[world.user_wallets[(world.users[0], src)]]
    source.balance = amount
    try:
        rate, quoted = world.rates.quote(src, dst, amount)
    except errors.InvalidAmount:  # converts to zero: the transfer refuses it too
        with pytest.raises(errors.InvalidAmount):
            apply_step(world, ("transfer", 0, src, 1, dst, amount), effects)
        return
    row = apply_step(world, ("transfer", 0, src, 1, dst, amount), effects)
    assert Decimal(row["converted_amount"]) == quoted and Decimal(row["rate"]) == rate
    target = world.wallets[world.user_wallets[(world.users[1], dst)]]
    assert target.balance == quoted and source.balance == 0
    if src == dst:
        assert quoted == amount
    else:
        assert Fraction(quoted) == truncated(Fraction(amount) * Fraction(rate))
        assert world.desks[src].balance == amount and world.desks[dst].balance == -quoted


def test_transfer_to_the_same_wallet_or_a_foreign_source_is_refused():
    world = World()
    effects = Effects(NOW)
    wallet = world.user_wallets[(world.users[0], 1)]
    world.wallets[wallet].balance = Decimal(10)
    with pytest.raises(errors.SameWallet):
        plan_transfer(Transfer(world.users[0], wallet, wallet, Decimal(1)), world.wallets, world.desks, world.rates,
                      effects)
    with pytest.raises(errors.NotYourWallet):
        plan_transfer(Transfer(world.users[1], wallet, world.user_wallets[(world.users[1], 1)], Decimal(1)),
                      world.wallets, world.desks, world.rates, effects)
    with pytest.raises(errors.TargetWalletNotFound):
        plan_transfer(Transfer(world.users[0], wallet, world.service[1], Decimal(1)), world.wallets, world.desks,
                      world.rates, effects)
    with pytest.raises(errors.InsufficientFunds):
        plan_transfer(Transfer(world.users[0], wallet, world.user_wallets[(world.users[1], 1)],
                               Decimal("10.0000000001")), world.wallets, world.desks, world.rates, effects)
    assert effects.postings == [] and world.wallets[wallet].balance == 10


def test_stale_and_missing_rates_are_refused():
    book = RateBook({(1, 2): (Decimal("0.5"), NOW - timedelta(hours=2))}, NOW, timedelta(hours=1))
    with pytest.raises(errors.RateStale):
        book.quote(1, 2, Decimal(1))
    with pytest.raises(errors.RateNotFound):
        book.quote(2, 1, Decimal(1))
    assert book.quote(3, 3, Decimal(7)) == (Decimal(1), Decimal(7))
    fresh = RateBook({(1, 2): (Decimal("0.5"), NOW - timedelta(minutes=59))}, NOW, timedelta(hours=1))
    assert fresh.quote(1, 2, Decimal("3")) == (Decimal("0.5"), Decimal("1.5000000000"))
    with pytest.raises(errors.InvalidAmount):
        fresh.quote(1, 2, Decimal("0.0000000001"))  # converts to zero
