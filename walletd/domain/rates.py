"""Exchange rates as money rules: how a stored rate prices an amount, and how a provider's quotes
against one base currency become a rate for every ordered pair. No I/O here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_FLOOR, Context, Decimal

from walletd.domain import errors
from walletd.domain.money import MAX_AMOUNT, convert, fmt, rate_toward_desk

ONE = Decimal(1)
# The quotient of two provider quotes, rounded down (never up past a 10-place step) before it is cut.
_CONTEXT = Context(prec=60, rounding=ROUND_FLOOR)


@dataclass(frozen=True)
class RateBook:
    """Stored rates with their age; the quote and the transfer both price through rate()."""

    rates: dict[tuple[int, int], tuple[Decimal, datetime]]
    now: datetime
    max_age: timedelta | None = None

    def rate(self, from_currency: int, to_currency: int) -> Decimal:
        if from_currency == to_currency:
            return ONE
        found = self.rates.get((from_currency, to_currency))
        if found is None:
            raise errors.RateNotFound()
        rate, updated_at = found
        if self.max_age is not None and self.now - updated_at > self.max_age:
            raise errors.RateStale(updated_at=updated_at.isoformat())
        return rate

    def quote(self, from_currency: int, to_currency: int, amount: Decimal) -> tuple[Decimal, Decimal]:
        rate = self.rate(from_currency, to_currency)
        converted = amount if rate == ONE and from_currency == to_currency else convert(amount, rate)
        if converted <= 0:
            raise errors.InvalidAmount("amount converts to zero")
        if converted > MAX_AMOUNT:
            # The converted amount is an amount too: past the bound it could overflow NUMERIC(38,10).
            raise errors.InvalidAmount(f"amount converts to more than {MAX_AMOUNT:f}")
        return rate, converted


def cross_rates(base: str, rates: dict[str, Decimal]) -> dict[tuple[str, str], Decimal]:
    """Rates for every ordered pair, derived through the base: rate(a→b) = rates[b] / rates[a], cut
    to 10 places toward the desk. Every cycle's product is then at most the exact one, 1: no
    round trip through the desk returns more than it started with."""
    values = {code: Decimal(str(value)) for code, value in rates.items()}
    values.setdefault(base, ONE)
    return {
        (a, b): rate_toward_desk(_CONTEXT.divide(values[b], values[a]))
        for a in values
        for b in values
        if a != b and values[a] > 0 and values[b] > 0
    }


def check_change(changes: dict[tuple[int, int], tuple[Decimal, Decimal]], max_change: Decimal) -> None:
    """RateChangeTooLarge if a pair moves further than max_change (a fraction of its stored rate)
    from it; changes: pair -> (stored, new). A pair with no stored rate is not checked."""
    too_far = {pair: (old, new) for pair, (old, new) in changes.items()
               if abs(_CONTEXT.subtract(new, old)) > _CONTEXT.multiply(old, max_change)}
    if not too_far:
        return
    (a, b), (old, new) = next(iter(too_far.items()))
    more = f" (and {len(too_far) - 1} more pairs)" if len(too_far) > 1 else ""
    raise errors.RateChangeTooLarge(
        f"rate({a}→{b}) {fmt(new)} is more than {max_change:%} away from the stored {fmt(old)}{more}; "
        "send force=true if it is right", max_change=str(max_change),
        pairs=[{"from_currency": x, "to_currency": y, "stored": fmt(o), "rate": fmt(n)}
               for (x, y), (o, n) in sorted(too_far.items())[:20]])
