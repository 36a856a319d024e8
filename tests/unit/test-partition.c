/* test-partition.c: the partition-table parser (src/partition.c) on disk
 * images built here in memory: GPT (512- and 4096-byte sectors, damaged
 * primary or backup, bad CRCs, overlaps) and MBR with EBR chains (logical
 * partitions, loops, partitions outside their container). */
#include <errno.h>
#include <string.h>

#include "check.h"
#include "partition.h"

/* ---- the in-memory disk ---- */

struct img {
  uint8_t *p;
  uint64_t size;
  int reads;
  int fail_read;       /* the k-th read (1-based) fails with -EIO; 0: none */
  bool out_of_range;   /* a read went past the disk's end */
};

static int img_read(void *arg, void *buf, uint64_t off, uint32_t len)
{
  struct img *d = arg;
  d->reads++;
  if (off > d->size || len > d->size - off) {
    d->out_of_range = true;
    return -EINVAL;
  }
  if (d->reads == d->fail_read)
    return -EIO;
  memcpy(buf, d->p + off, len);
  return 0;
}

static struct img img_new(uint64_t size)
{
  struct img d = { .p = calloc(1, size ? size : 1), .size = size };
  if (!d.p)
    abort();
  return d;
}

static int parse(struct img *d, struct part_table *t)
{
  d->reads = 0;
  d->out_of_range = false;
  int r = part_table_read(t, d->size, img_read, d);
  CHECK(!d->out_of_range, "every read stays inside the disk");
  if (r < 0)
    CHECK(t->n == 0 && t->parts == NULL, "a refused table has no partitions");
  CHECK(!strchr(t->note, '\n'), "the note is one line");
  return r;
}

static void put16(uint8_t *p, uint16_t v)
{
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
}
static void put32(uint8_t *p, uint32_t v)
{
  put16(p, (uint16_t)v);
  put16(p + 2, (uint16_t)(v >> 16));
}
static void put64(uint8_t *p, uint64_t v)
{
  put32(p, (uint32_t)v);
  put32(p + 4, (uint32_t)(v >> 32));
}

/* ---- MBR and EBR ---- */

static void mbr_slot(uint8_t *sector, int i, uint8_t type, uint32_t start, uint32_t len)
{
  uint8_t *p = sector + 446 + 16 * i;
  p[4] = type;
  put32(p + 8, start);
  put32(p + 12, len);
}

static void mbr_sign(uint8_t *sector)
{
  sector[510] = 0x55;
  sector[511] = 0xAA;
}

/* An EBR at sector lba: a logical partition at rel (from lba) of len
 * sectors, and a link to the EBR at next (from the container's start). */
static void ebr(struct img *d, uint32_t lba, uint32_t rel, uint32_t len, uint32_t next)
{
  uint8_t *s = d->p + (uint64_t)lba * 512;
  memset(s, 0, 512);
  if (len)
    mbr_slot(s, 0, 0x83, rel, len);
  if (next)
    mbr_slot(s, 1, 0x05, next, 8);
  mbr_sign(s);
}

/* ---- GPT ---- */

static void guid_bytes(const char *s, uint8_t *g)
{
  uint8_t raw[16];
  for (int i = 0, k = 0; i < 16; k++) {
    if (s[k] == '-')
      continue;
    unsigned v = 0;
    sscanf(s + k, "%2x", &v);
    raw[i++] = (uint8_t)v;
    k++;
  }
  /* The first three fields are stored little-endian. */
  const int order[16] = { 3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15 };
  for (int i = 0; i < 16; i++)
    g[i] = raw[order[i]];
}

#define LINUX "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
#define ESP "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"

struct gpt_part {
  uint32_t index;
  uint64_t first, last;
  const char *type, *uuid;
  const uint16_t *name; /* NUL-terminated UTF-16 */
};

struct gpt_layout {
  unsigned ss;
  uint32_t count, esize;
  uint64_t lbas, asec; /* sectors on the disk, sectors of the entry array */
};

