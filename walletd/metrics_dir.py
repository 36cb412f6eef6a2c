"""The metrics directory of `walletd serve --workers N` (see walletd/metrics.py).

Separate from walletd.metrics because prometheus_client picks its storage (memory, or files in
PROMETHEUS_MULTIPROC_DIR) when it is first imported: the directory must be chosen before that.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare(workers: int) -> Path | None:
    """With more than one worker, give the processes a shared directory (inherited through the
    environment), removed when this process exits. A directory the operator set is emptied of
    stale files instead (prometheus_client requires a clean start)."""
    configured = os.environ.get(MULTIPROC_ENV)
    if configured:
        for stale in Path(configured).glob("*.db"):
            stale.unlink()
        return None
    if workers <= 1:
        return None  # one process: values in memory
    created = Path(tempfile.mkdtemp(prefix="walletd-metrics-"))
    os.environ[MULTIPROC_ENV] = str(created)
    atexit.register(remove, created)  # however serve ends (a port in use, a failed migration, Ctrl-C)
    return created


def process_exited(pid: int) -> None:
    """Drop a stopped worker's live gauges (its counters stay in the totals)."""
    if MULTIPROC_ENV in os.environ:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def remove(created: Path | None) -> None:
    if created is not None:
        shutil.rmtree(created, ignore_errors=True)
