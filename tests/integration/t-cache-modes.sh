#!/bin/bash
# --cache=none|read|writeback (and --direct-io = --cache=none), on nbdkit
# memory exports of 64 MiB seen through nbdkit's log filter; for each mode:
#  - 1 MiB at an odd 4 KiB-aligned offset and a few 4 KiB pieces, written
#    by a buffered writer, then fsync: the export holds them (nbdcopy), and
#    the server log shows completed Writes covering them, then a Flush
#    called after the last of those Writes returned, and completed, before
#    fsync returned; with none and read the Writes have completed and the
#    export holds the data as soon as write() returns (write-through);
#  - reads: with none every read of a page reaches the server, with read
#    and writeback a page read once is read again from the page cache;
#  - writing past the end of the export: with none and read, a write at or
#    past the end fails with ENOSPC at write() and a write straddling the
#    end is short (the part inside reaches the server); with writeback
#    write() accepts it and the error comes at fsync() or, without fsync,
#    at close(): ENOSPC, never 0 (the part of a straddling write inside the
#    export still reaches the server);
#  - O_DIRECT and buffered descriptors on the same file see each other's
#    data: a buffered reader's cached page shows a later O_DIRECT write, an
#    O_DIRECT read shows an earlier buffered write before any fsync, and an
#    O_DIRECT write over a dirty page is what the export holds after fsync;
#  - cp of an 8 KiB file onto the file (O_TRUNC) keeps its size (64 MiB)
#    and the data after the first 8 KiB; truncate -s 4096 fails;
#  - none and read: an O_DSYNC 4 KiB write reaches the server as a Write
#    with fua=1 before write() returns, and no Flush follows it;
#  - writeback: nbdfs killed (SIGKILL) with 4 MiB of dirty pages: fsync on
#    the open descriptor fails (never returns 0);
#  - each mount (but the killed one) unmounts cleanly;
#  - mounted over a regular file, writeback behaves as above (fsync,
#    reads, coherence, writes past the end accepted by write() and failing
#    at fsync): nbdfs gives the kernel the export's size, which it would
#    otherwise keep at 0;
#  - --direct-io works as --cache=none (short straddling write, ENOSPC at
#    the end at write()); --cache=bogus exits non-zero with a one-line
#    error that mentions --cache, and mounts nothing.
. "$(dirname "$0")/lib.sh"

MiB=1048576
SIZE=$((64 * MiB))

cat >"$T/cm.py" <<'PYEOF'
# Cases run by t-cache-modes.sh: each "FAIL ..." line printed is a failed
# check (the test goes on), other lines are notes.
import errno, mmap, os, re, signal, subprocess, sys, time

MiB = 1 << 20
SIZE = 64 * MiB
PAGE = 4096


def fail(msg, ls=None):
    print("FAIL " + msg + ("" if ls is None else "\n     log: " + "\n          ".join(ls[-30:])))
    sys.stdout.flush()


def note(msg):
    print(msg)
    sys.stdout.flush()


def lines(log):
    with open(log) as f:
        return [l for l in f.read().split("\n") if l]


def mark(log):
    return len(lines(log))


def field(l, name):
    return int(re.search(r"\b%s=(0x[0-9a-fA-F]+|\d+)" % name, l).group(1), 0)


def calls(ls, act):
    """(index, (connection, id), line) of the requests of act as called."""
    out = []
    for i, l in enumerate(ls):
        m = re.search(r"connection=(\d+) %s id=(\d+) " % act, l)
        if m:
            out.append((i, m.groups(), l))
    return out


def returns(ls, act):
    """(connection, id) -> (index, return value) of completed requests of act."""
    out = {}
    for i, l in enumerate(ls):
        m = re.search(r"connection=(\d+) \.\.\.%s id=(\d+) return=(-?\d+)" % act, l)
        if m:
            out[(m.group(1), m.group(2))] = (i, int(m.group(3)))
    return out


def done_writes(ls):
    """[(offset, count, index of the return line, fua)] of Writes that returned 0."""
    ret = returns(ls, "Write")
    out = []
    for i, k, l in calls(ls, "Write"):
        if k in ret and ret[k][1] == 0:
            out.append((field(l, "offset"), field(l, "count"), ret[k][0], field(l, "fua")))
    return out


