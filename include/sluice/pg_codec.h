/*
 * pg_codec.h - PostgreSQL v3 wire codec (pure): framing, startup packets,
 * builders for the messages sluice sends and parsers for the ones it reads.
 *
 * Parsers take the whole framed message (type byte first, as sl_pg_frame()
 * delimited it), check every length against the message, and borrow
 * pointers into it: the message must outlive what they return. They return
 * 0 or SL_EPROTO (SL_ETOOBIG where a caller-given array is too small).
 *
 * Builders append one complete message to b and return 0, SL_ENOMEM,
 * SL_ETOOBIG (b's maximum) or SL_EINVAL (NULL string); on failure nothing is
 * left in b. They are safe on a buffer with unread bytes (off > 0).
 */
#ifndef SLUICE_PG_CODEC_H
#define SLUICE_PG_CODEC_H

#include "sluice/core.h"

#define SL_PG_PROTO_V3	     196608u
#define SL_PG_SSL_REQUEST    80877103u
#define SL_PG_GSSENC_REQUEST 80877104u
#define SL_PG_CANCEL_REQUEST 80877102u
#define SL_PG_MAX_STARTUP    10000u

/*
 * Frames a typed message (1 type byte + int32 length that counts itself).
 * Returns 0 with *type and *total (bytes including the type byte) when the
 * whole message is in p[0..n), SL_AGAIN when more bytes are needed (also when
 * n < 5), SL_EPROTO when the length is below 4, SL_ETOOBIG when total > max
 * or the length is above INT32_MAX (decided from the header alone).
 */
int sl_pg_frame(const uint8_t *p, size_t n, size_t max, uint8_t *type, size_t *total);
/* Frames an untyped startup-phase packet (int32 length first). Same returns;
 * limit SL_PG_MAX_STARTUP; a length below 8 is SL_EPROTO. */
int sl_pg_frame_startup(const uint8_t *p, size_t n, size_t *total);

#define SL_PG_MAX_PARAMS 64
struct sl_pg_startup {
	uint32_t code; /* protocol version or request code */
	const char *keys[SL_PG_MAX_PARAMS];
	const char *vals[SL_PG_MAX_PARAMS]; /* borrowed from the message */
	size_t nparams;
	uint32_t cancel_pid, cancel_key;
};
/*
 * Parses a whole startup-phase packet (as framed): StartupMessage v3.x,
 * SSLRequest, GSSENCRequest (exactly 8 bytes) or CancelRequest (exactly 16).
 * Refuses unknown codes, major version != 3, strings without their NUL, a
 * missing final NUL, bytes after it, duplicate keys (SL_EPROTO) and more than
 * SL_PG_MAX_PARAMS parameters (SL_ETOOBIG).
 */
int sl_pg_parse_startup(const uint8_t *msg, size_t len, struct sl_pg_startup *out);
/* Value of a startup parameter or NULL. */
const char *sl_pg_startup_get(const struct sl_pg_startup *s, const char *key);

/* ---- builders (server to client) */
/* 'E'; severity "ERROR"/"FATAL" (NULL: ERROR), sqlstate NULL: XX000; writes both S and V;
 * detail and hint are optional. */
int sl_pg_put_error(struct sl_buf *b, const char *severity, const char *sqlstate,
		    const char *message, const char *detail, const char *hint);
/* 'N' with severity NOTICE. */
int sl_pg_put_notice(struct sl_buf *b, const char *sqlstate, const char *message);
/* 'R' Authentication<code> followed by extralen bytes. */
int sl_pg_put_auth(struct sl_buf *b, uint32_t code, const void *extra, size_t extralen);
int sl_pg_put_param_status(struct sl_buf *b, const char *name, const char *value); /* 'S' */
int sl_pg_put_backend_key(struct sl_buf *b, uint32_t pid, uint32_t key);	   /* 'K' */
int sl_pg_put_ready(struct sl_buf *b, char txstatus);				   /* 'Z' */
int sl_pg_put_command_complete(struct sl_buf *b, const char *tag);		   /* 'C' */
/* 'v' NegotiateProtocolVersion: the newest minor version spoken and the
 * protocol options (_pq_.*) it does not know. */
int sl_pg_put_negotiate(struct sl_buf *b, uint32_t version, const char *const *opts, size_t nopts);

/* ---- builders (client to server) */
/* StartupMessage v3.0; keys must be non-empty (SL_EINVAL). The size is not
 * capped at SL_PG_MAX_STARTUP: the server refuses a longer packet itself. */
