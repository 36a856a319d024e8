#!/bin/bash
# Oldstyle handshake (nbdkit -o): no options, no export names, no structured
# replies.
#  1. TCP, a file-backed export (eval plugin, no flush, one connection):
#     round trip through the mount, checked in the backing file and with
#     nbdcopy, and read back through a fresh mount.
#  2. Unix socket, nbdkit memory with multi-conn: writes and reads through
#     the mount (4 connections), checked with nbdcopy.
# nbdkit 1.32 advertises NBD_FLAG_SEND_FLUSH in oldstyle but then refuses
# NBD_CMD_FLUSH with EINVAL ("flush operation not supported"; nbdcopy --flush
# fails the same way, and no filter helps, the refusal is in nbdkit's core).
# So case 1 uses a plugin without flush, and case 2 accepts that close()
# reports the refused FLUSH (and the unmount exits 1, as the writes could not
# be made durable), but checks that the data reached the server.
. "$(dirname "$0")/lib.sh"

SIZE=$((48 * 1024 * 1024))
MiB=1048576

# ---- 1: TCP, file-backed, no flush ----
truncate -s "$SIZE" "$T/backing.img"
B=$T/backing.img
serve_nbdkit_tcp eval -o eval \
  get_size="echo $SIZE" \
  pread="dd if=$B bs=64k skip=\$4 count=\$3 iflag=skip_bytes,count_bytes status=none" \
  pwrite="dd of=$B bs=64k seek=\$4 oflag=seek_bytes conv=notrunc status=none"
URI=nbd://127.0.0.1:$PORT
mkdir "$T/mnt"
F=$T/mnt/disk
NBDFS_LOG=$T/nbdfs1.log mount_nbdfs "$URI" "$T/mnt" -v
[ "$(stat -c %s "$F")" = "$SIZE" ] || fail "size $(stat -c %s "$F"), expected $SIZE"
grep -q 'structured replies' "$T/nbdfs1.log" && fail "oldstyle cannot negotiate structured replies: $(cat "$T/nbdfs1.log")"
grep -q '1 connection,' "$T/nbdfs1.log" || fail "expected 1 connection (no multi-conn): $(cat "$T/nbdfs1.log")"

rand_file "$T/a" $((3 * MiB + 1))
rand_file "$T/b" 4096
write_at "$F" 4096 "$T/a" || fail "write failed"
write_at "$F" $((SIZE - 4096)) "$T/b" || fail "write at the end failed"
server_copy "$URI" "$T/server.img"
for img in "$T/server.img" "$B"; do
  [ "$(range_sha "$img" 4096 $((3 * MiB + 1)))" = "$(sha "$T/a")" ] || fail "$img: data differs"
  [ "$(range_sha "$img" $((SIZE - 4096)) 4096)" = "$(sha "$T/b")" ] || fail "$img: data at the end differs"
done
[ "$(sha "$F")" = "$(sha "$B")" ] || fail "whole file through the mount differs from the backing file"
unmount_nbdfs "$T/mnt"

# Read back through a fresh mount (from the server, not the page cache).
rand_file "$T/c" $((2 * MiB))
write_at "$B" $((20 * MiB)) "$T/c"
NBDFS_LOG=$T/nbdfs2.log mount_nbdfs "$URI" "$T/mnt"
[ "$(range_sha "$F" 4096 $((3 * MiB + 1)))" = "$(sha "$T/a")" ] || fail "read back after remount differs"
[ "$(range_sha "$F" $((20 * MiB)) $((2 * MiB)))" = "$(sha "$T/c")" ] || fail "data written to the backing file reads back differently"
unmount_nbdfs "$T/mnt"

# ---- 2: Unix socket, memory, multi-conn ----
serve_nbdkit mem -o memory "$SIZE"
URI=$(unix_uri "$SOCK")
NBDFS_LOG=$T/nbdfs3.log mount_nbdfs "$URI" "$T/mnt" -v
grep -q '4 connections' "$T/nbdfs3.log" || fail "expected 4 connections: $(cat "$T/nbdfs3.log")"
rand_file "$T/d" $((8 * MiB))
# The data goes to the server; only the FLUSH on close is refused (nbdkit).
if write_at "$F" $((7 * MiB + 512)) "$T/d" 2>"$T/dd.err"; then
  note "close() after writing succeeded: nbdkit oldstyle flushes work now"
else
  grep -q 'closing output file.*Invalid argument' "$T/dd.err" || fail "write failed: $(cat "$T/dd.err")"
fi
server_copy "$URI" "$T/server2.img"
[ "$(range_sha "$T/server2.img" $((7 * MiB + 512)) $((8 * MiB)))" = "$(sha "$T/d")" ] || fail "memory export: server data differs"
[ "$(sha "$F" 2>/dev/null)" = "$(sha "$T/server2.img")" ] || fail "memory export: whole file through the mount differs from the server"
# The final FLUSH is refused too: nbdfs cannot vouch for the writes, so it
# says so and exits 1 (0 if nbdkit ever accepts oldstyle flushes).
fusermount3 -u "$T/mnt" || fail "fusermount3 -u failed"
wait_until 30 eval '! pid_alive "$NBDFS_PID"' || fail "nbdfs did not exit after unmount"
rc=0
wait "$NBDFS_PID" || rc=$?
if [ "$rc" = 1 ]; then
  grep -q 'final flush failed' "$T/nbdfs3.log" || fail "exit 1 without saying why: $(cat "$T/nbdfs3.log")"
else
  [ "$rc" = 0 ] || fail "nbdfs exited with status $rc"
  note "the final FLUSH succeeded: nbdkit oldstyle flushes work now"
fi
echo ok
