/*
 * Differential test of the masking engine against PCRE2.
 *
 * Each built-in detector is written down a second time as a PCRE2 pattern
 * with lookarounds for its boundaries, plus the same checks in plain C
 * (Luhn, mod-97, SSN ranges): that is the specification. A generated text
 * full of true positives, near misses and digit/separator noise is masked
 * with every detector in full style, as one value and as a stream cut in
 * 1..64-byte chunks at 64 different buffer alignments and chunk phases.
 * Every match the specification finds must be starred in every output
 * (no miss), and every stream output must equal the block output (stream
 * and block decide alike, whatever the chunk boundaries).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "sluice/config.h"
#include "sluice/mask.h"

#define TEXT_MAX 12000

static char *dets[] = {"ssn",	      "credit_card",	   "email", "aws_access_key", "jwt",
		       "private_key", "secret_assignment", "iban",  "phone"};

struct env {
	struct sl_mask_db *db;
	struct sl_mask_plan *full, *partial;
	struct sl_mask_scratch *scr;
	char *text;
	size_t len;
	uint8_t *want_full, *want_partial; /* block-mode outputs */
};

/* ------------------------------------------------------------ generator */

static uint64_t rs = 0x9e3779b97f4a7c15ull;

static unsigned
rnd(unsigned n)
{
	rs ^= rs << 13;
	rs ^= rs >> 7;
	rs ^= rs << 17;
	return (unsigned)(rs % n);
}

static size_t
put(char *o, const char *s)
{
	size_t n = strlen(s);

	memcpy(o, s, n);
	return n;
}

static int
luhn_digit(const char *d, int n)
{
	int sum = 0;

	for (int i = n - 1, dbl = 1; i >= 0; i--, dbl = !dbl) {
		int v = d[i] - '0';

		if (dbl) {
			v *= 2;
			if (v > 9)
				v -= 9;
		}
		sum += v;
	}
	return (10 - sum % 10) % 10;
}

/* A digit token: groups of random lengths joined by one separator kind,
 * sometimes a Luhn-valid card. */
static size_t
noise_number(char *o)
{
	char d[24];
	int nd = 13 + (int)rnd(7), n = 0;
	const char *sep = " -"[rnd(2)] == ' ' ? " " : "-";
	size_t w = 0;

	for (int i = 0; i < nd - 1; i++)
		d[i] = (char)('0' + rnd(10));
	d[nd - 1] = rnd(2) ? (char)('0' + luhn_digit(d, nd - 1)) : (char)('0' + rnd(10));
	if (rnd(3) == 0) {
		memcpy(o, d, (size_t)nd);
		return (size_t)nd;
	}
	while (n < nd) {
		int g = n == 0 ? 4 : 1 + (int)rnd(6);

		if (g > nd - n)
			g = nd - n;
		if (n > 0)
			o[w++] = rnd(12) ? sep[0] : (sep[0] == ' ' ? '-' : ' ');
		memcpy(o + w, d + n, (size_t)g);
		w += (size_t)g;
		n += g;
	}
	return w;
}

static size_t
noise(char *o)
{
	static const char alpha[] = "0123456789      ---..@@AZaz+_=:'\"\n\t,;/x";
	size_t n = 1 + rnd(12);

	for (size_t i = 0; i < n; i++)
		o[i] = alpha[rnd(sizeof(alpha) - 1)];
	return n;
}

static size_t
fixture_line(char *o, const char *file, int want_tab)
{
	char path[4096], line[1024];
	FILE *f;
	unsigned pick, k = 0;
	size_t w = 0;

	snprintf(path, sizeof(path), "%s/pii/%s", SL_FIXTURES, file);
	f = fopen(path, "r");
	assert_non_null(f);
	pick = rnd(200);
	for (;;) {
		if (fgets(line, sizeof(line), f) == NULL) {
			rewind(f);
			continue;
		}
		if (line[0] == '#' || line[0] == '\n')
			continue;
		if (k++ == pick)
			break;
	}
	fclose(f);
	{
		char *v = want_tab ? strchr(line, '\t') : line;

		v = v ? v + (want_tab ? 1 : 0) : line;
		for (; *v && *v != '\n'; v++) {
			if (v[0] == '\\' && v[1] == 'n') {
				o[w++] = '\n';
				v++;
			} else {
				o[w++] = *v;
			}
		}
	}
	return w;
}

