/*
 * mask.c - compiled detectors (one hyperscan 5.4 pattern set, compiled in
 * block and in streaming mode), plans, column rules and the block path: a
 * value is scanned once, every report is resolved into spans in detect.c,
 * then the spans are applied in place (partial/full) or the value is
 * rebuilt around hash tokens. Pure: no clocks, sockets or logging.
 */
#include "sluice/mask.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "mask_internal.h"

/* Longest custom match allowed: a stream holds back (max - 1) bytes. */
#define CUSTOM_MAXW 4096

static const char *const builtin_names[SL_DET_BUILTIN] = {
	[SL_DET_SSN] = "ssn",
	[SL_DET_CARD] = "credit_card",
	[SL_DET_EMAIL] = "email",
	[SL_DET_AWS] = "aws_access_key",
	[SL_DET_JWT] = "jwt",
	[SL_DET_PEM] = "private_key",
	[SL_DET_SECRET] = "secret_assignment",
	[SL_DET_IBAN] = "iban",
	[SL_DET_PHONE] = "phone",
};

struct sl_mask_scratch {
	hs_scratch_t *hs;
	struct span *sp; /* block-mode spans, grown on demand */
	size_t spcap;
	struct span *hs_sp; /* hash spans, sorted */
	size_t hs_cap;
	struct sl_mask_cls cls; /* one pass over a value: windows, digit reports */
};

const char *
sl_mask_detector_name(const struct sl_mask_db *db, unsigned id)
{
	return id < db->ndet ? db->names[id] : NULL;
}

int
sl_mask_detector_id(const struct sl_mask_db *db, const char *name)
{
	for (unsigned i = 0; i < db->ndet; i++)
		if (strcmp(db->names[i], name) == 0)
			return (int)i;
	return -1;
}

static int
compile(struct sl_mask_db *db, const char **exprs, const unsigned *flags, unsigned n, unsigned mode,
	hs_database_t **out, char *err, size_t errlen)
{
	hs_compile_error_t *ce = NULL;
	unsigned ids[MAX_PATS];

	for (unsigned i = 0; i < n; i++)
		ids[i] = i;
	if (hs_compile_multi(exprs, flags, ids, n, mode, NULL, out, &ce) == HS_SUCCESS)
		return 0;
	snprintf(err, errlen, "mask pattern %s: %s",
		 ce && ce->expression >= 0 ? db->names[db->pats[ce->expression].det] : "?",
		 ce ? ce->message : "compile error");
	hs_free_compile_error(ce);
	return SL_EINVAL;
}

/* A custom pattern must compile alone, match no empty string and have a
 * bounded length (streams hold back that much). */
static int
check_custom(const struct sl_cfg_pattern *cp, size_t *minw, size_t *maxw, char *err, size_t errlen)
{
	hs_expr_info_t *info = NULL;
	hs_compile_error_t *ce = NULL;

	if (cp->name == NULL || cp->regex == NULL || cp->name[0] == '\0') {
		snprintf(err, errlen, "mask.patterns: name and regex are required");
		return SL_EINVAL;
	}
	if (hs_expression_info(cp->regex, HS_FLAG_SOM_LEFTMOST, &info, &ce) != HS_SUCCESS) {
		snprintf(err, errlen, "mask.patterns %s: %s", cp->name,
			 ce ? ce->message : "bad regex");
		hs_free_compile_error(ce);
		return SL_EINVAL;
	}
	*minw = info->min_width;
	*maxw = info->max_width;
	free(info);
	if (*minw == 0) {
		snprintf(err, errlen, "mask.patterns %s: the regex matches an empty string",
			 cp->name);
		return SL_EINVAL;
	}
	if (*maxw > CUSTOM_MAXW) {
		snprintf(err, errlen,
			 "mask.patterns %s: matches must have a bounded length of at most %d "
			 "bytes (use {m,n} instead of + or *)",
			 cp->name, CUSTOM_MAXW);
		return SL_EINVAL;
	}
	return 0;
}

