/*
 * admin.c - the admin API: HTTP/1.1 + JSON on gateway.admin.listen, on
 * threads of its own (never a data-path loop).
 *
 * One event-loop thread accepts every connection and reads them all
 * without blocking (epoll), parsing each with llhttp as its bytes arrive,
 * with size limits and one deadline per request: 5 s in all to send it,
 * however slowly (then 408). Only a complete request goes to a small fixed
 * pool of handler threads, which may block (a token can need its issuer's
 * keys fetched); their answer goes back to the loop, which writes it as
 * the peer takes it. An idle or slow client thus costs a descriptor and a
 * small buffer, never a thread: thousands of them do not hold up the
 * approvers, whose requests arrive whole at once.
 *
 * Connections are limited by the descriptor limit (conn_limit()). At the
 * limit a new connection closes the oldest one still sending its request
 * (503) rather than being refused, so a flood cannot starve new approvers;
 * and one client address may have only a share of the connections still
 * sending (its own oldest is closed past that).
 *
 * Every call is authenticated with the caller's own OIDC bearer token,
 * checked by the same identity code as the data path.
 *
 *   GET  /healthz
 *   GET  /api/reviews[?status=pending]
 *   GET  /api/reviews/{id}
 *   POST /api/reviews/{id}/approve   {"reason": "...", "expect_hash": "..."}
 *   POST /api/reviews/{id}/deny      {"reason": "..."}
 */
#include "sluice/review.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <llhttp.h>

#include "sluice/identity.h"
#include "sluice/net.h"

#define MAX_HEADERS_BYTES (16u << 10)
#define MAX_BODY	  (64u << 10)
#define MAX_AUTH	  (SL_JWT_MAX + 64)
#define MAX_REPLY	  ((size_t)256 << 20) /* every review kept, listed */
#define REQUEST_MS	  5000		      /* to send the whole request, however slowly */
#define REPLY_MS	  5000		      /* to take the whole answer */
#define HANDLERS	  4		      /* threads answering complete requests */
#define FD_SHARE	  8		      /* connections: an eighth of the descriptor limit, */
#define CONNS_MIN	  64		      /* but at least this many */
#define CONNS_MAX	  4096		      /* and at most this many */
#define ADDR_SHARE	  2		      /* one address: half of them still sending */
#define HELD_MAX	  ((size_t)32 << 20)  /* bodies of requests still being sent */
#define ADDR_BUCKETS	  1024
#define ACCEPT_BATCH	  16 /* per loop pass: reads are not left behind */
#define READS_PER_PASS	  4  /* of sizeof(rbuf), per connection and pass */

struct req {
	char url[1024];
	size_t urllen;
	char hfield[64];
	size_t hflen;
	char *auth; /* MAX_AUTH bytes once an Authorization header comes */
	size_t authlen;
	int in_auth;
	struct sl_buf body;
	size_t header_bytes;
	int too_big, body_big, url_too_long, oom, done;
};

enum conn_state {
	/* Reading its request: on the loop's reading list (accept order, so
	 * also deadline order) and counted for its peer address. */
	ST_READING,
	/* Its request is complete and with the handler pool, queued or being
	 * answered; the loop neither watches nor touches it. */
	ST_HANDLING,
	/* Its answer is in out: the loop writes it as the peer takes it, on
	 * the writing list (deadline order). */
	ST_WRITING,
	/* Its descriptor is closed: on the closed list, freed at the end of
	 * the loop pass (an event for it may still be in the batch). */
	ST_CLOSED,
};

/* A client address (IPv6: its /64) and how many of its connections are
 * still sending their request. */
struct peer {
	struct peer *next;
	uint8_t key[16];
	unsigned nreading;
};

struct conn {
	struct sl_admin *a;
	int fd;
	int watched; /* registered with epoll */
	enum conn_state state;
	int64_t deadline_us;
	struct conn *prev, *next; /* on the reading, writing or closed list */
	struct conn *qnext;	  /* on the handlers' queue or the answered list */
	struct peer *peer;	  /* while ST_READING */
	llhttp_t p;
	struct req r;
	size_t held;	   /* body buffer counted in a->held (ST_READING) */
	struct sl_buf out; /* the answer; [off, len) not written yet */
};

struct conn_list {
	struct conn *head, *tail;
};

struct sl_admin {
	int fd;
	int stop_pipe[2];
	int ep;
	int wake_fd; /* eventfd: answers are waiting on the answered list */
	pthread_t thread;
	pthread_t handlers[HANDLERS];
	unsigned nhandlers;
	struct sl_idp *idp;
	struct sl_review_mgr *m;
	llhttp_settings_t settings;
	/* the loop thread's alone */
	struct conn_list reading, writing, closed;
	unsigned nconns; /* with a descriptor open, in any state */
	size_t held;	 /* body bytes buffered by connections still sending */
	unsigned max_conns, max_per_addr;
	int64_t accept_paused_until; /* out of descriptors: 0 when accepting */
	int64_t warned_us;
	struct peer *peers[ADDR_BUCKETS];
	char rbuf[8192];
	/* shared with the handlers, under mu */
	pthread_mutex_t mu;
	pthread_cond_t work;
	struct conn *queue, *queue_tail;       /* complete requests, oldest first */
	struct conn *answered, *answered_tail; /* for the loop to write */
	int stopping;
};

