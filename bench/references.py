"""The references walletd is compared with, on the same machine and database: (a) the HTTP
floor (bench/floor_server.py), (b) the lock-per-request transfer (bench/reference_server.py),
(c) pgbench (bench/pgbench.py)."""

from __future__ import annotations

import sys

from bench import pgbench, procstat
from bench.config import DATABASE, HOST, Config
from bench.harness import Bench, HarnessError, Server, Target, say, summarize
from bench.loadgen import percentile
from tests.support.servers import free_port


async def run_floor(bench: Bench, env: dict, workdir, servers: list, pg_pid: int, scenarios: dict,
                    transfer_tpl: str, uniform: list) -> None:
    port = free_port(HOST)
    floor = Server("floor", [sys.executable, "-m", "bench.floor_server", "--host", HOST, "--port", str(port)],
                   env, port, workdir)
    servers.append(floor)
    await floor.start("/health")
    say("reference: HTTP floor")
    scenarios["floor.http"] = summarize(await bench.drive("floor", Target(port, floor.pid, pg_pid),
                                                          transfer_tpl, uniform))
    await floor.stop()


async def run_lock_reference(bench: Bench, env: dict, workdir, servers: list, pg_pid: int,
                             scenarios: dict, transfer_tpl: str, shapes: dict[str, list]) -> None:
    port = free_port(HOST)
    lock = Server("lock-reference", [sys.executable, "-m", "bench.reference_server", "--host", HOST,
                                     "--port", str(port)], env, port, workdir)
    servers.append(lock)
    await lock.start("/health")
    target = Target(port, lock.pid, pg_pid)
    for name, args in shapes.items():
        say(f"reference: lock-per-request {name}")
        scenarios[f"lock.{name}"] = summarize(await bench.drive(f"lock-{name}", target, transfer_tpl, args))
    await lock.stop()


async def run_pgbench(cfg: Config, url: str, info, pg_pid: int, scenarios: dict) -> None:
    await pgbench.prepare(url, cfg.wallets)
    for name, script in (("uniform", pgbench.UNIFORM), ("hot_row", pgbench.HOT)):
        say(f"reference: pgbench {name}")
        scenarios[f"pgbench.{name}"] = await pgbench_run(cfg, script, info, pg_pid)


async def pgbench_run(cfg: Config, script: str, info, pg_pid: int) -> dict:
    common = dict(script=script, rows=cfg.wallets, clients=cfg.concurrency, threads=2,
                  socket_dir=str(info.socket_dir), port=info.port, user="postgres", database=DATABASE)
    warm = await pgbench.run_pgbench(seconds=cfg.warmup, log_latencies=False, **common)
    if warm["returncode"] != 0:
        raise HarnessError(f"pgbench failed: {warm}")
    before = procstat.tree_cpu_seconds(pg_pid)
    res = await pgbench.run_pgbench(seconds=cfg.duration, log_latencies=True, **common)
    pg_cpu = procstat.tree_cpu_seconds(pg_pid) - before
    if res["returncode"] != 0:
        raise HarnessError(f"pgbench failed: {res}")
    lat = res.pop("latencies_ms")
    ops = res["transactions"] or len(lat)
    window = max(1, int(round(cfg.duration)))
    return {
        "requests": ops, "window_s": window, "ops_per_s": round(res["tps"], 1),
        "latency_ms": {"p50": _r(percentile(lat, 0.5)), "p90": _r(percentile(lat, 0.9)),
                       "p99": _r(percentile(lat, 0.99)), "max": _r(lat[-1] if lat else None),
                       "mean": _r(sum(lat) / len(lat) if lat else None)},
        "errors": res["failed"], "http_4xx": 0, "http_5xx": 0,
        "pg_cpu_ms_per_op": round(pg_cpu / ops * 1000, 4) if ops else None,
        "pg_cpu_util": round(pg_cpu / window, 3),
        "command": res["command"],
    }


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
