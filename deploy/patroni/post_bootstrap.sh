#!/bin/sh
# Run by Patroni once, on the node that initialises the cluster, with a superuser connection
# URL as $1: walletd's role and database. walletd applies its schema itself at start.
set -eu
psql "$1" -v ON_ERROR_STOP=1 -v pw="$WALLETD_DB_PASSWORD" <<'SQL'
CREATE ROLE walletd LOGIN PASSWORD :'pw';
CREATE DATABASE walletd OWNER walletd;
SQL
