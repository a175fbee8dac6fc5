/*
 * idp.c - issuers and their key sets (file, jwks_uri, OIDC discovery over
 * libcurl), the verified-token cache, the dev issuer and `sluice token`.
 */
#include "sluice/identity.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>

#include "identity_internal.h"
#include "sluice/core.h"

#define FETCH_MAX     (1u << 20)
#define REFRESH_EVERY (30 * 1000000LL)

const struct sl_issuer *
sl_idp_issuer(struct sl_idp *idp, const char *iss)
{
	for (size_t i = 0; i < idp->nissuers; i++)
		if (strcmp(idp->issuers[i].issuer, iss) == 0)
			return &idp->issuers[i];
	return NULL;
}

/* ------------------------------------------------------------ fetching */

struct fetch {
	char *data;
	size_t len;
	int too_big;
};

static size_t
fetch_write(char *p, size_t sz, size_t n, void *arg)
{
	struct fetch *f = arg;
	size_t add = sz * n;
	char *nd;

	if (f->len + add > FETCH_MAX) {
		f->too_big = 1;
		return 0;
	}
	nd = realloc(f->data, f->len + add + 1);
	if (nd == NULL)
		return 0;
	f->data = nd;
	memcpy(f->data + f->len, p, add);
	f->len += add;
	f->data[f->len] = '\0';
	return add;
}

static int
http_get(const char *url, const char *ca_file, char **out, size_t *outlen)
{
	CURL *c = curl_easy_init();
	struct fetch f = {0};
	long code = 0;
	CURLcode rc;

	if (c == NULL)
		return SL_ENOMEM;
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "https");
	curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
	curl_easy_setopt(c, CURLOPT_MAXREDIRS, 3L);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 5000L);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_MAXFILESIZE, (long)FETCH_MAX);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, fetch_write);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &f);
	if (ca_file)
		curl_easy_setopt(c, CURLOPT_CAINFO, ca_file);
	rc = curl_easy_perform(c);
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
	curl_easy_cleanup(c);
	if (rc != CURLE_OK || code != 200 || f.data == NULL) {
		free(f.data);
		return SL_EIO;
	}
	*out = f.data;
	*outlen = f.len;
	return 0;
}

/* Fetches the issuer's key set (jwks_uri, or discovery). Blocking. */
static int
fetch_keys(struct sl_issuer *is, struct sl_keyset **out)
{
	char *body = NULL, *uri = NULL;
	size_t len;
	int r;

	if (is->jwks_uri != NULL) {
		uri = strdup(is->jwks_uri);
	} else {
		char disc[2048];
		json_t *j;
		const char *u;

		snprintf(disc, sizeof(disc), "%s%s.well-known/openid-configuration", is->issuer,
			 is->issuer[strlen(is->issuer) - 1] == '/' ? "" : "/");
		if ((r = http_get(disc, is->ca_file, &body, &len)) != 0)
			return r;
		j = json_loadb(body, len, 0, NULL);
		free(body);
		body = NULL;
		u = json_string_value(json_object_get(j, "jwks_uri"));
		/* The discovery document must be about this issuer. */
		if (u == NULL || json_string_value(json_object_get(j, "issuer")) == NULL ||
		    strcmp(json_string_value(json_object_get(j, "issuer")), is->issuer) != 0) {
			json_decref(j);
			return SL_EIO;
		}
		uri = strdup(u);
		json_decref(j);
	}
	if (uri == NULL)
		return SL_ENOMEM;
	r = http_get(uri, is->ca_file, &body, &len);
	free(uri);
	if (r != 0)
		return r;
	r = sl_keyset_parse(body, len, out);
	free(body);
	return r == 0 ? 0 : SL_EIO;
}

static int
load_file_keys(struct sl_issuer *is, char *err, size_t errlen)
{
	char *data;
	size_t len;
	int r = sl_read_file(is->jwks_file, FETCH_MAX, &data, &len);

	if (r != 0) {
		snprintf(err, errlen, "cannot read JWKS %s", is->jwks_file);
		return r;
	}
	r = sl_keyset_parse(data, len, &is->keys);
	free(data);
	if (r != 0) {
		snprintf(err, errlen, "JWKS %s is not a valid key set", is->jwks_file);
		return r;
	}
	return 0;
}

