/*
 * core.h - error codes, byte buffers, checked read cursors, logging.
 *
 * Everything here is protocol-agnostic and used by every module.
 */
#ifndef SLUICE_CORE_H
#define SLUICE_CORE_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* Error codes: 0 ok, negative error, SL_AGAIN (positive) = need more bytes. */
#define SL_OK	    0
#define SL_AGAIN    1
#define SL_ENOMEM   (-1)
#define SL_EPROTO   (-2)  /* peer violated the protocol */
#define SL_ETOOBIG  (-3)  /* message or value over a hard limit */
#define SL_EPOLICY  (-4)  /* refused by policy */
#define SL_EIO	    (-5)  /* I/O or store failure */
#define SL_EINVAL   (-6)  /* bad argument or bad configuration */
#define SL_EAUTH    (-7)  /* authentication failed (bad token, bad password) */
#define SL_ENOENT   (-8)  /* not found */
#define SL_ENOKEY   (-9)  /* signing key id unknown: a JWKS refresh may help */
#define SL_EEXPIRED (-10) /* token expired or not yet valid */
#define SL_ECORRUPT (-11) /* stored data failed an integrity check */
#define SL_ESTATE   (-12) /* operation not valid in the current state */
#define SL_ETIMEOUT (-13)

/* Write v in decimal at o (at most 20 digits and a sign, no NUL); return
 * the end. */
char *sl_fmt_u64(char *o, uint64_t v);
char *sl_fmt_i64(char *o, int64_t v);

/* Returns a static string describing an SL_E* code. */
const char *sl_strerror(int err);

/* ---------------------------------------------------------------- buffers */

/*
 * A growable byte buffer with a hard maximum: sl_buf_reserve() refuses to
 * grow past max with SL_ETOOBIG instead of growing without bound.
 * Bytes [off, len) are unread; [0, off) were consumed.
 */
struct sl_buf {
	uint8_t *data;
	size_t off;
	size_t len;
	size_t cap;
	size_t max;
};

void sl_buf_init(struct sl_buf *b, size_t max);
void sl_buf_fini(struct sl_buf *b);
/* sl_buf_reserve() when the room is not there yet. */
int sl_buf_grow(struct sl_buf *b, size_t n);
/* Make room for n more bytes after len. The check is inline: records and
 * protocol messages reserve and append many small pieces. */
static inline int
sl_buf_reserve(struct sl_buf *b, size_t n)
{
	return b->cap - b->len >= n ? 0 : sl_buf_grow(b, n);
}
static inline int
sl_buf_append(struct sl_buf *b, const void *p, size_t n)
{
	int r;

	if (n == 0)
		return 0;
	if ((r = sl_buf_reserve(b, n)) != 0)
		return r;
	memcpy(b->data + b->len, p, n);
	b->len += n;
	return 0;
}
static inline int
sl_buf_append_u8(struct sl_buf *b, uint8_t v)
{
	int r;

	if ((r = sl_buf_reserve(b, 1)) != 0)
		return r;
	b->data[b->len++] = v;
	return 0;
}
int sl_buf_append_u16be(struct sl_buf *b, uint16_t v);
int sl_buf_append_u32be(struct sl_buf *b, uint32_t v);
/* Appends s including its terminating NUL. */
int sl_buf_append_cstr(struct sl_buf *b, const char *s);
/* Mark n unread bytes consumed; compacts when everything was read. */
void sl_buf_consume(struct sl_buf *b, size_t n);
/* Move unread bytes to the front. */
void sl_buf_compact(struct sl_buf *b);
static inline size_t
sl_buf_unread(const struct sl_buf *b)
{
	return b->len - b->off;
}
static inline uint8_t *
sl_buf_head(const struct sl_buf *b)
{
	return b->data != NULL ? b->data + b->off : NULL; /* NULL + 0 is undefined */
}

/* ------------------------------------------------------- checked cursor */

/*
 * A read cursor over borrowed bytes. Every getter fails with SL_EPROTO on a
 * short read and leaves the cursor where it was.
 */
struct sl_rd {
	const uint8_t *p;
	size_t len;
	size_t pos;
};

static inline void
sl_rd_init(struct sl_rd *r, const void *p, size_t len)
{
	r->p = (const uint8_t *)p;
	r->len = len;
	r->pos = 0;
}
static inline size_t
sl_rd_left(const struct sl_rd *r)
{
	return r->len - r->pos;
}
int sl_rd_u8(struct sl_rd *r, uint8_t *out);
int sl_rd_u16be(struct sl_rd *r, uint16_t *out);
int sl_rd_u32be(struct sl_rd *r, uint32_t *out);
int sl_rd_i32be(struct sl_rd *r, int32_t *out);
/* Borrow n bytes. */
int sl_rd_bytes(struct sl_rd *r, size_t n, const uint8_t **out);
/* Borrow a NUL-terminated string (the NUL must lie inside the cursor). */
int sl_rd_cstr(struct sl_rd *r, const char **out, size_t *outlen);

