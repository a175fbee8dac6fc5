/*
 * bench_mask: masking engine throughput on one core, every built-in
 * detector on, partial style.
 *
 *   bench_mask [seconds-per-case] [case-filter] [detector,detector,...]
 *
 * Data sets (8 MiB each, generated with a fixed seed):
 *   realistic    result rows as a gateway sees them (text format, tab
 *                separated): ids, names, timestamptz, amounts, statuses,
 *                UUIDs, free-text notes; one row in 20 carries PII (email,
 *                SSN, card, phone or IBAN)
 *   pii-dense    the same rows with an email column in every row and one
 *                row in 4 carrying another PII value
 *   digit-heavy  the worst case for number detectors: 16-digit numbers,
 *                one in ten Luhn-valid, separated by spaces
 * Modes:
 *   block/<n>    sl_mask_value() on n-byte values (a buffer cut in pieces);
 *                block/16 runs last (per-call cost of short values)
 *   stream/<n>   sl_mask_stream_feed() in n-byte chunks
 * Prints one line per case: GB/s (10^9 bytes per second).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sluice/mask.h"

#define DATA_LEN (8u << 20)

static double
now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static unsigned long long rng = 88172645463325252ull;

static unsigned
rnd(unsigned n)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (unsigned)(rng % n);
}

/* Appends a Luhn-valid 16-digit number. */
static size_t
card(char *o)
{
	int d[16], sum = 0;

	d[0] = 4;
	for (int i = 1; i < 15; i++)
		d[i] = (int)rnd(10);
	for (int i = 0; i < 15; i++) {
		int v = d[i];

		if (i % 2 == 0) {
			v *= 2;
			if (v > 9)
				v -= 9;
		}
		sum += v;
	}
	d[15] = (10 - sum % 10) % 10;
	for (int i = 0; i < 16; i++)
		o[i] = (char)('0' + d[i]);
	return 16;
}

static char *
gen_rows(int dense)
{
	static const char *first[] = {"Ada",	"Grace",   "Alan", "Edsger",   "Barbara",
				      "Donald", "Frances", "Ken",  "Margaret", "Niklaus"};
	static const char *last[] = {"Lovelace", "Hopper", "Turing",   "Dijkstra", "Liskov",
				     "Knuth",	 "Allen",  "Thompson", "Hamilton", "Wirth"};
	static const char *status[] = {"pending", "shipped", "delivered", "cancelled", "refunded"};
	static const char *text[] = {
		"customer asked to change the delivery address",
		"left at the front door, signed by neighbour",
		"priority shipping; gift wrap requested",
		"item out of stock, backorder until next week",
		"",
		"called support twice about the invoice",
	};
	char *b = malloc(DATA_LEN + 512);
	size_t n = 0;

	while (n < DATA_LEN) {
		unsigned f = rnd(10), l = rnd(10), pii = rnd(dense ? 5 : 20);

		n += (size_t)sprintf(
			b + n,
			"%u\t%s %s\t2024-%02u-%02u %02u:%02u:%02u.%06u+00\t%u.%02u\t%s\t"
			"%08x-%04x-4%03x-a%03x-%08x%04x\t%s\t",
			100000 + rnd(900000), first[f], last[l], 1 + rnd(12), 1 + rnd(28), rnd(24),
			rnd(60), rnd(60), rnd(1000000), rnd(2000), rnd(100), status[rnd(5)],
			rnd(1u << 31), rnd(65536), rnd(4096), rnd(4096), rnd(1u << 31), rnd(65536),
			text[rnd(6)]);
		if (dense)
			n += (size_t)sprintf(b + n, "%s.%s@corp.example\t", first[f], last[l]);
		switch (pii) {
		case 0:
			n += (size_t)sprintf(b + n, "%c%s@example.com", "agkmt"[rnd(5)], last[l]);
			break;
		case 1:
			n += (size_t)sprintf(b + n, "%03u-%02u-%04u", 100 + rnd(565), 10 + rnd(89),
					     1000 + rnd(8999));
			break;
		case 2:
			n += card(b + n);
			break;
		case 3:
			n += (size_t)sprintf(b + n, "+4420%08u", rnd(100000000));
			break;
		case 4:
			n += (size_t)sprintf(b + n, "GB82 WEST 1234 5698 7654 32");
			break;
		default:
			n += (size_t)sprintf(b + n, "%s", text[rnd(6)]);
		}
		b[n++] = '\n';
	}
	return b;
}

