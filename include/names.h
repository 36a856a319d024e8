/* names.h: export names <-> file names, reversibly.
 *
 * A file name is the export name with '%', '/', control characters (0x01-
 * 0x1f, 0x7f) written as %XX; the names "." and ".." are written "%2E" and
 * "%2E%2E"; the empty (default) export is given a fixed name by the caller,
 * and a real export bearing that name gets its first byte escaped, so that
 * every export stays reachable and decoding is exact.  A name longer than
 * NAME_MAX after escaping is cut and ends in "%~" and a 16-digit digest of
 * the export name; name_to_export does not decode those (the mount looks
 * them up in its table, and user.nbd.export gives the real name).
 */
#ifndef NBDFS_NAMES_H
#define NBDFS_NAMES_H

/* Returns a malloc'd file name for export; default_name is used for "". */
char *name_from_export(const char *export, const char *default_name);

/* The inverse; returns NULL when file is not a name name_from_export makes. */
char *name_to_export(const char *file, const char *default_name);

#endif