static void gpt_entries(uint8_t *a, const struct gpt_layout *l, const struct gpt_part *ps, int np)
{
  memset(a, 0, (size_t)l->count * l->esize);
  for (int i = 0; i < np; i++) {
    uint8_t *e = a + (size_t)ps[i].index * l->esize;
    guid_bytes(ps[i].type, e);
    guid_bytes(ps[i].uuid, e + 16);
    put64(e + 32, ps[i].first);
    put64(e + 40, ps[i].last);
    for (int k = 0; k < 36 && ps[i].name && ps[i].name[k]; k++)
      put16(e + 56 + 2 * k, ps[i].name[k]);
  }
}

static void gpt_header(uint8_t *h, const struct gpt_layout *l, uint64_t my, uint64_t alt, uint64_t entries,
                       uint32_t array_crc)
{
  memset(h, 0, l->ss);
  memcpy(h, "EFI PART", 8);
  put32(h + 8, 0x00010000);
  put32(h + 12, 92);
  put64(h + 24, my);
  put64(h + 32, alt);
  put64(h + 40, 2 + l->asec);
  put64(h + 48, l->lbas - 2 - l->asec);
  memset(h + 56, 0xA5, 16); /* disk GUID */
  put64(h + 72, entries);
  put32(h + 80, l->count);
  put32(h + 84, l->esize);
  put32(h + 88, array_crc);
  put32(h + 16, part_crc32(h, 92));
}

/* Recompute a header's CRC after a test changed a field. */
static void gpt_reseal(uint8_t *h)
{
  put32(h + 16, 0);
  put32(h + 16, part_crc32(h, 92));
}

static struct gpt_layout layout(const struct img *d, unsigned ss, uint32_t count, uint32_t esize)
{
  struct gpt_layout l = { ss, count, esize, d->size / ss, 0 };
  l.asec = ((uint64_t)count * esize + ss - 1) / ss;
  return l;
}

/* A protective MBR, both headers and both arrays. */
static void gpt_write_layout(struct img *d, const struct gpt_layout *l, const struct gpt_part *ps, int np)
{
  memset(d->p, 0, 512);
  mbr_slot(d->p, 0, 0xEE, 1, (uint32_t)(l->lbas - 1));
  mbr_sign(d->p);
  size_t bytes = (size_t)l->count * l->esize;
  uint8_t *a = malloc(bytes);
  gpt_entries(a, l, ps, np);
  uint32_t crc = part_crc32(a, bytes);
  uint64_t last = l->lbas - 1, backup_array = last - l->asec;
  memcpy(d->p + 2 * l->ss, a, bytes);
  memcpy(d->p + backup_array * l->ss, a, bytes);
  gpt_header(d->p + l->ss, l, 1, last, 2, crc);
  gpt_header(d->p + last * l->ss, l, last, 1, backup_array, crc);
  free(a);
}

static void gpt_write(struct img *d, unsigned ss, const struct gpt_part *ps, int np)
{
  struct gpt_layout l = layout(d, ss, 128, 128);
  gpt_write_layout(d, &l, ps, np);
}

static uint8_t *primary_hdr(struct img *d, unsigned ss) { return d->p + ss; }
static uint8_t *backup_hdr(struct img *d, unsigned ss) { return d->p + d->size - ss; }

static const uint16_t NAME_ROOT[] = { 'r', 'o', 'o', 't', 0 };
/* "Données ☃" and U+1F600 as a surrogate pair, then a lone surrogate. */
static const uint16_t NAME_UNI[] = { 'D', 'o', 'n', 'n', 0xE9, 'e', 's', ' ', 0x2603, 0xD83D, 0xDE00, 0xDC00, 'x', 0 };

static const struct gpt_part TWO[] = {
  { 0, 2048, 4095, ESP, "11111111-2222-3333-4444-555555555555", NAME_UNI },
  { 1, 4096, 8191, LINUX, "A1B2C3D4-E5F6-0718-293A-4B5C6D7E8F90", NAME_ROOT },
};

