/* server-process.c: start, watch and stop the NBD server nbdfs owns. */
#include "server-process.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

enum sp_state { SP_NONE /* not started */, SP_RUNNING, SP_STOPPING, SP_EXITED };

struct server_process {
  enum sp_state state;
  enum server_process_kind kind;
  pid_t pid;
  int pidfd;              /* readable once it exits; -1 without pidfd support */
  int fd;                 /* STDIO: our end of the socketpair */
  char dir[PATH_MAX];     /* ACTIVATE: the private directory */
  char sock[PATH_MAX + 8]; /* ACTIVATE: dir/sock */
  char desc[160];
  /* its stdout and stderr, logged line by line */
  int log_rd;
  int stop_pipe[2];       /* tells the log thread to finish */
  pthread_t log_thread;
  bool log_running;
};

/* ---- the log thread ---- */

static void log_lines(struct server_process *sp, char *buf, size_t *len, bool all)
{
  char *start = buf, *nl;
  while ((nl = memchr(start, '\n', *len - (size_t)(start - buf)))) {
    *nl = '\0';
    log_notice("%s: %s", sp->desc, start);
    start = nl + 1;
  }
  size_t rest = *len - (size_t)(start - buf);
  if (all && rest) { /* an unfinished last line, or one longer than the buffer */
    start[rest] = '\0';
    log_notice("%s: %s", sp->desc, start);
    rest = 0;
  }
  memmove(buf, start, rest);
  *len = rest;
}

static void *log_main(void *arg)
{
  struct server_process *sp = arg;
  char buf[1025];
  size_t len = 0;
  bool stopping = false;
  for (;;) {
    struct pollfd p[2] = { { .fd = sp->log_rd, .events = POLLIN },
                           { .fd = sp->stop_pipe[0], .events = POLLIN } };
    /* Once told to stop, take what is already there, then finish (a
     * grandchild may keep the pipe open for ever). */
    int r = poll(p, stopping ? 1 : 2, stopping ? 0 : -1);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      break;
    if (!stopping && (p[1].revents & POLLIN)) {
      stopping = true;
      continue;
    }
    if (!(p[0].revents & (POLLIN | POLLHUP | POLLERR)))
      continue;
    ssize_t n = read(sp->log_rd, buf + len, sizeof buf - 1 - len);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    len += (size_t)n;
    log_lines(sp, buf, &len, len == sizeof buf - 1);
  }
  log_lines(sp, buf, &len, true);
  return NULL;
}

/* ---- starting ---- */

/* mkdir base/nbdfs-RANDOM, mode 0700, into dir; a random name that is
 * taken (by chance or planted) is simply another try.  -1 + errno. */
static int make_private_dir(char *dir, size_t len, const char *base)
{
  for (int tries = 0; tries < 32; tries++) {
    uint32_t r;
    if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r)
      r = (uint32_t)getpid() * 2654435761u + (uint32_t)tries; /* still unique per try */
    if (snprintf(dir, len, "%s/nbdfs-%08x", base, r) >= (int)len) {
      errno = ENAMETOOLONG;
      return -1;
    }
    if (mkdir(dir, 0700) == 0)
      return 0;
    if (errno != EEXIST)
      return -1;
  }
  return -1; /* errno: EEXIST */
}

/* A private directory for the socket: the runtime directory if there is
 * one (short paths: sun_path holds 108 bytes), else the temporary one. */
static int make_socket_dir(struct server_process *sp, char *err, size_t errlen)
{
  const char *bases[] = { getenv("XDG_RUNTIME_DIR"), getenv("TMPDIR"), "/tmp" };
  const size_t sun_len = sizeof ((struct sockaddr_un *)0)->sun_path;
  for (size_t i = 0; i < sizeof bases / sizeof bases[0]; i++) {
    const char *b = bases[i];
    /* base + "/nbdfs-" + 8 hex digits + "/sock" and its NUL must fit */
    if (!b || b[0] != '/' || strlen(b) + 7 + 8 + 5 + 1 > sun_len)
      continue;
    if (make_private_dir(sp->dir, sizeof sp->dir, b) == 0) {
      snprintf(sp->sock, sizeof sp->sock, "%s/sock", sp->dir);
      return 0;
    }
  }
  snprintf(err, errlen, "cannot create a directory for the server's socket: %s", strerror(errno));
  sp->dir[0] = '\0';
  return -1;
}

