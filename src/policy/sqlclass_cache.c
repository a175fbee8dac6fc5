/*
 * sqlclass_cache.c - the statement shape (literals folded, a text the lexer
 * cannot vouch for kept exact) and the bounded per-thread classification
 * cache keyed by it.
 */
#include "sluice/sqlclass.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "sluice/core.h"

static int
ident_char(unsigned char ch)
{
	return isalnum(ch) || ch == '_' || ch == '$' || ch >= 0x80;
}

/* Whether the text may call set_config, table_to_xml / schema_to_xml or
 * get_raw_page, whose kinds or tables depend on a literal, or name
 * [default_]transaction_read_only, whose value decides read_write. */
static int
names_literal_dependent(const char *sql, size_t len)
{
	for (const char *p = sql; (p = memchr(p, '_', len - (size_t)(p - sql))) != NULL; p++) {
		if (p >= sql + 3 && sql + len - p >= 7 && strncasecmp(p - 3, "set_config", 10) == 0)
			return 1;
		if (sql + len - p >= 7 && strncasecmp(p, "_to_xml", 7) == 0)
			return 1;
		if (p >= sql + 3 && sql + len - p >= 9 &&
		    strncasecmp(p - 3, "get_raw_page", 12) == 0)
			return 1;
		/* SET [default_]transaction_read_only = 'off' or 0: the
		 * literal decides read_write */
		if (sql + len - p >= 10 && strncasecmp(p, "_read_only", 10) == 0)
			return 1;
	}
	return 0;
}

/* Bytes the shape copies as they are, wherever they stand: none of them
 * starts a literal, comment, quoted name, parameter or number, or ends the
 * fast text (every byte >= 0x80, NUL, '\\' and the rest take the full
 * path below). */
static const uint8_t shape_plain[256] = {
	[' '] = 1, ['\t'] = 1, ['\n'] = 1, ['\r'] = 1, ['\f'] = 1, ['\v'] = 1, ['!'] = 1, ['#'] = 1,
	['%'] = 1, ['&'] = 0,  ['('] = 1,  [')'] = 1,  ['*'] = 1,  ['+'] = 1,  [','] = 1, [':'] = 1,
	[';'] = 1, ['<'] = 1,  ['='] = 1,  ['>'] = 1,  ['?'] = 0,  ['@'] = 1,  ['['] = 1, [']'] = 1,
	['^'] = 1, ['_'] = 1,  ['`'] = 1,  ['{'] = 1,  ['|'] = 1,  ['}'] = 1,  ['~'] = 1, ['A'] = 1,
	['B'] = 1, ['C'] = 1,  ['D'] = 1,  ['E'] = 1,  ['F'] = 1,  ['G'] = 1,  ['H'] = 1, ['I'] = 1,
	['J'] = 1, ['K'] = 1,  ['L'] = 1,  ['M'] = 1,  ['N'] = 1,  ['O'] = 1,  ['P'] = 1, ['Q'] = 1,
	['R'] = 1, ['S'] = 1,  ['T'] = 1,  ['U'] = 1,  ['V'] = 1,  ['W'] = 1,  ['X'] = 1, ['Y'] = 1,
	['Z'] = 1, ['a'] = 1,  ['b'] = 1,  ['c'] = 1,  ['d'] = 1,  ['e'] = 1,  ['f'] = 1, ['g'] = 1,
	['h'] = 1, ['i'] = 1,  ['j'] = 1,  ['k'] = 1,  ['l'] = 1,  ['m'] = 1,  ['n'] = 1, ['o'] = 1,
	['p'] = 1, ['q'] = 1,  ['r'] = 1,  ['s'] = 1,  ['t'] = 1,  ['u'] = 1,  ['v'] = 1, ['w'] = 1,
	['x'] = 1, ['y'] = 1,  ['z'] = 1,
};

/* The shape lexer (shape_into()): sql[i] is read next, o[n] written next.
 * Each shape_* step below copies or folds one token starting at i and
 * returns 0, or -1 when the text is to be kept exact. */
struct shaper {
	const char *sql;
	size_t len, i, n;
	char *o;
	int folded; /* a literal was folded */
};

/* A -- comment, up to its newline. */
static int
shape_line_comment(struct shaper *sh)
{
	const char *sql = sh->sql;
	size_t len = sh->len, i = sh->i, n = sh->n;
	char *o = sh->o;

	while (i < len && sql[i] != '\n') {
		if ((unsigned char)sql[i] >= 0x80 || sql[i] == '\\')
			return -1;
		o[n++] = sql[i++];
	}
	sh->i = i;
	sh->n = n;
	return 0;
}

/* A slash-star comment; a nested or unterminated one is kept exact. */
static int
shape_block_comment(struct shaper *sh)
{
	const char *sql = sh->sql;
	size_t len = sh->len, i = sh->i, n = sh->n;
	char *o = sh->o;

	o[n++] = sql[i++];
	o[n++] = sql[i++];
	for (;;) {
		if (i >= len)
			return -1; /* unterminated */
		if (sql[i] == '/' && i + 1 < len && sql[i + 1] == '*')
			return -1; /* nested */
		if ((unsigned char)sql[i] >= 0x80 || sql[i] == '\\')
			return -1;
		if (sql[i] == '*' && i + 1 < len && sql[i + 1] == '/') {
			o[n++] = sql[i++];
			o[n++] = sql[i++];
			break;
		}
		o[n++] = sql[i++];
	}
	sh->i = i;
	sh->n = n;
	return 0;
}

