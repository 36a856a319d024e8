/* fs.c: FUSE low-level operations mapped onto NBD commands.
 *
 * No operation waits for the server: each builds an nbd_op, hands its
 * commands to the pool and returns; the op's completion (on a receive
 * thread) sends the reply to the kernel.
 */
#define FUSE_USE_VERSION 34
#include "fs.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "blockio.h"
#include "extents.h"
#include "fuse-io.h"
#include "fuse-rx.h"
#include "log.h"
#include "readahead.h"
#include "stats.h"
#include "wlog.h"
#include "write-sched.h"

/* Attributes are cached for a second: sizes never change, but
 * allocation (st_blocks) does, also by other clients. */
#define ATTR_TIMEOUT 1.0
#define FS_MAX_BACKGROUND 64
_Static_assert((uint64_t)FS_MAX_BACKGROUND << 20 <= WRITE_SCHED_HOLD_MAX,
               "the write scheduler must be able to take in a whole write-back burst");
#define ENTRY_TIMEOUT 3600.0   /* single export: the name never goes away */
#define EXPORT_ENTRY_TIMEOUT 1.0 /* directory mode: exports come and go */

static struct fs *fs_of(fuse_req_t req) { return fuse_req_userdata(req); }

/* An open file (fi->fh).  FLUSH requests carry no open flags (libfuse
 * leaves fi->flags 0), so whether close() must flush is remembered here. */
struct fs_handle {
  struct fs_file *f;
  struct nbd_pool *pool; /* held from open to release */
  uint64_t base, size;   /* the window on the export: all of it, or a partition */
  unsigned gen;          /* fs_file_gen at open: the file has gone since when it differs */
  bool writable;
  bool direct;           /* direct_io: the kernel's cache is not used */
  struct readahead *ra;  /* reads go through the page cache: prefetch them; or NULL */
  struct fs_handle *prev, *next; /* open handles, for an exit with files open */
};

static pthread_mutex_t handles_lock = PTHREAD_MUTEX_INITIALIZER;
static struct fs_handle *handles;

static void handle_track(struct fs_handle *h)
{
  pthread_mutex_lock(&handles_lock);
  h->prev = NULL;
  h->next = handles;
  if (handles)
    handles->prev = h;
  handles = h;
  pthread_mutex_unlock(&handles_lock);
}

/* f is open for writing through the page cache (another handle than h):
 * with the writeback cache, it may have pages under write-back. */
static bool cached_writer_open(const struct fs_file *f, const struct fs_handle *h)
{
  pthread_mutex_lock(&handles_lock);
  const struct fs_handle *o = handles;
  while (o && (o == h || o->f != f || !o->writable || o->direct))
    o = o->next;
  pthread_mutex_unlock(&handles_lock);
  return o != NULL;
}

static void handle_free(struct fs_handle *h)
{
  pthread_mutex_lock(&handles_lock);
  if (h->prev)
    h->prev->next = h->next;
  else
    handles = h->next;
  if (h->next)
    h->next->prev = h->prev;
  pthread_mutex_unlock(&handles_lock);
  free(h);
}

void fs_free_handles(void)
{
  pthread_mutex_lock(&handles_lock);
  while (handles) {
    struct fs_handle *h = handles;
    handles = h->next;
    free(h);
  }
  pthread_mutex_unlock(&handles_lock);
}

char **fs_writable_paths(struct fs *fs, const char *mount_path)
{
  pthread_mutex_lock(&handles_lock);
  size_t n = 0;
  for (struct fs_handle *h = handles; h; h = h->next)
    n++;
  struct fs_file **seen = calloc(n + 1, sizeof *seen);
  char **paths = calloc(n + 1, sizeof *paths);
  size_t k = 0;
  bool ok = seen && paths;
  for (struct fs_handle *h = handles; h && ok; h = h->next) {
    bool dup = !h->writable;
    for (size_t i = 0; i < k && !dup; i++)
      dup = seen[i] == h->f;
    if (dup)
      continue;
    seen[k] = h->f;
    if (fs->mode == FS_NAKED ? !(paths[k] = strdup(mount_path))
                             : asprintf(&paths[k], "%s/%s", mount_path, h->f->name) < 0) {
      paths[k] = NULL;
      ok = false;
    } else {
      k++;
    }
  }
  pthread_mutex_unlock(&handles_lock);
  free(seen);
  if (!ok && paths) {
    for (size_t i = 0; i < k; i++)
      free(paths[i]);
    free(paths);
    paths = NULL;
  }
  return paths;
}

static struct fs_handle *handle_of(struct fuse_file_info *fi)
{
  return (struct fs_handle *)(uintptr_t)fi->fh;
}

/* Where a handle's requests are counted: its export's file (a partition's
 * disk), which lives for the whole mount, so counts outlive idle closes. */
static struct nbd_stats *stats_of(struct fs_handle *h)
{
  return h->f->disk ? &h->f->disk->stats : &h->f->stats;
}

/* Failed requests, logged rate-limited: one limiter per kind. */
static struct log_limit read_fail = LOG_LIMIT_INIT;
static struct log_limit write_fail = LOG_LIMIT_INIT;
static struct log_limit flush_fail = LOG_LIMIT_INIT;
static struct log_limit fallocate_fail = LOG_LIMIT_INIT;
static struct log_limit lseek_fail = LOG_LIMIT_INIT;

static uint64_t mono_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void fill_times(struct fs *fs, struct stat *st)
{
  st->st_atim = st->st_mtim = st->st_ctim = fs->mount_time;
}

/* Owner, permission bits and ctime from p, else the mount's defaults:
 * dflt (0666 or 0777) without the umask.  p's lock held. */
static void perm_fill(const struct fs *fs, const struct fs_perm *p, mode_t dflt, struct stat *st)
{
  if (p->set) {
    st->st_mode |= p->mode;
    st->st_uid = p->uid;
    st->st_gid = p->gid;
    st->st_ctim = p->ctime;
  } else {
    st->st_mode |= dflt & ~fs->umask & 0777;
    st->st_uid = fs->uid;
    st->st_gid = fs->gid;
  }
}

/* chmod/chown/chgrp.  The kernel (default_permissions) has already checked
 * that the caller may, so this only records it.  p's lock held. */
static void perm_apply(const struct fs *fs, struct fs_perm *p, mode_t dflt,
                       const struct stat *attr, int to_set)
{
  if (!p->set) {
    p->mode = dflt & ~fs->umask & 0777;
    p->uid = fs->uid;
    p->gid = fs->gid;
    p->set = true;
  }
  /* No set-user/group-ID bits: nothing runs from an export, and the kernel
   * is told (FUSE_HANDLE_KILLPRIV_V2) that no file ever has them. */
  if (to_set & FUSE_SET_ATTR_MODE)
    p->mode = attr->st_mode & 01777;
  if (to_set & FUSE_SET_ATTR_UID)
    p->uid = attr->st_uid;
  if (to_set & FUSE_SET_ATTR_GID)
    p->gid = attr->st_gid;
  clock_gettime(CLOCK_REALTIME, &p->ctime);
}

#define PERM_SET_ATTRS (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)

/* Fill st; returns how long the kernel may keep it.  st_blocks is what
 * block status last reported (pool held), however old, so that stat never
 * waits for the server: a recount runs in the background and tells the
 * kernel to ask again when the count changed.  The whole size when the
 * server cannot tell or the export is not open. */
