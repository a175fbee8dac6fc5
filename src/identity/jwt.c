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
	bn = BN_bin2bn(n, (int)nl, NULL);
	be = BN_bin2bn(e, (int)el, NULL);
	/* Count bits, not bytes: leading zero bytes must not pass a 1024-bit
	 * modulus off as 2048. The exponent must be odd and at least 3. */
	if (bn == NULL || be == NULL || BN_num_bits(bn) < 2048 || !BN_is_odd(be) ||
	    BN_num_bits(be) < 2)
		goto out;
	bld = OSSL_PARAM_BLD_new();
	if (bld == NULL || !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn) ||
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

/* The one algorithm name sluice uses for a JOSE "alg" value, or NULL for
 * anything it refuses. "Ed25519" is the fully-specified name (RFC 9864) for
 * what older tokens call "EdDSA". */
static const char *
canon_alg(const char *alg)
{
	if (alg == NULL)
		return NULL;
	if (strcmp(alg, "RS256") == 0)
		return "RS256";
	if (strcmp(alg, "ES256") == 0)
		return "ES256";
	if (strcmp(alg, "EdDSA") == 0 || strcmp(alg, "Ed25519") == 0)
		return "EdDSA";
	return NULL;
}

/* 1 if jwk holds a private or secret member (RFC 7518 6.2.2, 6.3.2, 6.4.1). */
static int
has_private(json_t *jwk)
{
	static const char *const priv[] = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"};

	for (size_t i = 0; i < sizeof(priv) / sizeof(priv[0]); i++)
		if (json_object_get(jwk, priv[i]) != NULL)
			return 1;
	return 0;
}

/* Builds one key from a JWK; returns 0 and fills k, or non-zero to skip it.
 * who names the key set's issuer in log messages (NULL: no logging). */
static int
parse_jwk(json_t *jwk, struct sl_jwk *k, const char *who)
{
	const char *kty = json_string_value(json_object_get(jwk, "kty"));
	json_t *kidv = json_object_get(jwk, "kid");
	json_t *algv = json_object_get(jwk, "alg");
	const char *use = json_string_value(json_object_get(jwk, "use"));
	const char *want;

	if (!json_is_object(jwk) || kty == NULL)
		return -1;
	/* A published private key lets anyone sign tokens: never trust it,
	 * and say so loudly, since the issuer's other keys may be exposed too. */
	if (has_private(jwk)) {
		if (who != NULL) {
			char kid[sizeof(k->kid)];
			const char *ks = json_string_value(kidv);

			/* The kid comes from the IdP: printable ASCII only in the log. */
			snprintf(kid, sizeof(kid), "%s", ks ? ks : "");
			for (unsigned char *c = (unsigned char *)kid; *c; c++)
				if (*c < 0x20 || *c > 0x7e || *c == '"')
					*c = '?';
			sl_error("identity: the JWKS of %s publishes private key material (kty %s, "
				 "kid \"%s\"): that key is not used; anyone who read it can sign "
				 "tokens, so have the IdP rotate it",
				 who, strcmp(kty, "oct") == 0 ? "oct" : "RSA/EC/OKP", kid);
		}
		return -1;
	}
	if (json_object_get(jwk, "use") != NULL && (use == NULL || strcmp(use, "sig") != 0))
		return -1;
	/* A kid that would be truncated could collide with another key's. */
	if (kidv != NULL && (!json_is_string(kidv) || json_string_length(kidv) >= sizeof(k->kid)))
		return -1;
	if (strcmp(kty, "RSA") == 0) {
		want = "RS256";
		k->pkey = jwk_rsa(jwk);
	} else if (strcmp(kty, "EC") == 0) {
		want = "ES256";
		k->pkey = jwk_ec(jwk);
	} else if (strcmp(kty, "OKP") == 0) {
		want = "EdDSA";
		k->pkey = jwk_okp(jwk);
	} else {
		return -1; /* "oct" and anything else: never used for verification */
	}
	if (k->pkey == NULL)
		return -1;
	/* A key that says it is for another algorithm (RS384, PS256, ...) is not used. */
	if (algv != NULL && canon_alg(json_string_value(algv)) != want) {
		EVP_PKEY_free(k->pkey);
		k->pkey = NULL;
		return -1;
	}
	snprintf(k->alg, sizeof(k->alg), "%s", want);
	snprintf(k->kid, sizeof(k->kid), "%s", kidv ? json_string_value(kidv) : "");
	return 0;
}

