"""Webhook delivery figures (issue 11), against a local receiver on 127.0.0.1; bounded in count
and time. Not part of `make bench`.

    .venv/bin/python -m bench.webhooks [--events 3000] [--load-seconds 8]

1. Throughput of the delivery loop alone: N deposit requests are made with no endpoint, then one
   delivery row per event is inserted at once for a fresh endpoint; the figure is N divided by
   the time until the receiver has them all (one `walletd serve` process, default settings).
2. Latency under load: with the endpoint registered, 32 concurrent clients request deposits for
   `--load-seconds`; latency is event created_at (walletd's clock) → arrival at the receiver
   (same machine, same clock); p50 / p99 / max, and the deposit rate meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import aiohttp
import asyncpg
from aiohttp import web

from walletd.persistence import embedded
from walletd.persistence.migrate import migrate
from walletd.testing import LOOPBACK, create_empty_database, free_port, walletd_server

PASSWORD = "Str0ng!pass"
OPERATOR_KEY = "bench-operator-key"


class Receiver:
    def __init__(self) -> None:
        self.port = free_port()
        self.arrivals: list[tuple[float, str, str]] = []  # (wall clock, event id, created_at)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        event = json.loads(body)
        self.arrivals.append((time.time(), event["id"], event["created_at"]))
        return web.Response(status=204)

    async def start(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_post("/hooks", self.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, LOOPBACK, self.port).start()
        return runner


async def post(session, url, **kw) -> dict:
    async with session.post(url, **kw) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def setup_users(session, base: str, users: int) -> tuple[dict, list[tuple[dict, str]]]:
    name = f"svc_{uuid.uuid4().hex[:8]}"
    svc = await post(session, base + "/auth/register_service", headers={"X-Operator-Key": OPERATOR_KEY},
                     json={"username": name, "email": f"{name}@example.com", "password": PASSWORD})
    service = {"id": svc["user_id"], "headers": {"Authorization": f"Bearer {svc['access_token']}"}}
    out = []
    for _ in range(users):
        name = f"u_{uuid.uuid4().hex[:8]}"
        token = (await post(session, base + "/auth/register",
                            json={"username": name, "email": f"{name}@example.com", "password": PASSWORD}))["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        async with session.get(base + "/user/wallets", headers=headers) as resp:
            wallet = (await resp.json())["wallets"][0]["id"]
        out.append((headers, wallet))
    return service, out


async def deposits(session, base: str, service: dict, users, *, count: int | None = None,
                   seconds: float | None = None, clients: int = 32) -> int:
    done = 0
    stop_at = time.monotonic() + seconds if seconds else None

    async def client(i: int) -> None:
        nonlocal done
        n = i
        while (count is None or n < count) and (stop_at is None or time.monotonic() < stop_at):
            headers, wallet = users[n % len(users)]
            await post(session, base + "/wallet/deposit", headers=headers,
                       params={"service_user_id": service["id"], "wallet_id": wallet, "amount": "1"})
            done += 1
            n += clients
    await asyncio.gather(*(client(i) for i in range(clients)))
    return done


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(events: int, load_seconds: float) -> None:
    base_dir = Path(tempfile.mkdtemp(prefix="walletd-webhooks-"))
    base_dir.chmod(0o755)
    server = embedded.start(base_dir, throwaway=True)
    receiver = Receiver()
    runner = await receiver.start()
    try:
        url = await create_empty_database(embedded.database_url(server), "webhooks_bench")
        conn = await asyncpg.connect(url)
        await migrate(conn)
        proc = walletd_server(url, base_dir / "walletd.log", jwt_secret="b" * 48, operator_key=OPERATOR_KEY,
                              WALLETD_LOG_LEVEL="warning")
        await proc.start("/ready")
        try:
            async with aiohttp.ClientSession() as session:
                service, users = await setup_users(session, proc.url, 50)
                await deposits(session, proc.url, service, users, count=events)
                hook = await post(session, proc.url + "/service/webhooks", headers=service["headers"],
                                  json={"url": f"http://{LOOPBACK}:{receiver.port}/hooks"})
                started = time.monotonic()
                await conn.execute(
                    "INSERT INTO webhook_deliveries (event_id, endpoint_id, next_attempt_at, created_at) "
                    "SELECT id, $1, now(), now() FROM events WHERE service_user_id = $2", uuid.UUID(hook["id"]),
                    uuid.UUID(service["id"]))
                while len(receiver.arrivals) < events:
                    await asyncio.sleep(0.01)
                elapsed = time.monotonic() - started
                print(f"delivery loop: {events} events in {elapsed:.2f} s = {events / elapsed:,.0f} events/s "
                      "(one process, WALLETD_WEBHOOK_CONCURRENCY=16)")

                receiver.arrivals.clear()
                made = await deposits(session, proc.url, service, users, seconds=load_seconds)
                deadline = time.monotonic() + 30
                while len(receiver.arrivals) < made and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                latencies = [(at - datetime.fromisoformat(created).timestamp()) * 1000
                             for at, _, created in receiver.arrivals]
                print(f"under load: {made / load_seconds:,.0f} deposit requests/s for {load_seconds:.0f} s, "
                      f"{len(latencies)}/{made} delivered; latency ms p50 {statistics.median(latencies):.1f} "
                      f"p99 {percentile(latencies, 0.99):.1f} max {max(latencies):.1f}")
                async with session.get(proc.url + "/metrics") as resp:
                    print("\n".join(line for line in (await resp.text()).splitlines() if "webhook" in line
                                    and not line.startswith("#") and "bucket" not in line))
        finally:
            await proc.stop()
            await conn.close()
    finally:
        await runner.cleanup()
        server.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--load-seconds", type=float, default=8.0)
    args = parser.parse_args()
    asyncio.run(main(args.events, args.load_seconds))
