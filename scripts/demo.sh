#!/bin/sh
# demo.sh - the README's first command. Builds sluice, starts a throwaway
# PostgreSQL with sample data and a gateway on the embedded default
# configuration, runs a scripted agent through it and shows the audit trail.
# Everything runs in a temp dir on loopback and is stopped by PID at exit.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "installing what is missing and building"
scripts/deps.sh
if [ -f build/build.ninja ]; then meson setup --reconfigure build >/dev/null; else meson setup build >/dev/null; fi
ninja -C build sluice >/dev/null
SLUICE=$ROOT/build/sluice

T=$(mktemp -d /tmp/sluice-demo.XXXXXX)
chmod 755 "$T"
PG_PID=""; GW_PID=""
cleanup() {
    [ -n "$GW_PID" ] && kill -TERM "$GW_PID" 2>/dev/null && wait "$GW_PID" 2>/dev/null || true
    [ -n "$PG_PID" ] && kill -INT "$PG_PID" 2>/dev/null && wait "$PG_PID" 2>/dev/null || true
    rm -rf "$T"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PG_PORT=$(free_port); GW_PORT=$(free_port); ADMIN_PORT=$(free_port)
PGBIN=/usr/lib/postgresql/15/bin
RUNAS=""
if [ "$(id -u)" = 0 ]; then chown postgres "$T"; RUNAS="setpriv --reuid=postgres --regid=postgres --init-groups"; fi

say "starting a throwaway PostgreSQL 15 on 127.0.0.1:$PG_PORT"
$RUNAS "$PGBIN/initdb" -D "$T/pg" -U postgres -A trust --no-sync >/dev/null
cat >>"$T/pg/postgresql.conf" <<CONF
listen_addresses='127.0.0.1'
port=$PG_PORT
unix_socket_directories='$T'
password_encryption='scram-sha-256'
fsync=off
CONF
printf 'local all all trust\nhost all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n' >"$T/pg/pg_hba.conf"
$RUNAS "$PGBIN/postgres" -D "$T/pg" >"$T/pg.log" 2>&1 &
PG_PID=$!
for _ in $(seq 50); do "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" && break; sleep 0.1; done
DEMO_PW=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
psql -X -q -h "$T" -p "$PG_PORT" -U postgres -c "CREATE ROLE demo LOGIN PASSWORD '$DEMO_PW'" -c "CREATE DATABASE demo OWNER demo"
psql -X -q -h "$T" -p "$PG_PORT" -U postgres -d demo <<'SQL'
CREATE TABLE customers (id int PRIMARY KEY, name text, email text, ssn text, card_number text, api_token text);
INSERT INTO customers VALUES
 (1, 'Ada Lovelace', 'ada@example.com',   '123-45-6789', '4111 1111 1111 1111', 'tok_live_9f8e7d6c5b4a'),
 (2, 'Alan Turing',  'alan@example.org',  '234-56-7890', '5500-0000-0000-0004', 'tok_live_1a2b3c4d5e6f');
CREATE TABLE orders (id serial PRIMARY KEY, customer int REFERENCES customers, amount numeric);
INSERT INTO orders (customer, amount) SELECT 1 + g % 2, g * 10 FROM generate_series(1, 42) g;
ALTER TABLE customers OWNER TO demo; ALTER TABLE orders OWNER TO demo;
SQL

say "starting sluice on the embedded default configuration (127.0.0.1:$GW_PORT)"
# The embedded default, with this run's ports and data dir.
"$SLUICE" config default | sed "s/127.0.0.1:5432/127.0.0.1:$PG_PORT/" >"$T/sluice.yaml"
export SLUICE_DATA_DIR="$T/var" SLUICE_PG_LISTEN="127.0.0.1:$GW_PORT" SLUICE_ADMIN_LISTEN="127.0.0.1:$ADMIN_PORT"
"$SLUICE" --config "$T/sluice.yaml" config check
"$SLUICE" --config "$T/sluice.yaml" token init
SLUICE_DEMO_PASSWORD=$DEMO_PW "$SLUICE" --config "$T/sluice.yaml" serve >"$T/sluice.log" 2>&1 &
GW_PID=$!
for _ in $(seq 50); do python3 -c "import socket; socket.create_connection(('127.0.0.1', $GW_PORT), 0.2)" 2>/dev/null && break; sleep 0.1; done

say "minting the agent's token (sub agent-1, group ai-agents) with the dev issuer"
TOKEN=$("$SLUICE" --config "$T/sluice.yaml" token mint --sub agent-1 --groups ai-agents --ttl 15m)
echo "token: $(printf %s "$TOKEN" | cut -c1-40)... (the agent never sees the database password)"
TRACE=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')

say "running the scripted agent (a dba approves its first DELETE and denies the second)"
DBA_TOKEN=$("$SLUICE" --config "$T/sluice.yaml" token mint --sub dba-1 --groups dba --ttl 15m)
/usr/bin/python3 -u examples/agent/agent.py 127.0.0.1 "$GW_PORT" demo "$TOKEN" "$TRACE" &
AGENT_PID=$!
# The approver: waits for each held DELETE and decides it with the CLI.
for verdict in approve deny; do
    id=""
    for _ in $(seq 100); do
        id=$(SLUICE_TOKEN=$DBA_TOKEN "$SLUICE" --config "$T/sluice.yaml" review list --status pending \
             2>/dev/null | awk 'NF && $2 == "pending" {print $1; exit}')
        [ -n "$id" ] && break
        sleep 0.1
    done
    [ -n "$id" ] || { echo "no review appeared"; break; }
    sleep 0.5
    if [ "$verdict" = approve ]; then
        echo "dba-1> sluice review approve $id --reason 'test order, fine'"
        SLUICE_TOKEN=$DBA_TOKEN "$SLUICE" --config "$T/sluice.yaml" review approve "$id" --reason "test order, fine" >/dev/null
    else
        echo "dba-1> sluice review deny $id --reason 'not a whole customer'"
        SLUICE_TOKEN=$DBA_TOKEN "$SLUICE" --config "$T/sluice.yaml" review deny "$id" --reason "not a whole customer" >/dev/null
    fi
done
wait "$AGENT_PID"

say "the audit trail for trace $TRACE"
kill -TERM "$GW_PID"; wait "$GW_PID" || true; GW_PID=""
"$SLUICE" --config "$T/sluice.yaml" audit export --format jsonl --trace "$TRACE" | python3 -c '
import json, sys
for line in sys.stdin:
    r = json.loads(line); d = r["data"]
    if r["type"] == "request":
        print("  #%-4d %-8s %-6s %-28s %s" % (r["seq"], d.get("subject"), d["decision"], d.get("kind"), d["text"][:70]))
        if d.get("message"): print("        reason: %s" % d["message"])
    elif r["type"].startswith("review_"):
        print("  #%-4d %-15s %s %s" % (r["seq"], r["type"], d.get("decided_by") or d.get("approver") or "", d.get("reason") or ""))
'

say "verifying the hash chain and its signed checkpoints"
"$SLUICE" --config "$T/sluice.yaml" audit verify

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
- Every statement, decision, approval and result is in a hash-chained, signed audit trail, tagged
  with the agent's trace id $TRACE, and 'sluice audit verify' proves it untouched.
TXT
