/* test-notify.c: the systemd readiness datagrams (src/notify.c), received
 * on our own datagram sockets (a path and an abstract name). */
#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "notify.h"

/* Bind a datagram socket to NAME ("/path" or "@abstract"). */
static int listen_on(const char *name)
{
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un a = { .sun_family = AF_UNIX };
  size_t len = strlen(name);
  if (fd < 0 || len >= sizeof a.sun_path)
    abort();
  memcpy(a.sun_path, name, len);
  if (name[0] == '@')
    a.sun_path[0] = 0;
  if (bind(fd, (struct sockaddr *)&a, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len)) < 0) {
    perror("bind");
    abort();
  }
  return fd;
}

/* The next datagram on FD within a second, NUL-terminated in BUF; "" if none. */
static const char *next_msg(int fd, char *buf, size_t size)
{
  struct pollfd p = { .fd = fd, .events = POLLIN };
  buf[0] = 0;
  if (poll(&p, 1, 1000) == 1) {
    ssize_t n = recv(fd, buf, size - 1, MSG_DONTWAIT);
    buf[n > 0 ? n : 0] = 0;
  }
  return buf;
}

static bool nothing_pending(int fd)
{
  char c;
  return recv(fd, &c, 1, MSG_DONTWAIT) < 0 && errno == EAGAIN;
}

/* Every message, sent to the address NAME. */
static void test_address(const char *name, const char *form)
{
  int fd = listen_on(name);
  char buf[1024], want[64];
  setenv("NOTIFY_SOCKET", name, 1);
  notify_init();
  CHECK(notify_enabled(), "%s: enabled", form);
  CHECK(getenv("NOTIFY_SOCKET") == NULL, "%s: NOTIFY_SOCKET removed from the environment", form);

  notify_ready();
  snprintf(want, sizeof want, "READY=1\nMAINPID=%ld", (long)getpid());
  CHECK_STR(next_msg(fd, buf, sizeof buf), want, "%s: READY=1 with MAINPID", form);
  notify_status("connected to %s, %d connections", "srv", 4);
  CHECK_STR(next_msg(fd, buf, sizeof buf), "STATUS=connected to srv, 4 connections", "%s: STATUS", form);
  notify_status("two\nlines\r");
  CHECK_STR(next_msg(fd, buf, sizeof buf), "STATUS=two lines ", "%s: STATUS stays one line", form);
  notify_stopping();
  CHECK_STR(next_msg(fd, buf, sizeof buf), "STOPPING=1", "%s: STOPPING=1", form);
  CHECK(nothing_pending(fd), "%s: one datagram per call", form);
  notify_status("late news");
  CHECK(nothing_pending(fd), "%s: no STATUS after STOPPING", form);

  /* Nobody reads: the queue fills up, and we must not block. */
  setenv("NOTIFY_SOCKET", name, 1);
  notify_init(); /* a fresh start: not stopping */
  time_t t0 = time(NULL);
  for (int i = 0; i < 2000; i++)
    notify_status("flood %d", i);
  CHECK(time(NULL) - t0 < 5, "%s: a full queue does not block the sender", form);
  close(fd);
  notify_ready();
  CHECK(1, "%s: the listener gone: no crash, no block", form);
  if (name[0] == '/')
    unlink(name);
}

static void test_unset(const char *path)
{
  int fd = listen_on(path);
  unsetenv("NOTIFY_SOCKET");
  notify_init();
  CHECK(!notify_enabled(), "unset: not enabled");
  notify_ready();
  notify_status("x");
  notify_stopping();
  CHECK(nothing_pending(fd), "unset: nothing sent anywhere");
  close(fd);
  unlink(path);
}

static void test_bad(void)
{
  const char *bad[] = { "relative/path", "", "@", "vsock:2:1234" };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    setenv("NOTIFY_SOCKET", bad[i], 1);
    notify_init();
    CHECK(!notify_enabled(), "NOTIFY_SOCKET='%s': not used", bad[i]);
    CHECK(getenv("NOTIFY_SOCKET") == NULL, "NOTIFY_SOCKET='%s': still removed", bad[i]);
    notify_ready();
  }
  char longp[200];
  memset(longp, 'x', sizeof longp - 1);
  longp[0] = '/';
  longp[sizeof longp - 1] = 0;
  setenv("NOTIFY_SOCKET", longp, 1);
  notify_init();
  CHECK(!notify_enabled(), "a path longer than sun_path: not used");
}

int main(void)
{
  char dir[] = "/tmp/test-notify.XXXXXX", path[64], abstract[64];
  if (!mkdtemp(dir))
    abort();
  snprintf(path, sizeof path, "%s/notify", dir);
  snprintf(abstract, sizeof abstract, "@nbdfs-test-notify-%ld", (long)getpid());
  test_address(path, "path");
  test_address(abstract, "abstract");
  test_unset(path);
  test_bad();
  rmdir(dir);
  return done_testing();
}
