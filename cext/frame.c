/*
 * frame.c -- a client's batch request and the daemon's acknowledgement of
 * it, as bytes: the framing the client writes in front of a blob (in a
 * channel, chan.c; protocol.py writes the same bytes on the socket), and
 * the check that a reply is exactly the OK shm_serve writes to it.
 *
 * The id is framed in the uint64 form, not the shortest one, so that the
 * header has one size (SHM_BATCH_HEADER) whatever the id: it is written
 * in place in front of the blob. The daemon echoes the id's bytes as they
 * came (serve.c), so the acknowledgement is recognised by comparing bytes,
 * with no decoding.
 */
#include <string.h>
#include "internal.h"

/* The acknowledgement up to its seq: array header, the id, OK, nil. */
#define ACK_SEQ_AT          (1 + MP_UINT64_LEN + 1 + 1)

_Static_assert(1 + 1 + MP_UINT64_LEN + MP_BIN32_HEADER == SHM_BATCH_HEADER,
               "batch header: array header, op, id, bin32 header");

void shm_batch_frame(uint8_t *out, uint64_t id, uint64_t blob_len)
{
    out = mp_put_fixarray(out, 3);
    out = mp_put_uint(out, SHM_REQ_BATCH);
    out = mp_put_uint64(out, id);
    mp_put_bin32(out, (uint32_t)blob_len);
}

int shm_batch_acked(uint64_t id, const uint8_t *reply, uint64_t len)
{
    uint8_t want[ACK_SEQ_AT];
    uint8_t *end = mp_put_fixarray(want, 4);
    end = mp_put_uint64(end, id);
    end = mp_put_uint(end, SHM_REPLY_OK);
    end = mp_put_nil(end);
    uint64_t head = (uint64_t)(end - want);
    if (len <= head || memcmp(reply, want, head) != 0)
        return 0;
    uint8_t seq = reply[head];          /* a uint, and nothing after it */
    return mp_is_uint(seq) && len == head + (uint64_t)mp_int_len(seq);
}
