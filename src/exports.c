/* exports.c: the files of the mount and their connection pools.
 *
 * In directory mode a pool is opened when its file is first used and
 * closed some seconds after its last user went away.  Everything that
 * talks to the server synchronously runs off the worker loops: listing and
 * opening on a housekeeping thread, idle closes on closer threads of their
 * own (a close may take seconds, and must not delay the next open).
 */
#define FUSE_USE_VERSION 34
#include "exports.h"

#include <errno.h>
#include <fuse_lowlevel.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "log.h"
#include "names.h"
#include "nbd-proto.h"

#define ROOT_INO 1            /* the directory (FUSE_ROOT_ID) */

#define IDLE_CLOSE_MS 10000   /* close a pool this long after its last user */
#define REFRESH_MIN_MS 1000   /* list the server's exports at most this often */
/* An export whose size stays unknown or 0 after a probe (a full connection
 * and NBD_OPT_GO) is probed again only after this long, or when it comes
 * back after vanishing: not on every listing. */
#define PROBE_TTL_MS 60000
/* Details (NBD_OPT_INFO) of exports already known are asked again this
 * often: an export's size may change, but rarely (and opening it learns
 * the current one). */
#define INFO_TTL_MS 60000

struct open_waiter {
  fs_ready_fn cb;
  void *arg;
  struct open_waiter *next;
};

enum hk_kind { HK_OPEN, HK_REFRESH };

struct hk_job {
  enum hk_kind kind;
  struct fs_file *f;
  fs_refreshed_fn cb;
  void *arg;
  struct hk_job *next;
};

static uint64_t now_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

int fs_init_table(struct fs *fs)
{
  if (getrandom(&fs->hash_seed, sizeof fs->hash_seed, GRND_NONBLOCK) != sizeof fs->hash_seed)
    fs->hash_seed = (uint64_t)now_ms() * UINT64_C(0x9e3779b97f4a7c15); /* better than a constant */
  pthread_rwlock_init(&fs->files_lock, NULL);
  pthread_mutex_init(&fs->hk_lock, NULL);
  pthread_mutex_init(&fs->dir_lock, NULL);
  pthread_cond_init(&fs->hk_cond, NULL);
  pthread_cond_init(&fs->closers_cond, NULL);
  return 0;
}

static struct fs_file *new_file(struct fs *fs, const char *file_name, const char *export_name)
{
  struct fs_file *f = calloc(1, sizeof *f);
  if (!f)
    return NULL;
  f->name = file_name ? strdup(file_name) : NULL;
  f->export_name = strdup(export_name);
  if ((file_name && !f->name) || !f->export_name) {
    free(f->name);
    free(f->export_name);
    free(f);
    return NULL;
  }
  pthread_mutex_init(&f->lock, NULL);
  f->readonly = fs->readonly;
  return f;
}

/* ---- the table: hash chains by file name and by export name ----
 *
 * A listing of 10,000 exports looks each one up by export name, and `ls -l`
 * looks each file up by name: linear searches made both quadratic.  The
 * hash is FNV-1a from a random seed, so a server cannot choose names that
 * all land in one chain. */

static size_t hash_str(const struct fs *fs, const char *s)
{
  uint64_t h = UINT64_C(0xcbf29ce484222325) ^ fs->hash_seed;
  for (; *s; s++) {
    h ^= (unsigned char)*s;
    h *= UINT64_C(0x100000001b3);
  }
  h ^= h >> 29; /* the low bits pick the bucket: mix the high ones in */
  return (size_t)(h % fs->nbuckets);
}

/* files_lock held for writing, f not in the chains. */
static void hash_insert(struct fs *fs, struct fs_file *f)
{
  if (f->name) {
    size_t b = hash_str(fs, f->name);
    f->name_next = fs->by_name[b];
    fs->by_name[b] = f;
  }
  if (!f->disk) {
    size_t b = hash_str(fs, f->export_name);
    f->export_next = fs->by_export[b];
    fs->by_export[b] = f;
  }
}

static void hash_remove(struct fs *fs, struct fs_file *f)
{
  if (f->name) {
    struct fs_file **pp = &fs->by_name[hash_str(fs, f->name)];
    while (*pp && *pp != f)
      pp = &(*pp)->name_next;
    if (*pp)
      *pp = f->name_next;
  }
  if (!f->disk) {
    struct fs_file **pp = &fs->by_export[hash_str(fs, f->export_name)];
    while (*pp && *pp != f)
      pp = &(*pp)->export_next;
    if (*pp)
      *pp = f->export_next;
  }
  f->name_next = f->export_next = NULL;
}

/* Keep chains short: at least a bucket per file (files_lock held for
 * writing).  On failure the old buckets stay: longer chains, still right. */
static void hash_grow(struct fs *fs, int nfiles)
{
  if ((size_t)nfiles < fs->nbuckets)
    return;
  size_t nb = fs->nbuckets ? fs->nbuckets * 4 : 64;
  struct fs_file **bn = calloc(nb, sizeof *bn), **be = calloc(nb, sizeof *be);
  if (!bn || !be) {
    free(bn);
    free(be);
    return;
  }
  free(fs->by_name);
  free(fs->by_export);
  fs->by_name = bn;
  fs->by_export = be;
  fs->nbuckets = nb;
  for (int i = 0; i < fs->nfiles; i++)
    hash_insert(fs, fs->files[i]);
}

