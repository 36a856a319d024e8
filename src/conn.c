/* conn.c: the life of a connection (see the state diagram in conn.h).
 *
 * Once attached, a connection belongs to one worker loop: only that thread
 * receives on it, hands back what was in flight when it is lost, moves it
 * to DEAD and detaches it.  Other threads may submit, ask for an orderly
 * close or cut it off; the owner does the rest on its next round.  Memory
 * is reference-counted (creator, owner loop, short-lived users), and the
 * loop drops its reference only after the round in which the connection
 * died, so no pending event or tick can name freed memory.
 */
#include "conn.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>

#include "conn-impl.h"
#include "log.h"
#include "loop.h"

/* How long an orderly close waits for the server to hang up after DISC. */
#define CLOSING_MS 2000

uint64_t conn_now_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

struct nbd_conn *nbd_conn_new(struct transport *t, const struct nbd_session *s,
                              const char *desc, int index, int timeout_s)
{
  struct nbd_conn *c = calloc(1, sizeof *c);
  if (!c)
    return NULL;
  if (table_init(c) < 0) {
    free(c);
    return NULL;
  }
  c->t = t;
  snprintf(c->desc, sizeof c->desc, "%s", desc);
  c->index = index;
  c->timeout_s = timeout_s;
  c->structured = s->structured;
  c->extended = s->extended;
  c->base_alloc_id = s->base_alloc_id;
  atomic_init(&c->refs, 1);
  atomic_init(&c->state, NBD_CONN_READY);
  c->last_rx_ms = conn_now_ms();
  rx_init(c);
  pthread_mutex_init(&c->send_lock, NULL);
  pthread_mutex_init(&c->tab_lock, NULL);
  pthread_cond_init(&c->tab_cond, NULL);
  return c;
}

void nbd_conn_set_owner(struct nbd_conn *c, const struct nbd_conn_events *ev, void *owner,
                        int settle_s)
{
  c->ev = ev;
  c->owner = owner;
  c->settle_s = settle_s;
}

static void conn_unref(struct nbd_conn *c)
{
  if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) != 1)
    return;
  transport_destroy(c->t);
  table_free(c);
  free(c->rbuf);
  free(c->outq);
  free(c->rx.big);
  pthread_mutex_destroy(&c->send_lock);
  pthread_mutex_destroy(&c->tab_lock);
  pthread_cond_destroy(&c->tab_cond);
  free(c);
}

void nbd_conn_ref(struct nbd_conn *c)
{
  atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
}

void nbd_conn_free(struct nbd_conn *c)
{
  if (c)
    conn_unref(c);
}

enum nbd_conn_state nbd_conn_state(const struct nbd_conn *c)
{
  return atomic_load_explicit(&c->state, memory_order_acquire);
}

bool nbd_conn_dead(const struct nbd_conn *c)
{
  return nbd_conn_state(c) != NBD_CONN_READY;
}

unsigned nbd_conn_inflight(const struct nbd_conn *c)
{
  return atomic_load_explicit(&c->inflight, memory_order_relaxed);
}

int nbd_conn_index(const struct nbd_conn *c) { return c->index; }

struct nbd_loop *nbd_conn_loop(const struct nbd_conn *c)
{
  return c->attached && nbd_conn_state(c) != NBD_CONN_DEAD ? c->loop : NULL;
}

void conn_complete(struct nbd_conn *c, struct nbd_cmd *cmd, int err)
{
  if (c->ev)
    c->ev->completed(c->owner, c, cmd, err);
  else
    cmd->done(cmd->arg, err);
}

int nbd_conn_submit(struct nbd_conn *c, const struct nbd_cmd *cmd)
{
  uint64_t cookie;
  int r = table_take(c, cmd, &cookie);
  if (r < 0)
    return r;
  struct nbd_request rq = { .flags = cmd->flags, .type = cmd->type, .cookie = cookie,
                            .offset = cmd->offset, .count = cmd->count };
  /* A failed send loses the connection; the command is handed back with
   * the others, so the caller still sees success here. */
  send_request(c, &rq, cmd->buf);
  return 0;
}

