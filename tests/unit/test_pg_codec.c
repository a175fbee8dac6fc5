/* Unit tests for the PostgreSQL wire codec and upstream authentication. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

#include "sluice/pg_auth.h"
#include "sluice/pg_codec.h"

/* A message built into a buffer that still holds consumed bytes: growing
 * it compacts the buffer mid-message, and the length must still land in
 * the message's own length field. */
static void
test_builder_survives_compaction(void **state)
{
	struct sl_buf b;
	char big[3000];
	const uint8_t *m;

	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	sl_buf_init(&b, 0);
	assert_int_equal(sl_buf_append(&b, "0123456789", 10), 0);
	sl_buf_consume(&b, 6); /* 4 unconsumed bytes, 6 consumed ahead of them */
	assert_int_equal(sl_pg_put_query(&b, big), 0);
	m = sl_buf_head(&b);
	assert_memory_equal(m, "6789", 4);
	assert_int_equal(m[4], 'Q');
	assert_int_equal(((uint32_t)m[5] << 24 | (uint32_t)m[6] << 16 | (uint32_t)m[7] << 8 | m[8]),
			 4 + sizeof(big));
	assert_int_equal(sl_buf_unread(&b), 4 + 1 + 4 + sizeof(big));
	sl_buf_fini(&b);
}

static void
test_frame(void **state)
{
	uint8_t m[16] = {'Q', 0, 0, 0, 9, 'S', 'E', 'L', 'E', 0};
	uint8_t type;
	size_t total;

	for (size_t n = 0; n < 10; n++)
		assert_int_equal(sl_pg_frame(m, n, 1 << 20, &type, &total), SL_AGAIN);
	assert_int_equal(sl_pg_frame(m, 10, 1 << 20, &type, &total), 0);
	assert_int_equal(type, 'Q');
	assert_int_equal(total, 10);
	/* limit */
	assert_int_equal(sl_pg_frame(m, 10, 9, &type, &total), SL_ETOOBIG);
	/* length below 4 */
	m[4] = 3;
	assert_int_equal(sl_pg_frame(m, 10, 1 << 20, &type, &total), SL_EPROTO);
	/* 2 GB claim is refused before waiting for the bytes */
	m[1] = 0x7f;
	m[2] = m[3] = m[4] = 0xff;
	assert_int_equal(sl_pg_frame(m, 10, 16 << 20, &type, &total), SL_ETOOBIG);
}

static void
test_startup(void **state)
{
	struct sl_buf b;
	struct sl_pg_startup st;
	const char *k[] = {"user", "database", "application_name"};
	const char *v[] = {"orders", "orders", "agent"};
	size_t total;

	sl_buf_init(&b, 0);
	assert_int_equal(sl_pg_put_startup(&b, k, v, 3), 0);
	assert_int_equal(sl_pg_frame_startup(b.data, b.len, &total), 0);
	assert_int_equal(total, b.len);
	assert_int_equal(sl_pg_parse_startup(b.data, b.len, &st), 0);
	assert_int_equal(st.code, SL_PG_PROTO_V3);
	assert_int_equal(st.nparams, 3);
	assert_string_equal(sl_pg_startup_get(&st, "application_name"), "agent");
	assert_null(sl_pg_startup_get(&st, "options"));
	/* missing final NUL */
	b.data[b.len - 1] = 'x';
	assert_int_not_equal(sl_pg_parse_startup(b.data, b.len, &st), 0);
	sl_buf_fini(&b);
	/* duplicate keys */
	{
		const char *dk[] = {"user", "user"};

		sl_buf_init(&b, 0);
		sl_pg_put_startup(&b, dk, v, 2);
		assert_int_equal(sl_pg_parse_startup(b.data, b.len, &st), SL_EPROTO);
		sl_buf_fini(&b);
	}
	/* too many parameters */
	{
		const char *mk[70], *mv[70];
		char names[70][8];

		for (int i = 0; i < 70; i++) {
			snprintf(names[i], sizeof(names[i]), "k%d", i);
			mk[i] = names[i];
			mv[i] = "v";
		}
		sl_buf_init(&b, 0);
		sl_pg_put_startup(&b, mk, mv, 70);
		assert_int_equal(sl_pg_parse_startup(b.data, b.len, &st), SL_ETOOBIG);
		sl_buf_fini(&b);
	}
	/* SSLRequest, cancel, bad version */
	{
		uint8_t ssl[8] = {0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f};
		uint8_t v2[8] = {0, 0, 0, 8, 0, 2, 0, 0};

		assert_int_equal(sl_pg_parse_startup(ssl, 8, &st), 0);
		assert_int_equal(st.code, SL_PG_SSL_REQUEST);
		assert_int_equal(sl_pg_parse_startup(v2, 8, &st), SL_EPROTO);
		sl_buf_init(&b, 0);
		sl_pg_put_cancel(&b, 77, 99);
		assert_int_equal(sl_pg_parse_startup(b.data, b.len, &st), 0);
		assert_int_equal(st.cancel_pid, 77);
		assert_int_equal(st.cancel_key, 99);
		sl_buf_fini(&b);
	}
	{
		uint8_t tiny[4] = {0, 0, 0, 4}, huge[4] = {0x7f, 0, 0, 0};

		assert_int_equal(sl_pg_frame_startup(tiny, 4, &total), SL_EPROTO);
		assert_int_equal(sl_pg_frame_startup(huge, 4, &total), SL_ETOOBIG);
	}
}