int sl_pg_put_startup(struct sl_buf *b, const char *const *keys, const char *const *vals, size_t n);
int sl_pg_put_ssl_request(struct sl_buf *b);
int sl_pg_put_cancel(struct sl_buf *b, uint32_t pid, uint32_t key);
int sl_pg_put_password(struct sl_buf *b, const char *pw); /* 'p' */
/* 'p' SASLInitialResponse: mechanism, int32 length, data. */
int sl_pg_put_sasl_initial(struct sl_buf *b, const char *mech, const void *data, size_t len);
/* 'p' SASLResponse: the raw data. */
int sl_pg_put_sasl_response(struct sl_buf *b, const void *data, size_t len);
/* Length-only messages: 'S' Sync, 'H' Flush, 'X' Terminate, 'c' CopyDone. */
int sl_pg_put_simple(struct sl_buf *b, uint8_t type);
int sl_pg_put_query(struct sl_buf *b, const char *sql); /* 'Q' */
/* 'P'; stmt NULL is the unnamed statement; oids may be NULL when noids is 0. */
int sl_pg_put_parse(struct sl_buf *b, const char *stmt, const char *sql, const uint32_t *oids,
		    uint16_t noids);
/* 'E' Execute; portal NULL is the unnamed portal, maxrows 0 = all. */
int sl_pg_put_execute(struct sl_buf *b, const char *portal, uint32_t maxrows);
/* 'D': kind 'S' (statement) or 'P' (portal) */
int sl_pg_put_describe(struct sl_buf *b, char kind, const char *name);

/* ---- parsers */
struct sl_pg_error_fields {
	const char *severity, *sqlstate, *message, *detail, *hint, *position; /* borrowed */
};
/* 'E' or 'N'; fields not present are NULL. */
int sl_pg_parse_error(const uint8_t *msg, size_t len, struct sl_pg_error_fields *out);
int sl_pg_parse_param_status(const uint8_t *msg, size_t len, const char **name, const char **value);
int sl_pg_parse_backend_key(const uint8_t *msg, size_t len, uint32_t *pid, uint32_t *key);
/* 'R': the code and the bytes after it (borrowed). */
int sl_pg_parse_auth(const uint8_t *msg, size_t len, uint32_t *code, const uint8_t **extra,
		     size_t *extralen);
/* 'v' NegotiateProtocolVersion: newest minor version and the count of
 * unrecognised options (at most SL_PG_MAX_PARAMS, each NUL-terminated). */
int sl_pg_parse_negotiate_version(const uint8_t *msg, size_t len, uint32_t *newest_minor,
				  uint32_t *nopts);
/* 'Q': exactly one NUL, at the end. */
int sl_pg_parse_query(const uint8_t *msg, size_t len, const char **sql, size_t *sqllen);
struct sl_pg_parse_msg {
	const char *stmt;
	const char *sql;
	size_t sqllen;
	uint16_t nparams;
	const uint8_t *oids; /* nparams big-endian uint32 */
};
int sl_pg_parse_parse(const uint8_t *msg, size_t len, struct sl_pg_parse_msg *out); /* 'P' */
struct sl_pg_bind_msg {
	const char *portal, *stmt;
	uint16_t nformats;
	const uint8_t *formats; /* nformats big-endian uint16, each 0 or 1 */
	uint16_t nparams;
	const uint8_t *params; /* raw parameter section (lengths and values) for hashing */
	size_t params_len;
	uint16_t nresult_formats;
	const uint8_t *result_formats;
};
/* 'B': every length checked; parameter lengths >= 0 or -1 (NULL); format
 * counts 0, 1 or nparams; parameter format codes 0 or 1 (result format
 * codes are the server's to check). */
int sl_pg_parse_bind(const uint8_t *msg, size_t len, struct sl_pg_bind_msg *out);
int sl_pg_parse_execute(const uint8_t *msg, size_t len, const char **portal, uint32_t *maxrows);
/* 'D' Describe / 'C' Close from the client: kind 'S' or 'P'. */
int sl_pg_parse_describe_close(const uint8_t *msg, size_t len, char *kind, const char **name);
int sl_pg_parse_password(const uint8_t *msg, size_t len, const char **pw, size_t *pwlen); /* 'p' */
/* 'C' CommandComplete: tag, and *rows when the tag's last word is a count
 * (INSERT 0 5 -> 5, SELECT 3 -> 3), else -1. */
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
/* 'T' RowDescription into fields[0..maxfields); more columns: SL_ETOOBIG. */
int sl_pg_parse_row_desc(const uint8_t *msg, size_t len, struct sl_pg_field *fields,
			 uint16_t maxfields, uint16_t *nfields);
/* 'D' DataRow: offsets (relative to msg) and lengths (-1 = NULL) of up to
 * maxcols columns; more columns: SL_ETOOBIG; a count or length that does not
 * match the message: SL_EPROTO. */
int sl_pg_parse_data_row(const uint8_t *msg, size_t len, uint16_t maxcols, uint16_t *ncols,
			 uint32_t *offs, int32_t *lens);
/* 'A' NotificationResponse. */
int sl_pg_parse_notification(const uint8_t *msg, size_t len, uint32_t *pid, const char **channel,
			     const char **payload);

#endif
