/*
 * identity_internal.h - key sets and issuers shared by jwt.c and idp.c.
 */
#ifndef SLUICE_IDENTITY_INTERNAL_H
#define SLUICE_IDENTITY_INTERNAL_H

#include <pthread.h>
#include <stdint.h>

#include <openssl/evp.h>

#include "sluice/identity.h"

#define SL_IDP_CACHE_SLOTS 4096		    /* verified tokens remembered until their exp */
#define SL_JWKS_MAX_KEYS   64		    /* a larger key set is refused whole */
#define SL_JWKS_FETCH_MAX  (1u << 20)	    /* bytes of a discovery document or JWKS */
#define SL_JWKS_REFRESH_US (30 * 1000000LL) /* at most one refetch per issuer per 30 s */
#define SL_JWKS_RETRY_US   (2 * 1000000LL)  /* ...or per 2 s while it has no usable key */
#define SL_JWKS_TIMEOUT_MS 3000		    /* one fetch, discovery and JWKS together */
#define SL_JWKS_ON_DEMAND  2		  /* token-driven fetches in flight at once, all issuers */
#define SL_NUMERICDATE_MAX 253402300799LL /* exp/nbf/iat: 9999-12-31T23:59:59Z at most */
#define SL_LEEWAY_MAX_S	   86400	  /* issuers[].leeway: at most a day */

struct sl_jwk {
	EVP_PKEY *pkey;
	char alg[8]; /* the one algorithm this key verifies */
	char kid[128];
};

struct sl_keyset {
	struct sl_jwk *keys;
	size_t n;	  /* usable keys */
	size_t published; /* entries in the JWKS, usable or not */
};

struct sl_issuer {
	char *issuer, *audience, *jwks_file, *jwks_uri, *ca_file;
	char *groups_claim, *subject_claim;
	int64_t leeway_s;
	struct sl_keyset *keys; /* read under idp->lock; swapped under it by the fetcher */
	/* (fetch_mu) */
	int64_t last_fetch_us; /* monotonic, end of the last fetch */
	int fetch_failed;      /* the last fetch failed */
	int fetching;	       /* a fetch is in flight: only its thread swaps keys */
	int refetched;	       /* a fetch after the one at start ran: the limit applies */
	int warned_unusable;   /* "no usable key" was logged for the key set in use */
	int64_t refresh_us;    /* periodic re-fetch of a remote JWKS (jwks_refresh) */
};

struct cache_slot {
	uint8_t hash[32];
	int used;
	uint64_t gen; /* idp->keys_gen when it was verified */
	struct sl_identity id;
};

struct sl_idp {
	pthread_rwlock_t lock;
	uint64_t keys_gen; /* bumped (under lock) whenever any issuer's keys change */
	struct sl_issuer *issuers;
	size_t nissuers;
	pthread_mutex_t cache_mu;
	struct cache_slot *cache;
	size_t ncache;
	/* Guards the issuers' fetch state and on_demand; never held across I/O,
	 * so no thread ever waits for another one's fetch. */
	pthread_mutex_t fetch_mu;
	int on_demand; /* token-driven fetches in flight (SL_JWKS_ON_DEMAND at most) */
	/* the periodic JWKS refresh thread (sl_idp_start_refresh) */
	pthread_t refresher;
	int refresher_on, stopping;
	pthread_mutex_t stop_mu;
	pthread_cond_t stop_cv;
};

int sl_b64url_decode(const char *in, size_t n, uint8_t *out, size_t outmax, size_t *outlen);
void sl_b64url_encode(const uint8_t *in, size_t n, char *out);
/* Parses a JWKS into the keys sluice can use (others are skipped); who names
 * the issuer in log messages about skipped keys, or NULL for no logging.
 * Returns 0 with *out owned, SL_EINVAL (not a key set) or SL_ENOMEM. */
int sl_keyset_parse(const char *json, size_t len, const char *who, struct sl_keyset **out);
void sl_keyset_free(struct sl_keyset *ks);
const struct sl_issuer *sl_idp_issuer(struct sl_idp *idp, const char *iss);
int sl_jwt_verify_with(struct sl_idp *idp, const char *token, size_t len, int64_t now,
		       struct sl_identity *out, char *err, size_t errlen);

#endif
