/*
 * digits.c - candidate reports for the detectors without a literal anchor
 * (ssn, credit_card, iban), found with SSE2/AVX2 bitmasks instead of a regex
 * engine: numbers are everywhere in result data, and hyperscan ran each of
 * these patterns at ~0.6 GB/s there.
 *
 * The scanner reports what a pattern with one byte of trailing context
 * would: at the end of a digit group shaped like the end of an SSN
 * (ddd-dd-dddd), of a 13+ digit run, or of a grouped number with 13+
 * digits within 24 bytes; and, for IBANs, at every possible start (two
 * capitals, two digits, after a non-alphanumeric byte: resolved forward).
 * The resolvers in detect.c check the exact shape, so this only has to be
 * a superset of what they accept.
 */
#include "mask_internal.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <immintrin.h>

#define DIG(c)	 ((unsigned)((c) - '0') < 10u)
#define UP(c)	 ((unsigned)((c) - 'A') < 26u)
#define LOW(c)	 ((unsigned)((c) - 'a') < 26u)
#define ALPHA(c) (UP(c) || LOW(c))
#define ALNUM(c) (DIG(c) || UP(c) || LOW(c))

/* digit bits of ddd-dd-dddd, position i-11 at bit 0 */
#define SSN_BITS 0x7b7u

struct m64 {
	uint64_t d, u, a, s; /* digit, capital, alphanumeric, ' ' or '-' */
};

/* Class bits of 64 bytes. */
static inline void
masks64(const uint8_t *b, struct m64 *m)
{
	const __m128i c0 = _mm_set1_epi8('0'), c9 = _mm_set1_epi8(9), cA = _mm_set1_epi8('A'),
		      c25 = _mm_set1_epi8(25), ca = _mm_set1_epi8('a'), c20 = _mm_set1_epi8(0x20),
		      csp = _mm_set1_epi8(' '), cda = _mm_set1_epi8('-');
	uint64_t dd = 0, uu = 0, aa = 0, ss = 0;

#pragma GCC unroll 4
	for (int k = 0; k < 4; k++) {
		__m128i x = _mm_loadu_si128((const __m128i *)(b + 16 * k));
		__m128i t = _mm_sub_epi8(x, c0);
		__m128i dm = _mm_cmpeq_epi8(_mm_min_epu8(t, c9), t);
		__m128i tu = _mm_sub_epi8(x, cA);
		__m128i um = _mm_cmpeq_epi8(_mm_min_epu8(tu, c25), tu);
		__m128i tl = _mm_sub_epi8(_mm_or_si128(x, c20), ca);
		__m128i lm = _mm_cmpeq_epi8(_mm_min_epu8(tl, c25), tl);

		dd |= (uint64_t)(uint16_t)_mm_movemask_epi8(dm) << (16 * k);
		uu |= (uint64_t)(uint16_t)_mm_movemask_epi8(um) << (16 * k);
		aa |= (uint64_t)(uint16_t)_mm_movemask_epi8(_mm_or_si128(dm, lm)) << (16 * k);
		ss |= (uint64_t)(uint16_t)_mm_movemask_epi8(
			      _mm_or_si128(_mm_cmpeq_epi8(x, csp), _mm_cmpeq_epi8(x, cda)))
		      << (16 * k);
	}
	m->d = dd;
	m->u = uu;
	m->a = aa;
	m->s = ss;
}

/* Class bits of 32 bytes (AVX2) into half k of m: digit, capital,
 * alphanumeric, ' ' or '-'. Returns the '-' bytes, which the one pass
 * needs again. */
__attribute__((target("avx2"), always_inline)) static inline __m256i
classes32_avx2(__m256i x, int k, struct m64 *m)
{
	const __m256i c0 = _mm256_set1_epi8('0'), c9 = _mm256_set1_epi8(9),
		      cA = _mm256_set1_epi8('A'), c25 = _mm256_set1_epi8(25),
		      ca = _mm256_set1_epi8('a'), c20 = _mm256_set1_epi8(0x20);
	__m256i t = _mm256_sub_epi8(x, c0);
	__m256i dm = _mm256_cmpeq_epi8(_mm256_min_epu8(t, c9), t);
	__m256i tu = _mm256_sub_epi8(x, cA);
	__m256i um = _mm256_cmpeq_epi8(_mm256_min_epu8(tu, c25), tu);
	__m256i tl = _mm256_sub_epi8(_mm256_or_si256(x, c20), ca);
	__m256i lm = _mm256_cmpeq_epi8(_mm256_min_epu8(tl, c25), tl);
	__m256i dash = _mm256_cmpeq_epi8(x, _mm256_set1_epi8('-'));
	__m256i sm = _mm256_or_si256(_mm256_cmpeq_epi8(x, _mm256_set1_epi8(' ')), dash);

	m->d |= (uint64_t)(uint32_t)_mm256_movemask_epi8(dm) << (32 * k);
	m->u |= (uint64_t)(uint32_t)_mm256_movemask_epi8(um) << (32 * k);
	m->a |= (uint64_t)(uint32_t)_mm256_movemask_epi8(_mm256_or_si256(dm, lm)) << (32 * k);
	m->s |= (uint64_t)(uint32_t)_mm256_movemask_epi8(sm) << (32 * k);
	return dash;
}

