"""The exchange desk never loses on a round trip (walletd.domain.arbitrage, walletd.domain.rates).

Rate tables are built the ways walletd builds them: a provider's quotes against a base (derived
pairs, cut toward the desk) and the operator's single-pair sets, each kept only if walletd's check
accepts it. Over such tables no sequence of conversions through walletd's own arithmetic (the quote
a transfer uses) returns more than it started with. The check itself is compared with a brute force
over every simple cycle, on exact fractions (tests.oracles' style, independent of the code)."""

from __future__ import annotations

import itertools
from datetime import datetime, timezone
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.oracles import SCALE, UNIT
from walletd.domain import errors
from walletd.domain.arbitrage import best_path, check_set, check_table, find_cycle
from walletd.domain.rates import RateBook, cross_rates

NOW = datetime(2030, 1, 1, tzinfo=timezone.utc)


def cycles_above_one(table: dict, through: tuple[int, int] | None = None) -> list[tuple[int, ...]]:
    """Every simple cycle (as a currency sequence) whose product exceeds 1, by brute force."""
    nodes = sorted({c for pair in table for c in pair})
    found = []
    for size in range(2, len(nodes) + 1):
        for combo in itertools.permutations(nodes, size):
            if combo[0] != min(combo):
                continue  # each cycle once, from its smallest currency
            cycle = (*combo, combo[0])
            pairs = list(zip(cycle, cycle[1:], strict=False))
            if any(p not in table for p in pairs) or (through is not None and through not in pairs):
                continue
            product = Fraction(1)
            for p in pairs:
                product *= Fraction(table[p])
            if product > 1:
                found.append(cycle)
    return found


quotes = st.integers(min_value=1, max_value=10**6 * SCALE).map(lambda n: Decimal(n) * UNIT)
set_rates = st.integers(min_value=1, max_value=10**4 * SCALE).map(lambda n: Decimal(n) * UNIT)


@st.composite
def tables(draw):
    """A table walletd could hold: a provider pull for some currencies, then operator sets, each
    applied only if walletd accepts it (and checked against the brute force either way)."""
    size = draw(st.integers(2, 5))
    names = [f"C{i}" for i in range(1, size + 1)]
    values = {name: draw(quotes) for name in names[1:]}
    table = {(int(a[1:]), int(b[1:])): rate for (a, b), rate in cross_rates(names[0], values).items() if rate > 0}
    for _ in range(draw(st.integers(0, 6))):
        a, b = draw(st.sampled_from(sorted(table)))
        rate = draw(st.one_of(set_rates, st.just(table[(a, b)] + UNIT),
                              st.just(table[(a, b)] * 2), st.just(table[(a, b)] - UNIT).filter(lambda r: r > 0)))
        candidate = {**table, (a, b): rate}
        violations = cycles_above_one(candidate, through=(a, b))
        try:
            check_set(table, a, b, rate)
        except errors.RateArbitrage as exc:
            assert violations, f"refused {a}->{b} = {rate} though no cycle through it exceeds 1"
            highest = Decimal(exc.detail["max_rate"])
            assert highest < rate and not cycles_above_one({**table, (a, b): highest}, through=(a, b))
            continue
        assert not violations, f"accepted {a}->{b} = {rate}, but {violations} exceed 1"
        table = candidate
    return table


@settings(max_examples=300, deadline=None)
@given(tables())
def test_every_table_walletd_accepts_keeps_every_round_trip_at_most_one(table):
    assert cycles_above_one(table) == []
    assert find_cycle(table) is None
    check_table(table)  # does not raise


@settings(max_examples=300, deadline=None)
@given(tables(), st.data())
def test_no_sequence_of_conversions_returns_more_than_it_started_with(table, data):
    book = RateBook({pair: (rate, NOW) for pair, rate in table.items()}, NOW)
    currencies = sorted({c for pair in table for c in pair})
    start = data.draw(st.sampled_from(currencies))
    path = data.draw(st.lists(st.sampled_from(currencies), min_size=1, max_size=8))
    amount = data.draw(st.integers(min_value=1, max_value=10**15 * SCALE).map(lambda n: Decimal(n) * UNIT))
    held, currency = amount, start
    for target in [*path, start]:
        if target == currency:
            continue
        try:
            _, held = book.quote(currency, target, held)  # exactly a transfer's arithmetic
        except (errors.InvalidAmount, errors.RateNotFound):
            continue  # no rate, nothing left, or past the largest amount: walletd refuses that hop
        currency = target
    if currency == start:
        assert held <= amount, (path, amount, held)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.tuples(st.integers(1, 4), st.integers(1, 4)).filter(lambda p: p[0] != p[1]), set_rates,
                       min_size=1, max_size=12))
def test_find_cycle_agrees_with_the_brute_force_on_any_table(table):
    found = find_cycle(table)
    expected = cycles_above_one(table)
    assert (found is None) == (not expected), (found, expected)
    if found is not None:
        assert found.currencies[0] == found.currencies[-1] and found.product > 1
        with pytest.raises(errors.RateArbitrage):
            check_table(table)


def test_a_reverse_rate_rounded_up_is_refused_and_named():
    # 1.1000000000 × 0.9090909091 = 1.00000000001: a round trip of 10^10 would gain 0.1.
    table = {(1, 2): Decimal("1.1"), (2, 1): Decimal("0.9090909090")}
    with pytest.raises(errors.RateArbitrage) as refused:
        check_set(table, 2, 1, Decimal("0.9090909091"))
    assert refused.value.detail["reverse_rate"] == "1.1000000000"
    assert refused.value.detail["max_rate"] == "0.9090909090"
    assert "1.1000000000" in refused.value.message
    check_set(table, 2, 1, Decimal("0.9090909090"))  # the highest allowed is allowed
    check_set(table, 2, 1, Decimal("0.5"))  # lower is always allowed


def test_a_three_currency_cycle_is_refused_even_when_every_pair_is_fine():
    table = {(1, 2): Decimal(2), (2, 1): Decimal("0.5"), (2, 3): Decimal(3), (3, 2): Decimal("0.3333333333"),
             (1, 3): Decimal(6), (3, 1): Decimal("0.1666666666")}
    assert find_cycle(table) is None
    # 3→1 at 0.17: 6 × 0.17 > 1 already; 0.1666666667 keeps 1→3→1 at 1.0000000002 > 1; and
    # through 2: 1→2→3→1 = 2 × 3 × 0.1666666667 > 1.
    with pytest.raises(errors.RateArbitrage) as refused:
        check_set(table, 3, 1, Decimal("0.1666666667"))
    assert refused.value.detail["max_rate"] == "0.1666666666"
    # Lower 1→3 a lot: the pair alone would allow 3→1 up to 0.2, but 1→2→3 still prices 1→3 at 6.
    table[(1, 3)] = Decimal(5)
    with pytest.raises(errors.RateArbitrage) as refused:
        check_set(table, 3, 1, Decimal("0.19"))
    assert refused.value.detail["cycle"][0] == 3 and len(refused.value.detail["cycle"]) == 4
    assert best_path(table, 1, 3) == (Fraction(6), [1, 2, 3])
