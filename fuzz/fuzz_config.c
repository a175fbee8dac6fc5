/* Fuzz target: YAML configuration loading and validation. */
#include <stdint.h>
#include <stdlib.h>

#include "sluice/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct sl_config *cfg = NULL;
	char err[1024];

	if (sl_config_load_data("fuzz", (const char *)data, size, &cfg, err, sizeof(err)) == 0)
		sl_config_free(cfg);
	return 0;
}
