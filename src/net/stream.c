/*
 * stream.c - plain/TLS byte streams over libuv TCP handles.
 *
 * Plain reads land directly in the owner's input buffer. TLS reads land in a
 * scratch buffer, go through the memory BIO and come out of SSL_read into the
 * owner's buffer. Writes collect in s->out and go out in one uv_try_write /
 * uv_write per flush; the in-flight memory is owned by the write request.
 */
#include "sluice/net.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#define READ_CHUNK (64u << 10)
#define OUT_MAX	   (64u << 20)

struct wreq {
	uv_write_t req;
	struct sl_stream *s;
	uint8_t *mem;
	size_t len;
};

static void on_close_cb(uv_handle_t *h);

int
sl_stream_init(struct sl_stream *s, uv_loop_t *loop, const struct sl_stream_ops *ops, void *owner,
	       struct sl_buf *in)
{
	int r;

	memset(s, 0, sizeof(*s));
	s->ops = ops;
	s->owner = owner;
	s->in = in;
	sl_buf_init(&s->out, OUT_MAX);
	if ((r = uv_tcp_init(loop, &s->tcp)) != 0)
		return SL_EIO;
	s->tcp.data = s;
	uv_tcp_nodelay(&s->tcp, 1);
	return 0;
}

static void
connect_cb(uv_connect_t *req, int status)
{
	struct sl_stream *s = req->data;

	if (s->closing)
		return;
	if (status == 0)
		uv_tcp_nodelay(&s->tcp, 1);
	s->ops->on_connect(s, status == 0 ? 0 : SL_EIO);
}

int
sl_stream_connect(struct sl_stream *s, const struct sockaddr *addr)
{
	s->creq.data = s;
	return uv_tcp_connect(&s->creq, &s->tcp, addr, connect_cb) == 0 ? 0 : SL_EIO;
}

static void
alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
	struct sl_stream *s = h->data;

	if (s->tls) {
		if (s->tlsbuf == NULL)
			s->tlsbuf = malloc(READ_CHUNK);
		buf->base = (char *)s->tlsbuf;
		buf->len = s->tlsbuf ? READ_CHUNK : 0;
		return;
	}
	if (sl_buf_reserve(s->in, READ_CHUNK) != 0 && sl_buf_reserve(s->in, 1) != 0) {
		buf->base = NULL;
		buf->len = 0;
		return;
	}
	buf->base = (char *)s->in->data + s->in->len;
	buf->len = s->in->cap - s->in->len;
}

/* Moves ciphertext the TLS engine produced into the output buffer. */
static int
drain_wbio(struct sl_stream *s)
{
	int r;

	while (BIO_ctrl_pending(s->wbio) > 0) {
		size_t n = BIO_ctrl_pending(s->wbio);

		if ((r = sl_buf_reserve(&s->out, n)) != 0)
			return r;
		n = (size_t)BIO_read(s->wbio, s->out.data + s->out.len, (int)n);
		if ((int)n <= 0)
			break;
		s->out.len += n;
	}
	return 0;
}

static void
tls_fail(struct sl_stream *s)
{
	ERR_clear_error();
	if (!s->tls_ready && s->ops->on_tls)
		s->ops->on_tls(s, SL_EPROTO);
	else
		s->ops->on_eof(s, SL_EPROTO);
}

