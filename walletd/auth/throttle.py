"""Login throttling: failed password checks counted per username and per client address.

Once a username has `max_failures` failures in the window, every login for it answers 429 with
`Retry-After` (the rest of the window) and no password is checked, so guessing costs the
attacker the window, not us a hash. The address limit is much higher: one locked-out user does
not lock out the others behind the same NAT or proxy, but one address cannot sweep many
usernames. A success resets its username's counter (never the address's: a valid account of the
attacker's own must not buy more guesses). Counters live in PostgreSQL (persistence/
login_failures.py), so the limits hold across `--workers` processes and hosts.

Check and record are two statements: guesses already past the check when the limit is reached
still finish, so a burst can exceed the limit by at most the hash pool's queue (WALLETD_HASH_QUEUE).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from aiohttp import web

from walletd.config import ConfigError
from walletd.persistence import login_failures
from walletd.persistence.db import FairPool


class TooManyAttempts(web.HTTPTooManyRequests):
    code = "too_many_attempts"

    def __init__(self, retry_after: float) -> None:
        seconds = max(1, math.ceil(retry_after))
        super().__init__(reason=f"too many failed logins, retry in {seconds} s",
                         headers={"Retry-After": str(seconds)})


class LoginThrottle:
    """`pseudonym` turns a typed username into what is stored (walletd.keys.ServerKeys.pseudonym:
    an HMAC under a server key, since people type passwords into the name field)."""

    def __init__(self, max_failures: int, max_failures_per_address: int, window_seconds: int,
                 pseudonym: Callable[[str], str]) -> None:
        self.pseudonym = pseudonym
        for name, value in (("WALLETD_LOGIN_MAX_FAILURES", max_failures),
                            ("WALLETD_LOGIN_MAX_FAILURES_PER_ADDRESS", max_failures_per_address),
                            ("WALLETD_LOGIN_WINDOW_SECONDS", window_seconds)):
            if value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")
        self.limits = {"username": max_failures, "address": max_failures_per_address}
        self.window_seconds = window_seconds
        self._next_prune = 0.0

    async def check(self, pool: FairPool, username: str | None, address: str) -> bool:
        """Raises TooManyAttempts if either counter is at its limit; True if the username has failures
        on record (so a success has something to reset). username None: a credential with no user
        (the operator key), counted per address only, so nobody can lock the operator out."""
        counts = await login_failures.current(pool, self._key(username), address, self.window_seconds)
        blocked = [remaining for scope, (failures, remaining) in counts.items() if failures >= self.limits[scope]]
        if blocked:
            raise TooManyAttempts(max(blocked))
        return "username" in counts

    async def failed(self, pool: FairPool, username: str | None, address: str) -> None:
        await login_failures.record_failure(pool, self._key(username), address, self.window_seconds)
        if time.monotonic() >= self._next_prune:  # expired rows go once per window per process
            self._next_prune = time.monotonic() + self.window_seconds
            await login_failures.prune(pool, self.window_seconds)

    async def succeeded(self, pool: FairPool, username: str) -> None:
        await login_failures.reset_username(pool, self.pseudonym(username))

    def _key(self, username: str | None) -> str | None:
        return None if username is None else self.pseudonym(username)

