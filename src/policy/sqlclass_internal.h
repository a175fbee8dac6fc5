/*
 * sqlclass_internal.h - shared by the pieces of SQL classification: the
 * entry points (sqlclass.c), the JSON walker (sqlclass_walk.c), the FROM
 * scopes of DML conditions (sqlclass_scope.c), the function and object
 * name tables (sqlclass_names.c) and set_config / read-write detection
 * (sqlclass_settings.c). Not installed.
 */
#ifndef SLUICE_SQLCLASS_INTERNAL_H
#define SLUICE_SQLCLASS_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "sluice/sqlclass.h"

#define MAX_DEPTH 1000
/* Distinct names per list (tables, functions, ...). More is refused as too
 * complex rather than cut short: a name left off a list is a name no block
 * or review rule can see (256 CTE names, then the protected table). */
#define MAX_LIST 1024

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

/* sqlclass_walk.c */
int sl_sql__add_str(struct walker *w, char ***arr, size_t *n, const char *s);
void sl_sql__add_table(struct walker *w, const char *name, uint32_t how);
/* Walks the parse tree (JSON) at w->p; returns the kinds of every node. */
uint32_t sl_sql__walk(struct walker *w);

/* sqlclass_redact.c: lexing as the server does, for the pre-checks too.
 * End (index past the closing quote) of the literal or quoted name at i
 * with quote q (doubled quotes inside; backslash escapes when esc;
 * unterminated: len, *open set), and the length of the dollar-quote tag
 * at i ("$$" or "$name$"), else 0. */
size_t sl_sql__quoted_end(const char *s, size_t len, size_t i, char q, int esc, int *open);
size_t sl_sql__dollar_tag(const char *s, size_t len, size_t i);

/* sqlclass_scope.c */
int sl_sql__scope_init(struct scope *sc, const char *obj, const char *end, const char *from_key);
void sl_sql__scope_fini(struct scope *sc);
int sl_sql__scope_other_column(const struct scope *sc, const char *const *f, size_t n);

/* sqlclass_names.c */
int sl_sql__names_by_argument(const char *fname);
uint32_t sl_sql__argument_names(struct walker *w, int what, const char *json, size_t len);
uint32_t sl_sql__note_call(struct walker *w, char *fname, int call);
uint32_t sl_sql__field_calls(struct walker *w, const char *json, size_t len);
void sl_sql__object_names(struct walker *w, const char *node, const char *json, size_t len);

/* sqlclass_settings.c */
uint32_t sl_sql__set_config_kind(struct walker *w);
int sl_sql__settings_pinned(struct walker *w, const char *tree);
int sl_sql__read_write_asked(const char *tree, const struct sl_sql_class *c, int pinned);

#endif
