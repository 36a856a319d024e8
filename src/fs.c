/* fs.c: FUSE low-level operations mapped onto NBD commands.
 *
 * No operation waits for the server: each builds an nbd_op, hands its
 * commands to the pool and returns; the op's completion (on a receive
 * thread) sends the reply to the kernel.
 */
#define FUSE_USE_VERSION 34
#include "fs.h"

#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "blockio.h"
#include "extents.h"
#include "log.h"

#define FILE_INO_BASE 2
/* Sizes never change, but allocation (st_blocks) does, also by other
 * clients: attributes are cached for a second. */
#define ATTR_TIMEOUT 1.0
#define ENTRY_TIMEOUT 3600.0

static struct fs *fs_of(fuse_req_t req) { return fuse_req_userdata(req); }

static struct fs_file *file_of(struct fs *fs, fuse_ino_t ino)
{
  if (fs->naked)
    return ino == FUSE_ROOT_ID ? &fs->files[0] : NULL;
  if (ino < FILE_INO_BASE || ino - FILE_INO_BASE >= (fuse_ino_t)fs->nfiles)
    return NULL;
  return &fs->files[ino - FILE_INO_BASE];
}

static void fill_times(struct fs *fs, struct stat *st)
{
  st->st_atim = st->st_mtim = st->st_ctim = fs->mount_time;
  st->st_uid = fs->uid;
  st->st_gid = fs->gid;
}

/* Allocated bytes for st_blocks: what block status last reported, or the
 * whole size when the server cannot tell. */
static uint64_t allocated_bytes(struct fs_file *f)
{
  uint64_t bytes;
  if (f->pool->s.have_base_alloc && extents_allocated_cached(f->pool, &bytes))
    return bytes;
  return nbd_pool_size(f->pool);
}

static void file_stat(struct fs *fs, struct fs_file *f, fuse_ino_t ino, struct stat *st)
{
  memset(st, 0, sizeof *st);
  st->st_ino = ino;
  st->st_mode = S_IFREG | (f->readonly ? 0444 : 0644);
  st->st_nlink = 1;
  st->st_size = (off_t)nbd_pool_size(f->pool);
  st->st_blksize = (blksize_t)f->pool->s.info.pref_block;
  st->st_blocks = (blkcnt_t)((allocated_bytes(f) + 511) / 512);
  fill_times(fs, st);
}

static void dir_stat(struct fs *fs, struct stat *st)
{
  memset(st, 0, sizeof *st);
  st->st_ino = FUSE_ROOT_ID;
  st->st_mode = S_IFDIR | 0755;
  st->st_nlink = 2;
  fill_times(fs, st);
}

static void fs_init(void *userdata, struct fuse_conn_info *conn)
{
  (void)userdata;
  /* Async direct I/O and readahead need more background requests than the
   * default 12 to keep many NBD requests in flight. */
  conn->max_background = 256;
  conn->congestion_threshold = 192;
  /* O_TRUNC reaches open() instead of a separate truncate, where it is
   * ignored: like a block device, the export keeps its size. */
  if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC)
    conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
  /* mtime never changes here, so re-checking attributes on every read
   * would only cost round trips. */
  conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
}

static void fs_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
  struct fs *fs = fs_of(req);
  if (fs->naked || parent != FUSE_ROOT_ID) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  for (int i = 0; i < fs->nfiles; i++) {
    if (!strcmp(fs->files[i].name, name)) {
      struct fuse_entry_param e = { .ino = FILE_INO_BASE + (fuse_ino_t)i,
                                    .attr_timeout = ATTR_TIMEOUT, .entry_timeout = ENTRY_TIMEOUT };
      file_stat(fs, &fs->files[i], e.ino, &e.attr);
      fuse_reply_entry(req, &e);
      return;
    }
  }
  fuse_reply_err(req, ENOENT);
}

struct getattr_ctx {
  fuse_req_t req;
  struct fs *fs;
  struct fs_file *f;
  fuse_ino_t ino;
};