/* The same with AVX2, 32 bytes per step. */
__attribute__((target("avx2"), always_inline)) static inline void
masks64_avx2(const uint8_t *b, struct m64 *m)
{
	*m = (struct m64){0, 0, 0, 0};
	for (int k = 0; k < 2; k++)
		classes32_avx2(_mm256_loadu_si256((const __m256i *)(b + 32 * k)), k, m);
}

/* Bits i of one 64-bit word whose preceding bits may end an SSN or a card
 * number: ddd-dd-dddd, 13 digits, or 14 digits and separators (D digit
 * bits, S separator bits). Looks back at most 14 bits, with plain 64-bit
 * shifts: bits 14..63 are exact, lower ones may miss a shape. */
static inline uint64_t
shapes64(uint64_t D, uint64_t S)
{
	uint64_t N = D | S, n1 = N << 1, n2 = n1 & (n1 << 1), n4 = n2 & (n2 << 2),
		 n8 = n4 & (n4 << 4), d1, d2, d4, d8, sd;

	/* every shape needs 11 digits or separators in a row: most words of
	 * result text (dates, times, amounts, ids) have none */
	if ((n8 & (n2 << 8) & (N << 11)) == 0)
		return 0;
	d1 = D << 1;
	d2 = d1 & (d1 << 1);
	d4 = d2 & (d2 << 2);
	d8 = d4 & (d4 << 4);
	/* ssn: d4 & S<<5 & D<<6 & D<<7 & S<<8 & D<<9 & D<<10 & D<<11 */
	sd = S & d2;
	return (d8 & (d4 << 8) & (D << 13)) | (n8 & (n4 << 8) & (n2 << 12)) |
	       (d4 & (sd << 5) & (sd << 8) & (D << 11));
}

/* The bits of gb (positions of the current block) whose preceding bytes
 * may end an SSN or a card number; X:P are the current and previous
 * block's bits. Two 64-bit evaluations instead of 128-bit shift chains:
 * the block itself for bits 14..63, and the word straddling both blocks
 * (its bits 32..45 are the block's bits 0..13) for the rest. */
static inline uint64_t
number_ends(uint64_t d, uint64_t dprev, uint64_t s, uint64_t sprev, uint64_t gb)
{
	uint64_t r = 0;

	if (gb >> 14)
		r = shapes64(d, s) & ~(uint64_t)0x3fff;
	if (gb & 0x3fff)
		r |= (shapes64((d << 32) | (dprev >> 32), (s << 32) | (sprev >> 32)) >> 32) &
		     0x3fff;
	return r & gb;
}

/* Bytes [p, p + 64) of the view: in place, or copied into b with the
 * missing ones 0. */
static const uint8_t *
load(const struct eng *e, uint64_t p, uint8_t b[64])
{
	if (p >= e->lo && p + 64 <= e->hi)
		return e->buf + (p - e->lo);
	memset(b, 0, 64);
	if (p + 64 > e->lo && p < e->hi) {
		uint64_t s = p > e->lo ? p : e->lo, t = p + 64 < e->hi ? p + 64 : e->hi;

		memcpy(b + (s - p), e->buf + (s - e->lo), (size_t)(t - s));
	}
	return b;
}

static inline int
at(const struct eng *e, int64_t o)
{
	if (o < (int64_t)e->lo || (uint64_t)o >= e->hi)
		return -1;
	return e->buf[(uint64_t)o - e->lo];
}

static inline int
popc(uint32_t x)
{
	x = x - ((x >> 1) & 0x55555555u);
	x = (x & 0x33333333u) + ((x >> 2) & 0x33333333u);
	x = (x + (x >> 4)) & 0x0f0f0f0fu;
	return (int)((x * 0x01010101u) >> 24);
}

/* Digit bits of the 24 positions before bit b (bit 23 = position b - 1),
 * from this block's and the previous block's digit masks. */
static inline uint32_t
window24(uint64_t d, uint64_t dprev, int b)
{
	int s = 40 + b; /* start, in the 128-bit d:dprev */

	if (s >= 64)
		return (uint32_t)((d >> (s - 64)) & 0xffffffu);
	return (uint32_t)(((dprev >> s) | (d << (64 - s))) & 0xffffffu);
}

/* The end of a digit group at i (byte i-1 a digit, byte i not, or i the
 * end of data), with w the digit bits of the 24 bytes before it: report
 * the number shapes that can end here. end is the pattern-style end
 * offset (i + 1, or i at the end of data). */
