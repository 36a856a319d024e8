/* partition.c: GPT and MBR/EBR partition tables, validated (partition.h).
 *
 * Layouts from the UEFI specification (GPT) and the classic PC MBR/EBR
 * format; numbering and the protective-MBR rule as Linux documents them.
 * Every LBA from the disk is checked against the disk's size before it is
 * multiplied by the sector size, so no product or sum can wrap.
 */
#include "partition.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MBR_SECTOR 512u
#define MAX_ENTRY_ARRAY (4u << 20) /* bytes of GPT entries we accept to read */
#define MAX_EBRS 128               /* bounds the chain: no hang on loops */
#define GPT_NAME_UNITS 36

struct disk {
  uint64_t size;
  part_read_fn rd;
  void *arg;
};

/* A range of sectors [start, end) that must not overlap another. */
enum span_kind { SPAN_PART, SPAN_CONTAINER, SPAN_TABLE };
struct span {
  uint64_t start, end;
  int number;
  enum span_kind kind;
};

static uint16_t le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t le32(const uint8_t *p) { return (uint32_t)le16(p) | (uint32_t)le16(p + 2) << 16; }
static uint64_t le64(const uint8_t *p) { return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32; }

uint32_t part_crc32(const void *buf, size_t len)
{
  /* Reflected 0xEDB88320, a nibble at a time: the 16-entry table is cheap
   * to build per call, so there is no shared state to initialise. */
  uint32_t tab[16];
  for (uint32_t i = 0; i < 16; i++) {
    uint32_t c = i;
    for (int k = 0; k < 4; k++)
      c = (c & 1) ? (c >> 1) ^ 0xEDB88320u : c >> 1;
    tab[i] = c;
  }
  const uint8_t *p = buf;
  uint32_t crc = 0xFFFFFFFFu;
  for (size_t i = 0; i < len; i++) {
    crc ^= p[i];
    crc = (crc >> 4) ^ tab[crc & 15];
    crc = (crc >> 4) ^ tab[crc & 15];
  }
  return ~crc;
}