static double file_stat(struct fs *fs, struct fs_file *f, struct nbd_pool *held, struct stat *st)
{
  memset(st, 0, sizeof *st);
  fill_times(fs, st);
  pthread_mutex_lock(&f->lock);
  uint64_t size = f->info.size;
  bool part_known = f->part_alloc_known;
  uint64_t part_alloc = f->part_alloc;
  st->st_blksize = (blksize_t)(f->info.pref_block ? f->info.pref_block : 4096);
  perm_fill(fs, &f->perm, 0666, st);
  if (f->readonly) /* whatever chmod said: writing fails */
    st->st_mode &= ~(mode_t)0222;
  st->st_mode |= S_IFREG;
  pthread_mutex_unlock(&f->lock);
  uint64_t alloc = size, bytes;
  bool fresh, counted = true;
  if (f->disk) {
    if (part_known)
      alloc = part_alloc;
    counted = part_known || !held;
  } else if (held && nbd_pool_has_block_status(held)) {
    counted = extents_allocated_known(held, &bytes, &fresh);
    if (counted)
      alloc = bytes;
  }
  st->st_ino = f->ino;
  st->st_nlink = 1;
  st->st_size = (off_t)size;
  st->st_blocks = (blkcnt_t)((alloc + 511) / 512);
  /* Not counted yet: the next stat asks (and waits for the first count). */
  return counted ? ATTR_TIMEOUT : 0;
}

/* Nothing counted yet: the first stat waits (briefly) for a count. */
static bool alloc_unknown(struct fs_file *f, struct nbd_pool *p)
{
  if (f->disk) {
    pthread_mutex_lock(&f->lock);
    bool known = f->part_alloc_known;
    pthread_mutex_unlock(&f->lock);
    return !known;
  }
  uint64_t bytes;
  bool fresh;
  return nbd_pool_has_block_status(p) && !extents_allocated_known(p, &bytes, &fresh);
}

/* A background recount; the file (and its pool) is held until it ends. */
struct alloc_scan {
  struct fs *fs;
  struct fs_file *f;
  uint64_t before;   /* st_blocks' bytes when it began */
};

static void alloc_scanned(void *arg, uint64_t bytes)
{
  struct alloc_scan *a = arg;
  struct fs_file *f = a->f;
  if (f->disk) {
    pthread_mutex_lock(&f->lock);
    f->part_alloc = bytes;
    f->part_alloc_known = true;
    f->part_scan_running = false;
    pthread_mutex_unlock(&f->lock);
  }
  /* Only the attributes (offset -1): cached pages stay. */
  if (bytes != a->before && a->fs->se)
    fuse_lowlevel_notify_inval_inode(a->fs->se, f->ino, -1, 0);
  fs_file_release(a->fs, f);
  free(a);
}

/* Start a recount when the known one is stale (rate-limited: see
 * extents_allocated_refresh; a partition at most once a second). */
static void refresh_allocated(struct fs *fs, struct fs_file *f, struct nbd_pool *held)
{
  if (!nbd_pool_has_block_status(held))
    return;
  /* Decided before anything is allocated or held: most calls start nothing. */
  uint64_t before;
  bool fresh;
  if (f->disk) {
    uint64_t now = mono_ms();
    pthread_mutex_lock(&f->lock);
    bool go = !f->part_scan_running && now >= f->part_scanned_ms + 1000;
    if (go) {
      f->part_scan_running = true;
      f->part_scanned_ms = now;
    }
    before = f->part_alloc;
    pthread_mutex_unlock(&f->lock);
    if (!go)
      return;
  } else if (extents_allocated_known(held, &before, &fresh) && fresh) {
    return;
  }
  struct alloc_scan *a = malloc(sizeof *a);
  if (!a) {
    if (f->disk) {
      pthread_mutex_lock(&f->lock);
      f->part_scan_running = false;
      pthread_mutex_unlock(&f->lock);
    }
    return;
  }
  *a = (struct alloc_scan){ fs, f, before };
  fs_file_hold(f); /* the same pool: held already */
  if (f->disk)
    extents_allocated_range(held, f->part.start, f->part.start + f->part.length, alloc_scanned, a);
  else if (!extents_allocated_refresh(held, alloc_scanned, a)) { /* not due yet */
    fs_file_release(fs, f);
    free(a);
  }
}

/* How long the first stat after an export is opened waits for the first
 * count before answering with the whole size: enough for a healthy server
 * (a count is one or a few round trips), short, so that a stalled server
 * never holds up stat or ls for long. */
#define STAT_WAIT_MS 250

/* A getattr waiting for a scan.  Whichever comes first, the scan or the
 * deadline (kept by the reply thread), answers; the other only drops its
 * reference.  The pool is held until both are done. */
struct stat_wait {
  fuse_req_t req;
  struct fs *fs;
  struct fs_file *f;
  struct nbd_pool *p;
  atomic_int refs;
  atomic_bool answered;
  uint64_t deadline_ms;
  struct stat_wait *next;
};

static void stat_wait_answer(struct stat_wait *w)
{
  if (!atomic_exchange(&w->answered, true)) {
    struct stat st;
    double timeout = file_stat(w->fs, w->f, w->p, &st);
    fuse_reply_attr(w->req, &st, timeout);
  }
  if (atomic_fetch_sub(&w->refs, 1) == 1) {
    fs_file_release(w->fs, w->f);
    free(w);
  }
}

static void stat_scanned(void *arg, uint64_t bytes)
{
  struct stat_wait *w = arg;
  if (w->f->disk) { /* a partition's count is kept by the file */
    pthread_mutex_lock(&w->f->lock);
    w->f->part_alloc = bytes;
    w->f->part_alloc_known = true;
    w->f->part_scanned_ms = mono_ms();
    pthread_mutex_unlock(&w->f->lock);
  } /* a disk's is cached by the extent cache: file_stat picks it up */
  stat_wait_answer(w);
}

/* Give w to the reply thread's deadline list (false: no thread running). */
static bool stat_wait_queue(struct stat_wait *w);

static void dir_stat(struct fs *fs, struct stat *st)
{
  memset(st, 0, sizeof *st);
  st->st_ino = FUSE_ROOT_ID;
  st->st_nlink = 2;
  fill_times(fs, st);
  pthread_mutex_lock(&fs->dir_lock);
  perm_fill(fs, &fs->dir_perm, 0777, st);
  pthread_mutex_unlock(&fs->dir_lock);
  st->st_mode |= S_IFDIR;
}

static void fs_init(void *userdata, struct fuse_conn_info *conn)
{
  struct fs *fs = userdata;
  /* (Mounted over a file, fs_naked_size then sets the file's size.) */
  if (fs->cache == CACHE_WRITEBACK && !(conn->capable & FUSE_CAP_WRITEBACK_CACHE))
    log_warn("the kernel has no FUSE writeback cache: --cache=writeback works as --cache=read");
  else if (fs->cache == CACHE_WRITEBACK)
    conn->want |= FUSE_CAP_WRITEBACK_CACHE;
  bool writeback = conn->want & FUSE_CAP_WRITEBACK_CACHE;
  atomic_store(&fs->writeback, writeback);

  /* Async direct I/O and readahead need more background requests than the
   * default 12 to keep many NBD requests in flight; 64 kept fio's 4 KiB
   * QD 2x32 as fast as 256 did (16 cost a quarter).  Write-back also comes
   * as background requests, up to this many of 1 MiB: against a slow
   * server the write scheduler takes them all in (WRITE_SCHED_HOLD_MAX), so
   * that a read or stat behind them is not left waiting in the kernel's
   * queue. */
  conn->max_background = FS_MAX_BACKGROUND;
  conn->congestion_threshold = FS_MAX_BACKGROUND * 3 / 4;
  /* O_TRUNC is ignored: like a block device, the export keeps its size.
   * Without the writeback cache it reaches open() (atomic O_TRUNC), where
   * it is dropped.  With it, the kernel would then set its own idea of the
   * size to 0 and keep it (it trusts its cached size), so O_TRUNC must come
   * as a truncation to 0, which fs_setattr answers with the real size. */
  if ((conn->capable & FUSE_CAP_ATOMIC_O_TRUNC) && !writeback)
    conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
  else
    conn->want &= ~FUSE_CAP_ATOMIC_O_TRUNC;
  /* mtime never changes here, so re-checking attributes on every read
   * would only cost round trips. */
  conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
}

