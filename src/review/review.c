/*
 * review.c - the review queue: held requests bound to their exact bytes,
 * votes with quorum, self-approval and non-approver refusal, timeouts on a
 * thread of their own, every state change in the audit trail.
 */
#include "sluice/review.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/evp.h>

#include "sluice/audit.h"

#define MAX_PENDING  10000
#define MAX_DECIDED  1000
#define DECIDED_TEXT 4096 /* bytes of a decided review's text kept */
#define MAX_VOTES    16
/* Webhook queue: in all, and per requester (one token creating and
 * abandoning reviews in a loop must not crowd out everyone else's). */
#define HOOK_MAX	     1000
#define HOOK_MAX_PER_SUBJECT 32
#define HOOK_WARN_EVERY_US   (10 * 1000000LL) /* at most one drop warning per 10 s */

struct review {
	struct review *next;
	char id[40];
	char hash[65];
	enum sl_review_state st;
	char *session, *subject, *connection, *protocol, *text, *policy, *rule, *trace, *kinds;
	char **approvers;
	size_t napprovers;
	unsigned min_approvals;
	char *voters[MAX_VOTES];
	size_t nvotes;
	int64_t created_us, expires_us, decided_us;
	char *decided_by, *reason;
	int64_t grant_for_ms;
	sl_review_done_fn done;
	void *arg;
};

struct grant {
	struct grant *next;
	char *subject, *connection, *rule;
	int64_t until_us;
};

struct sl_review_mgr {
	const struct sl_config *cfg;
	struct grant *grants;
	/* webhook delivery */
	pthread_t hook_thread;
	pthread_mutex_t hmu;
	pthread_cond_t hcv; /* CLOCK_MONOTONIC */
	struct sl_review_hookq *hq;
	int hstop;
	_Atomic int64_t hdeadline; /* sl_mono_us(); 0 until stopping */
	uint64_t hreported;	   /* drops already in a warning */
	int64_t hwarned_us;	   /* when the last one was logged */
	char hdrop_subject[128];   /* whose notification was dropped last */
	int stopped;		   /* sl_review_mgr_stop ran */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	pthread_t thread;
	int stop;
	/* pending: awaiting decisions; finishing: decided, its audit record
	 * and notification being written (still visible to GET and lists);
	 * decided: the last MAX_DECIDED */
	struct review *pending, *finishing, *decided;
	size_t npending, ndecided;
	struct sl_audit *audit;
};

static const char *const state_names[] = {"pending", "approved", "denied", "expired", "cancelled"};

static char *
sdup(const char *s)
{
	return strdup(s ? s : "");
}

static void
review_free(struct review *r)
{
	free(r->session);
	free(r->subject);
	free(r->connection);
	free(r->protocol);
	free(r->text);
	free(r->policy);
	free(r->rule);
	free(r->trace);
	free(r->kinds);
	for (size_t i = 0; i < r->napprovers; i++)
		free(r->approvers[i]);
	free(r->approvers);
	for (size_t i = 0; i < r->nvotes; i++)
		free(r->voters[i]);
	free(r->decided_by);
	free(r->reason);
	free(r);
}

