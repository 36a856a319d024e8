/* handshake.c: option haggling.  Lock-step: one option, then its replies. */
#include "handshake.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"

struct hs {
  struct transport *t;
  struct timespec deadline;
  bool has_deadline;
  bool fixed;
  bool no_zeroes;
  char *err;
  size_t errlen;
};

static int hs_fail(struct hs *h, int code, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(h->err, h->errlen, fmt, ap);
  va_end(ap);
  return code;
}

/* Bound the next socket wait by what is left of the handshake deadline. */
static int hs_arm_timeout(struct hs *h)
{
  if (!h->has_deadline)
    return 0;
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  long ms = (h->deadline.tv_sec - now.tv_sec) * 1000 + (h->deadline.tv_nsec - now.tv_nsec) / 1000000;
  if (ms <= 0)
    return -ETIMEDOUT;
  transport_set_timeouts(h->t, (int)ms, (int)ms);
  return 0;
}

static int hs_recv(struct hs *h, void *buf, size_t len, const char *what)
{
  char *p = buf;
  while (len) {
    if (hs_arm_timeout(h) < 0)
      return hs_fail(h, -ETIMEDOUT, "handshake timed out waiting for %s", what);
    ssize_t r = h->t->ops->recv(h->t, p, len);
    if (r == 0)
      return hs_fail(h, -ECONNRESET, "server closed the connection during the handshake (waiting for %s)", what);
    if (r == -EAGAIN)
      continue; /* loop re-checks the deadline */
    if (r < 0 && h->t->last_error[0])
      return hs_fail(h, (int)r, "%s (waiting for %s)", h->t->last_error, what);
    if (r < 0)
      return hs_fail(h, (int)r, "receiving %s: %s", what, strerror((int)-r));
    p += r;
    len -= (size_t)r;
  }
  return 0;
}

static int hs_send(struct hs *h, const void *a, size_t alen, const void *b, size_t blen)
{
  struct iovec iov[2] = { { (void *)a, alen }, { (void *)b, blen } };
  int r = hs_arm_timeout(h);
  if (r == 0)
    r = transport_send_all(h->t, iov, blen ? 2 : 1);
  if (r < 0 && h->t->last_error[0])
    return hs_fail(h, r, "%s", h->t->last_error);
  if (r == -EPIPE || r == -ECONNRESET)
    return hs_fail(h, -ECONNRESET, "server closed the connection during the handshake");
  if (r < 0)
    return hs_fail(h, r == -EAGAIN ? -ETIMEDOUT : r, "sending to server: %s",
                   strerror(r == -EAGAIN ? ETIMEDOUT : -r));
  return 0;
}

static int send_option(struct hs *h, uint32_t opt, const void *data, uint32_t len)
{
  uint8_t hdr[NBD_OPT_HDR_LEN];
  nbd_encode_opt_header(hdr, opt, len);
  return hs_send(h, hdr, sizeof hdr, data, len);
}

/* Read one option reply for opt into payload (allocated, NUL-terminated). */
static int recv_reply(struct hs *h, uint32_t opt, struct nbd_opt_reply *r, uint8_t **payload)
{
  uint8_t hdr[NBD_OPT_REPLY_HDR_LEN];
  int e = hs_recv(h, hdr, sizeof hdr, "an option reply");
  if (e < 0)
    return e;
  if (nbd_decode_opt_reply(hdr, r) < 0)
    return hs_fail(h, -EPROTO, "protocol violation: bad option reply magic");
  if (r->opt != opt)
    return hs_fail(h, -EPROTO, "protocol violation: reply to %s while waiting for %s",
                   nbd_opt_name(r->opt), nbd_opt_name(opt));
  bool known = r->type == NBD_REP_ACK || r->type == NBD_REP_SERVER || r->type == NBD_REP_INFO ||
               r->type == NBD_REP_META_CONTEXT || (r->type & NBD_REP_FLAG_ERROR);
  if (!known)
    return hs_fail(h, -EPROTO, "protocol violation: unknown reply type 0x%x to %s", r->type,
                   nbd_opt_name(opt));
  if (r->len > nbd_opt_reply_cap(r->type))
    return hs_fail(h, -EPROTO, "protocol violation: %u-byte %s reply to %s is too long", r->len,
                   nbd_rep_name(r->type), nbd_opt_name(opt));
  *payload = malloc(r->len + 1);
  if (!*payload)
    return hs_fail(h, -ENOMEM, "out of memory");
  e = hs_recv(h, *payload, r->len, "an option reply payload");
  if (e < 0) {
    free(*payload);
    *payload = NULL;
    return e;
  }
  (*payload)[r->len] = 0;
  return 0;
}

