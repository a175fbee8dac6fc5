/*
 * identity.h - OIDC JWT verification against JWKS (RS256, ES256, EdDSA with
 * the algorithm pinned to the key), claim mapping, a verified-token cache,
 * and the dev issuer used by the quick start and the tests.
 */
#ifndef SLUICE_IDENTITY_H
#define SLUICE_IDENTITY_H

#include <stddef.h>
#include <stdint.h>

#include "sluice/config.h"
#include "sluice/core.h"

struct sl_identity {
	char *subject; /* owned */
	char *issuer;  /* owned */
	char **groups; /* owned */
	size_t ngroups;
	int64_t exp;	       /* seconds since the epoch */
	char token_sha256[65]; /* hex SHA-256 of the raw token: for audit, never the token */
};

void sl_identity_fini(struct sl_identity *id);
int sl_identity_copy(struct sl_identity *dst, const struct sl_identity *src);
/* 1 if id is in group. */
int sl_identity_in_group(const struct sl_identity *id, const char *group);

#define SL_DEV_ISSUER	       "sluice-dev"
#define SL_DEV_AUDIENCE	       "sluice"
#define SL_JWT_MAX	       16384 /* bytes: longer tokens are refused */
#define SL_IDENTITY_MAX_GROUPS 256   /* more groups in a token: refused */
#define SL_IDENTITY_MAX_NAME   256   /* longest subject or group name, bytes */

/* Thread-safe identity provider. With no issuers configured it trusts the dev
 * issuer (issuer "sluice-dev", audience "sluice", JWKS <data_dir>/dev-jwks.json,
 * created on first use). Remote issuers (jwks_uri / discovery) are fetched once
 * here, blocking; a failure only warns (the issuer starts without keys). On
 * failure returns SL_EINVAL / SL_EIO / SL_ENOMEM with a message in err. */
struct sl_idp;
int sl_idp_new(const struct sl_cfg_identity *cfg, const char *data_dir, struct sl_idp **out,
	       char *err, size_t errlen);
void sl_idp_free(struct sl_idp *idp);
/* Verifies a token at time now (seconds). Never does network I/O. Fills *out
 * (caller fini's) on success. Returns SL_EAUTH (malformed, signature, alg,
 * iss/aud, missing claims, bad groups), SL_EEXPIRED (exp/nbf) or SL_ENOKEY
 * (kid unknown, or the issuer has no keys yet: sl_idp_refresh off-loop may
 * help, then retry once). err gets a client-safe reason, never token contents. */
int sl_idp_verify(struct sl_idp *idp, const char *token, size_t len, int64_t now,
		  struct sl_identity *out, char *err, size_t errlen);
/* Blocking (libcurl, at most 3 s): refetches the JWKS of the token's
 * (unverified) issuer, or of every remote issuer if token is NULL. Every fetch
 * counts towards a per-issuer limit: once per 30 s for an issuer with usable
 * keys, per 2 s for one without. Never waits for another caller's fetch: when
 * that issuer is being fetched already, or two fetches are in flight, it
 * returns at once. Returns 0 (fetched, or a fetch that ended after the call
 * began answered it), SL_ESTATE (rate-limited, busy, unknown or file-based
 * issuer) or SL_EIO (fetch failed; the old keys are kept). */
int sl_idp_refresh(struct sl_idp *idp, const char *token, size_t len);
/* Starts a thread that re-fetches each remote JWKS every jwks_refresh (a key
 * the IdP removed stops verifying within that time); stopped by
 * sl_idp_free. A no-op when every issuer uses a jwks_file. */
int sl_idp_start_refresh(struct sl_idp *idp);

/* Dev issuer: creates <data_dir> (0700, with parents), <data_dir>/dev-issuer.key
 * (Ed25519 PEM, 0600) and <data_dir>/dev-jwks.json. Keeps an existing key
 * unless force (a missing JWKS is derived again from it). */
int sl_devissuer_init(const char *data_dir, int force, char *err, size_t errlen);
struct sl_mint_opts {
	const char *sub;
	const char **groups;
	size_t ngroups;
	const char *iss;	       /* default "sluice-dev" */
	const char *aud;	       /* default "sluice" */
	int64_t ttl_s;		       /* may be negative: already expired */
	int64_t nbf_offset_s;	       /* 0 = no nbf */
	const char *extra_claims_json; /* a JSON object merged over the claims, or NULL */
};
/* Signs a token with the dev key. Returns owned *out_token; SL_ENOENT if there
 * is no dev issuer in data_dir, SL_EINVAL for a missing sub or bad extra claims. */
int sl_devissuer_mint(const char *data_dir, const struct sl_mint_opts *o, char **out_token,
		      char *err, size_t errlen);
/* `sluice token init [--force]` / `sluice token mint --sub S [--groups a,b]
 * [--ttl 1h] [--nbf 5m] [--aud A] [--iss I] [--claims JSON]` (token on stdout).
 * argv[0] = subcommand; data_dir from cfg->gateway.data_dir. Returns the exit
 * status: 0 ok, 1 failure, 2 usage. */
int sl_token_cli(int argc, char **argv, const struct sl_config *cfg);

#endif
