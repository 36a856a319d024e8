/* cache-mode.h: how the kernel's page cache is used for export files. */
#ifndef NBDFS_CACHE_MODE_H
#define NBDFS_CACHE_MODE_H

#include <string.h>

enum cache_mode {
  CACHE_NONE,      /* every read and write goes to the server (FOPEN_DIRECT_IO) */
  CACHE_READ,      /* reads cached; each write() goes to the server before it returns */
  CACHE_WRITEBACK, /* reads cached; writes dirty pages, written back in large requests,
                    * and always by fsync and close */
};

#define CACHE_MODE_DEFAULT CACHE_WRITEBACK

static inline const char *cache_mode_name(enum cache_mode m)
{
  return m == CACHE_NONE ? "none" : m == CACHE_READ ? "read" : "writeback";
}

/* 0 and *m set, or -1 for an unknown name. */
static inline int cache_mode_parse(const char *s, enum cache_mode *m)
{
  for (int i = CACHE_NONE; i <= CACHE_WRITEBACK; i++)
    if (!strcmp(s, cache_mode_name((enum cache_mode)i))) {
      *m = (enum cache_mode)i;
      return 0;
    }
  return -1;
}

#endif
