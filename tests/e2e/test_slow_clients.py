"""Slow and vanished clients, over raw sockets on 127.0.0.1: a client that
leaves mid-body is an info line, not a 500; slow bodies get 408; slow heads and connections past
the cap are cut by the real `walletd serve`."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from tests.conftest import REPO_ROOT, ServeProcess, walletd_command
from tests.polling import until

HALF_BODY = (b"POST /auth/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
             b"Content-Length: 200\r\n\r\n{\"username\": \"someone\", ")


async def read_until_closed(reader: asyncio.StreamReader, guard: float = 20) -> bytes:
    """Everything the server sends until it closes the connection (guard: fail rather than hang)."""
    data = b""
    async with asyncio.timeout(guard):
        while chunk := await reader.read(4096):
            data += chunk
    return data


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await writer.wait_closed()
    except ConnectionError:  # the server closed first
        pass


def events(log_tap, name: str) -> list[dict]:
    return [json.loads(line) for line in log_tap.lines if f'"{name}"' in line]


async def test_a_complete_body_within_the_timeout_is_served(make_client):
    client = await make_client(body_timeout_seconds=5)
    resp = await client.post("/auth/login", json={"username": "nobody-here", "password": "x"})
    assert resp.status == 401


@pytest.fixture
async def serve(database_url):
    started: list[ServeProcess] = []

    async def start(**env: str) -> ServeProcess:
        process = ServeProcess(database_url, **env)
        started.append(process)
        return await process.start()

    yield start
    for process in started:
        await process.stop()


def log_events(server: ServeProcess, name: str) -> list[dict]:
    return [json.loads(line) for line in server.log_path.read_text().splitlines() if f'"{name}"' in line]


async def test_a_client_leaving_mid_body_is_logged_as_an_abort_not_a_500(serve):
    # The real `walletd serve`: aiohttp's test server cancels handlers on disconnect, production does not.
    server = await serve(WALLETD_LOG_LEVEL="info")
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(HALF_BODY)
    await writer.drain()
    await close(writer)
    await until(lambda: log_events(server, "http.client_aborted"), what="http.client_aborted logged")
    aborted = log_events(server, "http.client_aborted")
    assert len(aborted) == 1 and aborted[0]["level"] == "info" and aborted[0]["path"] == "/auth/login", aborted
    assert log_events(server, "http.unhandled") == []
    assert [e["status"] for e in log_events(server, "http.request") if e["path"] == "/auth/login"] == [499]
    assert "Traceback" not in server.log_path.read_text()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)  # the server is unharmed
    writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert (await read_until_closed(reader)).startswith(b"HTTP/1.1 200")
    await close(writer)


async def test_a_body_slower_than_its_timeout_gets_408_and_the_connection_closes(serve):
    server = await serve(WALLETD_BODY_TIMEOUT_SECONDS="0.3", WALLETD_LOG_LEVEL="info")
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(HALF_BODY)  # and never the rest
    await writer.drain()
    answer = await read_until_closed(reader)
    await close(writer)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer
    assert b"connection: close" in head.lower()
    error = json.loads(body)
    assert error["status"] == 408 and error["code"] == "request_timeout" and error["request_id"]
    await until(lambda: log_events(server, "http.body_timeout"), what="http.body_timeout logged")
    assert log_events(server, "http.unhandled") == []


async def test_walletd_serve_cuts_a_slow_header_client_after_the_header_timeout(serve):
    server = await serve(WALLETD_HEADER_TIMEOUT_SECONDS="0.5")
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # the head never ends
    closed = False
    for _ in range(100):  # a header line every 0.1 s: dripping bytes does not extend the deadline
        try:
            writer.write(b"X-Drip: 1\r\n")
            await writer.drain()
            data = await asyncio.wait_for(reader.read(4096), 0.1)
        except TimeoutError:
            continue
        except ConnectionError:
            closed = True
            break
        assert data == b"", data  # nothing answered: the connection is simply closed
        closed = True
        break
    await close(writer)
    assert closed
    # A complete request on a new connection is served as usual.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert (await read_until_closed(reader)).startswith(b"HTTP/1.1 200")
    await close(writer)


async def test_walletd_serve_refuses_connections_past_the_cap_with_503(serve):
    server = await serve(WALLETD_MAX_CONNECTIONS="3")
    held = []
    for _ in range(3):  # three keep-alive connections, each has been answered once, so each is counted
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        async with asyncio.timeout(20):
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        held.append((reader, writer))
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    answer = await read_until_closed(reader)
    await close(writer)
    assert answer.startswith(b"HTTP/1.1 503"), answer
    assert b"Retry-After: 1" in answer and b"too_many_connections" in answer
    # Once one held connection goes, a new one is served again.
    await close(held[0][1])

    async def served() -> bool:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        answer = await read_until_closed(reader)
        await close(writer)
        assert answer.startswith((b"HTTP/1.1 200", b"HTTP/1.1 503")), answer
        return answer.startswith(b"HTTP/1.1 200")
    await until(served, interval=0.05, what="a new connection served once one held connection closed")
    for _, held_writer in held[1:]:
        await close(held_writer)


@pytest.mark.parametrize("variable, value", [
    ("WALLETD_MAX_CONNECTIONS", "0"), ("WALLETD_HEADER_TIMEOUT_SECONDS", "0"), ("WALLETD_BODY_TIMEOUT_SECONDS", "-1"),
    ("WALLETD_HASH_QUEUE", "0"), ("WALLETD_LOGIN_MAX_FAILURES", "0"),
])
async def test_a_nonsense_protection_setting_stops_serve_naming_the_variable(database_url, variable, value):
    from tests.conftest import JWT_SECRET, SECRETS_KEY

    env = {**os.environ, "DATABASE_URL": database_url, "WALLETD_JWT_SECRET": JWT_SECRET,
           "WALLETD_SECRETS_KEY": SECRETS_KEY, variable: value}
    proc = await asyncio.create_subprocess_exec(*walletd_command("serve", "--host", "127.0.0.1", "--port", "1"),
                                                cwd=REPO_ROOT, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2, out.decode()
    assert variable in out.decode()
