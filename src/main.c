/* main.c: start-up, mount, the FUSE request loop, and an orderly exit. */
#define FUSE_USE_VERSION 34
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <fuse_lowlevel.h>
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "extents.h"
#include "fs.h"
#include "log.h"
#include "loop.h"
#include "names.h"
#include "options.h"
#include "pool.h"
#include "uri.h"

/* Where to mount and what the file is called. */
struct mount_target {
  char *dir;        /* the directory or file FUSE mounts on */
  char *file_name;  /* NULL: naked (mounted over a regular file) */
};

static bool dir_is_empty(const char *path)
{
  DIR *d = opendir(path);
  if (!d)
    return false;
  struct dirent *e;
  bool empty = true;
  while (empty && (e = readdir(d)))
    empty = !strcmp(e->d_name, ".") || !strcmp(e->d_name, "..");
  closedir(d);
  return empty;
}

static int resolve_mountpoint(const char *mp, const char *export_name, struct mount_target *t)
{
  struct stat st;
  char abs[PATH_MAX];
  if (stat(mp, &st) == 0) {
    if (!realpath(mp, abs)) {
      fprintf(stderr, "nbdfs: cannot resolve mountpoint '%s': %s\n", mp, strerror(errno));
      return -1;
    }
    t->dir = strdup(abs);
    if (S_ISDIR(st.st_mode))
      t->file_name = name_from_export(export_name, "disk");
    else if (S_ISREG(st.st_mode))
      t->file_name = NULL;
    else {
      fprintf(stderr, "nbdfs: mountpoint '%s' is neither a directory nor a regular file\n", mp);
      return -1;
    }
    return 0;
  }
  /* DIR/NAME where DIR exists. */
  char *c1 = strdup(mp), *c2 = strdup(mp);
  char *dir = dirname(c1), *base = basename(c2);
  int r = -1;
  if (stat(dir, &st) == 0 && S_ISDIR(st.st_mode) && strcmp(base, "/") && strcmp(base, ".") &&
      strcmp(base, "..") && realpath(dir, abs)) {
    /* Mounting on DIR hides what it holds: only do that to an empty one,
     * so a typo cannot cover /tmp or /. */
    if (!dir_is_empty(abs)) {
      fprintf(stderr, "nbdfs: '%s' does not exist, and its directory %s is not empty (mounting there would hide its contents); give an existing or empty directory\n",
              mp, abs);
    } else {
      t->dir = strdup(abs);
      t->file_name = strdup(base);
      r = 0;
    }
  } else {
    fprintf(stderr, "nbdfs: mountpoint '%s' does not exist (nor does its parent directory)\n", mp);
  }
  free(c1);
  free(c2);
  return r;
}

static int write_pidfile(const char *path)
{
  FILE *f = fopen(path, "w");
  if (!f || fprintf(f, "%d\n", (int)getpid()) < 0 || fclose(f) != 0) {
    log_error("cannot write pid file %s: %s", path, strerror(errno));
    return -1;
  }
  return 0;
}

/* The FUSE device as seen by one worker loop. */
struct fuse_source {
  struct loop_source src;
  struct fuse_session *se;
  struct fuse_buf buf;
  int endfd;  /* told when the session ends (unmounted) */
};

/* Read and dispatch FUSE requests until none is waiting.  Dispatching only
 * sends to the server; replies are sent when the server's answers arrive. */
static void on_fuse(void *arg, uint32_t events)
{
  (void)events;
  struct fuse_source *fsrc = arg;
  nbd_conn_cork();
  for (int i = 0; i < 64; i++) {
    int r = fuse_session_receive_buf(fsrc->se, &fsrc->buf);
    if (r == -EAGAIN)
      break;
    if (r == -EINTR)
      continue;
    if (r <= 0) {
      uint64_t one = 1;
      loop_remove(&fsrc->src);
      if (write(fsrc->endfd, &one, sizeof one) < 0) { /* main also stops on signals */ }
      break;
    }
    fuse_session_process_buf(fsrc->se, &fsrc->buf);
  }
  nbd_conn_uncork();
}

static void stop_fuse_source(void *arg)
{
  struct fuse_source *fsrc = arg;
  loop_remove(&fsrc->src);
}

/* Wait for a signal or the end of the session. */
static void wait_for_end(int endfd)
{
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  sigaddset(&set, SIGQUIT);
  int sfd = signalfd(-1, &set, SFD_CLOEXEC);
  struct pollfd p[2] = { { .fd = sfd, .events = POLLIN }, { .fd = endfd, .events = POLLIN } };
  while (poll(p, 2, -1) < 0 && errno == EINTR)
    ;
  if (p[0].revents & POLLIN) {
    struct signalfd_siginfo si;
    if (read(sfd, &si, sizeof si) == sizeof si)
      log_info("received signal %u, unmounting", si.ssi_signo);
  }
  close(sfd);
}

