#!/bin/bash
# nbdkit memory export (structured replies, multi-conn, minimum block 1):
# random data written through the mount at aligned, 512-aligned and odd
# offsets reads back the same through the mount (after a remount, so from
# the server, not the page cache) and through nbdcopy; the file's size and
# st_blksize match the export.
. "$(dirname "$0")/lib.sh"

SIZE=$((160 * 1024 * 1024 + 12345))   # deliberately not a multiple of 512
serve_nbdkit mem memory "$SIZE"
URI=$(unix_uri "$SOCK")
mkdir "$T/mnt"
F=$T/mnt/disk

NBDFS_LOG=$T/nbdfs1.log mount_nbdfs "$URI" "$T/mnt" -v
[ -f "$F" ] || fail "no file $F"
grep -q '4 connections' "$T/nbdfs1.log" || fail "expected 4 connections (multi-conn): $(cat "$T/nbdfs1.log")"
grep -q 'structured replies' "$T/nbdfs1.log" || fail "structured replies not negotiated: $(cat "$T/nbdfs1.log")"

# Size and block size.
size=$(stat -c %s "$F")
[ "$size" = "$SIZE" ] || fail "stat size $size, export size $SIZE"
lsize=$(ls -l "$F" | awk '{print $5}')
[ "$lsize" = "$SIZE" ] || fail "ls -l size $lsize, export size $SIZE"
pref=$(nbdinfo --json "$URI" | python3 -c 'import json,sys; e=json.load(sys.stdin)["exports"][0]; print(e.get("block_size_preferred", 4096))')
blksize=$(stat -c %o "$F")
[ "$blksize" = "$pref" ] || fail "st_blksize $blksize, server's preferred block size $pref"
[ "$(stat -c %F "$F")" = "regular file" ] || fail "not a regular file: $(stat -c %F "$F")"

# The export starts as zeros.
[ "$(range_sha "$F" 0 1048576)" = "$(head -c 1048576 /dev/zero | sha256sum | cut -d' ' -f1)" ] ||
  fail "a fresh memory export does not read as zeros"

# Pieces: offset and length (bytes).  32 MiB at 0 (aligned), at 4k-unaligned
# but 512-aligned offsets, at an odd offset, small odd pieces, and one that
# ends exactly at the end of the export.
MiB=1048576
offs=(0 $((33 * MiB + 512)) $((66 * MiB + 7)) $((99 * MiB + 3584)) $((140 * MiB + 1)) $((SIZE - 5 * MiB - 3)))
lens=($((32 * MiB)) $((32 * MiB)) $((32 * MiB)) 4095 777 $((5 * MiB + 3)))
for i in "${!offs[@]}"; do
  rand_file "$T/piece$i" "${lens[$i]}"
  write_at "$F" "${offs[$i]}" "$T/piece$i" || fail "write of piece $i at ${offs[$i]} failed"
done
sync "$F"

check_pieces() {  # FILE WHAT
  local i
  for i in "${!offs[@]}"; do
    [ "$(range_sha "$1" "${offs[$i]}" "${lens[$i]}")" = "$(sha "$T/piece$i")" ] ||
      fail "$2: piece $i (offset ${offs[$i]}, ${lens[$i]} bytes) differs"
  done
}
check_pieces "$F" "read back through the mount (page cache)"

# An independent client sees the same bytes, and nothing else changed:
# bytes between pieces are still zero.
server_copy "$URI" "$T/server.img"
[ "$(stat -c %s "$T/server.img")" = "$SIZE" ] || fail "nbdcopy copied $(stat -c %s "$T/server.img") bytes"
check_pieces "$T/server.img" "nbdcopy from the server"
zero_sha=$(head -c $((MiB - 512)) /dev/zero | sha256sum | cut -d' ' -f1)
[ "$(range_sha "$T/server.img" $((32 * MiB)) $((MiB - 512)))" = "$zero_sha" ] || fail "gap after piece 0 is not zero"

# Whole file through the mount equals the server's content.
[ "$(sha "$F")" = "$(sha "$T/server.img")" ] || fail "whole-file sha256 through the mount differs from the server's"

unmount_nbdfs "$T/mnt"
is_mounted "$T/mnt" && fail "still mounted after unmount"

# Remount: a fresh page cache, so these reads really come from the server;
# then once more with --direct-io (no page cache at all).
NBDFS_LOG=$T/nbdfs2.log mount_nbdfs "$URI" "$T/mnt"
check_pieces "$F" "read back after remount"
unmount_nbdfs "$T/mnt"

NBDFS_LOG=$T/nbdfs3.log mount_nbdfs "$URI" "$T/mnt" --direct-io
check_pieces "$F" "read back with --direct-io"
# An odd-sized direct-I/O write and read.
rand_file "$T/odd" 1001
write_at "$F" $((150 * MiB + 3)) "$T/odd"
[ "$(range_sha "$F" $((150 * MiB + 3)) 1001)" = "$(sha "$T/odd")" ] || fail "odd --direct-io round trip differs"
unmount_nbdfs "$T/mnt"
server_copy "$URI" "$T/server2.img"
[ "$(range_sha "$T/server2.img" $((150 * MiB + 3)) 1001)" = "$(sha "$T/odd")" ] || fail "odd --direct-io write not on the server"
echo "ok"
