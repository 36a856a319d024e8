/* test-options.c: the command line (src/options.c): the four ways to name a
 * server, options anywhere, -o lists and the conflicts. */
#include <fcntl.h>
#include <stdarg.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "log.h"
#include "options.h"

#define MAXW 32

static struct nbdfs_options o;
static char msg[1024]; /* what the last parse wrote to stderr */
static char *words[MAXW];

/* Parse the words (NULL-terminated, program name added) with stderr
 * captured into msg.  Returns options_parse's result; o stays valid until
 * the next call. */
static int parse_v(va_list ap)
{
  static bool parsed;
  if (parsed)
    options_free(&o);
  parsed = true;
  int n = 0;
  words[n++] = "nbdfs";
  const char *w;
  while ((w = va_arg(ap, const char *)) && n < MAXW - 1)
    words[n++] = (char *)w;
  words[n] = NULL;
  FILE *tmp = tmpfile();
  fflush(stderr);
  int saved = dup(2);
  dup2(fileno(tmp), 2);
  nbd_verbose = 0;
  int r = options_parse(n, words, &o);
  fflush(stderr);
  dup2(saved, 2);
  close(saved);
  rewind(tmp);
  size_t len = fread(msg, 1, sizeof msg - 1, tmp);
  msg[len] = '\0';
  fclose(tmp);
  return r;
}

/* PARSE("", WORDS...): the "" only anchors the variable arguments. */
#define PARSE(...) parse_words(__VA_ARGS__, (const char *)NULL)

static int parse_words(const char *anchor, ...)
{
  va_list ap;
  va_start(ap, anchor);
  int r = parse_v(ap);
  va_end(ap);
  return r;
}

/* The last parse failed with exactly one line mentioning needle. */
static void failed_with(int r, const char *what, const char *needle)
{
  CHECK_EQ(r, -1, "%s: rejected", what);
  size_t len = strlen(msg);
  bool one_line = len > 0 && msg[len - 1] == '\n' && !memchr(msg, '\n', len - 1);
  CHECK(one_line && !strncmp(msg, "nbdfs: ", 7), "%s: one line starting 'nbdfs: ' (%s)", what, msg);
  CHECK(strstr(msg, needle) != NULL, "%s: message mentions '%s' (%s)", what, needle, msg);
}

static bool has_fuse_opt(const char *item)
{
  for (int i = 0; i < o.nfuse_opts; i++)
    if (!strcmp(o.fuse_opts[i], item))
      return true;
  return false;
}

static void test_sources(void)
{
  int r = PARSE("", "nbd://h/e", "/mnt");
  CHECK(r == 0 && o.source == SERVER_URI, "URI MOUNTPOINT: source URI");
  CHECK_STR(o.uri, "nbd://h/e", "URI taken");
  CHECK_STR(o.mountpoint, "/mnt", "MOUNTPOINT taken");
  CHECK(o.server_argv == NULL && o.fd == -1, "no command, no fd");
  CHECK_EQ(o.connections, 4, "default connections");

  r = PARSE("", "[", "nbdkit", "memory", "1G", "]", "/mnt");
  CHECK(r == 0 && o.source == SERVER_ACTIVATE, "[ CMD ] MOUNTPOINT: socket activation");
  CHECK(o.server_argv && !strcmp(o.server_argv[0], "nbdkit") && !strcmp(o.server_argv[2], "1G") &&
        !o.server_argv[3], "server_argv is the words between [ and ]");
  CHECK_STR(o.mountpoint, "/mnt", "MOUNTPOINT after ]");
  CHECK(o.uri == NULL, "no URI");

  r = PARSE("", "-r", "--command", "[", "qemu-nbd", "-f", "qcow2", "--", "x.qcow2", "]", "/mnt");
  CHECK(r == 0 && o.source == SERVER_COMMAND, "--command [ CMD ] MOUNTPOINT");
  CHECK(o.server_argv && !strcmp(o.server_argv[1], "-f") && !strcmp(o.server_argv[2], "qcow2") &&
        !strcmp(o.server_argv[3], "--") && !o.server_argv[5], "-f qcow2 inside [ ] is the command's");
  CHECK(o.readonly, "-r before --command still ours");

  int p[2];
  if (pipe(p) == 0) {
    char num[16];
    snprintf(num, sizeof num, "%d", p[0]);
    r = PARSE("", "--fd", num, "/mnt");
    CHECK(r == 0 && o.source == SERVER_FD && o.fd == p[0], "--fd N MOUNTPOINT");
    CHECK_STR(o.mountpoint, "/mnt", "--fd: MOUNTPOINT");
    close(p[0]);
    close(p[1]);
  }
  /* Far above what the capture of stderr may reuse. */
  int hi = fcntl(1, F_DUPFD, 500);
  char closed[16];
  snprintf(closed, sizeof closed, "%d", hi);
  close(hi);
  r = PARSE("", "--fd", closed, "/mnt");
  failed_with(r, "--fd of a closed descriptor", "not an open file descriptor");
  r = PARSE("", "/mnt", "-o", "fd=510");
  failed_with(r, "-o fd=510 (closed)", "510");
  r = PARSE("", "--fd", "-1", "/mnt");
  failed_with(r, "--fd -1", "--fd");
  r = PARSE("", "--fd", "x", "/mnt");
  failed_with(r, "--fd x", "--fd");

  /* The last ] ends the command: a ] inside belongs to it. */
  r = PARSE("", "[", "sh", "-c", "echo ]", "]", "x", "]", "/mnt", "-v");
  CHECK(r == 0 && o.server_argv && !strcmp(o.server_argv[4], "x") && !o.server_argv[5],
        "command runs to the last ]");
  CHECK_EQ(nbd_verbose, 1, "-v after the command and MOUNTPOINT");
}