int
sl_mask_db_new(const struct sl_cfg_mask *cfg, struct sl_mask_db **out, char *err, size_t errlen)
{
	const char *exprs[MAX_PATS];
	unsigned flags[MAX_PATS];
	struct sl_mask_db *db;
	unsigned n = 0, np = 0;
	int r = SL_EINVAL;

	*out = NULL;
	db = calloc(1, sizeof(*db));
	if (db == NULL)
		return SL_ENOMEM;
	db->min_len = (size_t)-1;
	for (unsigned i = 0; i < SL_DET_BUILTIN; i++) {
		if ((db->names[n++] = strdup(builtin_names[i])) == NULL)
			goto nomem;
	}
	for (unsigned i = 0; i < sl_mask__nbuiltin; i++) {
		const struct builtin_pat *b = &sl_mask__builtin[i];

		if (b->minlen < db->min_len)
			db->min_len = b->minlen;
		if (b->re == NULL)
			continue; /* digits.c */
		exprs[np] = b->re;
		flags[np] = b->flags;
		db->pats[np].det = b->det;
		db->pats[np].kind = b->kind;
		np++;
	}
	for (unsigned i = 0; cfg != NULL && i < cfg->patterns_count; i++) {
		const struct sl_cfg_pattern *cp = &cfg->patterns[i];
		size_t minw, maxw;

		if (n >= SL_MASK_MAX_DETECTORS) {
			snprintf(err, errlen, "mask.patterns: at most %d custom patterns",
				 SL_MASK_MAX_DETECTORS - SL_DET_BUILTIN);
			goto out;
		}
		if (check_custom(cp, &minw, &maxw, err, errlen) != 0)
			goto out;
		for (unsigned k = 0; k < n; k++) {
			if (strcmp(db->names[k], cp->name) == 0) {
				snprintf(err, errlen, "mask.patterns: duplicate detector name %s",
					 cp->name);
				goto out;
			}
		}
		if ((db->names[n] = strdup(cp->name)) == NULL)
			goto nomem;
		exprs[np] = cp->regex;
		flags[np] = HS_FLAG_SOM_LEFTMOST;
		db->pats[np].det = (uint8_t)n;
		db->pats[np].kind = K_CUSTOM;
		if (minw < db->min_len)
			db->min_len = minw;
		if (maxw > db->custom_maxw)
			db->custom_maxw = maxw;
		np++;
		n++;
	}
	db->ndet = n;
	db->npat = np;
	if ((r = compile(db, exprs, flags, np, HS_MODE_BLOCK, &db->blk, err, errlen)) != 0 ||
	    (r = compile(db, exprs, flags, np,
			 HS_MODE_STREAM | (db->custom_maxw ? HS_MODE_SOM_HORIZON_SMALL : 0),
			 &db->str, err, errlen)) != 0)
		goto out;
	*out = db;
	return 0;
nomem:
	r = SL_ENOMEM;
	snprintf(err, errlen, "out of memory");
out:
	sl_mask_db_free(db);
	return r;
}

void
sl_mask_db_free(struct sl_mask_db *db)
{
	if (db == NULL)
		return;
	hs_free_database(db->blk);
	hs_free_database(db->str);
	for (unsigned i = 0; i < SL_MASK_MAX_DETECTORS; i++)
		free(db->names[i]);
	free(db);
}

static int
parse_style(const char *s, enum sl_mask_style *out)
{
	if (s == NULL || strcmp(s, "partial") == 0)
		*out = SL_MASK_PARTIAL;
	else if (strcmp(s, "full") == 0)
		*out = SL_MASK_FULL;
	else if (strcmp(s, "null") == 0)
		*out = SL_MASK_NULL;
	else if (strcmp(s, "hash") == 0)
		*out = SL_MASK_HASH;
	else
		return SL_EINVAL;
	return 0;
}

