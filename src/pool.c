/* pool.c: connection pool, dispatch and splitting. */
#include "pool.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "extents.h"
#include "log.h"
#include "loop.h"

void nbd_op_fail(struct nbd_op *op, int err)
{
  int zero = 0;
  if (err)
    atomic_compare_exchange_strong(&op->err, &zero, err);
}

void nbd_op_put(struct nbd_op *op)
{
  if (atomic_fetch_sub_explicit(&op->pending, 1, memory_order_acq_rel) == 1)
    op->complete(op, atomic_load_explicit(&op->err, memory_order_relaxed));
}

static void piece_done(void *arg, int err)
{
  struct nbd_op *op = arg;
  nbd_op_fail(op, err);
  nbd_op_put(op);
}

/* WRITE, TRIM and WRITE_ZEROES: count the write for flush accounting, and
 * forget cached extents again (a scan may have started since we sent it). */
static void write_piece_done(void *arg, int err)
{
  struct nbd_op *op = arg;
  if (!err)
    atomic_fetch_add_explicit(&op->pool->writes_done, 1, memory_order_release);
  extents_invalidate(op->pool, 0, 0);
  piece_done(arg, err);
}

static void flush_done(void *arg, int err)
{
  struct nbd_op *op = arg;
  if (!err) {
    uint_fast64_t cur = atomic_load(&op->pool->flushed_upto);
    while (cur < op->flush_snapshot &&
           !atomic_compare_exchange_weak(&op->pool->flushed_upto, &cur, op->flush_snapshot))
      ;
  }
  piece_done(arg, err);
}

/* The live connection with the fewest requests in flight, preferring those
 * served by the calling worker: its reply then comes back to the same
 * thread, with no hand-off.  A local connection much busier than a remote
 * one loses that preference. */
static struct nbd_conn *pick(struct nbd_pool *p)
{
  if (p->n == 1)
    return nbd_conn_dead(p->conns[0]) ? NULL : p->conns[0];
  unsigned start = atomic_fetch_add_explicit(&p->rr, 1, memory_order_relaxed);
  struct nbd_loop *here = loop_current();
  struct nbd_conn *best = NULL, *best_local = NULL;
  unsigned best_load = ~0u, local_load = ~0u;
  for (int i = 0; i < p->n; i++) {
    struct nbd_conn *c = p->conns[(start + (unsigned)i) % (unsigned)p->n];
    if (nbd_conn_dead(c))
      continue;
    unsigned load = nbd_conn_inflight(c);
    if (load < best_load) {
      best = c;
      best_load = load;
    }
    if (here && nbd_conn_loop(c) == here && load < local_load) {
      best_local = c;
      local_load = load;
    }
  }
  if (best_local && local_load <= 2 * best_load + 8)
    return best_local;
  return best;
}

/* Send one command; on a dead pool the piece fails with EIO. */
static void submit(struct nbd_pool *p, struct nbd_op *op, const struct nbd_cmd *cmd)
{
  atomic_fetch_add_explicit(&op->pending, 1, memory_order_relaxed);
  for (;;) {
    struct nbd_conn *c = pick(p);
    if (!c) {
      cmd->done(op, EIO);
      return;
    }
    if (nbd_conn_submit(c, cmd) == 0)
      return;
    /* That connection died meanwhile: try another. */
  }
}

