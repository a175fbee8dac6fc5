/* Unit tests for the masking engine: the PII corpus (every positive masked,
 * no near-miss touched) in block and stream mode, styles, checksums, column
 * rules (typed), custom patterns, stream limits (bounded hold, PEM cap,
 * fail-closed eviction, latency). The PCRE2 cross-check over every chunk
 * boundary is in test_mask_pcre.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "sluice/config.h"
#include "sluice/mask.h"

static struct sl_mask_db *db;
static struct sl_mask_plan *plan;
static struct sl_mask_scratch *scr;

static int
setup(void **state)
{
	char err[256];
	char *dets[] = {"ssn",	       "credit_card",	    "email", "aws_access_key", "jwt",
			"private_key", "secret_assignment", "iban",  "phone"};
	struct sl_cfg_policy_mask pm = {0};

	pm.detectors = dets;
	pm.detectors_count = 9;
	assert_int_equal(sl_mask_db_new(NULL, &db, err, sizeof(err)), 0);
	assert_int_equal(
		sl_mask_plan_new(db, &pm, (const uint8_t *)"key", 3, &plan, err, sizeof(err)), 0);
	assert_int_equal(sl_mask_scratch_new(db, &scr), 0);
	return 0;
}

static int
teardown(void **state)
{
	sl_mask_scratch_free(scr);
	sl_mask_plan_free(plan);
	sl_mask_db_free(db);
	return 0;
}

static void
unescape(char *s)
{
	char *o = s;

	for (char *p = s; *p; p++) {
		if (p[0] == '\\' && p[1] == 'n') {
			*o++ = '\n';
			p++;
		} else {
			*o++ = *p;
		}
	}
	*o = '\0';
}

struct collect {
	uint8_t *p;
	size_t n, cap;
	int fail_after; /* emit calls before failing; < 0: never */
};

static int
collect(void *arg, const uint8_t *p, size_t n)
{
	struct collect *c = arg;

	if (c->fail_after == 0)
		return -1;
	if (c->fail_after > 0)
		c->fail_after--;
	if (c->n + n > c->cap) {
		c->cap = (c->n + n) * 2;
		c->p = realloc(c->p, c->cap);
		assert_non_null(c->p);
	}
	memcpy(c->p + c->n, p, n);
	c->n += n;
	return 0;
}

/* Streams v through plan pl in chunk-byte pieces; returns the output
 * (owned, NUL-terminated) and its length. */
static char *
stream_mask(const struct sl_mask_plan *pl, const char *v, size_t len, size_t chunk, size_t *outlen,
	    struct sl_mask_stats *st)
{
	struct collect c = {malloc(16), 0, 16, -1};
	struct sl_mask_stream *ms;

	assert_int_equal(sl_mask_stream_new(pl, scr, collect, &c, &ms), 0);
	for (size_t off = 0; off < len; off += chunk)
		assert_int_equal(sl_mask_stream_feed(ms, (const uint8_t *)v + off,
						     len - off < chunk ? len - off : chunk),
				 0);
	assert_int_equal(sl_mask_stream_end(ms), 0);
	if (st != NULL)
		*st = *sl_mask_stream_stats(ms);
	sl_mask_stream_free(ms);
	collect(&c, (const uint8_t *)"", 1);
	*outlen = c.n - 1;
	return (char *)c.p;
}

static int
mask(char *buf, size_t len, struct sl_mask_stats *st)
{
	struct sl_buf out;
	int r;

	sl_buf_init(&out, 0);
	r = sl_mask_value(plan, scr, (uint8_t *)buf, len, &out, st);
	sl_buf_fini(&out);
	return r;
}

static void
test_corpus_positives(void **state)
{
	char path[4096], line[1024];
	FILE *f;
	int n = 0;
	static const char *ctx[][2] = {{"", ""},   {"x ", " y"},      {"(", ")"},
				       {"'", "'"}, {"value: ", "\n"}, {"\t", "\t"}};

	snprintf(path, sizeof(path), "%s/pii/positives.txt", SL_FIXTURES);
	f = fopen(path, "r");
	assert_non_null(f);
	while (fgets(line, sizeof(line), f) != NULL) {
		char *tab = strchr(line, '\t'), *val;
		size_t l;
		int det;

		if (line[0] == '#' || tab == NULL)
			continue;
		*tab = '\0';
		val = tab + 1;
		l = strlen(val);
		while (l && (val[l - 1] == '\n' || val[l - 1] == '\r'))
			val[--l] = '\0';
		unescape(val);
		det = sl_mask_detector_id(db, line);
		assert_true(det >= 0);
		for (size_t c = 0; c < sizeof(ctx) / sizeof(ctx[0]); c++) {
			char buf[2048];
			struct sl_mask_stats st = {0};
			int r;

			snprintf(buf, sizeof(buf), "%s%s%s", ctx[c][0], val, ctx[c][1]);
			r = mask(buf, strlen(buf), &st);
			if (r != SL_MASK_IN_PLACE || strstr(buf, val) != NULL || st.hits[det] == 0)
				fail_msg("%s: \"%s\" in \"%s%s%s\" not masked (r=%d) -> \"%s\"",
					 line, val, ctx[c][0], val, ctx[c][1], r, buf);
			/* length preserving, context untouched */
			assert_int_equal(strlen(buf),
					 strlen(ctx[c][0]) + strlen(val) + strlen(ctx[c][1]));
			assert_memory_equal(buf, ctx[c][0], strlen(ctx[c][0]));
			/* a stream in 1- and 7-byte pieces masks it the same way */
			for (size_t chunk = 1; chunk <= 7; chunk += 6) {
				char in[2048], *o;
				size_t ol;

				snprintf(in, sizeof(in), "%s%s%s", ctx[c][0], val, ctx[c][1]);
				o = stream_mask(plan, in, strlen(in), chunk, &ol, NULL);
				if (ol != strlen(in) || strcmp(o, buf) != 0)
					fail_msg("stream/%zu: \"%s\" -> \"%s\", block \"%s\"",
						 chunk, in, o, buf);
				free(o);
			}
		}
		n++;
	}
	fclose(f);
	assert_true(n >= 60);
}

