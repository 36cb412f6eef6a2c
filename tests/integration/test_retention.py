"""Idempotency keys expire: the sweep deletes old keys only, runs safely in several processes at
once, is started by the app, and a crashing background task is logged and restarted."""

from __future__ import annotations

import asyncio
import json
import uuid
from decimal import Decimal

import pytest

from tests.conftest import api_transfer, balance, fund, register, register_service
from tests.polling import until
from walletd.config import ConfigError, Settings
from walletd.jobs.supervision import run_supervised, start_supervised, stop_task
from walletd.persistence.breaker import DatabaseBreaker
from walletd.persistence.db import create_pool
from walletd.persistence.retention import prune_idempotency_keys, sweep_interval


async def insert_keys(db, count: int, age: str) -> list[str]:
    keys = [f"k-{uuid.uuid4().hex}" for _ in range(count)]
    await db.execute(
        """INSERT INTO idempotency_keys (principal_id, key, request_hash, status_code, response, created_at)
           SELECT $1, k, 'h', 200, '{}'::jsonb, now() - $3::text::interval FROM unnest($2::text[]) AS k""",
        uuid.uuid4(), keys, age)
    return keys


async def surviving(db, keys: list[str]) -> int:
    return await db.fetchval("SELECT count(*) FROM idempotency_keys WHERE key = ANY($1::text[])", keys)


async def test_old_keys_go_new_keys_stay(db, database_url):
    old = await insert_keys(db, 25, "2 hours")
    new = await insert_keys(db, 5, "10 minutes")
    pool = await create_pool(database_url, 2)
    try:
        assert await prune_idempotency_keys(pool, 3600, batch=10) >= 25  # three batches, the last short
        assert await prune_idempotency_keys(pool, 3600, batch=10) == 0
    finally:
        await pool.close()
    assert await surviving(db, old) == 0
    assert await surviving(db, new) == 5


async def test_sweeps_in_several_processes_at_once_delete_each_key_once(db, database_url):
    await prune_idempotency_keys_now(database_url)
    old = await insert_keys(db, 2_000, "3 days")
    new = await insert_keys(db, 50, "1 hour")
    pools = [await create_pool(database_url, 2) for _ in range(4)]  # one pool per "process"
    try:
        deleted = await asyncio.gather(*(prune_idempotency_keys(p, 86_400, batch=100) for p in pools))
    finally:
        for pool in pools:
            await pool.close()
    assert sum(deleted) == 2_000  # SKIP LOCKED: disjoint batches, no row deleted twice, no error
    assert await surviving(db, old) == 0
    assert await surviving(db, new) == 50


async def prune_idempotency_keys_now(database_url: str) -> None:
    pool = await create_pool(database_url, 1)
    try:
        await prune_idempotency_keys(pool, 86_400)
    finally:
        await pool.close()


async def test_the_app_sweeps_and_a_replay_after_pruning_moves_money_again(make_client, db):
    client = await make_client(idempotency_retention_seconds=3600)
    alice, bob = await register(client, "alice"), await register(client, "bob")
    service = await register_service(client)
    await fund(client, alice, service, 1, "100")
    for key in ("expiring", "fresh"):
        resp = await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "1", headers={"Idempotency-Key": key})
        assert resp.status == 200, await resp.text()
    after_first = await balance(client, alice, 1)
    # An hour and a bit later, as far as the database can tell, for the "expiring" key only.
    await db.execute("UPDATE idempotency_keys SET created_at = now() - interval '61 minutes' "
                     "WHERE key = 'expiring' AND principal_id = $1", uuid.UUID(alice["id"]))
    resp = await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "1",
                              headers={"Idempotency-Key": "expiring"})
    assert resp.headers.get("Idempotent-Replayed") == "true"  # not swept yet: still a replay

    await make_client(idempotency_retention_seconds=3600)  # a new process: its sweep runs at start
    await until(lambda: db.fetchval("SELECT count(*) = 0 FROM idempotency_keys WHERE key = 'expiring'"),
                what="the expired key swept")
    assert await db.fetchval("SELECT count(*) FROM idempotency_keys WHERE key = 'fresh'") == 1

    resp = await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "1", headers={"Idempotency-Key": "fresh"})
    assert resp.headers.get("Idempotent-Replayed") == "true"
    assert await balance(client, alice, 1) == after_first
    # The documented behaviour: past the retention, the same key is a new request.
    resp = await api_transfer(client, alice, 1, bob["wallets"][1]["id"], "1",
                              headers={"Idempotency-Key": "expiring"})
    assert resp.status == 200 and "Idempotent-Replayed" not in resp.headers
    assert await balance(client, alice, 1) == (after_first[0] - Decimal(1), Decimal(0))


