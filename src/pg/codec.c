/*
 * codec.c - PostgreSQL v3 wire codec. Pure: bytes in, structs or bytes out.
 */
#include "sluice/pg_codec.h"

#include <string.h>

int
sl_pg_frame(const uint8_t *p, size_t n, size_t max, uint8_t *type, size_t *total)
{
	uint32_t len;

	if (n < 5)
		return SL_AGAIN;
	len = ((uint32_t)p[1] << 24) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 8) | p[4];
	if (len < 4)
		return SL_EPROTO;
	/* PostgreSQL lengths are signed int32; anything above is a lie. */
	if (len > 0x7fffffffu || (size_t)len + 1 > max)
		return SL_ETOOBIG;
	if (n < (size_t)len + 1)
		return SL_AGAIN;
	*type = p[0];
	*total = (size_t)len + 1;
	return 0;
}

int
sl_pg_frame_startup(const uint8_t *p, size_t n, size_t *total)
{
	uint32_t len;

	if (n < 4)
		return SL_AGAIN;
	len = ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
	if (len < 8)
		return SL_EPROTO;
	if (len > SL_PG_MAX_STARTUP)
		return SL_ETOOBIG;
	if (n < len)
		return SL_AGAIN;
	*total = len;
	return 0;
}

int
sl_pg_parse_startup(const uint8_t *msg, size_t len, struct sl_pg_startup *out)
{
	struct sl_rd r;
	uint32_t mlen;

	memset(out, 0, sizeof(*out));
	sl_rd_init(&r, msg, len);
	if (sl_rd_u32be(&r, &mlen) != 0 || mlen != len || sl_rd_u32be(&r, &out->code) != 0)
		return SL_EPROTO;
	if (out->code == SL_PG_SSL_REQUEST || out->code == SL_PG_GSSENC_REQUEST)
		return len == 8 ? 0 : SL_EPROTO;
	if (out->code == SL_PG_CANCEL_REQUEST) {
		if (len != 16 || sl_rd_u32be(&r, &out->cancel_pid) != 0 ||
		    sl_rd_u32be(&r, &out->cancel_key) != 0)
			return SL_EPROTO;
		return 0;
	}
	if ((out->code >> 16) != 3)
		return SL_EPROTO;
	for (;;) {
		const char *k, *v;
		size_t klen;

		if (sl_rd_cstr(&r, &k, &klen) != 0)
			return SL_EPROTO;
		if (klen == 0)
			break;
		if (sl_rd_cstr(&r, &v, NULL) != 0)
			return SL_EPROTO;
		if (out->nparams >= SL_PG_MAX_PARAMS)
			return SL_ETOOBIG;
		for (size_t i = 0; i < out->nparams; i++)
			if (strcmp(out->keys[i], k) == 0)
				return SL_EPROTO;
		out->keys[out->nparams] = k;
		out->vals[out->nparams] = v;
		out->nparams++;
	}
	return sl_rd_left(&r) == 0 ? 0 : SL_EPROTO;
}

const char *
sl_pg_startup_get(const struct sl_pg_startup *s, const char *key)
{
	for (size_t i = 0; i < s->nparams; i++)
		if (strcmp(s->keys[i], key) == 0)
			return s->vals[i];
	return NULL;
}

/* ------------------------------------------------------------ builders */

/*
 * Builders remember positions relative to b->off: sl_buf_reserve() may compact
 * the buffer (move the unread bytes to the front) while a message is being
 * appended, which would invalidate an absolute offset. On failure the partial
 * message is removed again, so a buffer never holds half a message.
 */
struct mark {
	size_t start;  /* where the message starts, relative to off */
	size_t lenpos; /* where its length field starts, relative to off */
};

/* Starts a typed message (type 0: an untyped startup-phase packet). */
static int
begin(struct sl_buf *b, uint8_t type, struct mark *m)
{
	int r;

	m->start = b->len - b->off;
	m->lenpos = m->start;
	if (type != 0) {
		if ((r = sl_buf_append_u8(b, type)) != 0)
			return r;
		m->lenpos++;
	}
	return sl_buf_append_u32be(b, 0);
}

