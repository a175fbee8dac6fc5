/*
 * jwt.c - JWT verification on OpenSSL EVP + jansson. The algorithm comes
 * from the key (kty/crv), never from the token: a header that names another
 * algorithm is refused, so alg:none and HS256-with-the-public-key tokens
 * can never verify.
 */
#include "sluice/identity.h"

#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/sha.h>

#include "identity_internal.h"
#include "sluice/core.h"

#define MAX_GROUPS    256
#define MAX_GROUP_LEN 256
#define CACHE_SLOTS   4096

void
sl_identity_fini(struct sl_identity *id)
{
	if (id == NULL)
		return;
	free(id->subject);
	free(id->issuer);
	for (size_t i = 0; i < id->ngroups; i++)
		free(id->groups[i]);
	free(id->groups);
	memset(id, 0, sizeof(*id));
}

int
sl_identity_copy(struct sl_identity *dst, const struct sl_identity *src)
{
	memset(dst, 0, sizeof(*dst));
	dst->subject = strdup(src->subject ? src->subject : "");
	dst->issuer = strdup(src->issuer ? src->issuer : "");
	dst->groups = calloc(src->ngroups + 1, sizeof(char *));
	if (dst->subject == NULL || dst->issuer == NULL || dst->groups == NULL)
		goto fail;
	for (size_t i = 0; i < src->ngroups; i++) {
		dst->groups[i] = strdup(src->groups[i]);
		if (dst->groups[i] == NULL)
			goto fail;
		dst->ngroups++;
	}
	dst->exp = src->exp;
	memcpy(dst->token_sha256, src->token_sha256, sizeof(dst->token_sha256));
	return 0;
fail:
	sl_identity_fini(dst);
	return SL_ENOMEM;
}

int
sl_identity_in_group(const struct sl_identity *id, const char *group)
{
	for (size_t i = 0; i < id->ngroups; i++)
		if (strcmp(id->groups[i], group) == 0)
			return 1;
	return 0;
}

/* ------------------------------------------------------------ base64url */

int
sl_b64url_decode(const char *in, size_t n, uint8_t *out, size_t outmax, size_t *outlen)
{
	uint32_t acc = 0;
	int bits = 0;
	size_t o = 0;

	for (size_t i = 0; i < n; i++) {
		int v;
		char c = in[i];

		if (c >= 'A' && c <= 'Z')
			v = c - 'A';
		else if (c >= 'a' && c <= 'z')
			v = c - 'a' + 26;
		else if (c >= '0' && c <= '9')
			v = c - '0' + 52;
		else if (c == '-')
			v = 62;
		else if (c == '_')
			v = 63;
		else
			return SL_EAUTH;
		acc = (acc << 6) | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			if (o >= outmax)
				return SL_ETOOBIG;
			out[o++] = (uint8_t)(acc >> bits);
		}
	}
	/* Leftover bits must be zero and fewer than a byte (canonical form). */
	if (bits >= 6 || (acc & ((1u << bits) - 1)) != 0)
		return SL_EAUTH;
	*outlen = o;
	return 0;
}

