/*
 * config.c - the YAML configuration, loaded with libcyaml into the structs
 * of config.h, then defaulted and validated. Errors name file, line and
 * column (libcyaml's log lines carry them) or the item at fault.
 */
#include "sluice/config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cyaml/cyaml.h>

#include "sluice/core.h"

#define CONFIG_MAX (4u << 20)

#define STR(key, st, m)                                                                            \
	CYAML_FIELD_STRING_PTR(key, CYAML_FLAG_POINTER | CYAML_FLAG_OPTIONAL, st, m, 0,            \
			       CYAML_UNLIMITED)
#define UINT(key, st, m) CYAML_FIELD_UINT(key, CYAML_FLAG_OPTIONAL, st, m)
/* libcyaml reads any bool value that is not a known false word as true: a
 * typo ("ture", "maybe") would switch on allow_cleartext or read_only
 * silently. As a strict enum only YAML's usual spellings load; anything
 * else is an error naming the line. */
static const cyaml_strval_t bool_words[] = {
	{"false", 0}, {"False", 0}, {"FALSE", 0}, {"no", 0},   {"No", 0},   {"NO", 0},
	{"off", 0},   {"Off", 0},   {"OFF", 0},	  {"true", 1}, {"True", 1}, {"TRUE", 1},
	{"yes", 1},   {"Yes", 1},   {"YES", 1},	  {"on", 1},   {"On", 1},   {"ON", 1},
};
#define BOOL(key, st, m)                                                                           \
	CYAML_FIELD_ENUM(key, CYAML_FLAG_OPTIONAL | CYAML_FLAG_STRICT, st, m, bool_words,          \
			 CYAML_ARRAY_LEN(bool_words))
#define STRSEQ(key, st, m)                                                                         \
	CYAML_FIELD_SEQUENCE(key, CYAML_FLAG_POINTER | CYAML_FLAG_OPTIONAL, st, m, &string_entry,  \
			     0, CYAML_UNLIMITED)

static const cyaml_schema_value_t string_entry = {
	CYAML_VALUE_STRING(CYAML_FLAG_POINTER, char, 0, CYAML_UNLIMITED),
};

static const cyaml_schema_field_t listener_fields[] = {
	STR("listen", struct sl_cfg_listener, listen),
	STR("tls_cert", struct sl_cfg_listener, tls_cert),
	STR("tls_key", struct sl_cfg_listener, tls_key),
	BOOL("allow_cleartext", struct sl_cfg_listener, allow_cleartext),
	CYAML_FIELD_END,
};

static const cyaml_schema_field_t gateway_fields[] = {
	STR("data_dir", struct sl_cfg_gateway, data_dir),
	UINT("workers", struct sl_cfg_gateway, workers),
	STR("log_level", struct sl_cfg_gateway, log_level),
	CYAML_FIELD_MAPPING("admin", CYAML_FLAG_OPTIONAL, struct sl_cfg_gateway, admin,
			    listener_fields),
	CYAML_FIELD_MAPPING("postgres", CYAML_FLAG_OPTIONAL, struct sl_cfg_gateway, postgres,
			    listener_fields),
	CYAML_FIELD_MAPPING("http", CYAML_FLAG_OPTIONAL, struct sl_cfg_gateway, http,
			    listener_fields),
	CYAML_FIELD_MAPPING("ssh", CYAML_FLAG_OPTIONAL, struct sl_cfg_gateway, ssh,
			    listener_fields),
	UINT("max_message_bytes", struct sl_cfg_gateway, max_message_bytes),
	STR("shutdown_timeout", struct sl_cfg_gateway, shutdown_timeout),
	STR("login_timeout", struct sl_cfg_gateway, login_timeout),
	STR("message_timeout", struct sl_cfg_gateway, message_timeout),
	UINT("max_connections", struct sl_cfg_gateway, max_connections),
	UINT("max_logins_per_address", struct sl_cfg_gateway, max_logins_per_address),
	UINT("max_buffered_bytes", struct sl_cfg_gateway, max_buffered_bytes),
	UINT("max_held_bytes", struct sl_cfg_gateway, max_held_bytes),
	CYAML_FIELD_END,
};

