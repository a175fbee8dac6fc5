"""Masking in transit through the PostgreSQL path: rows, COPY, errors,
notifications, column rules, exempt groups, the audit trail, constant memory."""
import io
import json
import os
import time

import struct

import psycopg2
import pytest

import pgwire

from conftest import rss_kb

MASK_POLICIES = """
policies:
  - name: agents
    match: { groups: [ai-agents] }
    rules:
      - { action: block, sql: [drop, truncate, alter_system, copy_program] }
      - { action: allow, sql: [select, insert, update, delete, set, transaction, copy_to, copy_from, utility, ddl] }
    mask:
      columns: [ssn, "*password*", "*token*", card_number, secret_hash]
      detectors: [ssn, credit_card, email, aws_access_key, jwt, private_key, secret_assignment, iban, phone]
      styles:
        - { column: "*token*", style: full }
        - { column: secret_hash, style: hash }
  - name: auditors
    match: { groups: [auditors] }
    rules:
      - { action: allow, sql: [select, set, transaction] }
    mask: { exempt: true }
"""


@pytest.fixture
def mgw(gateway_factory):
    return gateway_factory(policies=MASK_POLICIES)


def rows(gw, sql, groups="ai-agents", params=None):
    c = gw.connect(token=gw.mint(groups=groups))
    cur = c.cursor()
    cur.execute(sql, params)
    out = cur.fetchall()
    c.close()
    return out


def test_rows_masked_by_detector_and_column(mgw):
    got = rows(mgw, "SELECT name, email, ssn, card_number, api_token FROM customers ORDER BY id")
    assert got[0] == ("Ada", "a**@example.com", "***-**-6789", "**** **** **** 1111",
                      "************")
    # detectors inside free text, column names unknown to the rules
    got = rows(mgw, "SELECT 'call me at +14155552671 or mail bob@example.org, card "
                    "4111-1111-1111-1111, ssn 123-45-6789, key AKIAIOSFODNN7EXAMPLE' AS note")
    note = got[0][0]
    for raw in ("+14155552671", "bob@example.org", "4111-1111-1111-1111", "123-45-6789",
                "AKIAIOSFODNN7EXAMPLE"):
        assert raw not in note, note
    assert "****-****-****-1111" in note and "***-**-6789" in note
    assert len(note) == len("call me at +14155552671 or mail bob@example.org, card "
                            "4111-1111-1111-1111, ssn 123-45-6789, key AKIAIOSFODNN7EXAMPLE")


def test_reported_settings_are_masked(mgw):
    # application_name is reported back (ParameterStatus) whenever it
    # changes: set_config() can put a row value there
    c = mgw.connect(token=mgw.mint(groups="ai-agents"))
    c.autocommit = True
    cur = c.cursor()
    cur.execute("SELECT set_config('application_name', "
                "(SELECT email || ' 123-45-6789' FROM customers ORDER BY id LIMIT 1), false)")
    assert "123-45-6789" not in cur.fetchone()[0]
    reported = c.get_parameter_status("application_name")
    # the statement reads a table with a rule's column: withheld whole
    assert reported == "********", reported
    # a rule's column put into a setting would be read back unmasked later
    # (SHOW, current_setting): refused
    with pytest.raises(psycopg2.Error) as ei:
        cur.execute("SELECT set_config('application_name', "
                    "(SELECT api_token FROM customers ORDER BY id LIMIT 1), false)")
    assert ei.value.pgcode == "42501" and "store or send a masked column" in str(ei.value)
    cur.execute("SHOW application_name")
    assert "tok_live" not in cur.fetchone()[0]
    # an ordinary setting still reports as is
    cur.execute("SET application_name = 'agent-7'")
    assert c.get_parameter_status("application_name") == "agent-7"
    c.close()


def test_near_misses_untouched(mgw):
    vals = ["order 12345678901234567890", "4111-1111-1111-1112", "2024-01-15",
            "000-12-3456", "123-45-67890", "version 1.2.3.4", "not-an-email@", "+12"]
    got = rows(mgw, "SELECT unnest(%s::text[])", params=(vals,))
    assert [r[0] for r in got] == vals


def test_column_rules_follow_the_source_column(mgw):
    # An alias, or a subquery around it, does not hide a rule's column: the
    # RowDescription still names its table and column, which the gateway
    # looked up in the catalog at login.
    want = rows(mgw, "SELECT api_token FROM customers ORDER BY id")
    assert want[0][0] == "*" * len("tok_live_abc")
    for sql in ("SELECT api_token AS t FROM customers ORDER BY id",
                "SELECT t FROM (SELECT api_token AS t, id FROM customers) q ORDER BY id",
                "SELECT c.api_token AS \"Harmless\" FROM customers c ORDER BY id"):
        assert rows(mgw, sql) == want, sql
    # through the extended protocol too (psycopg2 with a server-side cursor)
    c = mgw.connect(token=mgw.mint(groups="ai-agents"))
    cur = c.cursor(name="cur")
    cur.execute("SELECT api_token AS t FROM customers ORDER BY id")
    assert cur.fetchall() == want
    c.close()
    # an expression is a new value: no column rule, but detectors still run
    got = rows(mgw, "SELECT ssn || '' AS s FROM customers ORDER BY id")
    assert got[0][0] == "***-**-6789"


