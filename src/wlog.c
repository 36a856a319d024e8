/* wlog.c: see wlog.h.
 *
 * Entries live in one array in the order they were added, which is seq
 * order: the live ones are [head, n).  wlog_add appends (O(1) amortised:
 * the array doubles when full) and cuts nothing; wlog_forget drops a prefix
 * by moving head.  Overlaps are resolved only by wlog_snapshot, which runs
 * rarely (a replay after a lost connection), in O(n log n):
 *
 *  - the starts and ends of all entries, sorted and deduplicated, cut the
 *    offsets into elementary segments, each of which every entry covers
 *    wholly or not at all;
 *  - a sweep over the segments in offset order keeps a max-heap, keyed by
 *    position in the array (add order: newest on top), of the entries that
 *    have started; an entry that has ended is popped only once it reaches
 *    the top, so the top is always the newest entry covering the segment;
 *  - consecutive segments won by the same entry become one piece.
 *
 * Space: wlog_forget moves the live entries to the front once as many
 * dead ones precede them, so the array only grows when at least half of it
 * is live, and it shrinks the array to twice the live entries once they
 * fill less than a quarter of it: the array holds at most four times the
 * live entries (or MIN_CAP; more only while a shrink has failed), and each
 * move or resize costs O(1) per entry forgotten or added since the last.
 */
#include "wlog.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "nbd-proto.h"

#define MIN_CAP 16

struct wlog {
  struct wlog_entry *e; /* [head, n) live, in add (= seq) order, none empty */
  size_t head, n, cap;  /* head == 0 or head < n - head: see wlog_forget */
  uint64_t bytes;       /* payload of the live WRITE entries, superseded or not */
};

struct wbuf *wbuf_alloc(size_t len)
{
  if (len > SIZE_MAX - sizeof(struct wbuf))
    return NULL;
  struct wbuf *b = malloc(sizeof *b + len);
  if (!b)
    return NULL;
  atomic_init(&b->refs, 1);
  b->len = len;
  return b;
}

struct wbuf *wbuf_new(const void *src, size_t len)
{
  struct wbuf *b = wbuf_alloc(len);
  if (b && len)
    memcpy(b->data, src, len);
  return b;
}

void wbuf_put(struct wbuf *b)
{
  /* acq_rel: whoever frees must see every other holder's accesses done. */
  if (b && atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) == 1)
    free(b);
}

struct wlog *wlog_new(void)
{
  return calloc(1, sizeof(struct wlog));
}

void wlog_free(struct wlog *l)
{
  if (!l)
    return;
  for (size_t i = l->head; i < l->n; i++)
    wbuf_put(l->e[i].buf);
  free(l->e);
  free(l);
}

static uint64_t end_of(const struct wlog_entry *x)
{
  return x->offset + x->len;
}

static uint64_t payload(const struct wlog_entry *x)
{
  return x->type == NBD_CMD_WRITE ? x->len : 0;
}

/* An array of n elements of size bytes, or NULL.  Every array of the log
 * comes from realloc, so that the unit test can make any allocation fail;
 * the compiler would turn realloc(NULL, ...) into malloc, hence the
 * volatile. */
static void *alloc_array(size_t n, size_t size)
{
  void *volatile none = NULL;
  if (size && n > SIZE_MAX / size)
    return NULL;
  size_t total = n * size;
  return realloc(none, total ? total : 1);
}

int wlog_add(struct wlog *l, uint16_t type, uint16_t flags, uint64_t offset, uint64_t len,
             struct wbuf *buf, const uint8_t *data, uint64_t seq)
{
  /* An empty change supersedes nothing and replays as nothing. */
  if (!len)
    return 0;
  /* Requests stay inside the export; a range past 2^64 would sort wrong. */
  if (len > UINT64_MAX - offset)
    return -EINVAL;
  if (l->n == l->cap) {
    /* Full, and (see wlog_forget) at least half of it live: grow. */
    if (l->cap > SIZE_MAX / 2 / sizeof *l->e)
      return -ENOMEM;
    size_t cap = l->cap ? 2 * l->cap : MIN_CAP;
    struct wlog_entry *ne = realloc(l->e, cap * sizeof *ne);
    if (!ne)
      return -ENOMEM;
    l->e = ne;
    l->cap = cap;
  }
  bool write = type == NBD_CMD_WRITE;
  l->e[l->n++] = (struct wlog_entry){
    .offset = offset, .len = len, .type = type,
    .flags = (uint16_t)(flags & ~NBD_CMD_FLAG_FUA), .seq = seq,
    .buf = write ? wbuf_get(buf) : NULL, .data = write ? data : NULL,
  };
  l->bytes += write ? len : 0;
  return 0;
}

