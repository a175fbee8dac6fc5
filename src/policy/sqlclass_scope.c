/*
 * sqlclass_scope.c - the FROM items a DML statement's condition can name
 * its columns by (UPDATE's FROM, DELETE's USING, MERGE's source), read
 * from the statement's JSON, and whether a column reference is another
 * item's rather than the target's.
 */
#include "sqlclass_internal.h"

#include <stdlib.h>
#include <string.h>

#include "sluice/core.h"

/* An item's name from its object (a RangeVar's, or another FROM node's). */
static struct scope_item
scope_item_of(json_t *o, const char *node)
{
	struct scope_item it = {NULL, NULL};
	json_t *fn;

	it.name = json_string_value(json_object_get(json_object_get(o, "alias"), "aliasname"));
	if (it.name != NULL)
		return it;
	if (node == NULL || strcmp(node, "RangeVar") == 0) {
		it.schema = json_string_value(json_object_get(o, "schemaname"));
		it.name = json_string_value(json_object_get(o, "relname"));
		return it;
	}
	/* an unaliased function in FROM is named by its (first) function */
	fn = json_array_get(json_object_get(o, "functions"), 0);
	fn = json_array_get(json_object_get(json_object_get(fn, "List"), "items"), 0);
	fn = json_object_get(json_object_get(fn, "FuncCall"), "funcname");
	fn = json_array_get(fn, json_array_size(fn) - 1);
	it.name = json_string_value(json_object_get(json_object_get(fn, "String"), "sval"));
	return it;
}

/* Adds the items of a FROM list (or one item, {"Node":{...}}) to sc: a
 * join's own alias and both its sides, a TABLESAMPLE's relation. Names a
 * join's alias hides are kept too: that only ever counts a column as
 * another item's. Returns 0, or SL_ENOMEM. */
static int
scope_add(struct scope *sc, json_t *v)
{
	struct scope_item it, *no;
	const char *node;
	json_t *o;

	if (json_is_array(v)) {
		for (size_t i = 0; i < json_array_size(v); i++)
			if (scope_add(sc, json_array_get(v, i)) != 0)
				return SL_ENOMEM;
		return 0;
	}
	if (!json_is_object(v) || json_object_size(v) != 1)
		return 0;
	node = json_object_iter_key(json_object_iter(v));
	o = json_object_iter_value(json_object_iter(v));
	if (strcmp(node, "RangeTableSample") == 0)
		return scope_add(sc, json_object_get(o, "relation"));
	if (strcmp(node, "JoinExpr") == 0 && (scope_add(sc, json_object_get(o, "larg")) != 0 ||
					      scope_add(sc, json_object_get(o, "rarg")) != 0))
		return SL_ENOMEM;
	it = scope_item_of(o, node);
	if (it.name == NULL)
		return 0;
	if (sc->nother >= MAX_LIST) {
		sc->overflow = 1;
		return 0;
	}
	no = realloc(sc->other, (sc->nother + 1) * sizeof(*no));
	if (no == NULL)
		return SL_ENOMEM;
	sc->other = no;
	no[sc->nother++] = it;
	return 0;
}

void
sl_sql__scope_fini(struct scope *sc)
{
	free(sc->other);
	json_decref(sc->rel);
	json_decref(sc->from);
}

/* The end of the JSON value (or key) that starts at p and runs on to at
 * most end; NULL if it does not end there. */
static const char *
json_skip(const char *p, const char *end)
{
	int depth = 0;

	if (p < end && *p != '"' && *p != '{' && *p != '[') {
		/* a number, true, false or null */
		while (p < end && *p != ',' && *p != '}' && *p != ']')
			p++;
		return p < end ? p : NULL;
	}
	while (p < end) {
		if (*p == '"') {
			for (p++; p < end && *p != '"'; p++)
				if (*p == '\\')
					p++;
			if (p >= end)
				return NULL;
		} else if (*p == '{' || *p == '[') {
			depth++;
		} else if (*p == '}' || *p == ']') {
			depth--;
		}
		p++;
		if (depth == 0)
			return p;
	}
	return NULL;
}

/* Reads the scope of the DML statement whose object starts at obj (its
 * '{', the text running on to end, without whitespace as libpg_query
 * writes it): the target ("relation") and the items under from_key. Only
 * those two values are parsed. Returns 0, or SL_ENOMEM / SL_EPROTO, with
 * nothing to release then. */
int
sl_sql__scope_init(struct scope *sc, const char *obj, const char *end, const char *from_key)
{
	const char *p = obj + 1;
	int r = 0;

	memset(sc, 0, sizeof(*sc));
	while (r == 0 && p < end && *p != '}') {
		const char *k = *p == ',' ? p + 1 : p, *v = json_skip(k, end), *ve = NULL;
		json_t **dst = NULL;
		size_t kl;

		if (v == NULL || v >= end || *k != '"' || *v != ':' ||
		    (ve = json_skip(v + 1, end)) == NULL) {
			r = SL_EPROTO;
			break;
		}
		kl = (size_t)(v - k) - 2;
		if (kl == 8 && memcmp(k + 1, "relation", 8) == 0)
			dst = &sc->rel;
		else if (kl == strlen(from_key) && memcmp(k + 1, from_key, kl) == 0)
			dst = &sc->from;
		if (dst != NULL && *dst == NULL &&
		    (*dst = json_loadb(v + 1, (size_t)(ve - v - 1), 0, NULL)) == NULL)
			r = SL_EPROTO;
		p = ve;
	}
	if (r == 0 && (p >= end || sc->rel == NULL))
		r = SL_EPROTO;
	if (r == 0) {
		sc->target = scope_item_of(sc->rel, NULL);
		r = scope_add(sc, sc->from);
	}
	if (r != 0)
		sl_sql__scope_fini(sc);
	return r;
}

/* Whether a ColumnRef's fields f[0..n-1] name item it: "it.col" or, when
 * it is unaliased, "schema.rel.col". */
static int
scope_names(const struct scope_item *it, const char *const *f, size_t n)
{
	if (it->name == NULL || n < 2)
		return 0;
	if (strcmp(f[0], it->name) == 0)
		return 1;
	return n >= 3 && it->schema != NULL && strcmp(f[0], it->schema) == 0 &&
	       strcmp(f[1], it->name) == 0;
}

/* Whether a ColumnRef with fields f[0..n-1] (its first ones, at most 3)
 * may be a column of one of sc's other items: qualified by its name, not by
 * the target's, or unqualified while there are other items (which of them
 * has a column of that name only the catalog knows: `DELETE FROM orders
 * USING customers WHERE vip` would delete every order if vip is a column of
 * customers; counted as another item's, the statement counts as unbounded).
 * One whose qualifier names no item (a composite column's field, a
 * subquery's own FROM item) counts as the target's. */
int
sl_sql__scope_other_column(const struct scope *sc, const char *const *f, size_t n)
{
	int r = 0;

	if (n == 1)
		return sc->nother > 0 || sc->overflow;
	if (n >= 2 && !scope_names(&sc->target, f, n)) {
		r = sc->overflow;
		for (size_t i = 0; !r && i < sc->nother; i++)
			r = scope_names(&sc->other[i], f, n);
	}
	return r;
}
