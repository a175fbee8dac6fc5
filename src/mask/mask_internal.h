/*
 * mask_internal.h - shared between the block path (mask.c), the detector
 * resolver (detect.c) and the streaming path (stream.c). Not installed.
 */
#ifndef SLUICE_MASK_INTERNAL_H
#define SLUICE_MASK_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <hs/hs.h>

#include "sluice/mask.h"

struct sl_mask_ds_event;

#define MAX_PATS 64
/* Raw bytes kept before the emit point for boundary checks (1-2 needed). */
#define HIST 16
/* Emails: local part and domain length limits (RFC 5321). */
#define EMAIL_LOCAL_MAX	 64
#define EMAIL_DOMAIN_MAX 255

/* What a hyperscan pattern id means. */
enum kind {
	K_SSN,
	K_CARD,	    /* bare 13-19 digits */
	K_CARD_SEP, /* grouped with ' ' or '-' */
	K_PHONE,
	K_IBAN,
	K_AWS,
	K_EMAIL,
	K_JWT,
	K_PEM, /* BEGIN marker: opens a region */
	K_PEM_END,
	K_SECRET, /* key [:=] value: opens a region over the value */
	K_BEARER, /* Authorization: Bearer|Basic value */
	K_CUSTOM, /* start of match from hyperscan (SOM) */
};

struct mpat {
	uint8_t det;
	uint8_t kind;
};

struct sl_mask_db {
	hs_database_t *blk; /* block mode: whole values */
	hs_database_t *str; /* streaming mode, same patterns */
	unsigned ndet;
	char *names[SL_MASK_MAX_DETECTORS];
	struct mpat pats[MAX_PATS];
	unsigned npat;
	size_t min_len;	    /* shortest possible match: shorter values are skipped */
	size_t custom_maxw; /* longest custom match (0: no custom patterns) */
};

struct sl_mask_plan {
	const struct sl_mask_db *db;
	uint32_t enabled; /* detector bits */
	enum sl_mask_style det_style[SL_MASK_MAX_DETECTORS];
	enum sl_mask_style def_style;
	char **cols;
	enum sl_mask_style *col_style;
	size_t ncols;
	uint8_t key[32];
	size_t keylen;
};

/* Which bytes of a span's mask range are starred. */
enum filt {
	F_ALL,
	F_DIGITS, /* separators stay */
	F_ALNUM,  /* spaces stay (IBAN) */
	F_NOWS,	  /* '\n', '\r', '\t' stay (PEM blocks: lines and COPY fields keep their shape) */
};

/* A detector hit: [from, to) is the hit, [mfrom, mto) the part starred
 * (partial styles keep some of it), or the whole hit replaced by a token
 * (hash). Offsets are absolute (value or stream offsets). */
struct span {
	uint64_t from, to, mfrom, mto;
	uint8_t det, style, filt;
};

struct pend {
	uint64_t from, end;
	uint8_t kind, det;
};

#define MAX_PEND 32

/*
 * The resolver state for one value (block) or one stream. The view is
 * buf[0..hi-lo) holding absolute offsets [lo, hi); eof says nothing follows
 * hi. Spans are appended to sp (grown up to spmax, then coalesced: never
 * dropped).
 */
struct eng {
	const struct sl_mask_plan *p;
	const uint8_t *buf;
	uint64_t lo, hi;
	int eof;
	int streaming;
	struct span *sp;
	size_t nsp, spcap, spmax;
	int growable;
	size_t npend;
	int pem_open, sec_open;
	uint8_t sec_kind;
	uint64_t sec_cur;
	/* the secret value opened at sec_start; once closed, [last_from,
	 * last_end) of kind last_kind (sec_last set): a later key=value inside
	 * it is that value again, not scanned anew to its end (in block mode
	 * "password=password=..." made every '=' rescan the rest: quadratic) */
	uint64_t sec_start, sec_last_from, sec_last_end;
	uint8_t sec_last_kind, sec_last;
	struct sl_mask_stats *st;
	int need_null; /* a hit with style null (block mode) */
	int nhash;     /* spans with style hash */
	int lost;      /* a span could not be stored: fail closed */
	/* digit scanner (digits.c): next position, end of data seen; block
	 * mode: its reports from sl_mask__classify() (NULL: scan) */
	uint64_t ds_pos;
	int ds_eof;
	const struct sl_mask_ds_event *ds_ev;
	size_t ds_nev;
	/* Read only under npend, pem_open, sec_open: the block path zeroes
	 * the fields above only (ENG_ZERO), every value. */
	struct span pem, sec;
	struct pend pend[MAX_PEND];
};
#define ENG_ZERO offsetof(struct eng, pem)

