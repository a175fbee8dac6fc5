/*
 * sqlclass.c - statement classification. libpg_query parses the text (JSON
 * output); a recursive-descent walker over that JSON text, without building
 * a DOM, collects the kinds of every node, function calls, relations,
 * PREPARE/EXECUTE names and SET parameters.
 */
#include "sluice/sqlclass.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <pg_query.h>

#include "sluice/core.h"

#define MAX_DEPTH 1000
/* Distinct names per list (tables, functions, ...). More is refused as too
 * complex rather than cut short: a name left off a list is a name no block
 * or review rule can see (256 CTE names, then the protected table). */
#define MAX_LIST 1024

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

/* ------------------------------------------------------------ JSON walker */

/* A MERGE, for its WHEN clauses. */
struct merge_ctx {
	const struct scope *scope; /* its target and source; NULL outside a MERGE */
	int target;		   /* its target's index in tables, or -1 */
	int on;			   /* its ON condition bounds the target's rows */
};

struct walker {
	const char *p, *end;
	int depth;
	int bad;
	struct sl_sql_class *c;
	char *collect; /* FuncCall name being assembled */
	size_t collect_len;
	int insert_source;	   /* the next SelectStmt is an INSERT's source */
	uint32_t target;	   /* DML kind of the relation being walked (its "relation") */
	unsigned rowrefs;	   /* ColumnRef / CurrentOfExpr nodes seen so far */
	unsigned tf;		   /* the value just walked: TF_* (object) or TA_* (array) */
	unsigned setcfg_col;	   /* set_config(name, ...) calls: grant unless settings_pinned() */
	int in_target;		   /* inside a SELECT list or RETURNING list */
	int in_count;		   /* inside count()'s arguments */
	int sel_depth;		   /* SELECTs being walked (1: a statement's own) */
	int direct_val;		   /* walking a column that is a statement's own result column */
	int locking;		   /* a SELECT ... FOR UPDATE / SHARE (a lockingClause) was seen */
	int last_target;	   /* index in tables of the last statement target added, or -1 */
	int upsert;		   /* an ON CONFLICT DO UPDATE was walked */
	char lastsval[128];	   /* the last String node's value (a ColumnRef's last field) */
	const struct scope *scope; /* the FROM items of the DML condition being walked */
	struct merge_ctx merge;	   /* the MERGE whose WHEN clauses are being walked */
	int in_fields;		   /* walking a ColumnRef's fields, noted in colf */
	unsigned ncolf;		   /* fields seen, the first three kept ("*" for t.*) */
	char colf[3][256];
};

/* Whether a WHERE bounds anything is read from its shape, never from
 * values: for each expression, whether it may hold for every row of the
 * table (TF_T) and whether it may fail for every row (TF_F). One that names
 * no column can do either (WHERE true, WHERE $1); so can an OR with such an
 * arm (WHERE id = 1 OR true), an AND of such arms, NOT of one that may fail
 * everywhere, COALESCE / GREATEST / CASE results that may, and whatever
 * takes one in (a cast, IS TRUE, a comparison, a function). A column, or a
 * comparison of columns, is taken as bounding (a tautology over columns,
 * WHERE id = id, is not recognised). */
#define TF_T 1u
#define TF_F 2u
/* An array's elements: any / all of them (those naming no column count as
 * both) may hold / fail everywhere, and T / F among those naming a column. */
#define TA_ANY_T 1u
#define TA_ANY_F 2u
#define TA_ALL_T 4u
#define TA_ALL_F 8u
#define TA_COL_T 16u
#define TA_COL_F 32u
#define TA_ARRAY 64u

/* A child's flags as an expression's: cols says whether it names a column. */
static unsigned
tf_of(unsigned tf, int cols)
{
	if (!cols)
		return TF_T | TF_F;
	if (tf & TA_ARRAY)
		return (tf >> 4) & (TF_T | TF_F);
	return tf & (TF_T | TF_F);
}

/* What an object's children said, by key. */
struct tfacc {
	unsigned gen;  /* T / F of the children that name a column */
	unsigned args; /* the "args" array (TA_*) */
	unsigned arg, result, defresult;
	int has_def;
};

static void
tf_note(struct tfacc *acc, const char *key, unsigned tf, int cols)
{
	unsigned t = tf_of(tf, cols);

	if (cols)
		acc->gen |= t;
	if (strcmp(key, "args") == 0)
		acc->args = tf & TA_ARRAY ? tf : 0;
	else if (strcmp(key, "arg") == 0)
		acc->arg = t;
	else if (strcmp(key, "result") == 0)
		acc->result = t;
	else if (strcmp(key, "defresult") == 0) {
		acc->defresult = t;
		acc->has_def = 1;
	}
}

/* An object's flags from its children's (it names a column). */
static unsigned
tf_node(const char *node, const char *op, const struct tfacc *acc)
{
	unsigned a = acc->args, t = 0;

	if (node == NULL)
		return acc->gen;
	if (strcmp(node, "BoolExpr") == 0) {
		if (strcmp(op, "AND_EXPR") == 0)
			t = (a & TA_ALL_T ? TF_T : 0) | (a & TA_ANY_F ? TF_F : 0);
		else if (strcmp(op, "OR_EXPR") == 0)
			t = (a & TA_ANY_T ? TF_T : 0) | (a & TA_ALL_F ? TF_F : 0);
		else if (strcmp(op, "NOT_EXPR") == 0)
			t = (a & TA_ANY_F ? TF_T : 0) | (a & TA_ANY_T ? TF_F : 0);
		else
			t = TF_T | TF_F;
		return t;
	}
	if (strcmp(node, "BooleanTest") == 0) {
		if (strcmp(op, "IS_TRUE") == 0 || strcmp(op, "IS_NOT_FALSE") == 0)
			return acc->arg;
		if (strcmp(op, "IS_FALSE") == 0 || strcmp(op, "IS_NOT_TRUE") == 0)
			return (acc->arg & TF_T ? TF_F : 0) | (acc->arg & TF_F ? TF_T : 0);
		return TF_T | TF_F;
	}
	if (strcmp(node, "CoalesceExpr") == 0 || strcmp(node, "MinMaxExpr") == 0)
		return a & (TA_ANY_T | TA_ANY_F);
	if (strcmp(node, "CaseWhen") == 0)
		return acc->result;
	if (strcmp(node, "CaseExpr") == 0)
		/* no ELSE: NULL, which fails */
		return (a & (TA_ANY_T | TA_ANY_F)) | (acc->has_def ? acc->defresult : TF_F);
	return acc->gen;
}

/* The fields of a ColumnRef's JSON span ({"ColumnRef":{"fields":[...],
 * "location":N}}), without its location: *len, or NULL if it is not one. */
static const char *
colref_fields(const char *p, const char *e, size_t *len)
{
	static const char pre[] = "{\"ColumnRef\":{\"fields\":[";
	const char *loc;

	if (p == NULL || (size_t)(e - p) <= sizeof(pre) - 1 || memcmp(p, pre, sizeof(pre) - 1) != 0)
		return NULL;
	loc = memmem(p, (size_t)(e - p), "],\"location\":", 13);
	if (loc == NULL)
		return NULL;
	*len = (size_t)(loc - p);
	return p;
}

/* An A_Expr comparing a column with itself ("id = id", "a.b <> a.b", "x IS
 * DISTINCT FROM x"): its TF_* from the operator alone, or 0 when it is not
 * one. = >= <= hold for every row whose value is not NULL and fail for
 * the others, so either may be every row; <> < > fail for every row; IS
 * NOT DISTINCT FROM holds for every row, IS DISTINCT FROM for none. The
 * operator is read from its JSON (> and < come escaped). Recognising one
 * can only make a statement an update_all / delete_all, never less. */
static unsigned
tf_same_column(const char *kind, const char *l, const char *le, const char *r, const char *re,
	       const char *op, const char *ope)
{
	static const struct {
		const char *name;
		unsigned tf;
	} ops[] = {
		{"[{\"String\":{\"sval\":\"=\"}}]", TF_T | TF_F},
		{"[{\"String\":{\"sval\":\"\\u003e=\"}}]", TF_T | TF_F},
		{"[{\"String\":{\"sval\":\"\\u003c=\"}}]", TF_T | TF_F},
		{"[{\"String\":{\"sval\":\"\\u003c\\u003e\"}}]", TF_F},
		{"[{\"String\":{\"sval\":\"\\u003c\"}}]", TF_F},
		{"[{\"String\":{\"sval\":\"\\u003e\"}}]", TF_F},
	};
	size_t ll = 0, rl = 0;
	const char *a = colref_fields(l, le, &ll), *b = colref_fields(r, re, &rl);

	if (a == NULL || b == NULL || ll != rl || memcmp(a, b, ll) != 0 || op == NULL)
		return 0;
	if (strcmp(kind, "AEXPR_NOT_DISTINCT") == 0)
		return TF_T;
	if (strcmp(kind, "AEXPR_DISTINCT") == 0)
		return TF_F;
	if (strcmp(kind, "AEXPR_OP") != 0)
		return 0;
	for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++)
		if ((size_t)(ope - op) == strlen(ops[i].name) &&
		    memcmp(op, ops[i].name, (size_t)(ope - op)) == 0)
			return ops[i].tf;
	return 0;
}

/* The FROM items a DML statement's condition can name its columns by: the
 * target's and the others' (UPDATE's FROM, DELETE's USING), each by its
 * alias, else by its relation's name (schema too) or its function's. A
 * condition naming only the others' columns is the same for every row of
 * the target, so it bounds none (DELETE FROM t USING u WHERE u.id = 1). */
struct scope_item {
	const char *schema; /* NULL when aliased or not a relation */
	const char *name;   /* NULL when it cannot be named */
};

struct scope {
	json_t *rel, *from; /* the target's and the items' JSON (owned) */
	struct scope_item target;
	struct scope_item *other;
	size_t nother;
	int overflow; /* more items than MAX_LIST: every name but the target's is another's */
};

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

static void
scope_fini(struct scope *sc)
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
static int
scope_init(struct scope *sc, const char *obj, const char *end, const char *from_key)
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
		scope_fini(sc);
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

/* Whether a ColumnRef with fields f[0..n-1] (its first ones, at most 3) is
 * a column of one of sc's other items: qualified by its name, not by the
 * target's. An unqualified column, or one whose qualifier names no item (a
 * composite column's field, a subquery's own FROM item), counts as the
 * target's. */
static int
scope_other_column(const struct scope *sc, const char *const *f, size_t n)
{
	int r = 0;

	if (n >= 2 && !scope_names(&sc->target, f, n)) {
		r = sc->overflow;
		for (size_t i = 0; !r && i < sc->nother; i++)
			r = scope_names(&sc->other[i], f, n);
	}
	return r;
}

