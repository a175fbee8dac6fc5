/* Unit tests for JWT verification: RS256, ES256 and EdDSA keys made here,
 * claim mapping, and every refusal (expired, audience, issuer, alg none,
 * HS256 alg confusion, wrong key type, unknown kid, tampering, garbage). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <time.h>

#include "sluice/config.h"
#include "sluice/identity.h"

#define NOW 1800000000LL

static char dir[64];
static EVP_PKEY *rsa, *ec, *ed;
static struct sl_idp *idp;

static void
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
}

static void
bn_b64(EVP_PKEY *k, const char *param, char *out, size_t pad)
{
	BIGNUM *bn = NULL;
	uint8_t buf[600];
	int n;

	EVP_PKEY_get_bn_param(k, param, &bn);
	n = pad ? BN_bn2binpad(bn, buf, (int)pad) : BN_bn2bin(bn, buf);
	b64u(buf, (size_t)n, out);
	BN_free(bn);
}

/* Signs header.payload with key k using alg ("RS256", "ES256", "EdDSA",
 * "HS256" with secret, "none"). */
static char *
sign(const char *alg, const char *kid, json_t *claims, EVP_PKEY *k, const uint8_t *secret,
     size_t slen)
{
	json_t *h = json_pack("{s:s}", "alg", alg);
	char *hs, *ps, hb[512], pb[2048], sig64[700], *out;
	uint8_t sig[600];
	size_t siglen = sizeof(sig);
	char input[4096];

	if (kid)
		json_object_set_new(h, "kid", json_string(kid));
	hs = json_dumps(h, JSON_COMPACT);
	ps = json_dumps(claims, JSON_COMPACT);
	b64u((uint8_t *)hs, strlen(hs), hb);
	b64u((uint8_t *)ps, strlen(ps), pb);
	snprintf(input, sizeof(input), "%s.%s", hb, pb);
	sig64[0] = '\0';
	if (strcmp(alg, "HS256") == 0) {
		unsigned int l = 32;

		HMAC(EVP_sha256(), secret, (int)slen, (uint8_t *)input, strlen(input), sig, &l);
		b64u(sig, l, sig64);
	} else if (k != NULL) {
		EVP_MD_CTX *md = EVP_MD_CTX_new();

		EVP_DigestSignInit(md, NULL,
				   EVP_PKEY_get_id(k) == EVP_PKEY_ED25519 ? NULL : EVP_sha256(),
				   NULL, k);
		EVP_DigestSign(md, sig, &siglen, (uint8_t *)input, strlen(input));
		EVP_MD_CTX_free(md);
		if (EVP_PKEY_get_id(k) == EVP_PKEY_EC) {
			/* DER -> JOSE r||s */
			const uint8_t *p = sig;
			ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)siglen);
			uint8_t raw[64];

			BN_bn2binpad(ECDSA_SIG_get0_r(es), raw, 32);
			BN_bn2binpad(ECDSA_SIG_get0_s(es), raw + 32, 32);
			ECDSA_SIG_free(es);
			b64u(raw, 64, sig64);
		} else {
			b64u(sig, siglen, sig64);
		}
	}
	out = malloc(strlen(input) + strlen(sig64) + 2);
	sprintf(out, "%s.%s", input, sig64);
	free(hs);
	free(ps);
	json_decref(h);
	json_decref(claims);
	return out;
}

static json_t *
claims(const char *iss, const char *aud, int64_t exp)
{
	return json_pack("{s:s, s:s, s:s, s:I, s:{s:[s,s]}, s:[s]}", "iss", iss, "aud", aud, "sub",
			 "agent-7", "exp", (json_int_t)exp, "realm_access", "roles", "ai-agents",
			 "readers", "https://example.com/groups", "url-group");
}

