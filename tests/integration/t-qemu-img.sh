#!/bin/bash
# qemu tools on the mounted file (nbdkit memory exports):
#  - qemu-img convert -n -O raw of a qcow2 image (data, a zeroed cluster
#    range, unallocated space) onto an export pre-filled with random bytes:
#    qemu-img has to zero everything it does not copy (through fallocate
#    on the mounted file); qemu-img compare of the qcow2 and the mounted
#    file passes, also after a remount, and the export read by nbdcopy
#    equals qemu-img's own raw conversion;
#  - the qcow2 file itself copied onto an export (sized to the file,
#    rounded up to whole MiB with 1 MiB to spare, for qcow2 to allocate
#    new clusters in): modified in place by qemu-io (a new cluster at 0 and
#    an overwrite inside existing data), qemu-img check passes and qemu-io
#    reads back the patterns, through the mount after a remount and in a
#    copy made by nbdcopy.
. "$(dirname "$0")/lib.sh"

MiB=1048576
VSIZE=$((64 * MiB))
SRC=$T/src.qcow2
qemu-img create -q -f qcow2 "$SRC" "$VSIZE" || fail "qemu-img create failed"
qemu-io -f qcow2 -c 'write -P 0xab 1M 2M' -c 'write -P 0x12 10M 64k' -c 'write -P 0x5a 33M 3M' \
  -c 'write -z 34M 1M' -c 'write -P 0xee 63M 1M' -c 'write -P 0x01 20M 512' "$SRC" >"$T/qemu-io.log" 2>&1 ||
  fail "qemu-io writing the source: $(cat "$T/qemu-io.log")"
qemu-img convert -f qcow2 -O raw "$SRC" "$T/expected.raw" || fail "qemu-img convert to a local file failed"

# qemu-io exits non-zero on a failed command in current versions, but also
# check its output for failed pattern checks.
qio() {  # WHAT ARGS...
  local what=$1; shift
  qemu-io "$@" >"$T/qio.out" 2>&1 || fail "$what: qemu-io failed: $(cat "$T/qio.out")"
  grep -qiE 'fail|error|mismatch' "$T/qio.out" && fail "$what: $(cat "$T/qio.out")"
  return 0
}

mkdir "$T/mnt"
F=$T/mnt/disk

# ---- qemu-img convert onto the mounted file ----
serve_nbdkit conv --filter=log memory "$VSIZE" logfile="$T/conv.log"
URI=$(unix_uri "$SOCK")
rand_file "$T/garbage" "$VSIZE"
nbdcopy -- "$T/garbage" "$URI" || fail "pre-filling the export failed"
NBDFS_LOG=$T/nbdfs-conv.log mount_nbdfs "$URI" "$T/mnt"
mark=$(log_mark "$T/conv.log")
qemu-img convert -n -f qcow2 -O raw "$SRC" "$F" || fail "qemu-img convert -n -O raw onto the mounted file failed"
log_since "$T/conv.log" "$mark" | log_requests Zero >"$T/conv-zero.log"
[ -s "$T/conv-zero.log" ] && note "qemu-img convert zeroed through $(wc -l <"$T/conv-zero.log") WRITE_ZEROES requests"
qemu-img compare -f qcow2 -F raw "$SRC" "$F" >"$T/compare.out" 2>&1 ||
  fail "qemu-img compare after convert: $(cat "$T/compare.out")"
unmount_nbdfs "$T/mnt"
NBDFS_LOG=$T/nbdfs-conv2.log mount_nbdfs "$URI" "$T/mnt"
qemu-img compare -f qcow2 -F raw "$SRC" "$F" >"$T/compare.out" 2>&1 ||
  fail "qemu-img compare after a remount: $(cat "$T/compare.out")"
qio "data after convert" -f raw -r -c 'read -P 0xab 1M 2M' -c 'read -P 0 34M 1M' -c 'read -P 0 0 1M' -c 'read -P 0xee 63M 1M' "$F"
unmount_nbdfs "$T/mnt"
server_copy "$URI" "$T/server.raw"
[ "$(sha "$T/server.raw")" = "$(sha "$T/expected.raw")" ] || fail "the export after convert differs from qemu-img's raw conversion"

# ---- the qcow2 file itself on the mounted file, modified in place ----
qsize=$(stat -c %s "$SRC")
esize=$(((qsize + MiB - 1) / MiB * MiB + MiB))
serve_nbdkit img memory "$esize"
URI=$(unix_uri "$SOCK")
NBDFS_LOG=$T/nbdfs-img.log mount_nbdfs "$URI" "$T/mnt"
dd if="$SRC" of="$F" bs=1M conv=notrunc status=none || fail "copying the qcow2 file onto the mount failed"
[ "$(range_sha "$F" 0 "$qsize")" = "$(sha "$SRC")" ] || fail "the qcow2 file copied onto the mount reads back differently"
qemu-img check -f qcow2 "$F" >"$T/check.out" 2>&1 || fail "qemu-img check of the copied image: $(cat "$T/check.out")"
qio "modifying the image" -f qcow2 -c 'write -P 0xcd 0 64k' -c 'write -P 0x99 2M 4k' "$F"
qemu-img check -f qcow2 "$F" >"$T/check.out" 2>&1 || fail "qemu-img check after modifying: $(cat "$T/check.out")"
qio "reading the modified image" -f qcow2 -r -c 'read -P 0xcd 0 64k' -c 'read -P 0xab 1M 1M' -c 'read -P 0x99 2M 4k' \
  -c 'read -P 0xab 2101248 1044480' -c 'read -P 0x5a 33M 1M' -c 'read -P 0 34M 1M' -c 'read -P 0xee 63M 1M' "$F"
unmount_nbdfs "$T/mnt"
NBDFS_LOG=$T/nbdfs-img2.log mount_nbdfs "$URI" "$T/mnt"
qemu-img check -f qcow2 "$F" >"$T/check.out" 2>&1 || fail "qemu-img check after a remount: $(cat "$T/check.out")"
qio "after a remount" -f qcow2 -r -c 'read -P 0xcd 0 64k' -c 'read -P 0x99 2M 4k' -c 'read -P 0x12 10M 64k' "$F"
unmount_nbdfs "$T/mnt"
server_copy "$URI" "$T/copy.qcow2"
qemu-img check -f qcow2 "$T/copy.qcow2" >"$T/check.out" 2>&1 || fail "qemu-img check of the export's copy: $(cat "$T/check.out")"
qio "the export's copy" -f qcow2 -r -c 'read -P 0xcd 0 64k' -c 'read -P 0x99 2M 4k' -c 'read -P 0x01 20M 512' "$T/copy.qcow2"
echo ok
