#!/bin/bash
# TLS refusals.  Each case must fail to mount with exactly one line on
# stderr, starting "nbdfs: " and saying why (a case-insensitive regex per
# case), a non-zero exit, nothing mounted and no nbdfs process or pid file
# left - in the foreground and in daemon mode (tls_expect_refusal).  The
# servers (real nbdkit instances, certificates and keys made here) must
# survive all of it, and for the certificate cases a positive control shows
# the same server is usable when the one thing wrong is put right (or
# verification is turned off), so the refusal is about that thing:
#   server certificate: signed by another CA; name mismatch (tls-hostname=
#     and --tls-hostname); expired; not yet valid; revoked by the client's
#     ca-crl.pem; no certificate directory at all (system trust only)
#   client certificate missing where nbdkit --tls-verify-peer wants one
#   PSK: wrong key; user not in the client's file; user in the client's
#     file but not in the server's
#   mismatched kinds: X.509 client to a PSK server, PSK client to an X.509
#     server
#   nbds:// (and nbds+unix://) to a plaintext server; nbds:// to an
#     oldstyle server; plain nbd:// to TLS-only servers ("requires TLS"),
#     also in directory mode (--exports), where the message must not add
#     an unrelated hint about nbd-server's allowlist
#   servers that misbehave after accepting STARTTLS (a fake server): no
#     TLS handshake at all (with --connect-timeout 3: a timeout, not a
#     hang), non-TLS bytes, hanging up; a STARTTLS reply that is neither
#     ACK nor an error
#   local mistakes: missing certificate directory, directory without
#     ca-cert.pem, missing PSK file, tls-type=psk without a PSK file,
#     nbds:// with --tls=off
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/tls-certs.sh"

export HOME=$T/home
mkdir -p "$HOME"
SIZE=$((4 * 1048576))
P=$T/pki
tls_make_x509 "$P"
tls_make_ca "$P/ca2" "another CA"
tls_make_client "$P/ca2" "$P/wrong-ca"
tls_make_server "$P/ca" "$P/expired" 'activation_date = "2001-01-01 00:00:00"' \
  'expiration_date = "2002-01-01 00:00:00"'
tls_make_server "$P/ca" "$P/future" \
  "activation_date = \"$(date -u -d '+1 year' '+%Y-%m-%d %H:%M:%S')\"" \
  "expiration_date = \"$(date -u -d '+2 years' '+%Y-%m-%d %H:%M:%S')\""
tls_cert_dates "$P/expired/server-cert.pem" | grep -q 'Not After:.*2002' ||
  fail "certtool did not make an expired certificate: $(tls_cert_dates "$P/expired/server-cert.pem")"
tls_cert_dates "$P/future/server-cert.pem" | grep -q "Not Before:.*$(date -u -d '+1 year' +%Y)" ||
  fail "certtool did not make a future certificate: $(tls_cert_dates "$P/future/server-cert.pem")"
# A client directory whose CRL revokes the (normal) server certificate.
cp -r "$P/client" "$P/revoking"
tls_revoke "$P/ca" "$P/server/server-cert.pem" "$P/revoking"
mkdir -p "$P/ca-only" "$P/no-ca"
cp "$P/client/ca-cert.pem" "$P/ca-only/"
cp "$P/client/client-cert.pem" "$P/client/client-key.pem" "$P/no-ca/"

tls_make_psk "$T/server.psk" alice bob
grep '^alice:' "$T/server.psk" >"$T/alice.psk"
tls_make_psk "$T/wrong.psk" alice                   # alice, another key
cp "$T/alice.psk" "$T/dave.psk"
tls_make_psk "$T/dave.psk" dave                     # dave: unknown to the server

