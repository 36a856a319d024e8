/* wlog.c: see wlog.h.  Entries live in one array sorted by offset.  Being
 * disjoint, they are sorted by end as well, so one binary search finds the
 * first entry a new range touches and the others it touches follow it: an
 * add costs O(log n + k) plus one memmove. */
#include "wlog.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "nbd-proto.h"

#define MIN_CAP 16

struct wlog {
  struct wlog_entry *e; /* sorted by offset, disjoint, none empty */
  size_t n, cap;
  uint64_t bytes;       /* payload of the WRITE entries */
};

struct wbuf *wbuf_new(const void *src, size_t len)
{
  if (len > SIZE_MAX - sizeof(struct wbuf))
    return NULL;
  struct wbuf *b = malloc(sizeof *b + len);
  if (!b)
    return NULL;
  atomic_init(&b->refs, 1);
  b->len = len;
  if (len)
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
  for (size_t i = 0; i < l->n; i++)
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

/* Index of the first entry ending after off. */
static size_t find(const struct wlog *l, uint64_t off)
{
  size_t lo = 0, hi = l->n;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (end_of(&l->e[mid]) <= off)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

/* Room for want entries; on failure the array is untouched. */
static int reserve(struct wlog *l, size_t want)
{
  if (want <= l->cap)
    return 0;
  size_t cap = l->cap ? l->cap : MIN_CAP;
  while (cap < want) {
    if (cap > SIZE_MAX / 2 / sizeof *l->e)
      return -ENOMEM;
    cap *= 2;
  }
  struct wlog_entry *ne = realloc(l->e, cap * sizeof *ne);
  if (!ne)
    return -ENOMEM;
  l->e = ne;
  l->cap = cap;
  return 0;
}

/* Drop the first cut bytes of x (the data moves along with the offset). */
static void trim_head(struct wlog *l, struct wlog_entry *x, uint64_t cut)
{
  l->bytes -= x->type == NBD_CMD_WRITE ? cut : 0;
  x->offset += cut;
  x->len -= cut;
  if (x->data)
    x->data += cut;
}

/* Keep only the first keep bytes of x. */
static void trim_tail(struct wlog *l, struct wlog_entry *x, uint64_t keep)
{
  l->bytes -= x->type == NBD_CMD_WRITE ? x->len - keep : 0;
  x->len = keep;
}

int wlog_add(struct wlog *l, uint16_t type, uint16_t flags, uint64_t offset, uint64_t len,
             struct wbuf *buf, const uint8_t *data, uint64_t seq)
{
  /* An empty change supersedes nothing and replays as nothing; keeping
   * no empty entries also keeps find() exact. */
  if (!len)
    return 0;
  /* A split adds two entries, anything else at most one: reserve the worst
   * case so that nothing below can fail half way. */
  if (reserve(l, l->n + 2) < 0)
    return -ENOMEM;
  bool write = type == NBD_CMD_WRITE;
  /* Take the new reference first: buf may also be one an older entry is
   * about to drop. */
  struct wlog_entry ne = {
    .offset = offset, .len = len, .type = type,
    .flags = (uint16_t)(flags & ~NBD_CMD_FLAG_FUA), .seq = seq,
    .buf = write ? wbuf_get(buf) : NULL, .data = write ? data : NULL,
  };
  struct wlog_entry *e = l->e;
  uint64_t end = offset + len; /* requests stay inside the export: no wrap */
  size_t i = find(l, offset);

  if (i < l->n && e[i].offset < offset) {
    struct wlog_entry *x = &e[i];
    uint64_t xend = end_of(x);
    if (xend > end) {
      /* x covers the new range on both sides: split it into its head and
       * its tail, each holding a reference, with the new entry between. */
      struct wlog_entry tail = *x;
      tail.offset = end;
      tail.len = xend - end;
      if (tail.data)
        tail.data += end - x->offset;
      wbuf_get(tail.buf);
      l->bytes -= x->type == NBD_CMD_WRITE ? len : 0;
      x->len = offset - x->offset;
      memmove(&e[i + 3], &e[i + 1], (l->n - i - 1) * sizeof *e);
      e[i + 1] = ne;
      e[i + 2] = tail;
      l->n += 2;
      l->bytes += payload(&ne);
      return 0;
    }
    trim_tail(l, x, offset - x->offset);
    i++;
  }

  /* [i, j) lie wholly inside the new range. */
  size_t j = i;
  for (; j < l->n && end_of(&e[j]) <= end; j++) {
    l->bytes -= payload(&e[j]);
    wbuf_put(e[j].buf);
  }
  if (j < l->n && e[j].offset < end)
    trim_head(l, &e[j], end - e[j].offset);

  /* The new entry takes the place of [i, j). */
  if (j != i + 1)
    memmove(&e[i + 1], &e[j], (l->n - j) * sizeof *e);
  l->n = l->n + 1 - (j - i);
  e[i] = ne;
  l->bytes += payload(&ne);
  return 0;
}

void wlog_forget(struct wlog *l, uint64_t upto)
{
  size_t k = 0;
  for (size_t i = 0; i < l->n; i++) {
    if (l->e[i].seq <= upto) {
      l->bytes -= payload(&l->e[i]);
      wbuf_put(l->e[i].buf);
    } else {
      l->e[k++] = l->e[i];
    }
  }
  l->n = k;
  /* Give back what a burst of writes grew, keeping room to grow again. */
  if (!l->n) {
    free(l->e);
    l->e = NULL;
    l->cap = 0;
  } else if (l->cap > MIN_CAP && l->n < l->cap / 4) {
    size_t cap = l->cap;
    while (cap > MIN_CAP && l->n < cap / 4)
      cap /= 2;
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
  return l->n;
}

long wlog_snapshot(const struct wlog *l, struct wlog_entry **out)
{
  *out = NULL;
  if (!l->n)
    return 0;
  struct wlog_entry *c = malloc(l->n * sizeof *c);
  if (!c)
    return -ENOMEM;
  memcpy(c, l->e, l->n * sizeof *c);
  for (size_t i = 0; i < l->n; i++)
    wbuf_get(c[i].buf);
  *out = c;
  return (long)l->n;
}

void wlog_snapshot_free(struct wlog_entry *e, size_t n)
{
  for (size_t i = 0; i < n; i++)
    wbuf_put(e[i].buf);
  free(e);
}