/* Adds s to the list unless it is there; returns its index, or < 0 (and
 * marks the statement bad) when it cannot be kept. */
static int
add_str(struct walker *w, char ***arr, size_t *n, const char *s)
{
	char **na;

	for (size_t i = 0; i < *n; i++)
		if (strcmp((*arr)[i], s) == 0)
			return (int)i;
	if (*n >= MAX_LIST) {
		w->bad = 1;
		return SL_ETOOBIG;
	}
	na = realloc(*arr, (*n + 1) * sizeof(char *));
	if (na == NULL) {
		w->bad = 1; /* a name that cannot be kept cannot be judged */
		return SL_ENOMEM;
	}
	*arr = na;
	na[*n] = strdup(s);
	if (na[*n] == NULL) {
		w->bad = 1;
		return SL_ENOMEM;
	}
	return (int)(*n)++;
}

/* Adds (or finds) a table and notes how the statement accesses it. */
static void
add_table(struct walker *w, const char *name, uint32_t how)
{
	size_t n = w->c->ntables;
	/* room for one more first: table_kinds never falls behind tables */
	uint32_t *tk = realloc(w->c->table_kinds, (n + 1) * sizeof(*tk));
	int i;

	if (tk == NULL) {
		w->bad = 1;
		return;
	}
	w->c->table_kinds = tk;
	tk[n] = 0;
	i = add_str(w, &w->c->tables, &w->c->ntables, name);
	if (i >= 0)
		tk[i] |= how;
	if (w->target)
		w->last_target = i;
}

static void
ws(struct walker *w)
{
	while (w->p < w->end && (*w->p == ' ' || *w->p == '\n' || *w->p == '\t' || *w->p == '\r'))
		w->p++;
}

/* Reads a JSON string into buf (unescaped, truncated to len-1). */
static int
read_string(struct walker *w, char *buf, size_t len)
{
	size_t o = 0;

	if (w->p >= w->end || *w->p != '"')
		return -1;
	w->p++;
	while (w->p < w->end && *w->p != '"') {
		char ch = *w->p++;

		if (ch == '\\') {
			if (w->p >= w->end)
				return -1;
			ch = *w->p++;
			switch (ch) {
			case 'n':
				ch = '\n';
				break;
			case 't':
				ch = '\t';
				break;
			case 'r':
				ch = '\r';
				break;
			case 'b':
				ch = '\b';
				break;
			case 'f':
				ch = '\f';
				break;
			case 'u': {
				unsigned v = 0;

				if (w->end - w->p < 4)
					return -1;
				for (int i = 0; i < 4; i++) {
					char h = w->p[i];

					v <<= 4;
					if (h >= '0' && h <= '9')
						v |= (unsigned)(h - '0');
					else if (h >= 'a' && h <= 'f')
						v |= (unsigned)(h - 'a' + 10);
					else if (h >= 'A' && h <= 'F')
						v |= (unsigned)(h - 'A' + 10);
					else
						return -1;
				}
				w->p += 4;
				/* Names with non-ASCII code points keep a marker; they
				 * never equal an ASCII rule name. */
				ch = v < 0x80 ? (char)v : '?';
				break;
			}
			default:
				break;
			}
		}
		if (buf != NULL && o + 1 < len)
			buf[o++] = ch;
	}
	if (w->p >= w->end)
		return -1;
	w->p++;
	if (buf != NULL && len > 0)
		buf[o] = '\0';
	return 0;
}

static uint32_t walk_value(struct walker *w, const char *key, const char *node);

static uint32_t
stmt_kind(const char *n)
{
	static const struct {
		const char *n;
		uint32_t k;
	} map[] = {
		{"SelectStmt", SL_SQL_SELECT},
		{"InsertStmt", SL_SQL_INSERT},
		{"UpdateStmt", SL_SQL_UPDATE},
		{"DeleteStmt", SL_SQL_DELETE},
		{"MergeStmt", SL_SQL_MERGE},
		{"TruncateStmt", SL_SQL_TRUNCATE},
		{"AlterSystemStmt", SL_SQL_ALTER_SYSTEM},
		{"DoStmt", SL_SQL_DO},
		{"CreateFunctionStmt", SL_SQL_DDL},
		{"CallStmt", SL_SQL_CALL},
		{"VariableSetStmt", SL_SQL_SET},
		{"TransactionStmt", SL_SQL_TRANSACTION},
		{"GrantStmt", SL_SQL_GRANT},
		{"GrantRoleStmt", SL_SQL_GRANT},
		{"CreateRoleStmt", SL_SQL_GRANT | SL_SQL_DDL},
		{"AlterRoleStmt", SL_SQL_GRANT | SL_SQL_DDL},
		{"AlterRoleSetStmt", SL_SQL_GRANT | SL_SQL_DDL},
		{"DropRoleStmt", SL_SQL_GRANT | SL_SQL_DDL | SL_SQL_DROP},
		{"AlterDefaultPrivilegesStmt", SL_SQL_GRANT | SL_SQL_DDL},
		{"ReassignOwnedStmt", SL_SQL_GRANT | SL_SQL_DDL},
		{"DropOwnedStmt", SL_SQL_GRANT | SL_SQL_DDL | SL_SQL_DROP},
		{"PrepareStmt", SL_SQL_PREPARE},
		{"ExecuteStmt", SL_SQL_EXECUTE},
		{"CreateTableAsStmt", SL_SQL_DDL},
		{"RefreshMatViewStmt", SL_SQL_DDL},
		{"CommentStmt", SL_SQL_DDL},
		{"RenameStmt", SL_SQL_DDL},
		{"IndexStmt", SL_SQL_DDL},
		{"ViewStmt", SL_SQL_DDL},
		{"RuleStmt", SL_SQL_DDL},
		{"DefineStmt", SL_SQL_DDL},
		{"SecLabelStmt", SL_SQL_DDL},
		{"CompositeTypeStmt", SL_SQL_DDL},
		{"DropdbStmt", SL_SQL_DDL | SL_SQL_DROP},
		{"CreatedbStmt", SL_SQL_DDL},
		/* a new owner holds every privilege on the object */
		{"AlterOwnerStmt", SL_SQL_GRANT | SL_SQL_DDL},
		{"LoadStmt", SL_SQL_UTILITY | SL_SQL_DO},
		/* Reads: SHOW is current_setting(); a cursor is read through
		 * FETCH/MOVE/CLOSE after DECLARE (or a function) passed its
		 * query; EXPLAIN and DECLARE are the kinds of the statement
		 * they carry, which the walk adds. */
		{"VariableShowStmt", SL_SQL_SELECT},
		{"FetchStmt", SL_SQL_SELECT},
		{"ClosePortalStmt", SL_SQL_SELECT},
		{"ExplainStmt", 0},
		{"DeclareCursorStmt", 0},
		/* Session cleanup, like RESET: drop this session's own
		 * listens and prepared statements (pool resets send them). */
		{"UnlistenStmt", SL_SQL_SET},
		{"DeallocateStmt", SL_SQL_SET},
	};

	for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
		if (strcmp(map[i].n, n) == 0)
			return map[i].k;
	if (strncmp(n, "Drop", 4) == 0)
		return SL_SQL_DROP | SL_SQL_DDL;
	if (strncmp(n, "Create", 6) == 0 || strncmp(n, "Alter", 5) == 0 ||
	    strncmp(n, "Import", 6) == 0)
		return SL_SQL_DDL;
	return SL_SQL_UTILITY;
}

static int
is_node_name(const char *k)
{
	return k[0] >= 'A' && k[0] <= 'Z';
}

static int
ends_with(const char *s, const char *suf)
{
	size_t a = strlen(s), b = strlen(suf);

	return a >= b && strcmp(s + a - b, suf) == 0;
}

static uint32_t set_config_kind(struct walker *w);

/*
 * Functions whose effect is a statement kind of its own: called from a
 * SELECT they would otherwise pass as a select. Matched on the last part of
 * the name, in any schema (the built-ins live in pg_catalog, which is
 * searched first; dblink and adminpack install wherever the extension was
 * created), so a same-named user function is refused too: over-refusal,
 * never a bypass.
 *  - the server's own file system, like COPY to or from a file: copy_program
 *  - SQL run where this statement does not show it (dblink, and the
 *    built-ins that run a query given as a string: query_to_xml*, ts_stat,
 *    tablefunc's crosstab*, xml2's xpath_table; connectby reads a table named by a string):
 *    do (opaque); so do database_to_xml* (every table in the database)
 *    and pageinspect's bt_page_items (an index, whose keys are row values,
 *    named by a string)
 *  - server administration (signals, configuration reload, WAL, backups,
 *    replication slots and origins, and reading decoded changes of every
 *    table from a slot, get or peek): alter_system
 *  - data changed by a call: setval (a sequence), large objects
 *  - what a statement of another kind does: pg_notify (NOTIFY: utility),
 *    pg_import_system_collations (creates collations: ddl), BRIN/GIN index
 *    maintenance (brin_summarize_*, gin_clean_pending_list: utility, like
 *    VACUUM)
 * Sorted by name (bsearch).
 */