serve_nbdkit_tcp x509 --tls=require --tls-certificates="$P/server" memory "$SIZE"
X=$PORT; X_PID=$SERVER_PID
serve_nbdkit_tcp x509peer --tls=require --tls-certificates="$P/server" --tls-verify-peer memory "$SIZE"
XV=$PORT; XV_PID=$SERVER_PID
serve_nbdkit_tcp expired --tls=require --tls-certificates="$P/expired" memory "$SIZE"
EXPIRED=$PORT; EXPIRED_PID=$SERVER_PID
serve_nbdkit_tcp future --tls=require --tls-certificates="$P/future" memory "$SIZE"
FUTURE=$PORT; FUTURE_PID=$SERVER_PID
serve_nbdkit_tcp psk --tls=require --tls-psk="$T/server.psk" memory "$SIZE"
PSK=$PORT; PSK_PID=$SERVER_PID
serve_nbdkit_tcp plain memory "$SIZE"
PLAIN=$PORT; PLAIN_PID=$SERVER_PID
serve_nbdkit plainunix --tls=off memory "$SIZE"
PLAIN_SOCK=$SOCK; PLAINUNIX_PID=$SERVER_PID
serve_nbdkit_tcp old --oldstyle memory "$SIZE"
OLD=$PORT; OLD_PID=$SERVER_PID

# expect_mount LABEL URI [OPTIONS...]: a positive control: this mounts.
expect_mount() {
  local label=$1 uri=$2; shift 2
  mkdir -p "$T/ok-mnt"
  NBDFS_LOG=$T/control.log mount_nbdfs "$uri" "$T/ok-mnt" "$@"
  head -c 4096 "$T/ok-mnt/disk" >/dev/null || fail "control $label: cannot read"
  NBDFS_LOG=$T/control.log unmount_nbdfs "$T/ok-mnt"
  note "control $label: mounts"
}

# ---- the server's certificate ----
tls_expect_refusal "server certificate from another CA" 'certificate.*(issuer|not trusted)' \
  "nbds://localhost:$X/?tls-certificates=$P/wrong-ca"
expect_mount "right CA" "nbds://localhost:$X/?tls-certificates=$P/client"
expect_mount "another CA, verification off" "nbds://localhost:$X/?tls-certificates=$P/wrong-ca&tls-verify-peer=false"

tls_expect_refusal "host name mismatch (tls-hostname=)" "certificate.*wrong\\.example.*(name|match)" \
  "nbds://127.0.0.1:$X/?tls-certificates=$P/client&tls-hostname=wrong.example"
tls_expect_refusal "host name mismatch (--tls-hostname)" "certificate.*wrong\\.example.*(name|match)" \
  --tls-hostname wrong.example "nbds://localhost:$X/?tls-certificates=$P/client"
expect_mount "127.0.0.1 (the certificate's IP address)" "nbds://127.0.0.1:$X/?tls-certificates=$P/client"
expect_mount "wrong name, --no-tls-verify-peer" \
  "nbds://127.0.0.1:$X/?tls-certificates=$P/client&tls-hostname=wrong.example" --no-tls-verify-peer

tls_expect_refusal "expired server certificate" 'certificate.*expired' \
  "nbds://localhost:$EXPIRED/?tls-certificates=$P/client"
expect_mount "expired, verification off" "nbds://localhost:$EXPIRED/?tls-certificates=$P/client&tls-verify-peer=false"

tls_expect_refusal "server certificate not yet valid" 'certificate.*not (yet )?(valid|activated)' \
  "nbds://localhost:$FUTURE/?tls-certificates=$P/client"
expect_mount "not yet valid, verification off" "nbds://localhost:$FUTURE/?tls-certificates=$P/client" \
  --no-tls-verify-peer

tls_expect_refusal "revoked server certificate (ca-crl.pem)" 'certificate.*revoked' \
  "nbds://localhost:$X/?tls-certificates=$P/revoking"

if [ -e /etc/pki/libnbd ]; then
  note "skipping 'no certificate directory': /etc/pki/libnbd exists on this machine"
else
  tls_expect_refusal "no certificate directory (system trust)" 'certificate.*(issuer|not trusted)' \
    "nbds://localhost:$X/"
fi

