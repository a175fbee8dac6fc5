"""Attacks an agent could try through the PostgreSQL path: policy and review
bypasses, identity tricks, protocol abuse and audit tampering."""
import os
import struct
import time

import pytest

import pgwire
from conftest import APP_PASSWORD, DEFAULT_POLICIES, SELECT_ONLY, orders_conn

REVIEW_POLICIES = """
policies:
  - name: agents
    match: { groups: [ai-agents] }
    rules:
      - { action: block, sql: [drop, truncate] }
      - { action: review, sql: [delete], approvers: [dba], timeout: 2s, name: deletes }
      - { action: allow, sql: [select, insert, set, transaction] }
"""


@pytest.fixture
def rgw(gateway_factory):
    return gateway_factory(policies=REVIEW_POLICIES)


def session(gw):
    cn = pgwire.Conn(gw.port)
    got = cn.login("orders", gw.mint())
    assert got[-1] == (b"Z", b"I"), got
    return cn


def count(pg, amount):
    return pg.scalar("orders", "SELECT count(*) FROM orders WHERE amount = %d" % amount)


def autocommit(gw):
    c = gw.connect()
    c.autocommit = True
    return c


def refused(cur, sql, text=""):
    """sluice itself refuses sql: SQLSTATE 42501, text in the message."""
    import psycopg2
    with pytest.raises(psycopg2.Error) as ei:
        cur.execute(sql)
    assert ei.value.pgcode == "42501" and text in str(ei.value), (sql, ei.value)


def make_payroll(pg):
    pg.psql("orders", "CREATE SCHEMA IF NOT EXISTS hr AUTHORIZATION app; "
                      "CREATE TABLE IF NOT EXISTS hr.payroll (who text, pay int); "
                      "ALTER TABLE hr.payroll OWNER TO app")


# ------------------------------------------------- prepared statement confusion
#
# A DELETE needing review may be parsed freely (approval is asked at Execute).
# If sluice's idea of what a statement name means drifts from the server's,
# the held statement can later run under an allowed name without approval.

def _reviewed_delete(amount):
    return "DELETE FROM orders WHERE amount = %d" % amount


@pytest.mark.parametrize("how", ["reparse", "blocked_reparse", "sql_prepare",
                                 "skipped_close", "skipped_unnamed"])
def test_statement_name_confusion_never_skips_review(rgw, pg, how):
    amount = {"reparse": 818181, "blocked_reparse": 818182, "sql_prepare": 818183,
              "skipped_close": 818184, "skipped_unnamed": 818185}[how]
    pg.psql("orders", "INSERT INTO orders (customer, amount) VALUES (1, %d)" % amount)
    cn = session(rgw)
    name = "" if how == "skipped_unnamed" else "s1"
    # the server now holds `name` = a DELETE that needs approval
    cn.send(pgwire.parse(name, _reviewed_delete(amount)) + pgwire.SYNC)
    cn.until_ready()
    fail = pgwire.parse("", "SELECT * FROM no_such_table")  # errors: the rest is skipped
    if how == "reparse":
        cn.send(pgwire.parse(name, "SELECT 1") + pgwire.SYNC)
    elif how == "blocked_reparse":
        cn.send(pgwire.parse(name, "DROP TABLE orders") + pgwire.SYNC)
    elif how == "sql_prepare":
        cn.send(pgwire.query("PREPARE s1 AS SELECT 1"))
    elif how == "skipped_close":
        cn.send(fail + pgwire.msg(b"C", b"Ss1\0") + pgwire.SYNC)
        cn.until_ready()
        cn.send(pgwire.parse(name, "SELECT 1") + pgwire.SYNC)
    elif how == "skipped_unnamed":
        cn.send(pgwire.parse("x", "SELECT * FROM no_such_table") +
                pgwire.parse("", "SELECT 1") + pgwire.SYNC)
    cn.until_ready()
    if how == "sql_prepare":
        cn.send(pgwire.query("EXECUTE s1"))
    else:
        cn.send(pgwire.bind("", name) + pgwire.execute() + pgwire.SYNC)
    got = cn.until_ready()
    cn.close()
    # either refused or held for review (and timed out): never run unreviewed
    assert count(pg, amount) == "1", (how, got)
    assert pgwire.errors(got), got


def _rows(got):
    return [b[6:] for t, b in got if t == b"D"]


def test_statement_names_still_work_for_honest_clients(gw):
    cn = session(gw)
    # a definition and its use pipelined in one go, across sync groups:
    # the later group waits for the server to confirm the Parse
    cn.send(pgwire.parse("s1", "SELECT 'one'") + pgwire.SYNC +
            pgwire.bind("", "s1") + pgwire.execute() + pgwire.SYNC)
    got = cn.until_ready() + cn.until_ready()
    assert _rows(got) == [b"one"] and not pgwire.errors(got), got
    # Close, then the name can mean something else
    cn.send(pgwire.msg(b"C", b"Ss1\0") + pgwire.parse("s1", "SELECT 'two'") +
            pgwire.bind("", "s1") + pgwire.execute() + pgwire.SYNC)
    got = cn.until_ready()
    assert _rows(got) == [b"two"] and not pgwire.errors(got), got
    # a Parse that failed leaves no definition: preparing again works
    cn.send(pgwire.parse("s2", "SELECT * FROM no_such_table") + pgwire.SYNC)
    assert pgwire.errors(cn.until_ready())[0]["C"] == "42P01"
    cn.send(pgwire.parse("s2", "SELECT 'three'") + pgwire.bind("", "s2") + pgwire.execute() +
            pgwire.SYNC)
    got = cn.until_ready()
    assert _rows(got) == [b"three"] and not pgwire.errors(got), got
    # SQL PREPARE / EXECUTE / DEALLOCATE, and a name reused afterwards
    for sql, want in [("PREPARE q AS SELECT 'four'", []), ("EXECUTE q", [b"four"]),
                      ("DEALLOCATE q", []), ("PREPARE q AS SELECT 'five'", []),
                      ("EXECUTE q", [b"five"])]:
        cn.send(pgwire.query(sql))
        got = cn.until_ready()
        assert not pgwire.errors(got) and _rows(got) == want, (sql, got)
    # a statement unknown to sluice is refused, the session goes on
    cn.send(pgwire.bind("", "never_prepared") + pgwire.execute() + pgwire.SYNC)
    got = cn.until_ready()
    assert [e["C"] for e in pgwire.errors(got)] == ["42501"] and got[-1] == (b"Z", b"I")
    cn.send(pgwire.parse("", "SELECT 'six'") + pgwire.bind("", "") + pgwire.execute() +
            pgwire.SYNC)
    assert _rows(cn.until_ready()) == [b"six"]
    cn.close()