static void
gen_text(struct env *env)
{
	static const char *glue[] = {" ", "\n", "\t", ", ", "-", "", "x", "=", ": ", "'"};
	char *t = malloc(TEXT_MAX + 2048);
	size_t n = 0;

	while (n < TEXT_MAX) {
		switch (rnd(8)) {
		case 0:
		case 1:
			n += fixture_line(t + n, "positives.txt", 1);
			break;
		case 2:
			n += fixture_line(t + n, "near_misses.txt", 0);
			break;
		case 3:
		case 4:
			n += noise_number(t + n);
			break;
		case 5:
			n += noise(t + n);
			break;
		case 6:
			n += put(t + n, (const char *[]){"password=", "token: ", "api_key = '",
							 "Authorization: Bearer ", "user@", "+44",
							 "eyJ", "GB82 "}[rnd(8)]);
			break;
		default:
			n += put(t + n, (const char *[]){"Ada Lovelace", "order", "2024-01-15",
							 "shipped", "42.50", "AKIA"}[rnd(6)]);
		}
		n += put(t + n, glue[rnd(10)]);
	}
	t[n] = '\0';
	env->text = t;
	env->len = n;
}

/* ------------------------------------------------------------ the spec */

static int
luhn_ok(const char *s, size_t n)
{
	int sum = 0, dbl = 0, digits = 0;

	for (size_t i = n; i-- > 0;) {
		int v;

		if (s[i] < '0' || s[i] > '9')
			continue;
		v = s[i] - '0';
		if (dbl) {
			v *= 2;
			if (v > 9)
				v -= 9;
		}
		sum += v;
		dbl = !dbl;
		digits++;
	}
	return digits >= 13 && digits <= 19 && sum % 10 == 0;
}

static int
iban_ok(const char *s, size_t n)
{
	char b[64];
	size_t m = 0;
	unsigned rem = 0;

	for (size_t i = 0; i < n && m < sizeof(b); i++)
		if (s[i] != ' ')
			b[m++] = s[i];
	if (m < 15 || m > 34)
		return 0;
	for (size_t k = 0; k < m; k++) {
		char c = b[(k + 4) % m];

		rem = c >= '0' && c <= '9' ? (rem * 10 + (unsigned)(c - '0')) % 97
					   : (rem * 100 + (unsigned)(c - 'A' + 10)) % 97;
	}
	return rem == 1;
}

static int
ssn_ok(const char *s, size_t n)
{
	int area = (s[0] - '0') * 100 + (s[1] - '0') * 10 + (s[2] - '0');

	return n == 11 && area != 0 && area != 666 && area < 900 && memcmp(s + 4, "00", 2) != 0 &&
	       memcmp(s + 7, "0000", 4) != 0;
}

enum check { CK_NONE, CK_LUHN, CK_IBAN, CK_SSN };

struct spec {
	const char *det;
	const char *re;
	enum check check;
	int dfa; /* every (start, end) pair: windows of numbers */
};

