/* fuse-rx.c: see fuse-rx.h. */
#define FUSE_USE_VERSION 34
#include "fuse-rx.h"

#include <errno.h>
#include <fuse_lowlevel.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#include "wlog.h"

struct fuse_rx {
  struct wbuf *cur;    /* what the next request is read into */
  struct wbuf *spare;  /* replaces cur once a handler keeps it */
  struct fuse_buf buf; /* libfuse's view of cur */
};

/* The processing worker's buffer, while a spare is ready to replace it. */
static __thread struct wbuf *keepable;

/* What libfuse 3.14 reads at most: a request of max_write (256 pages)
 * plus headers, its FUSE_MAX_MAX_PAGES * page size + FUSE_BUFFER_HEADER_SIZE.
 * libfuse reads into a buffer it is given without checking its size, and
 * caps max_write so that every request fits this. */
static size_t rx_size(void)
{
  return 256 * (size_t)sysconf(_SC_PAGESIZE) + 0x1000;
}

struct fuse_rx *fuse_rx_new(void)
{
  struct fuse_rx *rx = calloc(1, sizeof *rx);
  if (!rx || !(rx->cur = wbuf_alloc(rx_size()))) {
    free(rx);
    return NULL;
  }
  rx->buf.mem = rx->cur->data;
  rx->buf.size = rx->cur->len;
  return rx;
}

void fuse_rx_free(struct fuse_rx *rx)
{
  if (!rx)
    return;
  wbuf_put(rx->cur);
  wbuf_put(rx->spare);
  free(rx);
}

int fuse_rx_receive(struct fuse_rx *rx, struct fuse_session *se)
{
  rx->buf.mem = rx->cur->data; /* libfuse reads into mem when it is set */
  rx->buf.flags = 0;
  return fuse_session_receive_buf(se, &rx->buf);
}

void fuse_rx_process(struct fuse_rx *rx, struct fuse_session *se)
{
  /* Only a buffer that can be replaced may be kept; without a spare
   * (out of memory) handlers copy, as they do for small payloads. */
  if (!rx->spare)
    rx->spare = wbuf_alloc(rx_size());
  keepable = rx->spare ? rx->cur : NULL;
  fuse_session_process_buf(se, &rx->buf);
  keepable = NULL;
  if (rx->spare && atomic_load_explicit(&rx->cur->refs, memory_order_acquire) > 1) {
    wbuf_put(rx->cur); /* the pool holds it now */
    rx->cur = rx->spare;
    rx->spare = NULL;
  }
}

struct wbuf *fuse_rx_owner(const void *p, size_t len)
{
  struct wbuf *b = keepable;
  if (!b || len < b->len / 2)
    return NULL;
  const uint8_t *q = p;
  if (q < b->data || q > b->data + b->len || len > (size_t)(b->data + b->len - q))
    return NULL;
  return b;
}
