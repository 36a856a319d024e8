#!/bin/bash
# A write that failed must never land over a later write that succeeded.
# With -C 4 --timeout 2 --reconnect-delay 0:
#  A. every write takes the server 4 s (delay filter): a 64 KiB write of
#     'Y' fails with EIO (its connection stays silent past --timeout, and
#     --reconnect-delay 0 fails it at once), within a bound; a write of 'Z'
#     to the same place right after may succeed or fail.
#  B. the server is stopped (SIGSTOP) during the 'Y' write, which fails with
#     EIO, and continued just before the 'Z' write (which the server can
#     then answer at once), while 'Y' may still sit in the dropped
#     connection or in nbdfs's replay state.
# Each time, 10 s later, the server's copy (read by nbdcopy) is all 'Z' if
# the 'Z' write succeeded: never 'Y' (nor a mix) after a successful 'Z'.
. "$(dirname "$0")/lib.sh"

K64=65536
head -c $K64 /dev/zero | tr '\0' Y >"$T/Y"
head -c $K64 /dev/zero | tr '\0' Z >"$T/Z"

# stuck WHY: fail, killing nbdfs first, so that the cleanup's look at the
# mount point does not hang on the stuck daemon.
stuck() { kill -9 "$NBDFS_PID" 2>/dev/null || true; fail "$@"; }

# write_pattern P FILE: the 64 KiB of 'P' at offset 0 of FILE (O_DIRECT),
# bounded; the status of dd (124: hung), its errors in $T/P.err.
write_pattern() {
  local rc=0
  timeout 60 dd if="$T/$1" of="$2" bs=$K64 count=1 oflag=direct conv=notrunc status=none 2>"$T/$1.err" ||
    rc=$?
  [ "$rc" != 124 ] || stuck "the '$1' write hung for 60 s"
  return "$rc"
}

# check_order WHAT ZRC: after 10 s, the server's first 64 KiB (read by
# nbdcopy, an independent client) are all 'Z' if the 'Z' write succeeded
# (ZRC = 0).
check_order() {
  local what=$1 zrc=$2 got
  sleep 10
  got=$( (set +o pipefail; nbdcopy -- "$(unix_uri "$SOCK")" - 2>/dev/null | head -c $K64) | python3 -c '
import collections, sys
d = sys.stdin.buffer.read()
print(" ".join("%s=%d" % (chr(k) if 32 < k < 127 else "0x%02x" % k, v)
               for k, v in sorted(collections.Counter(d).items())) or "nothing")')
  note "$what: the 'Z' write exited $zrc; the server holds $got"
  if [ "$zrc" = 0 ]; then
    [ "$got" = "Z=$K64" ] || fail "$what: the 'Z' write succeeded, but then the server holds $got (a failed write landed after it)"
  fi
}

# expect_y_eio WHAT: the 'Y' write ($yrc, $T/Y.err) failed with EIO.
expect_y_eio() {
  [ "$yrc" != 0 ] || fail "$1: the 'Y' write succeeded (expected EIO: --timeout 2, --reconnect-delay 0)"
  grep -qi 'input/output error' "$T/Y.err" || fail "$1: the 'Y' write failed with '$(cat "$T/Y.err")', expected EIO"
}

# ---- A: a slow server ----
# -t 1: nbdkit 1.32 may abort (assertion `sock >= 0') when a connection is
# cut while several of its requests sleep in the delay filter.
serve_nbdkit slow -t 1 --filter=delay memory $((64 * 1048576)) delay-write=4
mkdir "$T/a"
NBDFS_LOG=$T/nbdfs-a.log mount_nbdfs "$(unix_uri "$SOCK")" "$T/a" -C 4 --timeout 2 --reconnect-delay 0 -v
yrc=0
write_pattern Y "$T/a/disk" || yrc=$?
expect_y_eio "A"
zrc=0
write_pattern Z "$T/a/disk" || zrc=$?
check_order "A" "$zrc"
pid_alive "$SERVER_PID" || fail "A: nbdkit died: $(tail -n 5 "$T/slow.log")"
fusermount3 -u "$T/a" || fail "A: fusermount3 -u failed"
wait_until 60 eval '! pid_alive "$NBDFS_PID"' || stuck "A: nbdfs did not exit within 60 s of the unmount"
wait "$NBDFS_PID" || true

# ---- B: a stopped server, continued before the 'Z' write ----
serve_nbdkit stopped memory $((64 * 1048576))
mkdir "$T/b"
NBDFS_LOG=$T/nbdfs-b.log mount_nbdfs "$(unix_uri "$SOCK")" "$T/b" -C 4 --timeout 2 --reconnect-delay 0 -v
kill -STOP "$SERVER_PID"
yrc=0
write_pattern Y "$T/b/disk" || yrc=$?
kill -CONT "$SERVER_PID"
expect_y_eio "B"
zrc=0
write_pattern Z "$T/b/disk" || zrc=$?
check_order "B" "$zrc"
fusermount3 -u "$T/b" || fail "B: fusermount3 -u failed"
wait_until 60 eval '! pid_alive "$NBDFS_PID"' || stuck "B: nbdfs did not exit within 60 s of the unmount"
wait "$NBDFS_PID" || true
echo ok
