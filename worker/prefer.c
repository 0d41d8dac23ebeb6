/* prefer.c - warm-model preference among held jobs (prefer.h). */
#include "prefer.h"

#include <string.h>

/* 1 when no item before k is of k's partition. */
static int heads_partition(const pf_prefer_item *items, int k) {
    for (int j = 0; j < k; j++)
        if (items[j].partition == items[k].partition && !strcmp(items[j].topic, items[k].topic)) return 0;
    return 1;
}

int pf_prefer_pick(int *pass, const pf_prefer_item *items, int n, int passed, int max_pass,
                   int (*match)(int i, void *ctx), void *ctx) {
    int best = 0;
    for (int k = 1; k < n; k++)
        if (items[k].priority < items[best].priority) best = k;
    *pass = 0;
    if (!match || passed >= max_pass || match(best, ctx)) return best;
    for (int k = 0; k < n; k++) {
        if (k == best || items[k].priority != items[best].priority || !heads_partition(items, k)) continue;
        if (match(k, ctx)) {
            *pass = 1;
            return k;
        }
    }
    return best;
}
