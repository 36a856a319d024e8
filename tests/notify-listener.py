#!/usr/bin/env python3
"""notify-listener.py: stands in for systemd's notification socket.

Binds a datagram socket (a path, or @name for the abstract namespace) and
appends one line per message to --out, as it arrives:

    sender=PID alive=0|1 file=yes|no|hang msg=LINE1|LINE2...

sender is the pid the kernel vouches for (SCM_CREDENTIALS); alive whether
that process was still running (not a zombie) when the message was read;
file, for messages with READY=1 only (else '-'), whether --watch existed
at that moment (stat with a 5 s bound: a FUSE mount that does not answer
gives 'hang').  The message's newlines become '|'.  Writes its pid to
--pidfile once bound.  Runs until killed.
"""
import argparse
import os
import socket
import struct
import threading


def stat_bounded(path, secs=5.0):
    """'yes' / 'no' / 'hang': os.stat(path) in a thread, not waited on past secs."""
    res = []

    def run():
        try:
            os.stat(path)
            res.append("yes")
        except OSError:
            res.append("no")

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(secs)
    return res[0] if res else "hang"


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            # The state follows the parenthesised command name.
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--watch", help="file whose existence READY=1 is checked against")
    ap.add_argument("--pidfile")
    a = ap.parse_args()

    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    s.bind("\0" + a.socket[1:] if a.socket.startswith("@") else a.socket)
    if a.pidfile:
        with open(a.pidfile + ".tmp", "w") as f:
            f.write("%d\n" % os.getpid())
        os.rename(a.pidfile + ".tmp", a.pidfile)
    ucred = struct.calcsize("3i")
    with open(a.out, "a", buffering=1) as out:
        while True:
            data, anc, _, _ = s.recvmsg(4096, socket.CMSG_SPACE(ucred))
            pid = 0
            for level, kind, cdata in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", cdata[:ucred])[0]
            lines = data.decode("utf-8", "replace").split("\n")
            live = alive(pid) if pid else False
            seen = stat_bounded(a.watch) if a.watch and "READY=1" in lines else "-"
            out.write("sender=%d alive=%d file=%s msg=%s\n" % (pid, live, seen, "|".join(lines)))


if __name__ == "__main__":
    main()
