# tls-certs.sh: make TLS credentials for the TLS integration tests with
# certtool and psktool (gnutls-bin).  Source it (after lib.sh):
#   . "$(dirname "$0")/tls-certs.sh"
#
# Directory layouts made here are the ones the programs look for:
#   CA dir:      ca-cert.pem ca-key.pem
#   server dir:  ca-cert.pem server-cert.pem server-key.pem  (nbdkit
#                --tls-certificates, qemu tls-creds-x509 endpoint=server)
#   client dir:  ca-cert.pem client-cert.pem client-key.pem  (nbdfs
#                tls-certificates / --tls-certificates, libnbd, qemu)
# Keys are ECDSA (fast to make).  Every function fails the calling test
# (via fail from lib.sh, or exit 1 without it) with certtool's output if
# certtool does.

_tls_fail() {
  if declare -F fail >/dev/null; then fail "$@"; else echo "FAIL: $*" >&2; exit 1; fi
}

# _tls_certtool FILE ARGS...: certtool ARGS (which make FILE) quietly,
# failing loudly; its output is kept in FILE's directory as .certtool.log.
_tls_certtool() {
  local log
  log=$(dirname "$1")/.certtool.log; shift
  certtool "$@" >>"$log" 2>&1 || _tls_fail "certtool $* failed: $(tail -n 20 "$log")"
}

# _tls_key FILE: a new private key.
_tls_key() { _tls_certtool "$1" --generate-privkey --key-type=ecdsa --outfile "$1"; }

# tls_make_ca DIR [CN]: a new self-signed CA in DIR (made if missing).
tls_make_ca() {
  local d=$1 cn=${2:-nbdfs test CA}
  mkdir -p "$d"
  _tls_key "$d/ca-key.pem"
  cat >"$d/.ca.tmpl" <<EOF
cn = "$cn"
ca
cert_signing_key
crl_signing_key
expiration_days = 3650
EOF
  _tls_certtool "$d/ca-cert.pem" --generate-self-signed --load-privkey "$d/ca-key.pem" \
    --template "$d/.ca.tmpl" --outfile "$d/ca-cert.pem"
}

# _tls_sign CADIR OUTDIR ROLE TEMPLATE-LINES: a key and a certificate signed
# by CADIR's CA: OUTDIR/ROLE-key.pem, OUTDIR/ROLE-cert.pem, and a copy of
# the CA certificate as OUTDIR/ca-cert.pem.
_tls_sign() {
  local ca=$1 d=$2 role=$3 tmpl=$4
  mkdir -p "$d"
  _tls_key "$d/$role-key.pem"
  printf '%s\n' "$tmpl" >"$d/.$role.tmpl"
  _tls_certtool "$d/$role-cert.pem" --generate-certificate --load-privkey "$d/$role-key.pem" \
    --load-ca-certificate "$ca/ca-cert.pem" --load-ca-privkey "$ca/ca-key.pem" \
    --template "$d/.$role.tmpl" --outfile "$d/$role-cert.pem"
  cp "$ca/ca-cert.pem" "$d/ca-cert.pem"
}

# tls_make_server CADIR OUTDIR [TEMPLATE-LINE...]: a server certificate for
# "localhost" (dns_name localhost, ip_address 127.0.0.1) valid for a year,
# in OUTDIR.  Extra template lines are appended (certtool uses the last
# value of a field), e.g. 'activation_date = "2001-01-01 00:00:00"'.
tls_make_server() {
  local ca=$1 d=$2; shift 2
  local extra=""
  [ $# -eq 0 ] || extra=$(printf '%s\n' "$@")
  local tmpl
  tmpl=$(printf '%s\n' 'organization = "nbdfs tests"' 'cn = "localhost"' 'dns_name = "localhost"' \
    'ip_address = "127.0.0.1"' 'tls_www_server' 'signing_key' 'encryption_key')
  if [ -n "$extra" ]; then tmpl+=$'\n'$extra; else tmpl+=$'\nexpiration_days = 365'; fi
  _tls_sign "$ca" "$d" server "$tmpl"
}

# tls_make_client CADIR OUTDIR [CN]: a client certificate in OUTDIR.
tls_make_client() {
  local ca=$1 d=$2 cn=${3:-nbdfs test client}
  _tls_sign "$ca" "$d" client "$(printf '%s\n' "cn = \"$cn\"" 'tls_www_client' 'signing_key' \
    'encryption_key' 'expiration_days = 365')"
}