/* The one pass over a value (anchor bytes, digit-scanner reports replayed,
 * regex windows) may skip work only where nothing can match: every sample
 * at every offset across the first 64-byte blocks and the last bytes of
 * values of lengths around the prefilter, window and block limits must be
 * masked (and only it), exactly as the stream (which scans every byte)
 * masks it. Filler holds what the pass must pass over: times (':' after a
 * digit), dates, "+00" zones, 'A' and 'y' in words, "key=1"-like pairs. */
static void
test_one_pass_edges(void **state)
{
	static const char *samples[] = {
		"123-45-6789",
		"4111111111111111",
		"4111 1111 1111 1111",
		"GB82 WEST 1234 5698 7654 32",
		"GB82WEST12345698765432",
		"+442012345678",
		"ada@example.com",
		"AKIAIOSFODNN7EXAMPLE",
		"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N",
		"password=hunter22",
		"xpassword=hunter22",
		"db_password: hunter22",
		"API_KEY = abcdef12",
		"\"token\":\"abc123xyz\"",
		"'secret' = 's3cr3t!!'",
		"Authorization: Bearer abcdefgh12345678",
		"-----BEGIN RSA PRIVATE KEY-----",
	};
	static const char filler[] = "2024-05-12 13:45:22.123+00 Ada Lovelace paid 12.50 yearly, "
				     "id=12 ratio:3 A-b y. ";
	static const size_t lens[] = {40,  63,	64,  65,   127,	 128,  200, 255,
				      256, 257, 300, 1024, 1025, 1100, 2100};
	char *v = malloc(4096), *b = malloc(4096);
	int checked = 0;

	for (size_t si = 0; si < sizeof(samples) / sizeof(samples[0]); si++) {
		size_t sl = strlen(samples[si]);
		int pem = samples[si][0] == '-';

		for (size_t li = 0; li < sizeof(lens) / sizeof(lens[0]); li++) {
			size_t len = lens[li];

			if (sl + 2 > len)
				continue;
			for (size_t off = 0; off + sl + 2 <= len; off++) {
				size_t ol;
				char *so;

				/* the first two blocks, then only near the end */
				if (off > 140 && off + sl + 2 + 70 < len)
					continue;
				for (size_t i = 0; i < len; i++)
					v[i] = filler[i % (sizeof(filler) - 1)];
				v[off] = ' ';
				memcpy(v + off + 1, samples[si], sl);
				v[off + 1 + sl] = ' ';
				memcpy(b, v, len);
				mask(b, len, NULL);
				so = stream_mask(plan, v, len, len, &ol, NULL);
				assert_int_equal(ol, len);
				if (memcmp(so, b, len) != 0)
					fail_msg("block != stream: sample %zu len %zu off %zu", si,
						 len, off);
				free(so);
				if (memchr(b + off + 1, '*', sl) == NULL)
					fail_msg("not masked: sample %zu len %zu off %zu", si, len,
						 off);
				if (!pem && (memcmp(b, v, off) != 0 ||
					     memcmp(b + off + sl + 2, v + off + sl + 2,
						    len - off - sl - 2) != 0))
					fail_msg("filler changed: sample %zu len %zu off %zu", si,
						 len, off);
				checked++;
			}
		}
	}
	/* more blocks with digit-scanner reports than the pass keeps (it
	 * scans again): 20 KB of card numbers and SSNs */
	{
		size_t len = 0, cap = 20000, ol;
		char *big = malloc(cap + 64), *bb = malloc(cap + 64), *so;

		while (len + 40 < cap)
			len += (size_t)sprintf(big + len, "4111111111111111 x 123-45-6789 ");
		memcpy(bb, big, len);
		mask(bb, len, NULL);
		so = stream_mask(plan, big, len, 4096, &ol, NULL);
		assert_int_equal(ol, len);
		assert_memory_equal(so, bb, len);
		assert_null(memmem(bb, len, "4111111111111111", 16));
		assert_null(memmem(bb, len, "123-45-6789", 11));
		free(so);
		free(big);
		free(bb);
	}
	assert_true(checked > 5000);
	free(v);
	free(b);
}

