"""The operator key as a credential: walletd refuses to start (exit 2, naming the variable or the
file) with a key shorter than 24 characters, or a previous key without a current one; a key it
generates is 32 random bytes. Nothing is started before the refusal."""

from __future__ import annotations

import asyncio
import base64
import os

import pytest

from tests.conftest import REPO_ROOT, walletd_command
from tests.support.servers import free_port
from walletd.persistence import embedded

SHORT = "x" * 23  # one character short


async def serve(env: dict[str, str]) -> tuple[int, str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("WALLETD_", "DATABASE_URL"))}
    proc = await asyncio.create_subprocess_exec(
        *walletd_command("serve", "--host", "127.0.0.1", "--port", str(free_port())), cwd=REPO_ROOT,
        env={**full, **env}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, err.decode()


@pytest.mark.parametrize("settings, named", [
    ({"WALLETD_OPERATOR_KEY": SHORT}, "WALLETD_OPERATOR_KEY"),
    ({"WALLETD_OPERATOR_KEY": "k" * 24, "WALLETD_OPERATOR_KEY_PREVIOUS": SHORT}, "WALLETD_OPERATOR_KEY_PREVIOUS"),
    ({"WALLETD_OPERATOR_KEY_PREVIOUS": "k" * 24}, "WALLETD_OPERATOR_KEY_PREVIOUS"),
    ({"WALLETD_RATE_MAX_CHANGE": "0"}, "WALLETD_RATE_MAX_CHANGE"),
    ({"WALLETD_MAX_COMMISSION_RATE": "1"}, "WALLETD_MAX_COMMISSION_RATE"),
    ({"WALLETD_RATES_MAX_AGE": "0"}, "WALLETD_RATES_MAX_AGE"),
])
async def test_settings_that_weaken_authority_refuse_to_start(database_url, settings, named):
    code, err = await serve({"DATABASE_URL": database_url, "WALLETD_JWT_SECRET": "j" * 48, **settings})
    assert code == 2 and named in err, (code, err)
    assert SHORT not in err, "the refused key is not echoed"


async def test_a_short_key_file_refuses_before_the_embedded_postgresql_starts(tmp_path):
    (tmp_path / embedded.OPERATOR_KEY_FILE).write_text("short-hand-made-key")
    code, err = await serve({"WALLETD_DATA_DIR": str(tmp_path)})
    assert code == 2 and str(tmp_path / embedded.OPERATOR_KEY_FILE) in err and "24" in err, (code, err)
    assert not (tmp_path / "pg").exists(), "nothing started"


def test_a_generated_operator_key_is_32_random_bytes(tmp_path):
    key = embedded.persistent_operator_key(tmp_path)
    assert len(base64.urlsafe_b64decode(key + "=" * (-len(key) % 4))) == 32
    assert embedded.persistent_operator_key(tmp_path) == key  # made once, kept
    assert oct((tmp_path / embedded.OPERATOR_KEY_FILE).stat().st_mode & 0o777) == "0o600"
    assert embedded.persistent_operator_key(tmp_path / "other") != key
