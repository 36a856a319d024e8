/* partition.h: reading a disk's partition table (GPT or MBR with EBRs).
 *
 * Pure: the disk is read through a callback, nothing else is touched.
 * Everything read is validated with overflow-safe arithmetic; a table that
 * could make a partition cover the table itself, another partition or
 * bytes past the disk's end is refused, so writes through a partition can
 * never reach the table or a neighbour.  Reads stay within the disk, their
 * number is bounded (a few plus one per EBR, at most 128 EBRs) and so are
 * allocations (the GPT entry array at most 4 MiB).
 *
 * Numbering follows the Linux kernel: GPT entry index + 1 (unused entries
 * skipped, their numbers not reused); MBR primary slots 1-4, logical
 * partitions 5, 6, ... in EBR chain order, the extended container unlisted.
 *
 * Like Linux, a sector with 0x55AA whose boot flags are not 0x00/0x80 is a
 * filesystem's boot sector (FAT, NTFS), not a partition table: PART_NONE.
 */
#ifndef NBDFS_PARTITION_H
#define NBDFS_PARTITION_H

#include <stddef.h>
#include <stdint.h>

enum part_scheme { PART_NONE, PART_MBR, PART_GPT };

struct part_entry {
  int number;             /* see above */
  uint64_t start, length; /* bytes */
  char type[40];          /* GPT: type GUID, upper-case canonical; MBR: "0x83" (lower-case hex) */
  char name[112];         /* GPT name as UTF-8 (bad UTF-16 -> '?'); "" for MBR */
  char uuid[40];          /* GPT unique partition GUID, upper-case canonical; "" for MBR */
};

struct part_table {
  enum part_scheme scheme; /* also set when the table found was refused */
  unsigned sector;         /* logical sector size used: 512 or 4096 */
  int n;
  struct part_entry *parts; /* malloc'd, sorted by number; NULL when n == 0 */
  char note[256];           /* one line: why the table was refused, or a remark
                               (e.g. the backup GPT header was used); "" if none */
};

/* Read [off, off+len) of the disk into buf: 0 or a negative errno.
 * Only called for ranges inside [0, disk_size), len <= 4 MiB. */
typedef int (*part_read_fn)(void *arg, void *buf, uint64_t off, uint32_t len);

/* Returns 0 with t->scheme PART_NONE (no partition table), or 0 with a
 * valid table; -EINVAL when a table is present but fails validation
 * (t->n == 0, t->note says why); another negative errno when reading
 * failed (or -ENOMEM).  t is always initialised: call part_table_free. */
int part_table_read(struct part_table *t, uint64_t disk_size, part_read_fn rd, void *arg);
void part_table_free(struct part_table *t);

/* CRC-32 (IEEE 802.3, as GPT uses) */
uint32_t part_crc32(const void *buf, size_t len);

#endif