static void check_two(const struct part_table *t, unsigned ss, const char *what)
{
  CHECK_EQ(t->scheme, PART_GPT, "%s: GPT", what);
  CHECK_EQ(t->sector, ss, "%s: sector size %u", what, ss);
  CHECK_EQ(t->n, 2, "%s: two partitions", what);
  if (t->n != 2)
    return;
  CHECK_EQ(t->parts[0].number, 1, "%s: first is number 1", what);
  CHECK_EQ(t->parts[0].start, 2048ull * ss, "%s: p1 start", what);
  CHECK_EQ(t->parts[0].length, 2048ull * ss, "%s: p1 length", what);
  CHECK_STR(t->parts[0].type, ESP, "%s: p1 type GUID", what);
  CHECK_STR(t->parts[0].uuid, "11111111-2222-3333-4444-555555555555", "%s: p1 unique GUID", what);
  CHECK_STR(t->parts[0].name, "Donn\xc3\xa9""es \xe2\x98\x83\xf0\x9f\x98\x80?x", "%s: p1 name as UTF-8", what);
  CHECK_EQ(t->parts[1].number, 2, "%s: second is number 2", what);
  CHECK_EQ(t->parts[1].start, 4096ull * ss, "%s: p2 start", what);
  CHECK_EQ(t->parts[1].length, 4096ull * ss, "%s: p2 length", what);
  CHECK_STR(t->parts[1].type, LINUX, "%s: p2 type GUID", what);
  CHECK_STR(t->parts[1].uuid, "A1B2C3D4-E5F6-0718-293A-4B5C6D7E8F90", "%s: p2 unique GUID", what);
  CHECK_STR(t->parts[1].name, "root", "%s: p2 name", what);
}

static void expect_invalid(struct img *d, const char *needle, const char *what)
{
  struct part_table t;
  int r = parse(d, &t);
  CHECK_EQ(r, -EINVAL, "%s: refused", what);
  CHECK(strstr(t.note, needle) != NULL, "%s: the reason mentions '%s' (%s)", what, needle, t.note);
  part_table_free(&t);
}

/* A tiny disk whose MBR has one partition of this type at sector 1. */
static void one_slot_invalid(uint64_t size, uint8_t type, const char *needle, const char *what)
{
  struct img d = img_new(size);
  mbr_slot(d.p, 0, type, 1, 1);
  mbr_sign(d.p);
  expect_invalid(&d, needle, what);
  free(d.p);
}

/* ---- GPT tests ---- */

static void test_crc32(void)
{
  CHECK_EQ(part_crc32("123456789", 9), 0xCBF43926, "CRC-32 check value");
  CHECK_EQ(part_crc32("", 0), 0, "CRC-32 of nothing");
}

static void test_gpt_basic(unsigned ss)
{
  struct img d = img_new(10000ull * ss);
  gpt_write(&d, ss, TWO, 2);
  struct part_table t;
  char what[32];
  snprintf(what, sizeof what, "GPT/%u", ss);
  CHECK_EQ(parse(&d, &t), 0, "%s: read", what);
  check_two(&t, ss, what);
  CHECK_STR(t.note, "", "%s: no remark", what);
  part_table_free(&t);
  CHECK(t.parts == NULL && t.n == 0, "%s: freed", what);
  free(d.p);
}

static void test_gpt_gap(void)
{
  struct img d = img_new(10000 * 512);
  struct gpt_part ps[] = { { 0, 34, 99, LINUX, ESP, NULL }, { 2, 100, 199, LINUX, LINUX, NULL },
                           { 127, 200, 200, ESP, ESP, NULL } };
  gpt_write(&d, 512, ps, 3);
  struct part_table t;
  CHECK_EQ(parse(&d, &t), 0, "GPT with unused entries: read");
  CHECK_EQ(t.n, 3, "three partitions");
  if (t.n == 3) {
    CHECK_EQ(t.parts[0].number, 1, "entry 0 is number 1");
    CHECK_EQ(t.parts[1].number, 3, "entry 2 is number 3 (the unused entry keeps its number)");
    CHECK_EQ(t.parts[2].number, 128, "entry 127 is number 128");
    CHECK_EQ(t.parts[2].length, 512, "a one-sector partition");
    CHECK_STR(t.parts[0].name, "", "no name");
  }
  part_table_free(&t);
  free(d.p);
}

static void test_gpt_entry_size(void)
{
  struct img d = img_new(10000 * 512);
  struct gpt_layout l = layout(&d, 512, 16, 256);
  gpt_write_layout(&d, &l, TWO, 1);
  struct part_table t;
  CHECK_EQ(parse(&d, &t), 0, "GPT with 256-byte entries: read");
  CHECK(t.n == 1 && t.parts[0].start == 2048 * 512, "256-byte entries are found where they are");
  part_table_free(&t);

  l = layout(&d, 512, 16, 200);
  gpt_write_layout(&d, &l, TWO, 1);
  expect_invalid(&d, "multiple of 128", "GPT with 200-byte entries");
  free(d.p);
}

