/* test-uri.c: the NBD URI parser against section 8 of the client reference. */
#include <string.h>

#include "check.h"
#include "uri.h"

static char err[512];

/* Parse and expect success. */
static bool ok(const char *s, struct nbd_uri *u)
{
  err[0] = '\0';
  int r = nbd_uri_parse(s, u, err, sizeof err);
  if (r != 0)
    printf("#   '%s' failed: %s\n", s, err);
  return r == 0;
}

/* Parse and expect failure with a one-line message that mentions needle
 * (when given). */
static void bad(const char *s, const char *needle)
{
  struct nbd_uri u;
  err[0] = '\0';
  int r = nbd_uri_parse(s, &u, err, sizeof err);
  CHECK(r == -1, "rejects '%s'", s);
  CHECK(err[0] && !strchr(err, '\n'), "'%s': one-line reason given (%s)", s, err);
  if (needle)
    CHECK(strstr(err, needle) != NULL, "'%s': reason mentions '%s' (%s)", s, needle, err);
  nbd_uri_free(&u);
}

/* Expect success with this export name (TCP host h). */
static void export_is(const char *s, const char *want)
{
  struct nbd_uri u;
  if (ok(s, &u)) {
    CHECK_STR(u.export_name, want, "'%s' -> export '%s'", s, want);
  } else {
    CHECK(0, "'%s' parses", s);
  }
  nbd_uri_free(&u);
}

static void test_export_names(void)
{
  struct nbd_uri u;

  CHECK(ok("nbd://h/", &u), "nbd://h/ parses");
  CHECK_STR(u.export_name, "", "nbd://h/ is the default export");
  CHECK(u.has_export, "nbd://h/ names a path");
  CHECK_STR(u.host, "h", "host h");
  CHECK_STR(u.port, "10809", "default port 10809");
  CHECK(u.transport == NBD_TRANSPORT_TCP, "nbd:// is TCP");
  CHECK(!u.tls, "nbd:// does not require TLS");
  CHECK(u.user == NULL, "no userinfo");
  CHECK(u.socket == NULL, "no socket for TCP");
  CHECK_EQ(u.tls_verify_peer, -1, "tls-verify-peer unset");
  nbd_uri_free(&u);

  CHECK(ok("nbd://h", &u), "nbd://h parses");
  CHECK_STR(u.export_name, "", "nbd://h is the default export");
  CHECK(!u.has_export, "nbd://h names no path");
  nbd_uri_free(&u);

  export_is("nbd://h/disk", "disk");
  export_is("nbd://h//disk", "/disk");
  export_is("nbd://h///", "//");
  export_is("nbd://h/a%20b", "a b");
  export_is("nbd://h/a%2Fb", "a/b");
  export_is("nbd://h/a%2fb", "a/b");
  export_is("nbd://h/a/b", "a/b");
  export_is("nbd://h/%3Fx%23y", "?x#y");
  export_is("nbd://h/%3fx%23y", "?x#y");
  export_is("nbd://h/a+b", "a+b");
  export_is("nbd://h/a%2Bb", "a+b");
  export_is("nbd://h/a@b", "a@b");
  export_is("nbd://h/a:b", "a:b");
  export_is("nbd://h/.", ".");
  export_is("nbd://h/..", "..");
  export_is("nbd://h/./../x/../y/.", "./../x/../y/.");
  export_is("nbd://h/%2E", ".");
  export_is("nbd://h/a%25b", "a%b");
  export_is("nbd://h/%C3%A9t%C3%A9", "\xc3\xa9t\xc3\xa9");
  export_is("nbd://h/\xc3\xa9", "\xc3\xa9");
  export_is("nbd://h/a?", "a");
  export_is("nbd://h/a?&&", "a");

  CHECK(ok("nbd+unix:///.?socket=s", &u), "nbd+unix:///.?socket=s parses");
  CHECK_STR(u.export_name, ".", "'.' is not normalised away");
  CHECK(u.socket && u.socket_len == 1 && !strcmp(u.socket, "s"), "socket s");
  nbd_uri_free(&u);

  CHECK(ok("nbd+unix:///?socket=s", &u), "nbd+unix:///?socket=s parses");
  CHECK_STR(u.export_name, "", "unix default export");
  CHECK(u.has_export, "unix: '/' names a path");
  nbd_uri_free(&u);

  CHECK(ok("nbd+unix://?socket=s", &u), "nbd+unix://?socket=s (no path) parses");
  CHECK_STR(u.export_name, "", "no path: default export");
  CHECK(!u.has_export, "no path: has_export false");
  nbd_uri_free(&u);

  /* Length limit: 4096 bytes is legal, 4097 is not. */
  char big[64 + 4097 * 3];
  strcpy(big, "nbd://h/");
  memset(big + 8, 'x', 4096);
  big[8 + 4096] = '\0';
  CHECK(ok(big, &u) && strlen(u.export_name) == 4096, "4096-byte export name accepted");
  nbd_uri_free(&u);
  strcat(big, "y");
  bad(big, "4096");
  /* The limit applies to the decoded name: 4096 x "%41" is fine. */
  strcpy(big, "nbd://h/");
  for (int i = 0; i < 4096; i++)
    strcat(big + 8 + 3 * i, "%41");
  CHECK(ok(big, &u) && strlen(u.export_name) == 4096, "4096 encoded bytes decode to a legal name");
  nbd_uri_free(&u);

  bad("nbd://h/a%00b", "export");
  bad("nbd://h/%00", NULL);
  bad("nbd://h/%", NULL);
  bad("nbd://h/a%4", NULL);
  bad("nbd://h/a%zz", NULL);
  bad("nbd://h/a%4g", NULL);
  bad("nbd://h/a%g4", NULL);
  bad("nbd://h/%%41", NULL);
}

