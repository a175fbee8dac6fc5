"""The PostgreSQL path end to end: real clients through sluice to a real
PostgreSQL 15, policy, identity refusals, audit and abuse."""
import base64
import hashlib
import hmac
import json
import os
import signal
import socket
import sqlite3
import struct
import subprocess
import shutil
import tempfile
import threading
import time

import psycopg2
import pytest

from conftest import (APP_PASSWORD, MD5_PASSWORD, SELECT_ONLY, SLUICE, free_port, make_cert,
                      orders_conn, wait_for)
import pgwire


def run_psql(gw, sql, token=None, conn="orders"):
    env = dict(os.environ, PGPASSWORD=token or gw.mint(), PGSSLMODE="disable")
    return subprocess.run(["psql", "-X", "-h", "127.0.0.1", "-p", str(gw.port), "-U", conn,
                           "-d", conn, "-At", "-c", sql], env=env, capture_output=True,
                          text=True, timeout=30)


# ------------------------------------------------------------------ clients

def test_psql_select_and_block(gw):
    # the seed rows (ids 1..100); other tests may add rows of their own
    r = run_psql(gw, "SELECT count(*) FROM orders WHERE id BETWEEN 1 AND 100")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "100"
    r = run_psql(gw, "DROP TABLE orders")
    assert r.returncode != 0
    assert "destructive statements are not allowed" in r.stderr


def test_psycopg2_extended_copy_notify_tx(gw):
    c = gw.connect()
    cur = c.cursor()
    cur.execute("SELECT name FROM customers WHERE id = %s", (2,))
    assert cur.fetchone() == ("Bob",)
    # COPY both directions
    import io
    buf = io.StringIO()
    cur.copy_expert("COPY (SELECT id, amount FROM orders WHERE id <= 3 ORDER BY id) TO STDOUT", buf)
    assert buf.getvalue().splitlines() == ["1\t1", "2\t2", "3\t3"]
    cur.copy_expert("COPY orders (customer, amount) FROM STDIN",
                    io.StringIO("1\t1000\n2\t2000\n"))
    cur.execute("SELECT count(*) FROM orders WHERE amount >= 1000")
    assert cur.fetchone()[0] >= 2
    c.rollback()
    # transactions
    cur.execute("INSERT INTO orders (customer, amount) VALUES (1, 77777)")
    c.rollback()
    cur.execute("SELECT count(*) FROM orders WHERE amount = 77777")
    assert cur.fetchone()[0] == 0
    c.commit()
    # server-side cursor
    named = c.cursor(name="big")
    named.execute("SELECT g FROM generate_series(1, 5000) g")
    assert len(named.fetchmany(1000)) == 1000
    assert sum(1 for _ in named) == 4000
    named.close()
    c.commit()
    # LISTEN/NOTIFY through the gateway
    c.autocommit = True
    cur.execute("LISTEN chan")
    c2 = gw.connect()
    c2.autocommit = True
    c2.cursor().execute("NOTIFY chan, 'hello'")
    deadline = time.time() + 5
    while not c.notifies and time.time() < deadline:
        c.poll()
        time.sleep(0.05)
    assert c.notifies and c.notifies[0].payload == "hello"
    c.close()
    c2.close()


@pytest.mark.parametrize("conn,pw", [("orders_md5", MD5_PASSWORD), ("orders_trust", None)])
def test_upstream_md5_and_trust(gw, conn, pw):
    c = gw.connect(conn)
    cur = c.cursor()
    cur.execute("SELECT current_user")
    assert cur.fetchone()[0] in ("md5user", "trustuser")
    c.close()


def test_client_never_sees_upstream_password(gw):
    cn = pgwire.Conn(gw.port)
    msgs = cn.login("orders", gw.mint())
    assert any(t == b"S" for t, b in msgs)  # ParameterStatus is relayed
    for sql in ("SELECT current_setting('application_name'), 1/0",  # an error
                "ROLLBACK",                                           # a WARNING notice
                "SHOW ALL"):                                          # every setting
        cn.send(pgwire.query(sql))
        msgs += cn.until_ready()
    cn.close()
    assert any(t == b"N" for t, b in msgs) and any(t == b"E" for t, b in msgs)
    raw = b"".join(t + b for t, b in msgs)
    assert APP_PASSWORD.encode() not in raw
    # and it is in no audit record and no log line either
    assert APP_PASSWORD not in json.dumps(gw.export())
    assert APP_PASSWORD not in gw.logtext()


