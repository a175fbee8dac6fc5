/*
 * audit.c - audit writer: a queue drained by one thread that assigns
 * sequence numbers, chains hashes, inserts a batch in one SQLite transaction
 * (group commit) and then reports durability to every waiting request.
 */
#include "sluice/audit.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <sqlite3.h>

#include "audit_internal.h"
#include "sluice/core.h"

#define QUEUE_MAX 65536

struct rec {
	struct rec *next;
	char *type, *session, *trace, *span;
	char *data;
	sl_audit_done_fn done;
	void *arg;
};

struct sl_audit {
	char *path;
	char *sidecar;
	char node[64];
	int strict;
	sqlite3 *db;
	sqlite3_stmt *ins;
	sqlite3_stmt *ins_cp;
	sqlite3_stmt *begin, *commit, *rollback;
	EVP_PKEY *key;
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	pthread_mutex_t wmu; /* held while writing: the writer thread or an inline leader */
	struct rec *head, *tail;
	size_t queued;
	int stop;
	int failed;
	uint64_t seq;
	uint8_t last[32];
	uint64_t since_cp;
	uint64_t cp_every;
	int64_t cp_interval_us;
	int64_t last_cp_us;
	uint64_t last_cp_seq;
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

static char *
xstrdup(const char *s)
{
	return s ? strdup(s) : NULL;
}

static void
rec_free(struct rec *r)
{
	free(r->type);
	free(r->session);
	free(r->trace);
	free(r->span);
	free(r->data);
	free(r);
}

/* ------------------------------------------------------------ keys */

static int
load_or_create_key(const char *dir, EVP_PKEY **out, char *err, size_t errlen)
{
	char kpath[4096], ppath[4096];
	FILE *f;
	EVP_PKEY *k = NULL;

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
	} else {
		EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_id(EVP_PKEY_ED25519, NULL);
		int fd;

		if (ctx == NULL || EVP_PKEY_keygen_init(ctx) != 1 || EVP_PKEY_keygen(ctx, &k) != 1) {
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
	f = fopen(ppath, "w");
	if (f != NULL) {
		PEM_write_PUBKEY(f, k);
		fclose(f);
	}
	*out = k;
	return 0;
}

/* ------------------------------------------------------------ store */

static const char schema_sql[] =
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
		if (strcmp(hex, row.hash) != 0) {
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
	if (r == 0 &&
	    sqlite3_prepare_v2(a->db, "SELECT max(seq) FROM checkpoints", -1, &st, NULL) ==
		    SQLITE_OK) {
		if (sqlite3_step(st) == SQLITE_ROW)
			a->last_cp_seq = (uint64_t)sqlite3_column_int64(st, 0);
		sqlite3_finalize(st);
	}
	return r;
}

/* Signs (node, seq, hash, ts) and stores the checkpoint in the same
 * transaction as the records it covers, plus a line in the sidecar file. */
static int
checkpoint(struct sl_audit *a)
{
	char hex[65], msg[256], sig64[128];
	uint8_t sig[64];
	size_t siglen = sizeof(sig);
	int64_t ts = sl_now_us();
	EVP_MD_CTX *md;
	int n, r = SL_EIO;

	if (a->seq == 0 || a->seq == a->last_cp_seq)
		return 0;
	sl_hex(a->last, 32, hex);
	n = sl_audit_checkpoint_msg(a->node, a->seq, hex, ts, msg, sizeof(msg));
	md = EVP_MD_CTX_new();
	if (md == NULL || EVP_DigestSignInit(md, NULL, NULL, NULL, a->key) != 1 ||
	    EVP_DigestSign(md, sig, &siglen, (const uint8_t *)msg, (size_t)n) != 1)
		goto out;
	EVP_EncodeBlock((unsigned char *)sig64, sig, (int)siglen);
	sqlite3_reset(a->ins_cp);
	sqlite3_bind_text(a->ins_cp, 1, a->node, -1, SQLITE_STATIC);
	sqlite3_bind_int64(a->ins_cp, 2, (sqlite3_int64)a->seq);
	sqlite3_bind_text(a->ins_cp, 3, hex, -1, SQLITE_STATIC);
	sqlite3_bind_int64(a->ins_cp, 4, ts);
	sqlite3_bind_text(a->ins_cp, 5, sig64, -1, SQLITE_STATIC);
	if (sqlite3_step(a->ins_cp) != SQLITE_DONE)
		goto out;
	{
		FILE *f = fopen(a->sidecar, "a");

		if (f != NULL) {
			fprintf(f,
				"{\"node\":\"%s\",\"seq\":%llu,\"hash\":\"%s\",\"ts\":%lld,"
				"\"sig\":\"%s\"}\n",
				a->node, (unsigned long long)a->seq, hex, (long long)ts, sig64);
			fclose(f);
		}
	}
	a->last_cp_seq = a->seq;
	a->last_cp_us = sl_mono_us();
	a->since_cp = 0;
	r = 0;
out:
	EVP_MD_CTX_free(md);
	return r;
}

/* Writes one batch. Returns 0 or SL_EIO (the batch is rolled back and the
 * chain state restored). */
static int
write_batch(struct sl_audit *a, struct rec *batch, int force_cp)
{
	uint64_t seq0 = a->seq;
	uint8_t last0[32];
	struct rec *r;

	memcpy(last0, a->last, 32);
	sqlite3_reset(a->begin);
	if (sqlite3_step(a->begin) != SQLITE_DONE)
		return SL_EIO;
	for (r = batch; r; r = r->next) {
		struct sl_audit_row row;
		char prevhex[65], hex[65];
		uint8_t h[32];

		memset(&row, 0, sizeof(row));
		row.seq = a->seq + 1;
		row.ts = sl_now_us();
		row.node = a->node;
		row.type = r->type;
		row.session = r->session ? r->session : "";
		row.trace_id = r->trace ? r->trace : "";
		row.span_id = r->span ? r->span : "";
		row.data = r->data;
		sl_hex(a->last, 32, prevhex);
		row.prev_hash = prevhex;
		sl_audit_hash_row(&row, h);
		sl_hex(h, 32, hex);
		sqlite3_reset(a->ins);
		sqlite3_bind_int64(a->ins, 1, (sqlite3_int64)row.seq);
		sqlite3_bind_int64(a->ins, 2, row.ts);
		sqlite3_bind_text(a->ins, 3, row.node, -1, SQLITE_STATIC);
		sqlite3_bind_text(a->ins, 4, row.type, -1, SQLITE_STATIC);
		sqlite3_bind_text(a->ins, 5, row.session, -1, SQLITE_STATIC);
		sqlite3_bind_text(a->ins, 6, row.trace_id, -1, SQLITE_STATIC);
		sqlite3_bind_text(a->ins, 7, row.span_id, -1, SQLITE_STATIC);
		sqlite3_bind_text(a->ins, 8, row.data, -1, SQLITE_STATIC);
		sqlite3_bind_text(a->ins, 9, prevhex, -1, SQLITE_TRANSIENT);
		sqlite3_bind_text(a->ins, 10, hex, -1, SQLITE_TRANSIENT);
		if (sqlite3_step(a->ins) != SQLITE_DONE)
			goto fail;
		a->seq = row.seq;
		memcpy(a->last, h, 32);
		a->since_cp++;
	}
	if ((force_cp || a->since_cp >= a->cp_every ||
	     (a->since_cp > 0 && sl_mono_us() - a->last_cp_us >= a->cp_interval_us)) &&
	    checkpoint(a) != 0)
		goto fail;
	sqlite3_reset(a->commit);
	if (sqlite3_step(a->commit) != SQLITE_DONE)
		goto fail;
	return 0;
fail:
	sqlite3_reset(a->rollback);
	sqlite3_step(a->rollback);
	a->seq = seq0;
	memcpy(a->last, last0, 32);
	return SL_EIO;
}

static void *
writer_main(void *arg)
{
	struct sl_audit *a = arg;

	pthread_mutex_lock(&a->mu);
	for (;;) {
		struct rec *batch, *r, *next;
		int stop, rc, waited = 0;
		uint64_t first;

		/* Wake every 50 ms: records nobody waits for are written then
		 * (unless a group-commit leader took them), and the checkpoint
		 * interval is checked. */
		while ((a->head == NULL || (a->queued < 256 && !waited)) && !a->stop) {
			struct timespec ts;
			long add_ns = 50 * 1000000L;

			if (a->head != NULL)
				waited = 1;
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_nsec += add_ns;
			if (ts.tv_nsec >= 1000000000L) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000L;
			}
			pthread_cond_timedwait(&a->cv, &a->mu, &ts);
			if (a->head == NULL && !a->stop && a->since_cp > 0 &&
			    sl_mono_us() - a->last_cp_us >= a->cp_interval_us) {
				pthread_mutex_unlock(&a->mu);
				pthread_mutex_lock(&a->wmu);
				write_batch(a, NULL, 1);
				pthread_mutex_unlock(&a->wmu);
				pthread_mutex_lock(&a->mu);
			}
		}
		stop = a->stop;
		pthread_mutex_unlock(&a->mu);
		pthread_mutex_lock(&a->wmu);
		pthread_mutex_lock(&a->mu);
		batch = a->head;
		a->head = a->tail = NULL;
		a->queued = 0;
		pthread_mutex_unlock(&a->mu);
		first = a->seq + 1;
		rc = batch ? write_batch(a, batch, stop) : 0;
		pthread_mutex_unlock(&a->wmu);
		if (rc != 0)
			sl_error("audit: cannot write to %s: %s", a->path, sqlite3_errmsg(a->db));
		for (r = batch; r; r = next) {
			next = r->next;
			if (r->done)
				r->done(r->arg, rc, rc == 0 ? first++ : 0);
			rec_free(r);
		}
		(void)first;
		pthread_mutex_lock(&a->mu);
		if (batch)
			a->failed = rc != 0;
		if (stop && a->head == NULL)
			break;
	}
	pthread_mutex_unlock(&a->mu);
	write_batch(a, NULL, 1);
	return NULL;
}

int
sl_audit_open(const struct sl_config *cfg, struct sl_audit **out, char *err, size_t errlen)
{
	struct sl_audit *a;
	int64_t ms = 60000;
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
	if (asprintf(&a->sidecar, "%s.checkpoints", a->path) < 0) {
		free(a->path);
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
	pthread_mutex_init(&a->mu, NULL);
	pthread_mutex_init(&a->wmu, NULL);
	pthread_cond_init(&a->cv, NULL);
	if (load_or_create_key(cfg->gateway.data_dir, &a->key, err, errlen) != 0)
		goto fail;
	if (sqlite3_open_v2(a->path, &a->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
	    SQLITE_OK) {
		snprintf(err, errlen, "cannot open %s", a->path);
		goto fail;
	}
	sqlite3_busy_timeout(a->db, 5000);
	if (sqlite3_exec(a->db, schema_sql, NULL, NULL, NULL) != SQLITE_OK) {
		snprintf(err, errlen, "cannot initialise %s: %s", a->path, sqlite3_errmsg(a->db));
		goto fail;
	}
	if (sqlite3_prepare_v2(a->db,
			       "INSERT INTO records (seq, ts, node, type, session, trace_id, "
			       "span_id, data, prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?,?)",
			       -1, &a->ins, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(a->db,
			       "INSERT INTO checkpoints (node, seq, hash, ts, sig) VALUES (?,?,?,?,?)",
			       -1, &a->ins_cp, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(a->db, "BEGIN IMMEDIATE", -1, &a->begin, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(a->db, "COMMIT", -1, &a->commit, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(a->db, "ROLLBACK", -1, &a->rollback, NULL) != SQLITE_OK) {
		snprintf(err, errlen, "cannot prepare statements on %s", a->path);
		goto fail;
	}
	if ((r = resume_chain(a, err, errlen)) != 0)
		goto fail;
	if (pthread_create(&a->thread, NULL, writer_main, a) != 0) {
		r = SL_EIO;
		goto fail;
	}
	*out = a;
	return 0;
fail:
	sqlite3_finalize(a->ins);
	sqlite3_finalize(a->ins_cp);
	sqlite3_finalize(a->begin);
	sqlite3_finalize(a->commit);
	sqlite3_finalize(a->rollback);
	sqlite3_close(a->db);
	EVP_PKEY_free(a->key);
	free(a->path);
	free(a->sidecar);
	free(a);
	return r ? r : SL_EIO;
}

int
sl_audit_append(struct sl_audit *a, const char *type, const char *session_id,
		const char *trace_id, const char *span_id, json_t *data, sl_audit_done_fn done,
		void *arg)
{
	struct rec *r;

	r = calloc(1, sizeof(*r));
	if (r == NULL) {
		json_decref(data);
		return SL_ENOMEM;
	}
	r->type = xstrdup(type);
	r->session = xstrdup(session_id);
	r->trace = xstrdup(trace_id);
	r->span = xstrdup(span_id);
	if (data == NULL)
		data = json_object();
	r->data = json_dumps(data, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENSURE_ASCII);
	json_decref(data);
	r->done = done;
	r->arg = arg;
	if (r->type == NULL || r->data == NULL) {
		rec_free(r);
		return SL_ENOMEM;
	}
	pthread_mutex_lock(&a->mu);
	if (a->queued >= QUEUE_MAX || a->stop) {
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
	 * commits the whole queue now (no thread hop); otherwise the current
	 * writer's next batch takes the record. */
	if (pthread_mutex_trylock(&a->wmu) == 0) {
		struct rec *batch, *x, *next;
		uint64_t first;
		int rc, self_done = 0;

		pthread_mutex_lock(&a->mu);
		batch = a->head;
		a->head = a->tail = NULL;
		a->queued = 0;
		pthread_mutex_unlock(&a->mu);
		first = a->seq + 1;
		rc = batch ? write_batch(a, batch, 0) : 0;
		pthread_mutex_unlock(&a->wmu);
		for (x = batch; x; x = next) {
			next = x->next;
			if (x == r) {
				self_done = 1;
				if (rc == 0)
					first++;
			} else if (x->done) {
				x->done(x->arg, rc, rc == 0 ? first++ : 0);
			} else if (rc == 0) {
				first++;
			}
			rec_free(x);
		}
		if (!self_done) {
			/* The writer thread took it first; it reports as usual. */
			return 0;
		}
		if (rc != 0)
			sl_error("audit: cannot write to %s", a->path);
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
	sqlite3_finalize(a->ins_cp);
	sqlite3_finalize(a->begin);
	sqlite3_finalize(a->commit);
	sqlite3_finalize(a->rollback);
	sqlite3_exec(a->db, "PRAGMA wal_checkpoint(TRUNCATE)", NULL, NULL, NULL);
	sqlite3_close(a->db);
	EVP_PKEY_free(a->key);
	free(a->path);
	free(a->sidecar);
	free(a);
}
