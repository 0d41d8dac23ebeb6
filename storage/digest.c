/* digest.c - SHA-256 through OpenSSL's EVP interface. */
#include "digest.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct pf_sha256 {
    EVP_MD_CTX *ctx;
};

pf_sha256 *pf_sha256_new(void) {
    pf_sha256 *h = PF_CALLOC(1, sizeof *h);
    h->ctx = EVP_MD_CTX_new();
    PF_CHECK(h->ctx && EVP_DigestInit_ex(h->ctx, EVP_sha256(), NULL) == 1);
    return h;
}

void pf_sha256_update(pf_sha256 *h, const void *data, size_t n) {
    PF_CHECK(EVP_DigestUpdate(h->ctx, data, n) == 1);
}

static void to_hex(char *hex, const unsigned char *d, size_t n) {
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        hex[2 * i] = digits[d[i] >> 4];
        hex[2 * i + 1] = digits[d[i] & 15];
    }
    hex[2 * n] = '\0';
}

void pf_sha256_final_hex(pf_sha256 *h, char hex[PF_SHA256_HEX]) {
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    PF_CHECK(EVP_DigestFinal_ex(h->ctx, d, &n) == 1 && n == 32);
    to_hex(hex, d, n);
    pf_sha256_reset(h);
}

void pf_sha256_reset(pf_sha256 *h) { PF_CHECK(EVP_DigestInit_ex(h->ctx, EVP_sha256(), NULL) == 1); }

void pf_sha256_free(pf_sha256 *h) {
    if (!h) return;
    EVP_MD_CTX_free(h->ctx);
    free(h);
}

void pf_sha256_hex(char hex[PF_SHA256_HEX], const void *data, size_t n) {
    pf_sha256 *h = pf_sha256_new();
    pf_sha256_update(h, data, n);
    pf_sha256_final_hex(h, hex);
    pf_sha256_free(h);
}

int pf_sha256_hex_valid(const char *s) {
    if (!s) return 0;
    for (int i = 0; i < 64; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
    return s[64] == '\0';
}

int pf_sha256_fd(pf_sha256 *h, int fd, uint64_t length, pf_error *err) {
    enum { CHUNK = 1 << 20 };
    unsigned char *buf = PF_MALLOC(CHUNK);
    uint64_t off = 0;
    while (off < length) {
        size_t want = length - off < CHUNK ? (size_t)(length - off) : CHUNK;
        ssize_t r = pread(fd, buf, want, (off_t)off);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            int e = errno;
            free(buf);
            return pf_fail(err, "reading at offset %llu: %s", (unsigned long long)off,
                           r < 0 ? strerror(e) : "file is shorter than expected");
        }
        pf_sha256_update(h, buf, (size_t)r);
        off += (uint64_t)r;
    }
    free(buf);
    return 0;
}

int pf_sha256_file(char hex[PF_SHA256_HEX], uint64_t *size, const char *path, pf_error *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return pf_fail(err, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        close(fd);
        return pf_fail(err, "%s: not a regular file", path);
    }
    pf_sha256 *h = pf_sha256_new();
    int rc = pf_sha256_fd(h, fd, (uint64_t)st.st_size, err);
    close(fd);
    if (rc) {
        pf_sha256_free(h);
        return pf_error_prefix(err, "%s", path);
    }
    pf_sha256_final_hex(h, hex);
    pf_sha256_free(h);
    *size = (uint64_t)st.st_size;
    return 0;
}
