/* test-stats.c: the statistics module (src/stats.c): histogram buckets and
 * percentiles at their edges, the formatted line, and that counts from
 * several worker loops (owned shards) and from other threads (the shared
 * shard) all add up when summed while counting goes on.
 */
#include <pthread.h>
#include <stdatomic.h>

#include "check.h"
#include "loop.h"
#include "stats.h"

/* The value of key in a "key=value ..." line, or NULL. */
static const char *field(const char *line, const char *key, char *out, size_t len)
{
  size_t k = strlen(key);
  for (const char *p = line; p && *p; p = strchr(p, ' ') ? strchr(p, ' ') + 1 : NULL) {
    if (!strncmp(p, key, k) && p[k] == '=') {
      size_t n = strcspn(p + k + 1, " ");
      if (n >= len)
        n = len - 1;
      memcpy(out, p + k + 1, n);
      out[n] = 0;
      return out;
    }
  }
  return NULL;
}

static void test_buckets_and_percentiles(void)
{
  struct nbd_stats s = { 0 };
  struct stats_totals t;
  stats_sum(&s, &t);
  CHECK(t.k[STATS_READ].count == 0, "an unused stats object sums to nothing");
  CHECK(stats_percentile_us(&t.k[STATS_READ], 0.5) == 0, "no requests: percentile 0");

  /* 0 µs, 1, 2..3, 4..7: buckets 0, 1, 2, 3. */
  uint64_t lat[] = { 0, 1, 2, 3, 4, 7, 8 };
  for (size_t i = 0; i < sizeof lat / sizeof lat[0]; i++)
    stats_count_us(&s, STATS_READ, lat[i], 4096, false);
  stats_sum(&s, &t);
  const struct stats_kind_totals *r = &t.k[STATS_READ];
  CHECK(r->hist[0] == 1 && r->hist[1] == 1 && r->hist[2] == 2 && r->hist[3] == 2 && r->hist[4] == 1,
        "latencies land in log2 buckets (%llu %llu %llu %llu %llu)",
        (unsigned long long)r->hist[0], (unsigned long long)r->hist[1],
        (unsigned long long)r->hist[2], (unsigned long long)r->hist[3],
        (unsigned long long)r->hist[4]);
  CHECK(r->count == 7 && r->bytes == 7 * 4096 && r->sum_us == 25 && r->max_us == 8,
        "count, bytes, sum and max");
  /* Ranks: p50 of 7 is the 4th (3 µs, bucket [2,4)): at most 3. */
  CHECK(stats_percentile_us(r, 0.5) == 3, "p50 is its bucket's upper end (%llu)",
        (unsigned long long)stats_percentile_us(r, 0.5));
  CHECK(stats_percentile_us(r, 1.0) == 8, "p100 is the maximum, not the bucket's end (%llu)",
        (unsigned long long)stats_percentile_us(r, 1.0));
  CHECK(stats_percentile_us(r, 0.01) == 0, "p1 is the first bucket (under 1 µs)");

  /* Huge latencies go to the last bucket; its percentile is the maximum. */
  struct nbd_stats h = { 0 };
  stats_count_us(&h, STATS_FLUSH, UINT64_C(1) << 40, 0, false);
  stats_sum(&h, &t);
  CHECK(t.k[STATS_FLUSH].hist[STATS_BUCKETS - 1] == 1, "a huge latency is in the last bucket");
  CHECK(stats_percentile_us(&t.k[STATS_FLUSH], 0.99) == UINT64_C(1) << 40,
        "the last bucket's percentile is the maximum");

  /* Failures count as requests and errors, not as bytes. */
  stats_count_us(&h, STATS_WRITE, 10, 65536, true);
  stats_sum(&h, &t);
  CHECK(t.k[STATS_WRITE].count == 1 && t.k[STATS_WRITE].errors == 1 && t.k[STATS_WRITE].bytes == 0,
        "a failed write is counted, with its error and without bytes");
  stats_destroy(&s);
  stats_destroy(&h);
  stats_sum(&s, &t);
  CHECK(t.k[STATS_READ].count == 0, "destroyed: empty (and reusable)");
}