int
sl_idp_new(const struct sl_cfg_identity *cfg, const char *data_dir, struct sl_idp **out, char *err,
	   size_t errlen)
{
	struct sl_idp *idp = calloc(1, sizeof(*idp));
	size_t n = cfg->issuers_count ? cfg->issuers_count : 1;
	int r = SL_ENOMEM;

	*out = NULL;
	if (idp == NULL)
		return SL_ENOMEM;
	pthread_rwlock_init(&idp->lock, NULL);
	pthread_mutex_init(&idp->cache_mu, NULL);
	pthread_mutex_init(&idp->fetch_mu, NULL);
	pthread_mutex_init(&idp->stop_mu, NULL);
	pthread_cond_init(&idp->stop_cv, NULL);
	idp->issuers = calloc(n, sizeof(*idp->issuers));
	idp->ncache = 4096;
	idp->cache = calloc(idp->ncache, sizeof(*idp->cache));
	if (idp->issuers == NULL || idp->cache == NULL)
		goto fail;
	for (size_t i = 0; i < n; i++) {
		struct sl_issuer *is = &idp->issuers[i];
		int64_t ms = 60000, refresh_ms = 300000;

		idp->nissuers++;
		if (cfg->issuers_count == 0) {
			char path[4096];

			snprintf(path, sizeof(path), "%s/dev-jwks.json", data_dir);
			is->issuer = strdup(SL_DEV_ISSUER);
			is->audience = strdup(SL_DEV_AUDIENCE);
			is->jwks_file = strdup(path);
			is->groups_claim = strdup("groups");
			is->subject_claim = strdup("sub");
		} else {
			const struct sl_cfg_issuer *c = &cfg->issuers[i];

			is->issuer = strdup(c->issuer);
			is->audience = strdup(c->audience);
			is->jwks_file = c->jwks_file ? strdup(c->jwks_file) : NULL;
			is->jwks_uri = c->jwks_uri ? strdup(c->jwks_uri) : NULL;
			is->ca_file = c->ca_file ? strdup(c->ca_file) : NULL;
			is->groups_claim = strdup(c->groups_claim ? c->groups_claim : "groups");
			is->subject_claim = strdup(c->subject_claim ? c->subject_claim : "sub");
			if (c->leeway)
				sl_parse_duration_ms(c->leeway, &ms);
			if (c->jwks_refresh)
				sl_parse_duration_ms(c->jwks_refresh, &refresh_ms);
		}
		is->leeway_s = ms / 1000;
		is->refresh_us = (refresh_ms > 1000 ? refresh_ms : 1000) * 1000;
		if (is->issuer == NULL || is->audience == NULL || is->groups_claim == NULL ||
		    is->subject_claim == NULL)
			goto fail;
		if (is->jwks_file != NULL) {
			if (cfg->issuers_count == 0 && access(is->jwks_file, R_OK) != 0) {
				/* The dev issuer is created on first use. */
				if (sl_devissuer_init(data_dir, 0, err, errlen) != 0) {
					r = SL_EIO;
					goto fail;
				}
			}
			if ((r = load_file_keys(is, err, errlen)) != 0)
				goto fail;
		} else {
			/* Remote keys: try now; failures are retried on demand. */
			struct sl_keyset *ks = NULL;

			if (fetch_keys(is, &ks) == 0)
				is->keys = ks;
			else
				sl_warn("identity: cannot fetch the JWKS of %s yet", is->issuer);
			is->last_fetch_us = sl_mono_us();
		}
	}
	*out = idp;
	return 0;
fail:
	sl_idp_free(idp);
	return r;
}

static void refresh_due(struct sl_idp *idp);

/* Re-fetches remote key sets when due; woken early only to stop. */
static void *
refresher_main(void *arg)
{
	struct sl_idp *idp = arg;
	int64_t every = INT64_MAX;

	for (size_t i = 0; i < idp->nissuers; i++)
		if (idp->issuers[i].jwks_file == NULL && idp->issuers[i].refresh_us < every)
			every = idp->issuers[i].refresh_us;
	pthread_mutex_lock(&idp->stop_mu);
	while (!idp->stopping) {
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += (time_t)(every / 1000000);
		ts.tv_nsec += (long)(every % 1000000) * 1000;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&idp->stop_cv, &idp->stop_mu, &ts);
		if (idp->stopping)
			break;
		pthread_mutex_unlock(&idp->stop_mu);
		refresh_due(idp);
		pthread_mutex_lock(&idp->stop_mu);
	}
	pthread_mutex_unlock(&idp->stop_mu);
	return NULL;
}

