"""What a synchronous standby costs: the same transfer load through walletd against a two-node
synchronous Patroni cluster and against a single Patroni node, on this machine, one after the other.

Optional, not in CI (figures from a shared machine vary): `tests/ha/run.sh latency` (as root).
Prints, for each setup, walletd's transfer throughput and latency under 8 closed-loop clients,
and the latency of one-row commits on a single connection (what one commit waits for, without
walletd's group commit spreading it over a batch).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import time
from pathlib import Path

import aiohttp
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster import Cluster, create_walletd_database, deployed_dcs, free_port, wait_for  # noqa: E402
from load import LoadStats, make_users, transfer_client  # noqa: E402

CLIENTS = 8
WARMUP_S = 2.0
MEASURE_S = 8.0
COMMITS = 300


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def single_commits(port: int, password: str) -> list[float]:
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="walletd", password=password, database="walletd")
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS ha_commit_probe (id bigserial PRIMARY KEY, at timestamptz)")
        times = []
        for _ in range(COMMITS):
            started = time.perf_counter()
            await conn.execute("INSERT INTO ha_commit_probe (at) VALUES (now())")
            times.append(time.perf_counter() - started)
        await conn.execute("DROP TABLE ha_commit_probe")
        return times
    finally:
        await conn.close()


async def transfer_load(base: str, operator_key: str) -> tuple[float, list[float]]:
    stats, stop = LoadStats(), asyncio.Event()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30),
                                     connector=aiohttp.TCPConnector(limit=CLIENTS)) as session:
        users = await make_users(session, base, operator_key, CLIENTS)
        clients = [asyncio.create_task(transfer_client(session, base, users, i, stats, stop, time.monotonic() + 60))
                   for i in range(CLIENTS)]
        await asyncio.sleep(WARMUP_S)
        first, started = len(stats.latencies), time.monotonic()
        await asyncio.sleep(MEASURE_S)
        measured = stats.latencies[first:]
        elapsed = time.monotonic() - started
        stop.set()
        await asyncio.gather(*clients)
    if stats.server_errors or stats.refused:
        raise RuntimeError(f"errors under load: {stats.server_errors[:2]} {stats.refused[:2]}")
    return len(measured) / elapsed, measured


async def measure(args, label: str, node_count: int) -> dict:
    run_dir = Path(args.run_dir) / f"nodes{node_count}"
    run_dir.mkdir(mode=0o755)
    cluster = Cluster(run_dir, Path(args.pg_bin), Path(args.patroni), args.os_user,
                      dcs=deployed_dcs(Path(args.patroni)))
    walletd = None
    try:
        cluster.start_etcd()
        nodes = [cluster.add_node(f"pg{n}") for n in range(1, node_count + 1)]
        for node in nodes:
            cluster.start_node(node)
        if node_count > 1:
            leader, _ = await asyncio.to_thread(wait_for, cluster.formed, 90, "the cluster to form", 0.25)
        else:
            leader = await asyncio.to_thread(wait_for, lambda: cluster.leader_among(nodes), 60, "the leader", 0.25)
        password, operator_key = secrets.token_hex(12), secrets.token_hex(16)
        await create_walletd_database(leader, cluster.superuser_password, password)
        port = free_port()
        walletd = await asyncio.to_thread(cluster.start_walletd, Path(sys.executable).parent / "walletd",
                                          cluster.walletd_url(nodes, password), port, secrets.token_urlsafe(48),
                                          operator_key)
        rate, latencies = await transfer_load(f"http://127.0.0.1:{port}", operator_key)
        commits = await single_commits(leader.pg_port, password)
        return {"label": label, "rate": rate, "p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99),
                "commit_mean": statistics.mean(commits), "commit_p50": percentile(commits, 0.5),
                "commit_p99": percentile(commits, 0.99)}
    finally:
        if walletd is not None and walletd.poll() is None:
            walletd.terminate()
            walletd.wait(timeout=10)
        cluster.stop_all()


async def main_async(args) -> int:
    rows = [await measure(args, "single node", 1), await measure(args, "2 nodes, synchronous", 2)]
    print(f"\n{CLIENTS} clients, {MEASURE_S:.0f} s of transfers through walletd after {WARMUP_S:.0f} s of warm-up; "
          f"{COMMITS} one-row commits on one connection")
    print(f"{'setup':24} {'transfers/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'commit mean ms':>15} {'commit p50':>11} "
          f"{'commit p99':>11}")
    for r in rows:
        print(f"{r['label']:24} {r['rate']:12.0f} {r['p50'] * 1000:8.2f} {r['p99'] * 1000:8.2f} "
              f"{r['commit_mean'] * 1000:15.3f} {r['commit_p50'] * 1000:11.3f} {r['commit_p99'] * 1000:11.3f}")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--pg-bin", required=True)
    parser.add_argument("--patroni", required=True)
    parser.add_argument("--os-user", required=True)
    sys.exit(asyncio.run(main_async(parser.parse_args())))


if __name__ == "__main__":
    main()
