/* transport.c: plain socket transports and the in-memory test transport. */
#include "transport.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* ---- plain sockets ---- */

static ssize_t sock_recv(struct transport *t, void *buf, size_t len)
{
  for (;;) {
    ssize_t r = recv(t->fd, buf, len, 0);
    if (r >= 0)
      return r;
    if (errno == EINTR)
      continue;
    return (errno == EWOULDBLOCK) ? -EAGAIN : -errno;
  }
}

static ssize_t sock_sendv(struct transport *t, const struct iovec *iov, int iovcnt)
{
  struct msghdr m = { .msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)iovcnt };
  for (;;) {
    ssize_t r = sendmsg(t->fd, &m, MSG_NOSIGNAL);
    if (r >= 0)
      return r;
    if (errno == EINTR)
      continue;
    return (errno == EWOULDBLOCK) ? -EAGAIN : -errno;
  }
}

static void sock_shutdown(struct transport *t, bool write_only)
{
  shutdown(t->fd, write_only ? SHUT_WR : SHUT_RDWR);
}

static void sock_destroy(struct transport *t)
{
  if (t->fd >= 0)
    close(t->fd);
  free(t);
}

static const struct transport_ops sock_ops = {
  .recv = sock_recv, .sendv = sock_sendv, .shutdown = sock_shutdown, .destroy = sock_destroy,
};

struct transport *transport_from_fd(int fd)
{
  struct transport *t = calloc(1, sizeof *t);
  if (!t)
    return NULL;
  t->ops = &sock_ops;
  t->short_recv_drains = true;
  t->fd = fd;
  return t;
}

/* Connect fd to addr, giving up after timeout_s seconds. */
static int connect_timeout(int fd, const struct sockaddr *addr, socklen_t len, int timeout_s)
{
  int fl = fcntl(fd, F_GETFL);
  fcntl(fd, F_SETFL, fl | O_NONBLOCK);
  int r = connect(fd, addr, len);
  if (r < 0 && errno == EINPROGRESS) {
    struct pollfd p = { .fd = fd, .events = POLLOUT };
    do
      r = poll(&p, 1, timeout_s > 0 ? timeout_s * 1000 : -1);
    while (r < 0 && errno == EINTR);
    if (r == 0) {
      errno = ETIMEDOUT;
      return -1;
    }
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
    if (soerr) {
      errno = soerr;
      return -1;
    }
    r = 0;
  }
  if (r < 0)
    return -1;
  fcntl(fd, F_SETFL, fl);
  return 0;
}

static int connect_tcp(const struct nbd_uri *u, int timeout_s, char *err, size_t errlen)
{
  struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                            .ai_flags = AI_ADDRCONFIG };
  struct addrinfo *res;
  int gr = getaddrinfo(u->host, u->port, &hints, &res);
  if (gr) {
    snprintf(err, errlen, "cannot resolve host '%s': %s", u->host, gai_strerror(gr));
    return -1;
  }
  int fd = -1, last = 0;
  for (struct addrinfo *a = res; a; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      last = errno;
      continue;
    }
    if (connect_timeout(fd, a->ai_addr, a->ai_addrlen, timeout_s) == 0)
      break;
    last = errno;
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  if (fd < 0) {
    snprintf(err, errlen, "cannot connect to %s port %s: %s", u->host, u->port, strerror(last));
    return -1;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

static int connect_unix(const struct nbd_uri *u, int timeout_s, char *err, size_t errlen)
{
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  const char *shown = u->socket[0] ? u->socket : u->socket + 1;
  if (u->socket_len >= sizeof sa.sun_path) {
    snprintf(err, errlen, "Unix socket path '%s' is too long", shown);
    return -1;
  }
  memcpy(sa.sun_path, u->socket, u->socket_len);
  socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + u->socket_len +
                              (u->socket[0] ? 1 : 0));
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || connect_timeout(fd, (struct sockaddr *)&sa, len, timeout_s) < 0) {
    snprintf(err, errlen, "cannot connect to Unix socket %s%s: %s", u->socket[0] ? "" : "@",
             shown, strerror(errno));
    if (fd >= 0)
      close(fd);
    return -1;
  }
  return fd;
}

static int connect_vsock(const struct nbd_uri *u, int timeout_s, char *err, size_t errlen)
{
  struct sockaddr_vm sa = { .svm_family = AF_VSOCK };
  sa.svm_cid = (unsigned)strtoul(u->host, NULL, 10);
  sa.svm_port = (unsigned)strtoul(u->port, NULL, 10);
  int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || connect_timeout(fd, (struct sockaddr *)&sa, sizeof sa, timeout_s) < 0) {
    snprintf(err, errlen, "cannot connect to vsock CID %s port %s: %s", u->host, u->port,
             strerror(errno));
    if (fd >= 0)
      close(fd);
    return -1;
  }
  return fd;
}