int
sl_idp_start_refresh(struct sl_idp *idp)
{
	int remote = 0;

	for (size_t i = 0; i < idp->nissuers; i++)
		remote |= idp->issuers[i].jwks_file == NULL;
	if (!remote || idp->refresher_on)
		return 0;
	if (pthread_create(&idp->refresher, NULL, refresher_main, idp) != 0)
		return SL_EIO;
	idp->refresher_on = 1;
	return 0;
}

void
sl_idp_free(struct sl_idp *idp)
{
	if (idp == NULL)
		return;
	if (idp->refresher_on) {
		pthread_mutex_lock(&idp->stop_mu);
		idp->stopping = 1;
		pthread_cond_signal(&idp->stop_cv);
		pthread_mutex_unlock(&idp->stop_mu);
		pthread_join(idp->refresher, NULL);
	}
	for (size_t i = 0; i < idp->nissuers; i++) {
		struct sl_issuer *is = &idp->issuers[i];

		free(is->issuer);
		free(is->audience);
		free(is->jwks_file);
		free(is->jwks_uri);
		free(is->ca_file);
		free(is->groups_claim);
		free(is->subject_claim);
		sl_keyset_free(is->keys);
	}
	for (size_t i = 0; idp->cache && i < idp->ncache; i++)
		if (idp->cache[i].used)
			sl_identity_fini(&idp->cache[i].id);
	free(idp->cache);
	free(idp->issuers);
	pthread_rwlock_destroy(&idp->lock);
	free(idp);
}

int
sl_idp_verify(struct sl_idp *idp, const char *token, size_t len, int64_t now,
	      struct sl_identity *out, char *err, size_t errlen)
{
	uint8_t h[32];
	struct cache_slot *slot;
	uint64_t gen;
	int r;

	if (len == 0 || len > SL_JWT_MAX) {
		snprintf(err, errlen, "malformed token");
		return SL_EAUTH;
	}
	SHA256((const uint8_t *)token, len, h);
	slot = &idp->cache[(((size_t)h[0] << 8) | h[1]) % idp->ncache];
	pthread_mutex_lock(&idp->cache_mu);
	if (slot->used && memcmp(slot->hash, h, 32) == 0) {
		/* Cached until expiry (which still applies) or until a key set
		 * changes (the signing key may be gone). */
		if (now <= slot->id.exp &&
		    slot->gen == __atomic_load_n(&idp->keys_gen, __ATOMIC_ACQUIRE)) {
			r = sl_identity_copy(out, &slot->id);
			pthread_mutex_unlock(&idp->cache_mu);
			return r;
		}
		sl_identity_fini(&slot->id);
		slot->used = 0;
	}
	pthread_mutex_unlock(&idp->cache_mu);
	gen = __atomic_load_n(&idp->keys_gen, __ATOMIC_ACQUIRE); /* before verifying */
	r = sl_jwt_verify_with(idp, token, len, now, out, err, errlen);
	if (r != 0)
		return r;
	pthread_mutex_lock(&idp->cache_mu);
	if (slot->used)
		sl_identity_fini(&slot->id);
	slot->used = sl_identity_copy(&slot->id, out) == 0;
	slot->gen = gen;
	memcpy(slot->hash, h, 32);
	pthread_mutex_unlock(&idp->cache_mu);
	return 0;
}

/* Replaces an issuer's keys and invalidates every cached verification. */
static void
install_keys(struct sl_idp *idp, struct sl_issuer *is, struct sl_keyset *ks)
{
	struct sl_keyset *old;

	pthread_rwlock_wrlock(&idp->lock);
	old = is->keys;
	is->keys = ks;
	__atomic_add_fetch(&idp->keys_gen, 1, __ATOMIC_RELEASE);
	pthread_rwlock_unlock(&idp->lock);
	sl_keyset_free(old);
}