static int
setup(void **state)
{
	EVP_PKEY_CTX *c;
	char n64[600], e64[16], x64[64], y64[64], ed64[64], jwks[4096], path[128], err[256],
		yaml[1024];
	uint8_t raw[32];
	size_t rl = 32;
	struct sl_config *cfg;
	FILE *f;

	snprintf(dir, sizeof(dir), "/tmp/sluice-id-test.XXXXXX");
	assert_non_null(mkdtemp(dir));
	c = EVP_PKEY_CTX_new_id(EVP_PKEY_RSA, NULL);
	EVP_PKEY_keygen_init(c);
	EVP_PKEY_CTX_set_rsa_keygen_bits(c, 2048);
	EVP_PKEY_keygen(c, &rsa);
	EVP_PKEY_CTX_free(c);
	ec = EVP_EC_gen("P-256");
	ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
	bn_b64(rsa, OSSL_PKEY_PARAM_RSA_N, n64, 0);
	bn_b64(rsa, OSSL_PKEY_PARAM_RSA_E, e64, 0);
	bn_b64(ec, OSSL_PKEY_PARAM_EC_PUB_X, x64, 32);
	bn_b64(ec, OSSL_PKEY_PARAM_EC_PUB_Y, y64, 32);
	EVP_PKEY_get_raw_public_key(ed, raw, &rl);
	b64u(raw, 32, ed64);
	snprintf(jwks, sizeof(jwks),
		 "{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"r1\",\"n\":\"%s\",\"e\":\"%s\"},"
		 "{\"kty\":\"EC\",\"kid\":\"e1\",\"crv\":\"P-256\",\"x\":\"%s\",\"y\":\"%s\"},"
		 "{\"kty\":\"OKP\",\"kid\":\"d1\",\"crv\":\"Ed25519\",\"x\":\"%s\"},"
		 "{\"kty\":\"oct\",\"kid\":\"h1\",\"k\":\"c2VjcmV0\"}]}",
		 n64, e64, x64, y64, ed64);
	snprintf(path, sizeof(path), "%s/jwks.json", dir);
	f = fopen(path, "w");
	fputs(jwks, f);
	fclose(f);
	snprintf(yaml, sizeof(yaml),
		 "identity:\n  issuers:\n    - issuer: https://idp.test\n      audience: sluice\n"
		 "      jwks_file: %s\n      groups_claim: realm_access.roles\n"
		 "    - issuer: https://other.test\n      audience: sluice\n      jwks_file: %s\n"
		 "      groups_claim: https://example.com/groups\n",
		 path, path);
	assert_int_equal(sl_config_load_data("t", yaml, strlen(yaml), &cfg, err, sizeof(err)), 0);
	assert_int_equal(sl_idp_new(&cfg->identity, dir, &idp, err, sizeof(err)), 0);
	sl_config_free(cfg);
	return 0;
}

static int
teardown(void **state)
{
	sl_idp_free(idp);
	EVP_PKEY_free(rsa);
	EVP_PKEY_free(ec);
	EVP_PKEY_free(ed);
	return 0;
}

static int
verify(char *tok, struct sl_identity *id, char *err)
{
	int r = sl_idp_verify(idp, tok, strlen(tok), NOW, id, err, 256);

	free(tok);
	return r;
}

static void
test_valid(void **state)
{
	struct sl_identity id;
	char err[256];

	assert_int_equal(verify(sign("RS256", "r1", claims("https://idp.test", "sluice", NOW + 60),
				     rsa, NULL, 0),
				&id, err),
			 0);
	assert_string_equal(id.subject, "agent-7");
	assert_int_equal(id.ngroups, 2);
	assert_true(sl_identity_in_group(&id, "ai-agents"));
	sl_identity_fini(&id);
	assert_int_equal(verify(sign("ES256", "e1", claims("https://idp.test", "sluice", NOW + 60),
				     ec, NULL, 0),
				&id, err),
			 0);
	sl_identity_fini(&id);
	assert_int_equal(verify(sign("EdDSA", "d1",
				     claims("https://other.test", "sluice", NOW + 60), ed, NULL, 0),
				&id, err),
			 0);
	assert_int_equal(id.ngroups, 1);
	assert_string_equal(id.groups[0], "url-group");
	sl_identity_fini(&id);
	/* aud as an array; exp within leeway */
	{
		json_t *c = claims("https://idp.test", "x", NOW - 30);

		json_object_set_new(c, "aud", json_pack("[s,s]", "other", "sluice"));
		assert_int_equal(verify(sign("EdDSA", "d1", c, ed, NULL, 0), &id, err), 0);
		sl_identity_fini(&id);
	}
}

