/*
 * Fuzz target: the PostgreSQL codec and the upstream-auth state machine.
 * The first byte picks what runs (modulo 6); the rest is the input:
 *   0  startup-phase framing + sl_pg_parse_startup
 *   1  typed framing + every parser on every message (room for 64 columns)
 *   2  the same with room for 2 columns (SL_ETOOBIG paths)
 *   3  sl_pg_upauth_feed over a hostile server's login messages
 *   4  the same with a fixed client nonce "fuzz" and at most 4096 SCRAM
 *      iterations, so inputs can reach SASLContinue/SASLFinal; the
 *      input's length modulo 3 picks no channel binding, PREFER or REQUIRE
 *   5  builders: NUL-separated strings in, build, parse back, compare
 *      (also into a buffer with unread bytes that compacts mid-message)
 * Invariants are checked with abort(): borrowed pointers stay inside the
 * message, reported lengths are consistent, builders round-trip.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sluice/pg_auth.h"
#include "sluice/pg_codec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                                                                                   \
	do {                                                                                       \
		if (!(c))                                                                          \
			abort();                                                                   \
	} while (0)

static int
inside(const void *p, size_t n, const uint8_t *msg, size_t len)
{
	const uint8_t *q = p;

	return q >= msg && q <= msg + len && n <= (size_t)(msg + len - q);
}

static void
run_startup(const uint8_t *p, size_t n)
{
	struct sl_pg_startup st;
	size_t total;

	if (sl_pg_frame_startup(p, n, &total) != 0)
		return;
	CHECK(total >= 8 && total <= n && total <= SL_PG_MAX_STARTUP);
	if (sl_pg_parse_startup(p, total, &st) != 0)
		return;
	CHECK(st.nparams <= SL_PG_MAX_PARAMS);
	for (size_t i = 0; i < st.nparams; i++) {
		size_t kl = strlen(st.keys[i]);

		CHECK(kl > 0 && inside(st.keys[i], kl + 1, p, total));
		CHECK(inside(st.vals[i], strlen(st.vals[i]) + 1, p, total));
		CHECK(sl_pg_startup_get(&st, st.keys[i]) == st.vals[i]);
	}
}

static void
run_parsers(const uint8_t *m, size_t total, uint16_t maxcols)
{
	struct sl_pg_error_fields ef;
	struct sl_pg_parse_msg pm;
	struct sl_pg_bind_msg bm;
	struct sl_pg_field fields[64];
	uint16_t nf;
	uint32_t offs[64], pid, key, maxrows, code;
	int32_t lens[64];
	const char *a, *b;
	size_t l;
	int64_t rows;
	char kind;
	const uint8_t *extra;

	sl_pg_parse_error(m, total, &ef);
	sl_pg_parse_param_status(m, total, &a, &b);
	sl_pg_parse_backend_key(m, total, &pid, &key);
	if (sl_pg_parse_auth(m, total, &code, &extra, &l) == 0)
		CHECK(inside(extra, l, m, total));
	sl_pg_parse_negotiate_version(m, total, &pid, &key);
	if (sl_pg_parse_query(m, total, &a, &l) == 0)
		CHECK(strlen(a) == l && inside(a, l + 1, m, total) &&
		      a + l + 1 == (char *)m + total);
	if (sl_pg_parse_parse(m, total, &pm) == 0)
		CHECK(inside(pm.oids, (size_t)pm.nparams * 4, m, total) &&
		      strlen(pm.sql) == pm.sqllen);
	if (sl_pg_parse_bind(m, total, &bm) == 0) {
		CHECK(inside(bm.params, bm.params_len, m, total));
		CHECK(inside(bm.formats, (size_t)bm.nformats * 2, m, total));
		CHECK(inside(bm.result_formats, (size_t)bm.nresult_formats * 2, m, total));
		CHECK(bm.nformats <= 1 || bm.nformats == bm.nparams);
		CHECK(bm.params_len >= (size_t)bm.nparams * 4);
	}
	sl_pg_parse_execute(m, total, &a, &maxrows);
	if (sl_pg_parse_describe_close(m, total, &kind, &a) == 0)
		CHECK(kind == 'S' || kind == 'P');
	sl_pg_parse_password(m, total, &a, &l);
	if (sl_pg_parse_command_complete(m, total, &a, &rows) == 0)
		CHECK(rows >= -1);
	if (sl_pg_parse_row_desc(m, total, fields, maxcols, &nf) == 0)
		CHECK(nf <= maxcols);
	if (sl_pg_parse_data_row(m, total, maxcols, &nf, offs, lens) == 0) {
		CHECK(nf <= maxcols);
		for (uint16_t i = 0; i < nf; i++)
			CHECK(lens[i] >= -1 &&
			      (lens[i] == -1 ||
			       (offs[i] <= total && (size_t)lens[i] <= total - offs[i])));
	}
	sl_pg_parse_notification(m, total, &pid, &a, &b);
}

static void
run_typed(const uint8_t *p, size_t n, uint16_t maxcols)
{
	uint8_t type;
	size_t total;

	while (n > 0 && sl_pg_frame(p, n, 1 << 20, &type, &total) == 0) {
		CHECK(total >= 5 && total <= n && type == p[0]);
		run_parsers(p, total, maxcols);
		p += total;
		n -= total;
	}
}

/* Every reply the state machine wrote must be whole 'p' messages. */
static void
check_replies(const struct sl_buf *out)
{
	const uint8_t *p;
	size_t n = sl_buf_unread(out);
	uint8_t type;
	size_t total;

	if (n == 0)
		return; /* out->data may be NULL: no sl_buf_head() (NULL + 0) */
	p = sl_buf_head(out);
	while (n > 0) {
		CHECK(sl_pg_frame(p, n, 1 << 20, &type, &total) == 0 && type == 'p');
		p += total;
		n -= total;
	}
}

