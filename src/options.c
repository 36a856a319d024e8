/* options.c: command-line parsing.
 *
 * Options may come anywhere, also after the positionals (mount.fuse3 runs
 * "nbdfs SOURCE MOUNTPOINT -o OPTS"), so getopt_long only ever parses one
 * run of options at a time ("+": it stops at the first other word) and the
 * loop around it collects the positionals and the "[ CMD ARGS... ]" group,
 * whose words are never ours to parse.
 */
#include "options.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

static void usage(FILE *out)
{
  fprintf(out,
"Usage: nbdfs [OPTIONS] URI MOUNTPOINT\n"
"       nbdfs [OPTIONS] [ CMD ARGS... ] MOUNTPOINT\n"
"       nbdfs [OPTIONS] --command [ CMD ARGS... ] MOUNTPOINT\n"
"       nbdfs [OPTIONS] --fd N MOUNTPOINT\n"
"       nbdfs --exports [OPTIONS] URI|[ CMD ARGS... ] DIRECTORY\n"
"Mount a Network Block Device export as a file, or every export of a\n"
"server as the files of a directory, without root.\n"
"\n"
"URI:  nbd://HOST[:PORT][/EXPORT]   nbd+unix:///[EXPORT]?socket=PATH\n"
"      nbd+vsock://CID[:PORT][/EXPORT]\n"
"[ CMD ARGS... ]: run CMD as the server, with systemd socket activation\n"
"      (LISTEN_FDS), e.g. [ nbdkit file disk.img ]; '[' and ']' are separate\n"
"      words, and everything up to the last ']' belongs to CMD.\n"
"MOUNTPOINT: an existing empty directory (the file is named after the\n"
"      export, or 'disk' for the default export), DIR/NAME where DIR is an\n"
"      empty directory, or an existing regular file, which the export is\n"
"      mounted over.\n"
"Options may also follow the positional arguments; '--' ends them.\n"
"\n"
"Options:\n"
"      --command         CMD speaks NBD on its stdin/stdout instead (one\n"
"                        connection, no reconnecting)\n"
"      --fd N            the server is the connected socket N, inherited\n"
"                        (one connection, no reconnecting)\n"
"      --export NAME     the export to mount (default: the URI's, else '')\n"
"      --exports         mount the whole server: one file per export\n"
"  -C, --connections N   connections when the server allows multi-conn (default 4)\n"
"  -r, --readonly        read-only (automatic for read-only exports)\n"
"  -f, --foreground      stay in the foreground (default: detach once mounted)\n"
"  -P, --pidfile FILE    write the daemon's pid to FILE\n"
"      --log-file FILE   append messages to FILE (default once detached: syslog)\n"
"      --partitions      beside each disk file NAME, a file NAME.pN per partition\n"
"                        (GPT or MBR, numbered as Linux does)\n"
"      --nonempty        mount on a directory even if it is not empty (its\n"
"                        contents are hidden while mounted)\n"
"  -o OPT[,OPT...]       mount options (repeatable):\n"
"                        NAME[=VALUE] where NAME is a long option above\n"
"                        ('_' for '-'), e.g. -o connections=2,read_only;\n"
"                        ro (read-only), uid=USER, gid=GROUP, umask=OCTAL\n"
"                        (owner and mode bits of the files, default: yours\n"
"                        and 022); allow_other, allow_root and any other\n"
"                        FUSE option are passed to FUSE; defaults, _netdev,\n"
"                        nofail, auto, noauto, user, users, nouser, owner,\n"
"                        x-* and comment=* (for fstab) are ignored\n"
"      --tls=off|on|require  TLS (default: required for nbds:// URIs, else off;\n"
"                        on = use it when the server offers it)\n"
"      --tls-certificates DIR  CA and client certificates (ca-cert.pem,\n"
"                        client-cert.pem, client-key.pem, ca-crl.pem)\n"
"      --tls-psk-file FILE  pre-shared keys (psktool format)\n"
"      --tls-username NAME  PSK identity (default: the URI's user@, else yours)\n"
"      --tls-hostname NAME  name to check the server certificate against\n"
"      --no-tls-verify-peer  do not authenticate the server (insecure)\n"
"      --timeout SECS    a connection that answers nothing this long while\n"
"                        requests are outstanding is dropped and replaced, its\n"
"                        requests sent again (default 60; 0 = never; a connection\n"
"                        with only FLUSHes outstanding gets five times as long)\n"
"      --connect-timeout SECS  bound on connecting and negotiating (default 30)\n"
"      --reconnect-delay SECS  how long a request may wait for a usable\n"
"                        connection, from when it was first sent, before it\n"
"                        fails with EIO; while none exists past that, new\n"
"                        requests fail at once (default 30; 0 = fail at once\n"
"                        but keep reconnecting)\n"
"      --no-reconnect    a lost connection stays lost: its requests and later\n"
"                        ones fail with EIO\n"
"      --retry SECS      keep trying the first connection this long before the\n"
"                        mount fails (default 0)\n"
"      --replay-limit MIB  keep acknowledged writes not yet covered by a FLUSH,\n"
"                        to send again after a reconnect, up to this much; once\n"
"                        half of it is kept, FLUSH early (default 16; 0: keep\n"
"                        nothing, faster writes, EIO instead of replay)\n"
"      --cache MODE      the kernel's page cache: writeback (default: write()\n"
"                        fills the cache, fsync and close write it back and\n"
"                        FLUSH), read (reads cached, each write() reaches the\n"
"                        server before it returns) or none (direct I/O)\n"
"      --direct-io       the same as --cache=none\n"
"      --threads N       worker threads, each serving FUSE and its connections (default 1)\n"
"      --busy-poll USEC  after any activity a worker keeps polling this long\n"
"                        before it sleeps: lower latency at low queue depth for\n"
"                        some CPU (default 50; 0: never poll)\n"
"  -v, --verbose         more messages (repeat for debug)\n"
"  -V, --version         print the version\n"
"  -h, --help            this help\n");
}

