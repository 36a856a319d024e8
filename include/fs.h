/* fs.h: the FUSE filesystem: a directory of export files, or one file
 * mounted over a regular file ("naked").  Low-level API, answered
 * asynchronously from the workers.
 */
#ifndef NBDFS_FS_H
#define NBDFS_FS_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "handshake.h"
#include "pool.h"
#include "uri.h"

struct fuse_lowlevel_ops;
struct fuse_session;
struct nbd_loop;
struct open_waiter;

/* One export, shown as one file.  Never freed while mounted, so inode
 * numbers stay valid; an export that vanishes from the server is marked
 * gone and stops being listed. */
struct fs_file {
  char *name;                  /* file name in the directory (escaped export name) */
  char *export_name;           /* the real export name */
  uint64_t ino;
  pthread_mutex_t lock;        /* protects everything below */
  struct nbd_export_info info; /* size, flags, block sizes, description */
  bool have_info;
  bool readonly;               /* -r, or the export is read-only */
  bool gone;
  bool permanent;              /* single-export mode: the pool lives for the whole mount */
  struct nbd_pool *pool;       /* NULL until first opened (directory mode) */
  int users;                   /* open handles and operations holding the pool */
  uint64_t idle_since_ms;
  bool opening, closing;
  struct open_waiter *waiters; /* acquirers waiting for the pool */
};

enum fs_mode { FS_SINGLE, FS_NAKED, FS_EXPORTS };

struct fs {
  enum fs_mode mode;
  pthread_rwlock_t files_lock; /* the table grows when exports appear */
  struct fs_file **files;
  int nfiles, cap;
  bool direct_io;
  bool readonly;               /* -r */
  uid_t uid;
  gid_t gid;
  struct timespec mount_time;
  struct fuse_session *se;
  /* for opening pools in directory mode */
  const struct nbd_uri *uri;
  struct nbd_pool_opts pool_opts;
  struct nbd_loop **loops;
  int nloops;
  /* housekeeping thread: opens, idle closes, listing refreshes */
  pthread_t hk_thread;
  bool hk_running;
  pthread_mutex_t hk_lock;
  pthread_cond_t hk_cond;
  bool hk_stop;
  struct hk_job *hk_jobs;
  uint64_t last_list_ms;
};

extern const struct fuse_lowlevel_ops fs_ops;

/* The thread that copies large read replies into the kernel. */
int fs_reply_thread_start(void);
void fs_reply_thread_stop(void);

/* ---- exports.c: the table of files and their pools ---- */

int fs_init_table(struct fs *fs);
/* Add a file (returns it, or NULL on allocation failure). */
struct fs_file *fs_add_file(struct fs *fs, const char *file_name, const char *export_name);
/* Single-export mode: the file's pool, open for the whole mount. */
void fs_file_set_pool(struct fs *fs, struct fs_file *f, struct nbd_pool *p);
struct fs_file *fs_file_by_ino(struct fs *fs, uint64_t ino);
struct fs_file *fs_file_by_name(struct fs *fs, const char *name);

/* Directory mode: list the server's exports now (at mount time).  Returns
 * 0, or a negative errno with a one-line reason in err. */
int fs_list_exports(struct fs *fs, char *err, size_t errlen);

/* Start the housekeeping thread (after the loops exist). */
int fs_start(struct fs *fs);
/* Stop it and close every pool (orderly: flush, NBD_CMD_DISC). */
void fs_shutdown(struct fs *fs);
/* Free the table (loops stopped). */
void fs_free(struct fs *fs);

/* Get the file's pool, opening it if needed; cb runs (maybe at once, maybe
 * on the housekeeping thread) with err 0 and f->pool usable until the
 * matching fs_file_release. */
typedef void (*fs_ready_fn)(void *arg, struct fs_file *f, int err);
void fs_file_acquire(struct fs *fs, struct fs_file *f, fs_ready_fn cb, void *arg);
void fs_file_release(struct fs *fs, struct fs_file *f);

/* Refresh the export list (rate-limited); cb runs when done. */
typedef void (*fs_refreshed_fn)(void *arg);
void fs_refresh(struct fs *fs, fs_refreshed_fn cb, void *arg);

/* ---- xattr.c: extended attributes describing an export ---- */

/* The names, NUL-separated, into buf (or the size needed when size is 0). */
size_t fs_xattr_list(char *buf, size_t size);
/* The value of name for f (pool open), malloc'd; NULL + errno when unknown. */
char *fs_xattr_get(struct fs *fs, struct fs_file *f, const char *name);

#endif