/* Damage the primary in different ways: the backup is used each time. */
static void test_gpt_backup(void)
{
  static const char *how[] = { "header CRC", "signature", "entry array CRC", "MyLBA" };
  for (int k = 0; k < 4; k++) {
    struct img d = img_new(10000 * 512);
    gpt_write(&d, 512, TWO, 2);
    uint8_t *h = primary_hdr(&d, 512);
    if (k == 0)
      h[40] ^= 1;
    else if (k == 1)
      memset(h, 0, 8);
    else if (k == 2)
      d.p[2 * 512 + 5] ^= 0x10;
    else {
      put64(h + 24, 2);
      gpt_reseal(h);
    }
    struct part_table t;
    char what[64];
    snprintf(what, sizeof what, "primary damaged (%s)", how[k]);
    CHECK_EQ(parse(&d, &t), 0, "%s: read", what);
    check_two(&t, 512, what);
    CHECK(strstr(t.note, "using the backup") != NULL, "%s: noted (%s)", what, t.note);
    part_table_free(&t);
    free(d.p);
  }
}

static void test_gpt_both_damaged(void)
{
  struct img d = img_new(10000 * 512);
  gpt_write(&d, 512, TWO, 2);
  primary_hdr(&d, 512)[40] ^= 1;
  backup_hdr(&d, 512)[41] ^= 1;
  expect_invalid(&d, "header CRC", "both GPT headers damaged");

  gpt_write(&d, 512, TWO, 2);
  d.p[2 * 512] ^= 1;
  d.p[d.size - 512 - 32 * 512] ^= 1;
  expect_invalid(&d, "entry array CRC", "both GPT entry arrays damaged");

  gpt_write(&d, 512, TWO, 2);
  memset(primary_hdr(&d, 512), 0, 512);
  put64(backup_hdr(&d, 512) + 32, 7);
  gpt_reseal(backup_hdr(&d, 512));
  expect_invalid(&d, "no GPT header at LBA 1", "no primary, backup not pointing at LBA 1");
  free(d.p);
}

/* Changes to a valid header that must be refused, resealed so the CRC
 * is right. */
static void test_gpt_bad_fields(void)
{
  struct {
    int off, width;
    uint64_t value;
    const char *needle;
  } cases[] = {
    { 8, 4, 0x00020000, "revision" },       { 12, 4, 91, "header size" },
    { 12, 4, 513, "header size" },          { 40, 8, 1, "usable" },
    { 48, 8, 9999, "usable" },              { 48, 8, 10, "usable" },
    { 84, 4, 0, "entry size" },             { 80, 4, 0x10000000, "too large" },
    { 72, 8, 9990, "outside the disk" },    { 72, 8, 1, "overlaps its header" },
    { 72, 8, 40, "overlaps the usable" },   { 72, 8, UINT64_MAX, "outside the disk" },
  };
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    struct img d = img_new(10000 * 512);
    gpt_write(&d, 512, TWO, 2);
    memset(backup_hdr(&d, 512), 0, 512);
    uint8_t *h = primary_hdr(&d, 512);
    if (cases[k].width == 4)
      put32(h + cases[k].off, (uint32_t)cases[k].value);
    else
      put64(h + cases[k].off, cases[k].value);
    gpt_reseal(h);
    char what[64];
    snprintf(what, sizeof what, "GPT header field at %d = %llu", cases[k].off, (unsigned long long)cases[k].value);
    expect_invalid(&d, cases[k].needle, what);
    free(d.p);
  }
}