int
sl_mask_plan_new(const struct sl_mask_db *db, const struct sl_cfg_policy_mask *pm,
		 const uint8_t *hash_key, size_t keylen, struct sl_mask_plan **out, char *err,
		 size_t errlen)
{
	struct sl_mask_plan *p = calloc(1, sizeof(*p));

	*out = NULL;
	if (p == NULL)
		return SL_ENOMEM;
	p->db = db;
	if (parse_style(pm->style, &p->def_style) != 0) {
		snprintf(err, errlen, "mask.style: unknown style \"%s\"", pm->style);
		goto fail;
	}
	for (unsigned i = 0; i < SL_MASK_MAX_DETECTORS; i++)
		p->det_style[i] = p->def_style;
	for (unsigned i = 0; i < pm->detectors_count; i++) {
		int id = sl_mask_detector_id(db, pm->detectors[i]);

		if (id < 0) {
			snprintf(err, errlen, "mask.detectors: unknown detector \"%s\"",
				 pm->detectors[i]);
			goto fail;
		}
		p->enabled |= 1u << id;
	}
	p->cols = calloc(pm->columns_count + 1, sizeof(char *));
	p->col_style = calloc(pm->columns_count + 1, sizeof(*p->col_style));
	if (p->cols == NULL || p->col_style == NULL)
		goto fail;
	for (unsigned i = 0; i < pm->columns_count; i++) {
		p->cols[i] = strdup(pm->columns[i]);
		p->col_style[i] = p->def_style;
		p->ncols++;
	}
	for (unsigned i = 0; i < pm->styles_count; i++) {
		const struct sl_cfg_style *st = &pm->styles[i];
		enum sl_mask_style s;

		if (parse_style(st->style, &s) != 0) {
			snprintf(err, errlen, "mask.styles[%u]: unknown style \"%s\"", i,
				 st->style ? st->style : "");
			goto fail;
		}
		if (st->detector) {
			int id = sl_mask_detector_id(db, st->detector);

			if (id < 0) {
				snprintf(err, errlen, "mask.styles[%u]: unknown detector \"%s\"", i,
					 st->detector);
				goto fail;
			}
			p->det_style[id] = s;
		}
		if (st->column) {
			for (size_t c = 0; c < p->ncols; c++)
				if (strcasecmp(p->cols[c], st->column) == 0)
					p->col_style[c] = s;
		}
	}
	if (keylen > sizeof(p->key))
		keylen = sizeof(p->key);
	memcpy(p->key, hash_key, keylen);
	p->keylen = keylen;
	*out = p;
	return 0;
fail:
	sl_mask_plan_free(p);
	return SL_EINVAL;
}

int
sl_mask_plan_all(const struct sl_mask_db *db, const uint8_t *hash_key, size_t keylen,
		 struct sl_mask_plan **out)
{
	struct sl_mask_plan *p = calloc(1, sizeof(*p));

	if (p == NULL)
		return SL_ENOMEM;
	p->db = db;
	p->def_style = SL_MASK_FULL;
	for (unsigned i = 0; i < db->ndet; i++) {
		p->enabled |= 1u << i;
		p->det_style[i] = SL_MASK_FULL;
	}
	if (keylen > sizeof(p->key))
		keylen = sizeof(p->key);
	memcpy(p->key, hash_key, keylen);
	p->keylen = keylen;
	*out = p;
	return 0;
}

void
sl_mask_plan_free(struct sl_mask_plan *p)
{
	if (p == NULL)
		return;
	for (size_t i = 0; i < p->ncols; i++)
		free(p->cols[i]);
	free(p->cols);
	free(p->col_style);
	free(p);
}

int
sl_mask_scratch_new(const struct sl_mask_db *db, struct sl_mask_scratch **out)
{
	struct sl_mask_scratch *s = calloc(1, sizeof(*s));

	*out = NULL;
	if (s == NULL)
		return SL_ENOMEM;
	if (hs_alloc_scratch(db->blk, &s->hs) != HS_SUCCESS ||
	    hs_alloc_scratch(db->str, &s->hs) != HS_SUCCESS) {
		sl_mask_scratch_free(s);
		return SL_ENOMEM;
	}
	*out = s;
	return 0;
}

void
sl_mask_scratch_free(struct sl_mask_scratch *s)
{
	if (s == NULL)
		return;
	hs_free_scratch(s->hs);
	free(s->sp);
	free(s->hs_sp);
	free(s);
}

hs_scratch_t *
sl_mask__hs_scratch(struct sl_mask_scratch *s)
{
	return s->hs;
}

const char *
sl_mask_plan_column_glob(const struct sl_mask_plan *p, size_t i)
{
	return p != NULL && i < p->ncols ? p->cols[i] : NULL;
}

int
sl_mask_plan_column(const struct sl_mask_plan *p, const char *colname, enum sl_mask_style *style)
{
	for (size_t i = 0; p != NULL && i < p->ncols; i++) {
		if (sl_glob_match_ci(p->cols[i], colname)) {
			*style = p->col_style[i];
			return 1;
		}
	}
	return 0;
}

