/* exports.h: the files of the mount and the lifecycle of their pools.
 *
 * One file per export.  In directory mode a file's pool is opened when the
 * file is first used and closed some seconds after its last user; in
 * single-export mode the pool lives for the whole mount.  Nothing here
 * knows FUSE requests: fs.c builds on this.
 */
#ifndef NBDFS_EXPORTS_H
#define NBDFS_EXPORTS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "cache-mode.h"
#include "extents.h"
#include "handshake.h"
#include "partition.h"
#include "pool.h"
#include "stats.h"
#include "uri.h"

struct fuse_session;
struct nbd_loop;
struct open_waiter;
struct hk_job;

/* Owner and permission bits changed by chmod/chown, kept for the mount's
 * lifetime only.  Until the first change (set false) the mount's defaults
 * apply: fs->uid, fs->gid, and 0666 (a file) or 0777 (the directory)
 * without fs->umask. */
struct fs_perm {
  bool set;
  mode_t mode;                 /* the 07777 bits */
  uid_t uid;
  gid_t gid;
  struct timespec ctime;       /* of the last change */
};

/* One export, shown as one file.  Never freed while mounted, so a pointer
 * to one stays valid memory.  An export that vanishes from the server is
 * marked gone and stops being listed; its handles fail with EIO from then
 * on (even if it comes back: reopen it).  Once gone and unused (no kernel
 * lookups left, no users, no pool, no partition files), its slot and inode
 * number may be recycled for a new export (files_lock held for writing):
 * the kernel forgot that inode, so it cannot confuse the two, and the table
 * holds at most as many files as were ever listed or referenced at once. */
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
  struct nbd_pool *pool;       /* NULL until opened, and again once idle (directory mode) */
  int users;                   /* open handles and operations holding the pool */
  uint64_t idle_since_ms;
  bool opening;
  bool closing;                /* an idle pool with unflushed writes is being closed */
  struct open_waiter *waiters; /* acquirers waiting for the pool */
  struct fs_perm perm;         /* chmod/chown (a read-only file shows no write bits) */
  /* --partitions.  A partition file is a window on its disk file: it has
   * no pool of its own, and holding it holds the disk's.  Its name, disk
   * and entry never change; a partition that leaves the table is gone. */
  struct fs_file *disk;        /* a partition file's disk file; NULL for a disk */
  struct part_entry part;      /* a partition file: its table entry */
  uint64_t part_alloc;         /* a partition file: allocated bytes, last counted */
  bool part_alloc_known;
  bool part_scan_running;      /* a background recount is under way */
  atomic_bool past_end_lost;   /* cached writes past the end were dropped: the next
                                * fsync or close through any handle says ENOSPC */
  uint64_t part_scanned_ms;    /* when the last count began (CLOCK_MONOTONIC) */
  bool parts_read;             /* a disk: its table was read */
  bool parts_stale;            /* a disk: the first or last MiB was written since */
  atomic_uint gen;             /* bumped whenever it goes: handles opened before fail
                                * (read without the lock on every request) */
  bool probed;                 /* details probed (NBD_OPT_GO) at probed_ms, whatever came of it */
  uint64_t probed_ms;
  bool info_refused;           /* the last INFO answer was invalid (logged once) */
  /* The table's own bookkeeping (fs->files_lock). */
  atomic_uint_least64_t nlookup; /* kernel lookups not forgotten yet */
  int nparts;                  /* a disk: partition files naming it */
  struct fs_file *name_next;   /* hash chains: by file name, by export name (disks only) */
  struct fs_file *export_next;
  char *old_name, *old_export_name; /* a recycled slot's previous names, freed one recycle later
                                     * (a thread that walked the table may still read them) */
  struct nbd_stats stats;      /* a disk: its requests (a partition counts into its disk's) */
};

enum fs_mode { FS_SINGLE, FS_NAKED, FS_EXPORTS };

struct fs {
  enum fs_mode mode;
  pthread_rwlock_t files_lock; /* the table grows when exports appear */
  struct fs_file **files;
  int nfiles, cap;
  struct fs_file **by_name, **by_export; /* hash buckets (files_lock) */
  size_t nbuckets;
  uint64_t hash_seed;          /* random: a server cannot aim names at one bucket */
  int *free_slots;             /* gone files that may be recyclable (files_lock) */
  int nfree, free_cap;
  enum cache_mode cache;       /* --cache */
  atomic_bool writeback;       /* the kernel's writeback cache is on (set by fs_init,
                                * on a worker) */
  bool readonly;               /* -r */
  uid_t uid;                   /* owner of the files (-o uid=, default: the mounting user) */
  gid_t gid;
  mode_t umask;                /* -o umask= (default 022) */
  pthread_mutex_t dir_lock;    /* protects dir_perm */
  struct fs_perm dir_perm;     /* the root directory (directory and single modes) */
  struct timespec mount_time;
  struct fuse_session *se;
  /* for opening pools in directory mode */
  const struct nbd_uri *uri;
  struct nbd_pool_opts pool_opts;
  struct nbd_loop **loops;
  int nloops;
  /* housekeeping thread: opens, idle-close decisions, listing refreshes */
  pthread_t hk_thread;
  bool hk_running;
  pthread_mutex_t hk_lock;     /* also protects the closer fields */
  pthread_cond_t hk_cond;
  bool hk_stop;
  struct hk_job *hk_jobs;
  uint64_t last_list_ms;
  uint64_t last_info_ms;       /* the last listing that asked NBD_OPT_INFO for every export */
  /* idle pools being closed on detached closer threads */
  int closers;
  pthread_cond_t closers_cond;
  int close_err;               /* first errno from closing a pool */
  atomic_bool server_gone;     /* the server nbdfs started has exited: no new connections */
  bool partitions;             /* --partitions: a file per partition beside each disk */
};