def covering(writes, off, n):
    """The writes that overlap [off, off+n), if together they cover it; else None."""
    got = sorted(w for w in writes if w[0] < off + n and w[0] + w[1] > off)
    pos = off
    for w in got:
        if w[0] <= pos < w[0] + w[1]:
            pos = w[0] + w[1]
    return got if pos >= off + n else None


def server(uri):
    r = subprocess.run(["nbdcopy", "--", uri, "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if r.returncode != 0 or len(r.stdout) != SIZE:
        raise SystemExit("nbdcopy %s failed (status %d, %d bytes): %s" %
                         (uri, r.returncode, len(r.stdout), r.stderr.decode(errors="replace")))
    return r.stdout


def expect_errno(what, fn, want):
    """fn() must fail with errno want."""
    try:
        r = fn()
    except OSError as e:
        if e.errno != want:
            fail("%s: failed with %s, expected %s" % (what, errno.errorcode.get(e.errno, e.errno),
                                                       errno.errorcode[want]))
        return
    fail("%s: %s, expected %s" % (what, "succeeded" if r is None else "returned %r" % (r,),
                                  errno.errorcode[want]))


def aligned(data):
    """An mmap (page-aligned) buffer holding data, for O_DIRECT."""
    b = mmap.mmap(-1, len(data))
    b.write(data)
    return b


# ---- 1: a buffered writer, then fsync ----
def case_fsync(mode, path, log, uri):
    pieces = [(773 * PAGE, MiB), (20 * MiB + 3 * PAGE, PAGE), (21 * MiB + 7 * PAGE, PAGE),
              (33 * MiB + 9 * PAGE, PAGE)]
    data = [os.urandom(n) for _, n in pieces]
    m = mark(log)
    fd = os.open(path, os.O_WRONLY)
    for (off, n), d in zip(pieces, data):
        r = os.pwrite(fd, d, off)
        if r != n:
            fail("write of %d bytes at %d returned %d" % (n, off, r))
    if mode in ("none", "read"):
        ls = lines(log)[m:]
        ws = done_writes(ls)
        for off, n in pieces:
            if covering(ws, off, n) is None:
                fail("write-through: when write() returned, no completed Writes covered [%d, +%d)"
                     % (off, n), ls)
        img = server(uri)
        for (off, n), d in zip(pieces, data):
            if img[off:off + n] != d:
                fail("write-through: when write() returned, the export did not hold the %d bytes at %d"
                     % (n, off))
    os.fsync(fd)
    ls = lines(log)[m:]
    ws = done_writes(ls)
    last = -1
    for off, n in pieces:
        got = covering(ws, off, n)
        if got is None:
            fail("fsync: no completed Writes covering [%d, +%d) before fsync returned" % (off, n), ls)
        else:
            last = max([last] + [w[2] for w in got])
    if last >= 0:
        fret = returns(ls, "Flush")
        fl = [(i, k) for i, k, _ in calls(ls, "Flush") if i > last]
        if not fl:
            fail("fsync: no Flush called after the last Write of the data returned", ls)
        elif not any(k in fret and fret[k][1] == 0 for _, k in fl):
            fail("fsync: the Flush after the data's Writes did not complete (return=0) before fsync returned", ls)
    os.close(fd)
    img = server(uri)
    for (off, n), d in zip(pieces, data):
        if img[off:off + n] != d:
            fail("after fsync the export does not hold the %d bytes written at %d" % (n, off))
    fd = os.open(path, os.O_RDONLY)
    for (off, n), d in zip(pieces, data):
        if os.pread(fd, n, off) != d:
            fail("the %d bytes written at %d read back differently through the mount" % (n, off))
    os.close(fd)


# ---- reads: cached or not ----
def case_reads(mode, path, log):
    off = 48 * MiB + 5 * PAGE
    fd = os.open(path, os.O_RDONLY)
    counts = []
    for i in range(2):
        m = mark(log)
        os.pread(fd, PAGE, off)
        ls = lines(log)[m:]
        counts.append(len([l for _, _, l in calls(ls, "Read")
                           if field(l, "offset") <= off < field(l, "offset") + field(l, "count")]))
    os.close(fd)
    if mode == "none":
        if counts[0] < 1 or counts[1] < 1:
            fail("--cache=none: two reads of the same page, Reads covering it on the server: %s "
                 "(each read must go to the server)" % counts)
    else:
        if counts[0] < 1:
            fail("--cache=%s: the first read of a page sent no Read covering it" % mode)
        if counts[1] != 0:
            fail("--cache=%s: the second read of a page sent %d Read(s) covering it "
                 "(expected it from the page cache)" % (mode, counts[1]))


# ---- 2: writes past the end ----
def case_past_end(mode, path, log, uri):
    if mode in ("none", "read"):
        fd = os.open(path, os.O_WRONLY)
        expect_errno("write of 4096 bytes at the end (%d)" % SIZE,
                     lambda: os.pwrite(fd, os.urandom(PAGE), SIZE), errno.ENOSPC)
        expect_errno("write of 4096 bytes 1 MiB past the end",
                     lambda: os.pwrite(fd, os.urandom(PAGE), SIZE + MiB), errno.ENOSPC)
        d = os.urandom(PAGE)
        try:
            r = os.pwrite(fd, d, SIZE - 2048)
            if r != 2048:
                fail("write of 4096 bytes straddling the end (at %d): returned %d, expected 2048"
                     % (SIZE - 2048, r))
        except OSError as e:
            fail("write of 4096 bytes straddling the end: failed with %s, expected a short write of 2048"
                 % errno.errorcode.get(e.errno, e.errno))
        if server(uri)[SIZE - 2048:] != d[:2048]:
            fail("straddling write: when it returned, the export did not hold its first 2048 bytes")
        rfd = os.open(path, os.O_RDONLY)
        back = os.pread(rfd, PAGE, SIZE - 2048)
        os.close(rfd)
        if back != d[:2048]:
            fail("straddling write: reading from 2048 bytes before the end does not give its 2048 bytes")
        try:
            os.fsync(fd)
        except OSError as e:
            fail("fsync after the refused and short writes failed: %s" % e)
        try:
            os.close(fd)
        except OSError as e:
            fail("close after the refused and short writes failed: %s" % e)
        st = os.stat(path).st_size
        if st != SIZE:
            fail("after the writes past the end, st_size is %d, expected %d" % (st, SIZE))
        return

    # writeback: write() accepts, fsync or close reports ENOSPC.
    def accepted(fd, d, off):
        try:
            r = os.pwrite(fd, d, off)
            if r != len(d):
                fail("writeback: write of %d bytes at %d returned %d, expected all accepted"
                     % (len(d), off, r))
        except OSError as e:
            fail("writeback: write of %d bytes at %d failed with %s at write(), expected it accepted"
                 % (len(d), off, errno.errorcode.get(e.errno, e.errno)))

    # a: straddling, then fsync
    d1 = os.urandom(PAGE)
    fd = os.open(path, os.O_WRONLY)
    accepted(fd, d1, SIZE - 2048)
    expect_errno("writeback: fsync after a write straddling the end", lambda: os.fsync(fd), errno.ENOSPC)
    if server(uri)[SIZE - 2048:] != d1[:2048]:
        fail("writeback: after fsync, the part of a straddling write inside the export is not on the server")
    try:
        os.close(fd)
        note("  (writeback: close after that fsync returned 0)")
    except OSError as e:
        note("  (writeback: close after that fsync: %s)" % errno.errorcode.get(e.errno, e.errno))
    # b: wholly past the end, then close (no fsync)
    fd = os.open(path, os.O_WRONLY)
    accepted(fd, os.urandom(PAGE), SIZE + 2 * PAGE)
    expect_errno("writeback: close (no fsync) after a write past the end", lambda: os.close(fd), errno.ENOSPC)
    # c: straddling, then close (no fsync)
    d2 = os.urandom(PAGE)
    fd = os.open(path, os.O_WRONLY)
    accepted(fd, d2, SIZE - 1024)
    expect_errno("writeback: close (no fsync) after a write straddling the end", lambda: os.close(fd),
                 errno.ENOSPC)
    if server(uri)[SIZE - 1024:] != d2[:1024]:
        fail("writeback: after close, the part of a straddling write inside the export is not on the server")
    # d: at the end, then fsync
    fd = os.open(path, os.O_WRONLY)
    accepted(fd, os.urandom(PAGE), SIZE)
    expect_errno("writeback: fsync after a write at the end", lambda: os.fsync(fd), errno.ENOSPC)
    try:
        os.close(fd)
    except OSError:
        pass
    note("  (writeback: st_size after the writes past the end: %d)" % os.stat(path).st_size)


# ---- 3: O_DIRECT and buffered descriptors ----
def case_coherence(mode, path, uri):
    X = 40 * MiB + 3 * PAGE   # a page a buffered reader caches
    Y = 41 * MiB + 5 * PAGE   # buffered write, O_DIRECT read
    Z = 42 * MiB + 7 * PAGE   # buffered write, then O_DIRECT write over it
    fdb = os.open(path, os.O_RDWR)
    fdd = os.open(path, os.O_RDWR | os.O_DIRECT)
    a, b, c, d, e = (os.urandom(PAGE) for _ in range(5))
    os.pwrite(fdd, aligned(a), X)
    if os.pread(fdb, PAGE, X) != a:
        fail("--cache=%s: a buffered read does not see an earlier O_DIRECT write" % mode)
    os.pwrite(fdd, aligned(b), X)
    if os.pread(fdb, PAGE, X) != b:
        fail("--cache=%s: a buffered reader that cached a page does not see a later O_DIRECT write to it" % mode)
    os.pwrite(fdb, c, Y)
    rb = aligned(bytes(PAGE))
    n = os.preadv(fdd, [rb], Y)
    if n != PAGE or rb[:] != c:
        fail("--cache=%s: an O_DIRECT read (before any fsync) does not see an earlier buffered write" % mode)
    os.pwrite(fdb, d, Z)
    os.pwrite(fdd, aligned(e), Z)
    if os.pread(fdb, PAGE, Z) != e:
        fail("--cache=%s: a buffered read after an O_DIRECT write over a dirty page does not see the O_DIRECT data"
             % mode)
    os.fsync(fdb)
    os.fsync(fdd)
    os.close(fdb)
    os.close(fdd)
    img = server(uri)
    if img[X:X + PAGE] != b:
        fail("--cache=%s: after fsync the export does not hold the last O_DIRECT write" % mode)
    if img[Y:Y + PAGE] != c:
        fail("--cache=%s: after fsync the export does not hold the buffered write" % mode)
    if img[Z:Z + PAGE] != e:
        fail("--cache=%s: after fsync the export holds %s instead of the O_DIRECT write made over a dirty page"
             % (mode, "the buffered write" if img[Z:Z + PAGE] == d else "something else"))


# ---- 5: O_DSYNC: FUA, no Flush ----
def case_dsync(mode, path, log):
    off = 50 * MiB + 11 * PAGE
    fd = os.open(path, os.O_WRONLY)
    os.fsync(fd)   # nothing unflushed before
    os.close(fd)
    fd = os.open(path, os.O_WRONLY | os.O_DSYNC)
    m = mark(log)
    r = os.pwrite(fd, os.urandom(PAGE), off)
    ls = lines(log)[m:]
    if r != PAGE:
        fail("O_DSYNC write returned %d" % r)
    got = covering(done_writes(ls), off, PAGE)
    if got is None:
        fail("--cache=%s: O_DSYNC write: no completed Write covering it when write() returned" % mode, ls)
    elif not all(w[3] == 1 for w in got):
        fail("--cache=%s: O_DSYNC write: sent without FUA" % mode, ls)
    if calls(ls, "Flush"):
        fail("--cache=%s: O_DSYNC write with FUA was followed by a Flush" % mode, ls)
    os.close(fd)


# ---- 6: the daemon killed with dirty pages ----
def case_kill(path, log, pid):
    fd = os.open(path, os.O_RDWR)
    m = mark(log)
    if os.pwrite(fd, os.urandom(4 * MiB), 8 * MiB) != 4 * MiB:
        fail("write of 4 MiB was short")
    sent = sum(w[1] for w in done_writes(lines(log)[m:]))
    note("  (writeback: %d of the 4 MiB had reached the server when nbdfs was killed)" % sent)
    os.kill(pid, signal.SIGKILL)
    for _ in range(400):
        try:
            with open("/proc/%d/stat" % pid) as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        raise SystemExit("nbdfs %d still alive 20 s after SIGKILL" % pid)
    try:
        os.fsync(fd)
        fail("writeback: fsync with dirty pages after nbdfs was killed returned 0")
    except OSError as e:
        note("  (writeback: fsync after the kill: %s)" % errno.errorcode.get(e.errno, e.errno))
    try:
        os.close(fd)
    except OSError:
        pass


case = sys.argv[1]
args = sys.argv[2:]
if case == "fsync":
    case_fsync(*args)
elif case == "reads":
    case_reads(*args)
elif case == "pastend":
    case_past_end(*args)
elif case == "coherence":
    case_coherence(*args)
elif case == "dsync":
    case_dsync(*args)
elif case == "kill":
    case_kill(args[0], args[1], int(args[2]))
else:
    raise SystemExit("unknown case " + case)
PYEOF

# py WHAT CASE ARGS...: run a case of cm.py; each FAIL line is a failed
# check, other lines are notes; a crash (exception, timeout) fails too.
py() {
  local what=$1 out rc=0 l; shift
  out=$(timeout 120 python3 "$T/cm.py" "$@" 2>&1) || rc=$?
  while IFS= read -r l; do
    case $l in
      "FAIL "*) soft_fail "$what: ${l#FAIL }" ;;
      "") ;;
      *) note "$l" ;;
    esac
  done <<<"$out"
  [ "$rc" = 0 ] || soft_fail "$what: python exited with status $rc"
}

