#!/bin/bash
# NBD extended headers against qemu-nbd 10 (bookworm-backports, unpacked
# aside by contrib/run-tests.sh; $QEMU_NBD_10 names it, Debian's own qemu
# 7.2 has no extended headers).  Its --trace 'nbd_*' output shows what was
# negotiated and sent:
#   1. negotiation: NBD_OPT_EXTENDED_HEADERS acknowledged; user.nbd.flags
#      says extended_headers=true, user.nbd.protocol replies=extended;
#   2. data integrity on a qcow2 image: random writes through the mount read
#      back equal to a model, and the image (qemu-img convert) equals it
#      after unmount;
#   3. on an 8 GiB sparse raw image: fallocate -p of 6 GiB goes out as ONE
#      WRITE_ZEROES of 6442450944 bytes (compact headers need two), reads
#      back as zeros, and SEEK_DATA across the 6 GiB hole is answered from
#      ONE BLOCK_STATUS request of more than 4 GiB;
#   4. the same punch on a sparse qcow2 image;
#   5. TLS (tls-creds-psk): extended headers inside TLS, data intact.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/tls-certs.sh"

QNBD=${QEMU_NBD_10:-/opt/qemu-bpo/usr/bin/qemu-nbd}
[ -x "$QNBD" ] || fail "no qemu-nbd 10 at $QNBD (contrib/run-tests.sh unpacks it from bookworm-backports; set QEMU_NBD_10)"
"$QNBD" --version | head -1 | grep -Eq 'qemu-nbd (8\.[2-9]|9\.|1[0-9]\.)' ||
  fail "$QNBD is not qemu-nbd 8.2 or later: $("$QNBD" --version | head -1)"
MiB=1048576
GiB=$((1024 * MiB))

# serve10 NAME FORMAT IMAGE [ARGS...]: qemu-nbd 10 on a Unix socket with
# the nbd_* trace in $T/NAME.trace; sets SOCK and SERVER_PID.
serve10() {
  local name=$1 fmt=$2 img=$3; shift 3
  SOCK=$T/$name.sock
  "$QNBD" -f "$fmt" -k "$SOCK" --persistent --trace 'nbd_*' "$@" "$img" >"$T/$name.trace" 2>&1 &
  SERVER_PID=$!
  track_pid "$SERVER_PID"
  wait_until 20 test -S "$SOCK" || fail "qemu-nbd 10 ($name) did not start: $(cat "$T/$name.trace")"
}

stop10() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait_until 30 eval '! pid_alive "$SERVER_PID"' || fail "qemu-nbd did not exit"
}

# requests TRACE TYPE: the requests of TYPE (hex, as qemu traces it) as
# "FROM LEN" lines.
requests() {
  sed -n "s/.*Got request: { magic = 0x21e41c71, .flags = 0x[0-9a-f]*, .type = $2, from = \([0-9]*\), len = \([0-9]*\) }.*/\1 \2/p" "$1"
}

check_negotiated() {  # NAME FILE
  grep -q 'Reply opt=11 (extended headers), type=1 (ack)' "$T/$1.trace" ||
    fail "$1: qemu-nbd did not acknowledge NBD_OPT_EXTENDED_HEADERS: $(grep -i option "$T/$1.trace" | head)"
  grep -q 'magic = 0x25609513' "$T/$1.trace" && fail "$1: a compact request was sent after extended headers"
  getfattr -n user.nbd.flags --only-values "$2" 2>/dev/null | grep -q 'extended_headers=true' ||
    fail "$1: user.nbd.flags: $(getfattr -n user.nbd.flags --only-values "$2" 2>/dev/null)"
  getfattr -n user.nbd.protocol --only-values "$2" 2>/dev/null | grep -q 'replies=extended' ||
    fail "$1: user.nbd.protocol: $(getfattr -n user.nbd.protocol --only-values "$2" 2>/dev/null)"
  note "$1: $(getfattr -n user.nbd.protocol --only-values "$2" 2>/dev/null)"
}

