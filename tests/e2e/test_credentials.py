"""Credentials: the JWT secret rotates without a flag day (WALLETD_JWT_SECRET_PREVIOUS), short or
missing secrets stop walletd at start (exit 2 naming the variable), generated ones are long and
private."""

from __future__ import annotations

import asyncio
import base64
import os
import stat
import sys
import time
import uuid

import jwt
import pytest

from tests.conftest import JWT_SECRET, PASSWORD, REPO_ROOT, SECRETS_KEY, register
from tests.support.servers import walletd_command
from walletd.config import ConfigError, Settings
from walletd.persistence import embedded

OLD_SECRET = "the-secret-before-the-rotation-" + "o" * 20


async def test_tokens_of_the_previous_secret_stay_valid_until_they_expire(make_client):
    before = await make_client(jwt_secret=OLD_SECRET)
    user = await register(before)  # its token is signed with the old secret
    old_token = user["token"]
    assert jwt.decode(old_token, OLD_SECRET, algorithms=["HS256"])["sub"] == user["id"]

    rotated = await make_client(jwt_secret=JWT_SECRET, jwt_secret_previous=OLD_SECRET)
    resp = await rotated.get("/user/get/id", headers={"Authorization": f"Bearer {old_token}"})
    assert resp.status == 200 and (await resp.json())["id"] == user["id"]
    resp = await rotated.post("/auth/login", json={"username": user["username"], "password": PASSWORD})
    new_token = (await resp.json())["access_token"]
    assert jwt.decode(new_token, JWT_SECRET, algorithms=["HS256"])["sub"] == user["id"]  # signed with the new one
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(new_token, OLD_SECRET, algorithms=["HS256"])

    # An expired token of the previous secret is expired, not accepted.
    now = int(time.time())
    expired = jwt.encode({"sub": user["id"], "role": "user", "iat": now - 7200, "exp": now - 3600}, OLD_SECRET,
                         algorithm="HS256")
    resp = await rotated.get("/user/get/id", headers={"Authorization": f"Bearer {expired}"})
    assert resp.status == 401 and (await resp.json())["code"] == "token_expired"

    # Once the previous secret is dropped (a token lifetime later), its tokens are refused.
    after = await make_client(jwt_secret=JWT_SECRET)
    resp = await after.get("/user/get/id", headers={"Authorization": f"Bearer {old_token}"})
    assert resp.status == 401 and (await resp.json())["code"] == "token_invalid"
    assert (await after.get("/user/get/id", headers={"Authorization": f"Bearer {new_token}"})).status == 200


async def serve_exit(database_url: str, **env: str) -> tuple[int, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("WALLETD_")}
    proc = await asyncio.create_subprocess_exec(
        *walletd_command("serve", "--host", "127.0.0.1", "--port", "1"), cwd=REPO_ROOT,
        env={**base, "DATABASE_URL": database_url, **env}, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(sys.getdefaultencoding(), "replace")


@pytest.mark.parametrize("env, named", [
    ({"WALLETD_JWT_SECRET": "x" * 31, "WALLETD_SECRETS_KEY": SECRETS_KEY}, "WALLETD_JWT_SECRET is 31 bytes"),
    ({"WALLETD_JWT_SECRET": "é" * 15, "WALLETD_SECRETS_KEY": SECRETS_KEY}, "WALLETD_JWT_SECRET is 30 bytes"),
    ({"WALLETD_JWT_SECRET": JWT_SECRET, "WALLETD_JWT_SECRET_PREVIOUS": "short", "WALLETD_SECRETS_KEY": SECRETS_KEY},
     "WALLETD_JWT_SECRET_PREVIOUS is 5 bytes"),
    ({"WALLETD_JWT_SECRET": JWT_SECRET}, "WALLETD_SECRETS_KEY is not"),
    ({"WALLETD_JWT_SECRET": JWT_SECRET, "WALLETD_SECRETS_KEY": "not-a-key"}, "WALLETD_SECRETS_KEY: each key"),
    ({"WALLETD_JWT_SECRET": JWT_SECRET, "WALLETD_SECRETS_KEY": f"{SECRETS_KEY},short"}, "WALLETD_SECRETS_KEY"),
    ({"WALLETD_JWT_SECRET": JWT_SECRET, "WALLETD_SECRETS_KEY": SECRETS_KEY, "WALLETD_TRUSTED_PROXIES": "10.0.0.1/8"},
     "WALLETD_TRUSTED_PROXIES"),
    ({"WALLETD_JWT_SECRET": JWT_SECRET, "WALLETD_SECRETS_KEY": SECRETS_KEY, "WALLETD_WEBHOOK_ALLOW_HOSTS": "bad host!"},
     "WALLETD_WEBHOOK_ALLOW_HOSTS"),
    ({"WALLETD_JWT_SECRET": JWT_SECRET, "WALLETD_SECRETS_KEY": SECRETS_KEY,
      "WALLETD_WEBHOOK_ROTATION_OVERLAP": "-1"}, "WALLETD_WEBHOOK_ROTATION_OVERLAP"),
])
async def test_a_weak_or_missing_secret_stops_serve_naming_the_variable(database_url, env, named):
    code, out = await serve_exit(database_url, **env)
    assert code == 2, out
    assert named in out, out
    assert "Traceback" not in out


def test_the_minimum_is_32_bytes():
    assert Settings.from_env({"WALLETD_JWT_SECRET": "y" * 32}).jwt_secret == "y" * 32
    with pytest.raises(ConfigError, match="WALLETD_JWT_SECRET is 31 bytes"):
        Settings.from_env({"WALLETD_JWT_SECRET": "y" * 31})


def test_generated_secrets_are_32_random_bytes_or_more_and_private(tmp_path):
    first = tmp_path / "one"
    secret, key = embedded.persistent_secret(first), embedded.persistent_secrets_key(first)
    assert len(base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4))) >= 32
    assert len(base64.urlsafe_b64decode(key)) == 32
    for name in (embedded.JWT_SECRET_FILE, embedded.SECRETS_KEY_FILE):
        assert stat.S_IMODE((first / name).stat().st_mode) == 0o600
    # made once (the next start reads the same), different for every installation
    assert embedded.persistent_secret(first) == secret and embedded.persistent_secrets_key(first) == key
    second = tmp_path / "two"
    assert embedded.persistent_secret(second) != secret
    assert embedded.persistent_secrets_key(second) != key
    assert str(uuid.UUID(int=0)) not in secret  # not a constant
