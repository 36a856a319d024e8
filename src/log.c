/* log.c: every message is one line, prefixed "nbdfs: " on stderr and
 * with a UTC timestamp and the pid in a log file. */
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

int nbd_verbose;
/* Atomic: the daemon switches while its threads already log. */
static atomic_bool use_syslog;
static atomic_int log_fd = -1;

void log_use_syslog(void)
{
  openlog("nbdfs", LOG_PID, LOG_DAEMON);
  atomic_store(&use_syslog, true);
}

int log_use_file(const char *path, char *err, size_t errlen)
{
  int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
  if (fd < 0) {
    snprintf(err, errlen, "cannot open log file %s: %s", path, strerror(errno));
    return -1;
  }
  int old = atomic_exchange(&log_fd, fd);
  if (old >= 0)
    close(old);
  return 0;
}

/* One line to the log file in a single write(2): O_APPEND keeps whole
 * lines apart across threads (and across processes sharing the file). */
static void file_line(int fd, const char *fmt, va_list ap)
{
  char line[1200];
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  size_t n = strftime(line, sizeof line, "%Y-%m-%dT%H:%M:%S", &tm);
  /* getpid() now, not at open: the daemon is a fork of the opener. */
  n += (size_t)snprintf(line + n, sizeof line - n, ".%03ldZ nbdfs[%ld]: ", ts.tv_nsec / 1000000,
                        (long)getpid());
  int m = vsnprintf(line + n, sizeof line - n - 1, fmt, ap);
  if (m > 0)
    n += (size_t)m < sizeof line - n - 1 ? (size_t)m : sizeof line - n - 2;
  line[n++] = '\n';
  ssize_t w;
  do
    w = write(fd, line, n);
  while (w < 0 && errno == EINTR);
}

static void vlog(int prio, const char *fmt, va_list ap)
{
  int fd = atomic_load(&log_fd);
  if (fd >= 0) {
    file_line(fd, fmt, ap);
    return;
  }
  if (atomic_load(&use_syslog)) {
    vsyslog(prio, fmt, ap);
    return;
  }
  char line[1024];
  vsnprintf(line, sizeof line, fmt, ap);
  fprintf(stderr, "nbdfs: %s\n", line);
}

#define DEFINE_LOG(fn, prio, cond)                  \
  void fn(const char *fmt, ...)                      \
  {                                                  \
    if (!(cond))                                     \
      return;                                        \
    va_list ap;                                      \
    va_start(ap, fmt);                               \
    vlog(prio, fmt, ap);                             \
    va_end(ap);                                      \
  }

DEFINE_LOG(log_error, LOG_ERR, 1)
DEFINE_LOG(log_notice, LOG_NOTICE, 1)
DEFINE_LOG(log_warn, LOG_WARNING, 1)
DEFINE_LOG(log_info, LOG_INFO, nbd_verbose >= 1)
DEFINE_LOG(log_debug, LOG_DEBUG, nbd_verbose >= 2)

/* ---- rate-limited failure messages ---- */

/* Every limiter used so far.  Lock order: registry_lock, then a limiter's
 * lock (log_failure registers before it takes its limiter's lock). */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct log_limit *registry;

static void limit_register(struct log_limit *ll)
{
  if (atomic_load_explicit(&ll->registered, memory_order_acquire))
    return;
  pthread_mutex_lock(&registry_lock);
  if (!atomic_load_explicit(&ll->registered, memory_order_relaxed)) {
    ll->next = registry;
    registry = ll;
    atomic_store_explicit(&ll->registered, true, memory_order_release);
  }
  pthread_mutex_unlock(&registry_lock);
}

static int64_t now_ns(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void warn_line(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void warn_line(const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  vlog(LOG_WARNING, fmt, ap);
  va_end(ap);
}

/* Print and reset the pending count; the limiter's lock is held. */
static void report_locked(struct log_limit *ll)
{
  if (!ll->suppressed)
    return;
  warn_line("%" PRIu64 " more similar message%s suppressed; the last: %s", ll->suppressed,
            ll->suppressed == 1 ? "" : "s", ll->last);
  ll->suppressed = 0;
}

void log_failure(struct log_limit *ll, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  if (!ll) {
    vlog(LOG_WARNING, fmt, ap);
    va_end(ap);
    return;
  }
  limit_register(ll);
  int64_t now = now_ns();
  pthread_mutex_lock(&ll->lock);
  if (!ll->started || now - ll->window_start_ns >= (int64_t)LOG_LIMIT_WINDOW_S * 1000000000) {
    report_locked(ll);
    ll->started = true;
    ll->window_start_ns = now;
    ll->shown = 0;
  }
  if (ll->shown < LOG_LIMIT_BURST) {
    ll->shown++;
    vlog(LOG_WARNING, fmt, ap);
  } else {
    ll->suppressed++;
    vsnprintf(ll->last, sizeof ll->last, fmt, ap);
  }
  pthread_mutex_unlock(&ll->lock);
  va_end(ap);
}

void log_limit_flush(struct log_limit *ll)
{
  pthread_mutex_lock(&ll->lock);
  report_locked(ll);
  pthread_mutex_unlock(&ll->lock);
}

void log_flush_suppressed(void)
{
  pthread_mutex_lock(&registry_lock);
  for (struct log_limit *ll = registry; ll; ll = ll->next)
    log_limit_flush(ll);
  pthread_mutex_unlock(&registry_lock);
}
