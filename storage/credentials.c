/* credentials.c - loading secrets from the environment or $CREDENTIALS_DIRECTORY,
 * and the registry that scrubs them from text. */
#include "credentials.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_SECRETS 32
#define MAX_CREDENTIAL_BYTES 4096

static pthread_mutex_t secrets_lock = PTHREAD_MUTEX_INITIALIZER;
static char *secrets[MAX_SECRETS];
static int nsecrets;

void pf_secret_register(const char *value) {
    if (!value || strlen(value) < 4) return;
    pthread_mutex_lock(&secrets_lock);
    int known = 0;
    for (int i = 0; i < nsecrets && !known; i++) known = !strcmp(secrets[i], value);
    /* A full registry keeps the oldest: a process loads a handful of secrets. */
    if (!known && nsecrets < MAX_SECRETS) secrets[nsecrets++] = PF_STRDUP(value);
    pthread_mutex_unlock(&secrets_lock);
}

void pf_secret_scrub(char *s, size_t cap) {
    static const char mark[] = "[redacted]";
    if (!s || !cap) return;
    pthread_mutex_lock(&secrets_lock);
    for (int i = 0; i < nsecrets; i++) {
        size_t n = strlen(secrets[i]);
        char *p;
        while ((p = strstr(s, secrets[i])) != NULL) {
            size_t tail = strlen(p + n), at = (size_t)(p - s), m = sizeof mark - 1;
            if (at + m >= cap) { /* the mark itself does not fit: cut here */
                *p = '\0';
                break;
            }
            size_t keep = tail;
            if (at + m + keep >= cap) keep = cap - 1 - at - m;
            memmove(p + m, p + n, keep);
            memcpy(p, mark, m);
            p[m + keep] = '\0';
        }
        /* A message truncated inside a secret ends with the secret's first bytes. */
        size_t len = strlen(s);
        for (size_t k = n - 1 < len ? n - 1 : len; k >= 4; k--) {
            if (memcmp(s + len - k, secrets[i], k)) continue;
            s[len - k] = '\0';
            if (len - k + sizeof mark <= cap) memcpy(s + len - k, mark, sizeof mark);
            break;
        }
    }
    pthread_mutex_unlock(&secrets_lock);
}

static void wipe(char **v) {
    if (*v) {
        OPENSSL_cleanse(*v, strlen(*v));
        free(*v);
        *v = NULL;
    }
}

void pf_credentials_free(pf_credentials *c) {
    if (!c) return;
    wipe(&c->access_key_id);
    wipe(&c->secret_access_key);
    wipe(&c->session_token);
    wipe(&c->hub_token);
}

/* A credential value: printable, no spaces at either end. Control characters
 * would let a value forge extra HTTP header lines. */
static int value_ok(const char *v) {
    if (!*v) return 0;
    for (const unsigned char *p = (const unsigned char *)v; *p; p++)
        if (*p < 0x20 || *p == 0x7f) return 0;
    return 1;
}

/* Reads $CREDENTIALS_DIRECTORY/name into *out (stays NULL when the file does
 * not exist). The message names the file, never its content. */
static int read_credential_file(char **out, const char *dir, const char *name, pf_error *err) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) return 0;
        return pf_fail(err, "credential %s: %s", path, strerror(errno));
    }
    char buf[MAX_CREDENTIAL_BYTES + 2];
    size_t n = 0;
    ssize_t r;
    while (n < sizeof buf - 1 && (r = read(fd, buf + n, sizeof buf - 1 - n)) != 0) {
        if (r < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            close(fd);
            OPENSSL_cleanse(buf, sizeof buf);
            return pf_fail(err, "credential %s: %s", path, strerror(e));
        }
        n += (size_t)r;
    }
    close(fd);
    buf[n] = '\0';
    /* One trailing newline is what `echo secret > file` leaves. */
    if (n && buf[n - 1] == '\n') buf[--n] = '\0';
    if (n && buf[n - 1] == '\r') buf[--n] = '\0';
    int ok = n <= MAX_CREDENTIAL_BYTES && strlen(buf) == n && value_ok(buf);
    if (ok) *out = PF_STRDUP(buf);
    OPENSSL_cleanse(buf, sizeof buf);
    if (!ok)
        return pf_fail(err, "credential %s: must be one line of 1 to %d printable characters", path,
                       MAX_CREDENTIAL_BYTES);
    return 0;
}

static int from_env(char **out, const char *name, pf_error *err) {
    const char *v = getenv(name);
    if (!v || !*v) return 0;
    if (strlen(v) > MAX_CREDENTIAL_BYTES || !value_ok(v))
        return pf_fail(err, "environment variable %s: must be 1 to %d printable characters", name,
                       MAX_CREDENTIAL_BYTES);
    *out = PF_STRDUP(v);
    return 0;
}

int pf_credentials_load(pf_credentials *out, pf_error *err) {
    memset(out, 0, sizeof *out);
    const char *dir = getenv("CREDENTIALS_DIRECTORY");
    int rc = 0;
    /* The key pair and its session token come from one source, never mixed. */
    if (getenv("AWS_ACCESS_KEY_ID") && *getenv("AWS_ACCESS_KEY_ID")) {
        rc = from_env(&out->access_key_id, "AWS_ACCESS_KEY_ID", err) ||
             from_env(&out->secret_access_key, "AWS_SECRET_ACCESS_KEY", err) ||
             from_env(&out->session_token, "AWS_SESSION_TOKEN", err);
    } else if (dir && *dir) {
        rc = read_credential_file(&out->access_key_id, dir, "aws_access_key_id", err) ||
             read_credential_file(&out->secret_access_key, dir, "aws_secret_access_key", err) ||
             read_credential_file(&out->session_token, dir, "aws_session_token", err);
    }
    if (!rc) rc = from_env(&out->hub_token, "PERFLOW_HUB_TOKEN", err);
    if (!rc && !out->hub_token) rc = from_env(&out->hub_token, "HF_TOKEN", err);
    if (!rc && !out->hub_token && dir && *dir) rc = read_credential_file(&out->hub_token, dir, "hub_token", err);
    if (!rc && (!out->access_key_id) != (!out->secret_access_key))
        rc = pf_fail(err, "credentials: an access key id needs its secret access key and the other way round");
    if (rc) {
        pf_credentials_free(out);
        return -1;
    }
    pf_secret_register(out->access_key_id);
    pf_secret_register(out->secret_access_key);
    pf_secret_register(out->session_token);
    pf_secret_register(out->hub_token);
    return 0;
}

int pf_credential_secret(char **out, const char *file, const char *env, pf_error *err) {
    *out = NULL;
    const char *dir = getenv("CREDENTIALS_DIRECTORY");
    if (file && dir && *dir && read_credential_file(out, dir, file, err)) return -1;
    if (!*out && env && from_env(out, env, err)) return -1;
    pf_secret_register(*out);
    return 0;
}
