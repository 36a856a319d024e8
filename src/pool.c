/* pool.c: the connections of one export: dispatch, splitting, and keeping
 * the export usable while connections come and go.
 *
 * Each connection slot goes EMPTY -> CONNECTING -> READY and back to EMPTY
 * when its connection is lost; a manager thread per pool refills empty
 * slots with backoff (handshakes never run on a worker loop).  Requests
 * normally go straight to the least busy READY connection.  They wait in
 * the pool's queue instead (the pool is "slow") while:
 *   - no connection is READY (until --reconnect-delay after first sent),
 *   - acknowledged but unflushed writes are being replayed after a loss,
 *   - a write overlaps a fence: a write whose fate is unknown because its
 *     connection was abandoned while it was in flight,
 *   - a connection's request table is full, or the pool is closing.
 */
#include "pool.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "loop.h"
#include "wlog.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define REFUSED_RETRY_MS 5000  /* after a reconnection found another export */
#define DRAIN_MS 30000         /* close: wait this long for requests under way */
#define FINAL_FLUSH_MS 30000   /* close: and this long for the last FLUSH */

enum slot_state { SLOT_EMPTY, SLOT_CONNECTING, SLOT_READY };

struct pool_slot {
  enum slot_state st;
  struct nbd_conn *c;            /* READY: holds the pool's reference */
  struct transport *connecting;  /* CONNECTING: cut short at close */
  uint64_t next_try_ms;
  unsigned failures;
  uint64_t lost_ms;              /* when its connection was lost (0: never) */
  bool ever;                     /* had a connection once */
};

/* A command waiting in the pool. */
struct preq {
  struct nbd_cmd cmd;
  bool resent;        /* was on a lost connection: fences guard against its old copy, not it */
  struct preq *next;
};

struct fence {
  uint64_t start, end;
  struct nbd_conn *c; /* the abandoned connection the write was on */
  struct fence *next;
};

enum pool_state { POOL_OPEN, POOL_CLOSING, POOL_CLOSED };

struct nbd_pool {
  struct nbd_pool_opts o;
  char *export_name;
  char desc[320];
  char where[200];
  struct nbd_session s;       /* what the first connection negotiated */

  pthread_mutex_t lock;       /* everything below that is not atomic */
  pthread_cond_t cond;        /* manager wake-ups, connection deaths */
  enum pool_state state;
  struct pool_slot *slots;
  int nslots, nready;
  struct nbd_conn **gone;     /* lost connections not DEAD yet (pool's references) */
  int ngone, gone_cap;
  struct nbd_loop **loops;
  int nloops;
  bool attached;
  bool leaked;                /* close could not end every connection */
  bool server_gone;           /* the server will not come back: no more connecting */
  atomic_bool slow;           /* requests must go through the queue */
  atomic_bool draining;       /* closing: the last completion wakes nbd_pool_close */
  struct preq *qhead, **qtail;
  unsigned nqueued;
  atomic_uint inflight;       /* commands on connections */
  uint64_t reconnects;        /* connections re-established after a loss (user.nbd.stats) */
  uint64_t down_since_ms;     /* no READY connection since (0: some are) */
  struct fence *fences;

  /* durability */
  struct wlog *wlog;          /* NULL: nothing retained (no FLUSH, or --replay-limit 0) */
  atomic_uint_fast64_t writes_done;  /* completed data changes, the sequence of wlog entries */
  atomic_uint_fast64_t flushed_upto; /* writes_done covered by a finished FLUSH */
  atomic_uint_fast64_t last_unsafe;  /* the latest change made without FUA (its seq) */
  atomic_uint_fast64_t unretained_upto; /* last write that could not be retained */
  bool replay_needed, replaying;
  unsigned replay_outstanding;
  uint64_t replay_bytes;
  int lost_err;               /* acknowledged writes may be lost: the next FLUSH reports it */
  bool early_flush;
  struct nbd_op early_op;

  /* manager */
  pthread_t mgr;
  bool mgr_running, mgr_stop;
  unsigned connectors;        /* connection attempts under way */

  atomic_uint rr;
  struct rangelock rl;
  struct {                    /* set once, read by every data change */
    _Atomic(nbd_pool_change_fn) fn;
    void *arg;
    void (*free_fn)(void *arg);
  } obs[NBD_POOL_OBSERVERS];
};

static uint64_t now_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static bool changes_data(uint16_t type)
{
  return type == NBD_CMD_WRITE || type == NBD_CMD_TRIM || type == NBD_CMD_WRITE_ZEROES;
}

/* ---- operations ---- */

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

/* ---- accessors ---- */

const struct nbd_session *nbd_pool_session(const struct nbd_pool *p) { return &p->s; }
const char *nbd_pool_desc(const struct nbd_pool *p) { return p->desc; }
struct rangelock *nbd_pool_rangelock(struct nbd_pool *p) { return &p->rl; }
void *nbd_pool_observer(const struct nbd_pool *p, nbd_pool_change_fn fn)
{
  for (int i = 0; i < NBD_POOL_OBSERVERS; i++)
    if (atomic_load_explicit(&p->obs[i].fn, memory_order_acquire) == fn)
      return p->obs[i].arg;
  return NULL;
}

int nbd_pool_add_observer(struct nbd_pool *p, nbd_pool_change_fn fn, void *arg,
                          void (*free_fn)(void *arg))
{
  int r = -ENOSPC;
  pthread_mutex_lock(&p->lock);
  for (int i = 0; i < NBD_POOL_OBSERVERS && r; i++)
    if (!atomic_load_explicit(&p->obs[i].fn, memory_order_relaxed)) {
      p->obs[i].arg = arg;
      p->obs[i].free_fn = free_fn;
      atomic_store_explicit(&p->obs[i].fn, fn, memory_order_release); /* arg first */
      r = 0;
    }
  pthread_mutex_unlock(&p->lock);
  return r;
}

void nbd_pool_remove_observer(struct nbd_pool *p, nbd_pool_change_fn fn)
{
  pthread_mutex_lock(&p->lock);
  for (int i = 0; i < NBD_POOL_OBSERVERS; i++)
    if (atomic_load_explicit(&p->obs[i].fn, memory_order_relaxed) == fn)
      atomic_store_explicit(&p->obs[i].fn, NULL, memory_order_release);
  pthread_mutex_unlock(&p->lock);
}

int nbd_pool_connections(const struct nbd_pool *p, int *ready)
{
  pthread_mutex_lock((pthread_mutex_t *)&p->lock);
  if (ready)
    *ready = p->nready;
  int n = p->nslots;
  pthread_mutex_unlock((pthread_mutex_t *)&p->lock);
  return n;
}

