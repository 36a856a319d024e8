#!/bin/bash
# TLS with X.509 certificates against nbdkit --tls=require
# --tls-verify-peer (so the server insists on a client certificate), over
# TCP on 127.0.0.1 with a server certificate for "localhost" (dns_name
# localhost, ip_address 127.0.0.1) made by the test.  Each way of giving
# the credentials gets the full data round trip of tls_roundtrip (nbdcopy
# writes, nbdfs reads it back, nbdfs writes, nbdcopy checks, clean
# unmount):
#   1. nbds://localhost:PORT/?tls-certificates=CLIENTDIR
#   2. nbds://127.0.0.1:PORT/ with --tls-certificates CLIENTDIR (the name
#      checked is the IP address: the certificate's ip_address)
#   3. nbd://127.0.0.1:PORT/ with --tls=require --tls-certificates
#      --tls-hostname localhost
#   4. command-line options win over URI parameters: the URI names a
#      directory of another CA, --tls-certificates the right one
#   5. no tls-certificates at all, the directory at $HOME/.pki/libnbd
#      ($HOME is a temp dir), then at $HOME/.config/pki/libnbd
#   6. nbds+unix:// (nbdkit on a Unix socket): no host name to check, so
#      nbdfs warns that it checks the chain only, and works
# nbdfs's connections present its client certificate: nbdkit (-D
# nbdkit.tls.session=1) logs the subject "CN=nbdfs client" for each case
# (nbdcopy uses another certificate, "CN=nbdcopy client"), and no
# connection without TLS.  And nbdkit really asks for the client
# certificate: a client directory with only ca-cert.pem is refused.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/tls-certs.sh"

export HOME=$T/home
mkdir -p "$HOME"
SIZE=$((16 * 1048576))
tls_make_ca "$T/pki/ca"
tls_make_server "$T/pki/ca" "$T/pki/server"
tls_make_client "$T/pki/ca" "$T/pki/client" "nbdfs client"
tls_make_client "$T/pki/ca" "$T/pki/copy" "nbdcopy client"
tls_make_ca "$T/pki/ca2" "another CA"
tls_make_client "$T/pki/ca2" "$T/pki/other-client" "other client"

serve_nbdkit_tcp x509 -v -D nbdkit.tls.session=1 --tls=require \
  --tls-certificates="$T/pki/server" --tls-verify-peer memory "$SIZE"
CD=$T/pki/client
LOG=$T/x509.log

# saw_nbdfs LABEL MARK: since MARK, nbdkit's log shows nbdfs's client
# certificate and no connection without TLS.
saw_nbdfs() {
  local n
  n=$(log_since "$LOG" "$2" | grep -c "subject \`CN=nbdfs client'" || true)
  [ "$n" -ge 1 ] || soft_fail "$1: nbdkit never saw nbdfs's client certificate"
  if log_since "$LOG" "$2" | grep -q 'tls=0'; then soft_fail "$1: nbdkit served a connection without TLS"; fi
}

# 1. URI parameter.
U="nbds://localhost:$PORT/?tls-certificates=$CD"
C="nbds://localhost:$PORT/?tls-certificates=$T/pki/copy"   # for nbdcopy
m=$(log_mark "$LOG")
tls_roundtrip "nbds URI with tls-certificates" "$U" "$C" "$SIZE"
saw_nbdfs "nbds URI with tls-certificates" "$m"

# 2. Option, IP address in the URI.
m=$(log_mark "$LOG")
tls_roundtrip "nbds://127.0.0.1 with --tls-certificates" "nbds://127.0.0.1:$PORT/" \
  "nbds://127.0.0.1:$PORT/?tls-certificates=$T/pki/copy" "$SIZE" --tls-certificates "$CD"
saw_nbdfs "nbds://127.0.0.1 with --tls-certificates" "$m"

# 3. nbd:// made to require TLS by the options, with --tls-hostname.
m=$(log_mark "$LOG")
tls_roundtrip "nbd:// with --tls=require --tls-hostname" "nbd://127.0.0.1:$PORT/" "$C" "$SIZE" \
  --tls=require --tls-certificates "$CD" --tls-hostname localhost
saw_nbdfs "nbd:// with --tls=require --tls-hostname" "$m"

# 4. The option wins over the URI parameter.
m=$(log_mark "$LOG")
tls_roundtrip "--tls-certificates over tls-certificates=" \
  "nbds://localhost:$PORT/?tls-certificates=$T/pki/other-client" "$C" "$SIZE" --tls-certificates "$CD"
saw_nbdfs "--tls-certificates over tls-certificates=" "$m"

# 5. The default directories.
mkdir -p "$HOME/.pki"
cp -r "$CD" "$HOME/.pki/libnbd"
m=$(log_mark "$LOG")
tls_roundtrip "default \$HOME/.pki/libnbd" "nbds://localhost:$PORT/" "$C" "$SIZE"
saw_nbdfs "default \$HOME/.pki/libnbd" "$m"
rm -rf "$HOME/.pki"
mkdir -p "$HOME/.config/pki"
cp -r "$CD" "$HOME/.config/pki/libnbd"
m=$(log_mark "$LOG")
tls_roundtrip "default \$HOME/.config/pki/libnbd" "nbds://localhost:$PORT/" "$C" "$SIZE"
saw_nbdfs "default \$HOME/.config/pki/libnbd" "$m"
rm -rf "$HOME/.config/pki"

# The server really wants a client certificate: the CA alone is refused.
mkdir -p "$T/pki/ca-only"
cp "$CD/ca-cert.pem" "$T/pki/ca-only/"
# (t-tls-refusals.sh checks the message; here only that it is refused.)
tls_expect_refusal "no client certificate" '^nbdfs: ' "nbds://localhost:$PORT/?tls-certificates=$T/pki/ca-only"

# 6. Over a Unix socket.
pid_alive "$SERVER_PID" || fail "nbdkit died"
serve_nbdkit x509unix -v -D nbdkit.tls.session=1 --tls=require --tls-certificates="$T/pki/server" \
  --tls-verify-peer memory "$SIZE"
LOG=$T/x509unix.log
m=$(log_mark "$LOG")
tls_roundtrip "nbds+unix with tls-certificates" "nbds+unix:///?socket=$SOCK&tls-certificates=$CD" \
  "nbds+unix:///?socket=$SOCK&tls-certificates=$T/pki/copy" "$SIZE"
saw_nbdfs "nbds+unix with tls-certificates" "$m"
grep -qi 'chain only' "$T/rt-$_tls_rt.log" ||
  soft_fail "nbds+unix: no warning that only the chain is checked: $(cat "$T/rt-$_tls_rt.log")"

pid_alive "$SERVER_PID" || fail "nbdkit (unix) died"
finish_test