static json_t *
review_json(const struct review *r)
{
	json_t *o = json_object(), *a = json_array(), *v = json_array();

	for (size_t i = 0; i < r->napprovers; i++)
		json_array_append_new(a, json_string(r->approvers[i]));
	for (size_t i = 0; i < r->nvotes; i++)
		json_array_append_new(v, json_string(r->voters[i]));
	json_object_set_new(o, "id", json_string(r->id));
	json_object_set_new(o, "status", json_string(state_names[r->st]));
	json_object_set_new(o, "request_hash", json_string(r->hash));
	json_object_set_new(o, "subject", json_string(r->subject));
	json_object_set_new(o, "session", json_string(r->session));
	json_object_set_new(o, "connection", json_string(r->connection));
	json_object_set_new(o, "protocol", json_string(r->protocol));
	{
		json_t *t = json_string(r->text);

		json_object_set_new(o, "text", t ? t : json_string("<not valid UTF-8>"));
	}
	json_object_set_new(o, "kind", json_string(r->kinds));
	json_object_set_new(o, "policy", json_string(r->policy));
	json_object_set_new(o, "rule", json_string(r->rule));
	json_object_set_new(o, "approvers", a);
	json_object_set_new(o, "min_approvals", json_integer(r->min_approvals));
	json_object_set_new(o, "approvals", v);
	json_object_set_new(o, "created_us", json_integer(r->created_us));
	json_object_set_new(o, "expires_us", json_integer(r->expires_us));
	if (r->decided_us)
		json_object_set_new(o, "decided_us", json_integer(r->decided_us));
	if (r->decided_by)
		json_object_set_new(o, "decided_by", json_string(r->decided_by));
	if (r->reason)
		json_object_set_new(o, "reason", json_string(r->reason));
	if (r->trace && r->trace[0])
		json_object_set_new(o, "trace_id", json_string(r->trace));
	return o;
}

/* Logs drops not yet reported, at most once per HOOK_WARN_EVERY_US unless
 * force (hmu held). */
static void
hook_warn(struct sl_review_mgr *m, int force)
{
	uint64_t d = sl_review_hookq_dropped(m->hq);
	int64_t now = sl_mono_us();

	if (d == m->hreported ||
	    (!force && m->hwarned_us != 0 && now - m->hwarned_us < HOOK_WARN_EVERY_US))
		return;
	sl_warn("review webhook: %llu notification(s) dropped (%llu since the last report; "
		"%zu queued, at most %d per requester and %d in all); latest from subject %s",
		(unsigned long long)d, (unsigned long long)(d - m->hreported),
		sl_review_hookq_len(m->hq, NULL), HOOK_MAX_PER_SUBJECT, HOOK_MAX,
		m->hdrop_subject[0] ? m->hdrop_subject : "? (older news evicted)");
	m->hreported = d;
	m->hwarned_us = now;
}

/* Queues a webhook notification (bounded in all and per requester; a
 * "created" of a pending review goes out before other events, and a final
 * event replaces a "created" not sent yet; what is dropped is counted and
 * logged, rate-limited: notifications never hold up decisions). */
static void
notify(struct sl_review_mgr *m, const char *event, const struct review *r)
{
	json_t *o;
	char text[512], *body, *t;
	int rc;

	if (m->cfg == NULL || m->cfg->review.webhooks_count == 0)
		return;
	o = review_json(r);
	json_object_set_new(o, "event", json_string(event));
	snprintf(text, sizeof(text), "sluice review %s: %s on %s wants to run [%s] — %s%s%s", event,
		 r->subject, r->connection, r->kinds, r->id, r->reason ? ", " : "",
		 r->reason ? r->reason : "");
	body = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	t = strdup(text);
	if (body == NULL || t == NULL) {
		free(body);
		free(t);
		sl_warn("review %s: out of memory, notification dropped", r->id);
		return;
	}
	pthread_mutex_lock(&m->hmu);
	rc = sl_review_hookq_push(m->hq, r->id, r->subject, strcmp(event, "created") == 0, body, t);
	if (rc >= 0)
		pthread_cond_signal(&m->hcv);
	else
		snprintf(m->hdrop_subject, sizeof(m->hdrop_subject), "%s", r->subject);
	hook_warn(m, 0);
	pthread_mutex_unlock(&m->hmu);
}

/* Aborts a transfer once the stop deadline has passed (libcurl calls it at
 * least once a second, also while waiting for an answer). */
static int
post_progress(void *arg, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
	struct sl_review_mgr *m = arg;
	int64_t dl = atomic_load(&m->hdeadline);

	(void)dt, (void)dn, (void)ut, (void)un;
	return dl != 0 && sl_mono_us() >= dl;
}

