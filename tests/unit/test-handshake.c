/* test-handshake.c: nbd_negotiate and nbd_list_exports over crafted server
 * byte streams (the memory transport discards what the client sends). */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "handshake.h"
#include "tls.h"
#include "transport.h"
#include "uri.h"

static char err[512];

/* ---- stream builders ---- */

static void newstyle(struct bytes *b, uint16_t flags)
{
  b_u64(b, NBD_INIT_MAGIC);
  b_u64(b, NBD_IHAVEOPT);
  b_u16(b, flags);
}

static void oldstyle(struct bytes *b, uint64_t size, uint32_t flags)
{
  b_u64(b, NBD_INIT_MAGIC);
  b_u64(b, NBD_OLDSTYLE_MAGIC);
  b_u64(b, size);
  b_u32(b, flags);
  b_zero(b, 124);
}

static void rep(struct bytes *b, uint32_t opt, uint32_t type, const void *data, uint32_t len)
{
  b_u64(b, NBD_OPT_REPLY_MAGIC);
  b_u32(b, opt);
  b_u32(b, type);
  b_u32(b, len);
  b_put(b, data, len);
}

static void ack(struct bytes *b, uint32_t opt) { rep(b, opt, NBD_REP_ACK, NULL, 0); }

static void info_export(struct bytes *b, uint32_t opt, uint64_t size, uint16_t tflags)
{
  uint8_t p[12];
  nbd_put16(p, NBD_INFO_EXPORT);
  nbd_put64(p + 2, size);
  nbd_put16(p + 10, tflags);
  rep(b, opt, NBD_REP_INFO, p, 12);
}

static void info_bs(struct bytes *b, uint32_t opt, uint32_t min, uint32_t pref, uint32_t max)
{
  uint8_t p[14];
  nbd_put16(p, NBD_INFO_BLOCK_SIZE);
  nbd_put32(p + 2, min);
  nbd_put32(p + 6, pref);
  nbd_put32(p + 10, max);
  rep(b, opt, NBD_REP_INFO, p, 14);
}

static void info_str(struct bytes *b, uint32_t opt, uint16_t type, const char *s)
{
  uint8_t p[300];
  size_t n = strlen(s);
  nbd_put16(p, type);
  memcpy(p + 2, s, n);
  rep(b, opt, NBD_REP_INFO, p, (uint32_t)(2 + n));
}

static void meta(struct bytes *b, uint32_t id, const char *name)
{
  uint8_t p[300];
  size_t n = strlen(name);
  nbd_put32(p, id);
  memcpy(p + 4, name, n);
  rep(b, NBD_OPT_SET_META_CONTEXT, NBD_REP_META_CONTEXT, p, (uint32_t)(4 + n));
}

static void server(struct bytes *b, const char *name, size_t nlen, const char *desc)
{
  uint8_t p[600];
  size_t dl = strlen(desc);
  nbd_put32(p, (uint32_t)nlen);
  memcpy(p + 4, name, nlen);
  memcpy(p + 4 + nlen, desc, dl);
  rep(b, NBD_OPT_LIST, NBD_REP_SERVER, p, (uint32_t)(4 + nlen + dl));
}

static void errrep(struct bytes *b, uint32_t opt, uint32_t type, const char *msg)
{
  rep(b, opt, type, msg, (uint32_t)strlen(msg));
}

/* The usual prelude for structured + block_status: SR ACK, one context. */
static void sr_meta(struct bytes *b, uint32_t id)
{
  ack(b, NBD_OPT_STRUCTURED_REPLY);
  meta(b, id, "base:allocation");
  ack(b, NBD_OPT_SET_META_CONTEXT);
}

static const struct nbd_hs_opts OPTS_FULL = { .export_name = "disk", .structured = true, .block_status = true };
static const struct nbd_hs_opts OPTS_PLAIN = { .export_name = "disk" };
static const struct nbd_hs_opts OPTS_DEFAULT = { .export_name = "", .structured = true, .block_status = true };

/* Run nbd_negotiate over stream; *left gets the bytes the server sent that
 * the client did not consume (read back from the transport). */
static int nego(const struct bytes *b, const struct nbd_hs_opts *o, struct nbd_session *s, size_t *left)
{
  struct transport *t = transport_from_memory(b->p ? b->p : (const uint8_t *)"", b->len);
  err[0] = '\0';
  int r = nbd_negotiate(t, o, s, err, sizeof err);
  if (left) {
    uint8_t tmp[4096];
    ssize_t n;
    *left = 0;
    while ((n = t->ops->recv(t, tmp, sizeof tmp)) > 0)
      *left += (size_t)n;
  }
  transport_destroy(t);
  if (r < 0)
    printf("#   nbd_negotiate: %d %s\n", r, err);
  return r;
}

static bool one_line(void) { return err[0] && !strchr(err, '\n'); }

