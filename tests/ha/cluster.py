"""A throwaway Patroni cluster on loopback: one etcd, N Patroni nodes, walletd, all owned here.

Every process starts in its own process group and is recorded (with its group id) in
`<run dir>/pgids`, so the shell wrapper can stop what a crashed harness left behind. Patroni
detaches each postmaster into a session of its own (os.setsid), so a node's postmaster group is
recorded too, as soon as it is seen. The Patroni settings mirror deploy/patroni/*.yml.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

# The HA scripts run as files (tests/ha/run.sh), not as modules of the tests package.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.support.processes import kill_working_in  # noqa: E402
from tests.support.servers import free_port  # noqa: E402

SCOPE = "walletd-ha"
HA_SECRETS_KEY = "aGEtdGVzdC1zZWNyZXRzLWtleS1vZi0zMi1ieXRlcy0="  # a Fernet key (32 bytes, URL-safe base64)
DEPLOY_NODE_FILES = [Path(__file__).resolve().parents[2] / "deploy" / "patroni" / f"pg{n}.yml" for n in (1, 2, 3)]


def deployed_dcs(patroni_bin: Path) -> dict:
    """bootstrap.dcs of deploy/patroni/pg*.yml (ttl, loop_wait, synchronous mode...), read with the
    YAML parser of Patroni's own venv: the test runs exactly what the deployment files say."""
    script = ("import json, sys, yaml; "
              "print(json.dumps([yaml.safe_load(open(p))['bootstrap']['dcs'] for p in sys.argv[1:]]))")
    done = subprocess.run([str(patroni_bin.parent / "python"), "-c", script, *map(str, DEPLOY_NODE_FILES)],
                          capture_output=True, text=True, check=True)
    sections = json.loads(done.stdout)
    if any(section != sections[0] for section in sections):
        raise RuntimeError("deploy/patroni/pg*.yml disagree on bootstrap.dcs")
    return sections[0]


