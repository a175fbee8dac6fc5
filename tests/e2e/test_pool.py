"""Upstream connection reuse (connection keys pool_size, pool_idle_timeout).

A session that ends cleanly, idle and outside a transaction, leaves its
logged-in upstream connection to the worker's pool; the pool resets it with
DISCARD ALL and hands it to the next session of the same connection asking
for the same database, user and startup parameters. Every test runs one
worker so that consecutive sessions meet the same pool.
"""
import os
import subprocess
import time

import psycopg2
import pytest

import pgwire
from conftest import SLUICE, orders_conn, wait_for


def one(gw, sql, token=None, **kw):
    c = gw.connect(token=token, **kw)
    c.autocommit = True
    cur = c.cursor()
    cur.execute(sql)
    row = cur.fetchone()
    c.close()
    return row


def settled(pg, pid):
    """Waits until the pool's DISCARD ALL on backend pid is answered: a client's
    close returns before sluice has reset the connection, and a session that
    comes in the meantime gets a new one."""
    wait_for(lambda: pg.scalar(
        "postgres", "SELECT count(*) FROM pg_stat_activity WHERE pid = %d AND "
                    "state = 'idle' AND query = 'DISCARD ALL'" % pid) == "1", timeout=3)
    time.sleep(0.05)


def backend_pid(gw, pg=None, **kw):
    pid = one(gw, "SELECT pg_backend_pid()", **kw)[0]
    if pg is not None:
        settled(pg, pid)
    return pid


def opens(gw):
    return [r["data"] for r in gw.export() if r["type"] == "session_open"]


def app_backends(pg, tag):
    """Backends of this test's sessions (other tests' gateways may still be
    closing theirs): the sessions name themselves with application_name."""
    return int(pg.scalar("postgres", "SELECT count(*) FROM pg_stat_activity "
                                     "WHERE application_name = '%s'" % tag))


def unique_tag():
    return "pooltest-%d-%d" % (os.getpid(), int(time.time() * 1e6))


def test_next_session_reuses_the_upstream_and_audit_says_so(gateway_factory, pg):
    gw = gateway_factory(workers=1)
    tok = gw.mint()
    first = backend_pid(gw, pg, token=tok)
    second = backend_pid(gw, pg, token=tok)
    third = backend_pid(gw, pg, token=gw.mint(sub="agent-2"))
    assert first == second == third
    recs = opens(gw)
    assert [r["upstream_reused"] for r in recs] == [False, True, True], recs
    assert [r["upstream_pid"] for r in recs] == [first] * 3
    assert gw.verify().returncode == 0


def test_reconnecting_at_once_waits_for_the_reset(gateway_factory, pg):
    """A connection per tool call, twenty in a row without a pause: all get
    the one backend (whether the reset is already done when the next session
    comes or the session waits for it; test_a_session_waits_for_a_reset_in_progress
    makes the reset slow to force the wait)."""
    gw = gateway_factory(workers=1)
    tok = gw.mint()
    pids = [backend_pid(gw, token=tok) for _ in range(20)]
    assert set(pids) == {pids[0]}, pids
    assert [r["upstream_reused"] for r in opens(gw)] == [False] + [True] * 19


def test_nothing_of_a_session_reaches_the_next(gateway_factory, pg):
    gw = gateway_factory(workers=1)
    c = gw.connect(token=gw.mint(sub="dba-1", groups="dba"))  # may create a temp table
    c.autocommit = True
    cur = c.cursor()
    cur.execute("SELECT pg_backend_pid()")
    pid = cur.fetchone()[0]
    cur.execute("SET work_mem = '77MB'")
    cur.execute("SET search_path = pg_catalog")
    cur.execute("SELECT set_config('application_name', 'leaky', false)")
    cur.execute("PREPARE leftover AS SELECT 1")
    cur.execute("CREATE TEMP TABLE scratch (secret text)")
    cur.execute("INSERT INTO scratch VALUES ('from-session-one')")
    cur.execute("SELECT pg_advisory_lock(4242)")
    cur.execute("LISTEN chan")
    cur.execute("DECLARE held CURSOR WITH HOLD FOR SELECT 1")
    cur.execute("SET ROLE NONE")
    c.close()
    settled(pg, pid)

    c = gw.connect()
    c.autocommit = True
    cur = c.cursor()
    cur.execute("SELECT pg_backend_pid(), current_setting('work_mem'), "
                "current_setting('search_path'), current_setting('application_name'), "
                "(SELECT count(*) FROM pg_prepared_statements), "
                "(SELECT count(*) FROM pg_cursors), "
                "(SELECT count(*) FROM pg_class WHERE relname = 'scratch' "
                "   AND relpersistence = 't'), "
                "(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'), "
                "(SELECT count(*) FROM pg_listening_channels())")
    row = cur.fetchone()
    # the same backend, with nothing left of the first session
    assert row[0] == pid
    assert row[1:] == ("4MB", '"$user", public', "", 0, 0, 0, 0, 0), row
    # the client was told the settings as they are now
    assert c.get_parameter_status("application_name") == ""
    c.close()