/* Turn an error reply into a negative errno and message. */
static int reply_error(struct hs *h, const struct nbd_opt_reply *r, const uint8_t *msg,
                       const char *what)
{
  char smsg[256] = "";
  if (r->len)
    nbd_sanitize(smsg, sizeof smsg, msg, r->len);
  int code;
  switch (r->type) {
  case NBD_REP_ERR_UNKNOWN: code = -ENOENT; break;
  case NBD_REP_ERR_POLICY: code = -EACCES; break;
  case NBD_REP_ERR_TLS_REQD:
    return hs_fail(h, -EACCES, "%s: server requires TLS (use an nbds:// URI or --tls=on)", what);
  case NBD_REP_ERR_UNSUP: case NBD_REP_ERR_PLATFORM: code = -ENOTSUP; break;
  case NBD_REP_ERR_SHUTDOWN: code = -ESHUTDOWN; break;
  default: code = -EINVAL; break;
  }
  return hs_fail(h, code, "%s: %s%s%s", what, nbd_rep_name(r->type), smsg[0] ? ": " : "", smsg);
}

/* Soft end of the handshake: NBD_OPT_ABORT, then accept ACK or EOF. */
static void send_abort(struct hs *h)
{
  /* Failures here must not overwrite the reason already recorded. */
  char *saved = h->err;
  size_t savedlen = h->errlen;
  char scratch[64];
  h->err = scratch;
  h->errlen = sizeof scratch;
  if (send_option(h, NBD_OPT_ABORT, NULL, 0) == 0) {
    struct nbd_opt_reply r;
    uint8_t *p = NULL;
    if (recv_reply(h, NBD_OPT_ABORT, &r, &p) == 0)
      free(p);
  }
  h->err = saved;
  h->errlen = savedlen;
}

static int greet(struct hs *h, const struct nbd_hs_opts *o, struct nbd_session *s)
{
  uint8_t g[NBD_OLDSTYLE_GREETING_LEN];
  int e = hs_recv(h, g, 16, "the server greeting");
  if (e < 0)
    return e;
  if (nbd_get64(g) != NBD_INIT_MAGIC)
    return hs_fail(h, -EPROTO, "not an NBD server (bad greeting magic)");
  uint64_t m = nbd_get64(g + 8);
  if (m == NBD_OLDSTYLE_MAGIC) {
    e = hs_recv(h, g + 16, sizeof g - 16, "the oldstyle greeting");
    if (e < 0)
      return e;
    if (o->export_name[0])
      return hs_fail(h, -ENOTSUP, "server speaks the oldstyle protocol, which has no export names (asked for '%s')",
                     o->export_name);
    s->oldstyle = true;
    nbd_parse_oldstyle(g, &s->info.size, &s->info.tflags);
    s->info.have_export = true;
    return 1; /* already in transmission */
  }
  if (m != NBD_IHAVEOPT)
    return hs_fail(h, -EPROTO, "not an NBD server (unknown protocol style)");
  e = hs_recv(h, g + 16, 2, "the handshake flags");
  if (e < 0)
    return e;
  uint16_t gflags = nbd_get16(g + 16);
  h->fixed = gflags & NBD_FLAG_FIXED_NEWSTYLE;
  h->no_zeroes = gflags & NBD_FLAG_NO_ZEROES;
  uint8_t cf[4];
  nbd_put32(cf, (h->fixed ? NBD_FLAG_C_FIXED_NEWSTYLE : 0) |
                (h->no_zeroes ? NBD_FLAG_C_NO_ZEROES : 0));
  s->fixed_newstyle = h->fixed;
  return hs_send(h, cf, sizeof cf, NULL, 0);
}

