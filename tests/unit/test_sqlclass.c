/* Unit tests for SQL classification and the policy engine, driven by
 * tests/fixtures/sql/cases.txt ("expected kinds | sql" per line). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "sluice/config.h"
#include "sluice/core.h"
#include "sluice/policy.h"
#include "sluice/sqlclass.h"

static void
test_fixture_cases(void **state)
{
	char path[4096], line[8192];
	FILE *f;
	int n = 0, bad = 0;

	snprintf(path, sizeof(path), "%s/sql/cases.txt", SL_FIXTURES);
	f = fopen(path, "r");
	assert_non_null(f);
	while (fgets(line, sizeof(line), f) != NULL) {
		char *bar = strstr(line, " | "), *sql, want[8192], got[512];
		struct sl_sql_class c;
		size_t l;

		if (line[0] == '#' || bar == NULL)
			continue;
		*bar = '\0';
		sql = bar + 3;
		l = strlen(sql);
		while (l > 0 && (sql[l - 1] == '\n' || sql[l - 1] == '\r'))
			sql[--l] = '\0';
		/* "\n" in the fixture is a newline in the statement */
		for (char *p = sql; (p = strstr(p, "\\n")) != NULL;) {
			*p = '\n';
			memmove(p + 1, p + 2, strlen(p + 2) + 1);
		}
		snprintf(want, sizeof(want), "%s", line);
		assert_int_equal(sl_sql_classify(sql, strlen(sql), &c), 0);
		sl_sql_kinds_str(c.kinds, got, sizeof(got));
		if (strcmp(want, got) != 0) {
			fprintf(stderr, "MISMATCH: %s\n  want %s\n  got  %s\n", sql, want, got);
			bad++;
		}
		sl_sql_class_fini(&c);
		n++;
	}
	fclose(f);
	assert_true(n > 30);
	assert_int_equal(bad, 0);
}

/* q names two tables: hr.t, written with exactly the kinds want, and src,
 * only read. */
static void
check_target_kinds(const char *q, uint32_t want)
{
	struct sl_sql_class c;

	assert_int_equal(sl_sql_classify(q, strlen(q), &c), 0);
	assert_int_equal(c.ntables, 2);
	for (size_t i = 0; i < c.ntables; i++) {
		int tgt = strcmp(c.tables[i], "hr.t") == 0;

		assert_true(tgt || strcmp(c.tables[i], "src") == 0);
		assert_int_equal(c.table_kinds[i], tgt ? want : SL_SQL_SELECT);
	}
	sl_sql_class_fini(&c);
}

static void
test_functions_tables_names(void **state)
{
	struct sl_sql_class c;
	const char *q =
		"WITH d AS (DELETE FROM s.t WHERE x = 1 RETURNING *) "
		"SELECT pg_catalog.pg_read_file('x'), \"MyFn\"() FROM d, u; "
		"PREPARE p AS UPDATE t SET a = 1; EXECUTE q; SET Standard_Conforming_Strings = off";

	assert_int_equal(sl_sql_classify(q, strlen(q), &c), 0);
	assert_int_equal(c.nstatements, 4);
	{
		int rf = 0, bare = 0, my = 0;

		for (size_t i = 0; i < c.nfunctions; i++) {
			rf |= strcmp(c.functions[i], "pg_catalog.pg_read_file") == 0;
			bare |= strcmp(c.functions[i], "pg_read_file") == 0;
			my |= strcmp(c.functions[i], "myfn") == 0;
		}
		assert_true(rf && bare && my);
	}
	{
		int st = 0, u = 0;

		for (size_t i = 0; i < c.ntables; i++) {
			st |= strcmp(c.tables[i], "s.t") == 0;
			u |= strcmp(c.tables[i], "u") == 0;
		}
		assert_true(st && u);
	}
	assert_int_equal(c.nprepared, 1);
	assert_string_equal(c.prepared[0], "p");
	assert_true(c.prepared_kinds[0] & SL_SQL_UPDATE_ALL);
	assert_int_equal(c.nexecuted, 1);
	assert_string_equal(c.executed[0], "q");
	assert_int_equal(c.nset_params, 1);
	assert_string_equal(c.set_params[0], "standard_conforming_strings");
	sl_sql_class_fini(&c);
	/* attribute notation: (expr).f calls f (functions and calls); t.f
	 * may call f(t) (functions: block and review rules see it) */
	q = "SELECT ('/etc/passwd'::text).PG_READ_FILE, s.my_fn, s.x FROM (SELECT 1 AS x) s";
	assert_int_equal(sl_sql_classify(q, strlen(q), &c), 0);
	{
		int rf = 0, my = 0, call_rf = 0, call_my = 0;

		for (size_t i = 0; i < c.nfunctions; i++) {
			rf |= strcmp(c.functions[i], "pg_read_file") == 0;
			my |= strcmp(c.functions[i], "my_fn") == 0;
		}
		for (size_t i = 0; i < c.ncalls; i++) {
			call_rf |= strcmp(c.calls[i], "pg_read_file") == 0;
			call_my |= strcmp(c.calls[i], "my_fn") == 0;
		}
		assert_true(rf && my && call_rf && !call_my);
	}
	assert_true(c.kinds & SL_SQL_COPY_PROGRAM);
	sl_sql_class_fini(&c);
	/* ON CONFLICT DO UPDATE: the target is updated, its source only read */
	check_target_kinds(
		"INSERT INTO hr.t SELECT * FROM src ON CONFLICT (id) DO UPDATE SET a = 0",
		SL_SQL_INSERT | SL_SQL_UPDATE);
	/* MERGE: the target is merged into and written as its clauses say */
	check_target_kinds("MERGE INTO hr.t o USING src s ON o.id = s.id WHEN MATCHED THEN DELETE "
			   "WHEN NOT MATCHED THEN INSERT VALUES (s.id)",
			   SL_SQL_MERGE | SL_SQL_INSERT | SL_SQL_DELETE);
	q = "INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING";
	assert_int_equal(sl_sql_classify(q, strlen(q), &c), 0);
	assert_int_equal(c.ntables, 1);
	assert_int_equal(c.table_kinds[0], SL_SQL_INSERT);
	sl_sql_class_fini(&c);
}

/* The built-ins that read a table or schema named by a string argument
 * name it like a FROM list would; one that cannot be read is opaque. */
static void
test_relations_named_by_argument(void **state)
{
	static const struct {
		const char *sql, *table, *schema;
		uint32_t kinds;
	} cases[] = {
		{"SELECT table_to_xml('hr.payroll', true, false, '')", "hr.payroll", NULL,
		 SL_SQL_SELECT},
		{"SELECT pg_catalog.table_to_xml_and_xmlschema(' HR . \"Pay \"\"Roll\"\" "
		 "\"'::regclass, "
		 "true, false, '')",
		 "hr.Pay \"Roll\" ", NULL, SL_SQL_SELECT},
		{"SELECT table_to_xmlschema('mydb.hr.payroll', true, false, '')", "hr.payroll",
		 NULL, SL_SQL_SELECT},
		{"SELECT Table_To_Xml('Payroll', true, false, '')", "payroll", NULL, SL_SQL_SELECT},
		{"SELECT schema_to_xml('hr', true, false, '')", NULL, "hr", SL_SQL_SELECT},
		{"SELECT table_to_xml(16384, true, false, '')", NULL, NULL,
		 SL_SQL_SELECT | SL_SQL_DO},
		/* PostgreSQL keeps 63 bytes of a name */
		{"SELECT "
		 "table_to_xml('hr."
		 "pppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppzzzz', true, "
		 "false, '')",
		 "hr.ppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppp", NULL,
		 SL_SQL_SELECT},
		{"SELECT "
		 "schema_to_xml('pppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppzz'"
		 ", true, false, '')",
		 NULL, "ppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppppp",
		 SL_SQL_SELECT},
		{"SELECT table_to_xml($1, true, false, '')", NULL, NULL, SL_SQL_SELECT | SL_SQL_DO},
		{"SELECT table_to_xml('a.b.c.d', true, false, '')", NULL, NULL,
		 SL_SQL_SELECT | SL_SQL_DO},
		{"SELECT table_to_xml('hr.', true, false, '')", NULL, NULL,
		 SL_SQL_SELECT | SL_SQL_DO},
		{"SELECT table_to_xml('\"hr', true, false, '')", NULL, NULL,
		 SL_SQL_SELECT | SL_SQL_DO},
		{"SELECT schema_to_xml(current_schema(), true, false, '')", NULL, NULL,
		 SL_SQL_SELECT | SL_SQL_DO},
		{"SELECT database_to_xml(true, false, '')", NULL, NULL, SL_SQL_SELECT | SL_SQL_DO},
		{"SELECT * FROM crosstab('SELECT a, b, c FROM hr.payroll')", NULL, NULL,
		 SL_SQL_SELECT | SL_SQL_DO},
		/* pageinspect reads a table's pages named by a string */
		{"SELECT * FROM heap_page_items(get_raw_page('hr.payroll', 0))", "hr.payroll", NULL,
		 SL_SQL_SELECT},
		{"SELECT get_raw_page($1, 0)", NULL, NULL, SL_SQL_SELECT | SL_SQL_DO},
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct sl_sql_class c;
		int t = 0, sc = 0;

		assert_int_equal(sl_sql_classify(cases[i].sql, strlen(cases[i].sql), &c), 0);
		for (size_t j = 0; j < c.ntables; j++)
			t |= cases[i].table != NULL && strcmp(c.tables[j], cases[i].table) == 0;
		for (size_t j = 0; j < c.nschemas; j++)
			sc |= cases[i].schema != NULL && strcmp(c.schemas[j], cases[i].schema) == 0;
		if (c.kinds != cases[i].kinds || t != (cases[i].table != NULL) ||
		    sc != (cases[i].schema != NULL) || c.ntables != (cases[i].table != NULL))
			fail_msg("%s: kinds %x tables %zu schemas %zu", cases[i].sql, c.kinds,
				 c.ntables, c.nschemas);
		sl_sql_class_fini(&c);
	}
}