/* Group 1 (or the whole match for DFA patterns) must come out starred. */
static const struct spec specs[] = {
	{"ssn", "(?<![A-Za-z0-9])(?<![0-9]-)[0-9]{3}-[0-9]{2}-[0-9]{4}(?![A-Za-z0-9])(?!-[0-9])",
	 CK_SSN, 1},
	{"ssn", "(?<![A-Za-z0-9])(?<![0-9] )[0-9]{3} [0-9]{2} [0-9]{4}(?![A-Za-z0-9])(?! [0-9])",
	 CK_SSN, 1},
	{"credit_card", "(?<![A-Za-z0-9])[0-9]{13,19}(?![A-Za-z0-9])", CK_LUHN, 1},
	{"credit_card", "(?<![A-Za-z0-9])[0-9]{4}(?:-[0-9]{4,6}){0,3}-[0-9]{1,6}(?![A-Za-z0-9])",
	 CK_LUHN, 1},
	{"credit_card", "(?<![A-Za-z0-9])[0-9]{4}(?: [0-9]{4,6}){0,3} [0-9]{1,6}(?![A-Za-z0-9])",
	 CK_LUHN, 1},
	{"phone", "(?<![A-Za-z0-9])\\+[1-9][0-9]{6,14}(?![A-Za-z0-9])", CK_NONE, 1},
	{"iban", "(?<![A-Za-z0-9])[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}(?![A-Za-z0-9])", CK_IBAN, 1},
	{"iban",
	 "(?<![A-Za-z0-9])[A-Z]{2}[0-9]{2}(?: [A-Z0-9]{4}){2,7} [A-Z0-9]{1,4}(?![A-Za-z0-9])",
	 CK_IBAN, 1},
	{"aws_access_key",
	 "(?<![A-Za-z0-9])(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ABIA|ACCA|AIPA)[A-Z0-9]{16}"
	 "(?![A-Za-z0-9])",
	 CK_NONE, 1},
	{"email",
	 "[A-Za-z0-9_%+-][A-Za-z0-9._%+'-]{0,63}@[A-Za-z0-9-]+(?:\\.[A-Za-z0-9-]+)*"
	 "\\.[A-Za-z]{2,24}(?![A-Za-z0-9])",
	 CK_NONE, 1},
	{"jwt", "eyJ[A-Za-z0-9_-]{4,}\\.eyJ[A-Za-z0-9_-]{4,}\\.[A-Za-z0-9_-]{8,}(?![A-Za-z0-9_-])",
	 CK_NONE, 1},
	{"private_key",
	 "(-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----[\\s\\S]*?"
	 "-----END [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----)",
	 CK_NONE, 0},
	{"secret_assignment",
	 "(?i:pass(?:word|wd|phrase)?|pwd|secret(?:[_-]?key)?|api[_-]?key|access[_-]?key|private[_-"
	 "]?key|"
	 "token|credentials?)[\"']?[ \\t]*[:=][ \\t]*[\"']?([^\\s\"',;&]{3,})",
	 CK_NONE, 0},
	{"secret_assignment",
	 "(?i:authorization)[\"']?[ \\t]*[:=][ \\t]*[\"']?(?i:bearer|basic|token|digest)[ \\t]+"
	 "([A-Za-z0-9._~+/=-]{8,})",
	 CK_NONE, 0},
};

static int
starred(const uint8_t *o, size_t s, size_t e)
{
	for (size_t i = s; i < e; i++)
		if (o[i] != '*' && o[i] != '\n' && o[i] != '\r' && o[i] != '\t')
			return 0;
	return 1;
}

static int
check_ok(enum check c, const char *s, size_t n)
{
	switch (c) {
	case CK_LUHN:
		return luhn_ok(s, n);
	case CK_IBAN:
		return iban_ok(s, n);
	case CK_SSN:
		return ssn_ok(s, n);
	default:
		return 1;
	}
}

/* Every spec match in text must be starred in o. Returns matches checked. */
static int
spec_covered(const struct env *env, const uint8_t *o, const char *what)
{
	int total = 0;

	for (size_t k = 0; k < sizeof(specs) / sizeof(specs[0]); k++) {
		const struct spec *sp = &specs[k];
		int ecode;
		PCRE2_SIZE eoff;
		pcre2_code *re = pcre2_compile((PCRE2_SPTR)sp->re, PCRE2_ZERO_TERMINATED, 0, &ecode,
					       &eoff, NULL);
		pcre2_match_data *md;
		int ws[4096];

		assert_non_null(re);
		md = pcre2_match_data_create(64, NULL);
		for (size_t s = 0; s < env->len; s++) {
			int rc;

			if (sp->dfa) {
				rc = pcre2_dfa_match(re, (PCRE2_SPTR)env->text, env->len, s,
						     PCRE2_ANCHORED, md, NULL, ws, 4096);
			} else {
				rc = pcre2_match(re, (PCRE2_SPTR)env->text, env->len, s,
						 PCRE2_ANCHORED, md, NULL);
			}
			if (rc == 0)
				rc = 32; /* ovector full: use what fits */
			for (int m = 0; m < rc; m++) {
				PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
				size_t a = ov[2 * m], b = ov[2 * m + 1];

				if (!sp->dfa) {
					if (rc < 2)
						break;
					a = ov[2];
					b = ov[3];
				}
				if (!check_ok(sp->check, env->text + a, b - a))
					continue;
				total++;
				if (!starred(o, a, b))
					fail_msg("%s: %s match [%zu,%zu) \"%.*s\" not masked: "
						 "\"%.*s\"",
						 what, sp->det, a, b, (int)(b - a), env->text + a,
						 (int)(b - a), (const char *)o + a);
				if (!sp->dfa)
					break;
			}
		}
		pcre2_match_data_free(md);
		pcre2_code_free(re);
	}
	return total;
}

