/*
 * stream.c - masking byte streams in hyperscan streaming mode.
 *
 * Bytes are appended to a hold buffer and scanned; reports are resolved
 * exactly as in block mode (detect.c) against the hold. A byte is emitted
 * once no match still in progress can include it: for every enabled
 * detector a small tracker knows where the trailing run of bytes that could
 * belong to such a match starts (digits and separators for numbers, word
 * characters for an email local part, ...), limited to the detector's
 * longest match. Everything before the earliest such start (and before
 * pending candidates and unfinished hash hits) is final: spans are applied
 * to a copy and it is emitted. The hold keeps HIST raw bytes before the
 * emit point for boundary checks.
 */
#include "sluice/mask.h"

#include <stdlib.h>
#include <string.h>

#include "mask_internal.h"

#define PIECE	 4096 /* bytes scanned per step */
#define HOLD_CAP (HIST + SL_MASK_HOLD_MAX + PIECE)
#define MAX_SP	 1024

/* Trackers: byte classes a match in progress consists of. */
enum cls { C_NUM, C_PHONE, C_IBAN, C_AWS, C_PEM, C_SEC, C_EMAIL, C_JWT, NCLS };

/* Longest tail (bytes) a bounded class can have in progress: the longest
 * hit plus trailing context and lookahead. */
static const uint32_t maxrisk[NCLS] = {
	[C_NUM] = 28,	/* 19 digits, 4 separators, context, SSN lookahead */
	[C_PHONE] = 18, /* '+', 15 digits, context */
	[C_IBAN] = 44,	/* 34 characters, 8 spaces, context */
	[C_AWS] = 22,	/* 20 characters, context */
	[C_PEM] = 80,	/* BEGIN marker */
	[C_SEC] = 7,	/* value characters before a report (3, or 8 after Bearer) */
};

struct sl_mask_stream {
	const struct sl_mask_plan *p;
	struct sl_mask_scratch *s;
	sl_mask_emit_fn emit;
	void *arg;
	hs_stream_t *hs;
	uint8_t *hold; /* hold[0] is stream offset base */
	uint8_t *obuf;
	uint64_t base, emitted, total;
	struct eng e;
	uint8_t cls[256]; /* class bits per byte */
	uint32_t want;	  /* enabled classes */
	uint64_t run[NCLS];
	uint64_t email_at, jwt_eyj, jwt_scan;
	int has_at, has_eyj;
	int done, failed;
	struct sl_mask_stats st;
	struct span sp[MAX_SP];
};

#define DIG(c)	 ((unsigned)((c) - '0') < 10u)
#define UP(c)	 ((unsigned)((c) - 'A') < 26u)
#define LOW(c)	 ((unsigned)((c) - 'a') < 26u)
#define ALNUM(c) (DIG(c) || UP(c) || LOW(c))

static void
init_classes(struct sl_mask_stream *ms)
{
	uint32_t en = ms->p->enabled;

	for (int c = 0; c < 256; c++) {
		uint8_t m = 0;

		if (DIG(c) || c == ' ' || c == '-')
			m |= 1u << C_NUM;
		if (DIG(c) || c == '+')
			m |= 1u << C_PHONE;
		if (UP(c) || DIG(c) || c == ' ')
			m |= 1u << C_IBAN;
		if (UP(c) || DIG(c))
			m |= 1u << C_AWS;
		if (UP(c) || DIG(c) || c == ' ' || c == '-')
			m |= 1u << C_PEM;
		if (!(c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r' ||
		      c == '"' || c == '\'' || c == ',' || c == ';' || c == '&'))
			m |= 1u << C_SEC;
		if (ALNUM(c) || (c && strchr("._%+-'@", c) != NULL))
			m |= 1u << C_EMAIL;
		if (ALNUM(c) || c == '_' || c == '-' || c == '.')
			m |= 1u << C_JWT;
		ms->cls[c] = m;
	}
	if (en & ((1u << SL_DET_SSN) | (1u << SL_DET_CARD)))
		ms->want |= 1u << C_NUM;
	if (en & (1u << SL_DET_PHONE))
		ms->want |= 1u << C_PHONE;
	if (en & (1u << SL_DET_IBAN))
		ms->want |= 1u << C_IBAN;
	if (en & (1u << SL_DET_AWS))
		ms->want |= 1u << C_AWS;
	if (en & (1u << SL_DET_PEM))
		ms->want |= 1u << C_PEM;
	if (en & (1u << SL_DET_SECRET))
		ms->want |= 1u << C_SEC;
	if (en & (1u << SL_DET_EMAIL))
		ms->want |= 1u << C_EMAIL;
	if (en & (1u << SL_DET_JWT))
		ms->want |= 1u << C_JWT;
}

