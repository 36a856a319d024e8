#!/usr/bin/env python3
"""Write the hand-made seed corpus for the fuzz harnesses (tests/fuzz/corpus/).

Each seed is a valid (or interestingly invalid) server byte stream, prefixed
with the harness's mode byte.  Run it again after changing a seed; files it
does not write (crash inputs added later) are left alone.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
OLDSTYLE = 0x0000420281861253
REPMAGIC = 0x0003E889045565A9
SIMPLE = 0x67446698
CHUNK = 0x668E33EF
EXT_REPLY = 0x6E8A278C
DONE = 1

OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_INFO, OPT_GO, OPT_SR, OPT_SET_META = 1, 2, 3, 6, 7, 8, 10
OPT_STARTTLS = 5
OPT_EH = 11
ERR_EXT_HEADER_REQD = 0x8000000A
REP_ACK, REP_SERVER, REP_INFO, REP_META = 1, 2, 3, 4
ERR_UNSUP, ERR_POLICY, ERR_UNKNOWN = 0x80000001, 0x80000002, 0x80000006
T_NONE, T_DATA, T_HOLE, T_BS, T_ERR, T_ERR_OFF = 0, 1, 2, 5, 0x8001, 0x8002
T_BS_EXT = 6


def cookie(k):
    return (k + 1) << 32 | k


def simple(err, ck, data=b""):
    return struct.pack(">IIQ", SIMPLE, err, ck) + data


def chunk(flags, typ, ck, payload):
    return struct.pack(">IHHQI", CHUNK, flags, typ, ck, len(payload)) + payload


def xchunk(flags, typ, ck, off, payload, length=None):
    """An extended reply chunk: off must be the request's offset."""
    n = len(payload) if length is None else length
    return struct.pack(">IHHQQQ", EXT_REPLY, flags, typ, ck, off, n) + payload


def data(flags, ck, off, n):
    return chunk(flags, T_DATA, ck, struct.pack(">Q", off) + bytes((off + i) & 0xFF for i in range(n)))


def hole(flags, ck, off, n):
    return chunk(flags, T_HOLE, ck, struct.pack(">QI", off, n))


def none(ck):
    return chunk(DONE, T_NONE, ck, b"")


def err(flags, ck, e, msg=b"", off=None):
    p = struct.pack(">IH", e, len(msg)) + msg
    if off is not None:
        return chunk(flags, T_ERR_OFF, ck, p + struct.pack(">Q", off))
    return chunk(flags, T_ERR, ck, p)


def bs(flags, ck, ctx, extents):
    return chunk(flags, T_BS, ck, struct.pack(">I", ctx) + b"".join(struct.pack(">II", l, f) for l, f in extents))


def rep(opt, typ, payload=b""):
    return struct.pack(">QIII", REPMAGIC, opt, typ, len(payload)) + payload


def greeting(flags):
    return struct.pack(">QQH", NBDMAGIC, IHAVEOPT, flags)


def info_export(opt, size, tflags):
    return rep(opt, REP_INFO, struct.pack(">HQH", 0, size, tflags))


def info_bs(opt, mn, pref, mx):
    return rep(opt, REP_INFO, struct.pack(">HIII", 3, mn, pref, mx))


def info_str(opt, typ, s):
    return rep(opt, REP_INFO, struct.pack(">H", typ) + s)


def meta(ctx, name):
    return rep(OPT_SET_META, REP_META, struct.pack(">I", ctx) + name)


def server(name, desc=b""):
    return rep(OPT_LIST, REP_SERVER, struct.pack(">I", len(name)) + name + desc)


def write(sub, name, payload):
    d = os.path.join(HERE, "corpus", sub)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(payload)


