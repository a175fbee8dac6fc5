/*
 * auth.c - upstream login: SCRAM-SHA-256 (RFC 5802/7677) client with
 * mandatory server-signature check, MD5 and cleartext. Pure: the caller
 * supplies the randomness for the client nonce.
 */
#include "sluice/pg_auth.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

#include "sluice/pg_codec.h"

#define MAX_ITER 10000000

enum upauth_state { UA_START, UA_SASL_SENT_FIRST, UA_SASL_SENT_FINAL, UA_SASL_DONE, UA_DONE };

struct sl_pg_upauth {
	const char *user;
	const char *password;
	enum upauth_state st;
	char nonce[48];
	char client_first_bare[128];
	char *server_first;
	uint8_t salted[32];
	char auth_message_tail[1024];
	uint8_t server_sig[32];
	int scram;
};

static void
b64enc(const uint8_t *in, size_t n, char *out)
{
	EVP_EncodeBlock((unsigned char *)out, in, (int)n);
}

static int
b64dec(const char *in, size_t n, uint8_t *out, size_t outmax, size_t *outlen)
{
	uint8_t tmp[1024];
	int r;
	size_t pad = 0;

	if (n == 0 || n % 4 != 0 || n / 4 * 3 > sizeof(tmp))
		return SL_EPROTO;
	r = EVP_DecodeBlock(tmp, (const unsigned char *)in, (int)n);
	if (r < 0)
		return SL_EPROTO;
	if (in[n - 1] == '=')
		pad++;
	if (in[n - 2] == '=')
		pad++;
	if ((size_t)r < pad || (size_t)r - pad > outmax)
		return SL_EPROTO;
	memcpy(out, tmp, (size_t)r - pad);
	*outlen = (size_t)r - pad;
	return 0;
}

int
sl_pg_upauth_new(const char *user, const char *password, const uint8_t *nonce_src, size_t nlen,
		 struct sl_pg_upauth **out)
{
	struct sl_pg_upauth *a;
	uint8_t raw[18];

	if (nlen < sizeof(raw))
		return SL_EINVAL;
	a = calloc(1, sizeof(*a));
	if (a == NULL)
		return SL_ENOMEM;
	a->user = user;
	a->password = password;
	memcpy(raw, nonce_src, sizeof(raw));
	b64enc(raw, sizeof(raw), a->nonce);
	*out = a;
	return 0;
}

void
sl_pg_upauth_free(struct sl_pg_upauth *a)
{
	if (a == NULL)
		return;
	free(a->server_first);
	OPENSSL_cleanse(a, sizeof(*a));
	free(a);
}

static void
hmac256(const uint8_t *key, size_t klen, const void *msg, size_t mlen, uint8_t out[32])
{
	unsigned int olen = 32;

	HMAC(EVP_sha256(), key, (int)klen, msg, mlen, out, &olen);
}

/* Finds "k=" attribute at the start of a comma-separated field. */
static const char *
attr(const char *s, char k, size_t *len)
{
	const char *p = s;

	while (p && *p) {
		if (p[0] == k && p[1] == '=') {
			const char *e = strchr(p, ',');

			*len = e ? (size_t)(e - p - 2) : strlen(p + 2);
			return p + 2;
		}
		p = strchr(p, ',');
		if (p)
			p++;
	}
	return NULL;
}

static int
scram_first(struct sl_pg_upauth *a, const uint8_t *mechs, size_t mlen, struct sl_buf *out,
	    char *err, size_t errlen)
{
	int found = 0;
	char first[160];
	size_t off = 0;

	/* A list of NUL-terminated mechanism names, ending with an empty one. */
	while (off < mlen) {
		const char *m = (const char *)mechs + off;
		size_t l = strnlen(m, mlen - off);

		if (l == mlen - off)
			return SL_EPROTO;
		if (l == 0)
			break;
		if (strcmp(m, "SCRAM-SHA-256") == 0)
			found = 1;
		off += l + 1;
	}
	if (!found) {
		snprintf(err, errlen, "server offers no SASL mechanism sluice supports");
		return SL_EPOLICY;
	}
	snprintf(a->client_first_bare, sizeof(a->client_first_bare), "n=,r=%s", a->nonce);
	snprintf(first, sizeof(first), "n,,%s", a->client_first_bare);
	a->scram = 1;
	a->st = UA_SASL_SENT_FIRST;
	return sl_pg_put_sasl_initial(out, "SCRAM-SHA-256", first, strlen(first));
}