/* ---- losing a connection ---- */

static void kill_task(void *arg);
static void conn_resume_task(void *arg);

void conn_lose(struct nbd_conn *c, bool we_cut, const char *why)
{
  pthread_mutex_lock(&c->tab_lock);
  enum nbd_conn_state st = atomic_load(&c->state);
  bool first = st == NBD_CONN_READY || st == NBD_CONN_CLOSING;
  if (first) {
    snprintf(c->why, sizeof c->why, "%s", why);
    c->we_closed = we_cut;
    atomic_store(&c->state, NBD_CONN_ABANDONED);
  }
  pthread_mutex_unlock(&c->tab_lock);
  if (!first || !c->attached)
    return;
  /* The owner hands back what is in flight on its next round. */
  atomic_fetch_add(&c->refs, 1);
  if (loop_post(c->loop, kill_task, c) < 0) {
    conn_unref(c);
    /* No memory for a message: wake the owner the hard way. */
    pthread_mutex_lock(&c->send_lock);
    if (c->t)
      transport_shutdown(c->t, false);
    pthread_mutex_unlock(&c->send_lock);
  }
}

void nbd_conn_kill(struct nbd_conn *c, const char *why)
{
  conn_lose(c, true, why);
}

void nbd_conn_abort(struct nbd_conn *c, const char *why)
{
  atomic_store(&c->no_settle, true);
  conn_lose(c, true, why);
}

void conn_server_shutdown(struct nbd_conn *c)
{
  if (c->ev) { /* the owner sends everything elsewhere */
    conn_lose(c, true, "server is shutting down");
    return;
  }
  /* Alone (tests, probes): take no new requests, let those in flight be
   * answered, then disconnect (after_receive). */
  pthread_mutex_lock(&c->tab_lock);
  if (atomic_load(&c->state) == NBD_CONN_READY)
    atomic_store(&c->state, NBD_CONN_CLOSING);
  snprintf(c->why, sizeof c->why, "server is shutting down");
  pthread_mutex_unlock(&c->tab_lock);
  log_warn("%s: connection %d: server is shutting down", c->desc, c->index);
}

static void unref_task(void *arg)
{
  conn_unref(arg);
}

/* DEAD: detach from the loop and tell the owner (owner thread, or the
 * caller's for unattached connections). */
static void go_dead(struct nbd_conn *c)
{
  pthread_mutex_lock(&c->send_lock);
  if (c->attached && c->src.loop) {
    loop_remove_tick(c->loop, c);
    loop_remove(&c->src);
  }
  pthread_mutex_unlock(&c->send_lock);
  pthread_mutex_lock(&c->tab_lock);
  atomic_store(&c->state, NBD_CONN_DEAD);
  pthread_cond_broadcast(&c->tab_cond);
  pthread_mutex_unlock(&c->tab_lock);
  free(c->rx.big);
  c->rx.big = NULL;
  if (c->ev)
    c->ev->dead(c->owner, c);
  if (c->attached && loop_post(c->loop, unref_task, c) < 0)
    log_error("%s: connection %d: cannot release it (out of memory)", c->desc, c->index);
}

/* The connection left READY: hand back (or fail) what is in flight, then
 * either wait for the server to settle or die at once. */
