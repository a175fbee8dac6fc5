/*
 * audit.c - audit writer. A record is durable once it is in the journal (a
 * shared mapping: a memory copy, made by the request's own thread when no
 * one else is writing, with its seq and time); the request waiting for it is
 * told so then. The writer thread chains the hashes and inserts what was
 * journaled into SQLite in one transaction per batch (group commit), off
 * the requests' path.
 */
#include "sluice/audit.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <sqlite3.h>

#include "audit_internal.h"
#include "sluice/core.h"

#define QUEUE_MAX 65536
/* Journaled records not yet in SQLite. A store that stalls (a disk that
 * hangs, a lock held elsewhere) must not let them pile up in memory and in
 * the journal without end: past this many, requests that wait for their
 * record are refused (fail closed) until the store catches up. SQLite takes
 * hundreds of thousands of rows a second, so a healthy store never gets
 * near it. */
#define INGEST_MAX 65536
#define INS_ROWS   16 /* records per multi-row INSERT */

struct rec {
	struct rec *next;
	char *type, *session, *trace, *span;
	char *data;
	/* lengths of type, session, trace, span, data */
	size_t len[5];
	unsigned plain; /* bit i: id i needs no JSON escaping */
	sl_audit_done_fn done;
	void *arg;
	/* assigned when journaled */
	uint64_t seq;
	int64_t ts;
	/* chained by the writer before it is stored (chain_batch) */
	int chained;
	char prev[65], hash[65];
	uint8_t hbin[32];
};

/* One of the two journal files. Appends go to one; once it is half a
 * chunk, appends move to the other (if that one is empty) and the writer
 * empties this one when everything in it is stored: SQLite is never
 * written with appends held off. */
struct journal {
	char *path;
	int fd;
	off_t size;	   /* bytes of records in it */
	uint8_t *map;	   /* mapped shared: appends are memory copies */
	size_t cap;	   /* mapped (and allocated) bytes */
	uint64_t last_seq; /* the last record appended since it was emptied (0: none) */
};

struct sl_audit {
	char *path;
	char *sidecar;
	char node[64];
	int strict;
	sqlite3 *db;
	sqlite3_stmt *ins;  /* one record */
	sqlite3_stmt *insn; /* INS_ROWS records: fewer statement runs per batch */
	/* per statement (ins, insn): bit 2i+k set while row i's trace id (k=0)
	 * or span id (k=1) is bound to empty_id (bindings outlive resets) */
	uint32_t empty_bound[2];
	sqlite3_stmt *ins_cp;
	sqlite3_stmt *begin, *commit, *rollback;
	EVP_PKEY *key;
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	pthread_mutex_t wmu;	   /* seq + journal: the writer thread or an inline leader */
	pthread_mutex_t imu;	   /* SQLite connection and the chain head (last) */
	struct rec *ihead, *itail; /* journaled, not yet in SQLite (under mu) */
	size_t ingest;
	struct journal j[2];
	int jact; /* appends go to j[jact] (under wmu) */
	uint64_t stored_seq;
	uint8_t stored_hash[32];
	struct rec *head, *tail;
	size_t queued;
	int stop;
	int failed;
	uint64_t seq;	  /* the last seq journaled (under wmu) */
	uint8_t last[32]; /* the hash of the last record chained (under imu) */
	uint64_t since_cp;
	uint64_t cp_every;
	int64_t cp_interval_us;
	int64_t last_cp_us;
	uint64_t last_cp_seq;
	size_t node_len;
	char node_json[6 * 64 + 3]; /* node as a JSON string */
	size_t node_json_len;
	struct sl_buf jline; /* journal lines being built (under wmu), kept */
	int jfailed;	     /* the last journal write failed (under wmu) */
	char store_err[160]; /* why the last store failed (under imu) */
	char cp_line[600];   /* the sidecar line of a checkpoint not committed yet */
};

char *
sl_audit_store_path(const char *store)
{
	if (store == NULL)
		return NULL;
	if (strncmp(store, "sqlite:", 7) == 0)
		return strdup(store + 7);
	if (strstr(store, "://") != NULL)
		return NULL;
	return strdup(store);
}

/* Bytes that leave a plain run: controls, '"', '\\', DEL and every
 * byte >= 0x80 (checked as UTF-8 below). */
static const uint8_t json_special[256] = {
	[0 ... 0x1f] = 1,
	['"'] = 1,
	['\\'] = 1,
	[0x7f ... 0xff] = 1,
};

/* The first byte in [p, end) that leaves a plain run, or end. Eight bytes
 * at a time: a byte is special if it is below 0x20, is '"', '\\' or DEL,
 * or has its top bit set (the word tests can flag a byte above a special
 * one too, never miss one; the byte loop then finds the exact place). */
static const unsigned char *
plain_run(const unsigned char *p, const unsigned char *end)
{
	const uint64_t ones = 0x0101010101010101ull, high = 0x8080808080808080ull;

	while (end - p >= 8) {
		uint64_t x, q, b, d;

		memcpy(&x, p, 8);
		q = x ^ (ones * '"');
		b = x ^ (ones * '\\');
		d = x ^ (ones * 0x7f);
		if ((x | ((x - ones * 0x20) & ~x) | ((q - ones) & ~q) | ((b - ones) & ~b) |
		     ((d - ones) & ~d)) &
		    high)
			break;
		p += 8;
	}
	while (p < end && !json_special[*p])
		p++;
	return p;
}

/* Whether s goes into JSON as it is (the ids and type names sluice makes
 * always do; anything else is escaped). */
static int
json_plain(const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s;

	return plain_run(p, p + n) == p + n;
}

/* One allocation per record: the strings live behind the struct (records
 * are made on a worker and freed on the writer thread; one cross-thread
 * free instead of six). A NULL id is stored as "" (journal, hash and row
 * all treat the two alike). */
static struct rec *
rec_new(const char *type, const char *session, const char *trace, const char *span,
	const char *data, size_t datalen)
{
	const char *src[4] = {type, session, trace, span};
	size_t len[4], total = sizeof(struct rec) + datalen + 1;
	char **dst[4];
	struct rec *r;
	char *p;

	for (int i = 0; i < 4; i++) {
		if (src[i] == NULL)
			src[i] = "";
		len[i] = strlen(src[i]);
		total += len[i] + 1;
	}
	r = malloc(total);
	if (r == NULL)
		return NULL;
	memset(r, 0, sizeof(*r));
	dst[0] = &r->type;
	dst[1] = &r->session;
	dst[2] = &r->trace;
	dst[3] = &r->span;
	p = (char *)(r + 1);
	for (int i = 0; i < 4; i++) {
		r->len[i] = len[i];
		memcpy(p, src[i], len[i] + 1);
		*dst[i] = p;
		p += len[i] + 1;
		if (json_plain(src[i], len[i]))
			r->plain |= 1u << i;
	}
	memcpy(p, data, datalen);
	p[datalen] = '\0';
	r->data = p;
	r->len[4] = datalen;
	return r;
}