static const struct fn_kind {
	const char *name;
	uint32_t kind;
} fn_kinds[] = {
	{"brin_desummarize_range", SL_SQL_UTILITY},
	{"brin_summarize_new_values", SL_SQL_UTILITY},
	{"brin_summarize_range", SL_SQL_UTILITY},
	{"bt_page_items", SL_SQL_DO},
	{"connectby", SL_SQL_DO},
	{"crosstab", SL_SQL_DO},
	{"crosstab2", SL_SQL_DO},
	{"crosstab3", SL_SQL_DO},
	{"crosstab4", SL_SQL_DO},
	{"database_to_xml", SL_SQL_DO},
	{"database_to_xml_and_xmlschema", SL_SQL_DO},
	{"database_to_xmlschema", SL_SQL_DO},
	{"dblink", SL_SQL_DO},
	{"dblink_exec", SL_SQL_DO},
	{"dblink_open", SL_SQL_DO},
	{"dblink_send_query", SL_SQL_DO},
	{"gin_clean_pending_list", SL_SQL_UTILITY},
	{"heap_force_freeze", SL_SQL_ALTER_SYSTEM},
	{"heap_force_kill", SL_SQL_ALTER_SYSTEM},
	{"lo_creat", SL_SQL_INSERT},
	{"lo_create", SL_SQL_INSERT},
	{"lo_export", SL_SQL_COPY_PROGRAM},
	{"lo_from_bytea", SL_SQL_INSERT},
	{"lo_import", SL_SQL_COPY_PROGRAM},
	{"lo_put", SL_SQL_UPDATE},
	{"lo_truncate", SL_SQL_UPDATE},
	{"lo_truncate64", SL_SQL_UPDATE},
	{"lo_unlink", SL_SQL_DELETE},
	{"lowrite", SL_SQL_UPDATE},
	{"pg_backup_start", SL_SQL_ALTER_SYSTEM},
	{"pg_backup_stop", SL_SQL_ALTER_SYSTEM},
	{"pg_cancel_backend", SL_SQL_ALTER_SYSTEM},
	{"pg_copy_logical_replication_slot", SL_SQL_ALTER_SYSTEM},
	{"pg_copy_physical_replication_slot", SL_SQL_ALTER_SYSTEM},
	{"pg_create_logical_replication_slot", SL_SQL_ALTER_SYSTEM},
	{"pg_create_physical_replication_slot", SL_SQL_ALTER_SYSTEM},
	{"pg_create_restore_point", SL_SQL_ALTER_SYSTEM},
	{"pg_drop_replication_slot", SL_SQL_ALTER_SYSTEM},
	{"pg_file_rename", SL_SQL_COPY_PROGRAM},
	{"pg_file_sync", SL_SQL_COPY_PROGRAM},
	{"pg_file_unlink", SL_SQL_COPY_PROGRAM},
	{"pg_file_write", SL_SQL_COPY_PROGRAM},
	{"pg_hba_file_rules", SL_SQL_COPY_PROGRAM},
	{"pg_ident_file_mappings", SL_SQL_COPY_PROGRAM},
	{"pg_import_system_collations", SL_SQL_DDL},
	{"pg_log_backend_memory_contexts", SL_SQL_ALTER_SYSTEM},
	{"pg_logdir_ls", SL_SQL_COPY_PROGRAM},
	{"pg_logical_emit_message", SL_SQL_ALTER_SYSTEM},
	{"pg_logical_slot_get_binary_changes", SL_SQL_ALTER_SYSTEM},
	{"pg_logical_slot_get_changes", SL_SQL_ALTER_SYSTEM},
	{"pg_logical_slot_peek_binary_changes", SL_SQL_ALTER_SYSTEM},
	{"pg_logical_slot_peek_changes", SL_SQL_ALTER_SYSTEM},
	{"pg_ls_archive_statusdir", SL_SQL_COPY_PROGRAM},
	{"pg_ls_dir", SL_SQL_COPY_PROGRAM},
	{"pg_ls_logdir", SL_SQL_COPY_PROGRAM},
	{"pg_ls_logicalmapdir", SL_SQL_COPY_PROGRAM},
	{"pg_ls_logicalsnapdir", SL_SQL_COPY_PROGRAM},
	{"pg_ls_replslotdir", SL_SQL_COPY_PROGRAM},
	{"pg_ls_tmpdir", SL_SQL_COPY_PROGRAM},
	{"pg_ls_waldir", SL_SQL_COPY_PROGRAM},
	{"pg_notify", SL_SQL_UTILITY},
	{"pg_promote", SL_SQL_ALTER_SYSTEM},
	{"pg_read_binary_file", SL_SQL_COPY_PROGRAM},
	{"pg_read_file", SL_SQL_COPY_PROGRAM},
	{"pg_reload_conf", SL_SQL_ALTER_SYSTEM},
	{"pg_replication_origin_advance", SL_SQL_ALTER_SYSTEM},
	{"pg_replication_origin_create", SL_SQL_ALTER_SYSTEM},
	{"pg_replication_origin_drop", SL_SQL_ALTER_SYSTEM},
	{"pg_replication_origin_session_reset", SL_SQL_ALTER_SYSTEM},
	{"pg_replication_origin_session_setup", SL_SQL_ALTER_SYSTEM},
	{"pg_replication_origin_xact_reset", SL_SQL_ALTER_SYSTEM},
	{"pg_replication_origin_xact_setup", SL_SQL_ALTER_SYSTEM},
	{"pg_replication_slot_advance", SL_SQL_ALTER_SYSTEM},
	{"pg_rotate_logfile", SL_SQL_ALTER_SYSTEM},
	{"pg_show_all_file_settings", SL_SQL_COPY_PROGRAM},
	{"pg_start_backup", SL_SQL_ALTER_SYSTEM},
	{"pg_stat_file", SL_SQL_COPY_PROGRAM},
	{"pg_stat_reset", SL_SQL_ALTER_SYSTEM},
	{"pg_stat_reset_shared", SL_SQL_ALTER_SYSTEM},
	{"pg_stat_reset_single_function_counters", SL_SQL_ALTER_SYSTEM},
	{"pg_stat_reset_single_table_counters", SL_SQL_ALTER_SYSTEM},
	{"pg_stat_reset_slru", SL_SQL_ALTER_SYSTEM},
	{"pg_stat_statements_reset", SL_SQL_ALTER_SYSTEM},
	{"pg_stop_backup", SL_SQL_ALTER_SYSTEM},
	{"pg_switch_wal", SL_SQL_ALTER_SYSTEM},
	{"pg_terminate_backend", SL_SQL_ALTER_SYSTEM},
	{"pg_truncate_visibility_map", SL_SQL_ALTER_SYSTEM},
	{"pg_wal_replay_pause", SL_SQL_ALTER_SYSTEM},
	{"pg_wal_replay_resume", SL_SQL_ALTER_SYSTEM},
	{"query_to_xml", SL_SQL_DO},
	{"query_to_xml_and_xmlschema", SL_SQL_DO},
	{"query_to_xmlschema", SL_SQL_DO},
	{"setval", SL_SQL_UPDATE},
	{"ts_stat", SL_SQL_DO},
	{"xpath_table", SL_SQL_DO},
};

static int
fn_kind_cmp(const void *key, const void *elem)
{
	return strcmp(key, ((const struct fn_kind *)elem)->name);
}

/* The kind a call of fname (lower case, last part of the name) amounts to
 * beyond the select it sits in, or 0. */
static uint32_t
function_kind(const char *fname)
{
	const struct fn_kind *f = bsearch(fname, fn_kinds, sizeof(fn_kinds) / sizeof(fn_kinds[0]),
					  sizeof(fn_kinds[0]), fn_kind_cmp);

	if (f != NULL)
		return f->kind;
	/* every dblink function: a connection to any server (dblink_connect
	 * reaches any host and port), SQL sent there, or a table named by a
	 * string (dblink_build_sql_*) */
	if (strncmp(fname, "dblink", 6) == 0)
		return SL_SQL_DO;
	if (strncmp(fname, "pg_stat_reset", 13) == 0)
		return SL_SQL_ALTER_SYSTEM;
	return 0;
}

/* The built-ins that read a whole table or schema named by their first
 * argument (a string, not a relation in the FROM list): table_to_xml* read
 * the table (so does pageinspect's get_raw_page, a page at a time),
 * schema_to_xml* every table in the schema. Returns 1 (table) or 2
 * (schema) for such a name, 3 for ts_rewrite (its two-argument form runs
 * a query given as a string, its three-argument form does not), else 0. */
static int
names_by_argument(const char *fname)
{
	if (strcmp(fname, "get_raw_page") == 0)
		return 1;
	if (strcmp(fname, "ts_rewrite") == 0)
		return 3;
	static const char *const tables[] = {"table_to_xml", "table_to_xml_and_xmlschema",
					     "table_to_xmlschema"};
	static const char *const schemas[] = {"schema_to_xml", "schema_to_xml_and_xmlschema",
					      "schema_to_xmlschema"};

	for (size_t i = 0; i < sizeof(tables) / sizeof(tables[0]); i++) {
		if (strcmp(fname, tables[i]) == 0)
			return 1;
		if (strcmp(fname, schemas[i]) == 0)
			return 2;
	}
	return 0;
}

/* The length of the name p[0..n) as PostgreSQL keeps it: at most
 * NAMEDATALEN - 1 (63) bytes, cut before a UTF-8 sequence that would not
 * fit (truncate_identifier(), namein()). */
static size_t
name_clip(const char *p, size_t n)
{
	if (n <= 63)
		return n;
	n = 63;
	while (n > 0 && ((unsigned char)p[n] & 0xc0) == 0x80)
		n--;
	return n;
}

/* A regclass text ('hr.payroll', '"Hr"."Pay roll"') as the parser names
 * the relation: unquoted parts folded to lower case, a database part
 * dropped, "schema.table" or "table". Returns -1 when it is not a plain
 * qualified name. */
static int
regclass_name(const char *s, char *out, size_t outlen)
{
	char part[3][256];
	int np = 0;

	/* all digits: regclassin reads an OID, which names no table here */
	if (s[0] != '\0' && strspn(s, "0123456789") == strlen(s))
		return -1;

	for (;;) {
		size_t n = 0;

		while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
			s++;
		if (np == 3)
			return -1;
		if (*s == '"') {
			for (s++;; s++) {
				if (*s == '\0')
					return -1;
				if (*s == '"' && s[1] != '"')
					break;
				if (*s == '"')
					s++;
				if (n + 1 >= sizeof(part[0]))
					return -1;
				part[np][n++] = *s;
			}
			s++;
		} else {
			while (*s != '\0' && *s != '.' && *s != ' ' && *s != '\t' && *s != '\n' &&
			       *s != '\r' && *s != '"') {
				if (n + 1 >= sizeof(part[0]))
					return -1;
				part[np][n++] = (char)tolower((unsigned char)*s);
				s++;
			}
		}
		if (n == 0)
			return -1;
		n = name_clip(part[np], n);
		part[np++][n] = '\0';
		while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
			s++;
		if (*s == '\0')
			break;
		if (*s != '.')
			return -1;
		s++;
	}
	if (np == 1)
		snprintf(out, outlen, "%s", part[0]);
	else
		snprintf(out, outlen, "%.63s.%.63s", part[np - 2], part[np - 1]); /* clipped */
	return 0;
}

/* The relation or schema a names_by_argument() function reads, from its
 * args array (json, len): a string constant, cast or not ('t'::regclass).
 * Anything else (an OID, a column, a parameter, an expression) cannot be
 * told, so the call is do (opaque): refused unless do is allowed. */
static uint32_t
argument_names(struct walker *w, int what, const char *json, size_t len)
{
	json_t *a = json_loadb(json, len, 0, NULL), *first, *tc;
	const char *v;
	char name[520];
	uint32_t k = SL_SQL_DO;

	if (what == 3) { /* ts_rewrite(query, 'SELECT ...') */
		k = a == NULL || json_array_size(a) == 2 ? SL_SQL_DO : 0;
		json_decref(a);
		return k;
	}
	first = json_array_get(a, 0);
	if ((tc = json_object_get(first, "TypeCast")) != NULL)
		first = json_object_get(tc, "arg");
	v = json_string_value(json_object_get(
		json_object_get(json_object_get(first, "A_Const"), "sval"), "sval"));
	if (v != NULL && what == 1 && regclass_name(v, name, sizeof(name)) == 0) {
		add_table(w, name, SL_SQL_SELECT);
		k = 0;
	} else if (v != NULL && what == 2 && v[0] != '\0') {
		size_t n = name_clip(v, strlen(v));

		if (n < sizeof(name)) {
			memcpy(name, v, n);
			name[n] = '\0';
			add_str(w, &w->c->schemas, &w->c->nschemas, name);
			k = 0;
		}
	}
	json_decref(a);
	return k;
}

