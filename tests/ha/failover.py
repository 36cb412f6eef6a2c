"""`make test-ha`: walletd survives the death of its PostgreSQL leader and loses nothing it acknowledged.

One etcd and two Patroni nodes (synchronous replication) on 127.0.0.1, walletd pointed at both
with target_session_attrs=read-write. Several clients transfer money, each transfer under its own
Idempotency-Key, retried with the same key on 503 and on connection errors. In the middle the
leader node (Patroni and its postmaster with every backend) is SIGKILLed. The clients go on until
walletd is ready again and more transfers have gone through. Then, on the new leader:

- every acknowledged (200) transfer is there, exactly once, under its key;
- no transfer was applied twice: committed transfers = stored keys (one per committed transfer);
- no 5xx other than 503, and every 503 carried Retry-After;
- no key answered 503 was later replayed as done (a 503 says nothing moved);
- `walletd audit` is clean;
- walletd is ready again (/ready 200) in the same process, never restarted.

Run through tests/ha/run.sh (as root: it installs etcd, Patroni and an unprivileged user).
Exits 1 on any failed assertion; stops everything it started in every case.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster import Cluster, create_walletd_database, deployed_dcs, free_port, http_json, wait_for  # noqa: E402
from load import LoadStats, history_reader, make_users, transfer_client  # noqa: E402

CLIENTS = 8
ACKS_BEFORE_KILL = 1500     # transfers acknowledged before the leader dies
ACKS_AFTER_READY = 1000     # and after walletd is ready again
RECOVERY_BUDGET_S = 75      # from the kill to ACKS_AFTER_READY, or the test fails
TOTAL_BUDGET_S = 175        # the whole run (CI allows 3 minutes)


class Failed(Exception):
    pass


class ReadyProbe:
    """Polls /ready every 100 ms and keeps the transitions with their times."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session, self.base = session, base
        self.transitions: list[tuple[float, int | str]] = []

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with self.session.get(f"{self.base}/ready", timeout=aiohttp.ClientTimeout(total=3)) as r:
                    state: int | str = r.status
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                state = type(exc).__name__
            if not self.transitions or self.transitions[-1][1] != state:
                self.transitions.append((time.monotonic(), state))
            await asyncio.sleep(0.1)

    def down_window(self, since: float) -> tuple[float, float] | None:
        """(first moment not ready after `since`, first moment ready again after it)."""
        down = next((t for t, s in self.transitions if t >= since and s != 200), None)
        if down is None:
            return None
        up = next((t for t, s in self.transitions if t > down and s == 200), None)
        return down, up if up is not None else float("nan")

    def ready_now(self) -> bool:
        return bool(self.transitions) and self.transitions[-1][1] == 200


def longest_gap(times: list[float], since: float) -> tuple[float, float]:
    """The longest stretch after `since` with no acknowledgement: (start, length)."""
    times = sorted(t for t in times if t >= since - 5)
    best = (since, 0.0)
    for a, b in itertools.pairwise(times):
        if b - a > best[1]:
            best = (a, b - a)
    return best


