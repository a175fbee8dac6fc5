/*
 * main.c - the `sluice` command line: argument parsing and dispatch only.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sluice/audit.h"
#include "sluice/config.h"
#include "sluice/gateway.h"
#include "sluice/identity.h"
#include "sluice/policy.h"
#include "sluice/review.h"
#include "sluice/sqlclass.h"

static void
usage(FILE *f)
{
	fprintf(f, "usage: sluice <command> [--config FILE] ...\n"
		   "  serve                                  run the gateway\n"
		   "  config check [FILE]                    validate a configuration\n"
		   "  config default                         print the embedded default "
		   "configuration\n"
		   "  token init [--force]                   create the dev issuer's key pair and "
		   "JWKS\n"
		   "  token mint --sub S [--groups a,b] [--ttl 1h] [--aud A] [--iss I]\n"
		   "  audit verify|tail|export|replay ...    check, follow, export, replay the "
		   "audit trail\n"
		   "  review list|show|approve|deny|wait ... approvals over the admin API\n"
		   "  policy explain --as SUB [--groups G] --connection C -- \"SQL\"\n"
		   "  version\n"
		   "--config defaults to ./sluice.yaml, else the embedded default.\n");
}

/* Removes "--config F" / "--config=F" from argv; returns F or NULL. */
static const char *
take_config(int *argc, char **argv)
{
	const char *path = NULL;
	int o = 0;

	for (int i = 0; i < *argc; i++) {
		if (strcmp(argv[i], "--config") == 0 && i + 1 < *argc) {
			path = argv[++i];
			continue;
		}
		if (strncmp(argv[i], "--config=", 9) == 0) {
			path = argv[i] + 9;
			continue;
		}
		argv[o++] = argv[i];
	}
	*argc = o;
	argv[o] = NULL;
	return path;
}

static struct sl_config *
load(const char *path)
{
	struct sl_config *cfg = NULL;
	char err[1024] = "";
	int r;

	if (path == NULL && access("sluice.yaml", F_OK) == 0)
		path = "sluice.yaml";
	if (path != NULL)
		r = sl_config_load(path, &cfg, err, sizeof(err));
	else
		r = sl_config_load_data("<embedded default>", sl_config_default_yaml,
					strlen(sl_config_default_yaml), &cfg, err, sizeof(err));
	if (r != 0) {
		fprintf(stderr, "sluice: %s\n", err);
		return NULL;
	}
	return cfg;
}

static int
cmd_config(int argc, char **argv, const char *path)
{
	struct sl_config *cfg;
	struct sl_policy_set *ps = NULL;
	char err[1024] = "";

	if (argc >= 2 && strcmp(argv[1], "default") == 0) {
		fputs(sl_config_default_yaml, stdout);
		return 0;
	}
	if (argc < 2 || strcmp(argv[1], "check") != 0) {
		usage(stderr);
		return 2;
	}
	if (argc >= 3)
		path = argv[2];
	cfg = load(path);
	if (cfg == NULL)
		return 1;
	if (sl_policy_compile(cfg, &ps, err, sizeof(err)) != 0) {
		fprintf(stderr, "sluice: %s: %s\n", path ? path : "<embedded default>", err);
		sl_config_free(cfg);
		return 1;
	}
	sl_policy_free(ps);
	printf("ok: %s (%u connections, %u policies)\n", path ? path : "<embedded default>",
	       cfg->connections_count, cfg->policies_count);
	sl_config_free(cfg);
	return 0;
}

