/* check.h: a tiny TAP-emitting check harness for the unit tests.
 *
 * Every check prints one TAP line ("ok N - what" / "not ok N - what").
 * done_testing() prints the plan and returns the exit status (non-zero when
 * any check failed).
 *
 * KNOWN_BUG(cond, ...) is a check that documents a bug not fixed yet: while
 * it fails it is reported as "not ok ... # TODO known bug" (meson counts it as
 * an expected failure, the run stays green); once the bug is fixed it
 * reports "ok ... # TODO", which meson flags as an unexpected pass, the cue to
 * turn the KNOWN_BUG into a CHECK.  With NBDFS_TEST_STRICT=1 in the
 * environment known bugs are plain failures.
 */
#ifndef NBDFS_TEST_CHECK_H
#define NBDFS_TEST_CHECK_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int check_n, check_failed, check_todo;

static void check_emit(bool ok, bool todo, const char *file, int line, const char *expr,
                       const char *fmt, ...) __attribute__((format(printf, 6, 7), unused));
static void check_emit(bool ok, bool todo, const char *file, int line, const char *expr,
                       const char *fmt, ...)
{
  char what[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  for (char *p = what; *p; p++)
    if (*p == '\n' || *p == '#')
      *p = ' ';
  if (todo) {
    const char *strict = getenv("NBDFS_TEST_STRICT");
    if (strict && strcmp(strict, "0"))
      todo = false;
  }
  check_n++;
  if (ok) {
    printf("ok %d - %s%s\n", check_n, what, todo ? " # TODO known bug (now passing: make it a CHECK)" : "");
  } else {
    printf("not ok %d - %s%s\n", check_n, what, todo ? " # TODO known bug" : "");
    printf("#   at %s:%d: %s\n", file, line, expr);
    if (todo)
      check_todo++;
    else
      check_failed++;
  }
  fflush(stdout);
}

#define CHECK(cond, ...) check_emit(!!(cond), false, __FILE__, __LINE__, #cond, __VA_ARGS__)
#define KNOWN_BUG(cond, ...) check_emit(!!(cond), true, __FILE__, __LINE__, #cond, __VA_ARGS__)

/* Compare integers and show both values on failure. */
#define CHECK_EQ(a, b, ...)                                                              \
  do {                                                                                   \
    long long check_a_ = (long long)(a), check_b_ = (long long)(b);                      \
    CHECK(check_a_ == check_b_, __VA_ARGS__);                                            \
    if (check_a_ != check_b_)                                                            \
      printf("#   got %lld (0x%llx), want %lld (0x%llx)\n", check_a_,                   \
             (unsigned long long)check_a_, check_b_, (unsigned long long)check_b_);      \
  } while (0)

#define CHECK_STR(a, b, ...)                                                             \
  do {                                                                                   \
    const char *check_a_ = (a), *check_b_ = (b);                                         \
    bool check_ok_ = check_a_ && check_b_ && !strcmp(check_a_, check_b_);               \
    CHECK(check_ok_, __VA_ARGS__);                                                       \
    if (!check_ok_)                                                                      \
      printf("#   got \"%s\", want \"%s\"\n", check_a_ ? check_a_ : "(null)",            \
             check_b_ ? check_b_ : "(null)");                                            \
  } while (0)

static int done_testing(void) __attribute__((unused));
static int done_testing(void)
{
  printf("1..%d\n", check_n);
  printf("# %d checks, %d failed, %d known bugs\n", check_n, check_failed, check_todo);
  return check_failed ? 1 : 0;
}

/* A growable byte buffer for building server streams. */
struct bytes {
  uint8_t *p;
  size_t len, cap;
};

static void __attribute__((unused)) b_put(struct bytes *b, const void *d, size_t n)
{
  if (b->len + n > b->cap) {
    size_t nc = b->cap ? b->cap * 2 : 256;
    while (nc < b->len + n)
      nc *= 2;
    b->p = realloc(b->p, nc);
    if (!b->p)
      abort();
    b->cap = nc;
  }
  if (n)
    memcpy(b->p + b->len, d, n);
  b->len += n;
}
static void __attribute__((unused)) b_u8(struct bytes *b, uint8_t v) { b_put(b, &v, 1); }
static void __attribute__((unused)) b_u16(struct bytes *b, uint16_t v)
{
  uint8_t x[2] = { (uint8_t)(v >> 8), (uint8_t)v };
  b_put(b, x, 2);
}
static void __attribute__((unused)) b_u32(struct bytes *b, uint32_t v)
{
  uint8_t x[4] = { (uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v };
  b_put(b, x, 4);
}
static void __attribute__((unused)) b_u64(struct bytes *b, uint64_t v)
{
  b_u32(b, (uint32_t)(v >> 32));
  b_u32(b, (uint32_t)v);
}
static void __attribute__((unused)) b_zero(struct bytes *b, size_t n)
{
  for (size_t i = 0; i < n; i++)
    b_u8(b, 0);
}
static void __attribute__((unused)) b_reset(struct bytes *b) { b->len = 0; }
static void __attribute__((unused)) b_free(struct bytes *b)
{
  free(b->p);
  b->p = NULL;
  b->len = b->cap = 0;
}

#endif
