#!/bin/bash
# nbd-server 3.24 (simple replies only, no block status, no block size
# constraints) on TCP, configured by a file with two exports:
#  - "data": a file; round trip through the mount, checked in the backing
#    file after unmount and with nbdcopy; no structured replies negotiated.
#  - "ro" (readonly = true): mounted 0444 automatically, writes fail with
#    EROFS, reads return the file's content.
. "$(dirname "$0")/lib.sh"

SIZE=$((40 * 1024 * 1024))
MiB=1048576
IMG=$T/data.img
RO=$T/ro.img
truncate -s "$SIZE" "$IMG"
rand_file "$T/init" $((2 * MiB))
write_at "$IMG" $((3 * MiB)) "$T/init"
cp "$IMG" "$T/expected.img"
rand_file "$RO" $((4 * MiB))

start_nbd_server() {
  serve_nbd_server "allowlist = true" <<EOF
[data]
    exportname = $IMG
[ro]
    exportname = $RO
    readonly = true
EOF
}
start_nbd_server
URI=nbd://127.0.0.1:$PORT

# The export list (allowlist = true) names both exports.
nbdinfo --list "$URI" >"$T/list.txt" 2>&1 || fail "nbdinfo --list: $(cat "$T/list.txt")"
grep -q 'export="data"' "$T/list.txt" || fail "export list: $(cat "$T/list.txt")"

mkdir "$T/mnt"
F=$T/mnt/data
NBDFS_LOG=$T/nbdfs1.log mount_nbdfs "$URI/data" "$T/mnt" -v
[ -f "$F" ] || fail "no file named after the export: $(ls "$T/mnt")"
[ "$(stat -c %s "$F")" = "$SIZE" ] || fail "size $(stat -c %s "$F"), expected $SIZE"
grep -q 'structured replies' "$T/nbdfs1.log" && fail "nbd-server 3.24 has no structured replies: $(cat "$T/nbdfs1.log")"
[ "$(range_sha "$F" $((3 * MiB)) $((2 * MiB)))" = "$(sha "$T/init")" ] || fail "reading the file's content through the mount differs"

rand_file "$T/p1" $((6 * MiB))
rand_file "$T/p2" 513
rand_file "$T/p3" 8192
for w in "$((MiB + 512)) p1" "$((9 * MiB + 1)) p2" "$((SIZE - 8192)) p3"; do
  set -- $w
  write_at "$F" "$1" "$T/$2" || fail "write of $2 at $1 failed"
  write_at "$T/expected.img" "$1" "$T/$2"
done
server_copy "$URI/data" "$T/server.img"
[ "$(sha "$T/server.img")" = "$(sha "$T/expected.img")" ] || fail "nbdcopy sees different content"
[ "$(sha "$F")" = "$(sha "$T/expected.img")" ] || fail "whole file through the mount differs"
unmount_nbdfs "$T/mnt"
[ "$(sha "$IMG")" = "$(sha "$T/expected.img")" ] || fail "backing file differs from the expected image"

# Read-only export.
NBDFS_LOG=$T/nbdfs2.log mount_nbdfs "$URI/ro" "$T/mnt" -v
[ "$(stat -c %a "$T/mnt/ro")" = 444 ] || fail "read-only export has mode $(stat -c %a "$T/mnt/ro")"
[ "$(sha "$T/mnt/ro")" = "$(sha "$RO")" ] || fail "read-only export reads differently"
if dd if="$T/p3" of="$T/mnt/ro" conv=notrunc status=none 2>"$T/dd.err"; then
  fail "write to a read-only export succeeded"
fi
grep -qi 'read-only file system' "$T/dd.err" || fail "write to a read-only export: $(cat "$T/dd.err"), expected EROFS"
unmount_nbdfs "$T/mnt"
echo ok
