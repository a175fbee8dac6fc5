/*
 * sqlclass_redact.c - secrets in statement text (sl_sql_redact_secrets()):
 * a lexer like the server's that stars the literals giving a password,
 * secret or token by name, pgcrypto's key and password arguments, secret
 * columns of INSERT ... VALUES and the passwords of URLs with credentials.
 */
#include "sluice/sqlclass.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

/* Whether the word w[0..n) names a secret: it ends in one of these (any
 * case), so password, sslpassword, "Password", api_token, client_secret. */
static int
secret_word(const char *w, size_t n)
{
	static const char *const ends[] = {"password", "passwd", "passphrase", "secret", "token"};
	int last = n ? w[n - 1] | 0x20 : 0;

	if (last != 'd' && last != 'e' && last != 't' && last != 'n')
		return 0; /* most words: no compare at all */
	for (size_t i = 0; i < sizeof(ends) / sizeof(ends[0]); i++) {
		size_t el = strlen(ends[i]);

		if (n >= el && strncasecmp(w + n - el, ends[i], el) == 0)
			return 1;
	}
	return 0;
}

static int
word_start(unsigned char ch)
{
	return isalpha(ch) || ch == '_' || ch >= 0x80;
}

/* End (index past the closing quote) of the literal or quoted name
 * starting at i with quote q: doubled quotes stay inside, and so do
 * backslash escapes when esc. Unterminated: len, and *open set. */
size_t
sl_sql__quoted_end(const char *s, size_t len, size_t i, char q, int esc, int *open)
{
	*open = 0;
	for (i++; i < len; i++) {
		if (esc && s[i] == '\\') {
			i++;
			continue;
		}
		if (s[i] == q) {
			if (i + 1 < len && s[i + 1] == q) {
				i++;
				continue;
			}
			return i + 1;
		}
	}
	*open = 1;
	return len;
}

/* The dollar-quote tag starting at i ("$$" or "$name$"), its length, else 0. */
size_t
sl_sql__dollar_tag(const char *s, size_t len, size_t i)
{
	size_t j = i + 1;

	if (j < len && s[j] == '$')
		return 2;
	if (j >= len || !word_start((unsigned char)s[j]))
		return 0;
	while (j < len &&
	       (isalnum((unsigned char)s[j]) || s[j] == '_' || (unsigned char)s[j] >= 0x80))
		j++;
	return j < len && s[j] == '$' ? j - i + 1 : 0;
}

static void
stars(char *s, size_t from, size_t to)
{
	if (to > from)
		memset(s + from, '*', to - from);
}

/* The passwords of URLs with credentials (scheme://user:password@host)
 * in s[from, to), the contents of a literal: starred in out, the user and
 * host kept. Returns how many. */
static size_t
url_passwords(const char *s, char *out, size_t from, size_t to)
{
	size_t n = 0;

	for (size_t i = from; i + 3 <= to; i++) {
		size_t j, colon = 0, at = 0;

		if (s[i] != ':' || s[i + 1] != '/' || s[i + 2] != '/')
			continue;
		/* the authority: up to a path, query, fragment, blank or
		 * quote; the last '@' in it ends the user information */
		for (j = i + 3; j < to; j++) {
			unsigned char ch = (unsigned char)s[j];

			if (ch == '/' || ch == '?' || ch == '#' || ch == '\'' || ch == '"' ||
			    isspace(ch))
				break;
			if (ch == ':' && colon == 0 && at == 0)
				colon = j;
			if (ch == '@')
				at = j;
		}
		if (colon != 0 && at > colon) {
			stars(out, colon + 1, at);
			n++;
		}
		i = j > i ? j - 1 : i;
	}
	return n;
}

/* pgcrypto's functions whose arguments are secrets: bit i of args is the
 * i-th argument (the password crypt() hashes, the keys and passwords of
 * the pgp_* and raw encryption functions, hmac's key). Any schema. */
