import io

from tests.polling import until
from walletd.logs import LineBuffer


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


async def test_lines_written_together_after_the_interval_in_order():
    stream = CountingStream()
    buffer = LineBuffer(stream, interval=0.05)
    for i in range(100):
        buffer.info(f'{{"n": {i}}}')
    assert stream.getvalue() == ""
    await until(lambda: stream.writes, what="the buffer written after its interval")
    assert stream.writes == 1
    assert stream.getvalue().splitlines() == [f'{{"n": {i}}}' for i in range(100)]


async def test_a_full_buffer_is_written_at_once():
    stream = CountingStream()
    buffer = LineBuffer(stream, interval=60, limit=1000)
    for _ in range(30):
        buffer.info("x" * 99)
    assert stream.writes >= 2 and len(stream.getvalue()) >= 1000
    buffer.flush()
    assert stream.getvalue().count("\n") == 30


def test_without_an_event_loop_a_line_is_written_immediately():
    stream = CountingStream()
    LineBuffer(stream).info('{"event": "walletd.starting"}')
    assert stream.getvalue() == '{"event": "walletd.starting"}\n'
