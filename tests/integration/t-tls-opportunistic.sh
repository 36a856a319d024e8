#!/bin/bash
# --tls=on (opportunistic TLS), checked against what nbdkit -v says about
# each connection ("using TLS on this connection", "tls=1"/"tls=0" on
# open, the STARTTLS reply):
#   1. nbdkit --tls=on with PSK: nbd:// + --tls=on uses TLS on every
#      connection (the full tls_roundtrip data check)
#   2. nbdkit --tls=require with X.509 and client certificates: nbd:// +
#      --tls=on is accepted, over TLS
#   3. a plaintext nbdkit (no TLS at all): --tls=on still mounts, in
#      plaintext (the server refused STARTTLS), data round trip
#   4. an oldstyle server: --tls=on mounts in plaintext
#   5. without --tls, nbd:// to the TLS-capable server does not even try
#      STARTTLS (tls=0)
#   6. no downgrade: --tls=on against a TLS server whose certificate fails
#      verification is refused, not continued in plaintext
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/tls-certs.sh"

export HOME=$T/home
mkdir -p "$HOME"
SIZE=$((16 * 1048576))
tls_make_psk "$T/keys.psk" alice
tls_make_psk "$T/wrong.psk" alice
tls_make_x509 "$T/pki"
tls_make_ca "$T/pki/ca2" "another CA"
tls_make_client "$T/pki/ca2" "$T/pki/wrong-ca"

# conn_stats LOG MARK: sets NTLS (connections nbdkit used TLS on), NPLAIN
# (connections opened without TLS) and NREFUSED (STARTTLS refused) since
# MARK.
conn_stats() {
  NTLS=$(log_since "$1" "$2" | grep -c 'using TLS on this connection' || true)
  NPLAIN=$(log_since "$1" "$2" | grep -c 'open readonly=[01] .*tls=0' || true)
  NREFUSED=$(log_since "$1" "$2" | grep -c 'replying to NBD_OPT_STARTTLS with NBD_REP_ERR' || true)
}

# 1. TLS-capable server, PSK.
serve_nbdkit_tcp on -v --tls=on --tls-psk="$T/keys.psk" memory "$SIZE"
ON=$PORT
C="nbds://alice@127.0.0.1:$ON/?tls-psk-file=$T/keys.psk"
m=$(log_mark "$T/on.log")
tls_roundtrip "--tls=on, TLS-capable server (PSK)" "nbd://alice@127.0.0.1:$ON/?tls-psk-file=$T/keys.psk" \
  "$C" "$SIZE" --tls=on -C 2 -v
conn_stats "$T/on.log" "$m"
# nbdfs's 2 connections and nbdcopy's (over TLS too): all TLS.
[ "$NTLS" -ge 3 ] || fail "--tls=on: nbdkit used TLS on $NTLS connections, expected nbdfs's 2 and nbdcopy's"
[ "$NPLAIN" = 0 ] || fail "--tls=on: nbdkit opened $NPLAIN connection(s) without TLS: $(log_since "$T/on.log" "$m" | grep 'tls=0')"
grep -q '2 connections' "$T/rt-$_tls_rt.log" || fail "--tls=on: nbdfs did not open 2 connections: $(cat "$T/rt-$_tls_rt.log")"

# 5. The default (no --tls) does not try TLS on this server.
m=$(log_mark "$T/on.log")
mkdir -p "$T/mnt"
NBDFS_LOG=$T/default.log mount_nbdfs "nbd://127.0.0.1:$ON/" "$T/mnt" -C 1
head -c 65536 "$T/mnt/disk" >/dev/null
NBDFS_LOG=$T/default.log unmount_nbdfs "$T/mnt"
conn_stats "$T/on.log" "$m"
[ "$NTLS" = 0 ] && [ "$NPLAIN" = 1 ] ||
  fail "without --tls: nbdkit saw $NTLS TLS and $NPLAIN plaintext connections, expected 0 and 1"
if log_since "$T/on.log" "$m" | grep -q STARTTLS; then fail "without --tls, nbdfs still asked for STARTTLS"; fi

# 2. TLS-only server, X.509 with client certificates.
serve_nbdkit_tcp req -v --tls=require --tls-certificates="$T/pki/server" --tls-verify-peer memory "$SIZE"
m=$(log_mark "$T/req.log")
tls_roundtrip "--tls=on, TLS-only server (X.509)" "nbd://localhost:$PORT/" \
  "nbds://localhost:$PORT/?tls-certificates=$T/pki/client" "$SIZE" --tls=on --tls-certificates "$T/pki/client"
conn_stats "$T/req.log" "$m"
[ "$NTLS" -ge 2 ] && [ "$NPLAIN" = 0 ] ||
  fail "--tls=on vs --tls=require server: $NTLS TLS, $NPLAIN plaintext connection(s)"

# 6. No downgrade when verification fails.
tls_expect_refusal "--tls=on, server certificate from an unknown CA" 'certificate' \
  --tls=on --tls-certificates "$T/pki/wrong-ca" "nbd://localhost:$PORT/"
m=$(log_mark "$T/on.log")
tls_expect_refusal "--tls=on, TLS-capable server, wrong PSK key" 'PSK' \
  --tls=on "nbd://alice@127.0.0.1:$ON/?tls-psk-file=$T/wrong.psk"
conn_stats "$T/on.log" "$m"
[ "$NPLAIN" = 0 ] || fail "--tls=on fell back to plaintext after a TLS failure"

# 3. Plaintext server: --tls=on still mounts.
serve_nbdkit_tcp plain -v memory "$SIZE"
m=$(log_mark "$T/plain.log")
tls_roundtrip "--tls=on, plaintext server" "nbd://alice@127.0.0.1:$PORT/?tls-psk-file=$T/keys.psk" \
  "nbd://127.0.0.1:$PORT/" "$SIZE" --tls=on -C 2
conn_stats "$T/plain.log" "$m"
[ "$NTLS" = 0 ] || fail "--tls=on vs plaintext server: nbdkit says $NTLS connection(s) used TLS"
[ "$NREFUSED" -ge 2 ] || fail "--tls=on vs plaintext server: nbdkit refused STARTTLS $NREFUSED times, expected once per nbdfs connection"
[ "$NPLAIN" -ge 3 ] || fail "--tls=on vs plaintext server: only $NPLAIN plaintext connections"

# 4. Oldstyle server: --tls=on mounts in plaintext and reads what nbdcopy
# wrote (reads only: nbdkit 1.32 refuses FLUSH in oldstyle, see
# t-oldstyle.sh).
serve_nbdkit old --oldstyle memory "$SIZE"
rand_file "$T/old.img" "$SIZE"
nbdcopy -- "$T/old.img" "nbd+unix:///?socket=$SOCK" || fail "nbdcopy to the oldstyle server failed"
mkdir -p "$T/mnt"
NBDFS_LOG=$T/old.log mount_nbdfs "nbd+unix:///?socket=$SOCK" "$T/mnt" --tls=on --tls-psk-file "$T/keys.psk" \
  --tls-username alice
[ "$(sha "$T/mnt/disk")" = "$(sha "$T/old.img")" ] || fail "--tls=on vs oldstyle: the mount reads something else"
NBDFS_LOG=$T/old.log unmount_nbdfs "$T/mnt"
finish_test
