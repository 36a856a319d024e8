/* blockio.h: writes and zeroing at any offset and length, made legal for
 * the server.
 *
 * The server may demand that offsets and lengths be multiples of its
 * minimum block size.  Partial blocks are written by read-modify-write
 * under a range lock shared by all connections; when the minimum is larger
 * than one byte every write takes the lock, so that a read-modify-write
 * cannot undo a concurrent write to the same block.  (The pool tells its
 * observer, the extent cache, about every command that changes data.)
 */
#ifndef NBDFS_BLOCKIO_H
#define NBDFS_BLOCKIO_H

#include <stdbool.h>
#include <stdint.h>

#include "pool.h"

/* Add a write of buf to op.  buf need only live for this call; owner, if
 * not NULL, is a reference-counted buffer (struct wbuf) holding buf, which
 * is then kept by reference rather than copied. */
void blockio_write(struct nbd_pool *p, struct nbd_op *op, uint16_t flags, uint64_t off,
                   uint64_t len, const void *buf, struct wbuf *owner);

/* Make [off, off+len) read back as zeros.  punch: deallocate where the
 * server can (WRITE_ZEROES without NO_HOLE, or TRIM when block status then
 * confirms zeros); otherwise keep it allocated (NO_HOLE).  Falls back to
 * writing zeros when the server has neither. */
void blockio_zero(struct nbd_pool *p, struct nbd_op *op, uint64_t off, uint64_t len, bool punch);

#endif
