/* proto.c: NBD wire encoding and validation.  Pure functions only. */
#include "nbd-proto.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void nbd_encode_opt_header(uint8_t out[NBD_OPT_HDR_LEN], uint32_t opt, uint32_t len)
{
  nbd_put64(out, NBD_IHAVEOPT);
  nbd_put32(out + 8, opt);
  nbd_put32(out + 12, len);
}

int nbd_decode_opt_reply(const uint8_t in[NBD_OPT_REPLY_HDR_LEN], struct nbd_opt_reply *r)
{
  if (nbd_get64(in) != NBD_OPT_REPLY_MAGIC)
    return -1;
  r->opt = nbd_get32(in + 8);
  r->type = nbd_get32(in + 12);
  r->len = nbd_get32(in + 16);
  return 0;
}

uint32_t nbd_opt_reply_cap(uint32_t type)
{
  switch (type) {
  case NBD_REP_ACK: return 0;
  case NBD_REP_SERVER: return 4 + 2 * NBD_MAX_STRING;
  case NBD_REP_INFO: return 2 + NBD_MAX_STRING;
  case NBD_REP_META_CONTEXT: return 4 + NBD_MAX_STRING;
  default: return (type & NBD_REP_FLAG_ERROR) ? NBD_MAX_STRING : 0;
  }
}

int nbd_encode_info_request(uint8_t *out, size_t outlen, const char *name, size_t namelen,
                            const uint16_t *infos, unsigned ninfos)
{
  size_t need = 4 + namelen + 2 + 2 * (size_t)ninfos;
  if (need > outlen || namelen > NBD_MAX_STRING)
    return -1;
  nbd_put32(out, (uint32_t)namelen);
  memcpy(out + 4, name, namelen);
  nbd_put16(out + 4 + namelen, (uint16_t)ninfos);
  for (unsigned i = 0; i < ninfos; i++)
    nbd_put16(out + 6 + namelen + 2 * i, infos[i]);
  return (int)need;
}

int nbd_encode_meta_request(uint8_t *out, size_t outlen, const char *name, size_t namelen,
                            const char *const *queries, unsigned nqueries)
{
  size_t need = 4 + namelen + 4;
  for (unsigned i = 0; i < nqueries; i++)
    need += 4 + strlen(queries[i]);
  if (need > outlen || namelen > NBD_MAX_STRING)
    return -1;
  uint8_t *p = out;
  nbd_put32(p, (uint32_t)namelen);
  memcpy(p + 4, name, namelen);
  p += 4 + namelen;
  nbd_put32(p, nqueries);
  p += 4;
  for (unsigned i = 0; i < nqueries; i++) {
    size_t l = strlen(queries[i]);
    nbd_put32(p, (uint32_t)l);
    memcpy(p + 4, queries[i], l);
    p += 4 + l;
  }
  return (int)need;
}

static char *dup_string(const uint8_t *p, uint32_t len)
{
  char *s = malloc(len + 1);
  if (s) {
    memcpy(s, p, len);
    s[len] = '\0';
  }
  return s;
}

int nbd_parse_info_reply(const uint8_t *p, uint32_t len, struct nbd_export_info *info)
{
  if (len < 2)
    return -1;
  uint16_t type = nbd_get16(p);
  switch (type) {
  case NBD_INFO_EXPORT:
    if (len != 12)
      return -1;
    info->size = nbd_get64(p + 2);
    info->tflags = nbd_get16(p + 10);
    info->have_export = true;
    return 0;
  case NBD_INFO_BLOCK_SIZE:
    if (len != 14)
      return -1;
    info->min_block = nbd_get32(p + 2);
    info->pref_block = nbd_get32(p + 6);
    info->max_block = nbd_get32(p + 10);
    info->have_block_size = true;
    return 0;
  case NBD_INFO_NAME:
  case NBD_INFO_DESCRIPTION: {
    if (len - 2 > NBD_MAX_STRING || memchr(p + 2, 0, len - 2))
      return -1;
    char *s = dup_string(p + 2, len - 2);
    if (!s)
      return -2;
    char **slot = type == NBD_INFO_NAME ? &info->name : &info->description;
    free(*slot);
    *slot = s;
    return 0;
  }
  default:
    return 0; /* unknown info types are ignored */
  }
}

const char *nbd_check_block_sizes(uint32_t min, uint32_t pref, uint32_t max)
{
  if (min == 0 || (min & (min - 1)) || min > 65536)
    return "minimum block size is not a power of two up to 64 KiB";
  if (pref < min || pref < 512 || (pref & (pref - 1)))
    return "preferred block size is not a power of two of at least max(minimum, 512)";
  if (max < pref)
    return "maximum block size is below the preferred size";
  if (max != UINT32_MAX && max % min)
    return "maximum block size is not a multiple of the minimum";
  return NULL;
}