# random_writes FILE MODEL SIZE N SEED: N writes of random bytes at random
# offsets and lengths (odd ones too) to both FILE and MODEL.
random_writes() {
  python3 - "$@" <<'PY'
import os, random, sys
f, m, size, n, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
rnd = random.Random(seed)
fd, md = os.open(f, os.O_WRONLY), os.open(m, os.O_WRONLY)
for _ in range(n):
    ln = rnd.choice([1, 511, 4096, 65536, 1 << 20, rnd.randrange(1, 3 << 20)])
    off = rnd.randrange(0, size - ln)
    data = rnd.randbytes(ln)
    os.pwrite(fd, data, off)
    os.pwrite(md, data, off)
os.fsync(fd)
PY
}

# 1 + 2: negotiation and data integrity on qcow2.
qemu-img create -q -f qcow2 "$T/small.qcow2" $((64 * MiB))
truncate -s $((64 * MiB)) "$T/model"
serve10 small qcow2 "$T/small.qcow2"
mkdir -p "$T/mnt"
mount_nbdfs "$(unix_uri "$SOCK")" "$T/mnt" -v
F=$T/mnt/disk
check_negotiated small "$F"
random_writes "$F" "$T/model" $((64 * MiB)) 300 11
[ "$(sha "$F")" = "$(sha "$T/model")" ] || fail "integrity: the mount differs from the model after random writes"
unmount_nbdfs "$T/mnt"
stop10
qemu-img convert -f qcow2 -O raw "$T/small.qcow2" "$T/small.raw"
[ "$(sha "$T/small.raw")" = "$(sha "$T/model")" ] || fail "integrity: the qcow2 image differs from the model"
note "integrity: 300 random writes, mount and image equal to the model"