static void getattr_allocated(void *arg, uint64_t bytes)
{
  (void)bytes; /* now cached: file_stat picks it up */
  struct getattr_ctx *g = arg;
  struct stat st;
  file_stat(g->fs, g->f, g->ino, &st);
  fuse_reply_attr(g->req, &st, ATTR_TIMEOUT);
  free(g);
}

static void fs_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  (void)fi;
  struct fs *fs = fs_of(req);
  struct stat st;
  struct fs_file *f = file_of(fs, ino);
  uint64_t bytes;
  if (f && f->pool->s.have_base_alloc && !extents_allocated_cached(f->pool, &bytes)) {
    /* Ask the server what is allocated, then answer (cached briefly). */
    struct getattr_ctx *g = malloc(sizeof *g);
    if (g) {
      *g = (struct getattr_ctx){ req, fs, f, ino };
      extents_allocated(f->pool, getattr_allocated, g);
      return;
    }
  }
  if (f)
    file_stat(fs, f, ino, &st);
  else if (ino == FUSE_ROOT_ID)
    dir_stat(fs, &st);
  else {
    fuse_reply_err(req, ENOENT);
    return;
  }
  fuse_reply_attr(req, &st, ATTR_TIMEOUT);
}

static void fs_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
                       struct fuse_file_info *fi)
{
  (void)fi;
  struct fs *fs = fs_of(req);
  struct fs_file *f = file_of(fs, ino);
  if (!f) {
    fuse_reply_err(req, ino == FUSE_ROOT_ID ? EPERM : ENOENT);
    return;
  }
  if (to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
    fuse_reply_err(req, EPERM);
    return;
  }
  if ((to_set & FUSE_SET_ATTR_SIZE) && (uint64_t)attr->st_size != nbd_pool_size(f->pool)) {
    /* An NBD export has a fixed size. */
    log_info("%s: refusing to change the size to %lld bytes (exports have a fixed size)",
             f->pool->desc, (long long)attr->st_size);
    fuse_reply_err(req, f->readonly ? EROFS : EPERM);
    return;
  }
  /* Times are not stored anywhere: accept and ignore them (touch works). */
  struct stat st;
  file_stat(fs, f, ino, &st);
  fuse_reply_attr(req, &st, ATTR_TIMEOUT);
}

static void fs_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  struct fs *fs = fs_of(req);
  struct fs_file *f = file_of(fs, ino);
  if (!f) {
    fuse_reply_err(req, ino == FUSE_ROOT_ID ? EISDIR : ENOENT);
    return;
  }
  if ((fi->flags & O_ACCMODE) != O_RDONLY && f->readonly) {
    fuse_reply_err(req, EROFS);
    return;
  }
  fi->direct_io = fs->direct_io;
  fi->keep_cache = 0;
  fuse_reply_open(req, fi);
}

/* ---- read ---- */

struct read_op {
  struct nbd_op op;
  fuse_req_t req;
  size_t skip;   /* bytes of alignment padding before the data asked for */
  size_t len;
  char buf[];
};

static void read_complete(struct nbd_op *op, int err)
{
  struct read_op *r = (struct read_op *)op;
  if (err)
    fuse_reply_err(r->req, err);
  else
    fuse_reply_buf(r->req, r->buf + r->skip, r->len);
  free(r);
}

static void fs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
  (void)fi;
  struct fs_file *f = file_of(fs_of(req), ino);
  if (!f) {
    fuse_reply_err(req, EISDIR);
    return;
  }
  uint64_t fsize = nbd_pool_size(f->pool);
  if ((uint64_t)off >= fsize || size == 0) {
    fuse_reply_buf(req, NULL, 0);
    return;
  }
  if (size > fsize - (uint64_t)off)
    size = fsize - (uint64_t)off; /* short read at the end */
  /* Widen to the server's minimum block size (the size is a multiple of it). */
  uint64_t align = f->pool->s.info.min_block;
  uint64_t start = (uint64_t)off - (uint64_t)off % align;
  uint64_t end = (uint64_t)off + size;
  end += (align - end % align) % align;
  struct read_op *r = malloc(sizeof *r + (end - start));
  if (!r) {
    fuse_reply_err(req, ENOMEM);
    return;
  }
  nbd_op_init(&r->op, read_complete);
  r->req = req;
  r->skip = (size_t)((uint64_t)off - start);
  r->len = size;
  nbd_pool_io(f->pool, &r->op, NBD_CMD_READ, 0, start, end - start, r->buf);
  nbd_op_put(&r->op);
}