# ---- reply harness: mode byte (bit0 SR, bit1 REQ_ONE, bit2 big READ, bit3 ctx id 1) ----
# Commands: 0 READ 0+4096, 1 WRITE 4096+512, 2 BLOCK_STATUS 0+65536, 3 FLUSH,
# 4 READ 0x10000+512, 5 TRIM 0+1M, 6 WRITE_ZEROES, 7 READ 1M+128K (bit 2).
def all_simple():
    return (simple(0, cookie(1)) + simple(0, cookie(0), bytes(i & 0xFF for i in range(4096)))
            + simple(0, cookie(3)) + simple(5, cookie(2)) + simple(0, cookie(4), b"\x55" * 512)
            + simple(22, cookie(5)) + simple(28, cookie(6)))


write("reply", "simple-all", bytes([0]) + all_simple())
write("reply", "simple-big-read", bytes([4]) + all_simple() + simple(0, cookie(7), b"\xaa" * 131072))
write("reply", "simple-errors-only", bytes([0]) + b"".join(simple(e, cookie(k)) for k, e in
                                                          enumerate([1, 5, 12, 22, 28, 75, 95])))
write("reply", "simple-eof-mid-data", bytes([0]) + simple(0, cookie(0), b"\x01" * 100))
write("reply", "simple-bad-magic", bytes([0]) + simple(0, cookie(3)) + struct.pack(">I", 0x12560953) + b"\0" * 12)

sr = (data(0, cookie(0), 0, 2048) + hole(0, cookie(0), 2048, 2048) + none(cookie(0))
      + none(cookie(1))
      + bs(0, cookie(2), 0, [(4096, 0), (61440, 3)]) + none(cookie(2))
      + simple(0, cookie(3))
      + data(DONE, cookie(4), 0x10000, 512)
      + err(DONE, cookie(5), 95, b"trim not supported")
      + err(DONE, cookie(6), 28, b"full", off=(1 << 64) - 4096 + 512))
write("reply", "sr-all", bytes([1]) + sr)
write("reply", "sr-reqone-ctx1", bytes([1 | 2 | 8]) + data(DONE, cookie(0), 0, 4096) + none(cookie(1))
      + bs(DONE, cookie(2), 1, [(512, 1)]) + none(cookie(3)) + hole(DONE, cookie(4), 0x10000, 512)
      + none(cookie(5)) + none(cookie(6)))
big = b"".join(data(0, cookie(7), (1 << 20) + i * 32768, 32768) for i in range(3, -1, -1)) + none(cookie(7))
write("reply", "sr-big-read", bytes([1 | 4]) + sr + big)
write("reply", "sr-interleaved", bytes([1]) + data(0, cookie(0), 1024, 3072) + data(0, cookie(4), 0x10000, 256)
      + data(DONE, cookie(0), 0, 1024) + hole(DONE, cookie(4), 0x10000 + 256, 256)
      + chunk(0, T_DATA, 0xDEADBEEF00000000, b"\0" * 100) + err(DONE, cookie(1), 1, b"read-only"))
write("reply", "sr-gap-overlap", bytes([1]) + data(0, cookie(0), 0, 2048) + data(DONE, cookie(0), 1024, 2048)
      + data(DONE, cookie(4), 0x10000, 256) + err(0, cookie(1), 0) + none(cookie(1)))
write("reply", "simple-eshutdown", bytes([0]) + simple(0, cookie(1)) + simple(108, cookie(3))
      + simple(0, cookie(0), b"\x02" * 4096) + simple(5, cookie(2)))
write("reply", "sr-eshutdown", bytes([1]) + err(DONE, cookie(5), 108, b"going down") + none(cookie(1))
      + data(DONE, cookie(0), 0, 4096) + none(cookie(3)))
write("reply", "sr-unknown-type", bytes([1]) + none(cookie(3)) + chunk(DONE, 3, cookie(0), b"\0" * 4))
write("reply", "sr-chunk-when-off", bytes([0]) + none(cookie(3)))

