"""The structured log is the audit trail, so it reaches stdout as things happen: a line is there
within a second even when nothing else is logged after it, and the last lines are written when
SIGTERM stops walletd.

`walletd serve` logs while it migrates, in an event loop of its own that ends before the server's
starts. A writer that flushed on a timer of the running loop left that timer on the closed loop
when a line came just before the migration ended (here: a database ahead of this release, after
a rollback, logs `migrate.unknown_version` and then has nothing to apply), and from then on
held every line in memory until 64 KB had accumulated or the process exited."""

from __future__ import annotations

import json

import aiohttp
import asyncpg
import pytest

from tests.conftest import PASSWORD, ServeProcess, create_database, create_empty_database, unique
from tests.polling import until
from tests.support.servers import ServerProcess


def events(server: ServeProcess) -> list[dict]:
    found = []
    for line in server.log_path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # the banner on stderr shares the file
        if isinstance(record, dict):
            found.append(record)
    return found


def logged(server: ServeProcess, event: str, **fields) -> list[dict]:
    return [e for e in events(server) if e.get("event") == event and all(e.get(k) == v for k, v in fields.items())]


async def database_ahead_of_this_release(admin_url: str) -> str:
    url = await create_database(admin_url)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES (9999, 'from_a_later_release', 'x')")
    finally:
        await conn.close()
    return url


@pytest.mark.parametrize("start, first_line", [("a fresh database", "migrate.applied"),
                                                ("a database ahead of this release", "migrate.unknown_version")])
async def test_lines_reach_stdout_within_a_second_at_idle_and_at_sigterm(admin_url, start, first_line):
    if start == "a fresh database":
        url = await create_empty_database(admin_url)  # walletd serve applies every migration
    else:
        url = await database_ahead_of_this_release(admin_url)
    server = await ServeProcess(url, WALLETD_LOG_LEVEL="info").start()
    try:
        await until(lambda: logged(server, first_line), timeout=1.0, what="the start-up lines")
        username = unique("flush")
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{server.url}/auth/register", json={
                    "username": username, "email": f"{username}@example.com", "password": PASSWORD}) as resp:
                assert resp.status == 200, await resp.text()
            # Nothing else happens now: the line must not wait for more traffic.
            await until(lambda: logged(server, "auth.registered", username=username), timeout=1.0,
                        what="the registration's audit line on stdout within a second")
            for _ in range(3):
                async with session.get(f"{server.url}/health") as resp:
                    request_id = resp.headers["X-Request-ID"]
                await until(lambda rid=request_id: logged(server, "http.request", request_id=rid), timeout=1.0,
                            what="each request's line on stdout within a second")
    finally:
        code = await ServerProcess.stop(server)  # not ServeProcess.stop: that deletes the file
    try:
        assert code == 0
        assert logged(server, "walletd.stopped"), "the line written while SIGTERM stopped walletd"
    finally:
        server.log_path.unlink(missing_ok=True)
