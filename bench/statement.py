"""A statement of a wallet with a million entries: walletd's memory while it streams the CSV, and
the cost of the books reads on such a wallet.

    .venv/bin/python -m bench.statement [--entries 1000000]

Not part of `make bench`. It starts a throwaway embedded PostgreSQL, migrates a database, creates
two users (bench/seed.py) and funds one by a sign-up-bonus entry through walletd's own batch
write, then loads `entries` transfers back and forth between them with set-based SQL into the
ledger's own tables (bench/seed.load_history: one journal entry, two postings and one record per
transfer; each pair nets to zero). Then it starts `walletd serve` and measures, on the owner's
wallet: the whole CSV statement streamed by a client that only counts it (walletd's RSS sampled
every 20 ms and its peak from VmHWM), the first JSON page, a JSON page deep in the statement, and
balances at instants near the start, the middle and the end. The CSV is checked: as many lines
as the ledger holds for the wallet, each balance_after = the previous + amount, and the last one
equal to the closing balance in the response header. `walletd audit` runs at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import aiohttp
import asyncpg

from bench import procstat, seed
from bench.config import JWT_SECRET, OPERATOR_KEY, RESULTS, SECRETS_KEY
from tests.support import servers

CUR = 1


async def prepare(url: str, entries: int) -> tuple[seed.User, dict]:
    from walletd.persistence.migrate import migrate

    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
        owner, peer = await seed.create_users(conn, "stmt", 2, "!")
        await seed.grant_signup_bonus(conn, [owner], "1000")
    finally:
        await conn.close()
    started = time.monotonic()
    await seed.load_history(url, owner, peer, CUR, entries)
    loaded = time.monotonic() - started
    conn = await asyncpg.connect(url)
    try:
        # The loaded history is dated before the load (seed.load_history); a real wallet exists
        # before its entries.
        await conn.execute("UPDATE wallets SET created_at = (SELECT min(created_at) - interval '1 second' "
                           "FROM postings WHERE wallet_id = $1) WHERE id = $1", owner.wallets[CUR])
        for table in ("journal_entries", "postings", "transactions", "wallets"):
            await conn.execute(f"VACUUM ANALYZE {table}")
        lines = await conn.fetchval("SELECT count(*) FROM postings WHERE wallet_id = $1 AND bucket = 'B'",
                                    owner.wallets[CUR])
        span = await conn.fetchrow("SELECT min(created_at), max(created_at) FROM postings WHERE wallet_id = $1",
                                   owner.wallets[CUR])
    finally:
        await conn.close()
    return owner, {"load_seconds": round(loaded, 1), "wallet_postings": lines, "first": span[0], "last": span[1]}


async def stream_csv(base: str, headers: dict, wallet_id, pid: int) -> dict:
    procstat.reset_peak_rss(pid)
    baseline = procstat.rss_bytes(pid) or 0
    samples: list[int] = []
    lines = 0
    size = 0
    balance: Decimal | None = None
    consistent = True

    async def sample() -> None:
        while True:
            samples.append(procstat.rss_bytes(pid) or 0)
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample())
    started = time.monotonic()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/user/wallet/statement", headers={**headers, "Accept": "text/csv"},
                                params={"wallet_id": str(wallet_id)}, timeout=aiohttp.ClientTimeout(total=3600)) as r:
                assert r.status == 200, await r.text()
                opening = Decimal(r.headers["Walletd-Opening-Balance"])
                closing = Decimal(r.headers["Walletd-Closing-Balance"])
                balance = opening
                header = True
                tail = b""
                async for chunk in r.content.iter_chunked(1 << 16):
                    size += len(chunk)
                    rows = (tail + chunk).split(b"\r\n")
                    tail = rows.pop()
                    for row in rows:
                        if header:
                            header = False
                            continue
                        fields = row.split(b",")
                        balance += Decimal(fields[3].decode())
                        consistent = consistent and balance == Decimal(fields[4].decode())
                        lines += 1
    finally:
        sampler.cancel()
    elapsed = time.monotonic() - started
    peak = max(procstat.peak_rss_bytes(pid) or 0, max(samples, default=0))
    return {"lines": lines, "bytes": size, "seconds": round(elapsed, 2), "lines_per_s": round(lines / elapsed),
            "rss_baseline_mb": _mb(baseline), "rss_peak_mb": _mb(peak), "rss_growth_mb": _mb(peak - baseline),
            "balance_after_consistent": consistent, "last_balance_is_closing": balance == closing}


async def timed_get(http: aiohttp.ClientSession, url: str, headers: dict, params: dict, repeat: int = 5) -> dict:
    times, body = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        async with http.get(url, headers=headers, params=params) as r:
            assert r.status == 200, await r.text()
            body = await r.json()
        times.append((time.perf_counter() - started) * 1000)
    return {"median_ms": round(statistics.median(times), 1), "body": body}


async def reads(base: str, headers: dict, wallet_id, info: dict) -> dict:
    out: dict = {}
    async with aiohttp.ClientSession() as http:
        statement = f"{base}/user/wallet/statement"
        first = await timed_get(http, statement, headers, {"wallet_id": str(wallet_id), "limit": 200})
        out["json_first_page_ms"] = first["median_ms"]
        middle = info["first"] + (info["last"] - info["first"]) / 2
        deep = await timed_get(http, statement, headers, {"wallet_id": str(wallet_id), "limit": 200,
                                                           "from": middle.isoformat()})
        out["json_page_from_the_middle_ms"] = deep["median_ms"]
        cursor = deep["body"]["next_cursor"]
        follow = await timed_get(http, statement, headers, {"wallet_id": str(wallet_id), "limit": 200,
                                                             "cursor": cursor})
        out["json_next_page_by_cursor_ms"] = follow["median_ms"]
        balance = f"{base}/user/wallet/balance"
        for name, at in (("start", info["first"]), ("middle", middle), ("end", info["last"])):
            got = await timed_get(http, balance, headers, {"wallet_id": str(wallet_id), "at": at.isoformat()})
            out[f"balance_at_{name}_ms"] = got["median_ms"]
    return out


async def main_async(entries: int) -> dict:
    from walletd.auth.tokens import TokenIssuer
    from walletd.persistence import embedded

    workdir = Path(tempfile.mkdtemp(prefix="walletd-statement-"))
    os.chmod(workdir, 0o755)  # the embedded server runs as its own system user when we are root
    pg = embedded.start(workdir, throwaway=True)
    server = None
    try:
        url = await servers.create_empty_database(embedded.database_url(pg), "walletd_statement", replace=True)
        owner, info = await prepare(url, entries)
        server = servers.walletd_server(url, workdir / "walletd.log", jwt_secret=JWT_SECRET,
                                        operator_key=OPERATOR_KEY, secrets_key=SECRETS_KEY,
                                        WALLETD_LOG_LEVEL="warning", PYTHONMALLOC="malloc")
        await server.start("/ready")
        headers = {"Authorization": f"Bearer {TokenIssuer(JWT_SECRET, 3600).issue(owner.id, 'user')}"}
        result = {"entries_loaded": entries, **{k: v for k, v in info.items() if k not in ("first", "last")}}
        result["csv"] = await stream_csv(server.url, headers, owner.wallets[CUR], server.pid)
        result.update(await reads(server.url, headers, owner.wallets[CUR], info))
        await server.stop()
        code, audit = await _audit(url)
        result["audit"] = "clean" if code == 0 else audit[-2000:]
        return result
    finally:
        if server is not None:
            await server.stop()
        pg.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)


async def _audit(url: str) -> tuple[int, str]:
    env = {**os.environ, "DATABASE_URL": url, "WALLETD_JWT_SECRET": JWT_SECRET, "WALLETD_SECRETS_KEY": SECRETS_KEY}
    proc = await asyncio.create_subprocess_exec(*servers.walletd_command("audit"), env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace")


def _mb(value: int) -> float:
    return round(value / 2**20, 1)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.statement", description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000, help="transfers touching the wallet (1,000,000)")
    parser.add_argument("--out", type=Path, default=RESULTS / "statement.json")
    args = parser.parse_args()
    result = servers.run(main_async(args.entries))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
