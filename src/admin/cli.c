/*
 * cli.c - `sluice review list|show|approve|deny|wait` over the admin API
 * (libcurl). The token is the caller's own: SLUICE_TOKEN or --token-file.
 */
#include "sluice/review.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <arpa/inet.h>

#include <curl/curl.h>
#include <openssl/crypto.h>

struct resp {
	struct sl_buf b;
	int too_big; /* the answer did not fit the buffer's bound */
};

static size_t
collect(char *p, size_t sz, size_t n, void *arg)
{
	struct resp *r = arg;

	if (sl_buf_append(&r->b, p, sz * n) == 0)
		return sz * n;
	r->too_big = 1;
	return 0;
}

static const char *cacert; /* --cacert: the CA of an https:// admin URL */

/* Whether url is plain http:// to a host other than this one: the bearer
 * token would cross a network in the clear. This host: localhost, [::1],
 * 0.0.0.0 or an IPv4 address in 127.0.0.0/8 (not a name that merely starts
 * with "127."). */
static int
cleartext_off_host(const char *url)
{
	char host[256];
	struct in_addr a;
	size_t n, alen;
	const char *at;

	if (strncasecmp(url, "https://", 8) == 0)
		return 0;
	if (strncasecmp(url, "http://", 7) != 0)
		return 1; /* no scheme: curl would take it as http:// */
	url += 7;
	/* the host is after any user info (user:pass@), before the path */
	alen = strcspn(url, "/?#");
	for (at = url + alen; at > url && at[-1] != '@'; at--)
		;
	url = at;
	n = url[0] == '[' ? strcspn(url, "]") + 1 : strcspn(url, ":/?#");
	if (n >= sizeof(host) || (url[0] == '[' && url[n - 1] != ']'))
		return 1;
	memcpy(host, url, n);
	host[n] = '\0';
	if (strcasecmp(host, "localhost") == 0 || strcmp(host, "[::1]") == 0 ||
	    strcmp(host, "0.0.0.0") == 0)
		return 0;
	return !(inet_pton(AF_INET, host, &a) == 1 && (ntohl(a.s_addr) >> 24) == 127);
}

/* Performs one request; returns the HTTP status (0 on transport failure). */
static long
call(const char *url, const char *token, const char *method, const char *body, struct resp *out)
{
	CURL *c = curl_easy_init();
	struct curl_slist *h = NULL;
	char auth[SL_JWT_MAX + 32];
	long code = 0;

	if (c == NULL)
		return 0;
	snprintf(auth, sizeof(auth), "Authorization: Bearer %s", token);
	h = curl_slist_append(h, auth);
	h = curl_slist_append(h, "Content-Type: application/json");
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	if (cacert != NULL)
		curl_easy_setopt(c, CURLOPT_CAINFO, cacert);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 10000L);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, out);
	if (strcmp(method, "POST") == 0)
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, body ? body : "{}");
	if (curl_easy_perform(c) == CURLE_OK)
		curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
	curl_slist_free_all(h);
	curl_easy_cleanup(c);
	OPENSSL_cleanse(auth, sizeof(auth));
	return code;
}

static char *
read_token(const char *file)
{
	char *t = NULL;
	size_t n;

	if (file != NULL) {
		if (sl_read_file(file, SL_JWT_MAX, &t, &n) != 0)
			return NULL;
		while (n > 0 && (t[n - 1] == '\n' || t[n - 1] == '\r' || t[n - 1] == ' '))
			t[--n] = '\0';
		return t;
	}
	return getenv("SLUICE_TOKEN") ? strdup(getenv("SLUICE_TOKEN")) : NULL;
}

/* Field k of r, terminal-safe: what a review shows comes from the agent (its
 * statement text above all) and must not be able to rewrite what the
 * approver sees. */
static void
put(json_t *r, const char *k, size_t max)
{
	sl_fput_safe_cut(stdout, json_string_value(json_object_get(r, k)), max);
}

static void
print_review(json_t *r)
{
	json_t *v;
	const char *text = json_string_value(json_object_get(r, "text"));
	size_t i;

	put(r, "id", 64);
	fputs("  ", stdout);
	put(r, "status", 16);
	fputs("  ", stdout);
	put(r, "subject", 200);
	fputs(" on ", stdout);
	put(r, "connection", 200);
	fputs("  [", stdout);
	put(r, "kind", 200);
	printf("]  approvals %zu/%lld\n    ", json_array_size(json_object_get(r, "approvals")),
	       (long long)json_integer_value(json_object_get(r, "min_approvals")));
	if (text != NULL)
		sl_fput_safe(stdout, text, strlen(text), "    ");
	fputs("\n  hash ", stdout);
	put(r, "request_hash", 80);
	if (json_object_get(r, "reason") != NULL) {
		fputs("  reason: ", stdout);
		put(r, "reason", 500);
	}
	json_array_foreach(json_object_get(r, "approvals"), i, v)
	{
		fputs(i ? ", " : "  approved by ", stdout);
		sl_fput_safe_cut(stdout, json_string_value(v), 200);
	}
	printf("\n");
}