def test_whole_rows_of_a_table_with_rule_columns_are_masked(mgw, pg):
    # A whole-row reference carries every column, the rule's too: such a
    # row (or an array of them) is masked like the rule's column; not text,
    # so it is NULL. No detector sees this password: only the rule can.
    # A row of a table without rule columns passes.
    pg.psql("orders", "CREATE TABLE IF NOT EXISTS svc_accounts "
                      "(id int, label text, db_password text); "
                      "TRUNCATE svc_accounts; INSERT INTO svc_accounts VALUES (1, 'svc', 'hunter2xyz'); "
                      "ALTER TABLE svc_accounts OWNER TO app")
    raw = rows(mgw, "SELECT s FROM svc_accounts s", groups="auditors")
    assert raw == [("(1,svc,hunter2xyz)",)]  # what the agent must not see
    for sql in ("SELECT s FROM svc_accounts s",
                "SELECT s AS harmless FROM svc_accounts s",
                "SELECT (SELECT s FROM svc_accounts s LIMIT 1)",
                "SELECT array_agg(s) FROM svc_accounts s",
                "SELECT s FROM svc_accounts s WHERE s.id IN (SELECT 1)"):
        got = rows(mgw, sql)
        assert got == [(None,)], (sql, got)
    # through the extended protocol and binary results too
    c = mgw.connect(token=mgw.mint(groups="ai-agents"))
    cur = c.cursor(name="whole")
    cur.execute("SELECT s FROM svc_accounts s")
    assert cur.fetchall() == [(None,)]
    c.close()
    cn = pgwire.Conn(mgw.port)
    assert cn.login("orders", mgw.mint(groups="ai-agents"))[-1] == (b"Z", b"I")
    cn.send(pgwire.parse("", "SELECT s FROM svc_accounts s") +
            pgwire.msg(b"B", b"\0\0" + struct.pack("!HHHH", 0, 0, 1, 1)) +
            pgwire.describe_portal() + pgwire.execute() + pgwire.SYNC)
    got = cn.until_ready()
    drows = [body for t, body in got if t == b"D"]
    assert len(drows) == 1 and struct.unpack("!i", drows[0][2:6])[0] == -1, got
    assert b"hunter2xyz" not in b"".join(body for _, body in got)
    cn.close()
    # the plain columns still follow their rules; a table without rule
    # columns is untouched
    assert rows(mgw, "SELECT s.label, s.db_password FROM svc_accounts s") == [("svc", "******2xyz")]
    got = rows(mgw, "SELECT o FROM orders o ORDER BY id LIMIT 1")
    assert got[0][0] is not None and got[0][0].startswith("(")


FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "pii")


def _corpus(name):
    out = []
    with open(os.path.join(FIXTURES, name)) as f:
        for line in f:
            line = line.rstrip("\r\n")
            if not line or line.startswith("#"):
                continue
            out.append(line.replace("\\n", "\n"))
    return out


def test_pii_corpus_round_trip(mgw):
    # The masking corpus (tests/fixtures/pii/) through PostgreSQL: every true
    # positive, alone and inside text, comes back without the raw value and
    # with its length kept; every near miss comes back byte for byte.
    pos = [line.split("\t", 1)[1] for line in _corpus("positives.txt")]
    vals = []
    for v in pos:
        vals += [v, "note: " + v + " (from the CRM)"]
    got = [r[0] for r in rows(mgw, "SELECT unnest(%s::text[])", params=(vals,))]
    assert len(got) == len(vals) >= 120
    for sent, back in zip(vals, got):
        raw = sent if not sent.startswith("note: ") else sent[6:-15]
        assert raw not in back, (sent, back)
        assert len(back) == len(sent), (sent, back)
    near = _corpus("near_misses.txt")
    got = [r[0] for r in rows(mgw, "SELECT unnest(%s::text[])", params=(near,))]
    assert got == near


def test_non_text_columns_are_type_safe(mgw):
    got = rows(mgw, "SELECT 4111111111111111::bigint AS n, 4111111111111111::numeric AS card_number")
    # a detector hit in a number becomes NULL, never a mangled number
    assert got[0] == (None, None)


