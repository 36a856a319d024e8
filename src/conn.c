/* conn.c: request table, non-blocking send path and reply assembly. */
#include "conn.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "loop.h"

/* Slots live in pages that never move, so the table can grow while a slot
 * is being filled by the receive side.  Cookie = generation << 32 | index. */
#define SLOTS_PER_PAGE 256
#define MAX_PAGES 64
#define MAX_SLOTS (SLOTS_PER_PAGE * MAX_PAGES)

/* Small replies are read in batches; large payloads go straight from the
 * socket into their destination. */
#define RBUF_SIZE (64 * 1024)
#define RECV_DIRECT_MIN (16 * 1024)

struct slot {
  struct nbd_cmd cmd;
  uint32_t gen;
  bool busy;
  int err;                 /* first error reported by the server */
  unsigned status_chunks;  /* BLOCK_STATUS: chunks for our context */
  uint64_t sent_ms;        /* for the request timeout */
  struct nbd_coverage cov; /* READ with structured replies */
};

/* What the bytes being received are for. */
enum rx_state {
  RX_MAGIC, RX_HEADER, RX_SIMPLE_DATA, RX_DATA_PREFIX, RX_DATA, RX_HOLE,
  RX_BLOCK_STATUS, RX_ERROR, RX_SKIP,
};

struct rx {
  enum rx_state st;
  uint8_t *dst;            /* NULL: discard */
  size_t need, got;
  uint8_t hdr[NBD_CHUNK_HDR_LEN];
  struct nbd_reply r;
  struct slot *s;          /* the slot the current reply is for, or NULL */
  uint32_t idx;
  uint8_t *big;            /* block status payload */
  uint8_t small[6 + NBD_MAX_STRING + 8];
};

struct nbd_conn {
  struct transport *t;
  char desc[256];
  int index;
  int timeout_s;
  bool structured;
  uint32_t base_alloc_id;

  /* send side */
  pthread_mutex_t send_lock;
  uint8_t *outq;                /* bytes accepted but not yet sent */
  size_t out_head, out_len, out_cap;
  struct loop_source src;       /* socket registration (events under send_lock) */
  bool attached;
  bool cork_pending;            /* queued by a corked burst, flushed at uncork */

  /* request table */
  pthread_mutex_t tab_lock;
  pthread_cond_t tab_cond;      /* slot freed, nothing in flight, or dead */
  struct slot *pages[MAX_PAGES];
  uint32_t nslots;
  uint32_t *free_idx;
  uint32_t nfree;
  uint32_t next_gen;
  atomic_uint inflight;
  atomic_bool dead;             /* no new requests */
  bool swept;                   /* in-flight requests were failed */
  bool detached;                /* sweep finished: the loop no longer sees us */
  atomic_bool closing;          /* orderly close: EOF is expected */
  bool server_shutdown;         /* server said ESHUTDOWN: DISC once drained */
  char kill_reason[160];

  /* receive side (owner loop thread only) */
  struct rx rx;
  uint8_t *rbuf;
  size_t rpos, rend;
};

static uint64_t now_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static inline struct slot *slot_at(struct nbd_conn *c, uint32_t idx)
{
  return &c->pages[idx / SLOTS_PER_PAGE][idx % SLOTS_PER_PAGE];
}

static void want(struct rx *x, enum rx_state st, void *dst, size_t need)
{
  x->st = st;
  x->dst = dst;
  x->need = need;
  x->got = 0;
}

struct nbd_conn *nbd_conn_new(struct transport *t, const struct nbd_session *s,
                              const char *desc, int index, int timeout_s)
{
  struct nbd_conn *c = calloc(1, sizeof *c);
  if (!c)
    return NULL;
  c->rbuf = malloc(RBUF_SIZE);
  c->free_idx = malloc(MAX_SLOTS * sizeof *c->free_idx);
  if (!c->rbuf || !c->free_idx) {
    free(c->rbuf);
    free(c->free_idx);
    free(c);
    return NULL;
  }
  c->t = t;
  snprintf(c->desc, sizeof c->desc, "%s", desc);
  c->index = index;
  c->timeout_s = timeout_s;
  c->structured = s->structured;
  c->base_alloc_id = s->base_alloc_id;
  c->next_gen = 1;
  want(&c->rx, RX_MAGIC, c->rx.hdr, 4);
  pthread_mutex_init(&c->send_lock, NULL);
  pthread_mutex_init(&c->tab_lock, NULL);
  pthread_cond_init(&c->tab_cond, NULL);
  return c;
}

