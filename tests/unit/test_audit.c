/* Unit tests for the audit chain: concurrent appends, verification, tamper
 * detection of every kind, reopening, checkpoint forgery, store failure. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <pthread.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "sluice/audit.h"
#include "sluice/config.h"

static char dir[64];
static char db[128], pub[128];

static struct sl_config *
config(void)
{
	char yaml[512], err[512];
	struct sl_config *cfg;

	snprintf(yaml, sizeof(yaml),
		 "gateway: { data_dir: %s }\naudit: { store: 'sqlite:%s', checkpoint_every: 10 }\n",
		 dir, db);
	assert_int_equal(sl_config_load_data("t", yaml, strlen(yaml), &cfg, err, sizeof(err)), 0);
	return cfg;
}

struct waiter {
	pthread_mutex_t mu;
	int done, status;
};

static void
done_cb(void *arg, int status, uint64_t seq)
{
	struct waiter *w = arg;

	pthread_mutex_lock(&w->mu);
	w->done++;
	if (status != 0)
		w->status = status;
	pthread_mutex_unlock(&w->mu);
}

static void *
appender(void *arg)
{
	struct sl_audit *a = arg;

	for (int i = 0; i < 500; i++) {
		json_t *d = json_pack("{s:i, s:s}", "i", i, "text", "SELECT 1");

		while (sl_audit_append(a, "request", "s1", "trace", "span", d, NULL, NULL) != 0) {
			d = json_pack("{s:i}", "i", i);
			usleep(100);
		}
	}
	return NULL;
}

static void
write_records(int n)
{
	struct sl_config *cfg = config();
	struct sl_audit *a;
	char err[256];
	struct waiter w = {PTHREAD_MUTEX_INITIALIZER, 0, 0};
	int r;

	assert_int_equal(sl_audit_open(cfg, &a, err, sizeof(err)), 0);
	for (int i = 0; i < n; i++) {
		/* trace context on some records only: the store binds empty
		 * ids once per statement parameter, and must still store every
		 * record's own (verify checks them through the hash) */
		r = sl_audit_append(a, "request", i % 2 ? "s1" : "s2", i % 3 ? "" : "trace-1",
				    i % 5 ? "" : "span-1", json_pack("{s:i}", "n", i), done_cb, &w);
		assert_true(r == 0 || r == SL_AUDIT_DURABLE);
		if (r == SL_AUDIT_DURABLE)
			done_cb(&w, 0, 0);
	}
	sl_audit_close(a);
	assert_int_equal(w.done, n);
	assert_int_equal(w.status, 0);
	sl_config_free(cfg);
}

static void
fresh(void)
{
	snprintf(dir, sizeof(dir), "/tmp/sluice-audit-test.XXXXXX");
	assert_non_null(mkdtemp(dir));
	snprintf(db, sizeof(db), "%s/audit.db", dir);
	snprintf(pub, sizeof(pub), "%s/audit-signing.pub", dir);
}

