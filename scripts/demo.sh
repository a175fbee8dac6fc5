#!/bin/sh
# demo.sh - the README's first command. Builds sluice, starts a throwaway
# PostgreSQL with sample data and a gateway on the embedded default
# configuration, runs a scripted agent through it, lets a dba approve one
# held DELETE and deny another, and shows and verifies the audit trail.
# Everything runs in a temp dir on free loopback ports and is stopped by PID
# at exit. The demo checks its own story: if anything it claims did not
# happen, it says so and exits 1.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() { printf '\n\033[1;31mdemo failed: %s\033[0m\n' "$*" >&2; exit 1; }

say "installing what is missing and building"
scripts/deps.sh
if [ -f build/build.ninja ]; then
    meson setup --reconfigure build >/dev/null
else
    meson setup build >/dev/null
fi
ninja -C build sluice >/dev/null
SLUICE=$ROOT/build/sluice

T=$(mktemp -d /tmp/sluice-demo.XXXXXX)
chmod 755 "$T"
PG_PID=""; GW_PID=""; AGENT_PID=""
stop() {  # pid signal: signal it and wait for it, if it is still ours
    if [ -n "$1" ] && kill "-$2" "$1" 2>/dev/null; then
        wait "$1" 2>/dev/null || true
    fi
}
cleanup() {
    stop "$AGENT_PID" TERM
    stop "$GW_PID" TERM
    stop "$PG_PID" INT
    rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() {  # port pid log
    for _ in $(seq 100); do
        /usr/bin/python3 -c "import socket; socket.create_connection(('127.0.0.1', $1), 0.2)" \
            2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || { tail -20 "$3" >&2; die "process $2 exited"; }
        sleep 0.1
    done
    tail -20 "$3" >&2
    die "nothing listens on port $1"
}
PG_PORT=$(free_port); GW_PORT=$(free_port); ADMIN_PORT=$(free_port)
PGBIN=/usr/lib/postgresql/15/bin
RUNAS=""
if [ "$(id -u)" = 0 ]; then
    # PostgreSQL refuses to run as root.
    chown postgres "$T"
    RUNAS="setpriv --reuid=postgres --regid=postgres --init-groups"
fi

say "starting a throwaway PostgreSQL 15 on 127.0.0.1:$PG_PORT"
$RUNAS "$PGBIN/initdb" -D "$T/pg" -U postgres -A trust --no-sync >/dev/null
cat >>"$T/pg/postgresql.conf" <<CONF
listen_addresses='127.0.0.1'
port=$PG_PORT
unix_socket_directories='$T'
password_encryption='scram-sha-256'
fsync=off
CONF
printf 'local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n' >"$T/pg/pg_hba.conf"
$RUNAS "$PGBIN/postgres" -D "$T/pg" >"$T/pg.log" 2>&1 &
PG_PID=$!
wait_port "$PG_PORT" "$PG_PID" "$T/pg.log"
for _ in $(seq 50); do "$PGBIN/pg_isready" -q -h "$T" -p "$PG_PORT" && break; sleep 0.1; done
# The upstream password: random, given to sluice only, never to the agent.
DEMO_PW=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
psql -X -q -h "$T" -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 \
    -c "CREATE ROLE demo LOGIN PASSWORD '$DEMO_PW'" -c "CREATE DATABASE demo OWNER demo"
psql -X -q -h "$T" -p "$PG_PORT" -U postgres -d demo -v ON_ERROR_STOP=1 <<'SQL'
CREATE TABLE customers (id int PRIMARY KEY, name text, email text, ssn text, card_number text, api_token text);
INSERT INTO customers VALUES
 (1, 'Ada Lovelace', 'ada@example.com',   '123-45-6789', '4111 1111 1111 1111', 'tok_live_9f8e7d6c5b4a'),
 (2, 'Alan Turing',  'alan@example.org',  '234-56-7890', '5500-0000-0000-0004', 'tok_live_1a2b3c4d5e6f');
CREATE TABLE orders (id serial PRIMARY KEY, customer int REFERENCES customers, amount numeric);
INSERT INTO orders (customer, amount) SELECT 1 + g % 2, g * 10 FROM generate_series(1, 42) g;
ALTER TABLE customers OWNER TO demo; ALTER TABLE orders OWNER TO demo;
SQL
echo "demo database: customers (names, e-mails, SSNs, card numbers, API tokens) and 42 orders"

say "starting sluice on the embedded default configuration (127.0.0.1:$GW_PORT)"
# The embedded default (sluice config default) points its "demo" connection at
# 127.0.0.1:5432; this run's server is on a free port instead. Data dir and
# listeners come from the environment overrides.
"$SLUICE" config default | sed "s/127.0.0.1:5432/127.0.0.1:$PG_PORT/" >"$T/sluice.yaml"
export SLUICE_DATA_DIR="$T/var" SLUICE_PG_LISTEN="127.0.0.1:$GW_PORT" \
    SLUICE_ADMIN_LISTEN="127.0.0.1:$ADMIN_PORT"
sl() { "$SLUICE" --config "$T/sluice.yaml" "$@"; }
sl config check
sl token init
SLUICE_DEMO_PASSWORD=$DEMO_PW "$SLUICE" --config "$T/sluice.yaml" serve >"$T/sluice.log" 2>&1 &
GW_PID=$!
wait_port "$GW_PORT" "$GW_PID" "$T/sluice.log"

say "minting the agent's token (sub agent-1, group ai-agents) with the dev issuer"
TOKEN=$(sl token mint --sub agent-1 --groups ai-agents --ttl 15m)
DBA_TOKEN=$(sl token mint --sub dba-1 --groups dba --ttl 15m)
echo "token: $(printf %s "$TOKEN" | cut -c1-40)... (the agent never sees the database password)"
TRACE=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')

say "running the scripted agent (a dba approves its first DELETE and denies the second)"
: >"$T/agent.out"
/usr/bin/python3 -u examples/agent/agent.py 127.0.0.1 "$GW_PORT" demo "$TOKEN" "$TRACE" \
    >"$T/agent.out" 2>&1 &
AGENT_PID=$!
tail -n +1 -f --pid="$AGENT_PID" "$T/agent.out" &
TAIL_PID=$!
# The approver, a human with the dba group: waits for each held DELETE and
# decides it with the CLI.
for verdict in approve deny; do
    id=""
    for _ in $(seq 150); do
        id=$(SLUICE_TOKEN=$DBA_TOKEN sl review list --status pending 2>/dev/null |
             awk 'NF && $2 == "pending" {print $1; exit}')
        [ -n "$id" ] && break
        kill -0 "$AGENT_PID" 2>/dev/null || break
        sleep 0.1
    done
    [ -n "$id" ] || die "the agent's DELETE was not held for review"
    sleep 0.5
    if [ "$verdict" = approve ]; then
        echo "dba-1> sluice review approve $id --reason 'test order, fine'"
        SLUICE_TOKEN=$DBA_TOKEN sl review approve "$id" --reason "test order, fine" >/dev/null
    else
        echo "dba-1> sluice review deny $id --reason 'not a whole customer'"
        SLUICE_TOKEN=$DBA_TOKEN sl review deny "$id" --reason "not a whole customer" >/dev/null
    fi
done
wait "$AGENT_PID" || die "the agent failed"
AGENT_PID=""
wait "$TAIL_PID" || true
sleep 0.2

# A clean shutdown writes the final signed checkpoint.
kill -TERM "$GW_PID"
wait "$GW_PID" || die "sluice did not shut down cleanly: $(tail -5 "$T/sluice.log")"
GW_PID=""

say "verifying the hash chain and its signed checkpoints"
sl audit verify || die "the audit trail does not verify"

say "the audit trail for trace $TRACE (sluice audit replay --trace)"
sl audit replay --trace "$TRACE" || die "the audit trail cannot be replayed"
sl audit export --format jsonl --trace "$TRACE" >"$T/trail.jsonl"

# The story below is checked, not assumed.
/usr/bin/python3 - "$T/trail.jsonl" "$T/agent.out" "$DEMO_PW" <<'PY' || die "see above"
import json, sys
trail = [json.loads(l) for l in open(sys.argv[1])]
agent = open(sys.argv[2]).read()
reqs = [(r["data"]["text"].split(" /*")[0], r["data"]["decision"]) for r in trail
        if r["type"] == "request"]
checks = {
    "the agent read rows": "'Ada Lovelace'" in agent,
    "no raw SSN, card number, e-mail or token reached the agent": not any(
        v in agent for v in ("123-45-6789", "4111 1111 1111 1111", "ada@example.com",
                             "tok_live_9f8e7d6c5b4a")),
    "the database password never reached the agent": sys.argv[3] not in agent,
    "DROP TABLE was blocked with SQLSTATE 42501": ("DROP TABLE orders", "block") in reqs
        and "[42501]" in agent,
    "the approved DELETE ran": ("DELETE FROM orders WHERE id = 42", "allow") in reqs
        and "1 row(s) affected" in agent,
    "the denied DELETE did not": ("DELETE FROM orders WHERE customer = 2", "block") in reqs,
    "the review decisions are in the trail": {"review_approved", "review_denied"}
        <= {r["type"] for r in trail},
    "every record carries the agent's trace id": all(r["trace_id"] for r in trail) and trail,
}
bad = [k for k, ok in checks.items() if not ok]
for k in bad:
    print("NOT TRUE: " + k)
sys.exit(1 if bad else 0)
PY

say "what happened"
cat <<TXT
- The agent logged in to sluice with its own short-lived token; sluice logged in to
  PostgreSQL itself with the vaulted password (SCRAM-SHA-256). The agent never had it.
- Its SELECTs ran, but the SSNs, card numbers and e-mail addresses it read were masked in
  transit (***-**-6789, **** **** **** 1111, a**@example.com) and the api_token column was
  masked by name: the raw values never reached the agent.
- Its DROP TABLE was refused before it reached the database, with a
  PostgreSQL error (SQLSTATE 42501), and the session kept working.
- Its DELETEs were held in flight until a human decided: dba-1 approved the first (it then
  ran, exactly as held) and denied the second (the agent got the reason as an error).
- Every statement, decision, approval and result is in a hash-chained, signed audit trail,
  tagged with the agent's trace id $TRACE,
  and 'sluice audit verify' proves it untouched.
TXT
