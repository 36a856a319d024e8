/* test-conn.c: reply assembly in src/conn.c over an in-memory transport.
 *
 * Each case submits commands on a fresh connection (the memory transport
 * discards what is sent), then runs nbd_conn_receive_loop in this thread
 * over a crafted server byte stream.  The loop ends at the end of the
 * stream (EOF), failing whatever is still in flight with EIO.  Cookies are
 * (generation << 32) | slot index; generations start at 1 and slots are
 * handed out from 0 upward, so the k-th command (from 0) of a fresh
 * connection has cookie ((k+1) << 32) | k.
 */
#include <errno.h>
#include <string.h>

#include "check.h"
#include "conn.h"
#include "transport.h"

#define MAXCMD 512

struct rec {
  int calls;
  int err;
  int ext_calls;
  uint64_t ext_off;
  uint32_t n_ext;
  struct nbd_extent ext[16];
};

static struct rec recs[MAXCMD];
static uint8_t *bufs[MAXCMD];
static struct nbd_cmd cmds[MAXCMD];
static int ncmds;

static void on_done(void *arg, int err)
{
  struct rec *r = arg;
  r->calls++;
  r->err = err;
}

static void on_extents(void *arg, uint64_t off, const struct nbd_extent *e, uint32_t n)
{
  struct rec *r = arg;
  r->ext_calls++;
  r->ext_off = off;
  r->n_ext = n;
  for (uint32_t i = 0; i < n && i < 16; i++)
    r->ext[i] = e[i];
}

static uint64_t cookie(int k) { return (uint64_t)(k + 1) << 32 | (uint32_t)k; }

/* Queue a command for the next run. */
static int add(uint16_t type, uint16_t flags, uint64_t offset, uint64_t count)
{
  int k = ncmds++;
  memset(&recs[k], 0, sizeof recs[k]);
  free(bufs[k]);
  bufs[k] = NULL;
  if (type == NBD_CMD_READ || type == NBD_CMD_WRITE) {
    bufs[k] = malloc(count ? count : 1);
    memset(bufs[k], type == NBD_CMD_READ ? 0xAA : 0x55, count);
  }
  cmds[k] = (struct nbd_cmd){ .type = type, .flags = flags, .offset = offset, .count = count,
                              .buf = bufs[k], .done = on_done, .extents = on_extents, .arg = &recs[k] };
  return k;
}

static bool last_dead;
static unsigned last_inflight;
static struct nbd_conn *cur_conn; /* the connection of the current run */
static bool run_extended;         /* the next runs negotiated extended headers */

/* Submit the queued commands, feed stream, run the loop to the end. */
static void run(bool structured, const struct bytes *stream)
{
  struct nbd_session s = { 0 };
  s.structured = structured || run_extended;
  s.extended = run_extended;
  structured = s.structured;
  s.info.size = UINT64_C(1) << 40;
  s.info.tflags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_TRIM;
  s.have_base_alloc = structured;
  s.base_alloc_id = 42;
  struct transport *t = transport_from_memory(stream->p ? stream->p : (const uint8_t *)"", stream->len);
  struct nbd_conn *c = nbd_conn_new(t, &s, "test", 0, 0);
  if (!c)
    abort();
  cur_conn = c;
  for (int k = 0; k < ncmds; k++)
    if (nbd_conn_submit(c, &cmds[k]) != 0)
      printf("# submit %d failed\n", k);
  nbd_conn_receive_loop(c);
  last_dead = nbd_conn_dead(c);
  last_inflight = nbd_conn_inflight(c);
  /* After the loop, the connection refuses new commands without calling done. */
  struct rec late = { 0 };
  struct nbd_cmd lc = { .type = NBD_CMD_FLUSH, .done = on_done, .arg = &late };
  int r = nbd_conn_submit(c, &lc);
  if (r != -EIO || late.calls != 0)
    printf("# BAD: submit after the loop returned %d, done called %d times\n", r, late.calls);
  CHECK(r == -EIO && late.calls == 0, "  submit on a dead connection: -EIO and no completion");
  cur_conn = NULL;
  nbd_conn_close(c);
}

/* Every command completed exactly once; nothing left in flight. */
static void check_once(const char *what)
{
  bool once = true;
  for (int k = 0; k < ncmds; k++) {
    if (recs[k].calls != 1) {
      printf("#   command %d completed %d times\n", k, recs[k].calls);
      once = false;
    }
  }
  CHECK(once && last_dead && last_inflight == 0, "%s: every command completed exactly once", what);
  ncmds = 0;
}

/* ---- stream builders ---- */

static void simple(struct bytes *b, uint32_t err, uint64_t ck)
{
  b_u32(b, NBD_SIMPLE_REPLY_MAGIC);
  b_u32(b, err);
  b_u64(b, ck);
}

static void chunk_hdr(struct bytes *b, uint16_t flags, uint16_t type, uint64_t ck, uint32_t len)
{
  b_u32(b, NBD_STRUCTURED_REPLY_MAGIC);
  b_u16(b, flags);
  b_u16(b, type);
  b_u64(b, ck);
  b_u32(b, len);
}

/* OFFSET_DATA whose bytes are pattern(offset). */
static uint8_t pat(uint64_t off) { return (uint8_t)(off * 7 + (off >> 8) + 1); }

static void data_chunk(struct bytes *b, uint16_t flags, uint64_t ck, uint64_t off, uint32_t n)
{
  chunk_hdr(b, flags, NBD_REPLY_TYPE_OFFSET_DATA, ck, 8 + n);
  b_u64(b, off);
  for (uint32_t i = 0; i < n; i++)
    b_u8(b, pat(off + i));
}

static void hole_chunk(struct bytes *b, uint16_t flags, uint64_t ck, uint64_t off, uint32_t n)
{
  chunk_hdr(b, flags, NBD_REPLY_TYPE_OFFSET_HOLE, ck, 12);
  b_u64(b, off);
  b_u32(b, n);
}

static void none_done(struct bytes *b, uint64_t ck)
{
  chunk_hdr(b, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, ck, 0);
}