static void
tls_input(struct sl_stream *s, const uint8_t *p, size_t n)
{
	size_t got = 0;

	if (n > 0 && BIO_write(s->rbio, p, (int)n) != (int)n) {
		tls_fail(s);
		return;
	}
	if (!s->tls_ready) {
		int r = SSL_do_handshake(s->ssl);

		drain_wbio(s);
		sl_stream_flush(s);
		if (r != 1) {
			int e = SSL_get_error(s->ssl, r);

			if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
				return;
			tls_fail(s);
			return;
		}
		s->tls_ready = 1;
		if (s->ops->on_tls)
			s->ops->on_tls(s, 0);
		if (s->closing)
			return;
	}
	for (;;) {
		int r;

		if (sl_buf_reserve(s->in, READ_CHUNK) != 0 && sl_buf_reserve(s->in, 1) != 0) {
			s->ops->on_eof(s, SL_ETOOBIG);
			return;
		}
		r = SSL_read(s->ssl, s->in->data + s->in->len, (int)(s->in->cap - s->in->len));
		if (r <= 0) {
			int e = SSL_get_error(s->ssl, r);

			drain_wbio(s);
			if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
				break;
			if (got > 0)
				s->ops->on_read(s, got);
			if (!s->closing)
				s->ops->on_eof(s, e == SSL_ERROR_ZERO_RETURN ? 0 : SL_EPROTO);
			return;
		}
		s->in->len += (size_t)r;
		got += (size_t)r;
	}
	if (got > 0)
		s->ops->on_read(s, got);
}

static void
read_cb(uv_stream_t *h, ssize_t nread, const uv_buf_t *buf)
{
	struct sl_stream *s = h->data;

	if (s->closing)
		return;
	if (nread < 0) {
		s->eof = 1;
		sl_stream_read_stop(s);
		s->ops->on_eof(s, nread == UV_EOF ? 0 : SL_EIO);
		return;
	}
	if (nread == 0)
		return;
	if (s->tls) {
		tls_input(s, (const uint8_t *)buf->base, (size_t)nread);
		return;
	}
	s->in->len += (size_t)nread;
	s->ops->on_read(s, (size_t)nread);
}

int
sl_stream_read_start(struct sl_stream *s)
{
	if (s->reading || s->closing || s->eof)
		return 0;
	if (uv_read_start((uv_stream_t *)&s->tcp, alloc_cb, read_cb) != 0)
		return SL_EIO;
	s->reading = 1;
	return 0;
}

void
sl_stream_read_stop(struct sl_stream *s)
{
	if (!s->reading)
		return;
	uv_read_stop((uv_stream_t *)&s->tcp);
	s->reading = 0;
}

int
sl_stream_queue(struct sl_stream *s, const void *p, size_t n)
{
	int r;

	if (n == 0)
		return 0;
	if (!s->tls)
		return sl_buf_append(&s->out, p, n);
	if (!s->tls_ready)
		return SL_ESTATE;
	while (n > 0) {
		int chunk = n > (1u << 30) ? (1 << 30) : (int)n;

		r = SSL_write(s->ssl, p, chunk);
		if (r <= 0)
			return SL_EIO;
		p = (const uint8_t *)p + r;
		n -= (size_t)r;
		if ((r = drain_wbio(s)) != 0)
			return r;
	}
	return 0;
}

static void
write_cb(uv_write_t *req, int status)
{
	struct wreq *w = (struct wreq *)req;
	struct sl_stream *s = w->s;

	s->queued -= w->len;
	free(w->mem);
	free(w);
	if (s->closing)
		return;
	if (status != 0) {
		s->ops->on_eof(s, SL_EIO);
		return;
	}
	if (s->high && sl_stream_backlog(s) < SL_STREAM_LOW_WATER) {
		s->high = 0;
		if (s->ops->on_drain)
			s->ops->on_drain(s);
	}
}

int
sl_stream_flush(struct sl_stream *s)
{
	struct wreq *w;
	uv_buf_t b;
	int n;

	if (s->closing)
		return SL_ESTATE;
	if (sl_buf_unread(&s->out) == 0)
		return 0;
	if (s->queued == 0) {
		b = uv_buf_init((char *)sl_buf_head(&s->out), (unsigned)sl_buf_unread(&s->out));
		n = uv_try_write((uv_stream_t *)&s->tcp, &b, 1);
		if (n > 0)
			sl_buf_consume(&s->out, (size_t)n);
		else if (n != UV_EAGAIN && n != UV_ENOSYS)
			return SL_EIO;
		if (sl_buf_unread(&s->out) == 0)
			return 0;
	}
	/* Hand the remaining bytes over to a write request. */
	w = malloc(sizeof(*w));
	if (w == NULL)
		return SL_ENOMEM;
	sl_buf_compact(&s->out);
	w->s = s;
	w->mem = s->out.data;
	w->len = s->out.len;
	s->out.data = NULL;
	s->out.len = s->out.cap = s->out.off = 0;
	b = uv_buf_init((char *)w->mem, (unsigned)w->len);
	if (uv_write(&w->req, (uv_stream_t *)&s->tcp, &b, 1, write_cb) != 0) {
		free(w->mem);
		free(w);
		return SL_EIO;
	}
	s->queued += w->len;
	if (s->queued >= SL_STREAM_HIGH_WATER)
		s->high = 1;
	return 0;
}

