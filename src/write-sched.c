/* write-sched.c: see write-sched.h. */
#include "write-sched.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <string.h>
#include <time.h>

#define MAX_PARKED 16 /* one per worker (--threads is at most 16) */
#define NS 1000000000ull

struct parked {
  void (*fn)(void *arg);
  void *arg;
};

static uint64_t mono_ns(void)
{
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * NS + (uint64_t)t.tv_nsec;
}

static struct {
  pthread_mutex_t lock;
  uint64_t (*now)(void);
  uint64_t inflight;                   /* bytes sent, not answered */
  uint64_t held;                       /* bytes waiting in the queue */
  struct write_sched_item *head, **tail;
  struct parked parked[MAX_PARKED];
  int nparked;
  /* The servers' write rate, measured over time with writes in flight. */
  uint64_t last_ns;                    /* when the counts below were last brought up to date */
  uint64_t busy_ns;                    /* time with writes in flight, this sample */
  uint64_t answered;                   /* bytes answered, this sample */
  uint64_t rate;                       /* bytes/s */
  bool rate_known;
} ws = { .lock = PTHREAD_MUTEX_INITIALIZER, .now = mono_ns, .tail = &ws.head };

/* Whether held + in-flight writes are under the limit, as of the last
 * change: write_sched_admit runs before every FUSE request is read, and
 * reads and stat should not take the lock for it.  A stale true lets one
 * more request in (the limit is soft); parking decides under the lock. */
static atomic_bool room = true;

/* Set while this thread sends held writes: a write that fails at once
 * calls write_sched_done again from inside its send, and that nested call
 * leaves the sending to the loop below it instead of recursing once per
 * held write. */
static __thread bool dispatching;

/* Bring the rate up to date (lock held): a sample per WRITE_SCHED_SAMPLE_NS
 * of time with writes in flight, averaged with the one before. */
static void measure_locked(void)
{
  uint64_t now = ws.now();
  if (ws.inflight && now > ws.last_ns)
    ws.busy_ns += now - ws.last_ns;
  ws.last_ns = now;
  if (ws.busy_ns < WRITE_SCHED_SAMPLE_NS)
    return;
  uint64_t sample = (uint64_t)((double)ws.answered * NS / (double)ws.busy_ns);
  ws.rate = ws.rate_known ? (ws.rate + sample) / 2 : sample;
  ws.rate_known = true;
  ws.busy_ns = 0;
  ws.answered = 0;
}

/* How much write data (held and in flight) before the workers stop reading
 * requests (lock held).  What the kernel queues behind that waits its turn
 * at the servers' rate; past WRITE_SCHED_QUEUE_WAIT_NS of it, nbdfs holds
 * more itself (up to all that write-back can queue).  Until a rate is
 * known, the servers are taken to be fast. */
static uint64_t limit_locked(void)
{
  if (!ws.rate_known)
    return WRITE_SCHED_SEND_MAX;
  double drained = (double)ws.rate * WRITE_SCHED_QUEUE_WAIT_NS / NS; /* bytes */
  if (drained >= WRITE_SCHED_HOLD_MAX - WRITE_SCHED_SEND_MAX)
    return WRITE_SCHED_SEND_MAX;
  return WRITE_SCHED_HOLD_MAX - (uint64_t)drained;
}

static void update_room_locked(void)
{
  atomic_store_explicit(&room, ws.inflight + ws.held < limit_locked(), memory_order_relaxed);
}

bool write_sched_try(uint64_t len)
{
  pthread_mutex_lock(&ws.lock);
  bool now = !ws.head && ws.inflight < WRITE_SCHED_SEND_MAX;
  if (now) {
    measure_locked();
    ws.inflight += len;
    update_room_locked();
  }
  pthread_mutex_unlock(&ws.lock);
  return now;
}

bool write_sched_hold(struct write_sched_item *it)
{
  pthread_mutex_lock(&ws.lock);
  bool now = !ws.head && ws.inflight < WRITE_SCHED_SEND_MAX;
  if (now) {
    measure_locked();
    ws.inflight += it->len;
  } else {
    it->next = NULL;
    *ws.tail = it;
    ws.tail = &it->next;
    ws.held += it->len;
  }
  update_room_locked();
  pthread_mutex_unlock(&ws.lock);
  return now;
}

