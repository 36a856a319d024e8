#!/bin/bash
# Durability, seen by the server through nbdkit's log filter (outermost, so
# it logs the client's requests), with each --cache mode (read: write-through
# page cache, none: direct I/O, writeback: the kernel's writeback cache,
# where a plain write stays in the page cache until fsync or close, and an
# O_DSYNC write is written back and then flushed, without FUA, before it
# returns):
#  - an nbdkit memory export with native FUA: O_DSYNC and O_SYNC writes
#    reach the server as writes with FUA (fua=1), before the write returns;
#    plain writes have fua=0 and are not followed by a Flush; fsync and
#    fdatasync are a Flush that completes before they return, after the
#    write; dd oflag=dsync writes carry FUA, dd conv=fsync and sync FILE end
#    with a Flush;
#  - the same behind --filter=fua (fuamode=none: no FUA advertised): no
#    write ever carries FUA, and an O_DSYNC/O_SYNC write is followed by a
#    Flush before the write returns (with --cache=none the kernel adds no
#    fsync of its own, so that Flush is nbdfs's);
#  - a server with a 4 KiB minimum block size: an unaligned O_DSYNC write
#    (read-modify-write) still carries FUA.
# The data is checked afterwards with nbdcopy.
. "$(dirname "$0")/lib.sh"

MiB=1048576
SIZE=$((64 * MiB))
mkdir "$T/mnt"
F=$T/mnt/disk

# python_checks LOG FUA(1|0) MODE: the syscall-level checks, which
# must look at the log before the file is closed (closing flushes too).
python_checks() {
  python3 - "$F" "$1" "$2" "$3" "$T/expected" <<'EOF'
import os, re, sys
path, log, fua, mode, expected = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4], sys.argv[5]
wb = mode == "writeback" 
MiB = 1 << 20
model = bytearray(open(expected, "rb").read())

def lines():
    with open(log) as f:
        return f.read().splitlines()
def mark():
    return len(lines())
def calls(ls, act):
    return [l for l in ls if re.search(r"connection=\d+ %s id=" % act, l)]
def field(l, name):
    return int(re.search(r"\b%s=(0x[0-9a-f]+|\d+)" % name, l).group(1), 0)
def fail(msg, ls=()):
    sys.exit("%s (--cache=%s)\n  log:\n    %s" % (msg, mode, "\n    ".join(ls)))

def covered(writes, off, n):
    """The writes cover [off, off+n)."""
    got = sorted((field(w, "offset"), field(w, "count")) for w in writes)
    pos = off
    for o, c in got:
        if o <= pos < o + c:
            pos = o + c
    return pos >= off + n

def flush_after_write(ls):
    """Some Flush is called after the last write returned, and returns."""
    last_write = max((i for i, l in enumerate(ls) if re.search(r"\.\.\.Write id=\d+ return=0", l)), default=-1)
    if last_write < 0:
        return False
    later = ls[last_write + 1:]
    return any(re.search(r"connection=\d+ Flush id=", l) for l in later) and \
           any(re.search(r"\.\.\.Flush id=\d+ return=0", l) for l in later)

def pw(fd, off, n, what):
    data = os.urandom(n)
    m = mark()
    try:
        if os.pwrite(fd, data, off) != n:
            fail("%s: short write" % what)
    except OSError as e:
        fail("%s: %s" % (what, e), lines()[m:])
    model[off:off + n] = data
    return lines()[m:]

for flag, fname in ((os.O_DSYNC, "O_DSYNC"), (os.O_SYNC, "O_SYNC")):
    fd = os.open(path, os.O_WRONLY | flag)
    for off, n in ((MiB, 65536), (3 * MiB + 4096, 4096), (5 * MiB + 1, 1000)):
        what = "%s write of %d bytes at %d" % (fname, n, off)
        ls = pw(fd, off, n, what)
        ws = calls(ls, "Write")
        if not covered(ws, off, n):
            fail("%s: the server did not get the data before the write returned" % what, ls)
        if fua and wb:
            # Written back, then fsync'd by the kernel: FUA or a Flush.
            if not all(field(w, "fua") == 1 for w in ws) and not flush_after_write(ls):
                fail("%s: neither FUA nor a Flush after the write" % what, ls)
        elif fua:
            if not all(field(w, "fua") == 1 for w in ws):
                fail("%s: written without FUA" % what, ls)
        else:
            if any(field(w, "fua") == 1 for w in ws):
                fail("%s: FUA sent to a server that does not advertise it" % what, ls)
            if not flush_after_write(ls):
                fail("%s: no Flush after the write (server without FUA)" % what, ls)
    os.close(fd)

