/*
 * sqlclass_walk.c - the recursive-descent walker over libpg_query's JSON
 * parse tree (read as text, without building a DOM): the kinds of every
 * node, the relations, calls and names it meets, and whether each DML
 * condition bounds the target's rows (the TF_* flags).
 */
#include "sqlclass_internal.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sluice/core.h"

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

/* Adds s to the list unless it is there; returns its index, or < 0 (and
 * marks the statement bad) when it cannot be kept. */
int
sl_sql__add_str(struct walker *w, char ***arr, size_t *n, const char *s)
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
void
sl_sql__add_table(struct walker *w, const char *name, uint32_t how)
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
	i = sl_sql__add_str(w, &w->c->tables, &w->c->ntables, name);
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

	if (from_key[0] && sl_sql__scope_init(&sc, obj, w->end, from_key) != 0) {
		w->bad = 1;
		return 0;
	}
	w->scope = from_key[0] ? &sc : strcmp(node, "MergeWhenClause") == 0 ? w->merge.scope : NULL;
	k = walk_value(w, key, NULL);
	w->scope = outer;
	if (from_key[0])
		sl_sql__scope_fini(&sc);
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

/* One object being walked (walk_object()): what its keys said so far. */
struct objwalk {
	const char *node; /* the node type this object is the body of, or NULL */
	uint32_t k;	  /* the kinds found so far */
	char relname[256], schemaname[256], name[256], kindval[64];
	int has_where, is_from, is_program, has_into, has_relation;
	int has_locking;
	int has_values, has_from, setcfg, has_file, insert_source;
	int byarg, target, matched;
	int aexpr;
	int is_count;
	/* an A_Expr's operands and operator: their JSON spans */
	const char *lx, *lxe, *rx, *rxe, *opn, *opne;
	unsigned seen, before;
	const char *obj; /* this object's '{' */
	struct tfacc acc;
	char pending[128]; /* the last key walked, not yet noted in acc */
	/* this object's '{' when it names objects by lists of strings
	 * (sl_sql__object_names()), else NULL */
	const char *objstart;
};

/* Starts the walk of an object of type node (or NULL) at w->p (its '{',
 * not consumed). */
static void
obj_begin(struct walker *w, struct objwalk *o, const char *node)
{
	memset(o, 0, sizeof(*o));
	o->node = node;
	o->target = -1;
	o->aexpr = node != NULL && strcmp(node, "A_Expr") == 0;
	o->seen = w->rowrefs;
	o->obj = w->p;
	o->objstart = node != NULL && (strcmp(node, "DropStmt") == 0 ||
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
		o->insert_source = w->insert_source;
		w->insert_source = 0;
		w->sel_depth++;
	}
	if (node != NULL && (strcmp(node, "ColumnRef") == 0 || strcmp(node, "CurrentOfExpr") == 0))
		w->rowrefs++;
}

/* Reads the next key of an object into key (len bytes), leaving w->p at
 * its value; *first says no key was read before. Returns 1, 0 at the
 * object's end (its '}' consumed), or -1 on malformed JSON. */
static int
next_key(struct walker *w, int *first, char *key, size_t len)
{
	ws(w);
	if (w->p >= w->end)
		return -1;
	if (*w->p == '}') {
		w->p++;
		return 0;
	}
	if (!*first) {
		if (*w->p != ',')
			return -1;
		w->p++;
		ws(w);
	}
	*first = 0;
	if (read_string(w, key, len) != 0)
		return -1;
	ws(w);
	if (w->p >= w->end || *w->p != ':')
		return -1;
	w->p++;
	ws(w);
	return 1;
}

/* The handlers below walk the value of one key of the object o (at w->p).
 * Each returns 0 to go on with the next key, or -1 (w->bad set) when
 * walk_object() must stop there. */

/* "aliasname": a relation's alias; a result column of that name is its
 * whole row (masking: result_rowref). */
