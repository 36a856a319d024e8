/* conn.c: request table, send path and reply assembly for one connection. */
#include "conn.h"

#include <errno.h>
#include <stdarg.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"

/* Slots live in pages that never move, so the table can grow while the
 * receive thread holds a slot pointer.  Cookie = generation << 32 | index. */
#define SLOTS_PER_PAGE 256
#define MAX_PAGES 64
#define MAX_SLOTS (SLOTS_PER_PAGE * MAX_PAGES)

/* Receive buffering: small replies are read in batches; large payloads go
 * straight from the socket into their destination. */
#define RBUF_SIZE (64 * 1024)
#define RECV_DIRECT_MIN (16 * 1024)

struct slot {
  struct nbd_cmd cmd;
  uint32_t gen;
  bool busy;
  int err;                 /* first error reported by the server */
  uint64_t sent_ms;        /* for the request timeout */
  struct nbd_coverage cov; /* READ with structured replies */
};

struct nbd_conn {
  struct transport *t;
  char desc[256];
  int index;
  int timeout_s;
  bool structured;
  uint16_t tflags;
  uint32_t base_alloc_id;

  pthread_mutex_t send_lock;

  pthread_mutex_t tab_lock;
  pthread_cond_t tab_cond;      /* a slot was freed / the connection died */
  struct slot *pages[MAX_PAGES];
  uint32_t nslots;
  uint32_t *free_idx;           /* stack of free slot indices */
  uint32_t nfree;
  uint32_t next_gen;
  atomic_uint inflight;
  atomic_bool dead;
  atomic_bool closing;          /* orderly close: EOF is expected */

  pthread_t rx_thread;
  bool rx_started;
  char kill_reason[160];

  /* receive buffer */
  uint8_t *rbuf;
  size_t rpos, rend;
  uint64_t last_rx_ms;
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
  c->tflags = s->info.tflags;
  c->base_alloc_id = s->base_alloc_id;
  c->next_gen = 1;
  pthread_mutex_init(&c->send_lock, NULL);
  pthread_mutex_init(&c->tab_lock, NULL);
  pthread_cond_init(&c->tab_cond, NULL);
  return c;
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
  pthread_mutex_unlock(&c->tab_lock);
  atomic_store(&c->dead, true);
  transport_shutdown(c->t, false);
}

/* Grow the table by one page.  Called with tab_lock held. */
static int grow_table(struct nbd_conn *c)
{
  uint32_t p = c->nslots / SLOTS_PER_PAGE;
  if (p >= MAX_PAGES)
    return -1;
  c->pages[p] = calloc(SLOTS_PER_PAGE, sizeof(struct slot));
  if (!c->pages[p])
    return -1;
  /* Push in reverse so low indices are used first. */
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
  int iovcnt = cmd->type == NBD_CMD_WRITE ? 2 : 1;

  pthread_mutex_lock(&c->send_lock);
  int r = transport_send_all(c->t, iov, iovcnt);
  pthread_mutex_unlock(&c->send_lock);
  if (r < 0) {
    /* The receive thread fails this request along with the others. */
    char why[128];
    snprintf(why, sizeof why, "sending %s failed: %s", nbd_cmd_name(cmd->type),
             r == -EAGAIN ? "server stopped reading (timeout)" : strerror(-r));
    nbd_conn_kill(c, why);
  }
  return 0;
}

/* Release a slot (receive thread) and complete its command. */
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
  cmd.done(cmd.arg, err);
}

/* ---- buffered receive ---- */

/* Check for a request that has waited too long.  Returns true if the
 * connection should be killed. */
static bool request_timed_out(struct nbd_conn *c)
{
  if (!c->timeout_s)
    return false;
  uint64_t now = now_ms(), limit = (uint64_t)c->timeout_s * 1000;
  bool late = false;
  pthread_mutex_lock(&c->tab_lock);
  for (uint32_t i = 0; i < c->nslots && !late; i++) {
    struct slot *s = slot_at(c, i);
    late = s->busy && now - s->sent_ms > limit;
  }
  pthread_mutex_unlock(&c->tab_lock);
  return late;
}

