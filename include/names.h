/* names.h: export names <-> file names, reversibly.
 *
 * A file name is the export name with '%', '/', control characters (0x01-
 * 0x1f, 0x7f) written as %XX; the names "." and ".." are written "%2E" and
 * "%2E%2E"; the empty (default) export is given a fixed name by the caller,
 * and a real export bearing that name gets its first byte escaped, so that
 * every export stays reachable and decoding is exact.  A name longer than
 * NAME_MAX after escaping is cut and ends in "%~" and 16 hex digits of the
 * export name's SHA-256; name_to_export does not decode those (the mount
 * looks them up in its table, and user.nbd.export gives the real name).
 * Only shortened names can collide, and only if their digests do: the mount
 * checks its table (name_unique) and gives a later export a longer digest.
 */
#ifndef NBDFS_NAMES_H
#define NBDFS_NAMES_H

#include <stdbool.h>

#define NAME_DIGEST_LEN 32 /* SHA-256 */
#define NAME_ATTEMPTS 4    /* digests of 16, 32, 48 and 64 hex digits */

/* A digest of an export name (tests substitute a weak one to force collisions). */
typedef void (*name_digest_fn)(const char *s, unsigned char out[NAME_DIGEST_LEN]);
void name_digest_sha256(const char *s, unsigned char out[NAME_DIGEST_LEN]);

/* Returns a malloc'd file name for export; default_name is used for "". */
char *name_from_export(const char *export, const char *default_name);

/* The name on attempt 0..NAME_ATTEMPTS-1: a shortened name carries 16 *
 * (attempt + 1) hex digits of digest (NULL: SHA-256); other names are the
 * same on every attempt (escaping alone is injective). */
char *name_from_export_try(const char *export, const char *default_name, int attempt,
                           name_digest_fn digest);

/* The first name on successive attempts that taken(name, arg) refuses
 * not.  NULL with errno EEXIST when every attempt is taken (the caller
 * refuses the export: serving two exports under one name would be worse). */
char *name_unique(const char *export, const char *default_name, name_digest_fn digest,
                  bool (*taken)(const char *name, void *arg), void *arg);

/* The inverse; returns NULL when file is not a name name_from_export makes. */
char *name_to_export(const char *file, const char *default_name);

#endif
