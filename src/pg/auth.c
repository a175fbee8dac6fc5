/*
 * auth.c - upstream login: SCRAM-SHA-256 (RFC 5802/7677) client with a
 * mandatory server-signature check, MD5 and cleartext. Pure: the caller
 * supplies the randomness for the client nonce; no sockets, clocks or logs.
 *
 * SASLprep: the password goes into PBKDF2 as its raw bytes. For ASCII this is
 * exactly what PostgreSQL does (SASLprep leaves printable ASCII unchanged,
 * and when it fails, e.g. on control characters, both libpq and the server
 * fall back to the raw bytes). Non-ASCII passwords that SASLprep would change
 * (non-ASCII spaces, NFKC-unstable characters, soft hyphens...) will not
 * match the server's verifier; see docs/internals/pg-codec.md.
 */
#include "sluice/pg_auth.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

#include "sluice/pg_codec.h"

#define NONCE_MAX      64   /* our client nonce */
#define SRV_NONCE_MAX  512  /* the combined nonce the server returns */
#define SALT_MAX       256  /* decoded salt bytes */
#define SCRAM_MSG_MAX  2048 /* server-first / server-final message */
#define SCRAM_USER_MAX 128  /* raw username bytes (escaped: up to 3x) */
#define CBIND_MAX      64   /* tls-server-end-point: a certificate hash, up to SHA-512 */
#define GS2_PLUS       "p=tls-server-end-point,,"
#define GS2_MAX	       (sizeof(GS2_PLUS) - 1)
/* base64 of the gs2 header and the channel-binding data */
#define CBIND64_MAX	 ((GS2_MAX + CBIND_MAX + 2) / 3 * 4 + 1)
#define CLIENT_FIRST_MAX (GS2_MAX + 3 * SCRAM_USER_MAX + 3 + NONCE_MAX + 1)

/* Authentication request codes (AuthenticationXxx). */
enum {
	AUTH_OK = 0,
	AUTH_CLEARTEXT = 3,
	AUTH_MD5 = 5,
	AUTH_SASL = 10,
	AUTH_SASL_CONTINUE = 11,
	AUTH_SASL_FINAL = 12,
};

enum upauth_state {
	UA_START,	/* nothing fed yet, or only notices / NegotiateProtocolVersion */
	UA_PW_SENT,	/* cleartext or MD5 password sent; AuthenticationOk or an error next */
	UA_SCRAM_FIRST, /* client-first sent; SASLContinue (server-first) next */
	UA_SCRAM_FINAL, /* client-final sent; SASLFinal (server signature) next */
	UA_SCRAM_OK,	/* server signature verified; AuthenticationOk next */
	UA_DONE,	/* AuthenticationOk seen */
	UA_FAILED,	/* an error was returned; the object is spent */
};

struct sl_pg_upauth {
	const char *user;
	const char *password;
	enum upauth_state st;
	int started;
	unsigned allowed;
	uint32_t max_iter;
	const char *method;
	char nonce[NONCE_MAX + 1];
	char scram_user[3 * SCRAM_USER_MAX + 1]; /* escaped saslname */
	char client_first_bare[CLIENT_FIRST_MAX];
	uint8_t server_sig[32];
	/* Channel binding (RFC 5929 tls-server-end-point) */
	uint8_t cbind[CBIND_MAX]; /* the upstream certificate's hash; cbind_len 0: no TLS */
	size_t cbind_len;
	int cb_mode;	 /* SL_PG_CBIND_* */
	const char *gs2; /* the gs2 header sent in client-first */
};

