/* daemon.c: detaching, with the start's outcome passed to the caller. */
#include "daemon.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int report_fd = -1;

int daemon_detach(void)
{
  int p[2];
  if (pipe2(p, O_CLOEXEC) < 0) {
    fprintf(stderr, "nbdfs: cannot detach: %s\n", strerror(errno));
    return -1;
  }
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) {
    fprintf(stderr, "nbdfs: cannot detach: %s\n", strerror(errno));
    close(p[0]);
    close(p[1]);
    return -1;
  }
  if (pid > 0) {
    close(p[1]);
    unsigned char status = 1;
    ssize_t n;
    while ((n = read(p[0], &status, 1)) < 0 && errno == EINTR)
      ;
    _exit(n == 1 ? status : 1);
  }
  close(p[0]);
  report_fd = p[1];
  setsid();
  return 0;
}

void daemon_report(int status)
{
  if (report_fd < 0)
    return;
  if (status == 0) {
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (null >= 0) {
      fflush(NULL);
      dup2(null, 0);
      dup2(null, 1);
      dup2(null, 2);
      close(null);
    }
  }
  unsigned char s = (unsigned char)status;
  if (write(report_fd, &s, 1) < 0) { /* the parent is gone: nobody to tell */ }
  close(report_fd);
  report_fd = -1;
}
