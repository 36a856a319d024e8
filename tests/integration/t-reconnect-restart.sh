#!/bin/bash
# The server is killed (kill -9) in the middle of a large write and started
# again on the same socket a second later; the write goes on as if nothing
# happened.
#   nbdkit file $T/disk.img (64 MiB of zeros) with the delay filter
#   (delay-write=50ms, so that the copy takes seconds); nbdfs -C 1.
#   dd copies 64 MiB of random data over the file (1 MiB O_DIRECT writes);
#   ~1 s into it nbdkit is killed, and restarted one second later.
# Asserts:
#   - dd was still running at the kill, and exits 0 (no write failed);
#   - nbdfs logged the loss ('lost') and the reconnection ('reconnected');
#   - unmount works and nbdfs exits 0 (every acknowledged write flushed);
#   - disk.img is then exactly the source: nothing the server was killed
#     over (in flight, or acknowledged but lost) is missing.
. "$(dirname "$0")/lib.sh"

MiB=1048576
SIZE=$((64 * MiB))
rand_file "$T/src" "$SIZE"
truncate -s "$SIZE" "$T/disk.img"
serve_nbdkit srv --filter=delay file "$T/disk.img" delay-write=50ms
mkdir "$T/mnt"
F=$T/mnt/disk
mount_nbdfs "$(unix_uri "$SOCK")" "$T/mnt" -v -C 1

dd if="$T/src" of="$F" bs=1M count=64 oflag=direct conv=notrunc 2>"$T/dd.err" &
dpid=$!
track_pid "$dpid"
sleep 1
pid_alive "$dpid" || fail "dd finished within 1 s (the delay filter should make it take seconds): $(cat "$T/dd.err")"
kill -9 "$SERVER_PID"
wait_until 10 eval '! pid_alive "$SERVER_PID"' || fail "nbdkit survived kill -9"
note "killed nbdkit during the copy"
sleep 1
rm -f "$SOCK"
serve_nbdkit srv --filter=delay file "$T/disk.img" delay-write=50ms
note "nbdkit restarted"

wait_until 60 eval '! pid_alive "$dpid"' || fail "dd still runs 60 s after the server came back"
rc=0
wait "$dpid" || rc=$?
[ "$rc" = 0 ] || fail "dd failed (exit $rc) across the server restart: $(cat "$T/dd.err")"
grep -qi 'lost' "$T/nbdfs.log" || fail "no 'lost' line in the log: $(cat "$T/nbdfs.log")"
note "$(grep -i -m1 'lost' "$T/nbdfs.log")"
grep -qi 'reconnected' "$T/nbdfs.log" || fail "no 'reconnected' line in the log: $(cat "$T/nbdfs.log")"
note "$(grep -i -m1 'reconnected' "$T/nbdfs.log")"
unmount_nbdfs "$T/mnt"
cmp "$T/src" "$T/disk.img" || fail "disk.img differs from what dd wrote"
echo ok