# ------------------------------------------------- classification gaps

@pytest.mark.parametrize("sql", [
    "COPY orders TO '/tmp/sluice-attack-copy.csv'",
    "COPY orders FROM '/etc/hostname'",
    "COPY (SELECT * FROM customers) TO '/tmp/sluice-attack-copy.csv' WITH (FORMAT csv)",
])
def test_copy_with_a_server_file_is_blocked_like_a_program(gw, sql):
    c = autocommit(gw)
    cur = c.cursor()
    refused(cur, sql, "destructive")
    cur.execute("SELECT 1")  # the session stays usable
    c.close()
    assert not os.path.exists("/tmp/sluice-attack-copy.csv")


# writes and housekeeping (LISTEN, VACUUM ...), but no reads
INSERT_ONLY = """
policies:
  - name: ingest
    match: { groups: [ai-agents] }
    rules:
      - { action: allow, sql: [insert, utility] }
"""


def test_values_statement_is_a_query(gateway_factory, pg):
    c = autocommit(gateway_factory(policies=INSERT_ONLY))
    cur = c.cursor()
    cur.execute("INSERT INTO orders (customer, amount) VALUES (1, 919191)")
    for sql in ["VALUES (pg_sleep(0))", "VALUES (1)"]:
        refused(cur, sql)
    c.close()
    assert pg.scalar("orders", "SELECT count(*) FROM orders WHERE amount = 919191") == "1"


BOUNDED_DELETES = """
policies:
  - name: cleanup
    match: { groups: [ai-agents] }
    rules:
      - { action: block, sql: [delete_all, update_all], message: "whole-table writes are not allowed" }
      - { action: allow, sql: [select, insert, update, delete] }
"""


@pytest.mark.parametrize("where", [
    "amount = 1 OR true",
    "true OR amount = 1",
    "amount = 1 OR 1 = 1",
    "NOT (amount = 1 AND false)",
    "(amount = 1 OR true) IS TRUE",
    "coalesce(amount = 1, true)",
    "CASE WHEN amount = 1 THEN true ELSE true END",
    "(amount = 1 OR %s)::boolean",
    "amount = amount",
    "orders.id >= orders.id OR amount = %s",
    "id IS NOT DISTINCT FROM id",
])
def test_tautology_beside_a_column_does_not_bound_a_delete(gateway_factory, pg, where):
    # A rule that lets an agent delete rows but not empty a table must not
    # be passed by a condition that names a column yet holds for every row;
    # psycopg2 sends the parameterised one with its value inlined, pgwire
    # through Parse/Bind with the value as a parameter.
    gw = gateway_factory(policies=BOUNDED_DELETES)
    c = autocommit(gw)
    cur = c.cursor()
    cur.execute("INSERT INTO orders (customer, amount) VALUES (1, 929292)")
    before = pg.scalar("orders", "SELECT count(*) FROM orders")
    sql = "DELETE FROM orders WHERE " + where
    import psycopg2
    with pytest.raises(psycopg2.Error) as ei:
        cur.execute(sql, (True,) if "%s" in where else None)
    assert ei.value.pgcode == "42501" and "whole-table writes" in str(ei.value), ei.value
    refused(cur, "UPDATE orders SET amount = 0 WHERE " + where.replace("%s", "true"),
            "whole-table writes")
    if "%s" in where:
        cn = session(gw)
        cn.send(pgwire.parse("", sql.replace("%s", "$1")) + pgwire.bind("", "", ["t"]) +
                pgwire.execute() + pgwire.SYNC)
        got = cn.until_ready()
        assert any(t == b"E" and b"42501" in body for t, body in got), got
        cn.close()
    assert pg.scalar("orders", "SELECT count(*) FROM orders") == before
    # a bounded delete still runs
    cur.execute("DELETE FROM orders WHERE amount = 929292 AND (customer = 1 OR true)")
    assert count(pg, 929292) == "0"
    c.close()


def test_a_column_of_another_using_item_does_not_bound_a_delete(gateway_factory, pg):
    """`DELETE FROM orders USING customers WHERE name = 'Ada'`: name is a
    column of customers, so every order goes (the USING join matches each
    order with Ada). Without the catalog sluice cannot tell whose an
    unqualified column is: next to other items it does not bound the
    target's rows, and a rule against whole-table writes holds."""
    gw = gateway_factory(policies=BOUNDED_DELETES)
    c = autocommit(gw)
    cur = c.cursor()
    before = pg.scalar("orders", "SELECT count(*) FROM orders")
    for sql in ["DELETE FROM orders USING customers WHERE name = 'Ada'",
                "UPDATE orders SET amount = 0 FROM customers WHERE name = 'Ada'"]:
        refused(cur, sql, "whole-table writes")
    assert pg.scalar("orders", "SELECT count(*) FROM orders") == before
    # qualified by the target, it bounds as before
    cur.execute("INSERT INTO orders (customer, amount) VALUES (1, 939393)")
    cur.execute("DELETE FROM orders USING customers WHERE orders.customer = customers.id "
                "AND customers.name = 'Ada' AND orders.amount = 939393")
    assert count(pg, 939393) == "0"
    c.close()


# ------------------------------------------------- audit tampering

def _rehash_chain(db):
    """What an attacker with write access does: recompute every hash so the
    chain links up again, and point the checkpoints at the new hashes."""
    import hashlib

    def s(v):
        b = (v or "").encode()
        return struct.pack("!Q", len(b)) + b
    prev = bytes(32)
    new = {}
    rows = db.execute("SELECT seq, ts, node, type, session, trace_id, span_id, data "
                      "FROM records ORDER BY seq").fetchall()
    for seq, ts, node, typ, sess, tr, sp, data in rows:
        h = hashlib.sha256(prev + struct.pack("!QQ", seq, ts & (2**64 - 1)) + s(node) +
                           s(typ) + s(sess) + s(tr) + s(sp) + s(data)).digest()
        db.execute("UPDATE records SET prev_hash = ?, hash = ? WHERE seq = ?",
                   (prev.hex(), h.hex(), seq))
        new[seq] = h.hex()
        prev = h
    for cid, seq in db.execute("SELECT id, seq FROM checkpoints").fetchall():
        db.execute("UPDATE checkpoints SET hash = ? WHERE id = ?", (new[seq], cid))
    return new