static void
rec_free(struct rec *r)
{
	free(r);
}

/* ------------------------------------------------------------ keys */

/* The sidecar holds a checkpoint (the store's own may have been removed). */
static int
sidecar_has_lines(const struct sl_audit *a)
{
	struct stat sb;

	return stat(a->sidecar, &sb) == 0 && sb.st_size > 0;
}

/* Loads data_dir's signing key, or makes one when there is none and the
 * store holds no checkpoint yet (signed: true when it does). A missing key
 * beside signed checkpoints is refused: a new key would make every earlier
 * checkpoint look forged, and the old public key would be overwritten. So
 * is a key that is not Ed25519, and a public key file that belongs to
 * another key (it is what auditors check with: never replaced). */
static int
load_or_create_key(const char *dir, int signed_store, EVP_PKEY **out, char *err, size_t errlen)
{
	char kpath[4096], ppath[4096];
	FILE *f;
	EVP_PKEY *k = NULL, *pub;

	snprintf(kpath, sizeof(kpath), "%s/audit-signing.key", dir);
	snprintf(ppath, sizeof(ppath), "%s/audit-signing.pub", dir);
	f = fopen(kpath, "r");
	if (f != NULL) {
		k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
		fclose(f);
		if (k == NULL) {
			snprintf(err, errlen, "cannot read signing key %s", kpath);
			return SL_EIO;
		}
		if (EVP_PKEY_id(k) != EVP_PKEY_ED25519) {
			EVP_PKEY_free(k);
			snprintf(err, errlen, "signing key %s is not an Ed25519 key", kpath);
			return SL_EIO;
		}
	} else if (signed_store) {
		snprintf(err, errlen,
			 "audit signing key %s is missing, and the store holds checkpoints signed "
			 "with it: restore the key (a new one would make them all look forged), or "
			 "move the store aside to start a new trail",
			 kpath);
		return SL_EIO;
	} else {
		EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_id(EVP_PKEY_ED25519, NULL);
		int fd;

		if (ctx == NULL || EVP_PKEY_keygen_init(ctx) != 1 ||
		    EVP_PKEY_keygen(ctx, &k) != 1) {
			EVP_PKEY_CTX_free(ctx);
			snprintf(err, errlen, "cannot generate the audit signing key");
			return SL_EIO;
		}
		EVP_PKEY_CTX_free(ctx);
		fd = open(kpath, O_WRONLY | O_CREAT | O_EXCL, 0600);
		f = fd >= 0 ? fdopen(fd, "w") : NULL;
		if (f == NULL || PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL) != 1) {
			if (f)
				fclose(f);
			EVP_PKEY_free(k);
			snprintf(err, errlen, "cannot write signing key %s", kpath);
			return SL_EIO;
		}
		fclose(f);
	}
	f = fopen(ppath, "r");
	if (f != NULL) {
		pub = PEM_read_PUBKEY(f, NULL, NULL, NULL);
		fclose(f);
		if (pub == NULL || EVP_PKEY_eq(pub, k) != 1) {
			EVP_PKEY_free(pub);
			EVP_PKEY_free(k);
			snprintf(err, errlen,
				 "%s is not the public key of %s: restore the matching pair (the "
				 "public key is what auditors verify with; sluice does not "
				 "replace it)",
				 ppath, kpath);
			return SL_EIO;
		}
		EVP_PKEY_free(pub);
	} else if ((f = fopen(ppath, "w")) != NULL) {
		PEM_write_PUBKEY(f, k);
		fclose(f);
	}
	*out = k;
	return 0;
}

/* ------------------------------------------------------------ store */

/* page_size only takes effect on a new, empty store (an existing one keeps
 * its own): 16 KiB pages cost about a third less CPU per appended record
 * than the 4 KiB default (fewer WAL frames, page writes and checkpoint
 * copies for the same bytes; 64 KiB pages were slower again), measured with
 * the writer's insert pattern (docs/performance.md). */
static const char schema_sql[] =
	"PRAGMA page_size=16384;"
	"PRAGMA journal_mode=WAL;"
	"PRAGMA synchronous=NORMAL;"
	"CREATE TABLE IF NOT EXISTS records ("
	" seq INTEGER PRIMARY KEY, ts INTEGER NOT NULL, node TEXT NOT NULL, type TEXT NOT NULL,"
	" session TEXT NOT NULL, trace_id TEXT NOT NULL, span_id TEXT NOT NULL, data TEXT NOT NULL,"
	" prev_hash TEXT NOT NULL, hash TEXT NOT NULL);"
	"CREATE TABLE IF NOT EXISTS checkpoints ("
	" id INTEGER PRIMARY KEY, node TEXT NOT NULL, seq INTEGER NOT NULL, hash TEXT NOT NULL,"
	" ts INTEGER NOT NULL, sig TEXT NOT NULL);";

static int
resume_chain(struct sl_audit *a, char *err, size_t errlen)
{
	sqlite3_stmt *st;
	int r = 0;

	if (sqlite3_prepare_v2(a->db,
			       "SELECT seq, ts, node, type, session, trace_id, span_id, data, "
			       "prev_hash, hash FROM records ORDER BY seq DESC LIMIT 1",
			       -1, &st, NULL) != SQLITE_OK)
		return SL_EIO;
	if (sqlite3_step(st) == SQLITE_ROW) {
		struct sl_audit_row row;
		uint8_t h[32];
		char hex[65];

		sl_audit_row_from_stmt(st, &row);
		sl_audit_hash_row(&row, h);
		sl_hex(h, 32, hex);
		if (!row.types_ok || !sl_audit_row_hash_is(&row, hex)) {
			snprintf(err, errlen,
				 "the last audit record (seq %llu) does not match its hash; run "
				 "`sluice audit verify`",
				 (unsigned long long)row.seq);
			r = SL_ECORRUPT;
		}
		a->seq = row.seq;
		memcpy(a->last, h, 32);
	}
	sqlite3_finalize(st);
	if (r == 0 && sqlite3_prepare_v2(a->db, "SELECT max(seq) FROM checkpoints", -1, &st,
					 NULL) == SQLITE_OK) {
		if (sqlite3_step(st) == SQLITE_ROW)
			a->last_cp_seq = (uint64_t)sqlite3_column_int64(st, 0);
		sqlite3_finalize(st);
	}
	return r;
}

/* Signs (node, seq, hash, ts) of the last stored record and stores the
 * checkpoint in the same transaction, plus a line in the sidecar file. */
