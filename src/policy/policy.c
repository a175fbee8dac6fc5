/*
 * policy.c - compiles `policies:` into rule tables and evaluates requests.
 * Pure: no clocks, sockets or logging.
 */
#include "sluice/policy.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "sluice/core.h"

struct crule {
	const struct sl_cfg_rule *cfg;
	enum sl_action action;
	uint32_t kinds; /* 0 = any kind (rule without sql:) */
	int has_sql;
	char name[160];
	int64_t timeout_ms, grant_for_ms;
	unsigned min_approvals;
};

struct cpolicy {
	const struct sl_cfg_policy *cfg;
	int default_allow;
	struct crule *rules;
	size_t nrules;
};

struct sl_policy_set {
	struct cpolicy *pols;
	size_t npols;
};

static int
parse_action(const char *s, enum sl_action *a)
{
	if (s == NULL)
		return SL_EINVAL;
	if (strcmp(s, "allow") == 0)
		*a = SL_ACT_ALLOW;
	else if (strcmp(s, "block") == 0 || strcmp(s, "deny") == 0)
		*a = SL_ACT_BLOCK;
	else if (strcmp(s, "review") == 0)
		*a = SL_ACT_REVIEW;
	else
		return SL_EINVAL;
	return 0;
}

int
sl_policy_compile(const struct sl_config *cfg, struct sl_policy_set **out, char *err, size_t errlen)
{
	struct sl_policy_set *ps;

	*out = NULL;
	ps = calloc(1, sizeof(*ps));
	if (ps == NULL)
		return SL_ENOMEM;
	ps->pols = calloc(cfg->policies_count + 1, sizeof(*ps->pols));
	if (ps->pols == NULL) {
		free(ps);
		return SL_ENOMEM;
	}
	for (unsigned i = 0; i < cfg->policies_count; i++) {
		const struct sl_cfg_policy *p = &cfg->policies[i];
		struct cpolicy *cp = &ps->pols[ps->npols++];
		const char *pname = p->name ? p->name : "";

		cp->cfg = p;
		cp->default_allow = p->default_action && strcmp(p->default_action, "allow") == 0;
		for (unsigned j = 0; j < p->connections_count; j++) {
			if (sl_config_connection(cfg, p->connections[j]) == NULL) {
				snprintf(err, errlen,
					 "policies[%u] (%s): unknown connection \"%s\"", i, pname,
					 p->connections[j]);
				goto fail;
			}
		}
		cp->rules = calloc(p->rules_count + 1, sizeof(*cp->rules));
		if (cp->rules == NULL)
			goto nomem;
		for (unsigned j = 0; j < p->rules_count; j++) {
			const struct sl_cfg_rule *r = &p->rules[j];
			struct crule *cr = &cp->rules[cp->nrules++];

			cr->cfg = r;
			if (r->name)
				snprintf(cr->name, sizeof(cr->name), "%s", r->name);
			else
				snprintf(cr->name, sizeof(cr->name), "%s#%u", pname, j + 1);
			/* Decisions, reviews and grants name the rule: a time-bound
			 * grant from one rule must not cover another that shares
			 * its name (of any policy). */
			for (unsigned pi = 0; pi < ps->npols; pi++) {
				const struct cpolicy *op = &ps->pols[pi];

				for (unsigned rj = 0; rj < op->nrules; rj++) {
					if (&op->rules[rj] == cr ||
					    strcmp(op->rules[rj].name, cr->name) != 0)
						continue;
					snprintf(
						err, errlen,
						"policies[%u].rules[%u]: rule name \"%s\" is used "
						"twice; rule names must be unique (reviews, grants "
						"and the audit trail name rules)",
						i, j, cr->name);
					goto fail;
				}
			}
			if (parse_action(r->action, &cr->action) != 0) {
				snprintf(err, errlen,
					 "policies[%u].rules[%u]: unknown action \"%s\" (allow, "
					 "block, "
					 "review)",
					 i, j, r->action ? r->action : "");
				goto fail;
			}
			for (unsigned k = 0; k < r->sql_count; k++) {
				uint32_t b = sl_sql_kind_from_name(r->sql[k]);

				if (b == 0 || b == SL_SQL_UNPARSEABLE) {
					snprintf(err, errlen,
						 "policies[%u].rules[%u]: unknown sql kind \"%s\"",
						 i, j, r->sql[k]);
					goto fail;
				}
				cr->kinds |= b;
			}
			cr->has_sql = r->sql_count > 0;
			if (cr->action == SL_ACT_REVIEW && r->approvers_count == 0) {
				snprintf(err, errlen,
					 "policies[%u].rules[%u]: review needs approvers", i, j);
				goto fail;
			}
			cr->timeout_ms = 5 * 60 * 1000;
			if (r->timeout && sl_parse_duration_ms(r->timeout, &cr->timeout_ms) != 0) {
				snprintf(err, errlen, "policies[%u].rules[%u]: bad timeout \"%s\"",
					 i, j, r->timeout);
				goto fail;
			}
			if (r->grant_for &&
			    sl_parse_duration_ms(r->grant_for, &cr->grant_for_ms) != 0) {
				snprintf(err, errlen,
					 "policies[%u].rules[%u]: bad grant_for \"%s\"", i, j,
					 r->grant_for);
				goto fail;
			}
			cr->min_approvals = r->min_approvals ? r->min_approvals : 1;
			if (cr->min_approvals > 16) {
				/* the review queue counts at most 16 votes: a larger
				 * quorum would be lowered to 16 without a word */
				snprintf(
					err, errlen,
					"policies[%u].rules[%u]: min_approvals %u is more than the "
					"16 votes a review counts",
					i, j, cr->min_approvals);
				goto fail;
			}
			if (r->http && r->http->path == NULL && r->http->method == NULL) {
				snprintf(err, errlen,
					 "policies[%u].rules[%u]: http needs method or path", i, j);
				goto fail;
			}
		}
	}
	*out = ps;
	return 0;
nomem:
	snprintf(err, errlen, "out of memory");
fail:
	sl_policy_free(ps);
	return SL_EINVAL;
}