static void
test_corpus_near_misses(void **state)
{
	char path[4096], line[1024];
	FILE *f;
	int n = 0;

	snprintf(path, sizeof(path), "%s/pii/near_misses.txt", SL_FIXTURES);
	f = fopen(path, "r");
	assert_non_null(f);
	while (fgets(line, sizeof(line), f) != NULL) {
		char orig[1024];
		size_t l = strlen(line);

		if (line[0] == '#')
			continue;
		while (l && (line[l - 1] == '\n' || line[l - 1] == '\r'))
			line[--l] = '\0';
		memcpy(orig, line, l + 1);
		if (mask(line, l, NULL) != SL_MASK_UNCHANGED || strcmp(line, orig) != 0)
			fail_msg("near miss \"%s\" was changed to \"%s\"", orig, line);
		{
			size_t ol;
			char *o = stream_mask(plan, orig, l, 3, &ol, NULL);

			if (ol != l || memcmp(o, orig, l) != 0)
				fail_msg("near miss \"%s\" was changed to \"%s\" (stream)", orig,
					 o);
			free(o);
		}
		n++;
	}
	fclose(f);
	assert_true(n >= 50);
}

static void
test_styles(void **state)
{
	char b[64];

	strcpy(b, "ssn 123-45-6789");
	mask(b, strlen(b), NULL);
	assert_string_equal(b, "ssn ***-**-6789");
	strcpy(b, "4111111111111111");
	mask(b, strlen(b), NULL);
	assert_string_equal(b, "************1111");
	strcpy(b, "john@example.com");
	mask(b, strlen(b), NULL);
	assert_string_equal(b, "j***@example.com");
	/* column rules */
	{
		struct sl_buf out;
		char v[] = "123-45-6789", s[] = "abc";

		sl_buf_init(&out, 0);
		assert_int_equal(sl_mask_column(plan, SL_MASK_PARTIAL, (uint8_t *)v, 11, &out),
				 SL_MASK_IN_PLACE);
		assert_string_equal(v, "***-**-6789");
		assert_int_equal(sl_mask_column(plan, SL_MASK_PARTIAL, (uint8_t *)s, 3, &out),
				 SL_MASK_IN_PLACE);
		assert_string_equal(s, "***");
		assert_int_equal(sl_mask_column(plan, SL_MASK_NULL, (uint8_t *)s, 3, &out),
				 SL_MASK_TO_NULL);
		assert_int_equal(sl_mask_column(plan, SL_MASK_HASH, (uint8_t *)s, 3, &out),
				 SL_MASK_REPLACED);
		assert_int_equal(out.len, 18);
		assert_memory_equal(out.data, "h:", 2);
		sl_buf_fini(&out);
	}
	assert_true(sl_mask_luhn("4111111111111111", 16));
	assert_false(sl_mask_luhn("4111111111111112", 16));
	assert_true(sl_mask_iban_ok("GB82WEST12345698765432", 22));
	assert_false(sl_mask_iban_ok("GB82WEST12345698765433", 22));
}

static void
test_overlaps_and_limits(void **state)
{
	char b[8192];
	size_t n = 0;

	/* an email whose local part looks like a phone, merged into one span */
	strcpy(b, "+14155552671@example.com");
	mask(b, strlen(b), NULL);
	assert_null(strstr(b, "4155552671"));
	/* thousands of candidates: masked whole, never partially leaked */
	while (n + 20 < sizeof(b) - 1) {
		memcpy(b + n, "123-45-6789 ", 12);
		n += 12;
	}
	b[n] = '\0';
	assert_true(mask(b, n, NULL) > 0);
	assert_null(strstr(b, "123-45"));
}

/* A stream holds back only what may still be part of a match: nothing
 * after whitespace (an interactive prompt is not delayed). */
static void
test_stream_latency(void **state)
{
	struct collect c = {malloc(16), 0, 16, -1};
	struct sl_mask_stream *ms;
	static const char *a = "name: Ada\nssn 123-45-6789 done\n", *b = "user@host:~$ ",
			  *d = "card 4111 1111";

	assert_int_equal(sl_mask_stream_new(plan, scr, collect, &c, &ms), 0);
	assert_int_equal(sl_mask_stream_feed(ms, (const uint8_t *)a, strlen(a)), 0);
	assert_int_equal(sl_mask_stream_held(ms), 0);
	assert_int_equal(c.n, strlen(a));
	assert_memory_equal(c.p, "name: Ada\nssn ***-**-6789 done\n", c.n);
	assert_int_equal(sl_mask_stream_feed(ms, (const uint8_t *)b, strlen(b)), 0);
	assert_int_equal(sl_mask_stream_held(ms), 0);
	/* a number that may become a card is held back, briefly */
	assert_int_equal(sl_mask_stream_feed(ms, (const uint8_t *)d, strlen(d)), 0);
	assert_true(sl_mask_stream_held(ms) > 0 && sl_mask_stream_held(ms) <= 28);
	assert_int_equal(sl_mask_stream_feed(ms, (const uint8_t *)" 1111 1111\n", 11), 0);
	assert_int_equal(sl_mask_stream_held(ms), 0);
	assert_int_equal(sl_mask_stream_end(ms), 0);
	collect(&c, (const uint8_t *)"", 1);
	assert_string_equal((char *)c.p + strlen(a) + strlen(b), "card **** **** **** 1111\n");
	/* ended: nothing more is accepted */
	assert_int_equal(sl_mask_stream_feed(ms, (const uint8_t *)"x", 1), SL_ESTATE);
	sl_mask_stream_free(ms);
	free(c.p);
}