static void error_chunk(struct bytes *b, uint16_t flags, uint16_t type, uint64_t ck, uint32_t err,
                        const char *msg, const uint64_t *eoff)
{
  uint16_t ml = (uint16_t)strlen(msg);
  chunk_hdr(b, flags, type, ck, 6 + ml + (eoff ? 8 : 0));
  b_u32(b, err);
  b_u16(b, ml);
  b_put(b, msg, ml);
  if (eoff)
    b_u64(b, *eoff);
}

static void bs_chunk(struct bytes *b, uint16_t flags, uint64_t ck, uint32_t ctx, unsigned n,
                     const uint32_t *pairs)
{
  chunk_hdr(b, flags, NBD_REPLY_TYPE_BLOCK_STATUS, ck, 4 + 8 * n);
  b_u32(b, ctx);
  for (unsigned i = 0; i < 2 * n; i++)
    b_u32(b, pairs[i]);
}

static bool data_is(int k, uint64_t off, uint32_t from, uint32_t n)
{
  for (uint32_t i = from; i < from + n; i++)
    if (bufs[k][i] != pat(off + i))
      return false;
  return true;
}

static bool zero_is(int k, uint32_t from, uint32_t n)
{
  for (uint32_t i = from; i < from + n; i++)
    if (bufs[k][i] != 0)
      return false;
  return true;
}

/* ---- simple replies ---- */

static void test_simple(void)
{
  struct bytes b = { 0 };

  /* A READ answered with data, a WRITE and a FLUSH answered without. */
  int r = add(NBD_CMD_READ, 0, 4096, 512);
  int w = add(NBD_CMD_WRITE, 0, 0, 1024);
  int f = add(NBD_CMD_FLUSH, 0, 0, 0);
  simple(&b, 0, cookie(w));
  simple(&b, 0, cookie(r));
  for (uint32_t i = 0; i < 512; i++)
    b_u8(&b, pat(4096 + i));
  simple(&b, 0, cookie(f));
  run(false, &b);
  CHECK(recs[r].err == 0 && data_is(r, 4096, 0, 512), "simple READ reply delivers the data");
  CHECK(recs[w].err == 0 && recs[f].err == 0, "simple WRITE and FLUSH replies succeed");
  check_once("simple replies");

  /* Large READs take the direct receive path; mix with buffered small ones. */
  b_reset(&b);
  r = add(NBD_CMD_READ, 0, 0, 100000);
  int r2 = add(NBD_CMD_READ, 0, 1 << 20, 17);
  int r3 = add(NBD_CMD_READ, 0, 2 << 20, 300000);
  simple(&b, 0, cookie(r2));
  for (uint32_t i = 0; i < 17; i++)
    b_u8(&b, pat((1 << 20) + i));
  simple(&b, 0, cookie(r));
  for (uint32_t i = 0; i < 100000; i++)
    b_u8(&b, pat(i));
  simple(&b, 0, cookie(r3));
  for (uint32_t i = 0; i < 300000; i++)
    b_u8(&b, pat((2 << 20) + i));
  run(false, &b);
  CHECK(recs[r].err == 0 && data_is(r, 0, 0, 100000), "100000-byte simple READ");
  CHECK(recs[r2].err == 0 && data_is(r2, 1 << 20, 0, 17), "17-byte simple READ");
  CHECK(recs[r3].err == 0 && data_is(r3, 2 << 20, 0, 300000), "300000-byte simple READ");
  check_once("large simple READs");

  /* Server error values. */
  b_reset(&b);
  static const struct { uint32_t wire; int err; } map[] = {
    { 1, EPERM }, { 5, EIO }, { 12, ENOMEM }, { 22, EINVAL }, { 28, ENOSPC }, { 75, EOVERFLOW },
    { 95, ENOTSUP }, { 108, ESHUTDOWN }, { 13, EINVAL }, { 0xffffffff, EINVAL },
  };
  int ks[10];
  for (int i = 0; i < 10; i++)
    ks[i] = add(i % 2 ? NBD_CMD_WRITE : NBD_CMD_READ, 0, 0, 512);
  for (int i = 9; i >= 0; i--)
    simple(&b, map[i].wire, cookie(ks[i]));
  int after = add(NBD_CMD_READ, 0, 0, 8);
  simple(&b, 0, cookie(after));
  for (int i = 0; i < 8; i++)
    b_u8(&b, pat((uint64_t)i));
  run(false, &b);
  for (int i = 0; i < 10; i++)
    CHECK_EQ(recs[ks[i]].err, map[i].err, "simple reply error %u maps to errno %d", map[i].wire, map[i].err);
  CHECK(recs[after].err == 0 && data_is(after, 0, 0, 8),
        "READ errors carry no payload: the stream stays in sync");
  check_once("simple error replies");

  /* An error reply for an unknown cookie is skipped (no payload follows). */
  b_reset(&b);
  r = add(NBD_CMD_READ, 0, 0, 4);
  simple(&b, 5, UINT64_C(0xdeadbeef00000000));
  simple(&b, 5, cookie(7));
  simple(&b, 0, cookie(r));
  b_put(&b, "\x01\x08\x0f\x16", 4);
  run(false, &b);
  CHECK(recs[r].err == 0 && data_is(r, 0, 0, 4), "simple error replies for unknown cookies are skipped");
  check_once("unknown cookie, error");

  /* A zero-error simple reply for an unknown cookie: framing lost, KILL. */
  b_reset(&b);
  r = add(NBD_CMD_READ, 0, 0, 4);
  w = add(NBD_CMD_WRITE, 0, 0, 4);
  simple(&b, 0, cookie(5));
  simple(&b, 0, cookie(w));
  run(false, &b);
  CHECK(recs[r].err == EIO && recs[w].err == EIO, "zero-error reply for an unknown cookie kills the connection");
  check_once("unknown cookie, no error");

  /* A stale generation is an unknown cookie. */
  b_reset(&b);
  w = add(NBD_CMD_WRITE, 0, 0, 4);
  simple(&b, 0, (uint64_t)7 << 32 | 0);
  simple(&b, 0, cookie(w));
  run(false, &b);
  CHECK_EQ(recs[w].err, EIO, "a reply with the right slot but a stale generation is not accepted");
  check_once("stale generation");

  /* A second reply for a completed cookie is unknown. */
  b_reset(&b);
  w = add(NBD_CMD_WRITE, 0, 0, 4);
  int w2 = add(NBD_CMD_WRITE, 0, 0, 4);
  simple(&b, 0, cookie(w));
  simple(&b, 28, cookie(w));
  simple(&b, 0, cookie(w2));
  run(false, &b);
  CHECK(recs[w].err == 0 && recs[w2].err == 0, "an error reply repeated for a completed cookie is ignored");
  check_once("duplicate reply");

  /* EOF in the middle of a READ payload. */
  b_reset(&b);
  r = add(NBD_CMD_READ, 0, 0, 512);
  w = add(NBD_CMD_WRITE, 0, 0, 512);
  simple(&b, 0, cookie(r));
  b_zero(&b, 100);
  run(false, &b);
  CHECK(recs[r].err == EIO && recs[w].err == EIO, "EOF mid-payload fails everything with EIO");
  check_once("EOF mid-payload");

  /* EOF in the middle of a header. */
  b_reset(&b);
  w = add(NBD_CMD_WRITE, 0, 0, 512);
  simple(&b, 0, cookie(w));
  b.len -= 3;
  run(false, &b);
  CHECK_EQ(recs[w].err, EIO, "EOF mid-header fails with EIO");
  check_once("EOF mid-header");

  /* Nothing at all. */
  b_reset(&b);
  w = add(NBD_CMD_WRITE, 0, 0, 512);
  run(false, &b);
  CHECK_EQ(recs[w].err, EIO, "immediate EOF fails in-flight commands with EIO");
  check_once("immediate EOF");

  /* Bad magic, including the reserved historic ones and the extended one. */
  static const uint32_t badm[] = { 0x12560953, 0x96744668, 0x25609514, 0x6e8a278c, 0, 0x25609513 };
  for (unsigned i = 0; i < sizeof badm / sizeof badm[0]; i++) {
    b_reset(&b);
    r = add(NBD_CMD_READ, 0, 0, 512);
    w = add(NBD_CMD_WRITE, 0, 0, 512);
    f = add(NBD_CMD_FLUSH, 0, 0, 0);
    simple(&b, 0, cookie(f));
    b_u32(&b, badm[i]);
    b_zero(&b, 12);
    simple(&b, 0, cookie(w));
    run(false, &b);
    CHECK(recs[f].err == 0 && recs[r].err == EIO && recs[w].err == EIO,
          "bad magic 0x%08x fails every request still in flight", badm[i]);
    check_once("bad magic");
  }

  /* A structured chunk when structured replies are off. */
  b_reset(&b);
  r = add(NBD_CMD_READ, 0, 0, 512);
  data_chunk(&b, NBD_REPLY_FLAG_DONE, cookie(r), 0, 512);
  run(false, &b);
  CHECK_EQ(recs[r].err, EIO, "structured chunk without structured replies kills");
  check_once("chunk with SR off");

  b_free(&b);
}

