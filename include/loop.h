/* loop.h: event-loop worker threads.
 *
 * Each worker waits in epoll on the descriptors registered with it (the
 * FUSE device, its connections' sockets) and runs their callbacks.  Nothing
 * blocks in a worker: sockets are non-blocking and send backlogs are queued,
 * so one thread can keep many requests in flight on many connections, and
 * on a small machine requests are not handed from thread to thread.
 */
#ifndef NBDFS_LOOP_H
#define NBDFS_LOOP_H

#include <stdbool.h>
#include <stdint.h>

struct nbd_loop;

/* events are EPOLLIN/EPOLLOUT/EPOLLERR/EPOLLHUP bits. */
typedef void (*loop_fd_fn)(void *arg, uint32_t events);
/* Called about every tick_ms on the worker (timeouts). */
typedef void (*loop_tick_fn)(void *arg);

struct loop_source {
  int fd;
  loop_fd_fn fn;
  void *arg;
  uint32_t events;       /* what is being waited for */
  struct nbd_loop *loop;
};

/* Create and start a worker thread with all signals blocked.  After any
 * event it keeps polling (epoll without sleeping) for poll_us before it
 * sleeps again: at queue depth 1 the next event (the server's reply, the
 * caller's next request) usually comes sooner, and a sleeping thread's
 * wakeup is a large part of each round trip. 0: always sleep. */
struct nbd_loop *loop_new(int index, int tick_ms, int poll_us);
/* Stop the thread (after its current round; posted work still runs) and
 * free it. */
void loop_free(struct nbd_loop *l);

/* Watch src->fd for src->events.  exclusive: wake only one of several
 * loops watching the same descriptor (the FUSE device). */
int loop_add(struct nbd_loop *l, struct loop_source *src, bool exclusive);
/* Change the events waited for. */
int loop_modify(struct loop_source *src, uint32_t events);
void loop_remove(struct loop_source *src);

/* Run fn(arg) on every tick of this loop, until removed. */
int loop_add_tick(struct nbd_loop *l, loop_tick_fn fn, void *arg);
void loop_remove_tick(struct nbd_loop *l, void *arg);

/* Run fn(arg) on the loop's thread once its current round (events and
 * ticks) is over: from any thread.  Work that must not overlap a round,
 * such as dropping the loop's last reference to something a pending event
 * may name, goes here.  Returns 0 or -ENOMEM. */
int loop_post(struct nbd_loop *l, void (*fn)(void *arg), void *arg);

/* Wait until every callback the loop was running or had been posted has
 * returned (a round trip through loop_post).  Not from the loop itself. */
void loop_barrier(struct nbd_loop *l);

/* The loop the calling thread runs, or NULL. */
struct nbd_loop *loop_current(void);

#endif