# mount_mode NAME MODE-OPTION: a fresh nbdkit memory export (log in
# $T/NAME.wire) mounted on $T/mnt-NAME with the option; sets URI, F, LOG.
mount_mode() {
  local name=$1 opt=$2
  serve_nbdkit "$name" --filter=log memory "$SIZE" logfile="$T/$name.wire"
  # serve_nbdkit may read the pid file after nbdkit created it but before
  # it wrote it (an empty SERVER_PID, never killed): read it again.
  wait_until 10 test -s "$T/$name.pid" || fail "$name: nbdkit left its pid file empty"
  [ -n "$SERVER_PID" ] || { SERVER_PID=$(cat "$T/$name.pid"); track_pid "$SERVER_PID"; }
  URI=$(unix_uri "$SOCK")
  LOG=$T/$name.wire
  mkdir "$T/mnt-$name"
  NBDFS_LOG=$T/nbdfs-$name.log mount_nbdfs "$URI" "$T/mnt-$name" "$opt"
  F=$T/mnt-$name/disk
  [ -f "$F" ] || fail "$name ($opt): no file 'disk' in the mount: $(ls -A "$T/mnt-$name")"
  [ "$(stat -c %s "$F")" = "$SIZE" ] || fail "$name ($opt): st_size $(stat -c %s "$F"), expected $SIZE"
}