int
sl_keyset_parse(const char *json, size_t len, const char *who, struct sl_keyset **out)
{
	json_error_t je;
	json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je), *keys;
	struct sl_keyset *ks;

	*out = NULL;
	if (root == NULL)
		return SL_EINVAL;
	keys = json_object_get(root, "keys");
	if (!json_is_array(keys) || json_array_size(keys) > SL_JWKS_MAX_KEYS) {
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
	for (size_t i = 0; i < json_array_size(keys); i++)
		if (parse_jwk(json_array_get(keys, i), &ks->keys[ks->n], who) == 0)
			ks->n++;
	ks->published = json_array_size(keys);
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
		ok = (int)slen == EVP_PKEY_get_size(k->pkey) &&
		     EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, k->pkey) == 1 &&
		     EVP_DigestVerify(md, sig, slen, msg, mlen) == 1;
	} else if (strcmp(k->alg, "ES256") == 0 && slen == 64) {
		/* JOSE carries r||s (32 bytes each); EVP wants a DER ECDSA-Sig-Value. */
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

/* floor(n / 2) for the order n of P-256. */
static const uint8_t p256_half_n[32] = {0x7f, 0xff, 0xff, 0xff, 0x80, 0x00, 0x00, 0x00,
					0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
					0xde, 0x73, 0x7d, 0x56, 0xd3, 0x8b, 0xcf, 0x42,
					0x79, 0xdc, 0xe5, 0x61, 0x7e, 0x31, 0x92, 0xa8};

/*
 * The hex SHA-256 that names a verified token (hex, 65 bytes) in the audit
 * trail. An ECDSA signature (r, s) also verifies as (r, n - s), so anyone who
 * holds an ES256 token can send a second spelling of it. IdPs do not
 * normalise s (about half their tokens are high-S), so both are accepted, and
 * the name is taken over the low-S spelling: one token, one token_sha256.
 * body is the signed part (header.payload) of token, sig its decoded
 * signature. Returns 0 or SL_ENOMEM.
 */
static int
token_name(const char *token, size_t len, size_t body, const char *alg, const uint8_t *sig,
	   size_t siglen, char *hex)
{
	uint8_t h[32], low[64];
	char *canon;
	BIGNUM *n, *s;
	int ok;

	if (strcmp(alg, "ES256") != 0 || siglen != 64 || memcmp(sig + 32, p256_half_n, 32) <= 0) {
		SHA256((const uint8_t *)token, len, h);
		sl_hex(h, 32, hex);
		return 0;
	}
	n = BN_bin2bn(p256_half_n, 32, NULL);
	s = BN_bin2bn(sig + 32, 32, NULL);
	canon = malloc(body + 1 + 90);
	/* n = 2 * floor(n / 2) + 1 */
	ok = n != NULL && s != NULL && canon != NULL && BN_lshift1(n, n) && BN_add_word(n, 1) &&
	     BN_sub(s, n, s) && BN_bn2binpad(s, low + 32, 32) == 32;
	if (ok) {
		memcpy(low, sig, 32);
		memcpy(canon, token, body);
		canon[body] = '.';
		sl_b64url_encode(low, sizeof(low), canon + body + 1);
		SHA256((const uint8_t *)canon, strlen(canon), h);
		sl_hex(h, 32, hex);
	}
	BN_free(n);
	BN_free(s);
	free(canon);
	return ok ? 0 : SL_ENOMEM;
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
 * dotted path through nested objects. */
static json_t *
claim(json_t *payload, const char *name)
{
	json_t *v = json_object_get(payload, name);
	char path[256], *save = NULL, *tok;

	if (v != NULL || strchr(name, '.') == NULL)
		return v;
	if (strlen(name) >= sizeof(path))
		return NULL;
	snprintf(path, sizeof(path), "%s", name);
	v = payload;
	for (tok = strtok_r(path, ".", &save); tok && v; tok = strtok_r(NULL, ".", &save))
		v = json_object_get(v, tok);
	return v;
}

/* 1 if aud (a string, or an array of strings) names want. An array with
 * anything but strings in it is malformed and refused as a whole, even if
 * one element matches: the token is not what its issuer meant to sign. */
static int
aud_ok(json_t *aud, const char *want)
{
	size_t i;
	json_t *v;
	int found = 0;

	if (json_is_string(aud))
		return strcmp(json_string_value(aud), want) == 0;
	if (!json_is_array(aud))
		return 0;
	json_array_foreach(aud, i, v)
	{
		if (!json_is_string(v))
			return 0;
		if (strcmp(json_string_value(v), want) == 0)
			found = 1;
	}
	return found;
}

/* A NumericDate (RFC 7519): an integer, or a finite real, from 0 to the
 * end of year 9999. Anything else (negative, 1e300, a string) is refused
 * rather than cast: a cast of 1e300 to int64_t is undefined behaviour, and a
 * bounded value leaves callers room to add a leeway without overflow. A
 * fraction is rounded towards the stricter side: down for exp, up for
 * nbf and iat (round_up). */
static int
num_claim(json_t *v, int round_up, int64_t *out)
{
	if (json_is_integer(v)) {
		json_int_t i = json_integer_value(v);

		if (i < 0 || i > SL_NUMERICDATE_MAX)
			return SL_EAUTH;
		*out = (int64_t)i;
		return 0;
	}
	if (json_is_real(v)) {
		double d = json_real_value(v);

		/* Also false for NaN. */
		if (!(d >= 0.0 && d <= (double)SL_NUMERICDATE_MAX))
			return SL_EAUTH;
		*out = (int64_t)d;
		if (round_up && (double)*out < d)
			(*out)++;
		return 0;
	}
	return SL_EAUTH;
}

/* 1 if the UTF-8 sequence at s (n bytes left) is a control character: C0,
 * DEL, C1 (U+0080..U+009F, a terminal takes U+009B as CSI), the line and
 * paragraph separators U+2028/U+2029, or a bidi control (U+200E/U+200F,
 * U+202A..U+202E, U+2066..U+2069) that reorders what a log line shows. The
 * same set sl_fput_safe escapes. jansson has checked the UTF-8 already. */
static int
is_control(const unsigned char *s, size_t n)
{
	return sl_utf8_control(s, n, NULL) != 0;
}

/* Subjects and groups reach policy, logs and the audit trail: no control
 * characters (is_control), bounded length. */
static int
name_ok(json_t *v, size_t max)
{
	const char *s = json_string_value(v);
	size_t n = json_string_length(v);

	if (s == NULL || n == 0 || n > max)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (is_control((const unsigned char *)s + i, n - i))
			return 0;
	return 1;
}

/* Header: alg, kid, typ and cty must be strings when present; crit (and the
 * JWE/unencoded-payload parameters enc, zip, b64) make the token unusable. */
static const char *
check_header(json_t *hdr, const char **alg, const char **kid)
{
	const char *k;
	json_t *v;

	json_object_foreach(hdr, k, v)
	{
		if (strcmp(k, "alg") == 0 || strcmp(k, "kid") == 0 || strcmp(k, "typ") == 0 ||
		    strcmp(k, "cty") == 0) {
			if (!json_is_string(v))
				return "malformed token header";
		} else if (strcmp(k, "crit") == 0) {
			return "token has critical header parameters";
		} else if (strcmp(k, "enc") == 0 || strcmp(k, "zip") == 0 ||
			   strcmp(k, "b64") == 0) {
			return "token header not supported";
		}
	}
	*kid = json_string_value(json_object_get(hdr, "kid"));
	*alg = canon_alg(json_string_value(json_object_get(hdr, "alg")));
	if (*alg == NULL)
		return "algorithm not allowed";
	return NULL;
}

/* Picks the key for (kid, alg) from ks (caller holds idp->lock). An unknown
 * kid, or no keys at all, is SL_ENOKEY: a refetch may help. */
static int
pick_key(const struct sl_keyset *ks, const char *kid, const char *alg, const struct sl_jwk **out,
	 const char **why)
{
	size_t named = 0, usable = 0;

	*out = NULL;
	if (ks == NULL || ks->n == 0) {
		*why = "no signing key";
		return SL_ENOKEY;
	}
	if (kid == NULL && ks->n > 1) {
		*why = "token has no kid and the issuer has several keys";
		return SL_EAUTH;
	}
	for (size_t i = 0; i < ks->n; i++) {
		if (kid != NULL && strcmp(ks->keys[i].kid, kid) != 0)
			continue;
		named++;
		if (strcmp(ks->keys[i].alg, alg) == 0) {
			usable++;
			*out = &ks->keys[i];
		}
	}
	if (named == 0) {
		*why = "signing key unknown";
		return SL_ENOKEY;
	}
	if (usable == 0) {
		*why = "algorithm does not match the key";
		return SL_EAUTH;
	}
	if (usable > 1) {
		*why = "signing key ambiguous";
		return SL_EAUTH;
	}
	return 0;
}

static int
map_groups(json_t *v, struct sl_identity *out, const char **why)
{
	size_t i, n;
	json_t *g;

	*why = "groups claim malformed";
	if (v == NULL || json_is_null(v))
		return 0;
	if (json_is_string(v))
		n = 1;
	else if (json_is_array(v))
		n = json_array_size(v);
	else
		return SL_EAUTH;
	if (n > SL_IDENTITY_MAX_GROUPS) {
		*why = "too many groups in token";
		return SL_EAUTH;
	}
	out->groups = calloc(n + 1, sizeof(char *));
	if (out->groups == NULL)
		goto nomem;
	if (json_is_string(v)) {
		if (!name_ok(v, SL_IDENTITY_MAX_NAME))
			return SL_EAUTH;
		if ((out->groups[out->ngroups++] = strdup(json_string_value(v))) == NULL)
			goto nomem;
		return 0;
	}
	json_array_foreach(v, i, g)
	{
		/* A group sluice cannot read is refused rather than dropped:
		 * dropping one could dodge a policy that matches on it. */
		if (!name_ok(g, SL_IDENTITY_MAX_NAME))
			return SL_EAUTH;
		if ((out->groups[out->ngroups] = strdup(json_string_value(g))) == NULL)
			goto nomem;
		out->ngroups++;
	}
	return 0;
nomem:
	*why = "out of memory";
	return SL_ENOMEM;
}

/* Time and audience claims of a signature-checked payload. */
static int
check_claims(json_t *pl, const struct sl_issuer *is, int64_t now, int64_t *exp, const char **why)
{
	json_t *v;
	int64_t t;

	if (!aud_ok(json_object_get(pl, "aud"), is->audience)) {
		*why = "audience mismatch";
		return SL_EAUTH;
	}
	if (num_claim(json_object_get(pl, "exp"), 0, exp) != 0) {
		*why = "token has no valid expiry";
		return SL_EAUTH;
	}
	/* exp, nbf and iat are bounded by num_claim, and the leeway by
	 * sl_idp_new (at most a day), so none of this can overflow. */
	if (*exp < now - is->leeway_s) {
		*why = "token expired";
		return SL_EEXPIRED;
	}
	if ((v = json_object_get(pl, "nbf")) != NULL) {
		if (num_claim(v, 1, &t) != 0) {
			*why = "token has an invalid nbf";
			return SL_EAUTH;
		}
		if (t > now + is->leeway_s) {
			*why = "token not yet valid";
			return SL_EEXPIRED;
		}
	}
	if ((v = json_object_get(pl, "iat")) != NULL) {
		if (num_claim(v, 1, &t) != 0) {
			*why = "token has an invalid iat";
			return SL_EAUTH;
		}
		if (t > now + is->leeway_s) {
			*why = "token issued in the future";
			return SL_EAUTH;
		}
	}
	return 0;
}

#define FAIL(code, msg)                                                                            \
	do {                                                                                       \
		why = msg;                                                                         \
		r = code;                                                                          \
		goto out;                                                                          \
	} while (0)

int
sl_jwt_verify_with(struct sl_idp *idp, const char *token, size_t len, int64_t now,
		   struct sl_identity *out, char *err, size_t errlen)
{
	const char *d1, *d2, *alg = NULL, *kid = NULL, *iss, *why = "malformed token";
	json_t *hdr = NULL, *pl = NULL, *v;
	const struct sl_issuer *is;
	const struct sl_jwk *key;
	uint8_t sig[1024];
	size_t siglen;
	int r = SL_EAUTH;
	int64_t exp;

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
	if ((why = check_header(hdr, &alg, &kid)) != NULL)
		FAIL(SL_EAUTH, why);
	iss = json_string_value(json_object_get(pl, "iss"));
	if (iss == NULL)
		FAIL(SL_EAUTH, "token has no issuer");
	if ((is = sl_idp_issuer(idp, iss)) == NULL)
		FAIL(SL_EAUTH, "issuer not trusted");
	if (sl_b64url_decode(d2 + 1, len - (size_t)(d2 + 1 - token), sig, sizeof(sig), &siglen) !=
		    0 ||
	    siglen == 0)
		FAIL(SL_EAUTH, "malformed signature");
	pthread_rwlock_rdlock(&idp->lock);
	r = pick_key(is->keys, kid, alg, &key, &why);
	if (r == 0 && !verify_sig(key, (const uint8_t *)token, (size_t)(d2 - token), sig, siglen)) {
		r = SL_EAUTH;
		why = "signature invalid";
	}
	pthread_rwlock_unlock(&idp->lock);
	if (r != 0)
		goto out;
	if ((r = check_claims(pl, is, now, &exp, &why)) != 0)
		goto out;
	v = claim(pl, is->subject_claim);
	if (!name_ok(v, SL_IDENTITY_MAX_NAME))
		FAIL(SL_EAUTH, "token has no valid subject");
	out->subject = strdup(json_string_value(v));
	out->issuer = strdup(is->issuer);
	out->exp = exp;
	if (out->subject == NULL || out->issuer == NULL)
		FAIL(SL_ENOMEM, "out of memory");
	if ((r = map_groups(claim(pl, is->groups_claim), out, &why)) != 0)
		goto out;
	if (token_name(token, len, (size_t)(d2 - token), alg, sig, siglen, out->token_sha256) != 0)
		FAIL(SL_ENOMEM, "out of memory");
	r = 0;
out:
	json_decref(hdr);
	json_decref(pl);
	if (r != 0) {
		snprintf(err, errlen, "%s", why);
		sl_identity_fini(out);
	}
	return r;
}
