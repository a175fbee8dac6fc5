/*
 * pipeline.c - where a request meets identity, policy, audit (and review and
 * masking): the one place adapters go through.
 */
#include "sluice/gateway.h"

#include <ctype.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sluice/audit.h"
#include "sluice/mask.h"
#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

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
	free(s->jwho);
	s->jwho = NULL;
}

int
sl_pl_authenticate(struct sl_gw *gw, struct sl_pl_session *s, const char *token, size_t len,
		   char *err, size_t errlen)
{
	int r;

	r = sl_idp_verify(gw->idp, token, len, sl_now_us() / 1000000, &s->ident, err, errlen);
	if (r == 0)
		s->authenticated = 1;
	/* the records' subject is made again from the identity now held */
	free(s->jwho);
	s->jwho = NULL;
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
	req.read_only = s->conn ? s->conn->read_only : 0;
	req.sql = r->sql;
	req.http_method = r->http_method;
	req.http_path = r->http_path;
	req.ssh_command = r->ssh_command;
	return sl_policy_decide(sl_gw_policies(gw)->policy, s->ident.subject,
				(const char *const *)s->ident.groups, s->ident.ngroups, &req, d);
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
 * value appended to an object being built in b. Keys are constant ASCII
 * identifiers and go in as they are. */
static void
jkeyn(struct sl_buf *b, const char *k, size_t n)
{
	if (sl_buf_reserve(b, n + 4) != 0)
		return; /* jend() reports it */
	if (b->len > 1)
		b->data[b->len++] = ',';
	b->data[b->len++] = '"';
	memcpy(b->data + b->len, k, n);
	b->len += n;
	b->data[b->len++] = '"';
	b->data[b->len++] = ':';
}

/* keys are string literals: their length is known */
#define jkey(b, k) jkeyn((b), "" k, sizeof(k) - 1)

static void
jstrn(struct sl_buf *b, const char *k, size_t kl, const char *v, size_t n)
{
	jkeyn(b, k, kl);
	sl_json_put_str(b, v, n);
}

static void
jcstrn(struct sl_buf *b, const char *k, size_t kl, const char *v)
{
	jstrn(b, k, kl, v ? v : "", v ? strlen(v) : 0);
}

static void
jintn(struct sl_buf *b, const char *k, size_t kl, long long v)
{
	char num[24], *p = sl_fmt_i64(num, v);

	jkeyn(b, k, kl);
	sl_buf_append(b, num, (size_t)(p - num));
}

static void
jlistn(struct sl_buf *b, const char *k, size_t kl, char **v, size_t n)
{
	jkeyn(b, k, kl);
	sl_buf_append_u8(b, '[');
	for (size_t i = 0; i < n; i++) {
		if (i)
			sl_buf_append_u8(b, ',');
		sl_json_put_str(b, v[i], strlen(v[i]));
	}
	sl_buf_append_u8(b, ']');
}

#define jstr(b, k, v, n)  jstrn((b), "" k, sizeof(k) - 1, (v), (n))
#define jcstr(b, k, v)	  jcstrn((b), "" k, sizeof(k) - 1, (v))
#define jint(b, k, v)	  jintn((b), "" k, sizeof(k) - 1, (v))
#define jlist(b, k, v, n) jlistn((b), "" k, sizeof(k) - 1, (v), (n))

/* Records are built in a buffer each thread keeps (a record's JSON is
 * usually a few hundred bytes; the audit copies it before the call
 * returns), so the hot path allocates nothing for it. */
static pthread_key_t jbuf_key;
static pthread_once_t jbuf_once = PTHREAD_ONCE_INIT;

static void
jbuf_free(void *p)
{
	sl_buf_fini(p);
	free(p);
}

static void
jbuf_init(void)
{
	pthread_key_create(&jbuf_key, jbuf_free);
}

/* The thread's record buffer, emptied, with '{' in it; NULL without
 * memory. */
static struct sl_buf *
jbegin(void)
{
	struct sl_buf *b;

	pthread_once(&jbuf_once, jbuf_init);
	b = pthread_getspecific(jbuf_key);
	if (b == NULL) {
		if ((b = calloc(1, sizeof(*b))) == NULL)
			return NULL;
		if (pthread_setspecific(jbuf_key, b) != 0) {
			free(b);
			return NULL;
		}
	}
	b->len = b->off = 0;
	if (sl_buf_reserve(b, 512) != 0)
		return NULL;
	b->data[b->len++] = '{';
	return b;
}

/* After the record was handed over: a huge one's room is not kept. */
static void
jdone(struct sl_buf *b)
{
	if (b->cap > 65536)
		sl_buf_fini(b);
}

/* Fails if any append failed: a failed append leaves len short of what
 * was meant, so the object is checked for having been closed cleanly. */
static int
jend(struct sl_buf *b)
{
	return b->data == NULL ? SL_ENOMEM : sl_buf_append_u8(b, '}');
}

static const char withheld[] = "<withheld: could not be masked>";

int
sl_pl_safe_text(struct sl_gw *gw, struct sl_mask_scratch *ms, const char *text, size_t len, int sql,
		struct sl_buf *out)
{
	struct sl_buf alt;
	int m = SL_MASK_UNCHANGED, rc = 0;

	out->len = out->off = 0;
	if (sl_buf_reserve(out, len + sizeof(withheld)) != 0)
		return SL_ENOMEM;
	if (len > 0)
		memcpy(out->data, text, len);
	out->len = len;
	if (sql)
		sl_sql_redact_secrets((char *)out->data, len);
	if (ms != NULL && gw->audit_plan != NULL) {
		sl_buf_init(&alt, 0);
		m = sl_mask_value(gw->audit_plan, ms, out->data, len, &alt, NULL);
		out->len = 0;
		if (m == SL_MASK_REPLACED)
			rc = sl_buf_append(out, alt.data, alt.len);
		else if (m == SL_MASK_UNCHANGED || m == SL_MASK_IN_PLACE)
			out->len = len;
		else /* an error, or the whole text masked to NULL */
			rc = m < 0 ? m : SL_EINVAL;
		sl_buf_fini(&alt);
	}
	if (rc != 0) {
		out->len = 0;
		sl_buf_append(out, withheld, sizeof(withheld) - 1); /* reserved above */
	}
	if (sl_buf_append_u8(out, 0) != 0)
		return SL_ENOMEM;
	out->len--; /* NUL-terminated, not counted */
	return rc;
}

/* "k":text as sl_pl_safe_text() makes it. tmp is a reusable copy buffer. */
static void
jtextn(struct sl_buf *b, const char *k, size_t kl, struct sl_gw *gw, struct sl_mask_scratch *ms,
       struct sl_buf *tmp, const char *text, size_t len, int sql)
{
	if (text == NULL || len == 0 || ((ms == NULL || gw->audit_plan == NULL) && !sql)) {
		jstrn(b, k, kl, text ? text : "", text ? len : 0); /* nothing to do */
		return;
	}
	if (sl_pl_safe_text(gw, ms, text, len, sql, tmp) != 0)
		jcstrn(b, k, kl, withheld);
	else
		jstrn(b, k, kl, (const char *)tmp->data, tmp->len);
	/* a huge statement's copy is not kept around */
	if (tmp->cap > 65536)
		sl_buf_fini(tmp);
}

#define jtext(b, k, gw, ms, tmp, text, len, sql)                                                   \
	jtextn((b), "" k, sizeof(k) - 1, gw, ms, tmp, text, len, sql)

/* "subject":..,"connection":..,"protocol":.. for this session's request
 * records, made once (sl_pl_authenticate drops it with the identity it
 * was made from). */
static int
put_who(struct sl_buf *b, struct sl_pl_session *s)
{
	if (s->jwho == NULL) {
		const char *v[3] = {s->ident.subject, s->conn ? s->conn->name : "", s->protocol};
		size_t room = 64;
		struct sl_buf w;

		/* room for all of it first (escaping at most sextuples a byte),
		 * so no append below can fail and leave a short fragment that
		 * every later record would carry */
		for (int i = 0; i < 3; i++)
			room += v[i] ? 6 * strlen(v[i]) + 2 : 2;
		sl_buf_init(&w, 0);
		if (sl_buf_reserve(&w, room) != 0) {
			sl_buf_fini(&w);
			return SL_ENOMEM;
		}
		sl_buf_append_u8(&w, '{'); /* as in a record: keys after it get commas */
		jcstr(&w, "subject", v[0]);
		jcstr(&w, "connection", v[1]);
		jcstr(&w, "protocol", v[2]);
		free(s->jwho);
		s->jwho = (char *)w.data; /* w.data[0] is the '{' */
		s->jwho_len = w.len;
	}
	/* s->jwho is {"subject":..,"protocol":.. : after the '{', with a comma */
	if (sl_buf_append_u8(b, ',') != 0)
		return SL_ENOMEM;
	return sl_buf_append(b, s->jwho + 1, s->jwho_len - 1);
}

/* The kinds as their names, remembered for the last kinds seen (most
 * statements on a thread have the same). */
static const char *
kinds_names(uint32_t kinds)
{
	static _Thread_local uint32_t last = UINT32_MAX;
	static _Thread_local char names[512];

	if (kinds != last) {
		sl_sql_kinds_str(kinds, names, sizeof(names));
		last = kinds;
	}
	return names;
}

int
sl_pl_record(struct sl_gw *gw, struct sl_worker *w, struct sl_pl_session *s,
	     const struct sl_pl_request *r, const struct sl_decision *d, struct sl_completion *c)
{
	const char *trace = r->trace_id ? r->trace_id : trace_or_null(s->trace_id);
	const char *span = r->trace_id ? r->span_id : trace_or_null(s->span_id);
	int strict = c != NULL && sl_audit_strict(gw->audit);
	struct sl_buf *b = jbegin();
	int rc;

	if (b == NULL)
		return SL_ENOMEM;
	jint(b, "seq", (long long)r->seq);
	if (put_who(b, s) != 0)
		return SL_ENOMEM;
	if (w != NULL) {
		jtext(b, "text", gw, w->mscratch, &w->rtext, r->text, r->textlen,
		      r->proto == SL_PROTO_PG);
	} else {
		struct sl_buf t;

		sl_buf_init(&t, 0);
		jtext(b, "text", gw, NULL, &t, r->text, r->textlen, r->proto == SL_PROTO_PG);
		sl_buf_fini(&t);
	}
	/* the Bind parameters: `id > $1` says little without $1; the same
	 * detectors as the text's apply */
	if (r->params_shown != NULL && w != NULL)
		jtext(b, "params", gw, w->mscratch, &w->rtext, r->params_shown, r->params_shown_len,
		      0);
	else if (r->params_shown != NULL)
		jcstr(b, "params", withheld); /* no detectors here */
	if (r->sql != NULL) {
		jcstr(b, "kind", kinds_names(r->sql->kinds));
		if (r->sql->ntables)
			jlist(b, "tables", r->sql->tables, r->sql->ntables);
		if (r->sql->nfunctions)
			jlist(b, "functions", r->sql->functions, r->sql->nfunctions);
	}
	if (r->http_method)
		jcstr(b, "method", r->http_method);
	if (r->http_path)
		jcstr(b, "path", r->http_path);
	if (r->ssh_command)
		jcstr(b, "command", r->ssh_command);
	jcstr(b, "decision", action_name(d->action));
	if (d->policy)
		jcstr(b, "policy", d->policy);
	if (d->rule)
		jcstr(b, "rule", d->rule);
	if (d->action != SL_ACT_ALLOW && d->message)
		jcstr(b, "message", d->message);
	if (r->review_id != NULL)
		jcstr(b, "review", r->review_id);
	if (jend(b) != 0) {
		jdone(b);
		return SL_ENOMEM;
	}
	if (strict) {
		c->w = w;
		rc = sl_audit_append_raw(gw->audit, "request", s->id, trace, span,
					 (const char *)b->data, b->len, record_durable, c);
		jdone(b);
		if (rc == SL_AUDIT_DURABLE)
			return 0;
		return rc == 0 ? 1 : SL_EIO;
	}
	rc = sl_audit_append_raw(gw->audit, "request", s->id, trace, span, (const char *)b->data,
				 b->len, NULL, NULL);
	jdone(b);
	return rc == 0 ? 0 : SL_EIO;
}

void
sl_pl_result(struct sl_gw *gw, struct sl_pl_session *s, uint64_t seq, const char *trace_id,
	     int64_t duration_us, int64_t rows, const char *tag, const char *sqlstate,
	     const char *error_msg, json_t *mask_stats)
{
	struct sl_buf *b = jbegin();

	if (b == NULL) {
		/* what the record would have said is lost with it: the audit
		 * store shows the statement without its result */
		json_decref(mask_stats);
		return;
	}
	jint(b, "seq", (long long)seq);
	jint(b, "duration_us", (long long)duration_us);
	if (rows >= 0)
		jint(b, "rows", (long long)rows);
	if (tag)
		jcstr(b, "tag", tag);
	if (sqlstate)
		jcstr(b, "sqlstate", sqlstate);
	if (error_msg) {
		/* Error texts echo values ("invalid input syntax ...: \"123-45-6789\""). */
		struct sl_buf t;

		sl_buf_init(&t, 0);
		jtext(b, "error", gw, s->scratch, &t, error_msg, strlen(error_msg), 0);
		sl_buf_fini(&t);
	}
	if (mask_stats) {
		char *m = json_dumps(mask_stats, JSON_COMPACT | JSON_ENSURE_ASCII);

		if (m) {
			jkey(b, "masked");
			sl_buf_append(b, m, strlen(m));
			free(m);
		}
		json_decref(mask_stats);
	}
	if (jend(b) == 0)
		sl_audit_append_raw(gw->audit, "result", s->id,
				    trace_id ? trace_id : trace_or_null(s->trace_id),
				    trace_id ? NULL : trace_or_null(s->span_id),
				    (const char *)b->data, b->len, NULL, NULL);
	jdone(b);
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
	static const char key[] = "traceparent"; /* and '=' */
	const size_t kl = sizeof(key) - 1;
	const char *p = text, *end = text + len, *eq;

	if (len == 55 && parse_traceparent(text, len, trace_id, span_id))
		return 1;
	/* "traceparent=" found by its '=': most statements have one or two,
	 * and memchr() is cheaper than a substring search over every text */
	while (p < end && (eq = memchr(p, '=', (size_t)(end - p))) != NULL) {
		const char *v = eq + 1;

		p = v;
		if ((size_t)(eq - text) < kl || memcmp(eq - kl, key, kl) != 0)
			continue;
		if (v < end && *v == '\'')
			v++;
		/* sqlcommenter URL-encodes values; '-' stays as is. */
		if (parse_traceparent(v, (size_t)(end - v), trace_id, span_id))
			return 1;
	}
	return 0;
}

const struct sl_mask_plan *
sl_pl_mask_plan(struct sl_gw *gw, const struct sl_decision *d)
{
	if (d == NULL || d->mask == NULL || d->mask_exempt)
		return NULL;
	/* the generation that made the decision: the newest, or an older one
	 * when a reload came between */
	for (const struct sl_policy_gen *g = sl_gw_policies(gw); g; g = g->older)
		for (size_t i = 0; i < g->nmasks; i++)
			if (g->masks[i].cfg == d->mask)
				return g->masks[i].plan;
	return NULL;
}

const struct sl_mask_plan *
sl_pl_session_mask(struct sl_gw *gw, struct sl_pl_session *s, int *exempt)
{
	const struct sl_cfg_policy_mask *m;
	struct sl_decision d;

	sl_policy_mask_for(sl_gw_policies(gw)->policy, s->ident.subject,
			   (const char *const *)s->ident.groups, s->ident.ngroups,
			   s->conn ? s->conn->name : "", &m, exempt);
	if (*exempt || m == NULL)
		return NULL;
	memset(&d, 0, sizeof(d));
	d.mask = m;
	return sl_pl_mask_plan(gw, &d);
}

/* The key of the "hash" style: mask.hash_key_env / hash_key_file, else a
 * random key kept in <data_dir>/mask-hash.key (0600), so tokens are stable
 * across restarts and unguessable. */
static int
hash_key(struct sl_gw *gw, uint8_t key[32], size_t *keylen, char *err, size_t errlen)
{
	const struct sl_cfg_mask *m = &gw->cfg->mask;
	char path[4096], *data = NULL;
	size_t len = 0;

	if (m->hash_key_env != NULL) {
		const char *v = getenv(m->hash_key_env);

		if (v == NULL || *v == '\0') {
			snprintf(err, errlen, "mask.hash_key_env: %s is not set", m->hash_key_env);
			return SL_EINVAL;
		}
		SHA256((const uint8_t *)v, strlen(v), key);
		*keylen = 32;
		return 0;
	}
	snprintf(path, sizeof(path), "%s", m->hash_key_file ? m->hash_key_file : "");
	if (m->hash_key_file == NULL)
		snprintf(path, sizeof(path), "%s/mask-hash.key", gw->cfg->gateway.data_dir);
	if (sl_read_file(path, 4096, &data, &len) == 0 && len >= 16) {
		SHA256((const uint8_t *)data, len, key);
		OPENSSL_cleanse(data, len);
		free(data);
		*keylen = 32;
		return 0;
	}
	free(data);
	if (m->hash_key_file != NULL) {
		snprintf(err, errlen, "mask.hash_key_file %s: cannot read (16+ bytes needed)",
			 path);
		return SL_EINVAL;
	}
	{
		uint8_t raw[32];
		int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);

		if (fd < 0 || sl_random(raw, sizeof(raw)) != 0 ||
		    write(fd, raw, sizeof(raw)) != (ssize_t)sizeof(raw)) {
			if (fd >= 0)
				close(fd);
			snprintf(err, errlen, "cannot create %s", path);
			return SL_EIO;
		}
		close(fd);
		SHA256(raw, sizeof(raw), key);
		*keylen = 32;
	}
	return 0;
}

