/* redis_client.h - one connection to Redis, shared by the worker's job records
 * (protocol/redis_conn.c), the model cache's index (redis_index.c) and the CLI:
 * TCP or a unix socket, optionally TLS and authentication, with a timeout on
 * connecting and on every command.
 *
 * Commands are formatted and replies parsed by hiredis (its formatter and its
 * reader, so callers get redisReply objects as before); the transport is our
 * own because the hiredis of Debian 12 (0.14) has no TLS.
 *
 * Addresses:
 *   host:port | unix:/path             plain (as before)
 *   redis://[user@]host:port           plain, with an ACL user
 *   rediss://[user@]host[:port]        TLS (port 6379 when absent), with an ACL user
 * TLS verifies the server's certificate and its name (the host as written: a
 * DNS name or an IP address) against PERFLOW_REDIS_CA (a PEM file), else
 * PERFLOW_CA_BUNDLE, else the system's CAs; PERFLOW_REDIS_TLS_CERT and
 * PERFLOW_REDIS_TLS_KEY add a client certificate (Redis' tls-auth-clients).
 * The password is a secret: it comes from $CREDENTIALS_DIRECTORY/redis_password,
 * else PERFLOW_REDIS_PASSWORD, never from the address (a password written
 * there is refused), and is registered for scrubbing (credentials.h). With a
 * password, every connection starts with AUTH (user and password, or the
 * password alone for the default user); then PING, so that a server that
 * wants a password and got none says so at once.
 *
 * Failures of connecting come in two kinds: Redis away (refused, timeout,
 * reset: transient, the next command tries again) and configuration (the
 * certificate does not verify, the password or user is refused, a password is
 * required): pf_rconn_config_error() tells them apart, so that a worker can
 * refuse to start rather than wait for something that cannot heal. Messages
 * name the address, never the password.
 *
 * Not thread-safe: one caller at a time (callers hold a lock or own it). */
#ifndef PF_REDIS_CLIENT_H
#define PF_REDIS_CLIENT_H

#include <hiredis/hiredis.h>
#include <stdarg.h>
#include <stddef.h>

#include "error.h"

typedef struct pf_rconn pf_rconn;

/* An address, parsed. */
typedef struct pf_redis_addr {
    char host[256];  /* a DNS name or an IP address (without brackets), or the socket path */
    int port;        /* 0: a unix socket */
    int tls;         /* rediss:// */
    char user[128];  /* the ACL user, "" for the default user */
    char shown[400]; /* the address for messages (never a password) */
} pf_redis_addr;

/* Parses addr (the forms above) into *a. Error, saying which form was
 * expected, for anything else; a password written in the address is refused
 * (and registered as a secret, so that a line echoing the address hides it). */
int pf_redis_addr_parse(pf_redis_addr *a, const char *addr, pf_error *err);

/* Parses addr and reads the TLS settings and the password; connects nothing.
 * Error for a malformed address, a password in it, an unreadable credential
 * or certificate file. */
int pf_rconn_open(pf_rconn **out, const char *addr, long timeout_ms, pf_error *err);
/* Disconnects and frees (the password is wiped). NULL is fine. */
void pf_rconn_close(pf_rconn *c);

/* Connects now (dropping any connection first): socket, TLS handshake, AUTH,
 * PING. On error nothing stays connected and pf_rconn_config_error() says
 * whether it was a configuration error. */
int pf_rconn_connect(pf_rconn *c, pf_error *err);
/* Drops the connection; the next command connects again. */
void pf_rconn_disconnect(pf_rconn *c);
int pf_rconn_connected(const pf_rconn *c);
/* 1 when the last failed connect was a configuration error (TLS verification,
 * AUTH refused, password required), not Redis being away. */
int pf_rconn_config_error(const pf_rconn *c);
/* The address for messages ("rediss://perflow@127.0.0.1:6380"). */
const char *pf_rconn_addr(const pf_rconn *c);

/* Runs one command, connecting first when not connected. Returns the reply
 * (an error reply included; the caller frees it with freeReplyObject), or
 * NULL with err set when Redis could not be reached or the connection broke
 * (it is then dropped; *broken, when not NULL, is set to 1 when a connection
 * was there and broke, so that the caller may try once more). */
redisReply *pf_rconn_command(pf_rconn *c, int *broken, pf_error *err, const char *fmt, ...);
redisReply *pf_rconn_vcommand(pf_rconn *c, int *broken, pf_error *err, const char *fmt, va_list ap);
/* The same with an argument vector (lens NULL: strlen of each). */
redisReply *pf_rconn_argv(pf_rconn *c, int *broken, pf_error *err, int argc, const char **argv, const size_t *lens);

#endif
