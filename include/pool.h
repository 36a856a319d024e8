/* pool.h: the connections of one export, and operations that may span
 * several NBD commands (split by the server's maximum block size).
 *
 * The pool keeps the export usable across lost connections: it reconnects
 * in the background, sends requests that were in flight on a lost
 * connection again, replays acknowledged writes that no FLUSH covered yet,
 * and queues requests (never blocking the caller) while no connection can
 * take them.  Upper layers see it only through these functions.
 */
#ifndef NBDFS_POOL_H
#define NBDFS_POOL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "conn.h"
#include "handshake.h"
#include "rangelock.h"
#include "uri.h"

struct nbd_pool_opts {
  const struct nbd_uri *uri;
  const char *export_name;
  int connections;       /* wanted; used only when the server allows multi-conn */
  int timeout_s;         /* a connection silent this long with requests outstanding is replaced (0: never) */
  int connect_timeout_s; /* connect + handshake bound */
  int reconnect_delay_s; /* how long a request may wait for a usable connection */
  bool no_reconnect;     /* a lost connection stays lost (requests on it fail) */
  int retry_s;           /* keep trying the first connection this long */
  uint64_t replay_limit; /* flush early once this many acknowledged bytes are unflushed */
  enum tls_mode tls_mode;
  struct tls_creds *tls;
  /* Told when a connection is lost (why: the reason) or comes back
   * ("reconnected"), with the connections ready now; any thread, no locks
   * held.  NULL: nobody asks. */
  void (*state_fn)(void *arg, const char *desc, int ready, int total, const char *why);
  void *state_arg;
};

struct nbd_pool;

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

/* Connect and negotiate the first connection (retrying for retry_s).  The
 * others are opened in the background once attached.  Returns 0 or a
 * negative errno with a one-line reason in err. */
int nbd_pool_open(struct nbd_pool **out, const struct nbd_pool_opts *o, char *err, size_t errlen);
struct nbd_loop;
/* Spread the connections over the worker loops and start the pool's
 * connection manager (extra connections, reconnects, request deadlines). */
int nbd_pool_attach(struct nbd_pool *p, struct nbd_loop **loops, int nloops);
/* Orderly end while the loops still run: refuse new requests, wait (within
 * a bound) for those under way, flush what is unflushed, send NBD_CMD_DISC
 * on every connection and wait for them to close.  Returns 0, or an errno
 * when acknowledged writes could not be made durable. */
int nbd_pool_close(struct nbd_pool *p);
/* The server is gone for good (a server process nbdfs started has exited):
 * stop connecting, and fail requests with EIO as soon as no connection is
 * left, instead of waiting --reconnect-delay for one. */
void nbd_pool_server_gone(struct nbd_pool *p);
/* Free (after nbd_pool_close, or when never attached). */
void nbd_pool_free(struct nbd_pool *p);

/* Add READ/WRITE/TRIM/WRITE_ZEROES commands for [offset, offset+len) to op,
 * split as the server requires.  WRITE payloads are copied before this
 * returns, so buf need only live for the call (READ buffers until
 * completion). */
void nbd_pool_io(struct nbd_pool *p, struct nbd_op *op, uint16_t type, uint16_t flags,
                 uint64_t offset, uint64_t len, const void *buf);
/* The same for a WRITE whose payload lies in owner, a reference-counted
 * buffer (struct wbuf) the caller holds: the pool takes references to it
 * instead of copying.  owner NULL: nbd_pool_io. */
struct wbuf;
void nbd_pool_write_owned(struct nbd_pool *p, struct nbd_op *op, uint16_t flags, uint64_t offset,
                          uint64_t len, const void *buf, struct wbuf *owner);

/* Read [offset, offset+len) and wait for it: widened to the server's
 * minimum block size, for start-up and housekeeping threads (never a worker
 * loop, which the read needs).  Returns 0 or -errno. */
int nbd_pool_read_sync(struct nbd_pool *p, void *buf, uint64_t offset, uint32_t len);

/* Add one BLOCK_STATUS command (base:allocation) for [offset, offset+len)
 * (len above 32 bits only with extended headers: nbd_pool_session says);
 * fn receives the extents with op as its argument. */
void nbd_pool_block_status(struct nbd_pool *p, struct nbd_op *op, uint64_t offset, uint64_t len,
                           nbd_extents_fn fn);

/* Add a FLUSH covering every write completed so far (nothing to send when
 * the server has no FLUSH or nothing was written since the last one). */
void nbd_pool_flush(struct nbd_pool *p, struct nbd_op *op);
bool nbd_pool_needs_flush(const struct nbd_pool *p);

/* What the export is (fixed for the life of the pool: a reconnection that
 * finds anything else is refused). */
const struct nbd_session *nbd_pool_session(const struct nbd_pool *p);
static inline const struct nbd_export_info *nbd_pool_info(const struct nbd_pool *p)
{
  return &nbd_pool_session(p)->info;
}
static inline uint64_t nbd_pool_size(const struct nbd_pool *p) { return nbd_pool_info(p)->size; }
static inline uint16_t nbd_pool_flags(const struct nbd_pool *p) { return nbd_pool_info(p)->tflags; }
static inline uint32_t nbd_pool_min_block(const struct nbd_pool *p) { return nbd_pool_info(p)->min_block; }
static inline bool nbd_pool_has_block_status(const struct nbd_pool *p)
{
  return nbd_pool_session(p)->have_base_alloc;
}
/* "nbd://host:port export 'name'", for log lines. */
const char *nbd_pool_desc(const struct nbd_pool *p);
/* Connections configured, and those ready now. */
int nbd_pool_connections(const struct nbd_pool *p, int *ready);
/* A moment's view for user.nbd.stats: connections configured and ready,
 * NBD commands in flight on them and waiting in the pool's queue, and
 * connections re-established after a loss since the pool was opened. */
struct nbd_pool_counters {
  int configured, ready;
  unsigned inflight, queued;
  uint64_t reconnects;
};
void nbd_pool_counters(const struct nbd_pool *p, struct nbd_pool_counters *out);
/* The range lock that partial-block writes take (blockio). */
struct rangelock *nbd_pool_rangelock(struct nbd_pool *p);

/* Data of [off, off+len) is about to change (len 0: anything may have):
 * called before every data-changing command is sent and again when it
 * finishes, on the thread that sends or completes it.  Observers are the
 * caches kept of an export's data: its extents and its read-ahead. */
typedef void (*nbd_pool_change_fn)(void *arg, uint64_t off, uint64_t len);
#define NBD_POOL_OBSERVERS 2
/* Add fn(arg), also while I/O runs.  free_fn(arg), if not NULL, runs when
 * the pool is freed with fn still added.  0, or -ENOSPC when full. */
int nbd_pool_add_observer(struct nbd_pool *p, nbd_pool_change_fn fn, void *arg,
                          void (*free_fn)(void *arg));
/* Remove fn (no I/O may run: nothing waits for a call in progress). */
void nbd_pool_remove_observer(struct nbd_pool *p, nbd_pool_change_fn fn);
/* The arg fn was added with, or NULL. */
void *nbd_pool_observer(const struct nbd_pool *p, nbd_pool_change_fn fn);

#endif