/* Receive into buf: 0, or -1 when the connection is over (reason recorded). */
static int rx_raw(struct nbd_conn *c, void *buf, size_t len, size_t *got)
{
  for (;;) {
    ssize_t r = c->t->ops->recv(c->t, buf, len);
    if (r > 0) {
      *got = (size_t)r;
      c->last_rx_ms = c->timeout_s ? now_ms() : 0;
      return 0;
    }
    if (r == -EAGAIN) {
      if (c->closing && atomic_load(&c->inflight) == 0) {
        nbd_conn_kill(c, "closed");
        return -1;
      }
      if (request_timed_out(c)) {
        char why[96];
        snprintf(why, sizeof why, "server did not answer for %d seconds", c->timeout_s);
        nbd_conn_kill(c, why);
        return -1;
      }
      continue;
    }
    if (r == 0)
      nbd_conn_kill(c, "server closed the connection");
    else {
      char why[96];
      snprintf(why, sizeof why, "receive failed: %s", strerror((int)-r));
      nbd_conn_kill(c, why);
    }
    return -1;
  }
}

/* Read exactly len bytes into dst (or discard them when dst is NULL). */
static int rx(struct nbd_conn *c, void *dst, size_t len)
{
  uint8_t *d = dst;
  while (len) {
    size_t avail = c->rend - c->rpos;
    if (avail) {
      size_t n = avail < len ? avail : len;
      if (d) {
        memcpy(d, c->rbuf + c->rpos, n);
        d += n;
      }
      c->rpos += n;
      len -= n;
      continue;
    }
    size_t got;
    if (d && len >= RECV_DIRECT_MIN) {
      if (rx_raw(c, d, len, &got) < 0)
        return -1;
      d += got;
      len -= got;
    } else {
      c->rpos = c->rend = 0;
      if (rx_raw(c, c->rbuf, RBUF_SIZE, &got) < 0)
        return -1;
      c->rend = got;
    }
  }
  return 0;
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

/* Look up the slot a cookie names; NULL when unknown. */
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
  if (!s->err)
    s->err = err;
}

static int handle_simple(struct nbd_conn *c, const struct nbd_reply *r)
{
  uint32_t idx;
  struct slot *s = lookup(c, r->cookie, &idx);
  if (!s) {
    if (r->error == 0)
      return violation(c, "simple reply for unknown cookie 0x%llx", (unsigned long long)r->cookie);
    return 0; /* an error reply carries no payload: skip it */
  }
  if (s->cmd.type == NBD_CMD_READ && r->error == 0) {
    if (c->structured)
      return violation(c, "simple reply with data to READ after structured replies were negotiated");
    if (rx(c, s->cmd.buf, s->cmd.count) < 0)
      return -1;
  }
  complete_slot(c, idx, s, r->error ? nbd_errno(r->error) : 0);
  return 0;
}

