/* conn-send.c: the send path of a connection.
 *
 * Sends never block a worker: what the socket does not take is queued
 * (copying a WRITE payload only then) and sent when the socket drains, so
 * a server that stops reading cannot deadlock us.  While a worker drains a
 * burst of FUSE requests, small requests are corked per connection and
 * leave in one write when the burst ends.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>

#include "conn-impl.h"
#include "transport.h"

/* Append bytes to the output queue (send_lock held). */
static int outq_append(struct nbd_conn *c, const void *p, size_t n)
{
  if (c->out_head && c->out_head == c->out_len)
    c->out_head = c->out_len = 0;
  if (c->out_len + n > c->out_cap) {
    if (c->out_head) { /* compact first */
      memmove(c->outq, c->outq + c->out_head, c->out_len - c->out_head);
      c->out_len -= c->out_head;
      c->out_head = 0;
    }
    if (c->out_len + n > c->out_cap) {
      size_t cap = c->out_cap ? c->out_cap : 65536;
      while (cap < c->out_len + n)
        cap *= 2;
      uint8_t *q = realloc(c->outq, cap);
      if (!q)
        return -ENOMEM;
      c->outq = q;
      c->out_cap = cap;
    }
  }
  memcpy(c->outq + c->out_len, p, n);
  c->out_len += n;
  return 0;
}

static void set_events(struct nbd_conn *c, uint32_t events)
{
  if (c->attached && c->src.loop && c->src.events != events)
    loop_modify(&c->src, events);
}

/* Send as much of the queue as the socket takes (send_lock held). */
static int outq_flush(struct nbd_conn *c)
{
  if (!c->t)
    return -EPIPE;
  while (c->out_head < c->out_len) {
    struct iovec iov = { c->outq + c->out_head, c->out_len - c->out_head };
    ssize_t r = c->t->ops->sendv(c->t, &iov, 1);
    if (r == -EAGAIN)
      break;
    if (r < 0)
      return (int)r;
    c->out_head += (size_t)r;
  }
  if (c->out_head == c->out_len) {
    c->out_head = c->out_len = 0;
    set_events(c, EPOLLIN);
  } else {
    set_events(c, EPOLLIN | EPOLLOUT);
  }
  return 0;
}

#define CORK_MAX (64 * 1024)
#define CORK_CONNS 64
static __thread bool corked;
static __thread struct nbd_conn *corked_conns[CORK_CONNS];
static __thread int ncorked;

void nbd_conn_cork(void)
{
  corked = true;
}

static void send_error(struct nbd_conn *c, const char *what, int err)
{
  char why[200];
  snprintf(why, sizeof why, "%s failed: %s", what,
           c->t && c->t->last_error[0] ? c->t->last_error : strerror(err));
  conn_lose(c, false, why);
}

void nbd_conn_uncork(void)
{
  corked = false;
  for (int i = 0; i < ncorked; i++) {
    struct nbd_conn *c = corked_conns[i];
    pthread_mutex_lock(&c->send_lock);
    c->cork_pending = false;
    int r = outq_flush(c);
    pthread_mutex_unlock(&c->send_lock);
    if (r < 0)
      send_error(c, "sending", -r);
    /* The reference taken when corking. */
    if (atomic_fetch_sub(&c->refs, 1) == 1)
      nbd_conn_free(c);
  }
  ncorked = 0;
}

/* Send iov now if nothing is queued, and queue whatever the socket does not
 * take (send_lock held).  Returns 0 or -errno. */
