"""`walletd serve` on an embedded data directory, as `make run` starts it: real processes, a real
embedded PostgreSQL of its own, signals as a terminal sends them."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import stat
import tempfile
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import PASSWORD, REPO_ROOT, free_port, unique, walletd_command
from tests.polling import until


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (a container's pid 1 may never reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


class EmbeddedServe:
    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir, self.port = data_dir, port
        self.out = data_dir.parent / f"serve-{port}-{os.urandom(3).hex()}.out"
        self.err = self.out.with_suffix(".err")
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, *args: str, **env: str) -> "EmbeddedServe":
        environment = {k: v for k, v in os.environ.items()
                       if k not in ("DATABASE_URL", "WALLETD_JWT_SECRET", "WALLETD_OPERATOR_KEY", "XDG_RUNTIME_DIR",
                                    "WALLETD_OPEN_SERVICE_REGISTRATION")}
        environment.update(WALLETD_DATA_DIR=str(self.data_dir), WALLETD_LOG_LEVEL="info", **env)
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = await asyncio.create_subprocess_exec(
                *walletd_command("serve", "--port", str(self.port), *args), cwd=REPO_ROOT, env=environment,
                stdout=out, stderr=err)
        return self

    async def wait_ready(self, timeout: float = 90) -> None:
        async with aiohttp.ClientSession() as session:
            async def ready() -> bool:
                assert self.proc.returncode is None, self.err.read_text()
                try:
                    async with session.get(self.url + "/ready") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False
            await until(ready, timeout, interval=0.1, what=f"walletd ready on {self.url}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()


@pytest.fixture
def data_dir():
    base = Path(tempfile.mkdtemp(prefix="walletd-embedded-"))
    os.chmod(base, 0o755)  # the embedded server runs as its own system user when we are root
    yield base / "data"
    pid_file = base / "data" / "pg" / "postmaster.pid"
    if pid_file.exists():  # a failed test must not leave a postgres behind
        try:
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGINT)
        except (ProcessLookupError, ValueError):
            pass
    shutil.rmtree(base, ignore_errors=True)


def _postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "pg" / "postmaster.pid").read_text().split()[0])


async def test_ctrl_c_stops_postgres_even_after_a_sigkilled_run(data_dir):
    port = free_port()
    first = await EmbeddedServe(data_dir, port).start()
    try:
        await first.wait_ready()
    finally:
        first.kill()  # SIGKILL: no exit handler runs, its pid stays in pg/.handle_pids.json
    await first.proc.wait()
    postgres = _postmaster_pid(data_dir)
    assert _alive(postgres)  # the crash left PostgreSQL running, as it would in a terminal

    second = await EmbeddedServe(data_dir, port).start()
    try:
        await second.wait_ready()
        assert _postmaster_pid(data_dir) == postgres  # the second run reused the orphaned server
        second.proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert await asyncio.wait_for(second.proc.wait(), 60) == 0
    finally:
        second.kill()
    assert not (data_dir / "pg" / "postmaster.pid").exists()
    assert not _alive(postgres)


async def test_start_up_banner_operator_key_and_busy_port(data_dir):
    port = free_port()
    serve = await EmbeddedServe(data_dir, port).start()
    try:
        await serve.wait_ready()
        key_file = data_dir / "operator-key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        banner = serve.err.read_text()
        assert f"http://127.0.0.1:{port}/docs" in banner
        assert str(data_dir.resolve()) in banner and str(key_file.resolve()) in banner
        assert "service registration: needs the operator key" in banner
        assert "Warning" not in banner and "XDG_RUNTIME_DIR" not in banner

        name = unique("svc")
        async with aiohttp.ClientSession() as session:
            async with session.post(serve.url + "/auth/register_service",
                                    headers={"X-Operator-Key": key_file.read_text().strip()},
                                    json={"username": name, "email": f"{name}@example.com",
                                          "password": PASSWORD}) as resp:
                assert resp.status == 200, await resp.text()

        busy = await asyncio.create_subprocess_exec(
            *walletd_command("serve", "--port", str(port)), cwd=REPO_ROOT,
            env={**os.environ, "WALLETD_DATA_DIR": str(data_dir)},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(busy.communicate(), 60)
        assert busy.returncode == 1
        assert err.decode().strip().splitlines() == [
            f"walletd: cannot listen on 127.0.0.1:{port}: address already in use "
            "(another walletd? pick another with --port or WALLETD_PORT)"]
        assert out == b""

        serve.proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(serve.proc.wait(), 60) == 0
    finally:
        serve.kill()
    lines = serve.out.read_text().splitlines()
    events = [json.loads(line)["event"] for line in lines]  # stdout is JSON lines only
    assert "walletd.starting" in events and events[-1] == "walletd.stopped"  # migrations log before it
    assert "http.request" in events


def _service_identity() -> dict:
    name = unique("svc")
    return {"username": name, "email": f"{name}@example.com", "password": PASSWORD}


async def test_open_registration_beats_the_generated_key_in_every_worker(data_dir):
    serve = await EmbeddedServe(data_dir, free_port()).start(
        "--workers", "2", WALLETD_OPEN_SERVICE_REGISTRATION="1")
    try:
        await serve.wait_ready()
        assert (data_dir / "operator-key").is_file()  # a key was generated, as without the switch
        banner = serve.err.read_text()
        assert "service registration: OPEN to anyone (WALLETD_OPEN_SERVICE_REGISTRATION=1, development only)" in banner

        async def both_processes_serve() -> bool:  # the worker started too (it inherits the switch)
            async with aiohttp.ClientSession() as session, session.get(serve.url + "/metrics") as resp:
                return "walletd_workers 2.0" in (await resp.text()).splitlines()
        await until(both_processes_serve, 30, what="walletd_workers 2")
        # A connection each: the kernel spreads them over both processes, and every one must be open.
        for headers in [{}] * 6 + [{"X-Operator-Key": "not-the-key"}]:
            identity = _service_identity()
            async with aiohttp.ClientSession() as session:
                async with session.post(serve.url + "/auth/register_service", headers=headers,
                                        json=identity) as resp:
                    assert resp.status == 200, await resp.text()
                    registered = await resp.json()
                async with session.get(serve.url + "/service/auth/login",
                                       params={"username": identity["username"], "password": PASSWORD}) as resp:
                    assert resp.status == 200, await resp.text()  # a service login: the user has the service role
                    assert (await resp.json())["user_id"] == registered["user_id"]
        serve.proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(serve.proc.wait(), 60) == 0
    finally:
        serve.kill()


async def test_an_explicit_key_with_the_open_switch_refuses_to_start(data_dir):
    serve = await EmbeddedServe(data_dir, free_port()).start(
        WALLETD_OPEN_SERVICE_REGISTRATION="1", WALLETD_OPERATOR_KEY="an-explicit-operator-key-of-32-chars")
    try:
        assert await asyncio.wait_for(serve.proc.wait(), 60) == 2
    finally:
        serve.kill()
    error = serve.err.read_text()
    assert "WALLETD_OPEN_SERVICE_REGISTRATION" in error and "WALLETD_OPERATOR_KEY" in error, error
    assert not (data_dir / "pg").exists()  # refused before starting anything
