/*
 * pg_auth.h - upstream login as a pure state machine: feed the server's
 * messages, get the replies to send. SCRAM-SHA-256 (server signature
 * verified), MD5, cleartext, trust.
 */
#ifndef SLUICE_PG_AUTH_H
#define SLUICE_PG_AUTH_H
#include "sluice/core.h"
struct sl_pg_upauth;
#define SL_PG_UPAUTH_DONE 2
int sl_pg_upauth_new(const char *user, const char *password, const uint8_t *nonce_src, size_t nlen,
		     struct sl_pg_upauth **out);
void sl_pg_upauth_free(struct sl_pg_upauth *a);
int sl_pg_upauth_feed(struct sl_pg_upauth *a, const uint8_t *msg, size_t len, struct sl_buf *out,
		      char *err, size_t errlen);

#endif
