/*
 * Fuzz target: JWT parsing and verification, and JWKS parsing.
 *
 * On the first call it builds two issuers over a JWKS made from a fixed
 * Ed25519 key (kid "fz"): https://fuzz.test (groups at realm_access.roles)
 * and https://url.test (groups at the URL-like claim
 * "https://example.com/groups"). The first input byte picks the mode:
 *
 *   'S' header-JSON '\n' payload-JSON: both are base64url-encoded and signed
 *       with the fixed key, so claim checks and group mapping are reachable;
 *   'K' JWKS text: parsed as a key set;
 *   anything else: the whole input is a token.
 *
 * Verification runs at a fixed time (1800000000).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "sluice/identity.h"
/* sl_keyset_parse is internal; fuzzed directly for the 'K' mode. */
#include "../src/identity/identity_internal.h"

#define FUZZ_NOW 1800000000

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct sl_idp *idp;
static EVP_PKEY *key;

static const uint8_t seed[32] = {0x73, 0x6c, 0x75, 0x69, 0x63, 0x65, 0x2d, 0x66, 0x75, 0x7a, 0x7a,
				 0x2d, 0x6a, 0x77, 0x74, 0x2d, 0x66, 0x69, 0x78, 0x65, 0x64, 0x2d,
				 0x6b, 0x65, 0x79, 0x2d, 0x30, 0x30, 0x30, 0x30, 0x30, 0x31};

static size_t
b64u(const uint8_t *in, size_t n, char *out)
{
	static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	size_t o = 0;

	for (size_t i = 0; i < n; i += 3) {
		uint32_t v = (uint32_t)in[i] << 16;

		if (i + 1 < n)
			v |= (uint32_t)in[i + 1] << 8;
		if (i + 2 < n)
			v |= in[i + 2];
		out[o++] = t[(v >> 18) & 63];
		out[o++] = t[(v >> 12) & 63];
		if (i + 1 < n)
			out[o++] = t[(v >> 6) & 63];
		if (i + 2 < n)
			out[o++] = t[v & 63];
	}
	out[o] = '\0';
	return o;
}

static void
init(void)
{
	char dir[] = "/tmp/sluice-fuzz-jwt.XXXXXX", path[64], x64[64], err[256];
	struct sl_cfg_issuer is[2] = {
		{.issuer = "https://fuzz.test",
		 .audience = "sluice",
		 .jwks_file = path,
		 .groups_claim = "realm_access.roles",
		 .leeway = "60s"},
		{.issuer = "https://url.test",
		 .audience = "sluice",
		 .jwks_file = path,
		 .groups_claim = "https://example.com/groups",
		 .subject_claim = "user.name"},
	};
	struct sl_cfg_identity cfg = {.issuers = is, .issuers_count = 2};
	uint8_t pub[32];
	size_t pl = sizeof(pub);
	FILE *f;

	key = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, seed, sizeof(seed));
	if (key == NULL || EVP_PKEY_get_raw_public_key(key, pub, &pl) != 1 || mkdtemp(dir) == NULL)
		abort();
	b64u(pub, pl, x64);
	snprintf(path, sizeof(path), "%s/jwks.json", dir);
	f = fopen(path, "w");
	if (f == NULL)
		abort();
	fprintf(f, "{\"keys\":[{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"kid\":\"fz\",\"x\":\"%s\"}]}",
		x64);
	fclose(f);
	if (sl_idp_new(&cfg, dir, &idp, err, sizeof(err)) != 0)
		abort();
	/* The keys are in memory now; leave nothing behind. */
	unlink(path);
	rmdir(dir);
}

static void
verify(const char *tok, size_t len)
{
	struct sl_identity id, copy;
	char err[256];

	if (sl_idp_verify(idp, tok, len, FUZZ_NOW, &id, err, sizeof(err)) != 0)
		return;
	/* Exercise the accessors on whatever was accepted. */
	if (sl_identity_copy(&copy, &id) == 0) {
		for (size_t i = 0; i < copy.ngroups; i++)
			if (!sl_identity_in_group(&id, copy.groups[i]))
				abort();
		sl_identity_fini(&copy);
	}
	sl_identity_fini(&id);
}

/* 'S' mode: sign header '\n' payload with the fixed key and verify. */
static void
sign_and_verify(const uint8_t *data, size_t size)
{
	const uint8_t *nl = memchr(data, '\n', size);
	size_t hl, pl, n, siglen = 64;
	uint8_t sig[64];
	char *tok;
	EVP_MD_CTX *md;

	if (nl == NULL || size > SL_JWT_MAX)
		return;
	hl = (size_t)(nl - data);
	pl = size - hl - 1;
	tok = malloc((hl + pl) * 4 / 3 + 8 + 90);
	if (tok == NULL)
		return;
	n = b64u(data, hl, tok);
	tok[n++] = '.';
	n += b64u(nl + 1, pl, tok + n);
	md = EVP_MD_CTX_new();
	if (md != NULL && EVP_DigestSignInit(md, NULL, NULL, NULL, key) == 1 &&
	    EVP_DigestSign(md, sig, &siglen, (const uint8_t *)tok, n) == 1) {
		tok[n++] = '.';
		n += b64u(sig, siglen, tok + n);
		verify(tok, n);
	}
	EVP_MD_CTX_free(md);
	free(tok);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (idp == NULL)
		init();
	if (size > 0 && data[0] == 'S') {
		sign_and_verify(data + 1, size - 1);
	} else if (size > 0 && data[0] == 'K') {
		struct sl_keyset *ks = NULL;

		if (sl_keyset_parse((const char *)data + 1, size - 1, NULL, &ks) == 0)
			sl_keyset_free(ks);
	} else {
		verify((const char *)data, size);
	}
	return 0;
}
