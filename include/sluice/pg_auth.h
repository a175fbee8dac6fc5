/*
 * pg_auth.h - upstream login as a pure state machine: feed the server's
 * messages, get the replies to send. SCRAM-SHA-256 (RFC 5802/7677, server
 * signature verified, no channel binding), MD5, cleartext, trust. No sockets,
 * clocks or logging; the caller supplies the randomness for the nonce.
 */
#ifndef SLUICE_PG_AUTH_H
#define SLUICE_PG_AUTH_H

#include "sluice/core.h"

struct sl_pg_upauth; /* opaque */

/* sl_pg_upauth_feed() result: AuthenticationOk seen. */
#define SL_PG_UPAUTH_DONE 2

/* Methods besides SCRAM-SHA-256 (always allowed) the server may choose. */
#define SL_PG_UPAUTH_ALLOW_CLEARTEXT 0x1u /* AuthenticationCleartextPassword */
#define SL_PG_UPAUTH_ALLOW_MD5	     0x2u /* AuthenticationMD5Password */
#define SL_PG_UPAUTH_ALLOW_TRUST     0x4u /* AuthenticationOk without any exchange */
#define SL_PG_UPAUTH_ALLOW_ALL	     0x7u /* the default */

/* Default and hard ceiling for the SCRAM iteration count a server may ask
 * for: PBKDF2 runs inside sl_pg_upauth_feed(), so a hostile server could
 * otherwise make the caller burn CPU for minutes. */
#define SL_PG_SCRAM_MAX_ITER 10000000u

/*
 * Creates the state machine. user and password are borrowed for the object's
 * lifetime (user is the role name sent in the startup packet; MD5 needs it).
 * nonce_src: at least 18 random bytes; the first 18 become the SCRAM client
 * nonce (base64, 24 characters). Returns 0, SL_EINVAL or SL_ENOMEM.
 */
int sl_pg_upauth_new(const char *user, const char *password, const uint8_t *nonce_src, size_t nlen,
		     struct sl_pg_upauth **out);
/* Wipes and frees; NULL is a no-op. */
void sl_pg_upauth_free(struct sl_pg_upauth *a);

/* Setters: only before the first message is fed (else SL_ESTATE). */
/* Which non-SCRAM methods are acceptable (SL_PG_UPAUTH_ALLOW_* bits). */
int sl_pg_upauth_set_allowed(struct sl_pg_upauth *a, unsigned methods);
/* Shorthand for the cleartext bit (default: allowed). */
int sl_pg_upauth_set_allow_cleartext(struct sl_pg_upauth *a, int allow);
/* Lower the iteration ceiling (1..SL_PG_SCRAM_MAX_ITER). */
int sl_pg_upauth_set_max_iterations(struct sl_pg_upauth *a, uint32_t max);
/* Channel binding to the upstream's TLS certificate (RFC 5929
 * tls-server-end-point; data: the certificate's hash, see
 * sl_stream_tls_end_point(); len 0: the connection has no TLS).
 * PREFER (the default, as libpq): SCRAM-SHA-256-PLUS when TLS is up and the
 * server offers it. REQUIRE: that or nothing (no MD5, cleartext, trust).
 * DISABLE: never. */
#define SL_PG_CBIND_DISABLE 0
#define SL_PG_CBIND_PREFER  1
#define SL_PG_CBIND_REQUIRE 2
int sl_pg_upauth_set_channel_binding(struct sl_pg_upauth *a, int mode, const uint8_t *data,
				     size_t len);
/* Username inside the SCRAM messages. Default "" as libpq sends (PostgreSQL
 * ignores it and uses the startup packet's user). Escaped per RFC 5802. Max
 * 128 bytes. Exists for RFC test vectors and other SCRAM servers. */
int sl_pg_upauth_set_scram_user(struct sl_pg_upauth *a, const char *name);
/* Replace the client nonce (printable ASCII except ',', 1..64 chars); for
 * known-answer tests. */
int sl_pg_upauth_set_client_nonce(struct sl_pg_upauth *a, const char *nonce);

/*
 * Feeds one whole server message received during login ('R', 'E', 'N', 'v')
 * as framed by sl_pg_frame(). Appends any reply to out. Returns
 *   0                  consumed, keep going (a reply may have been appended)
 *   SL_PG_UPAUTH_DONE  AuthenticationOk (the caller then relays S/K/Z itself)
 *   SL_EAUTH           the server refused (err: its SQLSTATE and message,
 *                      sanitized to printable ASCII), sent a SCRAM error, or
 *                      its SCRAM signature was missing or wrong
 *   SL_EPROTO          unexpected message or malformed authentication data
 *   SL_EPOLICY         the server asked for a method that is not allowed
 *                      (GSS, SSPI, Kerberos, SCRAM-SHA-256-PLUS only without
 *                      TLS, a method switched off with the setters, or
 *                      anything but SCRAM-SHA-256-PLUS under REQUIRE)
 *   SL_EIO             the crypto library failed
 *   SL_ESTATE          fed after DONE or after an error
 * err (may be NULL) gets a one-line reason on failure; it never holds the
 * password or anything derived from it.
 */
int sl_pg_upauth_feed(struct sl_pg_upauth *a, const uint8_t *msg, size_t len, struct sl_buf *out,
		      char *err, size_t errlen);

/* The method that authenticated: "scram-sha-256-plus", "scram-sha-256", "md5",
 * "password", "trust", or NULL before AuthenticationOk. */
const char *sl_pg_upauth_method(const struct sl_pg_upauth *a);

#endif
