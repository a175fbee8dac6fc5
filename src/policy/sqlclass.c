/*
 * sqlclass.c - statement classification. libpg_query parses the text (JSON
 * output); a recursive-descent walker over that JSON text, without building
 * a DOM (sqlclass_walk.c), collects the kinds of every node, function
 * calls, relations, PREPARE/EXECUTE names and SET parameters. This file
 * holds the entry points and the kind vocabulary; the shape cache is in
 * sqlclass_cache.c, the redaction of secrets in sqlclass_redact.c.
 */
#include "sluice/sqlclass.h"

#include <ctype.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <pg_query.h>

#include "sluice/core.h"
#include "sqlclass_internal.h"

static const struct {
	const char *name;
	uint32_t bit;
} kind_names[] = {
	{"select", SL_SQL_SELECT},
	{"insert", SL_SQL_INSERT},
	{"update", SL_SQL_UPDATE},
	{"delete", SL_SQL_DELETE},
	{"merge", SL_SQL_MERGE},
	{"update_all", SL_SQL_UPDATE_ALL},
	{"delete_all", SL_SQL_DELETE_ALL},
	{"ddl", SL_SQL_DDL},
	{"drop", SL_SQL_DROP},
	{"truncate", SL_SQL_TRUNCATE},
	{"grant", SL_SQL_GRANT},
	{"copy_from", SL_SQL_COPY_FROM},
	{"copy_to", SL_SQL_COPY_TO},
	{"copy_program", SL_SQL_COPY_PROGRAM},
	{"alter_system", SL_SQL_ALTER_SYSTEM},
	{"do", SL_SQL_DO},
	{"call", SL_SQL_CALL},
	{"set", SL_SQL_SET},
	{"transaction", SL_SQL_TRANSACTION},
	{"utility", SL_SQL_UTILITY},
	{"prepare", SL_SQL_PREPARE},
	{"execute", SL_SQL_EXECUTE},
	{"unparseable", SL_SQL_UNPARSEABLE},
};

uint32_t
sl_sql_kind_from_name(const char *name)
{
	for (size_t i = 0; i < sizeof(kind_names) / sizeof(kind_names[0]); i++)
		if (strcmp(kind_names[i].name, name) == 0)
			return kind_names[i].bit;
	return 0;
}

void
sl_sql_kinds_str(uint32_t kinds, char *buf, size_t len)
{
	size_t o = 0;

	if (len == 0)
		return;
	buf[0] = '\0';
	for (size_t i = 0; i < sizeof(kind_names) / sizeof(kind_names[0]); i++) {
		size_t nl = strlen(kind_names[i].name), sep = o != 0;

		if (!(kinds & kind_names[i].bit))
			continue;
		if (o + sep + nl >= len)
			return; /* what fits, whole names only */
		if (sep)
			buf[o++] = ',';
		memcpy(buf + o, kind_names[i].name, nl);
		o += nl;
		buf[o] = '\0';
	}
}

/* Comments nested deeper than this are refused before the parser sees
 * them: PostgreSQL's scanner takes time quadratic in the depth (a 20 KB
 * text of nested comments took seconds, a 1 MiB one would take many
 * minutes), on a worker thread every session on it shares. Nobody nests
 * comments this deep; SQL generators do not nest them at all. */
#define COMMENT_DEPTH_MAX 32
/* The same for a run of operator characters: the scanner takes the run,
 * gives back all but one trailing + or - and reads the rest again, so
 * -+-+...-+1 is quadratic too (a minute for 1 MiB). An operator is at most
 * 63 characters; a longer run is a chain of one-character prefix operators
 * nobody writes. */
#define OP_RUN_MAX 256

/* PostgreSQL's operator characters. */
static int
op_char(char c)
{
	return c != '\0' && strchr("~!@#^&|`?+-*/%<>=", c) != NULL;
}

/* Lexes sql as the server does (quoted names and string literals '...',
 * E'...' with backslashes, $tag$...$tag$; -- and nested slash-star
 * comments) far enough to tell the two shapes above: returns why the text
 * is refused, or NULL. */
static const char *
costly_shape(const char *s, size_t n)
{
	int depth = 0;
	size_t i = 0, run = 0;

	while (i < n) {
		char c = s[i];

		if (depth > 0) {
			if (c == '/' && i + 1 < n && s[i + 1] == '*') {
				if (++depth > COMMENT_DEPTH_MAX)
					return "comments nested more than 32 deep";
				i += 2;
			} else if (c == '*' && i + 1 < n && s[i + 1] == '/') {
				depth--;
				i += 2;
			} else {
				i++;
			}
			run = 0;
		} else if (c == '/' && i + 1 < n && s[i + 1] == '*') {
			depth = 1;
			i += 2;
			run = 0;
		} else if (c == '-' && i + 1 < n && s[i + 1] == '-') {
			while (i < n && s[i] != '\n')
				i++;
			run = 0;
		} else if (c == '\'' || c == '"') {
			/* E'...' takes backslash escapes (the E was passed over) */
			int bs = c == '\'' && i > 0 && (s[i - 1] == 'E' || s[i - 1] == 'e'), open;

			i = sl_sql__quoted_end(s, n, i, c, bs, &open);
			run = 0;
		} else if (c == '$' && (i == 0 || !(isalnum((unsigned char)s[i - 1]) ||
						    s[i - 1] == '_' || s[i - 1] == '$'))) {
			/* $tag$ ... $tag$ (a $1 parameter has no closing $) */
			size_t tl = sl_sql__dollar_tag(s, n, i);
			const char *end;

			if (tl > 0) {
				end = memmem(s + i + tl, n - i - tl, s + i, tl);
				i = end != NULL ? (size_t)(end - s) + tl : n;
			} else {
				i++;
			}
			run = 0;
		} else {
			if (!op_char(c))
				run = 0;
			else if (++run > OP_RUN_MAX)
				return "a run of more than 256 operator characters";
			i++;
		}
	}
	return NULL;
}