/* Notes a call of fname (the name as written, "schema.f" or "f";
 * lower-cased in place): functions lists it and its last part, calls
 * (when call) the name as written. Returns the kind the call amounts to
 * (function_kind()). */
static uint32_t
note_call(struct walker *w, char *fname, int call)
{
	const char *dot = strrchr(fname, '.');

	for (char *q = fname; *q; q++)
		*q = (char)tolower((unsigned char)*q);
	if (call)
		add_str(w, &w->c->calls, &w->c->ncalls, fname);
	add_str(w, &w->c->functions, &w->c->nfunctions, fname);
	if (dot)
		add_str(w, &w->c->functions, &w->c->nfunctions, dot + 1);
	return function_kind(dot ? dot + 1 : fname);
}

/* The field names of an A_Indirection ((expr).f, (expr).a.b[1]), from its
 * indirection array (json, len): PostgreSQL reads (expr).f as f(expr)
 * when expr has no field f, for any function of one argument, so each is
 * noted as a call (a field of a composite value is taken for one too:
 * over-refusal, never a bypass). Returns the kinds they amount to. */
static uint32_t
field_calls(struct walker *w, const char *json, size_t len)
{
	json_t *a = json_loadb(json, len, 0, NULL), *v;
	uint32_t k = 0;
	size_t i;

	if (a == NULL) {
		w->bad = 1;
		return 0;
	}
	json_array_foreach(a, i, v)
	{
		const char *sv =
			json_string_value(json_object_get(json_object_get(v, "String"), "sval"));
		char fname[256];

		if (sv == NULL)
			continue; /* a subscript, or .* */
		snprintf(fname, sizeof(fname), "%s", sv);
		k |= note_call(w, fname, 1);
	}
	json_decref(a);
	return k;
}

/* Walks an object. node: the node type this object is the body of (or NULL). */
/* Adds the sval of every String node in arr (or arr itself) to schemas. */
static void
add_schema_strings(struct walker *w, json_t *arr)
{
	json_t *one = json_is_array(arr) ? NULL : arr;
	size_t n = one ? 1 : json_array_size(arr);

	for (size_t i = 0; i < n; i++) {
		const char *sv = json_string_value(json_object_get(
			json_object_get(one ? one : json_array_get(arr, i), "String"), "sval"));

		if (sv == NULL) {
			w->bad = 1; /* a schema this code cannot read: refuse */
			return;
		}
		add_str(w, &w->c->schemas, &w->c->nschemas, sv);
	}
}

/* Statements that act on whole schemas (every table in them) without naming
 * a table: they are noted as schemas, which block and review rules on
 * tables in them see. Returns 1 if o was one. */
static int
schema_wide(struct walker *w, json_t *o)
{
	const char *drop = json_string_value(json_object_get(o, "removeType"));
	const char *ren = json_string_value(json_object_get(o, "renameType"));
	const char *own = json_string_value(json_object_get(o, "objectType"));
	const char *targ = json_string_value(json_object_get(o, "targtype"));

	if (drop && strcmp(drop, "OBJECT_SCHEMA") == 0) {
		add_schema_strings(w, json_object_get(o, "objects"));
		return 1;
	}
	if (ren && strcmp(ren, "OBJECT_SCHEMA") == 0) {
		const char *sv = json_string_value(json_object_get(o, "subname"));

		if (sv == NULL)
			w->bad = 1;
		else
			add_str(w, &w->c->schemas, &w->c->nschemas, sv);
		return 1;
	}
	if (own && strcmp(own, "OBJECT_SCHEMA") == 0) {
		add_schema_strings(w, json_object_get(o, "object"));
		return 1;
	}
	if (targ && strcmp(targ, "ACL_TARGET_ALL_IN_SCHEMA") == 0) {
		add_schema_strings(w, json_object_get(o, "objects"));
		return 1;
	}
	if (json_object_get(o, "roles") != NULL && drop == NULL && ren == NULL && own == NULL &&
	    targ == NULL) {
		/* DROP OWNED / REASSIGN OWNED: whatever the roles own, anywhere */
		add_str(w, &w->c->schemas, &w->c->nschemas, "*");
		return 1;
	}
	return 0;
}

/*
 * DROP, COMMENT ON and SECURITY LABEL name their relations as lists of
 * strings, not as RangeVars: without this a block rule on hr.payroll did
 * not see DROP TABLE hr.payroll. Schema-wide statements are noted too
 * (schema_wide). json is the statement's object; these statements are
 * rare, so it is parsed whole (jansson) rather than streamed.
 */
static void
object_names(struct walker *w, const char *node, const char *json, size_t len)
{
	/* the relation itself, or something on it (strip: named by the
	 * relation's name and its own, so the list without its last item) */
	static const struct {
		const char *type;
		int strip;
	} reltypes[] = {{"OBJECT_TABLE", 0},	     {"OBJECT_VIEW", 0},     {"OBJECT_MATVIEW", 0},
			{"OBJECT_FOREIGN_TABLE", 0}, {"OBJECT_SEQUENCE", 0}, {"OBJECT_COLUMN", 1},
			{"OBJECT_POLICY", 1},	     {"OBJECT_TRIGGER", 1},  {"OBJECT_RULE", 1},
			{"OBJECT_TABCONSTRAINT", 1}};
	json_t *o = json_loadb(json, len, 0, NULL), *objs, *one = NULL;
	const char *t;
	size_t i, n;
	int column = -1;

	if (o == NULL) {
		w->bad = 1;
		return;
	}
	if (schema_wide(w, o) ||
	    (strcmp(node, "DropStmt") != 0 && strcmp(node, "CommentStmt") != 0 &&
	     strcmp(node, "SecLabelStmt") != 0)) {
		json_decref(o);
		return;
	}
	t = json_string_value(json_object_get(o, "removeType"));
	if (t == NULL)
		t = json_string_value(json_object_get(o, "objtype"));
	for (i = 0; t != NULL && i < sizeof(reltypes) / sizeof(reltypes[0]); i++)
		if (strcmp(t, reltypes[i].type) == 0)
			column = reltypes[i].strip;
	if (column < 0) { /* not a relation, nor something on one */
		json_decref(o);
		return;
	}
	/* a list of names ("objects"), or one ("object", COMMENT ON) */
	objs = json_object_get(o, "objects");
	one = objs ? NULL : json_object_get(o, "object");
	if (objs == NULL && one == NULL) {
		w->bad = 1; /* a relation this code cannot read: refuse */
		json_decref(o);
		return;
	}
	n = one ? 1 : json_array_size(objs);
	for (i = 0; i < n && !w->bad; i++) {
		json_t *items = json_object_get(
			json_object_get(one ? one : json_array_get(objs, i), "List"), "items");
		size_t m = json_array_size(items), len2 = 0;
		char name[520];

		if (m <= (size_t)column) {
			w->bad = 1; /* a relation this code cannot read: refuse */
			break;
		}
		name[0] = '\0';
		for (size_t j = 0; j + (size_t)column < m; j++) {
			const char *sv = json_string_value(json_object_get(
				json_object_get(json_array_get(items, j), "String"), "sval"));
			int r;

			if (sv == NULL) {
				w->bad = 1;
				break;
			}
			r = snprintf(name + len2, sizeof(name) - len2, "%s%s", j ? "." : "", sv);
			if (r < 0 || (size_t)r >= sizeof(name) - len2) {
				w->bad = 1;
				break;
			}
			len2 += (size_t)r;
		}
		if (!w->bad)
			add_table(w, name, 0);
	}
	json_decref(o);
}

/* What an ALTER TABLE / ALTER TYPE subcommand (its subtype) does beyond
 * ddl: destroying or rewriting stored values (DROP COLUMN, DROP
 * CONSTRAINT, DETACH PARTITION, ALTER COLUMN TYPE) is a drop; giving the
 * table away or lifting its row security is a grant. */
static uint32_t
alter_table_cmd_kind(const char *subtype)
{
	static const struct {
		const char *n;
		uint32_t k;
	} map[] = {
		{"AT_DropColumn", SL_SQL_DROP},		 {"AT_DropConstraint", SL_SQL_DROP},
		{"AT_DetachPartition", SL_SQL_DROP},	 {"AT_AlterColumnType", SL_SQL_DROP},
		{"AT_ChangeOwner", SL_SQL_GRANT},	 {"AT_EnableRowSecurity", SL_SQL_GRANT},
		{"AT_DisableRowSecurity", SL_SQL_GRANT}, {"AT_ForceRowSecurity", SL_SQL_GRANT},
		{"AT_NoForceRowSecurity", SL_SQL_GRANT},
	};

	for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
		if (strcmp(map[i].n, subtype) == 0)
			return map[i].k;
	return 0;
}

/* The key under which a DML statement (node) lists its FROM items other
 * than the target, when key is its condition: "" when it names none of its
 * own (ON CONFLICT's WHERE; a MERGE's WHEN clause, which has its
 * statement's); NULL when key is no such condition. */
static const char *
condition_scope(const char *node, const char *key)
{
	int where = strcmp(key, "whereClause") == 0;

	if (node == NULL)
		return NULL;
	if (where && strcmp(node, "UpdateStmt") == 0)
		return "fromClause";
	if (where && strcmp(node, "DeleteStmt") == 0)
		return "usingClause";
	if (strcmp(key, "joinCondition") == 0 && strcmp(node, "MergeStmt") == 0)
		return "sourceRelation";
	if ((where && strcmp(node, "OnConflictClause") == 0) ||
	    (strcmp(key, "condition") == 0 && strcmp(node, "MergeWhenClause") == 0))
		return "";
	return NULL;
}

/* Walks the condition (key, at w->p) of node, whose object starts at obj,
 * with its FROM items in force (from_key: see condition_scope()). Returns
 * its kinds; *bounds says whether it bounds the target's rows. */
static uint32_t
walk_condition(struct walker *w, const char *key, const char *node, const char *obj,
	       const char *from_key, int *bounds)
{
	const struct scope *outer = w->scope;
	unsigned before = w->rowrefs;
	struct scope sc;
	uint32_t k;

	if (from_key[0] && scope_init(&sc, obj, w->end, from_key) != 0) {
		w->bad = 1;
		return 0;
	}
	w->scope = from_key[0] ? &sc : strcmp(node, "MergeWhenClause") == 0 ? w->merge.scope : NULL;
	k = walk_value(w, key, NULL);
	w->scope = outer;
	if (from_key[0])
		scope_fini(&sc);
	*bounds = !(tf_of(w->tf, w->rowrefs != before) & TF_T);
	return k;
}

