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

#define FETCH_MAX SL_JWKS_FETCH_MAX

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

/* GETs url, giving up at deadline_us (monotonic). */
static int
http_get(const char *url, const char *ca_file, int64_t deadline_us, char **out, size_t *outlen)
{
	long left_ms = (long)((deadline_us - sl_mono_us()) / 1000);
	CURL *c;
	struct fetch f = {0};
	long code = 0;
	CURLcode rc;

	if (left_ms <= 0)
		return SL_ETIMEOUT;
	if ((c = curl_easy_init()) == NULL)
		return SL_ENOMEM;
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "https");
	curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
	curl_easy_setopt(c, CURLOPT_MAXREDIRS, 3L);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, left_ms);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, left_ms);
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

/* Fetches the issuer's key set (jwks_uri, or discovery). Blocking, for at
 * most SL_JWKS_TIMEOUT_MS in all. */
static int
fetch_keys(struct sl_issuer *is, struct sl_keyset **out)
{
	char *body = NULL, *uri = NULL;
	size_t len;
	int r;
	int64_t deadline = sl_mono_us() + SL_JWKS_TIMEOUT_MS * 1000LL;

	if (is->jwks_uri != NULL) {
		uri = strdup(is->jwks_uri);
	} else {
		char disc[2048];
		json_t *j;
		const char *u;

		snprintf(disc, sizeof(disc), "%s%s.well-known/openid-configuration", is->issuer,
			 is->issuer[strlen(is->issuer) - 1] == '/' ? "" : "/");
		if ((r = http_get(disc, is->ca_file, deadline, &body, &len)) != 0)
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
	r = http_get(uri, is->ca_file, deadline, &body, &len);
	free(uri);
	if (r != 0)
		return r;
	r = sl_keyset_parse(body, len, is->issuer, out);
	free(body);
	return r == 0 ? 0 : SL_EIO;
}

static void note_unusable(struct sl_issuer *is, const struct sl_keyset *ks);

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
	r = sl_keyset_parse(data, len, is->issuer, &is->keys);
	free(data);
	if (r != 0) {
		snprintf(err, errlen, "JWKS %s is not a valid key set", is->jwks_file);
		return r;
	}
	note_unusable(is, is->keys);
	return 0;
}