static int
walk_alias(struct walker *w, struct objwalk *o)
{
	if (read_string(w, o->name, sizeof(o->name)) != 0) {
		w->bad = 1;
		return -1;
	}
	/* past the list's bound: assume a renaming (masking
	 * then treats the statement as carrying rule columns) */
	if (w->c->naliases < MAX_LIST)
		sl_sql__add_str(w, &w->c->aliases, &w->c->naliases, o->name);
	else
		w->c->col_renames = 1;
	return 0;
}

/* Whether a string under key is kept by read_field(). */
static int
kept_string(const char *key)
{
	return strcmp(key, "relname") == 0 || strcmp(key, "schemaname") == 0 ||
	       strcmp(key, "name") == 0 || strcmp(key, "sval") == 0 || strcmp(key, "str") == 0 ||
	       strcmp(key, "kind") == 0 || strcmp(key, "boolop") == 0 ||
	       strcmp(key, "booltesttype") == 0 || strcmp(key, "action") == 0 ||
	       strcmp(key, "subtype") == 0 || strcmp(key, "commandType") == 0;
}

/* A string kept_string() names: into relname, schemaname, kindval (the
 * operators and kinds) or name; a String node's also into w->lastsval and
 * the ColumnRef fields being collected. */
static int
read_field(struct walker *w, struct objwalk *o, const char *key)
{
	int op = strcmp(key, "kind") == 0 || strcmp(key, "boolop") == 0 ||
		 strcmp(key, "booltesttype") == 0 || strcmp(key, "action") == 0 ||
		 strcmp(key, "subtype") == 0 || strcmp(key, "commandType") == 0;
	char *dst = strcmp(key, "relname") == 0	     ? o->relname
		    : strcmp(key, "schemaname") == 0 ? o->schemaname
		    : op			     ? o->kindval
						     : o->name;
	size_t dl = op ? sizeof(o->kindval) : sizeof(o->name);

	if (read_string(w, dst, dl) != 0) {
		w->bad = 1;
		return -1;
	}
	if (dst == o->name && o->node != NULL && strcmp(o->node, "String") == 0) {
		/* cut to 127 bytes as before; the precision says so to the compiler */
		snprintf(w->lastsval, sizeof(w->lastsval), "%.*s", (int)sizeof(w->lastsval) - 1,
			 o->name);
		if (w->in_fields && w->ncolf < 3)
			memcpy(w->colf[w->ncolf], o->name, sizeof(o->name));
		w->ncolf += w->in_fields;
	}
	return 0;
}

/* A MERGE's "mergeWhenClauses": its WHEN clauses act on the target, as
 * bounded by their own conditions (and the ON, here in has_where). */
static int
walk_merge_clauses(struct walker *w, struct objwalk *o, const char *key)
{
	struct merge_ctx outer = w->merge;
	struct scope sc;

	if (sl_sql__scope_init(&sc, o->obj, w->end, "sourceRelation") != 0) {
		w->bad = 1;
		return -1;
	}
	w->merge.scope = &sc;
	w->merge.target = o->target;
	w->merge.on = o->has_where;
	o->k |= walk_value(w, key, NULL);
	w->merge = outer;
	sl_sql__scope_fini(&sc);
	if (w->bad)
		return -1;
	return 0;
}

/* Notes in o (and w) what the presence of key, or its true value, says. */
static void
note_key(struct walker *w, struct objwalk *o, const char *key)
{
	const char *node = o->node;

	if (strcmp(key, "matched") == 0 && w->end - w->p >= 4 && memcmp(w->p, "true", 4) == 0)
		o->matched = 1;
	if (strcmp(key, "whereClause") == 0)
		o->has_where = 1;
	if (strcmp(key, "intoClause") == 0)
		o->has_into = 1;
	if (strcmp(key, "lockingClause") == 0)
		o->has_locking = w->locking = 1;
	if (strcmp(key, "valuesLists") == 0)
		o->has_values = 1;
	if (strcmp(key, "fromClause") == 0)
		o->has_from = 1;
	if (strcmp(key, "relation") == 0)
		o->has_relation = 1;
	if (strcmp(key, "filename") == 0)
		o->has_file = 1;
	if (node != NULL && strcmp(node, "InsertStmt") == 0 && strcmp(key, "selectStmt") == 0)
		w->insert_source = 1;
	if (strcmp(key, "is_from") == 0 && w->end - w->p >= 4 && memcmp(w->p, "true", 4) == 0)
		o->is_from = 1;
	if (strcmp(key, "is_program") == 0 && w->end - w->p >= 4 && memcmp(w->p, "true", 4) == 0)
		o->is_program = 1;
}