static char *
gen_digits(void)
{
	char *b = malloc(DATA_LEN + 64);
	size_t n = 0;

	while (n < DATA_LEN) {
		if (rnd(10) == 0) {
			n += card(b + n);
		} else {
			for (int i = 0; i < 16; i++)
				b[n++] = (char)('0' + rnd(10));
		}
		b[n++] = ' ';
	}
	return b;
}

struct sink {
	size_t n;
};

static int
sink(void *arg, const uint8_t *p, size_t n)
{
	((struct sink *)arg)->n += n;
	(void)p;
	return 0;
}

static void
run(const char *filter, double secs, const char *data_name, const char *data,
    const struct sl_mask_plan *p, struct sl_mask_scratch *s, int stream, size_t unit)
{
	char name[96];
	uint8_t *work = malloc(DATA_LEN);
	struct sl_buf out;
	double t0, t;
	size_t bytes = 0;
	struct sink sk = {0};

	snprintf(name, sizeof(name), "%s %s/%zu", data_name, stream ? "stream" : "block", unit);
	if (filter != NULL && strstr(name, filter) == NULL) {
		free(work);
		return;
	}
	sl_buf_init(&out, 0);
	t0 = now();
	do {
		if (stream) {
			struct sl_mask_stream *ms;

			if (sl_mask_stream_new(p, s, sink, &sk, &ms) != 0)
				exit(1);
			for (size_t off = 0; off < DATA_LEN; off += unit)
				sl_mask_stream_feed(ms, (const uint8_t *)data + off,
						    off + unit > DATA_LEN ? DATA_LEN - off : unit);
			sl_mask_stream_end(ms);
			sl_mask_stream_free(ms);
		} else {
			memcpy(work, data, DATA_LEN);
			for (size_t off = 0; off < DATA_LEN; off += unit) {
				out.len = 0;
				sl_mask_value(p, s, work + off,
					      off + unit > DATA_LEN ? DATA_LEN - off : unit, &out,
					      NULL);
			}
		}
		bytes += DATA_LEN;
		t = now() - t0;
	} while (t < secs);
	printf("%-28s %6.2f GB/s\n", name, (double)bytes / t / 1e9);
	fflush(stdout);
	sl_buf_fini(&out);
	free(work);
}

int
main(int argc, char **argv)
{
	static char *dets[] = {"ssn",	      "credit_card",	   "email", "aws_access_key", "jwt",
			       "private_key", "secret_assignment", "iban",  "phone"};
	struct sl_cfg_policy_mask pm = {0};
	struct sl_mask_db *db;
	struct sl_mask_plan *p;
	struct sl_mask_scratch *s;
	double secs = argc > 1 ? atof(argv[1]) : 2.0;
	const char *filter = argc > 2 ? argv[2] : NULL;
	char err[256], *real, *dense, *digits;
	static const size_t units[] = {64, 4096};

	pm.detectors = dets;
	pm.detectors_count = sizeof(dets) / sizeof(dets[0]);
	if (argc > 3) {
		char *list = strdup(argv[3]), *tok, *save = NULL;

		pm.detectors_count = 0;
		for (tok = strtok_r(list, ",", &save); tok && pm.detectors_count < 9;
		     tok = strtok_r(NULL, ",", &save))
			dets[pm.detectors_count++] = tok;
	}
	if (sl_mask_db_new(NULL, &db, err, sizeof(err)) != 0 ||
	    sl_mask_plan_new(db, &pm, (const uint8_t *)"bench-key", 9, &p, err, sizeof(err)) != 0 ||
	    sl_mask_scratch_new(db, &s) != 0) {
		fprintf(stderr, "bench_mask: %s\n", err);
		return 1;
	}
	real = gen_rows(0);
	dense = gen_rows(1);
	digits = gen_digits();
	for (int st = 0; st < 2; st++) {
		for (size_t u = 0; u < 2; u++) {
			run(filter, secs, "realistic", real, p, s, st, units[u]);
			run(filter, secs, "pii-dense", dense, p, s, st, units[u]);
			run(filter, secs, "digit-heavy", digits, p, s, st, units[u]);
		}
	}
	/* column values as short as most DataRow fields: per-call cost */
	run(filter, secs, "realistic", real, p, s, 0, 16);
	run(filter, secs, "pii-dense", dense, p, s, 0, 16);
	run(filter, secs, "digit-heavy", digits, p, s, 0, 16);
	free(real);
	free(dense);
	free(digits);
	sl_mask_scratch_free(s);
	sl_mask_plan_free(p);
	sl_mask_db_free(db);
	return 0;
}