static void test_authority(void)
{
  struct nbd_uri u;

  CHECK(ok("nbd://example.com", &u), "nbd://example.com parses");
  CHECK_STR(u.host, "example.com", "host example.com");
  CHECK_STR(u.port, "10809", "port 10809");
  nbd_uri_free(&u);

  CHECK(ok("nbd://h:1234/x", &u), "explicit port");
  CHECK_STR(u.port, "1234", "port 1234");
  nbd_uri_free(&u);
  CHECK(ok("nbd://h:/x", &u), "empty port");
  CHECK_STR(u.port, "10809", "empty port means 10809");
  CHECK_STR(u.export_name, "x", "export after empty port");
  nbd_uri_free(&u);
  CHECK(ok("nbd://h:", &u), "empty port, no path");
  CHECK_STR(u.port, "10809", "empty port, no path: 10809");
  nbd_uri_free(&u);
  CHECK(ok("nbd://h:65535", &u), "port 65535");
  CHECK_STR(u.port, "65535", "port 65535 kept");
  nbd_uri_free(&u);
  CHECK(ok("nbd://h:1?x-foo=bar", &u), "port then query, no path");
  CHECK_STR(u.port, "1", "port 1");
  nbd_uri_free(&u);
  bad("nbd://h:0/", "port");
  bad("nbd://h:65536/", "port");
  bad("nbd://h:99999999999999999999999/", "port");
  bad("nbd://h:12a/", "port");
  bad("nbd://h:-1/", "port");
  bad("nbd://h:+1/", "port");
  bad("nbd://h: 1/", "port");
  bad("nbd://:10809/", "host");
  bad("nbd:///disk", "host");
  bad("nbd://", "host");

  /* IPv6 literals. */
  CHECK(ok("nbd://[::1]/x", &u), "IPv6 literal");
  CHECK_STR(u.host, "::1", "brackets removed");
  CHECK_STR(u.port, "10809", "IPv6: default port");
  CHECK_STR(u.export_name, "x", "IPv6: export");
  nbd_uri_free(&u);
  CHECK(ok("nbd://[2001:db8::5]:10810", &u), "IPv6 literal with port");
  CHECK_STR(u.host, "2001:db8::5", "IPv6 host");
  CHECK_STR(u.port, "10810", "IPv6 port");
  nbd_uri_free(&u);
  CHECK(ok("nbd://[::1]:/", &u), "IPv6 literal with empty port");
  CHECK_STR(u.port, "10809", "IPv6 empty port -> 10809");
  nbd_uri_free(&u);
  CHECK(ok("nbd://[fe80::1%25eth0]:99/d", &u), "IPv6 zone id");
  CHECK_STR(u.host, "fe80::1%eth0", "%%25 zone id decodes to a percent sign");
  CHECK_STR(u.port, "99", "zone: port");
  nbd_uri_free(&u);
  bad("nbd://[::1/x", "IPv6");
  bad("nbd://[::1]x/", NULL);
  bad("nbd://[::1]:x/", "port");
  bad("nbd://[]/", "host");

  /* userinfo */
  CHECK(ok("nbd://alice@h/x", &u), "userinfo");
  CHECK_STR(u.user, "alice", "user alice");
  CHECK_STR(u.host, "h", "host after userinfo");
  nbd_uri_free(&u);
  CHECK(ok("nbd://b%40b@h", &u), "encoded @ in userinfo");
  CHECK_STR(u.user, "b@b", "user b@b");
  nbd_uri_free(&u);
  bad("nbd://a%zz@h/", NULL);
  bad("nbd://%zz/", NULL);
}

