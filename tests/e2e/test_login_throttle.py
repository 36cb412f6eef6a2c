"""Login throttling: per-username and per-address failure limits, 429 +
Retry-After, the bounded password-hash pool, and what auth.login_failed may log."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from decimal import ROUND_DOWN, Decimal

import aiohttp
import pytest

from tests.conftest import OPERATOR_KEY, PASSWORD, SECRETS_KEY, register, register_service, unique
from tests.polling import until
from walletd.handlers.identity import passwords_key
from walletd.keys import ServerKeys, new_secrets_key

WINDOW = 600


@pytest.fixture(autouse=True)
async def no_failures_on_record(db):
    # Every test here logs in from 127.0.0.1: start each with no counters from the others.
    await db.execute("DELETE FROM login_failures")


async def login(client, username: str, password: str):
    return await client.post("/auth/login", params={"username": username, "password": password})


def basic(username: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


async def assert_throttled(resp) -> int:
    text = await resp.text()
    assert resp.status == 429, text
    body = json.loads(text)
    assert body["status"] == 429 and body["code"] == "too_many_attempts" and body["request_id"], body
    retry_after = int(resp.headers["Retry-After"])
    assert 1 <= retry_after <= WINDOW
    return retry_after


async def test_a_username_past_its_limit_gets_429_even_with_the_right_password(make_client):
    client = await make_client(login_max_failures=3, login_window_seconds=WINDOW)
    user = await register(client)
    for _ in range(3):
        assert (await login(client, user["username"], "wrong-" + PASSWORD)).status == 401
    await assert_throttled(await login(client, user["username"], PASSWORD))
    await assert_throttled(await client.get("/user/get/token", headers=basic(user["username"], PASSWORD)))


async def test_one_locked_out_user_does_not_lock_out_others_at_the_same_address(make_client):
    client = await make_client(login_max_failures=3, login_window_seconds=WINDOW)
    victim, neighbour = await register(client), await register(client)
    for _ in range(4):
        await login(client, victim["username"], "guess")
    await assert_throttled(await login(client, victim["username"], PASSWORD))
    resp = await login(client, neighbour["username"], PASSWORD)
    assert resp.status == 200, await resp.text()


async def test_a_success_resets_the_username_counter(make_client, db):
    client = await make_client(login_max_failures=3, login_window_seconds=WINDOW)
    user = await register(client)
    for _ in range(2):
        assert (await login(client, user["username"], "guess")).status == 401
    assert (await login(client, user["username"], PASSWORD)).status == 200
    for _ in range(2):
        assert (await login(client, user["username"], "guess")).status == 401
    assert (await login(client, user["username"], PASSWORD)).status == 200
    # The address keeps its count: logging in to an account of one's own buys no more guesses.
    assert await db.fetchval("SELECT failures FROM login_failures WHERE scope = 'address'") == 4


async def test_the_address_limit_stops_a_sweep_over_many_usernames(make_client):
    client = await make_client(login_max_failures=3, login_max_failures_per_address=6, login_window_seconds=WINDOW)
    user = await register(client)
    for _ in range(6):  # each name tried once: no username reaches its limit
        assert (await login(client, unique("sweep"), "guess")).status == 401
    await assert_throttled(await login(client, user["username"], PASSWORD))


async def test_unknown_usernames_are_counted_like_known_ones(make_client):
    client = await make_client(login_max_failures=2, login_window_seconds=WINDOW)
    ghost = unique("ghost")
    for _ in range(2):
        assert (await login(client, ghost, "guess")).status == 401
    await assert_throttled(await login(client, ghost, "guess"))


async def test_an_unknown_username_costs_the_same_password_check_as_a_known_one(client):
    """Not a timing test: it counts the argon2 verifications each kind of failure performs."""
    user = await register(client)
    pool = client.server.app[passwords_key]
    before = pool.hashes
    assert (await login(client, unique("ghost"), "guess")).status == 401
    assert pool.hashes == before + 1
    assert (await login(client, user["username"], "guess")).status == 401
    assert pool.hashes == before + 2


async def test_service_login_is_throttled_too(make_client):
    client = await make_client(login_max_failures=2, login_window_seconds=WINDOW)
    service = await register_service(client)
    params = {"username": service["username"], "password": "guess"}
    for _ in range(2):
        assert (await client.get("/service/auth/login", params=params)).status == 401
    await assert_throttled(await client.get("/service/auth/login",
                                            params={**params, "password": PASSWORD}))


async def test_counters_are_shared_by_processes_on_one_database(make_client):
    """Two apps (as two `--workers` processes) on one database share the username's counter."""
    first = await make_client(login_max_failures=3, login_window_seconds=WINDOW)
    second = await make_client(login_max_failures=3, login_window_seconds=WINDOW)
    user = await register(first)
    for client in (first, second, first):
        assert (await login(client, user["username"], "guess")).status == 401
    await assert_throttled(await login(second, user["username"], PASSWORD))


