/* tls.c: gnutls credentials and the TLS transport. */
#include "tls.h"

#include <errno.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <poll.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>

#include "log.h"

/* TLS 1.2 or 1.3.  ChaCha20 goes last: with AES-NI, AES-GCM is several
 * times faster, and with a PSK (SHA-256 only) NORMAL would pick ChaCha20. */
#define PRIORITY_X509 "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2:-CHACHA20-POLY1305:+CHACHA20-POLY1305"
#define PRIORITY_PSK PRIORITY_X509 ":+ECDHE-PSK:+DHE-PSK:+PSK"

struct tls_creds {
  bool psk;
  gnutls_certificate_credentials_t x509;
  gnutls_psk_client_credentials_t pskc;
  char *hostname;       /* verify against this (NULL: chain only) */
  bool sni;             /* hostname is a DNS name: send it as SNI */
  bool verify;
  bool client_cert;     /* x509: a client certificate was loaded */
};

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
  return -1;
}

static bool is_file(const char *dir, const char *name, char *path, size_t len)
{
  struct stat st;
  snprintf(path, len, "%s/%s", dir, name);
  return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* The certificate directory: as given, or the first default that exists. */
static const char *cert_dir(const char *given, char *buf, size_t len)
{
  if (given)
    return given;
  const char *home = getenv("HOME");
  struct stat st;
  if (home) {
    snprintf(buf, len, "%s/.pki/libnbd", home);
    if (stat(buf, &st) == 0 && S_ISDIR(st.st_mode))
      return buf;
    snprintf(buf, len, "%s/.config/pki/libnbd", home);
    if (stat(buf, &st) == 0 && S_ISDIR(st.st_mode))
      return buf;
  }
  snprintf(buf, len, "/etc/pki/libnbd");
  if (stat(buf, &st) == 0 && S_ISDIR(st.st_mode))
    return buf;
  return NULL;
}

static int load_x509(struct tls_creds *c, const struct tls_options *o, char *err, size_t errlen)
{
  char dirbuf[4096], path[4200], key[4200];
  const char *dir = cert_dir(o->certificates, dirbuf, sizeof dirbuf);
  int r = gnutls_certificate_allocate_credentials(&c->x509);
  if (r < 0)
    return fail(err, errlen, "TLS: %s", gnutls_strerror(r));
  if (o->certificates) {
    struct stat st;
    if (stat(o->certificates, &st) < 0 || !S_ISDIR(st.st_mode))
      return fail(err, errlen, "TLS certificate directory '%s' does not exist", o->certificates);
  }
  if (dir && is_file(dir, "ca-cert.pem", path, sizeof path)) {
    r = gnutls_certificate_set_x509_trust_file(c->x509, path, GNUTLS_X509_FMT_PEM);
    if (r <= 0)
      return fail(err, errlen, "TLS: cannot load CA certificate %s: %s", path,
                  r == 0 ? "no certificate in it" : gnutls_strerror(r));
  } else if (o->certificates) {
    return fail(err, errlen, "TLS certificate directory '%s' has no ca-cert.pem", o->certificates);
  } else {
    r = gnutls_certificate_set_x509_system_trust(c->x509);
    if (r <= 0)
      return fail(err, errlen, "TLS: no CA certificate directory and no system trust store (%s)",
                  r == 0 ? "no certificates" : gnutls_strerror(r));
  }
  if (dir && is_file(dir, "ca-crl.pem", path, sizeof path)) {
    r = gnutls_certificate_set_x509_crl_file(c->x509, path, GNUTLS_X509_FMT_PEM);
    if (r < 0)
      return fail(err, errlen, "TLS: cannot load CRL %s: %s", path, gnutls_strerror(r));
  }
  if (dir && is_file(dir, "client-cert.pem", path, sizeof path) &&
      is_file(dir, "client-key.pem", key, sizeof key)) {
    r = gnutls_certificate_set_x509_key_file(c->x509, path, key, GNUTLS_X509_FMT_PEM);
    if (r < 0)
      return fail(err, errlen, "TLS: cannot load client certificate %s: %s", path,
                  gnutls_strerror(r));
    c->client_cert = true;
  }
  return 0;
}

/* Find username's key in a psktool file ("username:hexkey" lines). */
static int load_psk(struct tls_creds *c, const struct tls_options *o, char *err, size_t errlen)
{
  const char *user = o->username;
  if (!user) {
    struct passwd *pw = getpwuid(getuid());
    user = pw ? pw->pw_name : getenv("USER");
  }
  if (!user)
    return fail(err, errlen, "TLS PSK: no username (give one with user@ in the URI or --tls-username)");
  FILE *f = fopen(o->psk_file, "r");
  if (!f)
    return fail(err, errlen, "TLS PSK file '%s': %s", o->psk_file, strerror(errno));
  char line[4096];
  char *hex = NULL;
  while (!hex && fgets(line, sizeof line, f)) {
    line[strcspn(line, "\r\n")] = '\0';
    char *colon = strchr(line, ':');
    if (colon && (size_t)(colon - line) == strlen(user) && !strncmp(line, user, strlen(user)))
      hex = strdup(colon + 1);
  }
  fclose(f);
  if (!hex)
    return fail(err, errlen, "TLS PSK file '%s' has no key for user '%s'", o->psk_file, user);
  int r = gnutls_psk_allocate_client_credentials(&c->pskc);
  if (r >= 0) {
    gnutls_datum_t k = { (unsigned char *)hex, (unsigned)strlen(hex) };
    r = gnutls_psk_set_client_credentials(c->pskc, user, &k, GNUTLS_PSK_KEY_HEX);
  }
  explicit_bzero(hex, strlen(hex));
  free(hex);
  if (r < 0)
    return fail(err, errlen, "TLS PSK key for user '%s' in '%s': %s", user, o->psk_file,
                gnutls_strerror(r));
  return 0;
}

void tls_creds_free(struct tls_creds *c)
{
  if (!c)
    return;
  if (c->x509)
    gnutls_certificate_free_credentials(c->x509);
  if (c->pskc)
    gnutls_psk_free_client_credentials(c->pskc);
  free(c->hostname);
  free(c);
}

int tls_setup(const struct nbd_uri *u, const struct tls_options *cl, struct tls_options *o,
              struct tls_creds **creds, char *err, size_t errlen)
{
  *o = *cl;
  *creds = NULL;
  if (u->tls) {
    if (cl->mode_given && cl->mode == TLS_OFF)
      return fail(err, errlen, "the URI asks for TLS (nbds), which --tls=off forbids");
    o->mode = TLS_REQUIRE;
  }
  /* URI parameters, then command-line options (which win). */
  if (!cl->certificates && u->tls_certificates)
    o->certificates = u->tls_certificates;
  if (!cl->psk_file && u->tls_psk_file)
    o->psk_file = u->tls_psk_file;
  if (!cl->hostname && u->tls_hostname)
    o->hostname = u->tls_hostname;
  if (!cl->username && u->user)
    o->username = u->user;
  if (cl->verify_peer && u->tls_verify_peer == 0)
    o->verify_peer = false;
  if (u->tls_type && !strcmp(u->tls_type, "psk") && !o->psk_file)
    return fail(err, errlen, "tls-type=psk needs a PSK file (tls-psk-file= or --tls-psk-file)");
  if (o->mode == TLS_OFF) {
    if (o->certificates || o->psk_file)
      log_info("TLS credentials given but TLS is off (use nbds:// or --tls=on)");
    return 0;
  }
  if (o->mode != TLS_OFF && u->transport == NBD_TRANSPORT_TCP && !o->hostname)
    o->hostname = u->host;

  struct tls_creds *c = calloc(1, sizeof *c);
  if (!c)
    return fail(err, errlen, "out of memory");
  c->verify = o->verify_peer;
  c->psk = o->psk_file && !(u->tls_type && !strcmp(u->tls_type, "x509"));
  if (o->hostname) {
    c->hostname = strdup(o->hostname);
    unsigned char addr[16];
    c->sni = inet_pton(AF_INET, o->hostname, addr) != 1 && inet_pton(AF_INET6, o->hostname, addr) != 1;
  }
  int r = c->psk ? load_psk(c, o, err, errlen) : load_x509(c, o, err, errlen);
  if (r < 0) {
    tls_creds_free(c);
    return -1;
  }
  if (!c->psk && !c->verify)
    log_warn("TLS peer verification is off: the server is not authenticated");
  if (!c->psk && c->verify && !c->hostname)
    log_warn("TLS over a socket without a host name: checking the certificate chain only (give tls-hostname to check the name)");
  *creds = c;
  return 0;
}

/* ---- the transport ---- */

struct tls_priv {
  gnutls_session_t s;
  bool no_client_cert;  /* x509 without a client certificate (for hints) */
  bool send_pending;   /* a send returned E_AGAIN: retry with NULL, 0 */
  bool bye_sent;
};

/* With TLS 1.3 a server refuses a client certificate only after the
 * handshake, often by just hanging up: say what the likely cause is. */
static void hint_client_cert(struct transport *t)
{
  struct tls_priv *p = t->priv;
  if (!p->no_client_cert)
    return;
  size_t n = strlen(t->last_error);
  snprintf(t->last_error + n, sizeof t->last_error - n,
           " (the server may require a client certificate; none was found)");
}

static ssize_t tls_recv(struct transport *t, void *buf, size_t len)
{
  struct tls_priv *p = t->priv;
  for (;;) {
    ssize_t r = gnutls_record_recv(p->s, buf, len);
    if (r >= 0)
      return r;
    if (r == GNUTLS_E_INTERRUPTED)
      continue;
    if (r == GNUTLS_E_AGAIN)
      return -EAGAIN;
    if (r == GNUTLS_E_PREMATURE_TERMINATION)
      return 0; /* closed without close_notify (qemu-nbd does this) */
    if (r == GNUTLS_E_REHANDSHAKE) /* refuse renegotiation politely */
      continue;
    if (r == GNUTLS_E_FATAL_ALERT_RECEIVED) {
      gnutls_alert_description_t a = gnutls_alert_get(p->s);
      const char *name = gnutls_alert_get_name(a);
      if (name)
        snprintf(t->last_error, sizeof t->last_error, "TLS: the server sent alert '%s'", name);
      else
        snprintf(t->last_error, sizeof t->last_error, "TLS: the server sent alert %d", (int)a);
    } else {
      snprintf(t->last_error, sizeof t->last_error, "TLS: %s", gnutls_strerror((int)r));
    }
    hint_client_cert(t);
    log_info("TLS receive: %s", t->last_error);
    return -EIO;
  }
}

/* A send failed: record why.  The reason is often an alert the server sent
 * before it hung up (a refused client certificate, say), but this may run
 * on a sending thread while the connection's owner is receiving on the same
 * session, and gnutls forbids receiving from two threads at once: so no
 * receive here.  tls_recv reports the alert when the receiving side reads
 * it; until then, the gnutls error and the client-certificate hint. */
static ssize_t send_failed(struct transport *t, ssize_t r)
{
  snprintf(t->last_error, sizeof t->last_error, "TLS: %s", gnutls_strerror((int)r));
  hint_client_cert(t);
  return -EIO;
}

static ssize_t tls_sendv(struct transport *t, const struct iovec *iov, int iovcnt)
{
  struct tls_priv *p = t->priv;
  if (p->send_pending) {
    /* The record handed over last time: finish it; the return value says
     * how much of the caller's data that was. */
    ssize_t r = gnutls_record_send(p->s, NULL, 0);
    if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED)
      return -EAGAIN;
    p->send_pending = false;
    return r < 0 ? send_failed(t, r) : r;
  }
  size_t total = 0;
  uint8_t small[16384];
  /* Coalesce small header+payload pairs into one record. */
  size_t sum = 0;
  for (int i = 0; i < iovcnt; i++)
    sum += iov[i].iov_len;
  if (iovcnt > 1 && sum <= sizeof small) {
    size_t o = 0;
    for (int i = 0; i < iovcnt; i++) {
      memcpy(small + o, iov[i].iov_base, iov[i].iov_len);
      o += iov[i].iov_len;
    }
    ssize_t r = gnutls_record_send(p->s, small, sum);
    if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED) {
      p->send_pending = true;
      return -EAGAIN;
    }
    return r < 0 ? send_failed(t, r) : r;
  }
  for (int i = 0; i < iovcnt; i++) {
    size_t off = 0;
    while (off < iov[i].iov_len) {
      ssize_t r = gnutls_record_send(p->s, (const uint8_t *)iov[i].iov_base + off,
                                     iov[i].iov_len - off);
      if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED) {
        p->send_pending = true;
        return total ? (ssize_t)total : -EAGAIN;
      }
      if (r < 0)
        return total ? (ssize_t)total : send_failed(t, r);
      off += (size_t)r;
      total += (size_t)r;
    }
  }
  return (ssize_t)total;
}

