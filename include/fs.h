/* fs.h: the FUSE filesystem: a directory of export files, or one file
 * mounted over a regular file ("naked").  Low-level API, answered
 * asynchronously from the workers.  The files and their pools are in
 * exports.h.
 */
#ifndef NBDFS_FS_H
#define NBDFS_FS_H

#include <stddef.h>

#include "exports.h"

struct fuse_lowlevel_ops;

extern const struct fuse_lowlevel_ops fs_ops;

/* The thread that copies large read replies into the kernel: start before
 * fs_start, stop after fs_shutdown (once every read is answered). */
int fs_reply_thread_start(void);
void fs_reply_thread_stop(void);
/* Free the open-file handles the kernel never released (exit with files
 * still open; the loops are stopped). */
void fs_free_handles(void);

/* The paths (under mount_path, the mounted directory or file) of the files
 * open for writing: those that may have dirty pages in the kernel (close
 * writes them back).  A NULL-terminated malloc'd array of malloc'd strings,
 * or NULL when out of memory. */
char **fs_writable_paths(struct fs *fs, const char *mount_path);

/* Admission (write-sched.h): a worker asks before reading the next FUSE
 * request: true, go ahead; false, stop reading, and resume(arg) will be
 * called once (from whichever thread finishes a request) when enough write
 * payload has been answered. */
bool fs_admit(void (*resume)(void *arg), void *arg);
/* At shutdown, once no request is read any more: send the writes the write
 * scheduler still holds, and wait until the reply thread has handed every
 * write it was given to its pool (whose close then waits for them). */
void fs_send_held_writes(void);

/* Mounted over a file (mount_path) with the writeback cache: give the
 * kernel the export's size, once the mount answers (INIT is done).  It made
 * that inode with size 0 before nbdfs could say anything, and with the
 * writeback cache it never takes a size from GETATTR.  Returns 0, or -1
 * after logging why (the mount is then unusable: stop it). */
int fs_naked_size(struct fs *fs, const char *mount_path);

/* ---- xattr.c: extended attributes describing an export ---- */

/* The names, NUL-separated, into buf (or the size needed when size is 0). */
size_t fs_xattr_list(const struct fs_file *f, char *buf, size_t size);
/* The value of name for f (f->lock held; pool open for user.nbd.flags),
 * malloc'd; NULL + errno when unknown. */
char *fs_xattr_get(struct fs *fs, struct fs_file *f, const char *name);
/* user.nbd.stats of f (its disk's, for a partition), malloc'd; NULL +
 * errno.  Takes f's lock and holds its pool if open (never opens it). */
char *fs_stats_line(struct fs *fs, struct fs_file *f);
/* SIGUSR1: log the stats line of every export (in directory mode, of those
 * opened at least once) with log_notice. */
void fs_log_stats(struct fs *fs);

#endif
