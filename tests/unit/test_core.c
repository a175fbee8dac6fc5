/* Unit tests: the string map (against a plain model) and SipHash. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "sluice/core.h"

static void
test_siphash_known_answer(void **state)
{
	uint8_t key[16], msg[15];

	(void)state;
	for (int i = 0; i < 16; i++)
		key[i] = (uint8_t)i;
	for (int i = 0; i < 15; i++)
		msg[i] = (uint8_t)i;
	/* the example in the SipHash paper (Aumasson, Bernstein), appendix A */
	assert_true(sl_siphash(msg, sizeof(msg), key) == 0xa129ca6149be45e5ull);
	/* and the first entries of the reference vectors (empty, one byte) */
	assert_true(sl_siphash(msg, 0, key) == 0x726fdb47dd0e0e31ull);
	assert_true(sl_siphash(msg, 1, key) == 0x74f839c593dc67fdull);
	assert_true(sl_siphash(msg, 8, key) == 0x93f5f5799a932462ull);
}

#define NKEYS 300

/* Random puts, replaces, deletes and gets over a small key space (so runs
 * collide, wrap and shift), checked against an array after every step. */
static void
test_strmap_matches_model(void **state)
{
	static char names[NKEYS][16];
	void *model[NKEYS];
	struct sl_strmap m;
	unsigned seed = 12345;

	(void)state;
	memset(&m, 0, sizeof(m));
	memset(model, 0, sizeof(model));
	assert_null(sl_strmap_get(&m, "absent"));
	assert_null(sl_strmap_del(&m, "absent"));
	for (int i = 0; i < NKEYS; i++)
		snprintf(names[i], sizeof(names[i]), i % 7 ? "s%d" : "%d", i);
	names[NKEYS - 1][0] = '\0'; /* the unnamed statement/portal */
	for (int step = 0; step < 200000; step++) {
		int k, op;
		size_t live = 0, seen = 0;

		seed = seed * 1103515245u + 12345u;
		k = (int)((seed >> 8) % NKEYS);
		op = (int)((seed >> 20) % 3);
		if (op == 0) {
			void *v = (void *)(uintptr_t)(step + 1);

			void *was = v;

			assert_int_equal(sl_strmap_put(&m, names[k], v, &was), 0);
			assert_ptr_equal(was, model[k]);
			model[k] = v;
		} else if (op == 1) {
			assert_ptr_equal(sl_strmap_del(&m, names[k]), model[k]);
			model[k] = NULL;
		} else {
			assert_ptr_equal(sl_strmap_get(&m, names[k]), model[k]);
		}
		if (step % 997 != 0)
			continue;
		for (int i = 0; i < NKEYS; i++) {
			assert_ptr_equal(sl_strmap_get(&m, names[i]), model[i]);
			live += model[i] != NULL;
		}
		for (size_t i = 0; i < m.cap; i++)
			seen += m.slots[i].key != NULL;
		assert_int_equal(m.n, live);
		assert_int_equal(seen, live);
	}
	/* a lookup by an equal string that is not the stored pointer */
	{
		char copy[16];

		snprintf(copy, sizeof(copy), "%s", names[1]);
		assert_ptr_equal(sl_strmap_get(&m, copy), model[1]);
	}
	sl_strmap_fini(&m);
	assert_int_equal(m.n, 0);
}