int
sl_pl_mask_init(struct sl_gw *gw, char *err, size_t errlen)
{
	uint8_t key[32];
	size_t keylen = 0;
	int r;

	if ((r = sl_mask_db_new(&gw->cfg->mask, &gw->maskdb, err, errlen)) != 0)
		return r;
	if ((r = hash_key(gw, key, &keylen, err, errlen)) != 0)
		return r;
	if ((r = sl_mask_plan_all(gw->maskdb, key, keylen, &gw->audit_plan)) != 0)
		return r;
	memcpy(gw->mask_key, key, sizeof(key));
	gw->mask_keylen = keylen;
	OPENSSL_cleanse(key, sizeof(key));
	return sl_pl_gen_masks(gw, sl_gw_policies(gw), err, errlen);
}

int
sl_pl_gen_masks(struct sl_gw *gw, struct sl_policy_gen *g, char *err, size_t errlen)
{
	const struct sl_config *cfg = g->cfg ? g->cfg : gw->cfg;

	g->masks = calloc(cfg->policies_count + 1, sizeof(*g->masks));
	if (g->masks == NULL)
		return SL_ENOMEM;
	for (unsigned i = 0; i < cfg->policies_count; i++) {
		const struct sl_cfg_policy_mask *pm = cfg->policies[i].mask;
		char e2[256];

		if (pm == NULL || pm->exempt)
			continue;
		if (sl_mask_plan_new(gw->maskdb, pm, gw->mask_key, gw->mask_keylen,
				     &g->masks[g->nmasks].plan, e2, sizeof(e2)) != 0) {
			snprintf(err, errlen, "policies[%u] (%s): %s", i,
				 cfg->policies[i].name ? cfg->policies[i].name : "", e2);
			return SL_EINVAL;
		}
		g->masks[g->nmasks++].cfg = pm;
	}
	return 0;
}

void
sl_pl_gen_free(struct sl_policy_gen *g)
{
	while (g != NULL) {
		struct sl_policy_gen *older = g->older;

		for (size_t i = 0; i < g->nmasks; i++)
			sl_mask_plan_free(g->masks[i].plan);
		free(g->masks);
		sl_policy_free(g->policy);
		if (g->cfg != NULL)
			sl_config_free(g->cfg);
		free(g);
		g = older;
	}
}

void
sl_pl_mask_fini(struct sl_gw *gw)
{
	sl_mask_plan_free(gw->audit_plan);
	sl_mask_db_free(gw->maskdb);
	OPENSSL_cleanse(gw->mask_key, sizeof(gw->mask_key));
}
