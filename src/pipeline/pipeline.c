/*
 * pipeline.c - where a request meets identity, policy, audit (and review and
 * masking): the one place adapters go through.
 */
#include "sluice/gateway.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sluice/audit.h"

static const char *
action_name(enum sl_action a)
{
	switch (a) {
	case SL_ACT_ALLOW:
		return "allow";
	case SL_ACT_BLOCK:
		return "block";
	case SL_ACT_REVIEW:
		return "review";
	}
	return "?";
}

void
sl_pl_session_init(struct sl_gw *gw, struct sl_pl_session *s, const char *protocol)
{
	uint8_t r[8];
	char hex[17];

	memset(s, 0, sizeof(*s));
	sl_random(r, sizeof(r));
	sl_hex(r, sizeof(r), hex);
	snprintf(s->id, sizeof(s->id), "%s", hex);
	s->protocol = protocol;
	s->opened_us = sl_now_us();
	atomic_fetch_add(&gw->next_session, 1);
}

void
sl_pl_session_fini(struct sl_pl_session *s)
{
	if (s->authenticated)
		sl_identity_fini(&s->ident);
	s->authenticated = 0;
}

int
sl_pl_authenticate(struct sl_gw *gw, struct sl_pl_session *s, const char *token, size_t len,
		   char *err, size_t errlen)
{
	int r;

	r = sl_idp_verify(gw->idp, token, len, sl_now_us() / 1000000, &s->ident, err, errlen);
	if (r == 0)
		s->authenticated = 1;
	return r;
}

void
sl_pl_refresh_keys(struct sl_gw *gw, const char *token, size_t len)
{
	sl_idp_refresh(gw->idp, token, len);
}

static json_t *
identity_json(const struct sl_pl_session *s)
{
	json_t *o = json_object();
	json_t *g = json_array();

	json_object_set_new(o, "subject", json_string(s->ident.subject ? s->ident.subject : ""));
	json_object_set_new(o, "issuer", json_string(s->ident.issuer ? s->ident.issuer : ""));
	for (size_t i = 0; i < s->ident.ngroups; i++)
		json_array_append_new(g, json_string(s->ident.groups[i]));
	json_object_set_new(o, "groups", g);
	json_object_set_new(o, "token_sha256", json_string(s->ident.token_sha256));
	return o;
}

static const char *
trace_or_null(const char *t)
{
	return t && t[0] ? t : NULL;
}

void
sl_pl_auth_failed(struct sl_gw *gw, struct sl_pl_session *s, const char *user, const char *reason)
{
	json_t *d = json_object();

	json_object_set_new(d, "protocol", json_string(s->protocol));
	json_object_set_new(d, "connection", json_string(s->conn ? s->conn->name : ""));
	json_object_set_new(d, "login", json_string(user ? user : ""));
	json_object_set_new(d, "client_addr", json_string(s->client_addr));
	json_object_set_new(d, "reason", json_string(reason ? reason : "refused"));
	if (sl_audit_append(gw->audit, "auth_failure", s->id, trace_or_null(s->trace_id),
			    trace_or_null(s->span_id), d, NULL, NULL) != 0)
		sl_warn("audit: could not record an authentication failure");
}

void
sl_pl_session_opened(struct sl_gw *gw, struct sl_pl_session *s, json_t *details)
{
	json_t *d = details ? details : json_object();

	json_object_set_new(d, "protocol", json_string(s->protocol));
	json_object_set_new(d, "connection", json_string(s->conn ? s->conn->name : ""));
	json_object_set_new(d, "client_addr", json_string(s->client_addr));
	json_object_set_new(d, "identity", identity_json(s));
	sl_audit_append(gw->audit, "session_open", s->id, trace_or_null(s->trace_id),
			trace_or_null(s->span_id), d, NULL, NULL);
}

void
sl_pl_session_closed(struct sl_gw *gw, struct sl_pl_session *s, const char *why)
{
	json_t *d = json_object();

	json_object_set_new(d, "reason", json_string(why ? why : ""));
	json_object_set_new(d, "subject", json_string(s->ident.subject ? s->ident.subject : ""));
	json_object_set_new(d, "duration_ms",
			    json_integer((json_int_t)((sl_now_us() - s->opened_us) / 1000)));
	sl_audit_append(gw->audit, "session_close", s->id, trace_or_null(s->trace_id),
			trace_or_null(s->span_id), d, NULL, NULL);
}

