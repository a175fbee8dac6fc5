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
};

/* Reads columns seq, ts, node, type, session, trace_id, span_id, data,
 * prev_hash, hash (in that order) from st. Pointers borrow from st. */
void sl_audit_row_from_stmt(sqlite3_stmt *st, struct sl_audit_row *row);
/* hash = SHA-256(prev_hash bytes || seq || ts || length-prefixed strings). A
 * prev_hash that is not 64 hex digits hashes as given (so the edit shows). */
void sl_audit_hash_row(const struct sl_audit_row *row, uint8_t out[32]);
/* The same from parts: f = node, type, session, trace_id, span_id, data with
 * their lengths; prev as 32 bytes (prev_bin) or, when NULL, as hex text. */
void sl_audit_hash_parts(const uint8_t *prev_bin, const char *prev_hash, uint64_t seq, int64_t ts,
			 const char *const f[6], const size_t l[6], uint8_t out[32]);
/* The signed checkpoint message. Returns its length. */
int sl_audit_checkpoint_msg(const char *node, uint64_t seq, const char *hashhex, int64_t ts,
			    char *buf, size_t len);

#endif