/* ---- structured replies ---- */

static void test_structured(void)
{
  struct bytes b = { 0 };

  /* OFFSET_DATA + OFFSET_HOLE assemble a READ; NONE ends it. */
  int r = add(NBD_CMD_READ, 0, 8192, 1024);
  data_chunk(&b, 0, cookie(r), 8192, 512);
  hole_chunk(&b, 0, cookie(r), 8192 + 512, 512);
  none_done(&b, cookie(r));
  run(true, &b);
  CHECK(recs[r].err == 0 && data_is(r, 8192, 0, 512) && zero_is(r, 512, 512),
        "OFFSET_DATA + OFFSET_HOLE assemble the READ");
  check_once("data + hole");

  /* Out of order, DONE on the last content chunk, interleaved with another READ. */
  b_reset(&b);
  r = add(NBD_CMD_READ, 0, 0, 4096);
  int r2 = add(NBD_CMD_READ, 0, 65536, 2048);
  hole_chunk(&b, 0, cookie(r), 3072, 1024);
  data_chunk(&b, 0, cookie(r2), 65536 + 1024, 1024);
  data_chunk(&b, 0, cookie(r), 1024, 2048);
  hole_chunk(&b, 0, cookie(r2), 65536, 1024);
  data_chunk(&b, NBD_REPLY_FLAG_DONE, cookie(r), 0, 1024);
  none_done(&b, cookie(r2));
  run(true, &b);
  CHECK(recs[r].err == 0 && data_is(r, 0, 0, 3072) && zero_is(r, 3072, 1024),
        "out-of-order chunks assemble the READ");
  CHECK(recs[r2].err == 0 && zero_is(r2, 0, 1024) && data_is(r2, 65536, 1024, 1024),
        "interleaved READ assembled too");
  check_once("out of order");

  /* Many small chunks (beyond the inline coverage ranges). */
  b_reset(&b);
  r = add(NBD_CMD_READ, 0, 0, 64 * 16);
  for (int i = 63; i >= 0; i -= 2)
    data_chunk(&b, 0, cookie(r), (uint64_t)i * 16, 16);
  for (int i = 0; i < 64; i += 2)
    hole_chunk(&b, 0, cookie(r), (uint64_t)i * 16, 16);
  none_done(&b, cookie(r));
  run(true, &b);
  bool good = recs[r].err == 0;
  for (int i = 0; i < 64; i++)
    good &= i % 2 ? data_is(r, 0, (uint32_t)i * 16, 16) : zero_is(r, (uint32_t)i * 16, 16);
  CHECK(good, "64 alternating chunks assemble the READ");
  check_once("many chunks");

  /* A big OFFSET_DATA (direct receive path). */
  b_reset(&b);
  r = add(NBD_CMD_READ, 0, 1 << 30, 200000);
  data_chunk(&b, NBD_REPLY_FLAG_DONE, cookie(r), 1 << 30, 200000);
  run(true, &b);
  CHECK(recs[r].err == 0 && data_is(r, 1 << 30, 0, 200000), "200000-byte OFFSET_DATA");
  check_once("big chunk");

  /* Gap: DONE before the request is covered. */
  b_reset(&b);
  r = add(NBD_CMD_READ, 0, 0, 1024);
  r2 = add(NBD_CMD_READ, 0, 0, 1024);
  data_chunk(&b, NBD_REPLY_FLAG_DONE, cookie(r), 0, 512);
  data_chunk(&b, 0, cookie(r2), 0, 512);
  data_chunk(&b, NBD_REPLY_FLAG_DONE, cookie(r2), 513, 511);
  run(true, &b);
  CHECK_EQ(recs[r].err, EIO, "gap at the end -> EIO");
  CHECK_EQ(recs[r2].err, EIO, "gap in the middle -> EIO");
  check_once("gap");

  /* NONE+DONE alone to a READ: nothing covered. */
  b_reset(&b);
  r = add(NBD_CMD_READ, 0, 0, 1024);
  none_done(&b, cookie(r));
  run(true, &b);
  CHECK_EQ(recs[r].err, EIO, "READ answered by NONE alone -> EIO");
  check_once("empty read");

  /* Overlaps. */
  b_reset(&b);
  r = add(NBD_CMD_READ, 0, 0, 1024);
  r2 = add(NBD_CMD_READ, 0, 0, 1024);
  int r3 = add(NBD_CMD_READ, 0, 0, 1024);
  int after = add(NBD_CMD_READ, 0, 0, 16);
  data_chunk(&b, 0, cookie(r), 0, 512);
  data_chunk(&b, 0, cookie(r), 256, 512);
  data_chunk(&b, NBD_REPLY_FLAG_DONE, cookie(r), 768, 256);
  data_chunk(&b, 0, cookie(r2), 0, 1024);
  hole_chunk(&b, NBD_REPLY_FLAG_DONE, cookie(r2), 512, 16);
  hole_chunk(&b, 0, cookie(r3), 0, 1024);
  data_chunk(&b, NBD_REPLY_FLAG_DONE, cookie(r3), 0, 1024);
  data_chunk(&b, NBD_REPLY_FLAG_DONE, cookie(after), 0, 16);
  run(true, &b);
  CHECK_EQ(recs[r].err, EIO, "overlapping data chunks -> EIO");
  CHECK_EQ(recs[r2].err, EIO, "hole overlapping data -> EIO");
  CHECK_EQ(recs[r3].err, EIO, "data overlapping a hole -> EIO");
  CHECK(recs[after].err == 0 && data_is(after, 0, 0, 16), "overlaps are FAIL, not KILL: stream in sync");
  check_once("overlap");

  /* Out of range chunks. */
  b_reset(&b);
  r = add(NBD_CMD_READ, 0, 4096, 1024);
  r2 = add(NBD_CMD_READ, 0, 4096, 1024);
  r3 = add(NBD_CMD_READ, 0, UINT64_MAX - 1023, 1024);
  after = add(NBD_CMD_READ, 0, 0, 16);
  data_chunk(&b, NBD_REPLY_FLAG_DONE, cookie(r), 4095, 1024);
  hole_chunk(&b, NBD_REPLY_FLAG_DONE, cookie(r2), 4096 + 1000, 25);
  hole_chunk(&b, NBD_REPLY_FLAG_DONE, cookie(r3), UINT64_MAX - 10, 1024);
  data_chunk(&b, NBD_REPLY_FLAG_DONE, cookie(after), 0, 16);
  run(true, &b);
  CHECK_EQ(recs[r].err, EIO, "OFFSET_DATA before the request -> EIO");
  CHECK_EQ(recs[r2].err, EIO, "OFFSET_HOLE past the end -> EIO");
  CHECK_EQ(recs[r3].err, EIO, "OFFSET_HOLE wrapping past 2^64 -> EIO");
  CHECK(recs[after].err == 0 && data_is(after, 0, 0, 16), "out-of-range chunks are skipped: stream in sync");
  check_once("out of range");

  /* Short OFFSET_DATA and bad OFFSET_HOLE lengths. */
  b_reset(&b);
  r = add(NBD_CMD_READ, 0, 0, 512);
  r2 = add(NBD_CMD_READ, 0, 0, 512);
  after = add(NBD_CMD_READ, 0, 0, 16);
  chunk_hdr(&b, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA, cookie(r), 8);
  b_u64(&b, 0);
  chunk_hdr(&b, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_HOLE, cookie(r2), 16);
  b_u64(&b, 0);
  b_u32(&b, 512);
  b_u32(&b, 0);
  data_chunk(&b, NBD_REPLY_FLAG_DONE, cookie(after), 0, 16);
  run(true, &b);
  CHECK_EQ(recs[r].err, EIO, "OFFSET_DATA of 8 bytes -> EIO");
  CHECK_EQ(recs[r2].err, EIO, "OFFSET_HOLE of 16 bytes -> EIO");
  CHECK(recs[after].err == 0 && data_is(after, 0, 0, 16), "bad lengths skipped: stream in sync");
  check_once("bad lengths");

  /* Error chunks. */
  b_reset(&b);
  r = add(NBD_CMD_READ, 0, 4096, 1024);
  r2 = add(NBD_CMD_READ, 0, 4096, 1024);
  r3 = add(NBD_CMD_READ, 0, 4096, 1024);
  int w = add(NBD_CMD_WRITE, 0, 0, 512);
  int f = add(NBD_CMD_FLUSH, 0, 0, 0);
  int z = add(NBD_CMD_WRITE, 0, 0, 512);
  int u = add(NBD_CMD_TRIM, 0, 0, 512);
  int sh = add(NBD_CMD_WRITE, 0, 0, 512);
  uint64_t in = 4096 + 100, out = 4096 + 1024;
  error_chunk(&b, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, cookie(r), NBD_ENOSPC, "no space \x1b[31m", NULL);
  data_chunk(&b, 0, cookie(r2), 4096, 100);
  error_chunk(&b, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR_OFFSET, cookie(r2), NBD_EINVAL, "", &in);
  error_chunk(&b, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR_OFFSET, cookie(r3), NBD_EPERM, "x", &out);
  error_chunk(&b, 0, NBD_REPLY_TYPE_ERROR, cookie(w), 0, "zero", NULL);
  none_done(&b, cookie(w));
  error_chunk(&b, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, cookie(f), NBD_EOVERFLOW, "", NULL);
  error_chunk(&b, NBD_REPLY_FLAG_DONE, 0x8003, cookie(z), NBD_EPERM, "new", NULL);
  error_chunk(&b, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, cookie(u), 13, "", NULL);
  error_chunk(&b, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, cookie(sh), NBD_ESHUTDOWN, "", NULL);
  run(true, &b);
  CHECK_EQ(recs[r].err, ENOSPC, "ERROR chunk: server error mapped (ENOSPC)");
  CHECK_EQ(recs[r2].err, EINVAL, "ERROR_OFFSET inside the request: mapped (EINVAL)");
  CHECK_EQ(recs[r3].err, EIO, "ERROR_OFFSET outside the request -> EIO");
  CHECK_EQ(recs[w].err, EIO, "ERROR chunk with error 0 -> EIO");
  CHECK_EQ(recs[f].err, EOVERFLOW, "ERROR chunk to FLUSH (EOVERFLOW)");
  CHECK_EQ(recs[z].err, EPERM, "unknown error-class chunk 0x8003 carries its error");
  CHECK_EQ(recs[u].err, EINVAL, "undefined error value 13 -> EINVAL");
  CHECK_EQ(recs[sh].err, ESHUTDOWN, "ESHUTDOWN passed on");
  check_once("error chunks");

  /* First error wins; content after an error is still skipped cleanly. */
  b_reset(&b);
  r = add(NBD_CMD_READ, 0, 0, 1024);
  after = add(NBD_CMD_READ, 0, 0, 16);
  error_chunk(&b, 0, NBD_REPLY_TYPE_ERROR, cookie(r), NBD_EPERM, "first", NULL);
  error_chunk(&b, 0, NBD_REPLY_TYPE_ERROR, cookie(r), NBD_ENOSPC, "second", NULL);
  data_chunk(&b, 0, cookie(r), 0, 1024);
  none_done(&b, cookie(r));
  data_chunk(&b, NBD_REPLY_FLAG_DONE, cookie(after), 0, 16);
  run(true, &b);
  CHECK_EQ(recs[r].err, EPERM, "the first error chunk wins");
  CHECK(recs[after].err == 0 && data_is(after, 0, 0, 16), "stream in sync after error chunks");
  check_once("first error wins");

  /* Malformed error chunks kill. */
  b_reset(&b);
  r = add(NBD_CMD_READ, 0, 0, 1024);
  w = add(NBD_CMD_WRITE, 0, 0, 1024);
  chunk_hdr(&b, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, cookie(r), 8);
  b_u32(&b, NBD_EIO);
  b_u16(&b, 100); /* msglen > len - 6 */
  b_u16(&b, 0);
  simple(&b, 0, cookie(w));
  run(true, &b);
  CHECK(recs[r].err == EIO && recs[w].err == EIO, "error chunk with msglen > len-6 kills");
  check_once("malformed error chunk");

  b_reset(&b);
  r = add(NBD_CMD_READ, 0, 0, 1024);
  w = add(NBD_CMD_WRITE, 0, 0, 1024);
  chunk_hdr(&b, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, cookie(r), 4);
  b_u32(&b, NBD_EIO);
  simple(&b, 0, cookie(w));
  run(true, &b);
  CHECK(recs[r].err == EIO && recs[w].err == EIO, "error chunk shorter than 6 kills");
  check_once("short error chunk");

  /* Unknown cookie: chunk skipped by its length. */
  b_reset(&b);
  r = add(NBD_CMD_READ, 0, 0, 64);
  data_chunk(&b, NBD_REPLY_FLAG_DONE, UINT64_C(0x1234567800000000), 0, 1000);
  error_chunk(&b, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, cookie(3), NBD_EIO, "stray", NULL);
  none_done(&b, (uint64_t)9 << 32 | 0); /* right slot, wrong generation */
  data_chunk(&b, NBD_REPLY_FLAG_DONE, cookie(r), 0, 64);
  run(true, &b);
  CHECK(recs[r].err == 0 && data_is(r, 0, 0, 64), "chunks for unknown cookies are skipped");
  check_once("unknown cookie chunks");

  /* Unknown cookie with a huge length: cannot skip, KILL. */
  b_reset(&b);
  r = add(NBD_CMD_READ, 0, 0, 64);
  chunk_hdr(&b, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA, UINT64_C(0x1234567800000000), 0xfffffff0);
  data_chunk(&b, NBD_REPLY_FLAG_DONE, cookie(r), 0, 64);
  run(true, &b);
  CHECK_EQ(recs[r].err, EIO, "a 4 GiB chunk for an unknown cookie kills (not allocated)");
  check_once("huge unknown chunk");

  /* A chunk after DONE is for a retired cookie: skipped. */
  b_reset(&b);
  r = add(NBD_CMD_READ, 0, 0, 64);
  r2 = add(NBD_CMD_READ, 0, 0, 64);
  data_chunk(&b, NBD_REPLY_FLAG_DONE, cookie(r), 0, 64);
  error_chunk(&b, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, cookie(r), NBD_EIO, "late", NULL);
  data_chunk(&b, NBD_REPLY_FLAG_DONE, cookie(r), 0, 64);
  data_chunk(&b, NBD_REPLY_FLAG_DONE, cookie(r2), 0, 64);
  run(true, &b);
  CHECK(recs[r].err == 0 && recs[r2].err == 0, "chunks after DONE are ignored");
  check_once("chunk after DONE");

  /* Content chunks to commands that carry no data. */
  b_reset(&b);
  w = add(NBD_CMD_WRITE, 0, 0, 512);
  f = add(NBD_CMD_FLUSH, 0, 0, 0);
  u = add(NBD_CMD_TRIM, 0, 0, 4096);
  int bsc = add(NBD_CMD_BLOCK_STATUS, 0, 0, 4096);
  after = add(NBD_CMD_READ, 0, 0, 16);
  data_chunk(&b, NBD_REPLY_FLAG_DONE, cookie(w), 0, 512);
  hole_chunk(&b, NBD_REPLY_FLAG_DONE, cookie(f), 0, 512);
  bs_chunk(&b, NBD_REPLY_FLAG_DONE, cookie(u), 42, 1, (const uint32_t[]){ 4096, 0 });
  data_chunk(&b, NBD_REPLY_FLAG_DONE, cookie(bsc), 0, 16);
  data_chunk(&b, NBD_REPLY_FLAG_DONE, cookie(after), 0, 16);
  run(true, &b);
  CHECK_EQ(recs[w].err, EIO, "OFFSET_DATA to WRITE -> EIO");
  CHECK_EQ(recs[f].err, EIO, "OFFSET_HOLE to FLUSH -> EIO");
  CHECK_EQ(recs[u].err, EIO, "BLOCK_STATUS to TRIM -> EIO");
  CHECK_EQ(recs[bsc].err, EIO, "OFFSET_DATA to BLOCK_STATUS -> EIO");
  CHECK(recs[after].err == 0 && data_is(after, 0, 0, 16), "misplaced chunks skipped: stream in sync");
  check_once("chunk type vs command");

  /* NONE without DONE, then DONE. */
  b_reset(&b);
  w = add(NBD_CMD_WRITE, 0, 0, 512);
  chunk_hdr(&b, 0, NBD_REPLY_TYPE_NONE, cookie(w), 0);
  none_done(&b, cookie(w));
  run(true, &b);
  CHECK_EQ(recs[w].err, EIO, "NONE without DONE -> EIO");
  check_once("NONE without DONE");

  /* Simple replies while structured replies are on. */
  b_reset(&b);
  w = add(NBD_CMD_WRITE, 0, 0, 512);
  f = add(NBD_CMD_FLUSH, 0, 0, 0);
  r = add(NBD_CMD_READ, 0, 0, 512);
  simple(&b, 0, cookie(w));
  simple(&b, NBD_ENOSPC, cookie(f));
  simple(&b, NBD_EPERM, cookie(r));
  run(true, &b);
  CHECK(recs[w].err == 0 && recs[f].err == ENOSPC && recs[r].err == EPERM,
        "payload-free simple replies are fine with structured replies on");
  check_once("simple with SR on");

  b_reset(&b);
  r = add(NBD_CMD_READ, 0, 0, 16);
  w = add(NBD_CMD_WRITE, 0, 0, 512);
  simple(&b, 0, cookie(r));
  b_zero(&b, 16);
  simple(&b, 0, cookie(w));
  run(true, &b);
  CHECK(recs[r].err == EIO && recs[w].err == EIO, "a simple data reply to READ with structured replies on kills");
  check_once("simple READ with SR on");

  /* Unknown non-error chunk types kill. */
  static const uint16_t unk[] = { 3, 4, 6, 0x7fff };
  for (unsigned i = 0; i < sizeof unk / sizeof unk[0]; i++) {
    b_reset(&b);
    r = add(NBD_CMD_READ, 0, 0, 16);
    w = add(NBD_CMD_WRITE, 0, 0, 512);
    chunk_hdr(&b, 0, unk[i], cookie(r), 4);
    b_u32(&b, 0);
    simple(&b, 0, cookie(w));
    run(true, &b);
    CHECK(recs[r].err == EIO && recs[w].err == EIO, "unknown chunk type %u kills", unk[i]);
    check_once("unknown chunk type");
  }

  /* Oversized chunk lengths kill without allocating. */
  b_reset(&b);
  r = add(NBD_CMD_READ, 0, 0, 4096);
  w = add(NBD_CMD_WRITE, 0, 0, 512);
  chunk_hdr(&b, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA, cookie(r), 0xfffffff0);
  simple(&b, 0, cookie(w));
  run(true, &b);
  CHECK(recs[r].err == EIO && recs[w].err == EIO, "OFFSET_DATA of 0xfffffff0 bytes kills");
  check_once("huge OFFSET_DATA");

  b_reset(&b);
  bsc = add(NBD_CMD_BLOCK_STATUS, 0, 0, 4096);
  w = add(NBD_CMD_WRITE, 0, 0, 512);
  chunk_hdr(&b, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS, cookie(bsc), 0xfffffff0);
  simple(&b, 0, cookie(w));
  run(true, &b);
  CHECK(recs[bsc].err == EIO && recs[w].err == EIO, "BLOCK_STATUS of 0xfffffff0 bytes kills");
  check_once("huge BLOCK_STATUS");

  b_reset(&b);
  w = add(NBD_CMD_WRITE, 0, 0, 512);
  int w2 = add(NBD_CMD_WRITE, 0, 0, 512);
  chunk_hdr(&b, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, cookie(w), 0x01000000);
  simple(&b, 0, cookie(w2));
  run(true, &b);
  CHECK(recs[w].err == EIO && recs[w2].err == EIO, "16 MiB error chunk kills");
  check_once("huge error chunk");

  /* EOF in the middle of a chunk payload. */
  b_reset(&b);
  r = add(NBD_CMD_READ, 0, 0, 4096);
  data_chunk(&b, NBD_REPLY_FLAG_DONE, cookie(r), 0, 4096);
  b.len -= 1;
  run(true, &b);
  CHECK_EQ(recs[r].err, EIO, "EOF mid-chunk -> EIO");
  check_once("EOF mid-chunk");

  b_free(&b);
}