async def test_a_window_that_ended_starts_afresh(make_client, db):
    client = await make_client(login_max_failures=2, login_window_seconds=WINDOW)
    user = await register(client)
    for _ in range(2):
        await login(client, user["username"], "guess")
    await assert_throttled(await login(client, user["username"], PASSWORD))
    # The window's start moved back past its length: as if WINDOW seconds had gone by.
    await db.execute("UPDATE login_failures SET window_start = window_start - make_interval(secs => $1)",
                     float(WINDOW + 1))
    assert (await login(client, user["username"], "guess")).status == 401
    assert await db.fetchval("SELECT failures FROM login_failures WHERE scope = 'username'") == 1
    assert (await login(client, user["username"], PASSWORD)).status == 200


async def test_login_failed_logs_a_keyed_pseudonym_or_the_user_id_never_the_typed_name(client, log_tap, db):
    user = await register(client)
    typed = "my-Secret-passw0rd-typed-as-name"
    await login(client, typed, "x")
    await login(client, user["username"], "wrong")
    failures = [json.loads(line) for line in log_tap.lines if '"auth.login_failed"' in line]
    assert len(failures) == 2
    pseudonym = failures[0]["username_hmac"]
    assert "username" not in failures[0] and failures[1]["user_id"] == user["id"] and "username" not in failures[1]
    assert not any(typed in line for line in log_tap.lines)
    # Keyed: the server's key gives this pseudonym, another key another one, and no unkeyed hash of the
    # name (what a dictionary attack computes) matches what is logged or stored.
    assert pseudonym == ServerKeys(SECRETS_KEY).pseudonym(typed) != ServerKeys(new_secrets_key()).pseudonym(typed)
    unkeyed = {hashlib.new(name, typed.encode()).hexdigest() for name in ("sha256", "sha1", "md5", "sha512")}
    assert not any(pseudonym in digest or digest[:16] in pseudonym for digest in unkeyed)
    stored = await db.fetchval("SELECT key FROM login_failures WHERE scope = 'username' AND key = $1", pseudonym)
    assert stored == pseudonym


async def test_the_hash_pool_refuses_beyond_its_bound_instead_of_queueing(make_client):
    """24 concurrent wrong-password logins against a pool of 1 thread and 2 places: some are refused
    at once with 503 + Retry-After, the rest are checked, none hangs, and a real login works after."""
    client = await make_client(hash_threads=1, hash_queue=2, login_max_failures=1000,
                               login_max_failures_per_address=1000)
    user = await register(client)
    guesses = [login(client, unique("guesser"), "guess") for _ in range(24)]
    responses = await asyncio.wait_for(asyncio.gather(*guesses), timeout=120)  # a guard, not a timing
    statuses = [resp.status for resp in responses]
    assert set(statuses) <= {401, 503}, statuses
    refused = [resp for resp in responses if resp.status == 503]
    assert refused and statuses.count(401) >= 2, statuses
    for resp in refused:
        assert resp.headers["Retry-After"].isdigit()
        assert (await resp.json())["status"] == 503
    pool = client.server.app[passwords_key]
    assert pool.peak <= 2 and pool.refused == len(refused) and pool.in_flight == 0
    assert (await login(client, user["username"], PASSWORD)).status == 200


