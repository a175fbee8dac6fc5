/*
 * gateway.c - start-up, worker threads (one libuv loop each), signal
 * handling and clean shutdown of `sluice serve`.
 */
#include "sluice/gateway.h"

#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/err.h>

#include "sluice/audit.h"
#include "sluice/mask.h"
#include "sluice/review.h"
#include "sluice/pg_session.h"

void
sl_worker_post(struct sl_worker *w, struct sl_completion *c)
{
	c->next = NULL;
	pthread_mutex_lock(&w->mu);
	if (w->tail)
		w->tail->next = c;
	else
		w->head = c;
	w->tail = c;
	pthread_mutex_unlock(&w->mu);
	uv_async_send(&w->async);
}

static void
async_cb(uv_async_t *h)
{
	struct sl_worker *w = h->data;
	struct sl_completion *c;

	pthread_mutex_lock(&w->mu);
	c = w->head;
	w->head = w->tail = NULL;
	pthread_mutex_unlock(&w->mu);
	while (c) {
		struct sl_completion *next = c->next;

		c->fn(c);
		c = next;
	}
}

static void
handle_closed(uv_handle_t *h)
{
	(void)h;
}

struct stop_msg {
	struct sl_completion c;
	int64_t deadline_us;
};

/* Runs every 50 ms once stopping: finishes when no session is left, cuts the
 * remaining sessions at the drain deadline or on a second signal. */
static void
drain_tick(uv_timer_t *t)
{
	struct sl_worker *w = t->data;
	struct stop_msg *m = (struct stop_msg *)w->sessions_stop;

	if (sl_pg_sessions(w) == 0) {
		uv_timer_stop(&w->drain_timer);
		uv_close((uv_handle_t *)&w->drain_timer, handle_closed);
		uv_close((uv_handle_t *)&w->async, handle_closed);
		return;
	}
	if (!w->cut && (sl_mono_us() >= m->deadline_us || atomic_load(&w->gw->stopping) > 1)) {
		w->cut = 1;
		sl_pg_terminate_all(w);
	}
}

static void
worker_stop(struct sl_completion *c)
{
	struct sl_worker *w = c->w;

	w->stopping = 1;
	w->sessions_stop = c;
	sl_pg_stop_listening(w);
	w->drain_timer.data = w;
	uv_timer_start(&w->drain_timer, drain_tick, 0, 50);
}

static void
worker_main(void *arg)
{
	struct sl_worker *w = arg;

	uv_run(&w->loop, UV_RUN_DEFAULT);
	atomic_store(&w->done, 1);
}

static int
worker_init(struct sl_gw *gw, struct sl_worker *w, unsigned id, char *err, size_t errlen)
{
	memset(w, 0, sizeof(*w));
	w->id = id;
	w->gw = gw;
	pthread_mutex_init(&w->mu, NULL);
	if (uv_loop_init(&w->loop) != 0)
		goto fail;
	if (uv_async_init(&w->loop, &w->async, async_cb) != 0)
		goto fail;
	w->async.data = w;
	uv_timer_init(&w->loop, &w->drain_timer);
	w->sqlcache = sl_sql_cache_new(4096);
	if (w->sqlcache == NULL || sl_mask_scratch_new(gw->maskdb, &w->mscratch) != 0)
		goto fail;
	if (gw->cfg->gateway.postgres.listen != NULL && sl_pg_listen(w) != 0) {
		snprintf(err, errlen, "cannot listen on %s: %s", gw->cfg->gateway.postgres.listen,
			 strerror(errno));
		return SL_EIO;
	}
	return 0;
fail:
	snprintf(err, errlen, "worker %u: initialisation failed", id);
	return SL_ENOMEM;
}

/* Client context for tls: verify-full: the upstream's certificate must
 * chain to ca_file (or the system's CAs when none is given) and name the
 * target host (checked per connection, sl_stream_tls_client). */
static SSL_CTX *
verifying_tls(const char *ca_file, char *err, size_t errlen)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

	if (ctx == NULL) {
		snprintf(err, errlen, "cannot create a TLS context");
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	if (ca_file != NULL ? SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1
			    : SSL_CTX_set_default_verify_paths(ctx) != 1) {
		snprintf(err, errlen, "cannot load the CA certificates %s",
			 ca_file ? ca_file : "of the system");
		SSL_CTX_free(ctx);
		return NULL;
	}
	return ctx;
}

