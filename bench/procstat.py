"""CPU and memory of server processes, read from /proc (Linux only; the harness runs as the
same user as the servers it starts, or as root, so it can read every process it measures)."""

from __future__ import annotations

import os
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    return text[text.rindex(")") + 2:].split()


def cpu_seconds(pid: int, *, include_reaped_children: bool = False) -> float:
    """utime + stime of the process (and of its reaped children, when asked)."""
    fields = _stat_fields(pid)
    # After the comm field, index 0 is field 3 (state); utime=14, stime=15, cutime=16, cstime=17.
    ticks = int(fields[11]) + int(fields[12])
    if include_reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _TICK


def children(pid: int) -> list[int]:
    """Direct children of pid (via /proc/<pid>/task/*/children, falling back to a /proc scan)."""
    found: list[int] = []
    task_dir = Path(f"/proc/{pid}/task")
    try:
        for task in task_dir.iterdir():
            try:
                found.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:
                pass
        if found:
            return found
    except OSError:
        return []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat_fields(int(entry.name))[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                pass
    return found


def tree_cpu_seconds(root_pid: int | tuple[int, ...]) -> float:
    """CPU of a process tree such as PostgreSQL's: the postmaster itself, every exited backend it
    has reaped (cutime/cstime) and every live backend. Its delta over an interval is the CPU the
    whole server used in that interval, including backends that came and went. Several roots
    (the nodes of a Citus cluster): the sum of their trees."""
    if isinstance(root_pid, tuple):
        return sum(tree_cpu_seconds(pid) for pid in root_pid)
    total = cpu_seconds(root_pid, include_reaped_children=True)
    for child in children(root_pid):
        try:
            total += cpu_seconds(child)
        except (OSError, ValueError, IndexError):
            pass  # exited between the listing and the read: counted in the parent's cutime next time
    return total


def _status_kb(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes(pid: int) -> int | None:
    kb = _status_kb(pid, "VmRSS")
    return None if kb is None else kb * 1024


def tree_rss_bytes(pid: int) -> int | None:
    """RSS of pid plus its direct children (walletd's --workers processes)."""
    total = rss_bytes(pid)
    if total is None:
        return None
    for child in children(pid):
        total += rss_bytes(child) or 0
    return total


def peak_rss_bytes(pid: int) -> int | None:
    kb = _status_kb(pid, "VmHWM")
    return None if kb is None else kb * 1024


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0, writing 5 to clear_refs). False if refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False
