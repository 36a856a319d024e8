/* options.h: the command line. */
#ifndef NBDFS_OPTIONS_H
#define NBDFS_OPTIONS_H

#include <stdbool.h>

#include "tls.h"

struct nbdfs_options {
  const char *uri;
  const char *mountpoint;
  int connections;        /* -C: default 4 */
  bool readonly;          /* -r */
  bool foreground;        /* -f */
  const char *pidfile;    /* -P */
  char **fuse_opts;       /* -o, repeatable */
  int nfuse_opts;
  int timeout_s;          /* --timeout: a connection silent this long with requests
                           * outstanding is replaced (5x for FLUSH only), 0 = never */
  int reconnect_delay_s;  /* --reconnect-delay: how long a request may wait for a
                           * usable connection (from when it was first sent) */
  bool no_reconnect;      /* --no-reconnect: a lost connection stays lost */
  int retry_s;            /* --retry: keep trying the first connection this long */
  int replay_limit_mib;   /* --replay-limit: unflushed acknowledged writes kept
                           * for replay; past it, FLUSH early */
  int connect_timeout_s;  /* --connect-timeout */
  bool direct_io;         /* --direct-io */
  int threads;            /* --threads: worker loops */
  bool exports;           /* --exports: whole server as a directory */
  struct tls_options tls; /* --tls and friends */
};

/* Parse argv.  Returns 0 to run, 1 when done (help/version printed), or -1
 * after printing a one-line error. */
int options_parse(int argc, char **argv, struct nbdfs_options *o);
void options_free(struct nbdfs_options *o);

#endif