async def drive(cluster: Cluster, base: str, operator_key: str, leader, standby, started: float) -> dict:
    stats = LoadStats()
    stop, probe_stop = asyncio.Event(), asyncio.Event()
    give_up_at = started + TOTAL_BUDGET_S - 25  # leaves time for the checks and the teardown
    # Longer than anything walletd may take to answer (an in-doubt commit waits up to
    # WALLETD_IN_DOUBT_SECONDS): the test must see walletd's answer, not its own impatience.
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=CLIENTS + 4)) as session:
        users = await make_users(session, base, operator_key, CLIENTS)
        probe = ReadyProbe(session, base)
        probe_task = asyncio.create_task(probe.run(probe_stop))
        clients = [asyncio.create_task(transfer_client(session, base, users, i, stats, stop, give_up_at))
                   for i in range(CLIENTS)]
        clients += [asyncio.create_task(history_reader(session, base, users[i], stats, stop)) for i in range(2)]
        times: dict[str, float] = {"load_started": time.monotonic()}
        try:
            while len(stats.acks) < ACKS_BEFORE_KILL:
                await asyncio.sleep(0.02)
                if time.monotonic() > give_up_at:
                    raise Failed(f"only {len(stats.acks)} transfers acknowledged before the kill deadline")
            times["kill"] = time.monotonic()
            acks_at_kill = len(stats.acks)
            await asyncio.to_thread(cluster.kill_node, leader)
            print(f"killed the leader {leader.name} (Patroni pid {leader.proc.pid}, its postmaster, every backend) "
                  f"after {acks_at_kill} acknowledged transfers", flush=True)
            deadline = times["kill"] + RECOVERY_BUDGET_S
            while "promoted" not in times or "ready_again" not in times or \
                    sum(1 for a in stats.acks if a.at > times["ready_again"]) < ACKS_AFTER_READY:
                await asyncio.sleep(0.05)
                now = time.monotonic()
                if "promoted" not in times and await asyncio.to_thread(cluster.leader_among, [standby]):
                    times["promoted"] = time.monotonic()
                if "ready_again" not in times and probe.down_window(times["kill"]) and probe.ready_now():
                    times["ready_again"] = probe.transitions[-1][0]
                if now > deadline:
                    raise Failed(f"not recovered {RECOVERY_BUDGET_S} s after the kill: {sorted(times)}; "
                                 f"ready transitions {probe.transitions[-5:]}")
        finally:
            stop.set()
            await asyncio.gather(*clients, return_exceptions=True)
            probe_stop.set()
            await probe_task
        # after the failover, history pages (read pool, prefer-standby) are served again
        async with session.get(f"{base}/user/transactions", headers=users[0].auth) as response:
            history_after = response.status
    return {"stats": stats, "users": users, "times": times, "probe": probe, "acks_at_kill": acks_at_kill,
            "history_after": history_after}


async def verify(cluster: Cluster, new_leader, db_password: str, result: dict) -> list[str]:
    stats: LoadStats = result["stats"]
    problems = []
    acked = {a.key: a.transaction_id for a in stats.acks}
    if len(acked) != len(stats.acks):
        problems.append(f"{len(stats.acks) - len(acked)} keys were acknowledged twice")
    if len(set(acked.values())) != len(acked):
        problems.append("two different keys were acknowledged with the same transaction id")
    user_ids = [u.user_id for u in result["users"]]
    conn = await asyncpg.connect(host="127.0.0.1", port=new_leader.pg_port, user="walletd", password=db_password,
                                 database="walletd")
    try:
        found = await conn.fetch("SELECT id::text, count(*) AS n FROM transactions WHERE id = ANY($1::uuid[]) "
                                 "GROUP BY id", list(acked.values()))
        stored = dict(await conn.fetch("SELECT key, response->>'id' FROM idempotency_keys "
                                       "WHERE principal_id = ANY($1::uuid[])", user_ids))
        committed = await conn.fetchval("SELECT count(*) FROM transactions WHERE type = 'transfer' "
                                        "AND from_user_id = ANY($1::uuid[])", user_ids)
    finally:
        await conn.close()
    found_once = sum(1 for row in found if row["n"] == 1)
    missing = set(acked.values()) - {row["id"] for row in found}
    if missing:
        problems.append(f"{len(missing)} acknowledged transfers are missing on the new leader, "
                        f"e.g. {sorted(missing)[:3]}")
    wrong_key = [k for k, tx in acked.items() if stored.get(k) != tx]
    if wrong_key:
        problems.append(f"{len(wrong_key)} acknowledged keys are not stored with their transaction, "
                        f"e.g. {wrong_key[:3]}")
    if stats.lying_503s:
        problems.append(f"{len(stats.lying_503s)} keys were answered 503 (nothing moved) and later replayed as done, "
                        f"e.g. {stats.lying_503s[:3]}")
    if committed != len(stored):
        problems.append(f"{committed} transfers committed but {len(stored)} keys stored: a transfer applied twice "
                        "or without its key")
    unresolved_committed = len(stored) - len(acked)
    result["figures"] = {"acknowledged": len(acked), "found": len(found), "recorded_once": found_once,
                         "committed_transfers": committed, "stored_keys": len(stored),
                         "committed_but_unacknowledged": unresolved_committed}
    return problems


