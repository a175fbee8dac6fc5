/*
 * core.c - error strings, byte buffers, the checked read cursor and small
 * helpers shared by every module.
 */
#include "sluice/core.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <pthread.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

const char *
sl_strerror(int err)
{
	switch (err) {
	case SL_OK:
		return "ok";
	case SL_AGAIN:
		return "need more data";
	case SL_ENOMEM:
		return "out of memory";
	case SL_EPROTO:
		return "protocol violation";
	case SL_ETOOBIG:
		return "message too large";
	case SL_EPOLICY:
		return "refused by policy";
	case SL_EIO:
		return "I/O error";
	case SL_EINVAL:
		return "invalid argument";
	case SL_EAUTH:
		return "authentication failed";
	case SL_ENOENT:
		return "not found";
	case SL_ENOKEY:
		return "unknown signing key";
	case SL_EEXPIRED:
		return "expired or not yet valid";
	case SL_ECORRUPT:
		return "integrity check failed";
	case SL_ESTATE:
		return "invalid state";
	case SL_ETIMEOUT:
		return "timed out";
	}
	return "unknown error";
}

/* ---------------------------------------------------------------- buffers */

void
sl_buf_init(struct sl_buf *b, size_t max)
{
	memset(b, 0, sizeof(*b));
	b->max = max;
}

void
sl_buf_fini(struct sl_buf *b)
{
	free(b->data);
	memset(b, 0, sizeof(*b));
}

void
sl_buf_compact(struct sl_buf *b)
{
	if (b->off == 0)
		return;
	if (b->off < b->len)
		memmove(b->data, b->data + b->off, b->len - b->off);
	b->len -= b->off;
	b->off = 0;
}

char *
sl_fmt_u64(char *o, uint64_t v)
{
	static const char pairs[201] = "00010203040506070809101112131415161718192021222324"
				       "25262728293031323334353637383940414243444546474849"
				       "50515253545556575859606162636465666768697071727374"
				       "75767778798081828384858687888990919293949596979899";
	char d[20];
	size_t i = sizeof(d);

	/* two digits a division (timestamps have sixteen) */
	while (v >= 100) {
		i -= 2;
		memcpy(d + i, pairs + 2 * (v % 100), 2);
		v /= 100;
	}
	if (v >= 10) {
		i -= 2;
		memcpy(d + i, pairs + 2 * v, 2);
	} else {
		d[--i] = (char)('0' + v);
	}
	memcpy(o, d + i, sizeof(d) - i);
	return o + (sizeof(d) - i);
}

char *
sl_fmt_i64(char *o, int64_t v)
{
	if (v >= 0)
		return sl_fmt_u64(o, (uint64_t)v);
	*o++ = '-';
	return sl_fmt_u64(o, (uint64_t)0 - (uint64_t)v);
}

int
sl_buf_grow(struct sl_buf *b, size_t n)
{
	size_t need, ncap;
	uint8_t *p;

	if (b->cap - b->len >= n)
		return 0;
	/* Reclaim consumed space before growing. */
	if (b->off > 0) {
		sl_buf_compact(b);
		if (b->cap - b->len >= n)
			return 0;
	}
	need = b->len + n;
	if (need < b->len || (b->max != 0 && need > b->max))
		return SL_ETOOBIG;
	ncap = b->cap ? b->cap : 256;
	while (ncap < need)
		ncap *= 2;
	if (b->max != 0 && ncap > b->max)
		ncap = b->max;
	p = realloc(b->data, ncap);
	if (p == NULL)
		return SL_ENOMEM;
	b->data = p;
	b->cap = ncap;
	return 0;
}

int
sl_buf_append_u16be(struct sl_buf *b, uint16_t v)
{
	uint8_t x[2] = {(uint8_t)(v >> 8), (uint8_t)v};

	return sl_buf_append(b, x, 2);
}

int
sl_buf_append_u32be(struct sl_buf *b, uint32_t v)
{
	uint8_t x[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};

	return sl_buf_append(b, x, 4);
}

int
sl_buf_append_cstr(struct sl_buf *b, const char *s)
{
	return sl_buf_append(b, s, strlen(s) + 1);
}

void
sl_buf_consume(struct sl_buf *b, size_t n)
{
	b->off += n;
	if (b->off >= b->len)
		b->off = b->len = 0;
}

/* ------------------------------------------------------- checked cursor */

int
sl_rd_u8(struct sl_rd *r, uint8_t *out)
{
	if (sl_rd_left(r) < 1)
		return SL_EPROTO;
	*out = r->p[r->pos++];
	return 0;
}

int
sl_rd_u16be(struct sl_rd *r, uint16_t *out)
{
	if (sl_rd_left(r) < 2)
		return SL_EPROTO;
	*out = (uint16_t)((r->p[r->pos] << 8) | r->p[r->pos + 1]);
	r->pos += 2;
	return 0;
}

int
sl_rd_u32be(struct sl_rd *r, uint32_t *out)
{
	const uint8_t *p = r->p + r->pos;

	if (sl_rd_left(r) < 4)
		return SL_EPROTO;
	*out = ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
	r->pos += 4;
	return 0;
}