static int
on_url(llhttp_t *p, const char *at, size_t n)
{
	struct req *r = p->data;

	if (r->urllen + n >= sizeof(r->url)) {
		r->url_too_long = 1;
		return HPE_USER;
	}
	memcpy(r->url + r->urllen, at, n);
	r->urllen += n;
	r->url[r->urllen] = '\0';
	return 0;
}

static int
on_hfield(llhttp_t *p, const char *at, size_t n)
{
	struct req *r = p->data;

	r->header_bytes += n;
	if (r->in_auth) {
		r->in_auth = 0;
		r->hflen = 0;
	}
	if (r->hflen + n < sizeof(r->hfield)) {
		memcpy(r->hfield + r->hflen, at, n);
		r->hflen += n;
		r->hfield[r->hflen] = '\0';
	}
	return r->header_bytes > MAX_HEADERS_BYTES ? HPE_USER : 0;
}

static int
on_hvalue(llhttp_t *p, const char *at, size_t n)
{
	struct req *r = p->data;

	r->header_bytes += n;
	if (strcasecmp(r->hfield, "authorization") == 0) {
		r->in_auth = 1;
		/* only for a request that carries one: an idle connection
		 * costs little */
		if (r->auth == NULL && (r->auth = malloc(MAX_AUTH)) == NULL) {
			r->oom = 1;
			return HPE_USER;
		}
		if (r->authlen + n < MAX_AUTH) {
			memcpy(r->auth + r->authlen, at, n);
			r->authlen += n;
			r->auth[r->authlen] = '\0';
		} else {
			r->too_big = 1;
		}
	}
	return r->header_bytes > MAX_HEADERS_BYTES ? HPE_USER : 0;
}

static int
on_hvalue_done(llhttp_t *p)
{
	struct req *r = p->data;

	r->hflen = 0;
	r->hfield[0] = '\0';
	return 0;
}

static int
on_body(llhttp_t *p, const char *at, size_t n)
{
	struct req *r = p->data;

	if (sl_buf_append(&r->body, at, n) != 0) {
		r->body_big = 1;
		return HPE_USER;
	}
	return 0;
}

static int
on_done(llhttp_t *p)
{
	((struct req *)p->data)->done = 1;
	return HPE_PAUSED;
}

static void
req_init(struct req *r)
{
	memset(r, 0, sizeof(*r));
	sl_buf_init(&r->body, MAX_BODY);
}

/* Wipes the token (the request keeps no other secret) and frees what r
 * holds; r may be fini'd again. */
static void
req_fini(struct req *r)
{
	if (r->auth != NULL) {
		OPENSSL_cleanse(r->auth, MAX_AUTH);
		free(r->auth);
		r->auth = NULL;
	}
	r->authlen = 0;
	sl_buf_fini(&r->body);
}

static void
settings_init(llhttp_settings_t *st)
{
	llhttp_settings_init(st);
	st->on_url = on_url;
	st->on_header_field = on_hfield;
	st->on_header_value = on_hvalue;
	st->on_header_value_complete = on_hvalue_done;
	st->on_body = on_body;
	st->on_message_complete = on_done;
}

/* Formats an answer with body (consumed) into out, replacing what it had:
 * one response, then the connection closes. */
static void
reply(struct sl_buf *out, int code, json_t *body)
{
	static const struct {
		int code;
		const char *text;
	} texts[] = {{200, "OK"},
		     {400, "Bad Request"},
		     {401, "Unauthorized"},
		     {403, "Forbidden"},
		     {404, "Not Found"},
		     {405, "Method Not Allowed"},
		     {408, "Request Timeout"},
		     {409, "Conflict"},
		     {413, "Payload Too Large"},
		     {431, "Request Header Fields Too Large"},
		     {500, "Internal Server Error"},
		     {503, "Service Unavailable"}};
	static const char oom[] = "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n"
				  "Connection: close\r\n\r\n";
	const char *t = "Error";
	char head[256], *s;
	size_t n;
	int hl;

	for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++)
		if (texts[i].code == code)
			t = texts[i].text;
	s = json_dumps(body, JSON_COMPACT);
	json_decref(body);
	n = s ? strlen(s) : 0;
	hl = snprintf(head, sizeof(head),
		      "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
		      "Connection: close\r\n%s\r\n",
		      code, t, n + 1, code == 401 ? "WWW-Authenticate: Bearer\r\n" : "");
	out->off = out->len = 0;
	if (sl_buf_append(out, head, (size_t)hl) != 0 || sl_buf_append(out, s, n) != 0 ||
	    sl_buf_append(out, "\n", 1) != 0) {
		out->off = out->len = 0;
		if (sl_buf_append(out, oom, sizeof(oom) - 1) != 0) {
			/* nothing to send: the connection just closes */
		}
	}
	free(s);
}

