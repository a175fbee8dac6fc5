/*
 * detect.c - the built-in detector patterns and the resolver that turns a
 * hyperscan report (pattern id, end offset) into masked spans: boundaries,
 * checksums (Luhn, IBAN mod-97), SSN ranges, start offsets. Shared by the
 * block path and the streaming path, so both decide exactly alike.
 *
 * Patterns report end offsets only (no start-of-match tracking: it made the
 * scan several times slower and enlarges stream state). Most carry one byte
 * of trailing context, "(?:[^0-9]|$)", so a long digit run is reported once
 * at its end rather than at every digit; the resolver finds the start by a
 * bounded walk back over the token. Pure: no clocks, sockets or logging.
 */
#include "mask_internal.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

/* Plain comparisons: these run on every candidate byte. c may be -1. */
#define DIG(c)	 ((unsigned)((c) - '0') < 10u)
#define UP(c)	 ((unsigned)((c) - 'A') < 26u)
#define LOW(c)	 ((unsigned)((c) - 'a') < 26u)
#define ALPHA(c) (UP(c) || LOW(c))
#define ALNUM(c) (DIG(c) || ALPHA(c))
#define B64U(c)	 (ALNUM(c) || (c) == '_' || (c) == '-')

/* clang-format off */
const struct builtin_pat sl_mask__builtin[] = {
	/* ssn, credit_card and iban have no literal a regex engine could
	 * anchor on: in hyperscan each ran at ~0.6 GB/s on result data, so
	 * their reports come from the bitmask scanner in digits.c instead */
	{SL_DET_SSN, K_SSN, 0, NULL, 11},
	{SL_DET_CARD, K_CARD, 0, NULL, 13},
	{SL_DET_IBAN, K_IBAN, 0, NULL, 15},
	{SL_DET_PHONE, K_PHONE, 0, "\\+[1-9][0-9]{6,14}(?:[^0-9]|$)", 8},
	{SL_DET_AWS, K_AWS, 0,
	 "(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ABIA|ACCA|AIPA)[A-Z0-9]{16}(?:[^A-Za-z0-9]|$)", 20},
	{SL_DET_EMAIL, K_EMAIL, 0,
	 "@[A-Za-z0-9\\-]+(?:\\.[A-Za-z0-9\\-]+)*\\.[A-Za-z]{2,24}(?:[^A-Za-z0-9]|$)", 6},
	{SL_DET_JWT, K_JWT, 0,
	 "eyJ[A-Za-z0-9_\\-]{4,}\\.eyJ[A-Za-z0-9_\\-]{4,}\\.[A-Za-z0-9_\\-]{8,}"
	 "(?:[^A-Za-z0-9_\\-]|$)", 25},
	{SL_DET_PEM, K_PEM, 0, "-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----", 27},
	{SL_DET_PEM, K_PEM_END, 0, "-----END [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----", 25},
	{SL_DET_SECRET, K_SECRET, HS_FLAG_CASELESS,
	 "(?:pass(?:word|wd|phrase)?|pwd|secret(?:[_\\-]?key)?|api[_\\-]?key|access[_\\-]?key|"
	 "private[_\\-]?key|token|credentials?)[\"']?[ \\t]*[:=][ \\t]*[\"']?[^\\s\"',;&]{3}", 7},
	{SL_DET_SECRET, K_BEARER, HS_FLAG_CASELESS,
	 "authorization[\"']?[ \\t]*[:=][ \\t]*[\"']?(?:bearer|basic|token|digest)[ \\t]+"
	 "[A-Za-z0-9._~+/=\\-]{8}", 30},
};
/* clang-format on */
const unsigned sl_mask__nbuiltin = sizeof(sl_mask__builtin) / sizeof(sl_mask__builtin[0]);

/* ------------------------------------------------------------ view access */

#define NONE (-1) /* before the view's start or at eof: a boundary */
#define MORE (-2) /* past what has arrived: ask again later */

static inline int
at(const struct eng *e, int64_t o)
{
	if (o < (int64_t)e->lo)
		return NONE;
	if ((uint64_t)o >= e->hi)
		return e->eof ? NONE : MORE;
	return e->buf[(uint64_t)o - e->lo];
}