static void
msg(struct sl_buf *b, uint8_t t, const void *p, size_t n)
{
	sl_buf_append_u8(b, t);
	sl_buf_append_u32be(b, (uint32_t)(n + 4));
	sl_buf_append(b, p, n);
}

static void
test_bind_and_rows(void **state)
{
	struct sl_buf b;
	struct sl_pg_bind_msg bm;
	/* portal "", stmt "s", 0 formats, 2 params: "ab" and NULL, 0 result formats */
	uint8_t ok[] = {0, 's', 0, 0, 0, 0, 2, 0, 0, 0, 2, 'a', 'b', 0xff, 0xff, 0xff, 0xff, 0, 0};
	uint8_t lie[] = {0, 's', 0, 0, 0, 0, 2, 0, 0, 0, 9, 'a', 'b'};
	uint8_t neg[] = {0, 's', 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xfe, 0, 0};

	sl_buf_init(&b, 0);
	msg(&b, 'B', ok, sizeof(ok));
	assert_int_equal(sl_pg_parse_bind(b.data, b.len, &bm), 0);
	assert_int_equal(bm.nparams, 2);
	assert_string_equal(bm.stmt, "s");
	assert_int_equal(bm.params_len, 4 + 2 + 4);
	b.len = 0;
	msg(&b, 'B', lie, sizeof(lie));
	assert_int_equal(sl_pg_parse_bind(b.data, b.len, &bm), SL_EPROTO);
	b.len = 0;
	msg(&b, 'B', neg, sizeof(neg));
	assert_int_equal(sl_pg_parse_bind(b.data, b.len, &bm), SL_EPROTO);
	/* DataRow with a column count that lies */
	{
		uint8_t row[] = {0, 3, 0, 0, 0, 1, 'x'};
		uint16_t nc;
		uint32_t offs[8];
		int32_t lens[8];

		b.len = 0;
		msg(&b, 'D', row, sizeof(row));
		assert_int_equal(sl_pg_parse_data_row(b.data, b.len, 8, &nc, offs, lens),
				 SL_EPROTO);
		row[1] = 1;
		b.len = 0;
		msg(&b, 'D', row, sizeof(row));
		assert_int_equal(sl_pg_parse_data_row(b.data, b.len, 8, &nc, offs, lens), 0);
		assert_int_equal(nc, 1);
		assert_int_equal(lens[0], 1);
		assert_int_equal(b.data[offs[0]], 'x');
	}
	/* Query must end with exactly one NUL */
	{
		const char *sql;
		size_t len;

		b.len = 0;
		msg(&b, 'Q', "SELECT 1", 8);
		assert_int_equal(sl_pg_parse_query(b.data, b.len, &sql, &len), SL_EPROTO);
		b.len = 0;
		msg(&b, 'Q', "SELECT 1\0", 9);
		assert_int_equal(sl_pg_parse_query(b.data, b.len, &sql, &len), 0);
		assert_int_equal(len, 8);
		b.len = 0;
		msg(&b, 'Q', "SEL\0ECT 1\0", 10);
		assert_int_equal(sl_pg_parse_query(b.data, b.len, &sql, &len), SL_EPROTO);
	}
	/* CommandComplete row counts */
	{
		const char *tag;
		int64_t rows;

		b.len = 0;
		msg(&b, 'C', "INSERT 0 5\0", 11);
		assert_int_equal(sl_pg_parse_command_complete(b.data, b.len, &tag, &rows), 0);
		assert_int_equal(rows, 5);
		b.len = 0;
		msg(&b, 'C', "BEGIN\0", 6);
		assert_int_equal(sl_pg_parse_command_complete(b.data, b.len, &tag, &rows), 0);
		assert_int_equal(rows, -1);
	}
	/* Error builder round trip */
	{
		struct sl_pg_error_fields f;

		b.len = 0;
		sl_pg_put_error(&b, "ERROR", "42501", "blocked", "d", "h");
		assert_int_equal(sl_pg_parse_error(b.data, b.len, &f), 0);
		assert_string_equal(f.sqlstate, "42501");
		assert_string_equal(f.message, "blocked");
		assert_string_equal(f.hint, "h");
	}
	sl_buf_fini(&b);
}

