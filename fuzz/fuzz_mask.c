/*
 * Fuzz target: the masker on arbitrary bytes, as one value and as a stream
 * cut into chunks whose sizes come from the input. Invariants:
 *  - no crash, no sanitizer report;
 *  - length rules: partial/full rewrite in place (same length) and only
 *    ever turn bytes into '*'; a stream emits exactly as many bytes;
 *  - a stream, however chunked, emits exactly the block-mode result (full
 *    and partial styles) and counts the same hits per detector (audit
 *    records carry them);
 *  - every match of an independent mini-specification (SSN ddd-dd-dddd
 *    with its range and boundary rules, bare 13-19 digit Luhn-valid card
 *    numbers) is starred in the full-style output.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sluice/mask.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct sl_mask_db *db;
static struct sl_mask_plan *full, *partial;
static struct sl_mask_scratch *scr;

struct out {
	uint8_t *p;
	size_t n, cap;
};

static int
collect(void *arg, const uint8_t *p, size_t n)
{
	struct out *o = arg;

	if (o->n + n > o->cap)
		abort(); /* a stream must never emit more than it was fed */
	memcpy(o->p + o->n, p, n);
	o->n += n;
	return 0;
}

static void
init(void)
{
	static char *dets[] = {"ssn",	      "credit_card",	   "email", "aws_access_key", "jwt",
			       "private_key", "secret_assignment", "iban",  "phone"};
	struct sl_cfg_policy_mask pm = {0};
	char err[256];

	pm.detectors = dets;
	pm.detectors_count = sizeof(dets) / sizeof(dets[0]);
	pm.style = "full";
	if (sl_mask_db_new(NULL, &db, err, sizeof(err)) != 0 ||
	    sl_mask_plan_new(db, &pm, (const uint8_t *)"k", 1, &full, err, sizeof(err)) != 0)
		abort();
	pm.style = "partial";
	if (sl_mask_plan_new(db, &pm, (const uint8_t *)"k", 1, &partial, err, sizeof(err)) != 0 ||
	    sl_mask_scratch_new(db, &scr) != 0)
		abort();
}

#define DIG(c)	 ((unsigned)((c) - '0') < 10u)
#define ALNUM(c) (DIG(c) || (unsigned)(((c) | 0x20) - 'a') < 26u)

static int
starred(const uint8_t *o, size_t a, size_t b)
{
	for (size_t i = a; i < b; i++)
		if (o[i] != '*')
			return 0;
	return 1;
}

/* The mini-specification, written independently of the engine. */
static void
check_spec(const uint8_t *in, const uint8_t *o, size_t n)
{
	for (size_t s = 0; s + 11 <= n; s++) {
		const uint8_t *v = in + s;
		int area;

		if (!(DIG(v[0]) && DIG(v[1]) && DIG(v[2]) && v[3] == '-' && DIG(v[4]) &&
		      DIG(v[5]) && v[6] == '-' && DIG(v[7]) && DIG(v[8]) && DIG(v[9]) &&
		      DIG(v[10])))
			continue;
		if (s > 0 && (ALNUM(in[s - 1]) || (in[s - 1] == '-' && s > 1 && DIG(in[s - 2]))))
			continue;
		if (s + 11 < n &&
		    (ALNUM(in[s + 11]) || (in[s + 11] == '-' && s + 12 < n && DIG(in[s + 12]))))
			continue;
		area = (v[0] - '0') * 100 + (v[1] - '0') * 10 + (v[2] - '0');
		if (area == 0 || area == 666 || area >= 900 || (v[4] == '0' && v[5] == '0') ||
		    memcmp(v + 7, "0000", 4) == 0)
			continue;
		if (!starred(o, s, s + 11))
			abort();
	}
	for (size_t s = 0; s < n;) {
		size_t e = s;
		int sum = 0;

		if (!DIG(in[s])) {
			s++;
			continue;
		}
		while (e < n && DIG(in[e]))
			e++;
		if (e - s >= 13 && e - s <= 19 && (s == 0 || !ALNUM(in[s - 1])) &&
		    (e == n || !ALNUM(in[e]))) {
			for (size_t i = e, k = 0; i-- > s; k++) {
				int d = in[i] - '0';

				if (k % 2) {
					d *= 2;
					if (d > 9)
						d -= 9;
				}
				sum += d;
			}
			if (sum % 10 == 0 && !starred(o, s, e))
				abort();
		}
		s = e;
	}
}

static void
stream_equals(const struct sl_mask_plan *p, const uint8_t *in, size_t n, const uint8_t *want,
	      const struct sl_mask_stats *want_st, uint32_t seed)
{
	struct out o = {malloc(n + 1), 0, n};
	struct sl_mask_stream *ms;
	size_t off = 0;

	if (o.p == NULL || sl_mask_stream_new(p, scr, collect, &o, &ms) != 0)
		abort();
	while (off < n) {
		size_t k;

		seed = seed * 1103515245u + 12345u;
		k = (seed >> 16) % 8 == 0 ? 1 + (seed >> 8) % 4096 : 1 + (seed >> 8) % 64;
		if (k > n - off)
			k = n - off;
		if (sl_mask_stream_feed(ms, in + off, k) != 0)
			abort();
		if (sl_mask_stream_held(ms) > SL_MASK_HOLD_MAX)
			abort();
		off += k;
	}
	if (sl_mask_stream_end(ms) != 0 || o.n != n || memcmp(o.p, want, n) != 0 ||
	    memcmp(sl_mask_stream_stats(ms)->hits, want_st->hits, sizeof(want_st->hits)) != 0)
		abort();
	sl_mask_stream_free(ms);
	free(o.p);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const struct sl_mask_plan *plans[2];
	uint8_t *v;
	struct sl_buf out;
	uint32_t seed = 2166136261u;

	if (db == NULL)
		init();
	plans[0] = full;
	plans[1] = partial;
	for (size_t i = 0; i < size && i < 64; i++)
		seed = (seed ^ data[i]) * 16777619u;
	v = malloc(size + 1);
	if (v == NULL)
		return 0;
	sl_buf_init(&out, 1 << 24);
	for (int k = 0; k < 2; k++) {
		struct sl_mask_stats st = {0};
		int r;

		memcpy(v, data, size);
		out.len = 0;
		r = sl_mask_value(plans[k], scr, v, size, &out, &st);
		if (r != SL_MASK_UNCHANGED && r != SL_MASK_IN_PLACE)
			abort(); /* no hash or null style in these plans */
		for (size_t i = 0; i < size; i++)
			if (v[i] != data[i] && v[i] != '*')
				abort();
		if (r == SL_MASK_UNCHANGED && memcmp(v, data, size) != 0)
			abort();
		if (k == 0)
			check_spec(data, v, size);
		stream_equals(plans[k], data, size, v, &st, seed + (uint32_t)k);
	}
	sl_buf_fini(&out);
	free(v);
	return 0;
}
