/*
 * mask.c - detectors in one hyperscan (5.4) block-mode database with
 * leftmost start-of-match; validation (boundaries, Luhn, mod-97, SSN
 * ranges) and rewrites in code. Pure: no clocks, sockets or logging.
 *
 * A value is scanned once; candidates are validated, the longest valid match
 * per start wins, overlapping matches are merged, then rewritten in place
 * (partial/full keep the length) or into an output buffer (hash), or the
 * whole value becomes NULL (null).
 */
#include "sluice/mask.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <hs/hs.h>
#include <openssl/hmac.h>

#define MAX_CAND 4096

struct det {
	const char *name;
	const char *re;
	unsigned flags;
};

/* Hyperscan has no lookaround: boundaries and checksums are checked in code. */
static const struct det builtin[SL_DET_BUILTIN] = {
	/* ssn, credit_card, iban and phone: digit scanner in code (numbers are
	 * everywhere in result data; a regex engine pays for every digit) */
	[SL_DET_SSN] = {"ssn", NULL, 0},
	[SL_DET_CARD] = {"credit_card", NULL, 0},
	/* anchored on '@'; the local part is extended backwards in code */
	[SL_DET_EMAIL] = {"email", "@[A-Za-z0-9\\-]+(?:\\.[A-Za-z0-9\\-]+)*\\.[A-Za-z]{2,24}", 0},
	[SL_DET_AWS] = {"aws_access_key", "(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA)[A-Z0-9]{16}", 0},
	[SL_DET_JWT] = {"jwt",
			"eyJ[A-Za-z0-9_\\-]{4,}\\.eyJ[A-Za-z0-9_\\-]{4,}\\.[A-Za-z0-9_\\-]{8,}", 0},
	[SL_DET_PEM] = {"private_key", "-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY-----", 0},
	[SL_DET_SECRET] =
		{"secret_assignment",
		 "(?:pass(?:word|wd)?|pwd|secret|api[_\\-]?key|access[_\\-]?key|"
		 "(?:auth|access|api|refresh)[_\\-]?token|token)[\"']?\\s*[:=]\\s*"
		 "[\"']?[^\\s\"',;&]{3,}|authorization:\\s*bearer\\s+[A-Za-z0-9._~+/=\\-]{8,}",
		 HS_FLAG_CASELESS},
	[SL_DET_IBAN] = {"iban", NULL, 0},
	[SL_DET_PHONE] = {"phone", NULL, 0},
};

struct sl_mask_db {
	hs_database_t *hs;	  /* built-in detectors, no start-of-match tracking (fast) */
	hs_database_t *hs_custom; /* custom patterns, leftmost start of match; may be NULL */
	unsigned ndet;
	char *names[SL_MASK_MAX_DETECTORS];
};

struct sl_mask_plan {
	const struct sl_mask_db *db;
	uint32_t enabled; /* detector bits */
	enum sl_mask_style det_style[SL_MASK_MAX_DETECTORS];
	enum sl_mask_style def_style;
	char **cols;
	enum sl_mask_style *col_style;
	size_t ncols;
	uint8_t key[32];
	size_t keylen;
};

struct cand {
	uint32_t id;
	uint32_t from, to;
};