/* Columns a result's computed values may carry (taint for column rules). */
static void
test_result_expression_columns(void **state)
{
	static const struct {
		const char *sql, *cols; /* comma-separated, in order found */
		int indirect;
	} cases[] = {
		{"SELECT ssn FROM t", "", 0},
		{"SELECT pg_backend_pid(), ssn, t.name FROM t", "", 0},
		{"SELECT ssn || '' FROM t", "ssn", 0},
		{"SELECT upper(t.ssn) AS x, name FROM t", "ssn", 0},
		{"SELECT count(ssn), count(*) FROM t", "", 0},
		{"SELECT count(ssn), length(ssn) FROM t", "ssn", 0},
		{"SELECT (SELECT ssn FROM t LIMIT 1)", "ssn", 0},
		{"SELECT x FROM (SELECT ssn AS x FROM t) s", "ssn", 0},
		{"WITH c AS (SELECT ssn AS z FROM t) SELECT z || 1 FROM c", "z,ssn", 0},
		{"SELECT ssn FROM t UNION SELECT name FROM u", "ssn,name", 0},
		{"SELECT t.* FROM t", "", 0},
		{"SELECT id FROM t WHERE ssn = '1'", "", 0},
		{"DELETE FROM t WHERE id = 1 RETURNING ssn", "ssn", 0},
		{"FETCH 10 FROM c", "", 1},
		{"EXECUTE p(1)", "", 1},
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct sl_sql_class c;
		char got[256] = "";
		size_t o = 0;

		assert_int_equal(sl_sql_classify(cases[i].sql, strlen(cases[i].sql), &c), 0);
		for (size_t j = 0; j < c.ntarget_cols; j++)
			o += (size_t)snprintf(got + o, sizeof(got) - o, "%s%s", j ? "," : "",
					      c.target_cols[j]);
		if (strcmp(got, cases[i].cols) != 0 || c.indirect != cases[i].indirect)
			fail_msg("%s: [%s] indirect %d", cases[i].sql, got, c.indirect);
		sl_sql_class_fini(&c);
	}
}

static void
test_redact_secrets(void **state)
{
	static const struct {
		const char *in, *out;
		size_t n;
	} cases[] = {
		{"CREATE ROLE a LOGIN PASSWORD 'hunter2'", "CREATE ROLE a LOGIN PASSWORD '*******'",
		 1},
		{"alter user a with encrypted password 'it''s'",
		 "alter user a with encrypted password '*****'", 1},
		{"ALTER ROLE a PASSWORD E'x\\'y' VALID UNTIL '2030-01-01'",
		 "ALTER ROLE a PASSWORD E'****' VALID UNTIL '2030-01-01'", 1},
		{"ALTER ROLE a PASSWORD $p$se'cr$p$", "ALTER ROLE a PASSWORD $p$*****$p$", 1},
		{"ALTER ROLE a PASSWORD /* c */ U&'d\\0061t' ",
		 "ALTER ROLE a PASSWORD /* c */ U&'*******' ", 1},
		{"ALTER ROLE a PASSWORD 'ab'\n'cd' LOGIN", "ALTER ROLE a PASSWORD '**'\n'**' LOGIN",
		 2},
		{"CREATE USER MAPPING FOR app SERVER s OPTIONS (user 'bob', password 'pw1')",
		 "CREATE USER MAPPING FOR app SERVER s OPTIONS (user 'bob', password '***')", 1},
		{"ALTER SERVER s OPTIONS (ADD sslpassword 'k')",
		 "ALTER SERVER s OPTIONS (ADD sslpassword '*')", 1},
		{"SELECT * FROM t WHERE api_token = 'tok' AND \"Password\"='x' AND b = 'keep'",
		 "SELECT * FROM t WHERE api_token = '***' AND \"Password\"='*' AND b = 'keep'", 2},
		/* names in literals, comments and quoted names of other words are not secrets */
		{"SELECT 'password', x FROM t -- password 'a'\n WHERE \"a password\" = 'b'",
		 "SELECT 'password', x FROM t -- password 'a'\n WHERE \"a password\" = '*'", 1},
		{"SELECT password_hash FROM t WHERE id = 'a'", NULL, 0},
		{"SELECT $1, password, 'x' FROM t", NULL, 0},
		{"ALTER ROLE a PASSWORD NULL", NULL, 0},
		/* a U&"..." name may spell password with escapes: taken as one */
		{"ALTER SERVER s OPTIONS (SET U&\"pass\\0077ord\" 'k1')",
		 "ALTER SERVER s OPTIONS (SET U&\"pass\\0077ord\" '**')", 1},
		{"ALTER SERVER s OPTIONS (SET U&\"pass!0077ord\" UESCAPE '!' 'k1')",
		 "ALTER SERVER s OPTIONS (SET U&\"pass!0077ord\" UESCAPE '!' '**')", 1},
		{"ALTER SERVER s OPTIONS (SET u&\"p\\0061\\0073\\0073word\" 'k1')",
		 "ALTER SERVER s OPTIONS (SET u&\"p\\0061\\0073\\0073word\" '**')", 1},
		{"SELECT abalance FROM pgbench_accounts WHERE aid = '5'", NULL, 0},
		/* pgcrypto: the password crypt() hashes, keys and passwords */
		{"SELECT * FROM users WHERE pw = crypt('s3cret-pw', pw)",
		 "SELECT * FROM users WHERE pw = crypt('*********', pw)", 1},
		{"SELECT pgcrypto.CRYPT (lower('Pw'), gen_salt('bf'))",
		 "SELECT pgcrypto.CRYPT (lower('**'), gen_salt('bf'))", 1},
		{"SELECT pgp_sym_encrypt(ARRAY['a','b']::text, 'k3y', 'cipher-algo=aes256')",
		 "SELECT pgp_sym_encrypt(ARRAY['a','b']::text, '***', 'cipher-algo=aes256')", 1},
		{"SELECT pgp_pub_decrypt(d, dearmor(k), $$pw$$), hmac('m', 'hk', 'sha256') FROM t",
		 "SELECT pgp_pub_decrypt(d, dearmor(k), $$**$$), hmac('m', '**', 'sha256') FROM t",
		 1},
		{"SELECT encrypt_iv('data', 'key', 'iv', 'aes'), decrypt(x, 'k', 'bf') FROM t",
		 "SELECT encrypt_iv('data', '***', '**', 'aes'), decrypt(x, '*', 'bf') FROM t", 1},
		{"SELECT crypted, 'crypt(''a'')' FROM t", NULL, 0},
		/* INSERT: values of columns that name a secret, row by row */
		{"INSERT INTO users (name, password, n) VALUES ('ann', 'pw1', 1), ('bob', f('x', "
		 "'pw2'), 2) RETURNING name",
		 "INSERT INTO users (name, password, n) VALUES ('ann', '***', 1), ('bob', f('*', "
		 "'***'), 2) RETURNING name",
		 1},
		{"WITH x AS (INSERT INTO t (\"API_Token\", a) VALUES ($$t1$$, 'a') RETURNING *) "
		 "SELECT 'b' FROM x",
		 "WITH x AS (INSERT INTO t (\"API_Token\", a) VALUES ($$**$$, 'a') RETURNING *) "
		 "SELECT 'b' FROM x",
		 1},
		{"INSERT INTO t (a, b) VALUES ('pass', 'word') ON CONFLICT (a) DO NOTHING", NULL,
		 0},
		{"INSERT INTO t VALUES ('secret', 'token')", NULL, 0},
		{"INSERT INTO t (token) SELECT 'x'", NULL, 0},
		/* SET ... TO is SET ... = */
		{"SET app.password TO 'x'", "SET app.password TO '*'", 1},
		{"SET SESSION x.client_secret TO 'abc'", "SET SESSION x.client_secret TO '***'", 1},
		{"ALTER ROLE r IN DATABASE d SET x.Password TO E'pw'",
		 "ALTER ROLE r IN DATABASE d SET x.Password TO E'**'", 1},
		{"ALTER DATABASE d SET x.api_token to $$t$$",
		 "ALTER DATABASE d SET x.api_token to $$*$$", 1},
		{"ALTER TABLE t RENAME password TO pw", NULL, 0},
		{"SET search_path TO 'public'", NULL, 0},
		/* URLs with credentials, in any literal: the password only */
		{"SELECT dblink_connect('postgresql://app:s3cr@t@db.example:5432/demo?ssl=1')",
		 "SELECT dblink_connect('postgresql://app:******@db.example:5432/demo?ssl=1')", 1},
		{"SELECT $$mysql://root:toor@10.0.0.1/x$$, 'redis://:rpw@cache:6379/0', x FROM t",
		 "SELECT $$mysql://root:****@10.0.0.1/x$$, 'redis://:***@cache:6379/0', x FROM t",
		 2},
		{"INSERT INTO t VALUES ('see https://u:p4ss@example.com/a and amqp://g:gg@h')",
		 "INSERT INTO t VALUES ('see https://u:****@example.com/a and amqp://g:**@h')", 2},
		{"SELECT 'postgres://app@h/db', 'http://h:8080/a@b', 'a::b' FROM t", NULL, 0},
		/* unterminated: to the end */
		{"ALTER ROLE a PASSWORD 'abc", "ALTER ROLE a PASSWORD '***", 1},
		{"ALTER ROLE a PASSWORD $$abc", "ALTER ROLE a PASSWORD $$***", 1},
		/* a backslash in a plain literal: both readings of where it ends */
		{"ALTER ROLE a PASSWORD 'a\\' LOGIN", "ALTER ROLE a PASSWORD '*********", 1},
		{"SELECT 'a\\', password 'b' FROM t", "SELECT 'a\\', password '*' FROM t", 1},
		/* a secret only the standard_conforming_strings = off reading sees */
		{"SELECT 'x\\'', password 'pw' --'", "SELECT 'x\\'', password '**' --'", 1},
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *s = strdup(cases[i].in);
		size_t n = sl_sql_redact_secrets(s, strlen(s));
		const char *want = cases[i].out ? cases[i].out : cases[i].in;

		if ((n > 0) != (cases[i].n > 0) || strcmp(s, want) != 0)
			fail_msg("%s -> %s (%zu)", cases[i].in, s, n);
		free(s);
	}
}

