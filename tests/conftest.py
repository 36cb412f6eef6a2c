"""Shared fixtures: one embedded PostgreSQL per test session, a fresh database per test module,
and the real app through pytest-aiohttp. No mocks: every test talks HTTP to walletd on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import tempfile
import uuid
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from walletd import logs
from walletd.app import create_app
from walletd.config import Settings
from walletd.persistence import embedded
from walletd.persistence.migrate import migrate

JWT_SECRET = "test-secret-" + "x" * 40
OPERATOR_KEY = "test-operator-key"
PASSWORD = "Str0ng!pass"
_db_counter = itertools.count()


class LogTap:
    """A stream for structlog: keeps every JSON line so tests can read the audit trail."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> None:
        self.lines.extend(line for line in text.splitlines() if line.strip())

    def flush(self) -> None:
        pass

    def clear(self) -> None:
        self.lines.clear()


LOG_TAP = LogTap()
logs.configure("info", stream=LOG_TAP)
if os.environ.get("WALLETD_TEST_LOG"):
    LOG_TAP.write = lambda text, _w=LOG_TAP.write: (print(text), _w(text))[1]  # noqa: E731


@pytest.fixture(scope="session")
def pg_server():
    base = Path(tempfile.mkdtemp(prefix="walletd-test-"))
    os.chmod(base, 0o755)  # the embedded server runs as its own system user when we are root
    server = embedded.start(base, throwaway=True)
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def admin_url(pg_server) -> str:
    return embedded.database_url(pg_server)


async def create_database(admin_url: str) -> str:
    name = f"walletd_test_{os.getpid()}_{next(_db_counter)}"
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = admin_url.replace("/postgres?", f"/{name}?")
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return url


@pytest.fixture(scope="module")
async def database_url(admin_url) -> str:
    return await create_database(admin_url)


@pytest.fixture
def settings_for(database_url):
    def build(**overrides) -> Settings:
        values = dict(database_url=database_url, jwt_secret=JWT_SECRET, operator_key=OPERATOR_KEY,
                      actor_idle_seconds=5.0, pool_size=6)
        values.update(overrides)
        return Settings(**values)
    return build


@pytest.fixture
async def make_client(aiohttp_client, settings_for):
    async def build(**overrides):
        settings = settings_for(**overrides)
        return await aiohttp_client(create_app(settings, settings.database_url, settings.jwt_secret))
    return build


@pytest.fixture
async def client(make_client):
    return await make_client()


@pytest.fixture
async def db(database_url):
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


@pytest.fixture
def log_tap():
    LOG_TAP.clear()
    return LOG_TAP


# ---- helpers the tests share ---------------------------------------------------------------------


def unique(prefix: str = "u") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


async def register(client, prefix: str = "user") -> dict:
    """A new user: returns {username, token, headers, id, wallets: {currency_id: wallet}}."""
    username = unique(prefix)
    resp = await client.post("/auth/register", json={"username": username, "email": f"{username}@example.com",
                                                     "password": PASSWORD})
    assert resp.status == 200, await resp.text()
    token = (await resp.json())["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    wallets = (await (await client.get("/user/wallets", headers=headers)).json())["wallets"]
    me = await (await client.get("/user/get/id", headers=headers)).json()
    return {"username": username, "token": token, "headers": headers, "id": me["id"],
            "wallets": {w["currency_id"]: w for w in wallets}}


async def register_service(client) -> dict:
    username = unique("svc")
    resp = await client.post("/auth/register_service", headers={"X-Operator-Key": OPERATOR_KEY},
                             json={"username": username, "email": f"{username}@example.com", "password": PASSWORD})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    return {"username": username, "token": body["access_token"], "id": body["user_id"],
            "headers": {"Authorization": f"Bearer {body['access_token']}"}}


async def fund(client, user: dict, service: dict, currency_id: int, amount: str) -> Decimal:
    """Deposit through the payment service and settle it paid; returns the credited amount."""
    wallet_id = user["wallets"][currency_id]["id"]
    resp = await client.post("/wallet/deposit", headers=user["headers"],
                             params={"service_user_id": service["id"], "wallet_id": wallet_id, "amount": amount})
    assert resp.status == 200, await resp.text()
    tx = await resp.json()
    resp = await client.put("/service/transaction/deposit", headers=service["headers"],
                            params={"transaction_id": tx["id"], "new_status": "paid"})
    assert resp.status == 200, await resp.text()
    return Decimal(amount) - (Decimal(amount) * Decimal("0.01")).quantize(Decimal("1E-10"))


async def balance(client, user: dict, currency_id: int) -> tuple[Decimal, Decimal]:
    resp = await client.get("/user/wallet", headers=user["headers"],
                            params={"wallet_id": user["wallets"][currency_id]["id"]})
    body = await resp.json()
    return Decimal(body["balance"]), Decimal(body["reserved_balance"])


async def gather(*aws):
    return await asyncio.gather(*aws)
