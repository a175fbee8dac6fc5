"""sluice's view of the server's protocol state must be the server's own:
statement and portal names as the server keys them (63 bytes), and COPY FROM
STDIN, during which the server ignores Sync and Flush. A difference would
pair answers with the wrong statements: a reviewed statement run under
another's decision, results recorded against the wrong request."""
import os
import socket
import time

import pytest

import pgwire
from conftest import wait_for
from test_attacks import count, session

POLICIES = """
policies:
  - name: agents
    match: { groups: [ai-agents] }
    rules:
      - { action: block, sql: [drop, truncate] }
      - { action: review, sql: [delete], approvers: [dba], timeout: 2s, name: deletes }
      - { action: allow, sql: [select, insert, set, transaction, copy_from, ddl] }
"""


@pytest.fixture
def rgw(gateway_factory):
    return gateway_factory(policies=POLICIES)


def close_stmt(name):
    return pgwire.msg(b"C", b"S" + name.encode() + b"\0")


def close_portal(name):
    return pgwire.msg(b"C", b"P" + name.encode() + b"\0")


def statements(gw):
    return [r["data"] for r in gw.export() if r["type"] == "request"]


def until_ready(cn, timeout=10):
    cn.s.settimeout(timeout)
    try:
        return cn.until_ready()
    except socket.timeout:
        raise AssertionError("no ReadyForQuery: sluice and the server are out of step")


# ----------------------------------------------------------- long names

def test_portal_names_past_63_bytes_are_one_portal(rgw, pg):
    """The server keys portals by their first 63 bytes: an Execute of
    C..C2 runs the DELETE bound to C..C1. It must be held for review like
    any Execute of it (and time out here), not forwarded as a SQL cursor."""
    amount = 919101
    pg.psql("orders", "INSERT INTO orders (customer, amount) VALUES (1, %d)" % amount)
    cn = session(rgw)
    p1, p2 = "C" * 63 + "1", "C" * 63 + "2"
    cn.send(pgwire.parse("del", "DELETE FROM orders WHERE amount = %d" % amount) +
            pgwire.bind(p1, "del") + pgwire.execute(p2) + pgwire.SYNC)
    got = until_ready(cn)
    errs = pgwire.errors(got)
    assert errs and errs[0].get("C") == "42501", got
    assert count(pg, amount) == "1"
    cn.close()
    texts = [d.get("text") for d in statements(rgw)]
    assert any(t and t.startswith("DELETE") for t in texts), texts


def test_statement_names_past_63_bytes_are_one_statement(rgw, pg):
    """Close of A..A2 closes the server's A..A1 (the same 63 bytes); the
    DELETE prepared as A..A2 is then what A..A1 means: a Bind of A..A1 must
    be decided (and reviewed) as the DELETE, never as the first SELECT."""
    amount = 919102
    pg.psql("orders", "INSERT INTO orders (customer, amount) VALUES (1, %d)" % amount)
    cn = session(rgw)
    x1, x2 = "A" * 63 + "1", "A" * 63 + "2"
    cn.send(pgwire.parse(x1, "SELECT 1") + pgwire.SYNC)
    until_ready(cn)
    cn.send(close_stmt(x2) + pgwire.SYNC)
    until_ready(cn)
    cn.send(pgwire.parse(x2, "DELETE FROM orders WHERE amount = %d" % amount) + pgwire.SYNC)
    until_ready(cn)
    cn.send(pgwire.bind("", x1) + pgwire.execute() + pgwire.SYNC)
    got = until_ready(cn)
    assert pgwire.errors(got), got
    assert count(pg, amount) == "1"
    cn.close()
    assert "SELECT 1" not in [d.get("text") for d in statements(rgw)
                              if d.get("decision") == "allow"]


def test_long_names_still_work_for_honest_clients(rgw):
    cn = session(rgw)
    name, portal = "s" * 80, "p" * 70
    cn.send(pgwire.parse(name, "SELECT 41 + 1") + pgwire.bind(portal, name) +
            pgwire.execute(portal) + pgwire.SYNC)
    got = until_ready(cn)
    assert (b"D", b"\x00\x01\x00\x00\x00\x0242") in got, got
    cn.close()


# ----------------------------------------------------------- COPY FROM STDIN