void nbd_pool_counters(const struct nbd_pool *p, struct nbd_pool_counters *out)
{
  pthread_mutex_lock((pthread_mutex_t *)&p->lock);
  out->configured = p->nslots;
  out->ready = p->nready;
  out->queued = p->nqueued;
  out->reconnects = p->reconnects;
  pthread_mutex_unlock((pthread_mutex_t *)&p->lock);
  out->inflight = atomic_load_explicit(&p->inflight, memory_order_relaxed);
}

/* Tell the owner how many connections are up (outside the pool's lock). */
static void report_state(struct nbd_pool *p, int ready, const char *why)
{
  if (p->o.state_fn)
    p->o.state_fn(p->o.state_arg, p->desc, ready, p->nslots, why);
}

static void observe(struct nbd_pool *p, uint64_t off, uint64_t len)
{
  for (int i = 0; i < NBD_POOL_OBSERVERS; i++) {
    nbd_pool_change_fn fn = atomic_load_explicit(&p->obs[i].fn, memory_order_acquire);
    if (fn)
      fn(p->obs[i].arg, off, len);
  }
}

/* ---- dispatch ---- */

/* The READY connection with the fewest requests in flight, preferring those
 * served by the calling worker: its reply then comes back to the same
 * thread, with no hand-off (lock held). */
static struct nbd_conn *pick_locked(struct nbd_pool *p)
{
  if (p->nready == 0)
    return NULL;
  unsigned start = atomic_fetch_add_explicit(&p->rr, 1, memory_order_relaxed);
  struct nbd_loop *here = loop_current();
  struct nbd_conn *best = NULL, *best_local = NULL;
  unsigned best_load = ~0u, local_load = ~0u;
  for (int i = 0; i < p->nslots; i++) {
    struct pool_slot *sl = &p->slots[(start + (unsigned)i) % (unsigned)p->nslots];
    if (sl->st != SLOT_READY || nbd_conn_dead(sl->c))
      continue;
    unsigned load = nbd_conn_inflight(sl->c);
    if (load < best_load) {
      best = sl->c;
      best_load = load;
    }
    if (here && nbd_conn_loop(sl->c) == here && load < local_load) {
      best_local = sl->c;
      local_load = load;
    }
  }
  if (best_local && local_load <= 2 * best_load + 8)
    return best_local;
  return best;
}

/* Hand cmd to c, counting it in flight first (its completion may come
 * before nbd_conn_submit returns). */
static int send_on(struct nbd_pool *p, struct nbd_conn *c, const struct nbd_cmd *cmd)
{
  atomic_fetch_add_explicit(&p->inflight, 1, memory_order_relaxed);
  int r = nbd_conn_submit(c, cmd);
  if (r < 0)
    atomic_fetch_sub_explicit(&p->inflight, 1, memory_order_relaxed);
  return r;
}

static bool fenced(struct nbd_pool *p, const struct nbd_cmd *cmd)
{
  uint64_t end = cmd->offset + cmd->count;
  for (struct fence *f = p->fences; f; f = f->next)
    if (cmd->offset < f->end && f->start < end)
      return true;
  return false;
}

static void update_slow(struct nbd_pool *p)
{
  bool slow = p->nqueued || p->nready == 0 || p->replay_needed || p->replaying || p->fences ||
              p->state == POOL_CLOSED;
  atomic_store_explicit(&p->slow, slow, memory_order_release);
}

/* Can a request first sent at first_ms still wait for a connection? */
static bool may_wait(struct nbd_pool *p, uint64_t first_ms, uint64_t now)
{
  if (p->state == POOL_CLOSED)
    return false;
  if ((p->o.no_reconnect || p->server_gone) && p->nready == 0)
    return false;
  uint64_t delay = (uint64_t)p->o.reconnect_delay_s * 1000;
  if (p->down_since_ms && now - p->down_since_ms >= delay)
    return false; /* down longer than the delay: fail at once until one is back */
  return now - first_ms < delay;
}

static void enqueue(struct nbd_pool *p, struct preq *q, bool front)
{
  if (front) {
    q->next = p->qhead;
    p->qhead = q;
    if (!q->next)
      p->qtail = &q->next;
  } else {
    q->next = NULL;
    *p->qtail = q;
    p->qtail = &q->next;
  }
  p->nqueued++;
}

static void start_replay_locked(struct nbd_pool *p);

/* Send what can be sent from the queue; requests that may no longer wait
 * move to *failed, to be completed with EIO once the lock is dropped. */
static void pump_locked(struct nbd_pool *p, struct preq **failed)
{
  uint64_t now = now_ms();
  if (p->state == POOL_CLOSED) { /* never a request after DISC */
    if (p->qtail != &p->qhead) {
      *p->qtail = *failed;
      *failed = p->qhead;
      p->qhead = NULL;
      p->qtail = &p->qhead;
      p->nqueued = 0;
    }
    update_slow(p);
    return;
  }
  if (p->replay_needed && !p->replaying && p->nready > 0 &&
      atomic_load(&p->inflight) == 0 && p->state != POOL_CLOSED)
    start_replay_locked(p);
  struct preq **pp = &p->qhead;
  bool blocked = p->replaying || p->replay_needed;
  while (*pp) {
    struct preq *q = *pp;
    bool send = false;
    if (q->resent && !may_wait(p, q->cmd.first_ms, now)) {
      /* Sent before and out of time: --reconnect-delay counts from the first send. */
      *pp = q->next;
      p->nqueued--;
      q->next = *failed;
      *failed = q;
      continue;
    }
    if (p->nready == 0 || blocked) {
      if (!may_wait(p, q->cmd.first_ms, now) && p->nready == 0) {
        *pp = q->next;
        p->nqueued--;
        q->next = *failed;
        *failed = q;
        continue;
      }
    } else if (q->resent || !changes_data(q->cmd.type) || !fenced(p, &q->cmd)) {
      send = true;
    }
    if (send) {
      struct nbd_conn *c = pick_locked(p);
      int r = c ? send_on(p, c, &q->cmd) : -EIO;
      if (r == 0) {
        *pp = q->next;
        p->nqueued--;
        free(q);
        continue;
      }
      if (r == -EAGAIN) /* table full: a completion pumps again */
        break;
    }
    pp = &q->next;
  }
  p->qtail = &p->qhead;
  while (*p->qtail)
    p->qtail = &(*p->qtail)->next;
  update_slow(p);
}