def _binary_rows(gw, sql, describe=False):
    """Runs sql through the extended protocol asking for every result column
    in binary format; returns the DataRow values (bytes or None)."""
    cn = pgwire.Conn(gw.port)
    msgs = cn.login("orders", gw.mint(groups="ai-agents"))
    assert not pgwire.errors(msgs), msgs
    b = pgwire.cstr("") + pgwire.cstr("") + struct.pack("!HH", 0, 0) + struct.pack("!HH", 1, 1)
    d = pgwire.describe_portal() if describe else b""
    cn.send(pgwire.parse("", sql) + pgwire.msg(b"B", b) + d + pgwire.execute() + pgwire.SYNC)
    msgs = cn.until_ready()
    cn.close()
    assert not pgwire.errors(msgs), pgwire.errors(msgs)
    out = []
    for t, body in msgs:
        if t != b"D":
            continue
        (n,) = struct.unpack("!H", body[:2])
        off, row = 2, []
        for _ in range(n):
            (ln,) = struct.unpack("!i", body[off:off + 4])
            off += 4
            row.append(None if ln < 0 else body[off:off + ln])
            off += max(ln, 0)
        out.append(tuple(row))
    return out


@pytest.mark.parametrize("describe", [False, True])
def test_binary_format_values_are_scanned(mgw, describe):
    # binary int8/numeric card numbers (also with trailing zero groups),
    # a bytea, a jsonb and a text[] holding PII: each becomes NULL, whether
    # the client asked for a RowDescription (typed) or not (types unknown)
    got = _binary_rows(mgw, describe=describe, sql="SELECT 4111111111111111::int8, 4000000000000002::numeric, "
                            "4111111111111111.00::numeric, "
                            "convert_to('ssn 123-45-6789', 'UTF8'), "
                            "'{\"mail\": \"bob@example.org\"}'::jsonb, "
                            "ARRAY['x', 'bob@example.org']::text[]")
    assert got == [(None,) * 6], got
    # values without PII pass through in binary, byte for byte
    got = _binary_rows(mgw, describe=describe, sql="SELECT 42::int8, 1234.5::numeric, convert_to('hello', 'UTF8'), "
                            "ARRAY['x', 'y']::text[]")
    (row,) = got
    assert row[0] == struct.pack("!q", 42) and row[2] == b"hello"
    assert row[1] is not None and row[3] is not None and b"y" in row[3]


def test_hash_style_is_stable(mgw):
    a = rows(mgw, "SELECT 'same-secret-value' AS secret_hash")[0][0]
    b = rows(mgw, "SELECT 'same-secret-value' AS secret_hash")[0][0]
    c = rows(mgw, "SELECT 'other-secret-value' AS secret_hash")[0][0]
    assert a == b and a != c and a.startswith("h:") and "same" not in a


def test_exempt_group_sees_raw_and_it_is_audited(mgw):
    got = rows(mgw, "SELECT ssn, card_number FROM customers WHERE id = 1", groups="auditors")
    assert got[0] == ("123-45-6789", "4111 1111 1111 1111")
    opens = [r for r in mgw.export() if r["type"] == "session_open"]
    assert any(r["data"]["masking"] == "exempt" for r in opens)


def test_copy_error_detail_and_notify_masked(mgw):
    c = mgw.connect()
    c.autocommit = True
    cur = c.cursor()
    buf = io.StringIO()
    cur.execute("CREATE TEMP TABLE contacts AS SELECT email, '123-45-6789'::text AS tax_id "
                "FROM customers")
    cur.copy_expert("COPY (SELECT email, tax_id FROM contacts ORDER BY 1) TO STDOUT", buf)
    out = buf.getvalue()
    assert "123-45-6789" not in out and "ada@example.com" not in out
    assert out.splitlines()[0] == "a**@example.com\t***-**-6789"
    cur.execute("CREATE TEMP TABLE u (ssn text PRIMARY KEY)")
    cur.execute("INSERT INTO u VALUES ('123-45-6789')")
    with pytest.raises(psycopg2.Error) as ei:
        cur.execute("INSERT INTO u VALUES ('123-45-6789')")
    assert ei.value.pgcode == "23505"
    assert "123-45-6789" not in str(ei.value) and "***-**-6789" in str(ei.value)
    cur.execute("LISTEN ch")
    c2 = mgw.connect()
    c2.autocommit = True
    c2.cursor().execute("NOTIFY ch, 'card 4111 1111 1111 1111'")
    deadline = time.time() + 5
    while not c.notifies and time.time() < deadline:
        c.poll()
        time.sleep(0.05)
    assert c.notifies and c.notifies[0].payload == "card **** **** **** 1111"
    c.close()
    c2.close()


