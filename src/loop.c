/* loop.c: epoll worker threads. */
#include "loop.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "log.h"

struct tick {
  loop_tick_fn fn;
  void *arg;
};

struct task {
  void (*fn)(void *arg);
  void *arg;
  struct task *next;
};

struct nbd_loop {
  int index;
  int epfd;
  int wakefd;
  int tick_ms;
  int64_t poll_ns;            /* keep polling this long after the last event */
  atomic_bool stop;
  pthread_t thread;
  pthread_mutex_t tick_lock;
  struct tick *ticks;         /* one per connection served here */
  int nticks, tick_cap;
  struct tick *tick_copy;     /* run_ticks' snapshot, reused */
  int copy_cap;
  pthread_mutex_t task_lock;
  struct task *tasks, **task_tail; /* posted work, FIFO */
};

static __thread struct nbd_loop *current_loop;

struct nbd_loop *loop_current(void) { return current_loop; }

/* Run every tick from a snapshot, so a tick may add or remove ticks. */
static void run_ticks(struct nbd_loop *l)
{
  pthread_mutex_lock(&l->tick_lock);
  int n = l->nticks;
  if (n > l->copy_cap) {
    struct tick *c = realloc(l->tick_copy, (size_t)n * sizeof *c);
    if (!c) {
      pthread_mutex_unlock(&l->tick_lock);
      return; /* try again next tick */
    }
    l->tick_copy = c;
    l->copy_cap = n;
  }
  if (n)
    memcpy(l->tick_copy, l->ticks, (size_t)n * sizeof *l->ticks);
  pthread_mutex_unlock(&l->tick_lock);
  for (int i = 0; i < n; i++)
    l->tick_copy[i].fn(l->tick_copy[i].arg);
}

/* Run what was posted before this call (later posts wait a round). */
static void run_tasks(struct nbd_loop *l)
{
  pthread_mutex_lock(&l->task_lock);
  struct task *t = l->tasks;
  l->tasks = NULL;
  l->task_tail = &l->tasks;
  pthread_mutex_unlock(&l->task_lock);
  while (t) {
    struct task *next = t->next;
    t->fn(t->arg);
    free(t);
    t = next;
  }
}

static void wake(struct nbd_loop *l)
{
  uint64_t one = 1;
  if (write(l->wakefd, &one, sizeof one) < 0) { /* already awake: the counter is non-zero */ }
}

int loop_post(struct nbd_loop *l, void (*fn)(void *arg), void *arg)
{
  struct task *t = malloc(sizeof *t);
  if (!t)
    return -ENOMEM;
  *t = (struct task){ fn, arg, NULL };
  pthread_mutex_lock(&l->task_lock);
  *l->task_tail = t;
  l->task_tail = &t->next;
  pthread_mutex_unlock(&l->task_lock);
  wake(l);
  return 0;
}

struct barrier {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  bool done;
};

static void barrier_reached(void *arg)
{
  struct barrier *b = arg;
  pthread_mutex_lock(&b->lock);
  b->done = true;
  pthread_cond_signal(&b->cond);
  pthread_mutex_unlock(&b->lock);
}

void loop_barrier(struct nbd_loop *l)
{
  struct barrier b = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false };
  if (loop_post(l, barrier_reached, &b) < 0)
    return;
  pthread_mutex_lock(&b.lock);
  while (!b.done)
    pthread_cond_wait(&b.cond, &b.lock);
  pthread_mutex_unlock(&b.lock);
}

static int64_t mono_ns(void)
{
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static void *loop_main(void *arg)
{
  struct nbd_loop *l = arg;
  current_loop = l;
  struct epoll_event ev[64];
  struct timespec last, now;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &last);
  int64_t active_ns = 0;
  bool polling = false;
  while (!atomic_load_explicit(&l->stop, memory_order_relaxed)) {
    int n = epoll_wait(l->epfd, ev, 64, polling ? 0 : l->tick_ms);
    if (l->poll_ns) { /* idle for poll_ns: back to sleeping in epoll */
      int64_t t = mono_ns();
      if (n > 0)
        active_ns = t;
      polling = t - active_ns < l->poll_ns;
    }
    if (n < 0 && errno != EINTR) {
      log_error("worker %d: epoll_wait: %s", l->index, strerror(errno));
      break;
    }
    for (int i = 0; i < n; i++) {
      struct loop_source *src = ev[i].data.ptr;
      if (!src) { /* the wake eventfd */
        uint64_t v;
        if (read(l->wakefd, &v, sizeof v) < 0) { /* nothing to do */ }
        continue;
      }
      src->fn(src->arg, ev[i].events);
    }
    clock_gettime(CLOCK_MONOTONIC_COARSE, &now);
    if ((now.tv_sec - last.tv_sec) * 1000 + (now.tv_nsec - last.tv_nsec) / 1000000 >= l->tick_ms) {
      last = now;
      run_ticks(l);
    }
    run_tasks(l);
  }
  run_tasks(l);
  return NULL;
}