static void test_go(void)
{
  struct bytes b = { 0 };
  struct nbd_session s;
  size_t left;

  /* The full modern sequence. */
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
  sr_meta(&b, 5);
  info_bs(&b, NBD_OPT_GO, 512, 4096, 1 << 20);
  info_str(&b, NBD_OPT_GO, NBD_INFO_NAME, "disk");
  info_export(&b, NBD_OPT_GO, 1 << 30, NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_DF);
  info_str(&b, NBD_OPT_GO, NBD_INFO_DESCRIPTION, "a disk");
  info_str(&b, NBD_OPT_GO, 9, "unknown info type");
  ack(&b, NBD_OPT_GO);
  b_put(&b, "TRANSMISSION", 12);
  int r = nego(&b, &OPTS_FULL, &s, &left);
  CHECK_EQ(r, 0, "GO: negotiation succeeds");
  CHECK(s.fixed_newstyle && !s.oldstyle && s.used_go && s.structured, "GO: fixed newstyle, GO, structured");
  CHECK(s.have_base_alloc && s.base_alloc_id == 5, "GO: base:allocation id 5");
  CHECK(s.info.size == 1 << 30 && s.info.tflags == (NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_DF),
        "GO: size and flags");
  CHECK(s.info.min_block == 512 && s.info.pref_block == 4096 && s.info.max_block == 1 << 20, "GO: block sizes");
  CHECK_STR(s.info.name, "disk", "GO: canonical name");
  CHECK_STR(s.info.description, "a disk", "GO: description");
  CHECK_EQ(left, 12, "GO: nothing read past the ACK");
  nbd_session_free(&s);

  /* No structured replies asked for: GO only; defaults for block sizes. */
  b_reset(&b);
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
  info_export(&b, NBD_OPT_GO, 4096, NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_DF);
  ack(&b, NBD_OPT_GO);
  r = nego(&b, &OPTS_PLAIN, &s, &left);
  CHECK(r == 0 && !s.structured && !s.have_base_alloc && s.used_go, "plain GO succeeds");
  CHECK(s.info.min_block == 1 && s.info.pref_block == 4096 && s.info.max_block == 32 << 20,
        "defaults when no INFO_BLOCK_SIZE (1/4096/32M)");
  CHECK(!(s.info.tflags & NBD_FLAG_SEND_DF), "DF dropped without structured replies");
  CHECK_EQ(left, 0, "plain GO consumed everything");
  nbd_session_free(&s);

  /* Structured replies refused: no meta context, GO still works. */
  b_reset(&b);
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
  errrep(&b, NBD_OPT_STRUCTURED_REPLY, NBD_REP_ERR_UNSUP, "no");
  info_export(&b, NBD_OPT_GO, 4096, NBD_FLAG_HAS_FLAGS);
  ack(&b, NBD_OPT_GO);
  r = nego(&b, &OPTS_FULL, &s, &left);
  CHECK(r == 0 && !s.structured && !s.have_base_alloc, "STRUCTURED_REPLY UNSUP: simple replies");
  CHECK_EQ(left, 0, "no SET_META_CONTEXT reply expected without structured replies");
  nbd_session_free(&s);

  /* Meta context refused or empty: no block status. */
  b_reset(&b);
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
  ack(&b, NBD_OPT_STRUCTURED_REPLY);
  ack(&b, NBD_OPT_SET_META_CONTEXT);
  info_export(&b, NBD_OPT_GO, 4096, NBD_FLAG_HAS_FLAGS);
  ack(&b, NBD_OPT_GO);
  r = nego(&b, &OPTS_FULL, &s, NULL);
  CHECK(r == 0 && s.structured && !s.have_base_alloc, "SET_META_CONTEXT with zero contexts: no block status");
  nbd_session_free(&s);

  b_reset(&b);
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
  ack(&b, NBD_OPT_STRUCTURED_REPLY);
  meta(&b, 1, "base:allocation");
  errrep(&b, NBD_OPT_SET_META_CONTEXT, NBD_REP_ERR_TOO_BIG, "");
  info_export(&b, NBD_OPT_GO, 4096, NBD_FLAG_HAS_FLAGS);
  ack(&b, NBD_OPT_GO);
  r = nego(&b, &OPTS_FULL, &s, NULL);
  CHECK(r == 0 && !s.have_base_alloc, "META_CONTEXT then an error: contexts discarded");
  nbd_session_free(&s);

  b_reset(&b);
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
  ack(&b, NBD_OPT_STRUCTURED_REPLY);
  meta(&b, 3, "qemu:dirty-bitmap:x");
  meta(&b, 4, "base:allocation");
  ack(&b, NBD_OPT_SET_META_CONTEXT);
  info_export(&b, NBD_OPT_GO, 4096, NBD_FLAG_HAS_FLAGS);
  ack(&b, NBD_OPT_GO);
  r = nego(&b, &OPTS_FULL, &s, NULL);
  CHECK(r == 0 && s.have_base_alloc && s.base_alloc_id == 4, "unrequested context ignored, base:allocation kept");
  nbd_session_free(&s);

  /* Reference 9.31: a duplicate context should only disable block status. */
  b_reset(&b);
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
  ack(&b, NBD_OPT_STRUCTURED_REPLY);
  meta(&b, 1, "base:allocation");
  meta(&b, 2, "base:allocation");
  ack(&b, NBD_OPT_SET_META_CONTEXT);
  info_export(&b, NBD_OPT_GO, 4096, NBD_FLAG_HAS_FLAGS);
  ack(&b, NBD_OPT_GO);
  r = nego(&b, &OPTS_FULL, &s, NULL);
  CHECK(r == 0, "duplicate base:allocation context disables block status instead of failing the handshake"
               " (got %d: %s)", r, err);
  CHECK(r != 0 || !s.have_base_alloc, "duplicate base:allocation context: no block status");
  if (r == 0)
    nbd_session_free(&s);

  /* Default export, an INFO_EXPORT of size 0 is legal. */
  b_reset(&b);
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
  sr_meta(&b, 0);
  info_export(&b, NBD_OPT_GO, 0, NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY);
  ack(&b, NBD_OPT_GO);
  r = nego(&b, &OPTS_DEFAULT, &s, NULL);
  CHECK(r == 0 && s.info.size == 0 && (s.info.tflags & NBD_FLAG_READ_ONLY), "size 0 is legal");
  nbd_session_free(&s);

  /* Validation of what GO returned. */
  b_reset(&b);
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
  info_export(&b, NBD_OPT_GO, 10000, NBD_FLAG_SEND_TRIM);
  info_bs(&b, NBD_OPT_GO, 4096, 4096, UINT32_MAX);
  ack(&b, NBD_OPT_GO);
  r = nego(&b, &OPTS_PLAIN, &s, NULL);
  CHECK_EQ(r, 0, "odd size and no HAS_FLAGS accepted");
  CHECK_EQ(s.info.size, 8192, "size rounded down to the minimum block");
  CHECK_EQ(s.info.tflags, NBD_FLAG_HAS_FLAGS, "flags without HAS_FLAGS are not trusted");
  CHECK_EQ(s.info.max_block, 32 << 20, "maximum block capped at 32 MiB");
  nbd_session_free(&s);

  b_reset(&b);
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
  info_export(&b, NBD_OPT_GO, 4096, NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FAST_ZERO);
  ack(&b, NBD_OPT_GO);
  r = nego(&b, &OPTS_PLAIN, &s, NULL);
  CHECK(r == 0 && !(s.info.tflags & NBD_FLAG_SEND_FAST_ZERO), "FAST_ZERO without WRITE_ZEROES dropped");
  nbd_session_free(&s);

  b_reset(&b);
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
  info_export(&b, NBD_OPT_GO, UINT64_C(1) << 63, NBD_FLAG_HAS_FLAGS);
  ack(&b, NBD_OPT_GO);
  r = nego(&b, &OPTS_PLAIN, &s, NULL);
  CHECK(r == -EPROTO && one_line(), "size 2^63 -> -EPROTO");

  static const uint32_t badbs[][3] = {
    { 0, 4096, 1 << 20 }, { 3, 4096, 1 << 20 }, { 1 << 17, 1 << 17, 1 << 20 }, { 512, 256, 1 << 20 },
    { 512, 4096, 2048 }, { 1, 3000, 1 << 20 },
  };
  for (unsigned i = 0; i < sizeof badbs / sizeof badbs[0]; i++) {
    b_reset(&b);
    newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
    info_export(&b, NBD_OPT_GO, 1 << 20, NBD_FLAG_HAS_FLAGS);
    info_bs(&b, NBD_OPT_GO, badbs[i][0], badbs[i][1], badbs[i][2]);
    ack(&b, NBD_OPT_GO);
    r = nego(&b, &OPTS_PLAIN, &s, NULL);
    CHECK(r == -EPROTO && one_line(), "invalid block sizes %u/%u/%u -> -EPROTO", badbs[i][0], badbs[i][1],
          badbs[i][2]);
  }

  /* An export name over 4096 bytes cannot be sent. */
  static char longname[5001];
  memset(longname, 'x', 5000);
  struct nbd_hs_opts lo = { .export_name = longname, .structured = true, .block_status = true };
  b_reset(&b);
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
  ack(&b, NBD_OPT_STRUCTURED_REPLY);
  r = nego(&b, &lo, &s, NULL);
  CHECK(r < 0 && one_line(), "a 5000-byte export name is refused (%d)", r);
  lo.structured = false;
  b_reset(&b);
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
  r = nego(&b, &lo, &s, NULL);
  CHECK(r < 0 && one_line(), "a 5000-byte export name is refused without structured replies (%d)", r);

  /* Two INFO_EXPORTs that disagree. */
  b_reset(&b);
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
  info_export(&b, NBD_OPT_GO, 4096, NBD_FLAG_HAS_FLAGS);
  info_export(&b, NBD_OPT_GO, 8192, NBD_FLAG_HAS_FLAGS);
  ack(&b, NBD_OPT_GO);
  r = nego(&b, &OPTS_PLAIN, &s, NULL);
  CHECK(r < 0 && one_line(), "conflicting INFO_EXPORTs fail (%d)", r);

  b_reset(&b);
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
  info_export(&b, NBD_OPT_GO, 4096, NBD_FLAG_HAS_FLAGS);
  info_export(&b, NBD_OPT_GO, 4096, NBD_FLAG_HAS_FLAGS);
  ack(&b, NBD_OPT_GO);
  r = nego(&b, &OPTS_PLAIN, &s, NULL);
  CHECK_EQ(r, 0, "identical repeated INFO_EXPORT accepted");
  nbd_session_free(&s);

  b_free(&b);
}