static void
group_end(struct eng *e, uint32_t w, uint64_t i, uint64_t end)
{
	uint32_t en = e->p->enabled;
	int n = 0, c, pc = popc(w);

	if (pc < 9)
		return;
	if (((w >> 13) & 0x7ffu) == SSN_BITS && (en & (1u << SL_DET_SSN)))
		sl_mask__report(e, K_SSN, SL_DET_SSN, 0, end);
	if (pc < 13 || !(en & (1u << SL_DET_CARD)))
		return;
	if (((w >> 11) & 0x1fffu) == 0x1fffu) {
		sl_mask__report(e, K_CARD, SL_DET_CARD, 0, end);
		return; /* a group of 13+ digits ends no grouped card */
	}
	while (n < 7 && DIG(at(e, (int64_t)i - 1 - n)))
		n++;
	c = at(e, (int64_t)i - 1 - n);
	if (n <= 6 && (c == ' ' || c == '-'))
		sl_mask__report(e, K_CARD_SEP, SL_DET_CARD, 0, end);
}

/* At the end of data: it ends a group or run, like '$' in a pattern. */
static void
scan_eof(struct eng *e, int want_num)
{
	int c = at(e, (int64_t)e->hi - 1);

	e->ds_eof = 1;
	if (want_num && DIG(c)) {
		uint32_t w = 0;

		for (int k = 1; k <= 24; k++)
			w |= (uint32_t)DIG(at(e, (int64_t)e->hi - k)) << (24 - k);
		group_end(e, w, e->hi, e->hi);
	}
}

/* The scan over [ds_pos, hi); instantiated for SSE2 and for AVX2. */
static inline __attribute__((always_inline)) void
scan(struct eng *e, int want_num, int want_iban, void (*masks)(const uint8_t *, struct m64 *))
{
	uint64_t p = e->ds_pos;
	struct m64 m, pm = {0, 0, 0, 0}; /* this and the previous 64 bytes */
	uint8_t buf[64];
	const uint8_t *b;

	if (p < e->hi && p > 0) {
		/* digit bits of the (up to) 64 bytes before p, ending at bit 63 */
		b = load(e, p >= 64 ? p - 64 : 0, buf);
		masks(b, &pm);
		if (p < 64) {
			uint64_t keep = (1ull << p) - 1;

			pm.d = (pm.d & keep) << (64 - p);
			pm.u = (pm.u & keep) << (64 - p);
			pm.a = (pm.a & keep) << (64 - p);
			pm.s = (pm.s & keep) << (64 - p);
		}
	}
	for (; p < e->hi; p += 64) {
		uint64_t d, u, a, valid, gb, q;
		/* the 4 bytes before the block, bit 3 = the last one */
		uint64_t cd = pm.d >> 60, cu = pm.u >> 60, ca = pm.a >> 60;
		size_t n = e->hi - p < 64 ? (size_t)(e->hi - p) : 64;

		b = load(e, p, buf);
		masks(b, &m);
		d = m.d;
		u = m.u;
		a = m.a;
		valid = n == 64 ? ~0ull : (1ull << n) - 1;
		/* bit i: byte i ends a digit group / an alphanumeric run */
		gb = ~d & ((d << 1) | (cd >> 3)) & valid;
		if (want_num && gb != 0 && (gb = number_ends(d, pm.d, m.s, pm.s, gb)) != 0) {
			for (uint64_t m = gb; m; m &= m - 1) {
				int bit = __builtin_ctzll(m);

				group_end(e, window24(d, pm.d, bit), p + (uint64_t)bit,
					  p + (uint64_t)bit + 1);
			}
		}
		if (want_iban) {
			/* bit j: an IBAN start's second check digit (two capitals,
			 * two digits, after a non-alphanumeric byte) */
			q = d & ((d << 1) | (cd >> 3)) & ((u << 2) | (cu >> 2)) &
			    ((u << 3) | (cu >> 1)) & ~((a << 4) | ca) & valid;
			for (; q; q &= q - 1) {
				uint64_t j = p + (uint64_t)__builtin_ctzll(q);

				sl_mask__report(e, K_IBAN, SL_DET_IBAN, j - 3, j + 1);
			}
		}
		pm = m;
	}
}

__attribute__((target("avx2"))) static void
scan_avx2(struct eng *e, int want_num, int want_iban)
{
	scan(e, want_num, want_iban, masks64_avx2);
}

static void
scan_sse2(struct eng *e, int want_num, int want_iban)
{
	scan(e, want_num, want_iban, masks64);
}

/* AVX2 when the CPU has it. SLUICE_MASK_NO_AVX2 in the environment forces
 * the SSE2 code (the unit tests run both, so the fallback that older CPUs
 * take is tested on AVX2 hosts too). Read once. */
static int
use_avx2(void)
{
	static atomic_int v = -1;
	int r = atomic_load_explicit(&v, memory_order_relaxed);

	if (r < 0) {
		r = __builtin_cpu_supports("avx2") && getenv("SLUICE_MASK_NO_AVX2") == NULL;
		atomic_store_explicit(&v, r, memory_order_relaxed);
	}
	return r;
}

/* Block mode: what scan() would report over the whole value, from the
 * events sl_mask__classify() recorded (same reports, same order). */