static void
test_refused(void **state)
{
	struct sl_identity id;
	char err[256];
	uint8_t pubder[1024], *p = pubder;
	int publen = i2d_PUBKEY(rsa, &p);

	assert_int_equal(
		verify(sign("RS256", "r1", claims("https://idp.test", "sluice", NOW - 3600), rsa,
			    NULL, 0),
		       &id, err),
		SL_EEXPIRED);
	assert_int_equal(verify(sign("RS256", "r1", claims("https://idp.test", "nope", NOW + 60),
				     rsa, NULL, 0),
				&id, err),
			 SL_EAUTH);
	assert_string_equal(err, "audience mismatch");
	assert_int_equal(verify(sign("RS256", "r1", claims("https://evil.test", "sluice", NOW + 60),
				     rsa, NULL, 0),
				&id, err),
			 SL_EAUTH);
	assert_int_equal(verify(sign("none", "r1", claims("https://idp.test", "sluice", NOW + 60),
				     NULL, NULL, 0),
				&id, err),
			 SL_EAUTH);
	/* alg confusion: HS256 keyed with the RSA public key, and with the oct key */
	assert_int_equal(verify(sign("HS256", "r1", claims("https://idp.test", "sluice", NOW + 60),
				     NULL, pubder, (size_t)publen),
				&id, err),
			 SL_EAUTH);
	assert_int_equal(verify(sign("HS256", "h1", claims("https://idp.test", "sluice", NOW + 60),
				     NULL, (const uint8_t *)"secret", 6),
				&id, err),
			 SL_EAUTH);
	/* RS256 header on the EC key id */
	assert_int_equal(verify(sign("RS256", "e1", claims("https://idp.test", "sluice", NOW + 60),
				     rsa, NULL, 0),
				&id, err),
			 SL_EAUTH);
	/* right kid, wrong key */
	{
		EVP_PKEY *other = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");

		assert_int_equal(
			verify(sign("EdDSA", "d1", claims("https://idp.test", "sluice", NOW + 60),
				    other, NULL, 0),
			       &id, err),
			SL_EAUTH);
		EVP_PKEY_free(other);
	}
	assert_int_equal(verify(sign("EdDSA", "zz", claims("https://idp.test", "sluice", NOW + 60),
				     ed, NULL, 0),
				&id, err),
			 SL_ENOKEY);
	/* nbf in the future, missing exp */
	{
		json_t *c = claims("https://idp.test", "sluice", NOW + 600);

		json_object_set_new(c, "nbf", json_integer(NOW + 300));
		assert_int_equal(verify(sign("EdDSA", "d1", c, ed, NULL, 0), &id, err),
				 SL_EEXPIRED);
		c = claims("https://idp.test", "sluice", NOW + 600);
		json_object_del(c, "exp");
		assert_int_equal(verify(sign("EdDSA", "d1", c, ed, NULL, 0), &id, err), SL_EAUTH);
	}
	/* tampered payload */
	{
		char *t = sign("EdDSA", "d1", claims("https://idp.test", "sluice", NOW + 60), ed,
			       NULL, 0);
		char *dot = strchr(t, '.');

		dot[3] = dot[3] == 'A' ? 'B' : 'A';
		assert_int_equal(verify(t, &id, err), SL_EAUTH);
	}
	/* garbage */
	{
		const char *g[] = {
			"", "a", "a.b", "a.b.c.d", "....", "eyJhbGciOiJFZERTQSJ9..", "!!!.???.***"};

		for (size_t i = 0; i < sizeof(g) / sizeof(g[0]); i++)
			assert_int_equal(sl_idp_verify(idp, g[i], strlen(g[i]), NOW, &id, err, 256),
					 SL_EAUTH);
	}
	{
		char *big = malloc(40000);

		memset(big, 'a', 39999);
		big[39999] = 0;
		assert_int_equal(sl_idp_verify(idp, big, strlen(big), NOW, &id, err, 256),
				 SL_EAUTH);
		free(big);
	}
}