static int
post(struct sl_review_mgr *m, const struct sl_cfg_webhook *wh, const char *body)
{
	CURL *c;
	struct curl_slist *hd = NULL;
	int64_t ms = 5000, dl = atomic_load(&m->hdeadline);
	long code = 0;

	if (wh->timeout)
		sl_parse_duration_ms(wh->timeout, &ms);
	if (dl != 0) { /* stopping: no request outlives the deadline */
		int64_t left = (dl - sl_mono_us()) / 1000;

		if (left <= 0)
			return -1;
		if (left < ms)
			ms = left;
	}
	c = curl_easy_init();
	if (c == NULL)
		return -1;
	hd = curl_slist_append(hd, "Content-Type: application/json");
	curl_easy_setopt(c, CURLOPT_URL, wh->url);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, hd);
	curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)ms);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)ms);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, post_progress);
	curl_easy_setopt(c, CURLOPT_XFERINFODATA, m);
	curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
	if (curl_easy_perform(c) == CURLE_OK)
		curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
	curl_slist_free_all(hd);
	curl_easy_cleanup(c);
	return code >= 200 && code < 300 ? 0 : -1;
}

/* Whether the stop deadline has passed (delivery gives up then). */
static int
hook_late(struct sl_review_mgr *m)
{
	int64_t dl = atomic_load(&m->hdeadline);

	return dl != 0 && sl_mono_us() >= dl;
}

/* Waits us microseconds between retries, less if the stop deadline comes
 * first. */
static void
hook_backoff(struct sl_review_mgr *m, int64_t us)
{
	int64_t until = sl_mono_us() + us;

	pthread_mutex_lock(&m->hmu);
	for (;;) {
		int64_t dl = atomic_load(&m->hdeadline), end = until;
		struct timespec ts;

		if (dl != 0 && dl < end)
			end = dl;
		if (sl_mono_us() >= end)
			break;
		ts.tv_sec = (time_t)(end / 1000000);
		ts.tv_nsec = (long)(end % 1000000) * 1000;
		pthread_cond_timedwait(&m->hcv, &m->hmu, &ts);
	}
	pthread_mutex_unlock(&m->hmu);
}

/* Sends h to every webhook, with retries (never past the stop deadline). */
static void
deliver(struct sl_review_mgr *m, const struct sl_review_hook *h)
{
	for (unsigned i = 0; i < m->cfg->review.webhooks_count; i++) {
		const struct sl_cfg_webhook *wh = &m->cfg->review.webhooks[i];
		unsigned tries = wh->retries ? wh->retries : 3;
		char *body = h->body;
		json_t *o = NULL;

		if (wh->format && strcmp(wh->format, "slack") == 0) {
			o = json_loads(h->body, 0, NULL);
			if (o)
				json_object_set_new(o, "text", json_string(h->text));
			body = o ? json_dumps(o, JSON_COMPACT) : h->body;
		}
		for (unsigned t = 0; t <= tries && !hook_late(m); t++) {
			if (post(m, wh, body) == 0)
				break;
			if (t == tries)
				sl_warn("review webhook %s: delivery failed", wh->url);
			else
				hook_backoff(m, (int64_t)(200000u << (t < 4 ? t : 4)));
		}
		if (o) {
			free(body);
			json_decref(o);
		}
	}
}

static void *
hook_main(void *arg)
{
	struct sl_review_mgr *m = arg;

	for (;;) {
		struct sl_review_hook *h;

		pthread_mutex_lock(&m->hmu);
		while (sl_review_hookq_len(m->hq, NULL) == 0 && !m->hstop)
			pthread_cond_wait(&m->hcv, &m->hmu);
		if (m->hstop && (sl_review_hookq_len(m->hq, NULL) == 0 || hook_late(m))) {
			size_t n = sl_review_hookq_clear(m->hq);

			if (n > 0) {
				m->hreported = sl_review_hookq_dropped(m->hq);
				sl_warn("review webhook: shutdown deadline reached, %zu queued "
					"notification(s) dropped (%llu dropped in all)",
					n, (unsigned long long)m->hreported);
			} else {
				hook_warn(m, 1);
			}
			pthread_mutex_unlock(&m->hmu);
			break;
		}
		h = sl_review_hookq_pop(m->hq);
		hook_warn(m, 0); /* the tail of a burst of drops, too */
		pthread_mutex_unlock(&m->hmu);
		deliver(m, h);
		sl_review_hook_free(h);
	}
	return NULL;
}