static int
scram_continue(struct sl_pg_upauth *a, const uint8_t *data, size_t dlen, struct sl_buf *out,
	       char *err, size_t errlen)
{
	char sf[1024], final_wo_proof[512], final[700];
	const char *r, *s, *i;
	size_t rl, sl, il;
	uint8_t salt[256], client_key[32], stored_key[32], client_sig[32], proof[32],
		server_key[32];
	size_t saltlen;
	long iter;
	char iterbuf[16], *end;
	char proof64[64];
	int n;

	if (dlen == 0 || dlen >= sizeof(sf) || memchr(data, 0, dlen) != NULL)
		return SL_EPROTO;
	memcpy(sf, data, dlen);
	sf[dlen] = '\0';
	r = attr(sf, 'r', &rl);
	s = attr(sf, 's', &sl);
	i = attr(sf, 'i', &il);
	if (r == NULL || s == NULL || i == NULL || il == 0 || il >= sizeof(iterbuf))
		return SL_EPROTO;
	/* The server nonce must extend ours. */
	if (rl <= strlen(a->nonce) || strncmp(r, a->nonce, strlen(a->nonce)) != 0)
		return SL_EPROTO;
	memcpy(iterbuf, i, il);
	iterbuf[il] = '\0';
	iter = strtol(iterbuf, &end, 10);
	if (*end != '\0' || iter < 1 || iter > MAX_ITER) {
		snprintf(err, errlen, "server asked for an unacceptable SCRAM iteration count");
		return SL_EPROTO;
	}
	if (b64dec(s, sl, salt, sizeof(salt), &saltlen) != 0)
		return SL_EPROTO;
	if (PKCS5_PBKDF2_HMAC(a->password, (int)strlen(a->password), salt, (int)saltlen, (int)iter,
			      EVP_sha256(), 32, a->salted) != 1)
		return SL_EIO;
	n = snprintf(final_wo_proof, sizeof(final_wo_proof), "c=biws,r=%.*s", (int)rl, r);
	if (n < 0 || (size_t)n >= sizeof(final_wo_proof))
		return SL_EPROTO;
	n = snprintf(a->auth_message_tail, sizeof(a->auth_message_tail), "%s,%s,%s",
		     a->client_first_bare, sf, final_wo_proof);
	if (n < 0 || (size_t)n >= sizeof(a->auth_message_tail))
		return SL_EPROTO;
	hmac256(a->salted, 32, "Client Key", 10, client_key);
	SHA256(client_key, 32, stored_key);
	hmac256(stored_key, 32, a->auth_message_tail, strlen(a->auth_message_tail), client_sig);
	for (int k = 0; k < 32; k++)
		proof[k] = client_key[k] ^ client_sig[k];
	hmac256(a->salted, 32, "Server Key", 10, server_key);
	hmac256(server_key, 32, a->auth_message_tail, strlen(a->auth_message_tail), a->server_sig);
	b64enc(proof, 32, proof64);
	n = snprintf(final, sizeof(final), "%s,p=%s", final_wo_proof, proof64);
	OPENSSL_cleanse(client_key, sizeof(client_key));
	OPENSSL_cleanse(stored_key, sizeof(stored_key));
	OPENSSL_cleanse(server_key, sizeof(server_key));
	if (n < 0 || (size_t)n >= sizeof(final))
		return SL_EPROTO;
	a->st = UA_SASL_SENT_FINAL;
	return sl_pg_put_sasl_response(out, final, (size_t)n);
}