/* Many entries: the map grows and every one is still found, then all go. */
static void
test_strmap_grows_and_empties(void **state)
{
	enum { N = 50000 };
	char(*names)[16] = malloc(N * 16);
	struct sl_strmap m;

	(void)state;
	assert_non_null(names);
	memset(&m, 0, sizeof(m));
	for (int i = 0; i < N; i++) {
		snprintf(names[i], 16, "S_%d", i);
		assert_int_equal(sl_strmap_put(&m, names[i], names[i], NULL), 0);
	}
	assert_int_equal(m.n, N);
	assert_true(m.n * 4 <= m.cap * 3);
	for (int i = 0; i < N; i++)
		assert_ptr_equal(sl_strmap_get(&m, names[i]), names[i]);
	for (int i = 0; i < N; i += 2)
		assert_ptr_equal(sl_strmap_del(&m, names[i]), names[i]);
	for (int i = 0; i < N; i++)
		assert_ptr_equal(sl_strmap_get(&m, names[i]), i % 2 ? names[i] : NULL);
	for (int i = 1; i < N; i += 2)
		assert_ptr_equal(sl_strmap_del(&m, names[i]), names[i]);
	assert_int_equal(m.n, 0);
	for (size_t i = 0; i < m.cap; i++)
		assert_null(m.slots[i].key);
	sl_strmap_fini(&m);
	free(names);
}

static char *
safe(const char *in, size_t max, const char *indent)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	assert_non_null(f);
	if (max)
		sl_fput_safe_cut(f, in, max);
	else
		sl_fput_safe(f, in, strlen(in), indent);
	fclose(f);
	return buf;
}

/* What clients wrote, printed for a terminal: nothing that a terminal
 * acts on passes through as it is. */
static void
test_fput_safe(void **state)
{
	static const struct {
		const char *in, *indent, *want;
	} cases[] = {
		{"SELECT 1", NULL, "SELECT 1"},
		{"a\tb", NULL, "a\tb"},
		{"a\x1b[2Jb\rc\x07\x7f", NULL, "a\\x1b[2Jb\\x0dc\\x07\\x7f"},
		{"one\ntwo", NULL, "one\\ntwo"},
		{"one\ntwo", "  ", "one\n  two"},
		{"caf\xc3\xa9 \xc2\xa0", NULL, "caf\xc3\xa9 \xc2\xa0"}, /* é, NBSP kept */
		{"x\xc2\x9b"
		 "2J",
		 NULL, "x\\u009b2J"}, /* C1 CSI */
		{"a\xe2\x80\xae"
		 "b",
		 NULL, "a\\u202eb"}, /* RLO */
		{"\xe2\x81\xa6"
		 "x\xe2\x81\xa9",
		 NULL, "\\u2066x\\u2069"},	   /* LRI, PDI */
		{"\xe2\x80\x8f", NULL, "\\u200f"}, /* RLM */
		{"\xe2\x80\x94 \xe2\x80\x99", NULL,
		 "\xe2\x80\x94 \xe2\x80\x99"}, /* dash, quote kept */
		{"\xc2", NULL, "\xc2"},	       /* a lone lead byte at the end */
		{"a\xe2\x80\xa8"
		 "b\xe2\x80\xa9",
		 NULL, "a\\u2028b\\u2029"}, /* line and paragraph separators */
		{"\xd8\x9c"
		 "x",
		 NULL, "\\u061cx"},		/* ARABIC LETTER MARK */
		{"\xd8\xa7", NULL, "\xd8\xa7"}, /* ARABIC LETTER ALEF kept */
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *got = safe(cases[i].in, 0, cases[i].indent);

		assert_string_equal(got, cases[i].want);
		free(got);
	}
	{
		char *got = safe("ab\xc3\xa9"
				 "cd",
				 3, NULL); /* never half a character */

		assert_string_equal(got, "ab...");
		free(got);
		got = safe(NULL, 10, NULL);
		assert_string_equal(got, "-");
		free(got);
		got = safe("abc", 3, NULL);
		assert_string_equal(got, "abc");
		free(got);
	}
}

/* One definition of a control character for logs, audit tools, identities
 * and approvers: lengths and code points, never past n. */
