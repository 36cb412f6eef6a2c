"""Property tests for the money rules (walletd.domain.money): parsing, conversion, commission,
formatting. Pure code, no I/O. The expected values come from tests.oracles (exact fractions,
rounding on integers), independent of the implementation.
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.oracles import SCALE, UNIT, commission_fee, converted, half_even, ticks
from tests.unit.strategies import amounts, commission_rates, rates
from walletd.domain import errors
from walletd.domain.money import MAX_AMOUNT, commission, convert, fmt, parse_amount

# ---- parse_amount -----------------------------------------------------------------------------

finite_decimals = st.decimals(allow_nan=False, allow_infinity=False, min_value=Decimal("-1e17"),
                              max_value=Decimal("1e17"))
small_decimals = st.decimals(allow_nan=False, allow_infinity=False, min_value=Decimal("-1"),
                             max_value=Decimal("1"), places=14)
# Text the way a client writes it: digits, an optional fraction, an optional exponent.
numeric_text = st.builds(
    lambda sign, whole, frac, exp: (f"{sign}{whole}" + (f".{frac}" if frac else "")
                                    + (f"e{exp}" if exp is not None else "")),
    st.sampled_from(["", "-", "+"]),
    st.text("0123456789", min_size=1, max_size=18),
    st.text("0123456789", max_size=14),
    st.one_of(st.none(), st.integers(-30, 30)),
)


def expected_parse(value: Decimal) -> Decimal | None:
    if not value.is_finite():
        return None
    rounded = half_even(Fraction(value))
    if rounded <= 0 or rounded > Fraction(MAX_AMOUNT):
        return None
    return Decimal(rounded.numerator) / Decimal(rounded.denominator)


def check_parse(raw: object, value: Decimal) -> None:
    expected = expected_parse(value)
    if expected is None:
        with pytest.raises(errors.InvalidAmount):
            parse_amount(raw)
    else:
        parsed = parse_amount(raw)
        assert parsed == expected
        assert parsed.as_tuple().exponent == -10, "amounts always carry exactly 10 places"


@settings(max_examples=400, deadline=None)
@given(finite_decimals)
def test_parse_amount_rounds_half_even_to_ten_places(value):
    check_parse(str(value), value)
    check_parse(value, value)


@settings(max_examples=300, deadline=None)
@given(small_decimals)
def test_parse_amount_tiny_values_round_half_even(value):
    check_parse(str(value), value)


@settings(max_examples=400, deadline=None)
@given(numeric_text)
def test_parse_amount_of_client_text(text):
    check_parse(text, Decimal(text))


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=-(10**20), max_value=10**20))
def test_parse_amount_of_integers(value):
    check_parse(value, Decimal(value))


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=SCALE * 100), st.sampled_from([1, 3, 5, 7, 9]))
def test_exact_halves_go_to_the_even_neighbour(units, half_digit):
    # units·1e-10 + half_digit·1e-11 with half_digit = 5 is an exact tie.
    raw = Decimal(units) * UNIT + Decimal(half_digit) * Decimal("1E-11")
    parsed = parse_amount(str(raw))
    if half_digit == 5:
        assert ticks(parsed) == (units if units % 2 == 0 else units + 1)
    else:
        assert ticks(parsed) == (units if half_digit < 5 else units + 1)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=80), st.text("0123456789.eE+-_ ", max_size=40)))
def test_parse_amount_of_any_text_raises_only_invalid_amount(text):
    try:
        parsed = parse_amount(text)
    except errors.InvalidAmount:
        return
    # Accepted text is plain ASCII decimal notation, and its value is the exact half-even rounding.
    assert text.strip().isascii() and "_" not in text
    assert parsed == expected_parse(Decimal(text.strip()))


@pytest.mark.parametrize("raw, expected", [
    ("0.05", "0.0500000000"), (Decimal("0.05"), "0.0500000000"), (0.05, "0.0500000000"), ("1e-3", "0.0010000000"),
    (" 7 ", "7.0000000000"), (3, "3.0000000000"), ("0.00000000015", "0.0000000002"),
    ("0.00000000025", "0.0000000002"), ("0.00000000035", "0.0000000004"), ("0.000000000150001", "0.0000000002"),
    ("1000000000000000", "1000000000000000.0000000000"),
    ("1000000000000000.00000000004", "1000000000000000.0000000000"),
])
def test_parse_amount_examples(raw, expected):
    assert fmt(parse_amount(raw)) == expected


@pytest.mark.parametrize("raw", [
    "0", "0.0", "-0", "-1", "-0.0000000001", "0.00000000005", "0.00000000004999", "NaN", "nan", "sNaN", "-NaN",
    "Infinity", "-Infinity", "inf", "1e400", "1e16", "1000000000000000.0000000001", "1000000000000000.00000000006",
    "-1e100", "-1e70", "1e-1000000000000", "", "   ", "abc", "1,5", "0x10", "1" * 65, None, True, False,
    float("nan"), float("inf"), 0, -5, [], {}, Decimal("-1e100"), "1_000", "\u0661\u0662\u0663", "+-1", "1e",
    "e5", "1.2.3", "--1", "1 000", "Infinity", "0E+5",
])
def test_parse_amount_rejects(raw):
    with pytest.raises(errors.InvalidAmount):
        parse_amount(raw)


# ---- convert and commission -------------------------------------------------------------------

@settings(max_examples=500, deadline=None)
@given(amounts, rates)
def test_convert_truncates_to_ten_places(amount, rate):
    credited = convert(amount, rate)
    assert credited == converted(amount, rate)
    assert 0 <= Fraction(amount) * Fraction(rate) - Fraction(credited) < Fraction(1, SCALE)
    assert credited.as_tuple().exponent == -10


@settings(max_examples=500, deadline=None)
@given(amounts, commission_rates)
def test_commission_parts_sum_exactly(amount, rate):
    fee = commission(amount, rate)
    assert fee == commission_fee(amount, rate)
    net = amount - fee
    assert net + fee == amount
    assert ticks(net) + ticks(fee) == ticks(amount)
    assert 0 <= fee <= amount and net >= 0


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=1, max_value=10**6), st.sampled_from(["0.5", "0.25", "0.05", "0.02", "0.01", "0.125"]))
def test_commission_ties_go_to_even(units, rate):
    # Small amounts at round rates land exactly on half a unit often (0.5 × an odd unit count).
    amount = Decimal(units) * UNIT
    fee = commission(amount, Decimal(rate))
    assert fee == commission_fee(amount, rate)
    assert ticks(amount - fee) + ticks(fee) == units


@pytest.mark.parametrize("amount, rate, fee", [
    ("100", "0.01", "1.0000000000"), ("0.00000005", "0.01", "0.0000000005"), ("0.00000015", "0.01", "0.0000000015"),
    ("0.0000000150", "0.01", "0.0000000002"), ("0.0000000250", "0.01", "0.0000000002"),
    ("0.0000000001", "0.02", "0.0000000000"),
])
def test_commission_examples(amount, rate, fee):
    assert fmt(commission(Decimal(amount), Decimal(rate))) == fee


def test_fmt_never_uses_exponent_notation():
    assert fmt(Decimal("0E-10")) == "0.0000000000"
    assert fmt(Decimal("1E+3")) == "1000.0000000000"
    assert fmt(Decimal("-5E-7")) == "-0.0000005000"
