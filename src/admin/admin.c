/*
 * admin.c - the admin API: HTTP/1.1 + JSON on gateway.admin.listen, on a
 * thread of its own (never a data-path loop). Requests are parsed with
 * llhttp, one request per connection, with size limits and a deadline:
 * each connection has a thread of its own (at most MAX_CONNS at once) and
 * 5 s in all to send its request, so one slow client cannot hold up the
 * approvers.
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
#include <openssl/crypto.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <llhttp.h>

#include "sluice/identity.h"
#include "sluice/net.h"

#define MAX_HEADERS_BYTES (16u << 10)
#define MAX_BODY	  (64u << 10)
#define MAX_CONNS	  512
#define REQUEST_MS	  5000 /* to send the whole request, however slowly */

struct sl_admin {
	int fd;
	int stop_pipe[2];
	pthread_t thread;
	struct sl_idp *idp;
	struct sl_review_mgr *m;
	pthread_mutex_t mu;
	pthread_cond_t idle; /* nconns reached 0 */
	unsigned nconns;     /* connection threads running */
};

struct conn {
	struct sl_admin *a;
	int fd;
};

struct req {
	char url[1024];
	size_t urllen;
	char hfield[64];
	size_t hflen;
	char auth[SL_JWT_MAX + 64];
	size_t authlen;
	int in_auth;
	struct sl_buf body;
	size_t header_bytes;
	int too_big, body_big, url_too_long, done;
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
		if (r->authlen + n < sizeof(r->auth)) {
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
reply(int fd, int code, json_t *body)
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
	if (write(fd, head, (size_t)hl) < 0 || (s && write(fd, s, n) < 0) ||
	    write(fd, "\n", 1) < 0) {
		/* the client went away */
	}
	free(s);
}

static json_t *
error_json(const char *msg)
{
	return json_pack("{s:s}", "error", msg);
}

static void
handle(struct sl_admin *a, int fd, struct req *r, const char *method)
{
	struct sl_identity who;
	char err[256] = "", id[64], *q;
	const char *tok;
	int rc;

	if (strcmp(r->url, "/healthz") == 0) {
		reply(fd, 200, json_pack("{s:s}", "status", "ok"));
		return;
	}
	if (strncmp(r->url, "/api/", 5) != 0) {
		reply(fd, 404, error_json("not found"));
		return;
	}
	if (r->authlen < 8 || strncasecmp(r->auth, "Bearer ", 7) != 0) {
		reply(fd, 401, error_json("a bearer token is required"));
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
		reply(fd, 401, error_json(m));
		return;
	}
	q = strchr(r->url, '?');
	if (q)
		*q++ = '\0';
	if (strcmp(r->url, "/api/reviews") == 0) {
		const char *status = NULL;

		if (strcmp(method, "GET") != 0) {
			reply(fd, 405, error_json("use GET"));
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
		reply(fd, 200,
		      json_pack("{s:o}", "reviews", sl_review_list_json(a->m, status, &who)));
		goto out;
	}
	if (strncmp(r->url, "/api/reviews/", 13) == 0) {
		const char *rest = r->url + 13, *slash = strchr(rest, '/');
		size_t idlen = slash ? (size_t)(slash - rest) : strlen(rest);

		if (idlen == 0 || idlen >= sizeof(id)) {
			reply(fd, 404, error_json("no such review"));
			goto out;
		}
		memcpy(id, rest, idlen);
		id[idlen] = '\0';
		if (slash == NULL) {
			json_t *o;

			if (strcmp(method, "GET") != 0) {
				reply(fd, 405, error_json("use GET"));
				goto out;
			}
			o = sl_review_get_json(a->m, id, &who); /* none if not the caller's */
			reply(fd, o ? 200 : 404, o ? o : error_json("no such review"));
			goto out;
		}
		if (strcmp(slash, "/approve") == 0 || strcmp(slash, "/deny") == 0) {
			json_t *b = NULL;
			const char *reason = NULL, *expect = NULL;
			char why[256] = "";

			if (strcmp(method, "POST") != 0) {
				reply(fd, 405, error_json("use POST"));
				goto out;
			}
			if (r->body.len > 0) {
				b = json_loadb((const char *)r->body.data, r->body.len, 0, NULL);
				if (!json_is_object(b)) {
					json_decref(b);
					reply(fd, 400, error_json("body must be a JSON object"));
					goto out;
				}
				reason = json_string_value(json_object_get(b, "reason"));
				expect = json_string_value(json_object_get(b, "expect_hash"));
				if ((json_object_get(b, "expect_hash") != NULL && expect == NULL) ||
				    (json_object_get(b, "reason") != NULL && reason == NULL)) {
					/* a hash the approver meant to bind must not be
					 * dropped for its type */
					json_decref(b);
					reply(fd, 400,
					      error_json("expect_hash and reason must be strings"));
					goto out;
				}
			}
			rc = sl_review_decide(a->m, id, strcmp(slash, "/approve") == 0, &who,
					      reason, expect, why, sizeof(why));
			json_decref(b);
			if (rc == 0) {
				json_t *o = sl_review_get_json(a->m, id, &who);

				reply(fd, 200, o ? o : json_object());
			} else {
				reply(fd,
				      rc == SL_ENOENT	? 404
				      : rc == SL_ESTATE ? 409
				      : rc == SL_EINVAL ? 409
							: 403,
				      error_json(why));
			}
			goto out;
		}
	}
	reply(fd, 404, error_json("not found"));
out:
	sl_identity_fini(&who);
}

static void
req_parser_init(llhttp_t *p, llhttp_settings_t *st, struct req *r)
{
	llhttp_settings_init(st);
	st->on_url = on_url;
	st->on_header_field = on_hfield;
	st->on_header_value = on_hvalue;
	st->on_header_value_complete = on_hvalue_done;
	st->on_body = on_body;
	st->on_message_complete = on_done;
	llhttp_init(p, HTTP_REQUEST, st);
	p->data = r;
}

int
sl_admin_parse_request(const uint8_t *data, size_t len, char *url, size_t urllen, int *status)
{
	llhttp_t p;
	llhttp_settings_t st;
	struct req *r = calloc(1, sizeof(*r));
	llhttp_errno_t e;
	int done;

	if (r == NULL)
		return SL_ENOMEM;
	sl_buf_init(&r->body, MAX_BODY);
	req_parser_init(&p, &st, r);
	e = llhttp_execute(&p, (const char *)data, len);
	done = r->done;
	*status = r->body_big ? 413 : done ? 200 : e == HPE_OK ? 0 : 400;
	snprintf(url, urllen, "%s", r->url);
	sl_buf_fini(&r->body);
	free(r);
	return 0;
}

static void
serve_conn(struct sl_admin *a, int fd)
{
	llhttp_t p;
	llhttp_settings_t st;
	struct req *r = calloc(1, sizeof(*r));
	char buf[8192];
	struct timeval tv = {5, 0};
	int64_t deadline = sl_mono_us() + (int64_t)REQUEST_MS * 1000;

	if (r == NULL)
		return;
	sl_buf_init(&r->body, MAX_BODY);
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	req_parser_init(&p, &st, r);
	while (!r->done) {
		struct pollfd pf = {fd, POLLIN, 0};
		int64_t left = deadline - sl_mono_us();
		ssize_t n;
		llhttp_errno_t e;

		/* one deadline for the whole request: a byte every few
		 * seconds does not keep the connection */
		if (left <= 0 || poll(&pf, 1, (int)(left / 1000) + 1) <= 0) {
			reply(fd, 408, error_json("request not received in time"));
			goto out;
		}
		n = read(fd, buf, sizeof(buf));
		if (n <= 0)
			goto out;
		e = llhttp_execute(&p, buf, (size_t)n);
		if (r->done)
			break;
		if (e != HPE_OK) {
			if (r->body_big)
				reply(fd, 413, error_json("body too large"));
			else if (r->header_bytes > MAX_HEADERS_BYTES || r->too_big ||
				 r->url_too_long)
				reply(fd, 431, error_json("headers too large"));
			else
				reply(fd, 400, error_json("malformed HTTP request"));
			goto out;
		}
	}
	if (r->too_big)
		reply(fd, r->body.len >= MAX_BODY ? 413 : 431, error_json("request too large"));
	else
		handle(a, fd, r, llhttp_method_name((llhttp_method_t)llhttp_get_method(&p)));
out:
	OPENSSL_cleanse(r->auth, sizeof(r->auth));
	sl_buf_fini(&r->body);
	free(r);
}

static void *
conn_main(void *arg)
{
	struct conn *c = arg;
	struct sl_admin *a = c->a;

	serve_conn(a, c->fd);
	close(c->fd);
	free(c);
	pthread_mutex_lock(&a->mu);
	if (--a->nconns == 0)
		pthread_cond_signal(&a->idle);
	pthread_mutex_unlock(&a->mu);
	return NULL;
}

/* Serves c on a thread of its own, or answers 503 when MAX_CONNS are
 * already being served. */
static void
dispatch(struct sl_admin *a, int fd)
{
	struct conn *c = malloc(sizeof(*c));
	pthread_attr_t at;
	pthread_t t;
	int ok = 0;

	pthread_mutex_lock(&a->mu);
	if (c != NULL && a->nconns < MAX_CONNS) {
		c->a = a;
		c->fd = fd;
		pthread_attr_init(&at);
		pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
		pthread_attr_setstacksize(&at, 256u << 10);
		ok = pthread_create(&t, &at, conn_main, c) == 0;
		pthread_attr_destroy(&at);
		if (ok)
			a->nconns++;
	}
	pthread_mutex_unlock(&a->mu);
	if (!ok) {
		struct timeval tv = {1, 0};
		static int64_t warned_us;
		int64_t now = sl_mono_us();

		if (now - warned_us > 10 * 1000000) { /* this thread only */
			warned_us = now;
			sl_warn("admin API: %d connections at once, each given 5 s to send its "
				"request; answering 503 to more (a client holding connections "
				"open?)",
				MAX_CONNS);
		}
		free(c);
		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
		reply(fd, 503, error_json("too many admin connections at once; retry"));
		close(fd);
	}
}

static void *
admin_main(void *arg)
{
	struct sl_admin *a = arg;

	for (;;) {
		struct pollfd pf[2] = {{a->fd, POLLIN, 0}, {a->stop_pipe[0], POLLIN, 0}};
		int c;

		if (poll(pf, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (pf[1].revents)
			break;
		c = accept4(a->fd, NULL, NULL, SOCK_CLOEXEC);
		if (c < 0) {
			/* Out of descriptors the listening socket stays
			 * readable: wait a moment (or for the stop) rather
			 * than spin. */
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
			    errno == ENOMEM)
				poll(&pf[1], 1, 250);
			continue;
		}
		dispatch(a, c);
	}
	return NULL;
}

int
sl_admin_start(const struct sl_config *cfg, struct sl_idp *idp, struct sl_review_mgr *m,
	       struct sl_admin **out, char *err, size_t errlen)
{
	struct sl_admin *a;
	struct sockaddr_storage ss;
	int one = 1;

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
	a->idp = idp;
	a->m = m;
	pthread_mutex_init(&a->mu, NULL);
	pthread_cond_init(&a->idle, NULL);
	a->fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (a->fd < 0 || pipe2(a->stop_pipe, O_CLOEXEC) != 0) {
		free(a);
		return SL_EIO;
	}
	setsockopt(a->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(a->fd, (struct sockaddr *)&ss,
		 ss.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
					  : sizeof(struct sockaddr_in)) != 0 ||
	    listen(a->fd, 64) != 0 || pthread_create(&a->thread, NULL, admin_main, a) != 0) {
		snprintf(err, errlen, "cannot listen on %s: %s", cfg->gateway.admin.listen,
			 strerror(errno));
		close(a->fd);
		close(a->stop_pipe[0]);
		close(a->stop_pipe[1]);
		free(a);
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
		/* the thread also exits when the socket closes */
	}
	pthread_join(a->thread, NULL);
	/* connection threads end by their deadline (or their reply) */
	pthread_mutex_lock(&a->mu);
	while (a->nconns > 0)
		pthread_cond_wait(&a->idle, &a->mu);
	pthread_mutex_unlock(&a->mu);
	close(a->fd);
	close(a->stop_pipe[0]);
	close(a->stop_pipe[1]);
	free(a);
}