def _audited_gateway(gateway_factory):
    gw = gateway_factory()
    c = gw.connect()
    cur = c.cursor()
    for i in range(3):
        cur.execute("SELECT %d FROM orders LIMIT 1" % i)
    c.commit()
    c.close()
    assert gw.stop() == 0
    v = gw.verify()
    assert v.returncode == 0 and "with signatures" in v.stdout, v.stdout + v.stderr
    return gw


def test_audit_checkpoint_signature_edits_detected(gateway_factory):
    import json
    import sqlite3
    gw = _audited_gateway(gateway_factory)
    path = os.path.join(gw.data, "audit.db")
    db = sqlite3.connect(path)
    sig = db.execute("SELECT sig FROM checkpoints ORDER BY id LIMIT 1").fetchone()[0]
    forged = ("B" if sig[0] != "B" else "C") + sig[1:]
    db.execute("UPDATE checkpoints SET sig = ? WHERE id = (SELECT min(id) FROM checkpoints)",
               (forged,))
    db.commit()
    db.close()
    v = gw.verify()
    assert v.returncode == 1 and "bad signature" in v.stderr, v.stderr
    # the same edit in the sidecar only
    db = sqlite3.connect(path)
    db.execute("UPDATE checkpoints SET sig = ? WHERE id = (SELECT min(id) FROM checkpoints)",
               (sig,))
    db.commit()
    db.close()
    assert gw.verify().returncode == 0
    side = path + ".checkpoints"
    lines = open(side).read().splitlines()
    cp = json.loads(lines[0])
    cp["sig"] = ("B" if cp["sig"][0] != "B" else "C") + cp["sig"][1:]
    lines[0] = json.dumps(cp)
    open(side, "w").write("\n".join(lines) + "\n")
    v = gw.verify()
    assert v.returncode == 1 and "bad signature" in v.stderr, v.stderr


def test_audit_rewritten_chain_without_public_key_is_not_verified(gateway_factory):
    import json
    import sqlite3
    gw = _audited_gateway(gateway_factory)
    path = os.path.join(gw.data, "audit.db")
    db = sqlite3.connect(path)
    db.execute("UPDATE records SET data = replace(data, 'SELECT 1', 'SELECT 7') "
               "WHERE type = 'request'")
    new = _rehash_chain(db)
    db.commit()
    db.close()
    side = path + ".checkpoints"
    out = []
    for line in open(side).read().splitlines():
        cp = json.loads(line)
        cp["hash"] = new[cp["seq"]]
        out.append(json.dumps(cp))
    open(side, "w").write("\n".join(out) + "\n")
    # with the key, the rewrite shows
    v = gw.verify()
    assert v.returncode == 1 and "bad signature" in v.stderr, v.stderr
    # the attacker also removes the public key: still never "verified"
    os.unlink(os.path.join(gw.data, "audit-signing.pub"))
    v = gw.verify()
    assert v.returncode == 1 and "public key" in v.stderr, v.stdout + v.stderr


def test_audit_export_unknown_session_is_empty(gateway_factory):
    gw = _audited_gateway(gateway_factory)
    for sid in ["no-such-session", "' OR 1=1 --", "%", ""]:
        r = gw.run("audit", "export", "--format", "jsonl", "--session", sid, check=False)
        assert r.returncode in (0, 1) and r.stdout.strip() == "", (sid, r.stdout[:200])


# ------------------------------------------------- secrets never stored

def test_token_pasted_as_user_name_never_reaches_the_audit_trail(gw):
    import glob
    import hashlib
    tok = gw.mint()
    # a client that puts the token in the user name too (connection named by
    # the database), and one whose token is refused
    cn = pgwire.Conn(gw.port)
    got = cn.login(tok, tok, database="orders")
    assert got[-1] == (b"Z", b"I"), got
    cn.send(pgwire.query("SELECT 1"))
    cn.until_ready()
    cn.close()
    cn = pgwire.Conn(gw.port)
    bad = gw.mint(ttl="-1h")
    assert pgwire.errors(cn.login(bad, bad, database="orders"))[0]["C"] == "28P01"
    cn.close()
    recs = gw.export()
    opened = [r for r in recs if r["type"] == "session_open"]
    assert opened and opened[-1]["data"]["user"] == \
        "sha256:" + hashlib.sha256(tok.encode()).hexdigest()
    assert any(r["type"] == "auth_failure" for r in recs)
    for f in glob.glob(os.path.join(gw.data, "*")):
        data = open(f, "rb").read()
        for secret in (tok, bad, APP_PASSWORD):
            assert secret.encode() not in data, (f, secret[:10])
    log = gw.logtext()
    assert tok not in log and bad not in log and APP_PASSWORD not in log


# ------------------------------------------- simple Query inside an extended batch
#
# After an error in an extended-protocol batch the server skips everything up
# to Sync, a simple Query included: it would never be answered, and every
# later answer would be paired with the wrong statement (in the audit trail
# too). sluice refuses the mix with a protocol error instead of losing track.

@pytest.mark.parametrize("first", ["failing_parse", "good_parse"])
def test_query_inside_unsynced_extended_batch_is_refused(gw, first):
    cn = session(gw)
    sql = "SELECT * FROM no_such_table" if first == "failing_parse" else "SELECT 1"
    cn.send(pgwire.parse("", sql) + pgwire.query("SELECT 2") + pgwire.SYNC)
    got = cn.until_ready()
    errs = pgwire.errors(got)
    assert errs and errs[-1]["C"] == "08P01" and errs[-1]["S"] == "FATAL", got
    assert "Sync" in errs[-1]["M"]
    assert cn.closed()
    cn.close()


