#!/bin/bash
# Multi-conn over TLS (PSK), nbdkit memory on TCP 127.0.0.1 (it advertises
# multi-conn) with the log filter:
#  1. -C 4: nbdfs -v says "4 connections" and "(TLS)"; nbdkit saw exactly
#     4 connections, all with TLS (log filter "tls=1", -v "using TLS on
#     this connection") and PSK identity alice; 4 concurrent writers on
#     disjoint ranges with odd offsets and lengths all land (each range
#     checked with nbdcopy, over TLS, and through the mount), nothing
#     around them is touched, the writes are spread over more than one
#     connection; unmount closes all 4 with NBD_CMD_DISC.
#  2. -C 4 --threads 2 --direct-io (every read goes to the server): 4
#     concurrent readers check the ranges, then 4 concurrent writers
#     replace them (1M writes, so TLS records of full size), checked with
#     nbdcopy.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/tls-certs.sh"

export HOME=$T/home
mkdir -p "$HOME"
MiB=1048576
SIZE=$((112 * MiB))
CHUNK=$((24 * MiB))
tls_make_psk "$T/keys.psk" alice
serve_nbdkit_tcp mem -v -D nbdkit.tls.session=1 --tls=require --tls-psk="$T/keys.psk" \
  --filter=log memory "$SIZE" logfile="$T/requests.log"
URI="nbds://alice@127.0.0.1:$PORT/?tls-psk-file=$T/keys.psk"
REQ=$T/requests.log
LOG=$T/mem.log
mkdir "$T/mnt"
F=$T/mnt/disk
ZERO512=$(head -c 512 /dev/zero | sha256sum | cut -d' ' -f1)

# ---- 1 ----
m=$(log_mark "$LOG")
NBDFS_LOG=$T/nbdfs1.log mount_nbdfs "$URI" "$T/mnt" -v -C 4
grep -q '4 connections' "$T/nbdfs1.log" || fail "nbdfs -v does not report 4 connections: $(cat "$T/nbdfs1.log")"
grep -q '(TLS)' "$T/nbdfs1.log" || fail "nbdfs -v does not say TLS: $(cat "$T/nbdfs1.log")"
conns() { nconn=$(grep -ac ' Connect export=' "$REQ" || true); [ "$nconn" -ge 4 ]; }
wait_until 10 conns || true
[ "$nconn" = 4 ] || fail "nbdkit saw $nconn connections, expected 4: $(cat "$REQ")"
ntls=$(grep -a ' Connect export=' "$REQ" | grep -c ' tls=1 ' || true)
[ "$ntls" = 4 ] || fail "only $ntls of the 4 connections use TLS (log filter): $(grep ' Connect export=' "$REQ")"
nusing=$(log_since "$LOG" "$m" | grep -c 'using TLS on this connection' || true)
[ "$nusing" = 4 ] || fail "nbdkit -v says TLS on $nusing connections, expected 4"
nalice=$(log_since "$LOG" "$m" | grep -c 'PSK username: alice' || true)
[ "$nalice" = 4 ] || fail "nbdkit saw the PSK identity alice $nalice times, expected 4"

for i in 0 1 2 3; do
  off[$i]=$((i * 27 * MiB + i * 1000 + 512))
  len[$i]=$((CHUNK - i * 4097))
  rand_file "$T/w$i" "${len[$i]}"
done
pids=()
for i in 0 1 2 3; do
  write_at "$F" "${off[$i]}" "$T/w$i" bs=128k &
  pids+=($!)
done
for i in 0 1 2 3; do
  wait "${pids[$i]}" || fail "writer $i failed"
done
sync "$F" || fail "fsync failed"

server_copy "$URI" "$T/server.img"
for i in 0 1 2 3; do
  [ "$(range_sha "$T/server.img" "${off[$i]}" "${len[$i]}")" = "$(sha "$T/w$i")" ] ||
    fail "range $i (offset ${off[$i]}, ${len[$i]} bytes) differs on the server"
  [ "$(range_sha "$F" "${off[$i]}" "${len[$i]}")" = "$(sha "$T/w$i")" ] ||
    fail "range $i differs through the mount"
done
for i in 1 2 3; do
  [ "$(range_sha "$T/server.img" $((off[i] - 512)) 512)" = "$ZERO512" ] || fail "bytes before range $i were overwritten"
done
used=$({ grep -a ' Write id=' "$REQ" || true; } | { grep -o 'connection=[0-9]*' || true; } | sort -u | wc -l)
[ "$used" -ge 2 ] || fail "writes used $used connection(s), expected them spread over several"

disc0=$(grep -c 'client sent NBD_CMD_DISC' "$LOG" || true)   # nbdcopy's
NBDFS_LOG=$T/nbdfs1.log unmount_nbdfs "$T/mnt"
discs() { disc=$(( $(grep -c 'client sent NBD_CMD_DISC' "$LOG" || true) - disc0 )); [ "$disc" -ge 4 ]; }
wait_until 10 discs || true   # nbdkit logs asynchronously
[ "$disc" = 4 ] || fail "$disc of 4 TLS connections were closed with NBD_CMD_DISC"
if grep -Eqi 'error|fail' "$T/nbdfs1.log"; then fail "nbdfs logged trouble: $(cat "$T/nbdfs1.log")"; fi

# ---- 2 ----
rm0=$(log_mark "$REQ")
NBDFS_LOG=$T/nbdfs2.log mount_nbdfs "$URI" "$T/mnt" -v -C 4 --threads 2 --direct-io
grep -q '4 connections' "$T/nbdfs2.log" || fail "-C 4 --threads 2: $(cat "$T/nbdfs2.log")"
pids=()
for i in 0 1 2 3; do
  range_sha "$F" "${off[$i]}" "${len[$i]}" >"$T/r$i.sha" &
  pids+=($!)
done
for i in 0 1 2 3; do
  wait "${pids[$i]}" || fail "reader $i failed"
  [ "$(cat "$T/r$i.sha")" = "$(sha "$T/w$i")" ] || fail "--direct-io: concurrent reader $i read something else"
done
nread=$(log_since "$REQ" "$rm0" | { grep -a ' Read id=' || true; } | { grep -o 'connection=[0-9]*' || true; } | sort -u | wc -l)
[ "$nread" -ge 2 ] || fail "--direct-io: reads used $nread connection(s), expected several"
pids=()
for i in 0 1 2 3; do
  rand_file "$T/v$i" "${len[$i]}"
  write_at "$F" "${off[$i]}" "$T/v$i" &
  pids+=($!)
done
for i in 0 1 2 3; do
  wait "${pids[$i]}" || fail "--direct-io: writer $i failed"
done
sync "$F"
rm -f "$T/server.img"
server_copy "$URI" "$T/server.img"
for i in 0 1 2 3; do
  [ "$(range_sha "$T/server.img" "${off[$i]}" "${len[$i]}")" = "$(sha "$T/v$i")" ] ||
    fail "--direct-io: range $i differs on the server after concurrent 1M writes"
done
for i in 1 2 3; do
  [ "$(range_sha "$T/server.img" $((off[i] - 512)) 512)" = "$ZERO512" ] || fail "--direct-io: bytes before range $i were overwritten"
done
NBDFS_LOG=$T/nbdfs2.log unmount_nbdfs "$T/mnt"
if grep -Eqi 'error|fail' "$T/nbdfs2.log"; then fail "nbdfs logged trouble: $(cat "$T/nbdfs2.log")"; fi
pid_alive "$SERVER_PID" || fail "nbdkit died"
echo ok
