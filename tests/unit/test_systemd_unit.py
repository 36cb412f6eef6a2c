"""deploy/systemd/walletd.service, the unit docs/operations.md gives: systemd accepts it, and what
it runs is what walletd's own command line accepts, with a stop timeout longer than walletd's
drain and no restart loop on the exits no restart can fix."""

from __future__ import annotations

import configparser
import getpass
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from walletd.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "systemd" / "walletd.service"
# walletd serve drains for up to 30 s; with --workers its parent waits up to 35 s for each worker.
WORKERS_DRAIN_SECONDS = 35


def service() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser["Service"]


def walletd_args(command: str) -> list[str]:
    program, *args = shlex.split(command)
    assert program == "/opt/walletd/bin/walletd", program
    return args


def test_the_unit_runs_commands_walletd_accepts():
    unit = service()
    check = build_parser().parse_args(walletd_args(unit["ExecStartPre"]))
    assert check.command == "config"
    serve = build_parser().parse_args(walletd_args(unit["ExecStart"]))
    assert (serve.command, serve.host, serve.port) == ("serve", "0.0.0.0", 8010) and serve.workers >= 1
    assert unit["User"] == "walletd" and unit["Environment"] == "PYTHONMALLOC=malloc"


def test_a_stop_waits_longer_than_walletd_drains_and_hopeless_exits_do_not_loop():
    unit = service()
    assert int(unit["TimeoutStopSec"]) > WORKERS_DRAIN_SECONDS
    assert unit["KillSignal"] == "SIGTERM"
    # walletd.cli.main: 2 = a setting refused, 3 = a released migration changed.
    assert set(unit["RestartPreventExitStatus"].split()) == {"2", "3"}


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_accepts_the_unit(tmp_path):
    """Verified with this checkout's walletd in place of /opt/walletd and the current user in
    place of `walletd` (verify checks that both exist); systemd reports what it cannot parse."""
    walletd = Path(sys.executable).with_name("walletd")
    text = UNIT.read_text().replace("/opt/walletd/bin/walletd", str(walletd))
    text = text.replace("User=walletd", f"User={getpass.getuser()}").replace("Group=walletd", "")
    text = text.replace("EnvironmentFile=/etc/walletd/walletd.env", "EnvironmentFile=-/etc/walletd/walletd.env")
    copy = tmp_path / "walletd.service"
    copy.write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
