/* Unit tests for the PostgreSQL wire codec (framing, startup, builders, parsers).
 * Upstream authentication is tested in test_pg_auth.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "sluice/pg_codec.h"

/* Appends a typed message with body p[0..n) and a correct length. */
static void
msg(struct sl_buf *b, uint8_t t, const void *p, size_t n)
{
	b->len = b->off = 0;
	sl_buf_append_u8(b, t);
	sl_buf_append_u32be(b, (uint32_t)(n + 4));
	sl_buf_append(b, p, n);
}

/* ------------------------------------------------------------------ framing */

static void
test_frame_boundaries(void **state)
{
	uint8_t m[16] = {'Q', 0, 0, 0, 9, 'S', 'E', 'L', 'E', 0};
	uint8_t type = 0;
	size_t total = 0;

	for (size_t n = 0; n < 10; n++)
		assert_int_equal(sl_pg_frame(m, n, 1 << 20, &type, &total), SL_AGAIN);
	assert_int_equal(sl_pg_frame(m, 10, 1 << 20, &type, &total), 0);
	assert_int_equal(type, 'Q');
	assert_int_equal(total, 10);
	/* more bytes than the message: still only the message */
	assert_int_equal(sl_pg_frame(m, 16, 1 << 20, &type, &total), 0);
	assert_int_equal(total, 10);
	/* the limit counts the type byte: exactly max passes, one less does not */
	assert_int_equal(sl_pg_frame(m, 10, 10, &type, &total), 0);
	assert_int_equal(sl_pg_frame(m, 10, 9, &type, &total), SL_ETOOBIG);
	/* ... and is decided from the header alone */
	assert_int_equal(sl_pg_frame(m, 5, 9, &type, &total), SL_ETOOBIG);
	/* a length of exactly 4 is an empty body */
	m[4] = 4;
	assert_int_equal(sl_pg_frame(m, 4, 1 << 20, &type, &total), SL_AGAIN);
	assert_int_equal(sl_pg_frame(m, 5, 1 << 20, &type, &total), 0);
	assert_int_equal(total, 5);
	/* below 4 */
	for (uint8_t l = 0; l < 4; l++) {
		m[4] = l;
		assert_int_equal(sl_pg_frame(m, 10, 1 << 20, &type, &total), SL_EPROTO);
	}
	/* 2 GB claims are refused before waiting for the bytes */
	m[1] = 0x7f;
	m[2] = m[3] = m[4] = 0xff;
	assert_int_equal(sl_pg_frame(m, 10, 16 << 20, &type, &total), SL_ETOOBIG);
	/* a "negative" int32 length, even with no limit */
	m[1] = 0x80;
	m[2] = m[3] = m[4] = 0;
	assert_int_equal(sl_pg_frame(m, 10, SIZE_MAX, &type, &total), SL_ETOOBIG);
	m[1] = m[2] = m[3] = m[4] = 0xff;
	assert_int_equal(sl_pg_frame(m, 10, SIZE_MAX, &type, &total), SL_ETOOBIG);
}

/* Two messages arriving one byte at a time through a buffer. */
static void
test_frame_split_reads(void **state)
{
	struct sl_buf wire, in;
	uint8_t type;
	size_t total;
	int seen = 0;

	sl_buf_init(&wire, 0);
	sl_buf_init(&in, 1024);
	assert_int_equal(sl_pg_put_query(&wire, "SELECT 1"), 0);
	assert_int_equal(sl_pg_put_simple(&wire, 'S'), 0);
	for (size_t i = 0; i < wire.len; i++) {
		int r;

		sl_buf_append(&in, wire.data + i, 1);
		r = sl_pg_frame(sl_buf_head(&in), sl_buf_unread(&in), 1024, &type, &total);
		if (r == SL_AGAIN)
			continue;
		assert_int_equal(r, 0);
		if (seen == 0) {
			const char *sql;
			size_t n;

			assert_int_equal(type, 'Q');
			assert_int_equal(i + 1, total);
			assert_int_equal(sl_pg_parse_query(sl_buf_head(&in), total, &sql, &n), 0);
			assert_string_equal(sql, "SELECT 1");
		} else {
			assert_int_equal(type, 'S');
			assert_int_equal(total, 5);
		}
		seen++;
		sl_buf_consume(&in, total);
	}
	assert_int_equal(seen, 2);
	assert_int_equal(sl_buf_unread(&in), 0);
	sl_buf_fini(&wire);
	sl_buf_fini(&in);
}

static void
test_frame_startup(void **state)
{
	uint8_t p[8] = {0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f};
	size_t total = 0;

	for (size_t n = 0; n < 8; n++)
		assert_int_equal(sl_pg_frame_startup(p, n, &total), SL_AGAIN);
	assert_int_equal(sl_pg_frame_startup(p, 8, &total), 0);
	assert_int_equal(total, 8);
	p[3] = 7;
	assert_int_equal(sl_pg_frame_startup(p, 8, &total), SL_EPROTO);
	p[3] = 0;
	assert_int_equal(sl_pg_frame_startup(p, 8, &total), SL_EPROTO);
	/* SL_PG_MAX_STARTUP is the last length accepted */
	p[2] = (uint8_t)(SL_PG_MAX_STARTUP >> 8);
	p[3] = (uint8_t)SL_PG_MAX_STARTUP;
	assert_int_equal(sl_pg_frame_startup(p, 8, &total), SL_AGAIN);
	p[3]++;
	assert_int_equal(sl_pg_frame_startup(p, 8, &total), SL_ETOOBIG);
	p[0] = 0xff;
	assert_int_equal(sl_pg_frame_startup(p, 4, &total), SL_ETOOBIG);
}

/* ------------------------------------------------------------------ startup */

/* Builds a raw startup packet: code then body bytes, length computed. */
static void
raw_startup(struct sl_buf *b, uint32_t code, const void *body, size_t n)
{
	b->len = b->off = 0;
	sl_buf_append_u32be(b, (uint32_t)(8 + n));
	sl_buf_append_u32be(b, code);
	sl_buf_append(b, body, n);
}

