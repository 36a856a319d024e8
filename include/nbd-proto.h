/* nbd-proto.h: the NBD wire format as pure functions over byte buffers.
 *
 * Nothing here touches sockets, threads or FUSE, so every function can be
 * unit-tested and fuzzed on its own.  All integers on the wire are big-endian.
 */
#ifndef NBDFS_PROTO_H
#define NBDFS_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Handshake magics. */
#define NBD_INIT_MAGIC          UINT64_C(0x4e42444d41474943) /* "NBDMAGIC" */
#define NBD_OLDSTYLE_MAGIC      UINT64_C(0x0000420281861253)
#define NBD_IHAVEOPT            UINT64_C(0x49484156454F5054)
#define NBD_OPT_REPLY_MAGIC     UINT64_C(0x0003e889045565a9)

/* Transmission magics. */
#define NBD_REQUEST_MAGIC          UINT32_C(0x25609513)
#define NBD_SIMPLE_REPLY_MAGIC     UINT32_C(0x67446698)
#define NBD_STRUCTURED_REPLY_MAGIC UINT32_C(0x668e33ef)
#define NBD_EXTENDED_REQUEST_MAGIC UINT32_C(0x21e41c71)
#define NBD_EXTENDED_REPLY_MAGIC   UINT32_C(0x6e8a278c)

/* Handshake flags (server) and client flags. */
#define NBD_FLAG_FIXED_NEWSTYLE   0x0001
#define NBD_FLAG_NO_ZEROES        0x0002
#define NBD_FLAG_C_FIXED_NEWSTYLE 0x00000001
#define NBD_FLAG_C_NO_ZEROES      0x00000002

/* Options. */
enum {
  NBD_OPT_EXPORT_NAME = 1, NBD_OPT_ABORT = 2, NBD_OPT_LIST = 3, NBD_OPT_STARTTLS = 5,
  NBD_OPT_INFO = 6, NBD_OPT_GO = 7, NBD_OPT_STRUCTURED_REPLY = 8,
  NBD_OPT_LIST_META_CONTEXT = 9, NBD_OPT_SET_META_CONTEXT = 10, NBD_OPT_EXTENDED_HEADERS = 11,
};

/* Option reply types. */
#define NBD_REP_ACK          UINT32_C(1)
#define NBD_REP_SERVER       UINT32_C(2)
#define NBD_REP_INFO         UINT32_C(3)
#define NBD_REP_META_CONTEXT UINT32_C(4)
#define NBD_REP_FLAG_ERROR   UINT32_C(0x80000000)
#define NBD_REP_ERR_UNSUP           (NBD_REP_FLAG_ERROR | 1)
#define NBD_REP_ERR_POLICY          (NBD_REP_FLAG_ERROR | 2)
#define NBD_REP_ERR_INVALID         (NBD_REP_FLAG_ERROR | 3)
#define NBD_REP_ERR_PLATFORM        (NBD_REP_FLAG_ERROR | 4)
#define NBD_REP_ERR_TLS_REQD        (NBD_REP_FLAG_ERROR | 5)
#define NBD_REP_ERR_UNKNOWN         (NBD_REP_FLAG_ERROR | 6)
#define NBD_REP_ERR_SHUTDOWN        (NBD_REP_FLAG_ERROR | 7)
#define NBD_REP_ERR_BLOCK_SIZE_REQD (NBD_REP_FLAG_ERROR | 8)
#define NBD_REP_ERR_TOO_BIG         (NBD_REP_FLAG_ERROR | 9)
#define NBD_REP_ERR_EXT_HEADER_REQD (NBD_REP_FLAG_ERROR | 10)

/* NBD_INFO types. */
enum { NBD_INFO_EXPORT = 0, NBD_INFO_NAME = 1, NBD_INFO_DESCRIPTION = 2, NBD_INFO_BLOCK_SIZE = 3 };

