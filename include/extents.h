/* extents.h: what is allocated where, from NBD_CMD_BLOCK_STATUS on
 * base:allocation.
 *
 * Answers are cached briefly (other clients may change the export) and
 * forgotten whenever this mount writes, trims or zeroes (a write changes
 * allocation at the server's granularity, not only where it wrote).  Scans
 * ask for long ranges at once and are bounded: past the budget, the rest is
 * reported as data, which is always a safe answer.
 */
#ifndef NBDFS_EXTENTS_H
#define NBDFS_EXTENTS_H

#include <stdbool.h>
#include <stdint.h>

struct nbd_pool;
struct extent_cache;

struct extent_cache *extent_cache_new(void);
void extent_cache_free(struct extent_cache *ec);

/* [off, off+len) is about to be written, trimmed or zeroed: forget what
 * the cache knows (all of it; see extents.c). */
void extents_invalidate(struct nbd_pool *p, uint64_t off, uint64_t len);

/* SEEK_DATA (data=true) or SEEK_HOLE from off.  cb gets 0 and the offset,
 * or ENXIO (no data at or after off, or off at or past the end). */
typedef void (*extents_seek_fn)(void *arg, int err, uint64_t result);
void extents_seek(struct nbd_pool *p, uint64_t off, bool data, extents_seek_fn cb, void *arg);

/* Bytes the server reports as allocated (for st_blocks). */
typedef void (*extents_alloc_fn)(void *arg, uint64_t bytes);
void extents_allocated(struct nbd_pool *p, extents_alloc_fn cb, void *arg);
/* The last known allocated size, if still fresh. */
bool extents_allocated_cached(struct nbd_pool *p, uint64_t *bytes);

/* Does [off, off+len) read as zeros according to the server? */
typedef void (*extents_zero_fn)(void *arg, bool zero);
void extents_check_zero(struct nbd_pool *p, uint64_t off, uint64_t len, extents_zero_fn cb,
                        void *arg);

/* A hole is what the server reports as unallocated and reading as zeros. */
static inline bool extent_is_hole(uint32_t flags) { return (flags & 3) == 3; }

#endif