static int
checkpoint(struct sl_audit *a)
{
	char hex[65], msg[256], sig64[128];
	uint8_t sig[64];
	size_t siglen = sizeof(sig);
	int64_t ts = sl_now_us();
	EVP_MD_CTX *md;
	int n, r = SL_EIO;

	if (a->stored_seq == 0 || a->stored_seq == a->last_cp_seq)
		return 0;
	sl_hex(a->stored_hash, 32, hex);
	n = sl_audit_checkpoint_msg(a->node, a->stored_seq, hex, ts, msg, sizeof(msg));
	md = EVP_MD_CTX_new();
	if (md == NULL || EVP_DigestSignInit(md, NULL, NULL, NULL, a->key) != 1 ||
	    EVP_DigestSign(md, sig, &siglen, (const uint8_t *)msg, (size_t)n) != 1)
		goto out;
	EVP_EncodeBlock((unsigned char *)sig64, sig, (int)siglen);
	sqlite3_reset(a->ins_cp);
	sqlite3_bind_text(a->ins_cp, 1, a->node, -1, SQLITE_STATIC);
	sqlite3_bind_int64(a->ins_cp, 2, (sqlite3_int64)a->stored_seq);
	sqlite3_bind_text(a->ins_cp, 3, hex, -1, SQLITE_STATIC);
	sqlite3_bind_int64(a->ins_cp, 4, ts);
	sqlite3_bind_text(a->ins_cp, 5, sig64, -1, SQLITE_STATIC);
	if (sqlite3_step(a->ins_cp) != SQLITE_DONE)
		goto out;
	/* the sidecar gets it once the transaction is committed (store_batch):
	 * a verifier that reads the sidecar first and then the store never
	 * finds a checkpoint there that the store does not hold yet */
	snprintf(a->cp_line, sizeof(a->cp_line),
		 "{\"node\":\"%s\",\"seq\":%llu,\"hash\":\"%s\",\"ts\":%lld,\"sig\":\"%s\"}\n",
		 a->node, (unsigned long long)a->stored_seq, hex, (long long)ts, sig64);
	a->last_cp_seq = a->stored_seq;
	a->last_cp_us = sl_mono_us();
	a->since_cp = 0;
	r = 0;
out:
	EVP_MD_CTX_free(md);
	return r;
}

/* checkpoint_every records or checkpoint_interval since the last one (with
 * something new). Called with imu held. */
static int
checkpoint_due(const struct sl_audit *a)
{
	/* A store's first records are signed at once: a store with records
	 * and no checkpoint is then always one whose checkpoints were
	 * deleted (verify says so). */
	return a->since_cp >= a->cp_every ||
	       (a->since_cp > 0 &&
		(a->last_cp_seq == 0 || sl_mono_us() - a->last_cp_us >= a->cp_interval_us));
}

/* rows records per run. The node is the same in every row: it is ?1,
 * bound once here (bindings outlive sqlite3_reset), and row i's other nine
 * columns are ?(2 + 9i) ... ?(10 + 9i). */