int
sl_idp_refresh(struct sl_idp *idp, const char *token, size_t len)
{
	const char *want = NULL;
	json_t *pl = NULL;
	int r = SL_ESTATE;

	if (token != NULL && len > 0 && len <= SL_JWT_MAX) {
		const char *d1 = memchr(token, '.', len);
		const char *d2 = d1 ? memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - token)) : NULL;
		uint8_t buf[SL_JWT_MAX];
		size_t bl;

		if (d2 &&
		    sl_b64url_decode(d1 + 1, (size_t)(d2 - d1 - 1), buf, sizeof(buf), &bl) == 0)
			pl = json_loadb((const char *)buf, bl, 0, NULL);
		want = json_string_value(json_object_get(pl, "iss"));
		if (want == NULL) {
			json_decref(pl);
			return SL_ESTATE;
		}
	}
	pthread_mutex_lock(&idp->fetch_mu);
	for (size_t i = 0; i < idp->nissuers; i++) {
		struct sl_issuer *is = &idp->issuers[i];
		struct sl_keyset *ks = NULL;

		if (is->jwks_file != NULL || (want && strcmp(want, is->issuer) != 0))
			continue;
		/* Rate limit: an unknown kid can be sprayed by anyone; an empty
		 * key set (IdP was down or had none at start) is always retried. */
		if (is->keys != NULL && is->keys->n > 0 &&
		    sl_mono_us() - is->last_fetch_us < REFRESH_EVERY)
			continue;
		is->last_fetch_us = sl_mono_us();
		if (fetch_keys(is, &ks) != 0) {
			r = SL_EIO;
			continue;
		}
		install_keys(idp, is, ks);
		r = 0;
	}
	pthread_mutex_unlock(&idp->fetch_mu);
	json_decref(pl);
	return r;
}

/* Periodic refresh: every remote issuer whose jwks_refresh is due. A failed
 * fetch keeps the keys it has (an IdP outage must not lock agents out). */
static void
refresh_due(struct sl_idp *idp)
{
	pthread_mutex_lock(&idp->fetch_mu);
	for (size_t i = 0; i < idp->nissuers; i++) {
		struct sl_issuer *is = &idp->issuers[i];
		struct sl_keyset *ks = NULL;

		if (is->jwks_file != NULL ||
		    sl_mono_us() - is->last_fetch_us < is->refresh_us - 500000)
			continue;
		is->last_fetch_us = sl_mono_us();
		if (fetch_keys(is, &ks) != 0) {
			sl_warn("identity: cannot refresh the JWKS of %s; keeping the keys it had",
				is->issuer);
			continue;
		}
		install_keys(idp, is, ks);
	}
	pthread_mutex_unlock(&idp->fetch_mu);
}

/* ------------------------------------------------------------ dev issuer */

static int
dev_key_kid(EVP_PKEY *k, char *x64, char *kid)
{
	uint8_t raw[32], h[32];
	size_t rl = sizeof(raw);

	if (EVP_PKEY_get_raw_public_key(k, raw, &rl) != 1 || rl != 32)
		return SL_EIO;
	sl_b64url_encode(raw, 32, x64);
	SHA256(raw, 32, h);
	sl_hex(h, 8, kid);
	return 0;
}

int
sl_devissuer_init(const char *data_dir, int force, char *err, size_t errlen)
{
	char kpath[4096], jpath[4096], x64[64], kid[17];
	EVP_PKEY *k = NULL;
	EVP_PKEY_CTX *ctx;
	FILE *f;
	int fd;

	mkdir(data_dir, 0700);
	snprintf(kpath, sizeof(kpath), "%s/dev-issuer.key", data_dir);
	snprintf(jpath, sizeof(jpath), "%s/dev-jwks.json", data_dir);
	if (!force && access(kpath, R_OK) == 0 && access(jpath, R_OK) == 0)
		return 0;
	ctx = EVP_PKEY_CTX_new_id(EVP_PKEY_ED25519, NULL);
	if (ctx == NULL || EVP_PKEY_keygen_init(ctx) != 1 || EVP_PKEY_keygen(ctx, &k) != 1) {
		EVP_PKEY_CTX_free(ctx);
		snprintf(err, errlen, "cannot generate the dev issuer key");
		return SL_EIO;
	}
	EVP_PKEY_CTX_free(ctx);
	unlink(kpath);
	fd = open(kpath, O_WRONLY | O_CREAT | O_EXCL, 0600);
	f = fd >= 0 ? fdopen(fd, "w") : NULL;
	if (f == NULL || PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL) != 1) {
		if (f)
			fclose(f);
		EVP_PKEY_free(k);
		snprintf(err, errlen, "cannot write %s: %s", kpath, strerror(errno));
		return SL_EIO;
	}
	fclose(f);
	dev_key_kid(k, x64, kid);
	EVP_PKEY_free(k);
	f = fopen(jpath, "w");
	if (f == NULL) {
		snprintf(err, errlen, "cannot write %s", jpath);
		return SL_EIO;
	}
	fprintf(f,
		"{\"keys\":[{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"%s\",\"kid\":\"%s\","
		"\"alg\":\"EdDSA\",\"use\":\"sig\"}]}\n",
		x64, kid);
	fclose(f);
	return 0;
}