static void test_schemes(void)
{
  struct nbd_uri u;

  CHECK(ok("NBD://h/x", &u), "upper-case scheme");
  CHECK(u.transport == NBD_TRANSPORT_TCP && !u.tls, "NBD:// is plain TCP");
  nbd_uri_free(&u);
  CHECK(ok("NbDs://h/x", &u), "mixed-case nbds");
  CHECK(u.transport == NBD_TRANSPORT_TCP && u.tls, "nbds:// requires TLS");
  nbd_uri_free(&u);
  CHECK(ok("Nbd+Unix:///x?socket=/s", &u), "mixed-case nbd+unix");
  CHECK(u.transport == NBD_TRANSPORT_UNIX && !u.tls, "nbd+unix: unix, no TLS");
  nbd_uri_free(&u);
  CHECK(ok("nbds+unix:///x?socket=/s", &u), "nbds+unix");
  CHECK(u.transport == NBD_TRANSPORT_UNIX && u.tls, "nbds+unix: unix with TLS");
  nbd_uri_free(&u);
  CHECK(ok("nbds+vsock://2", &u), "nbds+vsock");
  CHECK(u.transport == NBD_TRANSPORT_VSOCK && u.tls, "nbds+vsock: vsock with TLS");
  nbd_uri_free(&u);

  bad("http://h/x", "scheme");
  bad("nbd+tcp://h/x", "scheme");
  bad("nbdx://h/x", "scheme");
  bad("averyveryveryverylongscheme://h/x", "scheme");
  bad("h/disk", NULL);
  bad("", NULL);
  bad("nbd:/h/disk", NULL);

  /* Fragments. */
  bad("nbd://h/disk#frag", "fragment");
  bad("nbd://h/disk#", "fragment");
  bad("nbd://h/?x-a=1#f", "fragment");
}

static void test_unix_vsock(void)
{
  struct nbd_uri u;

  bad("nbd+unix:///disk", "socket");
  bad("nbd+unix:///disk?x-y=1", "socket");
  bad("nbd+unix://h/disk?socket=/s", NULL);
  bad("nbd+unix://:10809/disk?socket=/s", NULL);
  bad("nbd+unix://[::1]/disk?socket=/s", NULL);
  bad("nbd+unix:///?socket=", "socket");
  bad("nbd+unix:///?socket", "socket");
  bad("nbd+unix:///?socket=a%00b", "socket");
  bad("nbd+unix:///?socket=%zz", "socket");
  bad("nbd://h/?socket=/s", "socket");
  bad("nbds://h/?socket=/s", "socket");
  bad("nbd+vsock://2/?socket=/s", "socket");

  CHECK(ok("nbd+unix:///disk?socket=/run/nbd.sock", &u), "unix socket");
  CHECK_STR(u.socket, "/run/nbd.sock", "socket path");
  CHECK_EQ(u.socket_len, strlen("/run/nbd.sock"), "socket_len");
  CHECK_STR(u.export_name, "disk", "unix export");
  CHECK(u.host == NULL && u.port == NULL, "unix: no host or port");
  nbd_uri_free(&u);

  CHECK(ok("nbd+unix:///?socket=/tmp/a%20b+c", &u), "socket value is percent-decoded, '+' literal");
  CHECK_STR(u.socket, "/tmp/a b+c", "socket /tmp/a b+c");
  nbd_uri_free(&u);

  CHECK(ok("nbd+unix:///?socket=/a&socket=/b", &u), "repeated socket");
  CHECK_STR(u.socket, "/b", "last socket wins");
  nbd_uri_free(&u);

  CHECK(ok("nbd+unix:///?socket=%00/abstract", &u), "abstract socket");
  CHECK_EQ(u.socket_len, 10, "abstract: length counts the leading NUL");
  CHECK(u.socket && u.socket[0] == '\0' && !memcmp(u.socket + 1, "/abstract", 9),
        "abstract: leading NUL then the name");
  CHECK_STR(u.export_name, "", "abstract: default export");
  nbd_uri_free(&u);

  CHECK(ok("nbd+vsock://2/", &u), "vsock CID 2");
  CHECK(u.transport == NBD_TRANSPORT_VSOCK, "vsock transport");
  CHECK_STR(u.host, "2", "CID 2");
  CHECK_STR(u.port, "10809", "vsock default port");
  nbd_uri_free(&u);
  CHECK(ok("nbd+vsock://4294967295:7/x", &u), "vsock with port and export");
  CHECK_STR(u.host, "4294967295", "CID");
  CHECK_STR(u.port, "7", "vsock port");
  CHECK_STR(u.export_name, "x", "vsock export");
  nbd_uri_free(&u);
  bad("nbd+vsock://host/", "CID");
  bad("nbd+vsock://2a/", "CID");
  bad("nbd+vsock:///", "host");
}