/* ------------------------------------------------------------ block path */

static int
cmp_from(const void *a, const void *b)
{
	const struct span *x = a, *y = b;

	if (x->from != y->from)
		return x->from < y->from ? -1 : 1;
	return x->to < y->to ? -1 : x->to > y->to;
}

/* Rebuilds val into out with every group of overlapping hash spans replaced
 * by one token over the original bytes; the other spans are applied after
 * the tokens were computed. */
static int
rebuild_hashed(const struct sl_mask_plan *p, struct sl_mask_scratch *s, const struct eng *e,
	       uint8_t *val, size_t len, struct sl_buf *out)
{
	struct span *h;
	size_t nh = 0, ng = 0, pos = 0;
	char(*tok)[24];
	int r = SL_MASK_REPLACED;

	if (s->hs_cap < (size_t)e->nhash) {
		struct span *n = realloc(s->hs_sp, (size_t)e->nhash * sizeof(*n));

		if (n == NULL)
			return SL_ENOMEM;
		s->hs_sp = n;
		s->hs_cap = (size_t)e->nhash;
	}
	h = s->hs_sp;
	for (size_t i = 0; i < e->nsp && nh < s->hs_cap; i++)
		if (e->sp[i].style == SL_MASK_HASH)
			h[nh++] = e->sp[i];
	qsort(h, nh, sizeof(*h), cmp_from);
	for (size_t i = 0; i < nh; i++) {
		if (ng > 0 && h[i].from < h[ng - 1].to) {
			if (h[i].to > h[ng - 1].to)
				h[ng - 1].to = h[i].to;
			continue;
		}
		h[ng++] = h[i];
	}
	tok = malloc(ng * sizeof(*tok) + 1);
	if (tok == NULL)
		return SL_ENOMEM;
	for (size_t i = 0; i < ng; i++) {
		if (sl_mask__token(p, val + h[i].from, (size_t)(h[i].to - h[i].from), tok[i]) !=
		    0) {
			r = SL_EIO;
			goto out;
		}
	}
	for (size_t i = 0; i < e->nsp; i++)
		sl_mask__apply(&e->sp[i], val, 0, len);
	for (size_t i = 0; i < ng; i++) {
		if (sl_buf_append(out, val + pos, (size_t)h[i].from - pos) != 0 ||
		    sl_buf_append(out, tok[i], 18) != 0) {
			r = SL_ENOMEM;
			goto out;
		}
		pos = (size_t)h[i].to;
	}
	if (sl_buf_append(out, val + pos, len - pos) != 0)
		r = SL_ENOMEM;
out:
	free(tok);
	return r;
}

/* Values up to this length skip the scans the one pass finds nothing for;
 * longer ones nearly always need both and get both. */
#define PREFILTER_MAX 1024
/* Longer values (and every value once custom patterns exist) are scanned
 * whole; below this a window list is not worth building. */
#define WINDOWS_MIN 256

struct win_ctx {
	struct eng *e;
	uint64_t base;
};

static int
on_window_match(unsigned id, unsigned long long from, unsigned long long to, unsigned flags,
		void *ctx)
{
	struct win_ctx *w = ctx;

	return sl_mask__on_match(id, from + w->base, to + w->base, flags, w->e);
}

/* The regex scan of a value: with built-in patterns only, just the windows
 * c holds around anchor bytes (result text is mostly words, numbers and
 * dates that no built-in regex can match: hyperscan then never sees them);
 * the resolver still sees the whole value. */
static hs_error_t
regex_scan(const struct sl_mask_plan *p, struct sl_mask_scratch *s, struct eng *e,
	   const uint8_t *val, size_t len, int windows)
{
	const struct sl_mask_cls *c = &s->cls;

	if (!windows || c->nw < 0)
		return hs_scan(p->db->blk, (const char *)val, (unsigned)len, 0, s->hs,
			       sl_mask__on_match, e);
	for (int i = 0; i < c->nw; i++) {
		struct win_ctx wc = {e, c->w[i].from};
		hs_error_t r = hs_scan(p->db->blk, (const char *)val + c->w[i].from,
				       c->w[i].to - c->w[i].from, 0, s->hs, on_window_match, &wc);

		if (r != HS_SUCCESS)
			return r;
	}
	return HS_SUCCESS;
}

