"""Shared fixtures: one embedded PostgreSQL per test session, a fresh database per test module,
and the real app through pytest-aiohttp. No mocks: every test talks HTTP to walletd on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from tests.oracles import DEPOSIT_RATE, net_of_commission
from tests.support import servers
from tests.support.servers import ServerProcess, free_port, walletd_command, walletd_server  # noqa: F401 - re-exported
from walletd import logs
from walletd.app import create_app
from walletd.config import Settings
from walletd.integrity.verify import audit_chain
from walletd.persistence import embedded
from walletd.persistence.audit import find_problems
from walletd.persistence.migrate import migrate

JWT_SECRET = "test-secret-" + "x" * 40
SECRETS_KEY = base64.urlsafe_b64encode(b"walletd-test-secrets-key-32bytes").decode()  # a Fernet key
OPERATOR_KEY = "test-operator-key-0123456789abcdef"  # at least 24 characters, as walletd requires
OPERATOR = {"X-Operator-Key": OPERATOR_KEY}
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
logs.configure("info", stream=LOG_TAP, buffered=False)
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


async def create_empty_database(admin_url: str) -> str:
    """A new database nothing has been applied to; returns its URL."""
    return await servers.create_empty_database(admin_url, f"walletd_test_{os.getpid()}_{next(_db_counter)}")


async def create_database(admin_url: str) -> str:
    """A new database with walletd's schema and seed data applied."""
    url = await create_empty_database(admin_url)
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
                      secrets_key=SECRETS_KEY, actor_idle_seconds=5.0, pool_size=6)
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
    return net_of_commission(amount, DEPOSIT_RATE)


async def balance(client, user: dict, currency_id: int) -> tuple[Decimal, Decimal]:
    resp = await client.get("/user/wallet", headers=user["headers"],
                            params={"wallet_id": user["wallets"][currency_id]["id"]})
    body = await resp.json()
    return Decimal(body["balance"]), Decimal(body["reserved_balance"])


async def gather(*aws):
    return await asyncio.gather(*aws)


# ---- ledger test helpers: real processes and whole-database invariants ------------------------------

REPO_ROOT = Path(__file__).resolve().parents[1]


async def run_cli(database_url: str, *args: str, timeout: float = 60) -> tuple[int, str]:
    """Run `walletd <args>` against database_url; returns (exit code, stdout + stderr)."""
    env = {**os.environ, "DATABASE_URL": database_url, "WALLETD_JWT_SECRET": JWT_SECRET,
           "WALLETD_SECRETS_KEY": SECRETS_KEY}
    proc = await asyncio.create_subprocess_exec(*walletd_command(*args), cwd=REPO_ROOT, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode()


class ServeProcess(ServerProcess):
    """A real `walletd serve` subprocess on 127.0.0.1 and a free port (tests/support/servers.py does the work)."""

    def __init__(self, database_url: str, **env: str) -> None:
        log = Path(tempfile.mkstemp(prefix="walletd-serve-", suffix=".log")[1])
        server = walletd_server(database_url, log, jwt_secret=JWT_SECRET, operator_key=OPERATOR_KEY,
                                secrets_key=SECRETS_KEY,
                                cwd=REPO_ROOT, **{"WALLETD_LOG_LEVEL": "warning", **env})
        super().__init__(server.name, server.cmd, server.env, server.port, log, server.cwd)
        self.database_url = database_url

    async def start(self, ready_path: str = "/ready", timeout: float = 30) -> "ServeProcess":
        await super().start(ready_path, timeout)
        return self

    async def stop(self, timeout: float = 30) -> int | None:
        code = await super().stop(timeout)
        self.log_path.unlink(missing_ok=True)
        return code


async def wallets_snapshot(db) -> list[tuple]:
    """Every wallet row, exactly as stored, for before/after comparisons."""
    rows = await db.fetch("SELECT id, user_id, currency_id, kind, balance::text, reserved_balance::text "
                          "FROM wallets ORDER BY id")
    return [tuple(r) for r in rows]


async def assert_ledger_consistent(db) -> None:
    """The ledger's invariants and the journal's hash chain (as far as it is sealed yet), checked by
    the same code as `walletd audit` (on db's connection)."""
    problems = await find_problems(db)
    assert problems == [], problems
    chain = await audit_chain(db)
    assert [str(p) for p in chain.problems] == [], chain.summary()


async def api_transfer(client, user: dict, source_currency: int, target_wallet_id: str, amount, headers=None):
    """POST /wallet/transfer from the user's wallet in source_currency; returns the raw response."""
    return await client.post("/wallet/transfer", headers={**user["headers"], **(headers or {})}, params={
        "source_wallet_id": user["wallets"][source_currency]["id"], "target_wallet_id": target_wallet_id,
        "amount": str(amount)})


async def api_deposit(client, user: dict, service: dict, currency_id: int, amount, headers=None):
    return await client.post("/wallet/deposit", headers={**user["headers"], **(headers or {})}, params={
        "service_user_id": service["id"], "wallet_id": user["wallets"][currency_id]["id"], "amount": str(amount)})


async def api_withdraw(client, user: dict, service: dict, currency_id: int, amount, headers=None):
    return await client.post("/wallet/withdraw", headers={**user["headers"], **(headers or {})}, params={
        "service_user_id": service["id"], "from_wallet_id": user["wallets"][currency_id]["id"],
        "amount": str(amount)})


async def api_settle(client, service: dict, kind: str, transaction_id: str, new_status: str, headers=None):
    return await client.put(f"/service/transaction/{kind}", headers={**service["headers"], **(headers or {})},
                            params={"transaction_id": transaction_id, "new_status": new_status})


async def api_external_wallet(client, user: dict, currency_id: int) -> dict:
    resp = await client.post("/user/create/external_wallet", headers=user["headers"],
                             params={"wallet_name": f"card-{currency_id}", "currency_id": currency_id})
    assert resp.status == 200, await resp.text()
    return await resp.json()


@pytest.fixture
async def provider(aiohttp_server):
    """A rate provider (exchangeratesapi.io shapes) on 127.0.0.1. Its documents live in the returned
    dict; tests change them between calls."""
    from aiohttp import web

    state = {
        "latest": {"base": "EUR", "timestamp": int(time.time()),
                   "rates": {"EUR": 1, "USD": "1.0850000000", "RUB": "98.7654321", "GBP": "0.8555"}},
        "symbols": {"symbols": {"EUR": "Euro", "USD": "United States Dollar", "RUB": "Russian Ruble",
                                "GBP": "British Pound Sterling"}},
        "status": 200, "calls": [],
    }

    async def latest(request):
        state["calls"].append(request.path)
        if state["status"] != 200:
            return web.Response(status=state["status"], text="down")
        return web.json_response(state["latest"])

    async def symbols(request):
        state["calls"].append(request.path)
        return web.json_response(state["symbols"])

    app = web.Application()
    app.router.add_get("/latest", latest)
    app.router.add_get("/symbols", symbols)
    server = await aiohttp_server(app)
    state["url"] = f"http://127.0.0.1:{server.port}"
    return state


@pytest.fixture
async def proxy(admin_url):
    """A TCP proxy to the session's PostgreSQL that can lose a commit's answer or the write (tests/pgproxy.py)."""
    from tests.pgproxy import PgProxy

    proxy = await PgProxy(admin_url).start()
    yield proxy
    await proxy.close()