/* ---------------------------------------------------------- SCRAM, server side for the test */

static void
auth_msg(struct sl_buf *b, uint32_t code, const void *p, size_t n)
{
	b->len = 0;
	sl_pg_put_auth(b, code, p, n);
}

static void
b64(const uint8_t *in, size_t n, char *out)
{
	EVP_EncodeBlock((unsigned char *)out, in, (int)n);
}

/* Runs a full SCRAM exchange against a server computed here from the RFC
 * 5802 definitions; tamper selects a server misbehaviour. */
static int
scram_exchange(const char *client_pw, const char *server_pw, int tamper)
{
	struct sl_pg_upauth *a;
	struct sl_buf in, out;
	uint8_t nonce[24] = "0123456789abcdefghijklm";
	char err[256], sfirst[512], cfirst_bare[256], cfinal_wo[512], authmsg[1400], sfinal[128];
	const char *salt64 = "W22ZaJ0SNY7soEsUEjb6gQ==";
	uint8_t salt[16], salted[32], ckey[32], skey[32], stored[32], ssig[32];
	unsigned int l = 32;
	int r;

	sl_buf_init(&in, 0);
	sl_buf_init(&out, 0);
	assert_int_equal(sl_pg_upauth_new("app", client_pw, nonce, sizeof(nonce), &a), 0);
	auth_msg(&in, 10, "SCRAM-SHA-256\0\0", 15);
	assert_int_equal(sl_pg_upauth_feed(a, in.data, in.len, &out, err, sizeof(err)), 0);
	/* client-first: 'p' len mech\0 int32 len "n,,n=,r=..." */
	{
		const char *cf = (const char *)out.data + 5 + 14 + 4;
		size_t cflen = out.len - 5 - 14 - 4;

		assert_memory_equal(cf, "n,,n=,r=", 8);
		snprintf(cfirst_bare, sizeof(cfirst_bare), "%.*s", (int)(cflen - 3), cf + 3);
	}
	snprintf(sfirst, sizeof(sfirst), "r=%s%s,s=%s,i=4096", cfirst_bare + 5,
		 tamper == 1 ? "" : "SERVERNONCE", salt64);
	if (tamper == 1) /* server nonce must extend the client's */
		snprintf(sfirst, sizeof(sfirst), "r=other,s=%s,i=4096", salt64);
	if (tamper == 3)
		snprintf(sfirst, sizeof(sfirst), "r=%sX,s=%s,i=999999999", cfirst_bare + 5, salt64);
	auth_msg(&in, 11, sfirst, strlen(sfirst));
	out.len = 0;
	r = sl_pg_upauth_feed(a, in.data, in.len, &out, err, sizeof(err));
	if (r != 0)
		goto done;
	snprintf(cfinal_wo, sizeof(cfinal_wo), "c=biws,r=%s%s", cfirst_bare + 5, "SERVERNONCE");
	assert_memory_equal(out.data + 5, cfinal_wo, strlen(cfinal_wo));
	/* server verifies the proof with its own password */
	EVP_DecodeBlock(salt, (const unsigned char *)salt64, (int)strlen(salt64));
	PKCS5_PBKDF2_HMAC(server_pw, (int)strlen(server_pw), salt, 16, 4096, EVP_sha256(), 32,
			  salted);
	HMAC(EVP_sha256(), salted, 32, (const uint8_t *)"Client Key", 10, ckey, &l);
	SHA256(ckey, 32, stored);
	HMAC(EVP_sha256(), salted, 32, (const uint8_t *)"Server Key", 10, skey, &l);
	snprintf(authmsg, sizeof(authmsg), "%s,%s,%s", cfirst_bare, sfirst, cfinal_wo);
	{
		uint8_t csig[32], proof[32], recovered[32], check[32];
		char proof64[64];
		const char *p = strstr((const char *)out.data + 5, ",p=");

		HMAC(EVP_sha256(), stored, 32, (const uint8_t *)authmsg, strlen(authmsg), csig, &l);
		assert_non_null(p);
		snprintf(proof64, sizeof(proof64), "%.*s", 44, p + 3);
		EVP_DecodeBlock(proof, (const unsigned char *)proof64, 44);
		for (int i = 0; i < 32; i++)
			recovered[i] = proof[i] ^ csig[i];
		SHA256(recovered, 32, check);
		if (memcmp(check, stored, 32) != 0) {
			r = SL_EAUTH; /* the server would refuse */
			goto done;
		}
	}
	HMAC(EVP_sha256(), skey, 32, (const uint8_t *)authmsg, strlen(authmsg), ssig, &l);
	if (tamper == 2)
		ssig[0] ^= 1;
	strcpy(sfinal, "v=");
	b64(ssig, 32, sfinal + 2);
	if (tamper == 4) {
		/* AuthenticationOk without SASLFinal */
		auth_msg(&in, 0, NULL, 0);
		r = sl_pg_upauth_feed(a, in.data, in.len, &out, err, sizeof(err));
		goto done;
	}
	auth_msg(&in, 12, sfinal, strlen(sfinal));
	r = sl_pg_upauth_feed(a, in.data, in.len, &out, err, sizeof(err));
	if (r != 0)
		goto done;
	auth_msg(&in, 0, NULL, 0);
	r = sl_pg_upauth_feed(a, in.data, in.len, &out, err, sizeof(err));
done:
	sl_pg_upauth_free(a);
	sl_buf_fini(&in);
	sl_buf_fini(&out);
	return r;
}

