"""argon2id password hashing on a small thread pool of its own, with a bounded queue.

Hashing never blocks the event loop, and it cannot be queued without bound: at most `queue_limit`
hashes run or wait at once; one more is refused at once (`Overloaded`: 503 + Retry-After), so a
crowd of guessers cannot make a real user's login wait seconds behind their hashes. One client
address holds at most `per_address` of those places, so a crowd from one address retrying its
refusals cannot keep everybody else's logins refused either.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from walletd.config import ConfigError
from walletd.domain.errors import Overloaded

_hasher = PasswordHasher()  # argon2id with the library's RFC 9106 low-memory profile
# Verifying against this when the user does not exist keeps the timing of a miss like a hit.
_DUMMY_HASH = _hasher.hash("walletd-timing-equaliser")


def _check(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


class PasswordPool:
    """argon2-cffi releases the GIL while hashing, so `threads` hashes really run in parallel."""

    def __init__(self, threads: int, queue_limit: int, per_address: int) -> None:
        if threads < 1:
            raise ConfigError(f"WALLETD_HASH_THREADS must be at least 1, got {threads}")
        if queue_limit < threads:
            raise ConfigError(f"WALLETD_HASH_QUEUE must be at least WALLETD_HASH_THREADS ({threads}), "
                              f"got {queue_limit}")
        if not 1 <= per_address <= queue_limit:
            raise ConfigError(f"WALLETD_HASH_QUEUE_PER_ADDRESS must be 1..WALLETD_HASH_QUEUE ({queue_limit}), "
                              f"got {per_address}")
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="walletd-argon2")
        self.queue_limit, self.per_address = queue_limit, per_address
        self.in_flight = 0  # running + waiting; only the event loop thread touches these counters
        self._by_address: dict[str, int] = {}
        self.refused = 0
        self.peak = 0  # the most ever in flight: never above queue_limit
        self.hashes = 0  # hashes computed or verified: a login for an unknown user costs one too

    async def _run(self, address: str, func, *args):
        if self.in_flight >= self.queue_limit or self._by_address.get(address, 0) >= self.per_address:
            self.refused += 1
            raise Overloaded("too many logins in progress, retry later")
        self.in_flight += 1
        self._by_address[address] = self._by_address.get(address, 0) + 1
        self.peak = max(self.peak, self.in_flight)
        self.hashes += 1
        try:
            # A cancelled caller leaves its hash running; its place is released when the hash ends,
            # so the bound counts threads really busy, not callers still waiting.
            future = asyncio.get_running_loop().run_in_executor(self._executor, func, *args)
        except BaseException:
            self._release(address)
            raise
        future.add_done_callback(lambda _: self._release(address))
        return await asyncio.shield(future)

    def _release(self, address: str) -> None:
        self.in_flight -= 1
        left = self._by_address[address] - 1
        if left:
            self._by_address[address] = left
        else:
            del self._by_address[address]

    async def hash(self, password: str, address: str) -> str:
        return await self._run(address, _hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str, address: str) -> bool:
        """False for a wrong password or a missing user (password_hash None), after the same work."""
        return await self._run(address, _check, password_hash, password)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