static void handle_loss(struct nbd_conn *c)
{
  if (!c->handed_back) {
    c->handed_back = true;
    bool settled = c->rx_over || !c->we_closed;
    struct nbd_cmd *cmds;
    unsigned n = table_take_all(c, &cmds);
    /* An orderly close ending with nothing in flight is no loss (for an
     * owner-less connection, even when it had to be cut off). */
    bool expected = c->closing_deadline_ms && n == 0 && (!c->we_closed || !c->ev);
    if (!expected)
      log_warn("%s: connection %d lost: %s%s", c->desc, c->index, c->why,
               n ? (c->ev ? "; sending its requests again" : "; failing its requests") : "");
    if (c->ev) {
      c->ev->lost(c->owner, c, cmds, n, settled, c->why);
    } else {
      for (unsigned i = 0; i < n; i++)
        cmds[i].done(cmds[i].arg, EIO);
    }
    free(cmds);
    free(c->rx.big);
    c->rx.big = NULL;
    c->rx.s = NULL;
    c->rx.st = RX_DISCARD;
    c->rx.dst = NULL;
    c->rx.need = SIZE_MAX;
    c->rx.got = 0;
    c->rpos = c->rend = 0;
    if (!c->rx_over && c->we_closed) {
      /* The server may still act on what it read: half-close and wait for
       * it to hang up before its writes count as settled. */
      pthread_mutex_lock(&c->send_lock);
      if (c->t)
        transport_shutdown(c->t, true);
      pthread_mutex_unlock(&c->send_lock);
      c->settle_deadline_ms = conn_now_ms() + (atomic_load(&c->no_settle) ? 0 : (uint64_t)c->settle_s * 1000);
    }
  }
  if (c->rx_over || !c->we_closed || c->settle_deadline_ms <= conn_now_ms() ||
      atomic_load(&c->no_settle))
    go_dead(c);
}

static void after_receive(struct nbd_conn *c, int r)
{
  if (r < 0 || nbd_conn_state(c) == NBD_CONN_ABANDONED) {
    handle_loss(c);
    return;
  }
  if (r > 0 && !c->resume_posted) { /* bounded: come back next round */
    c->resume_posted = true;
    atomic_fetch_add(&c->refs, 1);
    if (loop_post(c->loop, conn_resume_task, c) < 0) {
      c->resume_posted = false;
      conn_unref(c);
    }
  }
  /* Alone after ESHUTDOWN: disconnect once everything is answered. */
  if (!c->ev && nbd_conn_state(c) == NBD_CONN_CLOSING && !c->closing_deadline_ms &&
      nbd_conn_inflight(c) == 0) {
    c->closing_deadline_ms = conn_now_ms() + CLOSING_MS;
    send_disc_and_half_close(c);
  }
}

static void conn_resume_task(void *arg)
{
  struct nbd_conn *c = arg;
  c->resume_posted = false;
  if (nbd_conn_state(c) != NBD_CONN_DEAD)
    after_receive(c, rx_feed(c));
  conn_unref(c);
}

static void kill_task(void *arg)
{
  struct nbd_conn *c = arg;
  if (nbd_conn_state(c) == NBD_CONN_ABANDONED)
    handle_loss(c);
  conn_unref(c);
}

static void on_event(void *arg, uint32_t events)
{
  struct nbd_conn *c = arg;
  if (nbd_conn_state(c) == NBD_CONN_DEAD)
    return;
  if ((events & EPOLLOUT) && nbd_conn_state(c) != NBD_CONN_ABANDONED)
    send_backlog(c);
  if (events & (EPOLLIN | EPOLLHUP | EPOLLERR))
    after_receive(c, rx_feed(c));
  else if (nbd_conn_state(c) == NBD_CONN_ABANDONED)
    handle_loss(c);
}

/* Timers: a stalled server, an abandoned connection that will not settle,
 * an orderly close the server does not finish. */
static void on_tick(void *arg)
{
  struct nbd_conn *c = arg;
  uint64_t now = conn_now_ms();
  switch (nbd_conn_state(c)) {
  case NBD_CONN_READY: {
    if (!c->timeout_s || nbd_conn_inflight(c) == 0)
      return;
    pthread_mutex_lock(&c->tab_lock);
    uint64_t since = c->busy_since_ms > c->last_rx_ms ? c->busy_since_ms : c->last_rx_ms;
    /* A FLUSH may legitimately take long (gigabytes to write back). */
    bool flushes_only = c->flush_inflight == nbd_conn_inflight(c);
    pthread_mutex_unlock(&c->tab_lock);
    uint64_t limit = (uint64_t)c->timeout_s * 1000 * (flushes_only ? 5 : 1);
    if (now - since > limit) {
      char why[96];
      snprintf(why, sizeof why, "server answered nothing for %llu seconds",
               (unsigned long long)(limit / 1000));
      conn_lose(c, true, why);
      handle_loss(c);
    }
    return;
  }
  case NBD_CONN_CLOSING:
    if (c->closing_deadline_ms && now > c->closing_deadline_ms) {
      nbd_conn_abort(c, "server did not close after NBD_CMD_DISC");
      handle_loss(c);
    }
    return;
  case NBD_CONN_ABANDONED:
    handle_loss(c);
    return;
  case NBD_CONN_DEAD:
    return;
  }
}