void wlog_forget(struct wlog *l, uint64_t upto)
{
  /* Seqs never decrease along the array: the forgotten are a prefix. */
  size_t h = l->head;
  for (; h < l->n && l->e[h].seq <= upto; h++) {
    l->bytes -= payload(&l->e[h]);
    wbuf_put(l->e[h].buf);
  }
  if (h == l->head)
    return;
  l->head = h;
  size_t live = l->n - h;
  if (!live) {
    free(l->e);
    l->e = NULL;
    l->head = l->n = l->cap = 0;
    return;
  }
  /* Give back what a burst of writes grew, keeping room to grow again: a
   * new capacity of twice the live entries leaves live adds before the next
   * growth and live / 2 forgets before the next shrink. */
  bool shrink = l->cap > MIN_CAP && live < l->cap / 4;
  /* Move the live entries to the front once the dead ones before them are
   * as many: the move is paid for by as many forgets. */
  if (shrink || h >= live) {
    memmove(l->e, l->e + h, live * sizeof *l->e);
    l->head = 0;
    l->n = live;
  }
  if (shrink) {
    size_t cap = 2 * live > MIN_CAP ? 2 * live : MIN_CAP;
    struct wlog_entry *ne = realloc(l->e, cap * sizeof *ne);
    if (ne) { /* failing to shrink is harmless */
      l->e = ne;
      l->cap = cap;
    }
  }
}

uint64_t wlog_bytes(const struct wlog *l)
{
  return l->bytes;
}

size_t wlog_count(const struct wlog *l)
{
  return l->n - l->head;
}

/* ---- snapshot ---- */

struct start {
  uint64_t offset;
  size_t i; /* index among the live entries: add order */
};

static int cmp_u64(const void *a, const void *b)
{
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return (x > y) - (x < y);
}

static int cmp_start(const void *a, const void *b)
{
  const struct start *x = a, *y = b;
  if (x->offset != y->offset)
    return (x->offset > y->offset) - (x->offset < y->offset);
  return (x->i > y->i) - (x->i < y->i);
}

/* A binary max-heap of entry indices. */
static void heap_push(size_t *h, size_t *n, size_t v)
{
  size_t k = (*n)++;
  while (k > 0 && h[(k - 1) / 2] < v) {
    h[k] = h[(k - 1) / 2];
    k = (k - 1) / 2;
  }
  h[k] = v;
}

static void heap_pop(size_t *h, size_t *n)
{
  size_t v = h[--*n], k = 0;
  for (;;) {
    size_t c = 2 * k + 1;
    if (c >= *n)
      break;
    if (c + 1 < *n && h[c + 1] > h[c])
      c++;
    if (h[c] <= v)
      break;
    h[k] = h[c];
    k = c;
  }
  h[k] = v;
}

long wlog_snapshot(const struct wlog *l, struct wlog_entry **out)
{
  *out = NULL;
  size_t m = l->n - l->head;
  if (!m)
    return 0;
  const struct wlog_entry *e = l->e + l->head;
  long ret = -ENOMEM;
  struct wlog_entry *c = NULL;
  uint64_t *pt = m <= SIZE_MAX / 2 ? alloc_array(2 * m, sizeof *pt) : NULL;
  struct start *st = alloc_array(m, sizeof *st);
  size_t *heap = alloc_array(m, sizeof *heap);
  if (!pt || !st || !heap)
    goto out;

  /* The segment boundaries. */
  for (size_t i = 0; i < m; i++) {
    pt[2 * i] = e[i].offset;
    pt[2 * i + 1] = end_of(&e[i]);
    st[i] = (struct start){ e[i].offset, i };
  }
  qsort(pt, 2 * m, sizeof *pt, cmp_u64);
  size_t k = 1;
  for (size_t i = 1; i < 2 * m; i++)
    if (pt[i] != pt[k - 1])
      pt[k++] = pt[i];
  qsort(st, m, sizeof *st, cmp_start);

  /* At most one piece per segment (entries are never empty: k >= 2). */
  c = alloc_array(k - 1, sizeof *c);
  if (!c)
    goto out;
  size_t nc = 0, hn = 0, s = 0, last = SIZE_MAX;
  for (size_t j = 0; j + 1 < k; j++) {
    uint64_t lo = pt[j], hi = pt[j + 1];
    while (s < m && st[s].offset <= lo)
      heap_push(heap, &hn, st[s++].i);
    /* The top ends after lo, so at hi or later: it covers [lo, hi). */
    while (hn && end_of(&e[heap[0]]) <= lo)
      heap_pop(heap, &hn);
    if (!hn)
      continue; /* a hole */
    size_t w = heap[0];
    if (w == last && c[nc - 1].offset + c[nc - 1].len == lo) {
      c[nc - 1].len += hi - lo;
      continue;
    }
    const struct wlog_entry *x = &e[w];
    c[nc] = *x;
    c[nc].offset = lo;
    c[nc].len = hi - lo;
    if (x->data)
      c[nc].data = x->data + (size_t)(lo - x->offset);
    nc++;
    last = w;
  }
  for (size_t i = 0; i < nc; i++)
    wbuf_get(c[i].buf);
  /* Give back a large unused tail; failing to is harmless. */
  if (nc && nc < (k - 1) / 2) {
    struct wlog_entry *sc = realloc(c, nc * sizeof *sc);
    if (sc)
      c = sc;
  }
  *out = c;
  c = NULL;
  ret = (long)nc;
out:
  free(c);
  free(heap);
  free(st);
  free(pt);
  return ret;
}

void wlog_snapshot_free(struct wlog_entry *e, size_t n)
{
  for (size_t i = 0; i < n; i++)
    wbuf_put(e[i].buf);
  free(e);
}