static int parse_int(const char *s, int lo, int hi, const char *what, int *out)
{
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || *s == '\0' || *end != '\0' || v < lo || v > hi) {
    fprintf(stderr, "nbdfs: %s must be a number from %d to %d, not '%s'\n", what, lo, hi, s);
    return -1;
  }
  *out = (int)v;
  return 0;
}

enum { OPT_TIMEOUT = 256, OPT_CONNECT_TIMEOUT, OPT_DIRECT_IO, OPT_THREADS, OPT_EXPORTS,
       OPT_TLS, OPT_TLS_CERTS, OPT_TLS_PSK, OPT_TLS_USER, OPT_TLS_HOST, OPT_NO_VERIFY,
       OPT_RECONNECT_DELAY, OPT_NO_RECONNECT, OPT_RETRY, OPT_REPLAY_LIMIT,
       OPT_COMMAND, OPT_FD, OPT_EXPORT, OPT_LOG_FILE, OPT_NONEMPTY, OPT_PARTITIONS, OPT_CACHE,
       OPT_BUSY_POLL };

#define SHORTOPTS "+:C:rfP:o:vVh"

/* Also the names -o knows (all but help and version). */
static const struct option longopts[] = {
  { "connections", required_argument, NULL, 'C' },
  { "readonly", no_argument, NULL, 'r' },
  { "read-only", no_argument, NULL, 'r' },
  { "foreground", no_argument, NULL, 'f' },
  { "pidfile", required_argument, NULL, 'P' },
  { "verbose", no_argument, NULL, 'v' },
  { "version", no_argument, NULL, 'V' },
  { "help", no_argument, NULL, 'h' },
  { "timeout", required_argument, NULL, OPT_TIMEOUT },
  { "connect-timeout", required_argument, NULL, OPT_CONNECT_TIMEOUT },
  { "reconnect-delay", required_argument, NULL, OPT_RECONNECT_DELAY },
  { "no-reconnect", no_argument, NULL, OPT_NO_RECONNECT },
  { "retry", required_argument, NULL, OPT_RETRY },
  { "replay-limit", required_argument, NULL, OPT_REPLAY_LIMIT },
  { "direct-io", no_argument, NULL, OPT_DIRECT_IO },
  { "cache", required_argument, NULL, OPT_CACHE },
  { "threads", required_argument, NULL, OPT_THREADS },
  { "busy-poll", required_argument, NULL, OPT_BUSY_POLL },
  { "exports", no_argument, NULL, OPT_EXPORTS },
  { "export", required_argument, NULL, OPT_EXPORT },
  { "command", no_argument, NULL, OPT_COMMAND },
  { "fd", required_argument, NULL, OPT_FD },
  { "log-file", required_argument, NULL, OPT_LOG_FILE },
  { "nonempty", no_argument, NULL, OPT_NONEMPTY },
  { "partitions", no_argument, NULL, OPT_PARTITIONS },
  { "tls", required_argument, NULL, OPT_TLS },
  { "tls-certificates", required_argument, NULL, OPT_TLS_CERTS },
  { "tls-psk-file", required_argument, NULL, OPT_TLS_PSK },
  { "tls-username", required_argument, NULL, OPT_TLS_USER },
  { "tls-hostname", required_argument, NULL, OPT_TLS_HOST },
  { "no-tls-verify-peer", no_argument, NULL, OPT_NO_VERIFY },
  { NULL, 0, NULL, 0 },
};

