#!/usr/bin/env bash
# `make test-citus`: builds Citus (cached, tests/citus/build.sh), then runs the Citus suite on a
# throwaway cluster (a coordinator and two workers on loopback ports, started by the suite's
# session fixture in tests/citus/conftest.py). Whatever happens, every PostgreSQL process working
# in the run's directory is stopped at the end. As root, PostgreSQL runs as the system user
# walletd-citus (created on first use).
#   usage: tests/citus/run.sh [pytest arguments]   (default: every tests/citus/citus_*.py)
#   WALLETD_CITUS_KEEP=1 keeps the run's directory (node logs) after a passing run.
set -euo pipefail
cd "$(dirname "$0")/../.."
INSTALL=$(tests/citus/build.sh)
RUN_DIR=$(mktemp -d /tmp/walletd-citus.XXXXXX)
chmod 755 "$RUN_DIR"
cleanup() {
    status=$?
    .venv/bin/python -c 'import sys; from pathlib import Path; from tests.support.processes import kill_working_in; kill_working_in(Path(sys.argv[1]))' "$RUN_DIR" || true
    if [ "$status" = 0 ] && [ -z "${WALLETD_CITUS_KEEP:-}" ]; then
        rm -rf "$RUN_DIR"
    else  # keep the node logs for a look, drop the data
        find "$RUN_DIR" -maxdepth 3 -type d -name base -path '*/cluster/*' -exec rm -rf {} + 2>/dev/null || true
        echo "tests/citus/run.sh: logs kept in $RUN_DIR" >&2
    fi
    exit "$status"
}
trap cleanup EXIT
[ $# -gt 0 ] || set -- tests/citus/citus_*.py
WALLETD_CITUS_INSTALL=$INSTALL WALLETD_CITUS_RUN_DIR=$RUN_DIR .venv/bin/python -m pytest -q --durations=10 "$@"