/* A PrepareStmt's "query": the name PREPAREd, with the kinds of its body. */
static int
walk_prepare_query(struct walker *w, struct objwalk *o, const char *key)
{
	uint32_t inner = walk_value(w, key, NULL);
	size_t i = w->c->nprepared;

	o->k |= inner;
	if (o->name[0] && sl_sql__add_str(w, &w->c->prepared, &w->c->nprepared, o->name) >= 0 &&
	    w->c->nprepared > i) {
		uint32_t *pk = realloc(w->c->prepared_kinds, w->c->nprepared * sizeof(uint32_t));

		if (pk == NULL) {
			w->bad = 1;
			return -1;
		}
		w->c->prepared_kinds = pk;
		pk[i] = inner;
	}
	return 0;
}

/* A FuncCall's "funcname": the call, and what its name says of its
 * arguments (set_config, names_by_argument(), count). */
static int
walk_funcname(struct walker *w, struct objwalk *o, const char *key)
{
	char fname[512] = "";

	w->collect = fname;
	w->collect_len = sizeof(fname);
	o->k |= walk_value(w, key, NULL);
	w->collect = NULL;
	if (fname[0]) {
		const char *dot = strrchr(fname, '.');

		o->k |= sl_sql__note_call(w, fname, 1);
		if (strcmp(dot ? dot + 1 : fname, "set_config") == 0) {
			o->setcfg = 1;
			o->k |= SL_SQL_SET;
		}
		o->byarg = sl_sql__names_by_argument(dot ? dot + 1 : fname);
		o->is_count = strcmp(dot ? dot + 1 : fname, "count") == 0;
	}
	return 0;
}

/* An A_Indirection's "indirection": (expr).f is f(expr) for any
 * one-argument function. */
static int
walk_indirection(struct walker *w, struct objwalk *o, const char *key)
{
	const char *start = w->p;

	o->k |= walk_value(w, key, NULL);
	if (w->bad)
		return -1;
	o->k |= sl_sql__field_calls(w, start, (size_t)(w->p - start));
	return 0;
}

/* A ColumnRef's "fields": t.f, where t is a FROM item, is f(t) when t has
 * no column f: the last field may be a call on the row. */
static int
walk_colref_fields(struct walker *w, struct objwalk *o, const char *key)
{
	const char *start = w->p;
	unsigned nf = 0;

	w->lastsval[0] = '\0';
	w->in_fields = 1;
	w->ncolf = 0;
	o->k |= walk_value(w, key, NULL);
	w->in_fields = 0;
	if (w->bad)
		return -1;
	/* another FROM item's column tells no target row
	 * from another: for the bounds, no column at all */
	if (w->scope != NULL) {
		const char *f[3] = {w->colf[0], w->colf[1], w->colf[2]};

		if (sl_sql__scope_other_column(w->scope, f, w->ncolf < 3 ? w->ncolf : 3))
			w->rowrefs = o->seen;
	}
	for (const char *q = start; (q = memmem(q, (size_t)(w->p - q), "{\"String\":", 10)) != NULL;
	     q++)
		nf++;
	if (nf >= 2 && w->lastsval[0]) {
		char fname[sizeof(w->lastsval)];

		memcpy(fname, w->lastsval, sizeof(fname));
		o->k |= sl_sql__note_call(w, fname, 0);
	}
	return 0;
}