static const cyaml_schema_field_t issuer_fields[] = {
	STR("issuer", struct sl_cfg_issuer, issuer),
	STR("audience", struct sl_cfg_issuer, audience),
	STR("jwks_file", struct sl_cfg_issuer, jwks_file),
	STR("jwks_uri", struct sl_cfg_issuer, jwks_uri),
	STR("groups_claim", struct sl_cfg_issuer, groups_claim),
	STR("subject_claim", struct sl_cfg_issuer, subject_claim),
	STR("leeway", struct sl_cfg_issuer, leeway),
	STR("ca_file", struct sl_cfg_issuer, ca_file),
	STR("jwks_refresh", struct sl_cfg_issuer, jwks_refresh),
	CYAML_FIELD_END,
};

static const cyaml_schema_value_t issuer_entry = {
	CYAML_VALUE_MAPPING(CYAML_FLAG_DEFAULT, struct sl_cfg_issuer, issuer_fields),
};

static const cyaml_schema_field_t identity_fields[] = {
	CYAML_FIELD_SEQUENCE("issuers", CYAML_FLAG_POINTER | CYAML_FLAG_OPTIONAL,
			     struct sl_cfg_identity, issuers, &issuer_entry, 0, CYAML_UNLIMITED),
	CYAML_FIELD_END,
};

static const cyaml_schema_field_t audit_fields[] = {
	STR("store", struct sl_cfg_audit, store),
	STR("mode", struct sl_cfg_audit, mode),
	UINT("checkpoint_every", struct sl_cfg_audit, checkpoint_every),
	STR("checkpoint_interval", struct sl_cfg_audit, checkpoint_interval),
	BOOL("log_results", struct sl_cfg_audit, log_results),
	CYAML_FIELD_END,
};

static const cyaml_schema_field_t header_fields[] = {
	STR("name", struct sl_cfg_header, name),
	STR("value_env", struct sl_cfg_header, value_env),
	STR("value_file", struct sl_cfg_header, value_file),
	CYAML_FIELD_END,
};

static const cyaml_schema_field_t connection_fields[] = {
	STR("name", struct sl_cfg_connection, name),
	STR("type", struct sl_cfg_connection, type),
	STR("target", struct sl_cfg_connection, target),
	STR("database", struct sl_cfg_connection, database),
	STR("user", struct sl_cfg_connection, user),
	STR("password_env", struct sl_cfg_connection, password_env),
	STR("password_file", struct sl_cfg_connection, password_file),
	STR("tls", struct sl_cfg_connection, tls),
	STR("ca_file", struct sl_cfg_connection, ca_file),
	STR("channel_binding", struct sl_cfg_connection, channel_binding),
	BOOL("allow_cleartext_password", struct sl_cfg_connection, allow_cleartext_password),
	BOOL("read_only", struct sl_cfg_connection, read_only),
	STR("pool_size", struct sl_cfg_connection, pool_size),
	STR("pool_idle_timeout", struct sl_cfg_connection, pool_idle_timeout),
	STR("pool_lifetime", struct sl_cfg_connection, pool_lifetime),
	CYAML_FIELD_MAPPING_PTR("inject_header", CYAML_FLAG_POINTER | CYAML_FLAG_OPTIONAL,
				struct sl_cfg_connection, inject_header, header_fields),
	STR("private_key_file", struct sl_cfg_connection, private_key_file),
	STR("host_key", struct sl_cfg_connection, host_key),
	CYAML_FIELD_END,
};

static const cyaml_schema_value_t connection_entry = {
	CYAML_VALUE_MAPPING(CYAML_FLAG_DEFAULT, struct sl_cfg_connection, connection_fields),
};

static const cyaml_schema_field_t match_fields[] = {
	STRSEQ("groups", struct sl_cfg_match, groups),
	STRSEQ("subjects", struct sl_cfg_match, subjects),
	CYAML_FIELD_END,
};

static const cyaml_schema_field_t http_rule_fields[] = {
	STR("method", struct sl_cfg_http_rule, method),
	STR("path", struct sl_cfg_http_rule, path),
	CYAML_FIELD_END,
};

static const cyaml_schema_field_t ssh_rule_fields[] = {
	STR("command", struct sl_cfg_ssh_rule, command),
	CYAML_FIELD_END,
};