# ---- reply harness, extended headers (bit 4): commands 7 WRITE_ZEROES 1M+6G,
# 8 BLOCK_STATUS 1M+6G (bit 2 off), each reply header carries its request's offset.
def xd(flags, ck, req_off, off, n):
    return xchunk(flags, T_DATA, ck, req_off, struct.pack(">Q", off) + bytes((off + i) & 0xFF for i in range(n)))


def xbs(flags, ck, req_off, ctx, extents, count=None):
    n = len(extents) if count is None else count
    return xchunk(flags, T_BS_EXT, ck, req_off, struct.pack(">II", ctx, n)
                  + b"".join(struct.pack(">QQ", l, f) for l, f in extents))


def xnone(ck, req_off):
    return xchunk(DONE, T_NONE, ck, req_off, b"")


def xerr(flags, ck, req_off, e, msg=b""):
    return xchunk(flags, T_ERR, ck, req_off, struct.pack(">IH", e, len(msg)) + msg)


G6 = 6 << 30
x_all = (xd(0, cookie(0), 0, 0, 2048) + xchunk(0, T_HOLE, cookie(0), 0, struct.pack(">QI", 2048, 2048))
         + xnone(cookie(0), 0) + xnone(cookie(1), 4096)
         + xbs(DONE, cookie(2), 0, 0, [(4096, 0), (61440, 3)])
         + xnone(cookie(3), 0) + xd(DONE, cookie(4), 0x10000, 0x10000, 512)
         + xerr(DONE, cookie(5), 0, 95, b"no trim") + xnone(cookie(6), (1 << 64) - 4096)
         + xerr(DONE, cookie(7), 1 << 20, 75, b"too big")
         + xbs(DONE, cookie(8), 1 << 20, 0, [(5 << 30, 1 | 2), (1 << 40, 0)]))
write("reply", "ext-all", bytes([16]) + x_all)
write("reply", "ext-reqone", bytes([16 | 2 | 8]) + xbs(DONE, cookie(2), 0, 1, [(512, 1)])
      + xbs(DONE, cookie(8), 1 << 20, 1, [(G6, 3)]) + xnone(cookie(7), 1 << 20))
write("reply", "ext-bs-count-mismatch", bytes([16]) + xbs(DONE, cookie(8), 1 << 20, 0, [(4096, 0)], count=2)
      + xbs(DONE, cookie(2), 0, 0, [], count=0) + xnone(cookie(3), 0))
write("reply", "ext-bs-zero-extent", bytes([16]) + xbs(DONE, cookie(8), 1 << 20, 0, [(0, 0), (4096, 0)])
      + xbs(DONE, cookie(2), 0, 0, [(65536, 0), (4096, 0)]) + xnone(cookie(3), 0))
write("reply", "ext-bs-wrap", bytes([16]) + xbs(DONE, cookie(8), 1 << 20, 0, [((1 << 64) - 1, 0), (2, 0)]))
write("reply", "ext-compact-bs", bytes([16]) + xchunk(DONE, T_BS, cookie(2), 0, struct.pack(">III", 0, 4096, 0))
      + xnone(cookie(3), 0))
write("reply", "ext-wrong-offset", bytes([16]) + xnone(cookie(3), 0) + xnone(cookie(1), 0))
write("reply", "ext-huge-length", bytes([16]) + xnone(cookie(3), 0)
      + xchunk(DONE, T_DATA, cookie(0), 0, b"", length=1 << 32))
write("reply", "ext-simple-mixed", bytes([16]) + xnone(cookie(3), 0) + simple(0, cookie(1)))
write("reply", "ext-structured-mixed", bytes([16]) + xnone(cookie(3), 0) + none(cookie(1)))
write("reply", "sr-ext-magic", bytes([1]) + none(cookie(3)) + xnone(cookie(1), 4096))


