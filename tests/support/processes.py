"""Processes the test harnesses start and must be able to stop, whatever became of their parents."""

from __future__ import annotations

import os
import signal
from pathlib import Path


def kill_working_in(directory: Path) -> list[int]:
    """SIGKILL every process whose working directory is inside `directory`: every PostgreSQL
    process works in its data directory (and Patroni in its node's folder), so this finds a node's
    processes even after their parent died and they were handed to init."""
    root = os.path.realpath(directory)
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd").removesuffix(" (deleted)")
        except OSError:
            continue
        if cwd == root or cwd.startswith(root + os.sep):
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
            except ProcessLookupError:
                pass
    return killed