static void
test_shape(void **state)
{
	char *a, *b;
	size_t al, bl;

	const char *q1 = "SELECT * FROM t WHERE a = 1 AND b = 'x'";
	const char *q2 = "SELECT * FROM t WHERE a = 99 AND b = 'yy'";

	assert_int_equal(sl_sql_shape(q1, strlen(q1), &a, &al), 1);
	assert_int_equal(sl_sql_shape(q2, strlen(q2), &b, &bl), 1);
	assert_string_equal(a, b);
	free(a);
	free(b);
	/* identifiers with digits are not literals */
	sl_sql_shape("SELECT t1.c2 FROM t1", 20, &a, &al);
	assert_string_equal(a, "SELECT t1.c2 FROM t1");
	free(a);
	/* ints and strings do not share a shape */
	sl_sql_shape("FETCH 5 FROM c", 14, &a, &al);
	sl_sql_shape("FETCH '5' FROM c", 16, &b, &bl);
	assert_string_not_equal(a, b);
	free(a);
	free(b);
	/* a '?' of the text never reads as a folded literal: "j ?i" (the
	 * jsonb operator and a column i) and "j 1" have different shapes, and
	 * so do "a ?? b" and "a ? ?s" */
	{
		const char *pairs[][2] = {{"SELECT j ?i FROM t", "SELECT j 1 FROM t"},
					  {"SELECT j ?s FROM t", "SELECT j 'x' FROM t"},
					  {"SELECT a ?? b", "SELECT a ? 'x' b"},
					  {"SELECT a ?f FROM t", "SELECT a 1.5 FROM t"}};

		for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
			sl_sql_shape(pairs[i][0], strlen(pairs[i][0]), &a, &al);
			sl_sql_shape(pairs[i][1], strlen(pairs[i][1]), &b, &bl);
			assert_false(al == bl && memcmp(a, b, al) == 0);
			free(a);
			free(b);
		}
	}
	/* runs of plain bytes are copied as they are */
	sl_sql_shape("SELECT a_b, (c+d)*e FROM t WHERE x <> y;", 40, &a, &al);
	assert_string_equal(a, "SELECT a_b, (c+d)*e FROM t WHERE x <> y;");
	free(a);
	/* cases the lexer refuses to fold */
	{
		const char *exact[] = {
			"SELECT E'\\''", "SELECT $$x$$", "SELECT /* /* */ */ 1", "SELECT 1abc",
			"SELECT U&'d'", "SELECT 'a'\n'b'", "SELECT 'caf\xc3\xa9'", "SELECT x'1f'",
			/* set_config's kinds depend on its literal name */
			"SELECT set_config('role', 'x', false)",
			"SELECT SET_CONFIG('a', 'b', true)", "SELECT U&\"f\"('role')"};

		for (size_t i = 0; i < sizeof(exact) / sizeof(exact[0]); i++) {
			assert_int_equal(sl_sql_shape(exact[i], strlen(exact[i]), &a, &al), 0);
			assert_string_equal(a, exact[i]);
			free(a);
		}
	}
}

/* Differential: the cache must agree with direct classification. */
static void
test_cache_differential(void **state)
{
	static const char *tmpl[] = {
		"SELECT %d FROM t",
		"DELETE FROM t WHERE id = %d",
		"SELECT '%d'; DROP TABLE t",
		"UPDATE t SET a = %d",
		"SELECT %d; -- DROP TABLE x",
		"select %d /* ; drop table x */",
		"SELECT 'it''s %d'; TRUNCATE t",
		"SELECT %d.5e3 FROM t",
		"EXECUTE p(%d)",
		"SELECT \"%d\" FROM t",
		"SELECT 1 -%d",
		"COPY t FROM PROGRAM '%d'",
	};
	struct sl_sql_cache *cache = sl_sql_cache_new(8);

	for (int round = 0; round < 3; round++) {
		for (size_t i = 0; i < sizeof(tmpl) / sizeof(tmpl[0]); i++) {
			char q[256];
			struct sl_sql_class d;
			const struct sl_sql_class *c;

			snprintf(q, sizeof(q), tmpl[i], round * 7 + (int)i);
			assert_int_equal(sl_sql_classify(q, strlen(q), &d), 0);
			assert_int_equal(sl_sql_cache_classify(cache, q, strlen(q), &c), 0);
			assert_int_equal(c->kinds, d.kinds);
			sl_sql_class_fini(&d);
		}
	}
	sl_sql_cache_free(cache);
}

/* read_write: what would make a read_only connection's transactions
 * read-write, however spelled; the cache must not let a literal change it. */
