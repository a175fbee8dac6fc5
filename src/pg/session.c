/*
 * session.c - PostgreSQL client session: startup, JWT login, upstream login
 * with the vaulted credential, and the relay with statement policy.
 *
 * Blocking a statement never fakes the server's state: the statement is
 * replaced, on the way upstream, by one that fails to parse and carries a
 * nonce ("SLUICE_BLOCKED_<nonce>"). The server then behaves exactly as for
 * any failed statement (aborts the transaction block, skips to Sync in the
 * extended protocol, keeps message order in pipelines), and the relay
 * rewrites that one ErrorResponse into SQLSTATE 42501 with the rule's
 * message.
 */
#include "sluice/pg_session.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "sluice/mask.h"
#include "sluice/review.h"
#include "sluice/pg_auth.h"
#include "sluice/pg_codec.h"

/* Session states. */
enum pg_state {
	PG_ST_STARTUP, /* waiting for StartupMessage / SSLRequest / CancelRequest */
	PG_ST_TLS,     /* TLS handshake with the client in progress */
	PG_ST_AUTH,    /* asked for a password (the JWT); waiting for 'p' */
	PG_ST_VERIFY,  /* JWKS refresh running on the thread pool */
	PG_ST_UPCONN,  /* resolving / connecting / TLS to the upstream */
	PG_ST_UPAUTH,  /* logging in upstream */
	PG_ST_UPINIT,  /* upstream said AuthenticationOk; relaying S/K until Z */
	PG_ST_READY,   /* relaying */
	PG_ST_CLOSING, /* both sides being closed; freed when handles and async work are done */
};

static const char *const state_names[] = {"startup", "tls",    "auth",	"verify", "upconn",
					  "upauth",  "upinit", "ready", "closing"};

/* Entries of the in-flight queue: what the server still owes an answer for. */
enum ent_kind { ENT_QUERY = 'Q', ENT_EXEC = 'E', ENT_SYNC = 'S', ENT_FUNC = 'F' };

struct entry {
	uint8_t kind;
	uint8_t blocked;
	uint8_t failed;
	uint64_t seq;
	int64_t start_us;
	int64_t rows;
	char tag[48];
	char sqlstate[6];
	char trace_id[33];
	uint8_t rfmt; /* result formats its Bind asked for: RFMT_* */
	/* ENT_EXEC: sluice describes the portal itself (up_send_request) */
	uint8_t need_desc;
	uint8_t taint;	   /* computed result columns carry a rule's column: style + 1 */
	uint8_t copy_gate; /* may start COPY FROM STDIN: see pg_session.copy_gate */
	uint8_t errtaint;  /* the server's messages may carry masked values: errtaint_of */
};

/* A statement's result as the server reported it (ent_finish). */
struct result {
	uint64_t seq;
	int64_t duration_us, rows;
	json_t *mask_stats;
	char *error;	   /* a copy: the server's message is consumed before it is recorded */
	char tag[48];	   /* as the entry's: empty when the server sent none */
	char sqlstate[6];  /* with has_sqlstate */
	char trace_id[33]; /* empty: the session's */
	uint8_t has_sqlstate;
};
_Static_assert(sizeof(((struct result *)0)->tag) == sizeof(((struct entry *)0)->tag) &&
		       sizeof(((struct result *)0)->trace_id) ==
			       sizeof(((struct entry *)0)->trace_id),
	       "a result copies its entry's tag and trace id whole");

/* Result formats of a Bind: all text, all binary, or mixed. */
enum { RFMT_TEXT = 0, RFMT_BINARY = 1, RFMT_MIXED = 2 };

/* A statement prepared through the protocol (Parse) or SQL PREPARE. */
struct stmt {
	unsigned refs;
	char *name;
	char *sql;
	size_t sqllen;
	uint32_t kinds;
	int review;		/* executing it needs approval (decided at Parse) */
	struct sl_decision dec; /* that decision (pointers into the policy set) */
	unsigned unknown : 1;	/* the server may hold another definition: refused */
	unsigned secret : 1;	/* its text names a secret: parameters not recorded */
	uint8_t taint;		/* as entry.taint, for its executions */
	uint8_t errtaint;	/* as entry.errtaint */
	size_t *held, cost;	/* charged to its session's held_bytes */
};

/*
 * A change to the server's prepared statements that the server has not
 * answered yet. The map (pg_session.stmts) holds only what the server
 * confirmed: a named Parse of a name that exists fails there (42P05), and
 * after an error the server skips everything up to Sync, so a Parse, Close
 * or PREPARE takes effect only once its answer says so. Until then lookups
 * in the same sync group see the change (if it failed, the server skips what
 * follows too); lookups from a later group wait for the answer.
 */
enum { OP_PARSE = 'P', OP_CLOSE = 'C', OP_PREPARE = 'Q', OP_BIND = 'B', OP_PCLOSE = 'c' };

/* Portals follow the same rule (OP_BIND, OP_PCLOSE): the server keeps an old
 * portal when a Bind fails (a named one that exists: 42P03; or a Bind refused
 * before the unnamed portal is replaced) or when a Close is skipped, and a
 * ROLLBACK TO SAVEPOINT can make that old portal usable again. */
struct stmt_op {
	uint8_t kind;		/* OP_* */
	uint8_t poison_on_fail; /* OP_PREPARE: a failure does not say it did not run */
	uint64_t grp;		/* sync group it was sent in */
	char *name;		/* OP_CLOSE, OP_PCLOSE */
	struct stmt *st;	/* OP_PARSE, OP_PREPARE: the definition (one reference) */
	struct portal *portal;	/* OP_BIND: the portal it makes (owned until confirmed) */
	struct stmt_op *next;
	/* the pending ops of the same name, older and newer */
	struct stmt_op *prev_same, *next_same;
};

#define MAX_STMT_OPS 100000

struct portal {
	char *name;
	uint64_t grp; /* sync group of its Bind */
	struct stmt *st;
	uint8_t *params; /* exact Bind parameter bytes (review binding, audit) */
	size_t plen;
	uint8_t *pbin; /* per parameter: 1 if sent in binary (for approvers' display) */
	uint16_t npbin;
	/* params and pbin of a small Bind (most are): no allocation */
	uint8_t params_in[48], pbin_in[8];
	uint8_t rfmt;		    /* RFMT_* */
	struct portal *prev, *next; /* in Bind order */
	size_t *held, cost;	    /* charged to its session's held_bytes */
};

/* What one session may make sluice keep: prepared statement texts and names,
 * portal names and the parameters kept for review. The server has no such
 * limit, but one agent must not be able to fill the gateway's memory that
 * every other session shares. Over it: FATAL 54000. */
#define SESSION_HELD_MAX ((size_t)64 << 20)

/* The refusal sluice sends when the audit trail cannot take a statement's
 * record: not a policy decision, so it gets its own SQLSTATE and hint. */
static const char audit_down_msg[] = "sluice: the audit trail is unavailable, request refused";

struct blocked_msg {
	char nonce[24];
	char message[256];
	int outage; /* the audit trail could not take the record: not a policy block */
	struct blocked_msg *next;
};

#define MAX_INFLIGHT 100000

/*
 * A logged-in upstream connection. A session owns it while it runs. When the
 * session ends cleanly with nothing in flight and no transaction open, the
 * connection goes to its worker's pool (connection key pool_size), is reset
 * there with DISCARD ALL (prepared statements, portals, temporary tables,
 * settings, role, advisory locks, LISTEN: all gone) and is handed to the
 * next session of the same connection that asks for the same database, user
 * and startup parameters. That session skips the upstream login (a SCRAM
 * exchange and a fresh backend process); its client still proves itself
 * with its own token, and its policy, audit and masking are its own.
 */
/* UC_PREP: setting application_name for the waiting session */
enum uc_state { UC_SESSION, UC_RESET, UC_IDLE, UC_PREP };

struct pg_upconn {
	struct sl_stream st;
	struct sl_buf in;
	struct sl_worker *w;
	struct pg_upconn *next, *prev; /* in the worker's pool */
	const struct sl_cfg_connection *conn;
	char *key; /* database, user and forwarded parameters: NUL-separated */
	size_t keylen;
	char **pnames, **pvals; /* ParameterStatus as the server last reported it */
	size_t nparams;
	uint32_t pid, secret;		    /* its BackendKeyData */
	struct sockaddr_storage addr;	    /* where it is connected (cancels go there) */
	const char *auth;		    /* how it logged in (a static string) */
	int64_t since_us;		    /* put in the pool at */
	int64_t born_us;		    /* logged in at */
	uint8_t state;			    /* UC_* */
	unsigned answered : 1, noreuse : 1; /* answered: the reset's (or SET's) CommandComplete */
	struct pg_session *waiter;	    /* UC_RESET: the session it goes to once reset */
};

/* Longest a DISCARD ALL (or SET) may take before the connection is dropped. */
#define POOL_RESET_MS 10000

struct pg_session {
	struct pg_session *next, *prev;
	struct sl_worker *w;
	struct sl_gw *gw;
	struct sl_pl_session pl;
	enum pg_state state;
	struct sl_stream cli;
	struct sl_buf cin;
	struct pg_upconn *upc;	    /* the upstream connection, once there is one */
	struct pg_upconn *upc_wait; /* a pooled one being reset for this session */
	unsigned cli_open : 1, up_open : 1, up_inited : 1, tls : 1, hold : 1, barrier : 1,
		terminating : 1, freeing : 1, in_process : 1;
	unsigned reusable : 1,	/* the client left cleanly: its upstream may be pooled */
		up_reused : 1,	/* the upstream came from the pool */
		replay : 1,	/* its login messages wait in upc->in */
		logging_in : 1, /* counted in gw's logins of its address (login_key) */
		admitted : 1,	/* counted in gw->nclients */
		over : 1;	/* past max_connections: told so at its startup (gw->nover) */
	/* COPY FROM STDIN. The server in COPY IN mode reads only CopyData,
	 * CopyDone and CopyFail, ignores Sync and Flush (no ReadyForQuery for
	 * them) and ends the connection at anything else. Whether it enters
	 * that mode is known only from its answer, so once a statement that
	 * may start one is sent (copy_gate, the entry marked), the client's
	 * next messages wait for it: CopyInResponse sets copy_in until the
	 * client's CopyDone/CopyFail, the entry's end lifts the gate. Else a
	 * Sync the server ignores would be paired with a later answer, and
	 * every statement after it with another's result. An Execute runs one
	 * statement, so its gate lifts at the CopyDone/CopyFail already (the
	 * server keeps its CommandComplete until the client's next Sync or
	 * Flush); a Query's may start another COPY and lifts at its end. */
	unsigned copy_gate : 1, copy_in : 1, copy_resume : 1, copy_data : 1;
	unsigned pending;    /* async work that still points at this session */
	size_t charged;	     /* buffer bytes counted in gw->buffered (charge_buffers) */
	size_t held_charged; /* held_bytes counted in gw->held (held_sync) */
	/* startup */
	char *client_user, *client_db;
	char **fwd_keys, **fwd_vals;
	size_t nfwd;
	struct sl_pg_upauth *upauth;
	const char *up_auth;	   /* the upstream login's method, once logged in */
	struct cancel_ent *cancel; /* this session's entry in the cancel map */
	struct sockaddr_storage up_addr;
	uv_getaddrinfo_t gai;
	uint32_t our_pid, our_key, up_pid, up_key;
	char *password; /* the vaulted upstream password while logging in */
	/* SCRAM's PBKDF2 (thousands of HMACs) runs on the thread pool, not on
	 * the loop every other session of the worker shares */
	uv_work_t scram_work;
	uint8_t *scram_msg;
	size_t scram_len;
	struct sl_buf scram_out;
	char scram_err[256];
	int scram_rc;
	unsigned scram_busy : 1;
	/* relay state */
	char txstatus;
	int scs_on;
	int enc_safe;
	struct entry *ents;
	size_t ents_head, ents_len, ents_cap;
	/* Results taken from the server's answers, recorded once the answer
	 * is on its way to the client (results_record): the record is not the
	 * client's wait. */
	struct result *results;
	size_t nresults, results_cap;
	/* Names a client picks live in hash maps: a client with thousands of
	 * prepared statements or a long pipeline must not make each message
	 * cost a walk over all of them (a worker serves many sessions). */
	struct sl_strmap stmts; /* name -> struct stmt the server confirmed */
	struct stmt_op *ops, **ops_tail;
	struct sl_strmap opnames; /* statement name -> newest pending op of that name */
	struct sl_strmap pnames;  /* portal name -> newest pending op of that name */
	size_t nops;
	uint64_t grp_sent, grp_done; /* Query/Sync/FunctionCall sent, answered (Z) */
	int grp_failed;		     /* the group being answered had an error */
	/* sluice refused a message of the extended-protocol batch the client
	 * is sending (its substitute fails there): the server skips the rest
	 * of it, up to the client's Sync */
	int grp_refused;
	/* Extended-protocol messages were sent since the last Sync. A simple
	 * Query (or FunctionCall) now would be skipped by the server if one
	 * of them fails, and sluice could no longer tell which answer is
	 * whose: refused (libpq and the common drivers never do this). */
	int ext_open;
	struct sl_strmap portals;		  /* name -> struct portal */
	struct portal *portals_old, *portals_new; /* the same, in Bind order */
	size_t held_bytes;			  /* statements and portals (SESSION_HELD_MAX) */
	struct blocked_msg *blocked;
	struct sl_addr_key login_key;
	uint64_t reqseq;
	/* held client message (strict audit / barrier) */
	struct sl_completion comp;
	size_t held_len;
	int held_action;
	char held_nonce[24];
	char held_message[256];
	uv_work_t work;
	char *verify_token;
	size_t verify_len;
	/* masking */
	const struct sl_mask_plan *mplan;
	int mask_exempt;
	/* the portal the client's last message described (Describe 'P'), if
	 * that message came just before this one (descp_prev) */
	char descp[64];
	uint8_t descp_set, descp_prev;
	/* Describe messages sent upstream and not answered yet, oldest first:
	 * sync group << 1 | 1 if sluice's own. The server answers them in
	 * order (RowDescription or NoData) or skips them after an error until
	 * Sync (dropped at that group's ReadyForQuery). */
	uint64_t *dq;
	size_t dq_head, dq_len, dq_cap;
	/* table columns whose names match a column rule, read from the catalog
	 * at login, so `SELECT ssn AS x` is still masked: sorted keys */
	struct catcol *catcols;
	size_t ncatcols;
	/* the same columns by name (schema, table, column), for COPY ... TO,
	 * whose output names no column; catalog_failed: the lookup failed */
	struct mtable {
		char nsp[64], rel[64], col[64];
	} * mtables;
	size_t nmtables;
	int catalog_failed;
	unsigned catalog : 2; /* 0 not asked, 1 query running, 2 done */
	struct colinfo *cols;
	uint16_t ncols;
	uint32_t *offs;
	int32_t *lens;
	struct sl_mask_stats mstats;
	int mstats_any;
	struct sl_buf mout, mval;
	/* startup + login must finish in time (slow clients hold sockets);
	 * once logged in, the deadline of a large incomplete message */
	uv_timer_t login_timer;
	unsigned msg_timer_on : 1;
	/* a statement held for approval */
	char review_id[40];
	uint32_t rkinds;
	const char *rtext; /* statement text of a held Execute (owned by its stmt) */
	size_t rtextlen;
	char *rparams; /* its Bind parameters as the audit shows them (owned) */
	size_t rparamslen;
	struct sl_buf pshown; /* an Execute's parameters for its record (exec_params) */
	char *secret_text;    /* the last text secret_cached() looked at, and its answer */
	size_t secret_len;
	int secret_was;
	struct sl_completion rcomp;
	struct sl_decision rdec;
	char rtrace[33], rspan[17];
	const struct sl_policy_gen *rgen; /* the policies it was held under */
	unsigned timer_open : 1;
};

struct catcol {
	uint64_t key; /* table oid << 16 | attnum */
	int8_t style;
};

#define CATALOG_MAX 100000

/* What to do with a result column. */
struct colinfo {
	int8_t rule; /* column rule applies: style in .style */
	int8_t style;
	int8_t textlike; /* bytes are text: masked in place; else a hit means NULL */
	int8_t scan;	 /* run the detectors */
	int8_t binary;	 /* binary format */
	uint32_t oid;	 /* type */
};

#define PG_MAX_COLUMNS 1664

static struct pg_session *sessions_of(struct sl_worker *w);
static void process_client(struct pg_session *s);
static void charge_buffers(struct pg_session *s);
static void cancel_review_set(struct pg_session *s);
static void process_upstream(struct pg_session *s);
static void up_send_request(struct pg_session *s, struct entry *e, const uint8_t *msg, size_t len);
static void session_close(struct pg_session *s, const char *why);
static void maybe_free(struct pg_session *s);
static void mask_message(struct pg_session *s, uint8_t *msg, size_t total);
static int ents_errtainted(const struct pg_session *s);
static void withheld_text(const uint8_t *msg, size_t total, char *buf, size_t len);
static uint8_t errtaint_of(struct pg_session *s, const struct sl_sql_class *c);
static uint8_t taint_of(struct pg_session *s, const struct sl_sql_class *c);
static int result_rowref(const struct sl_sql_class *c);
static const struct mtable *masked_table_read(const struct pg_session *s,
					      const struct sl_sql_class *c);
static int catalog_ask(struct pg_session *s);

/* Whether the session's masking has column rules (not only detectors). */
static int
column_rules(const struct pg_session *s)
{
	return s->mplan != NULL && sl_mask_plan_column_glob(s->mplan, 0) != NULL;
}
static void message_deadline_check(struct pg_session *s);
static int upauth_result(struct pg_session *s, int r, struct sl_buf *out, const char *err);
static int scram_offload(struct pg_session *s, const uint8_t *msg, size_t len);
static int upinit_msg(struct pg_session *s, uint8_t type, const uint8_t *msg, size_t len);
static int catalog_msg(struct pg_session *s, uint8_t type, const uint8_t *msg, size_t len);
static void stop_login_timer(struct pg_session *s);
static int pool_put(struct pg_session *s, int was_ready);
static int pool_attach(struct pg_session *s, struct pg_upconn *u);
static int pool_claim(struct pg_session *s, struct pg_upconn *u);
static void replay_pooled(struct pg_session *s);
static void start_upstream(struct pg_session *s);
static void upc_free(struct pg_upconn *u);
static void upc_close(struct pg_upconn *u, int logged_in);
static void pool_serve_waiter(struct pg_upconn *u, int usable, int was_prep);
static int upc_param(struct pg_upconn *u, const char *name, const char *value);
static int hold_for_review(struct pg_session *s, const char *sql, size_t len,
			   const struct sl_sql_class *cls, const struct sl_decision *d,
			   const char *trace, const char *span);
static void substitute(struct pg_session *s, uint8_t type, const char *stmt_name,
		       const char *message, int outage);
static void audit_done(struct sl_completion *c);
static char *audit_value(const char *v);

/* ------------------------------------------------------------ helpers */

static void
set_state(struct pg_session *s, enum pg_state st)
{
	/* Allowed moves only go forward, except that any state may close. */
	if (st != PG_ST_CLOSING && st < s->state &&
	    !(s->state == PG_ST_VERIFY && st == PG_ST_AUTH) &&
	    !(s->state == PG_ST_TLS && st == PG_ST_STARTUP)) {
		sl_error("pg session %s: invalid state change %s -> %s", s->pl.id,
			 state_names[s->state], state_names[st]);
		abort();
	}
	s->state = st;
}

static void
cli_send(struct pg_session *s, const void *p, size_t n)
{
	if (!s->cli_open || s->cli.closing)
		return;
	if (sl_stream_queue(&s->cli, p, n) != 0)
		session_close(s, "client output failed");
}

static void
up_send(struct pg_session *s, const void *p, size_t n)
{
	if (!s->up_open || s->upc->st.closing)
		return;
	if (sl_stream_queue(&s->upc->st, p, n) != 0)
		session_close(s, "upstream output failed");
}

static void
up_flush(struct pg_session *s)
{
	if (s->up_open)
		sl_stream_flush(&s->upc->st);
}

/* Sends an error to the client; FATAL closes the session after flushing. */
static void
cli_error(struct pg_session *s, const char *severity, const char *sqlstate, const char *msg,
	  const char *detail)
{
	struct sl_buf b;

	sl_buf_init(&b, 0);
	if (sl_pg_put_error(&b, severity, sqlstate, msg, detail, NULL) == 0)
		cli_send(s, b.data, b.len);
	sl_buf_fini(&b);
	if (s->cli_open)
		sl_stream_flush(&s->cli);
}

static void
fatal(struct pg_session *s, const char *sqlstate, const char *msg)
{
	cli_error(s, "FATAL", sqlstate, msg, NULL);
	session_close(s, msg);
}

static struct entry *
ent_head(struct pg_session *s)
{
	return s->ents_len ? &s->ents[s->ents_head % s->ents_cap] : NULL;
}

static struct entry *
ent_push(struct pg_session *s, uint8_t kind)
{
	struct entry *e;

	if (s->ents_len == s->ents_cap) {
		size_t ncap = s->ents_cap ? s->ents_cap * 2 : 16;
		struct entry *n;

		if (s->ents_cap >= MAX_INFLIGHT)
			return NULL;
		n = calloc(ncap, sizeof(*n));
		if (n == NULL)
			return NULL;
		for (size_t i = 0; i < s->ents_len; i++)
			n[i] = s->ents[(s->ents_head + i) % s->ents_cap];
		free(s->ents);
		s->ents = n;
		s->ents_cap = ncap;
		s->ents_head = 0;
	}
	e = &s->ents[(s->ents_head + s->ents_len) % s->ents_cap];
	memset(e, 0, sizeof(*e));
	e->kind = kind;
	if (kind != ENT_EXEC)
		s->grp_sent++;
	e->start_us = sl_mono_us();
	s->ents_len++;
	return e;
}

static struct entry *
ent_last(struct pg_session *s)
{
	return s->ents_len ? &s->ents[(s->ents_head + s->ents_len - 1) % s->ents_cap] : NULL;
}

static void
ent_pop(struct pg_session *s)
{
	if (s->ents_len == 0)
		return;
	if (s->ents[s->ents_head].copy_gate) {
		s->copy_gate = s->copy_in = s->copy_data = 0;
		s->copy_resume = 1; /* process_upstream resumes the client */
	}
	s->ents_head = (s->ents_head + 1) % s->ents_cap;
	s->ents_len--;
}

/* Whether everything forwarded so far ends at a point where the server will
 * answer without more client input (Query or Sync last). */
static int
ents_synced(struct pg_session *s)
{
	struct entry *last;

	if (s->ents_len == 0)
		return 1;
	last = &s->ents[(s->ents_head + s->ents_len - 1) % s->ents_cap];
	return last->kind == ENT_QUERY || last->kind == ENT_SYNC || last->kind == ENT_FUNC;
}

static json_t *
take_mask_stats(struct pg_session *s)
{
	json_t *o;

	if (!s->mstats_any)
		return NULL;
	o = json_object();
	for (unsigned i = 0; i < SL_MASK_MAX_DETECTORS; i++) {
		const char *n = sl_mask_detector_name(s->gw->maskdb, i);

		if (n && s->mstats.hits[i])
			json_object_set_new(o, n, json_integer(s->mstats.hits[i]));
	}
	if (s->mstats.columns)
		json_object_set_new(o, "columns", json_integer(s->mstats.columns));
	memset(&s->mstats, 0, sizeof(s->mstats));
	s->mstats_any = 0;
	return o;
}

static void
result_record(struct pg_session *s, const struct result *r)
{
	sl_pl_result(s->gw, &s->pl, r->seq, r->trace_id[0] ? r->trace_id : NULL, r->duration_us,
		     r->rows, r->tag[0] ? r->tag : NULL, r->has_sqlstate ? r->sqlstate : NULL,
		     r->error, r->mask_stats);
}

/* Records the results taken so far, in the order the server gave them. Runs
 * after the client's stream is flushed (process_upstream) and before
 * anything else of the session is handled or recorded (process_client,
 * session_close). */
static void
results_record(struct pg_session *s)
{
	for (size_t i = 0; i < s->nresults; i++) {
		struct result *r = &s->results[i];

		result_record(s, r); /* takes mask_stats */
		free(r->error);
	}
	s->nresults = 0;
}

/* Takes the result of a finished statement, to be recorded after the answer
 * is flushed to the client; recorded at once when it cannot be kept. */
static void
ent_finish(struct pg_session *s, struct entry *e, const char *sqlstate, const char *errmsg)
{
	struct result one, *r = &one;

	if (e->blocked)
		return;
	if (s->nresults == s->results_cap) {
		size_t ncap = s->results_cap ? s->results_cap * 2 : 8;
		struct result *n = realloc(s->results, ncap * sizeof(*n));

		if (n != NULL) {
			s->results = n;
			s->results_cap = ncap;
		}
	}
	if (s->nresults < s->results_cap)
		r = &s->results[s->nresults];
	r->seq = e->seq;
	r->duration_us = sl_mono_us() - e->start_us;
	r->rows = e->rows;
	r->mask_stats = take_mask_stats(s);
	r->error = NULL;
	memcpy(r->tag, e->tag, sizeof(r->tag));
	memcpy(r->trace_id, e->trace_id, sizeof(r->trace_id));
	if ((r->has_sqlstate = sqlstate != NULL))
		snprintf(r->sqlstate, sizeof(r->sqlstate), "%s", sqlstate);
	if (r == &one || (errmsg != NULL && (r->error = strdup(errmsg)) == NULL)) {
		/* no room to keep it: recorded now, after the ones before it */
		results_record(s);
		r->error = (char *)errmsg; /* borrowed: result_record does not free it */
		result_record(s, r);
		return;
	}
	s->nresults++;
}

static struct stmt *
stmt_find(struct pg_session *s, const char *name)
{
	return sl_strmap_get(&s->stmts, name);
}

static void
stmt_unref(struct stmt *t)
{
	if (t == NULL || --t->refs > 0)
		return;
	*t->held -= t->cost;
	free(t->name);
	free(t->sql);
	free(t);
}

static void
stmt_remove(struct pg_session *s, const char *name)
{
	stmt_unref(sl_strmap_del(&s->stmts, name));
}

/* Brings the session's share of gw->held up to date with held_bytes (which
 * statements and portals change as they come and go). */
static void
held_sync(struct pg_session *s)
{
	if (s->held_bytes > s->held_charged)
		atomic_fetch_add(&s->gw->held, s->held_bytes - s->held_charged);
	else if (s->held_bytes < s->held_charged)
		atomic_fetch_sub(&s->gw->held, s->held_charged - s->held_bytes);
	s->held_charged = s->held_bytes;
}

/* Whether the session may keep n more bytes; if not, ends it. Bounded per
 * session (SESSION_HELD_MAX) and over all sessions (gateway.max_held_bytes):
 * one token opening many sessions, each holding most of its share, would
 * otherwise hold the gateway's memory. */
static int
held_ok(struct pg_session *s, size_t n)
{
	size_t all;

	if (s->held_bytes > SESSION_HELD_MAX || n > SESSION_HELD_MAX - s->held_bytes) {
		fatal(s, "54000",
		      "sluice: this session's prepared statements and portals exceed 64 MiB; "
		      "close some or reconnect");
		return 0;
	}
	held_sync(s);
	all = atomic_load(&s->gw->held);
	if (all <= s->gw->max_held && n <= s->gw->max_held - all)
		return 1;
	sl_warn("session %s: prepared statements and portals of all sessions hold %zu MiB, "
		"gateway.max_held_bytes; ending this one",
		s->pl.id, all >> 20);
	fatal(s, "53200",
	      "sluice: out of memory for prepared statements (gateway.max_held_bytes is reached "
	      "across sessions); close some or retry later");
	return 0;
}

