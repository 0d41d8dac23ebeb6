/* url_policy.c - strict URL parsing, the scheme/host allowlist and the
 * classification of resolved addresses that keeps fetches off internal networks. */
#include "url_policy.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

static int is_unreserved(int c) { return isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~'; }
static int is_sub_delim(int c) { return c && strchr("!$&'()*+,;=", c) != NULL; }
static int is_hex(int c) { return isxdigit(c) != 0; }

static int default_port(const char *scheme) {
    if (!strcmp(scheme, "https")) return 443;
    if (!strcmp(scheme, "http")) return 80;
    return 0;
}

/* Host names: labels of letters, digits, '-' and '_' (some storage hosts use
 * it), 1 to 63 bytes, at most 253 in all. Numeric forms ("127.1", "0x7f.1")
 * pass here on purpose: the address check sees what they resolve to. */
static int host_name_ok(const char *h) {
    size_t n = strlen(h), label = 0;
    if (n == 0 || n > 253 || h[0] == '.' || h[0] == '-') return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)h[i];
        if (c == '.') {
            if (label == 0) return 0;
            label = 0;
        } else if (isalnum(c) || c == '-' || c == '_') {
            if (++label > 63) return 0;
        } else {
            return 0;
        }
    }
    return 1;
}

int pf_url_parse(pf_url *out, const char *url, pf_error *err) {
    memset(out, 0, sizeof *out);
    size_t len = strlen(url);
    if (len == 0) return pf_fail(err, "empty URL");
    if (len >= PF_URL_MAX) return pf_fail(err, "URL longer than %d bytes", PF_URL_MAX - 1);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)url[i];
        if (c <= 0x20 || c >= 0x7f)
            return pf_fail(err, "URL has a space, control or non-ASCII byte (0x%02x) at offset %zu", c, i);
    }
    /* scheme */
    size_t i = 0;
    if (!isalpha((unsigned char)url[0])) return pf_fail(err, "URL must start with a scheme such as https://");
    while (i < len && (isalnum((unsigned char)url[i]) || url[i] == '+' || url[i] == '-' || url[i] == '.')) i++;
    if (i >= sizeof out->scheme || strncmp(url + i, "://", 3))
        return pf_fail(err, "URL must start with a scheme such as https://");
    for (size_t k = 0; k < i; k++) out->scheme[k] = (char)tolower((unsigned char)url[k]);
    i += 3;
    /* authority: up to the path */
    size_t a0 = i;
    while (i < len && url[i] != '/' && url[i] != '?' && url[i] != '#') i++;
    size_t a1 = i;
    if (memchr(url + a0, '@', a1 - a0))
        return pf_fail(err, "URL must not carry user name or password (use a token from the credentials)");
    const char *port_at = NULL;
    if (a0 < a1 && url[a0] == '[') {
        const char *close = memchr(url + a0, ']', a1 - a0);
        if (!close) return pf_fail(err, "URL has an unterminated IPv6 address");
        size_t hl = (size_t)(close - (url + a0 + 1));
        if (hl == 0 || hl >= sizeof out->host) return pf_fail(err, "URL has an empty or too long IPv6 address");
        for (size_t k = 0; k < hl; k++) {
            char c = url[a0 + 1 + k];
            if (!(is_hex((unsigned char)c) || c == ':' || c == '.'))
                return pf_fail(err, "URL has an invalid IPv6 address (zone ids are not accepted)");
            out->host[k] = (char)tolower((unsigned char)c);
        }
        struct in6_addr probe;
        if (inet_pton(AF_INET6, out->host, &probe) != 1) return pf_fail(err, "URL has an invalid IPv6 address");
        const char *after = close + 1;
        if (after < url + a1) {
            if (*after != ':') return pf_fail(err, "URL has junk after its IPv6 address");
            port_at = after + 1;
        }
    } else {
        const char *colon = memchr(url + a0, ':', a1 - a0);
        size_t hl = (colon ? (size_t)(colon - url) : a1) - a0;
        if (hl == 0) {
            if (!strcmp(out->scheme, "file") && !colon) goto path; /* file:///path */
            return pf_fail(err, "URL has no host");
        }
        if (hl >= sizeof out->host) return pf_fail(err, "URL host is longer than %zu bytes", sizeof out->host - 1);
        for (size_t k = 0; k < hl; k++) out->host[k] = (char)tolower((unsigned char)url[a0 + k]);
        if (!host_name_ok(out->host)) return pf_fail(err, "URL host '%s' is not a valid host name", out->host);
        if (colon) port_at = colon + 1;
    }
    if (port_at) {
        size_t pl = (size_t)(url + a1 - port_at);
        long port = 0;
        if (pl == 0 || pl > 5) return pf_fail(err, "URL has an invalid port");
        for (size_t k = 0; k < pl; k++) {
            if (!isdigit((unsigned char)port_at[k])) return pf_fail(err, "URL has an invalid port");
            port = port * 10 + (port_at[k] - '0');
        }
        if (port < 1 || port > 65535) return pf_fail(err, "URL port %ld is outside 1..65535", port);
        out->port = (int)port;
        out->port_explicit = 1;
    } else {
        out->port = default_port(out->scheme);
    }
