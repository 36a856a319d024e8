/* test-wlog.c: the write log (src/wlog.c): appending changes and
 * accounting for them, how a snapshot resolves overlaps (newest wins),
 * buffer references, forgetting by sequence number, allocation failures,
 * a randomized comparison with a byte model, and timings that catch an
 * add or a forget costing O(n) or a snapshot costing O(n^2).
 *
 * Every byte written with sequence number s at device offset p holds
 * pat(s, p), so an entry's data can be checked without knowing which
 * buffer it came from: a data pointer off by some bytes reads the pattern
 * of another offset and fails.
 */
#include <dlfcn.h>
#include <errno.h>
#include <stdatomic.h>
#include <time.h>

#include "check.h"
#include "nbd-proto.h"
#include "wlog.h"

/* ---- realloc failure injection ----
 * Every array of the log comes from realloc.  While realloc_fail > 0, the
 * next realloc_skip calls succeed, then the next realloc_fail calls fail. */
static int realloc_fail, realloc_skip;

void *realloc(void *p, size_t n)
{
  static void *(*real)(void *, size_t);
  if (realloc_fail > 0) {
    if (realloc_skip > 0) {
      realloc_skip--;
    } else {
      realloc_fail--;
      errno = ENOMEM;
      return NULL;
    }
  }
  if (!real)
    real = (void *(*)(void *, size_t))dlsym(RTLD_NEXT, "realloc");
  return real(p, n);
}

/* ---- helpers ---- */

static uint8_t pat(uint64_t seq, uint64_t pos)
{
  return (uint8_t)(seq * 151 + pos * 13 + (pos >> 8) * 7 + 1);
}

static unsigned refs(struct wbuf *b)
{
  return atomic_load(&b->refs);
}