static void test_gpt_bad_entries(void)
{
  struct img d = img_new(10000 * 512);
  struct gpt_part over[] = { { 0, 2048, 4095, LINUX, ESP, NULL }, { 1, 3000, 5000, LINUX, ESP, NULL } };
  gpt_write(&d, 512, over, 2);
  expect_invalid(&d, "overlaps", "overlapping GPT partitions");

  struct gpt_part nested[] = { { 5, 100, 9000, LINUX, ESP, NULL }, { 1, 200, 300, LINUX, ESP, NULL },
                               { 3, 9001, 9100, LINUX, ESP, NULL } };
  gpt_write(&d, 512, nested, 3);
  expect_invalid(&d, "partition 6 overlaps partition 2", "a GPT partition inside another");

  struct gpt_part out[] = { { 0, 2048, 9999, LINUX, ESP, NULL } };
  gpt_write(&d, 512, out, 1);
  expect_invalid(&d, "outside the usable", "a GPT partition over the backup table");

  struct gpt_part early[] = { { 0, 1, 100, LINUX, ESP, NULL } };
  gpt_write(&d, 512, early, 1);
  expect_invalid(&d, "outside the usable", "a GPT partition over the primary table");

  struct gpt_part rev[] = { { 0, 200, 100, LINUX, ESP, NULL } };
  gpt_write(&d, 512, rev, 1);
  expect_invalid(&d, "before it starts", "a GPT partition ending before its start");
  free(d.p);
}

static void test_gpt_other(void)
{
  /* A grown disk: the backup is no longer at the end; the primary is
   * still good. */
  struct img d = img_new(20000 * 512);
  struct img small = { d.p, 10000 * 512, 0, 0, false };
  gpt_write(&small, 512, TWO, 2);
  struct part_table t;
  CHECK_EQ(parse(&d, &t), 0, "grown disk: read");
  check_two(&t, 512, "grown disk");
  part_table_free(&t);

  memset(d.p, 0, 2 * 512);
  mbr_slot(d.p, 0, 0xEE, 1, 19999);
  mbr_sign(d.p);
  expect_invalid(&d, "no GPT header", "protective MBR without a GPT");

  gpt_write(&d, 512, NULL, 0);
  CHECK_EQ(parse(&d, &t), 0, "empty GPT: read");
  CHECK(t.scheme == PART_GPT && t.n == 0 && t.parts == NULL, "empty GPT: no partitions");
  part_table_free(&t);
  free(d.p);

  one_slot_invalid(1024, 0xEE, "GPT", "a two-sector disk with a protective MBR");
}

/* The 4096-byte-sector disk with its primary destroyed: the backup at the
 * last 4 KiB sector is found. */
static void test_gpt_4k_backup(void)
{
  struct img d = img_new(10000 * 4096);
  gpt_write(&d, 4096, TWO, 2);
  primary_hdr(&d, 4096)[0] = 'X';
  struct part_table t;
  CHECK_EQ(parse(&d, &t), 0, "GPT/4096 with a damaged primary: read");
  check_two(&t, 4096, "GPT/4096 backup");
  CHECK(strstr(t.note, "using the backup") != NULL, "GPT/4096: backup noted (%s)", t.note);
  part_table_free(&t);
  free(d.p);
}

/* ---- MBR tests ---- */

/* p1 0x83 at 2048+2048, p2 0x07 at 4096+4096, extended in slot 3 at
 * 10000+10000 holding logicals at 10002+1000 and 12002+3000, p4 empty. */
static struct img mbr_disk(void)
{
  struct img d = img_new(30000 * 512);
  mbr_slot(d.p, 0, 0x83, 2048, 2048);
  mbr_slot(d.p, 1, 0x07, 4096, 4096);
  mbr_slot(d.p, 2, 0x0F, 10000, 10000);
  d.p[446] = 0x80;
  mbr_sign(d.p);
  ebr(&d, 10000, 2, 1000, 2000);
  ebr(&d, 12000, 2, 3000, 0);
  return d;
}