static const cyaml_schema_field_t rule_fields[] = {
	STR("name", struct sl_cfg_rule, name),
	STR("action", struct sl_cfg_rule, action),
	STRSEQ("sql", struct sl_cfg_rule, sql),
	STRSEQ("functions", struct sl_cfg_rule, functions),
	STRSEQ("tables", struct sl_cfg_rule, tables),
	CYAML_FIELD_MAPPING_PTR("http", CYAML_FLAG_POINTER | CYAML_FLAG_OPTIONAL,
				struct sl_cfg_rule, http, http_rule_fields),
	CYAML_FIELD_MAPPING_PTR("ssh", CYAML_FLAG_POINTER | CYAML_FLAG_OPTIONAL, struct sl_cfg_rule,
				ssh, ssh_rule_fields),
	STR("message", struct sl_cfg_rule, message),
	STRSEQ("approvers", struct sl_cfg_rule, approvers),
	UINT("min_approvals", struct sl_cfg_rule, min_approvals),
	STR("timeout", struct sl_cfg_rule, timeout),
	STR("grant_for", struct sl_cfg_rule, grant_for),
	CYAML_FIELD_END,
};

static const cyaml_schema_value_t rule_entry = {
	CYAML_VALUE_MAPPING(CYAML_FLAG_DEFAULT, struct sl_cfg_rule, rule_fields),
};

static const cyaml_schema_field_t style_fields[] = {
	STR("detector", struct sl_cfg_style, detector),
	STR("column", struct sl_cfg_style, column),
	STR("style", struct sl_cfg_style, style),
	CYAML_FIELD_END,
};

static const cyaml_schema_value_t style_entry = {
	CYAML_VALUE_MAPPING(CYAML_FLAG_DEFAULT, struct sl_cfg_style, style_fields),
};

static const cyaml_schema_field_t policy_mask_fields[] = {
	STRSEQ("columns", struct sl_cfg_policy_mask, columns),
	STRSEQ("json_keys", struct sl_cfg_policy_mask, json_keys),
	STRSEQ("detectors", struct sl_cfg_policy_mask, detectors),
	CYAML_FIELD_SEQUENCE("styles", CYAML_FLAG_POINTER | CYAML_FLAG_OPTIONAL,
			     struct sl_cfg_policy_mask, styles, &style_entry, 0, CYAML_UNLIMITED),
	STR("style", struct sl_cfg_policy_mask, style),
	BOOL("exempt", struct sl_cfg_policy_mask, exempt),
	CYAML_FIELD_END,
};

static const cyaml_schema_field_t policy_fields[] = {
	STR("name", struct sl_cfg_policy, name),
	CYAML_FIELD_MAPPING("match", CYAML_FLAG_OPTIONAL, struct sl_cfg_policy, match,
			    match_fields),
	STRSEQ("connections", struct sl_cfg_policy, connections),
	STR("default", struct sl_cfg_policy, default_action),
	CYAML_FIELD_SEQUENCE("rules", CYAML_FLAG_POINTER | CYAML_FLAG_OPTIONAL,
			     struct sl_cfg_policy, rules, &rule_entry, 0, CYAML_UNLIMITED),
	CYAML_FIELD_MAPPING_PTR("mask", CYAML_FLAG_POINTER | CYAML_FLAG_OPTIONAL,
				struct sl_cfg_policy, mask, policy_mask_fields),
	CYAML_FIELD_END,
};

static const cyaml_schema_value_t policy_entry = {
	CYAML_VALUE_MAPPING(CYAML_FLAG_DEFAULT, struct sl_cfg_policy, policy_fields),
};

static const cyaml_schema_field_t pattern_fields[] = {
	STR("name", struct sl_cfg_pattern, name),
	STR("regex", struct sl_cfg_pattern, regex),
	CYAML_FIELD_END,
};

static const cyaml_schema_value_t pattern_entry = {
	CYAML_VALUE_MAPPING(CYAML_FLAG_DEFAULT, struct sl_cfg_pattern, pattern_fields),
};

static const cyaml_schema_field_t mask_fields[] = {
	CYAML_FIELD_SEQUENCE("patterns", CYAML_FLAG_POINTER | CYAML_FLAG_OPTIONAL,
			     struct sl_cfg_mask, patterns, &pattern_entry, 0, CYAML_UNLIMITED),
	STR("hash_key_env", struct sl_cfg_mask, hash_key_env),
	STR("hash_key_file", struct sl_cfg_mask, hash_key_file),
	CYAML_FIELD_END,
};

