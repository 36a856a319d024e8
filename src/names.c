/* names.c: the reversible export-name escaping described in names.h. */
#include "names.h"

#include <errno.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool needs_escape(unsigned char c)
{
  return c == '%' || c == '/' || c < 0x20 || c == 0x7f;
}

/* SHA-256: a hostile server can search for FNV collisions in seconds,
 * not for collisions of a cryptographic digest (and the mount still checks
 * its table: see name_unique). */
void name_digest_sha256(const char *s, unsigned char out[NAME_DIGEST_LEN])
{
  if (gnutls_hash_fast(GNUTLS_DIG_SHA256, s, strlen(s), out) < 0)
    memset(out, 0, NAME_DIGEST_LEN); /* cannot fail for SHA-256; and name_unique still checks */
}

/* A file name may hold NAME_MAX bytes.  A longer escaped name keeps its
 * first bytes (cut before an escape or a UTF-8 sequence, never inside)
 * followed by "%~" and hexdigits hex digits of the export name's digest.
 * Canonical escaping never writes "%~" and hex digits never hold '%', so
 * the suffix's length tells the digest's: names of different lengths of
 * digest never collide, nor do shortened and plain names. */
static char *shorten(char *name, const char *export, unsigned hexdigits, name_digest_fn digest)
{
  size_t keep = NAME_MAX - 2 - hexdigits;
  while (keep > 0 && ((name[keep] & 0xc0) == 0x80 || name[keep - 1] == '%' ||
                      (keep > 1 && name[keep - 2] == '%')))
    keep--;
  unsigned char d[NAME_DIGEST_LEN];
  digest(export, d);
  char *o = name + keep;
  *o++ = '%';
  *o++ = '~';
  for (unsigned i = 0; i < hexdigits / 2; i++)
    o += sprintf(o, "%02x", d[i]);
  *o = '\0';
  return name;
}

char *name_from_export_try(const char *export, const char *default_name, int attempt,
                           name_digest_fn digest)
{
  if (!export[0])
    return strdup(default_name);
  size_t n = strlen(export);
  char *out = malloc(3 * n + 1);
  if (!out)
    return NULL;
  bool dots = !strcmp(export, ".") || !strcmp(export, "..");
  bool is_default = !strcmp(export, default_name);
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)export[i];
    if (needs_escape(c) || dots || (is_default && i == 0))
      o += (size_t)sprintf(out + o, "%%%02X", c);
    else
      out[o++] = (char)c;
  }
  out[o] = '\0';
  if (o <= NAME_MAX)
    return out;
  return shorten(out, export, 16 * (unsigned)(attempt + 1), digest ? digest : name_digest_sha256);
}

char *name_unique(const char *export, const char *default_name, name_digest_fn digest,
                  bool (*taken)(const char *name, void *arg), void *arg)
{
  for (int a = 0; a < NAME_ATTEMPTS; a++) {
    char *name = name_from_export_try(export, default_name, a, digest);
    if (!name || !taken(name, arg))
      return name;
    free(name);
  }
  errno = EEXIST;
  return NULL;
}

char *name_from_export(const char *export, const char *default_name)
{
  return name_from_export_try(export, default_name, 0, NULL);
}

static int hex(char c)
{
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

char *name_to_export(const char *file, const char *default_name)
{
  if (!strcmp(file, default_name))
    return strdup("");
  size_t n = strlen(file);
  char *out = malloc(n + 1);
  if (!out)
    return NULL;
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    if (file[i] == '%') {
      int hi = i + 2 < n ? hex(file[i + 1]) : -1;
      int lo = hi >= 0 ? hex(file[i + 2]) : -1;
      if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
        free(out);
        return NULL;
      }
      out[o++] = (char)(hi << 4 | lo);
      i += 2;
    } else {
      out[o++] = file[i];
    }
  }
  out[o] = '\0';
  /* Only canonical encodings are valid, so each export has one file name. */
  char *again = name_from_export(out, default_name);
  bool canonical = again && !strcmp(again, file);
  free(again);
  if (!canonical) {
    free(out);
    return NULL;
  }
  return out;
}