static char *
pem_text(size_t body, int with_end, size_t *len)
{
	char *t = malloc(body + 128);
	size_t n = (size_t)sprintf(t, "key -----BEGIN RSA PRIVATE KEY-----\n");

	for (size_t i = 0; i < body; i++)
		t[n++] = i % 65 == 64 ? '\n' : "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/"[i % 38];
	if (with_end)
		n += (size_t)sprintf(t + n, "\n-----END RSA PRIVATE KEY-----");
	n += (size_t)sprintf(t + n, " tail");
	*len = n;
	return t;
}

/* PEM blocks: masked while they stream (not held), split anywhere; without
 * an END marker, for SL_MASK_PEM_MAX bytes, in block and stream alike. */
static void
test_stream_pem(void **state)
{
	size_t len, ol;
	char *t = pem_text(3000, 1, &len), *o, *blk;
	struct collect c = {malloc(16), 0, 16, -1};
	struct sl_mask_stream *ms;
	struct sl_buf out;

	o = stream_mask(plan, t, len, 100, &ol, NULL);
	assert_int_equal(ol, len);
	assert_memory_equal(o, "key *****", 9);
	assert_string_equal(o + len - 5, " tail");
	for (size_t i = 4; i < len - 5; i++)
		assert_true(o[i] == '*' || o[i] == '\n');
	free(o);
	/* the body is not held back while it streams */
	assert_int_equal(sl_mask_stream_new(plan, scr, collect, &c, &ms), 0);
	for (size_t off = 0; off + 100 < len - 200; off += 100) {
		assert_int_equal(sl_mask_stream_feed(ms, (const uint8_t *)t + off, 100), 0);
		if (off > 200)
			assert_true(sl_mask_stream_held(ms) < 100);
	}
	sl_mask_stream_free(ms);
	free(c.p);
	free(t);
	/* no END: 16 KiB from BEGIN masked, then scanning resumes */
	t = pem_text(20000, 0, &len);
	o = stream_mask(plan, t, len, 997, &ol, NULL);
	assert_int_equal(ol, len);
	for (size_t i = 4; i < 4 + SL_MASK_PEM_MAX; i++)
		assert_true(o[i] == '*' || o[i] == '\n');
	assert_true(o[4 + SL_MASK_PEM_MAX + 1] != '*');
	blk = strdup(t);
	sl_buf_init(&out, 0);
	assert_int_equal(sl_mask_value(plan, scr, (uint8_t *)blk, len, &out, NULL),
			 SL_MASK_IN_PLACE);
	assert_memory_equal(blk, o, len);
	sl_buf_fini(&out);
	free(blk);
	free(o);
	free(t);
}

/* A run that may still be a match but outgrows the hold is starred as it
 * leaves (fail closed); the hold never exceeds SL_MASK_HOLD_MAX. */
static void
test_stream_hold_bound(void **state)
{
	size_t len = 40000, ol;
	char *t = malloc(len + 1), *o;
	struct collect c = {malloc(16), 0, 16, -1};
	struct sl_mask_stream *ms;

	memcpy(t, "x eyJ", 5);
	memset(t + 5, 'a', len - 10);
	memcpy(t + len - 5, " end.", 5);
	t[len] = '\0';
	assert_int_equal(sl_mask_stream_new(plan, scr, collect, &c, &ms), 0);
	for (size_t off = 0; off < len; off += 1000) {
		assert_int_equal(sl_mask_stream_feed(ms, (const uint8_t *)t + off, 1000), 0);
		assert_true(sl_mask_stream_held(ms) <= SL_MASK_HOLD_MAX);
	}
	assert_int_equal(sl_mask_stream_end(ms), 0);
	sl_mask_stream_free(ms);
	assert_int_equal(c.n, len);
	assert_memory_equal(c.p, "x ***", 5);
	assert_memory_equal(c.p + len - 5, " end.", 5);
	free(c.p);
	/* the same run of digits: nothing in progress, nothing held */
	memset(t, 'x', len);
	o = stream_mask(plan, t, len, 4096, &ol, NULL);
	assert_memory_equal(o, t, len);
	free(o);
	free(t);
}

/* hash: a stable keyed token (joinable); null: SQL NULL in block mode,
 * starred in a stream. */