struct nbd_loop *loop_new(int index, int tick_ms, int poll_us)
{
  struct nbd_loop *l = calloc(1, sizeof *l);
  if (!l)
    return NULL;
  l->index = index;
  l->tick_ms = tick_ms;
  l->poll_ns = (int64_t)poll_us * 1000;
  l->epfd = epoll_create1(EPOLL_CLOEXEC);
  l->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  pthread_mutex_init(&l->tick_lock, NULL);
  pthread_mutex_init(&l->task_lock, NULL);
  l->task_tail = &l->tasks;
  struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
  if (l->epfd < 0 || l->wakefd < 0 || epoll_ctl(l->epfd, EPOLL_CTL_ADD, l->wakefd, &ev) < 0)
    goto fail;
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  int r = pthread_create(&l->thread, NULL, loop_main, l);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (r)
    goto fail;
  return l;
fail:
  if (l->epfd >= 0)
    close(l->epfd);
  if (l->wakefd >= 0)
    close(l->wakefd);
  free(l);
  return NULL;
}

void loop_free(struct nbd_loop *l)
{
  if (!l)
    return;
  atomic_store(&l->stop, true);
  wake(l);
  pthread_join(l->thread, NULL);
  run_tasks(l); /* posted after the thread's last round */
  close(l->epfd);
  close(l->wakefd);
  pthread_mutex_destroy(&l->tick_lock);
  pthread_mutex_destroy(&l->task_lock);
  free(l->ticks);
  free(l->tick_copy);
  free(l);
}

int loop_add(struct nbd_loop *l, struct loop_source *src, bool exclusive)
{
  src->loop = l;
  struct epoll_event ev = { .events = src->events | (exclusive ? EPOLLEXCLUSIVE : 0),
                            .data.ptr = src };
  return epoll_ctl(l->epfd, EPOLL_CTL_ADD, src->fd, &ev) < 0 ? -errno : 0;
}

int loop_modify(struct loop_source *src, uint32_t events)
{
  src->events = events;
  if (!src->loop)
    return -ENOENT;
  struct epoll_event ev = { .events = events, .data.ptr = src };
  return epoll_ctl(src->loop->epfd, EPOLL_CTL_MOD, src->fd, &ev) < 0 ? -errno : 0;
}

void loop_remove(struct loop_source *src)
{
  if (src->loop)
    epoll_ctl(src->loop->epfd, EPOLL_CTL_DEL, src->fd, NULL);
  src->loop = NULL;
}

int loop_add_tick(struct nbd_loop *l, loop_tick_fn fn, void *arg)
{
  pthread_mutex_lock(&l->tick_lock);
  if (l->nticks == l->tick_cap) {
    int cap = l->tick_cap ? 2 * l->tick_cap : 16;
    struct tick *t = realloc(l->ticks, (size_t)cap * sizeof *t);
    if (!t) {
      pthread_mutex_unlock(&l->tick_lock);
      return -ENOMEM;
    }
    l->ticks = t;
    l->tick_cap = cap;
  }
  l->ticks[l->nticks++] = (struct tick){ fn, arg };
  pthread_mutex_unlock(&l->tick_lock);
  return 0;
}

void loop_remove_tick(struct nbd_loop *l, void *arg)
{
  pthread_mutex_lock(&l->tick_lock);
  for (int i = 0; i < l->nticks; i++)
    if (l->ticks[i].arg == arg) {
      l->ticks[i] = l->ticks[--l->nticks];
      break;
    }
  pthread_mutex_unlock(&l->tick_lock);
}