/* Completes the message started at m, or removes it when r says it failed. */
static int
finish(struct sl_buf *b, const struct mark *m, int r)
{
	size_t n;
	uint8_t *lp;

	if (r == 0) {
		n = b->len - b->off - m->lenpos;
		if (n > 0x7fffffff)
			r = SL_ETOOBIG;
	}
	if (r != 0) {
		if (b->len - b->off >= m->start)
			b->len = b->off + m->start;
		return r;
	}
	lp = b->data + b->off + m->lenpos;
	lp[0] = (uint8_t)(n >> 24);
	lp[1] = (uint8_t)(n >> 16);
	lp[2] = (uint8_t)(n >> 8);
	lp[3] = (uint8_t)n;
	return 0;
}

/* Appends s with its NUL; a NULL string is a caller bug reported as SL_EINVAL. */
static int
put_cstr(struct sl_buf *b, const char *s)
{
	return s == NULL ? SL_EINVAL : sl_buf_append_cstr(b, s);
}

/* Appends n bytes; NULL is only allowed for n == 0. */
static int
put_bytes(struct sl_buf *b, const void *p, size_t n)
{
	if (n == 0)
		return 0;
	return p == NULL ? SL_EINVAL : sl_buf_append(b, p, n);
}

static int
put_fields(struct sl_buf *b, uint8_t type, const char *severity, const char *sqlstate,
	   const char *message, const char *detail, const char *hint)
{
	struct mark m;
	int r = begin(b, type, &m);

	if (r == 0 && severity) {
		r = sl_buf_append_u8(b, 'S');
		r = r ? r : sl_buf_append_cstr(b, severity);
		r = r ? r : sl_buf_append_u8(b, 'V');
		r = r ? r : sl_buf_append_cstr(b, severity);
	}
	if (r == 0 && sqlstate) {
		r = sl_buf_append_u8(b, 'C');
		r = r ? r : sl_buf_append_cstr(b, sqlstate);
	}
	if (r == 0) {
		r = sl_buf_append_u8(b, 'M');
		r = r ? r : sl_buf_append_cstr(b, message ? message : "");
	}
	if (r == 0 && detail) {
		r = sl_buf_append_u8(b, 'D');
		r = r ? r : sl_buf_append_cstr(b, detail);
	}
	if (r == 0 && hint) {
		r = sl_buf_append_u8(b, 'H');
		r = r ? r : sl_buf_append_cstr(b, hint);
	}
	r = r ? r : sl_buf_append_u8(b, 0);
	return finish(b, &m, r);
}

int
sl_pg_put_error(struct sl_buf *b, const char *severity, const char *sqlstate, const char *message,
		const char *detail, const char *hint)
{
	return put_fields(b, 'E', severity ? severity : "ERROR", sqlstate ? sqlstate : "XX000",
			  message, detail, hint);
}

int
sl_pg_put_notice(struct sl_buf *b, const char *sqlstate, const char *message)
{
	return put_fields(b, 'N', "NOTICE", sqlstate ? sqlstate : "00000", message, NULL, NULL);
}

int
sl_pg_put_auth(struct sl_buf *b, uint32_t code, const void *extra, size_t extralen)
{
	struct mark m;
	int r = begin(b, 'R', &m);

	r = r ? r : sl_buf_append_u32be(b, code);
	r = r ? r : put_bytes(b, extra, extralen);
	return finish(b, &m, r);
}

int
sl_pg_put_param_status(struct sl_buf *b, const char *name, const char *value)
{
	struct mark m;
	int r = begin(b, 'S', &m);

	r = r ? r : put_cstr(b, name);
	r = r ? r : put_cstr(b, value);
	return finish(b, &m, r);
}

int
sl_pg_put_backend_key(struct sl_buf *b, uint32_t pid, uint32_t key)
{
	struct mark m;
	int r = begin(b, 'K', &m);

	r = r ? r : sl_buf_append_u32be(b, pid);
	r = r ? r : sl_buf_append_u32be(b, key);
	return finish(b, &m, r);
}

int
sl_pg_put_negotiate(struct sl_buf *b, uint32_t version, const char *const *opts, size_t nopts)
{
	struct mark m;
	int r = begin(b, 'v', &m);

	r = r ? r : sl_buf_append_u32be(b, version);
	r = r ? r : sl_buf_append_u32be(b, (uint32_t)nopts);
	for (size_t i = 0; r == 0 && i < nopts; i++)
		r = put_cstr(b, opts[i]);
	return finish(b, &m, r);
}