def copy_in_extended(gw):
    """A session in COPY IN mode as libpq starts it: Parse/Bind/Execute/Sync
    of a COPY, up to the server's CopyInResponse."""
    cn = session(gw)
    cn.send(pgwire.query("CREATE TEMP TABLE ci (a int)"))
    until_ready(cn)
    cn.send(pgwire.parse("", "COPY ci FROM STDIN") + pgwire.bind("", "") +
            pgwire.execute() + pgwire.SYNC)
    while True:
        m = cn.read_msg()
        if m[0] in (b"G", b"E", b"Z"):
            break
    assert m[0] == b"G", m
    return cn


def test_copy_in_through_the_extended_protocol_as_libpq_sends_it(rgw):
    """libpq (PQexecParams of a COPY): Parse/Bind/Execute/Sync, then the
    data, CopyDone and another Sync: the server ignores the first Sync, so
    two Syncs get one ReadyForQuery. Later statements, including ones that
    need settled settings (a non-ASCII byte), are answered and audited."""
    cn = copy_in_extended(rgw)
    cn.send(pgwire.msg(b"d", b"1\n2\n") + pgwire.msg(b"c") + pgwire.SYNC)
    got = until_ready(cn)
    assert (b"C", b"COPY 2\x00") in got, got
    cn.send(pgwire.parse("n1", "SELECT 1") + pgwire.SYNC)
    until_ready(cn)
    cn.send(pgwire.bind("", "n1") + pgwire.execute() + pgwire.SYNC)
    assert (b"C", b"SELECT 1\x00") in until_ready(cn)
    cn.send(pgwire.query("SELECT 'é', count(*) FROM ci"))
    got = until_ready(cn)
    assert not pgwire.errors(got) and (b"C", b"SELECT 1\x00") in got, got
    cn.close()
    recs = rgw.export()
    results = [r["data"] for r in recs if r["type"] == "result"]
    tags = [r.get("tag") for r in results]
    assert tags == ["CREATE TABLE", "COPY 2", "SELECT 1", "SELECT 1"], tags


def test_sync_inside_copy_in_never_shifts_answers(rgw, pg):
    """A Sync sent during COPY IN gets no answer from the server. Counted
    as one, every later answer would be paired with the statement before:
    a DELETE parsed under a name would be believed to be the SELECT that
    the server skipped, and run without review."""
    amount = 919103
    pg.psql("orders", "INSERT INTO orders (customer, amount) VALUES (1, %d)" % amount)
    cn = session(rgw)
    cn.send(pgwire.query("CREATE TEMP TABLE ci (a int)"))
    until_ready(cn)
    cn.send(pgwire.query("COPY ci FROM STDIN"))
    assert cn.read_msg()[0] == b"G"
    cn.send(pgwire.SYNC + pgwire.msg(b"d", b"7\n") + pgwire.msg(b"c"))
    got = until_ready(cn)
    assert (b"C", b"COPY 1\x00") in got, got
    cn.send(pgwire.execute("no_such_portal") + pgwire.parse("s", "SELECT 1") + pgwire.SYNC)
    assert pgwire.errors(until_ready(cn))
    cn.send(pgwire.parse("s", "DELETE FROM orders WHERE amount = %d" % amount) + pgwire.SYNC)
    until_ready(cn)
    cn.send(pgwire.bind("", "s") + pgwire.execute() + pgwire.SYNC)
    got = until_ready(cn)
    assert pgwire.errors(got), got  # held for review, timed out
    assert count(pg, amount) == "1"
    cn.close()


def test_copy_that_fails_to_start_keeps_the_session_in_step(rgw):
    """The server refuses the COPY (no such table): no COPY mode, so the
    data it gets is ignored and each Sync is answered."""
    cn = session(rgw)
    cn.send(pgwire.parse("", "COPY no_such_table FROM STDIN") + pgwire.bind("", "") +
            pgwire.execute() + pgwire.SYNC + pgwire.msg(b"d", b"1\n") + pgwire.msg(b"c") +
            pgwire.SYNC)
    got = until_ready(cn)
    assert pgwire.errors(got)[0]["C"] == "42P01", got
    assert until_ready(cn) == [(b"Z", b"I")]
    cn.send(pgwire.query("SELECT 'ok'"))
    assert (b"C", b"SELECT 1\x00") in until_ready(cn)
    cn.close()


