/* digest.h - SHA-256 digests (OpenSSL's libcrypto) as the cache names blobs:
 * 64 lower-case hex characters. */
#ifndef PF_DIGEST_H
#define PF_DIGEST_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

#define PF_SHA256_HEX 65 /* 64 hex digits and the NUL */

typedef struct pf_sha256 pf_sha256;

/* A streaming hash; new never fails (allocation failure aborts). */
pf_sha256 *pf_sha256_new(void);
void pf_sha256_update(pf_sha256 *h, const void *data, size_t n);
/* Writes the digest of everything fed so far as hex; h can be reset and reused. */
void pf_sha256_final_hex(pf_sha256 *h, char hex[PF_SHA256_HEX]);
void pf_sha256_reset(pf_sha256 *h);
void pf_sha256_free(pf_sha256 *h);

/* One-shot digest of a buffer. */
void pf_sha256_hex(char hex[PF_SHA256_HEX], const void *data, size_t n);
/* 1 when s is exactly 64 lower-case hex digits, else 0. */
int pf_sha256_hex_valid(const char *s);
/* Hashes the first `length` bytes of fd from offset 0 (pread: fd's offset is
 * untouched) into h. Error on a read error or a file shorter than length. */
int pf_sha256_fd(pf_sha256 *h, int fd, uint64_t length, pf_error *err);
/* Digest and size of the file at path. */
int pf_sha256_file(char hex[PF_SHA256_HEX], uint64_t *size, const char *path, pf_error *err);

#endif
