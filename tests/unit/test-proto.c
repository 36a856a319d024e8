/* test-proto.c: the pure wire layer (src/proto.c). */
#include <errno.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "nbd-proto.h"

static const uint8_t *hexbytes(const char *hex, uint8_t *out, size_t *n)
{
  size_t o = 0;
  for (const char *p = hex; *p;) {
    if (*p == ' ') {
      p++;
      continue;
    }
    unsigned v;
    sscanf(p, "%2x", &v);
    out[o++] = (uint8_t)v;
    p += 2;
  }
  *n = o;
  return out;
}

static bool mem_is(const uint8_t *got, size_t glen, const char *hex)
{
  uint8_t want[256];
  size_t n;
  hexbytes(hex, want, &n);
  if (n != glen || memcmp(got, want, n)) {
    printf("#   got ");
    for (size_t i = 0; i < glen; i++)
      printf("%02x", got[i]);
    printf("\n#  want %s\n", hex);
    return false;
  }
  return true;
}

static void test_endian(void)
{
  uint8_t b[8];
  nbd_put16(b, 0x1234);
  CHECK(b[0] == 0x12 && b[1] == 0x34, "put16 is big-endian");
  nbd_put32(b, 0x89abcdef);
  CHECK(mem_is(b, 4, "89abcdef"), "put32 is big-endian");
  CHECK_EQ(nbd_get32(b), 0x89abcdef, "get32 round trip");
  nbd_put64(b, UINT64_C(0x0123456789abcdef));
  CHECK(mem_is(b, 8, "0123456789abcdef"), "put64 is big-endian");
  CHECK(nbd_get64(b) == UINT64_C(0x0123456789abcdef), "get64 round trip");
  CHECK_EQ(nbd_get16(b), 0x0123, "get16");
}

static void test_encode(void)
{
  uint8_t out[NBD_REQUEST_LEN];
  struct nbd_request rq = { .flags = NBD_CMD_FLAG_FUA, .type = NBD_CMD_WRITE,
                            .cookie = UINT64_C(0x0000000200000001),
                            .offset = UINT64_C(0x0000000100000200), .count = 0x10000 };
  nbd_encode_request(out, &rq);
  CHECK(mem_is(out, sizeof out, "25609513 0001 0001 0000000200000001 0000000100000200 00010000"),
        "WRITE request header bytes");
  struct nbd_request rd = { .flags = NBD_CMD_FLAG_DF, .type = NBD_CMD_READ, .cookie = 0x100000000,
                            .offset = 4096, .count = 512 };
  nbd_encode_request(out, &rd);
  CHECK(mem_is(out, sizeof out, "25609513 0004 0000 0000000100000000 0000000000001000 00000200"),
        "READ request header bytes");
  struct nbd_request disc = { .type = NBD_CMD_DISC };
  nbd_encode_request(out, &disc);
  CHECK(mem_is(out, sizeof out, "25609513 0000 0002 0000000000000000 0000000000000000 00000000"),
        "DISC request header bytes");
  struct nbd_request bs = { .flags = NBD_CMD_FLAG_REQ_ONE, .type = NBD_CMD_BLOCK_STATUS,
                            .cookie = UINT64_MAX, .offset = UINT64_MAX - 1, .count = UINT32_MAX };
  nbd_encode_request(out, &bs);
  CHECK(mem_is(out, sizeof out, "25609513 0008 0007 ffffffffffffffff fffffffffffffffe ffffffff"),
        "BLOCK_STATUS request header bytes, extreme values");

  uint8_t oh[NBD_OPT_HDR_LEN];
  nbd_encode_opt_header(oh, NBD_OPT_GO, 0x0a0b0c0d);
  CHECK(mem_is(oh, sizeof oh, "49484156454F5054 00000007 0a0b0c0d"), "option header bytes");

  uint8_t buf[64];
  static const uint16_t infos[] = { NBD_INFO_BLOCK_SIZE, NBD_INFO_NAME };
  int n = nbd_encode_info_request(buf, sizeof buf, "ab", 2, infos, 2);
  CHECK_EQ(n, 12, "info request length");
  CHECK(n == 12 && mem_is(buf, 12, "00000002 6162 0002 0003 0001"), "info request bytes");
  n = nbd_encode_info_request(buf, sizeof buf, "", 0, NULL, 0);
  CHECK(n == 6 && mem_is(buf, 6, "00000000 0000"), "default export, no infos");
  CHECK_EQ(nbd_encode_info_request(buf, 11, "ab", 2, infos, 2), -1, "info request: buffer too small");
  CHECK_EQ(nbd_encode_info_request(buf, 12, "ab", 2, infos, 2), 12, "info request: exact buffer");
  static char longname[NBD_MAX_STRING + 2];
  memset(longname, 'n', NBD_MAX_STRING + 1);
  static uint8_t bigbuf[2 * NBD_MAX_STRING];
  CHECK_EQ(nbd_encode_info_request(bigbuf, sizeof bigbuf, longname, NBD_MAX_STRING + 1, NULL, 0), -1,
           "info request: name over 4096 bytes refused");
  CHECK_EQ(nbd_encode_info_request(bigbuf, sizeof bigbuf, longname, NBD_MAX_STRING, NULL, 0),
           NBD_MAX_STRING + 6, "info request: 4096-byte name accepted");

  static const char *const q[] = { "base:allocation", "x:y" };
  n = nbd_encode_meta_request(buf, sizeof buf, "d", 1, q, 2);
  CHECK_EQ(n, 4 + 1 + 4 + 4 + 15 + 4 + 3, "meta request length");
  CHECK(n == 35 && mem_is(buf, 35,
                          "00000001 64 00000002 0000000f 626173653a616c6c6f636174696f6e 00000003 783a79"),
        "meta request bytes");
  CHECK_EQ(nbd_encode_meta_request(buf, 34, "d", 1, q, 2), -1, "meta request: buffer too small");
  n = nbd_encode_meta_request(buf, sizeof buf, "", 0, NULL, 0);
  CHECK(n == 8 && mem_is(buf, 8, "00000000 00000000"), "meta request with no queries");
}

static void test_opt_reply(void)
{
  uint8_t in[NBD_OPT_REPLY_HDR_LEN];
  size_t n;
  hexbytes("0003e889045565a9 00000007 80000006 00000010", in, &n);
  struct nbd_opt_reply r = { 0 };
  CHECK_EQ(nbd_decode_opt_reply(in, &r), 0, "option reply header decodes");
  CHECK(r.opt == NBD_OPT_GO && r.type == NBD_REP_ERR_UNKNOWN && r.len == 16, "option reply fields");
  in[7] ^= 1;
  CHECK_EQ(nbd_decode_opt_reply(in, &r), -1, "bad option reply magic");
  hexbytes("49484156454F5054 00000007 00000001 00000000", in, &n);
  CHECK_EQ(nbd_decode_opt_reply(in, &r), -1, "IHAVEOPT is not a reply magic");

  CHECK_EQ(nbd_opt_reply_cap(NBD_REP_ACK), 0, "ACK cap 0");
  CHECK(nbd_opt_reply_cap(NBD_REP_INFO) >= 2 + NBD_MAX_STRING, "INFO cap fits NAME of 4096");
  CHECK(nbd_opt_reply_cap(NBD_REP_INFO) < 1 << 20, "INFO cap is small");
  CHECK(nbd_opt_reply_cap(NBD_REP_SERVER) >= 4 + NBD_MAX_STRING, "SERVER cap fits a 4096 name");
  CHECK(nbd_opt_reply_cap(NBD_REP_SERVER) < 1 << 20, "SERVER cap is small");
  CHECK(nbd_opt_reply_cap(NBD_REP_META_CONTEXT) >= 4 + 15, "META_CONTEXT cap");
  CHECK_EQ(nbd_opt_reply_cap(NBD_REP_ERR_UNKNOWN), NBD_MAX_STRING, "error reply cap 4096");
  CHECK_EQ(nbd_opt_reply_cap(0x80000063), NBD_MAX_STRING, "unknown error reply cap 4096");
  CHECK_EQ(nbd_opt_reply_cap(5), 0, "unknown non-error reply cap 0");
  CHECK_EQ(nbd_opt_reply_cap(0x7fffffff), 0, "unknown non-error reply 0x7fffffff cap 0");

  CHECK(strstr(nbd_opt_name(NBD_OPT_GO), "GO") != NULL, "opt name GO");
  CHECK(nbd_opt_name(99) != NULL, "opt name of unknown option");
  CHECK(strstr(nbd_rep_name(NBD_REP_ERR_UNKNOWN), "export") != NULL, "rep name UNKNOWN");
  CHECK(nbd_rep_name(0x80000063) != NULL && nbd_rep_name(77) != NULL, "rep names of unknown types");
  CHECK_STR(nbd_cmd_name(NBD_CMD_BLOCK_STATUS), "BLOCK_STATUS", "cmd name");
  CHECK_STR(nbd_cmd_name(0xffff), "UNKNOWN", "cmd name of unknown command");
}

