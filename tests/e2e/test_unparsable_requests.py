"""What aiohttp's HTTP parser refuses, sent as raw bytes to a real `walletd serve`: each gets a JSON
4xx with a `code` (414 for an over-long request line, 431 for an over-long header or too many,
400 for the rest) and one info line `http.unparsable` in the log that quotes no byte of the
request (a password in a query string, a JWT or Basic credentials in a header), never an error
line or a traceback."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.conftest import ServeProcess
from tests.polling import until

JWT = b"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ2aWN0aW0ifQ.c2lnbmF0dXJlLXNlY3JldA"
BASIC = b"dmljdGltOmh1bnRlcjJfcGFzc3dvcmQ="  # victim:hunter2_password
CASES = [
    ("space in the query", b"GET /auth/login?username=victim&password=hunter2 pw HTTP/1.1\r\nHost: w\r\n\r\n",
     400, "bad_request"),
    ("non-ASCII in the query", b"GET /auth/login?username=victim&password=hunter2\xc3\xa9 HTTP/1.1\r\nHost: w\r\n\r\n",
     400, "bad_request"),
    ("control byte in token", b"GET /user/get/id HTTP/1.1\r\nHost: w\r\ntoken: " + JWT + b"\x01\r\n\r\n",
     400, "bad_request"),
    ("control byte in Basic", b"GET /user/get/token HTTP/1.1\r\nHost: w\r\nAuthorization: Basic " + BASIC
     + b"\x7f\r\n\r\n", 400, "bad_request"),
    ("over-long request line", b"GET /auth/login?password=hunter2" + b"a" * 9000 + b" HTTP/1.1\r\nHost: w\r\n\r\n",
     414, "uri_too_long"),
    ("over-long header", b"GET /health HTTP/1.1\r\nHost: w\r\ntoken: " + JWT + b"b" * 9000 + b"\r\n\r\n",
     431, "header_too_large"),
    ("too many headers", b"GET /health HTTP/1.1\r\nHost: w\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(200))
     + b"\r\n", 431, "header_too_large"),
    ("not HTTP", b"HELLO hunter2\r\n\r\n", 400, "bad_request"),
    ("TLS on the HTTP port", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, 400, "bad_request"),
    ("bad Content-Length", b"POST /auth/login HTTP/1.1\r\nHost: w\r\nContent-Length: 12x\r\n\r\n"
     b'{"password":"hunter2"}', 400, "bad_request"),
]


@pytest.fixture(scope="module")
async def server(database_url):
    proc = await ServeProcess(database_url, WALLETD_LOG_LEVEL="info").start()
    yield proc
    await proc.stop()


async def send(port: int, raw: bytes) -> tuple[bytes, dict]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)  # walletd closes the connection after the error
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, json.loads(body)


def log_lines(proc: ServeProcess) -> list[str]:
    return proc.log_path.read_text(errors="replace").splitlines()


async def test_every_refusal_is_a_json_error_and_one_quiet_line(server):
    for name, raw, status, code in CASES:
        before = len(log_lines(server))
        head, body = await send(server.port, raw)
        assert head.split(b" ")[1] == str(status).encode(), (name, head)
        assert body["status"] == status and body["code"] == code and body["request_id"], (name, body)
        assert b"\r\nContent-Type: application/json" in head and b"\r\nServer: walletd\r\n" in head, (name, head)

        async def logged(before=before, request_id=body["request_id"]):
            lines = [json.loads(line) for line in log_lines(server)[before:] if line.startswith("{")]
            return [p for p in lines if p.get("request_id") == request_id]
        await until(logged, what=f"{name}: its line logged")
        await asyncio.sleep(0.1)  # anything else this request would log comes with it (50 ms buffer)
        found = await logged()
        new = [json.loads(line) for line in log_lines(server)[before:] if line.startswith("{")]
        assert [(p["event"], p["level"], p["status"], p["code"]) for p in found] == \
            [("http.unparsable", "info", status, code)], (name, found)
        assert not [p for p in new if p["level"] != "info" or "exception" in p], (name, new)


async def test_the_log_never_quotes_the_request(server):
    for _, raw, _, _ in CASES:
        await send(server.port, raw)
    await asyncio.sleep(0.3)  # the log buffer is written within 50 ms
    text = server.log_path.read_text(errors="replace")
    for secret in ("hunter2", JWT.decode()[:20], BASIC.decode(), "aaaaaaaaaa", "bbbbbbbbbb"):
        assert secret not in text, secret
    assert "Traceback" not in text and '"level":"error"' not in text and "Error handling request" not in text


async def test_the_server_keeps_serving_after_refusals(server):
    for _, raw, _, _ in CASES:
        await send(server.port, raw)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: w\r\nConnection: close\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200") and b"\r\nServer: walletd\r\n" in answer
