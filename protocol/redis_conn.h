/* redis_conn.h - the worker's Redis connection (hiredis) for job records:
 * leases (lease.h), terminal results (result.h) and cancel flags (cancel.h),
 * all under "<prefix>:<job_id>:<what>".
 *
 * Redis being away is an ordinary transient condition: every command returns
 * an error, the caller retries later, and the next command reconnects. Used by
 * the main loop's thread only (a hiredis context is not thread-safe). */
#ifndef PF_REDIS_CONN_H
#define PF_REDIS_CONN_H

#include <hiredis/hiredis.h>
#include <stddef.h>

#include "error.h"
#include "redis_client.h"

typedef struct pf_wredis pf_wredis;

/* Makes the connection object for addr (redis_client.h: "host:port",
 * "unix:/path", "redis://user@host:port", "rediss://[user@]host[:port]" for
 * TLS; the password from $CREDENTIALS_DIRECTORY/redis_password) with a
 * timeout for connecting and for each command, and tries to connect. An
 * unreachable server is not an error (yet); a malformed address, unreadable
 * TLS files or credentials, a certificate that does not verify and a refused
 * or missing password are. */
int pf_wredis_open(pf_wredis **out, const char *addr, const char *prefix, long timeout_ms, pf_error *err);
void pf_wredis_close(pf_wredis *r);

/* Runs one command (hiredis format), connecting first if needed and once more
 * after a broken connection. Returns the reply (caller frees it with
 * freeReplyObject), or NULL with err set when Redis cannot be reached or
 * answered with an error. */
redisReply *pf_wredis_cmd(pf_wredis *r, pf_error *err, const char *fmt, ...);

/* pf_wredis_cmd with an argument vector (argc strings, lengths in lens or
 * strlen when lens is NULL): for commands of many keys (MGET, HSET of a
 * batch), which a format string cannot spell. */
redisReply *pf_wredis_cmd_argv(pf_wredis *r, pf_error *err, int argc, const char **argv, const size_t *lens);

/* out = "<prefix>:<job_id>:<what>". job ids are validated ([A-Za-z0-9._-]). */
void pf_wredis_key(char *out, size_t n, const pf_wredis *r, const char *job_id, const char *what);

#endif