def test_expressions_over_rule_columns_are_masked(mgw):
    # A value computed from a rule's column (ssn || '', upper(), a scalar
    # subquery, a renamed column in a CTE, a UNION) has no table column in
    # RowDescription; the statement names the column in its result list,
    # so its computed columns are masked with that rule's style. Plain
    # columns and computed columns of statements that name no rule column
    # are left alone; count() of the column is exempt.
    full = "*" * len("tok_live_abc")
    cases = [
        ("SELECT api_token || '' FROM customers WHERE id = 1", [(full,)]),
        ("SELECT upper(api_token) AS u, name FROM customers WHERE id = 1", [(full, "Ada")]),
        ("SELECT (SELECT api_token FROM customers WHERE id = 1) AS x", [(full,)]),
        ("WITH c AS (SELECT api_token AS z FROM customers WHERE id = 1) SELECT z || '' FROM c",
         [(full,)]),
        ("SELECT api_token AS t FROM customers WHERE id = 1 UNION ALL SELECT 'x'",
         [(full,), ("*",)]),
        ("SELECT pg_backend_pid() > 0, api_token, name || '!' FROM customers WHERE id = 1",
         [(True, full, "Ada!")]),
        ("SELECT count(api_token) FROM customers WHERE id = 1", [(1,)]),
        ("SELECT name || '!' FROM customers WHERE id = 1", [("Ada!",)]),
    ]
    for sql, want in cases:
        assert rows(mgw, sql) == want, sql
    # the same through Parse/Bind (psycopg2 inlines; pgwire binds), and
    # through statements whose rows come from one run earlier
    got = rows(mgw, "SELECT api_token || %s FROM customers WHERE id = 1", params=("",))
    assert got == [(full,)]
    cn = pgwire.Conn(mgw.port)
    cn.login("orders", mgw.mint())
    cn.send(pgwire.parse("", "SELECT lower(api_token) FROM customers WHERE id = $1") +
            pgwire.bind("", "", ["1"]) + pgwire.describe_portal("") + pgwire.execute() +
            pgwire.SYNC)
    out = cn.until_ready()
    data = [body for t, body in out if t == b"D"]
    assert data and b"tok_live" not in data[0] and full.encode() in data[0], out
    cn.close()
    c = mgw.connect()
    cur = c.cursor()
    cur.execute("DECLARE cc CURSOR FOR SELECT api_token || '' FROM customers ORDER BY id")
    cur.execute("FETCH 1 FROM cc")
    assert cur.fetchall() == [(full,)]
    cur.execute("PREPARE pp AS SELECT substr(api_token, 1) FROM customers WHERE id = 1")
    cur.execute("EXECUTE pp")
    assert cur.fetchall() == [(full,)]
    c.rollback()
    named = c.cursor(name="agent_named")
    named.execute("SELECT api_token || '' FROM customers ORDER BY id")
    assert named.fetchmany(1) == [(full,)]
    c.close()


def test_audit_keeps_counts_never_values(mgw):
    rows(mgw, "SELECT email, ssn FROM customers WHERE ssn = '123-45-6789'")
    recs = mgw.export()
    blob = json.dumps(recs)
    assert "123-45-6789" not in blob and "ada@example.com" not in blob
    res = [r for r in recs if r["type"] == "result" and "masked" in r["data"]]
    assert res, recs[-5:]
    m = res[-1]["data"]["masked"]
    assert m.get("email") == 1 and m.get("columns") == 1
    reqs = [r for r in recs if r["type"] == "request" and "customers" in r["data"]["text"]]
    assert "***-**-****" in reqs[-1]["data"]["text"] or "***" in reqs[-1]["data"]["text"]


def test_million_rows_constant_memory(mgw):
    c = mgw.connect()
    cur = c.cursor()
    before = rss_kb(mgw.proc.pid)
    cur.execute("SELECT g, 'row ' || g || ' ssn 123-45-6789 mail x' || g || '@example.com' "
                "FROM generate_series(1, 1000000) g")
    n = 0
    peak = before
    while True:
        batch = cur.fetchmany(100000)
        if not batch:
            break
        n += len(batch)
        assert "123-45-6789" not in batch[-1][1]
        peak = max(peak, rss_kb(mgw.proc.pid))
    assert n == 1000000
    c.close()
    # psycopg2 buffers the whole result client-side; the gateway must not
    assert peak - before < 64 * 1024, (before, peak)


