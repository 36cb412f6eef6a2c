"""A TCP proxy between walletd and PostgreSQL that loses messages on purpose.

It forwards bytes unchanged until armed; then, on the first client message carrying walletd's
batch document (the JSON parameter of the one-statement write), it either
- "lose_reply": forwards the write to PostgreSQL, which runs and commits it, but never lets the
  answer back and cuts walletd's side: the commit happened, walletd cannot know it;
- "lose_write": cuts the connection before the write reaches PostgreSQL: nothing committed,
  walletd cannot know that either.
`refuse()` cuts every connection and refuses new ones until `accept()`: the database is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from urllib.parse import parse_qs, urlparse

BATCH_MARK = b'"paid_out":'  # a key only the batch document (walletd_write_batch's parameter) has
READY_FOR_QUERY = b"Z\x00\x00\x00\x05"  # the server's last message for a statement: it has committed


class PgProxy:
    def __init__(self, admin_url: str) -> None:
        parsed = urlparse(admin_url)
        socket_dir = Path(parse_qs(parsed.query)["host"][0])
        self.socket_path = next(p for p in socket_dir.glob(".s.PGSQL.*") if not p.name.endswith(".lock"))
        self.server: asyncio.base_events.Server | None = None
        self.port = 0
        self.armed: str | None = None
        self.fired = asyncio.Event()
        self.refusing = False
        self._links: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    def url(self, database_url: str) -> str:
        """database_url (on the embedded server's socket) rewritten to go through this proxy."""
        database = urlparse(database_url).path.lstrip("/")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    async def start(self) -> "PgProxy":
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def arm(self, action: str) -> None:
        assert action in ("lose_reply", "lose_write")
        self.armed = action
        self.fired.clear()

    def refuse(self) -> None:
        self.refusing = True
        for writer in list(self._writers):
            _abort(writer)

    def accept(self) -> None:
        self.refusing = False

    async def close(self) -> None:
        self.refuse()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        for task in list(self._links):
            task.cancel()

    async def _accept(self, client_reader, client_writer) -> None:
        if self.refusing:
            _abort(client_writer)
            return
        try:
            server_reader, server_writer = await asyncio.open_unix_connection(str(self.socket_path))
        except OSError:
            _abort(client_writer)
            return
        self._writers |= {client_writer, server_writer}
        state = {"reply_lost": False}
        up = asyncio.create_task(self._client_to_server(client_reader, client_writer, server_writer, state))
        down = asyncio.create_task(self._server_to_client(server_reader, client_writer, state))
        self._links |= {up, down}
        for task in (up, down):
            task.add_done_callback(self._links.discard)
        await asyncio.wait([up, down], return_when=asyncio.FIRST_COMPLETED)
        for task in (up, down):
            task.cancel()
        for writer in (client_writer, server_writer):
            _abort(writer)
            self._writers.discard(writer)

    async def _client_to_server(self, reader, client_writer, server_writer, state) -> None:
        tail = b""
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                return
            window = tail + chunk
            tail = window[-len(BATCH_MARK):]
            if self.armed and BATCH_MARK in window:
                action, self.armed = self.armed, None
                if action == "lose_reply":
                    # Forwarded whole; walletd's side is cut once PostgreSQL has answered, i.e.
                    # once the statement has certainly committed.
                    state["reply_lost"] = True
                    server_writer.write(chunk)
                    await server_writer.drain()
                    await asyncio.Event().wait()  # the reply task ends this link
                _abort(client_writer)
                self.fired.set()
                return
            server_writer.write(chunk)
            await server_writer.drain()

    async def _server_to_client(self, reader, client_writer, state) -> None:
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                return
            if state["reply_lost"]:
                seen = state.get("seen", b"") + chunk
                state["seen"] = seen[-16:]
                if READY_FOR_QUERY in seen:
                    _abort(client_writer)
                    self.fired.set()
                    return
                continue
            client_writer.write(chunk)
            with contextlib.suppress(ConnectionError):
                await client_writer.drain()


def _abort(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.transport.abort()