static void test_anywhere(void)
{
  int r = PARSE("", "nbd://h", "/mnt", "-o", "ro,allow_other", "-C", "3", "--timeout=7");
  CHECK(r == 0 && o.readonly && o.connections == 3 && o.timeout_s == 7,
        "options after the positionals (mount.fuse3 style)");
  CHECK_STR(o.uri, "nbd://h", "URI with trailing options");
  CHECK_STR(o.mountpoint, "/mnt", "MOUNTPOINT with trailing options");
  CHECK(o.allow_other && has_fuse_opt("allow_other"), "allow_other: noted and passed");

  r = PARSE("", "-f", "nbd://h", "-rv", "/mnt", "--no-reconnect");
  CHECK(r == 0 && o.foreground && o.readonly && nbd_verbose == 1 && o.no_reconnect,
        "options between the positionals, grouped short options");

  r = PARSE("", "-v", "--", "-odd-uri", "/mnt");
  CHECK(r == 0 && nbd_verbose == 1, "-- ends the options");
  CHECK_STR(o.uri, "-odd-uri", "a word after -- is a positional");

  r = PARSE("", "nbd://h", "/mnt", "--export", "vol", "--log-file", "/tmp/l", "--nonempty");
  CHECK(r == 0 && o.nonempty, "--nonempty");
  CHECK_STR(o.export_name, "vol", "--export NAME");
  CHECK_STR(o.log_file, "/tmp/l", "--log-file FILE");

  r = PARSE("", "nbd://h", "/mnt", "--bogus");
  failed_with(r, "unknown long option", "--bogus");
  r = PARSE("", "nbd://h", "/mnt", "-C");
  failed_with(r, "-C without its argument", "-C");
  r = PARSE("", "nbd://h", "/mnt", "-C", "0");
  failed_with(r, "-C 0", "--connections");
}

static void test_o(void)
{
  int r = PARSE("", "nbd://h", "/mnt", "-o", "connections=2,ro,timeout=5", "-o",
                "uid=123,gid=456,umask=027,_netdev,defaults,x-systemd.automount,comment=hi,fsname=zz");
  CHECK(r == 0, "-o lists parse (%s)", msg);
  CHECK_EQ(o.connections, 2, "-o connections=2");
  CHECK_EQ(o.timeout_s, 5, "-o timeout=5");
  CHECK(o.readonly && has_fuse_opt("ro"), "-o ro: read-only, and passed to FUSE");
  CHECK(o.have_uid && o.uid == 123 && o.have_gid && o.gid == 456, "-o uid, gid");
  CHECK(o.have_umask && o.umask == 027, "-o umask=027 (octal)");
  CHECK(has_fuse_opt("fsname=zz"), "unknown item passed through");
  CHECK_EQ(o.nfuse_opts, 2, "only ro and fsname=zz go to FUSE");
  CHECK(!has_fuse_opt("_netdev") && !has_fuse_opt("uid=123") && !has_fuse_opt("connections=2"),
        "ours and mount-only words not passed");

  r = PARSE("", "nbd://h", "/mnt", "-o", "rw,read_only,no_tls_verify_peer,tls=require,replay-limit=0");
  CHECK(r == 0 && o.readonly && !o.tls.verify_peer && o.tls.mode == TLS_REQUIRE &&
        o.replay_limit_mib == 0, "-o with '_' for '-' and with '-'");
  CHECK(has_fuse_opt("rw") && o.nfuse_opts == 1, "-o rw passed through");

  r = PARSE("", "nbd://h", "/mnt", "-o", "uid=root,gid=root,allow_root,log_file=/a\\,b,export=");
  CHECK(r == 0 && o.uid == 0 && o.gid == 0, "-o uid, gid by name");
  CHECK(o.allow_other && has_fuse_opt("allow_root"), "allow_root passed and noted");
  CHECK_STR(o.log_file, "/a,b", "an escaped comma stays in the value");
  CHECK_STR(o.export_name, "", "-o export= names the default export");

  r = PARSE("", "nbd://h", "/mnt", "-o", "exports,nonempty,foreground,verbose,verbose");
  CHECK(r == 0 && o.exports && o.nonempty && o.foreground && nbd_verbose == 2, "-o flags");

  r = PARSE("", "nbd://h", "/mnt", "-o", "connections=abc");
  failed_with(r, "-o connections=abc", "connections");
  r = PARSE("", "nbd://h", "/mnt", "-o", "connections");
  failed_with(r, "-o connections (no value)", "needs a value");
  r = PARSE("", "nbd://h", "/mnt", "-o", "readonly=1");
  failed_with(r, "-o readonly=1", "takes no value");
  r = PARSE("", "nbd://h", "/mnt", "-o", "umask=999");
  failed_with(r, "-o umask=999", "umask");
  r = PARSE("", "nbd://h", "/mnt", "-o", "umask=1000");
  failed_with(r, "-o umask=1000", "umask");
  r = PARSE("", "nbd://h", "/mnt", "-o", "uid=no-such-user-here");
  failed_with(r, "-o uid=unknown", "no-such-user-here");
  r = PARSE("", "nbd://h", "/mnt", "-o", "gid");
  failed_with(r, "-o gid without value", "gid");
  r = PARSE("", "nbd://h", "/mnt", "-o", "uid=4294967295");
  failed_with(r, "-o uid=-1 as a number", "uid");
  r = PARSE("", "nbd://h", "/mnt", "-o", "tls=maybe");
  failed_with(r, "-o tls=maybe", "tls");
  r = PARSE("", "nbd://h", "/mnt", "-o", "help");
  CHECK(r == 0 && has_fuse_opt("help"), "-o help is FUSE's, not ours");
}