static void
test_hash_and_null(void **state)
{
	char err[256];
	char *dets[] = {"email", "ssn"};
	struct sl_cfg_style styles[] = {{"email", NULL, "hash"}, {"ssn", NULL, "null"}};
	struct sl_cfg_policy_mask pm = {0};
	struct sl_mask_plan *hp, *hp2;
	struct sl_buf out;
	char v1[] = "mail a@b.co, c@d.io.", v2[] = "mail a@b.co, c@d.io.", v3[] = "ssn 123-45-6789";
	char *o;
	size_t ol;

	pm.detectors = dets;
	pm.detectors_count = 2;
	pm.styles = styles;
	pm.styles_count = 2;
	assert_int_equal(sl_mask_plan_new(db, &pm, (const uint8_t *)"k1", 2, &hp, err, sizeof(err)),
			 0);
	assert_int_equal(
		sl_mask_plan_new(db, &pm, (const uint8_t *)"k2", 2, &hp2, err, sizeof(err)), 0);
	sl_buf_init(&out, 0);
	assert_int_equal(sl_mask_value(hp, scr, (uint8_t *)v1, strlen(v1), &out, NULL),
			 SL_MASK_REPLACED);
	assert_int_equal(out.len, 5 + 18 + 2 + 18 + 1);
	assert_memory_equal(out.data, "mail h:", 7);
	assert_memory_equal(out.data + 23, ", h:", 4);
	assert_null(memmem(out.data, out.len, "a@b", 3));
	/* the stream gives the same bytes */
	o = stream_mask(hp, v2, strlen(v2), 1, &ol, NULL);
	assert_int_equal(ol, out.len);
	assert_memory_equal(o, out.data, ol);
	free(o);
	/* same key, same value: same token; another key: another token */
	{
		struct sl_buf o2;
		char v4[] = "mail a@b.co, c@d.io.";

		sl_buf_init(&o2, 0);
		assert_int_equal(sl_mask_value(hp2, scr, (uint8_t *)v4, strlen(v4), &o2, NULL),
				 SL_MASK_REPLACED);
		assert_int_equal(o2.len, out.len);
		assert_memory_not_equal(o2.data, out.data, out.len);
		sl_buf_fini(&o2);
	}
	assert_int_equal(sl_mask_value(hp, scr, (uint8_t *)v3, strlen(v3), &out, NULL),
			 SL_MASK_TO_NULL);
	o = stream_mask(hp, "ssn 123-45-6789", 15, 4, &ol, NULL);
	assert_string_equal(o, "ssn ***********");
	free(o);
	sl_buf_fini(&out);
	sl_mask_plan_free(hp);
	sl_mask_plan_free(hp2);
}

static void
test_stream_emit_error(void **state)
{
	struct collect c = {malloc(16), 0, 16, 0};
	struct sl_mask_stream *ms;

	assert_int_equal(sl_mask_stream_new(plan, scr, collect, &c, &ms), 0);
	assert_int_equal(sl_mask_stream_feed(ms, (const uint8_t *)"hello world\n", 12), SL_EIO);
	assert_int_equal(sl_mask_stream_feed(ms, (const uint8_t *)"more\n", 5), SL_EIO);
	assert_int_equal(sl_mask_stream_end(ms), SL_EIO);
	sl_mask_stream_free(ms);
	free(c.p);
}

static void
test_custom_patterns(void **state)
{
	char err[256];
	struct sl_cfg_pattern pats[] = {{"employee_id", "EMP-[0-9]{6}"}};
	struct sl_cfg_mask cfg = {pats, 1, NULL, NULL};
	char *dets[] = {"employee_id", "ssn"};
	struct sl_cfg_policy_mask pm = {0};
	struct sl_mask_db *cdb;
	struct sl_mask_plan *cp;
	struct sl_mask_scratch *cs;
	struct sl_mask_stats st = {0};
	struct sl_buf out;
	char v[] = "id EMP-123456, EMP-12345 and 123-45-6789";

	assert_int_equal(sl_mask_db_new(&cfg, &cdb, err, sizeof(err)), 0);
	assert_int_equal(sl_mask_detector_id(cdb, "employee_id"), SL_DET_BUILTIN);
	pm.detectors = dets;
	pm.detectors_count = 2;
	assert_int_equal(sl_mask_plan_new(cdb, &pm, (const uint8_t *)"k", 1, &cp, err, sizeof(err)),
			 0);
	assert_int_equal(sl_mask_scratch_new(cdb, &cs), 0);
	sl_buf_init(&out, 0);
	assert_int_equal(sl_mask_value(cp, cs, (uint8_t *)v, strlen(v), &out, &st),
			 SL_MASK_IN_PLACE);
	assert_string_equal(v, "id **********, EMP-12345 and ***-**-6789");
	assert_int_equal(st.hits[SL_DET_BUILTIN], 1);
	{
		struct sl_mask_scratch *keep = scr;
		size_t ol;
		char *o;

		scr = cs;
		o = stream_mask(cp, "id EMP-123456, EMP-12345 and 123-45-6789", 40, 1, &ol, NULL);
		scr = keep;
		assert_string_equal(o, v);
		free(o);
	}
	sl_buf_fini(&out);
	sl_mask_scratch_free(cs);
	sl_mask_plan_free(cp);
	sl_mask_db_free(cdb);
	/* refused: unbounded, empty-matching, duplicate names, bad regex */
	pats[0].regex = "EMP-[0-9]+";
	assert_int_equal(sl_mask_db_new(&cfg, &cdb, err, sizeof(err)), SL_EINVAL);
	assert_non_null(strstr(err, "bounded"));
	pats[0].regex = "x*";
	assert_int_equal(sl_mask_db_new(&cfg, &cdb, err, sizeof(err)), SL_EINVAL);
	pats[0].regex = "EMP-(";
	assert_int_equal(sl_mask_db_new(&cfg, &cdb, err, sizeof(err)), SL_EINVAL);
	pats[0].name = "ssn";
	pats[0].regex = "EMP";
	assert_int_equal(sl_mask_db_new(&cfg, &cdb, err, sizeof(err)), SL_EINVAL);
	assert_non_null(strstr(err, "duplicate"));
}