/* Parse one structured chunk's payload for slot s (which may be NULL). */
static int handle_chunk(struct nbd_conn *c, const struct nbd_reply *r)
{
  uint32_t idx;
  struct slot *s = lookup(c, r->cookie, &idx);
  if (!s) {
    /* Unknown cookie: framing is still known, skip the payload. */
    if (r->length > NBD_MAX_PAYLOAD + 8)
      return violation(c, "oversized chunk for unknown cookie");
    log_debug("%s: skipping chunk for unknown cookie 0x%llx", c->desc, (unsigned long long)r->cookie);
    return rx(c, NULL, r->length);
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
    if (rx(c, NULL, r->length) < 0)
      return -1;
  } else if (r->type == NBD_REPLY_TYPE_OFFSET_DATA) {
    uint8_t pre[8];
    uint64_t off = 0;
    uint32_t len = 0;
    if (r->length < 9) {
      log_warn("%s: OFFSET_DATA chunk of %u bytes is too short; failing the read", c->desc, r->length);
      note_error(s, EIO);
      if (rx(c, NULL, r->length) < 0)
        return -1;
      goto done;
    }
    if (rx(c, pre, 8) < 0)
      return -1;
    v = nbd_parse_offset_data(pre, r->length, cmd->offset, cmd->count, &off, &len);
    uint32_t rel = (uint32_t)(off - cmd->offset);
    if (v == NBD_OK && s->err == 0 && nbd_coverage_add(&s->cov, rel, rel + len) == 0) {
      if (rx(c, (uint8_t *)cmd->buf + rel, len) < 0)
        return -1;
    } else {
      log_warn("%s: bad OFFSET_DATA chunk (outside the request or overlapping); failing the read", c->desc);
      note_error(s, EIO);
      if (rx(c, NULL, r->length - 8) < 0)
        return -1;
    }
  } else if (r->type == NBD_REPLY_TYPE_OFFSET_HOLE) {
    uint8_t p[12];
    uint64_t off = 0;
    uint32_t len = 0;
    if (rx(c, p, 12) < 0)
      return -1;
    v = nbd_parse_offset_hole(p, r->length, cmd->offset, cmd->count, &off, &len);
    uint32_t rel = (uint32_t)(off - cmd->offset);
    if (v == NBD_OK && nbd_coverage_add(&s->cov, rel, rel + len) == 0) {
      memset((uint8_t *)cmd->buf + rel, 0, len);
    } else {
      log_warn("%s: bad OFFSET_HOLE chunk; failing the read", c->desc);
      note_error(s, EIO);
    }
  } else if (r->type == NBD_REPLY_TYPE_BLOCK_STATUS) {
    uint8_t *p = malloc(r->length ? r->length : 1);
    if (!p)
      return violation(c, "out of memory for a %u-byte block status reply", r->length);
    if (rx(c, p, r->length) < 0) {
      free(p);
      return -1;
    }
    uint32_t ctx, n;
    uint32_t max = r->length / 8 + 1;
    struct nbd_extent *ext = malloc(max * sizeof *ext);
    v = ext ? nbd_parse_block_status(p, r->length, cmd->count,
                                     cmd->flags & NBD_CMD_FLAG_REQ_ONE, &ctx, ext, max, &n)
            : NBD_FAIL;
    if (v == NBD_OK && ctx == c->base_alloc_id && cmd->extents)
      cmd->extents(cmd->arg, cmd->offset, ext, n);
    else if (v != NBD_OK || ctx != c->base_alloc_id)
      note_error(s, EIO);
    free(ext);
    free(p);
  } else if (NBD_REPLY_TYPE_IS_ERR(r->type)) {
    uint8_t p[6 + NBD_MAX_STRING + 8];
    uint32_t err;
    const uint8_t *msg;
    uint16_t msglen;
    uint64_t eoff = 0;
    if (rx(c, p, r->length) < 0)
      return -1;
    v = nbd_parse_error_chunk(p, r->length, r->type, &err, &msg, &msglen, &eoff);
    if (v == NBD_KILL)
      return violation(c, "malformed error chunk");
    if (v == NBD_OK && r->type == NBD_REPLY_TYPE_ERROR_OFFSET &&
        (eoff < cmd->offset || eoff - cmd->offset >= cmd->count))
      v = NBD_FAIL;
    if (nbd_verbose) {
      char m[256];
      nbd_sanitize(m, sizeof m, msg, msglen);
      log_info("%s: server error on %s at offset %llu: %s (%s)", c->desc, nbd_cmd_name(cmd->type),
               (unsigned long long)cmd->offset, strerror(nbd_errno(err)), m);
    }
    note_error(s, (v == NBD_OK && err != 0) ? nbd_errno(err) : EIO);
  }

done:
  if (r->flags & NBD_REPLY_FLAG_DONE) {
    int err = s->err;
    if (!err && cmd->type == NBD_CMD_READ && s->cov.covered != cmd->count) {
      log_warn("%s: READ reply did not cover the whole request; failing it", c->desc);
      err = EIO;
    }
    complete_slot(c, idx, s, err);
  }
  return 0;
}