def test_reuse_after_a_large_result(gateway_factory, pg):
    """The pool gives back the input buffer a large result grew."""
    gw = gateway_factory(workers=1)
    pid, n = one(gw, "SELECT pg_backend_pid(), length(repeat('x', 3000000))")
    big = one(gw, "SELECT repeat('x', 3000000)")[0]
    assert len(big) == 3000000 and n == 3000000
    settled(pg, pid)
    pid2, v = one(gw, "SELECT pg_backend_pid(), repeat('y', 10)")
    assert pid2 == pid and v == "y" * 10


def test_a_session_left_in_a_transaction_is_not_reused(gateway_factory, pg):
    gw = gateway_factory(workers=1)
    c = gw.connect()
    cur = c.cursor()
    cur.execute("SELECT pg_backend_pid()")
    pid = cur.fetchone()[0]
    cur.execute("INSERT INTO orders (customer, amount) VALUES (1, 987654)")
    c.close()  # psycopg2 is in a transaction: the server rolls it back
    assert backend_pid(gw) != pid
    assert pg.scalar("orders", "SELECT count(*) FROM orders WHERE amount = 987654") == "0"
    assert wait_for(lambda: pg.scalar(
        "postgres", "SELECT count(*) FROM pg_stat_activity WHERE pid = %d" % pid) == "0")


def wire_pid(gw, conn):
    conn.send(pgwire.query("SELECT pg_backend_pid()"))
    msgs = conn.until_ready()
    rows = [b for t, b in msgs if t == b"D"]
    assert rows, msgs
    # DataRow: int16 ncols, int32 len, value
    return int(rows[0][6:].decode())


@pytest.mark.parametrize("pending", [
    pgwire.query("SELECT pg_sleep(30)"),                    # a statement still running
    pgwire.parse("", "SELECT 1") + pgwire.bind("", ""),     # extended messages, no Sync
    pgwire.query("BEGIN"),                                  # answered, but in a transaction
])
def test_a_session_that_ends_unsettled_is_not_reused(gateway_factory, pending):
    gw = gateway_factory(workers=1)
    c = pgwire.Conn(gw.port)
    c.login("orders", gw.mint())
    pid = wire_pid(gw, c)
    c.send(pending)
    time.sleep(0.3)
    c.send(pgwire.msg(b"X"))
    assert c.closed()
    c.close()
    assert backend_pid(gw) != pid