static json_t *
error_json(const char *msg)
{
	return json_pack("{s:s}", "error", msg);
}

/* Answers the complete request r (method: its method's name) into out, as
 * the caller r's token says. Runs on a handler thread: it may block (a
 * token with a new key has its issuer's keys fetched, up to 3 s). */
static void
handle(struct sl_admin *a, struct sl_buf *out, struct req *r, const char *method)
{
	struct sl_identity who;
	char err[256] = "", id[64], *q;
	const char *tok;
	int rc;

	if (strcmp(r->url, "/healthz") == 0) {
		reply(out, 200, json_pack("{s:s}", "status", "ok"));
		return;
	}
	if (strncmp(r->url, "/api/", 5) != 0) {
		reply(out, 404, error_json("not found"));
		return;
	}
	if (r->authlen < 8 || strncasecmp(r->auth, "Bearer ", 7) != 0) {
		reply(out, 401, error_json("a bearer token is required"));
		return;
	}
	tok = r->auth + 7;
	while (*tok == ' ')
		tok++;
	rc = sl_idp_verify(a->idp, tok, strlen(tok), sl_now_us() / 1000000, &who, err, sizeof(err));
	if (rc == SL_ENOKEY && sl_idp_refresh(a->idp, tok, strlen(tok)) == 0)
		rc = sl_idp_verify(a->idp, tok, strlen(tok), sl_now_us() / 1000000, &who, err,
				   sizeof(err));
	if (rc != 0) {
		char m[300];

		snprintf(m, sizeof(m), "token refused: %s", err[0] ? err : sl_strerror(rc));
		reply(out, 401, error_json(m));
		return;
	}
	q = strchr(r->url, '?');
	if (q)
		*q++ = '\0';
	if (strcmp(r->url, "/api/reviews") == 0) {
		const char *status = NULL;

		if (strcmp(method, "GET") != 0) {
			reply(out, 405, error_json("use GET"));
			goto out;
		}
		for (char *p = q; p != NULL && *p != '\0';) {
			char *amp = strchr(p, '&');

			if (amp)
				*amp = '\0';
			if (strncmp(p, "status=", 7) == 0)
				status = p + 7;
			p = amp ? amp + 1 : NULL;
		}
		/* only what the caller requested or may vote on: another
		 * agent's held statements are not its business */
		reply(out, 200,
		      json_pack("{s:o}", "reviews", sl_review_list_json(a->m, status, &who)));
		goto out;
	}
	if (strncmp(r->url, "/api/reviews/", 13) == 0) {
		const char *rest = r->url + 13, *slash = strchr(rest, '/');
		size_t idlen = slash ? (size_t)(slash - rest) : strlen(rest);

		if (idlen == 0 || idlen >= sizeof(id)) {
			reply(out, 404, error_json("no such review"));
			goto out;
		}
		memcpy(id, rest, idlen);
		id[idlen] = '\0';
		if (slash == NULL) {
			json_t *o;

			if (strcmp(method, "GET") != 0) {
				reply(out, 405, error_json("use GET"));
				goto out;
			}
			o = sl_review_get_json(a->m, id, &who); /* none if not the caller's */
			reply(out, o ? 200 : 404, o ? o : error_json("no such review"));
			goto out;
		}
		if (strcmp(slash, "/approve") == 0 || strcmp(slash, "/deny") == 0) {
			json_t *b = NULL;
			const char *reason = NULL, *expect = NULL;
			char why[256] = "";

			if (strcmp(method, "POST") != 0) {
				reply(out, 405, error_json("use POST"));
				goto out;
			}
			if (r->body.len > 0) {
				b = json_loadb((const char *)r->body.data, r->body.len, 0, NULL);
				if (!json_is_object(b)) {
					json_decref(b);
					reply(out, 400, error_json("body must be a JSON object"));
					goto out;
				}
				reason = json_string_value(json_object_get(b, "reason"));
				expect = json_string_value(json_object_get(b, "expect_hash"));
				if ((json_object_get(b, "expect_hash") != NULL && expect == NULL) ||
				    (json_object_get(b, "reason") != NULL && reason == NULL)) {
					/* a hash the approver meant to bind must not be
					 * dropped for its type */
					json_decref(b);
					reply(out, 400,
					      error_json("expect_hash and reason must be strings"));
					goto out;
				}
			}
			rc = sl_review_decide(a->m, id, strcmp(slash, "/approve") == 0, &who,
					      reason, expect, why, sizeof(why));
			json_decref(b);
			if (rc == 0) {
				json_t *o = sl_review_get_json(a->m, id, &who);

				reply(out, 200, o ? o : json_object());
			} else {
				reply(out,
				      rc == SL_ENOENT	? 404
				      : rc == SL_ESTATE ? 409
				      : rc == SL_EINVAL ? 409
							: 403,
				      error_json(why));
			}
			goto out;
		}
	}
	reply(out, 404, error_json("not found"));
out:
	sl_identity_fini(&who);
}