/* The end of the token a pattern with trailing context reported: the
 * context byte is not part of it (a '$' match has none). */
static uint64_t
tok_end(const struct eng *e, uint64_t end, int (*in_tok)(int))
{
	return in_tok(at(e, (int64_t)end - 1)) ? end : end - 1;
}

/* hyperscan's '$' also matches just before a "\n" that ends the scanned
 * bytes (a value, a regex window, a stream's last byte). A report without
 * its trailing context byte and followed by "\n" is therefore the same
 * token the "\n" (which every trailing-context class accepts) reports at
 * end + 1: dropped, so a hit counts once wherever a scan ends. */
static int
eol_dup(const struct eng *e, uint64_t end, int (*in_tok)(int))
{
	return at(e, (int64_t)end) == '\n' && in_tok(at(e, (int64_t)end - 1));
}

static int
is_dig(int c)
{
	return DIG(c);
}

static int
is_alnum(int c)
{
	return ALNUM(c);
}

static int
is_b64u(int c)
{
	return B64U(c);
}

static inline int
is_local(int c)
{
	return ALNUM(c) || c == '.' || c == '_' || c == '%' || c == '+' || c == '-' || c == '\'';
}

static int
is_secret_val(int c, int bearer)
{
	if (c < 0)
		return 0;
	if (bearer)
		return ALNUM(c) || c == '.' || c == '_' || c == '~' || c == '+' || c == '/' ||
		       c == '=' || c == '-';
	return !(c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r' ||
		 c == '"' || c == '\'' || c == ',' || c == ';' || c == '&');
}

/* ------------------------------------------------------------ checks */

int
sl_mask__luhn(const uint8_t *s, size_t n)
{
	static const uint8_t twice[10] = {0, 2, 4, 6, 8, 1, 3, 5, 7, 9};
	unsigned sum = 0, dbl = 0, digits = 0;

	for (size_t i = n; i-- > 0;) {
		unsigned d = (unsigned)s[i] - '0';

		if (d > 9) {
			if (s[i] == ' ' || s[i] == '-')
				continue;
			return 0;
		}
		sum += dbl ? twice[d] : d;
		dbl ^= 1;
		digits++;
	}
	return digits >= 13 && digits <= 19 && sum % 10 == 0;
}

int
sl_mask_luhn(const char *s, size_t n)
{
	return sl_mask__luhn((const uint8_t *)s, n);
}

int
sl_mask_iban_ok(const char *s, size_t n)
{
	char buf[40];
	size_t m = 0;
	uint64_t acc = 0;

	for (size_t i = 0; i < n; i++) {
		if (s[i] == ' ')
			continue;
		if (m >= sizeof(buf))
			return 0;
		buf[m++] = s[i];
	}
	if (m < 15 || m > 34 || !UP(buf[0]) || !UP(buf[1]) || !DIG(buf[2]) || !DIG(buf[3]))
		return 0;
	/* Move the first four characters to the end, letters to 10..35;
	 * reduce mod 97 only when the accumulator grows large. */
	for (size_t k = 0; k < m; k++) {
		char c = buf[k + 4 < m ? k + 4 : k + 4 - m];

		if (DIG(c))
			acc = acc * 10 + (uint64_t)(c - '0');
		else if (UP(c))
			acc = acc * 100 + (uint64_t)(c - 'A' + 10);
		else
			return 0;
		if (acc >= 1000000000000000ull)
			acc %= 97;
	}
	return acc % 97 == 1;
}

/* ------------------------------------------------------------ spans */

void
sl_mask__push(struct eng *e, const struct span *s)
{
	if (e->nsp == e->spcap && e->growable && e->spcap < e->spmax) {
		size_t nc = e->spcap ? e->spcap * 2 : 64;
		struct span *n;

		if (nc > e->spmax)
			nc = e->spmax;
		n = realloc(e->sp, nc * sizeof(*n));
		if (n != NULL) {
			e->sp = n;
			e->spcap = nc;
		}
	}
	if (e->nsp < e->spcap) {
		e->sp[e->nsp++] = *s;
		if (s->style == SL_MASK_HASH)
			e->nhash++;
		return;
	}
	if (e->nsp == 0) {
		e->lost = 1; /* no room at all (allocation failed): caller fails closed */
		return;
	}
	/* Out of room: widen the last span over this one and everything in
	 * between, fully starred (fail closed: mask more, never less). */
	{
		struct span *l = &e->sp[e->nsp - 1];

		if (s->from < l->from)
			l->from = s->from;
		if (s->to > l->to)
			l->to = s->to;
		l->mfrom = l->from;
		l->mto = l->to;
		l->filt = F_NOWS;
		if (l->style == SL_MASK_HASH)
			e->nhash--;
		l->style = SL_MASK_FULL;
	}
}

