#!/bin/bash
# Unmounting while I/O is in flight on 4 connections (fio randrw 4k
# iodepth 32 O_DIRECT, plus a loop of stat, fsync, SEEK_HOLE and punch-hole
# fallocate through a held descriptor):
#  A. SIGTERM mid-run: nbdfs exits 0 within 30 s;
#  B. fusermount3 -uz mid-run (a plain -u fails with EBUSY while files are
#     open; the lazy one detaches at once and the daemon ends when the last
#     descriptor is closed): nbdfs exits 0 within 30 s.
# Each time, nbdkit's log shows the orderly end: no Write, Trim or Zero (call
# or return) after the last Flush, no request on a connection after its
# Disconnect, and NBD_CMD_DISC from every connection that was opened.
. "$(dirname "$0")/lib.sh"

MiB=1048576
SIZE=$((256 * MiB))
serve_nbdkit mem -v --filter=log memory "$SIZE" logfile="$T/requests.log"
URI=$(unix_uri "$SOCK")
mkdir "$T/mnt"
F=$T/mnt/disk

# stuck WHY: fail, killing nbdfs first, so that the cleanup's look at the
# mount point does not hang on the stuck daemon.
stuck() { kill -9 "$NBDFS_PID" 2>/dev/null || true; fail "$@"; }

# start_load: fio and the metadata loop in the background (both bounded);
# sets FIO_PID and LOOP_PID.  Their errors after the unmount are expected.
start_load() {
  timeout 60 fio --name=race --filename="$F" --direct=1 --ioengine=libaio --iodepth=32 \
    --bs=4k --rw=randrw --size="$SIZE" --runtime=8 --time_based >"$T/fio.out" 2>&1 &
  FIO_PID=$!
  track_pid "$FIO_PID"
  rm -f "$T/stop"
  timeout 60 python3 - "$F" "$T/stop" >"$T/loop.out" 2>&1 <<'PYEOF' &
import ctypes, ctypes.util, os, sys, time
path, stop = sys.argv[1], sys.argv[2]
libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
PUNCH = 0x02 | 0x01   # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
fd = os.open(path, os.O_RDWR)   # held: path lookups fail once unmounted
def punch(off):
    if libc.fallocate(fd, PUNCH, off, 65536) != 0:
        raise OSError(ctypes.get_errno(), "fallocate")
size = os.fstat(fd).st_size
n = ok = 0
end = time.time() + 20
while not os.path.exists(stop) and time.time() < end:
    off = (n * 7919 * 65536) % (size - 65536)
    for op in (lambda: os.stat(path),
               lambda: os.fstat(fd),
               lambda: os.fsync(fd),
               lambda: os.lseek(fd, off, os.SEEK_HOLE),
               lambda: punch(off)):
        try:
            op()
            ok += 1
        except OSError:
            pass
    n += 1
print("rounds=%d ok=%d" % (n, ok))
PYEOF
  LOOP_PID=$!
  track_pid "$LOOP_PID"
}

# stop_load: wait (bounded by the timeouts above) for fio, then stop the
# loop and wait for it.
stop_load() {
  wait "$FIO_PID" || true
  touch "$T/stop"
  wait "$LOOP_PID" || true
  note "fio: $(grep -Eo 'err= *[0-9]+[^)]*' "$T/fio.out" | head -n 1); loop: $(tail -n 1 "$T/loop.out")"
}

# wait_exit0 WHAT: nbdfs exits within 30 s, with status 0.
wait_exit0() {
  wait_until 30 eval '! pid_alive "$NBDFS_PID"' ||
    stuck "$1: nbdfs did not exit within 30 s: $(tail -n 20 "$T/nbdfs.log")"
  local rc=0
  wait "$NBDFS_PID" || rc=$?
  [ "$rc" = 0 ] || fail "$1: nbdfs exited with status $rc: $(tail -n 20 "$T/nbdfs.log")"
}

