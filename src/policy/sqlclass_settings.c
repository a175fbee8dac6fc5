/*
 * sqlclass_settings.c - settings a statement changes: set_config() read as
 * SET, pg_dump's set_config over pg_settings pinned by its WHERE, and
 * whether a text asks for read-write transactions (struct
 * sl_sql_class.read_write).
 */
#include "sqlclass_internal.h"

#include <ctype.h>
#include <string.h>

/*
 * set_config(name, value, is_local) is SET by another name: like SET ROLE
 * and SET SESSION AUTHORIZATION, set_config('role', ...) changes
 * privileges, so it is a grant; so is a name that is not a string
 * constant (a parameter, a column, an expression: it cannot be told),
 * except for the column name of pg_settings pinned by the WHERE clause
 * (sl_sql__settings_pinned()). w->p is at the args array, which is not consumed.
 * sl_sql_shape() keeps texts naming set_config exact, so the cached kinds
 * never outlive the literal.
 */
uint32_t
sl_sql__set_config_kind(struct walker *w)
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
	sl_sql__add_str(w, &w->c->set_params, &w->c->nset_params, lname);
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
int
sl_sql__settings_pinned(struct walker *w, const char *tree)
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
	sl_sql__add_str(w, &w->c->set_params, &w->c->nset_params, lname);
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
 * column "name" (sl_sql__settings_pinned() decides). */
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
			 * notation calls (see sl_sql__field_calls()) */
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
 * is sl_sql__settings_pinned()'s form. Only texts whose tree names the setting,
 * set_config, dblink or holds DO, CALL or LOAD are read again (the JSON holds
 * every name decoded, so U&"" spellings are caught too). */
int
sl_sql__read_write_asked(const char *tree, const struct sl_sql_class *c, int pinned)
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