def test_query_after_synced_extended_batch_still_runs(gw):
    cn = session(gw)
    cn.send(pgwire.parse("", "SELECT * FROM no_such_table") + pgwire.bind("", "") +
            pgwire.execute() + pgwire.SYNC)
    got = cn.until_ready()
    assert pgwire.errors(got)[0]["C"] == "42P01", got
    cn.send(pgwire.parse("", "SELECT 41") + pgwire.bind("", "") + pgwire.execute() +
            pgwire.SYNC)
    got = cn.until_ready()
    assert [b for t, b in got if t == b"D"], got
    cn.send(pgwire.query("SELECT 42"))
    got = cn.until_ready()
    rows = [b for t, b in got if t == b"D"]
    assert rows and rows[0].endswith(b"42"), got
    assert got[-1] == (b"Z", b"I")
    cn.close()


# ------------------------------------------------------------ startup settings
#
# Startup parameters are applied before any statement and never pass policy:
# with a superuser vaulted credential, session_replication_role=replica
# silently disables triggers (foreign keys, audit triggers), log_statement=none
# hides the session from the server's log, *_preload_libraries load code.

@pytest.mark.parametrize("key,value", [
    ("session_replication_role", "replica"),
    ("log_statement", "none"),
    ("local_preload_libraries", "x"),
    ("session_preload_libraries", "x"),
    ("dynamic_library_path", "/tmp"),
    ("role", "postgres"),
    ("session_authorization", "postgres"),
    ("SESSION_REPLICATION_ROLE", "replica"),
    ("row_security", "off"),
])
def test_server_settings_in_startup_are_refused(gw, key, value):
    cn = pgwire.Conn(gw.port)
    cn.send(pgwire.startup("orders", "orders", {key: value}))
    got = cn.until_ready()
    errs = pgwire.errors(got)
    assert errs and errs[0]["C"] == "28000" and errs[0]["S"] == "FATAL", got
    assert key in errs[0]["M"] and "SET" in errs[0]["M"]
    assert cn.closed()
    cn.close()


def test_refused_startup_name_is_sanitised_in_the_reply(gw):
    cn = pgwire.Conn(gw.port)
    cn.send(pgwire.startup("orders", "orders", {"x\x1b[31m" + "y" * 200: "1"}))
    errs = pgwire.errors(cn.until_ready())
    assert errs and errs[0]["C"] == "28000"
    assert "\x1b" not in errs[0]["M"] and len(errs[0]["M"]) < 200
    cn.close()


def test_client_presentation_settings_in_startup_still_apply(gw):
    # what JDBC, node-postgres and asyncpg send at startup
    cn = pgwire.Conn(gw.port)
    cn.send(pgwire.startup("orders", "orders", {
        "client_encoding": "UTF8", "DateStyle": "ISO", "TimeZone": "Asia/Tokyo",
        "extra_float_digits": "2", "application_name": "agent-7",
        "search_path": "public", "statement_timeout": "5000"}))
    t, body = cn.read_msg()
    assert t == b"R", (t, body)
    cn.send(pgwire.msg(b"p", pgwire.cstr(gw.mint())))
    got = cn.until_ready()
    assert got[-1][0] == b"Z", got
    cn.send(pgwire.query("SHOW TimeZone"))
    rows = [b for t, b in cn.until_ready() if t == b"D"]
    assert rows and rows[0].endswith(b"Asia/Tokyo")
    cn.send(pgwire.query("SHOW statement_timeout"))
    rows = [b for t, b in cn.until_ready() if t == b"D"]
    assert rows and rows[0].endswith(b"5s")
    cn.close()


# ------------------------------------------------------------- named portals
#
# The server refuses a Bind to a portal name that exists (42P03) and keeps the
# old portal; a ROLLBACK TO SAVEPOINT makes the transaction usable again with
# that old portal still there. sluice must not believe the name now means the
# new statement, or a DELETE held for review runs as "SELECT 1".

def _portal_close(name):
    return pgwire.msg(b"C", b"P" + pgwire.cstr(name))


def test_portal_rebound_after_savepoint_never_skips_review(rgw, pg):
    amount = 818190
    pg.psql("orders", "INSERT INTO orders (customer, amount) VALUES (1, %d)" % amount)
    cn = session(rgw)
    cn.send(pgwire.query("BEGIN"))
    cn.until_ready()
    # portal P = the DELETE (bound, not executed: review is asked at Execute)
    cn.send(pgwire.parse("s1", _reviewed_delete(amount)) + pgwire.bind("P", "s1") + pgwire.SYNC)
    assert not pgwire.errors(cn.until_ready())
    cn.send(pgwire.query("SAVEPOINT sp"))
    cn.until_ready()
    cn.send(pgwire.parse("s2", "SELECT 1") + pgwire.bind("P", "s2") + pgwire.SYNC)
    assert pgwire.errors(cn.until_ready())  # refused: P exists
    cn.send(pgwire.query("ROLLBACK TO SAVEPOINT sp"))
    assert not pgwire.errors(cn.until_ready())
    cn.send(pgwire.execute("P") + pgwire.SYNC)
    got = cn.until_ready()  # held for review, times out
    cn.send(pgwire.query("COMMIT"))
    cn.until_ready()
    cn.close()
    assert count(pg, amount) == "1", got
    assert pgwire.errors(got), got


@pytest.mark.parametrize("how", ["skipped_close", "failed_unnamed_bind"])
def test_portal_kept_by_the_server_never_skips_review(rgw, pg, how):
    # The server keeps a portal sluice might think gone or replaced: a Close
    # skipped after an error, or a Bind to the unnamed portal refused before
    # it replaces the old one (wrong parameter count). The savepoint makes
    # the transaction usable again with that portal in it.
    amount = {"skipped_close": 818191, "failed_unnamed_bind": 818192}[how]
    pg.psql("orders", "INSERT INTO orders (customer, amount) VALUES (1, %d)" % amount)
    cn = session(rgw)
    name = "P" if how == "skipped_close" else ""
    cn.send(pgwire.query("BEGIN"))
    cn.until_ready()
    cn.send(pgwire.parse("s1", _reviewed_delete(amount)) + pgwire.bind(name, "s1") + pgwire.SYNC)
    assert not pgwire.errors(cn.until_ready())
    cn.send(pgwire.query("SAVEPOINT sp"))
    cn.until_ready()
    if how == "skipped_close":
        cn.send(pgwire.parse("", "SELECT * FROM no_such_table") + _portal_close(name) +
                pgwire.SYNC)
    else:
        cn.send(pgwire.parse("s2", "SELECT $1::int") + pgwire.bind("", "s2") + pgwire.SYNC)
    assert pgwire.errors(cn.until_ready())
    cn.send(pgwire.query("ROLLBACK TO SAVEPOINT sp"))
    assert not pgwire.errors(cn.until_ready())
    cn.send(pgwire.execute(name) + pgwire.SYNC)
    got = cn.until_ready()  # held for review, times out
    cn.send(pgwire.query("COMMIT"))
    cn.until_ready()
    cn.close()
    assert count(pg, amount) == "1", (how, got)
    assert pgwire.errors(got), got