/* Whether this thread's stack can take the parse of len bytes: libpg_query
 * writes its tree out recursively, up to len/2 levels deep (1+1+...+1) of
 * at most ~256 bytes each (measured). Workers have a large stack
 * (gateway.c); a thread with a small one refuses long statements instead
 * of crashing the gateway. Short ones (most) are not asked. */
static int
stack_room(size_t len)
{
	static _Thread_local uintptr_t lo;
	static _Thread_local int known;
	volatile char here;

	if (len <= 16384)
		return 1;
	if (!known) {
		pthread_attr_t at;
		void *addr;
		size_t size;

		known = 1;
		if (pthread_getattr_np(pthread_self(), &at) == 0) {
			if (pthread_attr_getstack(&at, &addr, &size) == 0)
				lo = (uintptr_t)addr;
			pthread_attr_destroy(&at);
		}
	}
	return lo != 0 && (uintptr_t)&here > lo &&
	       (uintptr_t)&here - lo > (len / 2) * 320 + ((size_t)1 << 20);
}

int
sl_sql_classify(const char *sql, size_t len, struct sl_sql_class *out)
{
	PgQueryParseResult res;
	struct walker w;
	const char *why;
	char *text;
	int pinned = 0;

	memset(out, 0, sizeof(*out));
	if (len > SL_SQL_MAX_TEXT) {
		out->kinds = SL_SQL_UNPARSEABLE;
		out->error = strdup("statement too long to classify");
		return 0;
	}
	if (memchr(sql, '\0', len) != NULL) {
		out->kinds = SL_SQL_UNPARSEABLE;
		out->error = strdup("statement contains a NUL byte");
		return 0;
	}
	if ((why = costly_shape(sql, len)) != NULL) {
		out->kinds = SL_SQL_UNPARSEABLE;
		out->error = strdup(why);
		return 0;
	}
	if (!stack_room(len)) {
		out->kinds = SL_SQL_UNPARSEABLE;
		out->error = strdup("statement too long to classify on this thread");
		return 0;
	}
	text = malloc(len + 1);
	if (text == NULL)
		return SL_ENOMEM;
	memcpy(text, sql, len);
	text[len] = '\0';
	res = pg_query_parse(text);
	free(text);
	if (res.error != NULL) {
		out->kinds = SL_SQL_UNPARSEABLE;
		out->error = strdup(res.error->message ? res.error->message : "syntax error");
		pg_query_free_parse_result(res);
		return 0;
	}
	memset(&w, 0, sizeof(w));
	w.c = out;
	w.p = res.parse_tree;
	w.end = res.parse_tree + strlen(res.parse_tree);
	{
		/* Count statements: each "stmt": key at the top level. */
		const char *s = res.parse_tree;

		while ((s = strstr(s, "{\"stmt\":")) != NULL) {
			out->nstatements++;
			s += 8;
		}
	}
	out->kinds = sl_sql__walk(&w);
	if (w.locking) {
		/* A locking read updates every table the statement names (all
		 * of them, not only the ones an OF list picks: an alias there
		 * names no table by itself). */
		for (size_t i = 0; i < out->ntables; i++)
			out->table_kinds[i] |= SL_SQL_UPDATE;
	}
	if (w.setcfg_col > 0) {
		pinned = w.setcfg_col == 1 && sl_sql__settings_pinned(&w, res.parse_tree);
		if (!pinned)
			out->kinds |= SL_SQL_GRANT;
	}
	if (!w.bad)
		out->read_write = sl_sql__read_write_asked(res.parse_tree, out, pinned);
	if (w.bad) {
		out->kinds |= SL_SQL_UNPARSEABLE;
		if (out->error == NULL)
			out->error = strdup("statement too complex to classify");
	}
	pg_query_free_parse_result(res);
	return 0;
}

static void
free_list(char **v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

void
sl_sql_class_fini(struct sl_sql_class *c)
{
	free_list(c->functions, c->nfunctions);
	free_list(c->calls, c->ncalls);
	free_list(c->tables, c->ntables);
	free(c->table_kinds);
	free_list(c->schemas, c->nschemas);
	free_list(c->prepared, c->nprepared);
	free(c->prepared_kinds);
	free_list(c->executed, c->nexecuted);
	free_list(c->set_params, c->nset_params);
	free_list(c->target_cols, c->ntarget_cols);
	free_list(c->result_cols, c->nresult_cols);
	free_list(c->aliases, c->naliases);
	free(c->error);
	memset(c, 0, sizeof(*c));
}