# tls_make_x509 DIR: the usual set under DIR: DIR/ca (the CA), DIR/server
# (nbdkit/qemu --tls-certificates), DIR/client (nbdfs tls-certificates).
tls_make_x509() {
  tls_make_ca "$1/ca"
  tls_make_server "$1/ca" "$1/server"
  tls_make_client "$1/ca" "$1/client"
}

# tls_revoke CADIR CERT OUTDIR: a CRL of CADIR's CA that revokes CERT, as
# OUTDIR/ca-crl.pem (where nbdfs looks for it).
tls_revoke() {
  local ca=$1 cert=$2 d=$3
  mkdir -p "$d"
  printf '%s\n' 'crl_next_update = 365' 'crl_number = 1' >"$d/.crl.tmpl"
  _tls_certtool "$d/ca-crl.pem" --generate-crl --load-ca-privkey "$ca/ca-key.pem" \
    --load-ca-certificate "$ca/ca-cert.pem" --load-certificate "$cert" \
    --template "$d/.crl.tmpl" --outfile "$d/ca-crl.pem"
}

# tls_make_psk FILE USER...: a new random key for each USER, added to FILE
# (psktool replaces a user's line that is already there).
tls_make_psk() {
  local f=$1 u; shift
  for u in "$@"; do
    psktool -u "$u" -p "$f" >"$f.log" 2>&1 || _tls_fail "psktool -u $u -p $f failed: $(cat "$f.log")"
  done
  chmod 600 "$f"
}

# tls_cert_dates FILE: certtool's "Not Before"/"Not After" lines of FILE.
tls_cert_dates() { certtool -i --infile "$1" | grep -E 'Not (Before|After)'; }

# ---- Helpers for the t-tls-*.sh tests (they need lib.sh). ----

# At exit, after lib.sh's cleanup has signalled everything the test
# started, wait (up to 10 s each) until those processes are really gone: a
# killed nbdkit or qemu-nbd with open connections takes a moment to die,
# and a runner that looks for leftovers right after the test would see it.
_tls_wait_gone() {
  local p i
  for p in "${_pids[@]}"; do
    for ((i = 0; i < 200; i++)); do pid_alive "$p" || break; sleep 0.05; done
  done
}
if declare -F cleanup >/dev/null; then trap 'cleanup; _tls_wait_gone' EXIT; fi

# tls_roundtrip LABEL URI COPY-URI SIZE [NBDFS-OPTIONS...]: the data path
# over TLS, checked with an independent client (nbdcopy on COPY-URI, for
# the same server):
#   1. nbdcopy writes SIZE random bytes to the export (SIZE = its size);
#   2. nbdfs mounts URI (with the options) on $T/rt-mnt; the file has
#      SIZE bytes and reads back exactly what nbdcopy wrote (a fresh
#      mount: every byte comes from the server, over TLS);
#   3. 3 MiB + 4321 random bytes written at an odd offset through the
#      mount (and fsynced) read back through the mount;
#   4. nbdcopy reads the whole export: it is the first image with that
#      range replaced;
#   5. nbdfs unmounts and exits 0, and its log shows no error.
# The nbdfs log is $T/rt-N.log (N counts the calls).
_tls_rt=0
tls_roundtrip() {
  local label=$1 uri=$2 curi=$3 size=$4; shift 4
  local mp=$T/rt-mnt off=$((5 * 1048576 + 777)) len=$((3 * 1048576 + 4321))
  _tls_rt=$((_tls_rt + 1))
  local log=$T/rt-$_tls_rt.log
  mkdir -p "$mp"
  rand_file "$T/rt.img" "$size"
  nbdcopy -- "$T/rt.img" "$curi" || fail "$label: nbdcopy could not write to $curi"
  NBDFS_LOG=$log mount_nbdfs "$uri" "$mp" "$@"
  local f=$mp/disk
  [ "$(stat -c %s "$f")" = "$size" ] || fail "$label: $f has $(stat -c %s "$f") bytes, expected $size"
  [ "$(sha "$f")" = "$(sha "$T/rt.img")" ] ||
    fail "$label: reading the export through the mount differs from what nbdcopy wrote"
  rand_file "$T/rt.data" "$len"
  write_at "$f" "$off" "$T/rt.data" || fail "$label: writing through the mount failed"
  sync "$f" || fail "$label: fsync through the mount failed"
  write_at "$T/rt.img" "$off" "$T/rt.data"
  [ "$(range_sha "$f" "$off" "$len")" = "$(sha "$T/rt.data")" ] ||
    fail "$label: what was written reads back differently through the mount"
  rm -f "$T/rt.server"
  server_copy "$curi" "$T/rt.server"
  [ "$(sha "$T/rt.server")" = "$(sha "$T/rt.img")" ] ||
    fail "$label: the export (read by nbdcopy) is not what was written through the mount"
  NBDFS_LOG=$log unmount_nbdfs "$mp"
  if grep -Eqi 'error|fail|TLS receive' "$log"; then fail "$label: nbdfs logged trouble: $(cat "$log")"; fi
  note "$label: ok"
}