/* A file (not) shown under its name: not gone, nor its disk. */
static bool live(struct fs_file *f)
{
  return !f->gone && !(f->disk && f->disk->gone);
}

/* files_lock held.  Of several live files of one name (an export named like
 * a partition file) the oldest slot wins, as the listing order did. */
static struct fs_file *find_name(struct fs *fs, const char *name, bool live_only)
{
  if (!fs->nbuckets)
    return NULL;
  struct fs_file *best = NULL;
  for (struct fs_file *f = fs->by_name[hash_str(fs, name)]; f; f = f->name_next)
    if ((!live_only || live(f)) && !strcmp(f->name, name) && (!best || f->ino < best->ino))
      best = f;
  return best;
}

/* Whether a gone file's slot may take another export (files_lock held for
 * writing, so no lookup can count a reference meanwhile).  Nothing of ours
 * may hold the file: no open handle (they hold users), no pool, no
 * partition file naming it.  The kernel may still cache the inode (it
 * forgets only when memory is short or the name is looked up again), so a
 * recycled slot gets another inode number (see recycle_into). */
static bool recyclable(struct fs_file *f)
{
  if (f->nparts != 0)
    return false;
  /* A partition's pool and users are its disk's: its open handles show
   * only as kernel references (open files keep their inode). */
  if (f->disk)
    return atomic_load(&f->nlookup) == 0 && fs_file_gone(f);
  pthread_mutex_lock(&f->lock);
  bool ok = f->gone && f->users == 0 && !f->pool && !f->opening && !f->closing && !f->waiters &&
            !f->permanent;
  pthread_mutex_unlock(&f->lock);
  return ok;
}

/* Move the new file nf into the gone file f's slot (files_lock held for
 * writing; f recyclable).  f keeps its memory and its lock; nf's shell is
 * freed.  The inode number keeps the slot in its low 32 bits and counts
 * recycles in the high ones: an inode the kernel still caches for the old
 * export then names nothing (ENOENT), never the new export. */
static void recycle_into(struct fs *fs, struct fs_file *f, struct fs_file *nf)
{
  hash_remove(fs, f);
  f->ino += UINT64_C(1) << 32;
  atomic_store(&f->nlookup, 0); /* the old inode's lookups: its forgets are ignored */
  if (f->disk)
    f->disk->nparts--;
  pthread_mutex_lock(&f->lock);
  free(f->old_name);
  free(f->old_export_name);
  f->old_name = f->name;
  f->old_export_name = f->export_name;
  f->name = nf->name;
  f->export_name = nf->export_name;
  nbd_export_info_free(&f->info);
  f->info = nf->info;
  f->have_info = nf->have_info;
  f->readonly = nf->readonly;
  f->gone = false;
  f->idle_since_ms = 0;
  f->perm = (struct fs_perm){ 0 };
  f->disk = nf->disk;
  f->part = nf->part;
  f->part_alloc = 0;
  f->part_alloc_known = false;
  f->parts_read = f->parts_stale = false;
  atomic_fetch_add(&f->gen, 1);
  f->probed = false;
  f->probed_ms = 0;
  f->info_refused = false;
  /* Nobody counts into a recycled file (no pool, no handle); the new
   * export starts from zero. */
  stats_destroy(&f->stats);
  memset(&f->stats, 0, sizeof f->stats);
  pthread_mutex_unlock(&f->lock);
  pthread_mutex_destroy(&nf->lock);
  free(nf);
}

/* Put f in the table (it is complete: lookups may find it at once), in a
 * recycled slot if one is free. */
static void discard_unpublished(struct fs_file *f)
{
  pthread_mutex_destroy(&f->lock);
  free(f->name);
  free(f->export_name);
  free(f);
}

/* List f.  With unique, a name a live file already has is refused
 * (EEXIST), checked under the same lock that lists f. */
static struct fs_file *publish(struct fs *fs, struct fs_file *f, bool unique)
{
  pthread_rwlock_wrlock(&fs->files_lock);
  if (unique && find_name(fs, f->name, true)) {
    pthread_rwlock_unlock(&fs->files_lock);
    discard_unpublished(f);
    errno = EEXIST;
    return NULL;
  }
  while (fs->mode == FS_EXPORTS && fs->nfree > 0) {
    struct fs_file *old = fs->files[fs->free_slots[--fs->nfree]];
    if (!recyclable(old))
      continue; /* revived or referenced since the listing offered it */
    recycle_into(fs, old, f);
    if (old->disk)
      old->disk->nparts++;
    hash_insert(fs, old);
    pthread_rwlock_unlock(&fs->files_lock);
    return old;
  }
  if (fs->nfiles == fs->cap) {
    int cap = fs->cap ? fs->cap * 2 : 16;
    struct fs_file **nf = realloc(fs->files, (size_t)cap * sizeof *nf);
    if (!nf) {
      pthread_rwlock_unlock(&fs->files_lock);
      discard_unpublished(f);
      errno = ENOMEM;
      return NULL;
    }
    fs->files = nf;
    fs->cap = cap;
  }
  /* Inode 1 is the directory, except when the file is the mount itself. */
  f->ino = fs->mode == FS_NAKED ? ROOT_INO : (uint64_t)fs->nfiles + 2;
  hash_grow(fs, fs->nfiles + 1); /* (rehashes the table without f) */
  fs->files[fs->nfiles++] = f;
  if (f->disk)
    f->disk->nparts++;
  if (fs->nbuckets)
    hash_insert(fs, f);
  pthread_rwlock_unlock(&fs->files_lock);
  return f;
}

