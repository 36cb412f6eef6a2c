"""An acknowledged transfer must survive a failover even when its commit was in doubt on a leader
that stayed up. `tests/ha/run.sh sync_gap` (as root, like the failover test).

PostgreSQL shows a commit to other sessions as soon as it is written locally, before the
synchronous standby confirms it. So if walletd's connection breaks while its COMMIT waits for
the standby, and walletd then looks the commit up on the same leader, it finds it and may answer
200 for a commit that exists on one node only. The scenario forces exactly that:

1. the leader's walsender is frozen (SIGSTOP): commits wait for the standby, none reaches it;
2. a transfer is sent; its backend waits in SyncRep; the test terminates that backend, so
   walletd's commit is in doubt while the leader stays up;
3. after walletd answered (or a few seconds), the leader node is SIGKILLed and Patroni promotes
   the synchronous standby, which never received that commit;
4. the client retries its key until it gets 200. Every transfer acknowledged at any point must
   be on the new leader, and a key answered 503 must never come back as a replay (the 503 said
   nothing moved).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import sys
import time
from pathlib import Path

import aiohttp
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster import Cluster, create_walletd_database, deployed_dcs, free_port, http_json, wait_for  # noqa: E402
from load import LoadStats, make_users, transfer_once  # noqa: E402

BUDGET_S = 170


async def superuser(cluster: Cluster, node) -> asyncpg.Connection:
    return await asyncpg.connect(host="127.0.0.1", port=node.pg_port, user="postgres",
                                 password=cluster.superuser_password, database="walletd")


async def scenario(cluster: Cluster, base: str, leader, standby, db_password: str, operator_key: str) -> list[str]:
    stats = LoadStats()
    give_up_at = time.monotonic() + 100
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        users = await make_users(session, base, operator_key, 2)
        for _ in range(5):  # a few ordinary transfers first
            await transfer_once(session, base, users[0], users[1].wallets[1], stats, give_up_at)
        admin = await superuser(cluster, leader)
        walsender = await admin.fetchval("SELECT pid FROM pg_stat_replication WHERE sync_state = 'sync'")
        if walsender is None:
            return ["no synchronous walsender on the leader"]
        os.kill(walsender, signal.SIGSTOP)
        print(f"froze the leader's walsender (pid {walsender}): commits now wait for the standby", flush=True)
        pending = asyncio.create_task(transfer_once(session, base, users[0], users[1].wallets[1], stats, give_up_at))
        waiting = None
        for _ in range(100):
            waiting = await admin.fetchval("SELECT pid FROM pg_stat_activity WHERE application_name = 'walletd' "
                                           "AND wait_event = 'SyncRep' LIMIT 1")
            if waiting:
                break
            await asyncio.sleep(0.05)
        if waiting is None:
            return ["walletd's commit never waited for the standby"]
        await admin.execute("SELECT pg_terminate_backend($1)", waiting)
        await admin.close()
        print(f"terminated walletd's backend {waiting} while its COMMIT waited in SyncRep", flush=True)
        done, _ = await asyncio.wait({pending}, timeout=5)
        print(f"before the leader dies, the in-doubt transfer was "
              f"{'acknowledged (200)' if done else 'still unanswered'}; answers so far {dict(stats.statuses)}",
              flush=True)
        acked_before_kill = [a for a in stats.acks]
        await asyncio.to_thread(cluster.kill_node, leader)
        print(f"killed the leader {leader.name}", flush=True)
        await asyncio.to_thread(wait_for, lambda: cluster.leader_among([standby]), 60, "the standby's promotion")
        await pending
        await transfer_once(session, base, users[0], users[1].wallets[1], stats, give_up_at)
    conn = await asyncpg.connect(host="127.0.0.1", port=standby.pg_port, user="walletd", password=db_password,
                                 database="walletd")
    try:
        found = {r[0] for r in await conn.fetch("SELECT id::text FROM transactions WHERE id = ANY($1::uuid[])",
                                                [a.transaction_id for a in stats.acks])}
    finally:
        await conn.close()
    lost = [a for a in stats.acks if a.transaction_id not in found]
    print(f"acknowledged {len(stats.acks)} ({len(acked_before_kill)} before the kill), found on the new leader "
          f"{len(found)}; answers {dict(stats.statuses)}")
    problems = [f"acknowledged transfer {a.transaction_id} (key {a.key}) is not on the new leader" for a in lost]
    problems += [f"key {key} was answered 503 (nothing moved) and later replayed as done" for key in stats.lying_503s]
    return problems


async def main_async(args) -> int:
    started = time.monotonic()
    cluster = Cluster(Path(args.run_dir), Path(args.pg_bin), Path(args.patroni), args.os_user,
                      dcs=deployed_dcs(Path(args.patroni)))
    walletd, problems = None, []
    try:
        cluster.start_etcd()
        nodes = [cluster.add_node("pg1"), cluster.add_node("pg2")]
        for node in nodes:
            cluster.start_node(node)
        leader, standby = await asyncio.to_thread(wait_for, cluster.formed, 90, "the cluster to form", 0.25)
        db_password, operator_key = secrets.token_hex(12), secrets.token_hex(16)
        await create_walletd_database(leader, cluster.superuser_password, db_password)
        port = free_port()
        walletd = await asyncio.to_thread(cluster.start_walletd, Path(sys.executable).parent / "walletd",
                                          cluster.walletd_url(nodes, db_password), port, secrets.token_urlsafe(48),
                                          operator_key)
        problems = await scenario(cluster, f"http://127.0.0.1:{port}", leader, standby, db_password, operator_key)
        if http_json(f"http://127.0.0.1:{port}/ready")[0] != 200:
            problems.append("walletd is not ready after the failover")
    finally:
        if walletd is not None and walletd.poll() is None:
            walletd.terminate()
            walletd.wait(timeout=10)
        cluster.stop_all()
    print(f"whole run: {time.monotonic() - started:.1f} s")
    for problem in problems:
        print(f"FAILED: {problem}")
    print("PASSED" if not problems else "")
    return 1 if problems else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--pg-bin", required=True)
    parser.add_argument("--patroni", required=True)
    parser.add_argument("--os-user", required=True)
    sys.exit(asyncio.run(asyncio.wait_for(main_async(parser.parse_args()), BUDGET_S)))


if __name__ == "__main__":
    main()
