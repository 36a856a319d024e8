/* readahead.c: see readahead.h. */
#include "readahead.h"

#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "pool.h"

#define RA_CHUNK (512 * 1024)       /* one prefetch: four of the kernel's 128 KiB */
#define RA_SLOTS 2                  /* one being read from, one being fetched */
#define RA_MAX_REQ (256 * 1024)     /* larger requests: the kernel reads far enough ahead */
#define RA_RUN 2                    /* sequential reads in a row before prefetching */

/* A chunk's life: EMPTY -> LOADING -> READY -> EMPTY (consumed, reused for
 * the next, or dropped).  A LOADING chunk that a change made stale becomes
 * EMPTY when its read completes: its buffer is the server's until then. */
enum chunk_state { CHUNK_EMPTY, CHUNK_LOADING, CHUNK_READY };

struct waiter {
  uint64_t off;
  size_t len;
  readahead_done_fn done;
  struct waiter *next;
  max_align_t ctx[];         /* a copy of the caller's context */
};

struct chunk {
  struct nbd_op op;          /* the chunk's READ (first: completion casts) */
  struct readahead *ra;
  enum chunk_state state;
  uint64_t off, len;
  uint64_t gen;              /* ra->gen when its read was sent */
  uint8_t *buf;              /* RA_CHUNK bytes, kept for the next chunk */
  struct waiter *waiters;    /* reads inside it that came while LOADING */
};

struct readahead {
  struct nbd_pool *p;
  pthread_mutex_t lock;
  uint64_t gen;              /* bumped by every change and every drop */
  uint64_t next;             /* where the last read ended */
  unsigned run;              /* sequential reads in a row */
  struct chunk c[RA_SLOTS];
};

static pthread_mutex_t create_lock = PTHREAD_MUTEX_INITIALIZER;

/* Forget every chunk (lock held).  LOADING ones are left to finish. */
static void invalidate_locked(struct readahead *ra)
{
  ra->gen++;
  ra->run = 0;
  for (int i = 0; i < RA_SLOTS; i++)
    if (ra->c[i].state == CHUNK_READY)
      ra->c[i].state = CHUNK_EMPTY;
}

static void on_change(void *arg, uint64_t off, uint64_t len)
{
  (void)off;
  (void)len;
  struct readahead *ra = arg;
  pthread_mutex_lock(&ra->lock);
  invalidate_locked(ra);
  pthread_mutex_unlock(&ra->lock);
}

static void ra_free(void *arg)
{
  struct readahead *ra = arg;
  for (int i = 0; i < RA_SLOTS; i++)
    free(ra->c[i].buf);
  pthread_mutex_destroy(&ra->lock);
  free(ra);
}

struct readahead *readahead_of(struct nbd_pool *p)
{
  struct readahead *ra = nbd_pool_observer(p, on_change);
  if (ra)
    return ra;
  pthread_mutex_lock(&create_lock);
  ra = nbd_pool_observer(p, on_change);
  if (!ra && (ra = calloc(1, sizeof *ra))) {
    ra->p = p;
    pthread_mutex_init(&ra->lock, NULL);
    for (int i = 0; i < RA_SLOTS; i++)
      ra->c[i].ra = ra;
    if (nbd_pool_add_observer(p, on_change, ra, ra_free) < 0) {
      ra_free(ra);
      ra = NULL;
    }
  }
  pthread_mutex_unlock(&create_lock);
  return ra;
}

void readahead_drop(struct nbd_pool *p)
{
  struct readahead *ra = nbd_pool_observer(p, on_change);
  if (ra)
    on_change(ra, 0, 0);
}

/* The current chunk holding all of [off, off+len), or NULL (lock held). */
static struct chunk *find_locked(struct readahead *ra, uint64_t off, uint64_t len)
{
  for (int i = 0; i < RA_SLOTS; i++) {
    struct chunk *c = &ra->c[i];
    if (c->state != CHUNK_EMPTY && c->gen == ra->gen && off >= c->off &&
        off + len <= c->off + c->len)
      return c;
  }
  return NULL;
}