/* Records a hit of detector det over [from, to); [mfrom, mto) and filt
 * describe the partial style. */
static void
hit(struct eng *e, unsigned det, uint64_t from, uint64_t to, uint64_t mfrom, uint64_t mto,
    unsigned filt)
{
	struct span s;
	enum sl_mask_style style = e->p->det_style[det];

	if (to <= from)
		return;
	/* one email reported at each domain label (a@b.example.org): one
	 * hit, the longest span (partial style masks the local part only) */
	for (size_t i = e->nsp, k = 0; det == SL_DET_EMAIL && i-- > 0 && k < 4; k++) {
		struct span *o = &e->sp[i];

		if (o->det == det && o->from == from) {
			if (to > o->to) {
				if (o->mto == o->to)
					o->mto = to;
				o->to = to;
			}
			return;
		}
	}
	if (e->st != NULL)
		e->st->hits[det]++;
	s.from = from;
	s.to = to;
	s.det = (uint8_t)det;
	s.filt = (uint8_t)filt;
	if (style == SL_MASK_NULL) {
		if (!e->streaming)
			e->need_null = 1;
		style = SL_MASK_FULL; /* streams cannot carry NULL */
	}
	if (style == SL_MASK_PARTIAL) {
		s.mfrom = mfrom;
		s.mto = mto;
	} else {
		s.mfrom = from;
		s.mto = to;
		if (filt != F_NOWS)
			s.filt = F_ALL;
	}
	s.style = (uint8_t)style;
	sl_mask__push(e, &s);
}

/* Partial style for digit detectors: star digits up to the last four. */
static void
hit_digits(struct eng *e, unsigned det, uint64_t from, uint64_t to)
{
	uint64_t k = to;
	int seen = 0;

	while (k > from && seen < 4) {
		k--;
		if (DIG(at(e, (int64_t)k)))
			seen++;
	}
	hit(e, det, from, to, from, k, F_DIGITS);
}

/* Open-ended region detectors (values with no length bound) are never
 * hashed: a token needs the whole value, and a stream cannot wait for it. */
static struct span
region(struct eng *e, unsigned det, uint64_t from, unsigned filt)
{
	struct span s = {from, from, from, from, (uint8_t)det, SL_MASK_FULL, (uint8_t)filt};

	if (e->p->det_style[det] == SL_MASK_NULL && !e->streaming)
		e->need_null = 1;
	if (e->st != NULL)
		e->st->hits[det]++;
	return s;
}

static void
close_region(struct eng *e, struct span *r, uint64_t to)
{
	if (to <= r->from)
		return;
	r->to = r->mto = to;
	sl_mask__push(e, r);
}

/* ------------------------------------------------------------ resolvers */

/* Each returns 1 when it needs bytes that have not arrived yet. */

static int
r_ssn(struct eng *e, uint64_t end)
{
	uint64_t t = tok_end(e, end, is_dig), s = t - 11;
	const int64_t S = (int64_t)s;
	int sep = at(e, S + 3), c, area, grp;

	if ((sep != '-' && sep != ' ') || at(e, S + 6) != sep)
		return 0;
	for (int k = 0; k < 11; k++)
		if (k != 3 && k != 6 && !DIG(at(e, S + k)))
			return 0;
	c = at(e, S - 1);
	if (ALNUM(c) || (c == sep && DIG(at(e, S - 2))))
		return 0; /* inside a longer number or identifier */
	c = at(e, (int64_t)t);
	if (c == MORE)
		return 1;
	if (ALNUM(c))
		return 0;
	if (c == sep) {
		int c2 = at(e, (int64_t)t + 1);

		if (c2 == MORE)
			return 1;
		if (DIG(c2))
			return 0; /* 123-45-6789-1 */
	}
	area = (at(e, S) - '0') * 100 + (at(e, S + 1) - '0') * 10 + (at(e, S + 2) - '0');
	grp = (at(e, S + 4) - '0') * 10 + (at(e, S + 5) - '0');
	if (area == 0 || area == 666 || area >= 900 || grp == 0 ||
	    (at(e, S + 7) == '0' && at(e, S + 8) == '0' && at(e, S + 9) == '0' &&
	     at(e, S + 10) == '0'))
		return 0;
	hit_digits(e, SL_DET_SSN, s, t);
	return 0;
}