static inline const uint8_t *
H(const struct sl_mask_stream *ms, uint64_t off)
{
	return ms->hold + (off - ms->base);
}

static int
start_ok(int c, uint8_t b)
{
	switch (c) {
	case C_NUM:
		return DIG(b);
	case C_PHONE:
		return b == '+';
	case C_IBAN:
		return UP(b);
	case C_AWS:
		return b == 'A';
	case C_PEM:
		return b == '-';
	default:
		return 1;
	}
}

/* Updates the trackers for the new bytes [a, total). */
static void
track(struct sl_mask_stream *ms, uint64_t a)
{
	uint32_t alive = ms->want;
	uint64_t p;

	for (p = ms->total; p > a && alive; p--) {
		uint32_t m = ms->cls[*H(ms, p - 1)], dead = alive & ~m;

		while (dead) {
			int c = __builtin_ctz(dead);

			ms->run[c] = p;
			dead &= dead - 1;
		}
		alive &= m;
	}
	if (ms->want & (1u << C_EMAIL)) {
		uint64_t lo = ms->run[C_EMAIL] > a ? ms->run[C_EMAIL] : a;
		const uint8_t *r;

		if (lo < ms->total &&
		    (r = memrchr(H(ms, lo), '@', (size_t)(ms->total - lo))) != NULL) {
			ms->email_at = lo + (uint64_t)(r - H(ms, lo));
			ms->has_at = 1;
		}
	}
	if (ms->want & (1u << C_JWT)) {
		uint64_t rs = ms->run[C_JWT], lo;

		if (ms->has_eyj && ms->jwt_eyj < rs)
			ms->has_eyj = 0;
		lo = ms->jwt_scan > rs ? ms->jwt_scan : rs;
		if (lo < ms->base)
			lo = ms->base;
		if (!ms->has_eyj && lo < ms->total) {
			const uint8_t *r = memmem(H(ms, lo), (size_t)(ms->total - lo), "eyJ", 3);

			if (r != NULL) {
				ms->jwt_eyj = lo + (uint64_t)(r - H(ms, lo));
				ms->has_eyj = 1;
			}
		}
		ms->jwt_scan = ms->total >= 2 ? ms->total - 2 : 0;
	}
}

static uint64_t
umax(uint64_t a, uint64_t b)
{
	return a > b ? a : b;
}

/* The earliest offset a match still in progress may start at. */
static uint64_t
risk_start(const struct sl_mask_stream *ms)
{
	uint64_t r = ms->total, t = ms->total;

	for (int c = 0; c <= C_SEC; c++) {
		uint64_t p;

		if (!(ms->want & (1u << c)))
			continue;
		p = umax(umax(ms->run[c], t > maxrisk[c] ? t - maxrisk[c] : 0), ms->emitted);
		for (; p < r; p++)
			if (start_ok(c, *H(ms, p)))
				break;
		if (p < r)
			r = p;
	}
	if (ms->want & (1u << C_EMAIL)) {
		uint64_t rs = ms->run[C_EMAIL], x;

		if (ms->has_at && ms->email_at >= rs)
			x = ms->email_at > EMAIL_LOCAL_MAX ? ms->email_at - EMAIL_LOCAL_MAX : 0;
		else
			x = t > EMAIL_LOCAL_MAX ? t - EMAIL_LOCAL_MAX : 0;
		x = umax(x, rs);
		if (x < r)
			r = x;
	}
	if (ms->want & (1u << C_JWT)) {
		uint64_t rs = ms->run[C_JWT], x;

		if (ms->has_eyj && ms->jwt_eyj >= rs) {
			x = ms->jwt_eyj;
		} else {
			x = umax(umax(rs, t >= 2 ? t - 2 : 0), ms->emitted);
			while (x < t && *H(ms, x) != 'e')
				x++;
		}
		if (x < r)
			r = x;
	}
	if (ms->p->db->custom_maxw) {
		uint64_t x = t + 1 > ms->p->db->custom_maxw ? t + 1 - ms->p->db->custom_maxw : 0;

		if (x < r)
			r = x;
	}
	for (size_t i = 0; i < ms->e.npend; i++) {
		uint64_t x = ms->e.pend[i].end > 64 ? ms->e.pend[i].end - 64 : 0;

		if (x < r)
			r = x;
	}
	/* never split a hash hit */
	for (int again = 1; again;) {
		again = 0;
		for (size_t i = 0; i < ms->e.nsp; i++) {
			const struct span *s = &ms->e.sp[i];

			if (s->style == SL_MASK_HASH && s->from < r && s->to > r) {
				r = s->from;
				again = 1;
			}
		}
	}
	return umax(r, ms->emitted);
}