static void
test_startup_ok(void **state)
{
	struct sl_buf b;
	struct sl_pg_startup st;
	const char *k[] = {"user", "database", "application_name", "options"};
	const char *v[] = {"orders", "orders", "agent", ""};
	size_t total;

	sl_buf_init(&b, 0);
	assert_int_equal(sl_pg_put_startup(&b, k, v, 4), 0);
	assert_int_equal(sl_pg_frame_startup(b.data, b.len, &total), 0);
	assert_int_equal(total, b.len);
	assert_int_equal(sl_pg_parse_startup(b.data, b.len, &st), 0);
	assert_int_equal(st.code, SL_PG_PROTO_V3);
	assert_int_equal(st.nparams, 4);
	assert_string_equal(sl_pg_startup_get(&st, "application_name"), "agent");
	assert_string_equal(sl_pg_startup_get(&st, "options"), "");
	assert_null(sl_pg_startup_get(&st, "replication"));
	/* no parameters at all */
	raw_startup(&b, SL_PG_PROTO_V3, "", 1);
	assert_int_equal(sl_pg_parse_startup(b.data, b.len, &st), 0);
	assert_int_equal(st.nparams, 0);
	/* 3.2 (a newer minor) parses; the session negotiates */
	raw_startup(&b, (3u << 16) | 2, "user\0u\0", 8);
	assert_int_equal(sl_pg_parse_startup(b.data, b.len, &st), 0);
	assert_int_equal(st.code & 0xffff, 2);
	/* SSLRequest, GSSENCRequest, CancelRequest */
	raw_startup(&b, SL_PG_SSL_REQUEST, NULL, 0);
	assert_int_equal(sl_pg_parse_startup(b.data, b.len, &st), 0);
	assert_int_equal(st.code, SL_PG_SSL_REQUEST);
	raw_startup(&b, SL_PG_GSSENC_REQUEST, NULL, 0);
	assert_int_equal(sl_pg_parse_startup(b.data, b.len, &st), 0);
	assert_int_equal(st.code, SL_PG_GSSENC_REQUEST);
	b.len = 0;
	assert_int_equal(sl_pg_put_cancel(&b, 77, 0xdeadbeef), 0);
	assert_int_equal(b.len, 16);
	assert_int_equal(sl_pg_parse_startup(b.data, b.len, &st), 0);
	assert_int_equal(st.code, SL_PG_CANCEL_REQUEST);
	assert_int_equal(st.cancel_pid, 77);
	assert_int_equal(st.cancel_key, 0xdeadbeef);
	b.len = 0;
	assert_int_equal(sl_pg_put_ssl_request(&b), 0);
	assert_int_equal(b.len, 8);
	assert_memory_equal(b.data, "\0\0\0\x08\x04\xd2\x16\x2f", 8);
	sl_buf_fini(&b);
}

static void
test_startup_abuse(void **state)
{
	struct sl_buf b;
	struct sl_pg_startup st;
	static const uint8_t cancel_body[12] = {0};

	sl_buf_init(&b, 0);
	/* missing final NUL */
	raw_startup(&b, SL_PG_PROTO_V3, "user\0u\0", 7);
	assert_int_equal(sl_pg_parse_startup(b.data, b.len, &st), SL_EPROTO);
	/* value without its NUL */
	raw_startup(&b, SL_PG_PROTO_V3, "user\0u", 6);
	assert_int_equal(sl_pg_parse_startup(b.data, b.len, &st), SL_EPROTO);
	/* key without a value */
	raw_startup(&b, SL_PG_PROTO_V3, "user\0", 5);
	assert_int_equal(sl_pg_parse_startup(b.data, b.len, &st), SL_EPROTO);
	/* bytes after the terminator (an "empty key" followed by more) */
	raw_startup(&b, SL_PG_PROTO_V3, "user\0u\0\0x\0y\0\0", 13);
	assert_int_equal(sl_pg_parse_startup(b.data, b.len, &st), SL_EPROTO);
	/* duplicate keys */
	raw_startup(&b, SL_PG_PROTO_V3, "user\0a\0user\0b\0\0", 15);
	assert_int_equal(sl_pg_parse_startup(b.data, b.len, &st), SL_EPROTO);
	/* versions 2.0, 4.0, 0 and a code near the special ones */
	raw_startup(&b, 2u << 16, "\0", 1);
	assert_int_equal(sl_pg_parse_startup(b.data, b.len, &st), SL_EPROTO);
	raw_startup(&b, 4u << 16, "\0", 1);
	assert_int_equal(sl_pg_parse_startup(b.data, b.len, &st), SL_EPROTO);
	raw_startup(&b, 0, "\0", 1);
	assert_int_equal(sl_pg_parse_startup(b.data, b.len, &st), SL_EPROTO);
	raw_startup(&b, SL_PG_GSSENC_REQUEST + 1, NULL, 0);
	assert_int_equal(sl_pg_parse_startup(b.data, b.len, &st), SL_EPROTO);
	/* special requests with the wrong size */
	raw_startup(&b, SL_PG_SSL_REQUEST, "\0", 1);
	assert_int_equal(sl_pg_parse_startup(b.data, b.len, &st), SL_EPROTO);
	raw_startup(&b, SL_PG_CANCEL_REQUEST, cancel_body, 4);
	assert_int_equal(sl_pg_parse_startup(b.data, b.len, &st), SL_EPROTO);
	raw_startup(&b, SL_PG_CANCEL_REQUEST, cancel_body, 12);
	assert_int_equal(sl_pg_parse_startup(b.data, b.len, &st), SL_EPROTO);
	/* length field disagrees with the bytes given */
	raw_startup(&b, SL_PG_PROTO_V3, "\0", 1);
	assert_int_equal(sl_pg_parse_startup(b.data, b.len - 1, &st), SL_EPROTO);
	assert_int_equal(sl_pg_parse_startup(b.data, 3, &st), SL_EPROTO);
	/* 64 parameters pass, 65 do not */
	for (int n = 64; n <= 65; n++) {
		const char *mk[65], *mv[65];
		char names[65][8];

		for (int i = 0; i < n; i++) {
			snprintf(names[i], sizeof(names[i]), "k%d", i);
			mk[i] = names[i];
			mv[i] = "v";
		}
		b.len = 0;
		assert_int_equal(sl_pg_put_startup(&b, mk, mv, (size_t)n), 0);
		assert_int_equal(sl_pg_parse_startup(b.data, b.len, &st), n == 64 ? 0 : SL_ETOOBIG);
		if (n == 64) {
			assert_int_equal(st.nparams, 64);
			assert_string_equal(st.keys[63], "k63");
		}
	}
	sl_buf_fini(&b);
}

/* ----------------------------------------------------------------- builders */

