"""Waiting for a condition instead of sleeping: poll it until it holds, fail the test at a deadline.

The deadline is a guard against a hang, not a timing: a test passes as soon as the condition
holds, however slow the machine.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any


async def until(predicate: Callable[[], Any | Awaitable[Any]], timeout: float = 20.0, *,
                interval: float = 0.02, what: str = "") -> Any:
    """Call predicate (plain or async) until it returns something truthy, and return that.

    Fails the test with `what` and the last value when timeout seconds pass first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        assert loop.time() < deadline, f"not within {timeout} s: {what or predicate} (last value {value!r})"
        await asyncio.sleep(interval)