static double now_s(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A buffer holding pat(seq, off..off+len), preceded by pad bytes of junk
 * (so data is not always buf->data). */
static struct wbuf *mkbuf(uint64_t seq, uint64_t off, size_t len, size_t pad)
{
  uint8_t *tmp = malloc(pad + len + 1);
  memset(tmp, 0xee, pad + len + 1);
  for (size_t i = 0; i < len; i++)
    tmp[pad + i] = pat(seq, off + i);
  struct wbuf *b = wbuf_new(tmp, pad + len + 1);
  free(tmp);
  if (!b)
    abort();
  return b;
}

/* Log a write of pat(seq, ...) at [off, off+len) from a new buffer, which
 * is returned with the caller's reference. */
static struct wbuf *wr(struct wlog *l, uint64_t off, uint64_t len, uint64_t seq)
{
  struct wbuf *b = mkbuf(seq, off, len, 3);
  int r = wlog_add(l, NBD_CMD_WRITE, 0, off, len, b, b->data + 3, seq);
  if (r)
    printf("#   wlog_add(WRITE, %llu, %llu, seq %llu) = %d\n", (unsigned long long)off,
           (unsigned long long)len, (unsigned long long)seq, r);
  return b;
}

/* The same, dropping the caller's reference: the log is the only owner. */
static void wr_owned(struct wlog *l, uint64_t off, uint64_t len, uint64_t seq)
{
  wbuf_put(wr(l, off, len, seq));
}

static int trim(struct wlog *l, uint16_t type, uint64_t off, uint64_t len, uint64_t seq)
{
  return wlog_add(l, type, 0, off, len, NULL, NULL, seq);
}

/* What a snapshot entry should be; buf NULL means "any" for WRITE. */
struct want {
  uint64_t off, len;
  uint16_t type;
  uint64_t seq;
  struct wbuf *buf;
};
#define W(o, n, s) { (o), (n), NBD_CMD_WRITE, (s), NULL }
#define T(o, n, s) { (o), (n), NBD_CMD_TRIM, (s), NULL }
#define Z(o, n, s) { (o), (n), NBD_CMD_WRITE_ZEROES, (s), NULL }

/* Does one snapshotted entry hold what it should?  Prints why not. */
static bool entry_ok(const struct wlog_entry *e, const struct want *w, size_t i)
{
  if (e->offset != w->off || e->len != w->len || e->type != w->type || e->seq != w->seq) {
    printf("#   entry %zu is [%llu, +%llu) type %u seq %llu, want [%llu, +%llu) type %u seq %llu\n",
           i, (unsigned long long)e->offset, (unsigned long long)e->len, e->type,
           (unsigned long long)e->seq, (unsigned long long)w->off, (unsigned long long)w->len,
           w->type, (unsigned long long)w->seq);
    return false;
  }
  if (e->type != NBD_CMD_WRITE) {
    if (e->buf || e->data) {
      printf("#   entry %zu: type %u with a buffer or data\n", i, e->type);
      return false;
    }
    return true;
  }
  if (!e->buf || !e->data || (w->buf && e->buf != w->buf)) {
    printf("#   entry %zu: wrong buffer %p (want %p) or no data\n", i, (void *)e->buf,
           (void *)w->buf);
    return false;
  }
  if (e->data < e->buf->data || e->data + e->len > e->buf->data + e->buf->len) {
    printf("#   entry %zu: data outside its buffer\n", i);
    return false;
  }
  for (uint64_t k = 0; k < e->len; k++)
    if (e->data[k] != pat(e->seq, e->offset + k)) {
      printf("#   entry %zu: byte %llu is 0x%02x, want 0x%02x\n", i, (unsigned long long)k,
             e->data[k], pat(e->seq, e->offset + k));
      return false;
    }
  return true;
}

/* One check: a snapshot of the log holds exactly these entries, in this
 * order. */
static void expect(struct wlog *l, const struct want *w, size_t n, const char *what)
{
  struct wlog_entry *e;
  long got = wlog_snapshot(l, &e);
  bool ok = got == (long)n;
  if (!ok)
    printf("#   %ld snapshot entries, want %zu\n", got, n);
  for (size_t i = 0; ok && i < n; i++)
    ok = entry_ok(&e[i], &w[i], i);
  CHECK(ok, "%s", what);
  if (got > 0)
    wlog_snapshot_free(e, (size_t)got);
}
#define EXPECT(l, what, ...)                                                       \
  do {                                                                             \
    const struct want expect_w_[] = { __VA_ARGS__ };                               \
    expect((l), expect_w_, sizeof expect_w_ / sizeof expect_w_[0], (what));        \
  } while (0)

/* The log's accounting: entries retained and their payload bytes. */
#define ACCT(l, count, bytes, what)                                                      \
  do {                                                                                   \
    size_t acct_c_ = wlog_count(l);                                                      \
    uint64_t acct_b_ = wlog_bytes(l);                                                    \
    CHECK(acct_c_ == (size_t)(count) && acct_b_ == (uint64_t)(bytes),                    \
          "%s: %zu entries, %llu bytes", (what), (size_t)(count),                        \
          (unsigned long long)(bytes));                                                  \
    if (acct_c_ != (size_t)(count) || acct_b_ != (uint64_t)(bytes))                      \
      printf("#   got %zu entries, %llu bytes\n", acct_c_, (unsigned long long)acct_b_); \
  } while (0)

/* ---- cases ---- */

static void test_wbuf(void)
{
  const char src[] = "payload";
  struct wbuf *b = wbuf_new(src, sizeof src);
  CHECK(b && b->len == sizeof src && !memcmp(b->data, src, sizeof src),
        "wbuf_new copies its source");
  CHECK_EQ(refs(b), 1, "a new buffer has one reference");
  CHECK(wbuf_get(b) == b && refs(b) == 2, "wbuf_get adds a reference and returns the buffer");
  wbuf_put(b);
  CHECK_EQ(refs(b), 1, "wbuf_put drops one");
  wbuf_put(b); /* freed: ASan reports a leak otherwise */
  CHECK(wbuf_get(NULL) == NULL, "wbuf_get(NULL) is NULL");
  wbuf_put(NULL);
  struct wbuf *e = wbuf_new(NULL, 0);
  CHECK(e && e->len == 0 && refs(e) == 1, "an empty buffer");
  wbuf_put(e);
  CHECK(wbuf_new(src, SIZE_MAX) == NULL, "a buffer too large to allocate is NULL");
}

static void test_empty(void)
{
  struct wlog *l = wlog_new();
  CHECK(l != NULL, "wlog_new");
  ACCT(l, 0, 0, "a new log is empty");
  struct wlog_entry *e = (struct wlog_entry *)1;
  CHECK(wlog_snapshot(l, &e) == 0 && e == NULL, "snapshot of an empty log: 0 and NULL");
  wlog_snapshot_free(NULL, 0);
  wlog_forget(l, UINT64_MAX);
  ACCT(l, 0, 0, "forgetting in an empty log");
  struct wbuf *b = mkbuf(1, 0, 16, 0);
  CHECK(wlog_add(l, NBD_CMD_WRITE, 0, 100, 0, b, b->data, 1) == 0 && wlog_count(l) == 0 &&
            refs(b) == 1,
        "a zero-length write is accepted and keeps nothing");
  wr_owned(l, 0, 10, 2);
  CHECK(trim(l, NBD_CMD_TRIM, 5, 0, 3) == 0, "a zero-length trim is accepted");
  EXPECT(l, "a zero-length change hides nothing", W(0, 10, 2));
  ACCT(l, 1, 10, "a zero-length change is not counted");
  CHECK(wlog_add(l, NBD_CMD_WRITE, 0, UINT64_MAX - 9, 10, b, b->data, 4) == -EINVAL &&
            refs(b) == 1,
        "a range past 2^64 is refused, without a reference");
  CHECK(trim(l, NBD_CMD_TRIM, UINT64_MAX, 1, 4) == -EINVAL, "so is one at its last byte");
  CHECK_EQ(trim(l, NBD_CMD_WRITE_ZEROES, UINT64_MAX - 10, 10, 4), 0,
           "a range ending at 2^64 - 1 is kept");
  EXPECT(l, "the log after the refused ranges", W(0, 10, 2), Z(UINT64_MAX - 10, 10, 4));
  ACCT(l, 2, 10, "refused ranges are not counted");
  wbuf_put(b);
  wlog_free(l);
  wlog_free(NULL);
}

/* An add appends: it cuts nothing, so superseded changes still count and
 * still hold their buffers until forgotten. */
static void test_append(void)
{
  struct wlog *l = wlog_new();
  struct wbuf *a = wr(l, 0, 100, 1);
  struct wbuf *b = wr(l, 0, 100, 2);
  struct wbuf *c = wr(l, 50, 100, 3);
  ACCT(l, 3, 300, "overlapping writes are all retained and counted");
  CHECK(refs(a) == 2 && refs(b) == 2 && refs(c) == 2,
        "one log reference per entry, superseded or not");
  EXPECT(l, "the snapshot has the newest bytes only", { 0, 50, NBD_CMD_WRITE, 2, b },
         { 50, 100, NBD_CMD_WRITE, 3, c });
  struct wlog_entry *e;
  long n = wlog_snapshot(l, &e);
  CHECK(n == 2 && refs(a) == 2 && refs(b) == 3 && refs(c) == 3,
        "a snapshot references only the buffers it shows");
  CHECK(n == 2 && e[0].data == b->data + 3 && e[1].data == c->data + 3,
        "whole-head pieces point at their buffers' first byte");
  wlog_snapshot_free(e, n > 0 ? (size_t)n : 0);
  CHECK(refs(a) == 2 && refs(b) == 2 && refs(c) == 2, "snapshot_free drops its references");
  CHECK_EQ(trim(l, NBD_CMD_TRIM, 0, 1000, 4), 0, "a trim over everything");
  ACCT(l, 4, 300, "a trim adds an entry and no bytes, and hides without dropping");
  EXPECT(l, "the snapshot is the trim", T(0, 1000, 4));
  CHECK(refs(a) == 2 && refs(b) == 2 && refs(c) == 2, "the hidden writes keep their buffers");
  wlog_forget(l, 3);
  ACCT(l, 1, 0, "forgetting the writes drops their bytes");
  CHECK(refs(a) == 1 && refs(b) == 1 && refs(c) == 1, "and their references");
  EXPECT(l, "the trim stays", T(0, 1000, 4));
  wlog_free(l);
  wbuf_put(a);
  wbuf_put(b);
  wbuf_put(c);
}

static void test_disjoint(void)
{
  struct wlog *l = wlog_new();
  wr_owned(l, 1000, 100, 1);
  wr_owned(l, 0, 10, 2);
  wr_owned(l, 5000, 1, 3);
  wr_owned(l, 10, 990, 4); /* touches both neighbours: no merging, no cutting */
  wr_owned(l, 1100, 50, 5);
  EXPECT(l, "disjoint writes, sorted by offset",
         W(0, 10, 2), W(10, 990, 4), W(1000, 100, 1), W(1100, 50, 5), W(5000, 1, 3));
  ACCT(l, 5, 10 + 990 + 100 + 50 + 1, "disjoint writes");
  CHECK(trim(l, NBD_CMD_TRIM, 6000, 4096, 6) == 0 &&
            trim(l, NBD_CMD_WRITE_ZEROES, 3000, 100, 7) == 0,
        "disjoint trim and zeroes");
  EXPECT(l, "trims in their places",
         W(0, 10, 2), W(10, 990, 4), W(1000, 100, 1), W(1100, 50, 5), Z(3000, 100, 7),
         W(5000, 1, 3), T(6000, 4096, 6));
  ACCT(l, 7, 10 + 990 + 100 + 50 + 1, "trims count no bytes");
  wlog_free(l);
}

static void test_cut_start(void)
{
  struct wlog *l = wlog_new();
  struct wbuf *old = wr(l, 100, 100, 1);
  struct wbuf *nw = wr(l, 50, 100, 2);
  EXPECT(l, "a write over the head of an older one hides that head",
         { 50, 100, NBD_CMD_WRITE, 2, nw }, { 150, 50, NBD_CMD_WRITE, 1, old });
  CHECK(refs(old) == 2 && refs(nw) == 2, "one log reference each");
  ACCT(l, 2, 200, "both writes counted whole");
  struct wlog_entry *e;
  long n = wlog_snapshot(l, &e);
  CHECK(n == 2 && e[1].data == old->data + 3 + 50, "the older piece's data starts 50 in");
  CHECK_EQ(refs(old), 3, "its piece holds a reference");
  wlog_snapshot_free(e, n > 0 ? (size_t)n : 0);
  /* Exactly at the start, shorter. */
  wr_owned(l, 150, 10, 3);
  EXPECT(l, "an exact-start write hides the head",
         W(50, 100, 2), W(150, 10, 3), W(160, 40, 1));
  ACCT(l, 3, 210, "three writes");
  wlog_free(l);
  CHECK(refs(old) == 1 && refs(nw) == 1, "wlog_free drops the references");
  wbuf_put(old);
  wbuf_put(nw);
}

static void test_cut_end(void)
{
  struct wlog *l = wlog_new();
  struct wbuf *old = wr(l, 100, 100, 1);
  struct wbuf *nw = wr(l, 150, 100, 2);
  EXPECT(l, "a write over the tail of an older one hides that tail",
         { 100, 50, NBD_CMD_WRITE, 1, old }, { 150, 100, NBD_CMD_WRITE, 2, nw });
  CHECK(refs(old) == 2 && refs(nw) == 2, "one log reference each");
  ACCT(l, 2, 200, "the hidden tail still counts");
  wr_owned(l, 140, 10, 3);
  EXPECT(l, "an exact-end write hides the tail", W(100, 40, 1), W(140, 10, 3), W(150, 100, 2));
  wlog_free(l);
  CHECK(refs(old) == 1 && refs(nw) == 1, "wlog_free drops the references");
  wbuf_put(old);
  wbuf_put(nw);
}

static void test_split(void)
{
  struct wlog *l = wlog_new();
  struct wbuf *old = wr(l, 100, 200, 1);
  struct wbuf *nw = wr(l, 150, 50, 2);
  EXPECT(l, "a write inside an older one splits it in the snapshot",
         { 100, 50, NBD_CMD_WRITE, 1, old }, { 150, 50, NBD_CMD_WRITE, 2, nw },
         { 200, 100, NBD_CMD_WRITE, 1, old });
  CHECK(refs(old) == 2 && refs(nw) == 2, "one log reference per entry");
  ACCT(l, 2, 250, "two entries, all their bytes");
  struct wlog_entry *e;
  long n = wlog_snapshot(l, &e);
  CHECK(n == 3 && e[0].data == old->data + 3 && e[2].data == old->data + 3 + 100,
        "the halves point at their own bytes of the shared buffer");
  CHECK_EQ(refs(old), 4, "each half holds a snapshot reference");
  wlog_snapshot_free(e, n > 0 ? (size_t)n : 0);
  CHECK_EQ(refs(old), 2, "snapshot_free drops them");
  /* Split a half again. */
  wr_owned(l, 250, 10, 3);
  CHECK_EQ(refs(old), 2, "an add takes no reference on the buffers it hides");
  EXPECT(l, "split of a split",
         W(100, 50, 1), W(150, 50, 2), W(200, 50, 1), W(250, 10, 3), W(260, 40, 1));
  wlog_forget(l, 1);
  EXPECT(l, "forgetting the old seq drops every piece", W(150, 50, 2), W(250, 10, 3));
  CHECK_EQ(refs(old), 1, "and its reference");
  ACCT(l, 2, 60, "after forgetting the split write");
  wlog_forget(l, 2);
  CHECK_EQ(refs(nw), 1, "forgetting the new one drops its reference");
  EXPECT(l, "one left", W(250, 10, 3));
  wlog_free(l);
  wbuf_put(old);
  wbuf_put(nw);
}

static void test_cover(void)
{
  struct wlog *l = wlog_new();
  struct wbuf *a = wr(l, 100, 100, 1);
  struct wbuf *b = wr(l, 100, 100, 2);
  EXPECT(l, "an identical range hides the older entry", { 100, 100, NBD_CMD_WRITE, 2, b });
  struct wbuf *c = wr(l, 50, 200, 3);
  EXPECT(l, "a larger range hides it", { 50, 200, NBD_CMD_WRITE, 3, c });
  CHECK(refs(a) == 2 && refs(b) == 2 && refs(c) == 2, "hidden entries keep their references");

  /* Several entries at once: partial, whole, whole, whole trim, partial,
   * and a write splitting the first. */
  wr_owned(l, 300, 100, 4);
  wr_owned(l, 420, 10, 5);
  wr_owned(l, 440, 10, 6);
  trim(l, NBD_CMD_TRIM, 460, 20, 7);
  wr_owned(l, 500, 100, 8);
  wr_owned(l, 310, 5, 9);
  EXPECT(l, "before the big cover",
         W(50, 200, 3), W(300, 10, 4), W(310, 5, 9), W(315, 85, 4), W(420, 10, 5),
         W(440, 10, 6), T(460, 20, 7), W(500, 100, 8));
  struct wbuf *d = wr(l, 200, 350, 10);
  EXPECT(l, "one write covering many entries",
         W(50, 150, 3), { 200, 350, NBD_CMD_WRITE, 10, d }, W(550, 50, 8));
  ACCT(l, 10, 100 + 100 + 200 + 100 + 10 + 10 + 100 + 5 + 350, "after the cover");
  trim(l, NBD_CMD_WRITE_ZEROES, 0, 1000, 11);
  EXPECT(l, "zeroes over everything", Z(0, 1000, 11));
  CHECK(refs(a) == 2 && refs(b) == 2 && refs(c) == 2 && refs(d) == 2,
        "every hidden write still referenced");
  wlog_forget(l, 10);
  CHECK(refs(a) == 1 && refs(b) == 1 && refs(c) == 1 && refs(d) == 1,
        "forgetting them drops every write reference");
  ACCT(l, 1, 0, "the zeroes alone");
  EXPECT(l, "zeroes still over everything", Z(0, 1000, 11));
  wlog_free(l);
  wbuf_put(a);
  wbuf_put(b);
  wbuf_put(c);
  wbuf_put(d);
}

/* Equal seqs: the change added later is the newer. */
static void test_equal_seq(void)
{
  struct wlog *l = wlog_new();
  struct wbuf *a = wr(l, 0, 100, 5);
  struct wbuf *b = wr(l, 50, 100, 5);
  trim(l, NBD_CMD_TRIM, 120, 10, 5);
  EXPECT(l, "with equal seqs the later add wins", { 0, 50, NBD_CMD_WRITE, 5, a },
         { 50, 70, NBD_CMD_WRITE, 5, b }, T(120, 10, 5), { 130, 20, NBD_CMD_WRITE, 5, b });
  struct wbuf *c = wr(l, 0, 200, 5);
  EXPECT(l, "and again", { 0, 200, NBD_CMD_WRITE, 5, c });
  wlog_forget(l, 4);
  ACCT(l, 4, 400, "forget(4) keeps all of seq 5");
  wlog_forget(l, 5);
  ACCT(l, 0, 0, "forget(5) drops all of them");
  CHECK(refs(a) == 1 && refs(b) == 1 && refs(c) == 1, "references dropped");
  wlog_free(l);
  wbuf_put(a);
  wbuf_put(b);
  wbuf_put(c);
}

/* Segments of one entry that boundaries of hidden entries cut apart come
 * back together; pieces of different entries never merge. */
static void test_merge(void)
{
  struct wlog *l = wlog_new();
  wr_owned(l, 40, 20, 1);
  trim(l, NBD_CMD_TRIM, 70, 5, 2);
  trim(l, NBD_CMD_WRITE_ZEROES, 10, 5, 3);
  struct wbuf *x = wr(l, 0, 100, 4);
  EXPECT(l, "an entry over hidden boundaries is one piece", { 0, 100, NBD_CMD_WRITE, 4, x });
  struct wlog_entry *e;
  long n = wlog_snapshot(l, &e);
  CHECK(n == 1 && e[0].data == x->data + 3, "its data is the entry's");
  wlog_snapshot_free(e, n > 0 ? (size_t)n : 0);

  wr_owned(l, 205, 10, 5);
  trim(l, NBD_CMD_TRIM, 240, 30, 6);
  struct wbuf *y = wr(l, 200, 100, 7);
  wr_owned(l, 250, 10, 8);
  EXPECT(l, "the pieces around a newer write merge their hidden segments",
         { 0, 100, NBD_CMD_WRITE, 4, x }, { 200, 50, NBD_CMD_WRITE, 7, y }, W(250, 10, 8),
         { 260, 40, NBD_CMD_WRITE, 7, y });

  wr_owned(l, 400, 10, 9);
  wr_owned(l, 410, 10, 10);
  trim(l, NBD_CMD_TRIM, 420, 10, 11);
  trim(l, NBD_CMD_TRIM, 430, 10, 11);
  trim(l, NBD_CMD_TRIM, 440, 10, 12);
  EXPECT(l, "adjacent pieces of different entries stay apart", W(0, 100, 4), W(200, 50, 7),
         W(250, 10, 8), W(260, 40, 7), W(400, 10, 9), W(410, 10, 10), T(420, 10, 11),
         T(430, 10, 11), T(440, 10, 12));
  wlog_free(l);
  wbuf_put(x);
  wbuf_put(y);
}

static void test_same_buffer(void)
{
  struct wlog *l = wlog_new();
  struct wbuf *b = mkbuf(1, 0, 100, 0);
  /* One buffer sent as two writes (a split command), then sent again. */
  CHECK(wlog_add(l, NBD_CMD_WRITE, 0, 0, 50, b, b->data, 1) == 0 &&
            wlog_add(l, NBD_CMD_WRITE, 0, 50, 50, b, b->data + 50, 1) == 0,
        "two entries from one buffer");
  CHECK_EQ(refs(b), 3, "one reference per entry");
  wbuf_put(b); /* the log alone keeps it now */
  struct wlog_entry *e;
  long n = wlog_snapshot(l, &e);
  CHECK(n == 2 && e[0].buf == b && e[1].buf == b && e[1].data == e[0].data + 50,
        "two pieces of the same buffer, contiguous in it, stay two");
  CHECK_EQ(refs(b), 4, "two log and two snapshot references");
  CHECK(wlog_add(l, NBD_CMD_WRITE, 0, 0, 100, b, b->data, 1) == 0,
        "re-adding the buffer over the entries that hold it");
  EXPECT(l, "one piece", { 0, 100, NBD_CMD_WRITE, 1, b });
  CHECK_EQ(refs(b), 5, "three log and two snapshot references");
  wlog_snapshot_free(e, n > 0 ? (size_t)n : 0);
  wlog_forget(l, 1); /* frees b: ASan reports a leak or a double free otherwise */
  ACCT(l, 0, 0, "all forgotten");
  wlog_free(l);
}

static void test_flags(void)
{
  struct wlog *l = wlog_new();
  struct wbuf *b = mkbuf(1, 0, 10, 0);
  wlog_add(l, NBD_CMD_WRITE, NBD_CMD_FLAG_FUA, 0, 10, b, b->data, 1);
  wlog_add(l, NBD_CMD_WRITE_ZEROES,
           NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO, 10, 10, NULL, NULL, 2);
  wlog_add(l, NBD_CMD_TRIM, NBD_CMD_FLAG_FUA, 20, 10, NULL, NULL, 3);
  wlog_add(l, NBD_CMD_WRITE_ZEROES, NBD_CMD_FLAG_NO_HOLE, 30, 10, NULL, NULL, 4);
  struct wlog_entry *e;
  long n = wlog_snapshot(l, &e);
  CHECK(n == 4, "four entries");
  if (n == 4) {
    CHECK_EQ(e[0].flags, 0, "FUA stripped from a write");
    CHECK_EQ(e[1].flags, NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO,
             "FUA stripped from zeroes, other flags kept");
    CHECK_EQ(e[2].flags, 0, "FUA stripped from a trim");
    CHECK_EQ(e[3].flags, NBD_CMD_FLAG_NO_HOLE, "flags without FUA kept");
  }
  wlog_snapshot_free(e, n > 0 ? (size_t)n : 0);
  /* Flags survive splitting; a newer entry's flags win. */
  wlog_add(l, NBD_CMD_TRIM, 0, 12, 2, NULL, NULL, 5);
  wlog_add(l, NBD_CMD_TRIM, 0, 35, 10, NULL, NULL, 6);
  wlog_add(l, NBD_CMD_WRITE_ZEROES, NBD_CMD_FLAG_FAST_ZERO, 0, 5, NULL, NULL, 7);
  n = wlog_snapshot(l, &e);
  CHECK(n == 8 && e[0].flags == NBD_CMD_FLAG_FAST_ZERO && e[0].len == 5 && e[1].flags == 0 &&
            e[2].flags == (NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO) &&
            e[4].flags == (NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO) &&
            e[6].flags == NBD_CMD_FLAG_NO_HOLE && e[6].len == 5,
        "pieces keep their command's flags");
  wlog_snapshot_free(e, n > 0 ? (size_t)n : 0);
  wlog_free(l);
  wbuf_put(b);
}

static void test_trim_write(void)
{
  struct wlog *l = wlog_new();
  struct wbuf *b = wr(l, 0, 100, 1);
  trim(l, NBD_CMD_TRIM, 25, 50, 2);
  EXPECT(l, "a trim inside a write splits it", W(0, 25, 1), T(25, 50, 2), W(75, 25, 1));
  ACCT(l, 2, 100, "the trimmed bytes are still held and counted");
  CHECK_EQ(refs(b), 2, "the write holds one reference");
  trim(l, NBD_CMD_WRITE_ZEROES, 0, 30, 3);
  EXPECT(l, "zeroes over a write and a trim", Z(0, 30, 3), T(30, 45, 2), W(75, 25, 1));
  struct wbuf *c = wr(l, 20, 20, 4);
  EXPECT(l, "a write over zeroes and a trim", Z(0, 20, 3), W(20, 20, 4), T(40, 35, 2),
         W(75, 25, 1));
  wr_owned(l, 45, 10, 5);
  EXPECT(l, "a write inside a trim splits it", Z(0, 20, 3), W(20, 20, 4), T(40, 5, 2),
         W(45, 10, 5), T(55, 20, 2), W(75, 25, 1));
  ACCT(l, 5, 130, "bytes");
  trim(l, NBD_CMD_TRIM, 0, 200, 6);
  EXPECT(l, "a trim over everything", T(0, 200, 6));
  ACCT(l, 6, 130, "the hidden writes still count");
  CHECK(refs(b) == 2 && refs(c) == 2, "and hold their references");
  struct wbuf *d = wr(l, 0, 200, 7);
  EXPECT(l, "a write over the trim hides it", W(0, 200, 7));
  wlog_forget(l, 6);
  ACCT(l, 1, 200, "forget(6) leaves the last write");
  CHECK(refs(b) == 1 && refs(c) == 1 && refs(d) == 2, "references");
  wlog_free(l);
  wbuf_put(b);
  wbuf_put(c);
  wbuf_put(d);
}

static void test_forget(void)
{
  struct wlog *l = wlog_new();
  struct wbuf *b[6];
  for (int i = 1; i <= 5; i++)
    b[i] = wr(l, (uint64_t)(5 - i) * 100, 10 * (uint64_t)i, (uint64_t)i);
  trim(l, NBD_CMD_TRIM, 1000, 10, 6);
  trim(l, NBD_CMD_WRITE_ZEROES, 2000, 10, 6); /* seq may repeat */
  ACCT(l, 7, 150, "before forgetting");
  wlog_forget(l, 0);
  ACCT(l, 7, 150, "forget(0) keeps everything");
  wlog_forget(l, 2);
  EXPECT(l, "forget(2) drops seq 1 and 2", W(0, 50, 5), W(100, 40, 4), W(200, 30, 3),
         T(1000, 10, 6), Z(2000, 10, 6));
  ACCT(l, 5, 120, "after forget(2)");
  CHECK(refs(b[1]) == 1 && refs(b[2]) == 1 && refs(b[3]) == 2 && refs(b[5]) == 2,
        "forgotten entries drop their references");
  wlog_forget(l, 1);
  ACCT(l, 5, 120, "forgetting an older seq again changes nothing");
  wlog_forget(l, 5);
  EXPECT(l, "forget(5) keeps the trims", T(1000, 10, 6), Z(2000, 10, 6));
  struct wbuf *n = wr(l, 1005, 1000, 7);
  EXPECT(l, "a newer write over parts of both trims", T(1000, 5, 6),
         { 1005, 1000, NBD_CMD_WRITE, 7, n }, Z(2005, 5, 6));
  wlog_forget(l, 6);
  EXPECT(l, "forget(6) keeps the newer write", { 1005, 1000, NBD_CMD_WRITE, 7, n });
  ACCT(l, 1, 1000, "after forget(6)");
  wlog_forget(l, 100); /* past every seq */
  ACCT(l, 0, 0, "forget(past the last seq) empties the log");
  bool all = refs(n) == 1;
  for (int i = 1; i <= 5; i++)
    all = all && refs(b[i]) == 1;
  CHECK(all, "every reference back to 1");
  wr_owned(l, 0, 10, 8);
  EXPECT(l, "an emptied log takes new entries", W(0, 10, 8));
  wlog_forget(l, 7);
  ACCT(l, 1, 10, "forgetting up to an older seq keeps it");
  wlog_forget(l, UINT64_MAX);
  ACCT(l, 0, 0, "forget(max)");
  wlog_free(l);
  for (int i = 1; i <= 5; i++)
    wbuf_put(b[i]);
  wbuf_put(n);
}

static void test_snapshot(void)
{
  struct wlog *l = wlog_new();
  struct wbuf *b = mkbuf(1, 0, 300, 0);
  /* Out of order, all from one buffer. */
  wlog_add(l, NBD_CMD_WRITE, 0, 200, 100, b, b->data + 200, 1);
  wlog_add(l, NBD_CMD_WRITE, 0, 0, 100, b, b->data, 2);
  trim(l, NBD_CMD_TRIM, 150, 10, 3);
  wlog_add(l, NBD_CMD_WRITE, 0, 100, 50, b, b->data + 100, 4);
  wbuf_put(b); /* the log owns it */
  struct wlog_entry *e;
  long n = wlog_snapshot(l, &e);
  bool sorted = n == 4;
  for (long i = 1; sorted && i < n; i++)
    sorted = e[i - 1].offset + e[i - 1].len <= e[i].offset;
  CHECK(sorted, "the snapshot is sorted by offset");
  CHECK(n == 4 && e[0].seq == 2 && e[1].seq == 4 && e[2].seq == 3 && e[3].seq == 1,
        "each entry in its place");
  CHECK_EQ(refs(b), 6, "three log and three snapshot references");
  /* The snapshot outlives the log's entries. */
  wlog_forget(l, UINT64_MAX);
  CHECK_EQ(refs(b), 3, "the snapshot keeps the buffer alive");
  wlog_free(l);
  bool data = true;
  for (long i = 0; i < n; i++)
    if (e[i].type == NBD_CMD_WRITE)
      for (uint64_t k = 0; k < e[i].len; k++)
        data = data && e[i].data[k] == pat(1, e[i].offset + k);
  CHECK(data, "snapshot data readable after the log is gone");
  wlog_snapshot_free(e, n > 0 ? (size_t)n : 0); /* frees b */
}

/* Many entries: out of order in, sorted out; many overlaps. */
static void test_many(void)
{
  struct wlog *l = wlog_new();
  enum { N = 3000 };
  uint64_t seq = 0;
  for (uint64_t i = 0; i < N; i += 2)
    wr_owned(l, i * 10, 5, ++seq);
  for (uint64_t i = N - 1; i < N; i -= 2)
    wr_owned(l, i * 10, 5, ++seq);
  struct wlog_entry *e;
  long n = wlog_snapshot(l, &e);
  bool ok = n == N;
  for (long i = 0; ok && i < n; i++)
    ok = e[i].offset == (uint64_t)i * 10 && e[i].len == 5 &&
         e[i].data[0] == pat(e[i].seq, e[i].offset);
  CHECK(ok, "%d entries added out of order come out sorted", N);
  wlog_snapshot_free(e, n > 0 ? (size_t)n : 0);
  ACCT(l, N, 5 * N, "their count and bytes");
  /* Fill every gap: each write hides parts of two entries. */
  for (uint64_t i = 0; i + 1 < N; i++)
    wr_owned(l, i * 10 + 3, 9, ++seq);
  ACCT(l, 2 * N - 1, 5 * N + 9 * (N - 1), "gap fillers");
  n = wlog_snapshot(l, &e);
  ok = n == 2 * N - 1;
  for (long i = 0; ok && i < n; i++) {
    /* Original j (seq j/2 + 1 for even j, counting down from N for odd
     * ones) shows between fillers j - 1 and j. */
    uint64_t j = (uint64_t)i / 2, oseq = j % 2 ? N / 2 + (N - 1 - j) / 2 + 1 : j / 2 + 1;
    struct want w = i % 2 ? (struct want)W(j * 10 + 3, 9, N + j + 1)
                  : i == 0 ? (struct want)W(0, 3, oseq)
                           : (struct want)W(j * 10 + 2, i == n - 1 ? 3 : 1, oseq);
    ok = entry_ok(&e[i], &w, (size_t)i);
  }
  CHECK(ok, "every older entry shows between its fillers");
  wlog_snapshot_free(e, n > 0 ? (size_t)n : 0);
  wlog_forget(l, N);
  ACCT(l, N - 1, 9 * (N - 1), "forget the first 3000");
  trim(l, NBD_CMD_TRIM, 1, 10 * N, ++seq);
  EXPECT(l, "one trim over everything", T(1, 10 * N, seq));
  ACCT(l, N, 9 * (N - 1), "the trim hides, the fillers still count");
  wlog_free(l);
}

/* Forgetting a little at a time, or much at once: the array compacts and
 * shrinks under the entries, which must survive it.  Each add writes a few
 * positions of a small device; the model keeps the newest seq of each. */
static void test_compaction(void)
{
  enum { DEVN = 512, ADDS = 40000 };
  static uint64_t last[DEVN], bytes[ADDS + 1]; /* bytes: of the adds up to each seq */
  memset(last, 0, sizeof last);
  struct wlog *l = wlog_new();
  uint64_t seq = 0, forgotten = 0;
  int bad = 0, checks = 0;
  for (int i = 1; i <= ADDS; i++) {
    uint64_t off = ((uint64_t)i * 7919) % DEVN, len = 1 + (uint64_t)i % 4;
    if (off + len > DEVN)
      len = DEVN - off;
    wr_owned(l, off, len, ++seq);
    for (uint64_t p = off; p < off + len; p++)
      last[p] = seq;
    bytes[seq] = bytes[seq - 1] + len;
    /* A window of 1000 (one forget per add), then bursts of 3000 out of
     * 5000, and now and then everything but 10. */
    uint64_t upto = forgotten;
    if (i < ADDS / 2)
      upto = seq > 1000 ? seq - 1000 : 0;
    else if (i % 5000 == 0)
      upto = seq - 2000;
    if (i % 7000 == 0)
      upto = seq - 10;
    if (upto > forgotten) {
      forgotten = upto;
      wlog_forget(l, upto);
    }
    if (wlog_count(l) != seq - forgotten || wlog_bytes(l) != bytes[seq] - bytes[forgotten]) {
      if (bad++ < 5)
        printf("#   add %d: %zu entries, %llu bytes; want %llu, %llu\n", i, wlog_count(l),
               (unsigned long long)wlog_bytes(l), (unsigned long long)(seq - forgotten),
               (unsigned long long)(bytes[seq] - bytes[forgotten]));
      continue;
    }
    if (i % 97 && i % 5000 && i % 7000)
      continue;
    /* The snapshot, position by position. */
    checks++;
    struct wlog_entry *e;
    long n = wlog_snapshot(l, &e);
    uint64_t p = 0;
    bool ok = n > 0;
    for (long k = 0; ok && k < n; k++) {
      for (; ok && p < e[k].offset; p++)
        ok = last[p] <= forgotten;
      for (; ok && p < e[k].offset + e[k].len; p++)
        ok = last[p] == e[k].seq && e[k].data[p - e[k].offset] == pat(e[k].seq, p);
    }
    for (; ok && p < DEVN; p++)
      ok = last[p] <= forgotten;
    if (!ok && bad++ < 5)
      printf("#   add %d: the snapshot differs from the model near %llu\n", i,
             (unsigned long long)p);
    wlog_snapshot_free(e, n > 0 ? (size_t)n : 0);
  }
  CHECK(bad == 0 && checks > 100, "%d adds, forgetting in windows and bursts: %d snapshots right",
        ADDS, checks);
  wlog_forget(l, seq);
  ACCT(l, 0, 0, "all forgotten");
  wlog_free(l);
}

/* Two snapshots alike, field by field (memcmp would compare padding). */
static bool same_entries(const struct wlog_entry *a, const struct wlog_entry *b, long n)
{
  for (long i = 0; i < n; i++)
    if (a[i].offset != b[i].offset || a[i].len != b[i].len || a[i].type != b[i].type ||
        a[i].flags != b[i].flags || a[i].seq != b[i].seq || a[i].buf != b[i].buf ||
        a[i].data != b[i].data)
      return false;
  return true;
}

/* Failing adds, and whether they left the log as it was. */
struct fails {
  int hits, unchanged, bad;
};

/* Add a change of pat(seq, ...) with the next realloc failing: if the add
 * needed it, check that nothing changed, then add again for real. */
static void try_add(struct wlog *l, struct wbuf *watch, uint16_t type, uint64_t off, uint64_t len,
                    uint64_t seq, struct fails *f)
{
  struct wlog_entry *before, *after;
  long nb = wlog_snapshot(l, &before);
  uint64_t bytes = wlog_bytes(l);
  size_t count = wlog_count(l);
  unsigned r0 = refs(watch), pieces = 0;
  for (long k = 0; k < nb; k++)
    pieces += before[k].buf == watch;
  struct wbuf *b = type == NBD_CMD_WRITE ? mkbuf(seq, off, (size_t)len, 0) : NULL;
  realloc_fail = 1;
  int r = wlog_add(l, type, NBD_CMD_FLAG_FUA, off, len, b, b ? b->data : NULL, seq);
  bool called = realloc_fail == 0;
  realloc_fail = 0;
  if (r == -ENOMEM) {
    f->hits++;
    long na = wlog_snapshot(l, &after);
    /* The watched buffer: its references, plus one per piece in after. */
    if (na == nb && same_entries(before, after, na) &&
        wlog_bytes(l) == bytes && wlog_count(l) == count && refs(watch) == r0 + pieces &&
        (!b || refs(b) == 1))
      f->unchanged++;
    if (na > 0)
      wlog_snapshot_free(after, (size_t)na);
    r = wlog_add(l, type, 0, off, len, b, b ? b->data : NULL, seq);
  } else if (called) {
    f->bad++; /* realloc failed but the add claims success */
  }
  if (r)
    f->bad++;
  wbuf_put(b);
  if (nb > 0)
    wlog_snapshot_free(before, (size_t)nb);
}

/* Every add is first tried with realloc failing: where the array had to
 * grow, the log must not change.  Forgets in between move the live entries
 * away from the array's start; failing to shrink is harmless; a snapshot
 * fails cleanly at each of its allocations. */
static void test_enomem(void)
{
  struct wlog *l = wlog_new();
  struct wbuf *big = wr(l, 0, 100000, 1);
  struct fails f = { 0 };
  uint64_t seq = 1;
  for (uint64_t i = 0; i < 600; i++) {
    uint64_t off = 500 * i + 7;
    try_add(l, big, NBD_CMD_WRITE, off, 100, ++seq, &f);
    try_add(l, big, i % 2 ? NBD_CMD_TRIM : NBD_CMD_WRITE_ZEROES, off + 50, 100, ++seq, &f);
    if (i % 100 == 99)
      wlog_forget(l, seq - 150); /* keeps 150 of the last 200 */
  }
  CHECK(f.hits >= 5, "some adds needed to grow the array (%d)", f.hits);
  CHECK(f.unchanged == f.hits, "a failed add leaves the log unchanged (%d of %d)", f.unchanged,
        f.hits);
  CHECK(f.bad == 0, "no add failed otherwise");
  ACCT(l, 150, 75 * 100, "every add happened in the end, and forgets kept 150");
  CHECK_EQ(refs(big), 1, "the big write is forgotten");
  wr_owned(l, 0, 400000, ++seq);
  EXPECT(l, "a write over everything", W(0, 400000, seq));

  /* A failed shrink while forgetting is harmless. */
  realloc_fail = 1000;
  wlog_forget(l, seq - 1);
  realloc_fail = 0;
  ACCT(l, 1, 400000, "forgetting with realloc failing");
  EXPECT(l, "the last write stays", W(0, 400000, seq));

  /* A snapshot failing at each of its allocations: the three work arrays,
   * the result, then the shrinking of the result (harmless).  The hidden
   * entries' boundaries make the result shrink. */
  for (int i = 0; i < 20; i++)
    trim(l, NBD_CMD_TRIM, 500000 + 100 * (uint64_t)i, 10, ++seq);
  struct wbuf *top = wr(l, 500000, 2000, ++seq);
  struct wlog_entry *ref;
  long nref = wlog_snapshot(l, &ref);
  CHECK(nref == 2 && ref[1].buf == top && ref[1].len == 2000, "the snapshot to reproduce");
  unsigned r0 = refs(top);
  bool ok = true;
  for (int k = 0; k <= 5; k++) {
    struct wlog_entry *e = (struct wlog_entry *)1;
    realloc_skip = k;
    realloc_fail = 1;
    long n = wlog_snapshot(l, &e);
    bool failed = realloc_fail == 0;
    realloc_fail = realloc_skip = 0;
    if (k < 4) {
      if (n != -ENOMEM || e != NULL || !failed || refs(top) != r0) {
        printf("#   allocation %d failing: %ld, out %p, refs %u (want %u)\n", k, n, (void *)e,
               refs(top), r0);
        ok = false;
      }
    } else {
      if (n != nref || !failed != (k == 5) || !same_entries(e, ref, n) ||
          refs(top) != r0 + 1) {
        printf("#   allocation %d failing: %ld entries (%s)\n", k, n,
               failed ? "failed" : "not reached");
        ok = false;
      }
      if (n > 0)
        wlog_snapshot_free(e, (size_t)n);
    }
  }
  CHECK(ok, "a snapshot fails cleanly at each allocation, and a failed shrink is harmless");
  wlog_snapshot_free(ref, nref > 0 ? (size_t)nref : 0);
  ACCT(l, 22, 402000, "snapshots changed nothing");
  wlog_free(l);
  wbuf_put(top);
  wbuf_put(big);
}

/* ---- randomized comparison with a byte model ---- */

#define DEV (64 * 1024)
#define OPS 2500

static uint64_t rng;
static uint64_t rnd(uint64_t n)
{
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return n ? rng % n : 0;
}

/* The model: the last change of each byte (its op, or -1). */
static int m_op[DEV];
/* Every op's change (len 0 for forgets and empty changes). */
static struct radd {
  uint64_t off, len, seq;
  uint16_t type, flags; /* flags without FUA */
  const uint8_t *data;
  int id; /* buffer, or -1 */
} adds[OPS];
/* The snapshot applied to a device. */
static bool l_cov[DEV];

/* Buffers the test still holds a reference to (NULL once dropped).  Every
 * buffer starts with its index, so an entry's buffer can be named. */
static struct wbuf *rbufs[OPS];
static int rcount[OPS];

struct rstats {
  int model, overlap, merge, bytes, count, refs, enomem_bad;
  int enomem, max_entries, max_pieces;
};

static void rdiag(int *count, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void rdiag(int *count, const char *fmt, ...)
{
  if ((*count)++ >= 5)
    return;
  va_list ap;
  va_start(ap, fmt);
  printf("#   ");
  vprintf(fmt, ap);
  printf("\n");
  va_end(ap);
}

static void rcheck(struct wlog *l, uint64_t forgotten, int op, int nops, struct rstats *st)
{
  /* The accounting: every change added and not forgotten. */
  size_t count = 0;
  uint64_t bytes = 0;
  for (int k = 0; k < nops; k++)
    if (adds[k].len && adds[k].seq > forgotten) {
      count++;
      bytes += adds[k].type == NBD_CMD_WRITE ? adds[k].len : 0;
    }
  if (wlog_count(l) != count)
    rdiag(&st->count, "op %d: wlog_count %zu, want %zu", op, wlog_count(l), count);
  if (wlog_bytes(l) != bytes)
    rdiag(&st->bytes, "op %d: wlog_bytes %llu, want %llu", op, (unsigned long long)wlog_bytes(l),
          (unsigned long long)bytes);
  if ((int)count > st->max_entries)
    st->max_entries = (int)count;

  struct wlog_entry *e;
  long n = wlog_snapshot(l, &e);
  if (n < 0) {
    rdiag(&st->count, "op %d: snapshot failed", op);
    return;
  }
  if (n > st->max_pieces)
    st->max_pieces = (int)n;
  if (n > (long)(2 * count))
    rdiag(&st->count, "op %d: %ld pieces of %zu entries", op, n, count);
  memset(l_cov, 0, sizeof l_cov);
  memset(rcount, 0, sizeof rcount);
  for (long i = 0; i < n; i++) {
    const struct wlog_entry *x = &e[i];
    if (!x->len || x->offset >= DEV || x->len > DEV - x->offset ||
        (i > 0 && e[i - 1].offset + e[i - 1].len > x->offset)) {
      rdiag(&st->overlap, "op %d: entry %ld [%llu, +%llu) misplaced", op, i,
            (unsigned long long)x->offset, (unsigned long long)x->len);
      continue;
    }
    if (x->type == NBD_CMD_WRITE) {
      uint32_t id;
      memcpy(&id, x->buf->data, sizeof id);
      if (id < OPS)
        rcount[id]++;
    }
    /* A piece is part of one change, the newest for each of its bytes. */
    int k = m_op[x->offset];
    const struct radd *a = k >= 0 ? &adds[k] : NULL;
    if (!a || a->seq <= forgotten || x->seq != a->seq || x->type != a->type ||
        x->flags != a->flags ||
        (a->data ? x->data != a->data + (x->offset - a->off) : x->data != NULL)) {
      rdiag(&st->model, "op %d: entry %ld [%llu, +%llu) seq %llu type %u flags %u is not of op %d",
            op, i, (unsigned long long)x->offset, (unsigned long long)x->len,
            (unsigned long long)x->seq, x->type, x->flags, k);
      continue;
    }
    for (uint64_t p = x->offset; p < x->offset + x->len; p++) {
      l_cov[p] = true;
      if (m_op[p] != k) {
        rdiag(&st->model, "op %d: entry %ld from op %d covers byte %llu of op %d", op, i, k,
              (unsigned long long)p, m_op[p]);
        break;
      }
      if (x->data && x->data[p - x->offset] != pat(a->seq, p)) {
        rdiag(&st->model, "op %d: entry %ld: wrong byte at %llu", op, i, (unsigned long long)p);
        break;
      }
    }
    /* Pieces are whole: the next byte is another change's. */
    if (i + 1 < n && e[i + 1].offset == x->offset + x->len && m_op[e[i + 1].offset] == k)
      rdiag(&st->merge, "op %d: entries %ld and %ld both of op %d", op, i, i + 1, k);
  }
  for (uint64_t p = 0; p < DEV; p++) {
    bool live = m_op[p] >= 0 && adds[m_op[p]].seq > forgotten;
    if (live != l_cov[p]) {
      rdiag(&st->model, "op %d: byte %llu: snapshot %s, model %s", op, (unsigned long long)p,
            l_cov[p] ? "has" : "lacks", live ? "has" : "lacks");
      break;
    }
  }
  /* Held by the test, by the entry (until forgotten), and by each piece. */
  for (int id = 0; id < nops; id++) {
    if (!rbufs[id] || adds[id].id != id)
      continue;
    unsigned want = 1 + (adds[id].len && adds[id].seq > forgotten) + (unsigned)rcount[id];
    if (refs(rbufs[id]) != want) {
      rdiag(&st->refs, "op %d: buffer %d has %u references, want %u", op, id, refs(rbufs[id]),
            want);
      break;
    }
  }
  if (n > 0)
    wlog_snapshot_free(e, (size_t)n);
}

/* frag: short changes anywhere and rare forgets, so entries pile up. */
static void random_run(uint64_t seed, bool frag)
{
  rng = seed;
  for (int p = 0; p < DEV; p++)
    m_op[p] = -1;
  memset(rbufs, 0, sizeof rbufs);
  memset(adds, 0, sizeof adds);
  struct rstats st = { 0 };
  struct wlog *l = wlog_new();
  uint64_t seq = 1, forgotten = 0;
  for (int op = 0; op < OPS; op++) {
    adds[op].id = -1;
    unsigned kind = (unsigned)rnd(100);
    if (frag ? rnd(100) == 0 : kind < 8) {
      /* Forget up to some seq (now and then everything, or nothing new). */
      uint64_t upto = rnd(10) == 0 ? seq : forgotten + rnd(seq - forgotten + 1);
      if (rnd(4) == 0 && forgotten)
        upto = rnd(forgotten);
      realloc_fail = rnd(3) == 0 ? 1000 : 0; /* shrinking may fail */
      wlog_forget(l, upto);
      realloc_fail = 0;
      if (upto > forgotten)
        forgotten = upto;
      rcheck(l, forgotten, op, op + 1, &st);
      continue;
    }
    /* A change: mostly near the start of the device, where they pile up. */
    uint64_t span = rnd(100), len, off;
    if (frag) {
      len = span < 95 ? 1 + rnd(64) : 1 + rnd(1024);
      off = rnd(DEV);
    } else {
      len = 1 + (span < 60 ? rnd(256) : span < 90 ? rnd(4096) : span < 99 ? rnd(16384) : rnd(DEV));
      off = rnd(2) ? rnd(4096) : rnd(DEV);
    }
    if (len > DEV - off)
      len = DEV - off;
    if (rnd(64) == 0)
      len = 0; /* accepted, not kept */
    if (rnd(5))
      seq++; /* equal seqs are allowed */
    if (seq <= forgotten)
      seq = forgotten + 1;
    uint16_t type = kind < 70 ? NBD_CMD_WRITE : kind < 85 ? NBD_CMD_TRIM : NBD_CMD_WRITE_ZEROES;
    uint16_t flags = (uint16_t)(rnd(2) ? NBD_CMD_FLAG_FUA : 0);
    if (type == NBD_CMD_WRITE_ZEROES && rnd(2))
      flags |= NBD_CMD_FLAG_NO_HOLE;
    if (type == NBD_CMD_WRITE_ZEROES && rnd(2))
      flags |= NBD_CMD_FLAG_FAST_ZERO;
    struct wbuf *b = NULL;
    const uint8_t *data = NULL;
    if (type == NBD_CMD_WRITE) {
      /* [id][junk pad][payload][junk] */
      size_t pad = 4 + rnd(32);
      uint8_t *tmp = malloc(pad + len + 8);
      for (size_t i = 0; i < pad + len + 8; i++)
        tmp[i] = (uint8_t)rnd(256);
      for (size_t i = 0; i < len; i++)
        tmp[pad + i] = pat(seq, off + i);
      uint32_t id32 = (uint32_t)op;
      memcpy(tmp, &id32, sizeof id32);
      b = wbuf_new(tmp, pad + len + 8);
      free(tmp);
      data = b->data + pad;
      rbufs[op] = b;
      adds[op].id = op;
    }
    /* Every add first with realloc failing: it must fail cleanly when it
     * needs to grow the array, and succeed otherwise. */
    realloc_fail = 1;
    int r = wlog_add(l, type, flags, off, len, b, data, seq);
    bool called = realloc_fail == 0;
    realloc_fail = 0;
    if (called) {
      if (r == -ENOMEM) {
        st.enomem++;
        rcheck(l, forgotten, op, op, &st); /* as if this op had not happened */
        if (b && refs(b) != 1)
          rdiag(&st.enomem_bad, "op %d: a failed add kept a reference", op);
        r = wlog_add(l, type, flags, off, len, b, data, seq);
      } else {
        rdiag(&st.enomem_bad, "op %d: wlog_add = %d with realloc failing", op, r);
      }
    }
    if (r)
      rdiag(&st.enomem_bad, "op %d: wlog_add = %d", op, r);
    adds[op] = (struct radd){ off, len, seq, type, (uint16_t)(flags & ~NBD_CMD_FLAG_FUA), data,
                              adds[op].id };
    for (uint64_t p = off; p < off + len; p++)
      m_op[p] = op;
    /* Keep half of the buffers to check their references; the log alone
     * owns the others. */
    if (b && rnd(2)) {
      rbufs[op] = NULL;
      wbuf_put(b);
    }
    rcheck(l, forgotten, op, op + 1, &st);
  }
  printf("# seed %llu%s: %d ops, up to %d entries and %d pieces, %d failed growths, "
         "last seq %llu\n",
         (unsigned long long)seed, frag ? " (fragmented)" : "", OPS, st.max_entries,
         st.max_pieces, st.enomem, (unsigned long long)seq);
  CHECK(st.model == 0, "seed %llu: the snapshot matches the byte model after every op",
        (unsigned long long)seed);
  CHECK(st.overlap == 0, "seed %llu: snapshot entries sorted, disjoint, inside the device",
        (unsigned long long)seed);
  CHECK(st.merge == 0, "seed %llu: each change's contiguous piece is one entry",
        (unsigned long long)seed);
  CHECK(st.bytes == 0, "seed %llu: wlog_bytes counts every retained write",
        (unsigned long long)seed);
  CHECK(st.count == 0, "seed %llu: wlog_count counts every retained change",
        (unsigned long long)seed);
  CHECK(st.refs == 0, "seed %llu: buffer references match entries and pieces",
        (unsigned long long)seed);
  CHECK(st.enomem_bad == 0 && st.enomem > 0,
        "seed %llu: adds succeed, fail only when realloc does, and fail cleanly",
        (unsigned long long)seed);
  wlog_forget(l, seq);
  bool all = wlog_count(l) == 0 && wlog_bytes(l) == 0;
  for (int id = 0; id < OPS; id++)
    if (rbufs[id])
      all = all && refs(rbufs[id]) == 1;
  CHECK(all, "seed %llu: forgetting everything leaves no entries and no references",
        (unsigned long long)seed);
  wlog_free(l);
  for (int id = 0; id < OPS; id++)
    wbuf_put(rbufs[id]);
}

/* ---- timings ----
 * The pool adds on every completed write, under its lock: an add must not
 * cost O(n).  A snapshot must not cost O(n^2). */

#define PERF_N 200000
#define PERF_LIMIT 2.0 /* seconds: far above O(1) adds, far below O(n) ones */

static struct wlog *l_perf; /* emptied after each test */

/* Give up a timed loop once it is over the limit: an O(n) add or forget
 * would otherwise take minutes to fail. */
static bool too_slow(double t0, uint64_t i)
{
  return i % 1024 == 0 && now_s() - t0 > PERF_LIMIT;
}

/* 4 KiB writes at random aligned offsets of 1 GiB, from one shared buffer. */
static void test_perf_random(void)
{
  enum { BS = 4096, SLOTS = 16 };
  const uint64_t blocks = (1ull << 30) / BS;
  uint64_t *off = malloc(PERF_N * sizeof *off);
  uint32_t *winner = calloc(blocks, sizeof *winner); /* newest add + 1, per block */
  uint8_t *src = malloc(SLOTS * BS);
  for (size_t i = 0; i < SLOTS * BS; i++)
    src[i] = (uint8_t)(i * 7);
  struct wbuf *b = wbuf_new(src, SLOTS * BS);
  free(src);
  rng = 0x5eed;
  for (uint32_t i = 0; i < PERF_N; i++) {
    uint64_t blk = rnd(blocks);
    off[i] = blk * BS;
    winner[blk] = i + 1;
  }

  double t0 = now_s();
  int r = 0;
  uint32_t added = 0;
  for (; added < PERF_N && !too_slow(t0, added); added++)
    r |= wlog_add(l_perf, NBD_CMD_WRITE, 0, off[added], BS, b, b->data + (added % SLOTS) * BS,
                  added + 1);
  double t_add = now_s() - t0;
  if (added < PERF_N) {
    CHECK(false, "%d random 4 KiB adds: gave up after %u in %.3f s", PERF_N, added, t_add);
    wlog_forget(l_perf, UINT64_MAX);
    wbuf_put(b);
    free(winner);
    free(off);
    return;
  }
  printf("# %d random 4 KiB adds: %.3f s (%.0f ns each)\n", PERF_N, t_add, t_add * 1e9 / PERF_N);
  CHECK(r == 0, "every add succeeded");
  CHECK(t_add < PERF_LIMIT, "%d random 4 KiB adds in %.3f s (< %.0f s)", PERF_N, t_add,
        PERF_LIMIT);
  ACCT(l_perf, PERF_N, (uint64_t)PERF_N * BS, "all of them retained");
  CHECK_EQ(refs(b), PERF_N + 1, "one reference each");

  struct wlog_entry *e;
  t0 = now_s();
  long n = wlog_snapshot(l_perf, &e);
  double t_snap = now_s() - t0;
  printf("# snapshot of %d entries: %.3f s, %ld pieces\n", PERF_N, t_snap, n);
  CHECK(t_snap < PERF_LIMIT, "snapshot of %d entries in %.3f s (< %.0f s)", PERF_N, t_snap,
        PERF_LIMIT);
  long distinct = 0;
  for (uint64_t blk = 0; blk < blocks; blk++)
    distinct += winner[blk] != 0;
  bool ok = n == distinct;
  for (long i = 0; ok && i < n; i++) {
    uint64_t blk = e[i].offset / BS;
    uint32_t w = winner[blk];
    ok = e[i].offset % BS == 0 && e[i].len == BS && (i == 0 || e[i - 1].offset < e[i].offset) &&
         w && e[i].seq == w && e[i].buf == b &&
         e[i].data == b->data + ((w - 1) % SLOTS) * BS;
    if (!ok)
      printf("#   piece %ld: [%llu, +%llu) seq %llu, want seq %u\n", i,
             (unsigned long long)e[i].offset, (unsigned long long)e[i].len,
             (unsigned long long)e[i].seq, w);
  }
  CHECK(ok, "one piece per block written (%ld), from its last write", distinct);
  CHECK_EQ(refs(b), PERF_N + 1 + (n > 0 ? n : 0), "plus one per piece");
  wlog_snapshot_free(e, n > 0 ? (size_t)n : 0);

  t0 = now_s();
  wlog_forget(l_perf, PERF_N / 2);
  wlog_forget(l_perf, PERF_N);
  double t_forget = now_s() - t0;
  printf("# forgetting them: %.3f s\n", t_forget);
  CHECK(t_forget < PERF_LIMIT && refs(b) == 1 && wlog_count(l_perf) == 0,
        "forgetting them in %.3f s", t_forget);
  wbuf_put(b);
  free(winner);
  free(off);
}

/* Overlapping unaligned changes of up to 64 KiB over 64 MiB: many pieces,
 * many hidden boundaries.  Sampled positions are checked against a
 * backwards scan of the adds. */
static void test_perf_fragmented(void)
{
  struct radd *a = malloc(PERF_N * sizeof *a);
  const uint64_t span = 64ull << 20;
  uint8_t *src = malloc(1 << 17);
  for (size_t i = 0; i < 1 << 17; i++)
    src[i] = (uint8_t)(i * 13);
  struct wbuf *b = wbuf_new(src, 1 << 17);
  free(src);
  rng = 0xf7a9;
  for (int i = 0; i < PERF_N; i++) {
    uint64_t len = 1 + rnd(rnd(8) ? 4096 : 65536), off = rnd(span - len);
    uint16_t type = rnd(10) ? NBD_CMD_WRITE : rnd(2) ? NBD_CMD_TRIM : NBD_CMD_WRITE_ZEROES;
    a[i] = (struct radd){ off, len, (uint64_t)i / 2 + 1, type, 0,
                          type == NBD_CMD_WRITE ? b->data + rnd(65536) : NULL, 0 };
  }
  double t0 = now_s();
  int r = 0;
  for (int i = 0; i < PERF_N && !too_slow(t0, (uint64_t)i); i++)
    r |= wlog_add(l_perf, a[i].type, 0, a[i].off, a[i].len, a[i].data ? b : NULL, a[i].data,
                  a[i].seq);
  double t_add = now_s() - t0;
  CHECK(r == 0 && t_add < PERF_LIMIT && wlog_count(l_perf) == PERF_N,
        "%d unaligned adds in %.3f s", PERF_N, t_add);
  struct wlog_entry *e;
  t0 = now_s();
  long n = wlog_snapshot(l_perf, &e);
  double t_snap = now_s() - t0;
  printf("# %d unaligned changes over 64 MiB: adds %.3f s, snapshot %.3f s, %ld pieces\n",
         PERF_N, t_add, t_snap, n);
  CHECK(t_snap < PERF_LIMIT, "snapshot of %d overlapping entries in %.3f s (< %.0f s)", PERF_N,
        t_snap, PERF_LIMIT);
  bool ok = n > 0;
  for (long i = 1; ok && i < n; i++)
    ok = e[i - 1].offset + e[i - 1].len <= e[i].offset;
  CHECK(ok, "its pieces are sorted and disjoint");
  int wrong = 0;
  for (int s = 0; s < 2000 && n > 0; s++) {
    uint64_t p = rnd(span);
    int k = PERF_N - 1;
    while (k >= 0 && !(a[k].off <= p && p < a[k].off + a[k].len))
      k--;
    long lo = 0, hi = n; /* the last piece starting at or before p */
    while (hi - lo > 1) {
      long mid = lo + (hi - lo) / 2;
      if (e[mid].offset <= p)
        lo = mid;
      else
        hi = mid;
    }
    bool in = e[lo].offset <= p && p < e[lo].offset + e[lo].len;
    bool good = k < 0 ? !in
                      : in && e[lo].seq == a[k].seq && e[lo].type == a[k].type &&
                            (a[k].data ? e[lo].data + (p - e[lo].offset) == a[k].data + (p - a[k].off)
                                       : e[lo].data == NULL);
    if (!good && wrong++ < 5)
      printf("#   position %llu: newest add %d, piece %ld\n", (unsigned long long)p, k, lo);
  }
  CHECK(wrong == 0, "2000 sampled positions come from their newest change");
  wlog_snapshot_free(e, n > 0 ? (size_t)n : 0);
  wlog_forget(l_perf, UINT64_MAX);
  CHECK_EQ(refs(b), 1, "all references back");
  wbuf_put(b);
  free(a);
}

/* Nested ranges from one offset: growing (the newest hides all: one piece,
 * merged from 200000 segments) and shrinking (every segment is a piece;
 * the heap holds every entry long after it is beaten). */
static void test_perf_nested(void)
{
  for (int shrinking = 0; shrinking < 2; shrinking++) {
    double t0 = now_s();
    uint64_t i = 0;
    for (; i < PERF_N && !too_slow(t0, i); i++)
      trim(l_perf, NBD_CMD_TRIM, 1000, shrinking ? PERF_N - i : i + 1, i + 1);
    if (i < PERF_N) {
      CHECK(false, "%d nested adds: gave up after %llu", PERF_N, (unsigned long long)i);
      wlog_forget(l_perf, UINT64_MAX);
      continue;
    }
    struct wlog_entry *e;
    t0 = now_s();
    long n = wlog_snapshot(l_perf, &e);
    double t_snap = now_s() - t0;
    printf("# %d nested %s ranges: snapshot %.3f s, %ld pieces\n", PERF_N,
           shrinking ? "shrinking" : "growing", t_snap, n);
    bool ok;
    if (shrinking) {
      ok = n == PERF_N;
      for (long j = 0; ok && j < n; j++)
        ok = e[j].offset == 1000 + (uint64_t)j && e[j].len == 1 &&
             e[j].seq == PERF_N - (uint64_t)j;
    } else {
      ok = n == 1 && e[0].offset == 1000 && e[0].len == PERF_N && e[0].seq == PERF_N;
    }
    CHECK(ok && t_snap < PERF_LIMIT, "%d nested %s ranges: %ld pieces, as they should, in %.3f s",
          PERF_N, shrinking ? "shrinking" : "growing", n, t_snap);
    wlog_snapshot_free(e, n > 0 ? (size_t)n : 0);
    wlog_forget(l_perf, UINT64_MAX);
  }
}

/* The pool's steady state: every add followed by a forget of the oldest,
 * a window of 100000 entries sliding over 400000 adds. */
static void test_perf_window(void)
{
  enum { WIN = 100000, ADDS = 400000 };
  double t0 = now_s();
  for (uint64_t s = 1; s <= ADDS && !too_slow(t0, s); s++) {
    trim(l_perf, NBD_CMD_TRIM, (s * 4096 * 7919) % (1ull << 30), 4096, s);
    if (s > WIN)
      wlog_forget(l_perf, s - WIN);
  }
  double t = now_s() - t0;
  printf("# %d adds, each with a forget, %d retained: %.3f s\n", ADDS, WIN, t);
  CHECK(t < PERF_LIMIT && wlog_count(l_perf) == WIN,
        "a sliding window of %d entries over %d adds in %.3f s", WIN, ADDS, t);
  wlog_forget(l_perf, UINT64_MAX);
}

int main(void)
{
  test_wbuf();
  test_empty();
  test_append();
  test_disjoint();
  test_cut_start();
  test_cut_end();
  test_split();
  test_cover();
  test_equal_seq();
  test_merge();
  test_same_buffer();
  test_flags();
  test_trim_write();
  test_forget();
  test_snapshot();
  test_many();
  test_compaction();
  test_enomem();
  uint64_t seeds[] = { 0x9e3779b97f4a7c15ull, 12345, 0xdeadbeefcafef00dull };
  for (size_t i = 0; i < sizeof seeds / sizeof seeds[0]; i++)
    random_run(seeds[i], false);
  random_run(0x0123456789abcdefull, true);
  l_perf = wlog_new();
  test_perf_random();
  test_perf_fragmented();
  test_perf_nested();
  test_perf_window();
  wlog_free(l_perf);
  return done_testing();
}