# ---- handshake harness: mode byte (bit0 SR, bit1 block status, bit2 export "disk",
# bit3 LIST, bit4 LIST+INFO); after GO the transmission phase: READ 0+1024 (cookie(0)),
# WRITE 512+512 (cookie(1)). ----
def go_ok(size=1 << 20, tflags=0x4D, name=b"disk"):
    return (info_bs(OPT_GO, 512, 4096, 1 << 20) + info_str(OPT_GO, 1, name)
            + info_export(OPT_GO, size, tflags) + info_str(OPT_GO, 2, b"a test disk") + rep(OPT_GO, REP_ACK))


# Extended headers (mode bit 7 with bit 0).
def xgo_ok():
    return rep(OPT_EH, REP_ACK) + meta(1, b"base:allocation") + rep(OPT_SET_META, REP_ACK) + go_ok()


x_tx = (xchunk(0, T_DATA, cookie(0), 0, struct.pack(">Q", 0) + b"\x33" * 512)
        + xchunk(DONE, T_HOLE, cookie(0), 0, struct.pack(">QI", 512, 512))
        + xchunk(DONE, T_NONE, cookie(1), 512, b""))
write("handshake", "ext-go", bytes([0x80 | 1 | 2 | 4]) + greeting(3) + xgo_ok() + x_tx)
write("handshake", "ext-unsup-sr", bytes([0x80 | 1 | 2 | 4]) + greeting(3) + rep(OPT_EH, ERR_UNSUP)
      + rep(OPT_SR, REP_ACK) + meta(1, b"base:allocation") + rep(OPT_SET_META, REP_ACK) + go_ok()
      + data(0, cookie(0), 0, 512) + hole(DONE, cookie(0), 512, 512) + none(cookie(1)))
write("handshake", "ext-reqd-go", bytes([0x80 | 1 | 4]) + greeting(3) + rep(OPT_EH, ERR_UNSUP)
      + rep(OPT_SR, REP_ACK) + rep(OPT_GO, ERR_EXT_HEADER_REQD) + rep(OPT_EH, REP_ACK) + go_ok() + x_tx)
write("handshake", "ext-reqd-meta", bytes([0x80 | 1 | 2 | 4]) + greeting(3) + rep(OPT_EH, ERR_UNSUP)
      + rep(OPT_SR, REP_ACK) + rep(OPT_SET_META, ERR_EXT_HEADER_REQD) + xgo_ok() + x_tx)
write("handshake", "ext-go-unsup", bytes([0x80 | 1 | 4]) + greeting(3) + rep(OPT_EH, REP_ACK)
      + rep(OPT_GO, ERR_UNSUP))
write("handshake", "ext-simple-reply", bytes([0x80 | 1 | 4]) + greeting(3) + rep(OPT_EH, REP_ACK) + go_ok()
      + simple(0, cookie(1)))

sr_tx = data(0, cookie(0), 0, 512) + hole(DONE, cookie(0), 512, 512) + none(cookie(1))
simple_tx = simple(0, cookie(0), b"\x11" * 1024) + simple(0, cookie(1))
write("handshake", "go-full", bytes([1 | 2 | 4]) + greeting(3) + rep(OPT_SR, REP_ACK)
      + meta(7, b"base:allocation") + rep(OPT_SET_META, REP_ACK) + go_ok() + sr_tx)
write("handshake", "go-default-export", bytes([1 | 2]) + greeting(3) + rep(OPT_SR, REP_ACK)
      + meta(0, b"base:allocation") + rep(OPT_SET_META, REP_ACK) + go_ok(name=b"") + sr_tx)
write("handshake", "go-plain", bytes([4]) + greeting(1) + info_export(OPT_GO, 4096, 1) + rep(OPT_GO, REP_ACK)
      + simple_tx)
write("handshake", "go-sr-unsup", bytes([1 | 2 | 4]) + greeting(3) + rep(OPT_SR, ERR_UNSUP, b"no")
      + go_ok() + simple_tx)