static SSL_CTX *
server_tls(const char *cert, const char *key, char *err, size_t errlen)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

	if (ctx == NULL)
		return NULL;
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
	    SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
	    SSL_CTX_check_private_key(ctx) != 1) {
		snprintf(err, errlen, "cannot load TLS certificate %s / key %s", cert, key);
		SSL_CTX_free(ctx);
		ERR_clear_error();
		return NULL;
	}
	return ctx;
}

static int
mkdir_p(const char *path)
{
	char tmp[4096];

	snprintf(tmp, sizeof(tmp), "%s", path);
	for (char *p = tmp + 1; *p; p++) {
		if (*p == '/') {
			*p = '\0';
			mkdir(tmp, 0700);
			*p = '/';
		}
	}
	if (mkdir(tmp, 0700) != 0 && errno != EEXIST)
		return SL_EIO;
	return 0;
}

static enum sl_log_level
level_of(const char *s)
{
	if (s == NULL)
		return SL_LOG_INFO;
	if (strcmp(s, "debug") == 0)
		return SL_LOG_DEBUG;
	if (strcmp(s, "warn") == 0)
		return SL_LOG_WARN;
	if (strcmp(s, "error") == 0)
		return SL_LOG_ERROR;
	return SL_LOG_INFO;
}

/* Descriptors kept aside for everything that is not a client session: the
 * audit store and journal, pooled upstreams beyond one per session, TLS
 * and JWKS fetches, the admin API, logs. */
#define FD_RESERVE	      128
#define WORKER_STACK	      ((size_t)256 << 20)
#define WEBHOOK_STOP_GRACE_MS 500 /* webhooks at shutdown, when the drain used it all */

/* Raises the soft descriptor limit to the hard one (a service manager's
 * default soft limit, often 1024, would cap a gateway at a few hundred
 * sessions) and sizes the session limit from it: a session holds two
 * descriptors (client, upstream). A configured limit the descriptors
 * cannot carry is kept but warned about; running out is handled anyway
 * (accepting pauses; see sl_pg_listen). */
static void
size_sessions(struct sl_gw *gw)
{
	struct rlimit rl;
	rlim_t fds = 1024;
	rlim_t reserve;
	unsigned fit;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
		/* to the hard limit, but at most 2^20 (some hosts set 2^30) */
		rlim_t want = rl.rlim_max > ((rlim_t)1 << 20) ? (rlim_t)1 << 20 : rl.rlim_max;

		if (rl.rlim_cur < want) {
			struct rlimit up = {want, rl.rlim_max};

			if (setrlimit(RLIMIT_NOFILE, &up) == 0)
				rl = up;
		}
		fds = rl.rlim_cur == RLIM_INFINITY ? (rlim_t)1 << 20 : rl.rlim_cur;
	}
	reserve = fds / 4 < FD_RESERVE ? fds / 4 : FD_RESERVE;
	fit = fds - reserve >= ((rlim_t)2 << 20) ? 1u << 20 : (unsigned)((fds - reserve) / 2);
	if (fit < 1)
		fit = 1;
	gw->max_clients = gw->cfg->gateway.max_connections ? gw->cfg->gateway.max_connections : fit;
	if (gw->max_clients > fit)
		sl_warn("gateway.max_connections %u needs more file descriptors than the limit "
			"(%llu) gives (about %u sessions); raise it (LimitNOFILE=, ulimit -n)",
			gw->max_clients, (unsigned long long)fds, fit);
	gw->max_over = 16 + gw->max_clients / 16;
	if (gw->max_over > 256)
		gw->max_over = 256;
	/* A flood from one address must not hold every slot until
	 * login_timeout: honest clients log in within milliseconds, so a few
	 * dozen at once from one place is plenty. */
	gw->max_logins = gw->cfg->gateway.max_logins_per_address;
	if (gw->max_logins == 0) {
		gw->max_logins = gw->max_clients / 4 < 8 ? 8 : gw->max_clients / 4;
		if (gw->max_logins > 64)
			gw->max_logins = 64;
	}
}

/* ------------------------------------------------------------ logins per address */

struct login_addr {
	struct sl_addr_key key;
	unsigned n;
	struct login_addr *next;
};

