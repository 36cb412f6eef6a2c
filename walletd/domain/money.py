"""Exact money arithmetic: amounts are Decimal with 10 fractional digits, never float."""

from __future__ import annotations

import re
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Context, Decimal, DivisionByZero, InvalidOperation, Overflow

from walletd.domain.errors import InvalidAmount

SCALE = Decimal("1E-10")
# The largest accepted amount in one request: 10^15 units. Balances are NUMERIC(38,10), so
# even sums of many maximal amounts converted at any stored rate (< 10^20) cannot overflow.
MAX_AMOUNT = Decimal("1000000000000000")
# 60 digits hold every product walletd forms exactly (an amount of at most 26 digits, 10^15 with
# 10 places, times a rate of at most 30), so money is rounded only where the code says so
# (quantize with a named rounding mode). The context traps what must never pass
# silently: an invalid operation (NaN), division by zero and overflow. Inexact is not trapped: the
# quantize calls round on purpose.
_CTX = Context(prec=60, traps=[InvalidOperation, DivisionByZero, Overflow])
# What a client may write: ASCII digits, one optional point, an optional exponent. Decimal() alone
# would also take "1_000", Arabic-Indic digits and "NaN"; a payment API should not guess at those.
_DECIMAL_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def parse_amount(raw: object) -> Decimal:
    """Parse a client amount exactly ("0.05", 0.05, 1e-3) and normalise it to 10 places."""
    if isinstance(raw, bool) or raw is None:
        raise InvalidAmount()
    if isinstance(raw, float):
        # JSON numbers are parsed as Decimal by our loader; a float here came from elsewhere,
        # so take its shortest repr rather than its binary expansion.
        raw = repr(raw)
    if isinstance(raw, (int, Decimal)):
        value = Decimal(raw)
    elif isinstance(raw, str):
        text = raw.strip()
        if not text or len(text) > 64 or not _DECIMAL_TEXT.fullmatch(text):
            raise InvalidAmount()
        try:
            value = Decimal(text)
        except InvalidOperation:
            raise InvalidAmount() from None
    else:
        raise InvalidAmount()
    # Cheap bounds first: quantizing a huge magnitude (say -1e100) would overflow the context
    # and raise InvalidOperation instead of InvalidAmount.
    if not value.is_finite() or value <= 0 or value > MAX_AMOUNT + 1:
        raise InvalidAmount()
    value = value.quantize(SCALE, rounding=ROUND_HALF_EVEN, context=_CTX)
    # The bounds apply to the normalised amount, like the zero check does.
    if value <= 0 or value > MAX_AMOUNT:
        raise InvalidAmount()
    return value


def convert(amount: Decimal, rate: Decimal) -> Decimal:
    """amount × rate truncated to 10 places; the quote and the transfer both use this."""
    return _CTX.multiply(amount, rate).quantize(SCALE, rounding=ROUND_DOWN, context=_CTX)


def commission(amount: Decimal, rate: Decimal) -> Decimal:
    """The commission is rounded once; the parts (amount − commission, commission) sum exactly."""
    return _CTX.multiply(amount, rate).quantize(SCALE, rounding=ROUND_HALF_EVEN, context=_CTX)


def quantize_rate(rate: Decimal) -> Decimal:
    return rate.quantize(SCALE, rounding=ROUND_HALF_EVEN, context=_CTX)


def fmt(value: Decimal) -> str:
    """Fixed-point string with 10 places: never exponent notation."""
    return f"{value.quantize(SCALE, context=_CTX):f}"