static void
test_read_write(void **state)
{
	static const struct {
		int rw;
		const char *sql;
	} cases[] = {
		{1, "SET default_transaction_read_only = off"},
		{1, "SET SESSION default_transaction_read_only TO 'off'"},
		{1, "set local transaction_read_only = 0"},
		{1, "SET transaction_read_only = false"},
		{1, "SET default_transaction_read_only = t"}, /* an abbreviation: refused */
		{1, "SET \"Default_Transaction_Read_Only\" = off"},
		{1, "SET U&\"default_transaction_read_onl\\0079\" = off"},
		{1, "SET TRANSACTION READ WRITE"},
		{1, "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ WRITE"},
		{1, "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE"},
		{1, "BEGIN READ WRITE"},
		{1, "BEGIN TRANSACTION READ ONLY, READ WRITE"},
		{1, "START TRANSACTION READ WRITE"},
		{1, "SELECT 1; BEGIN ISOLATION LEVEL SERIALIZABLE READ WRITE"},
		{1, "SELECT set_config('default_transaction_read_only', 'off', false)"},
		{1, "SELECT pg_catalog.set_config('TRANSACTION_READ_ONLY', 'false', true)"},
		{1, "SELECT set_config('default_transaction_read_only', $1, false)"},
		{1, "SELECT set_config($1, 'off', false)"},
		{1, "SELECT set_config(lower('DEFAULT_TRANSACTION_READ_ONLY'), 'off', false)"},
		{1, "SELECT x FROM t WHERE set_config(name, 'off', false) IS NULL"},
		{1, "SELECT set_config(name, 'off', false) FROM pg_settings WHERE name = "
		    "'default_transaction_read_only'"},
		{1, "WITH s AS (SELECT set_config('transaction_read_only', 'off', true)) SELECT * "
		    "FROM s"},
		/* code that can COMMIT and go on read-write, or connect again */
		{1, "DO $$ BEGIN PERFORM set_config('default_transaction_read_only', 'off', "
		    "false); COMMIT; INSERT INTO t VALUES (1); END $$"},
		{1, "DO LANGUAGE plpgsql 'BEGIN NULL; END'"},
		{1, "CALL archive_orders(30)"},
		{1,
		 "SELECT x FROM dblink('dbname=orders', 'DELETE FROM t RETURNING 1') AS t(x int)"},
		{1, "SELECT public.dblink_exec('INSERT INTO t VALUES (1)')"},
		{1, "LOAD 'auto_explain'"},
		{1, "SELECT * FROM xpath_table('id', 'd', 't', '/a', 'true; DELETE FROM t') AS "
		    "x(id int, a text)"},
		{1, "COMMIT PREPARED 'x'"},
		{1, "ROLLBACK PREPARED 'x'"},
		{0, "PREPARE TRANSACTION 'x'"},
		/* attribute notation: (expr).f is f(expr), t.f is f(t) */
		{1, "SELECT ('dbname=x host=10.0.0.1'::text).dblink_connect"},
		{1, "SELECT ('DELETE FROM orders'::text).dblink_exec"},
		{1, "SELECT s.dblink_exec FROM (SELECT 'DELETE FROM orders'::text) s"},
		{0, "UPDATE t SET c.dblink_exec = 1"},
		{0, "SELECT dblink_exec FROM t"},
		/* transaction_read_only's reset value is off (its boot value),
		 * not the login's on: RESET and TO DEFAULT ask for read-write */
		{1, "RESET transaction_read_only"},
		{1, "SET transaction_read_only TO DEFAULT"},
		{1, "SET LOCAL transaction_read_only TO DEFAULT"},
		{1, "BEGIN; RESET transaction_read_only; INSERT INTO t VALUES (1); COMMIT"},
		{1, "RESET \"Transaction_Read_Only\""},
		{1, "SET transaction_read_only FROM CURRENT"},
		{0, "SELECT * FROM crosstab('SELECT a, b, c FROM t') AS ct(a text, b int)"},
		{0, "SELECT 'DoStmt', 'CallStmt', 'dblink_exec' FROM t"},
		{0, "SET default_transaction_read_only = on"},
		{0, "SET default_transaction_read_only TO 'true'"},
		{0, "SET transaction_read_only = 1"},
		{0, "SET default_transaction_read_only TO DEFAULT"},
		{0, "RESET default_transaction_read_only"},
		{0, "RESET ALL"},
		{0, "DISCARD ALL"},
		{0, "SET TRANSACTION READ ONLY"},
		{0, "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY, DEFERRABLE"},
		{0, "BEGIN"},
		{0, "START TRANSACTION ISOLATION LEVEL SERIALIZABLE"},
		{0, "COMMIT AND CHAIN"},
		{0, "SET search_path = public"},
		{0, "SELECT set_config('application_name', 'off', false)"},
		{0, "SELECT set_config('default_transaction_read_only', 'on', false)"},
		{0, "SELECT set_config(name, 'view, foreign-table', false) FROM pg_settings WHERE "
		    "name = 'restrict_nonsystem_relation_kind'"},
		{0, "SELECT 'transaction_read_only', 'set_config' FROM t"},
		{0, "SHOW default_transaction_read_only"},
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct sl_sql_class c;

		assert_int_equal(sl_sql_classify(cases[i].sql, strlen(cases[i].sql), &c), 0);
		if (c.read_write != cases[i].rw)
			fail_msg("read_write %d for: %s", c.read_write, cases[i].sql);
		assert_false(c.kinds & SL_SQL_UNPARSEABLE);
		sl_sql_class_fini(&c);
	}
	/* same shape, different answer: the cache keys these texts exactly */
	{
		static const char *seq[] = {
			"SET default_transaction_read_only = 'on'",
			"SET default_transaction_read_only = 'off'",
			"SET transaction_read_only = 1",
			"SET transaction_read_only = 0",
			"SELECT set_config('default_transaction_read_only', 'on', false)",
			"SELECT set_config('default_transaction_read_only', 'no', false)",
		};
		struct sl_sql_cache *cache = sl_sql_cache_new(16);

		for (size_t i = 0; i < sizeof(seq) / sizeof(seq[0]); i++) {
			const struct sl_sql_class *c;

			assert_int_equal(sl_sql_cache_classify(cache, seq[i], strlen(seq[i]), &c),
					 0);
			assert_int_equal(c->read_write, (int)(i % 2));
		}
		sl_sql_cache_free(cache);
	}
}

static const char policy_yaml[] =
	"connections:\n"
	"  - { name: orders, type: postgres, target: '127.0.0.1:5432' }\n"
	"  - { name: other, type: postgres, target: '127.0.0.1:5433' }\n"
	"policies:\n"
	"  - name: agents\n"
	"    match: { groups: [ai-agents] }\n"
	"    connections: [orders]\n"
	"    rules:\n"
	"      - { action: block, sql: [drop, truncate], message: no }\n"
	"      - { action: block, functions: [pg_read_file] }\n"
	"      - { action: block, sql: [delete_all] }\n"
	"      - { action: review, sql: [delete, update], approvers: [dba] }\n"
	"      - { action: allow, sql: [select, insert] }\n"
	"      - { action: allow, sql: [update], tables: [scratch] }\n"
	"  - name: alice\n"
	"    match: { subjects: [alice] }\n"
	"    default: allow\n";

static enum sl_action
decide(struct sl_policy_set *ps, const char *sub, const char *group, const char *conn,
       const char *sql, struct sl_decision *d)
{
	struct sl_sql_class c;
	struct sl_request r = {.proto = SL_PROTO_PG, .connection = conn, .sql = &c};
	const char *groups[1] = {group};

	sl_sql_classify(sql, strlen(sql), &c);
	assert_int_equal(sl_policy_decide(ps, sub, groups, group ? 1 : 0, &r, d), 0);
	sl_sql_class_fini(&c);
	return d->action;
}