static void test_conflicts(void)
{
  int r = PARSE("", "--command", "nbd://h", "/mnt");
  failed_with(r, "--command without [ CMD ]", "[ CMD");
  r = PARSE("", "--fd", "0", "nbd://h", "/mnt");
  failed_with(r, "--fd with a URI", "URI");
  r = PARSE("", "--fd", "0", "[", "nbdkit", "]", "/mnt");
  failed_with(r, "--fd with [ CMD ]", "--fd");
  r = PARSE("", "--fd", "0", "--command", "[", "nbdkit", "]", "/mnt");
  failed_with(r, "--fd with --command", "--fd");
  r = PARSE("", "--exports", "--command", "[", "nbdkit", "]", "/mnt");
  failed_with(r, "--exports with --command", "a URI or [ CMD ]");
  r = PARSE("", "--exports", "--fd", "0", "/mnt");
  failed_with(r, "--exports with --fd", "more than once");
  r = PARSE("", "--exports", "[", "nbdkit", "]", "/mnt");
  CHECK(r == 0 && o.exports && o.source == SERVER_ACTIVATE, "--exports with [ CMD ] is fine");
  r = PARSE("", "--exports", "--export", "a", "nbd://h", "/mnt");
  failed_with(r, "--exports with --export", "--export");
  r = PARSE("", "[", "]", "/mnt");
  failed_with(r, "empty [ ]", "empty");
  r = PARSE("", "[", "nbdkit", "/mnt");
  failed_with(r, "[ without ]", "']'");
  r = PARSE("", "nbdkit", "]", "/mnt");
  failed_with(r, "] without [", "']'");
  r = PARSE("", "[", "a", "]", "nbd://h", "/mnt");
  failed_with(r, "[ CMD ] with a URI", "URI");
  r = PARSE("", "/mnt", "[", "a", "]");
  failed_with(r, "[ CMD ] after MOUNTPOINT", "before MOUNTPOINT");
  r = PARSE("", "[", "a", "]", "[", "b", "]", "/mnt");
  CHECK(r == 0 && o.server_argv && !strcmp(o.server_argv[2], "[") && !o.server_argv[4],
        "[ a ] [ b ]: one command up to the last ]");
  r = PARSE("", "[", "a", "]", "/mnt", "[", "b");
  failed_with(r, "a second [ without ]", "']'");
  r = PARSE("", "nbd://h");
  failed_with(r, "one positional", "got 1 argument");
  r = PARSE("", "nbd://h", "/a", "/b");
  failed_with(r, "three positionals", "got 3 arguments");
  r = PARSE("", "[", "a", "]");
  failed_with(r, "[ CMD ] without MOUNTPOINT", "MOUNTPOINT");
}

int main(void)
{
  test_sources();
  test_anywhere();
  test_o();
  test_conflicts();
  options_free(&o);
  return done_testing();
}
