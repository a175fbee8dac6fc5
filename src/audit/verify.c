/*
 * verify.c - record hashing shared with the writer; chain verification,
 * export and tail; the `sluice audit` command.
 */
#include "sluice/audit.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>

#include "audit_internal.h"
#include "sluice/core.h"

static const char *
col(sqlite3_stmt *st, int i)
{
	const char *s = (const char *)sqlite3_column_text(st, i);

	return s ? s : "";
}

/* A TEXT column's value and its length in bytes (which counts a NUL inside
 * it: strlen would not). */
static const char *
col_len(sqlite3_stmt *st, int i, size_t *len, int *types_ok)
{
	const char *s = col(st, i);

	if (sqlite3_column_type(st, i) != SQLITE_TEXT)
		*types_ok = 0;
	*len = (size_t)sqlite3_column_bytes(st, i);
	return s;
}

void
sl_audit_row_from_stmt(sqlite3_stmt *st, struct sl_audit_row *row)
{
	const char **f[6] = {&row->node,     &row->type,    &row->session,
			     &row->trace_id, &row->span_id, &row->data};

	row->types_ok = sqlite3_column_type(st, 0) == SQLITE_INTEGER &&
			sqlite3_column_type(st, 1) == SQLITE_INTEGER;
	row->seq = (uint64_t)sqlite3_column_int64(st, 0);
	row->ts = sqlite3_column_int64(st, 1);
	for (int i = 0; i < 6; i++)
		*f[i] = col_len(st, 2 + i, &row->len[i], &row->types_ok);
	row->prev_hash = col_len(st, 8, &row->prev_len, &row->types_ok);
	row->hash = col_len(st, 9, &row->hash_len, &row->types_ok);
	row->has_len = 1;
	row->prev_bin = NULL;
}

int
sl_audit_row_hash_is(const struct sl_audit_row *row, const char hex[65])
{
	return row->hash_len == 64 && memcmp(row->hash, hex, 64) == 0;
}

static size_t
put_u64(uint8_t *b, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		b[i] = (uint8_t)(v >> (56 - 8 * i));
	return 8;
}

static size_t
put_str(uint8_t *b, const char *s, size_t n)
{
	put_u64(b, n);
	memcpy(b + 8, s, n);
	return 8 + n;
}

/* Lower-case hex digits only: the writer never stores upper case, so an
 * upper-cased prev_hash is an edit and hashes as text. */