static void seterr(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void
seterr(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

/* Copies peer text into dst as printable ASCII (others become '?'). */
static void
sanitize(char *dst, size_t dstlen, const char *src)
{
	size_t i = 0;

	if (dstlen == 0)
		return;
	for (; src != NULL && src[i] != '\0' && i + 1 < dstlen; i++)
		dst[i] = (src[i] >= 0x20 && src[i] < 0x7f) ? src[i] : '?';
	dst[i] = '\0';
}

/* ---------------------------------------------------------------- base64 */

static void
b64enc(const uint8_t *in, size_t n, char *out)
{
	EVP_EncodeBlock((unsigned char *)out, in, (int)n);
}

/* Strict base64 (RFC 4648 alphabet, padded, no whitespace). */
static int
b64dec(const char *in, size_t n, uint8_t *out, size_t outmax, size_t *outlen)
{
	uint8_t tmp[SCRAM_MSG_MAX];
	size_t pad = 0;
	int r;

	if (n == 0 || n % 4 != 0 || n / 4 * 3 > sizeof(tmp))
		return SL_EPROTO;
	if (in[n - 1] == '=')
		pad++;
	if (in[n - 2] == '=')
		pad++;
	for (size_t i = 0; i < n - pad; i++) {
		char c = in[i];

		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		      c == '+' || c == '/'))
			return SL_EPROTO;
	}
	r = EVP_DecodeBlock(tmp, (const unsigned char *)in, (int)n);
	if (r < 0 || (size_t)r < pad || (size_t)r - pad > outmax)
		return SL_EPROTO;
	/* Canonical only: unused low bits of the last character must be zero,
	 * so one value has exactly one spelling. */
	{
		char re[SCRAM_MSG_MAX / 3 * 4 + 8];

		b64enc(tmp, (size_t)r - pad, re);
		if (memcmp(re, in, n) != 0)
			return SL_EPROTO;
	}
	memcpy(out, tmp, (size_t)r - pad);
	*outlen = (size_t)r - pad;
	OPENSSL_cleanse(tmp, sizeof(tmp));
	return 0;
}

/* ------------------------------------------------------------- lifecycle */

int
sl_pg_upauth_new(const char *user, const char *password, const uint8_t *nonce_src, size_t nlen,
		 struct sl_pg_upauth **out)
{
	struct sl_pg_upauth *a;

	*out = NULL;
	if (user == NULL || password == NULL || nonce_src == NULL || nlen < 18 ||
	    strlen(password) > INT_MAX)
		return SL_EINVAL;
	a = calloc(1, sizeof(*a));
	if (a == NULL)
		return SL_ENOMEM;
	a->user = user;
	a->password = password;
	a->allowed = SL_PG_UPAUTH_ALLOW_ALL;
	a->max_iter = SL_PG_SCRAM_MAX_ITER;
	a->cb_mode = SL_PG_CBIND_PREFER;
	b64enc(nonce_src, 18, a->nonce);
	*out = a;
	return 0;
}

void
sl_pg_upauth_free(struct sl_pg_upauth *a)
{
	if (a == NULL)
		return;
	OPENSSL_cleanse(a, sizeof(*a));
	free(a);
}

int
sl_pg_upauth_set_allowed(struct sl_pg_upauth *a, unsigned methods)
{
	if (a->started)
		return SL_ESTATE;
	if ((methods & ~SL_PG_UPAUTH_ALLOW_ALL) != 0)
		return SL_EINVAL;
	a->allowed = methods;
	return 0;
}

int
sl_pg_upauth_set_allow_cleartext(struct sl_pg_upauth *a, int allow)
{
	unsigned m = a->allowed & ~SL_PG_UPAUTH_ALLOW_CLEARTEXT;

	return sl_pg_upauth_set_allowed(a, allow ? m | SL_PG_UPAUTH_ALLOW_CLEARTEXT : m);
}

int
sl_pg_upauth_set_max_iterations(struct sl_pg_upauth *a, uint32_t max)
{
	if (a->started)
		return SL_ESTATE;
	if (max < 1 || max > SL_PG_SCRAM_MAX_ITER)
		return SL_EINVAL;
	a->max_iter = max;
	return 0;
}

int
sl_pg_upauth_set_channel_binding(struct sl_pg_upauth *a, int mode, const uint8_t *data, size_t len)
{
	if (a->started)
		return SL_ESTATE;
	if ((mode != SL_PG_CBIND_DISABLE && mode != SL_PG_CBIND_PREFER &&
	     mode != SL_PG_CBIND_REQUIRE) ||
	    len > CBIND_MAX || (len > 0 && data == NULL))
		return SL_EINVAL;
	a->cb_mode = mode;
	a->cbind_len = mode == SL_PG_CBIND_DISABLE ? 0 : len;
	if (a->cbind_len > 0)
		memcpy(a->cbind, data, len);
	return 0;
}

