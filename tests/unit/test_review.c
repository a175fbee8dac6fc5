/* Unit tests: the review webhook queue (lanes, per-requester bound, folding,
 * eviction) and a manager stopping on time with a receiver that never
 * answers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cmocka.h>

#include "sluice/audit.h"
#include "sluice/core.h"
#include "sluice/review.h"

static int
push(struct sl_review_hookq *q, const char *id, const char *subject, int created)
{
	char body[64];

	snprintf(body, sizeof(body), "%s %s", created ? "created" : "final", id);
	return sl_review_hookq_push(q, id, subject, created, strdup(body), strdup(id));
}

/* Pops one message and checks it is id's, created or final. */
static void
expect(struct sl_review_hookq *q, const char *id, int created)
{
	struct sl_review_hook *h = sl_review_hookq_pop(q);

	assert_non_null(h);
	assert_string_equal(h->id, id);
	assert_int_equal(h->created, created);
	assert_string_equal(h->body + (created ? 8 : 6), id);
	sl_review_hook_free(h);
}

static void
test_hookq_created_first_and_folded(void **state)
{
	struct sl_review_hookq *q = sl_review_hookq_new(100, 10);

	(void)state;
	assert_non_null(q);
	assert_null(sl_review_hookq_pop(q));
	assert_int_equal(push(q, "r1", "a", 1), 0);
	assert_int_equal(push(q, "r2", "a", 1), 0);
	assert_int_equal(push(q, "r9", "b", 0), 0); /* news of a review sent before */
	/* r1 ends before it was announced: one message tells both */
	assert_int_equal(push(q, "r1", "a", 0), SL_REVIEW_HOOK_FOLDED);
	assert_int_equal(sl_review_hookq_len(q, NULL), 3);
	assert_int_equal(sl_review_hookq_len(q, "a"), 2);
	assert_int_equal(push(q, "r3", "c", 1), 0);
	/* pending announcements first, then the rest in order */
	expect(q, "r2", 1);
	expect(q, "r3", 1);
	expect(q, "r9", 0);
	expect(q, "r1", 0);
	assert_null(sl_review_hookq_pop(q));
	/* r2's announcement went out: its end is a message of its own */
	assert_int_equal(push(q, "r2", "a", 0), 0);
	expect(q, "r2", 0);
	assert_int_equal(sl_review_hookq_len(q, "a"), 0);
	assert_int_equal(sl_review_hookq_dropped(q), 0);
	sl_review_hookq_free(q);
	sl_review_hookq_free(NULL);
}

/* One requester creating and abandoning reviews in a loop fills no more than
 * its share, and another's pending review is announced next. */
static void
test_hookq_one_subject_cannot_crowd_out_others(void **state)
{
	struct sl_review_hookq *q = sl_review_hookq_new(1000, 32);
	char id[40];
	int dropped = 0;

	(void)state;
	for (int i = 0; i < 5000; i++) {
		snprintf(id, sizeof(id), "f%d", i);
		if (push(q, id, "flooder", 1) == SL_ETOOBIG)
			dropped++;
		if (push(q, id, "flooder", 0) == SL_ETOOBIG)
			dropped++;
	}
	assert_int_equal(sl_review_hookq_len(q, "flooder"), 32);
	assert_int_equal(sl_review_hookq_len(q, NULL), 32);
	assert_true(dropped > 9000);
	assert_int_equal(sl_review_hookq_dropped(q), (uint64_t)dropped);
	assert_int_equal(push(q, "honest", "honest-agent", 1), 0);
	expect(q, "honest", 1);
	assert_int_equal(sl_review_hookq_clear(q), 32);
	assert_int_equal(sl_review_hookq_len(q, NULL), 0);
	assert_int_equal(sl_review_hookq_dropped(q), (uint64_t)dropped + 32);
	sl_review_hookq_free(q);
}

/* Full (many requesters, each within its bound): a pending review's
 * announcement evicts the oldest news of a finished one; news is dropped. */
