/* names.c: the reversible export-name escaping described in names.h. */
#include "names.h"

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

/* FNV-1a: a stable 64-bit digest of an export name. */
static uint64_t digest(const char *s)
{
  uint64_t h = UINT64_C(0xcbf29ce484222325);
  for (; *s; s++) {
    h ^= (unsigned char)*s;
    h *= UINT64_C(0x100000001b3);
  }
  return h;
}

/* A file name may hold NAME_MAX bytes.  A longer escaped name keeps its
 * first bytes (cut before an escape or a UTF-8 sequence, never inside)
 * followed by "%~" and a digest of the whole export name: canonical
 * escaping never writes "%~", so these names cannot collide with others. */
static char *shorten(char *name, const char *export)
{
  size_t keep = NAME_MAX - 2 - 16;
  while (keep > 0 && ((name[keep] & 0xc0) == 0x80 || name[keep - 1] == '%' ||
                      (keep > 1 && name[keep - 2] == '%')))
    keep--;
  snprintf(name + keep, 2 + 16 + 1, "%%~%016llx", (unsigned long long)digest(export));
  return name;
}

char *name_from_export(const char *export, const char *default_name)
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
  return o > NAME_MAX ? shorten(out, export) : out;
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
