/* blockio.c: see blockio.h. */
#include "blockio.h"

#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "extents.h"
#include "log.h"
#include "wlog.h"

/* Source of zeros for written-zero fallbacks and partial blocks. */
#define ZERO_BUF_SIZE (1024 * 1024)
static const uint8_t zero_buf[ZERO_BUF_SIZE];
#define ZERO_WINDOW 16  /* written-zero pieces in flight at once */

static uint64_t round_down(uint64_t x, uint64_t m) { return x - x % m; }
static uint64_t round_up(uint64_t x, uint64_t m) { return round_down(x + m - 1, m); }

/* ---- writes ---- */

struct bwrite {
  struct nbd_op sub;         /* the NBD commands of the current phase */
  struct nbd_op *parent;
  struct nbd_pool *p;
  struct rl_request lk;
  uint16_t flags;
  uint64_t off, len;         /* what the caller asked for */
  uint64_t a, b;             /* the range rounded out to whole blocks */
  bool locked;
  const uint8_t *ubuf;       /* caller's buffer: valid during blockio_write only,
                              * unless owner holds it */
  struct wbuf *owner;        /* a reference to the buffer holding ubuf, or NULL */
  uint8_t *bounce;           /* image of [a, b) once copied */
  uint8_t *edge;             /* head and tail blocks read for read-modify-write */
  int err;
};

static void bwrite_finish(struct bwrite *w, int err)
{
  if (w->locked)
    rangelock_release(nbd_pool_rangelock(w->p), &w->lk);
  nbd_op_fail(w->parent, err ? err : w->err);
  nbd_op_put(w->parent);
  wbuf_put(w->owner);
  free(w->bounce);
  free(w->edge);
  free(w);
}

static void on_written(struct nbd_op *op, int err)
{
  bwrite_finish((struct bwrite *)op, err);
}

static void write_image(struct bwrite *w, uint64_t start, uint64_t len, const void *buf)
{
  nbd_op_init(&w->sub, on_written);
  nbd_pool_write_owned(w->p, &w->sub, w->flags, start, len, buf,
                       buf == w->ubuf ? w->owner : NULL);
  nbd_op_put(&w->sub);
}

/* Head and tail blocks have been read: patch the bytes around the
 * caller's data into the image and write the whole blocks. */
static void on_edges_read(struct nbd_op *op, int err)
{
  struct bwrite *w = (struct bwrite *)op;
  if (err) {
    bwrite_finish(w, err);
    return;
  }
  uint64_t m = nbd_pool_min_block(w->p), end = w->off + w->len;
  const uint8_t *head = w->edge, *tail = w->edge + m;
  if (w->b - w->a == m)
    tail = head; /* one block holds both edges */
  if (w->off > w->a)
    memcpy(w->bounce, head, w->off - w->a);
  if (end < w->b)
    memcpy(w->bounce + (end - w->a), tail + (end - (w->b - m)), w->b - end);
  write_image(w, w->a, w->b - w->a, w->bounce);
}

/* The range is ours: write it, reading partial blocks first. */
static void bwrite_locked(struct bwrite *w)
{
  if (w->err) { /* could not keep a copy while waiting */
    bwrite_finish(w, w->err);
    return;
  }
  uint64_t m = nbd_pool_min_block(w->p), end = w->off + w->len;
  bool head = w->off > w->a, tail = end < w->b;
  if (!head && !tail) {
    write_image(w, w->off, w->len, w->bounce ? w->bounce : w->ubuf);
    return;
  }
  w->edge = malloc(2 * m);
  if (!w->edge) {
    bwrite_finish(w, ENOMEM);
    return;
  }
  nbd_op_init(&w->sub, on_edges_read);
  if (head)
    nbd_pool_io(w->p, &w->sub, NBD_CMD_READ, 0, w->a, m, w->edge);
  if (tail && (w->b - w->a > m || !head))
    nbd_pool_io(w->p, &w->sub, NBD_CMD_READ, 0, w->b - m, m, w->b - w->a == m ? w->edge : w->edge + m);
  nbd_op_put(&w->sub);
}

static void on_granted(struct rl_request *r)
{
  bwrite_locked((struct bwrite *)((char *)r - offsetof(struct bwrite, lk)));
}