static void
addr_key(const struct sockaddr *sa, struct sl_addr_key *k)
{
	memset(k, 0, sizeof(*k));
	if (sa->sa_family == AF_INET) {
		k->b[0] = 4;
		memcpy(k->b + 1, &((const struct sockaddr_in *)sa)->sin_addr, 4);
	} else if (sa->sa_family == AF_INET6) {
		const uint8_t *a = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
		static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

		if (memcmp(a, mapped, 12) == 0) {
			k->b[0] = 4;
			memcpy(k->b + 1, a + 12, 4);
		} else {
			k->b[0] = 6;
			memcpy(k->b + 1, a, 16);
		}
	}
}

static unsigned
addr_bucket(const struct sl_addr_key *k)
{
	uint32_t h = 2166136261u;

	for (size_t i = 0; i < sizeof(k->b); i++)
		h = (h ^ k->b[i]) * 16777619u;
	return h % SL_LOGIN_BUCKETS;
}

int
sl_gw_login_take(struct sl_gw *gw, const struct sockaddr *sa, struct sl_addr_key *key)
{
	struct login_addr *e;
	unsigned b;
	int r = 0;

	addr_key(sa, key);
	if (key->b[0] == 0 || gw->max_logins == 0 || gw->login_map == NULL) {
		key->b[0] = 0; /* not counted */
		return 0;
	}
	b = addr_bucket(key);
	pthread_mutex_lock(&gw->login_mu);
	for (e = gw->login_map[b]; e; e = e->next)
		if (memcmp(&e->key, key, sizeof(*key)) == 0)
			break;
	if (e == NULL && (e = calloc(1, sizeof(*e))) != NULL) {
		e->key = *key;
		e->next = gw->login_map[b];
		gw->login_map[b] = e;
	}
	if (e == NULL)
		key->b[0] = 0; /* out of memory: not counted, not refused */
	else if (e->n >= gw->max_logins)
		r = SL_EPOLICY;
	else
		e->n++;
	pthread_mutex_unlock(&gw->login_mu);
	return r;
}

void
sl_gw_login_done(struct sl_gw *gw, const struct sl_addr_key *key)
{
	struct login_addr **pp, *e;

	if (key->b[0] == 0 || gw->login_map == NULL)
		return;
	pthread_mutex_lock(&gw->login_mu);
	for (pp = &gw->login_map[addr_bucket(key)]; (e = *pp) != NULL; pp = &e->next) {
		if (memcmp(&e->key, key, sizeof(*key)) != 0)
			continue;
		if (--e->n == 0) {
			*pp = e->next;
			free(e);
		}
		break;
	}
	pthread_mutex_unlock(&gw->login_mu);
}

static void
login_map_free(struct sl_gw *gw)
{
	for (unsigned i = 0; gw->login_map && i < SL_LOGIN_BUCKETS; i++)
		while (gw->login_map[i]) {
			struct login_addr *e = gw->login_map[i];

			gw->login_map[i] = e->next;
			free(e);
		}
	free(gw->login_map);
	gw->login_map = NULL;
}

/*
 * SIGHUP (what `systemctl reload` sends): the policies are read again from
 * the configuration file and, if the whole file is valid, a new generation
 * of them is published. From then on every session's next statement is
 * decided by it; masking plans are made per session at login, so new
 * masking rules reach the sessions that log in afterwards. Everything else
 * (listeners, connections, identity, audit, review, mask patterns) is read
 * at start only: a change there is logged as waiting for a restart. The
 * reload is an audit record of its own (the file's SHA-256, the policies).
 */
