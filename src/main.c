/* main.c: start-up, mount, the FUSE request loop, and an orderly exit. */
#define FUSE_USE_VERSION 34
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <fuse_lowlevel.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include "daemon.h"
#include "extents.h"
#include "fs.h"
#include "fuse-io.h"
#include "fuse-rx.h"
#include "log.h"
#include "loop.h"
#include "mountpoint.h"
#include "notify.h"
#include "options.h"
#include "pool.h"
#include "server-process.h"
#include "uri.h"

/* How long a server nbdfs started gets to exit after SIGTERM. */
#define SERVER_STOP_GRACE_S 10

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
  struct nbd_loop *loop; /* its worker (src.loop is NULL while parked) */
  struct fuse_session *se;
  struct fuse_rx *rx; /* the buffers requests are read into */
  int endfd;  /* told when the session ends (unmounted) */
  bool stopped; /* the session is over: never watched again (worker only) */
};

static void on_fuse(void *arg, uint32_t events);

/* Enough was answered (fs_admit): watch the device again, on the worker. */
static void unpark_fuse_source(void *arg)
{
  struct fuse_source *fsrc = arg;
  if (fsrc->stopped || fsrc->src.loop)
    return;
  if (loop_add(fsrc->loop, &fsrc->src, true) < 0) {
    log_error("cannot watch the FUSE device again");
    return;
  }
  on_fuse(fsrc, EPOLLIN); /* what queued up meanwhile (the wakeup is edge-free) */
}

static void resume_fuse_source(void *arg)
{
  struct fuse_source *fsrc = arg;
  if (loop_post(fsrc->loop, unpark_fuse_source, fsrc) < 0)
    log_error("cannot resume reading FUSE requests");
}

/* Read and dispatch FUSE requests until none is waiting.  Dispatching only
 * sends to the server; replies are sent when the server's answers arrive. */
static void on_fuse(void *arg, uint32_t events)
{
  (void)events;
  struct fuse_source *fsrc = arg;
  nbd_conn_cork();
  for (int i = 0; i < 64; i++) {
    if (!fs_admit(resume_fuse_source, fsrc)) {
      loop_remove(&fsrc->src); /* parked until resume_fuse_source */
      break;
    }
    int r = fuse_rx_receive(fsrc->rx, fsrc->se);
    if (r == -EAGAIN)
      break;
    if (r == -EINTR)
      continue;
    if (r <= 0) {
      uint64_t one = 1;
      fsrc->stopped = true;
      loop_remove(&fsrc->src);
      if (write(fsrc->endfd, &one, sizeof one) < 0) { /* main also stops on signals */ }
      break;
    }
    fuse_rx_process(fsrc->rx, fsrc->se);
  }
  nbd_conn_uncork();
}

static void stop_fuse_source(void *arg)
{
  struct fuse_source *fsrc = arg;
  fsrc->stopped = true;
  loop_remove(&fsrc->src);
}

/* Wait for a signal or the end of the session.  A server nbdfs started
 * that exits meanwhile makes I/O fail at once; the mount stays until
 * unmounted (so nothing that holds the file open is surprised).  SIGUSR1
 * logs every export's statistics and carries on. */
static bool wait_for_end(struct fs *fs, int endfd, struct server_process *sp)
{
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  sigaddset(&set, SIGQUIT);
  sigaddset(&set, SIGUSR1);
  int sfd = signalfd(-1, &set, SFD_CLOEXEC);
  bool server_up = sp != NULL, signalled = false;
  for (;;) {
    int xfd = server_up ? server_process_exit_fd(sp) : -1;
    struct pollfd p[3] = { { .fd = sfd, .events = POLLIN }, { .fd = endfd, .events = POLLIN },
                           { .fd = xfd, .events = POLLIN } };
    int r = poll(p, 3, server_up && xfd < 0 ? 1000 : -1);
    if (r < 0 && errno == EINTR)
      continue;
    if (p[0].revents & POLLIN) {
      struct signalfd_siginfo si;
      if (read(sfd, &si, sizeof si) != sizeof si)
        continue;
      if (si.ssi_signo == SIGUSR1) {
        fs_log_stats(fs);
        continue;
      }
      log_info("received signal %u, unmounting", si.ssi_signo);
      signalled = true;
      break;
    }
    if (p[1].revents & POLLIN)
      break;
    if (server_up && server_process_reap(sp)) {
      server_up = false;
      fs_server_gone(fs);
      notify_status("%s has exited; I/O fails until unmounted", server_process_desc(sp));
    }
  }
  close(sfd);
  return signalled;
}

