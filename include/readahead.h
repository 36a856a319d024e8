/* readahead.h: prefetch for sequential reads through the page cache.
 *
 * The kernel reads ahead through FUSE in requests of read_ahead_kb (128 KiB
 * unless root raises it), one or two at a time, so a cold sequential read
 * waits for a server round trip every 128 KiB.  Once an export's reads run
 * sequentially, the next RA_CHUNK bytes are fetched ahead of them (two
 * chunks, double-buffered), and the kernel's requests that fall inside are
 * answered from memory.
 *
 * What was prefetched is dropped whenever the export's data change through
 * this mount (as a pool observer, before the change is sent) and at every
 * open: the points at which the kernel drops its own cache, so the page
 * cache's semantics stay what they were.
 */
#ifndef NBDFS_READAHEAD_H
#define NBDFS_READAHEAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct nbd_pool;
struct readahead;

/* ctx: the caller's context (see readahead_read).  data: len bytes, valid
 * during the call only.  err: EAGAIN when the prefetch did not work out;
 * the caller then reads for itself. */
typedef void (*readahead_done_fn)(const void *ctx, const void *data, size_t len, int err);

/* The export's read-ahead, made on first use (freed with the pool); NULL
 * when out of memory. */
struct readahead *readahead_of(struct nbd_pool *p);

/* Answer a read of [off, off+len) (export offsets) from prefetched data:
 * true when it will be, through done (maybe before this returns); false
 * when the caller must read for itself.  Either way the read is noted, and
 * a run of sequential reads starts fetching ahead.  done gets ctx, or,
 * when the read waits for data still on its way, a copy of its ctx_size
 * bytes: the caller allocates nothing. */
bool readahead_read(struct readahead *ra, uint64_t off, size_t len, readahead_done_fn done,
                    const void *ctx, size_t ctx_size);

/* Drop what p's read-ahead holds, if it has one (an open). */
void readahead_drop(struct nbd_pool *p);

#endif