void nbd_pool_io(struct nbd_pool *p, struct nbd_op *op, uint16_t type, uint16_t flags,
                 uint64_t offset, uint64_t len, void *buf)
{
  const struct nbd_export_info *i = &p->s.info;
  op->pool = p;
  /* READ and WRITE carry payloads up to the maximum block size; TRIM and
   * WRITE_ZEROES only need to fit the 32-bit length field. */
  uint64_t piece = (type == NBD_CMD_READ || type == NBD_CMD_WRITE)
                       ? i->max_block
                       : (UINT32_MAX / i->pref_block) * (uint64_t)i->pref_block;
  piece -= piece % i->min_block;
  nbd_done_fn done = type == NBD_CMD_READ ? piece_done : write_piece_done;
  if (type != NBD_CMD_READ)
    extents_invalidate(p, offset, len);
  uint8_t *b = buf;
  while (len > 0) {
    uint32_t n = (uint32_t)(len < piece ? len : piece);
    struct nbd_cmd cmd = { .type = type, .flags = flags, .offset = offset, .count = n,
                           .buf = b, .done = done, .arg = op };
    submit(p, op, &cmd);
    offset += n;
    len -= n;
    if (b)
      b += n;
  }
}

void nbd_pool_block_status(struct nbd_pool *p, struct nbd_op *op, uint64_t offset, uint32_t len,
                           nbd_extents_fn fn)
{
  op->pool = p;
  struct nbd_cmd cmd = { .type = NBD_CMD_BLOCK_STATUS, .offset = offset, .count = len,
                         .done = piece_done, .extents = fn, .arg = op };
  submit(p, op, &cmd);
}

bool nbd_pool_needs_flush(const struct nbd_pool *p)
{
  return atomic_load(&p->flushed_upto) < atomic_load(&p->writes_done);
}

void nbd_pool_flush(struct nbd_pool *p, struct nbd_op *op)
{
  op->pool = p;
  if (!(p->s.info.tflags & NBD_FLAG_SEND_FLUSH) || !nbd_pool_needs_flush(p))
    return;
  /* With multi-conn, one FLUSH covers writes completed on every connection;
   * without it the pool has a single connection. */
  op->flush_snapshot = atomic_load(&p->writes_done);
  struct nbd_cmd cmd = { .type = NBD_CMD_FLUSH, .done = flush_done, .arg = op };
  submit(p, op, &cmd);
}

struct sync_op {
  struct nbd_op op;
  pthread_mutex_t lock;
  pthread_cond_t cond;
  bool done;
  int err;
};

static void sync_complete(struct nbd_op *op, int err)
{
  struct sync_op *s = (struct sync_op *)op;
  pthread_mutex_lock(&s->lock);
  s->done = true;
  s->err = err;
  pthread_cond_signal(&s->cond);
  pthread_mutex_unlock(&s->lock);
}

int nbd_pool_flush_sync(struct nbd_pool *p)
{
  struct sync_op s = { .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER };
  nbd_op_init(&s.op, sync_complete);
  nbd_pool_flush(p, &s.op);
  nbd_op_put(&s.op);
  pthread_mutex_lock(&s.lock);
  while (!s.done)
    pthread_cond_wait(&s.cond, &s.lock);
  pthread_mutex_unlock(&s.lock);
  return s.err;
}

/* Connect and negotiate one connection. */
static int open_one(const struct nbd_pool_opts *o, const char *desc, const char *server,
                    int index, struct nbd_session *s, struct nbd_conn **out, char *err,
                    size_t errlen)
{
  char why[1024];
  struct transport *t = transport_connect(o->uri, o->connect_timeout_s, why, sizeof why);
  if (!t) {
    snprintf(err, errlen, "%s", why);
    return -ECONNREFUSED;
  }
  struct nbd_hs_opts hs = { .export_name = o->export_name, .structured = true,
                            .block_status = true, .timeout_s = o->connect_timeout_s,
                            .tls_mode = o->tls_mode, .tls = o->tls };
  int r = nbd_negotiate(t, &hs, s, why, sizeof why);
  if (r < 0) {
    snprintf(err, errlen, "%s: %s", server, why); /* why names the export */
    transport_destroy(t);
    return r;
  }
  *out = nbd_conn_new(t, s, desc, index, o->timeout_s);
  if (!*out) {
    snprintf(err, errlen, "out of memory");
    nbd_session_free(s);
    transport_destroy(t);
    return -ENOMEM;
  }
  return 0;
}