int nbd_conn_attach(struct nbd_conn *c, struct nbd_loop *loop)
{
  int fd = c->t->fd;
  if (fd < 0)
    return -EINVAL;
  transport_set_timeouts(c->t, 0, 0);
  if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0)
    return -errno;
  /* Room for a whole 1 MiB WRITE (header and payload) in the socket, so
   * large writes are not copied into our backlog.  Without privilege the
   * kernel caps this at net.core.wmem_max. */
  int sndbuf = 4 << 20;
  if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof sndbuf) < 0)
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
  atomic_fetch_add(&c->refs, 1); /* the loop's */
  c->loop = loop;
  c->last_rx_ms = conn_now_ms();
  pthread_mutex_lock(&c->send_lock);
  c->src = (struct loop_source){ .fd = fd, .fn = on_event, .arg = c, .events = EPOLLIN };
  c->attached = true;
  int r = loop_add_tick(loop, on_tick, c);
  if (r == 0 && (r = loop_add(loop, &c->src, false)) < 0)
    loop_remove_tick(loop, c);
  if (r < 0)
    c->attached = false;
  pthread_mutex_unlock(&c->send_lock);
  if (r < 0)
    conn_unref(c);
  return r;
}

void nbd_conn_disconnect(struct nbd_conn *c)
{
  pthread_mutex_lock(&c->tab_lock);
  bool ready = atomic_load(&c->state) == NBD_CONN_READY;
  if (ready) { /* published by the state change: the owner reads them after it */
    c->closing_deadline_ms = conn_now_ms() + CLOSING_MS;
    snprintf(c->why, sizeof c->why, "closed");
    atomic_store(&c->state, NBD_CONN_CLOSING);
  }
  pthread_mutex_unlock(&c->tab_lock);
  if (ready)
    send_disc_and_half_close(c);
}

bool nbd_conn_wait_dead(struct nbd_conn *c, int secs)
{
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += secs;
  pthread_mutex_lock(&c->tab_lock);
  while (atomic_load(&c->state) != NBD_CONN_DEAD)
    if (pthread_cond_timedwait(&c->tab_cond, &c->tab_lock, &until) == ETIMEDOUT)
      break;
  bool dead = atomic_load(&c->state) == NBD_CONN_DEAD;
  pthread_mutex_unlock(&c->tab_lock);
  return dead;
}

void nbd_conn_receive_loop(struct nbd_conn *c)
{
  for (;;) {
    int r = rx_feed(c);
    if (r < 0 || nbd_conn_state(c) == NBD_CONN_ABANDONED)
      break;
    after_receive(c, 0);
  }
  c->rx_over = true; /* nothing more will be read here */
  handle_loss(c);
}

void nbd_conn_close(struct nbd_conn *c)
{
  if (!c)
    return;
  if (!c->attached) {
    if (nbd_conn_state(c) == NBD_CONN_READY) {
      nbd_conn_disconnect(c);
      /* Read until the server hangs up (briefly), so it sees a clean end. */
      transport_set_timeouts(c->t, CLOSING_MS, CLOSING_MS);
      uint8_t scratch[256];
      while (c->t->ops->recv(c->t, scratch, sizeof scratch) > 0)
        ;
    }
  } else {
    nbd_conn_disconnect(c);
    nbd_conn_wait_dead(c, 5);
  }
  conn_unref(c);
}