/* The scans and the resolver for a value the one pass found something in
 * (need: its result). Kept out of sl_mask_value(), so that the common case
 * (nothing found) sets up no resolver state on the stack. */
static __attribute__((noinline)) int
mask_found(const struct sl_mask_plan *p, struct sl_mask_scratch *s, uint8_t *val, size_t len,
	   struct sl_buf *out, struct sl_mask_stats *st, int need, int windows)
{
	struct eng e;
	int r;

	memset(&e, 0, ENG_ZERO);
	e.p = p;
	e.buf = val;
	e.hi = len;
	e.eof = 1;
	e.sp = s->sp;
	e.spcap = s->spcap;
	e.spmax = len / 4 + 64;
	e.growable = 1;
	e.st = st;
	if (!(need & 2)) {
		e.ds_pos = e.hi; /* nothing for the digit scanner */
		e.ds_eof = 1;
	} else if (!s->cls.ev_over) {
		e.ds_ev = s->cls.ev; /* replayed: no second pass over the bytes */
		e.ds_nev = s->cls.nev;
	}
	r = HS_SUCCESS;
	if ((need & 1) && (s->cls.nanc < 0 || sl_mask__scan_anchors(&e, val, len, &s->cls) != 0))
		r = regex_scan(p, s, &e, val, len, windows);
	if (r == HS_SUCCESS)
		sl_mask__finish(&e);
	s->sp = e.sp; /* keep what the resolver grew */
	s->spcap = e.spcap;
	if (r != HS_SUCCESS || e.lost) {
		memset(val, '*', len); /* cannot tell what is in it: fail closed */
		return SL_MASK_IN_PLACE;
	}
	if (e.nsp == 0)
		return SL_MASK_UNCHANGED;
	if (e.need_null)
		return SL_MASK_TO_NULL;
	if (e.nhash > 0)
		return rebuild_hashed(p, s, &e, val, len, out);
	for (size_t i = 0; i < e.nsp; i++)
		sl_mask__apply(&e.sp[i], val, 0, len);
	return SL_MASK_IN_PLACE;
}

int
sl_mask_value(const struct sl_mask_plan *p, struct sl_mask_scratch *s, uint8_t *val, size_t len,
	      struct sl_buf *out, struct sl_mask_stats *st)
{
	int need, windows, mode;

	if (p == NULL || p->enabled == 0 || len < p->db->min_len)
		return SL_MASK_UNCHANGED;
	if (len > 0xffffffffu)
		return SL_ETOOBIG;
	/* One SIMD pass over the bytes finds the anchors every built-in regex
	 * needs and what the digit scanner would report. Most result values
	 * are short and hold neither: both scans are skipped. */
	windows = p->db->custom_maxw == 0 && len >= WINDOWS_MIN;
	mode = p->db->custom_maxw != 0 ? SL_MASK_CLS_ALWAYS
	       : windows	       ? SL_MASK_CLS_WINDOWS
				       : SL_MASK_CLS_ANY;
	need = sl_mask__classify(val, len, mode, &s->cls);
	if (len > PREFILTER_MAX)
		need = 3;
	if (need == 0)
		return SL_MASK_UNCHANGED;
	return mask_found(p, s, val, len, out, st, need, windows);
}

int
sl_mask_column(const struct sl_mask_plan *p, enum sl_mask_style style, uint8_t *val, size_t len,
	       struct sl_buf *out)
{
	char tok[24];

	switch (style) {
	case SL_MASK_PARTIAL: {
		/* Keep the format (separators, '@', '.') and the last 4 letters
		 * or digits of values that have more than 8; star the rest. */
		size_t alnum = 0, seen = 0;

		for (size_t i = 0; i < len; i++)
			alnum += isalnum(val[i]) != 0;
		for (size_t i = len; i-- > 0;) {
			if (!isalnum(val[i]))
				continue;
			if (alnum <= 8 || seen++ >= 4)
				val[i] = '*';
		}
		return SL_MASK_IN_PLACE;
	}
	case SL_MASK_FULL:
		memset(val, '*', len);
		return SL_MASK_IN_PLACE;
	case SL_MASK_NULL:
		return SL_MASK_TO_NULL;
	case SL_MASK_HASH:
		if (sl_mask__token(p, val, len, tok) != 0 || sl_buf_append(out, tok, 18) != 0)
			return SL_ENOMEM;
		return SL_MASK_REPLACED;
	}
	return SL_EINVAL;
}