int
sl_pl_check_expiry(struct sl_gw *gw, struct sl_pl_session *s)
{
	if (!s->authenticated)
		return SL_EAUTH;
	if (s->ident.exp > 0 && sl_now_us() / 1000000 > s->ident.exp + gw->leeway_s)
		return SL_EEXPIRED;
	return 0;
}

int
sl_pl_decide(struct sl_gw *gw, struct sl_pl_session *s, const struct sl_pl_request *r,
	     struct sl_decision *d)
{
	struct sl_request req;
	int rc;

	memset(d, 0, sizeof(*d));
	if ((rc = sl_pl_check_expiry(gw, s)) != 0)
		return rc;
	memset(&req, 0, sizeof(req));
	req.proto = r->proto;
	req.connection = s->conn ? s->conn->name : "";
	req.sql = r->sql;
	req.http_method = r->http_method;
	req.http_path = r->http_path;
	req.ssh_command = r->ssh_command;
	return sl_policy_decide(gw->policy, s->ident.subject, (const char *const *)s->ident.groups,
				s->ident.ngroups, &req, d);
}

static void
record_durable(void *arg, int status, uint64_t seq)
{
	struct sl_completion *c = arg;

	c->status = status;
	c->value = seq;
	sl_worker_post(c->w, c);
}

/* Small JSON writer for the per-statement records (the hot path): key and
 * value appended to an object being built in b. */
static void
jkey(struct sl_buf *b, const char *k)
{
	if (b->len > 1)
		sl_buf_append_u8(b, ',');
	sl_json_put_str(b, k, strlen(k));
	sl_buf_append_u8(b, ':');
}

static void
jstr(struct sl_buf *b, const char *k, const char *v, size_t n)
{
	jkey(b, k);
	sl_json_put_str(b, v, n);
}

static void
jcstr(struct sl_buf *b, const char *k, const char *v)
{
	jstr(b, k, v ? v : "", v ? strlen(v) : 0);
}

static void
jint(struct sl_buf *b, const char *k, long long v)
{
	char num[24];
	int n = snprintf(num, sizeof(num), "%lld", v);

	jkey(b, k);
	sl_buf_append(b, num, (size_t)n);
}

static void
jlist(struct sl_buf *b, const char *k, char **v, size_t n)
{
	jkey(b, k);
	sl_buf_append_u8(b, '[');
	for (size_t i = 0; i < n; i++) {
		if (i)
			sl_buf_append_u8(b, ',');
		sl_json_put_str(b, v[i], strlen(v[i]));
	}
	sl_buf_append_u8(b, ']');
}

static void
jbegin(struct sl_buf *b)
{
	sl_buf_init(b, 0);
	sl_buf_append_u8(b, '{');
}

static int
jend(struct sl_buf *b)
{
	return sl_buf_append_u8(b, '}');
}

int
sl_pl_record(struct sl_gw *gw, struct sl_worker *w, struct sl_pl_session *s,
	     const struct sl_pl_request *r, const struct sl_decision *d, struct sl_completion *c)
{
	const char *trace = r->trace_id ? r->trace_id : trace_or_null(s->trace_id);
	const char *span = r->trace_id ? r->span_id : trace_or_null(s->span_id);
	int strict = c != NULL && sl_audit_strict(gw->audit);
	struct sl_buf b;
	int rc;

	jbegin(&b);
	jint(&b, "seq", (long long)r->seq);
	jcstr(&b, "subject", s->ident.subject);
	jcstr(&b, "connection", s->conn ? s->conn->name : "");
	jcstr(&b, "protocol", s->protocol);
	jstr(&b, "text", r->text ? r->text : "", r->text ? r->textlen : 0);
	if (r->sql != NULL) {
		char kinds[512];

		sl_sql_kinds_str(r->sql->kinds, kinds, sizeof(kinds));
		jcstr(&b, "kind", kinds);
		if (r->sql->ntables)
			jlist(&b, "tables", r->sql->tables, r->sql->ntables);
		if (r->sql->nfunctions)
			jlist(&b, "functions", r->sql->functions, r->sql->nfunctions);
	}
	if (r->http_method)
		jcstr(&b, "method", r->http_method);
	if (r->http_path)
		jcstr(&b, "path", r->http_path);
	if (r->ssh_command)
		jcstr(&b, "command", r->ssh_command);
	jcstr(&b, "decision", action_name(d->action));
	if (d->policy)
		jcstr(&b, "policy", d->policy);
	if (d->rule)
		jcstr(&b, "rule", d->rule);
	if (d->action != SL_ACT_ALLOW && d->message)
		jcstr(&b, "message", d->message);
	if (jend(&b) != 0) {
		sl_buf_fini(&b);
		return SL_ENOMEM;
	}
	if (strict) {
		c->w = w;
		rc = sl_audit_append_raw(gw->audit, "request", s->id, trace, span,
					 (const char *)b.data, b.len, record_durable, c);
		sl_buf_fini(&b);
		if (rc == SL_AUDIT_DURABLE)
			return 0;
		return rc == 0 ? 1 : SL_EIO;
	}
	rc = sl_audit_append_raw(gw->audit, "request", s->id, trace, span, (const char *)b.data,
				 b.len, NULL, NULL);
	sl_buf_fini(&b);
	return rc == 0 ? 0 : SL_EIO;
}

