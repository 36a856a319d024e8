#!/bin/bash
# Sparse files on an nbdkit memory export (1 GiB, base:allocation, 32 KiB
# allocation pages), with data written through the mount at a few
# scattered places, aligned and not:
#  - a fresh export is one hole: SEEK_DATA -> ENXIO, SEEK_HOLE -> 0;
#  - the SEEK_DATA/SEEK_HOLE walk of the mounted file equals the data/hole
#    boundaries of nbdinfo --map on the same export, and covers every
#    written byte; SEEK_DATA/SEEK_HOLE at or past the end -> ENXIO;
#  - qemu-img map of the mounted file (which uses SEEK_DATA/SEEK_HOLE)
#    equals qemu-img map of the NBD URI (start, length, data);
#  - st_blocks * 512 is exactly what the server reports as allocated, at
#    least the bytes written and not more than the 32 KiB pages they touch;
#  - cp --sparse=always finds the holes (reads only about the data from the
#    server) and makes a sparse copy with the same sha256;
#  - after a punched hole, du drops by the punched size, the maps still
#    agree and the range reads as zeros.
. "$(dirname "$0")/lib.sh"

MiB=1048576
SIZE=$((1024 * MiB))
PAGE=32768   # nbdkit memory plugin's allocation unit
serve_nbdkit mem --filter=log memory "$SIZE" logfile="$T/server.log"
URI=$(unix_uri "$SOCK")
mkdir "$T/mnt"
F=$T/mnt/disk
mount_nbdfs "$URI" "$T/mnt"

# A fresh export is a hole from start to end.  st_blocks is 0 from the
# very first stat after mounting (whose attributes come from the lookup).
[ "$(stat -c %b "$F")" = 0 ] || soft_fail "fresh export: the first stat after mounting has st_blocks $(stat -c %b "$F"), expected 0"
[ "$(du -B1 "$F" | cut -f1)" = 0 ] || soft_fail "fresh export: du says $(du -B1 "$F" | cut -f1) bytes, expected 0"
python3 - "$F" <<'EOF' || fail "fresh export: wrong SEEK_DATA/SEEK_HOLE"
import errno, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
try:
    r = os.lseek(fd, 0, os.SEEK_DATA)
    sys.exit("SEEK_DATA(0) on an empty export returned %d, expected ENXIO" % r)
except OSError as e:
    if e.errno != errno.ENXIO:
        sys.exit("SEEK_DATA(0): %s, expected ENXIO" % e)
r = os.lseek(fd, 0, os.SEEK_HOLE)
if r != 0:
    sys.exit("SEEK_HOLE(0) on an empty export returned %d, expected 0" % r)
EOF

# Scattered data: at 0, unaligned small pieces, one crossing a page
# boundary, a few MiB, and the last 64 KiB of the export.
offs=(0 $((MiB + 3)) $((37 * MiB)) $((300 * MiB + 12345)) $((700 * MiB - 1)) $((SIZE - 65536)))
lens=(4096 100 $((3 * MiB)) 70000 2 65536)
written=0
for i in "${!offs[@]}"; do
  rand_file "$T/piece$i" "${lens[$i]}"
  write_at "$F" "${offs[$i]}" "$T/piece$i" || fail "write of piece $i failed"
  written=$((written + lens[i]))
done

# Same boundaries through the mount as the server reports.
seek_map "$F" >"$T/seek.map" || fail "walking SEEK_DATA/SEEK_HOLE failed"
nbd_data_map "$URI" >"$T/nbd.map" || fail "nbdinfo --map failed"
[ -s "$T/nbd.map" ] || fail "nbdinfo --map reports no data after writing"
diff -u "$T/nbd.map" "$T/seek.map" >"$T/map.diff" ||
  fail "SEEK_DATA/SEEK_HOLE walk differs from nbdinfo --map: $(cat "$T/map.diff")"