static int
tls_start(struct sl_stream *s, SSL_CTX *ctx, int server, const char *sni)
{
	s->ssl = SSL_new(ctx);
	if (s->ssl == NULL)
		return SL_ENOMEM;
	s->rbio = BIO_new(BIO_s_mem());
	s->wbio = BIO_new(BIO_s_mem());
	if (s->rbio == NULL || s->wbio == NULL)
		return SL_ENOMEM;
	BIO_set_mem_eof_return(s->rbio, -1);
	SSL_set_bio(s->ssl, s->rbio, s->wbio);
	s->tls = 1;
	if (server) {
		SSL_set_accept_state(s->ssl);
		return 0;
	}
	if (sni != NULL) {
		struct in6_addr ip;

		/* The name the certificate must carry (checked when the context
		 * verifies peers). An address is matched against the
		 * certificate's IP entries and is not sent as SNI (RFC 6066). */
		if (inet_pton(AF_INET, sni, &ip) == 1 || inet_pton(AF_INET6, sni, &ip) == 1) {
			if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(s->ssl), sni) != 1)
				return SL_EINVAL;
		} else if (SSL_set_tlsext_host_name(s->ssl, sni) != 1 ||
			   SSL_set1_host(s->ssl, sni) != 1) {
			return SL_EINVAL;
		}
	}
	SSL_set_connect_state(s->ssl);
	/* Client speaks first. */
	SSL_do_handshake(s->ssl);
	drain_wbio(s);
	return sl_stream_flush(s);
}

int
sl_stream_tls_server(struct sl_stream *s, SSL_CTX *ctx)
{
	int r = tls_start(s, ctx, 1, NULL);

	/* Ciphertext that arrived together with the SSLRequest cannot exist:
	 * the client waits for our 'S'. Anything in the plaintext buffer is a
	 * protocol violation the caller already refused. */
	return r;
}

int
sl_stream_tls_client(struct sl_stream *s, SSL_CTX *ctx, const char *sni)
{
	return tls_start(s, ctx, 0, sni);
}

int
sl_stream_tls_end_point(const struct sl_stream *s, uint8_t *out, size_t *len)
{
	X509 *cert;
	const EVP_MD *md = NULL;
	int md_nid = NID_undef, pk_nid;
	unsigned int n = 0;
	int r = SL_EINVAL;

	*len = 0;
	if (s->ssl == NULL || !s->tls_ready || (cert = SSL_get1_peer_certificate(s->ssl)) == NULL)
		return SL_EINVAL;
	if (OBJ_find_sigid_algs(X509_get_signature_nid(cert), &md_nid, &pk_nid) == 1) {
		if (md_nid == NID_md5 || md_nid == NID_sha1)
			md_nid = NID_sha256;
		if (md_nid != NID_undef)
			md = EVP_get_digestbynid(md_nid);
	}
	if (md != NULL && X509_digest(cert, md, out, &n) == 1 && n > 0) {
		*len = n;
		r = 0;
	}
	X509_free(cert);
	return r;
}

static void
on_close_cb(uv_handle_t *h)
{
	struct sl_stream *s = h->data;

	if (s->ssl != NULL)
		SSL_free(s->ssl); /* frees the BIOs too */
	s->ssl = NULL;
	free(s->tlsbuf);
	s->tlsbuf = NULL;
	sl_buf_fini(&s->out);
	if (s->ops->on_close)
		s->ops->on_close(s);
}