static int listen_socket(struct server_process *sp, char *err, size_t errlen)
{
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  memcpy(sa.sun_path, sp->sock, strlen(sp->sock) + 1); /* make_socket_dir checked the length */
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 64) < 0) {
    snprintf(err, errlen, "cannot listen on %s: %s", sp->sock, strerror(errno));
    if (fd >= 0)
      close(fd);
    return -1;
  }
  return fd;
}

/* In the child, before exec: only async-signal-safe calls (nbdfs has no
 * other threads yet, but keep to the rule).  Reports errno on status_fd. */
static void __attribute__((noreturn))
child_exec(char *const argv[], enum server_process_kind kind, int conn_fd, int log_wr,
           int status_fd, pid_t parent)
{
  int e;
  setpgid(0, 0);
  /* No orphan: nbdfs killed without stopping us stops us too. */
  if (prctl(PR_SET_PDEATHSIG, SIGTERM) < 0 || getppid() != parent)
    goto fail;
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  signal(SIGPIPE, SIG_DFL);
  signal(SIGINT, SIG_DFL);
  signal(SIGTERM, SIG_DFL);
  signal(SIGHUP, SIG_DFL);
  int null = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (null < 0)
    goto fail;
  if (kind == SERVER_PROCESS_STDIO) {
    if (dup2(conn_fd, 0) < 0 || dup2(conn_fd, 1) < 0)
      goto fail;
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
  } else {
    if (dup2(null, 0) < 0 || dup2(log_wr, 1) < 0)
      goto fail;
    if (conn_fd == 3) {
      if (fcntl(3, F_SETFD, 0) < 0)
        goto fail;
    } else if (dup2(conn_fd, 3) < 0) {
      goto fail;
    }
    char pid[24];
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    if (setenv("LISTEN_PID", pid, 1) < 0 || setenv("LISTEN_FDS", "1", 1) < 0 ||
        setenv("LISTEN_FDNAMES", "nbd", 1) < 0)
      goto fail;
  }
  if (dup2(log_wr, 2) < 0)
    goto fail;
  execvp(argv[0], argv);
fail:
  e = errno;
  if (write(status_fd, &e, sizeof e) < 0) { /* the parent sees EOF instead */ }
  _exit(127);
}

struct server_process *server_process_start(char *const argv[], enum server_process_kind kind,
                                            char *err, size_t errlen)
{
  struct server_process *sp = calloc(1, sizeof *sp);
  if (!sp) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  sp->kind = kind;
  sp->pidfd = sp->fd = sp->log_rd = -1;
  sp->stop_pipe[0] = sp->stop_pipe[1] = -1;
  const char *base = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0];
  snprintf(sp->desc, sizeof sp->desc, "server '%.100s'", base);

  int conn_fd = -1, mine = -1, logp[2] = { -1, -1 }, status[2] = { -1, -1 };
  if (kind == SERVER_PROCESS_ACTIVATE) {
    if (make_socket_dir(sp, err, errlen) < 0 || (conn_fd = listen_socket(sp, err, errlen)) < 0)
      goto fail;
  } else {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
      snprintf(err, errlen, "cannot create a socket pair: %s", strerror(errno));
      goto fail;
    }
    mine = sv[0];
    conn_fd = sv[1];
  }
  if (pipe2(logp, O_CLOEXEC) < 0 || pipe2(status, O_CLOEXEC) < 0 ||
      pipe2(sp->stop_pipe, O_CLOEXEC) < 0) {
    snprintf(err, errlen, "cannot create pipes: %s", strerror(errno));
    goto fail;
  }
  pid_t parent = getpid();
  sp->pid = fork();
  if (sp->pid < 0) {
    snprintf(err, errlen, "cannot start %s: %s", sp->desc, strerror(errno));
    goto fail;
  }
  if (sp->pid == 0)
    child_exec(argv, kind, conn_fd, logp[1], status[1], parent);
  sp->state = SP_RUNNING;
  close(conn_fd); /* the child's now: when it dies, connecting fails at once */
  conn_fd = -1;
  close(logp[1]);
  close(status[1]);
  logp[1] = status[1] = -1;
  sp->log_rd = logp[0];
  int e = 0;
  ssize_t n;
  while ((n = read(status[0], &e, sizeof e)) < 0 && errno == EINTR)
    ;
  close(status[0]);
  status[0] = -1;
  if (n == (ssize_t)sizeof e) {
    waitpid(sp->pid, NULL, 0);
    sp->state = SP_EXITED;
    snprintf(err, errlen, "cannot run '%s': %s", argv[0], strerror(e));
    goto fail;
  }
  snprintf(sp->desc + strlen(sp->desc), sizeof sp->desc - strlen(sp->desc), " (pid %d)",
           (int)sp->pid);
  sp->pidfd = (int)syscall(SYS_pidfd_open, sp->pid, 0);
  sp->fd = mine;
  /* Signals are the main thread's business: one reaching this thread
   * would end nbdfs without an orderly unmount. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  if (pthread_create(&sp->log_thread, NULL, log_main, sp) == 0)
    sp->log_running = true;
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (!sp->log_running)
    log_warn("%s: cannot start the thread that logs its output", sp->desc);
  log_info("started %s", sp->desc);
  return sp;

fail:
  for (int *fd = (int[]){ conn_fd, mine, logp[0], logp[1], status[0], status[1] }, i = 0; i < 6;
       i++)
    if (fd[i] >= 0)
      close(fd[i]);
  server_process_stop(sp, 0);
  server_process_free(sp);
  return NULL;
}

const char *server_process_socket(const struct server_process *sp) { return sp->sock; }
const char *server_process_desc(const struct server_process *sp) { return sp->desc; }
int server_process_exit_fd(const struct server_process *sp) { return sp->pidfd; }

int server_process_take_fd(struct server_process *sp)
{
  int fd = sp->fd;
  sp->fd = -1;
  return fd;
}

/* ---- watching and stopping ---- */