static void
replay(struct eng *e, int want_num, int want_iban)
{
	for (size_t k = 0; k < e->ds_nev; k++) {
		const struct sl_mask_ds_event *ev = &e->ds_ev[k];

		if (want_num) {
			for (uint64_t m = ev->gb; m; m &= m - 1) {
				int bit = __builtin_ctzll(m);

				group_end(e, window24(ev->d, ev->dprev, bit), ev->p + (uint64_t)bit,
					  ev->p + (uint64_t)bit + 1);
			}
		}
		if (want_iban) {
			for (uint64_t q = ev->q; q; q &= q - 1) {
				uint64_t j = ev->p + (uint64_t)__builtin_ctzll(q);

				sl_mask__report(e, K_IBAN, SL_DET_IBAN, j - 3, j + 1);
			}
		}
	}
}

void
sl_mask__scan_digits(struct eng *e)
{
	uint32_t en = e->p->enabled;
	int want_num = (en & ((1u << SL_DET_SSN) | (1u << SL_DET_CARD))) != 0;
	int want_iban = (en & (1u << SL_DET_IBAN)) != 0;

	if (!want_num && !want_iban)
		return;
	if (e->ds_pos < e->hi) {
		if (e->ds_ev != NULL)
			replay(e, want_num, want_iban);
		else if (use_avx2())
			scan_avx2(e, want_num, want_iban);
		else
			scan_sse2(e, want_num, want_iban);
	}
	e->ds_pos = e->hi;
	if (e->eof && !e->ds_eof)
		scan_eof(e, want_num);
}

/* ------------------------------------------------------------ prefilter */

/* Anchor candidates among bytes [p, p + 64) of v, with the neighbour each
 * needs checked too: '@'; '+' before 1-9; 'A' before a capital; "--";
 * "yJ"; ':' or '=' after a letter, a blank or a quote. Result text is full
 * of dashes (dates, UUIDs), colons (times), '+' (time zones) and y's: this
 * leaves prefilter_at() only the few that can anchor a match. */
static inline uint64_t
cands64(const uint8_t *v, size_t len, size_t p)
{
	uint8_t tmp[80];
	const uint8_t *b = v + p; /* b[-1] .. b[64] are read */
	uint64_t out = 0;

	if (p == 0 || p + 65 > len) {
		memset(tmp, 0, sizeof(tmp));
		for (size_t i = 0; i < 66; i++)
			if (p + i >= 1 && p + i - 1 < len)
				tmp[i] = v[p + i - 1];
		b = tmp + 1;
	}
#pragma GCC unroll 4
	for (int k = 0; k < 4; k++) {
		__m128i x = _mm_loadu_si128((const __m128i *)(b + 16 * k));
		__m128i nx = _mm_loadu_si128((const __m128i *)(b + 16 * k + 1));
		__m128i pv = _mm_loadu_si128((const __m128i *)(b + 16 * k - 1));
		__m128i t19 = _mm_sub_epi8(nx, _mm_set1_epi8('1'));
		__m128i n19 = _mm_cmpeq_epi8(_mm_min_epu8(t19, _mm_set1_epi8(8)), t19);
		__m128i tu = _mm_sub_epi8(nx, _mm_set1_epi8('A'));
		__m128i nup = _mm_cmpeq_epi8(_mm_min_epu8(tu, _mm_set1_epi8(25)), tu);
		__m128i tl =
			_mm_sub_epi8(_mm_or_si128(pv, _mm_set1_epi8(0x20)), _mm_set1_epi8('a'));
		__m128i palpha = _mm_cmpeq_epi8(_mm_min_epu8(tl, _mm_set1_epi8(25)), tl);
		__m128i pblank =
			_mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(pv, _mm_set1_epi8(' ')),
						  _mm_cmpeq_epi8(pv, _mm_set1_epi8('\t'))),
				     _mm_or_si128(_mm_cmpeq_epi8(pv, _mm_set1_epi8('"')),
						  _mm_cmpeq_epi8(pv, _mm_set1_epi8('\''))));
		__m128i m = _mm_cmpeq_epi8(x, _mm_set1_epi8('@'));

		m = _mm_or_si128(m, _mm_and_si128(_mm_cmpeq_epi8(x, _mm_set1_epi8('+')), n19));
		m = _mm_or_si128(m, _mm_and_si128(_mm_cmpeq_epi8(x, _mm_set1_epi8('A')), nup));
		m = _mm_or_si128(m, _mm_and_si128(_mm_cmpeq_epi8(x, _mm_set1_epi8('-')),
						  _mm_cmpeq_epi8(nx, _mm_set1_epi8('-'))));
		m = _mm_or_si128(m, _mm_and_si128(_mm_cmpeq_epi8(x, _mm_set1_epi8('y')),
						  _mm_cmpeq_epi8(nx, _mm_set1_epi8('J'))));
		m = _mm_or_si128(m,
				 _mm_and_si128(_mm_or_si128(_mm_cmpeq_epi8(x, _mm_set1_epi8(':')),
							    _mm_cmpeq_epi8(x, _mm_set1_epi8('='))),
					       _mm_or_si128(palpha, pblank)));
		out |= (uint64_t)(uint16_t)_mm_movemask_epi8(m) << (16 * k);
	}
	if (len - p < 64)
		out &= (1ull << (len - p)) - 1;
	return out;
}

