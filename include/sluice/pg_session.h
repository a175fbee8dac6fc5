/*
 * pg_session.h - the PostgreSQL protocol adapter: accepts clients on a
 * worker's loop, authenticates them with a JWT sent as the password, logs in
 * upstream with the vaulted credential and relays the session through the
 * pipeline (policy, audit, review, masking).
 */
#ifndef SLUICE_PG_SESSION_H
#define SLUICE_PG_SESSION_H

#include "sluice/gateway.h"

/* Starts the PostgreSQL listener on w's loop (SO_REUSEPORT, one per worker). */
int sl_pg_listen(struct sl_worker *w);
/* Stops accepting on w; existing sessions continue. */
void sl_pg_stop_listening(struct sl_worker *w);
/* Number of live sessions on w. */
unsigned sl_pg_sessions(struct sl_worker *w);
/* Terminates every session on w with a FATAL 57P01 "gateway shutting down". */
void sl_pg_terminate_all(struct sl_worker *w);

#endif