/* Copies issuer i of cfg (or the dev issuer when cfg has none) into is. */
static int
issuer_init(struct sl_issuer *is, const struct sl_cfg_identity *cfg, unsigned i,
	    const char *data_dir, char *err, size_t errlen)
{
	int64_t ms = 60000, refresh_ms = 300000;

	if (cfg->issuers_count == 0) {
		char path[4096];

		if (snprintf(path, sizeof(path), "%s/dev-jwks.json", data_dir) >= (int)sizeof(path))
			return SL_EINVAL;
		is->issuer = strdup(SL_DEV_ISSUER);
		is->audience = strdup(SL_DEV_AUDIENCE);
		is->jwks_file = strdup(path);
		is->groups_claim = strdup("groups");
		is->subject_claim = strdup("sub");
	} else {
		const struct sl_cfg_issuer *c = &cfg->issuers[i];

		if (c->issuer == NULL || c->issuer[0] == '\0' || c->audience == NULL ||
		    c->audience[0] == '\0') {
			snprintf(err, errlen,
				 "identity.issuers[%u]: issuer and audience are required", i);
			return SL_EINVAL;
		}
		if (c->leeway != NULL && (sl_parse_duration_ms(c->leeway, &ms) != 0 || ms < 0 ||
					  ms > SL_LEEWAY_MAX_S * 1000LL)) {
			snprintf(err, errlen,
				 "identity.issuers[%u].leeway: not a duration up to 1d", i);
			return SL_EINVAL;
		}
		if (c->jwks_refresh != NULL &&
		    (sl_parse_duration_ms(c->jwks_refresh, &refresh_ms) != 0 ||
		     refresh_ms < 1000)) {
			snprintf(err, errlen,
				 "identity.issuers[%u].jwks_refresh: not a duration of 1s or more",
				 i);
			return SL_EINVAL;
		}
		is->issuer = strdup(c->issuer);
		is->audience = strdup(c->audience);
		is->jwks_file = c->jwks_file ? strdup(c->jwks_file) : NULL;
		is->jwks_uri = c->jwks_uri ? strdup(c->jwks_uri) : NULL;
		is->ca_file = c->ca_file ? strdup(c->ca_file) : NULL;
		is->groups_claim = strdup(c->groups_claim ? c->groups_claim : "groups");
		is->subject_claim = strdup(c->subject_claim ? c->subject_claim : "sub");
		if ((c->jwks_file && !is->jwks_file) || (c->jwks_uri && !is->jwks_uri) ||
		    (c->ca_file && !is->ca_file))
			return SL_ENOMEM;
	}
	is->leeway_s = ms / 1000;
	is->refresh_us = refresh_ms * 1000;
	if (is->issuer == NULL || is->audience == NULL || is->groups_claim == NULL ||
	    is->subject_claim == NULL || (cfg->issuers_count == 0 && is->jwks_file == NULL))
		return SL_ENOMEM;
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
	/* Reference-counted by libcurl; paired with the cleanup in sl_idp_free. */
	curl_global_init(CURL_GLOBAL_DEFAULT);
	pthread_rwlock_init(&idp->lock, NULL);
	pthread_mutex_init(&idp->cache_mu, NULL);
	pthread_mutex_init(&idp->fetch_mu, NULL);
	pthread_mutex_init(&idp->stop_mu, NULL);
	pthread_cond_init(&idp->stop_cv, NULL);
	idp->issuers = calloc(n, sizeof(*idp->issuers));
	idp->ncache = SL_IDP_CACHE_SLOTS;
	idp->cache = calloc(idp->ncache, sizeof(*idp->cache));
	if (idp->issuers == NULL || idp->cache == NULL) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	for (size_t i = 0; i < n; i++) {
		struct sl_issuer *is = &idp->issuers[i];

		idp->nissuers++;
		if ((r = issuer_init(is, cfg, (unsigned)i, data_dir, err, errlen)) != 0) {
			if (r == SL_ENOMEM)
				snprintf(err, errlen, "out of memory");
			goto fail;
		}
		if (sl_idp_issuer(idp, is->issuer) != is) {
			snprintf(err, errlen, "identity.issuers[%zu]: issuer %s is listed twice", i,
				 is->issuer);
			r = SL_EINVAL;
			goto fail;
		}
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
			/* Remote keys: try once at start (the caller's thread, not an
			 * event loop); a failure is retried by sl_idp_refresh. */
			struct sl_keyset *ks = NULL;

			is->fetch_failed = fetch_keys(is, &ks) != 0;
			is->keys = ks;
			is->last_fetch_us = sl_mono_us();
			if (is->fetch_failed)
				sl_warn("identity: cannot fetch the JWKS of %s yet", is->issuer);
			else
				note_unusable(is, ks);
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
	pthread_mutex_destroy(&idp->cache_mu);
	pthread_mutex_destroy(&idp->fetch_mu);
	free(idp);
	curl_global_cleanup();
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
	/* Read before verifying: if the keys change while we verify, the entry
	 * we add is already stale and is never used. */
	pthread_rwlock_rdlock(&idp->lock);
	gen = idp->keys_gen;
	pthread_rwlock_unlock(&idp->lock);
	pthread_mutex_lock(&idp->cache_mu);
	if (slot->used && memcmp(slot->hash, h, 32) == 0) {
		/* Cached until expiry, and only under the key sets it was
		 * verified with: a key that was rotated out or removed must
		 * stop vouching for its tokens at once. */
		if (slot->gen == gen && now <= slot->id.exp) {
			r = sl_identity_copy(out, &slot->id);
			pthread_mutex_unlock(&idp->cache_mu);
			return r;
		}
		sl_identity_fini(&slot->id);
		slot->used = 0;
	}
	pthread_mutex_unlock(&idp->cache_mu);
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

/*
 * Fetching on demand. A token that names an unknown kid makes its session
 * ask for a refetch on a libuv pool thread, the pool that also runs upstream
 * SCRAM and DNS for every session. So no thread ever waits for another's
 * fetch (a hung IdP would hold every pool thread and stall the logins of all
 * issuers): fetch_mu is held only to read and claim an issuer's fetch state,
 * never across I/O, and a request that finds its issuer's fetch in flight, or
 * SL_JWKS_ON_DEMAND fetches in flight already, gets "not now" at once. The
 * thread that claims a fetch runs it (SL_JWKS_TIMEOUT_MS at most), so the
 * first token that names a rotated key is the one that picks it up.
 */
enum { FETCH_GO = 1, FETCH_SERVED = 0, FETCH_LIMITED = -1, FETCH_BUSY = -2 };

/* Logs, once per key set in use, that an issuer publishes no key sluice can
 * use (fetch_mu held, or before any other thread runs). */
static void
note_unusable(struct sl_issuer *is, const struct sl_keyset *ks)
{
	if (ks == NULL || ks->n > 0) {
		is->warned_unusable = 0;
		return;
	}
	if (is->warned_unusable)
		return;
	is->warned_unusable = 1;
	sl_warn("identity: the JWKS of %s has no usable key (%zu published; sluice uses RS256 with "
		"RSA of 2048 bits or more, ES256 on P-256, EdDSA on Ed25519, for signing): its "
		"tokens are refused until it publishes one",
		is->issuer, ks->published);
}

/* Whether is may be fetched now, for a request made at asked_us (fetch_mu
 * held). FETCH_GO: the caller owns the fetch and must finish it with
 * fetch_run. FETCH_SERVED: a fetch that ended after the request answered it
 * (*r set from its outcome). FETCH_LIMITED: rate-limited. FETCH_BUSY: a
 * fetch of is is in flight, or on_demand and too many of all issuers are. */
static int
fetch_claim(struct sl_idp *idp, struct sl_issuer *is, int64_t asked_us, int on_demand, int *r)
{
	int64_t age = sl_mono_us() - is->last_fetch_us;
	int have;

	if (is->fetching)
		return FETCH_BUSY;
	/* read only now: while is is being fetched, its claimer may replace
	 * and free the key set (install_keys does not take fetch_mu) */
	have = is->keys != NULL && is->keys->n > 0;
	if (is->last_fetch_us > asked_us) {
		*r = is->fetch_failed ? SL_EIO : 0;
		return FETCH_SERVED;
	}
	/* Every fetch counts, whatever it returned: an unknown kid can be
	 * sprayed by anyone, so an issuer with usable keys is refetched at most
	 * every 30 s, and one without (none published, none usable, or its IdP
	 * down) at most every 2 s. Only the fetch at start is let off, once: an
	 * IdP that had no keys yet when the gateway started is asked again by
	 * the first token that needs it. */
	if (is->refetched && age < (have ? SL_JWKS_REFRESH_US : SL_JWKS_RETRY_US))
		return FETCH_LIMITED;
	if (on_demand && idp->on_demand >= SL_JWKS_ON_DEMAND)
		return FETCH_BUSY;
	is->fetching = 1;
	idp->on_demand += on_demand;
	return FETCH_GO;
}

/* Replaces an issuer's keys (its fetch claimed) and retires every cached
 * verification. */
static void
install_keys(struct sl_idp *idp, struct sl_issuer *is, struct sl_keyset *ks)
{
	struct sl_keyset *old;

	pthread_rwlock_wrlock(&idp->lock);
	old = is->keys;
	is->keys = ks;
	idp->keys_gen++;
	pthread_rwlock_unlock(&idp->lock);
	sl_keyset_free(old);
}

/* Runs a fetch claimed with fetch_claim, without fetch_mu, and releases the
 * claim. A failure keeps the keys. Returns 0 or the fetch's error. */
static int
fetch_run(struct sl_idp *idp, struct sl_issuer *is, int on_demand)
{
	struct sl_keyset *ks = NULL;
	int fr = fetch_keys(is, &ks);

	if (fr == 0)
		install_keys(idp, is, ks);
	pthread_mutex_lock(&idp->fetch_mu);
	is->last_fetch_us = sl_mono_us();
	is->fetch_failed = fr != 0;
	is->fetching = 0;
	is->refetched = 1;
	idp->on_demand -= on_demand;
	/* ks is is->keys: only a later claim of is could replace it. */
	if (fr == 0)
		note_unusable(is, ks);
	pthread_mutex_unlock(&idp->fetch_mu);
	return fr;
}

int
sl_idp_refresh(struct sl_idp *idp, const char *token, size_t len)
{
	int64_t asked = sl_mono_us();
	const char *want = NULL;
	json_t *pl = NULL;
	int r = SL_ESTATE, any = 0;

	if (token != NULL) {
		const char *d1 = len > 0 && len <= SL_JWT_MAX ? memchr(token, '.', len) : NULL;
		const char *d2 = d1 ? memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - token)) : NULL;
		uint8_t buf[SL_JWT_MAX];
		size_t bl;

		/* Unverified on purpose: it only chooses which issuer to ask. */
		if (d2 &&
		    sl_b64url_decode(d1 + 1, (size_t)(d2 - d1 - 1), buf, sizeof(buf), &bl) == 0)
			pl = json_loadb((const char *)buf, bl, 0, NULL);
		want = json_string_value(json_object_get(pl, "iss"));
		if (want == NULL || sl_idp_issuer(idp, want) == NULL) {
			json_decref(pl);
			return SL_ESTATE;
		}
	}
	for (size_t i = 0; i < idp->nissuers; i++) {
		struct sl_issuer *is = &idp->issuers[i];
		int m, fr = 0;

		if (is->jwks_file != NULL || (want && strcmp(want, is->issuer) != 0))
			continue;
		pthread_mutex_lock(&idp->fetch_mu);
		m = fetch_claim(idp, is, asked, 1, &fr);
		pthread_mutex_unlock(&idp->fetch_mu);
		if (m == FETCH_LIMITED || m == FETCH_BUSY)
			continue;
		if (m == FETCH_SERVED) {
			r = any && r == 0 ? 0 : fr;
			any = 1;
			continue;
		}
		if (fetch_run(idp, is, 1) != 0) {
			sl_warn("identity: JWKS refetch for %s failed; keeping the old keys",
				is->issuer);
			if (!any)
				r = SL_EIO;
			any = 1;
			continue;
		}
		r = 0;
		any = 1;
	}
	json_decref(pl);
	return r;
}

