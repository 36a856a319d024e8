/* xattr.c: extended attributes describing an export, for getfattr and
 * scripts: its real name, description, URI, block sizes and flags; and for
 * a partition file, its table entry. */
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
static const char *const part_names[] = {
  "user.nbd.partition", "user.nbd.partition_type", "user.nbd.partition_name",
  "user.nbd.partition_uuid",
};

/* Which names f has: the export's, then a partition's (GPT ones have all four). */
static size_t names_of(const struct fs_file *f, const char *out[], size_t max)
{
  size_t n = 0;
  for (size_t i = 0; i < NNAMES && n < max; i++)
    out[n++] = names[i];
  size_t np = !f->disk ? 0 : f->part.uuid[0] ? 4 : 2;
  for (size_t i = 0; i < np && n < max; i++)
    out[n++] = part_names[i];
  return n;
}

size_t fs_xattr_list(const struct fs_file *f, char *buf, size_t size)
{
  const char *list[NNAMES + 4];
  size_t n = names_of(f, list, sizeof list / sizeof list[0]), need = 0;
  for (size_t i = 0; i < n; i++)
    need += strlen(list[i]) + 1;
  if (size == 0)
    return need;
  if (size < need)
    return 0;
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    memcpy(buf + o, list[i], strlen(list[i]) + 1);
    o += strlen(list[i]) + 1;
  }
  return need;
}

/* A partition's attributes (NULL + ENODATA when f has no such name). */
static char *partition_xattr(const struct fs_file *f, const char *name)
{
  char *v = NULL;
  const struct part_entry *e = &f->part;
  if (!f->disk) {
    errno = ENODATA;
    return NULL;
  }
  if (!strcmp(name, "user.nbd.partition")) {
    if (asprintf(&v, "number=%d start=%llu length=%llu", e->number, (unsigned long long)e->start,
                 (unsigned long long)e->length) < 0)
      v = NULL;
  } else if (!strcmp(name, "user.nbd.partition_type")) {
    v = strdup(e->type);
  } else if (!strcmp(name, "user.nbd.partition_name") && e->uuid[0]) {
    v = strdup(e->name);
  } else if (!strcmp(name, "user.nbd.partition_uuid") && e->uuid[0]) {
    v = strdup(e->uuid);
  } else {
    errno = ENODATA;
    return NULL;
  }
  if (!v)
    errno = ENOMEM;
  return v;
}

static char *flags_string(struct fs_file *f)
{
  uint16_t t = f->info.tflags;
  struct nbd_pool *p = f->disk ? f->disk->pool : f->pool; /* held by the caller */
  const struct nbd_session *ss = p ? nbd_pool_session(p) : NULL;
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
    return partition_xattr(f, name);
  }
  if (!v)
    errno = ENOMEM;
  return v;
}
