"""A TCP proxy between walletd and PostgreSQL that loses messages on purpose.

It forwards bytes unchanged until armed. Then, at the commit step of the next write that
carries walletd's batch document (the JSON parameter of walletd_write_batch) it acts:
- at="write" (default): on the message carrying the batch document itself, the commit step of
  the fast path (one statement in autocommit);
- at="commit": on the COMMIT that ends a transaction in which the batch document was sent (the
  locked path, the registration of a user with a sign-up bonus).
The actions:
- "lose_reply": forwards the step to PostgreSQL, which runs and commits it, but never lets the
  answer back and cuts walletd's side: the commit happened, walletd cannot know it;
- "lose_write": cuts the connection before the step reaches PostgreSQL: nothing committed,
  walletd cannot know that either;
- "cut": forwards the step and cuts both sides at once, without waiting for the answer: the
  backend goes on alone (say, waiting for a row lock) and commits whenever it gets there, unless
  someone stops it first.
`refuse()` cuts every connection and refuses new ones until `accept()`: the database is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from pathlib import Path
from urllib.parse import parse_qs, urlparse

BATCH_MARK = re.compile(rb'"paid_out":')  # a key only the batch document (walletd_write_batch's parameter) has
# Simple-protocol queries as asyncpg sends them: 'Q', a 4-byte length, the text.
BEGIN = re.compile(rb"Q\x00\x00\x00.BEGIN", re.S)
COMMIT = re.compile(rb"Q\x00\x00\x00\x0cCOMMIT;\x00")
READY_FOR_QUERY = b"Z\x00\x00\x00\x05"  # the server's last message for a statement: it has committed
_TAIL = 32  # bytes kept from the previous chunk, so a message split across two reads is still seen
ACTIONS = ("lose_reply", "lose_write", "cut")


class PgProxy:
    def __init__(self, admin_url: str) -> None:
        parsed = urlparse(admin_url)
        socket_dir = Path(parse_qs(parsed.query)["host"][0])
        self.socket_path = next(p for p in socket_dir.glob(".s.PGSQL.*") if not p.name.endswith(".lock"))
        self.server: asyncio.base_events.Server | None = None
        self.port = 0
        self.armed: tuple[str, str] | None = None
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

    def arm(self, action: str, at: str = "write") -> None:
        assert action in ACTIONS and at in ("write", "commit")
        self.armed = (action, at)
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

    def _is_commit_step(self, window: bytes, fresh_from: int, link: dict) -> bool:
        """Whether this chunk carries the armed commit step; tracks the link's transaction."""
        def seen(pattern: re.Pattern) -> bool:
            return any(m.end() > fresh_from for m in pattern.finditer(window))

        batch = seen(BATCH_MARK)
        if seen(BEGIN):
            link["batch_in_transaction"] = False
        if self.armed is None:
            link["batch_in_transaction"] = link.get("batch_in_transaction", False) or batch
            return False
        at = self.armed[1]
        if at == "write":
            return batch
        if seen(COMMIT):
            decisive = link.get("batch_in_transaction", False)
            link["batch_in_transaction"] = False
            return decisive
        link["batch_in_transaction"] = link.get("batch_in_transaction", False) or batch
        return False

    async def _client_to_server(self, reader, client_writer, server_writer, state) -> None:
        tail = b""
        link: dict = {}
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                return
            window = tail + chunk
            fresh_from = len(tail)
            tail = window[-_TAIL:]
            if self._is_commit_step(window, fresh_from, link):
                assert self.armed is not None
                action, self.armed = self.armed[0], None
                if action == "lose_reply":
                    # Forwarded whole; walletd's side is cut once PostgreSQL has answered, i.e.
                    # once the step has certainly committed.
                    state["reply_lost"] = True
                    server_writer.write(chunk)
                    await server_writer.drain()
                    await asyncio.Event().wait()  # the reply task ends this link
                if action == "cut":
                    server_writer.write(chunk)
                    await server_writer.drain()
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