static void test_mbr(void)
{
  struct img d = mbr_disk();
  struct part_table t;
  CHECK_EQ(parse(&d, &t), 0, "MBR: read");
  CHECK_EQ(t.scheme, PART_MBR, "MBR: scheme");
  CHECK_EQ(t.sector, 512, "MBR: 512-byte sectors");
  CHECK_EQ(t.n, 4, "MBR: two primaries and two logicals");
  int want_num[] = { 1, 2, 5, 6 };
  uint64_t want_start[] = { 2048, 4096, 10002, 12002 }, want_len[] = { 2048, 4096, 1000, 3000 };
  const char *want_type[] = { "0x83", "0x07", "0x83", "0x83" };
  for (int i = 0; i < 4 && t.n == 4; i++) {
    CHECK_EQ(t.parts[i].number, want_num[i], "MBR: entry %d is number %d", i, want_num[i]);
    CHECK_EQ(t.parts[i].start, want_start[i] * 512, "MBR: p%d start", want_num[i]);
    CHECK_EQ(t.parts[i].length, want_len[i] * 512, "MBR: p%d length", want_num[i]);
    CHECK_STR(t.parts[i].type, want_type[i], "MBR: p%d type", want_num[i]);
    CHECK(!t.parts[i].name[0] && !t.parts[i].uuid[0], "MBR: p%d has no name or GUID", want_num[i]);
  }
  CHECK_STR(t.note, "", "MBR: no remark");
  part_table_free(&t);
  free(d.p);
}

static void test_mbr_ebr_chain(void)
{
  struct img d = mbr_disk();
  ebr(&d, 12000, 2, 3000, 0); /* loop: the second EBR links back to the first */
  mbr_slot(d.p + 12000 * 512, 1, 0x05, 0, 8);
  expect_invalid(&d, "loops", "an EBR chain looping to its start");

  d = (free(d.p), mbr_disk());
  ebr(&d, 12000, 2, 3000, 2000); /* loop: the second EBR links to itself */
  expect_invalid(&d, "loops", "an EBR linking to itself");

  for (uint32_t k = 0; k < 130; k++) /* a chain of 130 EBRs, one every 10 sectors */
    ebr(&d, 10000 + 10 * k, 1, 5, 10 * (k + 1));
  expect_invalid(&d, "more than 128", "an EBR chain of 130");
  d = (free(d.p), mbr_disk());
  for (uint32_t k = 0; k < 128; k++)
    ebr(&d, 10000 + 10 * k, 1, 5, k == 127 ? 0 : 10 * (k + 1));
  struct part_table t;
  CHECK_EQ(parse(&d, &t), 0, "128 logical partitions: read");
  CHECK(t.n == 130 && t.parts[129].number == 132, "128 logical partitions: numbered 5..132");
  part_table_free(&t);
  free(d.p);
}

/* One change to mbr_disk() that must be refused: an EBR rewritten (at
 * sector ebr_at, when not 0) or an MBR slot rewritten (when slot >= 0). */
struct mbr_case {
  uint32_t ebr_at, rel, len, next;
  int slot;
  uint8_t type;
  uint32_t start, n;
  const char *needle, *what;
};

static const struct mbr_case MBR_BAD[] = {
  { 12000, 2, 9000, 0, -1, 0, 0, 0, "outside extended partition 3", "a logical partition past its container" },
  { 12000, 2, 3000, 15000, -1, 0, 0, 0, "outside extended partition", "an EBR link past the container" },
  { 12000, 0, 3000, 0, -1, 0, 0, 0, "partition 6 overlaps the partition table", "a logical partition over its EBR" },
  { 10000, 2, 2500, 2000, -1, 0, 0, 0, "overlaps", "a logical partition over the next EBR" },
  { 0, 0, 0, 0, 1, 0x07, 3000, 4096, "partition 1 overlaps partition 2", "overlapping primaries" },
  { 0, 0, 0, 0, 1, 0x07, 9000, 4096, "extended partition 3", "a primary over the container" },
  { 0, 0, 0, 0, 3, 0x83, 29000, 1001, "past the end", "a primary past the disk's end" },
  { 0, 0, 0, 0, 3, 0x05, 25000, 100, "more than one extended", "two extended partitions" },
  { 0, 0, 0, 0, 0, 0x83, 0, 100, "partition 1 overlaps the partition table at sector 0", "a primary over the MBR" },
};

static void test_mbr_bad(void)
{
  for (size_t k = 0; k < sizeof MBR_BAD / sizeof MBR_BAD[0]; k++) {
    const struct mbr_case *c = &MBR_BAD[k];
    struct img d = mbr_disk();
    if (c->ebr_at)
      ebr(&d, c->ebr_at, c->rel, c->len, c->next);
    if (c->slot >= 0)
      mbr_slot(d.p, c->slot, c->type, c->start, c->n);
    expect_invalid(&d, c->needle, c->what);
    free(d.p);
  }
  struct img d = mbr_disk();
  d.p[12000 * 512 + 510] = 0;
  expect_invalid(&d, "no 0x55AA", "a linked EBR without a signature");
  free(d.p);
}