/* ------------------------------------------------------------ harness */

struct collect {
	uint8_t *p;
	size_t n, cap;
};

static int
collect(void *arg, const uint8_t *p, size_t n)
{
	struct collect *c = arg;

	if (c->n + n > c->cap)
		return -1;
	memcpy(c->p + c->n, p, n);
	c->n += n;
	return 0;
}

static int
setup(void **state)
{
	static struct env env;
	char err[256];
	struct sl_cfg_policy_mask pm = {0};
	struct sl_buf out;

	pm.detectors = dets;
	pm.detectors_count = sizeof(dets) / sizeof(dets[0]);
	assert_int_equal(sl_mask_db_new(NULL, &env.db, err, sizeof(err)), 0);
	pm.style = "full";
	assert_int_equal(
		sl_mask_plan_new(env.db, &pm, (const uint8_t *)"k", 1, &env.full, err, sizeof(err)),
		0);
	pm.style = "partial";
	assert_int_equal(sl_mask_plan_new(env.db, &pm, (const uint8_t *)"k", 1, &env.partial, err,
					  sizeof(err)),
			 0);
	assert_int_equal(sl_mask_scratch_new(env.db, &env.scr), 0);
	gen_text(&env);
	sl_buf_init(&out, 0);
	env.want_full = malloc(env.len);
	env.want_partial = malloc(env.len);
	memcpy(env.want_full, env.text, env.len);
	memcpy(env.want_partial, env.text, env.len);
	assert_int_equal(sl_mask_value(env.full, env.scr, env.want_full, env.len, &out, NULL),
			 SL_MASK_IN_PLACE);
	assert_int_equal(sl_mask_value(env.partial, env.scr, env.want_partial, env.len, &out, NULL),
			 SL_MASK_IN_PLACE);
	sl_buf_fini(&out);
	*state = &env;
	return 0;
}

static int
teardown(void **state)
{
	struct env *env = *state;

	free(env->text);
	free(env->want_full);
	free(env->want_partial);
	sl_mask_scratch_free(env->scr);
	sl_mask_plan_free(env->full);
	sl_mask_plan_free(env->partial);
	sl_mask_db_free(env->db);
	return 0;
}

/* The block output covers every match of the specification. */
static void
test_block_covers_spec(void **state)
{
	struct env *env = *state;
	int n = spec_covered(env, env->want_full, "block");

	/* the text is built to hold hundreds of true positives */
	assert_true(n > 300);
}

/* Masks text as a stream: the first chunk has phase bytes, then chunk-byte
 * chunks, read from a copy placed at offset align of its buffer. */
static void
stream_once(struct env *env, const struct sl_mask_plan *p, size_t chunk, size_t align, size_t phase,
	    struct collect *c)
{
	uint8_t *mem = malloc(env->len + 64);
	uint8_t *src = mem + align;
	struct sl_mask_stream *ms;
	size_t off = 0;

