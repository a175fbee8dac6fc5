/*
 * hookq.c - the review webhook queue: two lanes (announcements of pending
 * reviews first), a bound per requester and in all, final events folded into
 * a still-queued announcement. No threads, clocks or logging: review.c holds
 * the lock, logs and sends.
 */
#include "sluice/review.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* How many messages one subject has queued (an entry exists while > 0). */
struct subj {
	struct subj *next;
	size_t queued;
	char name[]; /* NUL-terminated */
};

struct lane {
	struct sl_review_hook *head, *tail;
};

struct sl_review_hookq {
	struct lane lanes[2]; /* 0: "created" of pending reviews, 1: the rest */
	struct subj *subjects;
	size_t len, max, max_per_subject;
	uint64_t dropped;
};

struct sl_review_hookq *
sl_review_hookq_new(size_t max, size_t max_per_subject)
{
	struct sl_review_hookq *q = calloc(1, sizeof(*q));

	if (q == NULL)
		return NULL;
	q->max = max ? max : 1;
	q->max_per_subject = max_per_subject ? max_per_subject : 1;
	return q;
}

void
sl_review_hook_free(struct sl_review_hook *h)
{
	if (h == NULL)
		return;
	free(h->subject);
	free(h->body);
	free(h->text);
	free(h);
}

void
sl_review_hookq_free(struct sl_review_hookq *q)
{
	if (q == NULL)
		return;
	sl_review_hookq_clear(q);
	free(q);
}

static struct subj **
subj_find(struct sl_review_hookq *q, const char *name)
{
	struct subj **pp;

	for (pp = &q->subjects; *pp; pp = &(*pp)->next)
		if (strcmp((*pp)->name, name) == 0)
			break;
	return pp;
}

/* One message of name left the queue. */
static void
subj_put(struct sl_review_hookq *q, const char *name)
{
	struct subj **pp = subj_find(q, name), *s = *pp;

	if (s == NULL)
		return;
	if (--s->queued == 0) {
		*pp = s->next;
		free(s);
	}
}

static void
lane_append(struct lane *l, struct sl_review_hook *h)
{
	h->next = NULL;
	if (l->tail)
		l->tail->next = h;
	else
		l->head = h;
	l->tail = h;
}

static struct sl_review_hook *
lane_shift(struct lane *l)
{
	struct sl_review_hook *h = l->head;

	if (h == NULL)
		return NULL;
	l->head = h->next;
	if (l->head == NULL)
		l->tail = NULL;
	h->next = NULL;
	return h;
}

/* Unlinks the "created" of review id from the priority lane, if queued. */
static struct sl_review_hook *
unlink_created(struct sl_review_hookq *q, const char *id)
{
	struct lane *l = &q->lanes[0];
	struct sl_review_hook *prev = NULL;

	for (struct sl_review_hook *h = l->head; h; prev = h, h = h->next) {
		if (strcmp(h->id, id) != 0)
			continue;
		if (prev)
			prev->next = h->next;
		else
			l->head = h->next;
		if (l->tail == h)
			l->tail = prev;
		h->next = NULL;
		return h;
	}
	return NULL;
}

int
sl_review_hookq_push(struct sl_review_hookq *q, const char *id, const char *subject, int created,
		     char *body, char *text)
{
	struct sl_review_hook *h;
	struct subj **sp, *s;

	if (!created && (h = unlink_created(q, id)) != NULL) {
		/* never announced and already over: one message says both, in
		 * the slot the announcement held (no new one for the subject) */
		free(h->body);
		free(h->text);
		h->body = body;
		h->text = text;
		h->created = 0;
		lane_append(&q->lanes[1], h);
		return SL_REVIEW_HOOK_FOLDED;
	}
	sp = subj_find(q, subject);
	if (*sp != NULL && (*sp)->queued >= q->max_per_subject)
		goto drop;
	if (q->len >= q->max) {
		struct sl_review_hook *old = created ? lane_shift(&q->lanes[1]) : NULL;

		if (old == NULL)
			goto drop;
		/* an announcement of a pending review outranks news of a
		 * review already over */
		subj_put(q, old->subject);
		sl_review_hook_free(old);
		q->len--;
		q->dropped++;
		sp = subj_find(q, subject); /* the list may have changed */
	}
	h = calloc(1, sizeof(*h));
	if (h == NULL || (h->subject = strdup(subject)) == NULL)
		goto nomem;
	if (*sp == NULL) {
		size_t n = strlen(subject) + 1;

		s = calloc(1, sizeof(*s) + n);
		if (s == NULL)
			goto nomem;
		memcpy(s->name, subject, n);
		*sp = s;
	}
	(*sp)->queued++;
	snprintf(h->id, sizeof(h->id), "%s", id);
	h->created = created != 0;
	h->body = body;
	h->text = text;
	lane_append(&q->lanes[h->created ? 0 : 1], h);
	q->len++;
	return 0;
nomem:
	if (h)
		free(h->subject);
	free(h);
	free(body);
	free(text);
	q->dropped++;
	return SL_ENOMEM;
drop:
	free(body);
	free(text);
	q->dropped++;
	return SL_ETOOBIG;
}

struct sl_review_hook *
sl_review_hookq_pop(struct sl_review_hookq *q)
{
	struct sl_review_hook *h = lane_shift(&q->lanes[0]);

	if (h == NULL)
		h = lane_shift(&q->lanes[1]);
	if (h == NULL)
		return NULL;
	subj_put(q, h->subject);
	q->len--;
	return h;
}

size_t
sl_review_hookq_clear(struct sl_review_hookq *q)
{
	struct sl_review_hook *h;
	size_t n = 0;

	while ((h = sl_review_hookq_pop(q)) != NULL) {
		sl_review_hook_free(h);
		n++;
	}
	q->dropped += n;
	return n;
}

size_t
sl_review_hookq_len(const struct sl_review_hookq *q, const char *subject)
{
	if (subject == NULL)
		return q->len;
	for (const struct subj *s = q->subjects; s; s = s->next)
		if (strcmp(s->name, subject) == 0)
			return s->queued;
	return 0;
}

uint64_t
sl_review_hookq_dropped(const struct sl_review_hookq *q)
{
	return q->dropped;
}