async def test_a_crowd_of_guessers_from_one_address_cannot_keep_other_addresses_out(make_client):
    """16 guessers on 127.0.0.1 retrying every refusal at once hold at most their address's share of
    the hash pool (2 of 4 places), so a real user on 127.0.0.2 is checked every time, not refused."""
    client = await make_client(hash_threads=1, hash_queue=4, hash_queue_per_address=2,
                               login_max_failures=100_000, login_max_failures_per_address=100_000)
    user = await register(client)
    statuses: list[int] = []
    done = asyncio.Event()

    async def guesser() -> None:
        while not done.is_set():
            statuses.append((await login(client, unique("guesser"), "guess")).status)

    crowd = [asyncio.create_task(guesser()) for _ in range(16)]
    real_user = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0)))
    try:
        async with asyncio.timeout(120):  # a guard, not a timing
            await until(lambda: 503 in statuses, 120, interval=0.01, what="the crowd saturating its share")
            for _ in range(5):
                async with real_user.post(client.make_url("/auth/login"),
                                          params={"username": user["username"], "password": PASSWORD}) as resp:
                    assert resp.status == 200, await resp.text()
    finally:
        done.set()
        await asyncio.gather(*crowd)
        await real_user.close()
    assert set(statuses) <= {401, 503}
    pool = client.server.app[passwords_key]
    assert pool.peak <= 3 and pool.in_flight == 0  # the crowd's 2 places and the real user's 1


async def test_wrong_operator_keys_count_against_the_address_not_the_operator(make_client, db):
    client = await make_client(login_max_failures_per_address=3, login_window_seconds=WINDOW)
    body = {"username": unique("svc"), "email": f"{unique('svc')}@example.com", "password": PASSWORD}
    for _ in range(3):
        resp = await client.post("/auth/register_service", headers={"X-Operator-Key": "guess"}, json=body)
        assert resp.status == 403
    await assert_throttled(await client.post("/auth/register_service", headers={"X-Operator-Key": "guess"},
                                             json=body))
    assert await db.fetchval("SELECT count(*) FROM login_failures WHERE scope = 'username'") == 0
    # The operator, on another address, is not locked out.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))) as operator:
        async with operator.post(client.make_url("/auth/register_service"), json=body,
                                 headers={"X-Operator-Key": OPERATOR_KEY}) as resp:
            assert resp.status == 200, await resp.text()


async def test_wrong_keys_on_operator_routes_lock_out_their_address_never_the_operator(make_client, db):
    client = await make_client(login_max_failures_per_address=3, login_window_seconds=WINDOW)
    rate = await db.fetchval("SELECT rate FROM exchange_rates WHERE from_currency_id = 1 AND to_currency_id = 3")
    lowered = (rate * 99 / 100).quantize(Decimal("1E-10"), ROUND_DOWN)
    lower = {"from_currency": 1, "to_currency": 3, "rate": str(lowered)}  # lower: always allowed
    guess = {"X-Operator-Key": "a-guess-that-is-long-enough-to-pass"}
    for path, method in (("/service/exchange-rates/set", "POST"), ("/service/transactions/stale", "GET"),
                         ("/service/exchange-rates/set", "POST")):
        resp = await client.request(method, path, headers=guess, params=lower if method == "POST" else None)
        assert resp.status == 403 and (await resp.json())["code"] == "operator_key_required"
    # Past the limit this address is refused on every operator route, even with the right key...
    await assert_throttled(await client.post("/service/exchange-rates/set", headers={"X-Operator-Key": OPERATOR_KEY},
                                             params=lower))
    await assert_throttled(await client.get("/service/transactions/stale", headers={"X-Operator-Key": OPERATOR_KEY}))
    assert await db.fetchval("SELECT count(*) FROM login_failures WHERE scope = 'username'") == 0
    # ...while the operator, on another address, is not locked out.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))) as operator:
        async with operator.post(client.make_url("/service/exchange-rates/set"), params=lower,
                                 headers={"X-Operator-Key": OPERATOR_KEY}) as resp:
            assert resp.status == 200, await resp.text()
    assert await db.fetchval("SELECT rate FROM exchange_rates WHERE from_currency_id = 1 AND to_currency_id = 3") \
        == lowered
