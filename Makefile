# Two commands set everything up: `make run` and `make test`. Both build .venv from scratch.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export WALLETD_DATA_DIR ?= $(CURDIR)/.walletd

.PHONY: install run demo lint test test-ha test-citus test-docker test-monitoring test-restore bench bench-citus bench-smoke audit clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	# ReDoc's offline bundle only: the package's Django dependency is never imported.
	$(BIN)/pip install --quiet --no-deps 'drf-spectacular-sidecar>=2024.1'
	touch $(STAMP)

install: $(STAMP)

# PYTHONMALLOC=malloc: freed objects go back to glibc, which walletd trims once its actors go
# idle, so memory returns to the OS after a burst (pymalloc's arenas stay fragmented).
# Loopback only: a development server is not exposed to the network (the Dockerfile binds 0.0.0.0).
run: install
	PYTHONMALLOC=malloc $(BIN)/walletd serve --host 127.0.0.1 --port 8010

# Seeds a service user and two funded users on the walletd that `make run` started.
demo: install
	$(BIN)/walletd demo --base-url http://127.0.0.1:8010

# ruff (pycodestyle, pyflakes, import order, bugbear), mypy on walletd/, and no module in
# walletd/ or bench/ over 400 lines (a file that long does more than one job).
lint: install
	$(BIN)/ruff check walletd bench tests
	$(BIN)/mypy
	@find walletd bench -name '*.py' -exec wc -l {} + | awk '$$2 != "total" && $$1 > 400 {print "over 400 lines:", $$2, $$1; bad = 1} END {exit bad}'

test: install
	$(BIN)/python -m pytest -q

# The failover tests: etcd + two Patroni nodes on loopback, the leader SIGKILLed under load;
# then an in-doubt commit on a leader that dies next. Needs root on Debian (installs
# etcd-server, python3-venv, Patroni and a system user).
test-ha: install
	tests/ha/run.sh failover sync_gap

# The Citus suite: builds Citus from ../shared/vendor/citus-src.tar.gz once (cached in
# ~/.cache/walletd), starts a coordinator and two workers on loopback, runs tests/citus/ on them.
test-citus: install
	tests/citus/run.sh

# The Dockerfile built and run against a PostgreSQL, healthy, `walletd smoke`, stopped. Needs root
# on Debian (installs docker.io and debootstrap; builds the base image from Debian packages and
# caches it in ~/.cache/walletd). See docs/operations.md.
test-docker: install
	tests/docker/run.sh

# deploy/'s alert rules and dashboard: promtool check and unit tests, then a real Prometheus
# scraping a live walletd evaluates every dashboard query. Installs Debian's prometheus if missing.
test-monitoring: install
	tests/monitoring/run.sh

# Backup and restore with PostgreSQL's own tools: WAL archiving, pg_basebackup under load, the
# cluster destroyed, restored to the latest point and to an earlier instant; prints RPO and restore
# times (docs/operations.md).
test-restore: install
	$(BIN)/python -m tests.restore.run

bench: install
	$(BIN)/python -m bench.run

# The same runs on a Citus coordinator and two workers on this machine (figures in bench/results/citus.json).
# The big history wallet holds 100,000 rows instead of a million: the cluster's one sealer covers
# bulk-loaded entries at about 0.4 ms each, and a million would keep the run waiting half an hour.
bench-citus: install
	$(BIN)/python -m bench.run --citus "$$(tests/citus/build.sh)" --history-rows 100000 --out bench/results/citus.json

bench-smoke: install
	$(BIN)/python -m bench.run --smoke

audit: install
	$(BIN)/walletd audit

clean:
	rm -rf $(VENV) .pytest_cache
