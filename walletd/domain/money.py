"""Exact money arithmetic: amounts are Decimal with 10 fractional digits, never float."""

from __future__ import annotations

import re
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Context, Decimal, DivisionByZero, InvalidOperation, Overflow

from walletd.domain.errors import InvalidAmount

SCALE = Decimal("1E-10")
# The largest accepted amount in one request, and the largest a conversion may produce: 10^15
# units. Balances are NUMERIC(38,10) (below 10^28), so only 10^13 maximal movements could fill one.
MAX_AMOUNT = Decimal("1000000000000000")
# 60 digits hold every product walletd forms exactly (an amount of at most 26 digits, 10^15 with
# 10 places, times a rate of at most 30), so money is rounded only where the code says so
# (quantize with a named rounding mode). The context traps what must never pass
# silently: an invalid operation (NaN), division by zero and overflow. Inexact is not trapped: the
# quantize calls round on purpose.
_CTX = Context(prec=60, traps=[InvalidOperation, DivisionByZero, Overflow])
_MAX_TEXT = 64
_NOT_A_NUMBER = "not a number (a decimal string such as \"10.50\", or a JSON number)"
_NOT_POSITIVE = "amount must be greater than 0"
_TOO_LARGE = f"amount must be at most {MAX_AMOUNT:f}"
# What a client may write: ASCII digits, one optional point, an optional exponent. Decimal() alone
# would also take "1_000", Arabic-Indic digits and "NaN"; a payment API should not guess at those.
_DECIMAL_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def parse_amount(raw: object) -> Decimal:
    """Parse a client amount exactly ("0.05", 0.05, 1e-3) and normalise it to 10 places."""
    if isinstance(raw, bool) or raw is None:
        raise InvalidAmount(_NOT_A_NUMBER)
    if isinstance(raw, float):
        # JSON numbers are parsed as Decimal by our loader; a float here came from elsewhere,
        # so take its shortest repr rather than its binary expansion.
        raw = repr(raw)
    if isinstance(raw, (int, Decimal)):
        value = Decimal(raw)
    elif isinstance(raw, str):
        text = raw.strip()
        if len(text) > _MAX_TEXT:
            raise InvalidAmount(f"amount has more than {_MAX_TEXT} characters")
        if not text or not _DECIMAL_TEXT.fullmatch(text):
            raise InvalidAmount(_NOT_A_NUMBER)
        try:
            value = Decimal(text)
        except InvalidOperation:
            raise InvalidAmount(_NOT_A_NUMBER) from None
    else:
        raise InvalidAmount(_NOT_A_NUMBER)
    if not value.is_finite():
        raise InvalidAmount(_NOT_A_NUMBER)
    # Cheap bounds first: quantizing a huge magnitude (say -1e100) would overflow the context
    # and raise InvalidOperation instead of InvalidAmount.
    if value <= 0:
        raise InvalidAmount(_NOT_POSITIVE)
    if value > MAX_AMOUNT + 1:
        raise InvalidAmount(_TOO_LARGE)
    value = value.quantize(SCALE, rounding=ROUND_HALF_EVEN, context=_CTX)
    # The bounds apply to the normalised amount, like the zero check does.
    if value <= 0:
        raise InvalidAmount("amount rounds to 0 at 10 decimal places")
    if value > MAX_AMOUNT:
        raise InvalidAmount(_TOO_LARGE)
    return value


def convert(amount: Decimal, rate: Decimal) -> Decimal:
    """amount × rate truncated to 10 places; the quote and the transfer both use this."""
    return _CTX.multiply(amount, rate).quantize(SCALE, rounding=ROUND_DOWN, context=_CTX)


def commission(amount: Decimal, rate: Decimal) -> Decimal:
    """The commission is rounded once; the parts (amount − commission, commission) sum exactly."""
    return _CTX.multiply(amount, rate).quantize(SCALE, rounding=ROUND_HALF_EVEN, context=_CTX)


def rate_toward_desk(rate: Decimal) -> Decimal:
    """A derived rate cut (never rounded up) to 10 places: the exchange desk, which pays out the
    converted amount, never gives more than the exact quotient."""
    return rate.quantize(SCALE, rounding=ROUND_DOWN, context=_CTX)


def fmt(value: Decimal) -> str:
    """Fixed-point string with 10 places: never exponent notation."""
    return f"{value.quantize(SCALE, context=_CTX):f}"
