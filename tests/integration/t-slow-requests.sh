#!/bin/bash
# One slow request does not break the mount:
#  A. writes slower than --timeout (delay-write=3, --timeout 1,
#     --reconnect-delay 2) fail with EIO, but reads afterwards work and
#     return the right data (before: every later read failed too);
#  B. a FLUSH slower than --timeout (3 s, --timeout 1) is not
#     taken for a stall: a connection with only FLUSHes outstanding gets five
#     times as long, so fsync succeeds and no connection is lost.
. "$(dirname "$0")/lib.sh"

MiB=1048576
# ---- A ----
serve_nbdkit slow -t 1 --filter=delay memory $((16 * MiB)) delay-write=3
URI=$(unix_uri "$SOCK")
rand_file "$T/a" $((1 * MiB))
nbdcopy -- "$T/a" "$URI" || fail "seeding the export failed"
mkdir "$T/a-mnt"
NBDFS_LOG=$T/a.log mount_nbdfs "$URI" "$T/a-mnt" -v -C 1 --timeout 1 --reconnect-delay 2
F=$T/a-mnt/disk
rc=0
timeout 60 dd if=/dev/zero of="$F" bs=4k count=1 seek=1000 conv=notrunc oflag=direct status=none 2>"$T/w.err" || rc=$?
[ "$rc" != 124 ] || fail "the slow write hung"
[ "$rc" != 0 ] || fail "a write slower than --timeout succeeded (the test needs it to fail)"
grep -q 'Input/output error' "$T/w.err" || fail "slow write: $(cat "$T/w.err")"
for i in 1 2 3; do
  rc=0
  timeout 30 dd if="$F" of="$T/back" bs=1M count=1 iflag=direct status=none 2>"$T/r.err" || rc=$?
  [ "$rc" = 0 ] || fail "read $i after the slow write failed (status $rc): $(cat "$T/r.err")"
  cmp -s "$T/a" "$T/back" || fail "read $i after the slow write returned wrong data"
done
note "reads work after the slow write failed"
fusermount3 -u "$T/a-mnt"
wait_until 60 eval '! pid_alive "$NBDFS_PID"' || fail "nbdfs (A) did not exit"
kill "$SERVER_PID"

# ---- B ---- (nbdkit 1.32's delay filter cannot delay FLUSH: a file-backed
# eval plugin whose flush sleeps)
truncate -s $((16 * MiB)) "$T/b.img"
B=$T/b.img
serve_nbdkit flush -t 1 eval \
  get_size="echo $((16 * MiB))" \
  pread="dd if=$B bs=64k skip=\$4 count=\$3 iflag=skip_bytes,count_bytes status=none" \
  pwrite="dd of=$B bs=64k seek=\$4 oflag=seek_bytes conv=notrunc status=none" \
  flush="sleep 3; sync $B"
URI=$(unix_uri "$SOCK")
nbdinfo --json "$URI" | grep -q '"can_flush": true' || fail "the eval plugin does not offer FLUSH: $(nbdinfo "$URI")"
mkdir "$T/b-mnt"
NBDFS_LOG=$T/b.log mount_nbdfs "$URI" "$T/b-mnt" -v -C 1 --timeout 1
F=$T/b-mnt/disk
timeout 60 dd if="$T/a" of="$F" bs=1M conv=notrunc,fsync status=none 2>"$T/f.err" ||
  fail "write + fsync with a 3 s FLUSH under --timeout 1 failed: $(cat "$T/f.err")"
! grep -qi 'lost' "$T/b.log" || fail "a slow FLUSH was taken for a stall: $(grep -i lost "$T/b.log")"
[ "$(range_sha "$B" 0 $((1 * MiB)))" = "$(sha "$T/a")" ] || fail "the data is not in the server's file"
unmount_nbdfs "$T/b-mnt"
echo ok