static void
test_builders_roundtrip(void **state)
{
	struct sl_buf b;
	uint8_t type;
	size_t total;

	sl_buf_init(&b, 0);
	{
		struct sl_pg_error_fields f;
		const uint8_t *p;

		assert_int_equal(sl_pg_put_error(&b, "FATAL", "42501", "blocked", "d", "h"), 0);
		assert_int_equal(sl_pg_frame(b.data, b.len, 1 << 20, &type, &total), 0);
		assert_int_equal(type, 'E');
		assert_int_equal(total, b.len);
		/* both S (localized) and V (never localized) */
		p = memchr(b.data + 5, 'V', b.len - 5);
		assert_non_null(p);
		assert_string_equal((const char *)p + 1, "FATAL");
		assert_int_equal(sl_pg_parse_error(b.data, b.len, &f), 0);
		assert_string_equal(f.severity, "FATAL");
		assert_string_equal(f.sqlstate, "42501");
		assert_string_equal(f.message, "blocked");
		assert_string_equal(f.detail, "d");
		assert_string_equal(f.hint, "h");
		assert_null(f.position);
		b.len = 0;
		assert_int_equal(sl_pg_put_error(&b, NULL, NULL, NULL, NULL, NULL), 0);
		assert_int_equal(sl_pg_parse_error(b.data, b.len, &f), 0);
		assert_string_equal(f.severity, "ERROR");
		assert_string_equal(f.sqlstate, "XX000");
		assert_string_equal(f.message, "");
		assert_null(f.detail);
		b.len = 0;
		assert_int_equal(sl_pg_put_notice(&b, NULL, "hi"), 0);
		assert_int_equal(b.data[0], 'N');
		assert_int_equal(sl_pg_parse_error(b.data, b.len, &f), 0);
		assert_string_equal(f.severity, "NOTICE");
		assert_string_equal(f.sqlstate, "00000");
	}
	{
		const char *n, *v;
		uint32_t pid, key, code;
		const uint8_t *extra;
		size_t extralen;

		b.len = 0;
		assert_int_equal(sl_pg_put_param_status(&b, "client_encoding", "UTF8"), 0);
		assert_int_equal(sl_pg_parse_param_status(b.data, b.len, &n, &v), 0);
		assert_string_equal(n, "client_encoding");
		assert_string_equal(v, "UTF8");
		b.len = 0;
		assert_int_equal(sl_pg_put_backend_key(&b, 1234, 0x80000001u), 0);
		assert_int_equal(sl_pg_parse_backend_key(b.data, b.len, &pid, &key), 0);
		assert_int_equal(pid, 1234);
		assert_int_equal(key, 0x80000001u);
		b.len = 0;
		assert_int_equal(sl_pg_put_auth(&b, 5, "salt", 4), 0);
		assert_int_equal(sl_pg_parse_auth(b.data, b.len, &code, &extra, &extralen), 0);
		assert_int_equal(code, 5);
		assert_int_equal(extralen, 4);
		assert_memory_equal(extra, "salt", 4);
		b.len = 0;
		assert_int_equal(sl_pg_put_ready(&b, 'T'), 0);
		assert_int_equal(b.len, 6);
		assert_memory_equal(b.data, "Z\0\0\0\x05T", 6);
		b.len = 0;
		{
			static const char *opts[] = {"_pq_.a", "_pq_.bb"};

			assert_int_equal(sl_pg_put_negotiate(&b, 0x30000, opts, 2), 0);
			assert_int_equal(b.len, 28);
			assert_memory_equal(b.data,
					    "v\0\0\0\x1b\0\x03\0\0\0\0\0\x02_pq_.a\0_pq_.bb\0", 28);
			b.len = 0;
			assert_int_equal(sl_pg_put_negotiate(&b, 0x30000, NULL, 0), 0);
			assert_memory_equal(b.data, "v\0\0\0\x0c\0\x03\0\0\0\0\0\0", 13);
		}
	}
	{
		struct sl_pg_parse_msg pm;
		const uint32_t oids[2] = {23, 25};
		const char *portal, *pw;
		uint32_t maxrows;
		size_t pwlen;

		b.len = 0;
		assert_int_equal(sl_pg_put_parse(&b, "s1", "SELECT $1, $2", oids, 2), 0);
		assert_int_equal(sl_pg_parse_parse(b.data, b.len, &pm), 0);
		assert_string_equal(pm.stmt, "s1");
		assert_string_equal(pm.sql, "SELECT $1, $2");
		assert_int_equal(pm.sqllen, 13);
		assert_int_equal(pm.nparams, 2);
		assert_memory_equal(pm.oids, "\0\0\0\x17\0\0\0\x19", 8);
		b.len = 0;
		assert_int_equal(sl_pg_put_parse(&b, NULL, "SELECT 1", NULL, 0), 0);
		assert_int_equal(sl_pg_parse_parse(b.data, b.len, &pm), 0);
		assert_string_equal(pm.stmt, "");
		b.len = 0;
		assert_int_equal(sl_pg_put_execute(&b, NULL, 10), 0);
		assert_int_equal(sl_pg_parse_execute(b.data, b.len, &portal, &maxrows), 0);
		assert_string_equal(portal, "");
		assert_int_equal(maxrows, 10);
		b.len = 0;
		assert_int_equal(sl_pg_put_password(&b, "jwt.token.here"), 0);
		assert_int_equal(sl_pg_parse_password(b.data, b.len, &pw, &pwlen), 0);
		assert_string_equal(pw, "jwt.token.here");
		assert_int_equal(pwlen, 14);
		b.len = 0;
		assert_int_equal(sl_pg_put_sasl_initial(&b, "SCRAM-SHA-256", "abc", 3), 0);
		assert_int_equal(b.len, 5 + 14 + 4 + 3);
		assert_memory_equal(b.data + 5,
				    "SCRAM-SHA-256\0\0\0\0\x03"
				    "abc",
				    21);
		b.len = 0;
		assert_int_equal(sl_pg_put_sasl_response(&b, "xyz", 3), 0);
		assert_memory_equal(b.data, "p\0\0\0\x07xyz", 8);
		b.len = 0;
		for (const char *t = "SHXc"; *t; t++)
			assert_int_equal(sl_pg_put_simple(&b, (uint8_t)*t), 0);
		assert_memory_equal(b.data,
				    "S\0\0\0\x04H\0\0\0\x04X\0\0\0\x04"
				    "c\0\0\0\x04",
				    20);
	}
	{
		const char *tag;
		int64_t rows;

		b.len = 0;
		assert_int_equal(sl_pg_put_command_complete(&b, "DELETE 3"), 0);
		assert_int_equal(sl_pg_parse_command_complete(b.data, b.len, &tag, &rows), 0);
		assert_string_equal(tag, "DELETE 3");
		assert_int_equal(rows, 3);
	}
	sl_buf_fini(&b);
}

/* Builders into a buffer whose unread bytes get moved while the message is
 * appended (sl_buf_reserve compacts), and into a full buffer. */
static void
test_builders_buffer_edges(void **state)
{
	struct sl_buf b;
	uint8_t junk[250], type;
	size_t total;
	const char *sql;
	size_t n;
	char big[300];

	memset(junk, 'j', sizeof(junk));
	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	sl_buf_init(&b, 0);
	sl_buf_append(&b, junk, sizeof(junk)); /* cap 256 */
	sl_buf_consume(&b, 240);	       /* off 240, 10 unread */
	/* type + length fit in the tail; the SQL does not: compaction mid-message */
	assert_int_equal(sl_pg_put_query(&b, "SELECT 1"), 0);
	assert_int_equal(sl_buf_unread(&b), 10 + 14);
	assert_int_equal(sl_pg_frame(sl_buf_head(&b) + 10, 14, 1 << 20, &type, &total), 0);
	assert_int_equal(total, 14);
	assert_int_equal(sl_pg_parse_query(sl_buf_head(&b) + 10, 14, &sql, &n), 0);
	assert_string_equal(sql, "SELECT 1");
	sl_buf_fini(&b);

	/* A capped buffer: a failed builder leaves nothing behind. */
	sl_buf_init(&b, 64);
	assert_int_equal(sl_pg_put_ready(&b, 'I'), 0);
	assert_int_equal(sl_pg_put_query(&b, big), SL_ETOOBIG);
	assert_int_equal(b.len, 6);
	assert_int_equal(sl_pg_put_error(&b, "ERROR", "42000", big, NULL, NULL), SL_ETOOBIG);
	assert_int_equal(b.len, 6);
	assert_int_equal(sl_pg_put_simple(&b, 'S'), 0);
	assert_int_equal(b.len, 11);
	sl_buf_fini(&b);

	/* NULL strings and empty startup keys are refused, nothing appended. */
	sl_buf_init(&b, 0);
	{
		const char *k[] = {"user", ""}, *v[] = {"u", "x"};
		const char *k2[] = {"user"}, *v2[] = {NULL};
		const char *mk[200], *mv[200];

		assert_int_equal(sl_pg_put_query(&b, NULL), SL_EINVAL);
		assert_int_equal(sl_pg_put_password(&b, NULL), SL_EINVAL);
		assert_int_equal(sl_pg_put_param_status(&b, "a", NULL), SL_EINVAL);
		assert_int_equal(sl_pg_put_parse(&b, "s", "SELECT $1", NULL, 1), SL_EINVAL);
		assert_int_equal(sl_pg_put_auth(&b, 12, NULL, 3), SL_EINVAL);
		assert_int_equal(sl_pg_put_startup(&b, k, v, 2), SL_EINVAL);
		assert_int_equal(sl_pg_put_startup(&b, k2, v2, 1), SL_EINVAL);
		assert_int_equal(b.len, 0);
		/* A startup packet over PostgreSQL's limit is still built (the
		 * server refuses it at once; session.c does not check the
		 * result, so failing here would send nothing and hang). */
		for (int i = 0; i < 200; i++) {
			mk[i] = "k";
			mv[i] = big;
		}
		assert_int_equal(sl_pg_put_startup(&b, mk, mv, 200), 0);
		assert_true(b.len > SL_PG_MAX_STARTUP);
		{
			size_t total;

			assert_int_equal(sl_pg_frame_startup(b.data, b.len, &total), SL_ETOOBIG);
		}
	}
	sl_buf_fini(&b);
}