static int
luhn_at(const struct eng *e, uint64_t from, uint64_t to)
{
	uint8_t b[40];
	size_t n = (size_t)(to - from);

	if (n > sizeof(b))
		return 0;
	if (from >= e->lo && to <= e->hi)
		return sl_mask__luhn(e->buf + (from - e->lo), n);
	for (size_t i = 0; i < n; i++)
		b[i] = (uint8_t)at(e, (int64_t)(from + i));
	return sl_mask__luhn(b, n);
}

static int
r_card(struct eng *e, uint64_t end)
{
	uint64_t t = tok_end(e, end, is_dig), n = 0;

	while (n < 20 && DIG(at(e, (int64_t)(t - n) - 1)))
		n++;
	if (n < 13 || n > 19 || ALPHA(at(e, (int64_t)(t - n) - 1)) || ALPHA(at(e, (int64_t)t)))
		return 0;
	if (luhn_at(e, t - n, t))
		hit_digits(e, SL_DET_CARD, t - n, t);
	return 0;
}

/* Grouped card numbers: the window is whole groups, one separator kind,
 * first group 4 digits, middle groups 4-6, last 1-6, 13-19 digits. A card
 * inside a longer grouped token (followed by a CVV, say) is still found. */
static int
r_card_sep(struct eng *e, uint64_t end)
{
	uint64_t t = tok_end(e, end, is_dig), gs[6], ge[6], pos = t, digits;
	int sep = 0, ng = 0;

	if (ALPHA(at(e, (int64_t)t)))
		return 0;
	while (ng < 6) {
		uint64_t st = pos;
		int c;

		while (pos > 0 && st - pos < 7 && DIG(at(e, (int64_t)pos - 1)))
			pos--;
		gs[ng] = pos;
		ge[ng] = st;
		ng++;
		c = at(e, (int64_t)pos - 1);
		if ((c == ' ' || c == '-') && (sep == 0 || c == sep) &&
		    DIG(at(e, (int64_t)pos - 2))) {
			sep = c;
			pos--;
			continue;
		}
		break;
	}
	digits = ge[0] - gs[0];
	if (digits > 6)
		return 0;
	for (int i = 1; i < ng; i++) {
		uint64_t len = ge[i] - gs[i];

		digits += len;
		if (digits > 19)
			break;
		if (digits >= 13 && len == 4 && !ALPHA(at(e, (int64_t)gs[i] - 1)) &&
		    luhn_at(e, gs[i], t))
			hit_digits(e, SL_DET_CARD, gs[i], t);
		if (len < 4 || len > 6)
			break; /* cannot be a middle group of a longer window */
	}
	return 0;
}

static int
r_phone(struct eng *e, uint64_t end)
{
	uint64_t t = tok_end(e, end, is_dig), s = t;

	if (eol_dup(e, end, is_dig))
		return 0;

	while (s > 0 && t - s <= 15 && DIG(at(e, (int64_t)s - 1)))
		s--;
	if (at(e, (int64_t)s - 1) != '+' || t - s < 7 || t - s > 15)
		return 0;
	s--;
	if (ALNUM(at(e, (int64_t)s - 1)) || ALPHA(at(e, (int64_t)t)))
		return 0;
	hit_digits(e, SL_DET_PHONE, s, t);
	return 0;
}

/* One more IBAN character into a mod-97 remainder (ISO 13616: digits as
 * themselves, capitals as 10..35); -1 stays -1, and so does anything else
 * (sl_mask_iban_ok() rejects it). */