static unsigned
secret_args(const char *w, size_t n)
{
	static const struct {
		const char *name;
		unsigned args;
	} fns[] = {
		{"crypt", 1u << 0},
		{"decrypt", 1u << 1},
		{"decrypt_iv", 1u << 1 | 1u << 2},
		{"encrypt", 1u << 1},
		{"encrypt_iv", 1u << 1 | 1u << 2},
		{"hmac", 1u << 1},
		{"pgp_pub_decrypt", 1u << 2},
		{"pgp_pub_decrypt_bytea", 1u << 2},
		{"pgp_sym_decrypt", 1u << 1},
		{"pgp_sym_decrypt_bytea", 1u << 1},
		{"pgp_sym_encrypt", 1u << 1},
		{"pgp_sym_encrypt_bytea", 1u << 1},
	};

	for (size_t i = 0; i < sizeof(fns) / sizeof(fns[0]); i++)
		if (n == strlen(fns[i].name) && strncasecmp(w, fns[i].name, n) == 0)
			return fns[i].args;
	return 0;
}

#define SECRET_CALLS 16 /* nesting of such calls followed */

struct secret_call {
	int depth;	     /* parenthesis depth of its arguments */
	unsigned args, argi; /* its secret arguments; the one being read */
};

/* Whether the lexer is inside a secret argument of one of the calls. */
static int
in_secret_arg(const struct secret_call *call, int ncall)
{
	for (int i = 0; i < ncall; i++)
		if (call[i].argi < 32 && (call[i].args >> call[i].argi) & 1u)
			return 1;
	return 0;
}

/* Where an INSERT ... (cols) VALUES (...) stands, for its secret columns. */
enum ins_state { INS_NONE, INS_SEEN, INS_COLS, INS_AFTER, INS_VALUES };

/* One lexing of s (redact_pass()): where it is and what the last tokens
 * said. */
struct redactor {
	const char *s;
	char *out; /* s itself, or a copy of it being redacted */
	size_t len;
	int bs_plain;  /* backslashes escape in plain literals too */
	size_t i;      /* the next byte to read */
	size_t n;      /* literals redacted */
	int armed;     /* the last token was a secret's name (or '=' after one) */
	int redacting; /* a redacted literal may continue ('a'<newline>'b') */
	int uident;    /* the last token was a U&"..." name (UESCAPE may follow) */
	int uesc;      /* the next literal is that name's UESCAPE character */
	/* calls of secret_args() functions being read */
	struct secret_call call[SECRET_CALLS];
	int ncall, depth;
	unsigned fn; /* the last token was such a function's name */
	/* INSERT ... (cols) VALUES (...): which columns name a secret (bit
	 * i: the i-th of the first 64), and where in a VALUES row we are */
	enum ins_state ins;
	uint64_t ins_secret;
	unsigned ins_col;
	int ins_depth; /* depth of the column list, then of a VALUES row */
	int ins_base;  /* depth the word VALUES stood at */
};

/* A string literal at r->i (its first byte ch): plain and N'' (backslashes
 * as standard_conforming_strings says), E'' (backslash escapes), B''/X''
 * (digits), U&'' (a quote always ends it; not allowed with
 * standard_conforming_strings off). Starred when it gives a secret (vsecret:
 * a VALUES row's value for a secret column), else its URLs' passwords.
 * Returns 1 when one was read, 0 when none starts at r->i. */