# check_log FROM-LINE WHAT: the part of requests.log after FROM-LINE ends
# in order (see the top).
check_log() {
  local from=$1 what=$2
  # nbdkit logs the closes and the NBD_CMD_DISC as it gets to them.
  settled() {
    tail -n +"$((from + 1))" "$T/requests.log" >"$T/part.log"
    conns=$(grep -c ' Connect export=' "$T/part.log" || true)
    discs=$(( $(grep -c 'client sent NBD_CMD_DISC' "$T/mem.log" || true) - DISC0 ))
    [ "$(grep -c ' Disconnect ' "$T/part.log" || true)" -ge "$conns" ] && [ "$discs" -ge "$conns" ]
  }
  local conns discs
  wait_until 10 settled || true
  python3 - "$T/part.log" "$what" <<'PYEOF' || fail "$what: see above"
import re, sys
lines = open(sys.argv[1]).read().splitlines()
what = sys.argv[2]
bad = []
last_flush = max((i for i, l in enumerate(lines)
                  if re.search(r"connection=\d+ Flush id=", l)), default=None)
writes = [i for i, l in enumerate(lines)
          if re.search(r"connection=\d+ (\.\.\.)?(Write|Trim|Zero) id=", l)]
if not writes:
    bad.append("no writes logged: the load did not run")
elif last_flush is None:
    bad.append("no Flush logged at all")
else:
    after = [lines[i] for i in writes if i > last_flush]
    if after:
        bad.append("%d Write/Trim/Zero line(s) after the last Flush (%s), first: %s"
                   % (len(after), lines[last_flush], after[0]))
connected, disconnected = set(), {}
for i, l in enumerate(lines):
    m = re.search(r"connection=(\d+) (\S+)", l)
    if not m:
        continue
    c, ev = m.group(1), m.group(2)
    if ev == "Connect":
        connected.add(c)
    elif c in disconnected:
        bad.append("connection %s: '%s' after its Disconnect" % (c, l))
    elif ev == "Disconnect":
        disconnected[c] = i
if not connected:
    bad.append("no connection logged")
missing = sorted(connected - set(disconnected))
if missing:
    bad.append("connection(s) %s never closed" % ", ".join(missing))
for b in bad[:10]:
    print("%s: %s" % (what, b), file=sys.stderr)
print("%s: %d connections, %d write-type lines, last Flush at line %s of %d"
      % (what, len(connected), len(writes), last_flush, len(lines)), file=sys.stderr)
sys.exit(1 if bad else 0)
PYEOF
  [ "$discs" = "$conns" ] || fail "$what: $discs of $conns connections sent NBD_CMD_DISC"
}

# ---- A: SIGTERM while the load runs ----
from=$(log_mark "$T/requests.log")
DISC0=$(grep -c 'client sent NBD_CMD_DISC' "$T/mem.log" || true)
mount_nbdfs "$URI" "$T/mnt" -C 4 -v
start_load
sleep 3
pid_alive "$FIO_PID" || fail "fio ended before the unmount: $(cat "$T/fio.out")"
kill -TERM "$NBDFS_PID"
wait_exit0 "SIGTERM"
stop_load
wait_until 10 eval '! is_mounted "$T/mnt"' || fail "still mounted after SIGTERM"
check_log "$from" "SIGTERM"

# ---- B: lazy unmount while the load runs ----
from=$(log_mark "$T/requests.log")
DISC0=$(grep -c 'client sent NBD_CMD_DISC' "$T/mem.log" || true)
mount_nbdfs "$URI" "$T/mnt" -C 4 -v
start_load
sleep 3
pid_alive "$FIO_PID" || fail "fio ended before the unmount: $(cat "$T/fio.out")"
fusermount3 -uz "$T/mnt" || fail "fusermount3 -uz failed"
! is_mounted "$T/mnt" || fail "still mounted after fusermount3 -uz"
stop_load          # the daemon serves the open descriptors until they close
wait_exit0 "lazy unmount"
check_log "$from" "lazy unmount"
echo ok
