/* handshake.h: NBD negotiation (oldstyle, newstyle, fixed newstyle) up to
 * the transmission phase, plus LIST and INFO queries for directory mode. */
#ifndef NBDFS_HANDSHAKE_H
#define NBDFS_HANDSHAKE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "nbd-proto.h"
#include "tls.h"
#include "transport.h"

struct nbd_hs_opts {
  const char *export_name;   /* "" for the default export */
  bool structured;           /* ask for structured replies */
  bool extended;             /* with structured: try extended headers first */
  bool block_status;         /* ask for base:allocation (needs structured) */
  int timeout_s;             /* bound on the whole handshake, 0: none */
  enum tls_mode tls_mode;    /* off, on (if offered) or require */
  struct tls_creds *tls;     /* credentials when tls_mode is not off */
};

/* What a successful negotiation produced. */
struct nbd_session {
  struct nbd_export_info info;  /* size, flags, block sizes, name, description */
  bool oldstyle;
  bool fixed_newstyle;
  bool structured;              /* chunks: structured replies, or extended headers */
  bool extended;                /* extended headers: 32-byte requests and replies only */
  bool used_go;                 /* false: NBD_OPT_EXPORT_NAME fallback */
  bool have_base_alloc;
  uint32_t base_alloc_id;
  bool tls;                     /* the session runs over TLS */
};

/* Negotiate the export named in o and enter transmission.  Returns 0, or a
 * negative errno with a one-line reason in err: -ENOENT (no such export),
 * -EACCES (refused), -EPROTO (protocol violation), -ECONNRESET (server hung
 * up), -ETIMEDOUT, -ENOTSUP (server cannot do what was asked). */
int nbd_negotiate(struct transport *t, const struct nbd_hs_opts *o, struct nbd_session *s,
                  char *err, size_t errlen);

void nbd_session_free(struct nbd_session *s);

/* One export from NBD_OPT_LIST. */
struct nbd_listed_export {
  char *name;
  char *description;
};

/* Ask the server for its exports (NBD_OPT_LIST), then, for each, the
 * details (NBD_OPT_INFO) when infos is non-NULL; finishes with NBD_OPT_ABORT.
 * Returns the count (>= 0) or a negative errno as for nbd_negotiate. */
int nbd_list_exports(struct transport *t, const struct nbd_hs_opts *o,
                     struct nbd_listed_export **out, struct nbd_export_info **infos,
                     char *err, size_t errlen);
void nbd_listed_exports_free(struct nbd_listed_export *e, struct nbd_export_info *infos, int n);

void nbd_export_info_free(struct nbd_export_info *info);

#endif
