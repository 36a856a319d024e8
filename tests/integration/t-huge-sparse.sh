#!/bin/bash
# A huge sparse export: nbdkit memory of 1 TiB with a little data written
# through the mount near 700 GiB (a piece aligned to the plugin's 32 KiB
# pages, and a small unaligned one further on).  Each seek is bounded by
# timeout 60 (block status ranges are limited to 32 bits, so a seek over
# 700 GiB of hole takes many requests, which must still be quick):
#  - SEEK_DATA from 0 (and from 500 GiB) returns exactly the aligned
#    piece's offset, SEEK_HOLE from there returns exactly its end;
#  - the next SEEK_DATA finds the unaligned piece's page, whose range is
#    what nbdinfo --map reports; SEEK_DATA after it -> ENXIO, SEEK_HOLE
#    there -> that offset; the full walk equals nbdinfo --map;
#  - st_blocks is the few pages written, the data reads back, and qemu-img
#    map of the mounted file agrees with qemu-img map of the URI.
. "$(dirname "$0")/lib.sh"

GiB=$((1024 * 1024 * 1024))
SIZE=$((1024 * GiB))
serve_nbdkit huge memory "$SIZE"
URI=$(unix_uri "$SOCK")
mkdir "$T/mnt"
F=$T/mnt/disk
mount_nbdfs "$URI" "$T/mnt"
[ "$(stat -c %s "$F")" = "$SIZE" ] || fail "size $(stat -c %s "$F"), expected $SIZE"

D1=$((700 * GiB + 65536))      # aligned to 32 KiB pages
L1=$((3 * 32768))
D2=$((800 * GiB + 12345))      # unaligned, inside one page
L2=1000
rand_file "$T/d1" "$L1"
rand_file "$T/d2" "$L2"
write_at "$F" "$D1" "$T/d1" || fail "writing at $D1 failed"
write_at "$F" "$D2" "$T/d2" || fail "writing at $D2 failed"

# seek FROM WHENCE: prints the result or the errno name (within 60 s).
seek() {
  timeout 60 python3 -c '
import errno, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
try:
    print(os.lseek(fd, int(sys.argv[2]), getattr(os, sys.argv[3])))
except OSError as e:
    print(errno.errorcode[e.errno])' "$F" "$1" "$2" || echo "timeout-or-error"
}
P2=$((D2 / 32768 * 32768))     # the page holding the unaligned piece
check_seek() {  # FROM WHENCE EXPECTED
  local got
  got=$(seek "$1" "$2")
  [ "$got" = "$3" ] || fail "$2 from $1: $got, expected $3"
}
check_seek 0 SEEK_DATA "$D1"
check_seek 0 SEEK_HOLE 0
check_seek "$D1" SEEK_HOLE "$((D1 + L1))"
check_seek $((500 * GiB)) SEEK_DATA "$D1"
check_seek $((D1 + 100)) SEEK_DATA $((D1 + 100))
check_seek $((D1 + 100)) SEEK_HOLE "$((D1 + L1))"
check_seek "$((D1 + L1))" SEEK_DATA "$P2"
check_seek "$P2" SEEK_HOLE "$((P2 + 32768))"
check_seek "$((P2 + 32768))" SEEK_DATA ENXIO
check_seek "$((P2 + 32768))" SEEK_HOLE "$((P2 + 32768))"
check_seek $((SIZE - 1)) SEEK_DATA ENXIO
check_seek $((SIZE - 1)) SEEK_HOLE $((SIZE - 1))
check_seek "$SIZE" SEEK_DATA ENXIO

timeout 120 bash -c "$(declare -f seek_map); seek_map '$F'" >"$T/seek.map" || fail "walking the map timed out or failed"
nbd_data_map "$URI" >"$T/nbd.map"
diff -u "$T/nbd.map" "$T/seek.map" >"$T/map.diff" || fail "SEEK_DATA/SEEK_HOLE walk differs from nbdinfo --map: $(cat "$T/map.diff")"
[ "$(cat "$T/seek.map")" = "$D1 $((D1 + L1))
$P2 $((P2 + 32768))" ] || fail "unexpected data ranges: $(cat "$T/seek.map")"

wait_until 10 eval '[ "$(stat -c %b "$F")" = $(((L1 + 32768) / 512)) ]' || fail "st_blocks $(stat -c %b "$F"), expected $(((L1 + 32768) / 512))"
[ "$(range_sha "$F" "$D1" "$L1")" = "$(sha "$T/d1")" ] || fail "data at $D1 reads back differently"
[ "$(range_sha "$F" "$D2" "$L2")" = "$(sha "$T/d2")" ] || fail "data at $D2 reads back differently"

qemu_map -f raw "$F" >"$T/qemu-file.map" || fail "qemu-img map of the mounted file failed or timed out"
qemu_map -f raw "$URI" >"$T/qemu-nbd.map" || fail "qemu-img map of the URI failed"
diff -u "$T/qemu-nbd.map" "$T/qemu-file.map" >"$T/qmap.diff" || fail "qemu-img map differs: $(cat "$T/qmap.diff")"
unmount_nbdfs "$T/mnt"
echo ok
