/*
 * net.h - byte streams over libuv TCP, plain or TLS (OpenSSL memory BIOs),
 * listeners with SO_REUSEPORT, and address parsing.
 *
 * A stream delivers plaintext into the owner's input buffer and takes
 * plaintext to send through its own output buffer; TLS is transparent once
 * the handshake is done. All calls run on the stream's loop thread.
 */
#ifndef SLUICE_NET_H
#define SLUICE_NET_H

#include <netinet/in.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <uv.h>

#include "sluice/core.h"

struct sl_stream;

struct sl_stream_ops {
	/* New plaintext was appended to *s->in (n bytes). */
	void (*on_read)(struct sl_stream *s, size_t n);
	/* EOF (err = 0) or error (<0). The owner closes the stream. */
	void (*on_eof)(struct sl_stream *s, int err);
	/* Outgoing queue dropped below the low watermark after being high. */
	void (*on_drain)(struct sl_stream *s);
	/* TLS handshake finished (status 0) or failed (<0). */
	void (*on_tls)(struct sl_stream *s, int status);
	/* uv_tcp_connect finished. */
	void (*on_connect)(struct sl_stream *s, int status);
	/* Handle fully closed; the owner may free its memory now. */
	void (*on_close)(struct sl_stream *s);
};

#define SL_STREAM_HIGH_WATER (1u << 20)
#define SL_STREAM_LOW_WATER  (256u << 10)

struct sl_stream {
	uv_tcp_t tcp;
	uv_connect_t creq;
	const struct sl_stream_ops *ops;
	void *owner;
	struct sl_buf *in; /* owner's input buffer (plaintext) */
	struct sl_buf out; /* plaintext (or ciphertext after TLS) waiting to be written */
	size_t queued;	   /* bytes handed to uv_write and not yet completed */
	SSL *ssl;
	BIO *rbio, *wbio;
	uint8_t *tlsbuf;  /* ciphertext read scratch */
	unsigned tls : 1; /* TLS active (handshaking or established) */
	unsigned tls_ready : 1;
	unsigned reading : 1;
	unsigned high : 1;
	unsigned closing : 1;
	unsigned eof : 1;
};

/* Initialises s on loop (uv_tcp_init). in = owner's input buffer. */
int sl_stream_init(struct sl_stream *s, uv_loop_t *loop, const struct sl_stream_ops *ops,
		   void *owner, struct sl_buf *in);
/* Starts a connect to addr; ops->on_connect reports the result. */
int sl_stream_connect(struct sl_stream *s, const struct sockaddr *addr);
int sl_stream_read_start(struct sl_stream *s);
void sl_stream_read_stop(struct sl_stream *s);
/* Appends plaintext to the output buffer (not written until sl_stream_flush). */
int sl_stream_queue(struct sl_stream *s, const void *p, size_t n);
/* Writes everything queued; takes ownership of the output memory while in flight. */
int sl_stream_flush(struct sl_stream *s);
static inline size_t
sl_stream_backlog(const struct sl_stream *s)
{
	return s->queued + sl_buf_unread(&s->out);
}
/* Starts TLS as server (after answering SSLRequest) or client (after the server said 'S').
 * Bytes already read past the SSLRequest answer must not exist (callers check). */
int sl_stream_tls_server(struct sl_stream *s, SSL_CTX *ctx);
int sl_stream_tls_client(struct sl_stream *s, SSL_CTX *ctx, const char *sni);
/* RFC 5929 tls-server-end-point of an established client TLS stream: the
 * peer certificate's hash with its signature's digest (SHA-256 for MD5 and
 * SHA-1). out holds EVP_MAX_MD_SIZE bytes. SL_EINVAL without TLS, a
 * certificate, or a digest to use (e.g. an Ed25519 signature). */
int sl_stream_tls_end_point(const struct sl_stream *s, uint8_t *out, size_t *len);
/* Closes the handle (idempotent); ops->on_close fires later. */
void sl_stream_close(struct sl_stream *s);

/* Parses "host:port" / "[v6]:port" numerically into ss. Returns SL_EINVAL if it is not numeric. */
int sl_net_parse_addr(const char *hostport, struct sockaddr_storage *ss);
/* Same, resolving names with getaddrinfo (blocking: start-up and thread pool only). */
int sl_net_resolve(const char *hostport, struct sockaddr_storage *ss);
/* Splits "host:port" into host (static buffer of hostlen) and port. */
int sl_net_split(const char *hostport, char *host, size_t hostlen, int *port);
/* 1 if the address is a loopback address. */
int sl_net_is_loopback(const struct sockaddr *sa);
/* Formats an address "ip:port". */
void sl_net_addr_str(const struct sockaddr *sa, char *buf, size_t len);
/* Opens a non-blocking listening socket on addr with SO_REUSEPORT (one per
 * worker loop). Returns the descriptor, or -1 with errno set. */
int sl_net_listen_fd(const struct sockaddr *addr, int backlog);

#endif
