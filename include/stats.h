/* stats.h: request counters and latency histograms of one export, for
 * user.nbd.stats and SIGUSR1.
 *
 * Counting must cost nothing on the I/O path, so nothing is shared between
 * threads there: each worker loop thread counts into a shard of its own
 * (found by walking the export's short list of shards, one per thread that
 * ever counted), written with plain loads and stores.  Readers sum the
 * shards.  Threads that are not worker loops (a pool's manager or connector
 * failing queued requests) are rare and short-lived, so they share one
 * shard updated with atomic read-modify-writes instead of getting their own.
 *
 * A zero-filled struct nbd_stats is ready to use; stats_destroy frees its
 * shards (no thread may count into it any more).
 */
#ifndef NBDFS_STATS_H
#define NBDFS_STATS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* What a request was, as the user asked for it (FUSE operations). */
enum stats_kind {
  STATS_READ,
  STATS_WRITE,
  STATS_FLUSH,  /* fsync, fdatasync, close after writing: a FLUSH was sent */
  STATS_ZERO,   /* fallocate: punch a hole or zero a range */
  STATS_NKINDS
};

/* Latency buckets: bucket 0 is under 1 µs, bucket i (i >= 1) is
 * [2^(i-1), 2^i) µs; the last one also takes everything longer (from
 * 2^28 µs, about 4.5 minutes: past any sensible request timeout). */
#define STATS_BUCKETS 30

struct stats_shard;

struct nbd_stats {
  _Atomic(struct stats_shard *) shards; /* pushed at the head, never removed */
};

/* Now, on the clock latencies are measured with (ns, CLOCK_MONOTONIC). */
uint64_t stats_now(void);

/* One request of kind that started at start_ns (stats_now) finished now,
 * moving bytes (0 for flushes) or failing. */
void stats_count(struct nbd_stats *s, enum stats_kind kind, uint64_t start_ns, uint64_t bytes,
                 bool failed);

/* The same with the latency already known (tests). */
void stats_count_us(struct nbd_stats *s, enum stats_kind kind, uint64_t us, uint64_t bytes,
                    bool failed);

/* Free the shards (nobody counts any more). */
void stats_destroy(struct nbd_stats *s);
/* How many shards s has (tests: one per worker loop that counted, plus
 * one shared by other threads). */
size_t stats_shards(const struct nbd_stats *s);

/* ---- reading ---- */

struct stats_kind_totals {
  uint64_t count;   /* finished, failed ones included */
  uint64_t errors;
  uint64_t bytes;   /* of the successful ones */
  uint64_t sum_us;
  uint64_t max_us;
  uint64_t hist[STATS_BUCKETS];
};

struct stats_totals {
  struct stats_kind_totals k[STATS_NKINDS];
};

/* Sum every shard.  Counters are read one by one while others may count,
 * so a sum is a moment's view to within the requests finishing meanwhile. */
void stats_sum(const struct nbd_stats *s, struct stats_totals *out);

/* The latency that a fraction q (0 < q <= 1) of the requests did not
 * exceed, from the histogram: the upper end of its bucket, never more than
 * the maximum seen.  0 when there were none. */
uint64_t stats_percentile_us(const struct stats_kind_totals *k, double q);

/* What the pool says (connections live/configured, NBD commands in flight
 * and queued, reconnections); all 0 while the export's connections are
 * not open. */
struct stats_pool_view {
  int live, configured;
  unsigned inflight, queued;
  uint64_t reconnects;
};

/* The one-line "key=value ..." form of user.nbd.stats and of the SIGUSR1
 * log lines, into buf (always NUL-terminated).  Returns the length it
 * needed, as snprintf does. */
size_t stats_format(const struct stats_totals *t, const struct stats_pool_view *pv, char *buf,
                    size_t len);

#endif
