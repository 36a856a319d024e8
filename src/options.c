/* options.c: command-line parsing. */
#include "options.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

static void usage(FILE *out)
{
  fprintf(out,
"Usage: nbdfs [OPTIONS] URI MOUNTPOINT\n"
"       nbdfs --exports [OPTIONS] URI DIRECTORY\n"
"Mount a Network Block Device export as a file, or every export of a\n"
"server as the files of a directory, without root.\n"
"\n"
"URI:  nbd://HOST[:PORT][/EXPORT]   nbd+unix:///[EXPORT]?socket=PATH\n"
"      nbd+vsock://CID[:PORT][/EXPORT]\n"
"MOUNTPOINT: an existing directory (the file is named after the export,\n"
"      or 'disk' for the default export), DIR/NAME where DIR exists, or an\n"
"      existing regular file, which the export is mounted over.\n"
"\n"
"Options:\n"
"      --exports         mount the whole server: one file per export\n"
"  -C, --connections N   connections when the server allows multi-conn (default 4)\n"
"  -r, --readonly        read-only (automatic for read-only exports)\n"
"  -f, --foreground      stay in the foreground (default: detach once mounted)\n"
"  -P, --pidfile FILE    write the daemon's pid to FILE\n"
"  -o OPTION             FUSE mount option (repeatable), e.g. -o allow_other\n"
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
"                        to send again after a reconnect, up to about this much;\n"
"                        past it, FLUSH early (default 64; 0: keep nothing,\n"
"                        faster writes, EIO instead of replay)\n"
"      --direct-io       bypass the kernel page cache\n"
"      --threads N       worker threads, each serving FUSE and its connections (default 1)\n"
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
       OPT_RECONNECT_DELAY, OPT_NO_RECONNECT, OPT_RETRY, OPT_REPLAY_LIMIT };

int options_parse(int argc, char **argv, struct nbdfs_options *o)
{
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
    { "threads", required_argument, NULL, OPT_THREADS },
    { "exports", no_argument, NULL, OPT_EXPORTS },
    { "tls", required_argument, NULL, OPT_TLS },
    { "tls-certificates", required_argument, NULL, OPT_TLS_CERTS },
    { "tls-psk-file", required_argument, NULL, OPT_TLS_PSK },
    { "tls-username", required_argument, NULL, OPT_TLS_USER },
    { "tls-hostname", required_argument, NULL, OPT_TLS_HOST },
    { "no-tls-verify-peer", no_argument, NULL, OPT_NO_VERIFY },
    { NULL, 0, NULL, 0 },
  };
  memset(o, 0, sizeof *o);
  o->connections = 4;
  o->timeout_s = 60;
  o->connect_timeout_s = 30;
  o->reconnect_delay_s = 30;
  o->retry_s = 0;
  o->replay_limit_mib = 64;
  o->threads = 1;
  o->tls.verify_peer = true;
  o->tls.mode = TLS_OFF;
  opterr = 0;
  int c;
  while ((c = getopt_long(argc, argv, ":C:rfP:o:vVh", longopts, NULL)) != -1) {
    switch (c) {
    case 'C':
      if (parse_int(optarg, 1, 64, "--connections", &o->connections) < 0)
        return -1;
      break;
    case 'r': o->readonly = true; break;
    case 'f': o->foreground = true; break;
    case 'P': o->pidfile = optarg; break;
    case 'o': {
      char **n = realloc(o->fuse_opts, (size_t)(o->nfuse_opts + 1) * sizeof *n);
      if (!n)
        return -1;
      o->fuse_opts = n;
      o->fuse_opts[o->nfuse_opts++] = optarg;
      break;
    }
    case 'v': nbd_verbose++; break;
    case 'V': printf("nbdfs %s\n", NBDFS_VERSION); return 1;
    case 'h': usage(stdout); return 1;
    case OPT_TIMEOUT:
      if (parse_int(optarg, 0, 86400, "--timeout", &o->timeout_s) < 0)
        return -1;
      break;
    case OPT_CONNECT_TIMEOUT:
      if (parse_int(optarg, 1, 3600, "--connect-timeout", &o->connect_timeout_s) < 0)
        return -1;
      break;
    case OPT_RECONNECT_DELAY:
      if (parse_int(optarg, 0, 86400, "--reconnect-delay", &o->reconnect_delay_s) < 0)
        return -1;
      break;
    case OPT_NO_RECONNECT: o->no_reconnect = true; break;
    case OPT_RETRY:
      if (parse_int(optarg, 0, 86400, "--retry", &o->retry_s) < 0)
        return -1;
      break;
    case OPT_REPLAY_LIMIT:
      if (parse_int(optarg, 0, 65536, "--replay-limit", &o->replay_limit_mib) < 0)
        return -1;
      break;
    case OPT_DIRECT_IO: o->direct_io = true; break;
    case OPT_EXPORTS: o->exports = true; break;
    case OPT_TLS:
      if (!strcmp(optarg, "off"))
        o->tls.mode = TLS_OFF;
      else if (!strcmp(optarg, "on"))
        o->tls.mode = TLS_ON;
      else if (!strcmp(optarg, "require"))
        o->tls.mode = TLS_REQUIRE;
      else {
        fprintf(stderr, "nbdfs: --tls must be off, on or require, not '%s'\n", optarg);
        return -1;
      }
      o->tls.mode_given = true;
      break;
    case OPT_TLS_CERTS: o->tls.certificates = optarg; break;
    case OPT_TLS_PSK: o->tls.psk_file = optarg; break;
    case OPT_TLS_USER: o->tls.username = optarg; break;
    case OPT_TLS_HOST: o->tls.hostname = optarg; break;
    case OPT_NO_VERIFY: o->tls.verify_peer = false; break;
    case OPT_THREADS:
      if (parse_int(optarg, 1, 16, "--threads", &o->threads) < 0)
        return -1;
      break;
    case ':':
      fprintf(stderr, "nbdfs: option '%s' needs an argument (see nbdfs --help)\n", argv[optind - 1]);
      return -1;
    default:
      if (optopt)
        fprintf(stderr, "nbdfs: unknown option '-%c' (see nbdfs --help)\n", optopt);
      else
        fprintf(stderr, "nbdfs: unknown option '%s' (see nbdfs --help)\n", argv[optind - 1]);
      return -1;
    }
  }
  if (argc - optind != 2) {
    fprintf(stderr, "nbdfs: expected URI and MOUNTPOINT, got %d argument%s (see nbdfs --help)\n",
            argc - optind, argc - optind == 1 ? "" : "s");
    return -1;
  }
  o->uri = argv[optind];
  o->mountpoint = argv[optind + 1];
  return 0;
}

void options_free(struct nbdfs_options *o)
{
  free(o->fuse_opts);
  o->fuse_opts = NULL;
}