static void test_query(void)
{
  struct nbd_uri u;

  bad("nbd://h/?foo=1", "foo");
  bad("nbd://h/?foo", "foo");
  bad("nbd://h/x?tls-type=psk&bogus=1", "bogus");
  bad("nbd://h/?Socket=/s", NULL);
  bad("nbd://h/?aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa=1", NULL);

  CHECK(ok("nbd://h/?x-experiment=1&x-other", &u), "x-* parameters accepted");
  nbd_uri_free(&u);
  CHECK(ok("nbd://h/?&&x-a=1&&", &u), "empty query components skipped");
  nbd_uri_free(&u);

  CHECK(ok("nbds://alice@[2001:db8::5]:10810/vm-1?tls-type=psk&tls-psk-file=/etc/nbd/keys.psk", &u),
        "reference PSK example");
  CHECK(u.tls && u.transport == NBD_TRANSPORT_TCP, "PSK example: TLS over TCP");
  CHECK_STR(u.user, "alice", "PSK example: user");
  CHECK_STR(u.host, "2001:db8::5", "PSK example: host");
  CHECK_STR(u.port, "10810", "PSK example: port");
  CHECK_STR(u.export_name, "vm-1", "PSK example: export");
  CHECK_STR(u.tls_type, "psk", "PSK example: tls-type recorded");
  CHECK_STR(u.tls_psk_file, "/etc/nbd/keys.psk", "PSK example: tls-psk-file recorded");
  nbd_uri_free(&u);

  CHECK(ok("nbds+unix:///disk?socket=/run/nbd.sock&tls-hostname=nbd.example.com", &u),
        "reference TLS-over-unix example");
  CHECK_STR(u.tls_hostname, "nbd.example.com", "tls-hostname recorded");
  CHECK_STR(u.socket, "/run/nbd.sock", "socket recorded");
  CHECK(u.tls, "nbds+unix: TLS");
  nbd_uri_free(&u);

  CHECK(ok("nbds://h/?tls-certificates=%2Fetc%2Fpki&tls-type=x509&tls-verify-peer=false", &u),
        "tls-certificates, tls-type=x509, tls-verify-peer");
  CHECK_STR(u.tls_certificates, "/etc/pki", "tls-certificates decoded");
  CHECK_STR(u.tls_type, "x509", "tls-type x509");
  CHECK_EQ(u.tls_verify_peer, 0, "tls-verify-peer=false -> 0");
  nbd_uri_free(&u);

  CHECK(ok("nbds://h/?tls-verify-peer=1", &u) && u.tls_verify_peer == 1, "tls-verify-peer=1");
  nbd_uri_free(&u);
  CHECK(ok("nbds://h/?tls-verify-peer=0", &u) && u.tls_verify_peer == 0, "tls-verify-peer=0");
  nbd_uri_free(&u);
  CHECK(ok("nbds://h/?tls-verify-peer=1&tls-verify-peer=0", &u) && u.tls_verify_peer == 0,
        "repeated tls-verify-peer: last wins");
  nbd_uri_free(&u);
  bad("nbds://h/?tls-verify-peer=maybe", "tls-verify-peer");
  bad("nbds://h/?tls-verify-peer", "tls-verify-peer");
  bad("nbds://h/?tls-type=bogus", "tls-type");
  bad("nbds://h/?tls-hostname=%zz", "tls-hostname");
  bad("nbds://h/?tls-hostname=a%00b", "tls-hostname");

  CHECK(ok("nbds://h/?tls-username=bob", &u), "tls-username");
  CHECK_STR(u.user, "bob", "tls-username sets the user");
  nbd_uri_free(&u);

  CHECK(ok("nbds://h/?tls-hostname=a%2Eb+c", &u), "query values percent-decoded, '+' literal");
  CHECK_STR(u.tls_hostname, "a.b+c", "tls-hostname a.b+c");
  nbd_uri_free(&u);

  CHECK(ok("nbds://h/?tls-hostname=a=b", &u), "split on the first '='");
  CHECK_STR(u.tls_hostname, "a=b", "value keeps later '='");
  nbd_uri_free(&u);

  CHECK(ok("nbd://h?x-a=1", &u), "query without a path");
  CHECK_STR(u.export_name, "", "query without path: default export");
  nbd_uri_free(&u);
}