/* The page cache reads ahead at most the mount's bdi read_ahead_kb, 128 KiB
 * for FUSE (the INIT reply can only lower it).  1 MiB, the largest request,
 * makes cold sequential reads about 1.6x faster here.  Only root may write
 * it: otherwise the default stays, quietly.  The bdi is the mount's own and
 * goes with it. */
#define READAHEAD_KB 1024

static void tune_readahead(const char *path)
{
  struct stat st;
  if (stat(path, &st) < 0)
    return;
  char sys[96];
  snprintf(sys, sizeof sys, "/sys/class/bdi/%u:%u/read_ahead_kb", major(st.st_dev),
           minor(st.st_dev));
  int fd = open(sys, O_WRONLY | O_CLOEXEC);
  if (fd < 0) {
    log_debug("readahead stays at the default: %s: %s", sys, strerror(errno));
    return;
  }
  char v[16];
  int n = snprintf(v, sizeof v, "%d", READAHEAD_KB);
  if (write(fd, v, (size_t)n) != n)
    log_debug("cannot set %s: %s", sys, strerror(errno));
  else
    log_debug("readahead set to %d KiB (%s)", READAHEAD_KB, sys);
  close(fd);
}

/* How long a signalled stop waits for the kernel's dirty pages to be
 * written back before it goes on (a stalled server must not stall it). */
#define WRITE_BACK_BOUND_S 30

/* Stopping on a signal with the writeback cache, the mount still there:
 * fsync every file open for writing while the workers still serve, so
 * that its dirty pages reach the server before the final FLUSH.  On a
 * thread of its own, so that a stalled server cannot stall the stop; the
 * thread touches nothing but its own copy of the paths. */
struct write_back {
  char **paths;
  pthread_mutex_t lock;
  pthread_cond_t cond;
  int rc;
  bool done, abandoned; /* whoever comes second frees it */
};

static void write_back_free(struct write_back *wb)
{
  for (char **p = wb->paths; p && *p; p++)
    free(*p);
  free(wb->paths);
  pthread_mutex_destroy(&wb->lock);
  pthread_cond_destroy(&wb->cond);
  free(wb);
}

