#!/bin/bash
# Mountpoint forms, read-only mounts and the fixed size of an export.
#  - existing dir + named export: DIR/EXPORT (and the only entry in DIR);
#    export names with '/' are percent-escaped; the default export is
#    DIR/disk, an export called "disk" is DIR/%64isk
#  - DIR/NAME with DIR existing: DIR/NAME
#  - an existing regular file: the export is mounted over it (naked), the
#    file's own content is back after unmount
#  - -r: mode 0444, writes fail with EROFS, reads work; a read-only server
#    export (nbdkit -r) gives 0444 and EROFS without -r
#  - size: truncate to another size fails, to the same size succeeds,
#    O_TRUNC does not truncate, touch works; chmod works (ownership and
#    modes are tested in t-ownership.sh)
#    (in the default writeback cache mode, where the kernel sends O_TRUNC as
#    a truncation to 0, which must be answered with the export's size)
#  - past the end (--cache=read): a write at the end fails with ENOSPC, a write across the
#    end is short (its first part lands), reads at the end return 0 bytes
#    and reads across the end are short (with and without O_DIRECT)
. "$(dirname "$0")/lib.sh"

MiB=1048576
SIZE=$((8 * MiB))
serve_nbdkit mem memory "$SIZE"
SERVER=$(unix_uri "$SOCK")   # default export; nbdkit memory accepts any name
uri() { unix_uri "$SOCK" "$1"; }

# expect_file MOUNT-URI MOUNTPOINT FILE [OPTIONS]: mounting gives FILE, the
# export's size; a write through FILE reaches the server.
n=0
expect_file() {
  local uri=$1 mp=$2 file=$3; shift 3
  n=$((n + 1))
  NBDFS_LOG=$T/nbdfs$n.log mount_nbdfs "$uri" "$mp" "$@"
  [ -f "$file" ] || fail "$uri on $mp: no $file ($(ls -la "$(dirname "$file")" 2>&1))"
  [ "$(stat -c %s "$file")" = "$SIZE" ] || fail "$file: size $(stat -c %s "$file")"
}
umount_dir() { unmount_nbdfs "$1"; ! is_mounted "$1" || fail "$1 still mounted"; }

# ---- forms ----
mkdir "$T/d1"
expect_file "$(uri vol1)" "$T/d1" "$T/d1/vol1"
[ "$(ls -A "$T/d1")" = vol1 ] || fail "directory lists: $(ls -A "$T/d1")"
[ "$(stat -c %a "$T/d1/vol1")" = 644 ] || fail "writable export has mode $(stat -c %a "$T/d1/vol1")"
umount_dir "$T/d1"

expect_file "$SERVER" "$T/d1" "$T/d1/disk"
[ "$(ls -A "$T/d1")" = disk ] || fail "default export: directory lists $(ls -A "$T/d1")"
umount_dir "$T/d1"

expect_file "$(uri a%2Fb)" "$T/d1" "$T/d1/a%2Fb"      # export "a/b"
umount_dir "$T/d1"
expect_file "$(uri disk)" "$T/d1" "$T/d1/%64isk"      # export "disk" is not the default one
umount_dir "$T/d1"

mkdir "$T/d2"
expect_file "$SERVER" "$T/d2/my-image.raw" "$T/d2/my-image.raw"
[ "$(ls -A "$T/d2")" = my-image.raw ] || fail "DIR/NAME: directory lists $(ls -A "$T/d2")"
umount_dir "$T/d2"

# Naked: over an existing regular file.
printf 'original content\n' >"$T/over.img"
orig=$(sha "$T/over.img")
expect_file "$SERVER" "$T/over.img" "$T/over.img"
rand_file "$T/r1" 65536
write_at "$T/over.img" 8192 "$T/r1" || fail "write through the naked mount failed"
server_copy "$SERVER" "$T/server.img"
[ "$(range_sha "$T/server.img" 8192 65536)" = "$(sha "$T/r1")" ] || fail "naked mount: write did not reach the server"
[ "$(range_sha "$T/over.img" 8192 65536)" = "$(sha "$T/r1")" ] || fail "naked mount: read back differs"
umount_dir "$T/over.img"
[ "$(sha "$T/over.img")" = "$orig" ] || fail "the file mounted over lost its content"

# ---- read-only ----
mkdir "$T/ro"
F=$T/ro/disk
expect_file "$SERVER" "$T/ro" "$F" -r
[ "$(stat -c %a "$F")" = 444 ] || fail "-r: mode $(stat -c %a "$F"), expected 444"
[ "$(range_sha "$F" 8192 65536)" = "$(sha "$T/r1")" ] || fail "-r: reading differs"
if dd if="$T/r1" of="$F" bs=64k conv=notrunc status=none 2>"$T/err"; then fail "-r: write succeeded"; fi
grep -qi 'read-only file system' "$T/err" || fail "-r: write failed with '$(cat "$T/err")', expected EROFS"
if truncate -s "$SIZE" "$F" 2>"$T/err"; then fail "-r: truncate succeeded"; fi
grep -qi 'read-only file system' "$T/err" || fail "-r: truncate failed with '$(cat "$T/err")', expected EROFS"
umount_dir "$T/ro"
server_copy "$SERVER" "$T/server2.img"
[ "$(sha "$T/server2.img")" = "$(sha "$T/server.img")" ] || fail "-r: the export changed"