static void test_decode_describe(void)
{
  size_t n = 99;
  char *d = nbd_uri_decode("a%41%62c", 8, false, &n);
  CHECK_STR(d, "aAbc", "nbd_uri_decode basic");
  CHECK_EQ(n, 4, "decoded length");
  free(d);
  d = nbd_uri_decode("%00x", 4, true, &n);
  CHECK(d && n == 2 && d[0] == 0 && d[1] == 'x', "allow_nul: leading %%00 kept");
  free(d);
  d = nbd_uri_decode("x%00", 4, true, &n);
  CHECK(d == NULL, "allow_nul: %%00 after the first byte still rejected");
  free(d);
  d = nbd_uri_decode("%00", 3, false, &n);
  CHECK(d == NULL, "%%00 rejected without allow_nul");
  d = nbd_uri_decode("%4", 2, false, &n);
  CHECK(d == NULL, "truncated escape rejected");
  /* Only len bytes are looked at. */
  d = nbd_uri_decode("ab%41", 2, false, &n);
  CHECK_STR(d, "ab", "decode honours len");
  free(d);
  d = nbd_uri_decode("a%41", 2, false, &n);
  CHECK(d == NULL, "decode: an escape cut by len is truncated, not read past len");
  free(d);

  struct nbd_uri u;
  char out[256];
  if (ok("nbd://[::1]:77/x", &u)) {
    nbd_uri_describe(&u, out, sizeof out);
    CHECK_STR(out, "nbd://[::1]:77", "describe IPv6");
  }
  nbd_uri_free(&u);
  if (ok("nbds://h/x", &u)) {
    nbd_uri_describe(&u, out, sizeof out);
    CHECK_STR(out, "nbds://h:10809", "describe TCP with TLS");
  }
  nbd_uri_free(&u);
  if (ok("nbd+unix:///x?socket=/s", &u)) {
    nbd_uri_describe(&u, out, sizeof out);
    CHECK(strstr(out, "/s") != NULL, "describe unix names the socket (%s)", out);
  }
  nbd_uri_free(&u);
  if (ok("nbd+unix:///x?socket=%00abs", &u)) {
    nbd_uri_describe(&u, out, sizeof out);
    CHECK(strstr(out, "@abs") != NULL, "describe abstract socket as @name (%s)", out);
  }
  nbd_uri_free(&u);
  if (ok("nbd+vsock://3", &u)) {
    nbd_uri_describe(&u, out, sizeof out);
    CHECK_STR(out, "nbd+vsock://3:10809", "describe vsock");
  }
  nbd_uri_free(&u);
}

/* uri.h promises a one-line reason; the reason quotes what it rejects
 * (regression: it used to echo control characters). */