int
sl_rd_i32be(struct sl_rd *r, int32_t *out)
{
	uint32_t v;
	int rc;

	if ((rc = sl_rd_u32be(r, &v)) != 0)
		return rc;
	*out = (int32_t)v;
	return 0;
}

int
sl_rd_bytes(struct sl_rd *r, size_t n, const uint8_t **out)
{
	if (sl_rd_left(r) < n)
		return SL_EPROTO;
	*out = r->p + r->pos;
	r->pos += n;
	return 0;
}

int
sl_rd_cstr(struct sl_rd *r, const char **out, size_t *outlen)
{
	const uint8_t *s = r->p + r->pos;
	const uint8_t *nul = memchr(s, 0, sl_rd_left(r));

	if (nul == NULL)
		return SL_EPROTO;
	*out = (const char *)s;
	if (outlen != NULL)
		*outlen = (size_t)(nul - s);
	r->pos += (size_t)(nul - s) + 1;
	return 0;
}

/* ---------------------------------------------------------------- logging */

static enum sl_log_level log_level = SL_LOG_INFO;

void
sl_log_set_level(enum sl_log_level lvl)
{
	log_level = lvl;
}

/* Copies a log message into out (cap bytes, NUL-terminated), escaping what
 * a terminal or a log viewer would act on: C0 controls and DEL as \xNN,
 * C1 controls, line/paragraph separators and bidi controls as \uNNNN.
 * Messages carry what clients and servers sent (names, errors): a line
 * must not clear a screen, forge another line or reverse itself. Returns
 * the length written. */
static size_t
log_escape(const char *in, char *out, size_t cap)
{
	const unsigned char *p = (const unsigned char *)in;
	size_t o = 0;

	while (*p != '\0' && o + 7 < cap) {
		unsigned cp = 0, len = 0;

		if (p[0] < 0x20 || p[0] == 0x7f) {
			o += (size_t)snprintf(out + o, cap - o, "\\x%02x", p[0]);
			p++;
			continue;
		}
		if (p[0] >= 0x80) {
			/* not UTF-8 (a lone 0x9b is CSI to an 8-bit terminal): \xNN */
			unsigned need = (p[0] & 0xe0) == 0xc0	? 2
					: (p[0] & 0xf0) == 0xe0 ? 3
					: (p[0] & 0xf8) == 0xf0 ? 4
								: 0;
			unsigned k = 1;

			while (k < need && (p[k] & 0xc0) == 0x80)
				k++;
			if (need == 0 || k < need) {
				o += (size_t)snprintf(out + o, cap - o, "\\x%02x", p[0]);
				p++;
				continue;
			}
		}
		/* a whole character here: at most 4 bytes are read (strnlen) */
		len = (unsigned)sl_utf8_control(p, strnlen((const char *)p, 4), &cp);
		if (len) {
			o += (size_t)snprintf(out + o, cap - o, "\\u%04x", cp);
			p += len;
			continue;
		}
		/* one whole character (checked above when not ASCII) */
		len = p[0] < 0x80 ? 1 : (p[0] & 0xe0) == 0xc0 ? 2 : (p[0] & 0xf0) == 0xe0 ? 3 : 4;
		if (o + len >= cap)
			break;
		while (len--)
			out[o++] = (char)*p++;
	}
	out[o] = '\0';
	return o;
}

void
sl_log(enum sl_log_level lvl, const char *fmt, ...)
{
	static const char *names[] = {"debug", "info", "warn", "error"};
	char line[2048], msg[1536];
	struct timespec ts;
	struct tm tm;
	va_list ap;
	int n;

	if (lvl < log_level)
		return;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	n = snprintf(line, sizeof(line),
		     "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ sluice[%d] %s: ", tm.tm_year + 1900,
		     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
		     ts.tv_nsec / 1000000, (int)getpid(), names[lvl]);
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	n += (int)log_escape(msg, line + n, sizeof(line) - (size_t)n - 1);
	line[n++] = '\n';
	/* One write() per line keeps lines from several threads whole. */
	if (write(STDERR_FILENO, line, (size_t)n) < 0) {
		/* nowhere left to report it */
	}
}

/* ---------------------------------------------------------------- misc */

int64_t
sl_now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t
sl_mono_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int
sl_parse_duration_ms(const char *s, int64_t *out_ms)
{
	char *end;
	double v;
	double mult;

	if (s == NULL || *s == '\0')
		return SL_EINVAL;
	errno = 0;
	v = strtod(s, &end);
	if (errno != 0 || end == s || v < 0)
		return SL_EINVAL;
	if (*end == '\0' || strcmp(end, "s") == 0)
		mult = 1000;
	else if (strcmp(end, "ms") == 0)
		mult = 1;
	else if (strcmp(end, "m") == 0)
		mult = 60 * 1000.0;
	else if (strcmp(end, "h") == 0)
		mult = 3600 * 1000.0;
	else if (strcmp(end, "d") == 0)
		mult = 86400 * 1000.0;
	else
		return SL_EINVAL;
	if (v * mult > 9.0e15)
		return SL_EINVAL;
	*out_ms = (int64_t)(v * mult);
	return 0;
}