/* Transmission flags. */
#define NBD_FLAG_HAS_FLAGS         0x0001
#define NBD_FLAG_READ_ONLY         0x0002
#define NBD_FLAG_SEND_FLUSH        0x0004
#define NBD_FLAG_SEND_FUA          0x0008
#define NBD_FLAG_ROTATIONAL        0x0010
#define NBD_FLAG_SEND_TRIM         0x0020
#define NBD_FLAG_SEND_WRITE_ZEROES 0x0040
#define NBD_FLAG_SEND_DF           0x0080
#define NBD_FLAG_CAN_MULTI_CONN    0x0100
#define NBD_FLAG_SEND_RESIZE       0x0200
#define NBD_FLAG_SEND_CACHE        0x0400
#define NBD_FLAG_SEND_FAST_ZERO    0x0800
#define NBD_FLAG_BLOCK_STATUS_PAYLOAD 0x1000 /* extended headers only; unused by us */

/* Commands and command flags. */
enum {
  NBD_CMD_READ = 0, NBD_CMD_WRITE = 1, NBD_CMD_DISC = 2, NBD_CMD_FLUSH = 3,
  NBD_CMD_TRIM = 4, NBD_CMD_CACHE = 5, NBD_CMD_WRITE_ZEROES = 6, NBD_CMD_BLOCK_STATUS = 7,
};
#define NBD_CMD_FLAG_FUA       0x0001
#define NBD_CMD_FLAG_NO_HOLE   0x0002
#define NBD_CMD_FLAG_DF        0x0004
#define NBD_CMD_FLAG_REQ_ONE   0x0008
#define NBD_CMD_FLAG_FAST_ZERO 0x0010
#define NBD_CMD_FLAG_PAYLOAD_LEN 0x0020 /* extended headers: length is a payload length */

/* Structured reply chunks. */
#define NBD_REPLY_FLAG_DONE 0x0001
enum {
  NBD_REPLY_TYPE_NONE = 0, NBD_REPLY_TYPE_OFFSET_DATA = 1, NBD_REPLY_TYPE_OFFSET_HOLE = 2,
  NBD_REPLY_TYPE_BLOCK_STATUS = 5, NBD_REPLY_TYPE_BLOCK_STATUS_EXT = 6,
  NBD_REPLY_TYPE_ERROR = 0x8001, NBD_REPLY_TYPE_ERROR_OFFSET = 0x8002,
};
#define NBD_REPLY_TYPE_IS_ERR(t) (((t) & 0x8000) != 0)

/* base:allocation status bits. */
#define NBD_STATE_HOLE 0x1
#define NBD_STATE_ZERO 0x2

/* Wire error values. */
enum {
  NBD_EPERM = 1, NBD_EIO = 5, NBD_ENOMEM = 12, NBD_EINVAL = 22, NBD_ENOSPC = 28,
  NBD_EOVERFLOW = 75, NBD_ENOTSUP = 95, NBD_ESHUTDOWN = 108,
};

/* Sizes of fixed wire structures. */
#define NBD_OLDSTYLE_GREETING_LEN 152
#define NBD_OPT_HDR_LEN       16
#define NBD_OPT_REPLY_HDR_LEN 20
#define NBD_REQUEST_LEN       28
#define NBD_SIMPLE_REPLY_LEN  16
#define NBD_CHUNK_HDR_LEN     20
#define NBD_EXT_REQUEST_LEN   32
#define NBD_EXT_REPLY_LEN     32

/* Limits we hold servers to (anything larger is a violation, never allocated). */
#define NBD_MAX_STRING       4096        /* export names, descriptions, messages */
#define NBD_MAX_OPT_REPLY    (4 + 2 * NBD_MAX_STRING + 64)
#define NBD_MAX_PAYLOAD      (UINT32_C(32) << 20) /* portable READ/WRITE cap */
#define NBD_MAX_BS_PAYLOAD   (UINT32_C(8) << 20)  /* block status payload cap */
/* The same 2^20 extents in the 16-byte descriptors of BLOCK_STATUS_EXT. */
#define NBD_MAX_BS_EXT_PAYLOAD (UINT32_C(16) << 20)