# ---- the client's certificate ----
# With TLS 1.3 the server checks the client's certificate after the
# handshake has completed on the client's side; nbdkit then hangs up.  The
# message cannot know the exact reason, but it must at least say that TLS
# (or a certificate) is involved, not just "Input/output error".
tls_expect_refusal "no client certificate for --tls-verify-peer" 'TLS|certificate' \
  "nbds://localhost:$XV/?tls-certificates=$P/ca-only"
expect_mount "client certificate for --tls-verify-peer" "nbds://localhost:$XV/?tls-certificates=$P/client"

# ---- PSK ----
tls_expect_refusal "wrong PSK key" 'PSK' "nbds://alice@127.0.0.1:$PSK/?tls-psk-file=$T/wrong.psk"
tls_expect_refusal "PSK user not in the client's file" "PSK.*carol|carol.*PSK|no key.*carol" \
  "nbds://carol@127.0.0.1:$PSK/?tls-psk-file=$T/alice.psk"
tls_expect_refusal "PSK user not in the client's file (--tls-username)" "PSK.*carol|carol.*PSK|no key.*carol" \
  --tls-username carol "nbds://127.0.0.1:$PSK/?tls-psk-file=$T/server.psk"
tls_expect_refusal "PSK user unknown to the server" 'PSK' \
  "nbds://dave@127.0.0.1:$PSK/?tls-psk-file=$T/dave.psk"
expect_mount "PSK alice" "nbds://alice@127.0.0.1:$PSK/?tls-psk-file=$T/dave.psk"

# ---- kinds of credentials that do not match ----
tls_expect_refusal "X.509 client, PSK server" 'TLS' "nbds://localhost:$PSK/?tls-certificates=$P/client"
tls_expect_refusal "PSK client, X.509 server" 'TLS' "nbds://alice@localhost:$X/?tls-psk-file=$T/alice.psk"

# ---- TLS on one side only ----
# The whole message: it used to be cut after 63 characters
# ("...; refusing to cont", fixed in 9168a10).
tls_expect_refusal "nbds:// to a plaintext server" 'refused TLS.*without TLS' \
  "nbds://alice@127.0.0.1:$PLAIN/?tls-psk-file=$T/alice.psk"
tls_expect_refusal "nbds+unix:// to a plaintext server (x509)" 'refused TLS.*without TLS' \
  "nbds+unix:///?socket=$PLAIN_SOCK&tls-certificates=$P/client&tls-hostname=localhost"
tls_expect_refusal "nbd:// --tls=require to a plaintext server" 'refused TLS.*without TLS' \
  --tls=require --tls-psk-file "$T/alice.psk" --tls-username alice "nbd://127.0.0.1:$PLAIN/"
tls_expect_refusal "nbds:// to an oldstyle server" 'oldstyle.*TLS|TLS.*oldstyle' \
  "nbds://alice@127.0.0.1:$OLD/?tls-psk-file=$T/alice.psk"
tls_expect_refusal "nbd:// to a TLS-only (PSK) server" 'server requires TLS' "nbd://127.0.0.1:$PSK/"
tls_expect_refusal "nbd:// to a TLS-only (X.509) server" 'server requires TLS' "nbd://localhost:$X/"
expect_mount "nbd:// to the plaintext server" "nbd://127.0.0.1:$PLAIN/"
REFUSAL_NOT='allowlist|nbd-server' tls_expect_refusal "--exports nbd:// to a TLS-only server" 'requires TLS' \
  --exports "nbd://127.0.0.1:$PSK/"
REFUSAL_NOT='allowlist|nbd-server' tls_expect_refusal "--exports nbds:// to a plaintext server" 'refused TLS' \
  --exports "nbds://alice@127.0.0.1:$PLAIN/?tls-psk-file=$T/alice.psk"