static void
test_plan_errors(void **state)
{
	char err[256];
	char *bad[] = {"ssn", "nope"};
	struct sl_cfg_style st[] = {{"ssn", NULL, "sparkly"}};
	struct sl_cfg_policy_mask pm = {0};
	struct sl_mask_plan *p;

	pm.detectors = bad;
	pm.detectors_count = 2;
	assert_int_equal(sl_mask_plan_new(db, &pm, (const uint8_t *)"k", 1, &p, err, sizeof(err)),
			 SL_EINVAL);
	assert_non_null(strstr(err, "nope"));
	pm.detectors_count = 1;
	pm.styles = st;
	pm.styles_count = 1;
	assert_int_equal(sl_mask_plan_new(db, &pm, (const uint8_t *)"k", 1, &p, err, sizeof(err)),
			 SL_EINVAL);
	assert_null(sl_mask_detector_name(db, 99));
	assert_string_equal(sl_mask_detector_name(db, SL_DET_CARD), "credit_card");
}

/* Non-text columns never become something their type cannot parse. */
static void
test_typed_columns(void **state)
{
	struct sl_buf out;
	char t_int[] = "12345", t_uuid[] = "550e8400-e29b-41d4-a716-446655440000";
	char t_text[] = "123-45-6789";
	uint8_t b_int[4] = {0, 0, 0x30, 0x39}, b_num[10] = {0, 1, 0, 0, 0, 0, 0, 0, 0x30, 0x39};

	assert_true(sl_mask_pg_textlike(25));
	assert_true(sl_mask_pg_textlike(1043));
	assert_false(sl_mask_pg_textlike(23));
	sl_buf_init(&out, 0);
	assert_int_equal(
		sl_mask_column_typed(plan, SL_MASK_PARTIAL, 23, 0, (uint8_t *)t_int, 5, &out),
		SL_MASK_REPLACED);
	assert_int_equal(out.len, 1);
	assert_memory_equal(out.data, "0", 1);
	out.len = 0;
	assert_int_equal(
		sl_mask_column_typed(plan, SL_MASK_HASH, 2950, 0, (uint8_t *)t_uuid, 36, &out),
		SL_MASK_REPLACED);
	assert_memory_equal(out.data, "00000000-0000-0000-0000-000000000000", 36);
	assert_int_equal(sl_mask_column_typed(plan, SL_MASK_FULL, 23, 1, b_int, 4, &out),
			 SL_MASK_IN_PLACE);
	assert_memory_equal(b_int, "\0\0\0\0", 4);
	out.len = 0;
	assert_int_equal(sl_mask_column_typed(plan, SL_MASK_FULL, 1700, 1, b_num, 10, &out),
			 SL_MASK_REPLACED);
	assert_int_equal(out.len, 8);
	assert_int_equal(sl_mask_column_typed(plan, SL_MASK_NULL, 23, 0, (uint8_t *)t_int, 5, &out),
			 SL_MASK_TO_NULL);
	assert_int_equal(sl_mask_column_typed(plan, SL_MASK_FULL, 600 /* point */, 0,
					      (uint8_t *)t_int, 5, &out),
			 SL_MASK_TO_NULL);
	assert_int_equal(sl_mask_column_typed(plan, SL_MASK_FULL, 23, 1, b_int, 3, &out),
			 SL_MASK_TO_NULL); /* wrong binary length: never guessed */
	assert_int_equal(
		sl_mask_column_typed(plan, SL_MASK_PARTIAL, 25, 0, (uint8_t *)t_text, 11, &out),
		SL_MASK_IN_PLACE);
	assert_string_equal(t_text, "***-**-6789");
	sl_buf_fini(&out);
}

static void
test_stream_stats(void **state)
{
	struct sl_mask_stats st;
	size_t ol;
	char *o = stream_mask(plan, "a@b.co, c@d.io; 123-45-6789 and 4111111111111111\n", 49, 5,
			      &ol, &st);
	char v[] = "mail first+tag@sub.domain.example.org now";
	struct sl_mask_stats bst = {0};

	/* an email with subdomains is one hit, block and stream */
	assert_int_equal(mask(v, strlen(v), &bst), SL_MASK_IN_PLACE);
	assert_string_equal(v, "mail f********@sub.domain.example.org now");
	assert_int_equal(bst.hits[SL_DET_EMAIL], 1);
	free(stream_mask(plan, "mail first+tag@sub.domain.example.org now", 41, 1, &ol, &bst));
	assert_int_equal(bst.hits[SL_DET_EMAIL], 1);
	assert_int_equal(st.hits[SL_DET_EMAIL], 2);
	assert_int_equal(st.hits[SL_DET_SSN], 1);
	assert_int_equal(st.hits[SL_DET_CARD], 1);
	assert_int_equal(st.hits[SL_DET_IBAN], 0);
	assert_null(strstr(o, "4111111111111111"));
	free(o);
}

/* A generic secret value starting inside a Bearer value (narrower class)
 * extends the masking in a stream exactly as in block mode (fuzz find). */
static void
test_stream_nested_secrets(void **state)
{
	static const char v[] = "Authorization: Bearer abcdef0123_token=ghp_yn0.d\xff\xffxyz end";
	char b[sizeof(v)];
	struct sl_buf out;

	memcpy(b, v, sizeof(v));
	sl_buf_init(&out, 0);
	assert_int_equal(sl_mask_value(plan, scr, (uint8_t *)b, sizeof(v) - 1, &out, NULL),
			 SL_MASK_IN_PLACE);
	sl_buf_fini(&out);
	assert_memory_equal(b, "Authorization: Bearer ****", 26);
	assert_string_equal(b + sizeof(v) - 5, " end");
	for (size_t chunk = 1; chunk < 9; chunk++) {
		size_t ol;
		char *o = stream_mask(plan, v, sizeof(v) - 1, chunk, &ol, NULL);

		assert_int_equal(ol, sizeof(v) - 1);
		assert_memory_equal(o, b, ol);
		free(o);
	}
}

