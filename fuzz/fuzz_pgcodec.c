/* Fuzz target: the PostgreSQL codec and the upstream-auth state machine.
 * The first byte picks the parser; the rest is the input. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sluice/pg_auth.h"
#include "sluice/pg_codec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t sel, type;
	size_t total;
	const uint8_t *p;
	size_t n;

	if (size < 1)
		return 0;
	sel = data[0] % 4;
	p = data + 1;
	n = size - 1;
	if (sel == 0) {
		struct sl_pg_startup st;

		if (sl_pg_frame_startup(p, n, &total) == 0)
			sl_pg_parse_startup(p, total, &st);
		return 0;
	}
	if (sel == 1 || sel == 2) {
		/* Frame every message and run every parser on it. */
		while (n > 0 && sl_pg_frame(p, n, 1 << 20, &type, &total) == 0) {
			struct sl_pg_error_fields ef;
			struct sl_pg_parse_msg pm;
			struct sl_pg_bind_msg bm;
			struct sl_pg_field fields[64];
			uint16_t nf;
			uint32_t offs[64], pid, key, maxrows, code;
			int32_t lens[64];
			const char *a, *b;
			size_t l;
			int64_t rows;
			char kind;
			const uint8_t *extra;

			sl_pg_parse_error(p, total, &ef);
			sl_pg_parse_param_status(p, total, &a, &b);
			sl_pg_parse_backend_key(p, total, &pid, &key);
			sl_pg_parse_auth(p, total, &code, &extra, &l);
			sl_pg_parse_query(p, total, &a, &l);
			sl_pg_parse_parse(p, total, &pm);
			sl_pg_parse_bind(p, total, &bm);
			sl_pg_parse_execute(p, total, &a, &maxrows);
			sl_pg_parse_describe_close(p, total, &kind, &a);
			sl_pg_parse_password(p, total, &a, &l);
			sl_pg_parse_command_complete(p, total, &a, &rows);
			sl_pg_parse_row_desc(p, total, fields, 64, &nf);
			if (sl_pg_parse_data_row(p, total, 64, &nf, offs, lens) == 0)
				for (uint16_t i = 0; i < nf; i++)
					if (lens[i] > 0 && offs[i] + (uint32_t)lens[i] > total)
						abort();
			sl_pg_parse_notification(p, total, &pid, &a, &b);
			p += total;
			n -= total;
		}
		return 0;
	}
	{
		/* A hostile upstream during login. */
		struct sl_pg_upauth *a;
		uint8_t nonce[24] = {1};
		struct sl_buf out;
		char err[256];

		if (sl_pg_upauth_new("u", "pw", nonce, sizeof(nonce), &a) != 0)
			return 0;
		sl_buf_init(&out, 1 << 20);
		while (n > 0 && sl_pg_frame(p, n, 1 << 20, &type, &total) == 0) {
			if (sl_pg_upauth_feed(a, p, total, &out, err, sizeof(err)) < 0)
				break;
			p += total;
			n -= total;
		}
		sl_buf_fini(&out);
		sl_pg_upauth_free(a);
	}
	return 0;
}