int
sl_devissuer_mint(const char *data_dir, const struct sl_mint_opts *o, char **out_token, char *err,
		  size_t errlen)
{
	char kpath[4096], x64[64], kid[17];
	EVP_PKEY *k;
	FILE *f;
	json_t *hdr, *pl;
	char *hs = NULL, *ps = NULL, *tok = NULL;
	char *h64 = NULL, *p64 = NULL, sig64[100];
	uint8_t sig[64];
	size_t siglen = sizeof(sig), n;
	EVP_MD_CTX *md;
	int64_t now = sl_now_us() / 1000000;
	uint8_t jti[12];
	char jtihex[25];
	int r = SL_EIO;

	snprintf(kpath, sizeof(kpath), "%s/dev-issuer.key", data_dir);
	f = fopen(kpath, "r");
	if (f == NULL) {
		snprintf(err, errlen, "no dev issuer in %s: run `sluice token init` first",
			 data_dir);
		return SL_ENOENT;
	}
	k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
	fclose(f);
	if (k == NULL || dev_key_kid(k, x64, kid) != 0) {
		EVP_PKEY_free(k);
		snprintf(err, errlen, "cannot read %s", kpath);
		return SL_EIO;
	}
	hdr = json_pack("{s:s, s:s, s:s}", "alg", "EdDSA", "typ", "JWT", "kid", kid);
	sl_random(jti, sizeof(jti));
	sl_hex(jti, sizeof(jti), jtihex);
	pl = json_pack("{s:s, s:s, s:s, s:I, s:I, s:s}", "iss", o->iss ? o->iss : SL_DEV_ISSUER,
		       "aud", o->aud ? o->aud : SL_DEV_AUDIENCE, "sub", o->sub, "iat",
		       (json_int_t)now, "exp", (json_int_t)(now + o->ttl_s), "jti", jtihex);
	if (hdr == NULL || pl == NULL)
		goto out;
	if (o->nbf_offset_s != 0)
		json_object_set_new(pl, "nbf", json_integer(now + o->nbf_offset_s));
	{
		json_t *g = json_array();

		for (size_t i = 0; i < o->ngroups; i++)
			json_array_append_new(g, json_string(o->groups[i]));
		json_object_set_new(pl, "groups", g);
	}
	if (o->extra_claims_json != NULL) {
		json_t *x = json_loads(o->extra_claims_json, 0, NULL);

		if (!json_is_object(x)) {
			json_decref(x);
			snprintf(err, errlen, "--claims must be a JSON object");
			r = SL_EINVAL;
			goto out;
		}
		json_object_update(pl, x);
		json_decref(x);
	}
	hs = json_dumps(hdr, JSON_COMPACT);
	ps = json_dumps(pl, JSON_COMPACT);
	if (hs == NULL || ps == NULL)
		goto out;
	h64 = malloc(strlen(hs) * 4 / 3 + 4);
	p64 = malloc(strlen(ps) * 4 / 3 + 4);
	if (h64 == NULL || p64 == NULL)
		goto out;
	sl_b64url_encode((const uint8_t *)hs, strlen(hs), h64);
	sl_b64url_encode((const uint8_t *)ps, strlen(ps), p64);
	n = strlen(h64) + strlen(p64) + 1;
	tok = malloc(n + 128);
	if (tok == NULL)
		goto out;
	snprintf(tok, n + 1, "%s.%s", h64, p64);
	md = EVP_MD_CTX_new();
	if (md == NULL || EVP_DigestSignInit(md, NULL, NULL, NULL, k) != 1 ||
	    EVP_DigestSign(md, sig, &siglen, (const uint8_t *)tok, n) != 1) {
		EVP_MD_CTX_free(md);
		goto out;
	}
	EVP_MD_CTX_free(md);
	sl_b64url_encode(sig, siglen, sig64);
	snprintf(tok + n, 128, ".%s", sig64);
	*out_token = tok;
	tok = NULL;
	r = 0;
out:
	if (r == SL_EIO)
		snprintf(err, errlen, "cannot mint a token");
	free(tok);
	free(hs);
	free(ps);
	free(h64);
	free(p64);
	json_decref(hdr);
	json_decref(pl);
	EVP_PKEY_free(k);
	return r;
}

