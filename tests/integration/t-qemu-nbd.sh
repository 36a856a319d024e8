#!/bin/bash
# qemu-nbd on a raw file, named export.
#  1. Default (--shared=1, no multi-conn): nbdfs uses one connection; the
#     file is named after the export; reads return the image's content;
#     writes at 512-aligned and odd offsets land in the backing file
#     (sha256 and qemu-img compare against an image written locally with
#     the same data, after unmount and after the server has exited).
#  2. --shared=4 (multi-conn): nbdfs uses 4 connections; same checks.
. "$(dirname "$0")/lib.sh"

SIZE=$((64 * 1024 * 1024))
MiB=1048576
IMG=$T/disk.img
EXP=$T/expected.img

# serve_qemu_nbd NAME ARGS...: qemu-nbd for $IMG as export NAME on
# $T/NAME.sock; returns once it accepts connections.
serve_qemu_nbd() {
  local name=$1; shift
  SOCK=$T/$name.sock
  rm -f "$T/$name.pid"
  qemu-nbd -f raw -k "$SOCK" --persistent -x "$name" --pid-file="$T/$name.pid" --fork "$@" "$IMG" \
    >"$T/qemu-$name.log" 2>&1 || fail "qemu-nbd did not start: $(cat "$T/qemu-$name.log")"
  wait_for_file "$T/$name.pid"
  wait_until 10 test -s "$T/$name.pid" || fail "empty pid file"
  SERVER_PID=$(cat "$T/$name.pid")
  track_pid "$SERVER_PID"
}

stop_server() {
  kill "$SERVER_PID"
  wait_until 30 eval '! pid_alive "$SERVER_PID"' || fail "qemu-nbd did not exit"
}

# write_both OFFSET SRC: write through the mount and into the expected image.
write_both() {
  write_at "$F" "$1" "$2" || fail "write of $2 at $1 through the mount failed"
  write_at "$EXP" "$1" "$2"
}

check_backing() {  # WHAT
  [ "$(sha "$IMG")" = "$(sha "$EXP")" ] || fail "$1: backing file differs from the expected image"
  qemu-img compare -f raw -F raw "$EXP" "$IMG" >"$T/compare.log" 2>&1 ||
    fail "$1: qemu-img compare: $(cat "$T/compare.log")"
}

# Initial content: random first 8 MiB, zeros after.
truncate -s "$SIZE" "$IMG"
rand_file "$T/init" $((8 * MiB))
write_at "$IMG" 0 "$T/init"
cp "$IMG" "$EXP"
mkdir "$T/mnt"

# ---- 1: single connection ----
serve_qemu_nbd vm-disk
F=$T/mnt/vm-disk
NBDFS_LOG=$T/nbdfs1.log mount_nbdfs "$(unix_uri "$SOCK" vm-disk)" "$T/mnt" -v
[ -f "$F" ] || fail "no file named after the export: $(ls "$T/mnt")"
[ "$(ls "$T/mnt")" = vm-disk ] || fail "unexpected directory content: $(ls "$T/mnt")"
[ "$(stat -c %s "$F")" = "$SIZE" ] || fail "size $(stat -c %s "$F"), expected $SIZE"
grep -q '1 connection,' "$T/nbdfs1.log" || fail "expected one connection without multi-conn: $(cat "$T/nbdfs1.log")"
grep -q 'structured replies' "$T/nbdfs1.log" || fail "qemu-nbd supports structured replies: $(cat "$T/nbdfs1.log")"
[ "$(range_sha "$F" 0 $((8 * MiB)))" = "$(sha "$T/init")" ] || fail "reading the image's content through the mount differs"

rand_file "$T/p1" $((4 * MiB))
rand_file "$T/p2" 1000
rand_file "$T/p3" 65536
write_both $((MiB + 512)) "$T/p1"
write_both $((10 * MiB + 3)) "$T/p2"
write_both $((SIZE - 65536)) "$T/p3"
[ "$(sha "$F")" = "$(sha "$EXP")" ] || fail "whole file through the mount differs from the expected image"
unmount_nbdfs "$T/mnt"
stop_server
check_backing "single connection"

# ---- 2: multi-conn ----
serve_qemu_nbd multi --shared=4
F=$T/mnt/multi
NBDFS_LOG=$T/nbdfs2.log mount_nbdfs "$(unix_uri "$SOCK" multi)" "$T/mnt" -v -C 4
grep -q '4 connections' "$T/nbdfs2.log" || fail "expected 4 connections with --shared=4: $(cat "$T/nbdfs2.log")"
# What part 1 wrote reads back from the server (fresh mount, fresh cache).
[ "$(sha "$F")" = "$(sha "$EXP")" ] || fail "content after remount differs from the expected image"
rand_file "$T/q1" $((16 * MiB))
rand_file "$T/q2" 777
write_both $((20 * MiB + 1536)) "$T/q1" &
w1=$!
write_both $((50 * MiB + 1)) "$T/q2" &
w2=$!
wait "$w1" || fail "writer 1 failed"
wait "$w2" || fail "writer 2 failed"
unmount_nbdfs "$T/mnt"
stop_server
check_backing "multi-conn"
echo ok