def test_named_portals_still_work_for_honest_clients(gw):
    cn = session(gw)
    cn.send(pgwire.parse("s1", "SELECT 'p'") + pgwire.bind("P", "s1") + pgwire.execute("P") +
            pgwire.SYNC)
    got = cn.until_ready()
    assert _rows(got) == [b"p"] and not pgwire.errors(got), got
    # the transaction ended, and the portal with it: the name is free again,
    # also when the next use is pipelined right behind (it waits for the answer)
    cn.send(pgwire.bind("P", "s1") + pgwire.execute("P") + pgwire.SYNC +
            pgwire.bind("P", "s1") + pgwire.execute("P") + pgwire.SYNC)
    got = cn.until_ready() + cn.until_ready()
    assert _rows(got) == [b"p", b"p"] and not pgwire.errors(got), got
    # inside a transaction block a second Bind of a live name is refused (the
    # server would refuse it too); after Close it binds again
    cn.send(pgwire.query("BEGIN"))
    cn.until_ready()
    cn.send(pgwire.bind("Q", "s1") + pgwire.SYNC)
    assert not pgwire.errors(cn.until_ready())
    cn.send(pgwire.bind("Q", "s1") + pgwire.SYNC)
    assert pgwire.errors(cn.until_ready())
    cn.send(pgwire.query("ROLLBACK"))
    cn.until_ready()
    cn.send(pgwire.query("BEGIN"))
    cn.until_ready()
    cn.send(pgwire.bind("Q", "s1") + _portal_close("Q") + pgwire.bind("Q", "s1") +
            pgwire.execute("Q") + pgwire.SYNC)
    got = cn.until_ready()
    assert _rows(got) == [b"p"] and not pgwire.errors(got), got
    cn.send(pgwire.query("COMMIT"))
    assert cn.until_ready()[-1] == (b"Z", b"I")
    cn.close()


# ------------------------------------------------ thousands of statement names
#
# Statement and portal names live in hash maps: a client with tens of
# thousands of prepared statements (or a pipeline that long) costs linear
# work, where a list walk per message made it quadratic and stalled every
# session on the same worker thread for minutes.

def _cpu_seconds(pid):
    f = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def test_tens_of_thousands_of_prepared_statements(gw):
    n = 60000
    cpu0 = _cpu_seconds(gw.proc.pid)
    cn = pgwire.Conn(gw.port, timeout=60)
    assert cn.login("orders", gw.mint())[-1] == (b"Z", b"I")
    # one pipeline: every Parse is still unanswered while the next comes
    cn.send(b"".join(pgwire.parse("s%d" % i, "SELECT %d" % i) for i in range(n)) + pgwire.SYNC)
    got = cn.until_ready()
    assert not pgwire.errors(got) and sum(t == b"1" for t, _ in got) == n
    # every name is confirmed now; use them all
    cn.send(b"".join(pgwire.bind("", "s%d" % i) + pgwire.execute() for i in range(n)) +
            pgwire.SYNC)
    got = cn.until_ready()
    rows = _rows(got)
    assert not pgwire.errors(got) and len(rows) == n
    assert rows[0] == b"0" and rows[-1] == str(n - 1).encode()
    # closing them all, then the names are unknown
    cn.send(b"".join(pgwire.msg(b"C", b"S" + pgwire.cstr("s%d" % i)) for i in range(n)) +
            pgwire.SYNC)
    assert not pgwire.errors(cn.until_ready())
    cn.send(pgwire.bind("", "s7") + pgwire.execute() + pgwire.SYNC)
    assert [e["C"] for e in pgwire.errors(cn.until_ready())] == ["42501"]
    cn.close()
    # Not a speed test: the gateway's CPU time, with a wide margin. Linear
    # work is ~2 s here (~6 s under AddressSanitizer); a list walk per
    # message was ~30 s (and stalled the worker's other sessions meanwhile).
    assert _cpu_seconds(gw.proc.pid) - cpu0 < 20


# ------------------------------------------------ qualified names in block rules
#
# A rule that names hr.payroll or pg_catalog.pg_read_file must not be
# sidestepped by leaving the schema out: search_path decides what an
# unqualified name is, and the agent may set it.

QUALIFIED_BLOCKS = """
policies:
  - name: agents
    match: { groups: [ai-agents] }
    rules:
      - { action: block, tables: [hr.payroll], message: "payroll is off limits" }
      - { action: block, functions: [pg_catalog.pg_read_file], message: "no file reads" }
      - { action: allow, sql: [select, set] }
"""


def test_block_rules_on_qualified_names_see_unqualified_uses(gateway_factory, pg):
    make_payroll(pg)
    pg.psql("orders", "INSERT INTO hr.payroll VALUES ('ceo', 1000000)")
    c = autocommit(gateway_factory(policies=QUALIFIED_BLOCKS))
    cur = c.cursor()
    cur.execute("SET search_path = hr, public")
    for sql, msg in [("SELECT * FROM payroll", "payroll is off limits"),
                     ("SELECT * FROM hr.payroll", "payroll is off limits"),
                     ("SELECT * FROM orders.hr.payroll", "payroll is off limits"),
                     ("SELECT pg_read_file('/etc/hostname')", "no file reads"),
                     # 300 names before it must not push payroll off the list
                     ("WITH " + ", ".join("t%d AS (SELECT 1)" % i for i in range(300)) +
                      " SELECT * FROM " + ", ".join("t%d" % i for i in range(300)) +
                      ", payroll", "payroll is off limits")]:
        refused(cur, sql, msg)
    cur.execute("SELECT count(*) FROM orders")  # the rest still runs
    assert cur.fetchone()[0] > 0
    c.close()


# ----------------------------------------------- memory one session can hold
#
# Prepared statement texts stay in sluice's memory as long as the server
# keeps them; one agent must not fill the memory every session shares.

