/* notify.c: sd_notify(3)'s datagrams, written by hand (no libsystemd). */
#include "notify.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"

/* Set by notify_init before any thread exists, read-only afterwards: the
 * senders need no lock. */
static int notify_fd = -1;
static struct sockaddr_un notify_addr;
static socklen_t notify_addrlen;
static atomic_bool send_failed_logged;
static atomic_bool stopping; /* STOPPING=1 sent: later STATUS lines would only confuse */

/* Fill notify_addr from NOTIFY_SOCKET's value; -1 if we cannot use it. */
static int parse_address(const char *s)
{
  size_t len = strlen(s);
  /* "@name" is in the abstract namespace: a leading NUL, no terminator. */
  if ((s[0] != '/' && s[0] != '@') || len < 2 || len + (s[0] == '/') > sizeof notify_addr.sun_path)
    return -1;
  memset(&notify_addr, 0, sizeof notify_addr);
  notify_addr.sun_family = AF_UNIX;
  memcpy(notify_addr.sun_path, s, len);
  if (s[0] == '@')
    notify_addr.sun_path[0] = 0;
  notify_addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + (s[0] == '/'));
  return 0;
}

void notify_init(void)
{
  if (notify_fd >= 0)
    close(notify_fd);
  notify_fd = -1;
  atomic_store(&send_failed_logged, false);
  atomic_store(&stopping, false);
  const char *s = getenv("NOTIFY_SOCKET");
  if (!s)
    return;
  if (parse_address(s) < 0)
    log_debug("NOTIFY_SOCKET '%s' is not a Unix socket address: not notifying", s);
  else if ((notify_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0)) < 0)
    log_debug("NOTIFY_SOCKET: socket: %s", strerror(errno));
  /* unsetenv frees nothing we still point to: the address was copied. */
  unsetenv("NOTIFY_SOCKET");
}

bool notify_enabled(void) { return notify_fd >= 0; }

static void send_msg(const char *msg, size_t len)
{
  if (notify_fd < 0)
    return;
  ssize_t n;
  do
    n = sendto(notify_fd, msg, len, MSG_DONTWAIT | MSG_NOSIGNAL,
               (const struct sockaddr *)&notify_addr, notify_addrlen);
  while (n < 0 && errno == EINTR);
  /* A manager that has gone or is slow must not hold us up: log once. */
  if (n < 0 && !atomic_exchange(&send_failed_logged, true))
    log_debug("cannot notify the service manager: %s", strerror(errno));
}

void notify_ready(void)
{
  if (notify_fd < 0)
    return;
  char msg[64];
  int n = snprintf(msg, sizeof msg, "READY=1\nMAINPID=%ld", (long)getpid());
  send_msg(msg, (size_t)n);
}

void notify_stopping(void)
{
  atomic_store(&stopping, true);
  send_msg("STOPPING=1", strlen("STOPPING=1"));
}

void notify_status(const char *fmt, ...)
{
  if (notify_fd < 0 || atomic_load(&stopping))
    return;
  char msg[512] = "STATUS=";
  size_t pre = strlen(msg);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg + pre, sizeof msg - pre, fmt, ap);
  va_end(ap);
  /* A newline would start another (bogus) assignment. */
  for (char *p = msg + pre; *p; p++)
    if (*p == '\n' || *p == '\r')
      *p = ' ';
  send_msg(msg, strlen(msg));
}
