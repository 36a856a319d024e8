/* conn-recv.c: reply assembly.
 *
 * A resumable state machine consumes whatever bytes have arrived and
 * picks up where they stopped.  Every reply is validated before it is
 * trusted; violations that break framing lose the connection, the others
 * fail only their request.  The work done per call is bounded, so one
 * server streaming replies cannot starve the loop's other connections,
 * the FUSE device or the timers.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conn-impl.h"
#include "log.h"

/* Small replies are read in batches; large payloads go straight from the
 * socket into their destination. */
#define RECV_DIRECT_MIN (16 * 1024)
#define RBUF_SIZE (64 * 1024)
/* Bytes consumed per call before yielding to the loop. */
#define FEED_BUDGET (8u << 20)

static void want(struct rx *x, enum rx_state st, void *dst, size_t need)
{
  x->st = st;
  x->dst = dst;
  x->need = need;
  x->got = 0;
}

void rx_init(struct nbd_conn *c)
{
  want(&c->rx, RX_MAGIC, c->rx.hdr, 4);
}

static int violation(struct nbd_conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int violation(struct nbd_conn *c, const char *fmt, ...)
{
  char msg[180] = "protocol violation: ";
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg + strlen(msg), sizeof msg - strlen(msg), fmt, ap);
  va_end(ap);
  conn_lose(c, true, msg);
  return -1;
}

static void note_error(struct slot *s, int err)
{
  if (s && !s->err)
    s->err = err;
}

/* A reply is complete.  ESHUTDOWN means the server is going away: its
 * owner sends the command again elsewhere (conn_server_shutdown). */
static void finish(struct nbd_conn *c, uint32_t idx, struct slot *s, int err)
{
  struct nbd_cmd cmd = table_release(c, idx, s);
  if (err == ESHUTDOWN && c->ev) {
    c->ev->lost(c->owner, c, &cmd, 1, false, "server is shutting down");
    conn_server_shutdown(c);
    return;
  }
  if (err == ESHUTDOWN)
    conn_server_shutdown(c);
  conn_complete(c, &cmd, err);
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
    finish(c, x->idx, s, err);
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
  struct slot *s = table_lookup(c, x->r.cookie, &x->idx);
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
  want(x, RX_MAGIC, x->hdr, 4);
  finish(c, x->idx, s, x->r.error ? nbd_errno(x->r.error) : 0);
  return 0;
}