static void
hangup(struct sl_gw *gw)
{
	const struct sl_config *cfg = gw->cfg;
	struct sl_policy_gen *cur = sl_gw_policies(gw), *g;
	const struct sl_config *running = cur->cfg ? cur->cfg : cfg;
	char err[1024] = "";
	int other;

	if (cfg->path == NULL) {
		sl_warn("SIGHUP: running on the embedded default configuration; nothing to "
			"reload");
		return;
	}
	g = calloc(1, sizeof(*g));
	if (g == NULL) {
		sl_warn("SIGHUP: out of memory; the running policies stay");
		return;
	}
	if (sl_config_load(cfg->path, &g->cfg, err, sizeof(err)) != 0) {
		sl_warn("SIGHUP: %s not reloaded, the running policies stay: %s", cfg->path, err);
		sl_pl_gen_free(g);
		return;
	}
	if (strcmp(g->cfg->sha256, running->sha256) == 0) {
		/* also bounds what repeated signals can make us keep */
		sl_warn("SIGHUP: %s is unchanged; nothing to reload", cfg->path);
		sl_pl_gen_free(g);
		return;
	}
	if (sl_policy_compile(g->cfg, &g->policy, err, sizeof(err)) != 0 ||
	    sl_pl_gen_masks(gw, g, err, sizeof(err)) != 0) {
		sl_warn("SIGHUP: %s not reloaded, the running policies stay: %s", cfg->path, err);
		sl_pl_gen_free(g);
		return;
	}
	other = !sl_config_same_but_policies(cfg, g->cfg);
	g->number = cur->number + 1;
	g->older = cur;
	{
		json_t *d = json_object(), *names = json_array();

		for (unsigned i = 0; i < g->cfg->policies_count; i++)
			json_array_append_new(names, json_string(g->cfg->policies[i].name
									 ? g->cfg->policies[i].name
									 : ""));
		json_object_set_new(d, "generation", json_integer(g->number));
		json_object_set_new(d, "file", json_string(cfg->path));
		json_object_set_new(d, "file_sha256", json_string(g->cfg->sha256));
		json_object_set_new(d, "policies", names);
		json_object_set_new(d, "other_sections_changed", json_boolean(other));
		/* recorded before it decides anything */
		if (sl_audit_append(gw->audit, "policy_reload", "", NULL, NULL, d, NULL, NULL) !=
		    0) {
			sl_warn("SIGHUP: the reload cannot be recorded in the audit trail; the "
				"running policies stay");
			g->older = NULL;
			sl_pl_gen_free(g);
			return;
		}
	}
	atomic_store_explicit(&gw->gen, g, memory_order_release);
	sl_warn("SIGHUP: policies reloaded from %s (generation %u, %u policies): they decide "
		"every session's next statement; new masking rules apply to sessions that log in "
		"from now on%s",
		cfg->path, g->number, g->cfg->policies_count,
		other ? "; changes outside policies take effect at restart" : "");
}