static void
test_scram(void **state)
{
	assert_int_equal(scram_exchange("pencil", "pencil", 0), SL_PG_UPAUTH_DONE);
	assert_int_equal(scram_exchange("pencil", "wrong", 0), SL_EAUTH);
	assert_int_equal(scram_exchange("pencil", "pencil", 1), SL_EPROTO);
	assert_int_equal(scram_exchange("pencil", "pencil", 2), SL_EAUTH);
	assert_int_not_equal(scram_exchange("pencil", "pencil", 3), 0);
	assert_int_equal(scram_exchange("pencil", "pencil", 4), SL_EAUTH);
}

static void
test_md5_and_refusals(void **state)
{
	struct sl_pg_upauth *a;
	struct sl_buf in, out;
	uint8_t nonce[24] = {0};
	char err[128];
	uint8_t salt[4] = {1, 2, 3, 4};
	uint8_t d[16];
	unsigned int dl;
	char inner[33], expect[36];
	uint8_t buf[64];

	sl_buf_init(&in, 0);
	sl_buf_init(&out, 0);
	sl_pg_upauth_new("md5user", "pw", nonce, sizeof(nonce), &a);
	auth_msg(&in, 5, salt, 4);
	assert_int_equal(sl_pg_upauth_feed(a, in.data, in.len, &out, err, sizeof(err)), 0);
	EVP_Digest("pwmd5user", 9, d, &dl, EVP_md5(), NULL);
	sl_hex(d, 16, inner);
	memcpy(buf, inner, 32);
	memcpy(buf + 32, salt, 4);
	EVP_Digest(buf, 36, d, &dl, EVP_md5(), NULL);
	memcpy(expect, "md5", 3);
	sl_hex(d, 16, expect + 3);
	assert_string_equal((const char *)out.data + 5, expect);
	sl_pg_upauth_free(a);
	/* GSS and unknown methods are refused */
	sl_pg_upauth_new("u", "pw", nonce, sizeof(nonce), &a);
	auth_msg(&in, 7, NULL, 0);
	assert_int_equal(sl_pg_upauth_feed(a, in.data, in.len, &out, err, sizeof(err)), SL_EPOLICY);
	sl_pg_upauth_free(a);
	/* SCRAM-SHA-256-PLUS only */
	sl_pg_upauth_new("u", "pw", nonce, sizeof(nonce), &a);
	auth_msg(&in, 10, "SCRAM-SHA-256-PLUS\0\0", 20);
	assert_int_equal(sl_pg_upauth_feed(a, in.data, in.len, &out, err, sizeof(err)), SL_EPOLICY);
	sl_pg_upauth_free(a);
	sl_buf_fini(&in);
	sl_buf_fini(&out);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_builder_survives_compaction),
		cmocka_unit_test(test_frame),
		cmocka_unit_test(test_startup),
		cmocka_unit_test(test_bind_and_rows),
		cmocka_unit_test(test_scram),
		cmocka_unit_test(test_md5_and_refusals),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
