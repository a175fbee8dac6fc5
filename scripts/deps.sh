#!/bin/sh
# deps.sh - installs every build and test dependency from Debian, idempotently:
# packages already present are left alone and apt-get runs only when needed.
set -eu
PKGS="meson ninja-build pkg-config gcc clang libclang-rt-14-dev
 libuv1-dev libssl-dev libpg-query-dev libprotobuf-c-dev libhyperscan-dev libjansson-dev
 libcyaml-dev libssh-dev libcurl4-openssl-dev libsqlite3-dev libpq-dev libcmocka-dev node-llhttp
 libpcre2-dev postgresql-15 postgresql-contrib postgresql-client-15 pgbouncer haproxy
 python3-pytest python3-psycopg2 python3-requests python3-paramiko python3-cryptography
 sqlite3 curl valgrind"
missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
if [ -z "$missing" ]; then
    exit 0
fi
echo "deps.sh: installing:$missing" >&2
if [ "$(id -u)" != 0 ]; then
    echo "deps.sh: not root; run: sudo apt-get install -y$missing" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
