"""The database breaker: a circuit breaker on the database, one per app. Failures to reach the
database open it, any answer from the database closes it; while it is open it is also the
admission gate of money commands and tells its listeners (the group committer) that the outage
lasts. One warning when the database goes away and one line when it is back, instead of a
traceback per request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from walletd.logs import get_logger

log = get_logger("walletd.db")


class DatabaseBreaker:
    # Once the database has been unreachable for FAIL_FAST_AFTER seconds, new money commands are
    # refused at once (503, nothing moved) instead of queueing behind batches that are still
    # finding out what happened to their commits; one command per PROBE_EVERY goes through to
    # notice the recovery (and /ready probes too). Listeners are told once the outage has lasted
    # that long, and every PROBE_EVERY while it lasts, so they can refuse what they hold but never sent.
    FAIL_FAST_AFTER = 1.0
    PROBE_EVERY = 0.5

    def __init__(self) -> None:
        self.since: float | None = None  # when the database went away; None while it answers
        self.failures = 0
        self._last_probe = 0.0
        self._listeners: set[Callable[[], None]] = set()
        self._timer: asyncio.TimerHandle | None = None

    def while_open(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call listener while an outage lasts; returns the function that unregisters it."""
        self._listeners.add(listener)
        return lambda: self._listeners.discard(listener)

    def _schedule(self, delay: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a CLI command): nobody to tell
            return
        if self._timer is None:
            self._timer = loop.call_later(delay, self._tell_listeners)

    def _tell_listeners(self) -> None:
        self._timer = None
        if self.since is None:
            return
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:  # noqa: BLE001 - one listener's bug must not stop the others
                log.exception("db.outage_listener_failed")
        self._schedule(self.PROBE_EVERY)

    def admit(self) -> bool:
        """Whether a money command may be queued now: always while the database answers, and
        during an outage only in its first FAIL_FAST_AFTER seconds or as a probe."""
        if self.since is None:
            return True
        now = time.monotonic()
        if now - self.since < self.FAIL_FAST_AFTER or now - self._last_probe >= self.PROBE_EVERY:
            self._last_probe = now
            return True
        self.failures += 1
        return False

    def failed(self, exc: BaseException) -> None:
        """The database could not be reached: opens the breaker (the first failure logs it)."""
        self.failures += 1
        if self.since is None:
            self.since = time.monotonic()
            log.warning("db.unavailable", error=f"{type(exc).__name__}: {exc}"[:300])
            self._schedule(self.FAIL_FAST_AFTER)

    def succeeded(self) -> None:
        """The database answered: closes the breaker (logging how long it was open)."""
        if self.since is not None:
            log.warning("db.recovered", seconds=round(time.monotonic() - self.since, 2), failed_requests=self.failures)
            self.since, self.failures = None, 0
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
