/* fuse-io.h: the FUSE device's reads and writes, through libfuse's custom
 * I/O hooks, so that nbdfs can ask the kernel for what libfuse 3.14 has no
 * name for. */
#ifndef NBDFS_FUSE_IO_H
#define NBDFS_FUSE_IO_H

#include <stdbool.h>

#include <fuse_lowlevel.h>

/* After fuse_session_mount: read and write se's device through hooks that
 * add to the INIT reply, when the kernel offers it, FUSE_HANDLE_KILLPRIV_V2:
 * nbdfs clears set-user/group-ID bits itself (it never keeps them), and in
 * return the kernel marks the superblock SB_NOSEC, so a write() no longer
 * costs a security.capability lookup (a round trip to nbdfs) each time.
 * 0 or a negative errno. */
int fuse_io_install(struct fuse_session *se);

/* fuse_reply_open, adding FOPEN_PARALLEL_DIRECT_WRITES (which libfuse 3.14
 * cannot set) when parallel_writes. */
int fuse_io_reply_open(fuse_req_t req, const struct fuse_file_info *fi, bool parallel_writes);

#endif