static void fs_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
  struct fs *fs = fs_of(req);
  /* Counts a kernel reference (until fs_forget): slots of gone files are
   * only recycled once the kernel forgot them. */
  struct fs_file *f = fs->mode != FS_NAKED && parent == FUSE_ROOT_ID ? fs_file_lookup(fs, name)
                                                                     : NULL;
  if (!f) {
    fuse_reply_err(req, fs->mode == FS_NAKED ? ENOTDIR : ENOENT);
    return;
  }
  struct fuse_entry_param e = { .ino = f->ino,
                                .entry_timeout = fs->mode == FS_EXPORTS ? EXPORT_ENTRY_TIMEOUT
                                                                        : ENTRY_TIMEOUT };
  struct nbd_pool *p = fs_file_hold(f);
  if (p)
    refresh_allocated(fs, f, p);
  e.attr_timeout = file_stat(fs, f, p, &e.attr);
  if (p)
    fs_file_release(fs, f);
  if (fuse_reply_entry(req, &e) != 0) /* the kernel did not take it */
    fs_file_forget(fs, f->ino, 1);
}

static void fs_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
  fs_file_forget(fs_of(req), ino, nlookup);
  fuse_reply_none(req);
}

static void fs_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
  for (size_t i = 0; i < count; i++)
    fs_file_forget(fs_of(req), forgets[i].ino, forgets[i].nlookup);
  fuse_reply_none(req);
}

static void fs_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  (void)fi;
  struct fs *fs = fs_of(req);
  struct stat st;
  struct fs_file *f = fs_file_by_ino(fs, ino);
  if (!f) {
    if (ino != FUSE_ROOT_ID) {
      fuse_reply_err(req, ENOENT);
      return;
    }
    dir_stat(fs, &st);
    fuse_reply_attr(req, &st, ATTR_TIMEOUT);
    return;
  }
  /* A file whose export (or partition) went: its descriptors fail, and
   * so does this, which the kernel asks before a cached write() (so that,
   * with the writeback cache too, writing to it fails at once). */
  if (fs_file_gone(f)) {
    fuse_reply_err(req, EIO);
    return;
  }
  struct nbd_pool *p = fs_file_hold(f);
  if (p && alloc_unknown(f, p)) {
    /* The first count: ask the server, but answer by the deadline. */
    struct stat_wait *w = malloc(sizeof *w);
    if (w) {
      w->req = req;
      w->fs = fs;
      w->f = f;
      w->p = p; /* this getattr's hold passes to w */
      atomic_init(&w->refs, 2);
      atomic_init(&w->answered, false);
      w->deadline_ms = mono_ms() + STAT_WAIT_MS;
      if (stat_wait_queue(w)) {
        if (f->disk)
          extents_allocated_range(p, f->part.start, f->part.start + f->part.length, stat_scanned,
                                  w);
        else
          extents_allocated(p, stat_scanned, w);
        return;
      }
      free(w);
    }
  }
  if (p)
    refresh_allocated(fs, f, p);
  double timeout = file_stat(fs, f, p, &st);
  if (p)
    fs_file_release(fs, f);
  fuse_reply_attr(req, &st, timeout);
}

/* The directory (not in naked mode, where the root is the file). */
static void dir_setattr(fuse_req_t req, struct fs *fs, const struct stat *attr, int to_set)
{
  if (to_set & FUSE_SET_ATTR_SIZE) {
    fuse_reply_err(req, EISDIR);
    return;
  }
  if (to_set & PERM_SET_ATTRS) {
    pthread_mutex_lock(&fs->dir_lock);
    perm_apply(fs, &fs->dir_perm, 0777, attr, to_set);
    pthread_mutex_unlock(&fs->dir_lock);
  }
  struct stat st;
  dir_stat(fs, &st);
  fuse_reply_attr(req, &st, ATTR_TIMEOUT);
}

static void fs_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
                       struct fuse_file_info *fi)
{
  struct fs *fs = fs_of(req);
  struct fs_file *f = fs_file_by_ino(fs, ino);
  if (!f) {
    if (ino == FUSE_ROOT_ID)
      dir_setattr(req, fs, attr, to_set);
    else
      fuse_reply_err(req, ENOENT);
    return;
  }
  pthread_mutex_lock(&f->lock);
  uint64_t size = f->info.size;
  bool ro = f->readonly;
  pthread_mutex_unlock(&f->lock);
  /* With the writeback cache an open's O_TRUNC arrives as this, with no
   * handle (see fs_init); truncate(2) of the path to 0 looks the same and
   * is ignored alike.  The reply's size puts the kernel right. */
  bool o_trunc = atomic_load(&fs->writeback) && attr->st_size == 0 && !fi;
  if ((to_set & FUSE_SET_ATTR_SIZE) && (uint64_t)attr->st_size != size && !o_trunc) {
    log_info("export '%s': refusing to change the size to %lld bytes (exports have a fixed size)",
             f->name ? f->name : f->export_name, (long long)attr->st_size);
    fuse_reply_err(req, ro ? EROFS : EPERM);
    return;
  }
  if (to_set & PERM_SET_ATTRS) {
    pthread_mutex_lock(&f->lock);
    perm_apply(fs, &f->perm, 0666, attr, to_set);
    pthread_mutex_unlock(&f->lock);
  }
  /* Times are not stored anywhere: accept and ignore them (touch works). */
  struct stat st;
  struct nbd_pool *p = fs_file_hold(f);
  double timeout = file_stat(fs, f, p, &st);
  if (p)
    fs_file_release(fs, f);
  fuse_reply_attr(req, &st, timeout);
}

struct open_ctx {
  fuse_req_t req;
  struct fuse_file_info fi;
  struct fs *fs;
  fuse_ino_t ino;
};

