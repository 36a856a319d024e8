/* fuzz-handshake.c: libFuzzer harness for nbd_negotiate and
 * nbd_list_exports over fuzz bytes.
 *
 * Input: one mode byte, then the bytes the server sends.
 *   bit 0  ask for structured replies       bit 1  ask for block status
 *   bit 2  export "disk" (else the default export "")
 *   bit 3  list exports instead of negotiating
 *   bit 4  (list) also ask NBD_OPT_INFO for each export
 *   bit 5  TLS if offered, bit 6 TLS required (PSK credentials; there is no
 *          socket, so a TLS handshake after STARTTLS's ACK fails at once)
 *   bit 7  (with bit 0) try extended headers first
 * After a successful negotiation the rest of the bytes are the transmission
 * phase: a READ and a WRITE are submitted and the receive loop runs on the
 * same transport, so the hand-over from handshake to transmission is covered.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conn.h"
#include "handshake.h"
#include "tls.h"
#include "transport.h"
#include "uri.h"

#include <unistd.h>

/* PSK credentials, made once from a temporary key file. */
static struct tls_creds *creds(void)
{
  static struct tls_creds *c;
  static bool tried;
  if (tried)
    return c;
  tried = true;
  char path[] = "/tmp/nbdfs-fuzz-psk.XXXXXX";
  int fd = mkstemp(path);
  if (fd < 0)
    return NULL;
  static const char key[] = "fuzz:00112233445566778899aabbccddeeff\n";
  bool ok = write(fd, key, sizeof key - 1) == (ssize_t)(sizeof key - 1);
  close(fd);
  char uri[128], err[256];
  snprintf(uri, sizeof uri, "nbds+unix://fuzz@/?socket=/nonexistent&tls-psk-file=%s", path);
  struct nbd_uri u;
  if (ok && nbd_uri_parse(uri, &u, err, sizeof err) == 0) {
    struct tls_options cl = { 0 }, out;
    if (tls_setup(&u, &cl, &out, &c, err, sizeof err) < 0)
      c = NULL;
  }
  nbd_uri_free(&u);
  unlink(path);
  return c;
}

static int calls[2];

static void on_done(void *arg, int err)
{
  int *n = arg;
  (*n)++;
  if (*n != 1 || err < 0)
    abort();
}

static void check_err(const char *err, int r)
{
  /* Failures come with a one-line reason. */
  if (r < 0 && (!err[0] || strchr(err, '\n')))
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  if (size < 1)
    return 0;
  uint8_t mode = data[0];
  struct transport *t = transport_from_memory(data + 1, size - 1);
  if (!t)
    return 0;
  struct nbd_hs_opts o = { .export_name = (mode & 4) ? "disk" : "", .structured = mode & 1,
                           .extended = mode & 0x80, .block_status = mode & 2 };
  if (mode & 0x60) {
    o.tls = creds();
    if (o.tls)
      o.tls_mode = (mode & 0x40) ? TLS_REQUIRE : TLS_ON;
  }
  char err[512] = "";

  if (mode & 8) {
    struct nbd_listed_export *e = NULL;
    struct nbd_export_info *in = NULL;
    int r = nbd_list_exports(t, &o, &e, (mode & 16) ? &in : NULL, err, sizeof err);
    check_err(err, r);
    if (r >= 0) {
      for (int i = 0; i < r; i++) {
        if (!e[i].name || !e[i].description || strlen(e[i].name) > 4096)
          abort();
      }
      nbd_listed_exports_free(e, in, r);
    } else if (e || in) {
      abort();
    }
    transport_destroy(t);
    return 0;
  }

  struct nbd_session s;
  int r = nbd_negotiate(t, &o, &s, err, sizeof err);
  check_err(err, r);
  if (r < 0) {
    transport_destroy(t);
    return 0;
  }
  /* What a successful negotiation promises. */
  const struct nbd_export_info *i = &s.info;
  if (!i->have_export || i->size > INT64_MAX || i->min_block == 0 || i->size % i->min_block ||
      i->max_block > NBD_MAX_PAYLOAD || i->pref_block < i->min_block ||
      !(i->tflags & NBD_FLAG_HAS_FLAGS) || (s.have_base_alloc && !s.structured) ||
      (s.oldstyle && s.structured) || (o.export_name[0] && s.oldstyle) ||
      (o.tls_mode == TLS_REQUIRE && !s.tls) ||
      (s.extended && (!s.structured || !o.extended || !o.structured || !s.used_go)))
    abort(); /* (TLS: no downgrade when required; extended: asked for, and never EXPORT_NAME) */

  struct nbd_conn *c = nbd_conn_new(t, &s, "fuzz", 0, 0);
  nbd_session_free(&s);
  if (!c) {
    transport_destroy(t);
    return 0;
  }
  static uint8_t rb[1024], wb[512];
  calls[0] = calls[1] = 0;
  struct nbd_cmd rd = { .type = NBD_CMD_READ, .count = sizeof rb, .buf = rb, .done = on_done, .arg = &calls[0] };
  struct nbd_cmd wr = { .type = NBD_CMD_WRITE, .offset = 512, .count = sizeof wb, .buf = wb, .done = on_done,
                        .arg = &calls[1] };
  if (nbd_conn_submit(c, &rd) != 0 || nbd_conn_submit(c, &wr) != 0)
    abort();
  nbd_conn_receive_loop(c);
  if (calls[0] != 1 || calls[1] != 1)
    abort();
  nbd_conn_close(c);
  return 0;
}