static int
lex_literal(struct redactor *r, unsigned char ch, int vsecret)
{
	const char *s = r->s;
	size_t len = r->len, i = r->i;
	size_t q = i, pre = 0;
	int esc = 0, plain = 0;
	int open;
	size_t end;

	if ((ch == 'E' || ch == 'e') && i + 1 < len && s[i + 1] == '\'')
		esc = 1, pre = 1;
	else if (ch == '\'')
		plain = 1;
	else if ((ch == 'N' || ch == 'n') && i + 1 < len && s[i + 1] == '\'')
		plain = 1, pre = 1;
	else if ((ch == 'B' || ch == 'b' || ch == 'X' || ch == 'x') && i + 1 < len &&
		 s[i + 1] == '\'')
		pre = 1;
	else if ((ch == 'U' || ch == 'u') && i + 2 < len && s[i + 1] == '&' && s[i + 2] == '\'')
		pre = 2;
	q = i + pre;
	if (plain)
		esc = r->bs_plain;
	if (s[q] != '\'')
		return 0;
	end = sl_sql__quoted_end(s, len, q, '\'', esc, &open);
	if (r->uesc) { /* U&"..." UESCAPE '!': still armed */
		r->uesc = r->uident = 0;
		r->i = end;
		return 1;
	}
	r->uident = 0;
	r->fn = 0;
	if (r->armed || r->redacting || vsecret || in_secret_arg(r->call, r->ncall)) {
		/* Unterminated, or a backslash in a plain
		 * literal (where it ends depends on
		 * standard_conforming_strings): to the end. */
		if (open || (plain && !esc && memchr(s + q, '\\', end - q) != NULL)) {
			stars(r->out, q + 1, len);
			end = len;
		} else {
			stars(r->out, q + 1, end - 1);
		}
		r->n++;
		r->redacting = 1;
	} else {
		r->n += url_passwords(s, r->out, q + 1, open ? len : end - 1);
	}
	r->armed = 0;
	r->i = end;
	return 1;
}

/* A dollar-quoted literal at r->i ('$'): starred like lex_literal()'s.
 * Returns 1 when one was read, 0 when the '$' opens none. */
static int
lex_dollar(struct redactor *r, int vsecret)
{
	const char *s = r->s, *close = NULL;
	size_t len = r->len, i = r->i;
	size_t tl = sl_sql__dollar_tag(s, len, i);

	if (tl == 0)
		return 0;
	for (size_t j = i + tl; j + tl <= len; j++)
		if (s[j] == '$' && memcmp(s + j, s + i, tl) == 0) {
			close = s + j;
			break;
		}
	if (r->armed || vsecret || in_secret_arg(r->call, r->ncall)) {
		stars(r->out, i + tl, close ? (size_t)(close - s) : len);
		r->n++;
	} else {
		r->n += url_passwords(s, r->out, i + tl, close ? (size_t)(close - s) : len);
	}
	r->armed = r->uident = r->uesc = 0;
	r->fn = 0;
	r->i = close ? (size_t)(close - s) + tl : len;
	return 1;
}

/* A quoted name at r->i ("..." or U&"...", its first byte ch). */
static void
lex_quoted_name(struct redactor *r, unsigned char ch)
{
	const char *s = r->s;
	size_t i = r->i;
	int open;
	size_t q = ch == '"' ? i : i + 2, end = sl_sql__quoted_end(s, r->len, q, '"', 0, &open);

	/* a U&"..." name can spell any word with escapes:
	 * taken as a secret's name (over-redaction only) */
	r->uident = ch != '"';
	r->armed = r->uident || secret_word(s + q + 1, end - q - 1 - (open ? 0 : 1));
	r->fn = ch == '"' ? secret_args(s + q + 1, end - q - 1 - (open ? 0 : 1)) : 0;
	if (r->ins == INS_COLS && r->depth == r->ins_depth && r->ins_col < 64 && r->armed)
		r->ins_secret |= (uint64_t)1 << r->ins_col;
	r->uesc = 0;
	r->i = end;
}

/* A word at r->i (a keyword or a name): UESCAPE, TO after a secret's
 * name, a secret's name, a secret_args() function, and the words of an
 * INSERT ... VALUES. */