int
sl_pg_upauth_set_scram_user(struct sl_pg_upauth *a, const char *name)
{
	size_t o = 0;

	if (a->started)
		return SL_ESTATE;
	if (name == NULL || strlen(name) > SCRAM_USER_MAX)
		return SL_EINVAL;
	/* RFC 5802 saslname: ',' and '=' are escaped as =2C and =3D. */
	for (const char *p = name; *p; p++) {
		if (*p == ',' || *p == '=') {
			memcpy(a->scram_user + o, *p == ',' ? "=2C" : "=3D", 3);
			o += 3;
		} else {
			a->scram_user[o++] = *p;
		}
	}
	a->scram_user[o] = '\0';
	return 0;
}

int
sl_pg_upauth_set_client_nonce(struct sl_pg_upauth *a, const char *nonce)
{
	size_t n;

	if (a->started)
		return SL_ESTATE;
	if (nonce == NULL || (n = strlen(nonce)) == 0 || n > NONCE_MAX)
		return SL_EINVAL;
	for (size_t i = 0; i < n; i++)
		if (nonce[i] < 0x21 || nonce[i] > 0x7e || nonce[i] == ',')
			return SL_EINVAL;
	memcpy(a->nonce, nonce, n + 1);
	return 0;
}

const char *
sl_pg_upauth_method(const struct sl_pg_upauth *a)
{
	return a->st == UA_DONE ? a->method : NULL;
}

/* ----------------------------------------------------------------- SCRAM */

static int
hmac256(const uint8_t *key, size_t klen, const void *msg, size_t mlen, uint8_t out[32])
{
	unsigned int olen = 32;

	return HMAC(EVP_sha256(), key, (int)klen, msg, mlen, out, &olen) != NULL && olen == 32
		       ? 0
		       : SL_EIO;
}

/*
 * Takes "<k>=value" at *p, the value running to the next ',' or end. Leaves
 * *p at that ',' (or end).
 */
static int
take_attr(const char **p, const char *end, char k, const char **v, size_t *vl)
{
	const char *s = *p, *c;

	if (end - s < 2 || s[0] != k || s[1] != '=')
		return SL_EPROTO;
	s += 2;
	c = memchr(s, ',', (size_t)(end - s));
	*v = s;
	*vl = c ? (size_t)(c - s) : (size_t)(end - s);
	*p = s + *vl;
	return 0;
}

/* Skips the ',' between attributes. */
static int
take_comma(const char **p, const char *end)
{
	if (*p >= end || **p != ',')
		return SL_EPROTO;
	(*p)++;
	return 0;
}

/* Copies a SASL payload into a NUL-terminated buffer; NULs inside are refused. */
static int
copy_payload(const uint8_t *data, size_t dlen, char *dst, size_t dstlen)
{
	if (dlen == 0 || dlen >= dstlen || memchr(data, 0, dlen) != NULL)
		return SL_EPROTO;
	memcpy(dst, data, dlen);
	dst[dlen] = '\0';
	return 0;
}