/* A quoted name. */
static int
shape_quoted_name(struct shaper *sh)
{
	const char *sql = sh->sql;
	size_t len = sh->len, i = sh->i, n = sh->n;
	char *o = sh->o;

	if (n > 0 && o[n - 1] == '&')
		return -1; /* U&"..." may spell any name with escapes */
	o[n++] = sql[i++];
	while (i < len && sql[i] != '"')
		o[n++] = sql[i++];
	if (i >= len)
		return -1;
	o[n++] = sql[i++];
	sh->i = i;
	sh->n = n;
	return 0;
}

/* A '$': $1 parameters are fine; anything else may open a dollar quote. */
static int
shape_dollar(struct shaper *sh)
{
	const char *sql = sh->sql;
	size_t len = sh->len, i = sh->i, n = sh->n;
	char *o = sh->o;

	if (i + 1 < len && isdigit((unsigned char)sql[i + 1]) &&
	    !(n > 0 && ident_char((unsigned char)o[n - 1]))) {
		o[n++] = sql[i++];
		while (i < len && isdigit((unsigned char)sql[i]))
			o[n++] = sql[i++];
		if (i < len && ident_char((unsigned char)sql[i]))
			return -1;
		sh->i = i;
		sh->n = n;
		return 0;
	}
	if (n > 0 && ident_char((unsigned char)o[n - 1])) {
		o[n++] = sql[i++]; /* inside an identifier */
		sh->i = i;
		sh->n = n;
		return 0;
	}
	return -1;
}

/* A plain string literal, folded to "?s". */
static int
shape_string(struct shaper *sh)
{
	const char *sql = sh->sql;
	size_t len = sh->len, i = sh->i, n = sh->n;
	char *o = sh->o;

	if (n > 0 && ident_char((unsigned char)o[n - 1]))
		return -1; /* E'', B'', X'', U&'' ... */
	if (n > 0 && o[n - 1] == '&')
		return -1;
	i++;
	for (;;) {
		if (i >= len || (unsigned char)sql[i] >= 0x80 || sql[i] == '\\')
			return -1;
		if (sql[i] == '\'') {
			if (i + 1 < len && sql[i + 1] == '\'') {
				i += 2;
				continue;
			}
			i++;
			break;
		}
		i++;
	}
	/* 'a' 'b' with a newline between is one literal: keep
	 * the exact text rather than reason about it. */
	if (i < len && (sql[i] == '\'' || sql[i] == '\n' || sql[i] == '\r'))
		return -1;
	o[n++] = '?';
	o[n++] = 's';
	sh->folded = 1;
	sh->i = i;
	sh->n = n;
	return 0;
}

/* A number, folded to "?i" or "?f" (digits inside an identifier or after
 * a dot are copied). */
static int
shape_number(struct shaper *sh)
{
	const char *sql = sh->sql;
	size_t len = sh->len, i = sh->i, n = sh->n;
	char *o = sh->o;

	if (n > 0 && (ident_char((unsigned char)o[n - 1]) || o[n - 1] == '.')) {
		/* Digits inside an identifier (t1) or after a dot. */
		o[n++] = sql[i++];
		sh->i = i;
		sh->n = n;
		return 0;
	}
	size_t start = i;
	int isfloat = 0;

	while (i < len && isdigit((unsigned char)sql[i]))
		i++;
	if (i - start > 9)
		isfloat = 1; /* the lexer makes big integers FCONST */
	if (i < len && sql[i] == '.') {
		isfloat = 1;
		i++;
		while (i < len && isdigit((unsigned char)sql[i]))
			i++;
	}
	if (i < len && (sql[i] == 'e' || sql[i] == 'E')) {
		size_t j = i + 1;

		if (j < len && (sql[j] == '+' || sql[j] == '-'))
			j++;
		if (j >= len || !isdigit((unsigned char)sql[j]))
			return -1;
		i = j;
		isfloat = 1;
		while (i < len && isdigit((unsigned char)sql[i]))
			i++;
	}
	if (i < len && (ident_char((unsigned char)sql[i]) || sql[i] == '.'))
		return -1;
	o[n++] = '?';
	o[n++] = isfloat ? 'f' : 'i';
	sh->folded = 1;
	sh->i = i;
	sh->n = n;
	return 0;
}

/* The shape of sql written to o (room for 2 * len + 1 bytes: '1' becomes
 * '?i'); returns whether a literal was folded. */