/* ---------------------------------------------------------------- logging */

enum sl_log_level { SL_LOG_DEBUG, SL_LOG_INFO, SL_LOG_WARN, SL_LOG_ERROR };

void sl_log_set_level(enum sl_log_level lvl);
/* Never pass secrets or unmasked row values to the logger. */
void sl_log(enum sl_log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define sl_debug(...) sl_log(SL_LOG_DEBUG, __VA_ARGS__)
#define sl_info(...)  sl_log(SL_LOG_INFO, __VA_ARGS__)
#define sl_warn(...)  sl_log(SL_LOG_WARN, __VA_ARGS__)
#define sl_error(...) sl_log(SL_LOG_ERROR, __VA_ARGS__)

/* ---------------------------------------------------------------- misc */

/* Wall clock in microseconds since the epoch; monotonic clock in microseconds. */
int64_t sl_now_us(void);
int64_t sl_mono_us(void);
/* Parses "300s", "5m", "1h", "250ms", "2d" or a bare number of seconds into
 * milliseconds. Returns 0 or SL_EINVAL. */
int sl_parse_duration_ms(const char *s, int64_t *out_ms);
/*
 * Writes n bytes of s for a terminal. What clients sent (statement texts,
 * names, reasons) can carry escape sequences that move the cursor, clear
 * the screen, retitle the window or hide the lines before them, and bidi
 * controls that reorder what is shown: an approver could be shown a
 * harmless statement while approving another. Control characters
 * (sl_utf8_control) but tab and newline are shown escaped (\x1b, \u009b,
 * \u2028, \u202e); a newline is "\n" (indent NULL) or continues on a new
 * line that starts with indent.
 */
void sl_fput_safe(FILE *out, const char *s, size_t n, const char *indent);
/* The length of the control character at s (n bytes left), 0 if there is
 * none: C0 and DEL (1 byte), C1 U+0080..U+009F and U+061C ARABIC LETTER
 * MARK (2), U+200E/U+200F, U+2028..U+202E (line and paragraph separators,
 * bidi embeddings and overrides) and U+2066..U+2069 (bidi isolates) (3).
 * What a terminal, a log viewer or an approver's screen would act on or
 * reorder instead of showing. *cp (if not NULL) gets the code point. One
 * definition for logs, audit tools, identities and approvers' displays. */
size_t sl_utf8_control(const unsigned char *s, size_t n, unsigned *cp);
/* The same for a NUL-terminated s cut to at most max bytes (at a character
 * boundary, "..." when cut); NULL prints as "-". */
void sl_fput_safe_cut(FILE *out, const char *s, size_t max);
/* Lower-case hex of n bytes into out (2n+1 bytes). */
void sl_hex(const uint8_t *in, size_t n, char *out);
/* SHA-256 without OpenSSL 3's per-call provider overhead (sha256.c). */
void sl_sha256(const void *p, size_t n, uint8_t out[32]);
/* Constant-time comparison. */
int sl_memeq_ct(const void *a, const void *b, size_t n);
/* Reads a whole file (max bytes) into a NUL-terminated heap string; returns owned. */
int sl_read_file(const char *path, size_t max, char **out, size_t *outlen);
/* Fills buf with cryptographically random bytes. */
int sl_random(void *buf, size_t n);

/* SipHash-2-4 of data under a 16-byte key. */
uint64_t sl_siphash(const void *data, size_t len, const uint8_t key[16]);

/* A map from NUL-terminated names to pointers (names a client picks:
 * keyed hashing, so they cannot be chosen to collide). All zero is an empty
 * map. Keys are not copied: an entry's key must live as long as the entry
 * (usually it is the name inside the value). Iterate with
 * for (i = 0; i < m.cap; i++) if (m.slots[i].key) ... */
struct sl_strmap_slot {
	const char *key;
	uint64_t hash;
	void *val;
};
struct sl_strmap {
	struct sl_strmap_slot *slots;
	size_t cap, n;
};
void *sl_strmap_get(const struct sl_strmap *m, const char *key);
/* Inserts or replaces (the stored key pointer too); *old (if old is not
 * NULL) gets the value replaced, or NULL. 0 or SL_ENOMEM (only when
 * inserting: replacing never fails). */
int sl_strmap_put(struct sl_strmap *m, const char *key, void *val, void **old);
/* Removes key; returns its value or NULL. */
void *sl_strmap_del(struct sl_strmap *m, const char *key);
void sl_strmap_fini(struct sl_strmap *m);
/* Simple glob: '*' matches any run except '/', '**' any run including '/', '?' one byte. */
int sl_glob_match(const char *pat, const char *s);
/* Same, case-insensitive ASCII, where '*' also crosses '/'. */
int sl_glob_match_ci(const char *pat, const char *s);

#endif
