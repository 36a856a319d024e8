#!/usr/bin/env python3
"""nbd-fault-proxy.py: a fault-injecting byte proxy between Unix sockets.

  nbd-fault-proxy.py --listen SOCK --target SOCK --control CTL [--log FILE] [--pidfile FILE]
                     [--rate BYTES]
  nbd-fault-proxy.py --control CTL --send 'COMMAND'     (prints the reply; exit 0, or 1 on error)

It listens on the Unix socket --listen.  For each client it accepts it connects
to the Unix socket --target and forwards bytes both ways, untouched (it knows
nothing of NBD, so TLS passes through too).  A half-close is passed on; an
error on either side closes both.  Connections are numbered 1, 2, 3... in the
order they are accepted.

The Unix socket --control takes one command line per connection, answers with
lines and closes:
  list              one line per live connection: "ID up=BYTES down=BYTES state=S",
                    S = forwarding or stalled; up = bytes sent to the target,
                    down = bytes sent to the client
  count             "live=L total=T": live connections, and connections accepted
                    (numbered) so far
  drop ID           close both sides of connection ID cleanly (shutdown: FIN)
  reset ID          close both sides abortively: SO_LINGER 0, no shutdown (over
                    TCP an RST; a Unix socket has none: its peer sees ECONNRESET
                    if it had unread data, else end of file)
  stall ID          stop forwarding in both directions: nothing more is read
                    from either socket (at most one chunk already read is held)
  resume ID         forward again, starting with anything held
  stall-new on|off  connections accepted from now on start stalled: the client is
                    accepted but the target is not contacted until resume ID
  drop-all          drop every live connection
  refuse on|off     while on, new clients are accepted and closed at once (they
                    get no ID and are not counted in total)
Replies are "ok" (list and count: their lines) or "error: ...".  A stalled
connection does not notice its peers going away until it is resumed or dropped.

--rate BYTES (suffix K, M, G: powers of 1024) limits what the proxy forwards,
all connections and both directions together, to BYTES a second (bursts of at
most 0.1 s worth).  It slows a client down without slowing the server: unlike
nbdkit's rate or delay filters, no request waits inside the server, where
nbdkit 1.32 can crash (assertion `sock >= 0') when its connection is cut
meanwhile.

Every event (accept, connect, close with its reason, command) is logged as one
line (--log FILE, else stderr).  SIGTERM or SIGINT: stop accepting, drop every
connection, remove the sockets and the pid file, exit 0.  Standard library only.
"""
import argparse
import asyncio
import os
import signal
import socket
import struct
import sys
import time

BUF = 256 * 1024