static inline int
iban_mod(int r, int c)
{
	if (r < 0)
		return -1;
	if (DIG(c))
		return (r * 10 + (c - '0')) % 97;
	if (UP(c))
		return (r * 100 + (c - 'A' + 10)) % 97;
	return -1;
}

/* Whether an IBAN of m characters whose BBAN (everything after the first
 * four) leaves remainder r is valid: the first four are moved to the end.
 * Exactly sl_mask_iban_ok() on the same characters. */
static int
iban_valid(int r, const int head[4], int64_t m)
{
	if (m < 15 || m > 34)
		return 0;
	for (int k = 0; k < 4; k++)
		r = iban_mod(r, head[k]);
	return r == 1;
}

static void
hit_iban(struct eng *e, uint64_t s, uint64_t t)
{
	uint64_t k = t;
	int seen = 0;

	while (k > s + 2 && seen < 4) {
		k--;
		if (ALNUM(at(e, (int64_t)k)))
			seen++;
	}
	hit(e, SL_DET_IBAN, s, t, s + 2, k, F_ALNUM);
}

/* From a possible start s (two capitals, two digits): the compact form
 * (the whole alphanumeric run, 15-34 characters) or the printed one
 * (groups of four after single spaces, the last 1-4, 15-34 characters);
 * every window that passes mod-97 is a hit. Needs 43 bytes after s. */
static int
r_iban(struct eng *e, uint64_t s)
{
	const int64_t S = (int64_t)s;
	int64_t t = S + 4, pos;
	int groups = 1, head[4], r = 0;

	if (s + 43 > e->hi && !e->eof)
		return 1;
	for (int k = 0; k < 4; k++)
		head[k] = at(e, S + k);
	if (ALNUM(at(e, S - 1)) || !UP(head[0]) || !UP(head[1]) || !DIG(head[2]) || !DIG(head[3]))
		return 0;
	/* the check digits are one remainder over the BBAN, kept as each
	 * window grows (each used to be checked from scratch) */
	while (t - S <= 34 && ALNUM(at(e, t)))
		r = iban_mod(r, at(e, t++));
	if (iban_valid(r, head, t - S))
		hit_iban(e, s, (uint64_t)t);
	if (t - S != 4)
		return 0;
	for (pos = t; groups < 9 && at(e, pos) == ' ' && ALNUM(at(e, pos + 1)); groups++) {
		int64_t g = pos + 1, l = 0;

		while (l < 5 && ALNUM(at(e, g + l)))
			l++;
		if (l > 4)
			break;
		for (int64_t k = 0; k < l; k++)
			r = iban_mod(r, at(e, g + k));
		if (groups * 4 + l >= 15 && iban_valid(r, head, groups * 4 + l))
			hit_iban(e, s, (uint64_t)(g + l));
		if (l < 4 || r < 0)
			break;
		pos = g + 4;
	}
	return 0;
}

static int
r_aws(struct eng *e, uint64_t end)
{
	uint64_t t = tok_end(e, end, is_alnum), s = t - 20;

	if (eol_dup(e, end, is_alnum))
		return 0;

	if (ALNUM(at(e, (int64_t)s - 1)))
		return 0;
	hit(e, SL_DET_AWS, s, t, s + 4, t, F_ALL);
	return 0;
}

static int
r_email(struct eng *e, uint64_t end)
{
	uint64_t t = tok_end(e, end, is_alnum), a = t, s;
	int c;

	if (eol_dup(e, end, is_alnum))
		return 0;

	while ((c = at(e, (int64_t)a - 1)) != '@') {
		if (!(ALNUM(c) || c == '.' || c == '-') || t - a > EMAIL_DOMAIN_MAX)
			return 0;
		a--;
	}
	a--; /* at '@' */
	s = a;
	while (a - s < EMAIL_LOCAL_MAX && is_local(at(e, (int64_t)s - 1)))
		s--;
	while (s < a && (at(e, (int64_t)s) == '.' || at(e, (int64_t)s) == '\''))
		s++;
	if (s == a)
		return 0;
	hit(e, SL_DET_EMAIL, s, t, a - s > 1 ? s + 1 : s, a, F_ALL);
	return 0;
}

