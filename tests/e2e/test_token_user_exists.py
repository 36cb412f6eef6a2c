"""A validly signed token whose user does not exist is 401."""

from __future__ import annotations

import time
import uuid

import jwt

from tests.conftest import JWT_SECRET, register


def signed_for(user_id: str, role: str = "user") -> str:
    now = int(time.time())
    return jwt.encode({"sub": user_id, "role": role, "iat": now, "exp": now + 600}, JWT_SECRET, algorithm="HS256")


async def test_a_token_for_an_unknown_user_id_is_401_on_every_user_endpoint(client):
    headers = {"Authorization": "Bearer " + signed_for(str(uuid.uuid4()))}
    for path in ("/user/wallets", "/user/transactions", "/user/get/id"):
        resp = await client.get(path, headers=headers)
        assert resp.status == 401, (path, await resp.text())
        assert (await resp.json())["message"] == "Invalid token"


async def test_a_token_whose_role_differs_from_the_users_is_401(client):
    user = await register(client)
    resp = await client.get("/service/commission-rates",
                            headers={"Authorization": "Bearer " + signed_for(user["id"], "service")})
    assert resp.status == 401


async def test_a_deleted_users_token_is_401_in_a_process_that_had_not_seen_it(make_client, db):
    """The existence check is made once per token per process (then remembered with the verified
    token): a process started after the deletion, or one on another database, refuses it."""
    first = await make_client()
    user = await register(first)
    await db.execute("DELETE FROM wallets WHERE user_id = $1", uuid.UUID(user["id"]))
    await db.execute("DELETE FROM users WHERE id = $1", uuid.UUID(user["id"]))
    restarted = await make_client()
    resp = await restarted.get("/user/wallets", headers=user["headers"])
    assert resp.status == 401, await resp.text()


async def test_a_live_users_token_keeps_working(client):
    user = await register(client)
    for _ in range(3):
        resp = await client.get("/user/wallets", headers=user["headers"])
        assert resp.status == 200 and len((await resp.json())["wallets"]) == 3
