/* wlog.h: the write log, acknowledged changes not yet covered by a FLUSH.
 *
 * A server that crashes may lose writes it acknowledged but never flushed.
 * The pool keeps the payload of every such write (and the range of every
 * TRIM and WRITE_ZEROES) here until a FLUSH that covers it succeeds, and
 * sends it all again on a new connection after a loss.  Entries never
 * overlap: a newer change supersedes the overlapped part of older ones, so
 * replay may send every entry at once, in any order.
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
static inline struct wbuf *wbuf_get(struct wbuf *b)
{
  if (b)
    atomic_fetch_add_explicit(&b->refs, 1, memory_order_relaxed);
  return b;
}
void wbuf_put(struct wbuf *b);

/* One retained change.  For NBD_CMD_WRITE, data points into buf (which the
 * entry holds a reference to); for TRIM and WRITE_ZEROES both are NULL. */
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

/* Record a completed change of [offset, offset+len).  For WRITE, data is
 * buf->data + some offset and holds len bytes; the log takes its own
 * reference to buf.  Parts of older entries that the new range overlaps are
 * cut away (an entry may split in two).  seq must not decrease from one
 * call to the next.  Returns 0, or -ENOMEM (the log is then unchanged). */
int wlog_add(struct wlog *l, uint16_t type, uint16_t flags, uint64_t offset, uint64_t len,
             struct wbuf *buf, const uint8_t *data, uint64_t seq);

/* A FLUSH covering every change with seq <= upto succeeded: forget them. */
void wlog_forget(struct wlog *l, uint64_t upto);

/* Payload bytes retained (WRITE entries only) and the number of entries. */
uint64_t wlog_bytes(const struct wlog *l);
size_t wlog_count(const struct wlog *l);

/* A copy of every entry, sorted by offset, each holding its own buffer
 * reference (release with wlog_snapshot_free).  Returns the count (0 with
 * *out NULL when empty), or -ENOMEM. */
long wlog_snapshot(const struct wlog *l, struct wlog_entry **out);
void wlog_snapshot_free(struct wlog_entry *e, size_t n);

#endif