def test_a_tls_upstream_is_reused_with_its_tls(gateway_factory, pg):
    gw = gateway_factory(workers=1)
    tok = gw.mint()
    a = backend_pid(gw, pg, conn="orders_tls", token=tok)
    c = gw.connect(conn="orders_tls", token=tok)
    c.autocommit = True
    cur = c.cursor()
    cur.execute("SELECT pg_backend_pid(), ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    assert cur.fetchone() == (a, True)
    c.close()
    recs = opens(gw)
    assert [(r["upstream_reused"], r["upstream_tls"], r["upstream_auth"]) for r in recs] == [
        (False, True, "scram-sha-256-plus"), (True, True, "scram-sha-256-plus")]


def test_different_startup_parameters_get_their_own_upstream(gateway_factory, pg):
    gw = gateway_factory(workers=1)
    a = backend_pid(gw, pg, client_encoding="LATIN1")
    b = backend_pid(gw, pg, client_encoding="UTF8")
    assert a != b
    assert backend_pid(gw, pg, client_encoding="LATIN1") == a
    assert backend_pid(gw, pg, client_encoding="UTF8") == b
    assert one(gw, "SELECT current_setting('client_encoding')",
               client_encoding="LATIN1")[0] == "LATIN1"


def appname_session(gw, name):
    c = gw.connect(application_name=name)
    c.autocommit = True
    cur = c.cursor()
    cur.execute("SELECT pg_backend_pid(), current_setting('application_name')")
    pid, server_side = cur.fetchone()
    told = c.get_parameter_status("application_name")
    c.close()
    return pid, server_side, told


def test_each_session_gets_its_own_application_name_on_a_reused_upstream(gateway_factory, pg):
    """An agent that puts a traceparent in application_name per connection
    still reuses upstreams: sluice sets the name on the connection first."""
    gw = gateway_factory(workers=1)
    names = ["00-%032x-%016x-01" % (i + 1, i + 7) for i in range(3)] + ["o'brien", "plain"]
    got = []
    for n in names:
        got.append(appname_session(gw, n))
        settled(pg, got[-1][0])
    assert len({g[0] for g in got}) == 1, got
    assert [(g[1], g[2]) for g in got] == [(n, n) for n in names]
    recs = opens(gw)
    assert [r["upstream_reused"] for r in recs] == [False] + [True] * 4
    traces = [r["trace_id"] for r in gw.export() if r["type"] == "request"]
    assert traces[:3] == ["%032x" % (i + 1) for i in range(3)], traces
    # a name that cannot be quoted as a standard string gets its own login
    pid, server_side, told = appname_session(gw, "back\\slash")
    assert pid != got[0][0] and server_side == told == "back\\slash"


def test_policy_and_masking_are_the_new_sessions_own(gateway_factory, pg):
    policies = """
policies:
  - name: readers
    match: { groups: [readers] }
    rules:
      - { action: allow, sql: [select] }
    mask:
      columns: [ssn]
  - name: writers
    match: { groups: [writers] }
    rules:
      - { action: allow, sql: [select, insert, update, delete] }
"""
    gw = gateway_factory(workers=1, policies=policies)
    writer = gw.mint(sub="w", groups="writers")
    reader = gw.mint(sub="r", groups="readers")
    pid, ssn = one(gw, "SELECT pg_backend_pid(), ssn FROM customers WHERE id = 1",
                   token=writer)
    assert ssn == "123-45-6789"
    settled(pg, pid)
    pid2, ssn2 = one(gw, "SELECT pg_backend_pid(), ssn FROM customers WHERE id = 1",
                     token=reader)
    assert pid2 == pid
    assert ssn2 != "123-45-6789" and "123-45" not in ssn2
    c = gw.connect(token=reader)
    c.autocommit = True
    with pytest.raises(psycopg2.Error) as e:
        c.cursor().execute("UPDATE customers SET name = 'x' WHERE id = 1")
    assert e.value.pgcode == "42501"
    c.close()


def test_pool_size_zero_turns_reuse_off(gateway_factory, pg):
    gw = gateway_factory(workers=1, connections=orders_conn(pg, "    pool_size: 0\n"))
    assert backend_pid(gw) != backend_pid(gw)
    assert all(not r["upstream_reused"] for r in opens(gw))


def test_pool_size_bounds_the_idle_connections(gateway_factory, pg):
    gw = gateway_factory(workers=1, connections=orders_conn(pg, "    pool_size: 2\n"))
    tag = unique_tag()
    conns = [gw.connect(application_name=tag) for _ in range(5)]
    for c in conns:
        c.autocommit = True
        c.cursor().execute("SELECT 1")
    assert app_backends(pg, tag) == 5
    for c in conns:
        c.close()
    assert wait_for(lambda: app_backends(pg, tag) == 2), app_backends(pg, tag)


def test_idle_connections_close_after_the_idle_timeout(gateway_factory, pg):
    gw = gateway_factory(workers=1, connections=orders_conn(pg, "    pool_idle_timeout: 1s\n"))
    tag = unique_tag()
    pid = backend_pid(gw, application_name=tag)
    assert app_backends(pg, tag) == 1
    settled(pg, pid)
    assert backend_pid(gw, application_name=tag) == pid  # reused within the timeout
    assert wait_for(lambda: app_backends(pg, tag) == 0, timeout=6)
    assert backend_pid(gw, application_name=tag) != pid


def test_no_connection_is_reused_past_its_lifetime(gateway_factory, pg):
    gw = gateway_factory(workers=1, connections=orders_conn(pg, "    pool_lifetime: 2s\n"))
    tag = unique_tag()
    pid = backend_pid(gw, pg, application_name=tag)
    assert backend_pid(gw, pg, application_name=tag) == pid  # young: reused
    time.sleep(2.2)
    assert wait_for(lambda: app_backends(pg, tag) == 0, timeout=3)  # idle and old: closed
    pid2 = backend_pid(gw, application_name=tag)
    assert pid2 != pid
    # in use when it gets old: closed when its session ends, not pooled
    c = gw.connect(application_name=tag)
    c.autocommit = True
    c.cursor().execute("SELECT pg_sleep(2.2)")
    c.close()
    assert wait_for(lambda: app_backends(pg, tag) == 0, timeout=3)


def test_an_upstream_that_dies_in_the_pool_is_not_handed_out(gateway_factory, pg):
    gw = gateway_factory(workers=1)
    pid = backend_pid(gw, pg)
    pg.scalar("postgres", "SELECT pg_terminate_backend(%d)" % pid)
    assert wait_for(lambda: pg.scalar(
        "postgres", "SELECT count(*) FROM pg_stat_activity WHERE pid = %d" % pid) == "0")
    time.sleep(0.2)
    pid2 = backend_pid(gw, pg)
    assert pid2 != pid
    assert backend_pid(gw) == pid2


def test_cancel_reaches_a_reused_upstream(gateway_factory, pg):
    gw = gateway_factory(workers=1)
    backend_pid(gw, pg)
    c = gw.connect()
    c.autocommit = True
    cur = c.cursor()
    cur.execute("SELECT 1")
    import threading
    t = threading.Timer(0.5, c.cancel)
    t.start()
    with pytest.raises(psycopg2.Error) as e:
        cur.execute("SELECT pg_sleep(20)")
    t.join()
    assert e.value.pgcode == "57014"
    assert [r["upstream_reused"] for r in opens(gw)][-1] is True


def test_shutdown_closes_pooled_connections(gateway_factory, pg):
    gw = gateway_factory(workers=1)
    tag = unique_tag()
    for _ in range(3):
        backend_pid(gw, pg, application_name=tag)
    assert app_backends(pg, tag) == 1
    t0 = time.time()
    assert gw.stop() == 0
    assert time.time() - t0 < 4
    assert wait_for(lambda: app_backends(pg, tag) == 0)


@pytest.mark.parametrize("extra,msg", [
    ("    pool_size: lots\n", "pool_size must be a number"),
    ("    pool_size: 100000\n", "pool_size must be a number"),
    ("    pool_idle_timeout: 0s\n", "pool_idle_timeout"),
    ("    pool_idle_timeout: soon\n", "pool_idle_timeout"),
    ("    pool_lifetime: 0s\n", "pool_lifetime"),
])
def test_pool_config_errors(tmp_path, pg, extra, msg):
    cfg = tmp_path / "s.yaml"
    cfg.write_text("gateway: { data_dir: %s }\n%s" % (tmp_path, orders_conn(pg, extra)))
    r = subprocess.run([SLUICE, "config", "check", str(cfg)], capture_output=True, text=True)
    assert r.returncode != 0
    assert msg in r.stderr + r.stdout, r.stderr + r.stdout


def test_pgbench_through_a_pool(gateway_factory, pg):
    gw = gateway_factory(workers=1)
    tok = gw.mint()
    tag = unique_tag()
    env = dict(os.environ, PGPASSWORD=tok, PGSSLMODE="disable", PGAPPNAME=tag)
    for _ in range(2):
        r = subprocess.run(["pgbench", "-n", "-h", "127.0.0.1", "-p", str(gw.port), "-U",
                            "orders", "-c", "4", "-t", "50", "-M", "prepared", "-f", "-",
                            "orders"],
                           input="SELECT count(*) FROM orders;\n", env=env,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "number of transactions actually processed: 200/200" in r.stdout
        wait_for(lambda: pg.scalar(
            "postgres", "SELECT count(*) FROM pg_stat_activity WHERE application_name = '%s' "
                        "AND state = 'idle' AND query = 'DISCARD ALL'" % tag) == "4", timeout=3)
        time.sleep(0.05)
    recs = opens(gw)
    assert sum(1 for x in recs if x["upstream_reused"]) >= 4
    assert app_backends(pg, tag) == 4


class FakeServer:
    """A PostgreSQL stand-in (trust login) that answers SELECT 1 and answers
    DISCARD ALL as told, and counts the connections it accepts: the pool's
    check of the reset's answer, seen from the server's side."""

    def __init__(self, discard):
        import socket
        import threading
        self.discard = discard
        self.accepted = 0
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(16)
        self.port = self.ls.getsockname()[1]
        self.stop = False
        self.t = threading.Thread(target=self.serve, daemon=True)
        self.t.start()

    def serve(self):
        import threading
        while not self.stop:
            try:
                s, _ = self.ls.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self.session, args=(s,), daemon=True).start()

    @staticmethod
    def recv_exact(s, n):
        b = b""
        while len(b) < n:
            d = s.recv(n - len(b))
            if not d:
                raise EOFError
            b += d
        return b

    def session(self, s):
        import struct
        m = pgwire.msg
        try:
            (n,) = struct.unpack("!I", self.recv_exact(s, 4))
            self.recv_exact(s, n - 4)  # the startup packet
            out = m(b"R", struct.pack("!I", 0))
            for k, v in (("server_version", "15.0"), ("client_encoding", "UTF8"),
                         ("standard_conforming_strings", "on"), ("DateStyle", "ISO, MDY"),
                         ("integer_datetimes", "on"), ("application_name", "")):
                out += m(b"S", pgwire.cstr(k) + pgwire.cstr(v))
            out += m(b"K", struct.pack("!II", 4242, 99)) + m(b"Z", b"I")
            s.sendall(out)
            while True:
                t = self.recv_exact(s, 1)
                (n,) = struct.unpack("!I", self.recv_exact(s, 4))
                body = self.recv_exact(s, n - 4)
                if t == b"X":
                    break
                if t != b"Q":
                    continue
                if body.rstrip(b"\0") == b"DISCARD ALL":
                    a = {"ok": m(b"C", pgwire.cstr("DISCARD ALL")) + m(b"Z", b"I"),
                         "notify": m(b"A", struct.pack("!I", 7) + pgwire.cstr("chan")
                                     + pgwire.cstr("for the old session"))
                         + m(b"C", pgwire.cstr("DISCARD ALL")) + m(b"Z", b"I"),
                         "error": m(b"E", b"SERROR\0C0A000\0Mno\0\0") + m(b"Z", b"I"),
                         "tag": m(b"C", pgwire.cstr("DISCARD PLANS")) + m(b"Z", b"I"),
                         "in-transaction": m(b"C", pgwire.cstr("DISCARD ALL")) + m(b"Z", b"T"),
                         "silent": b"",
                         "slow": m(b"C", pgwire.cstr("DISCARD ALL")) + m(b"Z", b"I"),
                         "slow-error": m(b"E", b"SERROR\0C0A000\0Mno\0\0") + m(b"Z", b"I"),
                         }[self.discard]
                    if self.discard.startswith("slow"):
                        time.sleep(0.5)
                    s.sendall(a)
                    continue
                s.sendall(m(b"T", struct.pack("!H", 1) + pgwire.cstr("x")
                            + struct.pack("!IHIhih", 0, 0, 23, 4, -1, 0))
                          + m(b"D", struct.pack("!HI", 1, 1) + b"1")
                          + m(b"C", pgwire.cstr("SELECT 1")) + m(b"Z", b"I"))
        except (EOFError, OSError):
            pass
        finally:
            s.close()

    def close(self):
        self.stop = True
        self.ls.close()


def two_sessions_through(gateway_factory, discard, pause, reused):
    """Two sessions, pause seconds apart, through a gateway whose connection
    is a stand-in server answering DISCARD ALL as discard says; neither sees
    a notification, and the second reuses the first's upstream or not."""
    fake = FakeServer(discard)
    try:
        gw = gateway_factory(workers=1, connections="""
connections:
  - name: orders
    type: postgres
    target: 127.0.0.1:%d
    database: orders
    user: fake
""" % fake.port)
        tok = gw.mint()
        for _ in range(2):
            c = gw.connect(token=tok)
            c.autocommit = True
            cur = c.cursor()
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
            notes = list(c.notifies)
            c.close()
            assert notes == []
            time.sleep(pause)
        assert fake.accepted == (1 if reused else 2)
        assert [r["upstream_reused"] for r in opens(gw)] == [False, reused]
    finally:
        fake.close()


@pytest.mark.parametrize("discard,reused", [
    ("ok", True),
    ("notify", True),             # a notification for the old session is dropped
    ("error", False),
    ("tag", False),               # answered, but not as DISCARD ALL
    ("in-transaction", False),    # ReadyForQuery not idle
    ("silent", False),            # no answer: never handed out
])
def test_only_a_confirmed_reset_is_reused(gateway_factory, discard, reused):
    two_sessions_through(gateway_factory, discard, 0.3, reused)


@pytest.mark.parametrize("discard,reused", [("slow", True), ("slow-error", False)])
def test_a_session_waits_for_a_reset_in_progress(gateway_factory, discard, reused):
    """The reset takes 0.5 s: the next session, already there, waits for it
    and gets the connection; if the reset fails, it logs in afresh."""
    two_sessions_through(gateway_factory, discard, 0, reused)
