/*
 * Unit tests for identity: JWT verification against RS256, ES256 and EdDSA
 * keys made here, claim mapping (plain, dotted and URL-like group claims),
 * every refusal (expired, nbf, audience, issuer, alg none, HS256 alg
 * confusion, wrong key type, unknown kid, tampering, malformed input, odd
 * headers), the verified-token cache, JWKS parsing, the dev issuer and its
 * CLI, and sl_idp_refresh against a loopback HTTP server (jwks_uri, OIDC
 * discovery, rate limit, failures keep the old keys, size and protocol caps).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>

#include "sluice/config.h"
#include "sluice/identity.h"
/* Only to age the refetch clock instead of sleeping 30 s. */
#include "../../src/identity/identity_internal.h"

#define NOW 1800000000LL

static char dir[64];
static EVP_PKEY *rsa, *ec, *ed;
static char rsa_jwk[1024], jwks_text[4096];
static struct sl_idp *idp;

/* ------------------------------------------------------------ helpers */

static char *
b64u(const void *data, size_t n)
{
	static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	const uint8_t *in = data;
	char *out = malloc(n * 4 / 3 + 4);
	size_t o = 0;

	assert_non_null(out);
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
	return out;
}

static void
bn_b64(EVP_PKEY *k, const char *param, char *out, size_t outlen, size_t pad)
{
	BIGNUM *bn = NULL;
	uint8_t buf[600];
	int n;
	char *s;

	assert_int_equal(EVP_PKEY_get_bn_param(k, param, &bn), 1);
	n = pad ? BN_bn2binpad(bn, buf, (int)pad) : BN_bn2bin(bn, buf);
	s = b64u(buf, (size_t)n);
	snprintf(out, outlen, "%s", s);
	free(s);
	BN_free(bn);
}

#define SIG_DER 1 /* ES256: keep OpenSSL's DER signature instead of JOSE r||s */

/*
 * Signs hdr.payload (JSON texts, encoded here) with key k, or HMAC-SHA256
 * with secret when k is NULL and secret is not, or no signature at all.
 */
static char *
sign_raw(const char *hdr, const char *payload, EVP_PKEY *k, const void *secret, size_t slen,
	 int flags)
{
	char *hb = b64u(hdr, strlen(hdr)), *pb = b64u(payload, strlen(payload)), *sb, *input, *out;
	uint8_t sig[1024];
	size_t siglen = sizeof(sig);

	input = malloc(strlen(hb) + strlen(pb) + 2);
	if (input == NULL)
		abort();
	sprintf(input, "%s.%s", hb, pb);
	if (k == NULL && secret != NULL) {
		unsigned int l = sizeof(sig);

		HMAC(EVP_sha256(), secret, (int)slen, (uint8_t *)input, strlen(input), sig, &l);
		siglen = l;
	} else if (k != NULL) {
		EVP_MD_CTX *md = EVP_MD_CTX_new();

		assert_int_equal(EVP_DigestSignInit(md, NULL,
						    EVP_PKEY_get_id(k) == EVP_PKEY_ED25519
							    ? NULL
							    : EVP_sha256(),
						    NULL, k),
				 1);
		assert_int_equal(EVP_DigestSign(md, sig, &siglen, (uint8_t *)input, strlen(input)),
				 1);
		EVP_MD_CTX_free(md);
		if (EVP_PKEY_get_id(k) == EVP_PKEY_EC && !(flags & SIG_DER)) {
			const uint8_t *p = sig;
			ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)siglen);

			BN_bn2binpad(ECDSA_SIG_get0_r(es), sig, 32);
			BN_bn2binpad(ECDSA_SIG_get0_s(es), sig + 32, 32);
			ECDSA_SIG_free(es);
			siglen = 64;
		}
	} else {
		siglen = 0;
	}
	sb = b64u(sig, siglen);
	out = malloc(strlen(input) + strlen(sb) + 2);
	if (out == NULL)
		abort();
	sprintf(out, "%s.%s", input, sb);
	free(hb);
	free(pb);
	free(sb);
	free(input);
	return out;
}

/* Signs claims (consumed) with a header {alg, kid}. */
static char *
sign(const char *alg, const char *kid, json_t *claims, EVP_PKEY *k, const void *secret, size_t slen)
{
	json_t *h = json_pack("{s:s}", "alg", alg);
	char *hs, *ps, *out;

	if (kid)
		json_object_set_new(h, "kid", json_string(kid));
	hs = json_dumps(h, JSON_COMPACT);
	ps = json_dumps(claims, JSON_COMPACT);
	out = sign_raw(hs, ps, k, secret, slen, 0);
	free(hs);
	free(ps);
	json_decref(h);
	json_decref(claims);
	return out;
}

