/* fuzz-reply.c: libFuzzer harness for the reply path of a connection.
 *
 * Input: one mode byte, then the bytes the server sends in transmission.
 *   bit 0  structured replies negotiated
 *   bit 1  BLOCK_STATUS is sent with REQ_ONE
 *   bit 2  also send a 128 KiB READ (direct receive path)
 *   bit 3  base:allocation context id is 1 (else 0)
 *   bit 4  extended headers negotiated (implies structured replies; adds a
 *          6 GiB WRITE_ZEROES and a 6 GiB BLOCK_STATUS)
 * A fixed set of commands is submitted first (see submit_all); the k-th has
 * cookie ((k+1) << 32) | k.  nbd_conn_receive_loop then runs over the bytes
 * until EOF.  Checked: every command completes exactly once, errors are
 * positive errnos, extents handed out are non-empty and stay inside the
 * request (REQ_ONE: exactly one).
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conn.h"
#include "transport.h"

#define NCMD 10
#define NBASE 7 /* commands always sent; then the big READ, then two 64-bit ones */

struct rec {
  int calls;
  int err;
  uint64_t count;
  bool req_one;
};

static void on_done(void *arg, int err)
{
  struct rec *r = arg;
  r->calls++;
  r->err = err;
  if (r->calls != 1 || err < 0 || err > 4095) {
    fprintf(stderr, "fuzz-reply: completion %d with err %d\n", r->calls, err);
    abort();
  }
}

static void on_extents(void *arg, uint64_t off, const struct nbd_extent *e, uint32_t n)
{
  struct rec *r = arg;
  uint64_t sum = 0;
  (void)off;
  if (r->calls != 0 || n == 0 || (r->req_one && n != 1))
    abort();
  for (uint32_t i = 0; i < n; i++) {
    if (e[i].length == 0)
      abort();
    sum += e[i].length;
  }
  if (sum > r->count)
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  if (size < 1)
    return 0;
  uint8_t mode = data[0];
  struct nbd_session s;
  memset(&s, 0, sizeof s);
  s.extended = mode & 16;
  s.structured = (mode & 1) || s.extended;
  s.info.size = UINT64_C(1) << 30;
  s.info.tflags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_TRIM |
                  NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_DF;
  s.have_base_alloc = s.structured;
  s.base_alloc_id = (mode & 8) ? 1 : 0;

  struct transport *t = transport_from_memory(data + 1, size - 1);
  if (!t)
    return 0;
  struct nbd_conn *c = nbd_conn_new(t, &s, "fuzz", 0, 0);
  if (!c) {
    transport_destroy(t);
    return 0;
  }

  static uint8_t rbuf0[4096], wbuf[512], rbuf4[512], rbig[131072];
  struct rec recs[NCMD];
  memset(recs, 0, sizeof recs);
  const struct nbd_cmd cmds[NCMD] = {
    { .type = NBD_CMD_READ, .offset = 0, .count = sizeof rbuf0, .buf = rbuf0 },
    { .type = NBD_CMD_WRITE, .offset = 4096, .count = sizeof wbuf, .buf = wbuf },
    { .type = NBD_CMD_BLOCK_STATUS, .flags = (mode & 2) ? NBD_CMD_FLAG_REQ_ONE : 0, .offset = 0,
      .count = 65536 },
    { .type = NBD_CMD_FLUSH },
    { .type = NBD_CMD_READ, .flags = s.structured ? NBD_CMD_FLAG_DF : 0, .offset = 0x10000,
      .count = sizeof rbuf4, .buf = rbuf4 },
    { .type = NBD_CMD_TRIM, .offset = 0, .count = 1 << 20 },
    { .type = NBD_CMD_WRITE_ZEROES, .offset = UINT64_MAX - 4095, .count = 4096 },
    { .type = NBD_CMD_READ, .offset = 1 << 20, .count = sizeof rbig, .buf = rbig },
    { .type = NBD_CMD_WRITE_ZEROES, .offset = 1 << 20, .count = UINT64_C(6) << 30 },
    { .type = NBD_CMD_BLOCK_STATUS, .flags = (mode & 2) ? NBD_CMD_FLAG_REQ_ONE : 0,
      .offset = 1 << 20, .count = UINT64_C(6) << 30 },
  };
  bool sent[NCMD] = { 0 };
  for (int k = 0; k < NBASE; k++)
    sent[k] = true;
  sent[NBASE] = mode & 4;
  sent[NBASE + 1] = sent[NBASE + 2] = s.extended;
  for (int k = 0; k < NCMD; k++) {
    if (!sent[k])
      continue;
    struct nbd_cmd cmd = cmds[k];
    recs[k].count = cmd.count;
    recs[k].req_one = cmd.flags & NBD_CMD_FLAG_REQ_ONE;
    cmd.done = on_done;
    cmd.extents = on_extents;
    cmd.arg = &recs[k];
    if (nbd_conn_submit(c, &cmd) != 0)
      abort(); /* a fresh connection accepts commands */
  }
  nbd_conn_receive_loop(c);
  for (int k = 0; k < NCMD; k++)
    if (sent[k] && recs[k].calls != 1) {
      fprintf(stderr, "fuzz-reply: command %d completed %d times\n", k, recs[k].calls);
      abort();
    }
  if (!nbd_conn_dead(c) || nbd_conn_inflight(c) != 0)
    abort();
  nbd_conn_close(c);
  return 0;
}