int
sl_pg_put_ready(struct sl_buf *b, char txstatus)
{
	struct mark m;
	int r = begin(b, 'Z', &m);

	r = r ? r : sl_buf_append_u8(b, (uint8_t)txstatus);
	return finish(b, &m, r);
}

int
sl_pg_put_startup(struct sl_buf *b, const char *const *keys, const char *const *vals, size_t n)
{
	struct mark m;
	int r = begin(b, 0, &m);

	r = r ? r : sl_buf_append_u32be(b, SL_PG_PROTO_V3);
	for (size_t i = 0; i < n && r == 0; i++) {
		/* An empty key would end the list early on the server. */
		if (keys[i] == NULL || keys[i][0] == '\0')
			r = SL_EINVAL;
		r = r ? r : put_cstr(b, keys[i]);
		r = r ? r : put_cstr(b, vals[i]);
	}
	r = r ? r : sl_buf_append_u8(b, 0);
	/* No SL_PG_MAX_STARTUP check: the server refuses an oversized packet
	 * and closes at once, while a builder failure that a caller ignores
	 * would send nothing and leave the login hanging. */
	return finish(b, &m, r);
}

int
sl_pg_put_ssl_request(struct sl_buf *b)
{
	struct mark m;
	int r = begin(b, 0, &m);

	r = r ? r : sl_buf_append_u32be(b, SL_PG_SSL_REQUEST);
	return finish(b, &m, r);
}

int
sl_pg_put_cancel(struct sl_buf *b, uint32_t pid, uint32_t key)
{
	struct mark m;
	int r = begin(b, 0, &m);

	r = r ? r : sl_buf_append_u32be(b, SL_PG_CANCEL_REQUEST);
	r = r ? r : sl_buf_append_u32be(b, pid);
	r = r ? r : sl_buf_append_u32be(b, key);
	return finish(b, &m, r);
}

int
sl_pg_put_password(struct sl_buf *b, const char *pw)
{
	struct mark m;
	int r = begin(b, 'p', &m);

	r = r ? r : put_cstr(b, pw);
	return finish(b, &m, r);
}

int
sl_pg_put_sasl_initial(struct sl_buf *b, const char *mech, const void *data, size_t len)
{
	struct mark m;
	int r = begin(b, 'p', &m);

	if (len > 0x7fffffff)
		r = r ? r : SL_ETOOBIG;
	r = r ? r : put_cstr(b, mech);
	r = r ? r : sl_buf_append_u32be(b, (uint32_t)len);
	r = r ? r : put_bytes(b, data, len);
	return finish(b, &m, r);
}

int
sl_pg_put_sasl_response(struct sl_buf *b, const void *data, size_t len)
{
	struct mark m;
	int r = begin(b, 'p', &m);

	r = r ? r : put_bytes(b, data, len);
	return finish(b, &m, r);
}

int
sl_pg_put_simple(struct sl_buf *b, uint8_t type)
{
	struct mark m;
	int r = begin(b, type, &m);

	return finish(b, &m, r);
}

int
sl_pg_put_query(struct sl_buf *b, const char *sql)
{
	struct mark m;
	int r = begin(b, 'Q', &m);

	r = r ? r : put_cstr(b, sql);
	return finish(b, &m, r);
}

int
sl_pg_put_parse(struct sl_buf *b, const char *stmt, const char *sql, const uint32_t *oids,
		uint16_t noids)
{
	struct mark m;
	int r = begin(b, 'P', &m);

	r = r ? r : put_cstr(b, stmt ? stmt : "");
	r = r ? r : put_cstr(b, sql);
	r = r ? r : sl_buf_append_u16be(b, noids);
	if (noids > 0 && oids == NULL)
		r = r ? r : SL_EINVAL;
	for (uint16_t i = 0; i < noids && r == 0; i++)
		r = sl_buf_append_u32be(b, oids[i]);
	return finish(b, &m, r);
}