static void
audit_event(struct sl_review_mgr *m, const char *type, const struct review *r, json_t *extra)
{
	json_t *d = review_json(r);

	if (extra)
		json_object_update(d, extra);
	json_decref(extra);
	if (sl_audit_append(m->audit, type, r->session, r->trace[0] ? r->trace : NULL, NULL, d,
			    NULL, NULL) != 0)
		sl_error("review %s: could not record %s in the audit trail", r->id, type);
}

/* Moves r (unlinked from pending) to the decided list; caller holds mu. */
static void
retire(struct sl_review_mgr *m, struct review *r)
{
	/* A decided review is kept for the API (the last MAX_DECIDED) with
	 * the start of its text: the whole of it is in the audit trail, and
	 * a thousand 1 MiB statements would hold a gigabyte here. */
	size_t tl = r->text ? strlen(r->text) : 0;

	if (tl > DECIDED_TEXT) {
		char *t = malloc(DECIDED_TEXT + 64);
		size_t cut = DECIDED_TEXT;

		while (cut > 0 && ((unsigned char)r->text[cut] & 0xc0) == 0x80)
			cut--; /* not inside a UTF-8 character */
		if (t != NULL) {
			memcpy(t, r->text, cut);
			snprintf(t + cut, 64, "... (%zu bytes; all of it in the audit trail)", tl);
			free(r->text);
			r->text = t;
		}
	}
	r->next = m->decided;
	m->decided = r;
	if (++m->ndecided > MAX_DECIDED) {
		struct review **pp = &m->decided;
		size_t n = 0;

		while (*pp && n < MAX_DECIDED) {
			pp = &(*pp)->next;
			n++;
		}
		while (*pp) {
			struct review *x = *pp;

			*pp = x->next;
			review_free(x);
			m->ndecided--;
		}
	}
}

/* The review lists in order: 0 pending, 1 finishing, 2 decided (mu held). */
static struct review *
list_at(struct sl_review_mgr *m, int i)
{
	return i == 0 ? m->pending : i == 1 ? m->finishing : m->decided;
}

static struct review *
unlink_pending(struct sl_review_mgr *m, const char *id)
{
	for (struct review **pp = &m->pending; *pp; pp = &(*pp)->next) {
		if (strcmp((*pp)->id, id) == 0) {
			struct review *r = *pp;

			*pp = r->next;
			m->npending--;
			r->next = m->finishing;
			m->finishing = r;
			return r;
		}
	}
	return NULL;
}

/* Ends r (unlinked from pending onto finishing: never out of sight of GET)
 * with st, records it and calls back. mu must NOT be held: the callback and
 * the audit append run outside it. */
static void
finish(struct sl_review_mgr *m, struct review *r, enum sl_review_state st, const char *by,
       const char *reason)
{
	static const char *const ev[] = {"", "review_approved", "review_denied", "review_expired",
					 "review_cancelled"};
	sl_review_done_fn done = r->done;
	void *arg = r->arg;

	pthread_mutex_lock(&m->mu); /* GET and lists read these */
	r->st = st;
	r->decided_us = sl_now_us();
	free(r->decided_by);
	r->decided_by = by ? strdup(by) : NULL;
	free(r->reason);
	r->reason = strdup(reason ? reason : "");
	pthread_mutex_unlock(&m->mu);
	audit_event(m, ev[st], r, NULL);
	notify(m, ev[st] + 7, r);
	if (st == SL_REV_APPROVED && r->grant_for_ms > 0) {
		struct grant *g = calloc(1, sizeof(*g));

		if (g != NULL) {
			g->subject = strdup(r->subject);
			g->connection = strdup(r->connection);
			g->rule = strdup(r->rule);
			g->until_us = sl_now_us() + r->grant_for_ms * 1000;
			pthread_mutex_lock(&m->mu);
			g->next = m->grants;
			m->grants = g;
			pthread_mutex_unlock(&m->mu);
			audit_event(m, "grant_created", r,
				    json_pack("{s:I}", "grant_until_us", (json_int_t)g->until_us));
		}
	}
	r->done = NULL;
	pthread_mutex_lock(&m->mu);
	for (struct review **pp = &m->finishing; *pp; pp = &(*pp)->next) {
		if (*pp == r) {
			*pp = r->next;
			break;
		}
	}
	retire(m, r);
	pthread_mutex_unlock(&m->mu);
	if (done)
		done(arg, st, reason ? reason : "");
}