static void test_block_status(void)
{
  struct bytes b = { 0 };

  int k = add(NBD_CMD_BLOCK_STATUS, 0, 1 << 20, 4096);
  bs_chunk(&b, 0, cookie(k), 42, 3, (const uint32_t[]){ 1024, 0, 1024, 3, 8192, 1 });
  none_done(&b, cookie(k));
  run(true, &b);
  CHECK(recs[k].err == 0 && recs[k].ext_calls == 1, "block status answered");
  CHECK(recs[k].ext_off == 1 << 20 && recs[k].n_ext == 3 && recs[k].ext[0].length == 1024 &&
            recs[k].ext[1].flags == 3 && recs[k].ext[2].length == 2048 && recs[k].ext[2].flags == 1,
        "extents delivered, last one clamped");
  check_once("block status");

  b_reset(&b);
  k = add(NBD_CMD_BLOCK_STATUS, 0, 0, 4096);
  int k2 = add(NBD_CMD_BLOCK_STATUS, NBD_CMD_FLAG_REQ_ONE, 0, 4096);
  int k3 = add(NBD_CMD_BLOCK_STATUS, 0, 0, 4096);
  int k4 = add(NBD_CMD_BLOCK_STATUS, 0, 0, 4096);
  int after = add(NBD_CMD_READ, 0, 0, 16);
  bs_chunk(&b, NBD_REPLY_FLAG_DONE, cookie(k), 7, 1, (const uint32_t[]){ 4096, 0 });
  bs_chunk(&b, NBD_REPLY_FLAG_DONE, cookie(k2), 42, 2, (const uint32_t[]){ 1024, 0, 1024, 0 });
  bs_chunk(&b, NBD_REPLY_FLAG_DONE, cookie(k3), 42, 2, (const uint32_t[]){ 1024, 0, 0, 0 });
  chunk_hdr(&b, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS, cookie(k4), 9);
  b_zero(&b, 9);
  data_chunk(&b, NBD_REPLY_FLAG_DONE, cookie(after), 0, 16);
  run(true, &b);
  CHECK(recs[k].err == EIO && recs[k].ext_calls == 0, "unknown context id -> EIO, no extents");
  CHECK(recs[k2].err == EIO && recs[k2].ext_calls == 0, "REQ_ONE with two extents -> EIO");
  CHECK(recs[k3].err == EIO && recs[k3].ext_calls == 0, "zero-length extent -> EIO");
  CHECK(recs[k4].err == EIO && recs[k4].ext_calls == 0, "9-byte block status payload -> EIO");
  CHECK(recs[after].err == 0 && data_is(after, 0, 0, 16), "bad block status skipped: stream in sync");
  check_once("bad block status");

  /* Spec 9.69: a context missing at DONE, or answered twice, fails the command. */
  b_reset(&b);
  k = add(NBD_CMD_BLOCK_STATUS, 0, 0, 4096);
  k2 = add(NBD_CMD_BLOCK_STATUS, 0, 0, 4096);
  none_done(&b, cookie(k));
  bs_chunk(&b, 0, cookie(k2), 42, 1, (const uint32_t[]){ 4096, 0 });
  bs_chunk(&b, NBD_REPLY_FLAG_DONE, cookie(k2), 42, 1, (const uint32_t[]){ 4096, 3 });
  run(true, &b);
  CHECK(recs[k].err != 0, "BLOCK_STATUS answered by NONE alone (no extents) fails (got err %d)", recs[k].err);
  CHECK(recs[k2].err != 0 && recs[k2].ext_calls <= 1,
        "BLOCK_STATUS with two chunks for one context fails (got err %d, %d extent callbacks)",
        recs[k2].err, recs[k2].ext_calls);
  check_once("block status context count");

  b_free(&b);
}

