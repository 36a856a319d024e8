#!/bin/bash
# TLS against qemu-nbd (a second, independent TLS server implementation),
# on a raw image file, over TCP on 127.0.0.1:
#   1. tls-creds-x509 endpoint=server verify-peer=off: nbds://localhost
#      with tls-certificates; the mount reads the image's random content;
#      writes at aligned and odd offsets read back through the mount; after
#      unmount (nbdfs exits 0) nbdcopy over TLS reads the export and, once
#      qemu-nbd has exited, the backing file equals the expected image.
#   2. --shared=4 and verify-peer=on (qemu insists on a client
#      certificate): nbdfs uses 4 TLS connections, same checks; a client
#      directory with only the CA is refused.
#   3. tls-creds-psk: nbds://alice@127.0.0.1 with tls-psk-file, same checks.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/tls-certs.sh"

export HOME=$T/home
mkdir -p "$HOME"
MiB=1048576
SIZE=$((32 * MiB))
IMG=$T/disk.img
EXP=$T/expected.img
tls_make_x509 "$T/pki"
mkdir -p "$T/pskdir"
tls_make_psk "$T/pskdir/keys.psk" alice
cp "$T/pskdir/keys.psk" "$T/client.psk"

# serve_qemu NAME ARGS...: qemu-nbd ARGS for $IMG on 127.0.0.1 and a free
# port; sets PORT and SERVER_PID once it accepts connections.
serve_qemu() {
  local name=$1; shift
  local try pidf=$T/$name.pid
  for try in 1 2 3 4 5; do
    PORT=$(free_port)
    rm -f "$pidf"
    if qemu-nbd -f raw -b 127.0.0.1 -p "$PORT" --persistent --pid-file="$pidf" --fork "$@" "$IMG" \
      >"$T/qemu-$name.log" 2>&1; then
      wait_for_file "$pidf"
      wait_until 10 test -s "$pidf" || fail "empty pid file $pidf"
      SERVER_PID=$(cat "$pidf")
      track_pid "$SERVER_PID"
      return 0
    fi
    grep -qi 'in use' "$T/qemu-$name.log" || break
  done
  fail "qemu-nbd $* did not start: $(cat "$T/qemu-$name.log")"
}

stop_server() {
  kill "$SERVER_PID"
  wait_until 30 eval '! pid_alive "$SERVER_PID"' || fail "qemu-nbd did not exit"
}

# check_case LABEL URI COPY-URI [NBDFS-OPTIONS...]: with qemu-nbd serving
# $IMG (a fresh random image, copied to $EXP), mount, check, unmount.
check_case() {
  local label=$1 uri=$2 curi=$3; shift 3
  local mp=$T/mnt f=$T/mnt/disk log=$T/nbdfs-$RANDOM.log
  mkdir -p "$mp"
  NBDFS_LOG=$log mount_nbdfs "$uri" "$mp" -v "$@"
  [ "$(stat -c %s "$f")" = "$SIZE" ] || fail "$label: size $(stat -c %s "$f"), expected $SIZE"
  [ "$(sha "$f")" = "$(sha "$EXP")" ] || fail "$label: the mount does not read the image's content"
  local off
  for off in 0 $((4 * MiB)) $((7 * MiB + 12345)) $((SIZE - 100000))
  do
    rand_file "$T/chunk" 100000
    write_at "$f" "$off" "$T/chunk" || fail "$label: write at $off through the mount failed"
    write_at "$EXP" "$off" "$T/chunk"
    [ "$(range_sha "$f" "$off" 100000)" = "$(sha "$T/chunk")" ] || fail "$label: write at $off reads back differently"
  done
  # A big one, across many requests.
  rand_file "$T/big" $((9 * MiB + 3))
  write_at "$f" $((11 * MiB + 1)) "$T/big" || fail "$label: the 9 MiB write failed"
  write_at "$EXP" $((11 * MiB + 1)) "$T/big"
  sync "$f" || fail "$label: fsync failed"
  NBDFS_LOG=$log unmount_nbdfs "$mp"
  if grep -Eqi 'error|fail' "$log"; then fail "$label: nbdfs logged trouble: $(cat "$log")"; fi
  rm -f "$T/server.img"
  server_copy "$curi" "$T/server.img"
  [ "$(sha "$T/server.img")" = "$(sha "$EXP")" ] || fail "$label: nbdcopy reads something else than was written"
  stop_server
  cmp -s "$IMG" "$EXP" || fail "$label: the backing file differs from the expected image: $(cmp "$IMG" "$EXP" 2>&1 | head -1)"
  NBDFS_CASE_LOG=$log
  note "$label: ok"
}

new_image() { rand_file "$IMG" "$SIZE"; cp "$IMG" "$EXP"; }

# 1. X.509, no client certificate asked for.
new_image
serve_qemu x509 --object "tls-creds-x509,id=tls0,endpoint=server,dir=$T/pki/server,verify-peer=off" \
  --tls-creds tls0
U="nbds://localhost:$PORT/?tls-certificates=$T/pki/client"
check_case "qemu-nbd x509" "$U" "$U"

# 2. X.509 with client certificates, multi-conn.
new_image
serve_qemu x509mc --shared=4 \
  --object "tls-creds-x509,id=tls0,endpoint=server,dir=$T/pki/server,verify-peer=on" --tls-creds tls0
U="nbds://localhost:$PORT/?tls-certificates=$T/pki/client"
mkdir -p "$T/pki/ca-only"
cp "$T/pki/client/ca-cert.pem" "$T/pki/ca-only/"
tls_expect_refusal "qemu-nbd verify-peer=on, no client certificate" '^nbdfs: ' \
  "nbds://localhost:$PORT/?tls-certificates=$T/pki/ca-only"
check_case "qemu-nbd x509 verify-peer=on --shared=4" "$U" "$U" -C 4
grep -q '4 connections' "$NBDFS_CASE_LOG" ||
  fail "qemu-nbd --shared=4: nbdfs did not use 4 connections: $(cat "$NBDFS_CASE_LOG")"

# 3. PSK.
new_image
serve_qemu psk --object "tls-creds-psk,id=tls0,endpoint=server,dir=$T/pskdir" --tls-creds tls0
U="nbds://alice@127.0.0.1:$PORT/?tls-psk-file=$T/client.psk"
check_case "qemu-nbd psk" "$U" "$U"

finish_test
