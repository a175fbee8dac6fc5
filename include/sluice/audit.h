/*
 * audit.h - the tamper-evident audit trail: hash-chained records in SQLite
 * (WAL, group commit on a writer thread), Ed25519-signed checkpoints,
 * verification, export and tail.
 *
 * Record hash = SHA-256(prev_hash || seq || ts || node || type || session ||
 * trace_id || span_id || data), every string length-prefixed; the first
 * record's prev_hash is 32 zero bytes. See docs/audit.md.
 */
#ifndef SLUICE_AUDIT_H
#define SLUICE_AUDIT_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "sluice/config.h"
#include "sluice/core.h"

struct sl_audit;

/* Opens the store named by cfg->audit (data_dir from cfg->gateway), loads or
 * creates the signing key (<data_dir>/audit-signing.key, public key in
 * <data_dir>/audit-signing.pub) and starts the writer thread. */
int sl_audit_open(const struct sl_config *cfg, struct sl_audit **out, char *err, size_t errlen);

/* Called on the writer thread once the record is committed (status 0) or
 * could not be (status < 0). */
typedef void (*sl_audit_done_fn)(void *arg, int status, uint64_t seq);

/* Queues a record. Takes ownership of data (a JSON object, may be NULL).
 * Thread-safe. Returns 0 if queued (done will be called), SL_AUDIT_DURABLE
 * if the record was committed right away by this thread (group-commit
 * leader; done is NOT called), SL_EIO if the store failed or the queue is
 * full (the caller refuses the request: fail closed). */
#define SL_AUDIT_DURABLE 2
int sl_audit_append(struct sl_audit *a, const char *type, const char *session_id,
		    const char *trace_id, const char *span_id, json_t *data, sl_audit_done_fn done,
		    void *arg);

/* Same, with data already serialised as one compact JSON object (len bytes,
 * copied). Hot paths use this to skip building a JSON tree. */
int sl_audit_append_raw(struct sl_audit *a, const char *type, const char *session_id,
			const char *trace_id, const char *span_id, const char *json, size_t len,
			sl_audit_done_fn done, void *arg);

/* Appends s (len bytes) to b as a JSON string literal: quotes, backslashes
 * and control characters escaped; bytes that are not valid UTF-8 become
 * \u00XX so the record stays valid JSON. */
int sl_json_put_str(struct sl_buf *b, const char *s, size_t len);

/* 1 if audit.mode is strict (the default). */
int sl_audit_strict(const struct sl_audit *a);

/* Flushes the queue, writes a final checkpoint, stops the writer. NULL is a no-op. */
void sl_audit_close(struct sl_audit *a);

/* Verifies the chain in the SQLite file at store_path with the public key at
 * pubkey_path (NULL: no signature check). Writes a one-line verdict to msg.
 * Returns 0 or SL_ECORRUPT (or SL_EIO if the store cannot be read). */
int sl_audit_verify_store(const char *store_path, const char *pubkey_path, char *msg, size_t msglen,
			  uint64_t *nrecords);
/* The same with the checkpoint sidecar read from sidecar_path (a copy kept
 * elsewhere, e.g. on write-once storage; it must exist) instead of
 * <store_path>.checkpoints (read if it exists). */
int sl_audit_verify_store_with(const char *store_path, const char *pubkey_path,
			       const char *sidecar_path, char *msg, size_t msglen,
			       uint64_t *nrecords);

/* `sluice audit verify|tail|export` (argv[0] is the subcommand). */
int sl_audit_cli(int argc, char **argv, const struct sl_config *cfg);

/* Path of the SQLite file named by a store URI ("sqlite:PATH" or a bare path);
 * NULL for other schemes. Returns owned. */
char *sl_audit_store_path(const char *store);

#endif
