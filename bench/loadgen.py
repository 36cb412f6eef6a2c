"""The load generator: a lean closed-loop HTTP/1.1 client, run as its own process.

    python -m bench.loadgen SPEC.json RESULT.json

A fixed number of keep-alive connections (default 32) each send one request, wait for the whole
response, and send the next. Requests are pre-built bytes (asyncio Protocol, no HTTP library on
the hot path), so the client spends as little CPU as possible on the 2 cores it shares with the
server and PostgreSQL; every server, the HTTP floor included, is driven by this same client.

Spec (JSON):
    host, port            where to send
    concurrency           connections (32)
    warmup, duration      seconds; only completions in [warmup, warmup + duration] are measured
    template              request text with {0}, {1}… placeholders (latin-1)
    args                  list of argument lists, one per distinct request
    mode                  "cycle": each connection walks the (pre-shuffled) list round-robin until
                          the time is up; "once": every request is sent exactly once, then stop
    collect               optional JSON field of 2xx bodies to return (e.g. "id" of a deposit)
    drain                 seconds to wait for in-flight requests at the end (then: "unfinished")

Protocol on stdout, one line each, so the orchestrator can sample server CPU and memory at the
edges of the measured window: "READY", "MEASURE_START", "MEASURE_END", "DONE".
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from collections import Counter

from tests.support import servers


class ServerClosed(ConnectionError):
    pass


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[index]


def build_request(method: str, path: str, query: str, host: str, token: str | None, body: str | None = None) -> str:
    """One HTTP/1.1 request as text; the same shape for walletd and every reference server. A JSON
    body (ASCII) is sent as is: such a request is a whole one, not a template."""
    target = f"{path}?{query}" if query else path
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    if body is not None:
        return (f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n{body}")
    length = "Content-Length: 0\r\n" if method in ("POST", "PUT") else ""
    return f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n{auth}{length}\r\n"


class Connection(asyncio.Protocol):
    """One keep-alive connection; parses Content-Length and chunked responses."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.waiter: asyncio.Future | None = None
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ServerClosed(repr(exc) if exc else "server closed the connection"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        parsed = self._parse()
        if parsed is not None:
            waiter.set_result(parsed)

    def _parse(self):
        buf = self.buffer
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(buf[:end]).lower()
        status = int(head[9:12])
        start = end + 4
        pos = head.find(b"\r\ncontent-length:")
        if pos >= 0:
            stop = head.find(b"\r\n", pos + 2)
            length = int(head[pos + 17: stop if stop >= 0 else len(head)])
            if len(buf) < start + length:
                return None
            body = bytes(buf[start:start + length])
            del buf[:start + length]
        elif b"\r\ntransfer-encoding: chunked" in head:
            body_parts = []
            cursor = start
            while True:
                line_end = buf.find(b"\r\n", cursor)
                if line_end < 0:
                    return None
                size = int(bytes(buf[cursor:line_end]).split(b";")[0], 16)
                chunk_start = line_end + 2
                if size == 0:
                    trailer_end = buf.find(b"\r\n\r\n", line_end)
                    if trailer_end < 0:
                        return None
                    cursor = trailer_end + 4
                    break
                if len(buf) < chunk_start + size + 2:
                    return None
                body_parts.append(bytes(buf[chunk_start:chunk_start + size]))
                cursor = chunk_start + size + 2
            body = b"".join(body_parts)
            del buf[:cursor]
        else:  # no length: the body runs to the end of the connection (not expected here)
            body = bytes(buf[start:])
            del buf[:]
        keep_alive = b"\r\nconnection: close" not in head
        return status, body, keep_alive

    def send(self, request: bytes, loop: asyncio.AbstractEventLoop) -> asyncio.Future:
        waiter = self.waiter = loop.create_future()
        self.transport.write(request)
        if self.buffer:  # never expected (closed loop), but never hang on it either
            parsed = self._parse()
            if parsed is not None:
                waiter.set_result(parsed)
        return waiter


async def run(spec: dict) -> dict:
    loop = asyncio.get_running_loop()
    host, port = spec["host"], int(spec["port"])
    concurrency = int(spec.get("concurrency", 32))
    warmup, duration = float(spec.get("warmup", 0)), float(spec["duration"])
    template: str = spec["template"]
    args: list[list] = spec["args"]
    mode = spec.get("mode", "cycle")
    collect = spec.get("collect")
    drain = float(spec.get("drain", 10))
    if not args:
        raise SystemExit("loadgen: no requests in the spec")

    if mode == "cycle":
        requests = [template.format(*a).encode("latin-1") for a in args]
    else:
        requests = None
    next_index = 0

    latencies: list[float] = []
    status_measured: Counter = Counter()
    status_all: Counter = Counter()
    error_samples: dict[str, str] = {}
    transport_errors: Counter = Counter()
    collected: list = []
    timeline: list[list] = []  # per measured second: [completions, max latency]
    in_flight = 0
    completed_all = 0
    last_completion = 0.0

    async def connect() -> Connection:
        _, protocol = await loop.create_connection(Connection, host, port)
        return protocol

    conns = [await connect() for _ in range(concurrency)]
    print("READY", flush=True)

    t_begin = time.perf_counter()
    usage_marks: dict[str, resource.struct_rusage] = {}

    def mark(name: str) -> None:
        usage_marks[name] = resource.getrusage(resource.RUSAGE_SELF)
        print(name, flush=True)

    # cycle: warm up for `warmup` seconds, then measure for `duration`.
    # once: the warm-up ends after `warmup` seconds or `warmup_requests` requests, whichever
    # comes first; the window then runs to the last completion, or to warmup + duration at most.
    warmup_requests = int(spec.get("warmup_requests", 0)) if mode == "once" else 0
    t_end = t_begin + warmup + duration
    t_measure = t_begin + warmup
    measure_from: int | None = None  # once: the first measured request's index
    if mode == "cycle":
        if warmup > 0:
            loop.call_later(warmup, mark, "MEASURE_START")
        else:
            mark("MEASURE_START")
    elif warmup <= 0 and warmup_requests <= 0:
        measure_from, t_measure = 0, t_begin
        mark("MEASURE_START")
    end_marked = False

    def end_mark() -> None:
        nonlocal end_marked
        if not end_marked:
            end_marked = True
            mark("MEASURE_END")

    end_handle = loop.call_later(t_end - t_begin, end_mark)

    async def worker(slot: int) -> None:
        nonlocal next_index, in_flight, completed_all, last_completion, t_measure, measure_from
        conn = conns[slot]
        position = (slot * 7919) % len(args)
        perf = time.perf_counter
        while True:
            index = 0
            if mode == "cycle":
                t0 = perf()
                if t0 >= t_end:
                    return
                request = requests[position]
                position += 1
                if position == len(requests):
                    position = 0
            else:
                index = next_index
                if index >= len(args):
                    return
                next_index += 1
                request = template.format(*args[index]).encode("latin-1")
                t0 = perf()
                if t0 >= t_end:
                    return
                if measure_from is None and ((warmup_requests > 0 and index >= warmup_requests)
                                             or (warmup > 0 and t0 >= t_begin + warmup)):
                    measure_from, t_measure = index, t0
                    mark("MEASURE_START")
            in_flight += 1
            try:
                if conn.closed:
                    conn = conns[slot] = await connect()
                status, body, keep_alive = await conn.send(request, loop)
            except (OSError, ConnectionError) as exc:
                in_flight -= 1
                transport_errors[type(exc).__name__] += 1
                try:
                    conn.transport.close()
                    conn = conns[slot] = await connect()
                except OSError as again:
                    transport_errors["reconnect:" + type(again).__name__] += 1
                    await asyncio.sleep(0.05)
                continue
            t1 = perf()
            in_flight -= 1
            completed_all += 1
            last_completion = t1
            status_all[status] += 1
            if (t_measure <= t1 <= t_end) if mode == "cycle" else (
                    measure_from is not None and index >= measure_from and t1 <= t_end):
                latencies.append(t1 - t0)
                status_measured[status] += 1
                second = int(t1 - t_measure)
                while len(timeline) <= second:
                    timeline.append([0, 0.0])
                bucket = timeline[second]
                bucket[0] += 1
                if t1 - t0 > bucket[1]:
                    bucket[1] = t1 - t0
            if status >= 300:
                key = str(status)
                if key not in error_samples:
                    error_samples[key] = body[:300].decode("utf-8", "replace")
            elif collect is not None:
                try:
                    collected.append(json.loads(body)[collect])
                except (ValueError, KeyError, TypeError):
                    transport_errors["uncollectable-body"] += 1
            if not keep_alive:
                conn.transport.close()
                conn = conns[slot] = await connect()

    tasks = [asyncio.ensure_future(worker(i)) for i in range(concurrency)]
    all_done = asyncio.gather(*tasks)
    try:
        await asyncio.wait_for(asyncio.shield(all_done), timeout=warmup + duration + drain)
    except TimeoutError:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    # "once" may finish before the deadline: the window then ends at the last completion.
    finished_early = time.perf_counter() < t_end
    if finished_early:
        end_handle.cancel()
        end_mark()
    else:
        end_mark()
    unfinished = in_flight
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()

    window_end = min(t_end, last_completion) if finished_early else t_end
    started = mode == "cycle" or measure_from is not None
    window = max(window_end - t_measure, 1e-9) if started else 0.0
    latencies.sort()
    measured = len(latencies)
    before, after = usage_marks.get("MEASURE_START"), usage_marks.get("MEASURE_END")
    client_cpu = None
    if before is not None and after is not None:
        client_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    errors_measured = sum(n for s, n in status_measured.items() if s >= 400)
    return {
        "requests": measured,
        "window_s": window,
        "ops_per_s": measured / window if window else 0.0,
        "latency_ms": {
            "p50": _ms(percentile(latencies, 0.50)),
            "p90": _ms(percentile(latencies, 0.90)),
            "p99": _ms(percentile(latencies, 0.99)),
            "max": _ms(latencies[-1] if latencies else None),
            "mean": _ms(sum(latencies) / measured if measured else None),
        },
        "status": {str(k): v for k, v in sorted(status_measured.items())},
        "status_all": {str(k): v for k, v in sorted(status_all.items())},
        "errors": errors_measured + sum(transport_errors.values()) + unfinished,
        "http_4xx": sum(n for s, n in status_measured.items() if 400 <= s < 500),
        "http_5xx": sum(n for s, n in status_measured.items() if s >= 500),
        "transport_errors": dict(transport_errors),
        "unfinished": unfinished,
        "error_samples": error_samples,
        "completed_all": completed_all,
        "sent_all": next_index if mode == "once" else None,
        "finished_early": finished_early,
        "client_cpu_s": client_cpu,
        "timeline": [[n, _ms(worst)] for n, worst in timeline],
        "collected": collected,
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def main() -> None:
    spec_path, result_path = sys.argv[1], sys.argv[2]
    with open(spec_path) as handle:
        spec = json.load(handle)
    result = servers.run(run(spec))
    with open(result_path, "w") as handle:
        json.dump(result, handle)
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