struct fs_file *fs_add_file(struct fs *fs, const char *file_name, const char *export_name)
{
  struct fs_file *f = new_file(fs, file_name, export_name);
  return f ? publish(fs, f, false) : NULL;
}

struct fs_file *fs_add_partition(struct fs *fs, const char *file_name, struct fs_file *disk,
                                 const struct part_entry *e)
{
  struct fs_file *f = new_file(fs, file_name, disk->export_name);
  if (!f)
    return NULL;
  pthread_mutex_lock(&disk->lock);
  f->info = (struct nbd_export_info){ .size = e->length, .tflags = disk->info.tflags,
                                      .min_block = disk->info.min_block,
                                      .pref_block = disk->info.pref_block,
                                      .max_block = disk->info.max_block,
                                      .max_block_advertised = disk->info.max_block_advertised,
                                      .have_block_size = disk->info.have_block_size };
  f->readonly = disk->readonly;
  pthread_mutex_unlock(&disk->lock);
  f->have_info = true;
  f->disk = disk;
  f->part = *e;
  return publish(fs, f, true);
}

struct fs_file *fs_file_at(struct fs *fs, int i)
{
  pthread_rwlock_rdlock(&fs->files_lock);
  struct fs_file *f = i < fs->nfiles ? fs->files[i] : NULL;
  pthread_rwlock_unlock(&fs->files_lock);
  return f;
}

struct fs_file *fs_file_by_ino(struct fs *fs, uint64_t ino)
{
  struct fs_file *f = NULL;
  pthread_rwlock_rdlock(&fs->files_lock);
  if (fs->mode == FS_NAKED) {
    if (ino == ROOT_INO && fs->nfiles)
      f = fs->files[0];
  } else if ((uint32_t)ino >= 2 && (uint32_t)ino - 2 < (uint32_t)fs->nfiles) {
    f = fs->files[(uint32_t)ino - 2];
    if (f->ino != ino)
      f = NULL; /* an inode of the slot's earlier file (recycle_into) */
  }
  pthread_rwlock_unlock(&fs->files_lock);
  return f;
}

struct fs_file *fs_file_by_name(struct fs *fs, const char *name)
{
  pthread_rwlock_rdlock(&fs->files_lock);
  struct fs_file *f = find_name(fs, name, true);
  pthread_rwlock_unlock(&fs->files_lock);
  return f;
}

struct fs_file *fs_file_lookup(struct fs *fs, const char *name)
{
  pthread_rwlock_rdlock(&fs->files_lock);
  struct fs_file *f = find_name(fs, name, true);
  if (f)
    atomic_fetch_add(&f->nlookup, 1);
  pthread_rwlock_unlock(&fs->files_lock);
  return f;
}

void fs_file_forget(struct fs *fs, uint64_t ino, uint64_t nlookup)
{
  struct fs_file *f = fs_file_by_ino(fs, ino);
  if (!f)
    return;
  /* Never below 0: a kernel that forgets more than it looked up (it
   * cannot) must not make a referenced inode look free. */
  uint64_t cur = atomic_load(&f->nlookup);
  while (!atomic_compare_exchange_weak(&f->nlookup, &cur, cur > nlookup ? cur - nlookup : 0))
    ;
}

unsigned fs_file_gen(struct fs_file *f)
{
  unsigned g = atomic_load_explicit(&f->gen, memory_order_acquire);
  /* Both only grow, so the sum changes when either does. */
  return f->disk ? g + fs_file_gen(f->disk) : g;
}

static struct fs_file *find_export(struct fs *fs, const char *export_name)
{
  struct fs_file *f = NULL;
  pthread_rwlock_rdlock(&fs->files_lock);
  if (fs->nbuckets)
    for (f = fs->by_export[hash_str(fs, export_name)]; f; f = f->export_next)
      if (!strcmp(f->export_name, export_name))
        break;
  pthread_rwlock_unlock(&fs->files_lock);
  return f;
}

/* Whether a partition file has the plain file name of export (a name, once
 * shown, keeps naming the same file, so the export is not shown); if so,
 * its disk's name goes to disk. */
static bool partition_named_like(struct fs *fs, const char *export, char *disk, size_t len)
{
  char *plain = name_from_export(export, "default");
  if (!plain)
    return false;
  pthread_rwlock_rdlock(&fs->files_lock);
  struct fs_file *f = find_name(fs, plain, false);
  bool found = f && f->disk;
  if (found)
    snprintf(disk, len, "%s", f->disk->name);
  pthread_rwlock_unlock(&fs->files_lock);
  free(plain);
  return found;
}

static bool name_taken(const char *name, void *arg)
{
  struct fs *fs = arg;
  pthread_rwlock_rdlock(&fs->files_lock);
  bool taken = find_name(fs, name, false) != NULL;
  pthread_rwlock_unlock(&fs->files_lock);
  return taken;
}

/* Learn an export's details the way opening it would (NBD_OPT_GO), for
 * servers whose NBD_OPT_INFO is missing or wrong (nbd-server 3.24 reports
 * size 0 there). */