static void test_fallbacks(void)
{
  struct bytes b = { 0 };
  struct nbd_session s;
  size_t left;

  /* GO UNSUP -> EXPORT_NAME with NO_ZEROES: 10 bytes. */
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
  errrep(&b, NBD_OPT_GO, NBD_REP_ERR_UNSUP, "");
  b_u64(&b, 1 << 20);
  b_u16(&b, NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY);
  b_put(&b, "XY", 2);
  int r = nego(&b, &OPTS_PLAIN, &s, &left);
  CHECK(r == 0 && !s.used_go && s.fixed_newstyle, "GO UNSUP falls back to EXPORT_NAME");
  CHECK(s.info.size == 1 << 20 && s.info.tflags == (NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY),
        "EXPORT_NAME (NO_ZEROES): size and flags");
  CHECK_EQ(left, 2, "EXPORT_NAME with NO_ZEROES reads exactly 10 bytes");
  nbd_session_free(&s);

  /* Without NO_ZEROES: 134 bytes. */
  b_reset(&b);
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
  errrep(&b, NBD_OPT_GO, NBD_REP_ERR_UNSUP, "old server");
  b_u64(&b, 1 << 20);
  b_u16(&b, NBD_FLAG_HAS_FLAGS);
  b_zero(&b, 124);
  b_put(&b, "XY", 2);
  r = nego(&b, &OPTS_PLAIN, &s, &left);
  CHECK(r == 0 && !s.used_go && s.info.size == 1 << 20, "GO UNSUP -> EXPORT_NAME without NO_ZEROES");
  CHECK_EQ(left, 2, "EXPORT_NAME without NO_ZEROES reads exactly 134 bytes");
  nbd_session_free(&s);

  /* GO UNSUP after structured replies and a context were agreed. */
  b_reset(&b);
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
  sr_meta(&b, 9);
  errrep(&b, NBD_OPT_GO, NBD_REP_ERR_UNSUP, "");
  b_u64(&b, 4096);
  b_u16(&b, NBD_FLAG_HAS_FLAGS);
  r = nego(&b, &OPTS_FULL, &s, &left);
  CHECK(r == 0 && !s.used_go && s.structured && s.have_base_alloc && s.base_alloc_id == 9,
        "EXPORT_NAME fallback keeps structured replies and the context");
  nbd_session_free(&s);

  /* EXPORT_NAME refused: the server hangs up. */
  b_reset(&b);
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
  errrep(&b, NBD_OPT_GO, NBD_REP_ERR_UNSUP, "");
  r = nego(&b, &OPTS_PLAIN, &s, NULL);
  CHECK(r == -ENOENT && one_line(), "EXPORT_NAME answered by a hang-up -> -ENOENT");

  /* Plain (non-fixed) newstyle: EXPORT_NAME directly. */
  b_reset(&b);
  newstyle(&b, 0);
  b_u64(&b, 8192);
  b_u16(&b, NBD_FLAG_HAS_FLAGS);
  b_zero(&b, 124);
  r = nego(&b, &OPTS_FULL, &s, &left);
  CHECK(r == 0 && !s.fixed_newstyle && !s.used_go && !s.structured && s.info.size == 8192 && left == 0,
        "non-fixed newstyle uses EXPORT_NAME");
  nbd_session_free(&s);

  b_reset(&b);
  newstyle(&b, NBD_FLAG_NO_ZEROES);
  b_u64(&b, 8192);
  b_u16(&b, NBD_FLAG_HAS_FLAGS);
  r = nego(&b, &OPTS_PLAIN, &s, &left);
  CHECK(r == 0 && s.info.size == 8192 && left == 0, "non-fixed newstyle with NO_ZEROES: 10 bytes");
  nbd_session_free(&s);

  /* Unknown handshake flag bits are ignored. */
  b_reset(&b);
  newstyle(&b, 0xfffc | NBD_FLAG_FIXED_NEWSTYLE);
  info_export(&b, NBD_OPT_GO, 4096, NBD_FLAG_HAS_FLAGS);
  ack(&b, NBD_OPT_GO);
  r = nego(&b, &OPTS_PLAIN, &s, NULL);
  CHECK_EQ(r, 0, "unknown handshake flag bits ignored");
  nbd_session_free(&s);

  /* Oldstyle. */
  b_reset(&b);
  oldstyle(&b, 1 << 20, NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH);
  b_put(&b, "XYZ", 3);
  struct nbd_hs_opts def = { .export_name = "", .structured = true, .block_status = true };
  r = nego(&b, &def, &s, &left);
  CHECK(r == 0 && s.oldstyle && !s.structured && s.info.size == 1 << 20 &&
            s.info.tflags == (NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH),
        "oldstyle greeting");
  CHECK_EQ(left, 3, "oldstyle reads exactly 152 bytes");
  nbd_session_free(&s);

  b_reset(&b);
  oldstyle(&b, 1 << 20, NBD_FLAG_HAS_FLAGS);
  r = nego(&b, &OPTS_PLAIN, &s, NULL);
  CHECK(r == -ENOTSUP && one_line(), "oldstyle with a named export -> -ENOTSUP");

  b_free(&b);
}