/* An option without data that the server takes (ACK: *acked) or declines
 * (any error: we go on without it). */
static int simple_option(struct hs *h, uint32_t opt, bool *acked)
{
  *acked = false;
  int e = send_option(h, opt, NULL, 0);
  if (e < 0)
    return e;
  struct nbd_opt_reply r;
  uint8_t *p;
  e = recv_reply(h, opt, &r, &p);
  if (e < 0)
    return e;
  free(p);
  if (r.type == NBD_REP_ACK)
    *acked = true;
  else if (!(r.type & NBD_REP_FLAG_ERROR))
    return hs_fail(h, -EPROTO, "protocol violation: %s reply to %s", nbd_rep_name(r.type),
                   nbd_opt_name(opt));
  return 0;
}

/* Extended headers imply structured replies (chunks), so both are set. */
static int negotiate_extended(struct hs *h, struct nbd_session *s)
{
  bool acked;
  int e = simple_option(h, NBD_OPT_EXTENDED_HEADERS, &acked);
  if (e == 0 && acked)
    s->extended = s->structured = true;
  return e;
}

/* Extended headers where the server has them (64-bit lengths), else
 * structured replies; a refusal of either only means going without. */
static int negotiate_replies(struct hs *h, const struct nbd_hs_opts *o, struct nbd_session *s)
{
  int e = o->extended ? negotiate_extended(h, s) : 0;
  if (e < 0 || s->extended)
    return e;
  bool acked;
  e = simple_option(h, NBD_OPT_STRUCTURED_REPLY, &acked);
  s->structured = e == 0 && acked;
  return e;
}

/* Select base:allocation; failure only means no block status. */
static int negotiate_meta(struct hs *h, const char *name, struct nbd_session *s)
{
  static const char *const q[] = { "base:allocation" };
  size_t nlen = strlen(name);
  uint8_t *buf = malloc(nlen + 64);
  if (!buf)
    return hs_fail(h, -ENOMEM, "out of memory");
  int len = nbd_encode_meta_request(buf, nlen + 64, name, nlen, q, 1);
  int e = len < 0 ? hs_fail(h, -EINVAL, "export name too long")
                  : send_option(h, NBD_OPT_SET_META_CONTEXT, buf, (uint32_t)len);
  free(buf);
  if (e < 0)
    return e;
  bool have = false, dup = false;
  uint32_t id = 0;
  for (unsigned count = 0;; count++) {
    struct nbd_opt_reply r;
    uint8_t *p;
    if (count > 64)
      return hs_fail(h, -EPROTO, "protocol violation: endless meta context replies");
    e = recv_reply(h, NBD_OPT_SET_META_CONTEXT, &r, &p);
    if (e < 0)
      return e;
    if (r.type == NBD_REP_META_CONTEXT) {
      uint32_t cid, cnlen;
      const uint8_t *cname;
      if (nbd_parse_meta_reply(p, r.len, &cid, &cname, &cnlen) < 0) {
        free(p);
        return hs_fail(h, -EPROTO, "protocol violation: malformed META_CONTEXT reply");
      }
      if (cnlen == strlen(q[0]) && !memcmp(cname, q[0], cnlen)) {
        dup = dup || have; /* selected twice: do without block status */
        have = true;
        id = cid;
      }
      free(p);
      continue;
    }
    free(p);
    if (r.type == NBD_REP_ACK) {
      s->have_base_alloc = have && !dup;
      s->base_alloc_id = id;
      return 0;
    }
    if (r.type == NBD_REP_ERR_EXT_HEADER_REQD && !s->extended)
      return 2; /* the caller negotiates extended headers and asks again */
    if (r.type & NBD_REP_FLAG_ERROR) { /* no block status, not fatal */
      s->have_base_alloc = false;
      return 0;
    }
    return hs_fail(h, -EPROTO, "protocol violation: %s reply to NBD_OPT_SET_META_CONTEXT",
                   nbd_rep_name(r.type));
  }
}