/* Built-in patterns (detect.c): one or more per built-in detector. */
struct builtin_pat {
	uint8_t det, kind;
	unsigned flags;
	const char *re;
	unsigned minlen;
};
extern const struct builtin_pat sl_mask__builtin[];
extern const unsigned sl_mask__nbuiltin;
int sl_mask__luhn(const uint8_t *s, size_t n);

/* A candidate ending at end (exclusive of one byte of trailing context,
 * like the patterns): resolved now, or kept until more bytes arrive. */
void sl_mask__report(struct eng *e, unsigned kind, unsigned det, uint64_t from, uint64_t end);
/* The digit scanner: reports ssn, credit_card and iban candidates for the
 * positions [ds_pos, hi) of the view (and hi itself at eof). */
void sl_mask__scan_digits(struct eng *e);

/* A regex window: the part of a value a built-in regex can match in. */
struct sl_mask_win {
	uint32_t from, to;
};
/* What the digit scanner reports for one 64-byte block at offset p of a
 * value: group ends where an SSN or a card number may end (gb), IBAN
 * starts' second check digits (q), and the digit bits group_end() needs. */
struct sl_mask_ds_event {
	uint64_t p, gb, q, d, dprev;
};
#define SL_MASK_MAX_WINDOWS 64
#define SL_MASK_MAX_ANCHORS 16
#define SL_MASK_MAX_EVENTS  256
/* The result of one pass over a value (sl_mask__classify()). */
struct sl_mask_cls {
	int nw; /* windows in w; -1: more than SL_MASK_MAX_WINDOWS (scan it all) */
	struct sl_mask_win w[SL_MASK_MAX_WINDOWS];
	/* anchors that passed, when all are '@' or '+' (-1: others, or more
	 * than SL_MASK_MAX_ANCHORS, or custom patterns) */
	int nanc;
	uint32_t anc[SL_MASK_MAX_ANCHORS];
	size_t nev;  /* digit-scanner reports, in scan order */
	int ev_over; /* more blocks had some than ev holds: scan again instead */
	struct sl_mask_ds_event ev[SL_MASK_MAX_EVENTS];
};
enum {
	SL_MASK_CLS_ANY,     /* bit 1 of the result: whether any anchor byte passes */
	SL_MASK_CLS_WINDOWS, /* the same, and the windows around every one */
	SL_MASK_CLS_ALWAYS,  /* custom patterns (they may match anywhere): bit 1 set */
};
/*
 * One SIMD pass over value v (SSE2 or AVX2): class bits of every 64-byte
 * block give the digit scanner's reports (kept in c->ev for replay) and the
 * anchor bytes a built-in regex needs (@, + and a digit, AK.., --, eyJ,
 * a secret key before ':' or '=', each checked exactly). Returns bit 1 when
 * a regex may match (mode SL_MASK_CLS_WINDOWS also fills c->w: a window
 * around each anchor, from where its pattern can start to the whitespace
 * after it, sorted and merged) and bit 2 when the digit scanner has
 * something to report (in c->ev, or at the end of the value). Values
 * holding neither (most result values) skip both scans.
 */
int sl_mask__classify(const uint8_t *v, size_t len, int mode, struct sl_mask_cls *c);
/*
 * Block mode, when c->nanc >= 0 (every anchor is '@' or '+', so only the
 * email and phone patterns can match): the reports hyperscan would make
 * for them over v, in its order, computed directly (a hyperscan call costs
 * ~3,000 instructions, more than a short value's whole pass). Returns -1,
 * having reported nothing, when there are too many: scan instead.
 */
int sl_mask__scan_anchors(struct eng *e, const uint8_t *v, size_t len, const struct sl_mask_cls *c);
/* hyperscan match callback; ctx is a struct eng. */
int sl_mask__on_match(unsigned id, unsigned long long from, unsigned long long to, unsigned flags,
		      void *ctx);
/* After a scan call: retry pending candidates, advance/close open regions. */
void sl_mask__after_scan(struct eng *e);
/* End of data: resolve everything, close regions. */
void sl_mask__finish(struct eng *e);
/* Appends a span (coalescing when full: never drops one). */
void sl_mask__push(struct eng *e, const struct span *s);
/* The thread's hyperscan scratch (mask.c). */
hs_scratch_t *sl_mask__hs_scratch(struct sl_mask_scratch *s);
/* Stars span s's mask range clipped to [lo, hi) in out (out[0] = offset lo). */
void sl_mask__apply(const struct span *s, uint8_t *out, uint64_t lo, uint64_t hi);
/* "h:" + 16 hex of HMAC-SHA-256(key, v): 18 bytes into out. */
int sl_mask__token(const struct sl_mask_plan *p, const uint8_t *v, size_t n, char out[24]);

#endif