int nbd_parse_server_reply(const uint8_t *p, uint32_t len, const uint8_t **name,
                           uint32_t *namelen, const uint8_t **desc, uint32_t *desclen)
{
  if (len < 4)
    return -1;
  uint32_t n = nbd_get32(p);
  if (n > len - 4 || n > NBD_MAX_STRING)
    return -1;
  *name = p + 4;
  *namelen = n;
  *desc = p + 4 + n;
  *desclen = len - 4 - n;
  return 0;
}

int nbd_parse_meta_reply(const uint8_t *p, uint32_t len, uint32_t *id,
                         const uint8_t **name, uint32_t *namelen)
{
  if (len < 5 || len - 4 > NBD_MAX_STRING)
    return -1;
  *id = nbd_get32(p);
  *name = p + 4;
  *namelen = len - 4;
  return 0;
}

void nbd_parse_oldstyle(const uint8_t in[NBD_OLDSTYLE_GREETING_LEN], uint64_t *size,
                        uint16_t *tflags)
{
  *size = nbd_get64(in + 16);
  *tflags = (uint16_t)(nbd_get32(in + 24) & 0xffff);
}

const char *nbd_opt_name(uint32_t opt)
{
  switch (opt) {
  case NBD_OPT_EXPORT_NAME: return "NBD_OPT_EXPORT_NAME";
  case NBD_OPT_ABORT: return "NBD_OPT_ABORT";
  case NBD_OPT_LIST: return "NBD_OPT_LIST";
  case NBD_OPT_STARTTLS: return "NBD_OPT_STARTTLS";
  case NBD_OPT_INFO: return "NBD_OPT_INFO";
  case NBD_OPT_GO: return "NBD_OPT_GO";
  case NBD_OPT_STRUCTURED_REPLY: return "NBD_OPT_STRUCTURED_REPLY";
  case NBD_OPT_LIST_META_CONTEXT: return "NBD_OPT_LIST_META_CONTEXT";
  case NBD_OPT_SET_META_CONTEXT: return "NBD_OPT_SET_META_CONTEXT";
  case NBD_OPT_EXTENDED_HEADERS: return "NBD_OPT_EXTENDED_HEADERS";
  default: return "unknown option";
  }
}

const char *nbd_rep_name(uint32_t type)
{
  switch (type) {
  case NBD_REP_ACK: return "ACK";
  case NBD_REP_SERVER: return "SERVER";
  case NBD_REP_INFO: return "INFO";
  case NBD_REP_META_CONTEXT: return "META_CONTEXT";
  case NBD_REP_ERR_UNSUP: return "unsupported";
  case NBD_REP_ERR_POLICY: return "refused by server policy";
  case NBD_REP_ERR_INVALID: return "invalid request";
  case NBD_REP_ERR_PLATFORM: return "not supported by server platform";
  case NBD_REP_ERR_TLS_REQD: return "server requires TLS";
  case NBD_REP_ERR_UNKNOWN: return "no such export";
  case NBD_REP_ERR_SHUTDOWN: return "server is shutting down";
  case NBD_REP_ERR_BLOCK_SIZE_REQD: return "server requires block size negotiation";
  case NBD_REP_ERR_TOO_BIG: return "request too big";
  case NBD_REP_ERR_EXT_HEADER_REQD: return "server requires extended headers";
  default: return (type & NBD_REP_FLAG_ERROR) ? "unknown error" : "unknown reply type";
  }
}

const char *nbd_cmd_name(uint16_t cmd)
{
  switch (cmd) {
  case NBD_CMD_READ: return "READ";
  case NBD_CMD_WRITE: return "WRITE";
  case NBD_CMD_DISC: return "DISC";
  case NBD_CMD_FLUSH: return "FLUSH";
  case NBD_CMD_TRIM: return "TRIM";
  case NBD_CMD_CACHE: return "CACHE";
  case NBD_CMD_WRITE_ZEROES: return "WRITE_ZEROES";
  case NBD_CMD_BLOCK_STATUS: return "BLOCK_STATUS";
  default: return "UNKNOWN";
  }
}

void nbd_encode_request(uint8_t out[NBD_REQUEST_LEN], const struct nbd_request *rq)
{
  nbd_put32(out, NBD_REQUEST_MAGIC);
  nbd_put16(out + 4, rq->flags);
  nbd_put16(out + 6, rq->type);
  nbd_put64(out + 8, rq->cookie);
  nbd_put64(out + 16, rq->offset);
  nbd_put32(out + 24, (uint32_t)rq->count);
}