static void test_format(void)
{
  struct nbd_stats s = { 0 };
  stats_count_us(&s, STATS_READ, 100, 1000, false);
  stats_count_us(&s, STATS_READ, 300, 1000, false);
  stats_count_us(&s, STATS_WRITE, 50, 4096, false);
  stats_count_us(&s, STATS_WRITE, 70, 4096, true);
  stats_count_us(&s, STATS_FLUSH, 900, 0, false);
  stats_count_us(&s, STATS_ZERO, 20, 1 << 20, false);
  struct stats_totals t;
  stats_sum(&s, &t);
  struct stats_pool_view pv = { .live = 3, .configured = 4, .inflight = 2, .queued = 1,
                                .reconnects = 5 };
  char buf[1024], v[64];
  size_t need = stats_format(&t, &pv, NULL, 0);
  size_t n = stats_format(&t, &pv, buf, sizeof buf);
  CHECK(n == need && n == strlen(buf), "format reports the length it needs (%zu, %zu)", need, n);
  CHECK(!strchr(buf, '\n'), "one line");
  struct { const char *key, *want; } kv[] = {
    { "connections", "3/4" }, { "inflight", "2" }, { "queued", "1" }, { "requests", "6" },
    { "errors", "1" }, { "bytes_read", "2000" }, { "bytes_written", "4096" },
    { "bytes_zeroed", "1048576" }, { "reads", "2" }, { "writes", "2" }, { "flushes", "1" },
    { "zeroes", "1" }, { "reconnects", "5" }, { "read_us", "200/127/300/300" },
    { "write_us", "60/63/70/70" }, { "flush_us", "900/900/900/900" }, { "zero_us", "20/20/20/20" },
  };
  for (size_t i = 0; i < sizeof kv / sizeof kv[0]; i++) {
    const char *got = field(buf, kv[i].key, v, sizeof v);
    CHECK(got && !strcmp(got, kv[i].want), "%s=%s (got %s)", kv[i].key, kv[i].want,
          got ? got : "nothing");
  }
  char small[16];
  n = stats_format(&t, &pv, small, sizeof small);
  CHECK(n == need && strlen(small) == sizeof small - 1, "a short buffer is cut and terminated");
  stats_destroy(&s);
}

/* ---- concurrency: loops count into owned shards, threads into the shared one ---- */

#define PER_THREAD 200000
#define NLOOPS 3
#define NTHREADS 3

static struct nbd_stats conc;
static atomic_bool stop_reading;

static void count_many(void *arg)
{
  (void)arg;
  for (int i = 0; i < PER_THREAD; i++)
    stats_count_us(&conc, (enum stats_kind)(i % STATS_NKINDS), (uint64_t)(i % 1000), 512,
                   i % 100 == 0);
}

static void *thread_main(void *arg)
{
  count_many(arg);
  return NULL;
}

/* Sums taken meanwhile never go down (each counter only grows). */
static void *reader_main(void *arg)
{
  bool *monotonic = arg;
  uint64_t last = 0;
  while (!atomic_load(&stop_reading)) {
    struct stats_totals t;
    stats_sum(&conc, &t);
    uint64_t n = 0;
    for (int k = 0; k < STATS_NKINDS; k++)
      n += t.k[k].count;
    if (n < last)
      *monotonic = false;
    last = n;
  }
  return NULL;
}

static void test_concurrent(void)
{
  bool monotonic = true;
  pthread_t reader, th[NTHREADS];
  pthread_create(&reader, NULL, reader_main, &monotonic);
  struct nbd_loop *loops[NLOOPS];
  for (int i = 0; i < NLOOPS; i++) {
    loops[i] = loop_new(i, 1000, 0);
    loop_post(loops[i], count_many, NULL);
  }
  for (int i = 0; i < NTHREADS; i++)
    pthread_create(&th[i], NULL, thread_main, NULL);
  for (int i = 0; i < NLOOPS; i++) {
    loop_barrier(loops[i]);
    loop_free(loops[i]);
  }
  for (int i = 0; i < NTHREADS; i++)
    pthread_join(th[i], NULL);
  atomic_store(&stop_reading, true);
  pthread_join(reader, NULL);

  struct stats_totals t;
  stats_sum(&conc, &t);
  uint64_t total = 0, errors = 0, bytes = 0, hist = 0;
  for (int k = 0; k < STATS_NKINDS; k++) {
    total += t.k[k].count;
    errors += t.k[k].errors;
    bytes += t.k[k].bytes;
    for (int b = 0; b < STATS_BUCKETS; b++)
      hist += t.k[k].hist[b];
  }
  uint64_t all = (uint64_t)(NLOOPS + NTHREADS) * PER_THREAD;
  CHECK(total == all, "every count from %d loops and %d other threads is summed (%llu of %llu)",
        NLOOPS, NTHREADS, (unsigned long long)total, (unsigned long long)all);
  CHECK(hist == all, "and every latency is in the histogram");
  CHECK(errors == all / 100, "errors (%llu)", (unsigned long long)errors);
  CHECK(bytes == (all - all / 100) * 512, "bytes of the successful ones");
  CHECK(t.k[STATS_READ].max_us == 996, "the largest read latency (%llu)",
        (unsigned long long)t.k[STATS_READ].max_us);
  CHECK(monotonic, "sums taken while counting never go down");
  size_t shards = stats_shards(&conc);
  CHECK(shards == NLOOPS + 1, "one shard per loop plus the shared one (%zu)", shards);
  stats_destroy(&conc);
}

int main(void)
{
  test_buckets_and_percentiles();
  test_format();
  test_concurrent();
  return done_testing();
}
