/* conn.h: one NBD connection in transmission phase.
 *
 * Many requests are in flight at once.  Submitting takes a slot in the
 * request table and writes header and payload without blocking (a backlog
 * is queued and sent when the socket drains).  The connection's worker loop
 * assembles replies as bytes arrive and calls each command's completion.  A
 * protocol violation, a timeout or a lost server kills the connection: every
 * request on it completes with EIO and later submissions fail at once.
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

struct nbd_cmd {
  uint16_t type;
  uint16_t flags;
  uint64_t offset;
  uint32_t count;
  void *buf;              /* READ: where the data goes; WRITE: the payload */
  nbd_done_fn done;
  nbd_extents_fn extents; /* BLOCK_STATUS only */
  void *arg;
};

struct nbd_conn;

/* Wrap a negotiated transport.  desc names the server and export in logs.
 * timeout_s: a request unanswered for this long kills the connection (0: never). */
struct nbd_conn *nbd_conn_new(struct transport *t, const struct nbd_session *s,
                              const char *desc, int index, int timeout_s);

struct nbd_loop;

/* Hand the connection to a worker loop: from now on it is non-blocking and
 * its replies are processed on that loop's thread. */
int nbd_conn_attach(struct nbd_conn *c, struct nbd_loop *loop);

/* Send a command.  Returns 0 (done will be called) or -EIO when the
 * connection is dead (done will not be called). */
int nbd_conn_submit(struct nbd_conn *c, const struct nbd_cmd *cmd);

/* Around a burst of submissions on one thread: small requests are gathered
 * per connection and sent together at uncork. */
void nbd_conn_cork(void);
void nbd_conn_uncork(void);

unsigned nbd_conn_inflight(const struct nbd_conn *c);
/* The worker loop serving the connection (NULL before attach or once dead). */
struct nbd_loop *nbd_conn_loop(const struct nbd_conn *c);
bool nbd_conn_dead(const struct nbd_conn *c);

/* Drop the connection now (protocol violation, timeout, shutdown). */
void nbd_conn_kill(struct nbd_conn *c, const char *why);

/* Wait up to drain_s seconds until nothing is in flight. */
void nbd_conn_drain(struct nbd_conn *c, int drain_s);

/* Orderly end: send NBD_CMD_DISC and wait briefly for the server to close. */
void nbd_conn_disconnect(struct nbd_conn *c);

/* Free the connection.  Its loop must be stopped, or the connection dead. */
void nbd_conn_free(struct nbd_conn *c);

/* drain, disconnect and free in one call. */
void nbd_conn_close(struct nbd_conn *c, int drain_s);

/* Process replies in the calling thread until the connection ends (for
 * tests and fuzzers over blocking or in-memory transports). */
void nbd_conn_receive_loop(struct nbd_conn *c);

#endif
