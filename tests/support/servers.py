"""Server subprocesses, free ports, throwaway databases and the event loop walletd serves with:
what the test suite and the benchmark both need.

Under tests/support/, outside the walletd package, so an installed walletd carries none of it; the
benchmark runs from the repository and imports it from here. It wraps walletd's own entry points
and needs nothing beyond walletd's dependencies.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def walletd_command(*args: str) -> list[str]:
    """The console script next to this interpreter when installed, else `python -m walletd`."""
    script = Path(sys.executable).with_name("walletd")
    return [str(script), *args] if script.exists() else [sys.executable, "-m", "walletd", *args]


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where installed (the loop `walletd serve` uses), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(main: Coroutine[Any, Any, Any]) -> Any:
    """asyncio.run on new_event_loop()."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)


async def create_empty_database(admin_url: str, name: str, *, replace: bool = False) -> str:
    """A new database nothing has been applied to; returns its URL. admin_url names `postgres`."""
    import asyncpg  # here, so the load generator importing this module stays light

    conn = await asyncpg.connect(admin_url)
    try:
        if replace:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return admin_url.replace("/postgres?", f"/{name}?")


async def http_status(port: int, path: str, host: str = LOOPBACK) -> int | None:
    """GET path over a raw socket (no client library, any event loop); None when unreachable."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2)
    except (OSError, TimeoutError):
        return None
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        line = await asyncio.wait_for(reader.readline(), 5)
        return int(line.split()[1]) if line else None
    except (OSError, TimeoutError, ValueError, IndexError):
        return None
    finally:
        writer.close()


class ServerStartError(RuntimeError):
    """The server exited or never answered its readiness path."""


class ServerProcess:
    """An HTTP server subprocess on loopback, its stdout and stderr in a log file."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], port: int, log_path: Path,
                 cwd: Path | None = None) -> None:
        self.name, self.cmd, self.env, self.port = name, cmd, env, port
        self.log_path = log_path
        self.cwd = cwd
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, ready_path: str, timeout: float = 90) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = await asyncio.create_subprocess_exec(*self.cmd, env=self.env, cwd=self.cwd, stdout=log,
                                                             stderr=asyncio.subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                raise ServerStartError(f"{self.name} exited ({self.proc.returncode}) at start:\n{self.tail()}")
            if await http_status(self.port, ready_path) == 200:
                return
            await asyncio.sleep(0.1)
        raise ServerStartError(f"{self.name} not ready after {timeout}s:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs."""
        if self.proc is not None and self.proc.returncode is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass

    async def stop(self, timeout: float = 40) -> int | None:
        """SIGTERM (a graceful shutdown), SIGKILL after timeout; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                return await asyncio.wait_for(self.proc.wait(), timeout)
            except ProcessLookupError:  # already gone (killed and reaped)
                pass
            except TimeoutError:
                self.proc.kill()
        return await self.proc.wait()

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def walletd_server(database_url: str, log_path: Path, *, jwt_secret: str, operator_key: str, secrets_key: str,
                   extra_args: tuple[str, ...] = (), cwd: Path | None = None, **env: str) -> ServerProcess:
    """`walletd serve` on loopback and a free port against database_url (env overrides win)."""
    port = free_port()
    full_env = {**os.environ, "DATABASE_URL": database_url, "WALLETD_JWT_SECRET": jwt_secret,
                "WALLETD_OPERATOR_KEY": operator_key, "WALLETD_SECRETS_KEY": secrets_key, **env}
    cmd = walletd_command("serve", "--host", LOOPBACK, "--port", str(port), *extra_args)
    return ServerProcess("walletd", cmd, full_env, port, log_path, cwd)