/* Signs claims (consumed) with the header given as JSON text. */
static char *
sign_hdr(const char *hdr, json_t *claims, EVP_PKEY *k, int flags)
{
	char *ps = json_dumps(claims, JSON_COMPACT), *out = sign_raw(hdr, ps, k, NULL, 0, flags);

	free(ps);
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
verify_with(struct sl_idp *p, char *tok, int64_t now, struct sl_identity *id, char *err)
{
	int r = sl_idp_verify(p, tok, strlen(tok), now, id, err, 256);

	free(tok);
	return r;
}

/* Verifies tok (freed) against the shared idp at NOW. */
static int
verify(char *tok, struct sl_identity *id, char *err)
{
	return verify_with(idp, tok, NOW, id, err);
}

/* The verdict alone: an accepted identity is released at once. */
static int
verdict(char *tok, char *err)
{
	struct sl_identity id;
	int r = verify(tok, &id, err);

	if (r == 0)
		sl_identity_fini(&id);
	return r;
}

static void
write_text(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

static char *
ed_jwk(EVP_PKEY *k, const char *kid)
{
	uint8_t raw[32];
	size_t rl = sizeof(raw);
	char *x, *out = malloc(512);

	assert_int_equal(EVP_PKEY_get_raw_public_key(k, raw, &rl), 1);
	x = b64u(raw, rl);
	snprintf(out, 512, "{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"kid\":\"%s\",\"x\":\"%s\"}", kid,
		 x);
	free(x);
	return out;
}

/* Captures what is written to stderr (the log) between stderr_begin() and
 * stderr_end(), which returns it (owned). */
static int saved_stderr = -1;
static char cap_path[96];

static void
stderr_begin(void)
{
	int fd;

	snprintf(cap_path, sizeof(cap_path), "%s/stderr.txt", dir);
	fd = open(cap_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	saved_stderr = dup(2);
	dup2(fd, 2);
	close(fd);
}

static char *
stderr_end(void)
{
	FILE *f;
	char *out = calloc(1, 65536);

	dup2(saved_stderr, 2);
	close(saved_stderr);
	f = fopen(cap_path, "r");
	assert_non_null(f);
	assert_non_null(out);
	if (fread(out, 1, 65535, f) == 0)
		out[0] = '\0';
	fclose(f);
	return out;
}

/* Number of times needle occurs in hay. */
static int
count_of(const char *hay, const char *needle)
{
	int n = 0;

	for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle))
		n++;
	return n;
}

/* ------------------------------------------------------------ fixture */

static int
setup(void **state)
{
	EVP_PKEY_CTX *c;
	char n64[600], e64[16], x64[64], y64[64], *edj, path[128], path1[128], err[256], yaml[2048],
		jwks1[512];
	struct sl_config *cfg;

	snprintf(dir, sizeof(dir), "/tmp/sluice-id-test.XXXXXX");
	assert_non_null(mkdtemp(dir));
	c = EVP_PKEY_CTX_new_id(EVP_PKEY_RSA, NULL);
	EVP_PKEY_keygen_init(c);
	EVP_PKEY_CTX_set_rsa_keygen_bits(c, 2048);
	EVP_PKEY_keygen(c, &rsa);
	EVP_PKEY_CTX_free(c);
	ec = EVP_EC_gen("P-256");
	ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
	assert_non_null(rsa);
	assert_non_null(ec);
	assert_non_null(ed);
	bn_b64(rsa, OSSL_PKEY_PARAM_RSA_N, n64, sizeof(n64), 0);
	bn_b64(rsa, OSSL_PKEY_PARAM_RSA_E, e64, sizeof(e64), 0);
	bn_b64(ec, OSSL_PKEY_PARAM_EC_PUB_X, x64, sizeof(x64), 32);
	bn_b64(ec, OSSL_PKEY_PARAM_EC_PUB_Y, y64, sizeof(y64), 32);
	edj = ed_jwk(ed, "d1");
	snprintf(rsa_jwk, sizeof(rsa_jwk),
		 "{\"kty\":\"RSA\",\"kid\":\"r1\",\"n\":\"%s\",\"e\":\"%s\"}", n64, e64);
	snprintf(jwks_text, sizeof(jwks_text),
		 "{\"keys\":[%s,"
		 "{\"kty\":\"EC\",\"kid\":\"e1\",\"crv\":\"P-256\",\"x\":\"%s\",\"y\":\"%s\"},"
		 "%s,{\"kty\":\"oct\",\"kid\":\"h1\",\"k\":\"c2VjcmV0\"}]}",
		 rsa_jwk, x64, y64, edj);
	snprintf(jwks1, sizeof(jwks1), "{\"keys\":[%s]}", edj);
	free(edj);
	snprintf(path, sizeof(path), "%s/jwks.json", dir);
	snprintf(path1, sizeof(path1), "%s/jwks1.json", dir);
	write_text(path, jwks_text);
	write_text(path1, jwks1);
	/* idp.test, other.test: four keys (one symmetric, never used).
	 * plain.test: one key, default claims, no leeway. subj.test: one key,
	 * subject from a dotted path. */
	snprintf(yaml, sizeof(yaml),
		 "identity:\n  issuers:\n"
		 "    - issuer: https://idp.test\n      audience: sluice\n"
		 "      jwks_file: %s\n      groups_claim: realm_access.roles\n"
		 "    - issuer: https://other.test\n      audience: sluice\n      jwks_file: %s\n"
		 "      groups_claim: https://example.com/groups\n"
		 "    - issuer: https://plain.test\n      audience: api\n      jwks_file: %s\n"
		 "      leeway: 0s\n"
		 "    - issuer: https://subj.test\n      audience: api\n      jwks_file: %s\n"
		 "      subject_claim: ext.login\n",
		 path, path, path1, path1);
	assert_int_equal(sl_config_load_data("t", yaml, strlen(yaml), &cfg, err, sizeof(err)), 0);
	assert_int_equal(sl_idp_new(&cfg->identity, dir, &idp, err, sizeof(err)), 0);
	sl_config_free(cfg);
	return 0;
}

static int
teardown(void **state)
{
	char cmd[128];

	sl_idp_free(idp);
	EVP_PKEY_free(rsa);
	EVP_PKEY_free(ec);
	EVP_PKEY_free(ed);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	return system(cmd) == 0 ? 0 : -1;
}

/* ------------------------------------------------------------ accepted */

static void
test_valid(void **state)
{
	struct sl_identity id;
	char err[256], *tok;
	uint8_t h[32];
	char hex[65];

	tok = sign("RS256", "r1", claims("https://idp.test", "sluice", NOW + 60), rsa, NULL, 0);
	SHA256((uint8_t *)tok, strlen(tok), h);
	sl_hex(h, 32, hex);
	assert_int_equal(verify(tok, &id, err), 0);
	assert_string_equal(id.subject, "agent-7");
	assert_string_equal(id.issuer, "https://idp.test");
	assert_int_equal(id.exp, NOW + 60);
	assert_string_equal(id.token_sha256, hex);
	/* dotted path realm_access.roles */
	assert_int_equal(id.ngroups, 2);
	assert_true(sl_identity_in_group(&id, "ai-agents"));
	assert_true(sl_identity_in_group(&id, "readers"));
	assert_false(sl_identity_in_group(&id, "url-group"));
	sl_identity_fini(&id);
	assert_int_equal(verify(sign("ES256", "e1", claims("https://idp.test", "sluice", NOW + 60),
				     ec, NULL, 0),
				&id, err),
			 0);
	assert_string_equal(id.subject, "agent-7");
	sl_identity_fini(&id);
	/* URL-like literal claim name */
	assert_int_equal(verify(sign("EdDSA", "d1",
				     claims("https://other.test", "sluice", NOW + 60), ed, NULL, 0),
				&id, err),
			 0);
	assert_int_equal(id.ngroups, 1);
	assert_string_equal(id.groups[0], "url-group");
	sl_identity_fini(&id);
	/* the fully-specified name of the same algorithm */
	assert_int_equal(verdict(sign("Ed25519", "d1",
				      claims("https://idp.test", "sluice", NOW + 60), ed, NULL, 0),
				 err),
			 0);
	/* aud as an array; exp within the 60 s leeway */
	{
		json_t *c = claims("https://idp.test", "x", NOW - 30);

		json_object_set_new(c, "aud", json_pack("[s,s]", "other", "sluice"));
		assert_int_equal(verdict(sign("EdDSA", "d1", c, ed, NULL, 0), err), 0);
	}
	/* harmless extra header parameters are ignored */
	assert_int_equal(verdict(sign_hdr("{\"alg\":\"EdDSA\",\"kid\":\"d1\",\"typ\":\"JWT\","
					  "\"x5t\":\"abc\"}",
					  claims("https://idp.test", "sluice", NOW + 60), ed, 0),
				 err),
			 0);
}

static void
test_groups(void **state)
{
	struct sl_identity id;
	char err[256], big[400];
	json_t *c, *g;

	/* default "groups": array, single string, absent */
	c = json_pack("{s:s,s:s,s:s,s:I,s:[s,s]}", "iss", "https://plain.test", "aud", "api", "sub",
		      "s", "exp", (json_int_t)NOW + 60, "groups", "a", "b");
	assert_int_equal(verify(sign("EdDSA", "d1", c, ed, NULL, 0), &id, err), 0);
	assert_int_equal(id.ngroups, 2);
	assert_string_equal(id.groups[1], "b");
	sl_identity_fini(&id);
	c = json_pack("{s:s,s:s,s:s,s:I,s:s}", "iss", "https://plain.test", "aud", "api", "sub",
		      "s", "exp", (json_int_t)NOW + 60, "groups", "solo");
	assert_int_equal(verify(sign("EdDSA", "d1", c, ed, NULL, 0), &id, err), 0);
	assert_int_equal(id.ngroups, 1);
	assert_string_equal(id.groups[0], "solo");
	sl_identity_fini(&id);
	c = json_pack("{s:s,s:s,s:s,s:I}", "iss", "https://plain.test", "aud", "api", "sub", "s",
		      "exp", (json_int_t)NOW + 60);
	assert_int_equal(verify(sign("EdDSA", "d1", c, ed, NULL, 0), &id, err), 0);
	assert_int_equal(id.ngroups, 0);
	assert_false(sl_identity_in_group(&id, ""));
	sl_identity_fini(&id);

	/* URL-like name: the literal claim wins over the dotted path... */
	c = claims("https://other.test", "sluice", NOW + 60);
	json_object_set_new(c, "https://example", json_pack("{s:[s]}", "com/groups", "via-path"));
	assert_int_equal(verify(sign("EdDSA", "d1", c, ed, NULL, 0), &id, err), 0);
	assert_int_equal(id.ngroups, 1);
	assert_string_equal(id.groups[0], "url-group");
	sl_identity_fini(&id);
	/* ...and the dotted path is used when there is no literal claim */
	c = claims("https://other.test", "sluice", NOW + 60);
	json_object_del(c, "https://example.com/groups");
	json_object_set_new(c, "https://example", json_pack("{s:[s]}", "com/groups", "via-path"));
	assert_int_equal(verify(sign("EdDSA", "d1", c, ed, NULL, 0), &id, err), 0);
	assert_int_equal(id.ngroups, 1);
	assert_string_equal(id.groups[0], "via-path");
	sl_identity_fini(&id);

	/* subject from a dotted path */
	c = json_pack("{s:s,s:s,s:s,s:I,s:{s:s}}", "iss", "https://subj.test", "aud", "api", "sub",
		      "ignored", "exp", (json_int_t)NOW + 60, "ext", "login", "svc-42");
	assert_int_equal(verify(sign("EdDSA", "d1", c, ed, NULL, 0), &id, err), 0);
	assert_string_equal(id.subject, "svc-42");
	sl_identity_fini(&id);
	c = json_pack("{s:s,s:s,s:s,s:I}", "iss", "https://subj.test", "aud", "api", "sub",
		      "ignored", "exp", (json_int_t)NOW + 60);
	assert_int_equal(verdict(sign("EdDSA", "d1", c, ed, NULL, 0), err), SL_EAUTH);
	assert_string_equal(err, "token has no valid subject");

	/* limits and malformed groups are refused, never silently dropped */
	g = json_array();
	for (int i = 0; i <= SL_IDENTITY_MAX_GROUPS; i++)
		json_array_append_new(g, json_sprintf("g%d", i));
	c = claims("https://plain.test", "api", NOW + 60);
	json_object_set_new(c, "groups", g);
	assert_int_equal(verdict(sign("EdDSA", "d1", c, ed, NULL, 0), err), SL_EAUTH);
	assert_string_equal(err, "too many groups in token");
	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	{
		json_t *bad[] = {json_pack("[s,i]", "ok", 1), json_pack("{s:s}", "a", "b"),
				 json_integer(3), json_pack("[s]", "line\nbreak"),
				 json_pack("[s]", big)};

		for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
			c = claims("https://plain.test", "api", NOW + 60);
			json_object_set_new(c, "groups", bad[i]);
			assert_int_equal(verdict(sign("EdDSA", "d1", c, ed, NULL, 0), err),
					 SL_EAUTH);
			assert_string_equal(err, "groups claim malformed");
		}
	}
	/* subject: control characters and over-long names */
	c = claims("https://plain.test", "api", NOW + 60);
	json_object_set_new(c, "sub", json_string("a\tb"));
	assert_int_equal(verdict(sign("EdDSA", "d1", c, ed, NULL, 0), err), SL_EAUTH);
	c = claims("https://plain.test", "api", NOW + 60);
	json_object_set_new(c, "sub", json_string(big));
	assert_int_equal(verdict(sign("EdDSA", "d1", c, ed, NULL, 0), err), SL_EAUTH);
	c = claims("https://plain.test", "api", NOW + 60);
	json_object_set_new(c, "sub", json_integer(7));
	assert_int_equal(verdict(sign("EdDSA", "d1", c, ed, NULL, 0), err), SL_EAUTH);
	/* C1 controls (U+009B is CSI to a terminal), U+2028/U+2029 and the bidi
	 * controls are control characters too, in the subject and in a group */
	{
		const char *ctl[] = {"agent-1\xc2\x9b"
				     "2J",
				     "a\xc2\x80",
				     "x\xc2\x85y",
				     "a\xc2\x9f",
				     "a\xe2\x80\xa8"
				     "b",
				     "a\xe2\x80\xa9",
				     "evil\xe2\x80\xaetxt",
				     "a\xe2\x80\xaa",
				     "a\xe2\x81\xa6",
				     "a\xe2\x81\xa9",
				     "a\xe2\x80\x8f",
				     "a\xd8\x9c",
				     "\x7f"};

		for (size_t i = 0; i < sizeof(ctl) / sizeof(ctl[0]); i++) {
			c = claims("https://plain.test", "api", NOW + 60);
			json_object_set_new(c, "sub", json_string(ctl[i]));
			assert_int_equal(verdict(sign("EdDSA", "d1", c, ed, NULL, 0), err),
					 SL_EAUTH);
			assert_string_equal(err, "token has no valid subject");
			c = claims("https://plain.test", "api", NOW + 60);
			json_object_set_new(c, "groups", json_pack("[s,s]", "ai-agents", ctl[i]));
			assert_int_equal(verdict(sign("EdDSA", "d1", c, ed, NULL, 0), err),
					 SL_EAUTH);
			assert_string_equal(err, "groups claim malformed");
		}
	}
	/* ...but letters outside ASCII, a no-break space and U+2027/U+202F are not */
	{
		const char *fine[] = {"Jos\xc3\xa9",
				      "\xe6\x97\xa5\xe6\x9c\xac",
				      "a\xc2\xa0"
				      "b",
				      "a\xe2\x80\xa7",
				      "a\xe2\x80\xaf",
				      "a\xe2\x81\xa5"};
		struct sl_identity id;

		for (size_t i = 0; i < sizeof(fine) / sizeof(fine[0]); i++) {
			c = claims("https://plain.test", "api", NOW + 60);
			json_object_set_new(c, "sub", json_string(fine[i]));
			json_object_set_new(c, "groups", json_pack("[s]", fine[i]));
			assert_int_equal(verify(sign("EdDSA", "d1", c, ed, NULL, 0), &id, err), 0);
			assert_string_equal(id.subject, fine[i]);
			sl_identity_fini(&id);
		}
	}
}

/* ------------------------------------------------------------ refused: claims */