void nbd_encode_ext_request(uint8_t out[NBD_EXT_REQUEST_LEN], const struct nbd_request *rq)
{
  uint16_t flags = rq->flags;
  if (rq->type == NBD_CMD_WRITE)
    flags |= NBD_CMD_FLAG_PAYLOAD_LEN;
  nbd_put32(out, NBD_EXTENDED_REQUEST_MAGIC);
  nbd_put16(out + 4, flags);
  nbd_put16(out + 6, rq->type);
  nbd_put64(out + 8, rq->cookie);
  nbd_put64(out + 16, rq->offset);
  nbd_put64(out + 24, rq->count);
}

size_t nbd_reply_header_len(const uint8_t magic[4], enum nbd_reply_mode mode)
{
  /* Each mode has exactly the header kinds the spec allows in it: a server
   * mixing kinds has lost the framing we agreed on. */
  switch (nbd_get32(magic)) {
  case NBD_SIMPLE_REPLY_MAGIC:
    return mode != NBD_REPLIES_EXTENDED ? NBD_SIMPLE_REPLY_LEN : 0;
  case NBD_STRUCTURED_REPLY_MAGIC:
    return mode == NBD_REPLIES_STRUCTURED ? NBD_CHUNK_HDR_LEN : 0;
  case NBD_EXTENDED_REPLY_MAGIC:
    return mode == NBD_REPLIES_EXTENDED ? NBD_EXT_REPLY_LEN : 0;
  default:
    return 0;
  }
}

void nbd_decode_reply(const uint8_t *in, struct nbd_reply *r)
{
  memset(r, 0, sizeof *r);
  uint32_t magic = nbd_get32(in);
  if (magic == NBD_SIMPLE_REPLY_MAGIC) {
    r->error = nbd_get32(in + 4);
    r->cookie = nbd_get64(in + 8);
  } else if (magic == NBD_EXTENDED_REPLY_MAGIC) {
    r->structured = r->extended = true;
    r->flags = nbd_get16(in + 4);
    r->type = nbd_get16(in + 6);
    r->cookie = nbd_get64(in + 8);
    r->offset = nbd_get64(in + 16);
    r->length64 = nbd_get64(in + 24);
    /* Saturated, so every length cap below rejects what does not fit. */
    r->length = r->length64 > UINT32_MAX ? UINT32_MAX : (uint32_t)r->length64;
  } else {
    r->structured = true;
    r->flags = nbd_get16(in + 4);
    r->type = nbd_get16(in + 6);
    r->cookie = nbd_get64(in + 8);
    r->length = nbd_get32(in + 16);
  }
}

enum nbd_verdict nbd_check_ext_reply(const struct nbd_reply *r, uint64_t req_off)
{
  if (!r->extended)
    return NBD_OK;
  if (r->length64 > UINT32_MAX || r->offset != req_off)
    return NBD_KILL;
  return NBD_OK;
}

enum nbd_verdict nbd_check_chunk(const struct nbd_reply *r, uint16_t cmd, uint64_t req_count)
{
  switch (r->type) {
  case NBD_REPLY_TYPE_NONE:
    if (r->length != 0)
      return NBD_KILL; /* cannot trust the framing of a NONE with a payload */
    return (r->flags & NBD_REPLY_FLAG_DONE) ? NBD_OK : NBD_FAIL;
  case NBD_REPLY_TYPE_OFFSET_DATA:
    if (r->length > req_count + UINT64_C(8))
      return r->length > NBD_MAX_PAYLOAD + 8 ? NBD_KILL : NBD_FAIL;
    return cmd == NBD_CMD_READ ? NBD_OK : NBD_FAIL;
  case NBD_REPLY_TYPE_OFFSET_HOLE:
    if (r->length != 12)
      return r->length > 4096 ? NBD_KILL : NBD_FAIL;
    return cmd == NBD_CMD_READ ? NBD_OK : NBD_FAIL;
  case NBD_REPLY_TYPE_BLOCK_STATUS:
    if (r->length > NBD_MAX_BS_PAYLOAD + 4)
      return NBD_KILL;
    /* Only the compact form belongs to compact headers, and vice versa. */
    return cmd == NBD_CMD_BLOCK_STATUS && !r->extended ? NBD_OK : NBD_FAIL;
  case NBD_REPLY_TYPE_BLOCK_STATUS_EXT:
    /* Without extended headers it is as unknown as it was before them. */
    if (!r->extended || r->length > NBD_MAX_BS_EXT_PAYLOAD + 8)
      return NBD_KILL;
    return cmd == NBD_CMD_BLOCK_STATUS ? NBD_OK : NBD_FAIL;
  default:
    if (!NBD_REPLY_TYPE_IS_ERR(r->type))
      return NBD_KILL; /* the spec demands a hard disconnect */
    if (r->length < 6 || r->length > 6 + NBD_MAX_STRING + 8)
      return NBD_KILL;
    return NBD_OK;
  }
}