def test_prepared_statement_memory_per_session_is_bounded(gw):
    big = "SELECT '" + "x" * (512 << 10) + "'"  # 512 KiB (texts over 1 MiB are refused)
    cn = pgwire.Conn(gw.port, timeout=30)
    assert cn.login("orders", gw.mint())[-1] == (b"Z", b"I")
    # what is closed is given back: 3 x 40 MiB prepared and closed in turn
    for rnd in range(3):
        cn.send(b"".join(pgwire.parse("r%d_%d" % (rnd, i), big) for i in range(80)) + pgwire.SYNC)
        assert not pgwire.errors(cn.until_ready())
        cn.send(b"".join(pgwire.msg(b"C", b"S" + pgwire.cstr("r%d_%d" % (rnd, i)))
                         for i in range(80)) + pgwire.SYNC)
        assert not pgwire.errors(cn.until_ready())
    # holding more than 64 MiB ends the session with a clear error
    errs = []
    for i in range(160):
        cn.send(pgwire.parse("s%d" % i, big) + pgwire.SYNC)
        got = cn.until_ready()
        errs = pgwire.errors(got)
        if errs:
            break
    assert errs and errs[0]["C"] == "54000" and errs[0]["S"] == "FATAL", (i, errs)
    assert "64 MiB" in errs[0]["M"] and 120 <= i <= 128, i
    assert cn.closed()
    cn.close()
    # other sessions are unaffected
    cn = session(gw)
    cn.send(pgwire.query("SELECT 1"))
    assert not pgwire.errors(cn.until_ready())
    cn.close()


# ------------------------------------- functions that act beyond a SELECT
#
# An agent allowed only `select` must not reach the server's file system,
# signal other backends or reload its configuration by calling a function
# from a SELECT: such calls carry the kind they amount to (COPY to/from a
# file is copy_program, and so is pg_read_file), so default deny refuses them.

def test_side_effect_functions_are_not_selects(gateway_factory):
    gw = gateway_factory(policies=SELECT_ONLY)
    c = autocommit(gw)
    cur = c.cursor()
    for sql, kind in [("SELECT pg_read_file('/etc/hostname')", "copy_program"),
                      ("SELECT * FROM pg_catalog.pg_ls_dir('.')", "copy_program"),
                      ("SELECT lo_import('/etc/hostname')", "copy_program"),
                      ("WITH x AS (SELECT pg_stat_file('PG_VERSION') AS s) SELECT s FROM x",
                       "copy_program"),
                      ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity", "alter_system"),
                      ("SELECT pg_reload_conf()", "alter_system"),
                      ("SELECT setval('orders_id_seq', 1)", "update"),
                      ("SELECT lo_unlink(1)", "delete"),
                      ("SELECT query_to_xml('SELECT pg_read_file(''/etc/hostname'')', "
                       "true, true, '')", "do")]:
        refused(cur, sql, "statement kind %s is not allowed" % kind)
    # the same through the extended protocol (Parse), and the session still works
    cn = pgwire.Conn(gw.port)
    assert cn.login("orders", gw.mint())[-1] == (b"Z", b"I")
    cn.send(pgwire.parse("", "SELECT pg_read_file($1)") + pgwire.SYNC)
    errs = pgwire.errors(cn.until_ready())
    assert errs and errs[0].get("C") == "42501" and "copy_program" in errs[0].get("M", ""), errs
    cn.close()
    cur.execute("SELECT count(*) FROM orders")
    assert cur.fetchone()[0] > 0
    c.close()


def test_functions_that_notify_or_run_query_text_are_not_selects(gateway_factory, pg):
    # pg_notify is NOTIFY (a job queue listening on the channel would run
    # work a read-only agent must not start); ts_rewrite's two-argument
    # form runs a query given as a string, like query_to_xml. A listener
    # straight on the server hears nothing from the refused call.
    import select
    import time
    import psycopg2
    gw = gateway_factory(policies=SELECT_ONLY)
    lis = psycopg2.connect(host="127.0.0.1", port=pg.port, user="app", password=APP_PASSWORD,
                           dbname="orders")
    lis.autocommit = True
    lis.cursor().execute("LISTEN jobs")
    c = autocommit(gw)
    cur = c.cursor()
    refused(cur, "SELECT pg_notify('jobs', 'drop everything')",
            "statement kind utility is not allowed")
    refused(cur, "SELECT ts_rewrite('a'::tsquery, 'SELECT ''a''::tsquery, "
                 "''b''::tsquery FROM orders')", "statement kind do is not allowed")
    # the pure three-argument form is a select and runs
    cur.execute("SELECT ts_rewrite('a & b'::tsquery, 'a'::tsquery, 'c'::tsquery)::text")
    assert cur.fetchone()[0] == "'b' & 'c'"
    time.sleep(0.3)
    select.select([lis], [], [], 0.2)
    lis.poll()
    assert lis.notifies == []
    lis.close()
    c.close()


# ------------------------------------ allow rules scoped to tables
#
# "allow update on scratch" must not let an UPDATE of another table through
# because scratch is also named somewhere in the statement (FROM, a
# subquery, a second statement): an allow rule's tables must cover every
# table the statement updates.

SCRATCH_ONLY = """
policies:
  - name: agents
    match: { groups: [ai-agents] }
    rules:
      - { action: allow, sql: [update], tables: [scratch] }
      - { action: allow, sql: [select] }
"""


def test_allow_rule_tables_cover_every_table_touched(gateway_factory, pg):
    pg.psql("orders", "CREATE TABLE IF NOT EXISTS scratch (id int, a int); "
                      "ALTER TABLE scratch OWNER TO app; "
                      "INSERT INTO scratch SELECT 1, 1 WHERE NOT EXISTS (SELECT 1 FROM scratch)")
    c = autocommit(gateway_factory(policies=SCRATCH_ONLY))
    cur = c.cursor()
    cur.execute("SELECT sum(amount) FROM orders")
    before = cur.fetchone()[0]
    for sql in ["UPDATE orders SET amount = 0 FROM scratch WHERE true",
                "UPDATE orders SET amount = (SELECT a FROM scratch LIMIT 1)",
                "UPDATE scratch SET a = 2; UPDATE orders SET amount = 0",
                "WITH s AS (SELECT id FROM scratch) UPDATE orders SET amount = 0 "
                "WHERE id IN (SELECT id FROM s)"]:
        refused(cur, sql, "default deny")
    cur.execute("SELECT sum(amount) FROM orders")
    assert cur.fetchone()[0] == before  # nothing reached the orders table
    cur.execute("UPDATE scratch SET a = a + 1 WHERE id = 1")  # what the rule is for
    assert cur.rowcount == 1
    # reading another table while updating scratch is still an update of scratch
    cur.execute("UPDATE scratch SET a = (SELECT count(*) FROM orders) WHERE id = 1")
    assert cur.rowcount == 1
    c.close()


