#!/bin/bash
# fallocate on the mounted file, against four servers:
#  (a) nbdkit memory: PUNCH_HOLE is WRITE_ZEROES that may trim ("Zero ...
#      trim=1" in the log filter's log), ZERO_RANGE is WRITE_ZEROES with
#      NO_HOLE ("trim=0"); no writes (minimum block 1: no partial blocks);
#  (b) nbdkit memory --filter=nozero (no WRITE_ZEROES advertised): never a
#      Zero; PUNCH_HOLE is TRIM, kept without writes when block status then
#      reports zeros (whole 32 KiB pages), else followed by written zeros;
#      ZERO_RANGE is written zeros;
#  (c) nbd-server 3.24 (WRITE_ZEROES, no block status): every range reads
#      zeros, also in the backing file after unmount; SEEK_DATA/SEEK_HOLE
#      see all data, st_blocks is the whole size;
#  (d) nbdkit eval with a TRIM that does nothing and no WRITE_ZEROES, whose
#      block status reports everything as data: PUNCH_HOLE must not trust
#      the TRIM, and writes zeros.
# On each: unaligned small ranges, a single byte, large aligned and
# unaligned ranges read back as zeros, and nothing around them changes (a
# local model of the export is compared through the mount and with nbdcopy).
# Also: mode 0 (plain allocation) succeeds without touching the server or
# the data, also past the end with KEEP_SIZE; without KEEP_SIZE past the
# end, mode 0 and ZERO_RANGE fail with ENOSPC and change nothing; ranges
# that run past the end with KEEP_SIZE stop at the end; COLLAPSE_RANGE is
# EOPNOTSUPP.
# Finally, on an 8 GiB memory export, a 5 GiB PUNCH_HOLE: WRITE_ZEROES's
# 32-bit length means several Zero requests, which together cover exactly
# the range; sample offsets inside read zeros and data just outside stays.
# The same behind --filter=nozero: several Trim requests tile the range,
# block status confirms the zeros, and no zeros are written.
. "$(dirname "$0")/lib.sh"

MiB=1048576
SIZE=$((64 * MiB))
REGION=$((16 * MiB))   # filled with data, then zeroed in places

# The zeroing operations: kind (P = punch hole, Z = zero range), offset,
# length.
ops=(
  "P $((MiB + 1234)) 5000"              # unaligned, inside one page
  "Z $((MiB + 100007)) 77777"           # unaligned, across pages
  "P $((4 * MiB)) $((2 * MiB))"         # large, aligned
  "Z $((6 * MiB + 3)) $((3 * MiB / 2 + 5))"  # large, unaligned
  "P $((9 * MiB + 4095)) 1"             # one byte
  "Z $((12 * MiB)) 4096"                # small, aligned
  "P $((13 * MiB + 17)) $((MiB + 65536))"  # large, unaligned
)

model_zero() {  # OFFSET LENGTH: zero that range of the model
  dd if=/dev/zero of="$MODEL" bs=1M seek="$1" count="$2" oflag=seek_bytes iflag=count_bytes conv=notrunc status=none
}

check_model() {  # WHAT [LENGTH]: the mounted file and the model agree (on
                 # their first LENGTH bytes, default all)
  local n=${2:-$SIZE}
  [ "$(range_sha "$F" 0 "$n")" = "$(sha "$MODEL" "$n")" ] || {
    cmp "$F" "$MODEL" | head -3 >&2 || true
    fail "$1: the mounted file differs from the model"
  }
}

