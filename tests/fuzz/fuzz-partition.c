/* fuzz-partition.c: libFuzzer harness for part_table_read (src/partition.c).
 *
 * The first byte is the mode:
 *   bit 0: a large sparse disk: bytes 1-8 its size (little-endian), bytes
 *          9-12 the length of the head; the head is at offset 0, the rest
 *          of the input at the disk's end (so the backup GPT header and
 *          huge LBAs are reachable), zeros in between;
 *          otherwise the rest of the input is the whole disk;
 *   bit 1: read number (mode >> 4) + 1 fails with EIO;
 *   bit 2: the CRCs of GPT headers (and their entry arrays) found where
 *          they are looked for are set right first, so that mutations of
 *          the other fields reach the checks after the CRC checks.
 * Checked: reads stay inside the disk and are few; a refused table has a
 * one-line reason and no partitions; an accepted one has partitions that
 * are aligned, inside the disk, past the table's first sector, never
 * overlapping, numbered as Linux does, with well-formed strings; the same
 * disk gives the same answer twice.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "partition.h"

#define MAX_READS 200 /* MBR + 4 GPT headers and arrays, or MBR + 128 EBRs */

struct vdisk {
  uint8_t *head, *tail; /* in a copy of the input (bit 2 writes there) */
  size_t head_len, tail_len;
  uint64_t size;
  int reads, fail_at;
};

static void die(const char *why)
{
  fprintf(stderr, "fuzz-partition: %s\n", why);
  abort();
}

static uint32_t rd32(const uint8_t *p)
{
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t rd64(const uint8_t *p)
{
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--)
    v = v << 8 | p[i];
  return v;
}

/* Byte at off of the virtual disk. */
static uint8_t vbyte(const struct vdisk *d, uint64_t off)
{
  if (off < d->head_len)
    return d->head[off];
  uint64_t tail_start = d->size - d->tail_len;
  return off >= tail_start ? d->tail[off - tail_start] : 0;
}

static int vread(void *arg, void *buf, uint64_t off, uint32_t len)
{
  struct vdisk *d = arg;
  if (++d->reads > MAX_READS)
    die("too many reads");
  if (off > d->size || len > d->size - off)
    die("read past the disk's end");
  if (len > (4u << 20))
    die("read of more than 4 MiB");
  if (d->reads == d->fail_at)
    return -EIO;
  uint8_t *b = buf;
  if (off >= d->head_len && off + len <= d->size - d->tail_len) {
    memset(b, 0, len); /* the common case for huge sparse disks */
    return 0;
  }
  for (uint32_t i = 0; i < len; i++)
    b[i] = vbyte(d, off + i);
  return 0;
}

static void setup(struct vdisk *d, uint8_t *data, size_t size)
{
  memset(d, 0, sizeof *d);
  uint8_t mode = size ? data[0] : 0;
  if (mode & 2)
    d->fail_at = (mode >> 4) + 1;
  if (!(mode & 1) || size < 13) {
    d->head = data + (size ? 1 : 0);
    d->head_len = size ? size - 1 : 0;
    d->size = d->head_len;
    return;
  }
  uint64_t want = rd64(data + 1);
  uint32_t split = rd32(data + 9);
  size_t rest = size - 13;
  d->head = data + 13;
  d->head_len = split < rest ? split : rest;
  d->tail = d->head + d->head_len;
  d->tail_len = rest - d->head_len;
  d->size = want > rest ? want : rest;
}

static void wr32(uint8_t *p, uint32_t v)
{
  for (int i = 0; i < 4; i++)
    p[i] = (uint8_t)(v >> 8 * i);
}

/* Where [off, off+len) of the disk is stored in the input, if in one piece. */
static uint8_t *stored(struct vdisk *d, uint64_t off, uint64_t len)
{
  if (off > d->size || len > d->size - off)
    return NULL;
  if (off + len <= d->head_len)
    return d->head + off;
  uint64_t tail_start = d->size - d->tail_len;
  return off >= tail_start ? d->tail + (off - tail_start) : NULL;
}

static void fix_gpt_crcs(struct vdisk *d, unsigned ss, uint64_t lba)
{
  uint8_t *h = stored(d, lba * ss, ss);
  if (!h || memcmp(h, "EFI PART", 8))
    return;
  uint64_t entry_lba = rd64(h + 72), bytes = (uint64_t)rd32(h + 80) * rd32(h + 84);
  uint8_t *a = entry_lba < d->size / ss && bytes <= (4u << 20) ? stored(d, entry_lba * ss, bytes) : NULL;
  if (a)
    wr32(h + 88, part_crc32(a, bytes));
  uint32_t hsize = rd32(h + 12);
  wr32(h + 16, 0);
  wr32(h + 16, part_crc32(h, hsize >= 92 && hsize <= ss ? hsize : 92));
}

static void fix_crcs(struct vdisk *d)
{
  static const unsigned sizes[] = { 512, 4096 };
  for (int i = 0; i < 2; i++) {
    if (d->size / sizes[i] < 2)
      continue;
    fix_gpt_crcs(d, sizes[i], 1);
    fix_gpt_crcs(d, sizes[i], d->size / sizes[i] - 1);
  }
}