static int probe_export(struct fs *fs, const char *export_name, struct nbd_export_info *info)
{
  char err[256];
  struct transport *t = transport_connect(fs->uri, fs->pool_opts.connect_timeout_s, err, sizeof err);
  if (!t)
    return -ECONNREFUSED;
  struct nbd_hs_opts o = { .export_name = export_name, .timeout_s = fs->pool_opts.connect_timeout_s,
                           .tls_mode = fs->pool_opts.tls_mode, .tls = fs->pool_opts.tls };
  struct nbd_session s;
  int r = nbd_negotiate(t, &o, &s, err, sizeof err);
  if (r < 0) {
    transport_destroy(t);
    return r;
  }
  struct nbd_conn *c = nbd_conn_new(t, &s, "probe", 0, 0);
  if (c)
    nbd_conn_close(c); /* sends NBD_CMD_DISC */
  else
    transport_destroy(t);
  nbd_export_info_free(info);
  *info = s.info;
  s.info.name = s.info.description = NULL;
  nbd_session_free(&s);
  return 0;
}

static void set_info(struct fs *fs, struct fs_file *f, struct nbd_export_info *info)
{
  nbd_export_info_free(&f->info);
  f->info = *info;
  memset(info, 0, sizeof *info);
  f->have_info = true;
  f->readonly = fs->readonly || (f->info.tflags & NBD_FLAG_READ_ONLY);
}

/* f's details from what the pool negotiated (f->lock held). */
static void set_info_from_pool(struct fs *fs, struct fs_file *f, struct nbd_pool *p)
{
  const struct nbd_export_info *pi = nbd_pool_info(p);
  struct nbd_export_info info = *pi;
  info.name = NULL;
  info.description = pi->description ? strdup(pi->description) : NULL;
  set_info(fs, f, &info);
}

int fs_file_set_pool(struct fs *fs, struct fs_file *f, struct nbd_pool *p)
{
  int r = extents_attach(p);
  pthread_mutex_lock(&f->lock);
  f->pool = p;
  f->permanent = true;
  set_info_from_pool(fs, f, p);
  pthread_mutex_unlock(&f->lock);
  return r;
}

void fs_server_gone(struct fs *fs)
{
  atomic_store(&fs->server_gone, true);
  /* A copy: the table may grow meanwhile, but files are never freed while mounted. */
  pthread_rwlock_rdlock(&fs->files_lock);
  int n = fs->nfiles;
  struct fs_file **files = malloc((size_t)(n ? n : 1) * sizeof *files);
  if (files)
    memcpy(files, fs->files, (size_t)n * sizeof *files);
  pthread_rwlock_unlock(&fs->files_lock);
  for (int i = 0; files && i < n; i++) {
    struct nbd_pool *p = fs_file_hold(files[i]);
    if (p) {
      nbd_pool_server_gone(p);
      fs_file_release(fs, files[i]);
    }
  }
  free(files);
}

/* Exports refused for want of a distinct name, logged rate-limited (every
 * listing would otherwise log them again). */
static struct log_limit name_clash = LOG_LIMIT_INIT;