void
sl_policy_free(struct sl_policy_set *ps)
{
	if (ps == NULL)
		return;
	for (size_t i = 0; i < ps->npols; i++)
		free(ps->pols[i].rules);
	free(ps->pols);
	free(ps);
}

static int
policy_applies(const struct cpolicy *cp, const char *subject, const char *const *groups,
	       size_t ngroups, const char *connection)
{
	const struct sl_cfg_policy *p = cp->cfg;
	int any = p->match.groups_count == 0 && p->match.subjects_count == 0;

	for (unsigned i = 0; i < p->match.groups_count && !any; i++)
		for (size_t g = 0; g < ngroups; g++)
			if (strcmp(p->match.groups[i], groups[g]) == 0)
				any = 1;
	for (unsigned i = 0; i < p->match.subjects_count && !any; i++)
		if (subject && strcmp(p->match.subjects[i], subject) == 0)
			any = 1;
	if (!any)
		return 0;
	if (p->connections_count == 0)
		return 1;
	for (unsigned i = 0; i < p->connections_count; i++)
		if (connection && strcmp(p->connections[i], connection) == 0)
			return 1;
	return 0;
}

/* The last k dot-separated parts of a name (all of it if it has fewer). */
static const char *
last_parts(const char *name, int k, int *have)
{
	const char *p = name + strlen(name);
	int n = 1;

	while (p > name) {
		if (p[-1] == '.') {
			if (n == k)
				break;
			n++;
		}
		p--;
	}
	*have = n;
	return p;
}

/*
 * A rule's table or function name against one the statement names, compared
 * from the right, globs allowed: "t" matches "t", "s.t" and "db.s.t"; "s.t"
 * matches "s.t" and "db.s.t". In block and review rules (restrictive) a
 * qualified pattern also matches a less qualified name with the same last
 * parts: search_path decides what an unqualified name is (`SET search_path
 * = hr` makes "payroll" hr.payroll, and pg_catalog always comes first for
 * "pg_read_file") — unless those last parts are a glob. An allow rule stays
 * exact.
 */
static int
name_matches(const char *pat, const char *name, int restrictive)
{
	int pk, nk;
	const char *n;

	(void)last_parts(pat, INT_MAX, &pk);
	n = last_parts(name, pk, &nk);
	if (nk >= pk)
		return sl_glob_match_ci(pat, n) || strcasecmp(pat, n) == 0;
	if (!restrictive)
		return 0;
	pat = last_parts(pat, nk, &pk);
	/* "audit.*" names a schema, and any unqualified name might be in it:
	 * stretching that would block every unqualified name */
	if (strpbrk(pat, "*?[") != NULL)
		return 0;
	return strcasecmp(pat, name) == 0;
}

/* Whether some name of names[0..n) matches one of the patterns. */
static int
any_listed(char *const *pats, unsigned npats, char *const *names, size_t n, int restrictive)
{
	for (unsigned i = 0; i < npats; i++)
		for (size_t j = 0; j < n; j++)
			if (name_matches(pats[i], names[j], restrictive))
				return 1;
	return 0;
}