struct viol {
  const char *what;
  void (*build)(struct bytes *b);
  bool full; /* negotiate with structured replies and block status */
};
#define V(name, body) static void name(struct bytes *b) { body; }
V(bad_magic, { b_put(b, "HTTP/1.1 400 Bad Request\r\n", 26); })
V(bad_style, { b_u64(b, NBD_INIT_MAGIC); b_u64(b, 0x1122334455667788); b_u16(b, 1); })
V(bad_rep_magic, {
  newstyle(b, 1);
  b_u64(b, NBD_IHAVEOPT); b_u32(b, NBD_OPT_GO); b_u32(b, NBD_REP_ACK); b_u32(b, 0);
})
V(wrong_opt, { newstyle(b, 1); info_export(b, NBD_OPT_INFO, 4096, 1); ack(b, NBD_OPT_GO); })
V(ack_no_export, { newstyle(b, 1); info_bs(b, NBD_OPT_GO, 1, 4096, 1 << 20); ack(b, NBD_OPT_GO); })
V(ack_len, { newstyle(b, 1); info_export(b, NBD_OPT_GO, 4096, 1); rep(b, NBD_OPT_GO, NBD_REP_ACK, "x", 1); })
V(unknown_type, { newstyle(b, 1); rep(b, NBD_OPT_GO, 5, NULL, 0); })
V(unknown_type2, { newstyle(b, 1); rep(b, NBD_OPT_GO, 0x7fffffff, NULL, 0); })
V(server_to_go, { newstyle(b, 1); rep(b, NBD_OPT_GO, NBD_REP_SERVER, "\0\0\0\1a", 5); })
V(meta_to_sr, { newstyle(b, 1); rep(b, NBD_OPT_STRUCTURED_REPLY, NBD_REP_META_CONTEXT, "\0\0\0\1a:b", 7); })
V(info_short, { newstyle(b, 1); rep(b, NBD_OPT_GO, NBD_REP_INFO, "\0", 1); })
V(export_11, { newstyle(b, 1); rep(b, NBD_OPT_GO, NBD_REP_INFO, "\0\0\0\0\0\0\0\0\0\0\0", 11); })
V(bs_13, { newstyle(b, 1); rep(b, NBD_OPT_GO, NBD_REP_INFO, "\0\3\0\0\0\0\0\0\0\0\0\0\0", 13); })
V(huge_info, {
  newstyle(b, 1);
  b_u64(b, NBD_OPT_REPLY_MAGIC); b_u32(b, NBD_OPT_GO); b_u32(b, NBD_REP_INFO); b_u32(b, 0xffffffff);
})
V(huge_err, {
  newstyle(b, 1);
  b_u64(b, NBD_OPT_REPLY_MAGIC); b_u32(b, NBD_OPT_GO); b_u32(b, NBD_REP_ERR_UNKNOWN); b_u32(b, 0x7fffffff);
})
V(big_err, {
  newstyle(b, 1);
  b_u64(b, NBD_OPT_REPLY_MAGIC); b_u32(b, NBD_OPT_GO); b_u32(b, NBD_REP_ERR_UNKNOWN); b_u32(b, 4097);
})
V(big_sr, {
  newstyle(b, 1);
  b_u64(b, NBD_OPT_REPLY_MAGIC); b_u32(b, NBD_OPT_STRUCTURED_REPLY); b_u32(b, NBD_REP_ACK); b_u32(b, 0x10000000);
})
V(sr_info, { newstyle(b, 1); info_export(b, NBD_OPT_STRUCTURED_REPLY, 1, 1); })
V(meta_bad, {
  newstyle(b, 1); ack(b, NBD_OPT_STRUCTURED_REPLY);
  rep(b, NBD_OPT_SET_META_CONTEXT, NBD_REP_META_CONTEXT, "\0\0\0\1", 4);
})
V(meta_endless, {
  newstyle(b, 1); ack(b, NBD_OPT_STRUCTURED_REPLY);
  for (int i = 0; i < 1000; i++) meta(b, (uint32_t)i, "x:y");
  ack(b, NBD_OPT_SET_META_CONTEXT);
})
V(info_endless, {
  newstyle(b, 1);
  for (int i = 0; i < 1000; i++) info_str(b, NBD_OPT_GO, 9, "x");
  info_export(b, NBD_OPT_GO, 4096, 1); ack(b, NBD_OPT_GO);
})
#undef V