/* Upgrade to TLS before anything else is said.  Returns 0 when TLS is on,
 * 1 when the server declined and plaintext may go on, or a negative errno. */
static int starttls(struct hs *h, const struct nbd_hs_opts *o)
{
  bool required = o->tls_mode == TLS_REQUIRE;
  if (!h->fixed) {
    if (required)
      return hs_fail(h, -ENOTSUP, "server cannot do TLS (it does not speak fixed newstyle); refusing to continue without TLS");
    return 1;
  }
  int e = send_option(h, NBD_OPT_STARTTLS, NULL, 0);
  if (e < 0)
    return e;
  struct nbd_opt_reply r;
  uint8_t *p;
  e = recv_reply(h, NBD_OPT_STARTTLS, &r, &p);
  if (e < 0)
    return e;
  if (r.type == NBD_REP_ACK) {
    free(p);
    char why[512];
    if (tls_start(h->t, o->tls, o->timeout_s, why, sizeof why) < 0)
      return hs_fail(h, -EPROTO, "%s", why);
    return 0;
  }
  if (!(r.type & NBD_REP_FLAG_ERROR)) {
    free(p);
    return hs_fail(h, -EPROTO, "protocol violation: %s reply to NBD_OPT_STARTTLS", nbd_rep_name(r.type));
  }
  char smsg[200] = "";
  nbd_sanitize(smsg, sizeof smsg, p, r.len);
  free(p);
  if (!required)
    return 1;
  send_abort(h);
  return hs_fail(h, -EACCES, "server refused TLS (%s%s%s); refusing to continue without TLS",
                 nbd_rep_name(r.type), smsg[0] ? ": " : "", smsg);
}

/* The TLS step of both negotiations: 0 to go on, or a negative errno. */
static int maybe_tls(struct hs *h, const struct nbd_hs_opts *o, bool *active)
{
  *active = false;
  if (o->tls_mode == TLS_OFF)
    return 0;
  int e = starttls(h, o);
  if (e < 0)
    return e;
  *active = e == 0;
  return 0;
}

/* NBD_OPT_GO or NBD_OPT_INFO.  Returns 0, 1 when the server does not know
 * the option (caller falls back), 2 when it wants extended headers first
 * (NBD_REP_ERR_EXT_HEADER_REQD), or a negative errno. */