static void
test_time_and_audience(void **state)
{
	char err[256];
	json_t *c;

	assert_int_equal(verdict(sign("RS256", "r1", claims("https://idp.test", "sluice", NOW - 61),
				      rsa, NULL, 0),
				 err),
			 SL_EEXPIRED);
	assert_string_equal(err, "token expired");
	/* plain.test has no leeway */
	assert_int_equal(verdict(sign("EdDSA", "d1", claims("https://plain.test", "api", NOW - 1),
				      ed, NULL, 0),
				 err),
			 SL_EEXPIRED);
	assert_int_equal(
		verdict(sign("EdDSA", "d1", claims("https://plain.test", "api", NOW), ed, NULL, 0),
			err),
		0);
	/* nbf: within the leeway accepted, beyond it refused */
	c = claims("https://idp.test", "sluice", NOW + 600);
	json_object_set_new(c, "nbf", json_integer(NOW + 30));
	assert_int_equal(verdict(sign("EdDSA", "d1", c, ed, NULL, 0), err), 0);
	c = claims("https://idp.test", "sluice", NOW + 600);
	json_object_set_new(c, "nbf", json_integer(NOW + 300));
	assert_int_equal(verdict(sign("EdDSA", "d1", c, ed, NULL, 0), err), SL_EEXPIRED);
	assert_string_equal(err, "token not yet valid");
	c = claims("https://plain.test", "api", NOW + 600);
	json_object_set_new(c, "nbf", json_integer(NOW + 1));
	assert_int_equal(verdict(sign("EdDSA", "d1", c, ed, NULL, 0), err), SL_EEXPIRED);
	/* iat in the future */
	c = claims("https://idp.test", "sluice", NOW + 600);
	json_object_set_new(c, "iat", json_integer(NOW + 3600));
	assert_int_equal(verdict(sign("EdDSA", "d1", c, ed, NULL, 0), err), SL_EAUTH);
	assert_string_equal(err, "token issued in the future");
	/* exp: missing, a string, absurd or negative numbers, past year 9999:
	 * refused, never cast (a cast of 1e300 to int64_t is undefined) */
	{
		json_t *bad[] = {NULL,
				 json_string("1900000000"),
				 json_real(1e300),
				 json_real(-1e300),
				 json_real(9.3e18),
				 json_true(),
				 json_null(),
				 json_integer(-1),
				 json_real(-0.5),
				 json_integer(INT64_MAX),
				 json_integer(INT64_MIN),
				 json_integer(253402300800LL),
				 json_pack("[I]", (json_int_t)NOW + 60)};

		for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
			c = claims("https://idp.test", "sluice", NOW + 600);
			if (bad[i])
				json_object_set_new(c, "exp", bad[i]);
			else
				json_object_del(c, "exp");
			assert_int_equal(verdict(sign("EdDSA", "d1", c, ed, NULL, 0), err),
					 SL_EAUTH);
			assert_string_equal(err, "token has no valid expiry");
		}
	}
	/* nbf and iat: the same range, each with its own reason */
	{
		json_t *bad[] = {json_real(1e300), json_integer(-1), json_integer(INT64_MIN),
				 json_integer(INT64_MAX), json_string("0")};

		for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
			c = claims("https://idp.test", "sluice", NOW + 600);
			json_object_set(c, "nbf", bad[i]);
			assert_int_equal(verdict(sign("EdDSA", "d1", c, ed, NULL, 0), err),
					 SL_EAUTH);
			assert_string_equal(err, "token has an invalid nbf");
			c = claims("https://idp.test", "sluice", NOW + 600);
			json_object_set_new(c, "iat", bad[i]);
			assert_int_equal(verdict(sign("EdDSA", "d1", c, ed, NULL, 0), err),
					 SL_EAUTH);
			assert_string_equal(err, "token has an invalid iat");
		}
	}
	/* the last second of year 9999 is a valid exp, and nbf 0 a valid nbf */
	c = claims("https://idp.test", "sluice", 253402300799LL);
	json_object_set_new(c, "nbf", json_integer(0));
	json_object_set_new(c, "iat", json_real(0.0));
	assert_int_equal(verdict(sign("EdDSA", "d1", c, ed, NULL, 0), err), 0);
	/* fractions round to the stricter side: exp down, nbf and iat up
	 * (plain.test has no leeway) */
	c = claims("https://idp.test", "sluice", NOW + 60);
	json_object_set_new(c, "exp", json_real((double)NOW + 60.5));
	assert_int_equal(verdict(sign("EdDSA", "d1", c, ed, NULL, 0), err), 0);
	c = claims("https://plain.test", "api", NOW);
	json_object_set_new(c, "exp", json_real((double)NOW - 0.5));
	assert_int_equal(verdict(sign("EdDSA", "d1", c, ed, NULL, 0), err), SL_EEXPIRED);
	c = claims("https://plain.test", "api", NOW + 60);
	json_object_set_new(c, "nbf", json_real((double)NOW + 0.5));
	assert_int_equal(verdict(sign("EdDSA", "d1", c, ed, NULL, 0), err), SL_EEXPIRED);
	c = claims("https://plain.test", "api", NOW + 60);
	json_object_set_new(c, "iat", json_real((double)NOW + 0.5));
	assert_int_equal(verdict(sign("EdDSA", "d1", c, ed, NULL, 0), err), SL_EAUTH);
	assert_string_equal(err, "token issued in the future");
	c = claims("https://plain.test", "api", NOW + 60);
	json_object_set_new(c, "nbf", json_real((double)NOW - 0.5));
	json_object_set_new(c, "iat", json_real((double)NOW - 0.5));
	assert_int_equal(verdict(sign("EdDSA", "d1", c, ed, NULL, 0), err), 0);

	/* audience: string, array, missing, wrong type */
	assert_int_equal(verdict(sign("RS256", "r1", claims("https://idp.test", "nope", NOW + 60),
				      rsa, NULL, 0),
				 err),
			 SL_EAUTH);
	assert_string_equal(err, "audience mismatch");
	c = claims("https://idp.test", "x", NOW + 60);
	json_object_set_new(c, "aud", json_pack("[s,s]", "sluice2", "Sluice"));
	assert_int_equal(verdict(sign("EdDSA", "d1", c, ed, NULL, 0), err), SL_EAUTH);
	assert_string_equal(err, "audience mismatch");
	/* an audience array with anything but strings in it is malformed, even
	 * when one element matches */
	{
		json_t *bad[] = {json_pack("[s,i]", "sluice", 1), json_pack("[n,s]", "sluice"),
				 json_pack("[s,[s]]", "sluice", "x"), json_array(),
				 json_integer(1)};

		for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
			c = claims("https://idp.test", "x", NOW + 60);
			json_object_set_new(c, "aud", bad[i]);
			assert_int_equal(verdict(sign("EdDSA", "d1", c, ed, NULL, 0), err),
					 SL_EAUTH);
			assert_string_equal(err, "audience mismatch");
		}
	}
	c = claims("https://idp.test", "x", NOW + 60);
	json_object_del(c, "aud");
	assert_int_equal(verdict(sign("EdDSA", "d1", c, ed, NULL, 0), err), SL_EAUTH);
	c = claims("https://idp.test", "x", NOW + 60);
	json_object_set_new(c, "aud", json_pack("{s:s}", "aud", "sluice"));
	assert_int_equal(verdict(sign("EdDSA", "d1", c, ed, NULL, 0), err), SL_EAUTH);

	/* issuer: unknown, a prefix, missing */
	assert_int_equal(
		verdict(sign("RS256", "r1", claims("https://evil.test", "sluice", NOW + 60), rsa,
			     NULL, 0),
			err),
		SL_EAUTH);
	assert_string_equal(err, "issuer not trusted");
	assert_int_equal(
		verdict(sign("RS256", "r1", claims("https://idp.test/", "sluice", NOW + 60), rsa,
			     NULL, 0),
			err),
		SL_EAUTH);
	c = claims("https://idp.test", "sluice", NOW + 60);
	json_object_del(c, "iss");
	assert_int_equal(verdict(sign("EdDSA", "d1", c, ed, NULL, 0), err), SL_EAUTH);
	assert_string_equal(err, "token has no issuer");
}

/* ------------------------------------------------------------ refused: algorithms, keys */

static void
test_algorithms(void **state)
{
	char err[256], *pem;
	uint8_t pubder[1024], *p = pubder;
	int publen = i2d_PUBKEY(rsa, &p);
	BIO *b = BIO_new(BIO_s_mem());
	long pemlen;

	PEM_write_bio_PUBKEY(b, rsa);
	pemlen = BIO_get_mem_data(b, &pem);
	/* alg none, with and without a signature, any spelling */
	assert_int_equal(verdict(sign("none", "r1", claims("https://idp.test", "sluice", NOW + 60),
				      NULL, NULL, 0),
				 err),
			 SL_EAUTH);
	assert_string_equal(err, "algorithm not allowed");
	assert_int_equal(verdict(sign("none", NULL, claims("https://plain.test", "api", NOW + 60),
				      NULL, "x", 1),
				 err),
			 SL_EAUTH);
	assert_int_equal(verdict(sign("NONE", "d1", claims("https://idp.test", "sluice", NOW + 60),
				      NULL, NULL, 0),
				 err),
			 SL_EAUTH);
	/* alg confusion: HS256 keyed with the RSA public key as DER, PEM, JWK,
	 * the whole JWKS, and with the (ignored) oct key */
	{
		struct {
			const void *k;
			size_t n;
		} secrets[] = {{pubder, (size_t)publen},
			       {pem, (size_t)pemlen},
			       {rsa_jwk, strlen(rsa_jwk)},
			       {jwks_text, strlen(jwks_text)}};

		for (size_t i = 0; i < sizeof(secrets) / sizeof(secrets[0]); i++) {
			assert_int_equal(
				verdict(sign("HS256", "r1",
					     claims("https://idp.test", "sluice", NOW + 60), NULL,
					     secrets[i].k, secrets[i].n),
					err),
				SL_EAUTH);
			assert_string_equal(err, "algorithm not allowed");
		}
	}
	BIO_free(b);
	assert_int_equal(verdict(sign("HS256", "h1", claims("https://idp.test", "sluice", NOW + 60),
				      NULL, "secret", 6),
				 err),
			 SL_EAUTH);
	/* algorithms outside the three, even when the key type would fit */
	assert_int_equal(verdict(sign("PS256", "r1", claims("https://idp.test", "sluice", NOW + 60),
				      rsa, NULL, 0),
				 err),
			 SL_EAUTH);
	assert_int_equal(verdict(sign("RS512", "r1", claims("https://idp.test", "sluice", NOW + 60),
				      rsa, NULL, 0),
				 err),
			 SL_EAUTH);
	/* the key decides: RS256 header on the EC kid, ES256 on the RSA kid,
	 * EdDSA on the RSA kid */
	assert_int_equal(verdict(sign("RS256", "e1", claims("https://idp.test", "sluice", NOW + 60),
				      rsa, NULL, 0),
				 err),
			 SL_EAUTH);
	assert_string_equal(err, "algorithm does not match the key");
	assert_int_equal(verdict(sign("ES256", "r1", claims("https://idp.test", "sluice", NOW + 60),
				      ec, NULL, 0),
				 err),
			 SL_EAUTH);
	assert_int_equal(verdict(sign("EdDSA", "r1", claims("https://idp.test", "sluice", NOW + 60),
				      ed, NULL, 0),
				 err),
			 SL_EAUTH);
	/* right kid, wrong key; wrong kid for the right key */
	{
		EVP_PKEY *other = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");

		assert_int_equal(
			verdict(sign("EdDSA", "d1", claims("https://idp.test", "sluice", NOW + 60),
				     other, NULL, 0),
				err),
			SL_EAUTH);
		assert_string_equal(err, "signature invalid");
		EVP_PKEY_free(other);
	}
	/* unknown kid: the caller may refresh */
	assert_int_equal(verdict(sign("EdDSA", "zz", claims("https://idp.test", "sluice", NOW + 60),
				      ed, NULL, 0),
				 err),
			 SL_ENOKEY);
	assert_string_equal(err, "signing key unknown");
	/* ES256 signature in DER rather than JOSE r||s */
	assert_int_equal(
		verdict(sign_hdr("{\"alg\":\"ES256\",\"kid\":\"e1\"}",
				 claims("https://idp.test", "sluice", NOW + 60), ec, SIG_DER),
			err),
		SL_EAUTH);
}

