#!/bin/sh
# pg-gateway.sh -- runs ../shared/bench/pg-bench.sh (or $PG_BENCH) with sluice
# as the extra target: direct, pgbouncer, haproxy and sluice in one run, so
# the ratios are taken under the same machine noise.
#
#   sh bench/pg-gateway.sh                 policy on, strict audit
#   MASK=1 sh bench/pg-gateway.sh          also a masking policy (issue 3)
#   MODES="large" DURATION=10 sh bench/pg-gateway.sh
#
# Builds build-release/ (optimised with link-time optimisation, no
# sanitizers: how sluice is built for production, README), writes a config into a
# temp dir whose connection "bench" points at the cluster pg-bench.sh makes
# ($BACKEND_HOST:$BACKEND_PORT, trust auth as the bench user), mints a dev
# token and hands pg-bench.sh a GATEWAY_CMD that starts sluice.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PG_BENCH=${PG_BENCH:-$ROOT/../shared/bench/pg-bench.sh}
[ -f "$PG_BENCH" ] || PG_BENCH=/work/shared/bench/pg-bench.sh
BUILD=$ROOT/build-release
if [ -d "$BUILD" ]; then
    meson setup --reconfigure "$BUILD" -Dbuildtype=release -Db_lto=true >/dev/null
else
    meson setup "$BUILD" -Dbuildtype=release -Db_lto=true >/dev/null
fi
ninja -C "$BUILD" sluice >/dev/null
TMPD=$(mktemp -d /tmp/sluice-bench.XXXXXX)
chmod 755 "$TMPD"
trap 'rm -rf "$TMPD"' EXIT INT TERM
MASK=${MASK:-0}
MASKCFG=""
if [ "$MASK" = 1 ]; then
    MASKCFG='    mask:
      columns: [ssn, "*password*", "*token*", card_number]
      detectors: [ssn, credit_card, email, aws_access_key, jwt, private_key, secret_assignment]'
fi
cat >"$TMPD/sluice.yaml" <<YAML
gateway:
  data_dir: $TMPD/var
  workers: ${SLUICE_WORKERS:-2}
  log_level: warn
  postgres: { listen: "127.0.0.1:\${GATEWAY_PORT}" }
audit:
  store: sqlite:$TMPD/var/audit.db
  mode: ${AUDIT_MODE:-strict}
connections:
  - name: bench
    type: postgres
    target: "\${BACKEND_HOST}:\${BACKEND_PORT}"
    database: bench
    user: postgres
policies:
  - name: bench-agents
    match: { groups: [bench] }
    rules:
      - { action: block, sql: [drop, truncate, alter_system, copy_program], message: "destructive statements are not allowed" }
      - { action: allow, sql: [select, insert, update, delete, set, transaction, utility, ddl] }
$MASKCFG
YAML
# The config names ports through placeholders filled in when the gateway starts.
"$BUILD/sluice" --config /dev/null version >/dev/null 2>&1 || true
mkdir -p "$TMPD/var"
cat >"$TMPD/start.sh" <<SH
#!/bin/sh
sed -e "s/\\\${GATEWAY_PORT}/\$GATEWAY_PORT/" -e "s/\\\${BACKEND_HOST}/\$BACKEND_HOST/" \
    -e "s/\\\${BACKEND_PORT}/\$BACKEND_PORT/" "$TMPD/sluice.yaml" >"$TMPD/run.yaml"
exec "$BUILD/sluice" serve --config "$TMPD/run.yaml"
SH
chmod +x "$TMPD/start.sh"
sed -e 's/${GATEWAY_PORT}/6543/' -e 's/${BACKEND_HOST}/127.0.0.1/' -e 's/${BACKEND_PORT}/25432/' \
    "$TMPD/sluice.yaml" >"$TMPD/mint.yaml"
"$BUILD/sluice" --config "$TMPD/mint.yaml" token init >/dev/null
TOKEN=$("$BUILD/sluice" --config "$TMPD/mint.yaml" token mint --sub bench-agent --groups bench --ttl 2h)
GATEWAY_NAME=sluice GATEWAY_PORT=${GATEWAY_PORT:-6543} GATEWAY_CMD="$TMPD/start.sh" \
    GATEWAY_PGUSER=bench GATEWAY_PGDATABASE=bench GATEWAY_PGPASSWORD="$TOKEN" \
    sh "$PG_BENCH"
