#!/bin/bash
# Shutdown when the server cannot take the final FLUSH:
#  A. acknowledged writes that no FLUSH covers (the writer keeps its
#     descriptor, so there is no close-time FLUSH), the server killed (and
#     not restarted), SIGTERM: nbdfs exits within 60 s with a non-zero
#     status (not a signal) and logs a line about the failed flush (or,
#     with the default writeback cache, about the failed write-back of the
#     kernel's dirty pages, which nbdfs fsyncs at a signalled stop).
#  B. --timeout 0 (never drop a silent connection), the server stopped
#     (SIGSTOP) with a write outstanding, SIGTERM: nbdfs still exits, within
#     90 s (the shutdown is bounded on its own), and not from a signal; the
#     stuck writer is released.
. "$(dirname "$0")/lib.sh"

MiB=1048576

# stuck WHY: fail, killing nbdfs first, so that the cleanup's look at the
# mount point does not hang on the stuck daemon.
stuck() { kill -9 "$NBDFS_PID" 2>/dev/null || true; fail "$@"; }

# hold_write FILE OFFSET SRC READY FIFO: in the background, write SRC into
# FILE at OFFSET, create READY, then keep the descriptor open until FIFO is
# closed by us.  Sets HOLDER.
hold_write() {
  mkfifo "$5"
  python3 -c '
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
data = open(sys.argv[3], "rb").read()
if os.pwrite(fd, data, int(sys.argv[2])) != len(data):
    sys.exit("short write")
open(sys.argv[4], "w").close()
sys.stdin.read()     # hold the descriptor until the FIFO is closed
try:
    os.close(fd)
except OSError:
    pass
' "$1" "$2" "$3" "$4" <"$5" &
  HOLDER=$!
  track_pid "$HOLDER"
}

# exit_within SECS WHAT: nbdfs exits within SECS; sets RC to its status.
exit_within() {
  wait_until "$1" eval '! pid_alive "$NBDFS_PID"' || stuck "$2: nbdfs did not exit within $1 s of SIGTERM"
  RC=0
  wait "$NBDFS_PID" || RC=$?
  [ "$RC" -lt 128 ] || fail "$2: nbdfs died from signal $((RC - 128)): $(tail -n 20 "$NBDFS_LOG")"
  note "$2: nbdfs exited with status $RC after $((SECONDS - T0)) s"
}

# ---- A: unflushed writes, server gone ----
serve_nbdkit a memory $((64 * MiB))
mkdir "$T/a"
export NBDFS_LOG=$T/nbdfs-a.log
mount_nbdfs "$(unix_uri "$SOCK")" "$T/a" -v --reconnect-delay 2
rand_file "$T/data" $((MiB + 4097))
hold_write "$T/a/disk" 12345 "$T/data" "$T/written" "$T/hold"
exec 8>"$T/hold"
wait_until 30 test -e "$T/written" || fail "the writer did not write"
kill -9 "$SERVER_PID"
wait_until 10 eval '! pid_alive "$SERVER_PID"' || fail "nbdkit did not die"
mark=$(log_mark "$NBDFS_LOG")
T0=$SECONDS
kill -TERM "$NBDFS_PID"
exit_within 60 "A"
exec 8>&-
wait "$HOLDER" || true
[ "$RC" != 0 ] || fail "A: exit status 0, although acknowledged writes could not be flushed: $(cat "$NBDFS_LOG")"
# (With the writeback cache the writes are still the kernel's dirty pages:
# writing them back fails first, and that is the line.)
log_since "$NBDFS_LOG" "$mark" | grep -qiE 'flush|writing back' ||
  fail "A: no line about the failed flush or write-back in the log: $(log_since "$NBDFS_LOG" "$mark")"
note "A: $(log_since "$NBDFS_LOG" "$mark" | grep -iE -m1 'flush|writing back')"
wait_until 10 eval '! is_mounted "$T/a"' || fail "A: still mounted"

# ---- B: a stopped server, --timeout 0 ----
serve_nbdkit b memory $((64 * MiB))
mkdir "$T/b"
export NBDFS_LOG=$T/nbdfs-b.log
mount_nbdfs "$(unix_uri "$SOCK")" "$T/b" -v --timeout 0
rand_file "$T/big" $((16 * MiB))
write_at "$T/b/disk" 0 "$T/big" || fail "B: write before stopping the server failed"
kill -STOP "$SERVER_PID"
dd if="$T/big" of="$T/b/disk" bs=16M count=1 conv=notrunc oflag=direct status=none 2>"$T/dd.err" &
dd_pid=$!
track_pid "$dd_pid"
sleep 2
pid_alive "$dd_pid" || fail "B: the write to the stopped server finished: $(cat "$T/dd.err")"
T0=$SECONDS
kill -TERM "$NBDFS_PID"
exit_within 90 "B"
wait_until 30 eval '! pid_alive "$dd_pid"' || fail "B: the writer is still stuck after nbdfs exited"
wait "$dd_pid" && fail "B: the write to the stopped server succeeded"
wait_until 10 eval '! is_mounted "$T/b"' || fail "B: still mounted"
kill -CONT "$SERVER_PID"
echo ok
