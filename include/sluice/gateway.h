/*
 * gateway.h - the running gateway: shared state (config, identity, policy,
 * audit, review, masking), worker threads with one libuv loop each, and the
 * pipeline every protocol adapter goes through.
 *
 * Adapters never call policy, review or audit directly: they describe a
 * request to the pipeline (sl_pl_*) and act on the decision it returns.
 */
#ifndef SLUICE_GATEWAY_H
#define SLUICE_GATEWAY_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <jansson.h>
#include <uv.h>

#include "sluice/config.h"
#include "sluice/identity.h"
#include "sluice/net.h"
#include "sluice/policy.h"
#include "sluice/sqlclass.h"

struct sl_audit;
struct sl_review_mgr;
struct sl_admin;
struct sl_mask_db;
struct sl_mask_plan;
struct sl_mask_scratch;
struct sl_gw;

/* Work posted to a worker loop from another thread (audit writer, review
 * thread, thread pool). fn runs on the worker's loop thread. */
struct sl_completion {
	struct sl_completion *next;
	struct sl_worker *w; /* loop to run fn on (set by whoever arms it) */
	void (*fn)(struct sl_completion *c);
	void *arg;
	int status;
	uint64_t value;
	int state;
	char text[256];
};

struct sl_worker {
	unsigned id;
	struct sl_gw *gw;
	uv_loop_t loop;
	uv_thread_t thread;
	uv_async_t async;
	pthread_mutex_t mu;
	struct sl_completion *head, *tail;
	/* The PostgreSQL listener: sluice accepts itself (not uv_listen) so
	 * that running out of descriptors pauses accepting for a moment
	 * instead of spinning on a socket that stays readable. */
	uv_poll_t pg_listener;
	int pg_lfd;
	int pg_listening;
	uv_timer_t pg_accept_timer; /* resumes accepting after a pause */
	unsigned pg_accept_timer_init : 1;
	int64_t pg_emfile_warned_us, pg_full_warned_us, pg_perip_warned_us;
	struct sl_sql_cache *sqlcache;
	struct sl_mask_scratch *mscratch;
	struct sl_buf rtext; /* the audit's copy of a statement text, reused */
	int stopping;
	uv_timer_t drain_timer;
	void *sessions_stop; /* the stop message once stopping */
	int cut;	     /* sessions were terminated at the drain deadline */
	atomic_int done;     /* the loop has returned */
	unsigned nsessions;
	void *sessions; /* protocol adapters' intrusive list heads */
	/* PostgreSQL upstream connections kept for reuse (pg/session.c) */
	void *pg_pool;		  /* list of struct pg_upconn: being reset or idle */
	uv_timer_t pg_pool_timer; /* closes the ones idle too long */
	unsigned pg_pool_timer_on : 1, pg_pool_timer_init : 1;
};

struct sl_mask_binding {
	const struct sl_cfg_policy_mask *cfg;
	struct sl_mask_plan *plan;
};

#define SL_CANCEL_BUCKETS 4096
struct cancel_ent; /* pg/session.c */

/* The policies in force, compiled, with their masking plans. SIGHUP makes a
 * new generation and publishes it; a generation is never freed before the
 * gateway stops (decisions, held reviews and sessions' masking plans point
 * into it). */
struct sl_policy_gen {
	struct sl_config *cfg; /* owns the policies; NULL for the first (gw->cfg) */
	struct sl_policy_set *policy;
	struct sl_mask_binding *masks;
	size_t nmasks;
	unsigned number; /* 1, 2, ... */
	struct sl_policy_gen *older;
};