static void
test_policy_semantics(void **state)
{
	struct sl_config *cfg;
	struct sl_policy_set *ps;
	struct sl_decision d;
	char err[512];

	assert_int_equal(
		sl_config_load_data("t", policy_yaml, strlen(policy_yaml), &cfg, err, sizeof(err)),
		0);
	assert_int_equal(sl_policy_compile(cfg, &ps, err, sizeof(err)), 0);
	assert_int_equal(decide(ps, "a", "ai-agents", "orders", "SELECT 1", &d), SL_ACT_ALLOW);
	/* an allow names the rule that allowed it (for the audit trail) */
	assert_string_equal(d.policy, "agents");
	assert_string_equal(d.rule, "agents#5");
	assert_int_equal(decide(ps, "alice", NULL, "orders", "DROP TABLE t", &d), SL_ACT_ALLOW);
	assert_string_equal(d.policy, "alice");
	assert_string_equal(d.rule, "default");
	assert_int_equal(decide(ps, "a", "ai-agents", "orders", "DROP TABLE t", &d), SL_ACT_BLOCK);
	assert_string_equal(d.message, "no");
	assert_string_equal(d.rule, "agents#1");
	assert_int_equal(decide(ps, "a", "ai-agents", "orders", "SELECT pg_read_file('x')", &d),
			 SL_ACT_BLOCK);
	assert_int_equal(decide(ps, "a", "ai-agents", "orders", "DELETE FROM t", &d), SL_ACT_BLOCK);
	assert_int_equal(decide(ps, "a", "ai-agents", "orders", "DELETE FROM t WHERE id=1", &d),
			 SL_ACT_REVIEW);
	assert_int_equal(d.napprovers, 1);
	assert_string_equal(d.approvers[0], "dba");
	assert_int_equal(d.min_approvals, 1);
	assert_int_equal(d.timeout_ms, 300000);
	/* a DELETE hidden in a CTE makes the SELECT a delete */
	assert_int_equal(
		decide(ps, "a", "ai-agents", "orders",
		       "WITH x AS (DELETE FROM t WHERE id = 1 RETURNING *) SELECT * FROM x", &d),
		SL_ACT_REVIEW);
	/* block, then review, then allow: the review rule on update holds an
	 * update that the allow rule (update on scratch) also covers */
	assert_int_equal(
		decide(ps, "a", "ai-agents", "orders", "UPDATE scratch SET a=1 WHERE b=2", &d),
		SL_ACT_REVIEW);
	assert_string_equal(d.rule, "agents#4");
	/* a locking read is an update (PostgreSQL asks UPDATE privilege for
	 * it): held by the review rule on update like one, and every table
	 * it names counts as updated (what an allow rule's tables: must list) */
	assert_int_equal(decide(ps, "a", "ai-agents", "orders",
				"SELECT * FROM scratch WHERE id = 1 FOR UPDATE", &d),
			 SL_ACT_REVIEW);
	{
		struct sl_sql_class c;
		const char *q = "SELECT * FROM scratch s JOIN t USING (id) FOR SHARE OF s";
		int upd = 0;

		assert_int_equal(sl_sql_classify(q, strlen(q), &c), 0);
		assert_true(c.kinds & SL_SQL_UPDATE);
		assert_false(c.kinds & SL_SQL_UPDATE_ALL);
		for (size_t i = 0; i < c.ntables; i++)
			upd += (c.table_kinds[i] & SL_SQL_UPDATE) != 0;
		/* scratch, t and the OF list's s (an alias, kept as a name:
		 * rules see more names, never fewer) */
		assert_int_equal(c.ntables, 3);
		assert_int_equal(upd, 3);
		sl_sql_class_fini(&c);
		/* a PREPARE keeps it for its EXECUTE */
		q = "PREPARE l AS SELECT * FROM t WHERE id = $1 FOR NO KEY UPDATE";
		assert_int_equal(sl_sql_classify(q, strlen(q), &c), 0);
		assert_int_equal(c.nprepared, 1);
		assert_true(c.prepared_kinds[0] & SL_SQL_UPDATE);
		sl_sql_class_fini(&c);
	}
	/* uncovered kind: default deny */
	assert_int_equal(decide(ps, "a", "ai-agents", "orders", "CREATE TABLE x (a int)", &d),
			 SL_ACT_BLOCK);
	assert_non_null(strstr(d.message, "ddl"));
	/* wrong connection: no applicable policy */
	assert_int_equal(decide(ps, "a", "ai-agents", "other", "SELECT 1", &d), SL_ACT_BLOCK);
	assert_non_null(strstr(d.message, "no policy"));
	/* subject match with default allow, but unparseable is always blocked */
	assert_int_equal(decide(ps, "alice", NULL, "other", "CREATE TABLE x (a int)", &d),
			 SL_ACT_ALLOW);
	assert_int_equal(decide(ps, "alice", NULL, "other", "SELEC 1", &d), SL_ACT_BLOCK);
	/* empty query */
	assert_int_equal(decide(ps, "a", "ai-agents", "orders", "", &d), SL_ACT_ALLOW);
	/* HTTP requests never match SQL rules */
	{
		struct sl_request r = {.proto = SL_PROTO_HTTP,
				       .connection = "orders",
				       .http_method = "GET",
				       .http_path = "/x"};
		const char *g[1] = {"ai-agents"};

		sl_policy_decide(ps, "a", g, 1, &r, &d);
		assert_int_equal(d.action, SL_ACT_BLOCK);
	}
	sl_policy_free(ps);
	sl_config_free(cfg);
}

/* DESIGN's rule order, block then review then allow: an allow rule (or a
 * policy's default) never voids a review rule that matches. */
static const char review_yaml[] =
	"connections:\n"
	"  - { name: orders, type: postgres, target: '127.0.0.1:5432' }\n"
	"policies:\n"
	"  - name: agents\n"
	"    match: { groups: [ai-agents] }\n"
	"    rules:\n"
	"      - { action: allow, sql: [select, insert, update, delete] }\n"
	"      - { action: review, sql: [delete_all, update_all], approvers: [dba], name: "
	"unbounded }\n"
	"  - name: dba\n"
	"    match: { groups: [dba] }\n"
	"    default: allow\n";

/* A read_only connection refuses read_write statements before any rule:
 * not even a policy that allows everything lets them through. */
static void
test_policy_read_only(void **state)
{
	struct sl_config *cfg;
	struct sl_policy_set *ps;
	struct sl_decision d;
	struct sl_sql_class c;
	const char *sql[] = {"SET TRANSACTION READ WRITE", "SELECT 1",
			     "COPY orders TO PROGRAM 'psql -c \"DELETE FROM orders\"'",
			     "SELECT * FROM orders"};
	char err[512];

	(void)state;
	assert_int_equal(
		sl_config_load_data("t", policy_yaml, strlen(policy_yaml), &cfg, err, sizeof(err)),
		0);
	assert_int_equal(sl_policy_compile(cfg, &ps, err, sizeof(err)), 0);
	for (int ro = 0; ro <= 1; ro++) {
		for (size_t i = 0; i < sizeof(sql) / sizeof(sql[0]); i++) {
			struct sl_request r = {.proto = SL_PROTO_PG,
					       .connection = "orders",
					       .sql = &c,
					       .read_only = ro};

			sl_sql_classify(sql[i], strlen(sql[i]), &c);
			assert_int_equal(sl_policy_decide(ps, "alice", NULL, 0, &r, &d), 0);
			sl_sql_class_fini(&c);
			if (ro && i % 2 == 0) {
				assert_int_equal(d.action, SL_ACT_BLOCK);
				assert_string_equal(d.rule, "read_only");
				assert_non_null(strstr(d.message, "orders is read-only"));
			} else {
				assert_int_equal(d.action, SL_ACT_ALLOW);
			}
		}
	}
	sl_policy_free(ps);
	sl_config_free(cfg);
}

static void
test_policy_review_beats_allow(void **state)
{
	static const struct {
		const char *sql;
		enum sl_action want;
	} cases[] = {
		{"DELETE FROM t", SL_ACT_REVIEW},
		{"delete from t -- all of it", SL_ACT_REVIEW},
		{"UPDATE t SET a = 1", SL_ACT_REVIEW},
		{"WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x", SL_ACT_REVIEW},
		{"SELECT 1; DELETE FROM t", SL_ACT_REVIEW},
		{"DELETE FROM t WHERE id = 1", SL_ACT_ALLOW},
		{"UPDATE t SET a = 1 WHERE id = 1", SL_ACT_ALLOW},
		/* an uncovered kind is refused outright, review or not */
		{"DELETE FROM t; CREATE TABLE u (a int)", SL_ACT_BLOCK},
	};
	struct sl_config *cfg;
	struct sl_policy_set *ps;
	struct sl_decision d;
	char err[512];

	(void)state;
	assert_int_equal(
		sl_config_load_data("t", review_yaml, strlen(review_yaml), &cfg, err, sizeof(err)),
		0);
	assert_int_equal(sl_policy_compile(cfg, &ps, err, sizeof(err)), 0);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		enum sl_action got = decide(ps, "a", "ai-agents", "orders", cases[i].sql, &d);

		if (got != cases[i].want)
			fail_msg("%s: got %d, want %d", cases[i].sql, (int)got, (int)cases[i].want);
		if (got == SL_ACT_REVIEW)
			assert_string_equal(d.rule, "unbounded");
	}
	/* a policy's default: allow does not void another policy's review */
	{
		struct sl_sql_class c;
		struct sl_request r = {.proto = SL_PROTO_PG, .connection = "orders", .sql = &c};
		const char *groups[2] = {"dba", "ai-agents"};

		sl_sql_classify("DELETE FROM t", 13, &c);
		assert_int_equal(sl_policy_decide(ps, "a", groups, 2, &r, &d), 0);
		assert_int_equal(d.action, SL_ACT_REVIEW);
		assert_int_equal(sl_policy_decide(ps, "a", groups, 1, &r, &d), 0);
		assert_int_equal(d.action, SL_ACT_ALLOW); /* dba alone */
		sl_sql_class_fini(&c);
	}
	sl_policy_free(ps);
	sl_config_free(cfg);
}

