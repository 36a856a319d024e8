/* transport.h: a byte stream to the server (TCP, Unix, vsock; TLS later),
 * behind one small interface so the NBD layers never see a socket. */
#ifndef NBDFS_TRANSPORT_H
#define NBDFS_TRANSPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "uri.h"

struct transport;

struct transport_ops {
  /* Read up to len bytes: >0 bytes read, 0 at EOF, -errno on error
   * (-EAGAIN when the receive timeout expired with nothing read). */
  ssize_t (*recv)(struct transport *t, void *buf, size_t len);
  /* Write some of iov: bytes written or -errno. */
  ssize_t (*sendv)(struct transport *t, const struct iovec *iov, int iovcnt);
  /* Wake any thread blocked in recv/sendv; later calls fail. */
  void (*shutdown)(struct transport *t, bool write_only);
  void (*destroy)(struct transport *t);
};

struct transport {
  const struct transport_ops *ops;
  int fd;               /* the socket, or -1 */
  void *priv;
  char last_error[160]; /* what a failed recv/send could say more (TLS alerts) */
  bool short_recv_drains; /* a recv that got less than asked emptied it (a plain
                           * socket; not TLS, which may hold decrypted bytes) */
};

/* Connect to the server the URI names.  timeout_s bounds the connect (0: the
 * system's).  On failure returns NULL with a one-line reason in err. */
struct transport *transport_connect(const struct nbd_uri *u, int timeout_s,
                                    char *err, size_t errlen);

/* Wrap an already-connected socket (used for socketpairs in tests). */
struct transport *transport_from_fd(int fd);

/* A transport that reads from a fixed buffer and discards what is sent:
 * for fuzzing and unit tests of the protocol layers without sockets. */
struct transport *transport_from_memory(const void *data, size_t len);

/* Bound how long recv/sendv may block (0: forever). */
int transport_set_timeouts(struct transport *t, int recv_ms, int send_ms);

/* Read exactly len bytes (-EPIPE on EOF), or write all of iov. */
int transport_recv_all(struct transport *t, void *buf, size_t len);
int transport_send_all(struct transport *t, struct iovec *iov, int iovcnt);

static inline void transport_shutdown(struct transport *t, bool write_only)
{
  t->ops->shutdown(t, write_only);
}
static inline void transport_destroy(struct transport *t)
{
  if (t)
    t->ops->destroy(t);
}

#endif