# exercise NAME URI LOG: fill the region, then run the ops, checking the
# contents after each and what the server saw (LOG: the nbdkit log filter's
# log, or "" for none) with the server-specific check_op_NAME.
exercise() {
  local name=$1 uri=$2 log=$3 op kind off len mark res
  MODEL=$T/$name.model
  rand_file "$T/$name.fill" "$REGION"
  cp "$T/$name.fill" "$MODEL"
  truncate -s "$SIZE" "$MODEL"
  write_at "$F" 0 "$T/$name.fill" || fail "$name: filling the region failed"
  check_model "$name: after filling"
  for op in "${ops[@]}"; do
    set -- $op
    kind=$1 off=$2 len=$3
    mark=$(log_mark "$log")
    if [ "$kind" = P ]; then
      res=$(falloc "$F" "PUNCH_HOLE|KEEP_SIZE" "$off" "$len")
    else
      res=$(falloc "$F" ZERO_RANGE "$off" "$len")
    fi
    [ "$res" = ok ] || fail "$name: fallocate $kind $off $len: $res"
    model_zero "$off" "$len"
    [ "$(range_sha "$F" "$off" "$len")" = "$(zero_sha "$len")" ] || fail "$name: $kind $off+$len does not read as zeros"
    check_model "$name: after $kind $off+$len" "$REGION"
    if [ -n "$log" ]; then
      log_since "$log" "$mark" >"$T/op.log"
      "check_op_$name" "$kind" "$off" "$len" "$T/op.log"
    fi
  done
  check_model "$name: after all the ops"
  # An independent client sees the same.
  server_copy "$uri" "$T/$name.server"
  [ "$(sha "$T/$name.server")" = "$(sha "$MODEL")" ] || fail "$name: nbdcopy of the export differs from the model"
}

# check_op_NAME KIND OFFSET LENGTH OPLOG: what the server saw for one op.
# A whole-page range (memory pages are 32 KiB) punched by TRIM is verified
# by block status and needs no writes.
aligned_pages() { [ $(($2 % 32768)) = 0 ] && [ $(($3 % 32768)) = 0 ]; }

check_op_mem() {
  local kind=$1 off=$2 len=$3 l=$4
  local zeros
  zeros=$(log_requests Zero <"$l")
  [ -n "$zeros" ] || fail "mem: $kind $off+$len: no WRITE_ZEROES (Zero) reached the server: $(cat "$l")"
  [ -z "$(log_requests Trim <"$l")" ] || fail "mem: $kind $off+$len: TRIM sent though WRITE_ZEROES is available"
  [ -z "$(log_requests Write <"$l")" ] || fail "mem: $kind $off+$len: writes sent (minimum block 1, nothing to write): $(log_requests Write <"$l")"
  if [ "$kind" = P ]; then
    echo "$zeros" | grep -q 'trim=0' && fail "mem: punch hole sent WRITE_ZEROES with NO_HOLE: $zeros"
  else
    echo "$zeros" | grep -q 'trim=1' && fail "mem: zero range sent WRITE_ZEROES without NO_HOLE: $zeros"
  fi
  [ "$(echo "$zeros" | log_count_bytes)" = "$len" ] || fail "mem: $kind $off+$len: WRITE_ZEROES covered $(echo "$zeros" | log_count_bytes) bytes"
}

check_op_nozero() {
  local kind=$1 off=$2 len=$3 l=$4
  [ -z "$(log_requests Zero <"$l")" ] || fail "nozero: WRITE_ZEROES sent though not advertised"
  if [ "$kind" = P ]; then
    [ -n "$(log_requests Trim <"$l")" ] || fail "nozero: punch $off+$len: no TRIM: $(cat "$l")"
    if aligned_pages "$kind" "$off" "$len"; then
      [ -z "$(log_requests Write <"$l")" ] ||
        fail "nozero: punch of whole pages $off+$len: zeros written although block status reports zeros after TRIM"
    fi
  else
    [ -z "$(log_requests Trim <"$l")" ] || fail "nozero: zero range $off+$len sent TRIM"
    [ "$(log_requests Write <"$l" | log_count_bytes)" -ge "$len" ] ||
      fail "nozero: zero range $off+$len: only $(log_requests Write <"$l" | log_count_bytes) bytes written"
  fi
}

check_op_notrim() {
  local kind=$1 off=$2 len=$3 l=$4
  [ -z "$(log_requests Zero <"$l")" ] || fail "notrim: WRITE_ZEROES sent though not advertised"
  [ "$(log_requests Write <"$l" | log_count_bytes)" -ge "$len" ] ||
    fail "notrim: $kind $off+$len: only $(log_requests Write <"$l" | log_count_bytes) bytes of zeros written"
}