/* Whether a built-in regex may match with byte i of v as its anchor (the
 * rules the regexes in detect.c imply; a superset of what they accept). */
static int
prefilter_at(const uint8_t *v, size_t len, size_t i)
{
	int n = i + 1 < len ? v[i + 1] : 0;

	switch (v[i]) {
	case '@':
		return 1;
	case '+':
		return (unsigned)(n - '1') < 9u;
	case 'A':
		return UP(n);
	case '-':
		return n == '-';
	case 'y':
		return n == 'J';
	default: { /* ':' or '=': a secret's key before it, maybe quoted */
		static const char *const keys[] = {
			"pass", "password", "passwd",	  "passphrase",	 "pwd",		 "secret",
			"key",	"token",    "credential", "credentials", "authorization"};
		size_t k = i;

		while (k > 0 &&
		       (v[k - 1] == ' ' || v[k - 1] == '\t' || v[k - 1] == '"' || v[k - 1] == '\''))
			k--;
		/* the key regexes have no left boundary: a word ending in one of
		 * their keys ("db_password", "x-api-key") may be one; most ':'
		 * in result text follow a digit (times) and end here */
		if (k == 0 || !ALPHA(v[k - 1]))
			return 0;
		for (size_t j = 0; j < sizeof(keys) / sizeof(keys[0]); j++) {
			size_t n = strlen(keys[j]), m = 0;

			while (m < n && k >= n && (v[k - n + m] | 0x20) == keys[j][m])
				m++;
			if (m == n)
				return 1;
		}
		return 0;
	}
	}
}

/* ------------------------------------------------------------ regex windows */

/* The first byte at or after p that is in a set (index, or len). One value's
 * anchors come in order and most lie in one run without such a byte (a
 * long "+1+1+1" or "key=key=key"): the last answer, remembered in m, stands
 * for every p up to it, so finding the ends of all windows of a value is
 * linear in its length, not quadratic. */
struct run_memo {
	size_t from, at; /* [from, at]: the answer is at */
	int valid;
};

static size_t
next_in(const uint8_t *v, size_t len, size_t p, int all_ws, struct run_memo *m)
{
	size_t q;

	if (m->valid && p >= m->from && p <= m->at)
		return m->at;
	for (q = p; q < len; q++)
		if (v[q] == ' ' || v[q] == '\t' || v[q] == '\n' || v[q] == '\r' ||
		    (all_ws && (v[q] == '\v' || v[q] == '\f')))
			break;
	m->from = p;
	m->at = q;
	m->valid = 1;
	return q;
}

/* Past the first whitespace at or after p (the pattern's trailing
 * context), or len. */
static size_t
after_ws(const uint8_t *v, size_t len, size_t p, struct run_memo *m)
{
	size_t q = next_in(v, len, p, 1, m);

	return q < len ? q + 1 : len;
}

/* Bytes a PEM marker can span from its first dash: "-----BEGIN " + 40 +
 * "PRIVATE KEY BLOCK-----". */
#define PEM_MARKER_MAX 96
/* The longest secret key a regex names ("authorization"). */
#define SECRET_KEY_MAX 13

static void
anchor_window(const uint8_t *v, size_t len, size_t i, size_t *from, size_t *to,
	      struct run_memo *memo)
{
	size_t s = i, t, k, j;

	switch (v[i]) {
	case '@': /* email: the domain follows; the resolver walks back itself */
	case '+': /* phone */
	case 'A': /* AWS key id */
		t = after_ws(v, len, i, &memo[0]);
		break;
	case 'y': /* "eyJ" */
		s = i > 0 ? i - 1 : 0;
		t = after_ws(v, len, i, &memo[0]);
		break;
	case '-': /* a PEM marker's dashes */
		while (s > 0 && v[s - 1] == '-')
			s--;
		t = s + PEM_MARKER_MAX < len ? s + PEM_MARKER_MAX : len;
		break;
	default: /* ':' or '=' after a secret's key: key, quotes, blanks, value or
		  * "Bearer <token>" */
		k = i;
		while (k > 0 &&
		       (v[k - 1] == ' ' || v[k - 1] == '\t' || v[k - 1] == '"' || v[k - 1] == '\''))
			k--;
		s = k > SECRET_KEY_MAX ? k - SECRET_KEY_MAX : 0;
		j = i + 1;
		while (j < len && (v[j] == ' ' || v[j] == '\t' || v[j] == '"' || v[j] == '\''))
			j++;
		j = next_in(v, len, j, 0, &memo[1]);
		while (j < len && (v[j] == ' ' || v[j] == '\t'))
			j++;
		t = after_ws(v, len, j, &memo[0]);
		break;
	}
	*from = s;
	*to = t;
}

/* Adds window [s, t) to the sorted list w[0..*n): merged with any window it
 * touches. Returns -1 when the list would grow past max. */