static int info_or_go(struct hs *h, uint32_t opt, const char *name, struct nbd_export_info *info)
{
  static const uint16_t want[] = { NBD_INFO_BLOCK_SIZE, NBD_INFO_NAME, NBD_INFO_DESCRIPTION };
  size_t nlen = strlen(name);
  uint8_t *buf = malloc(nlen + 16);
  if (!buf)
    return hs_fail(h, -ENOMEM, "out of memory");
  int len = nbd_encode_info_request(buf, nlen + 16, name, nlen, want, 3);
  int e = len < 0 ? hs_fail(h, -EINVAL, "export name too long")
                  : send_option(h, opt, buf, (uint32_t)len);
  free(buf);
  if (e < 0)
    return e;
  struct nbd_export_info got = { 0 };
  for (unsigned count = 0;; count++) {
    struct nbd_opt_reply r;
    uint8_t *p;
    if (count > 64) {
      nbd_export_info_free(&got);
      return hs_fail(h, -EPROTO, "protocol violation: endless INFO replies");
    }
    e = recv_reply(h, opt, &r, &p);
    if (e < 0) {
      nbd_export_info_free(&got);
      return e;
    }
    if (r.type == NBD_REP_INFO) {
      struct nbd_export_info before = got;
      int pe = nbd_parse_info_reply(p, r.len, &got);
      free(p);
      if (pe < 0) {
        nbd_export_info_free(&got);
        return hs_fail(h, -EPROTO, "protocol violation: malformed NBD_REP_INFO");
      }
      if (before.have_export && (before.size != got.size || before.tflags != got.tflags)) {
        nbd_export_info_free(&got);
        return hs_fail(h, -EPROTO, "protocol violation: conflicting export sizes or flags");
      }
      continue;
    }
    if (r.type == NBD_REP_ACK) {
      free(p);
      if (!got.have_export) {
        nbd_export_info_free(&got);
        return hs_fail(h, -EPROTO, "protocol violation: %s acknowledged without export information",
                       nbd_opt_name(opt));
      }
      *info = got;
      return 0;
    }
    nbd_export_info_free(&got); /* an error discards everything from this exchange */
    if (r.type == NBD_REP_ERR_UNSUP || r.type == NBD_REP_ERR_EXT_HEADER_REQD) {
      free(p);
      return r.type == NBD_REP_ERR_UNSUP ? 1 : 2;
    }
    if (!(r.type & NBD_REP_FLAG_ERROR)) {
      free(p);
      return hs_fail(h, -EPROTO, "protocol violation: %s reply to %s", nbd_rep_name(r.type),
                     nbd_opt_name(opt));
    }
    char what[128], sname[96];
    nbd_sanitize(sname, sizeof sname, (const uint8_t *)name, nlen);
    snprintf(what, sizeof what, "export '%s'", sname);
    e = reply_error(h, &r, p, what);
    free(p);
    return e;
  }
}

/* The meta context (when wanted), then NBD_OPT_GO.  A server that answers
 * either with NBD_REP_ERR_EXT_HEADER_REQD gets extended headers, then both
 * again (a selection made before may not survive the switch).  Returns as
 * info_or_go, never 2. */
static int select_and_go(struct hs *h, const struct nbd_hs_opts *o, struct nbd_session *s)
{
  for (;;) {
    int e = 0;
    if (s->structured && o->block_status)
      e = negotiate_meta(h, o->export_name, s);
    if (e == 0)
      e = info_or_go(h, NBD_OPT_GO, o->export_name, &s->info);
    if (e != 2)
      return e;
    if (s->extended)
      return hs_fail(h, -EPROTO, "protocol violation: server demands extended headers, which are in use");
    if (!o->structured || !o->extended)
      return hs_fail(h, -ENOTSUP, "server requires extended headers, which were not asked for");
    e = negotiate_extended(h, s);
    if (e < 0)
      return e;
    if (!s->extended)
      return hs_fail(h, -ENOTSUP, "server requires extended headers but refused NBD_OPT_EXTENDED_HEADERS");
  }
}

/* NBD_OPT_EXPORT_NAME: no framed reply, the server just hangs up on failure. */
static int export_name(struct hs *h, const char *name, struct nbd_session *s)
{
  int e = send_option(h, NBD_OPT_EXPORT_NAME, name, (uint32_t)strlen(name));
  if (e < 0)
    return e;
  uint8_t b[134];
  size_t need = h->no_zeroes ? 10 : 134;
  e = hs_recv(h, b, need, "the export information");
  if (e == -ECONNRESET)
    return hs_fail(h, -ENOENT, "server closed the connection: export '%s' unavailable or TLS required",
                   name);
  if (e < 0)
    return e;
  s->info.size = nbd_get64(b);
  s->info.tflags = nbd_get16(b + 8);
  s->info.have_export = true;
  return 0;
}