# 3 + 4: one WRITE_ZEROES for 6 GiB, one BLOCK_STATUS across the hole.
big_case() {  # NAME FORMAT
  local name=$1 fmt=$2 img=$T/$1.img
  if [ "$fmt" = raw ]; then truncate -s $((8 * GiB)) "$img"; else qemu-img create -q -f qcow2 "$img" $((8 * GiB)); fi
  serve10 "$name" "$fmt" "$img"
  mount_nbdfs "$(unix_uri "$SOCK")" "$T/mnt" -v
  check_negotiated "$name" "$F"
  # Data on both sides of the range to punch, and inside it.
  head -c $((2 * MiB)) /dev/urandom >"$T/chunk"
  for off in $((GiB - 2 * MiB)) $((3 * GiB)) $((7 * GiB)); do
    dd if="$T/chunk" of="$F" bs=1M seek=$((off / MiB)) conv=notrunc,fsync status=none
  done
  local before
  before=$(requests "$T/$name.trace" 0x6 | wc -l)
  [ "$(falloc "$F" PUNCH_HOLE\|KEEP_SIZE $GiB $((6 * GiB)))" = ok ] || fail "$name: fallocate -p of 6 GiB failed"
  local zeroes trims
  zeroes=$(requests "$T/$name.trace" 0x6 | tail -n +$((before + 1)))
  trims=$(requests "$T/$name.trace" 0x4)
  [ "$(echo "$zeroes" | grep -c .)" = 1 ] && [ -z "$trims" ] ||
    fail "$name: punching 6 GiB took $(echo "$zeroes" | grep -c .) WRITE_ZEROES and $(echo "$trims" | grep -c .) TRIM: $zeroes $trims"
  [ "$zeroes" = "$GiB $((6 * GiB))" ] || fail "$name: WRITE_ZEROES of $zeroes, expected $GiB $((6 * GiB))"
  note "$name: fallocate -p 6 GiB -> qemu trace: $(grep -m1 "len = $((6 * GiB))" "$T/$name.trace")"
  local z
  z=$(zero_sha $((2 * MiB)))
  [ "$(range_sha "$F" $GiB $((2 * MiB)))" = "$z" ] || fail "$name: punched start not zero"
  [ "$(range_sha "$F" $((3 * GiB)) $((2 * MiB)))" = "$z" ] || fail "$name: punched middle not zero"
  [ "$(range_sha "$F" $((GiB - 2 * MiB)) $((2 * MiB)))" = "$(sha "$T/chunk")" ] || fail "$name: data before the hole changed"
  [ "$(range_sha "$F" $((7 * GiB)) $((2 * MiB)))" = "$(sha "$T/chunk")" ] || fail "$name: data after the hole changed"
  # SEEK_DATA from inside the hole finds the data 6 GiB later, from one
  # request (on a fresh mount: nothing cached about the range).
  unmount_nbdfs "$T/mnt"
  mount_nbdfs "$(unix_uri "$SOCK")" "$T/mnt" -v
  before=$(requests "$T/$name.trace" 0x7 | wc -l)
  local got
  got=$(python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); print(os.lseek(fd, int(sys.argv[2]), os.SEEK_DATA))' \
    "$F" $((GiB + 4096)))
  [ "$got" = $((7 * GiB)) ] || fail "$name: SEEK_DATA($((GiB + 4096))) = $got, expected $((7 * GiB))"
  local bs
  bs=$(requests "$T/$name.trace" 0x7 | tail -n +$((before + 1)))
  # The open's lookup may also start the background count of st_blocks (one
  # BLOCK_STATUS from 0); the seek's own, if the count has not filled the
  # cache first, starts where it seeks.  None is split below 4 GiB.
  [ -n "$bs" ] && [ "$(echo "$bs" | grep -c .)" -le 2 ] &&
    [ "$(echo "$bs" | grep -vc -e "^0 " -e "^$((GiB + 4096)) ")" = 0 ] ||
    fail "$name: SEEK_DATA across 6 GiB took $(echo "$bs" | grep -c .) BLOCK_STATUS: $bs"
  echo "$bs" | while read -r _ len; do
    [ "$len" -gt $((4 * GiB)) ] || fail "$name: BLOCK_STATUS of only $len bytes: $bs"
  done
  note "$name: SEEK_DATA across 6 GiB -> BLOCK_STATUS $(echo $bs); $(grep 'nbd_co_send_extents' "$T/$name.trace" | tail -1 | sed 's/^.*nbd_co_send_extents //')"
  unmount_nbdfs "$T/mnt"
  stop10
  rm -f "$img"
}
big_case raw raw
big_case qcow2 qcow2

# 5: TLS with PSK over TCP.
mkdir -p "$T/pskdir"
tls_make_psk "$T/pskdir/keys.psk" alice
cp "$T/pskdir/keys.psk" "$T/client.psk"
qemu-img create -q -f raw "$T/tls.img" $((32 * MiB))
truncate -s $((32 * MiB)) "$T/tls.model"
PORT=$(free_port)
"$QNBD" -f raw -b 127.0.0.1 -p "$PORT" --trace 'nbd_*' \
  --object "tls-creds-psk,id=tls0,endpoint=server,dir=$T/pskdir" --tls-creds tls0 "$T/tls.img" >"$T/tls.trace" 2>&1 &
SERVER_PID=$!
track_pid "$SERVER_PID"
wait_for_port "$PORT"
mount_nbdfs "nbds://alice@127.0.0.1:$PORT/?tls-psk-file=$T/client.psk" "$T/mnt" -v
check_negotiated tls "$F"
getfattr -n user.nbd.protocol --only-values "$F" 2>/dev/null | grep -q 'tls=yes' || fail "tls: user.nbd.protocol does not say tls=yes"
random_writes "$F" "$T/tls.model" $((32 * MiB)) 100 5
[ "$(sha "$F")" = "$(sha "$T/tls.model")" ] || fail "tls: the mount differs from the model"
unmount_nbdfs "$T/mnt"
stop10
[ "$(sha "$T/tls.img")" = "$(sha "$T/tls.model")" ] || fail "tls: the image differs from the model"
note "tls: extended headers over TLS (PSK), 100 random writes intact"
echo "t-extended-headers: ok"