path:
    if (i < len && url[i] == '#') return pf_fail(err, "URL must not have a fragment ('#')");
    size_t p = 0;
    if (i == len || url[i] != '/') out->path[p++] = '/';
    for (; i < len; i++) {
        unsigned char c = (unsigned char)url[i];
        if (c == '#') return pf_fail(err, "URL must not have a fragment ('#')");
        if (c == '%') {
            if (i + 2 >= len || !is_hex((unsigned char)url[i + 1]) || !is_hex((unsigned char)url[i + 2]))
                return pf_fail(err, "URL has a '%%' not followed by two hex digits at offset %zu", i);
        } else if (!(is_unreserved(c) || is_sub_delim(c) || c == ':' || c == '@' || c == '/' || c == '?')) {
            return pf_fail(err, "URL has a character ('%c') that must be percent-encoded at offset %zu", c, i);
        }
        out->path[p++] = (char)c;
    }
    out->path[p] = '\0';
    return 0;
}

int pf_url_format(char *out, size_t n, const pf_url *u, pf_error *err) {
    int v6 = strchr(u->host, ':') != NULL;
    int w;
    if (u->port_explicit)
        w = snprintf(out, n, "%s://%s%s%s:%d%s", u->scheme, v6 ? "[" : "", u->host, v6 ? "]" : "", u->port, u->path);
    else
        w = snprintf(out, n, "%s://%s%s%s%s", u->scheme, v6 ? "[" : "", u->host, v6 ? "]" : "", u->path);
    if (w < 0 || (size_t)w >= n) return pf_fail(err, "URL longer than %zu bytes", n - 1);
    return 0;
}

void pf_url_for_log(char *out, size_t n, const pf_url *u) {
    char path[512];
    const char *q = strchr(u->path, '?');
    size_t pl = q ? (size_t)(q - u->path) : strlen(u->path);
    if (pl > 400) pl = 400; /* a log line names the file, it need not carry all of a hostile path */
    snprintf(path, sizeof path, "%.*s%s", (int)pl, u->path, q ? "?..." : "");
    int v6 = strchr(u->host, ':') != NULL;
    if (u->port_explicit)
        snprintf(out, n, "%s://%s%s%s:%d%s", u->scheme, v6 ? "[" : "", u->host, v6 ? "]" : "", u->port, path);
    else
        snprintf(out, n, "%s://%s%s%s%s", u->scheme, v6 ? "[" : "", u->host, v6 ? "]" : "", path);
}

int pf_url_host_listed(const char *host, const char *list) {
    size_t hl = strlen(host);
    for (const char *p = list; *p;) {
        while (*p == ',' || *p == ' ') p++;
        const char *e = p;
        while (*e && *e != ',' && *e != ' ') e++;
        size_t n = (size_t)(e - p);
        if (n) {
            if (p[0] == '.') { /* ".example.com": the domain and its subdomains */
                if ((hl == n - 1 && !strncasecmp(host, p + 1, n - 1)) ||
                    (hl > n && !strncasecmp(host + hl - n, p, n)))
                    return 1;
            } else if (hl == n && !strncasecmp(host, p, n)) {
                return 1;
            }
        }
        p = e;
    }
    return 0;
}

int pf_url_check(const pf_url *u, const pf_url_policy *p, pf_error *err) {
    if (!strcmp(u->scheme, "https")) {
    } else if (!strcmp(u->scheme, "http")) {
        if (!p->allow_http) return pf_fail(err, "refused: plain http:// is not allowed (https only)");
    } else {
        return pf_fail(err, "refused: scheme '%s://' is not allowed (https%s only)", u->scheme,
                       p->allow_http ? " and http" : "");
    }
    if (p->allow_hosts && *p->allow_hosts && !pf_url_host_listed(u->host, p->allow_hosts))
        return pf_fail(err, "refused: host '%s' is not in the allowed hosts", u->host);
    return 0;
}