static void tls_shutdown(struct transport *t, bool write_only)
{
  struct tls_priv *p = t->priv;
  if (write_only && !p->bye_sent) {
    /* A proper close_notify, waiting briefly if the socket is full. */
    p->bye_sent = true;
    for (int i = 0; i < 20; i++) {
      int r = gnutls_bye(p->s, GNUTLS_SHUT_WR);
      if (r != GNUTLS_E_AGAIN && r != GNUTLS_E_INTERRUPTED)
        break;
      struct pollfd pf = { .fd = t->fd, .events = POLLOUT };
      poll(&pf, 1, 50);
    }
  }
  shutdown(t->fd, write_only ? SHUT_WR : SHUT_RDWR);
}

static void tls_destroy(struct transport *t)
{
  struct tls_priv *p = t->priv;
  gnutls_deinit(p->s);
  free(p);
  if (t->fd >= 0)
    close(t->fd);
  free(t);
}

static const struct transport_ops tls_ops = {
  .recv = tls_recv, .sendv = tls_sendv, .shutdown = tls_shutdown, .destroy = tls_destroy,
};

/* A clear reason for a failed handshake. */
static void explain(gnutls_session_t s, int r, const struct tls_creds *c, char *err, size_t errlen)
{
  if (r == GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR) {
    unsigned status = gnutls_session_get_verify_cert_status(s);
    gnutls_datum_t out = { 0 };
    gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &out, 0);
    snprintf(err, errlen, "TLS: server certificate rejected%s%s%s: %s", c->hostname ? " (expected name '" : "",
             c->hostname ? c->hostname : "", c->hostname ? "')" : "",
             out.data ? (char *)out.data : "verification failed");
    gnutls_free(out.data);
    size_t n = strlen(err);
    while (n > 0 && err[n - 1] == ' ')
      err[--n] = '\0';
  } else if (c->psk && (r == GNUTLS_E_DECRYPTION_FAILED || r == GNUTLS_E_FATAL_ALERT_RECEIVED ||
                        r == GNUTLS_E_PREMATURE_TERMINATION)) {
    gnutls_alert_description_t a = gnutls_alert_get(s);
    snprintf(err, errlen, "TLS PSK handshake failed (wrong key or unknown user?): %s%s%s",
             gnutls_strerror(r), r == GNUTLS_E_FATAL_ALERT_RECEIVED ? ": " : "",
             r == GNUTLS_E_FATAL_ALERT_RECEIVED ? gnutls_alert_get_name(a) : "");
  } else if (r == GNUTLS_E_FATAL_ALERT_RECEIVED) {
    snprintf(err, errlen, "TLS handshake failed: server sent alert: %s",
             gnutls_alert_get_name(gnutls_alert_get(s)));
  } else {
    snprintf(err, errlen, "TLS handshake failed: %s", gnutls_strerror(r));
  }
}

