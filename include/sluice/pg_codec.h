/*
 * pg_codec.h - PostgreSQL v3 wire codec (pure): framing, startup packets,
 * builders for the messages sluice sends and parsers for the ones it reads.
 * Parsers take the whole framed message (type byte first) and borrow
 * pointers into it; every length is checked.
 */
#ifndef SLUICE_PG_CODEC_H
#define SLUICE_PG_CODEC_H
#include "sluice/core.h"
#define SL_PG_PROTO_V3	     196608u
#define SL_PG_SSL_REQUEST    80877103u
#define SL_PG_GSSENC_REQUEST 80877104u
#define SL_PG_CANCEL_REQUEST 80877102u
#define SL_PG_MAX_STARTUP    10000u
int sl_pg_frame(const uint8_t *p, size_t n, size_t max, uint8_t *type, size_t *total);
int sl_pg_frame_startup(const uint8_t *p, size_t n, size_t *total);
#define SL_PG_MAX_PARAMS 64
struct sl_pg_startup {
	uint32_t code;
	const char *keys[SL_PG_MAX_PARAMS];
	const char *vals[SL_PG_MAX_PARAMS];
	size_t nparams;
	uint32_t cancel_pid, cancel_key;
};
int sl_pg_parse_startup(const uint8_t *msg, size_t len, struct sl_pg_startup *out);
const char *sl_pg_startup_get(const struct sl_pg_startup *s, const char *key);
int sl_pg_put_error(struct sl_buf *b, const char *severity, const char *sqlstate,
		    const char *message, const char *detail, const char *hint);
int sl_pg_put_auth(struct sl_buf *b, uint32_t code, const void *extra, size_t extralen);
int sl_pg_put_backend_key(struct sl_buf *b, uint32_t pid, uint32_t key);
int sl_pg_put_startup(struct sl_buf *b, const char *const *keys, const char *const *vals, size_t n);
int sl_pg_put_ssl_request(struct sl_buf *b);
int sl_pg_put_cancel(struct sl_buf *b, uint32_t pid, uint32_t key);
int sl_pg_put_notice(struct sl_buf *b, const char *sqlstate, const char *message);
int sl_pg_put_param_status(struct sl_buf *b, const char *name, const char *value);
int sl_pg_put_ready(struct sl_buf *b, char txstatus);
int sl_pg_put_password(struct sl_buf *b, const char *pw);
int sl_pg_put_sasl_initial(struct sl_buf *b, const char *mech, const void *data, size_t len);
int sl_pg_put_sasl_response(struct sl_buf *b, const void *data, size_t len);
int sl_pg_put_simple(struct sl_buf *b, uint8_t type);
int sl_pg_put_query(struct sl_buf *b, const char *sql);
int sl_pg_put_parse(struct sl_buf *b, const char *stmt, const char *sql, const uint32_t *oids,
		    uint16_t noids);
struct sl_pg_error_fields {
	const char *severity, *sqlstate, *message, *detail, *hint, *position;
};
int sl_pg_parse_error(const uint8_t *msg, size_t len, struct sl_pg_error_fields *out);
int sl_pg_parse_param_status(const uint8_t *msg, size_t len, const char **name, const char **value);
int sl_pg_parse_backend_key(const uint8_t *msg, size_t len, uint32_t *pid, uint32_t *key);
int sl_pg_parse_query(const uint8_t *msg, size_t len, const char **sql, size_t *sqllen);
struct sl_pg_parse_msg {
	const char *stmt;
	const char *sql;
	size_t sqllen;
	uint16_t nparams;
	const uint8_t *oids;
};
int sl_pg_parse_parse(const uint8_t *msg, size_t len, struct sl_pg_parse_msg *out);
struct sl_pg_bind_msg {
	const char *portal, *stmt;
	uint16_t nformats;
	const uint8_t *formats;
	uint16_t nparams;
	const uint8_t *params;
	size_t params_len;
	uint16_t nresult_formats;
	const uint8_t *result_formats;
};
int sl_pg_parse_bind(const uint8_t *msg, size_t len, struct sl_pg_bind_msg *out);
int sl_pg_parse_execute(const uint8_t *msg, size_t len, const char **portal, uint32_t *maxrows);
int sl_pg_parse_describe_close(const uint8_t *msg, size_t len, char *kind, const char **name);
int sl_pg_parse_password(const uint8_t *msg, size_t len, const char **pw, size_t *pwlen);
int sl_pg_parse_command_complete(const uint8_t *msg, size_t len, const char **tag, int64_t *rows);
struct sl_pg_field {
	const char *name;
	uint32_t table_oid;
	uint16_t attnum;
	uint32_t type_oid;
	int16_t typlen;
	int32_t typmod;
	uint16_t format;
};
int sl_pg_parse_row_desc(const uint8_t *msg, size_t len, struct sl_pg_field *fields,
			 uint16_t maxfields, uint16_t *nfields);
/* DataRow: offsets/lengths (-1 = NULL) of up to maxcols columns, relative to msg. */
int sl_pg_parse_data_row(const uint8_t *msg, size_t len, uint16_t maxcols, uint16_t *ncols,
			 uint32_t *offs, int32_t *lens);
int sl_pg_parse_notification(const uint8_t *msg, size_t len, uint32_t *pid, const char **channel,
			     const char **payload);
int sl_pg_parse_auth(const uint8_t *msg, size_t len, uint32_t *code, const uint8_t **extra,
		     size_t *extralen);

#endif