# tls_expect_refusal LABEL REGEX [NBDFS-ARGS...] URI: nbdfs must fail to
# mount URI on $T/refuse-mnt: exit status 1..127 within 60 s, exactly one
# line on stderr, starting "nbdfs: " and matching the extended REGEX
# (case-insensitive), nothing on stdout, nothing mounted, no nbdfs process
# left - in the foreground (-f) and as a daemon (with -P, then also no pid
# file).  With REFUSAL_NOT=REGEX in the environment, the message must not
# match that (a misleading hint).  Failures are soft (soft_fail), so every
# case is reported; the line is kept in REFUSAL_MSG.
tls_expect_refusal() {
  local label=$1 re=$2; shift 2
  local mp=$T/refuse-mnt mode rc lines
  mkdir -p "$mp"
  for mode in foreground daemon; do
    rc=0
    if [ "$mode" = foreground ]; then
      timeout 60 "$NBDFS" -f "$@" "$mp" >"$T/refuse.out" 2>"$T/refuse.err" </dev/null || rc=$?
    else
      rm -f "$T/refuse.pid"
      timeout 60 "$NBDFS" -P "$T/refuse.pid" "$@" "$mp" >"$T/refuse.out" 2>"$T/refuse.err" </dev/null || rc=$?
    fi
    REFUSAL_MSG=$(head -n 1 "$T/refuse.err")
    note "$label ($mode): exit $rc: $REFUSAL_MSG"
    if [ "$rc" = 0 ]; then
      soft_fail "$label ($mode): nbdfs mounted (exit 0) but should have refused"
      fusermount3 -u "$mp" 2>/dev/null || true
      [ "$mode" = foreground ] || wait_until 10 eval '[ -z "$(nbdfs_pids_for "$T")" ]' || true
      continue
    fi
    [ "$rc" != 124 ] || soft_fail "$label ($mode): nbdfs hung (killed after 60 s)"
    [ "$rc" -lt 124 ] || soft_fail "$label ($mode): nbdfs exit status $rc (signal?)"
    lines=$(wc -l <"$T/refuse.err")
    [ "$lines" = 1 ] || soft_fail "$label ($mode): $lines lines on stderr, expected 1: $(cat "$T/refuse.err")"
    grep -q '^nbdfs: ' "$T/refuse.err" || soft_fail "$label ($mode): stderr does not start with 'nbdfs: ': $(cat "$T/refuse.err")"
    grep -Eqi -- "$re" "$T/refuse.err" || soft_fail "$label ($mode): message '$REFUSAL_MSG' does not match /$re/"
    if [ -n "${REFUSAL_NOT:-}" ] && grep -Eqi -- "$REFUSAL_NOT" "$T/refuse.err"; then
      soft_fail "$label ($mode): message '$REFUSAL_MSG' should not match /$REFUSAL_NOT/"
    fi
    [ ! -s "$T/refuse.out" ] || soft_fail "$label ($mode): unexpected stdout: $(cat "$T/refuse.out")"
    if grep -q " $mp fuse" /proc/mounts; then
      soft_fail "$label ($mode): left a mount"
      fusermount3 -u "$mp" 2>/dev/null || fusermount3 -uz "$mp" 2>/dev/null || true
    fi
    wait_until 10 eval '[ -z "$(nbdfs_pids_for "$T")" ]' ||
      soft_fail "$label ($mode): nbdfs process(es) left: $(nbdfs_pids_for "$T")"
    [ ! -e "$T/refuse.pid" ] || soft_fail "$label ($mode): left the pid file $T/refuse.pid"
  done
}