/* Whether the n bytes at w end in suf (lowercase letters), in any case. */
static int
ends_with(const uint8_t *w, size_t n, const char *suf)
{
	size_t k = strlen(suf);

	if (n < k)
		return 0;
	for (w += n - k; *suf; w++, suf++)
		if ((*w | 0x20) != (uint8_t)*suf)
			return 0;
	return 1;
}

/* Whether the n bytes at w hold key (lowercase letters), in any case. */
static int
holds(const uint8_t *w, size_t n, const char *key)
{
	size_t k = strlen(key);

	for (size_t i = 0; i + k <= n; i++)
		if ((w[i] | 0x20) == (uint8_t)key[0] && ends_with(w, i + k, key))
			return 1;
	return 0;
}

/* A word that holds a key no ordinary word holds: password_hash,
 * x_api_token_v2, client_credentials. */
static int
names_strong_key(const uint8_t *w, size_t n)
{
	static const char *const keys[] = {"passw", "passphrase", "pwd",	  "secret",
					   "token", "credential", "authorization"};

	for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++)
		if (holds(w, n, keys[k]))
			return 1;
	return 0;
}

/* A word that ends in a key that ordinary words also hold (passenger,
 * keyboard): only at its end, or before a plural s (api_key, apikeys,
 * db_pass). */
static int
names_weak_key(const uint8_t *w, size_t n)
{
	if ((w[n - 1] | 0x20) == 's' && ends_with(w, n, "pass"))
		return 1;
	if ((w[n - 1] | 0x20) == 's')
		n--;
	return n >= 3 && ends_with(w, n, "key");
}

/* Whether a statement text names a secret: a word (letters, digits, _ and
 * $; in a name, a quoted name, a literal or a comment alike) that holds one
 * of the keys the secret detector knows — password (passw), passphrase,
 * pwd, secret, token, credential, authorization — or ends in pass or key
 * (or keys), or a U&"..." name (its escapes can spell any of them). The
 * audit trail records the Bind parameters of a statement, and the value
 * bound by `SET password = $1` is the secret itself: such a statement's
 * parameters are not recorded. The test is over the whole text on purpose
 * (`WHERE api_token = $1`, `VALUES ($1)` into a column listed earlier):
 * it withholds more than needed (`WHERE key = $1`), never less. */
static int
names_secret(const char *sql, size_t len)
{
	/* word bytes: letters, digits, _, $ and every byte of a multibyte
	 * character */
	static const uint8_t word[256] = {
		['0' ... '9'] = 1, ['A' ... 'Z'] = 1, ['a' ... 'z'] = 1,
		['_'] = 1,	   ['$'] = 1,	      [0x80 ... 0xff] = 1,
	};
	const uint8_t *p = (const uint8_t *)sql;
	size_t i = 0;

	while (i < len) {
		size_t w, n;

		while (i < len && !word[p[i]])
			i++;
		w = i;
		while (i < len && word[p[i]])
			i++;
		n = i - w;
		if (n == 1 && (p[w] | 0x20) == 'u' && i + 1 < len && p[i] == '&' &&
		    (p[i + 1] == '"' || p[i + 1] == '\''))
			return 1; /* U&"..." or U&'...' */
		if (n >= 3 && (names_strong_key(p + w, n) || names_weak_key(p + w, n)))
			return 1;
	}
	return 0;
}

/* names_secret, remembered for the last text: a client that parses the
 * same unnamed statement before each execution asks it every time. */
static int
secret_cached(struct pg_session *s, const char *sql, size_t len)
{
	if (s->secret_text == NULL || s->secret_len != len ||
	    memcmp(s->secret_text, sql, len) != 0) {
		char *t = len <= 4096 ? malloc(len + 1) : NULL;

		free(s->secret_text);
		s->secret_text = t;
		s->secret_len = len;
		s->secret_was = names_secret(sql, len);
		if (t != NULL)
			memcpy(t, sql, len);
	}
	return s->secret_was;
}

/* Returns a new statement (one reference), or NULL without memory. */
static struct stmt *
stmt_new(struct pg_session *s, const char *name, const char *sql, size_t len, uint32_t kinds)
{
	struct stmt *t = calloc(1, sizeof(*t));

	if (t == NULL)
		return NULL;
	t->refs = 1;
	t->name = strdup(name);
	t->sql = malloc(len + 1);
	if (t->name == NULL || t->sql == NULL) {
		free(t->name);
		free(t->sql);
		free(t);
		return NULL;
	}
	t->held = &s->held_bytes;
	t->cost = sizeof(*t) + strlen(name) + len;
	s->held_bytes += t->cost;
	memcpy(t->sql, sql, len);
	t->sql[len] = '\0';
	t->sqllen = len;
	t->kinds = kinds;
	t->secret = secret_cached(s, sql, len);
	return t;
}

static void portal_destroy(struct portal *p);
static void portal_remove(struct pg_session *s, const char *name);
static int portal_add(struct pg_session *s, struct portal *p);

static const char *
op_name(const struct stmt_op *op)
{
	if (op->kind == OP_BIND)
		return op->portal->name;
	return op->st != NULL ? op->st->name : op->name;
}

/* Statements and portals have separate names. */
static struct sl_strmap *
op_map(struct pg_session *s, const struct stmt_op *op)
{
	return op->kind == OP_BIND || op->kind == OP_PCLOSE ? &s->pnames : &s->opnames;
}

/* Queues a change for the server to confirm; takes st's reference and the
 * portal (OP_BIND), also on failure. */
static int
op_push(struct pg_session *s, uint8_t kind, const char *name, struct stmt *st,
	struct portal *portal, uint64_t grp, int poison_on_fail)
{
	struct stmt_op *op;

	if (s->nops >= MAX_STMT_OPS || (op = calloc(1, sizeof(*op))) == NULL) {
		stmt_unref(st);
		portal_destroy(portal);
		return SL_ENOMEM;
	}
	op->kind = kind;
	op->grp = grp;
	op->poison_on_fail = (uint8_t)poison_on_fail;
	op->st = st;
	op->portal = portal;
	if ((kind == OP_CLOSE || kind == OP_PCLOSE) && (op->name = strdup(name)) == NULL) {
		free(op);
		return SL_ENOMEM;
	}
	if (sl_strmap_put(op_map(s, op), op_name(op), op, (void **)&op->prev_same) != 0) {
		stmt_unref(op->st);
		portal_destroy(op->portal);
		free(op->name);
		free(op);
		return SL_ENOMEM;
	}
	if (op->prev_same != NULL)
		op->prev_same->next_same = op;
	if (s->ops == NULL)
		s->ops_tail = &s->ops;
	*s->ops_tail = op;
	s->ops_tail = &op->next;
	s->nops++;
	return 0;
}

/* Unlinks op (pp points at the link to it) and applies it if it took effect. */
static void
op_resolve(struct pg_session *s, struct stmt_op **pp, int ok)
{
	struct stmt_op *op = *pp;

	*pp = op->next;
	if (*pp == NULL)
		s->ops_tail = pp;
	s->nops--;
	/* out of its name's chain; the map keeps the newest one left */
	if (op->next_same != NULL)
		op->next_same->prev_same = op->prev_same;
	else if (op->prev_same != NULL)
		sl_strmap_put(op_map(s, op), op_name(op->prev_same), op->prev_same, NULL);
	else
		sl_strmap_del(op_map(s, op), op_name(op));
	if (op->prev_same != NULL)
		op->prev_same->next_same = op->next_same;
	if (op->kind == OP_CLOSE && ok) {
		stmt_remove(s, op->name);
	} else if (op->kind == OP_PCLOSE && ok) {
		portal_remove(s, op->name);
	} else if (op->kind == OP_BIND && ok) {
		op->portal->grp = op->grp;
		if (portal_add(s, op->portal) == 0)
			op->portal = NULL;
		else /* the server has a portal sluice cannot track */
			fatal(s, "53200", "sluice: out of memory");
	} else if ((op->kind == OP_PARSE || op->kind == OP_PREPARE) && (ok || op->poison_on_fail)) {
		/* A failed multi-statement PREPARE may or may not have run:
		 * the name is unusable until closed. */
		struct stmt *old;

		op->st->unknown = !ok;
		if (sl_strmap_put(&s->stmts, op->st->name, op->st, (void **)&old) == 0) {
			stmt_unref(old); /* the definition it replaces */
			op->st = NULL;
		} /* else not known: using it is refused */
	}
	stmt_unref(op->st);
	portal_destroy(op->portal);
	free(op->name);
	free(op);
}

/* ParseComplete, BindComplete or CloseComplete: the oldest Parse, Bind or
 * Close took effect. Returns -1 when the server answered something never
 * sent. */
static int
op_answered(struct pg_session *s, uint8_t type)
{
	struct stmt_op **pp = &s->ops;
	uint8_t k;

	while (*pp != NULL && (*pp)->kind == OP_PREPARE)
		pp = &(*pp)->next;
	if (*pp == NULL)
		return -1;
	k = (*pp)->kind;
	if (!(type == '1'   ? k == OP_PARSE
	      : type == '2' ? k == OP_BIND
			    : k == OP_CLOSE || k == OP_PCLOSE))
		return -1;
	op_resolve(s, pp, 1);
	return 0;
}

/* The group being answered failed: its unanswered Parses and Closes were
 * refused or skipped (its PREPAREs are settled at ReadyForQuery). */
static void
ops_group_failed(struct pg_session *s)
{
	struct stmt_op **pp = &s->ops;

	s->grp_failed = 1;
	while (*pp != NULL && (*pp)->grp == s->grp_done) {
		if ((*pp)->kind == OP_PREPARE)
			pp = &(*pp)->next;
		else
			op_resolve(s, pp, 0);
	}
}

/* Notes a Describe sent upstream (own: sluice's). */
static int
dq_push(struct pg_session *s, int own)
{
	if (s->dq_len == s->dq_cap) {
		size_t ncap = s->dq_cap ? s->dq_cap * 2 : 8;
		uint64_t *n;

		if (s->dq_cap >= MAX_INFLIGHT || (n = malloc(ncap * sizeof(*n))) == NULL)
			return -1;
		for (size_t i = 0; i < s->dq_len; i++)
			n[i] = s->dq[(s->dq_head + i) % s->dq_cap];
		free(s->dq);
		s->dq = n;
		s->dq_cap = ncap;
		s->dq_head = 0;
	}
	s->dq[(s->dq_head + s->dq_len) % s->dq_cap] = s->grp_sent << 1 | (uint64_t)(own != 0);
	s->dq_len++;
	return 0;
}

/* Takes the oldest pending Describe: 1 if it was sluice's own, 0 if the
 * client's, -1 if none is pending. */
static int
dq_pop(struct pg_session *s)
{
	uint64_t v;

	if (s->dq_len == 0)
		return -1;
	v = s->dq[s->dq_head];
	s->dq_head = (s->dq_head + 1) % s->dq_cap;
	s->dq_len--;
	return (int)(v & 1);
}

/* At a group's ReadyForQuery: its Describes still pending were skipped. */
static void
dq_group_done(struct pg_session *s)
{
	while (s->dq_len > 0 && (s->dq[s->dq_head] >> 1) < s->grp_done) {
		s->dq_head = (s->dq_head + 1) % s->dq_cap;
		s->dq_len--;
	}
}

/* ReadyForQuery: the group is over; settles what it left. */
static void
ops_group_done(struct pg_session *s)
{
	while (s->ops != NULL && s->ops->grp == s->grp_done)
		op_resolve(s, &s->ops, s->ops->kind == OP_PREPARE && !s->grp_failed);
	s->grp_done++;
	s->grp_failed = 0;
	dq_group_done(s);
}

/* Whether a change of name (map: opnames or pnames) awaits the server's
 * answer. If it was sent in this sync group, *op is the newest such change
 * (later messages of the group see it); if in an earlier one, *op is NULL
 * and *wait is set (that answer decides). */
static int
op_pending(struct pg_session *s, struct sl_strmap *map, const char *name, int *wait,
	   struct stmt_op **op)
{
	struct stmt_op *last = sl_strmap_get(map, name);

	*op = NULL;
	if (last == NULL)
		return 0;
	if (last->grp != s->grp_sent)
		*wait = 1;
	else
		*op = last;
	return 1;
}

/*
 * The statement a name means to the server at the point the client's next
 * message is processed, or NULL if none. Sets *wait when that depends on an
 * answer from an earlier sync group the server has not given yet.
 */
static struct stmt *
stmt_lookup(struct pg_session *s, const char *name, int *wait)
{
	struct stmt_op *op;

	if (!op_pending(s, &s->opnames, name, wait, &op))
		return stmt_find(s, name);
	return op == NULL || op->kind == OP_CLOSE ? NULL : op->st;
}

static struct portal *
portal_find(struct pg_session *s, const char *name)
{
	return sl_strmap_get(&s->portals, name);
}

static void
portal_destroy(struct portal *p)
{
	if (p == NULL)
		return;
	*p->held -= p->cost;
	stmt_unref(p->st);
	if (p->params != p->params_in)
		free(p->params);
	if (p->pbin != p->pbin_in)
		free(p->pbin);
	free(p->name);
	free(p);
}

static void
portal_free(struct pg_session *s, struct portal *p)
{
	if (p->prev != NULL)
		p->prev->next = p->next;
	else
		s->portals_old = p->next;
	if (p->next != NULL)
		p->next->prev = p->prev;
	else
		s->portals_new = p->prev;
	portal_destroy(p);
}

/* What a portal name means to the server at the point the client's next
 * message is processed (see stmt_lookup). */
static struct portal *
portal_lookup(struct pg_session *s, const char *name, int *wait)
{
	struct stmt_op *op;

	if (!op_pending(s, &s->pnames, name, wait, &op))
		return portal_find(s, name);
	return op == NULL || op->kind == OP_PCLOSE ? NULL : op->portal;
}

static void
portal_remove(struct pg_session *s, const char *name)
{
	struct portal *p = sl_strmap_del(&s->portals, name);

	if (p != NULL)
		portal_free(s, p);
}

/* Adds a portal the server confirmed, in place of one of the same name
 * (the unnamed portal: a Bind replaces it). */
static int
portal_add(struct pg_session *s, struct portal *p)
{
	struct portal *old;

	if (sl_strmap_put(&s->portals, p->name, p, (void **)&old) != 0)
		return SL_ENOMEM;
	if (old != NULL)
		portal_free(s, old);
	p->prev = s->portals_new;
	p->next = NULL;
	if (s->portals_new != NULL)
		s->portals_new->next = p;
	else
		s->portals_old = p;
	s->portals_new = p;
	return 0;
}

/* The server ended the transaction that answered sync group grp: every
 * portal bound up to then is gone there (later groups' Binds are not). */
static void
portals_tx_over(struct pg_session *s, uint64_t grp)
{
	while (s->portals_old != NULL && s->portals_old->grp <= grp)
		portal_remove(s, s->portals_old->name);
}

static void
blocked_clear(struct pg_session *s)
{
	while (s->blocked) {
		struct blocked_msg *b = s->blocked;

		s->blocked = b->next;
		free(b);
	}
}

/* ------------------------------------------------------------ cancel map */

static SSL_CTX *up_verify_ctx(const struct pg_session *s);

struct cancel_ent {
	uint32_t pid, key;
	uint32_t up_pid, up_key;
	struct sockaddr_storage addr;
	SSL_CTX *tls;	 /* the connection's upstream TLS (NULL: plain) */
	char host[256];	 /* tls: verify-full: the name its certificate must carry */
	char review[40]; /* the review its held statement waits for, if any */
	/* with review: nothing of the session runs on the server (the held
	 * statement is all it waits for): a cancel is not forwarded */
	int review_alone;
	int forwarded; /* a cancel was forwarded to the session's upstream */
	struct cancel_ent *next, **pprev;
};

/* Cancel keys are looked up by pid in one of SL_CANCEL_BUCKETS lists (our
 * pids are random): a CancelRequest, which needs no login, never walks
 * every session while holding the lock that logins and closes take, and a
 * session leaves the map in O(1). */
static int cancel_unregister(struct pg_session *s);

static struct cancel_ent **
cancel_bucket(struct sl_gw *gw, uint32_t pid)
{
	return &gw->cancel_map[pid % SL_CANCEL_BUCKETS];
}

static void
cancel_register(struct pg_session *s)
{
	struct sl_gw *gw = s->gw;
	struct cancel_ent *c, **b;

	cancel_unregister(s); /* one entry per session */
	if ((c = calloc(1, sizeof(*c))) == NULL)
		return;
	c->pid = s->our_pid;
	c->key = s->our_key;
	c->up_pid = s->up_pid;
	c->up_key = s->up_key;
	c->addr = s->up_addr;
	if (s->pl.conn->tls != NULL && strcmp(s->pl.conn->tls, "disable") != 0) {
		int port;

		c->tls = up_verify_ctx(s);
		if (c->tls == NULL)
			c->tls = gw->up_tls;
		else if (sl_net_split(s->pl.conn->target, c->host, sizeof(c->host), &port) != 0)
			c->host[0] = '\0'; /* cannot happen: the session connected with it */
	}
	pthread_mutex_lock(&gw->cancel_mu);
	if (gw->cancel_map == NULL &&
	    (gw->cancel_map = calloc(SL_CANCEL_BUCKETS, sizeof(*gw->cancel_map))) == NULL) {
		pthread_mutex_unlock(&gw->cancel_mu);
		free(c); /* no cancel for this session; it works otherwise */
		return;
	}
	b = cancel_bucket(gw, c->pid);
	c->next = *b;
	if (c->next)
		c->next->pprev = &c->next;
	c->pprev = b;
	*b = c;
	s->cancel = c;
	pthread_mutex_unlock(&gw->cancel_mu);
}

/* Takes the session out of the cancel map. Returns whether a cancel was
 * forwarded to its upstream meanwhile: one may still be on its way. */
static int
cancel_unregister(struct pg_session *s)
{
	struct sl_gw *gw = s->gw;
	struct cancel_ent *c = s->cancel;
	int fwd;

	if (c == NULL)
		return 0;
	pthread_mutex_lock(&gw->cancel_mu);
	*c->pprev = c->next;
	if (c->next)
		c->next->pprev = c->pprev;
	fwd = c->forwarded;
	pthread_mutex_unlock(&gw->cancel_mu);
	s->cancel = NULL;
	free(c);
	return fwd;
}

/*
 * One forwarded cancel: a connection to the upstream that sends the
 * CancelRequest and ends when the server closes it, or after CANCEL_MS
 * whatever happens (an upstream that does not answer must not keep a
 * worker's loop, and so a shutdown, waiting). To an upstream reached over
 * TLS the cancel goes over TLS too, the way libpq 17 sends it (the server
 * takes a CancelRequest after SSLRequest): the upstream's cancel key never
 * crosses the network in the clear, and a server that refuses TLS, or
 * (verify-full) cannot prove its name, gets nothing.
 */
#define CANCEL_MS 5000

struct cancel_conn {
	struct sl_stream st;
	uv_timer_t timer;
	struct sl_buf in;
	SSL_CTX *ctx; /* NULL: plain */
	char host[256];
	uint8_t pkt[16];
	int open; /* handles not closed yet */
	int done;
};

static void
cc_release(struct cancel_conn *cc)
{
	if (--cc->open == 0) {
		sl_buf_fini(&cc->in);
		free(cc);
	}
}

static void
cc_timer_closed(uv_handle_t *h)
{
	cc_release(h->data);
}

static void
cc_finish(struct cancel_conn *cc)
{
	if (cc->done)
		return;
	cc->done = 1;
	uv_timer_stop(&cc->timer);
	uv_close((uv_handle_t *)&cc->timer, cc_timer_closed);
	sl_stream_close(&cc->st);
}

static void
cc_timeout(uv_timer_t *t)
{
	cc_finish(t->data);
}

static void
cc_send(struct cancel_conn *cc)
{
	if (sl_stream_queue(&cc->st, cc->pkt, sizeof(cc->pkt)) != 0 ||
	    sl_stream_flush(&cc->st) != 0)
		cc_finish(cc);
}

static void
cc_read(struct sl_stream *st, size_t n)
{
	struct cancel_conn *cc = st->owner;

	(void)n;
	if (cc->ctx == NULL || st->tls) { /* nothing is expected back; the server closes */
		cc->in.len = cc->in.off = 0;
		return;
	}
	if (sl_buf_unread(&cc->in) != 1 || *sl_buf_head(&cc->in) != 'S') {
		cc_finish(cc);
		return;
	}
	sl_buf_consume(&cc->in, 1);
	if (sl_stream_tls_client(st, cc->ctx, cc->host[0] ? cc->host : NULL) != 0)
		cc_finish(cc);
}

static void
cc_tls(struct sl_stream *st, int status)
{
	struct cancel_conn *cc = st->owner;

	if (status != 0)
		cc_finish(cc);
	else
		cc_send(cc);
}

static void
cc_eof(struct sl_stream *st, int err)
{
	(void)err;
	cc_finish(st->owner);
}

static void
cc_connect(struct sl_stream *st, int status)
{
	struct cancel_conn *cc = st->owner;
	struct sl_buf b;
	int r;

	if (status != 0 || sl_stream_read_start(st) != 0) {
		cc_finish(cc);
		return;
	}
	if (cc->ctx == NULL) {
		cc_send(cc);
		return;
	}
	sl_buf_init(&b, 0);
	r = sl_pg_put_ssl_request(&b);
	r = r ? r : sl_stream_queue(st, b.data, b.len);
	sl_buf_fini(&b);
	if (r != 0 || sl_stream_flush(st) != 0)
		cc_finish(cc);
}

static void
cc_closed(struct sl_stream *st)
{
	cc_release(st->owner);
}

static const struct sl_stream_ops cancel_ops = {
	.on_read = cc_read,
	.on_eof = cc_eof,
	.on_tls = cc_tls,
	.on_connect = cc_connect,
	.on_close = cc_closed,
};

/* Forwards a CancelRequest for our (pid, key) to the matching upstream. */
static void
cancel_forward(struct sl_worker *w, uint32_t pid, uint32_t key)
{
	struct sl_gw *gw = w->gw;
	struct cancel_conn *cc;
	struct cancel_ent found;
	int have = 0;
	struct sl_buf b;

	pthread_mutex_lock(&gw->cancel_mu);
	for (struct cancel_ent *c = gw->cancel_map ? *cancel_bucket(gw, pid) : NULL; c;
	     c = c->next) {
		if (c->pid == pid && sl_memeq_ct(&c->key, &key, sizeof(key))) {
			found = *c;
			have = 1;
			c->forwarded |= !(c->review[0] != '\0' && c->review_alone);
			break;
		}
	}
	pthread_mutex_unlock(&gw->cancel_mu);
	/* A statement held for approval has not reached the server: the
	 * cancel withdraws its review (the client gave up on it; approved
	 * later it would still run). */
	if (have && found.review[0] != '\0' && gw->review != NULL)
		sl_review_cancel_why(gw->review, found.review,
				     "the client cancelled the statement");
	/* Forwarded, it would reach the server after the client has its
	 * "approval cancelled" and has sent its next statement (or, the
	 * session over, after another session took the connection): it would
	 * cancel that one. */
	if (have && found.review[0] != '\0' && found.review_alone)
		return;
	if (!have || (cc = calloc(1, sizeof(*cc))) == NULL)
		return;
	sl_buf_init(&b, 0);
	if (sl_pg_put_cancel(&b, found.up_pid, found.up_key) != 0 || b.len != sizeof(cc->pkt)) {
		sl_buf_fini(&b);
		free(cc);
		return;
	}
	memcpy(cc->pkt, b.data, sizeof(cc->pkt));
	sl_buf_fini(&b);
	sl_buf_init(&cc->in, 1024);
	cc->ctx = found.tls;
	memcpy(cc->host, found.host, sizeof(cc->host));
	if (sl_stream_init(&cc->st, &w->loop, &cancel_ops, cc, &cc->in) != 0) {
		sl_buf_fini(&cc->in);
		free(cc);
		return;
	}
	cc->open = 2;
	uv_timer_init(&w->loop, &cc->timer);
	cc->timer.data = cc;
	uv_timer_start(&cc->timer, cc_timeout, CANCEL_MS, 0);
	if (sl_stream_connect(&cc->st, (const struct sockaddr *)&found.addr) != 0)
		cc_finish(cc);
}

/* ------------------------------------------------------------ lifecycle */

static void
session_free(struct pg_session *s)
{
	struct sl_worker *w = s->w;

	if (s->prev)
		s->prev->next = s->next;
	else
		w->sessions = s->next;
	if (s->next)
		s->next->prev = s->prev;
	w->nsessions--;
	if (s->admitted)
		atomic_fetch_sub(&s->gw->nclients, 1);
	if (s->over)
		atomic_fetch_sub(&s->gw->nover, 1);
	if (s->logging_in)
		sl_gw_login_done(s->gw, &s->login_key);
	cancel_unregister(s);
	if (s->charged)
		atomic_fetch_sub(&s->gw->buffered, s->charged);
	if (s->held_charged)
		atomic_fetch_sub(&s->gw->held, s->held_charged);
	sl_buf_fini(&s->cin);
	free(s->client_user);
	free(s->client_db);
	for (size_t i = 0; i < s->nfwd; i++) {
		free(s->fwd_keys[i]);
		free(s->fwd_vals[i]);
	}
	free(s->fwd_keys);
	free(s->fwd_vals);
	sl_pg_upauth_free(s->upauth);
	if (s->password) {
		OPENSSL_cleanse(s->password, strlen(s->password));
		free(s->password);
	}
	if (s->verify_token) {
		OPENSSL_cleanse(s->verify_token, s->verify_len);
		free(s->verify_token);
	}
	results_record(s); /* none left: session_close took them */
	free(s->results);
	free(s->ents);
	free(s->dq);
	free(s->mtables);
	while (s->ops)
		op_resolve(s, &s->ops, 0);
	for (size_t i = 0; i < s->stmts.cap; i++)
		if (s->stmts.slots[i].key != NULL)
			stmt_unref(s->stmts.slots[i].val);
	sl_strmap_fini(&s->stmts);
	sl_strmap_fini(&s->opnames);
	sl_strmap_fini(&s->pnames);
	while (s->portals_old)
		portal_remove(s, s->portals_old->name);
	sl_strmap_fini(&s->portals);
	blocked_clear(s);
	free(s->cols);
	free(s->catcols);
	free(s->offs);
	free(s->lens);
	sl_buf_fini(&s->mout);
	sl_buf_fini(&s->pshown);
	free(s->rparams);
	free(s->secret_text);
	sl_buf_fini(&s->mval);
	sl_pl_session_fini(&s->pl);
	free(s);
}

static void
maybe_free(struct pg_session *s)
{
	if (s->state != PG_ST_CLOSING || s->cli_open || s->up_open || s->pending > 0 ||
	    s->in_process || s->freeing || s->timer_open)
		return;
	s->freeing = 1;
	session_free(s);
}

static void
timer_closed(uv_handle_t *h)
{
	struct pg_session *s = h->data;

	s->timer_open = 0;
	maybe_free(s);
}

static void
stop_login_timer(struct pg_session *s)
{
	if (s->timer_open && !uv_is_closing((uv_handle_t *)&s->login_timer))
		uv_close((uv_handle_t *)&s->login_timer, timer_closed);
}