int
sl_pg_put_execute(struct sl_buf *b, const char *portal, uint32_t maxrows)
{
	struct mark m;
	int r = begin(b, 'E', &m);

	r = r ? r : put_cstr(b, portal ? portal : "");
	r = r ? r : sl_buf_append_u32be(b, maxrows);
	return finish(b, &m, r);
}

int
sl_pg_put_describe(struct sl_buf *b, char kind, const char *name)
{
	struct mark m;
	int r = begin(b, 'D', &m);

	r = r ? r : sl_buf_append_u8(b, (uint8_t)kind);
	r = r ? r : put_cstr(b, name ? name : "");
	return finish(b, &m, r);
}

int
sl_pg_put_command_complete(struct sl_buf *b, const char *tag)
{
	struct mark m;
	int r = begin(b, 'C', &m);

	r = r ? r : put_cstr(b, tag);
	return finish(b, &m, r);
}

/* ------------------------------------------------------------ parsers */

/* Positions r after the 5-byte header of a message of the given type. */
static int
open_msg(struct sl_rd *r, const uint8_t *msg, size_t len, uint8_t type)
{
	uint8_t t;
	uint32_t l;

	sl_rd_init(r, msg, len);
	if (sl_rd_u8(r, &t) != 0 || (type != 0 && t != type) || sl_rd_u32be(r, &l) != 0 || l < 4 ||
	    l > 0x7fffffffu || (size_t)l + 1 != len)
		return SL_EPROTO;
	return 0;
}

int
sl_pg_parse_error(const uint8_t *msg, size_t len, struct sl_pg_error_fields *out)
{
	struct sl_rd r;

	memset(out, 0, sizeof(*out));
	if (len < 1 || (msg[0] != 'E' && msg[0] != 'N') || open_msg(&r, msg, len, msg[0]) != 0)
		return SL_EPROTO;
	for (;;) {
		uint8_t code;
		const char *v;

		if (sl_rd_u8(&r, &code) != 0)
			return SL_EPROTO;
		if (code == 0)
			break;
		if (sl_rd_cstr(&r, &v, NULL) != 0)
			return SL_EPROTO;
		switch (code) {
		case 'S':
			out->severity = v;
			break;
		case 'C':
			out->sqlstate = v;
			break;
		case 'M':
			out->message = v;
			break;
		case 'D':
			out->detail = v;
			break;
		case 'H':
			out->hint = v;
			break;
		case 'P':
			out->position = v;
			break;
		default:
			break;
		}
	}
	return sl_rd_left(&r) == 0 ? 0 : SL_EPROTO;
}

int
sl_pg_parse_param_status(const uint8_t *msg, size_t len, const char **name, const char **value)
{
	struct sl_rd r;

	if (open_msg(&r, msg, len, 'S') != 0 || sl_rd_cstr(&r, name, NULL) != 0 ||
	    sl_rd_cstr(&r, value, NULL) != 0 || sl_rd_left(&r) != 0)
		return SL_EPROTO;
	return 0;
}

int
sl_pg_parse_backend_key(const uint8_t *msg, size_t len, uint32_t *pid, uint32_t *key)
{
	struct sl_rd r;

	if (open_msg(&r, msg, len, 'K') != 0 || sl_rd_u32be(&r, pid) != 0 ||
	    sl_rd_u32be(&r, key) != 0 || sl_rd_left(&r) != 0)
		return SL_EPROTO;
	return 0;
}

int
sl_pg_parse_auth(const uint8_t *msg, size_t len, uint32_t *code, const uint8_t **extra,
		 size_t *extralen)
{
	struct sl_rd r;

	if (open_msg(&r, msg, len, 'R') != 0 || sl_rd_u32be(&r, code) != 0)
		return SL_EPROTO;
	*extralen = sl_rd_left(&r);
	*extra = msg + r.pos;
	return 0;
}

int
sl_pg_parse_query(const uint8_t *msg, size_t len, const char **sql, size_t *sqllen)
{
	struct sl_rd r;

	if (open_msg(&r, msg, len, 'Q') != 0 || sl_rd_cstr(&r, sql, sqllen) != 0 ||
	    sl_rd_left(&r) != 0)
		return SL_EPROTO;
	return 0;
}

