#!/bin/bash
# t-reconnect-drop.sh over TLS (PSK): lost connections are replaced by new
# TLS sessions and what was in flight is sent again.
#   nbdkit -t 1 --tls=require --tls-psk memory 64M behind the fault proxy,
#   which forwards the TLS bytes untouched, at most 12 MiB/s; nbdfs -C 4
#   --timeout 10 through it as PSK user alice.  (-t 1: see
#   t-reconnect-drop.sh.)
#   fio writes all 64 MiB at random (64k, iodepth 16, O_DIRECT) and then
#   verifies them; the proxy drops connection 2 while it writes and resets
#   connection 3 while it verifies.
# Asserts:
#   - fio exits 0 with no error;
#   - the server (nbdcopy, directly and over TLS as PSK user copier) holds
#     exactly what the mount reads back;
#   - nbdfs logged 'lost' and 'reconnected', and no TLS trouble other than
#     on the two cut connections;
#   - the proxy sees 4 live connections again (at least 6 accepted);
#   - every connection nbdkit served used TLS, and the only PSK identities
#     it saw were alice (nbdfs, also after reconnecting) and copier;
#   - unmount works and nbdfs exits 0.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/tls-certs.sh"

export HOME=$T/home
mkdir -p "$HOME"
MiB=1048576
SIZE=$((64 * MiB))
tls_make_psk "$T/keys.psk" alice copier
serve_nbdkit tls -t 1 -v -D nbdkit.tls.session=1 --tls=require --tls-psk="$T/keys.psk" memory "$SIZE"
DIRECT="nbds+unix://copier@/?socket=$SOCK&tls-psk-file=$T/keys.psk"
start_proxy px "$SOCK" --rate 12M
mkdir "$T/mnt"
F=$T/mnt/disk
mount_nbdfs "nbds+unix://alice@/?socket=$PROXY_SOCK&tls-psk-file=$T/keys.psk" "$T/mnt" -v -C 4 --timeout 10

fio_drop_reset "$F" "$SIZE"

mount_sum=$(sha "$F")
server_sum=$(server_prefix_sha "$DIRECT" "$SIZE")
[ "$mount_sum" = "$server_sum" ] || fail "the server's contents differ from what the mount reads back"
[ "$server_sum" != "$(zero_sha "$SIZE")" ] || fail "the server holds only zeros: fio wrote nothing?"

check_reconnected_after_drops

ids=$(sed -n 's/.*PSK username: //p' "$T/tls.log" | sort -u | tr '\n' ' ')
[ "$ids" = "alice copier " ] || fail "nbdkit saw the PSK identities '$ids', expected alice and copier"
[ "$(grep -c 'PSK username: alice' "$T/tls.log")" -ge 6 ] ||
  fail "nbdkit saw $(grep -c 'PSK username: alice' "$T/tls.log") TLS sessions of alice, expected at least 6"
if grep -q 'tls=0' "$T/tls.log"; then fail "nbdkit served a connection without TLS"; fi
pid_alive "$SERVER_PID" || fail "nbdkit died: $(tail -n 5 "$T/tls.log")"
unmount_nbdfs "$T/mnt"
echo ok