static void test_info(void)
{
  uint8_t p[32];
  size_t n;
  struct nbd_export_info info = { 0 };

  hexbytes("0000 0000000000100000 014d", p, &n);
  CHECK_EQ(nbd_parse_info_reply(p, 12, &info), 0, "INFO_EXPORT of 12 bytes");
  CHECK(info.have_export && info.size == 0x100000 && info.tflags == 0x014d, "INFO_EXPORT fields");
  info.have_export = false;
  CHECK_EQ(nbd_parse_info_reply(p, 11, &info), -1, "INFO_EXPORT of 11 bytes rejected");
  CHECK_EQ(nbd_parse_info_reply(p, 13, &info), -1, "INFO_EXPORT of 13 bytes rejected");
  CHECK(!info.have_export, "rejected INFO_EXPORT changes nothing");

  hexbytes("0003 00000200 00001000 02000000", p, &n);
  CHECK_EQ(nbd_parse_info_reply(p, 14, &info), 0, "INFO_BLOCK_SIZE of 14 bytes");
  CHECK(info.have_block_size && info.min_block == 512 && info.pref_block == 4096 &&
            info.max_block == 32 << 20, "INFO_BLOCK_SIZE fields");
  CHECK_EQ(nbd_parse_info_reply(p, 13, &info), -1, "INFO_BLOCK_SIZE of 13 bytes rejected");
  CHECK_EQ(nbd_parse_info_reply(p, 15, &info), -1, "INFO_BLOCK_SIZE of 15 bytes rejected");

  CHECK_EQ(nbd_parse_info_reply(p, 1, &info), -1, "INFO shorter than 2 bytes rejected");
  CHECK_EQ(nbd_parse_info_reply(p, 0, &info), -1, "empty INFO rejected");

  /* NAME / DESCRIPTION */
  hexbytes("0001 6e616d65", p, &n);
  CHECK_EQ(nbd_parse_info_reply(p, 6, &info), 0, "INFO_NAME");
  CHECK_STR(info.name, "name", "canonical name stored");
  hexbytes("0001 61", p, &n);
  CHECK_EQ(nbd_parse_info_reply(p, 3, &info), 0, "second INFO_NAME");
  CHECK_STR(info.name, "a", "second INFO_NAME replaces the first");
  hexbytes("0002", p, &n);
  CHECK_EQ(nbd_parse_info_reply(p, 2, &info), 0, "empty INFO_DESCRIPTION (2 bytes)");
  CHECK_STR(info.description, "", "empty description");
  hexbytes("0002 610062", p, &n);
  CHECK_EQ(nbd_parse_info_reply(p, 5, &info), -1, "INFO_DESCRIPTION with a NUL rejected");
  CHECK_STR(info.description, "", "rejected description changes nothing");
  static uint8_t big[2 + NBD_MAX_STRING + 1];
  memset(big, 'x', sizeof big);
  big[0] = 0;
  big[1] = NBD_INFO_DESCRIPTION;
  CHECK_EQ(nbd_parse_info_reply(big, 2 + NBD_MAX_STRING, &info), 0, "4096-byte description accepted");
  CHECK(info.description && strlen(info.description) == NBD_MAX_STRING, "4096-byte description stored");
  CHECK_EQ(nbd_parse_info_reply(big, 2 + NBD_MAX_STRING + 1, &info), -1, "4097-byte description rejected");

  /* Unknown info types are ignored whatever their length. */
  uint64_t bsize = info.size;
  uint16_t btf = info.tflags;
  uint32_t bmin = info.min_block;
  char *bname = info.name, *bdesc = info.description;
  hexbytes("0007 0102030405", p, &n);
  CHECK_EQ(nbd_parse_info_reply(p, 7, &info), 0, "unknown INFO type 7 ignored");
  CHECK_EQ(nbd_parse_info_reply(p, 2, &info), 0, "unknown INFO type, no data, ignored");
  hexbytes("ffff", p, &n);
  CHECK_EQ(nbd_parse_info_reply(p, 2, &info), 0, "unknown INFO type 0xffff ignored");
  CHECK(bsize == info.size && btf == info.tflags && bmin == info.min_block && bname == info.name &&
            bdesc == info.description, "unknown INFO types change nothing");
  free(info.name);
  free(info.description);
}

static void test_block_sizes(void)
{
  CHECK(nbd_check_block_sizes(1, 4096, 32 << 20) == NULL, "1/4096/32M valid");
  CHECK(nbd_check_block_sizes(512, 512, 512) == NULL, "512/512/512 valid");
  CHECK(nbd_check_block_sizes(65536, 65536, 65536) == NULL, "64K/64K/64K valid");
  CHECK(nbd_check_block_sizes(1, 512, UINT32_MAX) == NULL, "max 0xffffffff (no limit) valid");
  CHECK(nbd_check_block_sizes(1, 512, 1000) == NULL, "max need not be a power of two");
  CHECK(nbd_check_block_sizes(4096, 4096, 0x1000000) == NULL, "4K minimum valid");
  CHECK(nbd_check_block_sizes(0, 4096, 32 << 20) != NULL, "min 0 invalid");
  CHECK(nbd_check_block_sizes(3, 4096, 32 << 20) != NULL, "min 3 (not a power of two) invalid");
  CHECK(nbd_check_block_sizes(131072, 131072, 131072) != NULL, "min 128K invalid");
  CHECK(nbd_check_block_sizes(0x80000000u, 0x80000000u, 0x80000000u) != NULL, "min 2^31 invalid");
  CHECK(nbd_check_block_sizes(4096, 2048, 32 << 20) != NULL, "pref < min invalid");
  CHECK(nbd_check_block_sizes(1, 256, 32 << 20) != NULL, "pref < 512 invalid");
  CHECK(nbd_check_block_sizes(1, 0, 32 << 20) != NULL, "pref 0 invalid");
  CHECK(nbd_check_block_sizes(1, 3000, 32 << 20) != NULL, "pref not a power of two invalid");
  CHECK(nbd_check_block_sizes(1, 4096, 2048) != NULL, "max < pref invalid");
  CHECK(nbd_check_block_sizes(1, 4096, 0) != NULL, "max 0 invalid");
}

static void test_server_meta(void)
{
  uint8_t p[64];
  size_t n;
  const uint8_t *nm, *ds;
  uint32_t nl, dl;
  hexbytes("00000003 616263 6465736372", p, &n);
  CHECK_EQ(nbd_parse_server_reply(p, (uint32_t)n, &nm, &nl, &ds, &dl), 0, "SERVER reply with description");
  CHECK(nl == 3 && !memcmp(nm, "abc", 3) && dl == 5 && !memcmp(ds, "descr", 5), "SERVER fields");
  CHECK_EQ(nbd_parse_server_reply(p, 7, &nm, &nl, &ds, &dl), 0, "SERVER reply without description");
  CHECK(nl == 3 && dl == 0, "SERVER: empty description");
  CHECK_EQ(nbd_parse_server_reply(p, 6, &nm, &nl, &ds, &dl), -1, "SERVER name length > len-4");
  CHECK_EQ(nbd_parse_server_reply(p, 3, &nm, &nl, &ds, &dl), -1, "SERVER shorter than 4 bytes");
  CHECK_EQ(nbd_parse_server_reply(p, 0, &nm, &nl, &ds, &dl), -1, "empty SERVER");
  hexbytes("00000000", p, &n);
  CHECK_EQ(nbd_parse_server_reply(p, 4, &nm, &nl, &ds, &dl), 0, "SERVER with the empty name");
  CHECK(nl == 0 && dl == 0, "SERVER empty name fields");
  hexbytes("ffffffff 61", p, &n);
  CHECK_EQ(nbd_parse_server_reply(p, 5, &nm, &nl, &ds, &dl), -1, "SERVER name length 0xffffffff");
  static uint8_t big[4 + NBD_MAX_STRING + 1];
  nbd_put32(big, NBD_MAX_STRING + 1);
  CHECK_EQ(nbd_parse_server_reply(big, sizeof big, &nm, &nl, &ds, &dl), -1, "SERVER name over 4096 bytes");

  uint32_t id;
  hexbytes("00000007 626173653a616c6c6f636174696f6e", p, &n);
  CHECK_EQ(nbd_parse_meta_reply(p, (uint32_t)n, &id, &nm, &nl), 0, "META_CONTEXT reply");
  CHECK(id == 7 && nl == 15 && !memcmp(nm, "base:allocation", 15), "META_CONTEXT fields");
  CHECK_EQ(nbd_parse_meta_reply(p, 4, &id, &nm, &nl), -1, "META_CONTEXT without a name");
  CHECK_EQ(nbd_parse_meta_reply(p, 3, &id, &nm, &nl), -1, "META_CONTEXT shorter than 4");

  uint8_t g[NBD_OLDSTYLE_GREETING_LEN] = { 0 };
  nbd_put64(g, NBD_INIT_MAGIC);
  nbd_put64(g + 8, NBD_OLDSTYLE_MAGIC);
  nbd_put64(g + 16, UINT64_C(0x123456789));
  nbd_put32(g + 24, 0xabcd0003);
  uint64_t size;
  uint16_t tf;
  nbd_parse_oldstyle(g, &size, &tf);
  CHECK(size == UINT64_C(0x123456789) && tf == 0x0003, "oldstyle size and low 16 flag bits");
}