static void test_errors(void)
{
  struct bytes b = { 0 };
  struct nbd_session s;
  int r;

  /* Option errors on GO. */
  static const struct { uint32_t type; int want; } errs[] = {
    { NBD_REP_ERR_UNKNOWN, -ENOENT }, { NBD_REP_ERR_POLICY, -EACCES }, { NBD_REP_ERR_TLS_REQD, -EACCES },
    { NBD_REP_ERR_SHUTDOWN, -ESHUTDOWN }, { NBD_REP_ERR_PLATFORM, -ENOTSUP },
  };
  for (unsigned i = 0; i < sizeof errs / sizeof errs[0]; i++) {
    b_reset(&b);
    newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
    sr_meta(&b, 1);
    info_export(&b, NBD_OPT_GO, 4096, NBD_FLAG_HAS_FLAGS); /* discarded by the error */
    errrep(&b, NBD_OPT_GO, errs[i].type, "go away \x1b[2J");
    ack(&b, NBD_OPT_ABORT);
    r = nego(&b, &OPTS_FULL, &s, NULL);
    CHECK(r == errs[i].want && one_line(), "GO error 0x%x -> %d", errs[i].type, errs[i].want);
    CHECK(!strchr(err, '\x1b'), "no raw escape from the server in the reason (%s)", err);
    if (errs[i].type != NBD_REP_ERR_TLS_REQD)
      CHECK(strstr(err, "go away") != NULL, "server message shown (%s)", err);
  }
  b_reset(&b);
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
  errrep(&b, NBD_OPT_GO, NBD_REP_ERR_UNKNOWN, "");
  r = nego(&b, &OPTS_PLAIN, &s, NULL);
  CHECK(r == -ENOENT && strstr(err, "disk"), "unknown export -> -ENOENT naming it, EOF after ABORT is fine");
  b_reset(&b);
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
  errrep(&b, NBD_OPT_GO, 0x80000063, "new error");
  r = nego(&b, &OPTS_PLAIN, &s, NULL);
  CHECK(r < 0 && r != -EPROTO && one_line(), "unknown error reply type is a plain failure (%d)", r);

  /* Violations. */
  static const struct viol viols[] = {
    { "HTTP banner instead of NBDMAGIC", bad_magic, false },
    { "unknown protocol style magic", bad_style, false },
    { "bad option reply magic", bad_rep_magic, false },
    { "reply for another option", wrong_opt, false },
    { "ACK without INFO_EXPORT", ack_no_export, false },
    { "ACK with a payload", ack_len, false },
    { "unknown reply type 5", unknown_type, false },
    { "unknown reply type 0x7fffffff", unknown_type2, false },
    { "SERVER reply to GO", server_to_go, false },
    { "META_CONTEXT reply to STRUCTURED_REPLY", meta_to_sr, true },
    { "INFO shorter than 2 bytes", info_short, false },
    { "INFO_EXPORT of 11 bytes", export_11, false },
    { "INFO_BLOCK_SIZE of 13 bytes", bs_13, false },
    { "INFO reply of 0xffffffff bytes (not allocated)", huge_info, false },
    { "error reply of 0x7fffffff bytes (not allocated)", huge_err, false },
    { "error reply of 4097 bytes", big_err, false },
    { "ACK of 256 MiB to STRUCTURED_REPLY", big_sr, true },
    { "INFO reply to STRUCTURED_REPLY", sr_info, true },
    { "META_CONTEXT without a name", meta_bad, true },
    { "endless META_CONTEXT replies", meta_endless, true },
    { "endless INFO replies", info_endless, false },
  };
  for (unsigned i = 0; i < sizeof viols / sizeof viols[0]; i++) {
    b_reset(&b);
    viols[i].build(&b);
    r = nego(&b, viols[i].full ? &OPTS_FULL : &OPTS_PLAIN, &s, NULL);
    CHECK(r == -EPROTO && one_line(), "%s -> -EPROTO (got %d)", viols[i].what, r);
  }

  b_free(&b);
}