def test_other_messages_during_copy_in_end_the_session(rgw):
    """The server ends the connection at anything but COPY data, Sync or
    Flush during COPY IN; sluice says so itself, and records no statement
    for the Query it would have sent."""
    cn = session(rgw)
    cn.send(pgwire.query("CREATE TEMP TABLE ci (a int)"))
    until_ready(cn)
    cn.send(pgwire.query("COPY ci FROM STDIN"))
    assert cn.read_msg()[0] == b"G"
    cn.send(pgwire.query("SELECT 42"))
    got = until_ready(cn)
    errs = pgwire.errors(got)
    assert errs and errs[-1]["C"] == "08P01" and "COPY" in errs[-1]["M"], got
    assert "SELECT 42" not in [d.get("text") for d in statements(rgw)]


# ----------------------------------------------------------- memory

def test_large_messages_across_sessions_are_bounded(gateway_factory):
    """Each message is bounded by max_message_bytes, but many sessions each
    holding most of one would not be: past gateway.max_buffered_bytes the
    session whose buffer grows is ended (53200), the others go on, and the
    memory comes back when they finish."""
    gw = gateway_factory(policies=POLICIES,
                         gateway_extra="  max_buffered_bytes: 12582912\n")
    big = 4 << 20
    held = []
    refused = None
    for _ in range(3):  # each buffer grows to 8 MiB: the second is one too many
        cn = session(gw)
        held.append(cn)
        # a Query that claims 4 MiB, of which all but a few bytes are sent
        try:
            cn.send(b"Q" + (big + 4).to_bytes(4, "big") + b"SELECT '" + b"x" * (big - 16))
        except (ConnectionResetError, BrokenPipeError):
            # ended while still sending: its FATAL may be lost with the reset
            refused = "reset"
            break
        cn.s.settimeout(5)  # time for the gateway to read it all
        try:
            m = cn.read_msg()
        except socket.timeout:
            continue
        except ConnectionResetError:
            refused = "reset"
            break
        refused = pgwire.errors([m]) if m else None
        break
    if refused == "reset":
        assert wait_for(lambda: "over gateway.max_buffered_bytes" in gw.logtext())
    else:
        assert refused and refused[0]["C"] == "53200", refused
        assert "max_buffered_bytes" in refused[0]["M"]
    # the first sessions finish their statements and are answered
    first = held[0]
    first.send(b"x" * 6 + b"'\0")
    first.s.settimeout(10)
    got = first.until_ready()
    # (over the 1 MiB sluice classifies: refused, the session goes on)
    assert got[-1] == (b"Z", b"I") and pgwire.errors(got)[0]["C"] == "42501", got
    for cn in held:
        cn.close()
    # with the memory back (once the gateway has closed them), large rows
    # (held whole for masking) pass again
    for _ in range(20):
        cn = session(gw)
        cn.send(pgwire.query("SELECT repeat('y', 3 << 20)"))
        cn.s.settimeout(10)
        got = cn.until_ready()
        cn.close()
        if not any(e["C"] == "53200" for e in pgwire.errors(got)):
            break
        time.sleep(0.5)
    assert (b"C", b"SELECT 1\x00") in got, [t for t, _ in got]


def test_prepared_statements_across_sessions_are_bounded(gateway_factory):
    """64 MiB of prepared statements per session, and one token could open
    sessions without end: gateway.max_held_bytes bounds them over all
    sessions (53200, logged); what a session held is given back when it
    closes."""
    gw = gateway_factory(policies=POLICIES, gateway_extra="  max_held_bytes: 8388608\n")
    text = "SELECT 1 /*" + "x" * (512 << 10) + "*/"

    def prepare(cn, prefix, n):
        for i in range(n):
            cn.send(pgwire.parse("%s%d" % (prefix, i), text) + pgwire.SYNC)
            got = until_ready(cn)
            errs = pgwire.errors(got)
            if errs:
                return errs
        return []
    a = session(gw)
    assert prepare(a, "a", 10) == []  # 5 MiB
    b = session(gw)
    errs = prepare(b, "b", 10)
    assert errs and errs[0]["C"] == "53200" and "max_held_bytes" in errs[0]["M"], errs
    assert b.closed()
    a.close()
    assert wait_for(lambda: "gateway.max_held_bytes" in gw.logtext())
    # a's share came back: another session may hold as much again
    def fits():
        c = session(gw)
        ok = prepare(c, "c", 10) == []
        c.close()
        return ok
    assert wait_for(fits, timeout=10)