static void
test_hookq_full_announcement_evicts_news(void **state)
{
	struct sl_review_hookq *q = sl_review_hookq_new(4, 2);

	(void)state;
	assert_int_equal(push(q, "n1", "a", 0), 0);
	assert_int_equal(push(q, "n2", "b", 0), 0);
	assert_int_equal(push(q, "c1", "c", 1), 0);
	assert_int_equal(push(q, "c2", "d", 1), 0);
	assert_int_equal(push(q, "n3", "e", 0), SL_ETOOBIG);
	assert_int_equal(push(q, "c3", "e", 1), 0); /* n1 goes */
	assert_int_equal(sl_review_hookq_dropped(q), 2);
	assert_int_equal(sl_review_hookq_len(q, "a"), 0);
	assert_int_equal(push(q, "c4", "f", 1), 0);	     /* n2 goes */
	assert_int_equal(push(q, "c5", "g", 1), SL_ETOOBIG); /* no news left to evict */
	expect(q, "c1", 1);
	expect(q, "c2", 1);
	expect(q, "c3", 1);
	expect(q, "c4", 1);
	assert_null(sl_review_hookq_pop(q));
	assert_int_equal(sl_review_hookq_dropped(q), 4);
	sl_review_hookq_free(q);
}

static void
done_cb(void *arg, enum sl_review_state st, const char *reason)
{
	(void)reason;
	*(int *)arg = (int)st;
}

/* A receiver that accepts and never answers, 5 s timeout, 3 retries each,
 * 40 notifications queued: stopping with a 500 ms deadline takes about that,
 * not minutes, and drops the rest. */
static void
test_stop_is_bounded_by_its_deadline(void **state)
{
	char dir[] = "/tmp/sl-review-XXXXXX", yaml[1024], err[256];
	struct sockaddr_in sa = {.sin_family = AF_INET};
	socklen_t sl = sizeof(sa);
	struct sl_config *cfg;
	struct sl_audit *a;
	struct sl_review_mgr *m;
	int ls = socket(AF_INET, SOCK_STREAM, 0), st[20];
	int64_t t0;

	(void)state;
	assert_non_null(mkdtemp(dir));
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(ls, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(ls, 128), 0); /* the kernel accepts; nobody answers */
	assert_int_equal(getsockname(ls, (struct sockaddr *)&sa, &sl), 0);
	snprintf(yaml, sizeof(yaml),
		 "gateway: { data_dir: %s }\naudit: { store: 'sqlite:%s/audit.db' }\n"
		 "review:\n  webhooks:\n    - { url: 'http://127.0.0.1:%d/hook', timeout: 5s, "
		 "retries: 3 }\n",
		 dir, dir, ntohs(sa.sin_port));
	assert_int_equal(sl_config_load_data("t", yaml, strlen(yaml), &cfg, err, sizeof(err)), 0);
	assert_int_equal(sl_audit_open(cfg, &a, err, sizeof(err)), 0);
	assert_int_equal(sl_review_mgr_new(cfg, a, &m), 0);
	for (int i = 0; i < 20; i++) {
		const char *ap[] = {"dba"};
		struct sl_review_req q = {.session_id = "s1",
					  .subject = "agent-1",
					  .connection = "orders",
					  .protocol = "postgres",
					  .text = "DELETE FROM t",
					  .bytes = (const uint8_t *)"x",
					  .nbytes = 1,
					  .policy = "p",
					  .rule = "r",
					  .trace_id = "",
					  .kinds = "delete",
					  .approvers = ap,
					  .napprovers = 1,
					  .timeout_ms = 60000};
		char id[40];

		st[i] = -1;
		assert_int_equal(sl_review_submit(m, &q, done_cb, &st[i], id), 0);
		if (i % 2)
			sl_review_cancel(m, id);
	}
	usleep(200 * 1000); /* the first request is in flight */
	t0 = sl_mono_us();
	sl_review_mgr_stop(m, t0 + 500 * 1000);
	/* the deadline, plus libcurl's once-a-second progress check, plus a
	 * noisy machine */
	assert_true(sl_mono_us() - t0 < 4 * 1000000);
	for (int i = 0; i < 20; i++)
		assert_int_equal(st[i], SL_REV_CANCELLED);
	sl_review_mgr_free(m);
	sl_audit_close(a);
	sl_config_free(cfg);
	close(ls);
	{
		char cmd[128];

		snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
		assert_int_equal(system(cmd), 0);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hookq_created_first_and_folded),
		cmocka_unit_test(test_hookq_one_subject_cannot_crowd_out_others),
		cmocka_unit_test(test_hookq_full_announcement_evicts_news),
		cmocka_unit_test(test_stop_is_bounded_by_its_deadline),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