/* Connect, mount, serve until unmounted or signalled, then clean up. */
static int serve(struct nbdfs_options *opt, struct nbd_uri *uri, const struct tls_options *tls,
                 struct tls_creds *creds, const char *argv0)
{
  char err[1024];
  int rc = 1;
  struct mount_target target = { 0 };
  if (opt->exports) {
    if (uri->export_name[0]) {
      fprintf(stderr, "nbdfs: --exports mounts a whole server: the URI must not name an export ('%s')\n",
              uri->export_name);
      rc = 2;
      goto out_early;
    }
    struct stat st;
    char abs[PATH_MAX];
    if (stat(opt->mountpoint, &st) < 0 || !S_ISDIR(st.st_mode) || !realpath(opt->mountpoint, abs)) {
      fprintf(stderr, "nbdfs: --exports needs an existing directory, not '%s'\n", opt->mountpoint);
      rc = 1;
      goto out_early;
    }
    target.dir = strdup(abs);
  } else if (resolve_mountpoint(opt->mountpoint, uri->export_name, &target) < 0) {
    rc = 1;
      goto out_early;
  }
  char pidabs[PATH_MAX];
  if (opt->pidfile) {
    /* fuse_daemonize changes to /, so keep an absolute path. */
    if (opt->pidfile[0] != '/') {
      char cwd[PATH_MAX];
      if (!getcwd(cwd, sizeof cwd) ||
          snprintf(pidabs, sizeof pidabs, "%s/%s", cwd, opt->pidfile) >= (int)sizeof pidabs) {
        fprintf(stderr, "nbdfs: pid file path too long\n");
        rc = 2;
      goto out_early;
      }
      opt->pidfile = pidabs;
    }
  }

  struct fs fs = { .direct_io = opt->direct_io, .readonly = opt->readonly, .uid = getuid(),
                   .gid = getgid(), .uri = uri,
                   .pool_opts = { .uri = uri, .connections = opt->connections,
                                  .timeout_s = opt->timeout_s,
                                  .connect_timeout_s = opt->connect_timeout_s,
                                  .reconnect_delay_s = opt->reconnect_delay_s,
                                  .no_reconnect = opt->no_reconnect,
                                  .retry_s = opt->retry_s,
                                  .replay_limit = (uint64_t)opt->replay_limit_mib << 20,
                                  .tls_mode = tls->mode, .tls = creds } };
  fs_init_table(&fs);
  clock_gettime(CLOCK_REALTIME, &fs.mount_time);
  const char *what;
  /* Talk to the server before mounting, so a bad one leaves nothing mounted. */
  if (opt->exports) {
    fs.mode = FS_EXPORTS;
    if (fs_list_exports(&fs, err, sizeof err) < 0) {
      fprintf(stderr, "nbdfs: %s\n", err);
      fs_free(&fs);
      rc = 1;
      goto out_early;
    }
    what = "exports of the server";
  } else {
    struct nbd_pool *pool;
    fs.pool_opts.export_name = uri->export_name;
    if (nbd_pool_open(&pool, &fs.pool_opts, err, sizeof err) < 0) {
      fprintf(stderr, "nbdfs: %s\n", err);
      fs_free(&fs);
      rc = 1;
      goto out_early;
    }
    const struct nbd_export_info *info = nbd_pool_info(pool);
    int nconn = nbd_pool_connections(pool, NULL);
    log_info("%s: %llu bytes, %d connection%s, block sizes %u/%u/%u%s", nbd_pool_desc(pool),
             (unsigned long long)info->size, nconn, nconn == 1 ? "" : "s", info->min_block,
             info->pref_block, info->max_block,
             nbd_pool_session(pool)->structured ? ", structured replies" : "");
    fs.mode = target.file_name ? FS_SINGLE : FS_NAKED;
    struct fs_file *f = extents_attach(pool) == 0 ? fs_add_file(&fs, target.file_name, uri->export_name)
                                                  : NULL;
    if (!f) {
      fprintf(stderr, "nbdfs: out of memory\n");
      nbd_pool_close(pool);
      extents_detach(pool);
      nbd_pool_free(pool);
      fs_free(&fs);
      rc = 1;
      goto out_early;
    }
    fs_file_set_pool(&fs, f, pool);
    what = nbd_pool_desc(pool);
  }

  /* FUSE arguments: program name, our defaults, then the user's -o. */
  struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
  fuse_opt_add_arg(&args, argv0);
  fuse_opt_add_arg(&args, "-o");
  fuse_opt_add_arg(&args, "fsname=nbdfs,subtype=nbdfs,default_permissions");
  for (int i = 0; i < opt->nfuse_opts; i++) {
    fuse_opt_add_arg(&args, "-o");
    fuse_opt_add_arg(&args, opt->fuse_opts[i]);
  }
  rc = 1;
  int nloops = 0, endfd = -1;
  bool fs_down = false;
  struct nbd_loop **loops = calloc((size_t)opt->threads, sizeof *loops);
  struct fuse_source *fsrcs = calloc((size_t)opt->threads, sizeof *fsrcs);
  struct fuse_session *se = fuse_session_new(&args, &fs_ops, sizeof fs_ops, &fs);
  if (!se) {
    fprintf(stderr, "nbdfs: bad FUSE options (see above)\n");
    goto out_fs;
  }
  fs.se = se;
  if (fuse_session_mount(se, target.dir) != 0) {
    fprintf(stderr, "nbdfs: cannot mount on %s (see above)\n", target.dir);
    goto out_session;
  }
  if (fuse_daemonize(opt->foreground) != 0)
    goto out_unmount;
  if (!opt->foreground)
    log_use_syslog();
  if (opt->pidfile && write_pidfile(opt->pidfile) < 0)
    goto out_unmount;