def test_column_rules_apply_when_the_client_does_not_describe(mgw):
    # asyncpg describes a statement once, then runs it with Bind/Execute
    # only (JDBC too, after prepareThreshold): the server sends rows with no
    # RowDescription. sluice describes the portal itself, so column rules
    # still apply; the client sees exactly what it asked for.
    import asyncio
    import asyncpg
    want = [(1, "*" * len("tok_live_abc"), "***-**-6789"),
            (2, "*" * len("tok_live_def"), "***-**-7890")]

    async def main():
        c = await asyncpg.connect(host="127.0.0.1", port=mgw.port, user="orders",
                                  database="orders", password=mgw.mint(groups="ai-agents"),
                                  ssl=False)
        for _ in range(3):  # the 2nd and 3rd run from asyncpg's statement cache
            got = await c.fetch("SELECT id, api_token AS t, ssn FROM customers ORDER BY id")
            assert [tuple(r) for r in got] == want
        st = await c.prepare("SELECT api_token FROM customers WHERE id = $1")
        for _ in range(2):
            assert await st.fetchval(1) == "*" * len("tok_live_abc")
        async with c.transaction():  # a cursor: Execute with a row limit, again and again
            got = [tuple(r) async for r in c.cursor(
                "SELECT id, api_token, ssn FROM customers ORDER BY id", prefetch=1)]
        assert got == want
        await c.close()
    asyncio.run(main())

    cn = pgwire.Conn(mgw.port)
    assert cn.login("orders", mgw.mint(groups="ai-agents"))[-1] == (b"Z", b"I")
    # text and binary results, no Describe: masked, and no RowDescription
    # or NoData reaches the client that did not ask for one
    for fmt in (0, 1):
        cn.send(pgwire.parse("", "SELECT api_token, name FROM customers ORDER BY id") +
                pgwire.msg(b"B", b"\0\0" + struct.pack("!HHHH", 0, 0, 1, fmt)) +
                pgwire.execute() + pgwire.SYNC)
        got = cn.until_ready()
        assert [t for t, _ in got] == [b"1", b"2", b"D", b"D", b"C", b"Z"], got
        body = b"".join(b for _, b in got)
        assert b"tok_live" not in body and b"************" in body and b"Ada" in body, got
    # a named portal run in two pieces across syncs, with a statement that
    # returns nothing in between
    cn.send(pgwire.query("BEGIN"))
    cn.until_ready()
    cn.send(pgwire.parse("s1", "SELECT api_token FROM customers ORDER BY id") +
            pgwire.bind("p1", "s1") + pgwire.execute("p1", 1) + pgwire.SYNC)
    got = cn.until_ready()
    assert [t for t, _ in got] == [b"1", b"2", b"D", b"s", b"Z"], got
    cn.send(pgwire.parse("", "SET LOCAL work_mem = '4MB'") + pgwire.bind("", "") +
            pgwire.execute() + pgwire.execute("p1", 0) + pgwire.SYNC)
    got = cn.until_ready()
    assert [t for t, _ in got] == [b"1", b"2", b"C", b"D", b"C", b"Z"], got
    assert b"tok_live" not in b"".join(b for _, b in got)
    # a client that describes gets its one RowDescription; an unknown portal
    # fails as the server says (its text withheld: a SQL cursor's rows, or
    # its errors, may carry masked values)
    cn.send(pgwire.bind("p2", "s1") + pgwire.describe_portal("p2") + pgwire.execute("p2") +
            pgwire.execute("nope") + pgwire.SYNC)
    got = cn.until_ready()
    assert [t for t, _ in got] == [b"2", b"T", b"D", b"D", b"C", b"E", b"Z"], got
    assert b"34000" in got[5][1] and b"withheld" in got[5][1], got
    cn.send(pgwire.query("COMMIT"))
    assert cn.until_ready()[-1] == (b"Z", b"I")
    # a Describe of another portal earlier in the batch: the client gets the
    # answer to its own Describe (Y's columns), X's rows are still masked
    cn.send(pgwire.parse("sy", "SELECT name AS who FROM customers ORDER BY id") +
            pgwire.bind("py", "sy") + pgwire.describe_portal("py") +
            pgwire.bind("px", "s1") + pgwire.execute("px") + pgwire.execute("py") +
            pgwire.SYNC)
    got = cn.until_ready()
    assert [t for t, _ in got] == [b"1", b"2", b"T", b"2", b"D", b"D", b"C", b"D", b"D",
                                   b"C", b"Z"], got
    assert b"who" in got[2][1] and b"api_token" not in got[2][1], got
    assert b"tok_live" not in b"".join(b for _, b in got) and b"Ada" in got[7][1], got
    # Describes the server skips after an error are not waited for
    cn.send(pgwire.bind("pz", "no_such_statement") + pgwire.describe_portal("pz") +
            pgwire.execute("pz") + pgwire.SYNC)
    got = cn.until_ready()
    assert [t for t, _ in got] == [b"E", b"Z"], got
    cn.send(pgwire.parse("", "SELECT api_token FROM customers WHERE id = 1") +
            pgwire.bind("", "") + pgwire.execute() + pgwire.SYNC)
    got = cn.until_ready()
    assert [t for t, _ in got] == [b"1", b"2", b"D", b"C", b"Z"], got
    assert b"tok_live" not in got[2][1] and b"************" in got[2][1], got
    cn.close()