static int
hexval(char c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

static int
unhex(const char *h, uint8_t out[32])
{
	if (strlen(h) != 64)
		return -1;
	for (int i = 0; i < 32; i++) {
		int hi = hexval(h[2 * i]), lo = hexval(h[2 * i + 1]);

		if (hi < 0 || lo < 0)
			return -1;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return 0;
}

void
sl_audit_hash_row(const struct sl_audit_row *row, uint8_t out[32])
{
	const char *f[6] = {row->node,	   row->type,	 row->session,
			    row->trace_id, row->span_id, row->data};
	size_t l[6];

	for (int i = 0; i < 6; i++)
		l[i] = row->has_len ? row->len[i] : strlen(f[i]);
	sl_audit_hash_parts(row->prev_bin, row->prev_hash,
			    row->has_len ? row->prev_len : strlen(row->prev_hash), row->seq,
			    row->ts, f, l, out);
}

void
sl_audit_hash_parts(const uint8_t *prev_bin, const char *prev_hash, size_t prev_len, uint64_t seq,
		    int64_t ts, const char *const f[6], const size_t l[6], uint8_t out[32])
{
	size_t pl = prev_bin ? 0 : prev_len, total = 32 + 16 + 8 + pl, o = 0;
	uint8_t stack[2048], *b = stack;

	for (int i = 0; i < 6; i++)
		total += 8 + l[i];
	if (total > sizeof(stack) && (b = malloc(total)) == NULL) {
		memset(out, 0, 32); /* cannot match any stored hash: reported as edited */
		return;
	}
	/* prev_hash as 32 bytes; one that is not 64 hex digits hashes as text
	 * (so an edit to it shows). */
	if (prev_bin != NULL) {
		memcpy(b, prev_bin, 32);
		o = 32;
	} else if (pl == 64 && unhex(prev_hash, b) == 0) {
		o = 32;
	} else {
		o = put_str(b, prev_hash, pl);
	}
	o += put_u64(b + o, seq);
	o += put_u64(b + o, (uint64_t)ts);
	for (int i = 0; i < 6; i++)
		o += put_str(b + o, f[i], l[i]);
	sl_sha256(b, o, out);
	if (b != stack)
		free(b);
}

int
sl_audit_checkpoint_msg(const char *node, uint64_t seq, const char *hashhex, int64_t ts, char *buf,
			size_t len)
{
	return snprintf(buf, len, "sluice-audit-checkpoint\n%s\n%llu\n%s\n%lld", node,
			(unsigned long long)seq, hashhex, (long long)ts);
}

static int
check_sig(EVP_PKEY *pub, const char *node, uint64_t seq, const char *hash, int64_t ts,
	  const char *sig64)
{
	char msg[256];
	uint8_t sig[128];
	int n = sl_audit_checkpoint_msg(node, seq, hash, ts, msg, sizeof(msg));
	int sl = (int)strlen(sig64), dl, ok;
	EVP_MD_CTX *md;

	/* a message that does not fit was not signed by a writer (its node
	 * name is at most 63 bytes): a bad signature, never a read past msg */
	if (n < 0 || (size_t)n >= sizeof(msg) || sl == 0 || sl > 120 || sl % 4 != 0)
		return 0;
	dl = EVP_DecodeBlock(sig, (const unsigned char *)sig64, sl);
	if (dl < 64)
		return 0;
	md = EVP_MD_CTX_new();
	ok = md && EVP_DigestVerifyInit(md, NULL, NULL, NULL, pub) == 1 &&
	     EVP_DigestVerify(md, sig, 64, (const uint8_t *)msg, (size_t)n) == 1;
	EVP_MD_CTX_free(md);
	return ok;
}

/* A stored checkpoint row (node, seq, hash, ts, sig) has the types the
 * writer stores, and no text column holds a NUL (the signed message and the
 * comparisons would stop at it). */
static int
checkpoint_row_ok(sqlite3_stmt *st)
{
	static const int want[5] = {SQLITE_TEXT, SQLITE_INTEGER, SQLITE_TEXT, SQLITE_INTEGER,
				    SQLITE_TEXT};

	for (int i = 0; i < 5; i++) {
		if (sqlite3_column_type(st, i) != want[i])
			return 0;
		if (want[i] == SQLITE_TEXT &&
		    strlen(col(st, i)) != (size_t)sqlite3_column_bytes(st, i))
			return 0;
	}
	return 1;
}

/* Verifies one checkpoint against the records. */
static int
check_checkpoint(sqlite3 *db, EVP_PKEY *pub, const char *node, uint64_t seq, const char *hash,
		 int64_t ts, const char *sig, uint64_t last_seq, const char *where, char *msg,
		 size_t msglen)
{
	sqlite3_stmt *st;
	int r = 0;

	if (pub != NULL && !check_sig(pub, node, seq, hash, ts, sig)) {
		snprintf(msg, msglen,
			 "%s checkpoint at seq %llu: bad signature (forged or edited?)", where,
			 (unsigned long long)seq);
		return SL_ECORRUPT;
	}
	if (seq > last_seq) {
		snprintf(msg, msglen,
			 "chain truncated: %s checkpoint at seq %llu but the last record is %llu",
			 where, (unsigned long long)seq, (unsigned long long)last_seq);
		return SL_ECORRUPT;
	}
	if (sqlite3_prepare_v2(db, "SELECT hash FROM records WHERE seq = ?", -1, &st, NULL) !=
	    SQLITE_OK)
		return SL_EIO;
	sqlite3_bind_int64(st, 1, (sqlite3_int64)seq);
	if (sqlite3_step(st) != SQLITE_ROW || strcmp(col(st, 0), hash) != 0) {
		snprintf(msg, msglen, "%s checkpoint at seq %llu does not match record %llu", where,
			 (unsigned long long)seq, (unsigned long long)seq);
		r = SL_ECORRUPT;
	}
	sqlite3_finalize(st);
	return r;
}

/* The sidecar at given (which must exist) or else <path>.checkpoints (if it
 * exists), opened before the store is read: its first *len bytes (the
 * lines a gateway still writing had appended then, each after its
 * checkpoint was committed) are checked against the store's snapshot. */
static FILE *
open_sidecar(const char *path, const char *given, off_t *len, char *msg, size_t msglen, int *r)
{
	char buf[4200];
	const char *sidecar = given;
	struct stat sb;
	FILE *f;

	*r = 0;
	if (sidecar == NULL) {
		snprintf(buf, sizeof(buf), "%s.checkpoints", path);
		sidecar = buf;
	}
	f = fopen(sidecar, "r");
	if (f == NULL && given != NULL) {
		snprintf(msg, msglen, "cannot read checkpoint file %s", given);
		*r = SL_EIO;
	}
	*len = f != NULL && fstat(fileno(f), &sb) == 0 ? sb.st_size : 0;
	return f;
}

static int
verify_sidecar(sqlite3 *db, EVP_PKEY *pub, FILE *f, off_t len, const char *sidecar,
	       uint64_t last_seq, unsigned *ncp, char *msg, size_t msglen)
{
	char line[1024];
	int r = 0;

	if (f == NULL)
		return 0;
	/* lines past len were appended after the store's snapshot was taken */
	while (r == 0 && ftello(f) < len && fgets(line, sizeof(line), f) != NULL) {
		if (ftello(f) > len)
			break;
		json_t *o = json_loads(line, 0, NULL);
		const char *node, *hash, *sig;
		json_int_t seq, ts;

		if (o == NULL || json_unpack(o, "{s:s, s:I, s:s, s:I, s:s}", "node", &node, "seq",
					     &seq, "hash", &hash, "ts", &ts, "sig", &sig) != 0) {
			snprintf(msg, msglen, "checkpoint file %s: malformed line", sidecar);
			r = SL_ECORRUPT;
		} else {
			r = check_checkpoint(db, pub, node, (uint64_t)seq, hash, ts, sig, last_seq,
					     "sidecar", msg, msglen);
			(*ncp)++;
		}
		json_decref(o);
	}
	return r;
}

int
sl_audit_verify_store(const char *store_path, const char *pubkey_path, char *msg, size_t msglen,
		      uint64_t *nrecords)
{
	return sl_audit_verify_store_with(store_path, pubkey_path, NULL, msg, msglen, nrecords);
}

int
sl_audit_verify_store_with(const char *store_path, const char *pubkey_path,
			   const char *sidecar_path, char *msg, size_t msglen, uint64_t *nrecords)
{
	sqlite3 *db = NULL;
	sqlite3_stmt *st = NULL;
	EVP_PKEY *pub = NULL;
	uint8_t prev[32] = {0};
	char prevhex[65], hex[65];
	uint64_t expect = 1, n = 0;
	unsigned ncp = 0;
	int r = 0, step;
	FILE *sidef;
	off_t sidelen;
	char sidename[4200];

	if (nrecords)
		*nrecords = 0;
	sidef = open_sidecar(store_path, sidecar_path, &sidelen, msg, msglen, &r);
	if (r != 0)
		return r;
	snprintf(sidename, sizeof(sidename), "%s%s", sidecar_path ? sidecar_path : store_path,
		 sidecar_path ? "" : ".checkpoints");
	if (access(store_path, R_OK) != 0) {
		snprintf(msg, msglen, "cannot read audit store %s", store_path);
		r = SL_EIO;
		goto out;
	}
	if (pubkey_path != NULL) {
		FILE *f = fopen(pubkey_path, "r");

		if (f == NULL || (pub = PEM_read_PUBKEY(f, NULL, NULL, NULL)) == NULL) {
			if (f)
				fclose(f);
			snprintf(msg, msglen, "cannot read public key %s", pubkey_path);
			r = SL_EIO;
			goto out;
		}
		fclose(f);
	}
	/* One read transaction: records and checkpoints from one snapshot (a
	 * gateway that writes meanwhile adds both, in one transaction). */
	if (sqlite3_open_v2(store_path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK ||
	    sqlite3_exec(db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(db,
			       "SELECT seq, ts, node, type, session, trace_id, span_id, data, "
			       "prev_hash, hash FROM records ORDER BY seq",
			       -1, &st, NULL) != SQLITE_OK) {
		snprintf(msg, msglen, "cannot read audit store %s: %s", store_path,
			 db ? sqlite3_errmsg(db) : "open failed");
		r = SL_EIO;
		goto out;
	}
	sl_hex(prev, 32, prevhex);
	while ((step = sqlite3_step(st)) == SQLITE_ROW) {
		struct sl_audit_row row;
		uint8_t h[32];

		sl_audit_row_from_stmt(st, &row);
		if (row.seq != expect) {
			if (row.seq > expect)
				snprintf(msg, msglen, "record seq %llu missing (deleted?)",
					 (unsigned long long)expect);
			else
				snprintf(msg, msglen, "records out of order at seq %llu",
					 (unsigned long long)row.seq);
			r = SL_ECORRUPT;
			goto out;
		}
		if (!row.types_ok) {
			snprintf(msg, msglen,
				 "record seq %llu: a column holds a value of the wrong type "
				 "(edited?)",
				 (unsigned long long)row.seq);
			r = SL_ECORRUPT;
			goto out;
		}
		sl_audit_hash_row(&row, h);
		sl_hex(h, 32, hex);
		if (row.prev_len != 64 || memcmp(row.prev_hash, prevhex, 64) != 0) {
			snprintf(msg, msglen,
				 "record seq %llu: previous-hash link broken (reordered, replaced "
				 "or "
				 "an earlier record deleted?)",
				 (unsigned long long)row.seq);
			r = SL_ECORRUPT;
			goto out;
		}
		if (!sl_audit_row_hash_is(&row, hex)) {
			snprintf(msg, msglen, "record seq %llu: hash mismatch (edited?)",
				 (unsigned long long)row.seq);
			r = SL_ECORRUPT;
			goto out;
		}
		memcpy(prevhex, hex, sizeof(hex));
		expect++;
		n++;
	}
	if (step != SQLITE_DONE) {
		snprintf(msg, msglen, "cannot read audit store: %s", sqlite3_errmsg(db));
		r = SL_EIO;
		goto out;
	}
	sqlite3_finalize(st);
	st = NULL;
	if (sqlite3_prepare_v2(db, "SELECT node, seq, hash, ts, sig FROM checkpoints ORDER BY id",
			       -1, &st, NULL) != SQLITE_OK) {
		/* the writer creates it with the records table */
		snprintf(msg, msglen, "cannot read the checkpoints table (dropped?): %s",
			 sqlite3_errmsg(db));
		r = SL_ECORRUPT;
		goto out;
	} else {
		while (r == 0 && sqlite3_step(st) == SQLITE_ROW) {
			if (!checkpoint_row_ok(st)) {
				snprintf(
					msg, msglen,
					"stored checkpoint %u: a column holds a value of the wrong "
					"type or a NUL (edited?)",
					ncp + 1);
				r = SL_ECORRUPT;
				break;
			}
			r = check_checkpoint(db, pub, col(st, 0),
					     (uint64_t)sqlite3_column_int64(st, 1), col(st, 2),
					     sqlite3_column_int64(st, 3), col(st, 4), n, "stored",
					     msg, msglen);
			ncp++;
		}
		if (r != 0)
			goto out;
	}
	if ((r = verify_sidecar(db, pub, sidef, sidelen, sidename, n, &ncp, msg, msglen)) != 0)
		goto out;
	if (n > 0 && ncp == 0) {
		/* The writer stores its first records with a checkpoint, in
		 * one transaction: records and none means they were deleted,
		 * and then the whole chain could have been rewritten. */
		snprintf(msg, msglen,
			 "%llu records but no checkpoint: nothing is signed (checkpoints "
			 "deleted?), so the chain proves nothing",
			 (unsigned long long)n);
		r = SL_ECORRUPT;
		goto out;
	}
	snprintf(msg, msglen, "ok: %llu records, %u checkpoints verified%s, head %s",
		 (unsigned long long)n, ncp, pub ? " with signatures" : "", n ? prevhex : "-");
	if (nrecords)
		*nrecords = n;
out:
	sqlite3_finalize(st);
	sqlite3_close(db); /* ends the read transaction */
	EVP_PKEY_free(pub);
	if (sidef != NULL)
		fclose(sidef);
	return r;
}

/* ------------------------------------------------------------ export/tail */

static json_t *
row_json(const struct sl_audit_row *row)
{
	json_t *o = json_object();
	json_t *d = json_loads(row->data, 0, NULL);

	json_object_set_new(o, "seq", json_integer((json_int_t)row->seq));
	json_object_set_new(o, "ts", json_integer(row->ts));
	json_object_set_new(o, "node", json_string(row->node));
	json_object_set_new(o, "type", json_string(row->type));
	json_object_set_new(o, "session", json_string(row->session));
	json_object_set_new(o, "trace_id", json_string(row->trace_id));
	json_object_set_new(o, "span_id", json_string(row->span_id));
	json_object_set_new(o, "data", d ? d : json_string(row->data));
	json_object_set_new(o, "prev_hash", json_string(row->prev_hash));
	json_object_set_new(o, "hash", json_string(row->hash));
	return o;
}

/* The records of one session and/or trace id (NULL: any), in order; with
 * reloads, also the policy reloads that happened while that session ran
 * (they changed what decided its statements). */
static int
open_records(const char *path, const char *session, const char *trace, int reloads, sqlite3 **db,
	     sqlite3_stmt **st)
{
	static const char plain[] =
		"SELECT seq, ts, node, type, session, trace_id, span_id, data, "
		"prev_hash, hash FROM records WHERE (?1 IS NULL OR session = ?1) "
		"AND (?2 IS NULL OR trace_id = ?2) ORDER BY seq";
	static const char with_reloads[] =
		"SELECT seq, ts, node, type, session, trace_id, span_id, data, prev_hash, hash "
		"FROM records WHERE ((?1 IS NULL OR session = ?1) AND (?2 IS NULL OR trace_id = "
		"?2)) "
		"OR (type = 'policy_reload' AND seq BETWEEN "
		"(SELECT min(seq) FROM records WHERE (?1 IS NULL OR session = ?1) AND "
		"(?2 IS NULL OR trace_id = ?2)) AND "
		"(SELECT max(seq) FROM records WHERE (?1 IS NULL OR session = ?1) AND "
		"(?2 IS NULL OR trace_id = ?2))) ORDER BY seq";

	if (sqlite3_open_v2(path, db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(*db, reloads ? with_reloads : plain, -1, st, NULL) != SQLITE_OK) {
		fprintf(stderr, "sluice: cannot read %s\n", path);
		return -1;
	}
	if (session)
		sqlite3_bind_text(*st, 1, session, -1, SQLITE_STATIC);
	if (trace)
		sqlite3_bind_text(*st, 2, trace, -1, SQLITE_STATIC);
	return 0;
}

static int
export_jsonl(const char *path, const char *session, const char *trace, FILE *out)
{
	sqlite3 *db = NULL;
	sqlite3_stmt *st = NULL;
	int r = 0;

	if (open_records(path, session, trace, 0, &db, &st) != 0) {
		r = 1;
		goto out;
	}
	while (sqlite3_step(st) == SQLITE_ROW) {
		struct sl_audit_row row;
		json_t *o;
		char *s;

		sl_audit_row_from_stmt(st, &row);
		o = row_json(&row);
		s = json_dumps(o, JSON_COMPACT);
		if (s)
			fprintf(out, "%s\n", s);
		free(s);
		json_decref(o);
	}
out:
	sqlite3_finalize(st);
	sqlite3_close(db);
	return r;
}

static void
print_line(const struct sl_audit_row *row, FILE *out)
{
	json_t *d = json_loads(row->data, 0, NULL);
	time_t t = (time_t)(row->ts / 1000000);
	struct tm tm;
	char when[32];
	const char *subject = NULL, *decision = NULL, *text = NULL, *kind = NULL, *reason = NULL;

	gmtime_r(&t, &tm);
	strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
	if (d) {
		json_t *id = json_object_get(d, "identity");

		subject = json_string_value(json_object_get(d, "subject"));
		if (subject == NULL && id)
			subject = json_string_value(json_object_get(id, "subject"));
		decision = json_string_value(json_object_get(d, "decision"));
		text = json_string_value(json_object_get(d, "text"));
		kind = json_string_value(json_object_get(d, "kind"));
		reason = json_string_value(json_object_get(d, "reason"));
		if (reason == NULL)
			reason = json_string_value(json_object_get(d, "error"));
	}
	fprintf(out, "%6llu %s %-13s %-16s ", (unsigned long long)row->seq, when, row->type,
		row->session);
	sl_fput_safe_cut(out, subject ? subject : "-", 64);
	for (size_t k = strlen(subject ? subject : "-"); k < 10; k++)
		fputc(' ', out);
	if (decision)
		fprintf(out, " %-6s", decision);
	if (kind)
		fprintf(out, " [%s]", kind);
	if (text) {
		fputc(' ', out);
		sl_fput_safe_cut(out, text, 100);
	}
	if (reason) {
		fputs(" (", out);
		sl_fput_safe_cut(out, reason, 200);
		fputc(')', out);
	}
	if (row->trace_id[0])
		fprintf(out, " trace=%s", row->trace_id);
	fputc('\n', out);
	json_decref(d);
}

static int
tail(const char *path, long n, int follow, FILE *out)
{
	sqlite3 *db = NULL;
	sqlite3_stmt *st = NULL;
	uint64_t after = 0;
	int r = 0;

	if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
		fprintf(stderr, "sluice: cannot read %s\n", path);
		return 1;
	}
	sqlite3_busy_timeout(db, 2000);
	if (sqlite3_prepare_v2(db, "SELECT max(seq) FROM records", -1, &st, NULL) == SQLITE_OK &&
	    sqlite3_step(st) == SQLITE_ROW) {
		int64_t m = sqlite3_column_int64(st, 0);

		after = m > n ? (uint64_t)(m - n) : 0;
	}
	sqlite3_finalize(st);
	if (sqlite3_prepare_v2(db,
			       "SELECT seq, ts, node, type, session, trace_id, span_id, data, "
			       "prev_hash, hash FROM records WHERE seq > ? ORDER BY seq",
			       -1, &st, NULL) != SQLITE_OK) {
		r = 1;
		goto out;
	}
	for (;;) {
		sqlite3_reset(st);
		sqlite3_bind_int64(st, 1, (sqlite3_int64)after);
		while (sqlite3_step(st) == SQLITE_ROW) {
			struct sl_audit_row row;

			sl_audit_row_from_stmt(st, &row);
			print_line(&row, out);
			after = row.seq;
		}
		fflush(out);
		if (!follow)
			break;
		usleep(300 * 1000);
	}
out:
	sqlite3_finalize(st);
	sqlite3_close(db);
	return r;
}

/* ------------------------------------------------------------ replay */

/* Where a record's continuation lines start: under its text, past the time
 * and seq columns. */
#define REPLAY_INDENT "                            "

static const char *
jstr(json_t *o, const char *k)
{
	return json_string_value(json_object_get(o, k));
}

/* " label value" (" value" for an empty label), terminal-safe, when the
 * value is there. */
static void
put_field(FILE *out, const char *label, const char *v)
{
	if (v == NULL || v[0] == '\0')
		return;
	if (label[0] != '\0')
		fprintf(out, " %s", label);
	fputc(' ', out);
	sl_fput_safe_cut(out, v, 200);
}

static void
replay_open(FILE *out, json_t *d)
{
	json_t *id = json_object_get(d, "identity"), *g = json_object_get(id, "groups"), *v;
	json_t *sp = json_object_get(d, "startup_parameters");
	size_t i;
	const char *k;

	fputs("session opened by ", out);
	sl_fput_safe_cut(out, jstr(id, "subject") ? jstr(id, "subject") : "?", 200);
	put_field(out, "issuer", jstr(id, "issuer"));
	if (json_array_size(g) > 0) {
		fputs(" groups", out);
		json_array_foreach(g, i, v)
		{
			fputs(i ? "," : " ", out);
			sl_fput_safe_cut(out, json_string_value(v) ? json_string_value(v) : "?",
					 100);
		}
	}
	fputs("\n" REPLAY_INDENT, out);
	if (jstr(d, "connection") != NULL && jstr(d, "connection")[0] != '\0') {
		fputs("connection ", out);
		sl_fput_safe_cut(out, jstr(d, "connection"), 200);
	}
	if (jstr(d, "protocol")) {
		fputs(" (", out);
		sl_fput_safe_cut(out, jstr(d, "protocol"), 32);
		fputc(')', out);
	}
	put_field(out, "from", jstr(d, "client_addr"));
	fprintf(out, " tls %s", json_is_true(json_object_get(d, "tls")) ? "yes" : "no");
	put_field(out, "masking", jstr(d, "masking"));
	if (json_integer_value(json_object_get(d, "upstream_pid")) > 0)
		fprintf(out, "\n" REPLAY_INDENT "upstream pid %lld%s,",
			(long long)json_integer_value(json_object_get(d, "upstream_pid")),
			json_is_true(json_object_get(d, "upstream_reused")) ? " (reused)" : "");
	put_field(out, "login", jstr(d, "upstream_auth"));
	if (json_object_size(sp) > 0) {
		fputs("\n" REPLAY_INDENT "startup", out);
		json_object_foreach(sp, k, v)
		{
			fputc(' ', out);
			sl_fput_safe_cut(out, k, 64);
			fputc('=', out);
			sl_fput_safe_cut(out, json_string_value(v) ? json_string_value(v) : "?",
					 200);
		}
	}
	fputc('\n', out);
}

static void
replay_request(FILE *out, json_t *d)
{
	const char *dec = jstr(d, "decision"), *text = jstr(d, "text");

	fprintf(out, "#%lld %s", (long long)json_integer_value(json_object_get(d, "seq")),
		dec ? dec : "?");
	put_field(out, "", jstr(d, "kind"));
	if (jstr(d, "policy") || jstr(d, "rule")) {
		fputs(" (", out);
		sl_fput_safe_cut(out, jstr(d, "policy") ? jstr(d, "policy") : "-", 100);
		fputc('/', out);
		sl_fput_safe_cut(out, jstr(d, "rule") ? jstr(d, "rule") : "-", 100);
		fputc(')', out);
	}
	if (jstr(d, "message")) {
		fputs(": ", out);
		sl_fput_safe_cut(out, jstr(d, "message"), 300);
	}
	if (text == NULL)
		text = jstr(d, "command") ? jstr(d, "command") : jstr(d, "path");
	if (text != NULL) {
		fputs("\n" REPLAY_INDENT, out);
		sl_fput_safe(out, text, strlen(text), REPLAY_INDENT);
	}
	if (jstr(d, "params")) {
		fputs("\n" REPLAY_INDENT "parameters: ", out);
		sl_fput_safe(out, jstr(d, "params"), strlen(jstr(d, "params")), REPLAY_INDENT);
	}
	fputc('\n', out);
}

static void
replay_result(FILE *out, json_t *d)
{
	json_t *rows = json_object_get(d, "rows"), *m = json_object_get(d, "masked");

	fprintf(out, "#%lld ->", (long long)json_integer_value(json_object_get(d, "seq")));
	if (jstr(d, "sqlstate")) {
		fputs(" ERROR ", out);
		sl_fput_safe_cut(out, jstr(d, "sqlstate"), 8);
		if (jstr(d, "error")) {
			fputc(' ', out);
			sl_fput_safe_cut(out, jstr(d, "error"), 300);
		}
	} else {
		put_field(out, "", jstr(d, "tag"));
	}
	if (json_is_integer(rows) && jstr(d, "sqlstate") == NULL)
		fprintf(out, ", %lld row%s", (long long)json_integer_value(rows),
			json_integer_value(rows) == 1 ? "" : "s");
	fprintf(out, ", %.3f ms",
		(double)json_integer_value(json_object_get(d, "duration_us")) / 1000.0);
	if (json_object_size(m) > 0) {
		char *ms = json_dumps(m, JSON_COMPACT | JSON_SORT_KEYS);

		fputs(", masked ", out);
		if (ms)
			sl_fput_safe_cut(out, ms, 300);
		free(ms);
	}
	fputc('\n', out);
}

static void
replay_review(FILE *out, const char *type, json_t *d)
{
	fputs(type, out);
	put_field(out, "", jstr(d, "id"));
	put_field(out, "by", jstr(d, "approver") ? jstr(d, "approver") : jstr(d, "decided_by"));
	if (strcmp(type, "review_created") == 0) {
		json_t *a = json_object_get(d, "approvers"), *v;
		size_t i;

		fputs(" for", out);
		json_array_foreach(a, i, v)
		{
			fputs(i ? "," : " ", out);
			sl_fput_safe_cut(out, json_string_value(v) ? json_string_value(v) : "?",
					 100);
		}
		fprintf(out, " (%lld needed)",
			(long long)json_integer_value(json_object_get(d, "min_approvals")));
	}
	{
		const char *why =
			jstr(d, "vote_reason") ? jstr(d, "vote_reason") : jstr(d, "reason");

		if (why && why[0]) {
			fputs(": ", out);
			sl_fput_safe_cut(out, why, 300);
		}
	}
	if (strcmp(type, "grant_used") == 0 && jstr(d, "text")) {
		fputs("\n" REPLAY_INDENT, out);
		sl_fput_safe(out, jstr(d, "text"), strlen(jstr(d, "text")), REPLAY_INDENT);
	}
	fputc('\n', out);
}

/* What one session did (or, with trace, everything done under one trace
 * id), in order, for a person: who opened it from where, each statement
 * with its decision and its result, reviews, the close. Statement texts are
 * as stored (masked, secrets redacted) and printed terminal-safe. */
static int
replay(const char *path, const char *session, const char *trace, FILE *out)
{
	sqlite3 *db = NULL;
	sqlite3_stmt *st = NULL;
	int64_t t0 = 0;
	uint64_t n = 0;
	int r = 0;

	if (open_records(path, session, trace, 1, &db, &st) != 0) {
		r = 1;
		goto out;
	}
	while (sqlite3_step(st) == SQLITE_ROW) {
		struct sl_audit_row row;
		json_t *d;
		time_t t;
		struct tm tm;
		char when[32];

		sl_audit_row_from_stmt(st, &row);
		d = json_loads(row.data, 0, NULL);
		if (n++ == 0) {
			t = (time_t)(row.ts / 1000000);
			gmtime_r(&t, &tm);
			strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
			fprintf(out, "%s %s, from %s.%06lldZ (node ", session ? "session" : "trace",
				session ? session : trace, when, (long long)(row.ts % 1000000));
			sl_fput_safe_cut(out, row.node, 100);
			fputs(")\n", out);
			t0 = row.ts;
		}
		fprintf(out, "%+10.3fs  seq %-8llu ", (double)(row.ts - t0) / 1e6,
			(unsigned long long)row.seq);
		if (session == NULL) {
			sl_fput_safe_cut(out, row.session, 40);
			fputc(' ', out);
		}
		if (d == NULL) {
			sl_fput_safe_cut(out, row.type, 64);
			fputs(" (data is not JSON)\n", out);
		} else if (strcmp(row.type, "session_open") == 0) {
			replay_open(out, d);
		} else if (strcmp(row.type, "request") == 0) {
			replay_request(out, d);
		} else if (strcmp(row.type, "result") == 0) {
			replay_result(out, d);
		} else if (strcmp(row.type, "session_close") == 0) {
			fputs("session closed", out);
			if (jstr(d, "reason")) {
				fputs(" (", out);
				sl_fput_safe_cut(out, jstr(d, "reason"), 300);
				fputc(')', out);
			}
			fprintf(out, " after %.3f s\n",
				(double)json_integer_value(json_object_get(d, "duration_ms")) /
					1000.0);
		} else if (strcmp(row.type, "auth_failure") == 0) {
			fputs("login refused", out);
			put_field(out, "from", jstr(d, "client_addr"));
			put_field(out, ":", jstr(d, "reason"));
			fputc('\n', out);
		} else if (strcmp(row.type, "policy_reload") == 0) {
			fprintf(out, "policies reloaded (generation %lld",
				(long long)json_integer_value(json_object_get(d, "generation")));
			put_field(out, "from", jstr(d, "file"));
			put_field(out, "sha256", jstr(d, "file_sha256"));
			fputs("): later statements are decided by them\n", out);
		} else if (strncmp(row.type, "review_", 7) == 0 ||
			   strncmp(row.type, "grant_", 6) == 0) {
			replay_review(out, row.type, d);
		} else {
			char *x = json_dumps(d, JSON_COMPACT);

			sl_fput_safe_cut(out, row.type, 64);
			fputc(' ', out);
			if (x)
				sl_fput_safe_cut(out, x, 500);
			free(x);
			fputc('\n', out);
		}
		json_decref(d);
	}
	if (n == 0) {
		fprintf(stderr, "sluice audit replay: no records for %s %s\n",
			session ? "session" : "trace", session ? session : trace);
		r = 1;
	}
out:
	sqlite3_finalize(st);
	sqlite3_close(db);
	return r;
}

/* Whether the store holds signed checkpoints (in the database or its
 * sidecar): 1 yes, 0 no. Unreadable counts as yes. */
static int
has_checkpoints(const char *path)
{
	char sidecar[4200];
	sqlite3 *db = NULL;
	sqlite3_stmt *st = NULL;
	struct stat sb;
	int r = 1;

	snprintf(sidecar, sizeof(sidecar), "%s.checkpoints", path);
	if (stat(sidecar, &sb) == 0 && sb.st_size > 0)
		return 1;
	if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
	    sqlite3_prepare_v2(db, "SELECT count(*) FROM checkpoints", -1, &st, NULL) ==
		    SQLITE_OK &&
	    sqlite3_step(st) == SQLITE_ROW)
		r = sqlite3_column_int64(st, 0) > 0;
	sqlite3_finalize(st);
	sqlite3_close(db);
	return r;
}

int
sl_audit_cli(int argc, char **argv, const struct sl_config *cfg)
{
	const char *store = cfg->audit.store, *pubkey = NULL, *session = NULL, *trace = NULL;
	const char *sidecar = NULL;
	const char *format = "jsonl", *output = NULL;
	char defpub[4200], msg[512];
	long n = 20;
	int follow = 0, no_verify = 0, rc;
	char *path;
	FILE *out = stdout;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--store") == 0 && i + 1 < argc)
			store = argv[++i];
		else if (strcmp(argv[i], "--pubkey") == 0 && i + 1 < argc)
			pubkey = argv[++i];
		else if (strcmp(argv[i], "--checkpoints") == 0 && i + 1 < argc)
			sidecar = argv[++i];
		else if (strcmp(argv[i], "--session") == 0 && i + 1 < argc)
			session = argv[++i];
		else if (strcmp(argv[i], "--trace") == 0 && i + 1 < argc)
			trace = argv[++i];
		else if (strcmp(argv[i], "--format") == 0 && i + 1 < argc)
			format = argv[++i];
		else if (strcmp(argv[i], "--output") == 0 && i + 1 < argc)
			output = argv[++i];
		else if (strcmp(argv[i], "-n") == 0 && i + 1 < argc)
			n = atol(argv[++i]);
		else if (strcmp(argv[i], "--follow") == 0 || strcmp(argv[i], "-f") == 0)
			follow = 1;
		else if (strcmp(argv[i], "--no-verify") == 0)
			no_verify = 1;
		else {
			fprintf(stderr, "sluice audit: unknown argument %s\n", argv[i]);
			return 2;
		}
	}
	path = sl_audit_store_path(store);
	if (path == NULL) {
		fprintf(stderr, "sluice audit: unsupported store %s\n", store ? store : "(none)");
		return 2;
	}
	if (strcmp(argv[0], "verify") == 0 || (strcmp(argv[0], "replay") == 0 && !no_verify)) {
		uint64_t nrec;

		if (strcmp(argv[0], "replay") == 0 && session == NULL && trace == NULL) {
			fprintf(stderr, "sluice audit replay: give --session ID or --trace ID\n");
			free(path);
			return 2;
		}
		if (pubkey == NULL) {
			snprintf(defpub, sizeof(defpub), "%s/audit-signing.pub",
				 cfg->gateway.data_dir);
			if (access(defpub, R_OK) == 0)
				pubkey = defpub;
		}
		if (pubkey == NULL &&
		    (sidecar != NULL || (access(path, R_OK) == 0 && has_checkpoints(path)))) {
			/* Unsigned, a rewritten chain with matching checkpoint
			 * hashes would pass: never report that as verified. */
			fprintf(stderr,
				"audit verify FAILED: the checkpoints are signed but there is no "
				"public key to check them (%s is missing); pass --pubkey FILE\n",
				defpub);
			free(path);
			return 1;
		}
		rc = sl_audit_verify_store_with(path, pubkey, sidecar, msg, sizeof(msg), &nrec);
		if (rc != 0) {
			/* a transcript from a trail that does not verify would
			 * be shown as if it could be trusted */
			fprintf(stderr, "audit verify FAILED: %s\n", msg);
			free(path);
			return 1;
		}
		if (strcmp(argv[0], "verify") == 0) {
			printf("%s\n", msg);
			free(path);
			return 0;
		}
		printf("audit trail verified: %s\n", msg);
	}
	if (strcmp(argv[0], "replay") == 0) {
		if (session == NULL && trace == NULL) {
			fprintf(stderr, "sluice audit replay: give --session ID or --trace ID\n");
			free(path);
			return 2;
		}
		if (no_verify)
			printf("audit trail NOT verified (--no-verify)\n");
		rc = replay(path, session, trace, stdout);
		free(path);
		return rc;
	}
	if (strcmp(argv[0], "export") == 0) {
		if (strcmp(format, "jsonl") != 0) {
			fprintf(stderr, "sluice audit export: only --format jsonl is supported\n");
			free(path);
			return 2;
		}
		if (output != NULL && (out = fopen(output, "w")) == NULL) {
			fprintf(stderr, "sluice audit export: cannot write %s\n", output);
			free(path);
			return 1;
		}
		rc = export_jsonl(path, session, trace, out);
		if (out != stdout)
			fclose(out);
		free(path);
		return rc;
	}
	if (strcmp(argv[0], "tail") == 0) {
		rc = tail(path, n, follow, stdout);
		free(path);
		return rc;
	}
	free(path);
	fprintf(stderr, "sluice audit: unknown subcommand %s (verify, tail, export, replay)\n",
		argv[0]);
	return 2;
}