static int
prepare_insert(sqlite3 *db, const char *node, size_t node_len, int rows, sqlite3_stmt **st)
{
	/* OR ROLLBACK: a failed row ends the whole transaction, which is what
	 * store_batch does with any failure anyway; with the default (ABORT)
	 * SQLite keeps a statement journal to undo a multi-row INSERT half
	 * way, about a fifth of the cost of a row. */
	static const char head[] = "INSERT OR ROLLBACK INTO records (seq, ts, node, type, session, "
				   "trace_id, span_id, data, prev_hash, hash) VALUES ";
	char sql[sizeof(head) + INS_ROWS * 64];
	size_t o = sizeof(head) - 1;
	int rc;

	memcpy(sql, head, o);
	for (int i = 0; i < rows; i++) {
		int c = 2 + 9 * i;

		o += (size_t)snprintf(sql + o, sizeof(sql) - o,
				      "%s(?%d,?%d,?1,?%d,?%d,?%d,?%d,?%d,?%d,?%d)", i ? "," : "", c,
				      c + 1, c + 2, c + 3, c + 4, c + 5, c + 6, c + 7, c + 8);
	}
	rc = sqlite3_prepare_v2(db, sql, (int)o, st, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_bind_text(*st, 1, node, (int)node_len, SQLITE_STATIC);
	return rc;
}

static const char empty_id[] = "";
_Static_assert(INS_ROWS * 2 <= 32, "empty_bound has a bit per row and id");

/* Binds an id; an empty one is bound to empty_id, once: the parameter
 * keeps it across runs (most records carry no trace context). */
static void
bind_id(sqlite3_stmt *st, int col, const char *v, size_t n, uint32_t *mask, uint32_t bit)
{
	if (n == 0) {
		if (!(*mask & bit)) {
			sqlite3_bind_text(st, col, empty_id, 0, SQLITE_STATIC);
			*mask |= bit;
		}
		return;
	}
	sqlite3_bind_text(st, col, v, (int)n, SQLITE_STATIC);
	*mask &= ~bit;
}

/* Inserts records whose seq and hash are already assigned, in one
 * transaction (with a checkpoint when due). Called with imu held. */
static int
store_batch(struct sl_audit *a, struct rec *batch, int force_cp)
{
	uint64_t seq0 = a->stored_seq, cp0 = a->since_cp, lcp0 = a->last_cp_seq;
	uint8_t h0[32];
	struct rec *r, *last = NULL;

	memcpy(h0, a->stored_hash, 32);
	sqlite3_reset(a->begin);
	if (sqlite3_step(a->begin) != SQLITE_DONE) {
		snprintf(a->store_err, sizeof(a->store_err), "%s", sqlite3_errmsg(a->db));
		return SL_EIO;
	}
	for (r = batch; r;) {
		struct rec *x = r;
		sqlite3_stmt *st = a->ins;
		uint32_t *empties = &a->empty_bound[0];
		int n = 0;

		/* INS_ROWS at a time while that many are left, then one by one */
		while (x && n < INS_ROWS) {
			x = x->next;
			n++;
		}
		if (n == INS_ROWS) {
			st = a->insn;
			empties = &a->empty_bound[1];
		} else {
			n = 1;
		}
		sqlite3_reset(st);
		for (int i = 0; i < n; i++, r = r->next) {
			int c = 2 + 9 * i; /* ?1 is the node, bound once */

			sqlite3_bind_int64(st, c, (sqlite3_int64)r->seq);
			sqlite3_bind_int64(st, c + 1, r->ts);
			sqlite3_bind_text(st, c + 2, r->type, (int)r->len[0], SQLITE_STATIC);
			sqlite3_bind_text(st, c + 3, r->session, (int)r->len[1], SQLITE_STATIC);
			bind_id(st, c + 4, r->trace, r->len[2], empties, 1u << (2 * i));
			bind_id(st, c + 5, r->span, r->len[3], empties, 1u << (2 * i + 1));
			sqlite3_bind_text(st, c + 6, r->data, (int)r->len[4], SQLITE_STATIC);
			sqlite3_bind_text(st, c + 7, r->prev, 64, SQLITE_STATIC);
			sqlite3_bind_text(st, c + 8, r->hash, 64, SQLITE_STATIC);
			last = r;
		}
		if (sqlite3_step(st) != SQLITE_DONE)
			goto fail;
		a->stored_seq = last->seq;
		memcpy(a->stored_hash, last->hbin, 32);
		a->since_cp += (uint64_t)n;
	}
	a->cp_line[0] = '\0';
	if ((force_cp || checkpoint_due(a)) && checkpoint(a) != 0)
		goto fail;
	sqlite3_reset(a->commit);
	if (sqlite3_step(a->commit) != SQLITE_DONE)
		goto fail;
	if (a->cp_line[0] != '\0') {
		FILE *f = fopen(a->sidecar, "a");

		if (f != NULL) {
			fputs(a->cp_line, f);
			fclose(f);
		}
	}
	return 0;
fail:
	/* the reason, before the rollback's own result replaces it */
	snprintf(a->store_err, sizeof(a->store_err), "%s", sqlite3_errmsg(a->db));
	sqlite3_reset(a->rollback);
	sqlite3_step(a->rollback);
	a->stored_seq = seq0;
	a->since_cp = cp0;
	a->last_cp_seq = lcp0; /* its checkpoint is not stored either */
	memcpy(a->stored_hash, h0, 32);
	return SL_EIO;
}

#define PUT_LIT(o, lit) (memcpy((o), (lit), sizeof(lit) - 1), (o) += sizeof(lit) - 1)

/* One journal line: {"seq":..,"ts":..,"node":..,"type":..,"session":..,
 * "trace_id":..,"span_id":..,"data":<data>}\n. data (already canonical
 * JSON) goes last, verbatim, so recovery gets back the exact bytes. The
 * hashes are not in it: the chain follows from the lines in seq order
 * (recover_journal computes it as the writer does). The ids sluice makes
 * need no escaping and are copied; one reserve covers the line (escaping at
 * most sextuples a byte). */
static int
put_line(struct sl_buf *b, const struct rec *r, const struct sl_audit *a)
{
	static const struct {
		const char *s;
		size_t n;
	} keys[4] = {{",\"type\":", 8},
		     {",\"session\":", 11},
		     {",\"trace_id\":", 12},
		     {",\"span_id\":", 11}};
	const char *ids[4] = {r->type, r->session, r->trace, r->span};
	/* the fixed text and two 20-digit numbers: about 110 bytes */
	size_t need = 160 + a->node_json_len + r->len[4];
	char *o;
	int rc;

	for (int i = 0; i < 4; i++)
		need += 6 * r->len[i] + 2;
	if ((rc = sl_buf_reserve(b, need)) != 0)
		return rc;
	o = (char *)b->data + b->len;
	PUT_LIT(o, "{\"seq\":");
	o = sl_fmt_u64(o, r->seq);
	PUT_LIT(o, ",\"ts\":");
	o = sl_fmt_i64(o, r->ts);
	PUT_LIT(o, ",\"node\":");
	memcpy(o, a->node_json, a->node_json_len);
	o += a->node_json_len;
	for (int i = 0; i < 4; i++) {
		memcpy(o, keys[i].s, keys[i].n);
		o += keys[i].n;
		if (r->plain & (1u << i)) {
			*o++ = '"';
			memcpy(o, ids[i], r->len[i]);
			o += r->len[i];
			*o++ = '"';
		} else {
			b->len = (size_t)(o - (char *)b->data);
			sl_json_put_str(b, ids[i], r->len[i]); /* fits: reserved above */
			o = (char *)b->data + b->len;
		}
	}
	PUT_LIT(o, ",\"data\":");
	memcpy(o, r->data, r->len[4]);
	o += r->len[4];
	PUT_LIT(o, "}\n");
	b->len = (size_t)(o - (char *)b->data);
	return 0;
}

#define JOURNAL_CHUNK ((size_t)8 << 20)

/* Makes room for n more journal bytes: the file's blocks are allocated
 * before they are mapped, so a full disk is an error here and never a
 * SIGBUS on a store. Called with wmu held. */
static int
journal_reserve(struct journal *j, size_t n)
{
	size_t need = (size_t)j->size + n, cap = j->cap ? j->cap : JOURNAL_CHUNK;
	void *m;

	if (j->map != NULL && need <= j->cap)
		return 0;
	while (cap < need)
		cap *= 2;
	if ((errno = posix_fallocate(j->fd, 0, (off_t)cap)) != 0)
		return SL_EIO;
	m = mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_SHARED, j->fd, 0);
	if (m == MAP_FAILED)
		return SL_EIO;
	if (j->map != NULL)
		munmap(j->map, j->cap);
	j->map = m;
	j->cap = cap;
	return 0;
}

/* Empties the journal (everything in it is stored). Normally by zeroing
 * the used part in place: the pages stay mapped, so the next appends do
 * not fault them in again (truncating made every 4 KiB of records cost a
 * page fault). Recovery stops at the first NUL, so a crash in the middle
 * of the zeroing (front to back) recovers nothing, which is right: all of
 * it is in SQLite. A journal that grew past one chunk (the store was down
 * for a while) is cut back to give the disk space back. */
static void
journal_reset(struct journal *j)
{
	j->last_seq = 0;
	if (j->map != NULL && j->cap <= JOURNAL_CHUNK) {
		memset(j->map, 0, (size_t)j->size);
		j->size = 0;
		return;
	}
	if (j->map != NULL) {
		munmap(j->map, j->cap);
		j->map = NULL;
		j->cap = 0;
	}
	if (ftruncate(j->fd, 0) == 0)
		j->size = 0; /* journal_reserve() maps a fresh chunk */
}

/* Assigns seq and time to a batch and appends it to the journal: from then
 * on the records are durable (as durable as a committed SQLite WAL
 * transaction with synchronous=NORMAL: they survive a crash of the
 * process, not of the machine). Their hashes are chained later, by the
 * writer (chain_batch): the journal's order fixes them. Called with wmu
 * held. On failure seq is restored. */