/* Qualified names in rules: what search_path resolves an unqualified name to
 * is up to the session, so block and review rules catch it; allow rules stay
 * exact. Compared from the right, so a three-part name is caught too. */
static const char qualified_yaml[] =
	"connections:\n"
	"  - { name: orders, type: postgres, target: '127.0.0.1:5432' }\n"
	"policies:\n"
	"  - name: agents\n"
	"    match: { groups: [ai-agents] }\n"
	"    rules:\n"
	"      - { action: block, functions: [pg_catalog.pg_read_file] }\n"
	"      - { action: block, tables: [hr.payroll, \"audit.*\"] }\n"
	"      - { action: review, sql: [update], tables: [hr.salaries], approvers: [dba] }\n"
	"      - { action: allow, sql: [update], tables: [public.tmp_*, public.scratch] }\n"
	"      - { action: allow, sql: [copy_program], functions: [util.pg_stat_file] }\n"
	"      - { action: allow, sql: [select, set] }\n";

struct decision_case {
	const char *sql;
	enum sl_action want;
};

/* Compiles yaml and checks each case's decision (subject a, group
 * ai-agents, connection orders). */
static void
check_decisions(const char *yaml, const struct decision_case *cases, size_t n)
{
	struct sl_config *cfg;
	struct sl_policy_set *ps;
	struct sl_decision d;
	char err[512];

	assert_int_equal(sl_config_load_data("t", yaml, strlen(yaml), &cfg, err, sizeof(err)), 0);
	assert_int_equal(sl_policy_compile(cfg, &ps, err, sizeof(err)), 0);
	for (size_t i = 0; i < n; i++) {
		enum sl_action got = decide(ps, "a", "ai-agents", "orders", cases[i].sql, &d);

		if (got != cases[i].want)
			fail_msg("%s: got %d, want %d", cases[i].sql, got, cases[i].want);
	}
	sl_policy_free(ps);
	sl_config_free(cfg);
}

/* MERGE's actions and another item's columns reach the rules on delete,
 * update and their _all kinds, and an allow rule's tables. */
static void
test_policy_merge_and_using(void **state)
{
	static const char yaml[] =
		"connections:\n"
		"  - { name: orders, type: postgres, target: '127.0.0.1:5432' }\n"
		"policies:\n"
		"  - name: agents\n"
		"    match: { groups: [ai-agents] }\n"
		"    rules:\n"
		"      - { action: review, sql: [delete_all, update_all], approvers: [dba] }\n"
		"      - { action: allow, sql: [update, delete], tables: [scratch] }\n"
		"      - { action: allow, sql: [select, insert, merge] }\n";
	static const struct decision_case cases[] = {
		{"MERGE INTO orders o USING t s ON o.id = s.id WHEN MATCHED THEN DELETE",
		 SL_ACT_BLOCK},
		{"MERGE INTO orders o USING t s ON o.id = s.id WHEN MATCHED THEN UPDATE SET a = 1",
		 SL_ACT_BLOCK},
		{"MERGE INTO scratch o USING orders s ON o.id = s.id WHEN MATCHED THEN DELETE",
		 SL_ACT_ALLOW},
		{"MERGE INTO scratch o USING orders s ON true WHEN MATCHED THEN DELETE",
		 SL_ACT_REVIEW},
		{"MERGE INTO scratch USING orders s ON s.id = 1 WHEN MATCHED THEN UPDATE SET a = 1",
		 SL_ACT_REVIEW},
		{"MERGE INTO orders o USING scratch s ON o.id = s.id "
		 "WHEN NOT MATCHED THEN INSERT VALUES (s.id)",
		 SL_ACT_ALLOW},
		{"DELETE FROM scratch USING orders WHERE orders.id = 1", SL_ACT_REVIEW},
		{"UPDATE scratch SET a = 1 FROM orders o WHERE o.id = 1", SL_ACT_REVIEW},
		{"DELETE FROM scratch USING orders WHERE orders.id = scratch.id", SL_ACT_ALLOW},
	};

	(void)state;
	check_decisions(yaml, cases, sizeof(cases) / sizeof(cases[0]));
}

static void
test_policy_qualified_names(void **state)
{
	static const struct decision_case cases[] = {
		{"SELECT pg_read_file('/etc/passwd')", SL_ACT_BLOCK},
		{"SELECT pg_catalog.pg_read_file('/etc/passwd')", SL_ACT_BLOCK},
		{"SELECT PG_READ_FILE('/etc/passwd')", SL_ACT_BLOCK},
		{"SELECT pg_read_file_x('/etc/passwd')", SL_ACT_ALLOW},
		/* a function of that name in another schema: blocked too (calls are
		 * listed qualified and by their last part) */
		{"SELECT other.pg_read_file('x')", SL_ACT_BLOCK},
		{"SELECT * FROM payroll", SL_ACT_BLOCK}, /* SET search_path = hr */
		{"SELECT * FROM hr.payroll", SL_ACT_BLOCK},
		{"SELECT * FROM \"hr\".\"payroll\"", SL_ACT_BLOCK},
		{"SELECT * FROM orders.hr.payroll", SL_ACT_BLOCK},
		{"SELECT * FROM public.payroll", SL_ACT_ALLOW},
		{"SELECT * FROM payroll_2024", SL_ACT_ALLOW},
		{"SELECT * FROM audit.log", SL_ACT_BLOCK},
		/* a schema-wide pattern cannot say which unqualified names are in
		 * that schema: it matches qualified names only (docs/policy.md) */
		{"SELECT * FROM log", SL_ACT_ALLOW},
		{"UPDATE salaries SET a = 1 WHERE id = 1", SL_ACT_REVIEW},
		{"UPDATE public.tmp_x SET a = 1 WHERE id = 1", SL_ACT_ALLOW},
		{"UPDATE db.public.tmp_x SET a = 1 WHERE id = 1", SL_ACT_ALLOW},
		/* an allow rule's qualified name does not stretch to an unqualified one */
		{"UPDATE tmp_x SET a = 1 WHERE id = 1", SL_ACT_BLOCK},
		{"UPDATE scratch SET a = 1 WHERE id = 1", SL_ACT_BLOCK},
		{"UPDATE public.scratch SET a = 1 WHERE id = 1", SL_ACT_ALLOW},
		/* an allow rule's tables: must cover every table the statement
		 * updates, or "allow update on scratch" lets other tables through */
		{"UPDATE public.orders SET a = 1 FROM public.scratch WHERE true", SL_ACT_BLOCK},
		/* ... the tables it updates, that is: orders is only read here */
		{"UPDATE public.scratch s SET a = o.a FROM public.orders o WHERE s.id = o.id",
		 SL_ACT_ALLOW},
		{"WITH s AS (SELECT 1 AS a) UPDATE public.scratch SET a = s.a FROM s",
		 SL_ACT_ALLOW},
		{"WITH u AS (UPDATE public.orders SET a = 1 RETURNING *) UPDATE public.scratch SET "
		 "a "
		 "= 1",
		 SL_ACT_BLOCK},
		{"UPDATE public.scratch SET a = 1 FROM public.orders o, public.orders p WHERE "
		 "true; "
		 "DELETE FROM public.scratch",
		 SL_ACT_BLOCK},
		{"UPDATE public.scratch SET a = 1 WHERE id = 1; UPDATE public.orders SET a = 1 "
		 "WHERE "
		 "id = 1",
		 SL_ACT_BLOCK},
		{"UPDATE public.orders SET a = (SELECT 1 FROM public.scratch) WHERE id = 1",
		 SL_ACT_BLOCK},
		{"UPDATE public.tmp_a SET a = 1 FROM public.tmp_b WHERE true", SL_ACT_ALLOW},
		/* a review rule applies when any table it names is touched */
		{"UPDATE hr.salaries SET a = 1 FROM public.scratch WHERE true", SL_ACT_REVIEW},
		/* an allow rule's functions: must cover every call (pg_stat_file adds
		 * copy_program; the allowed one is util's) */
		{"SELECT util.pg_stat_file('x')", SL_ACT_ALLOW},
		{"SELECT util.pg_stat_file('x'), pg_stat_file('/etc/passwd')", SL_ACT_BLOCK},
		{"SELECT util.pg_stat_file('x'), pg_read_file('y')", SL_ACT_BLOCK},
		{"SELECT pg_stat_file('/etc/passwd')", SL_ACT_BLOCK},
	};
	(void)state;
	check_decisions(qualified_yaml, cases, sizeof(cases) / sizeof(cases[0]));
}

