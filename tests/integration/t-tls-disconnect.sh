#!/bin/bash
# A clean unmount closes TLS properly.  nbdkit runs with -v and
# -D nbdkit.tls.log=5 (gnutls's record-layer log), which shows, per
# connection, "Alert[1|0] - Close notify - was received" when the client
# sent a TLS close_notify before closing the socket.  For each case, -C 4,
# some I/O, then the end of the mount:
#   1. PSK over a Unix socket, foreground, fusermount3 -u (repeated
#      $TLS_DISCONNECT_CYCLES times, default 10)
#   2. X.509 over TCP, foreground, fusermount3 -u
#   3. PSK, daemon mode, fusermount3 -u
#   4. PSK, daemon mode, SIGTERM
# each must give: nbdfs exits 0 (or is gone, for the daemon) with no error
# in its log; nbdkit sees NBD_CMD_DISC on all 4 connections and a
# close_notify on all 4, and logs no error.
# Control: nbdfs killed with SIGKILL (no chance to say goodbye) must show
# no close_notify at all - so the check can tell a clean close from a
# socket that just went away.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/tls-certs.sh"

export HOME=$T/home
mkdir -p "$HOME"
SIZE=$((16 * 1048576))
CYCLES=${TLS_DISCONNECT_CYCLES:-10}
tls_make_psk "$T/keys.psk" alice
tls_make_x509 "$T/pki"
mkdir "$T/mnt"
F=$T/mnt/disk

serve_nbdkit psk -v -D nbdkit.tls.log=5 --tls=require --tls-psk="$T/keys.psk" memory "$SIZE"
PSK_URI="nbds+unix://alice@/?socket=$SOCK&tls-psk-file=$T/keys.psk"
PSK_PID=$SERVER_PID
serve_nbdkit_tcp x509 -v -D nbdkit.tls.log=5 --tls=require --tls-certificates="$T/pki/server" \
  --tls-verify-peer memory "$SIZE"
X509_URI="nbds://localhost:$PORT/?tls-certificates=$T/pki/client"
X509_PID=$SERVER_PID

# count LOG MARK REGEX: lines matching REGEX since MARK.
count() { log_since "$1" "$2" | grep -ac -- "$3" || true; }
# closed LOG MARK N: nbdkit has closed N connections since MARK.
closed() { [ "$(count "$1" "$2" 'debug: memory: close$')" -ge "$3" ]; }

# some_io: a write and a read through the mount (small: the gnutls log
# has a few lines per record).
some_io() {
  rand_file "$T/data" 300000
  write_at "$F" 123457 "$T/data" || fail "$1: write failed"
  sync "$F" || fail "$1: fsync failed"
  [ "$(range_sha "$F" 123457 300000)" = "$(sha "$T/data")" ] || fail "$1: read back differs"
}

# check_clean LABEL LOG MARK NBDFS-LOG: the end of a mount of 4 connections
# was clean on both sides.
check_clean() {
  local label=$1 log=$2 mark=$3 nlog=$4
  wait_until 20 closed "$log" "$mark" 4 ||
    fail "$label: nbdkit closed only $(count "$log" "$mark" 'debug: memory: close$') of 4 connections"
  local disc notify errs
  disc=$(count "$log" "$mark" 'client sent NBD_CMD_DISC')
  notify=$(count "$log" "$mark" 'Close notify - was received')
  errs=$(log_since "$log" "$mark" | grep -a 'error' | grep -av 'debug:' || true)
  note "$label: NBD_CMD_DISC $disc, close_notify received $notify"
  [ "$disc" = 4 ] || soft_fail "$label: $disc of 4 connections sent NBD_CMD_DISC"
  [ "$notify" = 4 ] || soft_fail "$label: nbdkit received a TLS close_notify on $notify of 4 connections"
  [ -z "$errs" ] || soft_fail "$label: nbdkit logged errors: $errs"
  if grep -Eqi 'error|fail|TLS receive' "$nlog"; then soft_fail "$label: nbdfs logged trouble: $(cat "$nlog")"; fi
}

# ---- 1. PSK, Unix socket, foreground; repeated (the close races with the
# server's answer to NBD_CMD_DISC, so one round may not show a problem) ----
for ((round = 1; round <= CYCLES; round++)); do
  m=$(log_mark "$T/psk.log")
  : >"$T/n1.log"
  NBDFS_LOG=$T/n1.log mount_nbdfs "$PSK_URI" "$T/mnt" -C 4 -v
  grep -q '4 connections' "$T/n1.log" || fail "PSK: not 4 connections: $(cat "$T/n1.log")"
  some_io "PSK unmount $round"
  NBDFS_LOG=$T/n1.log unmount_nbdfs "$T/mnt"
  check_clean "PSK unmount $round/$CYCLES" "$T/psk.log" "$m" "$T/n1.log"
done

# ---- 2. X.509, TCP, foreground ----
m=$(log_mark "$T/x509.log")
NBDFS_LOG=$T/n2.log mount_nbdfs "$X509_URI" "$T/mnt" -C 4 -v
grep -q '4 connections' "$T/n2.log" || fail "X.509: not 4 connections: $(cat "$T/n2.log")"
some_io "X.509 unmount"
NBDFS_LOG=$T/n2.log unmount_nbdfs "$T/mnt"
check_clean "X.509 unmount" "$T/x509.log" "$m" "$T/n2.log"

# ---- 3. PSK, daemon, fusermount3 -u ----
m=$(log_mark "$T/psk.log")
NBDFS_LOG=$T/n3.log mount_nbdfs_daemon "$PSK_URI" "$T/mnt" -C 4
some_io "PSK daemon unmount"
unmount_nbdfs_daemon "$T/mnt"
check_clean "PSK daemon unmount" "$T/psk.log" "$m" "$T/n3.log"

# ---- 4. PSK, daemon, SIGTERM ----
m=$(log_mark "$T/psk.log")
NBDFS_LOG=$T/n4.log mount_nbdfs_daemon "$PSK_URI" "$T/mnt" -C 4
some_io "PSK SIGTERM"
kill -TERM "$NBDFS_PID"
wait_until 30 eval '! pid_alive "$NBDFS_PID"' || fail "nbdfs did not exit after SIGTERM"
wait_until 10 eval '! is_mounted "$T/mnt"' || fail "still mounted after SIGTERM"
check_clean "PSK SIGTERM" "$T/psk.log" "$m" "$T/n4.log"

# ---- control: SIGKILL ----
m=$(log_mark "$T/psk.log")
NBDFS_LOG=$T/n5.log mount_nbdfs "$PSK_URI" "$T/mnt" -C 4
some_io "SIGKILL control"
kill -KILL "$NBDFS_PID"
wait "$NBDFS_PID" 2>/dev/null || true
fusermount3 -u "$T/mnt" 2>/dev/null || fusermount3 -uz "$T/mnt" 2>/dev/null || true
wait_until 20 closed "$T/psk.log" "$m" 4 || fail "control: nbdkit did not close the 4 connections of a killed nbdfs"
n=$(count "$T/psk.log" "$m" 'Close notify - was received')
[ "$n" = 0 ] ||
  fail "control: nbdkit logged $n close_notify for a killed client: the check cannot tell a clean close"

for v in PSK_PID X509_PID; do pid_alive "${!v}" || soft_fail "${v%_PID} server died"; done
finish_test