static void
login_timeout(uv_timer_t *t)
{
	struct pg_session *s = t->data;

	if (s->state == PG_ST_READY || s->state == PG_ST_CLOSING)
		return;
	s->in_process = 1;
	if (s->pl.authenticated || s->state >= PG_ST_AUTH)
		sl_pl_auth_failed(s->gw, &s->pl, s->client_user, "login timed out");
	fatal(s, "08006", "sluice: login timed out");
	s->in_process = 0;
	maybe_free(s);
}

static void
session_close(struct pg_session *s, const char *why)
{
	int was_ready = s->state == PG_ST_READY;

	char why2[256];

	if (s->state == PG_ST_CLOSING)
		return;
	results_record(s);
	if (s->upc_wait != NULL) {
		s->upc_wait->waiter = NULL;
		s->upc_wait = NULL;
	}
	if (was_ready && s->up_open && s->up_inited && s->ents_len > 0) {
		/* A statement is running upstream for a client that is gone (an
		 * agent's tool call timed out, say): the server would go on
		 * with it until it tries to send, for as long as it runs. Cancel
		 * it, the way the client itself could have; the connection is
		 * closed below, never pooled. */
		cancel_forward(s->w, s->our_pid, s->our_key);
		snprintf(why2, sizeof(why2), "%s; the statement it left running was cancelled",
			 why);
		why = why2;
	}
	if (s->pl.authenticated)
		sl_pl_session_closed(s->gw, &s->pl, why);
	sl_debug("pg session %s closing: %s", s->pl.id, why);
	set_state(s, PG_ST_CLOSING);
	stop_login_timer(s);
	if (s->review_id[0] && s->gw->review)
		sl_review_cancel(s->gw->review, s->review_id); /* its callback still runs */
	if (s->cli_open) {
		sl_stream_flush(&s->cli);
		sl_stream_close(&s->cli);
	}
	/* Out of the cancel map before the upstream may go to the pool: a
	 * cancel forwarded before could reach the server once another session
	 * runs there, so that connection is closed instead. */
	if (cancel_unregister(s))
		s->reusable = 0;
	if (s->up_open && pool_put(s, was_ready) == 0)
		s->up_open = 0; /* the pool has it now */
	if (s->up_open)
		upc_close(s->upc, s->up_inited);
	maybe_free(s);
}

static void
cli_closed(struct sl_stream *st)
{
	struct pg_session *s = st->owner;

	s->cli_open = 0;
	maybe_free(s);
}

static void
up_closed(struct sl_stream *st)
{
	struct pg_session *s = st->owner;

	s->up_open = 0;
	upc_free(s->upc);
	s->upc = NULL;
	maybe_free(s);
}

/* ------------------------------------------------------------ upstream login */

static void up_connect_cb(struct sl_stream *st, int status);
static void up_tls_cb(struct sl_stream *st, int status);
static void up_read_cb(struct sl_stream *st, size_t n);
static void up_eof_cb(struct sl_stream *st, int err);
static void up_drain_cb(struct sl_stream *st);

static const struct sl_stream_ops up_ops = {
	.on_read = up_read_cb,
	.on_eof = up_eof_cb,
	.on_drain = up_drain_cb,
	.on_tls = up_tls_cb,
	.on_connect = up_connect_cb,
	.on_close = up_closed,
};

/* ------------------------------------------------------------ upstream pool */

/* What made the upstream session: database, user, forwarded parameters. */
static char *
upc_key(const struct pg_session *s, size_t *lenp)
{
	const struct sl_cfg_connection *c = s->pl.conn;
	const char *db = c->database ? c->database : (s->client_db ? s->client_db : c->name);
	const char *user = c->user ? c->user : c->name;
	size_t n = strlen(db) + strlen(user) + 2, o = 0;
	char *k;

	for (size_t i = 0; i < s->nfwd; i++)
		n += strlen(s->fwd_keys[i]) + strlen(s->fwd_vals[i]) + 2;
	/* application_name's value is set on the connection when it differs
	 * (pool_claim): a traceparent per connection must not defeat reuse */
	k = malloc(n);
	if (k == NULL)
		return NULL;
#define PUT(str)                                                                                   \
	do {                                                                                       \
		size_t l_ = strlen(str) + 1;                                                       \
		memcpy(k + o, (str), l_);                                                          \
		o += l_;                                                                           \
	} while (0)
	PUT(db);
	PUT(user);
	for (size_t i = 0; i < s->nfwd; i++) {
		PUT(s->fwd_keys[i]);
		PUT(strcasecmp(s->fwd_keys[i], "application_name") == 0 ? "" : s->fwd_vals[i]);
	}
#undef PUT
	*lenp = o;
	return k;
}

/* A new upstream connection for s (not connected yet). */
static struct pg_upconn *
upc_new(struct pg_session *s)
{
	struct pg_upconn *u = calloc(1, sizeof(*u));

	if (u == NULL)
		return NULL;
	u->w = s->w;
	u->conn = s->pl.conn;
	u->born_us = sl_mono_us();
	u->key = upc_key(s, &u->keylen);
	sl_buf_init(&u->in, s->gw->max_message + (128u << 10));
	if (u->key == NULL || sl_stream_init(&u->st, &s->w->loop, &up_ops, s, &u->in) != 0) {
		free(u->key);
		sl_buf_fini(&u->in);
		free(u);
		return NULL;
	}
	return u;
}

/* Frees u once its stream is closed. */
static void
upc_free(struct pg_upconn *u)
{
	if (u == NULL)
		return;
	for (size_t i = 0; i < u->nparams; i++) {
		free(u->pnames[i]);
		free(u->pvals[i]);
	}
	free(u->pnames);
	free(u->pvals);
	free(u->key);
	sl_buf_fini(&u->in);
	free(u);
}

/* Closes u's stream, saying Terminate first when it is logged in and can
 * still send. */
static void
upc_close(struct pg_upconn *u, int logged_in)
{
	static const uint8_t terminate[5] = {'X', 0, 0, 0, 4};

	if (logged_in && !u->st.closing && !u->st.eof && u->st.tls == u->st.tls_ready) {
		sl_stream_queue(&u->st, terminate, sizeof(terminate));
		sl_stream_flush(&u->st);
	}
	sl_stream_close(&u->st);
}

/* Whether the server reports a read_only connection's session as no
 * longer read-only: something (a function calling set_config, say) turned
 * default_transaction_read_only off. */
static int
ro_broken(const struct sl_cfg_connection *c, const char *name, const char *value)
{
	return c != NULL && c->read_only &&
	       strcasecmp(name, "default_transaction_read_only") == 0 && strcmp(value, "on") != 0;
}

/* Records a ParameterStatus; a connection whose record failed is not reused
 * (its next session would be told stale settings). */
static int
upc_param(struct pg_upconn *u, const char *name, const char *value)
{
	char *v, **pn, **pv;
	size_t i;

	for (i = 0; i < u->nparams; i++)
		if (strcmp(u->pnames[i], name) == 0)
			break;
	if (i == u->nparams && i >= 64) {
		u->noreuse = 1; /* PostgreSQL reports about 15 */
		return SL_ETOOBIG;
	}
	v = strdup(value);
	if (v == NULL)
		goto oom;
	if (i < u->nparams) {
		free(u->pvals[i]);
		u->pvals[i] = v;
		return 0;
	}
	pn = realloc(u->pnames, (i + 1) * sizeof(*pn));
	if (pn)
		u->pnames = pn;
	pv = realloc(u->pvals, (i + 1) * sizeof(*pv));
	if (pv)
		u->pvals = pv;
	if (pn == NULL || pv == NULL || (u->pnames[i] = strdup(name)) == NULL) {
		free(v);
		goto oom;
	}
	u->pvals[i] = v;
	u->nparams++;
	return 0;
oom:
	u->noreuse = 1;
	return SL_ENOMEM;
}

static void
pool_unlink(struct pg_upconn *u)
{
	struct sl_worker *w = u->w;

	if (u->prev)
		u->prev->next = u->next;
	else
		w->pg_pool = u->next;
	if (u->next)
		u->next->prev = u->prev;
	u->next = u->prev = NULL;
}

/* Takes u out of the pool and closes it (Terminate first when it can). */
static void
pool_drop(struct pg_upconn *u)
{
	if (u->st.closing)
		return;
	pool_unlink(u);
	pool_serve_waiter(u, 0, 0);
	upc_close(u, 1);
}

/* The session waiting for u gets it — usable: u is idle, its reset or SET
 * answered (was_prep: the SET was this session's) — or logs in afresh. */
static void
pool_serve_waiter(struct pg_upconn *u, int usable, int was_prep)
{
	struct pg_session *s = u->waiter;
	int r = -1;

	if (s == NULL)
		return;
	u->waiter = NULL;
	s->upc_wait = NULL;
	s->in_process = 1;
	if (usable)
		r = was_prep ? pool_attach(s, u) : pool_claim(s, u);
	if (r < 0)
		start_upstream(s);
	else if (r == 0)
		replay_pooled(s);
	s->in_process = 0;
	maybe_free(s);
}

/* Answers to DISCARD ALL, and anything a pooled connection hears. */
static void
pool_read_cb(struct sl_stream *st, size_t n)
{
	struct pg_upconn *u = st->owner;
	int was_prep;

	(void)n;
	while (!u->st.closing) {
		uint8_t type;
		size_t total;
		const uint8_t *msg = sl_buf_head(&u->in);
		const char *k, *v;
		int r = sl_pg_frame(msg, sl_buf_unread(&u->in), u->w->gw->max_message, &type,
				    &total);

		if (r == SL_AGAIN)
			return;
		switch (r != 0 ? 0 : type) {
		case 'S':
			if (sl_pg_parse_param_status(msg, total, &k, &v) != 0 ||
			    ro_broken(u->conn, k, v) || upc_param(u, k, v) != 0)
				goto drop;
			break;
		case 'N': /* a notice, or a notification the last session */
		case 'A': /* listened for: nobody's now */
			break;
		case 'C':
			if (!(u->state == UC_RESET && total == 17 &&
			      memcmp(msg + 5, "DISCARD ALL", 12) == 0) &&
			    !(u->state == UC_PREP && total == 9 && memcmp(msg + 5, "SET", 4) == 0))
				goto drop;
			u->answered = 1;
			break;
		case 'Z':
			if ((u->state != UC_RESET && u->state != UC_PREP) || !u->answered ||
			    total != 6 || msg[5] != 'I')
				goto drop;
			was_prep = u->state == UC_PREP;
			u->since_us = sl_mono_us();
			u->state = UC_IDLE;
			sl_buf_consume(&u->in, total);
			if (u->waiter != NULL) {
				pool_serve_waiter(u, sl_buf_unread(&u->in) == 0, was_prep);
				return;
			}
			continue;
		default: /* an error (the reset failed, the server is shutting down) */
			goto drop;
		}
		sl_buf_consume(&u->in, total);
	}
	return;
drop:
	pool_drop(u);
}

static void
pool_eof_cb(struct sl_stream *st, int err)
{
	(void)err;
	pool_drop(st->owner);
}

static void
pool_nop_cb(struct sl_stream *st)
{
	(void)st;
}

static void
pool_closed(struct sl_stream *st)
{
	upc_free(st->owner);
}

static const struct sl_stream_ops pool_ops = {
	.on_read = pool_read_cb,
	.on_eof = pool_eof_cb,
	.on_drain = pool_nop_cb,
	.on_close = pool_closed,
};

/* Closes connections idle longer than their connection's pool_idle_timeout
 * (and resets that take too long). Runs only while the pool holds any. */
static void
pool_tick(uv_timer_t *t)
{
	struct sl_worker *w = t->data;
	int64_t now = sl_mono_us();
	struct pg_upconn *u, *next;

	for (u = w->pg_pool; u; u = next) {
		next = u->next;
		if ((u->state == UC_IDLE &&
		     (now - u->since_us >= u->conn->pool_idle_ms * 1000 ||
		      now - u->born_us >= u->conn->pool_lifetime_ms * 1000)) ||
		    ((u->state == UC_RESET || u->state == UC_PREP) &&
		     now - u->since_us >= POOL_RESET_MS * 1000))
			pool_drop(u);
	}
	if (w->pg_pool == NULL) {
		uv_timer_stop(t);
		w->pg_pool_timer_on = 0;
	}
}

/* Hands the session's upstream connection to the pool, if the session ended
 * cleanly and the connection is in a known, idle state. 0: the pool has it
 * (the session no longer does). */
static int
pool_put(struct pg_session *s, int was_ready)
{
	struct pg_upconn *u = s->upc, *p;
	struct sl_worker *w = s->w;
	unsigned n = 0;
	struct sl_buf b;

	if (!s->reusable || !was_ready || !s->up_inited || u == NULL || u->noreuse ||
	    u->st.closing || u->st.eof || u->st.tls != u->st.tls_ready || s->txstatus != 'I' ||
	    s->ents_len != 0 || s->ops != NULL || s->ext_open || s->hold || s->barrier ||
	    s->review_id[0] != '\0' || s->catalog == 1 || sl_buf_unread(&u->in) != 0 ||
	    w->stopping || atomic_load(&s->gw->stopping) || !w->pg_pool_timer_init)
		return -1;
	for (p = w->pg_pool; p; p = p->next)
		n += p->conn == u->conn;
	if (n >= u->conn->pool_max || sl_mono_us() - u->born_us >= u->conn->pool_lifetime_ms * 1000)
		return -1;
	sl_buf_init(&b, 0);
	if (sl_pg_put_query(&b, "DISCARD ALL") != 0 ||
	    sl_stream_queue(&u->st, b.data, b.len) != 0) {
		sl_buf_fini(&b);
		return -1;
	}
	sl_buf_fini(&b);
	if (u->in.cap > ((size_t)64 << 10)) {
		/* a session that read large rows: an idle connection keeps no
		 * megabytes (it holds nothing unread here) */
		size_t max = u->in.max;

		sl_buf_fini(&u->in);
		sl_buf_init(&u->in, max);
	}
	s->upc = NULL;
	u->st.owner = u;
	u->st.ops = &pool_ops;
	u->pid = s->up_pid;
	u->secret = s->up_key;
	u->addr = s->up_addr;
	u->auth = s->up_auth;
	u->state = UC_RESET;
	u->answered = 0;
	u->since_us = sl_mono_us();
	u->next = w->pg_pool;
	if (u->next)
		u->next->prev = u;
	u->prev = NULL;
	w->pg_pool = u;
	sl_stream_flush(&u->st);
	if (sl_stream_read_start(&u->st) != 0) {
		pool_drop(u);
		return 0;
	}
	if (!w->pg_pool_timer_on) {
		uv_timer_start(&w->pg_pool_timer, pool_tick, 1000, 1000);
		w->pg_pool_timer_on = 1;
	}
	return 0;
}

/* Finds s a pooled connection made for the same database, user and
 * parameters. 0: s has it (replay_pooled() shows the client its login), or
 * waits for it to be reset or given s's application_name (s->upc_wait);
 * -1: none, log in. */
static int
pool_take(struct pg_session *s)
{
	struct sl_worker *w = s->w;
	struct pg_upconn *u, *resetting = NULL;
	size_t keylen;
	char *key;

	if (w->pg_pool == NULL || (key = upc_key(s, &keylen)) == NULL)
		return -1;
	for (u = w->pg_pool; u; u = u->next) {
		if (u->conn != s->pl.conn || u->keylen != keylen ||
		    memcmp(u->key, key, keylen) != 0 || u->st.closing || u->st.eof)
			continue;
		if (u->state == UC_IDLE && sl_buf_unread(&u->in) == 0)
			break;
		/* (not UC_PREP: that one sets another session's application_name) */
		if (u->state == UC_RESET && u->waiter == NULL && resetting == NULL)
			resetting = u;
	}
	free(key);
	if (u == NULL && resetting != NULL) {
		/* A client that closes and reconnects at once (a connection per
		 * tool call) comes back while its last connection is still
		 * being reset: waiting the reset's round trip beats a new
		 * login (a backend start takes milliseconds, more on a busy
		 * server). pool_read_cb() hands it over, pool_drop() logs in
		 * afresh instead. */
		resetting->waiter = s;
		s->upc_wait = resetting;
		set_state(s, PG_ST_UPCONN);
		return 0;
	}
	if (u == NULL)
		return -1;
	return pool_claim(s, u) < 0 ? -1 : 0;
}

/* The application_name s asked for at startup, or NULL. */
static const char *
session_appname(const struct pg_session *s)
{
	for (size_t i = 0; i < s->nfwd; i++)
		if (strcasecmp(s->fwd_keys[i], "application_name") == 0)
			return s->fwd_vals[i];
	return NULL;
}

static const char *
upc_param_value(const struct pg_upconn *u, const char *name)
{
	for (size_t i = 0; i < u->nparams; i++)
		if (strcmp(u->pnames[i], name) == 0)
			return u->pvals[i];
	return NULL;
}

/* s takes the idle pooled connection u. 0: attached (replay_pooled() shows
 * the client its login); 1: u first sets the application_name s asked for,
 * and pool_read_cb() comes back here; -1: u cannot serve s. */
static int
pool_claim(struct pg_session *s, struct pg_upconn *u)
{
	const char *want = session_appname(s), *have = upc_param_value(u, "application_name");
	const char *scs = upc_param_value(u, "standard_conforming_strings");
	struct sl_buf b, sql;
	int r;

	if (want == NULL || (have != NULL && strcmp(want, have) == 0))
		return pool_attach(s, u);
	/* Quoted as a standard string: only where the server reads it so and
	 * the value has no backslash (the server keeps printable ASCII of it
	 * anyway). The answer is checked like the reset's. */
	if (scs == NULL || strcmp(scs, "on") != 0 || strchr(want, '\\') != NULL)
		return -1;
	sl_buf_init(&sql, 0);
	sl_buf_init(&b, 0);
	r = sl_buf_append(&sql, "SET application_name TO '", 25);
	for (const char *p = want; *p && r == 0; p++)
		r = *p == '\'' ? sl_buf_append(&sql, "''", 2) : sl_buf_append_u8(&sql, (uint8_t)*p);
	if (r == 0)
		r = sl_buf_append(&sql, "'", 2); /* with the NUL */
	if (r == 0 && (r = sl_pg_put_query(&b, (const char *)sql.data)) == 0)
		r = sl_stream_queue(&u->st, b.data, b.len);
	sl_buf_fini(&sql);
	sl_buf_fini(&b);
	if (r != 0)
		return -1;
	sl_stream_flush(&u->st);
	u->state = UC_PREP;
	u->since_us = sl_mono_us();
	u->answered = 0;
	u->waiter = s;
	s->upc_wait = u;
	set_state(s, PG_ST_UPCONN);
	return 1;
}

/* Gives s the pooled connection u, replaying what its login said
 * (ParameterStatus, the backend's key, ReadyForQuery) through the usual login
 * path once replay_pooled() runs. */
static int
pool_attach(struct pg_session *s, struct pg_upconn *u)
{
	struct sl_buf b;
	int r = 0;

	/* the login's messages, as the server sent them then, where the
	 * server's own would be read (u->in holds nothing unread) */
	for (size_t i = 0; i < u->nparams && r == 0; i++)
		r = sl_pg_put_param_status(&u->in, u->pnames[i], u->pvals[i]);
	if (r != 0 || sl_pg_put_backend_key(&u->in, u->pid, u->secret) != 0 ||
	    sl_pg_put_ready(&u->in, 'I') != 0) {
		sl_buf_consume(&u->in, sl_buf_unread(&u->in));
		return -1;
	}
	pool_unlink(u);
	u->state = UC_SESSION;
	u->st.owner = s;
	u->st.ops = &up_ops;
	s->upc = u;
	s->up_open = 1;
	s->up_inited = 1;
	s->up_reused = 1;
	s->up_auth = u->auth;
	s->up_addr = u->addr;
	set_state(s, PG_ST_UPINIT);
	sl_buf_init(&b, 0);
	sl_pg_put_auth(&b, 0, NULL, 0);
	cli_send(s, b.data, b.len);
	sl_buf_fini(&b);
	s->replay = 1; /* run by replay_pooled() once the caller is done with the input */
	return 0;
}

/* Feeds the login messages pool_take() queued through the login path. */
static void
replay_pooled(struct pg_session *s)
{
	if (!s->replay)
		return;
	s->replay = 0;
	if (s->state == PG_ST_UPINIT)
		process_upstream(s);
}

static int
load_password(struct pg_session *s)
{
	const struct sl_cfg_connection *c = s->pl.conn;
	const char *v = NULL;
	char *file = NULL;
	size_t len;

	if (c->password_env != NULL) {
		v = getenv(c->password_env);
		if (v == NULL)
			return SL_ENOENT;
		s->password = strdup(v);
	} else if (c->password_file != NULL) {
		if (sl_read_file(c->password_file, 4096, &file, &len) != 0)
			return SL_ENOENT;
		while (len > 0 && (file[len - 1] == '\n' || file[len - 1] == '\r'))
			file[--len] = '\0';
		s->password = file;
	} else {
		s->password = strdup("");
	}
	return s->password ? 0 : SL_ENOMEM;
}

static void
send_upstream_startup(struct pg_session *s)
{
	const struct sl_cfg_connection *c = s->pl.conn;
	const char *keys[SL_PG_MAX_PARAMS + 4], *vals[SL_PG_MAX_PARAMS + 4];
	size_t n = 0;
	struct sl_buf b;
	uint8_t nonce[24];

	keys[n] = "user";
	vals[n++] = c->user ? c->user : c->name;
	keys[n] = "database";
	vals[n++] = c->database ? c->database : (s->client_db ? s->client_db : c->name);
	for (size_t i = 0; i < s->nfwd && n < SL_PG_MAX_PARAMS; i++) {
		keys[n] = s->fwd_keys[i];
		vals[n++] = s->fwd_vals[i];
	}
	if (c->read_only) {
		/* the server refuses every write, functions' too; set at login,
		 * RESET, SET ... TO DEFAULT and DISCARD ALL come back to it */
		keys[n] = "default_transaction_read_only";
		vals[n++] = "on";
	}
	sl_random(nonce, sizeof(nonce));
	if (load_password(s) != 0) {
		fatal(s, "08006",
		      "sluice: the upstream credential for this connection is not available");
		return;
	}
	if (sl_pg_upauth_new(vals[0], s->password, nonce, sizeof(nonce), &s->upauth) != 0) {
		fatal(s, "53200", "sluice: out of memory");
		return;
	}
	/* The vaulted password goes out in the clear (a server asking for
	 * AuthenticationCleartextPassword) only to a server that proved who it
	 * is (tls: verify-full), unless the connection says otherwise: without
	 * that, whoever answers at the target address, or intercepts an
	 * unverified TLS connection, could simply ask for it. SCRAM and MD5
	 * never reveal it. */
	if (up_verify_ctx(s) == NULL && !s->pl.conn->allow_cleartext_password)
		sl_pg_upauth_set_allow_cleartext(s->upauth, 0);
	{
		/* SCRAM-SHA-256-PLUS over TLS, bound to the certificate the
		 * server presented (connection key channel_binding) */
		const char *cb = s->pl.conn->channel_binding;
		int mode = cb == NULL || strcmp(cb, "prefer") == 0 ? SL_PG_CBIND_PREFER
			   : strcmp(cb, "require") == 0		   ? SL_PG_CBIND_REQUIRE
								   : SL_PG_CBIND_DISABLE;
		uint8_t ep[EVP_MAX_MD_SIZE];
		size_t eplen = 0;

		if (s->upc->st.tls && sl_stream_tls_end_point(&s->upc->st, ep, &eplen) != 0)
			eplen = 0;
		sl_pg_upauth_set_channel_binding(s->upauth, mode, ep, eplen);
	}
	sl_buf_init(&b, 0);
	if (sl_pg_put_startup(&b, keys, vals, n) != 0) {
		sl_buf_fini(&b);
		fatal(s, "08P01", "sluice: cannot build the upstream startup packet");
		return;
	}
	up_send(s, b.data, b.len);
	sl_buf_fini(&b);
	up_flush(s);
	set_state(s, PG_ST_UPAUTH);
}

/* The verify-full context of the session's connection, or NULL. */
static SSL_CTX *
up_verify_ctx(const struct pg_session *s)
{
	const struct sl_config *cfg = s->gw->cfg;
	size_t i = (size_t)(s->pl.conn - cfg->connections);

	return i < cfg->connections_count && s->gw->conn_tls ? s->gw->conn_tls[i] : NULL;
}

/* Starts TLS to the upstream: with tls: verify-full its certificate must
 * chain to the connection's CAs and name the target host (or address). */
static int
up_tls_start(struct pg_session *s)
{
	SSL_CTX *vctx = up_verify_ctx(s);
	char host[256];
	int port;

	if (vctx == NULL)
		return sl_stream_tls_client(&s->upc->st, s->gw->up_tls, NULL);
	if (sl_net_split(s->pl.conn->target, host, sizeof(host), &port) != 0)
		return SL_EINVAL;
	return sl_stream_tls_client(&s->upc->st, vctx, host);
}

static void
up_tls_cb(struct sl_stream *st, int status)
{
	struct pg_session *s = st->owner;

	if (status != 0) {
		long vr = st->ssl && up_verify_ctx(s) ? SSL_get_verify_result(st->ssl) : X509_V_OK;

		if (vr != X509_V_OK) {
			char m[256];

			snprintf(m, sizeof(m),
				 "sluice: the upstream server's certificate was not accepted (%s)",
				 X509_verify_cert_error_string(vr));
			sl_warn("connection %s: %s", s->pl.conn->name, m + 8);
			fatal(s, "08006", m);
			return;
		}
		fatal(s, "08006", "sluice: TLS handshake with the upstream server failed");
		return;
	}
	send_upstream_startup(s);
}

static void
up_connect_cb(struct sl_stream *st, int status)
{
	struct pg_session *s = st->owner;
	const struct sl_cfg_connection *c = s->pl.conn;
	struct sl_buf b;

	if (s->state == PG_ST_CLOSING)
		return;
	if (status != 0) {
		fatal(s, "08006", "sluice: could not connect to the upstream server");
		return;
	}
	if (sl_stream_read_start(&s->upc->st) != 0) {
		fatal(s, "08006", "sluice: upstream read failed");
		return;
	}
	if (c->tls != NULL && strcmp(c->tls, "disable") != 0) {
		sl_buf_init(&b, 0);
		sl_pg_put_ssl_request(&b);
		up_send(s, b.data, b.len);
		sl_buf_fini(&b);
		up_flush(s);
		return; /* answer handled in up_read_cb (UPCONN state) */
	}
	send_upstream_startup(s);
}

static void
gai_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
	struct pg_session *s = req->data;

	s->pending--;
	if (s->state == PG_ST_CLOSING) {
		if (res)
			uv_freeaddrinfo(res);
		maybe_free(s);
		return;
	}
	if (status != 0 || res == NULL) {
		if (res)
			uv_freeaddrinfo(res);
		fatal(s, "08006", "sluice: could not resolve the upstream server");
		return;
	}
	memcpy(&s->up_addr, res->ai_addr, res->ai_addrlen);
	uv_freeaddrinfo(res);
	if (sl_stream_connect(&s->upc->st, (struct sockaddr *)&s->up_addr) != 0)
		fatal(s, "08006", "sluice: could not connect to the upstream server");
}