def test_retention_setting_and_interval():
    assert Settings.from_env({}).idempotency_retention_seconds == 86_400
    assert Settings.from_env({"WALLETD_IDEMPOTENCY_RETENTION": "600"}).idempotency_retention_seconds == 600
    for bad in ("0", "-5", "a day"):
        with pytest.raises(ConfigError, match="WALLETD_IDEMPOTENCY_RETENTION|invalid"):
            Settings.from_env({"WALLETD_IDEMPOTENCY_RETENTION": bad})
    assert sweep_interval(86_400) == 300 and sweep_interval(600) == 60 and sweep_interval(3) == 1


async def test_a_crashing_task_is_logged_and_restarted_with_backoff(log_tap):
    runs = 0
    healthy = asyncio.Event()

    async def body() -> None:
        nonlocal runs
        runs += 1
        if runs <= 3:
            raise RuntimeError(f"crash {runs}")
        healthy.set()
        await asyncio.Event().wait()  # runs until cancelled

    task = start_supervised("flaky", body, min_backoff=0.01, max_backoff=0.04)
    await asyncio.wait_for(healthy.wait(), 10)
    await stop_task(task, timeout=5)
    assert task.cancelled()
    crashes = [json.loads(line) for line in log_tap.lines if '"task.crashed"' in line]
    assert [c["restart_in_s"] for c in crashes] == [0.01, 0.02, 0.04]
    assert all(c["task"] == "flaky" and c["level"] == "error" and "crash" in c["exception"] for c in crashes)


async def test_a_task_that_cannot_reach_the_database_is_retried_without_tracebacks(log_tap):
    breaker = DatabaseBreaker()
    runs = 0
    healthy = asyncio.Event()

    async def body() -> None:
        nonlocal runs
        runs += 1
        if runs <= 3:
            raise ConnectionRefusedError(111, "Connection refused")
        healthy.set()
        await asyncio.Event().wait()

    task = start_supervised("needs_db", body, min_backoff=0.01, max_backoff=0.04, breaker=breaker)
    try:
        await asyncio.wait_for(healthy.wait(), 10)
    finally:
        await stop_task(task, timeout=5)
        breaker.succeeded()
    assert not [line for line in log_tap.lines if '"task.crashed"' in line]
    assert len([line for line in log_tap.lines if '"db.unavailable"' in line]) == 1


async def test_a_task_that_returns_is_restarted_too(log_tap):
    runs = 0
    third = asyncio.Event()

    async def body() -> None:
        nonlocal runs
        runs += 1
        if runs == 3:
            third.set()

    task = asyncio.create_task(run_supervised("quitter", body, min_backoff=0.01, max_backoff=0.01))
    await asyncio.wait_for(third.wait(), 10)
    await stop_task(task, timeout=5)
    assert sum('"task.exited"' in line for line in log_tap.lines) >= 2


async def test_a_task_slow_to_stop_is_reported_and_shutdown_goes_on(log_tap):
    started, release = asyncio.Event(), asyncio.Event()

    async def stubborn() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await release.wait()  # a cleanup that takes longer than shutdown allows
            raise

    task = start_supervised("stubborn", stubborn)
    await asyncio.wait_for(started.wait(), 10)
    await stop_task(task, timeout=0.05)
    assert not task.done()
    assert any('"task.stop_timeout"' in line and '"stubborn"' in line for line in log_tap.lines)
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_the_app_owns_the_sweep_task(make_client):
    def sweeps() -> list[asyncio.Task]:
        return [t for t in asyncio.all_tasks() if t.get_name() == "idempotency_sweep" and not t.done()]

    before = len(sweeps())
    client = await make_client()
    assert len(sweeps()) == before + 1
    await client.close()  # the app's cleanup contexts run
    assert len(sweeps()) == before