/* The "args" of a call that reads a table or schema named by its first
 * argument (sl_sql__names_by_argument()). */
static int
walk_byarg_args(struct walker *w, struct objwalk *o, const char *key)
{
	const char *start = w->p;

	o->k |= walk_value(w, key, NULL);
	if (w->bad)
		return -1;
	o->k |= sl_sql__argument_names(w, o->byarg, start, (size_t)(w->p - start));
	return 0;
}

/* The "relation" of an INSERT, UPDATE, DELETE or MERGE: the statement's
 * target, the table it writes. */
static int
walk_target_relation(struct walker *w, struct objwalk *o, const char *key)
{
	w->target = stmt_kind(o->node);
	w->last_target = -1;
	o->k |= walk_value(w, key, NULL);
	w->target = 0;
	o->target = w->last_target;
	if (w->bad)
		return -1;
	return 0;
}

/* An INSERT's "onConflictClause": ON CONFLICT DO UPDATE updates the
 * target's rows. */
static int
walk_on_conflict(struct walker *w, struct objwalk *o, const char *key)
{
	w->upsert = 0;
	o->k |= walk_value(w, key, "OnConflictClause");
	if (w->bad)
		return -1;
	if (w->upsert && o->target >= 0)
		w->c->table_kinds[o->target] |= SL_SQL_UPDATE;
	w->upsert = 0;
	return 0;
}

/* A SelectStmt's "larg" or "rarg": the arms of a set operation are
 * SELECTs of their own (unwrapped): the leftmost arm's INTO makes the
 * whole statement a CREATE TABLE AS; the arms name no table column of the
 * result. */
static int
walk_set_arm(struct walker *w, struct objwalk *o, const char *key)
{
	w->sel_depth++;
	o->k |= walk_value(w, key, "SelectStmt");
	w->sel_depth--;
	if (w->bad)
		return -1;
	return 0;
}

/* Any other key: its value walked in the context the key gives it (a
 * result list, count()'s arguments, a statement's own result column, a
 * set operation's arm), an A_Expr's operands and operator kept. */
static int
walk_plain(struct walker *w, struct objwalk *o, const char *key)
{
	const char *node = o->node;
	const char *vstart = w->p;
	/* result lists, and what a FROM item makes rows of
	 * (VALUES, a function: LATERAL (VALUES (c)), unnest(c)) */
	int list = strcmp(key, "targetList") == 0 || strcmp(key, "returningList") == 0 ||
		   strcmp(key, "valuesLists") == 0 ||
		   (node != NULL && strcmp(node, "RangeFunction") == 0 &&
		    strcmp(key, "functions") == 0);
	int cnt = o->is_count && strcmp(key, "args") == 0;
	/* a plain column as a result column of the statement's
	 * own SELECT: RowDescription names its table column,
	 * and the rules see it there (not so for RETURNING) */
	int direct = node != NULL && strcmp(node, "ResTarget") == 0 && strcmp(key, "val") == 0 &&
		     w->sel_depth == 1 && (size_t)(w->end - w->p) > 13 &&
		     memcmp(w->p, "{\"ColumnRef\":", 13) == 0;

	/* the arms of a UNION / INTERSECT / EXCEPT: results
	 * of a set operation name no table column */
	int arm = strcmp(key, "larg") == 0 || strcmp(key, "rarg") == 0;

	w->in_target += list;
	w->in_count += cnt;
	w->direct_val += direct;
	w->sel_depth += arm;
	if (is_node_name(key))
		o->k |= walk_value(w, key, key);
	else
		o->k |= walk_value(w, key, NULL);
	w->in_target -= list;
	w->in_count -= cnt;
	w->direct_val -= direct;
	w->sel_depth -= arm;
	if (w->bad)
		return -1;
	if (o->aexpr && strcmp(key, "lexpr") == 0)
		o->lx = vstart, o->lxe = w->p;
	else if (o->aexpr && strcmp(key, "rexpr") == 0)
		o->rx = vstart, o->rxe = w->p;
	else if (o->aexpr && strcmp(key, "name") == 0)
		o->opn = vstart, o->opne = w->p;
	return 0;
}

