/*
 * policy.h - rule model and evaluation (pure). A policy set is compiled once
 * from the configuration and shared read-only by every worker.
 *
 * Semantics (docs/policy.md): applicable policies are those whose match
 * (groups or subjects; empty = everyone) and connections (empty = all) fit.
 * Any matching block rule blocks (first wins). Otherwise every kind of the
 * statement must be covered by an allow or review rule whose other
 * conditions hold; a kind covered only by review -> review; anything
 * uncovered -> block (default deny) unless a policy says default: allow.
 * Unparseable SQL is always blocked.
 */
#ifndef SLUICE_POLICY_H
#define SLUICE_POLICY_H
#include "sluice/config.h"
#include "sluice/sqlclass.h"
enum sl_action { SL_ACT_ALLOW = 0, SL_ACT_BLOCK = 1, SL_ACT_REVIEW = 2 };
enum sl_proto { SL_PROTO_PG = 1, SL_PROTO_HTTP = 2, SL_PROTO_SSH = 3 };
struct sl_request {
	enum sl_proto proto;
	const char *connection;
	const struct sl_sql_class *sql;
	int read_only; /* the connection's read_only: read_write statements are refused */
	const char *http_method, *http_path;
	const char *ssh_command;
};
struct sl_decision {
	enum sl_action action;
	const char *policy;
	const char *rule;
	const char *message;
	const char *const *approvers;
	size_t napprovers;
	unsigned min_approvals;
	int64_t timeout_ms;
	int64_t grant_for_ms;
	const struct sl_cfg_policy_mask *mask;
	int mask_exempt;
	char reason[256];
};
/* Whether a statement reaches a table one of pats[0..n) names, as a block
 * rule's tables: a listed name (an unqualified one matches the table part
 * of a qualified pattern, globs allowed, any case) or a schema the
 * statement acts on as a whole (DROP SCHEMA, schema_to_xml). */
int sl_policy_reaches(char *const *pats, unsigned n, const struct sl_sql_class *cls);

struct sl_policy_set;
int sl_policy_compile(const struct sl_config *cfg, struct sl_policy_set **out, char *err,
		      size_t errlen);
void sl_policy_free(struct sl_policy_set *ps);
int sl_policy_decide(const struct sl_policy_set *ps, const char *subject, const char *const *groups,
		     size_t ngroups, const struct sl_request *req, struct sl_decision *out);

/* The masking section that applies to a caller on a connection: the first
 * applicable policy with a mask; *exempt = 1 if an applicable policy says
 * mask.exempt (its members see raw values). */
void sl_policy_mask_for(const struct sl_policy_set *ps, const char *subject,
			const char *const *groups, size_t ngroups, const char *connection,
			const struct sl_cfg_policy_mask **mask, int *exempt);

#endif