# Every written byte is inside a data range (the walk is not vacuous).
for i in "${!offs[@]}"; do
  awk -v s="${offs[$i]}" -v e="$((offs[i] + lens[i]))" '$1 <= s && e <= $2 {ok = 1} END {exit !ok}' "$T/seek.map" ||
    fail "written piece $i [${offs[$i]}, $((offs[i] + lens[i]))) is not inside a data range: $(cat "$T/seek.map")"
done
# Single seeks inside a hole and inside data, and at/past the end.
python3 - "$F" "$((37 * MiB + 5))" "$((200 * MiB))" "$T/seek.map" <<'EOF' || fail "single seeks"
import errno, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
size = os.fstat(fd).st_size
in_data, in_hole = int(sys.argv[2]), int(sys.argv[3])
walk = []
for line in open(sys.argv[4]):
    s, e = map(int, line.split())
    walk.append((s, e))
def rng(off):
    return next(r for r in walk if r[0] <= off < r[1])
r = os.lseek(fd, in_data, os.SEEK_DATA)
assert r == in_data, "SEEK_DATA inside data: %d, expected %d" % (r, in_data)
r = os.lseek(fd, in_data, os.SEEK_HOLE)
assert r == rng(in_data)[1], "SEEK_HOLE inside data: %d, expected %d" % (r, rng(in_data)[1])
r = os.lseek(fd, in_hole, os.SEEK_HOLE)
assert r == in_hole, "SEEK_HOLE inside a hole: %d, expected %d" % (r, in_hole)
nxt = min(s for s, e in walk if s > in_hole)
r = os.lseek(fd, in_hole, os.SEEK_DATA)
assert r == nxt, "SEEK_DATA inside a hole: %d, expected %d" % (r, nxt)
# the last data range ends at the end of the file: SEEK_HOLE there is the end
r = os.lseek(fd, size - 1, os.SEEK_HOLE)
assert r == size, "SEEK_HOLE(size-1): %d, expected %d" % (r, size)
for whence, name in ((os.SEEK_DATA, "SEEK_DATA"), (os.SEEK_HOLE, "SEEK_HOLE")):
    for off in (size, size + 4096):
        try:
            r = os.lseek(fd, off, whence)
            sys.exit("%s(%d) at/past the end returned %d, expected ENXIO" % (name, off, r))
        except OSError as e:
            if e.errno != errno.ENXIO:
                sys.exit("%s(%d): %s, expected ENXIO" % (name, off, e))
EOF

# qemu-img map: the mounted file (file-posix, via SEEK_DATA/SEEK_HOLE) and
# the NBD URI (base:allocation) give the same start/length/data.
qemu_map -f raw "$F" >"$T/qemu-file.map" || fail "qemu-img map of the mounted file failed"
qemu_map -f raw "$URI" >"$T/qemu-nbd.map" || fail "qemu-img map of the URI failed"
grep -q ' True$' "$T/qemu-nbd.map" || fail "qemu-img map of the URI shows no data: $(cat "$T/qemu-nbd.map")"
diff -u "$T/qemu-nbd.map" "$T/qemu-file.map" >"$T/qmap.diff" ||
  fail "qemu-img map of the mounted file differs from the URI's: $(cat "$T/qmap.diff")"

# st_blocks: exactly what the server calls allocated; at least the bytes
# written, at most the 32 KiB pages they touch.
alloc=$(map_bytes <"$T/nbd.map")
# (stat never waits for a recount after writes: it answers with the last
# count, recounts in the background and has the kernel ask again.)
wait_until 10 eval '[ "$(($(stat -c %b "$F") * 512))" = "$alloc" ]' ||
  fail "st_blocks*512 = $(($(stat -c %b "$F") * 512)) never became what the server reports allocated, $alloc"
blocks=$(stat -c %b "$F")
[ "$((blocks * 512))" = "$alloc" ] || fail "st_blocks*512 = $((blocks * 512)), server reports $alloc bytes allocated"
pages=0
for i in "${!offs[@]}"; do
  pages=$((pages + (offs[i] + lens[i] + PAGE - 1) / PAGE - offs[i] / PAGE))