static const cyaml_schema_field_t webhook_fields[] = {
	STR("url", struct sl_cfg_webhook, url),
	STR("format", struct sl_cfg_webhook, format),
	STR("timeout", struct sl_cfg_webhook, timeout),
	UINT("retries", struct sl_cfg_webhook, retries),
	CYAML_FIELD_END,
};

static const cyaml_schema_value_t webhook_entry = {
	CYAML_VALUE_MAPPING(CYAML_FLAG_DEFAULT, struct sl_cfg_webhook, webhook_fields),
};

static const cyaml_schema_field_t review_fields[] = {
	CYAML_FIELD_SEQUENCE("webhooks", CYAML_FLAG_POINTER | CYAML_FLAG_OPTIONAL,
			     struct sl_cfg_review, webhooks, &webhook_entry, 0, CYAML_UNLIMITED),
	CYAML_FIELD_END,
};

static const cyaml_schema_field_t top_fields[] = {
	CYAML_FIELD_MAPPING("gateway", CYAML_FLAG_OPTIONAL, struct sl_config, gateway,
			    gateway_fields),
	CYAML_FIELD_MAPPING("identity", CYAML_FLAG_OPTIONAL, struct sl_config, identity,
			    identity_fields),
	CYAML_FIELD_MAPPING("audit", CYAML_FLAG_OPTIONAL, struct sl_config, audit, audit_fields),
	CYAML_FIELD_SEQUENCE("connections", CYAML_FLAG_POINTER | CYAML_FLAG_OPTIONAL,
			     struct sl_config, connections, &connection_entry, 0, CYAML_UNLIMITED),
	CYAML_FIELD_SEQUENCE("policies", CYAML_FLAG_POINTER | CYAML_FLAG_OPTIONAL, struct sl_config,
			     policies, &policy_entry, 0, CYAML_UNLIMITED),
	CYAML_FIELD_MAPPING("mask", CYAML_FLAG_OPTIONAL, struct sl_config, mask, mask_fields),
	CYAML_FIELD_MAPPING("review", CYAML_FLAG_OPTIONAL, struct sl_config, review, review_fields),
	CYAML_FIELD_END,
};

static const cyaml_schema_value_t top_schema = {
	CYAML_VALUE_MAPPING(CYAML_FLAG_POINTER, struct sl_config, top_fields),
};

/* libcyaml reports through a log callback; collect its lines for err. */
struct logbuf {
	char text[1024];
	size_t len;
};

static __thread struct logbuf *cur_log;

static void
collect_log(cyaml_log_t level, void *ctx, const char *fmt, va_list args)
{
	struct logbuf *lb = cur_log;
	int n;

	if (lb == NULL || level < CYAML_LOG_ERROR || lb->len >= sizeof(lb->text) - 1)
		return;
	n = vsnprintf(lb->text + lb->len, sizeof(lb->text) - lb->len, fmt, args);
	if (n > 0)
		lb->len += (size_t)n;
	if (lb->len >= sizeof(lb->text))
		lb->len = sizeof(lb->text) - 1;
}

static const cyaml_config_t cyaml_cfg = {
	.log_fn = collect_log,
	.mem_fn = cyaml_mem,
	.log_level = CYAML_LOG_ERROR,
	.flags = CYAML_CFG_NO_ALIAS,
};

static int
set_default(char **field, const char *value)
{
	if (*field != NULL)
		return 0;
	*field = strdup(value);
	return *field ? 0 : SL_ENOMEM;
}

static int
set_env(char **field, const char *env)
{
	const char *v = getenv(env);

	if (v == NULL || *v == '\0')
		return 0;
	free(*field);
	*field = strdup(v);
	return *field ? 0 : SL_ENOMEM;
}

#define FAIL(...)                                                                                  \
	do {                                                                                       \
		snprintf(err, errlen, __VA_ARGS__);                                                \
		return SL_EINVAL;                                                                  \
	} while (0)

static int
check_duration(const char *what, const char *v, char *err, size_t errlen)
{
	int64_t ms;

	if (v != NULL && sl_parse_duration_ms(v, &ms) != 0)
		FAIL("%s: bad duration \"%s\" (use e.g. 300s, 5m, 1h)", what, v);
	return 0;
}