/* The other spelling of an ES256 token: s replaced by n - s (owned). */
static char *
es256_flip(const char *tok)
{
	const char *dot = strrchr(tok, '.');
	uint8_t sig[64];
	size_t sl;
	BIGNUM *n = NULL, *s = BN_new();
	char *sb, *out;

	assert_int_equal(sl_b64url_decode(dot + 1, strlen(dot + 1), sig, sizeof(sig), &sl), 0);
	assert_int_equal(sl, 64);
	assert_true(
		BN_hex2bn(&n, "FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551") >
		0);
	assert_non_null(BN_bin2bn(sig + 32, 32, s));
	assert_int_equal(BN_sub(s, n, s), 1);
	assert_int_equal(BN_bn2binpad(s, sig + 32, 32), 32);
	sb = b64u(sig, 64);
	out = malloc((size_t)(dot - tok) + strlen(sb) + 2);
	assert_non_null(out);
	sprintf(out, "%.*s.%s", (int)(dot - tok), tok, sb);
	free(sb);
	BN_free(n);
	BN_free(s);
	return out;
}

/* 1 if the ES256 token's s is above n/2. */
static int
es256_high(const char *tok)
{
	const char *dot = strrchr(tok, '.');
	uint8_t sig[64];
	size_t sl;

	assert_int_equal(sl_b64url_decode(dot + 1, strlen(dot + 1), sig, sizeof(sig), &sl), 0);
	return memcmp(sig + 32,
		      "\x7f\xff\xff\xff\x80\0\0\0\x7f\xff\xff\xff\xff\xff\xff\xff"
		      "\xde\x73\x7d\x56\xd3\x8b\xcf\x42\x79\xdc\xe5\x61\x7e\x31\x92\xa8",
		      32) > 0;
}

/* ES256 (r, s) and (r, n - s) both verify: both spellings of one token are
 * accepted (IdPs do not normalise s), and both get the token_sha256 of the
 * low-S spelling, so the audit trail names one token once. */
static void
test_es256_malleability(void **state)
{
	for (int i = 0; i < 8; i++) {
		json_t *c = claims("https://idp.test", "sluice", NOW + 60);
		char err[256], *t, *f, *low, hex[65];
		struct sl_identity a, b;
		uint8_t h[32];

		json_object_set_new(c, "jti", json_integer(i));
		t = sign("ES256", "e1", c, ec, NULL, 0);
		f = es256_flip(t);
		assert_int_not_equal(es256_high(t), es256_high(f));
		low = es256_high(t) ? f : t;
		SHA256((const uint8_t *)low, strlen(low), h);
		for (int j = 0; j < 32; j++)
			sprintf(hex + 2 * j, "%02x", h[j]);
		assert_int_equal(sl_idp_verify(idp, t, strlen(t), NOW, &a, err, sizeof(err)), 0);
		assert_int_equal(sl_idp_verify(idp, f, strlen(f), NOW, &b, err, sizeof(err)), 0);
		assert_string_equal(a.token_sha256, hex);
		assert_string_equal(b.token_sha256, hex);
		sl_identity_fini(&a);
		sl_identity_fini(&b);
		free(t);
		free(f);
	}
}

static void
test_headers(void **state)
{
	char err[256];

	/* missing kid: refused with several keys, fine with one */
	assert_int_equal(verdict(sign("EdDSA", NULL, claims("https://idp.test", "sluice", NOW + 60),
				      ed, NULL, 0),
				 err),
			 SL_EAUTH);
	assert_string_equal(err, "token has no kid and the issuer has several keys");
	assert_int_equal(verdict(sign("EdDSA", NULL, claims("https://plain.test", "api", NOW + 60),
				      ed, NULL, 0),
				 err),
			 0);
	assert_int_equal(verdict(sign("ES256", NULL, claims("https://plain.test", "api", NOW + 60),
				      ec, NULL, 0),
				 err),
			 SL_EAUTH);
	{
		struct {
			const char *hdr;
			const char *why;
		} bad[] = {
			{"{\"alg\":\"EdDSA\",\"kid\":\"d1\",\"crit\":[\"exp\"]}",
			 "token has critical header parameters"},
			{"{\"alg\":\"EdDSA\",\"kid\":\"d1\",\"crit\":[]}",
			 "token has critical header parameters"},
			{"{\"alg\":\"EdDSA\",\"kid\":7}", "malformed token header"},
			{"{\"alg\":[\"EdDSA\"],\"kid\":\"d1\"}", "malformed token header"},
			{"{\"alg\":\"EdDSA\",\"kid\":\"d1\",\"typ\":null}",
			 "malformed token header"},
			{"{\"alg\":\"EdDSA\",\"kid\":\"d1\",\"b64\":false}",
			 "token header not supported"},
			{"{\"alg\":\"EdDSA\",\"kid\":\"d1\",\"zip\":\"DEF\"}",
			 "token header not supported"},
			{"{\"kid\":\"d1\"}", "algorithm not allowed"},
			/* duplicate parameters: which alg would win is parser-dependent */
			{"{\"alg\":\"EdDSA\",\"kid\":\"d1\",\"alg\":\"EdDSA\"}", "malformed token"},
			{"[\"EdDSA\"]", "malformed token"},
			{"{\"alg\":\"EdDSA\",\"kid\":\"d1\"} x", "malformed token"},
		};

		for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
			assert_int_equal(
				verdict(sign_hdr(bad[i].hdr,
						 claims("https://idp.test", "sluice", NOW + 60), ed,
						 0),
					err),
				SL_EAUTH);
			assert_string_equal(err, bad[i].why);
		}
	}
	/* duplicate claims in a correctly signed payload */
	{
		char *t = sign_raw("{\"alg\":\"EdDSA\",\"kid\":\"d1\"}",
				   "{\"iss\":\"https://idp.test\",\"aud\":\"sluice\",\"sub\":\"a\","
				   "\"exp\":1900000000,\"sub\":\"admin\"}",
				   ed, NULL, 0, 0);

		assert_int_equal(verdict(t, err), SL_EAUTH);
		assert_string_equal(err, "malformed token");
	}
}

/* ------------------------------------------------------------ refused: malformed */

static void
test_malformed(void **state)
{
	char err[256], *t, *u;
	size_t n;

	t = sign("EdDSA", "d1", claims("https://idp.test", "sluice", NOW + 60), ed, NULL, 0);
	n = strlen(t);
	/* tampered payload */
	u = strdup(t);
	strchr(u, '.')[3] ^= 1;
	assert_int_equal(verdict(u, err), SL_EAUTH);
	/* truncated signature, truncated in the payload, signature dropped */
	u = strndup(t, n - 4);
	assert_int_equal(verdict(u, err), SL_EAUTH);
	u = strndup(t, (size_t)(strchr(t, '.') - t) + 10);
	assert_int_equal(verdict(u, err), SL_EAUTH);
	u = strndup(t, (size_t)(strrchr(t, '.') - t) + 1);
	assert_int_equal(verdict(u, err), SL_EAUTH);
	assert_string_equal(err, "malformed signature");
	/* a trailing '=' (padding), a trailing dot, a fourth part */
	u = malloc(n + 3);
	sprintf(u, "%s=", t);
	assert_int_equal(verdict(u, err), SL_EAUTH);
	u = malloc(n + 3);
	sprintf(u, "%s.", t);
	assert_int_equal(verdict(u, err), SL_EAUTH);
	u = malloc(n + 8);
	sprintf(u, "%s.AAAA", t);
	assert_int_equal(verdict(u, err), SL_EAUTH);
	/* base64 (not base64url) alphabet in the signature */
	u = strdup(t);
	u[n - 2] = '+';
	assert_int_equal(verdict(u, err), SL_EAUTH);
	/* the untouched token still verifies */
	assert_int_equal(verdict(t, err), 0);
	{
		const char *g[] = {"",
				   "a",
				   "a.b",
				   "a..b",
				   "a.b.c.d",
				   "....",
				   "..",
				   ".a.b",
				   "eyJhbGciOiJFZERTQSJ9..",
				   "eyJhbGciOiJFZERTQSJ9.e30.AAAA",
				   "!!!.???.***",
				   "eyJhbGciOiJFZERTQSJ9.eyJ=.AAAA",
				   "eyJhbGciOiJFZERTQSJ9 .e30.AAAA",
				   "eyJhbGciOiJFZERTQSJ9.bnVsbA.AAAA",
				   "eyJhbGciOiJFZERTQSJ8.e30.AAAA"};
		struct sl_identity id;

		for (size_t i = 0; i < sizeof(g) / sizeof(g[0]); i++)
			assert_int_equal(sl_idp_verify(idp, g[i], strlen(g[i]), NOW, &id, err, 256),
					 SL_EAUTH);
		/* an embedded NUL */
		assert_int_equal(sl_idp_verify(idp, "a.\0.c", 5, NOW, &id, err, 256), SL_EAUTH);
	}
	/* over the size limit: garbage, and a validly signed token */
	{
		struct sl_identity id;
		char *big = malloc(40000);
		json_t *c = claims("https://idp.test", "sluice", NOW + 60);

		memset(big, 'a', 39999);
		big[39999] = 0;
		assert_int_equal(sl_idp_verify(idp, big, strlen(big), NOW, &id, err, 256),
				 SL_EAUTH);
		memset(big, 'g', SL_JWT_MAX);
		big[SL_JWT_MAX] = 0;
		json_object_set_new(c, "pad", json_string(big));
		free(big);
		assert_int_equal(verdict(sign("EdDSA", "d1", c, ed, NULL, 0), err), SL_EAUTH);
		assert_string_equal(err, "malformed token");
	}
}

/* ------------------------------------------------------------ cache */

struct hammer {
	char *tok[4];
	atomic_int failures;
};

static void *
hammer_main(void *arg)
{
	struct hammer *h = arg;
	char err[256];

	for (int i = 0; i < 200; i++) {
		struct sl_identity id;
		char *t = h->tok[i % 4];

		if (sl_idp_verify(idp, t, strlen(t), NOW, &id, err, sizeof(err)) != 0 ||
		    strcmp(id.subject, "agent-7") != 0)
			atomic_fetch_add(&h->failures, 1);
		sl_identity_fini(&id);
	}
	return NULL;
}

static void
test_cache(void **state)
{
	struct sl_identity a, b;
	char err[256], *t;
	pthread_t th[4];
	struct hammer h = {0};

	t = sign("ES256", "e1", claims("https://idp.test", "sluice", NOW + 100), ec, NULL, 0);
	assert_int_equal(sl_idp_verify(idp, t, strlen(t), NOW, &a, err, sizeof(err)), 0);
	assert_int_equal(sl_idp_verify(idp, t, strlen(t), NOW + 1, &b, err, sizeof(err)), 0);
	assert_string_equal(a.subject, b.subject);
	assert_string_equal(a.issuer, b.issuer);
	assert_string_equal(a.token_sha256, b.token_sha256);
	assert_int_equal(a.exp, b.exp);
	assert_int_equal(a.ngroups, b.ngroups);
	for (size_t i = 0; i < a.ngroups; i++)
		assert_string_equal(a.groups[i], b.groups[i]);
	/* separate copies: the caller owns them */
	assert_ptr_not_equal(a.subject, b.subject);
	sl_identity_fini(&b);
	/* sl_identity_copy */
	assert_int_equal(sl_identity_copy(&b, &a), 0);
	assert_string_equal(b.subject, a.subject);
	assert_true(sl_identity_in_group(&b, "readers"));
	sl_identity_fini(&b);
	sl_identity_fini(&a);
	sl_identity_fini(&a); /* fini twice is harmless */
	/* a cached token still expires */
	assert_int_equal(sl_idp_verify(idp, t, strlen(t), NOW + 200, &a, err, sizeof(err)),
			 SL_EEXPIRED);
	free(t);
	/* many threads, same and different tokens */
	for (int i = 0; i < 4; i++)
		h.tok[i] = sign(i % 2 ? "EdDSA" : "RS256", i % 2 ? "d1" : "r1",
				claims("https://idp.test", "sluice", NOW + 60 + i),
				i % 2 ? ed : rsa, NULL, 0);
	for (int i = 0; i < 4; i++)
		assert_int_equal(pthread_create(&th[i], NULL, hammer_main, &h), 0);
	for (int i = 0; i < 4; i++)
		pthread_join(th[i], NULL);
	assert_int_equal(atomic_load(&h.failures), 0);
	for (int i = 0; i < 4; i++)
		free(h.tok[i]);
}

