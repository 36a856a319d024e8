#!/bin/bash
# TLS with pre-shared keys against nbdkit --tls=require --tls-psk=FILE
# (keys made with psktool).  Each way of giving the identity and key gets
# the full data round trip of tls_roundtrip (nbdcopy writes, nbdfs reads it
# back, nbdfs writes, nbdcopy checks, clean unmount):
#   1. nbds://alice@127.0.0.1:PORT/?tls-psk-file=FILE
#   2. nbds://127.0.0.1:PORT/ with --tls-psk-file FILE --tls-username alice
#   3. --tls-username wins over the URI's user (bob@, whom nobody knows)
#   4. no user at all: the PSK identity is the local user name
#   5. nbds+unix://alice@/?socket=SOCK&tls-psk-file=FILE
#   6. tls-type=psk with both a certificate directory and a PSK file
#   7. directory mode (--exports) over TLS: the export list (NBD_OPT_LIST
#      after STARTTLS) has both exports; a write to one through its file
#      is read back by nbdcopy from that export; without TLS the same
#      server refuses ("requires TLS")
# The identity nbdfs uses is checked in nbdkit's log (-D
# nbdkit.tls.session=1 logs "PSK username: NAME"; nbdcopy uses a third
# identity, "copier"), and the server has a different key for each, so
# only the right identity can work (t-tls-refusals.sh checks the wrong
# ones are refused).  No connection is served without TLS.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/tls-certs.sh"

export HOME=$T/home
mkdir -p "$HOME"
SIZE=$((16 * 1048576))
ME=$(id -un)
[ "$ME" != alice ] || fail "cannot run as a user called alice"
[ "$ME" != copier ] || fail "cannot run as a user called copier"
tls_make_psk "$T/keys.psk" alice "$ME" copier
[ "$(cut -d: -f1 "$T/keys.psk" | sort | tr '\n' ' ')" = "$(printf '%s\n' alice "$ME" copier | sort | tr '\n' ' ')" ] ||
  fail "psktool made an unexpected key file: $(cut -d: -f1 "$T/keys.psk")"
# The client's file: the same keys in another order.
tac "$T/keys.psk" >"$T/client.psk"

serve_nbdkit_tcp psk -v -D nbdkit.tls.session=1 --tls=require --tls-psk="$T/keys.psk" memory "$SIZE"
P=$PORT
LOG=$T/psk.log
C="nbds://copier@127.0.0.1:$P/?tls-psk-file=$T/client.psk"   # for nbdcopy

# check_identity LABEL MARK NAME: since MARK, nbdkit saw NAME's key used
# for nbdfs's connections (and only TLS connections, and only the
# identities NAME and copier).
check_identity() {
  local ids
  ids=$(log_since "$LOG" "$2" | sed -n 's/.*PSK username: //p' | sort -u | tr '\n' ' ')
  [ "$ids" = "$(printf '%s\n' "$3" copier | sort -u | tr '\n' ' ')" ] ||
    soft_fail "$1: nbdkit saw the PSK identities '$ids', expected $3 (and copier for nbdcopy)"
  if log_since "$LOG" "$2" | grep -q 'tls=0'; then soft_fail "$1: nbdkit served a connection without TLS"; fi
}

# 1. URI user and URI parameter.
m=$(log_mark "$LOG")
tls_roundtrip "nbds://alice@ with tls-psk-file" "nbds://alice@127.0.0.1:$P/?tls-psk-file=$T/client.psk" \
  "$C" "$SIZE"
check_identity "nbds://alice@ with tls-psk-file" "$m" alice

# 2. Options only.
m=$(log_mark "$LOG")
tls_roundtrip "--tls-psk-file --tls-username alice" "nbds://127.0.0.1:$P/" "$C" "$SIZE" \
  --tls-psk-file "$T/client.psk" --tls-username alice
check_identity "--tls-psk-file --tls-username alice" "$m" alice

# 3. The option wins over the URI's user.
m=$(log_mark "$LOG")
tls_roundtrip "--tls-username over user@" "nbds://bob@127.0.0.1:$P/?tls-psk-file=$T/client.psk" \
  "$C" "$SIZE" --tls-username alice
check_identity "--tls-username over user@" "$m" alice

# 4. Default identity: the local user name.
m=$(log_mark "$LOG")
tls_roundtrip "default identity ($ME)" "nbds://127.0.0.1:$P/?tls-psk-file=$T/client.psk" "$C" "$SIZE"
check_identity "default identity ($ME)" "$m" "$ME"

# 6. tls-type=psk picks PSK although certificates are given too (a
# certificate directory whose CA this server does not use).
tls_make_x509 "$T/pki"
m=$(log_mark "$LOG")
tls_roundtrip "tls-type=psk" \
  "nbds://alice@127.0.0.1:$P/?tls-psk-file=$T/client.psk&tls-certificates=$T/pki/client&tls-type=psk" \
  "$C" "$SIZE"
check_identity "tls-type=psk" "$m" alice
pid_alive "$SERVER_PID" || fail "nbdkit died"

# 5. Over a Unix socket.
serve_nbdkit pskunix -v -D nbdkit.tls.session=1 --tls=require --tls-psk="$T/keys.psk" memory "$SIZE"
LOG=$T/pskunix.log
m=$(log_mark "$LOG")
tls_roundtrip "nbds+unix://alice@" "nbds+unix://alice@/?socket=$SOCK&tls-psk-file=$T/client.psk" \
  "nbds+unix://copier@/?socket=$SOCK&tls-psk-file=$T/client.psk" "$SIZE"
check_identity "nbds+unix://alice@" "$m" alice
pid_alive "$SERVER_PID" || fail "nbdkit (unix) died"

# 7. Directory mode.
serve_nbdkit exports --tls=require --tls-psk="$T/keys.psk" --filter=exportname memory "$SIZE" \
  exportname=one exportname=two exportname-list=explicit
mkdir -p "$T/dir"
NBDFS_LOG=$T/exports.log mount_nbdfs "nbds+unix://alice@/?socket=$SOCK&tls-psk-file=$T/client.psk" "$T/dir" \
  --exports
[ "$(ls "$T/dir" | tr '\n' ' ')" = "one two " ] || fail "--exports over TLS lists '$(ls "$T/dir" | tr '\n' ' ')'"
rand_file "$T/exp.data" 300000
write_at "$T/dir/one" 4097 "$T/exp.data" || fail "--exports: write to 'one' failed"
sync "$T/dir/one"
[ "$(range_sha "$T/dir/one" 4097 300000)" = "$(sha "$T/exp.data")" ] || fail "--exports: 'one' reads back differently"
rm -f "$T/exp.img"
server_copy "nbds+unix://copier@/one?socket=$SOCK&tls-psk-file=$T/client.psk" "$T/exp.img"
[ "$(range_sha "$T/exp.img" 4097 300000)" = "$(sha "$T/exp.data")" ] || fail "--exports: the write is not in export 'one'"
NBDFS_LOG=$T/exports.log unmount_nbdfs "$T/dir"
if grep -Eqi 'error|fail' "$T/exports.log"; then fail "--exports: nbdfs logged trouble: $(cat "$T/exports.log")"; fi
tls_expect_refusal "--exports without TLS" 'requires TLS' --exports "nbd+unix:///?socket=$SOCK"
pid_alive "$SERVER_PID" || fail "nbdkit (exports) died"
finish_test