/* Periodic refresh (jwks_refresh): every remote issuer that is due and not
 * being fetched already. A failed fetch keeps the keys it has (an IdP outage
 * must not lock agents out); a new key set retires every cached
 * verification, so a key the IdP removed stops working even for tokens seen
 * before. */
static void
refresh_due(struct sl_idp *idp)
{
	for (size_t i = 0; i < idp->nissuers; i++) {
		struct sl_issuer *is = &idp->issuers[i];
		int go;

		if (is->jwks_file != NULL)
			continue;
		pthread_mutex_lock(&idp->fetch_mu);
		go = !is->fetching && sl_mono_us() - is->last_fetch_us >= is->refresh_us - 500000;
		is->fetching |= go;
		pthread_mutex_unlock(&idp->fetch_mu);
		if (go && fetch_run(idp, is, 0) != 0)
			sl_warn("identity: cannot refresh the JWKS of %s; keeping the keys it had",
				is->issuer);
	}
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

/* mkdir -p: missing components are created with mode. */
static int
mkdirs(const char *path, mode_t mode)
{
	char p[4096];

	if (snprintf(p, sizeof(p), "%s", path) >= (int)sizeof(p) || p[0] == '\0')
		return SL_EINVAL;
	for (char *s = p + 1; *s; s++) {
		if (*s != '/')
			continue;
		*s = '\0';
		if (mkdir(p, mode) != 0 && errno != EEXIST)
			return SL_EIO;
		*s = '/';
	}
	if (mkdir(p, mode) != 0 && errno != EEXIST)
		return SL_EIO;
	return 0;
}

/* Replaces path with n bytes of data in one step (temp file, fsync, rename),
 * so a reader never sees half a key or half a key set. */
static int
write_atomic(const char *path, const void *data, size_t n, mode_t mode)
{
	char tmp[4200];
	size_t off = 0;
	int fd;

	snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
	unlink(tmp);
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
	if (fd < 0)
		return SL_EIO;
	while (off < n) {
		ssize_t w = write(fd, (const char *)data + off, n - off);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			break;
		off += (size_t)w;
	}
	if (off != n || fsync(fd) != 0) {
		close(fd);
		unlink(tmp);
		return SL_EIO;
	}
	if (close(fd) != 0 || rename(tmp, path) != 0) {
		unlink(tmp);
		return SL_EIO;
	}
	return 0;
}

static int
write_key(const char *path, EVP_PKEY *k)
{
	BIO *b = BIO_new(BIO_s_mem());
	char *pem;
	long n;
	int r = SL_EIO;

	if (b == NULL)
		return SL_ENOMEM;
	if (PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL) == 1 &&
	    (n = BIO_get_mem_data(b, &pem)) > 0) {
		r = write_atomic(path, pem, (size_t)n, 0600);
		OPENSSL_cleanse(pem, (size_t)n);
	}
	BIO_free(b);
	return r;
}