enum nbd_verdict nbd_parse_error_chunk(const uint8_t *p, uint32_t len, uint16_t type,
                                       uint32_t *error, const uint8_t **msg,
                                       uint16_t *msglen, uint64_t *offset)
{
  if (len < 6)
    return NBD_KILL;
  *error = nbd_get32(p);
  *msglen = nbd_get16(p + 4);
  *msg = p + 6;
  if (*msglen > len - 6 || *msglen > NBD_MAX_STRING)
    return NBD_KILL;
  if (type == NBD_REPLY_TYPE_ERROR_OFFSET) {
    if (len - 6 - *msglen != 8)
      return NBD_FAIL;
    *offset = nbd_get64(p + 6 + *msglen);
  } else if (type == NBD_REPLY_TYPE_ERROR && len - 6 != *msglen) {
    return NBD_FAIL;
  }
  return NBD_OK;
}

/* Is [off, off+len) inside [req_off, req_off+req_count)?  Checked arithmetic. */
static bool in_range(uint64_t off, uint64_t len, uint64_t req_off, uint32_t req_count)
{
  if (off < req_off || len == 0)
    return false;
  uint64_t rel = off - req_off;
  return rel <= req_count && len <= req_count - rel;
}

enum nbd_verdict nbd_parse_offset_data(const uint8_t prefix[8], uint32_t chunk_len,
                                       uint64_t req_off, uint32_t req_count,
                                       uint64_t *off, uint32_t *len)
{
  if (chunk_len < 9)
    return NBD_FAIL;
  *off = nbd_get64(prefix);
  *len = chunk_len - 8;
  return in_range(*off, *len, req_off, req_count) ? NBD_OK : NBD_FAIL;
}

enum nbd_verdict nbd_parse_offset_hole(const uint8_t *p, uint32_t chunk_len,
                                       uint64_t req_off, uint32_t req_count,
                                       uint64_t *off, uint32_t *len)
{
  if (chunk_len != 12)
    return NBD_FAIL;
  *off = nbd_get64(p);
  *len = nbd_get32(p + 8);
  return in_range(*off, *len, req_off, req_count) ? NBD_OK : NBD_FAIL;
}

void nbd_coverage_init(struct nbd_coverage *c)
{
  c->n = 0;
  c->cap = 4;
  c->r = c->inl;
  c->covered = 0;
  c->chunks = 0;
}

void nbd_coverage_free(struct nbd_coverage *c)
{
  if (c->r != c->inl)
    free(c->r);
  nbd_coverage_init(c);
}

int nbd_coverage_add(struct nbd_coverage *c, uint32_t start, uint32_t end)
{
  /* Bound the work first: a hostile server may send any number of chunks,
   * and those beyond the cap cost O(1) each. */
  if (c->chunks < UINT32_MAX)
    c->chunks++;
  if (c->chunks > NBD_MAX_CHUNKS_PER_READ(c->covered + (end - start))) {
    c->chunks = UINT32_MAX; /* above any cap: a later big chunk cannot undo it */
    return -3;
  }
  if (end <= start) /* empty or reversed: never from a parsed chunk */
    return -1;
  /* Ranges are kept sorted and disjoint: binary search for the first one
   * starting at or after start. */
  uint32_t lo = 0, hi = c->n;
  while (lo < hi) {
    uint32_t mid = lo + (hi - lo) / 2;
    if (c->r[mid].start < start)
      lo = mid + 1;
    else
      hi = mid;
  }
  uint32_t i = lo;
  if (i > 0 && c->r[i - 1].end > start)
    return -1;
  if (i < c->n && c->r[i].start < end)
    return -1;
  /* Merge with neighbours that touch. */
  bool left = i > 0 && c->r[i - 1].end == start;
  bool right = i < c->n && c->r[i].start == end;
  if (left && right) {
    c->r[i - 1].end = c->r[i].end;
    memmove(&c->r[i], &c->r[i + 1], (c->n - i - 1) * sizeof c->r[0]);
    c->n--;
  } else if (left) {
    c->r[i - 1].end = end;
  } else if (right) {
    c->r[i].start = start;
  } else {
    if (c->n == c->cap) {
      uint32_t ncap = c->cap * 2;
      void *nr = c->r == c->inl ? malloc(ncap * sizeof c->r[0])
                                : realloc(c->r, ncap * sizeof c->r[0]);
      if (!nr)
        return -2;
      if (c->r == c->inl)
        memcpy(nr, c->inl, sizeof c->inl);
      c->r = nr;
      c->cap = ncap;
    }
    memmove(&c->r[i + 1], &c->r[i], (c->n - i) * sizeof c->r[0]);
    c->r[i].start = start;
    c->r[i].end = end;
    c->n++;
  }
  c->covered += end - start;
  return 0;
}