static void fail_all(struct preq *q)
{
  while (q) {
    struct preq *next = q->next;
    struct nbd_cmd cmd = q->cmd;
    free(q);
    if (cmd.type == NBD_CMD_WRITE)
      wbuf_put(cmd.wb);
    cmd.done(cmd.arg, EIO);
    q = next;
  }
}

static void pump(struct nbd_pool *p)
{
  struct preq *failed = NULL;
  pthread_mutex_lock(&p->lock);
  pump_locked(p, &failed);
  if (p->state != POOL_OPEN)
    pthread_cond_broadcast(&p->cond);
  pthread_mutex_unlock(&p->lock);
  fail_all(failed);
}

/* Send one command on behalf of op. */
static void submit(struct nbd_pool *p, struct nbd_op *op, struct nbd_cmd *cmd)
{
  nbd_op_get(op);
  cmd->first_ms = now_ms();
  if (!atomic_load_explicit(&p->slow, memory_order_acquire)) {
    pthread_mutex_lock(&p->lock);
    struct nbd_conn *c = pick_locked(p);
    if (c)
      nbd_conn_ref(c);
    pthread_mutex_unlock(&p->lock);
    if (c) {
      int r = send_on(p, c, cmd);
      nbd_conn_free(c);
      if (r == 0)
        return;
    }
  }
  struct preq *q = malloc(sizeof *q);
  if (q && cmd->type == NBD_CMD_WRITE && !cmd->wb) {
    /* The caller's buffer (--replay-limit 0) does not outlive the call. */
    if ((cmd->wb = wbuf_new(cmd->buf, cmd->count)))
      cmd->buf = cmd->wb->data;
    else {
      free(q);
      q = NULL;
    }
  }
  if (!q) {
    if (cmd->type == NBD_CMD_WRITE)
      wbuf_put(cmd->wb);
    cmd->done(cmd->arg, ENOMEM);
    return;
  }
  q->cmd = *cmd;
  q->resent = false;
  struct preq *failed = NULL;
  pthread_mutex_lock(&p->lock);
  enqueue(p, q, false);
  pump_locked(p, &failed);
  pthread_mutex_unlock(&p->lock);
  fail_all(failed);
}

/* The most a compact (32-bit) length field takes, in whole preferred blocks. */
static uint64_t compact_limit(const struct nbd_export_info *i)
{
  return (UINT32_MAX / i->pref_block) * (uint64_t)i->pref_block;
}

/* The largest piece one command of this type may cover.  READ and WRITE
 * carry payloads up to the maximum block size.  TRIM and WRITE_ZEROES have
 * none: with extended headers their 64-bit effect length takes any range in
 * one command (the maximum block size bounds payloads only), without them
 * the 32-bit length field is the limit. */
static uint64_t piece_limit(const struct nbd_pool *p, uint16_t type)
{
  const struct nbd_export_info *i = &p->s.info;
  uint64_t piece = (type == NBD_CMD_READ || type == NBD_CMD_WRITE) ? i->max_block
                   : p->s.extended                                ? UINT64_MAX
                                                                  : compact_limit(i);
  return piece - piece % i->min_block;
}

/* Pieces for a TRIM or WRITE_ZEROES the server refused as too large: its
 * advertised maximum payload when it named one, else the compact limit. */
static uint64_t refused_piece(const struct nbd_pool *p)
{
  const struct nbd_export_info *i = &p->s.info;
  uint64_t piece = i->have_block_size && i->max_block_advertised != UINT32_MAX
                       ? i->max_block_advertised
                       : compact_limit(i);
  piece -= piece % i->min_block;
  return piece ? piece : i->min_block;
}

static void pool_io(struct nbd_pool *p, struct nbd_op *op, uint16_t type, uint16_t flags,
                    uint64_t offset, uint64_t len, const void *buf, struct wbuf *owner)
{
  op->pool = p;
  uint64_t piece = piece_limit(p, type);
  if (type != NBD_CMD_READ)
    observe(p, offset, len);
  /* WRITE payloads are kept (the owner's buffer, else a copy): what a lost
   * connection's requests are sent again from, and what replay keeps until
   * a FLUSH.  With --replay-limit 0 they are sent from the caller's buffer
   * instead (measured: about 10% more 1 MiB write bandwidth), and a WRITE
   * in flight on a lost connection fails. */
  struct wbuf *wb = NULL;
  if (type == NBD_CMD_WRITE && p->o.replay_limit) {
    wb = owner ? wbuf_get(owner) : wbuf_new(buf, len);
    if (!wb) {
      nbd_op_fail(op, ENOMEM);
      return;
    }
  }
  uint8_t *b = wb && !owner ? wb->data : (uint8_t *)buf;
  while (len > 0) {
    uint64_t n = len < piece ? len : piece;
    struct nbd_cmd cmd = { .type = type, .flags = flags, .offset = offset, .count = n,
                           .buf = b, .wb = wbuf_get(wb), .done = piece_done, .arg = op };
    submit(p, op, &cmd);
    offset += n;
    len -= n;
    if (b)
      b += n;
  }
  wbuf_put(wb);
}

void nbd_pool_io(struct nbd_pool *p, struct nbd_op *op, uint16_t type, uint16_t flags,
                 uint64_t offset, uint64_t len, const void *buf)
{
  pool_io(p, op, type, flags, offset, len, buf, NULL);
}

void nbd_pool_write_owned(struct nbd_pool *p, struct nbd_op *op, uint16_t flags, uint64_t offset,
                          uint64_t len, const void *buf, struct wbuf *owner)
{
  pool_io(p, op, NBD_CMD_WRITE, flags, offset, len, buf, owner);
}

void nbd_pool_block_status(struct nbd_pool *p, struct nbd_op *op, uint64_t offset, uint64_t len,
                           nbd_extents_fn fn)
{
  op->pool = p;
  struct nbd_cmd cmd = { .type = NBD_CMD_BLOCK_STATUS, .offset = offset, .count = len,
                         .done = piece_done, .extents = fn, .arg = op };
  submit(p, op, &cmd);
}

/* ---- flush and durability ---- */

bool nbd_pool_needs_flush(const struct nbd_pool *p)
{
  /* Changes sent with FUA are durable already: a FLUSH after only those
   * (an O_DSYNC writer's) would be a wasted round trip. */
  return atomic_load(&p->flushed_upto) < atomic_load(&p->last_unsafe) || p->lost_err;
}

static void flush_done(void *arg, int err)
{
  struct nbd_op *op = arg;
  struct nbd_pool *p = op->pool;
  pthread_mutex_lock(&p->lock);
  if (!err) {
    if (atomic_load(&p->flushed_upto) < op->flush_snapshot)
      atomic_store(&p->flushed_upto, op->flush_snapshot);
    if (p->wlog)
      wlog_forget(p->wlog, op->flush_snapshot);
  }
  if (p->lost_err) { /* reported once, like a writeback error */
    err = err ? err : p->lost_err;
    p->lost_err = 0;
  }
  pthread_mutex_unlock(&p->lock);
  piece_done(arg, err);
}