/* ESHUTDOWN: the server is going away.  Requests already in flight still
 * get their answers; new ones are refused at once. */
static int late_submit = 1, late_calls;
static void on_done_then_submit(void *arg, int err)
{
  on_done(arg, err);
  static struct rec late;
  struct nbd_cmd lc = { .type = NBD_CMD_FLUSH, .done = on_done, .arg = &late };
  late_submit = nbd_conn_submit(cur_conn, &lc);
  late_calls = late.calls;
}

static void test_shutdown(void)
{
  struct bytes b = { 0 };
  for (int sr = 0; sr < 2; sr++) {
    b_reset(&b);
    int w = add(NBD_CMD_WRITE, 0, 0, 512);
    int r = add(NBD_CMD_READ, 0, 0, 16);
    int f = add(NBD_CMD_FLUSH, 0, 0, 0);
    cmds[w].done = on_done_then_submit;
    if (sr)
      chunk_hdr(&b, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, cookie(w), 6), b_u32(&b, NBD_ESHUTDOWN), b_u16(&b, 0);
    else
      simple(&b, NBD_ESHUTDOWN, cookie(w));
    if (sr)
      data_chunk(&b, NBD_REPLY_FLAG_DONE, cookie(r), 0, 16);
    else {
      simple(&b, 0, cookie(r));
      for (int i = 0; i < 16; i++)
        b_u8(&b, pat((uint64_t)i));
    }
    simple(&b, 0, cookie(f));
    late_submit = 1;
    run(sr, &b);
    CHECK_EQ(recs[w].err, ESHUTDOWN, "%s: ESHUTDOWN reported to its command", sr ? "SR" : "simple");
    CHECK(late_submit == -EIO && late_calls == 0, "%s: after ESHUTDOWN new commands are refused (%d)",
          sr ? "SR" : "simple", late_submit);
    CHECK(recs[r].err == 0 && data_is(r, 0, 0, 16) && recs[f].err == 0,
          "%s: requests in flight at ESHUTDOWN still get their answers", sr ? "SR" : "simple");
    check_once("ESHUTDOWN");
  }
  b_free(&b);
}