/* Big-endian helpers. */
static inline uint16_t nbd_get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t nbd_get32(const uint8_t *p)
{
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint64_t nbd_get64(const uint8_t *p)
{
  return (uint64_t)nbd_get32(p) << 32 | nbd_get32(p + 4);
}
static inline void nbd_put16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = (uint8_t)v; }
static inline void nbd_put32(uint8_t *p, uint32_t v)
{
  p[0] = v >> 24; p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}
static inline void nbd_put64(uint8_t *p, uint64_t v)
{
  nbd_put32(p, (uint32_t)(v >> 32)); nbd_put32(p + 4, (uint32_t)v);
}

/* ---- handshake phase ---- */

/* Encode an option request header (magic, option, data length). */
void nbd_encode_opt_header(uint8_t out[NBD_OPT_HDR_LEN], uint32_t opt, uint32_t len);

struct nbd_opt_reply {
  uint32_t opt;
  uint32_t type;
  uint32_t len;
};
/* Decode an option reply header.  Returns 0, or -1 on bad magic. */
int nbd_decode_opt_reply(const uint8_t in[NBD_OPT_REPLY_HDR_LEN], struct nbd_opt_reply *r);

/* Largest payload we accept for a reply of this type (0 for ACK). */
uint32_t nbd_opt_reply_cap(uint32_t type);

/* Build the data of NBD_OPT_GO / NBD_OPT_INFO: name, then the info requests.
 * Returns the length written, or -1 when out is too small. */
int nbd_encode_info_request(uint8_t *out, size_t outlen, const char *name, size_t namelen,
                            const uint16_t *infos, unsigned ninfos);

/* Build the data of NBD_OPT_SET/LIST_META_CONTEXT for one export and queries. */
int nbd_encode_meta_request(uint8_t *out, size_t outlen, const char *name, size_t namelen,
                            const char *const *queries, unsigned nqueries);

/* What NBD_REP_INFO replies taught us about an export. */
struct nbd_export_info {
  uint64_t size;
  uint16_t tflags;
  bool have_export;
  bool have_block_size;
  uint32_t min_block, pref_block, max_block;
  uint32_t max_block_advertised; /* as the server sent it (max_block is capped) */
  char *name;          /* canonical name (INFO_NAME), malloc'd, or NULL */
  char *description;   /* INFO_DESCRIPTION, malloc'd, or NULL */
};

/* Apply one NBD_REP_INFO payload to info.  Returns 0 (also for unknown types,
 * which are ignored), -1 on a malformed payload, -2 on allocation failure. */
int nbd_parse_info_reply(const uint8_t *p, uint32_t len, struct nbd_export_info *info);

/* Check block-size constraints (power-of-two minimum <= 64 KiB, preferred >=
 * minimum, maximum >= preferred).  Returns NULL when valid, else a reason. */
const char *nbd_check_block_sizes(uint32_t min, uint32_t pref, uint32_t max);

/* Parse an NBD_REP_SERVER payload (LIST).  name points into p. */
int nbd_parse_server_reply(const uint8_t *p, uint32_t len, const uint8_t **name,
                           uint32_t *namelen, const uint8_t **desc, uint32_t *desclen);

/* Parse an NBD_REP_META_CONTEXT payload. */
int nbd_parse_meta_reply(const uint8_t *p, uint32_t len, uint32_t *id,
                         const uint8_t **name, uint32_t *namelen);

/* Parse the 152-byte oldstyle greeting (after the two magics were checked). */
void nbd_parse_oldstyle(const uint8_t in[NBD_OLDSTYLE_GREETING_LEN], uint64_t *size,
                        uint16_t *tflags);

/* Human-readable name of an option, reply type or command (for errors). */
const char *nbd_opt_name(uint32_t opt);
const char *nbd_rep_name(uint32_t type);
const char *nbd_cmd_name(uint16_t cmd);

/* ---- transmission phase ---- */

/* What the reply headers of a connection look like, as negotiated. */
enum nbd_reply_mode {
  NBD_REPLIES_SIMPLE,      /* 16-byte simple replies only */
  NBD_REPLIES_STRUCTURED,  /* simple replies and 20-byte chunks */
  NBD_REPLIES_EXTENDED,    /* 32-byte extended chunks only (and 32-byte requests) */
};

