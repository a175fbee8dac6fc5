/*
 * mask.h - the masking engine (pure): detectors compiled into one hyperscan
 * pattern set (block mode for whole values, streaming mode for byte
 * streams), checksums (Luhn, mod-97) and boundary checks in code,
 * length-preserving rewrites, column rules. No sockets, clocks, globals or
 * logging. Behaviour and limits: docs/masking.md, docs/internals/masking.md.
 *
 * Threading: a db and the plans built on it are immutable and shared by
 * every thread; a scratch belongs to one thread; a stream belongs to one
 * session and borrows its thread's scratch during feed/end calls.
 */
#ifndef SLUICE_MASK_H
#define SLUICE_MASK_H

#include <stddef.h>
#include <stdint.h>

#include "sluice/config.h"
#include "sluice/core.h"

enum sl_mask_style { SL_MASK_PARTIAL = 0, SL_MASK_FULL, SL_MASK_NULL, SL_MASK_HASH };

enum sl_mask_detector {
	SL_DET_SSN = 0,
	SL_DET_CARD,
	SL_DET_EMAIL,
	SL_DET_AWS,
	SL_DET_JWT,
	SL_DET_PEM,
	SL_DET_SECRET,
	SL_DET_IBAN,
	SL_DET_PHONE,
	SL_DET_BUILTIN, /* custom detectors follow */
};
#define SL_MASK_MAX_DETECTORS 32

/* A PEM private key block is masked from its BEGIN marker to the end of its
 * END marker, or for SL_MASK_PEM_MAX bytes when no END marker comes. */
#define SL_MASK_PEM_MAX (16 * 1024)
/* A stream never holds back more than this many unemitted bytes. */
#define SL_MASK_HOLD_MAX (16 * 1024)

/* Compiled detectors: immutable, shared by every thread. cfg (may be NULL)
 * adds custom detectors; a custom regex must not match the empty string
 * and must have a bounded match length of at most 4096 bytes (write {m,n},
 * not + or *): else SL_EINVAL with a message in err. */
struct sl_mask_db;
int sl_mask_db_new(const struct sl_cfg_mask *cfg, struct sl_mask_db **out, char *err,
		   size_t errlen);
void sl_mask_db_free(struct sl_mask_db *db);
/* Detector name by id ("ssn", "credit_card", ..., custom names); NULL past the end. */
const char *sl_mask_detector_name(const struct sl_mask_db *db, unsigned id);
int sl_mask_detector_id(const struct sl_mask_db *db, const char *name);

/* A masking plan (which detectors, styles, column rules, hash key), built
 * from a policy's mask section. Immutable, shareable. */
struct sl_mask_plan;
int sl_mask_plan_new(const struct sl_mask_db *db, const struct sl_cfg_policy_mask *pm,
		     const uint8_t *hash_key, size_t keylen, struct sl_mask_plan **out, char *err,
		     size_t errlen);
/* Every built-in detector, full style: used for statement text in the audit trail. */
int sl_mask_plan_all(const struct sl_mask_db *db, const uint8_t *hash_key, size_t keylen,
		     struct sl_mask_plan **out);
void sl_mask_plan_free(struct sl_mask_plan *p);

/* Per-thread scratch. */
struct sl_mask_scratch;
int sl_mask_scratch_new(const struct sl_mask_db *db, struct sl_mask_scratch **out);
void sl_mask_scratch_free(struct sl_mask_scratch *s);

struct sl_mask_stats {
	uint32_t hits[SL_MASK_MAX_DETECTORS];
	uint32_t columns;
};

/* Result of sl_mask_value / sl_mask_column. */
enum sl_mask_result {
	SL_MASK_UNCHANGED = 0,
	SL_MASK_IN_PLACE = 1, /* val rewritten, same length */
	SL_MASK_REPLACED = 2, /* new value in out (length changed) */
	SL_MASK_TO_NULL = 3,  /* the value must become NULL */
};

/*
 * Masks detector hits in one complete value (block mode). Returns an
 * sl_mask_result or a negative error (the caller then drops the value: fail
 * closed):
 *  - SL_MASK_UNCHANGED: no hit;
 *  - SL_MASK_IN_PLACE: val rewritten, same length (partial, full styles);
 *  - SL_MASK_REPLACED: a hash-style hit changed the length: the new value
 *    was appended to out (val is clobbered);
 *  - SL_MASK_TO_NULL: a hit of a null-style detector: send SQL NULL (free
 *    text: star the value).
 * Overlapping hits: a byte starred by any hit is starred; overlapping hash
 * hits become one token. st (may be NULL) counts hits per detector.
 */
