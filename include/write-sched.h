/* write-sched.h: how many writes go to the servers at once, and in what
 * order the rest follow.
 *
 * The kernel hands nbdfs every request through one FIFO queue.  Write-back
 * puts up to max_background writes of 1 MiB in it at once; a READ or a
 * GETATTR that arrives behind them used to wait until the server had
 * written all of them, which against a slow server is many seconds.  So
 * nbdfs reads requests on while writes are waiting, and schedules writes
 * itself:
 *   - at most WRITE_SCHED_SEND_MAX bytes of writes are in flight to the
 *     servers, so that a read sent meanwhile waits behind at most that much;
 *   - writes past it are held here (payload and all), in the order they
 *     came, and are sent as earlier ones are answered;
 *   - everything else (reads, stat, flush) goes at once;
 *   - the workers stop reading requests once held and in-flight writes
 *     reach a limit, until half of it is answered.  The limit follows the
 *     servers' write rate: what the kernel still queues behind it must
 *     drain within WRITE_SCHED_QUEUE_WAIT_NS.  Against a fast server that
 *     is WRITE_SCHED_SEND_MAX (nothing held: write-back waits in the kernel,
 *     whose pages those are anyway); against a slow one, up to
 *     WRITE_SCHED_HOLD_MAX, all that write-back can queue (max_background
 *     is set to fit), at the cost of that much memory.
 * A held write was not answered, so nothing a caller was told is done waits
 * here, and a read may pass it, as it may pass any write still in flight.
 */
#ifndef NBDFS_WRITE_SCHED_H
#define NBDFS_WRITE_SCHED_H

#include <stdbool.h>
#include <stdint.h>

#define WRITE_SCHED_SEND_MAX (8u << 20)
#define WRITE_SCHED_HOLD_MAX (64u << 20)
#define WRITE_SCHED_QUEUE_WAIT_NS 250000000ull /* 0.25 s */
#define WRITE_SCHED_SAMPLE_NS 100000000ull     /* the rate: one sample per 0.1 s busy */

/* A write waiting for its turn: send(it) sends it (it is then in flight). */
struct write_sched_item {
  void (*send)(struct write_sched_item *it);
  uint64_t len;
  struct write_sched_item *next;
};

/* A write of len bytes arrived.  true: send it now (it counts as in flight);
 * false: it must wait, so the caller makes its payload outlive the request
 * and calls write_sched_hold. */
bool write_sched_try(uint64_t len);

/* Hold it.  true: it may be sent now after all (earlier writes were answered
 * meanwhile; it counts as in flight), the caller sends it; false: held, and
 * it->send(it) is called later from whichever thread answers a write. */
bool write_sched_hold(struct write_sched_item *it);

/* A write of len bytes in flight was answered (or failed): sends the held
 * writes that now fit, and resumes parked readers. */
void write_sched_done(uint64_t len);

/* Before reading the next FUSE request: true, go ahead; false, stop reading,
 * and resume(arg) is called once, from whichever thread answers a write,
 * when enough was. */
bool write_sched_admit(void (*resume)(void *arg), void *arg);

/* Send every held write now, whatever is in flight: at shutdown, before
 * the pools close (and wait, within their bounds, for what was sent). */
void write_sched_send_all(void);

/* Bytes of writes in flight, and held; the current limit (for tests). */
void write_sched_counts(uint64_t *inflight, uint64_t *held);
uint64_t write_sched_limit(void);
/* Tests: the clock (NULL: CLOCK_MONOTONIC), and forget the rate. */
void write_sched_set_clock(uint64_t (*now_ns)(void));

#endif