int fs_list_exports(struct fs *fs, char *err, size_t errlen)
{
  char why[512], where[256];
  nbd_uri_describe(fs->uri, where, sizeof where);
  if (atomic_load(&fs->server_gone)) {
    snprintf(err, errlen, "%s has exited", where);
    return -EIO;
  }
  /* NBD_OPT_INFO for every export is most of a listing's cost (10,000
   * round trips for 10,000 exports), and sizes rarely change: a refresh
   * lists the names only, and asks for details when an export is new (or
   * back), or when they were last asked for a while ago. */
  bool want_info = !fs->last_info_ms || now_ms() - fs->last_info_ms >= INFO_TTL_MS;
  struct nbd_listed_export *list;
  struct nbd_export_info *infos = NULL;
  int n;
  for (;;) {
    struct transport *t = transport_connect(fs->uri, fs->pool_opts.connect_timeout_s, why, sizeof why);
    if (!t) {
      snprintf(err, errlen, "%s", why);
      return -ECONNREFUSED;
    }
    struct nbd_hs_opts o = { .export_name = "", .timeout_s = fs->pool_opts.connect_timeout_s,
                             .tls_mode = fs->pool_opts.tls_mode, .tls = fs->pool_opts.tls };
    n = nbd_list_exports(t, &o, &list, want_info ? &infos : NULL, why, sizeof why);
    transport_destroy(t);
    if (n < 0) {
      snprintf(err, errlen, "%s: cannot list exports: %s", where, why);
      return n;
    }
    if (want_info)
      break;
    bool news = false;
    for (int i = 0; i < n && !news; i++) {
      struct fs_file *f = find_export(fs, list[i].name);
      news = !f || fs_file_gone(f);
    }
    if (!news)
      break;
    nbd_listed_exports_free(list, NULL, n);
    want_info = true;
  }
  if (want_info)
    fs->last_info_ms = now_ms();
  /* Match the listing to the table: existing exports first (revived if
   * they had gone), then mark what vanished gone, then add the new ones,
   * in slots of gone files the kernel has forgotten.  In this order a
   * listed export is never given away to another one before it is found. */
  pthread_rwlock_rdlock(&fs->files_lock);
  bool *seen = calloc((size_t)fs->nfiles + 1, sizeof *seen);
  int before = fs->nfiles;
  pthread_rwlock_unlock(&fs->files_lock);
  struct fs_file **fl = calloc((size_t)n + 1, sizeof *fl);
  if (!seen || !fl) {
    free(seen);
    free(fl);
    nbd_listed_exports_free(list, infos, n);
    snprintf(err, errlen, "out of memory");
    return -ENOMEM;
  }
  for (int i = 0; i < n; i++) {
    struct fs_file *f = fl[i] = find_export(fs, list[i].name);
    if (!f)
      continue;
    if ((uint32_t)f->ino - 2 < (uint32_t)before)
      seen[(uint32_t)f->ino - 2] = true;
    pthread_mutex_lock(&f->lock);
    bool back = f->gone;
    if (back) {
      f->gone = false;
      f->parts_stale = true; /* its partition files may have been recycled meanwhile */
    }
    pthread_mutex_unlock(&f->lock);
    if (back) {
      /* Back under another inode number: the kernel's inode for the old
       * one keeps its handles (which fail) apart from new opens, whose
       * pages would otherwise serve the old handles' reads. */
      pthread_rwlock_wrlock(&fs->files_lock);
      f->ino += UINT64_C(1) << 32;
      atomic_store(&f->nlookup, 0); /* the old inode's; its forgets are ignored */
      pthread_rwlock_unlock(&fs->files_lock);
    }
  }
  for (int i = 0; i < before; i++) {
    if (seen[i])
      continue;
    pthread_rwlock_rdlock(&fs->files_lock);
    struct fs_file *f = fs->files[i];
    pthread_rwlock_unlock(&fs->files_lock);
    if (f->disk)
      continue; /* gone with its disk (fs_file_gone) */
    pthread_mutex_lock(&f->lock);
    bool went = !f->gone;
    if (went) {
      log_info("export '%s' is no longer listed by the server", f->name);
      f->gone = true;
      atomic_fetch_add(&f->gen, 1); /* its open handles fail from now on */
      f->probed = false; /* if it comes back, it may be another export */
    }
    uint64_t ino = f->ino;
    pthread_mutex_unlock(&f->lock);
    /* Reads through open handles would still find cached pages: drop them,
     * so that they ask, and fail.  (Page locks only: never the directory's,
     * which a readdir waiting for this listing holds.) */
    if (went && fs->se)
      fuse_lowlevel_notify_inval_inode(fs->se, ino, 0, 0);
  }
  /* Offer the slots of gone files nothing refers to any more (checked
   * again when one is taken). */
  pthread_rwlock_wrlock(&fs->files_lock);
  fs->nfree = 0;
  for (int i = 0; i < fs->nfiles; i++) {
    if (!recyclable(fs->files[i]))
      continue;
    if (fs->nfree == fs->free_cap) {
      int cap = fs->free_cap ? fs->free_cap * 2 : 16;
      int *nf = realloc(fs->free_slots, (size_t)cap * sizeof *nf);
      if (!nf)
        break; /* fewer slots recycled this time */
      fs->free_slots = nf;
      fs->free_cap = cap;
    }
    fs->free_slots[fs->nfree++] = i;
  }
  pthread_rwlock_unlock(&fs->files_lock);
  for (int i = 0; i < n; i++) {
    if (fl[i] || (fl[i] = find_export(fs, list[i].name)) != NULL)
      continue; /* listed twice */
    char *fname = name_unique(list[i].name, "default", NULL, name_taken, fs);
    if (!fname && errno == EEXIST) {
      char sname[96];
      nbd_sanitize(sname, sizeof sname, (const uint8_t *)list[i].name, strlen(list[i].name));
      char disk[96];
      if (partition_named_like(fs, list[i].name, disk, sizeof disk))
        log_failure(&name_clash, "export '%s' not shown: a partition file of %s has its name", sname,
                    disk);
      else
        log_failure(&name_clash, "export '%s' not shown: every file name it could have is taken by "
                    "another file (colliding digests: a hostile export list?)", sname);
    }
    fl[i] = fname ? fs_add_file(fs, fname, list[i].name) : NULL;
    free(fname);
  }
  uint64_t now = now_ms();
  for (int i = 0; i < n; i++) {
    struct fs_file *f = fl[i];
    if (!f)
      continue;
    pthread_mutex_lock(&f->lock);
    bool open = f->pool != NULL;
    bool known = f->have_info && f->info.size != 0;
    bool probed = f->probed && now - f->probed_ms < PROBE_TTL_MS;
    bool refused_before = f->info_refused;
    pthread_mutex_unlock(&f->lock);
    if (open)
      continue; /* the pool's own negotiation is authoritative */
    struct nbd_export_info info = { 0 };
    bool have = infos && infos[i].have_export;
    if (have) {
      info = infos[i];
      memset(&infos[i], 0, sizeof infos[i]);
    }
    /* INFO answers get the checks GO answers get in the handshake: a
     * size past INT64_MAX would show as a negative st_size. */
    const char *bad = !have ? NULL
                      : info.size > INT64_MAX ? "a size above INT64_MAX"
                      : info.have_block_size &&
                            nbd_check_block_sizes(info.min_block, info.pref_block, info.max_block)
                          ? "invalid block sizes"
                          : NULL;
    if (bad && !refused_before)
      log_warn("export '%s': ignoring the server's NBD_INFO_EXPORT answer (%s, size %llu)",
               f->name, bad, (unsigned long long)info.size);
    pthread_mutex_lock(&f->lock);
    f->info_refused = bad != NULL;
    pthread_mutex_unlock(&f->lock);
    if (bad) {
      nbd_export_info_free(&info);
      info = (struct nbd_export_info){ 0 };
      have = false;
    }
    if (!have || info.size == 0) {
      if (known || probed) { /* probed before: keep what we have */
        nbd_export_info_free(&info);
        continue;
      }
      int r = probe_export(fs, list[i].name, &info);
      pthread_mutex_lock(&f->lock);
      f->probed = true;
      f->probed_ms = now_ms();
      pthread_mutex_unlock(&f->lock);
      if (r < 0 && !have)
        continue; /* size unknown until opened */
    }
    if (!info.have_block_size) {
      info.min_block = 1;
      info.pref_block = 4096;
      info.max_block = NBD_MAX_PAYLOAD;
    }
    if (!info.description && list[i].description && list[i].description[0])
      info.description = strdup(list[i].description);
    pthread_mutex_lock(&f->lock);
    set_info(fs, f, &info);
    pthread_mutex_unlock(&f->lock);
    nbd_export_info_free(&info);
  }
  free(fl);
  free(seen);
  nbd_listed_exports_free(list, infos, n);
  fs->last_list_ms = now_ms();
  return 0;
}