static void
start_upstream(struct pg_session *s)
{
	char host[256];
	int port;
	struct addrinfo hints;
	char port_s[16];

	set_state(s, PG_ST_UPCONN);
	s->upc = upc_new(s);
	if (s->upc == NULL) {
		fatal(s, "08006", "sluice: could not create the upstream connection");
		return;
	}
	s->up_open = 1;
	if (sl_net_parse_addr(s->pl.conn->target, &s->up_addr) == 0) {
		if (sl_stream_connect(&s->upc->st, (struct sockaddr *)&s->up_addr) != 0)
			fatal(s, "08006", "sluice: could not connect to the upstream server");
		return;
	}
	if (sl_net_split(s->pl.conn->target, host, sizeof(host), &port) != 0) {
		fatal(s, "08006", "sluice: bad upstream address");
		return;
	}
	snprintf(port_s, sizeof(port_s), "%d", port);
	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	s->gai.data = s;
	if (uv_getaddrinfo(&s->w->loop, &s->gai, gai_cb, host, port_s, &hints) != 0) {
		fatal(s, "08006", "sluice: could not resolve the upstream server");
		return;
	}
	s->pending++;
}

/* Handles upstream messages during login. Returns 0 to continue. */
static int
upstream_login_msg(struct pg_session *s, uint8_t type, const uint8_t *msg, size_t len)
{
	char err[256] = "";
	struct sl_buf out;
	int r;

	if (s->state == PG_ST_UPAUTH) {
		sl_buf_init(&out, 0);
		if (type == 'R' && len >= 9 && msg[5] == 0 && msg[6] == 0 && msg[7] == 0 &&
		    msg[8] == 11) {
			/* SASLContinue: the client proof costs the server's
			 * iteration count in HMACs; off the loop */
			sl_buf_fini(&out);
			return scram_offload(s, msg, len);
		}
		r = sl_pg_upauth_feed(s->upauth, msg, len, &out, err, sizeof(err));
		return upauth_result(s, r, &out, err);
	}
	/* PG_ST_UPINIT: ParameterStatus, BackendKeyData, notices, then ReadyForQuery. */
	return upinit_msg(s, type, msg, len);
}

/* After a feed of the upstream login: sends the reply, moves on or fails. */
static int
upauth_result(struct pg_session *s, int r, struct sl_buf *out, const char *err)
{
	if (out->len > 0)
		up_send(s, out->data, out->len);
	sl_buf_fini(out);
	up_flush(s);
	if (r == SL_PG_UPAUTH_DONE) {
		struct sl_buf b;

		s->up_auth = sl_pg_upauth_method(s->upauth); /* a static string */
		sl_pg_upauth_free(s->upauth);
		s->upauth = NULL;
		OPENSSL_cleanse(s->password, strlen(s->password));
		free(s->password);
		s->password = NULL;
		s->up_inited = 1;
		set_state(s, PG_ST_UPINIT);
		sl_buf_init(&b, 0);
		sl_pg_put_auth(&b, 0, NULL, 0);
		cli_send(s, b.data, b.len);
		sl_buf_fini(&b);
		return 0;
	}
	if (r < 0) {
		/* The upstream's refusal is about sluice's credential:
		 * never echo it to the client (it may name the upstream
		 * user); the operator's log gets the reason. */
		sl_warn("pg session %s: login to connection %s failed: %s", s->pl.id,
			s->pl.conn ? s->pl.conn->name : "?",
			err[0]		? err
			: r == SL_EAUTH ? "credential refused"
					: sl_strerror(r));
		fatal(s, "08006", "sluice: login to the upstream server failed (see gateway log)");
		return -1;
	}
	return 0;
}

static void
scram_work_cb(uv_work_t *req)
{
	struct pg_session *s = req->data;

	s->scram_rc = sl_pg_upauth_feed(s->upauth, s->scram_msg, s->scram_len, &s->scram_out,
					s->scram_err, sizeof(s->scram_err));
}

static void
scram_after_cb(uv_work_t *req, int status)
{
	struct pg_session *s = req->data;
	int r = status == 0 ? s->scram_rc : SL_EIO;

	s->pending--;
	s->scram_busy = 0;
	free(s->scram_msg);
	s->scram_msg = NULL;
	if (s->state == PG_ST_CLOSING) {
		sl_buf_fini(&s->scram_out);
		maybe_free(s);
		return;
	}
	if (upauth_result(s, r, &s->scram_out, s->scram_err) < 0)
		return;
	process_upstream(s); /* what arrived meanwhile */
}

/* Hands a SASLContinue to the thread pool; nothing more is read from the
 * upstream until it is answered. */
static int
scram_offload(struct pg_session *s, const uint8_t *msg, size_t len)
{
	s->scram_msg = malloc(len);
	if (s->scram_msg == NULL) {
		fatal(s, "53200", "sluice: out of memory");
		return -1;
	}
	memcpy(s->scram_msg, msg, len);
	s->scram_len = len;
	s->scram_err[0] = '\0';
	sl_buf_init(&s->scram_out, 0);
	s->scram_work.data = s;
	s->scram_busy = 1;
	s->pending++;
	if (uv_queue_work(&s->w->loop, &s->scram_work, scram_work_cb, scram_after_cb) != 0) {
		s->pending--;
		s->scram_busy = 0;
		free(s->scram_msg);
		s->scram_msg = NULL;
		fatal(s, "53200", "sluice: cannot schedule the upstream login");
		return -1;
	}
	return 0;
}

/* Upstream messages after AuthenticationOk, until ReadyForQuery. */
static int
upinit_msg(struct pg_session *s, uint8_t type, const uint8_t *msg, size_t len)
{
	if (s->catalog == 1 && catalog_msg(s, type, msg, len) == 0)
		return 0; /* the catalog answer is ours, never the client's */
	if (type == 'Z' && s->catalog == 0) {
		int r;

		s->mplan = sl_pl_session_mask(s->gw, &s->pl, &s->mask_exempt);
		if ((r = catalog_ask(s)) > 0)
			return 0;
		if (r < 0)
			s->catalog_failed = 1;
		s->catalog = 2;
	}
	if (type == 'Z' && s->catalog_failed) {
		sl_warn("pg session %s: cannot read the catalog for the column masking rules; "
			"session refused",
			s->pl.id);
		fatal(s, "58000",
		      "sluice: cannot read the upstream catalog for this session's column masking "
		      "rules; the session is refused (check the connection's settings and the "
		      "server log)");
		return -1;
	}
	switch (type) {
	case 'K':
		if (sl_pg_parse_backend_key(msg, len, &s->up_pid, &s->up_key) != 0) {
			fatal(s, "08P01", "sluice: bad BackendKeyData from upstream");
			return -1;
		}
		return 0;
	case 'E':
		fatal(s, "08006", "sluice: the upstream server refused the session");
		return -1;
	case 'Z': {
		struct sl_buf b;
		json_t *details;

		sl_random(&s->our_pid, sizeof(s->our_pid));
		sl_random(&s->our_key, sizeof(s->our_key));
		s->our_pid &= 0x7fffffff;
		cancel_register(s);
		sl_buf_init(&b, 0);
		sl_pg_put_backend_key(&b, s->our_pid, s->our_key);
		cli_send(s, b.data, b.len);
		sl_buf_fini(&b);
		if (len >= 6)
			s->txstatus = (char)msg[5];
		cli_send(s, msg, len);
		details = json_object();
		json_object_set_new(details, "database",
				    json_string(s->client_db ? s->client_db : ""));
		json_object_set_new(details, "user",
				    json_string(s->client_user ? s->client_user : ""));
		{
			json_t *params = json_object();

			for (size_t i = 0; i < s->nfwd; i++) {
				char *v = audit_value(s->fwd_vals[i]);

				json_object_set_new(params, s->fwd_keys[i],
						    json_string(v ? v : ""));
				free(v);
			}
			json_object_set_new(details, "startup_parameters", params);
		}
		json_object_set_new(details, "tls", json_boolean(s->tls));
		json_object_set_new(details, "upstream_tls", json_boolean(s->upc->st.tls));
		json_object_set_new(details, "upstream_auth",
				    json_string(s->up_auth ? s->up_auth : ""));
		json_object_set_new(details, "upstream_pid", json_integer(s->up_pid));
		json_object_set_new(details, "upstream_reused", json_boolean(s->up_reused));
		s->mplan = sl_pl_session_mask(s->gw, &s->pl, &s->mask_exempt);
		json_object_set_new(details, "masking",
				    json_string(s->mask_exempt ? "exempt"
						: s->mplan     ? "on"
							       : "off"));
		sl_pl_session_opened(s->gw, &s->pl, details);
		set_state(s, PG_ST_READY);
		uv_timer_stop(&s->login_timer); /* kept for message deadlines */
		return 0;
	}
	default:
		return 1; /* relay */
	}
}

/* ------------------------------------------------------------ relay: server -> client */

static int
track_param(struct pg_session *s, const char *name, const char *value)
{
	if (ro_broken(s->pl.conn, name, value)) {
		/* The statement that did it has run; none after it may (the
		 * connection is dropped, never pooled). */
		if (s->up_open)
			s->upc->noreuse = 1;
		fatal(s, "25006",
		      "sluice: this connection is read-only and the server reports "
		      "default_transaction_read_only = off (a function turned it off); the "
		      "session is closed");
		return -1;
	}
	if (s->up_open)
		upc_param(s->upc, name, value); /* replayed to the next session if pooled */
	if (strcasecmp(name, "standard_conforming_strings") == 0) {
		s->scs_on = strcasecmp(value, "on") == 0;
	} else if (strcasecmp(name, "client_encoding") == 0) {
		/* Client-only encodings can hide a quote or backslash in the
		 * second byte of a character; the parser here assumes UTF-8. */
		static const char *const unsafe[] = {"SJIS", "SHIFT_JIS_2004", "BIG5", "GBK",
						     "UHC",  "GB18030",	       "JOHAB"};
		s->enc_safe = 1;
		for (size_t i = 0; i < sizeof(unsafe) / sizeof(unsafe[0]); i++)
			if (strcasecmp(value, unsafe[i]) == 0)
				s->enc_safe = 0;
	} else if (strcasecmp(name, "application_name") == 0) {
		char t[33], sp[17];

		if (sl_pl_trace_from_text(value, strlen(value), t, sp)) {
			memcpy(s->pl.trace_id, t, sizeof(t));
			memcpy(s->pl.span_id, sp, sizeof(sp));
		}
	}
	return 0;
}

/* Returns what to show instead if this ErrorResponse is the answer to one of
 * our substituted statements. */
static const struct blocked_msg *
blocked_rewrite(struct pg_session *s, const uint8_t *msg, size_t len)
{
	struct sl_pg_error_fields f;

	if (s->blocked == NULL || sl_pg_parse_error(msg, len, &f) != 0 || f.message == NULL)
		return NULL;
	if (strstr(f.message, "SLUICE_BLOCKED_") == NULL)
		return NULL;
	for (struct blocked_msg *b = s->blocked; b; b = b->next)
		if (strstr(f.message, b->nonce) != NULL)
			return b;
	return NULL;
}

static void
on_server_error(struct pg_session *s, const uint8_t *msg, size_t len)
{
	struct sl_pg_error_fields f;
	const struct blocked_msg *rew = blocked_rewrite(s, msg, len);
	struct entry *e;
	char wmsg[200];

	memset(&f, 0, sizeof(f));
	sl_pg_parse_error(msg, len, &f);
	if (rew != NULL) {
		struct sl_buf b;
		int down = rew->outage;

		sl_buf_init(&b, 0);
		/* 58000 (system_error) like the login-time refusal: an outage,
		 * worth a retry, not a permission */
		sl_pg_put_error(&b, "ERROR", down ? "58000" : "42501", rew->message, NULL,
				down ? "sluice records each statement before it runs and cannot "
				       "record now; retry later"
				     : "sluice blocked this statement by policy");
		cli_send(s, b.data, b.len);
		sl_buf_fini(&b);
	} else if (s->mplan != NULL) {
		/* DETAIL often echoes row values: Key (ssn)=(...) already exists. */
		mask_message(s, (uint8_t *)msg, len);
	} else {
		cli_send(s, msg, len);
	}
	if (s->mplan != NULL && ents_errtainted(s)) {
		/* recorded as the client got it (mask_message) */
		withheld_text(msg, len, wmsg, sizeof(wmsg));
		f.message = wmsg;
	}
	ops_group_failed(s);
	e = ent_head(s);
	if (e == NULL)
		return;
	if (e->kind == ENT_QUERY || e->kind == ENT_FUNC) {
		e->failed = 1;
		if (f.sqlstate)
			snprintf(e->sqlstate, sizeof(e->sqlstate), "%s", f.sqlstate);
		if (!e->blocked)
			ent_finish(s, e, f.sqlstate, f.message);
		e->blocked = 1; /* reported; nothing more at Z */
		return;
	}
	/* Extended protocol: the server skips to Sync. The failing message
	 * may be the head Execute, or a Parse/Bind before it. */
	while ((e = ent_head(s)) != NULL && e->kind == ENT_EXEC) {
		ent_finish(s, e, f.sqlstate, e == ent_head(s) ? f.message : "not executed");
		ent_pop(s);
	}
}

static void
on_ready(struct pg_session *s, const uint8_t *msg, size_t len)
{
	struct entry *e;
	uint64_t grp;

	{
		size_t i = 0;

		while (i < s->ents_len &&
		       s->ents[(s->ents_head + i) % s->ents_cap].kind == ENT_EXEC)
			i++;
		if (i == s->ents_len) {
			/* nothing it could answer: sluice and the server are out
			 * of step, and every answer after would be paired with
			 * the wrong statement */
			fatal(s, "08P01",
			      "sluice: unexpected ReadyForQuery from the upstream server");
			return;
		}
	}
	if (len >= 6)
		s->txstatus = (char)msg[5];
	grp = s->grp_done;
	ops_group_done(s);
	if (s->txstatus == 'I')
		portals_tx_over(s, grp);
	/* Pop up to and including the Query / Sync / FunctionCall this answers. */
	while ((e = ent_head(s)) != NULL) {
		uint8_t k = e->kind;

		if (k == ENT_QUERY || k == ENT_FUNC)
			ent_finish(s, e, NULL, NULL);
		ent_pop(s);
		if (k != ENT_EXEC)
			break;
	}
	blocked_clear(s);
	/* A RowDescription describes rows up to the next ReadyForQuery. A
	 * client that executes a prepared statement without Describe (JDBC
	 * caches descriptions) gets no column rules, only detectors, with
	 * hits in unknown columns turned into NULL: never a stale column map. */
	s->ncols = 0;
	cli_send(s, msg, len);
}

static void
on_command_complete(struct pg_session *s, const uint8_t *msg, size_t len)
{
	struct entry *e = ent_head(s);
	const char *tag = NULL;
	int64_t rows = -1;

	cli_send(s, msg, len);
	if (e == NULL)
		return;
	if (msg[0] == 'C' && sl_pg_parse_command_complete(msg, len, &tag, &rows) == 0 && tag) {
		size_t tl = strnlen(tag, sizeof(e->tag) - 1);

		memcpy(e->tag, tag, tl);
		e->tag[tl] = '\0';
		if (rows >= 0)
			e->rows = e->kind == ENT_QUERY ? e->rows + rows : rows;
	}
	if (e->kind == ENT_EXEC) {
		ent_finish(s, e, NULL, NULL);
		ent_pop(s);
	}
}

/* ------------------------------------------------------------ masking */

static int
is_textlike(uint32_t oid, uint16_t format)
{
	switch (oid) {
	case 25:   /* text */
	case 1043: /* varchar */
	case 1042: /* bpchar */
	case 19:   /* name */
	case 18:   /* char */
	case 705:  /* unknown */
		return 1;
	case 114: /* json */
	case 142: /* xml */
		return format == 0;
	default:
		return 0;
	}
}

static int
catcol_cmp(const void *a, const void *b)
{
	uint64_t x = ((const struct catcol *)a)->key, y = ((const struct catcol *)b)->key;

	return x < y ? -1 : x > y;
}

/* How much a style hides: of two rules for one column (a view column that
 * reads several, a table's row type), the one that hides more applies. */
static int
style_rank(int st)
{
	return st == SL_MASK_NULL ? 3 : st == SL_MASK_FULL ? 2 : st == SL_MASK_HASH ? 1 : 0;
}

/* Folds the sorted catalog's entries of one key into one, with the style
 * that hides most. */
static void
catalog_merge(struct pg_session *s)
{
	size_t w = 0;

	for (size_t i = 0; i < s->ncatcols; i++) {
		if (w > 0 && s->catcols[w - 1].key == s->catcols[i].key) {
			if (style_rank(s->catcols[i].style) > style_rank(s->catcols[w - 1].style))
				s->catcols[w - 1].style = s->catcols[i].style;
			continue;
		}
		s->catcols[w++] = s->catcols[i];
	}
	s->ncatcols = w;
}

static int
catalog_find(const struct pg_session *s, uint32_t oid, uint16_t attnum, enum sl_mask_style *st)
{
	struct catcol k = {(uint64_t)oid << 16 | attnum, 0}, *c;

	if (s->ncatcols == 0)
		return 0;
	c = bsearch(&k, s->catcols, s->ncatcols, sizeof(k), catcol_cmp);
	if (c == NULL)
		return 0;
	*st = (enum sl_mask_style)c->style;
	return 1;
}

/* Asks the upstream, before the client's session starts, which table
 * columns have a name a column rule matches: RowDescription carries the
 * source table and column of every plain column reference, whatever it is
 * called in the result. The LIKE patterns only narrow the search; each name
 * is matched with the rule's own glob when the answer comes. Returns 0 when
 * there is nothing to ask. */
static int
catalog_ask(struct pg_session *s)
{
	struct sl_buf q, m;
	const char *g;

	if (!column_rules(s))
		return 0;
	sl_buf_init(&q, 0);
	/* In a transaction of its own, with settings of its own: the client's
	 * startup parameters (statement_timeout=1, lock_timeout, a search_path
	 * that puts its own operators first) must not make the lookup fail or
	 * lie. SET LOCAL ends with it; a failure refuses the session
	 * (catalog_msg), so nothing is left half set. */
	sl_buf_append_cstr(&q,
			   "BEGIN; SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0; "
			   "SET LOCAL search_path = pg_catalog; "
			   "WITH RECURSIVE rules(p) AS (VALUES (NULL::pg_catalog.text)");
	q.len--; /* no NUL yet */
	for (size_t i = 0; (g = sl_mask_plan_column_glob(s->mplan, i)) != NULL; i++) {
		sl_buf_append(&q, ", ('", 4);
		for (; *g; g++) {
			/* '!' escapes (no backslash: standard_conforming_strings may
			 * be off); a glob class matches like '%' here */
			if (*g == '*' || *g == '[')
				sl_buf_append_u8(&q, '%');
			else if (*g == '?')
				sl_buf_append_u8(&q, '_');
			else if (*g == '%' || *g == '_' || *g == '!')
				sl_buf_append(&q, (const char[]){'!', *g}, 2);
			else if (*g == '\'')
				sl_buf_append(&q, "''", 2);
			else
				sl_buf_append_u8(&q, (uint8_t)*g);
			if (*g == '[')
				while (g[1] != '\0' && g[1] != ']')
					g++;
		}
		sl_buf_append(&q, "')", 2);
	}
	/* d: which view (rewrite rule) reads which column. m: the columns a
	 * rule matches by name, and the columns of views that read one of
	 * them, but for a view column named like a column the view reads from
	 * a table that no rule matches (`SELECT id, ssn AS tax_id FROM
	 * customers`: tax_id is masked as ssn, id is not; a view over that
	 * view has all its columns masked). By table: catalog_msg() keeps one
	 * name per table. */
	sl_buf_append_cstr(
		&q,
		"), d AS (SELECT r.oid AS rw, r.ev_class AS view, dp.refobjid AS relid, "
		"dp.refobjsubid AS attnum FROM pg_catalog.pg_depend dp "
		"JOIN pg_catalog.pg_rewrite r ON r.oid = dp.objid "
		"WHERE dp.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass "
		"AND dp.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass "
		"AND dp.refobjsubid > 0 AND r.ev_class <> dp.refobjid), "
		"m(relid, attnum, rule) AS (SELECT a.attrelid, a.attnum, "
		"a.attname::pg_catalog.text "
		"FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid "
		"WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'v', 'm', 'f', "
		"'p') "
		"AND EXISTS (SELECT 1 FROM rules WHERE a.attname::pg_catalog.text ILIKE rules.p "
		"ESCAPE '!') "
		"UNION SELECT v.attrelid, v.attnum, m.rule FROM m "
		"JOIN d ON d.relid = m.relid AND d.attnum = m.attnum "
		"JOIN pg_catalog.pg_attribute v ON v.attrelid = d.view AND v.attnum > 0 "
		"AND NOT v.attisdropped "
		"WHERE NOT EXISTS (SELECT 1 FROM d d2 JOIN pg_catalog.pg_attribute s "
		"ON s.attrelid = d2.relid AND s.attnum = d2.attnum "
		"JOIN pg_catalog.pg_class sc ON sc.oid = s.attrelid "
		"WHERE d2.rw = d.rw AND s.attname = v.attname AND sc.relkind IN ('r', 'p', 'f') "
		"AND NOT EXISTS (SELECT 1 FROM rules WHERE s.attname::pg_catalog.text ILIKE "
		"rules.p "
		"ESCAPE '!'))) "
		"SELECT DISTINCT a.attrelid::pg_catalog.int8, "
		"a.attnum::pg_catalog.int4, "
		"m.rule, c.reltype::pg_catalog.int8, coalesce(t.typarray, 0)::pg_catalog.int8, "
		"n.nspname::pg_catalog.text, c.relname::pg_catalog.text "
		"FROM m JOIN pg_catalog.pg_attribute a ON a.attrelid = m.relid AND a.attnum = "
		"m.attnum "
		"JOIN pg_catalog.pg_class c ON c.oid = a.attrelid "
		"JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
		"LEFT JOIN pg_catalog.pg_type t ON t.oid = c.reltype ORDER BY 6, 7, 2; COMMIT");
	sl_buf_init(&m, 0);
	if (sl_pg_put_query(&m, (const char *)q.data) != 0) {
		sl_buf_fini(&m);
		sl_buf_fini(&q);
		return -1; /* without it a renamed column would pass: refused */
	}
	up_send(s, m.data, m.len);
	up_flush(s);
	sl_buf_fini(&m);
	sl_buf_fini(&q);
	s->catalog = 1;
	return 1;
}

/* Notes key (a table column, or a row type as attnum 0) with style st. */
static int
catalog_add(struct pg_session *s, uint64_t key, enum sl_mask_style st)
{
	struct catcol *c;

	if (s->ncatcols >= CATALOG_MAX)
		return -1;
	if ((s->ncatcols & (s->ncatcols - 1)) == 0) { /* 0, 1, 2, 4, ...: double */
		c = realloc(s->catcols, (s->ncatcols ? 2 * s->ncatcols : 1) * sizeof(*c));
		if (c == NULL)
			return -1;
		s->catcols = c;
	}
	s->catcols[s->ncatcols].key = key;
	s->catcols[s->ncatcols].style = (int8_t)st;
	s->ncatcols++;
	return 0;
}

/* One message of the catalog answer. Returns 1 at its ReadyForQuery. Each
 * row is a table column a rule matches, with the table's row type and the
 * array of it: a whole row of that table in a result (SELECT c FROM
 * customers c, array_agg(c)) holds the column's value, so a result column
 * of either type is masked as a rule's column (not text: NULL). */
static int
catalog_msg(struct pg_session *s, uint8_t type, const uint8_t *msg, size_t len)
{
	int32_t lens[7];
	uint32_t offs[7];
	uint16_t n;

	if (type == 'Z') {
		s->catalog = 2;
		if (s->ncatcols > 1)
			qsort(s->catcols, s->ncatcols, sizeof(*s->catcols), catcol_cmp);
		catalog_merge(s);
		return 1;
	}
	if (type == 'E') {
		/* Without it `SELECT ssn AS x` would pass: the session is
		 * refused at the ReadyForQuery that follows (fail closed). */
		s->catalog_failed = 1;
		return 0;
	}
	if (type != 'D' || sl_pg_parse_data_row(msg, len, 7, &n, offs, lens) != 0 || n != 7)
		return 0;
	{
		/* attrelid, attnum, attname, reltype, typarray, nspname, relname */
		static const int32_t maxlen[7] = {20, 6, 63, 20, 20, 63, 63};
		char f[7][64];
		uint64_t rowtype, arrtype;
		enum sl_mask_style st;
		struct mtable *m;

		for (int i = 0; i < 7; i++) {
			if (lens[i] <= 0 || lens[i] > maxlen[i])
				return 0;
			memcpy(f[i], msg + offs[i], (size_t)lens[i]);
			f[i][lens[i]] = '\0';
		}
		if (!sl_mask_plan_column(s->mplan, f[2], &st))
			return 0;
		if (catalog_add(s,
				(uint64_t)strtoull(f[0], NULL, 10) << 16 |
					(uint64_t)(strtoul(f[1], NULL, 10) & 0xffff),
				st) != 0) {
			s->catalog_failed = 1; /* a column left out would pass: refused */
			return 0;
		}
		/* attnum 0: a type (no table column has attnum 0) */
		if ((rowtype = strtoull(f[3], NULL, 10)) != 0)
			catalog_add(s, rowtype << 16, st);
		if ((arrtype = strtoull(f[4], NULL, 10)) != 0)
			catalog_add(s, arrtype << 16, st);
		m = s->nmtables > 0 ? &s->mtables[s->nmtables - 1] : NULL;
		if (m != NULL && strcmp(m->nsp, f[5]) == 0 && strcmp(m->rel, f[6]) == 0)
			return 0; /* that table again (rows come by table) */
		if ((s->nmtables & (s->nmtables - 1)) == 0) { /* 0, 1, 2, 4, ...: double */
			m = realloc(s->mtables, (s->nmtables ? 2 * s->nmtables : 1) * sizeof(*m));
			if (m == NULL)
				return 0;
			s->mtables = m;
		}
		m = &s->mtables[s->nmtables++];
		memcpy(m->nsp, f[5], sizeof(m->nsp));
		memcpy(m->rel, f[6], sizeof(m->rel));
		memcpy(m->col, f[2], sizeof(m->col));
	}
	return 0;
}

static void
on_row_desc(struct pg_session *s, const uint8_t *msg, size_t total)
{
	struct sl_pg_field *f;
	struct entry *e;
	uint8_t taint;
	uint16_t n = 0;

	s->ncols = 0;
	if (s->mplan == NULL)
		return;
	/* the statement this describes: the one being answered */
	e = ent_head(s);
	taint = e != NULL && (e->kind == ENT_QUERY || e->kind == ENT_EXEC) ? e->taint : 0;
	f = malloc(PG_MAX_COLUMNS * sizeof(*f));
	if (s->cols == NULL)
		s->cols = calloc(PG_MAX_COLUMNS, sizeof(*s->cols));
	if (f == NULL || s->cols == NULL ||
	    sl_pg_parse_row_desc(msg, total, f, PG_MAX_COLUMNS, &n) != 0) {
		free(f);
		/* Unknown shape: every column gets the detectors, none is text. */
		s->ncols = 0;
		return;
	}
	for (uint16_t i = 0; i < n; i++) {
		enum sl_mask_style st;
		struct colinfo *c = &s->cols[i];

		memset(c, 0, sizeof(*c));
		c->textlike = (int8_t)is_textlike(f[i].type_oid, f[i].format);
		if (sl_mask_plan_column(s->mplan, f[i].name, &st)) {
			c->rule = 1;
			c->style = (int8_t)st;
		} else if (f[i].table_oid != 0 && f[i].attnum > 0 &&
			   catalog_find(s, f[i].table_oid, f[i].attnum, &st)) {
			/* a rule's column under another name (an alias, a view) */
			c->rule = 1;
			c->style = (int8_t)st;
		} else if (catalog_find(s, f[i].type_oid, 0, &st)) {
			/* a whole row (or an array of rows) of a table with
			 * such a column */
			c->rule = 1;
			c->style = (int8_t)st;
		} else if (taint && f[i].table_oid == 0) {
			/* computed from a rule's column (taint_of) */
			c->rule = 1;
			c->style = (int8_t)(taint - 1);
		}
		/* Every value is scanned: text in place; any other value (a
		 * bytea, a jsonb or a text[] in binary format, an int8 or
		 * numeric card number) through its bytes and, for binary int8
		 * and numeric, its decimal rendering: a hit makes it NULL. */
		c->scan = 1;
		c->binary = f[i].format != 0;
		c->oid = f[i].type_oid;
	}
	s->ncols = n;
	free(f);
}