static void open_ready(void *arg, struct fs_file *f, int err)
{
  struct open_ctx *o = arg;
  if (err) {
    fuse_reply_err(o->req, err);
    free(o);
    return;
  }
  bool writable = (o->fi.flags & O_ACCMODE) != O_RDONLY;
  struct nbd_pool *pool = fs_file_pool(f);
  pthread_mutex_lock(&f->lock);
  bool ro = f->readonly;
  pthread_mutex_unlock(&f->lock);
  struct fs_handle *h = NULL;
  /* The generation first: a file goes (gone, then gen bumped) under its
   * lock, so if this reads the new one, the check below sees it gone. */
  unsigned gen = fs_file_gen(f);
  /* It went while the pool opened, or the kernel's entry is stale, or its
   * slot went to another export meanwhile (another inode number). */
  if (fs_file_gone(f) || f->ino != o->ino) {
    fs_file_release(o->fs, f);
    fuse_reply_err(o->req, ENOENT);
  } else if (writable && ro) {
    fs_file_release(o->fs, f);
    fuse_reply_err(o->req, EROFS);
  } else if (!(h = malloc(sizeof *h))) {
    fs_file_release(o->fs, f);
    fuse_reply_err(o->req, ENOMEM);
  } else {
    *h = (struct fs_handle){ .f = f, .pool = pool, .writable = writable, .gen = gen,
                             .base = f->disk ? f->part.start : 0,
                             .size = f->disk ? f->part.length : nbd_pool_size(pool) };
    handle_track(h);
    o->fi.fh = (uintptr_t)h;
    /* O_DIRECT asks to bypass the cache anyway; a direct_io handle also
     * spares every write the kernel's security.capability lookup (one
     * synchronous round trip per write on cached handles). */
    o->fi.direct_io = o->fs->cache == CACHE_NONE || (o->fi.flags & O_DIRECT);
    h->direct = o->fi.direct_io;
    /* The kernel drops its cache of the file at an open (so that other
     * clients' writes are seen), and waits for every page under write-back
     * to be written first: while a writer on this mount keeps writing
     * back, that open would wait as long as the writer writes.  So the
     * cache is kept for an open that does not use it (direct), and while
     * the file is open for cached writing here (writeback). */
    o->fi.keep_cache = h->direct || (atomic_load(&o->fs->writeback) && cached_writer_open(f, h));
    /* What nbdfs fetched ahead is dropped at every open. */
    readahead_drop(pool);
    if (!o->fi.direct_io)
      h->ra = readahead_of(pool);
    /* Direct writes to one file need not wait for each other (the kernel
     * still serialises them while cached descriptors are open, and past
     * the end): the pool orders what must be ordered. */
    if (fuse_io_reply_open(o->req, &o->fi, o->fi.direct_io) != 0) {
      /* interrupted: no release will come */
      fs_file_release(o->fs, f);
      handle_free(h);
    }
  }
  free(o);
}

static void fs_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  struct fs *fs = fs_of(req);
  struct fs_file *f = fs_file_by_ino(fs, ino);
  if (!f) {
    fuse_reply_err(req, ino == FUSE_ROOT_ID ? EISDIR : ENOENT);
    return;
  }
  if ((fi->flags & O_ACCMODE) != O_RDONLY && f->readonly) {
    fuse_reply_err(req, EROFS);
    return;
  }
  struct open_ctx *o = malloc(sizeof *o);
  if (!o) {
    fuse_reply_err(req, ENOMEM);
    return;
  }
  o->req = req;
  o->fi = *fi;
  o->fs = fs;
  o->ino = ino;
  fs_file_acquire(fs, f, open_ready, o);
}

/* ---- admission ---- */

bool fs_admit(void (*resume)(void *arg), void *arg)
{
  return write_sched_admit(resume, arg);
}

/* ---- read ---- */

struct read_op {
  struct nbd_op op;
  fuse_req_t req;
  struct nbd_pool *pool;
  uint64_t off;          /* what the caller asked for (for logs) */
  struct nbd_stats *stats;
  uint64_t start_ns;
  struct read_op *next;  /* in the reply queue */
  size_t skip;   /* bytes of alignment padding before the data asked for */
  size_t len;
  char buf[];
};

/* Large read replies are copied into the kernel by a reply thread, so a
 * worker can receive the next reply while the last one is copied out (the
 * two copies of every byte then run on both cores: +18% for 1 MiB reads,
 * measured side by side).  Small replies are answered in place: for them a
 * hand-off would cost more than it saves. */
#define OFFLOAD_MIN (256 * 1024)

/* The same thread sends large WRITE payloads (kept in FUSE's receive
 * buffer), so the worker reads the next request while the last one's
 * payload is copied into the socket; and it answers getattrs whose scan
 * missed its deadline. */
struct write_op;
static void send_write(struct write_op *w);
struct reply_queue {
  pthread_mutex_t lock;
  pthread_cond_t cond;         /* CLOCK_MONOTONIC */
  struct read_op *head, **tail;
  struct write_op *sends, **sends_tail;
  bool sending;                /* the thread is sending a list taken from sends */
  pthread_cond_t sent;         /* sends is empty and nothing is being sent */
  struct stat_wait *waits, **waits_tail; /* FIFO is deadline order: one fixed delay */
  bool stop;
  bool running;
  pthread_t thread;
};
static struct reply_queue replies = { .lock = PTHREAD_MUTEX_INITIALIZER,
                                      .cond = PTHREAD_COND_INITIALIZER,
                                      .sent = PTHREAD_COND_INITIALIZER, .tail = &replies.head,
                                      .sends_tail = &replies.sends, .waits_tail = &replies.waits };

static void *reply_main(void *arg)
{
  (void)arg;
  pthread_mutex_lock(&replies.lock);
  for (;;) {
    struct write_op *send = replies.sends;
    if (send) {
      replies.sends = NULL;
      replies.sends_tail = &replies.sends;
      replies.sending = true;
      pthread_mutex_unlock(&replies.lock);
      send_write(send); /* the whole list, in order */
      pthread_mutex_lock(&replies.lock);
      replies.sending = false;
      if (!replies.sends)
        pthread_cond_broadcast(&replies.sent);
      continue;
    }
    struct read_op *r = replies.head;
    if (!r) {
      struct stat_wait *w = replies.waits;
      if (w && (replies.stop || w->deadline_ms <= mono_ms())) {
        replies.waits = w->next;
        if (!replies.waits)
          replies.waits_tail = &replies.waits;
        pthread_mutex_unlock(&replies.lock);
        stat_wait_answer(w);
        pthread_mutex_lock(&replies.lock);
        continue;
      }
      if (replies.stop)
        break;
      if (w) {
        struct timespec until = { .tv_sec = (time_t)(w->deadline_ms / 1000),
                                  .tv_nsec = (long)(w->deadline_ms % 1000) * 1000000 };
        pthread_cond_timedwait(&replies.cond, &replies.lock, &until);
      } else {
        pthread_cond_wait(&replies.cond, &replies.lock);
      }
      continue;
    }
    replies.head = r->next;
    if (!replies.head)
      replies.tail = &replies.head;
    pthread_mutex_unlock(&replies.lock);
    fuse_reply_buf(r->req, r->buf + r->skip, r->len);
    free(r);
    pthread_mutex_lock(&replies.lock);
  }
  pthread_mutex_unlock(&replies.lock);
  return NULL;
}

int fs_reply_thread_start(void)
{
  /* Nobody uses the condition before the thread runs: give it the
   * monotonic clock of the deadlines. */
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_destroy(&replies.cond);
  pthread_cond_init(&replies.cond, &ca);
  pthread_condattr_destroy(&ca);
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  pthread_mutex_lock(&replies.lock);
  replies.stop = false;
  int r = pthread_create(&replies.thread, NULL, reply_main, NULL);
  replies.running = r == 0;
  pthread_mutex_unlock(&replies.lock);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  return -r;
}

static bool stat_wait_queue(struct stat_wait *w)
{
  pthread_mutex_lock(&replies.lock);
  bool ok = replies.running && !replies.stop;
  if (ok) {
    w->next = NULL;
    *replies.waits_tail = w;
    replies.waits_tail = &w->next;
    if (replies.waits == w) /* the earliest deadline now */
      pthread_cond_signal(&replies.cond);
  }
  pthread_mutex_unlock(&replies.lock);
  return ok;
}

