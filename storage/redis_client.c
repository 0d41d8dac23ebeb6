/* redis_client.c - a Redis connection over TCP, a unix socket or TLS, with
 * AUTH, speaking RESP through hiredis' formatter and reader (redis_client.h).
 *
 * Every socket operation is bounded by the timeout: connect() runs
 * non-blocking and is polled, then SO_RCVTIMEO / SO_SNDTIMEO bound each read
 * and write (TLS reads and writes go through the same socket). */
#include "redis_client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "credentials.h"

struct pf_rconn {
    pf_redis_addr a;
    char *password;     /* NULL: no AUTH */
    long timeout_ms;
    SSL_CTX *ctx;       /* TLS settings, made once */
    /* the connection */
    int fd;             /* -1 while disconnected */
    SSL *ssl;
    redisReader *reader;
    int config_error;
};

/* ---- errors ----------------------------------------------------------------- */

/* The first queued OpenSSL error as text (or fallback), queue emptied. */
static void ssl_reason(char *out, size_t n, const char *fallback) {
    unsigned long e = ERR_get_error();
    if (e) ERR_error_string_n(e, out, n);
    else snprintf(out, n, "%s", fallback);
    ERR_clear_error();
}

static int cfail(pf_rconn *c, int config, pf_error *err, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int cfail(pf_rconn *c, int config, pf_error *err, const char *fmt, ...) {
    char msg[sizeof err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    c->config_error = config;
    pf_rconn_disconnect(c);
    pf_fail(err, "redis %s: %s", c->a.shown, msg);
    pf_secret_scrub(err->msg, sizeof err->msg);
    return -1;
}

/* ---- opening ---------------------------------------------------------------- */

static int parse_port(const char *s, int *port) {
    char *end;
    long p = strtol(s, &end, 10);
    if (!*s || *end || p < 1 || p > 65535) return -1;
    *port = (int)p;
    return 0;
}

int pf_redis_addr_parse(pf_redis_addr *c, const char *addr, pf_error *err) {
    memset(c, 0, sizeof *c);
    if (!strncmp(addr, "unix:", 5)) {
        if (!addr[5] || strlen(addr + 5) >= sizeof c->host || strlen(addr + 5) >= sizeof(((struct sockaddr_un *)0)->sun_path))
            return pf_fail(err, "redis address '%.300s': bad socket path", addr);
        snprintf(c->host, sizeof c->host, "%s", addr + 5);
        snprintf(c->shown, sizeof c->shown, "%s", addr);
        return 0;
    }
    const char *hp = addr;
    int url = 0;
    if (!strncmp(addr, "rediss://", 9)) {
        c->tls = url = 1;
        hp = addr + 9;
    } else if (!strncmp(addr, "redis://", 8)) {
        url = 1;
        hp = addr + 8;
    }
    if (url) {
        const char *at = strchr(hp, '@');
        if (at) {
            const char *colon = memchr(hp, ':', (size_t)(at - hp));
            if (colon) {
                /* Still a secret: whoever prints the address (a log line
                 * naming it) must not show it. */
                char pw[256];
                snprintf(pw, sizeof pw, "%.*s", (int)(at - colon - 1 < 255 ? at - colon - 1 : 255), colon + 1);
                pf_secret_register(pw);
                OPENSSL_cleanse(pw, sizeof pw);
                return pf_fail(err, "redis address: a password does not belong in the address; put it in "
                                    "$CREDENTIALS_DIRECTORY/redis_password (or PERFLOW_REDIS_PASSWORD)");
            }
            if (at == hp || (size_t)(at - hp) >= sizeof c->user)
                return pf_fail(err, "redis address: the user name before '@' must be 1 to %zu bytes", sizeof c->user - 1);
            snprintf(c->user, sizeof c->user, "%.*s", (int)(at - hp), hp);
            for (const char *q = c->user; *q; q++)
                if ((unsigned char)*q <= 0x20 || *q == 0x7f) return pf_fail(err, "redis address: bad user name");
            hp = at + 1;
        }
        size_t n = strlen(hp);
        if (n && hp[n - 1] == '/') n--; /* "rediss://host:6380/" */
        if (memchr(hp, '/', n)) return pf_fail(err, "redis address '%.300s': no path or database may follow the port", addr);
        char buf[300];
        if (n >= sizeof buf) return pf_fail(err, "redis address is too long");
        snprintf(buf, sizeof buf, "%.*s", (int)n, hp);
        const char *colon = strrchr(buf, ':');
        if (colon && strchr(buf, ']') > colon) colon = NULL; /* [::1] without a port */
        if (colon) {
            if (parse_port(colon + 1, &c->port)) return pf_fail(err, "redis address '%.300s': bad port", addr);
            snprintf(c->host, sizeof c->host, "%.*s", (int)(colon - buf), buf);
        } else {
            c->port = 6379;
            snprintf(c->host, sizeof c->host, "%s", buf);
        }
    } else {
        const char *colon = strrchr(addr, ':');
        if (!colon || colon == addr || (size_t)(colon - addr) >= sizeof c->host || parse_port(colon + 1, &c->port))
            return pf_fail(err, "redis address '%.300s' must be host:port, unix:/path, redis://[user@]host:port or "
                                "rediss://[user@]host[:port]", addr);
        snprintf(c->host, sizeof c->host, "%.*s", (int)(colon - addr), addr);
    }
    /* [v6]: the brackets are the address' syntax, not its name */
    size_t hl = strlen(c->host);
    if (hl >= 2 && c->host[0] == '[' && c->host[hl - 1] == ']') {
        memmove(c->host, c->host + 1, hl - 2);
        c->host[hl - 2] = '\0';
    }
    if (!c->host[0]) return pf_fail(err, "redis address '%.300s': no host", addr);
    snprintf(c->shown, sizeof c->shown, "%s%s%s%s:%d", c->tls ? "rediss://" : "", c->user, c->user[0] ? "@" : "",
             c->host, c->port);
    return 0;
}

static int make_tls_context(pf_rconn *c, pf_error *err) {
    const char *ca = getenv("PERFLOW_REDIS_CA");
    if (!ca || !*ca) ca = getenv("PERFLOW_CA_BUNDLE");
    const char *cert = getenv("PERFLOW_REDIS_TLS_CERT"), *key = getenv("PERFLOW_REDIS_TLS_KEY");
    char why[256];
    c->ctx = SSL_CTX_new(TLS_client_method());
    if (!c->ctx) {
        ssl_reason(why, sizeof why, "out of memory");
        return pf_fail(err, "redis %s: TLS: %s", c->a.shown, why);
    }
    SSL_CTX_set_min_proto_version(c->ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, NULL);
    int ok = ca && *ca ? SSL_CTX_load_verify_locations(c->ctx, ca, NULL) : SSL_CTX_set_default_verify_paths(c->ctx);
    if (ok != 1) {
        ssl_reason(why, sizeof why, "unreadable");
        return pf_fail(err, "redis %s: TLS CA certificates %s: %s", c->a.shown, ca && *ca ? ca : "(system)", why);
    }
    if ((cert && *cert) != (key && *key))
        return pf_fail(err, "redis %s: PERFLOW_REDIS_TLS_CERT and PERFLOW_REDIS_TLS_KEY go together", c->a.shown);
    if (cert && *cert) {
        if (SSL_CTX_use_certificate_chain_file(c->ctx, cert) != 1 ||
            SSL_CTX_use_PrivateKey_file(c->ctx, key, SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(c->ctx) != 1) {
            ssl_reason(why, sizeof why, "unreadable");
            return pf_fail(err, "redis %s: TLS client certificate %s / key %s: %s", c->a.shown, cert, key, why);
        }
    }
    return 0;
}

int pf_rconn_open(pf_rconn **out, const char *addr, long timeout_ms, pf_error *err) {
    *out = NULL;
    pf_rconn *c = PF_CALLOC(1, sizeof *c);
    c->fd = -1;
    c->timeout_ms = timeout_ms > 0 ? timeout_ms : 1000;
    if (pf_redis_addr_parse(&c->a, addr, err) || pf_credential_secret(&c->password, "redis_password", "PERFLOW_REDIS_PASSWORD", err) ||
        (c->a.tls && make_tls_context(c, err))) {
        pf_rconn_close(c);
        return -1;
    }
    if (c->a.user[0] && !c->password) {
        pf_fail(err, "redis address names the user '%s' but no password was given: put it in "
                     "$CREDENTIALS_DIRECTORY/redis_password (or PERFLOW_REDIS_PASSWORD)", c->a.user);
        pf_rconn_close(c);
        return -1;
    }
    *out = c;
    return 0;
}

void pf_rconn_close(pf_rconn *c) {
    if (!c) return;
    pf_rconn_disconnect(c);
    if (c->ctx) SSL_CTX_free(c->ctx);
    if (c->password) {
        OPENSSL_cleanse(c->password, strlen(c->password));
        free(c->password);
    }
    free(c);
}

const char *pf_rconn_addr(const pf_rconn *c) { return c->a.shown; }
int pf_rconn_connected(const pf_rconn *c) { return c->fd >= 0; }
int pf_rconn_config_error(const pf_rconn *c) { return c->config_error; }

void pf_rconn_disconnect(pf_rconn *c) {
    if (c->ssl) {
        SSL_free(c->ssl); /* no close_notify: the peer may be gone, and a write could block */
        c->ssl = NULL;
    }
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    if (c->reader) redisReaderFree(c->reader);
    c->reader = NULL;
}

/* ---- the transport ------------------------------------------------------- */

static long long mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

/* A connected socket to one address within timeout_ms, or -1 with errno. */
static int connect_one(const struct sockaddr *sa, socklen_t len, int family, long timeout_ms) {
    int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return -1;
    if (connect(fd, sa, len) && errno != EINPROGRESS) goto fail;
    struct pollfd p = {fd, POLLOUT, 0};
    int r;
    do r = poll(&p, 1, (int)timeout_ms);
    while (r < 0 && errno == EINTR);
    if (r == 0) errno = ETIMEDOUT;
    if (r <= 0) goto fail;
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) || soerr) {
        if (soerr) errno = soerr;
        goto fail;
    }
    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)) goto fail;
    return fd;
