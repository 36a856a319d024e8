#!/bin/bash
# Directory mode: an open that arrives while the export's idle pool is being
# closed does not wait for that close.  The server delays its close callback
# (delay-close), so closing the idle pool takes seconds (DISC, then waiting
# for the server to hang up); an open during it starts a fresh pool at once.
# Also: the data written before the idle close is there after the reopen.
. "$(dirname "$0")/lib.sh"

MiB=1048576
serve_nbdkit srv -t 1 --filter=delay --filter=exportname memory $((16 * MiB)) \
  exportname=one exportname-list=explicit delay-close=6
mkdir "$T/mnt"
mount_nbdfs "$(unix_uri "$SOCK")" "$T/mnt" --exports -v
F=$T/mnt/one
[ -f "$F" ] || fail "no file for export 'one': $(ls "$T/mnt")"
rand_file "$T/a" $((1 * MiB))
dd if="$T/a" of="$F" bs=1M conv=notrunc,fsync status=none || fail "first write failed"

# The pool closes about 10 s after its last user; the close then takes
# about as long as the server delays it.
wait_until 40 grep -q 'idle, disconnecting' "$T/nbdfs.log" || fail "the idle pool was never closed: $(cat "$T/nbdfs.log")"
t0=$(date +%s%N)
timeout 30 dd if="$F" of="$T/back" bs=1M count=1 iflag=direct status=none || fail "reopening during the idle close failed"
ms=$((($(date +%s%N) - t0) / 1000000))
note "open and read during the idle close took $ms ms"
# The close itself takes at least 2 s here (the server holds its side for
# 6 s): an open that waited for it would take that long too.
[ "$ms" -lt 1500 ] || fail "the open waited for the idle close ($ms ms)"
cmp -s "$T/a" "$T/back" || fail "the data written before the idle close does not read back"
unmount_nbdfs "$T/mnt"
echo ok
