/*
 * strmap.c - a string-keyed hash map for names a client chooses (prepared
 * statements, portals): open addressing with linear probing and
 * backward-shift deletion (no tombstones), keyed SipHash-2-4 so a client
 * cannot pick names that collide.
 *
 * The map stores key pointers, not copies: a key must stay valid while its
 * entry is in the map (it is usually the name inside the value).
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "sluice/core.h"

static uint8_t sip_key[16];
static int sip_key_set;

static uint64_t
le64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                   \
	do {                                                                                       \
		v0 += v1;                                                                          \
		v1 = ROTL(v1, 13);                                                                 \
		v1 ^= v0;                                                                          \
		v0 = ROTL(v0, 32);                                                                 \
		v2 += v3;                                                                          \
		v3 = ROTL(v3, 16);                                                                 \
		v3 ^= v2;                                                                          \
		v0 += v3;                                                                          \
		v3 = ROTL(v3, 21);                                                                 \
		v3 ^= v0;                                                                          \
		v2 += v1;                                                                          \
		v1 = ROTL(v1, 17);                                                                 \
		v1 ^= v2;                                                                          \
		v2 = ROTL(v2, 32);                                                                 \
	} while (0)

uint64_t
sl_siphash(const void *data, size_t len, const uint8_t key[16])
{
	const uint8_t *in = data, *end = in + len - len % 8;
	uint64_t k0 = le64(key), k1 = le64(key + 8);
	uint64_t v0 = 0x736f6d6570736575ull ^ k0, v1 = 0x646f72616e646f6dull ^ k1;
	uint64_t v2 = 0x6c7967656e657261ull ^ k0, v3 = 0x7465646279746573ull ^ k1;
	uint64_t b = (uint64_t)len << 56;

	for (; in != end; in += 8) {
		uint64_t m = le64(in);

		v3 ^= m;
		SIPROUND;
		SIPROUND;
		v0 ^= m;
	}
	for (size_t i = 0; i < len % 8; i++)
		b |= (uint64_t)in[i] << (8 * i);
	v3 ^= b;
	SIPROUND;
	SIPROUND;
	v0 ^= b;
	v2 ^= 0xff;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	return v0 ^ v1 ^ v2 ^ v3;
}

static uint64_t
hash_name(const char *s)
{
	/* The unnamed statement and portal are the common case (every
	 * Parse/Bind of libpq, psycopg, pgbench -M extended): one fixed
	 * value, which no other name can be steered to without the key. */
	if (s[0] == '\0')
		return 0x9e3779b97f4a7c15ull;
	if (!__atomic_load_n(&sip_key_set, __ATOMIC_ACQUIRE)) {
		/* Once per process; a race only writes random bytes twice
		 * before any map holds an entry hashed with the first. */
		static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

		pthread_mutex_lock(&mu);
		if (!sip_key_set) {
			if (sl_random(sip_key, sizeof(sip_key)) != 0)
				memset(sip_key, 0x5a, sizeof(sip_key)); /* still a map */
			__atomic_store_n(&sip_key_set, 1, __ATOMIC_RELEASE);
		}
		pthread_mutex_unlock(&mu);
	}
	return sl_siphash(s, strlen(s), sip_key);
}

/* The slot holding key, or the empty slot where it would go. */
static size_t
find_slot(const struct sl_strmap *m, const char *key, uint64_t h)
{
	size_t mask = m->cap - 1, i = (size_t)h & mask;

	while (m->slots[i].key != NULL &&
	       (m->slots[i].hash != h || strcmp(m->slots[i].key, key) != 0))
		i = (i + 1) & mask;
	return i;
}

static int
grow(struct sl_strmap *m)
{
	size_t ncap = m->cap ? m->cap * 2 : 16;
	struct sl_strmap_slot *old = m->slots, *ns = calloc(ncap, sizeof(*ns));
	size_t ocap = m->cap;

	if (ns == NULL)
		return SL_ENOMEM;
	m->slots = ns;
	m->cap = ncap;
	for (size_t i = 0; i < ocap; i++) {
		if (old[i].key != NULL) {
			size_t j = (size_t)old[i].hash & (ncap - 1);

			while (ns[j].key != NULL)
				j = (j + 1) & (ncap - 1);
			ns[j] = old[i];
		}
	}
	free(old);
	return 0;
}

void *
sl_strmap_get(const struct sl_strmap *m, const char *key)
{
	if (m->n == 0)
		return NULL;
	return m->slots[find_slot(m, key, hash_name(key))].val;
}

int
sl_strmap_put(struct sl_strmap *m, const char *key, void *val, void **old)
{
	uint64_t h = hash_name(key);
	size_t i;

	if (old != NULL)
		*old = NULL;
	if (m->cap != 0 && m->slots[i = find_slot(m, key, h)].key != NULL) {
		if (old != NULL)
			*old = m->slots[i].val;
		m->slots[i].key = key; /* a replacement never allocates */
		m->slots[i].val = val;
		return 0;
	}
	/* at most 3/4 full, so probe runs stay short */
	if ((m->n + 1) * 4 > m->cap * 3 && grow(m) != 0)
		return SL_ENOMEM;
	i = find_slot(m, key, h);
	m->n++;
	m->slots[i].key = key;
	m->slots[i].hash = h;
	m->slots[i].val = val;
	return 0;
}

void *
sl_strmap_del(struct sl_strmap *m, const char *key)
{
	size_t mask, i, j;
	void *val;

	if (m->n == 0)
		return NULL;
	mask = m->cap - 1;
	i = find_slot(m, key, hash_name(key));
	if (m->slots[i].key == NULL)
		return NULL;
	val = m->slots[i].val;
	/* Backward shift: move later entries of the run into the hole when
	 * the hole lies between their home slot and where they are. */
	for (j = (i + 1) & mask; m->slots[j].key != NULL; j = (j + 1) & mask) {
		size_t home = (size_t)m->slots[j].hash & mask;

		if (((j - home) & mask) >= ((j - i) & mask)) {
			m->slots[i] = m->slots[j];
			i = j;
		}
	}
	memset(&m->slots[i], 0, sizeof(m->slots[i]));
	m->n--;
	return val;
}

void
sl_strmap_fini(struct sl_strmap *m)
{
	free(m->slots);
	memset(m, 0, sizeof(*m));
}