/* Builds message number i (0..NBUILD-1) into b; returns the builder's result. */
#define NBUILD 20
static int
build_one(struct sl_buf *b, int i)
{
	static const char *keys[] = {"user", "database", "application_name"};
	static const char *vals[] = {"orders", "orders_db", "a-rather-long-application-name"};
	static const uint32_t oids[] = {23, 25, 1043};

	switch (i) {
	case 0:
		return sl_pg_put_error(b, "FATAL", "28P01", "password authentication failed",
				       "some detail text", "some hint text");
	case 1:
		return sl_pg_put_notice(b, "01000", "a notice");
	case 2:
		return sl_pg_put_auth(b, 10, "SCRAM-SHA-256\0\0", 15);
	case 3:
		return sl_pg_put_param_status(b, "server_version", "16.4");
	case 4:
		return sl_pg_put_backend_key(b, 4242, 0xdeadbeef);
	case 5:
		return sl_pg_put_ready(b, 'I');
	case 6:
		return sl_pg_put_startup(b, keys, vals, 3);
	case 7:
		return sl_pg_put_ssl_request(b);
	case 8:
		return sl_pg_put_cancel(b, 4242, 0xdeadbeef);
	case 9:
		return sl_pg_put_password(b, "md5ffa430c79d76a1592a9998f7fb85fd41");
	case 10:
		return sl_pg_put_sasl_initial(b, "SCRAM-SHA-256", "n,,n=,r=abcdefghijklmnop", 24);
	case 11:
		return sl_pg_put_sasl_response(b, "c=biws,r=abc,p=xyz", 18);
	case 12:
		return sl_pg_put_simple(b, 'S');
	case 13:
		return sl_pg_put_query(b, "SELECT id, name, ssn FROM customers WHERE id = 42");
	case 14:
		return sl_pg_put_parse(b, "stmt1", "SELECT $1, $2, $3", oids, 3);
	case 15:
		return sl_pg_put_execute(b, "portal1", 100);
	case 16:
		return sl_pg_put_command_complete(b, "SELECT 3");
	case 17:
		return sl_pg_put_error(b, NULL, NULL, "", NULL, NULL);
	case 18:
		return sl_pg_put_negotiate(b, 0x30000, keys, 3);
	default:
		return sl_pg_put_parse(b, NULL, "SELECT 1", NULL, 0);
	}
}

/*
 * Regression: builders used to remember the absolute offset of the length
 * field. When the buffer still held unread bytes (off > 0) and an append in
 * the middle of the message made sl_buf_reserve() compact it, the length was
 * written where the message no longer was. Every builder, every split point:
 * the bytes after the unread prefix must equal a build into a fresh buffer.
 */
static void
test_builders_into_compacting_buffer(void **state)
{
	uint8_t junk[256];

	memset(junk, 'j', sizeof(junk));
	for (int i = 0; i < NBUILD; i++) {
		struct sl_buf ref;

		sl_buf_init(&ref, 0);
		assert_int_equal(build_one(&ref, i), 0);
		/* 256 bytes filled (cap 256), keep = unread bytes left in front */
		for (size_t keep = 0; keep < 256; keep++) {
			struct sl_buf b;

			sl_buf_init(&b, 0);
			assert_int_equal(sl_buf_append(&b, junk, sizeof(junk)), 0);
			assert_int_equal(b.cap, 256);
			sl_buf_consume(&b, 256 - keep);
			assert_int_equal(build_one(&b, i), 0);
			assert_int_equal(sl_buf_unread(&b), keep + ref.len);
			assert_memory_equal(sl_buf_head(&b), junk, keep);
			assert_memory_equal(sl_buf_head(&b) + keep, ref.data, ref.len);
			sl_buf_fini(&b);
		}
		sl_buf_fini(&ref);
	}
}

/*
 * Regression: a builder that failed half way (buffer maximum reached) used to
 * leave the partial message in the buffer, so a later message (say, the
 * error that reports the failure) followed garbage on the wire. Every
 * builder, every maximum below its size: nothing is appended, and the
 * buffer still frames cleanly afterwards.
 */
static void
test_builders_fail_atomically(void **state)
{
	for (int i = 0; i < NBUILD; i++) {
		struct sl_buf ref;

		sl_buf_init(&ref, 0);
		assert_int_equal(build_one(&ref, i), 0);
		for (size_t room = 0; room < ref.len; room++) {
			struct sl_buf b;

			/* a 5-byte Sync already queued, then room for `room` more */
			sl_buf_init(&b, 5 + room);
			assert_int_equal(sl_pg_put_simple(&b, 'S'), 0);
			assert_int_equal(build_one(&b, i), SL_ETOOBIG);
			assert_int_equal(b.len, 5);
			assert_memory_equal(b.data, "S\0\0\0\x04", 5);
			sl_buf_fini(&b);
		}
		sl_buf_fini(&ref);
	}
}

/* ------------------------------------------------------------------ parsers */

/* One valid message per parser, and the parser run on (msg, len). */
struct parser_case {
	const char *name;
	uint8_t type; /* 0: startup-phase packet */
	const char *body;
	size_t bodylen;
};

static int
run_parser(int k, const uint8_t *m, size_t len)
{
	struct sl_pg_startup st;
	struct sl_pg_error_fields ef;
	struct sl_pg_parse_msg pm;
	struct sl_pg_bind_msg bm;
	struct sl_pg_field fields[4];
	uint32_t offs[4], u1, u2;
	int32_t lens[4];
	uint16_t n;
	const char *s1, *s2;
	const uint8_t *extra;
	size_t l;
	int64_t rows;
	char kind;

	switch (k) {
	case 0:
		return sl_pg_parse_startup(m, len, &st);
	case 1:
		return sl_pg_parse_error(m, len, &ef);
	case 2:
		return sl_pg_parse_param_status(m, len, &s1, &s2);
	case 3:
		return sl_pg_parse_backend_key(m, len, &u1, &u2);
	case 4:
		return sl_pg_parse_auth(m, len, &u1, &extra, &l);
	case 5:
		return sl_pg_parse_negotiate_version(m, len, &u1, &u2);
	case 6:
		return sl_pg_parse_query(m, len, &s1, &l);
	case 7:
		return sl_pg_parse_parse(m, len, &pm);
	case 8:
		return sl_pg_parse_bind(m, len, &bm);
	case 9:
		return sl_pg_parse_execute(m, len, &s1, &u1);
	case 10:
		return sl_pg_parse_describe_close(m, len, &kind, &s1);
	case 11:
		return sl_pg_parse_password(m, len, &s1, &l);
	case 12:
		return sl_pg_parse_command_complete(m, len, &s1, &rows);
	case 13:
		return sl_pg_parse_row_desc(m, len, fields, 4, &n);
	case 14:
		return sl_pg_parse_data_row(m, len, 4, &n, offs, lens);
	default:
		return sl_pg_parse_notification(m, len, &u1, &s1, &s2);
	}
}