/* What the loop collects besides the options. */
struct positionals {
  const char *words[2];
  int n;                 /* may exceed 2: counted for the message */
  int before_bracket;    /* positionals seen before "[", -1: no "[" */
};

static int add_string(char ***list, int *n, char *s)
{
  char **nl = realloc(*list, (size_t)(*n + 1) * sizeof *nl);
  if (!nl) {
    fprintf(stderr, "nbdfs: out of memory\n");
    return -1;
  }
  *list = nl;
  nl[(*n)++] = s;
  return 0;
}

static int parse_fd(const char *s, int *out)
{
  if (parse_int(s, 0, INT_MAX, "--fd", out) < 0)
    return -1;
  /* Caught here, the mistake gets a clearer message than a failed handshake. */
  if (fcntl(*out, F_GETFD) < 0) {
    fprintf(stderr, "nbdfs: --fd %d is not an open file descriptor\n", *out);
    return -1;
  }
  return 0;
}

static int parse_tls_mode(const char *s, struct tls_options *t)
{
  if (!strcmp(s, "off"))
    t->mode = TLS_OFF;
  else if (!strcmp(s, "on"))
    t->mode = TLS_ON;
  else if (!strcmp(s, "require"))
    t->mode = TLS_REQUIRE;
  else {
    fprintf(stderr, "nbdfs: --tls must be off, on or require, not '%s'\n", s);
    return -1;
  }
  t->mode_given = true;
  return 0;
}

static int parse_o_list(const char *list, struct nbdfs_options *o);

/* Options that only set a number; the rest return -2. */
static int apply_number(int c, const char *arg, struct nbdfs_options *o)
{
  switch (c) {
  case 'C': return parse_int(arg, 1, 64, "--connections", &o->connections);
  case OPT_TIMEOUT: return parse_int(arg, 0, 86400, "--timeout", &o->timeout_s);
  case OPT_CONNECT_TIMEOUT:
    return parse_int(arg, 1, 3600, "--connect-timeout", &o->connect_timeout_s);
  case OPT_RECONNECT_DELAY:
    return parse_int(arg, 0, 86400, "--reconnect-delay", &o->reconnect_delay_s);
  case OPT_RETRY: return parse_int(arg, 0, 86400, "--retry", &o->retry_s);
  case OPT_REPLAY_LIMIT: return parse_int(arg, 0, 65536, "--replay-limit", &o->replay_limit_mib);
  case OPT_THREADS: return parse_int(arg, 1, 16, "--threads", &o->threads);
  case OPT_BUSY_POLL: return parse_int(arg, 0, 10000, "--busy-poll", &o->busy_poll_us);
  default: return -2;
  }
}

/* One option, from the command line or from -o.  Returns 0, 1 when done
 * (help or version printed) or -1 after a one-line error. */