/* Appends "<pre>0<post><sep>...<pre>(n-1)<post>" to b. */
static void
put_series(struct sl_buf *b, const char *pre, const char *post, const char *sep, int n)
{
	char one[64];

	for (int i = 0; i < n; i++) {
		int len = snprintf(one, sizeof(one), "%s%s%d%s", i ? sep : "", pre, i, post);

		assert_int_equal(sl_buf_append(b, one, (size_t)len), 0);
	}
}

/* A statement naming more tables or functions than a list keeps must not
 * push the protected name off the list (a block rule could no longer see
 * it): every name up to the limit is kept, and past it the statement is
 * refused as too complex. */
static void
test_many_names_do_not_hide_a_blocked_one(void **state)
{
	static const char yaml[] =
		"connections:\n"
		"  - { name: orders, type: postgres, target: '127.0.0.1:5432' }\n"
		"policies:\n"
		"  - name: agents\n"
		"    match: { groups: [ai-agents] }\n"
		"    rules:\n"
		"      - { action: block, tables: [hr.payroll] }\n"
		"      - { action: block, functions: [my_dangerous_fn] }\n"
		"      - { action: allow, sql: [select] }\n";
	static const int counts[] = {300, 1100};
	struct sl_config *cfg;
	struct sl_policy_set *ps;
	struct sl_decision d;
	char err[512];

	(void)state;
	assert_int_equal(sl_config_load_data("t", yaml, strlen(yaml), &cfg, err, sizeof(err)), 0);
	assert_int_equal(sl_policy_compile(cfg, &ps, err, sizeof(err)), 0);
	for (size_t k = 0; k < sizeof(counts) / sizeof(counts[0]); k++) {
		struct sl_buf b;

		/* WITH t0 AS (SELECT 1), ... SELECT * FROM t0, ..., hr.payroll */
		sl_buf_init(&b, 0);
		assert_int_equal(sl_buf_append(&b, "WITH ", 5), 0);
		put_series(&b, "t", " AS (SELECT 1)", ", ", counts[k]);
		assert_int_equal(sl_buf_append(&b, " SELECT * FROM ", 15), 0);
		put_series(&b, "t", "", ", ", counts[k]);
		assert_int_equal(sl_buf_append(&b, ", hr.payroll", 13), 0); /* with the NUL */
		assert_int_equal(decide(ps, "a", "ai-agents", "orders", (const char *)b.data, &d),
				 SL_ACT_BLOCK);
		b.len = 0;
		/* SELECT f0(), ..., my_dangerous_fn() */
		assert_int_equal(sl_buf_append(&b, "SELECT ", 7), 0);
		put_series(&b, "f", "()", ", ", counts[k]);
		assert_int_equal(sl_buf_append(&b, ", my_dangerous_fn()", 20), 0);
		assert_int_equal(decide(ps, "a", "ai-agents", "orders", (const char *)b.data, &d),
				 SL_ACT_BLOCK);
		sl_buf_fini(&b);
	}
	/* and within the limit, nothing blocked is allowed through either way */
	{
		struct sl_buf b;

		sl_buf_init(&b, 0);
		assert_int_equal(sl_buf_append(&b, "SELECT ", 7), 0);
		put_series(&b, "f", "()", ", ", 300);
		assert_int_equal(sl_buf_append(&b, "", 1), 0);
		assert_int_equal(decide(ps, "a", "ai-agents", "orders", (const char *)b.data, &d),
				 SL_ACT_ALLOW);
		sl_buf_fini(&b);
	}
	sl_policy_free(ps);
	sl_config_free(cfg);
}

/* Another USING item's column does not bound a DELETE's target, also past
 * the number of items the scope lists one by one (then every qualifier but
 * the target's is another item's); the target's own column still does. */
static void
test_many_using_items(void **state)
{
	static const int counts[] = {300, 1100};
	struct sl_sql_class c;
	char tail[64];

	(void)state;
	for (size_t k = 0; k < sizeof(counts) / sizeof(counts[0]); k++) {
		struct sl_buf b;
		size_t keep;

		/* DELETE FROM orders USING t a0, ..., t aN WHERE ... */
		sl_buf_init(&b, 0);
		assert_int_equal(sl_buf_append(&b, "DELETE FROM orders USING ", 25), 0);
		put_series(&b, "t a", "", ", ", counts[k]);
		keep = b.len;
		for (int own = 0; own < 2; own++) {
			int len = own ? snprintf(tail, sizeof(tail), " WHERE orders.id = 1")
				      : snprintf(tail, sizeof(tail), " WHERE a%d.id = 1",
						 counts[k] - 1);

			b.len = keep;
			assert_int_equal(sl_buf_append(&b, tail, (size_t)len), 0);
			assert_int_equal(sl_sql_classify((const char *)b.data, b.len, &c), 0);
			assert_false(c.kinds & SL_SQL_UNPARSEABLE);
			assert_true(c.kinds & SL_SQL_DELETE);
			assert_int_equal(!(c.kinds & SL_SQL_DELETE_ALL), own);
			sl_sql_class_fini(&c);
		}
		sl_buf_fini(&b);
	}
}

/* DROP, COMMENT ON and SECURITY LABEL name relations as string lists, not
 * as the usual relation nodes, and some statements act on a whole schema: a
 * block rule on a table must see them too. */
static void
test_block_rules_see_dropped_and_commented_tables(void **state)
{
	static const char yaml[] =
		"connections:\n"
		"  - { name: orders, type: postgres, target: '127.0.0.1:5432' }\n"
		"policies:\n"
		"  - name: agents\n"
		"    match: { groups: [ai-agents] }\n"
		"    rules:\n"
		"      - { action: block, tables: [hr.payroll] }\n"
		"      - { action: allow, sql: [select, ddl, grant] }\n";
	static const struct decision_case cases[] = {
		{"DROP TABLE hr.payroll", SL_ACT_BLOCK},
		{"DROP TABLE IF EXISTS other, hr.payroll CASCADE", SL_ACT_BLOCK},
		{"DROP TABLE payroll", SL_ACT_BLOCK}, /* search_path may be hr */
		{"DROP VIEW hr.payroll", SL_ACT_BLOCK},
		{"DROP MATERIALIZED VIEW hr.payroll", SL_ACT_BLOCK},
		{"COMMENT ON TABLE hr.payroll IS 'x'", SL_ACT_BLOCK},
		{"COMMENT ON COLUMN hr.payroll.who IS 'x'", SL_ACT_BLOCK},
		{"SECURITY LABEL ON TABLE hr.payroll IS 'x'", SL_ACT_BLOCK},
		{"DROP POLICY p ON hr.payroll", SL_ACT_BLOCK}, /* row security off the table */
		{"DROP TRIGGER t ON hr.payroll", SL_ACT_BLOCK},
		{"DROP RULE r ON payroll", SL_ACT_BLOCK},
		{"COMMENT ON CONSTRAINT c ON hr.payroll IS 'x'", SL_ACT_BLOCK},
		{"DROP POLICY p ON other", SL_ACT_ALLOW},
		/* statements on a whole schema reach hr.payroll without naming it */
		{"DROP SCHEMA hr CASCADE", SL_ACT_BLOCK},
		{"DROP SCHEMA IF EXISTS other, HR CASCADE", SL_ACT_BLOCK},
		{"ALTER SCHEMA hr RENAME TO h2", SL_ACT_BLOCK},
		{"ALTER SCHEMA hr OWNER TO bob", SL_ACT_BLOCK},
		{"GRANT SELECT ON ALL TABLES IN SCHEMA hr TO public", SL_ACT_BLOCK},
		{"DROP OWNED BY app", SL_ACT_BLOCK},
		{"DROP SCHEMA other CASCADE", SL_ACT_ALLOW},
		{"ALTER SCHEMA other RENAME TO o2", SL_ACT_ALLOW},
		{"GRANT SELECT ON other.t TO public", SL_ACT_ALLOW},
		{"GRANT SELECT ON hr.payroll TO public", SL_ACT_BLOCK},
		{"ALTER TABLE other RENAME TO o2", SL_ACT_ALLOW},
		{"DROP TABLE other", SL_ACT_ALLOW},
		{"COMMENT ON COLUMN other.who IS 'x'", SL_ACT_ALLOW},
		{"DROP FUNCTION payroll(int)", SL_ACT_ALLOW}, /* a function, not the table */
	};
	(void)state;
	check_decisions(yaml, cases, sizeof(cases) / sizeof(cases[0]));
}