/* Hit counts go into audit records: a value and the same bytes streamed in
 * any chunking must count each hit once. hyperscan's '$' also matches just
 * before a final "\n", so a token followed by the "\n" that ends a scan
 * (a regex window, a value, a stream) was reported twice. */
static void
test_eol_stats_parity(void **state)
{
	static const struct {
		unsigned det;
		const char *tok;
	} toks[] = {
		{SL_DET_PHONE, "+442012345678"},
		{SL_DET_AWS, "AKIAIOSFODNN7EXAMPLE"},
		{SL_DET_EMAIL, "jane.doe@example.com"},
		{SL_DET_JWT, "eyJhbGciOi.eyJzdWIiOi.abcdefghijkl"},
	};
	static const char *const pre[] = {"call ", "", "x\n"};
	static const char *const post[] = {"\n", "\r\n", "\n\n", "\n \n"};
	static const size_t fill[] = {0, 1, 40, 300, 1500};
	static const size_t chunks[] = {1, 7, 64, 4096};
	char v[2048], b[2048];

	for (size_t t = 0; t < sizeof(toks) / sizeof(toks[0]); t++)
		for (size_t a = 0; a < sizeof(pre) / sizeof(pre[0]); a++)
			for (size_t z = 0; z < sizeof(post) / sizeof(post[0]); z++)
				for (size_t f = 0; f < sizeof(fill) / sizeof(fill[0]); f++) {
					struct sl_mask_stats bst = {0};
					int n = snprintf(v, sizeof(v), "%s%s%s", pre[a],
							 toks[t].tok, post[z]);

					for (size_t i = 0; i < fill[f]; i++)
						v[n++] = "lorem ipsum 2026-12-06 12:00:00 "[i % 32];
					memcpy(b, v, (size_t)n);
					assert_int_equal(mask(b, (size_t)n, &bst),
							 SL_MASK_IN_PLACE);
					assert_int_equal(bst.hits[toks[t].det], 1);
					for (size_t c = 0; c < sizeof(chunks) / sizeof(chunks[0]);
					     c++) {
						struct sl_mask_stats sst = {0};
						size_t ol;
						char *o = stream_mask(plan, v, (size_t)n, chunks[c],
								      &ol, &sst);

						assert_memory_equal(o, b, (size_t)n);
						assert_memory_equal(&sst, &bst, sizeof(sst));
						free(o);
					}
				}
}

/* Every value length up to 200 with a sample in its last bytes (0-3 bytes
 * after it): the one pass copies a value's last block with overlapping
 * loads sized by its length, and short values are decided without
 * hyperscan when they can be. Masked, filler untouched, block == stream. */
static void
test_short_values(void **state)
{
	static const char *samples[] = {
		"123-45-6789",
		"4111111111111111",
		"4111 1111 1111 1111",
		"GB82 WEST 1234 5698 7654 32",
		"GB82WEST12345698765432",
		"+442012345678",
		"ada@example.com",
		"a@b.co",
		"x.y@mail.example.org",
		"AKIAIOSFODNN7EXAMPLE",
		"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N",
		"password=hunter22",
		"Authorization: Bearer abcdefgh12345678",
	};
	static const char *const tails[] = {"", " ", ",x", " +1", "\n"};
	static const char filler[] = "2024-05-12 13:45:22.123+00 Ada paid 12.50, id=12 A-b y ";
	char v[256], b[256];
	int checked = 0;

	for (size_t si = 0; si < sizeof(samples) / sizeof(samples[0]); si++) {
		size_t sl = strlen(samples[si]);

		for (size_t ti = 0; ti < sizeof(tails) / sizeof(tails[0]); ti++) {
			size_t tl = strlen(tails[ti]);

			for (size_t len = sl + tl; len <= 200; len++) {
				size_t off = len - sl - tl, ol;
				char *so;

				for (size_t i = 0; i < off; i++)
					v[i] = filler[i % (sizeof(filler) - 1)];
				if (off > 0)
					v[off - 1] = ' ';
				memcpy(v + off, samples[si], sl);
				memcpy(v + off + sl, tails[ti], tl);
				/* leaves digits where the pass keeps a value's last
				 * block: bytes past the end must not be read as them */
				memset(b, '9', 128);
				assert_int_equal(mask(b, 128, NULL), SL_MASK_UNCHANGED);
				memcpy(b, v, len);
				if (mask(b, len, NULL) != SL_MASK_IN_PLACE ||
				    memchr(b + off, '*', sl) == NULL)
					fail_msg("not masked: sample %zu tail %zu len %zu", si, ti,
						 len);
				if (memcmp(b, v, off) != 0 ||
				    memcmp(b + off + sl, v + off + sl, tl) != 0)
					fail_msg("filler changed: sample %zu tail %zu len %zu", si,
						 ti, len);
				so = stream_mask(plan, v, len, 7, &ol, NULL);
				assert_int_equal(ol, len);
				if (memcmp(so, b, len) != 0)
					fail_msg("block != stream: sample %zu tail %zu len %zu", si,
						 ti, len);
				free(so);
				checked++;
			}
		}
	}
	assert_true(checked > 10000);
}

