#!/bin/bash
# How long a request waits for a lost server (--reconnect-delay), and that
# the mount heals by itself when the server comes back (or, with
# --no-reconnect, does not).  The server is nbdkit file on a 16 MiB image of
# random bytes, killed with kill -9 and restarted on the same socket; every
# read is a 64 KiB O_DIRECT dd (never the page cache), bounded by timeout 30.
#   A. --reconnect-delay 3: with the server dead, a read fails with EIO
#      within 3 + 10 s; a second read right after fails at once (< 2 s: no
#      connection, and the delay has passed); the server restarts; within
#      15 s reads work again on the same mount (the right bytes), the log
#      says 'reconnected', a write reaches the image, unmount exits 0.
#   B. --reconnect-delay 0: a read with the server dead fails at once
#      (< 3 s); after the restart the mount heals within 15 s all the same;
#      unmount exits 0.
#   C. --no-reconnect: a read with the server dead fails with EIO (< 10 s);
#      after the restart (nbdinfo reaches the server) reads still fail with
#      EIO for 6 s, and nbdfs never logs 'reconnected'; unmount works.
. "$(dirname "$0")/lib.sh"

MiB=1048576
SIZE=$((16 * MiB))
rand_file "$T/disk.img" "$SIZE"

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# timed_read FILE OFFSET: a 64 KiB O_DIRECT read of FILE at byte OFFSET
# into $T/read.out (errors in $T/read.err), bounded by timeout 30.  Sets RC
# (its status) and MS (milliseconds it took).
timed_read() {
  local t0
  t0=$(now_ms)
  RC=0
  timeout 30 dd if="$1" of="$T/read.out" bs=64k count=1 skip="$2" iflag=direct,skip_bytes status=none \
    2>"$T/read.err" || RC=$?
  MS=$(($(now_ms) - t0))
}

# read_ok FILE OFFSET: such a read succeeds and gives the image's bytes.
read_ok() {
  timed_read "$1" "$2"
  [ "$RC" = 0 ] && [ "$(sha "$T/read.out")" = "$(range_sha "$T/disk.img" "$2" 65536)" ]
}

# expect_read_eio LABEL FILE OFFSET MAX_MS: such a read fails with EIO in
# less than MAX_MS milliseconds.
expect_read_eio() {
  timed_read "$2" "$3"
  [ "$RC" != 124 ] || fail "$1: the read hung (killed by timeout 30)"
  [ "$RC" != 0 ] || fail "$1: the read succeeded"
  grep -qi 'input/output error' "$T/read.err" || fail "$1: '$(cat "$T/read.err")', expected EIO"
  [ "$MS" -lt "$4" ] || fail "$1: the read took $MS ms to fail, expected less than $4 ms"
  note "$1: EIO after $MS ms"
}

# kill_server LOG: kill -9 the server; wait (briefly) for nbdfs to log the loss.
kill_server() {
  kill -9 "$SERVER_PID"
  wait_until 10 eval '! pid_alive "$SERVER_PID"' || fail "nbdkit survived kill -9"
  wait_until 10 grep -qi 'lost' "$1" || note "(no 'lost' logged yet for the idle connections)"
}

# restart_server NAME: nbdkit again on the same socket (the stale one removed).
restart_server() {
  rm -f "$T/$1.sock"
  serve_nbdkit "$1" file "$T/disk.img"
}

# ---- A: --reconnect-delay 3 ----
serve_nbdkit a file "$T/disk.img"
mkdir "$T/a"
F=$T/a/disk
LOG=$T/nbdfs-a.log
NBDFS_LOG=$LOG mount_nbdfs "$(unix_uri "$SOCK")" "$T/a" -v --reconnect-delay 3
read_ok "$F" 0 || fail "A: a read with the server up failed: $(cat "$T/read.err")"
kill_server "$LOG"
expect_read_eio "A: read with the server dead (--reconnect-delay 3)" "$F" $((1 * MiB)) 13000
expect_read_eio "A: second read, delay already passed" "$F" $((2 * MiB)) 2000
grep -qi 'lost' "$LOG" || fail "A: no 'lost' line in the log: $(cat "$LOG")"
restart_server a
wait_until 15 read_ok "$F" $((3 * MiB)) ||
  fail "A: reads do not work 15 s after the server came back: rc $RC $(cat "$T/read.err")"