  /* Signals are read from a signalfd by this thread; workers block them. */
  sigset_t sigs;
  sigemptyset(&sigs);
  int stop_signals[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT };
  for (unsigned i = 0; i < sizeof stop_signals / sizeof stop_signals[0]; i++)
    sigaddset(&sigs, stop_signals[i]);
  pthread_sigmask(SIG_BLOCK, &sigs, NULL);
  /* A shell starts background jobs with SIGINT ignored, and an ignored
   * signal never reaches a signalfd: restore the default (now blocked). */
  for (unsigned i = 0; i < sizeof stop_signals / sizeof stop_signals[0]; i++)
    signal(stop_signals[i], SIG_DFL);
  endfd = eventfd(0, EFD_CLOEXEC);
  int ffd = fuse_session_fd(se);
  fcntl(ffd, F_SETFL, fcntl(ffd, F_GETFL) | O_NONBLOCK);
  for (; loops && fsrcs && nloops < opt->threads; nloops++)
    if (!(loops[nloops] = loop_new(nloops, opt->timeout_s && opt->timeout_s < 4 ? 250 : 1000)))
      break;
  fs.loops = loops;
  fs.nloops = nloops;
  if (endfd < 0 || nloops < opt->threads ||
      (fs.mode != FS_EXPORTS && nbd_pool_attach(fs.files[0]->pool, loops, nloops) < 0) ||
      fs_reply_thread_start() < 0 || fs_start(&fs) < 0) {
    log_error("cannot start worker threads");
    goto out_stop;
  }
  for (int i = 0; i < nloops; i++) {
    fsrcs[i] = (struct fuse_source){ .src = { .fd = ffd, .fn = on_fuse, .arg = &fsrcs[i],
                                               .events = EPOLLIN },
                                     .se = se, .endfd = endfd };
    if (loop_add(loops[i], &fsrcs[i].src, true) < 0) {
      log_error("cannot watch the FUSE device");
      goto out_stop;
    }
  }
  log_info("mounted %s on %s%s%s", what, target.dir, target.file_name ? "/" : "",
           target.file_name ? target.file_name : "");

  wait_for_end(endfd);
  rc = 0;

out_stop:
  /* Stop taking FUSE requests (and wait until no worker is still reading
   * one), answer everything taken, flush, disconnect; then stop the
   * workers and unmount. */
  fuse_session_exit(se);
  for (int i = 0; i < nloops; i++) /* on its own loop: it may be removing it too */
    if (loop_post(loops[i], stop_fuse_source, &fsrcs[i]) < 0)
      loop_remove(&fsrcs[i].src);
  for (int i = 0; i < nloops; i++)
    loop_barrier(loops[i]);
  if (fs_shutdown(&fs) != 0)
    rc = 1; /* acknowledged writes may not be durable */
  fs_reply_thread_stop();
  fs_down = true;
  for (int i = 0; i < nloops; i++)
    loop_free(loops[i]);
  fs_free_handles();
  for (int i = 0; i < nloops; i++)
    free(fsrcs[i].buf.mem);
out_unmount:
  fuse_session_unmount(se);
out_session:
  fuse_session_destroy(se);
out_fs:
  if (!fs_down && fs_shutdown(&fs) != 0)
    rc = 1;
  log_flush_suppressed();
  fs_free(&fs);
  free(loops);
  free(fsrcs);
  if (endfd >= 0)
    close(endfd);
  fuse_opt_free_args(&args);
  if (opt->pidfile && rc == 0)
    unlink(opt->pidfile);
out_early:
  free(target.dir);
  free(target.file_name);
  return rc;
}

int main(int argc, char **argv)
{
  struct nbdfs_options opt;
  int rc = options_parse(argc, argv, &opt);
  if (rc != 0) {
    options_free(&opt);
    return rc > 0 ? 0 : 2;
  }
  signal(SIGPIPE, SIG_IGN);

  char err[1024];
  struct nbd_uri uri;
  struct tls_options tls;
  struct tls_creds *creds = NULL;
  if (nbd_uri_parse(opt.uri, &uri, err, sizeof err) < 0) {
    fprintf(stderr, "nbdfs: %s\n", err);
    rc = 2;
  } else if (tls_setup(&uri, &opt.tls, &tls, &creds, err, sizeof err) < 0) {
    fprintf(stderr, "nbdfs: %s\n", err);
    rc = 2;
  } else {
    rc = serve(&opt, &uri, &tls, creds, argv[0]);
  }
  tls_creds_free(creds);
  nbd_uri_free(&uri);
  options_free(&opt);
  return rc;
}