static int
out(struct sl_mask_stream *ms, const void *p, size_t n)
{
	if (n == 0 || ms->failed)
		return ms->failed ? SL_EIO : 0;
	if (ms->emit(ms->arg, p, n) != 0) {
		ms->failed = 1;
		return SL_EIO;
	}
	return 0;
}

static int
cmp_from(const void *a, const void *b)
{
	const struct span *x = *(const struct span *const *)a, *y = *(const struct span *const *)b;

	return x->from < y->from ? -1 : x->from > y->from;
}

/* Emits [emitted, upto) with every span applied. */
static int
emit_upto(struct sl_mask_stream *ms, uint64_t upto)
{
	struct eng *e = &ms->e;
	size_t n = (size_t)(upto - ms->emitted), w = 0, nh = 0;
	struct span *hs[MAX_SP];
	uint64_t pos = ms->emitted;
	int r = 0;

	if (n == 0)
		return 0;
	memcpy(ms->obuf, H(ms, ms->emitted), n);
	for (size_t i = 0; i < e->nsp; i++) {
		struct span *s = &e->sp[i];

		if (s->style == SL_MASK_HASH && (s->from < ms->emitted || s->to > upto)) {
			s->style = SL_MASK_FULL; /* forced out: cannot be one token */
			s->mfrom = s->from;
			s->mto = s->to;
			s->filt = F_ALL;
			e->nhash--;
		}
		if (s->style == SL_MASK_HASH) {
			if (s->from < upto)
				hs[nh++] = s;
			continue;
		}
		sl_mask__apply(s, ms->obuf, ms->emitted, upto);
	}
	if (e->pem_open) {
		struct span t = e->pem;

		t.mto = e->hi;
		sl_mask__apply(&t, ms->obuf, ms->emitted, upto);
	}
	if (e->sec_open) {
		struct span t = e->sec;

		t.mto = e->hi;
		sl_mask__apply(&t, ms->obuf, ms->emitted, upto);
	}
	qsort(hs, nh, sizeof(hs[0]), cmp_from);
	for (size_t i = 0; i < nh && r == 0;) {
		uint64_t gf = hs[i]->from, gt = hs[i]->to;
		char tok[24];

		for (i++; i < nh && hs[i]->from < gt; i++)
			if (hs[i]->to > gt)
				gt = hs[i]->to;
		if ((r = out(ms, ms->obuf + (pos - ms->emitted), (size_t)(gf - pos))) != 0 ||
		    (r = sl_mask__token(ms->p, H(ms, gf), (size_t)(gt - gf), tok)) != 0 ||
		    (r = out(ms, tok, 18)) != 0)
			break;
		pos = gt;
	}
	if (r == 0)
		r = out(ms, ms->obuf + (pos - ms->emitted), (size_t)(upto - pos));
	ms->emitted = upto;
	for (size_t i = 0; i < e->nsp; i++) {
		if (e->sp[i].to <= upto) {
			if (e->sp[i].style == SL_MASK_HASH)
				e->nhash--;
			continue;
		}
		e->sp[w++] = e->sp[i];
	}
	e->nsp = w;
	return r;
}