# unmount_mode NAME: nbdfs is still alive, then a clean unmount.
unmount_mode() {
  if ! pid_alive "$NBDFS_PID"; then
    soft_fail "$1: nbdfs died: $(tail -n 5 "$T/nbdfs-$1.log")"
    fusermount3 -u "$T/mnt-$1" 2>/dev/null || fusermount3 -uz "$T/mnt-$1" 2>/dev/null || true
    wait "$NBDFS_PID" 2>/dev/null || true
    return
  fi
  unmount_nbdfs "$T/mnt-$1"
}

rand_file "$T/small" 8192
rand_file "$T/marker" 4096

for MODE in none read writeback; do
  note "--cache=$MODE"
  mount_mode "$MODE" "--cache=$MODE"

  py "$MODE: fsync" fsync "$MODE" "$F" "$LOG" "$URI"
  py "$MODE: reads" reads "$MODE" "$F" "$LOG"
  py "$MODE: O_DIRECT/buffered" coherence "$MODE" "$F" "$URI"
  if [ "$MODE" != writeback ]; then
    py "$MODE: O_DSYNC" dsync "$MODE" "$F" "$LOG"
  fi

  # cp onto the file (O_TRUNC): the size and the data after it stay.
  write_at "$F" 16384 "$T/marker" conv=fsync || fail "$MODE: writing the marker failed"
  if cp "$T/small" "$F" 2>"$T/cp.err"; then
    [ "$(stat -c %s "$F")" = "$SIZE" ] || soft_fail "$MODE: after cp, st_size is $(stat -c %s "$F"), expected $SIZE"
    cmp -n 8192 "$T/small" "$F" || soft_fail "$MODE: after cp, the file does not begin with the copied data"
    [ "$(range_sha "$F" 16384 4096)" = "$(sha "$T/marker")" ] ||
      soft_fail "$MODE: after cp (O_TRUNC), the data after the copied 8 KiB is gone"
    server_copy "$URI" "$T/server.img"
    cmp -n 8192 "$T/small" "$T/server.img" || soft_fail "$MODE: after cp, the export does not begin with the copied data"
    [ "$(range_sha "$T/server.img" 16384 4096)" = "$(sha "$T/marker")" ] ||
      soft_fail "$MODE: after cp (O_TRUNC), the export lost the data after the copied 8 KiB"
    rm -f "$T/server.img"
  else
    soft_fail "$MODE: cp onto the file failed: $(cat "$T/cp.err")"
  fi
  if truncate -s 4096 "$F" 2>"$T/trunc.err"; then
    soft_fail "$MODE: truncate -s 4096 succeeded"
  else
    grep -qi 'not permitted' "$T/trunc.err" || soft_fail "$MODE: truncate -s 4096 failed with '$(cat "$T/trunc.err")', expected EPERM"
  fi
  [ "$(stat -c %s "$F")" = "$SIZE" ] || soft_fail "$MODE: after truncate -s 4096, st_size is $(stat -c %s "$F")"
  unmount_mode "$MODE"

  # Writes past the end, on a mount of their own (with writeback the
  # kernel keeps its own, larger, idea of the size afterwards).
  mount_mode "end-$MODE" "--cache=$MODE"
  py "$MODE: past the end" pastend "$MODE" "$F" "$LOG" "$URI"
  unmount_mode "end-$MODE"
