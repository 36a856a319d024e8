/* wlog.h: the write log, acknowledged changes not yet covered by a FLUSH.
 *
 * A server that crashes may lose writes it acknowledged but never flushed.
 * The pool keeps the payload of every such write (and the range of every
 * TRIM and WRITE_ZEROES) here until a FLUSH that covers it succeeds, and
 * sends it all again on a new connection after a loss.
 *
 * wlog_add runs on every completed write, so it only appends (O(1)
 * amortised) and leaves overlaps alone: an older change that a newer one
 * overwrites stays in the log, with its buffer, until it is forgotten.
 * wlog_snapshot, which runs only to replay, resolves the overlaps
 * (O(n log n)): its entries never overlap and each byte comes from the
 * newest change to it, so replay may send every entry at once, in any
 * order.
 *
 * Pure data structure: no locking (the pool serialises calls), no I/O.
 */
#ifndef NBDFS_WLOG_H
#define NBDFS_WLOG_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* A reference-counted payload, shared by the command on the wire and the
 * log entries that still need it. */
struct wbuf {
  atomic_uint refs;
  size_t len;
  uint8_t data[];
};

/* A new buffer holding a copy of len bytes of src (refs = 1), or NULL. */
struct wbuf *wbuf_new(const void *src, size_t len);
/* The same, uninitialised: for whoever fills it (FUSE receive buffers). */
struct wbuf *wbuf_alloc(size_t len);
static inline struct wbuf *wbuf_get(struct wbuf *b)
{
  if (b)
    atomic_fetch_add_explicit(&b->refs, 1, memory_order_relaxed);
  return b;
}
void wbuf_put(struct wbuf *b);

/* One retained change, or in a snapshot the part of one that is still
 * current.  For NBD_CMD_WRITE, data points into buf (which the entry holds a
 * reference to) at the entry's first byte; for TRIM and WRITE_ZEROES both
 * are NULL. */
struct wlog_entry {
  uint64_t offset;
  uint64_t len;
  uint16_t type;   /* NBD_CMD_WRITE, NBD_CMD_TRIM or NBD_CMD_WRITE_ZEROES */
  uint16_t flags;  /* the command's flags (FUA stripped: replay flushes anyway) */
  uint64_t seq;    /* completion sequence number given to wlog_add */
  struct wbuf *buf;
  const uint8_t *data;
};

struct wlog;

struct wlog *wlog_new(void);
/* Drop every entry and free the log. */
void wlog_free(struct wlog *l);

/* Record a completed change of [offset, offset+len): O(1) amortised.  For
 * WRITE, data is buf->data + some offset and holds len bytes; the log takes
 * its own reference to buf (one per entry, however much of it newer changes
 * overwrite).  Nothing is cut: overlaps are resolved by wlog_snapshot, where
 * the newer change wins.  seq must not decrease from one call to the next
 * (wlog_forget relies on it); for equal seqs the later call is the newer
 * change.  A zero-length change is accepted and not kept.  Returns 0,
 * -EINVAL if offset + len passes 2^64 (never for a request inside an
 * export), or -ENOMEM; on failure the log is unchanged. */
int wlog_add(struct wlog *l, uint16_t type, uint16_t flags, uint64_t offset, uint64_t len,
             struct wbuf *buf, const uint8_t *data, uint64_t seq);

/* A FLUSH covering every change with seq <= upto succeeded: forget them
 * (a prefix of the log, in add order), dropping their buffer references.
 * O(k) amortised for k entries forgotten. */
void wlog_forget(struct wlog *l, uint64_t upto);

/* The payload bytes of every retained WRITE entry, counting the bytes newer
 * changes overwrote (the log still holds them: this is the memory the
 * retained writes cost), and the number of retained entries (every change
 * added and not yet forgotten, superseded or not; a snapshot may have fewer
 * entries, or more, as pieces of one change that newer ones split). */
uint64_t wlog_bytes(const struct wlog *l);
size_t wlog_count(const struct wlog *l);

/* What a replay must send: the retained changes with overlaps resolved,
 * sorted by offset and disjoint.  Every byte some retained change covers
 * appears in exactly one entry, taken from the newest change covering it
 * (highest seq; for equal seqs the one added last), whatever its type: a
 * newer TRIM hides an older WRITE and the other way round.  An entry is a
 * contiguous piece of one change (seq, type and flags are that change's; a
 * WRITE's data points at the piece's bytes in the change's buffer); pieces
 * of different changes stay separate even when adjacent.  Each entry holds
 * its own buffer reference (release with wlog_snapshot_free).  O(n log n)
 * for n retained entries.  Returns the count (0 with *out NULL when empty),
 * or -ENOMEM (with *out NULL; the log is unchanged either way). */
long wlog_snapshot(const struct wlog *l, struct wlog_entry **out);
void wlog_snapshot_free(struct wlog_entry *e, size_t n);

#endif
