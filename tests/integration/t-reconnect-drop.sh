#!/bin/bash
# Lost connections are replaced and what was in flight on them is sent
# again, invisibly to the application:
#   nbdkit memory 256M behind the fault proxy, which forwards at most
#   24 MiB/s (so that fio takes seconds, with many requests in flight);
#   nbdfs -C 4 --timeout 10 through the proxy.  nbdkit runs one thread per
#   connection (-t 1): with several, nbdkit 1.32 can abort (assertion
#   `sock >= 0') when a connection is cut while it sends replies.
#   fio writes 128 MiB at random (64k, iodepth 16, O_DIRECT, libaio), then
#   reads it all back and verifies every block (crc32c, verify_fatal).
#   While it writes, the proxy drops connection 2 (FIN); while it verifies,
#   it resets connection 3.
# Asserts:
#   - fio exits 0 with no error: no request failed and every block read
#     back is the one written (writes in flight on a lost connection were
#     sent again, reads too);
#   - the server (read directly by nbdcopy, not through the proxy) holds
#     exactly what the mount reads back (first 128 MiB);
#   - nbdfs logged the loss ('lost') and the reconnection ('reconnected');
#   - the proxy sees 4 live connections again (replacements for the two
#     cut ones: at least 6 accepted in all);
#   - unmount works and nbdfs exits 0.
. "$(dirname "$0")/lib.sh"

MiB=1048576
SIZE=$((256 * MiB))
LEN=$((128 * MiB))
serve_nbdkit mem -t 1 memory "$SIZE"
DIRECT=$(unix_uri "$SOCK")
start_proxy px "$SOCK" --rate 24M
mkdir "$T/mnt"
F=$T/mnt/disk
mount_nbdfs "$(unix_uri "$PROXY_SOCK")" "$T/mnt" -v -C 4 --timeout 10

fio_drop_reset "$F" "$LEN"

# The server has what the mount shows.
mount_sum=$(sha "$F" "$LEN")
server_sum=$(server_prefix_sha "$DIRECT" "$LEN")
[ "$mount_sum" = "$server_sum" ] || fail "the server's first 128 MiB differ from what the mount reads back"
[ "$server_sum" != "$(zero_sha "$LEN")" ] || fail "the server holds only zeros: fio wrote nothing?"

check_reconnected_after_drops
case $(proxy list) in *state=stalled*) fail "a stalled connection: $(proxy list)" ;; esac
pid_alive "$SERVER_PID" || fail "nbdkit died: $(tail -n 5 "$T/mem.log")"
unmount_nbdfs "$T/mnt"
echo ok
