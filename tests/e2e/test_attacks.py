"""Attacks an agent could try through the PostgreSQL path: policy and review
bypasses, identity tricks, protocol abuse and audit tampering."""
import os
import struct

import pytest

import pgwire

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
    import psycopg2
    c = gw.connect()
    c.autocommit = True
    with pytest.raises(psycopg2.Error) as ei:
        c.cursor().execute(sql)
    assert ei.value.pgcode == "42501" and "destructive" in str(ei.value), str(ei.value)
    cur = c.cursor()
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
    import psycopg2
    gw = gateway_factory(policies=INSERT_ONLY)
    c = gw.connect()
    c.autocommit = True
    cur = c.cursor()
    cur.execute("INSERT INTO orders (customer, amount) VALUES (1, 919191)")
    for sql in ["VALUES (pg_sleep(0))", "VALUES (1)"]:
        with pytest.raises(psycopg2.Error) as ei:
            cur.execute(sql)
        assert ei.value.pgcode == "42501", sql
    c.close()
    assert pg.scalar("orders", "SELECT count(*) FROM orders WHERE amount = 919191") == "1"