/* Decimal rendering of a binary int8 or numeric value (at most cap - 1
 * characters, NUL-terminated); 0 when the value is neither or malformed. */
static size_t
render_binary_number(uint32_t oid, const uint8_t *v, size_t len, char *out, size_t cap)
{
	size_t n = 0;

	if (oid == 0 && len == 8)
		oid = 20; /* unknown type, binary: int8 is the one that can hold a card */
	if (oid == 0 && len >= 8 && len == 8 + 2 * (size_t)(v[0] << 8 | v[1]))
		oid = 1700; /* shaped like a numeric */
	if (oid == 20 && len == 8) {
		uint64_t u = 0;

		for (int i = 0; i < 8; i++)
			u = (u << 8) | v[i];
		return (size_t)snprintf(out, cap, "%lld", (long long)u);
	}
	if (oid == 1700 && len >= 8) {
		/* ndigits, weight, sign, dscale, then base-10000 digits */
		unsigned nd = (unsigned)(v[0] << 8 | v[1]);
		int weight = (int16_t)(v[2] << 8 | v[3]);

		if (len < 8 + 2 * (size_t)nd)
			return 0;
		if (weight < 0) {
			out[n++] = '0';
			out[n++] = '.';
			for (int k = -1; k > weight && n + 4 < cap; k--)
				n += (size_t)snprintf(out + n, cap - n, "0000");
		}
		/* groups past ndigits up to the weight are zeros (10^20 is one
		 * digit group, weight 5) */
		for (unsigned i = 0; (i < nd || (int)i <= weight) && n + 6 < cap; i++) {
			unsigned d =
				i < nd ? (unsigned)(v[8 + 2 * i] << 8 | v[9 + 2 * i]) % 10000u : 0;

			if (weight >= 0 && (int)i == weight + 1)
				out[n++] = '.';
			n += (size_t)snprintf(out + n, cap - n,
					      i == 0 && weight >= 0 ? "%u" : "%04u", d);
		}
		out[n] = '\0';
		return n;
	}
	return 0;
}

/* A binary int8 or numeric whose decimal rendering holds a detector hit (a
 * card number stored as a number): SL_MASK_TO_NULL, else UNCHANGED. */
static int
mask_binary_number(struct pg_session *s, uint32_t oid, const uint8_t *v, size_t len,
		   struct sl_mask_stats *st)
{
	char txt[320];
	size_t n = render_binary_number(oid, v, len, txt, sizeof(txt));
	int r;

	if (n == 0)
		return SL_MASK_UNCHANGED;
	r = sl_mask_value(s->mplan, s->w->mscratch, (uint8_t *)txt, n, &s->mval, st);
	return r == SL_MASK_UNCHANGED ? r : SL_MASK_TO_NULL;
}

struct colact {
	uint8_t act; /* 0 keep, 1 null, 2 replaced */
	uint32_t roff, rlen;
};

/* Masks one DataRow and sends it (rebuilt when a length changed). Returns
 * 0, or -1 after closing the session. */
static int
mask_row(struct pg_session *s, uint8_t *msg, size_t total)
{
	static __thread struct colact acts[PG_MAX_COLUMNS];
	struct entry *e;
	uint8_t rfmt;
	uint16_t n;
	int rebuild = 0;

	if (s->offs == NULL) {
		s->offs = calloc(PG_MAX_COLUMNS, sizeof(*s->offs));
		s->lens = calloc(PG_MAX_COLUMNS, sizeof(*s->lens));
		if (s->offs == NULL || s->lens == NULL) {
			fatal(s, "53200", "sluice: out of memory");
			return -1;
		}
	}
	if (sl_pg_parse_data_row(msg, total, PG_MAX_COLUMNS, &n, s->offs, s->lens) != 0) {
		fatal(s, "08P01", "sluice: malformed DataRow from the upstream server");
		return -1;
	}
	s->mval.len = 0;
	rfmt = (e = ent_head(s)) != NULL && e->kind == ENT_EXEC ? e->rfmt : RFMT_TEXT;
	for (uint16_t i = 0; i < n; i++) {
		struct colinfo ci = {0, 0, 0, 1, 0, 0};
		uint8_t *v = msg + s->offs[i];
		size_t len = s->lens[i] < 0 ? 0 : (size_t)s->lens[i];
		size_t before = s->mval.len;
		int r = SL_MASK_UNCHANGED;

		acts[i].act = 0;
		if (s->lens[i] < 0)
			continue;
		if (i < s->ncols)
			ci = s->cols[i];
		if (rfmt != RFMT_TEXT)
			ci.binary = 1; /* a Describe of the statement says text */
		if (ci.rule) {
			r = ci.textlike ? sl_mask_column(s->mplan, (enum sl_mask_style)ci.style, v,
							 len, &s->mval)
					: SL_MASK_TO_NULL;
			s->mstats.columns++;
			s->mstats_any = 1;
		} else if (ci.scan) {
			struct sl_mask_stats st = {0};

			r = sl_mask_value(s->mplan, s->w->mscratch, v, len, &s->mval, &st);
			if (r == SL_MASK_UNCHANGED && ci.binary && !ci.textlike)
				r = mask_binary_number(s, i < s->ncols ? ci.oid : 0, v, len, &st);
			if (r != SL_MASK_UNCHANGED) {
				for (unsigned d = 0; d < SL_MASK_MAX_DETECTORS; d++)
					s->mstats.hits[d] += st.hits[d];
				s->mstats_any = 1;
				if (!ci.textlike)
					r = SL_MASK_TO_NULL; /* type-safe: never a mangled number */
			}
		}
		if (r < 0)
			r = SL_MASK_TO_NULL; /* cannot mask: withhold (fail closed) */
		if (r == SL_MASK_TO_NULL) {
			acts[i].act = 1;
			rebuild = 1;
		} else if (r == SL_MASK_REPLACED) {
			acts[i].act = 2;
			acts[i].roff = (uint32_t)before;
			acts[i].rlen = (uint32_t)(s->mval.len - before);
			rebuild = 1;
		}
	}
	if (!rebuild) {
		cli_send(s, msg, total);
		return 0;
	}
	s->mout.len = 0;
	s->mout.off = 0;
	sl_buf_append_u8(&s->mout, 'D');
	sl_buf_append_u32be(&s->mout, 0);
	sl_buf_append_u16be(&s->mout, n);
	for (uint16_t i = 0; i < n; i++) {
		if (s->lens[i] < 0 || acts[i].act == 1) {
			sl_buf_append_u32be(&s->mout, 0xffffffffu);
		} else if (acts[i].act == 2) {
			sl_buf_append_u32be(&s->mout, acts[i].rlen);
			sl_buf_append(&s->mout, s->mval.data + acts[i].roff, acts[i].rlen);
		} else {
			sl_buf_append_u32be(&s->mout, (uint32_t)s->lens[i]);
			sl_buf_append(&s->mout, msg + s->offs[i], (size_t)s->lens[i]);
		}
	}
	{
		uint32_t l = (uint32_t)(s->mout.len - 1);

		s->mout.data[1] = (uint8_t)(l >> 24);
		s->mout.data[2] = (uint8_t)(l >> 16);
		s->mout.data[3] = (uint8_t)(l >> 8);
		s->mout.data[4] = (uint8_t)l;
	}
	cli_send(s, s->mout.data, s->mout.len);
	return 0;
}

/* Masks a free-text value (CopyData line, notification payload, error
 * field) into s->mval; returns a pointer/length to send. Values that would
 * become NULL are starred out instead, keeping tabs and newlines. */
static void
mask_text(struct pg_session *s, uint8_t *v, size_t len, const uint8_t **out, size_t *outlen)
{
	struct sl_mask_stats st = {0};
	int r;

	s->mval.len = 0;
	r = sl_mask_value(s->mplan, s->w->mscratch, v, len, &s->mval, &st);
	if (r != SL_MASK_UNCHANGED) {
		for (unsigned d = 0; d < SL_MASK_MAX_DETECTORS; d++)
			s->mstats.hits[d] += st.hits[d];
		s->mstats_any = 1;
	}
	if (r == SL_MASK_REPLACED) {
		*out = s->mval.data;
		*outlen = s->mval.len;
		return;
	}
	if (r < 0 || r == SL_MASK_TO_NULL) {
		for (size_t i = 0; i < len; i++)
			if (v[i] != '\t' && v[i] != '\n')
				v[i] = '*';
	}
	*out = v;
	*outlen = len;
}

/* CopyData ('d'), NotificationResponse ('A'), Error/Notice ('E'/'N'),
 * ParameterStatus ('S'). */
/* What replaces the message of a server error or notice whose text may
 * carry masked values (mask_message). */
static void
withheld_text(const uint8_t *msg, size_t total, char *buf, size_t len)
{
	struct sl_pg_error_fields f;

	memset(&f, 0, sizeof(f));
	sl_pg_parse_error(msg, total, &f);
	snprintf(buf, len,
		 "sluice: the server's message is withheld: the statement reads a masked "
		 "column, and the text could carry its values (SQLSTATE %s)",
		 f.sqlstate ? f.sqlstate : "?");
}

static void
mask_message(struct pg_session *s, uint8_t *msg, size_t total)
{
	struct sl_buf *o = &s->mout;
	const uint8_t *mv;
	size_t ml;

	o->len = 0;
	o->off = 0;
	sl_buf_append_u8(o, msg[0]);
	sl_buf_append_u32be(o, 0);
	if (msg[0] == 'd') {
		mask_text(s, msg + 5, total - 5, &mv, &ml);
		sl_buf_append(o, mv, ml);
	} else if (msg[0] == 'S') {
		const char *name, *value;

		if (sl_pg_parse_param_status(msg, total, &name, &value) != 0) {
			cli_send(s, msg, total);
			return;
		}
		sl_buf_append_cstr(o, name);
		if (ents_errtainted(s)) {
			/* set_config(name, <a masked column>) from inside a
			 * function: the reported value may be one */
			sl_buf_append_cstr(o, "********");
		} else {
			mask_text(s, (uint8_t *)value, strlen(value), &mv, &ml);
			sl_buf_append(o, mv, ml);
			sl_buf_append_u8(o, 0);
		}
	} else if (msg[0] == 'A') {
		uint32_t pid;
		const char *chan, *payload;

		if (sl_pg_parse_notification(msg, total, &pid, &chan, &payload) != 0) {
			cli_send(s, msg, total);
			return;
		}
		sl_buf_append_u32be(o, pid);
		sl_buf_append_cstr(o, chan);
		mask_text(s, (uint8_t *)payload, strlen(payload), &mv, &ml);
		sl_buf_append(o, mv, ml);
		sl_buf_append_u8(o, 0);
	} else {
		/* Error/Notice: every field but severity, code and location.
		 * While a statement that reads a masked column runs, the text
		 * fields are withheld: they may quote its values, which no
		 * column rule can find in free text. Identifiers stay. */
		struct sl_rd r;
		uint8_t code;
		int withhold = ents_errtainted(s);
		char wmsg[200];

		sl_rd_init(&r, msg + 5, total - 5);
		while (sl_rd_u8(&r, &code) == 0 && code != 0) {
			const char *v;
			size_t vl;

			if (sl_rd_cstr(&r, &v, &vl) != 0)
				break;
			if (withhold && code == 'M') {
				withheld_text(msg, total, wmsg, sizeof(wmsg));
				v = wmsg;
				vl = strlen(wmsg);
			} else if (withhold && strchr("SVCPpFLRstcdn", code) == NULL) {
				continue; /* DETAIL, HINT, CONTEXT, internal query */
			}
			sl_buf_append_u8(o, code);
			if (strchr("SVCPpFLR", code) != NULL || (withhold && code == 'M')) {
				sl_buf_append(o, v, vl);
			} else {
				mask_text(s, (uint8_t *)v, vl, &mv, &ml);
				sl_buf_append(o, mv, ml);
			}
			sl_buf_append_u8(o, 0);
		}
		sl_buf_append_u8(o, 0);
	}
	{
		uint32_t l = (uint32_t)(o->len - 1);

		o->data[1] = (uint8_t)(l >> 24);
		o->data[2] = (uint8_t)(l >> 16);
		o->data[3] = (uint8_t)(l >> 8);
		o->data[4] = (uint8_t)l;
	}
	cli_send(s, o->data, o->len);
}

static void
process_upstream(struct pg_session *s)
{
	struct sl_buf *in;

	if (!s->up_open)
		return;
	in = &s->upc->in;
	while (s->state != PG_ST_CLOSING && !s->scram_busy) {
		uint8_t type;
		size_t total;
		const uint8_t *msg;
		struct entry *e0;
		int r;

		if (s->state == PG_ST_UPCONN) {
			/* Answer to our SSLRequest: one byte. */
			uint8_t c;

			if (sl_buf_unread(in) == 0)
				break;
			c = *sl_buf_head(in);
			sl_buf_consume(in, 1);
			if (c != 'S' || sl_buf_unread(in) != 0 || s->gw->up_tls == NULL) {
				fatal(s, "08006", "sluice: the upstream server refused TLS");
				return;
			}
			if (up_tls_start(s) != 0)
				fatal(s, "08006", "sluice: TLS to the upstream server failed");
			return;
		}
		r = sl_pg_frame(sl_buf_head(in), sl_buf_unread(in), s->gw->max_message, &type,
				&total);
		if (r == SL_AGAIN)
			break;
		if (r != 0) {
			fatal(s, "08P01",
			      r == SL_ETOOBIG
				      ? "sluice: upstream message exceeds gateway.max_message_bytes"
				      : "sluice: protocol violation from the upstream server");
			return;
		}
		msg = sl_buf_head(in);
		if (s->state == PG_ST_UPAUTH || s->state == PG_ST_UPINIT) {
			r = upstream_login_msg(s, type, msg, total);
			if (r < 0)
				return;
			if (r == 1) {
				if (type == 'S') {
					const char *k, *v;

					if (sl_pg_parse_param_status(msg, total, &k, &v) == 0 &&
					    track_param(s, k, v) != 0)
						return;
				}
				cli_send(s, msg, total);
			}
			sl_buf_consume(in, total);
			if (s->state == PG_ST_READY) {
				sl_stream_flush(&s->cli);
				sl_stream_read_start(&s->cli);
				process_client(s);
			}
			continue;
		}
		/* A RowDescription or NoData outside a simple Query answers
		 * the oldest pending Describe; sluice's own stays here. */
		if ((type == 'T' || type == 'n') &&
		    ((e0 = ent_head(s)) == NULL || e0->kind != ENT_QUERY) && dq_pop(s) == 1) {
			if (type == 'T')
				on_row_desc(s, msg, total);
			else
				s->ncols = 0;
			sl_buf_consume(in, total);
			continue;
		}
		if (s->mplan != NULL) {
			/* Masking: values are rewritten before anything is relayed. */
			if (type == 'D') {
				if (mask_row(s, (uint8_t *)msg, total) != 0)
					return;
				sl_buf_consume(in, total);
				continue;
			}
			if (type == 'T')
				on_row_desc(s, msg, total);
			if (type == 'd' || type == 'A' || type == 'N') {
				mask_message(s, (uint8_t *)msg, total);
				sl_buf_consume(in, total);
				continue;
			}
			if (type == 'S') {
				/* set_config('application_name', (SELECT ssn ...))
				 * makes the server report a row value. */
				const char *k, *v;

				if (sl_pg_parse_param_status(msg, total, &k, &v) == 0 &&
				    track_param(s, k, v) != 0)
					return;
				mask_message(s, (uint8_t *)msg, total);
				sl_buf_consume(in, total);
				continue;
			}
		}
		switch (type) {
		case 'D': {
			/* Fast path: forward a run of DataRows in one copy. */
			size_t run = total;
			struct entry *e = ent_head(s);
			int64_t nrows = 1;

			for (;;) {
				uint8_t t2;
				size_t tot2;

				if (sl_pg_frame(msg + run, sl_buf_unread(in) - run,
						s->gw->max_message, &t2, &tot2) != 0 ||
				    t2 != 'D')
					break;
				run += tot2;
				nrows++;
			}
			(void)e;
			cli_send(s, msg, run);
			sl_buf_consume(in, run);
			continue;
		}
		case 'E':
			on_server_error(s, msg, total);
			break;
		case 'Z':
			on_ready(s, msg, total);
			break;
		case 'C':
		case 'I':
			on_command_complete(s, msg, total);
			break;
		case 's': {
			struct entry *e = ent_head(s);

			cli_send(s, msg, total);
			if (e && e->kind == ENT_EXEC) {
				snprintf(e->tag, sizeof(e->tag), "PORTAL SUSPENDED");
				ent_finish(s, e, NULL, NULL);
				ent_pop(s);
			}
			break;
		}
		case 'S': {
			const char *k, *v;

			if (sl_pg_parse_param_status(msg, total, &k, &v) == 0 &&
			    track_param(s, k, v) != 0)
				return;
			cli_send(s, msg, total);
			break;
		}
		case 'K':
			/* A new BackendKeyData mid-session is not expected. */
			break;
		case 'G': /* CopyInResponse */
			if (!s->copy_gate) {
				/* a COPY FROM STDIN sluice did not see coming: the
				 * client's messages since may already be counted */
				fatal(s, "08P01",
				      "sluice: unexpected COPY FROM STDIN from the upstream "
				      "server");
				return;
			}
			s->copy_in = 1;
			s->copy_data = 0;
			s->copy_resume = 1;
			cli_send(s, msg, total);
			break;
		case '1': /* ParseComplete */
		case '2': /* BindComplete */
		case '3': /* CloseComplete */
			if (op_answered(s, type) != 0) {
				fatal(s, "08P01",
				      "sluice: unexpected answer from the upstream server");
				return;
			}
			cli_send(s, msg, total);
			break;
		default:
			cli_send(s, msg, total);
			break;
		}
		sl_buf_consume(in, total);
	}
	if (s->state == PG_ST_CLOSING)
		return;
	if (s->cli_open)
		sl_stream_flush(&s->cli);
	results_record(s);
	/* Backpressure: a slow client stops us reading the server. */
	if (sl_stream_backlog(&s->cli) >= SL_STREAM_HIGH_WATER && s->up_open)
		sl_stream_read_stop(&s->upc->st);
	/* A barrier (exact lexing needs settled settings) lifts once idle. */
	if (s->barrier && s->ents_len == 0) {
		s->barrier = 0;
		s->hold = 0;
		s->copy_resume = 0;
		process_client(s);
	}
	/* COPY IN began, or the statement that might start one is over */
	if (s->copy_resume && s->state == PG_ST_READY) {
		s->copy_resume = 0;
		process_client(s);
	}
}

static void
up_read_cb(struct sl_stream *st, size_t n)
{
	struct pg_session *s = st->owner;

	s->in_process = 1;
	process_upstream(s);
	charge_buffers(s);
	s->in_process = 0;
	maybe_free(s);
}

static void
up_eof_cb(struct sl_stream *st, int err)
{
	struct pg_session *s = st->owner;

	if (s->state == PG_ST_CLOSING)
		return;
	if (s->state == PG_ST_READY)
		fatal(s, "08006", "sluice: the upstream server closed the connection");
	else
		fatal(s, "08006", "sluice: the upstream server closed the connection during login");
}

static void
up_drain_cb(struct sl_stream *st)
{
	struct pg_session *s = st->owner;

	/* Upstream caught up: read the client again. */
	if (s->state == PG_ST_READY && !s->hold)
		sl_stream_read_start(&s->cli);
	if (s->state == PG_ST_READY) {
		charge_buffers(s); /* its backlog may have counted */
		message_deadline_check(s);
	}
}

static void
cli_drain_cb(struct sl_stream *st)
{
	struct pg_session *s = st->owner;

	if (s->up_open && s->state == PG_ST_READY)
		sl_stream_read_start(&s->upc->st);
	if (s->state == PG_ST_READY)
		charge_buffers(s); /* its backlog may have counted */
}

/* ------------------------------------------------------------ relay: client -> server */

enum held_action { HELD_FORWARD = 1, HELD_SUBST_QUERY, HELD_SUBST_PARSE };

static void
make_nonce(char *out, size_t len)
{
	uint8_t r[8];

	sl_random(r, sizeof(r));
	snprintf(out, len, "%02x%02x%02x%02x%02x%02x%02x%02x", r[0], r[1], r[2], r[3], r[4], r[5],
		 r[6], r[7]);
}

/* Sends the failing stand-in for a blocked statement and remembers how to
 * rewrite the server's answer. */
static void
substitute(struct pg_session *s, uint8_t type, const char *stmt_name, const char *message,
	   int outage)
{
	struct blocked_msg *b = calloc(1, sizeof(*b));
	char sql[64];
	struct sl_buf out;

	if (b == NULL) {
		fatal(s, "53200", "sluice: out of memory");
		return;
	}
	make_nonce(b->nonce, sizeof(b->nonce));
	snprintf(b->message, sizeof(b->message), "%s", message);
	/* the server fails it, and skips the batch's messages up to its Sync */
	if (type != 'Q')
		s->grp_refused = 1;
	b->outage = outage;
	b->next = s->blocked;
	s->blocked = b;
	snprintf(sql, sizeof(sql), "SLUICE_BLOCKED_%s", b->nonce);
	sl_buf_init(&out, 0);
	if (type == 'P') {
		sl_pg_put_parse(&out, stmt_name, sql, NULL, 0);
	} else if (type == 'E') {
		/* Execute of a portal that cannot exist: the server answers
		 * with an error naming it, inside the current batch. */
		sl_pg_put_execute(&out, sql, 0);
	} else {
		sl_pg_put_query(&out, sql);
	}
	up_send(s, out.data, out.len);
	sl_buf_fini(&out);
}

static void
audit_done(struct sl_completion *c)
{
	struct pg_session *s = c->arg;
	const uint8_t *msg = sl_buf_head(&s->cin);

	s->pending--;
	if (s->state == PG_ST_CLOSING) {
		maybe_free(s);
		return;
	}
	if (c->status < 0) {
		/* Fail closed: not durable, not forwarded. */
		struct entry *e = ent_last(s);

		if (e != NULL)
			e->blocked = 1;
		substitute(s, msg[0], "", audit_down_msg, 1);
	} else {
		up_send_request(s, ent_last(s), msg, s->held_len);
	}
	sl_buf_consume(&s->cin, s->held_len);
	s->hold = 0;
	s->in_process = 1;
	up_flush(s);
	process_client(s);
	s->in_process = 0;
	maybe_free(s);
}

/* ------------------------------------------------------------ review holds */

static int classify(struct pg_session *s, const char *sql, size_t len, struct sl_sql_class *tmp,
		    const struct sl_sql_class **out);
static void copy_check(struct pg_session *s, const struct sl_sql_class *cls, struct sl_decision *d);

/* The decision for an approved statement under the policies now in force
 * (they were reloaded while it waited). Returns 1, with d, if they block it
 * or it cannot be decided again (fail closed); 0 if it may run. */
static int
redecide(struct pg_session *s, const struct sl_pl_request *held, struct sl_decision *d)
{
	struct sl_sql_class tmp;
	const struct sl_sql_class *cls;
	struct sl_pl_request q = *held;

	memset(d, 0, sizeof(*d));
	d->action = SL_ACT_BLOCK;
	d->message = "it could not be decided again";
	if (held->text == NULL || classify(s, held->text, held->textlen, &tmp, &cls) != 0)
		return 1;
	q.sql = cls;
	if (sl_pl_decide(s->gw, &s->pl, &q, d) != 0) {
		d->action = SL_ACT_BLOCK;
		d->message = "it could not be decided again";
		return 1;
	}
	copy_check(s, cls, d);
	return d->action == SL_ACT_BLOCK;
}

static void
review_done_loop(struct sl_completion *c)
{
	struct pg_session *s = c->arg;
	enum sl_review_state st = (enum sl_review_state)c->state;
	struct sl_decision d2;
	int reblocked = 0;
	struct sl_pl_request r;
	struct entry *e = ent_last(s);
	const uint8_t *msg = sl_buf_head(&s->cin);
	const char *sql;
	size_t len;

	char rid[sizeof(s->review_id)];

	s->pending--;
	memcpy(rid, s->review_id, sizeof(rid));
	s->review_id[0] = '\0';
	cancel_review_set(s);
	if (s->state == PG_ST_CLOSING) {
		maybe_free(s);
		return;
	}
	struct sl_sql_class kc;

	memset(&kc, 0, sizeof(kc));
	kc.kinds = s->rkinds;
	memset(&r, 0, sizeof(r));
	r.review_id = rid[0] ? rid : NULL;
	r.proto = SL_PROTO_PG;
	r.sql = &kc;
	r.seq = e ? e->seq : ++s->reqseq;
	r.trace_id = s->rtrace[0] ? s->rtrace : NULL;
	r.span_id = s->rspan[0] ? s->rspan : NULL;
	if (s->rtext != NULL) {
		r.text = s->rtext;
		r.textlen = s->rtextlen;
		r.params_shown = s->rparams;
		r.params_shown_len = s->rparamslen;
	} else if (sl_pg_parse_query(msg, s->held_len, &sql, &len) == 0) {
		r.text = sql;
		r.textlen = len;
	}
	s->in_process = 1;
	if (st == SL_REV_APPROVED && sl_pl_check_expiry(s->gw, &s->pl) != 0) {
		/* The token ran out while the statement waited: approved or
		 * not, nothing runs on an expired identity. */
		if (e)
			e->blocked = 1;
		s->rdec.action = SL_ACT_BLOCK;
		s->rdec.message = "token expired while the statement waited for approval";
		sl_pl_record(s->gw, s->w, &s->pl, &r, &s->rdec, NULL);
		fatal(s, "28000",
		      "sluice: token expired while the statement waited for approval; it did not "
		      "run; reconnect with a fresh token");
		s->in_process = 0;
		maybe_free(s);
		return;
	}
	if (st == SL_REV_APPROVED && s->rgen != sl_gw_policies(s->gw) && redecide(s, &r, &d2) != 0)
		reblocked = 1; /* a block added while it waited applies to it too */
	if (st == SL_REV_APPROVED && !reblocked) {
		int rc;

		/* Exactly the bytes that were held are forwarded: the message
		 * never left the input buffer. */
		s->rdec.action = SL_ACT_ALLOW;
		s->comp.fn = audit_done;
		s->comp.arg = s;
		rc = sl_pl_record(s->gw, s->w, &s->pl, &r, &s->rdec, &s->comp);
		if (rc == 1) {
			s->pending++; /* audit_done forwards and resumes */
			s->in_process = 0;
			return;
		}
		if (rc < 0) {
			if (e)
				e->blocked = 1;
			substitute(s, msg[0], "", audit_down_msg, 1);
		} else {
			up_send_request(s, e, msg, s->held_len);
		}
	} else {
		char m[300];

		snprintf(m, sizeof(m), "sluice: %s",
			 st == SL_REV_EXPIRED  ? "approval timed out"
			 : st == SL_REV_DENIED ? c->text
					       : "approval cancelled");
		if (reblocked) {
			snprintf(
				m, sizeof(m),
				"sluice: the policies were reloaded while the statement waited for "
				"approval and now block it: %s",
				d2.message ? d2.message : "blocked");
			s->rdec = d2;
		}
		if (st == SL_REV_CANCELLED && c->text[0] != '\0')
			snprintf(m, sizeof(m), "sluice: approval cancelled: %s", c->text);
		if (st == SL_REV_DENIED && strncmp(c->text, "denied", 6) != 0)
			snprintf(m, sizeof(m), "sluice: approval denied: %s", c->text);
		if (e)
			e->blocked = 1;
		s->rdec.action = SL_ACT_BLOCK;
		s->rdec.message = m;
		sl_pl_record(s->gw, s->w, &s->pl, &r, &s->rdec, NULL);
		substitute(s, msg[0], "", m, 0);
	}
	sl_buf_consume(&s->cin, s->held_len);
	s->hold = 0;
	up_flush(s);
	process_client(s);
	s->in_process = 0;
	maybe_free(s);
}

