/* pool.h: the connections of one export, and operations that may span
 * several NBD commands (split by the server's maximum block size). */
#ifndef NBDFS_POOL_H
#define NBDFS_POOL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "conn.h"
#include "handshake.h"
#include "rangelock.h"
#include "uri.h"

struct extent_cache;

struct nbd_pool_opts {
  const struct nbd_uri *uri;
  const char *export_name;
  int connections;       /* wanted; used only when the server allows multi-conn */
  int timeout_s;         /* per-request timeout, 0: none */
  int connect_timeout_s; /* connect + handshake bound */
  enum tls_mode tls_mode;
  struct tls_creds *tls;
};

struct nbd_pool {
  struct nbd_conn **conns;
  int n;
  struct nbd_session s;       /* what the first connection negotiated */
  char desc[320];             /* "nbd://host:port export 'name'" for logs */
  atomic_uint rr;
  atomic_uint_fast64_t writes_done;  /* completed writes (for flush accounting) */
  atomic_uint_fast64_t flushed_upto; /* writes_done covered by a finished FLUSH */
  struct rangelock lock;             /* serialises partial-block writes (min block > 1) */
  struct extent_cache *extents;      /* block status cache */
};

/* An operation: one or more NBD commands that finish together.  pending
 * starts at 1 (the submitter's reference); complete runs once, when the last
 * reference is dropped, with the first error of any piece. */
struct nbd_op {
  atomic_int pending;
  atomic_int err;
  struct nbd_pool *pool;
  uint64_t flush_snapshot;
  void (*complete)(struct nbd_op *op, int err);
};

static inline void nbd_op_init(struct nbd_op *op, void (*complete)(struct nbd_op *, int))
{
  atomic_init(&op->pending, 1);
  atomic_init(&op->err, 0);
  op->pool = NULL;
  op->complete = complete;
}

/* Take another reference (one more piece under way). */
static inline void nbd_op_get(struct nbd_op *op)
{
  atomic_fetch_add_explicit(&op->pending, 1, memory_order_relaxed);
}

/* Record an error (the first one wins) without finishing the op. */
void nbd_op_fail(struct nbd_op *op, int err);
/* Drop one reference; the last one runs op->complete. */
void nbd_op_put(struct nbd_op *op);

/* Connect and negotiate every connection (no threads yet).  Returns 0 or a
 * negative errno with a one-line reason in err. */
int nbd_pool_open(struct nbd_pool **out, const struct nbd_pool_opts *o, char *err, size_t errlen);
struct nbd_loop;
/* Spread the connections over the worker loops. */
int nbd_pool_attach(struct nbd_pool *p, struct nbd_loop **loops, int nloops);
/* Orderly end while the loops still run: answer what is in flight, flush
 * if anything is unflushed, send NBD_CMD_DISC on every connection. */
void nbd_pool_shutdown(struct nbd_pool *p);
/* Free (the loops must be stopped, or the pool never attached). */
void nbd_pool_free(struct nbd_pool *p);

/* Add READ/WRITE/TRIM/WRITE_ZEROES commands for [offset, offset+len) to op,
 * split as the server requires.  WRITE payloads are sent before this returns,
 * so buf need only live for the call (READ buffers until completion). */
void nbd_pool_io(struct nbd_pool *p, struct nbd_op *op, uint16_t type, uint16_t flags,
                 uint64_t offset, uint64_t len, void *buf);

/* Add one BLOCK_STATUS command (base:allocation) for [offset, offset+len);
 * fn receives the extents with op as its argument. */
void nbd_pool_block_status(struct nbd_pool *p, struct nbd_op *op, uint64_t offset, uint32_t len,
                           nbd_extents_fn fn);

/* Add a FLUSH covering every write completed so far (nothing to send when
 * the server has no FLUSH or nothing was written since the last one). */
void nbd_pool_flush(struct nbd_pool *p, struct nbd_op *op);
bool nbd_pool_needs_flush(const struct nbd_pool *p);

/* Flush and wait: used at unmount.  Returns 0 or an errno. */
int nbd_pool_flush_sync(struct nbd_pool *p);

static inline uint16_t nbd_pool_flags(const struct nbd_pool *p) { return p->s.info.tflags; }
static inline uint64_t nbd_pool_size(const struct nbd_pool *p) { return p->s.info.size; }

#endif
