/* extents.c: block status cache and asynchronous scans. */
#include "extents.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "pool.h"

#define CACHE_TTL_MS 2000
#define CACHE_MAX 65536
#define SCAN_BUDGET 16384  /* BLOCK_STATUS requests per scan */

struct cached_extent {
  uint64_t start, end;
  uint32_t flags;
  uint64_t expires_ms;
};

struct alloc_waiter {
  extents_alloc_fn cb;
  void *arg;
  struct alloc_waiter *next;
};

struct extent_cache {
  pthread_mutex_t lock;
  struct cached_extent *e;   /* sorted, disjoint */
  size_t n, cap;
  uint64_t gen;              /* bumped by every invalidation */
  /* allocated size: the last one computed stays known (stat answers it
   * at once), but is fresh only until it expires or anything is written */
  bool alloc_known, alloc_valid;
  uint64_t alloc_bytes, alloc_expires_ms;
  bool alloc_running;        /* one scan at a time: callers join it */
  struct alloc_waiter *alloc_waiters;
  uint64_t alloc_started_ms;   /* the last scan's start and end: background */
  uint64_t alloc_ended_ms;     /* recounts keep to a tenth of the time */
};

static uint64_t now_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void on_change(void *arg, uint64_t off, uint64_t len);

static struct extent_cache *cache_of(const struct nbd_pool *p)
{
  return nbd_pool_observer(p, on_change);
}

