/* stats.c: per-thread request counters, summed when read. */
#include "stats.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "loop.h"

/* Counters are atomics so that a reader summing them is not a data race,
 * but an owned shard has a single writer: it updates them with a relaxed
 * load and store (plain moves), never a locked instruction. */
struct kind_counters {
  atomic_uint_fast64_t count, errors, bytes, sum_us, max_us;
  atomic_uint_fast64_t hist[STATS_BUCKETS];
};

struct stats_shard {
  struct kind_counters k[STATS_NKINDS];
  const void *owner;         /* the owning thread's token; &shared_token: the shared shard */
  struct stats_shard *next;  /* set before the shard is published, then never changed */
} __attribute__((aligned(64))); /* no false sharing between two threads' shards */

/* A worker thread's identity: the address of its own thread-local byte
 * (unique among live threads; a thread that reuses a dead one's address
 * also takes over its shard, which nobody else writes any more). */
static __thread char thread_token;
static const char shared_token;

/* Taken only to add a shard (once per thread and export). */
static pthread_mutex_t add_lock = PTHREAD_MUTEX_INITIALIZER;

uint64_t stats_now(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static struct stats_shard *find(struct stats_shard *sh, const void *owner)
{
  for (; sh; sh = sh->next)
    if (sh->owner == owner)
      return sh;
  return NULL;
}

/* The caller's shard, added on its first count (NULL: out of memory, the
 * count is dropped). */
static struct stats_shard *shard_for(struct nbd_stats *s, const void *owner)
{
  struct stats_shard *sh = find(atomic_load_explicit(&s->shards, memory_order_acquire), owner);
  if (sh)
    return sh;
  pthread_mutex_lock(&add_lock);
  struct stats_shard *head = atomic_load_explicit(&s->shards, memory_order_acquire);
  sh = find(head, owner); /* the shared shard may have been added meanwhile */
  if (!sh && (sh = aligned_alloc(64, sizeof *sh))) {
    memset(sh, 0, sizeof *sh);
    sh->owner = owner;
    sh->next = head;
    atomic_store_explicit(&s->shards, sh, memory_order_release);
  }
  pthread_mutex_unlock(&add_lock);
  return sh;
}

static unsigned bucket_of(uint64_t us)
{
  if (us == 0)
    return 0;
  unsigned b = 64 - (unsigned)__builtin_clzll(us); /* 1 -> 1, 2..3 -> 2, 4..7 -> 3 */
  return b < STATS_BUCKETS ? b : STATS_BUCKETS - 1;
}

/* Single writer: load and store. */
static inline void add_owned(atomic_uint_fast64_t *c, uint64_t n)
{
  atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                        memory_order_relaxed);
}

static inline void max_owned(atomic_uint_fast64_t *c, uint64_t v)
{
  if (v > atomic_load_explicit(c, memory_order_relaxed))
    atomic_store_explicit(c, v, memory_order_relaxed);
}

