/* conn-table.c: the request table of a connection.
 *
 * A slot holds a command from submission until its reply is complete (or
 * until the connection is lost and the command is handed back).  Cookies
 * carry the slot index and a generation, so a stale or duplicated reply is
 * recognised.  Pages of slots never move, so the receive side may fill a
 * slot while another thread grows the table.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "conn-impl.h"

static inline struct slot *slot_at(struct nbd_conn *c, uint32_t idx)
{
  return &c->pages[idx / SLOTS_PER_PAGE][idx % SLOTS_PER_PAGE];
}

int table_init(struct nbd_conn *c)
{
  c->free_idx = malloc(MAX_SLOTS * sizeof *c->free_idx);
  c->next_gen = 1;
  return c->free_idx ? 0 : -ENOMEM;
}

void table_free(struct nbd_conn *c)
{
  for (uint32_t p = 0; p < MAX_PAGES; p++)
    free(c->pages[p]);
  free(c->free_idx);
}

/* Grow the table by one page (tab_lock held). */
static int grow(struct nbd_conn *c)
{
  uint32_t p = c->nslots / SLOTS_PER_PAGE;
  if (p >= MAX_PAGES)
    return -1;
  c->pages[p] = calloc(SLOTS_PER_PAGE, sizeof(struct slot));
  if (!c->pages[p])
    return -1;
  for (uint32_t i = SLOTS_PER_PAGE; i-- > 0;)
    c->free_idx[c->nfree++] = c->nslots + i;
  c->nslots += SLOTS_PER_PAGE;
  return 0;
}

int table_take(struct nbd_conn *c, const struct nbd_cmd *cmd, uint64_t *cookie)
{
  pthread_mutex_lock(&c->tab_lock);
  if (atomic_load_explicit(&c->state, memory_order_relaxed) != NBD_CONN_READY) {
    pthread_mutex_unlock(&c->tab_lock);
    return -EIO;
  }
  if (c->nfree == 0 && grow(c) < 0) {
    /* Full: the caller queues the command; it never waits here. */
    pthread_mutex_unlock(&c->tab_lock);
    return -EAGAIN;
  }
  uint32_t idx = c->free_idx[--c->nfree];
  struct slot *s = slot_at(c, idx);
  s->cmd = *cmd;
  s->gen = c->next_gen++;
  if (c->next_gen == 0)
    c->next_gen = 1;
  s->busy = true;
  s->err = 0;
  s->status_chunks = 0;
  if (cmd->type == NBD_CMD_READ && c->structured)
    nbd_coverage_init(&s->cov);
  if (cmd->type == NBD_CMD_FLUSH)
    c->flush_inflight++;
  if (atomic_fetch_add_explicit(&c->inflight, 1, memory_order_relaxed) == 0)
    c->busy_since_ms = conn_now_ms();
  *cookie = (uint64_t)s->gen << 32 | idx;
  pthread_mutex_unlock(&c->tab_lock);
  return 0;
}

struct slot *table_lookup(struct nbd_conn *c, uint64_t cookie, uint32_t *idx)
{
  uint32_t i = (uint32_t)cookie, gen = (uint32_t)(cookie >> 32);
  struct slot *s = NULL;
  pthread_mutex_lock(&c->tab_lock);
  if (i < c->nslots) {
    s = slot_at(c, i);
    if (!s->busy || s->gen != gen)
      s = NULL;
  }
  pthread_mutex_unlock(&c->tab_lock);
  *idx = i;
  return s;
}

/* Drop a slot's resources and put it back (tab_lock held). */
static struct nbd_cmd release_locked(struct nbd_conn *c, uint32_t idx, struct slot *s)
{
  struct nbd_cmd cmd = s->cmd;
  if (cmd.type == NBD_CMD_READ && c->structured)
    nbd_coverage_free(&s->cov);
  if (cmd.type == NBD_CMD_FLUSH)
    c->flush_inflight--;
  s->busy = false;
  c->free_idx[c->nfree++] = idx;
  atomic_fetch_sub_explicit(&c->inflight, 1, memory_order_relaxed);
  return cmd;
}

struct nbd_cmd table_release(struct nbd_conn *c, uint32_t idx, struct slot *s)
{
  pthread_mutex_lock(&c->tab_lock);
  struct nbd_cmd cmd = release_locked(c, idx, s);
  pthread_mutex_unlock(&c->tab_lock);
  return cmd;
}

unsigned table_take_all(struct nbd_conn *c, struct nbd_cmd **out)
{
  struct nbd_cmd *v = NULL;
  unsigned n;
  for (;;) { /* size the array outside the lock */
    n = atomic_load(&c->inflight);
    v = malloc((n ? n : 1) * sizeof *v);
    pthread_mutex_lock(&c->tab_lock);
    if (!v || atomic_load(&c->inflight) <= n)
      break;
    pthread_mutex_unlock(&c->tab_lock);
    free(v);
  }
  unsigned k = 0;
  for (uint32_t i = 0; v && i < c->nslots; i++) {
    struct slot *s = slot_at(c, i);
    if (s->busy)
      v[k++] = release_locked(c, i, s);
  }
  pthread_mutex_unlock(&c->tab_lock);
  while (!v) { /* no memory: fail them one by one instead */
    struct nbd_cmd cmd;
    bool found = false;
    pthread_mutex_lock(&c->tab_lock);
    for (uint32_t i = 0; i < c->nslots && !found; i++)
      if (slot_at(c, i)->busy) {
        cmd = release_locked(c, i, slot_at(c, i));
        found = true;
      }
    pthread_mutex_unlock(&c->tab_lock);
    if (!found)
      break;
    conn_complete(c, &cmd, EIO);
  }
  *out = v;
  return k;
}