/* ------------------------------------------------------------ typed columns */

/* PostgreSQL type OIDs (pg_type.dat); stable across versions. */
enum {
	OID_BOOL = 16,
	OID_BYTEA = 17,
	OID_CHAR = 18,
	OID_NAME = 19,
	OID_INT8 = 20,
	OID_INT2 = 21,
	OID_INT4 = 23,
	OID_TEXT = 25,
	OID_OID = 26,
	OID_JSON = 114,
	OID_XML = 142,
	OID_FLOAT4 = 700,
	OID_FLOAT8 = 701,
	OID_MONEY = 790,
	OID_BPCHAR = 1042,
	OID_VARCHAR = 1043,
	OID_DATE = 1082,
	OID_TIME = 1083,
	OID_TIMESTAMP = 1114,
	OID_TIMESTAMPTZ = 1184,
	OID_NUMERIC = 1700,
	OID_UUID = 2950,
	OID_JSONB = 3802,
};

int
sl_mask_pg_textlike(uint32_t oid)
{
	switch (oid) {
	case OID_TEXT:
	case OID_VARCHAR:
	case OID_BPCHAR:
	case OID_NAME:
	case OID_CHAR:
	case OID_JSON:
	case OID_JSONB: /* text format only: binary jsonb has a version byte */
	case OID_XML:
		return 1;
	}
	return 0;
}

/* A type's zero value: text form, and the length of its fixed-width binary
 * form (0: variable), whose all-zero encoding is a valid value. */
static int
zero_value(uint32_t oid, const char **text, size_t *fixed)
{
	*fixed = 0;
	switch (oid) {
	case OID_BOOL:
		*text = "f";
		*fixed = 1;
		return 1;
	case OID_INT2:
		*text = "0";
		*fixed = 2;
		return 1;
	case OID_INT4:
	case OID_OID:
	case OID_FLOAT4:
		*text = "0";
		*fixed = 4;
		return 1;
	case OID_DATE:
		*text = "2000-01-01"; /* binary 0 is 2000-01-01 too */
		*fixed = 4;
		return 1;
	case OID_INT8:
	case OID_FLOAT8:
		*text = "0";
		*fixed = 8;
		return 1;
	case OID_MONEY:
		*text = "0.00";
		*fixed = 8;
		return 1;
	case OID_TIME:
		*text = "00:00:00";
		*fixed = 8;
		return 1;
	case OID_TIMESTAMP:
		*text = "2000-01-01 00:00:00";
		*fixed = 8;
		return 1;
	case OID_TIMESTAMPTZ:
		*text = "2000-01-01 00:00:00+00";
		*fixed = 8;
		return 1;
	case OID_UUID:
		*text = "00000000-0000-0000-0000-000000000000";
		*fixed = 16;
		return 1;
	case OID_NUMERIC:
		*text = "0"; /* binary: ndigits, weight, sign, dscale all 0 */
		return 1;
	}
	return 0;
}

int
sl_mask_column_typed(const struct sl_mask_plan *p, enum sl_mask_style style, uint32_t oid,
		     int binary, uint8_t *val, size_t len, struct sl_buf *out)
{
	static const uint8_t numeric_zero[8];
	const char *text;
	size_t fixed;

	if (sl_mask_pg_textlike(oid) && !binary)
		return sl_mask_column(p, style, val, len, out);
	if (style == SL_MASK_NULL || !zero_value(oid, &text, &fixed))
		return SL_MASK_TO_NULL;
	if (!binary)
		return sl_buf_append(out, text, strlen(text)) != 0 ? SL_ENOMEM : SL_MASK_REPLACED;
	if (fixed != 0 && len == fixed) {
		memset(val, 0, len);
		return SL_MASK_IN_PLACE;
	}
	if (oid == OID_NUMERIC)
		return sl_buf_append(out, numeric_zero, sizeof(numeric_zero)) != 0
			       ? SL_ENOMEM
			       : SL_MASK_REPLACED;
	return SL_MASK_TO_NULL;
}