/* Walks the value of key (at w->p) in the object o: the handler the key
 * and o's node call for. Returns 0, or -1 when walk_object() must stop. */
static int
walk_key(struct walker *w, struct objwalk *o, const char *key)
{
	const char *node = o->node;
	const char *from_key;

	/* (an Alias is written without its node name: its keys tell) */
	if (w->p < w->end && *w->p == '"' && strcmp(key, "aliasname") == 0)
		return walk_alias(w, o);
	if (strcmp(key, "colnames") == 0 || strcmp(key, "aliascolnames") == 0)
		w->c->col_renames = 1;
	/* CREATE VIEW, CREATE MATERIALIZED VIEW */
	if (node != NULL &&
	    (strcmp(node, "ViewStmt") == 0 ||
	     (strcmp(node, "CreateTableAsStmt") == 0 && strcmp(key, "objtype") == 0 &&
	      w->end - w->p >= 16 && memcmp(w->p, "\"OBJECT_MATVIEW\"", 16) == 0)))
		w->c->creates_view = 1;
	if (w->p < w->end && *w->p == '"' && kept_string(key))
		return read_field(w, o, key);
	if ((from_key = condition_scope(node, key)) != NULL) {
		/* A condition that may hold for every row (WHERE true,
		 * WHERE 1=1, WHERE $1, WHERE id = 1 OR true) bounds
		 * nothing, so it counts as no WHERE (see TF_T); nor do
		 * the columns of a FROM / USING item (see scope). */
		o->k |= walk_condition(w, key, node, o->obj, from_key, &o->has_where);
		if (w->bad)
			return -1;
		return 0;
	}
	if (node != NULL && strcmp(node, "MergeStmt") == 0 && strcmp(key, "mergeWhenClauses") == 0)
		return walk_merge_clauses(w, o, key);
	note_key(w, o, key);
	if (node != NULL && strcmp(node, "PrepareStmt") == 0 && strcmp(key, "query") == 0)
		return walk_prepare_query(w, o, key);
	if (node != NULL && strcmp(node, "FuncCall") == 0 && strcmp(key, "funcname") == 0)
		return walk_funcname(w, o, key);
	if (node != NULL && strcmp(node, "A_Indirection") == 0 && strcmp(key, "indirection") == 0)
		return walk_indirection(w, o, key);
	if (node != NULL && strcmp(node, "ColumnRef") == 0 && strcmp(key, "fields") == 0)
		return walk_colref_fields(w, o, key);
	if (o->setcfg && strcmp(key, "args") == 0)
		o->k |= sl_sql__set_config_kind(w);
	if (o->byarg && strcmp(key, "args") == 0)
		return walk_byarg_args(w, o, key);
	if (node != NULL && strcmp(key, "relation") == 0 &&
	    (strcmp(node, "InsertStmt") == 0 || strcmp(node, "UpdateStmt") == 0 ||
	     strcmp(node, "DeleteStmt") == 0 || strcmp(node, "MergeStmt") == 0))
		return walk_target_relation(w, o, key);
	if (node != NULL && strcmp(node, "InsertStmt") == 0 && strcmp(key, "onConflictClause") == 0)
		return walk_on_conflict(w, o, key);
	if (node != NULL && strcmp(node, "SelectStmt") == 0 &&
	    (strcmp(key, "larg") == 0 || strcmp(key, "rarg") == 0))
		return walk_set_arm(w, o, key);
	return walk_plain(w, o, key);
}

/* What the object o, walked to its '}', says of itself: result columns
 * (a * or a column in a result list), its TF_* flags in w->tf, the
 * objects it names by lists of strings and the relation it names. */