static EVP_PKEY *
read_key(const char *path)
{
	FILE *f = fopen(path, "r");
	EVP_PKEY *k;

	if (f == NULL)
		return NULL;
	k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
	fclose(f);
	if (k != NULL && EVP_PKEY_get_id(k) != EVP_PKEY_ED25519) {
		EVP_PKEY_free(k);
		k = NULL;
	}
	return k;
}

int
sl_devissuer_init(const char *data_dir, int force, char *err, size_t errlen)
{
	char kpath[4096], jpath[4096], x64[64], kid[17], jwks[256];
	EVP_PKEY *k = NULL;
	int have_key, r = SL_EIO;

	if (mkdirs(data_dir, 0700) != 0) {
		snprintf(err, errlen, "cannot create %s: %s", data_dir, strerror(errno));
		return SL_EIO;
	}
	if (snprintf(kpath, sizeof(kpath), "%s/dev-issuer.key", data_dir) >= (int)sizeof(kpath) ||
	    snprintf(jpath, sizeof(jpath), "%s/dev-jwks.json", data_dir) >= (int)sizeof(jpath)) {
		snprintf(err, errlen, "data_dir path too long");
		return SL_EINVAL;
	}
	have_key = !force && access(kpath, F_OK) == 0;
	if (have_key && access(jpath, F_OK) == 0)
		return 0;
	if (have_key) {
		/* Key kept, key set lost: derive it again rather than replace the key. */
		if ((k = read_key(kpath)) == NULL) {
			snprintf(err, errlen,
				 "%s is not an Ed25519 key (use --force to replace it)", kpath);
			return SL_EIO;
		}
	} else {
		if ((k = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519")) == NULL) {
			snprintf(err, errlen, "cannot generate the dev issuer key");
			return SL_EIO;
		}
		if (write_key(kpath, k) != 0) {
			snprintf(err, errlen, "cannot write %s: %s", kpath, strerror(errno));
			goto out;
		}
	}
	if (dev_key_kid(k, x64, kid) != 0) {
		snprintf(err, errlen, "cannot derive the dev issuer key set");
		goto out;
	}
	snprintf(jwks, sizeof(jwks),
		 "{\"keys\":[{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"%s\",\"kid\":\"%s\","
		 "\"alg\":\"EdDSA\",\"use\":\"sig\"}]}\n",
		 x64, kid);
	if (write_atomic(jpath, jwks, strlen(jwks), 0644) != 0) {
		snprintf(err, errlen, "cannot write %s: %s", jpath, strerror(errno));
		goto out;
	}
	r = 0;
out:
	EVP_PKEY_free(k);
	return r;
}

int
sl_devissuer_mint(const char *data_dir, const struct sl_mint_opts *o, char **out_token, char *err,
		  size_t errlen)
{
	char kpath[4096], x64[64], kid[17];
	EVP_PKEY *k;
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

	if (o->sub == NULL || o->sub[0] == '\0') {
		snprintf(err, errlen, "a subject is required");
		return SL_EINVAL;
	}
	snprintf(kpath, sizeof(kpath), "%s/dev-issuer.key", data_dir);
	if (access(kpath, F_OK) != 0) {
		snprintf(err, errlen, "no dev issuer in %s: run `sluice token init` first",
			 data_dir);
		return SL_ENOENT;
	}
	k = read_key(kpath);
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

#define CLI_MAX_GROUPS 64

static int
parse_signed_duration_s(const char *v, int64_t *out_s)
{
	int neg = v[0] == '-';
	int64_t ms;

	if (sl_parse_duration_ms(v + neg, &ms) != 0)
		return SL_EINVAL;
	*out_s = (neg ? -ms : ms) / 1000;
	return 0;
}

static int
cli_init(int argc, char **argv, const char *data_dir)
{
	char err[512] = "";
	int force = 0;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--force") != 0) {
			fprintf(stderr, "usage: sluice token init [--force]\n");
			return 2;
		}
		force = 1;
	}
	if (sl_devissuer_init(data_dir, force, err, sizeof(err)) != 0) {
		fprintf(stderr, "sluice token init: %s\n", err);
		return 1;
	}
	printf("dev issuer ready: %s/dev-jwks.json (issuer %s, audience %s)\n", data_dir,
	       SL_DEV_ISSUER, SL_DEV_AUDIENCE);
	return 0;
}

