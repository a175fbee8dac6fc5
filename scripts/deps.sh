#!/bin/sh
# deps.sh - installs every build, test and benchmark dependency from Debian 12,
# idempotently: packages already present (or provided by an installed package,
# e.g. npm by NodeSource's nodejs) are left alone; apt-get runs only when
# something is missing. Needs root for that; otherwise prints the command.
set -eu
PKGS="meson ninja-build pkg-config gcc clang libclang-rt-14-dev
 libuv1-dev libssl-dev libpg-query-dev libprotobuf-c-dev libhyperscan-dev libjansson-dev
 libcyaml-dev libssh-dev libcurl4-openssl-dev libsqlite3-dev libpq-dev libcmocka-dev node-llhttp
 libpcre2-dev postgresql-15 postgresql-contrib postgresql-client-15 pgbouncer haproxy nginx
 wrk hyperfine valgrind python3 python3-pytest python3-psycopg2 python3-requests
 python3-paramiko python3-cryptography python3-sqlalchemy python3-asyncpg python3-psycopg openssh-server openssh-client openssl curl sqlite3
 nodejs npm"

# Every installed package name and every name an installed package provides.
have=$(dpkg-query -W -f='${Status}|${Package}|${Provides}\n' 2>/dev/null |
    awk -F'|' '$1 ~ /install ok installed/ {
        print $2; n = split($3, p, /, */)
        for (i = 1; i <= n; i++) { sub(/ .*/, "", p[i]); if (p[i] != "") print p[i] } }' |
    sort -u)
missing=""
for p in $PKGS; do
    printf '%s\n' "$have" | grep -qxF "$p" || missing="$missing $p"
done

# node-postgres for the end-to-end tests (npm registry), pinned by its lock file.
node_deps() {
    dir=$(cd "$(dirname "$0")/.." && pwd)/tests/e2e/node
    [ -f "$dir/node_modules/pg/package.json" ] && return 0
    command -v npm >/dev/null 2>&1 || { echo "deps.sh: npm missing" >&2; return 1; }
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) ||
        { echo "deps.sh: npm ci in $dir failed" >&2; return 1; }
}

# Only the node-postgres tests need it: a failure here is reported, and
# those tests fail, but nothing else is held up.
if [ -z "$missing" ]; then
    node_deps || true
    exit 0
fi

echo "deps.sh: missing:$missing" >&2
if [ "$(id -u)" != 0 ]; then
    echo "deps.sh: not root; run: sudo apt-get update && sudo apt-get install -y$missing" >&2
    echo "deps.sh: (or run this script as root: sudo scripts/deps.sh)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
echo "deps.sh: installed:$missing" >&2
node_deps || true
