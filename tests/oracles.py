"""The money rules recomputed exactly, for every test that needs an expected amount.

Independent of walletd's implementation: values become Fractions (exact), rounding is done on
integers with Python's round() (half to even) and floor/ceil (truncation), never with
Decimal.quantize, whose context precision could round an intermediate product. The rules are the
ones docs/guarantees.md and docs/api.md document: amounts have 10 places; a commission is amount × rate rounded half to
even (the postings table); a conversion is amount × rate truncated to 10 places; a cross rate is
the quotient of two provider rates cut to 10 places (toward the exchange desk).
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

SCALE = 10**10
UNIT = Decimal("1E-10")
# The default commission rates (docs/api.md, /service/commission-rates): what an unconfigured currency charges.
DEPOSIT_RATE = Decimal("0.01")
WITHDRAW_RATE = Decimal("0.02")

Number = Decimal | str | int | Fraction


def exact(value: Number) -> Fraction:
    return value if isinstance(value, Fraction) else Fraction(Decimal(value))


def half_even(value: Fraction) -> Fraction:
    """Exact value rounded to 10 places, half to even (round() on a Fraction is half-even)."""
    return Fraction(round(value * SCALE), SCALE)


def truncated(value: Fraction) -> Fraction:
    """Exact value cut to 10 places toward zero."""
    scaled = value * SCALE
    return Fraction(math.floor(scaled) if scaled >= 0 else math.ceil(scaled), SCALE)


def ticks(value: Decimal) -> int:
    """An amount with 10 places as an integer number of 1e-10 units (exactly)."""
    scaled = Fraction(value) * SCALE
    assert scaled.denominator == 1, value
    return int(scaled)


def to_decimal(value: Fraction) -> Decimal:
    """A value already on the 10-place grid, as the Decimal walletd would answer."""
    scaled = value * SCALE
    assert scaled.denominator == 1, value
    return Decimal(f"{int(scaled)}E-10")  # the constructor is exact; scaleb would round to 28 digits


def commission_fee(amount: Number, rate: Number = DEPOSIT_RATE) -> Decimal:
    """The commission on amount: amount × rate, rounded half to even to 10 places."""
    return to_decimal(half_even(exact(amount) * exact(rate)))


def net_of_commission(amount: Number, rate: Number = DEPOSIT_RATE) -> Decimal:
    """What reaches the user (deposit) or the external wallet (withdrawal): amount less the commission."""
    return to_decimal(exact(amount)) - commission_fee(amount, rate)


def converted(amount: Number, rate: Number) -> Decimal:
    """A transfer's credited amount: amount × rate, truncated to 10 places."""
    return to_decimal(truncated(exact(amount) * exact(rate)))


def cross_rate(rate_from: Number, rate_to: Number) -> Decimal:
    """The stored rate from one currency to another, both quoted against the provider's base: cut,
    never rounded up, so the desk never pays more than the exact quotient."""
    return to_decimal(truncated(exact(rate_to) / exact(rate_from)))


def seed_rate(from_currency_id: int, to_currency_id: int) -> Decimal:
    """The rate a fresh database holds for a pair: walletd/data/seed.json's quotes against its
    base, crossed as above (1 within one currency)."""
    if from_currency_id == to_currency_id:
        return Decimal(1)
    seed = json.loads((Path(__file__).resolve().parents[1] / "walletd" / "data" / "seed.json").read_text())
    codes = {c["id"]: c["code"] for c in seed["currencies"]}
    return cross_rate(seed["rates"][codes[from_currency_id]], seed["rates"][codes[to_currency_id]])
