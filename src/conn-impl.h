/* conn-impl.h: the inside of a connection, shared by its parts:
 *   conn.c        lifecycle: states, loss, stall and settle timers, freeing
 *   conn-table.c  request table: slots, cookies, in-flight accounting
 *   conn-send.c   send path: non-blocking writes, backlog, corking
 *   conn-recv.c   reply assembly: the resumable receive state machine
 * Nothing outside these files includes it.
 */
#ifndef NBDFS_CONN_IMPL_H
#define NBDFS_CONN_IMPL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "conn.h"
#include "loop.h"

/* Slots live in pages that never move, so the table can grow while a slot
 * is being filled by the receive side.  Cookie = generation << 32 | index. */
#define SLOTS_PER_PAGE 256
#define MAX_PAGES 64
#define MAX_SLOTS (SLOTS_PER_PAGE * MAX_PAGES)

struct slot {
  struct nbd_cmd cmd;
  uint32_t gen;
  bool busy;
  int err;                 /* first error reported by the server */
  unsigned status_chunks;  /* BLOCK_STATUS: chunks for our context */
  struct nbd_coverage cov; /* READ with structured replies */
};

/* What the bytes being received are for. */
enum rx_state {
  RX_MAGIC, RX_HEADER, RX_SIMPLE_DATA, RX_DATA_PREFIX, RX_DATA, RX_HOLE,
  RX_BLOCK_STATUS, RX_ERROR, RX_SKIP,
  RX_DISCARD,              /* abandoned: read and drop everything until EOF */
};

struct rx {
  enum rx_state st;
  uint8_t *dst;            /* NULL: discard */
  size_t need, got;
  uint8_t hdr[NBD_EXT_REPLY_LEN];
  struct nbd_reply r;
  struct slot *s;          /* the slot the current reply is for, or NULL */
  uint32_t idx;
  uint8_t *big;            /* block status payload */
  uint8_t small[6 + NBD_MAX_STRING + 8];
};

struct nbd_conn {
  struct transport *t;     /* closed with the last reference */
  char desc[256];
  int index;
  int timeout_s;
  bool structured;
  bool extended;           /* 32-byte requests and replies (extended headers) */
  uint32_t base_alloc_id;
  atomic_uint refs;        /* the creator's, the owner loop's while attached, callers' */

  /* owner */
  const struct nbd_conn_events *ev;
  void *owner;
  int settle_s;

  /* lifecycle (state written under tab_lock; DEAD only by the owner thread) */
  _Atomic enum nbd_conn_state state;
  char why[200];           /* why it was lost (first reason wins) */
  bool we_closed;          /* lost because we cut it (stall, violation): not yet settled */
  atomic_bool no_settle;   /* aborted: do not wait for the server to settle */
  bool handed_back;        /* the in-flight commands were handed back or failed */
  uint64_t settle_deadline_ms;
  uint64_t closing_deadline_ms;

  /* send side */
  pthread_mutex_t send_lock;
  uint8_t *outq;                /* bytes accepted but not yet sent */
  size_t out_head, out_len, out_cap;
  struct loop_source src;       /* socket registration (events under send_lock) */
  struct nbd_loop *loop;        /* owner loop once attached */
  bool attached;
  bool cork_pending;            /* queued by a corked burst, flushed at uncork */

  /* request table */
  pthread_mutex_t tab_lock;
  pthread_cond_t tab_cond;      /* DEAD reached (nbd_conn_wait_dead) */
  struct slot *pages[MAX_PAGES];
  uint32_t nslots;
  uint32_t *free_idx;
  uint32_t nfree;
  uint32_t next_gen;
  atomic_uint inflight;
  unsigned flush_inflight;      /* FLUSHes among them (longer stall limit) */
  uint64_t busy_since_ms;       /* when inflight last went from 0 to 1 */

  /* receive side (owner thread only) */
  struct rx rx;
  uint8_t *rbuf;
  size_t rpos, rend;
  uint64_t last_rx_ms;          /* last byte received */
  bool resume_posted;           /* a bounded rx_feed left bytes in rbuf */
  bool rx_over;                 /* EOF or a receive error: the server side is gone */
};

uint64_t conn_now_ms(void);

/* conn-table.c (tab_lock taken inside unless said otherwise) */
int table_init(struct nbd_conn *c);
void table_free(struct nbd_conn *c);
/* Take a slot for cmd if the connection is READY.  Returns 0 with the
 * cookie, -EAGAIN (table full) or -EIO (not READY). */
int table_take(struct nbd_conn *c, const struct nbd_cmd *cmd, uint64_t *cookie);
/* The busy slot a cookie names, or NULL. */
struct slot *table_lookup(struct nbd_conn *c, uint64_t cookie, uint32_t *idx);
/* Free the slot; returns the command it held. */
struct nbd_cmd table_release(struct nbd_conn *c, uint32_t idx, struct slot *s);
/* Empty the table: every busy command is copied to *out (malloc'd). */
unsigned table_take_all(struct nbd_conn *c, struct nbd_cmd **out);

/* conn-send.c */
int send_request(struct nbd_conn *c, const struct nbd_request *rq, const void *payload);
/* Send what the backlog holds (EPOLLOUT).  Returns 0 or -errno. */
int send_backlog(struct nbd_conn *c);
/* DISC after whatever is queued, then half-close (bounded wait for the
 * backlog to drain). */
void send_disc_and_half_close(struct nbd_conn *c);

/* conn-recv.c */
void rx_init(struct nbd_conn *c);
/* Consume what has arrived, at most a bounded amount.  Returns 1 when
 * stopped by the bound with bytes left, 0 when the socket is drained, -1
 * when the connection is over (EOF, error or violation: c->why says). */
int rx_feed(struct nbd_conn *c);

/* conn.c */
/* Finish a command: the owner's completion hook, or its own done. */
void conn_complete(struct nbd_conn *c, struct nbd_cmd *cmd, int err);
/* Mark the connection lost (any thread): first reason wins.  we_cut: we
 * are the ones cutting it (the server may still act on what it has). */
void conn_lose(struct nbd_conn *c, bool we_cut, const char *why);
/* A server answered ESHUTDOWN. */
void conn_server_shutdown(struct nbd_conn *c);

#endif
