"""Webhook delivery figures, against a local receiver on 127.0.0.1; bounded in count
and time. Not part of `make bench`.

    .venv/bin/python -m bench.webhooks [--events 3000] [--load-seconds 8]

1. Throughput of the delivery loop alone: N deposit requests are made with no endpoint, then one
   delivery row per event is inserted at once for a fresh endpoint; the figure is N divided by
   the time until the receiver has them all (one `walletd serve` process, default settings).
2. Latency under load: with the endpoint registered, 32 concurrent clients request deposits as
   fast as they can for `--load-seconds`, then paced runs at 50 and 200 requests/s; latency is
   event created_at (walletd's clock) → arrival at the receiver (its own process, same
   machine, same clock); p50 / p99 / max, and the deposit rate meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import aiohttp
import asyncpg
from aiohttp import web

from tests.support.servers import LOOPBACK, create_empty_database, free_port, walletd_server
from walletd.persistence import embedded
from walletd.persistence.migrate import migrate

PASSWORD = "Str0ng!pass"
OPERATOR_KEY = "bench-operator-key-0123456789abcdef"  # walletd refuses keys under 24 characters
SECRETS_KEY = "YmVuY2gtc2VjcmV0cy1rZXktb2YtMzItYnl0ZXMtLS0="  # a Fernet key (32 bytes, URL-safe base64)


class Receiver:
    """The local payment service, in its own process (`--receiver PORT`) so that the load
    generator's CPU does not delay the arrival times it records."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.arrivals: list[tuple[float, str]] = []  # (wall clock, event created_at)

    async def hook(self, request: web.Request) -> web.Response:
        event = json.loads(await request.read())
        self.arrivals.append((time.time(), event["created_at"]))
        return web.Response(status=204)

    async def count(self, request: web.Request) -> web.Response:
        return web.json_response({"count": len(self.arrivals)})

    async def take(self, request: web.Request) -> web.Response:
        arrivals, self.arrivals = self.arrivals, []
        return web.json_response({"arrivals": arrivals})

    def serve(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks", self.hook)
        app.router.add_get("/count", self.count)
        app.router.add_post("/take", self.take)
        web.run_app(app, host=LOOPBACK, port=self.port, access_log=None, print=None)


async def start_receiver(port: int) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "bench.webhooks", "--receiver", str(port))
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            try:
                async with session.get(f"http://{LOOPBACK}:{port}/count"):
                    return proc
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
    raise RuntimeError("receiver did not start")


async def received(session, port: int) -> int:
    async with session.get(f"http://{LOOPBACK}:{port}/count") as resp:
        return (await resp.json())["count"]


async def take(session, port: int) -> list:
    async with session.post(f"http://{LOOPBACK}:{port}/take") as resp:
        return (await resp.json())["arrivals"]


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
                            json={"username": name, "email": f"{name}@example.com",
                                  "password": PASSWORD}))["access_token"]
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
    port = free_port()
    receiver = await start_receiver(port)
    try:
        url = await create_empty_database(embedded.database_url(server), "webhooks_bench")
        conn = await asyncpg.connect(url)
        await migrate(conn)
        # The receiver listens on loopback, which walletd refuses unless allowed by name.
        proc = walletd_server(url, base_dir / "walletd.log", jwt_secret="b" * 48, operator_key=OPERATOR_KEY,
                              secrets_key=SECRETS_KEY, WALLETD_LOG_LEVEL="warning",
                              WALLETD_WEBHOOK_ALLOW_HOSTS=LOOPBACK)
        await proc.start("/ready")
        try:
            async with aiohttp.ClientSession() as session:
                service, users = await setup_users(session, proc.url, 50)
                await deposits(session, proc.url, service, users, count=events)
                hook = await post(session, proc.url + "/service/webhooks", headers=service["headers"],
                                  json={"url": f"http://{LOOPBACK}:{port}/hooks"})
                started = time.monotonic()
                await conn.execute(
                    "INSERT INTO webhook_deliveries (event_id, endpoint_id, next_attempt_at, created_at) "
                    "SELECT id, $1, now(), now() FROM events WHERE service_user_id = $2", uuid.UUID(hook["id"]),
                    uuid.UUID(service["id"]))
                while await received(session, port) < events:
                    await asyncio.sleep(0.01)
                elapsed = time.monotonic() - started
                print(f"delivery loop: {events} events in {elapsed:.2f} s = {events / elapsed:,.0f} events/s "
                      "(one process, WALLETD_WEBHOOK_CONCURRENCY=16)")
                await take(session, port)

                made = await deposits(session, proc.url, service, users, seconds=load_seconds)
                deadline = time.monotonic() + 30
                while await received(session, port) < made and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                latencies = [(at - datetime.fromisoformat(created).timestamp()) * 1000
                             for at, created in await take(session, port)]
                print(f"under load: {made / load_seconds:,.0f} deposit requests/s for {load_seconds:.0f} s "
                      f"(32 clients), {len(latencies)}/{made} delivered; latency ms p50 "
                      f"{statistics.median(latencies):.1f} p99 {percentile(latencies, 0.99):.1f} "
                      f"max {max(latencies):.1f}")

                for rate in (50, 200):
                    made = await paced_deposits(session, proc.url, service, users, rate, load_seconds)
                    deadline = time.monotonic() + 30
                    while await received(session, port) < made and time.monotonic() < deadline:
                        await asyncio.sleep(0.05)
                    latencies = [(at - datetime.fromisoformat(created).timestamp()) * 1000
                                 for at, created in await take(session, port)]
                    print(f"paced at {rate} deposit requests/s: latency ms p50 {statistics.median(latencies):.1f} "
                          f"p99 {percentile(latencies, 0.99):.1f} max {max(latencies):.1f}")
        finally:
            await proc.stop()
            await conn.close()
    finally:
        receiver.terminate()
        await receiver.wait()
        server.cleanup()


async def paced_deposits(session, base: str, service: dict, users, rate: int, seconds: float) -> int:
    """`rate` deposit requests per second (open loop, in ticks of 10 ms)."""
    tasks = []
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < seconds:
        due = int((time.monotonic() - started) * rate)
        while n < due:
            headers, wallet = users[n % len(users)]
            tasks.append(asyncio.create_task(post(session, base + "/wallet/deposit", headers=headers, params={
                "service_user_id": service["id"], "wallet_id": wallet, "amount": "1"})))
            n += 1
        await asyncio.sleep(0.01)
    await asyncio.gather(*tasks)
    return n


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--load-seconds", type=float, default=8.0)
    parser.add_argument("--receiver", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver:
        Receiver(args.receiver).serve()
    else:
        asyncio.run(main(args.events, args.load_seconds))
