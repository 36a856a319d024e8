/* test-write-sched.c: the write scheduler (src/write-sched.c): the bound on
 * bytes in flight, arrival order of held writes (also for a small write
 * behind a held large one), a write that fails as it is sent (no recursion
 * per held write), the limit on what is held following the measured write
 * rate (none held for a fast server, up to 64 MiB for a slow one), parking
 * and resuming readers at it, and sending everything at shutdown.  The module's state is global: each test
 * leaves nothing in flight or held.
 */
#include "check.h"
#include "write-sched.h"

#define MiB (1u << 20)

struct item {
  struct write_sched_item it;
  int id;
  bool fail_at_once; /* answered from inside its send, like a write to a dead pool */
};

static int sent[20000], nsent;
static int depth, max_depth;

static void record(struct write_sched_item *it)
{
  struct item *x = (struct item *)it;
  sent[nsent++] = x->id;
  if (x->fail_at_once) {
    depth++;
    if (depth > max_depth)
      max_depth = depth;
    write_sched_done(it->len);
    depth--;
  }
}

static struct item *new_item(int id, uint64_t len)
{
  struct item *x = calloc(1, sizeof *x);
  x->it.send = record;
  x->it.len = len;
  x->id = id;
  return x;
}

static void counts(uint64_t *inflight, uint64_t *held) { write_sched_counts(inflight, held); }

static void test_bound_and_order(void)
{
  nsent = 0;
  for (int i = 0; i < 8; i++)
    CHECK(write_sched_try(MiB), "write %d of 1 MiB goes at once (under 8 MiB in flight)", i);
  CHECK(!write_sched_try(MiB), "the ninth waits: 8 MiB in flight");
  struct item *big = new_item(9, MiB);
  CHECK(!write_sched_hold(&big->it), "it is held");
  CHECK(!write_sched_try(4096), "a small write behind a held one waits too (arrival order)");
  struct item *small = new_item(10, 4096);
  CHECK(!write_sched_hold(&small->it), "and is held");
  uint64_t in, held;
  counts(&in, &held);
  CHECK_EQ(in, 8 * MiB, "8 MiB in flight");
  CHECK_EQ(held, MiB + 4096, "1 MiB + 4 KiB held");

  write_sched_done(MiB);
  CHECK_EQ(nsent, 1, "one answer makes room for one held write");
  CHECK_EQ(sent[0], 9, "the first held is sent first");
  write_sched_done(MiB);
  CHECK_EQ(nsent, 2, "the next answer sends the next");
  CHECK_EQ(sent[1], 10, "in arrival order");
  /* In flight now: 6 MiB of the first eight, the 1 MiB and the 4 KiB. */
  for (int i = 0; i < 6; i++)
    write_sched_done(MiB);
  write_sched_done(MiB);
  write_sched_done(4096);
  counts(&in, &held);
  CHECK(in == 0 && held == 0, "all answered: nothing in flight or held (%llu, %llu)",
        (unsigned long long)in, (unsigned long long)held);
  free(big);
  free(small);
}

static void test_hold_after_room(void)
{
  nsent = 0;
  for (int i = 0; i < 8; i++)
    write_sched_try(MiB);
  CHECK(!write_sched_try(MiB), "full: must wait");
  /* Everything is answered before the caller gets to hold it. */
  for (int i = 0; i < 8; i++)
    write_sched_done(MiB);
  struct item *x = new_item(1, MiB);
  CHECK(write_sched_hold(&x->it), "hold says send it now when there is room after all");
  CHECK_EQ(nsent, 0, "and does not send it itself");
  write_sched_done(MiB);
  uint64_t in, held;
  counts(&in, &held);
  CHECK(in == 0 && held == 0, "nothing left");
  free(x);
}

static void test_fail_at_once(void)
{
  enum { N = 20000 };
  static struct item items[N];
  nsent = 0;
  max_depth = 0;
  for (int i = 0; i < 8; i++)
    write_sched_try(MiB);
  int not_held = 0;
  for (int i = 0; i < N; i++) {
    items[i] = (struct item){ .it = { .send = record, .len = 4096 }, .id = i, .fail_at_once = true };
    not_held += write_sched_hold(&items[i].it);
  }
  CHECK_EQ(not_held, 0, "%d writes behind 8 MiB in flight are all held", N);
  for (int i = 0; i < 8; i++)
    write_sched_done(MiB);
  CHECK_EQ(nsent, N, "every held write was sent once the first ones were answered");
  bool ordered = true;
  for (int i = 0; i < nsent; i++)
    ordered = ordered && sent[i] == i;
  CHECK(ordered, "in arrival order");
  CHECK_EQ(max_depth, 1, "writes answered inside their send do not recurse");
  uint64_t in, held;
  counts(&in, &held);
  CHECK(in == 0 && held == 0, "nothing left");
}