static int
shape_into(const char *sql, size_t len, char *o, size_t *outlen)
{
	struct shaper sh = {.sql = sql, .len = len, .i = 0, .n = 0, .o = o, .folded = 0};

	if (memchr(sql, '\0', len) != NULL || names_literal_dependent(sql, len))
		goto exact;
	while (sh.i < len) {
		unsigned char ch = (unsigned char)sql[sh.i];
		int r;

		if (shape_plain[ch]) {
			/* what the last branch below does, a run at a time */
			do
				o[sh.n++] = sql[sh.i++];
			while (sh.i < len && shape_plain[(unsigned char)sql[sh.i]]);
			continue;
		}
		if (ch == '\\' || ch >= 0x80 || ch == '\0')
			goto exact;
		if (ch == '-' && sh.i + 1 < len && sql[sh.i + 1] == '-') {
			r = shape_line_comment(&sh);
		} else if (ch == '/' && sh.i + 1 < len && sql[sh.i + 1] == '*') {
			r = shape_block_comment(&sh);
		} else if (ch == '"') {
			r = shape_quoted_name(&sh);
		} else if (ch == '$') {
			r = shape_dollar(&sh);
		} else if (ch == '\'') {
			r = shape_string(&sh);
		} else if (isdigit(ch) ||
			   (ch == '.' && sh.i + 1 < len && isdigit((unsigned char)sql[sh.i + 1]))) {
			r = shape_number(&sh);
		} else {
			/* "??": a '?' of the text never reads as a folded "?i" */
			if (ch == '?')
				o[sh.n++] = '?';
			o[sh.n++] = (char)ch;
			sh.i++;
			r = 0;
		}
		if (r != 0)
			goto exact;
	}
	o[sh.n] = '\0';
	*outlen = sh.n;
	return sh.folded;
exact:
	memcpy(o, sql, len);
	o[len] = '\0';
	*outlen = len;
	return 0;
}

int
sl_sql_shape(const char *sql, size_t len, char **out, size_t *outlen)
{
	char *o = malloc(2 * len + 1);

	if (o == NULL)
		return SL_ENOMEM;
	*out = o;
	return shape_into(sql, len, o, outlen);
}

struct cache_ent {
	char *key;
	size_t keylen;
	uint64_t hash;
	uint8_t exact;
	struct sl_sql_class cls;
};

struct sl_sql_cache {
	struct cache_ent *slots;
	size_t nslots;
	struct sl_sql_class scratch;
	char *kbuf; /* the shape being looked up (kept: no allocation per lookup) */
	size_t kcap;
};

struct sl_sql_cache *
sl_sql_cache_new(size_t capacity)
{
	struct sl_sql_cache *c = calloc(1, sizeof(*c));

	if (c == NULL)
		return NULL;
	c->nslots = capacity ? capacity : 1024;
	c->slots = calloc(c->nslots, sizeof(*c->slots));
	if (c->slots == NULL) {
		free(c);
		return NULL;
	}
	return c;
}

void
sl_sql_cache_free(struct sl_sql_cache *c)
{
	if (c == NULL)
		return;
	for (size_t i = 0; i < c->nslots; i++) {
		free(c->slots[i].key);
		sl_sql_class_fini(&c->slots[i].cls);
	}
	sl_sql_class_fini(&c->scratch);
	free(c->kbuf);
	free(c->slots);
	free(c);
}

static uint64_t
fnv1a(const char *p, size_t n, int exact)
{
	uint64_t h = exact ? 0xcbf29ce484222325ull : 0x84222325cbf29ce4ull;

	for (size_t i = 0; i < n; i++) {
		h ^= (unsigned char)p[i];
		h *= 0x100000001b3ull;
	}
	return h;
}

int
sl_sql_cache_classify(struct sl_sql_cache *c, const char *sql, size_t len,
		      const struct sl_sql_class **out)
{
	char *key;
	size_t keylen;
	int folded, r;
	uint64_t h;
	struct cache_ent *e;

	if (len > 16384) {
		/* Huge texts are rare and would crowd the cache. */
		sl_sql_class_fini(&c->scratch);
		r = sl_sql_classify(sql, len, &c->scratch);
		*out = &c->scratch;
		return r;
	}
	if (c->kcap < 2 * len + 1) {
		char *k = realloc(c->kbuf, 2 * len + 1);

		if (k == NULL)
			return SL_ENOMEM;
		c->kbuf = k;
		c->kcap = 2 * len + 1;
	}
	folded = shape_into(sql, len, c->kbuf, &keylen);
	h = fnv1a(c->kbuf, keylen, !folded);
	e = &c->slots[h % c->nslots];
	if (e->key != NULL && e->hash == h && e->keylen == keylen && e->exact == !folded &&
	    memcmp(e->key, c->kbuf, keylen) == 0) {
		*out = &e->cls;
		return 0;
	}
	if ((key = malloc(keylen + 1)) == NULL)
		return SL_ENOMEM;
	memcpy(key, c->kbuf, keylen + 1);
	free(e->key);
	sl_sql_class_fini(&e->cls);
	e->key = NULL;
	r = sl_sql_classify(sql, len, &e->cls);
	if (r != 0) {
		free(key);
		return r;
	}
	e->key = key;
	e->keylen = keylen;
	e->hash = h;
	e->exact = (uint8_t)!folded;
	*out = &e->cls;
	return 0;
}