@pytest.mark.parametrize("sql", [
    "COPY customers TO STDOUT",
    "COPY public.customers (id, api_token) TO STDOUT",
    "COPY customers (id, name) TO STDOUT WITH (FORMAT csv)",
    "COPY (SELECT api_token FROM customers) TO STDOUT",
    "COPY (SELECT c.* FROM public.customers c JOIN orders o ON o.customer = c.id) TO STDOUT",
    "COPY (SELECT schema_to_xml('public', true, false, '')) TO STDOUT",
    "COPY (SELECT table_to_xml('Public.Customers', true, false, '')) TO STDOUT",
])
def test_copy_out_of_a_table_with_rule_columns_is_refused(mgw, sql):
    # CopyData names no column, so a column rule cannot follow its column
    # there (tok_live_abc matches no detector): such a COPY is refused with
    # the column named, the session stays usable, and SELECT masks.
    c = mgw.connect()
    c.autocommit = True
    cur = c.cursor()
    with pytest.raises(psycopg2.Error) as ei:
        cur.copy_expert(sql, io.StringIO())
    assert ei.value.pgcode == "42501", ei.value
    assert "customers" in str(ei.value) and "use SELECT" in str(ei.value), ei.value
    cur.execute("SELECT api_token FROM customers ORDER BY id LIMIT 1")
    assert cur.fetchone()[0] == "*" * len("tok_live_abc")
    # a table without rule columns copies out as before
    buf = io.StringIO()
    cur.copy_expert("COPY (SELECT id, amount FROM orders ORDER BY id LIMIT 2) TO STDOUT", buf)
    assert buf.getvalue() == "1\t1\n2\t2\n"
    c.close()
    # the same through the extended protocol (a driver that prepares COPY)
    cn = pgwire.Conn(mgw.port)
    assert cn.login("orders", mgw.mint(groups="ai-agents"))[-1] == (b"Z", b"I")
    cn.send(pgwire.parse("", sql) + pgwire.bind("", "") + pgwire.execute() + pgwire.SYNC)
    got = cn.until_ready()
    assert any(t == b"E" and b"42501" in b for t, b in got), got
    assert not any(t in (b"H", b"d") for t, _ in got), got
    cn.close()


def test_error_text_of_statements_reading_masked_columns_is_withheld(mgw):
    # The server quotes values in its messages (invalid input syntax ...:
    # "<value>", JSON token errors with a CONTEXT line): for a statement that
    # reads a table with a rule's column anywhere (result list, WHERE, a
    # cast), the text is withheld, the SQLSTATE kept, and the audit trail
    # records what the client got. One error per row would read a column.
    c = mgw.connect()
    c.autocommit = True
    cur = c.cursor()
    for sql, code in [
        ("SELECT api_token::int FROM customers WHERE id = 1", "22P02"),
        ("SELECT id FROM customers WHERE api_token::int = 1", "22P02"),
        ("SELECT api_token::json FROM customers WHERE id = 1", "22P02"),
        ("SELECT to_date(api_token, 'YYYY') FROM customers WHERE id = 1", "22007"),
        ("SELECT api_token::regclass FROM customers WHERE id = 1", "42P01"),
    ]:
        with pytest.raises(psycopg2.Error) as ei:
            cur.execute(sql)
        text = "%s %s" % (ei.value.pgerror, ei.value.diag.context)
        assert ei.value.pgcode == code, (sql, ei.value.pgcode, text)
        assert "tok_" not in text and "withheld" in text, (sql, text)
    # the same through Parse/Bind/Execute
    cn = pgwire.Conn(mgw.port)
    cn.login("orders", mgw.mint())
    cn.send(pgwire.parse("", "SELECT api_token::int FROM customers WHERE id = $1") +
            pgwire.bind("", "", ["1"]) + pgwire.execute() + pgwire.SYNC)
    out = cn.until_ready()
    assert b"tok_" not in b"".join(body for _, body in out), out
    assert pgwire.errors(out)[0]["C"] == "22P02"
    cn.close()
    # statements that read no masked table keep the server's text
    with pytest.raises(psycopg2.Error) as ei:
        cur.execute("SELECT 'abc'::int")
    assert '"abc"' in str(ei.value)
    c.close()
    errors = [r["data"].get("error", "") for r in mgw.export() if r["type"] == "result"]
    assert errors and not any("tok_" in e for e in errors), errors


def refused_with_notes(gw, pg, sql):
    """Runs sql in an autocommit session, with a notes table to write to;
    sluice must refuse it (42501). Returns the session and the error."""
    pg.psql("orders", "CREATE TABLE IF NOT EXISTS notes (body text); "
                      "GRANT ALL ON notes TO app")
    c = gw.connect()
    c.autocommit = True
    with pytest.raises(psycopg2.Error) as ei:
        c.cursor().execute(sql)
    assert ei.value.pgcode == "42501", (sql, ei.value)
    return c, ei.value