write("handshake", "export-name-nozeroes", bytes([4]) + greeting(3) + rep(OPT_GO, ERR_UNSUP)
      + struct.pack(">QH", 1 << 20, 1) + simple_tx)
write("handshake", "export-name-zeroes", bytes([1 | 4]) + greeting(1) + rep(OPT_SR, REP_ACK)
      + rep(OPT_GO, ERR_UNSUP) + struct.pack(">QH", 1 << 20, 1) + b"\0" * 124 + sr_tx)
write("handshake", "nonfixed-newstyle", bytes([4]) + greeting(0) + struct.pack(">QH", 1 << 20, 1) + b"\0" * 124
      + simple_tx)
write("handshake", "oldstyle", bytes([0]) + struct.pack(">QQQI", NBDMAGIC, OLDSTYLE, 1 << 20, 1) + b"\0" * 124
      + simple_tx)
write("handshake", "unknown-export", bytes([4]) + greeting(1) + rep(OPT_GO, ERR_UNKNOWN, b"no such export")
      + rep(OPT_ABORT, REP_ACK))
write("handshake", "list", bytes([8]) + greeting(1) + server(b"a", b"first") + server(b"")
      + server(b"b/c") + rep(OPT_LIST, REP_ACK) + rep(OPT_ABORT, REP_ACK))
write("handshake", "list-info", bytes([8 | 16]) + greeting(1) + server(b"a") + server(b"b") + rep(OPT_LIST, REP_ACK)
      + info_export(OPT_INFO, 4096, 1) + rep(OPT_INFO, REP_ACK) + rep(OPT_INFO, ERR_UNKNOWN)
      + rep(OPT_ABORT, REP_ACK))

# bit 5: TLS if offered, bit 6: TLS required (the TLS handshake itself cannot succeed here).
write("handshake", "tls-on-refused", bytes([0x20 | 1 | 2 | 4]) + greeting(3) + rep(OPT_STARTTLS, ERR_UNSUP)
      + rep(OPT_SR, REP_ACK) + meta(1, b"base:allocation") + rep(OPT_SET_META, REP_ACK) + go_ok() + sr_tx)
write("handshake", "tls-required-refused", bytes([0x40 | 4]) + greeting(3) + rep(OPT_STARTTLS, ERR_POLICY, b"no")
      + rep(OPT_ABORT, REP_ACK))
write("handshake", "tls-required-ack", bytes([0x40 | 4]) + greeting(3) + rep(OPT_STARTTLS, REP_ACK)
      + b"\x16\x03\x03\x00\x05hello")
write("handshake", "tls-list-refused", bytes([0x40 | 8]) + greeting(1) + rep(OPT_STARTTLS, ERR_POLICY))

# ---- uri harness: URIs, export names and file names ----
uris = [
    b"nbd://example.com", b"nbd://h/disk", b"nbd://h//disk", b"nbd://h/a%2Fb", b"nbd://h/%3Fx%23y",
    b"nbd+unix:///.?socket=s", b"nbds://alice@[2001:db8::5]:10810/vm-1?tls-type=psk&tls-psk-file=/etc/nbd/keys.psk",
    b"nbds+unix:///disk?socket=/run/nbd.sock&tls-hostname=nbd.example.com", b"nbd+unix:///?socket=%00/abstract",
    b"nbd+vsock://2/", b"nbd://[fe80::1%25eth0]:99/d", b"NBD://h:/x?x-a=1&&tls-verify-peer=false",
    b"nbd://h/disk#frag", b"%64isk", b"a%2Fb%2E%2E", b"..",
]
for i, u in enumerate(uris):
    write("uri", "seed-%02d" % i, u)