fail:;
    int e = errno;
    close(fd);
    errno = e;
    return -1;
}

static int open_socket(pf_rconn *c, pf_error *err) {
    int fd = -1;
    if (!c->a.port) {
        struct sockaddr_un un = {.sun_family = AF_UNIX};
        snprintf(un.sun_path, sizeof un.sun_path, "%s", c->a.host);
        fd = connect_one((struct sockaddr *)&un, sizeof un, AF_UNIX, c->timeout_ms);
        if (fd < 0) return cfail(c, 0, err, "%s", strerror(errno));
    } else {
        char port[16];
        snprintf(port, sizeof port, "%d", c->a.port);
        struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
        int g = getaddrinfo(c->a.host, port, &hints, &res);
        if (g) return cfail(c, 0, err, "resolving %s: %s", c->a.host, gai_strerror(g));
        int e = 0;
        for (struct addrinfo *a = res; a && fd < 0; a = a->ai_next) {
            fd = connect_one(a->ai_addr, a->ai_addrlen, a->ai_family, c->timeout_ms);
            if (fd < 0) e = errno;
        }
        freeaddrinfo(res);
        if (fd < 0) return cfail(c, 0, err, "%s", strerror(e));
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    }
    struct timeval tv = {c->timeout_ms / 1000, (c->timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    c->fd = fd;
    return 0;
}

/* The TLS handshake on c->fd, verifying the certificate and the host name. */
static int start_tls(pf_rconn *c, pf_error *err) {
    char why[256];
    c->ssl = SSL_new(c->ctx);
    if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1) {
        ssl_reason(why, sizeof why, "out of memory");
        return cfail(c, 0, err, "TLS: %s", why);
    }
    struct in6_addr a6;
    struct in_addr a4;
    int is_ip = inet_pton(AF_INET, c->a.host, &a4) == 1 || inet_pton(AF_INET6, c->a.host, &a6) == 1;
    X509_VERIFY_PARAM *vp = SSL_get0_param(c->ssl);
    if (is_ip) {
        X509_VERIFY_PARAM_set1_ip_asc(vp, c->a.host);
    } else {
        SSL_set_tlsext_host_name(c->ssl, c->a.host);
        X509_VERIFY_PARAM_set1_host(vp, c->a.host, 0);
    }
    ERR_clear_error();
    int r = SSL_connect(c->ssl);
    if (r == 1) return 0;
    long vr = SSL_get_verify_result(c->ssl);
    if (vr != X509_V_OK)
        return cfail(c, 1, err, "TLS: the server's certificate was refused: %s (check PERFLOW_REDIS_CA and the host name)",
                     X509_verify_cert_error_string(vr));
    int se = SSL_get_error(c->ssl, r);
    int sys = errno;
    ssl_reason(why, sizeof why, se == SSL_ERROR_SYSCALL ? (sys ? strerror(sys) : "the server closed the connection")
                                                        : "handshake failed");
    /* A server that ends the handshake with an alert is refusing us (our
     * client certificate, the protocol); a reset or timeout is Redis away. */
    return cfail(c, se == SSL_ERROR_SSL, err, "TLS handshake: %s", why);
}

/* Writes all of buf; -1 with errno (EPIPE when the peer is gone). */
static int write_all(pf_rconn *c, const char *buf, size_t n) {
    size_t done = 0;
    while (done < n) {
        ssize_t w;
        if (c->ssl) {
            /* SSL_write uses write(): a closed peer would raise SIGPIPE, which
             * the CLI does not ignore. Block it on this thread and swallow it. */
            sigset_t pipe, old;
            sigemptyset(&pipe);
            sigaddset(&pipe, SIGPIPE);
            pthread_sigmask(SIG_BLOCK, &pipe, &old);
            ERR_clear_error();
            int r = SSL_write(c->ssl, buf + done, (int)(n - done > 1 << 30 ? 1 << 30 : n - done));
            int e = errno;
            struct timespec zero = {0, 0};
            while (sigtimedwait(&pipe, NULL, &zero) > 0) {}
            pthread_sigmask(SIG_SETMASK, &old, NULL);
            if (r <= 0) {
                errno = e ? e : EPIPE;
                return -1;
            }
            w = r;
        } else {
            w = send(c->fd, buf + done, n - done, MSG_NOSIGNAL);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) {
                if (!w) errno = EPIPE;
                return -1;
            }
        }
        done += (size_t)w;
    }
    return 0;
}