static void test_reason_one_line(void)
{
  static const char *const evil[] = {
    "nbd://h/?foo\nbar=1", "http\n://h/", "nbd://h:1\n2/", "nbd://h/?x\x1b[2J=1",
  };
  for (unsigned i = 0; i < sizeof evil / sizeof evil[0]; i++) {
    struct nbd_uri u;
    err[0] = '\0';
    int r = nbd_uri_parse(evil[i], &u, err, sizeof err);
    CHECK(r == -1, "URI %u with a control character rejected", i);
    bool clean = true;
    for (const char *p = err; *p; p++)
      clean &= (unsigned char)*p >= 0x20 && *p != 0x7f;
    CHECK(err[0] && clean, "URI %u: reason is one line without control characters", i);
    nbd_uri_free(&u);
  }
}

static bool same_str(const char *a, const char *b) { return (!a && !b) || (a && b && !strcmp(a, b)); }

/* nbd_uri_format must produce a URI that parses back to the same server and
 * export (it is shown to users as user.nbd.uri, to be typed or pasted). */
static bool format_round_trip(const char *uri, const char *export_name, char *shown, size_t shownlen)
{
  struct nbd_uri u, v;
  bool good = false;
  shown[0] = '\0';
  if (nbd_uri_parse(uri, &u, err, sizeof err) == 0) {
    static char out[20000];
    nbd_uri_format(&u, export_name ? export_name : u.export_name, out, sizeof out);
    size_t n = strlen(out) < shownlen - 1 ? strlen(out) : shownlen - 1;
    memcpy(shown, out, n);
    shown[n] = '\0';
    if (nbd_uri_parse(out, &v, err, sizeof err) == 0) {
      good = v.transport == u.transport && v.tls == u.tls && same_str(v.host, u.host) &&
             same_str(v.port, u.port) && v.socket_len == u.socket_len &&
             (!u.socket || !memcmp(v.socket, u.socket, u.socket_len)) && same_str(v.user, u.user) &&
             same_str(v.export_name, export_name ? export_name : u.export_name);
    }
    nbd_uri_free(&v);
  }
  nbd_uri_free(&u);
  return good;
}

static void test_format(void)
{
  static const char *const uris[] = {
    "nbd://h/disk", "nbd://example.com", "nbd://h:1234//disk", "nbd://h/a%2Fb", "nbd://h/%3Fx%23y",
    "nbd://h/a+b%20c%25d", "nbd+unix:///.?socket=/tmp/s", "nbd+unix:///?socket=/tmp/a%20b%26c%3Dd",
    "nbd+unix:///x?socket=%00/abstract", "nbds://alice@[2001:db8::5]:10810/vm-1", "nbd+vsock://2/x",
    "nbd://h/%C3%A9%01%7F", "nbd://h/..", "nbd://h/a:b@c!$'()*,;",
  };
  char shown[512];
  for (unsigned i = 0; i < sizeof uris / sizeof uris[0]; i++)
    CHECK(format_round_trip(uris[i], NULL, shown, sizeof shown), "format(parse('%s')) = '%s' parses back the same",
          uris[i], shown);
  CHECK(format_round_trip("nbd://h/", "other/export?#%", shown, sizeof shown),
        "format with another export name: '%s'", shown);

  /* Regressions: the zone id's '%' and a '@' in the user name were written
   * raw, and a 4096-byte export name of escaped bytes was cut short. */
  CHECK(format_round_trip("nbd://[fe80::1%25eth0]:99/d", NULL, shown, sizeof shown),
        "IPv6 zone id survives format/parse ('%s')", shown);
  CHECK(format_round_trip("nbd://b%40b@h/x", NULL, shown, sizeof shown),
        "a user name containing '@' survives format/parse ('%s')", shown);
  CHECK(format_round_trip("nbd://my%20host/d", NULL, shown, sizeof shown),
        "a host name with a space survives format/parse ('%.60s')", shown);
  static char longname[4097];
  memset(longname, '%', 4096);
  CHECK(format_round_trip("nbd://h/", longname, shown, sizeof shown),
        "a 4096-byte export name of escaped bytes is not truncated by format");
  memset(longname, '?', 4095);
  longname[4095] = '\0';
  CHECK(format_round_trip("nbd://h/", longname, shown, sizeof shown),
        "a 4095-byte export name of escaped bytes survives format/parse");
}

int main(void)
{
  test_export_names();
  test_authority();
  test_schemes();
  test_unix_vsock();
  test_query();
  test_decode_describe();
  test_reason_one_line();
  test_format();
  return done_testing();
}