static int
add_window(struct sl_mask_win *w, int *np, int max, size_t s, size_t t)
{
	int n = *np, k = n;

	/* windows come mostly in order: merge with any earlier one they touch,
	 * else insert in place */
	while (k > 0 && w[k - 1].from > s)
		k--;
	if (k > 0 && w[k - 1].to >= s) {
		if (t > w[k - 1].to)
			w[k - 1].to = (uint32_t)t;
		k--;
	} else {
		if (n == max)
			return -1;
		memmove(&w[k + 1], &w[k], (size_t)(n - k) * sizeof(*w));
		w[k].from = (uint32_t)s;
		w[k].to = (uint32_t)t;
		n++;
	}
	/* the grown window may now reach the ones after it */
	while (k + 1 < n && w[k + 1].from <= w[k].to) {
		if (w[k + 1].to > w[k].to)
			w[k].to = w[k + 1].to;
		memmove(&w[k + 1], &w[k + 2], (size_t)(n - k - 2) * sizeof(*w));
		n--;
	}
	*np = n;
	return 0;
}

/* ------------------------------------------------------------ one pass */

/*
 * Class bits of b[0..64) and the anchor candidates among them, with the
 * next byte each needs checked (b[64] is read): '@'; '+' before 1-9; 'A'
 * before a capital; "--"; "yJ"; and in *ceq every ':' and '=' (the caller
 * drops those after a digit: its digit bits reach the previous block).
 * Result text is full of dashes (dates, UUIDs), colons (times), '+' (time
 * zones) and y's: this leaves prefilter_at() only the few that can anchor
 * a match.
 */
__attribute__((target("avx2"), always_inline)) static inline void
classify64_avx2(const uint8_t *v, size_t len, size_t p, const uint8_t *b, struct m64 *m,
		uint64_t *cand, uint64_t *ceq)
{
	const __m256i cA = _mm256_set1_epi8('A'), c25 = _mm256_set1_epi8(25),
		      c1 = _mm256_set1_epi8('1'), c8 = _mm256_set1_epi8(8);
	uint64_t cc = 0, ee = 0;
	/* a last block of at most 32 bytes is a zero-filled copy: its second
	 * half (zeros) has no class or anchor bits */
	int halves = len - p <= 32 ? 1 : 2;

	(void)v;
	*m = (struct m64){0, 0, 0, 0};
	for (int k = 0; k < halves; k++) {
		__m256i x = _mm256_loadu_si256((const __m256i *)(b + 32 * k));
		__m256i nx = _mm256_loadu_si256((const __m256i *)(b + 32 * k + 1));
		__m256i dash = classes32_avx2(x, k, m);
		__m256i t19 = _mm256_sub_epi8(nx, c1);
		__m256i n19 = _mm256_cmpeq_epi8(_mm256_min_epu8(t19, c8), t19);
		__m256i tn = _mm256_sub_epi8(nx, cA);
		__m256i nup = _mm256_cmpeq_epi8(_mm256_min_epu8(tn, c25), tn);
		__m256i c = _mm256_cmpeq_epi8(x, _mm256_set1_epi8('@'));
		__m256i e = _mm256_or_si256(_mm256_cmpeq_epi8(x, _mm256_set1_epi8(':')),
					    _mm256_cmpeq_epi8(x, _mm256_set1_epi8('=')));

		c = _mm256_or_si256(
			c, _mm256_and_si256(_mm256_cmpeq_epi8(x, _mm256_set1_epi8('+')), n19));
		c = _mm256_or_si256(
			c, _mm256_and_si256(_mm256_cmpeq_epi8(x, _mm256_set1_epi8('A')), nup));
		c = _mm256_or_si256(
			c, _mm256_and_si256(dash, _mm256_cmpeq_epi8(nx, _mm256_set1_epi8('-'))));
		c = _mm256_or_si256(c,
				    _mm256_and_si256(_mm256_cmpeq_epi8(x, _mm256_set1_epi8('y')),
						     _mm256_cmpeq_epi8(nx, _mm256_set1_epi8('J'))));
		cc |= (uint64_t)(uint32_t)_mm256_movemask_epi8(c) << (32 * k);
		ee |= (uint64_t)(uint32_t)_mm256_movemask_epi8(e) << (32 * k);
	}
	*cand = cc;
	*ceq = ee;
}

/* The same with SSE2 (cands64() checks the byte before ':' itself). */
static inline void
classify64_sse2(const uint8_t *v, size_t len, size_t p, const uint8_t *b, struct m64 *m,
		uint64_t *cand, uint64_t *ceq)
{
	masks64(b, m);
	*cand = cands64(v, len, p);
	*ceq = 0;
}

/*
 * tmp[0..n) = b[0..n), tmp[n..96) = 0, for n <= 64: the last block of a
 * value (and its next byte) without reading past it. Two overlapping loads
 * per size class instead of a memset and a variable-length memcpy, which
 * cost more than classifying a short value.
 */
