/* bench_mask: masking engine throughput (GB/s on one core) on realistic
 * result data and on digit-heavy worst-case data. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sluice/mask.h"

static double
now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void
run(const char *name, struct sl_mask_plan *p, struct sl_mask_scratch *s, const char *data,
    size_t len, size_t value)
{
	char *work = malloc(len);
	struct sl_buf out;
	double t0, t;
	size_t bytes = 0;

	sl_buf_init(&out, 0);
	t0 = now();
	do {
		memcpy(work, data, len);
		for (size_t off = 0; off < len; off += value) {
			size_t n = off + value > len ? len - off : value;

			out.len = 0;
			sl_mask_value(p, s, (uint8_t *)work + off, n, &out, NULL);
		}
		bytes += len;
		t = now() - t0;
	} while (t < 2.0);
	printf("%-28s value %6zu B: %.2f GB/s\n", name, value, bytes / t / 1e9);
	sl_buf_fini(&out);
	free(work);
}

int
main(void)
{
	struct sl_mask_db *db;
	struct sl_mask_plan *p;
	struct sl_mask_scratch *s;
	char err[256];
	size_t len = 8u << 20, n = 0;
	char *real = malloc(len + 256), *digits = malloc(len + 256);
	static const char *words[] = {"Ada",	    "Lovelace", "order",  "shipped",
				      "2024-01-15", "pending",	"Berlin", "42.50",
				      "EUR",	    "notes:",	"ok"};

	if (sl_mask_db_new(NULL, &db, err, sizeof(err)) != 0 ||
	    sl_mask_plan_all(db, (const uint8_t *)"k", 1, &p) != 0 ||
	    sl_mask_scratch_new(db, &s) != 0)
		return 1;
	srand(1);
	/* realistic: names, dates, amounts, ids; one row in 20 carries PII */
	while (n < len) {
		int r = rand() % 20;

		if (r == 0)
			n += (size_t)sprintf(real + n, "customer%05d@example.com ",
					     rand() % 100000);
		else if (r == 1)
			n += (size_t)sprintf(real + n, "ssn 123-45-%04d ", 1000 + rand() % 8999);
		else
			n += (size_t)sprintf(real + n, "%s %d ", words[rand() % 11],
					     rand() % 100000);
	}
	n = 0;
	while (n < len)
		n += (size_t)sprintf(digits + n, "%016llu ", (unsigned long long)rand() * rand());
	run("realistic", p, s, real, len, 64);
	run("realistic", p, s, real, len, 4096);
	run("digit-heavy (worst case)", p, s, digits, len, 64);
	run("digit-heavy (worst case)", p, s, digits, len, 4096);
	return 0;
}
