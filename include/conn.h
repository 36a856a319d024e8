/* conn.h: one NBD connection in transmission phase.
 *
 * Many requests are in flight at once.  Submitting takes a slot in the
 * request table and writes header and payload without blocking (a backlog
 * is queued and sent when the socket drains).  The connection's worker loop
 * assembles replies as bytes arrive and calls each command's completion.
 *
 * Life of a connection (the state changes only on its owner thread once
 * attached to a loop; other threads ask, the owner acts):
 *
 *   READY ──DISC sent──> CLOSING ──server hangs up──> DEAD
 *     │                                  ^
 *     └──lost: EOF, error, stall,        │
 *        violation, ESHUTDOWN──> ABANDONED ──server hangs up, or the
 *                                            settle time passes──┘
 *
 * When a connection is lost, the commands in flight on it are handed back
 * to the owner (events->lost) instead of failing, so that they can be sent
 * again elsewhere.  An abandoned connection is half-closed and drained
 * until the server hangs up: only then is the fate of the writes it carried
 * settled (events->settled).  Without an owner, lost commands fail with EIO.
 */
#ifndef NBDFS_CONN_H
#define NBDFS_CONN_H

#include <stdbool.h>
#include <stdint.h>

#include "handshake.h"
#include "nbd-proto.h"
#include "transport.h"

/* Completion: err is 0 or a positive errno.  Called exactly once per
 * accepted command, from the receive thread, with no lock held. */
typedef void (*nbd_done_fn)(void *arg, int err);
/* Block status answer: extents starting at off (the request's offset). */
typedef void (*nbd_extents_fn)(void *arg, uint64_t off, const struct nbd_extent *e, uint32_t n);

struct wbuf;

struct nbd_cmd {
  uint16_t type;
  uint16_t flags;
  uint64_t offset;
  uint64_t count;         /* above 32 bits only with extended headers (no payload) */
  void *buf;              /* READ: where the data goes; WRITE: the payload */
  struct wbuf *wb;        /* WRITE through a pool: the buffer holding the payload */
  uint64_t first_ms;      /* when first sent (monotonic ms; the pool's deadlines) */
  nbd_done_fn done;
  nbd_extents_fn extents; /* BLOCK_STATUS only */
  void *arg;
};

enum nbd_conn_state {
  NBD_CONN_READY,      /* takes requests */
  NBD_CONN_CLOSING,    /* orderly end: DISC sent, waiting for the server to hang up */
  NBD_CONN_ABANDONED,  /* lost: no requests; half-closed, waiting for the server to settle */
  NBD_CONN_DEAD,       /* over: detached from its loop, may be freed */
};

struct nbd_conn;

/* What a connection tells its owner (the pool), on the owner loop thread. */
struct nbd_conn_events {
  /* The connection was lost (why says how).  cmds[0..n) were in flight and
   * are handed back: the owner must send or complete each of them.  The
   * array is only valid during the call.  settled: the server has hung up
   * already, so nothing sent on this connection can still take effect. */
  void (*lost)(void *owner, struct nbd_conn *c, struct nbd_cmd *cmds, unsigned n, bool settled,
               const char *why);
  /* A command finished (err 0 or an errno) and its slot is free: the owner
   * calls cmd->done itself, after its own bookkeeping. */
  void (*completed)(void *owner, struct nbd_conn *c, struct nbd_cmd *cmd, int err);
  /* The connection reached DEAD: detached from its loop; the owner may free it. */
  void (*dead)(void *owner, struct nbd_conn *c);
};

/* Wrap a negotiated transport.  desc names the server and export in logs.
 * timeout_s: a connection silent this long while requests are outstanding
 * is lost (0: never; only FLUSHes outstanding: five times as long). */
struct nbd_conn *nbd_conn_new(struct transport *t, const struct nbd_session *s,
                              const char *desc, int index, int timeout_s);

/* Report losses to ev (see above) instead of failing what was in flight.
 * settle_s bounds how long an abandoned connection waits for the server. */
void nbd_conn_set_owner(struct nbd_conn *c, const struct nbd_conn_events *ev, void *owner,
                        int settle_s);

struct nbd_loop;

/* Hand the connection to a worker loop: from now on it is non-blocking and
 * its replies are processed on that loop's thread. */
int nbd_conn_attach(struct nbd_conn *c, struct nbd_loop *loop);

/* Send a command.  Returns 0 (done will be called, or the command handed
 * back through events->lost), -EAGAIN when the request table is full, or
 * -EIO when the connection takes no requests (nothing will be called). */
int nbd_conn_submit(struct nbd_conn *c, const struct nbd_cmd *cmd);

/* Around a burst of submissions on one thread: small requests are gathered
 * per connection and sent together at uncork. */
void nbd_conn_cork(void);
void nbd_conn_uncork(void);

enum nbd_conn_state nbd_conn_state(const struct nbd_conn *c);
unsigned nbd_conn_inflight(const struct nbd_conn *c);
int nbd_conn_index(const struct nbd_conn *c);
/* The worker loop serving the connection (NULL before attach or once dead). */
struct nbd_loop *nbd_conn_loop(const struct nbd_conn *c);
/* Takes no new requests (any state but READY). */
bool nbd_conn_dead(const struct nbd_conn *c);

/* Drop the connection (protocol violation, timeout, shutdown): from any
 * thread; the owner loop hands back what is in flight. */
void nbd_conn_kill(struct nbd_conn *c, const char *why);

/* The same, without waiting for the server to settle (closing down). */
void nbd_conn_abort(struct nbd_conn *c, const char *why);

/* Orderly end, from any thread: send NBD_CMD_DISC after what is queued and
 * half-close.  The connection becomes DEAD when the server hangs up (or,
 * after a bound, is cut off). */
void nbd_conn_disconnect(struct nbd_conn *c);

/* Wait up to secs for DEAD (for owners without events). */
bool nbd_conn_wait_dead(struct nbd_conn *c, int secs);

/* Take another reference (a caller about to use the connection). */
void nbd_conn_ref(struct nbd_conn *c);
/* Drop a reference: the creator's, or one from nbd_conn_ref.  The memory
 * goes with the last one (the owner loop holds one until the round after
 * the connection died). */
void nbd_conn_free(struct nbd_conn *c);

/* Disconnect (orderly), wait briefly for the end and drop the creator's
 * reference: for probes and tests. */
void nbd_conn_close(struct nbd_conn *c);

/* Process replies in the calling thread until the connection ends (for
 * tests and fuzzers over blocking or in-memory transports). */
void nbd_conn_receive_loop(struct nbd_conn *c);

#endif