void fs_send_held_writes(void)
{
  write_sched_send_all();
  pthread_mutex_lock(&replies.lock);
  while (replies.running && (replies.sends || replies.sending))
    pthread_cond_wait(&replies.sent, &replies.lock);
  pthread_mutex_unlock(&replies.lock);
}

/* The kernel takes a size from a store into the page cache that ends past
 * its own (FUSE_NOTIFY_STORE extends the file), so nbdfs stores the
 * export's last byte, read from the server: what the page cache then holds
 * is true. */
int fs_naked_size(struct fs *fs, const char *mount_path)
{
  struct stat st;
  /* A stat waits until INIT is answered, and with it whether the writeback
   * cache is on. */
  if (fs->mode != FS_NAKED || stat(mount_path, &st) < 0 || !atomic_load(&fs->writeback))
    return 0;
  struct fs_file *f = fs->files[0];
  uint64_t size = nbd_pool_size(f->pool);
  if (size == 0 || (uint64_t)st.st_size == size)
    return 0;
  uint8_t last;
  int r = nbd_pool_read_sync(f->pool, &last, size - 1, 1);
  if (r < 0) {
    log_error("%s: reading the export's last byte (to give the kernel its size) failed: %s",
              mount_path, strerror(-r));
    return -1;
  }
  struct fuse_bufvec bv = FUSE_BUFVEC_INIT(1);
  bv.buf[0].mem = &last;
  r = fuse_lowlevel_notify_store(fs->se, FUSE_ROOT_ID, (off_t)(size - 1), &bv, 0);
  if (r < 0 || stat(mount_path, &st) < 0 || (uint64_t)st.st_size != size) {
    log_error("%s: the kernel did not take the export's size (%llu bytes; it shows %lld): "
              "mount over a file with --cache=read", mount_path, (unsigned long long)size,
              r < 0 ? -1LL : (long long)st.st_size);
    return -1;
  }
  return 0;
}

/* Send what is queued, answer waiting getattrs, then stop (every read has
 * been answered). */
void fs_reply_thread_stop(void)
{
  if (!replies.running)
    return;
  pthread_mutex_lock(&replies.lock);
  replies.stop = true;
  pthread_cond_signal(&replies.cond);
  pthread_mutex_unlock(&replies.lock);
  pthread_join(replies.thread, NULL);
  replies.running = false;
}

static void read_complete(struct nbd_op *op, int err)
{
  struct read_op *r = (struct read_op *)op;
  /* Counted when the server's answer is in, before the copy to the kernel
   * (which the reply thread may do). */
  stats_count(r->stats, STATS_READ, r->start_ns, r->len, err != 0);
  if (!err && r->len >= OFFLOAD_MIN && replies.running) {
    r->next = NULL;
    pthread_mutex_lock(&replies.lock);
    *replies.tail = r;
    replies.tail = &r->next;
    pthread_cond_signal(&replies.cond);
    pthread_mutex_unlock(&replies.lock);
    return;
  }
  if (err) {
    log_failure(&read_fail, "%s: read of %zu bytes at offset %llu failed: %s",
                nbd_pool_desc(r->pool), r->len, (unsigned long long)r->off, strerror(err));
    fuse_reply_err(r->req, err);
  } else {
    fuse_reply_buf(r->req, r->buf + r->skip, r->len);
  }
  free(r);
}

/* An export that left the listing (or a partition that left the table):
 * its handles fail with EIO, also once it is back.  What comes back under
 * the name may be another export, and these handles' size, data in flight
 * and unflushed writes belong to the old one: reopening is the way back. */
static bool handle_gone(struct fs_handle *h)
{
  return fs_file_gen(h->f) != h->gen; /* every way of going bumps it */
}

/* Read [off, off+size) of the export from the server and answer req. */
static void read_from_server(fuse_req_t req, struct nbd_pool *pool, uint64_t off, size_t size,
                             struct nbd_stats *stats, uint64_t start_ns)
{
  /* Widen to the server's minimum block size (the size is a multiple of it). */
  uint64_t align = nbd_pool_min_block(pool);
  uint64_t start = off - off % align;
  uint64_t end = off + size;
  end += (align - end % align) % align;
  struct read_op *r = malloc(sizeof *r + (end - start));
  if (!r) {
    fuse_reply_err(req, ENOMEM);
    return;
  }
  nbd_op_init(&r->op, read_complete);
  r->req = req;
  r->pool = pool;
  r->off = off;
  r->skip = (size_t)(off - start);
  r->len = size;
  r->stats = stats;
  r->start_ns = start_ns;
  nbd_pool_io(pool, &r->op, NBD_CMD_READ, 0, start, end - start, r->buf);
  nbd_op_put(&r->op);
}

/* A read the read-ahead took on. */
struct ra_read {
  fuse_req_t req;
  struct nbd_pool *pool;
  uint64_t off;
  size_t size;
  struct nbd_stats *stats;
  uint64_t start_ns;
};

static void ra_read_done(const void *ctx, const void *data, size_t len, int err)
{
  const struct ra_read *x = ctx;
  if (err) { /* the prefetch did not work out: from the server after all */
    read_from_server(x->req, x->pool, x->off, x->size, x->stats, x->start_ns);
  } else {
    stats_count(x->stats, STATS_READ, x->start_ns, len, false);
    fuse_reply_buf(x->req, data, len);
  }
}

static void fs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
  (void)ino;
  struct fs_handle *h = handle_of(fi);
  uint64_t fsize = h->size;
  if (handle_gone(h)) {
    fuse_reply_err(req, EIO);
    return;
  }
  if ((uint64_t)off >= fsize || size == 0) {
    fuse_reply_buf(req, NULL, 0);
    return;
  }
  if (size > fsize - (uint64_t)off)
    size = fsize - (uint64_t)off; /* short read at the end */
  uint64_t at = (uint64_t)off + h->base;
  uint64_t start_ns = stats_now();
  if (h->ra) {
    struct ra_read x = { req, h->pool, at, size, stats_of(h), start_ns };
    if (readahead_read(h->ra, at, size, ra_read_done, &x, sizeof x))
      return;
  }
  read_from_server(req, h->pool, at, size, stats_of(h), start_ns);
}

/* ---- write ---- */

struct write_op {
  struct nbd_op op;
  fuse_req_t req;
  struct nbd_pool *pool;
  uint64_t off;
  size_t len;
  bool flush_after;  /* O_DSYNC without FUA: FLUSH before answering */
  bool flushing;
  bool cut_short;    /* written back across the end: the file's next fsync/close fails */
  struct fs_file *file;
  struct nbd_stats *stats;
  uint64_t start_ns;
  uint16_t flags;
  bool large;            /* its payload fills half a receive buffer: kept, not copied */
  const void *buf;       /* the payload, until sent */
  struct wbuf *owner;    /* a reference to the buffer holding buf, or NULL */
  struct write_sched_item item; /* held by the write scheduler */
  struct write_op *next; /* handed to the reply thread to send */
};