class Conn:
    def __init__(self, proxy, cid, csock, stalled):
        self.proxy = proxy
        self.id = cid
        self.csock = csock
        self.tsock = None
        self.up = 0
        self.down = 0
        self.running = asyncio.Event()  # set while forwarding
        self.stalled = asyncio.Event()  # set while stalled
        (self.stalled if stalled else self.running).set()
        self.task = None
        self.how = None                 # "drop"/"reset" when closed by a command
        self.why = None
        self.finishing = False          # run() is closing the connection

    def state(self):
        return "forwarding" if self.running.is_set() else "stalled"

    def stall(self):
        self.running.clear()
        self.stalled.set()

    def resume(self):
        self.stalled.clear()
        self.running.set()

    async def recv(self, sock):
        """The next bytes from sock (b"" at end of file), read only while not
        stalled.  A stall cancels a pending read, so that nothing more is
        taken from the kernel; a chunk that arrived just then is returned
        (and held by the caller until resume)."""
        loop = asyncio.get_running_loop()
        while True:
            if not self.running.is_set():
                await self.running.wait()
                continue
            rt = asyncio.ensure_future(loop.sock_recv(sock, BUF))
            st = asyncio.ensure_future(self.stalled.wait())
            try:
                done, _ = await asyncio.wait({rt, st}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                # Wait until the read is really withdrawn (its reader removed
                # from the loop) before the socket may be closed.
                rt.cancel()
                st.cancel()
                await asyncio.wait({rt, st})
                raise
            st.cancel()
            if rt in done:
                return rt.result()
            rt.cancel()
            await asyncio.wait({rt})
            if not rt.cancelled():
                return rt.result()

    async def pump(self, src, dst, direction):
        loop = asyncio.get_running_loop()
        while True:
            data = await self.recv(src)
            if not data:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return "end of file from the %s" % ("client" if direction == "up" else "target")
            await self.proxy.throttle(len(data))
            if not self.running.is_set():
                await self.running.wait()
            await loop.sock_sendall(dst, data)
            if direction == "up":
                self.up += len(data)
            else:
                self.down += len(data)

    async def run(self):
        loop = asyncio.get_running_loop()
        pumps = []
        why = "?"
        try:
            if not self.running.is_set():
                await self.running.wait()
            self.tsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.tsock.setblocking(False)
            try:
                await loop.sock_connect(self.tsock, self.proxy.target)
            except OSError as e:
                why = "cannot connect to the target: %s" % (e.strerror or e,)
                return
            self.proxy.log("%d connected to the target" % self.id)
            pumps = [asyncio.ensure_future(self.pump(self.csock, self.tsock, "up")),
                     asyncio.ensure_future(self.pump(self.tsock, self.csock, "down"))]
            pending = set(pumps)
            reasons = []
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                failed = False
                for t in done:
                    e = t.exception()
                    if e is None:
                        reasons.append(t.result())
                    else:
                        reasons.append("%s: %s" % ("client->target" if t is pumps[0] else "target->client",
                                                   getattr(e, "strerror", None) or e))
                        failed = True
                if failed:
                    break
            why = ", ".join(reasons)
        except asyncio.CancelledError:
            why = self.why or "cancelled"
        except Exception as e:  # never let a traceback out
            why = "internal error: %r" % (e,)
        finally:
            # From here on close() must not cancel us (a cancellation
            # delivered at an await below would skip the clean-up).
            self.finishing = True
            for t in pumps:
                t.cancel()
            if pumps:
                await asyncio.wait(pumps)
                for t in pumps:   # retrieve, so asyncio does not complain
                    if not t.cancelled():
                        t.exception()
            self.close_sockets()
            self.proxy.conns.pop(self.id, None)
            self.proxy.log("%d closed (%s) up=%d down=%d" % (self.id, why, self.up, self.down))

    def close_sockets(self):
        for s in (self.csock, self.tsock):
            if s is None:
                continue
            try:
                if self.how == "reset":
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                else:
                    s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass

    async def close(self, how, why):
        """Close by command (how = "drop" or "reset"); returns once closed."""
        if self.how is None and not self.finishing:
            self.how = how
            self.why = why
            self.task.cancel()
        await asyncio.wait({self.task})


class Proxy:
    def __init__(self, args):
        self.args = args
        self.target = args.target
        self.conns = {}
        self.total = 0
        self.stall_new = False
        self.refuse = False
        self.logf = open(args.log, "a", buffering=1) if args.log else sys.stderr
        self.lsock = None
        self.rate = args.rate
        self.next_time = 0.0            # --rate: when the bytes reserved so far are sent

    async def throttle(self, n):
        """With --rate, wait until n more bytes may be forwarded."""
        if not self.rate:
            return
        now = asyncio.get_running_loop().time()
        self.next_time = max(self.next_time, now - 0.1) + n / self.rate
        if self.next_time > now:
            await asyncio.sleep(self.next_time - now)

    def log(self, msg):
        t = time.time()
        stamp = time.strftime("%H:%M:%S", time.localtime(t)) + ".%03d" % (int(t * 1000) % 1000)
        try:
            print("%s nbd-fault-proxy: %s" % (stamp, msg), file=self.logf, flush=True)
        except (OSError, ValueError):
            pass

    async def accept_loop(self):
        loop = asyncio.get_running_loop()
        while True:
            try:
                csock, _ = await loop.sock_accept(self.lsock)
            except asyncio.CancelledError:
                raise
            except OSError as e:
                self.log("accept failed: %s" % (e.strerror or e,))
                await asyncio.sleep(0.1)
                continue
            csock.setblocking(False)
            if self.refuse:
                self.log("refused a client (refuse on)")
                try:
                    csock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                csock.close()
                continue
            self.total += 1
            c = Conn(self, self.total, csock, self.stall_new)
            self.conns[c.id] = c
            self.log("%d accepted%s" % (c.id, " (stalled: stall-new on)" if self.stall_new else ""))
            c.task = asyncio.ensure_future(c.run())

    def conn_of(self, words):
        if len(words) != 2:
            raise ValueError("usage: %s ID" % words[0])
        try:
            cid = int(words[1])
        except ValueError:
            raise ValueError("bad connection id '%s'" % words[1])
        c = self.conns.get(cid)
        if c is None:
            raise ValueError("no live connection %d" % cid)
        return c

    @staticmethod
    def on_off(words):
        if len(words) != 2 or words[1] not in ("on", "off"):
            raise ValueError("usage: %s on|off" % words[0])
        return words[1] == "on"

    async def command(self, line):
        words = line.split()
        if not words:
            raise ValueError("empty command")
        cmd = words[0]
        if cmd == "list":
            return ["%d up=%d down=%d state=%s" % (c.id, c.up, c.down, c.state())
                    for c in sorted(self.conns.values(), key=lambda c: c.id)]
        if cmd == "count":
            return ["live=%d total=%d" % (len(self.conns), self.total)]
        if cmd in ("drop", "reset"):
            c = self.conn_of(words)
            await c.close(cmd, "%s by command" % cmd)
            return ["ok"]
        if cmd == "stall":
            self.conn_of(words).stall()
            return ["ok"]
        if cmd == "resume":
            self.conn_of(words).resume()
            return ["ok"]
        if cmd == "stall-new":
            self.stall_new = self.on_off(words)
            return ["ok"]
        if cmd == "refuse":
            self.refuse = self.on_off(words)
            return ["ok"]
        if cmd == "drop-all":
            if len(words) != 1:
                raise ValueError("usage: drop-all")
            cs = list(self.conns.values())
            if cs:
                await asyncio.gather(*(c.close("drop", "drop-all by command") for c in cs))
            return ["ok"]
        raise ValueError("unknown command '%s'" % cmd)

    async def control_client(self, reader, writer):
        line = ""
        try:
            raw = await asyncio.wait_for(reader.readline(), 10)
            line = raw.decode("utf-8", "replace").strip()
            try:
                reply = await self.command(line)
            except ValueError as e:
                reply = ["error: %s" % e]
            self.log("command '%s' -> %s" % (line, reply[0] if len(reply) == 1 else "%d lines" % len(reply)))
            writer.write("".join(r + "\n" for r in reply).encode())
            await writer.drain()
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
            self.log("control connection failed (command '%s'): %r" % (line, e))
        except Exception as e:
            self.log("control: internal error (command '%s'): %r" % (line, e))
        finally:
            try:
                writer.close()
                await writer.wait_closed()
            except Exception:
                pass

    def exception_handler(self, loop, ctx):
        self.log("asyncio: %s %r" % (ctx.get("message"), ctx.get("exception")))

    async def run(self):
        a = self.args
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(self.exception_handler)
        for path in (a.listen, a.control):
            if os.path.exists(path):
                os.unlink(path)
        ctl = await asyncio.start_unix_server(self.control_client, path=a.control)
        self.lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.lsock.bind(a.listen)
        self.lsock.listen(128)
        self.lsock.setblocking(False)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if a.pidfile:
            tmp = a.pidfile + ".tmp"
            with open(tmp, "w") as f:
                f.write("%d\n" % os.getpid())
            os.rename(tmp, a.pidfile)
        self.log("listening on %s, forwarding to %s, control %s%s" % (
            a.listen, a.target, a.control, ", at most %d bytes/s" % self.rate if self.rate else ""))
        acceptor = asyncio.ensure_future(self.accept_loop())
        await stop.wait()
        self.log("stopping")
        acceptor.cancel()
        await asyncio.wait({acceptor})
        self.lsock.close()
        ctl.close()
        cs = list(self.conns.values())
        if cs:
            await asyncio.gather(*(c.close("drop", "proxy stopping") for c in cs))
        for path in (a.listen, a.control, a.pidfile):
            try:
                if path:
                    os.unlink(path)
            except OSError:
                pass
        self.log("stopped")


def send(ctl, command):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    try:
        s.connect(ctl)
        s.sendall(command.encode() + b"\n")
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
    except OSError as e:
        print("error: control socket %s: %s" % (ctl, e.strerror or e), file=sys.stderr)
        return 1
    finally:
        s.close()
    reply = b"".join(chunks).decode("utf-8", "replace")
    sys.stdout.write(reply)
    sys.stdout.flush()
    return 1 if reply.startswith("error") else 0


def size_arg(v):
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    try:
        if v[-1:].upper() in mult:
            n = float(v[:-1]) * mult[v[-1].upper()]
        else:
            n = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError("bad size '%s'" % v)
    if n < 0:
        raise argparse.ArgumentTypeError("negative size '%s'" % v)
    return n


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--listen", help="Unix socket to accept clients on")
    p.add_argument("--target", help="Unix socket to connect each client to")
    p.add_argument("--control", required=True, help="control Unix socket")
    p.add_argument("--log", help="log file (default stderr)")
    p.add_argument("--pidfile", help="write the pid here once listening")
    p.add_argument("--rate", type=size_arg, default=0, metavar="BYTES",
                   help="forward at most BYTES a second in all (suffix K, M, G)")
    p.add_argument("--send", metavar="COMMAND", help="send COMMAND to a running proxy, print the reply")
    args = p.parse_args()
    if args.send is not None:
        sys.exit(send(args.control, args.send))
    if not args.listen or not args.target:
        p.error("--listen and --target are required (or --send)")
    try:
        asyncio.run(Proxy(args).run())
    except KeyboardInterrupt:
        pass
    except OSError as e:
        print("nbd-fault-proxy: %s" % e, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
