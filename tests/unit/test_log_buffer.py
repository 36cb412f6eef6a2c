import asyncio
import io
import threading
import time

from tests.polling import until
from walletd.logs import LineBuffer


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.lock = threading.Lock()

    def write(self, text: str) -> int:
        with self.lock:
            self.writes += 1
            return super().write(text)

    def text(self) -> str:
        with self.lock:
            return self.getvalue()


async def test_lines_logged_together_are_written_together_in_order():
    stream = CountingStream()
    buffer = LineBuffer(stream, interval=0.05)
    for i in range(100):
        buffer.info(f'{{"n": {i}}}')
    await until(lambda: stream.text().count("\n") == 100, what="the lines written after the interval")
    assert stream.writes == 1
    assert stream.text().splitlines() == [f'{{"n": {i}}}' for i in range(100)]


def test_a_line_is_written_while_the_event_loop_is_blocked():
    """The writer is a thread: a loop busy with one long step (or no loop at all) holds nothing back."""
    stream = CountingStream()
    buffer = LineBuffer(stream, interval=0.02)

    async def blocked_loop():
        buffer.info('{"event": "before a long step"}')
        deadline = time.monotonic() + 5
        while "before a long step" not in stream.text():  # never yields to the loop
            assert time.monotonic() < deadline, "the line waited for the event loop"

    asyncio.run(blocked_loop())


def test_a_line_logged_as_an_event_loop_ends_is_written():
    """walletd serve migrates in an event loop that ends before the server's starts."""
    stream = CountingStream()
    buffer = LineBuffer(stream, interval=0.02)

    async def last_words():
        buffer.info('{"event": "migrate.applied"}')

    asyncio.run(last_words())
    buffer.info('{"event": "walletd.starting"}')
    deadline = time.monotonic() + 5
    while stream.text().count("\n") < 2:
        assert time.monotonic() < deadline, stream.text()
        time.sleep(0.01)


def test_flush_writes_what_is_pending_at_once():
    stream = CountingStream()
    buffer = LineBuffer(stream, interval=60)
    buffer.info('{"event": "walletd.stopped"}')
    buffer.flush()  # what exit does (atexit)
    assert stream.text() == '{"event": "walletd.stopped"}\n'
    buffer.flush()
    assert stream.writes == 1  # nothing left: no empty write