static int apply_option(int c, const char *arg, struct nbdfs_options *o)
{
  int r = apply_number(c, arg, o);
  if (r != -2)
    return r;
  switch (c) {
  case 'r': o->readonly = true; break;
  case 'f': o->foreground = true; break;
  case 'P': o->pidfile = arg; break;
  case 'o': return parse_o_list(arg, o);
  case 'v': nbd_verbose++; break;
  case 'V': printf("nbdfs %s\n", NBDFS_VERSION); return 1;
  case 'h': usage(stdout); return 1;
  case OPT_NO_RECONNECT: o->no_reconnect = true; break;
  case OPT_DIRECT_IO: o->cache = CACHE_NONE; break;
  case OPT_CACHE:
    if (cache_mode_parse(arg, &o->cache) < 0) {
      fprintf(stderr, "nbdfs: --cache must be none, read or writeback, not '%s'\n", arg);
      return -1;
    }
    break;
  case OPT_EXPORTS: o->exports = true; break;
  case OPT_EXPORT: o->export_name = arg; break;
  case OPT_COMMAND: o->source = SERVER_COMMAND; break;
  case OPT_FD: return parse_fd(arg, &o->fd);
  case OPT_LOG_FILE: o->log_file = arg; break;
  case OPT_NONEMPTY: o->nonempty = true; break;
  case OPT_PARTITIONS: o->partitions = true; break;
  case OPT_TLS: return parse_tls_mode(arg, &o->tls);
  case OPT_TLS_CERTS: o->tls.certificates = arg; break;
  case OPT_TLS_PSK: o->tls.psk_file = arg; break;
  case OPT_TLS_USER: o->tls.username = arg; break;
  case OPT_TLS_HOST: o->tls.hostname = arg; break;
  case OPT_NO_VERIFY: o->tls.verify_peer = false; break;
  default: return -1; /* not reached: getopt_long only returns the above */
  }
  return 0;
}

/* ---- -o ---- */

/* A whole decimal number for an id; false when s is not one. */
static bool parse_id(const char *s, unsigned long *out)
{
  char *end;
  if (*s < '0' || *s > '9')
    return false;
  errno = 0;
  *out = strtoul(s, &end, 10);
  /* (uid_t)-1 means "unchanged" to chown: never a real owner. */
  return !errno && *end == '\0' && *out < (unsigned long)(uid_t)-1;
}

static int parse_uid(const char *s, struct nbdfs_options *o)
{
  unsigned long id;
  if (parse_id(s, &id)) {
    o->uid = (uid_t)id;
  } else {
    struct passwd *pw = *s ? getpwnam(s) : NULL;
    if (!pw) {
      fprintf(stderr, "nbdfs: -o uid=%s: no such user (give a name or a number)\n", s);
      return -1;
    }
    o->uid = pw->pw_uid;
  }
  o->have_uid = true;
  return 0;
}

static int parse_gid(const char *s, struct nbdfs_options *o)
{
  unsigned long id;
  if (parse_id(s, &id)) {
    o->gid = (gid_t)id;
  } else {
    struct group *gr = *s ? getgrnam(s) : NULL;
    if (!gr) {
      fprintf(stderr, "nbdfs: -o gid=%s: no such group (give a name or a number)\n", s);
      return -1;
    }
    o->gid = gr->gr_gid;
  }
  o->have_gid = true;
  return 0;
}

static int parse_umask(const char *s, struct nbdfs_options *o)
{
  char *end;
  errno = 0;
  long v = strtol(s, &end, 8);
  if (errno || *s < '0' || *s > '7' || *end != '\0' || v > 0777) {
    fprintf(stderr, "nbdfs: -o umask must be an octal number from 0 to 777, not '%s'\n", s);
    return -1;
  }
  o->umask = (mode_t)v;
  o->have_umask = true;
  return 0;
}

/* Words fstab and mount(8) use that mean nothing to nbdfs or FUSE. */
static bool mount_only_word(const char *name)
{
  static const char *const words[] = { "defaults", "_netdev", "nofail", "auto", "noauto",
                                       "user", "users", "nouser", "owner", "comment", NULL };
  for (int i = 0; words[i]; i++)
    if (!strcmp(name, words[i]))
      return true;
  return !strncmp(name, "x-", 2);
}

