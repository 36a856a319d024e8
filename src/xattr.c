/* xattr.c: extended attributes describing an export, for getfattr and
 * scripts: its real name, description, URI, block sizes and flags. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs.h"

static const char *const names[] = {
  "user.nbd.export", "user.nbd.description", "user.nbd.uri", "user.nbd.block_size",
  "user.nbd.flags",
};
#define NNAMES (sizeof names / sizeof names[0])

size_t fs_xattr_list(char *buf, size_t size)
{
  size_t need = 0;
  for (size_t i = 0; i < NNAMES; i++)
    need += strlen(names[i]) + 1;
  if (size == 0)
    return need;
  if (size < need)
    return 0;
  size_t o = 0;
  for (size_t i = 0; i < NNAMES; i++) {
    memcpy(buf + o, names[i], strlen(names[i]) + 1);
    o += strlen(names[i]) + 1;
  }
  return need;
}

static char *flags_string(struct fs_file *f)
{
  uint16_t t = f->info.tflags;
  const struct nbd_session *ss = f->pool ? nbd_pool_session(f->pool) : NULL;
  bool ctx = ss && ss->have_base_alloc;
  char *s = NULL;
  if (asprintf(&s,
               "read_only=%s flush=%s fua=%s rotational=%s trim=%s zero=%s fast_zero=%s "
               "cache=%s multi_conn=%s df=%s structured_replies=%s block_status=%s",
               t & NBD_FLAG_READ_ONLY ? "true" : "false", t & NBD_FLAG_SEND_FLUSH ? "true" : "false",
               t & NBD_FLAG_SEND_FUA ? "true" : "false", t & NBD_FLAG_ROTATIONAL ? "true" : "false",
               t & NBD_FLAG_SEND_TRIM ? "true" : "false",
               t & NBD_FLAG_SEND_WRITE_ZEROES ? "true" : "false",
               t & NBD_FLAG_SEND_FAST_ZERO ? "true" : "false",
               t & NBD_FLAG_SEND_CACHE ? "true" : "false",
               t & NBD_FLAG_CAN_MULTI_CONN ? "true" : "false", t & NBD_FLAG_SEND_DF ? "true" : "false",
               ss && ss->structured ? "true" : "false",
               ctx ? "base:allocation" : "none") < 0)
    return NULL;
  return s;
}

char *fs_xattr_get(struct fs *fs, struct fs_file *f, const char *name)
{
  char *v = NULL;
  if (!strcmp(name, "user.nbd.export")) {
    v = strdup(f->export_name);
  } else if (!strcmp(name, "user.nbd.description")) {
    v = strdup(f->info.description ? f->info.description : "");
  } else if (!strcmp(name, "user.nbd.uri")) {
    char buf[16384];
    nbd_uri_format(fs->uri, f->export_name, buf, sizeof buf);
    v = strdup(buf);
  } else if (!strcmp(name, "user.nbd.block_size")) {
    if (asprintf(&v, "%u/%u/%u", f->info.min_block, f->info.pref_block,
                 f->info.max_block_advertised ? f->info.max_block_advertised : f->info.max_block) < 0)
      v = NULL;
  } else if (!strcmp(name, "user.nbd.flags")) {
    v = flags_string(f);
  } else {
    errno = ENODATA;
    return NULL;
  }
  if (!v)
    errno = ENOMEM;
  return v;
}