static void test_mbr_edge(void)
{
  struct img d = mbr_disk();
  memset(d.p + 10000 * 512, 0, 512); /* the container's first sector blank */
  struct part_table t;
  CHECK_EQ(parse(&d, &t), 0, "an empty extended partition: read");
  CHECK_EQ(t.n, 2, "an empty extended partition: no logicals");
  part_table_free(&t);

  ebr(&d, 10000, 0, 0, 2000); /* first EBR without a partition, linking on */
  ebr(&d, 12000, 2, 3000, 0);
  CHECK_EQ(parse(&d, &t), 0, "an EBR without a logical partition: read");
  CHECK(t.n == 3 && t.parts[2].number == 5 && t.parts[2].start == 12002 * 512,
        "numbers count logical partitions, not EBRs");
  part_table_free(&t);

  memset(d.p, 0, 512);
  mbr_sign(d.p);
  CHECK_EQ(parse(&d, &t), 0, "an empty MBR: read");
  CHECK(t.scheme == PART_MBR && t.n == 0 && t.parts == NULL, "an empty MBR: no partitions");
  part_table_free(&t);
  free(d.p);
}

/* ---- no table, read errors, tiny disks ---- */

static void test_none(void)
{
  struct img d = mbr_disk();
  d.p[511] = 0;
  struct part_table t;
  CHECK_EQ(parse(&d, &t), 0, "no signature: read");
  CHECK(t.scheme == PART_NONE && t.n == 0 && !t.note[0], "no signature: PART_NONE");
  part_table_free(&t);

  d.p[511] = 0xAA;
  d.p[446 + 16] = 0x29; /* a boot flag no MBR has: a FAT boot sector */
  CHECK_EQ(parse(&d, &t), 0, "FAT-like boot sector: read");
  CHECK_EQ(t.scheme, PART_NONE, "FAT-like boot sector: PART_NONE");
  part_table_free(&t);
  free(d.p);

  uint64_t sizes[] = { 0, 1, 100, 511 };
  for (int i = 0; i < 4; i++) {
    struct img tiny = img_new(sizes[i]);
    memset(tiny.p, 0x55, sizes[i]);
    CHECK_EQ(parse(&tiny, &t), 0, "a %llu-byte disk: read", (unsigned long long)sizes[i]);
    CHECK(t.scheme == PART_NONE && tiny.reads == 0, "a %llu-byte disk: PART_NONE, not read",
          (unsigned long long)sizes[i]);
    part_table_free(&t);
    free(tiny.p);
  }
  one_slot_invalid(512, 0x83, "past the end", "a one-sector disk with a partition after it");
}

static void read_fails(struct img *d, int k, const char *what)
{
  struct part_table t;
  d->fail_read = k;
  int r = parse(d, &t);
  CHECK_EQ(r, -EIO, "%s: read %d fails -> -EIO", what, k);
  part_table_free(&t);
  d->fail_read = 0;
}

static void test_read_errors(void)
{
  struct img d = mbr_disk();
  read_fails(&d, 1, "MBR");
  read_fails(&d, 2, "first EBR");
  read_fails(&d, 3, "second EBR");
  free(d.p);

  d = img_new(10000 * 512);
  gpt_write(&d, 512, TWO, 2);
  read_fails(&d, 2, "GPT header");
  read_fails(&d, 3, "GPT entry array");
  primary_hdr(&d, 512)[40] ^= 1;
  read_fails(&d, 4, "backup GPT header"); /* after MBR, LBA 1 at 512 and 4096 */
  free(d.p);
}

int main(void)
{
  test_crc32();
  test_gpt_basic(512);
  test_gpt_basic(4096);
  test_gpt_gap();
  test_gpt_entry_size();
  test_gpt_backup();
  test_gpt_4k_backup();
  test_gpt_both_damaged();
  test_gpt_bad_fields();
  test_gpt_bad_entries();
  test_gpt_other();
  test_mbr();
  test_mbr_ebr_chain();
  test_mbr_bad();
  test_mbr_edge();
  test_none();
  test_read_errors();
  return done_testing();
}