/* ---- housekeeping ---- */

static void queue_job(struct fs *fs, struct hk_job *j)
{
  pthread_mutex_lock(&fs->hk_lock);
  struct hk_job **pp = &fs->hk_jobs;
  while (*pp)
    pp = &(*pp)->next;
  *pp = j;
  pthread_cond_signal(&fs->hk_cond);
  pthread_mutex_unlock(&fs->hk_lock);
}

/* Take the file's open waiters (f->lock held).  failed: they will get an
 * error and hold nothing, so they stop counting as users. */
static struct open_waiter *take_waiters_locked(struct fs_file *f, bool failed)
{
  struct open_waiter *w = f->waiters;
  f->waiters = NULL;
  f->opening = false;
  if (failed) {
    for (struct open_waiter *x = w; x; x = x->next)
      f->users--;
    if (f->users == 0)
      f->idle_since_ms = now_ms();
  }
  return w;
}

static void run_waiters(struct fs_file *f, struct open_waiter *w, int err)
{
  while (w) {
    struct open_waiter *next = w->next;
    w->cb(w->arg, f, err);
    free(w);
    w = next;
  }
}

static void do_open(struct fs *fs, struct fs_file *f)
{
  struct nbd_pool_opts o = fs->pool_opts;
  o.export_name = f->export_name;
  char err[768];
  struct nbd_pool *p = NULL;
  int r;
  if (atomic_load(&fs->server_gone)) {
    char where[256];
    nbd_uri_describe(fs->uri, where, sizeof where);
    snprintf(err, sizeof err, "%s: the server has exited", where);
    r = -EIO;
  } else {
    r = nbd_pool_open(&p, &o, err, sizeof err);
  }
  /* The cache observes the pool's writes from the first one on; without
   * it (no memory) the file only reports everything as data. */
  if (r == 0 && extents_attach(p) < 0)
    log_warn("%s: no memory for the extent cache; reporting all data", nbd_pool_desc(p));
  if (r == 0 && nbd_pool_attach(p, fs->loops, fs->nloops) < 0) {
    snprintf(err, sizeof err, "%s: cannot attach connections to workers", nbd_pool_desc(p));
    nbd_pool_close(p);
    extents_detach(p);
    nbd_pool_free(p);
    r = -EIO;
  }
  if (r < 0)
    log_error("opening %s", err);
  pthread_mutex_lock(&f->lock);
  struct open_waiter *w = take_waiters_locked(f, r < 0);
  if (r == 0) {
    f->pool = p;
    set_info_from_pool(fs, f, p);
  }
  pthread_mutex_unlock(&f->lock);
  int e = r == -ENOENT ? ENOENT : r == -EACCES ? EACCES : EIO;
  run_waiters(f, w, r == 0 ? 0 : e);
}

/* Close an idle pool (on a closer thread).  A failed close means writes
 * the server acknowledged may be lost: worth an error, and the exit status. */
static void close_pool(struct fs *fs, struct fs_file *f, struct nbd_pool *p, bool blocking)
{
  log_info("%s: idle, disconnecting", nbd_pool_desc(p));
  int e = nbd_pool_close(p);
  if (e) {
    log_error("%s: closing: acknowledged writes could not be made durable: %s",
              nbd_pool_desc(p), strerror(e));
    pthread_mutex_lock(&fs->hk_lock);
    if (!fs->close_err)
      fs->close_err = e;
    pthread_mutex_unlock(&fs->hk_lock);
  }
  extents_detach(p);
  nbd_pool_free(p);
  if (!blocking)
    return;
  pthread_mutex_lock(&f->lock);
  f->closing = false;
  bool reopen = f->waiters && !f->opening;
  if (reopen)
    f->opening = true;
  pthread_mutex_unlock(&f->lock);
  if (reopen) {
    struct hk_job *j = calloc(1, sizeof *j);
    if (j) {
      j->kind = HK_OPEN;
      j->f = f;
      queue_job(fs, j);
    } else {
      pthread_mutex_lock(&f->lock);
      struct open_waiter *w = take_waiters_locked(f, true);
      pthread_mutex_unlock(&f->lock);
      run_waiters(f, w, ENOMEM);
    }
  }
}

struct closer {
  struct fs *fs;
  struct fs_file *f;
  struct nbd_pool *p;
  bool blocking;
};