/* AuthenticationSASL: a list of NUL-terminated mechanism names ending with an empty one. */
static int
scram_first(struct sl_pg_upauth *a, const uint8_t *mechs, size_t mlen, struct sl_buf *out,
	    char *err, size_t errlen)
{
	int found = 0, plus = 0, ended = 0;
	const char *mech = "SCRAM-SHA-256";
	char first[CLIENT_FIRST_MAX + 8];
	size_t off = 0;
	int n;

	while (off < mlen) {
		const char *m = (const char *)mechs + off;
		size_t l = strnlen(m, mlen - off);

		if (l == mlen - off)
			break; /* no NUL: malformed */
		off += l + 1;
		if (l == 0) {
			ended = 1;
			break;
		}
		if (strcmp(m, "SCRAM-SHA-256") == 0)
			found = 1;
		else if (strcmp(m, "SCRAM-SHA-256-PLUS") == 0)
			plus = 1;
	}
	if (!ended || off != mlen) {
		seterr(err, errlen, "malformed SASL mechanism list from upstream");
		return SL_EPROTO;
	}
	/* Channel binding, as libpq does it: SCRAM-SHA-256-PLUS whenever the
	 * connection is TLS and the server offers it. Bound to the server's
	 * certificate, the proof cannot be relayed by someone who terminates
	 * the TLS connection in between (tls: require checks no certificate).
	 * "y,,": sluice could bind but the server did not offer it (a server
	 * that did, and sees "y", knows the offer was stripped). */
	if (a->cbind_len > 0 && plus) {
		mech = "SCRAM-SHA-256-PLUS";
		a->gs2 = GS2_PLUS;
		a->method = "scram-sha-256-plus";
	} else if (a->cb_mode == SL_PG_CBIND_REQUIRE) {
		seterr(err, errlen, "%s",
		       a->cbind_len == 0
			       ? "channel_binding: require needs TLS to the upstream server "
				 "with a certificate whose hash can be bound"
			       : "the upstream server does not offer SCRAM-SHA-256-PLUS, which "
				 "channel_binding: require asks for");
		return SL_EPOLICY;
	} else if (!found) {
		seterr(err, errlen, "%s",
		       plus ? "upstream requires SCRAM channel binding (SCRAM-SHA-256-PLUS), "
			      "which needs TLS to it"
			    : "upstream offers no SASL mechanism sluice supports");
		return SL_EPOLICY;
	} else {
		a->gs2 = a->cbind_len > 0 ? "y,," : "n,,";
		a->method = "scram-sha-256";
	}
	n = snprintf(a->client_first_bare, sizeof(a->client_first_bare), "n=%s,r=%s", a->scram_user,
		     a->nonce);
	if (n < 0 || (size_t)n >= sizeof(a->client_first_bare))
		return SL_EINVAL;
	/* gs2 header, no authzid */
	n = snprintf(first, sizeof(first), "%s%s", a->gs2, a->client_first_bare);
	if (n < 0 || (size_t)n >= sizeof(first))
		return SL_EINVAL;
	a->st = UA_SCRAM_FIRST;
	return sl_pg_put_sasl_initial(out, mech, first, (size_t)n);
}

struct server_first {
	const char *nonce;
	size_t nonce_len;
	uint8_t salt[SALT_MAX];
	size_t salt_len;
	uint32_t iter;
};

/* server-first-message = [reserved-mext ","] nonce "," salt "," iteration-count ["," ext] */
static int
parse_server_first(const struct sl_pg_upauth *a, const char *sf, size_t n, struct server_first *o,
		   char *err, size_t errlen)
{
	const char *p = sf, *end = sf + n, *v;
	size_t vl, cl = strlen(a->nonce);
	uint64_t it = 0;

	if (n >= 2 && sf[0] == 'm' && sf[1] == '=') {
		seterr(err, errlen, "upstream requires an unsupported SCRAM extension");
		return SL_EPROTO;
	}
	if (take_attr(&p, end, 'r', &o->nonce, &o->nonce_len) != 0 || take_comma(&p, end) != 0)
		goto bad;
	/* The server's nonce must extend ours, in printable ASCII. */
	if (o->nonce_len <= cl || o->nonce_len > SRV_NONCE_MAX ||
	    memcmp(o->nonce, a->nonce, cl) != 0) {
		seterr(err, errlen, "upstream SCRAM nonce does not extend the client nonce");
		return SL_EPROTO;
	}
	for (size_t i = 0; i < o->nonce_len; i++)
		if (o->nonce[i] < 0x21 || o->nonce[i] > 0x7e)
			goto bad;
	if (take_attr(&p, end, 's', &v, &vl) != 0 || take_comma(&p, end) != 0 ||
	    b64dec(v, vl, o->salt, sizeof(o->salt), &o->salt_len) != 0 || o->salt_len == 0)
		goto bad;
	if (take_attr(&p, end, 'i', &v, &vl) != 0 || vl == 0 || vl > 10)
		goto bad;
	for (size_t i = 0; i < vl; i++) {
		if (v[i] < '0' || v[i] > '9')
			goto bad;
		it = it * 10 + (uint64_t)(v[i] - '0');
	}
	if (it < 1 || it > a->max_iter) {
		seterr(err, errlen, "upstream asked for an unacceptable SCRAM iteration count");
		return SL_EPROTO;
	}
	o->iter = (uint32_t)it;
	/* Optional extensions follow a comma; the server-first message is
	 * hashed whole into AuthMessage, so they need no further parsing. */
	if (p != end && (take_comma(&p, end) != 0 || p == end))
		goto bad;
	return 0;
bad:
	seterr(err, errlen, "malformed SCRAM server-first message from upstream");
	return SL_EPROTO;
}