/* Tells the session's cancel entry which review its held statement waits
 * for (none: review_id empty), for cancel_forward on any worker. */
static void
cancel_review_set(struct pg_session *s)
{
	int alone = 1;

	if (s->cancel == NULL)
		return;
	/* the held statement is the last entry; any statement before it that
	 * is not answered yet may be running on the server */
	for (size_t i = 0; s->review_id[0] != '\0' && i + 1 < s->ents_len; i++) {
		const struct entry *e = &s->ents[(s->ents_head + i) % s->ents_cap];

		if (!e->blocked && e->kind != ENT_SYNC)
			alone = 0;
	}
	pthread_mutex_lock(&s->gw->cancel_mu);
	snprintf(s->cancel->review, sizeof(s->cancel->review), "%s", s->review_id);
	s->cancel->review_alone = alone;
	pthread_mutex_unlock(&s->gw->cancel_mu);
}

/* Runs on the review or admin thread (or this one, on cancel). */
static void
review_done(void *arg, enum sl_review_state st, const char *reason)
{
	struct pg_session *s = arg;

	s->rcomp.state = (int)st;
	snprintf(s->rcomp.text, sizeof(s->rcomp.text), "%s", reason ? reason : "");
	s->rcomp.fn = review_done_loop;
	s->rcomp.arg = s;
	sl_worker_post(s->w, &s->rcomp);
}

static int hold_for_review_bytes(struct pg_session *s, const char *sql, size_t len,
				 const uint8_t *bytes, size_t nbytes, uint32_t kinds,
				 const struct sl_decision *d, const char *trace, const char *span);

/* Submits a held simple-protocol statement for approval. 0 = held. */
static int
hold_for_review(struct pg_session *s, const char *sql, size_t len, const struct sl_sql_class *cls,
		const struct sl_decision *d, const char *trace, const char *span)
{
	s->rtext = NULL;
	return hold_for_review_bytes(s, sql, len, (const uint8_t *)sql, len, cls->kinds, d, trace,
				     span);
}

/* Submits a held statement; bytes is everything the approval binds. */
static int
hold_for_review_bytes(struct pg_session *s, const char *sql, size_t len, const uint8_t *bytes,
		      size_t nbytes, uint32_t kinds, const struct sl_decision *d, const char *trace,
		      const char *span)
{
	struct sl_review_req q;
	struct sl_buf t;
	char kstr[256];
	int r;

	if (s->gw->review == NULL)
		return SL_ESTATE;
	/* approvers see literals masked and secrets given by name redacted
	 * (the hash binds the exact bytes); what cannot be shown so is not
	 * held for approval: nobody should approve what they cannot read */
	sl_buf_init(&t, 0);
	if ((r = sl_pl_safe_text(s->gw, s->w->mscratch, sql, len, 1, &t)) != 0) {
		sl_buf_fini(&t);
		return r;
	}
	sl_sql_kinds_str(kinds, kstr, sizeof(kstr));
	memset(&q, 0, sizeof(q));
	q.session_id = s->pl.id;
	q.subject = s->pl.ident.subject;
	q.groups = (const char *const *)s->pl.ident.groups;
	q.ngroups = s->pl.ident.ngroups;
	q.connection = s->pl.conn->name;
	q.protocol = "postgres";
	q.text = (const char *)t.data;
	q.bytes = bytes;
	q.nbytes = nbytes;
	q.policy = d->policy;
	q.rule = d->rule;
	q.trace_id = trace ? trace : s->pl.trace_id;
	q.kinds = kstr;
	q.approvers = d->approvers;
	q.napprovers = d->napprovers;
	q.min_approvals = d->min_approvals;
	q.timeout_ms = d->timeout_ms;
	q.grant_for_ms = d->grant_for_ms;
	s->rdec = *d;
	s->rkinds = kinds;
	s->rgen = sl_gw_policies(s->gw);
	if (d->message == d->reason)
		s->rdec.message = s->rdec.reason;
	snprintf(s->rtrace, sizeof(s->rtrace), "%s", trace ? trace : "");
	snprintf(s->rspan, sizeof(s->rspan), "%s", span ? span : "");
	s->pending++; /* the callback always runs */
	r = sl_review_submit(s->gw->review, &q, review_done, s, s->review_id);
	if (r != 0) {
		s->pending--;
		s->review_id[0] = '\0';
	}
	cancel_review_set(s);
	sl_buf_fini(&t);
	return r;
}

/* Whether a statement needs the server's current lexing settings. */
static int
needs_exact_lexing(const char *sql, size_t len)
{
	const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
	size_t i = 0;

	/* eight bytes at a time: a byte >= 0x80, or one equal to '\\' (its
	 * xor is zero: the classic has-zero-byte test) */
	for (; i + 8 <= len; i += 8) {
		uint64_t w, x;

		memcpy(&w, sql + i, 8);
		x = w ^ (ones * '\\');
		if (((w | ((x - ones) & ~x)) & highs) != 0)
			return 1;
	}
	for (; i < len; i++) {
		unsigned char ch = (unsigned char)sql[i];

		if (ch == '\\' || ch >= 0x80)
			return 1;
	}
	return 0;
}

/* Returns 0 to proceed, 1 to hold (barrier), or a block message in *why. */
static int
lexing_guard(struct pg_session *s, const char *sql, size_t len, const char **why)
{
	*why = NULL;
	if (!needs_exact_lexing(sql, len))
		return 0;
	if (s->ents_len > 0) {
		if (!ents_synced(s)) {
			*why = "sluice: a statement with backslashes or non-ASCII bytes cannot "
			       "follow "
			       "unsynchronised statements in a pipeline; send Sync first";
			return 0;
		}
		return 1;
	}
	if (!s->scs_on)
		*why = "sluice: standard_conforming_strings must be on for statements with "
		       "backslashes";
	else if (!s->enc_safe)
		*why = "sluice: this client_encoding is not supported for statements with "
		       "non-ASCII bytes";
	return 0;
}

/*
 * Decides one statement. On allow returns 0 with *out_kinds set; on block
 * returns 1 with msg filled. Audits the request: for an allowed request in
 * strict mode the caller must wait (returns 2 with the completion armed).
 */
/* Functions that keep or send a value beyond the statement's result, where
 * no column rule follows it: a setting (set_config; current_setting reads
 * it back), a notification's payload, another server, a large object. */
static const char *const storing_fns[] = {
	"set_config",
	"pg_notify",
	"dblink",
	"dblink_exec",
	"dblink_send_query",
	"dblink_open",
	"lo_from_bytea",
	"lo_put",
	"pg_logical_emit_message",
	NULL,
};

/* Functions that return a table's, a schema's, a database's, a query's or a
 * cursor's rows as one XML document (no column names a value there). */
static const char *const document_fns[] = {
	"table_to_xml",
	"table_to_xml_and_xmlschema",
	"query_to_xml",
	"query_to_xml_and_xmlschema",
	"cursor_to_xml",
	"schema_to_xml",
	"schema_to_xml_and_xmlschema",
	"database_to_xml",
	"database_to_xml_and_xmlschema",
	NULL,
};

/* The first of fns (NULL-terminated, unqualified names) the statement
 * calls, or NULL. Each call is in functions unqualified too. */
static const char *
calls_one_of(const struct sl_sql_class *c, const char *const *fns)
{
	for (size_t i = 0; i < c->nfunctions; i++)
		for (const char *const *f = fns; *f != NULL; f++)
			if (strcmp(c->functions[i], *f) == 0)
				return *f;
	return NULL;
}

/* Whether the statement's result lists hold a rule's column, plain or in
 * an expression, or a * over a table that has one: what a CREATE TABLE AS,
 * a view or an INSERT ... SELECT would copy. */
static int
copies_rule_column(struct pg_session *s, const struct sl_sql_class *c)
{
	enum sl_mask_style st;

	for (size_t i = 0; i < c->nresult_cols; i++)
		if (sl_mask_plan_column(s->mplan, c->result_cols[i], &st))
			return 1;
	return taint_of(s, c) != 0 || (c->result_star && masked_table_read(s, c) != NULL);
}

/*
 * Where column rules cannot follow a masked column's values, the statement
 * is refused instead of letting them pass unmasked (SELECT masks them):
 * - COPY ... TO sends rows as CopyData, which name no column. A COPY whose
 *   source is a table with a rule's column (COPY t, COPY t (cols), a query
 *   reading t, or one acting on t's whole schema like schema_to_xml) is
 *   refused; if the catalog could not be read, every COPY ... TO is.
 * - A statement whose results would carry a rule's column
 *   (copies_rule_column) and that writes (INSERT ... SELECT, CREATE TABLE AS, CREATE VIEW, UPDATE
 *   ... SET c = (SELECT ...), MERGE) or calls a function that keeps or
 *   sends the value (set_config, pg_notify, dblink, large objects): the
 *   copy would be read back later under another name, unmasked.
 * The table is matched as a block rule's "schema.table" would be (an
 * unqualified name matches it in any schema).
 */
static void
copy_check(struct pg_session *s, const struct sl_sql_class *cls, struct sl_decision *d)
{
	const struct mtable *m;
	const char *doc;

	if (d->action == SL_ACT_BLOCK || !column_rules(s))
		return;
	if ((cls->kinds & (SL_SQL_INSERT | SL_SQL_UPDATE | SL_SQL_MERGE | SL_SQL_DDL)) ||
	    calls_one_of(cls, storing_fns) != NULL) {
		if (copies_rule_column(s, cls)) {
			snprintf(d->reason, sizeof(d->reason), "%s",
				 "sluice: this statement would store or send a masked column's "
				 "values where column rules cannot follow them (a table, view, "
				 "setting or notification read back later); read them with "
				 "SELECT");
			goto block;
		}
	}
	if (!(cls->kinds & SL_SQL_COPY_TO))
		goto more;
	if (s->catalog_failed) {
		snprintf(d->reason, sizeof(d->reason), "%s",
			 "sluice: COPY ... TO is refused while column rules apply and the "
			 "catalog could not be read; use SELECT");
		goto block;
	}
	if ((m = masked_table_read(s, cls)) != NULL) {
		snprintf(d->reason, sizeof(d->reason),
			 "sluice: COPY ... TO of %s.%s would pass masked column %s; use SELECT",
			 m->nsp, m->rel, m->col);
		goto block;
	}
more:
	if ((doc = calls_one_of(cls, document_fns)) != NULL &&
	    (s->catalog_failed || strncmp(doc, "table_", 6) != 0 ||
	     masked_table_read(s, cls) != NULL)) {
		snprintf(d->reason, sizeof(d->reason),
			 "sluice: %s returns rows as one document, where column rules cannot "
			 "follow a masked column; use SELECT",
			 doc);
		goto block;
	}
	if (cls->creates_view && (m = masked_table_read(s, cls)) != NULL) {
		/* Every view over such a table is followed at login (catalog_ask):
		 * an agent's views would be its to multiply (thousands of
		 * columns each, every session's login reads them). */
		snprintf(d->reason, sizeof(d->reason),
			 "sluice: a view over %.40s.%.40s (masked column %.40s) is refused while "
			 "column rules apply",
			 m->nsp, m->rel, m->col);
		goto block;
	}
	if ((cls->kinds & SL_SQL_DDL) && !(cls->kinds & SL_SQL_SELECT) &&
	    (m = masked_table_read(s, cls)) != NULL) {
		/* ALTER TABLE ... RENAME COLUMN, a generated column, a rule or
		 * a trigger copying NEW.col: the column out of the rules' reach
		 * for every later session */
		snprintf(d->reason, sizeof(d->reason),
			 "sluice: DDL on %.40s.%.40s (masked column %.40s) is refused while "
			 "column rules apply",
			 m->nsp, m->rel, m->col);
		goto block;
	}
	return;
block:
	d->action = SL_ACT_BLOCK;
	d->message = d->reason;
	d->rule = NULL;
}

/* Decides and records a simple-protocol statement. Returns 0 to forward it
 * (or, with *waiting, once its record or review is done), 1 when blocked and
 * 2 when its record cannot be made (msg says why; both are refused), -1 when
 * the token has expired. */
static int
decide(struct pg_session *s, const char *sql, size_t len, const struct sl_sql_class *cls,
       const char *trace, const char *span, struct entry *e, char *msg, size_t msglen, int *waiting)
{
	struct sl_pl_request r;
	struct sl_decision d;
	int rc;

	memset(&r, 0, sizeof(r));
	r.proto = SL_PROTO_PG;
	r.text = sql;
	r.textlen = len;
	r.sql = cls;
	r.trace_id = trace;
	r.span_id = span;
	r.seq = ++s->reqseq;
	e->seq = r.seq;
	rc = sl_pl_decide(s->gw, &s->pl, &r, &d);
	if (rc == SL_EEXPIRED) {
		snprintf(msg, msglen, "token expired");
		return -1;
	}
	if (rc != 0) {
		d.action = SL_ACT_BLOCK;
		d.message = "sluice: policy evaluation failed";
	}
	copy_check(s, cls, &d);
	if (d.action == SL_ACT_REVIEW) {
		int hr = hold_for_review(s, sql, len, cls, &d, trace, span);

		if (hr == 0) {
			*waiting = 1;
			return 0;
		}
		if (hr == SL_REVIEW_GRANTED) {
			/* an approved grant_for window covers it (audited) */
			d.action = SL_ACT_ALLOW;
			d.message = NULL;
		} else {
			d.action = SL_ACT_BLOCK;
			snprintf(d.reason, sizeof(d.reason), "%s",
				 "statement requires approval, and the approval queue refused it");
			d.message = d.reason;
		}
	}
	*waiting = 0;
	if (d.action == SL_ACT_BLOCK) {
		snprintf(msg, msglen, "%s", d.message ? d.message : "blocked by policy");
		e->blocked = 1;
		sl_pl_record(s->gw, s->w, &s->pl, &r, &d, NULL);
		return 1;
	}
	s->comp.fn = audit_done;
	s->comp.arg = s;
	rc = sl_pl_record(s->gw, s->w, &s->pl, &r, &d, &s->comp);
	if (rc == 1) {
		s->pending++;
		*waiting = 1;
		return 0;
	}
	if (rc < 0) {
		snprintf(msg, msglen, "%s", audit_down_msg);
		e->blocked = 1;
		return 2;
	}
	return 0;
}

/* Classifies with the worker's cache and folds in what EXECUTE names.
 * Returns 1 when a name's meaning awaits an answer from the server. */
static int
classify(struct pg_session *s, const char *sql, size_t len, struct sl_sql_class *tmp,
	 const struct sl_sql_class **out)
{
	const struct sl_sql_class *c;
	int wait = 0;

	if (sl_sql_cache_classify(s->w->sqlcache, sql, len, &c) != 0)
		return SL_ENOMEM;
	*out = c;
	if (c->nexecuted == 0)
		return 0;
	*tmp = *c;
	for (size_t i = 0; i < c->nexecuted; i++) {
		struct stmt *t = stmt_lookup(s, c->executed[i], &wait);

		/* Unknown name: it was never allowed here, so refuse. */
		tmp->kinds |= t && !t->unknown ? t->kinds : SL_SQL_UNPARSEABLE;
	}
	*out = tmp;
	return wait;
}

/*
 * Whether the computed columns of a statement's results (an expression, a
 * literal: RowDescription names no table column for them) may carry the
 * value of a column a rule masks: it names such a column inside its SELECT
 * or RETURNING list (ssn || '', upper(ssn), a scalar subquery selecting
 * ssn, a subquery's computed column). Then every such result column is
 * masked with that rule's style (over-masking: count(ssn) is exempt, but
 * length(ssn) is not). FETCH and EXECUTE show nothing of the statement
 * whose rows they return: with column rules at all, their computed columns
 * are masked in full. Returns style + 1, or 0.
 */
static uint8_t
taint_of(struct pg_session *s, const struct sl_sql_class *c)
{
	enum sl_mask_style st;

	if (c == NULL || !column_rules(s))
		return 0;
	for (size_t i = 0; i < c->ntarget_cols; i++)
		if (sl_mask_plan_column(s->mplan, c->target_cols[i], &st))
			return (uint8_t)(st + 1);
	if (c->indirect)
		return (uint8_t)(SL_MASK_FULL + 1);
	/* A rule's column under a name the statement gives it (FROM t AS
	 * a(x, y), WITH c(x) AS ...) or inside a whole row (a::text,
	 * to_jsonb(a)): its name is nowhere in the result lists. Over a
	 * table with a rule's column, computed columns are masked in full. */
	if ((c->col_renames || result_rowref(c)) && masked_table_read(s, c) != NULL)
		return (uint8_t)(SL_MASK_FULL + 1);
	return 0;
}

/* A result list names a relation (its alias or its table name) as a
 * column: that relation's whole row. */
static int
result_rowref(const struct sl_sql_class *c)
{
	for (size_t i = 0; i < c->nresult_cols; i++) {
		for (size_t j = 0; j < c->naliases; j++)
			if (strcmp(c->result_cols[i], c->aliases[j]) == 0)
				return 1;
		for (size_t j = 0; j < c->ntables; j++) {
			const char *t = c->tables[j], *dot = strrchr(t, '.');

			if (strcmp(c->result_cols[i], dot ? dot + 1 : t) == 0)
				return 1;
		}
	}
	return 0;
}

/* The table with a rule's column the statement reads (by name, as a block
 * rule's "schema.table" would match), or NULL. */
static const struct mtable *
masked_table_read(const struct pg_session *s, const struct sl_sql_class *c)
{
	for (size_t j = 0; j < s->nmtables; j++) {
		const struct mtable *m = &s->mtables[j];
		char name[sizeof(m->nsp) + sizeof(m->rel)], *pat = name;

		snprintf(name, sizeof(name), "%s.%s", m->nsp, m->rel);
		if (sl_policy_reaches(&pat, 1, c))
			return m;
	}
	return NULL;
}

/* Whether the server's errors, notices and parameter reports while the
 * statement runs may carry a masked column's values: it reads a table with
 * a rule's column anywhere (a cast in a WHERE clause fails with the value
 * in the message: invalid input syntax for type integer: "<value>"; a
 * unique violation's DETAIL shows the key), or its rows come from elsewhere,
 * or the catalog could not be read. Column rules follow result columns
 * only; the text of those messages names none. */
static uint8_t
errtaint_of(struct pg_session *s, const struct sl_sql_class *c)
{
	if (!column_rules(s))
		return 0;
	if (c == NULL || s->catalog_failed || c->indirect || taint_of(s, c) != 0)
		return 1;
	return masked_table_read(s, c) != NULL;
}

/* Some statement in flight may make the server's messages carry masked
 * values (its own or one before it in a pipeline): fail closed. */
static int
ents_errtainted(const struct pg_session *s)
{
	for (size_t i = 0; i < s->ents_len; i++)
		if (s->ents[(s->ents_head + i) % s->ents_cap].errtaint)
			return 1;
	return 0;
}

/* SQL PREPAREs count once the server says the statement ran (grp: its sync
 * group; poison: a failure may come after they ran). */
static int
remember_prepared(struct pg_session *s, const struct sl_sql_class *c, const char *sql, size_t len,
		  uint64_t grp, int poison)
{
	for (size_t i = 0; i < c->nprepared; i++) {
		struct stmt *t = stmt_new(s, c->prepared[i], sql, len, c->prepared_kinds[i]);

		if (t != NULL) {
			t->taint = taint_of(s, c);
			t->errtaint = errtaint_of(s, c);
		}
		if (t == NULL || op_push(s, OP_PREPARE, NULL, t, NULL, grp, poison) != 0)
			return SL_ENOMEM;
	}
	return 0;
}

static const char pipeline_wait_msg[] =
	"sluice: a prepared statement changed earlier in this unsynchronised pipeline; send "
	"Sync and wait for its answer first";

/*
 * The checks a statement text (Query or Parse) passes before its decision:
 * the lexing guard, then classification. Returns -1 (session ended), 1 (hold
 * the message: earlier answers must come first), or 0 with either *why (a
 * refusal message) or *c set.
 */
static int
vet_text(struct pg_session *s, const char *sql, size_t len, struct sl_sql_class *tmp,
	 const struct sl_sql_class **c, const char **why)
{
	int r = lexing_guard(s, sql, len, why);

	if (r == 1) {
		s->barrier = 1;
		return 1;
	}
	if (*why != NULL)
		return 0;
	r = classify(s, sql, len, tmp, c);
	if (r < 0) {
		fatal(s, "53200", "sluice: out of memory");
		return -1;
	}
	if (r == 1 && ents_synced(s)) {
		s->barrier = 1;
		return 1;
	}
	if (r == 1)
		*why = pipeline_wait_msg;
	return 0;
}

/* Returns 0 consumed, 1 hold (message stays in cin). */
static int
handle_query(struct pg_session *s, const uint8_t *msg, size_t total)
{
	const char *sql, *why;
	size_t len;
	const struct sl_sql_class *c;
	struct sl_sql_class tmp;
	char trace[33] = "", span[17] = "", bmsg[256];
	struct entry *e;
	int waiting, r;

	if (sl_pg_parse_query(msg, total, &sql, &len) != 0) {
		fatal(s, "08P01", "sluice: malformed Query message");
		return -1;
	}
	r = vet_text(s, sql, len, &tmp, &c, &why);
	if (r != 0)
		return r;
	e = ent_push(s, ENT_QUERY);
	if (e == NULL) {
		fatal(s, "54000", "sluice: too many statements in flight");
		return -1;
	}
	if (why == NULL) {
		e->taint = taint_of(s, c);
		e->errtaint = errtaint_of(s, c);
	}
	if (sl_pl_trace_from_text(sql, len, trace, span))
		memcpy(e->trace_id, trace, sizeof(trace));
	if (why != NULL) {
		struct sl_sql_class un;

		memset(&un, 0, sizeof(un));
		un.kinds = SL_SQL_UNPARSEABLE;
		e->blocked = 1;
		e->seq = ++s->reqseq;
		{
			struct sl_pl_request rq = {.proto = SL_PROTO_PG,
						   .text = sql,
						   .textlen = len,
						   .sql = &un,
						   .seq = e->seq,
						   .trace_id = trace[0] ? trace : NULL};
			struct sl_decision d = {.action = SL_ACT_BLOCK, .message = why};

			sl_pl_record(s->gw, s->w, &s->pl, &rq, &d, NULL);
		}
		substitute(s, 'Q', "", why, 0);
		return 0;
	}
	r = decide(s, sql, len, c, trace[0] ? trace : NULL, span[0] ? span : NULL, e, bmsg,
		   sizeof(bmsg), &waiting);
	if (r < 0) {
		fatal(s, "28000", "sluice: token expired; reconnect with a fresh token");
		return -1;
	}
	if (r >= 1) { /* blocked (1) or not recordable (2) */
		substitute(s, 'Q', "", bmsg, r == 2);
		return 0;
	}
	if (c->nprepared > 0 && !held_ok(s, len * c->nprepared))
		return -1;
	if (remember_prepared(s, c, sql, len, s->grp_sent - 1, c->nstatements > 1) != 0) {
		fatal(s, "53200", "sluice: out of memory");
		return -1;
	}
	if (c->kinds & SL_SQL_COPY_FROM)
		e->copy_gate = s->copy_gate = 1;
	if (waiting) {
		s->held_len = total;
		return 1;
	}
	up_send(s, msg, total);
	return 0;
}

/* A statement or portal name as the server keys it: its first
 * NAMEDATALEN - 1 = 63 bytes (the server's hash tables compare and store no
 * more, byte-wise, whatever the encoding). Two names that differ after that
 * are one statement to the server, so they must be one to sluice too: else
 * a Bind to one and an Execute of the other would run a statement sluice
 * never decided for that name. Returns name, or buf holding the cut one. */
#define PG_NAME_MAX 63
static const char *
pg_name(const char *name, char buf[PG_NAME_MAX + 1])
{
	if (strnlen(name, PG_NAME_MAX + 1) <= PG_NAME_MAX)
		return name;
	memcpy(buf, name, PG_NAME_MAX);
	buf[PG_NAME_MAX] = '\0';
	return buf;
}

static int
handle_parse(struct pg_session *s, const uint8_t *msg, size_t total)
{
	struct sl_pg_parse_msg p;
	const char *why;
	const struct sl_sql_class *c;
	struct sl_sql_class tmp;
	char nbuf[PG_NAME_MAX + 1];
	int r;

	if (sl_pg_parse_parse(msg, total, &p) != 0) {
		fatal(s, "08P01", "sluice: malformed Parse message");
		return -1;
	}
	p.stmt = pg_name(p.stmt, nbuf);
	if (!held_ok(s, strlen(p.stmt) + p.sqllen))
		return -1;
	r = vet_text(s, p.sql, p.sqllen, &tmp, &c, &why);
	if (r != 0)
		return r;
	if (why == NULL) {
		/* Decide now so a forbidden statement never reaches the server;
		 * the request itself is audited at Execute. */
		struct sl_pl_request rq;
		struct sl_decision d;
		char trace[33] = "", span[17] = "";

		memset(&rq, 0, sizeof(rq));
		rq.proto = SL_PROTO_PG;
		rq.text = p.sql;
		rq.textlen = p.sqllen;
		rq.sql = c;
		if (sl_pl_trace_from_text(p.sql, p.sqllen, trace, span)) {
			rq.trace_id = trace;
			rq.span_id = span;
		}
		r = sl_pl_decide(s->gw, &s->pl, &rq, &d);
		if (r == SL_EEXPIRED) {
			fatal(s, "28000", "sluice: token expired; reconnect with a fresh token");
			return -1;
		}
		if (r == 0)
			copy_check(s, c, &d);
		if (r == 0 && d.action == SL_ACT_REVIEW) {
			/* Parsing runs nothing: the approval is asked for when
			 * the statement is executed, with its parameters. */
			struct stmt *t = stmt_new(s, p.stmt, p.sql, p.sqllen, c->kinds);

			if (t != NULL) {
				t->taint = taint_of(s, c);
				t->errtaint = errtaint_of(s, c);
				t->review = 1;
				t->dec = d;
				if (d.message == d.reason)
					t->dec.message = t->dec.reason;
			}
			if (t == NULL || op_push(s, OP_PARSE, NULL, t, NULL, s->grp_sent, 0) != 0) {
				fatal(s, "53200", "sluice: out of memory");
				return -1;
			}
			up_send(s, msg, total);
			return 0;
		}
		if (r != 0 || d.action != SL_ACT_ALLOW) {
			char bmsg[256];

			snprintf(bmsg, sizeof(bmsg), "%s",
				 r == 0 && d.message ? d.message : "blocked by policy");
			rq.seq = ++s->reqseq;
			d.action = SL_ACT_BLOCK;
			d.message = bmsg;
			sl_pl_record(s->gw, s->w, &s->pl, &rq, &d, NULL);
			/* The substitute fails to parse: the server keeps
			 * whatever the name meant before, and so do we. */
			substitute(s, 'P', p.stmt, bmsg, 0);
			return 0;
		}
		{
			struct stmt *t = stmt_new(s, p.stmt, p.sql, p.sqllen, c->kinds);

			if (t != NULL) {
				t->taint = taint_of(s, c);
				t->errtaint = errtaint_of(s, c);
			}
			if (t == NULL || op_push(s, OP_PARSE, NULL, t, NULL, s->grp_sent, 0) != 0 ||
			    remember_prepared(s, c, p.sql, p.sqllen, s->grp_sent, 1) != 0) {
				fatal(s, "53200", "sluice: out of memory");
				return -1;
			}
		}
		up_send(s, msg, total);
		return 0;
	}
	{
		struct sl_sql_class un;
		struct sl_pl_request rq;
		struct sl_decision d = {.action = SL_ACT_BLOCK, .message = why};

		memset(&un, 0, sizeof(un));
		un.kinds = SL_SQL_UNPARSEABLE;
		memset(&rq, 0, sizeof(rq));
		rq.proto = SL_PROTO_PG;
		rq.text = p.sql;
		rq.textlen = p.sqllen;
		rq.sql = &un;
		rq.seq = ++s->reqseq;
		sl_pl_record(s->gw, s->w, &s->pl, &rq, &d, NULL);
		substitute(s, 'P', p.stmt, why, 0);
	}
	return 0;
}