static inline void add_shared(atomic_uint_fast64_t *c, uint64_t n)
{
  atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

static inline void max_shared(atomic_uint_fast64_t *c, uint64_t v)
{
  uint_fast64_t cur = atomic_load_explicit(c, memory_order_relaxed);
  while (v > cur && !atomic_compare_exchange_weak_explicit(c, &cur, v, memory_order_relaxed,
                                                           memory_order_relaxed))
    ;
}

void stats_count_us(struct nbd_stats *s, enum stats_kind kind, uint64_t us, uint64_t bytes,
                    bool failed)
{
  bool owned = loop_current() != NULL;
  struct stats_shard *sh = shard_for(s, owned ? (const void *)&thread_token : &shared_token);
  if (!sh)
    return;
  struct kind_counters *k = &sh->k[kind];
  if (owned) {
    add_owned(&k->count, 1);
    if (failed)
      add_owned(&k->errors, 1);
    else
      add_owned(&k->bytes, bytes);
    add_owned(&k->sum_us, us);
    max_owned(&k->max_us, us);
    add_owned(&k->hist[bucket_of(us)], 1);
  } else {
    add_shared(&k->count, 1);
    if (failed)
      add_shared(&k->errors, 1);
    else
      add_shared(&k->bytes, bytes);
    add_shared(&k->sum_us, us);
    max_shared(&k->max_us, us);
    add_shared(&k->hist[bucket_of(us)], 1);
  }
}

void stats_count(struct nbd_stats *s, enum stats_kind kind, uint64_t start_ns, uint64_t bytes,
                 bool failed)
{
  uint64_t now = stats_now();
  stats_count_us(s, kind, now > start_ns ? (now - start_ns) / 1000 : 0, bytes, failed);
}

void stats_destroy(struct nbd_stats *s)
{
  struct stats_shard *sh = atomic_exchange(&s->shards, NULL);
  while (sh) {
    struct stats_shard *next = sh->next;
    free(sh);
    sh = next;
  }
}

size_t stats_shards(const struct nbd_stats *s)
{
  size_t n = 0;
  for (struct stats_shard *sh = atomic_load(&((struct nbd_stats *)s)->shards); sh; sh = sh->next)
    n++;
  return n;
}

void stats_sum(const struct nbd_stats *s, struct stats_totals *out)
{
  memset(out, 0, sizeof *out);
  for (struct stats_shard *sh = atomic_load_explicit(&((struct nbd_stats *)s)->shards,
                                                     memory_order_acquire);
       sh; sh = sh->next)
    for (int i = 0; i < STATS_NKINDS; i++) {
      const struct kind_counters *k = &sh->k[i];
      struct stats_kind_totals *t = &out->k[i];
      t->count += atomic_load_explicit(&k->count, memory_order_relaxed);
      t->errors += atomic_load_explicit(&k->errors, memory_order_relaxed);
      t->bytes += atomic_load_explicit(&k->bytes, memory_order_relaxed);
      t->sum_us += atomic_load_explicit(&k->sum_us, memory_order_relaxed);
      uint64_t m = atomic_load_explicit(&k->max_us, memory_order_relaxed);
      if (m > t->max_us)
        t->max_us = m;
      for (int b = 0; b < STATS_BUCKETS; b++)
        t->hist[b] += atomic_load_explicit(&k->hist[b], memory_order_relaxed);
    }
}

uint64_t stats_percentile_us(const struct stats_kind_totals *k, double q)
{
  uint64_t n = 0;
  for (int b = 0; b < STATS_BUCKETS; b++)
    n += k->hist[b];
  if (n == 0)
    return 0;
  /* The rank of the q-quantile, counted from 1: ceil(q * n). */
  uint64_t rank = (uint64_t)(q * (double)n);
  if ((double)rank < q * (double)n)
    rank++;
  if (rank < 1)
    rank = 1;
  uint64_t seen = 0;
  for (int b = 0; b < STATS_BUCKETS; b++) {
    seen += k->hist[b];
    if (seen >= rank) {
      /* Bucket b holds latencies below 2^b µs (bucket 0: below 1). */
      uint64_t upper = b == 0 ? 0 : b == STATS_BUCKETS - 1 ? k->max_us : (1ull << b) - 1;
      return upper < k->max_us ? upper : k->max_us;
    }
  }
  return k->max_us;
}

static const char *const kind_names[STATS_NKINDS] = { "read", "write", "flush", "zero" };

size_t stats_format(const struct stats_totals *t, const struct stats_pool_view *pv, char *buf,
                    size_t len)
{
  uint64_t requests = 0, errors = 0;
  for (int i = 0; i < STATS_NKINDS; i++) {
    requests += t->k[i].count;
    errors += t->k[i].errors;
  }
  size_t o = 0;
  char scratch[1];
  if (!buf || len == 0) {
    buf = scratch;
    len = sizeof scratch;
  }
#define PUT(...)                                                                                   \
  do {                                                                                             \
    int n_ = snprintf(buf + (o < len ? o : len - 1), o < len ? len - o : 1, __VA_ARGS__);         \
    if (n_ > 0)                                                                                    \
      o += (size_t)n_;                                                                             \
  } while (0)
  PUT("connections=%d/%d inflight=%u queued=%u requests=%llu errors=%llu bytes_read=%llu bytes_written=%llu "
      "bytes_zeroed=%llu reads=%llu writes=%llu flushes=%llu zeroes=%llu reconnects=%llu",
      pv->live, pv->configured, pv->inflight, pv->queued, (unsigned long long)requests,
      (unsigned long long)errors, (unsigned long long)t->k[STATS_READ].bytes,
      (unsigned long long)t->k[STATS_WRITE].bytes, (unsigned long long)t->k[STATS_ZERO].bytes,
      (unsigned long long)t->k[STATS_READ].count,
      (unsigned long long)t->k[STATS_WRITE].count, (unsigned long long)t->k[STATS_FLUSH].count,
      (unsigned long long)t->k[STATS_ZERO].count, (unsigned long long)pv->reconnects);
  /* Per kind: mean/p50/p99/max latency in µs. */
  for (int i = 0; i < STATS_NKINDS; i++) {
    const struct stats_kind_totals *k = &t->k[i];
    PUT(" %s_us=%llu/%llu/%llu/%llu", kind_names[i],
        (unsigned long long)(k->count ? k->sum_us / k->count : 0),
        (unsigned long long)stats_percentile_us(k, 0.5),
        (unsigned long long)stats_percentile_us(k, 0.99), (unsigned long long)k->max_us);
  }
#undef PUT
  return o;
}
