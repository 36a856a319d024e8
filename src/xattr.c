/* xattr.c: extended attributes describing an export, for getfattr and
 * scripts: its real name, description, URI, block sizes and flags, and
 * what it has been doing (user.nbd.stats, also logged on SIGUSR1); for a
 * partition file, its table entry. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs.h"
#include "log.h"
#include "stats.h"

static const char *const names[] = {
  "user.nbd.export", "user.nbd.description", "user.nbd.uri", "user.nbd.block_size",
  "user.nbd.flags", "user.nbd.protocol", "user.nbd.canonical_name", "user.nbd.stats",
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
               "cache=%s multi_conn=%s df=%s structured_replies=%s extended_headers=%s block_status=%s",
               t & NBD_FLAG_READ_ONLY ? "true" : "false", t & NBD_FLAG_SEND_FLUSH ? "true" : "false",
               t & NBD_FLAG_SEND_FUA ? "true" : "false", t & NBD_FLAG_ROTATIONAL ? "true" : "false",
               t & NBD_FLAG_SEND_TRIM ? "true" : "false",
               t & NBD_FLAG_SEND_WRITE_ZEROES ? "true" : "false",
               t & NBD_FLAG_SEND_FAST_ZERO ? "true" : "false",
               t & NBD_FLAG_SEND_CACHE ? "true" : "false",
               t & NBD_FLAG_CAN_MULTI_CONN ? "true" : "false", t & NBD_FLAG_SEND_DF ? "true" : "false",
               ss && ss->structured ? "true" : "false", ss && ss->extended ? "true" : "false",
               ctx ? "base:allocation" : "none") < 0)
    return NULL;
  return s;
}

/* The session of f's pool (held by the caller), or NULL before it connected. */
static const struct nbd_session *session_of(const struct fs_file *f)
{
  struct nbd_pool *p = f->disk ? f->disk->pool : f->pool;
  return p ? nbd_pool_session(p) : NULL;
}

/* How the handshake went: its style, the reply headers and TLS. */
static char *protocol_string(const struct fs_file *f)
{
  const struct nbd_session *ss = session_of(f);
  char *s = NULL;
  if (!ss)
    return strdup("not connected");
  const char *hs = ss->oldstyle ? "oldstyle" : ss->fixed_newstyle ? "fixed-newstyle" : "newstyle";
  const char *replies = ss->extended ? "extended" : ss->structured ? "structured" : "simple";
  if (asprintf(&s, "handshake=%s replies=%s tls=%s export_option=%s", hs, replies,
               ss->tls ? "yes" : "no", ss->oldstyle ? "none" : ss->used_go ? "go" : "export_name") < 0)
    return NULL;
  return s;
}

/* The export's name as the server gave it in NBD_INFO_NAME ("" when it did
 * not): may differ from the name asked for (an alias, the default export). */
static char *canonical_name(const struct fs_file *f)
{
  const struct nbd_session *ss = session_of(f);
  return strdup(ss && ss->info.name ? ss->info.name : "");
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
  } else if (!strcmp(name, "user.nbd.protocol")) {
    v = protocol_string(f);
  } else if (!strcmp(name, "user.nbd.canonical_name")) {
    v = canonical_name(f);
  } else {
    return partition_xattr(f, name);
  }
  if (!v)
    errno = ENOMEM;
  return v;
}

/* The stats line; *idle: the export's connections are not open and it
 * never served a request. */
static char *stats_line(struct fs *fs, struct fs_file *f, bool *idle)
{
  struct fs_file *disk = f->disk ? f->disk : f;
  struct stats_pool_view pv = { 0 };
  struct nbd_pool *p = fs_file_hold(f); /* never opens: an idle export shows 0/0 */
  if (p) {
    struct nbd_pool_counters c;
    nbd_pool_counters(p, &c);
    pv = (struct stats_pool_view){ c.ready, c.configured, c.inflight, c.queued, c.reconnects };
    fs_file_release(fs, f);
  }
  struct stats_totals t;
  stats_sum(&disk->stats, &t);
  uint64_t requests = 0;
  for (int i = 0; i < STATS_NKINDS; i++)
    requests += t.k[i].count;
  *idle = !p && requests == 0;
  size_t need = stats_format(&t, &pv, NULL, 0) + 1;
  char *v = malloc(need);
  if (!v) {
    errno = ENOMEM;
    return NULL;
  }
  stats_format(&t, &pv, v, need);
  return v;
}

char *fs_stats_line(struct fs *fs, struct fs_file *f)
{
  bool idle;
  return stats_line(fs, f, &idle);
}

void fs_log_stats(struct fs *fs)
{
  int shown = 0;
  /* The table's lock keeps a gone file from being recycled for another
   * export (and its counters freed) while they are read. */
  pthread_rwlock_rdlock(&fs->files_lock);
  for (int i = 0; i < fs->nfiles; i++) {
    struct fs_file *f = fs->files[i];
    if (f->disk || fs_file_gone(f))
      continue; /* a partition's requests are its disk's */
    bool idle;
    char *line = stats_line(fs, f, &idle);
    if (!line)
      continue;
    /* In directory mode, exports never opened have nothing to say (and
     * there may be thousands). */
    if (fs->mode == FS_EXPORTS && idle) {
      free(line);
      continue;
    }
    char name[100];
    nbd_sanitize(name, sizeof name, (const uint8_t *)f->export_name, strlen(f->export_name));
    log_notice("stats: export '%s': %s", name, line);
    free(line);
    shown++;
  }
  pthread_rwlock_unlock(&fs->files_lock);
  if (shown == 0)
    log_notice("stats: no export has been opened");
}