struct sl_mask_scratch {
	hs_scratch_t *hs;
	struct cand *c;
	size_t n;
	int overflow;
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

int
sl_mask_db_new(const struct sl_cfg_mask *cfg, struct sl_mask_db **out, char *err, size_t errlen)
{
	const char *exprs[SL_MASK_MAX_DETECTORS];
	unsigned flags[SL_MASK_MAX_DETECTORS], ids[SL_MASK_MAX_DETECTORS];
	struct sl_mask_db *db;
	hs_compile_error_t *ce = NULL;
	unsigned n = 0;

	*out = NULL;
	db = calloc(1, sizeof(*db));
	if (db == NULL)
		return SL_ENOMEM;
	unsigned nre = 0, nc = 0;
	const char *cexprs[SL_MASK_MAX_DETECTORS];
	unsigned cflags[SL_MASK_MAX_DETECTORS], cids[SL_MASK_MAX_DETECTORS];

	/* Built-ins without SOM: their starts are recovered in code from the
	 * match end (SOM tracking made the scan ~4x slower). */
	for (unsigned i = 0; i < SL_DET_BUILTIN; i++) {
		db->names[n] = strdup(builtin[i].name);
		if (builtin[i].re != NULL) {
			exprs[nre] = builtin[i].re;
			flags[nre] = builtin[i].flags;
			ids[nre] = n;
			nre++;
		}
		n++;
	}
	for (unsigned i = 0; cfg != NULL && i < cfg->patterns_count; i++) {
		if (n >= SL_MASK_MAX_DETECTORS) {
			snprintf(err, errlen, "mask.patterns: at most %d custom patterns",
				 SL_MASK_MAX_DETECTORS - SL_DET_BUILTIN);
			goto fail;
		}
		cexprs[nc] = cfg->patterns[i].regex;
		cflags[nc] = HS_FLAG_SOM_LEFTMOST;
		cids[nc] = n;
		nc++;
		db->names[n] = strdup(cfg->patterns[i].name);
		n++;
	}
	db->ndet = n;
	if (hs_compile_multi(exprs, flags, ids, nre, HS_MODE_BLOCK, NULL, &db->hs, &ce) !=
	    HS_SUCCESS) {
		snprintf(err, errlen, "mask pattern %s: %s",
			 ce && ce->expression >= 0 ? db->names[ids[ce->expression]] : "?",
			 ce ? ce->message : "compile error");
		hs_free_compile_error(ce);
		goto fail;
	}
	if (nc > 0 && hs_compile_multi(cexprs, cflags, cids, nc, HS_MODE_BLOCK, NULL,
				       &db->hs_custom, &ce) != HS_SUCCESS) {
		snprintf(err, errlen, "mask.patterns %s: %s",
			 ce && ce->expression >= 0 ? db->names[cids[ce->expression]] : "?",
			 ce ? ce->message : "compile error");
		hs_free_compile_error(ce);
		goto fail;
	}
	*out = db;
	return 0;
fail:
	sl_mask_db_free(db);
	return SL_EINVAL;
}

void
sl_mask_db_free(struct sl_mask_db *db)
{
	if (db == NULL)
		return;
	hs_free_database(db->hs);
	hs_free_database(db->hs_custom);
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

	if (s == NULL)
		return SL_ENOMEM;
	s->c = calloc(MAX_CAND, sizeof(*s->c));
	if (s->c == NULL || hs_alloc_scratch(db->hs, &s->hs) != HS_SUCCESS ||
	    (db->hs_custom != NULL && hs_alloc_scratch(db->hs_custom, &s->hs) != HS_SUCCESS)) {
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
	free(s->c);
	free(s);
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

/* ------------------------------------------------------------ checks */

int
sl_mask_luhn(const char *s, size_t n)
{
	int sum = 0, dbl = 0, digits = 0;

	for (size_t i = n; i-- > 0;) {
		int d;

		if (s[i] == ' ' || s[i] == '-')
			continue;
		if (!isdigit((unsigned char)s[i]))
			return 0;
		d = s[i] - '0';
		if (dbl) {
			d *= 2;
			if (d > 9)
				d -= 9;
		}
		sum += d;
		dbl = !dbl;
		digits++;
	}
	return digits >= 13 && digits <= 19 && sum % 10 == 0;
}

int
sl_mask_iban_ok(const char *s, size_t n)
{
	char buf[40];
	size_t m = 0;
	unsigned rem = 0;

	for (size_t i = 0; i < n; i++) {
		if (s[i] == ' ')
			continue;
		if (m >= sizeof(buf))
			return 0;
		buf[m++] = s[i];
	}
	if (m < 15 || m > 34)
		return 0;
	/* Move the first four characters to the end, letters to 10..35. */
	for (size_t k = 0; k < m; k++) {
		char c = buf[(k + 4) % m];

		if (isdigit((unsigned char)c))
			rem = (rem * 10 + (unsigned)(c - '0')) % 97;
		else if (c >= 'A' && c <= 'Z')
			rem = (rem * 100 + (unsigned)(c - 'A' + 10)) % 97;
		else
			return 0;
	}
	return rem == 1;
}

static int
alnum_at(const uint8_t *v, size_t len, size_t i)
{
	return i < len && isalnum(v[i]);
}

static int
digit_at(const uint8_t *v, size_t len, size_t i)
{
	return i < len && isdigit(v[i]);
}

/* Validates a candidate; may move its end (secret values, PEM blocks).
 * Returns 1 if it is a real hit. */
static int
validate(const uint8_t *v, size_t len, struct cand *c)
{
	const char *m = (const char *)v + c->from;
	size_t n = c->to - c->from;
	size_t before = c->from ? c->from - 1 : (size_t)-1;

	switch (c->id) {
	case SL_DET_SSN: {
		int area = (m[0] - '0') * 100 + (m[1] - '0') * 10 + (m[2] - '0');

		if (area == 0 || area == 666 || area >= 900 || (m[4] == '0' && m[5] == '0') ||
		    memcmp(m + 7, "0000", 4) == 0)
			return 0;
		return 1;
		if ((c->from &&
		     (alnum_at(v, len, before) || ((v[before] == '-' || v[before] == ' ') &&
						   before && digit_at(v, len, before - 1)))) ||
		    alnum_at(v, len, c->to) ||
		    ((c->to < len && (v[c->to] == '-')) && digit_at(v, len, c->to + 1)))
			return 0;
		return 1;
	}
	case SL_DET_CARD: {
		char sep = 0;

		for (size_t i = 0; i < n; i++) {
			if (m[i] == ' ' || m[i] == '-') {
				if (sep && sep != m[i])
					return 0;
				sep = m[i];
			}
		}
		if ((c->from &&
		     (alnum_at(v, len, before) || ((v[before] == '-' || v[before] == ' ') &&
						   before && digit_at(v, len, before - 1)))) ||
		    alnum_at(v, len, c->to) ||
		    ((c->to + 1 < len) && (v[c->to] == '-' || v[c->to] == ' ') &&
		     digit_at(v, len, c->to + 1) && sep))
			return 0;
		return sl_mask_luhn(m, n);
	}
	case SL_DET_EMAIL: {
		/* The match starts at its '@'; extend over the local part (at
		 * least one character). */
		const uint8_t *at = memrchr(v, '@', c->to);
		size_t st;

		if (at == NULL)
			return 0;
		c->from = (uint32_t)(at - v);
		st = c->from;

		while (st > 0 && (isalnum(v[st - 1]) || strchr("._%+-'", v[st - 1]) != NULL))
			st--;
		while (st < c->from && (v[st] == '.' || v[st] == '\''))
			st++;
		if (st == c->from)
			return 0;
		c->from = (uint32_t)st;
		return !alnum_at(v, len, c->to);
	}
	case SL_DET_AWS:
		if (c->to < 20)
			return 0;
		c->from = c->to - 20;
		before = c->from ? c->from - 1 : (size_t)-1;
		if ((c->from && alnum_at(v, len, before)) || alnum_at(v, len, c->to))
			return 0;
		return 1;
	case SL_DET_JWT: {
		/* Walk back over the token's characters to its "eyJ". */
		size_t st = c->to;
		const uint8_t *h;

		while (st > 0 && (isalnum(v[st - 1]) || v[st - 1] == '_' || v[st - 1] == '-' ||
				  v[st - 1] == '.'))
			st--;
		h = memmem(v + st, c->to - st, "eyJ", 3);
		if (h == NULL)
			return 0;
		c->from = (uint32_t)(h - v);
		return !(c->to < len && (isalnum(v[c->to]) || v[c->to] == '_' || v[c->to] == '-'));
	}
	case SL_DET_PHONE:
	case SL_DET_IBAN:
		if ((c->from && alnum_at(v, len, before)) || alnum_at(v, len, c->to))
			return 0;
		if (c->id == SL_DET_IBAN)
			return sl_mask_iban_ok(m, n);
		return 1;
	case SL_DET_PEM: {
		/* Mask from BEGIN to the end of the matching END line; with no
		 * END in the value, to the end of the value (fail closed). */
		const uint8_t *e;
		size_t lo = c->to > 80 ? c->to - 80 : 0, b = c->to;

		while (b > lo && !(b - lo >= 11 && memcmp(v + b - 11, "-----BEGIN ", 11) == 0))
			b--;
		if (b <= lo)
			return 0;
		c->from = (uint32_t)(b - 11);
		e = memmem(v + c->to, len - c->to, "-----END ", 9);

		if (e == NULL) {
			c->to = (uint32_t)len;
		} else {
			const uint8_t *t = memmem(e + 9, len - (size_t)(e + 9 - v), "-----", 5);

			c->to = t ? (uint32_t)(t + 5 - v) : (uint32_t)len;
		}
		return 1;
	}
	case SL_DET_SECRET: {
		/* Keep the key, mask the value. The match ends inside the value;
		 * walk back over value characters, then decide where the value
		 * starts: right there after "[:=] " or "bearer ", else after the
		 * first ':' or '=' (keys never contain one). */
		size_t t = c->to, k, q;

		while (t > 0 && !isspace(v[t - 1]) && strchr("\"',;&", v[t - 1]) == NULL)
			t--;
		q = t;
		while (q > 0 && (isspace(v[q - 1]) || v[q - 1] == '"' || v[q - 1] == '\''))
			q--;
		if ((q > 0 && (v[q - 1] == ':' || v[q - 1] == '=')) ||
		    (q >= 6 && strncasecmp((const char *)v + q - 6, "bearer", 6) == 0)) {
			c->from = (uint32_t)t;
			return c->to > c->from;
		}
		for (k = t; k < c->to && v[k] != ':' && v[k] != '='; k++)
			;
		if (k >= c->to)
			return 0;
		k++;
		while (k < c->to && (isspace(v[k]) || v[k] == '"' || v[k] == '\''))
			k++;
		if (k >= c->to)
			return 0;
		c->from = (uint32_t)k;
		return 1;
	}
	default:
		return 1;
	}
}

/* ------------------------------------------------------------ digit scanner */

/* The scanner looks at every byte: plain comparisons, not <ctype.h> calls. */
#define DIG(c)	 ((unsigned)((c) - '0') < 10u)
#define UPPER(c) ((unsigned)((c) - 'A') < 26u)
#define ALPHA(c) (UPPER(c) || (unsigned)((c) - 'a') < 26u)
#define ALNUM(c) (DIG(c) || ALPHA(c))

static void
add_cand(struct sl_mask_scratch *s, uint32_t id, size_t from, size_t to)
{
	if (s->n >= MAX_CAND) {
		s->overflow = 1;
		return;
	}
	s->c[s->n].id = id;
	s->c[s->n].from = (uint32_t)from;
	s->c[s->n].to = (uint32_t)to;
	s->n++;
}

#define MAX_GROUPS 24

/* Finds SSNs, card numbers, E.164 phone numbers and IBANs. A token is a run
 * of digit groups joined by single '-' or ' '; SSNs and cards are looked
 * for among its consecutive groups, with the same separator throughout and a
 * different one (or none) at both ends, so a value inside a longer number is
 * never taken. */
static void
scan_digits(const struct sl_mask_plan *p, struct sl_mask_scratch *s, const uint8_t *v, size_t len)
{
	int want_ssn = p->enabled & (1u << SL_DET_SSN),
	    want_card = p->enabled & (1u << SL_DET_CARD);
	int want_phone = p->enabled & (1u << SL_DET_PHONE),
	    want_iban = p->enabled & (1u << SL_DET_IBAN);
	size_t i = 0;

	while (i < len) {
		uint8_t c = v[i];

		/* skip what cannot start anything */
		if (!DIG(c) && c != '+' && !(want_iban && UPPER(c))) {
			i++;
			continue;
		}

		if (want_iban && c >= 'A' && c <= 'Z' && i + 4 < len && v[i + 1] >= 'A' &&
		    v[i + 1] <= 'Z' && DIG(v[i + 2]) && DIG(v[i + 3]) &&
		    (i == 0 || !ALNUM(v[i - 1]))) {
			/* [A-Z]{2}\d{2} then [A-Z0-9] with optional single spaces */
			size_t j = i + 4, chars = 4, best = 0;

			while (j < len && chars < 34) {
				if (UPPER(v[j]) || DIG(v[j])) {
					j++;
					chars++;
					if (chars >= 15 && (j >= len || !ALNUM(v[j])) &&
					    sl_mask_iban_ok((const char *)v + i, j - i))
						best = j;
				} else if (v[j] == ' ' && j + 1 < len &&
					   (UPPER(v[j + 1]) || DIG(v[j + 1]))) {
					j++;
				} else {
					break;
				}
			}
			if (best) {
				add_cand(s, SL_DET_IBAN, i, best);
				i = best;
				continue;
			}
		}
		if (c == '+' && want_phone && i + 1 < len && v[i + 1] >= '1' && v[i + 1] <= '9' &&
		    (i == 0 || !ALNUM(v[i - 1]))) {
			size_t j = i + 1;

			while (j < len && DIG(v[j]))
				j++;
			if (j - i - 1 >= 7 && j - i - 1 <= 15 && (j >= len || !ALNUM(v[j])))
				add_cand(s, SL_DET_PHONE, i, j);
			i = j;
			continue;
		}
		if (!DIG(c) || (i > 0 && ALNUM(v[i - 1]))) {
			i++;
			continue;
		}
		{
			size_t gs[MAX_GROUPS], ge[MAX_GROUPS];
			uint8_t sep[MAX_GROUPS]; /* separator after group g */
			size_t ng = 0, j = i;

			for (;;) {
				size_t st = j;

				while (j < len && DIG(v[j]))
					j++;
				if (ng < MAX_GROUPS) {
					gs[ng] = st;
					ge[ng] = j;
					sep[ng] = 0;
					ng++;
				}
				if (j + 1 < len && (v[j] == '-' || v[j] == ' ') && DIG(v[j + 1]) &&
				    ng < MAX_GROUPS) {
					sep[ng - 1] = v[j];
					j++;
					continue;
				}
				break;
			}
			if (j < len && ALPHA(v[j])) {
				/* digits glued to letters: an identifier, not a number */
				i = j;
				continue;
			}
			for (size_t a = 0; a < ng; a++) {
				uint8_t before = a > 0 ? sep[a - 1] : 0;
				size_t digits = 0;

				/* SSN: groups 3-2-4 with one separator */
				if (want_ssn && a + 2 < ng && ge[a] - gs[a] == 3 &&
				    ge[a + 1] - gs[a + 1] == 2 && ge[a + 2] - gs[a + 2] == 4 &&
				    sep[a] && sep[a] == sep[a + 1] && before != sep[a] &&
				    sep[a + 2] != sep[a])
					add_cand(s, SL_DET_SSN, gs[a], ge[a + 2]);
				if (!want_card)
					continue;
				/* cards: consecutive groups, one separator, 13-19 digits */
				for (size_t b = a; b < ng; b++) {
					digits += ge[b] - gs[b];
					if (digits > 19)
						break;
					if (b > a && sep[b - 1] != sep[a])
						break;
					if (digits >= 13 &&
					    (a == 0 ||
					     sep[a - 1] != (b > a ? sep[a] : sep[a - 1] + 1)) &&
					    (sep[b] == 0 || b == a || sep[b] != sep[a]) &&
					    (b > a || (a == 0 || before == 0)) &&
					    sl_mask_luhn((const char *)v + gs[a], ge[b] - gs[a]))
						add_cand(s, SL_DET_CARD, gs[a], ge[b]);
				}
			}
			i = j;
		}
	}
}

static int
on_match(unsigned id, unsigned long long from, unsigned long long to, unsigned flags, void *ctx)
{
	struct sl_mask_scratch *s = ctx;

	if (s->n >= MAX_CAND) {
		s->overflow = 1;
		return 1; /* stop scanning: the caller masks the whole value */
	}
	s->c[s->n].id = id;
	s->c[s->n].from = (uint32_t)from;
	s->c[s->n].to = (uint32_t)to;
	s->n++;
	return 0;
}

static int
cmp_cand(const void *a, const void *b)
{
	const struct cand *x = a, *y = b;

	if (x->from != y->from)
		return x->from < y->from ? -1 : 1;
	if (x->to != y->to)
		return x->to > y->to ? -1 : 1; /* longest first */
	return (int)x->id - (int)y->id;
}

static void
star(uint8_t *p, size_t n)
{
	memset(p, '*', n);
}

/* Length-preserving partial style for one detector hit. */
static void
partial(unsigned id, uint8_t *p, size_t n)
{
	size_t keep = 0, seen = 0;

	switch (id) {
	case SL_DET_SSN:
	case SL_DET_CARD:
	case SL_DET_PHONE:
		/* keep separators and the last 4 digits */
		for (size_t i = n; i-- > 0;) {
			if (isdigit(p[i])) {
				if (seen++ >= 4)
					p[i] = '*';
			}
		}
		if (id == SL_DET_PHONE)
			return;
		return;
	case SL_DET_EMAIL: {
		uint8_t *at = memchr(p, '@', n);

		if (at == NULL) {
			star(p, n);
			return;
		}
		if (at - p > 1)
			star(p + 1, (size_t)(at - p - 1));
		else
			p[0] = '*';
		return;
	}
	case SL_DET_IBAN:
		keep = 4;
		for (size_t i = 2; i + keep < n; i++)
			if (p[i] != ' ')
				p[i] = '*';
		return;
	default:
		/* secrets and custom patterns reveal nothing */
		star(p, n);
		return;
	}
}

static int
hash_token(const struct sl_mask_plan *p, const uint8_t *v, size_t n, char out[24])
{
	uint8_t mac[32];
	unsigned int ml = sizeof(mac);

	if (HMAC(EVP_sha256(), p->key, (int)p->keylen, v, n, mac, &ml) == NULL)
		return SL_EIO;
	memcpy(out, "h:", 2);
	sl_hex(mac, 8, out + 2);
	return 0;
}

/* Literal prefilter: every built-in regex detector needs one of these bytes
 * or strings, and memchr/memmem run at memory speed; most result values
 * contain none and skip the regex scan. */
static int
regex_needed(const struct sl_mask_plan *p, const uint8_t *v, size_t len)
{
	uint32_t want = p->enabled;

	if ((want & (1u << SL_DET_EMAIL)) && memchr(v, '@', len))
		return 1;
	if ((want & (1u << SL_DET_SECRET)) && (memchr(v, '=', len) || memchr(v, ':', len)))
		return 1;
	if ((want & (1u << SL_DET_JWT)) && memmem(v, len, "eyJ", 3))
		return 1;
	if ((want & (1u << SL_DET_PEM)) && memmem(v, len, "-----BEGIN ", 11))
		return 1;
	if (want & (1u << SL_DET_AWS)) {
		static const char *const pre[] = {"AKIA", "ASIA", "AGPA", "AIDA", "AROA", "ANPA"};
		const uint8_t *a = v, *end = v + len;

		/* every prefix starts with 'A' */
		while ((a = memchr(a, 'A', (size_t)(end - a))) != NULL && end - a >= 4) {
			for (size_t i = 0; i < sizeof(pre) / sizeof(pre[0]); i++)
				if (memcmp(a, pre[i], 4) == 0)
					return 1;
			a++;
		}
	}
	return 0;
}

int
sl_mask_value(const struct sl_mask_plan *p, struct sl_mask_scratch *s, uint8_t *val, size_t len,
	      struct sl_buf *out, struct sl_mask_stats *st)
{
	size_t w = 0;
	int changed = 0, tonull = 0, rehash = 0;

	if (p == NULL || p->enabled == 0 || len == 0)
		return SL_MASK_UNCHANGED;
	if (len > 0xffffffffu)
		return SL_ETOOBIG;
	s->n = 0;
	s->overflow = 0;
	if (regex_needed(p, val, len) &&
	    hs_scan(p->db->hs, (const char *)val, (unsigned)len, 0, s->hs, on_match, s) !=
		    HS_SUCCESS &&
	    !s->overflow)
		return SL_EIO;
	if (p->db->hs_custom != NULL && !s->overflow &&
	    hs_scan(p->db->hs_custom, (const char *)val, (unsigned)len, 0, s->hs, on_match, s) !=
		    HS_SUCCESS &&
	    !s->overflow)
		return SL_EIO;
	if (!s->overflow)
		scan_digits(p, s, val, len);
	if (s->overflow) {
		/* Too many candidates to reason about: mask it all. */
		star(val, len);
		return SL_MASK_IN_PLACE;
	}
	if (s->n == 0)
		return SL_MASK_UNCHANGED;
	/* Keep enabled, valid candidates; longest per start. */
	for (size_t i = 0; i < s->n; i++) {
		struct cand c = s->c[i];

		if (!(p->enabled & (1u << c.id)) || !validate(val, len, &c))
			continue;
		s->c[w++] = c;
	}
	s->n = w;
	if (w == 0)
		return SL_MASK_UNCHANGED;
	qsort(s->c, s->n, sizeof(*s->c), cmp_cand);
	/* Merge overlaps: a span absorbs every candidate starting inside it. */
	w = 0;
	for (size_t i = 0; i < s->n; i++) {
		if (w > 0 && s->c[i].from < s->c[w - 1].to) {
			if (s->c[i].to > s->c[w - 1].to)
				s->c[w - 1].to = s->c[i].to;
			if (s->c[i].id != s->c[w - 1].id)
				s->c[w - 1].id = 0xffffffffu; /* mixed: full */
			continue;
		}
		s->c[w++] = s->c[i];
	}
	s->n = w;
	for (size_t i = 0; i < s->n; i++) {
		struct cand *c = &s->c[i];
		enum sl_mask_style style =
			c->id < SL_MASK_MAX_DETECTORS ? p->det_style[c->id] : SL_MASK_FULL;

		if (st && c->id < SL_MASK_MAX_DETECTORS)
			st->hits[c->id]++;
		changed = 1;
		switch (style) {
		case SL_MASK_PARTIAL:
			partial(c->id, val + c->from, c->to - c->from);
			break;
		case SL_MASK_FULL:
			star(val + c->from, c->to - c->from);
			break;
		case SL_MASK_NULL:
			tonull = 1;
			break;
		case SL_MASK_HASH:
			rehash = 1;
			break;
		}
	}
	if (tonull)
		return SL_MASK_TO_NULL;
	if (!rehash)
		return changed ? SL_MASK_IN_PLACE : SL_MASK_UNCHANGED;
	/* Hash style changes the length: rebuild into out. */
	{
		size_t pos = 0;

		for (size_t i = 0; i < s->n; i++) {
			struct cand *c = &s->c[i];
			enum sl_mask_style style =
				c->id < SL_MASK_MAX_DETECTORS ? p->det_style[c->id] : SL_MASK_FULL;
			char tok[24];

			if (sl_buf_append(out, val + pos, c->from - pos) != 0)
				return SL_ENOMEM;
			if (style == SL_MASK_HASH) {
				if (hash_token(p, val + c->from, c->to - c->from, tok) != 0 ||
				    sl_buf_append(out, tok, 18) != 0)
					return SL_ENOMEM;
			} else if (sl_buf_append(out, val + c->from, c->to - c->from) != 0) {
				return SL_ENOMEM;
			}
			pos = c->to;
		}
		if (sl_buf_append(out, val + pos, len - pos) != 0)
			return SL_ENOMEM;
	}
	return SL_MASK_REPLACED;
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
		star(val, len);
		return SL_MASK_IN_PLACE;
	case SL_MASK_NULL:
		return SL_MASK_TO_NULL;
	case SL_MASK_HASH:
		if (hash_token(p, val, len, tok) != 0 || sl_buf_append(out, tok, 18) != 0)
			return SL_ENOMEM;
		return SL_MASK_REPLACED;
	}
	return SL_EINVAL;
}