static int
r_jwt(struct eng *e, uint64_t end)
{
	uint64_t t = tok_end(e, end, is_b64u), p = t, h, s;

	if (eol_dup(e, end, is_b64u))
		return 0;

	for (int seg = 0; seg < 2; seg++) {
		while (B64U(at(e, (int64_t)p - 1)))
			p--;
		if (at(e, (int64_t)p - 1) != '.')
			return 0;
		p--;
	}
	/* header segment [h, p): the token starts at its first "eyJ" that
	 * leaves at least 4 more characters (the pattern's shape) */
	h = p;
	while (B64U(at(e, (int64_t)h - 1)))
		h--;
	for (s = h; s + 7 <= p; s++)
		if (at(e, (int64_t)s) == 'e' && at(e, (int64_t)s + 1) == 'y' &&
		    at(e, (int64_t)s + 2) == 'J')
			break;
	if (s + 7 > p)
		return 0;
	hit(e, SL_DET_JWT, s, t, s, t, F_ALL);
	return 0;
}

static void
pem_close(struct eng *e, uint64_t end)
{
	uint64_t cap = e->pem.from + SL_MASK_PEM_MAX;

	close_region(e, &e->pem, end < cap ? end : cap);
	e->pem_open = 0;
}

static int
r_pem(struct eng *e, uint64_t end)
{
	static const char beg[] = "-----BEGIN ";
	int64_t s = (int64_t)end - 27;

	if (e->pem_open && end >= e->pem.from + SL_MASK_PEM_MAX + 27)
		pem_close(e, end); /* capped before this marker: closes at the cap */
	if (e->pem_open)
		return 0;
	for (; s >= (int64_t)end - 80 && s >= 0; s--) {
		int k = 0;

		while (k < 11 && at(e, s + k) == beg[k])
			k++;
		if (k == 11)
			break;
	}
	if (s < 0 || s < (int64_t)end - 80)
		return 0;
	e->pem = region(e, SL_DET_PEM, (uint64_t)s, F_NOWS);
	e->pem_open = 1;
	return 0;
}

/* Masks the secret value while it lasts. */
static void
sec_advance(struct eng *e)
{
	int bearer = e->sec_kind == K_BEARER;
	uint64_t k = e->sec_cur;

	while (k < e->hi && is_secret_val(e->buf[k - e->lo], bearer))
		k++;
	e->sec_cur = k;
	if (k < e->hi || e->eof) {
		close_region(e, &e->sec, k);
		e->sec_open = 0;
		e->sec_last = 1;
		e->sec_last_from = e->sec_start;
		e->sec_last_end = k;
		e->sec_last_kind = e->sec_kind;
	}
}

static int
r_secret(struct eng *e, uint64_t end, unsigned kind)
{
	uint64_t v = end - (kind == K_BEARER ? 8 : 3);

	if (e->sec_open) {
		/* settle the open value first (a stream may not have looked at
		 * this chunk's bytes yet): if it ends before v, v starts anew */
		sec_advance(e);
		if (e->sec_open) {
			/* v lies inside the open value, which goes on at least as
			 * far as v's would, unless v's may hold more characters:
			 * then the open one does too (Bearer's class is a subset of
			 * the generic one). Block mode saw both: count both. */
			if (kind == K_SECRET)
				e->sec_kind = K_SECRET;
			if (e->st != NULL)
				e->st->hits[SL_DET_SECRET]++;
			return 0;
		}
	}
	if (e->sec_last && v >= e->sec_last_from && v < e->sec_last_end &&
	    (kind == K_BEARER || e->sec_last_kind == K_SECRET)) {
		/* inside a value already masked to its end (the same class
		 * or a wider one): the same end again */
		if (e->st != NULL)
			e->st->hits[SL_DET_SECRET]++;
		return 0;
	}
	e->sec = region(e, SL_DET_SECRET, v, F_ALL);
	e->sec_open = 1;
	e->sec_kind = (uint8_t)kind;
	e->sec_start = v;
	e->sec_cur = v;
	sec_advance(e);
	return 0;
}

