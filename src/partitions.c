/* partitions.c: a file per partition beside each disk file (--partitions).
 *
 * The table is read through the disk's pool with blocking reads, so never
 * on a worker loop: at mount (main thread) and before a listing (a thread
 * of its own, so the housekeeping thread stays free to open pools).
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "exports.h"
#include "log.h"
#include "nbd-proto.h"
#include "partition.h"
#include "pool.h"

/* Writes here may change the table: MBR/EBRs and the primary GPT at the
 * start, the backup GPT at the end. */
#define TABLE_ZONE (1024 * 1024)

/* One scan at a time: two would add the same partition twice. */
static pthread_mutex_t scan_lock = PTHREAD_MUTEX_INITIALIZER;
/* Refresh threads still running (the unmount waits for them). */
static pthread_mutex_t threads_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t threads_cond = PTHREAD_COND_INITIALIZER;
static int threads;

/* part_read_fn: any offset and length. */
static int read_disk(void *arg, void *buf, uint64_t off, uint32_t len)
{
  return nbd_pool_read_sync(arg, buf, off, len);
}

/* ---- matching the table to the files ---- */

static bool same_entry(const struct part_entry *a, const struct part_entry *b)
{
  return a->number == b->number && a->start == b->start && a->length == b->length &&
         !strcmp(a->type, b->type) && !strcmp(a->uuid, b->uuid) && !strcmp(a->name, b->name);
}

static void add_partition(struct fs *fs, struct fs_file *disk, const struct part_entry *e)
{
  char name[4200];
  snprintf(name, sizeof name, "%s.p%d", disk->name, e->number);
  static struct log_limit clash = LOG_LIMIT_INIT;
  if (fs_add_partition(fs, name, disk, e))
    return;
  if (errno == EEXIST)
    log_failure(&clash, "%s: partition %d not shown: an export's file is named %s already", disk->name,
                e->number, name);
  else
    log_error("%s: out of memory adding partition %d", disk->name, e->number);
}

/* Make disk's partition files match t (n == 0: none). */
static void apply_table(struct fs *fs, struct fs_file *disk, const struct part_table *t)
{
  bool *matched = calloc((size_t)t->n + 1, sizeof *matched);
  if (!matched)
    return;
  struct fs_file *f;
  for (int i = 0; (f = fs_file_at(fs, i)) != NULL; i++) {
    if (f->disk != disk)
      continue;
    pthread_mutex_lock(&f->lock);
    if (f->disk != disk) { /* its slot was recycled for another file meanwhile */
      pthread_mutex_unlock(&f->lock);
      continue;
    }
    bool keep = false;
    for (int k = 0; k < t->n && !keep && !f->gone; k++)
      if (!matched[k] && same_entry(&f->part, &t->parts[k]))
        keep = matched[k] = true;
    if (!keep && !f->gone) {
      log_info("%s: partition %d is no longer in the table", disk->name, f->part.number);
      f->gone = true; /* a vanished partition never comes back as the same file */
      atomic_fetch_add(&f->gen, 1); /* its open handles fail from now on */
    }
    pthread_mutex_unlock(&f->lock);
  }
  for (int k = 0; k < t->n; k++)
    if (!matched[k])
      add_partition(fs, disk, &t->parts[k]);
  free(matched);
}

void partitions_scan(struct fs *fs, struct fs_file *disk, struct nbd_pool *p)
{
  pthread_mutex_lock(&scan_lock);
  pthread_mutex_lock(&disk->lock);
  /* A listing during the mount's scan waited for it: nothing left to do. */
  bool done = disk->parts_read && !disk->parts_stale;
  disk->parts_stale = false; /* a write during the scan makes it stale again */
  pthread_mutex_unlock(&disk->lock);
  if (done) {
    pthread_mutex_unlock(&scan_lock);
    return;
  }
  struct part_table t;
  int r = part_table_read(&t, nbd_pool_size(p), read_disk, p);
  if (r == -EINVAL) {
    log_warn("%s: partition table ignored: %s", disk->name, t.note);
    t.n = 0;
  } else if (r < 0) {
    log_warn("%s: cannot read the partition table: %s", disk->name, strerror(-r));
    pthread_mutex_lock(&disk->lock);
    disk->parts_stale = true; /* try again at the next listing */
    pthread_mutex_unlock(&disk->lock);
    part_table_free(&t);
    pthread_mutex_unlock(&scan_lock);
    return;
  } else if (t.note[0]) {
    log_warn("%s: %s", disk->name, t.note);
  }
  apply_table(fs, disk, &t);
  pthread_mutex_lock(&disk->lock);
  disk->parts_read = true;
  pthread_mutex_unlock(&disk->lock);
  part_table_free(&t);
  pthread_mutex_unlock(&scan_lock);
}