/* Values whose only anchors are '@' and '+' get their email and phone
 * reports without hyperscan (sl_mask__scan_anchors()); streams always use
 * hyperscan, so they are the oracle: same output, same hit counts, on
 * edge cases and on random strings made of the patterns' bytes. */
static void
test_anchor_shortcut(void **state)
{
	static const char *const edge[] = {
		"a@b.co",
		"a@b.c",
		"a@b..co",
		"a@.b.co",
		"a@b.co.",
		"a@b.co-",
		"a@b.co-uk",
		"a@b.c0m",
		"a@b.co.uk x",
		"a@b-c.d-e.fg",
		"a@b.co@c.de",
		"a@@b.co",
		"a@b.co1",
		"x@y.zz\n",
		"x@y.zz\n\n",
		"+1234567",
		"+123456",
		"+0123456789",
		"+123456789012345",
		"+1234567890123456",
		"++1234567",
		"+1234567+7654321",
		"+1234567a",
		"a+1234567",
		"tel:+442012345678.",
		"x+123456789@e.com",
		"q@"
		"abcdefghijklmnopqrstuvwx.abcdefghijklmnopqrstuvwx",
		"q@a.abcdefghijklmnopqrstuvwxy",
		"q@a.abcdefghijklmnopqrstuvwx",
		"+12345678\n",
	};
	static const char alpha[] = "ab.@+-1234567890 \nXyz";
	char v[160], b[160];
	uint32_t seed = 12345;

	for (size_t k = 0; k < sizeof(edge) / sizeof(edge[0]) + 40000; k++) {
		struct sl_mask_stats bst = {0}, sst = {0};
		size_t len, ol;
		char *so;

		if (k < sizeof(edge) / sizeof(edge[0])) {
			len = strlen(edge[k]);
			memcpy(v, edge[k], len);
		} else {
			seed = seed * 1103515245u + 12345u;
			len = 6 + (seed >> 16) % 100;
			for (size_t i = 0; i < len; i++) {
				seed = seed * 1103515245u + 12345u;
				v[i] = alpha[(seed >> 16) % (sizeof(alpha) - 1)];
			}
		}
		memcpy(b, v, len);
		mask(b, len, &bst);
		so = stream_mask(plan, v, len, len, &ol, &sst);
		if (memcmp(so, b, len) != 0 || memcmp(&sst, &bst, sizeof(sst)) != 0)
			fail_msg("block != stream: case %zu \"%.*s\"", k, (int)len, v);
		free(so);
	}
}

/* IBANs at the length limits (ISO 13616: at most 34 characters), compact
 * and printed: check digits are computed once per candidate, as each
 * window grows. A valid 35-character checksum or a lowercase letter is no
 * IBAN. */
static void
test_iban_lengths(void **state)
{
	static const struct {
		const char *v;
		int masked;
	} cases[] = {
		{"GB68WEST12345698765432ABCDEFGHIJKL", 1},
		{"GB68 WEST 1234 5698 7654 32AB CDEF GHIJ KL", 1},
		{"GB59WEST12345698765432ABCDEFGHIJKLM", 0},
		{"GB59 WEST 1234 5698 7654 32AB CDEF GHIJ KLM", 0},
		{"GB68WEST12345698765432aBCDEFGHIJKL", 0},
		{"GB68 WEST 1234 5698 7654 32aB CDEF GHIJ KL", 0},
		{"GB82 WEST 1234 5698 7654 32", 1},
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char v[128], b[128], *so;
		struct sl_mask_stats st = {0};
		size_t n = (size_t)snprintf(v, sizeof(v), "iban %s end", cases[i].v), ol;

		memcpy(b, v, n + 1);
		mask(b, n, &st);
		if ((strcmp(b, v) != 0) != cases[i].masked ||
		    st.hits[SL_DET_IBAN] != (uint32_t)cases[i].masked)
			fail_msg("case %zu: %s", i, b);
		so = stream_mask(plan, v, n, 7, &ol, NULL);
		assert_memory_equal(so, b, n);
		free(so);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_corpus_positives),
		cmocka_unit_test(test_corpus_near_misses),
		cmocka_unit_test(test_one_pass_edges),
		cmocka_unit_test(test_short_values),
		cmocka_unit_test(test_anchor_shortcut),
		cmocka_unit_test(test_iban_lengths),
		cmocka_unit_test(test_styles),
		cmocka_unit_test(test_overlaps_and_limits),
		cmocka_unit_test(test_stream_latency),
		cmocka_unit_test(test_stream_pem),
		cmocka_unit_test(test_stream_hold_bound),
		cmocka_unit_test(test_hash_and_null),
		cmocka_unit_test(test_stream_emit_error),
		cmocka_unit_test(test_custom_patterns),
		cmocka_unit_test(test_plan_errors),
		cmocka_unit_test(test_typed_columns),
		cmocka_unit_test(test_stream_stats),
		cmocka_unit_test(test_stream_nested_secrets),
		cmocka_unit_test(test_eol_stats_parity),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
