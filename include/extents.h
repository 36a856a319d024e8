/* extents.h: what is allocated where, from NBD_CMD_BLOCK_STATUS on
 * base:allocation.
 *
 * Answers are cached briefly (other clients may change the export) and
 * forgotten whenever this mount writes, trims or zeroes (a write changes
 * allocation at the server's granularity, not only where it wrote).  Scans
 * ask for long ranges at once and are bounded: past the budget, the rest is
 * reported as data, which is always a safe answer.
 *
 * The cache hangs off the pool as its change observer.  Without one
 * (extents_attach not called, or failed) every answer is "all data".
 */
#ifndef NBDFS_EXTENTS_H
#define NBDFS_EXTENTS_H

#include <stdbool.h>
#include <stdint.h>

struct nbd_pool;

/* Give p an extent cache, kept up to date by observing p's writes.
 * Returns 0 or -ENOMEM.  Does nothing when p has one already. */
int extents_attach(struct nbd_pool *p);
/* Free p's cache (after nbd_pool_close, before nbd_pool_free). */
void extents_detach(struct nbd_pool *p);

/* SEEK_DATA (data=true) or SEEK_HOLE from off.  cb gets 0 and the offset,
 * or ENXIO (no data at or after off, or off at or past the end). */
typedef void (*extents_seek_fn)(void *arg, int err, uint64_t result);
void extents_seek(struct nbd_pool *p, uint64_t off, bool data, extents_seek_fn cb, void *arg);
/* The same within [0, end) (a partition's window ends there: the hole at
 * its end is at end). */
void extents_seek_range(struct nbd_pool *p, uint64_t off, uint64_t end, bool data,
                        extents_seek_fn cb, void *arg);

/* Bytes the server reports as allocated (for st_blocks). */
typedef void (*extents_alloc_fn)(void *arg, uint64_t bytes);
/* The last allocated size computed, however old: false when none was yet
 * (or the server has no block status).  *fresh: it is recent and nothing
 * was written since. */
bool extents_allocated_known(struct nbd_pool *p, uint64_t *bytes, bool *fresh);
/* The allocated size: at once when fresh, otherwise once a scan ends (one
 * scan at a time: later callers join the one under way).  cb runs exactly
 * once, maybe before this returns. */
void extents_allocated(struct nbd_pool *p, extents_alloc_fn cb, void *arg);

/* A background recount for stat: started (true, cb runs once) only when
 * the known size is stale, no count is under way, and the last one ended
 * long enough ago that counting takes at most a tenth of the time (at least
 * a second apart).  false: nothing started, cb is not called. */
bool extents_allocated_refresh(struct nbd_pool *p, extents_alloc_fn cb, void *arg);

/* The bytes allocated in [start, end) (a partition), by a scan of its own;
 * cb runs exactly once, maybe before this returns. */
void extents_allocated_range(struct nbd_pool *p, uint64_t start, uint64_t end,
                             extents_alloc_fn cb, void *arg);

/* Does [off, off+len) read as zeros according to the server? */
typedef void (*extents_zero_fn)(void *arg, bool zero);
void extents_check_zero(struct nbd_pool *p, uint64_t off, uint64_t len, extents_zero_fn cb,
                        void *arg);

/* A hole is what the server reports as unallocated and reading as zeros. */
static inline bool extent_is_hole(uint32_t flags) { return (flags & 3) == 3; }

#endif