/* Whether a statement acting on whole schemas reaches a table a pattern
 * names: one in a listed schema ("hr.payroll" and DROP SCHEMA hr), any
 * table for an unqualified pattern (it may live in that schema), every
 * table for "*" (DROP OWNED). */
static int
schema_listed(char *const *pats, unsigned npats, char *const *schemas, size_t n)
{
	if (n == 0)
		return 0;
	for (unsigned i = 0; i < npats; i++) {
		const char *dot = strrchr(pats[i], '.'), *sch;
		char sp[256];
		size_t sl;
		int glob;

		if (dot == NULL)
			return 1;
		/* the schema is the part before the table ("db.hr.t": hr) */
		for (sch = dot; sch > pats[i] && sch[-1] != '.'; sch--)
			;
		sl = (size_t)(dot - sch);
		glob = memchr(sch, '*', sl) || memchr(sch, '?', sl) || memchr(sch, '[', sl);
		if (glob) {
			if (sl >= sizeof(sp))
				return 1;
			memcpy(sp, sch, sl);
			sp[sl] = '\0';
		}
		for (size_t j = 0; j < n; j++) {
			if (strcmp(schemas[j], "*") == 0)
				return 1;
			if (strlen(schemas[j]) == sl && strncasecmp(sch, schemas[j], sl) == 0)
				return 1;
			if (glob && sl_glob_match_ci(sp, schemas[j]))
				return 1;
		}
	}
	return 0;
}

int
sl_policy_reaches(char *const *pats, unsigned n, const struct sl_sql_class *cls)
{
	return any_listed(pats, n, cls->tables, cls->ntables, 1) ||
	       schema_listed(pats, n, cls->schemas, cls->nschemas);
}

/* Whether there are names and every one matches one of the patterns. */
static int
all_listed(char *const *pats, unsigned npats, char *const *names, size_t n)
{
	if (n == 0)
		return 0;
	for (size_t j = 0; j < n; j++)
		if (!any_listed(pats, npats, &names[j], 1, 0))
			return 0;
	return 1;
}

/*
 * Whether the rule's non-kind conditions hold. tables: and functions: are
 * read the safe way for each action: a block or review rule applies when
 * the statement touches any listed name; an allow rule only when every
 * table it touches (every function it calls) is listed. Otherwise "allow
 * update on scratch" would let "UPDATE payroll ... FROM scratch", or
 * "UPDATE scratch ...; UPDATE payroll ...", pass as an update of scratch.
 */
static int
conditions_hold(const struct crule *cr, const struct sl_request *req)
{
	const struct sl_cfg_rule *r = cr->cfg;
	int restrictive = cr->action == SL_ACT_BLOCK || cr->action == SL_ACT_REVIEW;

	switch (req->proto) {
	case SL_PROTO_PG:
		if (r->http || r->ssh || req->sql == NULL)
			return 0;
		if (!cr->has_sql && r->functions_count == 0 && r->tables_count == 0)
			return 0; /* rule is for another protocol or empty */
		if (r->functions_count > 0 &&
		    !(restrictive ? any_listed(r->functions, r->functions_count,
					       req->sql->functions, req->sql->nfunctions, 1)
				  : all_listed(r->functions, r->functions_count, req->sql->calls,
					       req->sql->ncalls)))
			return 0;
		/* an allow rule's tables are checked per kind (allow_covers) */
		if (r->tables_count > 0 && restrictive &&
		    !sl_policy_reaches(r->tables, r->tables_count, req->sql))
			return 0;
		return 1;
	case SL_PROTO_HTTP:
		if (r->http == NULL || cr->has_sql || r->ssh)
			return 0;
		if (r->http->method && strcmp(r->http->method, "*") != 0 &&
		    (req->http_method == NULL ||
		     strcasecmp(r->http->method, req->http_method) != 0))
			return 0;
		if (r->http->path &&
		    (req->http_path == NULL || !sl_glob_match(r->http->path, req->http_path)))
			return 0;
		return 1;
	case SL_PROTO_SSH:
		if (r->ssh == NULL || cr->has_sql || r->http)
			return 0;
		return r->ssh->command && req->ssh_command &&
		       sl_glob_match_ci(r->ssh->command, req->ssh_command);
	}
	return 0;
}

/*
 * Which of the kinds in hit an allow rule with tables: covers: those for
 * which every table the statement accesses that way is listed. A DML kind
 * (insert, update, delete, merge) looks at the tables it writes, select at
 * the tables read; so "allow update on scratch" covers UPDATE scratch ...
 * FROM orders (orders is read: the select is another rule's business) and
 * not UPDATE orders ... FROM scratch. Every other kind, and a kind whose
 * tables could not be told, needs every table of the statement listed. A
 * statement on whole schemas is never covered.
 */