/* Take the held writes that fit now, in order (lock held). */
static struct write_sched_item *take_sendable_locked(void)
{
  struct write_sched_item *first = ws.head, *last = NULL;
  while (ws.head && ws.inflight < WRITE_SCHED_SEND_MAX) {
    last = ws.head;
    ws.inflight += last->len;
    ws.held -= last->len;
    ws.head = last->next;
  }
  if (!last)
    return NULL;
  last->next = NULL;
  if (!ws.head)
    ws.tail = &ws.head;
  return first;
}

void write_sched_done(uint64_t len)
{
  pthread_mutex_lock(&ws.lock);
  ws.answered += len; /* in the sample of the time it took */
  measure_locked();
  ws.inflight -= len;
  struct parked wake[MAX_PARKED];
  int n = 0;
  /* Parked workers read on once half of the limit is left: not one
   * request at a time. */
  if (ws.nparked && ws.inflight + ws.held < limit_locked() / 2) {
    n = ws.nparked;
    memcpy(wake, ws.parked, (size_t)n * sizeof *wake);
    ws.nparked = 0;
  }
  struct write_sched_item *it = dispatching ? NULL : take_sendable_locked();
  update_room_locked();
  pthread_mutex_unlock(&ws.lock);
  for (int i = 0; i < n; i++)
    wake[i].fn(wake[i].arg);
  if (!it)
    return;
  dispatching = true;
  while (it) {
    while (it) {
      struct write_sched_item *next = it->next;
      it->send(it); /* may free it */
      it = next;
    }
    pthread_mutex_lock(&ws.lock);
    measure_locked();
    it = take_sendable_locked();
    update_room_locked();
    pthread_mutex_unlock(&ws.lock);
  }
  dispatching = false;
}

bool write_sched_admit(void (*resume)(void *arg), void *arg)
{
  if (atomic_load_explicit(&room, memory_order_relaxed))
    return true;
  pthread_mutex_lock(&ws.lock);
  measure_locked();
  update_room_locked();
  /* Checked under the lock: an answer that makes room takes the lock
   * after this, so it cannot miss this worker. */
  bool ok = ws.inflight + ws.held < limit_locked() || ws.nparked == MAX_PARKED;
  if (!ok)
    ws.parked[ws.nparked++] = (struct parked){ resume, arg };
  pthread_mutex_unlock(&ws.lock);
  return ok;
}

void write_sched_send_all(void)
{
  pthread_mutex_lock(&ws.lock);
  measure_locked();
  struct write_sched_item *it = ws.head;
  for (struct write_sched_item *i = it; i; i = i->next)
    ws.inflight += i->len;
  ws.held = 0;
  ws.head = NULL;
  ws.tail = &ws.head;
  update_room_locked();
  pthread_mutex_unlock(&ws.lock);
  bool nested = dispatching;
  dispatching = true; /* answers meanwhile only count */
  while (it) {
    struct write_sched_item *next = it->next;
    it->send(it);
    it = next;
  }
  dispatching = nested;
}

void write_sched_counts(uint64_t *inflight, uint64_t *held)
{
  pthread_mutex_lock(&ws.lock);
  *inflight = ws.inflight;
  *held = ws.held;
  pthread_mutex_unlock(&ws.lock);
}

uint64_t write_sched_limit(void)
{
  pthread_mutex_lock(&ws.lock);
  measure_locked();
  update_room_locked();
  uint64_t l = limit_locked();
  pthread_mutex_unlock(&ws.lock);
  return l;
}

void write_sched_set_clock(uint64_t (*now_ns)(void))
{
  pthread_mutex_lock(&ws.lock);
  ws.now = now_ns ? now_ns : mono_ns;
  ws.last_ns = ws.now();
  ws.busy_ns = 0;
  ws.answered = 0;
  ws.rate = 0;
  ws.rate_known = false;
  update_room_locked();
  pthread_mutex_unlock(&ws.lock);
}