static bool same_export(const struct nbd_session *a, const struct nbd_session *b)
{
  return a->info.size == b->info.size && a->info.tflags == b->info.tflags && a->tls == b->tls &&
         a->info.min_block == b->info.min_block && a->info.max_block == b->info.max_block &&
         a->structured == b->structured && a->have_base_alloc == b->have_base_alloc;
}

int nbd_pool_open(struct nbd_pool **out, const struct nbd_pool_opts *o, char *err, size_t errlen)
{
  struct nbd_pool *p = calloc(1, sizeof *p);
  int want = o->connections > 0 ? o->connections : 1;
  if (!p || !(p->conns = calloc((size_t)want, sizeof *p->conns))) {
    free(p);
    snprintf(err, errlen, "out of memory");
    return -ENOMEM;
  }
  char where[200], name[100];
  nbd_uri_describe(o->uri, where, sizeof where);
  nbd_sanitize(name, sizeof name, (const uint8_t *)o->export_name, strlen(o->export_name));
  snprintf(p->desc, sizeof p->desc, "%s export '%s'", where, name);
  if (o->tls_mode == TLS_REQUIRE)
    strncat(p->desc, " (TLS)", sizeof p->desc - strlen(p->desc) - 1);

  int r = open_one(o, p->desc, where, 0, &p->s, &p->conns[0], err, errlen);
  if (r < 0) {
    free(p->conns);
    free(p);
    return r;
  }
  rangelock_init(&p->lock);
  p->extents = extent_cache_new();
  if (!p->extents) {
    snprintf(err, errlen, "out of memory");
    nbd_conn_close(p->conns[0], 0);
    nbd_session_free(&p->s);
    free(p->conns);
    free(p);
    return -ENOMEM;
  }
  p->n = 1;
  if (want > 1 && !(p->s.info.tflags & NBD_FLAG_CAN_MULTI_CONN))
    log_info("%s: server does not allow multi-conn; using one connection", p->desc);
  else {
    for (int i = 1; i < want; i++) {
      struct nbd_session s;
      struct nbd_conn *c;
      char why[512];
      if (open_one(o, p->desc, where, i, &s, &c, why, sizeof why) < 0) {
        log_warn("extra connection %d failed (%s); continuing with %d", i, why, p->n);
        break;
      }
      bool same = same_export(&p->s, &s);
      nbd_session_free(&s);
      if (!same) {
        log_warn("%s: connection %d sees a different export; continuing with %d", p->desc, i, p->n);
        nbd_conn_close(c, 0);
        break;
      }
      p->conns[p->n++] = c;
    }
  }
  *out = p;
  return 0;
}

int nbd_pool_attach(struct nbd_pool *p, struct nbd_loop **loops, int nloops)
{
  for (int i = 0; i < p->n; i++) {
    int r = nbd_conn_attach(p->conns[i], loops[i % nloops]);
    if (r < 0)
      return r;
  }
  return 0;
}

void nbd_pool_shutdown(struct nbd_pool *p)
{
  /* Answer everything in flight first, so the FLUSH covers all of it. */
  for (int i = 0; i < p->n; i++)
    nbd_conn_drain(p->conns[i], 30);
  if (nbd_pool_needs_flush(p)) {
    int r = nbd_pool_flush_sync(p);
    if (r)
      log_error("%s: final flush failed: %s", p->desc, strerror(r));
  }
  for (int i = 0; i < p->n; i++)
    nbd_conn_disconnect(p->conns[i]);
}

void nbd_pool_free(struct nbd_pool *p)
{
  if (!p)
    return;
  for (int i = 0; i < p->n; i++)
    nbd_conn_free(p->conns[i]);
  nbd_session_free(&p->s);
  rangelock_destroy(&p->lock);
  extent_cache_free(p->extents);
  free(p->conns);
  free(p);
}
