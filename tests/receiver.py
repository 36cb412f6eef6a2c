"""A local payment service for the webhook tests: an aiohttp app on 127.0.0.1 that records what
it receives and answers the statuses it is told to (200 once the script runs out)."""

from __future__ import annotations

import asyncio
import json
import time

from aiohttp import web

from tests.support.servers import LOOPBACK, free_port


class Receiver:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.received: list[dict] = []  # {"event_id", "host", "signature", "body" (bytes), "event" (dict), "status"}
        self.script: list[int] = []  # statuses to answer, in order
        self._runner: web.AppRunner | None = None
        self._arrived = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/hooks"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        status = self.script.pop(0) if self.script else 200
        self.received.append({"event_id": request.headers.get("Walletd-Event-Id"), "host": request.host,
                              "signature": request.headers.get("Walletd-Signature"),
                              "body": body, "event": json.loads(body), "status": status})
        self._arrived.set()
        return web.Response(status=status, text="ok" if status < 300 else "try again")

    async def start(self) -> "Receiver":
        app = web.Application()
        app.router.add_post("/hooks", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, LOOPBACK, self.port, reuse_address=True).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def delivered(self) -> list[dict]:
        return [r for r in self.received if r["status"] < 300]

    async def wait_for(self, predicate, timeout: float = 20.0):
        """Polls the recorded requests until predicate(received) is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate(self.received)
            if value:
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"receiver: condition not met in {timeout}s; got "
                                     f"{[(r['event']['type'], r['status']) for r in self.received]}")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), min(remaining, 0.5))
            except TimeoutError:
                pass


def of_type(kind: str, transaction_id: str | None = None):
    """A predicate: the delivered requests carrying events of this type (and transaction)."""
    def match(received: list[dict]) -> list[dict]:
        return [r for r in received if r["status"] < 300 and r["event"]["type"] == kind
                and (transaction_id is None or r["event"]["data"]["id"] == transaction_id)]
    return match