static void
test_utf8_control(void **state)
{
	static const struct {
		const char *s;
		size_t n, len;
		unsigned cp;
	} cases[] = {
		{"\x1b", 1, 1, 0x1b},
		{"\x7f", 1, 1, 0x7f},
		{"\t", 1, 1, 0x09},
		{"a", 1, 0, 0},
		{"\xc2\x85", 2, 2, 0x85},
		{"\xc2\xa0", 2, 0, 0},
		{"\xc2\x85", 1, 0, 0},
		{"\xd8\x9c", 2, 2, 0x061c},
		{"\xe2\x80\x8e", 3, 3, 0x200e},
		{"\xe2\x80\xa8", 3, 3, 0x2028},
		{"\xe2\x80\xae", 3, 3, 0x202e},
		{"\xe2\x80\xaf", 3, 0, 0},
		{"\xe2\x81\xa6", 3, 3, 0x2066},
		{"\xe2\x81\xa9", 3, 3, 0x2069},
		{"\xe2\x81\xa9", 2, 0, 0},
		{"\xe2\x80\x94", 3, 0, 0},
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		unsigned cp = 12345;
		size_t len = sl_utf8_control((const unsigned char *)cases[i].s, cases[i].n, &cp);

		assert_int_equal(len, cases[i].len);
		if (len)
			assert_int_equal(cp, cases[i].cp);
	}
	assert_int_equal(sl_utf8_control((const unsigned char *)"", 0, NULL), 0);
}

/* Decimals as printf writes them, at every digit count and both ends. */
/* What clients and servers sent reaches the log escaped: no terminal
 * control, no second line, no bidi reversal; other text as it is. */
static void
test_log_escapes_controls(void **state)
{
	char path[] = "/tmp/sluice-log-test.XXXXXX", buf[1024];
	int fd = mkstemp(path), saved = dup(STDERR_FILENO);
	ssize_t n;

	assert_true(fd >= 0 && saved >= 0);
	assert_int_not_equal(dup2(fd, STDERR_FILENO), -1);
	sl_log(SL_LOG_ERROR, "sub %s end",
	       "a\x1b[2Jb\nforged: line\x7f \xc2\x9b"
	       "2J \xe2\x80\xae"
	       "evil \xe2\x81\xa6x "
	       "\xe2\x80\xa8y Jos\xc3\xa9 \xc2\xa0nbsp \x9b\xd8\x9c\xe2\x80");
	dup2(saved, STDERR_FILENO);
	close(saved);
	n = pread(fd, buf, sizeof(buf) - 1, 0);
	close(fd);
	unlink(path);
	assert_true(n > 0);
	buf[n] = '\0';
	assert_non_null(strstr(buf, "sub a\\x1b[2Jb\\x0aforged: line\\x7f \\u009b2J "
				    "\\u202eevil \\u2066x \\u2028y Jos\xc3\xa9 \xc2\xa0nbsp "
				    "\\x9b\\u061c\\xe2\\x80 end\n"));
	assert_ptr_equal(strchr(buf, '\n'), buf + n - 1); /* one line */
}

static void
test_fmt_decimal(void **state)
{
	const int64_t iv[] = {
		0, 1, -1, 9, -9, 10, 99, 100, -100, 12345, 1765000000000000, INT64_MAX, INT64_MIN};
	char got[32], want[32];

	for (uint64_t v = 1, i = 0; i < 20; i++, v *= 10)
		for (int d = -1; d <= 1; d++) {
			uint64_t x = v + (uint64_t)d;

			*sl_fmt_u64(got, x) = '\0';
			snprintf(want, sizeof(want), "%llu", (unsigned long long)x);
			assert_string_equal(got, want);
		}
	*sl_fmt_u64(got, UINT64_MAX) = '\0';
	assert_string_equal(got, "18446744073709551615");
	for (size_t i = 0; i < sizeof(iv) / sizeof(iv[0]); i++) {
		*sl_fmt_i64(got, iv[i]) = '\0';
		snprintf(want, sizeof(want), "%lld", (long long)iv[i]);
		assert_string_equal(got, want);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_siphash_known_answer),
		cmocka_unit_test(test_strmap_matches_model),
		cmocka_unit_test(test_strmap_grows_and_empties),
		cmocka_unit_test(test_fput_safe),
		cmocka_unit_test(test_utf8_control),
		cmocka_unit_test(test_fmt_decimal),
		cmocka_unit_test(test_log_escapes_controls),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
