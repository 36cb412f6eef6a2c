"""`walletd serve --workers 2`: a scrape reaches whichever process the kernel picks, and every
scrape must still report the totals of both (prometheus_client's multiprocess mode)."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ServeProcess
from tests.polling import until

HEALTH = (("method", "GET"), ("route", "/health"), ("status", "200"))


async def scrape(url: str) -> dict:
    # A fresh connection each time, so the kernel picks a process anew (SO_REUSEPORT).
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        async with session.get(url + "/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_every_scrape_reports_the_totals_of_all_workers(database_url):
    server = await ServeProcess(database_url, WALLETD_WORKERS="2").start()
    try:
        async def both_up() -> bool:
            return (await scrape(server.url)).get(("walletd_workers", ()), 0) == 2
        await until(both_up, 30, interval=0.1, what="the second worker reported")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            for _ in range(40):
                async with session.get(server.url + "/health") as resp:
                    assert resp.status == 200
        counts = [(await scrape(server.url)).get(("walletd_http_requests_total", HEALTH)) for _ in range(8)]
        # Split across two processes, a per-process answer would show part of the 40.
        assert counts == [40.0] * 8, counts
    finally:
        assert await server.stop() == 0