static void test_reply_header(void)
{
  uint8_t m[4];
  nbd_put32(m, NBD_SIMPLE_REPLY_MAGIC);
  CHECK_EQ(nbd_reply_header_len(m, NBD_REPLIES_SIMPLE), 16, "simple reply, SR off");
  CHECK_EQ(nbd_reply_header_len(m, NBD_REPLIES_STRUCTURED), 16, "simple reply, SR on");
  nbd_put32(m, NBD_STRUCTURED_REPLY_MAGIC);
  CHECK_EQ(nbd_reply_header_len(m, NBD_REPLIES_STRUCTURED), 20, "chunk, SR on");
  CHECK_EQ(nbd_reply_header_len(m, NBD_REPLIES_SIMPLE), 0, "chunk while SR off is a violation");
  static const uint32_t badm[] = { 0x12560953, 0x96744668, 0x25609514, 0x6e8a278c, NBD_REQUEST_MAGIC, 0 };
  for (unsigned i = 0; i < sizeof badm / sizeof badm[0]; i++) {
    nbd_put32(m, badm[i]);
    CHECK(nbd_reply_header_len(m, NBD_REPLIES_STRUCTURED) == 0 && nbd_reply_header_len(m, NBD_REPLIES_SIMPLE) == 0,
          "magic 0x%08x is rejected", badm[i]);
  }

  uint8_t h[20];
  size_t n;
  hexbytes("67446698 0000001c 0000000300000002", h, &n);
  struct nbd_reply r;
  nbd_decode_reply(h, &r);
  CHECK(!r.structured && r.error == 28 && r.cookie == UINT64_C(0x300000002), "simple reply decoded");
  hexbytes("668e33ef 0001 8002 0000000100000000 00000014", h, &n);
  nbd_decode_reply(h, &r);
  CHECK(r.structured && r.flags == 1 && r.type == NBD_REPLY_TYPE_ERROR_OFFSET &&
            r.cookie == UINT64_C(0x100000000) && r.length == 20 && r.error == 0,
        "chunk header decoded");
}

static enum nbd_verdict chk(uint16_t type, uint16_t flags, uint32_t length, uint16_t cmd, uint32_t count)
{
  struct nbd_reply r = { .structured = true, .flags = flags, .type = type, .length = length };
  return nbd_check_chunk(&r, cmd, count);
}

static void test_check_chunk(void)
{
  const uint16_t D = NBD_REPLY_FLAG_DONE;
  /* NONE */
  CHECK_EQ(chk(NBD_REPLY_TYPE_NONE, D, 0, NBD_CMD_READ, 512), NBD_OK, "NONE+DONE to READ ok");
  CHECK_EQ(chk(NBD_REPLY_TYPE_NONE, D, 0, NBD_CMD_FLUSH, 0), NBD_OK, "NONE+DONE to FLUSH ok");
  CHECK_EQ(chk(NBD_REPLY_TYPE_NONE, D | 0xf0, 0, NBD_CMD_WRITE, 512), NBD_OK, "NONE+DONE, unknown flag bits ignored");
  CHECK_EQ(chk(NBD_REPLY_TYPE_NONE, 0, 0, NBD_CMD_READ, 512), NBD_FAIL, "NONE without DONE fails");
  CHECK_EQ(chk(NBD_REPLY_TYPE_NONE, D, 4, NBD_CMD_READ, 512), NBD_KILL, "NONE with a payload kills");
  /* OFFSET_DATA */
  CHECK_EQ(chk(NBD_REPLY_TYPE_OFFSET_DATA, D, 520, NBD_CMD_READ, 512), NBD_OK, "OFFSET_DATA 8+512 to READ 512");
  CHECK_EQ(chk(NBD_REPLY_TYPE_OFFSET_DATA, 0, 9, NBD_CMD_READ, 512), NBD_OK, "OFFSET_DATA of 1 byte");
  CHECK_EQ(chk(NBD_REPLY_TYPE_OFFSET_DATA, D, 521, NBD_CMD_READ, 512), NBD_FAIL, "OFFSET_DATA longer than the READ");
  CHECK_EQ(chk(NBD_REPLY_TYPE_OFFSET_DATA, D, NBD_MAX_PAYLOAD + 9, NBD_CMD_READ, 512), NBD_KILL,
           "OFFSET_DATA over the payload cap kills");
  CHECK_EQ(chk(NBD_REPLY_TYPE_OFFSET_DATA, D, 0xfffffff0, NBD_CMD_READ, NBD_MAX_PAYLOAD), NBD_KILL,
           "OFFSET_DATA 0xfffffff0 kills for the largest READ we send");
  CHECK_EQ(chk(NBD_REPLY_TYPE_OFFSET_DATA, D, 0xfffffff0, NBD_CMD_WRITE, NBD_MAX_PAYLOAD), NBD_KILL,
           "OFFSET_DATA 0xfffffff0 to WRITE kills (not skipped)");
  CHECK_EQ(chk(NBD_REPLY_TYPE_OFFSET_DATA, D, 520, NBD_CMD_WRITE, 512), NBD_FAIL, "OFFSET_DATA to WRITE fails");
  CHECK_EQ(chk(NBD_REPLY_TYPE_OFFSET_DATA, D, 9, NBD_CMD_FLUSH, 0), NBD_FAIL, "OFFSET_DATA to FLUSH fails");
  CHECK_EQ(chk(NBD_REPLY_TYPE_OFFSET_DATA, D, 520, NBD_CMD_TRIM, 512), NBD_FAIL, "OFFSET_DATA to TRIM fails");
  CHECK_EQ(chk(NBD_REPLY_TYPE_OFFSET_DATA, D, 520, NBD_CMD_BLOCK_STATUS, 512), NBD_FAIL,
           "OFFSET_DATA to BLOCK_STATUS fails");
  /* OFFSET_HOLE */
  CHECK_EQ(chk(NBD_REPLY_TYPE_OFFSET_HOLE, D, 12, NBD_CMD_READ, 512), NBD_OK, "OFFSET_HOLE to READ");
  CHECK_EQ(chk(NBD_REPLY_TYPE_OFFSET_HOLE, D, 11, NBD_CMD_READ, 512), NBD_FAIL, "OFFSET_HOLE of 11 bytes");
  CHECK_EQ(chk(NBD_REPLY_TYPE_OFFSET_HOLE, D, 16, NBD_CMD_READ, 512), NBD_FAIL, "OFFSET_HOLE of 16 bytes");
  CHECK_EQ(chk(NBD_REPLY_TYPE_OFFSET_HOLE, D, 0x10000000, NBD_CMD_READ, 512), NBD_KILL,
           "OFFSET_HOLE with a huge length kills");
  CHECK_EQ(chk(NBD_REPLY_TYPE_OFFSET_HOLE, D, 12, NBD_CMD_WRITE, 512), NBD_FAIL, "OFFSET_HOLE to WRITE fails");
  CHECK_EQ(chk(NBD_REPLY_TYPE_OFFSET_HOLE, D, 12, NBD_CMD_FLUSH, 0), NBD_FAIL, "OFFSET_HOLE to FLUSH fails");
  /* BLOCK_STATUS */
  CHECK_EQ(chk(NBD_REPLY_TYPE_BLOCK_STATUS, D, 12, NBD_CMD_BLOCK_STATUS, 512), NBD_OK, "BLOCK_STATUS to BLOCK_STATUS");
  CHECK_EQ(chk(NBD_REPLY_TYPE_BLOCK_STATUS, D, 12, NBD_CMD_READ, 512), NBD_FAIL, "BLOCK_STATUS to READ fails");
  CHECK_EQ(chk(NBD_REPLY_TYPE_BLOCK_STATUS, D, 12, NBD_CMD_WRITE, 512), NBD_FAIL, "BLOCK_STATUS to WRITE fails");
  CHECK_EQ(chk(NBD_REPLY_TYPE_BLOCK_STATUS, D, NBD_MAX_BS_PAYLOAD + 4, NBD_CMD_BLOCK_STATUS, 512), NBD_OK,
           "BLOCK_STATUS at the 8 MiB cap");
  CHECK_EQ(chk(NBD_REPLY_TYPE_BLOCK_STATUS, D, NBD_MAX_BS_PAYLOAD + 12, NBD_CMD_BLOCK_STATUS, 512), NBD_KILL,
           "BLOCK_STATUS over the cap kills");
  CHECK_EQ(chk(NBD_REPLY_TYPE_BLOCK_STATUS, D, 0xffffffff, NBD_CMD_READ, 512), NBD_KILL,
           "BLOCK_STATUS of 4 GiB to READ kills (not skipped)");
  /* Unknown non-error types kill. */
  static const uint16_t unk[] = { 3, 4, 6, 7, 0x7fff };
  for (unsigned i = 0; i < sizeof unk / sizeof unk[0]; i++)
    CHECK_EQ(chk(unk[i], D, 0, NBD_CMD_READ, 512), NBD_KILL, "unknown chunk type %u kills", unk[i]);
  /* Error chunks. */
  static const uint16_t errs[] = { NBD_REPLY_TYPE_ERROR, NBD_REPLY_TYPE_ERROR_OFFSET, 0x8003, 0xffff };
  static const uint16_t cmds[] = { NBD_CMD_READ, NBD_CMD_WRITE, NBD_CMD_FLUSH, NBD_CMD_TRIM,
                                   NBD_CMD_WRITE_ZEROES, NBD_CMD_BLOCK_STATUS, NBD_CMD_CACHE };
  for (unsigned i = 0; i < sizeof errs / sizeof errs[0]; i++) {
    bool all_ok = true;
    for (unsigned j = 0; j < sizeof cmds / sizeof cmds[0]; j++)
      all_ok &= chk(errs[i], D, 6, cmds[j], 512) == NBD_OK && chk(errs[i], 0, 20, cmds[j], 512) == NBD_OK;
    CHECK(all_ok, "error chunk type 0x%x allowed for every command", errs[i]);
    CHECK_EQ(chk(errs[i], D, 5, NBD_CMD_READ, 512), NBD_KILL, "error chunk 0x%x shorter than 6 kills", errs[i]);
    CHECK_EQ(chk(errs[i], D, 0, NBD_CMD_READ, 512), NBD_KILL, "empty error chunk 0x%x kills", errs[i]);
    CHECK_EQ(chk(errs[i], D, 6 + NBD_MAX_STRING + 8, NBD_CMD_READ, 512), NBD_OK,
             "error chunk 0x%x at the size cap", errs[i]);
    CHECK_EQ(chk(errs[i], D, 0xfffffff0, NBD_CMD_READ, 512), NBD_KILL, "huge error chunk 0x%x kills", errs[i]);
  }
}