void
sl_stream_close(struct sl_stream *s)
{
	if (s->closing)
		return;
	s->closing = 1;
	s->reading = 0;
	if (s->tls && s->tls_ready) {
		SSL_shutdown(s->ssl);
		drain_wbio(s);
		if (sl_buf_unread(&s->out) > 0 && s->queued == 0) {
			uv_buf_t b = uv_buf_init((char *)sl_buf_head(&s->out),
						 (unsigned)sl_buf_unread(&s->out));
			uv_try_write((uv_stream_t *)&s->tcp, &b, 1);
		}
	}
	uv_close((uv_handle_t *)&s->tcp, on_close_cb);
}

/* ------------------------------------------------------------ addresses */

int
sl_net_split(const char *hostport, char *host, size_t hostlen, int *port)
{
	const char *colon;
	const char *h = hostport;
	size_t hl;
	char *end;
	long p;

	if (hostport == NULL)
		return SL_EINVAL;
	if (*h == '[') {
		const char *rb = strchr(h, ']');

		if (rb == NULL || rb[1] != ':')
			return SL_EINVAL;
		h++;
		hl = (size_t)(rb - h);
		colon = rb + 1;
	} else {
		colon = strrchr(h, ':');
		if (colon == NULL)
			return SL_EINVAL;
		hl = (size_t)(colon - h);
	}
	if (hl == 0 || hl >= hostlen)
		return SL_EINVAL;
	p = strtol(colon + 1, &end, 10);
	if (*end != '\0' || end == colon + 1 || p < 0 || p > 65535)
		return SL_EINVAL;
	memcpy(host, h, hl);
	host[hl] = '\0';
	*port = (int)p;
	return 0;
}

int
sl_net_parse_addr(const char *hostport, struct sockaddr_storage *ss)
{
	char host[256];
	int port;

	if (sl_net_split(hostport, host, sizeof(host), &port) != 0)
		return SL_EINVAL;
	memset(ss, 0, sizeof(*ss));
	if (uv_ip4_addr(host, port, (struct sockaddr_in *)ss) == 0)
		return 0;
	if (uv_ip6_addr(host, port, (struct sockaddr_in6 *)ss) == 0)
		return 0;
	return SL_EINVAL;
}

int
sl_net_resolve(const char *hostport, struct sockaddr_storage *ss)
{
	struct addrinfo hints, *res = NULL;
	char host[256], port_s[16];
	int port;

	if (sl_net_parse_addr(hostport, ss) == 0)
		return 0;
	if (sl_net_split(hostport, host, sizeof(host), &port) != 0)
		return SL_EINVAL;
	snprintf(port_s, sizeof(port_s), "%d", port);
	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	if (getaddrinfo(host, port_s, &hints, &res) != 0 || res == NULL)
		return SL_ENOENT;
	memset(ss, 0, sizeof(*ss));
	memcpy(ss, res->ai_addr, res->ai_addrlen);
	freeaddrinfo(res);
	return 0;
}

int
sl_net_is_loopback(const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;

		return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
	}
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;

		return IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr);
	}
	return 0;
}

void
sl_net_addr_str(const struct sockaddr *sa, char *buf, size_t len)
{
	char ip[INET6_ADDRSTRLEN] = "?";
	int port = 0;

	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;

		inet_ntop(AF_INET, &in->sin_addr, ip, sizeof(ip));
		port = ntohs(in->sin_port);
		snprintf(buf, len, "%s:%d", ip, port);
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;

		inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof(ip));
		port = ntohs(in6->sin6_port);
		snprintf(buf, len, "[%s]:%d", ip, port);
	} else {
		snprintf(buf, len, "unix");
	}
}

int
sl_net_listen_fd(const struct sockaddr *addr, int backlog)
{
	int fd, one = 1, e;
	socklen_t alen = addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
						     : sizeof(struct sockaddr_in);

	fd = socket(addr->sa_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
	if (bind(fd, addr, alen) != 0 || listen(fd, backlog) != 0) {
		e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}