/* Extents of a block status answer, one at a time: what both chunk forms
 * share once their descriptors are decoded. */
struct extent_walk {
  uint64_t req_count, sum;
  bool req_one;
  struct nbd_extent *out;
  uint32_t max_out, *n_out;
};

static enum nbd_verdict walk_extent(struct extent_walk *w, uint64_t elen, uint32_t flags)
{
  if (elen == 0)
    return NBD_FAIL;
  if (w->sum >= w->req_count)
    return NBD_FAIL; /* earlier extents already covered the request */
  uint64_t take = elen;
  if (take > w->req_count - w->sum) { /* never summed first: 64-bit lengths may wrap */
    if (w->req_one)
      return NBD_FAIL;
    take = w->req_count - w->sum; /* clamp the last extent */
  }
  w->sum += take;
  if (*w->n_out < w->max_out) {
    w->out[*w->n_out].length = take;
    w->out[*w->n_out].flags = flags;
    (*w->n_out)++;
  }
  return NBD_OK;
}

enum nbd_verdict nbd_parse_block_status(const uint8_t *p, uint32_t len, uint64_t req_count,
                                        bool req_one, uint32_t *ctx_id,
                                        struct nbd_extent *out, uint32_t max_out,
                                        uint32_t *n_out)
{
  *n_out = 0;
  if (len < 12 || (len - 4) % 8)
    return NBD_FAIL;
  *ctx_id = nbd_get32(p);
  uint32_t n = (len - 4) / 8;
  if (req_one && n != 1)
    return NBD_FAIL;
  struct extent_walk w = { req_count, 0, req_one, out, max_out, n_out };
  for (uint32_t i = 0; i < n; i++)
    if (walk_extent(&w, nbd_get32(p + 4 + 8 * i), nbd_get32(p + 8 + 8 * i)) != NBD_OK)
      return NBD_FAIL;
  return NBD_OK;
}

enum nbd_verdict nbd_parse_block_status_ext(const uint8_t *p, uint32_t len, uint64_t req_count,
                                            bool req_one, uint32_t *ctx_id,
                                            struct nbd_extent *out, uint32_t max_out,
                                            uint32_t *n_out)
{
  *n_out = 0;
  if (len < 24 || (len - 8) % 16)
    return NBD_FAIL;
  *ctx_id = nbd_get32(p);
  uint32_t n = nbd_get32(p + 4);
  if (n == 0 || n != (len - 8) / 16)
    return NBD_FAIL;
  if (req_one && n != 1)
    return NBD_FAIL;
  struct extent_walk w = { req_count, 0, req_one, out, max_out, n_out };
  for (uint32_t i = 0; i < n; i++) {
    const uint8_t *d = p + 8 + 16 * (size_t)i;
    if (walk_extent(&w, nbd_get64(d), (uint32_t)nbd_get64(d + 8)) != NBD_OK)
      return NBD_FAIL;
  }
  return NBD_OK;
}

int nbd_errno(uint32_t error)
{
  switch (error) {
  case NBD_EPERM: return EPERM;
  case NBD_EIO: return EIO;
  case NBD_ENOMEM: return ENOMEM;
  case NBD_EINVAL: return EINVAL;
  case NBD_ENOSPC: return ENOSPC;
  case NBD_EOVERFLOW: return EOVERFLOW;
  case NBD_ENOTSUP: return ENOTSUP;
  case NBD_ESHUTDOWN: return ESHUTDOWN;
  default: return EINVAL;
  }
}

void nbd_sanitize(char *out, size_t outlen, const uint8_t *s, size_t len)
{
  size_t o = 0;
  if (outlen == 0)
    return;
  for (size_t i = 0; i < len && o + 5 < outlen; i++) {
    uint8_t c = s[i];
    if (c >= 0x20 && c < 0x7f && c != '\\')
      out[o++] = (char)c;
    else
      o += (size_t)snprintf(out + o, outlen - o, "\\x%02x", c);
  }
  out[o] = '\0';
}
