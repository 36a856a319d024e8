#!/bin/bash
# The server goes away or stops answering:
#  A. kill -9 of nbdkit in the middle of a writer and a reader: both fail
#     with EIO (bounded wait), later reads and writes fail with EIO at once,
#     stat still works, the log says the connection was lost, and unmount
#     still works and nbdfs exits.
#  B. a server that never answers a read (delay filter) with --timeout 3:
#     the read fails with EIO instead of hanging; the log says why.
#  C. a stopped server (SIGSTOP) during a large O_DIRECT write with
#     --timeout 3: the write fails with EIO; unmount works while the server
#     is still stopped.
. "$(dirname "$0")/lib.sh"

MiB=1048576

# io_of PID FIELD: a counter from /proc/PID/io (0 if gone).
io_of() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/io" 2>/dev/null || echo 0; }

# finish PID ERRFILE WHAT SECONDS: wait (bounded) for the background command
# PID; it must fail with an I/O error.
expect_eio_exit() {
  local pid=$1 err=$2 what=$3 secs=$4 rc=0
  wait_until "$secs" eval '! pid_alive '"$pid" || fail "$what did not fail within ${secs}s (hangs)"
  wait "$pid" || rc=$?
  [ "$rc" != 0 ] || fail "$what succeeded"
  grep -qi 'input/output error' "$err" || fail "$what: '$(cat "$err")', expected EIO"
}

# expect_eio WHAT CMD...: run CMD (bounded); it must fail with EIO.
expect_eio() {
  local what=$1 rc=0; shift
  timeout 30 "$@" 2>"$T/eio.err" || rc=$?
  [ "$rc" != 124 ] || fail "$what hung (more than 30s)"
  [ "$rc" != 0 ] || fail "$what succeeded"
  grep -qi 'input/output error' "$T/eio.err" || fail "$what: '$(cat "$T/eio.err")', expected EIO"
}

# unmount_after_failure DIR: fusermount3 -u works and nbdfs exits (any
# status: the server is gone).
unmount_after_failure() {
  fusermount3 -u "$1" || fail "fusermount3 -u $1 failed"
  wait_until 30 eval '! pid_alive "$NBDFS_PID"' || fail "nbdfs did not exit within 30s of unmount"
  local rc=0
  wait "$NBDFS_PID" || rc=$?
  [ "$rc" -lt 128 ] || fail "nbdfs died from signal $((rc - 128)) after the server was lost"
  note "nbdfs exited with status $rc"
  ! is_mounted "$1" || fail "$1 still mounted"
}

# ---- A: kill -9 mid-I/O ----
SIZE=$((256 * MiB))
serve_nbdkit mem --filter=rate memory "$SIZE" rate=40M   # ~5 MB/s: I/O is in flight for a while
mkdir "$T/a"
F=$T/a/disk
NBDFS_LOG=$T/nbdfs-a.log mount_nbdfs "$(unix_uri "$SOCK")" "$T/a" -v --reconnect-delay 5
dd if=/dev/urandom of="$F" bs=64k count=2000 conv=notrunc 2>"$T/w.err" &
wpid=$!
dd if="$F" of=/dev/null bs=64k skip=2048 count=2000 iflag=direct 2>"$T/r.err" &
rpid=$!
progress() { [ "$(io_of "$wpid" wchar)" -ge $((MiB)) ] && [ "$(io_of "$rpid" rchar)" -ge $((MiB)) ]; }
wait_until 60 progress || fail "no I/O progress before the kill: $(cat "$T/w.err" "$T/r.err")"
pid_alive "$wpid" && pid_alive "$rpid" || fail "the I/O finished before the kill"
kill -9 "$SERVER_PID"
expect_eio_exit "$wpid" "$T/w.err" "writer" 30
expect_eio_exit "$rpid" "$T/r.err" "reader" 30
grep -q 'lost' "$T/nbdfs-a.log" || fail "no 'lost' line in the log: $(cat "$T/nbdfs-a.log")"
note "$(grep -m1 lost "$T/nbdfs-a.log")"
# Later I/O fails at once, on fresh opens and at offsets never read.
expect_eio "later O_DIRECT read" dd if="$F" of=/dev/null bs=4k count=1 skip=50000 iflag=direct status=none
expect_eio "later buffered read" dd if="$F" of=/dev/null bs=4k count=1 skip=60000 status=none
expect_eio "later write" dd if=/dev/zero of="$F" bs=4k count=1 seek=10 conv=notrunc status=none
[ "$(stat -c %s "$F")" = "$SIZE" ] || fail "stat after the server died: $(stat -c %s "$F" 2>&1)"
unmount_after_failure "$T/a"

# ---- B: a read that is never answered ----
serve_nbdkit slow --filter=delay memory $((16 * MiB)) delay-read=100
mkdir "$T/b"
F=$T/b/disk
NBDFS_LOG=$T/nbdfs-b.log mount_nbdfs "$(unix_uri "$SOCK")" "$T/b" -v --timeout 3 --reconnect-delay 5
expect_eio "read from a stalled server" dd if="$F" of=/dev/null bs=4k count=1 iflag=direct status=none
grep -q 'answered nothing for 3 seconds' "$T/nbdfs-b.log" || fail "timeout not logged: $(cat "$T/nbdfs-b.log")"
unmount_after_failure "$T/b"

# ---- C: a stopped server during a large write ----
serve_nbdkit stopped memory $((64 * MiB))
mkdir "$T/c"
F=$T/c/disk
NBDFS_LOG=$T/nbdfs-c.log mount_nbdfs "$(unix_uri "$SOCK")" "$T/c" -v --timeout 3 -C 1 --reconnect-delay 5
rand_file "$T/big" $((32 * MiB))
write_at "$F" 0 "$T/big" oflag=direct || fail "write before stopping the server failed"
kill -STOP "$SERVER_PID"
expect_eio "write to a stopped server" dd if="$T/big" of="$F" bs=32M count=1 conv=notrunc oflag=direct status=none
grep -q 'lost' "$T/nbdfs-c.log" || fail "no 'lost' line in the log: $(cat "$T/nbdfs-c.log")"
note "$(grep -m1 lost "$T/nbdfs-c.log")"
unmount_after_failure "$T/c"
kill -CONT "$SERVER_PID"
echo ok
