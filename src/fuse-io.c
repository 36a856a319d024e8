/* fuse-io.c: see fuse-io.h.
 *
 * Only INIT is looked at: its request (which flags the kernel offers) and
 * its reply (to add ours).  Everything else passes through unchanged, with
 * one read(2) or writev(2) each, as libfuse would do itself. */
#define FUSE_USE_VERSION 34
#include "fuse-io.h"

#include <errno.h>
#include <fuse_lowlevel.h>
#include <linux/fuse.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>
#include <unistd.h>

/* The INIT flags nbdfs adds when the kernel offers them. */
#define WANTED ((uint64_t)FUSE_HANDLE_KILLPRIV_V2)
static _Atomic uint64_t init_unique;  /* 0: INIT not seen yet */
static _Atomic uint64_t offered;      /* the kernel's INIT flags */
/* FOPEN_* flags for the OPEN reply this thread is about to send. */
static __thread uint32_t open_flags_add;

static ssize_t io_read(int fd, void *buf, size_t len, void *userdata)
{
  (void)userdata;
  ssize_t r = read(fd, buf, len);
  const struct fuse_in_header *in = buf;
  if (r >= (ssize_t)(sizeof *in + offsetof(struct fuse_init_in, flags2)) &&
      in->opcode == FUSE_INIT) {
    const struct fuse_init_in *arg = (const void *)(in + 1);
    uint64_t flags = arg->flags;
    if ((flags & FUSE_INIT_EXT) &&
        r >= (ssize_t)(sizeof *in + offsetof(struct fuse_init_in, unused)))
      flags |= (uint64_t)arg->flags2 << 32;
    atomic_store(&offered, flags);
    atomic_store(&init_unique, in->unique);
  }
  return r;
}

static ssize_t io_writev(int fd, struct iovec *iov, int count, void *userdata)
{
  (void)userdata;
  uint64_t unique = atomic_load_explicit(&init_unique, memory_order_relaxed);
  const struct fuse_out_header *out = iov[0].iov_base;
  if (unique && out->unique == unique && out->error == 0 && count >= 2 &&
      iov[1].iov_len >= offsetof(struct fuse_init_out, max_background)) {
    /* libfuse builds the reply in its own (writable) buffer. */
    struct fuse_init_out *arg = iov[1].iov_base;
    uint64_t add = WANTED & atomic_load(&offered);
    arg->flags |= (uint32_t)add;
    if ((add >> 32) && iov[1].iov_len >= offsetof(struct fuse_init_out, unused)) {
      arg->flags |= FUSE_INIT_EXT;
      arg->flags2 |= (uint32_t)(add >> 32);
    }
    atomic_store(&init_unique, 0);
  }
  if (open_flags_add) {
    /* Armed by fuse_io_reply_open around fuse_reply_open, whose
     * fuse_open_out libfuse builds on its stack. */
    if (out->error == 0 && count == 2 && iov[1].iov_len == sizeof(struct fuse_open_out))
      ((struct fuse_open_out *)iov[1].iov_base)->open_flags |= open_flags_add;
    open_flags_add = 0;
  }
  return writev(fd, iov, count);
}

int fuse_io_reply_open(fuse_req_t req, const struct fuse_file_info *fi, bool parallel_writes)
{
  open_flags_add = parallel_writes ? FOPEN_PARALLEL_DIRECT_WRITES : 0;
  int r = fuse_reply_open(req, fi);
  open_flags_add = 0; /* also when libfuse sent nothing */
  return r;
}

int fuse_io_install(struct fuse_session *se)
{
  static const struct fuse_custom_io io = { .read = io_read, .writev = io_writev };
  return fuse_session_custom_io(se, &io, fuse_session_fd(se));
}