serve_nbdkit rosrv -r memory "$SIZE"
expect_file "$(unix_uri "$SOCK")" "$T/ro" "$F" -v
[ "$(stat -c %a "$F")" = 444 ] || fail "read-only export: mode $(stat -c %a "$F"), expected 444"
if dd if="$T/r1" of="$F" bs=64k conv=notrunc status=none 2>"$T/err"; then fail "read-only export: write succeeded"; fi
grep -qi 'read-only file system' "$T/err" || fail "read-only export: write failed with '$(cat "$T/err")', expected EROFS"
head -c 4096 "$F" >/dev/null || fail "read-only export: read failed"
umount_dir "$T/ro"

# ---- size is fixed ----
mkdir "$T/mnt"
F=$T/mnt/disk
expect_file "$SERVER" "$T/mnt" "$F"
for s in $((SIZE + 4096)) $((SIZE - 4096)) 0; do
  if truncate -s "$s" "$F" 2>"$T/err"; then fail "truncate to $s succeeded"; fi
  [ "$(stat -c %s "$F")" = "$SIZE" ] || fail "size changed to $(stat -c %s "$F") after truncate to $s"
done
truncate -s "$SIZE" "$F" || fail "truncate to the same size failed"
: >"$F" || fail "open with O_TRUNC failed"
[ "$(stat -c %s "$F")" = "$SIZE" ] || fail "O_TRUNC changed the size to $(stat -c %s "$F")"
[ "$(range_sha "$F" 8192 65536)" = "$(sha "$T/r1")" ] || fail "O_TRUNC destroyed data"
chmod 600 "$F" || fail "chmod failed"
[ "$(stat -c %a "$F")" = 600 ] || fail "mode $(stat -c %a "$F") after chmod 600"
[ "$(stat -c %s "$F")" = "$SIZE" ] || fail "size changed to $(stat -c %s "$F") after chmod"
touch "$F" || fail "touch failed"

# ---- past the end ----
# (With --cache=read, where write() itself reports it; the writeback cache
# reports it at fsync and close: t-cache-modes.sh.)
umount_dir "$T/mnt"
expect_file "$SERVER" "$T/mnt" "$F" --cache=read
rand_file "$T/r2" 8192
if dd if="$T/r2" of="$F" bs=4096 count=1 seek=$((SIZE / 4096)) conv=notrunc status=none 2>"$T/err"; then
  fail "write at the end succeeded"
fi
grep -qi 'no space left' "$T/err" || fail "write at the end: '$(cat "$T/err")', expected ENOSPC"
if dd if="$T/r2" of="$F" bs=4096 count=1 seek=$((SIZE / 4096 + 100)) conv=notrunc oflag=direct status=none 2>"$T/err"; then
  fail "O_DIRECT write past the end succeeded"
fi
grep -qi 'no space left' "$T/err" || fail "O_DIRECT write past the end: '$(cat "$T/err")', expected ENOSPC"
# Across the end: the first 4096 bytes land, then ENOSPC.
if dd if="$T/r2" of="$F" bs=8192 count=1 seek=$((SIZE - 4096)) oflag=seek_bytes conv=notrunc status=none 2>"$T/err"; then
  fail "write across the end succeeded completely"
fi
grep -qi 'no space left' "$T/err" || fail "write across the end: '$(cat "$T/err")', expected ENOSPC after a short write"
[ "$(stat -c %s "$F")" = "$SIZE" ] || fail "size is $(stat -c %s "$F") after writing past the end"
server_copy "$SERVER" "$T/server3.img"
[ "$(range_sha "$T/server3.img" $((SIZE - 4096)) 4096)" = "$(head -c 4096 "$T/r2" | sha256sum | cut -d' ' -f1)" ] ||
  fail "the part of the write before the end did not land"
for flag in "" direct; do
  iflag=${flag:+iflag=$flag}
  got=$(dd if="$F" bs=4096 skip=$((SIZE / 4096)) count=1 $iflag status=none | wc -c)
  [ "$got" = 0 ] || fail "read at the end${flag:+ ($flag)} returned $got bytes"
  got=$(dd if="$F" bs=4096 skip=$((SIZE / 4096 + 10)) count=1 $iflag status=none | wc -c)
  [ "$got" = 0 ] || fail "read past the end${flag:+ ($flag)} returned $got bytes"
  got=$(dd if="$F" bs=8192 skip=$((SIZE - 4096)) count=1 iflag=skip_bytes${flag:+,$flag} status=none | wc -c)
  [ "$got" = 4096 ] || fail "read across the end${flag:+ ($flag)} returned $got bytes, expected 4096"
done
[ "$(range_sha "$F" $((SIZE - 8192)) 8192)" = "$(range_sha "$T/server3.img" $((SIZE - 8192)) 8192)" ] ||
  fail "the last 8192 bytes differ from the server's"
umount_dir "$T/mnt"
echo ok