/* ---- write ---- */

struct write_op {
  struct nbd_op op;
  fuse_req_t req;
  size_t len;
  bool flush_after;  /* O_DSYNC without FUA: FLUSH before answering */
};

static void write_complete(struct nbd_op *op, int err)
{
  struct write_op *w = (struct write_op *)op;
  if (!err && w->flush_after) {
    w->flush_after = false;
    nbd_op_init(&w->op, write_complete);
    nbd_pool_flush(op->pool, &w->op);
    nbd_op_put(&w->op);
    return;
  }
  if (err)
    fuse_reply_err(w->req, err == EPERM ? EROFS : err);
  else
    fuse_reply_write(w->req, w->len);
  free(w);
}

static void fs_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
                     struct fuse_file_info *fi)
{
  struct fs_file *f = file_of(fs_of(req), ino);
  if (!f) {
    fuse_reply_err(req, EISDIR);
    return;
  }
  if (f->readonly) {
    fuse_reply_err(req, EROFS);
    return;
  }
  uint64_t fsize = nbd_pool_size(f->pool);
  if (size == 0) {
    fuse_reply_write(req, 0);
    return;
  }
  if ((uint64_t)off >= fsize) {
    fuse_reply_err(req, ENOSPC);
    return;
  }
  if (size > fsize - (uint64_t)off)
    size = fsize - (uint64_t)off; /* short write up to the end */
  struct write_op *w = malloc(sizeof *w);
  if (!w) {
    fuse_reply_err(req, ENOMEM);
    return;
  }
  uint16_t tflags = nbd_pool_flags(f->pool);
  bool sync = fi->flags & (O_SYNC | O_DSYNC);
  uint16_t flags = (sync && (tflags & NBD_FLAG_SEND_FUA)) ? NBD_CMD_FLAG_FUA : 0;
  nbd_op_init(&w->op, write_complete);
  w->req = req;
  w->len = size;
  w->flush_after = sync && !flags;
  blockio_write(f->pool, &w->op, flags, (uint64_t)off, size, buf);
  nbd_op_put(&w->op);
}

/* ---- flush / fsync ---- */

struct reply_op {
  struct nbd_op op;
  fuse_req_t req;
};

static void reply_err_complete(struct nbd_op *op, int err)
{
  struct reply_op *r = (struct reply_op *)op;
  fuse_reply_err(r->req, err);
  free(r);
}

static void do_flush(fuse_req_t req, fuse_ino_t ino)
{
  struct fs_file *f = file_of(fs_of(req), ino);
  if (!f) {
    fuse_reply_err(req, 0);
    return;
  }
  struct reply_op *r = malloc(sizeof *r);
  if (!r) {
    fuse_reply_err(req, ENOMEM);
    return;
  }
  nbd_op_init(&r->op, reply_err_complete);
  r->req = req;
  nbd_pool_flush(f->pool, &r->op);
  nbd_op_put(&r->op);
}

static void fs_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  (void)fi;
  do_flush(req, ino);
}

static void fs_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
  (void)datasync;
  (void)fi;
  do_flush(req, ino);
}

static void fs_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  (void)ino;
  (void)fi;
  fuse_reply_err(req, 0);
}

/* ---- fallocate ---- */

struct fallocate_op {
  struct nbd_op op;
  fuse_req_t req;
  struct fs_file *f;
  fuse_ino_t ino;
};

static void fallocate_complete(struct nbd_op *op, int err)
{
  struct fallocate_op *a = (struct fallocate_op *)op;
  struct fuse_session *se = fs_of(a->req)->se;
  fuse_reply_err(a->req, err == EPERM ? EROFS : err);
  /* st_blocks changed: drop the kernel's cached attributes. */
  if (!err)
    fuse_lowlevel_notify_inval_inode(se, a->ino, -1, 0);
  free(a);
}

