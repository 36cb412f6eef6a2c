"""Failed-login counters in PostgreSQL, so every `--workers` process (and host) shares them.

One row per (scope, key): scope `username` (key: an HMAC pseudonym of the typed name under a
server key, walletd/keys.py) or `address` (the client's address). A fixed window starts at the
first failure; a failure after the window ends starts a new one.
"""

from __future__ import annotations

from walletd.persistence.db import FairPool

_WINDOW = "make_interval(secs => $3)"


async def current(pool: FairPool, username_key: str | None, address_key: str,
                  window_seconds: int) -> dict[str, tuple[int, float]]:
    """{scope: (failures, seconds until its window ends)} for the live windows of both keys."""
    rows = await pool.fetch(
        f"""SELECT scope, failures, extract(epoch FROM window_start + {_WINDOW} - now())::float8 AS remaining
              FROM login_failures
             WHERE ((scope = 'username' AND key = $1) OR (scope = 'address' AND key = $2))
               AND window_start > now() - {_WINDOW}""",
        username_key, address_key, window_seconds)
    return {row["scope"]: (row["failures"], row["remaining"]) for row in rows}


async def record_failure(pool: FairPool, username_key: str | None, address_key: str, window_seconds: int) -> None:
    """One more failure for the address, and for the username unless it is None (an operator key)."""
    # Rows in a fixed order (username, then address), so concurrent upserts cannot deadlock.
    await pool.execute(
        f"""INSERT INTO login_failures AS f (scope, key, window_start, failures)
            SELECT scope, key, now(), 1
              FROM (VALUES (1, 'username', $1::text), (2, 'address', $2::text)) AS v(n, scope, key)
             WHERE key IS NOT NULL ORDER BY n
            ON CONFLICT (scope, key) DO UPDATE SET
                failures = CASE WHEN f.window_start > now() - {_WINDOW} THEN f.failures + 1 ELSE 1 END,
                window_start = CASE WHEN f.window_start > now() - {_WINDOW} THEN f.window_start ELSE now() END""",
        username_key, address_key, window_seconds)


async def reset_username(pool: FairPool, username_key: str) -> None:
    await pool.execute("DELETE FROM login_failures WHERE scope = 'username' AND key = $1", username_key)


async def prune(pool: FairPool, window_seconds: int) -> None:
    await pool.execute("DELETE FROM login_failures WHERE window_start < now() - make_interval(secs => $1)",
                       window_seconds)