static void *
timer_main(void *arg)
{
	struct sl_review_mgr *m = arg;

	pthread_mutex_lock(&m->mu);
	while (!m->stop) {
		int64_t now = sl_now_us(), next = now + 1000000;
		struct review *r;

		for (r = m->pending; r; r = r->next) {
			if (r->expires_us <= now)
				break;
			if (r->expires_us < next)
				next = r->expires_us;
		}
		if (r != NULL) {
			unlink_pending(m, r->id);
			pthread_mutex_unlock(&m->mu);
			finish(m, r, SL_REV_EXPIRED, NULL, "approval timed out");
			pthread_mutex_lock(&m->mu);
			continue;
		}
		{
			struct timespec ts;

			ts.tv_sec = (time_t)(next / 1000000);
			ts.tv_nsec = (long)(next % 1000000) * 1000;
			pthread_cond_timedwait(&m->cv, &m->mu, &ts);
		}
	}
	pthread_mutex_unlock(&m->mu);
	return NULL;
}

int
sl_review_mgr_new(const struct sl_config *cfg, struct sl_audit *audit, struct sl_review_mgr **out)
{
	struct sl_review_mgr *m = calloc(1, sizeof(*m));

	if (m == NULL)
		return SL_ENOMEM;
	m->cfg = cfg;
	m->audit = audit;
	pthread_mutex_init(&m->mu, NULL);
	pthread_cond_init(&m->cv, NULL);
	pthread_mutex_init(&m->hmu, NULL);
	{
		pthread_condattr_t ca;

		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_init(&m->hcv, &ca);
		pthread_condattr_destroy(&ca);
	}
	m->hq = sl_review_hookq_new(HOOK_MAX, HOOK_MAX_PER_SUBJECT);
	if (m->hq == NULL) {
		free(m);
		return SL_ENOMEM;
	}
	if (pthread_create(&m->thread, NULL, timer_main, m) != 0) {
		sl_review_hookq_free(m->hq);
		free(m);
		return SL_EIO;
	}
	if (pthread_create(&m->hook_thread, NULL, hook_main, m) != 0) {
		pthread_mutex_lock(&m->mu);
		m->stop = 1;
		pthread_cond_signal(&m->cv);
		pthread_mutex_unlock(&m->mu);
		pthread_join(m->thread, NULL);
		sl_review_hookq_free(m->hq);
		free(m);
		return SL_EIO;
	}
	*out = m;
	return 0;
}

void
sl_review_mgr_stop(struct sl_review_mgr *m, int64_t deadline_us)
{
	if (m == NULL || m->stopped)
		return;
	m->stopped = 1;
	pthread_mutex_lock(&m->mu);
	m->stop = 1;
	pthread_cond_signal(&m->cv);
	pthread_mutex_unlock(&m->mu);
	pthread_join(m->thread, NULL);
	for (;;) {
		struct review *r;

		pthread_mutex_lock(&m->mu);
		r = m->pending;
		if (r)
			unlink_pending(m, r->id);
		pthread_mutex_unlock(&m->mu);
		if (r == NULL)
			break;
		finish(m, r, SL_REV_CANCELLED, NULL, "gateway shutting down");
	}
	pthread_mutex_lock(&m->hmu);
	m->hstop = 1;
	/* what is queued goes out until the deadline, then is dropped; a
	 * request in flight is cut off there (post_progress) */
	atomic_store(&m->hdeadline, deadline_us > 0 ? deadline_us : 1);
	pthread_cond_signal(&m->hcv);
	pthread_mutex_unlock(&m->hmu);
	pthread_join(m->hook_thread, NULL);
}