static void test_error_chunk(void)
{
  uint8_t p[64];
  size_t n;
  uint32_t err = 0;
  const uint8_t *msg = NULL;
  uint16_t ml = 0;
  uint64_t off = 0;

  hexbytes("0000001c 0003 6f6f70", p, &n);
  CHECK_EQ(nbd_parse_error_chunk(p, 9, NBD_REPLY_TYPE_ERROR, &err, &msg, &ml, &off), NBD_OK, "ERROR with a message");
  CHECK(err == 28 && ml == 3 && !memcmp(msg, "oop", 3), "ERROR fields");
  hexbytes("00000005 0000", p, &n);
  CHECK_EQ(nbd_parse_error_chunk(p, 6, NBD_REPLY_TYPE_ERROR, &err, &msg, &ml, &off), NBD_OK, "ERROR without message");
  CHECK(err == 5 && ml == 0, "ERROR without message fields");
  CHECK_EQ(nbd_parse_error_chunk(p, 5, NBD_REPLY_TYPE_ERROR, &err, &msg, &ml, &off), NBD_KILL, "ERROR of 5 bytes kills");
  CHECK_EQ(nbd_parse_error_chunk(p, 0, NBD_REPLY_TYPE_ERROR, &err, &msg, &ml, &off), NBD_KILL, "ERROR of 0 bytes kills");
  hexbytes("00000005 0004 616263", p, &n);
  CHECK_EQ(nbd_parse_error_chunk(p, 9, NBD_REPLY_TYPE_ERROR, &err, &msg, &ml, &off), NBD_KILL,
           "msglen > len-6 kills");
  hexbytes("00000005 ffff", p, &n);
  CHECK_EQ(nbd_parse_error_chunk(p, 6, NBD_REPLY_TYPE_ERROR, &err, &msg, &ml, &off), NBD_KILL,
           "msglen 0xffff kills");
  hexbytes("00000005 0001 61 6262", p, &n);
  CHECK_EQ(nbd_parse_error_chunk(p, 9, NBD_REPLY_TYPE_ERROR, &err, &msg, &ml, &off), NBD_FAIL,
           "ERROR with trailing bytes after the message fails");
  static uint8_t big[6 + NBD_MAX_STRING + 1];
  nbd_put32(big, 5);
  nbd_put16(big + 4, NBD_MAX_STRING + 1);
  CHECK_EQ(nbd_parse_error_chunk(big, sizeof big, NBD_REPLY_TYPE_ERROR, &err, &msg, &ml, &off), NBD_KILL,
           "msglen 4097 kills");
  nbd_put16(big + 4, NBD_MAX_STRING);
  CHECK_EQ(nbd_parse_error_chunk(big, sizeof big - 1, NBD_REPLY_TYPE_ERROR, &err, &msg, &ml, &off), NBD_OK,
           "msglen 4096 accepted");

  /* ERROR_OFFSET */
  hexbytes("00000016 0002 6869 0000000000001200", p, &n);
  CHECK_EQ(nbd_parse_error_chunk(p, 16, NBD_REPLY_TYPE_ERROR_OFFSET, &err, &msg, &ml, &off), NBD_OK,
           "ERROR_OFFSET with message");
  CHECK(err == 22 && ml == 2 && off == 0x1200, "ERROR_OFFSET fields");
  hexbytes("00000005 0000 0000000000000200", p, &n);
  CHECK_EQ(nbd_parse_error_chunk(p, 14, NBD_REPLY_TYPE_ERROR_OFFSET, &err, &msg, &ml, &off), NBD_OK,
           "ERROR_OFFSET of 14 bytes");
  CHECK(off == 0x200, "ERROR_OFFSET offset");
  CHECK_EQ(nbd_parse_error_chunk(p, 13, NBD_REPLY_TYPE_ERROR_OFFSET, &err, &msg, &ml, &off), NBD_FAIL,
           "ERROR_OFFSET shorter than 14 fails");
  CHECK_EQ(nbd_parse_error_chunk(p, 6, NBD_REPLY_TYPE_ERROR_OFFSET, &err, &msg, &ml, &off), NBD_FAIL,
           "ERROR_OFFSET without offset fails");
  hexbytes("00000005 0000 0000000000000200 00", p, &n);
  CHECK_EQ(nbd_parse_error_chunk(p, 15, NBD_REPLY_TYPE_ERROR_OFFSET, &err, &msg, &ml, &off), NBD_FAIL,
           "ERROR_OFFSET longer than 14+msglen fails");

  /* Unknown error-class type: the error is carried, the rest ignored. */
  hexbytes("0000001c 0001 61 01020304", p, &n);
  CHECK_EQ(nbd_parse_error_chunk(p, 11, 0x8003, &err, &msg, &ml, &off), NBD_OK, "unknown error type 0x8003 parsed");
  CHECK(err == 28, "unknown error type: error value");
  hexbytes("0000001c 0009 61", p, &n);
  CHECK_EQ(nbd_parse_error_chunk(p, 7, 0x8003, &err, &msg, &ml, &off), NBD_KILL,
           "unknown error type with msglen > len-6 kills");
}

static void test_offsets(void)
{
  uint8_t pre[12];
  uint64_t off;
  uint32_t len;

  nbd_put64(pre, 4096);
  CHECK_EQ(nbd_parse_offset_data(pre, 8 + 512, 4096, 512, &off, &len), NBD_OK, "data covering the request");
  CHECK(off == 4096 && len == 512, "data range");
  CHECK_EQ(nbd_parse_offset_data(pre, 8 + 513, 4096, 512, &off, &len), NBD_FAIL, "data past the end");
  CHECK_EQ(nbd_parse_offset_data(pre, 8, 4096, 512, &off, &len), NBD_FAIL, "data of length 8 (no data)");
  CHECK_EQ(nbd_parse_offset_data(pre, 0, 4096, 512, &off, &len), NBD_FAIL, "data of length 0");
  nbd_put64(pre, 4095);
  CHECK_EQ(nbd_parse_offset_data(pre, 8 + 1, 4096, 512, &off, &len), NBD_FAIL, "data before the request");
  nbd_put64(pre, 4096 + 511);
  CHECK_EQ(nbd_parse_offset_data(pre, 8 + 1, 4096, 512, &off, &len), NBD_OK, "last byte of the request");
  CHECK_EQ(nbd_parse_offset_data(pre, 8 + 2, 4096, 512, &off, &len), NBD_FAIL, "one byte past the end");
  nbd_put64(pre, 4096 + 512);
  CHECK_EQ(nbd_parse_offset_data(pre, 8 + 1, 4096, 512, &off, &len), NBD_FAIL, "data starting at the end");
  nbd_put64(pre, 0);
  CHECK_EQ(nbd_parse_offset_data(pre, 8 + 1, 4096, 512, &off, &len), NBD_FAIL, "data at offset 0");

  /* 64-bit wraparound: offset + length must not wrap into the range. */
  uint64_t top = UINT64_MAX - 4095; /* request [2^64-4096, 2^64) */
  nbd_put64(pre, top);
  CHECK_EQ(nbd_parse_offset_data(pre, 8 + 4096, top, 4096, &off, &len), NBD_OK, "request ending at 2^64");
  nbd_put64(pre, UINT64_MAX);
  CHECK_EQ(nbd_parse_offset_data(pre, 8 + 1, top, 4096, &off, &len), NBD_OK, "last byte below 2^64");
  CHECK_EQ(nbd_parse_offset_data(pre, 8 + 2, top, 4096, &off, &len), NBD_FAIL, "wrapping past 2^64");
  nbd_put64(pre, UINT64_MAX - 10);
  CHECK_EQ(nbd_parse_offset_data(pre, 8 + 0x100000, 4096, 0x100000, &off, &len), NBD_FAIL,
           "huge offset with a length that wraps to inside the request");
  nbd_put64(pre, 0x1000);
  CHECK_EQ(nbd_parse_offset_data(pre, 8 + 16, UINT64_MAX - 8, 16, &off, &len), NBD_FAIL,
           "request wrapping past 2^64: small offset is not inside");

  /* OFFSET_HOLE */
  nbd_put64(pre, 4096);
  nbd_put32(pre + 8, 512);
  CHECK_EQ(nbd_parse_offset_hole(pre, 12, 4096, 512, &off, &len), NBD_OK, "hole covering the request");
  CHECK(off == 4096 && len == 512, "hole range");
  CHECK_EQ(nbd_parse_offset_hole(pre, 11, 4096, 512, &off, &len), NBD_FAIL, "hole chunk of 11 bytes");
  CHECK_EQ(nbd_parse_offset_hole(pre, 13, 4096, 512, &off, &len), NBD_FAIL, "hole chunk of 13 bytes");
  nbd_put32(pre + 8, 0);
  CHECK_EQ(nbd_parse_offset_hole(pre, 12, 4096, 512, &off, &len), NBD_FAIL, "hole of size 0");
  nbd_put32(pre + 8, 513);
  CHECK_EQ(nbd_parse_offset_hole(pre, 12, 4096, 512, &off, &len), NBD_FAIL, "hole past the end");
  nbd_put32(pre + 8, UINT32_MAX);
  CHECK_EQ(nbd_parse_offset_hole(pre, 12, 4096, 512, &off, &len), NBD_FAIL, "hole of 4 GiB");
  nbd_put64(pre, UINT64_MAX);
  nbd_put32(pre + 8, 2);
  CHECK_EQ(nbd_parse_offset_hole(pre, 12, top, 4096, &off, &len), NBD_FAIL, "hole wrapping past 2^64");
  nbd_put32(pre + 8, 1);
  CHECK_EQ(nbd_parse_offset_hole(pre, 12, top, 4096, &off, &len), NBD_OK, "hole at the last byte below 2^64");
  nbd_put64(pre, 100);
  CHECK_EQ(nbd_parse_offset_hole(pre, 12, 4096, 512, &off, &len), NBD_FAIL, "hole before the request");
}