/* Reads once into buf; bytes read, 0 at end of stream, -1 with errno. */
static ssize_t read_some(pf_rconn *c, char *buf, size_t n) {
    if (c->ssl) {
        ERR_clear_error();
        int r = SSL_read(c->ssl, buf, (int)n);
        if (r > 0) return r;
        int se = SSL_get_error(c->ssl, r);
        if (se == SSL_ERROR_ZERO_RETURN) return 0;
        if (se == SSL_ERROR_SYSCALL && !errno) return 0;
        if (se != SSL_ERROR_SYSCALL) errno = EPROTO;
        return -1;
    }
    ssize_t r;
    do r = recv(c->fd, buf, n, 0);
    while (r < 0 && errno == EINTR);
    return r;
}

/* Sends cmd (len bytes of RESP) and reads one reply. NULL with err when the
 * connection failed (it is dropped). */
static redisReply *roundtrip(pf_rconn *c, const char *cmd, size_t len, pf_error *err) {
    if (write_all(c, cmd, len)) {
        int e = errno;
        cfail(c, 0, err, "sending a command: %s", e == EAGAIN || e == EWOULDBLOCK ? "timed out" : strerror(e));
        return NULL;
    }
    long long deadline = mono_ms() + c->timeout_ms;
    for (;;) {
        void *reply = NULL;
        if (redisReaderGetReply(c->reader, &reply) != REDIS_OK) {
            cfail(c, 0, err, "protocol error: %s", c->reader->errstr);
            return NULL;
        }
        if (reply) return reply;
        char buf[16384];
        ssize_t r = read_some(c, buf, sizeof buf);
        if (r <= 0) {
            int e = errno;
            cfail(c, 0, err, "%s", r == 0 ? "the server closed the connection"
                                  : e == EAGAIN || e == EWOULDBLOCK ? "timed out waiting for the reply" : strerror(e));
            return NULL;
        }
        if (redisReaderFeed(c->reader, buf, (size_t)r) != REDIS_OK) {
            cfail(c, 0, err, "protocol error: %s", c->reader->errstr);
            return NULL;
        }
        if (mono_ms() > deadline + c->timeout_ms) { /* a server trickling bytes forever */
            cfail(c, 0, err, "timed out waiting for the reply");
            return NULL;
        }
    }
}