void
sl_b64url_encode(const uint8_t *in, size_t n, char *out)
{
	static const char tbl[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	size_t o = 0, i;

	for (i = 0; i + 2 < n; i += 3) {
		uint32_t v = ((uint32_t)in[i] << 16) | ((uint32_t)in[i + 1] << 8) | in[i + 2];

		out[o++] = tbl[(v >> 18) & 63];
		out[o++] = tbl[(v >> 12) & 63];
		out[o++] = tbl[(v >> 6) & 63];
		out[o++] = tbl[v & 63];
	}
	if (n - i == 1) {
		uint32_t v = (uint32_t)in[i] << 16;

		out[o++] = tbl[(v >> 18) & 63];
		out[o++] = tbl[(v >> 12) & 63];
	} else if (n - i == 2) {
		uint32_t v = ((uint32_t)in[i] << 16) | ((uint32_t)in[i + 1] << 8);

		out[o++] = tbl[(v >> 18) & 63];
		out[o++] = tbl[(v >> 12) & 63];
		out[o++] = tbl[(v >> 6) & 63];
	}
	out[o] = '\0';
}

/* ------------------------------------------------------------ JWK -> key */

static int
b64_field(json_t *jwk, const char *name, uint8_t *out, size_t max, size_t *len)
{
	const char *s = json_string_value(json_object_get(jwk, name));

	if (s == NULL)
		return SL_EINVAL;
	return sl_b64url_decode(s, strlen(s), out, max, len);
}

static EVP_PKEY *
jwk_rsa(json_t *jwk)
{
	uint8_t n[1024], e[16];
	size_t nl, el;
	BIGNUM *bn = NULL, *be = NULL;
	OSSL_PARAM_BLD *bld = NULL;
	OSSL_PARAM *params = NULL;
	EVP_PKEY_CTX *ctx = NULL;
	EVP_PKEY *k = NULL;

	if (b64_field(jwk, "n", n, sizeof(n), &nl) != 0 ||
	    b64_field(jwk, "e", e, sizeof(e), &el) != 0)
		return NULL;
	if (nl < 256) /* RSA keys under 2048 bits are refused */
		return NULL;
	bn = BN_bin2bn(n, (int)nl, NULL);
	be = BN_bin2bn(e, (int)el, NULL);
	bld = OSSL_PARAM_BLD_new();
	if (bn == NULL || be == NULL || bld == NULL ||
	    !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn) ||
	    !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be))
		goto out;
	params = OSSL_PARAM_BLD_to_param(bld);
	ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
	if (params == NULL || ctx == NULL || EVP_PKEY_fromdata_init(ctx) != 1 ||
	    EVP_PKEY_fromdata(ctx, &k, EVP_PKEY_PUBLIC_KEY, params) != 1)
		k = NULL;
out:
	EVP_PKEY_CTX_free(ctx);
	OSSL_PARAM_free(params);
	OSSL_PARAM_BLD_free(bld);
	BN_free(bn);
	BN_free(be);
	return k;
}

static EVP_PKEY *
jwk_ec(json_t *jwk)
{
	uint8_t x[66], y[66], pub[65];
	size_t xl, yl;
	OSSL_PARAM params[3];
	EVP_PKEY_CTX *ctx = NULL;
	EVP_PKEY *k = NULL;
	const char *crv = json_string_value(json_object_get(jwk, "crv"));

	if (crv == NULL || strcmp(crv, "P-256") != 0)
		return NULL;
	if (b64_field(jwk, "x", x, sizeof(x), &xl) != 0 ||
	    b64_field(jwk, "y", y, sizeof(y), &yl) != 0 || xl != 32 || yl != 32)
		return NULL;
	pub[0] = 4;
	memcpy(pub + 1, x, 32);
	memcpy(pub + 33, y, 32);
	params[0] = OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME,
						     (char *)"prime256v1", 0);
	params[1] = OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, pub, sizeof(pub));
	params[2] = OSSL_PARAM_construct_end();
	ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
	if (ctx == NULL || EVP_PKEY_fromdata_init(ctx) != 1 ||
	    EVP_PKEY_fromdata(ctx, &k, EVP_PKEY_PUBLIC_KEY, params) != 1)
		k = NULL;
	EVP_PKEY_CTX_free(ctx);
	return k;
}

static EVP_PKEY *
jwk_okp(json_t *jwk)
{
	uint8_t x[64];
	size_t xl;
	const char *crv = json_string_value(json_object_get(jwk, "crv"));

	if (crv == NULL || strcmp(crv, "Ed25519") != 0)
		return NULL;
	if (b64_field(jwk, "x", x, sizeof(x), &xl) != 0 || xl != 32)
		return NULL;
	return EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, x, 32);
}

void
sl_keyset_free(struct sl_keyset *ks)
{
	if (ks == NULL)
		return;
	for (size_t i = 0; i < ks->n; i++)
		EVP_PKEY_free(ks->keys[i].pkey);
	free(ks->keys);
	free(ks);
}