int
sl_admin_parse_request(const uint8_t *data, size_t len, char *url, size_t urllen, int *status)
{
	llhttp_t p;
	llhttp_settings_t st;
	struct req *r = malloc(sizeof(*r));
	llhttp_errno_t e;
	int done;

	if (r == NULL)
		return SL_ENOMEM;
	req_init(r);
	settings_init(&st);
	llhttp_init(&p, HTTP_REQUEST, &st);
	p.data = r;
	e = llhttp_execute(&p, (const char *)data, len);
	done = r->done;
	*status = r->body_big ? 413 : done ? 200 : e == HPE_OK ? 0 : 400;
	snprintf(url, urllen, "%s", r->url);
	req_fini(r);
	free(r);
	return 0;
}

/* ------------------------------------------------------------ connections */

static void
list_push(struct conn_list *l, struct conn *c)
{
	c->next = NULL;
	c->prev = l->tail;
	if (l->tail)
		l->tail->next = c;
	else
		l->head = c;
	l->tail = c;
}

static void
list_del(struct conn_list *l, struct conn *c)
{
	if (c->prev)
		c->prev->next = c->next;
	else
		l->head = c->next;
	if (c->next)
		c->next->prev = c->prev;
	else
		l->tail = c->prev;
	c->prev = c->next = NULL;
}

static struct conn *
list_pop(struct conn_list *l)
{
	struct conn *c = l->head;

	if (c != NULL) {
		l->head = c->next;
		if (l->head != NULL)
			l->head->prev = NULL;
		else
			l->tail = NULL;
		c->next = NULL;
	}
	return c;
}

/* The key counting an address's connections: an IPv4 address (also
 * v4-mapped), or an IPv6 address's /64, which one host has all of. */
static void
peer_key(const struct sockaddr_storage *ss, uint8_t key[16])
{
	memset(key, 0, 16);
	if (ss->ss_family == AF_INET) {
		memcpy(key, &((const struct sockaddr_in *)(const void *)ss)->sin_addr, 4);
		key[15] = 4;
	} else if (ss->ss_family == AF_INET6) {
		const struct in6_addr *in6 =
			&((const struct sockaddr_in6 *)(const void *)ss)->sin6_addr;

		if (IN6_IS_ADDR_V4MAPPED(in6)) {
			memcpy(key, in6->s6_addr + 12, 4);
			key[15] = 4;
		} else {
			memcpy(key, in6->s6_addr, 8);
			key[15] = 6;
		}
	}
}

static unsigned
peer_hash(const uint8_t key[16])
{
	uint32_t h = 2166136261u;

	for (int i = 0; i < 16; i++)
		h = (h ^ key[i]) * 16777619u;
	return h & (ADDR_BUCKETS - 1);
}

/* The entry for ss's address, created with no connections if new; NULL
 * when out of memory. */
static struct peer *
peer_get(struct sl_admin *a, const struct sockaddr_storage *ss)
{
	uint8_t key[16];
	struct peer *p;
	unsigned h;

	peer_key(ss, key);
	h = peer_hash(key);
	for (p = a->peers[h]; p != NULL; p = p->next)
		if (memcmp(p->key, key, sizeof(key)) == 0)
			return p;
	if ((p = calloc(1, sizeof(*p))) == NULL)
		return NULL;
	memcpy(p->key, key, sizeof(key));
	p->next = a->peers[h];
	a->peers[h] = p;
	return p;
}

/* Frees p once none of its connections is still sending. */
static void
peer_release(struct sl_admin *a, struct peer *p)
{
	struct peer **pp = &a->peers[peer_hash(p->key)];

	if (p->nreading > 0)
		return;
	while (*pp != p)
		pp = &(*pp)->next;
	*pp = p->next;
	free(p);
}

/* Moves c to state st, keeping the lists, counts and epoll registration
 * that go with each state. Loop thread only. */
static void
set_state(struct sl_admin *a, struct conn *c, enum conn_state st)
{
	static const unsigned allowed[] = {
		[ST_READING] = 1u << ST_HANDLING | 1u << ST_WRITING | 1u << ST_CLOSED,
		[ST_HANDLING] = 1u << ST_WRITING,
		[ST_WRITING] = 1u << ST_CLOSED,
		[ST_CLOSED] = 0,
	};

	if (!(allowed[c->state] & (1u << st))) {
		sl_error("admin API: connection state %d -> %d is not allowed", c->state, st);
		abort();
	}
	if (c->state == ST_READING) {
		list_del(&a->reading, c);
		c->peer->nreading--;
		peer_release(a, c->peer);
		c->peer = NULL;
		a->held -= c->held;
		c->held = 0;
	} else if (c->state == ST_WRITING) {
		list_del(&a->writing, c);
	}
	if (c->watched) { /* a writer registers for EPOLLOUT as it needs */
		epoll_ctl(a->ep, EPOLL_CTL_DEL, c->fd, NULL);
		c->watched = 0;
	}
	c->state = st;
	switch (st) {
	case ST_WRITING:
		c->deadline_us = sl_mono_us() + (int64_t)REPLY_MS * 1000;
		list_push(&a->writing, c);
		break;
	case ST_CLOSED:
		close(c->fd);
		c->fd = -1;
		a->nconns--;
		req_fini(&c->r);
		list_push(&a->closed, c);
		break;
	default:
		break;
	}
}

