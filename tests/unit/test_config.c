/* Unit tests for configuration loading: defaults, env overrides, errors with
 * file/line/column, unknown keys, semantic validation, the embedded default. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "sluice/config.h"
#include "sluice/core.h"

static void
expect_error(const char *yaml, const char *needle)
{
	struct sl_config *cfg = NULL;
	char err[1024] = "";

	assert_int_not_equal(
		sl_config_load_data("cfg.yaml", yaml, strlen(yaml), &cfg, err, sizeof(err)), 0);
	assert_null(cfg);
	if (strstr(err, needle) == NULL)
		fail_msg("error \"%s\" does not mention \"%s\"", err, needle);
	assert_non_null(strstr(err, "cfg.yaml"));
}

static void
test_defaults_and_env(void **state)
{
	struct sl_config *cfg;
	char err[512];

	setenv("SLUICE_PG_LISTEN", "127.0.0.1:7777", 1);
	assert_int_equal(sl_config_load_data("t", "", 0, &cfg, err, sizeof(err)), 0);
	unsetenv("SLUICE_PG_LISTEN");
	assert_string_equal(cfg->gateway.data_dir, "./var");
	assert_string_equal(cfg->gateway.postgres.listen, "127.0.0.1:7777");
	assert_string_equal(cfg->audit.mode, "strict");
	assert_string_equal(cfg->audit.store, "sqlite:./var/audit.db");
	assert_int_equal(cfg->gateway.max_message_bytes, 16u << 20);
	assert_true(cfg->gateway.workers >= 1);
	sl_config_free(cfg);
}

static void
test_embedded_default_and_example(void **state)
{
	struct sl_config *cfg;
	char err[512], path[4096];

	assert_int_equal(sl_config_load_data("default", sl_config_default_yaml,
					     strlen(sl_config_default_yaml), &cfg, err,
					     sizeof(err)),
			 0);
	assert_non_null(sl_config_connection(cfg, "demo"));
	assert_null(sl_config_connection(cfg, "nope"));
	assert_int_equal(cfg->policies_count, 3);
	assert_string_equal(cfg->policies[0].rules[1].action, "block");
	assert_string_equal(cfg->policies[0].rules[2].action, "review");
	sl_config_free(cfg);
	snprintf(path, sizeof(path), "%s/../../examples/sluice.yaml", SL_FIXTURES);
	assert_int_equal(sl_config_load(path, &cfg, err, sizeof(err)), 0);
	assert_true(cfg->connections_count >= 3);
	sl_config_free(cfg);
}

static void
test_errors(void **state)
{
	expect_error("gateway: [1, 2\n", "line");
	expect_error("gatewy: {}\n", "gatewy");
	expect_error("gateway:\n  data_dir: x\n  bogus: 1\n", "bogus");
	expect_error("connections: {name: a}\n", "line");
	expect_error("gateway:\n  workers: many\n", "line");
	expect_error("connections:\n  - {name: a, type: mysql, target: 'h:1'}\n", "type must be");
	expect_error("connections:\n  - {name: a, type: postgres, target: 'h:1'}\n"
		     "  - {name: a, type: postgres, target: 'h:2'}\n",
		     "duplicate name");
	expect_error("connections:\n  - {name: a, type: postgres, target: 'h:1', password_env: X,"
		     " password_file: Y}\n",
		     "mutually exclusive");
	expect_error("gateway:\n  postgres: { listen: nowhere }\n", "host:port");
	expect_error("gateway:\n  postgres: { listen: '127.0.0.1:1', tls_cert: c }\n", "tls_key");
	expect_error("audit: { mode: sometimes }\n", "strict or async");
	expect_error(
		"connections:\n  - {name: a, type: postgres, target: 'h:1', tls: verify-full}\n",
		"verify-full is not supported");
	expect_error("policies:\n  - name: p\n    rules: [{action: review, timeout: soon}]\n",
		     "bad duration");
	expect_error("identity:\n  issuers: [{issuer: x}]\n", "audience");
	expect_error("a: &x 1\nb: *x\n", "cfg.yaml");
}

static void
test_file_errors(void **state)
{
	struct sl_config *cfg;
	char err[512];

	assert_int_equal(sl_config_load("/nonexistent/sluice.yaml", &cfg, err, sizeof(err)),
			 SL_ENOENT);
	assert_non_null(strstr(err, "/nonexistent/sluice.yaml"));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_defaults_and_env),
		cmocka_unit_test(test_embedded_default_and_example),
		cmocka_unit_test(test_errors),
		cmocka_unit_test(test_file_errors),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