# Regressions found by fuzzing and review: control characters in a rejected
# URI (the reason must stay one printable line), and URIs that
# nbd_uri_format did not write back faithfully.
write("uri", "regress-newline-in-scheme", b"2" + b"\xff" * 7 + b"\n" * 33 + b"\xff.://`")
write("uri", "regress-escape-in-key", b"nbd://h/?x\x1b[2J=1")
write("uri", "regress-zone-id", b"nbd://[fe80::1%25eth0]:99/d")
write("uri", "regress-at-in-user", b"nbd://b%40b@h/x")
write("uri", "regress-long-escaped-export", b"nbd://h/" + b"%25" * 4096)
write("uri", "regress-long-host", b"nbD://examp" + b"\x18" * 3 + b"\x1c\x18" + b"\x04" * 250 + b"e.com")

# ---- partition harness: mode byte (bit0 sparse disk: size, head length,
# head at offset 0, tail at the end; bit1 read (mode >> 4) + 1 fails) ----
import uuid
import zlib

LINUX_FS = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"


def plain(disk):
    return bytes([0]) + bytes(disk)


def sparse(disk, head, tail, mode=1):
    """Only the first head and last tail bytes of disk are stored."""
    return bytes([mode]) + struct.pack("<QI", len(disk), head) + bytes(disk[:head]) + bytes(disk[len(disk) - tail:])


def ends(disk, mode=1):
    """A 512-byte-sector GPT with a one-sector entry array: only its tables."""
    return sparse(disk, 3 * 512, 2 * 512, mode)


def mbr_entry(typ, start, n, boot=0):
    return struct.pack("<B3sB3sII", boot, b"\0" * 3, typ, b"\0" * 3, start, n)


def put_mbr(disk, lba, entries):
    s = b"".join(entries).ljust(64, b"\0")
    disk[lba * 512 + 446:lba * 512 + 512] = s + b"\x55\xaa"


def gpt_entry(typ, uid, first, last, name):
    return (uuid.UUID(typ).bytes_le + uuid.UUID(uid).bytes_le + struct.pack("<QQQ", first, last, 0)
            + name.encode("utf-16-le").ljust(72, b"\0"))


def gpt_header(my, alt, first, last, entries, count, crc):
    h = struct.pack("<8sIII4xQQQQ16sQIII", b"EFI PART", 0x10000, 92, 0, my, alt, first, last,
                    b"\xa5" * 16, entries, count, 128, crc)
    return h[:16] + struct.pack("<I", zlib.crc32(h)) + h[20:]


def gpt_disk(ss, lbas, parts, count=4):
    """parts: (index, first, last, type, name); both headers and arrays."""
    disk = bytearray(ss * lbas)
    put_mbr(disk, 0, [mbr_entry(0xEE, 1, min(lbas - 1, 0xFFFFFFFF))])
    arr = bytearray(count * 128)
    for i, first, last, typ, name in parts:
        arr[i * 128:(i + 1) * 128] = gpt_entry(typ, "%08x-0000-4000-8000-00000000000%d" % (first, i), first, last, name)
    asec = (len(arr) + ss - 1) // ss
    crc, last_lba = zlib.crc32(arr), lbas - 1
    first_use, last_use = 2 + asec, lbas - 2 - asec
    disk[2 * ss:2 * ss + len(arr)] = arr
    disk[(last_lba - asec) * ss:(last_lba - asec) * ss + len(arr)] = arr
    disk[ss:ss + 92] = gpt_header(1, last_lba, first_use, last_use, 2, count, crc)
    disk[last_lba * ss:last_lba * ss + 92] = gpt_header(last_lba, 1, first_use, last_use, last_lba - asec, count, crc)
    return disk