static void
lex_word(struct redactor *r)
{
	const char *s = r->s;
	size_t len = r->len, i = r->i, j = i;

	while (j < len && (isalnum((unsigned char)s[j]) || s[j] == '_' || s[j] == '$' ||
			   (unsigned char)s[j] >= 0x80))
		j++;
	if (r->uident && j - i == 7 && strncasecmp(s + i, "uescape", 7) == 0) {
		r->uesc = 1;
		r->i = j;
		return;
	}
	r->uident = r->uesc = 0;
	if (r->armed && j - i == 2 && strncasecmp(s + i, "to", 2) == 0) {
		r->i = j; /* SET x.password TO '...', like '=' */
		return;
	}
	r->armed = secret_word(s + i, j - i);
	r->fn = secret_args(s + i, j - i);
	if (j - i == 6 && strncasecmp(s + i, "insert", 6) == 0) {
		r->ins = INS_SEEN;
		r->ins_secret = 0;
	} else if (j - i == 6 && strncasecmp(s + i, "values", 6) == 0 &&
		   (r->ins == INS_AFTER || r->ins == INS_SEEN)) {
		r->ins = r->ins == INS_AFTER && r->ins_secret ? INS_VALUES : INS_NONE;
		r->ins_depth = 0;
		r->ins_base = r->depth;
	} else if (r->ins == INS_VALUES && r->ins_depth == 0 &&
		   ((j - i == 2 && strncasecmp(s + i, "on", 2) == 0) ||
		    (j - i == 9 && strncasecmp(s + i, "returning", 9) == 0))) {
		r->ins = INS_NONE; /* past the rows */
	} else if (r->ins == INS_COLS && r->depth == r->ins_depth && r->ins_col < 64 && r->armed) {
		r->ins_secret |= (uint64_t)1 << r->ins_col;
	}
	r->i = j;
}

/* Parentheses, brackets and commas (ch): the depth, the arguments of
 * secret_args() calls, and an INSERT's column list and VALUES rows. */
static void
lex_punct(struct redactor *r, unsigned char ch)
{
	if (ch == '(' || ch == '[') {
		r->depth++;
		if (ch == '(' && r->ins == INS_SEEN) { /* INSERT INTO t (a, b, ...) */
			r->ins = INS_COLS;
			r->ins_depth = r->depth;
			r->ins_col = 0;
		} else if (ch == '(' && r->ins == INS_VALUES && r->ins_depth == 0 &&
			   r->depth == r->ins_base + 1) {
			r->ins_depth = r->depth; /* a VALUES row */
			r->ins_col = 0;
		}
		if (ch == '(' && r->fn != 0 && r->ncall < SECRET_CALLS) {
			r->call[r->ncall].depth = r->depth;
			r->call[r->ncall].args = r->fn;
			r->call[r->ncall].argi = 0;
			r->ncall++;
		}
	} else if (ch == ')' || ch == ']') {
		if (r->ncall > 0 && r->call[r->ncall - 1].depth == r->depth)
			r->ncall--;
		if (r->ins == INS_COLS && ch == ')' && r->depth == r->ins_depth)
			r->ins = INS_AFTER;
		else if (r->ins == INS_VALUES && ch == ')' && r->depth == r->ins_depth)
			r->ins_depth = 0; /* the row ends; another may follow */
		if (r->depth > 0)
			r->depth--;
	} else if (ch == ',') {
		if (r->ncall > 0 && r->call[r->ncall - 1].depth == r->depth)
			r->call[r->ncall - 1].argi++;
		if ((r->ins == INS_COLS || r->ins == INS_VALUES) && r->depth == r->ins_depth)
			r->ins_col++;
	}
}

/* One lexing of s (with backslashes escaping in plain literals too when
 * bs_plain, as with standard_conforming_strings off), redacting into out
 * (s itself, or a copy of it being redacted). */
