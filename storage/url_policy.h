/* url_policy.h - which URLs the fetcher may touch: a strict URL parser, a
 * scheme and host allowlist, and the address check against server-side request
 * forgery (SSRF).
 *
 * Model URLs come from jobs, and redirects from servers: both hostile. The
 * address check runs on the address actually being connected to (the fetcher
 * calls pf_url_addr_class from libcurl's socket-open hook, for every
 * connection including redirects), so a host name that resolves to 127.0.0.1,
 * a rebinding DNS server or a numeric trick such as http://2130706433/ gets no
 * further than a name that says 127.0.0.1 outright.
 *
 * Parsing is deliberately narrower than RFC 3986 (no user info, no fragments,
 * no IPv6 zone ids, only printable ASCII), and the fetcher hands libcurl the
 * URL as pf_url_format rebuilds it, so libcurl connects to the very host that
 * the allowlist saw. */
#ifndef PF_URL_POLICY_H
#define PF_URL_POLICY_H

#include <stddef.h>
#include <sys/socket.h>

#include "error.h"

#define PF_URL_MAX 4096

typedef struct pf_url {
    char scheme[16];        /* lower case: "https", "http", "file", "s3", ... */
    char host[256];         /* lower case; an IPv6 address without its brackets */
    int port;               /* explicit, or the scheme's default (443, 80); 0 when none */
    int port_explicit;      /* the URL named the port */
    char path[PF_URL_MAX];  /* from the first '/' on, query included; "/" at least */
} pf_url;

typedef struct pf_url_policy {
    int allow_http;          /* plain http:// besides https:// (development, private mirrors) */
    int allow_private;       /* loopback, private, link-local, metadata ... addresses (development) */
    const char *allow_hosts; /* comma-separated host names, ".example.com" also matching its
                                subdomains; NULL or "" allows any host name */
} pf_url_policy;

/* Parses url (at most PF_URL_MAX - 1 bytes). Error, naming what is wrong but
 * not echoing the whole URL, on anything outside the narrow grammar above. */
int pf_url_parse(pf_url *out, const char *url, pf_error *err);
/* Writes scheme://host[:port]path, the canonical form, into out (n bytes);
 * error when it does not fit. */
int pf_url_format(char *out, size_t n, const pf_url *u, pf_error *err);
/* A form for logs and errors: scheme://host[:port]/path with the query string
 * replaced by "?..." (signed URLs carry tokens there). Never fails; truncates. */
void pf_url_for_log(char *out, size_t n, const pf_url *u);
/* Checks the scheme (https, or http when allowed) and the host allowlist. The
 * address check comes later, at connect time. */
int pf_url_check(const pf_url *u, const pf_url_policy *p, pf_error *err);
/* 1 when host matches an entry of list: comma- or space-separated host
 * names, ".example.com" matching the domain and its subdomains; 0 for an
 * empty list. Used for the allowlist and for the hosts a token may go to. */
int pf_url_host_listed(const char *host, const char *list);
/* 1 when both URLs name the same scheme, host and port (a bearer token goes
 * only back to the origin it was meant for). */
int pf_url_same_origin(const pf_url *a, const pf_url *b);

/* The special-purpose range addr lies in ("loopback", "private", "link-local",
 * "cloud metadata", "multicast", ...), or NULL for an ordinary public unicast
 * address. IPv4 embedded in IPv6 (mapped, NAT64, 6to4) is judged as IPv4.
 * Unknown address families are "unsupported address family". */
const char *pf_url_addr_class(const struct sockaddr *addr);
/* 1 when the policy lets the fetcher connect to addr; else 0 with the reason
 * ("127.0.0.1 is not a public address (loopback)") in why (n bytes). */
int pf_url_addr_allowed(const struct sockaddr *addr, const pf_url_policy *p, char *why, size_t n);

#endif