static int
journal_batch(struct sl_audit *a, struct rec *batch)
{
	uint64_t seq0 = a->seq;
	struct sl_buf *out = &a->jline;
	struct journal *j = &a->j[a->jact];
	struct rec *r;
	int64_t now = sl_now_us(); /* the batch is journaled at one instant */
	size_t wrote;
	int rc = 0;

	out->len = out->off = 0;
	for (r = batch; r && rc == 0; r = r->next) {
		r->seq = ++a->seq;
		r->ts = now;
		if (put_line(out, r, a) != 0)
			rc = SL_ENOMEM;
	}
	if (rc == 0 && (rc = journal_reserve(j, out->len)) == 0) {
		/* A copy into the shared mapping is in the page cache at once:
		 * it survives a crash of this process like a write() would,
		 * without a system call. The batch's last newline is stored
		 * last; recovery stops at the first line that is unterminated
		 * or holds a NUL (a copy cut short), and such a batch was never
		 * acknowledged. */
		memcpy(j->map + j->size, out->data, out->len - 1);
		__atomic_store_n(&j->map[j->size + (off_t)out->len - 1], out->data[out->len - 1],
				 __ATOMIC_RELEASE);
	}
	wrote = out->len;
	/* kept for the next batch, unless a burst made it large */
	if (out->cap > ((size_t)1 << 20))
		sl_buf_fini(out);
	if (rc != 0) {
		a->seq = seq0;
		return rc;
	}
	j->size += (off_t)wrote; /* under wmu */
	j->last_seq = a->seq;
	return 0;
}

/* Chains the records of a batch that are not chained yet (a batch the store
 * refused comes back chained): prev is the last chained record's hash.
 * Called by the writer with imu held, in journal order. */
static void
chain_batch(struct sl_audit *a, struct rec *batch)
{
	struct rec *r, *p = NULL;

	for (r = batch; r; p = r, r = r->next) {
		const char *f[6] = {a->node, r->type, r->session, r->trace, r->span, r->data};
		const size_t l[6] = {a->node_len, r->len[0], r->len[1],
				     r->len[2],	  r->len[3], r->len[4]};

		if (r->chained)
			continue;
		/* Everything before r in the list is chained (a batch the store
		 * refused comes back whole, in front): p is the last chained
		 * record, its hash a->last, already in hex. */
		if (p != NULL)
			memcpy(r->prev, p->hash, sizeof(r->prev));
		else
			sl_hex(a->last, 32, r->prev);
		sl_audit_hash_parts(a->last, NULL, 0, r->seq, r->ts, f, l, r->hbin);
		sl_hex(r->hbin, 32, r->hash);
		memcpy(a->last, r->hbin, 32);
		r->chained = 1;
	}
}

/* Takes the queue, journals it (wmu held by the caller) and hands it to the
 * ingest list. Returns the batch (still owned by the caller for callbacks
 * through *batch_out) or NULL. */
static int
journal_queue(struct sl_audit *a, struct rec **batch_out)
{
	struct rec *batch;
	int rc;

	pthread_mutex_lock(&a->mu);
	batch = a->head;
	a->head = a->tail = NULL;
	a->queued = 0;
	pthread_mutex_unlock(&a->mu);
	*batch_out = batch;
	if (batch == NULL)
		return 0;
	rc = journal_batch(a, batch);
	/* once per outage, not once per refused request */
	if (rc != 0 && !a->jfailed)
		sl_error("audit: cannot write the journal %s (%s); requests are refused until it "
			 "takes writes again",
			 a->j[a->jact].path, strerror(errno));
	else if (rc == 0 && a->jfailed)
		sl_info("audit: the journal %s takes writes again", a->j[a->jact].path);
	a->jfailed = rc != 0;
	return rc;
}

/* Calls completions; moves journaled records to the ingest list, frees failed
 * ones. self: a record whose completion the caller reports itself. Called
 * with wmu held, right after journal_queue: the ingest list is in seq order
 * (the writer chains the hashes in that order). */
static void
complete(struct sl_audit *a, struct rec *batch, int rc, struct rec *self)
{
	struct rec *r, *next, *ih = NULL, *it = NULL;
	size_t n = 0;

	for (r = batch; r; r = next) {
		next = r->next;
		if (r != self && r->done)
			r->done(r->arg, rc, rc == 0 ? r->seq : 0);
		r->done = NULL;
		if (rc != 0) {
			rec_free(r);
			continue;
		}
		r->next = NULL;
		if (it)
			it->next = r;
		else
			ih = r;
		it = r;
		n++;
	}
	if (ih == NULL)
		return;
	pthread_mutex_lock(&a->mu);
	if (a->itail)
		a->itail->next = ih;
	else
		a->ihead = ih;
	a->itail = it;
	a->ingest += n;
	if (a->ingest >= 4096)
		pthread_cond_signal(&a->cv);
	pthread_mutex_unlock(&a->mu);
}

/* Takes the ingest list (records journaled and reported, not yet stored). */
static struct rec *
take_ingest(struct sl_audit *a)
{
	struct rec *batch;

	pthread_mutex_lock(&a->mu);
	batch = a->ihead;
	a->ihead = a->itail = NULL;
	a->ingest = 0;
	pthread_mutex_unlock(&a->mu);
	return batch;
}

/* Stores a batch taken from the ingest list. On success the records are
 * freed; on failure they go back to the front of the list (they are in the
 * journal) and new requests are refused until the store takes writes again:
 * fail closed. */
static int
store_taken(struct sl_audit *a, struct rec *batch, int force_cp)
{
	struct rec *r, *next;
	int rc;

	pthread_mutex_lock(&a->imu);
	chain_batch(a, batch);
	/* Quiet after a burst: the last records still get their checkpoint
	 * within checkpoint_interval, so a truncated tail shows in verify. */
	if (batch == NULL && checkpoint_due(a))
		force_cp = 1;
	rc = batch || force_cp ? store_batch(a, batch, force_cp) : 0;
	pthread_mutex_unlock(&a->imu);
	if (rc != 0) {
		if (!a->failed)
			sl_error("audit: cannot write to %s: %s; requests are refused until it "
				 "takes "
				 "writes again",
				 a->path, a->store_err);
		a->failed = 1;
		if (batch) {
			struct rec *last = batch;

			while (last->next)
				last = last->next;
			pthread_mutex_lock(&a->mu);
			last->next = a->ihead;
			a->ihead = batch;
			if (a->itail == NULL)
				a->itail = last;
			pthread_mutex_unlock(&a->mu);
		}
		return rc;
	}
	if (a->failed)
		sl_info("audit: %s takes writes again", a->path);
	a->failed = 0;
	for (r = batch; r; r = next) {
		next = r->next;
		rec_free(r);
	}
	return 0;
}

/* Moves the ingest list into SQLite, then empties journals all of whose
 * records are stored. Under steady load something journaled is always
 * waiting to be stored, so "all stored" hardly ever holds for the journal
 * appends go to: it would grow onto fresh pages, and each first write to a
 * page of a shared mapping is a page fault. So once it is half a chunk,
 * appends move to the other journal (emptied earlier), and this one is
 * emptied, its pages kept for reuse, once the writer has stored what it
 * holds. Appends are held off (wmu) only for the switch or for emptying a
 * journal that is all stored, never while SQLite writes: a store that
 * takes long (a WAL checkpoint's sync on a large store, a slow disk) does
 * not reach the requests waiting for their records. */