static void fs_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t len,
                         struct fuse_file_info *fi)
{
  (void)fi;
  struct fs_file *f = file_of(fs_of(req), ino);
  if (!f) {
    fuse_reply_err(req, EISDIR);
    return;
  }
  if (mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)) {
    fuse_reply_err(req, EOPNOTSUPP);
    return;
  }
  if (f->readonly) {
    fuse_reply_err(req, EROFS);
    return;
  }
  uint64_t size = nbd_pool_size(f->pool), start = (uint64_t)off, end;
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
  a->f = f;
  a->ino = ino;
  blockio_zero(f->pool, &a->op, start, end - start, mode & FALLOC_FL_PUNCH_HOLE);
  nbd_op_put(&a->op);
}

/* ---- lseek (SEEK_DATA / SEEK_HOLE) ---- */

static void lseek_done(void *arg, int err, uint64_t result)
{
  fuse_req_t req = arg;
  if (err)
    fuse_reply_err(req, err);
  else
    fuse_reply_lseek(req, (off_t)result);
}

static void fs_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
                     struct fuse_file_info *fi)
{
  (void)fi;
  struct fs_file *f = file_of(fs_of(req), ino);
  if (!f) {
    fuse_reply_err(req, EISDIR);
    return;
  }
  if (whence != SEEK_DATA && whence != SEEK_HOLE) {
    fuse_reply_err(req, EINVAL);
    return;
  }
  if (off < 0) {
    fuse_reply_err(req, ENXIO);
    return;
  }
  extents_seek(f->pool, (uint64_t)off, whence == SEEK_DATA, lseek_done, req);
}

/* ---- directory ---- */

static void fs_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
  struct fs *fs = fs_of(req);
  if (fs->naked || ino != FUSE_ROOT_ID) {
    fuse_reply_err(req, ENOTDIR);
    return;
  }
  fuse_reply_open(req, fi);
}

static void fs_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                       struct fuse_file_info *fi)
{
  (void)fi;
  struct fs *fs = fs_of(req);
  if (fs->naked || ino != FUSE_ROOT_ID) {
    fuse_reply_err(req, ENOTDIR);
    return;
  }
  char *buf = malloc(size);
  if (!buf) {
    fuse_reply_err(req, ENOMEM);
    return;
  }
  size_t used = 0;
  /* Entry k: 0 ".", 1 "..", 2+i file i.  off is the index of the next entry. */
  for (off_t k = off; k < fs->nfiles + 2; k++) {
    struct stat st = { 0 };
    const char *name;
    if (k < 2) {
      name = k == 0 ? "." : "..";
      st.st_ino = FUSE_ROOT_ID;
      st.st_mode = S_IFDIR;
    } else {
      name = fs->files[k - 2].name;
      st.st_ino = FILE_INO_BASE + (ino_t)(k - 2);
      st.st_mode = S_IFREG;
    }
    size_t n = fuse_add_direntry(req, buf + used, size - used, name, &st, k + 1);
    if (n > size - used)
      break;
    used += n;
  }
  fuse_reply_buf(req, buf, used);
  free(buf);
}

static void fs_statfs(fuse_req_t req, fuse_ino_t ino)
{
  (void)ino;
  struct fs *fs = fs_of(req);
  struct statvfs sv = { 0 };
  uint64_t total = 0;
  unsigned long bsize = 4096;
  for (int i = 0; i < fs->nfiles; i++)
    if (fs->files[i].pool) {
      total += nbd_pool_size(fs->files[i].pool);
      bsize = fs->files[i].pool->s.info.pref_block;
    }
  sv.f_bsize = bsize;
  sv.f_frsize = bsize;
  sv.f_blocks = total / bsize;
  sv.f_files = (fsfilcnt_t)fs->nfiles + 1;
  sv.f_namemax = 255;
  fuse_reply_statfs(req, &sv);
}

const struct fuse_lowlevel_ops fs_ops = {
  .init = fs_init,
  .lookup = fs_lookup,
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
  .statfs = fs_statfs,
};