/* A connection's pool duration: v, else dflt; more than zero. */
static int
pool_duration(unsigned i, const struct sl_cfg_connection *cn, const char *key, const char *v,
	      int64_t dflt, int64_t *out, char *err, size_t errlen)
{
	*out = dflt;
	if (v != NULL && (sl_parse_duration_ms(v, out) != 0 || *out <= 0))
		FAIL("connections[%u] (%s): %s: bad duration \"%s\" (use e.g. 30s, 5m, 1h)", i,
		     cn->name, key, v);
	return 0;
}

static int
check_listener(const char *what, const struct sl_cfg_listener *l, char *err, size_t errlen)
{
	const char *colon;

	if (l->listen != NULL) {
		colon = strrchr(l->listen, ':');
		if (colon == NULL || colon == l->listen || colon[1] == '\0' ||
		    strspn(colon + 1, "0123456789") != strlen(colon + 1) || atoi(colon + 1) > 65535)
			FAIL("gateway.%s.listen: \"%s\" is not host:port", what, l->listen);
	}
	if ((l->tls_cert == NULL) != (l->tls_key == NULL))
		FAIL("gateway.%s: tls_cert and tls_key must be given together", what);
	return 0;
}

static int
validate(struct sl_config *c, char *err, size_t errlen)
{
	int r;

	if ((r = check_listener("admin", &c->gateway.admin, err, errlen)) != 0 ||
	    (r = check_listener("postgres", &c->gateway.postgres, err, errlen)) != 0 ||
	    (r = check_listener("http", &c->gateway.http, err, errlen)) != 0 ||
	    (r = check_listener("ssh", &c->gateway.ssh, err, errlen)) != 0)
		return r;
	if (c->gateway.log_level != NULL && strcmp(c->gateway.log_level, "debug") != 0 &&
	    strcmp(c->gateway.log_level, "info") != 0 &&
	    strcmp(c->gateway.log_level, "warn") != 0 && strcmp(c->gateway.log_level, "error") != 0)
		FAIL("gateway.log_level must be debug, info, warn or error");
	if (c->gateway.workers > 64)
		FAIL("gateway.workers: at most 64");
	if ((r = check_duration("gateway.shutdown_timeout", c->gateway.shutdown_timeout, err,
				errlen)) != 0 ||
	    (r = check_duration("gateway.login_timeout", c->gateway.login_timeout, err, errlen)) !=
		    0 ||
	    (r = check_duration("gateway.message_timeout", c->gateway.message_timeout, err,
				errlen)) != 0 ||
	    (r = check_duration("audit.checkpoint_interval", c->audit.checkpoint_interval, err,
				errlen)) != 0)
		return r;
	if (c->audit.mode != NULL && strcmp(c->audit.mode, "strict") != 0 &&
	    strcmp(c->audit.mode, "async") != 0)
		FAIL("audit.mode must be strict or async");
	for (unsigned i = 0; i < c->identity.issuers_count; i++) {
		struct sl_cfg_issuer *is = &c->identity.issuers[i];
		char what[64];

		if (is->issuer == NULL || is->audience == NULL)
			FAIL("identity.issuers[%u]: issuer and audience are required", i);
		if (is->jwks_file != NULL && is->jwks_uri != NULL)
			FAIL("identity.issuers[%u]: jwks_file and jwks_uri are mutually exclusive",
			     i);
		snprintf(what, sizeof(what), "identity.issuers[%u].leeway", i);
		if ((r = check_duration(what, is->leeway, err, errlen)) != 0)
			return r;
		snprintf(what, sizeof(what), "identity.issuers[%u].jwks_refresh", i);
		if ((r = check_duration(what, is->jwks_refresh, err, errlen)) != 0)
			return r;
	}
	for (unsigned i = 0; i < c->connections_count; i++) {
		struct sl_cfg_connection *cn = &c->connections[i];

		if (cn->name == NULL || cn->name[0] == '\0')
			FAIL("connections[%u]: name is required", i);
		if (cn->type == NULL ||
		    (strcmp(cn->type, "postgres") != 0 && strcmp(cn->type, "http") != 0 &&
		     strcmp(cn->type, "ssh") != 0))
			FAIL("connections[%u] (%s): type must be postgres, http or ssh", i,
			     cn->name);
		if (cn->target == NULL)
			FAIL("connections[%u] (%s): target is required", i, cn->name);
		if (cn->password_env != NULL && cn->password_file != NULL)
			FAIL("connections[%u] (%s): password_env and password_file are mutually "
			     "exclusive",
			     i, cn->name);
		if (cn->tls != NULL && strcmp(cn->tls, "disable") != 0 &&
		    strcmp(cn->tls, "require") != 0 && strcmp(cn->tls, "verify-full") != 0)
			FAIL("connections[%u] (%s): tls must be disable, require or verify-full", i,
			     cn->name);
		if (cn->channel_binding != NULL && strcmp(cn->channel_binding, "disable") != 0 &&
		    strcmp(cn->channel_binding, "prefer") != 0 &&
		    strcmp(cn->channel_binding, "require") != 0)
			FAIL("connections[%u] (%s): channel_binding must be disable, prefer or "
			     "require",
			     i, cn->name);
		if (cn->channel_binding != NULL && strcmp(cn->channel_binding, "require") == 0 &&
		    (cn->tls == NULL || strcmp(cn->tls, "disable") == 0))
			FAIL("connections[%u] (%s): channel_binding: require needs tls: require or "
			     "verify-full",
			     i, cn->name);
		if (cn->ca_file != NULL && strcmp(cn->type, "postgres") == 0 &&
		    (cn->tls == NULL || strcmp(cn->tls, "verify-full") != 0))
			FAIL("connections[%u] (%s): ca_file is only used with tls: verify-full", i,
			     cn->name);
		if (cn->ca_file != NULL && access(cn->ca_file, R_OK) != 0)
			FAIL("connections[%u] (%s): ca_file %s cannot be read", i, cn->name,
			     cn->ca_file);
		if (cn->read_only && strcmp(cn->type, "postgres") != 0)
			FAIL("connections[%u] (%s): read_only applies to postgres connections only",
			     i, cn->name);
		if (strcmp(cn->type, "postgres") == 0 && strchr(cn->target, ':') == NULL)
			FAIL("connections[%u] (%s): target must be host:port", i, cn->name);
		cn->pool_max = 8;
		if (cn->pool_size != NULL) {
			const char *v = cn->pool_size;

			if (v[0] == '\0' || strspn(v, "0123456789") != strlen(v) || strlen(v) > 4 ||
			    atoi(v) > 1000)
				FAIL("connections[%u] (%s): pool_size must be a number from 0 to "
				     "1000",
				     i, cn->name);
			cn->pool_max = (unsigned)atoi(v);
		}
		if ((r = pool_duration(i, cn, "pool_idle_timeout", cn->pool_idle_timeout, 60000,
				       &cn->pool_idle_ms, err, errlen)) != 0 ||
		    (r = pool_duration(i, cn, "pool_lifetime", cn->pool_lifetime, 3600000,
				       &cn->pool_lifetime_ms, err, errlen)) != 0)
			return r;
		for (unsigned j = 0; j < i; j++)
			if (strcmp(c->connections[j].name, cn->name) == 0)
				FAIL("connections: duplicate name \"%s\"", cn->name);
	}
	for (unsigned i = 0; i < c->policies_count; i++) {
		struct sl_cfg_policy *p = &c->policies[i];

		if (p->default_action != NULL && strcmp(p->default_action, "allow") != 0 &&
		    strcmp(p->default_action, "deny") != 0)
			FAIL("policies[%u]: default must be allow or deny", i);
		for (unsigned j = 0; j < p->rules_count; j++) {
			char what[96];

			snprintf(what, sizeof(what), "policies[%u].rules[%u].timeout", i, j);
			if ((r = check_duration(what, p->rules[j].timeout, err, errlen)) != 0)
				return r;
			snprintf(what, sizeof(what), "policies[%u].rules[%u].grant_for", i, j);
			if ((r = check_duration(what, p->rules[j].grant_for, err, errlen)) != 0)
				return r;
		}
	}
	for (unsigned i = 0; i < c->mask.patterns_count; i++)
		if (c->mask.patterns[i].name == NULL || c->mask.patterns[i].regex == NULL)
			FAIL("mask.patterns[%u]: name and regex are required", i);
	return 0;
}