static void
obj_end(struct walker *w, struct objwalk *o)
{
	const char *node = o->node;

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
			sl_sql__add_str(w, &w->c->result_cols, &w->c->nresult_cols, w->lastsval);
		else
			w->c->result_star = 1; /* as many as a * (masking: fail closed) */
	}
	if (node != NULL && (strcmp(node, "FetchStmt") == 0 || strcmp(node, "ExecuteStmt") == 0))
		w->c->indirect = 1;
	if (node != NULL && strcmp(node, "ColumnRef") == 0 && w->in_target > 0 && !w->in_count &&
	    !w->direct_val && w->lastsval[0])
		sl_sql__add_str(w, &w->c->target_cols, &w->c->ntarget_cols, w->lastsval);
	if (node != NULL && strcmp(node, "SelectStmt") == 0)
		w->sel_depth--;
	w->tf = w->rowrefs == o->seen ? TF_T | TF_F : tf_node(node, o->kindval, &o->acc);
	if (o->aexpr) {
		unsigned same =
			tf_same_column(o->kindval, o->lx, o->lxe, o->rx, o->rxe, o->opn, o->opne);

		if (same)
			w->tf = same;
	}
	if (o->objstart != NULL)
		sl_sql__object_names(w, node, o->objstart, (size_t)(w->p - o->objstart));
	if (o->relname[0]) {
		char t[520];

		if (o->schemaname[0])
			snprintf(t, sizeof(t), "%s.%s", o->schemaname, o->relname);
		else
			snprintf(t, sizeof(t), "%s", o->relname);
		sl_sql__add_table(w, t, w->target ? w->target : SL_SQL_SELECT);
	}
}

/* The kinds of a clause (an object of type o->node, not a statement) that
 * acts on the statement's target: ON CONFLICT DO UPDATE, an ALTER TABLE
 * subcommand, a MERGE's WHEN clause. */
static void
clause_kinds(struct walker *w, struct objwalk *o)
{
	const char *node = o->node;

	if (strcmp(node, "OnConflictClause") == 0 && strcmp(o->kindval, "ONCONFLICT_UPDATE") == 0) {
		/* an upsert updates every conflicting row: with no WHERE
		 * (or one that bounds nothing) that may be every row, since
		 * the rows inserted may come from the table itself */
		w->upsert = 1;
		o->k |= SL_SQL_UPDATE | (o->has_where ? 0 : SL_SQL_UPDATE_ALL);
	}
	if (strcmp(node, "AlterTableCmd") == 0)
		o->k |= alter_table_cmd_kind(o->kindval);
	if (strcmp(node, "MergeWhenClause") == 0)
		o->k |= merge_action(w, o->kindval, o->matched, o->has_where);
}

/* A VariableSetStmt: the parameter SET or RESET; SET ROLE / SESSION
 * AUTHORIZATION change privileges. */
static void
variable_set(struct walker *w, struct objwalk *o)
{
	char lname[256];
	size_t i;

	for (i = 0; o->name[i] && i + 1 < sizeof(lname); i++)
		lname[i] = (char)tolower((unsigned char)o->name[i]);
	lname[i] = '\0';
	if (strcmp(o->kindval, "VAR_RESET_ALL") == 0)
		sl_sql__add_str(w, &w->c->set_params, &w->c->nset_params, "all");
	else if (lname[0])
		sl_sql__add_str(w, &w->c->set_params, &w->c->nset_params, lname);
	/* SET ROLE / SESSION AUTHORIZATION change privileges. */
	if (strcmp(lname, "role") == 0 || strcmp(lname, "session_authorization") == 0)
		o->k |= SL_SQL_GRANT;
}

/* The kinds of a statement (o->node ends in "Stmt") from what its keys
 * said: its own kind, and what its WHERE, INTO, locking, COPY options,
 * transaction kind, EXECUTE or SET add. */