static uint64_t fake_ns = 1000000000;
static uint64_t fake_now(void) { return fake_ns; }
#define MS 1000000ull

static void test_fast_server(void)
{
  write_sched_set_clock(fake_now);
  CHECK_EQ(write_sched_limit(), WRITE_SCHED_SEND_MAX, "no rate known yet: the servers are taken to be fast");
  /* 1 MiB answered per millisecond: 1 GiB/s. */
  for (int i = 0; i < 150; i++) {
    write_sched_try(MiB);
    fake_ns += MS;
    write_sched_done(MiB);
  }
  CHECK_EQ(write_sched_limit(), WRITE_SCHED_SEND_MAX, "1 GiB/s: nothing is held beyond what is in flight");
  /* Idle time does not count: an hour without writes changes nothing. */
  fake_ns += 3600 * 1000 * MS;
  CHECK_EQ(write_sched_limit(), WRITE_SCHED_SEND_MAX, "an idle hour leaves the rate as it was");
}

static int resumed;
static void resume(void *arg) { (*(int *)arg)++; }

static void test_slow_server_park_and_resume(void)
{
  write_sched_set_clock(fake_now);
  nsent = 0;
  resumed = 0;
  for (int i = 0; i < 8; i++)
    write_sched_try(MiB);
  CHECK(!write_sched_admit(resume, &resumed), "rate unknown: 8 MiB in flight stops reading");
  fake_ns += 200 * MS;
  write_sched_done(MiB); /* 1 MiB in 0.2 s: 5 MiB/s */
  CHECK_EQ(resumed, 1, "the limit went up: the parked worker reads on");
  uint64_t limit = write_sched_limit();
  CHECK(limit > 62 * MiB && limit <= WRITE_SCHED_HOLD_MAX,
        "5 MiB/s: hold nearly all that write-back can queue (%llu)", (unsigned long long)limit);
  static struct item items[64];
  int n = 0;
  uint64_t in, held;
  for (;;) {
    counts(&in, &held);
    if (in + held >= limit)
      break;
    items[n] = (struct item){ .it = { .send = record, .len = MiB }, .id = n };
    if (write_sched_hold(&items[n].it))
      record(&items[n].it); /* room after all: the caller sends it */
    CHECK(in + held + MiB >= limit || write_sched_admit(resume, &resumed),
          "%llu MiB held and in flight: read on", (unsigned long long)((in + held) / MiB + 1));
    n++;
  }
  CHECK(!write_sched_admit(resume, &resumed), "at the limit: stop reading");
  counts(&in, &held);
  CHECK(held > 50 * MiB, "over 50 MiB held (%llu)", (unsigned long long)held);
  /* Each answer sends one held write: the total drops by 1 MiB. */
  int answers = 0;
  while (resumed == 1) {
    fake_ns += 200 * MS;
    write_sched_done(MiB);
    answers++;
    counts(&in, &held);
    if (resumed == 1)
      CHECK(in + held >= write_sched_limit() / 2, "parked while more than half the limit is left");
  }
  CHECK_EQ(resumed, 2, "resumed once, below half of the limit");
  while (in + held) {
    write_sched_done(MiB);
    counts(&in, &held);
  }
  CHECK_EQ(resumed, 2, "resumed only once");
  CHECK_EQ(nsent, n, "every held write was sent");
  CHECK(in == 0 && held == 0, "nothing left");
  write_sched_set_clock(NULL);
}

static void test_send_all(void)
{
  nsent = 0;
  for (int i = 0; i < 8; i++)
    write_sched_try(MiB);
  static struct item items[5];
  for (int i = 0; i < 5; i++) {
    items[i] = (struct item){ .it = { .send = record, .len = MiB }, .id = i };
    write_sched_hold(&items[i].it);
  }
  write_sched_send_all();
  CHECK_EQ(nsent, 5, "shutdown sends every held write, whatever is in flight");
  bool ordered = true;
  for (int i = 0; i < nsent; i++)
    ordered = ordered && sent[i] == i;
  CHECK(ordered, "in arrival order");
  uint64_t in, held;
  counts(&in, &held);
  CHECK(in == 13 * MiB && held == 0, "all of it in flight, none held");
  for (int i = 0; i < 13; i++)
    write_sched_done(MiB);
  CHECK(write_sched_try(4096), "later writes go at once");
  write_sched_done(4096);
}

int main(void)
{
  test_bound_and_order();
  test_hold_after_room();
  test_fail_at_once();
  test_fast_server();
  test_slow_server_park_and_resume();
  test_send_all();
  return done_testing();
}