def test_stalled_large_message_is_ended_at_message_timeout(gateway_factory):
    """Past 1 MiB an incomplete message holds buffer budget that every
    session shares: a client that sends most of one and stalls is ended at
    gateway.message_timeout (08P01, logged); one that completes its large
    message in time is served, and so is everyone else meanwhile."""
    gw = gateway_factory(policies=POLICIES, gateway_extra="  message_timeout: 3s\n")
    big = 4 << 20
    stalled = session(gw)
    stalled.send(b"Q" + (big + 4).to_bytes(4, "big") + b"SELECT '" + b"x" * (big - 16))
    # a slow but steady client: its 4 MiB statement arrives in pieces within the deadline
    slow = session(gw)
    body = b"SELECT length('" + b"y" * (big - 40) + b"')\0"
    slow.send(b"Q" + (len(body) + 4).to_bytes(4, "big") + body[:2 << 20])
    time.sleep(0.5)
    slow.send(body[2 << 20:])
    slow.s.settimeout(10)
    got = slow.until_ready()
    assert got[-1] == (b"Z", b"I"), got  # answered (refused by size or run; not cut)
    assert not any(e["C"] == "08P01" for e in pgwire.errors(got)), got
    # meanwhile others are served
    other = session(gw)
    other.send(pgwire.query("SELECT 1"))
    assert until_ready(other)[-1] == (b"Z", b"I")
    other.close()
    stalled.s.settimeout(10)
    m = stalled.read_msg()
    errs = pgwire.errors([m])
    assert errs and errs[0]["C"] == "08P01" and "message_timeout" in errs[0]["M"], m
    assert stalled.closed()
    slow.close()
    assert wait_for(lambda: "was not completed within gateway.message_timeout" in gw.logtext())


def test_message_timeout_does_not_run_while_sluice_is_not_reading(gateway_factory, pg):
    """Large Binds pipelined behind a slow statement: the server does not
    take them while it sleeps, so sluice stops reading the client, half of
    a Bind in its buffer. That wait is sluice's, not the client's: the
    deadline does not run then, and the batch completes."""
    import threading
    pg.psql("orders", "CREATE TABLE IF NOT EXISTS blobs (b text); GRANT ALL ON blobs TO app")
    gw = gateway_factory(policies=POLICIES, gateway_extra="  message_timeout: 2s\n")
    cn = pgwire.Conn(gw.port, timeout=60)
    assert cn.login("orders", gw.mint())[-1] == (b"Z", b"I")
    cn.send(pgwire.parse("ins", "INSERT INTO blobs VALUES ($1)") + pgwire.SYNC)
    until_ready(cn)
    big = "x" * (8 << 20)
    data = pgwire.parse("", "SELECT pg_sleep(5)") + pgwire.bind("", "") + pgwire.execute()
    for _ in range(3):
        data += pgwire.bind("", "ins", [big]) + pgwire.execute()
    data += pgwire.SYNC
    sent = threading.Thread(target=cn.send, args=(data,))
    sent.start()
    got = until_ready(cn, timeout=60)
    sent.join(60)
    assert not pgwire.errors(got), pgwire.errors(got)
    assert sum(t == b"C" and b.startswith(b"INSERT") for t, b in got) == 3, got[-3:]
    cn.close()
    pg.psql("orders", "DROP TABLE blobs")


def test_message_timeout_is_checked(gateway_factory, tmp_path):
    """A bad duration is a config error naming the key."""
    gw = gateway_factory(policies=POLICIES)
    bad = tmp_path / "bad.yaml"
    bad.write_text(open(gw.config).read().replace("gateway:\n", "gateway:\n  message_timeout: soon\n", 1))
    r = gw.run("config", "check", str(bad), check=False)
    assert r.returncode != 0 and "message_timeout" in (r.stderr + r.stdout), r


def test_sync_between_copy_data_ends_the_session(rgw):
    """A bad row ends the COPY where the server reads it, so a Sync sent
    after data may be ignored or answered: sluice cannot tell which, and
    ends the session instead of guessing (the answers would shift)."""
    cn = session(rgw)
    cn.send(pgwire.query("CREATE TEMP TABLE ci (a int)"))
    until_ready(cn)
    cn.send(pgwire.query("COPY ci FROM STDIN"))
    assert cn.read_msg()[0] == b"G"
    cn.send(pgwire.msg(b"d", b"notanint\n") + pgwire.SYNC)
    got = until_ready(cn)
    errs = pgwire.errors(got)
    assert errs and errs[-1]["C"] == "08P01" and "Sync between COPY data" in errs[-1]["M"], got