int sl_mask_value(const struct sl_mask_plan *p, struct sl_mask_scratch *s, uint8_t *val, size_t len,
		  struct sl_buf *out, struct sl_mask_stats *st);
/* The plan's i-th column glob, NULL past the end. */
const char *sl_mask_plan_column_glob(const struct sl_mask_plan *p, size_t i);
/* Column rule: returns 1 and the style if name matches the plan's column globs. */
int sl_mask_plan_column(const struct sl_mask_plan *p, const char *colname,
			enum sl_mask_style *style);
/* Masks a whole text column value with style: partial keeps separators
 * and, for values with more than 8 letters/digits, the last 4 of them;
 * full stars every byte; null returns SL_MASK_TO_NULL; hash appends an
 * 18-byte token ("h:" + 16 hex of HMAC-SHA-256) to out, SL_MASK_REPLACED. */
int sl_mask_column(const struct sl_mask_plan *p, enum sl_mask_style style, uint8_t *val, size_t len,
		   struct sl_buf *out);

/*
 * Type-safe column rules for PostgreSQL values. sl_mask_pg_textlike() says
 * whether a type OID is text (text, varchar, bpchar, name, char, json,
 * jsonb and xml in text format); sl_mask_column_typed() masks any value by
 * column rule without ever producing something its type cannot parse:
 * text-like text values go through sl_mask_column(); other types become
 * NULL (style null, or a type with no zero value) or their zero value:
 * text format "0", "f", "0.00", "2000-01-01", "00:00:00", the nil UUID ...
 * (appended to out, SL_MASK_REPLACED); binary format the same-length
 * all-zero encoding (int2/4/8, float4/8, bool, oid, money, date, time,
 * timestamp(tz), uuid: SL_MASK_IN_PLACE) or numeric zero (REPLACED).
 */
int sl_mask_pg_textlike(uint32_t type_oid);
int sl_mask_column_typed(const struct sl_mask_plan *p, enum sl_mask_style style, uint32_t type_oid,
			 int binary, uint8_t *val, size_t len, struct sl_buf *out);

/*
 * Streaming, for byte streams whose values can be split across reads (COPY
 * data, HTTP bodies, SSH output). Feed chunks of any size; masked output
 * goes to emit in order (possibly several calls per feed). Whatever the
 * chunking, the output is what sl_mask_value() would make of the whole
 * stream, except that style null is applied as full (a stream has no
 * NULL); hash tokens replace their hits (the length changes).
 *
 * Bounded memory: a stream holds back only bytes that may still belong to
 * a match in progress (a trailing digit group, a word that may be an email
 * local part, an unfinished PEM header: typically 0-40 bytes, nothing
 * after whitespace), and never more than SL_MASK_HOLD_MAX: a match still
 * in progress at that bound (a 16 KiB token that may be a JWT, an email
 * with a huge domain) is starred as it leaves (fail closed). Private key
 * blocks and secret values are masked while they stream, from start to
 * end, without being held. With custom patterns, (max match length - 1)
 * bytes are held back. Memory per stream is about 85 KiB plus hyperscan's
 * stream state, whatever the stream's length.
 *
 * emit returns 0, or non-zero to abort: feed/end then return SL_EIO and
 * the stream accepts nothing more. s is borrowed during feed/end calls.
 */
struct sl_mask_stream;
typedef int (*sl_mask_emit_fn)(void *arg, const uint8_t *p, size_t n);
int sl_mask_stream_new(const struct sl_mask_plan *p, struct sl_mask_scratch *s,
		       sl_mask_emit_fn emit, void *arg, struct sl_mask_stream **out);
int sl_mask_stream_feed(struct sl_mask_stream *ms, const uint8_t *p, size_t n);
/* Flushes everything held back; the stream accepts no more data. */
int sl_mask_stream_end(struct sl_mask_stream *ms);
/* Hits so far: counts per detector, never values. */
const struct sl_mask_stats *sl_mask_stream_stats(const struct sl_mask_stream *ms);
/* Bytes fed but not yet emitted. */
size_t sl_mask_stream_held(const struct sl_mask_stream *ms);
void sl_mask_stream_free(struct sl_mask_stream *ms);
/* Luhn and IBAN mod-97 checks (exposed for tests). */
int sl_mask_luhn(const char *s, size_t n);
int sl_mask_iban_ok(const char *s, size_t n);

#endif