static inline void
copy_tail(uint8_t *tmp, const uint8_t *b, size_t n)
{
	const __m128i z = _mm_setzero_si128();
	uint64_t x, y;
	uint32_t u, w;

	for (int k = 0; k < 6; k++)
		_mm_storeu_si128((__m128i *)(tmp + 16 * k), z);
	if (n >= 32) {
		__m128i a0 = _mm_loadu_si128((const __m128i *)b);
		__m128i a1 = _mm_loadu_si128((const __m128i *)(b + 16));
		__m128i e0 = _mm_loadu_si128((const __m128i *)(b + n - 32));
		__m128i e1 = _mm_loadu_si128((const __m128i *)(b + n - 16));

		_mm_storeu_si128((__m128i *)tmp, a0);
		_mm_storeu_si128((__m128i *)(tmp + 16), a1);
		_mm_storeu_si128((__m128i *)(tmp + n - 32), e0);
		_mm_storeu_si128((__m128i *)(tmp + n - 16), e1);
	} else if (n >= 16) {
		__m128i a0 = _mm_loadu_si128((const __m128i *)b);
		__m128i e0 = _mm_loadu_si128((const __m128i *)(b + n - 16));

		_mm_storeu_si128((__m128i *)tmp, a0);
		_mm_storeu_si128((__m128i *)(tmp + n - 16), e0);
	} else if (n >= 8) {
		memcpy(&x, b, 8);
		memcpy(&y, b + n - 8, 8);
		memcpy(tmp, &x, 8);
		memcpy(tmp + n - 8, &y, 8);
	} else if (n >= 4) {
		memcpy(&u, b, 4);
		memcpy(&w, b + n - 4, 4);
		memcpy(tmp, &u, 4);
		memcpy(tmp + n - 4, &w, 4);
	} else if (n > 0) {
		tmp[0] = b[0];
		tmp[n / 2] = b[n / 2];
		tmp[n - 1] = b[n - 1];
	}
}

typedef void (*classify_fn)(const uint8_t *, size_t, size_t, const uint8_t *, struct m64 *,
			    uint64_t *, uint64_t *);

/* The pass over v, instantiated for SSE2 and for AVX2. */
static inline __attribute__((always_inline)) int
classify(const uint8_t *v, size_t len, int mode, struct sl_mask_cls *c, classify_fn fn)
{
	struct m64 m, pm = {0, 0, 0, 0};
	uint8_t tmp[128];
	int need = mode == SL_MASK_CLS_ALWAYS ? 1 : 0;
	struct run_memo memo[2] = {{0, 0, 0}, {0, 0, 0}}; /* anchor_window's */

	c->nw = 0;
	c->nev = 0;
	c->ev_over = 0;
	c->nanc = mode == SL_MASK_CLS_ALWAYS ? -1 : 0;
	/* one block past the end: a number ending the value ends there */
	for (size_t p = 0; p <= len; p += 64) {
		const uint8_t *b = v + p;
		size_t n = len - p < 64 ? len - p : 64;
		uint64_t valid = n == 64 ? ~0ull : (1ull << n) - 1, cand = 0, ceq = 0;
		uint64_t cd = pm.d >> 60, cu = pm.u >> 60, ca = pm.a >> 60, gb, ne, q;

		if (n == 0) {
			m.d = m.u = m.a = m.s = 0;
		} else {
			if (len - p < 65) { /* b[64] is read: zeros past the end */
				copy_tail(tmp, b, n);
				b = tmp;
			}
			fn(v, len, p, b, &m, &cand, &ceq);
		}
		/* the digit scanner's tests (scan()): a group end where an SSN
		 * or a card number may end, an IBAN start's second check digit */
		gb = ~m.d & ((m.d << 1) | (cd >> 3));
		ne = gb != 0 ? number_ends(m.d, pm.d, m.s, pm.s, gb) : 0;
		q = m.d & ((m.d << 1) | (cd >> 3)) & ((m.u << 2) | (cu >> 2)) &
		    ((m.u << 3) | (cu >> 1)) & ~((m.a << 4) | ca) & valid;
		if ((ne | q) != 0) {
			need |= 2;
			/* what scan() would report for this block, replayed by
			 * sl_mask__scan_digits() in the same order */
			if ((ne & valid) | q) {
				if (c->nev < SL_MASK_MAX_EVENTS) {
					struct sl_mask_ds_event *ev = &c->ev[c->nev++];

					ev->p = p;
					ev->gb = ne & valid;
					ev->q = q;
					ev->d = m.d;
					ev->dprev = pm.d;
				} else {
					c->ev_over = 1;
				}
			}
		}
		if (mode != SL_MASK_CLS_ALWAYS &&
		    (mode == SL_MASK_CLS_WINDOWS || !(need & 1) || c->nanc >= 0)) {
			/* ':' and '=' only after a key's letter, a blank or a
			 * quote: not after a digit (times) */
			uint64_t x = (cand | (ceq & ~((m.d << 1) | (pm.d >> 63)))) & valid;

			for (; x; x &= x - 1) {
				size_t i = p + (size_t)__builtin_ctzll(x), s, t;

				if (!prefilter_at(v, len, i))
					continue;
				need |= 1;
				/* only '@' and '+' so far: sl_mask__scan_anchors()
				 * can stand in for hyperscan */
				if (c->nanc >= 0) {
					if ((v[i] == '@' || v[i] == '+') &&
					    c->nanc < SL_MASK_MAX_ANCHORS)
						c->anc[c->nanc++] = (uint32_t)i;
					else
						c->nanc = -1;
				}
				if (mode != SL_MASK_CLS_WINDOWS) {
					if (c->nanc < 0)
						break;
					continue;
				}
				if (c->nw < 0)
					continue;
				anchor_window(v, len, i, &s, &t, memo);
				if (add_window(c->w, &c->nw, SL_MASK_MAX_WINDOWS, s, t) != 0)
					c->nw = -1;
			}
		}
		pm = m;
	}
	return need;
}