int
sl_gateway_run(struct sl_config *cfg)
{
	struct sl_gw *gw;
	char err[512] = "";
	sigset_t set;
	int sig = 0, rc = 1;
	int64_t drain_ms = 10000, leeway_ms = 60000, stop_deadline = 0;

	sl_log_set_level(level_of(cfg->gateway.log_level));
	signal(SIGPIPE, SIG_IGN);
	/* Block the shutdown signals before any thread exists (JWKS refresh,
	 * audit writer, admin, workers): every thread inherits the mask and
	 * only sigwait() below takes them. A thread started earlier without
	 * it would get a SIGTERM sent during start-up and die of it. */
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP); /* whose default action would end the process on the spot */
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	gw = calloc(1, sizeof(*gw));
	if (gw == NULL)
		return 1;
	gw->cfg = cfg;
	pthread_mutex_init(&gw->cancel_mu, NULL);
	pthread_mutex_init(&gw->login_mu, NULL);
	gw->login_map = calloc(SL_LOGIN_BUCKETS, sizeof(*gw->login_map)); /* NULL: no limit */
	gw->max_message =
		cfg->gateway.max_message_bytes ? cfg->gateway.max_message_bytes : 16u << 20;
	gw->max_buffered =
		cfg->gateway.max_buffered_bytes ? cfg->gateway.max_buffered_bytes : 512u << 20;
	gw->max_held = cfg->gateway.max_held_bytes ? cfg->gateway.max_held_bytes : 1u << 30;
	if (cfg->gateway.shutdown_timeout)
		sl_parse_duration_ms(cfg->gateway.shutdown_timeout, &drain_ms);
	gw->login_timeout_ms = 15000;
	if (cfg->gateway.login_timeout)
		sl_parse_duration_ms(cfg->gateway.login_timeout, &gw->login_timeout_ms);
	gw->message_timeout_ms = 60000;
	if (cfg->gateway.message_timeout)
		sl_parse_duration_ms(cfg->gateway.message_timeout, &gw->message_timeout_ms);
	if (cfg->identity.issuers_count > 0 && cfg->identity.issuers[0].leeway)
		sl_parse_duration_ms(cfg->identity.issuers[0].leeway, &leeway_ms);
	gw->leeway_s = leeway_ms / 1000;
	size_sessions(gw);
	if (gethostname(gw->node, sizeof(gw->node) - 1) != 0)
		snprintf(gw->node, sizeof(gw->node), "sluice");
	if (mkdir_p(cfg->gateway.data_dir) != 0) {
		sl_error("cannot create data_dir %s", cfg->gateway.data_dir);
		goto out;
	}
	if (sl_idp_new(&cfg->identity, cfg->gateway.data_dir, &gw->idp, err, sizeof(err)) != 0) {
		sl_error("identity: %s", err);
		goto out;
	}
	if (sl_idp_start_refresh(gw->idp) != 0) {
		sl_error("identity: cannot start the JWKS refresh thread");
		goto out;
	}
	{
		struct sl_policy_gen *g0 = calloc(1, sizeof(*g0));

		if (g0 == NULL)
			goto out;
		g0->number = 1;
		atomic_store(&gw->gen, g0); /* freed at the end even if the compile fails */
		if (sl_policy_compile(cfg, &g0->policy, err, sizeof(err)) != 0) {
			sl_error("policy: %s", err);
			goto out;
		}
	}
	if (sl_pl_mask_init(gw, err, sizeof(err)) != 0) {
		sl_error("mask: %s", err);
		goto out;
	}
	if (sl_audit_open(cfg, &gw->audit, err, sizeof(err)) != 0) {
		sl_error("audit: %s", err);
		goto out;
	}
	if (sl_review_mgr_new(cfg, gw->audit, &gw->review) != 0) {
		sl_error("review: cannot start the review queue");
		goto out;
	}
	if (sl_admin_start(cfg, gw->idp, gw->review, &gw->admin, err, sizeof(err)) != 0) {
		sl_error("admin: %s", err);
		goto out;
	}
	if (cfg->gateway.postgres.listen != NULL) {
		if (sl_net_parse_addr(cfg->gateway.postgres.listen, &gw->pg_addr) != 0 &&
		    sl_net_resolve(cfg->gateway.postgres.listen, &gw->pg_addr) != 0) {
			sl_error("gateway.postgres.listen: bad address %s",
				 cfg->gateway.postgres.listen);
			goto out;
		}
		gw->pg_loopback = sl_net_is_loopback((struct sockaddr *)&gw->pg_addr);
		if (cfg->gateway.postgres.tls_cert != NULL) {
			gw->pg_tls = server_tls(cfg->gateway.postgres.tls_cert,
						cfg->gateway.postgres.tls_key, err, sizeof(err));
			if (gw->pg_tls == NULL) {
				sl_error("gateway.postgres: %s", err);
				goto out;
			}
		}
	}
	if (cfg->gateway.http.listen || cfg->gateway.ssh.listen)
		sl_warn("gateway.http/ssh listeners are configured but not implemented yet");
	for (unsigned i = 0; i < cfg->connections_count; i++)
		if (strcmp(cfg->connections[i].type, "postgres") != 0)
			sl_warn("connection %s: type %s has no adapter yet; clients cannot use it",
				cfg->connections[i].name, cfg->connections[i].type);
	gw->up_tls = SSL_CTX_new(TLS_client_method());
	if (gw->up_tls != NULL) {
		SSL_CTX_set_min_proto_version(gw->up_tls, TLS1_2_VERSION);
		SSL_CTX_set_verify(gw->up_tls, SSL_VERIFY_NONE, NULL);
	}
	gw->conn_tls =
		calloc(cfg->connections_count ? cfg->connections_count : 1, sizeof(*gw->conn_tls));
	if (gw->conn_tls == NULL)
		goto out;
	for (unsigned i = 0; i < cfg->connections_count; i++) {
		const struct sl_cfg_connection *cn = &cfg->connections[i];

		if (cn->tls == NULL || strcmp(cn->tls, "verify-full") != 0)
			continue;
		gw->conn_tls[i] = verifying_tls(cn->ca_file, err, sizeof(err));
		if (gw->conn_tls[i] == NULL) {
			sl_error("connection %s: %s", cn->name, err);
			goto out;
		}
	}

	gw->nworkers = cfg->gateway.workers ? cfg->gateway.workers : 2;
	gw->workers = calloc(gw->nworkers, sizeof(*gw->workers));
	if (gw->workers == NULL)
		goto out;
	for (unsigned i = 0; i < gw->nworkers; i++) {
		if (worker_init(gw, &gw->workers[i], i, err, sizeof(err)) != 0) {
			sl_error("%s", err);
			gw->nworkers = i;
			goto stop;
		}
	}
	for (unsigned i = 0; i < gw->nworkers; i++) {
		/* A large stack (address space; only what is used is memory):
		 * libpg_query writes a parse tree out recursively, and a 1 MiB
		 * statement of 1+1+...+1 is 500,000 levels deep (see
		 * sl_sql_classify, which refuses what the stack cannot take). */
		uv_thread_options_t big = {.flags = UV_THREAD_HAS_STACK_SIZE,
					   .stack_size = WORKER_STACK};

		if (uv_thread_create_ex(&gw->workers[i].thread, &big, worker_main,
					&gw->workers[i]) != 0)
			uv_thread_create(&gw->workers[i].thread, worker_main, &gw->workers[i]);
	}
	sl_info("sluice serving: postgres %s, %u workers, up to %u sessions (%u logging in "
		"at once per client address), audit %s (%s)",
		cfg->gateway.postgres.listen ? cfg->gateway.postgres.listen : "off", gw->nworkers,
		gw->max_clients, gw->max_logins, cfg->audit.store, cfg->audit.mode);
	while (sigwait(&set, &sig) == 0 && sig == SIGHUP)
		hangup(gw);
	sigdelset(&set, SIGHUP); /* a second SIGTERM/SIGINT cuts the drain short, not a HUP */
	sl_info("signal %d: draining sessions (up to %lld ms)", sig, (long long)drain_ms);
	rc = 0;