void nbd_pool_flush(struct nbd_pool *p, struct nbd_op *op)
{
  op->pool = p;
  if (!(p->s.info.tflags & NBD_FLAG_SEND_FLUSH)) {
    pthread_mutex_lock(&p->lock);
    nbd_op_fail(op, p->lost_err);
    p->lost_err = 0;
    pthread_mutex_unlock(&p->lock);
    return;
  }
  if (!nbd_pool_needs_flush(p))
    return;
  /* With multi-conn, one FLUSH covers writes completed on every connection;
   * without it the pool has a single connection. */
  op->flush_snapshot = atomic_load(&p->writes_done);
  struct nbd_cmd cmd = { .type = NBD_CMD_FLUSH, .done = flush_done, .arg = op };
  submit(p, op, &cmd);
}

static void early_flush_done(struct nbd_op *op, int err)
{
  struct nbd_pool *p = op->pool;
  if (err)
    log_warn("%s: early FLUSH (retained writes past --replay-limit) failed: %s", p->desc,
             strerror(err));
  pthread_mutex_lock(&p->lock);
  p->early_flush = false;
  pthread_mutex_unlock(&p->lock);
}

/* A data change finished (owner loop thread). */
static void note_change(struct nbd_pool *p, struct nbd_cmd *cmd, int err)
{
  if (err)
    return;
  bool flush_now = false;
  uint64_t seq = atomic_fetch_add(&p->writes_done, 1) + 1;
  bool fua = cmd->flags & NBD_CMD_FLAG_FUA;
  if (!fua) {
    uint64_t last = atomic_load(&p->last_unsafe);
    while (last < seq && !atomic_compare_exchange_weak(&p->last_unsafe, &last, seq)) {
    }
  }
  if (!p->wlog) { /* nothing retained: a loss makes the next flush fail */
    if (!fua)
      atomic_store(&p->unretained_upto, seq);
    return;
  }
  pthread_mutex_lock(&p->lock);
  if (wlog_add(p->wlog, cmd->type, cmd->flags, cmd->offset, cmd->count,
               cmd->type == NBD_CMD_WRITE ? cmd->wb : NULL,
               cmd->type == NBD_CMD_WRITE ? cmd->buf : NULL, seq) < 0)
    atomic_store(&p->unretained_upto, seq);
  if (p->wlog && wlog_bytes(p->wlog) > p->o.replay_limit / 2 && !p->early_flush &&
      p->state == POOL_OPEN) {
    p->early_flush = flush_now = true;
    nbd_op_init(&p->early_op, early_flush_done);
  }
  pthread_mutex_unlock(&p->lock);
  if (flush_now) {
    nbd_pool_flush(p, &p->early_op);
    nbd_op_put(&p->early_op);
  }
}

/* ---- replay after a loss ---- */

static void replay_done(void *arg, int err);

/* Everything in flight has settled and a connection is READY: send every
 * retained change again (lock held).  Entries never overlap, so they may
 * all go at once; new requests wait until the last is answered. */
static void start_replay_locked(struct nbd_pool *p)
{
  p->replay_needed = false;
  struct wlog_entry *e = NULL;
  long n = p->wlog ? wlog_snapshot(p->wlog, &e) : 0;
  if (n < 0) {
    log_error("%s: out of memory replaying acknowledged writes; they may be lost", p->desc);
    p->lost_err = EIO;
    return;
  }
  if (n == 0)
    return;
  p->replaying = true;
  p->replay_outstanding = 0;
  p->replay_bytes = 0;
  uint64_t now = now_ms();
  for (long i = 0; i < n; i++) {
    struct nbd_cmd cmd = { .type = e[i].type, .flags = e[i].flags, .offset = e[i].offset,
                           .count = e[i].len, .buf = (void *)e[i].data,
                           .wb = wbuf_get(e[i].buf), .first_ms = now, .done = replay_done,
                           .arg = p };
    struct nbd_conn *c = pick_locked(p);
    if (!c || send_on(p, c, &cmd) < 0) {
      wbuf_put(cmd.wb);
      p->replay_needed = true; /* try again with the next connection */
      continue;
    }
    p->replay_outstanding++;
    p->replay_bytes += e[i].len;
  }
  log_info("%s: replaying %ld acknowledged change%s not yet flushed (%llu bytes)", p->desc, n,
           n == 1 ? "" : "s", (unsigned long long)p->replay_bytes);
  wlog_snapshot_free(e, (size_t)n);
  if (p->replay_outstanding == 0)
    p->replaying = false;
}

static void replay_finished_locked(struct nbd_pool *p)
{
  if (--p->replay_outstanding > 0)
    return;
  p->replaying = false;
  if (!p->replay_needed)
    log_warn("%s: replayed %llu bytes of acknowledged, unflushed changes", p->desc,
             (unsigned long long)p->replay_bytes);
}

static void replay_done(void *arg, int err)
{
  struct nbd_pool *p = arg;
  pthread_mutex_lock(&p->lock);
  if (err) {
    log_error("%s: replaying an acknowledged write failed: %s; it may be lost", p->desc,
              strerror(err));
    p->lost_err = EIO;
  }
  replay_finished_locked(p);
  pthread_cond_broadcast(&p->cond);
  pthread_mutex_unlock(&p->lock);
}

/* ---- what connections tell the pool ---- */

/* The spec lets a server refuse a TRIM or WRITE_ZEROES longer than its
 * maximum block size with EINVAL or EOVERFLOW: send the range again in
 * pieces it takes (each piece then stands on its own).  Returns true when
 * the pieces were submitted and now carry the command's op. */
static bool resplit_refused(struct nbd_pool *p, const struct nbd_cmd *cmd, int err)
{
  if ((err != EINVAL && err != EOVERFLOW) || cmd->done != piece_done ||
      (cmd->type != NBD_CMD_TRIM && cmd->type != NBD_CMD_WRITE_ZEROES))
    return false;
  uint64_t piece = refused_piece(p);
  if (cmd->count <= piece)
    return false; /* already small: the refusal is about something else */
  log_info("%s: server refused a %llu-byte %s (%s); sending it in pieces of %llu bytes", p->desc,
           (unsigned long long)cmd->count, nbd_cmd_name(cmd->type), strerror(err),
           (unsigned long long)piece);
  struct nbd_op *op = cmd->arg;
  for (uint64_t off = cmd->offset, end = cmd->offset + cmd->count; off < end; off += piece) {
    struct nbd_cmd c = { .type = cmd->type, .flags = cmd->flags, .offset = off,
                         .count = end - off < piece ? end - off : piece, .done = piece_done,
                         .arg = op };
    submit(p, op, &c);
  }
  return true;
}