/* What a MERGE's WHEN clause (its commandType cmd) does to the target,
 * also noted on the target's table: an update or a delete of every row
 * unless its own condition bounds them (cond), or the MERGE's ON does and
 * the clause is WHEN MATCHED (a row that matches nothing is not bounded by
 * the ON; libpg_query for PostgreSQL 15 writes "matched"). */
static uint32_t
merge_action(struct walker *w, const char *cmd, int matched, int cond)
{
	uint32_t k = 0, all = 0;

	if (strcmp(cmd, "CMD_UPDATE") == 0) {
		k = SL_SQL_UPDATE;
		all = SL_SQL_UPDATE_ALL;
	} else if (strcmp(cmd, "CMD_DELETE") == 0) {
		k = SL_SQL_DELETE;
		all = SL_SQL_DELETE_ALL;
	} else if (strcmp(cmd, "CMD_INSERT") == 0) {
		k = SL_SQL_INSERT;
	}
	if (w->merge.scope != NULL && w->merge.target >= 0)
		w->c->table_kinds[w->merge.target] |= k;
	return k | (cond || (matched && w->merge.on) ? 0 : all);
}

static uint32_t
walk_object(struct walker *w, const char *node)
{
	uint32_t k = 0;
	char relname[256] = "", schemaname[256] = "", name[256] = "", kindval[64] = "";
	int has_where = 0, is_from = 0, is_program = 0, has_into = 0, has_relation = 0;
	int has_locking = 0;
	int has_values = 0, has_from = 0, setcfg = 0, has_file = 0, insert_source = 0;
	int byarg = 0, target = -1, matched = 0;
	const char *from_key;
	int first = 1;
	int aexpr = node != NULL && strcmp(node, "A_Expr") == 0;
	int is_count = 0;
	const char *lx = NULL, *lxe = NULL, *rx = NULL, *rxe = NULL, *opn = NULL, *opne = NULL;
	unsigned seen = w->rowrefs, before = 0;
	const char *obj = w->p; /* this object's '{' */
	struct tfacc acc = {0};
	char pending[128] = ""; /* the last key walked, not yet noted in acc */
	const char *objstart = node != NULL && (strcmp(node, "DropStmt") == 0 ||
						strcmp(node, "CommentStmt") == 0 ||
						strcmp(node, "SecLabelStmt") == 0 ||
						strcmp(node, "RenameStmt") == 0 ||
						strcmp(node, "AlterOwnerStmt") == 0 ||
						strcmp(node, "GrantStmt") == 0 ||
						strcmp(node, "DropOwnedStmt") == 0 ||
						strcmp(node, "ReassignOwnedStmt") == 0)
				       ? w->p
				       : NULL;

	if (node != NULL && strcmp(node, "SelectStmt") == 0) {
		insert_source = w->insert_source;
		w->insert_source = 0;
		w->sel_depth++;
	}
	if (node != NULL && (strcmp(node, "ColumnRef") == 0 || strcmp(node, "CurrentOfExpr") == 0))
		w->rowrefs++;
	w->p++; /* '{' */
	for (;;) {
		char key[128];

		if (pending[0]) {
			tf_note(&acc, pending, w->tf, w->rowrefs != before);
			pending[0] = '\0';
		}
		ws(w);
		if (w->p >= w->end) {
			w->bad = 1;
			return k;
		}
		if (*w->p == '}') {
			w->p++;
			break;
		}
		if (!first) {
			if (*w->p != ',') {
				w->bad = 1;
				return k;
			}
			w->p++;
			ws(w);
		}
		first = 0;
		if (read_string(w, key, sizeof(key)) != 0) {
			w->bad = 1;
			return k;
		}
		ws(w);
		if (w->p >= w->end || *w->p != ':') {
			w->bad = 1;
			return k;
		}
		w->p++;
		ws(w);
		memcpy(pending, key, strlen(key) + 1); /* key is shorter than pending */
		before = w->rowrefs;
		w->tf = TF_T | TF_F;
		/* (an Alias is written without its node name: its keys tell) */
		if (w->p < w->end && *w->p == '"' && strcmp(key, "aliasname") == 0) {
			/* a relation's alias: a result column of that name is
			 * its whole row (masking: result_rowref) */
			if (read_string(w, name, sizeof(name)) != 0) {
				w->bad = 1;
				return k;
			}
			/* past the list's bound: assume a renaming (masking
			 * then treats the statement as carrying rule columns) */
			if (w->c->naliases < MAX_LIST)
				add_str(w, &w->c->aliases, &w->c->naliases, name);
			else
				w->c->col_renames = 1;
			continue;
		}
		if (strcmp(key, "colnames") == 0 || strcmp(key, "aliascolnames") == 0)
			w->c->col_renames = 1;
		if (w->p < w->end && *w->p == '"' &&
		    (strcmp(key, "relname") == 0 || strcmp(key, "schemaname") == 0 ||
		     strcmp(key, "name") == 0 || strcmp(key, "sval") == 0 ||
		     strcmp(key, "str") == 0 || strcmp(key, "kind") == 0 ||
		     strcmp(key, "boolop") == 0 || strcmp(key, "booltesttype") == 0 ||
		     strcmp(key, "action") == 0 || strcmp(key, "subtype") == 0 ||
		     strcmp(key, "commandType") == 0)) {
			int op = strcmp(key, "kind") == 0 || strcmp(key, "boolop") == 0 ||
				 strcmp(key, "booltesttype") == 0 || strcmp(key, "action") == 0 ||
				 strcmp(key, "subtype") == 0 || strcmp(key, "commandType") == 0;
			char *dst = strcmp(key, "relname") == 0	     ? relname
				    : strcmp(key, "schemaname") == 0 ? schemaname
				    : op			     ? kindval
								     : name;
			size_t dl = op ? sizeof(kindval) : sizeof(name);

			if (read_string(w, dst, dl) != 0) {
				w->bad = 1;
				return k;
			}
			if (dst == name && node != NULL && strcmp(node, "String") == 0) {
				snprintf(w->lastsval, sizeof(w->lastsval), "%s", name);
				if (w->in_fields && w->ncolf < 3)
					memcpy(w->colf[w->ncolf], name, sizeof(name));
				w->ncolf += w->in_fields;
			}
			continue;
		}
		if ((from_key = condition_scope(node, key)) != NULL) {
			/* A condition that may hold for every row (WHERE true,
			 * WHERE 1=1, WHERE $1, WHERE id = 1 OR true) bounds
			 * nothing, so it counts as no WHERE (see TF_T); nor do
			 * the columns of a FROM / USING item (see scope). */
			k |= walk_condition(w, key, node, obj, from_key, &has_where);
			if (w->bad)
				return k;
			continue;
		}
		if (node != NULL && strcmp(node, "MergeStmt") == 0 &&
		    strcmp(key, "mergeWhenClauses") == 0) {
			/* its WHEN clauses act on the target, as bounded by
			 * their own conditions (and the ON, here in has_where) */
			struct merge_ctx outer = w->merge;
			struct scope sc;

			if (scope_init(&sc, obj, w->end, "sourceRelation") != 0) {
				w->bad = 1;
				return k;
			}
			w->merge.scope = &sc;
			w->merge.target = target;
			w->merge.on = has_where;
			k |= walk_value(w, key, NULL);
			w->merge = outer;
			scope_fini(&sc);
			if (w->bad)
				return k;
			continue;
		}
		if (strcmp(key, "matched") == 0 && w->end - w->p >= 4 &&
		    memcmp(w->p, "true", 4) == 0)
			matched = 1;
		if (strcmp(key, "whereClause") == 0)
			has_where = 1;
		if (strcmp(key, "intoClause") == 0)
			has_into = 1;
		if (strcmp(key, "lockingClause") == 0)
			has_locking = w->locking = 1;
		if (strcmp(key, "valuesLists") == 0)
			has_values = 1;
		if (strcmp(key, "fromClause") == 0)
			has_from = 1;
		if (strcmp(key, "relation") == 0)
			has_relation = 1;
		if (strcmp(key, "filename") == 0)
			has_file = 1;
		if (node != NULL && strcmp(node, "InsertStmt") == 0 &&
		    strcmp(key, "selectStmt") == 0)
			w->insert_source = 1;
		if (strcmp(key, "is_from") == 0 && w->end - w->p >= 4 &&
		    memcmp(w->p, "true", 4) == 0)
			is_from = 1;
		if (strcmp(key, "is_program") == 0 && w->end - w->p >= 4 &&
		    memcmp(w->p, "true", 4) == 0)
			is_program = 1;
		if (node != NULL && strcmp(node, "PrepareStmt") == 0 && strcmp(key, "query") == 0) {
			uint32_t inner = walk_value(w, key, NULL);
			size_t i = w->c->nprepared;

			k |= inner;
			if (name[0] && add_str(w, &w->c->prepared, &w->c->nprepared, name) >= 0 &&
			    w->c->nprepared > i) {
				uint32_t *pk = realloc(w->c->prepared_kinds,
						       w->c->nprepared * sizeof(uint32_t));

				if (pk == NULL) {
					w->bad = 1;
					return k;
				}
				w->c->prepared_kinds = pk;
				pk[i] = inner;
			}
			continue;
		}
		if (node != NULL && strcmp(node, "FuncCall") == 0 && strcmp(key, "funcname") == 0) {
			char fname[512] = "";

			w->collect = fname;
			w->collect_len = sizeof(fname);
			k |= walk_value(w, key, NULL);
			w->collect = NULL;
			if (fname[0]) {
				const char *dot = strrchr(fname, '.');

				k |= note_call(w, fname, 1);
				if (strcmp(dot ? dot + 1 : fname, "set_config") == 0) {
					setcfg = 1;
					k |= SL_SQL_SET;
				}
				byarg = names_by_argument(dot ? dot + 1 : fname);
				is_count = strcmp(dot ? dot + 1 : fname, "count") == 0;
			}
			continue;
		}
		if (node != NULL && strcmp(node, "A_Indirection") == 0 &&
		    strcmp(key, "indirection") == 0) {
			/* (expr).f is f(expr) for any one-argument function */
			const char *start = w->p;

			k |= walk_value(w, key, NULL);
			if (w->bad)
				return k;
			k |= field_calls(w, start, (size_t)(w->p - start));
			continue;
		}
		if (node != NULL && strcmp(node, "ColumnRef") == 0 && strcmp(key, "fields") == 0) {
			/* t.f, where t is a FROM item, is f(t) when t has no
			 * column f: the last field may be a call on the row */
			const char *start = w->p;
			unsigned nf = 0;

			w->lastsval[0] = '\0';
			w->in_fields = 1;
			w->ncolf = 0;
			k |= walk_value(w, key, NULL);
			w->in_fields = 0;
			if (w->bad)
				return k;
			/* another FROM item's column tells no target row
			 * from another: for the bounds, no column at all */
			if (w->scope != NULL) {
				const char *f[3] = {w->colf[0], w->colf[1], w->colf[2]};

				if (scope_other_column(w->scope, f, w->ncolf < 3 ? w->ncolf : 3))
					w->rowrefs = seen;
			}
			for (const char *q = start;
			     (q = memmem(q, (size_t)(w->p - q), "{\"String\":", 10)) != NULL; q++)
				nf++;
			if (nf >= 2 && w->lastsval[0]) {
				char fname[sizeof(w->lastsval)];

				memcpy(fname, w->lastsval, sizeof(fname));
				k |= note_call(w, fname, 0);
			}
			continue;
		}
		if (setcfg && strcmp(key, "args") == 0)
			k |= set_config_kind(w);
		if (byarg && strcmp(key, "args") == 0) {
			const char *start = w->p;

			k |= walk_value(w, key, NULL);
			if (w->bad)
				return k;
			k |= argument_names(w, byarg, start, (size_t)(w->p - start));
			continue;
		}
		if (node != NULL && strcmp(key, "relation") == 0 &&
		    (strcmp(node, "InsertStmt") == 0 || strcmp(node, "UpdateStmt") == 0 ||
		     strcmp(node, "DeleteStmt") == 0 || strcmp(node, "MergeStmt") == 0)) {
			/* the statement's target: the table it writes */
			w->target = stmt_kind(node);
			w->last_target = -1;
			k |= walk_value(w, key, NULL);
			w->target = 0;
			target = w->last_target;
			if (w->bad)
				return k;
			continue;
		}
		if (node != NULL && strcmp(node, "InsertStmt") == 0 &&
		    strcmp(key, "onConflictClause") == 0) {
			/* ON CONFLICT DO UPDATE updates the target's rows */
			w->upsert = 0;
			k |= walk_value(w, key, "OnConflictClause");
			if (w->bad)
				return k;
			if (w->upsert && target >= 0)
				w->c->table_kinds[target] |= SL_SQL_UPDATE;
			w->upsert = 0;
			continue;
		}
		if (node != NULL && strcmp(node, "SelectStmt") == 0 &&
		    (strcmp(key, "larg") == 0 || strcmp(key, "rarg") == 0)) {
			/* the arms of a set operation are SELECTs of their own
			 * (unwrapped): the leftmost arm's INTO makes the whole
			 * statement a CREATE TABLE AS; the arms name no table
			 * column of the result */
			w->sel_depth++;
			k |= walk_value(w, key, "SelectStmt");
			w->sel_depth--;
			if (w->bad)
				return k;
			continue;
		}
		{
			const char *vstart = w->p;
			/* result lists, and what a FROM item makes rows of
			 * (VALUES, a function: LATERAL (VALUES (c)), unnest(c)) */
			int list = strcmp(key, "targetList") == 0 ||
				   strcmp(key, "returningList") == 0 ||
				   strcmp(key, "valuesLists") == 0 ||
				   (node != NULL && strcmp(node, "RangeFunction") == 0 &&
				    strcmp(key, "functions") == 0);
			int cnt = is_count && strcmp(key, "args") == 0;
			/* a plain column as a result column of the statement's
			 * own SELECT: RowDescription names its table column,
			 * and the rules see it there (not so for RETURNING) */
			int direct = node != NULL && strcmp(node, "ResTarget") == 0 &&
				     strcmp(key, "val") == 0 && w->sel_depth == 1 &&
				     (size_t)(w->end - w->p) > 13 &&
				     memcmp(w->p, "{\"ColumnRef\":", 13) == 0;

			/* the arms of a UNION / INTERSECT / EXCEPT: results
			 * of a set operation name no table column */
			int arm = strcmp(key, "larg") == 0 || strcmp(key, "rarg") == 0;

			w->in_target += list;
			w->in_count += cnt;
			w->direct_val += direct;
			w->sel_depth += arm;
			if (is_node_name(key))
				k |= walk_value(w, key, key);
			else
				k |= walk_value(w, key, NULL);
			w->in_target -= list;
			w->in_count -= cnt;
			w->direct_val -= direct;
			w->sel_depth -= arm;
			if (w->bad)
				return k;
			if (aexpr && strcmp(key, "lexpr") == 0)
				lx = vstart, lxe = w->p;
			else if (aexpr && strcmp(key, "rexpr") == 0)
				rx = vstart, rxe = w->p;
			else if (aexpr && strcmp(key, "name") == 0)
				opn = vstart, opne = w->p;
		}
	}
	if (node != NULL && strcmp(node, "A_Star") == 0) {
		w->lastsval[0] = '\0'; /* t.* names no column */
		if (w->in_fields && w->ncolf < 3)
			memcpy(w->colf[w->ncolf], "*", 2);
		w->ncolf += w->in_fields;
		if (w->in_target > 0 && !w->in_count)
			w->c->result_star = 1;
	}
	if (node != NULL && strcmp(node, "ColumnRef") == 0 && w->in_target > 0 && !w->in_count &&
	    w->lastsval[0]) {
		if (w->c->nresult_cols < MAX_LIST)
			add_str(w, &w->c->result_cols, &w->c->nresult_cols, w->lastsval);
		else
			w->c->result_star = 1; /* as many as a * (masking: fail closed) */
	}
	if (node != NULL && (strcmp(node, "FetchStmt") == 0 || strcmp(node, "ExecuteStmt") == 0))
		w->c->indirect = 1;
	if (node != NULL && strcmp(node, "ColumnRef") == 0 && w->in_target > 0 && !w->in_count &&
	    !w->direct_val && w->lastsval[0])
		add_str(w, &w->c->target_cols, &w->c->ntarget_cols, w->lastsval);
	if (node != NULL && strcmp(node, "SelectStmt") == 0)
		w->sel_depth--;
	w->tf = w->rowrefs == seen ? TF_T | TF_F : tf_node(node, kindval, &acc);
	if (aexpr) {
		unsigned same = tf_same_column(kindval, lx, lxe, rx, rxe, opn, opne);

		if (same)
			w->tf = same;
	}
	if (objstart != NULL)
		object_names(w, node, objstart, (size_t)(w->p - objstart));
	if (relname[0]) {
		char t[520];

		if (schemaname[0])
			snprintf(t, sizeof(t), "%s.%s", schemaname, relname);
		else
			snprintf(t, sizeof(t), "%s", relname);
		add_table(w, t, w->target ? w->target : SL_SQL_SELECT);
	}
	if (node == NULL)
		return k;
	if (strcmp(node, "String") == 0 && w->collect != NULL && name[0]) {
		size_t l = strlen(w->collect);

		snprintf(w->collect + l, w->collect_len - l, "%s%s", l ? "." : "", name);
		return k;
	}
	if (strcmp(node, "OnConflictClause") == 0 && strcmp(kindval, "ONCONFLICT_UPDATE") == 0) {
		/* an upsert updates every conflicting row: with no WHERE
		 * (or one that bounds nothing) that may be every row, since
		 * the rows inserted may come from the table itself */
		w->upsert = 1;
		k |= SL_SQL_UPDATE | (has_where ? 0 : SL_SQL_UPDATE_ALL);
	}
	if (strcmp(node, "AlterTableCmd") == 0)
		k |= alter_table_cmd_kind(kindval);
	if (strcmp(node, "MergeWhenClause") == 0)
		k |= merge_action(w, kindval, matched, has_where);
	if (!ends_with(node, "Stmt"))
		return k;
	/* The VALUES list of INSERT ... VALUES reads nothing; a VALUES
	 * statement of its own is a query (it runs whatever it calls). */
	if (!(strcmp(node, "SelectStmt") == 0 && has_values && !has_from && insert_source))
		k |= stmt_kind(node);
	if (strcmp(node, "UpdateStmt") == 0 && !has_where)
		k |= SL_SQL_UPDATE_ALL;
	if (strcmp(node, "DeleteStmt") == 0 && !has_where)
		k |= SL_SQL_DELETE_ALL;
	if (strcmp(node, "SelectStmt") == 0 && has_into)
		k |= SL_SQL_DDL;
	/* SELECT ... FOR UPDATE / NO KEY UPDATE / SHARE / KEY SHARE locks
	 * rows until the transaction ends (writers wait), and PostgreSQL asks
	 * UPDATE privilege for it: an update (here, so that a PREPARE keeps it
	 * for its EXECUTE; the tables are marked at the end) */
	if (strcmp(node, "SelectStmt") == 0 && has_locking)
		k |= SL_SQL_UPDATE;
	if (strcmp(node, "CopyStmt") == 0) {
		k &= ~SL_SQL_UTILITY;
		k |= is_from ? SL_SQL_COPY_FROM : SL_SQL_COPY_TO;
		/* A file is read or written by the server itself, like a
		 * program it runs: the same danger, the same kind. */
		if (is_program || has_file)
			k |= SL_SQL_COPY_PROGRAM;
		(void)has_relation;
	}
	/* two-phase commit: PREPARE TRANSACTION keeps locks across
	 * disconnects and restarts; COMMIT / ROLLBACK PREPARED end any
	 * session's prepared work (one vaulted role serves many agents) */
	if (strcmp(node, "TransactionStmt") == 0 &&
	    (strcmp(kindval, "TRANS_STMT_PREPARE") == 0 ||
	     strcmp(kindval, "TRANS_STMT_COMMIT_PREPARED") == 0 ||
	     strcmp(kindval, "TRANS_STMT_ROLLBACK_PREPARED") == 0))
		k |= SL_SQL_UTILITY;
	if (strcmp(node, "ExecuteStmt") == 0 && name[0])
		add_str(w, &w->c->executed, &w->c->nexecuted, name);
	if (strcmp(node, "VariableSetStmt") == 0) {
		char lname[256];
		size_t i;

		for (i = 0; name[i] && i + 1 < sizeof(lname); i++)
			lname[i] = (char)tolower((unsigned char)name[i]);
		lname[i] = '\0';
		if (strcmp(kindval, "VAR_RESET_ALL") == 0)
			add_str(w, &w->c->set_params, &w->c->nset_params, "all");
		else if (lname[0])
			add_str(w, &w->c->set_params, &w->c->nset_params, lname);
		/* SET ROLE / SESSION AUTHORIZATION change privileges. */
		if (strcmp(lname, "role") == 0 || strcmp(lname, "session_authorization") == 0)
			k |= SL_SQL_GRANT;
	}
	return k;
}

