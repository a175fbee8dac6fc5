/*
 * sqlclass.h - SQL statement classification over libpg_query's parse tree
 * (PostgreSQL 15 grammar), and a bounded per-thread cache keyed by the
 * statement's shape (literals skipped).
 */
#ifndef SLUICE_SQLCLASS_H
#define SLUICE_SQLCLASS_H

#include <stddef.h>
#include <stdint.h>

enum sl_sql_kind {
	SL_SQL_SELECT = 1u << 0,
	SL_SQL_INSERT = 1u << 1,
	SL_SQL_UPDATE = 1u << 2,
	SL_SQL_DELETE = 1u << 3,
	SL_SQL_MERGE = 1u << 4,
	SL_SQL_UPDATE_ALL = 1u << 5,
	SL_SQL_DELETE_ALL = 1u << 6,
	SL_SQL_DDL = 1u << 7,
	SL_SQL_DROP = 1u << 8,
	SL_SQL_TRUNCATE = 1u << 9,
	SL_SQL_GRANT = 1u << 10,
	SL_SQL_COPY_FROM = 1u << 11,
	SL_SQL_COPY_TO = 1u << 12,
	SL_SQL_COPY_PROGRAM = 1u << 13,
	SL_SQL_ALTER_SYSTEM = 1u << 14,
	SL_SQL_DO = 1u << 15,
	SL_SQL_CALL = 1u << 16,
	SL_SQL_SET = 1u << 17,
	SL_SQL_TRANSACTION = 1u << 18,
	SL_SQL_UTILITY = 1u << 19,
	SL_SQL_PREPARE = 1u << 20,
	SL_SQL_EXECUTE = 1u << 21,
	SL_SQL_UNPARSEABLE = 1u << 31,
};

/* Maps a vocabulary word ("select", "delete_all", ...) to its bit; 0 if unknown. */
uint32_t sl_sql_kind_from_name(const char *name);
/* Writes a "select,delete" list of the kinds into buf. */
void sl_sql_kinds_str(uint32_t kinds, char *buf, size_t len);

struct sl_sql_class {
	uint32_t kinds; /* union over every statement and subtree */
	unsigned nstatements;
	char **functions; /* lowercased; qualified calls appear both as "schema.f" and "f" */
	size_t nfunctions;
	char **calls; /* the same calls, each once as written ("schema.f" or "f") */
	size_t ncalls;
	char **tables; /* "schema.table" or "table", as the parser normalised them */
	/* per table: SL_SQL_SELECT where it is read, and the DML kind (insert,
	 * update, delete, merge) where it is the statement's target */
	uint32_t *table_kinds;
	size_t ntables;
	/* schemas acted on as a whole (DROP SCHEMA, ALTER SCHEMA, GRANT ... ON
	 * ALL TABLES IN SCHEMA); "*" for every schema (DROP/REASSIGN OWNED) */
	char **schemas;
	size_t nschemas;
	char **prepared;	  /* names PREPAREd by this text ... */
	uint32_t *prepared_kinds; /* ... and the kinds of their bodies */
	size_t nprepared;
	char **executed; /* names EXECUTEd */
	size_t nexecuted;
	char **set_params; /* parameters SET/RESET, lowercased; "all" for RESET ALL */
	size_t nset_params;
	/* columns (last part of the name) referenced inside a result list
	 * (SELECT list, RETURNING) at any depth, except as count()'s argument:
	 * the values an expression in a result may carry */
	char **target_cols;
	size_t ntarget_cols;
	/* every column named in a result list, a plain one too (what a
	 * CREATE TABLE AS, CREATE VIEW or INSERT ... SELECT copies), and
	 * whether one holds a * (all of a table's columns) */
	char **result_cols;
	size_t nresult_cols;
	int result_star;
	/* relation aliases (FROM t AS a), and whether a column list renames a
	 * relation's or a CTE's columns (FROM t AS a(x, y), WITH c(x) AS) */
	char **aliases;
	size_t naliases;
	int col_renames;
	int indirect;	  /* FETCH or EXECUTE: its rows come from a statement run earlier */
	int creates_view; /* CREATE VIEW or CREATE MATERIALIZED VIEW */
	/* asks for read-write transactions: SET (or set_config) of
	 * default_transaction_read_only or transaction_read_only to anything
	 * but on/true/yes/1, READ WRITE in BEGIN, START TRANSACTION, SET
	 * TRANSACTION or SET SESSION CHARACTERISTICS, a set_config whose
	 * parameter cannot be told, or code that can leave the transaction:
	 * DO and CALL (they may COMMIT and go on read-write), LOAD, dblink (a
	 * connection of its own). Connection key read_only refuses these. */
	int read_write;
	char *error; /* parse error, or NULL */
};

#define SL_SQL_MAX_TEXT (1u << 20)

/* Classifies sql (len bytes, need not be NUL-terminated). Returns 0 (also for
 * unparseable input, which gets SL_SQL_UNPARSEABLE) or SL_ENOMEM. */
int sl_sql_classify(const char *sql, size_t len, struct sl_sql_class *out);
void sl_sql_class_fini(struct sl_sql_class *c);

/* Bounded cache, one per worker thread (not thread-safe). Statements that
 * differ only in numeric and plain string literals share an entry; a text
 * the shape lexer cannot prove it reads like PostgreSQL (backslashes, E''
 * or dollar quotes, non-ASCII bytes, nested comments, literals glued to
 * identifiers ...) is keyed by its exact text. The full key is stored, so
 * hash collisions cannot mix entries. *out is borrowed until the next call. */
struct sl_sql_cache;
struct sl_sql_cache *sl_sql_cache_new(size_t capacity);
void sl_sql_cache_free(struct sl_sql_cache *c);
int sl_sql_cache_classify(struct sl_sql_cache *c, const char *sql, size_t len,
			  const struct sl_sql_class **out);
/* Shape of sql into out (owned); returns 1 if literals were folded, 0 if the
 * exact text is the key. Exposed for tests. */
int sl_sql_shape(const char *sql, size_t len, char **out, size_t *outlen);

/* Overwrites with '*', in place and length-preserving, the contents of the
 * string literals that give a secret by name: a literal right after a word
 * ending in password, passwd, passphrase, secret or token (an '=' or TO
 * between allowed), so CREATE/ALTER ROLE ... PASSWORD '...', OPTIONS
 * (password '...') of a server or user mapping, SET x.password TO '...'
 * and WHERE api_token = '...' are stored and shown without the value; and
 * the password of a URL with credentials (scheme://user:password@host) in
 * any literal. Lexes like the server with
 * standard_conforming_strings on ('...', E'...', U&'...', $tag$...$tag$,
 * quoted names, nested comments); a literal it cannot bound for sure (a
 * backslash in a plain one, an unterminated one) is redacted to the end of
 * the text. Returns how many literals it redacted. */
size_t sl_sql_redact_secrets(char *sql, size_t len);

#endif