static void
conn_free(struct conn *c)
{
	if (c->fd >= 0)
		close(c->fd);
	req_fini(&c->r);
	sl_buf_fini(&c->out);
	free(c);
}

/* Writes what c's answer has left, as far as the peer takes it now; closes c
 * once it is all written (or the peer is gone), else waits to write more. */
static void
flush(struct sl_admin *a, struct conn *c)
{
	while (sl_buf_unread(&c->out) > 0) {
		ssize_t n = send(c->fd, sl_buf_head(&c->out), sl_buf_unread(&c->out),
				 MSG_NOSIGNAL | MSG_DONTWAIT);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};

			if (!c->watched && epoll_ctl(a->ep, EPOLL_CTL_ADD, c->fd, &ev) == 0)
				c->watched = 1;
			if (c->watched)
				return;
			break;
		}
		if (n <= 0)
			break; /* the client went away */
		c->out.off += (size_t)n;
	}
	set_state(a, c, ST_CLOSED);
}

/* Answers c from the loop (an error, a timeout, a refusal). */
static void
respond(struct sl_admin *a, struct conn *c, int code, json_t *body)
{
	reply(&c->out, code, body);
	set_state(a, c, ST_WRITING);
	flush(a, c);
}

static int
warn_due(struct sl_admin *a)
{
	int64_t now = sl_mono_us();

	if (now - a->warned_us < 10 * 1000000)
		return 0;
	a->warned_us = now;
	return 1;
}

/* Closes (503) the oldest connection still sending its request, of peer p
 * or of anyone (p NULL). Returns whether there was one. */
static int
evict_oldest(struct sl_admin *a, const struct peer *p)
{
	struct conn *c = a->reading.head;

	while (c != NULL && p != NULL && c->peer != p)
		c = c->next;
	if (c == NULL)
		return 0;
	respond(a, c, 503, error_json("too many admin connections at once; retry"));
	if (c->state != ST_CLOSED) /* its slot is wanted now */
		set_state(a, c, ST_CLOSED);
	return 1;
}

/* ------------------------------------------------------------ handlers */

/* Runs on a handler thread: answers c's complete request into c->out. */
static void
serve(struct sl_admin *a, struct conn *c)
{
	struct req *r = &c->r;

	handle(a, &c->out, r, llhttp_method_name((llhttp_method_t)llhttp_get_method(&c->p)));
	req_fini(r); /* the token is not kept a moment longer */
}

static void *
handler_main(void *arg)
{
	struct sl_admin *a = arg;
	const uint64_t one = 1;

	for (;;) {
		struct conn *c;

		pthread_mutex_lock(&a->mu);
		while (!a->stopping && a->queue == NULL)
			pthread_cond_wait(&a->work, &a->mu);
		if (a->stopping) {
			pthread_mutex_unlock(&a->mu);
			return NULL;
		}
		c = a->queue;
		a->queue = c->qnext;
		if (a->queue == NULL)
			a->queue_tail = NULL;
		pthread_mutex_unlock(&a->mu);
		c->qnext = NULL;
		serve(a, c);
		pthread_mutex_lock(&a->mu);
		if (a->answered_tail)
			a->answered_tail->qnext = c;
		else
			a->answered = c;
		a->answered_tail = c;
		pthread_mutex_unlock(&a->mu);
		if (write(a->wake_fd, &one, sizeof(one)) < 0) {
			/* the counter is full: the loop has a wake-up pending */
		}
	}
}

/* c's request is complete: to the handlers. */
static void
to_handlers(struct sl_admin *a, struct conn *c)
{
	set_state(a, c, ST_HANDLING);
	pthread_mutex_lock(&a->mu);
	if (a->queue_tail)
		a->queue_tail->qnext = c;
	else
		a->queue = c;
	a->queue_tail = c;
	pthread_cond_signal(&a->work);
	pthread_mutex_unlock(&a->mu);
}

/* Takes the handlers' answers and starts writing them. */
static void
collect_answers(struct sl_admin *a)
{
	uint64_t n;
	struct conn *c;

	if (read(a->wake_fd, &n, sizeof(n)) < 0) {
		/* nothing pending (EAGAIN): the list says what there is */
	}
	pthread_mutex_lock(&a->mu);
	c = a->answered;
	a->answered = a->answered_tail = NULL;
	pthread_mutex_unlock(&a->mu);
	while (c != NULL) {
		struct conn *next = c->qnext;

		c->qnext = NULL;
		set_state(a, c, ST_WRITING);
		flush(a, c);
		c = next;
	}
}

/* ------------------------------------------------------------ the loop */