/* Check what the server told us before the first command. */
static int validate(struct hs *h, struct nbd_session *s)
{
  struct nbd_export_info *i = &s->info;
  if (i->size > INT64_MAX)
    return hs_fail(h, -EPROTO, "server reported an export size of %llu bytes, which is too large",
                   (unsigned long long)i->size);
  if (i->have_block_size) {
    const char *why = nbd_check_block_sizes(i->min_block, i->pref_block, i->max_block);
    if (why)
      return hs_fail(h, -EPROTO, "server sent invalid block sizes %u/%u/%u: %s", i->min_block,
                     i->pref_block, i->max_block, why);
  } else {
    i->min_block = 1;
    i->pref_block = 4096;
    i->max_block = NBD_MAX_PAYLOAD;
  }
  i->max_block_advertised = i->max_block;
  if (i->max_block > NBD_MAX_PAYLOAD)
    i->max_block = NBD_MAX_PAYLOAD;
  if (i->size % i->min_block) {
    log_warn("export size %llu is not a multiple of the minimum block size %u; the tail is not reachable",
             (unsigned long long)i->size, i->min_block);
    i->size -= i->size % i->min_block;
  }
  if (!(i->tflags & NBD_FLAG_HAS_FLAGS))
    i->tflags = NBD_FLAG_HAS_FLAGS; /* flags field not valid: use no optional features */
  if (!s->structured)
    i->tflags &= (uint16_t)~NBD_FLAG_SEND_DF;
  if (!(i->tflags & NBD_FLAG_SEND_WRITE_ZEROES))
    i->tflags &= (uint16_t)~NBD_FLAG_SEND_FAST_ZERO;
  return 0;
}

static void hs_init(struct hs *h, struct transport *t, const struct nbd_hs_opts *o, char *err,
                    size_t errlen)
{
  memset(h, 0, sizeof *h);
  h->t = t;
  h->err = err;
  h->errlen = errlen;
  if (o->timeout_s > 0) {
    clock_gettime(CLOCK_MONOTONIC, &h->deadline);
    h->deadline.tv_sec += o->timeout_s;
    h->has_deadline = true;
  }
}

int nbd_negotiate(struct transport *t, const struct nbd_hs_opts *o, struct nbd_session *s,
                  char *err, size_t errlen)
{
  struct hs h;
  hs_init(&h, t, o, err, errlen);
  memset(s, 0, sizeof *s);
  int e = greet(&h, o, s);
  if (e == 1 && o->tls_mode == TLS_REQUIRE)
    e = hs_fail(&h, -ENOTSUP, "server speaks the oldstyle protocol, which cannot do TLS");
  if (e == 0)
    e = maybe_tls(&h, o, &s->tls);
  if (e == 0) {
    if (!h.fixed) {
      e = export_name(&h, o->export_name, s);
    } else {
      if (o->structured)
        e = negotiate_replies(&h, o, s);
      if (e == 0) {
        e = select_and_go(&h, o, s);
        s->used_go = e == 0;
        if (e == 1 && s->extended) /* EXPORT_NAME is forbidden with extended headers */
          e = hs_fail(&h, -EPROTO, "protocol violation: NBD_OPT_GO unsupported after extended headers were negotiated");
        else if (e == 1)
          e = export_name(&h, o->export_name, s);
        else if (e < 0 && e != -EPROTO && e != -ECONNRESET && e != -ETIMEDOUT)
          send_abort(&h);
      }
    }
  }
  if (e >= 0)
    e = validate(&h, s);
  if (e < 0)
    nbd_session_free(s);
  transport_set_timeouts(t, 0, 0);
  return e < 0 ? e : 0;
}

void nbd_export_info_free(struct nbd_export_info *info)
{
  free(info->name);
  free(info->description);
  info->name = info->description = NULL;
}

void nbd_session_free(struct nbd_session *s)
{
  nbd_export_info_free(&s->info);
}

void nbd_listed_exports_free(struct nbd_listed_export *e, struct nbd_export_info *infos, int n)
{
  for (int i = 0; i < n; i++) {
    if (e) {
      free(e[i].name);
      free(e[i].description);
    }
    if (infos)
      nbd_export_info_free(&infos[i]);
  }
  free(e);
  free(infos);
}