static void test_coverage(void)
{
  struct nbd_coverage c;
  nbd_coverage_init(&c);
  CHECK_EQ(c.covered, 0, "empty coverage");
  CHECK_EQ(nbd_coverage_add(&c, 0, 10), 0, "add [0,10)");
  CHECK_EQ(nbd_coverage_add(&c, 10, 20), 0, "add adjacent [10,20)");
  CHECK_EQ(c.n, 1, "adjacent ranges merge");
  CHECK_EQ(c.covered, 20, "covered 20");
  CHECK_EQ(nbd_coverage_add(&c, 5, 15), -1, "overlap inside");
  CHECK_EQ(nbd_coverage_add(&c, 19, 25), -1, "overlap at the end");
  CHECK_EQ(nbd_coverage_add(&c, 0, 1), -1, "duplicate start");
  CHECK_EQ(nbd_coverage_add(&c, 0, 20), -1, "exact duplicate");
  CHECK_EQ(c.covered, 20, "rejected adds do not count");
  CHECK_EQ(nbd_coverage_add(&c, 30, 40), 0, "add [30,40) (gap 20..30)");
  CHECK_EQ(c.n, 2, "two ranges");
  CHECK_EQ(c.covered, 30, "gap detected by the covered count (30 < 40)");
  CHECK_EQ(nbd_coverage_add(&c, 25, 35), -1, "overlap with the second range");
  CHECK_EQ(nbd_coverage_add(&c, 15, 31), -1, "overlap spanning both");
  CHECK_EQ(nbd_coverage_add(&c, 20, 30), 0, "fill the gap");
  CHECK_EQ(c.n, 1, "filling merges both sides");
  CHECK_EQ(c.covered, 40, "fully covered");
  nbd_coverage_free(&c);

  /* Out of order, then a merge to the right. */
  nbd_coverage_init(&c);
  CHECK_EQ(nbd_coverage_add(&c, 100, 200), 0, "add [100,200)");
  CHECK_EQ(nbd_coverage_add(&c, 0, 50), 0, "add [0,50) before it");
  CHECK_EQ(nbd_coverage_add(&c, 50, 100), 0, "add [50,100) between");
  CHECK(c.n == 1 && c.covered == 200, "merged to one range of 200");
  CHECK_EQ(nbd_coverage_add(&c, 0, UINT32_MAX), -1, "large overlapping range");
  nbd_coverage_free(&c);

  /* Many disjoint ranges: beyond the 4 inline ones. */
  nbd_coverage_init(&c);
  bool okall = true;
  for (uint32_t i = 100; i-- > 0;)
    okall &= nbd_coverage_add(&c, 2 * i * 10, 2 * i * 10 + 10) == 0;
  CHECK(okall, "100 disjoint ranges added in reverse order");
  CHECK_EQ(c.n, 100, "100 ranges kept");
  CHECK(c.r != c.inl, "ranges moved off the inline array");
  CHECK_EQ(c.covered, 1000, "covered 1000 of 2000: gaps");
  bool sorted = true;
  for (uint32_t i = 0; i + 1 < c.n; i++)
    sorted &= c.r[i].end < c.r[i + 1].start;
  CHECK(sorted, "ranges sorted and disjoint");
  CHECK_EQ(nbd_coverage_add(&c, 995, 1005), -1, "overlap detected among many ranges");
  CHECK_EQ(nbd_coverage_add(&c, 1985, 1995), -1, "overlap with the last of many ranges");
  okall = true;
  for (uint32_t i = 0; i < 100; i++)
    okall &= nbd_coverage_add(&c, 2 * i * 10 + 10, 2 * i * 10 + 20) == 0;
  CHECK(okall, "gaps filled");
  CHECK(c.n == 1 && c.covered == 2000, "everything merged into one range");
  nbd_coverage_free(&c);
  CHECK(c.n == 0 && c.r == c.inl && c.covered == 0, "free resets the tracker");

  /* Exactly 4 then a 5th range: the spill path. */
  nbd_coverage_init(&c);
  for (uint32_t i = 0; i < 5; i++)
    nbd_coverage_add(&c, i * 100, i * 100 + 10);
  CHECK(c.n == 5 && c.covered == 50 && c.r[4].start == 400 && c.r[0].start == 0,
        "5th range spills to the heap intact");
  nbd_coverage_free(&c);

  /* Whole 32-bit space. */
  nbd_coverage_init(&c);
  CHECK_EQ(nbd_coverage_add(&c, 0, UINT32_MAX), 0, "range of 2^32-1 bytes");
  CHECK(c.covered == UINT32_MAX, "covered 2^32-1");
  nbd_coverage_free(&c);
}