/* ------------------------------------------------------------ key sets */

static void
test_keysets(void **state)
{
	char path[128], err[256], n64[400], e64[16], jw[4096], x64[64], y64[64], rn64[600];
	struct sl_cfg_issuer is = {.issuer = "https://ks.test", .audience = "a", .jwks_file = path};
	struct sl_cfg_identity cfg = {.issuers = &is, .issuers_count = 1};
	struct sl_idp *p;
	EVP_PKEY *small, *ec2;
	char *edj = ed_jwk(ed, "enc");

	small = EVP_RSA_gen(1024);
	ec2 = EVP_EC_gen("P-256");
	bn_b64(small, OSSL_PKEY_PARAM_RSA_N, n64, sizeof(n64), 0);
	bn_b64(small, OSSL_PKEY_PARAM_RSA_E, e64, sizeof(e64), 0);
	bn_b64(rsa, OSSL_PKEY_PARAM_RSA_N, rn64, sizeof(rn64), 0);
	bn_b64(ec2, OSSL_PKEY_PARAM_EC_PUB_X, x64, sizeof(x64), 32);
	bn_b64(ec2, OSSL_PKEY_PARAM_EC_PUB_Y, y64, sizeof(y64), 32);
	/* an RSA key under 2048 bits, an RSA key for RS384, an Ed25519 key for
	 * encryption: none usable; a P-256 key marked ES256: usable */
	edj[strlen(edj) - 1] = '\0';
	snprintf(jw, sizeof(jw),
		 "{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"small\",\"n\":\"%s\",\"e\":\"%s\"},"
		 "{\"kty\":\"RSA\",\"n\":\"%s\",\"e\":\"AQAB\",\"alg\":\"RS384\",\"kid\":\"r384\"},"
		 "%s,\"use\":\"enc\"},"
		 "{\"kty\":\"EC\",\"kid\":\"ok\",\"alg\":\"ES256\",\"use\":\"sig\",\"crv\":\"P-"
		 "256\","
		 "\"x\":\"%s\",\"y\":\"%s\"}]}",
		 n64, e64, rn64, edj, x64, y64);
	free(edj);
	snprintf(path, sizeof(path), "%s/ks.json", dir);
	write_text(path, jw);
	assert_int_equal(sl_idp_new(&cfg, dir, &p, err, sizeof(err)), 0);
	{
		struct sl_identity id;
		const char *kids[] = {"small", "r384", "enc"};
		EVP_PKEY *keys[] = {small, rsa, ed};
		const char *algs[] = {"RS256", "RS256", "EdDSA"};

		for (size_t i = 0; i < 3; i++)
			assert_int_equal(verify_with(p,
						     sign(algs[i], kids[i],
							  claims("https://ks.test", "a", NOW + 60),
							  keys[i], NULL, 0),
						     NOW, &id, err),
					 SL_ENOKEY);
		assert_int_equal(
			verify_with(p,
				    sign("ES256", "ok", claims("https://ks.test", "a", NOW + 60),
					 ec2, NULL, 0),
				    NOW, &id, err),
			0);
		sl_identity_fini(&id);
	}
	sl_idp_free(p);

	/* a 1024-bit modulus with leading zero bytes up to 256 bytes is still
	 * 1024 bits; an even or tiny exponent; a kid that would be truncated:
	 * none usable */
	{
		BIGNUM *bn = NULL;
		uint8_t nb[256];
		char *pn, *longkid = malloc(200), *edl;

		assert_int_equal(EVP_PKEY_get_bn_param(small, OSSL_PKEY_PARAM_RSA_N, &bn), 1);
		assert_int_equal(BN_bn2binpad(bn, nb, sizeof(nb)), 256);
		BN_free(bn);
		pn = b64u(nb, sizeof(nb));
		memset(longkid, 'k', 199);
		longkid[199] = '\0';
		edl = ed_jwk(ed, longkid);
		snprintf(jw, sizeof(jw),
			 "{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"pad\",\"n\":\"%s\",\"e\":\"%s\"},"
			 "{\"kty\":\"RSA\",\"kid\":\"even\",\"n\":\"%s\",\"e\":\"AQAA\"},"
			 "{\"kty\":\"RSA\",\"kid\":\"one\",\"n\":\"%s\",\"e\":\"AQ\"},%s,"
			 "{\"kty\":\"RSA\",\"kid\":\"good\",\"n\":\"%s\",\"e\":\"AQAB\"}]}",
			 pn, e64, rn64, rn64, edl, rn64);
		write_text(path, jw);
		assert_int_equal(sl_idp_new(&cfg, dir, &p, err, sizeof(err)), 0);
		assert_int_equal(p->issuers[0].keys->n, 1);
		assert_string_equal(p->issuers[0].keys->keys[0].kid, "good");
		sl_idp_free(p);
		free(pn);
		free(edl);
		free(longkid);
	}

	/* a JWK with private members (an EC key with d, an RSA key with its
	 * primes, an OKP key with d, an oct key) is never used, and each one is
	 * logged as an error naming the issuer and kid */
	{
		struct sl_identity id;
		char *log, rd64[64], p64[300], q64[300];

		bn_b64(ec2, OSSL_PKEY_PARAM_PRIV_KEY, rd64, sizeof(rd64), 32);
		bn_b64(rsa, OSSL_PKEY_PARAM_RSA_FACTOR1, p64, sizeof(p64), 0);
		bn_b64(rsa, OSSL_PKEY_PARAM_RSA_FACTOR2, q64, sizeof(q64), 0);
		snprintf(jw, sizeof(jw),
			 "{\"keys\":[{\"kty\":\"EC\",\"kid\":\"ecpriv\",\"crv\":\"P-256\","
			 "\"x\":\"%s\",\"y\":\"%s\",\"d\":\"%s\"},"
			 "{\"kty\":\"RSA\",\"kid\":\"rsapriv\",\"n\":\"%s\",\"e\":\"AQAB\","
			 "\"p\":\"%s\",\"q\":\"%s\"},"
			 "{\"kty\":\"OKP\",\"kid\":\"ed\\u001b[2Jpriv\",\"crv\":\"Ed25519\","
			 "\"x\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\",\"d\":\"AAAA\"},"
			 "{\"kty\":\"oct\",\"kid\":\"sym\",\"k\":\"c2VjcmV0\"}]}",
			 x64, y64, rd64, rn64, p64, q64);
		write_text(path, jw);
		stderr_begin();
		assert_int_equal(sl_idp_new(&cfg, dir, &p, err, sizeof(err)), 0);
		log = stderr_end();
		assert_int_equal(p->issuers[0].keys->n, 0);
		assert_int_equal(
			verify_with(p,
				    sign("ES256", "ecpriv",
					 claims("https://ks.test", "a", NOW + 60), ec2, NULL, 0),
				    NOW, &id, err),
			SL_ENOKEY);
		assert_int_equal(
			verify_with(p,
				    sign("RS256", "rsapriv",
					 claims("https://ks.test", "a", NOW + 60), rsa, NULL, 0),
				    NOW, &id, err),
			SL_ENOKEY);
		assert_int_equal(count_of(log, "error: identity: the JWKS of https://ks.test "
					       "publishes private key material"),
				 4);
		assert_non_null(strstr(log, "kid \"ecpriv\""));
		assert_non_null(strstr(log, "kid \"rsapriv\""));
		/* the kid is the IdP's text: no escape sequence reaches the log */
		assert_non_null(strstr(log, "kid \"ed?[2Jpriv\""));
		assert_null(strchr(log, 0x1b));
		free(log);
		sl_idp_free(p);
	}

	/* an empty key set: SL_ENOKEY, and a file issuer is never refetched */
	write_text(path, "{\"keys\":[]}");
	assert_int_equal(sl_idp_new(&cfg, dir, &p, err, sizeof(err)), 0);
	{
		struct sl_identity id;
		char *t =
			sign("EdDSA", NULL, claims("https://ks.test", "a", NOW + 60), ed, NULL, 0);

		assert_int_equal(sl_idp_verify(p, t, strlen(t), NOW, &id, err, sizeof(err)),
				 SL_ENOKEY);
		assert_int_equal(sl_idp_refresh(p, t, strlen(t)), SL_ESTATE);
		free(t);
	}
	sl_idp_free(p);

	/* configuration errors */
	write_text(path, "{\"keys\":[{\"kty\":\"OKP\"}], \"keys\":[]}");
	assert_int_not_equal(sl_idp_new(&cfg, dir, &p, err, sizeof(err)), 0);
	assert_non_null(strstr(err, "not a valid key set"));
	assert_null(p);
	write_text(path, "not json");
	assert_int_not_equal(sl_idp_new(&cfg, dir, &p, err, sizeof(err)), 0);
	snprintf(path, sizeof(path), "%s/missing.json", dir);
	assert_int_not_equal(sl_idp_new(&cfg, dir, &p, err, sizeof(err)), 0);
	assert_non_null(strstr(err, "cannot read JWKS"));
	snprintf(path, sizeof(path), "%s/jwks1.json", dir);
	is.leeway = "soon";
	assert_int_equal(sl_idp_new(&cfg, dir, &p, err, sizeof(err)), SL_EINVAL);
	/* a leeway over a day is refused (exp + leeway must not overflow) */
	is.leeway = "1000000000000000d";
	assert_int_equal(sl_idp_new(&cfg, dir, &p, err, sizeof(err)), SL_EINVAL);
	assert_non_null(strstr(err, "leeway"));
	is.leeway = "25h";
	assert_int_equal(sl_idp_new(&cfg, dir, &p, err, sizeof(err)), SL_EINVAL);
	is.leeway = "1d";
	assert_int_equal(sl_idp_new(&cfg, dir, &p, err, sizeof(err)), 0);
	assert_int_equal(p->issuers[0].leeway_s, 86400);
	sl_idp_free(p);
	is.leeway = NULL;
	is.audience = "";
	assert_int_equal(sl_idp_new(&cfg, dir, &p, err, sizeof(err)), SL_EINVAL);
	is.audience = "a";
	{
		struct sl_cfg_issuer two[2] = {is, is};
		struct sl_cfg_identity c2 = {.issuers = two, .issuers_count = 2};

		assert_int_equal(sl_idp_new(&c2, dir, &p, err, sizeof(err)), SL_EINVAL);
		assert_non_null(strstr(err, "listed twice"));
	}
	EVP_PKEY_free(small);
	EVP_PKEY_free(ec2);
}

