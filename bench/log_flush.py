"""What writing the audit trail costs the request path, and how late its lines reach stdout.

    python -m bench.log_flush [--lines 200000] [--repeat 3] [--out /dev/null]

Three writers of the same JSON lines (walletd's own logger, walletd.logs):
- `thread`: walletd's LineBuffer: the caller appends to a deque; a writer thread of its own
  writes what gathered every 25 ms;
- `loop timer`: the previous design, kept here for comparison: the first line after a write set a
  50 ms timer on the running event loop (so a busy or a closed loop held the lines back);
- `per line`: one write and flush per line (no buffering at all).

For each it prints the cost of one `log.info` on the event loop (µs per line, lines/s), of the
writer's own call with an already rendered line (what the flushing design adds), and how
late lines reached the stream: while lines keep coming, and while the event loop is blocked by a
300 ms computation (a long batch, a GC pause) right after a line. Figures, not a test: nothing is
asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

from walletd import logs

BLOCK_S = 0.3


class LoopTimerBuffer:
    """The previous LineBuffer (for comparison only): flushed by a timer on the running loop."""

    def __init__(self, stream, interval: float = 0.05, limit: int = 1 << 16) -> None:
        self.stream, self.interval, self.limit = stream, interval, limit
        self._parts: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None

    def msg(self, message: str) -> None:
        self._parts.append(message)
        self._size += len(message) + 1
        if self._size >= self.limit:
            self.flush()
        elif self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(self.interval, self.flush)
            except RuntimeError:
                self.flush()

    info = msg

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._parts:
            text = "\n".join(self._parts) + "\n"
            self._parts, self._size = [], 0
            self.stream.write(text)
            self.stream.flush()


class PerLine:
    def __init__(self, stream) -> None:
        self.stream = stream

    def msg(self, message: str) -> None:
        self.stream.write(message + "\n")
        self.stream.flush()

    info = msg

    def flush(self) -> None:
        pass


class Stamping:
    """A stream that notes when each line reached it (the line carries when it was logged)."""

    def __init__(self, sink) -> None:
        self.sink = sink
        self.delays: list[float] = []

    def write(self, text: str) -> None:
        now = time.perf_counter()
        for line in text.splitlines():
            if '"sent":' in line:
                self.delays.append(now - json.loads(line)["sent"])
        self.sink.write(text)

    def flush(self) -> None:
        self.sink.flush()


def use(writer) -> None:
    """walletd's own logger (walletd.logs), writing through `writer`."""
    logs.configure("info", writer=writer)


async def cost(log, lines: int) -> float:
    """Seconds per log.info of a request-shaped line, on the event loop."""
    started = time.perf_counter()
    for i in range(lines):
        log.info("http.request", method="POST", path="/wallet/transfer", route="/wallet/transfer", status=200,
                 duration_ms=1.23, principal="0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", request_id=f"r-{i}")
        if i % 64 == 0:
            await asyncio.sleep(0)  # let the loop turn, as between requests
    return (time.perf_counter() - started) / lines


async def raw_cost(writer, lines: int) -> float:
    """Seconds per call of the writer alone, with an already rendered line: the flushing design's
    own share of a log call."""
    line = '{"method":"POST","path":"/wallet/transfer","status":200,"event":"http.request","level":"info"}'
    started = time.perf_counter()
    for i in range(lines):
        writer.msg(line)
        if i % 64 == 0:
            await asyncio.sleep(0)
    return (time.perf_counter() - started) / lines


async def delays(log, stamping: Stamping, *, steady_s: float = 1.0) -> tuple[list[float], list[float]]:
    """How late lines arrive: at a steady 2,000 lines/s, then one line right before the loop is
    blocked for BLOCK_S."""
    stamping.delays.clear()
    stop = time.perf_counter() + steady_s
    while time.perf_counter() < stop:
        log.info("steady", sent=time.perf_counter())
        await asyncio.sleep(0.0005)
    await asyncio.sleep(0.2)
    steady = list(stamping.delays)
    stamping.delays.clear()
    log.info("before a blocked loop", sent=time.perf_counter())
    busy_until = time.perf_counter() + BLOCK_S
    while time.perf_counter() < busy_until:  # the event loop does not turn meanwhile
        sum(range(1000))
    await asyncio.sleep(0.2)
    return steady, list(stamping.delays)


def describe(values: list[float]) -> str:
    if not values:
        return "no line arrived"
    ms = sorted(v * 1000 for v in values)
    return f"p50 {statistics.median(ms):6.1f} ms  max {ms[-1]:6.1f} ms"


async def main_async(args) -> None:
    sink = open(args.out, "w")  # noqa: SIM115 - closed at the end
    makers = {"thread": lambda s: logs.LineBuffer(s), "loop timer": LoopTimerBuffer, "per line": PerLine}
    runs: dict[str, list] = {name: [] for name in makers}
    for _ in range(args.repeat):  # interleaved, so a burst of load elsewhere hits every writer alike
        for name, make in makers.items():
            stamping = Stamping(sink)
            writer = make(stamping)
            use(writer)
            log = logs.get_logger("bench")
            await cost(log, min(args.lines, 5000))  # warm-up
            seconds = await cost(log, args.lines)
            alone = await raw_cost(writer, args.lines)
            steady, blocked = await delays(log, stamping)
            writer.flush()
            runs[name].append((seconds, alone, steady, blocked))
    sink.close()
    print(f"{args.lines:,} request lines per run, {args.repeat} runs per writer (best cost, all delays), "
          f"walletd's logger, written to {args.out}")
    print(f"{'writer':<12}{'µs/line':>9}{'lines/s':>11}{'writer µs':>11}   {'delay at 2,000 lines/s':<30}"
          f"delay of a line before a {BLOCK_S * 1000:.0f} ms blocked loop")
    for name, results in runs.items():
        seconds = min(r[0] for r in results)
        alone = min(r[1] for r in results)
        steady = [d for r in results for d in r[2]]
        blocked = [d for r in results for d in r[3]]
        print(f"{name:<12}{seconds * 1e6:>9.2f}{1 / seconds:>11,.0f}{alone * 1e6:>11.3f}   "
              f"{describe(steady):<30}{describe(blocked)}")
    print("µs/line: one log.info of a request line (rendering, JSON, writer); writer µs: the writer alone")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--out", default="/dev/null")
    parser.add_argument("--repeat", type=int, default=3)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
