"""`bench.run --citus DIR`: the same runs on a Citus cluster instead of the embedded PostgreSQL.

A coordinator and two workers on loopback (tests/support/citus_cluster.py, the Citus that
tests/citus/build.sh built into DIR), on this same machine; walletd migrates the database, which
distributes it. PostgreSQL CPU per operation is then the sum over the three nodes' process
trees, and pgbench (reference c) runs on a plain table of the coordinator. The report gains
`meta.citus`: the nodes, the shard count, and the share of the uniform run's transfers that
cross shards and workers, from where the benchmark's users actually landed.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from bench.config import DATABASE
from tests.support.citus_cluster import CitusCluster


@dataclass(frozen=True)
class ServerInfo:
    """What pgbench needs of the server it drives (the embedded package's postmaster info has the same)."""

    socket_dir: Path
    port: int


async def start(install: Path, workdir: Path) -> tuple[CitusCluster, str, ServerInfo]:
    cluster = CitusCluster(install, workdir / "citus")
    cluster.start()
    url = await cluster.create_database(DATABASE)
    return cluster, url, ServerInfo(cluster.coordinator.data, cluster.coordinator.port)


async def placement(conn: asyncpg.Connection, user_ids: list) -> dict:
    """Where the users landed, and what share of ordered pairs of distinct users (a uniform
    transfer picks one) sit on different shards and on different workers."""
    rows = await conn.fetch(
        "SELECT get_shard_id_for_distribution_column('wallets', u) AS shard, p.nodeport "
        "FROM unnest($1::uuid[]) u JOIN pg_dist_shard_placement p "
        "ON p.shardid = get_shard_id_for_distribution_column('wallets', u)", user_ids)
    pairs = cross_shard = cross_worker = 0
    for a, b in itertools.permutations(rows, 2):
        pairs += 1
        cross_shard += a["shard"] != b["shard"]
        cross_worker += a["nodeport"] != b["nodeport"]
    shards = await conn.fetchval("SELECT count(*) FROM pg_dist_shard WHERE logicalrelid = 'wallets'::regclass")
    workers = await conn.fetchval("SELECT count(*) FROM pg_dist_node WHERE shouldhaveshards AND noderole = 'primary'")
    return {"workers": workers, "shards_per_table": shards, "users": len(rows),
            "uniform_cross_shard_share": round(cross_shard / pairs, 4) if pairs else None,
            "uniform_cross_worker_share": round(cross_worker / pairs, 4) if pairs else None}


async def defer_full_audit(conn: asyncpg.Connection) -> None:
    """Marks the self-audit's full pass as just done, so walletd's first full pass falls an interval
    (WALLETD_AUDIT_FULL_INTERVAL_SECONDS) after start, not during the runs. On Citus a full pass
    reads the books into the coordinator (minutes for the bench's 200,000 entries here) and the
    incremental pass, which checks every new seal, waits behind it; the run measures requests."""
    await conn.execute("INSERT INTO audit_cursor DEFAULT VALUES ON CONFLICT DO NOTHING")
    await conn.execute("UPDATE audit_cursor SET full_pass_at = now()")