# Mode 0, ENOSPC, past-the-end and unsupported modes (same on any server).
edge_cases() {
  local name=$1 log=$2 mark before res
  before=$(sha "$MODEL")
  mark=$(log_mark "$log")
  res=$(falloc "$F" 0 $((2 * MiB)) $((3 * MiB)))
  [ "$res" = ok ] || fail "$name: fallocate mode 0 inside the export: $res"
  res=$(falloc "$F" KEEP_SIZE $((SIZE - MiB)) $((4 * MiB)))
  [ "$res" = ok ] || fail "$name: fallocate KEEP_SIZE past the end: $res"
  res=$(falloc "$F" 0 $((SIZE - MiB)) $((2 * MiB)))
  [ "$res" = ENOSPC ] || fail "$name: fallocate mode 0 past the end: $res, expected ENOSPC"
  res=$(falloc "$F" ZERO_RANGE $((SIZE - MiB)) $((2 * MiB)))
  [ "$res" = ENOSPC ] || fail "$name: fallocate ZERO_RANGE past the end without KEEP_SIZE: $res, expected ENOSPC"
  res=$(falloc "$F" ZERO_RANGE 0 $((SIZE + 1)))
  [ "$res" = ENOSPC ] || fail "$name: fallocate ZERO_RANGE of more than the export: $res, expected ENOSPC"
  res=$(falloc "$F" "PUNCH_HOLE|KEEP_SIZE" $((SIZE + 4096)) 4096)
  [ "$res" = ok ] || fail "$name: punch hole entirely past the end: $res, expected success (nothing to do)"
  res=$(falloc "$F" COLLAPSE_RANGE 0 $((4 * MiB)))
  case $res in EOPNOTSUPP | ENOTSUP) ;; *) fail "$name: fallocate COLLAPSE_RANGE: $res, expected EOPNOTSUPP" ;; esac
  if [ -n "$log" ]; then
    log_since "$log" "$mark" | grep -E 'connection=[0-9]+ (Write|Zero|Trim) id=' &&
      fail "$name: a refused or no-op fallocate reached the server"
  fi
  [ "$(stat -c %s "$F")" = "$SIZE" ] || fail "$name: size changed to $(stat -c %s "$F")"
  [ "$(range_sha "$F" 0 "$SIZE")" = "$before" ] || fail "$name: a no-op or refused fallocate changed the data"
  # With KEEP_SIZE, ranges past the end stop at the end.
  rand_file "$T/tail" $((2 * MiB))
  write_at "$F" $((SIZE - 2 * MiB)) "$T/tail"
  write_at "$MODEL" $((SIZE - 2 * MiB)) "$T/tail"
  res=$(falloc "$F" "PUNCH_HOLE|KEEP_SIZE" $((SIZE - MiB - 3)) $((5 * MiB)))
  [ "$res" = ok ] || fail "$name: punch hole past the end: $res"
  model_zero $((SIZE - MiB - 3)) $((MiB + 3))
  res=$(falloc "$F" "ZERO_RANGE|KEEP_SIZE" $((SIZE - 2 * MiB + 5)) $((8 * MiB)))
  [ "$res" = ok ] || fail "$name: zero range with KEEP_SIZE past the end: $res"
  model_zero $((SIZE - 2 * MiB + 5)) $((2 * MiB - 5))
  check_model "$name: after zeroing past the end"
  [ "$(stat -c %s "$F")" = "$SIZE" ] || fail "$name: size changed to $(stat -c %s "$F")"
}

mkdir "$T/mnt"
F=$T/mnt/disk

# ---- (a) nbdkit memory ----
serve_nbdkit mem --filter=log memory "$SIZE" logfile="$T/mem.log"
NBDFS_LOG=$T/nbdfs-mem.log mount_nbdfs "$(unix_uri "$SOCK")" "$T/mnt"
exercise mem "$(unix_uri "$SOCK")" "$T/mem.log"
edge_cases mem "$T/mem.log"
unmount_nbdfs "$T/mnt"