/* Fail everything still in flight (the connection is gone). */
static void fail_all(struct nbd_conn *c)
{
  for (;;) {
    struct slot *s = NULL;
    uint32_t idx = 0;
    pthread_mutex_lock(&c->tab_lock);
    for (uint32_t i = 0; i < c->nslots; i++) {
      if (slot_at(c, i)->busy) {
        s = slot_at(c, i);
        idx = i;
        break;
      }
    }
    pthread_mutex_unlock(&c->tab_lock);
    if (!s)
      return;
    complete_slot(c, idx, s, EIO);
  }
}

void nbd_conn_receive_loop(struct nbd_conn *c)
{
  /* A receive tick lets the loop notice timeouts and an orderly close. */
  int tick = 1000;
  if (c->timeout_s && c->timeout_s * 250 < tick)
    tick = c->timeout_s * 250;
  transport_set_timeouts(c->t, tick, c->timeout_s * 1000);
  for (;;) {
    uint8_t hdr[NBD_CHUNK_HDR_LEN];
    if (rx(c, hdr, 4) < 0)
      break;
    size_t hlen = nbd_reply_header_len(hdr, c->structured);
    if (hlen == 0) {
      violation(c, "bad reply magic 0x%08x", nbd_get32(hdr));
      break;
    }
    if (rx(c, hdr + 4, hlen - 4) < 0)
      break;
    struct nbd_reply r;
    nbd_decode_reply(hdr, &r);
    if ((r.structured ? handle_chunk(c, &r) : handle_simple(c, &r)) < 0)
      break;
  }
  pthread_mutex_lock(&c->tab_lock);
  atomic_store(&c->dead, true);
  unsigned n = atomic_load(&c->inflight);
  bool quiet = c->closing;
  pthread_cond_broadcast(&c->tab_cond);
  pthread_mutex_unlock(&c->tab_lock);
  if (!quiet || n)
    log_error("connection %d to %s lost: %s; failing %u in-flight request%s with EIO", c->index,
              c->desc, c->kill_reason[0] ? c->kill_reason : "unknown reason", n, n == 1 ? "" : "s");
  fail_all(c);
}

static void *rx_main(void *arg)
{
  nbd_conn_receive_loop(arg);
  return NULL;
}

int nbd_conn_start(struct nbd_conn *c)
{
  /* Signals belong to the FUSE loop thread. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  int r = pthread_create(&c->rx_thread, NULL, rx_main, c);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (r)
    return -r;
  c->rx_started = true;
  return 0;
}

void nbd_conn_drain(struct nbd_conn *c, int drain_s)
{
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += drain_s;
  pthread_mutex_lock(&c->tab_lock);
  while (c->rx_started && !c->dead && atomic_load(&c->inflight) > 0)
    if (pthread_cond_timedwait(&c->tab_cond, &c->tab_lock, &until) == ETIMEDOUT)
      break;
  pthread_mutex_unlock(&c->tab_lock);
}

void nbd_conn_close(struct nbd_conn *c, int drain_s)
{
  if (!c)
    return;
  nbd_conn_drain(c, drain_s);
  pthread_mutex_lock(&c->tab_lock);
  c->closing = true;
  bool dead = c->dead;
  pthread_mutex_unlock(&c->tab_lock);

  if (!dead) {
    uint8_t hdr[NBD_REQUEST_LEN];
    struct nbd_request rq = { .type = NBD_CMD_DISC };
    nbd_encode_request(hdr, &rq);
    struct iovec iov = { hdr, sizeof hdr };
    pthread_mutex_lock(&c->send_lock);
    transport_send_all(c->t, &iov, 1);
    pthread_mutex_unlock(&c->send_lock);
    transport_shutdown(c->t, true);
  }
  if (c->rx_started)
    pthread_join(c->rx_thread, NULL);
  transport_destroy(c->t);
  for (uint32_t p = 0; p < MAX_PAGES; p++)
    free(c->pages[p]);
  free(c->free_idx);
  free(c->rbuf);
  pthread_mutex_destroy(&c->send_lock);
  pthread_mutex_destroy(&c->tab_lock);
  pthread_cond_destroy(&c->tab_cond);
  free(c);
}