static void *write_back_main(void *arg)
{
  struct write_back *wb = arg;
  int rc = 0;
  for (char **p = wb->paths; *p; p++) {
    int fd = open(*p, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    /* fsync reports writeback errors from after the open: every page is
     * written back within it. */
    if (fd < 0 || fsync(fd) < 0) {
      log_error("writing back cached writes to %s failed (acknowledged writes are lost): %s",
                *p, strerror(errno));
      rc = -1;
    }
    if (fd >= 0)
      close(fd);
  }
  pthread_mutex_lock(&wb->lock);
  wb->rc = rc;
  wb->done = true;
  bool abandoned = wb->abandoned;
  pthread_cond_signal(&wb->cond);
  pthread_mutex_unlock(&wb->lock);
  if (abandoned)
    write_back_free(wb);
  return NULL;
}

/* 0, or -1 when a file's pages could not be written or it took too long. */
static int write_back_bounded(struct fs *fs, const char *path)
{
  struct write_back *wb = calloc(1, sizeof *wb);
  if (!wb || !(wb->paths = fs_writable_paths(fs, path))) {
    free(wb); /* (its lock and condition are not made yet) */
    log_error("out of memory writing back cached writes");
    return -1;
  }
  pthread_mutex_init(&wb->lock, NULL);
  pthread_cond_init(&wb->cond, NULL);
  pthread_t t;
  if (pthread_create(&t, NULL, write_back_main, wb) != 0) {
    write_back_free(wb);
    return -1;
  }
  pthread_detach(t);
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += WRITE_BACK_BOUND_S;
  pthread_mutex_lock(&wb->lock);
  while (!wb->done && pthread_cond_timedwait(&wb->cond, &wb->lock, &until) == 0) {
  }
  bool done = wb->done;
  int rc = done ? wb->rc : -1;
  wb->abandoned = !done;
  pthread_mutex_unlock(&wb->lock);
  if (done)
    write_back_free(wb);
  else
    log_error("writing back cached writes did not finish within %d s; unmounting anyway",
              WRITE_BACK_BOUND_S);
  return rc;
}

/* systemd's STATUS= line follows the connections. */
static void on_pool_state(void *arg, const char *desc, int ready, int total, const char *why)
{
  (void)arg;
  if (!strcmp(why, "reconnected"))
    notify_status("%s: reconnected (%d of %d connections up)", desc, ready, total);
  else
    notify_status("%s: connection lost (%s); %d of %d connections up, reconnecting", desc, why,
                  ready, total);
}

/* Everything the start needs, set up in main and serve, freed by main. */
struct start {
  struct nbdfs_options *opt;
  struct mountpoint mp;
  struct server_process *sp; /* a server nbdfs started, or NULL */
  struct nbd_uri uri;
  bool have_uri;
  struct tls_options tls;
  struct tls_creds *creds;
  const char *argv0;
};

/* Connect, mount, serve until unmounted or signalled, then clean up.
 * Returns the exit status. */
static int serve(struct start *st)
{
  struct nbdfs_options *opt = st->opt;
  struct nbd_uri *uri = &st->uri;
  char err[1024];
  int rc = 1;
  bool single_conn = uri->transport == NBD_TRANSPORT_FD; /* cannot connect again */
  struct fs fs = { .cache = opt->cache, .readonly = opt->readonly,
                   .uid = opt->have_uid ? opt->uid : getuid(),
                   .gid = opt->have_gid ? opt->gid : getgid(),
                   .umask = opt->have_umask ? opt->umask : 022, .uri = uri,
                   .partitions = opt->partitions,
                   .pool_opts = { .uri = uri, .connections = single_conn ? 1 : opt->connections,
                                  .timeout_s = opt->timeout_s,
                                  .connect_timeout_s = opt->connect_timeout_s,
                                  .reconnect_delay_s = opt->reconnect_delay_s,
                                  .no_reconnect = opt->no_reconnect || single_conn,
                                  .retry_s = single_conn ? 0 : opt->retry_s,
                                  .replay_limit = (uint64_t)opt->replay_limit_mib << 20,
                                  .tls_mode = st->tls.mode, .tls = st->creds,
                                  .state_fn = on_pool_state } };
  fs_init_table(&fs);
  clock_gettime(CLOCK_REALTIME, &fs.mount_time);
  const char *what;
  /* Talk to the server before mounting, so a bad one leaves nothing mounted. */
  if (st->mp.form == MOUNTPOINT_EXPORTS) {
    fs.mode = FS_EXPORTS;
    if (fs_list_exports(&fs, err, sizeof err) < 0) {
      fprintf(stderr, "nbdfs: %s\n", err);
      fs_free(&fs);
      return 1;
    }
    what = "exports of the server";
  } else {
    struct nbd_pool *pool;
    fs.pool_opts.export_name = uri->export_name;
    if (nbd_pool_open(&pool, &fs.pool_opts, err, sizeof err) < 0) {
      fprintf(stderr, "nbdfs: %s\n", err);
      fs_free(&fs);
      return 1;
    }
    const struct nbd_export_info *info = nbd_pool_info(pool);
    int nconn = nbd_pool_connections(pool, NULL);
    log_info("%s: %llu bytes, %d connection%s, block sizes %u/%u/%u%s", nbd_pool_desc(pool),
             (unsigned long long)info->size, nconn, nconn == 1 ? "" : "s", info->min_block,
             info->pref_block, info->max_block,
             nbd_pool_session(pool)->structured ? ", structured replies" : "");
    fs.mode = st->mp.form == MOUNTPOINT_NAKED ? FS_NAKED : FS_SINGLE;
    struct fs_file *f = extents_attach(pool) == 0
                            ? fs_add_file(&fs, st->mp.file_name, uri->export_name)
                            : NULL;
    if (!f) {
      fprintf(stderr, "nbdfs: out of memory\n");
      nbd_pool_close(pool);
      extents_detach(pool);
      nbd_pool_free(pool);
      fs_free(&fs);
      return 1;
    }
    fs_file_set_pool(&fs, f, pool);
    what = nbd_pool_desc(pool);
  }

  /* FUSE arguments: program name, our defaults, then the user's -o. */
  struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
  fuse_opt_add_arg(&args, st->argv0);
  fuse_opt_add_arg(&args, "-o");
  fuse_opt_add_arg(&args, "fsname=nbdfs,subtype=nbdfs,default_permissions");
  for (int i = 0; i < opt->nfuse_opts; i++) {
    fuse_opt_add_arg(&args, "-o");
    fuse_opt_add_arg(&args, opt->fuse_opts[i]);
  }
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
  if (mountpoint_recheck(&st->mp, err, sizeof err) < 0) {
    fprintf(stderr, "nbdfs: %s\n", err);
    goto out_session;
  }
  if (fuse_session_mount(se, st->mp.dir) != 0) {
    fprintf(stderr, "nbdfs: cannot mount on %s (see above)\n", st->mp.dir);
    goto out_session;
  }
  /* Kill-privileges v2: files never carry set-user/group-ID bits, and with
   * it the kernel stops asking for security.capability on every write(). */
  if (fuse_io_install(se) < 0) {
    fprintf(stderr, "nbdfs: cannot set up the FUSE device's I/O\n");
    fuse_session_unmount(se);
    goto out_session;
  }
  /* Every path is absolute by now; do not keep the caller's directory busy. */
  if (chdir("/") < 0) { /* harmless: only keeps it busy */ }

  /* Signals are read from a signalfd by this thread; workers block them.
   * SIGUSR1 (log the statistics) too: unblocked anywhere, its default
   * action would end the daemon. */
  sigset_t sigs;
  sigemptyset(&sigs);
  int our_signals[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 };
  for (unsigned i = 0; i < sizeof our_signals / sizeof our_signals[0]; i++)
    sigaddset(&sigs, our_signals[i]);
  pthread_sigmask(SIG_BLOCK, &sigs, NULL);
  /* A shell starts background jobs with SIGINT ignored, and an ignored
   * signal never reaches a signalfd: restore the default (now blocked). */
  for (unsigned i = 0; i < sizeof our_signals / sizeof our_signals[0]; i++)
    signal(our_signals[i], SIG_DFL);
  endfd = eventfd(0, EFD_CLOEXEC);
  int ffd = fuse_session_fd(se);
  fcntl(ffd, F_SETFL, fcntl(ffd, F_GETFL) | O_NONBLOCK);
  for (; loops && fsrcs && nloops < opt->threads; nloops++)
    if (!(loops[nloops] = loop_new(nloops, opt->timeout_s && opt->timeout_s < 4 ? 250 : 1000,
                                     opt->busy_poll_us)))
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
                                     .loop = loops[i], .se = se, .rx = fuse_rx_new(),
                                     .endfd = endfd };
    if (!fsrcs[i].rx || loop_add(loops[i], &fsrcs[i].src, true) < 0) {
      log_error("cannot watch the FUSE device");
      goto out_stop;
    }
  }
  if (fs_naked_size(&fs, st->mp.dir) < 0)
    goto out_stop;
  if (opt->cache != CACHE_NONE)
    tune_readahead(st->mp.dir);
  /* The partition files are there before anyone is told the mount is. */
  if (fs.partitions)
    partitions_refresh_wait(&fs);
  if (opt->pidfile && write_pidfile(opt->pidfile) < 0)
    goto out_stop;
  /* From here on the log goes where the daemon's log belongs. */
  if (opt->log_file) {
    if (log_use_file(opt->log_file, err, sizeof err) < 0) {
      fprintf(stderr, "nbdfs: %s\n", err);
      goto out_stop;
    }
  } else if (!opt->foreground) {
    log_use_syslog();
  }
  log_info("mounted %s on %s%s%s", what, st->mp.dir, st->mp.file_name ? "/" : "",
           st->mp.file_name ? st->mp.file_name : "");
  notify_ready();
  daemon_report(0);
  rc = 0;

  bool signalled = wait_for_end(&fs, endfd, st->sp);
  notify_stopping();
  /* (Unmounting writes them back by itself.) */
  if (signalled && atomic_load(&fs.writeback) && write_back_bounded(&fs, st->mp.dir) < 0)
    rc = 1;

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
  /* Writes still held go to their pools now, whose close waits for them
   * like for any other write in flight. */
  fs_send_held_writes();
  if (fs_shutdown(&fs) != 0)
    rc = 1; /* acknowledged writes may not be durable */
  fs_reply_thread_stop();
  fs_down = true;
  for (int i = 0; i < nloops; i++)
    loop_free(loops[i]);
  fs_free_handles();
  for (int i = 0; i < nloops; i++)
    fuse_rx_free(fsrcs[i].rx);
  fuse_session_unmount(se);
