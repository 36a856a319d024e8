/* tls.h: TLS for NBD connections (gnutls), as a transport.
 *
 * Credentials are loaded once and shared by every connection: x509 (a CA,
 * optional client certificate and CRL, from a directory laid out as NBD
 * tools expect) or PSK (psktool's "username:hexkey" file).
 */
#ifndef NBDFS_TLS_H
#define NBDFS_TLS_H

#include <stdbool.h>
#include <stddef.h>

#include "transport.h"
#include "uri.h"

enum tls_mode { TLS_OFF, TLS_ON /* use it if offered */, TLS_REQUIRE };

struct tls_options {
  enum tls_mode mode;
  bool mode_given;            /* --tls was on the command line */
  const char *certificates;   /* directory, or NULL for the default ones */
  const char *psk_file;
  const char *username;       /* PSK identity; NULL: the local user */
  const char *hostname;       /* name to verify; NULL: the URI's host */
  bool verify_peer;
};

struct tls_creds;

/* Work out the TLS settings from the URI and the command line, and load
 * the credentials.  *creds is NULL when TLS is off.  Returns 0 or -1 with a
 * one-line reason in err. */
int tls_setup(const struct nbd_uri *u, const struct tls_options *cmdline,
              struct tls_options *out, struct tls_creds **creds, char *err, size_t errlen);
void tls_creds_free(struct tls_creds *c);

/* Run the TLS handshake over t (after NBD_OPT_STARTTLS was acknowledged)
 * and switch t to TLS.  Returns 0 or -1 with a one-line reason. */
int tls_start(struct transport *t, struct tls_creds *c, int timeout_s, char *err, size_t errlen);

#endif