int pf_url_same_origin(const pf_url *a, const pf_url *b) {
    return !strcmp(a->scheme, b->scheme) && !strcmp(a->host, b->host) && a->port == b->port;
}

static const char *v4_class(uint32_t a) {
    if ((a >> 24) == 0) return "unspecified (0.0.0.0/8)";
    if ((a >> 24) == 10) return "private";
    if ((a & 0xffc00000u) == 0x64400000u) return "shared (carrier-grade NAT, cloud metadata)"; /* 100.64/10 */
    if ((a >> 24) == 127) return "loopback";
    if (a == 0xa9fea9feu) return "cloud metadata";                                      /* 169.254.169.254 */
    if ((a >> 16) == 0xa9fe) return "link-local";                                        /* 169.254/16 */
    if ((a & 0xfff00000u) == 0xac100000u) return "private";                              /* 172.16/12 */
    if ((a & 0xffffff00u) == 0xc0000000u) return "IETF protocol assignment";             /* 192.0.0/24 */
    if ((a & 0xffffff00u) == 0xc0000200u || (a & 0xffffff00u) == 0xc6336400u ||
        (a & 0xffffff00u) == 0xcb007100u)
        return "documentation";                                                          /* TEST-NET-1..3 */
    if ((a & 0xffffff00u) == 0xc0586300u) return "6to4 relay";                           /* 192.88.99/24 */
    if ((a >> 16) == 0xc0a8) return "private";                                           /* 192.168/16 */
    if ((a & 0xfffe0000u) == 0xc6120000u) return "benchmarking";                         /* 198.18/15 */
    if ((a >> 28) == 0xe) return "multicast";                                            /* 224/4 */
    if ((a >> 28) == 0xf) return "reserved";                                             /* 240/4, broadcast */
    return NULL;
}

static uint32_t v4_at(const unsigned char *b) {
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

static const char *v6_class(const unsigned char *b) {
    static const unsigned char zero[16];
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    static const unsigned char nat64[12] = {0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};
    if (!memcmp(b, zero, 15)) return b[15] == 1 ? "loopback" : b[15] == 0 ? "unspecified" : "reserved";
    if (!memcmp(b, mapped, 12) || !memcmp(b, nat64, 12)) return v4_class(v4_at(b + 12));
    if (!memcmp(b, zero, 12)) return "reserved (IPv4-compatible)";
    if (b[0] == 0x20 && b[1] == 0x02) return v4_class(v4_at(b + 2)); /* 6to4 embeds the IPv4 router */
    if (b[0] == 0x00 && b[1] == 0x64 && b[2] == 0xff && b[3] == 0x9b) return "reserved (local NAT64)";
    if (b[0] == 0x01 && b[1] == 0x00 && !memcmp(b + 2, zero, 6)) return "discard-only";   /* 100::/64 */
    if (b[0] == 0x20 && b[1] == 0x01 && b[2] < 0x02) return "IETF protocol assignment";   /* 2001::/23 */
    if (b[0] == 0x20 && b[1] == 0x01 && b[2] == 0x0d && b[3] == 0xb8) return "documentation";
    if ((b[0] & 0xfe) == 0xfc) return "private (unique local)";                           /* fc00::/7 */
    if (b[0] == 0xfe && (b[1] & 0xc0) == 0x80) return "link-local";                       /* fe80::/10 */
    if (b[0] == 0xfe && (b[1] & 0xc0) == 0xc0) return "site-local";                       /* fec0::/10 */
    if (b[0] == 0xff) return "multicast";
    return NULL;
}

const char *pf_url_addr_class(const struct sockaddr *addr) {
    if (addr->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)addr;
        return v4_class(ntohl(s4->sin_addr.s_addr));
    }
    if (addr->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)addr;
        return v6_class(s6->sin6_addr.s6_addr);
    }
    return "unsupported address family";
}

int pf_url_addr_allowed(const struct sockaddr *addr, const pf_url_policy *p, char *why, size_t n) {
    if (addr->sa_family != AF_INET && addr->sa_family != AF_INET6) {
        snprintf(why, n, "address family %d is not IP", addr->sa_family);
        return 0;
    }
    const char *cls = pf_url_addr_class(addr);
    if (!cls || p->allow_private) return 1;
    char text[INET6_ADDRSTRLEN] = "?";
    if (addr->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)addr)->sin_addr, text, sizeof text);
    else
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)addr)->sin6_addr, text, sizeof text);
    snprintf(why, n, "%s is not a public address (%s)", text, cls);
    return 0;
}