/*
 * set_config(name, value, is_local) is SET by another name: like SET ROLE
 * and SET SESSION AUTHORIZATION, set_config('role', ...) changes
 * privileges, so it is a grant; so is a name that is not a string
 * constant (a parameter, a column, an expression: it cannot be told),
 * except for the column name of pg_settings pinned by the WHERE clause
 * (settings_pinned()). w->p is at the args array, which is not consumed.
 * sl_sql_shape() keeps texts naming set_config exact, so the cached kinds
 * never outlive the literal.
 */
static uint32_t
set_config_kind(struct walker *w)
{
	static const char pre[] = "[{\"A_Const\":{\"sval\":{\"sval\":\"";
	static const char col[] = "[{\"ColumnRef\":{\"fields\":[{\"String\":{\"sval\":\"name\"}}],";
	char lname[64];
	size_t n = 0;
	const char *q;

	if ((size_t)(w->end - w->p) > sizeof(col) - 1 && memcmp(w->p, col, sizeof(col) - 1) == 0) {
		w->setcfg_col++; /* decided once the whole statement is read */
		return 0;
	}
	if ((size_t)(w->end - w->p) <= sizeof(pre) - 1 || memcmp(w->p, pre, sizeof(pre) - 1) != 0)
		return SL_SQL_GRANT;
	for (q = w->p + sizeof(pre) - 1; q < w->end && *q != '"' && n + 1 < sizeof(lname); q++) {
		if (*q == '\\')
			return SL_SQL_GRANT; /* no parameter name needs an escape */
		lname[n++] = (char)tolower((unsigned char)*q);
	}
	if (q >= w->end || *q != '"')
		return SL_SQL_GRANT;
	lname[n] = '\0';
	add_str(w, &w->c->set_params, &w->c->nset_params, lname);
	if (strcmp(lname, "role") == 0 || strcmp(lname, "session_authorization") == 0)
		return SL_SQL_GRANT;
	return 0;
}

