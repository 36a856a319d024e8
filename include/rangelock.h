/* rangelock.h: asynchronous byte-range locks.
 *
 * Read-modify-write of partial blocks must not interleave with other writes
 * to the same blocks, on any connection.  Workers never block, so a lock is
 * requested with a callback that runs once the range is free.  Requests are
 * granted in order: a request waits for any earlier overlapping one.
 */
#ifndef NBDFS_RANGELOCK_H
#define NBDFS_RANGELOCK_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

struct rl_request {
  uint64_t start, end;                   /* [start, end) */
  void (*granted)(struct rl_request *r); /* called (no lock held) when granted later */
  void (*prepare)(struct rl_request *r); /* called before queueing, under the lock */
  struct rl_request *next;
  struct rl_request *grant_next;         /* internal: grants to run after unlock */
};

struct rangelock {
  pthread_mutex_t lock;
  struct rl_request *held;
  struct rl_request *waiting;     /* FIFO */
  struct rl_request **wait_tail;
};

void rangelock_init(struct rangelock *rl);
void rangelock_destroy(struct rangelock *rl);

/* Returns true when granted at once (granted() is not called); otherwise
 * calls prepare() (if set) and queues r; granted() runs later, on the
 * thread that releases the conflicting range. */
bool rangelock_acquire(struct rangelock *rl, struct rl_request *r);

/* Release r and grant whatever became free. */
void rangelock_release(struct rangelock *rl, struct rl_request *r);

#endif