static void
sql(const char *q)
{
	sqlite3 *h;

	assert_int_equal(sqlite3_open(db, &h), SQLITE_OK);
	sqlite3_busy_timeout(h, 5000); /* a writer may be mid-batch */
	assert_int_equal(sqlite3_exec(h, q, NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(h);
}

static int
verify(char *msg, size_t len)
{
	uint64_t n;

	return sl_audit_verify_store(db, pub, msg, len, &n);
}

static void
test_concurrent_and_reopen(void **state)
{
	struct sl_config *cfg;
	struct sl_audit *a;
	pthread_t t[4];
	char err[256], msg[512];
	uint64_t n;

	fresh();
	cfg = config();
	assert_int_equal(sl_audit_open(cfg, &a, err, sizeof(err)), 0);
	for (int i = 0; i < 4; i++)
		pthread_create(&t[i], NULL, appender, a);
	for (int i = 0; i < 4; i++)
		pthread_join(t[i], NULL);
	sl_audit_close(a);
	assert_int_equal(sl_audit_verify_store(db, pub, msg, sizeof(msg), &n), 0);
	assert_int_equal(n, 2000);
	/* reopening resumes the chain */
	assert_int_equal(sl_audit_open(cfg, &a, err, sizeof(err)), 0);
	sl_audit_append(a, "x", "s", NULL, NULL, NULL, NULL, NULL);
	sl_audit_close(a);
	assert_int_equal(sl_audit_verify_store(db, pub, msg, sizeof(msg), &n), 0);
	assert_int_equal(n, 2001);
	sl_config_free(cfg);
}

static void
check_tamper(const char *edit, const char *expect)
{
	char msg[512];

	fresh();
	write_records(30);
	assert_int_equal(verify(msg, sizeof(msg)), 0);
	sql(edit);
	assert_int_equal(verify(msg, sizeof(msg)), SL_ECORRUPT);
	if (strstr(msg, expect) == NULL)
		fail_msg("tamper \"%s\": got \"%s\", want \"%s\"", edit, msg, expect);
}

static void
test_tamper(void **state)
{
	check_tamper("UPDATE records SET data = '{\"n\":99}' WHERE seq = 7", "seq 7");
	check_tamper("UPDATE records SET type = 'x' WHERE seq = 3", "seq 3");
	check_tamper("UPDATE records SET session = 'zz' WHERE seq = 12", "seq 12");
	check_tamper("UPDATE records SET ts = ts + 1 WHERE seq = 1", "seq 1");
	check_tamper("UPDATE records SET hash = prev_hash WHERE seq = 9", "seq 9");
	check_tamper("DELETE FROM records WHERE seq = 15", "seq 15 missing");
	check_tamper(
		"UPDATE records SET seq = 1000 WHERE seq = 5; UPDATE records SET seq = 5 WHERE "
		"seq = 6; UPDATE records SET seq = 6 WHERE seq = 1000",
		"seq 5");
	/* tail truncation is caught by the signed checkpoints (every 10 here) */
	check_tamper("DELETE FROM records WHERE seq > 25", "truncated");
	/* forging a checkpoint without the key */
	check_tamper("UPDATE checkpoints SET ts = ts + 1", "signature");
	/* every stored byte counts, and every column's type: text after a
	 * NUL, or a number stored as text SQLite would convert back */
	check_tamper("UPDATE records SET data = data || char(0) || ',\"text\":\"DROP\"}' "
		     "WHERE seq = 8",
		     "seq 8");
	check_tamper("UPDATE records SET session = session || char(0) || 'other' WHERE seq = 4",
		     "seq 4");
	check_tamper("UPDATE records SET hash = hash || char(0) || 'x' WHERE seq = 11", "seq 11");
	check_tamper("UPDATE records SET prev_hash = prev_hash || char(0) WHERE seq = 13",
		     "seq 13");
	check_tamper("UPDATE records SET ts = CAST(ts AS TEXT) || ' forged' WHERE seq = 3",
		     "seq 3: a column holds a value of the wrong type");
	check_tamper("UPDATE checkpoints SET hash = hash || char(0) || 'x'", "wrong type or a NUL");
	/* a node far longer than any signed message: a bad signature, not a
	 * read past the message buffer */
	check_tamper("UPDATE checkpoints SET node = replace(hex(zeroblob(1500000)), '0', 'N') "
		     "WHERE id = (SELECT min(id) FROM checkpoints)",
		     "signature");
	check_tamper("DROP TABLE checkpoints", "checkpoints table");
}

/* All checkpoints gone (the table emptied, the sidecar deleted): nothing
 * is signed, so the chain could have been rewritten whole; a sidecar kept
 * elsewhere (--checkpoints) catches a tail cut the store's own miss. */
static void
test_checkpoints_deleted_or_kept_elsewhere(void **state)
{
	char msg[512], side[160], kept[160], cmd[400];
	uint64_t n;

	fresh();
	write_records(30); /* one batch each: checkpoints at 30 and 60 */
	write_records(30);
	snprintf(side, sizeof(side), "%s.checkpoints", db);
	snprintf(kept, sizeof(kept), "%s/kept.checkpoints", dir);
	snprintf(cmd, sizeof(cmd), "cp %s %s", side, kept);
	assert_int_equal(system(cmd), 0);
	assert_int_equal(verify(msg, sizeof(msg)), 0);
	/* the tail cut with the checkpoints after it, the local sidecar gone */
	sql("DELETE FROM records WHERE seq > 45; DELETE FROM checkpoints WHERE seq > 45");
	assert_int_equal(unlink(side), 0);
	if (verify(msg, sizeof(msg)) != 0) /* the documented limit */
		fail_msg("%s", msg);
	assert_int_equal(sl_audit_verify_store_with(db, pub, kept, msg, sizeof(msg), &n),
			 SL_ECORRUPT);
	assert_non_null(strstr(msg, "truncated"));
	snprintf(cmd, sizeof(cmd), "%s/absent", dir);
	assert_int_equal(sl_audit_verify_store_with(db, pub, cmd, msg, sizeof(msg), &n), SL_EIO);
	sql("DELETE FROM checkpoints");
	assert_int_equal(verify(msg, sizeof(msg)), SL_ECORRUPT);
	assert_non_null(strstr(msg, "no checkpoint"));
}

/* The signing key is never replaced silently: a missing key beside signed
 * checkpoints, a public key file of another key, a key that is not Ed25519
 * stop the start (a new key would make every checkpoint look forged). */
static void
test_signing_key_never_replaced(void **state)
{
	struct sl_config *cfg;
	struct sl_audit *a;
	char err[512], key[160], cmd[512], msg[512];

	fresh();
	write_records(3);
	cfg = config();
	snprintf(key, sizeof(key), "%s/audit-signing.key", dir);
	snprintf(cmd, sizeof(cmd), "mv %s %s.bak", key, key);
	assert_int_equal(system(cmd), 0);
	assert_int_not_equal(sl_audit_open(cfg, &a, err, sizeof(err)), 0);
	assert_non_null(strstr(err, "is missing"));
	/* another pair: the public key on disk is not its own */
	snprintf(cmd, sizeof(cmd), "openssl genpkey -algorithm ed25519 -out %s 2>/dev/null", key);
	assert_int_equal(system(cmd), 0);
	assert_int_not_equal(sl_audit_open(cfg, &a, err, sizeof(err)), 0);
	assert_non_null(strstr(err, "is not the public key"));
	snprintf(cmd, sizeof(cmd),
		 "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out %s "
		 "2>/dev/null",
		 key);
	assert_int_equal(system(cmd), 0);
	assert_int_not_equal(sl_audit_open(cfg, &a, err, sizeof(err)), 0);
	assert_non_null(strstr(err, "not an Ed25519 key"));
	/* the right key back: the trail goes on and verifies */
	snprintf(cmd, sizeof(cmd), "mv %s.bak %s", key, key);
	assert_int_equal(system(cmd), 0);
	assert_int_equal(sl_audit_open(cfg, &a, err, sizeof(err)), 0);
	sl_audit_append(a, "x", "s", NULL, NULL, NULL, NULL, NULL);
	sl_audit_close(a);
	assert_int_equal(verify(msg, sizeof(msg)), 0);
	sl_config_free(cfg);
}

/* A new store's first records are stored with a checkpoint, long before
 * checkpoint_every or checkpoint_interval: a running gateway's store with
 * records always verifies. */
static void
test_first_records_are_signed_at_once(void **state)
{
	struct sl_config *cfg;
	struct sl_audit *a;
	char err[256], msg[512];
	uint64_t n = 0;

	fresh();
	cfg = config();
	assert_int_equal(sl_audit_open(cfg, &a, err, sizeof(err)), 0);
	for (int i = 0; i < 3; i++)
		sl_audit_append(a, "request", "s", NULL, NULL, NULL, NULL, NULL);
	for (int i = 0; i < 200 && n < 3; i++) {
		usleep(25000);
		if (sl_audit_verify_store(db, pub, msg, sizeof(msg), &n) != 0)
			n = 0;
	}
	assert_int_equal(n, 3);
	assert_null(strstr(msg, " 0 checkpoints"));
	sl_audit_close(a);
	sl_config_free(cfg);
}

/* Appends waited records, pausing pause_us between them, until the audit
 * refuses one (fail closed); fails the test if it has not within tries.
 * w outlives a: records still waiting report to it when a is closed. */
static void
append_until_refused(struct sl_audit *a, struct waiter *w, int tries, useconds_t pause_us)
{
	int r = 0;

	for (int i = 0; i < tries; i++) {
		r = sl_audit_append(a, "request", "s", NULL, NULL, NULL, done_cb, w);
		if (r == SL_EIO)
			break;
		usleep(pause_us);
	}
	assert_int_equal(r, SL_EIO);
}

/* Another connection holds the store's write lock longer than the busy
 * timeout: the store refuses, and new waited requests are refused (fail
 * closed) once the writer has seen it. Then a is closed while the store is
 * still down (its journaled records stay in the journal) and the lock is
 * released. */
static void
close_with_store_down(struct sl_audit *a)
{
	struct waiter w = {PTHREAD_MUTEX_INITIALIZER, 0, 0};
	sqlite3 *h;

	assert_int_equal(sqlite3_open(db, &h), SQLITE_OK);
	sqlite3_busy_timeout(h, 10000); /* the writer may be mid-batch right now */
	assert_int_equal(sqlite3_exec(h, "BEGIN EXCLUSIVE", NULL, NULL, NULL), SQLITE_OK);
	append_until_refused(a, &w, 600, 50000);
	sl_audit_close(a);
	sqlite3_exec(h, "ROLLBACK", NULL, NULL, NULL);
	sqlite3_close(h);
}

static void
test_store_failure_fails_closed_and_journal_replays(void **state)
{
	struct sl_config *cfg;
	struct sl_audit *a;
	char err[256], msg[512];
	uint64_t n;

	fresh();
	cfg = config();
	assert_int_equal(sl_audit_open(cfg, &a, err, sizeof(err)), 0);
	for (int i = 0; i < 5; i++)
		sl_audit_append(a, "request", "s", NULL, NULL, NULL, NULL, NULL);
	/* Stopping while the store is down keeps the journaled records... */
	close_with_store_down(a);
	/* ...and the next start replays them into the store. */
	assert_int_equal(sl_audit_open(cfg, &a, err, sizeof(err)), 0);
	sl_audit_close(a);
	assert_int_equal(sl_audit_verify_store(db, pub, msg, sizeof(msg), &n), 0);
	assert_true(n >= 6);
	sl_config_free(cfg);
}

static long long
count_rows(const char *where)
{
	sqlite3 *h;
	sqlite3_stmt *st;
	char q[256];
	long long n = -1;

	snprintf(q, sizeof(q), "SELECT count(*) FROM records WHERE %s", where);
	assert_int_equal(sqlite3_open(db, &h), SQLITE_OK);
	sqlite3_busy_timeout(h, 5000);
	if (sqlite3_prepare_v2(h, q, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
		n = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	sqlite3_close(h);
	return n;
}

/* A row the store refuses in the middle of a batch (here another writer
 * took the seq the batch needs) fails the batch as a whole: none of its
 * rows is kept, waited requests are refused from then on (fail closed),
 * the records stay in the journal, and once the conflict is gone the next
 * start stores all of them and the chain verifies. */
static void
test_refused_row_fails_the_whole_batch(void **state)
{
	struct sl_config *cfg;
	struct sl_audit *a;
	struct waiter w = {PTHREAD_MUTEX_INITIALIZER, 0, 0};
	char err[256], msg[512];
	uint64_t n;

	fresh();
	cfg = config();
	assert_int_equal(sl_audit_open(cfg, &a, err, sizeof(err)), 0);
	for (int i = 0; i < 5; i++)
		sl_audit_append(a, "request", "s", NULL, NULL, NULL, NULL, NULL);
	for (int i = 0; i < 100 && count_rows("1") < 5; i++)
		usleep(20000);
	assert_int_equal(count_rows("1"), 5);
	/* seq 8 taken behind the gateway's back: the batch 6, 7, 8, ... breaks
	 * at its third row */
	sql("INSERT INTO records VALUES (8, 0, 'x', 'x', 'x', '', '', '{}', 'x', 'x')");
	for (int i = 0; i < 5; i++)
		sl_audit_append(a, "request", "s", NULL, NULL, NULL, NULL, NULL);
	append_until_refused(a, &w, 200, 20000);
	assert_int_equal(count_rows("seq IN (6, 7)"), 0);
	sl_audit_close(a);
	sql("DELETE FROM records WHERE seq = 8");
	assert_int_equal(sl_audit_open(cfg, &a, err, sizeof(err)), 0);
	sl_audit_close(a);
	assert_int_equal(sl_audit_verify_store(db, pub, msg, sizeof(msg), &n), 0);
	assert_true(n >= 10);
	assert_int_equal(count_rows("seq IN (6, 7, 8)"), 3);
	sl_config_free(cfg);
}

/* The journal is written through a shared mapping: a copy cut short by a
 * crash leaves a line with NUL bytes (or no newline) before the zeroed
 * rest of the file. Recovery replays every complete line before it and
 * starts; the cut batch was never acknowledged. */
static void
test_journal_cut_copy_recovers(void **state)
{
	struct sl_config *cfg;
	struct sl_audit *a;
	char err[256], msg[512], jpath[256];
	static const char cut[] = "{\"seq\":99999,\"ts\":1,\"node\":\"x\",\"type\":\"req";
	uint8_t zeros[4096] = {0};
	uint64_t n;
	FILE *f;

	fresh();
	cfg = config();
	assert_int_equal(sl_audit_open(cfg, &a, err, sizeof(err)), 0);
	close_with_store_down(a); /* the journaled records stay in the journal */
	snprintf(jpath, sizeof(jpath), "%s.journal", db);
	f = fopen(jpath, "ab");
	assert_non_null(f);
	/* a line whose middle never arrived, then the zeroed rest */
	assert_int_equal(fwrite(cut, 1, sizeof(cut) - 1, f), sizeof(cut) - 1);
	assert_int_equal(fwrite(zeros, 1, 100, f), 100);
	assert_int_equal(fwrite("\"}\n", 1, 3, f), 3);
	assert_int_equal(fwrite(zeros, 1, sizeof(zeros), f), sizeof(zeros));
	fclose(f);
	assert_int_equal(sl_audit_open(cfg, &a, err, sizeof(err)), 0);
	sl_audit_close(a);
	assert_int_equal(sl_audit_verify_store(db, pub, msg, sizeof(msg), &n), 0);
	assert_true(n >= 2);
	sl_config_free(cfg);
}

/* A fresh store holding seq 1-3 (and a checkpoint), the journals empty. */
static void
store_three(struct sl_config *cfg)
{
	struct sl_audit *a;
	char err[256];

	assert_int_equal(sl_audit_open(cfg, &a, err, sizeof(err)), 0);
	for (int i = 0; i < 3; i++)
		sl_audit_append(a, "request", "s", NULL, NULL, NULL, NULL, NULL);
	sl_audit_close(a);
}

static void
put_journal_file(const char *suffix, const char *text)
{
	char jpath[256];
	FILE *f;

	snprintf(jpath, sizeof(jpath), "%s%s", db, suffix);
	f = fopen(jpath, "wb");
	assert_non_null(f);
	assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
	fclose(f);
}

static void
put_journal(const char *text)
{
	put_journal_file(".journal", text);
}

/* Journal lines carry no hashes: the writer chains records when it stores
 * them, and recovery chains the lines the store lacks the same way. What
 * recovery still refuses: a line that does not continue the stored
 * sequence, and a line of an older sluice (with hashes) whose hashes do not
 * continue the chain. Lines that do are stored and verify. */
static void
test_journal_recovery_continues_the_chain(void **state)
{
	struct sl_config *cfg;
	struct sl_audit *a;
	char err[256], msg[512];
	uint64_t n;
	static const char l4[] = "{\"seq\":4,\"ts\":5,\"node\":\"n\",\"type\":\"request\","
				 "\"session\":\"s\",\"trace_id\":\"\",\"span_id\":\"\","
				 "\"data\":{\"text\":\"SELECT 4\"}}\n";
	static const char l5[] = "{\"seq\":5,\"ts\":6,\"node\":\"n\",\"type\":\"result\","
				 "\"session\":\"s\",\"trace_id\":\"\",\"span_id\":\"\","
				 "\"data\":{\"rows\":1}}\n";
	static const char l6[] = "{\"seq\":6,\"ts\":6,\"node\":\"n\",\"type\":\"result\","
				 "\"session\":\"s\",\"trace_id\":\"\",\"span_id\":\"\","
				 "\"data\":{}}\n";
	char text[2048];

	fresh();
	cfg = config();
	store_three(cfg); /* seq 1-3 stored (and a checkpoint) */
	assert_int_equal(count_rows("1"), 3);
	/* an older sluice's line whose hash is not the chain's: refused,
	 * nothing stored */
	put_journal("{\"seq\":4,\"ts\":5,\"node\":\"n\",\"type\":\"request\",\"session\":\"s\","
		    "\"trace_id\":\"\",\"span_id\":\"\",\"prev_hash\":\"00\",\"hash\":\"00\","
		    "\"data\":{}}\n");
	assert_int_not_equal(sl_audit_open(cfg, &a, err, sizeof(err)), 0);
	assert_non_null(strstr(err, "does not continue the chain at seq 4"));
	assert_int_equal(count_rows("1"), 3);
	/* a gap: 4 continues the chain and is stored, 6 is refused */
	snprintf(text, sizeof(text), "%s%s", l4, l6);
	put_journal(text);
	assert_int_not_equal(sl_audit_open(cfg, &a, err, sizeof(err)), 0);
	assert_non_null(strstr(err, "does not continue the chain at seq 6"));
	assert_int_equal(count_rows("seq = 4 AND data = '{\"text\":\"SELECT 4\"}'"), 1);
	assert_int_equal(count_rows("seq > 4"), 0);
	/* 4 again (stored: skipped) and 5: stored, the whole chain verifies */
	snprintf(text, sizeof(text), "%s%s", l4, l5);
	put_journal(text);
	assert_int_equal(sl_audit_open(cfg, &a, err, sizeof(err)), 0);
	sl_audit_close(a);
	assert_int_equal(count_rows("seq IN (4, 5)"), 2);
	assert_int_equal(sl_audit_verify_store(db, pub, msg, sizeof(msg), &n), 0);
	assert_true(n >= 5);
	sl_config_free(cfg);
}

/* Counts the complete journal lines before the first NUL and the
 * smallest seq among them. */
static int
journal_lines(const char *jpath, long long *minseq)
{
	FILE *f = fopen(jpath, "rb");
	char line[8192];
	int n = 0;

	*minseq = -1;
	if (f == NULL)
		return 0;
	while (fgets(line, sizeof(line), f) != NULL) {
		size_t len = strlen(line);
		long long seq;

		if (len == 0 || line[len - 1] != '\n')
			break; /* a NUL (the zeroed rest) or an unterminated line */
		assert_int_equal(sscanf(line, "{\"seq\":%lld", &seq), 1);
		if (*minseq < 0 || seq < *minseq)
			*minseq = seq;
		n++;
	}
	fclose(f);
	return n;
}

/* Appends move to the second journal file when the first is half full
 * (the first is emptied once all of it is stored): after a crash either
 * may hold the earlier records. Recovery takes the one whose first record
 * comes first, then the other. */
static void
test_journal_recovery_takes_both_files_in_order(void **state)
{
	struct sl_config *cfg;
	struct sl_audit *a;
	char err[256], msg[512];
	uint64_t n;

	fresh();
	cfg = config();
	store_three(cfg);
	assert_int_equal(count_rows("1"), 3);
	put_journal_file(".journal", "{\"seq\":6,\"ts\":7,\"node\":\"n\",\"type\":\"result\","
				     "\"session\":\"s\",\"trace_id\":\"\",\"span_id\":\"\","
				     "\"data\":{\"f\":1}}\n");
	put_journal_file(".journal2", "{\"seq\":4,\"ts\":5,\"node\":\"n\",\"type\":\"request\","
				      "\"session\":\"s\",\"trace_id\":\"\",\"span_id\":\"\","
				      "\"data\":{\"f\":2}}\n"
				      "{\"seq\":5,\"ts\":5,\"node\":\"n\",\"type\":\"request\","
				      "\"session\":\"s\",\"trace_id\":\"\",\"span_id\":\"\","
				      "\"data\":{\"f\":3}}\n");
	assert_int_equal(sl_audit_open(cfg, &a, err, sizeof(err)), 0);
	sl_audit_close(a);
	assert_int_equal(count_rows("seq = 4 AND data = '{\"f\":2}'"), 1);
	assert_int_equal(count_rows("seq = 5 AND data = '{\"f\":3}'"), 1);
	assert_int_equal(count_rows("seq = 6 AND data = '{\"f\":1}'"), 1);
	assert_int_equal(sl_audit_verify_store(db, pub, msg, sizeof(msg), &n), 0);
	assert_true(n >= 6);
	sl_config_free(cfg);
}

/* journal_lines over both journal files (appends move to the second one
 * once the first is half full, and back). */
static int
journals_lines(long long *minseq)
{
	char p0[256], p1[256];
	long long m0, m1;
	int n;

	snprintf(p0, sizeof(p0), "%s.journal", db);
	snprintf(p1, sizeof(p1), "%s.journal2", db);
	n = journal_lines(p0, &m0) + journal_lines(p1, &m1);
	*minseq = m0 < 0 ? m1 : m1 < 0 ? m0 : m0 < m1 ? m0 : m1;
	return n;
}

/* Once everything journaled is stored, the journals are emptied in place:
 * the records appended after that start at the front and no stale line of
 * the earlier records survives behind them (a restart replays exactly the
 * unstored ones). */
static void
test_journal_reset_in_place(void **state)
{
	struct sl_config *cfg;
	struct sl_audit *a;
	struct waiter w = {PTHREAD_MUTEX_INITIALIZER, 0, 0};
	char err[256], msg[512], big[2049];
	long long minseq, stored;
	uint64_t n;
	int r, lines = -1;

	fresh();
	cfg = config();
	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	assert_int_equal(sl_audit_open(cfg, &a, err, sizeof(err)), 0);
	for (int i = 0; i < 2500; i++) { /* ~5.5 MiB of journal */
		r = sl_audit_append(a, "request", "s", NULL, NULL, json_pack("{s:s}", "t", big),
				    done_cb, &w);
		assert_true(r == 0 || r == SL_AUDIT_DURABLE);
		if (r == SL_AUDIT_DURABLE)
			done_cb(&w, 0, 0);
	}
	/* the writer stores them within ~50 ms and then empties the journal */
	for (int i = 0; i < 200 && lines != 0; i++) {
		usleep(50000);
		lines = journals_lines(&minseq);
	}
	assert_int_equal(lines, 0);
	for (int i = 0; i < 3; i++)
		sl_audit_append(a, "request", "s", NULL, NULL, NULL, NULL, NULL);
	close_with_store_down(a);
	lines = journals_lines(&minseq);
	/* the ones close_with_store_down() added, and those of the 3 the
	 * writer's tick did not store before the lock was taken */
	assert_true(lines >= 1);
	assert_true(minseq > 2500);
	assert_int_equal(w.done, 2500);
	assert_int_equal(w.status, 0);
	stored = count_rows("1");
	assert_true(stored >= 2500 && stored <= 2503);
	assert_int_equal(sl_audit_open(cfg, &a, err, sizeof(err)), 0);
	sl_audit_close(a);
	assert_int_equal(sl_audit_verify_store(db, pub, msg, sizeof(msg), &n), 0);
	/* every journal line replayed, none twice */
	assert_int_equal(n, (uint64_t)stored + (uint64_t)lines);
	sl_config_free(cfg);
}

struct leader_arg {
	struct sl_audit *a;
	struct waiter *w;
	int n;
};

/* Appends n strict records of a statement's size (~300 bytes journaled),
 * a few tens of thousands a second (a busy gateway; the store keeps up):
 * each call finds the journal free most of the time and journals its
 * record itself. */
static void *
leader(void *arg)
{
	struct leader_arg *la = arg;
	char big[129];

	memset(big, 'y', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	for (int i = 0; i < la->n; i++) {
		int r = sl_audit_append(la->a, "request", "s", NULL, NULL,
					json_pack("{s:s}", "t", big), done_cb, la->w);

		assert_true(r == 0 || r == SL_AUDIT_DURABLE);
		if (r == SL_AUDIT_DURABLE)
			done_cb(la->w, 0, 0);
		if (i % 4 == 0)
			usleep(50);
	}
	return NULL;
}

/* Under steady load (two threads journaling strict records without pause
 * while the writer stores), the journals are still emptied and used again:
 * each stays within one chunk (8 MiB) while ~36 MiB of records pass through.
 * Before, it was emptied only when everything journaled happened to be
 * stored at that moment, so under load it kept growing onto fresh pages
 * (a page fault per page, and disk). */
static void
test_journal_bounded_under_steady_load(void **state)
{
	struct sl_config *cfg;
	struct sl_audit *a;
	struct waiter w = {PTHREAD_MUTEX_INITIALIZER, 0, 0};
	struct leader_arg la;
	pthread_t t[2];
	char err[256], msg[512], jpath[256], jpath2[256];
	off_t most = 0;
	uint64_t n;
	int running = 1;

	fresh();
	cfg = config();
	snprintf(jpath, sizeof(jpath), "%s.journal", db);
	snprintf(jpath2, sizeof(jpath2), "%s.journal2", db);
	assert_int_equal(sl_audit_open(cfg, &a, err, sizeof(err)), 0);
	la.a = a;
	la.w = &w;
	la.n = 60000;
	for (int i = 0; i < 2; i++)
		assert_int_equal(pthread_create(&t[i], NULL, leader, &la), 0);
	while (running) {
		struct stat st;

		if (stat(jpath, &st) == 0 && st.st_size > most)
			most = st.st_size;
		if (stat(jpath2, &st) == 0 && st.st_size > most)
			most = st.st_size;
		pthread_mutex_lock(&w.mu);
		running = w.done < 2 * la.n;
		pthread_mutex_unlock(&w.mu);
		usleep(2000);
	}
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	sl_audit_close(a);
	assert_int_equal(w.status, 0);
	assert_true(most > 0);
	if (most > (off_t)8 << 20)
		fail_msg("the journal grew to %lld bytes under steady load", (long long)most);
	assert_int_equal(sl_audit_verify_store(db, pub, msg, sizeof(msg), &n), 0);
	assert_true(n >= 2 * (uint64_t)la.n);
	sl_config_free(cfg);
}

/* A store that stalls (here: a write lock held by another connection, the
 * writer waits in SQLite's busy handler) must not let journaled records
 * pile up without end: past a bound, requests are refused long before the
 * store gives up, and everything accepted is stored once it frees up. */
static void
test_stalled_store_backlog_is_bounded(void **state)
{
	struct sl_config *cfg;
	struct sl_audit *a;
	struct waiter w = {PTHREAD_MUTEX_INITIALIZER, 0, 0};
	char err[256], msg[512];
	struct timespec t0, t1;
	sqlite3 *h;
	uint64_t n;
	int r = 0, accepted = 0;

	fresh();
	cfg = config();
	assert_int_equal(sl_audit_open(cfg, &a, err, sizeof(err)), 0);
	assert_int_equal(sqlite3_open(db, &h), SQLITE_OK);
	sqlite3_busy_timeout(h, 10000);
	assert_int_equal(sqlite3_exec(h, "BEGIN EXCLUSIVE", NULL, NULL, NULL), SQLITE_OK);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (int i = 0; i < 2000000; i++) {
		r = sl_audit_append(a, "request", "s", NULL, NULL, json_pack("{s:i}", "i", i),
				    done_cb, &w);
		if (r == SL_EIO)
			break;
		if (r == SL_AUDIT_DURABLE)
			done_cb(&w, 0, 0);
		accepted++;
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	assert_int_equal(r, SL_EIO);
	/* refused by the bound (65536 waiting, plus what the writer holds),
	 * not by the store giving up after its 5 s busy timeout */
	if (accepted > 150000 || t1.tv_sec - t0.tv_sec >= 4)
		fail_msg("%d records accepted in %lld s while the store was stalled", accepted,
			 (long long)(t1.tv_sec - t0.tv_sec));
	assert_int_equal(sqlite3_exec(h, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(h);
	sl_audit_close(a);
	assert_int_equal(w.done, accepted);
	assert_int_equal(sl_audit_verify_store(db, pub, msg, sizeof(msg), &n), 0);
	assert_int_equal(n, (uint64_t)accepted);
	sl_config_free(cfg);
}

/* The audit's JSON string writer against jansson: random strings (valid
 * and broken UTF-8, controls, quotes, backslashes), written after unread
 * bytes into small buffers (so growing compacts), always parse back; valid
 * UTF-8 comes back byte for byte. */
static void
test_json_put_str(void **state)
{
	static const char *pieces[] = {"a",
				       "\"",
				       "\\",
				       "\n",
				       "\t",
				       "\x01",
				       "\x7f",
				       "\xc3\xa9",
				       "\xe2\x82\xac",
				       "\xf0\x9f\x98\x80",
				       "x y z 123",
				       "abcdefghijklmnopq",
				       " !#[]~",
				       "\x1f",
				       "\x20\x21\x5b\x5d\x7e\x19"};
	/* long plain runs and bytes just beside the special ranges: the plain
	 * scan takes eight bytes at a time */
	const unsigned npc = sizeof(pieces) / sizeof(pieces[0]);
	static const char *broken[] = {"\xc3",	   "\xe2\x82", "\xed\xa0\x80",
				       "\xc0\xaf", "\xff",     "\x80"};
	unsigned seed = 12345;

	for (int iter = 0; iter < 5000; iter++) {
		char in[1024]; /* up to 39 pieces of at most 17 bytes */
		size_t len = 0;
		int valid = 1;
		struct sl_buf b;
		int npieces;

		seed = seed * 1103515245u + 12345u;
		npieces = (int)((seed >> 16) % 40);
		for (int k = 0; k < npieces; k++) {
			const char *pc;

			seed = seed * 1103515245u + 12345u;
			if ((seed >> 16) % 10 == 0) {
				pc = broken[(seed >> 8) % 6];
				valid = 0;
			} else {
				pc = pieces[(seed >> 8) % npc];
			}
			memcpy(in + len, pc, strlen(pc));
			len += strlen(pc);
		}
		sl_buf_init(&b, 0);
		/* unread bytes in front, so reserving may compact first */
		assert_int_equal(sl_buf_append(&b, "0123456789", 10), 0);
		b.off = (size_t)(iter % 11);
		assert_int_equal(sl_json_put_str(&b, in, len), 0);
		{
			/* the unread prefix, wherever compacting moved it */
			size_t pre = 10 - (size_t)(iter % 11), outlen = b.len - b.off - pre;
			char *out = malloc(outlen + 1);
			json_error_t err;
			json_t *j;

			assert_non_null(out);
			memcpy(out, b.data + b.off + pre, outlen);
			out[outlen] = '\0';
			j = json_loads(out, JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);
			if (j == NULL)
				fail_msg("not JSON (%s): %s", err.text, out);
			assert_true(json_is_string(j));
			if (valid) {
				assert_int_equal(json_string_length(j), len);
				assert_memory_equal(json_string_value(j), in, len);
			}
			json_decref(j);
			free(out);
		}
		sl_buf_fini(&b);
	}
}

static uint64_t
max_checkpoint_seq(void)
{
	sqlite3 *h;
	sqlite3_stmt *st;
	uint64_t n = 0;

	assert_int_equal(sqlite3_open(db, &h), SQLITE_OK);
	assert_int_equal(sqlite3_prepare_v2(h, "SELECT coalesce(max(seq), 0) FROM checkpoints", -1,
					    &st, NULL),
			 SQLITE_OK);
	if (sqlite3_step(st) == SQLITE_ROW)
		n = (uint64_t)sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	sqlite3_close(h);
	return n;
}

/* A burst, then quiet: the burst's last records get a checkpoint within
 * checkpoint_interval even though no new record comes to trigger it, so
 * cutting the tail of a running gateway's trail shows in verify. */
static void
test_checkpoint_after_going_quiet(void **state)
{
	struct sl_config *cfg;
	struct sl_audit *a;
	char yaml[512], err[512];

	fresh();
	snprintf(yaml, sizeof(yaml),
		 "gateway: { data_dir: %s }\naudit: { store: 'sqlite:%s', checkpoint_interval: 1s "
		 "}\n",
		 dir, db);
	assert_int_equal(sl_config_load_data("t", yaml, strlen(yaml), &cfg, err, sizeof(err)), 0);
	assert_int_equal(sl_audit_open(cfg, &a, err, sizeof(err)), 0);
	sl_audit_append(a, "request", "s", NULL, NULL, NULL, NULL, NULL);
	usleep(200000); /* stored, and checkpointed (the first since start) */
	sl_audit_append(a, "request", "s", NULL, NULL, NULL, NULL, NULL);
	sl_audit_append(a, "request", "s", NULL, NULL, NULL, NULL, NULL);
	for (int i = 0; i < 60 && max_checkpoint_seq() < 3; i++)
		usleep(100000);
	assert_int_equal(max_checkpoint_seq(), 3);
	sl_audit_close(a);
	sl_config_free(cfg);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_concurrent_and_reopen),
		cmocka_unit_test(test_tamper),
		cmocka_unit_test(test_checkpoints_deleted_or_kept_elsewhere),
		cmocka_unit_test(test_first_records_are_signed_at_once),
		cmocka_unit_test(test_signing_key_never_replaced),
		cmocka_unit_test(test_store_failure_fails_closed_and_journal_replays),
		cmocka_unit_test(test_journal_cut_copy_recovers),
		cmocka_unit_test(test_journal_recovery_continues_the_chain),
		cmocka_unit_test(test_journal_recovery_takes_both_files_in_order),
		cmocka_unit_test(test_refused_row_fails_the_whole_batch),
		cmocka_unit_test(test_journal_reset_in_place),
		cmocka_unit_test(test_journal_bounded_under_steady_load),
		cmocka_unit_test(test_stalled_store_backlog_is_bounded),
		cmocka_unit_test(test_json_put_str),
		cmocka_unit_test(test_checkpoint_after_going_quiet),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