void
sl_review_mgr_free(struct sl_review_mgr *m)
{
	if (m == NULL)
		return;
	sl_review_mgr_stop(m, sl_mono_us() + SL_REVIEW_STOP_GRACE_MS * 1000LL);
	while (m->decided) {
		struct review *r = m->decided;

		m->decided = r->next;
		review_free(r);
	}
	sl_review_hookq_free(m->hq);
	while (m->grants) {
		struct grant *g = m->grants;

		m->grants = g->next;
		free(g->subject);
		free(g->connection);
		free(g->rule);
		free(g);
	}
	pthread_mutex_destroy(&m->hmu);
	pthread_cond_destroy(&m->hcv);
	pthread_mutex_destroy(&m->mu);
	pthread_cond_destroy(&m->cv);
	free(m);
}

/* The request hash binds the review to exactly what will be forwarded. */
static void
request_hash(const struct sl_review_req *q, char out[65])
{
	EVP_MD_CTX *c = EVP_MD_CTX_new();
	uint8_t h[32];
	unsigned int hl = 32;
	const char *parts[] = {q->subject, q->connection, q->session_id};

	memset(h, 0, sizeof(h));
	if (c != NULL && EVP_DigestInit_ex(c, EVP_sha256(), NULL) == 1) {
		for (size_t i = 0; i < 3; i++) {
			uint64_t n = parts[i] ? strlen(parts[i]) : 0;

			EVP_DigestUpdate(c, &n, sizeof(n));
			if (n)
				EVP_DigestUpdate(c, parts[i], n);
		}
		{
			uint64_t n = q->nbytes;

			EVP_DigestUpdate(c, &n, sizeof(n));
			EVP_DigestUpdate(c, q->bytes, q->nbytes);
		}
		EVP_DigestFinal_ex(c, h, &hl);
	}
	EVP_MD_CTX_free(c);
	sl_hex(h, 32, out);
}