static void on_completed(void *owner, struct nbd_conn *c, struct nbd_cmd *cmd, int err)
{
  (void)c;
  struct nbd_pool *p = owner;
  bool replayed = cmd->done == replay_done;
  if (resplit_refused(p, cmd, err))
    err = 0; /* its pieces report for it; nothing changed yet to note */
  else if (changes_data(cmd->type) && !replayed)
    note_change(p, cmd, err);
  if (changes_data(cmd->type))
    observe(p, 0, 0); /* a scan may have started since it was sent */
  if (cmd->type == NBD_CMD_WRITE)
    wbuf_put(cmd->wb);
  cmd->done(cmd->arg, err);
  /* Counted down only now: what done submitted keeps the pool busy. */
  unsigned left = atomic_fetch_sub_explicit(&p->inflight, 1, memory_order_acq_rel) - 1;
  if (atomic_load_explicit(&p->slow, memory_order_acquire)) {
    pump(p);
  } else if (left == 0 && atomic_load_explicit(&p->draining, memory_order_acquire)) {
    pthread_mutex_lock(&p->lock); /* nbd_pool_close waits for this */
    pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&p->lock);
  }
}

static void on_lost(void *owner, struct nbd_conn *c, struct nbd_cmd *cmds, unsigned n,
                    bool settled, const char *why)
{
  struct nbd_pool *p = owner;
  struct preq *failed = NULL;
  uint64_t now = now_ms();
  int was_ready = -1; /* the count to report, when c was a ready connection */
  pthread_mutex_lock(&p->lock);
  for (int i = 0; i < p->nslots; i++) {
    struct pool_slot *sl = &p->slots[i];
    if (sl->st != SLOT_READY || sl->c != c)
      continue;
    was_ready = p->nready - 1;
    sl->st = SLOT_EMPTY;
    sl->c = NULL;
    sl->lost_ms = now;
    sl->next_try_ms = now;
    p->nready--;
    if (p->nready == 0)
      p->down_since_ms = now;
    struct nbd_conn **g = p->gone;
    if (p->ngone == p->gone_cap) {
      int cap = p->gone_cap ? 2 * p->gone_cap : 8;
      g = realloc(p->gone, (size_t)cap * sizeof *g);
      if (g) {
        p->gone = g;
        p->gone_cap = cap;
      }
    }
    if (p->ngone < p->gone_cap)
      p->gone[p->ngone++] = c;
    else
      log_error("%s: out of memory tracking connection %d", p->desc, nbd_conn_index(c));
    /* The server may have lost what it acknowledged: send it again. */
    if (p->state != POOL_CLOSED && strcmp(why, "closed")) {
      if (p->wlog && wlog_count(p->wlog))
        p->replay_needed = true;
      if (atomic_load(&p->unretained_upto) > atomic_load(&p->flushed_upto))
        p->lost_err = EIO;
    }
    break;
  }
  atomic_fetch_sub_explicit(&p->inflight, n, memory_order_acq_rel);
  for (unsigned k = n; k-- > 0;) { /* back to the front, in their order */
    struct nbd_cmd *cmd = &cmds[k];
    if (!settled && changes_data(cmd->type)) {
      struct fence *f = malloc(sizeof *f);
      if (f) {
        *f = (struct fence){ cmd->offset, cmd->offset + cmd->count, c, p->fences };
        p->fences = f;
      }
    }
    if (cmd->done == replay_done) {
      if (cmd->type == NBD_CMD_WRITE)
        wbuf_put(cmd->wb);
      p->replay_needed = true;
      replay_finished_locked(p);
      continue;
    }
    struct preq *q = malloc(sizeof *q);
    if (!q) {
      log_error("%s: out of memory; failing a %s", p->desc, nbd_cmd_name(cmd->type));
      if (cmd->type == NBD_CMD_WRITE)
        wbuf_put(cmd->wb);
      pthread_mutex_unlock(&p->lock);
      cmd->done(cmd->arg, EIO);
      pthread_mutex_lock(&p->lock);
      continue;
    }
    q->cmd = *cmd;
    q->resent = true;
    bool payload_gone = cmd->type == NBD_CMD_WRITE && !cmd->wb; /* --replay-limit 0 */
    if (p->o.no_reconnect || p->state == POOL_CLOSED || payload_gone) {
      q->next = failed;
      failed = q;
    } else {
      enqueue(p, q, true);
    }
  }
  bool closing = p->state == POOL_CLOSED;
  pump_locked(p, &failed);
  pthread_cond_broadcast(&p->cond);
  pthread_mutex_unlock(&p->lock);
  fail_all(failed);
  if (was_ready >= 0 && !closing)
    report_state(p, was_ready, why);
}

static void on_dead(void *owner, struct nbd_conn *c)
{
  struct nbd_pool *p = owner;
  bool found = false;
  pthread_mutex_lock(&p->lock);
  for (int i = 0; i < p->ngone; i++)
    if (p->gone[i] == c) {
      p->gone[i] = p->gone[--p->ngone];
      found = true;
      break;
    }
  /* Its writes are settled: later writes to the same ranges may go. */
  for (struct fence **fp = &p->fences; *fp;) {
    struct fence *f = *fp;
    if (f->c == c) {
      *fp = f->next;
      free(f);
    } else {
      fp = &f->next;
    }
  }
  struct preq *failed = NULL;
  pump_locked(p, &failed);
  pthread_cond_broadcast(&p->cond);
  pthread_mutex_unlock(&p->lock);
  fail_all(failed);
  if (found)
    nbd_conn_free(c);
}

static const struct nbd_conn_events pool_events = {
  .lost = on_lost, .completed = on_completed, .dead = on_dead,
};

/* ---- connecting ---- */

/* Connect and negotiate one connection (blocking: never on a worker).
 * *cut lets the pool abort it while it waits. */
