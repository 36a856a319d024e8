/* uri.c: NBD URI parser, following the NBD URI specification's rules:
 * one leading '/' of the path is dropped, the rest is percent-decoded and
 * never normalised; '+' is a literal plus; unknown query keys are errors. */
#include "uri.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
  /* The reason quotes the user's URI: keep it one printable line. */
  for (char *c = err; *c; c++)
    if ((unsigned char)*c < 0x20 || *c == 0x7f)
      *c = '?';
  return -1;
}

static int hexval(char c)
{
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

char *nbd_uri_decode(const char *src, size_t len, bool allow_nul, size_t *outlen)
{
  char *out = malloc(len + 1);
  size_t o = 0;
  if (!out)
    return NULL;
  for (size_t i = 0; i < len; i++) {
    if (src[i] == '%') {
      int hi, lo;
      if (i + 2 >= len || (hi = hexval(src[i + 1])) < 0 || (lo = hexval(src[i + 2])) < 0) {
        free(out);
        return NULL;
      }
      char c = (char)(hi << 4 | lo);
      if (c == '\0' && !(allow_nul && o == 0)) {
        free(out);
        return NULL;
      }
      out[o++] = c;
      i += 2;
    } else {
      out[o++] = src[i];
    }
  }
  out[o] = '\0';
  if (outlen)
    *outlen = o;
  return out;
}

void nbd_uri_free(struct nbd_uri *u)
{
  if (u->transport == NBD_TRANSPORT_FD && u->fd >= 0)
    close(u->fd);
  free(u->host);
  free(u->port);
  free(u->socket);
  free(u->export_name);
  free(u->user);
  free(u->tls_certificates);
  free(u->tls_psk_file);
  free(u->tls_hostname);
  free(u->tls_type);
  free(u->label);
  memset(u, 0, sizeof *u);
  u->fd = -1;
}

/* Store a decoded query value into *slot (last one wins). */
static int set_param(char **slot, const char *v, size_t vlen, const char *key,
                     char *err, size_t errlen)
{
  char *d = nbd_uri_decode(v, vlen, false, NULL);
  if (!d)
    return fail(err, errlen, "bad percent-encoding in URI query parameter '%s'", key);
  free(*slot);
  *slot = d;
  return 0;
}

static int parse_bool(const char *s, int *out)
{
  if (!strcmp(s, "1") || !strcasecmp(s, "true") || !strcasecmp(s, "on") || !strcasecmp(s, "yes"))
    *out = 1;
  else if (!strcmp(s, "0") || !strcasecmp(s, "false") || !strcasecmp(s, "off") ||
           !strcasecmp(s, "no"))
    *out = 0;
  else
    return -1;
  return 0;
}

static int parse_query(struct nbd_uri *u, const char *q, size_t qlen, char *err, size_t errlen)
{
  const char *end = q + qlen;
  while (q < end) {
    const char *amp = memchr(q, '&', (size_t)(end - q));
    const char *pe = amp ? amp : end;
    const char *eq = memchr(q, '=', (size_t)(pe - q));
    if (pe == q) { /* empty component ("&&") */
      q = pe + 1;
      continue;
    }
    size_t klen = (size_t)((eq ? eq : pe) - q);
    char key[64];
    if (klen >= sizeof key)
      return fail(err, errlen, "unknown URI query parameter '%.*s'", (int)klen, q);
    memcpy(key, q, klen);
    key[klen] = '\0';
    const char *v = eq ? eq + 1 : pe;
    size_t vlen = (size_t)(pe - v);
    int r = 0;
    if (!strcmp(key, "socket")) {
      if (u->transport != NBD_TRANSPORT_UNIX)
        return fail(err, errlen, "URI parameter 'socket' is only valid with nbd+unix:// or nbds+unix://");
      free(u->socket);
      u->socket = nbd_uri_decode(v, vlen, true, &u->socket_len);
      if (!u->socket || u->socket_len == 0)
        return fail(err, errlen, "bad socket path in URI");
    } else if (!strcmp(key, "tls-certificates")) {
      r = set_param(&u->tls_certificates, v, vlen, key, err, errlen);
    } else if (!strcmp(key, "tls-psk-file")) {
      r = set_param(&u->tls_psk_file, v, vlen, key, err, errlen);
    } else if (!strcmp(key, "tls-hostname")) {
      r = set_param(&u->tls_hostname, v, vlen, key, err, errlen);
    } else if (!strcmp(key, "tls-username")) {
      r = set_param(&u->user, v, vlen, key, err, errlen);
    } else if (!strcmp(key, "tls-type")) {
      r = set_param(&u->tls_type, v, vlen, key, err, errlen);
      if (!r && strcmp(u->tls_type, "x509") && strcmp(u->tls_type, "psk"))
        return fail(err, errlen, "unsupported tls-type '%s' in URI (use x509 or psk)", u->tls_type);
    } else if (!strcmp(key, "tls-verify-peer")) {
      char *b = NULL;
      r = set_param(&b, v, vlen, key, err, errlen);
      if (!r && parse_bool(b, &u->tls_verify_peer) < 0)
        r = fail(err, errlen, "tls-verify-peer in URI must be true or false, not '%s'", b);
      free(b);
    } else if (!strncmp(key, "x-", 2)) {
      /* reserved for experiments: accepted and ignored */
    } else {
      return fail(err, errlen, "unknown URI query parameter '%s'", key);
    }
    if (r < 0)
      return r;
    q = pe + 1;
  }
  return 0;
}

int nbd_uri_parse(const char *uri, struct nbd_uri *u, char *err, size_t errlen)
{
  memset(u, 0, sizeof *u);
  u->tls_verify_peer = -1;
  u->fd = -1;

  const char *sep = strstr(uri, "://");
  if (!sep)
    return fail(err, errlen, "'%s' is not an NBD URI (expected nbd://, nbd+unix:// or nbd+vsock://)", uri);
  size_t slen = (size_t)(sep - uri);
  char scheme[16];
  if (slen >= sizeof scheme)
    return fail(err, errlen, "unknown URI scheme in '%s'", uri);
  for (size_t i = 0; i < slen; i++)
    scheme[i] = (char)tolower((unsigned char)uri[i]);
  scheme[slen] = '\0';

  if (!strcmp(scheme, "nbd") || !strcmp(scheme, "nbds"))
    u->transport = NBD_TRANSPORT_TCP;
  else if (!strcmp(scheme, "nbd+unix") || !strcmp(scheme, "nbds+unix"))
    u->transport = NBD_TRANSPORT_UNIX;
  else if (!strcmp(scheme, "nbd+vsock") || !strcmp(scheme, "nbds+vsock"))
    u->transport = NBD_TRANSPORT_VSOCK;
  else
    return fail(err, errlen, "unknown URI scheme '%s' (expected nbd, nbds, nbd+unix, nbds+unix, nbd+vsock or nbds+vsock)", scheme);
  u->tls = scheme[3] == 's';

  const char *p = sep + 3;
  /* A fragment has no meaning for NBD. */
  if (strchr(p, '#'))
    return fail(err, errlen, "URI fragments ('#...') are not allowed in NBD URIs; encode '#' in export names as %%23");
  const char *query = strchr(p, '?');
  const char *end = query ? query : p + strlen(p);
  const char *path = memchr(p, '/', (size_t)(end - p));
  const char *auth_end = path ? path : end;

  /* Authority: [user@]host[:port] */
  const char *at = memchr(p, '@', (size_t)(auth_end - p));
  if (at) {
    u->user = nbd_uri_decode(p, (size_t)(at - p), false, NULL);
    if (!u->user)
      goto bad_encoding;
    p = at + 1;
  }
  const char *hs = p, *he, *portp = NULL;
  if (*p == '[') {
    const char *rb = memchr(p, ']', (size_t)(auth_end - p));
    if (!rb)
      return fail(err, errlen, "unterminated IPv6 literal in URI '%s'", uri);
    hs = p + 1;
    he = rb;
    if (rb + 1 < auth_end) {
      if (rb[1] != ':')
        return fail(err, errlen, "unexpected characters after IPv6 literal in URI '%s'", uri);
      portp = rb + 2;
    }
  } else {
    const char *colon = memchr(p, ':', (size_t)(auth_end - p));
    he = colon ? colon : auth_end;
    if (colon)
      portp = colon + 1;
  }

  if (u->transport == NBD_TRANSPORT_UNIX) {
    if (he != hs || (portp && portp < auth_end))
      return fail(err, errlen, "a Unix socket URI must not name a host or port: use nbd+unix:///EXPORT?socket=PATH");
  } else {
    if (he == hs)
      return fail(err, errlen, "URI '%s' names no host", uri);
    u->host = nbd_uri_decode(hs, (size_t)(he - hs), false, NULL);
    if (!u->host)
      goto bad_encoding;
    /* RFC 6874 zone ids arrive as %25 and decode to '%', which getaddrinfo takes. */
    if (portp && portp < auth_end) {
      for (const char *c = portp; c < auth_end; c++)
        if (!isdigit((unsigned char)*c))
          return fail(err, errlen, "bad port '%.*s' in URI", (int)(auth_end - portp), portp);
      long port = strtol(portp, NULL, 10);
      if (port < 1 || port > 65535)
        return fail(err, errlen, "port %.*s in URI is out of range", (int)(auth_end - portp), portp);
      u->port = strndup(portp, (size_t)(auth_end - portp));
    } else {
      u->port = strdup("10809");
    }
    if (u->transport == NBD_TRANSPORT_VSOCK) {
      for (const char *c = u->host; *c; c++)
        if (!isdigit((unsigned char)*c))
          return fail(err, errlen, "vsock URI needs a numeric CID, not '%s'", u->host);
    }
  }

  /* Path: drop exactly one leading '/', decode the rest. */
  if (path) {
    u->has_export = true;
    u->export_name = nbd_uri_decode(path + 1, (size_t)(end - path - 1), false, NULL);
    if (!u->export_name)
      return fail(err, errlen, "bad percent-encoding or NUL in the export name of URI '%s'", uri);
    if (strlen(u->export_name) > 4096)
      return fail(err, errlen, "export name in URI is longer than 4096 bytes");
  } else {
    u->export_name = strdup("");
  }

  if (query && parse_query(u, query + 1, strlen(query + 1), err, errlen) < 0)
    return -1;
  if (u->transport == NBD_TRANSPORT_UNIX && !u->socket)
    return fail(err, errlen, "a Unix socket URI needs ?socket=PATH");
  return 0;

bad_encoding:
  return fail(err, errlen, "bad percent-encoding in URI '%s'", uri);
}

int nbd_uri_from_fd(struct nbd_uri *u, int fd, const char *label, const char *export_name)
{
  memset(u, 0, sizeof *u);
  u->transport = NBD_TRANSPORT_FD;
  u->fd = fd;
  u->export_name = strdup(export_name ? export_name : "");
  u->has_export = export_name != NULL;
  u->tls_verify_peer = -1;
  u->label = label ? strdup(label) : NULL;
  if (!u->export_name || (label && !u->label)) {
    nbd_uri_free(u);
    return -1;
  }
  return 0;
}

int nbd_uri_from_socket(struct nbd_uri *u, const char *path, const char *label,
                        const char *export_name)
{
  if (nbd_uri_from_fd(u, -1, label, export_name) < 0)
    return -1;
  u->transport = NBD_TRANSPORT_UNIX;
  u->socket = strdup(path);
  if (!u->socket) {
    nbd_uri_free(u);
    return -1;
  }
  u->socket_len = strlen(path);
  return 0;
}

int nbd_uri_make_absolute(struct nbd_uri *u, char *err, size_t errlen)
{
  if (u->transport != NBD_TRANSPORT_UNIX || u->socket[0] == '/' || u->socket[0] == '\0')
    return 0;
  char *cwd = getcwd(NULL, 0);
  char *abs = NULL;
  if (!cwd || asprintf(&abs, "%s/%s", cwd, u->socket) < 0) {
    free(cwd);
    return fail(err, errlen, "cannot resolve the relative socket path '%s'", u->socket);
  }
  free(cwd);
  free(u->socket);
  u->socket = abs;
  u->socket_len = strlen(abs);
  return 0;
}

void nbd_uri_describe(const struct nbd_uri *u, char *out, size_t outlen)
{
  const char *s = u->tls ? "s" : "";
  if (u->label) {
    snprintf(out, outlen, "%s", u->label);
    return;
  }
  switch (u->transport) {
  case NBD_TRANSPORT_TCP:
    if (strchr(u->host, ':'))
      snprintf(out, outlen, "nbd%s://[%s]:%s", s, u->host, u->port);
    else
      snprintf(out, outlen, "nbd%s://%s:%s", s, u->host, u->port);
    break;
  case NBD_TRANSPORT_UNIX:
    snprintf(out, outlen, "nbd%s+unix socket %s%s", s, u->socket[0] ? "" : "@",
             u->socket[0] ? u->socket : u->socket + 1);
    break;
  case NBD_TRANSPORT_VSOCK:
    snprintf(out, outlen, "nbd%s+vsock://%s:%s", s, u->host, u->port);
    break;
  case NBD_TRANSPORT_FD:
    snprintf(out, outlen, "the socket on fd %d", u->fd);
    break;
  }
}

/* Percent-encode s, keeping unreserved characters and those in keep. */
static void encode(char *out, size_t outlen, const char *s, const char *keep)
{
  size_t o = 0;
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    bool plain = isalnum(*p) || strchr("-._~", *p) || (keep && strchr(keep, *p));
    size_t need = plain ? 1 : 3;
    if (o + need >= outlen)
      break;
    if (plain)
      out[o++] = (char)*p;
    else
      o += (size_t)snprintf(out + o, outlen - o, "%%%02X", *p);
  }
  out[o] = '\0';
}