static int
scram_continue(struct sl_pg_upauth *a, const uint8_t *data, size_t dlen, struct sl_buf *out,
	       char *err, size_t errlen)
{
	char sf[SCRAM_MSG_MAX], wo_proof[8 + CBIND64_MAX + SRV_NONCE_MAX];
	char final[sizeof(wo_proof) + 48], c64[CBIND64_MAX];
	uint8_t cb[GS2_MAX + CBIND_MAX];
	size_t cbl = strlen(a->gs2);
	char authmsg[CLIENT_FIRST_MAX + SCRAM_MSG_MAX + sizeof(wo_proof) + 2];
	uint8_t salted[32], client_key[32], stored_key[32], client_sig[32], proof[32];
	uint8_t server_key[32];
	char proof64[48];
	struct server_first s;
	int n, r;

	if (copy_payload(data, dlen, sf, sizeof(sf)) != 0) {
		seterr(err, errlen, "malformed SCRAM server-first message from upstream");
		return SL_EPROTO;
	}
	if ((r = parse_server_first(a, sf, dlen, &s, err, errlen)) != 0)
		return r;
	/* c=: base64 of the gs2 header we sent ("n,," is "biws"), followed
	 * by the certificate hash when we bound to it */
	memcpy(cb, a->gs2, cbl);
	if (a->gs2[0] == 'p') {
		memcpy(cb + cbl, a->cbind, a->cbind_len);
		cbl += a->cbind_len;
	}
	b64enc(cb, cbl, c64);
	n = snprintf(wo_proof, sizeof(wo_proof), "c=%s,r=%.*s", c64, (int)s.nonce_len, s.nonce);
	if (n < 0 || (size_t)n >= sizeof(wo_proof))
		return SL_EPROTO;
	n = snprintf(authmsg, sizeof(authmsg), "%s,%s,%s", a->client_first_bare, sf, wo_proof);
	if (n < 0 || (size_t)n >= sizeof(authmsg))
		return SL_EPROTO;
	r = SL_EIO;
	if (PKCS5_PBKDF2_HMAC(a->password, (int)strlen(a->password), s.salt, (int)s.salt_len,
			      (int)s.iter, EVP_sha256(), 32, salted) != 1 ||
	    hmac256(salted, 32, "Client Key", 10, client_key) != 0 ||
	    SHA256(client_key, 32, stored_key) == NULL ||
	    hmac256(stored_key, 32, authmsg, (size_t)n, client_sig) != 0 ||
	    hmac256(salted, 32, "Server Key", 10, server_key) != 0 ||
	    hmac256(server_key, 32, authmsg, (size_t)n, a->server_sig) != 0) {
		seterr(err, errlen, "SCRAM computation failed");
		goto out;
	}
	for (int k = 0; k < 32; k++)
		proof[k] = client_key[k] ^ client_sig[k];
	b64enc(proof, 32, proof64);
	n = snprintf(final, sizeof(final), "%s,p=%s", wo_proof, proof64);
	if (n < 0 || (size_t)n >= sizeof(final)) {
		r = SL_EPROTO;
		goto out;
	}
	a->st = UA_SCRAM_FINAL;
	r = sl_pg_put_sasl_response(out, final, (size_t)n);
out:
	OPENSSL_cleanse(salted, sizeof(salted));
	OPENSSL_cleanse(client_key, sizeof(client_key));
	OPENSSL_cleanse(stored_key, sizeof(stored_key));
	OPENSSL_cleanse(client_sig, sizeof(client_sig));
	OPENSSL_cleanse(server_key, sizeof(server_key));
	OPENSSL_cleanse(proof, sizeof(proof));
	OPENSSL_cleanse(proof64, sizeof(proof64));
	OPENSSL_cleanse(final, sizeof(final));
	return r;
}