static int
fill_defaults(struct sl_config *c)
{
	char buf[4096];
	long n;
	int r = 0;

	r |= set_env(&c->gateway.data_dir, "SLUICE_DATA_DIR");
	r |= set_env(&c->gateway.postgres.listen, "SLUICE_PG_LISTEN");
	r |= set_env(&c->gateway.admin.listen, "SLUICE_ADMIN_LISTEN");
	r |= set_default(&c->gateway.data_dir, "./var");
	r |= set_default(&c->gateway.log_level, "info");
	r |= set_default(&c->gateway.shutdown_timeout, "10s");
	r |= set_default(&c->gateway.login_timeout, "15s");
	r |= set_default(&c->gateway.message_timeout, "60s");
	if (c->gateway.workers == 0) {
		n = sysconf(_SC_NPROCESSORS_ONLN);
		c->gateway.workers = n < 1 ? 1 : n > 64 ? 64 : (unsigned)n;
	}
	if (c->gateway.max_message_bytes == 0)
		c->gateway.max_message_bytes = 16u << 20;
	if (c->gateway.max_buffered_bytes == 0)
		c->gateway.max_buffered_bytes = 512u << 20;
	if (c->gateway.max_held_bytes == 0)
		c->gateway.max_held_bytes = 1u << 30;
	snprintf(buf, sizeof(buf), "sqlite:%s/audit.db", c->gateway.data_dir);
	r |= set_default(&c->audit.store, buf);
	r |= set_default(&c->audit.mode, "strict");
	if (c->audit.checkpoint_every == 0)
		c->audit.checkpoint_every = 1000;
	r |= set_default(&c->audit.checkpoint_interval, "1s");
	for (unsigned i = 0; i < c->identity.issuers_count; i++) {
		r |= set_default(&c->identity.issuers[i].groups_claim, "groups");
		r |= set_default(&c->identity.issuers[i].subject_claim, "sub");
		r |= set_default(&c->identity.issuers[i].leeway, "60s");
	}
	return r ? SL_ENOMEM : 0;
}