static void
run_upauth(const uint8_t *p, size_t n, int scram)
{
	static const uint8_t nonce[24] = {1};
	struct sl_pg_upauth *a;
	struct sl_buf out;
	char err[256];
	uint8_t type;
	size_t total;
	int plus_ok = 0, require = 0;

	if (sl_pg_upauth_new("u", "pw", nonce, sizeof(nonce), &a) != 0)
		return;
	if (scram) {
		/* the input's length picks channel binding: none, PREFER or
		 * REQUIRE with a (fake) certificate hash */
		static const uint8_t cb[32] = {0xab};
		int mode = (int)(n % 3);

		sl_pg_upauth_set_client_nonce(a, "fuzz");
		sl_pg_upauth_set_max_iterations(a, 4096);
		sl_pg_upauth_set_channel_binding(a, mode, cb, mode ? sizeof(cb) : 0);
		plus_ok = mode != 0;
		require = mode == 2;
	}
	sl_buf_init(&out, 1 << 20);
	while (n > 0 && sl_pg_frame(p, n, 1 << 20, &type, &total) == 0) {
		int r = sl_pg_upauth_feed(a, p, total, &out, err, sizeof(err));

		CHECK(r == 0 || r == SL_PG_UPAUTH_DONE || r < 0);
		CHECK(memchr(err, 0, sizeof(err)) != NULL);
		if (r < 0) {
			/* Spent: everything after is a state error. */
			CHECK(sl_pg_upauth_feed(a, p, total, &out, err, sizeof(err)) == SL_ESTATE);
			break;
		}
		if (r == SL_PG_UPAUTH_DONE) {
			const char *m = sl_pg_upauth_method(a);

			CHECK(m != NULL);
			/* PLUS only with a certificate hash; REQUIRE: PLUS only */
			CHECK(plus_ok || strcmp(m, "scram-sha-256-plus") != 0);
			CHECK(!require || strcmp(m, "scram-sha-256-plus") == 0);
		}
		p += total;
		n -= total;
	}
	check_replies(&out);
	sl_buf_fini(&out);
	sl_pg_upauth_free(a);
}