# ---- servers that misbehave after STARTTLS ----
cat >"$T/fake-tls.py" <<'PYEOF'
# fake-tls.py SOCKET SCENARIO: a fixed-newstyle NBD server that misbehaves at
# NBD_OPT_STARTTLS: stall (ACK, then silence), garbage (ACK, then non-TLS
# bytes), close (ACK, then hang up), bad-reply (answer with NBD_REP_SERVER).
import os, socket, struct, sys, threading, time
NBDMAGIC, IHAVEOPT, REPMAGIC = 0x4e42444d41474943, 0x49484156454F5054, 0x3e889045565a9
OPT_STARTTLS, REP_ACK, REP_SERVER, ERR_UNSUP = 5, 1, 2, 0x80000001
path, scenario = sys.argv[1], sys.argv[2]

def readn(c, n):
    b = b""
    while len(b) < n:
        x = c.recv(n - len(b))
        if not x:
            raise EOFError
        b += x
    return b

def serve(c):
    try:
        c.sendall(struct.pack(">QQH", NBDMAGIC, IHAVEOPT, 3))
        readn(c, 4)
        while True:
            magic, opt, length = struct.unpack(">QII", readn(c, 16))
            readn(c, length)
            if opt != OPT_STARTTLS:
                c.sendall(struct.pack(">QIII", REPMAGIC, opt, ERR_UNSUP, 0))
                continue
            if scenario == "bad-reply":
                c.sendall(struct.pack(">QIII", REPMAGIC, opt, REP_SERVER, 0))
                continue
            c.sendall(struct.pack(">QIII", REPMAGIC, opt, REP_ACK, 0))
            if scenario == "garbage":
                c.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n" * 4)
            if scenario == "close":
                break
            while c.recv(65536):   # stall (and garbage): say nothing more
                pass
            break
    except (EOFError, OSError):
        pass
    finally:
        c.close()

s = socket.socket(socket.AF_UNIX)
s.bind(path + ".tmp")
os.rename(path + ".tmp", path)
s.listen(16)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
PYEOF
for sc in stall garbage close bad-reply; do
  python3 "$T/fake-tls.py" "$T/fake-$sc.sock" "$sc" </dev/null >"$T/fake-$sc.log" 2>&1 &
  track_pid $!
  wait_until 20 test -S "$T/fake-$sc.sock" || fail "fake server $sc did not start: $(cat "$T/fake-$sc.log")"
done
fake_uri() { printf 'nbds+unix://alice@/?socket=%s&tls-psk-file=%s' "$T/fake-$1.sock" "$T/alice.psk"; }
tls_expect_refusal "no TLS handshake after STARTTLS (--connect-timeout 3)" 'TLS.*tim' \
  --connect-timeout 3 "$(fake_uri stall)"
tls_expect_refusal "non-TLS bytes after STARTTLS" 'TLS' "$(fake_uri garbage)"
tls_expect_refusal "hang-up after STARTTLS" 'TLS|closed' "$(fake_uri close)"
tls_expect_refusal "STARTTLS answered with NBD_REP_SERVER" 'STARTTLS' "$(fake_uri bad-reply)"

# ---- local mistakes ----
tls_expect_refusal "missing certificate directory" 'does not exist|no such' \
  "nbds://localhost:$X/?tls-certificates=$P/nonexistent"
tls_expect_refusal "certificate directory without ca-cert.pem" 'ca-cert\.pem' \
  --tls-certificates "$P/no-ca" "nbds://localhost:$X/"
tls_expect_refusal "missing PSK file" 'PSK.*(no such|not found|cannot)' \
  "nbds://alice@127.0.0.1:$PSK/?tls-psk-file=$T/nonexistent.psk"
tls_expect_refusal "tls-type=psk without a PSK file" 'psk' \
  "nbds://alice@127.0.0.1:$PSK/?tls-type=psk&tls-certificates=$P/client"
tls_expect_refusal "nbds:// with --tls=off" 'tls=off|forbid' --tls=off \
  "nbds://alice@127.0.0.1:$PSK/?tls-psk-file=$T/alice.psk"

# Every server is still there.
for v in X_PID XV_PID EXPIRED_PID FUTURE_PID PSK_PID PLAIN_PID PLAINUNIX_PID OLD_PID; do
  pid_alive "${!v}" || soft_fail "server ${v%_PID} died"
done
finish_test
