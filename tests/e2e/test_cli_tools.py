"""`walletd --version`, `serve --help`, `config`, `smoke` and `demo` as a user runs them: real
processes against a live `walletd serve` on a real PostgreSQL database."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.conftest import OPERATOR_KEY, REPO_ROOT, SECRETS_KEY, ServeProcess, walletd_command
from walletd import __version__
from walletd.config_catalogue import SETTINGS


@pytest.fixture(scope="module")
async def server(database_url):
    serve = await ServeProcess(database_url).start()
    yield serve
    await serve.stop()


@pytest.fixture
def empty_data_dir():
    path = Path(tempfile.mkdtemp(prefix="walletd-cli-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def walletd(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    base = {k: v for k, v in os.environ.items() if k not in ("WALLETD_OPERATOR_KEY", "DATABASE_URL", "WALLETD_URL")}
    proc = await asyncio.create_subprocess_exec(*walletd_command(*args), cwd=REPO_ROOT, env={**base, **(env or {})},
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode, out.decode()


async def test_version_and_serve_help():
    code, out = await walletd("--version")
    assert (code, out.strip()) == (0, f"walletd {__version__}")
    code, out = await walletd("serve", "--help")
    assert code == 0
    assert "env WALLETD_HOST; default 127.0.0.1" in out and "env WALLETD_PORT; default 8010" in out
    assert "env WALLETD_WORKERS; default 1" in out
    missing = [s.name for s in SETTINGS if not re.search(rf"^\s+{s.name}\s", out, re.M)]
    assert not missing, f"serve --help does not list {missing}"


async def test_config_prints_every_setting_with_secrets_masked(empty_data_dir):
    secrets = {"WALLETD_JWT_SECRET": "jwt-" + "s" * 44, "WALLETD_SECRETS_KEY": SECRETS_KEY,
               "WALLETD_OPERATOR_KEY": OPERATOR_KEY, "WALLETD_JWT_SECRET_PREVIOUS": "old-" + "p" * 44}
    env = {"DATABASE_URL": "postgresql://walletd:db-password-1@db.internal:5432/walletd?sslmode=verify-full",
           "WALLETD_READ_DATABASE_URL": "postgresql://reader@replica/walletd?password=read-password-2"
                                        "&sslpassword=key-password-3",
           "WALLETD_RATES_URL": "https://user-key-4@rates.example/v6/path-key-5",
           "WALLETD_POOL_SIZE": "12", **secrets}
    code, out = await walletd("config", env=env)
    assert code == 0, out
    for secret in [*secrets.values(), "db-password-1", "read-password-2", "key-password-3", "user-key-4",
                   "path-key-5"]:
        assert secret not in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip() and not line.startswith("#")}
    assert all(s.name in lines for s in SETTINGS), [s.name for s in SETTINGS if s.name not in lines]
    assert "postgresql://walletd:***@db.internal:5432/walletd?sslmode=verify-full" in lines["DATABASE_URL"]
    assert "password=***" in lines["WALLETD_READ_DATABASE_URL"]
    assert "https://***@rates.example/***" in lines["WALLETD_RATES_URL"]
    assert re.search(r"WALLETD_POOL_SIZE\s+12\s+\(environment\)", lines["WALLETD_POOL_SIZE"])
    assert re.search(r"WALLETD_MAX_BATCH_LEGS\s+1000\s+\(default\)", lines["WALLETD_MAX_BATCH_LEGS"])
    assert "masked" in lines["WALLETD_JWT_SECRET"] and "(environment)" in lines["WALLETD_JWT_SECRET"]


async def test_config_names_the_generated_credentials_of_an_embedded_installation(empty_data_dir):
    """Without DATABASE_URL: where `make run` keeps (or will make) each credential."""
    (empty_data_dir / "operator-key").write_text(OPERATOR_KEY)
    code, out = await walletd("config", env={"WALLETD_DATA_DIR": str(empty_data_dir)})
    assert code == 0, out
    assert OPERATOR_KEY not in out
    key_line = next(line for line in out.splitlines() if line.startswith("WALLETD_OPERATOR_KEY "))
    assert str(empty_data_dir.resolve() / "operator-key") in key_line and "(generated)" in key_line
    jwt_line = next(line for line in out.splitlines() if line.startswith("WALLETD_JWT_SECRET "))
    assert "jwt-secret" in jwt_line and "generated at first start" in jwt_line
    assert not (empty_data_dir / "jwt-secret").exists()  # config makes nothing


async def test_config_refuses_what_serve_refuses():
    code, out = await walletd("config", env={"WALLETD_POOL_SIZE": "lots"})
    assert code == 2 and "WALLETD_POOL_SIZE" in out, out
    code, out = await walletd("config", env={"DATABASE_URL": "postgresql://db.internal/walletd"})
    assert code == 2 and "WALLETD_JWT_SECRET" in out, out
    code, out = await walletd("config", env={"WALLETD_OPEN_SERVICE_REGISTRATION": "1", "WALLETD_OPERATOR_KEY": OPERATOR_KEY})
    assert code == 2 and "WALLETD_OPEN_SERVICE_REGISTRATION" in out and "WALLETD_OPERATOR_KEY" in out, out


async def test_smoke_without_an_operator_key_says_what_it_skipped(server, empty_data_dir, db):
    code, out = await walletd("smoke", "--base-url", server.url, env={"WALLETD_DATA_DIR": str(empty_data_dir)})
    assert code == 0, out
    for step in ("deposit", "settle", "transfer"):
        assert f"SKIP  {step}: no operator key" in out
    assert "7 steps passed, 5 skipped" in out
    name = re.search(r"ok    register (smoke_[0-9a-f]+)", out).group(1)
    assert await db.fetchval("SELECT count(*) FROM users WHERE username = $1", name) == 1


async def test_smoke_reads_the_operator_key_from_the_environment(server, empty_data_dir, db):
    code, out = await walletd("smoke", "--base-url", server.url,
                              env={"WALLETD_OPERATOR_KEY": OPERATOR_KEY, "WALLETD_DATA_DIR": str(empty_data_dir)})
    assert code == 0, out
    assert "operator key from WALLETD_OPERATOR_KEY" in out and "12 steps passed, 0 skipped" in out
    name = re.search(r"ok    register (smoke_[0-9a-f]+)", out).group(1)
    rows = await db.fetch("SELECT username, role FROM users WHERE username LIKE $1 ORDER BY username", name + "%")
    assert [tuple(r) for r in rows] == [(name, "user"), (name + "_svc", "service")]


async def test_smoke_reads_the_operator_key_from_the_data_directory(server, empty_data_dir):
    (empty_data_dir / "operator-key").write_text(OPERATOR_KEY + "\n")
    code, out = await walletd("smoke", "--base-url", server.url, env={"WALLETD_DATA_DIR": str(empty_data_dir)})
    assert code == 0, out
    assert f"operator key from {empty_data_dir / 'operator-key'}" in out and "0 skipped" in out


async def test_smoke_fails_loudly_with_a_wrong_operator_key(server, empty_data_dir):
    code, out = await walletd("smoke", "--base-url", server.url, "--operator-key", "wrong",
                              env={"WALLETD_DATA_DIR": str(empty_data_dir)})
    assert code == 1
    assert re.search(r"FAIL  after 7 step\(s\): POST \S+/auth/register_service answered 403", out), out


async def test_demo_seeds_funded_users_and_its_curl_lines_work(server, empty_data_dir):
    code, out = await walletd("demo", "--base-url", server.url, env={"WALLETD_OPERATOR_KEY": OPERATOR_KEY})
    assert code == 0, out
    assert re.search(r"USD wallet \S+  balance 990\.0000000000", out)  # alice: 1000 deposited, 1% commission
    assert re.search(r"EUR wallet \S+  balance 495\.0000000000", out)  # bob: 500
    token_lines = [line.strip() for line in out.splitlines() if re.match(r"\s+[A-Z]+_TOKEN='", line)]
    curl_lines = [line.strip() for line in out.splitlines() if line.startswith("  curl ")]
    assert len(token_lines) == 3 and len(curl_lines) == 4
    script = "\n".join([*token_lines, *(f"{line}; echo" for line in curl_lines)])
    proc = await asyncio.create_subprocess_exec("bash", "-c", script, stdout=asyncio.subprocess.PIPE)
    answers = [json.loads(line) for line in (await proc.communicate())[0].decode().splitlines()]
    wallets, transfer, history, service_login = answers
    assert [w["currency"] for w in wallets["wallets"]] == ["USD", "EUR", "RUB"]
    assert transfer["status"] == "close" and transfer["converted_amount"] == "23.0000000000"  # 25 USD at 0.92
    assert history["transactions"][0]["type"] == "transfer"
    assert "access_token" in service_login and "user_id" in service_login


async def test_demo_without_an_operator_key_explains_and_exits_2(server, empty_data_dir):
    code, out = await walletd("demo", "--base-url", server.url, env={"WALLETD_DATA_DIR": str(empty_data_dir)})
    assert code == 2
    assert "needs the operator key" in out and "no WALLETD_OPERATOR_KEY" in out