static size_t
redact_pass(const char *s, char *out, size_t len, int bs_plain)
{
	struct redactor r;
	int vsecret;

	memset(&r, 0, sizeof(r));
	r.s = s;
	r.out = out;
	r.len = len;
	r.bs_plain = bs_plain;
	r.ins = INS_NONE;
	while (r.i < len) {
		unsigned char ch = (unsigned char)s[r.i];

		if (isspace(ch)) {
			r.i++;
			continue;
		}
		if (ch == '-' && r.i + 1 < len && s[r.i + 1] == '-') {
			while (r.i < len && s[r.i] != '\n')
				r.i++;
			continue;
		}
		if (ch == '/' && r.i + 1 < len && s[r.i + 1] == '*') {
			int nest = 1; /* comments nest */

			for (r.i += 2; r.i < len && nest > 0; r.i++) {
				if (s[r.i] == '/' && r.i + 1 < len && s[r.i + 1] == '*')
					nest++, r.i++;
				else if (s[r.i] == '*' && r.i + 1 < len && s[r.i + 1] == '/')
					nest--, r.i++;
			}
			continue;
		}
		/* a value of a VALUES row for a column named like a secret */
		vsecret = r.ins == INS_VALUES && r.ins_depth > 0 && r.depth >= r.ins_depth &&
			  r.ins_col < 64 && (r.ins_secret >> r.ins_col) & 1u;
		if (lex_literal(&r, ch, vsecret))
			continue;
		r.redacting = 0;
		if (ch == '$' && lex_dollar(&r, vsecret))
			continue;
		if (ch == '"' || ((ch == 'U' || ch == 'u') && r.i + 2 < len && s[r.i + 1] == '&' &&
				  s[r.i + 2] == '"')) {
			lex_quoted_name(&r, ch);
			continue;
		}
		if (word_start(ch)) {
			lex_word(&r);
			continue;
		}
		if (ch == '=' && r.armed) {
			r.i++; /* password = '...' */
			continue;
		}
		if (ch == ';')
			r.ins = INS_NONE;
		lex_punct(&r, ch);
		r.armed = r.uident = r.uesc = 0;
		r.fn = 0;
		r.i++;
	}
	return r.n;
}

/* Whether the text may name a secret at all: every name secret_word()
 * knows holds "ss", "cret" or "oken" (any case), every secret_args()
 * function "cryp" or "hmac"; a U&"..." name may spell one with escapes.
 * Most statements hold none of them and skip the lexing. (b | 0x20 lowers
 * letters, and the first byte is one of the table's.) */
static int
may_name_secret(const char *s, size_t len)
{
	static const uint8_t first[256] = {['s'] = 1, ['S'] = 1, ['c'] = 1, ['C'] = 1, ['o'] = 1,
					   ['O'] = 1, ['h'] = 1, ['H'] = 1, ['&'] = 1, [':'] = 1};

	for (size_t i = 0; i + 1 < len; i++) {
		int c, d;

		if (!first[(unsigned char)s[i]])
			continue;
		c = s[i] | 0x20;
		d = s[i + 1] | 0x20;
		if ((c == 's' && d == 's') || (c == '&' && s[i + 1] == '"'))
			return 1;
		if (s[i] == ':' && s[i + 1] == '/' && i + 2 < len && s[i + 2] == '/')
			return 1; /* a URL, which may hold a password */
		if (i + 3 < len && ((c == 'c' && d == 'r') || (c == 'o' && d == 'k')) &&
		    (s[i + 2] | 0x20) == 'e' && (s[i + 3] | 0x20) == (c == 'c' ? 't' : 'n'))
			return 1;
		if (i + 3 < len && ((c == 'c' && d == 'r') || (c == 'h' && d == 'm')) &&
		    (s[i + 2] | 0x20) == (c == 'c' ? 'y' : 'a') &&
		    (s[i + 3] | 0x20) == (c == 'c' ? 'p' : 'c'))
			return 1;
	}
	return 0;
}

size_t
sl_sql_redact_secrets(char *s, size_t len)
{
	char *orig;
	size_t n;

	if (!may_name_secret(s, len))
		return 0;
	if (memchr(s, '\\', len) == NULL)
		return redact_pass(s, s, len, 0);
	/* Backslashes: where plain literals end depends on
	 * standard_conforming_strings. Both readings, each over the original
	 * text, so every literal either reading sees as a secret is hidden. */
	orig = malloc(len);
	if (orig == NULL) {
		stars(s, 0, len);
		return 1;
	}
	memcpy(orig, s, len);
	n = redact_pass(orig, s, len, 0);
	n += redact_pass(orig, s, len, 1);
	free(orig);
	return n;
}