int
sl_review_submit(struct sl_review_mgr *m, const struct sl_review_req *q, sl_review_done_fn done,
		 void *arg, char id[40])
{
	struct review *r = calloc(1, sizeof(*r));
	uint8_t rnd[16];

	if (r == NULL)
		return SL_ENOMEM;
	pthread_mutex_lock(&m->mu);
	{
		int64_t now = sl_now_us();

		for (struct grant **gp = &m->grants; *gp;) {
			struct grant *g = *gp;

			if (g->until_us <= now) {
				*gp = g->next;
				free(g->subject);
				free(g->connection);
				free(g->rule);
				free(g);
				continue;
			}
			if (strcmp(g->subject, q->subject ? q->subject : "") == 0 &&
			    strcmp(g->connection, q->connection ? q->connection : "") == 0 &&
			    strcmp(g->rule, q->rule ? q->rule : "") == 0) {
				json_t *d =
					json_pack("{s:s, s:s, s:s, s:s, s:I}", "subject",
						  g->subject, "connection", g->connection, "rule",
						  g->rule, "text", q->text ? q->text : "",
						  "grant_until_us", (json_int_t)g->until_us);

				pthread_mutex_unlock(&m->mu);
				free(r);
				sl_audit_append(m->audit, "grant_used", q->session_id,
						q->trace_id && q->trace_id[0] ? q->trace_id : NULL,
						NULL, d, NULL, NULL);
				return SL_REVIEW_GRANTED;
			}
			gp = &g->next;
		}
	}
	pthread_mutex_unlock(&m->mu);
	sl_random(rnd, sizeof(rnd));
	sl_hex(rnd, sizeof(rnd), r->id);
	request_hash(q, r->hash);
	r->session = sdup(q->session_id);
	r->subject = sdup(q->subject);
	r->connection = sdup(q->connection);
	r->protocol = sdup(q->protocol);
	r->text = sdup(q->text);
	r->policy = sdup(q->policy);
	r->rule = sdup(q->rule);
	r->trace = sdup(q->trace_id);
	r->kinds = sdup(q->kinds);
	r->approvers = calloc(q->napprovers + 1, sizeof(char *));
	if (r->approvers == NULL) {
		review_free(r);
		return SL_ENOMEM;
	}
	for (size_t i = 0; i < q->napprovers; i++)
		r->approvers[r->napprovers++] = strdup(q->approvers[i]);
	r->min_approvals = q->min_approvals ? q->min_approvals : 1;
	r->grant_for_ms = q->grant_for_ms;
	if (r->min_approvals > MAX_VOTES)
		r->min_approvals = MAX_VOTES;
	r->created_us = sl_now_us();
	r->expires_us = r->created_us + (q->timeout_ms > 0 ? q->timeout_ms : 300000) * 1000;
	r->done = done;
	r->arg = arg;
	pthread_mutex_lock(&m->mu);
	if (m->npending >= MAX_PENDING || m->stop) {
		pthread_mutex_unlock(&m->mu);
		review_free(r);
		return SL_ETOOBIG;
	}
	r->next = m->pending;
	m->pending = r;
	m->npending++;
	memcpy(id, r->id, sizeof(r->id));
	audit_event(m, "review_created", r, NULL);
	notify(m, "created", r);
	pthread_cond_signal(&m->cv);
	pthread_mutex_unlock(&m->mu);
	sl_info("review %s: %s on %s waits for %u approval(s) from %s", r->id, r->subject,
		r->connection, r->min_approvals, r->napprovers ? r->approvers[0] : "?");
	return 0;
}

void
sl_review_cancel(struct sl_review_mgr *m, const char *id)
{
	sl_review_cancel_why(m, id, "client disconnected");
}

void
sl_review_cancel_why(struct sl_review_mgr *m, const char *id, const char *why)
{
	struct review *r;

	pthread_mutex_lock(&m->mu);
	r = unlink_pending(m, id);
	pthread_mutex_unlock(&m->mu);
	if (r)
		finish(m, r, SL_REV_CANCELLED, NULL, why);
}

/* A refused vote on a pending review is audited (who tried, why it was
 * refused: a requester approving their own statement, an outsider), then
 * reported. Called with m->mu held; releases it. */
static int
vote_refused(struct sl_review_mgr *m, struct review *r, const struct sl_identity *who, int approve,
	     const char *msg, int rc, char *why, size_t whylen)
{
	/* a small record (not the review's text again): anyone with a token
	 * can be refused any number of times */
	json_t *d =
		json_pack("{s:s, s:s, s:s, s:s, s:s}", "id", r->id, "voter",
			  who->subject ? who->subject : "", "vote", approve ? "approve" : "deny",
			  "refusal", msg, "rule", r->rule ? r->rule : "");

	if (d == NULL || sl_audit_append(m->audit, "review_vote_refused", r->session, NULL, NULL, d,
					 NULL, NULL) != 0)
		sl_error("review %s: could not record a refused vote in the audit trail", r->id);
	pthread_mutex_unlock(&m->mu);
	snprintf(why, whylen, "%s", msg);
	return rc;
}

