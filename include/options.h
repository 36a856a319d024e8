/* options.h: the command line. */
#ifndef NBDFS_OPTIONS_H
#define NBDFS_OPTIONS_H

#include <stdbool.h>
#include <sys/types.h>

#include "cache-mode.h"
#include "tls.h"

/* Where the server comes from. */
enum server_source {
  SERVER_URI,       /* URI MOUNTPOINT */
  SERVER_ACTIVATE,  /* [ CMD ARGS... ] MOUNTPOINT: CMD started with socket activation */
  SERVER_COMMAND,   /* --command [ CMD ARGS... ] MOUNTPOINT: CMD speaks NBD on stdin/stdout */
  SERVER_FD,        /* --fd N MOUNTPOINT: an inherited connected socket */
};

struct nbdfs_options {
  enum server_source source;
  const char *uri;        /* SERVER_URI only */
  char **server_argv;     /* SERVER_ACTIVATE/COMMAND: CMD ARGS..., NULL-terminated (malloc'd
                           * array of pointers into argv) */
  int fd;                 /* SERVER_FD: --fd N; else -1 */
  const char *export_name; /* --export NAME (NULL: not given) */
  const char *mountpoint;
  const char *log_file;   /* --log-file FILE (NULL: syslog when detached) */
  bool have_uid, have_gid, have_umask; /* -o uid=N, gid=N, umask=OCTAL */
  uid_t uid;
  gid_t gid;
  mode_t umask;
  bool nonempty;          /* -o nonempty / --nonempty: mounting over a non-empty directory */
  bool partitions;        /* --partitions: a file per partition beside each disk */
  bool allow_other;       /* -o allow_other or allow_root was given (also passed to FUSE) */
  int connections;        /* -C: default 4 */
  bool readonly;          /* -r */
  bool foreground;        /* -f */
  const char *pidfile;    /* -P */
  char **fuse_opts;       /* the -o items for FUSE, one item each (ours taken out) */
  int nfuse_opts;
  char **owned;           /* private: copies of the -o lists that fuse_opts and
                           * the string options above may point into */
  int nowned;
  int timeout_s;          /* --timeout: a connection silent this long with requests
                           * outstanding is replaced (5x for FLUSH only), 0 = never */
  int reconnect_delay_s;  /* --reconnect-delay: how long a request may wait for a
                           * usable connection (from when it was first sent) */
  bool no_reconnect;      /* --no-reconnect: a lost connection stays lost */
  int retry_s;            /* --retry: keep trying the first connection this long */
  int replay_limit_mib;   /* --replay-limit: unflushed acknowledged writes kept
                           * for replay; past it, FLUSH early */
  int connect_timeout_s;  /* --connect-timeout */
  enum cache_mode cache;  /* --cache (--direct-io: none) */
  int threads;            /* --threads: worker loops */
  int busy_poll_us;       /* --busy-poll: a worker polls this long after activity */
  bool exports;           /* --exports: whole server as a directory */
  struct tls_options tls; /* --tls and friends */
};

/* Parse argv.  Returns 0 to run, 1 when done (help/version printed), or -1
 * after printing a one-line error. */
int options_parse(int argc, char **argv, struct nbdfs_options *o);
void options_free(struct nbdfs_options *o);

#endif