/*
 * Every parser refuses every truncation of a valid message: handed fewer
 * bytes than the length field says, and (except AuthenticationXxx, whose
 * trailing data has no length of its own) with the length field rewritten to
 * match the shorter body.
 */
static void
test_parsers_reject_truncation(void **state)
{
#define B(s) s, sizeof(s) - 1
	static const struct parser_case cases[] = {
		{"startup", 0, B("user\0u\0database\0d\0\0")},
		{"error", 'E', B("SERROR\0C42601\0Msyntax\0\0")},
		{"param_status", 'S', B("a\0b\0")},
		{"backend_key", 'K', B("\0\0\0\x01\0\0\0\x02")},
		{"auth", 'R', B("\0\0\0\x05salt")},
		{"negotiate", 'v', B("\0\0\0\0\0\0\0\x01_pq_.a\0")},
		{"query", 'Q', B("SELECT 1\0")},
		{"parse", 'P', B("s\0SELECT $1\0\0\x01\0\0\0\x17")},
		{"bind", 'B',
		 B("p\0s\0\0\x01\0\x01\0\x01\0\0\0\x02"
		   "ab\0\x01\0\0")},
		{"execute", 'E', B("p\0\0\0\0\x05")},
		{"describe", 'D', B("Sstmt\0")},
		{"password", 'p', B("pw\0")},
		{"command_complete", 'C', B("SELECT 3\0")},
		{"row_desc", 'T',
		 B("\0\x01id\0\0\0\x40\0\0\x01\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0")},
		{"data_row", 'D', B("\0\x02\0\0\0\x01x\xff\xff\xff\xff")},
		{"notification", 'A', B("\0\0\0\x07chan\0pay\0")},
	};
#undef B
	struct sl_buf b;

	sl_buf_init(&b, 0);
	for (int k = 0; k < (int)(sizeof(cases) / sizeof(cases[0])); k++) {
		const struct parser_case *c = &cases[k];

		/* the whole message parses */
		if (c->type == 0) {
			b.len = b.off = 0;
			sl_buf_append_u32be(&b, (uint32_t)(8 + c->bodylen));
			sl_buf_append_u32be(&b, SL_PG_PROTO_V3);
			sl_buf_append(&b, c->body, c->bodylen);
		} else {
			msg(&b, c->type, c->body, c->bodylen);
		}
		if (run_parser(k, b.data, b.len) != 0)
			fail_msg("%s: valid message refused", c->name);
		/* fewer bytes than the length field says */
		for (size_t cut = 0; cut < b.len; cut++)
			if (run_parser(k, b.data, cut) == 0)
				fail_msg("%s: accepted %zu of %zu bytes", c->name, cut, b.len);
		if (c->type == 'R')
			continue;
		/* a shorter body with a matching length field */
		for (size_t cut = 0; cut < c->bodylen; cut++) {
			if (c->type == 0) {
				b.len = b.off = 0;
				sl_buf_append_u32be(&b, (uint32_t)(8 + cut));
				sl_buf_append_u32be(&b, SL_PG_PROTO_V3);
				sl_buf_append(&b, c->body, cut);
			} else {
				msg(&b, c->type, c->body, cut);
			}
			if (run_parser(k, b.data, b.len) == 0)
				fail_msg("%s: accepted a body cut to %zu of %zu bytes", c->name,
					 cut, c->bodylen);
		}
	}
	sl_buf_fini(&b);
}

/* Typed messages whose length field is below 4 or above the configured
 * maximum, at the framer and at every parser. */
static void
test_lengths_out_of_range(void **state)
{
	uint8_t m[16] = {'Q', 0, 0, 0, 0, 'x', 0};
	uint8_t type;
	size_t total;

	for (uint32_t l = 0; l < 4; l++) {
		m[4] = (uint8_t)l;
		assert_int_equal(sl_pg_frame(m, sizeof(m), 1 << 20, &type, &total), SL_EPROTO);
		/* a parser handed such a message (len = l + 1) refuses it too */
		for (int k = 1; k < 16; k++) {
			m[0] = (uint8_t) "?ESKRvQPBEDpCTDA"[k];
			if (run_parser(k, m, l + 1) == 0 || run_parser(k, m, 5) == 0)
				fail_msg("parser %d accepted length %u", k, l);
		}
		m[0] = 'Q';
	}
	/* configured maximum 100: a message of exactly 100 bytes frames, 101 does not */
	m[4] = 99;
	assert_int_equal(sl_pg_frame(m, 5, 100, &type, &total), SL_AGAIN);
	m[4] = 100;
	assert_int_equal(sl_pg_frame(m, 5, 100, &type, &total), SL_ETOOBIG);
	/* startup-phase: below 8, above SL_PG_MAX_STARTUP */
	{
		uint8_t s[8] = {0, 0, 0, 7, 0, 3, 0, 0};
		size_t t;

		assert_int_equal(sl_pg_frame_startup(s, 8, &t), SL_EPROTO);
		s[2] = (uint8_t)((SL_PG_MAX_STARTUP + 1) >> 8);
		s[3] = (uint8_t)(SL_PG_MAX_STARTUP + 1);
		assert_int_equal(sl_pg_frame_startup(s, 8, &t), SL_ETOOBIG);
	}
}

/* StartupMessage limits: the longest packet the framer allows with the most
 * parameters parses; one parameter more is SL_ETOOBIG even when it fits. */
static void
test_startup_limits(void **state)
{
	struct sl_buf b;
	struct sl_pg_startup st;
	const char *k[SL_PG_MAX_PARAMS + 1], *v[SL_PG_MAX_PARAMS + 1];
	char names[SL_PG_MAX_PARAMS + 1][8];
	static char longval[SL_PG_MAX_STARTUP];
	size_t total, fixed;

	for (int i = 0; i <= SL_PG_MAX_PARAMS; i++) {
		snprintf(names[i], sizeof(names[i]), "k%d", i);
		k[i] = names[i];
		v[i] = "";
	}
	sl_buf_init(&b, 0);
	/* size the last value so the packet is exactly SL_PG_MAX_STARTUP bytes */
	assert_int_equal(sl_pg_put_startup(&b, k, v, SL_PG_MAX_PARAMS), 0);
	fixed = b.len;
	memset(longval, 'v', SL_PG_MAX_STARTUP - fixed);
	longval[SL_PG_MAX_STARTUP - fixed] = '\0';
	v[SL_PG_MAX_PARAMS - 1] = longval;
	b.len = 0;
	assert_int_equal(sl_pg_put_startup(&b, k, v, SL_PG_MAX_PARAMS), 0);
	assert_int_equal(b.len, SL_PG_MAX_STARTUP);
	assert_int_equal(sl_pg_frame_startup(b.data, b.len, &total), 0);
	assert_int_equal(sl_pg_parse_startup(b.data, total, &st), 0);
	assert_int_equal(st.nparams, SL_PG_MAX_PARAMS);
	assert_int_equal(strlen(sl_pg_startup_get(&st, names[SL_PG_MAX_PARAMS - 1])),
			 SL_PG_MAX_STARTUP - fixed);
	/* one byte more is too big for the framer */
	longval[SL_PG_MAX_STARTUP - fixed] = 'v';
	longval[SL_PG_MAX_STARTUP - fixed + 1] = '\0';
	b.len = 0;
	assert_int_equal(sl_pg_put_startup(&b, k, v, SL_PG_MAX_PARAMS), 0);
	assert_int_equal(sl_pg_frame_startup(b.data, b.len, &total), SL_ETOOBIG);
	/* SL_PG_MAX_PARAMS + 1 short parameters */
	v[SL_PG_MAX_PARAMS - 1] = "";
	b.len = 0;
	assert_int_equal(sl_pg_put_startup(&b, k, v, SL_PG_MAX_PARAMS + 1), 0);
	assert_int_equal(sl_pg_frame_startup(b.data, b.len, &total), 0);
	assert_int_equal(sl_pg_parse_startup(b.data, total, &st), SL_ETOOBIG);
	sl_buf_fini(&b);
}