/* Our long option called name, with '_' read as '-' (NULL: none). */
static const struct option *long_option_named(const char *name)
{
  char buf[64];
  size_t n = strlen(name);
  if (n >= sizeof buf)
    return NULL;
  for (size_t i = 0; i <= n; i++)
    buf[i] = name[i] == '_' ? '-' : name[i];
  for (const struct option *lo = longopts; lo->name; lo++)
    if (!strcmp(buf, lo->name))
      return lo->val == 'h' || lo->val == 'V' ? NULL : lo;
  return NULL;
}

/* Remove the backslash escapes of a value, in place. */
static void unescape(char *s)
{
  char *out = s;
  for (; *s; s++) {
    if (*s == '\\' && s[1])
      s++;
    *out++ = *s;
  }
  *out = '\0';
}

/* An item for FUSE, as given (the escapes are FUSE's too). */
static int pass_to_fuse(char *item, struct nbdfs_options *o)
{
  return add_string(&o->fuse_opts, &o->nfuse_opts, item);
}

/* Items nbdfs knows by their -o name only.  Returns -2 for the others. */
static int o_item_special(char *item, const char *name, char *value, struct nbdfs_options *o)
{
  if (mount_only_word(name))
    return 0;
  if (!strcmp(name, "ro")) {
    o->readonly = true;
    return pass_to_fuse(item, o);
  }
  if (!strcmp(name, "allow_other") || !strcmp(name, "allow_root")) {
    o->allow_other = true;
    return pass_to_fuse(item, o);
  }
  bool uid = !strcmp(name, "uid"), gid = !strcmp(name, "gid"), um = !strcmp(name, "umask");
  if (!uid && !gid && !um)
    return -2;
  if (!value) {
    fprintf(stderr, "nbdfs: -o %s needs a value, as in -o %s=%s\n", name, name,
            um ? "OCTAL" : uid ? "USER" : "GROUP");
    return -1;
  }
  unescape(value);
  return uid ? parse_uid(value, o) : gid ? parse_gid(value, o) : parse_umask(value, o);
}

/* One item of a -o list, "name" or "name=value" (item is ours to cut). */
static int o_item(char *item, struct nbdfs_options *o)
{
  if (!*item)
    return 0; /* "-o a,,b" or a trailing comma */
  char *eq = strchr(item, '=');
  char name[64];
  size_t nlen = eq ? (size_t)(eq - item) : strlen(item);
  if (nlen >= sizeof name)
    return pass_to_fuse(item, o);
  memcpy(name, item, nlen);
  name[nlen] = '\0';
  char *value = eq ? eq + 1 : NULL;
  int r = o_item_special(item, name, value, o);
  if (r != -2)
    return r;
  const struct option *lo = long_option_named(name);
  if (!lo)
    return pass_to_fuse(item, o);
  if (lo->has_arg == no_argument && value) {
    fprintf(stderr, "nbdfs: -o %s takes no value (got '%s')\n", name, item);
    return -1;
  }
  if (lo->has_arg == required_argument && !value) {
    fprintf(stderr, "nbdfs: -o %s needs a value, as in -o %s=VALUE\n", name, name);
    return -1;
  }
  if (value)
    unescape(value);
  return apply_option(lo->val, value, o);
}

/* "-o a,b=c,...": commas split items unless escaped with a backslash.
 * The copy is kept until options_free: values point into it. */
static int parse_o_list(const char *list, struct nbdfs_options *o)
{
  char *copy = strdup(list);
  if (!copy || add_string(&o->owned, &o->nowned, copy) < 0) {
    free(copy);
    fprintf(stderr, "nbdfs: out of memory\n");
    return -1;
  }
  char *item = copy;
  for (char *p = copy;; p++) {
    if (*p == '\\' && p[1]) {
      p++;
      continue;
    }
    if (*p != ',' && *p != '\0')
      continue;
    bool last = *p == '\0';
    *p = '\0';
    int r = o_item(item, o);
    if (r != 0 || last)
      return r;
    item = p + 1;
  }
}

