"""Exchange rates as money rules: how a stored rate prices an amount, and how a provider's quotes
against one base currency become a rate for every ordered pair. No I/O here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from walletd.domain import errors
from walletd.domain.money import convert, quantize_rate

ONE = Decimal(1)


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
        return rate, converted


def cross_rates(base: str, rates: dict[str, Decimal]) -> dict[tuple[str, str], Decimal]:
    """Rates for every ordered pair, derived through the base: rate(a→b) = rates[b] / rates[a],
    rounded half-even to 10 places."""
    values = {code: Decimal(str(value)) for code, value in rates.items()}
    values.setdefault(base, ONE)
    return {
        (a, b): quantize_rate(values[b] / values[a])
        for a in values
        for b in values
        if a != b and values[a] > 0 and values[b] > 0
    }