def run_audit(walletd_bin: Path, url: str) -> tuple[int, str]:
    done = subprocess.run([str(walletd_bin), "audit"], env={**os.environ, "DATABASE_URL": url},
                          capture_output=True, text=True, timeout=60)
    return done.returncode, (done.stdout + done.stderr).strip()


def walletd_log_findings(path: Path) -> list[tuple[int, str, str]]:
    """walletd's warnings and errors grouped by (event, error): (count, group, where it was raised)."""
    groups: Counter = Counter()
    where: dict[str, str] = {}
    in_trace = False
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # stdlib logging that bypassed structlog (e.g. asyncpg's pool)
            if line.startswith("Traceback"):
                in_trace = True
            elif in_trace and not line.startswith(" "):
                in_trace = False  # the exception line that ends a traceback
            elif not in_trace and any(word in line for word in ("Error", "Exception", "error", "FATAL")):
                groups[f"(plain line) {line[:200]}"] += 1  # not the start-up banner
            continue
        if not isinstance(record, dict):
            continue
        if record.get("level") not in ("warning", "error", "critical") and "exception" not in record:
            continue
        trace = record.get("exception", "")
        error = record.get("error") or (trace.strip().splitlines()[-1] if trace else "")
        group = f"{record.get('event', '?')}: {error[:300]}"
        groups[group] += 1
        if trace and group not in where:
            frames = [f.strip() for f in trace.splitlines() if f.strip().startswith("File ") and "/walletd/" in f]
            where[group] = " <- ".join(reversed(frames[-4:]))
    return [(n, group, where.get(group, "")) for group, n in groups.most_common()]


def report(result: dict, formed_s: float, started: float) -> None:
    stats: LoadStats = result["stats"]
    times, probe = result["times"], result["probe"]
    kill = times["kill"]
    print("\n=== walletd failover test ===")
    print(f"cluster formed (etcd + 2 Patroni nodes, synchronous standby streaming) in {formed_s:.1f} s")
    if "promoted" in times:
        print(f"Patroni: new leader {times['promoted'] - kill:.1f} s after the kill")
    window = probe.down_window(kill)
    if window:
        down, up = window
        print(f"/ready: not ready from +{down - kill:.1f} s to +{up - kill:.1f} s after the kill ({up - down:.1f} s)")
    gap_start, gap = longest_gap([a.at for a in stats.acks], kill)
    print(f"unavailability window (no transfer acknowledged): {gap:.1f} s, from {gap_start - kill:+.1f} s")
    print("answers by status: " + ", ".join(f"{k}: {v}" for k, v in sorted(stats.statuses.items())))
    print("history pages (read pool, prefer-standby) by status: "
          + ", ".join(f"{k}: {v}" for k, v in sorted(stats.history.items())))
    print(f"503 without Retry-After: {stats.without_retry_after}; keys answered 503 and later replayed as done: "
          f"{len(stats.lying_503s)}")
    replays = sum(1 for a in stats.acks if a.replayed)
    print(f"acknowledged before the kill: {result['acks_at_kill']}, in all: {len(stats.acks)} "
          f"({replays} of them replays of a key whose first attempt's answer was lost)")
    figures = result.get("figures", {})
    if figures:
        print("acknowledged / found / recorded once: "
              f"{figures['acknowledged']} / {figures['found']} / {figures['recorded_once']}; "
              f"committed transfers {figures['committed_transfers']} = stored keys {figures['stored_keys']}; "
              f"committed but never acknowledged (client gave up): {figures['committed_but_unacknowledged']}")
    print(f"keys given up unresolved: {len(stats.unresolved)}; refused (4xx): {len(stats.refused)}")
    for status, body in stats.refused[:3]:
        print(f"  refused {status}: {body}")
    for status, request_id, body in stats.server_errors[:5]:
        print(f"  server error {status} request_id={request_id}: {body}")
    print(f"whole test so far: {time.monotonic() - started:.1f} s")


