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
static size_t
quoted_end(const char *s, size_t len, size_t i, char q, int esc, int *open)
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
static size_t
dollar_tag(const char *s, size_t len, size_t i)
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

/* One lexing of s (with backslashes escaping in plain literals too when
 * bs_plain, as with standard_conforming_strings off), redacting into out
 * (s itself, or a copy of it being redacted). */
static size_t
redact_pass(const char *s, char *out, size_t len, int bs_plain)
{
	size_t i = 0, n = 0;
	int armed = 0;	   /* the last token was a secret's name (or '=' after one) */
	int redacting = 0; /* a redacted literal may continue ('a'<newline>'b') */
	int uident = 0;	   /* the last token was a U&"..." name (UESCAPE may follow) */
	int uesc = 0;	   /* the next literal is that name's UESCAPE character */
	/* calls of secret_args() functions being read */
	struct secret_call call[SECRET_CALLS];
	int ncall = 0, depth = 0;
	unsigned fn = 0; /* the last token was such a function's name */
	/* INSERT ... (cols) VALUES (...): which columns name a secret (bit
	 * i: the i-th of the first 64), and where in a VALUES row we are */
	enum { INS_NONE, INS_SEEN, INS_COLS, INS_AFTER, INS_VALUES } ins = INS_NONE;
	uint64_t ins_secret = 0;
	unsigned ins_col = 0;
	int ins_depth = 0; /* depth of the column list, then of a VALUES row */
	int ins_base = 0;  /* depth the word VALUES stood at */
	int vsecret;

	while (i < len) {
		unsigned char ch = (unsigned char)s[i];

		if (isspace(ch)) {
			i++;
			continue;
		}
		if (ch == '-' && i + 1 < len && s[i + 1] == '-') {
			while (i < len && s[i] != '\n')
				i++;
			continue;
		}
		if (ch == '/' && i + 1 < len && s[i + 1] == '*') {
			int nest = 1; /* comments nest */

			for (i += 2; i < len && nest > 0; i++) {
				if (s[i] == '/' && i + 1 < len && s[i + 1] == '*')
					nest++, i++;
				else if (s[i] == '*' && i + 1 < len && s[i + 1] == '/')
					nest--, i++;
			}
			continue;
		}
		/* a value of a VALUES row for a column named like a secret */
		vsecret = ins == INS_VALUES && ins_depth > 0 && depth >= ins_depth &&
			  ins_col < 64 && (ins_secret >> ins_col) & 1u;
		{
			/* a string literal: plain and N'' (backslashes as
			 * standard_conforming_strings says), E'' (backslash
			 * escapes), B''/X'' (digits), U&'' (a quote always ends
			 * it; not allowed with standard_conforming_strings off) */
			size_t q = i, pre = 0;
			int esc = 0, plain = 0;

			if ((ch == 'E' || ch == 'e') && i + 1 < len && s[i + 1] == '\'')
				esc = 1, pre = 1;
			else if (ch == '\'')
				plain = 1;
			else if ((ch == 'N' || ch == 'n') && i + 1 < len && s[i + 1] == '\'')
				plain = 1, pre = 1;
			else if ((ch == 'B' || ch == 'b' || ch == 'X' || ch == 'x') &&
				 i + 1 < len && s[i + 1] == '\'')
				pre = 1;
			else if ((ch == 'U' || ch == 'u') && i + 2 < len && s[i + 1] == '&' &&
				 s[i + 2] == '\'')
				pre = 2;
			q = i + pre;
			if (plain)
				esc = bs_plain;
			if (s[q] == '\'') {
				int open;
				size_t end = quoted_end(s, len, q, '\'', esc, &open);

				if (uesc) { /* U&"..." UESCAPE '!': still armed */
					uesc = uident = 0;
					i = end;
					continue;
				}
				uident = 0;
				fn = 0;
				if (armed || redacting || vsecret || in_secret_arg(call, ncall)) {
					/* Unterminated, or a backslash in a plain
					 * literal (where it ends depends on
					 * standard_conforming_strings): to the end. */
					if (open || (plain && !esc &&
						     memchr(s + q, '\\', end - q) != NULL)) {
						stars(out, q + 1, len);
						end = len;
					} else {
						stars(out, q + 1, end - 1);
					}
					n++;
					redacting = 1;
				} else {
					n += url_passwords(s, out, q + 1, open ? len : end - 1);
				}
				armed = 0;
				i = end;
				continue;
			}
		}
		redacting = 0;
		if (ch == '$') {
			size_t tl = dollar_tag(s, len, i);

			if (tl > 0) {
				const char *close = NULL;

				for (size_t j = i + tl; j + tl <= len; j++)
					if (s[j] == '$' && memcmp(s + j, s + i, tl) == 0) {
						close = s + j;
						break;
					}
				if (armed || vsecret || in_secret_arg(call, ncall)) {
					stars(out, i + tl, close ? (size_t)(close - s) : len);
					n++;
				} else {
					n += url_passwords(s, out, i + tl,
							   close ? (size_t)(close - s) : len);
				}
				armed = uident = uesc = 0;
				fn = 0;
				i = close ? (size_t)(close - s) + tl : len;
				continue;
			}
		}
		if (ch == '"' || ((ch == 'U' || ch == 'u') && i + 2 < len && s[i + 1] == '&' &&
				  s[i + 2] == '"')) {
			int open;
			size_t q = ch == '"' ? i : i + 2,
			       end = quoted_end(s, len, q, '"', 0, &open);

			/* a U&"..." name can spell any word with escapes:
			 * taken as a secret's name (over-redaction only) */
			uident = ch != '"';
			armed = uident || secret_word(s + q + 1, end - q - 1 - (open ? 0 : 1));
			fn = ch == '"' ? secret_args(s + q + 1, end - q - 1 - (open ? 0 : 1)) : 0;
			if (ins == INS_COLS && depth == ins_depth && ins_col < 64 && armed)
				ins_secret |= (uint64_t)1 << ins_col;
			uesc = 0;
			i = end;
			continue;
		}
		if (word_start(ch)) {
			size_t j = i;

			while (j < len && (isalnum((unsigned char)s[j]) || s[j] == '_' ||
					   s[j] == '$' || (unsigned char)s[j] >= 0x80))
				j++;
			if (uident && j - i == 7 && strncasecmp(s + i, "uescape", 7) == 0) {
				uesc = 1;
				i = j;
				continue;
			}
			uident = uesc = 0;
			if (armed && j - i == 2 && strncasecmp(s + i, "to", 2) == 0) {
				i = j; /* SET x.password TO '...', like '=' */
				continue;
			}
			armed = secret_word(s + i, j - i);
			fn = secret_args(s + i, j - i);
			if (j - i == 6 && strncasecmp(s + i, "insert", 6) == 0) {
				ins = INS_SEEN;
				ins_secret = 0;
			} else if (j - i == 6 && strncasecmp(s + i, "values", 6) == 0 &&
				   (ins == INS_AFTER || ins == INS_SEEN)) {
				ins = ins == INS_AFTER && ins_secret ? INS_VALUES : INS_NONE;
				ins_depth = 0;
				ins_base = depth;
			} else if (ins == INS_VALUES && ins_depth == 0 &&
				   ((j - i == 2 && strncasecmp(s + i, "on", 2) == 0) ||
				    (j - i == 9 && strncasecmp(s + i, "returning", 9) == 0))) {
				ins = INS_NONE; /* past the rows */
			} else if (ins == INS_COLS && depth == ins_depth && ins_col < 64 && armed) {
				ins_secret |= (uint64_t)1 << ins_col;
			}
			i = j;
			continue;
		}
		if (ch == '=' && armed) {
			i++; /* password = '...' */
			continue;
		}
		if (ch == ';')
			ins = INS_NONE;
		if (ch == '(' || ch == '[') {
			depth++;
			if (ch == '(' && ins == INS_SEEN) { /* INSERT INTO t (a, b, ...) */
				ins = INS_COLS;
				ins_depth = depth;
				ins_col = 0;
			} else if (ch == '(' && ins == INS_VALUES && ins_depth == 0 &&
				   depth == ins_base + 1) {
				ins_depth = depth; /* a VALUES row */
				ins_col = 0;
			}
			if (ch == '(' && fn != 0 && ncall < SECRET_CALLS) {
				call[ncall].depth = depth;
				call[ncall].args = fn;
				call[ncall].argi = 0;
				ncall++;
			}
		} else if (ch == ')' || ch == ']') {
			if (ncall > 0 && call[ncall - 1].depth == depth)
				ncall--;
			if (ins == INS_COLS && ch == ')' && depth == ins_depth)
				ins = INS_AFTER;
			else if (ins == INS_VALUES && ch == ')' && depth == ins_depth)
				ins_depth = 0; /* the row ends; another may follow */
			if (depth > 0)
				depth--;
		} else if (ch == ',') {
			if (ncall > 0 && call[ncall - 1].depth == depth)
				call[ncall - 1].argi++;
			if ((ins == INS_COLS || ins == INS_VALUES) && depth == ins_depth)
				ins_col++;
		}
		armed = uident = uesc = 0;
		fn = 0;
		i++;
	}
	return n;
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
