/*
 * config.h - the YAML configuration (DESIGN.md "Configuration"), loaded with
 * libcyaml straight into these structs. Every string is owned by the config
 * and freed by sl_config_free(). Absent optional strings are NULL; absent
 * sequences have count 0. Defaults are filled in by sl_config_load().
 */
#ifndef SLUICE_CONFIG_H
#define SLUICE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct sl_cfg_listener {
	char *listen;	/* "host:port"; NULL = disabled */
	char *tls_cert; /* PEM file; with tls_key enables TLS (SSLRequest for PG) */
	char *tls_key;
	bool allow_cleartext; /* allow JWT-as-password over non-TLS on a non-loopback address */
};

struct sl_cfg_gateway {
	char *data_dir;	  /* default "./var" */
	unsigned workers; /* worker threads; default = number of CPUs */
	char *log_level;  /* debug|info|warn|error; default info */
	struct sl_cfg_listener admin;
	struct sl_cfg_listener postgres;
	struct sl_cfg_listener http;
	struct sl_cfg_listener ssh;
	unsigned max_message_bytes; /* hard cap on one protocol message; default 16 MiB */
	char *shutdown_timeout;	    /* drain time on SIGTERM; default "10s" */
	char *login_timeout;	    /* startup + authentication must finish within; default "15s" */
	char *message_timeout;	    /* a client message past 1 MiB must be whole within; "60s" */
	unsigned max_connections;   /* client sessions at once; default 0 = what the file
				       descriptor limit allows */
	/* connections from one client address not logged in yet (before their
	 * token is verified); default 0 = min(64, max(8, sessions / 4)) */
	unsigned max_logins_per_address;
	/* bytes all sessions may hold in message buffers past 1 MiB each (a
	 * large statement being received, a large row being masked); default
	 * 512 MiB */
	unsigned max_buffered_bytes;
	unsigned max_held_bytes; /* prepared statements, portals: all sessions; 1 GiB */
};

struct sl_cfg_issuer {
	char *issuer;	 /* required: exact "iss" */
	char *audience;	 /* required: must appear in "aud" (string or array) */
	char *jwks_file; /* one of jwks_file, jwks_uri; neither = OIDC discovery from issuer */
	char *jwks_uri;
	char *groups_claim;  /* default "groups"; dotted path ("realm_access.roles") or a URL-like
				name */
	char *subject_claim; /* default "sub" */
	char *leeway;	     /* clock skew for exp/nbf; default "60s" */
	char *ca_file;	     /* CA bundle for jwks_uri/discovery over https */
	char *jwks_refresh;  /* re-fetch a remote JWKS this often; default "5m" */
};

struct sl_cfg_identity {
	struct sl_cfg_issuer *issuers;
	unsigned issuers_count;
};

struct sl_cfg_audit {
	char *store; /* "sqlite:PATH" (default "sqlite:<data_dir>/audit.db") or "postgresql://..."
		      */
	char *mode;  /* "strict" (default) or "async" */
	unsigned checkpoint_every; /* records between signed checkpoints; default 1000 */
	char *checkpoint_interval; /* and at least this often; default "1s" */
	bool log_results;	   /* store masked result rows (replay); default false */
};

struct sl_cfg_header {
	char *name;
	char *value_env;
	char *value_file;
};

struct sl_cfg_connection {
	char *name;   /* required; PG: login user or database */
	char *type;   /* postgres | http | ssh */
	char *target; /* host:port or URL */
	char *database;
	char *user;
	char *password_env;
	char *password_file;
	char *tls;	       /* upstream TLS: disable (default) | require | verify-full */
	char *ca_file;	       /* for verify-full */
	char *channel_binding; /* SCRAM-SHA-256-PLUS: disable | prefer (default) | require */
	bool allow_cleartext_password; /* send the password in the clear without verify-full */
	/* postgres: every upstream session is logged in with
	 * default_transaction_read_only=on, and no statement may turn it off:
	 * the server itself refuses writes, also those of functions */
	bool read_only;
	/* postgres: logged-in upstream connections kept (per worker) for the
	 * next session, after DISCARD ALL: "0" turns reuse off */
	char *pool_size;	 /* default "8" */
	char *pool_idle_timeout; /* an idle one is closed after this; default "60s" */
	char *pool_lifetime;	 /* none is reused once this old; default "1h" */
	unsigned pool_max;	 /* the three above, checked and parsed at load */
	int64_t pool_idle_ms, pool_lifetime_ms;
	struct sl_cfg_header *inject_header; /* http */
	char *private_key_file;		     /* ssh */
	char *host_key; /* ssh: expected upstream host key (known_hosts line) */
};