/* Every truncation of a valid stream fails cleanly (no hang, no success). */
static void test_truncation(void)
{
  struct bytes full = { 0 }, b = { 0 };
  struct nbd_session s;

  newstyle(&full, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
  sr_meta(&full, 5);
  info_bs(&full, NBD_OPT_GO, 512, 4096, 1 << 20);
  info_str(&full, NBD_OPT_GO, NBD_INFO_NAME, "disk");
  info_export(&full, NBD_OPT_GO, 1 << 30, NBD_FLAG_HAS_FLAGS);
  ack(&full, NBD_OPT_GO);
  bool all = true;
  int bad_at = -1, bad_r = 0;
  for (size_t n = 0; n < full.len; n++) {
    b_reset(&b);
    b_put(&b, full.p, n);
    struct transport *t = transport_from_memory(b.p ? b.p : (const uint8_t *)"", n);
    int r = nbd_negotiate(t, &OPTS_FULL, &s, err, sizeof err);
    transport_destroy(t);
    if (r != -ECONNRESET || !one_line()) {
      all = false;
      if (bad_at < 0) {
        bad_at = (int)n;
        bad_r = r;
      }
      if (r == 0)
        nbd_session_free(&s);
    }
  }
  CHECK(all, "each of %zu truncations fails with -ECONNRESET (first bad: %d -> %d)", full.len, bad_at, bad_r);

  b_reset(&full);
  oldstyle(&full, 4096, 1);
  all = true;
  for (size_t n = 0; n < full.len; n++) {
    struct transport *t = transport_from_memory(full.p, n);
    struct nbd_hs_opts o = { .export_name = "" };
    int r = nbd_negotiate(t, &o, &s, err, sizeof err);
    transport_destroy(t);
    all &= r == -ECONNRESET;
  }
  CHECK(all, "each truncation of the oldstyle greeting fails with -ECONNRESET");

  b_reset(&full);
  newstyle(&full, 1);
  errrep(&full, NBD_OPT_GO, NBD_REP_ERR_UNSUP, "");
  b_u64(&full, 4096);
  b_u16(&full, 1);
  b_zero(&full, 124);
  all = true;
  for (size_t n = 0; n < full.len; n++) {
    struct transport *t = transport_from_memory(full.p, n);
    int r = nbd_negotiate(t, &OPTS_PLAIN, &s, err, sizeof err);
    transport_destroy(t);
    all &= r < 0;
  }
  CHECK(all, "each truncation of an EXPORT_NAME fallback fails");

  b_free(&full);
  b_free(&b);
}

static int list(const struct bytes *b, bool want_infos, struct nbd_listed_export **e,
                struct nbd_export_info **infos)
{
  struct transport *t = transport_from_memory(b->p ? b->p : (const uint8_t *)"", b->len);
  struct nbd_hs_opts o = { .export_name = "" };
  err[0] = '\0';
  int r = nbd_list_exports(t, &o, e, want_infos ? infos : NULL, err, sizeof err);
  transport_destroy(t);
  if (r < 0)
    printf("#   nbd_list_exports: %d %s\n", r, err);
  return r;
}

static void test_list(void)
{
  struct bytes b = { 0 };
  struct nbd_listed_export *e = NULL;
  struct nbd_export_info *in = NULL;

  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
  server(&b, "a", 1, "first export");
  server(&b, "", 0, "");
  server(&b, "b/c", 3, "");
  ack(&b, NBD_OPT_LIST);
  ack(&b, NBD_OPT_ABORT);
  int r = list(&b, false, &e, &in);
  CHECK_EQ(r, 3, "LIST: three exports");
  if (r == 3) {
    CHECK_STR(e[0].name, "a", "LIST: first name");
    CHECK_STR(e[0].description, "first export", "LIST: first description");
    CHECK_STR(e[1].name, "", "LIST: default export listed");
    CHECK_STR(e[2].name, "b/c", "LIST: name with a slash");
    CHECK_STR(e[2].description, "", "LIST: empty description");
  }
  nbd_listed_exports_free(e, NULL, r > 0 ? r : 0);

  /* With INFO for each. */
  b_reset(&b);
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
  server(&b, "a", 1, "");
  server(&b, "b", 1, "");
  server(&b, "c", 1, "");
  ack(&b, NBD_OPT_LIST);
  info_export(&b, NBD_OPT_INFO, 4096, NBD_FLAG_HAS_FLAGS);
  info_str(&b, NBD_OPT_INFO, NBD_INFO_DESCRIPTION, "A");
  ack(&b, NBD_OPT_INFO);
  errrep(&b, NBD_OPT_INFO, NBD_REP_ERR_TLS_REQD, "");
  info_export(&b, NBD_OPT_INFO, 8192, NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY);
  ack(&b, NBD_OPT_INFO);
  r = list(&b, true, &e, &in);
  CHECK_EQ(r, 3, "LIST + INFO: three exports");
  if (r == 3 && in) {
    CHECK(in[0].have_export && in[0].size == 4096, "INFO for a");
    CHECK_STR(in[0].description, "A", "INFO description for a");
    CHECK(!in[1].have_export, "INFO error for b leaves it without information");
    CHECK(in[2].have_export && in[2].size == 8192 && (in[2].tflags & NBD_FLAG_READ_ONLY), "INFO for c");
  }
  nbd_listed_exports_free(e, in, r > 0 ? r : 0);

  /* INFO unsupported: the rest stay without information. */
  b_reset(&b);
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
  server(&b, "a", 1, "");
  server(&b, "b", 1, "");
  ack(&b, NBD_OPT_LIST);
  errrep(&b, NBD_OPT_INFO, NBD_REP_ERR_UNSUP, "");
  r = list(&b, true, &e, &in);
  CHECK(r == 2 && in && !in[0].have_export && !in[1].have_export, "INFO UNSUP: names only");
  nbd_listed_exports_free(e, in, r > 0 ? r : 0);

  /* A name with a NUL is dropped. */
  b_reset(&b);
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
  server(&b, "a\0b", 3, "");
  server(&b, "ok", 2, "");
  ack(&b, NBD_OPT_LIST);
  r = list(&b, false, &e, &in);
  CHECK(r == 1 && !strcmp(e[0].name, "ok"), "LIST: a name containing NUL is dropped");
  nbd_listed_exports_free(e, NULL, r > 0 ? r : 0);

  /* Empty list. */
  b_reset(&b);
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
  ack(&b, NBD_OPT_LIST);
  r = list(&b, true, &e, &in);
  CHECK_EQ(r, 0, "LIST: empty list");
  nbd_listed_exports_free(e, in, 0);

  /* Refused. */
  b_reset(&b);
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
  server(&b, "a", 1, "");
  errrep(&b, NBD_OPT_LIST, NBD_REP_ERR_POLICY, "listing disabled");
  r = list(&b, false, &e, &in);
  CHECK(r == -EACCES && one_line() && strstr(err, "listing disabled") && e == NULL,
        "LIST refused by policy -> -EACCES, partial list discarded");

  /* Violations. */
  b_reset(&b);
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
  rep(&b, NBD_OPT_LIST, NBD_REP_SERVER, "\0\0", 2);
  r = list(&b, false, &e, &in);
  CHECK(r == -EPROTO && one_line(), "SERVER shorter than 4 bytes -> -EPROTO");
  b_reset(&b);
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
  rep(&b, NBD_OPT_LIST, NBD_REP_SERVER, "\0\0\0\5ab", 6);
  r = list(&b, false, &e, &in);
  CHECK(r == -EPROTO && one_line(), "SERVER name length > len-4 -> -EPROTO");
  b_reset(&b);
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
  server(&b, "a", 1, "");
  info_export(&b, NBD_OPT_LIST, 1, 1);
  r = list(&b, false, &e, &in);
  CHECK(r == -EPROTO && one_line(), "INFO reply to LIST -> -EPROTO");
  b_reset(&b);
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
  for (int i = 0; i < 65537; i++)
    server(&b, "x", 1, "");
  ack(&b, NBD_OPT_LIST);
  r = list(&b, false, &e, &in);
  CHECK(r == -EPROTO && one_line(), "endless SERVER replies -> -EPROTO");
  b_reset(&b);
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
  server(&b, "a", 1, "");
  r = list(&b, false, &e, &in);
  CHECK(r == -ECONNRESET && one_line(), "EOF during LIST -> -ECONNRESET");
  b_reset(&b);
  oldstyle(&b, 4096, 1);
  r = list(&b, false, &e, &in);
  CHECK(r == -ENOTSUP && one_line(), "LIST on an oldstyle server -> -ENOTSUP");
  b_reset(&b);
  newstyle(&b, 0);
  r = list(&b, false, &e, &in);
  CHECK(r == -ENOTSUP && one_line(), "LIST on a non-fixed newstyle server -> -ENOTSUP");
  b_reset(&b);
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
  server(&b, "a", 1, "");
  ack(&b, NBD_OPT_LIST);
  info_export(&b, NBD_OPT_INFO, 4096, NBD_FLAG_HAS_FLAGS);
  rep(&b, NBD_OPT_INFO, NBD_REP_ACK, "zz", 2);
  r = list(&b, true, &e, &in);
  CHECK(r == -EPROTO && one_line() && e == NULL && in == NULL, "violation during INFO -> -EPROTO, nothing returned");

  b_free(&b);
}

/* PSK credentials from a temporary key file (no TLS server is involved:
 * the memory transport has no socket, so a TLS handshake fails at once). */
static struct tls_creds *psk_creds(void)
{
  char path[] = "/tmp/nbdfs-test-psk.XXXXXX";
  int fd = mkstemp(path);
  if (fd < 0)
    return NULL;
  static const char key[] = "alice:0123456789abcdef0123456789abcdef\n";
  if (write(fd, key, sizeof key - 1) != (ssize_t)(sizeof key - 1)) {
    close(fd);
    unlink(path);
    return NULL;
  }
  close(fd);
  struct nbd_uri u;
  char uri[128];
  snprintf(uri, sizeof uri, "nbds+unix://alice@/?socket=/nonexistent&tls-psk-file=%s", path);
  struct tls_creds *c = NULL;
  if (nbd_uri_parse(uri, &u, err, sizeof err) == 0) {
    struct tls_options cl = { 0 }, out;
    if (tls_setup(&u, &cl, &out, &c, err, sizeof err) < 0)
      printf("#   tls_setup: %s\n", err);
  }
  nbd_uri_free(&u);
  unlink(path);
  return c;
}

static void test_tls(void)
{
  struct bytes b = { 0 };
  struct nbd_session s;
  struct tls_creds *creds = psk_creds();
  CHECK(creds != NULL, "PSK credentials for the TLS tests");
  struct nbd_hs_opts req = { .export_name = "disk", .tls_mode = TLS_REQUIRE, .tls = creds };
  struct nbd_hs_opts on = { .export_name = "disk", .tls_mode = TLS_ON, .tls = creds };
  int r;

  /* TLS required: no downgrade. */
  newstyle(&b, 0);
  b_u64(&b, 4096);
  b_u16(&b, NBD_FLAG_HAS_FLAGS);
  b_zero(&b, 124);
  r = nego(&b, &req, &s, NULL);
  CHECK(r == -ENOTSUP && one_line(), "TLS required, server not fixed newstyle -> -ENOTSUP (%d)", r);

  b_reset(&b);
  oldstyle(&b, 4096, 1);
  struct nbd_hs_opts req_def = req;
  req_def.export_name = "";
  r = nego(&b, &req_def, &s, NULL);
  CHECK(r == -ENOTSUP && one_line(), "TLS required, oldstyle server -> -ENOTSUP (%d)", r);

  static const uint32_t refusals[] = { NBD_REP_ERR_POLICY, NBD_REP_ERR_UNSUP, NBD_REP_ERR_INVALID,
                                       NBD_REP_ERR_PLATFORM };
  for (unsigned i = 0; i < sizeof refusals / sizeof refusals[0]; i++) {
    b_reset(&b);
    newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
    errrep(&b, NBD_OPT_STARTTLS, refusals[i], "no tls \x1b[0m");
    ack(&b, NBD_OPT_ABORT);
    r = nego(&b, &req, &s, NULL);
    CHECK(r == -EACCES && one_line() && !strchr(err, '\x1b'),
          "TLS required, STARTTLS answered 0x%x -> -EACCES (%d)", refusals[i], r);
    /* Regression: send_abort() borrowed h->err for a 64-byte scratch buffer
     * and restored the pointer but not h->errlen, cutting this reason. */
    CHECK(strstr(err, "without TLS") != NULL, "the whole reason survives the ABORT (got %zu bytes: '%s')",
          strlen(err), err);
  }

  /* TLS if offered: a refusal means plaintext. */
  b_reset(&b);
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
  errrep(&b, NBD_OPT_STARTTLS, NBD_REP_ERR_UNSUP, "");
  info_export(&b, NBD_OPT_GO, 4096, NBD_FLAG_HAS_FLAGS);
  ack(&b, NBD_OPT_GO);
  r = nego(&b, &on, &s, NULL);
  CHECK(r == 0 && !s.tls, "TLS if offered, STARTTLS refused: plaintext");
  if (r == 0)
    nbd_session_free(&s);
  b_reset(&b);
  newstyle(&b, 0);
  b_u64(&b, 4096);
  b_u16(&b, NBD_FLAG_HAS_FLAGS);
  b_zero(&b, 124);
  r = nego(&b, &on, &s, NULL);
  CHECK(r == 0 && !s.tls, "TLS if offered, non-fixed server: plaintext");
  if (r == 0)
    nbd_session_free(&s);

  /* Violations in the STARTTLS exchange. */
  b_reset(&b);
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
  rep(&b, NBD_OPT_STARTTLS, NBD_REP_SERVER, "\0\0\0\1a", 5);
  r = nego(&b, &req, &s, NULL);
  CHECK(r == -EPROTO && one_line(), "SERVER reply to STARTTLS -> -EPROTO (%d)", r);
  b_reset(&b);
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
  rep(&b, NBD_OPT_STARTTLS, NBD_REP_ACK, "x", 1);
  r = nego(&b, &req, &s, NULL);
  CHECK(r == -EPROTO && one_line(), "STARTTLS ACK with a payload -> -EPROTO (%d)", r);
  b_reset(&b);
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
  info_export(&b, NBD_OPT_GO, 4096, NBD_FLAG_HAS_FLAGS);
  r = nego(&b, &req, &s, NULL);
  CHECK(r == -EPROTO && one_line(), "a reply to another option instead of STARTTLS's -> -EPROTO (%d)", r);

  /* ACK, then plaintext junk where the TLS handshake should be: the TLS
   * handshake fails (here at once: no socket), cleanly. */
  if (creds) {
    b_reset(&b);
    newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
    ack(&b, NBD_OPT_STARTTLS);
    info_export(&b, NBD_OPT_GO, 4096, NBD_FLAG_HAS_FLAGS);
    ack(&b, NBD_OPT_GO);
    r = nego(&b, &req, &s, NULL);
    CHECK(r < 0 && one_line(), "STARTTLS ACK followed by plaintext: the handshake fails (%d: %s)", r, err);
    if (r == 0)
      nbd_session_free(&s);
  }

  /* LIST under required TLS. */
  b_reset(&b);
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
  errrep(&b, NBD_OPT_STARTTLS, NBD_REP_ERR_POLICY, "");
  struct transport *t = transport_from_memory(b.p, b.len);
  struct nbd_listed_export *e = NULL;
  r = nbd_list_exports(t, &req, &e, NULL, err, sizeof err);
  transport_destroy(t);
  CHECK(r == -EACCES && one_line() && e == NULL, "LIST with TLS required and refused -> -EACCES (%d)", r);

  tls_creds_free(creds);
  b_free(&b);
}


/* Extended headers: preferred when asked for and offered, refused means
 * structured replies, and a server that demands them gets them. */
static const struct nbd_hs_opts OPTS_EXT = { .export_name = "disk", .structured = true, .extended = true,
                                             .block_status = true };

static void go_ok(struct bytes *b)
{
  info_bs(b, NBD_OPT_GO, 512, 4096, 32 << 20);
  info_str(b, NBD_OPT_GO, NBD_INFO_NAME, "canonical/disk");
  info_export(b, NBD_OPT_GO, UINT64_C(8) << 30, NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_WRITE_ZEROES);
  ack(b, NBD_OPT_GO);
}

static void test_extended(void)
{
  struct bytes b = { 0 };
  struct nbd_session s;
  size_t left;

  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
  ack(&b, NBD_OPT_EXTENDED_HEADERS);
  meta(&b, 9, "base:allocation");
  ack(&b, NBD_OPT_SET_META_CONTEXT);
  go_ok(&b);
  int r = nego(&b, &OPTS_EXT, &s, &left);
  CHECK(r == 0 && s.extended && s.structured && s.used_go, "EXTENDED_HEADERS ACK: extended (and structured)");
  CHECK(s.have_base_alloc && s.base_alloc_id == 9, "extended: base:allocation selected");
  CHECK_STR(s.info.name, "canonical/disk", "extended: canonical name from NBD_INFO_NAME kept");
  CHECK_EQ(left, 0, "extended: no STRUCTURED_REPLY sent after the ACK");
  nbd_session_free(&s);

  /* Not asked for: the old sequence, even against a server that has them. */
  b_reset(&b);
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
  sr_meta(&b, 1);
  go_ok(&b);
  r = nego(&b, &OPTS_FULL, &s, &left);
  CHECK(r == 0 && !s.extended && s.structured && left == 0, "extended not asked for: structured replies");
  nbd_session_free(&s);

  /* Refused: structured replies instead. */
  b_reset(&b);
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
  errrep(&b, NBD_OPT_EXTENDED_HEADERS, NBD_REP_ERR_UNSUP, "what?");
  sr_meta(&b, 1);
  go_ok(&b);
  r = nego(&b, &OPTS_EXT, &s, &left);
  CHECK(r == 0 && !s.extended && s.structured && s.have_base_alloc && left == 0,
        "EXTENDED_HEADERS UNSUP: falls back to STRUCTURED_REPLY");
  nbd_session_free(&s);

  /* Both refused: simple replies. */
  b_reset(&b);
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
  errrep(&b, NBD_OPT_EXTENDED_HEADERS, NBD_REP_ERR_UNSUP, "");
  errrep(&b, NBD_OPT_STRUCTURED_REPLY, NBD_REP_ERR_UNSUP, "");
  go_ok(&b);
  r = nego(&b, &OPTS_EXT, &s, &left);
  CHECK(r == 0 && !s.extended && !s.structured && left == 0, "both refused: simple replies");
  nbd_session_free(&s);

  /* A reply that is neither ACK nor an error. */
  b_reset(&b);
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
  meta(&b, 1, "base:allocation");
  r = nego(&b, &OPTS_EXT, &s, NULL);
  CHECK_EQ(r, -EPROTO, "META_CONTEXT reply to EXTENDED_HEADERS is a violation");

  /* EXT_HEADER_REQD on GO: negotiate them, then meta context and GO again. */
  b_reset(&b);
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
  errrep(&b, NBD_OPT_EXTENDED_HEADERS, NBD_REP_ERR_UNSUP, "not yet");
  sr_meta(&b, 1);
  errrep(&b, NBD_OPT_GO, NBD_REP_ERR_EXT_HEADER_REQD, "extended headers required");
  ack(&b, NBD_OPT_EXTENDED_HEADERS);
  meta(&b, 2, "base:allocation");
  ack(&b, NBD_OPT_SET_META_CONTEXT);
  go_ok(&b);
  r = nego(&b, &OPTS_EXT, &s, &left);
  CHECK(r == 0 && s.extended && s.have_base_alloc && s.base_alloc_id == 2 && left == 0,
        "EXT_HEADER_REQD on GO: extended headers, context selected again, GO again");
  nbd_session_free(&s);

  /* EXT_HEADER_REQD on SET_META_CONTEXT. */
  b_reset(&b);
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
  errrep(&b, NBD_OPT_EXTENDED_HEADERS, NBD_REP_ERR_UNSUP, "");
  ack(&b, NBD_OPT_STRUCTURED_REPLY);
  errrep(&b, NBD_OPT_SET_META_CONTEXT, NBD_REP_ERR_EXT_HEADER_REQD, "");
  ack(&b, NBD_OPT_EXTENDED_HEADERS);
  meta(&b, 3, "base:allocation");
  ack(&b, NBD_OPT_SET_META_CONTEXT);
  go_ok(&b);
  r = nego(&b, &OPTS_EXT, &s, &left);
  CHECK(r == 0 && s.extended && s.have_base_alloc && s.base_alloc_id == 3 && left == 0,
        "EXT_HEADER_REQD on SET_META_CONTEXT: extended headers, then the context");
  nbd_session_free(&s);

  /* Demanded but refused. */
  b_reset(&b);
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
  errrep(&b, NBD_OPT_EXTENDED_HEADERS, NBD_REP_ERR_UNSUP, "");
  sr_meta(&b, 1);
  errrep(&b, NBD_OPT_GO, NBD_REP_ERR_EXT_HEADER_REQD, "");
  errrep(&b, NBD_OPT_EXTENDED_HEADERS, NBD_REP_ERR_POLICY, "");
  r = nego(&b, &OPTS_EXT, &s, NULL);
  CHECK(r == -ENOTSUP && one_line(), "EXT_HEADER_REQD, then EXTENDED_HEADERS refused: -ENOTSUP");

  /* Demanded while in use: the server contradicts itself. */
  b_reset(&b);
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
  ack(&b, NBD_OPT_EXTENDED_HEADERS);
  meta(&b, 1, "base:allocation");
  ack(&b, NBD_OPT_SET_META_CONTEXT);
  errrep(&b, NBD_OPT_GO, NBD_REP_ERR_EXT_HEADER_REQD, "");
  r = nego(&b, &OPTS_EXT, &s, NULL);
  CHECK_EQ(r, -EPROTO, "EXT_HEADER_REQD with extended headers in use is a violation");

  /* Demanded from a client not asking for them. */
  b_reset(&b);
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
  sr_meta(&b, 1);
  errrep(&b, NBD_OPT_GO, NBD_REP_ERR_EXT_HEADER_REQD, "");
  r = nego(&b, &OPTS_FULL, &s, NULL);
  CHECK(r == -ENOTSUP && one_line(), "EXT_HEADER_REQD when not asked to use them: -ENOTSUP");

  /* GO unknown after extended headers: EXPORT_NAME is forbidden then. */
  b_reset(&b);
  newstyle(&b, NBD_FLAG_FIXED_NEWSTYLE);
  ack(&b, NBD_OPT_EXTENDED_HEADERS);
  ack(&b, NBD_OPT_SET_META_CONTEXT);
  errrep(&b, NBD_OPT_GO, NBD_REP_ERR_UNSUP, "");
  b_u64(&b, 4096);
  b_u16(&b, 1);
  r = nego(&b, &OPTS_EXT, &s, NULL);
  CHECK_EQ(r, -EPROTO, "GO UNSUP with extended headers: no EXPORT_NAME fallback");
  b_free(&b);
}

int main(void)
{
  test_go();
  test_fallbacks();
  test_errors();
  test_truncation();
  test_list();
  test_tls();
  test_extended();
  return done_testing();
}