int
sl_keyset_parse(const char *json, size_t len, struct sl_keyset **out)
{
	json_error_t je;
	json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je), *keys;
	struct sl_keyset *ks;
	size_t i;

	*out = NULL;
	if (root == NULL)
		return SL_EINVAL;
	keys = json_object_get(root, "keys");
	if (!json_is_array(keys) || json_array_size(keys) > 64) {
		json_decref(root);
		return SL_EINVAL;
	}
	ks = calloc(1, sizeof(*ks));
	if (ks == NULL ||
	    (ks->keys = calloc(json_array_size(keys) + 1, sizeof(*ks->keys))) == NULL) {
		free(ks);
		json_decref(root);
		return SL_ENOMEM;
	}
	for (i = 0; i < json_array_size(keys); i++) {
		json_t *jwk = json_array_get(keys, i);
		const char *kty = json_string_value(json_object_get(jwk, "kty"));
		const char *kid = json_string_value(json_object_get(jwk, "kid"));
		const char *alg = json_string_value(json_object_get(jwk, "alg"));
		const char *use = json_string_value(json_object_get(jwk, "use"));
		struct sl_jwk *k = &ks->keys[ks->n];
		const char *want;

		if (kty == NULL || (use != NULL && strcmp(use, "sig") != 0))
			continue;
		if (strcmp(kty, "RSA") == 0) {
			k->pkey = jwk_rsa(jwk);
			want = "RS256";
		} else if (strcmp(kty, "EC") == 0) {
			k->pkey = jwk_ec(jwk);
			want = "ES256";
		} else if (strcmp(kty, "OKP") == 0) {
			k->pkey = jwk_okp(jwk);
			want = "EdDSA";
		} else {
			continue; /* "oct" and anything else: never for verification */
		}
		if (k->pkey == NULL)
			continue;
		if (alg != NULL && strcmp(alg, want) != 0) {
			/* A key that says it is for another algorithm is not used. */
			EVP_PKEY_free(k->pkey);
			k->pkey = NULL;
			continue;
		}
		snprintf(k->alg, sizeof(k->alg), "%s", want);
		snprintf(k->kid, sizeof(k->kid), "%s", kid ? kid : "");
		ks->n++;
	}
	json_decref(root);
	*out = ks;
	return 0;
}

/* ------------------------------------------------------------ verification */

static int
verify_sig(const struct sl_jwk *k, const uint8_t *msg, size_t mlen, const uint8_t *sig, size_t slen)
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	int ok = 0;

	if (md == NULL)
		return 0;
	if (strcmp(k->alg, "EdDSA") == 0) {
		ok = slen == 64 && EVP_DigestVerifyInit(md, NULL, NULL, NULL, k->pkey) == 1 &&
		     EVP_DigestVerify(md, sig, slen, msg, mlen) == 1;
	} else if (strcmp(k->alg, "RS256") == 0) {
		ok = EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, k->pkey) == 1 &&
		     EVP_DigestVerify(md, sig, slen, msg, mlen) == 1;
	} else if (strcmp(k->alg, "ES256") == 0 && slen == 64) {
		ECDSA_SIG *es = ECDSA_SIG_new();
		BIGNUM *r = BN_bin2bn(sig, 32, NULL), *s = BN_bin2bn(sig + 32, 32, NULL);
		unsigned char *der = NULL;
		int dl;

		if (es != NULL && r != NULL && s != NULL && ECDSA_SIG_set0(es, r, s) == 1) {
			r = s = NULL;
			dl = i2d_ECDSA_SIG(es, &der);
			ok = dl > 0 &&
			     EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, k->pkey) == 1 &&
			     EVP_DigestVerify(md, der, (size_t)dl, msg, mlen) == 1;
		}
		BN_free(r);
		BN_free(s);
		ECDSA_SIG_free(es);
		OPENSSL_free(der);
	}
	EVP_MD_CTX_free(md);
	return ok;
}

static json_t *
decode_part(const char *p, size_t n)
{
	uint8_t buf[SL_JWT_MAX];
	size_t len;

	if (n == 0 || sl_b64url_decode(p, n, buf, sizeof(buf), &len) != 0)
		return NULL;
	return json_loadb((const char *)buf, len, JSON_REJECT_DUPLICATES, NULL);
}

/* Claim lookup: a literal key first (URL-like names contain dots), then a
 * dotted path. */
static json_t *
claim(json_t *payload, const char *name)
{
	json_t *v = json_object_get(payload, name);
	char path[256], *save = NULL, *tok;

	if (v != NULL || strchr(name, '.') == NULL)
		return v;
	snprintf(path, sizeof(path), "%s", name);
	v = payload;
	for (tok = strtok_r(path, ".", &save); tok && v; tok = strtok_r(NULL, ".", &save))
		v = json_object_get(v, tok);
	return v;
}