/* server-final-message = (server-error / verifier) ["," extensions] */
static int
scram_final(struct sl_pg_upauth *a, const uint8_t *data, size_t dlen, char *err, size_t errlen)
{
	char sf[SCRAM_MSG_MAX];
	const char *p = sf, *end, *v;
	size_t vl, siglen;
	uint8_t sig[64];

	if (copy_payload(data, dlen, sf, sizeof(sf)) != 0)
		goto bad;
	end = sf + dlen;
	if (take_attr(&p, end, 'e', &v, &vl) == 0) {
		char e[64];

		sf[(size_t)(v - sf) + vl] = '\0';
		sanitize(e, sizeof(e), v);
		seterr(err, errlen, "upstream SCRAM error: %s", e);
		return SL_EAUTH;
	}
	if (take_attr(&p, end, 'v', &v, &vl) != 0 || (p != end && (p + 1 == end)))
		goto bad;
	if (b64dec(v, vl, sig, sizeof(sig), &siglen) != 0 || siglen != 32 ||
	    CRYPTO_memcmp(sig, a->server_sig, 32) != 0)
		goto bad;
	a->st = UA_SCRAM_OK;
	return 0;
bad:
	seterr(err, errlen, "upstream SCRAM server signature is missing or invalid");
	return SL_EAUTH;
}

/* ------------------------------------------------------------------- MD5 */

/* "md5" + hex(md5(hex(md5(password || user)) || salt)) into out[36]. */
static int
md5_password(const char *pw, const char *user, const uint8_t salt[4], char out[36])
{
	EVP_MD_CTX *c = EVP_MD_CTX_new();
	uint8_t d[16];
	char inner[33];
	int r = SL_EIO;

	if (c == NULL)
		return SL_ENOMEM;
	if (EVP_DigestInit_ex(c, EVP_md5(), NULL) != 1 ||
	    EVP_DigestUpdate(c, pw, strlen(pw)) != 1 ||
	    EVP_DigestUpdate(c, user, strlen(user)) != 1 || EVP_DigestFinal_ex(c, d, NULL) != 1)
		goto out;
	sl_hex(d, 16, inner);
	if (EVP_DigestInit_ex(c, EVP_md5(), NULL) != 1 || EVP_DigestUpdate(c, inner, 32) != 1 ||
	    EVP_DigestUpdate(c, salt, 4) != 1 || EVP_DigestFinal_ex(c, d, NULL) != 1)
		goto out;
	memcpy(out, "md5", 3);
	sl_hex(d, 16, out + 3);
	r = 0;
out:
	OPENSSL_cleanse(d, sizeof(d));
	OPENSSL_cleanse(inner, sizeof(inner));
	EVP_MD_CTX_free(c);
	return r;
}

/* ------------------------------------------------------------------ feed */