def http_json(url: str, timeout: float = 1.0):
    """(status, parsed body) or (None, None) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"null")
        except ValueError:
            return exc.code, None
    except (OSError, ValueError):
        return None, None


def wait_for(condition, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    raise TimeoutError(f"gave up after {timeout:.0f} s waiting for {what}")


@dataclass
class Node:
    name: str
    pg_port: int
    api_port: int
    dir: Path
    proc: subprocess.Popen | None = None

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None


@dataclass
class Cluster:
    run_dir: Path
    pg_bin: Path
    patroni_bin: Path
    os_user: str
    dcs: dict = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    superuser_password: str = field(default_factory=lambda: secrets.token_hex(12))
    replication_password: str = field(default_factory=lambda: secrets.token_hex(12))
    etcd_port: int = field(default_factory=free_port)
    etcd_proc: subprocess.Popen | None = None
    owned: list[subprocess.Popen] = field(default_factory=list)
    groups: set[int] = field(default_factory=set)

    # --- processes -------------------------------------------------------------------------
    def _remember_group(self, pgid: int) -> None:
        self.groups.add(pgid)
        with open(self.run_dir / "pgids", "a") as handle:
            handle.write(f"{pgid}\n")

    def spawn(self, argv: list[str], log_name: str, *, as_user: bool = False, env: dict | None = None,
              cwd: Path | None = None) -> subprocess.Popen:
        log = open(self.run_dir / log_name, "ab")
        kwargs = {}
        if as_user:
            entry = pwd.getpwnam(self.os_user)
            kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
            env = {"HOME": entry.pw_dir, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", **(env or {})}
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env, cwd=cwd, **kwargs)
        log.close()
        self.owned.append(proc)
        self._remember_group(proc.pid)
        return proc

    def start_etcd(self) -> None:
        peer = free_port()
        data = self.run_dir / "etcd"
        self.etcd_proc = self.spawn([
            "etcd", "--name", "e1", "--data-dir", str(data),
            "--listen-client-urls", f"http://127.0.0.1:{self.etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{self.etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"e1=http://127.0.0.1:{peer}",
            "--initial-cluster-state", "new", "--initial-cluster-token", f"walletd-ha-{os.getpid()}",
        ], "etcd.log")
        wait_for(lambda: http_json(f"http://127.0.0.1:{self.etcd_port}/health")[1] == {"health": "true"},
                 20, "etcd to be healthy")

    def node_config(self, node: Node) -> dict:
        return {
            "scope": SCOPE,
            "name": node.name,
            "restapi": {"listen": f"127.0.0.1:{node.api_port}", "connect_address": f"127.0.0.1:{node.api_port}"},
            "etcd3": {"hosts": [f"127.0.0.1:{self.etcd_port}"]},
            "bootstrap": {"dcs": self.dcs, "initdb": [{"encoding": "UTF8"}, "data-checksums"]},
            "postgresql": {
                "listen": f"127.0.0.1:{node.pg_port}",
                "connect_address": f"127.0.0.1:{node.pg_port}",
                "data_dir": str(node.data_dir),
                "bin_dir": str(self.pg_bin),
                "pgpass": str(node.dir / "pgpass"),
                "authentication": {
                    "superuser": {"username": "postgres", "password": self.superuser_password},
                    "replication": {"username": "replicator", "password": self.replication_password},
                },
                "pg_hba": [
                    "local all all trust",
                    "host replication replicator 127.0.0.1/32 scram-sha-256",
                    "host all all 127.0.0.1/32 scram-sha-256",
                ],
                # our own socket directory: other PostgreSQL servers on this machine use /tmp
                "parameters": {"unix_socket_directories": str(node.dir)},
            },
        }

    def add_node(self, name: str) -> Node:
        node = Node(name, free_port(), free_port(), self.run_dir / name)
        node.dir.mkdir()
        entry = pwd.getpwnam(self.os_user)
        os.chown(node.dir, entry.pw_uid, entry.pw_gid)
        # JSON is YAML: Patroni reads this file as its YAML configuration.
        (node.dir / "patroni.yml").write_text(json.dumps(self.node_config(node), indent=2))
        self.nodes.append(node)
        return node

    def start_node(self, node: Node) -> None:
        node.proc = self.spawn([str(self.patroni_bin), str(node.dir / "patroni.yml")], f"{node.name}.log",
                               as_user=True, cwd=node.dir)

    # --- state -----------------------------------------------------------------------------
    def members(self) -> list[dict]:
        """The cluster as any live node's REST API sees it."""
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                status, body = http_json(f"http://127.0.0.1:{node.api_port}/cluster")
                if status == 200 and body:
                    return body.get("members", [])
        return []

    def node_named(self, name: str) -> Node:
        return next(node for node in self.nodes if node.name == name)

    def formed(self) -> tuple[Node, Node] | None:
        """(leader, synchronous standby) once the leader runs and the standby streams synchronously."""
        if all(node.proc.poll() is not None for node in self.nodes):
            raise RuntimeError("every Patroni node exited while the cluster formed (see pg*.log)")
        members = self.members()
        leader = [m for m in members if m.get("role") == "leader" and m.get("state") == "running"]
        sync = [m for m in members if m.get("role") == "sync_standby" and m.get("state") == "streaming"]
        if leader and sync:
            self.record_postmasters()
            return self.node_named(leader[0]["name"]), self.node_named(sync[0]["name"])
        return None

    def leader_among(self, nodes: list[Node]) -> Node | None:
        for node in nodes:
            status, _ = http_json(f"http://127.0.0.1:{node.api_port}/primary")
            if status == 200:
                return node
        return None

    def record_postmasters(self) -> None:
        for node in self.nodes:
            pid = node.postmaster_pid()
            if pid is not None:
                try:
                    pgid = os.getpgid(pid)
                except ProcessLookupError:
                    continue
                if pgid not in self.groups:
                    self._remember_group(pgid)

    def kill_node(self, node: Node) -> None:
        """The node dies at once: Patroni, its postmaster and every backend get SIGKILL together.
        (Each PostgreSQL backend leads its own process group, so killing the postmaster's group
        is not enough: a backend that cannot notice its postmaster died would live on.)"""
        os.killpg(node.proc.pid, signal.SIGKILL)
        kill_working_in(node.dir)
        node.proc.wait()

    def stop_all(self) -> None:
        """Stop everything this cluster started, whatever state it is in."""
        self.record_postmasters()
        for pgid in sorted(self.groups):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        kill_working_in(self.run_dir)  # PostgreSQL backends, whose working directory is their data
        for proc in self.owned:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    # --- walletd ---------------------------------------------------------------------------
    def walletd_url(self, nodes: list[Node], password: str) -> str:
        hosts = ",".join(f"127.0.0.1:{node.pg_port}" for node in nodes)
        return f"postgresql://walletd:{password}@{hosts}/walletd?target_session_attrs=read-write"

    def start_walletd(self, walletd_bin: Path, database_url: str, port: int, jwt_secret: str,
                      operator_key: str, extra_env: dict | None = None) -> subprocess.Popen:
        # An in-doubt commit can only be looked up once a new leader is up, ttl (20 s) and more
        # after the old one died: walletd must wait longer than that before giving up on it.
        # As in deploy/docker-compose.yml; set WALLETD_IN_DOUBT_SECONDS to try another value.
        env = {"WALLETD_IN_DOUBT_SECONDS": "30", **os.environ, "DATABASE_URL": database_url,
               "WALLETD_JWT_SECRET": jwt_secret, "WALLETD_SECRETS_KEY": HA_SECRETS_KEY,
               "WALLETD_OPERATOR_KEY": operator_key, "WALLETD_LOG_LEVEL": "info", "PYTHONMALLOC": "malloc",
               **(extra_env or {})}
        proc = self.spawn([str(walletd_bin), "serve", "--host", "127.0.0.1", "--port", str(port)], "walletd.log",
                          env=env)
        wait_for(lambda: proc.poll() is not None or http_json(f"http://127.0.0.1:{port}/ready")[0] == 200,
                 60, "walletd to be ready")
        if proc.poll() is not None:
            raise RuntimeError(f"walletd exited with {proc.returncode} at start (see walletd.log)")
        return proc


async def create_walletd_database(leader: Node, superuser_password: str, password: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(host="127.0.0.1", port=leader.pg_port, user="postgres",
                                 password=superuser_password, database="postgres")
    try:
        await conn.execute(f"CREATE ROLE walletd LOGIN PASSWORD '{password}'")
        await conn.execute("CREATE DATABASE walletd OWNER walletd")
    finally:
        await conn.close()