def test_upstream_login_failure_does_not_leak(gateway_factory, pg):
    wrong = "wrong-Secret-pw-4242"
    gw = gateway_factory(connections=orders_conn(pg, password_env="TEST_WRONG_PW"),
                         env={"TEST_WRONG_PW": wrong})
    cn = pgwire.Conn(gw.port)
    msgs = cn.login("orders", gw.mint())
    if msgs and msgs[-1][0] == b"Z":  # an adapter that logs in upstream lazily
        cn.send(pgwire.query("SELECT 1"))
        msgs += cn.until_ready()
    cn.close()
    errs = pgwire.errors(msgs)
    assert errs, msgs
    assert not any(t == b"D" for t, b in msgs)
    raw = b"".join(t + b for t, b in msgs)
    assert wrong.encode() not in raw and APP_PASSWORD.encode() not in raw
    assert wrong not in json.dumps(gw.export())
    assert wrong not in gw.logtext()


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench(gw, pg, mode):
    env = dict(os.environ, PGPASSWORD=APP_PASSWORD)
    subprocess.run(["pgbench", "-i", "-q", "-s", "1", "-h", "127.0.0.1", "-p", str(pg.port),
                    "-U", "app", "orders"], env=env, check=True, capture_output=True)
    env = dict(os.environ, PGPASSWORD=gw.mint(), PGSSLMODE="disable")
    r = subprocess.run(["pgbench", "-n", "-T", "3", "-c", "4", "-j", "2", "-M", mode, "-h",
                        "127.0.0.1", "-p", str(gw.port), "-U", "orders", "orders"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "number of failed transactions: 0" in r.stdout
    tps = float(r.stdout.split("tps = ")[1].split()[0])
    assert tps > 50


@pytest.mark.parametrize("meta", [r"\d", r"\d+ orders", r"\dt", r"\df", r"\dn", r"\l", r"\du",
                                  r"\dx", r"\di", r"\dp", r"\sf now"])
def test_psql_describe_commands_under_a_select_only_policy(gateway_factory, meta):
    gw = gateway_factory(policies=SELECT_ONLY)
    r = run_psql(gw, meta)
    assert r.returncode == 0 and not r.stderr, (meta, r.stderr)


DUMP_POLICIES = """
policies:
  - name: backup
    match: { groups: [backup] }
    rules:
      - { action: allow, sql: [select, copy_to, set, transaction, utility] }
"""


def test_pg_dump_under_a_read_only_policy(gateway_factory, tmp_path):
    # pg_dump reads with COPY ... TO, SETs, a read-only snapshot (shared
    # with its parallel workers) and, since CVE-2024-7348's fix,
    # set_config(name, ...) FROM pg_settings WHERE name = '...': a setting
    # named by a column, but pinned to one constant by the WHERE clause, so
    # no grant. The same form naming role stays a grant and is refused.
    gw = gateway_factory(policies=DUMP_POLICIES)
    env = dict(os.environ, PGPASSWORD=gw.mint(sub="backup-1", groups="backup"),
               PGSSLMODE="disable")
    base = ["-h", "127.0.0.1", "-p", str(gw.port), "-U", "orders", "orders"]
    r = subprocess.run(["pg_dump"] + base, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "CREATE TABLE public.orders" in r.stdout and "COPY public.orders" in r.stdout
    out = tmp_path / "dir"
    r = subprocess.run(["pg_dump", "-Fd", "-j", "2", "-f", str(out)] + base, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["pg_restore", "-l", str(out)], capture_output=True, text=True)
    assert "TABLE DATA public orders" in r.stdout, r.stdout
    r = run_psql(gw, "SELECT set_config(name, 'app', false) FROM pg_settings "
                     "WHERE name = 'role'", token=env["PGPASSWORD"])
    assert r.returncode != 0 and "statement kind grant is not allowed" in r.stderr, r.stderr
    kinds = [x["data"].get("kind") for x in gw.export() if x["type"] == "request" and
             "restrict_nonsystem_relation_kind" in x["data"].get("text", "")]
    assert kinds and all(k == "select,set" for k in kinds), kinds


# ------------------------------------------------------------------ identity

def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def forge(header, payload, sig=b""):
    return "%s.%s.%s" % (b64u(json.dumps(header).encode()), b64u(json.dumps(payload).encode()),
                         b64u(sig))


def claims(**kw):
    now = int(time.time())
    c = {"iss": "sluice-dev", "aud": "sluice", "sub": "mallory", "groups": ["dba"],
         "iat": now, "exp": now + 600}
    c.update(kw)
    return c


def bad_tokens(gw):
    jwks = json.load(open(os.path.join(gw.data, "dev-jwks.json")))
    kid = jwks["keys"][0]["kid"]
    pub_raw = base64.urlsafe_b64decode(jwks["keys"][0]["x"] + "==")
    tokens = {
        "expired": gw.mint(ttl="-2h"),
        "wrong audience": gw.mint(aud="someone-else"),
        "wrong issuer": gw.mint(iss="https://evil.example"),
        "alg none": forge({"alg": "none", "kid": kid}, claims()),
        "malformed": "not-a-token",
        "garbage segments": "aaa.bbb.ccc",
    }
    for name, secret in (("hs256 with public key", pub_raw),
                         ("hs256 with jwks json", json.dumps(jwks).encode())):
        h = {"alg": "HS256", "kid": kid, "typ": "JWT"}
        signing = "%s.%s" % (b64u(json.dumps(h).encode()), b64u(json.dumps(claims()).encode()))
        sig = hmac.new(secret, signing.encode(), hashlib.sha256).digest()
        tokens[name] = signing + "." + b64u(sig)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    other = Ed25519PrivateKey.generate()
    for name, k in (("unknown key id", "nope"), ("known kid, wrong key", kid)):
        h = {"alg": "EdDSA", "kid": k}
        signing = "%s.%s" % (b64u(json.dumps(h).encode()), b64u(json.dumps(claims()).encode()))
        tokens[name] = signing + "." + b64u(other.sign(signing.encode()))
    good = gw.mint(groups="dba")
    head, body, sig = good.split(".")
    tampered = json.loads(base64.urlsafe_b64decode(body + "=="))
    tampered["sub"] = "root"
    tokens["tampered payload"] = "%s.%s.%s" % (head, b64u(json.dumps(tampered).encode()), sig)
    return tokens


def test_bad_tokens_refused_and_audited(gw):
    for name, tok in bad_tokens(gw).items():
        with pytest.raises(psycopg2.OperationalError) as ei:
            gw.connect(token=tok)
        msg = str(ei.value)
        assert "token authentication failed" in msg, (name, msg)
        cn = pgwire.Conn(gw.port)
        errs = pgwire.errors(cn.login("orders", tok))
        cn.close()
        assert errs and errs[0]["C"] in ("28P01", "28000"), (name, errs)
        assert errs[0]["S"] == "FATAL"
    time.sleep(0.3)
    fails = [r for r in gw.export() if r["type"] == "auth_failure"]
    assert len(fails) >= 2 * len(bad_tokens(gw)) - 2
    reasons = {r["data"]["reason"] for r in fails}
    assert "token expired" in reasons and "audience mismatch" in reasons
    assert "algorithm not allowed" in reasons


def test_unknown_connection_and_startup_params(gw):
    cn = pgwire.Conn(gw.port)
    errs = pgwire.errors(cn.login("nosuchconn", gw.mint()))
    assert errs[0]["C"] == "3D000"
    cn = pgwire.Conn(gw.port)
    cn.send(pgwire.startup("orders", "orders", {"replication": "database"}))
    t, body = cn.read_msg()
    assert t == b"E" and pgwire.fields(body)["C"] == "28000"


# ------------------------------------------------------------------ policy

BLOCKED = [
    "DROP TABLE orders",
    "drop table orders",
    "SELECT 1; DROP TABLE orders",
    "select 1;/* hi */DrOp/**/TABLE orders",
    "WITH x AS (SELECT 1) SELECT * FROM x; TRUNCATE orders",
    "TRUNCATE orders",
    "ALTER SYSTEM SET work_mem = '1MB'",
    "COPY orders FROM PROGRAM 'id'",
    "COPY (SELECT 1) TO PROGRAM 'cat > /tmp/x'",
    "-- comment\nDROP TABLE orders",
    "SeLeCt 1; TrUnCaTe orders",
    "/* leading */ ALTER /* mid */ SYSTEM SET work_mem = '1MB'",
    "WITH x AS (SELECT pg_read_file('/etc/passwd') AS f) SELECT f FROM x",
    "WITH x AS (SELECT 1 AS a) SELECT a FROM x WHERE pg_terminate_backend(1)",
    "PREPARE p AS DELETE FROM orders; EXECUTE p",
    "EXPLAIN ANALYZE DROP TABLE orders",
    "SELECT pg_read_file('/etc/passwd')",
    "SELECT pg_catalog.pg_read_file('/etc/passwd')",
    "DO $$ BEGIN EXECUTE 'DROP TABLE orders'; END $$",
    "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "SELEC 1",
    "EXECUTE never_prepared",
    "SET ROLE postgres",
    "SELECT set_config('role', 'postgres', false)",
    "SELECT set_config('session_authorization', 'postgres', false)",
]


def test_newer_protocol_minor_and_options_are_negotiated_down(gw):
    # a PostgreSQL 18 client asks for 3.2 and may send _pq_ options: sluice
    # answers NegotiateProtocolVersion (3.0, the options it does not know)
    # before asking for the token, and the session then works as 3.0
    cn = pgwire.Conn(gw.port)
    body = struct.pack("!I", 196610) + b"user\0orders\0_pq_.fancy\0on\0\0"
    cn.send(struct.pack("!I", len(body) + 4) + body)
    t, b = cn.read_msg()
    assert t == b"v", (t, b)
    assert struct.unpack("!II", b[:8]) == (196608, 1) and b[8:] == b"_pq_.fancy\0"
    t, b = cn.read_msg()
    assert t == b"R" and struct.unpack("!I", b[:4])[0] == 3
    cn.send(pgwire.msg(b"p", pgwire.cstr(gw.mint())))
    msgs = cn.until_ready()
    assert not pgwire.errors(msgs), msgs
    keys = [b for t, b in msgs if t == b"K"]
    assert len(keys) == 1 and len(keys[0]) == 8  # a 3.0 BackendKeyData
    cn.send(pgwire.query("SELECT 41 + 1"))
    assert any(t == b"D" and b.endswith(b"42") for t, b in cn.until_ready())
    cn.close()


def test_set_config_of_a_plain_setting_is_a_set(gw):
    # set_config() naming role/session_authorization is blocked (above);
    # naming an ordinary setting is a `set`, allowed like SET itself
    c = gw.connect()
    cur = c.cursor()
    cur.execute("SELECT set_config('search_path', 'public', false)")
    assert cur.fetchone()[0] == "public"
    c.close()


@pytest.mark.parametrize("sql", BLOCKED)
def test_blocked_simple_protocol_session_survives(gw, sql):
    c = gw.connect()
    c.autocommit = True
    cur = c.cursor()
    with pytest.raises(psycopg2.Error) as ei:
        cur.execute(sql)
    assert ei.value.pgcode == "42501", (sql, ei.value.pgcode, str(ei.value))
    cur.execute("SELECT count(*) FROM orders")
    assert cur.fetchone()[0] >= 100
    c.close()
    c = gw.connect(token=gw.mint(groups="dba"))
    c.cursor().execute("SELECT to_regclass('orders') IS NOT NULL")
    c.close()


def test_blocked_via_parse_then_session_usable(gw):
    cn = pgwire.Conn(gw.port)
    cn.login("orders", gw.mint())
    cn.send(pgwire.parse("s1", "DROP TABLE orders") + pgwire.bind("", "s1") +
            pgwire.execute() + pgwire.SYNC)
    got = cn.until_ready()
    errs = pgwire.errors(got)
    assert errs and errs[0]["C"] == "42501" and "destructive" in errs[0]["M"]
    assert got[-1][0] == b"Z"
    # an allowed statement in the same session, same pipeline style
    cn.send(pgwire.parse("", "SELECT count(*) FROM orders") + pgwire.bind("", "") +
            pgwire.execute() + pgwire.SYNC)
    got = cn.until_ready()
    assert not pgwire.errors(got)
    rows = [b for t, b in got if t == b"D"]
    assert rows
    cn.close()


def raw_session(gw):
    cn = pgwire.Conn(gw.port)
    got = cn.login("orders", gw.mint())
    assert got[-1] == (b"Z", b"I"), got
    return cn


def extended(sql, params=(), stmt=""):
    return pgwire.parse(stmt, sql) + pgwire.bind("", stmt, params) + pgwire.execute()


def test_extended_protocol_parameters_raw(gw):
    cn = raw_session(gw)
    cn.send(extended("SELECT $1::int + 1", ["41"]) + pgwire.SYNC)
    got = cn.until_ready()
    assert [b for t, b in got if t == b"D"] == [b"\x00\x01\x00\x00\x00\x0242"]
    # a named statement bound twice with different parameters
    cn.send(pgwire.parse("byid", "SELECT name FROM customers WHERE id = $1") +
            pgwire.bind("", "byid", ["2"]) + pgwire.execute() +
            pgwire.bind("", "byid", ["1"]) + pgwire.execute() + pgwire.SYNC)
    got = cn.until_ready()
    assert [b[6:] for t, b in got if t == b"D"] == [b"Bob", b"Ada"]
    # a dangerous function hidden behind a parameter is still refused
    cn.send(extended("SELECT pg_terminate_backend($1::int)", ["1"]) + pgwire.SYNC)
    got = cn.until_ready()
    errs = pgwire.errors(got)
    assert len(errs) == 1 and errs[0]["C"] == "42501" and errs[0]["S"] == "ERROR"
    assert got[-1] == (b"Z", b"I")
    cn.send(pgwire.TERMINATE)
    cn.close()


def test_extended_block_skips_rest_of_pipeline_until_sync(gw):
    cn = raw_session(gw)
    cn.send(extended("DROP TABLE orders") + extended("SELECT 42") + pgwire.SYNC)
    got = cn.until_ready()
    errs = pgwire.errors(got)
    assert len(errs) == 1 and errs[0]["C"] == "42501", got
    # like PostgreSQL after an error: everything up to Sync is discarded
    assert not any(t in (b"D", b"C") for t, b in got), got
    assert got[-1] == (b"Z", b"I")
    cn.send(extended("SELECT 42") + pgwire.SYNC)
    got = cn.until_ready()
    assert [b for t, b in got if t == b"D"] == [b"\x00\x01\x00\x00\x00\x0242"]
    cn.close()


def test_extended_block_in_transaction_block(gw):
    cn = raw_session(gw)
    cn.send(pgwire.query("BEGIN"))
    assert cn.until_ready()[-1] == (b"Z", b"T")
    cn.send(extended("INSERT INTO orders (customer, amount) VALUES (1, 616161)") + pgwire.SYNC)
    assert cn.until_ready()[-1] == (b"Z", b"T")
    cn.send(extended("TRUNCATE orders") + pgwire.SYNC)
    got = cn.until_ready()
    assert pgwire.errors(got)[0]["C"] == "42501"
    assert got[-1] == (b"Z", b"E")  # the transaction is now failed
    cn.send(extended("SELECT 1") + pgwire.SYNC)
    got = cn.until_ready()
    assert pgwire.errors(got)[0]["C"] == "25P02" and got[-1] == (b"Z", b"E")
    cn.send(pgwire.query("ROLLBACK"))
    assert cn.until_ready()[-1] == (b"Z", b"I")
    cn.send(pgwire.query("SELECT count(*) FROM orders WHERE amount = 616161"))
    got = cn.until_ready()
    assert [b for t, b in got if t == b"D"] == [b"\x00\x01\x00\x00\x00\x010"]
    cn.close()


@pytest.mark.parametrize("style", ["simple", "pipeline"])
def test_block_in_implicit_transaction_commits_nothing(gw, pg, style):
    # PostgreSQL runs a multi-statement Query, and a pipeline up to Sync, as one
    # implicit transaction: an error anywhere rolls back what ran before it.
    # A blocked statement must leave the database exactly as a real error would.
    amount = {"simple": 717171, "pipeline": 717172}[style]
    ins = "INSERT INTO orders (customer, amount) VALUES (1, %d)" % amount
    cn = raw_session(gw)
    if style == "simple":
        cn.send(pgwire.query(ins + "; DROP TABLE orders"))
    else:
        cn.send(extended(ins) + extended("DROP TABLE orders") + pgwire.SYNC)
    got = cn.until_ready()
    assert pgwire.errors(got)[0]["C"] == "42501" and got[-1] == (b"Z", b"I")
    cn.close()
    assert pg.scalar("orders", "SELECT count(*) FROM orders WHERE amount = %d" % amount) == "0"


def test_block_aborts_transaction_like_a_real_error(gw):
    c = gw.connect()
    cur = c.cursor()
    cur.execute("INSERT INTO orders (customer, amount) VALUES (1, 424242)")
    with pytest.raises(psycopg2.Error) as ei:
        cur.execute("TRUNCATE orders")
    assert ei.value.pgcode == "42501"
    with pytest.raises(psycopg2.Error) as ei:
        cur.execute("SELECT 1")
    assert ei.value.pgcode == "25P02"
    c.rollback()
    cur.execute("SELECT count(*) FROM orders WHERE amount = 424242")
    assert cur.fetchone()[0] == 0
    c.close()


def test_extended_params_blocked_and_allowed(gw):
    c = gw.connect()
    cur = c.cursor()
    cur.execute("SELECT %s::int + 1", (41,))
    assert cur.fetchone()[0] == 42
    with pytest.raises(psycopg2.Error) as ei:
        cur.execute("SELECT pg_terminate_backend(%s)", (1,))
    assert ei.value.pgcode == "42501"
    c.close()


def test_default_deny_without_policy(gw):
    c = gw.connect(token=gw.mint(groups="nobody"))
    with pytest.raises(psycopg2.Error) as ei:
        c.cursor().execute("SELECT 1")
    assert ei.value.pgcode == "42501"
    assert "no policy grants" in str(ei.value)


def test_lexing_settings_are_tracked(gw):
    c = gw.connect()
    c.autocommit = True
    cur = c.cursor()
    cur.execute("SET standard_conforming_strings = off")
    with pytest.raises(psycopg2.Error) as ei:
        cur.execute("SELECT 'a\\'; DROP TABLE orders; --'")
    assert ei.value.pgcode == "42501"
    cur.execute("SET standard_conforming_strings = on")
    cur.execute("SELECT 'a\\b'")
    assert cur.fetchone()[0] == "a\\b"
    c.close()


# ------------------------------------------------------------------ audit

def test_audit_records_trace_and_verify(gw):
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    c = gw.connect(application_name="agent")
    cur = c.cursor()
    cur.execute("SELECT id FROM customers /*traceparent='00-%s-00f067aa0ba902b7-01'*/" % trace)
    c.commit()
    c.close()
    c = gw.connect(application_name="00-%s-1111111111111111-01" % ("a" * 32))
    c.cursor().execute("SELECT 1")
    c.close()
    time.sleep(0.3)
    recs = gw.export()
    reqs = [r for r in recs if r["type"] == "request" and r["trace_id"] == trace]
    assert reqs and reqs[0]["data"]["decision"] == "allow"
    assert reqs[0]["span_id"] == "00f067aa0ba902b7"
    assert any(r["trace_id"] == "a" * 32 for r in recs if r["type"] == "request")
    assert any(r["type"] == "session_open" for r in recs)
    res = [r for r in recs if r["type"] == "result" and r["trace_id"] == trace]
    assert res and res[0]["data"]["tag"] == "SELECT 2" and res[0]["data"]["rows"] == 2
    v = gw.verify()
    assert v.returncode == 0, v.stderr


def tamper(gw, sql):
    db = sqlite3.connect(os.path.join(gw.data, "audit.db"))
    db.executescript(sql)
    db.commit()
    db.close()


@pytest.mark.parametrize("edit,expect", [
    ("UPDATE records SET data = replace(data, 'SELECT', 'select') WHERE seq = 5", "seq 5"),
    ("UPDATE records SET ts = ts + 1 WHERE seq = 4", "seq 4"),
    ("DELETE FROM records WHERE seq = 6", "seq 6"),
    ("UPDATE records SET seq = -1 WHERE seq = 5; UPDATE records SET seq = 5 WHERE seq = 6;"
     "UPDATE records SET seq = 6 WHERE seq = -1", "seq 5"),
    # (a hash may already start with 00: always change its first byte)
    ("UPDATE records SET hash = CASE WHEN substr(hash, 1, 2) = '00' THEN 'ff' ELSE '00' END"
     " || substr(hash, 3) WHERE seq = 3", "seq 3"),
])
def test_audit_tamper_detected(gateway_factory, edit, expect):
    gw = gateway_factory()
    c = gw.connect()
    cur = c.cursor()
    for i in range(5):
        cur.execute("SELECT %d FROM orders LIMIT 1" % i)
    c.commit()
    c.close()
    assert gw.stop() == 0
    assert gw.verify().returncode == 0
    tamper(gw, edit)
    v = gw.verify()
    assert v.returncode == 1
    assert expect in v.stderr, v.stderr


def test_audit_replay_session_and_trace(gateway_factory):
    """sluice audit replay: a session as a transcript an auditor reads (who,
    from where, each statement with its decision and result, the close),
    or everything done under one trace id across sessions; verified first,
    and what clients wrote cannot drive the auditor's terminal."""
    gw = gateway_factory()
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    tp = "00-%s-00f067aa0ba902b7-01" % trace
    c = gw.connect(application_name=tp)
    c.autocommit = True
    cur = c.cursor()
    cur.execute("SELECT id FROM orders WHERE id < 3 ORDER BY id")
    with pytest.raises(psycopg2.Error):
        cur.execute("DROP TABLE orders")
    with pytest.raises(psycopg2.Error):
        cur.execute("SELECT * FROM no_such_table")
    # an escape sequence that would clear the screen, and a second line
    cur.execute("SELECT 1 /* \x1b[2J\x1b]0;owned\x07 */ AS a,\n 2 AS b")
    c.close()
    c = gw.connect(application_name=tp)  # a second session, same trace
    c.cursor().execute("SELECT 42")
    c.close()
    recs = gw.export()
    sid = next(r["session"] for r in recs if r["type"] == "session_open")
    r = gw.run("audit", "replay", "--session", sid)
    out = r.stdout
    assert r.returncode == 0, r.stderr
    assert out.startswith("audit trail verified:"), out
    assert "session opened by agent-1" in out and "connection orders (postgres)" in out, out
    assert "#1 allow select" in out and "SELECT id FROM orders WHERE id < 3" in out, out
    assert "#1 -> SELECT 2, 2 rows" in out, out
    assert "#2 block ddl,drop (agents/agents#1)" in out and "destructive statements are not allowed" in out, out
    assert "#3 -> ERROR 42P01 relation \"no_such_table\" does not exist," in out, out
    assert "session closed (client terminated)" in out and "SELECT 42" not in out, out
    assert "\x1b" not in out and "\x07" not in out, repr(out)
    assert "\\x1b[2J" in out, out
    lines = out.splitlines()
    i = next(k for k, ln in enumerate(lines) if "\\x1b[2J" in ln)
    assert lines[i + 1].strip() == "2 AS b", lines[i:i + 2]  # the second line, indented
    # everything under the trace id, both sessions
    r = gw.run("audit", "replay", "--trace", trace)
    assert r.returncode == 0 and "SELECT 42" in r.stdout and "#2 block ddl,drop" in r.stdout
    assert r.stdout.count("session opened by") == 2, r.stdout
    # tail is terminal-safe too
    t = gw.run("audit", "tail", "-n", "100").stdout
    assert "\x1b" not in t and "\\x1b[2J" in t, repr(t)
    # a trail that does not verify is not replayed (unless asked)
    assert gw.stop() == 0
    tamper(gw, "UPDATE records SET data = replace(data, 'DROP TABLE', 'drop table') "
               "WHERE type = 'request' AND data LIKE '%DROP TABLE%'")
    r = gw.run("audit", "replay", "--session", sid, check=False)
    assert r.returncode == 1 and "audit verify FAILED" in r.stderr and r.stdout == "", r
    r = gw.run("audit", "replay", "--session", sid, "--no-verify", check=False)
    assert r.returncode == 0 and "NOT verified" in r.stdout and "drop table" in r.stdout
    r = gw.run("audit", "replay", "--session", "0000000000000000", "--no-verify", check=False)
    assert r.returncode == 1 and "no records" in r.stderr
    r = gw.run("audit", "replay", check=False)
    assert r.returncode == 2


def test_audit_truncated_tail_detected(gateway_factory):
    gw = gateway_factory()
    c = gw.connect()
    for i in range(3):
        c.cursor().execute("SELECT 1")
    c.close()
    assert gw.stop() == 0
    db = sqlite3.connect(os.path.join(gw.data, "audit.db"))
    last = db.execute("SELECT max(seq) FROM records").fetchone()[0]
    db.close()
    tamper(gw, "DELETE FROM records WHERE seq >= %d; DELETE FROM checkpoints;" % (last - 1))
    v = gw.verify()
    assert v.returncode == 1 and "truncated" in v.stderr, v.stderr


def test_audit_tail_cut_while_running_detected(gateway_factory):
    # the gateway keeps running (no shutdown checkpoint): within
    # checkpoint_interval (1 s) of going quiet its last records are signed
    gw = gateway_factory()
    c = gw.connect()
    for i in range(3):
        c.cursor().execute("SELECT %d" % i)
    c.close()
    db = sqlite3.connect(os.path.join(gw.data, "audit.db"))
    last = 0
    for _ in range(50):
        time.sleep(0.1)
        last = db.execute("SELECT max(seq) FROM records").fetchone()[0] or 0
        cp = db.execute("SELECT max(seq) FROM checkpoints").fetchone()[0] or 0
        if last and cp == last:
            break
    db.close()
    assert last and cp == last, (last, cp)
    tamper(gw, "DELETE FROM records WHERE seq = %d" % last)
    v = gw.verify()
    assert v.returncode == 1 and "truncated" in v.stderr, v.stderr


def test_locking_reads_need_update_not_just_select(gateway_factory):
    # SELECT ... FOR UPDATE / SHARE holds row locks that stall writers until
    # the transaction ends (PostgreSQL asks UPDATE privilege for it): a
    # select-only agent is refused, and its session and plain reads go on.
    gw = gateway_factory(policies=SELECT_ONLY)
    c = gw.connect()
    c.autocommit = True  # select-only: no BEGIN either
    cur = c.cursor()
    for q in ("SELECT * FROM orders WHERE id = 1 FOR UPDATE",
              "SELECT id FROM orders FOR SHARE SKIP LOCKED",
              "SELECT * FROM (SELECT id FROM orders FOR KEY SHARE) s"):
        with pytest.raises(psycopg2.Error) as ex:
            cur.execute(q)
        assert ex.value.pgcode == "42501" and "update" in ex.value.pgerror, ex.value.pgerror
    cur.execute("SELECT count(*) FROM orders")
    assert cur.fetchone()[0] >= 1
    c.close()
    # a policy that allows updates runs it (the default test policy)
    gw2 = gateway_factory()
    c2 = gw2.connect()
    cur2 = c2.cursor()
    cur2.execute("SELECT id FROM orders ORDER BY id LIMIT 1 FOR UPDATE")
    assert cur2.fetchone() is not None
    c2.rollback()
    c2.close()
    kinds = [r["data"].get("kind") for r in gw.export() if r["type"] == "request"]
    assert "select,update" in kinds, kinds


OUTAGE_WORDS = """
policies:
  - name: agents
    match: { groups: [ai-agents] }
    rules:
      - { action: block, sql: [delete], message: "sluice: the audit trail is unavailable, request refused" }
      - { action: allow, sql: [select] }
"""


def test_a_block_rule_worded_like_an_outage_is_still_a_policy_refusal(gateway_factory):
    # The SQLSTATE says what happened, not what the words look like: a rule
    # may word its message any way, even as sluice's own outage text.
    gw = gateway_factory(policies=OUTAGE_WORDS)
    c = gw.connect()
    c.autocommit = True
    cur = c.cursor()
    with pytest.raises(psycopg2.Error) as ex:
        cur.execute("DELETE FROM orders WHERE id = 1")
    assert ex.value.pgcode == "42501", (ex.value.pgcode, ex.value.pgerror)
    assert "by policy" in ex.value.pgerror and "retry" not in ex.value.pgerror
    cur.execute("SELECT 1")
    assert cur.fetchone()[0] == 1
    c.close()
    # the same through Parse (extended protocol)
    cn = pgwire.Conn(gw.port)
    assert cn.login("orders", gw.mint())[-1] == (b"Z", b"I")
    cn.send(pgwire.parse("", "DELETE FROM orders WHERE id = 1") + pgwire.SYNC)
    errs = pgwire.errors(cn.until_ready())
    assert [e["C"] for e in errs] == ["42501"], errs
    cn.close()


def test_audit_store_outage_refuses_then_recovers(gw):
    # Another process holds the store's write lock: sluice keeps journaling
    # until the store has refused a batch (its busy timeout), then refuses
    # statements with an outage error (58000, not a policy refusal) and the
    # session stays usable; once the lock is gone statements run again, and
    # every statement that ran is in the trail, which verifies.
    c = gw.connect()
    c.autocommit = True
    cur = c.cursor()
    ran, refused = [], []
    h = sqlite3.connect(os.path.join(gw.data, "audit.db"), timeout=10)
    h.execute("BEGIN EXCLUSIVE")
    try:
        for i in range(200):
            try:
                cur.execute("SELECT %d AS outage_probe" % (1000 + i))
                assert cur.fetchone()[0] == 1000 + i
                ran.append(1000 + i)
            except psycopg2.Error as e:
                refused.append(e)
                if len(refused) == 2:
                    break
            time.sleep(0.1)
        assert len(refused) == 2, "never refused while the store was locked"
        for e in refused:
            assert e.pgcode == "58000", (e.pgcode, e.pgerror)
            assert "audit trail is unavailable" in e.pgerror
            assert "by policy" not in e.pgerror and "retry" in e.pgerror
        # extended protocol gets the same refusal and its session survives
        with pytest.raises(psycopg2.Error) as ex:
            cur.execute("SELECT %s::int AS outage_probe", (5,))
        assert ex.value.pgcode == "58000", ex.value.pgerror
    finally:
        h.execute("ROLLBACK")
        h.close()
    for _ in range(100):
        try:
            cur.execute("SELECT 2000 AS outage_probe")
            break
        except psycopg2.Error as e:
            assert e.pgcode == "58000", e.pgerror
            time.sleep(0.1)
    assert cur.fetchone()[0] == 2000
    ran.append(2000)
    c2 = gw.connect()
    c2.cursor().execute("SELECT 1")
    c2.close()
    c.close()
    texts = [r["data"].get("text", "") for r in gw.export() if r["type"] == "request"]
    for n in ran:
        assert any("SELECT %d AS outage_probe" % n in t for t in texts), n
    v = gw.verify()
    assert v.returncode == 0, v.stderr
    # the operator reads why, once, and when it is over
    log = gw.logtext()
    assert log.count("cannot write to") == 1 and "database is locked" in log, log
    assert "takes writes again" in log, log


# ------------------------------------------------------------------ capacity

def proc_cpu_ticks(pid):
    with open("/proc/%d/stat" % pid) as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return int(parts[11]) + int(parts[12])  # utime + stime


def refused_as_full(port):
    """Logs in raw and returns the FATAL's fields (or None if let in)."""
    cn = pgwire.Conn(port)
    try:
        cn.send(pgwire.startup("orders", "orders"))
        m = cn.read_msg()
        return pgwire.fields(m[1]) if m and m[0] == b"E" else None
    finally:
        cn.close()


def connect_once_free(gw, tries=100, pause=0.05):
    """Connects, retrying while sluice says it is full (a slot frees when the
    session that held it is gone)."""
    for _ in range(tries):
        try:
            return gw.connect()
        except psycopg2.OperationalError as e:
            assert "too many clients" in str(e) or "too many connections" in str(e), e
            time.sleep(pause)
    return gw.connect()


def test_full_gateway_refuses_logins_with_53300_and_still_cancels(gateway_factory):
    gw = gateway_factory(gateway_extra="  max_connections: 3\n")
    conns = [gw.connect() for _ in range(3)]
    for c in conns:
        c.cursor().execute("SELECT 1")
    # a fourth login is told why, in PostgreSQL's words, over psycopg2 and raw
    with pytest.raises(psycopg2.OperationalError) as ex:
        gw.connect()
    assert "too many clients already" in str(ex.value), ex.value
    assert "max_connections = 3" in str(ex.value)
    f = refused_as_full(gw.port)
    assert f is not None and f.get("C") == "53300" and f.get("S") == "FATAL", f
    # a cancel is a connection too, and still goes through when full
    cur = conns[0].cursor()
    t = threading.Timer(0.5, conns[0].cancel)
    t.start()
    with pytest.raises(psycopg2.extensions.QueryCanceledError):
        cur.execute("SELECT pg_sleep(30)")
    t.join()
    conns[0].rollback()
    cur.execute("SELECT 2")
    assert cur.fetchone()[0] == 2
    # a slot that frees up is there for the next login
    conns.pop().close()
    c = connect_once_free(gw)
    c.cursor().execute("SELECT 3")
    conns.append(c)
    for c in conns:
        c.close()
    assert "max_connections reached" in gw.logtext()


def test_connection_flood_past_the_descriptor_limit(gateway_factory):
    # 192 descriptors: 72 sessions. A flood of idle connections far past
    # that must not spin the workers (accept failing with EMFILE on a socket
    # that stays readable did: the loop never got to the login timeouts
    # that free descriptors, nor to SIGTERM), clients past the limit are
    # told so, and once the flood goes the gateway serves again.
    gw = gateway_factory(nofile=192, login_timeout="3s")
    assert "up to 72 sessions" in gw.logtext()
    flood = []
    for _ in range(400):
        try:
            flood.append(socket.create_connection(("127.0.0.1", gw.port), 2))
        except OSError:
            break
    assert len(flood) > 200
    time.sleep(0.5)
    t0, c0 = time.time(), proc_cpu_ticks(gw.proc.pid)
    time.sleep(2)
    used = (proc_cpu_ticks(gw.proc.pid) - c0) / os.sysconf("SC_CLK_TCK")
    assert used < 0.5 * (time.time() - t0), "sluice spun for %.2f s of CPU" % used
    f = refused_as_full(gw.port)
    assert f is not None and f.get("C") == "53300", f
    for s in flood:
        s.close()
    cur = connect_once_free(gw, pause=0.1).cursor()
    cur.execute("SELECT 4")
    assert cur.fetchone()[0] == 4
    cur.connection.close()
    # the fixture checks that SIGTERM still stops it cleanly (exit 0)


def raw_login(gw, source=None):
    """A full login over the raw protocol from source (an address on lo);
    returns the messages up to ReadyForQuery or the FATAL."""
    sock = socket.create_connection(("127.0.0.1", gw.port), 5,
                                    source_address=(source, 0) if source else None)
    cn = pgwire.Conn.__new__(pgwire.Conn)
    cn.s, cn.buf = sock, b""
    try:
        return cn.login("orders", gw.mint())
    finally:
        cn.close()


def test_logins_per_address_bound_a_flood(gateway_factory):
    # Connections that never log in hold a slot until login_timeout. From
    # one address only max_logins_per_address of them at once: the next is
    # told 53300 at once, other addresses (127.0.0.2 here) and sessions
    # already logged in are not affected, and the count drops as they go.
    gw = gateway_factory(gateway_extra="  max_logins_per_address: 5\n")
    assert "(5 logging in at once per client address)" in gw.logtext()
    logged = [gw.connect() for _ in range(6)]  # logged in: not counted
    idle = [socket.create_connection(("127.0.0.1", gw.port), 2) for _ in range(5)]
    time.sleep(0.3)
    f = refused_as_full(gw.port)
    assert f is not None and f.get("C") == "53300", f
    assert "too many connections from 127.0.0.1 are logging in" in f["M"], f
    with pytest.raises(psycopg2.OperationalError) as ei:
        gw.connect()
    assert "max_logins_per_address = 5" in str(ei.value)
    got = raw_login(gw, source="127.0.0.2")  # another address logs in
    assert got[-1] == (b"Z", b"I"), got
    for c in logged:  # sessions already in go on
        c.cursor().execute("SELECT 1")
    idle.pop().close()
    time.sleep(0.3)
    c = gw.connect()  # one slot free again: a login goes through ...
    c.cursor().execute("SELECT 2")
    c.close()
    for s_ in idle:
        s_.close()
    time.sleep(0.3)
    cs = [gw.connect() for _ in range(8)]  # ... and all once the idle ones are gone
    for c in cs + logged:
        c.close()
    assert "refusing more from there" in gw.logtext()


# ------------------------------------------------------------------ abuse

ABUSE = [
    b"\x00\x00\x00\x04",                      # startup length < 8
    b"\x00\x00\x00\x08\x00\x00\x00\x00",      # unknown protocol code
    b"\x7f\xff\xff\xff" + b"x" * 100,           # huge startup length
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",     # wrong protocol
    pgwire.startup("orders", "orders")[:-1] + b"x",  # missing final NUL
]


@pytest.mark.parametrize("payload", ABUSE)
def test_abuse_startup(gw, payload):
    cn = pgwire.Conn(gw.port)
    cn.send(payload)
    assert cn.closed()
    assert run_psql(gw, "SELECT 1").stdout.strip() == "1"


@pytest.mark.parametrize("payload", [
    pgwire.msg(b"Q", b"SELECT 1"),                     # no NUL terminator
    b"Q\x00\x00\x00\x02",                              # length < 4
    b"Q\x7f\xff\xff\xff" + b"A" * 1000,                # 2 GB message header
    b"Q\x06\x40\x00\x00" + b"A" * 1000,                # 100 MB message header
    pgwire.msg(b"?", b"junk"),                         # unknown type
    pgwire.msg(b"B", b"\0\0\x00\x00\x00\x05"),         # Bind claiming 5 params, none given
    pgwire.msg(b"P", b"s\0SELECT 1\0\xff\xff"),        # Parse with 65535 param types, none given
])
def test_abuse_messages(gw, payload):
    cn = pgwire.Conn(gw.port)
    assert cn.login("orders", gw.mint())[-1][0] == b"Z"
    cn.send(payload)
    got = []
    while True:
        m = cn.read_msg()
        if m is None:
            break
        got.append(m)
    errs = pgwire.errors(got)
    assert errs and errs[0]["S"] == "FATAL" and errs[0]["C"] in ("08P01", "54000")
    assert run_psql(gw, "SELECT 1").stdout.strip() == "1"


def test_truncated_message_then_close(gw):
    cn = pgwire.Conn(gw.port)
    cn.login("orders", gw.mint())
    cn.send(pgwire.query("SELECT 1")[:6])
    cn.close()
    time.sleep(0.2)
    assert run_psql(gw, "SELECT 1").stdout.strip() == "1"


def cancels_a_sleep(c):
    """c.cancel() during pg_sleep(10) ends it (57014) within 5 s, and the
    session stays usable."""
    cur = c.cursor()
    t = threading.Timer(0.5, c.cancel)
    t.start()
    start = time.time()
    with pytest.raises(psycopg2.Error) as ei:
        cur.execute("SELECT pg_sleep(10)")
    assert ei.value.pgcode == "57014"
    assert time.time() - start < 5
    c.rollback()
    cur.execute("SELECT 1")


def test_cancel_request(gw):
    c = gw.connect()
    cancels_a_sleep(c)
    c.close()


def test_cancel_among_many_sessions_and_after_others_close(gw):
    """Each session's cancel key reaches its own upstream backend, whatever
    order sessions opened and closed in (the map is keyed by pid)."""
    conns = [gw.connect() for _ in range(40)]
    for i in range(0, 40, 3):
        conns[i].close()
    left = [c for c in conns if not c.closed]
    for c in (left[0], left[len(left) // 2], left[-1]):
        cancels_a_sleep(c)
    # the others were not touched
    for c in left:
        cur = c.cursor()
        cur.execute("SELECT 2")
        assert cur.fetchone() == (2,)
        c.close()
    late = gw.connect()
    cancels_a_sleep(late)
    late.close()


def test_cancel_with_wrong_key_cancels_nothing(gw):
    c = gw.connect()
    cur = c.cursor()
    answer = {}

    def bogus_cancel():
        import socket
        import struct
        s = socket.create_connection(("127.0.0.1", gw.port), 5)
        s.sendall(struct.pack("!IIII", 16, 80877102, 12345, 67890))
        s.settimeout(5)
        try:
            answer["got"] = s.recv(100)
        except ConnectionResetError:
            answer["got"] = b""
        s.close()
    t = threading.Timer(0.3, bogus_cancel)
    t.start()
    cur.execute("SELECT pg_sleep(1.2), 7")
    assert cur.fetchone()[1] == 7
    t.join()
    assert answer == {"got": b""}  # a CancelRequest is answered by closing, nothing else
    c.close()


def test_a_statement_left_running_by_a_gone_client_is_cancelled(gw, pg):
    # An agent whose tool call timed out drops its connection; the server
    # would go on with the statement (until it tries to send) for as long
    # as it runs. sluice cancels it upstream and says so in the trail; a
    # session that closes with nothing running cancels nothing.
    tag = "gone-client-%d" % os.getpid()
    cn = pgwire.Conn(gw.port)
    assert cn.login("orders", gw.mint())[-1] == (b"Z", b"I")
    cn.send(pgwire.query("SELECT pg_sleep(60) /* %s */" % tag))
    running = "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND " \
              "query LIKE '%%%s%%' AND pid <> pg_backend_pid()" % tag
    assert wait_for(lambda: pg.scalar("orders", running) == "1"), "never started"
    cn.close()
    assert wait_for(lambda: pg.scalar("orders", running) == "0"), "still running"
    c = gw.connect()
    c.cursor().execute("SELECT 1")
    c.close()
    closes = [r["data"]["reason"] for r in gw.export() if r["type"] == "session_close"]
    assert "client disconnected; the statement it left running was cancelled" in closes, closes
    assert sum("cancelled" in x for x in closes) == 1, closes


def test_sigterm_clean_and_chain_verifies(gateway_factory):
    gw = gateway_factory()
    c = gw.connect()
    c.cursor().execute("SELECT 1")
    c.commit()
    assert gw.stop() == 0
    v = gw.verify()
    assert v.returncode == 0, v.stderr
    assert any(r["type"] == "session_close" for r in gw.export())


# ------------------------------------------------------------------ TLS

def test_client_tls_and_upstream_tls(gateway_factory):
    gw = gateway_factory(tls=True)
    c = gw.connect(sslmode="require")
    cur = c.cursor()
    cur.execute("SELECT 1")
    assert cur.fetchone()[0] == 1
    c.close()
    # upstream TLS: the role is only allowed over hostssl
    c = gw.connect("orders_tls", sslmode="require")
    cur = c.cursor()
    cur.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    assert cur.fetchone()[0] is True
    cur.execute("SELECT current_user")
    assert cur.fetchone()[0] == "tlsuser"
    c.close()
    recs = [r for r in gw.export() if r["type"] == "session_open"]
    assert any(r["data"]["tls"] for r in recs)


def one_connection(name, user, port, tls="disable", host="localhost", ca_file=None, extra=""):
    """A connections: section with one PostgreSQL connection to the test
    cluster's orders database (or whatever listens on port)."""
    y = """
connections:
  - name: %s
    type: postgres
    target: %s:%d
    database: orders
    user: %s
    password_env: TEST_APP_PW
    tls: %s
""" % (name, host, port, user, tls)
    if ca_file:
        y += "    ca_file: %s\n" % ca_file
    return y + extra


def _verify_full_connections(pg, ca_file, host):
    return one_connection("orders_tls", "tlsuser", pg.port, "verify-full", host, ca_file)


def test_upstream_tls_verify_full(gateway_factory, pg):
    # the cluster's certificate is self-signed for CN=localhost: it is its own CA
    gw = gateway_factory(connections=_verify_full_connections(
        pg, os.path.join(pg.data, "pg.crt"), "localhost"))
    c = gw.connect("orders_tls")
    cur = c.cursor()
    cur.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    assert cur.fetchone()[0] is True
    c.close()


@pytest.mark.parametrize("case", ["other_ca", "wrong_host"])
def test_upstream_tls_verify_full_refuses_unverified_servers(gateway_factory, pg, case):
    # A server that cannot prove it is the configured one never sees the
    # vaulted password: the session ends before the upstream login.
    if case == "other_ca":
        d = tempfile.mkdtemp(prefix="sluice-ca-")
        ca, _ = make_cert(d, "other")  # also CN=localhost, but not the server's
        conns = _verify_full_connections(pg, ca, "localhost")
    else:
        d = None
        conns = _verify_full_connections(pg, os.path.join(pg.data, "pg.crt"), "127.0.0.1")
    gw = gateway_factory(connections=conns)
    with pytest.raises(psycopg2.OperationalError) as ei:
        gw.connect("orders_tls")
    assert "certificate was not accepted" in str(ei.value), ei.value
    if d:
        shutil.rmtree(d, ignore_errors=True)


def test_verify_full_config_errors(tmp_path):
    y = tmp_path / "s.yaml"
    y.write_text("""
connections:
  - { name: a, type: postgres, target: "localhost:5432", tls: verify-full, ca_file: /nonexistent/ca.pem }
""")
    r = subprocess.run([SLUICE, "config", "check", str(y)], capture_output=True, text=True)
    assert r.returncode != 0 and "/nonexistent/ca.pem cannot be read" in r.stderr, r.stderr
    y.write_text("""
connections:
  - { name: a, type: postgres, target: "localhost:5432", tls: require, ca_file: /etc/hostname }
""")
    r = subprocess.run([SLUICE, "config", "check", str(y)], capture_output=True, text=True)
    assert r.returncode != 0 and "only used with tls: verify-full" in r.stderr, r.stderr


def test_admin_api_never_takes_tokens_in_the_clear_off_loopback(tmp_path):
    # Approvers send their bearer tokens to the admin API (plain HTTP): on a
    # non-loopback address sluice refuses to start unless told a proxy or a
    # private link covers it; a TLS setting it would ignore is refused too.
    # (Nothing is bound: the check comes first.)
    for admin, want in (('{ listen: "0.0.0.0:1" }', "not a loopback address"),
                        ('{ listen: "127.0.0.1:1", tls_cert: c.pem, tls_key: k.pem }',
                         "tls_cert/tls_key are not supported")):
        y = tmp_path / "s.yaml"
        y.write_text("gateway:\n  data_dir: %s\n  admin: %s\n  postgres: { listen: "
                     "\"127.0.0.1:%d\" }\n" % (tmp_path / "var", admin, free_port()))
        r = subprocess.run([SLUICE, "serve", "--config", str(y)], capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 1 and want in r.stderr, r.stderr


class FirstBytesRelay:
    """Forwards TCP connections to PostgreSQL unchanged and keeps the first
    8 bytes of each (what a network observer would see first)."""

    def __init__(self, target_port, swallow_cancels=False):
        import socket
        self.target = target_port
        self.swallow = swallow_cancels
        self.held = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.first = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    @staticmethod
    def _pump(a, b):
        try:
            while True:
                d = a.recv(65536)
                if not d:
                    break
                b.sendall(d)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(2)
            except OSError:
                pass

    def _serve(self, c):
        import socket
        u = socket.create_connection(("127.0.0.1", self.target))
        head = b""
        while len(head) < 8:
            d = c.recv(8 - len(head))
            if not d:
                break
            head += d
        self.first.append(head)
        if self.swallow and head == CANCEL_REQUEST:
            self.held.append(c)  # never answered, never closed
            u.close()
            return
        u.sendall(head)
        threading.Thread(target=self._pump, args=(u, c), daemon=True).start()
        self._pump(c, u)

    def close(self):
        self.sock.close()
        for c in self.held:
            c.close()


SSL_REQUEST = struct.pack("!II", 8, 80877103)
CANCEL_REQUEST = struct.pack("!II", 16, 80877102)


@pytest.mark.parametrize("mode", ["require", "verify-full"])
def test_cancel_to_a_tls_upstream_goes_over_tls(gateway_factory, pg, mode):
    relay = FirstBytesRelay(pg.port)
    ca = os.path.join(pg.data, "pg.crt") if mode == "verify-full" else None
    try:
        gw = gateway_factory(connections=one_connection("orders_tls", "tlsuser", relay.port,
                                                        mode, ca_file=ca))
        c = gw.connect("orders_tls")
        cancels_a_sleep(c)
        c.close()
        # the session and the cancel: both opened with SSLRequest, and no
        # CancelRequest (with the upstream's key) crossed in the clear
        assert len(relay.first) >= 2, relay.first
        assert all(h == SSL_REQUEST for h in relay.first), relay.first
        assert CANCEL_REQUEST not in relay.first
    finally:
        relay.close()


def test_cancel_to_an_upstream_that_never_answers_ends(gateway_factory, pg):
    # a cancel connection the upstream neither answers nor closes is given
    # up after a few seconds: it cannot hold the worker (and a shutdown) forever
    relay = FirstBytesRelay(pg.port, swallow_cancels=True)
    try:
        gw = gateway_factory(connections=one_connection("orders", "app", relay.port,
                                                        host="127.0.0.1"))
        c = gw.connect()
        cur = c.cursor()
        t = threading.Timer(0.3, c.cancel)
        t.start()
        cur.execute("SELECT pg_sleep(1), 7")  # the cancel never arrives
        assert cur.fetchone()[1] == 7
        t.join()
        c.close()
        assert CANCEL_REQUEST in relay.first
        start = time.time()
        assert gw.stop() == 0
        assert time.time() - start < 12
    finally:
        relay.close()


@pytest.mark.parametrize("tls,extra,works", [
    ("disable", "", False),
    ("require", "", False),  # encrypted, but whoever answers is not verified
    ("disable", "    allow_cleartext_password: true\n", True),
    ("verify-full", "", True),
])
def test_cleartext_password_only_to_a_verified_server(gateway_factory, pg, tls, extra, works):
    # pwuser's pg_hba method is "password": the server asks for it in the clear
    ca = os.path.join(pg.data, "pg.crt") if tls == "verify-full" else None
    gw = gateway_factory(connections=one_connection("orders_pw", "pwuser", pg.port, tls,
                                                    ca_file=ca, extra=extra))
    if works:
        c = gw.connect("orders_pw")
        cur = c.cursor()
        cur.execute("SELECT current_user")
        assert cur.fetchone()[0] == "pwuser"
        c.close()
        return
    with pytest.raises(psycopg2.OperationalError) as ei:
        gw.connect("orders_pw")
    assert "login to the upstream server failed" in str(ei.value), ei.value
    assert "asked for the password in cleartext" in gw.logtext()
    assert APP_PASSWORD not in gw.logtext()


def test_tls_refused_when_not_configured(gw):
    with pytest.raises(psycopg2.OperationalError) as ei:
        gw.connect(sslmode="require")
    assert "SSL" in str(ei.value) or "ssl" in str(ei.value)
    # and plain still works
    c = gw.connect()
    c.close()


def test_login_timeout_closes_idle_and_half_logged_in_clients(gateway_factory):
    gw = gateway_factory(login_timeout="1s")
    idle = pgwire.Conn(gw.port)                 # says nothing at all
    half = pgwire.Conn(gw.port)
    half.send(pgwire.startup("orders", "orders"))
    t, body = half.read_msg()                   # asked for the token, never sends it
    assert t == b"R"
    start = time.time()
    assert idle.closed(timeout=5)
    got = []
    while True:
        m = half.read_msg()
        if m is None:
            break
        got.append(m)
    assert pgwire.errors(got)[0]["M"] == "sluice: login timed out"
    assert time.time() - start < 4
    # a normal session is not affected by the login timeout
    c = gw.connect()
    cur = c.cursor()
    time.sleep(1.5)
    cur.execute("SELECT 1")
    c.close()


# ------------------------------------------------------------------ OIDC discovery / jwks_uri

def local_idp(served):
    """A loopback OIDC provider: discovery document and /jwks.json serving
    served["jwks"] (counting fetches in served["hits"]). Returns (server, issuer);
    call server.shutdown() when done."""
    import http.server

    served.setdefault("hits", 0)

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/.well-known/openid-configuration":
                body = json.dumps({"issuer": issuer, "jwks_uri": issuer + "/jwks.json"}).encode()
            elif self.path == "/jwks.json":
                served["hits"] += 1
                body = served["jwks"]
            else:
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), H)
    issuer = "http://127.0.0.1:%d" % srv.server_address[1]
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, issuer


def test_jwks_refresh_drops_a_removed_key(gateway_factory):
    # The IdP rotates a key out (say, after a leak): within jwks_refresh the
    # gateway re-fetches the JWKS and a token signed by that key stops
    # working, even though it had been verified (and cached) before.
    served = {"jwks": b'{"keys": []}'}
    srv, issuer = local_idp(served)
    try:
        extra = ("identity:\n  issuers:\n    - issuer: %s\n      audience: sluice\n"
                 "      jwks_uri: %s/jwks.json\n      jwks_refresh: 1s\n" % (issuer, issuer))
        gw = gateway_factory(extra=extra)
        served["jwks"] = open(os.path.join(gw.data, "dev-jwks.json"), "rb").read()
        tok = gw.mint(iss=issuer)
        for _ in range(2):  # the second login is answered from the cache
            c = gw.connect(token=tok)
            c.cursor().execute("SELECT 1")
            c.close()
        served["jwks"] = b'{"keys": []}'
        time.sleep(2.5)
        with pytest.raises(psycopg2.OperationalError) as ei:
            gw.connect(token=tok)
        assert "28P01" in str(ei.value) or "authentication failed" in str(ei.value)
    finally:
        srv.shutdown()


def test_oidc_discovery_and_jwks_refetch(gateway_factory, tmp_path):
    served = {"jwks": b'{"keys": []}'}
    srv, issuer = local_idp(served)
    try:
        extra = "identity:\n  issuers:\n    - issuer: %s\n      audience: sluice\n" % issuer
        gw = gateway_factory(extra=extra)
        # The gateway started while the IdP served no keys: the token's kid is
        # unknown, sluice refetches (discovery -> jwks_uri) and then accepts.
        served["jwks"] = open(os.path.join(gw.data, "dev-jwks.json"), "rb").read()
        tok = gw.mint(iss=issuer)
        c = gw.connect(token=tok)
        c.cursor().execute("SELECT 1")
        c.close()
        assert served["hits"] >= 2
        # tokens from the dev issuer are not trusted by this configuration
        with pytest.raises(psycopg2.OperationalError) as ei:
            gw.connect(token=gw.mint())
        assert "issuer not trusted" in str(ei.value)
    finally:
        srv.shutdown()


def _sig_blocked(status_path):
    with open(status_path) as f:
        for line in f:
            if line.startswith("SigBlk:"):
                mask = int(line.split()[1], 16)
                return bool(mask & (1 << (signal.SIGTERM - 1))) and \
                    bool(mask & (1 << (signal.SIGINT - 1))) and \
                    bool(mask & (1 << (signal.SIGHUP - 1)))
    return False


def test_every_helper_thread_blocks_the_shutdown_signals(gateway_factory):
    # Only the main thread's sigwait() may take SIGTERM/SIGINT: a thread
    # without them blocked (the audit writer, admin, JWKS refresh, workers)
    # would be picked by the kernel for a SIGTERM arriving during start-up,
    # and the default action kills the gateway without draining.
    g = gateway_factory()
    pid = g.proc.pid
    tids = [t for t in os.listdir("/proc/%d/task" % pid) if int(t) != pid]
    assert len(tids) >= 3, tids  # workers, audit writer, admin at least
    for t in tids:
        assert _sig_blocked("/proc/%d/task/%s/status" % (pid, t)), t


def test_sigterm_right_after_start_drains_cleanly(gateway_factory):
    for _ in range(5):
        g = gateway_factory()
        assert g.stop() == 0, g.logtext()[-2000:]


def test_sighup_reloads_policies_into_running_sessions(gateway_factory):
    # systemctl reload sends SIGHUP (its default action would end the
    # gateway on the spot). sluice reads the policies again: a file with an
    # error changes nothing; a valid one decides every session's next
    # statement, is an audit record of its own, and new masking rules reach
    # sessions that log in afterwards. Other sections wait for a restart.
    g = gateway_factory()
    c = g.connect()
    c.autocommit = True
    cur = c.cursor()
    with open(g.config) as f:
        good = f.read()

    def reload(text, expect):
        with open(g.config, "w") as f:
            f.write(text)
        n = g.logtext().count("SIGHUP")
        g.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: g.logtext().count("SIGHUP") > n), g.logtext()[-2000:]
        assert g.proc.poll() is None, g.logtext()[-2000:]
        assert expect in g.logtext().split("SIGHUP")[-1], g.logtext()[-2000:]

    reload(good, "is unchanged; nothing to reload")
    reload(good.replace("action: allow, sql: [select,", "action: allow, sql: [bogus,"),
           "not reloaded, the running policies stay")
    assert "bogus" in g.logtext()
    cur.execute("SELECT count(*) > 0 FROM customers")  # nothing changed
    assert cur.fetchone() == (True,)
    blocked = good.replace("    rules:\n", "    rules:\n      - { action: block, sql: [select], "
                           "tables: [customers], message: \"no customers now\" }\n", 1)
    reload(blocked, "policies reloaded from %s (generation 2, 2 policies)" % g.config)
    with pytest.raises(psycopg2.Error) as ei:  # the same session, its next statement
        cur.execute("SELECT count(*) FROM customers")
    assert ei.value.pgcode == "42501" and "no customers now" in ei.value.pgerror
    cur.execute("SELECT 1")
    masked = good.replace("  - name: dba", "    mask:\n      columns: [ssn]\n  - name: dba", 1)
    reload(masked.replace("login_timeout: 15s", "login_timeout: 14s"),
           "changes outside policies take effect at restart")
    cur.execute("SELECT count(*) > 0 FROM customers")  # the block rule is gone
    c2 = g.connect()  # a session logging in now gets the new masking rule
    k = c2.cursor()
    k.execute("SELECT ssn FROM customers WHERE id = 1")
    assert k.fetchone()[0] != "123-45-6789"
    c2.close()
    c.close()
    recs = [r for r in g.export() if r["type"] == "policy_reload"]
    assert [r["data"]["generation"] for r in recs] == [2, 3], recs
    assert recs[1]["data"]["other_sections_changed"] is True
    assert recs[0]["data"]["other_sections_changed"] is False
    assert len(recs[0]["data"]["file_sha256"]) == 64
    assert recs[0]["data"]["policies"] == ["agents", "dba"]
    assert g.verify().returncode == 0
    # the first session's transcript shows where its policies changed
    sid = next(r["session"] for r in g.export() if r["type"] == "session_open")
    out = g.run("audit", "replay", "--session", sid).stdout
    i = out.index("policies reloaded (generation 2")
    assert i < out.index("no customers now") < out.index("policies reloaded (generation 3"), out
    assert g.stop() == 0, g.logtext()[-2000:]


NODE_DIR = os.path.join(os.path.dirname(__file__), "node")


def test_node_postgres_agent(gw):
    # node-postgres (npm, installed by scripts/deps.sh): parameterised and
    # named statements over the extended protocol, blocks in both protocols
    assert os.path.exists(os.path.join(NODE_DIR, "node_modules", "pg")), \
        "node-postgres missing: run scripts/deps.sh"
    env = dict(os.environ, PORT=str(gw.port), USER="orders", TOKEN=gw.mint())
    p = subprocess.run(["node", os.path.join(NODE_DIR, "agent.js")], env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    out = json.loads(p.stdout)
    assert [r["id"] for r in out["param"]] == [1], out
    assert out["named"] == [{"id": 2}], out
    assert out["DROP TABLE orders"] == "42501" and out["TRUNCATE orders"] == "42501", out
    assert out["named_drop"] == "42501", out
    assert out["after"] > 0, out


# The embedded default's rules for agents: reads, inserts, settings and
# transactions; deletes and updates held for review; the rest refused.
READ_ONLY_AGENT = """
policies:
  - name: agents
    match: { groups: [ai-agents] }
    rules:
      - { action: block, sql: [drop, truncate, alter_system, copy_program, grant] }
      - { action: review, sql: [delete, update], approvers: [dba], timeout: 2s }
      - { action: allow, sql: [select, insert, set, transaction] }
"""


def test_read_only_agent_tools_work(gateway_factory):
    """What agent tool stacks send on top of their SELECTs (psycopg2 named
    cursors, SQLAlchemy's connect-time SHOWs, EXPLAIN) runs under a policy
    that allows select but not utility; what is not a read still is refused."""
    import sqlalchemy
    gw = gateway_factory(policies=READ_ONLY_AGENT)
    token = gw.mint()
    c = gw.connect(token=token)
    # psycopg2's server-side cursor: DECLARE ... CURSOR, FETCH FORWARD n, CLOSE
    cur = c.cursor(name="big")
    cur.itersize = 2
    cur.execute("SELECT id FROM orders ORDER BY id")
    ids = [r[0] for r in cur]
    cur.close()
    plain = c.cursor()
    plain.execute("SELECT id FROM orders ORDER BY id")
    assert ids == [r[0] for r in plain.fetchall()] and len(ids) >= 3
    plain.execute("SHOW standard_conforming_strings")
    assert plain.fetchone()[0] == "on"
    plain.execute("EXPLAIN SELECT * FROM orders WHERE id = 1")
    assert "orders" in " ".join(r[0] for r in plain.fetchall())
    c.rollback()
    # not reads: refused with 42501, the session stays usable
    for sql in ("LISTEN ch", "EXPLAIN ANALYZE CREATE TABLE x AS SELECT 1", "VACUUM orders"):
        c.autocommit = True
        with pytest.raises(psycopg2.Error) as e:
            plain.execute(sql)
        assert e.value.pgcode == "42501", (sql, e.value.pgcode)
        plain.execute("SELECT 1")
        assert plain.fetchone() == (1,)
    c.close()
    # SQLAlchemy (what LangChain's SQLDatabase uses): its first connect runs
    # version(), current_schema() and SHOW standard_conforming_strings
    eng = sqlalchemy.create_engine("postgresql+psycopg2://orders:%s@127.0.0.1:%d/orders"
                                   "?sslmode=disable" % (token, gw.port))
    with eng.connect() as conn:
        assert conn.execute(sqlalchemy.text("SELECT count(*) FROM orders")).scalar() == len(ids)
        rows = conn.execution_options(stream_results=True).execute(
            sqlalchemy.text("SELECT id FROM orders ORDER BY id"))
        assert [r[0] for r in rows] == ids
    eng.dispose()
    recs = gw.export()
    texts = [r["data"].get("text", "") for r in recs if r["type"] == "request"]
    assert any(t.startswith("FETCH") for t in texts), texts
    assert any(t.lower().startswith("show standard_conforming_strings") for t in texts), texts


class TlsInterceptor:
    """Someone in the middle of a tls: require connection: answers sluice's
    SSLRequest, terminates its TLS with a certificate of its own, opens TLS
    to the real server and relays the plaintext both ways."""

    def __init__(self, pg_port):
        import socket
        import ssl
        self.dir = tempfile.mkdtemp(prefix="sluice-mitm-")
        crt, key = make_cert(self.dir, "mitm")
        self.sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.sctx.load_cert_chain(crt, key)
        self.cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.cctx.check_hostname = False
        self.cctx.verify_mode = ssl.CERT_NONE
        self.pg_port = pg_port
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(8)
        self.port = self.lsock.getsockname()[1]
        self.relayed = 0
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        import socket
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            threading.Thread(target=self.relay, args=(c, socket), daemon=True).start()

    def relay(self, c, socket):
        import select
        try:
            c.settimeout(10)
            assert c.recv(8) == struct.pack("!II", 8, 80877103)
            c.sendall(b"S")
            a = self.sctx.wrap_socket(c, server_side=True)
            u = socket.create_connection(("127.0.0.1", self.pg_port), 10)
            u.sendall(struct.pack("!II", 8, 80877103))
            assert u.recv(1) == b"S"
            b = self.cctx.wrap_socket(u)
            self.relayed += 1
            while True:
                r, _, _ = select.select([a, b], [], [], 0.05)
                for src, dst in ((a, b), (b, a)):
                    if src in r or src.pending():
                        data = src.recv(65536)
                        if not data:
                            return
                        dst.sendall(data)
        except (OSError, AssertionError):
            return
        finally:
            c.close()

    def close(self):
        self.lsock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.mark.parametrize("binding", ["disable", "prefer", "require"])
def test_channel_binding_defeats_a_tls_interceptor(gateway_factory, pg, binding):
    """tls: require checks no certificate. With SCRAM-SHA-256-PLUS (the
    default, channel_binding: prefer) the login is bound to the certificate
    sluice saw, the interceptor's, and the real server refuses it; without
    binding the interceptor gets a logged-in session."""
    mitm = TlsInterceptor(pg.port)
    try:
        gw = gateway_factory(connections=one_connection(
            "orders_tls", "tlsuser", mitm.port, "require",
            extra="    channel_binding: %s\n" % binding))
        if binding == "disable":
            c = gw.connect("orders_tls")
            cur = c.cursor()
            cur.execute("SELECT current_user")
            assert cur.fetchone()[0] == "tlsuser"
            c.close()
        else:
            with pytest.raises(psycopg2.OperationalError):
                gw.connect("orders_tls")
            time.sleep(0.2)
            assert "login to connection orders_tls failed" in gw.logtext(), gw.logtext()[-2000:]
        assert mitm.relayed >= 1
    finally:
        mitm.close()
    # straight to the server, each mode logs in; the session record names the method
    gw2 = gateway_factory(connections=one_connection(
        "orders_tls", "tlsuser", pg.port, "require",
        extra="    channel_binding: %s\n" % binding))
    c = gw2.connect("orders_tls")
    c.cursor().execute("SELECT 1")
    c.close()
    opened = [r for r in gw2.export() if r["type"] == "session_open"]
    want = "scram-sha-256" if binding == "disable" else "scram-sha-256-plus"
    assert opened and opened[-1]["data"]["upstream_auth"] == want, opened
    assert opened[-1]["data"]["upstream_tls"] is True


def test_channel_binding_config_errors(tmp_path):
    y = tmp_path / "s.yaml"
    for body, msg in (("tls: disable, channel_binding: require", "needs tls: require"),
                      ("channel_binding: require", "needs tls: require"),
                      ("tls: require, channel_binding: maybe", "disable, prefer or require")):
        y.write_text("""
connections:
  - { name: a, type: postgres, target: "localhost:5432", %s }
""" % body)
        r = subprocess.run([SLUICE, "config", "check", str(y)], capture_output=True, text=True)
        assert r.returncode != 0 and msg in r.stderr, (body, r.stderr)


def test_psycopg3_agent(gateway_factory):
    """psycopg 3 (Debian's python3-psycopg): statements it prepares by itself
    after a few runs, pipeline mode with a refused statement in the middle
    (the rest of the pipeline is not run, the connection goes on), COPY TO
    STDOUT, a server-side cursor and binary results."""
    import psycopg
    gw = gateway_factory(policies=READ_ONLY_AGENT +
                         "      - { action: allow, sql: [copy_to], tables: [orders] }\n")
    conn = psycopg.connect(host="127.0.0.1", port=gw.port, user="orders", dbname="orders",
                           password=gw.mint(), sslmode="disable", autocommit=True,
                           prepare_threshold=2)
    cur = conn.cursor()
    for i in range(1, 6):  # prepared as _pg3_N from the third run on
        cur.execute("SELECT id FROM orders WHERE id = %s", (i,))
        assert cur.fetchone() == (i,)
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as ex:
        with conn.pipeline():
            cur.execute("SELECT 1")
            cur.execute("DROP TABLE orders")
            cur.execute("INSERT INTO orders (id, customer, amount) VALUES (-77, 1, 1)")
    assert "by policy" in str(ex.value)
    cur.execute("SELECT count(*) FROM orders WHERE id = -77")
    assert cur.fetchone() == (0,)
    with conn.pipeline():
        c1, c2 = conn.cursor(), conn.cursor()
        c1.execute("SELECT %s::int + 1", (41,))
        c2.execute("SELECT count(*) FROM orders WHERE id BETWEEN 1 AND 100")
    assert c1.fetchall() == [(42,)] and c2.fetchall() == [(100,)]
    with cur.copy("COPY (SELECT id FROM orders WHERE id <= 3 ORDER BY id) TO STDOUT") as cp:
        assert [r for r in cp.rows()] == [("1",), ("2",), ("3",)]
    with conn.transaction():
        sc = conn.cursor(name="agent_cursor")
        sc.execute("SELECT id FROM orders WHERE id <= 100 ORDER BY id")
        assert sc.fetchmany(3) == [(1,), (2,), (3,)]
        sc.close()
    cur.execute("SELECT %b::int", (7,), binary=True)
    assert cur.fetchone() == (7,)
    conn.close()
    texts = [r["data"]["text"] for r in gw.export() if r["type"] == "request"]
    assert any("DROP TABLE orders" in t for t in texts)


def test_asyncpg_agent(gateway_factory):
    """asyncpg (Debian's python3-asyncpg): named prepared statements over the
    extended protocol, type introspection, a pool whose release resets the
    session, and a refused DROP that leaves the connection usable."""
    import asyncio
    import asyncpg
    gw = gateway_factory(policies=READ_ONLY_AGENT)
    token = gw.mint()

    async def main():
        kw = dict(host="127.0.0.1", port=gw.port, user="orders", database="orders",
                  password=token, ssl=False)
        c = await asyncpg.connect(**kw)
        rows = await c.fetch("SELECT id, amount FROM orders WHERE id = $1", 1)
        assert [r["id"] for r in rows] == [1]
        st = await c.prepare("SELECT count(*) FROM orders WHERE id > $1")
        assert await st.fetchval(0) >= 3
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
            await c.execute("DROP TABLE orders")
        assert await c.fetchval("SELECT 41 + $1::int", 1) == 42
        async with c.transaction():
            assert await c.fetchval("SELECT count(*) FROM orders") >= 3
        await c.close()
        pool = await asyncpg.create_pool(min_size=1, max_size=2, **kw)
        for _ in range(3):  # each release runs asyncpg's reset query
            async with pool.acquire() as pc:
                assert await pc.fetchval("SELECT 1") == 1
        await pool.close()
    asyncio.run(main())


def test_audit_verify_of_a_live_gateway(gw):
    """An auditor's check runs while the gateway writes: records and
    checkpoints come from one snapshot of the store, and the sidecar's lines
    are written after their checkpoint is committed, so a live verify never
    reports a truncation that is only a checkpoint written meanwhile."""
    stop = threading.Event()

    def load():
        c = gw.connect()
        c.autocommit = True
        cur = c.cursor()
        while not stop.is_set():
            cur.execute("SELECT 1")
        c.close()
    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        results = []
        for _ in range(12):
            v = gw.verify()
            results.append((v.returncode, (v.stdout + v.stderr).strip()[:200]))
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert all(rc == 0 for rc, _ in results), results
    # every one of them saw records and checkpoints
    assert all("checkpoints verified" in out for _, out in results), results
