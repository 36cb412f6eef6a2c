"""The outbox rides in the batch's transaction, so the in-doubt resolution covers it: a deposit
whose commit answer was lost has its event exactly once; one whose write was lost has none, and
its retry writes it once (tests/pgproxy.py cuts the connection, as in test_in_doubt.py)."""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import api_deposit, register, register_service


@pytest.fixture
async def proxied(make_client, proxy, database_url):
    client = await make_client(database_url=proxy.url(database_url), in_doubt_seconds=2.0, pool_size=3)
    return client, await register(client), await register_service(client)


async def events_of(db, transaction_id) -> list[str]:
    return [r[0] for r in await db.fetch("SELECT type FROM events WHERE transaction_id = $1", transaction_id)]


async def test_reply_lost_after_commit_keeps_one_event(proxied, proxy, db):
    client, user, service = proxied
    headers = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    proxy.arm("lose_reply")
    resp = await api_deposit(client, user, service, 1, "4", headers)
    assert proxy.fired.is_set()
    assert resp.status == 200, await resp.text()
    tx = await resp.json()
    assert await events_of(db, uuid.UUID(tx["id"])) == ["deposit.requested"]
    again = await api_deposit(client, user, service, 1, "4", headers)
    assert again.status == 200 and again.headers.get("Idempotent-Replayed") == "true"
    assert await events_of(db, uuid.UUID(tx["id"])) == ["deposit.requested"]


async def test_write_lost_before_commit_writes_no_event_and_the_retry_one(proxied, proxy, db):
    client, user, service = proxied
    headers = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    before = await db.fetchval("SELECT count(*) FROM events WHERE service_user_id = $1", uuid.UUID(service["id"]))
    proxy.arm("lose_write")
    resp = await api_deposit(client, user, service, 1, "6", headers)
    assert proxy.fired.is_set()
    assert resp.status == 503, await resp.text()
    assert await db.fetchval("SELECT count(*) FROM events WHERE service_user_id = $1",
                             uuid.UUID(service["id"])) == before
    again = await api_deposit(client, user, service, 1, "6", headers)
    assert again.status == 200 and again.headers.get("Idempotent-Replayed") is None
    tx = await again.json()
    assert await events_of(db, uuid.UUID(tx["id"])) == ["deposit.requested"]
    assert await db.fetchval("SELECT count(*) FROM events WHERE service_user_id = $1",
                             uuid.UUID(service["id"])) == before + 1