struct nbd_loop *nbd_conn_loop(const struct nbd_conn *c)
{
  return c->attached ? c->src.loop : NULL;
}

unsigned nbd_conn_inflight(const struct nbd_conn *c)
{
  return atomic_load_explicit(&c->inflight, memory_order_relaxed);
}

bool nbd_conn_dead(const struct nbd_conn *c)
{
  return atomic_load_explicit(&c->dead, memory_order_relaxed);
}

void nbd_conn_kill(struct nbd_conn *c, const char *why)
{
  pthread_mutex_lock(&c->tab_lock);
  if (!c->kill_reason[0])
    snprintf(c->kill_reason, sizeof c->kill_reason, "%s", why);
  atomic_store(&c->dead, true);
  pthread_cond_broadcast(&c->tab_cond);
  pthread_mutex_unlock(&c->tab_lock);
  /* Wakes the owner loop, which fails what is in flight.  Under the send
   * lock, so it cannot cut between an orderly DISC and TLS close_notify. */
  pthread_mutex_lock(&c->send_lock);
  transport_shutdown(c->t, false);
  pthread_mutex_unlock(&c->send_lock);
}

/* ---- send side ---- */

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
  if (c->attached && c->src.events != events)
    loop_modify(&c->src, events);
}

/* Send as much of the queue as the socket takes (send_lock held).
 * Returns 0 or -errno on a hard error. */
static int outq_flush(struct nbd_conn *c)
{
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

/* Corking: while a worker drains a burst of FUSE requests, small requests
 * are gathered per connection and leave in one write when the burst ends
 * (fewer system calls, fewer wake-ups of the server). */
#define CORK_MAX (64 * 1024)
#define CORK_CONNS 64
static __thread bool corked;
static __thread struct nbd_conn *corked_conns[CORK_CONNS];
static __thread int ncorked;

void nbd_conn_cork(void)
{
  corked = true;
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
    if (r < 0) {
      char why[96];
      snprintf(why, sizeof why, "send failed: %s", strerror(-r));
      nbd_conn_kill(c, why);
    }
  }
  ncorked = 0;
}

/* Send iov now if nothing is queued, and queue whatever the socket does not
 * take (send_lock held).  Returns 0 or -errno. */