struct sl_cfg_match {
	char **groups;
	unsigned groups_count;
	char **subjects;
	unsigned subjects_count;
};

struct sl_cfg_http_rule {
	char *method; /* "GET", "*" or NULL = any */
	char *path;   /* glob, "**" crosses "/" */
};

struct sl_cfg_ssh_rule {
	char *command; /* glob over the command line */
};

struct sl_cfg_rule {
	char *name;   /* optional; default "<policy>#<index>" */
	char *action; /* allow | block | review */
	char **sql;   /* statement kinds (DESIGN.md vocabulary) */
	unsigned sql_count;
	char **functions; /* function names called anywhere in the statement */
	unsigned functions_count;
	char **tables; /* relations touched: "table" or "schema.table" */
	unsigned tables_count;
	struct sl_cfg_http_rule *http;
	struct sl_cfg_ssh_rule *ssh;
	char *message;	  /* shown to the client when blocked */
	char **approvers; /* review: groups that may approve */
	unsigned approvers_count;
	unsigned min_approvals; /* review: default 1 */
	char *timeout;		/* review: default "5m" */
	char *grant_for; /* review: once approved, allow the same identity+connection+rule for this
			    long */
};

struct sl_cfg_style {
	char *detector; /* one of detector / column */
	char *column;
	char *style; /* partial | full | null | hash */
};

struct sl_cfg_policy_mask {
	char **columns; /* globs over result column names */
	unsigned columns_count;
	char **json_keys;
	unsigned json_keys_count;
	char **detectors; /* built-in or custom detector names */
	unsigned detectors_count;
	struct sl_cfg_style *styles;
	unsigned styles_count;
	char *style; /* default style; default "partial" */
	bool exempt; /* this policy's members see raw values (audited) */
};

struct sl_cfg_policy {
	char *name;
	struct sl_cfg_match match;
	char **connections; /* connection names; empty = all */
	unsigned connections_count;
	char *default_action; /* YAML key "default": deny (default) | allow */
	struct sl_cfg_rule *rules;
	unsigned rules_count;
	struct sl_cfg_policy_mask *mask;
};

struct sl_cfg_pattern {
	char *name;
	char *regex;
};

struct sl_cfg_mask {
	struct sl_cfg_pattern *patterns; /* custom detectors */
	unsigned patterns_count;
	char *hash_key_env; /* key for the "hash" style; else a random per-data_dir key */
	char *hash_key_file;
};

struct sl_cfg_webhook {
	char *url;
	char *format;	  /* "json" (default) or "slack" (adds a "text" field) */
	char *timeout;	  /* default "5s" */
	unsigned retries; /* default 3 */
};

struct sl_cfg_review {
	struct sl_cfg_webhook *webhooks;
	unsigned webhooks_count;
};

struct sl_config {
	char *path;	 /* file it was loaded from; NULL from data (not a YAML key) */
	char sha256[65]; /* of the text it was loaded from, hex (not a YAML key) */
	struct sl_cfg_gateway gateway;
	struct sl_cfg_identity identity;
	struct sl_cfg_audit audit;
	struct sl_cfg_connection *connections;
	unsigned connections_count;
	struct sl_cfg_policy *policies;
	unsigned policies_count;
	struct sl_cfg_mask mask;
	struct sl_cfg_review review;
};

/*
 * Loads and validates path. On failure returns a negative SL_E* and writes a
 * message naming file, line and column (where known) to err. Returns owned
 * config in *out.
 */
int sl_config_load(const char *path, struct sl_config **out, char *err, size_t errlen);
/* Same, from a YAML string; name is used in messages. */
int sl_config_load_data(const char *name, const char *yaml, size_t len, struct sl_config **out,
			char *err, size_t errlen);
void sl_config_free(struct sl_config *cfg);
/* Whether a and b say the same outside policies (what a reload can apply). */
int sl_config_same_but_policies(const struct sl_config *a, const struct sl_config *b);
const struct sl_cfg_connection *sl_config_connection(const struct sl_config *cfg, const char *name);

/* The embedded default (demo gateway on loopback, dev issuer), used when no
 * --config is given and ./sluice.yaml does not exist. */
extern const char sl_config_default_yaml[];
/* sl_config_load* apply environment overrides: SLUICE_DATA_DIR,
 * SLUICE_PG_LISTEN and SLUICE_ADMIN_LISTEN replace the matching keys. */

#endif