done
[ "$((blocks * 512))" -ge "$written" ] || fail "st_blocks*512 = $((blocks * 512)) < $written bytes written"
[ "$((blocks * 512))" -le "$((pages * PAGE))" ] || fail "st_blocks*512 = $((blocks * 512)) > $((pages * PAGE)) (the pages written)"
[ "$(du -B1 "$F" | cut -f1)" = "$alloc" ] || fail "du says $(du -B1 "$F" | cut -f1), server $alloc"

# cp --sparse=always: it sees a sparse file (st_blocks), skips the holes
# with SEEK_DATA (so reads about the data, not 1 GiB, from the server), and
# the copy is sparse with the same content.
mark=$(log_mark "$T/server.log")
cp --sparse=always "$F" "$T/copy" || fail "cp --sparse=always failed"
read_bytes=$(log_since "$T/server.log" "$mark" | log_requests Read | log_count_bytes)
[ "$read_bytes" -lt $((64 * MiB)) ] ||
  fail "cp of a 1 GiB file with $alloc bytes of data read $read_bytes bytes from the server: holes not skipped"
[ "$(stat -c %s "$T/copy")" = "$SIZE" ] || fail "copy has size $(stat -c %s "$T/copy")"
copy_du=$(du -B1 "$T/copy" | cut -f1)
[ "$copy_du" -lt $((16 * MiB)) ] || fail "the copy is not sparse: du $copy_du bytes"
[ "$(sha "$T/copy")" = "$(sha "$F")" ] || fail "the sparse copy's sha256 differs from the mounted file's"
for i in "${!offs[@]}"; do
  [ "$(range_sha "$T/copy" "${offs[$i]}" "${lens[$i]}")" = "$(sha "$T/piece$i")" ] || fail "copy: piece $i differs"
done

# Punch 2 MiB (whole pages) out of the 3 MiB piece: du drops by 2 MiB (once
# the background recount is in: stat itself never waits), the maps still
# agree, the range reads zeros.
before=$(du -B1 "$F" | cut -f1)
fallocate -p -o $((37 * MiB + 512 * 1024)) -l $((2 * MiB)) "$F" || fail "fallocate --punch-hole failed"
wait_until 10 eval '[ "$(du -B1 "$F" | cut -f1)" = $((before - 2 * MiB)) ]' ||
  fail "du after punching 2 MiB: $(du -B1 "$F" | cut -f1), expected $((before - 2 * MiB)) (before: $before)"
[ "$(range_sha "$F" $((37 * MiB + 512 * 1024)) $((2 * MiB)))" = "$(head -c $((2 * MiB)) /dev/zero | sha256sum | cut -d' ' -f1)" ] ||
  fail "punched range does not read as zeros"
[ "$(range_sha "$F" $((37 * MiB)) $((512 * 1024)))" = "$(head -c $((512 * 1024)) "$T/piece2" | sha256sum | cut -d' ' -f1)" ] ||
  fail "data before the punched range changed"
[ "$(range_sha "$F" $((39 * MiB + 512 * 1024)) $((512 * 1024)))" = "$(tail -c $((512 * 1024)) "$T/piece2" | sha256sum | cut -d' ' -f1)" ] ||
  fail "data after the punched range changed"
seek_map "$F" >"$T/seek2.map" || fail "walking SEEK_DATA/SEEK_HOLE failed after the punch"
nbd_data_map "$URI" >"$T/nbd2.map"
diff -u "$T/nbd2.map" "$T/seek2.map" >"$T/map2.diff" ||
  fail "after the punch, SEEK_DATA/SEEK_HOLE walk differs from nbdinfo --map: $(cat "$T/map2.diff")"
grep -qx "$((37 * MiB)) $((37 * MiB + 512 * 1024))" "$T/seek2.map" ||
  fail "no data range ending at the punched hole: $(cat "$T/seek2.map")"
wait_until 10 eval '[ "$(stat -c %b "$F")" = "$(($(map_bytes <"$T/nbd2.map") / 512))" ]' ||
  fail "st_blocks after the punch differs from the server's"

unmount_nbdfs "$T/mnt"
finish_test