static int open_one(struct nbd_pool *p, int index, struct nbd_session *s, struct nbd_conn **out,
                    struct transport **cut, char *err, size_t errlen)
{
  char why[1024];
  struct transport *t = transport_connect(p->o.uri, p->o.connect_timeout_s, why, sizeof why);
  if (!t) {
    snprintf(err, errlen, "%s", why);
    return -ECONNREFUSED;
  }
  if (cut) {
    pthread_mutex_lock(&p->lock);
    *cut = t;
    bool closed = p->state == POOL_CLOSED;
    pthread_mutex_unlock(&p->lock);
    if (closed)
      transport_shutdown(t, false);
  }
  struct nbd_hs_opts hs = { .export_name = p->export_name, .structured = true,
                            .extended = true, .block_status = true, .timeout_s = p->o.connect_timeout_s,
                            .tls_mode = p->o.tls_mode, .tls = p->o.tls };
  int r = nbd_negotiate(t, &hs, s, why, sizeof why);
  if (cut) {
    pthread_mutex_lock(&p->lock);
    *cut = NULL;
    pthread_mutex_unlock(&p->lock);
  }
  if (r < 0) {
    snprintf(err, errlen, "%s: %s", p->where, why); /* why names the export */
    transport_destroy(t);
    return r;
  }
  *out = nbd_conn_new(t, s, p->desc, index, p->o.timeout_s);
  if (!*out) {
    snprintf(err, errlen, "out of memory");
    nbd_session_free(s);
    transport_destroy(t);
    return -ENOMEM;
  }
  return 0;
}

/* Does a new connection reach the export we had?  Says how it differs. */
static bool same_export(const struct nbd_session *a, const struct nbd_session *b, char *diff,
                        size_t len)
{
  const struct nbd_export_info *x = &a->info, *y = &b->info;
  if (x->size != y->size)
    snprintf(diff, len, "size %llu instead of %llu", (unsigned long long)y->size,
             (unsigned long long)x->size);
  else if ((x->tflags ^ y->tflags) & NBD_FLAG_READ_ONLY)
    snprintf(diff, len, "%s", (y->tflags & NBD_FLAG_READ_ONLY) ? "now read-only" : "now writable");
  else if (x->min_block != y->min_block || x->pref_block != y->pref_block ||
           x->max_block != y->max_block)
    snprintf(diff, len, "block sizes %u/%u/%u instead of %u/%u/%u", y->min_block, y->pref_block,
             y->max_block, x->min_block, x->pref_block, x->max_block);
  else if (a->structured != b->structured || a->extended != b->extended ||
           a->have_base_alloc != b->have_base_alloc || a->tls != b->tls)
    /* Requests are split for the headers of the first connection. */
    snprintf(diff, len, "different capabilities (structured replies, extended headers, block status or TLS)");
  else
    return true;
  return false;
}

static uint64_t backoff_ms(unsigned failures)
{
  uint64_t d = BACKOFF_MIN_MS;
  for (unsigned i = 1; i < failures && d < BACKOFF_MAX_MS; i++)
    d *= 2;
  return d < BACKOFF_MAX_MS ? d : BACKOFF_MAX_MS;
}

struct connect_job {
  struct nbd_pool *p;
  int index;
};

static void *connect_main(void *arg)
{
  struct connect_job *j = arg;
  struct nbd_pool *p = j->p;
  int i = j->index;
  free(j);
  struct nbd_session s;
  struct nbd_conn *c = NULL;
  char err[1024], diff[160];
  int r = open_one(p, i, &s, &c, &p->slots[i].connecting, err, sizeof err);
  bool same = true;
  if (r == 0) {
    same = same_export(&p->s, &s, diff, sizeof diff);
    nbd_session_free(&s);
  }
  struct preq *failed = NULL;
  int now_ready = -1;
  pthread_mutex_lock(&p->lock);
  struct pool_slot *sl = &p->slots[i];
  uint64_t now = now_ms();
  if (r == 0 && same && p->state != POOL_CLOSED) {
    nbd_conn_set_owner(c, &pool_events, p, p->o.reconnect_delay_s + p->o.timeout_s + 10);
    if (nbd_conn_attach(c, p->loops[i % p->nloops]) == 0) {
      sl->st = SLOT_READY;
      sl->c = c;
      sl->failures = 0;
      p->nready++;
      p->down_since_ms = 0;
      if (sl->ever) {
        log_warn("%s: connection %d reconnected after %.1f s", p->desc, i,
                 (double)(now - sl->lost_ms) / 1000);
        now_ready = p->nready;
        p->reconnects++;
      } else {
        log_info("%s: connection %d ready", p->desc, i);
      }
      sl->ever = true;
      c = NULL;
    } else {
      snprintf(err, sizeof err, "cannot attach it to a worker");
      r = -EIO;
    }
  } else if (r == 0 && !same) {
    log_error("%s: refusing reconnection %d: the server now offers another export (%s); I/O "
              "fails until the original comes back", p->desc, i, diff);
  }
  if (sl->st != SLOT_READY) {
    sl->st = SLOT_EMPTY;
    sl->failures++;
    sl->next_try_ms = now + (same ? backoff_ms(sl->failures) : REFUSED_RETRY_MS);
    if (r < 0 && p->state != POOL_CLOSED && !p->server_gone &&
        (sl->failures == 1 || sl->failures % 20 == 0))
      log_warn("%s: connection %d: %s (attempt %u; retrying)", p->desc, i, err, sl->failures);
  }
  pump_locked(p, &failed);
  if (now_ready >= 0) {
    /* Told without the lock, but while this connector still counts: the
     * pool cannot be freed before connectors drops to 0. */
    pthread_mutex_unlock(&p->lock);
    report_state(p, now_ready, "reconnected");
    pthread_mutex_lock(&p->lock);
  }
  p->connectors--;
  pthread_cond_broadcast(&p->cond);
  pthread_mutex_unlock(&p->lock);
  if (c)
    nbd_conn_close(c);
  fail_all(failed);
  return NULL;
}

/* An absolute CLOCK_REALTIME time ms from now, for condition waits. */
static void deadline_in(struct timespec *ts, uint64_t ms)
{
  clock_gettime(CLOCK_REALTIME, ts);
  ts->tv_sec += (time_t)(ms / 1000);
  ts->tv_nsec += (long)(ms % 1000) * 1000000;
  if (ts->tv_nsec >= 1000000000) {
    ts->tv_sec++;
    ts->tv_nsec -= 1000000000;
  }
}