int nbd_list_exports(struct transport *t, const struct nbd_hs_opts *o,
                     struct nbd_listed_export **out, struct nbd_export_info **infos,
                     char *err, size_t errlen)
{
  struct hs h;
  struct nbd_session s = { 0 };
  hs_init(&h, t, o, err, errlen);
  *out = NULL;
  if (infos)
    *infos = NULL;
  int e = greet(&h, o, &s);
  if (e == 1)
    return hs_fail(&h, -ENOTSUP, "server speaks the oldstyle protocol, which cannot list exports");
  if (e < 0)
    return e;
  if (!h.fixed)
    return hs_fail(&h, -ENOTSUP, "server does not speak fixed newstyle and cannot list exports");
  bool tls;
  e = maybe_tls(&h, o, &tls);
  if (e < 0)
    return e;
  e = send_option(&h, NBD_OPT_LIST, NULL, 0);
  if (e < 0)
    return e;
  struct nbd_listed_export *list = NULL;
  int n = 0, cap = 0;
  for (;;) {
    struct nbd_opt_reply r;
    uint8_t *p;
    e = recv_reply(&h, NBD_OPT_LIST, &r, &p);
    if (e < 0)
      goto fail;
    if (r.type == NBD_REP_ACK) {
      free(p);
      break;
    }
    if (r.type != NBD_REP_SERVER) {
      e = r.type == NBD_REP_ERR_POLICY
              ? reply_error(&h, &r, p, "server refused to list its exports (nbd-server lists them only with 'allowlist = true')")
          : (r.type & NBD_REP_FLAG_ERROR)
              ? reply_error(&h, &r, p, "server refused to list its exports")
              : hs_fail(&h, -EPROTO, "protocol violation: %s reply to NBD_OPT_LIST",
                        nbd_rep_name(r.type));
      free(p);
      if (r.type & NBD_REP_FLAG_ERROR)
        send_abort(&h);
      goto fail;
    }
    const uint8_t *nm, *ds;
    uint32_t nl, dl;
    if (nbd_parse_server_reply(p, r.len, &nm, &nl, &ds, &dl) < 0) {
      free(p);
      e = hs_fail(&h, -EPROTO, "protocol violation: malformed NBD_REP_SERVER");
      goto fail;
    }
    if (n >= 65536) {
      free(p);
      e = hs_fail(&h, -EPROTO, "protocol violation: endless export list");
      goto fail;
    }
    if (memchr(nm, 0, nl)) { /* NUL in a name: cannot be opened, drop it */
      free(p);
      continue;
    }
    if (n == cap) {
      cap = cap ? cap * 2 : 16;
      void *nl2 = realloc(list, (size_t)cap * sizeof *list);
      if (!nl2) {
        free(p);
        e = hs_fail(&h, -ENOMEM, "out of memory");
        goto fail;
      }
      list = nl2;
    }
    list[n].name = strndup((const char *)nm, nl);
    list[n].description = strndup((const char *)ds, dl);
    n++;
    free(p);
  }
  if (infos && n > 0) {
    *infos = calloc((size_t)n, sizeof **infos);
    if (!*infos) {
      e = hs_fail(&h, -ENOMEM, "out of memory");
      goto fail;
    }
    for (int i = 0; i < n; i++) {
      e = info_or_go(&h, NBD_OPT_INFO, list[i].name, &(*infos)[i]);
      if (e == 1) /* no NBD_OPT_INFO: sizes unknown until opened */
        break;
      if (e == -EPROTO || e == -ECONNRESET || e == -ETIMEDOUT || e == -ENOMEM)
        goto fail;
      /* Other per-export errors leave that entry without information. */
      e = 0;
    }
  }
  send_abort(&h);
  transport_set_timeouts(t, 0, 0);
  *out = list;
  return n;

fail:
  nbd_listed_exports_free(list, infos ? *infos : NULL, n);
  if (infos)
    *infos = NULL;
  return e;
}
