/* credentials.h - secrets for object storage and private model hubs, and the
 * registry that keeps them out of every log line and error message.
 *
 * Sources, in order: the standard environment variables (AWS_ACCESS_KEY_ID,
 * AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN; PERFLOW_HUB_TOKEN or HF_TOKEN for
 * the model hub's bearer token), then files of the same names in lower case
 * in systemd's $CREDENTIALS_DIRECTORY (aws_access_key_id, aws_secret_access_key,
 * aws_session_token, hub_token), which is how a unit passes secrets without
 * putting them in its environment (LoadCredential=).
 *
 * Every value loaded is registered with pf_secret_register, and pf_slog and
 * the CLI pass text through pf_secret_scrub before writing it anywhere.
 * pf_credential_secret reads the other clients' secrets the same way
 * (redis_password, kafka.sasl.password, ...: files first there). */
#ifndef PF_CREDENTIALS_H
#define PF_CREDENTIALS_H

#include <stddef.h>

#include "error.h"

typedef struct pf_credentials {
    char *access_key_id;     /* NULL when absent */
    char *secret_access_key; /* NULL when absent */
    char *session_token;     /* NULL when absent */
    char *hub_token;         /* NULL when absent */
} pf_credentials;

/* Loads whatever credentials exist (all fields may stay NULL: absence is not an
 * error here; the user of a credential says when it is missing). Error when a
 * credential file exists but is unreadable, over 4 KiB, empty, or holds control
 * characters, or when only one of the access key id and secret key is set.
 * On error *out is left all NULL. */
int pf_credentials_load(pf_credentials *out, pf_error *err);
/* One more secret by name, for the clients that need their own (Redis'
 * password, Kafka's SASL password): $CREDENTIALS_DIRECTORY/file first (file
 * may be NULL), else the environment variable env (may be NULL). *out is
 * malloc'd (wipe it, then free) and registered for scrubbing, or stays NULL
 * when neither exists. Error when the file is unreadable or the value is not
 * one line of 1 to 4096 printable characters; the message never holds it. */
int pf_credential_secret(char **out, const char *file, const char *env, pf_error *err);
/* Wipes and frees the values; c itself is not freed. */
void pf_credentials_free(pf_credentials *c);

/* Adds value (4 bytes or longer; shorter ones are ignored as they would redact
 * ordinary text) to the process-wide list of secrets. Thread-safe. */
void pf_secret_register(const char *value);
/* Replaces every registered secret in the NUL-terminated s (capacity cap) with
 * "[redacted]", truncating if the result does not fit. Thread-safe. */
void pf_secret_scrub(char *s, size_t cap);

#endif