int
sl_review_decide(struct sl_review_mgr *m, const char *id, int approve,
		 const struct sl_identity *who, const char *reason, const char *expect_hash,
		 char *why, size_t whylen)
{
	struct review *r;
	int in_group = 0;

	pthread_mutex_lock(&m->mu);
	for (r = m->pending; r; r = r->next)
		if (strcmp(r->id, id) == 0)
			break;
	if (r == NULL) {
		int decided = 0;

		for (int i = 1; i < 3; i++) /* finishing, decided */
			for (struct review *d = list_at(m, i); d; d = d->next)
				if (strcmp(d->id, id) == 0)
					decided = 1;
		pthread_mutex_unlock(&m->mu);
		snprintf(why, whylen, decided ? "review already decided" : "no such review");
		return decided ? SL_ESTATE : SL_ENOENT;
	}
	if (r->expires_us <= sl_now_us()) {
		/* its deadline passed and the expiry sweep has not run yet: a
		 * vote now would run what the requester was told timed out */
		unlink_pending(m, id);
		pthread_mutex_unlock(&m->mu);
		finish(m, r, SL_REV_EXPIRED, NULL, "approval timed out");
		snprintf(why, whylen, "review expired");
		return SL_ESTATE;
	}
	if (strcmp(who->subject, r->subject) == 0)
		return vote_refused(m, r, who, approve,
				    "the requester cannot decide their own request", SL_EPOLICY,
				    why, whylen);
	for (size_t i = 0; i < r->napprovers; i++)
		if (sl_identity_in_group(who, r->approvers[i]))
			in_group = 1;
	if (!in_group)
		return vote_refused(m, r, who, approve,
				    "not a member of an approver group for this rule", SL_EPOLICY,
				    why, whylen);
	if (expect_hash != NULL && strcmp(expect_hash, r->hash) != 0)
		return vote_refused(m, r, who, approve,
				    "request hash does not match the held request", SL_EINVAL, why,
				    whylen);
	for (size_t i = 0; i < r->nvotes; i++)
		if (strcmp(r->voters[i], who->subject) == 0)
			return vote_refused(m, r, who, approve, "already voted on this review",
					    SL_EPOLICY, why, whylen);
	if (!approve) {
		unlink_pending(m, id);
		pthread_mutex_unlock(&m->mu);
		finish(m, r, SL_REV_DENIED, who->subject,
		       reason && *reason ? reason : "denied by an approver");
		return 0;
	}
	r->voters[r->nvotes++] = strdup(who->subject);
	{
		json_t *x = json_pack("{s:s, s:s}", "approver", who->subject, "vote_reason",
				      reason ? reason : "");

		audit_event(m, "review_approval", r, x);
	}
	if (r->nvotes < r->min_approvals) {
		pthread_mutex_unlock(&m->mu);
		return 0;
	}
	unlink_pending(m, id);
	pthread_mutex_unlock(&m->mu);
	finish(m, r, SL_REV_APPROVED, who->subject, reason && *reason ? reason : "approved");
	return 0;
}

/* Whether who may see r: its requester or one of its approvers. */
static int
may_see(const struct review *r, const struct sl_identity *who)
{
	if (who == NULL)
		return 1;
	if (who->subject != NULL && strcmp(who->subject, r->subject) == 0)
		return 1;
	for (size_t i = 0; i < r->napprovers; i++)
		if (sl_identity_in_group(who, r->approvers[i]))
			return 1;
	return 0;
}

json_t *
sl_review_list_json(struct sl_review_mgr *m, const char *status, const struct sl_identity *who)
{
	json_t *a = json_array();

	pthread_mutex_lock(&m->mu);
	for (int i = 0; i < 3; i++)
		for (struct review *r = list_at(m, i); r; r = r->next)
			if ((status == NULL || strcmp(status, state_names[r->st]) == 0) &&
			    may_see(r, who))
				json_array_append_new(a, review_json(r));
	pthread_mutex_unlock(&m->mu);
	return a;
}

json_t *
sl_review_get_json(struct sl_review_mgr *m, const char *id, const struct sl_identity *who)
{
	json_t *o = NULL;
	int found = 0;

	pthread_mutex_lock(&m->mu);
	for (int i = 0; i < 3 && !found; i++)
		for (struct review *r = list_at(m, i); r && !found; r = r->next)
			if (strcmp(r->id, id) == 0) {
				found = 1;
				if (may_see(r, who))
					o = review_json(r);
			}
	pthread_mutex_unlock(&m->mu);
	return o;
}
