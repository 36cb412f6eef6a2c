"""Supervision of the jobs (background tasks owned by the app): restarted after a crash,
stopped within a bound.

A background task that dies silently is worse than none (the work it did stops and nobody
knows), so every crash is logged with its traceback and the task restarts after a backoff that
doubles per consecutive crash (1 s up to 60 s by default) and resets once the body has run
longer than the longest backoff. A body that returns is restarted too, with a warning.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from walletd.logs import get_logger
from walletd.persistence.breaker import DatabaseBreaker
from walletd.persistence.failures import is_unavailable

log = get_logger("walletd.tasks")


async def run_supervised(name: str, body: Callable[[], Awaitable[None]], *, min_backoff: float = 1.0,
                         max_backoff: float = 60.0, breaker: DatabaseBreaker | None = None) -> None:
    """Runs body() until cancelled, restarting it whenever it raises or returns. A failure to
    reach the database opens `breaker` (the app's; a job run alone gets its own)."""
    breaker = breaker or DatabaseBreaker()
    delay = min_backoff
    while True:
        started = time.monotonic()
        try:
            await body()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - logged, then restarted
            if time.monotonic() - started > max_backoff:
                delay = min_backoff  # it had been healthy: this is a new incident
            if is_unavailable(exc):
                # The database is away: reported once per outage (db.unavailable), not as a
                # traceback per retry; the task simply tries again after its backoff.
                breaker.failed(exc)
            else:
                log.exception("task.crashed", task=name, restart_in_s=delay)
        else:
            log.warning("task.exited", task=name, restart_in_s=delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_backoff)


def start_supervised(name: str, body: Callable[[], Awaitable[None]], *, min_backoff: float = 1.0,
                     max_backoff: float = 60.0, breaker: DatabaseBreaker | None = None) -> asyncio.Task:
    return asyncio.create_task(run_supervised(name, body, min_backoff=min_backoff, max_backoff=max_backoff,
                                              breaker=breaker), name=name)


async def stop_task(task: asyncio.Task, timeout: float) -> None:
    """Cancels task and waits at most timeout for it to finish; a task that will not stop is
    logged (shutdown goes on: the resources it used are closed after this)."""
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        log.error("task.stop_timeout", task=task.get_name(), timeout_s=timeout)
        return
    if not task.cancelled() and task.exception() is not None:
        log.error("task.failed_on_stop", task=task.get_name(), error=repr(task.exception()))
