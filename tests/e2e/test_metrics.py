"""/metrics through prometheus_client: every family has # HELP, HTTP requests are counted and
timed by route template (never by raw path), commits by latency and batch size, and the live
gauges (actors, mailbox depth, pool waiters) read the running state."""

from __future__ import annotations

import uuid
from collections import Counter

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import api_transfer, fund, register, register_service
from walletd.handlers.errors import catalogue


async def scrape(client) -> dict[tuple[str, tuple], float]:
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    samples = {}
    for family in text_string_to_metric_families(await resp.text()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_every_family_has_help_and_a_type(client):
    text = await (await client.get("/metrics")).text()
    typed = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    helped = {line.split()[2] for line in text.splitlines() if line.startswith("# HELP ")}
    assert typed and typed == helped
    for family in ("walletd_http_requests_total", "walletd_http_request_duration_seconds", "walletd_commit_duration_seconds",
                   "walletd_commit_batch_size", "walletd_actors", "walletd_mailbox_depth", "walletd_pool_waiters",
                   "walletd_ledger_batches_total"):
        assert family in typed, family


async def test_requests_are_counted_and_timed_by_route_template(client):
    user = await register(client, "metrics")
    before = await scrape(client)
    wallet = user["wallets"][1]["id"]
    for _ in range(3):
        assert (await client.get("/user/wallet", headers=user["headers"], params={"wallet_id": wallet})).status == 200
    missing = [f"/no/such/{uuid.uuid4().hex}" for _ in range(2)]
    for path in missing:
        assert (await client.get(path)).status == 404
    after = await scrape(client)
    ok = {"method": "GET", "route": "/user/wallet", "status": "200"}
    assert value(after, "walletd_http_requests_total", **ok) - value(before, "walletd_http_requests_total", **ok) == 3
    assert (value(after, "walletd_http_request_duration_seconds_count", **ok)
            - value(before, "walletd_http_request_duration_seconds_count", **ok)) == 3
    assert value(after, "walletd_http_request_duration_seconds_sum", **ok) > 0
    unmatched = {"method": "GET", "route": "unmatched", "status": "404"}
    assert value(after, "walletd_http_requests_total", **unmatched) - value(before, "walletd_http_requests_total",
                                                                            **unmatched) == 2
    routes = {dict(labels).get("route") for _, labels in after}
    assert not any(path in routes for path in missing) and wallet not in str(routes)


async def test_commits_record_latency_batch_size_and_path(client):
    user, service = await register(client, "metrics"), await register_service(client)
    before = await scrape(client)
    await fund(client, user, service, 1, "10")  # two commands: the deposit request and its settlement
    after = await scrape(client)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    batches = delta("walletd_commit_batch_size_count")
    assert delta("walletd_commit_batch_size_sum") == 2 and 1 <= batches <= 2
    assert delta("walletd_commit_duration_seconds_count") == batches
    assert delta("walletd_commit_duration_seconds_sum") > 0
    assert delta("walletd_ledger_batches_total", path="fast") + delta("walletd_ledger_batches_total",
                                                                      path="locked") == batches


async def test_live_gauges_read_the_running_state(client):
    user, service = await register(client, "metrics"), await register_service(client)
    await fund(client, user, service, 1, "10")
    samples = await scrape(client)  # the actors idle 5 s in tests: the depositing wallet's is alive
    assert value(samples, "walletd_actors") >= 1
    assert value(samples, "walletd_mailbox_depth") == 0  # everything accepted has been committed
    assert value(samples, "walletd_pool_waiters") == 0


async def test_error_answers_are_counted_by_their_code(client):
    user = await register(client, "metrics")
    before = await scrape(client)
    answers = [
        await client.get(f"/no/such/{uuid.uuid4().hex}"),
        await client.get("/user/wallets"),  # no token
        await client.post("/auth/login", data=b"{not json", headers={"Content-Type": "application/json"}),
        await api_transfer(client, user, 1, user["wallets"][2]["id"], "5"),  # the balance is 0
    ]
    codes = Counter()
    for resp in answers:
        assert resp.status >= 400
        codes[(await resp.json())["code"]] += 1
    assert len(codes) == 4, codes
    after = await scrape(client)
    for code, count in codes.items():
        assert (value(after, "walletd_http_errors_total", code=code)
                - value(before, "walletd_http_errors_total", code=code)) == count, code
    # Every code walletd can answer has its series from the start (0 until answered), so an alert
    # on outcome_unknown has data to evaluate before the first one happens.
    for code, _, _ in catalogue():
        assert ("walletd_http_errors_total", (("code", code),)) in after, code
    assert value(after, "walletd_http_errors_total", code="outcome_unknown") == value(
        before, "walletd_http_errors_total", code="outcome_unknown")


async def test_database_up_follows_the_database(make_client, database_url, proxy):
    client = await make_client(database_url=proxy.url(database_url))
    assert value(await scrape(client), "walletd_database_up") == 1
    proxy.refuse()
    assert value(await scrape(client), "walletd_database_up") == 0  # the scrape itself still answers
    assert (await client.get("/ready")).status == 503
    proxy.accept()
    assert (await client.get("/ready")).status == 200
    assert value(await scrape(client), "walletd_database_up") == 1