# ---- (b) nbdkit memory without WRITE_ZEROES ----
serve_nbdkit nozero --filter=log --filter=nozero memory "$SIZE" logfile="$T/nozero.log"
nbdinfo --json "$(unix_uri "$SOCK")" | grep -q '"can_zero": false' || fail "nozero filter still advertises WRITE_ZEROES"
NBDFS_LOG=$T/nbdfs-nozero.log mount_nbdfs "$(unix_uri "$SOCK")" "$T/mnt"
exercise nozero "$(unix_uri "$SOCK")" "$T/nozero.log"
edge_cases nozero "$T/nozero.log"
unmount_nbdfs "$T/mnt"

# ---- (c) nbd-server 3.24 ----
IMG=$T/nbd-server.img
truncate -s "$SIZE" "$IMG"
start_nbd_server() {
  serve_nbd_server <<EOF
[data]
    exportname = $IMG
    trim = true
    flush = true
    fua = true
EOF
}
start_nbd_server
URI=nbd://127.0.0.1:$PORT/data
NBDFS_LOG=$T/nbdfs-nbd-server.log mount_nbdfs "$URI" "$T/mnt"
F=$T/mnt/data
[ -f "$F" ] || fail "no file $F"
exercise nbdserver "$URI" ""
edge_cases nbdserver ""
# No block status: everything is data.
[ "$(seek_map "$F")" = "0 $SIZE" ] || fail "nbd-server: SEEK_DATA/SEEK_HOLE: $(seek_map "$F"), expected all data"
[ "$(seek_map "$F" $((5 * MiB + 7)))" = "$((5 * MiB + 7)) $SIZE" ] || fail "nbd-server: SEEK_DATA in the middle: $(seek_map "$F" $((5 * MiB + 7)))"
[ "$(stat -c %b "$F")" = $((SIZE / 512)) ] || fail "nbd-server: st_blocks $(stat -c %b "$F"), expected the whole size"
unmount_nbdfs "$T/mnt"
[ "$(sha "$IMG")" = "$(sha "$MODEL")" ] || fail "nbd-server: the backing file differs from the model after unmount"
F=$T/mnt/disk

# ---- (d) a TRIM that does nothing, block status says all data ----
EIMG=$T/eval.img
truncate -s "$SIZE" "$EIMG"
serve_nbdkit notrim --filter=log --filter=nozero eval get_size="echo $SIZE" \
  pread="dd if=$EIMG skip=\$4 count=\$3 iflag=count_bytes,skip_bytes status=none" \
  pwrite="dd of=$EIMG seek=\$4 conv=notrunc oflag=seek_bytes status=none" \
  can_trim='exit 0' trim='exit 0' flush='exit 0' logfile="$T/notrim.log"
NBDFS_LOG=$T/nbdfs-notrim.log mount_nbdfs "$(unix_uri "$SOCK")" "$T/mnt"
exercise notrim "$(unix_uri "$SOCK")" "$T/notrim.log"
unmount_nbdfs "$T/mnt"
[ "$(sha "$EIMG")" = "$(sha "$MODEL")" ] || fail "notrim: the backing file differs from the model after unmount"

# ---- a punch larger than 4 GiB ----
GiB=$((1024 * MiB))
BIG=$((8 * GiB))
serve_nbdkit big --filter=log memory "$BIG" logfile="$T/big.log"
NBDFS_LOG=$T/nbdfs-big.log mount_nbdfs "$(unix_uri "$SOCK")" "$T/mnt"
START=$((GiB / 2))
LEN=$((5 * GiB))
samples=($START $((GiB - 1)) $((2 * GiB + 12345)) $((4 * GiB - 4096)) $((4 * GiB)) $((4 * GiB + 4096)) $((5 * GiB + 3)) $((START + LEN - 4096)))
guards=($((START - 4096)) $((START + LEN)))
rand_file "$T/sample" 4096
for o in "${samples[@]}" "${guards[@]}"; do
  write_at "$F" "$o" "$T/sample" || fail "big: writing the sample at $o failed"
done
mark=$(log_mark "$T/big.log")
res=$(falloc "$F" "PUNCH_HOLE|KEEP_SIZE" "$START" "$LEN")
[ "$res" = ok ] || fail "big: punching 5 GiB: $res"
for o in "${samples[@]}"; do
  [ "$(range_sha "$F" "$o" 4096)" = "$(zero_sha 4096)" ] || fail "big: offset $o inside the 5 GiB hole does not read zeros"
