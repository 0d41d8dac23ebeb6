/* prefer.h - which of the jobs a worker holds it takes next: warm-model
 * preference without reordering a partition and without starving a job.
 *
 * The worker holds the messages it fetched but has not started (the
 * consumer's pushed-back queue, oldest first). It takes the head (the first
 * of the most urgent topic) unless a later message of that topic is for a
 * model it has loaded, and may jump the queue. Two rules bound that:
 *
 * - Order. Offsets are committed per partition as each job ends (the
 *   committed offset is the last ended message + 1), so a message may only be
 *   taken while no earlier held message of its partition waits: taking one
 *   past an earlier one would commit past it, and a crash would lose it. So
 *   only the first held message of each partition is a candidate; partitions
 *   are reordered among themselves, never inside.
 * - Starvation. The head is passed over at most max_pass times in a row
 *   (the worker's prefer_warm setting, 8 by default);
 *   then it goes, whatever its model. Every held message becomes the head
 *   after the ones before it go, so it waits at most (its place + 1) x
 *   (max_pass + 1) picks. */
#ifndef PF_PREFER_H
#define PF_PREFER_H

/* A held message as the pick sees it. */
typedef struct pf_prefer_item {
    int priority;      /* its topic's index: 0 is the most urgent */
    const char *topic;
    int partition;
} pf_prefer_item;

/* The index of the item to take next of items[0..n) (n >= 1, oldest first):
 * the head (first of the lowest priority) when passed >= max_pass or match
 * says the head is warm, else the first item of the head's priority that is
 * the first held of its partition and for which match(i, ctx) is 1, else the
 * head. *pass is set to 1 when the result is not the head (the caller counts
 * the passes it actually made: passed + 1 if it takes it, 0 when it takes the
 * head). match may be NULL (no preference). */
int pf_prefer_pick(int *pass, const pf_prefer_item *items, int n, int passed, int max_pass,
                   int (*match)(int i, void *ctx), void *ctx);

#endif