struct transport *transport_connect(const struct nbd_uri *u, int timeout_s,
                                    char *err, size_t errlen)
{
  int fd;
  switch (u->transport) {
  case NBD_TRANSPORT_TCP: fd = connect_tcp(u, timeout_s, err, errlen); break;
  case NBD_TRANSPORT_UNIX: fd = connect_unix(u, timeout_s, err, errlen); break;
  case NBD_TRANSPORT_FD:
    /* A copy, so that the URI's socket outlives a failed handshake's. */
    fd = fcntl(u->fd, F_DUPFD_CLOEXEC, 3);
    if (fd < 0)
      snprintf(err, errlen, "%s: %s", u->label ? u->label : "the server's socket", strerror(errno));
    break;
  default: fd = connect_vsock(u, timeout_s, err, errlen); break;
  }
  if (fd < 0)
    return NULL;
  struct transport *t = transport_from_fd(fd);
  if (!t) {
    close(fd);
    snprintf(err, errlen, "out of memory");
  }
  return t;
}

int transport_set_timeouts(struct transport *t, int recv_ms, int send_ms)
{
  if (t->fd < 0)
    return 0;
  struct timeval rt = { .tv_sec = recv_ms / 1000, .tv_usec = (recv_ms % 1000) * 1000 };
  struct timeval st = { .tv_sec = send_ms / 1000, .tv_usec = (send_ms % 1000) * 1000 };
  if (setsockopt(t->fd, SOL_SOCKET, SO_RCVTIMEO, &rt, sizeof rt) < 0 ||
      setsockopt(t->fd, SOL_SOCKET, SO_SNDTIMEO, &st, sizeof st) < 0)
    return -errno;
  return 0;
}

int transport_recv_all(struct transport *t, void *buf, size_t len)
{
  char *p = buf;
  while (len) {
    ssize_t r = t->ops->recv(t, p, len);
    if (r == 0)
      return -EPIPE;
    if (r < 0)
      return (int)r;
    p += r;
    len -= (size_t)r;
  }
  return 0;
}

int transport_send_all(struct transport *t, struct iovec *iov, int iovcnt)
{
  while (iovcnt > 0) {
    ssize_t r = t->ops->sendv(t, iov, iovcnt);
    if (r < 0)
      return (int)r;
    /* Advance past what was written. */
    while (iovcnt > 0 && (size_t)r >= iov->iov_len) {
      r -= (ssize_t)iov->iov_len;
      iov++;
      iovcnt--;
    }
    if (iovcnt > 0) {
      iov->iov_base = (char *)iov->iov_base + r;
      iov->iov_len -= (size_t)r;
    }
  }
  return 0;
}

/* ---- in-memory transport ---- */

struct mem_priv {
  const unsigned char *data;
  size_t len, pos;
  bool shut;
};

static ssize_t mem_recv(struct transport *t, void *buf, size_t len)
{
  struct mem_priv *m = t->priv;
  if (m->shut)
    return -EPIPE;
  size_t n = m->len - m->pos;
  if (n > len)
    n = len;
  memcpy(buf, m->data + m->pos, n);
  m->pos += n;
  return (ssize_t)n;
}

static ssize_t mem_sendv(struct transport *t, const struct iovec *iov, int iovcnt)
{
  struct mem_priv *m = t->priv;
  if (m->shut)
    return -EPIPE;
  ssize_t n = 0;
  for (int i = 0; i < iovcnt; i++)
    n += (ssize_t)iov[i].iov_len;
  return n;
}

static void mem_shutdown(struct transport *t, bool write_only)
{
  struct mem_priv *m = t->priv;
  if (!write_only)
    m->shut = true;
}

static void mem_destroy(struct transport *t)
{
  free(t->priv);
  free(t);
}

static const struct transport_ops mem_ops = {
  .recv = mem_recv, .sendv = mem_sendv, .shutdown = mem_shutdown, .destroy = mem_destroy,
};

struct transport *transport_from_memory(const void *data, size_t len)
{
  struct transport *t = calloc(1, sizeof *t);
  struct mem_priv *m = calloc(1, sizeof *m);
  if (!t || !m) {
    free(t);
    free(m);
    return NULL;
  }
  m->data = data;
  m->len = len;
  t->ops = &mem_ops;
  t->fd = -1;
  t->priv = m;
  return t;
}