static void write_complete(struct nbd_op *op, int err)
{
  struct write_op *w = (struct write_op *)op;
  if (!err && w->flush_after) {
    w->flush_after = false;
    w->flushing = true;
    nbd_op_init(&w->op, write_complete);
    nbd_pool_flush(w->pool, &w->op);
    nbd_op_put(&w->op);
    return;
  }
  stats_count(w->stats, STATS_WRITE, w->start_ns, w->len, err != 0);
  write_sched_done(w->len);
  if (!err && w->cut_short) {
    atomic_store(&w->file->past_end_lost, true);
    log_failure(&write_fail, "%s: write-back of cached pages past the end at offset %llu refused "
                "(the %zu bytes before the end were written); the next fsync or close reports "
                "ENOSPC", nbd_pool_desc(w->pool), (unsigned long long)(w->off + w->len), w->len);
  }
  if (err) {
    log_failure(&write_fail, "%s: %s of %zu bytes at offset %llu failed: %s",
                nbd_pool_desc(w->pool), w->flushing ? "flush after a synchronous write" : "write",
                w->len, (unsigned long long)w->off, strerror(err));
    fuse_reply_err(w->req, err == EPERM ? EROFS : err);
  } else {
    fuse_reply_write(w->req, w->len);
  }
  free(w);
}

/* Hand w to the reply thread, which sends it (and drops w->owner); false
 * if it is not running. */
static bool queue_send(struct write_op *w)
{
  w->next = NULL;
  pthread_mutex_lock(&replies.lock);
  bool ok = replies.running && !replies.stop;
  if (ok) {
    *replies.sends_tail = w;
    replies.sends_tail = &w->next;
    pthread_cond_signal(&replies.cond);
  }
  pthread_mutex_unlock(&replies.lock);
  return ok;
}

/* Give w to its pool, on this thread.  The pool keeps w->owner's buffer by
 * reference, or copies a payload that has none. */
static void send_now(struct write_op *w)
{
  struct wbuf *owner = w->owner;
  blockio_write(w->pool, &w->op, w->flags, w->off, w->len, w->buf, owner);
  nbd_op_put(&w->op); /* may free w */
  wbuf_put(owner);
}

/* On the reply thread: send each write of the list. */
static void send_write(struct write_op *w)
{
  while (w) {
    struct write_op *next = w->next;
    send_now(w);
    w = next;
  }
}

/* Send w (counted in flight by the write scheduler).  A large payload, kept
 * in its receive buffer, is sent by the reply thread while this worker
 * reads on. */
static void write_send(struct write_op *w)
{
  if (!w->large || !queue_send(w))
    send_now(w);
}

/* The write scheduler's turn for a held write. */
static void send_held(struct write_sched_item *it)
{
  write_send((struct write_op *)((char *)it - offsetof(struct write_op, item)));
}

static void fs_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
                     struct fuse_file_info *fi)
{
  (void)ino;
  struct fs_handle *h = handle_of(fi);
  if (h->f->readonly) {
    fuse_reply_err(req, EROFS);
    return;
  }
  struct nbd_pool *pool = h->pool;
  uint64_t fsize = h->size;
  if (handle_gone(h)) {
    fuse_reply_err(req, EIO);
    return;
  }
  if (size == 0) {
    fuse_reply_write(req, 0);
    return;
  }
  if ((uint64_t)off >= fsize) {
    fuse_reply_err(req, ENOSPC);
    return;
  }
  /* A write across the end is short.  The kernel takes a short write-back
   * of cached pages as done, dropping the rest without a word, and an
   * error for one that crosses the end leaves its pages under writeback
   * for good (Linux 6.18: fsync hangs); so the part inside lands, the
   * reply is short, and the file's next fsync or close reports ENOSPC. */
  bool past_end = size > fsize - (uint64_t)off;
  if (past_end)
    size = fsize - (uint64_t)off;
  off += (off_t)h->base;
  struct fs *fs = fs_of(req);
  if (fs->partitions)
    partitions_note_write(h->f->disk ? h->f->disk : h->f, (uint64_t)off, size);
  struct write_op *w = malloc(sizeof *w);
  if (!w) {
    fuse_reply_err(req, ENOMEM);
    return;
  }
  uint16_t tflags = nbd_pool_flags(pool);
  bool sync = fi->flags & (O_SYNC | O_DSYNC);
  uint16_t flags = (sync && (tflags & NBD_FLAG_SEND_FUA)) ? NBD_CMD_FLAG_FUA : 0;
  nbd_op_init(&w->op, write_complete);
  w->req = req;
  w->pool = pool;
  w->off = (uint64_t)off;
  w->len = size;
  w->flush_after = sync && !flags;
  w->flushing = false;
  w->cut_short = past_end && fi->writepage;
  w->file = h->f;
  w->stats = stats_of(h);
  w->start_ns = stats_now();
  w->flags = flags;
  /* A large payload (at least half a receive buffer) stays in FUSE's
   * receive buffer, kept by reference. */
  struct wbuf *owner = fuse_rx_owner(buf, size);
  w->large = owner != NULL;
  w->buf = buf;
  w->owner = wbuf_get(owner);
  if (write_sched_try(size)) {
    write_send(w);
    return;
  }
  /* Its turn comes after earlier writes are answered, and the receive
   * buffer is read into again before then: a small payload is copied. */
  if (!owner) {
    if (!(w->owner = wbuf_new(buf, size))) {
      fuse_reply_err(req, ENOMEM);
      free(w);
      return;
    }
    w->buf = w->owner->data;
  }
  w->item = (struct write_sched_item){ .send = send_held, .len = size };
  if (write_sched_hold(&w->item))
    send_held(&w->item);
}

/* ---- flush / fsync ---- */

struct flush_op {
  struct nbd_op op;
  fuse_req_t req;
  struct nbd_pool *pool;
  const char *what;
  struct nbd_stats *stats; /* NULL: nothing to flush, not counted */
  uint64_t start_ns;
  int lost;                /* ENOSPC: cached writes past the end were dropped */
};

static void flush_complete(struct nbd_op *op, int err)
{
  struct flush_op *r = (struct flush_op *)op;
  if (r->stats)
    stats_count(r->stats, STATS_FLUSH, r->start_ns, 0, err != 0);
  if (err)
    log_failure(&flush_fail, "%s: %s failed: %s", nbd_pool_desc(r->pool), r->what, strerror(err));
  fuse_reply_err(r->req, err ? err : r->lost);
  free(r);
}

static void do_flush(fuse_req_t req, struct fs_handle *h, const char *what)
{
  struct nbd_pool *pool = h->pool;
  /* Writes through a handle whose export went may not have reached it:
   * fsync and close say so.  (The pool's close still flushes what it can.) */
  if (handle_gone(h)) {
    fuse_reply_err(req, EIO);
    return;
  }
  struct flush_op *r = malloc(sizeof *r);
  if (!r) {
    fuse_reply_err(req, ENOMEM);
    return;
  }
  nbd_op_init(&r->op, flush_complete);
  r->req = req;
  r->pool = pool;
  r->what = what;
  /* Only a flush that has something to send is a request worth timing:
   * counting no-ops would hide how long real FLUSHes take. */
  r->stats = nbd_pool_needs_flush(pool) ? stats_of(h) : NULL;
  r->start_ns = stats_now();
  r->lost = atomic_exchange(&h->f->past_end_lost, false) ? ENOSPC : 0;
  nbd_pool_flush(pool, &r->op); /* sends nothing when nothing is unflushed */
  nbd_op_put(&r->op);
}

/* close(): make this handle's writes durable, like fsync.  A read-only
 * handle has nothing to flush (and must not report another's failure). */
static void fs_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  (void)ino;
  struct fs_handle *h = handle_of(fi);
  if (!h->writable) {
    fuse_reply_err(req, 0);
    return;
  }
  do_flush(req, h, "flush on close");
}

static void fs_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
  (void)ino;
  do_flush(req, handle_of(fi), datasync ? "fdatasync" : "fsync");
}