/* Queued behind another write: keep a copy of the caller's data. */
static void copy_before_wait(struct rl_request *r)
{
  struct bwrite *w = (struct bwrite *)((char *)r - offsetof(struct bwrite, lk));
  if (w->bounce || w->owner)
    return;
  w->bounce = malloc(w->len);
  if (w->bounce)
    memcpy(w->bounce, w->ubuf, w->len);
  else
    w->err = ENOMEM;
}

void blockio_write(struct nbd_pool *p, struct nbd_op *op, uint16_t flags, uint64_t off,
                   uint64_t len, const void *buf, struct wbuf *owner)
{
  if (len == 0)
    return;
  uint64_t m = nbd_pool_min_block(p);
  if (m == 1) { /* any offset is fine: no locking, nothing to keep */
    nbd_pool_write_owned(p, op, flags, off, len, buf, owner);
    return;
  }
  struct bwrite *w = calloc(1, sizeof *w);
  if (!w) {
    nbd_op_fail(op, ENOMEM);
    return;
  }
  nbd_op_get(op);
  w->parent = op;
  w->p = p;
  w->flags = flags;
  w->off = off;
  w->len = len;
  w->a = round_down(off, m);
  w->b = round_up(off + len, m);
  w->ubuf = buf;
  w->owner = wbuf_get(owner);
  if (w->a != off || w->b != off + len) {
    /* Partial blocks: build the image of whole blocks around the data. */
    w->bounce = malloc(w->b - w->a);
    if (!w->bounce) {
      bwrite_finish(w, ENOMEM);
      return;
    }
    memcpy(w->bounce + (off - w->a), buf, len);
  }
  w->lk = (struct rl_request){ .start = w->a, .end = w->b, .granted = on_granted,
                               .prepare = copy_before_wait };
  w->locked = true;
  if (rangelock_acquire(nbd_pool_rangelock(p), &w->lk))
    bwrite_locked(w);
  /* else on_granted runs when the conflicting write releases the range */
}

/* ---- zeroing ---- */

struct bzero {
  struct nbd_op sub;
  struct nbd_op *parent;
  struct nbd_pool *p;
  struct rl_request lk;
  bool locked;
  bool punch;
  uint64_t start, end;   /* whole blocks */
  pthread_mutex_t lock;  /* written-zero fallback: pieces finish on any loop */
  uint64_t pos;          /* next piece */
  unsigned inflight;
  bool finished;
  int err;
};

struct zpiece {
  struct nbd_op op;
  struct bzero *z;
};

static void bzero_finish(struct bzero *z, int err)
{
  if (z->locked)
    rangelock_release(nbd_pool_rangelock(z->p), &z->lk);
  nbd_op_fail(z->parent, err);
  nbd_op_put(z->parent);
  pthread_mutex_destroy(&z->lock);
  free(z);
}

static void write_zero_pieces(struct bzero *z);

static void on_zero_piece(struct nbd_op *op, int err)
{
  struct zpiece *zp = (struct zpiece *)op;
  struct bzero *z = zp->z;
  free(zp);
  pthread_mutex_lock(&z->lock);
  if (err && !z->err)
    z->err = err;
  z->inflight--;
  pthread_mutex_unlock(&z->lock);
  write_zero_pieces(z);
}

/* Write zeros in pieces, a window at a time (ranges may be terabytes).
 * Pieces complete on whichever loop owns their connection, so the window
 * is kept under a lock; submission happens outside it, because a piece on
 * a dead pool completes at once. */
static void write_zero_pieces(struct bzero *z)
{
  const struct nbd_export_info *info = nbd_pool_info(z->p);
  uint64_t piece = info->max_block < ZERO_BUF_SIZE ? info->max_block : ZERO_BUF_SIZE;
  piece = round_down(piece, info->min_block);
  for (;;) {
    pthread_mutex_lock(&z->lock);
    bool more = !z->err && z->inflight < ZERO_WINDOW && z->pos < z->end;
    uint64_t at = z->pos, n = 0;
    if (more) {
      n = z->end - z->pos < piece ? z->end - z->pos : piece;
      z->pos += n;
      z->inflight++;
    }
    bool done = !more && !z->finished && z->inflight == 0 && (z->err || z->pos >= z->end);
    if (done)
      z->finished = true;
    int err = z->err;
    pthread_mutex_unlock(&z->lock);
    if (done) {
      bzero_finish(z, err);
      return;
    }
    if (!more)
      return;
    struct zpiece *zp = malloc(sizeof *zp);
    if (!zp) {
      pthread_mutex_lock(&z->lock);
      z->err = ENOMEM;
      z->inflight--;
      pthread_mutex_unlock(&z->lock);
      continue;
    }
    zp->z = z;
    nbd_op_init(&zp->op, on_zero_piece);
    nbd_pool_io(z->p, &zp->op, NBD_CMD_WRITE, 0, at, n, zero_buf);
    nbd_op_put(&zp->op);
  }
}