int
sl_pg_parse_parse(const uint8_t *msg, size_t len, struct sl_pg_parse_msg *out)
{
	struct sl_rd r;
	const uint8_t *oids;

	memset(out, 0, sizeof(*out));
	if (open_msg(&r, msg, len, 'P') != 0 || sl_rd_cstr(&r, &out->stmt, NULL) != 0 ||
	    sl_rd_cstr(&r, &out->sql, &out->sqllen) != 0 || sl_rd_u16be(&r, &out->nparams) != 0 ||
	    sl_rd_bytes(&r, (size_t)out->nparams * 4, &oids) != 0 || sl_rd_left(&r) != 0)
		return SL_EPROTO;
	out->oids = oids;
	return 0;
}

int
sl_pg_parse_bind(const uint8_t *msg, size_t len, struct sl_pg_bind_msg *out)
{
	struct sl_rd r;
	size_t pstart;

	memset(out, 0, sizeof(*out));
	if (open_msg(&r, msg, len, 'B') != 0 || sl_rd_cstr(&r, &out->portal, NULL) != 0 ||
	    sl_rd_cstr(&r, &out->stmt, NULL) != 0 || sl_rd_u16be(&r, &out->nformats) != 0 ||
	    sl_rd_bytes(&r, (size_t)out->nformats * 2, &out->formats) != 0 ||
	    sl_rd_u16be(&r, &out->nparams) != 0)
		return SL_EPROTO;
	if (out->nformats > 1 && out->nformats != out->nparams)
		return SL_EPROTO;
	pstart = r.pos;
	for (uint16_t i = 0; i < out->nparams; i++) {
		int32_t plen;
		const uint8_t *v;

		if (sl_rd_i32be(&r, &plen) != 0)
			return SL_EPROTO;
		if (plen == -1)
			continue;
		if (plen < 0 || sl_rd_bytes(&r, (size_t)plen, &v) != 0)
			return SL_EPROTO;
	}
	out->params = msg + pstart;
	out->params_len = r.pos - pstart;
	if (sl_rd_u16be(&r, &out->nresult_formats) != 0 ||
	    sl_rd_bytes(&r, (size_t)out->nresult_formats * 2, &out->result_formats) != 0 ||
	    sl_rd_left(&r) != 0)
		return SL_EPROTO;
	/* Parameter format codes are 0 (text) or 1 (binary): the server refuses
	 * anything else, and sluice must know how to read the values. Result
	 * format codes are left to the server: it only checks them when it
	 * sends rows, so a statement without result columns may carry any. */
	for (uint16_t i = 0; i < out->nformats; i++)
		if (out->formats[2 * i] != 0 || out->formats[2 * i + 1] > 1)
			return SL_EPROTO;
	return 0;
}

int
sl_pg_parse_execute(const uint8_t *msg, size_t len, const char **portal, uint32_t *maxrows)
{
	struct sl_rd r;

	if (open_msg(&r, msg, len, 'E') != 0 || sl_rd_cstr(&r, portal, NULL) != 0 ||
	    sl_rd_u32be(&r, maxrows) != 0 || sl_rd_left(&r) != 0)
		return SL_EPROTO;
	return 0;
}

int
sl_pg_parse_describe_close(const uint8_t *msg, size_t len, char *kind, const char **name)
{
	struct sl_rd r;
	uint8_t k;

	if (len < 1 || (msg[0] != 'D' && msg[0] != 'C') || open_msg(&r, msg, len, msg[0]) != 0 ||
	    sl_rd_u8(&r, &k) != 0 || (k != 'S' && k != 'P') || sl_rd_cstr(&r, name, NULL) != 0 ||
	    sl_rd_left(&r) != 0)
		return SL_EPROTO;
	*kind = (char)k;
	return 0;
}

int
sl_pg_parse_password(const uint8_t *msg, size_t len, const char **pw, size_t *pwlen)
{
	struct sl_rd r;

	if (open_msg(&r, msg, len, 'p') != 0 || sl_rd_cstr(&r, pw, pwlen) != 0 ||
	    sl_rd_left(&r) != 0)
		return SL_EPROTO;
	return 0;
}