async def main_async(args) -> int:
    started = time.monotonic()
    run_dir = Path(args.run_dir)
    walletd_bin = Path(sys.executable).parent / "walletd"
    cluster = Cluster(run_dir, Path(args.pg_bin), Path(args.patroni), args.os_user,
                      dcs=deployed_dcs(Path(args.patroni)))
    db_password = secrets.token_hex(12)
    operator_key = secrets.token_hex(16)
    walletd = None
    problems: list[str] = []
    try:
        cluster.start_etcd()
        nodes = [cluster.add_node("pg1"), cluster.add_node("pg2")]
        for node in nodes:
            cluster.start_node(node)
        leader, standby = await asyncio.to_thread(wait_for, cluster.formed, 90, "the cluster to form", 0.25)
        formed_s = time.monotonic() - started
        print(f"cluster formed in {formed_s:.1f} s: leader {leader.name}, synchronous standby {standby.name}",
              flush=True)
        await create_walletd_database(leader, cluster.superuser_password, db_password)
        port = free_port()
        # History pages through the optional read pool: a standby while one answers.
        read_url = cluster.walletd_url(nodes, db_password).replace("read-write", "prefer-standby")
        walletd = await asyncio.to_thread(
            cluster.start_walletd, walletd_bin, cluster.walletd_url(nodes, db_password), port,
            secrets.token_urlsafe(48), operator_key, {"WALLETD_READ_DATABASE_URL": read_url})
        base = f"http://127.0.0.1:{port}"
        result: dict = {}
        try:
            result = await drive(cluster, base, operator_key, leader, standby, started)
        except Failed as exc:
            problems.append(str(exc))
        if result:
            problems += await verify(cluster, standby, db_password, result)
            new_leader_url = f"postgresql://walletd:{db_password}@127.0.0.1:{standby.pg_port}/walletd"
            code, output = run_audit(walletd_bin, new_leader_url)
            print(f"walletd audit against the new leader {standby.name}: {output.splitlines()[-1] if output else ''}")
            if code != 0:
                problems.append(f"walletd audit failed ({code}): {output[:2000]}")
            stats: LoadStats = result["stats"]
            five_xx = {k: v for k, v in (stats.statuses + stats.history).items()
                       if k.isdigit() and int(k) >= 500 and k != "503"}
            if five_xx:
                problems.append(f"5xx other than 503: {five_xx}")
            if stats.without_retry_after:
                problems.append(f"{stats.without_retry_after} answers of 503 without Retry-After")
            if stats.unresolved:
                problems.append(f"{len(stats.unresolved)} transfers never got a final answer")
            if stats.refused:
                problems.append(f"{len(stats.refused)} transfers refused with a 4xx: {stats.refused[:2]}")
            if result["history_after"] != 200:
                problems.append(f"history pages answer {result['history_after']} after the failover")
            if walletd.poll() is not None:
                problems.append(f"walletd exited ({walletd.returncode}): it must survive the failover")
            elif (await asyncio.to_thread(http_json, f"{base}/ready"))[0] != 200:
                problems.append("walletd is not ready after the failover")
            report(result, formed_s, started)
        findings = walletd_log_findings(run_dir / "walletd.log")
        if findings:
            print("walletd log, warnings and errors (count, event: error):")
            for count, group, frames in findings:
                print(f"  {count:6d}  {group}")
                if frames:
                    print(f"          at {frames}")
    finally:
        if walletd is not None and walletd.poll() is None:
            walletd.send_signal(signal.SIGTERM)
            try:
                walletd.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        cluster.stop_all()
    print(f"whole test, teardown included: {time.monotonic() - started:.1f} s")
    if problems:
        print("\nFAILED:")
        for problem in problems:
            print(f"  - {problem}")
        return 1
    print("PASSED")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--pg-bin", required=True)
    parser.add_argument("--patroni", required=True)
    parser.add_argument("--os-user", required=True)
    args = parser.parse_args()

    def out_of_time(signum, frame):
        raise TimeoutError(f"the failover test ran over {TOTAL_BUDGET_S} s")

    # The budget cancels the run (its finally stops everything); the alarm is the backstop.
    signal.signal(signal.SIGALRM, out_of_time)
    signal.signal(signal.SIGTERM, lambda s, f: sys.exit(143))  # runs the finally blocks
    signal.alarm(TOTAL_BUDGET_S + 5)
    sys.exit(asyncio.run(asyncio.wait_for(main_async(args), TOTAL_BUDGET_S)))


if __name__ == "__main__":
    main()