struct sl_gw {
	struct sl_config *cfg;
	struct sl_idp *idp;
	_Atomic(struct sl_policy_gen *) gen; /* read with sl_gw_policies() */
	struct sl_audit *audit;
	struct sl_review_mgr *review;
	struct sl_admin *admin;
	struct sl_mask_db *maskdb;
	uint8_t mask_key[32]; /* the "hash" style's key, for plans made on reload */
	size_t mask_keylen;
	struct sl_mask_plan *audit_plan; /* every detector: statement text in audit records */
	struct sl_worker *workers;
	unsigned nworkers;
	SSL_CTX *pg_tls;    /* server side, NULL if no tls_cert */
	SSL_CTX *up_tls;    /* client side for upstreams (tls: require, not verified) */
	SSL_CTX **conn_tls; /* per connection (cfg order): tls: verify-full, else NULL */
	struct sockaddr_storage pg_addr;
	int pg_loopback;
	size_t max_message;
	/* message buffers over 1 MiB, all sessions (pg_session.charged):
	 * at most max_buffered */
	atomic_size_t buffered;
	size_t max_buffered;
	atomic_size_t held; /* sessions' held_bytes as last charged (pg/session.c held_ok) */
	size_t max_held;
	int64_t leeway_s;
	int64_t login_timeout_ms;
	int64_t message_timeout_ms; /* gateway.message_timeout */
	/* client sessions: admitted ones count against max_clients; past it a
	 * few more (max_over) are let in to be told so (53300), the rest are
	 * closed at once */
	unsigned max_clients, max_over;
	atomic_uint nclients, nover;
	/* connections still logging in, per client address (login_slot_*) */
	unsigned max_logins;
	pthread_mutex_t login_mu;
	struct login_addr **login_map; /* SL_LOGIN_BUCKETS chains */
	char node[64];
	atomic_uint_fast64_t next_session;
	atomic_int stopping;
	/* cancel-key map: our (pid, key) -> upstream; buckets by pid */
	pthread_mutex_t cancel_mu;
	struct cancel_ent **cancel_map; /* SL_CANCEL_BUCKETS lists, made at the first login */
};

#define SL_LOGIN_BUCKETS 1024

/* A client address as a key: 0 and 4 bytes (IPv4, also IPv4-mapped IPv6),
 * 6 and 16 bytes (IPv6), or all zero (anything else, never limited). */
struct sl_addr_key {
	uint8_t b[17];
};
/* Counts a connection from sa as logging in. 0: counted (*key says whose;
 * give it back with sl_gw_login_done); SL_EPOLICY: gateway.max_logins_per_address
 * connections from there are logging in already. */
int sl_gw_login_take(struct sl_gw *gw, const struct sockaddr *sa, struct sl_addr_key *key);
void sl_gw_login_done(struct sl_gw *gw, const struct sl_addr_key *key);

/* The policy generation in force now (one load; hold on to it for one
 * request so that its decision and masking plan come from the same one). */
static inline struct sl_policy_gen *
sl_gw_policies(struct sl_gw *gw)
{
	return atomic_load_explicit(&gw->gen, memory_order_acquire);
}

/* Posts c to w's loop (thread-safe). */
void sl_worker_post(struct sl_worker *w, struct sl_completion *c);

/* Runs the gateway until SIGTERM/SIGINT: starts listeners on every worker,
 * the admin API and the review manager; on a signal stops accepting, drains
 * sessions (up to shutdown_timeout), flushes the audit trail. Returns 0 on a
 * clean stop. */
int sl_gateway_run(struct sl_config *cfg);

/* ------------------------------------------------------------ pipeline */

/* Protocol-neutral view of one client session. */
struct sl_pl_session {
	char id[40];
	const char *protocol; /* "postgres", "http", "ssh" */
	const struct sl_cfg_connection *conn;
	struct sl_identity ident; /* valid once authenticated */
	int authenticated;
	char client_addr[64];
	struct sl_mask_scratch *scratch; /* the worker's, for masking what is recorded */
	char trace_id[33];		 /* session-level trace context (application_name) */
	char span_id[17];
	int64_t opened_us;
	/* "subject":..,"connection":..,"protocol":.. as the request records
	 * carry them: made at the first record, dropped at every login (the
	 * connection is fixed at startup, before any) */
	char *jwho;
	size_t jwho_len;
};

/* A request as the pipeline sees it. */
struct sl_pl_request {
	enum sl_proto proto;
	const char *
		text; /* statement / request line (may hold sensitive literals: never logged raw) */
	size_t textlen;
	const struct sl_sql_class *sql;
	const char *http_method, *http_path, *ssh_command;
	const char *trace_id, *span_id; /* per-request trace context, else the session's */
	const uint8_t *params;		/* exact parameter bytes, for review binding */
	size_t params_len;
	const char *params_shown; /* the parameters as text, for the record (NULL: none) */
	size_t params_shown_len;
	uint64_t seq;	       /* per-session request number */
	const char *review_id; /* the review that decided it (approved or not), if any */
};