def test_copy_with_a_bad_row_as_libpq_sends_it(rgw):
    """Extended protocol, a row the server rejects: the error, one
    ReadyForQuery for the client's closing Sync, and the session goes on."""
    cn = copy_in_extended(rgw)
    cn.send(pgwire.msg(b"d", b"1\n") + pgwire.msg(b"d", b"notanint\n") + pgwire.msg(b"c") +
            pgwire.SYNC)
    got = until_ready(cn)
    assert pgwire.errors(got)[0]["C"] == "22P02" and got[-1] == (b"Z", b"I"), got
    cn.send(pgwire.query("SELECT count(*) FROM ci"))
    got = until_ready(cn)
    assert (b"D", b"\x00\x01\x00\x00\x00\x010") in got, got
    cn.close()


def test_copy_execute_skipped_by_a_failed_batch_does_not_hang(rgw):
    """The server skips an Execute after an error in its batch and answers
    nothing until the Sync: sluice must pass that Sync on, not hold it for
    a COPY that will never start."""
    cn = session(rgw)
    cn.send(pgwire.query("CREATE TEMP TABLE ci (a int)"))
    until_ready(cn)
    cn.send(pgwire.parse("cp", "COPY ci FROM STDIN") + pgwire.SYNC)
    until_ready(cn)
    cn.send(pgwire.execute("no_such_portal") + pgwire.SYNC)
    assert pgwire.errors(until_ready(cn))
    cn.send(pgwire.execute("no_such_portal") + pgwire.bind("", "cp") + pgwire.execute() +
            pgwire.SYNC)
    got = until_ready(cn)
    assert pgwire.errors(got) and got[-1][0] == b"Z", got
    cn.send(pgwire.query("SELECT 'still here'"))
    assert (b"C", b"SELECT 1\x00") in until_ready(cn)
    cn.close()


def test_rows_waiting_for_slow_clients_count_against_the_budget(gateway_factory):
    """Large rows held for clients that do not read count too: past the
    budget a session is ended (53200) instead of the gateway holding them
    all."""
    gw = gateway_factory(policies=POLICIES,
                         gateway_extra="  max_buffered_bytes: 41943040\n")
    conns = []
    for _ in range(6):
        cn = session(gw)
        cn.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        cn.send(pgwire.query("SELECT repeat('x', 15 << 20)"))
        conns.append(cn)
    time.sleep(3)
    codes = []
    for cn in conns:
        cn.s.settimeout(20)
        got = cn.until_ready()
        errs = pgwire.errors(got)
        codes.append(errs[0]["C"] if errs else "ok")
        cn.close()
    assert "53200" in codes and "ok" in codes, codes


# ------------------------------------------------- Bind parameters in the trail

def assert_not_stored(gw, *values):
    """None of values in the audit store, its WAL, journals or sidecar."""
    files = [f for f in os.listdir(gw.data) if f.startswith("audit.db")]
    assert "audit.db" in files, files
    for f in files:
        data = open(os.path.join(gw.data, f), "rb").read()
        for v in values:
            assert v not in data, (f, v)


def test_execute_record_names_its_bind_parameters(rgw, pg):
    """`DELETE ... WHERE id = $1` says nothing without $1: an Execute's
    request record carries its parameters (text, NULL, binary as hex), an
    SSN among them masked like the text's would be, and none at all when the
    statement names a secret (the value bound to `password = $1` is it)."""
    cn = session(rgw)
    cn.send(pgwire.parse("q", "SELECT id FROM orders WHERE id = $1 OR customer::text = $2 "
                              "OR $3::text IS NULL") +
            pgwire.bind("", "q", ["7", "123-45-6789", None]) + pgwire.execute() +
            pgwire.parse("s", "SELECT count(*) FROM orders WHERE $1::text <> 'x' "
                              "/* api_token */") +
            pgwire.bind("", "s", ["tok_live_5ecretvalue"]) + pgwire.execute() +
            pgwire.bind("", "q", ["8", "it's", "x"]) + pgwire.execute() + pgwire.SYNC)
    got = until_ready(cn)
    assert not pgwire.errors(got), got
    cn.close()
    recs = [d for d in statements(rgw) if "FROM orders" in d.get("text", "")]
    params = [d.get("params") for d in recs]
    assert params == ["$1 = '7', $2 = '***********', $3 = NULL",
                      "<withheld: the statement names a secret>",
                      "$1 = '8', $2 = 'it''s', $3 = 'x'"], recs
    # nowhere in the store, its WAL or its journals
    assert_not_stored(rgw, b"5ecretvalue", b"123-45-6789")
    # the transcript shows them under the statement
    sid = [r["session"] for r in rgw.export() if r["type"] == "request"][0]
    out = rgw.run("audit", "replay", "--session", sid).stdout
    assert "parameters: $1 = '7', $2 = '***********', $3 = NULL" in out, out