# ---------------------------- DROP / COMMENT ON name tables as string lists
#
# Where ddl is allowed but one table is protected by a block rule, the
# statements that name the table outside the usual relation nodes must be
# seen too.

PROTECTED_TABLE = """
policies:
  - name: agents
    match: { groups: [ai-agents] }
    rules:
      - { action: block, tables: [hr.payroll], message: "payroll is off limits" }
      - { action: allow, sql: [select, ddl, grant] }
"""


def test_block_rule_on_a_table_sees_drop_and_comment(gateway_factory, pg):
    make_payroll(pg)
    c = autocommit(gateway_factory(policies=PROTECTED_TABLE))
    cur = c.cursor()
    for sql in ["DROP TABLE hr.payroll",
                "DROP TABLE IF EXISTS scratch_never, hr.payroll CASCADE",
                "COMMENT ON TABLE hr.payroll IS 'mine now'",
                "DROP TRIGGER IF EXISTS t ON hr.payroll",
                "DROP POLICY IF EXISTS p ON hr.payroll",
                # a whole schema reaches the table without naming it
                "DROP SCHEMA hr CASCADE",
                "ALTER SCHEMA hr RENAME TO hr_gone",
                "GRANT SELECT ON ALL TABLES IN SCHEMA hr TO PUBLIC"]:
        refused(cur, sql, "payroll is off limits")
    cur.execute("SELECT to_regclass('hr.payroll') IS NOT NULL")
    assert cur.fetchone()[0] is True
    cur.execute("CREATE TABLE IF NOT EXISTS scratch_ddl (a int)")  # other ddl still runs
    cur.execute("DROP TABLE scratch_ddl")
    c.close()


def test_block_rule_on_a_table_sees_functions_that_read_it_by_name(gateway_factory, pg):
    # table_to_xml('hr.payroll', ...) reads the whole table without a FROM
    # list; schema_to_xml every table of a schema; crosstab runs a query
    # given as text. The allowed call of the same shape runs first, so a
    # classification cached by shape would let the second one through.
    make_payroll(pg)
    pg.psql("orders", "INSERT INTO hr.payroll VALUES ('ceo', 999999)")
    c = autocommit(gateway_factory(policies=PROTECTED_TABLE))
    cur = c.cursor()
    cur.execute("SELECT table_to_xml('public.orders', true, false, '')")
    assert "<orders" in cur.fetchone()[0]
    for sql in ["SELECT table_to_xml('hr.payroll', true, false, '')",
                "SELECT table_to_xml('HR.PAYROLL'::regclass, true, false, '')",
                "SELECT table_to_xml_and_xmlschema(' hr . \"payroll\" ', true, false, '')",
                "SELECT schema_to_xml('hr', true, false, '')"]:
        refused(cur, sql, "payroll is off limits")
    # a name the gateway cannot read is not allowed by a select rule
    for sql in ["SELECT table_to_xml('hr.payroll'::regclass::oid, true, false, '')",
                "SELECT database_to_xml(true, false, '')"]:
        refused(cur, sql)
    # (sluice refuses it itself: 42501, before the server could say that
    # tablefunc is not installed)
    refused(cur, "SELECT * FROM crosstab('SELECT who, who, pay FROM hr.payroll') "
                 "AS t(a text, b int)")
    c.close()


# ------------------------------------------------------------ read-only connections

def ro_connections(pg):
    return orders_conn(pg, """  - name: orders_ro
    type: postgres
    target: 127.0.0.1:%d
    database: orders
    user: app
    password_env: TEST_APP_PW
    read_only: true
""" % pg.port)


@pytest.fixture
def ro_objects(pg):
    # what a database already holds and a select-only policy cannot see
    # into: a function that writes, a sequence, and a function that turns
    # read-only off for the rest of the session
    pg.psql("orders", """
        CREATE TABLE ro_visits (who text);
        CREATE SEQUENCE ro_seq;
        CREATE FUNCTION ro_log_visit(w text) RETURNS int LANGUAGE sql
          AS $$ INSERT INTO ro_visits VALUES (w) RETURNING 1 $$;
        CREATE FUNCTION ro_flip() RETURNS text LANGUAGE sql
          AS $$ SELECT set_config('default_transaction_read_only', 'off', false) $$;
        GRANT ALL ON ro_visits, ro_seq TO app;
    """)
    yield
    pg.psql("orders", "DROP FUNCTION ro_flip(); DROP FUNCTION ro_log_visit(text); "
                      "DROP SEQUENCE ro_seq; DROP TABLE ro_visits")


