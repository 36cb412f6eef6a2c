"""Where a webhook may point, through real HTTP on the real PostgreSQL: a payment service cannot
make walletd call inside its own network (Patroni's REST API, etcd, metadata, loopback), neither
at registration nor later at a delivery, and only WALLETD_WEBHOOK_ALLOW_HOSTS opens exceptions."""

from __future__ import annotations

import json
import socket

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver

from tests.conftest import api_deposit, register, register_service
from tests.polling import until
from tests.receiver import Receiver, of_type
from tests.support.servers import LOOPBACK, free_port
from walletd.app import create_app
from walletd.appkeys import targets_key
from walletd.webhooks.targets import TargetPolicy

# (url, what the refusal must say): every kind of internal address, in every spelling.
REFUSED = [
    ("http://localhost:8008/reinitialize", "resolves to a loopback address"),  # a name resolving to 127.0.0.1
    ("http://[::ffff:127.0.0.1]:8008/reinitialize", "a loopback address (127.0.0.1"),  # IPv4-mapped IPv6
    ("http://127.0.0.1:2379/v3/kv/put", "a loopback address"),
    ("http://[::1]/x", "a loopback address"),
    ("http://10.0.0.5:8080/hooks", "a private address"),
    ("http://172.16.3.4/x", "a private address"),
    ("http://192.168.1.10/x", "a private address"),
    ("http://[fd00::5]/x", "a private address"),
    ("http://169.254.169.254/latest/meta-data/", "a link-local address"),  # cloud metadata
    ("http://[fe80::1]/x", "a link-local address"),
    ("http://100.64.0.7/x", "carrier-grade NAT"),
    ("http://224.0.0.251/x", "a multicast address"),
    ("http://[ff02::1]/x", "a multicast address"),
    ("http://240.0.0.1/x", "a reserved address"),
    ("http://0.0.0.0:8010/x", "an unspecified address"),
    ("http://[::]/x", "an unspecified address"),
    ("http://[2002:7f00:1::]/x", "a loopback address (127.0.0.1"),  # 6to4 carrying 127.0.0.1
    ("http://[64:ff9b::a00:5]/x", "a private address (10.0.0.5"),  # NAT64 carrying 10.0.0.5
    ("http://2130706433/x", "non-canonical"),  # 127.0.0.1 as one number
    ("http://127.1/x", "non-canonical"),
    ("http://0x7f.0.0.1/x", "non-canonical"),
    ("http://017700000001/x", "non-canonical"),
]
# Strict parsing: a URL walletd cannot deliver is refused at once, never stored and retried.
MALFORMED = [
    ("http://exa mple.com/", "whitespace"),
    ("http://example.com/\r\nX-Injected: 1", "control characters"),
    ("http://example.com/\x07", "control characters"),  # (a NUL is refused earlier, as unstorable text)
    ("http://example.com/\t", "whitespace"),
    (" http://example.com/", "whitespace"),
    ("http://%65xample.com/", "percent-encoded"),
    ("http://127.0.0.1%2f@example.com/", "credentials"),
    ("http://[fe80::1%25eth0]/", "percent-encoded"),
    ("http:///path-only", "must name a host"),
    ("http://:8080/", "not a valid URL"),
    ("http://example.com\\@10.0.0.1/", "backslashes"),
    ("http://bücher.example/", "ASCII"),
    ("gopher://example.com/", "http or https"),
    ("http://example.com/#frag", "fragment"),
    ("http://8.8.8.8:0/", "port"),
]


async def register_url(client, service: dict, url: str):
    return await client.post("/service/webhooks", headers=service["headers"], json={"url": url})


def test_the_machine_resolves_localhost_to_loopback():
    # The first refusal above relies on it; say so plainly if this machine differs.
    assert "127.0.0.1" in {info[4][0] for info in socket.getaddrinfo("localhost", 80, socket.AF_INET)}


async def test_internal_targets_are_refused_at_registration_saying_why(client, db):
    service = await register_service(client)
    before = await db.fetchval("SELECT count(*) FROM webhook_endpoints")
    for url, why in REFUSED:
        resp = await register_url(client, service, url)
        body = await resp.json()
        assert resp.status == 400 and body["code"] == "invalid_webhook_url", (url, body)
        assert why in body["message"], (url, body["message"])
    assert await db.fetchval("SELECT count(*) FROM webhook_endpoints") == before  # nothing stored