/* More commands than one page of slots; replies in reverse order. */
static void test_many(void)
{
  struct bytes b = { 0 };
  const int n = 300;
  for (int i = 0; i < n; i++)
    add(i % 3 == 0 ? NBD_CMD_READ : NBD_CMD_WRITE, 0, (uint64_t)i * 8, 8);
  for (int i = n - 1; i >= 0; i--) {
    if (i % 3 == 0)
      data_chunk(&b, NBD_REPLY_FLAG_DONE, cookie(i), (uint64_t)i * 8, 8);
    else
      none_done(&b, cookie(i));
  }
  run(true, &b);
  bool good = true;
  for (int i = 0; i < n; i++)
    good &= recs[i].err == 0 && (i % 3 || data_is(i, (uint64_t)i * 8, 0, 8));
  CHECK(good, "300 commands (two slot pages) answered in reverse order");
  check_once("300 commands");

  b_reset(&b);
  for (int i = 0; i < n; i++)
    add(NBD_CMD_WRITE, 0, 0, 8);
  for (int i = 0; i < n; i += 2)
    simple(&b, 0, cookie(i));
  run(false, &b);
  good = true;
  for (int i = 0; i < n; i++)
    good &= recs[i].err == (i % 2 ? EIO : 0);
  CHECK(good, "half answered, the rest fail with EIO at EOF");
  check_once("300 commands, half answered");
  b_free(&b);
}