/* The reader is at pos: make sure what follows is being fetched.  Returns
 * a chunk set LOADING, for the caller to send once unlocked, or NULL. */
static struct chunk *fetch_ahead_locked(struct readahead *ra, uint64_t pos)
{
  struct chunk *cur = find_locked(ra, pos, 1);
  uint64_t at = cur ? cur->off + cur->len : pos;
  if (find_locked(ra, at, 1))
    return NULL; /* already there or on its way */
  uint64_t size = nbd_pool_size(ra->p), m = nbd_pool_min_block(ra->p);
  if (at >= size || at % m)
    return NULL;
  uint64_t len = size - at < RA_CHUNK ? size - at : RA_CHUNK;
  len -= len % m;
  /* Any other chunk not still loading is behind the reader or off its
   * path (the next one would have been found above): reuse it. */
  struct chunk *c = NULL;
  for (int i = 0; i < RA_SLOTS && !c; i++)
    if (&ra->c[i] != cur && ra->c[i].state != CHUNK_LOADING)
      c = &ra->c[i];
  if (!c || !len || (!c->buf && !(c->buf = malloc(RA_CHUNK))))
    return NULL;
  c->state = CHUNK_LOADING;
  c->off = at;
  c->len = len;
  c->gen = ra->gen;
  c->waiters = NULL;
  return c;
}

static void chunk_loaded(struct nbd_op *op, int err)
{
  struct chunk *c = (struct chunk *)op;
  struct readahead *ra = c->ra;
  pthread_mutex_lock(&ra->lock);
  bool ok = !err && c->gen == ra->gen;
  c->state = ok ? CHUNK_READY : CHUNK_EMPTY;
  struct waiter *w = c->waiters;
  c->waiters = NULL;
  if (ok) /* under the lock: nothing reuses the buffer meanwhile */
    for (struct waiter *x = w; x; x = x->next)
      x->done(x->ctx, c->buf + (x->off - c->off), x->len, 0);
  pthread_mutex_unlock(&ra->lock);
  while (w) {
    struct waiter *next = w->next;
    if (!ok)
      w->done(w->ctx, NULL, 0, EAGAIN);
    free(w);
    w = next;
  }
}

static void send_load(struct chunk *c)
{
  nbd_op_init(&c->op, chunk_loaded);
  nbd_pool_io(c->ra->p, &c->op, NBD_CMD_READ, 0, c->off, c->len, c->buf);
  nbd_op_put(&c->op);
}

bool readahead_read(struct readahead *ra, uint64_t off, size_t len, readahead_done_fn done,
                    const void *ctx, size_t ctx_size)
{
  bool taken = false;
  struct chunk *load = NULL;
  pthread_mutex_lock(&ra->lock);
  bool seq = len && off == ra->next;
  ra->run = seq ? ra->run + 1 : 0;
  ra->next = off + len;
  struct chunk *c = len ? find_locked(ra, off, len) : NULL;
  if (c && c->state == CHUNK_READY) {
    done(ctx, c->buf + (off - c->off), len, 0);
    taken = true;
  } else if (c) { /* LOADING: answered when it arrives */
    struct waiter *w = malloc(sizeof *w + ctx_size);
    if (w) {
      *w = (struct waiter){ off, len, done, NULL };
      memcpy(w->ctx, ctx, ctx_size);
      struct waiter **tail = &c->waiters;
      while (*tail)
        tail = &(*tail)->next;
      *tail = w;
      taken = true;
    }
  }
  if (taken || (seq && ra->run >= RA_RUN && len <= RA_MAX_REQ))
    load = fetch_ahead_locked(ra, off + len);
  pthread_mutex_unlock(&ra->lock);
  if (load)
    send_load(load);
  return taken;
}