static bool utf8_ok(const char *s)
{
  const unsigned char *p = (const unsigned char *)s;
  while (*p) {
    int n = *p < 0x80 ? 0 : (*p & 0xE0) == 0xC0 ? 1 : (*p & 0xF0) == 0xE0 ? 2 : (*p & 0xF8) == 0xF0 ? 3 : -1;
    if (n < 0)
      return false;
    p++;
    for (int i = 0; i < n; i++, p++)
      if ((*p & 0xC0) != 0x80)
        return false;
  }
  return true;
}

static bool guid_ok(const char *s)
{
  if (strlen(s) != 36)
    return false;
  for (int i = 0; i < 36; i++) {
    bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    if (dash ? s[i] != '-' : !((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'A' && s[i] <= 'F')))
      return false;
  }
  return true;
}

static bool terminated(const char *s, size_t n) { return memchr(s, '\0', n) != NULL; }

static void check_entry(const struct part_table *t, const struct part_entry *e, uint64_t disk_size)
{
  if (!terminated(e->type, sizeof e->type) || !terminated(e->name, sizeof e->name) ||
      !terminated(e->uuid, sizeof e->uuid))
    die("unterminated string");
  if (e->length == 0 || e->start % t->sector || e->length % t->sector)
    die("empty or unaligned partition");
  if (e->start < t->sector || e->start > disk_size || e->length > disk_size - e->start)
    die("partition over the MBR or past the disk's end");
  if (t->scheme == PART_GPT) {
    if (!guid_ok(e->type) || !guid_ok(e->uuid) || !utf8_ok(e->name) || e->start < 2ull * t->sector)
      die("bad GPT entry");
  } else {
    unsigned v;
    char again[8];
    if (sscanf(e->type, "0x%2x", &v) != 1 || (snprintf(again, sizeof again, "0x%02x", v), strcmp(again, e->type)))
      die("bad MBR type");
    if (e->name[0] || e->uuid[0] || e->number < 1 || e->number > 132)
      die("bad MBR entry");
  }
}

static int by_start(const void *a, const void *b)
{
  const struct part_entry *x = a, *y = b;
  return x->start < y->start ? -1 : x->start > y->start;
}

static void check_numbers_and_overlaps(const struct part_table *t)
{
  int logical = 5;
  for (int i = 0; i < t->n; i++) {
    int num = t->parts[i].number;
    if (i && num <= t->parts[i - 1].number)
      die("numbers not increasing");
    if (t->scheme == PART_MBR && num >= 5 && num != logical++)
      die("logical partitions not numbered 5, 6, ...");
  }
  if (t->n < 2)
    return;
  struct part_entry *c = malloc((size_t)t->n * sizeof *c);
  if (!c)
    return;
  memcpy(c, t->parts, (size_t)t->n * sizeof *c);
  qsort(c, (size_t)t->n, sizeof *c, by_start);
  for (int i = 0; i + 1 < t->n; i++)
    if (c[i + 1].start < c[i].start + c[i].length)
      die("partitions overlap");
  free(c);
}

static void check_table(const struct part_table *t, int r, const struct vdisk *d)
{
  if (!terminated(t->note, sizeof t->note))
    die("unterminated note");
  for (const char *p = t->note; *p; p++)
    if ((unsigned char)*p < 0x20)
      die("control character in the note");
  if (r < 0) {
    if (t->n || t->parts)
      die("refused table with partitions");
    if (r == -EINVAL && !t->note[0])
      die("refused without a reason");
    if (r != -EINVAL && r != -ENOMEM && !(r == -EIO && d->fail_at && d->reads >= d->fail_at))
      die("unexpected error");
    return;
  }
  if (r != 0 || t->n < 0 || (t->n == 0) != (t->parts == NULL))
    die("bad result");
  if (t->scheme == PART_NONE && (t->n || t->note[0]))
    die("no table, but partitions or a note");
  if (t->sector != 512 && !(t->sector == 4096 && t->scheme == PART_GPT))
    die("bad sector size");
  for (int i = 0; i < t->n; i++)
    check_entry(t, &t->parts[i], d->size);
  check_numbers_and_overlaps(t);
}

static bool same_table(const struct part_table *a, const struct part_table *b)
{
  return a->scheme == b->scheme && a->sector == b->sector && a->n == b->n && !strcmp(a->note, b->note) &&
         (a->n == 0 || !memcmp(a->parts, b->parts, (size_t)a->n * sizeof *a->parts));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  uint8_t *copy = malloc(size ? size : 1);
  if (!copy)
    return 0;
  memcpy(copy, data, size);
  struct vdisk d;
  setup(&d, copy, size);
  if (size && (data[0] & 4))
    fix_crcs(&d);
  struct part_table t, u;
  int r = part_table_read(&t, d.size, vread, &d);
  check_table(&t, r, &d);
  d.reads = 0;
  int r2 = part_table_read(&u, d.size, vread, &d);
  if (r2 != r || !same_table(&t, &u))
    die("the same disk read twice gives two answers");
  part_table_free(&t);
  part_table_free(&u);
  free(copy);
  return 0;
}