static int send_or_queue(struct nbd_conn *c, struct iovec *iov, int iovcnt)
{
  if (!c->t)
    return -EPIPE;
  if (!c->attached)
    return transport_send_all(c->t, iov, iovcnt);
  size_t total = 0;
  for (int i = 0; i < iovcnt; i++)
    total += iov[i].iov_len;
  if (corked && total <= CORK_MAX && (c->cork_pending || ncorked < CORK_CONNS)) {
    for (int i = 0; i < iovcnt; i++)
      if (outq_append(c, iov[i].iov_base, iov[i].iov_len) < 0)
        return -ENOMEM;
    if (!c->cork_pending) {
      c->cork_pending = true;
      atomic_fetch_add(&c->refs, 1); /* held until uncork */
      corked_conns[ncorked++] = c;
    }
    return 0;
  }
  if (c->out_len > 0) { /* keep order: what is queued goes first */
    int r = outq_flush(c);
    if (r < 0)
      return r;
  }
  if (c->out_len == 0) {
    ssize_t r = c->t->ops->sendv(c->t, iov, iovcnt);
    if (r < 0 && r != -EAGAIN)
      return (int)r;
    if (r == (ssize_t)total)
      return 0;
    size_t skip = r > 0 ? (size_t)r : 0;
    for (int i = 0; i < iovcnt; i++) {
      if (skip >= iov[i].iov_len) {
        skip -= iov[i].iov_len;
        continue;
      }
      if (outq_append(c, (uint8_t *)iov[i].iov_base + skip, iov[i].iov_len - skip) < 0)
        return -ENOMEM;
      skip = 0;
    }
    set_events(c, EPOLLIN | EPOLLOUT);
    return 0;
  }
  for (int i = 0; i < iovcnt; i++)
    if (outq_append(c, iov[i].iov_base, iov[i].iov_len) < 0)
      return -ENOMEM;
  return 0;
}

/* The request header in the form negotiated; returns its length. */
static size_t encode_header(const struct nbd_conn *c, uint8_t hdr[NBD_EXT_REQUEST_LEN],
                            const struct nbd_request *rq)
{
  if (c->extended) {
    nbd_encode_ext_request(hdr, rq);
    return NBD_EXT_REQUEST_LEN;
  }
  nbd_encode_request(hdr, rq);
  return NBD_REQUEST_LEN;
}

int send_request(struct nbd_conn *c, const struct nbd_request *rq, const void *payload)
{
  uint8_t hdr[NBD_EXT_REQUEST_LEN];
  size_t hlen = encode_header(c, hdr, rq);
  struct iovec iov[2] = { { hdr, hlen }, { (void *)payload, rq->type == NBD_CMD_WRITE ? rq->count : 0 } };
  pthread_mutex_lock(&c->send_lock);
  int r = send_or_queue(c, iov, rq->type == NBD_CMD_WRITE ? 2 : 1);
  pthread_mutex_unlock(&c->send_lock);
  if (r < 0) {
    char what[64];
    snprintf(what, sizeof what, "sending %s", nbd_cmd_name(rq->type));
    send_error(c, what, -r);
  }
  return r;
}

int send_backlog(struct nbd_conn *c)
{
  pthread_mutex_lock(&c->send_lock);
  int r = outq_flush(c);
  pthread_mutex_unlock(&c->send_lock);
  if (r < 0)
    send_error(c, "sending", -r);
  return r;
}

void send_disc_and_half_close(struct nbd_conn *c)
{
  struct nbd_request rq = { .type = NBD_CMD_DISC };
  uint8_t hdr[NBD_EXT_REQUEST_LEN];
  struct iovec iov = { hdr, encode_header(c, hdr, &rq) };
  /* DISC, whatever is queued before it, and the TLS close_notify go out in
   * one critical section: the server hangs up as soon as it reads DISC,
   * and our half-close must already be on its way by then. */
  pthread_mutex_lock(&c->send_lock);
  if (c->t) {
    int r = send_or_queue(c, &iov, 1);
    for (int i = 0; r == 0 && c->attached && c->out_len > 0 && i < 200; i++) {
      struct pollfd pf = { .fd = c->t->fd, .events = POLLOUT };
      poll(&pf, 1, 10);
      r = outq_flush(c);
    }
    transport_shutdown(c->t, true);
  }
  pthread_mutex_unlock(&c->send_lock);
}