TWO_GPT = [(0, 4, 19, ESP, "EFI system"), (1, 20, 35, LINUX_FS, "r\u00f6\u00f6t \U0001F600")]
g = gpt_disk(512, 40, TWO_GPT)
write("partition", "gpt-512", plain(g))
write("partition", "gpt-512-fix-crcs", bytes([4]) + bytes(g))  # the harness sets the CRCs right
write("partition", "gpt-512-unused-entry", ends(gpt_disk(512, 40, [(0, 4, 9, ESP, ""), (3, 10, 35, LINUX_FS, "x")])))
write("partition", "gpt-512-overlap", ends(gpt_disk(512, 40, [(0, 4, 20, ESP, ""), (1, 20, 35, LINUX_FS, "")])))
damaged = bytearray(g)
damaged[512 + 40] ^= 1
write("partition", "gpt-512-primary-damaged", ends(damaged))
damaged[512 * 39 + 41] ^= 1
write("partition", "gpt-512-both-damaged", ends(damaged))
bad_array = bytearray(g)
bad_array[2 * 512 + 3] ^= 1
write("partition", "gpt-512-bad-array-crc", ends(bad_array))
write("partition", "gpt-512-read-error", ends(g, mode=1 | 2 | 2 << 4))  # the array read fails
big = gpt_disk(512, 2048, [(0, 34, 1000, LINUX_FS, "big"), (1, 1001, 2000, LINUX_FS, "")])
big[512] = 0  # primary signature gone: the backup at the end of a 1 MiB disk
write("partition", "gpt-512-sparse-backup", ends(big))
write("partition", "gpt-512-sparse-backup-fix-crcs", ends(big, mode=1 | 4))
g4k = gpt_disk(4096, 256, [(0, 8, 99, ESP, "esp"), (2, 100, 250, LINUX_FS, "root")])
write("partition", "gpt-4k", sparse(g4k, 3 * 4096, 2 * 4096))
write("partition", "gpt-4k-fix-crcs", sparse(g4k, 3 * 4096, 2 * 4096, mode=1 | 4))
g4k[4096:4104] = b"EFI PARX"
write("partition", "gpt-4k-backup", sparse(g4k, 3 * 4096, 2 * 4096))


def mbr_disk(sectors, primaries, ebrs):
    """ebrs: (lba, logical (rel start, n) or None, link (rel to container) or None)."""
    disk = bytearray(512 * sectors)
    put_mbr(disk, 0, [mbr_entry(t, s, n, 0x80 if i == 0 else 0) for i, (t, s, n) in enumerate(primaries)])
    for lba, logical, link in ebrs:
        e = [mbr_entry(0x83, logical[0], logical[1]) if logical else mbr_entry(0, 0, 0)]
        if link is not None:
            e.append(mbr_entry(0x05, link, 2))
        put_mbr(disk, lba, e)
    return disk


PRIMS = [(0x83, 2, 4), (0x07, 6, 4), (0x0F, 10, 30)]
m = mbr_disk(40, PRIMS, [(10, (1, 9), 10), (20, (1, 19), None)])
write("partition", "mbr-logicals", sparse(m, 21 * 512, 0))
write("partition", "mbr-read-error", sparse(m, 21 * 512, 0, mode=1 | 2 | 1 << 4))  # the first EBR
write("partition", "mbr-ebr-loop", sparse(mbr_disk(40, PRIMS, [(10, (1, 9), 10), (20, (1, 9), 0)]), 21 * 512, 0))
write("partition", "mbr-logical-outside", sparse(mbr_disk(40, PRIMS, [(10, (1, 9), 10), (20, (1, 29), None)]),
                                                 21 * 512, 0))
write("partition", "mbr-overlap", sparse(mbr_disk(16, [(0x83, 1, 8), (0x83, 8, 8)], []), 512, 0))
write("partition", "mbr-empty-extended", sparse(mbr_disk(40, PRIMS, []), 11 * 512, 0))
fat = bytearray(1024)
fat[0:3], fat[3:11], fat[446:447] = b"\xeb\x3c\x90", b"mkfs.fat", b"\x29"
fat[510:512] = b"\x55\xaa"
write("partition", "fat-boot-sector", plain(fat))
write("partition", "no-table", plain(bytes(1024)))
write("partition", "tiny", plain(b"\x55\xaa" * 50))