int tls_start(struct transport *t, struct tls_creds *c, int timeout_s, char *err, size_t errlen)
{
  struct tls_priv *p = calloc(1, sizeof *p);
  if (!p)
    return fail(err, errlen, "out of memory");
  int r = gnutls_init(&p->s, GNUTLS_CLIENT | GNUTLS_NONBLOCK | GNUTLS_NO_SIGNAL);
  if (r < 0) {
    free(p);
    return fail(err, errlen, "TLS: %s", gnutls_strerror(r));
  }
  const char *errpos;
  r = gnutls_priority_set_direct(p->s, c->psk ? PRIORITY_PSK : PRIORITY_X509, &errpos);
  if (r >= 0)
    r = gnutls_credentials_set(p->s, c->psk ? GNUTLS_CRD_PSK : GNUTLS_CRD_CERTIFICATE,
                               c->psk ? (void *)c->pskc : (void *)c->x509);
  if (r >= 0 && !c->psk && c->sni)
    r = gnutls_server_name_set(p->s, GNUTLS_NAME_DNS, c->hostname, strlen(c->hostname));
  if (r < 0) {
    gnutls_deinit(p->s);
    free(p);
    return fail(err, errlen, "TLS setup: %s", gnutls_strerror(r));
  }
  if (!c->psk && c->verify)
    gnutls_session_set_verify_cert(p->s, c->hostname, 0);
  gnutls_transport_set_int(p->s, t->fd);
  gnutls_handshake_set_timeout(p->s, (unsigned)(timeout_s > 0 ? timeout_s : 30) * 1000);
  do {
    r = gnutls_handshake(p->s);
    if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED) {
      struct pollfd pf = { .fd = t->fd,
                           .events = gnutls_record_get_direction(p->s) ? POLLOUT : POLLIN };
      poll(&pf, 1, 1000);
    }
  } while (r < 0 && !gnutls_error_is_fatal(r));
  if (r < 0) {
    explain(p->s, r, c, err, errlen);
    gnutls_deinit(p->s);
    free(p);
    return -1;
  }
  p->no_client_cert = !c->psk && !c->client_cert;
  t->ops = &tls_ops;
  t->priv = p;
  return 0;
}