async def test_malformed_urls_are_refused_saying_why(client, db):
    service = await register_service(client)
    before = await db.fetchval("SELECT count(*) FROM webhook_endpoints")
    for url, why in MALFORMED:
        resp = await register_url(client, service, url)
        body = await resp.json()
        assert resp.status == 400 and body["code"] == "invalid_webhook_url", (url, body)
        assert why in body["message"], (url, body["message"])
    assert await db.fetchval("SELECT count(*) FROM webhook_endpoints") == before


async def test_a_public_address_is_accepted(client):
    service = await register_service(client)
    resp = await register_url(client, service, "https://93.184.215.14:8443/events?k=1")
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["url"] == "https://93.184.215.14:8443/events?k=1"


async def test_the_allow_list_opens_exactly_the_names_and_networks_it_lists(make_client):
    client = await make_client(webhook_allow_hosts=("localhost", "10.1.0.0/16", "fd00::/8"))
    service = await register_service(client)
    for allowed in ("http://localhost:9000/hooks", "http://10.1.2.3/hooks", "http://[fd00::7]/hooks"):
        resp = await register_url(client, service, allowed)
        assert resp.status == 200, (allowed, await resp.text())
    for still_refused in ("http://127.0.0.1:9000/hooks", "http://10.2.0.1/hooks", "http://[fc00::7]/hooks",
                          "http://169.254.169.254/"):
        resp = await register_url(client, service, still_refused)
        assert resp.status == 400, (still_refused, await resp.text())


async def test_a_target_is_checked_again_at_every_delivery(make_client, db, log_tap):
    """Registered while an operator allowed loopback; the walletd that delivers allows nothing (as
    after a change of WALLETD_WEBHOOK_ALLOW_HOSTS, or a name that now resolves elsewhere): it
    refuses to connect, records why, retries later, and the receiver never hears a thing."""
    receiver = await Receiver().start()
    try:
        permissive = await make_client(webhook_allow_hosts=(LOOPBACK,))
        service = await register_service(permissive)
        resp = await register_url(permissive, service, receiver.url)
        assert resp.status == 200
        hook_id = (await resp.json())["id"]
        await permissive.close()  # its dispatcher stops with it

        strict = await make_client(webhook_backoff_seconds=0.2)
        user = await register(strict)
        deposit = await (await api_deposit(strict, user, service, 1, "5")).json()

        async def refused():
            return await db.fetchrow("SELECT attempts, last_error FROM webhook_deliveries d JOIN events e "
                                     "ON e.id = d.event_id WHERE e.transaction_id = $1 AND d.endpoint_id = $2 "
                                     "AND d.attempts >= 2 AND d.last_error IS NOT NULL", deposit["id"], hook_id)
        row = await until(refused, what="two refused attempts recorded")
        assert row["last_error"].startswith("refused: url host 127.0.0.1 is a loopback address")
        assert receiver.received == []
        # Other tests' endpoints with deliveries still due may be refused by this walletd too.
        lines = [json.loads(line) for line in log_tap.lines if '"webhook.refused"' in line]
        ours = [line for line in lines if line["endpoint_id"] == hook_id]
        assert ours and all(line["level"] == "warning" for line in lines)
    finally:
        await receiver.stop()


async def test_a_redirect_is_never_followed(make_client, db):
    """The allowed receiver answers 307 towards another loopback port: walletd does not go there
    (a redirect would be a way around the check); the attempt counts as failed and is retried."""
    hidden = await Receiver().start()
    redirecting = web.Application()

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(hidden.url)
    redirecting.router.add_post("/hooks", redirect)
    runner = web.AppRunner(redirecting, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, LOOPBACK, port).start()
    try:
        client = await make_client(webhook_allow_hosts=(LOOPBACK,), webhook_backoff_seconds=0.2)
        service = await register_service(client)
        assert (await register_url(client, service, f"http://{LOOPBACK}:{port}/hooks")).status == 200
        user = await register(client)
        deposit = await (await api_deposit(client, user, service, 1, "5")).json()

        async def retried():
            return await db.fetchval("SELECT last_error FROM webhook_deliveries d JOIN events e ON e.id = d.event_id "
                                     "WHERE e.transaction_id = $1 AND d.attempts >= 2", deposit["id"])
        assert await until(retried, what="the redirected delivery retried") == "HTTP 307"
        assert hidden.received == []
    finally:
        await runner.cleanup()
        await hidden.stop()