/* ------------------------------------------------------------------ parser cases */

static void
test_bind(void **state)
{
	struct sl_buf b;
	struct sl_pg_bind_msg bm;
	/* portal "", stmt "s", 0 formats, 2 params: "ab" and NULL, 0 result formats */
	static const uint8_t ok[] = {0, 's', 0,	  0,	0,    0,    2,	  0, 0, 0,
				     2, 'a', 'b', 0xff, 0xff, 0xff, 0xff, 0, 0};
	/* one format for all (binary), 1 param, 2 result formats */
	static const uint8_t ok1[] = {'p', 0, 's', 0, 0, 1, 0, 1, 0, 1,
				      0,   0, 0,   0, 0, 2, 0, 0, 0, 1};
	static const uint8_t lie[] = {0, 's', 0, 0, 0, 0, 2, 0, 0, 0, 9, 'a', 'b'};
	static const uint8_t neg[] = {0, 's', 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xfe, 0, 0};
	static const uint8_t negmin[] = {0, 's', 0, 0, 0, 0, 1, 0x80, 0, 0, 0, 0, 0};
	static const uint8_t huge[] = {0, 's', 0, 0, 0, 0, 1, 0x7f, 0xff, 0xff, 0xff, 0, 0};
	static const uint8_t manyp[] = {0, 's', 0, 0, 0xff, 0xff, 0, 0};
	/* 2 formats for 3 params */
	static const uint8_t fmtcount[] = {0,	 's',  0,    0,	   2,	 0,    0,    0,	   0,
					   0,	 3,    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
					   0xff, 0xff, 0xff, 0xff, 0xff, 0,    0};
	static const uint8_t fmtcode[] = {0, 's', 0, 0, 1, 0, 2, 0, 0, 0, 0};
	static const uint8_t rfmtcode[] = {0, 's', 0, 0, 0, 0, 0, 0, 1, 1, 0};
	static const uint8_t trailing[] = {0, 's', 0, 0, 0, 0, 0, 0, 0, 'x'};
	static const uint8_t nostmt[] = {0, 's'};
	static const uint8_t rfmtshort[] = {0, 's', 0, 0, 0, 0, 0, 0, 2, 0, 0};

	sl_buf_init(&b, 0);
	msg(&b, 'B', ok, sizeof(ok));
	assert_int_equal(sl_pg_parse_bind(b.data, b.len, &bm), 0);
	assert_string_equal(bm.portal, "");
	assert_string_equal(bm.stmt, "s");
	assert_int_equal(bm.nformats, 0);
	assert_int_equal(bm.nparams, 2);
	assert_int_equal(bm.params_len, 4 + 2 + 4);
	assert_ptr_equal(bm.params, b.data + 5 + 7);
	assert_memory_equal(bm.params,
			    "\0\0\0\x02"
			    "ab\xff\xff\xff\xff",
			    10);
	assert_int_equal(bm.nresult_formats, 0);
	msg(&b, 'B', ok1, sizeof(ok1));
	assert_int_equal(sl_pg_parse_bind(b.data, b.len, &bm), 0);
	assert_string_equal(bm.portal, "p");
	assert_int_equal(bm.nformats, 1);
	assert_int_equal(bm.nparams, 1);
	assert_int_equal(bm.params_len, 4);
	assert_int_equal(bm.nresult_formats, 2);
	assert_memory_equal(bm.result_formats, "\0\0\0\x01", 4);

	msg(&b, 'B', lie, sizeof(lie));
	assert_int_equal(sl_pg_parse_bind(b.data, b.len, &bm), SL_EPROTO);
	msg(&b, 'B', neg, sizeof(neg));
	assert_int_equal(sl_pg_parse_bind(b.data, b.len, &bm), SL_EPROTO);
	msg(&b, 'B', negmin, sizeof(negmin));
	assert_int_equal(sl_pg_parse_bind(b.data, b.len, &bm), SL_EPROTO);
	msg(&b, 'B', huge, sizeof(huge));
	assert_int_equal(sl_pg_parse_bind(b.data, b.len, &bm), SL_EPROTO);
	msg(&b, 'B', manyp, sizeof(manyp));
	assert_int_equal(sl_pg_parse_bind(b.data, b.len, &bm), SL_EPROTO);
	msg(&b, 'B', fmtcount, sizeof(fmtcount));
	assert_int_equal(sl_pg_parse_bind(b.data, b.len, &bm), SL_EPROTO);
	msg(&b, 'B', fmtcode, sizeof(fmtcode));
	assert_int_equal(sl_pg_parse_bind(b.data, b.len, &bm), SL_EPROTO);
	/* Result format codes are the server's to check (it accepts any when
	 * the statement returns no columns): refusing them here would turn a
	 * harmless Bind into a fatal protocol error. */
	msg(&b, 'B', rfmtcode, sizeof(rfmtcode));
	assert_int_equal(sl_pg_parse_bind(b.data, b.len, &bm), 0);
	assert_int_equal(bm.nresult_formats, 1);
	msg(&b, 'B', trailing, sizeof(trailing));
	assert_int_equal(sl_pg_parse_bind(b.data, b.len, &bm), SL_EPROTO);
	msg(&b, 'B', nostmt, sizeof(nostmt));
	assert_int_equal(sl_pg_parse_bind(b.data, b.len, &bm), SL_EPROTO);
	msg(&b, 'B', rfmtshort, sizeof(rfmtshort));
	assert_int_equal(sl_pg_parse_bind(b.data, b.len, &bm), SL_EPROTO);
	/* every truncation of a good message fails (length field adjusted) */
	for (size_t cut = 0; cut < sizeof(ok); cut++) {
		msg(&b, 'B', ok, cut);
		assert_int_equal(sl_pg_parse_bind(b.data, b.len, &bm), SL_EPROTO);
	}
	/* a good body under the wrong type */
	msg(&b, 'P', ok, sizeof(ok));
	assert_int_equal(sl_pg_parse_bind(b.data, b.len, &bm), SL_EPROTO);
	sl_buf_fini(&b);
}

