/*
 * audit_internal.h - the record layout shared by the writer and the verifier.
 */
#ifndef SLUICE_AUDIT_INTERNAL_H
#define SLUICE_AUDIT_INTERNAL_H

#include <sqlite3.h>
#include <stddef.h>
#include <stdint.h>

struct sl_audit_row {
	uint64_t seq;
	int64_t ts;
	const char *node, *type, *session, *trace_id, *span_id, *data;
	const char *prev_hash; /* hex */
	const char *hash;      /* hex (as stored) */
	const uint8_t
		*prev_bin; /* the writer's own: prev_hash as 32 bytes (NULL: decode prev_hash) */
	/* From a stored row: the values' byte lengths (a value may hold a NUL
	 * that a C string would end at; the hash covers every byte) and
	 * whether every column has the type the writer stores. A row built
	 * by hand leaves has_len 0: its strings' lengths are taken. */
	int has_len, types_ok;
	size_t len[6], prev_len, hash_len; /* node..data as in the hash */
};

/* Reads columns seq, ts, node, type, session, trace_id, span_id, data,
 * prev_hash, hash (in that order) from st. Pointers borrow from st. types_ok
 * is 0 when seq or ts is not an INTEGER or another column not TEXT (an edit:
 * SQLite would convert such a value back silently). */
void sl_audit_row_from_stmt(sqlite3_stmt *st, struct sl_audit_row *row);
/* hash = SHA-256(prev_hash bytes || seq || ts || length-prefixed strings). A
 * prev_hash that is not 64 hex digits hashes as given (so the edit shows). */
void sl_audit_hash_row(const struct sl_audit_row *row, uint8_t out[32]);
/* The same from parts: f = node, type, session, trace_id, span_id, data with
 * their lengths; prev as 32 bytes (prev_bin) or, when NULL, as hex text of
 * prev_len bytes. */
void sl_audit_hash_parts(const uint8_t *prev_bin, const char *prev_hash, size_t prev_len,
			 uint64_t seq, int64_t ts, const char *const f[6], const size_t l[6],
			 uint8_t out[32]);
/* Whether the row's stored hash is exactly hex (64 digits, nothing after). */
int sl_audit_row_hash_is(const struct sl_audit_row *row, const char hex[65]);
/* The signed checkpoint message. Returns its length. */
int sl_audit_checkpoint_msg(const char *node, uint64_t seq, const char *hashhex, int64_t ts,
			    char *buf, size_t len);

#endif