/* Refill empty slots, and fail queued requests whose time is up. */
static void *manager_main(void *arg)
{
  struct nbd_pool *p = arg;
  pthread_mutex_lock(&p->lock);
  while (!p->mgr_stop) {
    uint64_t now = now_ms(), next = now + (p->nqueued ? 100 : 1000);
    for (int i = 0; i < p->nslots && p->state != POOL_CLOSED; i++) {
      struct pool_slot *sl = &p->slots[i];
      if (sl->st != SLOT_EMPTY || (p->o.no_reconnect && sl->ever) || p->server_gone)
        continue;
      if (sl->next_try_ms > now) {
        if (sl->next_try_ms < next)
          next = sl->next_try_ms;
        continue;
      }
      struct connect_job *j = malloc(sizeof *j);
      pthread_t th;
      pthread_attr_t attr;
      pthread_attr_init(&attr);
      pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
      if (j) {
        *j = (struct connect_job){ p, i };
        sl->st = SLOT_CONNECTING;
        p->connectors++;
        if (pthread_create(&th, &attr, connect_main, j) != 0) {
          free(j);
          sl->st = SLOT_EMPTY;
          p->connectors--;
          sl->next_try_ms = now + BACKOFF_MAX_MS;
        }
      }
      pthread_attr_destroy(&attr);
    }
    struct preq *failed = NULL;
    pump_locked(p, &failed);
    if (failed) {
      pthread_mutex_unlock(&p->lock);
      fail_all(failed);
      pthread_mutex_lock(&p->lock);
      continue;
    }
    struct timespec until;
    deadline_in(&until, next > now ? next - now : 1);
    if (!p->mgr_stop)
      pthread_cond_timedwait(&p->cond, &p->lock, &until);
  }
  pthread_mutex_unlock(&p->lock);
  return NULL;
}

int nbd_pool_open(struct nbd_pool **out, const struct nbd_pool_opts *o, char *err, size_t errlen)
{
  struct nbd_pool *p = calloc(1, sizeof *p);
  if (!p || !(p->export_name = strdup(o->export_name))) {
    free(p);
    snprintf(err, errlen, "out of memory");
    return -ENOMEM;
  }
  p->o = *o;
  p->o.export_name = p->export_name;
  pthread_mutex_init(&p->lock, NULL);
  pthread_cond_init(&p->cond, NULL);
  p->qtail = &p->qhead;
  rangelock_init(&p->rl);
  char name[100];
  nbd_uri_describe(o->uri, p->where, sizeof p->where);
  nbd_sanitize(name, sizeof name, (const uint8_t *)o->export_name, strlen(o->export_name));
  snprintf(p->desc, sizeof p->desc, "%s export '%s'", p->where, name);
  if (o->tls_mode == TLS_REQUIRE)
    strncat(p->desc, " (TLS)", sizeof p->desc - strlen(p->desc) - 1);

  /* The first connection, now (with --retry, for a while). */
  struct nbd_conn *c = NULL;
  uint64_t deadline = now_ms() + (uint64_t)o->retry_s * 1000;
  unsigned tries = 0;
  int r;
  for (;;) {
    r = open_one(p, 0, &p->s, &c, NULL, err, errlen);
    if (r == 0 || (r != -ECONNREFUSED && r != -ECONNRESET && r != -ETIMEDOUT) ||
        now_ms() + backoff_ms(tries + 1) >= deadline)
      break;
    if (++tries == 1)
      log_info("%s: %s; retrying for up to %d s", p->desc, err, o->retry_s);
    usleep((useconds_t)backoff_ms(tries) * 1000);
  }
  if (r < 0) {
    nbd_pool_free(p);
    return r;
  }
  int want = o->connections > 0 ? o->connections : 1;
  if (want > 1 && !(p->s.info.tflags & NBD_FLAG_CAN_MULTI_CONN)) {
    log_info("%s: server does not allow multi-conn; using one connection", p->desc);
    want = 1;
  }
  p->slots = calloc((size_t)want, sizeof *p->slots);
  if (!p->slots) {
    nbd_conn_close(c);
    nbd_pool_free(p);
    snprintf(err, errlen, "out of memory");
    return -ENOMEM;
  }
  p->nslots = want;
  p->slots[0] = (struct pool_slot){ .st = SLOT_READY, .c = c, .ever = true };
  p->nready = 1;
  bool retain = (p->s.info.tflags & NBD_FLAG_SEND_FLUSH) && !(p->s.info.tflags & NBD_FLAG_READ_ONLY) &&
                o->replay_limit > 0;
  if (retain && !(p->wlog = wlog_new())) {
    nbd_pool_free(p);
    snprintf(err, errlen, "out of memory");
    return -ENOMEM;
  }
  update_slow(p);
  *out = p;
  return 0;
}

int nbd_pool_attach(struct nbd_pool *p, struct nbd_loop **loops, int nloops)
{
  p->loops = loops;
  p->nloops = nloops;
  struct nbd_conn *c = p->slots[0].c;
  nbd_conn_set_owner(c, &pool_events, p, p->o.reconnect_delay_s + p->o.timeout_s + 10);
  int r = nbd_conn_attach(c, loops[0]);
  if (r < 0)
    return r;
  p->attached = true;
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  r = pthread_create(&p->mgr, NULL, manager_main, p);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (r)
    return -r;
  p->mgr_running = true;
  return 0;
}

/* ---- the end ---- */

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

/* Cut every connection short (lock held). */
static void kill_all_locked(struct nbd_pool *p, const char *why)
{
  for (int i = 0; i < p->nslots; i++)
    if (p->slots[i].st == SLOT_READY)
      nbd_conn_abort(p->slots[i].c, why);
  for (int i = 0; i < p->ngone; i++)
    nbd_conn_abort(p->gone[i], why);
}

/* Is there still work that close should wait for (lock held)?  A replay
 * waits for a connection only while one may still come in time. */
static bool busy_locked(struct nbd_pool *p)
{
  bool hopeless = p->nready == 0 && !may_wait(p, now_ms(), now_ms());
  return atomic_load(&p->inflight) || p->nqueued || p->replaying ||
         (p->replay_needed && !hopeless);
}

void nbd_pool_server_gone(struct nbd_pool *p)
{
  struct preq *failed = NULL;
  pthread_mutex_lock(&p->lock);
  p->server_gone = true;
  p->o.no_reconnect = true; /* requests on connections lost from now on fail */
  pump_locked(p, &failed);
  pthread_cond_broadcast(&p->cond);
  pthread_mutex_unlock(&p->lock);
  fail_all(failed);
}

