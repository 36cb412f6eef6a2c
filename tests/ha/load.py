"""Funded users and retrying transfer clients for the HA scripts, through walletd's HTTP API only.

A client gives every transfer its own Idempotency-Key and retries it, with the same key, on 503
and on connection errors (and, so the harness can report them, on any other 5xx) until it gets an
answer that settles it: 200 (acknowledged) or a 4xx (refused). A key whose every earlier attempt
was answered 503 ("certainly nothing moved") and whose 200 then comes as a replay had moved money
under one of those 503s: it is recorded in `LoadStats.lying_503s`, and the scripts fail on it.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

PASSWORD = "Ha!pass-" + uuid.uuid4().hex[:8]
TRANSFER_AMOUNT = "0.01"


@dataclass
class User:
    user_id: str
    token: str
    wallets: dict[int, str]  # currency id -> wallet id

    @property
    def auth(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class Ack:
    key: str
    transaction_id: str
    at: float
    replayed: bool


@dataclass
class LoadStats:
    statuses: Counter = field(default_factory=Counter)
    without_retry_after: int = 0
    server_errors: list[tuple[int, str, str]] = field(default_factory=list)  # (status, request id, body)
    refused: list[tuple[int, str]] = field(default_factory=list)
    acks: list[Ack] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    history: Counter = field(default_factory=Counter)  # answers to history pages, by status
    lying_503s: list[str] = field(default_factory=list)  # keys answered 503, later replayed as done


async def _call(session: aiohttp.ClientSession, method: str, url: str, **kwargs) -> dict:
    async with session.request(method, url, **kwargs) as response:
        body = await response.json(content_type=None)
        if response.status != 200:
            raise RuntimeError(f"{method} {url.split('?')[0]} answered {response.status}: {body}")
        return body


async def make_users(session: aiohttp.ClientSession, base: str, operator_key: str, count: int,
                     deposit: str = "1000") -> list[User]:
    """`count` users, each with `deposit` USD paid in through a service user's settlement."""
    tag = uuid.uuid4().hex[:8]
    service = await _call(session, "POST", f"{base}/auth/register_service", headers={"X-Operator-Key": operator_key},
                          json={"username": f"ha_svc_{tag}", "email": f"ha_svc_{tag}@example.com",
                                "password": PASSWORD})
    service_auth = {"Authorization": f"Bearer {service['access_token']}"}
    users = []
    for i in range(count):
        name = f"ha_{tag}_{i}"
        await _call(session, "POST", f"{base}/auth/register",
                    json={"username": name, "email": f"{name}@example.com", "password": PASSWORD})
        token = (await _call(session, "POST", f"{base}/auth/login",
                             json={"username": name, "password": PASSWORD}))["access_token"]
        wallets = (await _call(session, "GET", f"{base}/user/wallets",
                               headers={"Authorization": f"Bearer {token}"}))["wallets"]
        user = User(wallets[0]["user_id"], token, {w["currency_id"]: w["id"] for w in wallets})
        pending = await _call(session, "POST", f"{base}/wallet/deposit", headers=user.auth,
                              json={"service_user_id": service["user_id"], "wallet_id": user.wallets[1],
                                    "amount": deposit})
        await _call(session, "PUT", f"{base}/service/transaction/deposit", headers=service_auth,
                    json={"transaction_id": pending["id"], "new_status": "paid"})
        users.append(user)
    return users


async def transfer_once(session: aiohttp.ClientSession, base: str, source: User, target_wallet: str,
                        stats: LoadStats, give_up_at: float) -> None:
    """One transfer under one key, retried with that key until it is settled or time runs out."""
    key = f"ha-{uuid.uuid4()}"
    body = {"source_wallet_id": source.wallets[1], "target_wallet_id": target_wallet, "amount": TRANSFER_AMOUNT}
    headers = {**source.auth, "Idempotency-Key": key}
    answered_503 = outcome_unknown = False  # what earlier attempts of this key were told
    while True:
        if time.monotonic() > give_up_at:
            stats.unresolved.append(key)
            return
        started = time.monotonic()
        try:
            async with session.post(f"{base}/wallet/transfer", json=body, headers=headers) as response:
                text = await response.text()
                status = response.status
                retry_after = response.headers.get("Retry-After")
                replayed = response.headers.get("Idempotent-Replayed") == "true"
                request_id = response.headers.get("X-Request-ID", "")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            stats.statuses[f"connection error ({type(exc).__name__})"] += 1
            outcome_unknown = True  # the attempt may have committed before its answer was lost
            await asyncio.sleep(0.2)
            continue
        stats.statuses[str(status)] += 1
        if status == 200:
            stats.latencies.append(time.monotonic() - started)
            stats.acks.append(Ack(key, json.loads(text)["id"], time.monotonic(), replayed))
            if replayed and answered_503 and not outcome_unknown:
                stats.lying_503s.append(key)  # only attempts told 503 came before: one of them moved
            return
        if status == 503:
            answered_503 = True
            if retry_after is None:
                stats.without_retry_after += 1
            try:
                pause = min(float(retry_after or 0.5), 2.0)
            except ValueError:
                pause = 0.5
            await asyncio.sleep(pause)
        elif status >= 500:
            stats.server_errors.append((status, request_id, text[:300]))
            outcome_unknown = True  # 500 outcome_unknown says exactly that
            await asyncio.sleep(0.2)
        else:
            stats.refused.append((status, text[:300]))
            return


async def transfer_client(session: aiohttp.ClientSession, base: str, users: list[User], index: int,
                          stats: LoadStats, stop: asyncio.Event, give_up_at: float) -> None:
    """Transfers from users[index] to the next user, every fourth one into their EUR wallet."""
    source, target = users[index], users[(index + 1) % len(users)]
    n = 0
    while not stop.is_set():
        target_wallet = target.wallets[2] if n % 4 == 3 else target.wallets[1]
        await transfer_once(session, base, source, target_wallet, stats, give_up_at)
        n += 1


async def history_reader(session: aiohttp.ClientSession, base: str, user: User, stats: LoadStats,
                         stop: asyncio.Event) -> None:
    """Reads the user's first history page every 50 ms (from the read pool, when walletd has one)."""
    while not stop.is_set():
        try:
            async with session.get(f"{base}/user/transactions", params={"limit": "20"}, headers=user.auth) as r:
                text = await r.text()
                stats.history[str(r.status)] += 1
                if r.status == 503 and "Retry-After" not in r.headers:
                    stats.without_retry_after += 1
                elif r.status >= 500 and r.status != 503:
                    stats.server_errors.append((r.status, r.headers.get("X-Request-ID", ""), text[:300]))
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            stats.history[f"connection error ({type(exc).__name__})"] += 1
        await asyncio.sleep(0.05)