/* ---- the words ---- */

static void report_missing_argument(char **argv)
{
  const char *word = argv[optind - 1];
  if (!strncmp(word, "--", 2))
    fprintf(stderr, "nbdfs: option '%s' needs an argument (see nbdfs --help)\n", word);
  else
    fprintf(stderr, "nbdfs: option '-%c' needs an argument (see nbdfs --help)\n", optopt);
}

static void report_unknown(char **argv)
{
  if (optopt)
    fprintf(stderr, "nbdfs: unknown option '-%c' (see nbdfs --help)\n", optopt);
  else
    fprintf(stderr, "nbdfs: unknown option '%s' (see nbdfs --help)\n", argv[optind - 1]);
}

/* Parse the options starting at argv[i] up to the next other word.
 * getopt_long sees argv[i - 1] as its program name.  Sets *next to the
 * index of the first word not consumed and *dashdash when that run ended
 * with "--".  Returns 0, 1 (done) or -1. */
static int parse_option_run(int argc, char **argv, int i, struct nbdfs_options *o, int *next,
                            bool *dashdash)
{
  int sub_argc = argc - i + 1;
  char **sub = argv + i - 1;
  optind = 0; /* start afresh (glibc): a new argv each run */
  opterr = 0;
  for (;;) {
    int before = optind ? optind : 1;
    int c = getopt_long(sub_argc, sub, SHORTOPTS, longopts, NULL);
    if (c == -1) {
      *dashdash = optind == before + 1 && !strcmp(sub[before], "--");
      break;
    }
    if (c == ':') {
      report_missing_argument(sub);
      return -1;
    }
    if (c == '?') {
      report_unknown(sub);
      return -1;
    }
    int r = apply_option(c, optarg, o);
    if (r != 0)
      return r;
  }
  *next = i + optind - 1;
  return 0;
}

/* "[ CMD ARGS... ]" at argv[i]: up to the last "]".  Returns the index
 * after it, or -1. */
static int take_bracket(int argc, char **argv, int i, struct nbdfs_options *o,
                        struct positionals *pos)
{
  int end = argc - 1;
  while (end > i && strcmp(argv[end], "]"))
    end--;
  if (end == i) {
    fprintf(stderr, "nbdfs: '[' without a matching ']' (the server command goes between '[' and ']', each a word of its own)\n");
    return -1;
  }
  if (end == i + 1) {
    fprintf(stderr, "nbdfs: empty [ ]: give the server command between '[' and ']'\n");
    return -1;
  }
  int n = end - i - 1;
  o->server_argv = calloc((size_t)n + 1, sizeof *o->server_argv);
  if (!o->server_argv) {
    fprintf(stderr, "nbdfs: out of memory\n");
    return -1;
  }
  memcpy(o->server_argv, argv + i + 1, (size_t)n * sizeof *argv);
  pos->before_bracket = pos->n;
  return end + 1;
}

static int add_positional(const char *w, struct positionals *pos)
{
  if (!strcmp(w, "]")) {
    fprintf(stderr, "nbdfs: ']' without '[' before it\n");
    return -1;
  }
  if (pos->n < 2)
    pos->words[pos->n] = w;
  pos->n++;
  return 0;
}

static int parse_words(int argc, char **argv, struct nbdfs_options *o, struct positionals *pos)
{
  bool dashdash = false;
  int i = 1;
  while (i < argc) {
    const char *w = argv[i];
    if (!strcmp(w, "[")) {
      if ((i = take_bracket(argc, argv, i, o, pos)) < 0)
        return -1;
    } else if (dashdash || w[0] != '-' || w[1] == '\0') {
      if (add_positional(w, pos) < 0)
        return -1;
      i++;
    } else {
      int r = parse_option_run(argc, argv, i, o, &i, &dashdash);
      if (r != 0)
        return r;
    }
  }
  return 0;
}

/* ---- what the words mean together ---- */