void
sl_pl_result(struct sl_gw *gw, struct sl_pl_session *s, uint64_t seq, const char *trace_id,
	     int64_t duration_us, int64_t rows, const char *tag, const char *sqlstate,
	     const char *error_msg, json_t *mask_stats)
{
	struct sl_buf b;

	jbegin(&b);
	jint(&b, "seq", (long long)seq);
	jint(&b, "duration_us", (long long)duration_us);
	if (rows >= 0)
		jint(&b, "rows", (long long)rows);
	if (tag)
		jcstr(&b, "tag", tag);
	if (sqlstate)
		jcstr(&b, "sqlstate", sqlstate);
	if (error_msg)
		jcstr(&b, "error", error_msg);
	if (mask_stats) {
		char *m = json_dumps(mask_stats, JSON_COMPACT | JSON_ENSURE_ASCII);

		if (m) {
			jkey(&b, "masked");
			sl_buf_append(&b, m, strlen(m));
			free(m);
		}
		json_decref(mask_stats);
	}
	if (jend(&b) == 0)
		sl_audit_append_raw(gw->audit, "result", s->id,
				    trace_id ? trace_id : trace_or_null(s->trace_id),
				    trace_id ? NULL : trace_or_null(s->span_id), (const char *)b.data,
				    b.len, NULL, NULL);
	sl_buf_fini(&b);
}

static int
hexrun(const char *p, size_t n)
{
	int nonzero = 0;

	for (size_t i = 0; i < n; i++) {
		if (!isxdigit((unsigned char)p[i]) || isupper((unsigned char)p[i]))
			return 0;
		if (p[i] != '0')
			nonzero = 1;
	}
	return nonzero;
}

/* Checks "00-<32>-<16>-<2>" at p (55 bytes available). */
static int
parse_traceparent(const char *p, size_t avail, char trace_id[33], char span_id[17])
{
	if (avail < 55)
		return 0;
	if (!hexrun(p, 2) && !(p[0] == '0' && p[1] == '0'))
		return 0;
	if (p[0] == 'f' && p[1] == 'f')
		return 0;
	if (p[2] != '-' || p[35] != '-' || p[52] != '-')
		return 0;
	if (!hexrun(p + 3, 32) || !hexrun(p + 36, 16))
		return 0;
	if (!isxdigit((unsigned char)p[53]) || !isxdigit((unsigned char)p[54]))
		return 0;
	memcpy(trace_id, p + 3, 32);
	trace_id[32] = '\0';
	memcpy(span_id, p + 36, 16);
	span_id[16] = '\0';
	return 1;
}

int
sl_pl_trace_from_text(const char *text, size_t len, char trace_id[33], char span_id[17])
{
	static const char key[] = "traceparent=";
	const char *p = text, *end = text + len;

	if (len == 55 && parse_traceparent(text, len, trace_id, span_id))
		return 1;
	while (p < end) {
		const char *hit = memmem(p, (size_t)(end - p), key, sizeof(key) - 1);
		const char *v;

		if (hit == NULL)
			break;
		v = hit + sizeof(key) - 1;
		if (v < end && *v == '\'')
			v++;
		/* sqlcommenter URL-encodes values; '-' stays as is. */
		if (parse_traceparent(v, (size_t)(end - v), trace_id, span_id))
			return 1;
		p = hit + 1;
	}
	return 0;
}

const struct sl_mask_plan *
sl_pl_mask_plan(struct sl_gw *gw, const struct sl_decision *d)
{
	if (d == NULL || d->mask == NULL || d->mask_exempt)
		return NULL;
	for (size_t i = 0; i < gw->nmasks; i++)
		if (gw->masks[i].cfg == d->mask)
			return gw->masks[i].plan;
	return NULL;
}
