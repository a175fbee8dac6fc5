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
	/* from data: no file to read again (SIGHUP), the text's SHA-256 */
	assert_null(cfg->path);
	{
		uint8_t h[32];
		char hex[65];

		sl_sha256(sl_config_default_yaml, strlen(sl_config_default_yaml), h);
		sl_hex(h, 32, hex);
		assert_string_equal(cfg->sha256, hex);
	}
	sl_config_free(cfg);
	snprintf(path, sizeof(path), "%s/../../examples/sluice.yaml", SL_FIXTURES);
	assert_int_equal(sl_config_load(path, &cfg, err, sizeof(err)), 0);
	assert_true(cfg->connections_count >= 3);
	assert_string_equal(cfg->path, path);
	assert_int_equal(strlen(cfg->sha256), 64);
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
	expect_error(
		"connections:\n  - {name: a, type: http, target: 'http://h', read_only: true}\n",
		"read_only applies to postgres");
	/* a bool that is not a bool is an error, not true (libcyaml's own reading) */
	expect_error(
		"connections:\n  - {name: a, type: postgres, target: 'h:1', read_only: maybe}\n",
		"read_only");
	expect_error("gateway:\n  postgres: { listen: '0.0.0.0:1', allow_cleartext: ture }\n",
		     "allow_cleartext");
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
		"connections:\n  - {name: a, type: postgres, target: 'h:1', tls: verify-fool}\n",
		"tls must be disable, require or verify-full");
	expect_error("connections:\n  - {name: a, type: postgres, target: 'h:1', tls: verify-full,"
		     " ca_file: /nonexistent/ca.pem}\n",
		     "ca_file /nonexistent/ca.pem cannot be read");
	expect_error("connections:\n  - {name: a, type: postgres, target: 'h:1', ca_file: x.pem}\n",
		     "only used with tls: verify-full");
	expect_error("policies:\n  - name: p\n    rules: [{action: review, timeout: soon}]\n",
		     "bad duration");
	expect_error("identity:\n  issuers: [{issuer: x}]\n", "audience");
	expect_error("a: &x 1\nb: *x\n", "cfg.yaml");
}

static void
test_pool_keys(void **state)
{
	static const char base[] =
		"connections:\n"
		"  - { name: a, type: postgres, target: \"127.0.0.1:5432\" }\n"
		"  - { name: b, type: postgres, target: \"127.0.0.1:5432\",\n"
		"      pool_size: 0, pool_idle_timeout: 5m, pool_lifetime: 30s }\n";
	struct sl_config *cfg;
	char err[512];

	(void)state;
	assert_int_equal(sl_config_load_data("t", base, strlen(base), &cfg, err, sizeof(err)), 0);
	/* defaults: 8 per worker, 60 s idle, 1 h lifetime */
	assert_int_equal(cfg->connections[0].pool_max, 8);
	assert_int_equal(cfg->connections[0].pool_idle_ms, 60000);
	assert_int_equal(cfg->connections[0].pool_lifetime_ms, 3600000);
	assert_int_equal(cfg->connections[1].pool_max, 0);
	assert_int_equal(cfg->connections[1].pool_idle_ms, 300000);
	assert_int_equal(cfg->connections[1].pool_lifetime_ms, 30000);
	sl_config_free(cfg);
	expect_error("connections:\n  - { name: a, type: postgres, target: \"h:1\", "
		     "pool_size: -1 }\n",
		     "pool_size must be a number from 0 to 1000");
	expect_error("connections:\n  - { name: a, type: postgres, target: \"h:1\", "
		     "pool_size: 1001 }\n",
		     "pool_size must be a number from 0 to 1000");
	expect_error("connections:\n  - { name: a, type: postgres, target: \"h:1\", "
		     "pool_idle_timeout: 0s }\n",
		     "pool_idle_timeout");
	expect_error("connections:\n  - { name: a, type: postgres, target: \"h:1\", "
		     "pool_lifetime: forever }\n",
		     "pool_lifetime");
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

/* Known answers for the core digest and hex helpers (the audit chain and
 * the token cache depend on them; a self-consistent wrong digest would
 * pass every other test). FIPS 180-2 vectors. */
static void
test_sha256_and_hex_known_answers(void **state)
{
	static const struct {
		const char *in;
		const char *hex;
	} v[] = {
		{"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
		{"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
		{"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
		 "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
	};
	uint8_t h[32], all[256];
	char hex[513];

	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		sl_sha256(v[i].in, strlen(v[i].in), h);
		sl_hex(h, 32, hex);
		assert_string_equal(hex, v[i].hex);
	}
	{
		/* a million 'a': many blocks */
		char *m = malloc(1000000);

		assert_non_null(m);
		memset(m, 'a', 1000000);
		sl_sha256(m, 1000000, h);
		free(m);
		sl_hex(h, 32, hex);
		assert_string_equal(
			hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
	}
	for (int i = 0; i < 256; i++)
		all[i] = (uint8_t)i;
	sl_hex(all, 256, hex);
	for (int i = 0; i < 256; i++) {
		char want[3];

		snprintf(want, sizeof(want), "%02x", i);
		assert_memory_equal(hex + 2 * i, want, 2);
	}
	assert_int_equal(hex[512], '\0');
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_defaults_and_env),
		cmocka_unit_test(test_sha256_and_hex_known_answers),
		cmocka_unit_test(test_embedded_default_and_example),
		cmocka_unit_test(test_errors),
		cmocka_unit_test(test_file_errors),
		cmocka_unit_test(test_pool_keys),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