static void closer_done(struct fs *fs)
{
  pthread_mutex_lock(&fs->hk_lock);
  if (--fs->closers == 0)
    pthread_cond_broadcast(&fs->closers_cond);
  pthread_mutex_unlock(&fs->hk_lock);
}

static void *closer_main(void *arg)
{
  struct closer *c = arg;
  struct fs *fs = c->fs;
  close_pool(fs, c->f, c->p, c->blocking);
  free(c);
  closer_done(fs);
  return NULL;
}

/* Close p off the housekeeping thread (fs_shutdown waits for it). */
static void start_closer(struct fs *fs, struct fs_file *f, struct nbd_pool *p, bool blocking)
{
  pthread_mutex_lock(&fs->hk_lock);
  fs->closers++;
  pthread_mutex_unlock(&fs->hk_lock);
  struct closer *c = malloc(sizeof *c);
  int r = ENOMEM;
  if (c) {
    *c = (struct closer){ fs, f, p, blocking };
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    pthread_t t;
    r = pthread_create(&t, &attr, closer_main, c);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
  }
  if (r == 0)
    return;
  free(c);
  close_pool(fs, f, p, blocking); /* no thread: close here, late but correct */
  closer_done(fs);
}

/* Hand pools nobody has used for a while to closers.  The file forgets its
 * pool at once, so the next open starts a fresh one instead of waiting for
 * the close.  Except when writes are still unflushed: a server without
 * multi-conn need not show them on other connections before the FLUSH, so
 * opens then wait for the close (rare: every close() of a written handle
 * flushes already). */
static void close_idle(struct fs *fs)
{
  uint64_t now = now_ms();
  struct fs_file *f;
  for (int i = 0; (f = fs_file_at(fs, i)) != NULL; i++) {
    pthread_mutex_lock(&f->lock);
    struct nbd_pool *p = NULL;
    bool blocking = false;
    /* A gone export's pool closes as soon as it is unused: nothing will
     * open it again, and its slot is recycled only once it is closed. */
    if (f->pool && !f->permanent && f->users == 0 &&
        (f->gone || now - f->idle_since_ms >= IDLE_CLOSE_MS)) {
      p = f->pool;
      f->pool = NULL;
      blocking = nbd_pool_needs_flush(p);
      f->closing = blocking;
    }
    pthread_mutex_unlock(&f->lock);
    if (p)
      start_closer(fs, f, p, blocking);
  }
}

static void *hk_main(void *arg)
{
  struct fs *fs = arg;
  pthread_mutex_lock(&fs->hk_lock);
  while (!fs->hk_stop) {
    struct hk_job *j = fs->hk_jobs;
    if (j) {
      fs->hk_jobs = j->next;
      pthread_mutex_unlock(&fs->hk_lock);
      if (j->kind == HK_OPEN) {
        do_open(fs, j->f);
      } else {
        if (now_ms() - fs->last_list_ms >= REFRESH_MIN_MS) {
          char err[768];
          if (fs_list_exports(fs, err, sizeof err) < 0)
            log_warn("refreshing the export list: %s", err);
        }
        if (fs->partitions)
          partitions_refresh(fs, j->cb, j->arg);
        else
          j->cb(j->arg);
      }
      free(j);
      pthread_mutex_lock(&fs->hk_lock);
      continue;
    }
    pthread_mutex_unlock(&fs->hk_lock);
    close_idle(fs);
    pthread_mutex_lock(&fs->hk_lock);
    if (fs->hk_stop || fs->hk_jobs)
      continue;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 1;
    pthread_cond_timedwait(&fs->hk_cond, &fs->hk_lock, &until);
  }
  pthread_mutex_unlock(&fs->hk_lock);
  return NULL;
}

int fs_start(struct fs *fs)
{
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  int r = pthread_create(&fs->hk_thread, NULL, hk_main, fs);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (r)
    return -r;
  fs->hk_running = true;
  return 0;
}

int fs_shutdown(struct fs *fs)
{
  /* Partition scans first: they need the housekeeping thread and the pools. */
  partitions_wait_idle();
  if (fs->hk_running) {
    pthread_mutex_lock(&fs->hk_lock);
    fs->hk_stop = true;
    pthread_cond_signal(&fs->hk_cond);
    pthread_mutex_unlock(&fs->hk_lock);
    pthread_join(fs->hk_thread, NULL);
    fs->hk_running = false;
  }
  /* Idle closes under way (their pools need the loops, still running). */
  pthread_mutex_lock(&fs->hk_lock);
  while (fs->closers > 0)
    pthread_cond_wait(&fs->closers_cond, &fs->hk_lock);
  int err = fs->close_err;
  pthread_mutex_unlock(&fs->hk_lock);
  /* Jobs that never ran (or that a closer queued): their waiters get an error. */
  while (fs->hk_jobs) {
    struct hk_job *j = fs->hk_jobs;
    fs->hk_jobs = j->next;
    if (j->kind == HK_REFRESH)
      j->cb(j->arg);
    else {
      pthread_mutex_lock(&j->f->lock);
      struct open_waiter *w = take_waiters_locked(j->f, true);
      pthread_mutex_unlock(&j->f->lock);
      run_waiters(j->f, w, EIO);
    }
    free(j);
  }
  for (int i = 0; i < fs->nfiles; i++) {
    struct nbd_pool *p = fs->files[i]->pool;
    if (!p)
      continue;
    int e = nbd_pool_close(p);
    if (e) {
      log_error("%s: acknowledged writes could not be made durable: %s", nbd_pool_desc(p),
                strerror(e));
      if (!err)
        err = e;
    }
  }
  return err;
}