fd = os.open(path, os.O_WRONLY)
what = "plain write"
ls = pw(fd, 7 * MiB, 65536, what)
ws = calls(ls, "Write")
if not wb and not covered(ws, 7 * MiB, 65536):
    fail("%s: did not reach the server" % what, ls)
if any(field(w, "fua") == 1 for w in ws):
    fail("%s: sent with FUA" % what, ls)
if calls(ls, "Flush"):
    fail("%s: followed by a Flush" % what, ls)
for sync, name in ((os.fsync, "fsync"), (os.fdatasync, "fdatasync")):
    pw(fd, 9 * MiB + 512, 8192, "write before " + name)
    m = mark()
    sync(fd)
    ls = lines()[m:]
    if not any(re.search(r"\.\.\.Flush id=\d+ return=0", l) for l in ls):
        fail("%s after a write: no completed Flush on the server" % name, ls)
os.close(fd)
open(expected, "wb").write(model)
EOF
}

# dd_checks LOG FUA: O_DSYNC and fsync through dd, and sync FILE.
dd_checks() {
  local log=$1 fua=$2 mode=$3 mark m0 m1
  rand_file "$T/dd.data" $((64 * 1024))
  mark=$(log_mark "$log")
  write_at "$F" $((11 * MiB)) "$T/dd.data" bs=4096 oflag=dsync || fail "dd oflag=dsync failed"
  write_at "$T/expected" $((11 * MiB)) "$T/dd.data"
  log_since "$log" "$mark" >"$T/dd.log"
  [ "$(log_requests Write <"$T/dd.log" | log_count_bytes)" -ge $((64 * 1024)) ] || fail "dd oflag=dsync: data did not reach the server: $(cat "$T/dd.log")"
  if [ "$fua" = 1 ] && [ "$mode" = writeback ]; then
    # 16 O_DSYNC writes of 4 KiB, each written back and fsync'd: a Flush each
    # unless its write carried FUA.
    [ $(($(log_requests Flush <"$T/dd.log" | wc -l) + $(log_requests Write <"$T/dd.log" | grep -c 'fua=1'))) -ge 16 ] ||
      fail "dd oflag=dsync (writeback): fewer Flush requests and FUA writes than writes: $(cat "$T/dd.log")"
  elif [ "$fua" = 1 ]; then
    log_requests Write <"$T/dd.log" | grep -q 'fua=0' && fail "dd oflag=dsync: a write without FUA: $(log_requests Write <"$T/dd.log")"
  else
    log_requests Write <"$T/dd.log" | grep -q 'fua=1' && fail "dd oflag=dsync: FUA sent to a server without FUA"
    # 16 O_DSYNC writes of 4 KiB: each one followed by a Flush.
    [ "$(log_requests Flush <"$T/dd.log" | wc -l)" -ge 16 ] ||
      fail "dd oflag=dsync, 16 writes, server without FUA: only $(log_requests Flush <"$T/dd.log" | wc -l) Flush requests"
  fi
  rand_file "$T/dd2.data" $((128 * 1024))
  mark=$(log_mark "$log")
  write_at "$F" $((13 * MiB + 3)) "$T/dd2.data" conv=notrunc,fsync || fail "dd conv=fsync failed"
  write_at "$T/expected" $((13 * MiB + 3)) "$T/dd2.data"
  log_since "$log" "$mark" | grep -qE '\.\.\.Flush id=[0-9]+ return=0' || fail "dd conv=fsync: no Flush reached the server"
  # sync FILE (an fsync of its own) while a written descriptor is still open
  # (so its close has not flushed yet).
  python3 -c '
import os, subprocess, sys
count = lambda: open(sys.argv[2]).read().count("\n")
fd = os.open(sys.argv[1], os.O_WRONLY)
os.pwrite(fd, b"y" * 50, 15 * 1048576 + 200)
m0 = count()
subprocess.run(["sync", sys.argv[1]], check=True)
m1 = count()
os.close(fd)
print(m0, m1)' "$F" "$log" >"$T/sync.marks" || fail "write + sync FILE failed"
  printf 'y%.0s' {1..50} | dd of="$T/expected" bs=50 seek=$((15 * MiB + 200)) oflag=seek_bytes conv=notrunc status=none
  read -r m0 m1 <"$T/sync.marks"
  sed -n "$((m0 + 1)),${m1}p" "$log" | grep -qE '\.\.\.Flush id=[0-9]+ return=0' ||
    fail "sync FILE: no Flush reached the server"
}