def test_simple_protocol_records_have_no_params(rgw):
    """Only an Execute of a Bind with parameters carries them."""
    cn = session(rgw)
    cn.send(pgwire.query("SELECT 1"))
    until_ready(cn)
    cn.send(pgwire.parse("", "SELECT 2") + pgwire.bind("", "") + pgwire.execute() +
            pgwire.SYNC)
    until_ready(cn)
    cn.close()
    recs = [d for d in statements(rgw) if d.get("text") in ("SELECT 1", "SELECT 2")]
    assert len(recs) == 2 and all("params" not in d for d in recs), recs


@pytest.mark.parametrize("sql", [
    "SELECT $1::text AS pwd",
    "SELECT $1::text AS \"Api_Keys\"",
    "SELECT $1::text AS U&\"x\\0041\"",
    "SELECT $1::text /* credentials */",
    "SELECT $1::text AS authorization_",
])
def test_parameters_of_statements_naming_secret_keys_are_withheld(rgw, sql):
    """The keys the secret detector knows (pwd, key, credential,
    authorization, ...) and U&"..." names, whose escapes can spell any of
    them, withhold an Execute's parameters from the trail."""
    cn = session(rgw)
    cn.send(pgwire.parse("", sql) + pgwire.bind("", "", ["hunter2-zz9"]) + pgwire.execute() +
            pgwire.SYNC)
    got = until_ready(cn)
    cn.close()
    assert got[-1] == (b"Z", b"I"), got
    recs = [d for d in statements(rgw) if d.get("text") == sql]
    assert recs and recs[-1].get("params") == "<withheld: the statement names a secret>", recs
    assert_not_stored(rgw, b"hunter2-zz9")


def test_parameters_in_binary_or_with_controls_meet_the_detectors(rgw):
    """An SSN sent in binary, a card number followed by a newline: shown as
    hex they passed the detectors; their printable characters are shown as
    they are, so they are masked like text."""
    import struct
    cn = session(rgw)
    vals = [b"123-45-6789", b"4111 1111 1111 1111\n"]
    body = pgwire.cstr("") + pgwire.cstr("") + struct.pack("!HHH", 2, 1, 0)
    body += struct.pack("!H", len(vals))
    for v in vals:
        body += struct.pack("!i", len(v)) + v
    body += struct.pack("!H", 0)
    cn.send(pgwire.parse("", "SELECT $1::text, $2::text") + pgwire.msg(b"B", body) +
            pgwire.execute() + pgwire.SYNC)
    got = until_ready(cn)
    cn.close()
    assert got[-1] == (b"Z", b"I"), got
    rec = [d for d in statements(rgw) if d.get("text") == "SELECT $1::text, $2::text"][-1]
    assert rec["params"].startswith("$1 = binary '"), rec
    assert "escaped '" in rec["params"] and "\\x0a" in rec["params"], rec
    assert "6789" not in rec["params"].split("$2")[0] or "***" in rec["params"], rec
    assert_not_stored(rgw, b"123-45-6789", b"3132332d", b"4111 1111 1111 1111")


def test_parameters_after_a_refused_parse_are_not_recorded(rgw, pg):
    """A driver sends Parse/Bind/Execute/Sync at once; sluice refuses the
    Parse, the server skips the rest. The Execute names the unnamed portal,
    which is an older one to sluice: its new parameters were recorded under
    the older statement's text, in clear."""
    cn = session(rgw)
    cn.send(pgwire.parse("", "SELECT $1::int") + pgwire.bind("", "", ["1"]) +
            pgwire.execute() + pgwire.SYNC)
    until_ready(cn)
    cn.send(pgwire.parse("", "DROP TABLE orders") + pgwire.bind("", "", ["zz-q1w2e3-secret"]) +
            pgwire.execute() + pgwire.SYNC)
    got = until_ready(cn)
    cn.close()
    assert pgwire.errors(got)[0]["C"] == "42501", got
    recs = [d for d in statements(rgw) if "params" in d]
    assert all("zz-q1w2e3" not in d["params"] for d in recs), recs
    assert_not_stored(rgw, b"zz-q1w2e3-secret")
