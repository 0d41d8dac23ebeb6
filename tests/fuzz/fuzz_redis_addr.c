/* fuzz_redis_addr.c - libFuzzer target: arbitrary bytes as a Redis address
 * (storage/redis_client.c: host:port, unix:/path, redis:// and rediss:// with a
 * user) through pf_redis_addr_parse. Any input must give an address with a
 * host (or socket path) and a port, or an error with a message, never a crash;
 * a password written in the address must be refused. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "redis_client.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    /* No credentials from the caller's environment: the address alone decides. */
    unsetenv("CREDENTIALS_DIRECTORY");
    unsetenv("PERFLOW_REDIS_PASSWORD");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *addr = malloc(size + 1);
    if (!addr) return 0;
    memcpy(addr, data, size);
    addr[size] = '\0';
    pf_redis_addr a;
    pf_error err = {0};
    if (pf_redis_addr_parse(&a, addr, &err) == 0) {
        if (!a.host[0] || !a.shown[0] || (a.port && (a.port < 1 || a.port > 65535))) abort();
        if (strchr(a.user, ':') || strchr(a.user, '@')) abort(); /* a password slipped into the user */
    } else if (!err.msg[0]) {
        abort();
    }
    free(addr);
    return 0;
}