static void
ingest(struct sl_audit *a, int force_cp)
{
	struct journal *idle;

	if (store_taken(a, take_ingest(a), force_cp) != 0)
		return;
	pthread_mutex_lock(&a->wmu);
	{
		struct journal *act = &a->j[a->jact], *other = &a->j[!a->jact];

		/* Not equal when a leader journaled a batch and has not handed
		 * it over yet: a later round empties it. */
		if (act->size > 0 && a->seq == a->stored_seq)
			journal_reset(act);
		else if ((size_t)act->size >= JOURNAL_CHUNK / 2 && other->size == 0)
			a->jact = !a->jact;
	}
	idle = &a->j[!a->jact];
	pthread_mutex_unlock(&a->wmu);
	/* Nothing appends to the other journal: emptied without wmu. */
	if (idle->size > 0 && a->stored_seq >= idle->last_seq)
		journal_reset(idle);
}

static void *
writer_main(void *arg)
{
	struct sl_audit *a = arg;

	for (;;) {
		struct rec *batch;
		struct timespec ts;
		int stop, rc;

		pthread_mutex_lock(&a->mu);
		if (a->head == NULL && !a->stop && a->ingest < 4096) {
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_nsec += 50 * 1000000L;
			if (ts.tv_nsec >= 1000000000L) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000L;
			}
			pthread_cond_timedwait(&a->cv, &a->mu, &ts);
		}
		stop = a->stop;
		pthread_mutex_unlock(&a->mu);
		pthread_mutex_lock(&a->wmu);
		rc = journal_queue(a, &batch);
		complete(a, batch, rc, NULL);
		pthread_mutex_unlock(&a->wmu);
		ingest(a, 0);
		if (stop) {
			pthread_mutex_lock(&a->mu);
			stop = a->head == NULL && a->ihead == NULL;
			pthread_mutex_unlock(&a->mu);
			if (stop || a->failed)
				break;
		}
	}
	if (!a->failed)
		ingest(a, 1);
	return NULL;
}

/* Replays the lines of one journal file the store does not have yet (after
 * a crash). */
static int
recover_journal(struct sl_audit *a, const char *path, char *err, size_t errlen)
{
	FILE *f = fopen(path, "r");
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	int rc = 0, replayed = 0;

	if (f == NULL)
		return 0;
	while (rc == 0 && (n = getline(&line, &cap, f)) > 0) {
		json_t *o;
		struct rec *r;
		const char *type, *session, *trace, *span, *data, *prev = NULL, *hash = NULL;
		json_int_t seq, ts;
		struct sl_audit_row row;
		uint8_t h[32];
		char hex[65], lasthex[65];

		if (line[n - 1] != '\n' || memchr(line, '\0', (size_t)n) != NULL)
			break; /* torn (or the zeroed rest of the file): never acknowledged */
		line[--n] = '\0';
		/* data is the verbatim tail: ,"data":<json>} */
		{
			char *d = strstr(line, ",\"data\":");

			if (d == NULL || n < 2 || line[n - 1] != '}') {
				o = NULL;
			} else {
				line[n - 1] = '\0';
				data = d + 8;
				d[0] = '}';
				d[1] = '\0';
				o = json_loads(line, 0, NULL);
			}
		}
		if (o == NULL ||
		    json_unpack(o, "{s:I, s:I, s:s, s:s, s:s, s:s, s?s, s?s}", "seq", &seq, "ts",
				&ts, "type", &type, "session", &session, "trace_id", &trace,
				"span_id", &span, "prev_hash", &prev, "hash", &hash) != 0) {
			json_decref(o);
			snprintf(err, errlen, "audit journal %s is corrupt", path);
			rc = SL_ECORRUPT;
			break;
		}
		if ((uint64_t)seq <= a->seq) {
			json_decref(o);
			continue;
		}
		memset(&row, 0, sizeof(row));
		row.seq = (uint64_t)seq;
		row.ts = ts;
		row.node = a->node;
		row.type = type;
		row.session = session;
		row.trace_id = trace;
		row.span_id = span;
		row.data = data;
		sl_hex(a->last, 32, lasthex);
		/* Lines carry no hashes (an older sluice's did: then they
		 * must agree): the chain continues from the store's head. */
		row.prev_hash = lasthex;
		sl_audit_hash_row(&row, h);
		sl_hex(h, 32, hex);
		if ((uint64_t)seq != a->seq + 1 || (prev != NULL && strcmp(prev, lasthex) != 0) ||
		    (hash != NULL && strcmp(hex, hash) != 0)) {
			json_decref(o);
			snprintf(err, errlen,
				 "audit journal %s does not continue the chain at seq %lld", path,
				 (long long)seq);
			rc = SL_ECORRUPT;
			break;
		}
		r = rec_new(type, session, trace, span, data, strlen(data));
		if (r == NULL) {
			json_decref(o);
			rc = SL_ENOMEM;
			break;
		}
		r->seq = (uint64_t)seq;
		r->ts = ts;
		memcpy(r->prev, lasthex, 65);
		memcpy(r->hash, hex, 65);
		memcpy(r->hbin, h, 32);
		r->chained = 1;
		json_decref(o);
		a->seq = r->seq;
		memcpy(a->last, h, 32);
		if (store_batch(a, r, 0) != 0) {
			rec_free(r);
			snprintf(err, errlen, "cannot replay the audit journal into %s", a->path);
			rc = SL_EIO;
			break;
		}
		rec_free(r);
		replayed++;
	}
	free(line);
	fclose(f);
	if (replayed > 0)
		sl_warn("audit: replayed %d journaled records into %s", replayed, a->path);
	return rc;
}

/* The seq of a journal file's first line; 0 when it has none. */
static uint64_t
journal_first_seq(const char *path)
{
	FILE *f = fopen(path, "r");
	unsigned long long seq = 0;

	if (f == NULL)
		return 0;
	if (fscanf(f, "{\"seq\":%llu", &seq) != 1)
		seq = 0;
	fclose(f);
	return (uint64_t)seq;
}

/* Both journal files, the one whose records come first first: after a
 * switch the other one holds the later records only. */
static int
recover_journals(struct sl_audit *a, char *err, size_t errlen)
{
	uint64_t f0 = journal_first_seq(a->j[0].path), f1 = journal_first_seq(a->j[1].path);
	int first = f1 != 0 && (f0 == 0 || f1 < f0);
	int r = recover_journal(a, a->j[first].path, err, errlen);

	return r != 0 ? r : recover_journal(a, a->j[!first].path, err, errlen);
}

