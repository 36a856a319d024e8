/* rangelock.c: see rangelock.h.  Lists are short (a few concurrent partial
 * writes), so plain linked lists are enough. */
#include "rangelock.h"

#include <stddef.h>

void rangelock_init(struct rangelock *rl)
{
  pthread_mutex_init(&rl->lock, NULL);
  rl->held = NULL;
  rl->waiting = NULL;
  rl->wait_tail = &rl->waiting;
}

void rangelock_destroy(struct rangelock *rl)
{
  pthread_mutex_destroy(&rl->lock);
}

static bool overlaps(const struct rl_request *a, const struct rl_request *b)
{
  return a->start < b->end && b->start < a->end;
}

static bool conflicts(const struct rl_request *list, const struct rl_request *r,
                      const struct rl_request *stop)
{
  for (const struct rl_request *p = list; p && p != stop; p = p->next)
    if (overlaps(p, r))
      return true;
  return false;
}

bool rangelock_acquire(struct rangelock *rl, struct rl_request *r)
{
  pthread_mutex_lock(&rl->lock);
  bool busy = conflicts(rl->held, r, NULL) || conflicts(rl->waiting, r, NULL);
  if (!busy) {
    r->next = rl->held;
    rl->held = r;
  } else {
    if (r->prepare)
      r->prepare(r);
    r->next = NULL;
    *rl->wait_tail = r;
    rl->wait_tail = &r->next;
  }
  pthread_mutex_unlock(&rl->lock);
  return !busy;
}

void rangelock_release(struct rangelock *rl, struct rl_request *r)
{
  struct rl_request *grant = NULL;
  pthread_mutex_lock(&rl->lock);
  for (struct rl_request **pp = &rl->held; *pp; pp = &(*pp)->next)
    if (*pp == r) {
      *pp = r->next;
      break;
    }
  /* Grant waiters that overlap neither a held range nor an earlier waiter. */
  struct rl_request **pp = &rl->waiting;
  while (*pp) {
    struct rl_request *w = *pp;
    if (!conflicts(rl->held, w, NULL) && !conflicts(rl->waiting, w, w)) {
      *pp = w->next;
      w->next = rl->held;
      rl->held = w;
      w->grant_next = grant; /* granted outside the lock, below */
      grant = w;
    } else {
      pp = &w->next;
    }
  }
  rl->wait_tail = &rl->waiting;
  while (*rl->wait_tail)
    rl->wait_tail = &(*rl->wait_tail)->next;
  pthread_mutex_unlock(&rl->lock);
  while (grant) {
    struct rl_request *next = grant->grant_next;
    grant->granted(grant);
    grant = next;
  }
}