def test_read_only_connection_refuses_writes_even_through_functions(gateway_factory, pg,
                                                                    ro_objects):
    """connections[].read_only: the server itself keeps every transaction
    read-only (sluice logs in with default_transaction_read_only=on), so a
    write the classifier cannot see (a function, nextval) fails with the
    server's 25006 even where policy allows writes; statements that would
    turn it off are refused in every spelling; a function that turns it
    off ends the session before anything else runs on it."""
    import psycopg
    import psycopg2
    # the policy allows insert, DO and CALL: only read_only stands in the way
    gw = gateway_factory(connections=ro_connections(pg), policies=DEFAULT_POLICIES.replace(
        "copy_to, utility]", "copy_to, utility, do, call]"))
    tok = gw.mint()
    visits = lambda: pg.scalar("orders", "SELECT count(*) FROM ro_visits")  # noqa: E731

    c = gw.connect(conn="orders_ro", token=tok)
    c.autocommit = True
    cur = c.cursor()
    cur.execute("SELECT count(*) > 0 FROM customers")
    assert cur.fetchone() == (True,)
    cur.execute("SHOW default_transaction_read_only")
    assert cur.fetchone() == ("on",)
    for sql in ("INSERT INTO ro_visits VALUES ('x')", "SELECT ro_log_visit('x')",
                "SELECT nextval('ro_seq')", "UPDATE customers SET name = name"):
        with pytest.raises(psycopg2.Error) as ex:
            cur.execute(sql)
        assert ex.value.pgcode == "25006", (sql, ex.value.pgerror)
    for sql in ("SET default_transaction_read_only = off",
                "SET default_transaction_read_only TO 'false'",
                "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
                "BEGIN READ WRITE",
                "SELECT set_config('default_transaction_read_only', 'off', false)",
                'SET U&"default_transaction_read_onl\\0079" = off',
                "SELECT 1; SET transaction_read_only = 0",
                # a DO block may COMMIT and go on in a transaction of its own
                "DO $$ BEGIN PERFORM set_config('default_transaction_read_only', 'off', "
                "false); COMMIT; INSERT INTO ro_visits VALUES ('do'); END $$",
                "SELECT dblink_exec('dbname=orders', 'INSERT INTO ro_visits VALUES (1)')"):
        with pytest.raises(psycopg2.Error) as ex:
            cur.execute(sql)
        assert ex.value.pgcode == "42501", (sql, ex.value.pgerror)
        assert "orders_ro is read-only" in ex.value.pgerror, ex.value.pgerror
    # what only goes back to the login's value is fine, and stays read-only
    for sql in ("RESET ALL", "DISCARD ALL", "SET default_transaction_read_only TO DEFAULT",
                "SET transaction_read_only = on"):
        cur.execute(sql)
    with pytest.raises(psycopg2.Error) as ex:
        cur.execute("SELECT ro_log_visit('x')")
    assert ex.value.pgcode == "25006"
    # psycopg2's own read-only switch works; asking it for read-write is refused
    c2 = gw.connect(conn="orders_ro", token=tok)
    c2.set_session(readonly=True)
    k = c2.cursor()
    k.execute("SELECT count(*) > 0 FROM orders")
    assert k.fetchone() == (True,)
    c2.rollback()
    c2.set_session(readonly=False)
    with pytest.raises(psycopg2.Error) as ex:
        c2.cursor().execute("SELECT 1")
    assert ex.value.pgcode == "42501"
    c2.close()
    # the extended protocol (psycopg 3 prepares) is decided the same way
    with psycopg.connect(host="127.0.0.1", port=gw.port, user="orders_ro", dbname="orders",
                         password=tok, sslmode="disable", autocommit=True) as c3:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c3.execute("SELECT set_config(%s, 'off', false)",
                       ("default_transaction_read_only",), prepare=True)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            c3.execute("SELECT ro_log_visit(%s)", ("y",), prepare=True)
        assert c3.execute("SELECT 1", prepare=True).fetchone() == (1,)
    # a client cannot log in with it turned off
    raw = pgwire.Conn(gw.port)
    raw.send(pgwire.startup("orders_ro", "orders", {"default_transaction_read_only": "off"}))
    t, body = raw.read_msg()
    assert t == b"E" and "cannot be turned off" in pgwire.fields(body)["M"], body
    raw.close()
    # a function that turns it off: the session ends at once, with the
    # reason (a FATAL after the statement's result, as the server's own)
    with psycopg.connect(host="127.0.0.1", port=gw.port, user="orders_ro", dbname="orders",
                         password=tok, sslmode="disable", autocommit=True) as c3:
        with pytest.raises(psycopg.OperationalError) as ex:
            c3.execute("SELECT ro_flip()")
        assert "read-only" in str(ex.value) and "session is closed" in str(ex.value)
        with pytest.raises(psycopg.OperationalError):
            c3.execute("SELECT ro_log_visit('z')")
    with pytest.raises(psycopg2.Error):  # the same through psycopg2
        cur.execute("SELECT ro_flip()")
    with pytest.raises(psycopg2.Error):
        cur.execute("SELECT ro_log_visit('z')")
    c.close()
    assert visits() == "0"
    # the next session (maybe on a pooled upstream connection) is read-only again
    c = gw.connect(conn="orders_ro", token=tok)
    c.autocommit = True
    with pytest.raises(psycopg2.Error) as ex:
        c.cursor().execute("SELECT ro_log_visit('x')")
    assert ex.value.pgcode == "25006"
    c.close()
    assert visits() == "0"
    # the same database through the connection without read_only writes
    c = gw.connect(conn="orders", token=tok)
    c.autocommit = True
    c.cursor().execute("SELECT ro_log_visit('w')")
    c.close()
    assert visits() == "1"
    recs = gw.export()
    refused = [r for r in recs if r["type"] == "request" and r["data"].get("rule") == "read_only"]
    assert len(refused) >= 7, refused
    assert any("read-only" in r["data"].get("reason", "") for r in recs
               if r["type"] == "session_close"), "no session_close names the reason"
    assert gw.verify().returncode == 0


def test_costly_statements_cannot_crash_or_stall_the_gateway(gateway_factory):
    """Classification runs before any policy, for any agent with a token:
    1+1+...+1 of 1 MiB (a parse tree 500,000 levels deep, written out
    recursively by libpg_query) crashed the gateway from a worker's stack;
    comments nested 40,000 deep, or -+-+...1, took the server's scanner
    minutes on the worker every session shares. Both are refused (42501) at once; another
    agent is served meanwhile and the gateway lives on."""
    gw = gateway_factory(policies=SELECT_ONLY, workers=1)
    other = session(gw)
    for sql in ["SELECT 1" + "+1" * 500000,
                "SELECT 1" + "::int" * 150000,
                "SELECT 1 " + "/*" * 40000 + "*/" * 40000,
                "SELECT " + "-+" * 300000 + "1"]:
        cn = session(gw)
        t0 = time.time()
        cn.send(pgwire.query(sql))
        cn.s.settimeout(60)
        got = cn.until_ready()
        took = time.time() - t0
        errs = pgwire.errors(got)
        assert errs and errs[0]["C"] == "42501" and got[-1] == (b"Z", b"I"), got[:2]
        cn.close()
        other.send(pgwire.query("SELECT 1"))
        assert other.until_ready()[-1] == (b"Z", b"I")
        assert gw.proc.poll() is None, "the gateway died"
        print("%d bytes refused in %.2f s" % (len(sql), took))
    other.close()