static int
aud_ok(json_t *aud, const char *want)
{
	size_t i;
	json_t *v;

	if (json_is_string(aud))
		return strcmp(json_string_value(aud), want) == 0;
	if (!json_is_array(aud))
		return 0;
	json_array_foreach(aud, i, v) if (json_is_string(v) &&
					  strcmp(json_string_value(v), want) == 0) return 1;
	return 0;
}

#define FAIL(code, msg)                                                                            \
	do {                                                                                       \
		snprintf(err, errlen, "%s", msg);                                                  \
		r = code;                                                                          \
		goto out;                                                                          \
	} while (0)

/* A NumericDate (RFC 7519): seconds since the epoch, an integer or a
 * number with a fraction (truncated), within 0 .. year 10000. Anything else
 * (huge, negative, not a number) is refused rather than cast. */
static int
numeric_date(const json_t *v, int64_t *out)
{
	const int64_t max = 253402300799; /* 9999-12-31T23:59:59Z */
	double d;

	if (json_is_integer(v)) {
		json_int_t i = json_integer_value(v);

		if (i < 0 || i > max)
			return -1;
		*out = (int64_t)i;
		return 0;
	}
	if (!json_is_real(v))
		return -1;
	d = json_real_value(v);
	if (!(d >= 0.0 && d <= (double)max)) /* also false for NaN */
		return -1;
	*out = (int64_t)d;
	return 0;
}

/* A group: a string of at most MAX_GROUP_LEN bytes with no NUL (a
 * "dba\u0000x" group must not become "dba"). */
static int
group_ok(const json_t *g)
{
	return json_is_string(g) && json_string_length(g) <= MAX_GROUP_LEN &&
	       strlen(json_string_value(g)) == json_string_length(g);
}

int
sl_jwt_verify_with(struct sl_idp *idp, const char *token, size_t len, int64_t now,
		   struct sl_identity *out, char *err, size_t errlen)
{
	const char *d1, *d2;
	json_t *hdr = NULL, *pl = NULL, *v;
	const char *alg, *kid, *iss;
	const struct sl_issuer *is = NULL;
	const struct sl_jwk *key = NULL;
	uint8_t sig[1024];
	size_t siglen;
	int r = SL_EAUTH;
	int64_t exp, t = 0;