static int
scram_final(struct sl_pg_upauth *a, const uint8_t *data, size_t dlen, char *err, size_t errlen)
{
	char sf[256];
	const char *v;
	size_t vl, siglen;
	uint8_t sig[64];

	if (dlen == 0 || dlen >= sizeof(sf) || memchr(data, 0, dlen) != NULL)
		return SL_EPROTO;
	memcpy(sf, data, dlen);
	sf[dlen] = '\0';
	v = attr(sf, 'v', &vl);
	if (v == NULL || b64dec(v, vl, sig, sizeof(sig), &siglen) != 0 || siglen != 32 ||
	    CRYPTO_memcmp(sig, a->server_sig, 32) != 0) {
		snprintf(err, errlen, "upstream server signature is invalid");
		return SL_EAUTH;
	}
	a->st = UA_SASL_DONE;
	return 0;
}

static void
md5hex(const uint8_t *in, size_t n, char out[33])
{
	uint8_t d[16];
	unsigned int dl = 16;

	EVP_Digest(in, n, d, &dl, EVP_md5(), NULL);
	sl_hex(d, 16, out);
}

int
sl_pg_upauth_feed(struct sl_pg_upauth *a, const uint8_t *msg, size_t len, struct sl_buf *out,
		  char *err, size_t errlen)
{
	uint32_t code;
	const uint8_t *extra;
	size_t extralen;

	if (len < 5)
		return SL_EPROTO;
	if (a->st == UA_DONE)
		return SL_ESTATE;
	switch (msg[0]) {
	case 'E': {
		struct sl_pg_error_fields f;

		if (sl_pg_parse_error(msg, len, &f) == 0 && f.message)
			snprintf(err, errlen, "%s%s%s", f.sqlstate ? f.sqlstate : "",
				 f.sqlstate ? ": " : "", f.message);
		return SL_EAUTH;
	}
	case 'N':
	case 'v': /* NegotiateProtocolVersion: we ask for nothing optional */
		return 0;
	case 'R':
		break;
	default:
		snprintf(err, errlen, "unexpected message '%c' during login", msg[0]);
		return SL_EPROTO;
	}
	if (sl_pg_parse_auth(msg, len, &code, &extra, &extralen) != 0)
		return SL_EPROTO;
	switch (code) {
	case 0: /* AuthenticationOk */
		if (a->scram && a->st != UA_SASL_DONE) {
			snprintf(err, errlen, "server skipped SCRAM server authentication");
			return SL_EAUTH;
		}
		a->st = UA_DONE;
		return SL_PG_UPAUTH_DONE;
	case 3: /* cleartext */
		if (a->st != UA_START)
			return SL_EPROTO;
		a->st = UA_SASL_DONE;
		return sl_pg_put_password(out, a->password);
	case 5: { /* MD5 */
		char inner[33], outer[36];
		uint8_t buf[1024];
		size_t pl = strlen(a->password), ul = strlen(a->user);

		if (a->st != UA_START || extralen != 4 || pl + ul > sizeof(buf) - 4)
			return SL_EPROTO;
		memcpy(buf, a->password, pl);
		memcpy(buf + pl, a->user, ul);
		md5hex(buf, pl + ul, inner);
		memcpy(buf, inner, 32);
		memcpy(buf + 32, extra, 4);
		md5hex(buf, 36, outer + 3);
		memcpy(outer, "md5", 3);
		OPENSSL_cleanse(buf, sizeof(buf));
		a->st = UA_SASL_DONE;
		return sl_pg_put_password(out, outer);
	}
	case 10: /* SASL */
		if (a->st != UA_START)
			return SL_EPROTO;
		return scram_first(a, extra, extralen, out, err, errlen);
	case 11: /* SASLContinue */
		if (a->st != UA_SASL_SENT_FIRST)
			return SL_EPROTO;
		return scram_continue(a, extra, extralen, out, err, errlen);
	case 12: /* SASLFinal */
		if (a->st != UA_SASL_SENT_FINAL)
			return SL_EPROTO;
		return scram_final(a, extra, extralen, err, errlen);
	default:
		snprintf(err, errlen,
			 "server asked for an authentication method sluice refuses (%u)", code);
		return SL_EPOLICY;
	}
}