static void on_zeroed(struct nbd_op *op, int err)
{
  bzero_finish((struct bzero *)op, err);
}

static void on_trim_checked(void *arg, bool zero)
{
  struct bzero *z = arg;
  if (zero) {
    bzero_finish(z, 0);
    return;
  }
  log_debug("%s: TRIM did not leave zeros; writing zeros", nbd_pool_desc(z->p));
  z->pos = z->start;
  write_zero_pieces(z);
}

static void on_trimmed(struct nbd_op *op, int err)
{
  struct bzero *z = (struct bzero *)op;
  if (err) { /* advisory anyway: fall back to writing zeros */
    z->pos = z->start;
    write_zero_pieces(z);
    return;
  }
  extents_check_zero(z->p, z->start, z->end - z->start, on_trim_checked, z);
}

static void bzero_locked(struct bzero *z)
{
  uint16_t tf = nbd_pool_flags(z->p);
  uint64_t len = z->end - z->start;
  if (tf & NBD_FLAG_SEND_WRITE_ZEROES) {
    nbd_op_init(&z->sub, on_zeroed);
    nbd_pool_io(z->p, &z->sub, NBD_CMD_WRITE_ZEROES, z->punch ? 0 : NBD_CMD_FLAG_NO_HOLE,
                z->start, len, NULL);
    nbd_op_put(&z->sub);
  } else if (z->punch && (tf & NBD_FLAG_SEND_TRIM) && nbd_pool_has_block_status(z->p)) {
    /* TRIM promises nothing about contents: keep it only if the server
     * then reports zeros. */
    nbd_op_init(&z->sub, on_trimmed);
    nbd_pool_io(z->p, &z->sub, NBD_CMD_TRIM, 0, z->start, len, NULL);
    nbd_op_put(&z->sub);
  } else {
    z->pos = z->start;
    write_zero_pieces(z);
  }
}

static void on_zero_granted(struct rl_request *r)
{
  bzero_locked((struct bzero *)((char *)r - offsetof(struct bzero, lk)));
}

void blockio_zero(struct nbd_pool *p, struct nbd_op *op, uint64_t off, uint64_t len, bool punch)
{
  if (len == 0)
    return;
  uint64_t m = nbd_pool_min_block(p), end = off + len;
  uint64_t a = round_up(off, m), b = round_down(end, m);
  if (a >= b) { /* inside one or two partial blocks */
    for (uint64_t pos = off; pos < end; pos += ZERO_BUF_SIZE)
      blockio_write(p, op, 0, pos, end - pos < ZERO_BUF_SIZE ? end - pos : ZERO_BUF_SIZE, zero_buf,
                    NULL);
    return;
  }
  if (off < a)
    blockio_write(p, op, 0, off, a - off, zero_buf, NULL);
  if (b < end)
    blockio_write(p, op, 0, b, end - b, zero_buf, NULL);
  struct bzero *z = calloc(1, sizeof *z);
  if (!z) {
    nbd_op_fail(op, ENOMEM);
    return;
  }
  nbd_op_get(op);
  z->parent = op;
  z->p = p;
  z->punch = punch;
  z->start = a;
  z->end = b;
  pthread_mutex_init(&z->lock, NULL);
  if (m == 1) {
    bzero_locked(z);
    return;
  }
  z->lk = (struct rl_request){ .start = a, .end = b, .granted = on_zero_granted };
  z->locked = true;
  if (rangelock_acquire(nbd_pool_rangelock(p), &z->lk))
    bzero_locked(z);
}