/* ------------------------------------------------------------ dev issuer and CLI */

static char *
slurp(const char *path)
{
	char *data;
	size_t len;

	assert_int_equal(sl_read_file(path, 1 << 20, &data, &len), 0);
	return data;
}

static void
test_dev_issuer(void **state)
{
	char d[128], err[256], *tok, *jw1, *jw2, path[256];
	struct sl_cfg_identity none = {0};
	struct sl_idp *dev;
	struct sl_identity id;
	const char *groups[] = {"ai-agents", "dba"};
	struct sl_mint_opts o = {.sub = "agent-1", .groups = groups, .ngroups = 2, .ttl_s = 600};
	struct stat st;

	/* nested, missing data_dir: created 0700 */
	snprintf(d, sizeof(d), "%s/dev/nested", dir);
	assert_int_equal(sl_devissuer_mint(d, &o, &tok, err, sizeof(err)), SL_ENOENT);
	assert_int_equal(sl_devissuer_init(d, 0, err, sizeof(err)), 0);
	assert_int_equal(stat(d, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0700);
	snprintf(path, sizeof(path), "%s/dev-issuer.key", d);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	snprintf(path, sizeof(path), "%s/dev-jwks.json", d);
	jw1 = slurp(path);
	assert_null(strstr(jw1, "\"d\"")); /* the public half only */

	assert_int_equal(sl_idp_new(&none, d, &dev, err, sizeof(err)), 0);
	assert_int_equal(sl_devissuer_mint(d, &o, &tok, err, sizeof(err)), 0);
	assert_int_equal(sl_idp_verify(dev, tok, strlen(tok), time(NULL), &id, err, sizeof(err)),
			 0);
	assert_string_equal(id.subject, "agent-1");
	assert_string_equal(id.issuer, SL_DEV_ISSUER);
	assert_int_equal(id.ngroups, 2);
	assert_true(sl_identity_in_group(&id, "dba"));
	sl_identity_fini(&id);
	assert_int_equal(
		sl_idp_verify(dev, tok, strlen(tok), time(NULL) + 4000, &id, err, sizeof(err)),
		SL_EEXPIRED);
	free(tok);
	/* other audience, expired, not yet valid, extra claims */
	o.aud = "other";
	assert_int_equal(sl_devissuer_mint(d, &o, &tok, err, sizeof(err)), 0);
	assert_int_equal(verify_with(dev, tok, time(NULL), &id, err), SL_EAUTH);
	o.aud = NULL;
	o.ttl_s = -3600;
	assert_int_equal(sl_devissuer_mint(d, &o, &tok, err, sizeof(err)), 0);
	assert_int_equal(verify_with(dev, tok, time(NULL), &id, err), SL_EEXPIRED);
	o.ttl_s = 600;
	o.nbf_offset_s = 300;
	assert_int_equal(sl_devissuer_mint(d, &o, &tok, err, sizeof(err)), 0);
	assert_int_equal(verify_with(dev, tok, time(NULL), &id, err), SL_EEXPIRED);
	o.nbf_offset_s = 0;
	o.extra_claims_json = "{\"groups\":\"from-claims\",\"tenant\":\"a\"}";
	assert_int_equal(sl_devissuer_mint(d, &o, &tok, err, sizeof(err)), 0);
	assert_int_equal(verify_with(dev, tok, time(NULL), &id, err), 0);
	assert_int_equal(id.ngroups, 1);
	assert_string_equal(id.groups[0], "from-claims");
	sl_identity_fini(&id);
	o.extra_claims_json = "[1]";
	assert_int_equal(sl_devissuer_mint(d, &o, &tok, err, sizeof(err)), SL_EINVAL);
	o.extra_claims_json = NULL;
	o.sub = NULL;
	assert_int_equal(sl_devissuer_mint(d, &o, &tok, err, sizeof(err)), SL_EINVAL);
	o.sub = "agent-1";

	/* init keeps the key; a lost key set is derived again from it */
	assert_int_equal(sl_devissuer_init(d, 0, err, sizeof(err)), 0);
	jw2 = slurp(path);
	assert_string_equal(jw1, jw2);
	free(jw2);
	unlink(path);
	assert_int_equal(sl_devissuer_init(d, 0, err, sizeof(err)), 0);
	jw2 = slurp(path);
	assert_string_equal(jw1, jw2);
	free(jw2);
	/* --force replaces it: old idp no longer knows the new kid */
	assert_int_equal(sl_devissuer_init(d, 1, err, sizeof(err)), 0);
	jw2 = slurp(path);
	assert_string_not_equal(jw1, jw2);
	free(jw2);
	assert_int_equal(sl_devissuer_mint(d, &o, &tok, err, sizeof(err)), 0);
	assert_int_equal(verify_with(dev, tok, time(NULL), &id, err), SL_ENOKEY);
	free(jw1);
	sl_idp_free(dev);

	/* an empty issuers list creates the dev issuer on first use */
	snprintf(d, sizeof(d), "%s/dev2", dir);
	assert_int_equal(sl_idp_new(&none, d, &dev, err, sizeof(err)), 0);
	assert_int_equal(sl_devissuer_mint(d, &o, &tok, err, sizeof(err)), 0);
	assert_int_equal(verify_with(dev, tok, time(NULL), &id, err), 0);
	sl_identity_fini(&id);
	sl_idp_free(dev);
}

/* Runs sl_token_cli with stdout captured into out (NUL-terminated). */
static int
run_cli(struct sl_config *cfg, char *out, size_t outlen, int argc, ...)
{
	char *argv[16], path[128];
	va_list ap;
	int saved, fd, rc;
	ssize_t n;

	va_start(ap, argc);
	for (int i = 0; i < argc; i++)
		argv[i] = va_arg(ap, char *);
	va_end(ap);
	argv[argc] = NULL;
	snprintf(path, sizeof(path), "%s/cli.out", dir);
	fflush(stdout);
	saved = dup(1);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	dup2(fd, 1);
	rc = sl_token_cli(argc, argv, cfg);
	fflush(stdout);
	dup2(saved, 1);
	close(saved);
	lseek(fd, 0, SEEK_SET);
	n = read(fd, out, outlen - 1);
	out[n > 0 ? n : 0] = '\0';
	close(fd);
	return rc;
}

static void
test_token_cli(void **state)
{
	char d[128], out[4096], err[256];
	struct sl_config cfg = {0};
	struct sl_cfg_identity none = {0};
	struct sl_idp *dev;
	struct sl_identity id;

	snprintf(d, sizeof(d), "%s/cli", dir);
	cfg.gateway.data_dir = d;
	assert_int_equal(run_cli(&cfg, out, sizeof(out), 3, "mint", "--sub", "x"), 1);
	assert_int_equal(run_cli(&cfg, out, sizeof(out), 1, "init"), 0);
	assert_non_null(strstr(out, "dev issuer ready"));
	assert_int_equal(run_cli(&cfg, out, sizeof(out), 9, "mint", "--sub", "agent-9", "--groups",
				 "a,b,c", "--ttl", "10m", "--claims", "{\"x\":1}"),
			 0);
	out[strcspn(out, "\n")] = '\0';
	assert_int_equal(sl_idp_new(&none, d, &dev, err, sizeof(err)), 0);
	assert_int_equal(sl_idp_verify(dev, out, strlen(out), time(NULL), &id, err, sizeof(err)),
			 0);
	assert_string_equal(id.subject, "agent-9");
	assert_int_equal(id.ngroups, 3);
	assert_true(id.exp > time(NULL) + 500 && id.exp <= time(NULL) + 600);
	sl_identity_fini(&id);
	assert_int_equal(run_cli(&cfg, out, sizeof(out), 5, "mint", "--sub", "y", "--ttl", "-1h"),
			 0);
	out[strcspn(out, "\n")] = '\0';
	assert_int_equal(sl_idp_verify(dev, out, strlen(out), time(NULL), &id, err, sizeof(err)),
			 SL_EEXPIRED);
	sl_idp_free(dev);
	/* usage errors: exit 2, nothing on stdout */
	assert_int_equal(run_cli(&cfg, out, sizeof(out), 1, "mint"), 2);
	assert_int_equal(run_cli(&cfg, out, sizeof(out), 2, "mint", "--sub"), 2);
	assert_int_equal(run_cli(&cfg, out, sizeof(out), 3, "mint", "--bogus", "1"), 2);
	assert_int_equal(run_cli(&cfg, out, sizeof(out), 5, "mint", "--sub", "x", "--ttl", "soon"),
			 2);
	assert_string_equal(out, "");
	assert_int_equal(run_cli(&cfg, out, sizeof(out), 2, "init", "--forse"), 2);
	assert_int_equal(run_cli(&cfg, out, sizeof(out), 1, "rotate"), 2);
	assert_int_equal(run_cli(&cfg, out, sizeof(out), 0), 2);
	/* bad --claims: a failure, not usage */
	assert_int_equal(run_cli(&cfg, out, sizeof(out), 5, "mint", "--sub", "x", "--claims", "[]"),
			 1);
}

/* ------------------------------------------------------------ refresh over HTTP */

struct srv {
	int fd, port;
	pthread_t th;
	atomic_int stop, disc_hits, jwks_hits;
	pthread_mutex_t mu;
	char jwks[4096];
	char disc_issuer[128]; /* "issuer" in the discovery document; "" = the server's URL */
	int status;	       /* of /jwks.json */
};

static void
srv_reply(int c, int status, const char *extra, const char *body, size_t len)
{
	char hdr[512];
	int n = snprintf(hdr, sizeof(hdr),
			 "HTTP/1.1 %d X\r\nContent-Type: application/json\r\n%s"
			 "Content-Length: %zu\r\nConnection: close\r\n\r\n",
			 status, extra, len);
	size_t off = 0;

	/* MSG_NOSIGNAL: the client may hang up early (the size cap does). */
	if (send(c, hdr, (size_t)n, MSG_NOSIGNAL) != n)
		return;
	while (off < len) {
		ssize_t w = send(c, body + off, len - off, MSG_NOSIGNAL);

		if (w <= 0)
			return;
		off += (size_t)w;
	}
}

static void
srv_handle(struct srv *s, int c)
{
	char req[4096] = "", path[256] = "", body[4200];
	size_t got = 0;

	while (got < sizeof(req) - 1 && strstr(req, "\r\n\r\n") == NULL) {
		ssize_t r = read(c, req + got, sizeof(req) - 1 - got);

		if (r <= 0)
			return;
		got += (size_t)r;
		req[got] = '\0';
	}
	if (sscanf(req, "GET %255s ", path) != 1)
		return;
	pthread_mutex_lock(&s->mu);
	if (strcmp(path, "/.well-known/openid-configuration") == 0) {
		atomic_fetch_add(&s->disc_hits, 1);
		if (s->disc_issuer[0])
			snprintf(body, sizeof(body),
				 "{\"issuer\":\"%s\",\"jwks_uri\":\"http://127.0.0.1:%d/"
				 "jwks.json\"}",
				 s->disc_issuer, s->port);
		else
			snprintf(body, sizeof(body),
				 "{\"issuer\":\"http://127.0.0.1:%d\",\"jwks_uri\":\"http://"
				 "127.0.0.1:%d/jwks.json\"}",
				 s->port, s->port);
		srv_reply(c, 200, "", body, strlen(body));
	} else if (strcmp(path, "/jwks.json") == 0) {
		atomic_fetch_add(&s->jwks_hits, 1);
		srv_reply(c, s->status, "", s->jwks, strlen(s->jwks));
	} else if (strcmp(path, "/redirect") == 0) {
		char loc[128];

		snprintf(loc, sizeof(loc), "Location: http://127.0.0.1:%d/jwks.json\r\n", s->port);
		srv_reply(c, 302, loc, "", 0);
	} else if (strcmp(path, "/big") == 0) {
		size_t n = (1u << 20) + 4096;
		char *b = malloc(n);

		memset(b, ' ', n);
		memcpy(b, "{\"keys\":[]}", 11);
		srv_reply(c, 200, "", b, n);
		free(b);
	} else {
		srv_reply(c, 404, "", "", 0);
	}
	pthread_mutex_unlock(&s->mu);
}

static void *
srv_main(void *arg)
{
	struct srv *s = arg;

	while (!atomic_load(&s->stop)) {
		struct pollfd p = {.fd = s->fd, .events = POLLIN};
		int c;

		if (poll(&p, 1, 50) <= 0)
			continue;
		c = accept(s->fd, NULL, NULL);
		if (c < 0)
			continue;
		srv_handle(s, c);
		close(c);
	}
	return NULL;
}

static void
srv_start(struct srv *s)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t al = sizeof(a);

	memset(s, 0, sizeof(*s));
	pthread_mutex_init(&s->mu, NULL);
	s->status = 200;
	snprintf(s->jwks, sizeof(s->jwks), "{\"keys\":[]}");
	s->fd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(s->fd >= 0);
	assert_int_equal(bind(s->fd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(s->fd, 16), 0);
	assert_int_equal(getsockname(s->fd, (struct sockaddr *)&a, &al), 0);
	s->port = ntohs(a.sin_port);
	assert_int_equal(pthread_create(&s->th, NULL, srv_main, s), 0);
}

static void
srv_stop(struct srv *s)
{
	atomic_store(&s->stop, 1);
	pthread_join(s->th, NULL);
	close(s->fd);
	pthread_mutex_destroy(&s->mu);
}

static void
srv_set(struct srv *s, int status, const char *jwks)
{
	pthread_mutex_lock(&s->mu);
	s->status = status;
	snprintf(s->jwks, sizeof(s->jwks), "%s", jwks);
	pthread_mutex_unlock(&s->mu);
}

/* Pretends the last fetch of every issuer of p was a minute ago. */
static void
age(struct sl_idp *p)
{
	pthread_mutex_lock(&p->fetch_mu);
	for (size_t i = 0; i < p->nissuers; i++)
		p->issuers[i].last_fetch_us -= 60 * 1000000LL;
	pthread_mutex_unlock(&p->fetch_mu);
}

static char *
remote_token(const char *iss, const char *kid, EVP_PKEY *k, const char *sub)
{
	json_t *c = claims(iss, "sluice", time(NULL) + 600);

	json_object_set_new(c, "sub", json_string(sub));
	return sign("EdDSA", kid, c, k, NULL, 0);
}

static int
now_verify(struct sl_idp *p, const char *t)
{
	struct sl_identity id;
	char err[256];
	int r = sl_idp_verify(p, t, strlen(t), time(NULL), &id, err, sizeof(err));

	if (r == 0)
		sl_identity_fini(&id);
	return r;
}

static void
test_refresh_jwks_uri(void **state)
{
	struct srv s;
	char uri[128], iss[64], err[256], keys[1024], *ja, *jb, *ta, *tb, *t;
	struct sl_cfg_issuer is = {.issuer = iss, .audience = "sluice", .jwks_uri = uri};
	struct sl_cfg_identity cfg = {.issuers = &is, .issuers_count = 1};
	struct sl_idp *p;
	EVP_PKEY *kb = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");

	srv_start(&s);
	snprintf(uri, sizeof(uri), "http://127.0.0.1:%d/jwks.json", s.port);
	snprintf(iss, sizeof(iss), "https://remote.test");
	ja = ed_jwk(ed, "ka");
	jb = ed_jwk(kb, "kb");
	/* the IdP has no keys yet when the gateway starts */
	assert_int_equal(sl_idp_new(&cfg, dir, &p, err, sizeof(err)), 0);
	assert_int_equal(atomic_load(&s.jwks_hits), 1);
	ta = remote_token(iss, "ka", ed, "a");
	assert_int_equal(now_verify(p, ta), SL_ENOKEY);
	/* an empty key set is refetched at once */
	snprintf(keys, sizeof(keys), "{\"keys\":[%s]}", ja);
	srv_set(&s, 200, keys);
	assert_int_equal(sl_idp_refresh(p, ta, strlen(ta)), 0);
	assert_int_equal(atomic_load(&s.jwks_hits), 2);
	assert_int_equal(now_verify(p, ta), 0);
	/* rotation: a new kid within 30 s of the last fetch is rate-limited */
	tb = remote_token(iss, "kb", kb, "b");
	assert_int_equal(now_verify(p, tb), SL_ENOKEY);
	snprintf(keys, sizeof(keys), "{\"keys\":[%s,%s]}", ja, jb);
	srv_set(&s, 200, keys);
	assert_int_equal(sl_idp_refresh(p, tb, strlen(tb)), SL_ESTATE);
	assert_int_equal(atomic_load(&s.jwks_hits), 2);
	assert_int_equal(now_verify(p, tb), SL_ENOKEY);
	age(p);
	assert_int_equal(sl_idp_refresh(p, tb, strlen(tb)), 0);
	assert_int_equal(atomic_load(&s.jwks_hits), 3);
	assert_int_equal(now_verify(p, tb), 0);
	/* a failed fetch keeps the old keys (fresh tokens: no cache hit) */
	srv_set(&s, 500, "oops");
	age(p);
	assert_int_equal(sl_idp_refresh(p, NULL, 0), SL_EIO);
	assert_int_equal(atomic_load(&s.jwks_hits), 4);
	t = remote_token(iss, "kb", kb, "b2");
	assert_int_equal(now_verify(p, t), 0);
	free(t);
	/* not JSON: also a failure that keeps the keys */
	srv_set(&s, 200, "<html>");
	age(p);
	assert_int_equal(sl_idp_refresh(p, NULL, 0), SL_EIO);
	t = remote_token(iss, "ka", ed, "a2");
	assert_int_equal(now_verify(p, t), 0);
	/* a token from an issuer that is not configured fetches nothing */
	free(t);
	t = remote_token("https://elsewhere.test", "ka", ed, "x");
	age(p);
	assert_int_equal(sl_idp_refresh(p, t, strlen(t)), SL_ESTATE);
	assert_int_equal(sl_idp_refresh(p, "garbage", 7), SL_ESTATE);
	assert_int_equal(atomic_load(&s.jwks_hits), 5);
	free(t);
	/* removal: ta and tb are in the verified-token cache now; once the IdP
	 * drops kid ka, ta must stop verifying at once, tb must not */
	srv_set(&s, 200, "{\"keys\":[]}");
	assert_int_equal(now_verify(p, ta), 0);
	assert_int_equal(now_verify(p, tb), 0);
	snprintf(keys, sizeof(keys), "{\"keys\":[%s]}", jb);
	srv_set(&s, 200, keys);
	age(p);
	assert_int_equal(sl_idp_refresh(p, NULL, 0), 0);
	assert_int_equal(now_verify(p, ta), SL_ENOKEY);
	assert_int_equal(now_verify(p, tb), 0);
	/* replacement under the same kid: tb, cached, was signed by the old key */
	{
		EVP_PKEY *kc = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
		char *jc = ed_jwk(kc, "kb");

		snprintf(keys, sizeof(keys), "{\"keys\":[%s]}", jc);
		srv_set(&s, 200, keys);
		age(p);
		assert_int_equal(sl_idp_refresh(p, NULL, 0), 0);
		assert_int_equal(now_verify(p, tb), SL_EAUTH);
		t = remote_token(iss, "kb", kc, "c");
		assert_int_equal(now_verify(p, t), 0);
		free(t);
		free(jc);
		EVP_PKEY_free(kc);
	}
	sl_idp_free(p);

	/* caps: over 1 MiB, a redirect to plain http, a non-http scheme */
	{
		const char *bad[] = {"/big", "/redirect", NULL};

		for (size_t i = 0; i < 3; i++) {
			if (bad[i])
				snprintf(uri, sizeof(uri), "http://127.0.0.1:%d%s", s.port, bad[i]);
			else
				snprintf(uri, sizeof(uri), "file://%s/jwks.json", dir);
			assert_int_equal(sl_idp_new(&cfg, dir, &p, err, sizeof(err)), 0);
			assert_int_equal(now_verify(p, ta), SL_ENOKEY);
			age(p);
			assert_int_equal(sl_idp_refresh(p, NULL, 0), SL_EIO);
			/* failures with no keys are retried, but not more than every 2 s */
			assert_int_equal(sl_idp_refresh(p, NULL, 0), SL_ESTATE);
			sl_idp_free(p);
		}
	}
	srv_stop(&s);
	free(ja);
	free(jb);
	free(ta);
	free(tb);
	EVP_PKEY_free(kb);
}

/* A key set with no usable key (none at all, or only a key sluice skips) is
 * refetched at most every 2 s however many tokens name a made-up kid, and
 * logged once, not at every fetch. */
static void
test_refresh_unusable(void **state)
{
	struct srv s;
	char uri[128], err[256], keys[2048], n64[600], *t, *log, *ja = ed_jwk(ed, "ka");
	struct sl_cfg_issuer is = {
		.issuer = "https://unusable.test", .audience = "sluice", .jwks_uri = uri};
	struct sl_cfg_identity cfg = {.issuers = &is, .issuers_count = 1};
	struct sl_idp *p;

	bn_b64(rsa, OSSL_PKEY_PARAM_RSA_N, n64, sizeof(n64), 0);
	srv_start(&s);
	snprintf(uri, sizeof(uri), "http://127.0.0.1:%d/jwks.json", s.port);
	for (int round = 0; round < 2; round++) {
		int hits;

		if (round == 0)
			srv_set(&s, 200, "{\"keys\":[]}");
		else {
			snprintf(keys, sizeof(keys),
				 "{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"x\",\"alg\":\"RS384\","
				 "\"n\":\"%s\",\"e\":\"AQAB\"}]}",
				 n64);
			srv_set(&s, 200, keys);
		}
		stderr_begin();
		assert_int_equal(sl_idp_new(&cfg, dir, &p, err, sizeof(err)), 0);
		hits = atomic_load(&s.jwks_hits);
		/* the first token after start may fetch again (the IdP may have
		 * had no keys yet); the 39 after it may not */
		for (int i = 0; i < 40; i++) {
			char kid[16];

			snprintf(kid, sizeof(kid), "k%d", i);
			t = remote_token(is.issuer, kid, ed, "x");
			assert_int_equal(now_verify(p, t), SL_ENOKEY);
			assert_int_equal(sl_idp_refresh(p, t, strlen(t)), i == 0 ? 0 : SL_ESTATE);
			free(t);
		}
		assert_int_equal(atomic_load(&s.jwks_hits), hits + 1);
		hits++;
		/* two more fetches, 2 s apart, that find nothing usable either */
		for (int i = 0; i < 2; i++) {
			age(p);
			assert_int_equal(sl_idp_refresh(p, NULL, 0), 0);
			assert_int_equal(sl_idp_refresh(p, NULL, 0), SL_ESTATE);
		}
		assert_int_equal(atomic_load(&s.jwks_hits), hits + 2);
		log = stderr_end();
		assert_int_equal(
			count_of(log, "the JWKS of https://unusable.test has no usable key"), 1);
		assert_non_null(strstr(log, round == 0 ? "(0 published;" : "(1 published;"));
		free(log);
		sl_idp_free(p);
	}
	/* once the IdP publishes a usable key it is picked up, and losing it
	 * again is logged again */
	stderr_begin();
	assert_int_equal(sl_idp_new(&cfg, dir, &p, err, sizeof(err)), 0);
	snprintf(keys, sizeof(keys), "{\"keys\":[%s]}", ja);
	srv_set(&s, 200, keys);
	age(p);
	t = remote_token(is.issuer, "ka", ed, "x");
	assert_int_equal(sl_idp_refresh(p, t, strlen(t)), 0);
	assert_int_equal(now_verify(p, t), 0);
	free(t);
	srv_set(&s, 200, "{\"keys\":[]}");
	age(p);
	assert_int_equal(sl_idp_refresh(p, NULL, 0), 0);
	log = stderr_end();
	assert_int_equal(count_of(log, "the JWKS of https://unusable.test has no usable key"), 2);
	free(log);
	sl_idp_free(p);
	srv_stop(&s);
	free(ja);
}

/* A TCP listener that accepts connections (the kernel does) but never
 * answers: an IdP that hangs. */
static int
hung_listener(int *port)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t al = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	assert_true(fd >= 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(fd, 64), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &al), 0);
	*port = ntohs(a.sin_port);
	return fd;
}