/* Splits the input at NULs into up to 6 strings (the rest is ignored). */
static size_t
split(const uint8_t *p, size_t n, char *buf, const char **s, size_t max)
{
	size_t k = 0, start = 0;

	memcpy(buf, p, n);
	buf[n] = '\0';
	for (size_t i = 0; i <= n && k < max; i++) {
		if (buf[i] == '\0') {
			s[k++] = buf + start;
			start = i + 1;
		}
	}
	return k;
}

static void
run_builders(const uint8_t *p, size_t n)
{
	const char *s[6];
	char *buf = malloc(n + 1);
	struct sl_buf b;
	size_t k;

	if (buf == NULL)
		return;
	k = split(p, n, buf, s, 6);
	sl_buf_init(&b, 1 << 16);
	if (k >= 5) {
		struct sl_pg_error_fields f;

		if (sl_pg_put_error(&b, s[0], s[1], s[2], s[3], s[4]) == 0) {
			CHECK(sl_pg_parse_error(b.data, b.len, &f) == 0);
			CHECK(strcmp(f.severity, s[0]) == 0 && strcmp(f.sqlstate, s[1]) == 0 &&
			      strcmp(f.message, s[2]) == 0 && strcmp(f.detail, s[3]) == 0 &&
			      strcmp(f.hint, s[4]) == 0);
		}
	}
	b.len = b.off = 0;
	if (k >= 1) {
		const char *sql;
		size_t l, keep = n % 256, start;
		uint8_t junk[256] = {0};

		if (sl_pg_put_query(&b, s[0]) == 0) {
			CHECK(sl_pg_parse_query(b.data, b.len, &sql, &l) == 0);
			CHECK(strcmp(sql, s[0]) == 0);
		}
		/* Again behind `keep` unread bytes of a full 256-byte buffer, so
		 * the build compacts it: same message, length field right. */
		sl_buf_fini(&b);
		sl_buf_init(&b, 1 << 16);
		if (sl_buf_append(&b, junk, sizeof(junk)) == 0) {
			sl_buf_consume(&b, sizeof(junk) - keep);
			start = b.len - b.off;
			if (sl_pg_put_query(&b, s[0]) == 0) {
				CHECK(sl_buf_unread(&b) == start + strlen(s[0]) + 6);
				CHECK(sl_pg_parse_query(sl_buf_head(&b) + start,
							sl_buf_unread(&b) - start, &sql, &l) == 0);
				CHECK(strcmp(sql, s[0]) == 0);
			} else {
				CHECK(sl_buf_unread(&b) == start);
			}
		}
	}
	b.len = b.off = 0;
	if (k >= 2) {
		const char *keys[3], *vals[3];
		size_t np = k / 2 < 3 ? k / 2 : 3;
		struct sl_pg_startup st;

		for (size_t i = 0; i < np; i++) {
			keys[i] = s[2 * i];
			vals[i] = s[2 * i + 1];
		}
		if (sl_pg_put_startup(&b, keys, vals, np) == 0) {
			int r = sl_pg_parse_startup(b.data, b.len, &st);

			/* Only duplicate keys may fail; values come back as given. */
			if (r == 0) {
				CHECK(st.nparams == np);
				for (size_t i = 0; i < np; i++)
					CHECK(strcmp(st.vals[i], vals[i]) == 0);
			} else {
				CHECK(r == SL_EPROTO && np >= 2);
			}
		}
	}
	sl_buf_fini(&b);
	free(buf);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	switch (data[0] % 6) {
	case 0:
		run_startup(data + 1, size - 1);
		break;
	case 1:
		run_typed(data + 1, size - 1, 64);
		break;
	case 2:
		run_typed(data + 1, size - 1, 2);
		break;
	case 3:
		run_upauth(data + 1, size - 1, 0);
		break;
	case 4:
		run_upauth(data + 1, size - 1, 1);
		break;
	default:
		run_builders(data + 1, size - 1);
		break;
	}
	return 0;
}
