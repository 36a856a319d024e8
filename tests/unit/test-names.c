/* test-names.c: export name <-> file name escaping (src/names.c). */
#include <errno.h>
#include <string.h>

#include "check.h"
#include "names.h"

static const char *DEF = "disk";

/* A digest that collides for everything: forces the mount's duplicate check. */
static void weak_digest(const char *s, unsigned char out[NAME_DIGEST_LEN])
{
  (void)s;
  memset(out, 0xab, NAME_DIGEST_LEN);
}

/* name_unique's table: the names given so far. */
struct taken_set {
  char *names[8];
  int n;
};

static bool in_set(const char *name, void *arg)
{
  struct taken_set *t = arg;
  for (int i = 0; i < t->n; i++)
    if (!strcmp(t->names[i], name))
      return true;
  return false;
}

/* A file name must be usable as one directory entry. */
static bool valid_file_name(const char *f)
{
  return f && f[0] && !strchr(f, '/') && strcmp(f, ".") && strcmp(f, "..");
}

static bool round_trip(const char *export, const char *def)
{
  char *f = name_from_export(export, def);
  char *back = f ? name_to_export(f, def) : NULL;
  bool ok = f && valid_file_name(f) && back && !strcmp(back, export);
  if (!ok) {
    printf("#   round trip of \"");
    for (const char *p = export; *p; p++)
      printf((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f ? "\\x%02x" : "%c", (unsigned char)*p);
    printf("\" via \"%s\" gave \"%s\"\n", f ? f : "(null)", back ? back : "(null)");
  }
  free(f);
  free(back);
  return ok;
}

static void encodes_to(const char *export, const char *want)
{
  char *f = name_from_export(export, DEF);
  CHECK_STR(f, want, "export encodes to '%s'", want);
  free(f);
}

static void rejects(const char *file)
{
  char *e = name_to_export(file, DEF);
  CHECK(e == NULL, "file name '%s' is not a canonical encoding", file);
  free(e);
}

int main(void)
{
  /* Specific encodings. */
  encodes_to("", "disk");
  encodes_to("disk", "%64isk");
  encodes_to("vm-1", "vm-1");
  encodes_to("a/b", "a%2Fb");
  encodes_to("/", "%2F");
  encodes_to("%", "%25");
  encodes_to("100%", "100%25");
  encodes_to(".", "%2E");
  encodes_to("..", "%2E%2E");
  encodes_to("...", "...");
  encodes_to(".hidden", ".hidden");
  encodes_to("a.", "a.");
  encodes_to("\x01\x1f", "%01%1F");
  encodes_to("del\x7f", "del%7F");
  encodes_to("tab\there", "tab%09here");
  encodes_to("new\nline", "new%0Aline");
  encodes_to("\xc3\xa9t\xc3\xa9", "\xc3\xa9t\xc3\xa9");
  encodes_to("sp ace", "sp ace");
  encodes_to("disk2", "disk2");
  encodes_to("Disk", "Disk");
  encodes_to("%64isk", "%2564isk");

  /* Decoding. */
  char *e = name_to_export("disk", DEF);
  CHECK_STR(e, "", "'disk' is the default export");
  free(e);
  e = name_to_export("%64isk", DEF);
  CHECK_STR(e, "disk", "'%%64isk' is the export named disk");
  free(e);
  e = name_to_export("a%2Fb", DEF);
  CHECK_STR(e, "a/b", "'a%%2Fb' is a/b");
  free(e);

  /* Another default name. */
  char *f = name_from_export("", "default");
  CHECK_STR(f, "default", "custom default name for the default export");
  free(f);
  f = name_from_export("default", "default");
  CHECK_STR(f, "%64efault", "export bearing the custom default name is escaped");
  free(f);
  f = name_from_export("disk", "default");
  CHECK_STR(f, "disk", "'disk' is plain with another default name");
  free(f);
  e = name_to_export("%64isk", "default");
  CHECK(e == NULL, "'%%64isk' is not canonical when the default is 'default'");
  free(e);

  /* Non-canonical and invalid file names. */
  rejects("%2e");
  rejects("%2E%2e");
  rejects("%2f");
  rejects("a%2fb");
  rejects("%41");
  rejects("%61");
  rejects(".");
  rejects("..");
  rejects("%2E.");
  rejects(".%2E");
  rejects("%2E%2E%2E");
  rejects("a/b");
  rejects("%");
  rejects("%4");
  rejects("ab%");
  rejects("%zz");
  rejects("%4g");
  rejects("%00");
  rejects("a%00b");
  rejects("\x01");
  rejects("a\x7f");
  rejects("");
  rejects("%64isk%");
  rejects("%20");
  rejects("%C3%A9");

  /* Round trips. */
  static const char *const names[] = {
    "", "disk", "Disk", "disk ", " disk", "%disk", "d", "%", "%%", "%25", "%2F", "%2E", "%64isk",
    "/", "//", "/disk", "disk/", "a/b/c", ".", "..", "...", "./", "../x", ".%", "\x01", "\x1f",
    "\x7f", "\x01\x02\x03", "a\nb", "\t", "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x92\xbe",
    "\xff\xfe", "\x80", "?x#y", "a+b", "a b", "\\", "*", ":", "@", "disk\x7f",
  };
  bool all = true;
  for (unsigned i = 0; i < sizeof names / sizeof names[0]; i++)
    all &= round_trip(names[i], DEF) && round_trip(names[i], "default");
  CHECK(all, "listed names round-trip with both default names");

  /* Names too long for a directory entry once escaped: shortened to at most
   * NAME_MAX bytes ending in "%~" and a digest, stable, distinct, and never
   * decoded (the mount finds them through its table). */
  char *big = malloc(4097), *big2 = malloc(4097);
  memset(big, '/', 4096);
  big[4096] = '\0';
  memcpy(big2, big, 4097);
  big2[4095] = 'x';
  char *f1 = name_from_export(big, DEF), *f1b = name_from_export(big, DEF);
  char *f2 = name_from_export(big2, DEF);
  size_t l1 = f1 ? strlen(f1) : 0;
  CHECK(f1 && l1 <= 255 && l1 > 18 && !strncmp(f1 + l1 - 18, "%~", 2) && !strchr(f1, '/'),
        "4096 slashes give a short name ending in %%~ and a digest (%zu bytes)", l1);
  CHECK(f1 && f1b && !strcmp(f1, f1b), "the shortened name is stable");
  CHECK(f1 && f2 && strcmp(f1, f2), "two long names sharing a prefix get different names");
  CHECK(f1 && !name_to_export(f1, DEF), "a shortened name is not decoded");
  char *mid = malloc(300);
  memset(mid, 'a', 255);
  mid[255] = '\0';
  CHECK(round_trip(mid, DEF), "a name of exactly 255 plain bytes round-trips");
  memset(mid, 0, 300);
  for (int i = 0; i < 120; i++)
    memcpy(mid + 2 * i, "\xc3\xa9", 2); /* 240 bytes of UTF-8, 120 characters */
  strcat(mid, "%%%%%%%%");                /* + escapes, over NAME_MAX */
  char *fm = name_from_export(mid, DEF);
  bool utf8_ok = fm != NULL;
  for (size_t i = 0; fm && fm[i] && fm[i] != '%'; i++)
    if ((unsigned char)fm[i] == 0xc3 && (unsigned char)fm[i + 1] != 0xa9)
      utf8_ok = false;
  CHECK(utf8_ok && strlen(fm) <= 255, "shortening never splits a UTF-8 sequence or an escape");
  free(fm);
  free(mid);

  /* The digest is SHA-256 (a hostile server can find FNV collisions at
   * will): sha256("/" x 4096) starts with the digits below. */
  CHECK(f1 && !strcmp(f1 + l1 - 16, "758cb190424ffcd2"), "the shortened name ends in 16 hex digits of SHA-256 (%s)",
        f1 ? f1 + l1 - 16 : "(null)");

  /* Collisions anyway (a digest that always collides): the later export
   * gets a longer digest, which cannot collide with the shorter one. */
  struct taken_set ts = { .n = 0 };
  char *u1 = name_unique(big, DEF, weak_digest, in_set, &ts);
  ts.names[ts.n++] = u1;
  char *u2 = name_unique(big2, DEF, weak_digest, in_set, &ts);
  ts.names[ts.n++] = u2;
  char *c2 = name_from_export_try(big2, DEF, 0, weak_digest);
  CHECK(u1 && c2 && !strcmp(u1, c2), "the weak digest collides: both long names map to one name");
  size_t lu1 = u1 ? strlen(u1) : 0, lu2 = u2 ? strlen(u2) : 0;
  CHECK(u1 && u2 && strcmp(u1, u2) && lu2 <= 255 && lu2 > 34 && !strncmp(u2 + lu2 - 34, "%~", 2),
        "the later export gets another name, with a 32-digit digest (%s)", u2 ? u2 + lu2 - 34 : "(null)");
  CHECK(u1 && lu1 > 18 && !strncmp(u1 + lu1 - 18, "%~", 2), "the first keeps the 16-digit one");
  char *big3 = strdup(big), *big4 = strdup(big);
  big3[4094] = 'y';
  big4[4093] = 'z';
  char *u3 = name_unique(big3, DEF, weak_digest, in_set, &ts);
  ts.names[ts.n++] = u3;
  char *u4 = name_unique(big4, DEF, weak_digest, in_set, &ts);
  ts.names[ts.n++] = u4;
  char *big5 = strdup(big);
  big5[4092] = 'w';
  errno = 0;
  char *u5 = name_unique(big5, DEF, weak_digest, in_set, &ts);
  CHECK(u3 && u4 && !u5 && errno == EEXIST,
        "a fifth colliding export is refused (EEXIST) once every digest length is taken");
  CHECK(u4 && strlen(u4) <= 255, "a 64-digit digest still fits NAME_MAX (%zu bytes)", u4 ? strlen(u4) : 0);
  char *plain = name_unique("vm-1", DEF, weak_digest, in_set, &ts);
  CHECK_STR(plain, "vm-1", "names that need no shortening do not use the digest");
  free(plain);
  for (int a = 0; a < NAME_ATTEMPTS; a++) {
    char *p = name_from_export_try("a/b", DEF, a, weak_digest);
    CHECK_STR(p, "a%2Fb", "a plain name is the same on attempt %d", a);
    free(p);
  }
  for (int i = 0; i < ts.n; i++)
    free(ts.names[i]);
  free(c2);
  free(big3);
  free(big4);
  free(big5);
  free(f1);
  free(f1b);
  free(f2);
  free(big);
  free(big2);

  /* Every 1- and 2-byte name. */
  all = true;
  for (int a = 1; a < 256; a++) {
    for (int b = 0; b < 256; b++) {
      char s[3] = { (char)a, (char)b, 0 };
      all &= round_trip(s, DEF);
    }
  }
  CHECK(all, "every 1- and 2-byte name round-trips");

  /* Every 3-byte name over an alphabet of troublemakers, with two defaults. */
  static const char alpha[] = { '.', '%', '/', 'd', 'i', 's', 'k', '2', 'E', 'e', '6', '4', '\x01',
                                '\x7f', (char)0xc3, ' ' };
  all = true;
  for (unsigned a = 0; a < sizeof alpha; a++)
    for (unsigned b = 0; b < sizeof alpha; b++)
      for (unsigned c = 0; c < sizeof alpha; c++)
        for (unsigned d = 0; d < 2; d++) {
          char s[5] = { alpha[a], alpha[b], alpha[c], d ? 'k' : 0, 0 };
          all &= round_trip(s, DEF) && round_trip(s, "d.s");
        }
  CHECK(all, "every 3- and 4-byte name over a troublesome alphabet round-trips");

  /* Decoding is injective: a file name that decodes encodes back to itself. */
  static const char falpha[] = { '%', '2', 'E', 'F', '6', '4', 'd', 'i', 's', 'k', '.', 'a', '0' };
  all = true;
  unsigned accepted = 0;
  for (unsigned a = 0; a < sizeof falpha; a++)
    for (unsigned b = 0; b < sizeof falpha; b++)
      for (unsigned c = 0; c < sizeof falpha; c++)
        for (unsigned d = 0; d < sizeof falpha; d++) {
          char s[5] = { falpha[a], falpha[b], falpha[c], falpha[d], 0 };
          char *x = name_to_export(s, DEF);
          if (x) {
            accepted++;
            char *y = name_from_export(x, DEF);
            all &= y && !strcmp(y, s);
            free(y);
          }
          free(x);
        }
  CHECK(all && accepted > 0, "every accepted file name is the encoding of its export (%u accepted)", accepted);

  return done_testing();
}
