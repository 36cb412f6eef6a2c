#!/usr/bin/env bash
# `make test-monitoring`: deploy/'s Prometheus configuration, alert rules and Grafana dashboard,
# checked with Debian's prometheus package (installed if missing, which needs root):
#   promtool check config / check rules, promtool test rules (a unit test per alert), then
#   tests/monitoring/live_dashboard.py: a real Prometheus on loopback scrapes a live walletd and
#   evaluates every dashboard query (each must return data) and every alert rule.
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
    [ "$(id -u)" = 0 ] || { echo "needs Debian's prometheus package: run as root to install it" >&2; exit 2; }
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus
fi
echo "=== promtool check config, check rules"
promtool check config deploy/prometheus/prometheus.yml
promtool check rules deploy/prometheus/walletd-alerts.yml
echo "=== promtool test rules"
(cd tests/monitoring && promtool test rules walletd-alerts.test.yml)
echo "=== tests/monitoring/live_dashboard.py"
.venv/bin/python -m pytest -q -p no:randomly tests/monitoring/live_dashboard.py
