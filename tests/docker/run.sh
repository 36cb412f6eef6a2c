#!/usr/bin/env bash
# `make test-docker`: build the project's Dockerfile and run the image (tests/docker/check_image.py),
# from nothing but Debian's mirrors and PyPI, as root on Debian bookworm:
#   1. Debian's docker.io and debootstrap, installed if missing;
#   2. a Docker daemon, started if none answers (and stopped again at the end if started here);
#   3. the Dockerfile's base image (FROM), made with debootstrap when the daemon lacks it: bookworm
#      minbase with python3, python3-venv, passwd and ca-certificates, trusting this machine's CA
#      bundle (system store and pip), cached as a tarball outside git so the next run imports it
#      in seconds; an image of that name that this script did not make is used as it is;
#   4. docker build (pip inside the build reaches PyPI as this machine does: its proxy and index
#      settings are passed as build arguments when set);
#   5. the image run against a PostgreSQL on the host, until healthy, `walletd smoke`, stopped.
#   usage: tests/docker/run.sh   (WALLETD_CACHE_DIR: the base-image cache, default ~/.cache/walletd)
set -euo pipefail
cd "$(dirname "$0")/../.."
IMAGE=${WALLETD_TEST_IMAGE:-walletd:test}
CACHE=${WALLETD_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/walletd}
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PACKAGES=python3,python3-venv,passwd,ca-certificates
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
BASE_RECIPE=1  # bump when the recipe below changes: the cached tarball is then rebuilt

[ "$(id -u)" = 0 ] || { echo "tests/docker/run.sh must run as root (it installs packages and runs dockerd)" >&2; exit 2; }
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

RUN_DIR=$(mktemp -d /tmp/walletd-docker.XXXXXX)
chmod 755 "$RUN_DIR"
DOCKERD_PID=
cleanup() {
    status=$?
    if [ -n "$DOCKERD_PID" ]; then
        kill -TERM "$DOCKERD_PID" 2>/dev/null || true
        wait "$DOCKERD_PID" 2>/dev/null || true
    fi
    if [ "$status" = 0 ]; then rm -rf "$RUN_DIR"; else echo "logs kept in $RUN_DIR" >&2; fi
}
trap cleanup EXIT
trap 'exit 143' INT TERM

if ! docker info >/dev/null 2>&1; then
    echo "=== starting dockerd (log: $RUN_DIR/dockerd.log)"
    dockerd >"$RUN_DIR/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    for _ in $(seq 120); do
        docker info >/dev/null 2>&1 && break
        kill -0 "$DOCKERD_PID" 2>/dev/null || { tail -20 "$RUN_DIR/dockerd.log" >&2; exit 1; }
        sleep 0.5
    done
    docker info >/dev/null
fi

BASE=$(sed -n 's/^FROM[[:space:]]\+\([^[:space:]]\+\).*/\1/p' Dockerfile | head -1)
KEY=$( { echo "$BASE_RECIPE $SUITE $PACKAGES"; cat "$CA_BUNDLE"; } | sha256sum | cut -c1-16)
LABEL=org.walletd.test-base
have=$(docker image inspect -f "{{index .Config.Labels \"$LABEL\"}}" "$BASE" 2>/dev/null || echo absent)
if [ "$have" = "<no value>" ]; then
    echo "=== $BASE: an image this script did not make; used as it is"
elif [ "$have" != "$KEY" ]; then
    TARBALL="$CACHE/base-$SUITE-$KEY.tar"
    if [ ! -f "$TARBALL" ]; then
        echo "=== debootstrap $SUITE minbase + $PACKAGES (cached as $TARBALL)"
        ROOTFS="$RUN_DIR/rootfs"
        debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR" >"$RUN_DIR/debootstrap.log" 2>&1 ||
            { tail -20 "$RUN_DIR/debootstrap.log" >&2; exit 1; }
        # What a slim image leaves out: package caches and lists, documentation, translations.
        rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/usr/share/man/* \
            "$ROOTFS"/usr/share/info/* "$ROOTFS"/usr/share/locale/*
        find "$ROOTFS/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
        # Trust what this machine trusts: a TLS-inspecting proxy on the way to PyPI has its CA there.
        cp "$CA_BUNDLE" "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
        printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$ROOTFS/etc/pip.conf"
        mkdir -p "$CACHE"
        tar -C "$ROOTFS" -cf "$TARBALL.partial" .
        mv "$TARBALL.partial" "$TARBALL"
        rm -rf "$ROOTFS"
    fi
    echo "=== docker import $TARBALL as $BASE"
    docker import --change "LABEL $LABEL=$KEY" --change 'ENV LANG=C.UTF-8' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["python3"]' "$TARBALL" "$BASE" >/dev/null
fi

build_args=()
for name in HTTP_PROXY HTTPS_PROXY NO_PROXY http_proxy https_proxy no_proxy PIP_INDEX_URL; do
    if [ -n "${!name:-}" ]; then build_args+=(--build-arg "$name=${!name}"); fi
done
previous=$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)
echo "=== docker build -t $IMAGE (log: $RUN_DIR/build.log)"
started=$SECONDS
docker build --tag "$IMAGE" "${build_args[@]}" . >"$RUN_DIR/build.log" 2>&1 || { tail -30 "$RUN_DIR/build.log" >&2; exit 1; }
echo "built in $((SECONDS - started)) s"
current=$(docker image inspect -f '{{.Id}}' "$IMAGE")
if [ -n "$previous" ] && [ "$previous" != "$current" ]; then
    docker image rm "$previous" >/dev/null 2>&1 || true  # the last run's image: keep one, not one per run
fi

echo "=== tests/docker/check_image.py"
.venv/bin/python -m tests.docker.check_image --image "$IMAGE" --run-dir "$RUN_DIR"