int
sl_mask_stream_new(const struct sl_mask_plan *p, struct sl_mask_scratch *s, sl_mask_emit_fn emit,
		   void *arg, struct sl_mask_stream **out_ms)
{
	struct sl_mask_stream *ms;

	*out_ms = NULL;
	ms = calloc(1, sizeof(*ms));
	if (ms == NULL)
		return SL_ENOMEM;
	ms->p = p;
	ms->s = s;
	ms->emit = emit;
	ms->arg = arg;
	ms->hold = malloc(HOLD_CAP);
	ms->obuf = malloc(HOLD_CAP);
	if (ms->hold == NULL || ms->obuf == NULL ||
	    hs_open_stream(p->db->str, 0, &ms->hs) != HS_SUCCESS) {
		sl_mask_stream_free(ms);
		return SL_ENOMEM;
	}
	init_classes(ms);
	ms->e.p = p;
	ms->e.streaming = 1;
	ms->e.sp = ms->sp;
	ms->e.spcap = MAX_SP;
	ms->e.spmax = MAX_SP;
	ms->e.st = &ms->st;
	*out_ms = ms;
	return 0;
}

/* Drops raw bytes more than HIST before the emit point. */
static void
compact(struct sl_mask_stream *ms)
{
	uint64_t nb = ms->emitted > HIST ? ms->emitted - HIST : 0;

	if (nb <= ms->base)
		return;
	memmove(ms->hold, H(ms, nb), (size_t)(ms->total - nb));
	ms->base = nb;
}

static void
set_view(struct sl_mask_stream *ms)
{
	ms->e.buf = ms->hold;
	ms->e.lo = ms->base;
	ms->e.hi = ms->total;
}

static int
step(struct sl_mask_stream *ms, const uint8_t *p, size_t k)
{
	uint64_t safe;

	if (ms->total - ms->base + k > HOLD_CAP)
		compact(ms);
	memcpy(ms->hold + (ms->total - ms->base), p, k);
	ms->total += k;
	set_view(ms);
	if (hs_scan_stream(ms->hs, (const char *)p, (unsigned)k, 0, sl_mask__hs_scratch(ms->s),
			   sl_mask__on_match, &ms->e) != HS_SUCCESS) {
		/* cannot tell what is in it: star everything unemitted */
		struct span f = {ms->emitted, ms->total,    ms->emitted, ms->total,
				 0,	      SL_MASK_FULL, F_NOWS};

		sl_mask__push(&ms->e, &f);
		emit_upto(ms, ms->total);
		ms->failed = 1;
		return SL_EIO;
	}
	sl_mask__after_scan(&ms->e);
	track(ms, ms->total - k);
	safe = risk_start(ms);
	if (ms->total - safe > SL_MASK_HOLD_MAX) {
		/* A match in progress longer than the hold: star what must
		 * leave (fail closed). */
		uint64_t f = ms->total - SL_MASK_HOLD_MAX;
		struct span sp = {safe, f, safe, f, 0, SL_MASK_FULL, F_NOWS};

		sl_mask__push(&ms->e, &sp);
		safe = f;
	}
	return emit_upto(ms, safe);
}

int
sl_mask_stream_feed(struct sl_mask_stream *ms, const uint8_t *p, size_t n)
{
	if (ms->done || ms->failed)
		return ms->failed ? SL_EIO : SL_ESTATE;
	while (n > 0) {
		size_t k = n < PIECE ? n : PIECE;
		int r = step(ms, p, k);

		if (r != 0)
			return r;
		p += k;
		n -= k;
	}
	return 0;
}

int
sl_mask_stream_end(struct sl_mask_stream *ms)
{
	int r;

	if (ms->done || ms->failed)
		return ms->failed ? SL_EIO : SL_ESTATE;
	ms->done = 1;
	set_view(ms);
	ms->e.eof = 1;
	r = hs_close_stream(ms->hs, sl_mask__hs_scratch(ms->s), sl_mask__on_match, &ms->e);
	ms->hs = NULL;
	sl_mask__finish(&ms->e);
	if (r != HS_SUCCESS) {
		struct span f = {ms->emitted, ms->total,    ms->emitted, ms->total,
				 0,	      SL_MASK_FULL, F_NOWS};

		sl_mask__push(&ms->e, &f);
	}
	return emit_upto(ms, ms->total);
}

const struct sl_mask_stats *
sl_mask_stream_stats(const struct sl_mask_stream *ms)
{
	return &ms->st;
}

size_t
sl_mask_stream_held(const struct sl_mask_stream *ms)
{
	return (size_t)(ms->total - ms->emitted);
}

void
sl_mask_stream_free(struct sl_mask_stream *ms)
{
	if (ms == NULL)
		return;
	if (ms->hs != NULL)
		hs_close_stream(ms->hs, NULL, NULL, NULL);
	free(ms->hold);
	free(ms->obuf);
	free(ms);
}