static double now_s(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint32_t xorshift(uint32_t *st)
{
  uint32_t x = *st;
  x ^= x << 13;
  x ^= x >> 17;
  x ^= x << 5;
  return *st = x;
}

/* Add every chunk [order[k]*size, +size) of a read; true when all return 0. */
static bool add_all(struct nbd_coverage *c, const uint32_t *order, uint32_t n, uint32_t size)
{
  bool ok = true;
  for (uint32_t k = 0; k < n; k++)
    ok &= nbd_coverage_add(c, order[k] * size, order[k] * size + size) == 0;
  return ok;
}

static bool sorted_disjoint(const struct nbd_coverage *c)
{
  bool ok = true;
  for (uint32_t i = 0; i < c->n; i++)
    ok &= c->r[i].start < c->r[i].end && (i + 1 == c->n || c->r[i].end < c->r[i + 1].start);
  return ok;
}

static void test_coverage_cap(void)
{
  struct nbd_coverage c;
  CHECK_EQ(NBD_MAX_CHUNKS_PER_READ(0), 1024, "small reads may take 1024 chunks");
  CHECK_EQ(NBD_MAX_CHUNKS_PER_READ(512 * 1024), 1026, "512 KiB: 1024 sectors + 2 partial ends");
  CHECK_EQ(NBD_MAX_CHUNKS_PER_READ(1024 * 1024), 2050, "1 MiB: 2048 sectors + 2 partial ends");
  CHECK_EQ(NBD_MAX_CHUNKS_PER_READ(NBD_MAX_PAYLOAD), 65538, "32 MiB: 65538");
  CHECK_EQ(NBD_MAX_CHUNKS_PER_READ(UINT32_MAX), 8388609, "no overflow for 4 GiB");

  /* The hostile pattern: one READ of 512 KiB answered by 1-byte chunks,
   * the even offsets ascending, then the odd ones (each of which merges two
   * ranges).  It used to take half a minute of CPU. */
  const uint32_t count = 512 * 1024;
  nbd_coverage_init(&c);
  uint32_t n_ok = 0, n_cap = 0, n_other = 0;
  double t0 = now_s();
  for (uint32_t pass = 0; pass < 2; pass++)
    for (uint32_t off = pass; off < count; off += 2) {
      int r = nbd_coverage_add(&c, off, off + 1);
      if (r == 0)
        n_ok++;
      else if (r == -3)
        n_cap++;
      else
        n_other++;
    }
  double dt = now_s() - t0;
  CHECK_EQ(n_ok, 1024, "hostile 1-byte chunks: the first 1024 accepted");
  CHECK_EQ(n_cap, count - 1024, "hostile 1-byte chunks: every later one is -3 (too many chunks)");
  CHECK_EQ(n_other, 0, "hostile 1-byte chunks: nothing else");
  CHECK(c.covered == 1024 && c.n == 1024 && sorted_disjoint(&c),
        "hostile 1-byte chunks: 1024 ranges kept, 1024 bytes covered");
  CHECK(dt < 1.0, "hostile 512 KiB read of 1-byte chunks handled in %.3f s (< 1 s)", dt);
  /* -3 sticks: not even a chunk big enough to raise the cap gets in. */
  CHECK_EQ(nbd_coverage_add(&c, 2048, count), -3, "after -3, a big chunk is -3 too");
  CHECK(c.covered == 1024, "rejected chunks do not count as covered");
  nbd_coverage_free(&c);
  CHECK(c.chunks == 0, "free resets the chunk count");

  /* Exactly at the cap: the 1024th tiny chunk is fine, the 1025th is not,
   * whatever else is wrong with it. */
  nbd_coverage_init(&c);
  bool okall = true;
  for (uint32_t i = 0; i < 1024; i++)
    okall &= nbd_coverage_add(&c, 4 * i, 4 * i + 1) == 0;
  CHECK(okall, "1024 one-byte chunks accepted");
  CHECK_EQ(nbd_coverage_add(&c, 4096, 4096 + 512), -3, "1025th chunk (512 bytes) is one too many");
  CHECK_EQ(nbd_coverage_add(&c, 0, 1), -3, "after the cap, even an overlap is -3");
  nbd_coverage_free(&c);

  /* The cap grows with the bytes covered: 512-byte chunks with gaps, the
   * way a fragmented image could answer a 2 MiB read. */
  nbd_coverage_init(&c);
  okall = true;
  for (uint32_t i = 0; i < 2048; i++)
    okall &= nbd_coverage_add(&c, 1024 * i, 1024 * i + 512) == 0;
  CHECK(okall, "2048 disjoint 512-byte chunks accepted (cap grows with the bytes covered)");
  CHECK(c.n == 2048 && c.covered == 1024 * 1024 && sorted_disjoint(&c), "2048 ranges");
  CHECK_EQ(nbd_coverage_add(&c, 1024 * 2048, 1024 * 2048 + 1), 0, "2049th chunk (1 byte): within 2048+2");
  CHECK_EQ(nbd_coverage_add(&c, 1024 * 2048 + 1, 1024 * 2048 + 2), 0, "2050th chunk (1 byte): within 2048+2");
  CHECK_EQ(nbd_coverage_add(&c, 1024 * 2048 + 2, 1024 * 2048 + 3), -3, "2051st chunk (1 byte): one too many");
  nbd_coverage_free(&c);

  /* Legitimate answers to a 1 MiB read: all accepted, fully covered. */
  const uint32_t mib = 1024 * 1024;
  uint32_t order[2048];
  nbd_coverage_init(&c);
  for (uint32_t i = 0; i < 256; i++)
    order[i] = i;
  CHECK(add_all(&c, order, 256, 4096), "1 MiB in ascending 4 KiB chunks accepted");
  CHECK(c.n == 1 && c.covered == mib, "ascending 4 KiB chunks: fully covered, one range");
  nbd_coverage_free(&c);

  nbd_coverage_init(&c);
  for (uint32_t i = 0; i < 256; i++)
    order[i] = 255 - i;
  CHECK(add_all(&c, order, 256, 4096), "1 MiB in descending 4 KiB chunks accepted");
  CHECK(c.n == 1 && c.covered == mib, "descending 4 KiB chunks: fully covered, one range");
  nbd_coverage_free(&c);

  nbd_coverage_init(&c);
  for (uint32_t i = 0; i < 2048; i++)
    order[i] = i;
  uint32_t st = 0x9e3779b9;
  for (uint32_t i = 2047; i > 0; i--) {
    uint32_t j = xorshift(&st) % (i + 1), t = order[i];
    order[i] = order[j];
    order[j] = t;
  }
  CHECK(add_all(&c, order, 1024, 512), "first half of 2048 shuffled 512-byte chunks accepted");
  CHECK(c.n > 1 && sorted_disjoint(&c), "shuffled: %u disjoint sorted ranges halfway", c.n);
  uint32_t dup = order[517];
  CHECK_EQ(nbd_coverage_add(&c, dup * 512, dup * 512 + 512), -1, "a repeated chunk is an overlap");
  CHECK_EQ(nbd_coverage_add(&c, dup * 512 + 511, dup * 512 + 513), -1, "a chunk straddling one is an overlap");
  CHECK(add_all(&c, order + 1024, 1024, 512), "second half accepted (within the cap despite 2 rejects)");
  CHECK(c.n == 1 && c.covered == mib, "1 MiB in shuffled 512-byte chunks: fully covered, one range");
  nbd_coverage_free(&c);

  /* Unaligned request: a partial extent at each end, shuffled. */
  nbd_coverage_init(&c);
  const uint32_t head = 300, tail = 700, ucount = head + 2048 * 512 + tail;
  CHECK_EQ(NBD_MAX_CHUNKS_PER_READ(ucount), 2051, "cap for the unaligned read");
  okall = true;
  for (uint32_t i = 0; i < 2048; i++) {
    uint32_t s0 = head + order[i] * 512;
    okall &= nbd_coverage_add(&c, s0, s0 + 512) == 0;
  }
  okall &= nbd_coverage_add(&c, ucount - tail, ucount) == 0;
  okall &= nbd_coverage_add(&c, 0, head) == 0;
  CHECK(okall, "unaligned read: 2048 sectors then both partial ends accepted");
  CHECK(c.n == 1 && c.covered == ucount, "unaligned read fully covered");
  nbd_coverage_free(&c);
}

/* Build a block status payload: ctx, then (len, flags) pairs. */
static uint32_t bs(uint8_t *p, uint32_t ctx, unsigned n, const uint32_t *pairs)
{
  nbd_put32(p, ctx);
  for (unsigned i = 0; i < 2 * n; i++)
    nbd_put32(p + 4 + 4 * i, pairs[i]);
  return 4 + 8 * n;
}

static void test_block_status(void)
{
  uint8_t p[256];
  struct nbd_extent e[16];
  uint32_t ctx = 0, n = 99, len;

  len = bs(p, 7, 2, (const uint32_t[]){ 512, 0, 512, 3 });
  CHECK_EQ(nbd_parse_block_status(p, len, 1024, false, &ctx, e, 16, &n), NBD_OK, "two extents");
  CHECK(ctx == 7 && n == 2 && e[0].length == 512 && e[0].flags == 0 && e[1].length == 512 &&
            e[1].flags == 3, "extent fields");

  len = bs(p, 7, 1, (const uint32_t[]){ 512, 1 });
  CHECK_EQ(nbd_parse_block_status(p, len, 1024, false, &ctx, e, 16, &n), NBD_OK, "reply shorter than the request");
  CHECK(n == 1 && e[0].length == 512, "short reply extent");

  len = bs(p, 7, 2, (const uint32_t[]){ 512, 0, 4096, 3 });
  CHECK_EQ(nbd_parse_block_status(p, len, 1024, false, &ctx, e, 16, &n), NBD_OK, "last extent past the end");
  CHECK(n == 2 && e[1].length == 512 && e[1].flags == 3, "last extent clamped to the request");

  len = bs(p, 7, 1, (const uint32_t[]){ UINT32_MAX, 3 });
  CHECK_EQ(nbd_parse_block_status(p, len, 1024, false, &ctx, e, 16, &n), NBD_OK, "one 4 GiB extent");
  CHECK(n == 1 && e[0].length == 1024, "4 GiB extent clamped");

  len = bs(p, 7, 2, (const uint32_t[]){ 1024, 0, 512, 0 });
  CHECK_EQ(nbd_parse_block_status(p, len, 1024, false, &ctx, e, 16, &n), NBD_FAIL,
           "an extent after earlier ones reached the end");
  len = bs(p, 7, 2, (const uint32_t[]){ 2048, 0, 512, 0 });
  CHECK_EQ(nbd_parse_block_status(p, len, 1024, false, &ctx, e, 16, &n), NBD_FAIL,
           "an extent after an earlier one passed the end");
  len = bs(p, 7, 3, (const uint32_t[]){ 512, 0, 0, 0, 512, 0 });
  CHECK_EQ(nbd_parse_block_status(p, len, 2048, false, &ctx, e, 16, &n), NBD_FAIL, "zero-length extent");
  len = bs(p, 7, 1, (const uint32_t[]){ 0, 0 });
  CHECK_EQ(nbd_parse_block_status(p, len, 2048, false, &ctx, e, 16, &n), NBD_FAIL, "single zero-length extent");

  /* REQ_ONE */
  len = bs(p, 7, 1, (const uint32_t[]){ 512, 2 });
  CHECK_EQ(nbd_parse_block_status(p, len, 1024, true, &ctx, e, 16, &n), NBD_OK, "REQ_ONE: one extent");
  CHECK(n == 1 && e[0].length == 512, "REQ_ONE extent");
  len = bs(p, 7, 1, (const uint32_t[]){ 1024, 2 });
  CHECK_EQ(nbd_parse_block_status(p, len, 1024, true, &ctx, e, 16, &n), NBD_OK, "REQ_ONE: extent of the request size");
  len = bs(p, 7, 2, (const uint32_t[]){ 512, 0, 512, 0 });
  CHECK_EQ(nbd_parse_block_status(p, len, 1024, true, &ctx, e, 16, &n), NBD_FAIL, "REQ_ONE: two extents");
  len = bs(p, 7, 1, (const uint32_t[]){ 1025, 0 });
  CHECK_EQ(nbd_parse_block_status(p, len, 1024, true, &ctx, e, 16, &n), NBD_FAIL,
           "REQ_ONE: extent longer than the request");

  /* Bad payload lengths. */
  nbd_put32(p, 7);
  CHECK_EQ(nbd_parse_block_status(p, 4, 1024, false, &ctx, e, 16, &n), NBD_FAIL, "no extents (4 bytes)");
  CHECK_EQ(nbd_parse_block_status(p, 0, 1024, false, &ctx, e, 16, &n), NBD_FAIL, "empty payload");
  CHECK_EQ(nbd_parse_block_status(p, 3, 1024, false, &ctx, e, 16, &n), NBD_FAIL, "3-byte payload");
  len = bs(p, 7, 2, (const uint32_t[]){ 512, 0, 512, 0 });
  CHECK_EQ(nbd_parse_block_status(p, 11, 1024, false, &ctx, e, 16, &n), NBD_FAIL, "11-byte payload");
  CHECK_EQ(nbd_parse_block_status(p, 13, 1024, false, &ctx, e, 16, &n), NBD_FAIL, "13-byte payload");
  CHECK_EQ(nbd_parse_block_status(p, 19, 1024, false, &ctx, e, 16, &n), NBD_FAIL, "19-byte payload");

  /* max_out bounds what is stored, not what is checked. */
  uint32_t many[2 * 20];
  for (int i = 0; i < 20; i++) {
    many[2 * i] = 512;
    many[2 * i + 1] = (uint32_t)i;
  }
  len = bs(p, 1, 20, many);
  CHECK_EQ(nbd_parse_block_status(p, len, 20 * 512, false, &ctx, e, 4, &n), NBD_OK, "20 extents, room for 4");
  CHECK(n == 4 && e[3].flags == 3, "only max_out extents stored");
  many[2 * 19] = 0;
  CHECK_EQ(nbd_parse_block_status(p, bs(p, 1, 20, many), 20 * 512, false, &ctx, e, 4, &n), NBD_FAIL,
           "a bad extent past max_out is still detected");

  /* Sum overflow: extents of 0xffffffff with a 0xffffffff request. */
  len = bs(p, 1, 3, (const uint32_t[]){ UINT32_MAX, 0, UINT32_MAX, 0, UINT32_MAX, 0 });
  CHECK_EQ(nbd_parse_block_status(p, len, UINT32_MAX, false, &ctx, e, 16, &n), NBD_FAIL,
           "sum of 4 GiB extents beyond the request");
  len = bs(p, 1, 2, (const uint32_t[]){ UINT32_MAX - 1, 0, UINT32_MAX, 1 });
  CHECK_EQ(nbd_parse_block_status(p, len, UINT32_MAX, false, &ctx, e, 16, &n), NBD_OK,
           "second 4 GiB extent clamped to 1 byte");
  CHECK(n == 2 && e[1].length == 1, "clamped to 1 byte");
}

static void test_errno(void)
{
  CHECK_EQ(nbd_errno(NBD_EPERM), EPERM, "EPERM");
  CHECK_EQ(nbd_errno(NBD_EIO), EIO, "EIO");
  CHECK_EQ(nbd_errno(NBD_ENOMEM), ENOMEM, "ENOMEM");
  CHECK_EQ(nbd_errno(NBD_EINVAL), EINVAL, "EINVAL");
  CHECK_EQ(nbd_errno(NBD_ENOSPC), ENOSPC, "ENOSPC");
  CHECK_EQ(nbd_errno(NBD_EOVERFLOW), EOVERFLOW, "EOVERFLOW");
  CHECK(nbd_errno(NBD_ENOTSUP) == ENOTSUP || nbd_errno(NBD_ENOTSUP) == EOPNOTSUPP, "ENOTSUP");
  CHECK_EQ(nbd_errno(NBD_ESHUTDOWN), ESHUTDOWN, "ESHUTDOWN");
  CHECK_EQ(nbd_errno(13), EINVAL, "undefined value 13 -> EINVAL");
  CHECK_EQ(nbd_errno(0xffffffff), EINVAL, "0xffffffff -> EINVAL");
  CHECK_EQ(nbd_errno(2), EINVAL, "2 (ENOENT on Linux, not an NBD value) -> EINVAL");
}

static void test_sanitize(void)
{
  char out[64];
  nbd_sanitize(out, sizeof out, (const uint8_t *)"hello world", 11);
  CHECK_STR(out, "hello world", "printable ASCII kept");
  nbd_sanitize(out, sizeof out, (const uint8_t *)"a\x1b[31mb\n\\", 9);
  CHECK_STR(out, "a\\x1b[31mb\\x0a\\x5c", "escape, newline and backslash escaped");
  nbd_sanitize(out, sizeof out, (const uint8_t *)"\xc3\xa9\x7f\x00z", 5);
  CHECK_STR(out, "\\xc3\\xa9\\x7f\\x00z", "non-ASCII, DEL and NUL escaped");
  nbd_sanitize(out, sizeof out, (const uint8_t *)"", 0);
  CHECK_STR(out, "", "empty input");

  /* Truncation: always terminated, never a partial escape, never past outlen. */
  bool fine = true;
  for (size_t ol = 1; ol < 24; ol++) {
    char b[32];
    memset(b, 'Z', sizeof b);
    nbd_sanitize(b, ol, (const uint8_t *)"\x01\x02\x03\x04\x05\x06\x07\x08", 8);
    size_t l = strnlen(b, ol);
    fine &= l < ol && b[ol] == 'Z' && l % 4 == 0;
  }
  CHECK(fine, "escapes truncate cleanly at every output size");
  fine = true;
  for (size_t ol = 1; ol < 24; ol++) {
    char b[32];
    memset(b, 'Z', sizeof b);
    nbd_sanitize(b, ol, (const uint8_t *)"abcdefghijklmnopqrstuvwxyz", 26);
    fine &= strnlen(b, ol) < ol && b[ol] == 'Z';
  }
  CHECK(fine, "plain text truncates within outlen");
  char z = 'Z';
  nbd_sanitize(&z, 0, (const uint8_t *)"abc", 3);
  CHECK(z == 'Z', "outlen 0 writes nothing");
}


/* ---- extended headers ---- */

static void test_ext_request(void)
{
  uint8_t out[NBD_EXT_REQUEST_LEN];
  struct nbd_request rq = { .flags = NBD_CMD_FLAG_NO_HOLE, .type = NBD_CMD_WRITE_ZEROES,
                            .cookie = UINT64_C(0x0102030405060708), .offset = UINT64_C(1) << 40,
                            .count = UINT64_C(6) << 30 };
  nbd_encode_ext_request(out, &rq);
  CHECK_EQ(nbd_get32(out), NBD_EXTENDED_REQUEST_MAGIC, "ext request: magic");
  CHECK_EQ(nbd_get16(out + 4), NBD_CMD_FLAG_NO_HOLE, "ext request: flags as given (no payload)");
  CHECK_EQ(nbd_get16(out + 6), NBD_CMD_WRITE_ZEROES, "ext request: type");
  CHECK(nbd_get64(out + 8) == rq.cookie && nbd_get64(out + 16) == rq.offset, "ext request: cookie, offset");
  CHECK(nbd_get64(out + 24) == UINT64_C(6) << 30, "ext request: 64-bit effect length (6 GiB)");
  rq = (struct nbd_request){ .flags = NBD_CMD_FLAG_FUA, .type = NBD_CMD_WRITE, .count = 512 };
  nbd_encode_ext_request(out, &rq);
  CHECK_EQ(nbd_get16(out + 4), NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_PAYLOAD_LEN,
           "ext request: WRITE carries PAYLOAD_LEN");
  CHECK(nbd_get64(out + 24) == 512, "ext request: WRITE length is its payload");
  rq = (struct nbd_request){ .type = NBD_CMD_READ, .count = 4096 };
  nbd_encode_ext_request(out, &rq);
  CHECK_EQ(nbd_get16(out + 4), 0, "ext request: READ has no PAYLOAD_LEN");
}

static void ext_hdr(uint8_t *p, uint16_t flags, uint16_t type, uint64_t cookie, uint64_t off,
                    uint64_t len)
{
  nbd_put32(p, NBD_EXTENDED_REPLY_MAGIC);
  nbd_put16(p + 4, flags);
  nbd_put16(p + 6, type);
  nbd_put64(p + 8, cookie);
  nbd_put64(p + 16, off);
  nbd_put64(p + 24, len);
}

static void test_ext_reply(void)
{
  uint8_t m[4];
  nbd_put32(m, NBD_EXTENDED_REPLY_MAGIC);
  CHECK_EQ(nbd_reply_header_len(m, NBD_REPLIES_EXTENDED), 32, "extended chunk in extended mode: 32 bytes");
  CHECK(nbd_reply_header_len(m, NBD_REPLIES_STRUCTURED) == 0 && nbd_reply_header_len(m, NBD_REPLIES_SIMPLE) == 0,
        "extended chunk without negotiation is a violation");
  nbd_put32(m, NBD_SIMPLE_REPLY_MAGIC);
  CHECK_EQ(nbd_reply_header_len(m, NBD_REPLIES_EXTENDED), 0, "simple reply in extended mode is a violation");
  nbd_put32(m, NBD_STRUCTURED_REPLY_MAGIC);
  CHECK_EQ(nbd_reply_header_len(m, NBD_REPLIES_EXTENDED), 0, "structured chunk in extended mode is a violation");

  uint8_t h[32];
  struct nbd_reply r;
  ext_hdr(h, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_OFFSET_DATA, 77, 4096, 520);
  nbd_decode_reply(h, &r);
  CHECK(r.structured && r.extended && r.flags == NBD_REPLY_FLAG_DONE && r.type == NBD_REPLY_TYPE_OFFSET_DATA,
        "ext reply: decoded as an extended chunk");
  CHECK(r.cookie == 77 && r.offset == 4096 && r.length == 520 && r.length64 == 520, "ext reply: fields");
  CHECK_EQ(nbd_check_ext_reply(&r, 4096), NBD_OK, "ext reply: offset of the request");
  CHECK_EQ(nbd_check_ext_reply(&r, 0), NBD_KILL, "ext reply: another offset kills");
  CHECK_EQ(nbd_check_chunk(&r, NBD_CMD_READ, 512), NBD_OK, "ext reply: OFFSET_DATA of 512 bytes to READ");

  ext_hdr(h, 0, NBD_REPLY_TYPE_OFFSET_DATA, 77, 4096, UINT64_C(1) << 32);
  nbd_decode_reply(h, &r);
  CHECK(r.length == UINT32_MAX && r.length64 == UINT64_C(1) << 32, "ext reply: 2^32 length saturates");
  CHECK_EQ(nbd_check_ext_reply(&r, 4096), NBD_KILL, "ext reply: length of 2^32 kills");
  CHECK_EQ(nbd_check_chunk(&r, NBD_CMD_READ, 512), NBD_KILL, "ext reply: saturated length fails every cap");
  ext_hdr(h, 0, NBD_REPLY_TYPE_NONE, 77, 0, UINT64_MAX);
  nbd_decode_reply(h, &r);
  CHECK_EQ(nbd_check_ext_reply(&r, 0), NBD_KILL, "ext reply: length 2^64-1 kills");

  /* Block status chunk kinds must match the headers. */
  ext_hdr(h, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS_EXT, 1, 0, 24);
  nbd_decode_reply(h, &r);
  CHECK_EQ(nbd_check_chunk(&r, NBD_CMD_BLOCK_STATUS, UINT64_C(6) << 30), NBD_OK, "BLOCK_STATUS_EXT in extended mode");
  CHECK_EQ(nbd_check_chunk(&r, NBD_CMD_READ, 512), NBD_FAIL, "BLOCK_STATUS_EXT to READ fails the read");
  ext_hdr(h, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS_EXT, 1, 0, (UINT64_C(16) << 20) + 24);
  nbd_decode_reply(h, &r);
  CHECK_EQ(nbd_check_chunk(&r, NBD_CMD_BLOCK_STATUS, 1024), NBD_KILL, "BLOCK_STATUS_EXT over the cap kills");
  ext_hdr(h, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_BLOCK_STATUS, 1, 0, 12);
  nbd_decode_reply(h, &r);
  CHECK_EQ(nbd_check_chunk(&r, NBD_CMD_BLOCK_STATUS, 1024), NBD_FAIL, "compact BLOCK_STATUS in extended mode fails");
  uint8_t c[20];
  nbd_put32(c, NBD_STRUCTURED_REPLY_MAGIC);
  nbd_put16(c + 4, NBD_REPLY_FLAG_DONE);
  nbd_put16(c + 6, NBD_REPLY_TYPE_BLOCK_STATUS_EXT);
  nbd_put64(c + 8, 1);
  nbd_put32(c + 16, 24);
  nbd_decode_reply(c, &r);
  CHECK(!r.extended, "structured chunk: not extended");
  CHECK_EQ(nbd_check_ext_reply(&r, 99), NBD_OK, "structured chunk: no extended fields to check");
  CHECK_EQ(nbd_check_chunk(&r, NBD_CMD_BLOCK_STATUS, 1024), NBD_KILL,
           "BLOCK_STATUS_EXT without extended headers kills (an unknown type there)");
}

/* Build a BLOCK_STATUS_EXT payload: ctx, count (as given), then (len, status) pairs. */
static uint32_t bsx(uint8_t *p, uint32_t ctx, uint32_t count, unsigned n, const uint64_t *pairs)
{
  nbd_put32(p, ctx);
  nbd_put32(p + 4, count);
  for (unsigned i = 0; i < 2 * n; i++)
    nbd_put64(p + 8 + 8 * i, pairs[i]);
  return 8 + 16 * n;
}

static void test_block_status_ext(void)
{
  uint8_t p[512];
  struct nbd_extent e[16];
  uint32_t ctx = 0, n = 99, len;
  const uint64_t G = UINT64_C(1) << 30;

  len = bsx(p, 4, 2, 2, (const uint64_t[]){ 5 * G, 3, 2 * G, 0 });
  CHECK_EQ(nbd_parse_block_status_ext(p, len, 6 * G, false, &ctx, e, 16, &n), NBD_OK, "ext: two 64-bit extents");
  CHECK(ctx == 4 && n == 2 && e[0].length == 5 * G && e[0].flags == 3 && e[1].length == G,
        "ext: 5 GiB hole, then the last extent clamped to the 6 GiB request");
  len = bsx(p, 4, 1, 1, (const uint64_t[]){ UINT64_C(1) << 40, UINT64_C(0xffffffff00000001) });
  CHECK_EQ(nbd_parse_block_status_ext(p, len, 6 * G, false, &ctx, e, 16, &n), NBD_OK, "ext: one 1 TiB extent");
  CHECK(n == 1 && e[0].length == 6 * G && e[0].flags == 1, "ext: clamped, status bits above 31 dropped");
  len = bsx(p, 4, 3, 2, (const uint64_t[]){ 512, 0, 512, 0 });
  CHECK_EQ(nbd_parse_block_status_ext(p, len, 4096, false, &ctx, e, 16, &n), NBD_FAIL,
           "ext: descriptor count larger than the payload");
  len = bsx(p, 4, 1, 2, (const uint64_t[]){ 512, 0, 512, 0 });
  CHECK_EQ(nbd_parse_block_status_ext(p, len, 4096, false, &ctx, e, 16, &n), NBD_FAIL,
           "ext: descriptor count smaller than the payload");
  len = bsx(p, 4, 0, 0, NULL);
  CHECK_EQ(nbd_parse_block_status_ext(p, len, 4096, false, &ctx, e, 16, &n), NBD_FAIL, "ext: zero descriptors");
  CHECK_EQ(nbd_parse_block_status_ext(p, 20, 4096, false, &ctx, e, 16, &n), NBD_FAIL, "ext: length not 8+16n");
  CHECK_EQ(nbd_parse_block_status_ext(p, 7, 4096, false, &ctx, e, 16, &n), NBD_FAIL, "ext: too short");
  len = bsx(p, 4, 2, 2, (const uint64_t[]){ 0, 0, 512, 0 });
  CHECK_EQ(nbd_parse_block_status_ext(p, len, 4096, false, &ctx, e, 16, &n), NBD_FAIL, "ext: zero-length extent");
  len = bsx(p, 4, 2, 2, (const uint64_t[]){ UINT64_MAX, 0, 2, 0 });
  CHECK_EQ(nbd_parse_block_status_ext(p, len, 4096, false, &ctx, e, 16, &n), NBD_FAIL,
           "ext: extents after one that covered the request (no 64-bit wrap)");
  len = bsx(p, 4, 2, 2, (const uint64_t[]){ UINT64_MAX - 510, 0, 1024, 0 });
  CHECK_EQ(nbd_parse_block_status_ext(p, len, UINT64_MAX - 1, false, &ctx, e, 16, &n), NBD_OK,
           "ext: sums near 2^64 clamp instead of wrapping");
  CHECK(n == 2 && e[0].length + e[1].length == UINT64_MAX - 1, "ext: clamped to the request exactly");
  len = bsx(p, 4, 2, 2, (const uint64_t[]){ 512, 0, 512, 0 });
  CHECK_EQ(nbd_parse_block_status_ext(p, len, 4096, true, &ctx, e, 16, &n), NBD_FAIL, "ext: REQ_ONE, two extents");
  len = bsx(p, 4, 1, 1, (const uint64_t[]){ 8192, 0 });
  CHECK_EQ(nbd_parse_block_status_ext(p, len, 4096, true, &ctx, e, 16, &n), NBD_FAIL,
           "ext: REQ_ONE, extent longer than the request");
  len = bsx(p, 4, 1, 1, (const uint64_t[]){ 4096, 2 });
  CHECK_EQ(nbd_parse_block_status_ext(p, len, 4096, true, &ctx, e, 16, &n), NBD_OK, "ext: REQ_ONE, one extent");
  len = bsx(p, 4, 20, 20, (const uint64_t[40]){ 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0,
                                                  1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0 });
  CHECK_EQ(nbd_parse_block_status_ext(p, len, 4096, false, &ctx, e, 16, &n), NBD_OK,
           "ext: more extents than the output holds");
  CHECK_EQ(n, 16, "ext: only max_out stored");
}

int main(void)
{
  test_endian();
  test_encode();
  test_opt_reply();
  test_info();
  test_block_sizes();
  test_server_meta();
  test_reply_header();
  test_check_chunk();
  test_error_chunk();
  test_offsets();
  test_coverage();
  test_coverage_cap();
  test_block_status();
  test_errno();
  test_sanitize();
  test_ext_request();
  test_ext_reply();
  test_block_status_ext();
  return done_testing();
}