static int
resolve(struct eng *e, unsigned kind, unsigned det, uint64_t from, uint64_t end)
{
	switch (kind) {
	case K_SSN:
		return r_ssn(e, end);
	case K_CARD:
		return r_card(e, end);
	case K_CARD_SEP:
		return r_card_sep(e, end);
	case K_PHONE:
		return r_phone(e, end);
	case K_IBAN:
		return r_iban(e, from);
	case K_AWS:
		return r_aws(e, end);
	case K_EMAIL:
		return r_email(e, end);
	case K_JWT:
		return r_jwt(e, end);
	case K_PEM:
		return r_pem(e, end);
	case K_PEM_END:
		if (e->pem_open && end > e->pem.from + 27)
			pem_close(e, end);
		return 0;
	case K_SECRET:
	case K_BEARER:
		return r_secret(e, end, kind);
	case K_CUSTOM:
		hit(e, det, from, end, from, end, F_ALL);
		return 0;
	}
	return 0;
}

void
sl_mask__report(struct eng *e, unsigned kind, unsigned det, uint64_t from, uint64_t end)
{
	if (resolve(e, kind, det, from, end) == 0)
		return;
	if (e->npend == MAX_PEND) {
		/* Cannot wait for more: decide as if the data ended here. */
		int eof = e->eof;

		e->eof = 1;
		resolve(e, kind, det, from, end);
		e->eof = eof;
		return;
	}
	e->pend[e->npend].end = end;
	e->pend[e->npend].from = from;
	e->pend[e->npend].kind = (uint8_t)kind;
	e->pend[e->npend].det = (uint8_t)det;
	e->npend++;
}

int
sl_mask__on_match(unsigned id, unsigned long long from, unsigned long long to, unsigned flags,
		  void *ctx)
{
	struct eng *e = ctx;
	const struct mpat *mp = &e->p->db->pats[id];

	if (e->p->enabled & (1u << mp->det))
		sl_mask__report(e, mp->kind, mp->det, from, to);
	return 0;
}

void
sl_mask__after_scan(struct eng *e)
{
	size_t w = 0;

	sl_mask__scan_digits(e);
	for (size_t i = 0; i < e->npend; i++)
		if (resolve(e, e->pend[i].kind, e->pend[i].det, e->pend[i].from, e->pend[i].end) !=
		    0)
			e->pend[w++] = e->pend[i];
	e->npend = w;
	if (e->sec_open)
		sec_advance(e);
	if (e->pem_open && e->hi >= e->pem.from + SL_MASK_PEM_MAX)
		pem_close(e, e->hi);
}

void
sl_mask__finish(struct eng *e)
{
	e->eof = 1;
	sl_mask__after_scan(e);
	if (e->pem_open)
		pem_close(e, e->hi);
	if (e->sec_open)
		sec_advance(e);
}

void
sl_mask__apply(const struct span *s, uint8_t *out, uint64_t lo, uint64_t hi)
{
	uint64_t a = s->mfrom > lo ? s->mfrom : lo, b = s->mto < hi ? s->mto : hi;

	if (s->style == SL_MASK_HASH || a >= b)
		return;
	if (s->filt == F_ALL) {
		memset(out + (a - lo), '*', (size_t)(b - a));
		return;
	}
	for (uint64_t k = a; k < b; k++) {
		uint8_t *c = &out[k - lo];

		switch (s->filt) {
		case F_DIGITS:
			if (DIG(*c))
				*c = '*';
			break;
		case F_ALNUM:
			if (ALNUM(*c))
				*c = '*';
			break;
		case F_NOWS:
			if (*c != '\n' && *c != '\r' && *c != '\t')
				*c = '*';
			break;
		default:
			*c = '*';
		}
	}
}

int
sl_mask__token(const struct sl_mask_plan *p, const uint8_t *v, size_t n, char out[24])
{
	uint8_t mac[EVP_MAX_MD_SIZE];
	unsigned int ml = sizeof(mac);

	if (HMAC(EVP_sha256(), p->key, (int)p->keylen, v, n, mac, &ml) == NULL)
		return SL_EIO;
	memcpy(out, "h:", 2);
	sl_hex(mac, 8, out + 2);
	return 0;
}