static int
handle_bind(struct pg_session *s, const uint8_t *msg, size_t total)
{
	struct sl_pg_bind_msg b;
	struct portal *p;
	struct stmt *st;
	char pbuf[PG_NAME_MAX + 1], sbuf[PG_NAME_MAX + 1];
	int wait, dup;

	if (sl_pg_parse_bind(msg, total, &b) != 0) {
		fatal(s, "08P01", "sluice: malformed Bind message");
		return -1;
	}
	b.portal = pg_name(b.portal, pbuf);
	b.stmt = pg_name(b.stmt, sbuf);
	/* A named portal that exists: the server refuses the Bind (42P03)
	 * and keeps the old portal, and sluice refuses it first (the portal
	 * map changes only with the server's answers anyway). The unnamed
	 * portal is replaced by a Bind that succeeds. */
	wait = 0;
	p = b.portal[0] != '\0' ? portal_lookup(s, b.portal, &wait) : NULL;
	dup = p != NULL;
	st = dup || wait ? NULL : stmt_lookup(s, b.stmt, &wait);
	if (wait && ents_synced(s)) {
		s->barrier = 1;
		return 1;
	}
	if (dup || wait || st == NULL || st->unknown) {
		/* Only statements we decided on run: a name we do not know (or
		 * whose meaning is uncertain) is refused, never left to the
		 * server to resolve. */
		const char *why = dup	 ? "sluice: this portal already exists; Close it before "
					   "binding it again"
				  : wait ? pipeline_wait_msg
					 : "sluice: this prepared statement is unknown or was "
					   "redefined without Close; Close it and prepare it again";
		struct sl_sql_class un;
		struct sl_pl_request rq;
		struct sl_decision d = {.action = SL_ACT_BLOCK, .message = why};

		memset(&un, 0, sizeof(un));
		un.kinds = SL_SQL_UNPARSEABLE;
		memset(&rq, 0, sizeof(rq));
		rq.proto = SL_PROTO_PG;
		rq.text = b.stmt;
		rq.textlen = strlen(b.stmt);
		rq.sql = &un;
		rq.seq = ++s->reqseq;
		sl_pl_record(s->gw, s->w, &s->pl, &rq, &d, NULL);
		substitute(s, 'E', "", why, 0);
		return 0;
	}
	{
		if (!held_ok(s, strlen(b.portal) + b.params_len + b.nparams))
			return -1;
		p = calloc(1, sizeof(*p));
		if (p == NULL || (p->name = strdup(b.portal)) == NULL) {
			free(p);
			fatal(s, "53200", "sluice: out of memory");
			return -1;
		}
		p->held = &s->held_bytes;
		p->cost = sizeof(*p) + strlen(b.portal);
		s->held_bytes += p->cost;
		st->refs++;
		p->st = st;
		for (uint16_t i = 0; i < b.nresult_formats; i++) {
			int bin = b.result_formats[2 * i] != 0 || b.result_formats[2 * i + 1] != 0;

			if (i == 0)
				p->rfmt = bin ? RFMT_BINARY : RFMT_TEXT;
			else if (bin != (p->rfmt == RFMT_BINARY))
				p->rfmt = RFMT_MIXED;
		}
		/* kept for the approvers and the audit trail (what $1 was) */
		if (b.params_len > 0) {
			p->params = b.params_len <= sizeof(p->params_in) ? p->params_in
									 : malloc(b.params_len);
			if (p->params == NULL) {
				portal_destroy(p);
				fatal(s, "53200", "sluice: out of memory");
				return -1;
			}
			memcpy(p->params, b.params, b.params_len);
			p->plen = b.params_len;
			p->cost += b.params_len;
			s->held_bytes += b.params_len;
			/* each parameter's format: a binary int4 of four printable
			 * bytes must not be shown to approvers as that text */
			if (b.nparams > 0 && (p->pbin = b.nparams <= sizeof(p->pbin_in)
								? p->pbin_in
								: malloc(b.nparams)) == NULL) {
				portal_destroy(p);
				fatal(s, "53200", "sluice: out of memory");
				return -1;
			}
			for (uint16_t i = 0; i < b.nparams; i++)
				p->pbin[i] = b.nformats == 0   ? 0
					     : b.nformats == 1 ? b.formats[1]
							       : b.formats[2 * i + 1];
			p->npbin = b.nparams;
			p->cost += b.nparams;
			s->held_bytes += b.nparams;
		}
		/* it counts once the server answers BindComplete */
		if (op_push(s, OP_BIND, NULL, NULL, p, s->grp_sent, 0) != 0) {
			fatal(s, "54000", "sluice: too many statements in flight");
			return -1;
		}
	}
	up_send(s, msg, total);
	return 0;
}

/*
 * Forwards a client message that was held or decided. Column rules need the
 * RowDescription of what an Execute returns, and a client that executes a
 * statement it described earlier (asyncpg, JDBC after prepareThreshold)
 * does not ask for one: the server then sends rows with no description, and
 * only the detectors would see them. So before such an Execute sluice sends
 * its own Describe of the portal; its answer (RowDescription or NoData) is
 * read by sluice and never reaches the client (process_upstream).
 */
static void
up_send_request(struct pg_session *s, struct entry *e, const uint8_t *msg, size_t len)
{
	const char *portal;
	uint32_t maxrows;

	if (msg[0] == 'E' && e != NULL && e->kind == ENT_EXEC && e->need_desc &&
	    sl_pg_parse_execute(msg, len, &portal, &maxrows) == 0) {
		struct sl_buf d;

		sl_buf_init(&d, 0);
		if (sl_pg_put_describe(&d, 'P', portal) == 0 && dq_push(s, 1) == 0)
			up_send(s, d.data, d.len);
		sl_buf_fini(&d);
	}
	if (e != NULL)
		e->need_desc = 0;
	up_send(s, msg, len);
}

/* Length of the longest prefix of v[0..n) (at most max bytes) that is
 * plain text to show an approver: valid UTF-8 with no control character
 * (C0, DEL, C1), line separator or bidi control, and no end of comment;
 * *all is 1 if that is all of v. -1 if some byte before max is not. */
static long
shown_text(const uint8_t *v, size_t n, size_t max, int *all)
{
	size_t i = 0;

	while (i < n && i < max) {
		unsigned c = v[i], len = c < 0x80	      ? 1
					 : (c & 0xe0) == 0xc0 ? 2
					 : (c & 0xf0) == 0xe0 ? 3
					 : (c & 0xf8) == 0xf0 ? 4
							      : 0;

		if (len == 0 || i + len > n)
			return -1;
		for (unsigned k = 1; k < len; k++)
			if ((v[i + k] & 0xc0) != 0x80)
				return -1;
		if (sl_utf8_control(v + i, n - i, NULL) != 0 ||
		    (c == '*' && i + 1 < n && v[i + 1] == '/'))
			return -1;
		if (i + len > max)
			break; /* a character cut by max: shown up to before it */
		i += len;
	}
	*all = i == n;
	return (long)i;
}

/* A Bind's parameters as approvers and the audit trail see them: $1 = '0'
 * (text), $2 = NULL, $3 = binary '\x00000001' (sent in binary, or text
 * that is not plain: shown as hex), each up to 1 KiB with its length when
 * longer, at most PARAMS_SHOWN bytes in all and then their count. params:
 * the Bind's parameter values (each an int32 length, -1 for NULL, then the
 * bytes); bin[i]: parameter i was sent in binary. */
#define PARAMS_SHOWN (64u << 10)

/* A parameter that is not plain text (sent in binary; or text with control,
 * line-separator or bidi characters, a comment end, bytes that are not
 * UTF-8), labelled binary or escaped: its characters as they are where
 * they are printable, so the detectors see them (an SSN sent in binary is
 * masked like one sent as text; hex would carry it past them), every other
 * byte as \xNN (a control character as \uNNNN), a backslash doubled, a
 * comment end as *\/ — a binary int4 of four printable bytes is shown as
 * binary '0000', its bytes, not the number. Up to 1 KiB of the value;
 * returns whether all of it was shown. */
static int
escaped_value(struct sl_buf *out, const uint8_t *v, size_t n, int binary)
{
	static const char hex[] = "0123456789abcdef";
	size_t i = 0, max = n < 1024 ? n : 1024;
	char esc[16];

	sl_buf_append(out, binary ? "binary '" : "escaped '", binary ? 8 : 9);
	while (i < max) {
		unsigned cp, c = v[i];
		size_t k = sl_utf8_control(v + i, n - i, &cp), len;

		if (k > 1) {
			snprintf(esc, sizeof(esc), "\\u%04x", cp);
			sl_buf_append(out, esc, strlen(esc));
			i += k;
			continue;
		}
		len = c < 0x80		   ? 1
		      : (c & 0xe0) == 0xc0 ? 2
		      : (c & 0xf0) == 0xe0 ? 3
		      : (c & 0xf8) == 0xf0 ? 4
					   : 0;
		for (size_t j = 1; j < len; j++)
			if (i + j >= n || (v[i + j] & 0xc0) != 0x80)
				len = 0;
		if (k == 1 || len == 0 || i + len > max) {
			/* a control, a byte that starts no character, or a
			 * character cut by the 1 KiB: as bytes */
			esc[0] = '\\';
			esc[1] = 'x';
			esc[2] = hex[c >> 4];
			esc[3] = hex[c & 15];
			sl_buf_append(out, esc, 4);
			i++;
			continue;
		}
		if (c == '\'' || c == '\\')
			sl_buf_append_u8(out, (uint8_t)c); /* doubled */
		if (c == '*' && i + 1 < n && v[i + 1] == '/') {
			sl_buf_append(out, "*\\/", 3);
			i += 2;
			continue;
		}
		sl_buf_append(out, v + i, len);
		i += len;
	}
	sl_buf_append_u8(out, '\'');
	return i >= n;
}

static int
params_list(struct sl_buf *out, const uint8_t *params, size_t plen, const uint8_t *bin,
	    uint16_t nbin)
{
	size_t start = out->len;
	struct sl_rd r;
	unsigned i = 0;

	sl_rd_init(&r, params, plen);
	while (sl_rd_left(&r) >= 4) {
		uint32_t n;
		const uint8_t *v;
		char head[48];
		long t = -1;
		int all = 0, binary = i < nbin && bin[i];

		if (out->len > start + PARAMS_SHOWN) {
			/* thousands of parameters would make a text of megabytes,
			 * copied into every record and answer about the review */
			snprintf(head, sizeof(head), ", ... (%u parameters in all)", nbin);
			sl_buf_append(out, head, strlen(head));
			break;
		}

		sl_rd_u32be(&r, &n);
		{
			/* ", $N = " (snprintf costs more than the rest) */
			char *o = head;

			if (i > 0) {
				*o++ = ',';
				*o++ = ' ';
			}
			*o++ = '$';
			o = sl_fmt_u64(o, i + 1);
			memcpy(o, " = ", 3);
			sl_buf_append(out, head, (size_t)(o + 3 - head));
		}
		i++;
		if (n == 0xffffffffu) {
			sl_buf_append(out, "NULL", 4);
			continue;
		}
		if (sl_rd_bytes(&r, n, &v) != 0)
			break;
		if (!binary)
			t = shown_text(v, n, 1024, &all);
		if (t >= 0) {
			sl_buf_append_u8(out, '\'');
			for (long k = 0; k < t; k++) {
				if (v[k] == '\'')
					sl_buf_append_u8(out, '\'');
				sl_buf_append_u8(out, v[k]);
			}
			sl_buf_append_u8(out, '\'');
		} else {
			all = escaped_value(out, v, n, binary);
		}
		if (!all) {
			snprintf(head, sizeof(head), "... (%u bytes)", n);
			sl_buf_append(out, head, strlen(head));
		}
	}
	return out->data == NULL ? SL_ENOMEM : 0;
}

/* The statement as approvers see it: its text, then its Bind parameters
 * (params_list) in a comment. */
static int
params_display(struct sl_buf *out, const char *sql, size_t len, const uint8_t *params, size_t plen,
	       const uint8_t *bin, uint16_t nbin)
{
	sl_buf_append(out, sql, len);
	if (plen == 0)
		return out->data == NULL && len > 0 ? SL_ENOMEM : 0;
	sl_buf_append(out, "\n/* parameters: ", sizeof("\n/* parameters: ") - 1);
	params_list(out, params, plen, bin, nbin);
	sl_buf_append(out, " */", 3);
	return out->data == NULL ? SL_ENOMEM : 0;
}

/* An Execute's parameters for its audit record, into s->pshown (reused):
 * NULL when its portal has none. A statement that names a secret
 * (names_secret) or a session with column rules (a value bound for a masked
 * column is as sensitive as the column) gets a note instead of the values;
 * the rest goes through the audit's detectors like the text does. */
static const char *
exec_params(struct pg_session *s, const struct portal *p, size_t *len)
{
	static const char secret[] = "<withheld: the statement names a secret>";
	static const char masked[] = "<withheld: column masking applies to this session>";
	static const char skipped[] = "<not recorded: an earlier message of this batch was "
				      "refused, so the server skips this Execute>";
	struct sl_buf *b = &s->pshown;

	if (p == NULL || p->plen == 0)
		return NULL;
	b->len = b->off = 0;
	if (s->grp_refused) /* the portal may be an older one: not these values */
		sl_buf_append(b, skipped, sizeof(skipped) - 1);
	else if (p->st->secret)
		sl_buf_append(b, secret, sizeof(secret) - 1);
	else if (column_rules(s))
		sl_buf_append(b, masked, sizeof(masked) - 1);
	else
		params_list(b, p->params, p->plen, p->pbin, p->npbin);
	if (b->data == NULL)
		return NULL;
	*len = b->len;
	return (const char *)b->data;
}

static int
handle_execute(struct pg_session *s, const uint8_t *msg, size_t total)
{
	const char *portal;
	uint32_t maxrows;
	struct portal *p;
	struct entry *e;
	struct sl_pl_request rq;
	struct sl_decision d;
	struct sl_sql_class cls;
	char trace[33] = "", span[17] = "", nbuf[PG_NAME_MAX + 1];
	int r, wait = 0;

	if (sl_pg_parse_execute(msg, total, &portal, &maxrows) != 0) {
		fatal(s, "08P01", "sluice: malformed Execute message");
		return -1;
	}
	portal = pg_name(portal, nbuf);
	p = portal_lookup(s, portal, &wait);
	if (wait && ents_synced(s)) {
		s->barrier = 1;
		return 1;
	}
	e = ent_push(s, ENT_EXEC);
	if (e == NULL) {
		fatal(s, "54000", "sluice: too many statements in flight");
		return -1;
	}
	e->rfmt = p != NULL ? p->rfmt : RFMT_MIXED; /* unknown: assume binary */
	/* (not when the server already failed this sync group: it skips
	 * the Execute and answers nothing until the Sync, which must pass) */
	if (p != NULL && (p->st->kinds & SL_SQL_COPY_FROM) &&
	    !(s->grp_failed && s->grp_done == s->grp_sent))
		e->copy_gate = s->copy_gate = 1;
	/* an unknown portal: a cursor declared in SQL, whose query is not here */
	if (p != NULL) {
		e->taint = p->st->taint;
		e->errtaint = p->st->errtaint;
	} else if (column_rules(s)) {
		e->taint = SL_MASK_FULL + 1;
		e->errtaint = 1;
	}
	/* column rules and no Describe of this portal just before: sluice
	 * describes it (up_send_request) */
	e->need_desc = column_rules(s) && !(s->descp_prev && strcmp(s->descp, portal) == 0);
	memset(&rq, 0, sizeof(rq));
	memset(&cls, 0, sizeof(cls));
	memset(&d, 0, sizeof(d));
	rq.proto = SL_PROTO_PG;
	rq.sql = &cls;
	if (p != NULL) {
		rq.text = p->st->sql;
		rq.textlen = p->st->sqllen;
		rq.params_shown = exec_params(s, p, &rq.params_shown_len);
		cls.kinds = p->st->kinds;
		if (sl_pl_trace_from_text(p->st->sql, p->st->sqllen, trace, span)) {
			rq.trace_id = trace;
			rq.span_id = span;
			memcpy(e->trace_id, trace, sizeof(trace));
		}
	} else {
		/* A cursor declared in SQL (already decided when declared), or
		 * a portal the server does not have: it answers that itself. */
		rq.text = portal;
		rq.textlen = strlen(portal);
	}
	rq.seq = ++s->reqseq;
	e->seq = rq.seq;
	d.action = SL_ACT_ALLOW;
	d.message = NULL;
	if (wait) {
		/* a Bind or Close of this name from an earlier, unanswered
		 * group of an unsynchronised pipeline */
		e->blocked = 1;
		d.action = SL_ACT_BLOCK;
		d.message = pipeline_wait_msg;
		sl_pl_record(s->gw, s->w, &s->pl, &rq, &d, NULL);
		substitute(s, 'E', "", d.message, 0);
		return 0;
	}
	/* (a review for an Execute the server skips would ask for nothing) */
	if (p != NULL && p->st->review && !s->grp_refused) {
		struct sl_buf bound;
		int hr;

		if (sl_pl_check_expiry(s->gw, &s->pl) != 0) {
			fatal(s, "28000", "sluice: token expired; reconnect with a fresh token");
			return -1;
		}
		/* The approval binds the statement, its parameters and this
		 * Execute message: exactly what will be forwarded. */
		sl_buf_init(&bound, 0);
		sl_buf_append(&bound, p->st->sql, p->st->sqllen);
		sl_buf_append_u32be(&bound, (uint32_t)p->plen);
		sl_buf_append(&bound, p->params, p->plen);
		sl_buf_append(&bound, msg, total);
		s->rtext = p->st->sql;
		s->rtextlen = p->st->sqllen;
		free(s->rparams);
		s->rparams = NULL;
		if (rq.params_shown != NULL &&
		    (s->rparams = malloc(rq.params_shown_len + 1)) != NULL) {
			memcpy(s->rparams, rq.params_shown, rq.params_shown_len);
			s->rparamslen = rq.params_shown_len;
		}
		{
			/* approvers see the parameters too: `id > $1` with $1
			 * = 0 is every row */
			struct sl_buf shown;

			sl_buf_init(&shown, 0);
			if (params_display(&shown, p->st->sql, p->st->sqllen, p->params, p->plen,
					   p->pbin, p->npbin) != 0) {
				sl_buf_fini(&shown);
				sl_buf_fini(&bound);
				fatal(s, "53200", "sluice: out of memory");
				return -1;
			}
			hr = hold_for_review_bytes(s, (const char *)shown.data, shown.len,
						   bound.data, bound.len, p->st->kinds, &p->st->dec,
						   rq.trace_id, rq.span_id);
			sl_buf_fini(&shown);
		}
		sl_buf_fini(&bound);
		if (hr == 0) {
			s->held_len = total;
			return 1;
		}
		if (hr == SL_REVIEW_GRANTED)
			goto record;
		e->blocked = 1;
		d.action = SL_ACT_BLOCK;
		d.message = "statement requires approval, and the approval queue refused it";
		sl_pl_record(s->gw, s->w, &s->pl, &rq, &d, NULL);
		substitute(s, 'E', "", d.message, 0);
		return 0;
	}
	if (sl_pl_check_expiry(s->gw, &s->pl) != 0) {
		fatal(s, "28000", "sluice: token expired; reconnect with a fresh token");
		return -1;
	}
record:
	s->comp.fn = audit_done;
	s->comp.arg = s;
	r = sl_pl_record(s->gw, s->w, &s->pl, &rq, &d, &s->comp);
	if (r == 1) {
		s->pending++;
		s->held_len = total;
		return 1;
	}
	if (r < 0) {
		fatal(s, "58000", audit_down_msg);
		return -1;
	}
	up_send_request(s, e, msg, total);
	return 0;
}

/* The client ended a COPY FROM STDIN: an Execute's gate lifts now. */
static void
copy_done_exec(struct pg_session *s)
{
	for (size_t i = 0; i < s->ents_len; i++) {
		struct entry *e = &s->ents[(s->ents_head + i) % s->ents_cap];

		if (e->copy_gate) {
			if (e->kind == ENT_EXEC)
				e->copy_gate = s->copy_gate = 0;
			return;
		}
	}
}

#define BIG_BUFFER ((size_t)1 << 20)

/* An empty buffer that grew past BIG_BUFFER (one large statement or row)
 * gives its memory back: kept, every session that ever saw a large message
 * would hold it for good. */
static void
trim_buffer(struct sl_buf *b)
{
	size_t max = b->max;

	if (b->cap > BIG_BUFFER && sl_buf_unread(b) == 0) {
		sl_buf_fini(b);
		sl_buf_init(b, max);
	}
}

/* Counts the session's message buffers past BIG_BUFFER in gw->buffered.
 * Each message is bounded (max_message_bytes), but many sessions each
 * receiving one, or each holding a large row for masking, would not be:
 * past gateway.max_buffered_bytes over all sessions, the session whose
 * buffer grew is ended (FATAL 53200) instead of the gateway running out of
 * memory with every session in it. */
static void
charge_buffers(struct pg_session *s)
{
	size_t want = 0, total;

	if (s->state == PG_ST_CLOSING)
		return;
	trim_buffer(&s->cin);
	if (s->cin.cap > BIG_BUFFER)
		want += s->cin.cap;
	/* what waits to be written counts too: a large row for a client that
	 * does not read, a large Bind behind a busy server */
	if (s->cli_open && sl_stream_backlog(&s->cli) > BIG_BUFFER)
		want += sl_stream_backlog(&s->cli);
	if (s->up_open) {
		trim_buffer(&s->upc->in);
		if (s->upc->in.cap > BIG_BUFFER)
			want += s->upc->in.cap;
		if (sl_stream_backlog(&s->upc->st) > BIG_BUFFER)
			want += sl_stream_backlog(&s->upc->st);
	}
	if (want == s->charged)
		return;
	if (want < s->charged) {
		atomic_fetch_sub(&s->gw->buffered, s->charged - want);
		s->charged = want;
		return;
	}
	total = atomic_fetch_add(&s->gw->buffered, want - s->charged) + (want - s->charged);
	s->charged = want;
	if (total > s->gw->max_buffered) {
		sl_warn("session %s: large messages of all sessions hold %zu MiB, over "
			"gateway.max_buffered_bytes; ending this one",
			s->pl.id, total >> 20);
		fatal(s, "53200",
		      "sluice: out of memory for messages (gateway.max_buffered_bytes is reached "
		      "across sessions); retry later");
	}
}

static void
message_timeout(uv_timer_t *t)
{
	struct pg_session *s = t->data;
	char m[160];

	if (s->state != PG_ST_READY || !s->msg_timer_on)
		return;
	s->in_process = 1;
	sl_warn("session %s: a message was not completed within gateway.message_timeout (%zu "
		"bytes of it buffered); ending the session",
		s->pl.id, sl_buf_unread(&s->cin));
	snprintf(m, sizeof(m),
		 "sluice: a message of more than 1 MiB was not completed within %lld s "
		 "(gateway.message_timeout)",
		 (long long)(s->gw->message_timeout_ms / 1000));
	fatal(s, "08P01", m);
	s->in_process = 0;
	maybe_free(s);
}

/* Starts (on) or stops the deadline of an incomplete client message that
 * holds more than BIG_BUFFER: such bytes count against
 * gateway.max_buffered_bytes, so a client that sends most of a large
 * message and stalls would hold that budget for as long as it liked. */
static void
message_deadline(struct pg_session *s, int on)
{
	s->msg_timer_on = on != 0;
	if (!s->timer_open || uv_is_closing((uv_handle_t *)&s->login_timer))
		return;
	if (on)
		uv_timer_start(
			&s->login_timer, message_timeout,
			(uint64_t)(s->gw->message_timeout_ms > 0 ? s->gw->message_timeout_ms : 1),
			0);
	else
		uv_timer_stop(&s->login_timer);
}

/* The deadline runs while the client owes the rest of a message past
 * BIG_BUFFER and sluice is reading it: not while sluice itself waits (a
 * held review, a COPY gate, a server that does not take what it has) —
 * then the deadline starts anew once it reads again. */
static void
message_deadline_check(struct pg_session *s)
{
	uint8_t type;
	size_t total;
	int owed = s->state == PG_ST_READY && s->cli.reading && !s->hold &&
		   !(s->copy_gate && !s->copy_in) && sl_buf_unread(&s->cin) > BIG_BUFFER &&
		   sl_pg_frame(sl_buf_head(&s->cin), sl_buf_unread(&s->cin), s->gw->max_message,
			       &type, &total) == SL_AGAIN;

	if (owed != (int)s->msg_timer_on)
		message_deadline(s, owed);
}