__attribute__((target("avx2"))) static int
classify_avx2(const uint8_t *v, size_t len, int mode, struct sl_mask_cls *c)
{
	return classify(v, len, mode, c, classify64_avx2);
}

/* noinline: inlined into the dispatcher, its frame (and stack protector)
 * was set up on every call, AVX2 or not */
static __attribute__((noinline)) int
classify_sse2(const uint8_t *v, size_t len, int mode, struct sl_mask_cls *c)
{
	return classify(v, len, mode, c, classify64_sse2);
}

int
sl_mask__classify(const uint8_t *v, size_t len, int mode, struct sl_mask_cls *c)
{
	if (use_avx2())
		return classify_avx2(v, len, mode, c);
	return classify_sse2(v, len, mode, c);
}

/* ------------------------------------------------------------ '@' and '+' */

#define MAX_ANCHOR_REPORTS 64

/*
 * The end offsets hyperscan reports for the phone pattern
 * "\+[1-9][0-9]{6,14}(?:[^0-9]|$)" from the '+' at i: a match ends only
 * where the digit run after it does (its trailing context is a non-digit).
 * A '$' match just before a final "\n" is not produced: the resolvers drop
 * it anyway (eol_dup()).
 */
static int
phone_ends(const uint8_t *v, size_t len, size_t i, uint64_t *end, int n)
{
	size_t j = i + 1;

	while (j < len && DIG(v[j]) && j - i <= 16)
		j++;
	if (j - i - 1 < 7 || j - i - 1 > 15 || n == MAX_ANCHOR_REPORTS)
		return n < MAX_ANCHOR_REPORTS ? n : -1;
	end[n++] = j < len ? j + 1 : j;
	return n;
}

/*
 * The same for the email pattern "@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*
 * \.[A-Za-z]{2,24}(?:[^A-Za-z0-9]|$)" from the '@' at i: after one or more
 * non-empty labels of [A-Za-z0-9-], every position t where the label since
 * the last dot is 2-24 letters and v[t] is not alphanumeric (or t is the
 * end). The domain holds no '@', so no two '@' report the same end.
 */
static int
email_ends(const uint8_t *v, size_t len, size_t i, uint64_t *end, int n)
{
	size_t t = i + 1, lab = 0;
	int dot = 0, letters = 1;

	for (;; t++) {
		int c = t < len ? v[t] : -1;

		if (dot && letters && lab >= 2 && lab <= 24 && !ALNUM(c)) {
			if (n == MAX_ANCHOR_REPORTS)
				return -1;
			end[n++] = t < len ? t + 1 : t;
		}
		if (c == '.' && lab > 0) {
			dot = 1;
			lab = 0;
			letters = 1;
		} else if (ALNUM(c) || c == '-') {
			lab++;
			letters &= ALPHA(c);
		} else {
			return n;
		}
	}
}

int
sl_mask__scan_anchors(struct eng *e, const uint8_t *v, size_t len, const struct sl_mask_cls *c)
{
	uint64_t end[MAX_ANCHOR_REPORTS];
	uint8_t kind[MAX_ANCHOR_REPORTS];
	uint32_t en = e->p->enabled;
	int n = 0;

	/* Anchors come in position order, and so do their ends, as hyperscan
	 * reports them: a match from one anchor spans only digits (phone) or
	 * domain bytes (email), ending at most one byte past the next anchor,
	 * whose own matches end at least 5 bytes later. */
	for (int k = 0; k < c->nanc && n >= 0; k++) {
		size_t i = c->anc[k];
		int m = n;

		if (v[i] == '@')
			n = en & (1u << SL_DET_EMAIL) ? email_ends(v, len, i, end, n) : n;
		else
			n = en & (1u << SL_DET_PHONE) ? phone_ends(v, len, i, end, n) : n;
		for (int r = m; r < n; r++)
			kind[r] = v[i] == '@' ? K_EMAIL : K_PHONE;
	}
	if (n < 0)
		return -1;
	for (int r = 0; r < n; r++)
		sl_mask__report(e, kind[r], kind[r] == K_EMAIL ? SL_DET_EMAIL : SL_DET_PHONE, 0,
				end[r]);
	return 0;
}