static void
test_policy_compile_errors(void **state)
{
	static const char *bad[] = {
		"policies:\n  - name: p\n    rules: [{action: alow, sql: [select]}]\n",
		"policies:\n  - name: p\n    rules: [{action: allow, sql: [selects]}]\n",
		"policies:\n  - name: p\n    rules: [{action: review, sql: [delete]}]\n",
		"policies:\n  - name: p\n    connections: [nope]\n    rules: []\n",
		/* rule names are unique over all policies, explicit or policy#N
		 * (reviews and time-bound grants are keyed by them) */
		"policies:\n  - name: a\n    rules:\n"
		"      - {action: review, sql: [delete], approvers: [dba], name: r}\n"
		"      - {action: review, sql: [update], approvers: [sec], name: r}\n",
		"policies:\n  - name: a\n    rules: [{action: allow, sql: [select]}]\n"
		"  - name: b\n    rules: [{action: allow, sql: [insert], name: 'a#1'}]\n",
		/* a review counts at most 16 votes */
		"policies:\n  - name: p\n"
		"    rules: [{action: review, sql: [delete], approvers: [d], min_approvals: 17}]\n",
	};
	static const char *want[] = {"unknown action",	      "unknown sql kind", "approvers",
				     "unknown connection",    "is used twice",	  "is used twice",
				     "more than the 16 votes"};

	_Static_assert(sizeof(bad) / sizeof(bad[0]) == sizeof(want) / sizeof(want[0]), "cases");
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct sl_config *cfg;
		struct sl_policy_set *ps = NULL;
		char err[512];

		assert_int_equal(
			sl_config_load_data("t", bad[i], strlen(bad[i]), &cfg, err, sizeof(err)),
			0);
		assert_int_not_equal(sl_policy_compile(cfg, &ps, err, sizeof(err)), 0);
		assert_non_null(strstr(err, want[i]));
		sl_config_free(cfg);
	}
}

/* Texts that cost the parser far more than their size: nested comments
 * (quadratic in PostgreSQL's scanner) are refused past 32 levels, counted
 * as the server lexes them; a long operator chain (a parse tree as deep as
 * the text is long, written out recursively) is refused on a thread whose
 * stack could not take it, never a crash. */
static void
test_costly_shapes_are_refused(void **state)
{
	struct sl_sql_class c;
	struct sl_buf b;
	static const struct {
		const char *head, *unit, *tail;
		int n, refused;
	} cases[] = {
		{"SELECT 1 ", "/*", "", 32, 0}, /* closed by as many */
		{"SELECT 1 ", "/*", "", 33, 1},
		{"SELECT 1 ", "/*", "", 40000, 1},
		/* not comments: in a literal, a quoted name, a dollar quote, after -- */
		{"SELECT '", "/*", "'", 4000, 0},
		{"SELECT E'\\'", "/*", "'", 100, 0},
		{"SELECT 1 AS \"", "/*", "\"", 100, 0},
		{"SELECT $q$", "/*", "$q$", 100, 0},
		{"SELECT 1 -- ", "/*", "\n", 100, 0},
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		sl_buf_init(&b, 0);
		sl_buf_append(&b, cases[i].head, strlen(cases[i].head));
		for (int k = 0; k < cases[i].n; k++)
			sl_buf_append(&b, cases[i].unit, strlen(cases[i].unit));
		if (strcmp(cases[i].unit, "/*") == 0 && cases[i].tail[0] == '\0')
			for (int k = 0; k < cases[i].n; k++)
				sl_buf_append(&b, "*/", 2);
		sl_buf_append(&b, cases[i].tail, strlen(cases[i].tail));
		assert_int_equal(sl_sql_classify((const char *)b.data, b.len, &c), 0);
		if (cases[i].refused) {
			assert_true(c.kinds & SL_SQL_UNPARSEABLE);
			assert_string_equal(c.error, "comments nested more than 32 deep");
		} else {
			if (c.kinds & SL_SQL_UNPARSEABLE)
				fail_msg("case %zu: %s", i, c.error ? c.error : "?");
		}
		sl_sql_class_fini(&c);
		sl_buf_fini(&b);
	}
	/* a run of operator characters (quadratic in the scanner): refused past
	 * 256, unless in a literal or a comment */
	{
		static const struct {
			const char *head, *unit, *tail;
			int n, refused;
		} ops[] = {
			{"SELECT ", "-+", "1", 200, 1},	       {"SELECT ", "-+", "1", 100, 0},
			{"SELECT '", "-+", "'", 2000, 0},      {"SELECT 1 -- ", "-", "\n", 2000, 0},
			{"SELECT 1 /* ", "=", " */", 2000, 0},
		};

		for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
			sl_buf_init(&b, 0);
			sl_buf_append(&b, ops[i].head, strlen(ops[i].head));
			for (int k = 0; k < ops[i].n; k++)
				sl_buf_append(&b, ops[i].unit, strlen(ops[i].unit));
			sl_buf_append(&b, ops[i].tail, strlen(ops[i].tail));
			assert_int_equal(sl_sql_classify((const char *)b.data, b.len, &c), 0);
			if (ops[i].refused)
				assert_string_equal(c.error,
						    "a run of more than 256 operator characters");
			else if (c.error != NULL)
				assert_null(strstr(c.error, "operator characters"));
			sl_sql_class_fini(&c);
			sl_buf_fini(&b);
		}
	}
	/* 1+1+...+1 of 1 MiB on this (8 MiB) stack: refused, not a crash */
	sl_buf_init(&b, 0);
	sl_buf_append(&b, "SELECT 1", 8);
	while (b.len < SL_SQL_MAX_TEXT - 2)
		sl_buf_append(&b, "+1", 2);
	assert_int_equal(sl_sql_classify((const char *)b.data, b.len, &c), 0);
	assert_true(c.kinds & SL_SQL_UNPARSEABLE);
	assert_string_equal(c.error, "statement too long to classify on this thread");
	sl_sql_class_fini(&c);
	sl_buf_fini(&b);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fixture_cases),
		cmocka_unit_test(test_functions_tables_names),
		cmocka_unit_test(test_relations_named_by_argument),
		cmocka_unit_test(test_redact_secrets),
		cmocka_unit_test(test_result_expression_columns),
		cmocka_unit_test(test_shape),
		cmocka_unit_test(test_cache_differential),
		cmocka_unit_test(test_read_write),
		cmocka_unit_test(test_policy_semantics),
		cmocka_unit_test(test_policy_review_beats_allow),
		cmocka_unit_test(test_policy_read_only),
		cmocka_unit_test(test_policy_qualified_names),
		cmocka_unit_test(test_policy_merge_and_using),
		cmocka_unit_test(test_many_names_do_not_hide_a_blocked_one),
		cmocka_unit_test(test_many_using_items),
		cmocka_unit_test(test_block_rules_see_dropped_and_commented_tables),
		cmocka_unit_test(test_policy_compile_errors),
		cmocka_unit_test(test_costly_shapes_are_refused),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