@pytest.mark.parametrize("sql", [
    "CREATE TEMP TABLE cp AS SELECT id, api_token AS t FROM customers",
    "SELECT id, api_token AS t INTO TEMP cp2 FROM customers",
    "CREATE TEMP VIEW vv AS SELECT id, api_token AS x FROM customers",
    "WITH c AS (SELECT api_token FROM customers) INSERT INTO notes (body) SELECT * FROM c",
    "INSERT INTO notes (body) SELECT upper(api_token) FROM customers",
    "UPDATE notes SET body = (SELECT api_token FROM customers WHERE id = 1)",
    "SELECT pg_notify('ch', api_token) FROM customers",
    "SELECT set_config('myapp.x', api_token, false) FROM customers WHERE id = 1",
])
def test_statements_that_would_store_masked_values_are_refused(mgw, pg, sql):
    # A copy under another name (a table, a view, a setting, a notification)
    # would be read back later with no rule's column in it: unmasked.
    c, e = refused_with_notes(mgw, pg, sql)
    assert "store or send a masked column" in str(e)
    cur = c.cursor()
    # copies of other columns are fine
    cur.execute("CREATE TEMP TABLE ok AS SELECT id, name FROM customers")
    cur.execute("SELECT count(*) FROM ok")
    assert cur.fetchone()[0] > 0
    c.close()


@pytest.mark.parametrize("sql", [
    "SELECT x || '' FROM customers AS t(a, b, c2, d, e, x) WHERE a = 1",
    "SELECT min(x) FROM customers AS t(a, b, c2, d, e, x)",
    "SELECT z || '' FROM (SELECT * FROM customers) AS t(a, b, c2, d, e, z)",
    "WITH w(a, b, c2, d, e, z) AS (SELECT * FROM customers) SELECT z || '' FROM w",
    "SELECT v FROM customers, LATERAL (VALUES (api_token)) AS t(v) WHERE id = 1",
    "SELECT v FROM customers CROSS JOIN LATERAL unnest(ARRAY[api_token]) v WHERE id = 1",
    "SELECT c::text FROM customers c WHERE id = 1",
    "SELECT to_jsonb(c) ->> 'api_token' FROM customers c WHERE id = 1",
    "SELECT customers::text FROM customers WHERE id = 1",
])
def test_rule_columns_under_names_the_statement_gives_them_are_masked(mgw, sql):
    # A column list renaming a table's columns, a FROM item built from the
    # column, a whole row: the rule's column name is nowhere in the result
    # list, so over a table with one, computed columns are masked in full.
    got = rows(mgw, sql)
    assert got and "tok_live" not in repr(got), (sql, got)


@pytest.mark.parametrize("sql", [
    "SELECT table_to_xml('customers', true, false, '')",
    "SELECT table_to_xml_and_xmlschema('public.customers', true, false, '')",
    "SELECT schema_to_xml('public', true, false, '')",
    "SELECT query_to_xml('SELECT 1', true, false, '')",
    "ALTER TABLE customers RENAME COLUMN api_token TO apikey",
    "ALTER TABLE customers ADD COLUMN k text GENERATED ALWAYS AS (api_token) STORED",
    "CREATE RULE r AS ON UPDATE TO customers DO ALSO NOTIFY ch",
    "INSERT INTO notes SELECT x FROM customers AS t(a, b, c2, d, e, x)",
    "CREATE TEMP TABLE tt AS SELECT x || '' FROM customers AS t(a, b, c2, d, e, x)",
    "INSERT INTO notes SELECT c::text FROM customers c",
])
def test_documents_ddl_and_renamed_copies_of_rule_columns_are_refused(mgw, pg, sql):
    # Rows as one XML document name no column; DDL on the table (a rename, a
    # generated column, a rule) takes the column out of the rules for every
    # later session; a renamed copy would be read back unmasked.
    c, _ = refused_with_notes(mgw, pg, sql)
    c.close()
    assert "api_token" in pg.psql("orders", "SELECT attname FROM pg_attribute WHERE "
                                            "attrelid = 'customers'::regclass")


def raw_rows(cn, sql):
    cn.send(pgwire.query(sql))
    out = []
    for t, b in cn.until_ready():
        if t == b"D":
            n, off, row = struct.unpack("!H", b[:2])[0], 2, []
            for _ in range(n):
                ln = struct.unpack("!i", b[off:off + 4])[0]
                off += 4
                row.append(None if ln < 0 else b[off:off + ln].decode())
                off += max(ln, 0)
            out.append(tuple(row))
    return out