static void
stmt_kinds(struct walker *w, struct objwalk *o)
{
	const char *node = o->node;

	/* The VALUES list of INSERT ... VALUES reads nothing; a VALUES
	 * statement of its own is a query (it runs whatever it calls). */
	if (!(strcmp(node, "SelectStmt") == 0 && o->has_values && !o->has_from && o->insert_source))
		o->k |= stmt_kind(node);
	if (strcmp(node, "UpdateStmt") == 0 && !o->has_where)
		o->k |= SL_SQL_UPDATE_ALL;
	if (strcmp(node, "DeleteStmt") == 0 && !o->has_where)
		o->k |= SL_SQL_DELETE_ALL;
	if (strcmp(node, "SelectStmt") == 0 && o->has_into)
		o->k |= SL_SQL_DDL;
	/* SELECT ... FOR UPDATE / NO KEY UPDATE / SHARE / KEY SHARE locks
	 * rows until the transaction ends (writers wait), and PostgreSQL asks
	 * UPDATE privilege for it: an update (here, so that a PREPARE keeps it
	 * for its EXECUTE; the tables are marked at the end) */
	if (strcmp(node, "SelectStmt") == 0 && o->has_locking)
		o->k |= SL_SQL_UPDATE;
	if (strcmp(node, "CopyStmt") == 0) {
		o->k &= ~SL_SQL_UTILITY;
		o->k |= o->is_from ? SL_SQL_COPY_FROM : SL_SQL_COPY_TO;
		/* A file is read or written by the server itself, like a
		 * program it runs: the same danger, the same kind. */
		if (o->is_program || o->has_file)
			o->k |= SL_SQL_COPY_PROGRAM;
		(void)o->has_relation;
	}
	/* two-phase commit: PREPARE TRANSACTION keeps locks across
	 * disconnects and restarts; COMMIT / ROLLBACK PREPARED end any
	 * session's prepared work (one vaulted role serves many agents) */
	if (strcmp(node, "TransactionStmt") == 0 &&
	    (strcmp(o->kindval, "TRANS_STMT_PREPARE") == 0 ||
	     strcmp(o->kindval, "TRANS_STMT_COMMIT_PREPARED") == 0 ||
	     strcmp(o->kindval, "TRANS_STMT_ROLLBACK_PREPARED") == 0))
		o->k |= SL_SQL_UTILITY;
	if (strcmp(node, "ExecuteStmt") == 0 && o->name[0])
		sl_sql__add_str(w, &w->c->executed, &w->c->nexecuted, o->name);
	if (strcmp(node, "VariableSetStmt") == 0)
		variable_set(w, o);
}

/* Walks an object. node: the node type this object is the body of (or
 * NULL). Returns the kinds found in it; malformed JSON sets w->bad. */
static uint32_t
walk_object(struct walker *w, const char *node)
{
	struct objwalk o;
	int first = 1;

	obj_begin(w, &o, node);
	w->p++; /* '{' */
	for (;;) {
		char key[128];
		int r;

		if (o.pending[0]) {
			tf_note(&o.acc, o.pending, w->tf, w->rowrefs != o.before);
			o.pending[0] = '\0';
		}
		r = next_key(w, &first, key, sizeof(key));
		if (r < 0) {
			w->bad = 1;
			return o.k;
		}
		if (r == 0)
			break;
		memcpy(o.pending, key, strlen(key) + 1); /* key is shorter than pending */
		o.before = w->rowrefs;
		w->tf = TF_T | TF_F;
		if (walk_key(w, &o, key) != 0)
			return o.k;
	}
	obj_end(w, &o);
	if (node == NULL)
		return o.k;
	if (strcmp(node, "String") == 0 && w->collect != NULL && o.name[0]) {
		size_t l = strlen(w->collect);

		snprintf(w->collect + l, w->collect_len - l, "%s%s", l ? "." : "", o.name);
		return o.k;
	}
	clause_kinds(w, &o);
	if (!ends_with(node, "Stmt"))
		return o.k;
	stmt_kinds(w, &o);
	return o.k;
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

uint32_t
sl_sql__walk(struct walker *w)
{
	return walk_value(w, NULL, NULL);
}