/* Opens a journal file empty, its first chunk allocated: a file system without
 * room for it fails the start with a reason, rather than every request
 * afterwards. */
static int
journal_open(struct journal *j, char *err, size_t errlen)
{
	j->fd = open(j->path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (j->fd < 0 || ftruncate(j->fd, 0) != 0) {
		snprintf(err, errlen, "cannot open the audit journal %s", j->path);
		return SL_EIO;
	}
	if (journal_reserve(j, 0) != 0) {
		snprintf(err, errlen, "cannot allocate the audit journal %s (%zu MiB): %s", j->path,
			 JOURNAL_CHUNK >> 20, strerror(errno));
		return SL_EIO;
	}
	return 0;
}

/* Unmaps and closes; keeps exactly the records (the rest of a file is
 * allocated zeros) when trim. */
static void
journal_close(struct journal *j, int trim)
{
	if (j->map != NULL)
		munmap(j->map, j->cap);
	if (j->fd >= 0) {
		if (trim && ftruncate(j->fd, j->size) != 0)
			sl_warn("audit: cannot trim the journal %s", j->path);
		close(j->fd);
	}
	free(j->path);
}

int
sl_audit_open(const struct sl_config *cfg, struct sl_audit **out, char *err, size_t errlen)
{
	struct sl_audit *a;
	int64_t ms = 1000;
	int r = SL_EIO;

	*out = NULL;
	a = calloc(1, sizeof(*a));
	if (a == NULL)
		return SL_ENOMEM;
	a->path = sl_audit_store_path(cfg->audit.store);
	if (a->path == NULL) {
		snprintf(err, errlen, "audit.store %s: only sqlite: stores are supported yet",
			 cfg->audit.store ? cfg->audit.store : "(none)");
		free(a);
		return SL_EINVAL;
	}
	a->j[0].fd = a->j[1].fd = -1;
	if (asprintf(&a->sidecar, "%s.checkpoints", a->path) < 0 ||
	    asprintf(&a->j[0].path, "%s.journal", a->path) < 0 ||
	    asprintf(&a->j[1].path, "%s.journal2", a->path) < 0) {
		free(a->path);
		free(a->sidecar);
		free(a->j[0].path);
		free(a);
		return SL_ENOMEM;
	}
	a->strict = cfg->audit.mode == NULL || strcmp(cfg->audit.mode, "strict") == 0;
	a->cp_every = cfg->audit.checkpoint_every ? cfg->audit.checkpoint_every : 1000;
	if (cfg->audit.checkpoint_interval)
		sl_parse_duration_ms(cfg->audit.checkpoint_interval, &ms);
	a->cp_interval_us = ms * 1000;
	a->last_cp_us = sl_mono_us();
	if (gethostname(a->node, sizeof(a->node) - 1) != 0)
		snprintf(a->node, sizeof(a->node), "sluice");
	a->node_len = strlen(a->node);
	sl_buf_init(&a->jline, 0);
	pthread_mutex_init(&a->mu, NULL);
	pthread_mutex_init(&a->wmu, NULL);
	pthread_mutex_init(&a->imu, NULL);
	pthread_cond_init(&a->cv, NULL);
	/* the node as a JSON string, made once for every journal line (in the
	 * journal line buffer, emptied again) */
	if (sl_json_put_str(&a->jline, a->node, a->node_len) != 0 ||
	    a->jline.len > sizeof(a->node_json)) {
		r = SL_ENOMEM;
		goto fail;
	}
	memcpy(a->node_json, a->jline.data, a->jline.len);
	a->node_json_len = a->jline.len;
	a->jline.len = 0;
	/* NOMUTEX: one thread at a time uses the connection (this one, then
	 * the writer under imu, then close after the join), so SQLite's own
	 * per-call locking is pure cost. */
	if (sqlite3_open_v2(a->path, &a->db,
			    SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
			    NULL) != SQLITE_OK) {
		snprintf(err, errlen, "cannot open %s", a->path);
		goto fail;
	}
	sqlite3_busy_timeout(a->db, 5000);
	if (sqlite3_exec(a->db, schema_sql, NULL, NULL, NULL) != SQLITE_OK) {
		snprintf(err, errlen, "cannot initialise %s: %s", a->path, sqlite3_errmsg(a->db));
		goto fail;
	}
	if (prepare_insert(a->db, a->node, a->node_len, 1, &a->ins) != SQLITE_OK ||
	    prepare_insert(a->db, a->node, a->node_len, INS_ROWS, &a->insn) != SQLITE_OK ||
	    sqlite3_prepare_v2(
		    a->db, "INSERT INTO checkpoints (node, seq, hash, ts, sig) VALUES (?,?,?,?,?)",
		    -1, &a->ins_cp, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(a->db, "BEGIN IMMEDIATE", -1, &a->begin, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(a->db, "COMMIT", -1, &a->commit, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(a->db, "ROLLBACK", -1, &a->rollback, NULL) != SQLITE_OK) {
		snprintf(err, errlen, "cannot prepare statements on %s", a->path);
		goto fail;
	}
	if ((r = resume_chain(a, err, errlen)) != 0)
		goto fail;
	if (load_or_create_key(cfg->gateway.data_dir, a->last_cp_seq != 0 || sidecar_has_lines(a),
			       &a->key, err, errlen) != 0) {
		r = SL_EIO;
		goto fail;
	}
	a->stored_seq = a->seq;
	memcpy(a->stored_hash, a->last, 32);
	if ((r = recover_journals(a, err, errlen)) != 0)
		goto fail;
	if ((r = journal_open(&a->j[0], err, errlen)) != 0 ||
	    (r = journal_open(&a->j[1], err, errlen)) != 0)
		goto fail;
	if (pthread_create(&a->thread, NULL, writer_main, a) != 0) {
		r = SL_EIO;
		goto fail;
	}
	*out = a;
	return 0;
fail:
	sqlite3_finalize(a->ins);
	sqlite3_finalize(a->insn);
	sqlite3_finalize(a->ins_cp);
	sqlite3_finalize(a->begin);
	sqlite3_finalize(a->commit);
	sqlite3_finalize(a->rollback);
	sqlite3_close(a->db);
	EVP_PKEY_free(a->key);
	journal_close(&a->j[0], 0);
	journal_close(&a->j[1], 0);
	sl_buf_fini(&a->jline);
	free(a->path);
	free(a->sidecar);
	free(a);
	return r ? r : SL_EIO;
}

static int enqueue(struct sl_audit *a, struct rec *r, sl_audit_done_fn done);

int
sl_audit_append(struct sl_audit *a, const char *type, const char *session_id, const char *trace_id,
		const char *span_id, json_t *data, sl_audit_done_fn done, void *arg)
{
	struct rec *r;
	char *json;

	if (data == NULL)
		data = json_object();
	json = json_dumps(data, JSON_COMPACT | JSON_ENSURE_ASCII);
	json_decref(data);
	if (json == NULL || type == NULL) {
		free(json);
		return SL_ENOMEM;
	}
	r = rec_new(type, session_id, trace_id, span_id, json, strlen(json));
	free(json);
	if (r == NULL)
		return SL_ENOMEM;
	r->done = done;
	r->arg = arg;
	return enqueue(a, r, done);
}

int
sl_audit_append_raw(struct sl_audit *a, const char *type, const char *session_id,
		    const char *trace_id, const char *span_id, const char *json, size_t len,
		    sl_audit_done_fn done, void *arg)
{
	struct rec *r = type ? rec_new(type, session_id, trace_id, span_id, json, len) : NULL;

	if (r == NULL)
		return SL_ENOMEM;
	r->done = done;
	r->arg = arg;
	return enqueue(a, r, done);
}

int
sl_json_put_str(struct sl_buf *b, const char *s, size_t len)
{
	static const char hex[] = "0123456789abcdef";
	const unsigned char *p = (const unsigned char *)s, *end = p + len;
	int rc;

	/* Room for the whole input plus the quotes: plain runs are copied
	 * without further checks; an escape reserves what it adds. */
	if ((rc = sl_buf_reserve(b, len + 2)) != 0)
		return rc;
	b->data[b->len++] = '"';
	while (p < end) {
		unsigned char c = *p;
		size_t n = 1;

		if (!json_special[c]) {
			const unsigned char *q = plain_run(p + 1, end);

			memcpy(b->data + b->len, p, (size_t)(q - p));
			b->len += (size_t)(q - p);
			p = q;
			continue;
		}
		/* at most 6 bytes out for this one, and the rest still fits */
		if ((rc = sl_buf_reserve(b, 6 + (size_t)(end - p) + 1)) != 0)
			return rc;
		if (c >= 0x80) {
			/* Copy a valid UTF-8 sequence as is. */
			if ((c & 0xe0) == 0xc0 && c >= 0xc2)
				n = 2;
			else if ((c & 0xf0) == 0xe0)
				n = 3;
			else if ((c & 0xf8) == 0xf0 && c <= 0xf4)
				n = 4;
			else
				n = 0;
			if (n > 0 && (size_t)(end - p) >= n) {
				size_t i;

				for (i = 1; i < n && (p[i] & 0xc0) == 0x80; i++)
					;
				if (i == n && !(n == 3 && c == 0xe0 && p[1] < 0xa0) &&
				    !(n == 3 && c == 0xed && p[1] >= 0xa0) &&
				    !(n == 4 && c == 0xf0 && p[1] < 0x90) &&
				    !(n == 4 && c == 0xf4 && p[1] >= 0x90)) {
					memcpy(b->data + b->len, p, n);
					b->len += n;
					p += n;
					continue;
				}
			}
		}
		{
			char *o = (char *)b->data + b->len;

			if (c == '"' || c == '\\') {
				o[0] = '\\';
				o[1] = (char)c;
				b->len += 2;
			} else if (c == '\n') {
				memcpy(o, "\\n", 2);
				b->len += 2;
			} else if (c == '\t') {
				memcpy(o, "\\t", 2);
				b->len += 2;
			} else {
				memcpy(o, "\\u00", 4);
				o[4] = hex[c >> 4];
				o[5] = hex[c & 15];
				b->len += 6;
			}
			p++;
		}
	}
	b->data[b->len++] = '"';
	return 0;
}

static int
enqueue(struct sl_audit *a, struct rec *r, sl_audit_done_fn done)
{
	pthread_mutex_lock(&a->mu);
	if (a->queued >= QUEUE_MAX || a->stop ||
	    (done != NULL && (a->failed || a->ingest >= INGEST_MAX))) {
		/* Full queue, stopping, a store that refuses writes or one
		 * that has fallen far behind: the caller refuses the request
		 * (fail closed). */
		pthread_mutex_unlock(&a->mu);
		rec_free(r);
		return SL_EIO;
	}
	if (a->tail)
		a->tail->next = r;
	else
		a->head = r;
	a->tail = r;
	a->queued++;
	if (done == NULL) {
		/* Nobody waits: let records gather. The next group-commit
		 * leader takes them, else the writer within 50 ms (or at 256). */
		if (a->queued >= 256)
			pthread_cond_signal(&a->cv);
		pthread_mutex_unlock(&a->mu);
		return 0;
	}
	pthread_mutex_unlock(&a->mu);
	/* Group commit, leader style: if no one is writing, this thread
	 * journals the whole queue now with one write() (no thread hop);
	 * otherwise the writer thread takes the record. */
	if (pthread_mutex_trylock(&a->wmu) == 0) {
		struct rec *batch, *x;
		int rc, mine = 0;

		rc = journal_queue(a, &batch);
		for (x = batch; x; x = x->next)
			if (x == r)
				mine = 1;
		/* under wmu: batches reach the ingest list in journal order,
		 * the order the writer chains them in */
		complete(a, batch, rc, mine ? r : NULL);
		pthread_mutex_unlock(&a->wmu);
		if (!mine)
			return 0; /* the writer took it first and reports as usual */
		return rc == 0 ? SL_AUDIT_DURABLE : SL_EIO;
	}
	pthread_mutex_lock(&a->mu);
	pthread_cond_signal(&a->cv);
	pthread_mutex_unlock(&a->mu);
	return 0;
}

int
sl_audit_strict(const struct sl_audit *a)
{
	return a->strict;
}

void
sl_audit_close(struct sl_audit *a)
{
	if (a == NULL)
		return;
	pthread_mutex_lock(&a->mu);
	a->stop = 1;
	pthread_cond_signal(&a->cv);
	pthread_mutex_unlock(&a->mu);
	pthread_join(a->thread, NULL);
	sqlite3_finalize(a->ins);
	sqlite3_finalize(a->insn);
	sqlite3_finalize(a->ins_cp);
	sqlite3_finalize(a->begin);
	sqlite3_finalize(a->commit);
	sqlite3_finalize(a->rollback);
	sqlite3_exec(a->db, "PRAGMA wal_checkpoint(TRUNCATE)", NULL, NULL, NULL);
	sqlite3_close(a->db);
	EVP_PKEY_free(a->key);
	journal_close(&a->j[0], 1);
	journal_close(&a->j[1], 1);
	while (a->ihead) {
		/* Not stored (store down at shutdown): they stay in the
		 * journal and are replayed at the next start. */
		struct rec *n = a->ihead->next;

		rec_free(a->ihead);
		a->ihead = n;
	}
	sl_buf_fini(&a->jline);
	free(a->path);
	free(a->sidecar);
	free(a);
}