struct nbd_request {
  uint16_t flags;
  uint16_t type;
  uint64_t cookie;
  uint64_t offset;
  uint64_t count;     /* compact requests carry only the low 32 bits: callers split */
};
/* The 28-byte compact request header. */
void nbd_encode_request(uint8_t out[NBD_REQUEST_LEN], const struct nbd_request *rq);
/* The 32-byte extended request header; a WRITE gets NBD_CMD_FLAG_PAYLOAD_LEN,
 * which the spec demands, so count is its payload length. */
void nbd_encode_ext_request(uint8_t out[NBD_EXT_REQUEST_LEN], const struct nbd_request *rq);

/* A reply header: a simple reply, a structured chunk header or an
 * extended chunk header. */
struct nbd_reply {
  bool structured;    /* a chunk (structured or extended) */
  bool extended;      /* an extended chunk: offset and length64 are valid */
  uint16_t flags;     /* chunk flags (DONE) */
  uint16_t type;      /* chunk type */
  uint32_t error;     /* simple reply error */
  uint64_t cookie;
  uint64_t offset;    /* extended: must be the request's offset */
  uint64_t length64;  /* extended: the length as sent */
  uint32_t length;    /* chunk payload length (extended: UINT32_MAX when length64 does not fit) */
};

/* How long the header that starts with this magic is in this mode: 16 for
 * a simple reply (not in extended mode), 20 for a structured chunk (only in
 * structured mode), 32 for an extended chunk (only in extended mode), 0 for
 * a magic that is a violation here. */
size_t nbd_reply_header_len(const uint8_t magic[4], enum nbd_reply_mode mode);

/* Decode a reply header whose magic nbd_reply_header_len accepted. */
void nbd_decode_reply(const uint8_t *in, struct nbd_reply *r);

/* Verdicts about a chunk. */
enum nbd_verdict {
  NBD_OK = 0,
  NBD_FAIL = -1,  /* fail this request, the stream is still in sync */
  NBD_KILL = -2,  /* the stream cannot be trusted: drop the connection */
};

/* Check a chunk header against the command it answers before reading its
 * payload: is the type allowed for this command, is the length sane?
 * KILL for unknown non-error types and oversize lengths; FAIL for a known
 * type that does not belong to the command (its payload must be skipped). */
enum nbd_verdict nbd_check_chunk(const struct nbd_reply *r, uint16_t cmd, uint64_t req_count);

/* The fields only an extended header has, for a reply to a request at
 * req_off: KILL for a length that cannot be a payload (2^32 or more: the
 * spec lets us hang up, and nothing we could allocate) or an offset that is
 * not the request's (the server has lost track of what it answers). */
enum nbd_verdict nbd_check_ext_reply(const struct nbd_reply *r, uint64_t req_off);

/* Parse an ERROR / ERROR_OFFSET (or unknown error-class) chunk payload.
 * The error value is returned raw; msg points into p.  For ERROR_OFFSET,
 * *offset receives the offset, which the caller checks against the request. */
enum nbd_verdict nbd_parse_error_chunk(const uint8_t *p, uint32_t len, uint16_t type,
                                       uint32_t *error, const uint8_t **msg,
                                       uint16_t *msglen, uint64_t *offset);

/* Validate an OFFSET_DATA (given its 8-byte offset prefix) or OFFSET_HOLE
 * chunk against the request range [req_off, req_off+req_count).  On success
 * *off and *len give the covered range. */
enum nbd_verdict nbd_parse_offset_data(const uint8_t prefix[8], uint32_t chunk_len,
                                       uint64_t req_off, uint32_t req_count,
                                       uint64_t *off, uint32_t *len);
enum nbd_verdict nbd_parse_offset_hole(const uint8_t *p, uint32_t chunk_len,
                                       uint64_t req_off, uint32_t req_count,
                                       uint64_t *off, uint32_t *len);