static uint32_t
allow_covers(const struct sl_cfg_rule *r, const struct sl_sql_class *c, uint32_t hit)
{
	/* the kinds table_kinds records */
	const uint32_t told =
		SL_SQL_SELECT | SL_SQL_INSERT | SL_SQL_UPDATE | SL_SQL_DELETE | SL_SQL_MERGE;
	uint32_t out = 0;

	if (c->nschemas > 0 || c->ntables == 0)
		return 0;
	for (int b = 0; b < 32; b++) {
		uint32_t bit = 1u << b, tag = bit;
		size_t n = 0;
		int ok = 1;

		if (!(hit & bit))
			continue;
		if (bit == SL_SQL_UPDATE_ALL)
			tag = SL_SQL_UPDATE;
		if (bit == SL_SQL_DELETE_ALL)
			tag = SL_SQL_DELETE;
		for (size_t t = 0; (tag & told) && c->table_kinds && t < c->ntables; t++)
			if (c->table_kinds[t] & tag) {
				n++;
				if (!any_listed(r->tables, r->tables_count, &c->tables[t], 1, 0))
					ok = 0;
			}
		if (n == 0) /* not a DML kind, or its tables not told: all of them */
			ok = all_listed(r->tables, r->tables_count, c->tables, c->ntables);
		if (ok)
			out |= bit;
	}
	return out;
}

static void
fill(struct sl_decision *d, const struct cpolicy *cp, const struct crule *cr)
{
	d->policy = cp->cfg->name;
	d->rule = cr->name;
	d->message = cr->cfg->message;
	if (cr->action == SL_ACT_REVIEW) {
		d->approvers = (const char *const *)cr->cfg->approvers;
		d->napprovers = cr->cfg->approvers_count;
		d->min_approvals = cr->min_approvals;
		d->timeout_ms = cr->timeout_ms;
		d->grant_for_ms = cr->grant_for_ms;
	}
}

/* Kinds that refine another: allowing the base allows them (a DELETE without
 * WHERE is still a delete), unless a block or review rule names them: those
 * win over any allow. */
static uint32_t
refine(uint32_t k)
{
	if (k & SL_SQL_UPDATE)
		k |= SL_SQL_UPDATE_ALL;
	if (k & SL_SQL_DELETE)
		k |= SL_SQL_DELETE_ALL;
	if (k & SL_SQL_DDL)
		k |= SL_SQL_DROP;
	return k;
}