/* Fills o from `mint` options; groups point into *gcopy (owned by the caller).
 * Returns 0, or 2 after printing a usage message. */
static int
mint_args(int argc, char **argv, struct sl_mint_opts *o, const char **groups, char **gcopy)
{
	for (int i = 1; i < argc; i += 2) {
		const char *opt = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (v == NULL) {
			fprintf(stderr, "sluice token mint: %s needs a value\n", opt);
			return 2;
		}
		if (strcmp(opt, "--sub") == 0) {
			o->sub = v;
		} else if (strcmp(opt, "--groups") == 0) {
			char *save = NULL;

			free(*gcopy);
			if ((*gcopy = strdup(v)) == NULL)
				return 2;
			o->ngroups = 0;
			for (char *t = strtok_r(*gcopy, ",", &save); t;
			     t = strtok_r(NULL, ",", &save)) {
				if (o->ngroups == CLI_MAX_GROUPS) {
					fprintf(stderr, "sluice token mint: at most %d groups\n",
						CLI_MAX_GROUPS);
					return 2;
				}
				groups[o->ngroups++] = t;
			}
		} else if (strcmp(opt, "--ttl") == 0) {
			if (parse_signed_duration_s(v, &o->ttl_s) != 0) {
				fprintf(stderr, "sluice token mint: bad --ttl %s\n", v);
				return 2;
			}
		} else if (strcmp(opt, "--nbf") == 0) {
			if (parse_signed_duration_s(v, &o->nbf_offset_s) != 0) {
				fprintf(stderr, "sluice token mint: bad --nbf %s\n", v);
				return 2;
			}
		} else if (strcmp(opt, "--aud") == 0) {
			o->aud = v;
		} else if (strcmp(opt, "--iss") == 0) {
			o->iss = v;
		} else if (strcmp(opt, "--claims") == 0) {
			o->extra_claims_json = v;
		} else {
			fprintf(stderr, "sluice token mint: unknown option %s\n", opt);
			return 2;
		}
	}
	if (o->sub == NULL || o->sub[0] == '\0') {
		fprintf(stderr, "usage: sluice token mint --sub S [--groups a,b] [--ttl 1h] "
				"[--nbf 5m] [--aud A] [--iss I] [--claims JSON]\n");
		return 2;
	}
	return 0;
}

