"""Hypothesis strategies shared by the money and planning property tests."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import strategies as st

from tests.oracles import SCALE, UNIT, ticks
from walletd.domain.money import MAX_AMOUNT

# Every valid amount: 1e-10 up to the largest accepted, on the 10-place grid.
amounts = st.integers(min_value=1, max_value=ticks(MAX_AMOUNT)).map(lambda n: Decimal(n) * UNIT)
rates = st.integers(min_value=1, max_value=10**12 * SCALE).map(lambda n: Decimal(n) * UNIT)
# A commission rate is in [0, 1) with 10 places.
commission_rates = st.integers(min_value=0, max_value=SCALE - 1).map(lambda n: Decimal(n) * UNIT)