int
sl_policy_decide(const struct sl_policy_set *ps, const char *subject, const char *const *groups,
		 size_t ngroups, const struct sl_request *req, struct sl_decision *d)
{
	uint32_t kinds = 0, covered = 0;
	const struct cpolicy *review_pol = NULL, *allow_pol = NULL, *default_pol = NULL;
	const struct crule *review_rule = NULL, *allow_rule = NULL;
	int default_allow = 0, any_policy = 0;
	char kbuf[200];

	memset(d, 0, sizeof(*d));
	d->action = SL_ACT_BLOCK;
	if (req->proto == SL_PROTO_PG) {
		if (req->sql == NULL)
			return SL_EINVAL;
		kinds = req->sql->kinds;
		if (kinds & SL_SQL_UNPARSEABLE) {
			d->message = "statement could not be parsed; sluice refuses what it cannot "
				     "classify";
			return 0;
		}
		if (req->read_only && (req->sql->read_write || (kinds & SL_SQL_COPY_PROGRAM))) {
			/* before any rule: no policy can make a read-only
			 * connection read-write. The server's files and
			 * programs (COPY ... PROGRAM, lo_export) are outside
			 * what a read-only transaction guards. */
			d->rule = "read_only";
			snprintf(d->reason, sizeof(d->reason), "connection %s is read-only: %s",
				 req->connection ? req->connection : "?",
				 req->sql->read_write
					 ? "its transactions cannot be made read-write, "
					   "and code that can leave them (DO, CALL, "
					   "dblink) is not run"
					 : "the server's files and programs are out of "
					   "its bounds");
			d->message = d->reason;
			return 0;
		}
		if (req->sql->nstatements == 0 && kinds == 0) {
			d->action = SL_ACT_ALLOW;
			return 0;
		}
		/* EXECUTE/PREPARE carry their statement's kinds; the marker
		 * kinds themselves need no rule. */
		kinds &= ~(SL_SQL_PREPARE | SL_SQL_EXECUTE);
		if (kinds == 0)
			kinds = SL_SQL_UTILITY;
	}
	/* Pass 1: blocks, and what allow/review rules cover. */
	for (size_t i = 0; i < ps->npols; i++) {
		const struct cpolicy *cp = &ps->pols[i];

		if (!policy_applies(cp, subject, groups, ngroups, req->connection))
			continue;
		any_policy = 1;
		if (cp->default_allow && !default_allow) {
			default_allow = 1;
			default_pol = cp;
		}
		if (cp->cfg->mask && d->mask == NULL && !cp->cfg->mask->exempt)
			d->mask = cp->cfg->mask;
		if (cp->cfg->mask && cp->cfg->mask->exempt)
			d->mask_exempt = 1;
		for (size_t j = 0; j < cp->nrules; j++) {
			const struct crule *cr = &cp->rules[j];
			uint32_t hit;

			if (!conditions_hold(cr, req))
				continue;
			hit = req->proto == SL_PROTO_PG ? (cr->has_sql ? cr->kinds & kinds : kinds)
							: 1;
			if (req->proto == SL_PROTO_PG && cr->action == SL_ACT_ALLOW &&
			    cr->cfg->tables_count > 0)
				hit = allow_covers(cr->cfg, req->sql, hit);
			if (hit == 0)
				continue;
			if (cr->action == SL_ACT_BLOCK) {
				fill(d, cp, cr);
				d->action = SL_ACT_BLOCK;
				if (d->message == NULL) {
					sl_sql_kinds_str(hit, kbuf, sizeof(kbuf));
					snprintf(d->reason, sizeof(d->reason),
						 req->proto == SL_PROTO_PG
							 ? "statement kind %s is not allowed"
							 : "request is not allowed",
						 kbuf);
					d->message = d->reason;
				}
				return 0;
			}
			if (req->proto != SL_PROTO_PG)
				hit = 1;
			covered |= hit;
			if (cr->action == SL_ACT_ALLOW) {
				if (allow_rule == NULL) {
					allow_pol = cp;
					allow_rule = cr;
				}
			} else if (review_rule == NULL) {
				review_pol = cp;
				review_rule = cr;
			}
		}
	}
	if (req->proto != SL_PROTO_PG)
		kinds = 1;
	covered = refine(covered);
	if ((covered & kinds) == kinds || default_allow) {
		/* The rule order is block, then review, then allow: a review
		 * rule that matches holds the request even where an allow rule
		 * (or a policy's default) would let it through. Otherwise
		 * "allow delete" would silently void "review delete_all". */
		if (review_rule != NULL) {
			fill(d, review_pol, review_rule);
			d->action = SL_ACT_REVIEW;
			return 0;
		}
		/* name what allowed it, for the audit trail: the first allow
		 * rule that matched, else the policy that allows by default */
		if (allow_rule != NULL && (covered & kinds) == kinds) {
			fill(d, allow_pol, allow_rule);
		} else if (default_pol != NULL) {
			d->policy = default_pol->cfg->name;
			d->rule = "default";
		}
		d->action = SL_ACT_ALLOW;
		d->message = NULL;
		return 0;
	}
	d->action = SL_ACT_BLOCK;
	if (!any_policy) {
		snprintf(d->reason, sizeof(d->reason),
			 "no policy grants %s access to connection %s", subject ? subject : "you",
			 req->connection ? req->connection : "?");
	} else if (req->proto == SL_PROTO_PG) {
		sl_sql_kinds_str(kinds & ~covered, kbuf, sizeof(kbuf));
		snprintf(d->reason, sizeof(d->reason),
			 "statement kind %s is not allowed (default deny)", kbuf);
	} else {
		snprintf(d->reason, sizeof(d->reason), "request is not allowed (default deny)");
	}
	d->message = d->reason;
	return 0;
}

void
sl_policy_mask_for(const struct sl_policy_set *ps, const char *subject, const char *const *groups,
		   size_t ngroups, const char *connection, const struct sl_cfg_policy_mask **mask,
		   int *exempt)
{
	*mask = NULL;
	*exempt = 0;
	for (size_t i = 0; i < ps->npols; i++) {
		const struct cpolicy *cp = &ps->pols[i];

		if (cp->cfg->mask == NULL ||
		    !policy_applies(cp, subject, groups, ngroups, connection))
			continue;
		if (cp->cfg->mask->exempt)
			*exempt = 1;
		else if (*mask == NULL)
			*mask = cp->cfg->mask;
	}
}