int
sl_config_load_data(const char *name, const char *yaml, size_t len, struct sl_config **out,
		    char *err, size_t errlen)
{
	struct sl_config *c = NULL;
	struct logbuf lb;
	cyaml_err_t e;
	int r;

	*out = NULL;
	if (len > CONFIG_MAX) {
		snprintf(err, errlen, "%s: configuration larger than %u bytes", name, CONFIG_MAX);
		return SL_ETOOBIG;
	}
	memset(&lb, 0, sizeof(lb));
	cur_log = &lb;
	if (len == 0 || strspn(yaml, " \t\r\n") == len) {
		/* An empty file is an empty mapping: every default applies. */
		c = calloc(1, sizeof(*c));
		e = c ? CYAML_OK : CYAML_ERR_OOM;
	} else {
		e = cyaml_load_data((const uint8_t *)yaml, len, &cyaml_cfg, &top_schema,
				    (cyaml_data_t **)&c, NULL);
	}
	cur_log = NULL;
	if (e != CYAML_OK) {
		/* Collapse libcyaml's multi-line message into one line. */
		for (size_t i = 0; i < lb.len; i++)
			if (lb.text[i] == '\n')
				lb.text[i] = i + 1 < lb.len ? ';' : '\0';
		snprintf(err, errlen, "%s: %s%s%s", name, cyaml_strerror(e), lb.len ? ": " : "",
			 lb.text);
		return SL_EINVAL;
	}
	{
		uint8_t h[32];

		sl_sha256(yaml, len, h);
		sl_hex(h, 32, c->sha256);
	}
	if (fill_defaults(c) != 0) {
		sl_config_free(c);
		snprintf(err, errlen, "%s: out of memory", name);
		return SL_ENOMEM;
	}
	r = validate(c, err + strlen(name) + 2 < err + errlen ? err : err, errlen);
	if (r != 0) {
		char tmp[1024];

		snprintf(tmp, sizeof(tmp), "%s: %s", name, err);
		snprintf(err, errlen, "%s", tmp);
		sl_config_free(c);
		return r;
	}
	*out = c;
	return 0;
}

