/* cancel.c - cancel requests in Redis (cancel.h). */
#include "cancel.h"

int pf_cancel_requested(pf_wredis *r, const char *job_id, int *yes, pf_error *err) {
    char key[512];
    pf_wredis_key(key, sizeof key, r, job_id, "cancel");
    *yes = 0;
    redisReply *rep = pf_wredis_cmd(r, err, "EXISTS %s", key);
    if (!rep) return -1;
    *yes = rep->type == REDIS_REPLY_INTEGER && rep->integer > 0;
    freeReplyObject(rep);
    return 0;
}
