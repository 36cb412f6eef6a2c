"""Running things and measuring them: server subprocesses, one load-generator run with the
server's CPU and peak RSS over its measured window, and the server's own log problems."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import procstat
from bench.config import HOST, REPO, Config
from tests.support.servers import ServerProcess, ServerStartError

_T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


class HarnessError(Exception):
    """The harness could not do its job (as opposed to walletd being slow or wrong)."""


class Server(ServerProcess):
    """A server subprocess (walletd, the floor, the lock reference) with its log in the work dir."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], port: int, workdir: Path) -> None:
        super().__init__(name, cmd, env, port, workdir / f"{name}.log", cwd=REPO)

    async def start(self, ready_path: str, timeout: float = 90) -> None:
        try:
            await super().start(ready_path, timeout)
        except ServerStartError as exc:
            raise HarnessError(str(exc)) from None


@dataclass
class Target:
    """What the load generator talks to and whose CPU and memory are charged to the run."""

    port: int
    app_pid: int | None  # the HTTP server process (None for pgbench)
    pg_pid: int | tuple[int, ...]  # the postmaster, or every node's on Citus
    server: "Server | None" = None  # checked after every run: a server that died breaks the run


class Bench:
    def __init__(self, cfg: Config, workdir: Path) -> None:
        self.cfg = cfg
        self.workdir = workdir
        self.runs = 0

    async def drive(self, label: str, target: Target, template: str, args: list[list], *, mode: str = "cycle",
                    warmup: float | None = None, duration: float | None = None, warmup_requests: int = 0,
                    collect: str | None = None, concurrency: int | None = None) -> dict:
        """One load-generator run; returns its figures plus server CPU and peak RSS."""
        self.runs += 1
        spec = {
            "host": HOST, "port": target.port, "concurrency": concurrency or self.cfg.concurrency,
            "warmup": self.cfg.warmup if warmup is None else warmup,
            "duration": self.cfg.duration if duration is None else duration,
            "template": template, "args": args, "mode": mode, "collect": collect,
            "warmup_requests": warmup_requests, "drain": 15,
        }
        spec_path = self.workdir / f"spec-{self.runs:02d}-{label}.json"
        result_path = self.workdir / f"result-{self.runs:02d}-{label}.json"
        spec_path.write_text(json.dumps(spec, default=str))
        stderr_path = self.workdir / f"loadgen-{self.runs:02d}-{label}.log"
        with open(stderr_path, "wb") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.loadgen", str(spec_path), str(result_path), cwd=REPO,
                stdout=asyncio.subprocess.PIPE, stderr=err)
        marks: dict[str, tuple[float, float | None]] = {}
        peak_sampled = 0
        rss_reset = False
        sampler: asyncio.Task | None = None

        async def sample_rss() -> None:
            nonlocal peak_sampled
            while True:
                if target.app_pid is not None:
                    peak_sampled = max(peak_sampled, procstat.tree_rss_bytes(target.app_pid) or 0)
                await asyncio.sleep(0.1)

        def snapshot() -> tuple[float, float | None]:
            # The tree: with --workers, walletd's worker processes are its children.
            app = procstat.tree_cpu_seconds(target.app_pid) if target.app_pid is not None else None
            return procstat.tree_cpu_seconds(target.pg_pid), app

        assert proc.stdout is not None
        try:
            while True:
                line = (await proc.stdout.readline()).decode().strip()
                if not line:
                    break
                if line == "MEASURE_START":
                    marks["start"] = snapshot()
                    if target.app_pid is not None:
                        rss_reset = procstat.reset_peak_rss(target.app_pid)
                        sampler = asyncio.create_task(sample_rss())
                elif line == "MEASURE_END":
                    marks["end"] = snapshot()
                    if sampler is not None:
                        sampler.cancel()
        finally:
            if sampler is not None:
                sampler.cancel()
        code = await proc.wait()
        if target.server is not None and target.server.proc is not None and target.server.proc.returncode is not None:
            raise HarnessError(f"{target.server.name} exited ({target.server.proc.returncode}) during {label}:\n"
                               + target.server.tail())
        if code != 0 or not result_path.exists():
            raise HarnessError(f"load generator failed on {label} (exit {code}):\n"
                               + stderr_path.read_text(errors="replace")[-3000:])
        result = json.loads(result_path.read_text())
        ops = result["requests"]
        if "start" in marks and "end" in marks and ops:
            pg_cpu = marks["end"][0] - marks["start"][0]
            result["pg_cpu_ms_per_op"] = round(pg_cpu / ops * 1000, 4)
            app_end, app_start = marks["end"][1], marks["start"][1]
            if app_end is not None and app_start is not None:  # an HTTP server was measured
                app_cpu = app_end - app_start
                result["server_cpu_ms_per_op"] = round(app_cpu / ops * 1000, 4)
                result["server_cpu_util"] = round(app_cpu / result["window_s"], 3)
            result["pg_cpu_util"] = round(pg_cpu / result["window_s"], 3)
        if result.get("client_cpu_s") is not None and ops:
            result["client_cpu_ms_per_op"] = round(result["client_cpu_s"] / ops * 1000, 4)
        if target.app_pid is not None:
            hwm = procstat.peak_rss_bytes(target.app_pid) if rss_reset else None
            result["peak_rss_mb"] = round(max(hwm or 0, peak_sampled) / 2**20, 1)
            result["peak_rss_source"] = "VmHWM reset at window start" if rss_reset else "sampled VmRSS (100 ms)"
        result["ops_per_s"] = round(result["ops_per_s"], 1)
        result["window_s"] = round(result["window_s"], 3)
        return result


def summarize(result: dict, *, keep_collected: bool = False) -> dict:
    out = {k: v for k, v in result.items() if k not in ("collected", "status_all", "completed_all", "sent_all",
                                                        "finished_early", "client_cpu_s")}
    if keep_collected:
        out["collected"] = result["collected"]
    return out



def log_problems(path: Path, keep: int = 20) -> dict:
    """walletd's warning-or-worse log lines: a count by event and the first few lines, so a 500
    in a run comes with its cause."""
    counts: dict[str, int] = {}
    first: list[str] = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return {"count": 0, "by_event": {}, "first": []}
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            event = json.loads(line)
            if event.get("level") in ("debug", "info"):
                continue
            name = f"{event.get('level', '?')}:{event.get('event', '?')}"
        except ValueError:
            name = "unstructured"
        counts[name] = counts.get(name, 0) + 1
        if len(first) < keep:
            first.append(line[:8000])
    return {"count": sum(counts.values()), "by_event": counts, "first": first}