int fs_init_table(struct fs *fs);
/* Add a file (returns it, or NULL on allocation failure). */
struct fs_file *fs_add_file(struct fs *fs, const char *file_name, const char *export_name);
/* A partition file (--partitions) on disk, complete before it is listed;
 * NULL with errno ENOMEM, or EEXIST when a live file (an export named like
 * a partition file) has the name already: the export keeps it. */
struct fs_file *fs_add_partition(struct fs *fs, const char *file_name, struct fs_file *disk,
                                 const struct part_entry *e);
/* Single-export mode: the file's pool, open for the whole mount.  Attaches
 * the extent cache if extents_attach was not called yet; returns 0, or
 * -ENOMEM when that failed (the file then reports everything as data).
 * fs_free detaches and frees the pool. */
int fs_file_set_pool(struct fs *fs, struct fs_file *f, struct nbd_pool *p);
/* File i of the table (NULL past its end): the table grows while it is
 * walked, but files are never freed while mounted. */
struct fs_file *fs_file_at(struct fs *fs, int i);
struct fs_file *fs_file_by_ino(struct fs *fs, uint64_t ino);
struct fs_file *fs_file_by_name(struct fs *fs, const char *name);
/* fs_file_by_name for a FUSE lookup: counts one kernel reference to the
 * file (atomically with finding it, so it cannot be recycled meanwhile).
 * Drop it with fs_file_forget when the kernel forgets, or at once if the
 * reply fails. */
struct fs_file *fs_file_lookup(struct fs *fs, const char *name);
void fs_file_forget(struct fs *fs, uint64_t ino, uint64_t nlookup);
/* A handle's view: the generation it was opened in (fs_file_gen), and
 * whether the file went since. */
unsigned fs_file_gen(struct fs_file *f);

/* Directory mode: list the server's exports now (at mount time).  Returns
 * 0, or a negative errno with a one-line reason in err. */
int fs_list_exports(struct fs *fs, char *err, size_t errlen);

/* Start the housekeeping thread (after the loops exist). */
int fs_start(struct fs *fs);
/* Stop it, wait for idle closes under way and close every pool (orderly:
 * flush, NBD_CMD_DISC) while the loops still run.  Returns 0, or the first
 * errno of a pool whose acknowledged writes could not be made durable
 * (including pools closed earlier for being idle). */
int fs_shutdown(struct fs *fs);
/* Free the table and the pools (loops stopped). */
void fs_free(struct fs *fs);

/* Get the file's pool, opening it if needed; cb runs (maybe at once, maybe
 * on the housekeeping thread) with err 0 and f->pool usable until the
 * matching fs_file_release. */
typedef void (*fs_ready_fn)(void *arg, struct fs_file *f, int err);
void fs_file_acquire(struct fs *fs, struct fs_file *f, fs_ready_fn cb, void *arg);
void fs_file_release(struct fs *fs, struct fs_file *f);
/* Hold the file's pool only if it is open now (NULL otherwise; never
 * opens).  Release with fs_file_release. */
struct nbd_pool *fs_file_hold(struct fs_file *f);
/* The pool of a file acquired or held (its disk's, for a partition). */
struct nbd_pool *fs_file_pool(struct fs_file *f);
/* Gone: its export left the listing, or (a partition) its table entry, or
 * its disk. */
bool fs_file_gone(struct fs_file *f);

/* ---- partitions.c: partition files (--partitions) ---- */

/* Read disk's partition table (its pool held by the caller; not on a
 * worker thread: this waits for the reads) and make the partition files
 * match it: new ones are added, vanished ones marked gone, unchanged ones
 * kept (same inode).  A table that fails validation gives none, logged.
 * Nothing to do when it was read and not written since (a listing that
 * waited for the mount's scan). */
void partitions_scan(struct fs *fs, struct fs_file *disk, struct nbd_pool *p);
/* [off, off+len) of disk was written: the table may have changed. */
void partitions_note_write(struct fs_file *disk, uint64_t off, uint64_t len);
/* Scan every disk whose table is unread or stale, on a thread of its own
 * (opening pools as needed), then run cb.  At once when none is. */
void partitions_refresh(struct fs *fs, void (*cb)(void *arg), void *arg);
/* The same, waiting (at mount). */
void partitions_refresh_wait(struct fs *fs);
/* Wait until no refresh thread runs (unmount, once pools are closed). */
void partitions_wait_idle(void);

/* The server will never answer again (the process nbdfs started exited):
 * open pools stop reconnecting and fail requests at once; opening fails. */
void fs_server_gone(struct fs *fs);

/* Refresh the export list (rate-limited); cb runs when done. */
typedef void (*fs_refreshed_fn)(void *arg);
void fs_refresh(struct fs *fs, fs_refreshed_fn cb, void *arg);

#endif