static int check_count(const struct positionals *pos, int want, const char *expected)
{
  if (pos->n == want)
    return 0;
  fprintf(stderr, "nbdfs: expected %s, got %d argument%s (see nbdfs --help)\n", expected, pos->n,
          pos->n == 1 ? "" : "s");
  return -1;
}

static int decide_fd(const struct positionals *pos, struct nbdfs_options *o)
{
  if (o->source == SERVER_COMMAND) {
    fprintf(stderr, "nbdfs: --command and --fd both say where the server is: give one\n");
    return -1;
  }
  if (o->server_argv) {
    fprintf(stderr, "nbdfs: --fd and [ CMD ] both say where the server is: give one\n");
    return -1;
  }
  if (pos->n == 2) {
    fprintf(stderr, "nbdfs: --fd and a URI ('%s') both say where the server is: give one\n",
            pos->words[0]);
    return -1;
  }
  if (check_count(pos, 1, "only MOUNTPOINT after --fd N") < 0)
    return -1;
  o->source = SERVER_FD;
  o->mountpoint = pos->words[0];
  return 0;
}

static int decide_command(const struct positionals *pos, struct nbdfs_options *o)
{
  if (pos->n == 2) {
    fprintf(stderr, "nbdfs: [ CMD ] and a URI both say where the server is: give one\n");
    return -1;
  }
  if (check_count(pos, 1, "MOUNTPOINT after [ CMD ]") < 0)
    return -1;
  if (pos->before_bracket != 0) {
    fprintf(stderr, "nbdfs: [ CMD ] must come before MOUNTPOINT ('%s')\n", pos->words[0]);
    return -1;
  }
  if (o->source != SERVER_COMMAND)
    o->source = SERVER_ACTIVATE;
  o->mountpoint = pos->words[0];
  return 0;
}

static int decide_source(const struct positionals *pos, struct nbdfs_options *o)
{
  int r;
  if (o->fd >= 0)
    r = decide_fd(pos, o);
  else if (o->server_argv)
    r = decide_command(pos, o);
  else if (o->source == SERVER_COMMAND) {
    fprintf(stderr, "nbdfs: --command needs the server command as [ CMD ARGS... ] before MOUNTPOINT\n");
    r = -1;
  } else if ((r = check_count(pos, 2, "URI and MOUNTPOINT")) == 0) {
    o->uri = pos->words[0];
    o->mountpoint = pos->words[1];
  }
  if (r == 0 && o->exports && (o->source == SERVER_COMMAND || o->source == SERVER_FD)) {
    fprintf(stderr, "nbdfs: --exports needs a server nbdfs can connect to more than once: a URI or [ CMD ]\n");
    r = -1;
  }
  if (r == 0 && o->exports && o->export_name) {
    fprintf(stderr, "nbdfs: --export names one export and --exports mounts them all: give one\n");
    r = -1;
  }
  return r;
}

static void set_defaults(struct nbdfs_options *o)
{
  memset(o, 0, sizeof *o);
  o->source = SERVER_URI;
  o->fd = -1;
  o->connections = 4;
  o->timeout_s = 60;
  o->connect_timeout_s = 30;
  o->reconnect_delay_s = 30;
  o->retry_s = 0;
  o->replay_limit_mib = 16;
  o->threads = 1;
  o->busy_poll_us = 50;
  o->cache = CACHE_MODE_DEFAULT;
  o->tls.verify_peer = true;
  o->tls.mode = TLS_OFF;
}

int options_parse(int argc, char **argv, struct nbdfs_options *o)
{
  set_defaults(o);
  struct positionals pos = { .before_bracket = -1 };
  int r = parse_words(argc, argv, o, &pos);
  if (r != 0)
    return r;
  return decide_source(&pos, o);
}

void options_free(struct nbdfs_options *o)
{
  free(o->fuse_opts);
  o->fuse_opts = NULL;
  o->nfuse_opts = 0;
  for (int i = 0; i < o->nowned; i++)
    free(o->owned[i]);
  free(o->owned);
  o->owned = NULL;
  o->nowned = 0;
  free(o->server_argv);
  o->server_argv = NULL;
}