out_session:
  fuse_session_destroy(se);
out_fs:
  if (!fs_down && fs_shutdown(&fs) != 0)
    rc = 1;
  fs_free(&fs);
  free(loops);
  free(fsrcs);
  if (endfd >= 0)
    close(endfd);
  fuse_opt_free_args(&args);
  if (opt->pidfile && rc == 0)
    unlink(opt->pidfile);
  return rc;
}

/* *path made absolute against the current directory; the new string is
 * also put in *owned, for the caller to free. */
static int absolutize(const char **path, char **owned, const char *what)
{
  if (!*path || (*path)[0] == '/')
    return 0;
  char *cwd = getcwd(NULL, 0);
  char *abs = NULL;
  if (!cwd || asprintf(&abs, "%s/%s", cwd, *path) < 0) {
    fprintf(stderr, "nbdfs: cannot make the %s path '%s' absolute: %s\n", what, *path,
            strerror(errno));
    free(cwd);
    return -1;
  }
  free(cwd);
  *path = *owned = abs;
  return 0;
}

/* A URI source: parse it (before detaching, so mistakes are shown).
 * Returns 0, or the exit status after printing why. */
static int parse_uri(struct start *st)
{
  struct nbdfs_options *opt = st->opt;
  char err[1024];
  if (nbd_uri_parse(opt->uri, &st->uri, err, sizeof err) < 0 ||
      nbd_uri_make_absolute(&st->uri, err, sizeof err) < 0) {
    fprintf(stderr, "nbdfs: %s\n", err);
    nbd_uri_free(&st->uri); /* what parsing filled in before it failed */
    return 2;
  }
  st->have_uri = true;
  if (opt->exports && st->uri.export_name[0]) {
    fprintf(stderr, "nbdfs: --exports mounts a whole server: the URI must not name an export ('%s')\n",
            st->uri.export_name);
    return 2;
  }
  if (opt->export_name) {
    if (st->uri.has_export && strcmp(st->uri.export_name, opt->export_name)) {
      fprintf(stderr, "nbdfs: the URI names the export '%s' but --export says '%s'\n",
              st->uri.export_name, opt->export_name);
      return 2;
    }
    free(st->uri.export_name);
    st->uri.export_name = strdup(opt->export_name);
    st->uri.has_export = true;
    if (!st->uri.export_name) {
      fprintf(stderr, "nbdfs: out of memory\n");
      return 1;
    }
  }
  return 0;
}

