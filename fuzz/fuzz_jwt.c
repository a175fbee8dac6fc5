/* Fuzz target: JWT parsing and verification against a fixed dev issuer. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sluice/identity.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct sl_idp *idp;

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct sl_identity id;
	char err[256];

	if (idp == NULL) {
		struct sl_cfg_identity cfg = {0};
		char dir[] = "/tmp/sluice-fuzz-jwt.XXXXXX";

		if (mkdtemp(dir) == NULL || sl_idp_new(&cfg, dir, &idp, err, sizeof(err)) != 0)
			abort();
	}
	if (sl_idp_verify(idp, (const char *)data, size, 1800000000, &id, err, sizeof(err)) == 0)
		sl_identity_fini(&id);
	return 0;
}
