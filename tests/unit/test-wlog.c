/* test-wlog.c: the write log (src/wlog.c): how newer changes cut older
 * entries, buffer references, forgetting by sequence number, snapshots,
 * allocation failures, and a randomized comparison with a byte model.
 *
 * Every byte written with sequence number s at device offset p holds
 * pat(s, p), so an entry's data can be checked without knowing which
 * buffer it came from: a data pointer left behind by a trim reads the
 * pattern of another offset and fails.
 */
#include <dlfcn.h>
#include <errno.h>
#include <stdatomic.h>

#include "check.h"
#include "nbd-proto.h"
#include "wlog.h"

/* ---- realloc failure injection ----
 * The log grows its array with realloc; failing the next realloc_fail calls
 * shows that a failed add leaves the log as it was. */
static int realloc_fail;

void *realloc(void *p, size_t n)
{
  static void *(*real)(void *, size_t);
  if (realloc_fail > 0) {
    realloc_fail--;
    errno = ENOMEM;
    return NULL;
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

/* What an entry should be; buf NULL means "any" for WRITE. */
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

/* One check: the log holds exactly these entries (in offset order) and
 * counts their payload. */
static void expect(struct wlog *l, const struct want *w, size_t n, const char *what)
{
  struct wlog_entry *e;
  long got = wlog_snapshot(l, &e);
  bool ok = got == (long)n && wlog_count(l) == n;
  if (!ok)
    printf("#   %ld entries (count %zu), want %zu\n", got, wlog_count(l), n);
  uint64_t bytes = 0;
  for (size_t i = 0; ok && i < n; i++) {
    ok = entry_ok(&e[i], &w[i], i);
    bytes += w[i].type == NBD_CMD_WRITE ? w[i].len : 0;
  }
  if (ok && wlog_bytes(l) != bytes) {
    printf("#   wlog_bytes %llu, want %llu\n", (unsigned long long)wlog_bytes(l),
           (unsigned long long)bytes);
    ok = false;
  }
  CHECK(ok, "%s", what);
  if (got > 0)
    wlog_snapshot_free(e, (size_t)got);
}
#define EXPECT(l, what, ...)                                                       \
  do {                                                                             \
    const struct want expect_w_[] = { __VA_ARGS__ };                               \
    expect((l), expect_w_, sizeof expect_w_ / sizeof expect_w_[0], (what));        \
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
  CHECK(wlog_count(l) == 0 && wlog_bytes(l) == 0, "a new log is empty");
  struct wlog_entry *e = (struct wlog_entry *)1;
  CHECK(wlog_snapshot(l, &e) == 0 && e == NULL, "snapshot of an empty log: 0 and NULL");
  wlog_snapshot_free(NULL, 0);
  wlog_forget(l, UINT64_MAX);
  CHECK(wlog_count(l) == 0, "forgetting in an empty log");
  struct wbuf *b = mkbuf(1, 0, 16, 0);
  CHECK(wlog_add(l, NBD_CMD_WRITE, 0, 100, 0, b, b->data, 1) == 0 && wlog_count(l) == 0 &&
            refs(b) == 1,
        "a zero-length write is accepted and keeps nothing");
  wr_owned(l, 0, 10, 2);
  CHECK(trim(l, NBD_CMD_TRIM, 5, 0, 3) == 0, "a zero-length trim is accepted");
  EXPECT(l, "a zero-length change cuts nothing", W(0, 10, 2));
  wbuf_put(b);
  wlog_free(l);
  wlog_free(NULL);
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
  CHECK_EQ(wlog_bytes(l), 10 + 990 + 100 + 50 + 1, "bytes of disjoint writes");
  CHECK(trim(l, NBD_CMD_TRIM, 6000, 4096, 6) == 0 &&
            trim(l, NBD_CMD_WRITE_ZEROES, 3000, 100, 7) == 0,
        "disjoint trim and zeroes");
  EXPECT(l, "trims count no bytes",
         W(0, 10, 2), W(10, 990, 4), W(1000, 100, 1), W(1100, 50, 5), Z(3000, 100, 7),
         W(5000, 1, 3), T(6000, 4096, 6));
  wlog_free(l);
}

static void test_cut_start(void)
{
  struct wlog *l = wlog_new();
  struct wbuf *old = wr(l, 100, 100, 1);
  struct wbuf *nw = wr(l, 50, 100, 2);
  EXPECT(l, "a write over the head of an older one trims it",
         { 50, 100, NBD_CMD_WRITE, 2, nw }, { 150, 50, NBD_CMD_WRITE, 1, old });
  CHECK(refs(old) == 2 && refs(nw) == 2, "one log reference each");
  struct wlog_entry *e;
  long n = wlog_snapshot(l, &e);
  CHECK(n == 2 && e[1].data == old->data + 3 + 50, "the trimmed entry's data moved by 50");
  wlog_snapshot_free(e, (size_t)n);
  /* Exactly at the start, shorter. */
  wr_owned(l, 150, 10, 3);
  EXPECT(l, "an exact-start write trims the head",
         W(50, 100, 2), W(150, 10, 3), W(160, 40, 1));
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
  EXPECT(l, "a write over the tail of an older one trims it",
         { 100, 50, NBD_CMD_WRITE, 1, old }, { 150, 100, NBD_CMD_WRITE, 2, nw });
  CHECK(refs(old) == 2 && refs(nw) == 2, "one log reference each");
  CHECK_EQ(wlog_bytes(l), 150, "bytes after trimming a tail");
  wr_owned(l, 140, 10, 3);
  EXPECT(l, "an exact-end write trims the tail", W(100, 40, 1), W(140, 10, 3), W(150, 100, 2));
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
  EXPECT(l, "a write inside an older one splits it",
         { 100, 50, NBD_CMD_WRITE, 1, old }, { 150, 50, NBD_CMD_WRITE, 2, nw },
         { 200, 100, NBD_CMD_WRITE, 1, old });
  CHECK_EQ(refs(old), 3, "both halves hold a reference");
  CHECK_EQ(refs(nw), 2, "the new entry holds one");
  CHECK_EQ(wlog_bytes(l), 200, "a split keeps the bytes of the range");
  struct wlog_entry *e;
  long n = wlog_snapshot(l, &e);
  CHECK(n == 3 && e[0].data == old->data + 3 && e[2].data == old->data + 3 + 100,
        "the halves point at their own bytes of the shared buffer");
  CHECK_EQ(refs(old), 5, "a snapshot adds a reference per entry");
  wlog_snapshot_free(e, (size_t)n);
  CHECK_EQ(refs(old), 3, "snapshot_free drops them");
  /* Split a half again, then cover the new entry only. */
  wr_owned(l, 250, 10, 3);
  CHECK_EQ(refs(old), 4, "a second split: three pieces, three references");
  EXPECT(l, "split of a split",
         W(100, 50, 1), W(150, 50, 2), W(200, 50, 1), W(250, 10, 3), W(260, 40, 1));
  wlog_forget(l, 1);
  EXPECT(l, "forgetting the old seq drops every piece", W(150, 50, 2), W(250, 10, 3));
  CHECK_EQ(refs(old), 1, "and every reference");
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
  EXPECT(l, "an identical range replaces the entry", { 100, 100, NBD_CMD_WRITE, 2, b });
  CHECK(refs(a) == 1 && refs(b) == 2, "the replaced entry's reference is dropped");
  struct wbuf *c = wr(l, 50, 200, 3);
  EXPECT(l, "a larger range replaces it", { 50, 200, NBD_CMD_WRITE, 3, c });
  CHECK_EQ(refs(b), 1, "reference dropped");

  /* Several entries at once: partial, whole, whole (split pieces of one
   * buffer), whole trim, partial. */
  wr_owned(l, 300, 100, 4);
  wr_owned(l, 420, 10, 5);
  wr_owned(l, 440, 10, 6);
  trim(l, NBD_CMD_TRIM, 460, 20, 7);
  wr_owned(l, 500, 100, 8);
  wr_owned(l, 310, 5, 9); /* splits seq 4 */
  EXPECT(l, "before the big cover",
         W(50, 200, 3), W(300, 10, 4), W(310, 5, 9), W(315, 85, 4), W(420, 10, 5),
         W(440, 10, 6), T(460, 20, 7), W(500, 100, 8));
  struct wbuf *d = wr(l, 200, 350, 10);
  EXPECT(l, "one write covering many entries",
         W(50, 150, 3), { 200, 350, NBD_CMD_WRITE, 10, d }, W(550, 50, 8));
  CHECK_EQ(wlog_bytes(l), 550, "bytes after the cover");
  CHECK_EQ(refs(c), 2, "the trimmed entry keeps its reference");
  trim(l, NBD_CMD_WRITE_ZEROES, 0, 1000, 11);
  EXPECT(l, "zeroes over everything", Z(0, 1000, 11));
  CHECK(refs(a) == 1 && refs(b) == 1 && refs(c) == 1 && refs(d) == 1,
        "every write reference dropped");
  wlog_free(l);
  wbuf_put(a);
  wbuf_put(b);
  wbuf_put(c);
  wbuf_put(d);
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
  CHECK(n == 2 && e[0].buf == e[1].buf, "the same buffer");
  /* Re-add the buffer the log is about to drop, over both entries. */
  CHECK(wlog_add(l, NBD_CMD_WRITE, 0, 0, 100, e[0].buf, e[0].buf->data, 1) == 0,
        "re-adding over the entries that hold the buffer");
  EXPECT(l, "one entry", { 0, 100, NBD_CMD_WRITE, 1, e[0].buf });
  CHECK_EQ(refs(e[0].buf), 3, "log and snapshot references");
  wlog_snapshot_free(e, (size_t)n);
  wlog_free(l); /* frees b: ASan reports a leak or a double free otherwise */
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
  /* Flags survive trimming and splitting. */
  wlog_add(l, NBD_CMD_TRIM, 0, 12, 2, NULL, NULL, 5);
  wlog_add(l, NBD_CMD_TRIM, 0, 35, 10, NULL, NULL, 6);
  n = wlog_snapshot(l, &e);
  CHECK(n == 7 && e[1].flags == (NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO) &&
            e[3].flags == (NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO) &&
            e[5].flags == NBD_CMD_FLAG_NO_HOLE && e[5].len == 5,
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
  CHECK_EQ(wlog_bytes(l), 50, "the trimmed bytes are not counted");
  CHECK_EQ(refs(b), 3, "both halves of the write hold a reference");
  trim(l, NBD_CMD_WRITE_ZEROES, 0, 30, 3);
  EXPECT(l, "zeroes over a write and a trim", Z(0, 30, 3), T(30, 45, 2), W(75, 25, 1));
  CHECK_EQ(refs(b), 2, "the covered half dropped its reference");
  CHECK_EQ(wlog_bytes(l), 25, "bytes");
  struct wbuf *c = wr(l, 20, 20, 4);
  EXPECT(l, "a write over zeroes and a trim", Z(0, 20, 3), W(20, 20, 4), T(40, 35, 2),
         W(75, 25, 1));
  wr_owned(l, 45, 10, 5);
  EXPECT(l, "a write inside a trim splits it", Z(0, 20, 3), W(20, 20, 4), T(40, 5, 2),
         W(45, 10, 5), T(55, 20, 2), W(75, 25, 1));
  CHECK_EQ(wlog_bytes(l), 55, "bytes");
  trim(l, NBD_CMD_TRIM, 0, 200, 6);
  EXPECT(l, "a trim over everything", T(0, 200, 6));
  CHECK_EQ(wlog_bytes(l), 0, "no bytes");
  CHECK(refs(b) == 1 && refs(c) == 1, "no references left");
  struct wbuf *d = wr(l, 0, 200, 7);
  EXPECT(l, "a write over the trim replaces it", W(0, 200, 7));
  CHECK_EQ(refs(d), 2, "reference");
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
  CHECK_EQ(wlog_bytes(l), 150, "bytes before forgetting");
  wlog_forget(l, 0);
  CHECK_EQ(wlog_count(l), 7, "forget(0) keeps everything");
  wlog_forget(l, 2);
  EXPECT(l, "forget(2) drops seq 1 and 2", W(0, 50, 5), W(100, 40, 4), W(200, 30, 3),
         T(1000, 10, 6), Z(2000, 10, 6));
  CHECK(refs(b[1]) == 1 && refs(b[2]) == 1 && refs(b[3]) == 2 && refs(b[5]) == 2,
        "forgotten entries drop their references");
  wlog_forget(l, 1);
  CHECK_EQ(wlog_count(l), 5, "forgetting an older seq again changes nothing");
  wlog_forget(l, 5);
  EXPECT(l, "forget(5) keeps the trims", T(1000, 10, 6), Z(2000, 10, 6));
  struct wbuf *n = wr(l, 1005, 1000, 7);
  wlog_forget(l, 6);
  EXPECT(l, "forget(6) keeps the newer write", { 1005, 1000, NBD_CMD_WRITE, 7, n });
  wlog_forget(l, UINT64_MAX);
  CHECK(wlog_count(l) == 0 && wlog_bytes(l) == 0, "forget(max) empties the log");
  bool all = refs(n) == 1;
  for (int i = 1; i <= 5; i++)
    all = all && refs(b[i]) == 1;
  CHECK(all, "every reference back to 1");
  wr_owned(l, 0, 10, 8);
  EXPECT(l, "an emptied log takes new entries", W(0, 10, 8));
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
  CHECK_EQ(refs(e[0].buf), 6, "three log and three snapshot references");
  /* The snapshot outlives the log's entries. */
  wlog_forget(l, UINT64_MAX);
  CHECK_EQ(refs(e[0].buf), 3, "the snapshot keeps the buffer alive");
  wlog_free(l);
  bool data = true;
  for (long i = 0; i < n; i++)
    if (e[i].type == NBD_CMD_WRITE)
      for (uint64_t k = 0; k < e[i].len; k++)
        data = data && e[i].data[k] == pat(1, e[i].offset + k);
  CHECK(data, "snapshot data readable after the log is gone");
  wlog_snapshot_free(e, (size_t)n); /* frees b */
}

/* Many entries: the array grows and shrinks; inserting in the middle and
 * at the front keeps the order. */
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
  CHECK_EQ(wlog_bytes(l), 5 * N, "their bytes");
  /* Fill every gap: each write touches two entries. */
  for (uint64_t i = 0; i + 1 < N; i++)
    wr_owned(l, i * 10 + 3, 9, ++seq);
  CHECK_EQ(wlog_count(l), 2 * N - 1, "gap fillers trimmed both neighbours");
  CHECK_EQ(wlog_bytes(l), 10 * (N - 1) + 5, "bytes");
  wlog_forget(l, N);
  CHECK_EQ(wlog_count(l), N - 1, "forget the first %d", N);
  trim(l, NBD_CMD_TRIM, 1, 10 * N, ++seq);
  EXPECT(l, "one trim over everything", T(1, 10 * N, seq));
  wlog_free(l);
}

/* Failing adds, and whether they left the log as it was. */
struct fails {
  int hits, unchanged, bad;
};

/* Add a write of pat(seq, ...) with the next realloc failing: if the add
 * needed it, check that nothing changed, then add again for real. */
static void try_add(struct wlog *l, struct wbuf *watch, uint64_t off, uint64_t len, uint64_t seq,
                    struct fails *f)
{
  struct wlog_entry *before, *after;
  long nb = wlog_snapshot(l, &before);
  uint64_t bytes = wlog_bytes(l);
  unsigned r0 = refs(watch), pieces = 0;
  for (long k = 0; k < nb; k++)
    pieces += before[k].buf == watch;
  struct wbuf *b = mkbuf(seq, off, len, 0);
  realloc_fail = 1;
  int r = wlog_add(l, NBD_CMD_WRITE, NBD_CMD_FLAG_FUA, off, len, b, b->data, seq);
  bool called = realloc_fail == 0;
  realloc_fail = 0;
  if (r == -ENOMEM) {
    f->hits++;
    long na = wlog_snapshot(l, &after);
    /* The watched buffer: its references, plus one per piece in each snapshot. */
    if (na == nb && (na <= 0 || !memcmp(before, after, (size_t)na * sizeof *after)) &&
        wlog_bytes(l) == bytes && refs(watch) == r0 + pieces && refs(b) == 1)
      f->unchanged++;
    if (na > 0)
      wlog_snapshot_free(after, (size_t)na);
    r = wlog_add(l, NBD_CMD_WRITE, 0, off, len, b, b->data, seq);
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
 * grow, the log must not change. */
static void test_enomem(void)
{
  struct wlog *l = wlog_new();
  struct wbuf *big = wr(l, 0, 100000, 1);
  struct fails split = { 0 }, cut = { 0 };
  uint64_t seq = 1;
  for (uint64_t i = 0; i < 200; i++) {
    uint64_t off = 500 * i + 7;
    try_add(l, big, off, 100, ++seq, &split);    /* splits big's tail */
    try_add(l, big, off + 50, 100, ++seq, &cut); /* trims the last write and big's tail */
  }
  CHECK(split.hits >= 2 && cut.hits >= 2, "some adds needed to grow the array (%d, %d)",
        split.hits, cut.hits);
  CHECK(split.unchanged == split.hits, "a failed split leaves the log unchanged (%d of %d)",
        split.unchanged, split.hits);
  CHECK(cut.unchanged == cut.hits, "a failed cut leaves the log unchanged (%d of %d)",
        cut.unchanged, cut.hits);
  CHECK(split.bad == 0 && cut.bad == 0, "no add failed otherwise");
  const struct want first[] = {
    { 0, 7, NBD_CMD_WRITE, 1, big }, W(7, 50, 2), W(57, 100, 3), W(157, 350, 1),
    W(507, 50, 4), W(557, 100, 5), W(657, 350, 1),
  };
  struct wlog_entry *e;
  long n = wlog_snapshot(l, &e);
  bool ok = n == 601;
  for (size_t i = 0; ok && i < sizeof first / sizeof first[0]; i++)
    ok = entry_ok(&e[i], &first[i], i);
  CHECK(ok, "the retried adds cut as they should");
  if (n > 0)
    wlog_snapshot_free(e, (size_t)n);
  CHECK_EQ(wlog_count(l), 601, "every add happened in the end");
  /* A failed shrink while forgetting is harmless. */
  realloc_fail = 1000;
  wlog_forget(l, 150);
  realloc_fail = 0;
  CHECK_EQ(wlog_count(l), 251, "forgetting with realloc failing");
  CHECK_EQ(wlog_bytes(l), 125 * 50 + 126 * 100, "bytes");
  wlog_forget(l, UINT64_MAX);
  CHECK_EQ(refs(big), 1, "the split buffer's references are all back");
  wlog_free(l);
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

/* The model: what the last change of each byte was. */
static uint64_t m_seq[DEV];
static uint8_t m_type[DEV], m_flags[DEV], m_val[DEV];
/* The log applied to a device. */
static uint64_t l_seq[DEV];
static uint8_t l_type[DEV], l_flags[DEV], l_val[DEV];
static bool l_cov[DEV];

/* Buffers the test still holds a reference to (NULL once dropped).  Every
 * buffer starts with its index, so an entry's buffer can be named. */
static struct wbuf *rbufs[OPS];
static int rcount[OPS];

struct rstats {
  int model, overlap, bytes, count, refs, enomem_bad;
  int enomem, ops, max_entries;
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

static void rcheck(struct wlog *l, uint64_t forgotten, int op, struct rstats *st)
{
  struct wlog_entry *e;
  long n = wlog_snapshot(l, &e);
  if (n < 0) {
    rdiag(&st->count, "op %d: snapshot failed", op);
    return;
  }
  if ((size_t)n != wlog_count(l))
    rdiag(&st->count, "op %d: %ld entries, wlog_count %zu", op, n, wlog_count(l));
  if (n > st->max_entries)
    st->max_entries = (int)n;
  memset(l_cov, 0, sizeof l_cov);
  memset(rcount, 0, sizeof rcount);
  uint64_t bytes = 0;
  /* Apply in reverse order: with no overlaps the order cannot matter. */
  for (long i = n - 1; i >= 0; i--) {
    const struct wlog_entry *x = &e[i];
    if (!x->len || x->offset >= DEV || x->len > DEV - x->offset ||
        (i + 1 < n && x->offset + x->len > e[i + 1].offset)) {
      rdiag(&st->overlap, "op %d: entry %ld [%llu, +%llu) misplaced", op, i,
            (unsigned long long)x->offset, (unsigned long long)x->len);
      continue;
    }
    if (x->type == NBD_CMD_WRITE) {
      bytes += x->len;
      uint32_t id;
      memcpy(&id, x->buf->data, sizeof id);
      if (id < OPS)
        rcount[id]++;
    }
    for (uint64_t p = x->offset; p < x->offset + x->len; p++) {
      if (l_cov[p])
        rdiag(&st->overlap, "op %d: byte %llu in two entries", op, (unsigned long long)p);
      l_cov[p] = true;
      l_seq[p] = x->seq;
      l_type[p] = (uint8_t)x->type;
      l_flags[p] = (uint8_t)x->flags;
      l_val[p] = x->data ? x->data[p - x->offset] : 0;
    }
  }
  uint64_t mbytes = 0;
  for (uint64_t p = 0; p < DEV; p++) {
    bool live = m_seq[p] > forgotten;
    mbytes += live && m_type[p] == NBD_CMD_WRITE;
    if (live != l_cov[p] ||
        (live && (l_seq[p] != m_seq[p] || l_type[p] != m_type[p] || l_flags[p] != m_flags[p] ||
                  l_val[p] != m_val[p]))) {
      rdiag(&st->model,
            "op %d: byte %llu: log %s seq %llu type %u flags %u val %u, "
            "model %s seq %llu type %u flags %u val %u",
            op, (unsigned long long)p, l_cov[p] ? "has" : "lacks", (unsigned long long)l_seq[p],
            l_type[p], l_flags[p], l_val[p], live ? "has" : "lacks", (unsigned long long)m_seq[p],
            m_type[p], m_flags[p], m_val[p]);
      break;
    }
  }
  if (bytes != wlog_bytes(l) || mbytes != bytes)
    rdiag(&st->bytes, "op %d: wlog_bytes %llu, entries %llu, model %llu", op,
          (unsigned long long)wlog_bytes(l), (unsigned long long)bytes,
          (unsigned long long)mbytes);
  /* Held by the test, by each entry, and by each entry's snapshot copy. */
  for (int id = 0; id < OPS; id++)
    if (rbufs[id] && refs(rbufs[id]) != 1 + 2 * (unsigned)rcount[id]) {
      rdiag(&st->refs, "op %d: buffer %d has %u references, %d entries", op, id,
            refs(rbufs[id]), rcount[id]);
      break;
    }
  if (n > 0)
    wlog_snapshot_free(e, (size_t)n);
}

/* frag: short changes anywhere and rare forgets, so entries pile up. */
static void random_run(uint64_t seed, bool frag)
{
  rng = seed;
  memset(m_seq, 0, sizeof m_seq);
  memset(rbufs, 0, sizeof rbufs);
  struct rstats st = { 0 };
  struct wlog *l = wlog_new();
  uint64_t seq = 1, forgotten = 0;
  int nbufs = 0;
  for (int op = 0; op < OPS; op++) {
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
      rcheck(l, forgotten, op, &st);
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
    int id = -1;
    if (type == NBD_CMD_WRITE) {
      /* [id][junk pad][payload][junk] */
      id = nbufs++;
      size_t pad = 4 + rnd(32);
      uint8_t *tmp = malloc(pad + len + 8);
      for (size_t i = 0; i < pad + len + 8; i++)
        tmp[i] = (uint8_t)rnd(256);
      uint32_t id32 = (uint32_t)id;
      memcpy(tmp, &id32, sizeof id32);
      b = wbuf_new(tmp, pad + len + 8);
      free(tmp);
      data = b->data + pad;
    }
    bool inject = rnd(8) == 0;
    realloc_fail = inject;
    int r = wlog_add(l, type, flags, off, len, b, data, seq);
    bool called = realloc_fail == 0;
    realloc_fail = 0;
    if (r == -ENOMEM && inject && called) {
      st.enomem++;
      if (b)
        rbufs[id] = b; /* its references must not have moved either */
      rcheck(l, forgotten, op, &st); /* the model is not updated yet */
      r = wlog_add(l, type, flags, off, len, b, data, seq);
    }
    if (r)
      rdiag(&st.enomem_bad, "op %d: wlog_add = %d", op, r);
    for (uint64_t p = off; p < off + len; p++) {
      m_seq[p] = seq;
      m_type[p] = (uint8_t)type;
      m_flags[p] = (uint8_t)(flags & ~NBD_CMD_FLAG_FUA);
      m_val[p] = data ? data[p - off] : 0;
    }
    /* Keep half of the buffers to check their references; the log alone
     * owns the others. */
    if (b) {
      if (rnd(2)) {
        rbufs[id] = b;
      } else {
        rbufs[id] = NULL;
        wbuf_put(b);
      }
    }
    rcheck(l, forgotten, op, &st);
  }
  st.ops = OPS;
  printf("# seed %llu%s: %d ops, up to %d entries, %d injected ENOMEM, last seq %llu\n",
         (unsigned long long)seed, frag ? " (fragmented)" : "", st.ops, st.max_entries, st.enomem,
         (unsigned long long)seq);
  CHECK(st.model == 0, "seed %llu: the log matches the byte model after every op",
        (unsigned long long)seed);
  CHECK(st.overlap == 0, "seed %llu: entries sorted, disjoint, inside the device",
        (unsigned long long)seed);
  CHECK(st.bytes == 0, "seed %llu: wlog_bytes matches", (unsigned long long)seed);
  CHECK(st.count == 0, "seed %llu: wlog_count matches the snapshot", (unsigned long long)seed);
  CHECK(st.refs == 0, "seed %llu: buffer references match the entries", (unsigned long long)seed);
  CHECK(st.enomem_bad == 0 && st.enomem > 0,
        "seed %llu: adds succeed, fail only when realloc does, and fail cleanly",
        (unsigned long long)seed);
  wlog_forget(l, seq);
  bool all = wlog_count(l) == 0 && wlog_bytes(l) == 0;
  for (int id = 0; id < nbufs; id++)
    if (rbufs[id])
      all = all && refs(rbufs[id]) == 1;
  CHECK(all, "seed %llu: forgetting everything leaves no entries and no references",
        (unsigned long long)seed);
  wlog_free(l);
  for (int id = 0; id < nbufs; id++)
    wbuf_put(rbufs[id]);
}

int main(void)
{
  test_wbuf();
  test_empty();
  test_disjoint();
  test_cut_start();
  test_cut_end();
  test_split();
  test_cover();
  test_same_buffer();
  test_flags();
  test_trim_write();
  test_forget();
  test_snapshot();
  test_many();
  test_enomem();
  uint64_t seeds[] = { 0x9e3779b97f4a7c15ull, 12345, 0xdeadbeefcafef00dull };
  for (size_t i = 0; i < sizeof seeds / sizeof seeds[0]; i++)
    random_run(seeds[i], false);
  random_run(0x0123456789abcdefull, true);
  return done_testing();
}
