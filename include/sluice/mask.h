/*
 * mask.h - the masking engine (pure): detectors compiled into one hyperscan
 * database, checksum validation (Luhn, mod-97) and boundary checks in code,
 * length-preserving rewrites, column rules.
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

/* Compiled detectors: immutable, shared by every thread. */
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

/* Masks detector hits in one complete value. Returns an sl_mask_result or a
 * negative error (the caller then drops the value: fail closed). */
int sl_mask_value(const struct sl_mask_plan *p, struct sl_mask_scratch *s, uint8_t *val, size_t len,
		  struct sl_buf *out, struct sl_mask_stats *st);
/* Column rule: returns 1 and the style if name matches the plan's column globs. */
int sl_mask_plan_column(const struct sl_mask_plan *p, const char *colname,
			enum sl_mask_style *style);
/* Masks a whole column value with style (partial keeps the last 4 characters). */
int sl_mask_column(const struct sl_mask_plan *p, enum sl_mask_style style, uint8_t *val, size_t len,
		   struct sl_buf *out);
/* Luhn and IBAN mod-97 checks (exposed for tests). */
int sl_mask_luhn(const char *s, size_t n);
int sl_mask_iban_ok(const char *s, size_t n);

#endif