size_t
sl_utf8_control(const unsigned char *s, size_t n, unsigned *cp)
{
	unsigned c = 0;
	size_t len = 0;

	if (n == 0)
		return 0;
	if (s[0] < 0x20 || s[0] == 0x7f)
		c = s[0], len = 1;
	else if (n >= 2 && s[0] == 0xc2 && s[1] >= 0x80 && s[1] <= 0x9f)
		c = s[1], len = 2;
	else if (n >= 2 && s[0] == 0xd8 && s[1] == 0x9c)
		c = 0x061c, len = 2;
	else if (n >= 3 && s[0] == 0xe2 && s[1] == 0x80 &&
		 (s[2] == 0x8e || s[2] == 0x8f || (s[2] >= 0xa8 && s[2] <= 0xae)))
		c = 0x2000u | (s[2] & 0x3f), len = 3;
	else if (n >= 3 && s[0] == 0xe2 && s[1] == 0x81 && s[2] >= 0xa6 && s[2] <= 0xa9)
		c = 0x2040u | (s[2] & 0x3f), len = 3;
	if (cp != NULL)
		*cp = c;
	return len;
}

void
sl_fput_safe(FILE *out, const char *s, size_t n, const char *indent)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		unsigned cp;
		size_t k;

		if (c == '\n' && indent != NULL) {
			fputc('\n', out);
			fputs(indent, out);
		} else if (c == '\n') {
			fputs("\\n", out);
		} else if (c == '\t') {
			fputc(c, out);
		} else if ((k = sl_utf8_control((const unsigned char *)s + i, n - i, &cp)) != 0) {
			if (k == 1)
				fprintf(out, "\\x%02x", cp);
			else
				fprintf(out, "\\u%04x", cp);
			i += k - 1;
		} else {
			fputc(c, out);
		}
	}
}

void
sl_fput_safe_cut(FILE *out, const char *s, size_t max)
{
	size_t n;

	if (s == NULL)
		s = "-";
	n = strlen(s);
	if (n <= max) {
		sl_fput_safe(out, s, n, NULL);
		return;
	}
	while (max > 0 && ((unsigned char)s[max] & 0xc0) == 0x80)
		max--;
	sl_fput_safe(out, s, max, NULL);
	fputs("...", out);
}

void
sl_hex(const uint8_t *in, size_t n, char *out)
{
	/* every byte's two digits: one table load per byte */
	static const char pairs[513] =
		"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
		"202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"
		"404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f"
		"606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f"
		"808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f"
		"a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf"
		"c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf"
		"e0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff";

	for (size_t i = 0; i < n; i++)
		memcpy(out + 2 * i, pairs + 2 * in[i], 2);
	out[2 * n] = '\0';
}

int
sl_memeq_ct(const void *a, const void *b, size_t n)
{
	return CRYPTO_memcmp(a, b, n) == 0;
}

int
sl_read_file(const char *path, size_t max, char **out, size_t *outlen)
{
	struct stat st;
	char *buf;
	size_t got = 0;
	int fd;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? SL_ENOENT : SL_EIO;
	if (fstat(fd, &st) != 0) {
		close(fd);
		return SL_EIO;
	}
	if ((size_t)st.st_size > max) {
		close(fd);
		return SL_ETOOBIG;
	}
	buf = malloc((size_t)st.st_size + 1);
	if (buf == NULL) {
		close(fd);
		return SL_ENOMEM;
	}
	while (got < (size_t)st.st_size) {
		ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	close(fd);
	buf[got] = '\0';
	*out = buf;
	if (outlen != NULL)
		*outlen = got;
	return 0;
}

int
sl_random(void *buf, size_t n)
{
	return RAND_bytes(buf, (int)n) == 1 ? 0 : SL_EIO;
}

static int
glob_rec(const char *p, const char *s, int ci, int star_crosses_slash, int depth)
{
	if (depth > 64)
		return 0;
	while (*p) {
		if (p[0] == '*') {
			int dbl = p[1] == '*';
			const char *rest = p + (dbl ? 2 : 1);
			int cross = dbl || star_crosses_slash;

			for (const char *t = s;; t++) {
				if (glob_rec(rest, t, ci, star_crosses_slash, depth + 1))
					return 1;
				if (*t == '\0' || (!cross && *t == '/'))
					return 0;
			}
		}
		if (*s == '\0')
			return 0;
		if (*p != '?') {
			unsigned char a = (unsigned char)*p, b = (unsigned char)*s;

			if (ci) {
				a = (unsigned char)tolower(a);
				b = (unsigned char)tolower(b);
			}
			if (a != b)
				return 0;
		}
		p++;
		s++;
	}
	return *s == '\0';
}

int
sl_glob_match(const char *pat, const char *s)
{
	return glob_rec(pat, s, 0, 0, 0);
}

int
sl_glob_match_ci(const char *pat, const char *s)
{
	return glob_rec(pat, s, 1, 1, 0);
}
