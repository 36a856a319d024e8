#!/usr/bin/env python3
"""fake-nbd-server.py: a scriptable NBD server for negative tests.

It speaks a real fixed-newstyle handshake (STRUCTURED_REPLY, SET/LIST_META_CONTEXT
with base:allocation, GO/INFO with INFO_EXPORT and INFO_BLOCK_SIZE, EXPORT_NAME,
LIST, ABORT) and serves an in-memory export, then misbehaves as --scenario says,
in ways real servers never do.  Standard library only.

  fake-nbd-server.py --socket PATH [--scenario NAME] [--size BYTES] [--no-sr]
                     [--extended off|on|required|late] [--refuse-big EINVAL|EOVERFLOW]
                     [--export NAME] [--bad-offset BYTES] [--log FILE]
  fake-nbd-server.py --print-pattern OFFSET LENGTH   (the export's initial bytes)

Handshake scenarios (the client must fail to mount, with one line of error):
  unknown-export         GO/EXPORT_NAME for any export -> NBD_REP_ERR_UNKNOWN
  oversized-option-reply option --oversized-opt (default 7, GO) is answered with a
                         0xffffffff-byte reply
  bad-greeting           an HTTP banner instead of NBDMAGIC
  ack-without-export     GO acknowledged without NBD_INFO_EXPORT
  handshake-eof          the connection closes right after the greeting
  handshake-stall        greeting, then silence (the client's connect timeout fires)
  info-huge-size         NBD_OPT_INFO (not GO) reports a size of 2^64 - 4096 bytes, which
                         is not a valid off_t (the client must not show it; GO is honest)
Transmission scenarios (the first READ that covers byte --bad-offset, default 0,
triggers them; other commands and other READs are served normally):
  bad-reply-magic        the reply starts with a bad magic
  wrong-cookie           a zero-error simple reply with a cookie never sent
  chunk-out-of-range     OFFSET_DATA outside the request (FAIL: connection stays)
  error-chunk            an NBD_REPLY_TYPE_ERROR chunk with EIO (FAIL)
  huge-chunk             a chunk header with length 0xfffffff0, then nothing
  unknown-chunk-type     a chunk of type 7
  close-mid-reply        half of the data, then the connection closes
  stall                  that READ is never answered (nor anything after it)
  garbage-after-ack      124 zero bytes right after GO's ACK
  stray-chunk            (structured) a chunk for a cookie never sent, then the real
                         reply: tolerated, the READ succeeds
  duplicate-reply        (structured) the real reply, then an error chunk for the
                         same, now retired, cookie: ignored, the READ succeeds
  tiny-chunks            (structured) the READ is answered with 1-byte OFFSET_DATA
                         chunks of the right data: every even offset ascending,
                         then every odd one, DONE on the last (a 512 KiB READ is
                         524288 chunks, 15 MB); without structured replies the READ
                         is served normally
  normal                 no misbehaviour
Extended-header scenarios (with --extended on|required; the same trigger):
  ext-simple-reply       a simple reply to that READ (forbidden: KILL)
  ext-structured-chunk   a compact structured chunk header (forbidden: KILL)
  ext-wrong-offset       an extended chunk whose offset is not the request's (KILL)
  ext-huge-length        an extended chunk header with a 2^32 + 8 length (KILL)

Extended headers (--extended): off (default) refuses NBD_OPT_EXTENDED_HEADERS
with UNSUP; on accepts it (32-byte requests and replies, BLOCK_STATUS_EXT);
required answers SET_META_CONTEXT, INFO and GO with NBD_REP_ERR_EXT_HEADER_REQD
until it was negotiated; late is required, but refuses the first
NBD_OPT_EXTENDED_HEADERS (so that a client asking first still meets
NBD_REP_ERR_EXT_HEADER_REQD).  Every TRIM, WRITE_ZEROES and BLOCK_STATUS is logged
as "CMD NAME OFFSET+COUNT".  --refuse-big ERR answers TRIM and WRITE_ZEROES
longer than the maximum block size (1 MiB) with that error, as the spec allows.

Export lists (--list MODE; every listed export serves the same disk):
  single (default)       just --export
  hostile                names real servers would not use: "/", "..", ".", "a/b",
                         "../x", escape sequences, "%41", "default", UTF-8, invalid
                         UTF-8, a 2000-byte and a 4096-byte name, a duplicate, a
                         name containing NUL (to be dropped), and the default export

Block status (--block-status MODE, on every BLOCK_STATUS, any scenario):
  data (default)         one extent covering the request, status 0
  tiny-holes             one 512-byte extent, hole+zero: a full scan needs many requests
  past-end               one extent of 0xffffffff bytes, hole+zero (must be clamped)
  zero-length            an extent of length 0
  wrong-context          a context id that was never negotiated
  error                  an error chunk (EIO)
  none                   no status chunk at all, just NONE+DONE
  two-chunks             two status chunks for the same context
  ext-count-mismatch     (extended) BLOCK_STATUS_EXT whose descriptor count says
                         one more than it carries
  ext-zero-count         (extended) BLOCK_STATUS_EXT with no descriptors
  ext-compact            (extended) a compact BLOCK_STATUS chunk
  ext-huge               (extended) one extent of 2^63 bytes (must be clamped)

Every event is logged (stderr, or --log) as one line.
"""
import argparse
import asyncio
import os
import signal
import struct
import sys

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPMAGIC = 0x0003E889045565A9
REQMAGIC = 0x25609513
EXT_REQMAGIC = 0x21E41C71
EXT_REPLY = 0x6E8A278C
SIMPLE = 0x67446698
CHUNK = 0x668E33EF

OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS, OPT_INFO, OPT_GO = 1, 2, 3, 5, 6, 7
OPT_STRUCTURED_REPLY, OPT_LIST_META, OPT_SET_META, OPT_EXTENDED_HEADERS = 8, 9, 10, 11
ERR_EXT_HEADER_REQD = 0x8000000A
F_PAYLOAD_LEN = 0x20
REP_ACK, REP_SERVER, REP_INFO, REP_META = 1, 2, 3, 4
ERR_UNSUP, ERR_POLICY, ERR_INVALID, ERR_UNKNOWN = 0x80000001, 0x80000002, 0x80000003, 0x80000006
INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE = 0, 1, 2, 3
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_CACHE, CMD_WRITE_ZEROES, CMD_BLOCK_STATUS = range(8)
T_NONE, T_DATA, T_HOLE, T_BS, T_BS_EXT, T_ERROR = 0, 1, 2, 5, 6, 0x8001
DONE = 1
F_HAS_FLAGS, F_SEND_FLUSH, F_SEND_FUA, F_SEND_TRIM, F_SEND_WRITE_ZEROES = 1, 4, 8, 0x20, 0x40
EIO, EINVAL, ENOSPC, EOVERFLOW = 5, 22, 28, 75
MAX_BLOCK = 1 << 20
BASE_ALLOC_ID = 1

HANDSHAKE_SCENARIOS = {"unknown-export", "oversized-option-reply", "bad-greeting", "ack-without-export",
                       "handshake-eof", "handshake-stall", "info-huge-size"}
TRANSMISSION_SCENARIOS = {"bad-reply-magic", "wrong-cookie", "chunk-out-of-range", "error-chunk",
                          "huge-chunk", "unknown-chunk-type", "close-mid-reply", "stall",
                          "garbage-after-ack", "stray-chunk", "duplicate-reply", "tiny-chunks", "normal",
                          "ext-simple-reply", "ext-structured-chunk", "ext-wrong-offset", "ext-huge-length"}
CMD_NAMES = {CMD_TRIM: "TRIM", CMD_WRITE_ZEROES: "WRITE_ZEROES", CMD_BLOCK_STATUS: "BLOCK_STATUS"}