read_ok "$F" $((1 * MiB)) || fail "A: the read that failed before does not work now: $(cat "$T/read.err")"
grep -qi 'reconnected' "$LOG" || fail "A: the mount works again but no 'reconnected' in the log: $(cat "$LOG")"
note "$(grep -i -m1 'reconnected' "$LOG")"
rand_file "$T/w" 65536
write_at "$F" $((5 * MiB + 512)) "$T/w" oflag=direct || fail "A: a write after the reconnection failed"
sync "$F" || fail "A: fsync after the reconnection failed"
[ "$(range_sha "$T/disk.img" $((5 * MiB + 512)) 65536)" = "$(sha "$T/w")" ] ||
  fail "A: a write after the reconnection is not in the image"
NBDFS_LOG=$LOG unmount_nbdfs "$T/a"

# ---- B: --reconnect-delay 0 ----
serve_nbdkit b file "$T/disk.img"
mkdir "$T/b"
F=$T/b/disk
LOG=$T/nbdfs-b.log
NBDFS_LOG=$LOG mount_nbdfs "$(unix_uri "$SOCK")" "$T/b" -v --reconnect-delay 0
read_ok "$F" 0 || fail "B: a read with the server up failed: $(cat "$T/read.err")"
kill_server "$LOG"
expect_read_eio "B: read with the server dead (--reconnect-delay 0)" "$F" $((1 * MiB)) 3000
restart_server b
wait_until 15 read_ok "$F" $((1 * MiB)) ||
  fail "B: reads do not work 15 s after the server came back: rc $RC $(cat "$T/read.err")"
grep -qi 'reconnected' "$LOG" || fail "B: no 'reconnected' in the log: $(cat "$LOG")"
NBDFS_LOG=$LOG unmount_nbdfs "$T/b"

# ---- C: --no-reconnect ----
serve_nbdkit c file "$T/disk.img"
mkdir "$T/c"
F=$T/c/disk
LOG=$T/nbdfs-c.log
NBDFS_LOG=$LOG mount_nbdfs "$(unix_uri "$SOCK")" "$T/c" -v --no-reconnect
read_ok "$F" 0 || fail "C: a read with the server up failed: $(cat "$T/read.err")"
kill_server "$LOG"
expect_read_eio "C: read with the server dead (--no-reconnect)" "$F" $((1 * MiB)) 10000
restart_server c
[ "$(nbdinfo --size "$(unix_uri "$SOCK")")" = "$SIZE" ] || fail "C: the restarted server does not answer"
end=$((SECONDS + 6))
n=0
while [ "$SECONDS" -lt "$end" ]; do
  n=$((n + 1))
  expect_read_eio "C: read $n after the restart" "$F" $(((n % 200) * 65536)) 10000
  sleep 0.5
done
# (a line that says it will not reconnect does not count)
if [ "$(grep -i 'reconnected' "$LOG" | grep -Evic "not |never|no-reconnect|won't")" -gt 0 ]; then
  fail "C: --no-reconnect, but nbdfs reconnected: $(grep -i reconnected "$LOG")"
fi
fusermount3 -u "$T/c" || fail "C: fusermount3 -u failed"
wait_until 30 eval '! pid_alive "$NBDFS_PID"' || fail "C: nbdfs did not exit within 30 s of unmount"
rc=0
wait "$NBDFS_PID" || rc=$?
[ "$rc" -lt 128 ] || fail "C: nbdfs died from signal $((rc - 128))"
echo ok