struct refresher_arg {
	struct sl_idp *p;
	const char *tok;
	int r;
	double secs;
};

static double
mono_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void *
refresh_main(void *arg)
{
	struct refresher_arg *a = arg;
	double t0 = mono_s();

	a->r = sl_idp_refresh(a->p, a->tok, strlen(a->tok));
	a->secs = mono_s() - t0;
	return NULL;
}

/* A hung IdP holds at most the one thread that fetches from it, for at most
 * SL_JWKS_TIMEOUT_MS: other requests for it, and requests for other issuers,
 * never wait behind it (they ran on the same libuv pool as every session's
 * upstream login), and at most SL_JWKS_ON_DEMAND fetches are in flight. */
static void
test_refresh_hung_idp(void **state)
{
	struct srv s;
	char u1[128], u2[128], uok[128], err[256], keys[1024], *ja = ed_jwk(ed, "ka");
	char *th1, *th2, *tok, *tnew;
	int port1, port2, h1 = hung_listener(&port1), h2 = hung_listener(&port2);
	struct sl_cfg_issuer is[3] = {
		{.issuer = "https://hung1.test", .audience = "sluice", .jwks_uri = u1},
		{.issuer = "https://hung2.test", .audience = "sluice", .jwks_uri = u2},
		{.issuer = "https://ok.test", .audience = "sluice", .jwks_uri = uok}};
	struct sl_cfg_identity cfg = {.issuers = is, .issuers_count = 3};
	struct sl_idp *p;
	pthread_t t1, t2;
	struct refresher_arg a1, a2;
	double t0;
	EVP_PKEY *kn = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
	char *jn = ed_jwk(kn, "kn");

	srv_start(&s);
	snprintf(u1, sizeof(u1), "http://127.0.0.1:%d/jwks.json", port1);
	snprintf(u2, sizeof(u2), "http://127.0.0.1:%d/jwks.json", port2);
	snprintf(uok, sizeof(uok), "http://127.0.0.1:%d/jwks.json", s.port);
	snprintf(keys, sizeof(keys), "{\"keys\":[%s]}", ja);
	srv_set(&s, 200, keys);
	/* the start fetches of the hung IdPs give up after SL_JWKS_TIMEOUT_MS */
	t0 = mono_s();
	assert_int_equal(sl_idp_new(&cfg, dir, &p, err, sizeof(err)), 0);
	assert_true(mono_s() - t0 < 2 * SL_JWKS_TIMEOUT_MS / 1000.0 + 1.5);
	assert_true(mono_s() - t0 >= 2 * SL_JWKS_TIMEOUT_MS / 1000.0 - 0.5);
	tok = remote_token("https://ok.test", "ka", ed, "a");
	assert_int_equal(now_verify(p, tok), 0);
	th1 = remote_token("https://hung1.test", "zz", ed, "x");
	th2 = remote_token("https://hung2.test", "zz", ed, "x");
	age(p);
	a1 = (struct refresher_arg){.p = p, .tok = th1};
	a2 = (struct refresher_arg){.p = p, .tok = th2};
	assert_int_equal(pthread_create(&t1, NULL, refresh_main, &a1), 0);
	assert_int_equal(pthread_create(&t2, NULL, refresh_main, &a2), 0);
	usleep(300000);
	/* more tokens of a hung issuer: "not now", at once */
	for (int i = 0; i < 10; i++) {
		t0 = mono_s();
		assert_int_equal(sl_idp_refresh(p, th1, strlen(th1)), SL_ESTATE);
		assert_true(mono_s() - t0 < 0.1);
	}
	/* another issuer rotates while two fetches hang: its first new-kid
	 * token is told "not now" at once (two fetches are in flight), and
	 * nothing was fetched or rate-limited for it */
	snprintf(keys, sizeof(keys), "{\"keys\":[%s,%s]}", ja, jn);
	srv_set(&s, 200, keys);
	tnew = remote_token("https://ok.test", "kn", kn, "n");
	assert_int_equal(now_verify(p, tnew), SL_ENOKEY);
	t0 = mono_s();
	assert_int_equal(sl_idp_refresh(p, tnew, strlen(tnew)), SL_ESTATE);
	assert_true(mono_s() - t0 < 0.1);
	/* tokens of the healthy issuer with known keys verify meanwhile */
	assert_int_equal(now_verify(p, tok), 0);
	pthread_join(t1, NULL);
	pthread_join(t2, NULL);
	assert_int_equal(a1.r, SL_EIO);
	assert_int_equal(a2.r, SL_EIO);
	assert_true(a1.secs < SL_JWKS_TIMEOUT_MS / 1000.0 + 1.0);
	/* once they gave up, the rotated key is picked up by the first token
	 * that names it */
	assert_int_equal(sl_idp_refresh(p, tnew, strlen(tnew)), 0);
	assert_int_equal(now_verify(p, tnew), 0);
	/* while a hung issuer is fetched, a healthy issuer's fetch goes ahead */
	age(p);
	a1 = (struct refresher_arg){.p = p, .tok = th1};
	assert_int_equal(pthread_create(&t1, NULL, refresh_main, &a1), 0);
	usleep(300000);
	t0 = mono_s();
	assert_int_equal(sl_idp_refresh(p, tok, strlen(tok)), 0);
	assert_true(mono_s() - t0 < 1.0);
	pthread_join(t1, NULL);
	assert_int_equal(a1.r, SL_EIO);
	sl_idp_free(p);
	srv_stop(&s);
	close(h1);
	close(h2);
	free(th1);
	free(th2);
	free(tok);
	free(tnew);
	free(ja);
	free(jn);
	EVP_PKEY_free(kn);
}