HOSTILE_NAMES = [b"", b"disk", b"/", b"..", b".", b"a/b", b"../x", b"\x1b[2Jevil\x07", b"%41", b"default",
                 b"caf\xc3\xa9", b"\xff\xfe", b"dup", b"dup", b"nul\x00name", b"L" * 2000, b"M" * 4096,
                 b"tab\there", b"trailing space "]


def pattern(offset, length):
    """The export's initial contents: byte i is (i * 7 + i // 4096) & 0xff."""
    base = bytes((j * 7) & 0xFF for j in range(4096))  # 4096 * 7 is a multiple of 256
    first, last = offset >> 12, (offset + length + 4095) >> 12
    out = b"".join(base.translate(bytes((x + b) & 0xFF for x in range(256))) for b in range(first, last))
    start = offset - (first << 12)
    return out[start:start + length]


class Hangup(Exception):
    pass


class Server:
    def __init__(self, args):
        self.args = args
        self.disk = bytearray(pattern(0, args.size))
        self.logf = open(args.log, "a", buffering=1) if args.log else sys.stderr
        self.triggered = False
        self.bs_requests = 0

    def log(self, msg):
        print("fake-nbd-server: " + msg, file=self.logf, flush=True)

    async def run(self):
        if os.path.exists(self.args.socket):
            os.unlink(self.args.socket)
        srv = await asyncio.start_unix_server(self.client, path=self.args.socket)
        self.log("listening on %s, scenario %s" % (self.args.socket, self.args.scenario))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with srv:
            await stop.wait()
        self.log("stopped")

    async def client(self, reader, writer):
        self.nconn = getattr(self, "nconn", 0) + 1
        conn = Conn(self, reader, writer, self.nconn)
        try:
            await conn.handshake()
        except (Hangup, asyncio.IncompleteReadError, ConnectionError) as e:
            conn.log("connection ended (%s)" % (type(e).__name__,))
        finally:
            try:
                writer.close()
                await writer.wait_closed()
            except Exception:
                pass


