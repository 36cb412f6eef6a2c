"""The requests this process is serving now, and a wait for a moment with none.

A background job that only checks (the self-audit) takes its turns of the event loop and of the
machine's cores from the requests it shares them with; in a burst those requests queue behind it.
It waits for a quiet moment instead, within a budget per pass, so under sustained load it still
runs, at most that budget late (docs/journal-integrity.md)."""

from __future__ import annotations

import asyncio
import time

from walletd import metrics

POLL_SECONDS = 0.02  # how often a waiting job looks again: a short fraction of one answer's time in a burst


class RequestLoad:
    def __init__(self) -> None:
        self.in_flight = 0  # only the event loop thread touches it


class QuietWait:
    """Waits, each time it is awaited, until no request is in flight, for at most `budget` seconds
    over all its waits; once spent, it returns at once. The self-audit's only: what it waits is
    counted in walletd_audit_waited_seconds_total."""

    def __init__(self, load: RequestLoad | None, budget: float) -> None:
        self.load = load
        self.budget = budget

    async def __call__(self) -> None:
        if self.load is None or not self.load.in_flight:
            return
        started = time.monotonic()
        deadline = started + self.budget
        while self.load.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(POLL_SECONDS)
        waited = time.monotonic() - started
        self.budget = max(0.0, self.budget - waited)
        metrics.AUDIT_WAITED.inc(waited)