static void
test_refresh_discovery(void **state)
{
	struct srv s;
	char iss[64], err[256], keys[1024], *ja, *ta;
	struct sl_cfg_issuer is = {.issuer = iss, .audience = "sluice"};
	struct sl_cfg_identity cfg = {.issuers = &is, .issuers_count = 1};
	struct sl_idp *p;

	srv_start(&s);
	snprintf(iss, sizeof(iss), "http://127.0.0.1:%d", s.port);
	ja = ed_jwk(ed, "ka");
	snprintf(keys, sizeof(keys), "{\"keys\":[%s]}", ja);
	srv_set(&s, 200, keys);
	/* {issuer}/.well-known/openid-configuration -> jwks_uri, at start */
	assert_int_equal(sl_idp_new(&cfg, dir, &p, err, sizeof(err)), 0);
	assert_int_equal(atomic_load(&s.disc_hits), 1);
	assert_int_equal(atomic_load(&s.jwks_hits), 1);
	ta = remote_token(iss, "ka", ed, "a");
	assert_int_equal(now_verify(p, ta), 0);
	/* refresh goes through discovery again */
	age(p);
	assert_int_equal(sl_idp_refresh(p, ta, strlen(ta)), 0);
	assert_int_equal(atomic_load(&s.disc_hits), 2);
	assert_int_equal(atomic_load(&s.jwks_hits), 2);
	sl_idp_free(p);
	/* a trailing slash on the issuer is not doubled */
	{
		char iss2[80];
		struct sl_cfg_issuer is2 = {.issuer = iss2, .audience = "sluice"};
		struct sl_cfg_identity c2 = {.issuers = &is2, .issuers_count = 1};

		snprintf(iss2, sizeof(iss2), "%s/", iss);
		assert_int_equal(sl_idp_new(&c2, dir, &p, err, sizeof(err)), 0);
		assert_int_equal(atomic_load(&s.disc_hits), 3);
		/* the document names issuer without the slash: refused */
		assert_int_equal(atomic_load(&s.jwks_hits), 2);
		sl_idp_free(p);
	}
	/* a discovery document about another issuer is refused */
	pthread_mutex_lock(&s.mu);
	snprintf(s.disc_issuer, sizeof(s.disc_issuer), "https://evil.test");
	pthread_mutex_unlock(&s.mu);
	assert_int_equal(sl_idp_new(&cfg, dir, &p, err, sizeof(err)), 0);
	assert_int_equal(atomic_load(&s.jwks_hits), 2);
	assert_int_equal(now_verify(p, ta), SL_ENOKEY);
	age(p);
	assert_int_equal(sl_idp_refresh(p, ta, strlen(ta)), SL_EIO);
	sl_idp_free(p);
	/* the IdP is down: the idp still starts, without keys */
	srv_stop(&s);
	assert_int_equal(sl_idp_new(&cfg, dir, &p, err, sizeof(err)), 0);
	assert_int_equal(now_verify(p, ta), SL_ENOKEY);
	sl_idp_free(p);
	free(ja);
	free(ta);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_valid),
		cmocka_unit_test(test_groups),
		cmocka_unit_test(test_time_and_audience),
		cmocka_unit_test(test_algorithms),
		cmocka_unit_test(test_headers),
		cmocka_unit_test(test_es256_malleability),
		cmocka_unit_test(test_malformed),
		cmocka_unit_test(test_cache),
		cmocka_unit_test(test_keysets),
		cmocka_unit_test(test_dev_issuer),
		cmocka_unit_test(test_token_cli),
		cmocka_unit_test(test_refresh_jwks_uri),
		cmocka_unit_test(test_refresh_discovery),
		cmocka_unit_test(test_refresh_unusable),
		cmocka_unit_test(test_refresh_hung_idp),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