static int
cli_mint(int argc, char **argv, const char *data_dir)
{
	struct sl_mint_opts o = {.ttl_s = 3600};
	const char *groups[CLI_MAX_GROUPS];
	char err[512] = "", *gcopy = NULL, *tok = NULL;
	int rc;

	o.groups = groups;
	rc = mint_args(argc, argv, &o, groups, &gcopy);
	if (rc == 0 && sl_devissuer_mint(data_dir, &o, &tok, err, sizeof(err)) != 0) {
		fprintf(stderr, "sluice token mint: %s\n", err);
		rc = 1;
	}
	if (rc == 0)
		printf("%s\n", tok);
	free(tok);
	free(gcopy);
	return rc;
}

int
sl_token_cli(int argc, char **argv, const struct sl_config *cfg)
{
	const char *data_dir = cfg && cfg->gateway.data_dir ? cfg->gateway.data_dir : "./var";

	if (argc >= 1 && argv[0] != NULL && strcmp(argv[0], "init") == 0)
		return cli_init(argc, argv, data_dir);
	if (argc >= 1 && argv[0] != NULL && strcmp(argv[0], "mint") == 0)
		return cli_mint(argc, argv, data_dir);
	fprintf(stderr, "usage: sluice token init [--force]\n"
			"       sluice token mint --sub S [--groups a,b] [--ttl 1h] [--nbf 5m] "
			"[--aud A] [--iss I] [--claims JSON]\n");
	return 2;
}
