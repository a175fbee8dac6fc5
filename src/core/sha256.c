/*
 * sha256.c - SHA-256 for the hot paths (the audit chain, token cache keys).
 *
 * OpenSSL 3's EVP digests re-create their provider context on every init
 * (an allocation and a free per digest, plus dispatch), and the one-shot
 * SHA256() fetches the algorithm on every call. The low-level functions,
 * deprecated since 3.0 but exported and running the same SHA-NI/AVX2 code,
 * cost neither. Kept apart so the deprecation override stays in one file.
 */
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "sluice/core.h"

void
sl_sha256(const void *p, size_t n, uint8_t out[32])
{
	SHA256_CTX c;

	SHA256_Init(&c);
	SHA256_Update(&c, p, n);
	SHA256_Final(out, &c);
	/* the context holds the input's last block: tokens are hashed here */
	OPENSSL_cleanse(&c, sizeof(c));
}