/* Counts the body c has buffered so far; past HELD_MAX for all the requests
 * still being sent, the oldest of them are closed (so a flood of bodies
 * sent but never finished cannot take the memory: 64 KiB each). Returns -1
 * if c itself was. */
static int
hold(struct sl_admin *a, struct conn *c)
{
	a->held += c->r.body.cap - c->held;
	c->held = c->r.body.cap;
	if (a->held > HELD_MAX && warn_due(a))
		sl_warn("admin API: %zu MiB of request bodies being sent at once; closing the "
			"oldest requests",
			a->held >> 20);
	while (a->held > HELD_MAX && evict_oldest(a, NULL))
		if (c->state != ST_READING)
			return -1;
	return 0;
}

/* Reads what c's peer sent, as far as there is some now, and parses it;
 * hands a complete request to the handlers, answers a bad one. */
static void
on_readable(struct sl_admin *a, struct conn *c)
{
	struct req *r = &c->r;

	for (int i = 0; i < READS_PER_PASS; i++) {
		ssize_t n = read(c->fd, a->rbuf, sizeof(a->rbuf));
		llhttp_errno_t e;

		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
			return;
		if (n <= 0) { /* gone before its request was whole */
			set_state(a, c, ST_CLOSED);
			return;
		}
		e = llhttp_execute(&c->p, a->rbuf, (size_t)n);
		if (r->done && r->too_big)
			respond(a, c, r->body.len >= MAX_BODY ? 413 : 431,
				error_json("request too large"));
		else if (r->done)
			to_handlers(a, c);
		if (r->done)
			return;
		if (e == HPE_OK) {
			if (hold(a, c) != 0)
				return;
			continue;
		}
		if (r->oom)
			respond(a, c, 503, error_json("out of memory; retry"));
		else if (r->body_big)
			respond(a, c, 413, error_json("body too large"));
		else if (r->header_bytes > MAX_HEADERS_BYTES || r->too_big || r->url_too_long)
			respond(a, c, 431, error_json("headers too large"));
		else
			respond(a, c, 400, error_json("malformed HTTP request"));
		return;
	}
}

/* Makes room for a new connection from p (counted in p->nreading): at
 * the limit, the oldest one still sending its request goes (the new one is
 * likely an approver's, whose request comes whole at once; a flood's is the
 * oldest). Returns 0 if there is room, -1 if every connection is being
 * answered. */
static int
make_room(struct sl_admin *a, struct peer *p)
{
	if (p->nreading > a->max_per_addr) { /* the new one counted */
		if (warn_due(a))
			sl_warn("admin API: %u connections from one address still sending their "
				"request; closing its oldest for each new one (a client holding "
				"connections open?)",
				p->nreading - 1);
		evict_oldest(a, p);
	}
	if (a->nconns < a->max_conns)
		return 0;
	if (evict_oldest(a, NULL)) {
		if (warn_due(a))
			sl_warn("admin API: %u connections at once, each given 5 s to send its "
				"request; closing the oldest still sending for each new one (a "
				"client holding connections open?)",
				a->nconns);
		return 0;
	}
	return -1;
}