done
for o in "${guards[@]}"; do
  [ "$(range_sha "$F" "$o" 4096)" = "$(sha "$T/sample")" ] || fail "big: data at $o just outside the hole changed"
done
log_since "$T/big.log" "$mark" | log_requests Zero >"$T/big-zero.log"
n=$(wc -l <"$T/big-zero.log")
[ "$n" -ge 2 ] || fail "big: a 5 GiB punch reached the server as $n Zero request(s): $(cat "$T/big-zero.log")"
[ "$(log_count_bytes <"$T/big-zero.log")" = "$LEN" ] ||
  fail "big: the Zero requests cover $(log_count_bytes <"$T/big-zero.log") bytes, not $LEN"
python3 - "$T/big-zero.log" "$START" "$LEN" <<'EOF' || fail "big: the Zero requests do not tile the range: $(cat "$T/big-zero.log")"
import re, sys
start, length = int(sys.argv[2]), int(sys.argv[3])
reqs = sorted((int(o, 16), int(c, 16)) for o, c in re.findall(r"offset=0x([0-9a-f]+) count=0x([0-9a-f]+)", open(sys.argv[1]).read()))
pos = start
for o, c in reqs:
    assert o == pos, "gap or overlap at %d (request at %d)" % (pos, o)
    assert 0 < c <= 0xffffffff
    pos += c
assert pos == start + length, "ends at %d" % pos
EOF
grep -q 'trim=1' "$T/big-zero.log" || fail "big: the punch did not allow trimming"
du=$(du -B1 "$F" | cut -f1)
[ "$du" -le $((8 * 32768)) ] || fail "big: $du bytes still allocated after the punch (expected only the guard pages)"
unmount_nbdfs "$T/mnt"

# The same 5 GiB punch without WRITE_ZEROES: TRIM requests (also split at
# 32 bits) tile the range, block status (scanned over more than 4 GiB)
# confirms zeros, so no zeros are written.
serve_nbdkit bignz --filter=log --filter=nozero memory "$BIG" logfile="$T/bignz.log"
NBDFS_LOG=$T/nbdfs-bignz.log mount_nbdfs "$(unix_uri "$SOCK")" "$T/mnt"
for o in "${samples[@]}" "${guards[@]}"; do
  write_at "$F" "$o" "$T/sample" || fail "bignz: writing the sample at $o failed"
done
mark=$(log_mark "$T/bignz.log")
res=$(falloc "$F" "PUNCH_HOLE|KEEP_SIZE" "$START" "$LEN")
[ "$res" = ok ] || fail "bignz: punching 5 GiB: $res"
for o in "${samples[@]}"; do
  [ "$(range_sha "$F" "$o" 4096)" = "$(zero_sha 4096)" ] || fail "bignz: offset $o inside the 5 GiB hole does not read zeros"
done
for o in "${guards[@]}"; do
  [ "$(range_sha "$F" "$o" 4096)" = "$(sha "$T/sample")" ] || fail "bignz: data at $o just outside the hole changed"
done
log_since "$T/bignz.log" "$mark" >"$T/bignz-op.log"
log_requests Trim <"$T/bignz-op.log" >"$T/bignz-trim.log"
[ "$(wc -l <"$T/bignz-trim.log")" -ge 2 ] || fail "bignz: a 5 GiB punch reached the server as $(wc -l <"$T/bignz-trim.log") Trim request(s)"
[ "$(log_count_bytes <"$T/bignz-trim.log")" = "$LEN" ] ||
  fail "bignz: the Trim requests cover $(log_count_bytes <"$T/bignz-trim.log") bytes, not $LEN"
[ -z "$(log_requests Write <"$T/bignz-op.log")" ] ||
  fail "bignz: zeros written ($(log_requests Write <"$T/bignz-op.log" | log_count_bytes) bytes) although block status reports the trimmed range as zeros"
[ -n "$(log_requests Extents <"$T/bignz-op.log")" ] || fail "bignz: the TRIM was not checked with block status"
unmount_nbdfs "$T/mnt"
echo ok
