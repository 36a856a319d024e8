/* fuse-rx.h: the buffers FUSE requests are read into, one set per worker.
 *
 * A WRITE's payload arrives in the receive buffer, and the pool must keep
 * it until the write is answered (to send it again on another connection)
 * and until a FLUSH covers it (replay).  For large writes, copying it out
 * was one of four copies of every byte on the way to the server.  So
 * receive buffers are reference-counted (struct wbuf): a WRITE handler may
 * keep the whole buffer instead, and the worker reads the next request into
 * a spare one.  Small writes are still copied: keeping a 1 MiB buffer for a
 * 4 KiB write would cost far more memory than the copy costs time.
 */
#ifndef NBDFS_FUSE_RX_H
#define NBDFS_FUSE_RX_H

#include <stddef.h>

struct fuse_session;
struct fuse_rx;
struct wbuf;

/* A worker's receive buffers, or NULL (ENOMEM). */
struct fuse_rx *fuse_rx_new(void);
void fuse_rx_free(struct fuse_rx *rx);

/* Read one request, as fuse_session_receive_buf does: the size read, 0 at
 * the end of the session, or a negative errno (-EAGAIN: none waiting). */
int fuse_rx_receive(struct fuse_rx *rx, struct fuse_session *se);

/* Handle the request just read, as fuse_session_process_buf does.  If a
 * handler kept the buffer, the next request is read into another. */
void fuse_rx_process(struct fuse_rx *rx, struct fuse_session *se);

/* From a WRITE handler running under fuse_rx_process: the receive buffer
 * that holds the payload [p, p + len), when keeping it is worth it (the
 * payload fills at least half of it), or NULL.  The caller takes its own
 * reference (wbuf_get) to keep it past the handler. */
struct wbuf *fuse_rx_owner(const void *p, size_t len);

#endif