void fs_free(struct fs *fs)
{
  for (int i = 0; i < fs->nfiles; i++) {
    struct fs_file *f = fs->files[i];
    if (f->pool) {
      extents_detach(f->pool);
      nbd_pool_free(f->pool);
    }
    nbd_export_info_free(&f->info);
    stats_destroy(&f->stats);
    pthread_mutex_destroy(&f->lock);
    free(f->name);
    free(f->export_name);
    free(f->old_name);
    free(f->old_export_name);
    free(f);
  }
  free(fs->files);
  fs->files = NULL;
  fs->nfiles = 0;
  free(fs->by_name);
  free(fs->by_export);
  fs->by_name = fs->by_export = NULL;
  fs->nbuckets = 0;
  free(fs->free_slots);
  fs->free_slots = NULL;
  fs->nfree = fs->free_cap = 0;
  pthread_rwlock_destroy(&fs->files_lock);
  pthread_mutex_destroy(&fs->hk_lock);
  pthread_mutex_destroy(&fs->dir_lock);
  pthread_cond_destroy(&fs->hk_cond);
  pthread_cond_destroy(&fs->closers_cond);
}

/* A partition file waits for its disk's pool, then answers for itself. */
struct part_acquire {
  struct fs_file *part;
  fs_ready_fn cb;
  void *arg;
};

static void part_acquired(void *arg, struct fs_file *disk, int err)
{
  struct part_acquire *a = arg;
  struct fs_file *part = a->part;
  fs_ready_fn cb = a->cb;
  void *cb_arg = a->arg;
  free(a);
  if (!err && fs_file_gone(part)) {
    fs_file_release(NULL, disk);
    err = EIO;
  }
  cb(cb_arg, part, err);
}

void fs_file_acquire(struct fs *fs, struct fs_file *f, fs_ready_fn cb, void *arg)
{
  if (f->disk) {
    struct part_acquire *a = malloc(sizeof *a);
    if (!a) {
      cb(arg, f, ENOMEM);
      return;
    }
    *a = (struct part_acquire){ f, cb, arg };
    fs_file_acquire(fs, f->disk, part_acquired, a);
    return;
  }
  pthread_mutex_lock(&f->lock);
  f->users++;
  if (f->pool && !f->closing) {
    pthread_mutex_unlock(&f->lock);
    cb(arg, f, 0);
    return;
  }
  struct open_waiter *w = malloc(sizeof *w);
  if (!w) {
    f->users--;
    pthread_mutex_unlock(&f->lock);
    cb(arg, f, ENOMEM);
    return;
  }
  w->cb = cb;
  w->arg = arg;
  w->next = f->waiters;
  f->waiters = w;
  bool start = !f->opening && !f->closing;
  if (start)
    f->opening = true;
  pthread_mutex_unlock(&f->lock);
  if (start) {
    struct hk_job *j = calloc(1, sizeof *j);
    if (!j) { /* leave it to the next acquirer; fail this one */
      pthread_mutex_lock(&f->lock);
      f->opening = false;
      f->waiters = w->next;
      f->users--;
      pthread_mutex_unlock(&f->lock);
      free(w);
      cb(arg, f, ENOMEM);
      return;
    }
    j->kind = HK_OPEN;
    j->f = f;
    queue_job(fs, j);
  }
}

bool fs_file_gone(struct fs_file *f)
{
  pthread_mutex_lock(&f->lock);
  bool gone = f->gone;
  pthread_mutex_unlock(&f->lock);
  return gone || (f->disk && fs_file_gone(f->disk));
}

struct nbd_pool *fs_file_pool(struct fs_file *f)
{
  if (f->disk)
    f = f->disk;
  pthread_mutex_lock(&f->lock);
  struct nbd_pool *p = f->pool;
  pthread_mutex_unlock(&f->lock);
  return p;
}

struct nbd_pool *fs_file_hold(struct fs_file *f)
{
  if (f->disk)
    return fs_file_gone(f) ? NULL : fs_file_hold(f->disk);
  struct nbd_pool *p = NULL;
  pthread_mutex_lock(&f->lock);
  if (f->pool) {
    p = f->pool;
    f->users++;
  }
  pthread_mutex_unlock(&f->lock);
  return p;
}

void fs_file_release(struct fs *fs, struct fs_file *f)
{
  (void)fs;
  if (f->disk)
    f = f->disk;
  pthread_mutex_lock(&f->lock);
  if (--f->users == 0)
    f->idle_since_ms = now_ms();
  pthread_mutex_unlock(&f->lock);
}

void fs_refresh(struct fs *fs, fs_refreshed_fn cb, void *arg)
{
  if (fs->mode != FS_EXPORTS || now_ms() - fs->last_list_ms < REFRESH_MIN_MS || !fs->hk_running) {
    if (fs->partitions && fs->hk_running)
      partitions_refresh(fs, cb, arg);
    else
      cb(arg);
    return;
  }
  struct hk_job *j = calloc(1, sizeof *j);
  if (!j) {
    cb(arg);
    return;
  }
  j->kind = HK_REFRESH;
  j->cb = cb;
  j->arg = arg;
  queue_job(fs, j);
}