static void fs_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  (void)ino;
  struct fs_handle *h = handle_of(fi);
  fs_file_release(fs_of(req), h->f);
  handle_free(h);
  fuse_reply_err(req, 0);
}

/* ---- fallocate ---- */

struct fallocate_op {
  struct nbd_op op;
  fuse_req_t req;
  struct nbd_pool *pool;
  fuse_ino_t ino;
  uint64_t off, len;
  bool punch;
  struct nbd_stats *stats;
  uint64_t start_ns;
};

static void fallocate_complete(struct nbd_op *op, int err)
{
  struct fallocate_op *a = (struct fallocate_op *)op;
  struct fuse_session *se = fs_of(a->req)->se;
  stats_count(a->stats, STATS_ZERO, a->start_ns, a->len, err != 0);
  if (err)
    log_failure(&fallocate_fail, "%s: %s of %llu bytes at offset %llu failed: %s",
                nbd_pool_desc(a->pool), a->punch ? "punching a hole" : "zeroing a range",
                (unsigned long long)a->len, (unsigned long long)a->off, strerror(err));
  fuse_reply_err(a->req, err == EPERM ? EROFS : err);
  /* st_blocks changed: drop the kernel's cached attributes. */
  if (!err)
    fuse_lowlevel_notify_inval_inode(se, a->ino, -1, 0);
  free(a);
}

static void fs_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t len,
                         struct fuse_file_info *fi)
{
  struct fs_handle *h = handle_of(fi);
  if (mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)) {
    fuse_reply_err(req, EOPNOTSUPP);
    return;
  }
  if (h->f->readonly) {
    fuse_reply_err(req, EROFS);
    return;
  }
  struct nbd_pool *pool = h->pool;
  uint64_t size = h->size, start = (uint64_t)off, end;
  if (handle_gone(h)) {
    fuse_reply_err(req, EIO);
    return;
  }
  if (off < 0 || len <= 0 || __builtin_add_overflow(start, (uint64_t)len, &end)) {
    fuse_reply_err(req, EINVAL);
    return;
  }
  bool keep = mode & FALLOC_FL_KEEP_SIZE;
  if (end > size) {
    if (!keep) { /* the export cannot grow */
      fuse_reply_err(req, ENOSPC);
      return;
    }
    end = size; /* beyond the end there is nothing to change */
  }
  if (!(mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)) || start >= end) {
    /* Plain allocation: every byte of an export already exists. */
    fuse_reply_err(req, 0);
    return;
  }
  struct fallocate_op *a = malloc(sizeof *a);
  if (!a) {
    fuse_reply_err(req, ENOMEM);
    return;
  }
  nbd_op_init(&a->op, fallocate_complete);
  a->req = req;
  a->pool = pool;
  a->ino = ino;
  start += h->base;
  end += h->base;
  if (fs_of(req)->partitions)
    partitions_note_write(h->f->disk ? h->f->disk : h->f, start, end - start);
  a->off = start;
  a->len = end - start;
  a->punch = mode & FALLOC_FL_PUNCH_HOLE;
  a->stats = stats_of(h);
  a->start_ns = stats_now();
  blockio_zero(pool, &a->op, start, end - start, a->punch);
  nbd_op_put(&a->op);
}

/* ---- lseek (SEEK_DATA / SEEK_HOLE) ---- */

struct lseek_ctx {
  fuse_req_t req;
  struct nbd_pool *pool;
  uint64_t off;  /* in the file */
  uint64_t base; /* the window's start in the export */
  bool data;
};

static void lseek_done(void *arg, int err, uint64_t result)
{
  struct lseek_ctx *l = arg;
  if (err && err != ENXIO) /* ENXIO is an answer (no more data), not a failure */
    log_failure(&lseek_fail, "%s: lseek(%s) from offset %llu failed: %s", nbd_pool_desc(l->pool),
                l->data ? "SEEK_DATA" : "SEEK_HOLE", (unsigned long long)l->off, strerror(err));
  if (err)
    fuse_reply_err(l->req, err);
  else
    fuse_reply_lseek(l->req, (off_t)(result - l->base));
  free(l);
}

static void fs_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
                     struct fuse_file_info *fi)
{
  (void)ino;
  struct fs_handle *h = handle_of(fi);
  struct nbd_pool *pool = h->pool;
  if (whence != SEEK_DATA && whence != SEEK_HOLE) {
    fuse_reply_err(req, EINVAL);
    return;
  }
  if (handle_gone(h)) {
    fuse_reply_err(req, EIO);
    return;
  }
  if (off < 0 || (uint64_t)off >= h->size) {
    fuse_reply_err(req, ENXIO);
    return;
  }
  struct lseek_ctx *l = malloc(sizeof *l);
  if (!l) {
    fuse_reply_err(req, ENOMEM);
    return;
  }
  *l = (struct lseek_ctx){ req, pool, (uint64_t)off, h->base, whence == SEEK_DATA };
  extents_seek_range(pool, h->base + (uint64_t)off, h->base + h->size, whence == SEEK_DATA,
                     lseek_done, l);
}

/* ---- directory ---- */

static void fs_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  struct fs *fs = fs_of(req);
  if (fs->mode == FS_NAKED || ino != FUSE_ROOT_ID) {
    fuse_reply_err(req, ENOTDIR);
    return;
  }
  fuse_reply_open(req, fi);
}

struct readdir_ctx {
  fuse_req_t req;
  struct fs *fs;
  size_t size;
  off_t off;
  bool plus;     /* READDIRPLUS: attributes too, so `ls -l` needs no lookup per file */
};

/* Offsets: 1 after ".", 2 after "..", i + 3 after file i of the table
 * (slots never move, so offsets stay valid across refreshes; a slot
 * recycled meanwhile shows its new file, or not, like any entry added
 * during a listing). */
static void readdir_reply(void *arg)
{
  struct readdir_ctx *r = arg;
  struct fs *fs = r->fs;
  char *buf = malloc(r->size);
  /* READDIRPLUS entries count as lookups: remember whom, to take them back
   * if the kernel never gets the reply.  (An entry takes over 100 bytes.) */
  size_t maxent = r->size / 100 + 1;
  struct fs_file **counted = r->plus ? malloc(maxent * sizeof *counted) : NULL;
  size_t ncounted = 0;
  if (!buf || (r->plus && !counted)) {
    fuse_reply_err(r->req, ENOMEM);
    free(buf);
    free(counted);
    free(r);
    return;
  }
  size_t used = 0;
  for (off_t k = r->off; k < 2; k++) {
    struct stat st = { .st_ino = FUSE_ROOT_ID, .st_mode = S_IFDIR };
    /* ino 0: attributes not given, no lookup counted (the kernel never
     * makes entries for "." and ".." anyway). */
    struct fuse_entry_param e = { .attr = st };
    const char *name = k == 0 ? "." : "..";
    size_t n = r->plus ? fuse_add_direntry_plus(r->req, buf + used, r->size - used, name, &e, k + 1)
                       : fuse_add_direntry(r->req, buf + used, r->size - used, name, &st, k + 1);
    if (n > r->size - used)
      goto full;
    used += n;
  }
  pthread_rwlock_rdlock(&fs->files_lock);
  for (int i = r->off > 2 ? (int)(r->off - 2) : 0; i < fs->nfiles; i++) {
    struct fs_file *f = fs->files[i];
    if (f->gone || (f->disk && f->disk->gone))
      continue;
    size_t n;
    if (r->plus) {
      if (ncounted == maxent)
        break;
      struct fuse_entry_param e = { .ino = f->ino, .entry_timeout = fs->mode == FS_EXPORTS
                                                                       ? EXPORT_ENTRY_TIMEOUT
                                                                       : ENTRY_TIMEOUT };
      struct nbd_pool *p = fs_file_hold(f);
      e.attr_timeout = file_stat(fs, f, p, &e.attr);
      if (p)
        fs_file_release(fs, f);
      n = fuse_add_direntry_plus(r->req, buf + used, r->size - used, f->name, &e, i + 3);
      if (n <= r->size - used) {
        atomic_fetch_add(&f->nlookup, 1); /* files_lock held: not recycled meanwhile */
        counted[ncounted++] = f;
      }
    } else {
      struct stat st = { .st_ino = f->ino, .st_mode = S_IFREG };
      n = fuse_add_direntry(r->req, buf + used, r->size - used, f->name, &st, i + 3);
    }
    if (n > r->size - used)
      break;
    used += n;
  }
  pthread_rwlock_unlock(&fs->files_lock);
full:
  if (fuse_reply_buf(r->req, buf, used) != 0)
    for (size_t i = 0; i < ncounted; i++)
      fs_file_forget(fs, counted[i]->ino, 1);
  free(counted);
  free(buf);
  free(r);
}