static void log_end(struct server_process *sp, int status)
{
  bool expected = sp->state == SP_STOPPING;
  if (WIFEXITED(status) && (WEXITSTATUS(status) == 0 || expected))
    (expected ? log_info : log_warn)("%s exited with status %d", sp->desc, WEXITSTATUS(status));
  else if (WIFEXITED(status))
    log_error("%s exited with status %d; I/O fails from now on", sp->desc, WEXITSTATUS(status));
  else if (expected)
    log_info("%s ended by signal %d", sp->desc, WTERMSIG(status));
  else
    log_error("%s was killed by signal %d; I/O fails from now on", sp->desc, WTERMSIG(status));
}

bool server_process_reap(struct server_process *sp)
{
  if (sp->state == SP_EXITED || sp->state == SP_NONE)
    return true;
  int status;
  pid_t r;
  while ((r = waitpid(sp->pid, &status, WNOHANG)) < 0 && errno == EINTR)
    ;
  if (r == 0)
    return false;
  if (r == sp->pid)
    log_end(sp, status);
  sp->state = SP_EXITED;
  return true;
}

/* Wait up to ms for it to exit. */
static bool wait_exit(struct server_process *sp, int ms)
{
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  while (!server_process_reap(sp)) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    int left = ms - (int)((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000);
    if (left <= 0)
      return false;
    if (sp->pidfd >= 0) {
      struct pollfd p = { .fd = sp->pidfd, .events = POLLIN };
      poll(&p, 1, left);
    } else {
      usleep(20000);
    }
  }
  return true;
}

void server_process_stop(struct server_process *sp, int grace_s)
{
  if (sp->state == SP_RUNNING) {
    sp->state = SP_STOPPING;
    /* --command: our end closing is its EOF, which is how such servers end. */
    if (sp->fd >= 0) {
      close(sp->fd);
      sp->fd = -1;
    }
    kill(sp->pid, SIGTERM);
    if (!wait_exit(sp, grace_s * 1000)) {
      log_warn("%s did not exit within %d s of SIGTERM; killing it", sp->desc, grace_s);
      kill(sp->pid, SIGKILL);
      wait_exit(sp, 10000);
    }
  }
  if (sp->log_running) {
    if (write(sp->stop_pipe[1], "x", 1) < 0) { /* the thread then waits for EOF */ }
    pthread_join(sp->log_thread, NULL);
    sp->log_running = false;
  }
  if (sp->sock[0])
    unlink(sp->sock);
  if (sp->dir[0])
    rmdir(sp->dir);
  sp->sock[0] = sp->dir[0] = '\0';
}

void server_process_free(struct server_process *sp)
{
  if (!sp)
    return;
  for (int *fd = (int[]){ sp->pidfd, sp->fd, sp->log_rd, sp->stop_pipe[0], sp->stop_pipe[1] },
           i = 0;
       i < 5; i++)
    if (fd[i] >= 0)
      close(fd[i]);
  free(sp);
}