int nbd_pool_close(struct nbd_pool *p)
{
  if (!p->attached) { /* never served: just hang up */
    for (int i = 0; i < p->nslots; i++)
      if (p->slots[i].st == SLOT_READY) {
        nbd_conn_close(p->slots[i].c);
        p->slots[i].st = SLOT_EMPTY;
        p->slots[i].c = NULL;
      }
    return 0;
  }
  int rc = 0;
  struct timespec until;
  /* 1. Let what was taken finish (reconnects and replays go on). */
  pthread_mutex_lock(&p->lock);
  p->state = POOL_CLOSING;
  atomic_store(&p->draining, true);
  deadline_in(&until, DRAIN_MS);
  while (busy_locked(p) && pthread_cond_timedwait(&p->cond, &p->lock, &until) != ETIMEDOUT)
    ;
  bool drained = !busy_locked(p);
  if (p->replay_needed) { /* the server never came back: what it lost stays lost */
    p->replay_needed = false;
    p->lost_err = EIO;
  }
  pthread_mutex_unlock(&p->lock);
  if (!drained)
    log_error("%s: requests still unanswered after %d s; giving up on them", p->desc,
              DRAIN_MS / 1000);

  /* 2. Make acknowledged writes durable. */
  if (drained && nbd_pool_needs_flush(p)) {
    struct sync_op s = { .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER };
    nbd_op_init(&s.op, sync_complete);
    nbd_pool_flush(p, &s.op);
    nbd_op_put(&s.op);
    deadline_in(&until, FINAL_FLUSH_MS);
    pthread_mutex_lock(&s.lock);
    while (!s.done && pthread_cond_timedwait(&s.cond, &s.lock, &until) != ETIMEDOUT)
      ;
    bool done = s.done;
    rc = done ? s.err : ETIMEDOUT;
    pthread_mutex_unlock(&s.lock);
    if (!done) { /* s lives on this stack: make sure it completes before we return */
      pthread_mutex_lock(&p->lock);
      p->state = POOL_CLOSED;
      kill_all_locked(p, "final FLUSH unanswered");
      struct preq *failed = NULL;
      pump_locked(p, &failed);
      pthread_mutex_unlock(&p->lock);
      fail_all(failed);
      pthread_mutex_lock(&s.lock);
      while (!s.done)
        pthread_cond_wait(&s.cond, &s.lock);
      pthread_mutex_unlock(&s.lock);
    }
  } else if (!drained) {
    rc = EIO;
  }
  pthread_mutex_lock(&p->lock);
  if (!rc && nbd_pool_needs_flush(p) && (p->s.info.tflags & NBD_FLAG_SEND_FLUSH))
    rc = EIO;
  if (!rc && p->lost_err)
    rc = p->lost_err;
  uint64_t unflushed = p->wlog ? wlog_bytes(p->wlog) : 0;
  pthread_mutex_unlock(&p->lock);
  if (rc)
    log_error("%s: final flush failed: %s; acknowledged writes may be lost (%llu bytes retained "
              "unflushed)", p->desc, strerror(rc), (unsigned long long)unflushed);

  /* 3. Take nothing more; stop reconnecting. */
  pthread_mutex_lock(&p->lock);
  p->state = POOL_CLOSED;
  p->mgr_stop = true;
  for (int i = 0; i < p->nslots; i++)
    if (p->slots[i].st == SLOT_CONNECTING && p->slots[i].connecting)
      transport_shutdown(p->slots[i].connecting, false);
  struct preq *failed = NULL;
  pump_locked(p, &failed);
  pthread_cond_broadcast(&p->cond);
  pthread_mutex_unlock(&p->lock);
  fail_all(failed);
  if (p->mgr_running) {
    pthread_join(p->mgr, NULL);
    p->mgr_running = false;
  }

  /* 4. DISC on every connection; wait for them to end. */
  pthread_mutex_lock(&p->lock);
  for (int i = 0; i < p->nslots; i++)
    if (p->slots[i].st == SLOT_READY)
      nbd_conn_disconnect(p->slots[i].c);
  deadline_in(&until, 5000);
  bool cut = false;
  for (;;) {
    bool live = p->connectors > 0 || p->ngone > 0;
    for (int i = 0; i < p->nslots; i++)
      live |= p->slots[i].st != SLOT_EMPTY;
    if (!live)
      break;
    if (pthread_cond_timedwait(&p->cond, &p->lock, &until) == ETIMEDOUT) {
      if (cut) {
        /* Something still refers to the pool: keep it rather than free it. */
        log_error("%s: connections did not close; leaving them", p->desc);
        p->leaked = true;
        break;
      }
      kill_all_locked(p, "did not close");
      for (int i = 0; i < p->nslots; i++)
        if (p->slots[i].st == SLOT_CONNECTING && p->slots[i].connecting)
          transport_shutdown(p->slots[i].connecting, false);
      cut = true;
      /* Connection attempts end within the connect timeout. */
      deadline_in(&until, 5000 + (uint64_t)p->o.connect_timeout_s * 1000);
    }
  }
  pthread_mutex_unlock(&p->lock);
  return rc;
}

void nbd_pool_free(struct nbd_pool *p)
{
  if (!p || p->leaked)
    return;
  for (int i = 0; i < p->nslots; i++)
    if (p->slots[i].c)
      nbd_conn_free(p->slots[i].c);
  for (int i = 0; i < p->ngone; i++)
    nbd_conn_free(p->gone[i]);
  while (p->fences) {
    struct fence *f = p->fences;
    p->fences = f->next;
    free(f);
  }
  fail_all(p->qhead);
  for (int i = 0; i < NBD_POOL_OBSERVERS; i++)
    if (atomic_load(&p->obs[i].fn) && p->obs[i].free_fn)
      p->obs[i].free_fn(p->obs[i].arg);
  wlog_free(p->wlog);
  nbd_session_free(&p->s);
  rangelock_destroy(&p->rl);
  pthread_mutex_destroy(&p->lock);
  pthread_cond_destroy(&p->cond);
  free(p->slots);
  free(p->gone);
  free(p->export_name);
  free(p);
}

/* ---- blocking reads ---- */

int nbd_pool_read_sync(struct nbd_pool *p, void *buf, uint64_t off, uint32_t len)
{
  uint64_t size = nbd_pool_size(p), align = nbd_pool_min_block(p), end;
  if (__builtin_add_overflow(off, (uint64_t)len, &end) || end > size)
    return -EINVAL;
  uint64_t start = off - off % align;
  end += (align - end % align) % align;
  char *tmp = malloc(end - start);
  if (!tmp)
    return -ENOMEM;
  struct sync_op s = { .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER };
  nbd_op_init(&s.op, sync_complete);
  nbd_pool_io(p, &s.op, NBD_CMD_READ, 0, start, end - start, tmp);
  nbd_op_put(&s.op);
  pthread_mutex_lock(&s.lock);
  while (!s.done)
    pthread_cond_wait(&s.cond, &s.lock);
  pthread_mutex_unlock(&s.lock);
  if (!s.err)
    memcpy(buf, tmp + (off - start), len);
  free(tmp);
  return -s.err;
}