/* How many content chunks (OFFSET_DATA and OFFSET_HOLE) one READ of count
 * bytes may take.  Real servers send one chunk per extent, and extents are
 * at least 512 bytes (the smallest sector; file systems and image formats
 * use 4 KiB or more), except that a request not aligned to the server's
 * extents may cut one partial extent at each end: hence count/512 + 2.
 * Small reads may always take 1024 chunks, whatever their size.  A hostile
 * server answering a READ with tiny chunks (1 byte each, in an order that
 * keeps many ranges apart) gets the read failed after this many instead of
 * costing us time and memory per byte. */
#define NBD_MAX_CHUNKS_PER_READ(count) \
  ((uint64_t)(count) / 512 + 2 > 1024 ? (uint64_t)(count) / 512 + 2 : UINT64_C(1024))

/* Coverage of a READ by content chunks: detects overlap and gaps.  Most
 * reads arrive in one chunk, so a few ranges live inline. */
struct nbd_coverage {
  uint32_t n, cap;     /* disjoint ranges in r (sorted, never touching) */
  struct { uint32_t start, end; } inl[4], *r;
  uint64_t covered;    /* bytes covered: the read is complete when == count */
  uint32_t chunks;     /* calls to nbd_coverage_add; UINT32_MAX after -3 */
};
void nbd_coverage_init(struct nbd_coverage *c);
void nbd_coverage_free(struct nbd_coverage *c);
/* Add [start, end) relative to the request.  Returns 0, or
 *   -1 when it overlaps something already covered (or is empty: the
 *      parsers never pass one),
 *   -2 on allocation failure,
 *   -3 when this is one chunk too many: more than
 *      NBD_MAX_CHUNKS_PER_READ(covered) calls so far, counting this one and
 *      the bytes it would add.  covered never exceeds the request's count,
 *      so this is at least as strict as NBD_MAX_CHUNKS_PER_READ(count), and
 *      needs no count; a legitimate server (chunks of 512 bytes or more,
 *      except at the ends) never reaches it.  Once -3, always -3.
 * Any non-zero return must fail the read.  Finding the place is a binary
 * search and calls beyond the cap are O(1), so a READ costs at most
 * cap * (log + one memmove of the ranges): nothing for reads up to 1 MiB,
 * about 0.2 s for a 32 MiB one answered in the worst order (512-byte
 * chunks a byte apart, last first), against half a minute for 512 KiB of
 * 1-byte chunks before the cap. */
int nbd_coverage_add(struct nbd_coverage *c, uint32_t start, uint32_t end);

/* One extent of a base:allocation answer. */
struct nbd_extent {
  uint64_t length;
  uint32_t flags;
};

/* Parse a BLOCK_STATUS chunk.  Extents are clamped to the request (the last
 * one may run past it), checked for zero length and for earlier extents that
 * already reach the end.  At most max_out extents are stored; *n_out tells
 * how many.  Returns NBD_OK / NBD_FAIL. */
enum nbd_verdict nbd_parse_block_status(const uint8_t *p, uint32_t len, uint64_t req_count,
                                        bool req_one, uint32_t *ctx_id,
                                        struct nbd_extent *out, uint32_t max_out,
                                        uint32_t *n_out);

/* The same for a BLOCK_STATUS_EXT chunk (extended headers): a context id,
 * a descriptor count that must be non-zero and match the length exactly,
 * then 64-bit lengths and statuses.  Status bits above 31 are dropped (the
 * spec keeps them zero for base:allocation). */
enum nbd_verdict nbd_parse_block_status_ext(const uint8_t *p, uint32_t len, uint64_t req_count,
                                            bool req_one, uint32_t *ctx_id,
                                            struct nbd_extent *out, uint32_t max_out,
                                            uint32_t *n_out);

/* Map a wire error value to an errno (unknown values map to EINVAL). */
int nbd_errno(uint32_t error);

/* Copy s into out for logging: control and non-ASCII bytes become '?' or
 * escapes, so a hostile server cannot write terminal escapes into our log. */
void nbd_sanitize(char *out, size_t outlen, const uint8_t *s, size_t len);

#endif