done

# Mounted over a regular file (naked), writeback works as it does in a
# directory: the kernel made that file with size 0 before nbdfs could say
# anything, and nbdfs must give it the export's size.
# mount_naked NAME: like mount_mode, over the regular file $T/NAME.img.
mount_naked() {
  local name=$1
  serve_nbdkit "$name" --filter=log memory "$SIZE" logfile="$T/$name.wire"
  wait_until 10 test -s "$T/$name.pid" || fail "$name: nbdkit left its pid file empty"
  [ -n "$SERVER_PID" ] || { SERVER_PID=$(cat "$T/$name.pid"); track_pid "$SERVER_PID"; }
  URI=$(unix_uri "$SOCK")
  LOG=$T/$name.wire
  printf 'the file mounted over\n' >"$T/$name.img"
  NBDFS_LOG=$T/nbdfs-$name.log mount_nbdfs "$URI" "$T/$name.img"
  F=$T/$name.img
  [ "$(stat -c %s "$F")" = "$SIZE" ] || fail "$name: st_size $(stat -c %s "$F"), expected $SIZE"
}
note "--cache=writeback over a regular file"
mount_naked naked
py "naked: fsync" fsync writeback "$F" "$LOG" "$URI"
py "naked: reads" reads writeback "$F" "$LOG"
py "naked: O_DIRECT/buffered" coherence writeback "$F" "$URI"
head -c 4096 "$F" >/dev/null || soft_fail "naked: reading failed"
unmount_nbdfs "$F"
[ "$(cat "$T/naked.img")" = "the file mounted over" ] || soft_fail "naked: the file mounted over lost its content"
mount_naked naked-end
py "naked: past the end" pastend writeback "$F" "$LOG" "$URI"
unmount_nbdfs "$F"