/* The server: start the command, or wrap the socket (a URI is parsed
 * already); then the TLS settings.  Returns 0, or the exit status after
 * printing why. */
static int open_source(struct start *st)
{
  struct nbdfs_options *opt = st->opt;
  char err[1024];
  const char *export_name = opt->export_name ? opt->export_name : "";
  int r = 0;
  switch (opt->source) {
  case SERVER_URI:
    break;
  case SERVER_ACTIVATE:
  case SERVER_COMMAND:
    st->sp = server_process_start(opt->server_argv,
                                  opt->source == SERVER_ACTIVATE ? SERVER_PROCESS_ACTIVATE
                                                                 : SERVER_PROCESS_STDIO,
                                  err, sizeof err);
    if (!st->sp) {
      fprintf(stderr, "nbdfs: %s\n", err);
      return 1;
    }
    r = opt->source == SERVER_ACTIVATE
            ? nbd_uri_from_socket(&st->uri, server_process_socket(st->sp),
                                  server_process_desc(st->sp), export_name)
            : nbd_uri_from_fd(&st->uri, server_process_take_fd(st->sp),
                              server_process_desc(st->sp), export_name);
    break;
  case SERVER_FD: {
    struct stat sb;
    if (fstat(opt->fd, &sb) < 0 || !S_ISSOCK(sb.st_mode)) {
      fprintf(stderr, "nbdfs: --fd %d is not a connected socket\n", opt->fd);
      return 2;
    }
    char label[64];
    snprintf(label, sizeof label, "the socket on fd %d", opt->fd);
    r = nbd_uri_from_fd(&st->uri, opt->fd, label, export_name);
    break;
  }
  }
  if (r < 0) {
    fprintf(stderr, "nbdfs: out of memory\n");
    return 1;
  }
  st->have_uri = true;
  if (tls_setup(&st->uri, &opt->tls, &st->tls, &st->creds, err, sizeof err) < 0) {
    fprintf(stderr, "nbdfs: %s\n", err);
    return 2;
  }
  return 0;
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
  notify_init();

  struct start st = { .opt = &opt, .argv0 = argv[0], .mp = { .held = -1 } };
  char err[1024];
  /* Everything that can be checked is checked while the caller waits; the
   * daemon changes to / later, so relative paths become absolute now. */
  char *pidfile = NULL, *log_file = NULL;
  if (absolutize(&opt.pidfile, &pidfile, "pid file") < 0 ||
      absolutize(&opt.log_file, &log_file, "log file") < 0) {
    rc = 2;
    goto out;
  }
  if (mountpoint_check_allow_other(opt.allow_other, err, sizeof err) < 0) {
    fprintf(stderr, "nbdfs: %s\n", err);
    rc = 1;
    goto out;
  }
  if (opt.exports && opt.export_name) {
    fprintf(stderr, "nbdfs: --exports mounts every export: --export '%s' makes no sense with it\n",
            opt.export_name);
    rc = 2;
    goto out;
  }
  if (opt.source == SERVER_URI && (rc = parse_uri(&st)) != 0)
    goto out;
  /* The file is named after the export. */
  const char *file_export = st.have_uri ? st.uri.export_name
                                        : opt.export_name ? opt.export_name : "";
  if (mountpoint_resolve(&st.mp, opt.mountpoint, file_export, opt.exports, opt.nonempty, err,
                         sizeof err) < 0) {
    fprintf(stderr, "nbdfs: %s\n", err);
    rc = 1;
    goto out;
  }
  if (opt.partitions && st.mp.form == MOUNTPOINT_NAKED) {
    fprintf(stderr, "nbdfs: --partitions needs a directory for the partition files; %s is a "
            "regular file\n", st.mp.dir);
    rc = 2;
    goto out;
  }
  /* The daemon starts the server, so that the server belongs to it. */
  if (!opt.foreground && daemon_detach() < 0) {
    rc = 1;
    goto out;
  }
  rc = open_source(&st);
  if (rc == 0)
    rc = serve(&st);
  if (st.sp) {
    server_process_stop(st.sp, SERVER_STOP_GRACE_S);
    server_process_free(st.sp);
  }
  log_flush_suppressed();
out:
  daemon_report(rc ? rc : 1); /* reports only if serve never did */
  tls_creds_free(st.creds);
  if (st.have_uri)
    nbd_uri_free(&st.uri);
  mountpoint_free(&st.mp);
  options_free(&opt);
  free(pidfile);
  free(log_file);
  return rc;
}
