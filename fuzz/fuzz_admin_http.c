/* Fuzz target: the admin API's HTTP request parsing (llhttp + our limits). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sluice/review.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char url[1024];
	int status;

	if (sl_admin_parse_request(data, size, url, sizeof(url), &status) == 0 &&
	    strlen(url) >= sizeof(url))
		abort();
	return 0;
}