static int
on_auth_request(struct sl_pg_upauth *a, uint32_t code, const uint8_t *extra, size_t extralen,
		struct sl_buf *out, char *err, size_t errlen)
{
	if (a->cb_mode == SL_PG_CBIND_REQUIRE && a->st == UA_START &&
	    (code == AUTH_OK || code == AUTH_CLEARTEXT || code == AUTH_MD5)) {
		seterr(err, errlen,
		       "the upstream server asked for %s; channel_binding: require accepts "
		       "SCRAM-SHA-256-PLUS only",
		       code == AUTH_OK	  ? "no authentication"
		       : code == AUTH_MD5 ? "MD5 authentication"
					  : "a cleartext password");
		return SL_EPOLICY;
	}
	switch (code) {
	case AUTH_OK:
		if (a->st == UA_SCRAM_FIRST || a->st == UA_SCRAM_FINAL) {
			seterr(err, errlen, "upstream skipped SCRAM server authentication");
			return SL_EAUTH;
		}
		if (a->st == UA_START) {
			if (!(a->allowed & SL_PG_UPAUTH_ALLOW_TRUST)) {
				seterr(err, errlen,
				       "upstream accepted the login without "
				       "authentication, which is not allowed");
				return SL_EPOLICY;
			}
			a->method = "trust";
		}
		if (extralen != 0)
			break;
		a->st = UA_DONE;
		return SL_PG_UPAUTH_DONE;
	case AUTH_CLEARTEXT:
		if (a->st != UA_START || extralen != 0)
			break;
		if (!(a->allowed & SL_PG_UPAUTH_ALLOW_CLEARTEXT)) {
			seterr(err, errlen,
			       "the upstream server asked for the password in cleartext; "
			       "sluice sends it so only over tls: verify-full "
			       "(or with allow_cleartext_password: true on the connection)");
			return SL_EPOLICY;
		}
		a->st = UA_PW_SENT;
		a->method = "password";
		return sl_pg_put_password(out, a->password);
	case AUTH_MD5: {
		char pw[36];
		int r;

		if (a->st != UA_START || extralen != 4)
			break;
		if (!(a->allowed & SL_PG_UPAUTH_ALLOW_MD5)) {
			seterr(err, errlen, "upstream asked for MD5 authentication, not allowed");
			return SL_EPOLICY;
		}
		if ((r = md5_password(a->password, a->user, extra, pw)) != 0) {
			seterr(err, errlen, "MD5 computation failed");
			return r;
		}
		a->st = UA_PW_SENT;
		a->method = "md5";
		r = sl_pg_put_password(out, pw);
		OPENSSL_cleanse(pw, sizeof(pw));
		return r;
	}
	case AUTH_SASL:
		if (a->st != UA_START)
			break;
		return scram_first(a, extra, extralen, out, err, errlen);
	case AUTH_SASL_CONTINUE:
		if (a->st != UA_SCRAM_FIRST)
			break;
		return scram_continue(a, extra, extralen, out, err, errlen);
	case AUTH_SASL_FINAL:
		if (a->st != UA_SCRAM_FINAL)
			break;
		return scram_final(a, extra, extralen, err, errlen);
	default:
		/* 2 Kerberos, 6 SCM, 7/8 GSS, 9 SSPI, anything newer. */
		seterr(err, errlen,
		       "upstream asked for an authentication method sluice refuses (%u)", code);
		return SL_EPOLICY;
	}
	seterr(err, errlen, "unexpected authentication request %u from upstream", code);
	return SL_EPROTO;
}

int
sl_pg_upauth_feed(struct sl_pg_upauth *a, const uint8_t *msg, size_t len, struct sl_buf *out,
		  char *err, size_t errlen)
{
	uint32_t code, a1, a2;
	const uint8_t *extra;
	size_t extralen;
	int r;

	if (err != NULL && errlen > 0)
		err[0] = '\0';
	if (a->st == UA_DONE || a->st == UA_FAILED) {
		seterr(err, errlen, "login already finished");
		return SL_ESTATE;
	}
	a->started = 1;
	if (len < 5) {
		r = SL_EPROTO;
		seterr(err, errlen, "truncated message from upstream during login");
		goto out;
	}
	switch (msg[0]) {
	case 'E': {
		struct sl_pg_error_fields f;
		char m[200], c[8];

		r = SL_EAUTH;
		if (sl_pg_parse_error(msg, len, &f) != 0) {
			seterr(err, errlen, "upstream refused the login (malformed error)");
			goto out;
		}
		sanitize(c, sizeof(c), f.sqlstate ? f.sqlstate : "?????");
		sanitize(m, sizeof(m), f.message ? f.message : "");
		seterr(err, errlen, "upstream refused the login: %s: %s", c, m);
		goto out;
	}
	case 'N':
		r = sl_pg_parse_error(msg, len, &(struct sl_pg_error_fields){0});
		if (r != 0)
			seterr(err, errlen, "malformed notice from upstream during login");
		goto out;
	case 'v':
		/* We ask for 3.0 and no options, so this is informational; it
		 * may only come before the first authentication request. */
		if (a->st != UA_START || sl_pg_parse_negotiate_version(msg, len, &a1, &a2) != 0) {
			r = SL_EPROTO;
			seterr(err, errlen, "unexpected NegotiateProtocolVersion from upstream");
		} else {
			r = 0;
		}
		goto out;
	case 'R':
		break;
	default:
		r = SL_EPROTO;
		seterr(err, errlen, "unexpected message type 0x%02x from upstream during login",
		       msg[0]);
		goto out;
	}
	if (sl_pg_parse_auth(msg, len, &code, &extra, &extralen) != 0) {
		r = SL_EPROTO;
		seterr(err, errlen, "malformed authentication request from upstream");
		goto out;
	}
	r = on_auth_request(a, code, extra, extralen, out, err, errlen);
out:
	if (r < 0)
		a->st = UA_FAILED;
	return r;
}