/* ------------------------------------------------------------ CLI */

int
sl_token_cli(int argc, char **argv, const struct sl_config *cfg)
{
	char err[512] = "";
	const char *data_dir = cfg->gateway.data_dir;

	if (strcmp(argv[0], "init") == 0) {
		int force = argc > 1 && strcmp(argv[1], "--force") == 0;

		if (sl_devissuer_init(data_dir, force, err, sizeof(err)) != 0) {
			fprintf(stderr, "sluice token init: %s\n", err);
			return 1;
		}
		printf("dev issuer ready: %s/dev-jwks.json (issuer %s, audience %s)\n", data_dir,
		       SL_DEV_ISSUER, SL_DEV_AUDIENCE);
		return 0;
	}
	if (strcmp(argv[0], "mint") == 0) {
		struct sl_mint_opts o = {0};
		const char *groups[64];
		char *gcopy = NULL, *tok = NULL;
		int64_t ttl_ms = 3600 * 1000;
		int rc;

		o.groups = groups;
		for (int i = 1; i < argc; i++) {
			const char *v = i + 1 < argc ? argv[i + 1] : NULL;

			if (v == NULL) {
				fprintf(stderr, "sluice token mint: %s needs a value\n", argv[i]);
				free(gcopy);
				return 2;
			}
			if (strcmp(argv[i], "--sub") == 0) {
				o.sub = v;
			} else if (strcmp(argv[i], "--groups") == 0) {
				free(gcopy);
				gcopy = strdup(v);
				o.ngroups = 0;
				for (char *s = NULL, *t = strtok_r(gcopy, ",", &s);
				     t && o.ngroups < 64; t = strtok_r(NULL, ",", &s))
					groups[o.ngroups++] = t;
			} else if (strcmp(argv[i], "--ttl") == 0) {
				int neg = v[0] == '-';

				if (sl_parse_duration_ms(v + neg, &ttl_ms) != 0) {
					fprintf(stderr, "sluice token mint: bad --ttl %s\n", v);
					free(gcopy);
					return 2;
				}
				if (neg)
					ttl_ms = -ttl_ms;
			} else if (strcmp(argv[i], "--aud") == 0) {
				o.aud = v;
			} else if (strcmp(argv[i], "--iss") == 0) {
				o.iss = v;
			} else if (strcmp(argv[i], "--claims") == 0) {
				o.extra_claims_json = v;
			} else if (strcmp(argv[i], "--nbf") == 0) {
				int64_t ms;
				int neg = v[0] == '-';

				if (sl_parse_duration_ms(v + neg, &ms) != 0) {
					free(gcopy);
					return 2;
				}
				o.nbf_offset_s = (neg ? -ms : ms) / 1000;
			} else {
				fprintf(stderr, "sluice token mint: unknown option %s\n", argv[i]);
				free(gcopy);
				return 2;
			}
			i++;
		}
		if (o.sub == NULL) {
			fprintf(stderr, "sluice token mint: --sub is required\n");
			free(gcopy);
			return 2;
		}
		o.ttl_s = ttl_ms / 1000;
		rc = sl_devissuer_mint(data_dir, &o, &tok, err, sizeof(err));
		free(gcopy);
		if (rc != 0) {
			fprintf(stderr, "sluice token mint: %s\n", err);
			return 1;
		}
		printf("%s\n", tok);
		free(tok);
		return 0;
	}
	fprintf(stderr, "sluice token: unknown subcommand %s (init, mint)\n", argv[0]);
	return 2;
}