/* Claim values that must be refused, never cast or read in part. */
static void
test_claim_values(void **state)
{
	struct sl_identity id;
	char err[256];
	json_t *bad_times[] = {json_real(1e300), json_integer(-5), json_string("9999999999"),
			       json_real(-1.0),	 json_true(),	   json_integer(INT64_MAX)};
	json_t *bad_groups[] = {json_pack("[s,i]", "ai-agents", 5),
				json_pack("[s,[s]]", "ai-agents", "dba"),
				json_stringn("dba\0x", 5),
				json_pack("[s,s%]", "readers", "dba\0x", (size_t)5),
				json_pack("{s:s}", "dba", "yes"),
				json_integer(1)};
	char longg[300];

	for (size_t i = 0; i < sizeof(bad_times) / sizeof(bad_times[0]); i++) {
		const char *which[] = {"exp", "nbf", "iat"};

		for (size_t w = 0; w < 3; w++) {
			json_t *c = claims("https://idp.test", "sluice", NOW + 60);

			json_object_set(c, which[w], bad_times[i]);
			assert_int_not_equal(verify(sign("EdDSA", "d1", c, ed, NULL, 0), &id, err),
					     0);
		}
		json_decref(bad_times[i]);
	}
	/* a fractional NumericDate is fine */
	{
		json_t *c = claims("https://idp.test", "sluice", NOW + 60);

		json_object_set_new(c, "exp", json_real((double)NOW + 60.5));
		assert_int_equal(verify(sign("EdDSA", "d1", c, ed, NULL, 0), &id, err), 0);
		sl_identity_fini(&id);
	}
	for (size_t i = 0; i < sizeof(bad_groups) / sizeof(bad_groups[0]); i++) {
		json_t *c = claims("https://idp.test", "sluice", NOW + 60);

		json_object_set_new(json_object_get(c, "realm_access"), "roles", bad_groups[i]);
		assert_int_equal(verify(sign("EdDSA", "d1", c, ed, NULL, 0), &id, err), SL_EAUTH);
	}
	memset(longg, 'g', sizeof(longg) - 1);
	longg[sizeof(longg) - 1] = '\0';
	{
		json_t *c = claims("https://idp.test", "sluice", NOW + 60);

		json_object_set_new(json_object_get(c, "realm_access"), "roles",
				    json_pack("[s,s]", "ai-agents", longg));
		assert_int_equal(verify(sign("EdDSA", "d1", c, ed, NULL, 0), &id, err), SL_EAUTH);
		/* a subject with a NUL in it */
		c = claims("https://idp.test", "sluice", NOW + 60);
		json_object_set_new(c, "sub", json_stringn("agent\0root", 10));
		assert_int_equal(verify(sign("EdDSA", "d1", c, ed, NULL, 0), &id, err), SL_EAUTH);
	}
}

static void
test_dev_issuer(void **state)
{
	char d[64], err[256], *tok;
	struct sl_cfg_identity none = {0};
	struct sl_idp *dev;
	struct sl_identity id;
	const char *groups[] = {"ai-agents", "dba"};
	struct sl_mint_opts o = {.sub = "agent-1", .groups = groups, .ngroups = 2, .ttl_s = 600};

	snprintf(d, sizeof(d), "/tmp/sluice-dev-test.XXXXXX");
	assert_non_null(mkdtemp(d));
	assert_int_equal(sl_devissuer_init(d, 0, err, sizeof(err)), 0);
	assert_int_equal(sl_idp_new(&none, d, &dev, err, sizeof(err)), 0);
	assert_int_equal(sl_devissuer_mint(d, &o, &tok, err, sizeof(err)), 0);
	assert_int_equal(sl_idp_verify(dev, tok, strlen(tok), time(NULL), &id, err, sizeof(err)),
			 0);
	assert_string_equal(id.subject, "agent-1");
	assert_int_equal(id.ngroups, 2);
	sl_identity_fini(&id);
	/* cached path gives the same answer */
	assert_int_equal(sl_idp_verify(dev, tok, strlen(tok), time(NULL), &id, err, sizeof(err)),
			 0);
	assert_string_equal(id.subject, "agent-1");
	sl_identity_fini(&id);
	/* ...and still honours expiry */
	assert_int_equal(
		sl_idp_verify(dev, tok, strlen(tok), time(NULL) + 4000, &id, err, sizeof(err)),
		SL_EEXPIRED);
	free(tok);
	o.aud = "other";
	sl_devissuer_mint(d, &o, &tok, err, sizeof(err));
	assert_int_equal(sl_idp_verify(dev, tok, strlen(tok), time(NULL), &id, err, sizeof(err)),
			 SL_EAUTH);
	free(tok);
	sl_idp_free(dev);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_valid),
		cmocka_unit_test(test_refused),
		cmocka_unit_test(test_claim_values),
		cmocka_unit_test(test_dev_issuer),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