static int send_or_queue(struct nbd_conn *c, struct iovec *iov, int iovcnt)
{
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

/* Grow the table by one page (tab_lock held). */
static int grow_table(struct nbd_conn *c)
{
  uint32_t p = c->nslots / SLOTS_PER_PAGE;
  if (p >= MAX_PAGES)
    return -1;
  c->pages[p] = calloc(SLOTS_PER_PAGE, sizeof(struct slot));
  if (!c->pages[p])
    return -1;
  for (uint32_t i = SLOTS_PER_PAGE; i-- > 0;)
    c->free_idx[c->nfree++] = c->nslots + i;
  c->nslots += SLOTS_PER_PAGE;
  return 0;
}

int nbd_conn_submit(struct nbd_conn *c, const struct nbd_cmd *cmd)
{
  pthread_mutex_lock(&c->tab_lock);
  while (!c->dead && c->nfree == 0 && grow_table(c) < 0)
    pthread_cond_wait(&c->tab_cond, &c->tab_lock);
  if (c->dead) {
    pthread_mutex_unlock(&c->tab_lock);
    return -EIO;
  }
  uint32_t idx = c->free_idx[--c->nfree];
  struct slot *s = slot_at(c, idx);
  s->cmd = *cmd;
  s->gen = c->next_gen++;
  if (c->next_gen == 0)
    c->next_gen = 1;
  s->busy = true;
  s->err = 0;
  s->status_chunks = 0;
  s->sent_ms = c->timeout_s ? now_ms() : 0;
  if (cmd->type == NBD_CMD_READ && c->structured)
    nbd_coverage_init(&s->cov);
  atomic_fetch_add_explicit(&c->inflight, 1, memory_order_relaxed);
  struct nbd_request rq = { .flags = cmd->flags, .type = cmd->type,
                            .cookie = (uint64_t)s->gen << 32 | idx,
                            .offset = cmd->offset, .count = cmd->count };
  pthread_mutex_unlock(&c->tab_lock);

  uint8_t hdr[NBD_REQUEST_LEN];
  nbd_encode_request(hdr, &rq);
  struct iovec iov[2] = { { hdr, sizeof hdr }, { cmd->buf, cmd->count } };
  pthread_mutex_lock(&c->send_lock);
  int r = send_or_queue(c, iov, cmd->type == NBD_CMD_WRITE ? 2 : 1);
  pthread_mutex_unlock(&c->send_lock);
  if (r < 0) {
    /* The owner loop fails this request along with the others. */
    char why[128];
    snprintf(why, sizeof why, "sending %s failed: %s", nbd_cmd_name(cmd->type), strerror(-r));
    nbd_conn_kill(c, why);
  }
  return 0;
}

/* ---- receive side ---- */

static int send_or_queue(struct nbd_conn *c, struct iovec *iov, int iovcnt);

/* The server is going away (ESHUTDOWN): take no new requests here, and
 * once the last one is answered, disconnect softly (owner thread). */
static void note_server_shutdown(struct nbd_conn *c)
{
  if (c->server_shutdown)
    return;
  c->server_shutdown = true;
  pthread_mutex_lock(&c->tab_lock);
  if (!c->kill_reason[0])
    snprintf(c->kill_reason, sizeof c->kill_reason, "server is shutting down");
  atomic_store(&c->dead, true);
  pthread_mutex_unlock(&c->tab_lock);
  atomic_store(&c->closing, true);
  log_warn("%s: connection %d: server is shutting down", c->desc, c->index);
}

static void disconnect_if_drained(struct nbd_conn *c)
{
  if (!c->server_shutdown || atomic_load(&c->inflight) != 0)
    return;
  c->server_shutdown = false; /* once */
  uint8_t hdr[NBD_REQUEST_LEN];
  struct nbd_request rq = { .type = NBD_CMD_DISC };
  nbd_encode_request(hdr, &rq);
  struct iovec iov = { hdr, sizeof hdr };
  pthread_mutex_lock(&c->send_lock);
  send_or_queue(c, &iov, 1);
  pthread_mutex_unlock(&c->send_lock);
}

/* Release a slot and complete its command (no lock held on return). */
static void complete_slot(struct nbd_conn *c, uint32_t idx, struct slot *s, int err)
{
  struct nbd_cmd cmd = s->cmd;
  if (cmd.type == NBD_CMD_READ && c->structured)
    nbd_coverage_free(&s->cov);
  pthread_mutex_lock(&c->tab_lock);
  s->busy = false;
  c->free_idx[c->nfree++] = idx;
  unsigned left = atomic_fetch_sub_explicit(&c->inflight, 1, memory_order_relaxed) - 1;
  if (c->nfree == 1 || left == 0)
    pthread_cond_broadcast(&c->tab_cond);
  pthread_mutex_unlock(&c->tab_lock);
  if (err == ESHUTDOWN)
    note_server_shutdown(c);
  cmd.done(cmd.arg, err);
  disconnect_if_drained(c);
}

static int violation(struct nbd_conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int violation(struct nbd_conn *c, const char *fmt, ...)
{
  char msg[160] = "protocol violation: ";
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg + strlen(msg), sizeof msg - strlen(msg), fmt, ap);
  va_end(ap);
  nbd_conn_kill(c, msg);
  return -1;
}

static struct slot *lookup(struct nbd_conn *c, uint64_t cookie, uint32_t *idx)
{
  uint32_t i = (uint32_t)cookie, gen = (uint32_t)(cookie >> 32);
  struct slot *s = NULL;
  pthread_mutex_lock(&c->tab_lock);
  if (i < c->nslots) {
    s = slot_at(c, i);
    if (!s->busy || s->gen != gen)
      s = NULL;
  }
  pthread_mutex_unlock(&c->tab_lock);
  *idx = i;
  return s;
}

static void note_error(struct slot *s, int err)
{
  if (s && !s->err)
    s->err = err;
}

/* The current chunk's payload has been consumed. */
static void chunk_finished(struct nbd_conn *c)
{
  struct rx *x = &c->rx;
  struct slot *s = x->s;
  if (s && (x->r.flags & NBD_REPLY_FLAG_DONE)) {
    int err = s->err;
    if (!err && s->cmd.type == NBD_CMD_READ && s->cov.covered != s->cmd.count) {
      log_warn("%s: READ reply did not cover the whole request; failing it", c->desc);
      err = EIO;
    }
    if (!err && s->cmd.type == NBD_CMD_BLOCK_STATUS && s->status_chunks != 1) {
      log_warn("%s: BLOCK_STATUS reply had %u chunks for base:allocation instead of one; failing it",
               c->desc, s->status_chunks);
      err = EIO;
    }
    complete_slot(c, x->idx, s, err);
  }
  x->s = NULL;
  want(x, RX_MAGIC, x->hdr, 4);
}

static void skip_payload(struct nbd_conn *c, size_t n)
{
  want(&c->rx, RX_SKIP, NULL, n);
}

static int on_simple_header(struct nbd_conn *c)
{
  struct rx *x = &c->rx;
  struct slot *s = lookup(c, x->r.cookie, &x->idx);
  if (!s) {
    if (x->r.error == 0)
      return violation(c, "simple reply for unknown cookie 0x%llx", (unsigned long long)x->r.cookie);
    want(x, RX_MAGIC, x->hdr, 4); /* an error reply carries no payload */
    return 0;
  }
  if (s->cmd.type == NBD_CMD_READ && x->r.error == 0) {
    if (c->structured)
      return violation(c, "simple reply with data to READ after structured replies were negotiated");
    x->s = s;
    want(x, RX_SIMPLE_DATA, s->cmd.buf, s->cmd.count);
    return 0;
  }
  complete_slot(c, x->idx, s, x->r.error ? nbd_errno(x->r.error) : 0);
  want(x, RX_MAGIC, x->hdr, 4);
  return 0;
}

static int on_chunk_header(struct nbd_conn *c)
{
  struct rx *x = &c->rx;
  const struct nbd_reply *r = &x->r;
  struct slot *s = lookup(c, r->cookie, &x->idx);
  x->s = s;
  if (!s) {
    if (r->length > NBD_MAX_PAYLOAD + 8)
      return violation(c, "oversized chunk for unknown cookie");
    log_debug("%s: skipping chunk for unknown cookie 0x%llx", c->desc, (unsigned long long)r->cookie);
    skip_payload(c, r->length);
    return 0;
  }
  const struct nbd_cmd *cmd = &s->cmd;
  enum nbd_verdict v = nbd_check_chunk(r, cmd->type, cmd->count);
  if (v == NBD_KILL)
    return violation(c, "chunk type %u length %u in reply to %s", r->type, r->length,
                     nbd_cmd_name(cmd->type));
  if (v == NBD_FAIL) {
    log_warn("%s: server sent chunk type %u (length %u) that does not fit %s; failing it", c->desc,
             r->type, r->length, nbd_cmd_name(cmd->type));
    note_error(s, EIO);
    skip_payload(c, r->length);
    return 0;
  }
  switch (r->type) {
  case NBD_REPLY_TYPE_NONE:
    want(x, RX_SKIP, NULL, 0);
    break;
  case NBD_REPLY_TYPE_OFFSET_DATA:
    if (r->length < 9) {
      log_warn("%s: OFFSET_DATA chunk of %u bytes is too short; failing the read", c->desc, r->length);
      note_error(s, EIO);
      skip_payload(c, r->length);
    } else {
      want(x, RX_DATA_PREFIX, x->small, 8);
    }
    break;
  case NBD_REPLY_TYPE_OFFSET_HOLE:
    want(x, RX_HOLE, x->small, 12);
    break;
  case NBD_REPLY_TYPE_BLOCK_STATUS:
    x->big = malloc(r->length ? r->length : 1);
    if (!x->big)
      return violation(c, "out of memory for a %u-byte block status reply", r->length);
    want(x, RX_BLOCK_STATUS, x->big, r->length);
    break;
  default: /* error chunks; nbd_check_chunk bounded the length */
    want(x, RX_ERROR, x->small, r->length);
    break;
  }
  return 0;
}

static void on_data_prefix(struct nbd_conn *c)
{
  struct rx *x = &c->rx;
  struct slot *s = x->s;
  uint64_t off = 0;
  uint32_t len = 0;
  enum nbd_verdict v = nbd_parse_offset_data(x->small, x->r.length, s->cmd.offset, s->cmd.count,
                                             &off, &len);
  uint32_t rel = (uint32_t)(off - s->cmd.offset);
  if (v == NBD_OK && s->err == 0 && nbd_coverage_add(&s->cov, rel, rel + len) == 0) {
    want(x, RX_DATA, (uint8_t *)s->cmd.buf + rel, len);
  } else {
    if (s->err == 0)
      log_warn("%s: bad OFFSET_DATA chunk (outside the request or overlapping); failing the read",
               c->desc);
    note_error(s, EIO);
    skip_payload(c, x->r.length - 8);
  }
}

static void on_hole(struct nbd_conn *c)
{
  struct rx *x = &c->rx;
  struct slot *s = x->s;
  uint64_t off = 0;
  uint32_t len = 0;
  enum nbd_verdict v = nbd_parse_offset_hole(x->small, x->r.length, s->cmd.offset, s->cmd.count,
                                             &off, &len);
  uint32_t rel = (uint32_t)(off - s->cmd.offset);
  if (v == NBD_OK && nbd_coverage_add(&s->cov, rel, rel + len) == 0) {
    memset((uint8_t *)s->cmd.buf + rel, 0, len);
  } else {
    log_warn("%s: bad OFFSET_HOLE chunk; failing the read", c->desc);
    note_error(s, EIO);
  }
  chunk_finished(c);
}

static void on_block_status(struct nbd_conn *c)
{
  struct rx *x = &c->rx;
  struct slot *s = x->s;
  uint32_t ctx, n, max = x->r.length / 8 + 1;
  struct nbd_extent *ext = malloc(max * sizeof *ext);
  enum nbd_verdict v = ext ? nbd_parse_block_status(x->big, x->r.length, s->cmd.count,
                                                    s->cmd.flags & NBD_CMD_FLAG_REQ_ONE, &ctx,
                                                    ext, max, &n)
                           : NBD_FAIL;
  if (v == NBD_OK && ctx == c->base_alloc_id && ++s->status_chunks == 1) {
    if (s->cmd.extents && !s->err)
      s->cmd.extents(s->cmd.arg, s->cmd.offset, ext, n);
  } else {
    note_error(s, EIO);
  }
  free(ext);
  free(x->big);
  x->big = NULL;
  chunk_finished(c);
}

static int on_error_chunk(struct nbd_conn *c)
{
  struct rx *x = &c->rx;
  struct slot *s = x->s;
  uint32_t err;
  const uint8_t *msg;
  uint16_t msglen;
  uint64_t eoff = 0;
  enum nbd_verdict v = nbd_parse_error_chunk(x->small, x->r.length, x->r.type, &err, &msg,
                                             &msglen, &eoff);
  if (v == NBD_KILL)
    return violation(c, "malformed error chunk");
  if (v == NBD_OK && x->r.type == NBD_REPLY_TYPE_ERROR_OFFSET &&
      (eoff < s->cmd.offset || eoff - s->cmd.offset >= s->cmd.count))
    v = NBD_FAIL;
  if (nbd_verbose) {
    char m[256];
    nbd_sanitize(m, sizeof m, msg, msglen);
    log_info("%s: server error on %s at offset %llu: %s (%s)", c->desc, nbd_cmd_name(s->cmd.type),
             (unsigned long long)s->cmd.offset, strerror(nbd_errno(err)), m);
  }
  note_error(s, (v == NBD_OK && err != 0) ? nbd_errno(err) : EIO);
  chunk_finished(c);
  return 0;
}

/* The bytes the state machine asked for have all arrived: act on them. */
static int rx_step(struct nbd_conn *c)
{
  struct rx *x = &c->rx;
  switch (x->st) {
  case RX_MAGIC: {
    size_t hlen = nbd_reply_header_len(x->hdr, c->structured);
    if (hlen == 0)
      return violation(c, "bad reply magic 0x%08x", nbd_get32(x->hdr));
    want(x, RX_HEADER, x->hdr + 4, hlen - 4);
    return 0;
  }
  case RX_HEADER:
    nbd_decode_reply(x->hdr, &x->r);
    return x->r.structured ? on_chunk_header(c) : on_simple_header(c);
  case RX_SIMPLE_DATA:
    complete_slot(c, x->idx, x->s, 0);
    x->s = NULL;
    want(x, RX_MAGIC, x->hdr, 4);
    return 0;
  case RX_DATA_PREFIX:
    on_data_prefix(c);
    return 0;
  case RX_HOLE:
    on_hole(c);
    return 0;
  case RX_BLOCK_STATUS:
    on_block_status(c);
    return 0;
  case RX_ERROR:
    return on_error_chunk(c);
  case RX_DATA:
  case RX_SKIP:
    chunk_finished(c);
    return 0;
  }
  return 0;
}

/* Consume whatever has arrived.  Returns 0 when the socket is drained
 * (-EAGAIN), -1 when the connection is over. */
static int rx_feed(struct nbd_conn *c)
{
  struct rx *x = &c->rx;
  for (;;) {
    while (x->got < x->need) {
      size_t left = x->need - x->got;
      size_t avail = c->rend - c->rpos;
      if (avail) {
        size_t n = avail < left ? avail : left;
        if (x->dst)
          memcpy(x->dst + x->got, c->rbuf + c->rpos, n);
        c->rpos += n;
        x->got += n;
        continue;
      }
      ssize_t r;
      if (x->dst && left >= RECV_DIRECT_MIN) {
        r = c->t->ops->recv(c->t, x->dst + x->got, left);
        if (r > 0)
          x->got += (size_t)r;
      } else {
        r = c->t->ops->recv(c->t, c->rbuf, RBUF_SIZE);
        if (r > 0) {
          c->rpos = 0;
          c->rend = (size_t)r;
        }
      }
      if (r > 0)
        continue;
      if (r == -EAGAIN)
        return 0;
      if (r == 0) {
        nbd_conn_kill(c, (x->st == RX_MAGIC && x->got == 0)
                             ? "server closed the connection"
                             : "server closed the connection in the middle of a reply");
      } else {
        char why[200];
        snprintf(why, sizeof why, "receive failed: %s",
                 c->t->last_error[0] ? c->t->last_error : strerror((int)-r));
        nbd_conn_kill(c, why);
      }
      return -1;
    }
    if (rx_step(c) < 0)
      return -1;
  }
}

/* Fail everything still in flight; runs once, on the owner thread. */
static void sweep(struct nbd_conn *c)
{
  pthread_mutex_lock(&c->tab_lock);
  if (c->swept) {
    pthread_mutex_unlock(&c->tab_lock);
    return;
  }
  c->swept = true;
  atomic_store(&c->dead, true);
  unsigned n = atomic_load(&c->inflight);
  bool quiet = atomic_load(&c->closing) && n == 0;
  pthread_cond_broadcast(&c->tab_cond);
  pthread_mutex_unlock(&c->tab_lock);
  if (!quiet)
    log_error("connection %d to %s lost: %s; failing %u in-flight request%s with EIO", c->index,
              c->desc, c->kill_reason[0] ? c->kill_reason : "unknown reason", n, n == 1 ? "" : "s");
  if (c->attached) {
    pthread_mutex_lock(&c->send_lock);
    if (c->src.loop) {
      loop_remove_tick(c->src.loop, c);
      loop_remove(&c->src);
    }
    pthread_mutex_unlock(&c->send_lock);
  }
  free(c->rx.big);
  c->rx.big = NULL;
  for (;;) {
    struct slot *s = NULL;
    uint32_t idx = 0;
    pthread_mutex_lock(&c->tab_lock);
    for (uint32_t i = 0; i < c->nslots && !s; i++)
      if (slot_at(c, i)->busy) {
        s = slot_at(c, i);
        idx = i;
      }
    pthread_mutex_unlock(&c->tab_lock);
    if (!s)
      break;
    complete_slot(c, idx, s, EIO);
  }
  pthread_mutex_lock(&c->tab_lock);
  c->detached = true;
  pthread_cond_broadcast(&c->tab_cond);
  pthread_mutex_unlock(&c->tab_lock);
}

void nbd_conn_receive_loop(struct nbd_conn *c)
{
  while (rx_feed(c) == 0)
    ;
  sweep(c);
}

static void on_event(void *arg, uint32_t events)
{
  struct nbd_conn *c = arg;
  if (events & EPOLLOUT) {
    pthread_mutex_lock(&c->send_lock);
    int r = outq_flush(c);
    pthread_mutex_unlock(&c->send_lock);
    if (r < 0) {
      char why[96];
      snprintf(why, sizeof why, "send failed: %s", strerror(-r));
      nbd_conn_kill(c, why);
    }
  }
  if (events & (EPOLLIN | EPOLLHUP | EPOLLERR))
    if (rx_feed(c) < 0)
      sweep(c);
}

/* Kill the connection when a request has waited longer than the timeout. */
static void on_tick(void *arg)
{
  struct nbd_conn *c = arg;
  if (!c->timeout_s || atomic_load(&c->inflight) == 0)
    return;
  uint64_t now = now_ms(), limit = (uint64_t)c->timeout_s * 1000;
  bool late = false;
  pthread_mutex_lock(&c->tab_lock);
  for (uint32_t i = 0; i < c->nslots && !late; i++) {
    struct slot *s = slot_at(c, i);
    late = s->busy && now - s->sent_ms > limit;
  }
  pthread_mutex_unlock(&c->tab_lock);
  if (late) {
    char why[96];
    snprintf(why, sizeof why, "server did not answer for %d seconds", c->timeout_s);
    nbd_conn_kill(c, why);
    sweep(c);
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
  pthread_mutex_lock(&c->send_lock);
  c->src = (struct loop_source){ .fd = fd, .fn = on_event, .arg = c, .events = EPOLLIN };
  int r = loop_add(loop, &c->src, false);
  if (r == 0)
    c->attached = true;
  pthread_mutex_unlock(&c->send_lock);
  if (r == 0)
    r = loop_add_tick(loop, on_tick, c);
  return r;
}

void nbd_conn_drain(struct nbd_conn *c, int drain_s)
{
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += drain_s;
  pthread_mutex_lock(&c->tab_lock);
  while (!c->swept && atomic_load(&c->inflight) > 0)
    if (pthread_cond_timedwait(&c->tab_cond, &c->tab_lock, &until) == ETIMEDOUT)
      break;
  pthread_mutex_unlock(&c->tab_lock);
}

static bool wait_detached(struct nbd_conn *c, int secs)
{
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += secs;
  pthread_mutex_lock(&c->tab_lock);
  while (!c->detached)
    if (pthread_cond_timedwait(&c->tab_cond, &c->tab_lock, &until) == ETIMEDOUT)
      break;
  bool d = c->detached;
  pthread_mutex_unlock(&c->tab_lock);
  return d;
}

void nbd_conn_disconnect(struct nbd_conn *c)
{
  if (nbd_conn_dead(c)) {
    if (c->attached && !wait_detached(c, 5))
      log_warn("%s: connection %d did not close", c->desc, c->index);
    return;
  }
  atomic_store(&c->closing, true);
  uint8_t hdr[NBD_REQUEST_LEN];
  struct nbd_request rq = { .type = NBD_CMD_DISC };
  nbd_encode_request(hdr, &rq);
  struct iovec iov = { hdr, sizeof hdr };
  /* DISC, whatever is still queued before it, and the TLS close_notify go
   * out in one critical section: the server hangs up as soon as it reads
   * DISC, and our half-close must already be on its way by then. */
  pthread_mutex_lock(&c->send_lock);
  int r = send_or_queue(c, &iov, 1);
  for (int i = 0; r == 0 && c->attached && c->out_len > 0 && i < 200; i++) {
    struct pollfd pf = { .fd = c->t->fd, .events = POLLOUT };
    poll(&pf, 1, 10);
    r = outq_flush(c);
  }
  transport_shutdown(c->t, true);
  pthread_mutex_unlock(&c->send_lock);
  if (!c->attached)
    return;
  /* The owner loop sees the server hang up and detaches the connection;
   * a server that lingers is cut off. */
  if (!wait_detached(c, 2)) {
    nbd_conn_kill(c, "closed");
    if (!wait_detached(c, 5))
      log_warn("%s: connection %d did not close", c->desc, c->index);
  }
}

void nbd_conn_free(struct nbd_conn *c)
{
  if (!c)
    return;
  if (c->attached && c->src.loop) {
    loop_remove_tick(c->src.loop, c);
    loop_remove(&c->src);
  }
  transport_destroy(c->t);
  for (uint32_t p = 0; p < MAX_PAGES; p++)
    free(c->pages[p]);
  free(c->free_idx);
  free(c->rbuf);
  free(c->outq);
  free(c->rx.big);
  pthread_mutex_destroy(&c->send_lock);
  pthread_mutex_destroy(&c->tab_lock);
  pthread_cond_destroy(&c->tab_cond);
  free(c);
}

void nbd_conn_close(struct nbd_conn *c, int drain_s)
{
  if (!c)
    return;
  nbd_conn_drain(c, drain_s);
  nbd_conn_disconnect(c);
  nbd_conn_free(c);
}