class Conn:
    """One client connection; the export and the trigger are the server's."""

    def __init__(self, srv, reader, writer, n):
        self.srv, self.args, self.disk = srv, srv.args, srv.disk
        self.r, self.w, self.n = reader, writer, n
        self.structured = False
        self.extended = False
        self.req_off = 0  # the offset of the request being answered (extended replies carry it)

    def log(self, msg):
        self.srv.log("[%d] %s" % (self.n, msg))

    async def read(self, n):
        return await self.r.readexactly(n)

    async def send(self, data):
        self.w.write(data)
        await self.w.drain()

    async def stall(self):
        self.log("stalling")
        while True:  # read and ignore whatever comes, until the client goes away
            data = await self.r.read(65536)
            if not data:
                raise Hangup()

    async def reply(self, opt, typ, payload=b""):
        await self.send(struct.pack(">QIII", REPMAGIC, opt, typ, len(payload)) + payload)

    # ---- handshake ----

    async def handshake(self):
        sc = self.args.scenario
        if sc == "bad-greeting":
            self.log("sending an HTTP banner")
            await self.send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            await self.stall()
        await self.send(struct.pack(">QQH", NBDMAGIC, IHAVEOPT, 3))  # FIXED_NEWSTYLE | NO_ZEROES
        if sc == "handshake-eof":
            self.log("closing after the greeting")
            raise Hangup()
        if sc == "handshake-stall":
            await self.stall()
        cflags = struct.unpack(">I", await self.read(4))[0]
        no_zeroes = bool(cflags & 2)
        self.structured = self.extended = False
        while True:
            magic, opt, length = struct.unpack(">QII", await self.read(16))
            if magic != IHAVEOPT:
                self.log("bad option magic from the client")
                raise Hangup()
            if length > 65536:
                raise Hangup()
            data = await self.read(length)
            self.log("option %d (%d bytes)" % (opt, length))
            if sc == "oversized-option-reply" and opt == self.args.oversized_opt:
                self.log("answering option %d with a 0xffffffff-byte reply" % opt)
                await self.send(struct.pack(">QIII", REPMAGIC, opt, REP_INFO, 0xFFFFFFFF) + b"\0" * 64)
                await self.stall()
            if opt == OPT_EXPORT_NAME:
                name = data
                if sc == "unknown-export" or name not in self.exports():
                    self.log("EXPORT_NAME for unknown export %r: closing" % name)
                    raise Hangup()
                await self.send(struct.pack(">QH", len(self.disk), self.tflags()) + (b"" if no_zeroes else b"\0" * 124))
                return await self.transmission()
            elif opt == OPT_ABORT:
                await self.reply(opt, REP_ACK)
                raise Hangup()
            elif opt == OPT_LIST:
                for name in self.exports():
                    await self.reply(opt, REP_SERVER, struct.pack(">I", len(name)) + name + b"listed")
                await self.reply(opt, REP_ACK)
            elif opt == OPT_EXTENDED_HEADERS:
                late = self.args.extended == "late" and not getattr(self, "refused_once", False)
                if self.args.extended == "off" or late:
                    self.refused_once = True
                    await self.reply(opt, ERR_UNSUP)
                elif self.extended:
                    await self.reply(opt, ERR_INVALID)
                else:
                    self.extended = self.structured = True
                    await self.reply(opt, REP_ACK)
            elif opt in (OPT_SET_META, OPT_INFO, OPT_GO) and self.args.extended in ("required", "late") \
                    and not self.extended:
                self.log("option %d refused: extended headers required" % opt)
                await self.reply(opt, ERR_EXT_HEADER_REQD, b"extended headers required")
            elif opt == OPT_STRUCTURED_REPLY:
                if self.args.no_sr:
                    await self.reply(opt, ERR_UNSUP)
                elif self.structured:
                    await self.reply(opt, ERR_INVALID)
                else:
                    self.structured = True
                    await self.reply(opt, REP_ACK)
            elif opt in (OPT_SET_META, OPT_LIST_META):
                if not self.structured and opt == OPT_SET_META:
                    await self.reply(opt, ERR_INVALID)
                    continue
                (nlen,) = struct.unpack(">I", data[:4])
                (nq,) = struct.unpack(">I", data[4 + nlen:8 + nlen])
                pos, queries = 8 + nlen, []
                for _ in range(nq):
                    (ql,) = struct.unpack(">I", data[pos:pos + 4])
                    queries.append(data[pos + 4:pos + 4 + ql])
                    pos += 4 + ql
                if b"base:allocation" in queries or (opt == OPT_LIST_META and not queries):
                    await self.reply(opt, REP_META, struct.pack(">I", BASE_ALLOC_ID if opt == OPT_SET_META else 0)
                                     + b"base:allocation")
                await self.reply(opt, REP_ACK)
            elif opt in (OPT_GO, OPT_INFO):
                (nlen,) = struct.unpack(">I", data[:4])
                name = data[4:4 + nlen]
                if sc == "unknown-export" or name not in self.exports():
                    self.log("%s for unknown export %r" % ("GO" if opt == OPT_GO else "INFO", name))
                    await self.reply(opt, ERR_UNKNOWN, b"no such export")
                    continue
                if sc == "info-huge-size" and opt == OPT_INFO:
                    self.log("INFO for %r: size 2^64 - 4096" % name)
                    await self.reply(opt, REP_INFO, struct.pack(">HQH", INFO_EXPORT, (1 << 64) - 4096, self.tflags()))
                elif sc != "ack-without-export":
                    await self.reply(opt, REP_INFO, struct.pack(">HQH", INFO_EXPORT, len(self.disk), self.tflags()))
                await self.reply(opt, REP_INFO, struct.pack(">HIII", INFO_BLOCK_SIZE, 1, 4096, 1 << 20))
                if name:  # the canonical name (NBD_INFO_NAME) of a named export
                    await self.reply(opt, REP_INFO, struct.pack(">H", INFO_NAME) + name)
                await self.reply(opt, REP_ACK)
                if opt == OPT_GO:
                    if sc == "ack-without-export":
                        self.log("GO acknowledged without INFO_EXPORT")
                        await self.stall()
                    return await self.transmission()
            else:
                await self.reply(opt, ERR_UNSUP)

    def exports(self):
        if self.args.list == "hostile":
            return HOSTILE_NAMES
        return [self.args.export.encode()]

    def tflags(self):
        return F_HAS_FLAGS | F_SEND_FLUSH | F_SEND_FUA | F_SEND_TRIM | F_SEND_WRITE_ZEROES

    # ---- transmission ----

    async def transmission(self):
        self.log("transmission (structured replies %s, extended headers %s)"
                 % ("on" if self.structured else "off", "on" if self.extended else "off"))
        if self.args.scenario == "garbage-after-ack":
            self.log("sending 124 zero bytes after the ACK")
            await self.send(b"\0" * 124)
        while True:
            if self.extended:
                magic, flags, typ, cookie, off, count = struct.unpack(">IHHQQQ", await self.read(32))
                want = EXT_REQMAGIC
            else:
                magic, flags, typ, cookie, off, count = struct.unpack(">IHHQQI", await self.read(28))
                want = REQMAGIC
            if magic != want:
                self.log("bad request magic 0x%08x" % magic)
                raise Hangup()
            if self.extended and bool(flags & F_PAYLOAD_LEN) != (typ == CMD_WRITE):
                self.log("PAYLOAD_LEN flag wrong for command %d" % typ)
                raise Hangup()
            if self.extended and typ == CMD_WRITE and count > 32 << 20:
                self.log("oversized WRITE payload %d" % count)
                raise Hangup()
            payload = await self.read(count) if typ == CMD_WRITE else b""
            self.req_off = off
            if typ in CMD_NAMES:
                self.log("CMD %s %d+%d" % (CMD_NAMES[typ], off, count))
            if typ == CMD_DISC:
                self.log("DISC")
                raise Hangup()
            if (typ == CMD_READ and not self.srv.triggered and self.args.scenario in TRANSMISSION_SCENARIOS
                    and off <= self.args.bad_offset < off + count):
                # FAIL scenarios keep failing that READ (the kernel retries it).
                self.srv.triggered = self.args.scenario not in ("chunk-out-of-range", "error-chunk")
                await self.misbehave(cookie, off, count)
                continue
            await self.serve(typ, flags, cookie, off, count, payload)

    async def simple(self, cookie, error=0, data=b""):
        await self.send(struct.pack(">IIQ", SIMPLE, error, cookie) + data)

    async def chunk(self, cookie, typ, payload, flags=DONE):
        if self.extended:
            hdr = struct.pack(">IHHQQQ", EXT_REPLY, flags, typ, cookie, self.req_off, len(payload))
        else:
            hdr = struct.pack(">IHHQI", CHUNK, flags, typ, cookie, len(payload))
        await self.send(hdr + payload)

    async def serve(self, typ, flags, cookie, off, count, payload):
        end = off + count
        if typ in (CMD_READ, CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES, CMD_CACHE, CMD_BLOCK_STATUS) and end > len(self.disk):
            err = ENOSPC if typ == CMD_WRITE else EINVAL
            if self.structured:
                await self.chunk(cookie, T_ERROR, struct.pack(">IH", err, 0))
            else:
                await self.simple(cookie, err)
            return
        if typ == CMD_READ:
            data = bytes(self.disk[off:end])
            if self.structured:
                await self.chunk(cookie, T_DATA, struct.pack(">Q", off) + data)
            else:
                await self.simple(cookie, 0, data)
            return
        if typ in (CMD_TRIM, CMD_WRITE_ZEROES) and self.args.refuse_big and count > MAX_BLOCK:
            self.log("refusing a %d-byte %s with %s" % (count, CMD_NAMES[typ], self.args.refuse_big))
            err = EINVAL if self.args.refuse_big == "EINVAL" else EOVERFLOW
            return await self.chunk(cookie, T_ERROR, struct.pack(">IH", err, 0)) if self.structured \
                else await self.simple(cookie, err)
        if typ == CMD_WRITE:
            self.disk[off:end] = payload
        elif typ in (CMD_TRIM, CMD_WRITE_ZEROES):
            if typ == CMD_WRITE_ZEROES:
                self.disk[off:end] = bytes(count)
        elif typ == CMD_BLOCK_STATUS and self.structured:
            return await self.block_status(cookie, off, count, flags)
        if self.structured:
            await self.chunk(cookie, T_NONE, b"")
        else:
            await self.simple(cookie, 0)

    async def block_status(self, cookie, off, count, flags):
        mode = self.args.block_status
        self.srv.bs_requests += 1
        if self.srv.bs_requests in (1, 10, 100, 1000, 10000, 100000):
            self.log("BLOCK_STATUS #%d %d+%d (%s)" % (self.srv.bs_requests, off, count, mode))

        def ext(ctx, *pairs):
            return struct.pack(">I", ctx) + b"".join(struct.pack(">II", l, f) for l, f in pairs)

        if self.extended:
            return await self.block_status_ext(cookie, count, mode)
        if mode == "data":
            await self.chunk(cookie, T_BS, ext(BASE_ALLOC_ID, (count, 0)))
        elif mode == "tiny-holes":
            await self.chunk(cookie, T_BS, ext(BASE_ALLOC_ID, (min(count, 512), 3)))
        elif mode == "past-end":
            await self.chunk(cookie, T_BS, ext(BASE_ALLOC_ID, (0xFFFFFFFF, 3)))
        elif mode == "zero-length":
            await self.chunk(cookie, T_BS, ext(BASE_ALLOC_ID, (0, 0), (count, 0)))
        elif mode == "wrong-context":
            await self.chunk(cookie, T_BS, ext(BASE_ALLOC_ID + 98, (count, 3)))
        elif mode == "error":
            await self.chunk(cookie, T_ERROR, struct.pack(">IH", EIO, 0))
        elif mode == "none":
            await self.chunk(cookie, T_NONE, b"")
        elif mode == "two-chunks":
            await self.chunk(cookie, T_BS, ext(BASE_ALLOC_ID, (count, 3)), flags=0)
            await self.chunk(cookie, T_BS, ext(BASE_ALLOC_ID, (count, 0)))

    async def block_status_ext(self, cookie, count, mode):
        def ext(ctx, pairs, n=None):
            return (struct.pack(">II", ctx, len(pairs) if n is None else n)
                    + b"".join(struct.pack(">QQ", l, f) for l, f in pairs))

        if mode == "data":
            await self.chunk(cookie, T_BS_EXT, ext(BASE_ALLOC_ID, [(count, 0)]))
        elif mode == "tiny-holes":
            await self.chunk(cookie, T_BS_EXT, ext(BASE_ALLOC_ID, [(min(count, 512), 3)]))
        elif mode == "past-end":
            await self.chunk(cookie, T_BS_EXT, ext(BASE_ALLOC_ID, [(0xFFFFFFFF, 3)]))
        elif mode == "ext-huge":
            await self.chunk(cookie, T_BS_EXT, ext(BASE_ALLOC_ID, [(1 << 63, 3)]))
        elif mode == "zero-length":
            await self.chunk(cookie, T_BS_EXT, ext(BASE_ALLOC_ID, [(0, 0), (count, 0)]))
        elif mode == "wrong-context":
            await self.chunk(cookie, T_BS_EXT, ext(BASE_ALLOC_ID + 98, [(count, 3)]))
        elif mode == "ext-count-mismatch":
            await self.chunk(cookie, T_BS_EXT, ext(BASE_ALLOC_ID, [(count, 3)], n=2))
        elif mode == "ext-zero-count":
            await self.chunk(cookie, T_BS_EXT, ext(BASE_ALLOC_ID, []))
        elif mode == "ext-compact":
            await self.chunk(cookie, T_BS, struct.pack(">III", BASE_ALLOC_ID, min(count, 0xFFFFFFFF), 3))
        elif mode == "error":
            await self.chunk(cookie, T_ERROR, struct.pack(">IH", EIO, 0))
        elif mode == "none":
            await self.chunk(cookie, T_NONE, b"")
        elif mode == "two-chunks":
            await self.chunk(cookie, T_BS_EXT, ext(BASE_ALLOC_ID, [(count, 3)]), flags=0)
            await self.chunk(cookie, T_BS_EXT, ext(BASE_ALLOC_ID, [(count, 0)]))

    async def tiny_chunks(self, cookie, off, count, batch=2048):
        """Answer READ off+count with one 1-byte OFFSET_DATA chunk per byte, the
        even offsets first, then the odd ones; DONE on the last chunk.  The bytes
        are the export's, so a client accepting them all would read the right
        data.  Chunks go out in batches of about 64 KiB, each drained."""
        if off + count > len(self.disk) or count == 0:
            return await self.serve(CMD_READ, 0, cookie, off, count, b"")
        data = bytes(self.disk[off:off + count])
        hdr = struct.pack(">IHHQI", CHUNK, 0, T_DATA, cookie, 9)
        last_hdr = struct.pack(">IHHQI", CHUNK, DONE, T_DATA, cookie, 9)
        tail = struct.Struct(">QB")
        order = list(range(0, count, 2)) + list(range(1, count, 2))
        sent = 0
        for i in range(0, count, batch):
            part = order[i:i + batch]
            buf = b"".join([hdr + tail.pack(off + j, data[j]) for j in part])
            if i + batch >= count:  # the very last chunk carries DONE
                buf = buf[:-29] + last_hdr + buf[-9:]
            await self.send(buf)
            sent += len(buf)
        self.log("sent %d one-byte chunks (%d bytes), the last at +%d" % (count, sent, order[-1]))

    async def misbehave(self, cookie, off, count):
        sc = self.args.scenario
        self.log("READ %d+%d: scenario %s" % (off, count, sc))
        sr = self.structured
        if sc == "normal":
            await self.serve(CMD_READ, 0, cookie, off, count, b"")
        elif sc == "bad-reply-magic":
            await self.send(struct.pack(">IIQ", 0x12560953, 0, cookie) + bytes(count))
        elif sc == "wrong-cookie":
            await self.simple(cookie ^ 0x5A5A5A5A00000000, 0)
            await self.serve(CMD_READ, 0, cookie, off, count, b"")
        elif sc == "chunk-out-of-range":
            if sr:
                await self.chunk(cookie, T_DATA, struct.pack(">Q", off + count) + bytes(count))
            else:  # no chunks without structured replies: the nearest is an error
                await self.simple(cookie, EIO)
        elif sc == "error-chunk":
            if sr:
                await self.chunk(cookie, T_ERROR, struct.pack(">IH", EIO, 12) + b"disk on fire")
            else:
                await self.simple(cookie, EIO)
        elif sc == "huge-chunk":
            await self.send(struct.pack(">IHHQI", CHUNK, DONE, T_DATA, cookie, 0xFFFFFFF0) + struct.pack(">Q", off))
            await self.stall()
        elif sc == "unknown-chunk-type":
            await self.chunk(cookie, 7, b"\0" * 16)
            await self.serve(CMD_READ, 0, cookie, off, count, b"")
        elif sc == "close-mid-reply":
            data = bytes(self.disk[off:off + count // 2])
            if sr:
                await self.send(struct.pack(">IHHQIQ", CHUNK, DONE, T_DATA, cookie, 8 + count, off) + data)
            else:
                await self.send(struct.pack(">IIQ", SIMPLE, 0, cookie) + data)
            self.log("closing in the middle of the reply")
            raise Hangup()
        elif sc == "stray-chunk":
            await self.chunk(cookie ^ 0x00FF000000000000, T_DATA, struct.pack(">Q", off) + bytes(min(count, 4096)))
            await self.serve(CMD_READ, 0, cookie, off, count, b"")
        elif sc == "duplicate-reply":
            await self.serve(CMD_READ, 0, cookie, off, count, b"")
            await self.chunk(cookie, T_ERROR, struct.pack(">IH", EIO, 4) + b"late")
        elif sc == "tiny-chunks":
            if sr:
                await self.tiny_chunks(cookie, off, count)
            else:  # no chunks without structured replies
                await self.serve(CMD_READ, 0, cookie, off, count, b"")
        elif sc == "ext-simple-reply":
            await self.send(struct.pack(">IIQ", SIMPLE, 0, cookie) + bytes(self.disk[off:off + count]))
            await self.stall()
        elif sc == "ext-structured-chunk":
            await self.send(struct.pack(">IHHQIQ", CHUNK, DONE, T_DATA, cookie, 8 + count, off)
                            + bytes(self.disk[off:off + count]))
            await self.stall()
        elif sc == "ext-wrong-offset":
            await self.send(struct.pack(">IHHQQQQ", EXT_REPLY, DONE, T_DATA, cookie, off + 4096, 8 + count, off)
                            + bytes(self.disk[off:off + count]))
            await self.stall()
        elif sc == "ext-huge-length":
            await self.send(struct.pack(">IHHQQQQ", EXT_REPLY, DONE, T_DATA, cookie, off, (1 << 32) + 8, off))
            await self.stall()
        elif sc in ("stall", "garbage-after-ack"):
            if sc == "stall":
                await self.stall()
            await self.serve(CMD_READ, 0, cookie, off, count, b"")
        else:
            raise SystemExit("unknown scenario " + sc)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--socket", help="Unix socket to listen on")
    p.add_argument("--scenario", default="normal",
                   choices=sorted(HANDSHAKE_SCENARIOS | TRANSMISSION_SCENARIOS))
    p.add_argument("--size", type=int, default=1 << 20, help="export size (default 1 MiB)")
    p.add_argument("--export", default="", help="export name (default: the default export)")
    p.add_argument("--no-sr", action="store_true", help="refuse structured replies")
    p.add_argument("--extended", default="off", choices=["off", "on", "required", "late"],
                   help="extended headers: refused (default), accepted, or required")
    p.add_argument("--refuse-big", choices=["EINVAL", "EOVERFLOW"],
                   help="answer TRIM/WRITE_ZEROES longer than 1 MiB with this error")
    p.add_argument("--list", default="single", choices=["single", "hostile"])
    p.add_argument("--block-status", default="data",
                   choices=["data", "tiny-holes", "past-end", "zero-length", "wrong-context", "error", "none",
                            "two-chunks", "ext-count-mismatch", "ext-zero-count", "ext-compact", "ext-huge"])
    p.add_argument("--bad-offset", type=int, default=0,
                   help="transmission scenarios trigger on the first READ covering this byte")
    p.add_argument("--oversized-opt", type=int, default=OPT_GO,
                   help="oversized-option-reply: the option to answer so (default 7, GO)")
    p.add_argument("--log", help="log file (default stderr)")
    p.add_argument("--print-pattern", nargs=2, type=int, metavar=("OFFSET", "LENGTH"),
                   help="write the export's initial bytes in that range to stdout and exit")
    args = p.parse_args()
    if args.print_pattern:
        sys.stdout.buffer.write(pattern(*args.print_pattern))
        return
    if not args.socket:
        p.error("--socket is required")
    asyncio.run(Server(args).run())


if __name__ == "__main__":
    main()