@pytest.mark.parametrize("allowed", [("localhost",), ("127.0.0.0/8", "::1/128")])
async def test_an_allowed_loopback_name_is_delivered_to(make_client, allowed):
    receiver = await Receiver().start()
    try:
        client = await make_client(webhook_allow_hosts=allowed)
        service = await register_service(client)
        url = receiver.url.replace(LOOPBACK, "localhost")
        assert (await register_url(client, service, url)).status == 200, allowed
        user = await register(client)
        deposit = await (await api_deposit(client, user, service, 1, "5")).json()
        await receiver.wait_for(of_type("deposit.requested", deposit["id"]))
    finally:
        await receiver.stop()


class ScriptedDns(AbstractResolver):
    """A name server under the attacker's control, which this offline machine cannot run: it
    answers the next address of its script each time it is asked (the last one forever)."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.asked = 0

    async def resolve(self, host, port=0, family=socket.AF_INET):
        self.asked += 1
        address = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return [{"hostname": host, "host": address, "port": port, "family": socket.AF_INET, "proto": 0, "flags": 0}]

    async def close(self) -> None:
        pass


async def client_with_dns(aiohttp_client, settings_for, dns: AbstractResolver, *allow: str):
    settings = settings_for(webhook_backoff_seconds=0.2)
    app = create_app(settings, settings.database_url, settings.jwt_secret)
    app[targets_key] = TargetPolicy.from_allow_list(allow, resolver=dns)  # only the DNS answers are scripted
    return await aiohttp_client(app)


async def test_a_name_rebound_to_loopback_after_registration_is_refused_at_delivery(
        aiohttp_client, settings_for, db):
    """DNS rebinding: the name resolved to a public address when registered and to 127.0.0.1 at the
    delivery. The delivery's connection resolves only through the check, so walletd never connects."""
    receiver = await Receiver().start()
    try:
        dns = ScriptedDns("93.184.215.14", "127.0.0.1")
        client = await client_with_dns(aiohttp_client, settings_for, dns)
        service = await register_service(client)
        url = f"http://hooks.rebound.example:{receiver.port}/hooks"
        assert (await register_url(client, service, url)).status == 200
        user = await register(client)
        deposit = await (await api_deposit(client, user, service, 1, "5")).json()

        async def refused():
            return await db.fetchval("SELECT d.last_error FROM webhook_deliveries d JOIN events e ON e.id = d.event_id"
                                     " WHERE e.transaction_id = $1 AND d.attempts >= 2", deposit["id"])
        error = await until(refused, what="the rebound delivery refused twice")
        assert error.startswith("refused: url host hooks.rebound.example resolves to a loopback address (127.0.0.1)")
        assert receiver.received == []
    finally:
        await receiver.stop()


async def test_the_delivery_connects_to_the_checked_address_under_the_urls_name(aiohttp_client, settings_for):
    """The name resolves (once per connection, through the check) to an address the allow-list
    admits; walletd connects there and still sends the URL's name as Host (and as the TLS server
    name on https), so the receiver's virtual host and certificate are the URL's."""
    receiver = await Receiver().start()
    try:
        dns = ScriptedDns(LOOPBACK)
        client = await client_with_dns(aiohttp_client, settings_for, dns, "127.0.0.0/8")
        service = await register_service(client)
        asked_at_registration = dns.asked
        url = f"http://hooks.pinned.example:{receiver.port}/hooks"
        assert (await register_url(client, service, url)).status == 200
        assert dns.asked == asked_at_registration + 1
        user = await register(client)
        deposit = await (await api_deposit(client, user, service, 1, "5")).json()
        got = await receiver.wait_for(of_type("deposit.requested", deposit["id"]))
        assert got[0]["host"] == f"hooks.pinned.example:{receiver.port}"
        assert dns.asked >= asked_at_registration + 2  # the delivery asked again: no answer was cached
    finally:
        await receiver.stop()