/*
 * pg_dump (since the fix for CVE-2024-7348) sends
 *   SELECT set_config(name, 'view, foreign-table', false) FROM pg_settings
 *   WHERE name = 'restrict_nonsystem_relation_kind'
 * whose set_config names its parameter by a column. The WHERE clause pins
 * that column to one constant, so the parameter is known after all. This
 * reads the whole tree and accepts only that form: one SELECT (no WITH, no
 * set operation), one target, the set_config call, FROM exactly pg_settings
 * (or pg_catalog.pg_settings; pg_catalog is searched first), WHERE exactly
 * name = '<constant>' with the constant neither role nor
 * session_authorization. Returns 1 and notes the parameter when it holds.
 */
static int
settings_pinned(struct walker *w, const char *tree)
{
	static const char *const allowed[] = {"targetList", "fromClause", "whereClause",
					      "limitOption", "op"};
	json_t *root = json_loads(tree, 0, NULL), *stmts, *sel, *t, *fn, *from, *rv, *wh, *v;
	const char *key, *param = NULL, *s;
	char lname[64];
	int ok = 0;

	stmts = json_object_get(root, "stmts");
	sel = json_object_get(json_object_get(json_array_get(stmts, 0), "stmt"), "SelectStmt");
	if (json_array_size(stmts) != 1 || sel == NULL)
		goto out;
	json_object_foreach(sel, key, v)
	{
		size_t i = 0;

		while (i < sizeof(allowed) / sizeof(allowed[0]) && strcmp(key, allowed[i]) != 0)
			i++;
		if (i == sizeof(allowed) / sizeof(allowed[0]))
			goto out;
	}
	s = json_string_value(json_object_get(sel, "op"));
	t = json_object_get(sel, "targetList");
	fn = json_object_get(
		json_object_get(json_object_get(json_array_get(t, 0), "ResTarget"), "val"),
		"FuncCall");
	from = json_object_get(sel, "fromClause");
	rv = json_object_get(json_array_get(from, 0), "RangeVar");
	wh = json_object_get(json_object_get(sel, "whereClause"), "A_Expr");
	if (s == NULL || strcmp(s, "SETOP_NONE") != 0 || json_array_size(t) != 1 || fn == NULL ||
	    json_array_size(from) != 1 || rv == NULL || wh == NULL)
		goto out;
	/* the call: [pg_catalog.]set_config(name, ...) */
	{
		json_t *names = json_object_get(fn, "funcname");
		size_t nn = json_array_size(names);
		const char *last = json_string_value(json_object_get(
			json_object_get(json_array_get(names, nn - 1), "String"), "sval"));
		const char *first = json_string_value(json_object_get(
			json_object_get(json_array_get(names, 0), "String"), "sval"));
		json_t *f = json_object_get(
			json_object_get(json_array_get(json_object_get(fn, "args"), 0),
					"ColumnRef"),
			"fields");

		if (nn < 1 || nn > 2 || last == NULL || strcmp(last, "set_config") != 0 ||
		    (nn == 2 && (first == NULL || strcmp(first, "pg_catalog") != 0)) ||
		    json_array_size(f) != 1 ||
		    json_string_value(json_object_get(
			    json_object_get(json_array_get(f, 0), "String"), "sval")) == NULL ||
		    strcmp(json_string_value(json_object_get(
				   json_object_get(json_array_get(f, 0), "String"), "sval")),
			   "name") != 0)
			goto out;
	}
	/* FROM [pg_catalog.]pg_settings */
	s = json_string_value(json_object_get(rv, "relname"));
	if (s == NULL || strcmp(s, "pg_settings") != 0 || json_object_get(rv, "catalogname") ||
	    ((v = json_object_get(rv, "schemaname")) != NULL &&
	     (json_string_value(v) == NULL || strcmp(json_string_value(v), "pg_catalog") != 0)))
		goto out;
	/* WHERE name = 'constant' */
	{
		json_t *op =
			json_object_get(json_array_get(json_object_get(wh, "name"), 0), "String");
		json_t *lf = json_object_get(json_object_get(wh, "lexpr"), "ColumnRef");
		json_t *lfs = json_object_get(lf, "fields");
		const char *lcol = json_string_value(
			json_object_get(json_object_get(json_array_get(lfs, 0), "String"), "sval"));

		s = json_string_value(json_object_get(wh, "kind"));
		if (s == NULL || strcmp(s, "AEXPR_OP") != 0 ||
		    json_array_size(json_object_get(wh, "name")) != 1 ||
		    json_string_value(json_object_get(op, "sval")) == NULL ||
		    strcmp(json_string_value(json_object_get(op, "sval")), "=") != 0 ||
		    json_array_size(lfs) != 1 || lcol == NULL || strcmp(lcol, "name") != 0)
			goto out;
		param = json_string_value(json_object_get(
			json_object_get(json_object_get(json_object_get(wh, "rexpr"), "A_Const"),
					"sval"),
			"sval"));
	}
	if (param == NULL || strlen(param) >= sizeof(lname))
		goto out;
	for (size_t i = 0;; i++) {
		lname[i] = (char)tolower((unsigned char)param[i]);
		if (param[i] == '\0')
			break;
	}
	if (strcmp(lname, "role") == 0 || strcmp(lname, "session_authorization") == 0)
		goto out;
	add_str(w, &w->c->set_params, &w->c->nset_params, lname);
	ok = 1;
out:
	json_decref(root);
	return ok;
}

/* The two settings whose value makes a transaction read-write. */
static int
read_only_guc(const char *name)
{
	return name != NULL && (strcasecmp(name, "default_transaction_read_only") == 0 ||
				strcasecmp(name, "transaction_read_only") == 0);
}

/* Whether v is a constant the server reads as true for a boolean setting:
 * on, true, yes, 1 (as a string or a number) or TRUE. Anything else (off,
 * an abbreviation, an expression) is taken as a request for read-write. */
static int
true_const(json_t *v)
{
	json_t *c = json_object_get(v, "A_Const"), *x;
	const char *sv;

	if (c == NULL)
		return 0;
	if ((x = json_object_get(json_object_get(c, "ival"), "ival")) != NULL)
		return json_integer_value(x) == 1;
	if ((x = json_object_get(json_object_get(c, "boolval"), "boolval")) != NULL)
		return json_is_true(x);
	sv = json_string_value(json_object_get(json_object_get(c, "sval"), "sval"));
	return sv != NULL && (strcasecmp(sv, "on") == 0 || strcasecmp(sv, "true") == 0 ||
			      strcasecmp(sv, "yes") == 0 || strcmp(sv, "1") == 0);
}

/* Sets *rw where the tree n asks for read-write transactions (struct
 * sl_sql_class.read_write); *colname where set_config's parameter is the
 * column "name" (settings_pinned() decides). */