static void readdir_common(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, bool plus)
{
  struct fs *fs = fs_of(req);
  if (fs->mode == FS_NAKED || ino != FUSE_ROOT_ID) {
    fuse_reply_err(req, ENOTDIR);
    return;
  }
  struct readdir_ctx *r = malloc(sizeof *r);
  if (!r) {
    fuse_reply_err(req, ENOMEM);
    return;
  }
  *r = (struct readdir_ctx){ req, fs, size, off, plus };
  if (off == 0)
    fs_refresh(fs, readdir_reply, r); /* a new listing: ask the server again */
  else
    readdir_reply(r);
}

static void fs_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                       struct fuse_file_info *fi)
{
  (void)fi;
  readdir_common(req, ino, size, off, false);
}

static void fs_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                           struct fuse_file_info *fi)
{
  (void)fi;
  readdir_common(req, ino, size, off, true);
}

static void fs_statfs(fuse_req_t req, fuse_ino_t ino)
{
  (void)ino;
  struct fs *fs = fs_of(req);
  struct statvfs sv = { 0 };
  uint64_t total = 0;
  unsigned long bsize = 4096;
  int n = 0;
  pthread_rwlock_rdlock(&fs->files_lock);
  for (int i = 0; i < fs->nfiles; i++) {
    struct fs_file *f = fs->files[i];
    if (f->gone || (f->disk && f->disk->gone))
      continue;
    n++;
    if (!f->disk) /* a partition's bytes are its disk's */
      total += f->info.size;
    if (f->info.pref_block)
      bsize = f->info.pref_block;
  }
  pthread_rwlock_unlock(&fs->files_lock);
  sv.f_bsize = bsize;
  sv.f_frsize = bsize;
  sv.f_blocks = total / bsize;
  sv.f_files = (fsfilcnt_t)n + 1;
  sv.f_namemax = 255;
  fuse_reply_statfs(req, &sv);
}

/* ---- extended attributes ---- */

struct xattr_ctx {
  fuse_req_t req;
  struct fs *fs;
  size_t size;
  char name[64];
};

static void reply_xattr_value(fuse_req_t req, const char *v, size_t size)
{
  size_t len = strlen(v);
  if (size == 0)
    fuse_reply_xattr(req, len);
  else if (size < len)
    fuse_reply_err(req, ERANGE);
  else
    fuse_reply_buf(req, v, len);
}

static void xattr_ready(void *arg, struct fs_file *f, int err)
{
  struct xattr_ctx *x = arg;
  if (err) {
    fuse_reply_err(x->req, err);
  } else {
    pthread_mutex_lock(&f->lock);
    char *v = fs_xattr_get(x->fs, f, x->name);
    int e = errno;
    pthread_mutex_unlock(&f->lock);
    if (v)
      reply_xattr_value(x->req, v, x->size);
    else
      fuse_reply_err(x->req, e);
    free(v);
    fs_file_release(x->fs, f);
  }
  free(x);
}

static void fs_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
  struct fs *fs = fs_of(req);
  struct fs_file *f = fs_file_by_ino(fs, ino);
  if (!f || strncmp(name, "user.nbd.", 9) || strlen(name) >= sizeof ((struct xattr_ctx *)0)->name) {
    fuse_reply_err(req, ENODATA);
    return;
  }
  if (!strcmp(name, "user.nbd.stats")) {
    /* Counted by the file; the pool's part only if it is open (reading
     * statistics must not connect). */
    char *v = fs_stats_line(fs, f);
    if (v)
      reply_xattr_value(req, v, size);
    else
      fuse_reply_err(req, errno);
    free(v);
    return;
  }
  if (strcmp(name, "user.nbd.flags") && strcmp(name, "user.nbd.protocol") &&
      strcmp(name, "user.nbd.canonical_name")) {
    /* Known without a connection. */
    pthread_mutex_lock(&f->lock);
    char *v = fs_xattr_get(fs, f, name);
    int e = errno;
    pthread_mutex_unlock(&f->lock);
    if (v)
      reply_xattr_value(req, v, size);
    else
      fuse_reply_err(req, e);
    free(v);
    return;
  }
  /* Flags, protocol and canonical name are what negotiation found: open the export. */
  struct xattr_ctx *x = malloc(sizeof *x);
  if (!x) {
    fuse_reply_err(req, ENOMEM);
    return;
  }
  x->req = req;
  x->fs = fs;
  x->size = size;
  strcpy(x->name, name);
  fs_file_acquire(fs, f, xattr_ready, x);
}

static void fs_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
  struct fs *fs = fs_of(req);
  struct fs_file *f = fs_file_by_ino(fs, ino);
  if (!f) {
    if (size == 0)
      fuse_reply_xattr(req, 0);
    else
      fuse_reply_buf(req, NULL, 0);
    return;
  }
  size_t need = fs_xattr_list(f, NULL, 0);
  if (size == 0) {
    fuse_reply_xattr(req, need);
    return;
  }
  if (size < need) {
    fuse_reply_err(req, ERANGE);
    return;
  }
  char buf[512];
  fs_xattr_list(f, buf, sizeof buf);
  fuse_reply_buf(req, buf, need);
}

static void fs_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
                        size_t size, int flags)
{
  (void)ino;
  (void)name;
  (void)value;
  (void)size;
  (void)flags;
  fuse_reply_err(req, ENOTSUP);
}

static void fs_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
  (void)ino;
  (void)name;
  fuse_reply_err(req, ENOTSUP);
}

const struct fuse_lowlevel_ops fs_ops = {
  .init = fs_init,
  .lookup = fs_lookup,
  .forget = fs_forget,
  .forget_multi = fs_forget_multi,
  .getattr = fs_getattr,
  .setattr = fs_setattr,
  .open = fs_open,
  .read = fs_read,
  .write = fs_write,
  .flush = fs_flush,
  .fsync = fs_fsync,
  .fallocate = fs_fallocate,
  .lseek = fs_lseek,
  .release = fs_release,
  .opendir = fs_opendir,
  .readdir = fs_readdir,
  .readdirplus = fs_readdirplus,
  .statfs = fs_statfs,
  .getxattr = fs_getxattr,
  .listxattr = fs_listxattr,
  .setxattr = fs_setxattr,
  .removexattr = fs_removexattr,
};