static void set_note(struct part_table *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_note(struct part_table *t, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(t->note, sizeof t->note, fmt, ap);
  va_end(ap);
}

/* Validation failures: the reason in t->note, -EINVAL. */
#define refuse(t, ...) (set_note((t), __VA_ARGS__), -EINVAL)

/* The same for a GPT header candidate, whose reason may or may not be the
 * one reported in the end. */
#define bad(why, n, ...) (snprintf((why), (n), __VA_ARGS__), false)

static int disk_read(struct part_table *t, const struct disk *d, void *buf, uint64_t off, uint32_t len)
{
  /* Callers check ranges first; this only keeps a slip from reaching rd. */
  if (off > d->size || len > d->size - off)
    return refuse(t, "internal error: read of %u bytes at %llu is past the disk's end", len,
                  (unsigned long long)off);
  int r = d->rd(d->arg, buf, off, len);
  if (r == 0)
    return 0;
  r = r < 0 ? r : -EIO;
  set_note(t, "cannot read %u bytes at offset %llu: %s", len, (unsigned long long)off, strerror(-r));
  return r;
}

/* ---- overlap checks ---- */

static int span_cmp(const void *a, const void *b)
{
  const struct span *x = a, *y = b;
  return x->start < y->start ? -1 : x->start > y->start;
}

static void span_name(const struct span *s, char *buf, size_t n)
{
  switch (s->kind) {
  case SPAN_PART:
    snprintf(buf, n, "partition %d", s->number);
    break;
  case SPAN_CONTAINER:
    snprintf(buf, n, "extended partition %d", s->number);
    break;
  case SPAN_TABLE:
    snprintf(buf, n, "the partition table at sector %llu", (unsigned long long)s->start);
    break;
  }
}

/* With the spans sorted by start (all non-empty), any overlap shows up
 * between neighbours. */
static int check_overlaps(struct part_table *t, struct span *s, int n)
{
  qsort(s, (size_t)n, sizeof *s, span_cmp);
  for (int i = 0; i + 1 < n; i++) {
    if (s[i + 1].start < s[i].end) {
      /* Name the partition first: "partition 5 overlaps the table at..." */
      bool swap = s[i].kind == SPAN_TABLE;
      char a[64], b[64];
      span_name(&s[i + swap], a, sizeof a);
      span_name(&s[i + !swap], b, sizeof b);
      return refuse(t, "%s overlaps %s", a, b);
    }
  }
  return 0;
}

/* ---- GPT ---- */

struct gpt_hdr {
  uint64_t my_lba, alt_lba, first, last, entry_lba;
  uint32_t count, esize, ecrc;
};

static void guid_str(const uint8_t *g, char *out, size_t n)
{
  /* The first three fields are little-endian, the last two byte strings. */
  snprintf(out, n, "%08X-%04X-%04X-%02X%02X-%02X%02X%02X%02X%02X%02X", (unsigned)le32(g),
           (unsigned)le16(g + 4), (unsigned)le16(g + 6), g[8], g[9], g[10], g[11], g[12], g[13], g[14],
           g[15]);
}

static size_t put_utf8(char *o, uint32_t c)
{
  if (c < 0x80) {
    o[0] = (char)c;
    return 1;
  }
  if (c < 0x800) {
    o[0] = (char)(0xC0 | c >> 6);
    o[1] = (char)(0x80 | (c & 0x3F));
    return 2;
  }
  if (c < 0x10000) {
    o[0] = (char)(0xE0 | c >> 12);
    o[1] = (char)(0x80 | ((c >> 6) & 0x3F));
    o[2] = (char)(0x80 | (c & 0x3F));
    return 3;
  }
  o[0] = (char)(0xF0 | c >> 18);
  o[1] = (char)(0x80 | ((c >> 12) & 0x3F));
  o[2] = (char)(0x80 | ((c >> 6) & 0x3F));
  o[3] = (char)(0x80 | (c & 0x3F));
  return 4;
}

/* UTF-16LE (36 units, up to a NUL) to UTF-8; unpaired surrogates -> '?'. */
static void gpt_name(const uint8_t *p, char *out, size_t n)
{
  size_t o = 0;
  for (int i = 0; i < GPT_NAME_UNITS; i++) {
    uint32_t c = le16(p + 2 * i);
    if (c == 0)
      break;
    uint32_t lo = i + 1 < GPT_NAME_UNITS ? le16(p + 2 * i + 2) : 0;
    if (c >= 0xD800 && c < 0xDC00 && lo >= 0xDC00 && lo < 0xE000) {
      c = 0x10000 + ((c - 0xD800) << 10) + (lo - 0xDC00);
      i++;
    } else if (c >= 0xD800 && c < 0xE000) {
      c = '?';
    }
    if (o + 4 >= n)
      break;
    o += put_utf8(out + o, c);
  }
  out[o] = '\0';
}

/* Signature, revision 1.x, size, CRC and position of the header in s. */
static bool gpt_header_ok(const uint8_t *s, unsigned ss, uint64_t lba, struct gpt_hdr *h, char *why, size_t wn)
{
  if (memcmp(s, "EFI PART", 8))
    return bad(why, wn, "no GPT header at LBA %llu", (unsigned long long)lba);
  if (le16(s + 10) != 1)
    return bad(why, wn, "unsupported GPT revision 0x%08X", (unsigned)le32(s + 8));
  uint32_t hsize = le32(s + 12);
  if (hsize < 92 || hsize > ss)
    return bad(why, wn, "GPT header size %u is not within 92..%u", (unsigned)hsize, ss);
  uint8_t copy[4096];
  memcpy(copy, s, hsize);
  memset(copy + 16, 0, 4); /* the CRC covers the header with its own field zeroed */
  if (part_crc32(copy, hsize) != le32(s + 16))
    return bad(why, wn, "GPT header CRC mismatch at LBA %llu", (unsigned long long)lba);
  *h = (struct gpt_hdr){ .my_lba = le64(s + 24), .alt_lba = le64(s + 32), .first = le64(s + 40),
                         .last = le64(s + 48), .entry_lba = le64(s + 72), .count = le32(s + 80),
                         .esize = le32(s + 84), .ecrc = le32(s + 88) };
  if (h->my_lba != lba)
    return bad(why, wn, "GPT header at LBA %llu says it is at LBA %llu", (unsigned long long)lba,
               (unsigned long long)h->my_lba);
  if (lba != 1 && h->alt_lba != 1)
    return bad(why, wn, "backup GPT header points to LBA %llu, not 1", (unsigned long long)h->alt_lba);
  return true;
}

/* The usable area and the entry array fit the disk (lbas sectors), and
 * neither header (at LBA 1 or lbas - 1) nor array lies in the usable area:
 * partitions inside it can never overwrite the table. */
static bool gpt_layout_ok(const struct gpt_hdr *h, unsigned ss, uint64_t lbas, char *why, size_t wn)
{
  if (h->first < 2 || h->first > h->last || h->last >= lbas - 1)
    return bad(why, wn, "GPT usable LBAs %llu-%llu do not fit a disk of %llu sectors",
               (unsigned long long)h->first, (unsigned long long)h->last, (unsigned long long)lbas);
  if (h->esize < 128 || h->esize % 128)
    return bad(why, wn, "GPT entry size %u is not a multiple of 128", (unsigned)h->esize);
  uint64_t bytes = (uint64_t)h->count * h->esize;
  if (bytes > MAX_ENTRY_ARRAY)
    return bad(why, wn, "GPT entry array of %u x %u bytes is too large", (unsigned)h->count,
               (unsigned)h->esize);
  uint64_t nsec = (bytes + ss - 1) / ss;
  if (h->entry_lba < 1 || h->entry_lba >= lbas || nsec > lbas - h->entry_lba)
    return bad(why, wn, "GPT entry array at LBA %llu is outside the disk", (unsigned long long)h->entry_lba);
  uint64_t end = h->entry_lba + nsec;
  if (h->my_lba >= h->entry_lba && h->my_lba < end)
    return bad(why, wn, "GPT entry array at LBA %llu overlaps its header", (unsigned long long)h->entry_lba);
  if (nsec && h->entry_lba <= h->last && end > h->first)
    return bad(why, wn, "GPT entry array at LBA %llu overlaps the usable LBAs", (unsigned long long)h->entry_lba);
  return true;
}

/* The entry array of h, CRC checked: 0 with *arr malloc'd, -EINVAL with
 * why set, or a read error. */
static int gpt_load_array(struct part_table *t, const struct disk *d, unsigned ss, const struct gpt_hdr *h,
                          uint8_t **arr, char *why, size_t wn)
{
  size_t bytes = (size_t)h->count * h->esize; /* <= MAX_ENTRY_ARRAY */
  uint8_t *a = malloc(bytes ? bytes : 1);
  if (!a)
    return -ENOMEM;
  int r = bytes ? disk_read(t, d, a, h->entry_lba * ss, (uint32_t)bytes) : 0;
  if (r == 0 && part_crc32(a, bytes) != h->ecrc) {
    snprintf(why, wn, "GPT entry array CRC mismatch (header at LBA %llu)", (unsigned long long)h->my_lba);
    r = -EINVAL;
  }
  if (r)
    free(a);
  else
    *arr = a;
  return r;
}

/* Header at lba and its entries: 0, -EINVAL (why says, *seen tells whether
 * a GPT signature was there), or a read error. */
static int gpt_load(struct part_table *t, const struct disk *d, unsigned ss, uint64_t lba, struct gpt_hdr *h,
                    uint8_t **arr, char *why, size_t wn, bool *seen)
{
  uint64_t lbas = d->size / ss;
  *seen = false;
  if (lbas < 2 || lba >= lbas) {
    snprintf(why, wn, "disk too small for a GPT with %u-byte sectors", ss);
    return -EINVAL;
  }
  uint8_t s[4096];
  int r = disk_read(t, d, s, lba * ss, ss);
  if (r)
    return r;
  *seen = !memcmp(s, "EFI PART", 8);
  if (!gpt_header_ok(s, ss, lba, h, why, wn) || !gpt_layout_ok(h, ss, lbas, why, wn))
    return -EINVAL;
  return gpt_load_array(t, d, ss, h, arr, why, wn);
}

static bool guid_zero(const uint8_t *g)
{
  for (int i = 0; i < 16; i++)
    if (g[i])
      return false;
  return true;
}

static int gpt_count_used(const struct gpt_hdr *h, const uint8_t *arr)
{
  int n = 0;
  for (uint32_t i = 0; i < h->count; i++)
    n += !guid_zero(arr + (size_t)i * h->esize);
  return n;
}

/* Entry e (index i) as partition p, checked against the usable LBAs. */
static int gpt_entry(struct part_table *t, const struct gpt_hdr *h, const uint8_t *e, uint32_t i,
                     struct part_entry *p)
{
  uint64_t first = le64(e + 32), last = le64(e + 40);
  p->number = (int)i + 1;
  if (first > last)
    return refuse(t, "GPT partition %d ends (LBA %llu) before it starts (LBA %llu)", p->number,
                  (unsigned long long)last, (unsigned long long)first);
  if (first < h->first || last > h->last)
    return refuse(t, "GPT partition %d (LBAs %llu-%llu) is outside the usable LBAs %llu-%llu", p->number,
                  (unsigned long long)first, (unsigned long long)last, (unsigned long long)h->first,
                  (unsigned long long)h->last);
  p->start = first * t->sector; /* last < disk's sectors: no overflow */
  p->length = (last - first + 1) * t->sector;
  guid_str(e, p->type, sizeof p->type);
  guid_str(e + 16, p->uuid, sizeof p->uuid);
  gpt_name(e + 56, p->name, sizeof p->name);
  return 0;
}

static int gpt_entries(struct part_table *t, const struct gpt_hdr *h, const uint8_t *arr)
{
  int n = gpt_count_used(h, arr);
  if (n == 0)
    return 0;
  t->parts = calloc((size_t)n, sizeof *t->parts);
  struct span *s = calloc((size_t)n, sizeof *s);
  int r = t->parts && s ? 0 : -ENOMEM;
  for (uint32_t i = 0; i < h->count && r == 0; i++) {
    const uint8_t *e = arr + (size_t)i * h->esize;
    if (guid_zero(e))
      continue;
    struct part_entry *p = &t->parts[t->n];
    r = gpt_entry(t, h, e, i, p);
    s[t->n] = (struct span){ p->start / t->sector, (p->start + p->length) / t->sector, p->number, SPAN_PART };
    t->n++;
  }
  if (r == 0)
    r = check_overlaps(t, s, t->n);
  free(s);
  return r;
}

/* Load header and entries from one candidate; 1 when it was not usable. */
static int gpt_try(struct part_table *t, const struct disk *d, unsigned ss, bool backup, char *why, size_t wn,
                   bool *seen)
{
  struct gpt_hdr h;
  uint8_t *arr = NULL;
  uint64_t lba = backup ? d->size / ss - 1 : 1;
  int r = gpt_load(t, d, ss, lba, &h, &arr, why, wn, seen);
  if (r == -EINVAL)
    return 1;
  if (r)
    return r;
  t->sector = ss;
  r = gpt_entries(t, &h, arr);
  free(arr);
  return r;
}

static const unsigned gpt_sector_sizes[] = { 512, 4096 };

static int gpt_read(struct part_table *t, const struct disk *d)
{
  char why[2][128], bwhy[128];
  bool seen[2], bseen;
  t->scheme = PART_GPT;
  for (int i = 0; i < 2; i++) {
    int r = gpt_try(t, d, gpt_sector_sizes[i], false, why[i], sizeof why[i], &seen[i]);
    if (r <= 0)
      return r;
  }
  /* Prefer the reason of a primary header that was there. */
  const char *primary = seen[0] || !seen[1] ? why[0] : why[1];
  if (!seen[0] && !seen[1])
    primary = "no GPT header at LBA 1";
  for (int i = 0; i < 2; i++) {
    int r = gpt_try(t, d, gpt_sector_sizes[i], true, bwhy, sizeof bwhy, &bseen);
    if (r == 0)
      set_note(t, "primary GPT header damaged (%s); using the backup", primary);
    if (r <= 0)
      return r;
  }
  return refuse(t, "%s", primary);
}

/* ---- MBR ---- */

struct mbr_slot {
  uint8_t boot, type;
  uint32_t start, len;
};

struct mbr_walk {
  struct part_table *t;
  const struct disk *d;
  struct span top[6]; /* the MBR's sector, primaries, the container */
  int ntop;
  struct span inner[2 * MAX_EBRS]; /* EBRs and logical partitions */
  int ninner;
  uint64_t ext_start, ext_end; /* the container, in sectors */
  int ext_number;              /* 0: none */
};

static struct mbr_slot mbr_slot(const uint8_t *sector, int i)
{
  const uint8_t *p = sector + 446 + 16 * i;
  return (struct mbr_slot){ p[0], p[4], le32(p + 8), le32(p + 12) };
}

static bool slot_used(const struct mbr_slot *s) { return s->type && s->len; }
static bool is_extended(uint8_t type) { return type == 0x05 || type == 0x0F || type == 0x85; }

static bool has_protective(const uint8_t *sector)
{
  for (int i = 0; i < 4; i++)
    if (mbr_slot(sector, i).type == 0xEE)
      return true;
  return false;
}

/* Boot flags other than 0x00/0x80 mean a filesystem's boot sector that
 * happens to end in 0x55AA (FAT, NTFS), as Linux decides too. */
static bool boot_flags_ok(const uint8_t *sector)
{
  for (int i = 0; i < 4; i++) {
    uint8_t b = mbr_slot(sector, i).boot;
    if (b != 0 && b != 0x80)
      return false;
  }
  return true;
}

static void mbr_add(struct mbr_walk *w, int number, uint64_t start, uint64_t len, uint8_t type, bool inner)
{
  struct part_entry *p = &w->t->parts[w->t->n++];
  p->number = number;
  p->start = start * MBR_SECTOR;
  p->length = len * MBR_SECTOR;
  snprintf(p->type, sizeof p->type, "0x%02x", type);
  struct span s = { start, start + len, number, SPAN_PART };
  if (inner)
    w->inner[w->ninner++] = s;
  else
    w->top[w->ntop++] = s;
}

static bool ebr_seen(const struct mbr_walk *w, uint64_t lba)
{
  for (int i = 0; i < w->ninner; i++)
    if (w->inner[i].kind == SPAN_TABLE && w->inner[i].start == lba)
      return true;
  return false;
}

/* The logical partition in entry 1 of the EBR at lba, if any. */
static int ebr_logical(struct mbr_walk *w, uint64_t lba, const struct mbr_slot *l, int *number)
{
  if (!slot_used(l))
    return 0;
  if (is_extended(l->type))
    return refuse(w->t, "EBR at sector %llu: its first entry is a link, not a partition",
                  (unsigned long long)lba);
  uint64_t start = lba + l->start, end = start + l->len; /* < 2^34: no overflow */
  if (end > w->ext_end)
    return refuse(w->t,
                  "logical partition %d (sectors %llu-%llu) is outside extended partition %d (sectors %llu-%llu)",
                  *number, (unsigned long long)start, (unsigned long long)end - 1, w->ext_number,
                  (unsigned long long)w->ext_start, (unsigned long long)w->ext_end - 1);
  mbr_add(w, (*number)++, start, l->len, l->type, true);
  return 0;
}

/* Follows the EBR chain from the container's first sector. */
static int ebr_walk(struct mbr_walk *w)
{
  uint64_t lba = w->ext_start;
  int number = 5;
  for (int k = 0;; k++) {
    if (k == MAX_EBRS)
      return refuse(w->t, "more than %d EBRs in extended partition %d", MAX_EBRS, w->ext_number);
    if (ebr_seen(w, lba))
      return refuse(w->t, "the EBR chain loops back to sector %llu", (unsigned long long)lba);
    uint8_t s[MBR_SECTOR];
    int r = disk_read(w->t, w->d, s, lba * MBR_SECTOR, MBR_SECTOR);
    if (r)
      return r;
    if (s[510] != 0x55 || s[511] != 0xAA) {
      if (k == 0)
        return 0; /* an extended partition with no logical partition yet */
      return refuse(w->t, "EBR at sector %llu has no 0x55AA signature", (unsigned long long)lba);
    }
    w->inner[w->ninner++] = (struct span){ lba, lba + 1, 0, SPAN_TABLE };
    struct mbr_slot l = mbr_slot(s, 0), next = mbr_slot(s, 1);
    if ((r = ebr_logical(w, lba, &l, &number)))
      return r;
    if (!slot_used(&next))
      return 0;
    if (!is_extended(next.type))
      return refuse(w->t, "EBR at sector %llu: its second entry (type 0x%02x) is not a link to the next EBR",
                    (unsigned long long)lba, next.type);
    lba = w->ext_start + next.start;
    if (lba >= w->ext_end)
      return refuse(w->t, "EBR link to sector %llu is outside extended partition %d", (unsigned long long)lba,
                    w->ext_number);
  }
}

static int mbr_primary(struct mbr_walk *w, int number, const struct mbr_slot *s)
{
  uint64_t end = (uint64_t)s->start + s->len;
  if (end > w->d->size / MBR_SECTOR)
    return refuse(w->t, "partition %d (sectors %llu-%llu) goes past the end of the disk (%llu sectors)", number,
                  (unsigned long long)s->start, (unsigned long long)end - 1,
                  (unsigned long long)(w->d->size / MBR_SECTOR));
  if (!is_extended(s->type)) {
    mbr_add(w, number, s->start, s->len, s->type, false);
    return 0;
  }
  if (w->ext_number)
    return refuse(w->t, "more than one extended partition (%d and %d)", w->ext_number, number);
  w->ext_number = number;
  w->ext_start = s->start;
  w->ext_end = end;
  w->top[w->ntop++] = (struct span){ s->start, end, number, SPAN_CONTAINER };
  return 0;
}

static int mbr_read(struct part_table *t, const struct disk *d, const uint8_t *sector)
{
  t->scheme = PART_MBR;
  t->sector = MBR_SECTOR;
  t->parts = calloc(4 + MAX_EBRS, sizeof *t->parts);
  struct mbr_walk *w = calloc(1, sizeof *w);
  int r = t->parts && w ? 0 : -ENOMEM;
  if (r == 0) {
    w->t = t;
    w->d = d;
    w->top[w->ntop++] = (struct span){ 0, 1, 0, SPAN_TABLE };
  }
  for (int i = 0; i < 4 && r == 0; i++) {
    struct mbr_slot s = mbr_slot(sector, i);
    if (slot_used(&s))
      r = mbr_primary(w, i + 1, &s);
  }
  if (r == 0 && w->ext_number)
    r = ebr_walk(w);
  if (r == 0)
    r = check_overlaps(t, w->top, w->ntop);
  if (r == 0)
    r = check_overlaps(t, w->inner, w->ninner);
  free(w);
  return r;
}

/* ---- entry points ---- */

int part_table_read(struct part_table *t, uint64_t disk_size, part_read_fn rd, void *arg)
{
  memset(t, 0, sizeof *t);
  t->scheme = PART_NONE;
  t->sector = MBR_SECTOR;
  if (disk_size < MBR_SECTOR)
    return 0;
  struct disk d = { disk_size, rd, arg };
  uint8_t s[MBR_SECTOR];
  int r = disk_read(t, &d, s, 0, MBR_SECTOR);
  if (r)
    return r;
  if (s[510] != 0x55 || s[511] != 0xAA)
    return 0;
  if (has_protective(s))
    r = gpt_read(t, &d);
  else if (boot_flags_ok(s))
    r = mbr_read(t, &d, s);
  if (r < 0) {
    free(t->parts);
    t->parts = NULL;
    t->n = 0;
  } else if (t->n == 0) {
    free(t->parts); /* an empty table: parts NULL, as promised */
    t->parts = NULL;
  }
  return r;
}

void part_table_free(struct part_table *t)
{
  free(t->parts);
  t->parts = NULL;
  t->n = 0;
}
