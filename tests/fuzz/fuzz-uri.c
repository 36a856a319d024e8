/* fuzz-uri.c: libFuzzer harness for nbd_uri_parse, nbd_uri_decode and the
 * export-name <-> file-name escaping (name_from_export / name_to_export).
 *
 * The input (up to its first NUL) is parsed as a URI and used as an export
 * name and as a file name; the raw bytes are percent-decoded.  Checked:
 * parsed URIs are consistent; file names made from any export name are
 * single path components that decode back exactly; any file name that
 * decodes is the canonical encoding of what it decodes to.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "names.h"
#include "uri.h"

static bool same(const char *a, const char *b) { return (!a && !b) || (a && b && !strcmp(a, b)); }

/* nbd_uri_format writes a URI that parses back to the same thing, except
 * where its fixed buffers cut very long fields short: host and user names
 * over 255 bytes, socket paths too long for sun_path (which cannot be
 * connected to anyway). */
static void check_format(const struct nbd_uri *u)
{
  if ((u->host && strlen(u->host) > 255) || (u->user && strlen(u->user) > 255) || u->socket_len > 107)
    return;
  static char out[20000];
  nbd_uri_format(u, u->export_name, out, sizeof out);
  struct nbd_uri v;
  char err[256];
  if (nbd_uri_parse(out, &v, err, sizeof err) != 0) {
    fprintf(stderr, "fuzz-uri: formatted URI '%s' does not parse: %s\n", out, err);
    abort();
  }
  if (v.transport != u->transport || v.tls != u->tls || !same(v.host, u->host) || !same(v.port, u->port) ||
      !same(v.user, u->user) || !same(v.export_name, u->export_name) || v.socket_len != u->socket_len ||
      (u->socket && memcmp(v.socket, u->socket, u->socket_len))) {
    fprintf(stderr, "fuzz-uri: formatted URI '%s' parses differently\n", out);
    abort();
  }
  nbd_uri_free(&v);
}

static void check_uri(const char *s)
{
  struct nbd_uri u;
  char err[256];
  err[0] = '\0';
  if (nbd_uri_parse(s, &u, err, sizeof err) == 0) {
    if (!u.export_name || strlen(u.export_name) > 4096)
      abort();
    switch (u.transport) {
    case NBD_TRANSPORT_UNIX:
      if (!u.socket || u.socket_len == 0 || u.host)
        abort();
      break;
    case NBD_TRANSPORT_TCP:
    case NBD_TRANSPORT_VSOCK:
      if (!u.host || !u.host[0] || !u.port || u.socket)
        abort();
      break;
    default:
      abort();
    }
    if (strchr(s, '#'))
      abort(); /* fragments are rejected */
    char d[512];
    nbd_uri_describe(&u, d, sizeof d);
    if (strlen(d) >= sizeof d)
      abort();
    check_format(&u);
  } else {
    /* A failure comes with a one-line reason, free of control characters
     * even when it quotes the URI. */
    if (!err[0])
      abort();
    for (const char *p = err; *p; p++)
      if ((unsigned char)*p < 0x20 || *p == 0x7f)
        abort();
  }
  nbd_uri_free(&u);
}

static void check_names(const char *s, const char *def)
{
  char *f = name_from_export(s, def);
  if (!f)
    abort();
  if (!f[0] || strchr(f, '/') || !strcmp(f, ".") || !strcmp(f, "..") || strlen(f) > 255)
    abort();
  if (strstr(f, "%~")) { /* shortened long name: never decoded */
    if (name_to_export(f, def))
      abort();
  } else {
    char *back = name_to_export(f, def);
    if (!back || strcmp(back, s))
      abort();
    free(back);
  }
  free(f);

  char *e = name_to_export(s, def);
  if (e) {
    char *again = name_from_export(e, def);
    if (!again || strcmp(again, s))
      abort();
    free(again);
    free(e);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  char *s = malloc(size + 1);
  if (!s)
    return 0;
  memcpy(s, data, size);
  s[size] = '\0';
  check_uri(s);
  check_names(s, "disk");
  check_names(s, "default");

  size_t n = 0;
  char *d = nbd_uri_decode((const char *)data, size, size & 1, &n);
  if (d) {
    if (n > size || d[n] != '\0')
      abort();
    /* Raw NUL bytes pass through (callers decode C strings); %00 must not. */
    for (size_t i = 1; i < n && !memchr(data, 0, size); i++)
      if (d[i] == '\0')
        abort(); /* only a leading NUL may survive, and only when allowed */
    if (n && d[0] == '\0' && !(size & 1) && !memchr(data, 0, size))
      abort();
    free(d);
  }
  free(s);
  return 0;
}