static void
process_client(struct pg_session *s)
{
	struct sl_buf *in = &s->cin;

	if (s->nresults > 0) /* process_upstream records them; kept in order anyway */
		results_record(s);

	while (s->state == PG_ST_READY && !s->hold && !(s->copy_gate && !s->copy_in)) {
		uint8_t type;
		size_t total;
		const uint8_t *msg;
		int r;

		r = sl_pg_frame(sl_buf_head(in), sl_buf_unread(in), s->gw->max_message, &type,
				&total);
		if (r == SL_AGAIN)
			break;
		if (s->msg_timer_on)
			message_deadline(s, 0);
		if (r != 0) {
			fatal(s, r == SL_ETOOBIG ? "54000" : "08P01",
			      r == SL_ETOOBIG ? "sluice: message exceeds gateway.max_message_bytes"
					      : "sluice: invalid message length");
			return;
		}
		msg = sl_buf_head(in);
		r = 0;
		if (s->copy_in) {
			/* what the server reads in COPY IN mode, nothing else */
			if (type == 'c' || type == 'f') {
				s->copy_in = s->copy_data = 0;
				copy_done_exec(s);
			} else if (type == 'd') {
				s->copy_data = 1;
			} else if (type == 'S' && s->copy_data) {
				/* A bad row ends the COPY where the server reads it:
				 * a Sync after data may come before that point
				 * (ignored) or after it (answered). sluice cannot
				 * tell which, so it is not allowed (libpq sends Sync
				 * before any data or after CopyDone). */
				fatal(s, "08P01",
				      "sluice: Sync between COPY data messages; send CopyDone or "
				      "CopyFail first");
				return;
			} else if (type != 'S' && type != 'H') {
				fatal(s, "08P01",
				      "sluice: unexpected message during COPY FROM STDIN (only "
				      "CopyData, CopyDone, CopyFail, Sync and Flush)");
				return;
			}
			up_send(s, msg, total);
			sl_buf_consume(in, total);
			continue;
		}
		if ((type == 'Q' || type == 'F') && s->ext_open) {
			fatal(s, "08P01",
			      "sluice: a simple Query or FunctionCall inside an extended-protocol "
			      "batch; send Sync first");
			return;
		}
		if (type == 'P' || type == 'B' || type == 'E' || type == 'D' || type == 'C')
			s->ext_open = 1;
		else if (type == 'S')
			s->ext_open = 0;
		s->descp_prev = s->descp_set;
		s->descp_set = 0;
		switch (type) {
		case 'Q':
			r = handle_query(s, msg, total);
			break;
		case 'P':
			r = handle_parse(s, msg, total);
			break;
		case 'B':
			r = handle_bind(s, msg, total);
			break;
		case 'E':
			r = handle_execute(s, msg, total);
			break;
		case 'S':
			if (ent_push(s, ENT_SYNC) == NULL) {
				fatal(s, "54000", "sluice: too many statements in flight");
				return;
			}
			s->grp_refused = 0;
			up_send(s, msg, total);
			break;
		case 'C': {
			char kind, nbuf[PG_NAME_MAX + 1];
			const char *name;

			if (sl_pg_parse_describe_close(msg, total, &kind, &name) != 0) {
				fatal(s, "08P01", "sluice: malformed Close message");
				return;
			}
			name = pg_name(name, nbuf);
			if (op_push(s, kind == 'S' ? OP_CLOSE : OP_PCLOSE, name, NULL, NULL,
				    s->grp_sent, 0) != 0) {
				fatal(s, "53200", "sluice: out of memory");
				return;
			}
			up_send(s, msg, total);
			break;
		}
		case 'D': {
			char kind, nbuf[PG_NAME_MAX + 1];
			const char *name;

			if (sl_pg_parse_describe_close(msg, total, &kind, &name) != 0) {
				fatal(s, "08P01", "sluice: malformed Describe message");
				return;
			}
			name = pg_name(name, nbuf);
			if (kind == 'P' && strlen(name) < sizeof(s->descp)) {
				memcpy(s->descp, name, strlen(name) + 1);
				s->descp_set = 1;
			}
			if (dq_push(s, 0) != 0) {
				fatal(s, "54000", "sluice: too many statements in flight");
				return;
			}
			up_send(s, msg, total);
			break;
		}
		case 'H': /* Flush */
		case 'd': /* CopyData */
		case 'c': /* CopyDone */
		case 'f': /* CopyFail */
			up_send(s, msg, total);
			break;
		case 'F': {
			/* Fastpath function calls bypass SQL: refuse them. */
			struct entry *e = ent_push(s, ENT_FUNC);

			if (e == NULL) {
				fatal(s, "54000", "sluice: too many statements in flight");
				return;
			}
			e->blocked = 1;
			substitute(s, 'Q', "", "sluice: fastpath function calls are not allowed",
				   0);
			break;
		}
		case 'X':
			s->terminating = 1;
			s->reusable = 1;
			sl_buf_consume(in, total);
			session_close(s, "client terminated");
			return;
		default:
			fatal(s, "08P01", "sluice: unknown message type from client");
			return;
		}
		if (r < 0)
			return;
		if (r == 1) {
			s->hold = 1;
			break;
		}
		sl_buf_consume(in, total);
	}
	if (s->state == PG_ST_CLOSING)
		return;
	if (s->up_open)
		up_flush(s);
	/* While a message is held, keep reading (bounded) so that a client
	 * that goes away is noticed and its review cancelled. */
	if (((s->hold || (s->copy_gate && !s->copy_in)) && sl_buf_unread(&s->cin) > (1u << 20)) ||
	    (s->up_open && sl_stream_backlog(&s->upc->st) >= SL_STREAM_HIGH_WATER))
		sl_stream_read_stop(&s->cli);
	else if (s->state == PG_ST_READY)
		sl_stream_read_start(&s->cli);
	message_deadline_check(s);
}

/* ------------------------------------------------------------ client login */

static void cli_tls_cb(struct sl_stream *st, int status);
static void cli_read_cb(struct sl_stream *st, size_t n);
static void cli_eof_cb(struct sl_stream *st, int err);

static const struct sl_stream_ops cli_ops = {
	.on_read = cli_read_cb,
	.on_eof = cli_eof_cb,
	.on_drain = cli_drain_cb,
	.on_tls = cli_tls_cb,
	.on_close = cli_closed,
};

static void
cli_tls_cb(struct sl_stream *st, int status)
{
	struct pg_session *s = st->owner;

	if (status != 0) {
		session_close(s, "client TLS handshake failed");
		return;
	}
	s->tls = 1;
	set_state(s, PG_ST_STARTUP);
}

/*
 * Startup parameters are settings applied before any statement, so they
 * never pass policy. Only what shapes the session's presentation and its
 * own timeouts may come this way (what libpq, JDBC, node-postgres, asyncpg
 * and npgsql send); everything else (session_replication_role, log_*,
 * *_preload_libraries, dynamic_library_path, role, ...) is refused like
 * "options": set it with SET, which policy decides.
 */
static int
param_allowed(const char *k)
{
	static const char *const allowed[] = {
		"application_name",
		"client_encoding",
		"datestyle",
		"timezone",
		"intervalstyle",
		"extra_float_digits",
		"bytea_output",
		"client_min_messages",
		"search_path",
		"statement_timeout",
		"lock_timeout",
		"idle_in_transaction_session_timeout",
		"idle_session_timeout",
		"default_transaction_isolation",
		"default_transaction_read_only",
		"default_transaction_deferrable",
		"lc_monetary",
		"lc_numeric",
		"lc_time",
		"xmlbinary",
		"xmloption",
		"standard_conforming_strings",
	};

	for (size_t i = 0; i < sizeof(allowed) / sizeof(allowed[0]); i++)
		if (strcasecmp(k, allowed[i]) == 0)
			return 1;
	return 0;
}

/*
 * A copy of a startup value for the audit trail and logs: a value shaped like
 * a JWT (a token pasted as the user name, say) is a bearer secret and is
 * kept only as its SHA-256, like the token itself. Returns owned, or NULL.
 */
static char *
audit_value(const char *v)
{
	size_t n = strlen(v), dots = 0;
	uint8_t h[32];
	char *out;

	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)v[i];

		if (ch == '.')
			dots++;
		else if (!isalnum(ch) && ch != '-' && ch != '_' && ch != '=')
			return strdup(v);
	}
	if (dots != 2 || n < 20 || strncmp(v, "eyJ", 3) != 0)
		return strdup(v);
	out = malloc(7 + 65);
	if (out == NULL)
		return NULL;
	sl_sha256(v, n, h);
	memcpy(out, "sha256:", 7);
	sl_hex(h, 32, out + 7);
	return out;
}

/* A client asking for a newer 3.x minor version (PostgreSQL 18 clients ask
 * for 3.2) or sending protocol options (_pq_.*) is told, like a server
 * would, that sluice speaks 3.0 and knows none of the options: it then
 * uses 3.0 (4-byte cancel keys). Nothing when it asked for plain 3.0. */
static int
put_negotiate(struct sl_buf *b, const struct sl_pg_startup *st)
{
	const char *opts[SL_PG_MAX_PARAMS];
	size_t nopt = 0;

	for (size_t i = 0; i < st->nparams; i++)
		if (strncmp(st->keys[i], "_pq_.", 5) == 0)
			opts[nopt++] = st->keys[i];
	if (st->code == SL_PG_PROTO_V3 && nopt == 0)
		return 0;
	return sl_pg_put_negotiate(b, SL_PG_PROTO_V3, opts, nopt);
}

/* What a client is told when the gateway has max_connections sessions. */
static void
full_message(struct sl_gw *gw, char *m, size_t len)
{
	snprintf(m, len, "sluice: sorry, too many clients already (gateway.max_connections = %u)",
		 gw->max_clients);
}

static void
handle_startup(struct pg_session *s, const uint8_t *msg, size_t total)
{
	struct sl_pg_startup st;
	const char *user, *db, *name = NULL;
	const struct sl_cfg_connection *conn = NULL;
	struct sl_buf b;

	if (sl_pg_parse_startup(msg, total, &st) != 0) {
		fatal(s, "08P01", "sluice: invalid startup packet");
		return;
	}
	if (st.code == SL_PG_SSL_REQUEST || st.code == SL_PG_GSSENC_REQUEST) {
		uint8_t answer = 'N';

		if (sl_buf_unread(&s->cin) != total) {
			fatal(s, "08P01", "sluice: data after SSLRequest");
			return;
		}
		if (st.code == SL_PG_SSL_REQUEST && s->gw->pg_tls != NULL && !s->tls)
			answer = 'S';
		cli_send(s, &answer, 1);
		sl_stream_flush(&s->cli);
		sl_buf_consume(&s->cin, total);
		if (answer == 'S') {
			set_state(s, PG_ST_TLS);
			if (sl_stream_tls_server(&s->cli, s->gw->pg_tls) != 0)
				session_close(s, "TLS setup failed");
		}
		return;
	}
	if (st.code == SL_PG_CANCEL_REQUEST) {
		cancel_forward(s->w, st.cancel_pid, st.cancel_key);
		sl_buf_consume(&s->cin, total);
		session_close(s, "cancel request");
		return;
	}
	if (s->over) {
		/* A cancel still goes through when the gateway is full (above);
		 * a login does not. PostgreSQL's own answer when it is full. */
		char m[160];

		full_message(s->gw, m, sizeof(m));
		fatal(s, "53300", m);
		return;
	}
	user = sl_pg_startup_get(&st, "user");
	db = sl_pg_startup_get(&st, "database");
	if (user == NULL || *user == '\0') {
		fatal(s, "28000", "sluice: no user name given; log in as the connection name");
		return;
	}
	if (sl_config_connection(s->gw->cfg, user) != NULL)
		name = user;
	else if (db != NULL && sl_config_connection(s->gw->cfg, db) != NULL)
		name = db;
	if (name != NULL)
		conn = sl_config_connection(s->gw->cfg, name);
	if (conn == NULL || strcmp(conn->type, "postgres") != 0) {
		fatal(s, "3D000",
		      "sluice: unknown connection; log in with user or database = a configured "
		      "postgres connection name");
		return;
	}
	{
		const char *repl = sl_pg_startup_get(&st, "replication");

		if (repl != NULL && strcasecmp(repl, "false") != 0 && strcasecmp(repl, "0") != 0 &&
		    strcasecmp(repl, "off") != 0 && strcasecmp(repl, "no") != 0) {
			fatal(s, "28000", "sluice: replication connections are not allowed");
			return;
		}
	}
	if (sl_pg_startup_get(&st, "options") != NULL) {
		fatal(s, "28000", "sluice: the \"options\" startup parameter is not allowed");
		return;
	}
	s->pl.conn = conn;
	s->client_user = audit_value(user);
	s->client_db = db && strcmp(db, name) != 0 ? audit_value(db) : NULL;
	s->fwd_keys = calloc(st.nparams + 1, sizeof(char *));
	s->fwd_vals = calloc(st.nparams + 1, sizeof(char *));
	if (s->client_user == NULL || s->fwd_keys == NULL || s->fwd_vals == NULL) {
		fatal(s, "53200", "sluice: out of memory");
		return;
	}
	for (size_t i = 0; i < st.nparams; i++) {
		/* user/database name the connection; _pq_.* were negotiated away */
		if (strcmp(st.keys[i], "user") == 0 || strcmp(st.keys[i], "database") == 0 ||
		    strncmp(st.keys[i], "_pq_.", 5) == 0)
			continue;
		if (conn->read_only &&
		    strcasecmp(st.keys[i], "default_transaction_read_only") == 0) {
			const char *v = st.vals[i];

			/* sluice sends it, always on */
			if (strcasecmp(v, "on") == 0 || strcasecmp(v, "true") == 0 ||
			    strcasecmp(v, "yes") == 0 || strcmp(v, "1") == 0)
				continue;
			fatal(s, "28000",
			      "sluice: this connection is read-only; default_transaction_read_only "
			      "cannot be turned off");
			return;
		}
		if (!param_allowed(st.keys[i])) {
			char m[160], k[48];
			size_t n = 0;

			/* the name is the client's: printable and short in the reply */
			for (const char *p = st.keys[i]; *p && n < sizeof(k) - 4; p++)
				k[n++] = isprint((unsigned char)*p) && *p != '"' ? *p : '?';
			if (st.keys[i][n] != '\0')
				k[n++] = '.', k[n++] = '.', k[n++] = '.';
			k[n] = '\0';
			snprintf(m, sizeof(m),
				 "sluice: the startup parameter \"%s\" is not allowed; use SET "
				 "(decided by policy)",
				 k);
			fatal(s, "28000", m);
			return;
		}
		s->fwd_keys[s->nfwd] = strdup(st.keys[i]);
		s->fwd_vals[s->nfwd] = strdup(st.vals[i]);
		s->nfwd++;
		if (strcasecmp(st.keys[i], "application_name") == 0)
			(void)track_param(s, "application_name", st.vals[i]);
	}
	sl_buf_consume(&s->cin, total);
	/* The JWT travels as a cleartext password: only over TLS, loopback,
	 * or where the operator explicitly allowed it. */
	if (!s->tls && !s->gw->pg_loopback && !s->gw->cfg->gateway.postgres.allow_cleartext) {
		fatal(s, "28000", "sluice: TLS is required (sslmode=require) to send a token");
		return;
	}
	sl_buf_init(&b, 0);
	if (put_negotiate(&b, &st) != 0) {
		sl_buf_fini(&b);
		fatal(s, "53200", "sluice: out of memory");
		return;
	}
	sl_pg_put_auth(&b, 3, NULL, 0);
	cli_send(s, b.data, b.len);
	sl_buf_fini(&b);
	sl_stream_flush(&s->cli);
	set_state(s, PG_ST_AUTH);
}

static void auth_with_token(struct pg_session *s, const char *tok, size_t len, int retried);

static void
refresh_work(uv_work_t *req)
{
	struct pg_session *s = req->data;

	sl_pl_refresh_keys(s->gw, s->verify_token, s->verify_len);
}

static void
refresh_done(uv_work_t *req, int status)
{
	struct pg_session *s = req->data;

	s->pending--;
	if (s->state == PG_ST_CLOSING) {
		maybe_free(s);
		return;
	}
	set_state(s, PG_ST_AUTH);
	auth_with_token(s, s->verify_token, s->verify_len, 1);
	replay_pooled(s);
	maybe_free(s);
}

static void
auth_with_token(struct pg_session *s, const char *tok, size_t len, int retried)
{
	char err[160] = "", msg[256];
	int r;

	r = sl_pl_authenticate(s->gw, &s->pl, tok, len, err, sizeof(err));
	if (r == SL_ENOKEY && !retried) {
		s->verify_token = malloc(len + 1);
		if (s->verify_token == NULL) {
			fatal(s, "53200", "sluice: out of memory");
			return;
		}
		memcpy(s->verify_token, tok, len);
		s->verify_token[len] = '\0';
		s->verify_len = len;
		s->work.data = s;
		set_state(s, PG_ST_VERIFY);
		if (uv_queue_work(&s->w->loop, &s->work, refresh_work, refresh_done) == 0) {
			s->pending++;
			return;
		}
		set_state(s, PG_ST_AUTH);
	}
	if (r != 0) {
		snprintf(msg, sizeof(msg), "sluice: token authentication failed: %s",
			 err[0] ? err : sl_strerror(r));
		sl_pl_auth_failed(s->gw, &s->pl, s->client_user, err[0] ? err : sl_strerror(r));
		fatal(s, "28P01", msg);
		return;
	}
	if (s->logging_in) {
		/* the token holds: no longer one of its address's logins */
		sl_gw_login_done(s->gw, &s->login_key);
		s->logging_in = 0;
	}
	if (pool_take(s) != 0)
		start_upstream(s);
}

static void
handle_password(struct pg_session *s, const uint8_t *msg, size_t total)
{
	const char *pw;
	size_t pwlen;

	if (msg[0] != 'p' || sl_pg_parse_password(msg, total, &pw, &pwlen) != 0) {
		fatal(s, "08P01", "sluice: expected a password message");
		return;
	}
	sl_stream_read_stop(&s->cli);
	auth_with_token(s, pw, pwlen, 0);
	if (s->state != PG_ST_CLOSING)
		sl_buf_consume(&s->cin, total);
	replay_pooled(s);
}

static void
cli_read_cb(struct sl_stream *st, size_t n)
{
	struct pg_session *s = st->owner;
	uint8_t type;
	size_t total;
	int r;

	s->in_process = 1;
	switch (s->state) {
	case PG_ST_STARTUP:
		r = sl_pg_frame_startup(sl_buf_head(&s->cin), sl_buf_unread(&s->cin), &total);
		if (r == SL_AGAIN)
			break;
		if (r != 0) {
			fatal(s, "08P01", "sluice: invalid startup packet length");
			break;
		}
		handle_startup(s, sl_buf_head(&s->cin), total);
		break;
	case PG_ST_AUTH:
		r = sl_pg_frame(sl_buf_head(&s->cin), sl_buf_unread(&s->cin), 16384, &type, &total);
		if (r == SL_AGAIN)
			break;
		if (r != 0) {
			fatal(s, "08P01", "sluice: invalid password message");
			break;
		}
		handle_password(s, sl_buf_head(&s->cin), total);
		break;
	case PG_ST_READY:
		process_client(s);
		charge_buffers(s);
		break;
	default:
		/* Input while logging in upstream waits; bounded by the buffer max. */
		sl_stream_read_stop(&s->cli);
		break;
	}
	if (s->cli_open && s->state != PG_ST_CLOSING)
		sl_stream_flush(&s->cli);
	s->in_process = 0;
	maybe_free(s);
}

static void
cli_eof_cb(struct sl_stream *st, int err)
{
	struct pg_session *s = st->owner;

	s->in_process = 1;
	s->reusable = err == 0;
	session_close(s, err == 0 ? "client disconnected" : "client connection error");
	s->in_process = 0;
	maybe_free(s);
}

/* Past max_connections and past the few let in to be told at their startup
 * packet: told at once, with no session (no memory, no timer). The answer
 * fits an empty socket buffer; whatever the client sent already is read
 * away first so the close does not reset the connection under it. */
static void
refuse_now(struct sl_gw *gw, int fd, const char *why)
{
	char m[160], junk[512];
	struct sl_buf b;

	if (why != NULL)
		snprintf(m, sizeof(m), "%s", why);
	else
		full_message(gw, m, sizeof(m));
	sl_buf_init(&b, 0);
	if (sl_pg_put_error(&b, "FATAL", "53300", m, NULL, NULL) == 0 &&
	    write(fd, b.data, b.len) < 0) {
		/* nothing more to tell a client that is gone */
	}
	sl_buf_fini(&b);
	shutdown(fd, SHUT_WR);
	for (int i = 0; i < 4 && read(fd, junk, sizeof(junk)) > 0; i++)
		;
	close(fd);
}

/* A session for an accepted connection (fd is ours either way). */
static void
session_start(struct sl_worker *w, int fd, const struct sockaddr *peer)
{
	struct sl_gw *gw = w->gw;
	struct pg_session *s;
	struct sockaddr_storage ss;
	struct sl_addr_key lk;
	int len = sizeof(ss), admitted = 0, over = 0;

	if (sl_gw_login_take(gw, peer, &lk) != 0) {
		char m[160], a[64] = "";

		sl_net_addr_str(peer, a, sizeof(a));
		if (strrchr(a, ':') != NULL)
			*strrchr(a, ':') = '\0'; /* the address, not its port */
		snprintf(m, sizeof(m),
			 "sluice: too many connections from %s are logging in at once "
			 "(gateway.max_logins_per_address = %u)",
			 a, gw->max_logins);
		if (sl_mono_us() - w->pg_perip_warned_us > 10 * 1000000) {
			w->pg_perip_warned_us = sl_mono_us();
			sl_warn("postgres listener: %u connections from %s are logging in; "
				"refusing "
				"more from there (53300, gateway.max_logins_per_address)",
				gw->max_logins, a);
		}
		refuse_now(gw, fd, m);
		return;
	}
	if (atomic_fetch_add(&gw->nclients, 1) < gw->max_clients) {
		admitted = 1;
	} else {
		atomic_fetch_sub(&gw->nclients, 1);
		if (sl_mono_us() - w->pg_full_warned_us > 10 * 1000000) {
			w->pg_full_warned_us = sl_mono_us();
			sl_warn("postgres listener: %u sessions, gateway.max_connections reached; "
				"refusing new logins (53300)",
				gw->max_clients);
		}
		if (atomic_fetch_add(&gw->nover, 1) < gw->max_over) {
			over = 1;
		} else {
			atomic_fetch_sub(&gw->nover, 1);
			sl_gw_login_done(gw, &lk);
			refuse_now(gw, fd, NULL);
			return;
		}
	}
	s = calloc(1, sizeof(*s));
	if (s == NULL)
		goto fail;
	s->w = w;
	s->gw = gw;
	s->login_key = lk;
	s->logging_in = 1;
	s->admitted = admitted;
	s->over = over;
	s->state = PG_ST_STARTUP;
	s->scs_on = 1;
	s->enc_safe = 1;
	s->txstatus = 'I';
	sl_buf_init(&s->cin, s->gw->max_message + (128u << 10));
	sl_pl_session_init(s->gw, &s->pl, "postgres");
	s->pl.scratch = w->mscratch;
	sl_buf_init(&s->mout, 0);
	sl_buf_init(&s->pshown, 0);
	sl_buf_init(&s->mval, 0);
	if (sl_stream_init(&s->cli, &w->loop, &cli_ops, s, &s->cin) != 0) {
		sl_pl_session_fini(&s->pl);
		free(s);
		goto fail;
	}
	s->cli_open = 1;
	s->next = w->sessions;
	if (s->next)
		s->next->prev = s;
	w->sessions = s;
	w->nsessions++;
	if (uv_tcp_open(&s->cli.tcp, fd) != 0) {
		close(fd);
		session_close(s, "accept failed");
		return;
	}
	uv_tcp_nodelay(&s->cli.tcp, 1);
	if (uv_timer_init(&w->loop, &s->login_timer) == 0) {
		s->login_timer.data = s;
		s->timer_open = 1;
		uv_timer_start(&s->login_timer, login_timeout, (uint64_t)s->gw->login_timeout_ms,
			       0);
	}
	if (uv_tcp_getpeername(&s->cli.tcp, (struct sockaddr *)&ss, &len) == 0)
		sl_net_addr_str((struct sockaddr *)&ss, s->pl.client_addr,
				sizeof(s->pl.client_addr));
	sl_stream_read_start(&s->cli);
	return;
fail:
	close(fd);
	sl_gw_login_done(gw, &lk);
	atomic_fetch_sub(admitted ? &gw->nclients : &gw->nover, 1);
}

static void on_accept(uv_poll_t *h, int status, int events);

static void
accept_resume(uv_timer_t *t)
{
	struct sl_worker *w = t->data;

	if (w->pg_listening && !w->stopping)
		uv_poll_start(&w->pg_listener, UV_READABLE, on_accept);
}

/* Accepts what is waiting, a bounded number per wake-up so that sessions
 * already running get their turn. Out of descriptors (or kernel memory),
 * the listening socket stays readable: instead of trying again at once,
 * which would spin this loop and starve its sessions, timers and shutdown
 * (the login timeouts that free descriptors never fire), accepting pauses
 * for a moment; the connections wait in the kernel's queue meanwhile. */
static void
on_accept(uv_poll_t *h, int status, int events)
{
	struct sl_worker *w = h->data;

	(void)events;
	if (status != 0 || w->stopping)
		return;
	for (int i = 0; i < 64; i++) {
		struct sockaddr_storage peer;
		socklen_t plen = sizeof(peer);
		int fd = accept4(w->pg_lfd, (struct sockaddr *)&peer, &plen,
				 SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd >= 0) {
			session_start(w, fd, (struct sockaddr *)&peer);
			continue;
		}
		if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			return;
		if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
			int64_t now = sl_mono_us();

			if (now - w->pg_emfile_warned_us > 10 * 1000000) {
				w->pg_emfile_warned_us = now;
				sl_warn("postgres listener: %s with %u sessions; not accepting "
					"for 250 ms (raise the file descriptor limit or lower "
					"gateway.max_connections)",
					strerror(errno), atomic_load(&w->gw->nclients));
			}
			uv_poll_stop(&w->pg_listener);
			uv_timer_start(&w->pg_accept_timer, accept_resume, 250, 0);
		}
		return;
	}
}

static struct pg_session *
sessions_of(struct sl_worker *w)
{
	return w->sessions;
}

int
sl_pg_listen(struct sl_worker *w)
{
	int r;

	w->pg_lfd = sl_net_listen_fd((struct sockaddr *)&w->gw->pg_addr, 511);
	if (w->pg_lfd < 0)
		return SL_EIO;
	r = uv_poll_init(&w->loop, &w->pg_listener, w->pg_lfd);
	if (r != 0) {
		close(w->pg_lfd);
		return SL_EIO;
	}
	w->pg_listener.data = w;
	w->pg_listening = 1;
	uv_poll_start(&w->pg_listener, UV_READABLE, on_accept);
	if (uv_timer_init(&w->loop, &w->pg_accept_timer) == 0) {
		w->pg_accept_timer.data = w;
		w->pg_accept_timer_init = 1;
	}
	if (!w->pg_pool_timer_init && uv_timer_init(&w->loop, &w->pg_pool_timer) == 0) {
		w->pg_pool_timer.data = w;
		w->pg_pool_timer_init = 1;
	}
	return 0;
}

static void
listener_closed(uv_handle_t *h)
{
	(void)h;
}

/* The descriptor is closed once libuv no longer polls it. */
static void
lfd_closed(uv_handle_t *h)
{
	struct sl_worker *w = h->data;

	close(w->pg_lfd);
	w->pg_lfd = -1;
}

void
sl_pg_stop_listening(struct sl_worker *w)
{
	if (w->pg_pool_timer_init) {
		/* no session will take these any more */
		while (w->pg_pool)
			pool_drop(w->pg_pool);
		w->pg_pool_timer_init = 0;
		w->pg_pool_timer_on = 0;
		uv_close((uv_handle_t *)&w->pg_pool_timer, listener_closed);
	}
	if (w->pg_accept_timer_init) {
		w->pg_accept_timer_init = 0;
		uv_close((uv_handle_t *)&w->pg_accept_timer, listener_closed);
	}
	if (!w->pg_listening)
		return;
	w->pg_listening = 0;
	uv_close((uv_handle_t *)&w->pg_listener, lfd_closed);
}

unsigned
sl_pg_sessions(struct sl_worker *w)
{
	return w->nsessions;
}

void
sl_pg_terminate_all(struct sl_worker *w)
{
	struct pg_session *s = sessions_of(w), *next;

	for (; s; s = next) {
		next = s->next;
		if (s->state == PG_ST_CLOSING)
			continue;
		fatal(s, "57P01", "sluice: the gateway is shutting down");
	}
}