def test_client_settings_cannot_switch_off_column_rules(mgw, pg):
    """At login sluice reads the catalog to follow rule columns under other
    names. The client's startup parameters must not make that lookup fail
    (statement_timeout=1 cancelled it) or lie (a search_path that puts an
    agent's own ILIKE operator before pg_catalog's): the lookup runs with
    settings of its own, and a lookup that fails refuses the session (58000)
    instead of leaving `SELECT ssn AS x` unmasked."""
    pg.psql("orders", "CREATE SCHEMA evil; "
                      "CREATE FUNCTION evil.never(text, text) RETURNS bool "
                      "LANGUAGE sql AS 'SELECT false'; "
                      "CREATE OPERATOR evil.~~* (LEFTARG = text, RIGHTARG = text, "
                      "FUNCTION = evil.never)")
    try:
        token = mgw.mint()
        served = 0
        for extra in [{"statement_timeout": "1"}, {"lock_timeout": "1"},
                      {"search_path": "evil, pg_catalog, public"}] * 3:
            cn = pgwire.Conn(mgw.port)
            got = cn.login("orders", token, extra=extra)
            errs = pgwire.errors(got)
            if errs:  # refused, never served unmasked
                assert errs[0]["C"] == "58000" and "catalog" in errs[0]["M"], errs
                cn.close()
                continue
            cn.send(pgwire.query("SET statement_timeout = 0"))
            cn.until_ready()
            got = raw_rows(cn, "SELECT api_token AS x, ssn AS y FROM customers ORDER BY id")
            cn.close()
            assert got and got[0] == ("************", "***-**-6789"), (extra, got)
            served += 1
        # the lookup's own settings make these sessions work, masked
        assert served >= 3, served
    finally:
        pg.psql("orders", "DROP SCHEMA evil CASCADE")


def test_repeated_secret_keys_are_masked_in_one_pass(mgw):
    """A value of key=key=key=... (any agent can make one with repeat())
    was rescanned to its end at every '=': one row of a few MB held the
    worker, and every session on it, for minutes. Masked whole, at once
    (the socket timeout is the bound: a hang, not a speed test)."""
    c = mgw.connect(token=mgw.mint(groups="ai-agents"))
    c.autocommit = True
    cur = c.cursor()
    cur.execute("SET statement_timeout = 0")
    for word in ("password=", "token=", "+1"):
        cur.execute("SELECT repeat(%s, 200000)", (word,))
        v = cur.fetchone()[0]
        assert len(v) == 200000 * len(word)
        if word != "+1":
            assert set(v[len(word):]) == {"*"}, v[:40]
    c.close()


def test_views_that_rename_rule_columns_are_followed(mgw, pg):
    """A view a DBA made that renames a rule's column (ssn AS tax_id) is
    followed at login through the catalog's dependencies: its renamed
    columns are masked, while columns named like the table columns they
    read (id, name) stay readable; a view over such a view masks all it
    shows (which of its columns came from where is not in the catalog)."""
    pg.psql("orders", "CREATE VIEW v_tax AS SELECT id, name, ssn AS tax_id, "
                      "api_token AS k FROM customers; "
                      "CREATE VIEW v_over AS SELECT tax_id AS t2, name FROM v_tax; "
                      "CREATE MATERIALIZED VIEW mv_tax AS SELECT id, ssn AS s FROM customers; "
                      "GRANT SELECT ON v_tax, v_over, mv_tax TO app")
    try:
        # (a view column masked gets the style that hides most of the rule
        # columns the view reads: which one fed it is not in the catalog)
        got = rows(mgw, "SELECT id, name, tax_id, k FROM v_tax ORDER BY id")
        assert got[0] == (1, "Ada", "*" * 11, "*" * 12), got
        got = rows(mgw, "SELECT t2, name FROM v_over ORDER BY 1")
        assert "123-45-6789" not in str(got) and "Ada" not in str(got), got
        got = rows(mgw, "SELECT s FROM mv_tax ORDER BY id")
        assert got[0] == ("***-**-6789",), got
        # the auditors' exempt group still sees them whole
        got = rows(mgw, "SELECT tax_id FROM v_tax ORDER BY id", groups="auditors")
        assert got[0] == ("123-45-6789",), got
    finally:
        pg.psql("orders", "DROP VIEW v_over; DROP VIEW v_tax; DROP MATERIALIZED VIEW mv_tax")


@pytest.mark.parametrize("sql", [
    "CREATE VIEW agent_v AS SELECT id AS c0, id AS c1 FROM customers "
    "WHERE api_token IS NOT NULL",
    "CREATE TEMP VIEW agent_tv AS SELECT id FROM customers",
    "CREATE MATERIALIZED VIEW agent_mv AS SELECT id FROM customers",
])
def test_agents_under_column_rules_make_no_views_over_masked_tables(mgw, pg, sql):
    """Every view over a table with a rule's column is followed at each
    login; an agent making thousands of them (each thousands of columns)
    refused every masked session's login. It makes none: 42501."""
    c, e = refused_with_notes(mgw, pg, sql)
    assert "a view over" in str(e), e
    c.close()
