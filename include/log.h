/* log.h: one-line diagnostics to stderr (foreground), a log file
 * (--log-file) or syslog (detached without --log-file). */
#ifndef NBDFS_LOG_H
#define NBDFS_LOG_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

extern int nbd_verbose;

/* Switch to syslog once the process has detached from its terminal
 * (ident "nbdfs", LOG_PID, LOG_DAEMON).  A log file, once set, wins. */
void log_use_syslog(void);

/* Append every later line to PATH (created 0640, opened O_APPEND and
 * close-on-exec) as "2026-11-28T04:40:00.123Z nbdfs[PID]: message", each
 * with one write(2), so threads' lines never interleave.  Call it once,
 * while a failure can still be shown to the user; PATH may be relative to
 * the current directory.  Returns 0, or -1 with a message in ERR. */
int log_use_file(const char *path, char *err, size_t errlen);

void log_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Always shown, as LOG_NOTICE (e.g. what a server nbdfs started writes to
 * its stderr). */
void log_notice(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- rate-limited failure messages ----
 *
 * Thousands of failed requests should give a few lines with counts, not
 * thousands of lines, and never nothing.  Declare one limiter per kind of
 * message and log through it:
 *
 *   static struct log_limit read_fail = LOG_LIMIT_INIT;
 *   log_failure(&read_fail, "%s: read at %llu failed: %s", ...);
 *
 * Each limiter prints at most LOG_LIMIT_BURST lines per LOG_LIMIT_WINDOW_S
 * second window (at warning level: always shown) and counts the rest.  The
 * first message after the window (or log_limit_flush) first prints
 * "N more similar messages suppressed; the last: <message>".  Limiters
 * register themselves on first use, so log_flush_suppressed() can report
 * every pending count (the daemon calls it at exit).  Thread-safe; not
 * async-signal-safe.  The fields are private (tests peek at them). */
#define LOG_LIMIT_BURST 5
#define LOG_LIMIT_WINDOW_S 10

struct log_limit {
  pthread_mutex_t lock;
  atomic_bool registered;      /* on the registry list (set once) */
  struct log_limit *next;      /* registry list, under the registry's lock */
  bool started;                /* a window has begun */
  int64_t window_start_ns;     /* CLOCK_MONOTONIC start of the current window */
  unsigned shown;              /* lines printed in the current window */
  uint64_t suppressed;         /* counted, not printed, since the last report */
  char last[160];              /* the last suppressed message (for the report) */
};
#define LOG_LIMIT_INIT { .lock = PTHREAD_MUTEX_INITIALIZER }

void log_failure(struct log_limit *ll, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Report this limiter's suppressed count now, if any. */
void log_limit_flush(struct log_limit *ll);
/* Report the suppressed counts of every limiter used so far. */
void log_flush_suppressed(void);

#endif
