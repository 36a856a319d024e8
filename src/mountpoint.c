/* mountpoint.c: resolve the mountpoint once, hold it, re-check it. */
#include "mountpoint.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "names.h"

#define FUSE_CONF "/etc/fuse.conf"

/* Is the directory held by fd empty?  -1 when it cannot be read. */
static int held_dir_empty(int fd)
{
  int d = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (d < 0)
    return -1;
  DIR *dir = fdopendir(d);
  if (!dir) {
    close(d);
    return -1;
  }
  struct dirent *e;
  int empty = 1;
  while (empty && (e = readdir(dir)))
    empty = !strcmp(e->d_name, ".") || !strcmp(e->d_name, "..");
  closedir(dir);
  return empty;
}

static bool hides_contents(const struct mountpoint *m)
{
  return m->form != MOUNTPOINT_NAKED;
}

static int check_empty(const struct mountpoint *m, char *err, size_t errlen)
{
  if (m->nonempty || !hides_contents(m))
    return 0;
  int e = held_dir_empty(m->held);
  if (e == 1)
    return 0;
  if (e < 0)
    snprintf(err, errlen, "cannot read the directory %s: %s", m->dir, strerror(errno));
  else
    snprintf(err, errlen, "%s is not empty: mounting there would hide its contents (use an empty "
             "directory, or -o nonempty to hide them anyway)", m->dir);
  return -1;
}

/* Hold path (absolute, canonical) and remember what it is. */
static int hold(struct mountpoint *m, char *err, size_t errlen)
{
  struct stat st;
  m->held = open(m->dir, O_PATH | O_CLOEXEC);
  if (m->held < 0 || fstat(m->held, &st) < 0) {
    snprintf(err, errlen, "cannot open the mountpoint %s: %s", m->dir, strerror(errno));
    return -1;
  }
  m->dev = st.st_dev;
  m->ino = st.st_ino;
  return 0;
}

/* Detach the FUSE mount at path (lazily: nothing can use a dead one). */
static int unmount_dead(const char *path)
{
  if (geteuid() == 0)
    return umount2(path, MNT_DETACH);
  pid_t pid = fork();
  if (pid == 0) {
    int null = open("/dev/null", O_RDWR);
    if (null >= 0) {
      dup2(null, 1);
      dup2(null, 2);
    }
    execlp("fusermount3", "fusermount3", "-u", "-z", "--", path, (char *)NULL);
    _exit(127);
  }
  int status;
  if (pid < 0 || waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status))
    return -1;
  return 0;
}

/* A FUSE mount whose daemon died (kill -9, a crash) answers ENOTCONN:
 * after systemd restarts nbdfs, the mountpoint would look missing.  Clear
 * it (at mp itself, or at its directory for the DIR/NAME form). */
static void clear_dead_mount(const char *mp)
{
  /* Forced past the attribute cache: a dead mount's root may still have
   * attributes the kernel trusts for a while. */
  struct statx stx;
  if (statx(AT_FDCWD, mp, AT_STATX_FORCE_SYNC, STATX_TYPE, &stx) == 0 || errno != ENOTCONN)
    return;
  char *copy = strdup(mp);
  const char *tries[] = { mp, copy ? dirname(copy) : NULL };
  for (size_t i = 0; i < 2; i++) {
    if (tries[i] && unmount_dead(tries[i]) == 0) {
      fprintf(stderr, "nbdfs: cleared the dead FUSE mount at %s (its daemon had died)\n",
              tries[i]);
      break;
    }
  }
  free(copy);
}

int mountpoint_resolve(struct mountpoint *m, const char *mp, const char *export_name,
                       bool exports, bool nonempty, char *err, size_t errlen)
{
  clear_dead_mount(mp);
  memset(m, 0, sizeof *m);
  m->held = -1;
  m->nonempty = nonempty;
  struct stat st;
  char abs[PATH_MAX];
  if (stat(mp, &st) == 0) {
    if (!realpath(mp, abs)) {
      snprintf(err, errlen, "cannot resolve the mountpoint '%s': %s", mp, strerror(errno));
      return -1;
    }
    if (S_ISDIR(st.st_mode)) {
      m->form = exports ? MOUNTPOINT_EXPORTS : MOUNTPOINT_DIR;
    } else if (S_ISREG(st.st_mode) && !exports) {
      m->form = MOUNTPOINT_NAKED;
    } else {
      snprintf(err, errlen, exports ? "--exports needs a directory; '%s' is not one"
                                    : "the mountpoint '%s' is neither a directory nor a regular file",
               mp);
      return -1;
    }
    m->dir = strdup(abs);
    if (m->form == MOUNTPOINT_DIR)
      m->file_name = name_from_export(export_name, "disk");
  } else if (exports) {
    snprintf(err, errlen, "--exports needs an existing directory; '%s': %s", mp, strerror(errno));
    return -1;
  } else {
    /* DIR/NAME where DIR exists. */
    char *c1 = strdup(mp), *c2 = strdup(mp);
    if (!c1 || !c2) {
      free(c1);
      free(c2);
      snprintf(err, errlen, "out of memory");
      return -1;
    }
    char *dir = dirname(c1), *base = basename(c2);
    if (stat(dir, &st) == 0 && S_ISDIR(st.st_mode) && strcmp(base, "/") && strcmp(base, ".") &&
        strcmp(base, "..") && realpath(dir, abs)) {
      m->form = MOUNTPOINT_NAMED;
      m->dir = strdup(abs);
      m->file_name = strdup(base);
    } else {
      snprintf(err, errlen, "the mountpoint '%s' does not exist (nor does its directory)", mp);
    }
    free(c1);
    free(c2);
    if (!m->dir)
      return -1;
  }
  if (!m->dir || (m->form == MOUNTPOINT_DIR || m->form == MOUNTPOINT_NAMED ? !m->file_name : 0)) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  if (hold(m, err, errlen) < 0 || check_empty(m, err, errlen) < 0)
    return -1;
  return 0;
}

int mountpoint_recheck(const struct mountpoint *m, char *err, size_t errlen)
{
  char abs[PATH_MAX];
  struct stat st;
  if (!realpath(m->dir, abs) || strcmp(abs, m->dir) || stat(m->dir, &st) < 0 ||
      st.st_dev != m->dev || st.st_ino != m->ino) {
    snprintf(err, errlen, "the mountpoint %s was replaced while connecting; not mounting", m->dir);
    return -1;
  }
  return check_empty(m, err, errlen);
}

void mountpoint_free(struct mountpoint *m)
{
  if (m->held >= 0)
    close(m->held);
  free(m->dir);
  free(m->file_name);
  memset(m, 0, sizeof *m);
  m->held = -1;
}

/* Does /etc/fuse.conf have a user_allow_other line? */
static bool user_allow_other(void)
{
  FILE *f = fopen(FUSE_CONF, "r");
  if (!f)
    return false;
  char line[256];
  bool found = false;
  while (!found && fgets(line, sizeof line, f)) {
    char *s = line + strspn(line, " \t");
    size_t n = strcspn(s, " \t\r\n#");
    found = n == strlen("user_allow_other") && !strncmp(s, "user_allow_other", n);
  }
  fclose(f);
  return found;
}

int mountpoint_check_allow_other(bool allow_other, char *err, size_t errlen)
{
  if (!allow_other || geteuid() == 0 || user_allow_other())
    return 0;
  snprintf(err, errlen, "-o allow_other (or allow_root) is only allowed to users when %s has a "
           "'user_allow_other' line; ask your administrator to add it, or mount as root",
           FUSE_CONF);
  return -1;
}