static int on_chunk_header(struct nbd_conn *c)
{
  struct rx *x = &c->rx;
  const struct nbd_reply *r = &x->r;
  struct slot *s = table_lookup(c, r->cookie, &x->idx);
  x->s = s;
  if (!s) {
    if (r->length > NBD_MAX_PAYLOAD + 8)
      return violation(c, "oversized chunk for unknown cookie");
    log_debug("%s: skipping chunk for unknown cookie 0x%llx", c->desc, (unsigned long long)r->cookie);
    skip_payload(c, r->length);
    return 0;
  }
  const struct nbd_cmd *cmd = &s->cmd;
  if (nbd_check_ext_reply(r, cmd->offset) != NBD_OK)
    return violation(c, "extended reply to %s at %llu says offset %llu, length %llu",
                     nbd_cmd_name(cmd->type), (unsigned long long)cmd->offset,
                     (unsigned long long)r->offset, (unsigned long long)r->length64);
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
  case NBD_REPLY_TYPE_BLOCK_STATUS_EXT:
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

/* Coverage of a READ by its chunks; a failure (overlap, too many chunks,
 * no memory) fails the read, and later chunks for it are skipped cheaply. */
static bool cover(struct nbd_conn *c, struct slot *s, uint32_t rel, uint32_t len)
{
  int r = nbd_coverage_add(&s->cov, rel, rel + len);
  if (r == 0)
    return true;
  if (s->err == 0)
    log_warn("%s: bad READ reply chunk at +%u (%s); failing the read", c->desc, rel,
             r == -1 ? "overlapping" : r == -2 ? "out of memory" : "too many chunks");
  note_error(s, EIO);
  return false;
}

static void on_data_prefix(struct nbd_conn *c)
{
  struct rx *x = &c->rx;
  struct slot *s = x->s;
  uint64_t off = 0;
  uint32_t len = 0;
  enum nbd_verdict v = nbd_parse_offset_data(x->small, x->r.length, s->cmd.offset,
                                             (uint32_t)s->cmd.count, &off, &len);
  uint32_t rel = (uint32_t)(off - s->cmd.offset);
  if (v == NBD_OK && s->err == 0 && cover(c, s, rel, len)) {
    want(x, RX_DATA, (uint8_t *)s->cmd.buf + rel, len);
  } else {
    if (v != NBD_OK && s->err == 0)
      log_warn("%s: OFFSET_DATA chunk outside the request; failing the read", c->desc);
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
  enum nbd_verdict v = nbd_parse_offset_hole(x->small, x->r.length, s->cmd.offset,
                                             (uint32_t)s->cmd.count, &off, &len);
  uint32_t rel = (uint32_t)(off - s->cmd.offset);
  if (v != NBD_OK) {
    if (s->err == 0)
      log_warn("%s: bad OFFSET_HOLE chunk; failing the read", c->desc);
    note_error(s, EIO);
  } else if (s->err == 0 && cover(c, s, rel, len)) {
    memset((uint8_t *)s->cmd.buf + rel, 0, len);
  }
  chunk_finished(c);
}

static void on_block_status(struct nbd_conn *c)
{
  struct rx *x = &c->rx;
  struct slot *s = x->s;
  bool is_ext = x->r.type == NBD_REPLY_TYPE_BLOCK_STATUS_EXT;
  uint32_t ctx = 0, n = 0, max = x->r.length / (is_ext ? 16 : 8) + 1;
  struct nbd_extent *ext = malloc(max * sizeof *ext);
  bool req_one = s->cmd.flags & NBD_CMD_FLAG_REQ_ONE;
  enum nbd_verdict v = !ext ? NBD_FAIL
                       : is_ext ? nbd_parse_block_status_ext(x->big, x->r.length, s->cmd.count,
                                                             req_one, &ctx, ext, max, &n)
                                : nbd_parse_block_status(x->big, x->r.length, s->cmd.count,
                                                         req_one, &ctx, ext, max, &n);
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
  if (nbd_verbose) { /* the server's own words; the failure itself is logged above us */
    static struct log_limit server_errors = LOG_LIMIT_INIT;
    char m[256];
    nbd_sanitize(m, sizeof m, msg, msglen);
    log_failure(&server_errors, "%s: server error on %s at offset %llu: %s (%s)", c->desc,
                nbd_cmd_name(s->cmd.type), (unsigned long long)s->cmd.offset,
                strerror(nbd_errno(err)), m);
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
    enum nbd_reply_mode mode = c->extended     ? NBD_REPLIES_EXTENDED
                               : c->structured ? NBD_REPLIES_STRUCTURED
                                               : NBD_REPLIES_SIMPLE;
    size_t hlen = nbd_reply_header_len(x->hdr, mode);
    if (hlen == 0)
      return violation(c, "bad reply magic 0x%08x", nbd_get32(x->hdr));
    want(x, RX_HEADER, x->hdr + 4, hlen - 4);
    return 0;
  }
  case RX_HEADER:
    nbd_decode_reply(x->hdr, &x->r);
    return x->r.structured ? on_chunk_header(c) : on_simple_header(c);
  case RX_SIMPLE_DATA: {
    struct slot *s = x->s;
    x->s = NULL;
    want(x, RX_MAGIC, x->hdr, 4);
    finish(c, x->idx, s, 0);
    return 0;
  }
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
  case RX_DISCARD:
    want(x, RX_DISCARD, NULL, SIZE_MAX);
    return 0;
  }
  return 0;
}

int rx_feed(struct nbd_conn *c)
{
  struct rx *x = &c->rx;
  if (!c->rbuf && !(c->rbuf = malloc(RBUF_SIZE))) {
    conn_lose(c, true, "out of memory for the receive buffer");
    return -1;
  }
  size_t budget = FEED_BUDGET;
  /* Once a recv came back short, the socket is empty: asking again would
   * only return EAGAIN (a syscall per reply at queue depth 1); epoll is
   * level-triggered and reports what arrives meanwhile. */
  bool drained = false;
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
      if (budget == 0)
        return 1;
      if (drained)
        return 0;
      ssize_t r;
      size_t asked;
      if (x->dst && left >= RECV_DIRECT_MIN) {
        asked = left;
        r = c->t->ops->recv(c->t, x->dst + x->got, left);
        if (r > 0)
          x->got += (size_t)r;
      } else {
        asked = RBUF_SIZE;
        r = c->t->ops->recv(c->t, c->rbuf, RBUF_SIZE);
        if (r > 0) {
          c->rpos = 0;
          c->rend = (size_t)r;
        }
      }
      drained = r > 0 && (size_t)r < asked && c->t->short_recv_drains;
      if (r > 0) {
        c->last_rx_ms = conn_now_ms();
        budget = (size_t)r < budget ? budget - (size_t)r : 0;
        continue;
      }
      if (r == -EAGAIN)
        return 0;
      if (r == 0) {
        conn_lose(c, false, (x->st == RX_MAGIC && x->got == 0) || x->st == RX_DISCARD
                                ? "server closed the connection"
                                : "server closed the connection in the middle of a reply");
      } else {
        char why[200];
        snprintf(why, sizeof why, "receive failed: %s",
                 c->t->last_error[0] ? c->t->last_error : strerror((int)-r));
        conn_lose(c, false, why);
      }
      c->rx_over = true;
      return -1;
    }
    if (rx_step(c) < 0)
      return -1;
    if (x->st != RX_DISCARD && nbd_conn_state(c) == NBD_CONN_ABANDONED)
      return -1; /* lost while parsing: hand back what is in flight first */
  }
}