int
sl_review_cli(int argc, char **argv, const struct sl_config *cfg)
{
	const char *url = NULL, *token_file = NULL, *reason = NULL, *expect = NULL, *status = NULL;
	const char *id = NULL, *sub = argv[0];
	char base[512], u[1024], *token;
	int64_t wait_ms = 300000;
	struct resp r = {0};
	long code;
	int rc = 1;

	for (int i = 1; i < argc; i++) {
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;

		if (strcmp(argv[i], "--url") == 0 && v)
			url = v, i++;
		else if (strcmp(argv[i], "--cacert") == 0 && v)
			cacert = v, i++;
		else if (strcmp(argv[i], "--token-file") == 0 && v)
			token_file = v, i++;
		else if (strcmp(argv[i], "--reason") == 0 && v)
			reason = v, i++;
		else if (strcmp(argv[i], "--expect-hash") == 0 && v)
			expect = v, i++;
		else if (strcmp(argv[i], "--status") == 0 && v)
			status = v, i++;
		else if (strcmp(argv[i], "--timeout") == 0 && v) {
			if (sl_parse_duration_ms(v, &wait_ms) != 0)
				return 2;
			i++;
		} else if (argv[i][0] != '-' && id == NULL)
			id = argv[i];
		else {
			fprintf(stderr, "sluice review: unknown argument %s\n", argv[i]);
			return 2;
		}
	}
	if (url == NULL) {
		if (cfg->gateway.admin.listen == NULL) {
			fprintf(stderr, "sluice review: no gateway.admin.listen and no --url\n");
			return 2;
		}
		snprintf(base, sizeof(base), "http://%s", cfg->gateway.admin.listen);
		url = base;
	} else if (cleartext_off_host(url)) {
		fprintf(stderr,
			"sluice review: %s is not https:// nor plain HTTP to this host: your token "
			"would cross the network in the clear; use https:// (the TLS proxy in "
			"front "
			"of the admin API, --cacert FILE for its CA)\n",
			url);
		return 2;
	}
	if (strcmp(sub, "list") != 0 && id == NULL) {
		fprintf(stderr, "sluice review %s: a review id is required\n", sub);
		return 2;
	}
	token = read_token(token_file);
	if (token == NULL) {
		fprintf(stderr, "sluice review: set SLUICE_TOKEN or pass --token-file\n");
		return 2;
	}
	sl_buf_init(&r.b, 1 << 24);
	if (strcmp(sub, "list") == 0) {
		json_t *o, *v;
		size_t i;

		snprintf(u, sizeof(u), "%s/api/reviews%s%s", url, status ? "?status=" : "",
			 status ? status : "");
		code = call(u, token, "GET", NULL, &r);
		o = code == 200 ? json_loadb((const char *)r.b.data, r.b.len, 0, NULL) : NULL;
		if (o) {
			json_array_foreach(json_object_get(o, "reviews"), i, v) print_review(v);
			rc = 0;
		}
		json_decref(o);
	} else if (strcmp(sub, "show") == 0 || strcmp(sub, "wait") == 0) {
		int64_t end = sl_mono_us() + wait_ms * 1000;

		snprintf(u, sizeof(u), "%s/api/reviews/%s", url, id);
		for (;;) {
			json_t *o;
			const char *st;

			r.b.len = 0;
			code = call(u, token, "GET", NULL, &r);
			o = code == 200 ? json_loadb((const char *)r.b.data, r.b.len, 0, NULL)
					: NULL;
			st = json_string_value(json_object_get(o, "status"));
			if (o && (strcmp(sub, "show") == 0 || (st && strcmp(st, "pending") != 0) ||
				  sl_mono_us() > end)) {
				print_review(o);
				rc = strcmp(sub, "show") == 0 || (st && strcmp(st, "approved") == 0)
					     ? 0
					     : 1;
				json_decref(o);
				break;
			}
			json_decref(o);
			if (o == NULL)
				break;
			usleep(200000);
		}
	} else if (strcmp(sub, "approve") == 0 || strcmp(sub, "deny") == 0) {
		json_t *b = json_object();
		char *body;

		if (reason)
			json_object_set_new(b, "reason", json_string(reason));
		if (expect)
			json_object_set_new(b, "expect_hash", json_string(expect));
		body = json_dumps(b, JSON_COMPACT);
		json_decref(b);
		snprintf(u, sizeof(u), "%s/api/reviews/%s/%s", url, id, sub);
		code = call(u, token, "POST", body, &r);
		free(body);
		if (code == 200) {
			json_t *o = json_loadb((const char *)r.b.data, r.b.len, 0, NULL);

			if (o)
				print_review(o);
			json_decref(o);
			rc = 0;
		}
	} else {
		fprintf(stderr,
			"sluice review: unknown subcommand %s (list, show, approve, deny, wait)\n",
			sub);
		rc = 2;
		code = 200;
	}
	if (rc == 1 && code != 200) {
		json_t *o = json_loadb((const char *)r.b.data, r.b.len, 0, NULL);

		fprintf(stderr, "sluice review %s: HTTP %ld: %s\n", sub, code,
			o	    ? json_string_value(json_object_get(o, "error"))
			: r.too_big ? "the answer is larger than 16 MiB (many large held "
				      "statements?); use --status pending, or show one by id"
			: code	    ? "unexpected answer"
				    : "cannot reach the admin API");
		json_decref(o);
	}
	OPENSSL_cleanse(token, strlen(token));
	free(token);
	sl_buf_fini(&r.b);
	return rc;
}