/* Answers 503 on fd, as far as it takes it at once, and closes it. */
static void
refuse(int fd)
{
	struct sl_buf out;

	sl_buf_init(&out, 4096);
	reply(&out, 503, error_json("too many admin connections at once; retry"));
	if (send(fd, sl_buf_head(&out), sl_buf_unread(&out), MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
		/* it is going anyway */
	}
	sl_buf_fini(&out);
	close(fd);
}

static void
on_accept(struct sl_admin *a, int fd, const struct sockaddr_storage *ss)
{
	struct epoll_event ev = {.events = EPOLLIN};
	struct peer *p = peer_get(a, ss);
	struct conn *c = NULL;

	if (p == NULL) {
		refuse(fd);
		return;
	}
	p->nreading++; /* counts the new one: p stays while room is made */
	if (make_room(a, p) != 0 || (c = calloc(1, sizeof(*c))) == NULL) {
		p->nreading--;
		peer_release(a, p);
		refuse(fd);
		return;
	}
	c->a = a;
	c->fd = fd;
	c->state = ST_READING;
	c->deadline_us = sl_mono_us() + (int64_t)REQUEST_MS * 1000;
	c->peer = p;
	req_init(&c->r);
	sl_buf_init(&c->out, MAX_REPLY);
	llhttp_init(&c->p, HTTP_REQUEST, &a->settings);
	c->p.data = &c->r;
	a->nconns++;
	list_push(&a->reading, c);
	ev.data.ptr = c;
	if (epoll_ctl(a->ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
		set_state(a, c, ST_CLOSED);
		return;
	}
	c->watched = 1;
	/* its request is likely there already: read it before another
	 * accept could push it out as the oldest */
	on_readable(a, c);
}

static void
accept_some(struct sl_admin *a)
{
	for (int i = 0; i < ACCEPT_BATCH; i++) {
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		int fd = accept4(a->fd, (struct sockaddr *)&ss, &sl, SOCK_CLOEXEC | SOCK_NONBLOCK);

		if (fd >= 0) {
			on_accept(a, fd, &ss);
			continue;
		}
		if (errno == EINTR || errno == ECONNABORTED)
			continue;
		if (errno != EMFILE && errno != ENFILE && errno != ENOBUFS && errno != ENOMEM)
			return; /* EAGAIN: all taken */
		/* Out of descriptors: one of ours still sending its request
		 * gives its own up for the new connection, as at the limit */
		if (evict_oldest(a, NULL))
			continue;
		/* None to give: the listening socket stays readable, so stop
		 * watching it a moment rather than spin. */
		epoll_ctl(a->ep, EPOLL_CTL_DEL, a->fd, NULL);
		a->accept_paused_until = sl_mono_us() + 250 * 1000;
		return;
	}
}

/* Answers 408 to requests out of time, closes answers not taken in time;
 * returns the ms until the next deadline (-1: none). */
static int
expire(struct sl_admin *a)
{
	int64_t now = sl_mono_us(), next = INT64_MAX;

	while (a->reading.head != NULL && a->reading.head->deadline_us <= now)
		/* one deadline for the whole request: a byte every few
		 * seconds does not keep the connection */
		respond(a, a->reading.head, 408, error_json("request not received in time"));
	while (a->writing.head != NULL && a->writing.head->deadline_us <= now)
		set_state(a, a->writing.head, ST_CLOSED);
	if (a->accept_paused_until != 0 && a->accept_paused_until <= now) {
		struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &a->fd};

		a->accept_paused_until = 0;
		epoll_ctl(a->ep, EPOLL_CTL_ADD, a->fd, &ev);
	}
	if (a->reading.head != NULL)
		next = a->reading.head->deadline_us;
	if (a->writing.head != NULL && a->writing.head->deadline_us < next)
		next = a->writing.head->deadline_us;
	if (a->accept_paused_until != 0 && a->accept_paused_until < next)
		next = a->accept_paused_until;
	return next == INT64_MAX ? -1 : (int)((next - now) / 1000) + 1;
}

static void *
admin_main(void *arg)
{
	struct sl_admin *a = arg;
	struct epoll_event evs[128];
	int timeout = -1;

	for (;;) {
		int n = epoll_wait(a->ep, evs, sizeof(evs) / sizeof(evs[0]), timeout);

		if (n < 0 && errno != EINTR)
			break;
		for (int i = 0; i < n; i++) {
			void *tag = evs[i].data.ptr;
			struct conn *c = tag;

			if (tag == &a->stop_pipe)
				return NULL;
			if (tag == &a->fd)
				accept_some(a);
			else if (tag == &a->wake_fd)
				collect_answers(a);
			else if (c->state == ST_READING)
				on_readable(a, c);
			else if (c->state == ST_WRITING)
				flush(a, c);
		}
		timeout = expire(a);
		for (struct conn *c; (c = list_pop(&a->closed)) != NULL;)
			conn_free(c); /* no event refers to them now */
	}
	return NULL;
}

/* How many admin connections at once: a share of the descriptor limit (the
 * gateway raised it to the hard limit; sessions take most of it). */
static unsigned
conn_limit(void)
{
	struct rlimit rl;
	rlim_t fds = 1024, n;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
		fds = rl.rlim_cur == RLIM_INFINITY ? (rlim_t)1 << 20 : rl.rlim_cur;
	n = fds / FD_SHARE;
	return n < CONNS_MIN ? CONNS_MIN : n > CONNS_MAX ? CONNS_MAX : (unsigned)n;
}

/* Frees every connection and address left (the threads have ended). */
static void
drop_all(struct sl_admin *a)
{
	struct conn_list *lists[] = {&a->reading, &a->writing, &a->closed};
	struct conn *c;

	for (size_t i = 0; i < sizeof(lists) / sizeof(lists[0]); i++)
		while ((c = list_pop(lists[i])) != NULL)
			conn_free(c);
	for (int i = 0; i < 2; i++)
		for (c = i == 0 ? a->queue : a->answered; c != NULL;) {
			struct conn *next = c->qnext;

			conn_free(c);
			c = next;
		}
	a->queue = a->queue_tail = a->answered = a->answered_tail = NULL;
	for (unsigned h = 0; h < ADDR_BUCKETS; h++)
		while (a->peers[h] != NULL) {
			struct peer *p = a->peers[h];

			a->peers[h] = p->next;
			free(p);
		}
}

/* Releases what sl_admin_start set up, threads already ended. */
static void
admin_free(struct sl_admin *a)
{
	drop_all(a);
	if (a->fd >= 0)
		close(a->fd);
	if (a->ep >= 0)
		close(a->ep);
	if (a->wake_fd >= 0)
		close(a->wake_fd);
	if (a->stop_pipe[0] >= 0) {
		close(a->stop_pipe[0]);
		close(a->stop_pipe[1]);
	}
	pthread_cond_destroy(&a->work);
	pthread_mutex_destroy(&a->mu);
	free(a);
}

/* Ends the handler threads (each finishes the request it has). */
static void
stop_handlers(struct sl_admin *a)
{
	pthread_mutex_lock(&a->mu);
	a->stopping = 1;
	pthread_cond_broadcast(&a->work);
	pthread_mutex_unlock(&a->mu);
	for (unsigned i = 0; i < a->nhandlers; i++)
		pthread_join(a->handlers[i], NULL);
	a->nhandlers = 0;
}

/* Listens on ss and starts the handlers and the loop; 0 or -1 (errno). */
static int
admin_listen(struct sl_admin *a, const struct sockaddr_storage *ss)
{
	struct epoll_event ev = {.events = EPOLLIN};
	int one = 1;

	a->fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	a->ep = epoll_create1(EPOLL_CLOEXEC);
	a->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (a->fd < 0 || a->ep < 0 || a->wake_fd < 0 || pipe2(a->stop_pipe, O_CLOEXEC) != 0)
		return -1;
	setsockopt(a->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	/* a flood's connections wait in the backlog: room there keeps an
	 * approver's from being dropped and retried a second later */
	if (bind(a->fd, (const struct sockaddr *)ss,
		 ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
					   : sizeof(struct sockaddr_in)) != 0 ||
	    listen(a->fd, SOMAXCONN) != 0)
		return -1;
	ev.data.ptr = &a->fd;
	if (epoll_ctl(a->ep, EPOLL_CTL_ADD, a->fd, &ev) != 0)
		return -1;
	ev.data.ptr = &a->stop_pipe;
	if (epoll_ctl(a->ep, EPOLL_CTL_ADD, a->stop_pipe[0], &ev) != 0)
		return -1;
	ev.data.ptr = &a->wake_fd;
	if (epoll_ctl(a->ep, EPOLL_CTL_ADD, a->wake_fd, &ev) != 0)
		return -1;
	for (unsigned i = 0; i < HANDLERS; i++) {
		if (pthread_create(&a->handlers[i], NULL, handler_main, a) != 0)
			break;
		a->nhandlers++;
	}
	if (a->nhandlers == 0 || pthread_create(&a->thread, NULL, admin_main, a) != 0) {
		int e = a->nhandlers == 0 ? EAGAIN : errno;

		stop_handlers(a);
		errno = e;
		return -1;
	}
	return 0;
}

int
sl_admin_start(const struct sl_config *cfg, struct sl_idp *idp, struct sl_review_mgr *m,
	       struct sl_admin **out, char *err, size_t errlen)
{
	struct sl_admin *a;
	struct sockaddr_storage ss;

	*out = NULL;
	if (cfg->gateway.admin.listen == NULL)
		return 0;
	if (sl_net_resolve(cfg->gateway.admin.listen, &ss) != 0) {
		snprintf(err, errlen, "gateway.admin.listen: bad address %s",
			 cfg->gateway.admin.listen);
		return SL_EINVAL;
	}
	/* Approvers send their tokens here: never in the clear over a network
	 * unless the operator says a TLS proxy or a private link covers it,
	 * and never under a TLS setting this listener would ignore. */
	if (cfg->gateway.admin.tls_cert != NULL || cfg->gateway.admin.tls_key != NULL) {
		snprintf(err, errlen,
			 "gateway.admin: tls_cert/tls_key are not supported (the admin API speaks "
			 "plain HTTP); terminate TLS in a proxy in front of it");
		return SL_EINVAL;
	}
	if (!sl_net_is_loopback((struct sockaddr *)&ss) && !cfg->gateway.admin.allow_cleartext) {
		snprintf(err, errlen,
			 "gateway.admin.listen %s is not a loopback address: approvers' tokens "
			 "would cross the network in the clear; keep it on loopback behind a "
			 "TLS-terminating proxy, or set gateway.admin.allow_cleartext: true",
			 cfg->gateway.admin.listen);
		return SL_EINVAL;
	}
	a = calloc(1, sizeof(*a));
	if (a == NULL)
		return SL_ENOMEM;
	a->fd = a->ep = a->wake_fd = a->stop_pipe[0] = a->stop_pipe[1] = -1;
	a->idp = idp;
	a->m = m;
	a->max_conns = conn_limit();
	a->max_per_addr = a->max_conns / ADDR_SHARE;
	settings_init(&a->settings);
	pthread_mutex_init(&a->mu, NULL);
	pthread_cond_init(&a->work, NULL);
	if (admin_listen(a, &ss) != 0) {
		snprintf(err, errlen, "cannot listen on %s: %s", cfg->gateway.admin.listen,
			 strerror(errno));
		admin_free(a);
		return SL_EIO;
	}
	*out = a;
	return 0;
}

void
sl_admin_stop(struct sl_admin *a)
{
	if (a == NULL)
		return;
	if (write(a->stop_pipe[1], "x", 1) < 0) {
		/* cannot fail: the pipe is empty */
	}
	pthread_join(a->thread, NULL);
	/* connections still sending or being written to are dropped; a
	 * request being answered is finished first */
	stop_handlers(a);
	admin_free(a);
}
