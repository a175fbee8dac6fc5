/* Fuzz target: SQL classification; the shape cache must agree with a direct
 * classification on every input, kinds and read_write (a disagreement is a
 * policy bypass). Also
 * the redaction of secrets in statement text: in place, every byte kept or
 * turned into '*'. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sluice/sqlclass.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct sl_sql_cache *cache;

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct sl_sql_class direct;
	const struct sl_sql_class *cached;

	if (cache == NULL)
		cache = sl_sql_cache_new(64);
	if (size > 0) {
		char *r = malloc(size);

		if (r != NULL) {
			memcpy(r, data, size);
			sl_sql_redact_secrets(r, size);
			for (size_t i = 0; i < size; i++)
				if (r[i] != (char)data[i] && r[i] != '*')
					abort();
			free(r);
		}
	}
	if (sl_sql_classify((const char *)data, size, &direct) != 0)
		return 0;
	if (sl_sql_cache_classify(cache, (const char *)data, size, &cached) == 0 &&
	    (cached->kinds != direct.kinds || cached->read_write != direct.read_write))
		abort();
	sl_sql_class_fini(&direct);
	return 0;
}