/* AUTH (when there is a password) and PING on a fresh connection. */
static int hello(pf_rconn *c, pf_error *err) {
    char *cmd = NULL;
    int len;
    if (c->password) {
        len = c->a.user[0] ? redisFormatCommand(&cmd, "AUTH %s %s", c->a.user, c->password)
                         : redisFormatCommand(&cmd, "AUTH %s", c->password);
        if (len < 0) return cfail(c, 0, err, "out of memory");
        redisReply *rep = roundtrip(c, cmd, (size_t)len, err);
        OPENSSL_cleanse(cmd, (size_t)len);
        free(cmd);
        if (!rep) return -1;
        if (rep->type == REDIS_REPLY_ERROR) {
            char why[200];
            snprintf(why, sizeof why, "%.*s", (int)(rep->len < 150 ? rep->len : 150), rep->str);
            freeReplyObject(rep);
            if (c->a.user[0]) return cfail(c, 1, err, "AUTH as user '%s' refused: %s", c->a.user, why);
            return cfail(c, 1, err, "AUTH refused: %s", why);
        }
        freeReplyObject(rep);
    }
    len = redisFormatCommand(&cmd, "PING");
    if (len < 0) return cfail(c, 0, err, "out of memory");
    redisReply *rep = roundtrip(c, cmd, (size_t)len, err);
    free(cmd);
    if (!rep) return -1;
    if (rep->type == REDIS_REPLY_ERROR) {
        int noauth = rep->str && (!strncmp(rep->str, "NOAUTH", 6) || !strncmp(rep->str, "WRONGPASS", 9));
        char why[200];
        snprintf(why, sizeof why, "%.*s", (int)(rep->len < 150 ? rep->len : 150), rep->str);
        freeReplyObject(rep);
        if (noauth)
            return cfail(c, 1, err, "the server wants a password (%s): put it in $CREDENTIALS_DIRECTORY/redis_password",
                         why);
        return cfail(c, 0, err, "PING: %s", why);
    }
    freeReplyObject(rep);
    return 0;
}

