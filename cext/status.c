/*
 * status.c -- the one table of status codes the core returns, and the
 * formatting of the message that goes with a failure.
 */
#include <stdarg.h>
#include <stdio.h>
#include "internal.h"

/* Indexed by -code; the codes between SHM_OK and SHM_EINVAL are unused. */
static const char *const TEXT[-SHM_STATUS_MIN + 1] = {
    [-SHM_OK] = "success",
    [-SHM_EINVAL] = "malformed input",
    [-SHM_EKEY] = "key is not a canonical msgpack key",
    [-SHM_EVALUE] = "value is not well-formed msgpack",
    [-SHM_ETOOBIG] = "over a size limit",
    [-SHM_ENOSPACE] = "the generation is full: promote first",
    [-SHM_EBUFSMALL] = "the caller's buffer is too small",
    [-SHM_ECORRUPT] = "a segment failed validation",
    [-SHM_ELIMIT] = "over the map's live-bytes limit",
    [-SHM_ENOMEM] = "out of memory",
    [-SHM_ECANCELED] = "the build was cancelled",
};

const char *shm_strerror(int code)
{
    if (code > SHM_OK || code < SHM_STATUS_MIN || TEXT[-code] == NULL)
        return "unknown status";
    return TEXT[-code];
}

int shm_fail(char *err, size_t errlen, int code, const char *fmt, ...)
{
    if (err != NULL && errlen > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}