# run NAME FUA NBDKIT-ARGS...: for every --cache mode.
# A failed check is reported and the other mount mode still runs; if nbdfs
# died, its mount is cleaned up first.
run() {
  local name=$1 fua=$2 mode ok=1; shift 2
  serve_nbdkit "$name" --filter=log "$@" logfile="$T/$name.log"
  local uri
  uri=$(unix_uri "$SOCK")
  if [ "$fua" = 1 ]; then
    nbdinfo --json "$uri" | grep -q '"can_fua": true' || fail "$name: server does not advertise FUA"
  else
    nbdinfo --json "$uri" | grep -q '"can_fua": false' || fail "$name: server still advertises FUA"
  fi
  truncate -s "$SIZE" "$T/expected"
  for mode in read none writeback; do
    NBDFS_LOG=$T/nbdfs-$name-$mode.log mount_nbdfs "$uri" "$T/mnt" --cache=$mode
    if ! python_checks "$T/$name.log" "$fua" "$mode"; then
      soft_fail "$name (--cache=$mode): O_DSYNC/O_SYNC/fsync checks failed (see above)"
      ok=0
    elif ! (dd_checks "$T/$name.log" "$fua" "$mode"); then
      soft_fail "$name (--cache=$mode): dd/sync checks failed (see above)"
      ok=0
    fi
    if ! pid_alive "$NBDFS_PID"; then
      local rc=0
      wait "$NBDFS_PID" || rc=$?
      soft_fail "$name (--cache=$mode): nbdfs died (exit status $rc)"
      fusermount3 -u "$T/mnt" 2>/dev/null || fusermount3 -uz "$T/mnt" 2>/dev/null || true
      continue
    fi
    unmount_nbdfs "$T/mnt"
  done
  if [ "$ok" = 1 ]; then
    server_copy "$uri" "$T/$name.server"
    [ "$(sha "$T/$name.server")" = "$(sha "$T/expected")" ] || soft_fail "$name: the export's content differs from what was written"
  fi
  rm -f "$T/expected"
}

run fua 1 memory "$SIZE"
# (fuamode=none is the default; nbdkit 1.32 rejects it spelled out.)
run nofua 0 --filter=fua memory "$SIZE"

# Unaligned O_DSYNC write on a 4 KiB minimum block server: the whole-block
# write of the read-modify-write carries FUA.
serve_nbdkit bs --filter=log --filter=blocksize-policy memory "$SIZE" logfile="$T/bs.log" \
  blocksize-minimum=4096 blocksize-preferred=4096 blocksize-maximum=65536 blocksize-error-policy=error
mount_nbdfs "$(unix_uri "$SOCK")" "$T/mnt" --direct-io
rand_file "$T/odd" 1001
mark=$(log_mark "$T/bs.log")
write_at "$F" $((MiB + 77)) "$T/odd" oflag=dsync || fail "unaligned O_DSYNC write failed"
log_since "$T/bs.log" "$mark" | log_requests Write >"$T/bs-writes.log"
[ -s "$T/bs-writes.log" ] || fail "unaligned O_DSYNC write: nothing written"
grep -q 'fua=0' "$T/bs-writes.log" && fail "unaligned O_DSYNC write: read-modify-write without FUA: $(cat "$T/bs-writes.log")"
log_since "$T/bs.log" "$mark" | grep -q 'return=-1' && fail "unaligned O_DSYNC write: the server refused a request: $(log_since "$T/bs.log" "$mark")"
[ "$(range_sha "$F" $((MiB + 77)) 1001)" = "$(sha "$T/odd")" ] || fail "unaligned O_DSYNC write reads back differently"
unmount_nbdfs "$T/mnt"
finish_test
