#!/bin/bash
# Extended headers against tests/fake-nbd-server.py (hostile answers are in
# t-violations.sh):
#   1. --extended on: negotiated (user.nbd.flags extended_headers=true,
#      user.nbd.protocol replies=extended, the canonical name is shown),
#      data written reads back, a 4 MiB punch is one WRITE_ZEROES;
#   2. --extended late (NBD_OPT_EXTENDED_HEADERS refused at first, then
#      NBD_REP_ERR_EXT_HEADER_REQD on SET_META_CONTEXT and GO until
#      negotiated): the mount works, with block status;
#   3. --extended off: structured replies, extended_headers=false;
#   4. a server refusing TRIM/WRITE_ZEROES longer than its maximum block
#      size (1 MiB) with EINVAL or EOVERFLOW: the punch still succeeds, sent
#      again in 1 MiB pieces, with and without extended headers.
. "$(dirname "$0")/lib.sh"

FAKE=$(cd "$(dirname "$0")/.." && pwd)/fake-nbd-server.py
MiB=1048576
SIZE=$((8 * MiB))

xattr() { getfattr -n "user.nbd.$2" --only-values "$1" 2>/dev/null; }
zeroes_logged() { grep -c "CMD WRITE_ZEROES $1" "$T/$2.log" || true; }

# punch_case NAME EXPECT-PIECES SERVER-ARGS...: punch 4 MiB at 1 MiB; it must
# read back as zeros, the rest as the export's pattern, and the server must
# have seen EXPECT-PIECES WRITE_ZEROES of 1 MiB (0: one of 4 MiB).
punch_case() {
  local name=$1 pieces=$2; shift 2
  serve_fake "$name" --size "$SIZE" "$@"
  mkdir -p "$T/mnt-$name"
  NBDFS_LOG=$T/nbdfs-$name.log mount_nbdfs "$(unix_uri "$SOCK")" "$T/mnt-$name" -v
  local f=$T/mnt-$name/disk
  [ "$(falloc "$f" PUNCH_HOLE\|KEEP_SIZE $MiB $((4 * MiB)))" = ok ] || fail "$name: the 4 MiB punch failed"
  [ "$(range_sha "$f" $MiB $((4 * MiB)))" = "$(zero_sha $((4 * MiB)))" ] || fail "$name: punched range not zero"
  [ "$(range_sha "$f" 0 $MiB)" = "$(python3 "$FAKE" --print-pattern 0 $MiB | sha256sum | cut -d' ' -f1)" ] ||
    fail "$name: data before the punch changed"
  if [ "$pieces" = 0 ]; then
    [ "$(zeroes_logged "$MiB+$((4 * MiB))" "$name")" = 1 ] || fail "$name: no single 4 MiB WRITE_ZEROES: $(grep CMD "$T/$name.log")"
  else
    grep -q "refusing a $((4 * MiB))-byte WRITE_ZEROES" "$T/$name.log" || fail "$name: the big WRITE_ZEROES was not refused"
    [ "$(grep -c "CMD WRITE_ZEROES [0-9]*+$MiB\$" "$T/$name.log")" = "$pieces" ] ||
      fail "$name: expected $pieces WRITE_ZEROES of 1 MiB: $(grep CMD "$T/$name.log")"
    grep -q "sending it in pieces" "$T/nbdfs-$name.log" || fail "$name: nbdfs did not say it split the request"
  fi
  note "$name: $(grep CMD "$T/$name.log" | tr '\n' ';')"
  unmount_nbdfs "$T/mnt-$name"
  kill "$SERVER_PID" 2>/dev/null || true
}

# 1. Negotiated.
serve_fake on --size "$SIZE" --extended on --export disk0
mkdir -p "$T/mnt"
mount_nbdfs "$(unix_uri "$SOCK" disk0)" "$T/mnt" -v
F=$T/mnt/disk0
xattr "$F" flags | grep -q 'extended_headers=true' || fail "on: user.nbd.flags: $(xattr "$F" flags)"
[ "$(xattr "$F" protocol)" = "handshake=fixed-newstyle replies=extended tls=no export_option=go" ] ||
  fail "on: user.nbd.protocol: $(xattr "$F" protocol)"
[ "$(xattr "$F" canonical_name)" = "disk0" ] || fail "on: user.nbd.canonical_name: '$(xattr "$F" canonical_name)'"
rand_file "$T/data" $((3 * MiB))
write_at "$F" 12345 "$T/data" conv=notrunc,fsync
[ "$(range_sha "$F" 12345 $((3 * MiB)))" = "$(sha "$T/data")" ] || fail "on: data written does not read back"
unmount_nbdfs "$T/mnt"
kill "$SERVER_PID"
note "on: $(grep -c 'option' "$T/on.log") options; transmission: $(grep -m1 transmission "$T/on.log" | sed 's/.*transmission //')"

# 2. Required after a first refusal.
serve_fake req --size "$SIZE" --extended late
mount_nbdfs "$(unix_uri "$SOCK")" "$T/mnt" -v
F=$T/mnt/disk
grep -q 'extended headers required' "$T/req.log" || fail "required: the server never demanded extended headers"
xattr "$F" flags | grep -q 'extended_headers=true.*block_status=base:allocation' ||
  fail "required: user.nbd.flags: $(xattr "$F" flags)"
python3 "$FAKE" --print-pattern 0 4096 | cmp -s - <(dd if="$F" bs=4096 count=1 status=none) || fail "required: wrong data"
unmount_nbdfs "$T/mnt"
kill "$SERVER_PID"
note "required: $(grep -c 'refused: extended headers required' "$T/req.log") option(s) refused, then negotiated"

# 3. Off.
serve_fake off --size "$SIZE"
mount_nbdfs "$(unix_uri "$SOCK")" "$T/mnt" -v
F=$T/mnt/disk
xattr "$F" flags | grep -q 'structured_replies=true extended_headers=false' || fail "off: user.nbd.flags: $(xattr "$F" flags)"
xattr "$F" protocol | grep -q 'replies=structured' || fail "off: user.nbd.protocol: $(xattr "$F" protocol)"
unmount_nbdfs "$T/mnt"
kill "$SERVER_PID"

# 4. Punching, and refused oversized requests.
punch_case punch-ext 0 --extended on
punch_case refuse-einval-ext 4 --extended on --refuse-big EINVAL
punch_case refuse-eoverflow-ext 4 --extended on --refuse-big EOVERFLOW
punch_case refuse-einval-compact 4 --refuse-big EINVAL
echo "t-extended-fake: ok"