	memcpy(src, env->text, env->len);
	c->n = 0;
	assert_int_equal(sl_mask_stream_new(p, env->scr, collect, c, &ms), 0);
	if (phase > 0) {
		assert_int_equal(sl_mask_stream_feed(ms, src, phase), 0);
		off = phase;
	}
	while (off < env->len) {
		size_t k = env->len - off < chunk ? env->len - off : chunk;

		assert_int_equal(sl_mask_stream_feed(ms, src + off, k), 0);
		assert_true(sl_mask_stream_held(ms) <= SL_MASK_HOLD_MAX);
		off += k;
	}
	assert_int_equal(sl_mask_stream_end(ms), 0);
	sl_mask_stream_free(ms);
	free(mem);
}

/* Every chunk size 1..64 at 64 alignments/phases: the stream output equals
 * the block output (full and partial styles), so it covers the spec too. */
static void
test_stream_every_boundary(void **state)
{
	struct env *env = *state;
	struct collect c = {malloc(env->len), 0, env->len};
	int runs = 0;

	for (size_t chunk = 1; chunk <= 64; chunk++) {
		for (size_t align = 0; align < 64; align++) {
			size_t phase = (align * 7 + chunk) % 64;

			stream_once(env, env->full, chunk, align, phase, &c);
			if (c.n != env->len || memcmp(c.p, env->want_full, env->len) != 0) {
				size_t i = 0;

				while (i < c.n && i < env->len && c.p[i] == env->want_full[i])
					i++;
				fail_msg("full: chunk %zu align %zu: stream differs from block at "
					 "%zu: \"%.40s\" vs \"%.40s\"",
					 chunk, align, i, (const char *)c.p + i,
					 (const char *)env->want_full + i);
			}
			if (chunk % 8 == 1 || align % 16 == 3) {
				stream_once(env, env->partial, chunk, align, phase, &c);
				if (c.n != env->len ||
				    memcmp(c.p, env->want_partial, env->len) != 0)
					fail_msg("partial: chunk %zu align %zu: stream differs",
						 chunk, align);
			}
			runs++;
		}
	}
	assert_int_equal(runs, 64 * 64);
	/* and the stream output (same bytes) covers the specification */
	assert_true(spec_covered(env, c.p, "stream") > 300);
	free(c.p);
}

/* Short values (result columns) go through the prefilter before any scan:
 * cut the text into values of 1..300 bytes and check that each masks in
 * block mode exactly as a stream of it does (streams never prefilter), in
 * full and partial style: a value the prefilter wrongly skipped would
 * differ. */
static void
test_short_values_prefilter(void **state)
{
	struct env *env = *state;
	struct collect c = {malloc(env->len), 0, env->len};
	uint8_t *v = malloc(env->len);
	struct sl_buf out;
	size_t off = 0, values = 0;

	sl_buf_init(&out, 0);
	while (off < env->len) {
		/* mostly short (one anchor each), some long enough for the regex
		 * windows (256+ bytes) */
		size_t n = 1 + rnd(rnd(4) ? 24 : 2000);

		if (n > env->len - off)
			n = env->len - off;
		for (int style = 0; style < 2; style++) {
			const struct sl_mask_plan *p = style ? env->partial : env->full;
			struct sl_mask_stream *ms;
			int r;

			memcpy(v, env->text + off, n);
			out.len = 0;
			r = sl_mask_value(p, env->scr, v, n, &out, NULL);
			assert_true(r == SL_MASK_UNCHANGED || r == SL_MASK_IN_PLACE);
			c.n = 0;
			assert_int_equal(sl_mask_stream_new(p, env->scr, collect, &c, &ms), 0);
			assert_int_equal(
				sl_mask_stream_feed(ms, (const uint8_t *)env->text + off, n), 0);
			assert_int_equal(sl_mask_stream_end(ms), 0);
			sl_mask_stream_free(ms);
			if (c.n != n || memcmp(c.p, v, n) != 0)
				fail_msg(
					"value [%zu,+%zu) \"%.*s\": block \"%.*s\" stream \"%.*s\"",
					off, n, (int)n, env->text + off, (int)n, (const char *)v,
					(int)c.n, (const char *)c.p);
		}
		off += n;
		values++;
	}
	assert_true(values > 50);
	sl_buf_fini(&out);
	free(v);
	free(c.p);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_block_covers_spec),
		cmocka_unit_test(test_stream_every_boundary),
		cmocka_unit_test(test_short_values_prefilter),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