static void
read_write_walk(json_t *n, int *rw, int *colname)
{
	const char *key;
	json_t *v;
	size_t i;

	if (json_is_array(n)) {
		json_array_foreach(n, i, v) read_write_walk(v, rw, colname);
		return;
	}
	if (!json_is_object(n))
		return;
	json_object_foreach(n, key, v)
	{
		if (strcmp(key, "DoStmt") == 0 || strcmp(key, "CallStmt") == 0 ||
		    strcmp(key, "LoadStmt") == 0) {
			/* code sluice cannot see that can COMMIT and go on in a
			 * transaction of its own, or load a library */
			*rw = 1;
		} else if (strcmp(key, "VariableSetStmt") == 0) {
			const char *kind = json_string_value(json_object_get(v, "kind"));
			json_t *args = json_object_get(v, "args");

			const char *gname = json_string_value(json_object_get(v, "name"));
			/* SET x = ..., SET x FROM CURRENT. TO DEFAULT and RESET
			 * go back to the reset value: for
			 * default_transaction_read_only that is on, the value
			 * sluice logged in with; transaction_read_only's is its
			 * boot value, off, which a transaction may still take
			 * before its first query (so they ask for read-write) */
			int back = kind != NULL && (strcmp(kind, "VAR_SET_DEFAULT") == 0 ||
						    strcmp(kind, "VAR_RESET") == 0);

			if (read_only_guc(gname) &&
			    !(back && strcasecmp(gname, "default_transaction_read_only") == 0) &&
			    !(!back && json_array_size(args) == 1 &&
			      true_const(json_array_get(args, 0))))
				*rw = 1;
		} else if (strcmp(key, "TransactionStmt") == 0) {
			/* COMMIT / ROLLBACK PREPARED end another transaction's
			 * (read-write) work, and run in a read-only one */
			const char *kind = json_string_value(json_object_get(v, "kind"));

			if (kind != NULL && (strcmp(kind, "TRANS_STMT_COMMIT_PREPARED") == 0 ||
					     strcmp(kind, "TRANS_STMT_ROLLBACK_PREPARED") == 0))
				*rw = 1;
		} else if (strcmp(key, "DefElem") == 0) {
			/* READ WRITE of BEGIN, START TRANSACTION, SET TRANSACTION
			 * and SET SESSION CHARACTERISTICS */
			if (read_only_guc(json_string_value(json_object_get(v, "defname"))) &&
			    !true_const(json_object_get(v, "arg")))
				*rw = 1;
		} else if (strcmp(key, "A_Indirection") == 0 || strcmp(key, "ColumnRef") == 0) {
			/* (expr).dblink_exec and t.dblink_exec: attribute
			 * notation calls (see field_calls()) */
			json_t *f = json_object_get(
				v, strcmp(key, "ColumnRef") == 0 ? "fields" : "indirection");
			size_t j, nf = json_array_size(f);
			json_t *e;

			json_array_foreach(f, j, e)
			{
				const char *sv = json_string_value(
					json_object_get(json_object_get(e, "String"), "sval"));

				if (sv != NULL && strncasecmp(sv, "dblink", 6) == 0 &&
				    (strcmp(key, "A_Indirection") == 0 || (nf >= 2 && j == nf - 1)))
					*rw = 1;
			}
		} else if (strcmp(key, "FuncCall") == 0) {
			json_t *fn = json_object_get(v, "funcname"),
			       *args = json_object_get(v, "args");
			const char *last = json_string_value(json_object_get(
				json_object_get(json_array_get(fn, json_array_size(fn) - 1),
						"String"),
				"sval"));
			json_t *a0 = json_array_get(args, 0);
			const char *name = json_string_value(json_object_get(
				json_object_get(json_object_get(a0, "A_Const"), "sval"), "sval"));

			if (last != NULL && strncmp(last, "dblink", 6) == 0)
				*rw = 1; /* a connection of its own */
			if (last != NULL && strcmp(last, "xpath_table") == 0)
				*rw = 1; /* runs SQL given as strings, read-write */
			if (last != NULL && strcmp(last, "set_config") == 0) {
				if (name != NULL) {
					if (read_only_guc(name) &&
					    !true_const(json_array_get(args, 1)))
						*rw = 1;
				} else if (json_object_get(a0, "ColumnRef") != NULL) {
					*colname = 1;
				} else {
					*rw = 1; /* cannot be told */
				}
			}
		}
		read_write_walk(v, rw, colname);
	}
}

/* struct sl_sql_class.read_write for a parsed text. pinned: the statement
 * is settings_pinned()'s form. Only texts whose tree names the setting,
 * set_config, dblink or holds DO, CALL or LOAD are read again (the JSON holds
 * every name decoded, so U&"" spellings are caught too). */
static int
read_write_asked(const char *tree, const struct sl_sql_class *c, int pinned)
{
	json_t *root;
	int rw = 0, colname = 0;

	if (strcasestr(tree, "transaction_read_only") == NULL &&
	    strstr(tree, "set_config") == NULL && strstr(tree, "\"DoStmt\"") == NULL &&
	    strstr(tree, "\"CallStmt\"") == NULL && strstr(tree, "\"LoadStmt\"") == NULL &&
	    strstr(tree, "dblink") == NULL && strstr(tree, "xpath_table") == NULL &&
	    strstr(tree, "_PREPARED\"") == NULL)
		return 0;
	if ((root = json_loads(tree, 0, NULL)) == NULL)
		return 1; /* out of memory: refuse */
	read_write_walk(root, &rw, &colname);
	json_decref(root);
	if (colname) {
		/* set_config(name, ...) FROM pg_settings WHERE name = '...' */
		if (!pinned)
			rw = 1;
		for (size_t i = 0; i < c->nset_params; i++)
			rw |= read_only_guc(c->set_params[i]);
	}
	return rw;
}

static uint32_t
walk_array(struct walker *w, const char *key)
{
	uint32_t k = 0;
	int first = 1;
	unsigned agg = TA_ALL_T | TA_ALL_F | TA_ARRAY, before;

	w->p++; /* '[' */
	for (;;) {
		ws(w);
		if (w->p >= w->end) {
			w->bad = 1;
			return k;
		}
		if (*w->p == ']') {
			w->p++;
			w->tf = agg;
			return k;
		}
		if (!first) {
			if (*w->p != ',') {
				w->bad = 1;
				return k;
			}
			w->p++;
			ws(w);
		}
		first = 0;
		before = w->rowrefs;
		k |= walk_value(w, key, NULL);
		if (w->bad)
			return k;
		{
			int cols = w->rowrefs != before;
			unsigned t = tf_of(w->tf, cols);

			agg |= (t & TF_T ? TA_ANY_T : 0) | (t & TF_F ? TA_ANY_F : 0);
			agg &= ~((t & TF_T ? 0 : TA_ALL_T) | (t & TF_F ? 0 : TA_ALL_F));
			if (cols)
				agg |= t << 4;
		}
	}
}

static uint32_t
walk_value(struct walker *w, const char *key, const char *node)
{
	uint32_t k = 0;

	ws(w);
	if (w->p >= w->end) {
		w->bad = 1;
		return 0;
	}
	if (++w->depth > MAX_DEPTH) {
		w->bad = 1;
		return 0;
	}
	switch (*w->p) {
	case '{':
		k = walk_object(w, node);
		break;
	case '[':
		k = walk_array(w, key);
		break;
	case '"':
		if (read_string(w, NULL, 0) != 0)
			w->bad = 1;
		w->tf = TF_T | TF_F;
		break;
	default:
		while (w->p < w->end && *w->p != ',' && *w->p != '}' && *w->p != ']')
			w->p++;
		w->tf = TF_T | TF_F;
		break;
	}
	w->depth--;
	return k;
}

int
sl_sql_classify(const char *sql, size_t len, struct sl_sql_class *out)
{
	PgQueryParseResult res;
	struct walker w;
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
	out->kinds = walk_value(&w, NULL, NULL);
	if (w.locking) {
		/* A locking read updates every table the statement names (all
		 * of them, not only the ones an OF list picks: an alias there
		 * names no table by itself). */
		for (size_t i = 0; i < out->ntables; i++)
			out->table_kinds[i] |= SL_SQL_UPDATE;
	}
	if (w.setcfg_col > 0) {
		pinned = w.setcfg_col == 1 && settings_pinned(&w, res.parse_tree);
		if (!pinned)
			out->kinds |= SL_SQL_GRANT;
	}
	if (!w.bad)
		out->read_write = read_write_asked(res.parse_tree, out, pinned);
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

/* ------------------------------------------------------------ shape cache */

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

/* The shape of sql written to o (room for 2 * len + 1 bytes: '1' becomes
 * '?i'); returns whether a literal was folded. */
static int
shape_into(const char *sql, size_t len, char *o, size_t *outlen)
{
	size_t i = 0, n = 0;
	int folded = 0;

	if (memchr(sql, '\0', len) != NULL || names_literal_dependent(sql, len))
		goto exact;
	while (i < len) {
		unsigned char ch = (unsigned char)sql[i];

		if (shape_plain[ch]) {
			/* what the last branch below does, a run at a time */
			do
				o[n++] = sql[i++];
			while (i < len && shape_plain[(unsigned char)sql[i]]);
			continue;
		}
		if (ch == '\\' || ch >= 0x80 || ch == '\0')
			goto exact;
		if (ch == '-' && i + 1 < len && sql[i + 1] == '-') {
			while (i < len && sql[i] != '\n') {
				if ((unsigned char)sql[i] >= 0x80 || sql[i] == '\\')
					goto exact;
				o[n++] = sql[i++];
			}
			continue;
		}
		if (ch == '/' && i + 1 < len && sql[i + 1] == '*') {
			o[n++] = sql[i++];
			o[n++] = sql[i++];
			for (;;) {
				if (i >= len)
					goto exact; /* unterminated */
				if (sql[i] == '/' && i + 1 < len && sql[i + 1] == '*')
					goto exact; /* nested */
				if ((unsigned char)sql[i] >= 0x80 || sql[i] == '\\')
					goto exact;
				if (sql[i] == '*' && i + 1 < len && sql[i + 1] == '/') {
					o[n++] = sql[i++];
					o[n++] = sql[i++];
					break;
				}
				o[n++] = sql[i++];
			}
			continue;
		}
		if (ch == '"') {
			if (n > 0 && o[n - 1] == '&')
				goto exact; /* U&"..." may spell any name with escapes */
			o[n++] = sql[i++];
			while (i < len && sql[i] != '"')
				o[n++] = sql[i++];
			if (i >= len)
				goto exact;
			o[n++] = sql[i++];
			continue;
		}
		if (ch == '$') {
			/* $1 parameters are fine; anything else may open a
			 * dollar quote. */
			if (i + 1 < len && isdigit((unsigned char)sql[i + 1]) &&
			    !(n > 0 && ident_char((unsigned char)o[n - 1]))) {
				o[n++] = sql[i++];
				while (i < len && isdigit((unsigned char)sql[i]))
					o[n++] = sql[i++];
				if (i < len && ident_char((unsigned char)sql[i]))
					goto exact;
				continue;
			}
			if (n > 0 && ident_char((unsigned char)o[n - 1])) {
				o[n++] = sql[i++]; /* inside an identifier */
				continue;
			}
			goto exact;
		}
		if (ch == '\'') {
			if (n > 0 && ident_char((unsigned char)o[n - 1]))
				goto exact; /* E'', B'', X'', U&'' ... */
			if (n > 0 && o[n - 1] == '&')
				goto exact;
			i++;
			for (;;) {
				if (i >= len || (unsigned char)sql[i] >= 0x80 || sql[i] == '\\')
					goto exact;
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
				goto exact;
			o[n++] = '?';
			o[n++] = 's';
			folded = 1;
			continue;
		}
		if (isdigit(ch) ||
		    (ch == '.' && i + 1 < len && isdigit((unsigned char)sql[i + 1]))) {
			if (n > 0 && (ident_char((unsigned char)o[n - 1]) || o[n - 1] == '.')) {
				/* Digits inside an identifier (t1) or after a dot. */
				o[n++] = sql[i++];
				continue;
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
					goto exact;
				i = j;
				isfloat = 1;
				while (i < len && isdigit((unsigned char)sql[i]))
					i++;
			}
			if (i < len && (ident_char((unsigned char)sql[i]) || sql[i] == '.'))
				goto exact;
			o[n++] = '?';
			o[n++] = isfloat ? 'f' : 'i';
			folded = 1;
			continue;
		}
		if (ch == '?')
			o[n++] = '?'; /* "??": a '?' of the text never reads as a folded "?i" */
		o[n++] = (char)ch;
		i++;
	}
	o[n] = '\0';
	*outlen = n;
	return folded;
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

/* ------------------------------------------------------------ secrets in text */

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
