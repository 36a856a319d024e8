/* log.c: every message is one line prefixed "nbdfs: ". */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <syslog.h>

int nbd_verbose;
static bool use_syslog;

void log_use_syslog(void)
{
  openlog("nbdfs", LOG_PID, LOG_DAEMON);
  use_syslog = true;
}

static void vlog(int prio, const char *fmt, va_list ap)
{
  if (use_syslog) {
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
DEFINE_LOG(log_warn, LOG_WARNING, 1)
DEFINE_LOG(log_info, LOG_INFO, nbd_verbose >= 1)
DEFINE_LOG(log_debug, LOG_DEBUG, nbd_verbose >= 2)
