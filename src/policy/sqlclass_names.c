/*
 * sqlclass_names.c - the functions and objects a statement names: the
 * table of functions whose call is a statement kind of its own, the
 * built-ins that read a table or schema named by a string argument,
 * attribute-notation calls, and the relations and schemas of DROP,
 * COMMENT ON, SECURITY LABEL and other schema-wide statements.
 */
#include "sqlclass_internal.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
int
sl_sql__names_by_argument(const char *fname)
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

/* The relation or schema a sl_sql__names_by_argument() function reads, from its
 * args array (json, len): a string constant, cast or not ('t'::regclass).
 * Anything else (an OID, a column, a parameter, an expression) cannot be
 * told, so the call is do (opaque): refused unless do is allowed. */
uint32_t
sl_sql__argument_names(struct walker *w, int what, const char *json, size_t len)
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
		sl_sql__add_table(w, name, SL_SQL_SELECT);
		k = 0;
	} else if (v != NULL && what == 2 && v[0] != '\0') {
		size_t n = name_clip(v, strlen(v));

		if (n < sizeof(name)) {
			memcpy(name, v, n);
			name[n] = '\0';
			sl_sql__add_str(w, &w->c->schemas, &w->c->nschemas, name);
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
uint32_t
sl_sql__note_call(struct walker *w, char *fname, int call)
{
	const char *dot = strrchr(fname, '.');

	for (char *q = fname; *q; q++)
		*q = (char)tolower((unsigned char)*q);
	if (call)
		sl_sql__add_str(w, &w->c->calls, &w->c->ncalls, fname);
	sl_sql__add_str(w, &w->c->functions, &w->c->nfunctions, fname);
	if (dot)
		sl_sql__add_str(w, &w->c->functions, &w->c->nfunctions, dot + 1);
	return function_kind(dot ? dot + 1 : fname);
}

/* The field names of an A_Indirection ((expr).f, (expr).a.b[1]), from its
 * indirection array (json, len): PostgreSQL reads (expr).f as f(expr)
 * when expr has no field f, for any function of one argument, so each is
 * noted as a call (a field of a composite value is taken for one too:
 * over-refusal, never a bypass). Returns the kinds they amount to. */
uint32_t
sl_sql__field_calls(struct walker *w, const char *json, size_t len)
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
		k |= sl_sql__note_call(w, fname, 1);
	}
	json_decref(a);
	return k;
}

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
		sl_sql__add_str(w, &w->c->schemas, &w->c->nschemas, sv);
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
			sl_sql__add_str(w, &w->c->schemas, &w->c->nschemas, sv);
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
		sl_sql__add_str(w, &w->c->schemas, &w->c->nschemas, "*");
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
void
sl_sql__object_names(struct walker *w, const char *node, const char *json, size_t len)
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
			sl_sql__add_table(w, name, 0);
	}
	json_decref(o);
}
