#!/bin/bash
# The mount does not wait for the extra connections.  nbdkit memory (multi-
# conn) behind tests/nbd-fault-proxy.py; new proxy connections start
# stalled, and only the first one is let through, so connections 2..4 of
# nbdfs -C 4 --connect-timeout 20 hang in their handshakes:
#  - the mount appears within 10 s, and reads and writes through it work
#    within 10 s (the data checked through the mount and by nbdcopy on the
#    server's own socket);
#  - once the stalled connections are let through, the proxy shows 4 live
#    connections: the daemon opened the extras in the background.
. "$(dirname "$0")/lib.sh"

MiB=1048576
serve_nbdkit mem memory $((64 * MiB))
SERVER_SOCK=$SOCK
start_proxy px "$SERVER_SOCK"
[ "$(proxy stall-new on)" = ok ] || fail "proxy stall-new on failed"

# Let the first connection through as soon as it is accepted (it starts
# stalled, like every other).
(
  for ((i = 0; i < 400; i++)); do
    if proxy list | grep -q '^1 .*state=stalled'; then
      proxy resume 1 >/dev/null
      exit 0
    fi
    sleep 0.05
  done
  exit 1
) &
watcher=$!
track_pid "$watcher"

# stuck WHY: fail, killing nbdfs first, so that the cleanup's look at the
# mount point does not hang on the stuck daemon.
stuck() { kill -9 "$NBDFS_PID" 2>/dev/null || true; fail "$@"; }

mkdir "$T/mnt"
F=$T/mnt/disk
start=$SECONDS
mount_nbdfs "$(unix_uri "$PROXY_SOCK")" "$T/mnt" -C 4 --connect-timeout 20 -v   # fails after 10 s
note "mounted after $((SECONDS - start)) s; proxy: $(proxy count)"
wait "$watcher" || fail "the first connection never reached the proxy"

rand_file "$T/data" $((MiB + 777))
timeout 10 dd if="$T/data" of="$F" bs=1M seek=$((3 * MiB + 5)) oflag=seek_bytes,direct conv=notrunc \
  status=none 2>"$T/dd.err" || stuck "write with the extra connections stalled failed or hung: $(cat "$T/dd.err")"
got=$(timeout 10 dd if="$F" bs=1M skip=$((3 * MiB + 5)) count=$((MiB + 777)) iflag=skip_bytes,count_bytes,direct \
        status=none | sha256sum | cut -d' ' -f1) || stuck "read with the extra connections stalled failed or hung"
[ "$got" = "$(sha "$T/data")" ] || fail "read back through the mount differs"
[ "$(server_prefix_sha "$(unix_uri "$SERVER_SOCK")" $((4 * MiB + 782)) )" = \
  "$( (head -c $((3 * MiB + 5)) /dev/zero; cat "$T/data") | sha256sum | cut -d' ' -f1)" ] ||
  fail "the server's copy differs"
stalled=$(proxy list | awk '/state=stalled/ {print $1}' | tr '\n' ' ')
note "stalled now: ${stalled:-none}"

# Let everything through: the daemon ends up with 4 connections.
[ "$(proxy stall-new off)" = ok ] || fail "proxy stall-new off failed"
for id in $(proxy list | awk '/state=stalled/ {print $1}'); do proxy resume "$id" >/dev/null || true; done
wait_until 60 eval '[ "$(proxy_live)" = 4 ]' ||
  fail "expected 4 live connections once the stalled ones were let through: $(proxy count); $(proxy list)"
note "proxy: $(proxy count)"
# ... and they work.
rand_file "$T/data2" $((8 * MiB))
write_at "$F" $((16 * MiB)) "$T/data2" oflag=direct || fail "write over 4 connections failed"
[ "$(range_sha "$F" $((16 * MiB)) $((8 * MiB)))" = "$(sha "$T/data2")" ] || fail "read back over 4 connections differs"
unmount_nbdfs "$T/mnt"
echo ok