static int
cmd_policy(int argc, char **argv, const struct sl_config *cfg)
{
	const char *sub = NULL, *groups = NULL, *conn = NULL, *sql = NULL;
	char *gcopy = NULL, *gv[64];
	size_t ng = 0;
	struct sl_policy_set *ps = NULL;
	struct sl_sql_class cls;
	struct sl_request req;
	struct sl_decision d;
	char err[1024] = "", kinds[512];
	int rc = 1;

	if (argc < 2 || strcmp(argv[1], "explain") != 0) {
		usage(stderr);
		return 2;
	}
	for (int i = 2; i < argc; i++) {
		if (strcmp(argv[i], "--as") == 0 && i + 1 < argc)
			sub = argv[++i];
		else if (strcmp(argv[i], "--groups") == 0 && i + 1 < argc)
			groups = argv[++i];
		else if (strcmp(argv[i], "--connection") == 0 && i + 1 < argc)
			conn = argv[++i];
		else if (strcmp(argv[i], "--") == 0 && i + 1 < argc)
			sql = argv[++i];
		else if (sql == NULL && argv[i][0] != '-')
			sql = argv[i];
		else {
			usage(stderr);
			return 2;
		}
	}
	if (sub == NULL || conn == NULL || sql == NULL) {
		usage(stderr);
		return 2;
	}
	if (groups != NULL && (gcopy = strdup(groups)) != NULL) {
		for (char *save = NULL, *t = strtok_r(gcopy, ",", &save); t && ng < 64;
		     t = strtok_r(NULL, ",", &save))
			gv[ng++] = t;
	}
	if (sl_policy_compile(cfg, &ps, err, sizeof(err)) != 0) {
		fprintf(stderr, "sluice: %s\n", err);
		goto out;
	}
	sl_sql_classify(sql, strlen(sql), &cls);
	memset(&req, 0, sizeof(req));
	req.proto = SL_PROTO_PG;
	req.connection = conn;
	req.read_only = sl_config_connection(cfg, conn) != NULL &&
			sl_config_connection(cfg, conn)->read_only;
	req.sql = &cls;
	sl_policy_decide(ps, sub, (const char *const *)gv, ng, &req, &d);
	sl_sql_kinds_str(cls.kinds, kinds, sizeof(kinds));
	printf("kinds:    %s\n", kinds);
	for (size_t i = 0; i < cls.ntables; i++)
		printf("table:    %s\n", cls.tables[i]);
	for (size_t i = 0; i < cls.nschemas; i++)
		printf("schema:   %s (the whole schema)\n", cls.schemas[i]);
	for (size_t i = 0; i < cls.nfunctions; i++)
		printf("function: %s\n", cls.functions[i]);
	if (cls.read_write)
		printf("asks:     read-write transactions\n");
	if (cls.error)
		printf("error:    %s\n", cls.error);
	printf("decision: %s\n", d.action == SL_ACT_ALLOW    ? "allow"
				 : d.action == SL_ACT_REVIEW ? "review"
							     : "block");
	printf("policy:   %s\nrule:     %s\n", d.policy ? d.policy : "-", d.rule ? d.rule : "-");
	if (d.message)
		printf("message:  %s\n", d.message);
	sl_sql_class_fini(&cls);
	rc = d.action == SL_ACT_BLOCK ? 1 : 0;
out:
	sl_policy_free(ps);
	free(gcopy);
	return rc;
}

int
main(int argc, char **argv)
{
	const char *path;
	struct sl_config *cfg;
	int rc;

	path = take_config(&argc, argv);
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	argc--;
	argv++;
	if (strcmp(argv[0], "help") == 0 || strcmp(argv[0], "--help") == 0 ||
	    strcmp(argv[0], "-h") == 0) {
		usage(stdout);
		return 0;
	}
	if (strcmp(argv[0], "version") == 0 || strcmp(argv[0], "--version") == 0) {
		printf("sluice 0.1.0\n");
		return 0;
	}
	if (strcmp(argv[0], "config") == 0)
		return cmd_config(argc, argv, path);
	cfg = load(path);
	if (cfg == NULL)
		return 1;
	if (strcmp(argv[0], "serve") == 0)
		rc = sl_gateway_run(cfg);
	else if (strcmp(argv[0], "token") == 0 && argc >= 2)
		rc = sl_token_cli(argc - 1, argv + 1, cfg);
	else if (strcmp(argv[0], "audit") == 0 && argc >= 2)
		rc = sl_audit_cli(argc - 1, argv + 1, cfg);
	else if (strcmp(argv[0], "review") == 0 && argc >= 2)
		rc = sl_review_cli(argc - 1, argv + 1, cfg);
	else if (strcmp(argv[0], "policy") == 0)
		rc = cmd_policy(argc, argv, cfg);
	else {
		usage(stderr);
		rc = 2;
	}
	sl_config_free(cfg);
	return rc;
}
