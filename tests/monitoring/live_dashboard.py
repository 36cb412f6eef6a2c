"""A real Prometheus (Debian's package, on loopback) scrapes a real `walletd serve` under traffic,
with deploy/prometheus/prometheus.yml's job and alert rules, and evaluates every query of the
Grafana dashboard: each must return data. The alert rules must all evaluate without error, and
none may fire on a healthy walletd.

Not collected by `make test` (the file name does not start with test_, like tests/ha/): it needs
the prometheus binary, which tests/monitoring/run.sh (`make test-monitoring`) installs before it
runs this file by name.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import uuid
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.conftest import ServeProcess, api_transfer, fund, register, register_service
from tests.monitoring.deployed import (
    ALERT_RULES,
    EXPECTED_LATER,
    alert_rules,
    dashboard_expressions,
    for_prometheus,
    metric_names,
)
from tests.polling import until
from tests.receiver import Receiver
from tests.support.servers import LOOPBACK, free_port

EXAMPLE_CONFIG = ALERT_RULES.parent / "prometheus.yml"


class Prometheus:
    def __init__(self, binary: str, directory: Path, target: str) -> None:
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.log = directory / "prometheus.log"
        config = yaml.safe_load(EXAMPLE_CONFIG.read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(ALERT_RULES)]
        (job,) = config["scrape_configs"]
        job["static_configs"] = [{"targets": [target]}]
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.argv = [binary, f"--config.file={directory / 'prometheus.yml'}", f"--storage.tsdb.path={directory / 'data'}",
                     f"--web.listen-address={LOOPBACK}:{self.port}"]
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, session: aiohttp.ClientSession) -> "Prometheus":
        with self.log.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(*self.argv, stdout=log, stderr=asyncio.subprocess.STDOUT)

        async def ready() -> bool:
            assert self.proc.returncode is None, self.log.read_text()[-3000:]
            try:
                async with session.get(self.url + "/-/ready") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False
        await until(ready, 60, what="prometheus ready")
        return self

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    async def api(self, session: aiohttp.ClientSession, path: str, **params: str):
        async with session.get(f"{self.url}/api/v1/{path}", params=params) as resp:
            body = await resp.json()
        assert body["status"] == "success", (path, params, body)
        return body["data"]

    async def query(self, session: aiohttp.ClientSession, expression: str) -> list[dict]:
        return (await self.api(session, "query", query=expression))["result"]


@pytest.fixture
async def walletd(database_url):
    serve = await ServeProcess(database_url, WALLETD_WEBHOOK_BACKOFF="0.2",
                                 WALLETD_WEBHOOK_ALLOW_HOSTS="127.0.0.1").start()
    yield serve
    await serve.stop()


@pytest.fixture
async def prometheus(walletd, tmp_path):
    binary = shutil.which("prometheus")
    assert binary, "no prometheus binary: tests/monitoring/run.sh (make test-monitoring) installs Debian's package"
    server = Prometheus(binary, tmp_path, f"{LOOPBACK}:{walletd.port}")
    async with aiohttp.ClientSession() as session:
        await server.start(session)
        try:
            yield server
        finally:
            await server.stop()


async def traffic(base_url: str, receiver: Receiver, seconds: float) -> None:
    """Money moving, webhooks delivered (the first attempt refused, so one is retried), and error
    answers, for `seconds`."""
    async with aiohttp.ClientSession(base_url=base_url) as client:
        service = await register_service(client)
        alice, bob = await register(client, "alice"), await register(client, "bob")
        receiver.script = [500]
        resp = await client.post("/service/webhooks", headers=service["headers"], json={"url": receiver.url})
        assert resp.status == 200, await resp.text()
        deadline = asyncio.get_running_loop().time() + seconds
        while asyncio.get_running_loop().time() < deadline:
            await fund(client, alice, service, 1, "10")
            resp = await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "1",
                                      headers={"Idempotency-Key": uuid.uuid4().hex})
            assert resp.status == 200, await resp.text()
            resp = await api_transfer(client, bob, 2, alice["wallets"][2]["id"], "1000")  # insufficient funds
            assert resp.status == 400, await resp.text()
            assert (await client.get(f"/no/such/{uuid.uuid4().hex}")).status == 404
            await asyncio.sleep(0.2)


async def test_every_dashboard_query_returns_data_from_a_live_walletd(walletd, prometheus):
    receiver = await Receiver().start()
    try:
        await traffic(walletd.url, receiver, seconds=12)
        await receiver.wait_for(lambda received: any(r["status"] < 300 for r in received))
    finally:
        await receiver.stop()
    async with aiohttp.ClientSession() as session:
        async def scraped_enough() -> bool:
            result = await prometheus.query(session, 'count_over_time(up{job="walletd"}[1m])')
            return bool(result) and float(result[0]["value"][1]) >= 15
        await until(scraped_enough, 60, what="15 scrapes of walletd")
        assert float((await prometheus.query(session, 'up{job="walletd"}'))[0]["value"][1]) == 1

        empty, later = [], []
        for title, expression in dashboard_expressions():
            result = await prometheus.query(session, for_prometheus(expression))
            values = [float(series["value"][1]) for series in result]
            if metric_names(expression) & EXPECTED_LATER:
                later.append((title, expression, len(result)))  # valid PromQL (the query succeeded)
            elif not any(math.isfinite(value) for value in values):
                empty.append((title, expression, values))
        assert not empty, f"dashboard queries without data: {empty}"
        print(f"\n{len(dashboard_expressions()) - len(later)} dashboard queries returned data; "
              f"{len(later)} wait for metrics of other branches (EXPECTED_LATER): {later}")

        groups = (await prometheus.api(session, "rules"))["groups"]
        rules = {rule["name"]: rule for group in groups for rule in group["rules"]}
        assert set(rules) == {rule["alert"] for rule in alert_rules()}
        for name, rule in rules.items():
            assert rule["health"] == "ok", (name, rule.get("lastError"))
        firing = [alert for alert in (await prometheus.api(session, "alerts"))["alerts"] if alert["state"] == "firing"]
        assert not firing, firing
