/* uri.h: NBD URI parsing (nbd, nbds, nbd+unix, nbds+unix, nbd+vsock, nbds+vsock). */
#ifndef NBDFS_URI_H
#define NBDFS_URI_H

#include <stdbool.h>
#include <stddef.h>

enum nbd_transport_kind {
  NBD_TRANSPORT_TCP, NBD_TRANSPORT_UNIX, NBD_TRANSPORT_VSOCK,
  NBD_TRANSPORT_FD, /* an already-connected socket (--fd, --command): usable once */
};

struct nbd_uri {
  enum nbd_transport_kind transport;
  bool tls;               /* nbds* scheme: TLS required */
  char *host;             /* TCP: host name or address (IPv6 without brackets); vsock: CID */
  char *port;             /* TCP/vsock: port (default "10809") */
  char *socket;           /* unix: socket path (leading '\0' for abstract) */
  size_t socket_len;      /* length of socket, which may start with a NUL */
  char *export_name;      /* percent-decoded, "" for the default export */
  bool has_export;        /* the URI named a path at all (nbd://h/x or nbd://h/) */
  char *user;             /* userinfo (TLS PSK username) or NULL */
  /* TLS query parameters (recorded here, used by the TLS layer). */
  char *tls_certificates;
  char *tls_psk_file;
  char *tls_hostname;
  int tls_verify_peer;    /* -1 unset, 0, 1 */
  char *tls_type;
  int fd;                 /* NBD_TRANSPORT_FD: the socket */
  char *label;            /* shown in place of the address (a server nbdfs started), or NULL */
};

/* Parse uri into *u.  On error returns -1 and writes a one-line reason to
 * err (which names the offending part). */
int nbd_uri_parse(const char *uri, struct nbd_uri *u, char *err, size_t errlen);
void nbd_uri_free(struct nbd_uri *u);

/* Percent-decode src[0..len) into a new string; returns NULL on a bad escape
 * or an embedded NUL (unless allow_nul).  *outlen gets the decoded length. */
char *nbd_uri_decode(const char *src, size_t len, bool allow_nul, size_t *outlen);

/* A server reached through the connected socket fd, which the connection
 * will own (it cannot be reconnected).  label describes it in messages. */
int nbd_uri_from_fd(struct nbd_uri *u, int fd, const char *label, const char *export_name);

/* A server listening on the Unix socket path (which nbdfs made), shown as
 * label in messages. */
int nbd_uri_from_socket(struct nbd_uri *u, const char *path, const char *label,
                        const char *export_name);

/* Make a relative Unix socket path absolute (against the current directory),
 * so that later connections do not depend on it.  -1 with a reason in err. */
int nbd_uri_make_absolute(struct nbd_uri *u, char *err, size_t errlen);

/* Write a URI for display (TCP/vsock host:port or unix socket plus export). */
void nbd_uri_describe(const struct nbd_uri *u, char *out, size_t outlen);

/* Write the URI of export_name on the same server (as users would type it);
 * "" for a server reached through a socket given as a file descriptor. */
void nbd_uri_format(const struct nbd_uri *u, const char *export_name, char *out, size_t outlen);

#endif
