/*
 * codec.c - PostgreSQL v3 wire codec. Pure: bytes in, structs or bytes out.
 */
#include "sluice/pg_codec.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

int
sl_pg_frame(const uint8_t *p, size_t n, size_t max, uint8_t *type, size_t *total)
{
	uint32_t len;

	if (n < 5)
		return SL_AGAIN;
	len = ((uint32_t)p[1] << 24) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 8) | p[4];
	if (len < 4)
		return SL_EPROTO;
	if ((size_t)len + 1 > max)
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

/* Starts a typed message; returns where its length field is, counted from
 * the buffer's unconsumed start: appending may compact the buffer (drop
 * consumed bytes), which moves absolute offsets but not this one. */
static int
begin(struct sl_buf *b, uint8_t type, size_t *lenpos)
{
	int r;

	if ((r = sl_buf_append_u8(b, type)) != 0)
		return r;
	*lenpos = b->len - b->off;
	return sl_buf_append_u32be(b, 0);
}

static int
finish(struct sl_buf *b, size_t lenpos)
{
	size_t pos = b->off + lenpos, n = b->len - pos;

	if (n > 0x7fffffff)
		return SL_ETOOBIG;
	b->data[pos] = (uint8_t)(n >> 24);
	b->data[pos + 1] = (uint8_t)(n >> 16);
	b->data[pos + 2] = (uint8_t)(n >> 8);
	b->data[pos + 3] = (uint8_t)n;
	return 0;
}

static int
put_fields(struct sl_buf *b, uint8_t type, const char *severity, const char *sqlstate,
	   const char *message, const char *detail, const char *hint)
{
	size_t lp;
	int r = begin(b, type, &lp);

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
	return r ? r : finish(b, lp);
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
	size_t lp;
	int r = begin(b, 'R', &lp);

	r = r ? r : sl_buf_append_u32be(b, code);
	r = r ? r : sl_buf_append(b, extra, extralen);
	return r ? r : finish(b, lp);
}

int
sl_pg_put_param_status(struct sl_buf *b, const char *name, const char *value)
{
	size_t lp;
	int r = begin(b, 'S', &lp);

	r = r ? r : sl_buf_append_cstr(b, name);
	r = r ? r : sl_buf_append_cstr(b, value);
	return r ? r : finish(b, lp);
}

int
sl_pg_put_backend_key(struct sl_buf *b, uint32_t pid, uint32_t key)
{
	size_t lp;
	int r = begin(b, 'K', &lp);

	r = r ? r : sl_buf_append_u32be(b, pid);
	r = r ? r : sl_buf_append_u32be(b, key);
	return r ? r : finish(b, lp);
}

int
sl_pg_put_ready(struct sl_buf *b, char txstatus)
{
	size_t lp;
	int r = begin(b, 'Z', &lp);

	r = r ? r : sl_buf_append_u8(b, (uint8_t)txstatus);
	return r ? r : finish(b, lp);
}

int
sl_pg_put_startup(struct sl_buf *b, const char *const *keys, const char *const *vals, size_t n)
{
	size_t lp = b->len;
	int r = sl_buf_append_u32be(b, 0);

	r = r ? r : sl_buf_append_u32be(b, SL_PG_PROTO_V3);
	for (size_t i = 0; i < n && r == 0; i++) {
		r = sl_buf_append_cstr(b, keys[i]);
		r = r ? r : sl_buf_append_cstr(b, vals[i]);
	}
	r = r ? r : sl_buf_append_u8(b, 0);
	return r ? r : finish(b, lp);
}

int
sl_pg_put_ssl_request(struct sl_buf *b)
{
	int r = sl_buf_append_u32be(b, 8);

	return r ? r : sl_buf_append_u32be(b, SL_PG_SSL_REQUEST);
}

int
sl_pg_put_cancel(struct sl_buf *b, uint32_t pid, uint32_t key)
{
	int r = sl_buf_append_u32be(b, 16);

	r = r ? r : sl_buf_append_u32be(b, SL_PG_CANCEL_REQUEST);
	r = r ? r : sl_buf_append_u32be(b, pid);
	return r ? r : sl_buf_append_u32be(b, key);
}

int
sl_pg_put_password(struct sl_buf *b, const char *pw)
{
	size_t lp;
	int r = begin(b, 'p', &lp);

	r = r ? r : sl_buf_append_cstr(b, pw);
	return r ? r : finish(b, lp);
}

int
sl_pg_put_sasl_initial(struct sl_buf *b, const char *mech, const void *data, size_t len)
{
	size_t lp;
	int r = begin(b, 'p', &lp);

	r = r ? r : sl_buf_append_cstr(b, mech);
	r = r ? r : sl_buf_append_u32be(b, (uint32_t)len);
	r = r ? r : sl_buf_append(b, data, len);
	return r ? r : finish(b, lp);
}

int
sl_pg_put_sasl_response(struct sl_buf *b, const void *data, size_t len)
{
	size_t lp;
	int r = begin(b, 'p', &lp);

	r = r ? r : sl_buf_append(b, data, len);
	return r ? r : finish(b, lp);
}

int
sl_pg_put_simple(struct sl_buf *b, uint8_t type)
{
	size_t lp;
	int r = begin(b, type, &lp);

	return r ? r : finish(b, lp);
}

int
sl_pg_put_query(struct sl_buf *b, const char *sql)
{
	size_t lp;
	int r = begin(b, 'Q', &lp);

	r = r ? r : sl_buf_append_cstr(b, sql);
	return r ? r : finish(b, lp);
}

int
sl_pg_put_parse(struct sl_buf *b, const char *stmt, const char *sql, const uint32_t *oids,
		uint16_t noids)
{
	size_t lp;
	int r = begin(b, 'P', &lp);

	r = r ? r : sl_buf_append_cstr(b, stmt ? stmt : "");
	r = r ? r : sl_buf_append_cstr(b, sql);
	r = r ? r : sl_buf_append_u16be(b, noids);
	for (uint16_t i = 0; i < noids && r == 0; i++)
		r = sl_buf_append_u32be(b, oids[i]);
	return r ? r : finish(b, lp);
}

/* ------------------------------------------------------------ parsers */

/* Positions r after the 5-byte header of a message of the given type. */
static int
open_msg(struct sl_rd *r, const uint8_t *msg, size_t len, uint8_t type)
{
	uint8_t t;
	uint32_t l;

	sl_rd_init(r, msg, len);
	if (sl_rd_u8(r, &t) != 0 || (type != 0 && t != type) || sl_rd_u32be(r, &l) != 0 ||
	    (size_t)l + 1 != len)
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
	for (uint16_t i = 0; i < out->nformats; i++) {
		uint16_t f = (uint16_t)((out->formats[2 * i] << 8) | out->formats[2 * i + 1]);

		if (f > 1)
			return SL_EPROTO;
	}
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
	if (sp != NULL && sp[1] >= '0' && sp[1] <= '9') {
		char *end;
		long long v = strtoll(sp + 1, &end, 10);

		if (*end == '\0' && v >= 0)
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