static void
test_data_row(void **state)
{
	struct sl_buf b;
	uint16_t nc = 0;
	uint32_t offs[4];
	int32_t lens[4];
	/* 3 columns: "x", NULL, "" */
	static const uint8_t row[] = {0, 3, 0, 0, 0, 1, 'x', 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0};
	static const uint8_t count_high[] = {0, 3, 0, 0, 0, 1, 'x'};
	static const uint8_t count_low[] = {0, 1, 0, 0, 0, 1, 'x', 0, 0, 0, 0};
	static const uint8_t len_past[] = {0, 1, 0, 0, 0, 9, 'x'};
	static const uint8_t len_neg[] = {0, 1, 0xff, 0xff, 0xff, 0xfe};
	static const uint8_t len_huge[] = {0, 1, 0x7f, 0xff, 0xff, 0xff, 'x'};
	static const uint8_t five[] = {0,    5,	   0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
				       0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
				       0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
	static const uint8_t nocount[] = {0};

	sl_buf_init(&b, 0);
	msg(&b, 'D', row, sizeof(row));
	assert_int_equal(sl_pg_parse_data_row(b.data, b.len, 4, &nc, offs, lens), 0);
	assert_int_equal(nc, 3);
	assert_int_equal(lens[0], 1);
	assert_int_equal(b.data[offs[0]], 'x');
	assert_int_equal(lens[1], -1);
	assert_int_equal(lens[2], 0);
	assert_int_equal(offs[2], b.len);

	msg(&b, 'D', count_high, sizeof(count_high));
	assert_int_equal(sl_pg_parse_data_row(b.data, b.len, 4, &nc, offs, lens), SL_EPROTO);
	msg(&b, 'D', count_low, sizeof(count_low));
	assert_int_equal(sl_pg_parse_data_row(b.data, b.len, 4, &nc, offs, lens), SL_EPROTO);
	msg(&b, 'D', len_past, sizeof(len_past));
	assert_int_equal(sl_pg_parse_data_row(b.data, b.len, 4, &nc, offs, lens), SL_EPROTO);
	msg(&b, 'D', len_neg, sizeof(len_neg));
	assert_int_equal(sl_pg_parse_data_row(b.data, b.len, 4, &nc, offs, lens), SL_EPROTO);
	msg(&b, 'D', len_huge, sizeof(len_huge));
	assert_int_equal(sl_pg_parse_data_row(b.data, b.len, 4, &nc, offs, lens), SL_EPROTO);
	msg(&b, 'D', five, sizeof(five));
	assert_int_equal(sl_pg_parse_data_row(b.data, b.len, 4, &nc, offs, lens), SL_ETOOBIG);
	msg(&b, 'D', nocount, sizeof(nocount));
	assert_int_equal(sl_pg_parse_data_row(b.data, b.len, 4, &nc, offs, lens), SL_EPROTO);
	/* length field says more than the bytes handed over */
	msg(&b, 'D', row, sizeof(row));
	assert_int_equal(sl_pg_parse_data_row(b.data, b.len - 1, 4, &nc, offs, lens), SL_EPROTO);
	sl_buf_fini(&b);
}

static void
test_row_desc(void **state)
{
	struct sl_buf b, body;
	struct sl_pg_field f[2];
	uint16_t n = 0;

	sl_buf_init(&b, 0);
	sl_buf_init(&body, 0);
	sl_buf_append_u16be(&body, 2);
	sl_buf_append_cstr(&body, "id");
	sl_buf_append_u32be(&body, 16384);
	sl_buf_append_u16be(&body, 1);
	sl_buf_append_u32be(&body, 23);
	sl_buf_append_u16be(&body, 4);
	sl_buf_append_u32be(&body, 0xffffffffu);
	sl_buf_append_u16be(&body, 0);
	sl_buf_append_cstr(&body, "ssn");
	sl_buf_append_u32be(&body, 16384);
	sl_buf_append_u16be(&body, 2);
	sl_buf_append_u32be(&body, 25);
	sl_buf_append_u16be(&body, 0xffff);
	sl_buf_append_u32be(&body, 0xffffffffu);
	sl_buf_append_u16be(&body, 1);
	msg(&b, 'T', body.data, body.len);
	assert_int_equal(sl_pg_parse_row_desc(b.data, b.len, f, 2, &n), 0);
	assert_int_equal(n, 2);
	assert_string_equal(f[0].name, "id");
	assert_int_equal(f[0].table_oid, 16384);
	assert_int_equal(f[0].attnum, 1);
	assert_int_equal(f[0].type_oid, 23);
	assert_int_equal(f[0].typlen, 4);
	assert_int_equal(f[0].typmod, -1);
	assert_string_equal(f[1].name, "ssn");
	assert_int_equal(f[1].typlen, -1);
	assert_int_equal(f[1].format, 1);
	/* more fields than room */
	n = 77;
	assert_int_equal(sl_pg_parse_row_desc(b.data, b.len, f, 1, &n), SL_ETOOBIG);
	assert_int_equal(n, 77);
	/* every truncation */
	for (size_t cut = 0; cut < body.len; cut++) {
		msg(&b, 'T', body.data, cut);
		assert_int_equal(sl_pg_parse_row_desc(b.data, b.len, f, 2, &n), SL_EPROTO);
	}
	/* trailing byte */
	sl_buf_append_u8(&body, 0);
	msg(&b, 'T', body.data, body.len);
	assert_int_equal(sl_pg_parse_row_desc(b.data, b.len, f, 2, &n), SL_EPROTO);
	sl_buf_fini(&body);
	sl_buf_fini(&b);
}

static void
test_small_parsers(void **state)
{
	struct sl_buf b;
	const char *s1, *s2;
	size_t len;
	char kind;
	uint32_t u1, u2;
	int64_t rows;

	sl_buf_init(&b, 0);
	/* Query: exactly one NUL, at the end */
	msg(&b, 'Q', "SELECT 1", 8);
	assert_int_equal(sl_pg_parse_query(b.data, b.len, &s1, &len), SL_EPROTO);
	msg(&b, 'Q', "SELECT 1\0", 9);
	assert_int_equal(sl_pg_parse_query(b.data, b.len, &s1, &len), 0);
	assert_int_equal(len, 8);
	msg(&b, 'Q', "SEL\0ECT 1\0", 10);
	assert_int_equal(sl_pg_parse_query(b.data, b.len, &s1, &len), SL_EPROTO);
	msg(&b, 'Q', "SELECT 1\0\0", 10);
	assert_int_equal(sl_pg_parse_query(b.data, b.len, &s1, &len), SL_EPROTO);
	msg(&b, 'Q', "", 0);
	assert_int_equal(sl_pg_parse_query(b.data, b.len, &s1, &len), SL_EPROTO);
	/* the length field must match len exactly */
	msg(&b, 'Q', "SELECT 1\0", 9);
	b.data[4]++;
	assert_int_equal(sl_pg_parse_query(b.data, b.len, &s1, &len), SL_EPROTO);
	assert_int_equal(sl_pg_parse_query(b.data, 4, &s1, &len), SL_EPROTO);

	/* Parse: OID count lies */
	{
		struct sl_pg_parse_msg pm;

		msg(&b, 'P', "\0SELECT $1\0\0\x02\0\0\0\x17", 17);
		assert_int_equal(sl_pg_parse_parse(b.data, b.len, &pm), SL_EPROTO);
		msg(&b, 'P', "\0SELECT $1\0\0\x01\0\0\0\x17", 17);
		assert_int_equal(sl_pg_parse_parse(b.data, b.len, &pm), 0);
		assert_int_equal(pm.nparams, 1);
	}
	/* Execute */
	msg(&b, 'E', "p\0\0\0\0\x05", 6);
	assert_int_equal(sl_pg_parse_execute(b.data, b.len, &s1, &u1), 0);
	assert_string_equal(s1, "p");
	assert_int_equal(u1, 5);
	msg(&b, 'E', "p\0\0\0\0", 5);
	assert_int_equal(sl_pg_parse_execute(b.data, b.len, &s1, &u1), SL_EPROTO);
	/* Describe / Close */
	msg(&b, 'D', "Sstmt\0", 6);
	assert_int_equal(sl_pg_parse_describe_close(b.data, b.len, &kind, &s1), 0);
	assert_int_equal(kind, 'S');
	assert_string_equal(s1, "stmt");
	msg(&b, 'C', "P\0", 2);
	assert_int_equal(sl_pg_parse_describe_close(b.data, b.len, &kind, &s1), 0);
	assert_int_equal(kind, 'P');
	msg(&b, 'C', "X\0", 2);
	assert_int_equal(sl_pg_parse_describe_close(b.data, b.len, &kind, &s1), SL_EPROTO);
	msg(&b, 'Q', "S\0", 2);
	assert_int_equal(sl_pg_parse_describe_close(b.data, b.len, &kind, &s1), SL_EPROTO);
	msg(&b, 'D', "S", 1);
	assert_int_equal(sl_pg_parse_describe_close(b.data, b.len, &kind, &s1), SL_EPROTO);
	/* Password */
	msg(&b, 'p', "pw\0x", 4);
	assert_int_equal(sl_pg_parse_password(b.data, b.len, &s1, &len), SL_EPROTO);
	/* BackendKeyData of the wrong size */
	msg(&b, 'K', "\0\0\0\x01\0\0\0", 7);
	assert_int_equal(sl_pg_parse_backend_key(b.data, b.len, &u1, &u2), SL_EPROTO);
	msg(&b, 'K', "\0\0\0\x01\0\0\0\x02\0", 9);
	assert_int_equal(sl_pg_parse_backend_key(b.data, b.len, &u1, &u2), SL_EPROTO);
	/* ParameterStatus */
	msg(&b, 'S', "a\0b", 3);
	assert_int_equal(sl_pg_parse_param_status(b.data, b.len, &s1, &s2), SL_EPROTO);
	/* Notification */
	msg(&b, 'A',
	    "\0\0\0\x07"
	    "chan\0pay\0",
	    13);
	assert_int_equal(sl_pg_parse_notification(b.data, b.len, &u1, &s1, &s2), 0);
	assert_int_equal(u1, 7);
	assert_string_equal(s1, "chan");
	assert_string_equal(s2, "pay");
	msg(&b, 'A',
	    "\0\0\0\x07"
	    "chan\0pay",
	    12);
	assert_int_equal(sl_pg_parse_notification(b.data, b.len, &u1, &s1, &s2), SL_EPROTO);
	/* Auth: code missing */
	{
		const uint8_t *extra;

		msg(&b, 'R', "\0\0", 2);
		assert_int_equal(sl_pg_parse_auth(b.data, b.len, &u1, &extra, &len), SL_EPROTO);
	}
	/* NegotiateProtocolVersion */
	msg(&b, 'v', "\0\0\0\0\0\0\0\x01_pq_.a\0", 15);
	assert_int_equal(sl_pg_parse_negotiate_version(b.data, b.len, &u1, &u2), 0);
	assert_int_equal(u2, 1);
	msg(&b, 'v', "\0\0\0\0\xff\xff\xff\xff", 8);
	assert_int_equal(sl_pg_parse_negotiate_version(b.data, b.len, &u1, &u2), SL_EPROTO);

	/* CommandComplete counts */
	{
		static const struct {
			const char *tag;
			int64_t rows;
		} cc[] = {
			{"INSERT 0 5", 5},
			{"SELECT 3", 3},
			{"UPDATE 0", 0},
			{"COPY 9223372036854775807", INT64_MAX},
			{"SELECT 9223372036854775808", -1},
			{"SELECT 99999999999999999999", -1},
			{"UPDATE 5x", -1},
			{"UPDATE -5", -1},
			{"UPDATE ", -1},
			{"BEGIN", -1},
			{"CREATE TABLE", -1},
			{"", -1},
		};

		for (size_t i = 0; i < sizeof(cc) / sizeof(cc[0]); i++) {
			msg(&b, 'C', cc[i].tag, strlen(cc[i].tag) + 1);
			assert_int_equal(sl_pg_parse_command_complete(b.data, b.len, &s1, &rows),
					 0);
			assert_string_equal(s1, cc[i].tag);
			assert_int_equal(rows, cc[i].rows);
		}
		msg(&b, 'C', "SELECT 1", 8);
		assert_int_equal(sl_pg_parse_command_complete(b.data, b.len, &s1, &rows),
				 SL_EPROTO);
	}
	sl_buf_fini(&b);
}

static void
test_error_parser(void **state)
{
	struct sl_buf b;
	struct sl_pg_error_fields f;

	sl_buf_init(&b, 0);
	/* unknown field codes are skipped; P is the position */
	msg(&b, 'E', "SERROR\0C42601\0Msyntax\0P7\0Zfuture\0\0", 34);
	assert_int_equal(sl_pg_parse_error(b.data, b.len, &f), 0);
	assert_string_equal(f.sqlstate, "42601");
	assert_string_equal(f.position, "7");
	/* missing final NUL, field without NUL, bytes after the end */
	msg(&b, 'E', "SERROR\0", 7);
	assert_int_equal(sl_pg_parse_error(b.data, b.len, &f), SL_EPROTO);
	msg(&b, 'E', "SERROR", 6);
	assert_int_equal(sl_pg_parse_error(b.data, b.len, &f), SL_EPROTO);
	msg(&b, 'E', "\0x", 2);
	assert_int_equal(sl_pg_parse_error(b.data, b.len, &f), SL_EPROTO);
	/* only E and N */
	msg(&b, 'Q', "\0", 1);
	assert_int_equal(sl_pg_parse_error(b.data, b.len, &f), SL_EPROTO);
	assert_int_equal(sl_pg_parse_error(b.data, 0, &f), SL_EPROTO);
	sl_buf_fini(&b);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_frame_boundaries),
		cmocka_unit_test(test_frame_split_reads),
		cmocka_unit_test(test_frame_startup),
		cmocka_unit_test(test_startup_ok),
		cmocka_unit_test(test_startup_abuse),
		cmocka_unit_test(test_builders_roundtrip),
		cmocka_unit_test(test_builders_buffer_edges),
		cmocka_unit_test(test_builders_into_compacting_buffer),
		cmocka_unit_test(test_builders_fail_atomically),
		cmocka_unit_test(test_parsers_reject_truncation),
		cmocka_unit_test(test_lengths_out_of_range),
		cmocka_unit_test(test_startup_limits),
		cmocka_unit_test(test_bind),
		cmocka_unit_test(test_data_row),
		cmocka_unit_test(test_row_desc),
		cmocka_unit_test(test_small_parsers),
		cmocka_unit_test(test_error_parser),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