# writeback: nbdfs killed with dirty pages.
mount_mode kill --cache=writeback
py "writeback: killed" kill "$F" "$LOG" "$NBDFS_PID"
fusermount3 -u "$T/mnt-kill" 2>/dev/null || fusermount3 -uz "$T/mnt-kill" 2>/dev/null || true
{ wait "$NBDFS_PID"; } 2>/dev/null || true
is_mounted "$T/mnt-kill" && soft_fail "the killed nbdfs's mount is still there after fusermount3 -u"

# --direct-io is --cache=none.
mount_mode dio --direct-io
py "--direct-io: past the end" pastend none "$F" "$LOG" "$URI"
unmount_mode dio

# --cache=bogus: refused, one line, nothing mounted.
mkdir "$T/mnt-bogus"
_mounts+=("$T/mnt-bogus")
rc=0
timeout 20 "$NBDFS" -f --cache=bogus "$URI" "$T/mnt-bogus" >"$T/bogus.out" 2>&1 || rc=$?
[ "$rc" != 0 ] || soft_fail "--cache=bogus: nbdfs exited 0"
[ "$rc" != 124 ] || soft_fail "--cache=bogus: nbdfs was still running after 20 s"
[ "$(wc -l <"$T/bogus.out")" = 1 ] || soft_fail "--cache=bogus: expected one line of output, got: $(cat "$T/bogus.out")"
grep -q -- '--cache' "$T/bogus.out" || soft_fail "--cache=bogus: the error does not mention --cache: $(cat "$T/bogus.out")"
is_mounted "$T/mnt-bogus" && soft_fail "--cache=bogus: something was mounted"
finish_test