void partitions_note_write(struct fs_file *disk, uint64_t off, uint64_t len)
{
  pthread_mutex_lock(&disk->lock);
  uint64_t size = disk->info.size;
  if (off < TABLE_ZONE || off + len > (size > TABLE_ZONE ? size - TABLE_ZONE : 0))
    disk->parts_stale = true;
  pthread_mutex_unlock(&disk->lock);
}

/* ---- refreshing before a listing ---- */

static bool needs_scan(struct fs_file *f)
{
  if (f->disk || fs_file_gone(f))
    return false;
  pthread_mutex_lock(&f->lock);
  bool needed = !f->parts_read || f->parts_stale;
  pthread_mutex_unlock(&f->lock);
  return needed;
}

struct acquired {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  bool done;
  int err;
};

static void on_acquired(void *arg, struct fs_file *f, int err)
{
  (void)f;
  struct acquired *a = arg;
  pthread_mutex_lock(&a->lock);
  a->done = true;
  a->err = err;
  pthread_cond_signal(&a->cond);
  pthread_mutex_unlock(&a->lock);
}

static void scan_all(struct fs *fs)
{
  struct fs_file *f;
  for (int i = 0; (f = fs_file_at(fs, i)) != NULL; i++) {
    if (!needs_scan(f))
      continue;
    struct acquired a = { .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER };
    fs_file_acquire(fs, f, on_acquired, &a);
    pthread_mutex_lock(&a.lock);
    while (!a.done)
      pthread_cond_wait(&a.cond, &a.lock);
    pthread_mutex_unlock(&a.lock);
    if (a.err) {
      log_warn("%s: cannot open it to read its partition table: %s", f->name, strerror(a.err));
      continue;
    }
    partitions_scan(fs, f, fs_file_pool(f));
    fs_file_release(fs, f);
  }
}

struct refresh_job {
  struct fs *fs;
  void (*cb)(void *arg);
  void *arg;
};

static void *refresh_main(void *arg)
{
  struct refresh_job *j = arg;
  scan_all(j->fs);
  j->cb(j->arg);
  free(j);
  pthread_mutex_lock(&threads_lock);
  if (--threads == 0)
    pthread_cond_broadcast(&threads_cond);
  pthread_mutex_unlock(&threads_lock);
  return NULL;
}

void partitions_refresh(struct fs *fs, void (*cb)(void *arg), void *arg)
{
  bool any = false;
  struct fs_file *f;
  for (int i = 0; (f = fs_file_at(fs, i)) != NULL && !any; i++) {
    any = needs_scan(f);
  }
  struct refresh_job *j = any ? malloc(sizeof *j) : NULL;
  if (!j) {
    cb(arg);
    return;
  }
  *j = (struct refresh_job){ fs, cb, arg };
  pthread_t th;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pthread_mutex_lock(&threads_lock);
  int r = pthread_create(&th, &attr, refresh_main, j);
  if (r == 0)
    threads++;
  pthread_mutex_unlock(&threads_lock);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  pthread_attr_destroy(&attr);
  if (r) {
    free(j);
    cb(arg);
  }
}

void partitions_wait_idle(void)
{
  pthread_mutex_lock(&threads_lock);
  while (threads > 0)
    pthread_cond_wait(&threads_cond, &threads_lock);
  pthread_mutex_unlock(&threads_lock);
}

void partitions_refresh_wait(struct fs *fs)
{
  scan_all(fs);
}
