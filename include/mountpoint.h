/* mountpoint.h: where the mount goes, resolved once and held.
 *
 * The path is resolved before the (possibly slow) handshake and the
 * directory or file it names is held open; just before mounting, the path
 * must still lead to that same object (a directory swapped for a symlink
 * meanwhile is refused, not followed) and a directory must still be empty.
 * Every form refuses to hide a non-empty directory unless told otherwise
 * (-o nonempty).
 */
#ifndef NBDFS_MOUNTPOINT_H
#define NBDFS_MOUNTPOINT_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

enum mountpoint_form {
  MOUNTPOINT_DIR,    /* an existing directory: the file is named after the export */
  MOUNTPOINT_NAMED,  /* DIR/NAME with DIR existing: the file is NAME */
  MOUNTPOINT_NAKED,  /* an existing regular file, mounted over */
  MOUNTPOINT_EXPORTS /* --exports: an existing directory, one file per export */
};

struct mountpoint {
  enum mountpoint_form form;
  char *dir;         /* absolute canonical path FUSE mounts on (a directory, or the file if naked) */
  char *file_name;   /* DIR and NAMED: the file's name in dir; NULL otherwise */
  int held;          /* O_PATH descriptor of dir */
  dev_t dev;
  ino_t ino;
  bool nonempty;     /* a non-empty directory may be hidden */
};

/* Resolve mp (relative to the current directory).  export_name names the
 * file in the DIR form (NULL: directory mode).  Returns 0, or -1 with a
 * one-line reason in err. */
int mountpoint_resolve(struct mountpoint *m, const char *mp, const char *export_name,
                       bool exports, bool nonempty, char *err, size_t errlen);
/* Just before mounting: still the same object, still empty.  0 or -1 + err. */
int mountpoint_recheck(const struct mountpoint *m, char *err, size_t errlen);
void mountpoint_free(struct mountpoint *m);

/* -o allow_other (or allow_root) as a user needs user_allow_other in
 * /etc/fuse.conf: 0 when fine, or -1 with a one-line explanation. */
int mountpoint_check_allow_other(bool allow_other, char *err, size_t errlen);

#endif