	memset(out, 0, sizeof(*out));
	if (len == 0 || len > SL_JWT_MAX)
		FAIL(SL_EAUTH, "malformed token");
	d1 = memchr(token, '.', len);
	d2 = d1 ? memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - token)) : NULL;
	if (d1 == NULL || d2 == NULL || memchr(d2 + 1, '.', len - (size_t)(d2 + 1 - token)) != NULL)
		FAIL(SL_EAUTH, "malformed token");
	hdr = decode_part(token, (size_t)(d1 - token));
	pl = decode_part(d1 + 1, (size_t)(d2 - d1 - 1));
	if (!json_is_object(hdr) || !json_is_object(pl))
		FAIL(SL_EAUTH, "malformed token");
	if (json_object_get(hdr, "crit") != NULL)
		FAIL(SL_EAUTH, "token has critical header parameters");
	alg = json_string_value(json_object_get(hdr, "alg"));
	kid = json_string_value(json_object_get(hdr, "kid"));
	if (alg == NULL ||
	    (strcmp(alg, "RS256") != 0 && strcmp(alg, "ES256") != 0 && strcmp(alg, "EdDSA") != 0))
		FAIL(SL_EAUTH, "algorithm not allowed");
	iss = json_string_value(json_object_get(pl, "iss"));
	if (iss == NULL)
		FAIL(SL_EAUTH, "token has no issuer");
	is = sl_idp_issuer(idp, iss);
	if (is == NULL)
		FAIL(SL_EAUTH, "issuer not trusted");
	if (sl_b64url_decode(d2 + 1, len - (size_t)(d2 + 1 - token), sig, sizeof(sig), &siglen) !=
	    0)
		FAIL(SL_EAUTH, "malformed signature");
	pthread_rwlock_rdlock(&idp->lock);
	{
		const struct sl_keyset *ks = is->keys;
		size_t candidates = 0;

		for (size_t i = 0; ks && i < ks->n; i++) {
			if (kid != NULL && strcmp(ks->keys[i].kid, kid) != 0)
				continue;
			candidates++;
			key = &ks->keys[i];
		}
		if (key == NULL) {
			pthread_rwlock_unlock(&idp->lock);
			FAIL(kid ? SL_ENOKEY : SL_EAUTH,
			     kid ? "signing key unknown" : "no signing key");
		}
		if (kid == NULL && candidates > 1) {
			pthread_rwlock_unlock(&idp->lock);
			FAIL(SL_EAUTH, "token has no kid and the issuer has several keys");
		}
		if (strcmp(key->alg, alg) != 0) {
			pthread_rwlock_unlock(&idp->lock);
			FAIL(SL_EAUTH, "algorithm does not match the key");
		}
		if (!verify_sig(key, (const uint8_t *)token, (size_t)(d2 - token), sig, siglen)) {
			pthread_rwlock_unlock(&idp->lock);
			FAIL(SL_EAUTH, "signature invalid");
		}
	}
	pthread_rwlock_unlock(&idp->lock);
	if (!aud_ok(json_object_get(pl, "aud"), is->audience))
		FAIL(SL_EAUTH, "audience mismatch");
	v = json_object_get(pl, "exp");
	if (v == NULL)
		FAIL(SL_EAUTH, "token has no expiry");
	if (numeric_date(v, &exp) != 0)
		FAIL(SL_EAUTH, "token has an invalid exp");
	if (now > exp + is->leeway_s)
		FAIL(SL_EEXPIRED, "token expired");
	v = json_object_get(pl, "nbf");
	if (v != NULL && numeric_date(v, &t) != 0)
		FAIL(SL_EAUTH, "token has an invalid nbf");
	if (v != NULL && now + is->leeway_s < t)
		FAIL(SL_EEXPIRED, "token not yet valid");
	v = json_object_get(pl, "iat");
	if (v != NULL && numeric_date(v, &t) != 0)
		FAIL(SL_EAUTH, "token has an invalid iat");
	if (v != NULL && now + is->leeway_s < t)
		FAIL(SL_EAUTH, "token issued in the future");
	v = claim(pl, is->subject_claim);
	if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) > 255 ||
	    strlen(json_string_value(v)) != json_string_length(v))
		FAIL(SL_EAUTH, "token has no subject");
	out->subject = strdup(json_string_value(v));
	out->issuer = strdup(is->issuer);
	out->exp = exp;
	v = claim(pl, is->groups_claim);
	out->groups = calloc(MAX_GROUPS + 1, sizeof(char *));
	if (out->subject == NULL || out->issuer == NULL || out->groups == NULL)
		FAIL(SL_ENOMEM, "out of memory");
	/* Policy keys on groups: a groups claim that is not a string or an
	 * array of plain strings is refused, never read in part. */
	if (json_is_string(v)) {
		if (!group_ok(v))
			FAIL(SL_EAUTH, "token has an invalid group");
		if ((out->groups[out->ngroups] = strdup(json_string_value(v))) == NULL)
			FAIL(SL_ENOMEM, "out of memory");
		out->ngroups++;
	} else if (json_is_array(v)) {
		size_t i;
		json_t *g;

		if (json_array_size(v) > MAX_GROUPS)
			FAIL(SL_EAUTH, "too many groups in token");
		json_array_foreach(v, i, g)
		{
			if (!group_ok(g))
				FAIL(SL_EAUTH, "token has an invalid group");
			out->groups[out->ngroups] = strdup(json_string_value(g));
			if (out->groups[out->ngroups] == NULL)
				FAIL(SL_ENOMEM, "out of memory");
			out->ngroups++;
		}
	} else if (v != NULL && !json_is_null(v)) {
		FAIL(SL_EAUTH, "token has an invalid groups claim");
	}
	{
		uint8_t h[32];

		SHA256((const uint8_t *)token, len, h);
		sl_hex(h, 32, out->token_sha256);
	}
	r = 0;
out:
	json_decref(hdr);
	json_decref(pl);
	if (r != 0)
		sl_identity_fini(out);
	return r;
}
