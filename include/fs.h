/* fs.h: the FUSE filesystem: a directory holding export files, or a single
 * file mounted over a regular file ("naked").  Low-level API, answered
 * asynchronously from the connections' receive threads. */
#ifndef NBDFS_FS_H
#define NBDFS_FS_H

#include <stdbool.h>
#include <sys/types.h>
#include <time.h>

#include "pool.h"

struct fuse_lowlevel_ops;
struct fuse_session;

/* One file of the mount, backed by one export's pool. */
struct fs_file {
  char *name;             /* file name in the directory (NULL when naked) */
  char *export_name;      /* the real export name */
  struct nbd_pool *pool;
  bool readonly;          /* -r given, or the export is read-only */
};

struct fs {
  struct fs_file *files;
  int nfiles;
  bool naked;             /* the mount root is the (only) file */
  bool direct_io;         /* bypass the kernel page cache */
  uid_t uid;
  gid_t gid;
  struct timespec mount_time;
  struct fuse_session *se;  /* for invalidation notices to the kernel */
};

extern const struct fuse_lowlevel_ops fs_ops;

#endif