void sl_pl_session_init(struct sl_gw *gw, struct sl_pl_session *s, const char *protocol);
void sl_pl_session_fini(struct sl_pl_session *s);

/* Verifies a bearer token. Never blocks: returns SL_ENOKEY when a JWKS
 * refresh (sl_pl_refresh_keys, blocking, thread pool) might help. */
int sl_pl_authenticate(struct sl_gw *gw, struct sl_pl_session *s, const char *token, size_t len,
		       char *err, size_t errlen);
void sl_pl_refresh_keys(struct sl_gw *gw, const char *token, size_t len);
/* Audits a refused login (reason is client-safe text). */
void sl_pl_auth_failed(struct sl_gw *gw, struct sl_pl_session *s, const char *user,
		       const char *reason);
void sl_pl_session_opened(struct sl_gw *gw, struct sl_pl_session *s, json_t *details);
void sl_pl_session_closed(struct sl_gw *gw, struct sl_pl_session *s, const char *why);

/* SL_EEXPIRED once the session's token has expired (plus leeway), else 0. */
int sl_pl_check_expiry(struct sl_gw *gw, struct sl_pl_session *s);
/* Decides a request. Fills d. Checks token expiry too (SL_EEXPIRED). */
int sl_pl_decide(struct sl_gw *gw, struct sl_pl_session *s, const struct sl_pl_request *r,
		 struct sl_decision *d);
/* Appends the request's audit record. With c != NULL in strict mode returns 1
 * and c->fn runs later on w's loop once the record is durable (c->status < 0:
 * not durable, refuse the request); otherwise returns 0 without waiting (c is
 * not used). Returns < 0 if the record could not even be queued (refuse).
 * c is caller-owned and must stay alive until c->fn ran. */
int sl_pl_record(struct sl_gw *gw, struct sl_worker *w, struct sl_pl_session *s,
		 const struct sl_pl_request *r, const struct sl_decision *d,
		 struct sl_completion *c);
/* Result of a request (never waited for). error_msg must already be masked. */
void sl_pl_result(struct sl_gw *gw, struct sl_pl_session *s, uint64_t seq, const char *trace_id,
		  int64_t duration_us, int64_t rows, const char *tag, const char *sqlstate,
		  const char *error_msg, json_t *mask_stats);
/* Extracts a W3C traceparent ("00-<32 hex>-<16 hex>-<2 hex>") from text: a
 * sqlcommenter comment traceparent='...' or a bare traceparent value.
 * Returns 1 and fills trace_id/span_id when found. */
int sl_pl_trace_from_text(const char *text, size_t len, char trace_id[33], char span_id[17]);

/* The text of a request as sluice may store or show it (audit records,
 * approvers): with sql, SQL's secrets given by name (PASSWORD '...') are
 * redacted; with ms, every audit detector runs over it (literals can be card
 * numbers). Written to out (reset first), NUL-terminated. Returns 0, or a
 * negative SL_E* when it could not be masked: then out holds nothing the
 * text said ("<withheld: could not be masked>", or nothing at all). */
int sl_pl_safe_text(struct sl_gw *gw, struct sl_mask_scratch *ms, const char *text, size_t len,
		    int sql, struct sl_buf *out);

/* Masking plan for a decision (NULL = nothing to mask). */
const struct sl_mask_plan *sl_pl_mask_plan(struct sl_gw *gw, const struct sl_decision *d);
/* Masking plan for an authenticated session (NULL = none); *exempt = 1 when
 * the caller's policy exempts it (recorded in the audit trail). */
const struct sl_mask_plan *sl_pl_session_mask(struct sl_gw *gw, struct sl_pl_session *s,
					      int *exempt);
/* Builds masking state at start-up: detector database, per-policy plans,
 * the audit plan, the hash key. */
int sl_pl_mask_init(struct sl_gw *gw, char *err, size_t errlen);
/* Masking plans for the policies of g (g->cfg, else gw->cfg), with the
 * detector database and key sl_pl_mask_init() made. */
int sl_pl_gen_masks(struct sl_gw *gw, struct sl_policy_gen *g, char *err, size_t errlen);
void sl_pl_gen_free(struct sl_policy_gen *g);
void sl_pl_mask_fini(struct sl_gw *gw);

#endif