/* First entry whose end is past off (lock held). */
static size_t find(const struct extent_cache *ec, uint64_t off)
{
  size_t lo = 0, hi = ec->n;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (ec->e[mid].end <= off)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

/* Remove [off, end) from the cache (lock held), splitting entries. */
static void cut(struct extent_cache *ec, uint64_t off, uint64_t end)
{
  size_t i = find(ec, off);
  while (i < ec->n && ec->e[i].start < end) {
    struct cached_extent *x = &ec->e[i];
    if (x->start < off && x->end > end) { /* split in two */
      if (ec->n == ec->cap) { /* no room: forget everything */
        ec->n = 0;
        return;
      }
      memmove(&ec->e[i + 1], &ec->e[i], (ec->n - i) * sizeof *x);
      ec->n++;
      ec->e[i].end = off;
      ec->e[i + 1].start = end;
      return;
    }
    if (x->start < off) {
      x->end = off;
      i++;
    } else if (x->end > end) {
      x->start = end;
      return;
    } else {
      memmove(&ec->e[i], &ec->e[i + 1], (ec->n - i - 1) * sizeof *x);
      ec->n--;
    }
  }
}

static void insert(struct extent_cache *ec, uint64_t start, uint64_t end, uint32_t flags,
                   uint64_t expires)
{
  cut(ec, start, end);
  if (ec->n == ec->cap) {
    if (ec->cap >= CACHE_MAX) {
      ec->n = 0;
    } else {
      size_t cap = ec->cap ? ec->cap * 2 : 64;
      struct cached_extent *ne = realloc(ec->e, cap * sizeof *ne);
      if (!ne)
        return;
      ec->e = ne;
      ec->cap = cap;
    }
  }
  size_t i = find(ec, start);
  /* Merge with a touching neighbour of the same kind. */
  if (i > 0 && ec->e[i - 1].end == start && ec->e[i - 1].flags == flags) {
    ec->e[i - 1].end = end;
    if (ec->e[i - 1].expires_ms > expires)
      ec->e[i - 1].expires_ms = expires;
    return;
  }
  memmove(&ec->e[i + 1], &ec->e[i], (ec->n - i) * sizeof ec->e[0]);
  ec->e[i] = (struct cached_extent){ start, end, flags, expires };
  ec->n++;
}

/* A write changes allocation at the server's granularity (a 32 KiB page, a
 * qcow2 cluster, a 4 MiB object), which we cannot know: a few bytes can
 * turn a whole cached hole around them into data.  So any write, trim or
 * zero forgets every cached extent; the generation bump also discards the
 * answers of scans still in flight.  The pool calls this before sending
 * and again when the command finishes, so a scan overlapping either end
 * is discarded too. */
static void on_change(void *arg, uint64_t off, uint64_t len)
{
  (void)off;
  (void)len;
  struct extent_cache *ec = arg;
  pthread_mutex_lock(&ec->lock);
  ec->gen++;
  ec->alloc_valid = false;
  ec->n = 0;
  pthread_mutex_unlock(&ec->lock);
}

int extents_attach(struct nbd_pool *p)
{
  if (cache_of(p))
    return 0;
  struct extent_cache *ec = calloc(1, sizeof *ec);
  if (!ec)
    return -ENOMEM;
  pthread_mutex_init(&ec->lock, NULL);
  if (nbd_pool_add_observer(p, on_change, ec, NULL) < 0) {
    pthread_mutex_destroy(&ec->lock);
    free(ec);
    return -ENOSPC;
  }
  return 0;
}

void extents_detach(struct nbd_pool *p)
{
  struct extent_cache *ec = cache_of(p);
  if (!ec)
    return;
  nbd_pool_remove_observer(p, on_change);
  pthread_mutex_destroy(&ec->lock);
  free(ec->e);
  free(ec);
}

/* ---- scans ---- */

struct scan;
/* Return true to stop the scan. */
typedef bool (*visit_fn)(struct scan *s, uint64_t start, uint64_t len, uint32_t flags);
typedef void (*finish_fn)(struct scan *s);

struct scan {
  struct nbd_op op;
  struct nbd_pool *pool;
  uint64_t start, pos, end;
  uint64_t gen;           /* cache generation when the request was sent */
  unsigned budget;
  visit_fn visit;
  finish_fn finish;
  struct nbd_extent *got; /* extents of the last reply */
  uint32_t ngot;
  uint64_t got_off;
  bool stopped;
  /* per kind */
  bool want_data;
  uint64_t result;
  int err;
  uint64_t sum;
  uint64_t start_gen;      /* allocated size: generation when the scan began */
  extents_seek_fn seek_cb;
  extents_zero_fn zero_cb;
  extents_alloc_fn alloc_cb;
  void *arg;
};

static void scan_run(struct scan *s);
static bool alloc_visit(struct scan *s, uint64_t start, uint64_t len, uint32_t flags);

static bool visit_range(struct scan *s, uint64_t start, uint64_t len, uint32_t flags)
{
  if (s->visit(s, start, len, flags)) {
    s->stopped = true;
    return true;
  }
  s->pos = start + len;
  return false;
}

static void on_extents(void *arg, uint64_t off, const struct nbd_extent *e, uint32_t n)
{
  struct scan *s = arg;
  free(s->got);
  s->got = malloc((n ? n : 1) * sizeof *e);
  s->ngot = 0;
  if (!s->got)
    return;
  memcpy(s->got, e, n * sizeof *e);
  s->ngot = n;
  s->got_off = off;
}

static void on_status_done(struct nbd_op *op, int err)
{
  struct scan *s = (struct scan *)op;
  struct extent_cache *ec = cache_of(s->pool);
  uint64_t size = nbd_pool_size(s->pool);
  if (err || !s->ngot || !ec) {
    /* No usable answer: the rest is data, which is always safe. */
    if (err)
      log_info("%s: block status at %llu failed (%s); treating the range as data",
               nbd_pool_desc(s->pool), (unsigned long long)s->pos, strerror(err));
    visit_range(s, s->pos, s->end - s->pos, 0);
  } else {
    uint64_t expires = now_ms() + CACHE_TTL_MS, off = s->got_off;
    pthread_mutex_lock(&ec->lock);
    bool fresh = ec->gen == s->gen;
    for (uint32_t i = 0; fresh && i < s->ngot; i++) {
      uint64_t len = s->got[i].length;
      if (off + len > size)
        len = size - off;
      insert(ec, off, off + len, s->got[i].flags, expires);
      off += len;
    }
    pthread_mutex_unlock(&ec->lock);
    off = s->got_off;
    for (uint32_t i = 0; i < s->ngot && off < s->end; i++) {
      uint64_t len = s->got[i].length;
      if (off + len > s->end)
        len = s->end - off;
      if (visit_range(s, off, len, s->got[i].flags))
        break;
      off += len;
    }
  }
  free(s->got);
  s->got = NULL;
  s->ngot = 0;
  scan_run(s);
}

/* Walk from s->pos: cached extents first, then ask the server. */
static void scan_run(struct scan *s)
{
  struct nbd_pool *p = s->pool;
  struct extent_cache *ec = cache_of(p);
  while (!s->stopped && s->pos < s->end) {
    if (s->budget == 0 && s->visit == alloc_visit && s->pos > s->start) {
      /* A count that ran out of requests: the rest is estimated from the
       * part counted (an all-hole export is not reported as data). */
      uint64_t done = s->pos - s->start, rest = s->end - s->pos;
      s->sum += (uint64_t)((unsigned __int128)rest * s->sum / done);
      s->pos = s->end;
      continue;
    }
    if (!ec || !nbd_pool_has_block_status(p) || s->budget == 0) {
      visit_range(s, s->pos, s->end - s->pos, 0);
      continue;
    }
    pthread_mutex_lock(&ec->lock);
    size_t i = find(ec, s->pos);
    bool hit = i < ec->n && ec->e[i].start <= s->pos && ec->e[i].expires_ms > now_ms();
    uint64_t len = 0;
    uint32_t flags = 0;
    if (hit) {
      len = (ec->e[i].end < s->end ? ec->e[i].end : s->end) - s->pos;
      flags = ec->e[i].flags;
    }
    s->gen = ec->gen;
    pthread_mutex_unlock(&ec->lock);
    if (hit) {
      visit_range(s, s->pos, len, flags);
      continue;
    }
    /* Ask for everything up to the end: with extended headers in one
     * request, else as far as the 32-bit length allows. */
    s->budget--;
    uint64_t want = s->end - s->pos;
    uint32_t pref = nbd_pool_info(p)->pref_block ? nbd_pool_info(p)->pref_block : 1;
    uint64_t max = UINT32_MAX - UINT32_MAX % pref;
    if (want > max && !nbd_pool_session(p)->extended)
      want = max;
    nbd_op_init(&s->op, on_status_done);
    nbd_pool_block_status(p, &s->op, s->pos, want, on_extents);
    nbd_op_put(&s->op);
    return;
  }
  s->finish(s);
}

static struct scan *scan_new(struct nbd_pool *p, uint64_t start, uint64_t end, visit_fn v,
                             finish_fn f)
{
  struct scan *s = calloc(1, sizeof *s);
  if (!s)
    return NULL;
  s->pool = p;
  s->start = s->pos = start;
  s->end = end;
  s->budget = SCAN_BUDGET;
  s->visit = v;
  s->finish = f;
  return s;
}

/* ---- seek ---- */

static bool seek_visit(struct scan *s, uint64_t start, uint64_t len, uint32_t flags)
{
  (void)len;
  if (extent_is_hole(flags) != s->want_data) {
    s->result = start;
    return true;
  }
  return false;
}

static void seek_finish(struct scan *s)
{
  extents_seek_fn cb = s->seek_cb;
  if (s->stopped)
    cb(s->arg, 0, s->result);
  else if (s->want_data)
    cb(s->arg, ENXIO, 0);
  else
    cb(s->arg, 0, s->end); /* the implicit hole at the end */
  free(s);
}

void extents_seek(struct nbd_pool *p, uint64_t off, bool data, extents_seek_fn cb, void *arg)
{
  extents_seek_range(p, off, nbd_pool_size(p), data, cb, arg);
}

void extents_seek_range(struct nbd_pool *p, uint64_t off, uint64_t end, bool data,
                        extents_seek_fn cb, void *arg)
{
  if (end > nbd_pool_size(p))
    end = nbd_pool_size(p);
  if (off >= end) {
    cb(arg, ENXIO, 0);
    return;
  }
  struct scan *s = scan_new(p, off, end, seek_visit, seek_finish);
  if (!s) {
    cb(arg, ENOMEM, 0);
    return;
  }
  s->want_data = data;
  s->seek_cb = cb;
  s->arg = arg;
  scan_run(s);
}

/* ---- allocated size ---- */

static bool alloc_visit(struct scan *s, uint64_t start, uint64_t len, uint32_t flags)
{
  (void)start;
  if (!(flags & NBD_STATE_HOLE))
    s->sum += len;
  return false;
}

static void run_alloc_waiters(struct alloc_waiter *w, uint64_t bytes)
{
  while (w) {
    struct alloc_waiter *next = w->next;
    w->cb(w->arg, bytes);
    free(w);
    w = next;
  }
}

static void alloc_finish(struct scan *s)
{
  struct extent_cache *ec = cache_of(s->pool);
  struct alloc_waiter *w = NULL;
  if (ec) {
    pthread_mutex_lock(&ec->lock);
    /* Written meanwhile: still the best estimate, but not fresh. */
    ec->alloc_known = true;
    ec->alloc_bytes = s->sum;
    if (ec->gen == s->start_gen) {
      ec->alloc_valid = true;
      ec->alloc_expires_ms = now_ms() + CACHE_TTL_MS;
    }
    w = ec->alloc_waiters;
    ec->alloc_waiters = NULL;
    ec->alloc_running = false;
    ec->alloc_ended_ms = now_ms();
    pthread_mutex_unlock(&ec->lock);
  }
  uint64_t sum = s->sum;
  free(s);
  run_alloc_waiters(w, sum);
}

bool extents_allocated_known(struct nbd_pool *p, uint64_t *bytes, bool *fresh)
{
  struct extent_cache *ec = cache_of(p);
  *fresh = false;
  if (!ec || !nbd_pool_has_block_status(p))
    return false;
  pthread_mutex_lock(&ec->lock);
  bool known = ec->alloc_known;
  *bytes = ec->alloc_bytes;
  *fresh = ec->alloc_valid && ec->alloc_expires_ms > now_ms();
  pthread_mutex_unlock(&ec->lock);
  return known;
}

void extents_allocated(struct nbd_pool *p, extents_alloc_fn cb, void *arg)
{
  struct extent_cache *ec = cache_of(p);
  if (!ec || !nbd_pool_has_block_status(p)) {
    cb(arg, nbd_pool_size(p));
    return;
  }
  struct alloc_waiter *w = malloc(sizeof *w);
  if (!w) {
    cb(arg, nbd_pool_size(p));
    return;
  }
  w->cb = cb;
  w->arg = arg;
  pthread_mutex_lock(&ec->lock);
  if (ec->alloc_valid && ec->alloc_expires_ms > now_ms()) {
    uint64_t bytes = ec->alloc_bytes;
    pthread_mutex_unlock(&ec->lock);
    free(w);
    cb(arg, bytes);
    return;
  }
  w->next = ec->alloc_waiters;
  ec->alloc_waiters = w;
  bool start = !ec->alloc_running;
  ec->alloc_running = true;
  if (start)
    ec->alloc_started_ms = now_ms();
  uint64_t gen = ec->gen;
  pthread_mutex_unlock(&ec->lock);
  if (!start)
    return; /* joins the scan under way */
  struct scan *s = scan_new(p, 0, nbd_pool_size(p), alloc_visit, alloc_finish);
  if (!s) {
    /* Every waiter gets the conservative answer. */
    pthread_mutex_lock(&ec->lock);
    struct alloc_waiter *l = ec->alloc_waiters;
    ec->alloc_waiters = NULL;
    ec->alloc_running = false;
    pthread_mutex_unlock(&ec->lock);
    run_alloc_waiters(l, nbd_pool_size(p));
    return;
  }
  s->start_gen = gen;
  scan_run(s);
}

bool extents_allocated_refresh(struct nbd_pool *p, extents_alloc_fn cb, void *arg)
{
  struct extent_cache *ec = cache_of(p);
  if (!ec || !nbd_pool_has_block_status(p))
    return false;
  pthread_mutex_lock(&ec->lock);
  uint64_t now = now_ms();
  bool fresh = ec->alloc_valid && ec->alloc_expires_ms > now;
  uint64_t took = ec->alloc_ended_ms - ec->alloc_started_ms;
  bool due = !ec->alloc_known || now >= ec->alloc_ended_ms + (took * 9 > 1000 ? took * 9 : 1000);
  bool go = !fresh && !ec->alloc_running && due;
  pthread_mutex_unlock(&ec->lock);
  if (go)
    extents_allocated(p, cb, arg);
  return go;
}

/* A range's count: a scan of its own, not cached as the whole export's. */
static void range_finish(struct scan *s)
{
  extents_alloc_fn cb = s->alloc_cb;
  void *arg = s->arg;
  uint64_t sum = s->sum;
  free(s);
  cb(arg, sum);
}

void extents_allocated_range(struct nbd_pool *p, uint64_t start, uint64_t end,
                             extents_alloc_fn cb, void *arg)
{
  if (end > nbd_pool_size(p))
    end = nbd_pool_size(p);
  struct scan *s = start < end && cache_of(p) && nbd_pool_has_block_status(p)
                       ? scan_new(p, start, end, alloc_visit, range_finish)
                       : NULL;
  if (!s) {
    cb(arg, start < end ? end - start : 0);
    return;
  }
  s->alloc_cb = cb;
  s->arg = arg;
  scan_run(s);
}

/* ---- zero check ---- */

static bool zero_visit(struct scan *s, uint64_t start, uint64_t len, uint32_t flags)
{
  (void)s;
  (void)start;
  (void)len;
  return !(flags & NBD_STATE_ZERO);
}

static void zero_finish(struct scan *s)
{
  s->zero_cb(s->arg, !s->stopped);
  free(s);
}

void extents_check_zero(struct nbd_pool *p, uint64_t off, uint64_t len, extents_zero_fn cb,
                        void *arg)
{
  if (!cache_of(p) || !nbd_pool_has_block_status(p)) {
    cb(arg, false);
    return;
  }
  struct scan *s = scan_new(p, off, off + len, zero_visit, zero_finish);
  if (!s) {
    cb(arg, false);
    return;
  }
  s->zero_cb = cb;
  s->arg = arg;
  scan_run(s);
}