int
sl_config_load(const char *path, struct sl_config **out, char *err, size_t errlen)
{
	char *data = NULL;
	size_t len = 0;
	int r;

	r = sl_read_file(path, CONFIG_MAX, &data, &len);
	if (r != 0) {
		snprintf(err, errlen, "%s: %s", path,
			 r == SL_ENOENT	   ? "no such file"
			 : r == SL_ETOOBIG ? "configuration larger than 4 MiB"
					   : "cannot read file");
		return r;
	}
	r = sl_config_load_data(path, data, len, out, err, errlen);
	free(data);
	if (r == 0 && ((*out)->path = strdup(path)) == NULL) {
		sl_config_free(*out);
		*out = NULL;
		snprintf(err, errlen, "%s: out of memory", path);
		return SL_ENOMEM;
	}
	return r;
}

int
sl_config_same_but_policies(const struct sl_config *a, const struct sl_config *b)
{
	struct sl_config x = *a, y = *b;
	char *ya = NULL, *yb = NULL;
	size_t la = 0, lb = 0;
	int same;

	/* the same keys written out the same way: only what YAML says (not
	 * the file's name or values derived from it) */
	x.policies = y.policies = NULL;
	x.policies_count = y.policies_count = 0;
	x.path = y.path = NULL; /* (sha256 is not in the schema either) */
	same = cyaml_save_data(&ya, &la, &cyaml_cfg, &top_schema, &x, 0) == CYAML_OK &&
	       cyaml_save_data(&yb, &lb, &cyaml_cfg, &top_schema, &y, 0) == CYAML_OK && la == lb &&
	       memcmp(ya, yb, la) == 0;
	cyaml_cfg.mem_fn(cyaml_cfg.mem_ctx, ya, 0);
	cyaml_cfg.mem_fn(cyaml_cfg.mem_ctx, yb, 0);
	return same;
}

void
sl_config_free(struct sl_config *cfg)
{
	char *path;

	if (cfg == NULL)
		return;
	path = cfg->path;
	cfg->path = NULL;
	cyaml_free(&cyaml_cfg, &top_schema, cfg, 0);
	free(path);
}

const struct sl_cfg_connection *
sl_config_connection(const struct sl_config *cfg, const char *name)
{
	for (unsigned i = 0; i < cfg->connections_count; i++)
		if (strcmp(cfg->connections[i].name, name) == 0)
			return &cfg->connections[i];
	return NULL;
}

const char sl_config_default_yaml[] =
	"# sluice embedded default: a demo gateway on loopback with the dev issuer.\n"
	"gateway:\n"
	"  data_dir: ./var\n"
	"  admin:    { listen: 127.0.0.1:8080 }\n"
	"  postgres: { listen: 127.0.0.1:6432 }\n"
	"audit:\n"
	"  mode: strict\n"
	"connections:\n"
	"  - name: demo\n"
	"    type: postgres\n"
	"    target: 127.0.0.1:5432\n"
	"    database: demo\n"
	"    user: demo\n"
	"    password_env: SLUICE_DEMO_PASSWORD\n"
	"policies:\n"
	"  - name: agents\n"
	"    match: { groups: [ai-agents] }\n"
	"    rules:\n"
	"      - { action: block, sql: [drop, truncate, alter_system, copy_program, grant],"
	" message: \"destructive statements are not allowed\" }\n"
	"      - { action: block, functions: [pg_read_file, pg_read_binary_file, pg_ls_dir,"
	" pg_stat_file, lo_import, lo_export, pg_terminate_backend, pg_cancel_backend,"
	" pg_reload_conf, pg_rotate_logfile, pg_promote, dblink, dblink_exec, dblink_connect,"
	" dblink_connect_u, dblink_send_query], message: \"server-side file, process and"
	" connection functions are not allowed\" }\n"
	"      - { action: review, sql: [delete, update], approvers: [dba], timeout: 300s }\n"
	"      - { action: allow, sql: [select, insert, set, transaction] }\n"
	"    mask:\n"
	"      columns: [ssn, \"*password*\", \"*token*\", card_number]\n"
	"      detectors: [ssn, credit_card, email, aws_access_key, jwt, private_key,"
	" secret_assignment, iban, phone]\n"
	"      styles: [{ column: \"*token*\", style: full }, { column: \"*password*\", style: "
	"full }]\n"
	"  - name: dba\n"
	"    match: { groups: [dba] }\n"
	"    default: allow\n"
	"  - name: auditors\n"
	"    match: { groups: [auditors] }\n"
	"    rules:\n"
	"      - { action: allow, sql: [select, set, transaction] }\n"
	"    mask: { exempt: true }\n";
