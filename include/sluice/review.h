/*
 * review.h - just-in-time approval: held requests, approvals with quorum,
 * timeouts, and the admin API / CLI that decide them. Protocol-agnostic: an
 * adapter submits a request it holds and is called back once it is decided.
 */
#ifndef SLUICE_REVIEW_H
#define SLUICE_REVIEW_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "sluice/config.h"
#include "sluice/core.h"
#include "sluice/identity.h"

struct sl_audit;
struct sl_idp;

enum sl_review_state {
	SL_REV_PENDING = 0,
	SL_REV_APPROVED,
	SL_REV_DENIED,
	SL_REV_EXPIRED,
	SL_REV_CANCELLED,
};

struct sl_review_req {
	const char *session_id, *subject;
	const char *const *groups;
	size_t ngroups;
	const char *connection, *protocol;
	const char *text;     /* exact statement shown to approvers (masked by the caller) */
	const uint8_t *bytes; /* exact bytes that will be forwarded if approved */
	size_t nbytes;
	const char *policy, *rule, *trace_id, *kinds;
	const char *const *approvers;
	size_t napprovers;
	unsigned min_approvals;
	int64_t timeout_ms;
	int64_t grant_for_ms; /* once approved, the same subject+connection+rule passes for this
				 long */
};

/* Called exactly once per submit that returned 0 (approved, denied, expired,
 * cancelled or manager shutdown), from the review thread or the admin
 * thread, never from inside submit. */
typedef void (*sl_review_done_fn)(void *arg, enum sl_review_state st, const char *reason);

struct sl_review_mgr;
/* cfg->review.webhooks get a JSON POST on create and decide (own thread,
 * retries, timeout; a failed notification never releases a request). */
int sl_review_mgr_new(const struct sl_config *cfg, struct sl_audit *audit,
		      struct sl_review_mgr **out);
/* Stops the manager: pending reviews are cancelled (callbacks run, events
 * recorded and queued), then the webhook thread delivers what is queued
 * until deadline_us (sl_mono_us() clock; a request in flight is cut off
 * there), drops the rest with a log line giving its count, and ends.
 * Returns once both threads have ended. Idempotent. */
void sl_review_mgr_stop(struct sl_review_mgr *m, int64_t deadline_us);
/* Stops it (if not yet: webhooks get SL_REVIEW_STOP_GRACE_MS) and frees it. */
#define SL_REVIEW_STOP_GRACE_MS 2000
void sl_review_mgr_free(struct sl_review_mgr *m);
/* Returns 0 (pending; id filled), SL_REVIEW_GRANTED (an approved grant_for
 * window covers subject+connection+rule: proceed, no callback; audited),
 * or < 0 (refuse: fail closed). */
#define SL_REVIEW_GRANTED 3
int sl_review_submit(struct sl_review_mgr *m, const struct sl_review_req *r, sl_review_done_fn done,
		     void *arg, char id[40]);
/* The client went away: the review ends as cancelled (callback still runs). */
void sl_review_cancel(struct sl_review_mgr *m, const char *id);
/* The same, with the reason recorded and told to the requester. */
void sl_review_cancel_why(struct sl_review_mgr *m, const char *id, const char *why);
/* An approver's vote. 0 ok; SL_ENOENT no such review; SL_ESTATE already
 * decided; SL_EPOLICY self-approval, not an approver, or voted already;
 * SL_EINVAL expect_hash does not match. why gets a client-safe reason. */
int sl_review_decide(struct sl_review_mgr *m, const char *id, int approve,
		     const struct sl_identity *who, const char *reason, const char *expect_hash,
		     char *why, size_t whylen);
/* Reviews (one, or all with status) who may see: its requester, one of its
 * approvers (who NULL: all). A review who may not see is not found. */
json_t *sl_review_list_json(struct sl_review_mgr *m, const char *status,
			    const struct sl_identity *who);
json_t *sl_review_get_json(struct sl_review_mgr *m, const char *id, const struct sl_identity *who);

/*
 * The webhook queue (a pure core: no threads, clocks or logging). Two lanes:
 * "created" events of reviews still pending go out first; every other event
 * after them. A final event (approved, denied, expired, cancelled) for a
 * review whose "created" is still queued replaces it (one message telling
 * both). At most max_per_subject messages per requester (JWT subject) are
 * queued, max in all; past that a message is dropped and counted, except
 * that a "created" for a pending review evicts the oldest other-lane message
 * to get in. Memory: at most max messages.
 */
struct sl_review_hook {
	struct sl_review_hook *next;
	char id[40];
	int created; /* a "created" event (the priority lane) */
	char *subject, *body, *text;
};
struct sl_review_hookq;
struct sl_review_hookq *sl_review_hookq_new(size_t max, size_t max_per_subject);
/* Frees it with all it holds (NULL: no-op). */
void sl_review_hookq_free(struct sl_review_hookq *q);
/* Queues an event of review id by subject; takes body and text (owned, may
 * not be NULL; freed when dropped). Returns 0 queued, SL_REVIEW_HOOK_FOLDED
 * (replaced the review's queued "created"), SL_ETOOBIG (dropped: the
 * subject's bound or the queue's) or SL_ENOMEM. */
#define SL_REVIEW_HOOK_FOLDED 1
int sl_review_hookq_push(struct sl_review_hookq *q, const char *id, const char *subject,
			 int created, char *body, char *text);
/* The next message to send (returns owned; free with sl_review_hook_free),
 * or NULL when empty. */
struct sl_review_hook *sl_review_hookq_pop(struct sl_review_hookq *q);
void sl_review_hook_free(struct sl_review_hook *h);
/* Drops everything queued (counted as dropped); returns how many. */
size_t sl_review_hookq_clear(struct sl_review_hookq *q);
/* Messages queued (all, or of one subject). */
size_t sl_review_hookq_len(const struct sl_review_hookq *q, const char *subject);
/* Messages dropped since it was made (over a bound, evicted or cleared). */
uint64_t sl_review_hookq_dropped(const struct sl_review_hookq *q);

/* The admin API (HTTP/JSON on gateway.admin.listen): an event-loop thread of
 * its own and a few handler threads (admin.c), never a data-path loop. */
struct sl_admin;
int sl_admin_start(const struct sl_config *cfg, struct sl_idp *idp, struct sl_review_mgr *m,
		   struct sl_admin **out, char *err, size_t errlen);
void sl_admin_stop(struct sl_admin *a);
/* Parses one request with the admin server's limits (for the fuzz target):
 * status 200 complete, 0 incomplete, 400 malformed, 413 too large. */
int sl_admin_parse_request(const uint8_t *data, size_t len, char *url, size_t urllen, int *status);

/* `sluice review list|show|approve|deny|wait`. */
int sl_review_cli(int argc, char **argv, const struct sl_config *cfg);

#endif