int pf_rconn_connect(pf_rconn *c, pf_error *err) {
    pf_rconn_disconnect(c);
    c->config_error = 0;
    if (open_socket(c, err) || (c->a.tls && start_tls(c, err))) return -1;
    c->reader = redisReaderCreate();
    if (!c->reader) return cfail(c, 0, err, "out of memory");
    return hello(c, err);
}

/* ---- commands ------------------------------------------------------------- */

/* Sends an already formatted command (freed here). */
static redisReply *run(pf_rconn *c, int *broken, pf_error *err, char *cmd, int len) {
    if (broken) *broken = 0;
    if (len < 0) {
        pf_fail(err, "redis %s: the command could not be formatted", c->a.shown);
        return NULL;
    }
    if (c->fd < 0 && pf_rconn_connect(c, err)) {
        free(cmd);
        return NULL;
    }
    redisReply *rep = roundtrip(c, cmd, (size_t)len, err);
    free(cmd);
    if (!rep && broken) *broken = 1;
    return rep;
}

redisReply *pf_rconn_vcommand(pf_rconn *c, int *broken, pf_error *err, const char *fmt, va_list ap) {
    char *cmd = NULL;
    int len = redisvFormatCommand(&cmd, fmt, ap);
    return run(c, broken, err, cmd, len);
}

redisReply *pf_rconn_command(pf_rconn *c, int *broken, pf_error *err, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    redisReply *rep = pf_rconn_vcommand(c, broken, err, fmt, ap);
    va_end(ap);
    return rep;
}

redisReply *pf_rconn_argv(pf_rconn *c, int *broken, pf_error *err, int argc, const char **argv, const size_t *lens) {
    char *cmd = NULL;
    int len = redisFormatCommandArgv(&cmd, argc, argv, lens);
    return run(c, broken, err, cmd, len);
}