/* ---- extended headers ---- */

static void xhdr(struct bytes *b, uint16_t flags, uint16_t type, uint64_t ck, uint64_t off, uint64_t len)
{
  b_u32(b, NBD_EXTENDED_REPLY_MAGIC);
  b_u16(b, flags);
  b_u16(b, type);
  b_u64(b, ck);
  b_u64(b, off);
  b_u64(b, len);
}

static void xnone(struct bytes *b, uint64_t ck, uint64_t off)
{
  xhdr(b, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, ck, off, 0);
}

static void test_extended(void)
{
  struct bytes b = { 0 };
  const uint64_t G = UINT64_C(1) << 30;
  run_extended = true;

  /* A READ in two chunks, a 6 GiB WRITE_ZEROES, a 6 GiB BLOCK_STATUS. */
  int rd = add(NBD_CMD_READ, 0, 8192, 1024);
  int wz = add(NBD_CMD_WRITE_ZEROES, 0, G, 6 * G);
  int bs = add(NBD_CMD_BLOCK_STATUS, 0, G, 6 * G);
  int wr = add(NBD_CMD_WRITE, 0, 0, 512);
  xhdr(&b, 0, NBD_REPLY_TYPE_OFFSET_DATA, cookie(rd), 8192, 8 + 512);
  b_u64(&b, 8192);
  for (int i = 0; i < 512; i++)
    b_u8(&b, pat(8192 + (uint64_t)i));
  xhdr(&b, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_HOLE, cookie(rd), 8192, 12);
  b_u64(&b, 8192 + 512);
  b_u32(&b, 512);
  xnone(&b, cookie(wz), G);
  xhdr(&b, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS_EXT, cookie(bs), G, 8 + 32);
  b_u32(&b, 42);
  b_u32(&b, 2);
  b_u64(&b, 5 * G);
  b_u64(&b, NBD_STATE_HOLE | NBD_STATE_ZERO);
  b_u64(&b, 4 * G);
  b_u64(&b, 0);
  xnone(&b, cookie(wr), 0);
  run(true, &b);
  CHECK(recs[rd].err == 0 && bufs[rd][0] == pat(8192) && bufs[rd][600] == 0, "ext: READ from data and hole chunks");
  CHECK_EQ(recs[wz].err, 0, "ext: 6 GiB WRITE_ZEROES acknowledged by one reply");
  CHECK(recs[bs].err == 0 && recs[bs].n_ext == 2 && recs[bs].ext[0].length == 5 * G &&
        recs[bs].ext[1].length == G && recs[bs].ext[0].flags == 3,
        "ext: BLOCK_STATUS_EXT with a 5 GiB extent, the last clamped to the request");
  CHECK_EQ(recs[wr].err, 0, "ext: WRITE acknowledged");
  check_once("ext: mixed commands");

  /* Compact block status in extended mode fails the request only. */
  b_reset(&b);
  bs = add(NBD_CMD_BLOCK_STATUS, 0, 0, 4096);
  int fl = add(NBD_CMD_FLUSH, 0, 0, 0);
  xhdr(&b, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS, cookie(bs), 0, 12);
  b_u32(&b, 42);
  b_u32(&b, 4096);
  b_u32(&b, 0);
  xnone(&b, cookie(fl), 0);
  run(true, &b);
  CHECK(recs[bs].err == EIO && recs[bs].ext_calls == 0 && recs[fl].err == 0,
        "ext: compact BLOCK_STATUS chunk fails its request, the stream goes on");
  check_once("ext: compact block status");

  /* BLOCK_STATUS_EXT whose count does not match, or with a zero extent. */
  for (int variant = 0; variant < 3; variant++) {
    b_reset(&b);
    bs = add(NBD_CMD_BLOCK_STATUS, 0, 0, 4096);
    fl = add(NBD_CMD_FLUSH, 0, 0, 0);
    xhdr(&b, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS_EXT, cookie(bs), 0, 8 + 16);
    b_u32(&b, 42);
    b_u32(&b, variant == 0 ? 2 : variant == 1 ? 0 : 1);
    b_u64(&b, variant == 2 ? 0 : 4096);
    b_u64(&b, 0);
    xnone(&b, cookie(fl), 0);
    run(true, &b);
    CHECK(recs[bs].err == EIO && recs[bs].ext_calls == 0 && recs[fl].err == 0,
          "ext: BLOCK_STATUS_EXT %s fails its request only",
          variant == 0 ? "with too many descriptors counted" : variant == 1 ? "with zero descriptors"
                                                                    : "with a zero-length extent");
    check_once("ext: bad BLOCK_STATUS_EXT");
  }

  /* Violations that lose the connection: every command fails once. */
  const char *what[] = { "simple reply", "structured chunk", "wrong offset", "2^32 length",
                         "huge length for an unknown cookie" };
  for (int v = 0; v < 5; v++) {
    b_reset(&b);
    fl = add(NBD_CMD_FLUSH, 0, 0, 0);
    int tr = add(NBD_CMD_TRIM, 0, 4096, 8 * G);
    if (v == 0)
      simple(&b, 0, cookie(fl));
    else if (v == 1)
      none_done(&b, cookie(fl));
    else if (v == 2)
      xnone(&b, cookie(tr), 0);
    else if (v == 3)
      xhdr(&b, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, cookie(tr), 4096, UINT64_C(1) << 32);
    else
      xhdr(&b, 0, NBD_REPLY_TYPE_OFFSET_DATA, cookie(99), 0, UINT64_C(1) << 33);
    xnone(&b, cookie(fl), 0);
    xnone(&b, cookie(tr), 4096);
    run(true, &b);
    CHECK(recs[fl].err == EIO && recs[tr].err == EIO, "ext: %s kills the connection", what[v]);
    check_once(what[v]);
  }
  run_extended = false;
  b_free(&b);
}

int main(void)
{
  test_simple();
  test_structured();
  test_block_status();
  test_shutdown();
  test_many();
  test_extended();
  for (int k = 0; k < MAXCMD; k++)
    free(bufs[k]);
  return done_testing();
}
