"""The exchange desk never loses on a round trip.

A conversion is amount × rate, truncated, so conversions that end in the currency they started
from return at most amount × the product of the rates along their cycle. The desk therefore never
pays out more than it took in if every cycle of stored rates has a product of at most 1; for two
currencies that is rate(a→b) × rate(b→a) ≤ 1, and the same holds for three or more (a→b→c→a).

Checked exactly, on integers: a rate has 10 places, so a product of k rates is an integer over
10^(10k). Path products are kept scaled by 10^(10·K), K above the longest simple path, which keeps
every product along a simple path an exact integer. The best (largest-product) paths come from
Bellman-Ford, which stops as soon as a round changes nothing (a few rounds on a real table).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Context, Decimal
from fractions import Fraction

from walletd.domain import errors
from walletd.domain.money import fmt

Pair = tuple[int, int]
_UNIT = 10**10


def units(rate: Decimal) -> int:
    """A rate with at most 10 places as an integer count of 1e-10."""
    numerator, denominator = rate.as_integer_ratio()
    scaled, rest = divmod(numerator * _UNIT, denominator)
    if rest:
        raise ValueError(f"rate {rate} has more than 10 decimal places")
    return scaled


def from_units(count: int) -> Decimal:
    return Decimal(f"{count}E-10")  # exact, whatever the number of digits


@dataclass(frozen=True)
class Cycle:
    currencies: tuple[int, ...]  # first == last
    product: Fraction

    def describe(self) -> str:
        return "→".join(str(c) for c in self.currencies)


def _graph(rates: Mapping[Pair, Decimal]) -> tuple[list[int], dict[int, list[tuple[int, int]]]]:
    nodes = sorted({c for pair in rates for c in pair})
    edges: dict[int, list[tuple[int, int]]] = {node: [] for node in nodes}
    for (a, b), rate in rates.items():
        edges[a].append((b, units(rate)))
    return nodes, edges


def _relax(nodes, edges, best, pred, rounds: int) -> int | None:
    """Bellman-Ford on products; returns a node still improving after `rounds` rounds (a cycle
    with a product above 1 feeds it), or None once a round changes nothing. Each round relaxes
    only the edges of the currencies the previous round improved."""
    active = [u for u in nodes if u in best]
    for _ in range(rounds):
        improved: dict[int, None] = {}
        for u in active:
            value = best[u]
            for v, rate in edges[u]:
                candidate = value * rate // _UNIT
                if candidate > best.get(v, -1):
                    best[v], pred[v] = candidate, u
                    improved[v] = None
        if not improved:
            return None
        active = list(improved)
    return active[-1]


def _product(rates: Mapping[Pair, Decimal], path: list[int]) -> Fraction:
    product = Fraction(1)
    for a, b in zip(path, path[1:], strict=False):
        product *= Fraction(rates[(a, b)])
    return product


def best_path(rates: Mapping[Pair, Decimal], source: int, target: int) -> tuple[Fraction, list[int]] | None:
    """The largest product of rates along a path source→…→target, and the path; None if target
    cannot be reached. Exact when no cycle of `rates` exceeds 1 (else an upper bound)."""
    nodes, edges = _graph(rates)
    if source not in edges or target not in edges:
        return None
    scale = _UNIT ** (len(nodes) + 1)
    best: dict[int, int] = {source: scale}
    pred: dict[int, int] = {}
    _relax(nodes, edges, best, pred, len(nodes) - 1)
    if target not in best:
        return None
    path, node = [target], target
    while node != source and len(path) <= len(nodes):
        node = pred[node]
        path.append(node)
    return Fraction(best[target], scale), path[::-1]


def find_cycle(rates: Mapping[Pair, Decimal]) -> Cycle | None:
    """A cycle whose product exceeds 1, or None when the desk cannot lose on any round trip."""
    nodes, edges = _graph(rates)
    if not nodes:
        return None
    scale = _UNIT ** (len(nodes) + 2)
    best = {node: scale for node in nodes}  # every currency starts a path of product 1
    pred: dict[int, int] = {}
    node = _relax(nodes, edges, best, pred, len(nodes) + 1)
    if node is None:
        return None
    for _ in range(len(nodes)):  # walk back into the cycle that keeps improving
        node = pred[node]
    cycle, current = [node], pred[node]
    while current != node:
        cycle.append(current)
        current = pred[current]
    cycle.append(node)
    cycle.reverse()
    return Cycle(tuple(cycle), _product(rates, cycle))


def check_set(rates: Mapping[Pair, Decimal], from_currency: int, to_currency: int, rate: Decimal) -> None:
    """RateArbitrage if storing rate(from→to) lets any cycle through it exceed 1. A rate no higher
    than the stored one shrinks every cycle through it, so it is always allowed."""
    stored = rates.get((from_currency, to_currency))
    if stored is not None and rate <= stored:
        return
    others = {pair: value for pair, value in rates.items() if pair != (from_currency, to_currency)}
    found = best_path(others, to_currency, from_currency)
    if found is None:
        return
    product, path = found
    if Fraction(rate) * product <= 1:
        return
    highest = from_units(int(Fraction(1) / product * _UNIT))  # floor: the highest rate still allowed
    reverse = rates.get((to_currency, from_currency))
    cycle = [from_currency, *path]
    if len(path) == 2:
        message = (f"rate({from_currency}→{to_currency}) × the reverse rate {fmt(reverse or Decimal(0))} "
                   f"would exceed 1: a round trip would gain at the exchange desk's expense; at most "
                   f"{fmt(highest)} is allowed")
    else:
        message = (f"rate({from_currency}→{to_currency}) would let the round trip "
                   f"{'→'.join(map(str, cycle))} exceed 1 at the exchange desk's expense; at most {fmt(highest)} "
                   "is allowed")
    raise errors.RateArbitrage(message, reverse_rate=None if reverse is None else fmt(reverse),
                               max_rate=fmt(highest), cycle=cycle)


def check_table(rates: Mapping[Pair, Decimal]) -> None:
    """RateArbitrage naming a cycle whose product exceeds 1, if the table has one."""
    cycle = find_cycle(rates)
    if cycle is None:
        return
    a, b = cycle.currencies[0], cycle.currencies[1]
    reverse = rates.get((b, a))
    ratio = Context(prec=20).divide(Decimal(cycle.product.numerator), Decimal(cycle.product.denominator))
    raise errors.RateArbitrage(
        f"the round trip {cycle.describe()} would return {ratio} times what it started with, at the exchange "
        "desk's expense", reverse_rate=None if reverse is None else fmt(reverse), cycle=list(cycle.currencies))
