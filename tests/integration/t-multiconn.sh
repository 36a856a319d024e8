#!/bin/bash
# Multi-conn: with nbdkit memory (which advertises multi-conn) and -C 4,
# nbdfs opens exactly 4 connections (nbdfs -v log and nbdkit's log filter
# agree); 4 concurrent writers on disjoint ranges all land (checked with
# nbdcopy); the writes are spread over more than one connection; each
# connection is closed with NBD_CMD_DISC on unmount.  -C 2 opens 2; a
# server without multi-conn gets a single connection whatever -C says.
. "$(dirname "$0")/lib.sh"

MiB=1048576
SIZE=$((96 * MiB))
CHUNK=$((20 * MiB))
serve_nbdkit mem -v --filter=log memory "$SIZE" logfile="$T/nbdkit-requests.log"
URI=$(unix_uri "$SOCK")
mkdir "$T/mnt"
F=$T/mnt/disk
NBDFS_LOG=$T/nbdfs1.log mount_nbdfs "$URI" "$T/mnt" -v -C 4
grep -q '4 connections' "$T/nbdfs1.log" || fail "nbdfs -v does not report 4 connections: $(cat "$T/nbdfs1.log")"
conns() { nconn=$(grep -c ' Connect export=' "$T/nbdkit-requests.log" || true); [ "$nconn" -ge 4 ]; }
wait_until 10 conns || true
[ "$nconn" = 4 ] || fail "nbdkit saw $nconn connections, expected 4: $(cat "$T/nbdkit-requests.log")"

# Four writers at once, on disjoint ranges with odd starts and lengths.
pids=()
for i in 0 1 2 3; do
  off[$i]=$((i * 24 * MiB + i * 1000 + 512))
  len[$i]=$((CHUNK - i * 4097))
  rand_file "$T/w$i" "${len[$i]}"
done
for i in 0 1 2 3; do
  write_at "$F" "${off[$i]}" "$T/w$i" bs=128k &
  pids+=($!)
done
for i in 0 1 2 3; do
  wait "${pids[$i]}" || fail "writer $i failed"
done

server_copy "$URI" "$T/server.img"
for i in 0 1 2 3; do
  [ "$(range_sha "$T/server.img" "${off[$i]}" "${len[$i]}")" = "$(sha "$T/w$i")" ] ||
    fail "range $i (offset ${off[$i]}, ${len[$i]} bytes) differs on the server"
  [ "$(range_sha "$F" "${off[$i]}" "${len[$i]}")" = "$(sha "$T/w$i")" ] ||
    fail "range $i differs through the mount"
done
# Bytes just before each range are untouched (zero).
for i in 1 2 3; do
  [ "$(range_sha "$T/server.img" $((off[i] - 512)) 512)" = "$(head -c 512 /dev/zero | sha256sum | cut -d' ' -f1)" ] ||
    fail "bytes before range $i were overwritten"
done

used=$(grep ' Write id=' "$T/nbdkit-requests.log" | grep -o 'connection=[0-9]*' | sort -u | wc -l)
[ "$used" -ge 2 ] || fail "writes used $used connection(s), expected them spread over several"

disc0=$(grep -c 'client sent NBD_CMD_DISC' "$T/mem.log" || true)   # nbdcopy's
unmount_nbdfs "$T/mnt"
discs() { disc=$(( $(grep -c 'client sent NBD_CMD_DISC' "$T/mem.log" || true) - disc0 )); [ "$disc" -ge 4 ]; }
wait_until 10 discs || true   # nbdkit logs asynchronously
[ "$disc" = 4 ] || fail "$disc of 4 connections were closed with NBD_CMD_DISC"

# Reading back with a fresh cache on a 2-connection mount.
: >"$T/nbdkit-requests.log"
NBDFS_LOG=$T/nbdfs2.log mount_nbdfs "$URI" "$T/mnt" -v -C 2
grep -q '2 connections' "$T/nbdfs2.log" || fail "-C 2: $(cat "$T/nbdfs2.log")"
for i in 0 1 2 3; do
  [ "$(range_sha "$F" "${off[$i]}" "${len[$i]}")" = "$(sha "$T/w$i")" ] || fail "range $i differs after remount"
done
unmount_nbdfs "$T/mnt"

# A server that does not advertise multi-conn: one connection only.
serve_nbdkit nomc --filter=multi-conn memory $((8 * MiB)) multi-conn-mode=disable
NBDFS_LOG=$T/nbdfs3.log mount_nbdfs "$(unix_uri "$SOCK")" "$T/mnt" -v -C 4
grep -q '1 connection,' "$T/nbdfs3.log" || fail "without multi-conn: $(cat "$T/nbdfs3.log")"
rand_file "$T/small" 65536
write_at "$F" 4096 "$T/small"
[ "$(range_sha "$F" 4096 65536)" = "$(sha "$T/small")" ] || fail "without multi-conn: round trip differs"
unmount_nbdfs "$T/mnt"
echo ok