void nbd_uri_format(const struct nbd_uri *u, const char *export_name, char *out, size_t outlen)
{
  static const char *const suffix[] = { "", "+unix", "+vsock" };
  if (u->transport == NBD_TRANSPORT_FD) {
    if (outlen)
      out[0] = '\0';
    return;
  }
  char name[3 * 4096 + 1], user[3 * 256 + 2] = "", host[3 * 256 + 16] = "";
  encode(name, sizeof name, export_name, "/!$'()*,;:@&=+");
  if (u->user) {
    encode(user, sizeof user - 1, u->user, "!$'()*,;&=+"); /* no '@' or ':' */
    strcat(user, "@");
  }
  if (u->transport != NBD_TRANSPORT_UNIX) {
    char h[3 * 256 + 1];
    encode(h, sizeof h, u->host, ":"); /* an IPv6 zone's '%' becomes %25 */
    snprintf(host, sizeof host, strchr(u->host, ':') ? "[%s]:%s" : "%s:%s", h, u->port);
  }
  int n = snprintf(out, outlen, "nbd%s%s://%s%s/%s", u->tls ? "s" : "", suffix[u->transport], user,
                   host, name);
  if (u->transport == NBD_TRANSPORT_UNIX && n > 0 && (size_t)n < outlen) {
    char sock[3 * 108 + 8];
    if (u->socket[0]) {
      encode(sock, sizeof sock, u->socket, "/!$'()*,;:@+");
    } else { /* abstract socket: leading NUL */
      strcpy(sock, "%00");
      encode(sock + 3, sizeof sock - 3, u->socket + 1, "/!$'()*,;:@+");
    }
    snprintf(out + n, outlen - (size_t)n, "?socket=%s", sock);
  }
}