int
sl_pg_parse_command_complete(const uint8_t *msg, size_t len, const char **tag, int64_t *rows)
{
	struct sl_rd r;
	size_t tlen;
	const char *sp;

	*rows = -1;
	if (open_msg(&r, msg, len, 'C') != 0 || sl_rd_cstr(&r, tag, &tlen) != 0 ||
	    sl_rd_left(&r) != 0)
		return SL_EPROTO;
	sp = strrchr(*tag, ' ');
	if (sp != NULL && sp[1] != '\0') {
		int64_t v = 0;
		const char *d;

		for (d = sp + 1; *d >= '0' && *d <= '9'; d++) {
			if (v > (INT64_MAX - (*d - '0')) / 10)
				break;
			v = v * 10 + (*d - '0');
		}
		if (*d == '\0')
			*rows = v;
	}
	return 0;
}

int
sl_pg_parse_row_desc(const uint8_t *msg, size_t len, struct sl_pg_field *fields, uint16_t maxfields,
		     uint16_t *nfields)
{
	struct sl_rd r;
	uint16_t n;

	if (open_msg(&r, msg, len, 'T') != 0 || sl_rd_u16be(&r, &n) != 0)
		return SL_EPROTO;
	if (n > maxfields)
		return SL_ETOOBIG;
	for (uint16_t i = 0; i < n; i++) {
		struct sl_pg_field *f = &fields[i];
		uint16_t u16;
		uint32_t u32;

		if (sl_rd_cstr(&r, &f->name, NULL) != 0 || sl_rd_u32be(&r, &f->table_oid) != 0 ||
		    sl_rd_u16be(&r, &f->attnum) != 0 || sl_rd_u32be(&r, &f->type_oid) != 0 ||
		    sl_rd_u16be(&r, &u16) != 0 || sl_rd_u32be(&r, &u32) != 0 ||
		    sl_rd_u16be(&r, &f->format) != 0)
			return SL_EPROTO;
		f->typlen = (int16_t)u16;
		f->typmod = (int32_t)u32;
	}
	if (sl_rd_left(&r) != 0)
		return SL_EPROTO;
	*nfields = n;
	return 0;
}

int
sl_pg_parse_data_row(const uint8_t *msg, size_t len, uint16_t maxcols, uint16_t *ncols,
		     uint32_t *offs, int32_t *lens)
{
	struct sl_rd r;
	uint16_t n;

	if (open_msg(&r, msg, len, 'D') != 0 || sl_rd_u16be(&r, &n) != 0)
		return SL_EPROTO;
	if (n > maxcols)
		return SL_ETOOBIG;
	for (uint16_t i = 0; i < n; i++) {
		int32_t l;
		const uint8_t *v;

		if (sl_rd_i32be(&r, &l) != 0)
			return SL_EPROTO;
		offs[i] = (uint32_t)r.pos;
		lens[i] = l;
		if (l == -1)
			continue;
		if (l < 0 || sl_rd_bytes(&r, (size_t)l, &v) != 0)
			return SL_EPROTO;
	}
	if (sl_rd_left(&r) != 0)
		return SL_EPROTO;
	*ncols = n;
	return 0;
}

int
sl_pg_parse_notification(const uint8_t *msg, size_t len, uint32_t *pid, const char **channel,
			 const char **payload)
{
	struct sl_rd r;

	if (open_msg(&r, msg, len, 'A') != 0 || sl_rd_u32be(&r, pid) != 0 ||
	    sl_rd_cstr(&r, channel, NULL) != 0 || sl_rd_cstr(&r, payload, NULL) != 0 ||
	    sl_rd_left(&r) != 0)
		return SL_EPROTO;
	return 0;
}

int
sl_pg_parse_negotiate_version(const uint8_t *msg, size_t len, uint32_t *newest_minor,
			      uint32_t *nopts)
{
	struct sl_rd r;

	if (open_msg(&r, msg, len, 'v') != 0 || sl_rd_u32be(&r, newest_minor) != 0 ||
	    sl_rd_u32be(&r, nopts) != 0 || *nopts > SL_PG_MAX_PARAMS)
		return SL_EPROTO;
	for (uint32_t i = 0; i < *nopts; i++) {
		const char *o;

		if (sl_rd_cstr(&r, &o, NULL) != 0)
			return SL_EPROTO;
	}
	return sl_rd_left(&r) == 0 ? 0 : SL_EPROTO;
}