stop:
	atomic_store(&gw->stopping, 1);
	{
		struct stop_msg *msgs = calloc(gw->nworkers ? gw->nworkers : 1, sizeof(*msgs));
		int64_t deadline = sl_mono_us() + drain_ms * 1000;

		stop_deadline = deadline;

		for (unsigned i = 0; i < gw->nworkers; i++) {
			if (msgs == NULL)
				abort(); /* cannot stop workers without it */
			msgs[i].c.w = &gw->workers[i];
			msgs[i].c.fn = worker_stop;
			msgs[i].deadline_us = deadline;
			sl_worker_post(&gw->workers[i], &msgs[i].c);
		}
		/* A second signal cuts the drain short. */
		if (sig != 0 && gw->nworkers > 0) {
			struct timespec ts = {0, 100 * 1000000L};
			siginfo_t si;
			int alive = 1;

			while (alive) {
				if (sigtimedwait(&set, &si, &ts) > 0)
					atomic_store(&gw->stopping, 2);
				alive = 0;
				for (unsigned i = 0; i < gw->nworkers; i++)
					if (!atomic_load(&gw->workers[i].done))
						alive = 1;
			}
		}
		for (unsigned i = 0; i < gw->nworkers; i++) {
			uv_thread_join(&gw->workers[i].thread);
			uv_loop_close(&gw->workers[i].loop);
			sl_sql_cache_free(gw->workers[i].sqlcache);
			sl_mask_scratch_free(gw->workers[i].mscratch);
			sl_buf_fini(&gw->workers[i].rtext);
		}
		free(msgs);
		if (atomic_load(&gw->stopping) == 2)
			stop_deadline = 0; /* a second signal: no waiting for webhooks either */
	}
out:
	/* Sessions cancelled their reviews when they closed; nothing pending
	 * can call back into a stopped worker. */
	sl_admin_stop(gw->admin);
	{
		/* Webhooks get what is left of shutdown_timeout (at least a
		 * moment, to announce the cancellations): a receiver that never
		 * answers does not keep the gateway from stopping. */
		int64_t least = sl_mono_us() + WEBHOOK_STOP_GRACE_MS * 1000;

		sl_review_mgr_stop(gw->review, stop_deadline > least ? stop_deadline : least);
	}
	sl_review_mgr_free(gw->review);
	sl_audit_close(gw->audit);
	sl_pl_gen_free(atomic_load(&gw->gen)); /* every generation; before the detector db */
	sl_pl_mask_fini(gw);
	sl_idp_free(gw->idp);
	if (gw->pg_tls)
		SSL_CTX_free(gw->pg_tls);
	if (gw->up_tls)
		SSL_CTX_free(gw->up_tls);
	for (unsigned i = 0; gw->conn_tls && i < cfg->connections_count; i++)
		if (gw->conn_tls[i])
			SSL_CTX_free(gw->conn_tls[i]);
	free(gw->conn_tls);
	free(gw->cancel_map); /* its lists are empty: each session left its own */
	login_map_free(gw);   /* empty too, unless a session was never freed */
	free(gw->workers);
	free(gw);
	if (rc == 0)
		sl_info("sluice stopped cleanly");
	return rc;
}
